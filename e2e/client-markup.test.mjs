// assets/js/markup.js in node: the markdown subset parses to plain data, links are only ever
// http(s), and anything that looks like markup stays text.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { parse, mentionsMe } from '../assets/js/markup.js';

test('plain text, markup included, is one text node', () => {
  const hostile = '<img src=x onerror=alert(1)> & <script>alert(1)</script>';
  assert.deepEqual(parse(hostile), [{ t: 'text', text: hostile }]);
  assert.deepEqual(parse('snake_case_name and 2*3*4'), [{ t: 'text', text: 'snake_case_name and 2*3*4' }]);
});

test('bold, italic, code and code blocks', () => {
  assert.deepEqual(parse('a **b** *c* _d_ `e*f*`'), [
    { t: 'text', text: 'a ' },
    { t: 'strong', children: [{ t: 'text', text: 'b' }] },
    { t: 'text', text: ' ' },
    { t: 'em', children: [{ t: 'text', text: 'c' }] },
    { t: 'text', text: ' ' },
    { t: 'em', children: [{ t: 'text', text: 'd' }] },
    { t: 'text', text: ' ' },
    { t: 'code', text: 'e*f*' },
  ]);
  assert.deepEqual(parse('before\n```js\nlet **x** = 1;\n```\nafter'), [
    { t: 'text', text: 'before\n' },
    { t: 'codeblock', text: 'let **x** = 1;' },
    { t: 'text', text: '\nafter' },
  ]);
});

test('links are http(s) only, without the punctuation that ends a sentence', () => {
  assert.deepEqual(parse('see https://example.com/a?b=1.'), [
    { t: 'text', text: 'see ' },
    { t: 'link', href: 'https://example.com/a?b=1', text: 'https://example.com/a?b=1' },
    { t: 'text', text: '.' },
  ]);
  assert.deepEqual(parse('(https://en.wikipedia.org/wiki/Foo_(bar))')[1], {
    t: 'link',
    href: 'https://en.wikipedia.org/wiki/Foo_(bar)',
    text: 'https://en.wikipedia.org/wiki/Foo_(bar)',
  });
  for (const bad of ['javascript:alert(1)', 'data:text/html,<b>x</b>', 'vbscript:x', '[x](javascript:alert(1))']) {
    assert.ok(!parse(bad).some((n) => n.t === 'link'), bad);
  }
});

test('mentions of known names, and @room, are marked; mine flagged', () => {
  const nodes = parse('hi @Ann Lee and @bob, @bobby is not bob; @room', { names: ['Ann Lee', 'bob'], myName: 'bob' });
  assert.deepEqual(
    nodes.filter((n) => n.t === 'mention'),
    [
      { t: 'mention', text: '@Ann Lee', me: false },
      { t: 'mention', text: '@bob', me: true },
      { t: 'mention', text: '@room', me: true },
    ],
  );
  assert.equal(mentionsMe(nodes), true);
  assert.equal(mentionsMe(parse('mail me at x@bob.com', { names: ['bob'], myName: 'bob' })), false);
});
