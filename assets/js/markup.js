// A small markdown subset for message text: **bold**, *italic* / _italic_, `code`, ```code
// blocks```, http(s) links, and @mentions of known names. It parses to plain data (no DOM), and
// the view turns that into elements with text nodes only: whatever a message says, no HTML from
// it ever reaches the page, and a link is only ever an http(s) URL.

const INLINE =
  /`([^`\n]+)`|(https?:\/\/[^\s<>"'`]+)|\*\*(?=\S)([^\n]*?\S)\*\*|(?<![\p{L}\p{N}*])\*(?=[^\s*])([^*\n]*?[^\s*])\*(?![\p{L}\p{N}*])|(?<![\p{L}\p{N}_])_(?=[^\s_])([^_\n]*?[^\s_])_(?![\p{L}\p{N}_])/gu;

const CODE_BLOCK = /```[^\n`]*\n?([\s\S]*?)```/g;

/** Characters a URL seldom ends with in running text: left out of the link. */
const TRAILING = /[.,;:!?'")\]}]+$/;

/**
 * The message as a list of nodes: `{ t: 'text', text }`, `{ t: 'code', text }`,
 * `{ t: 'codeblock', text }`, `{ t: 'link', href, text }`, `{ t: 'mention', text, me }`,
 * `{ t: 'strong' | 'em', children }`.
 * `names`: display names that @mentions may name (longest first is not needed: the longest
 * match wins); `myName`: mine, flagged `me`.
 */
export function parse(text, { names = [], myName = null } = {}) {
  const out = [];
  let last = 0;
  for (const m of text.matchAll(CODE_BLOCK)) {
    if (m.index > last) out.push(...inline(text.slice(last, m.index), names, myName));
    out.push({ t: 'codeblock', text: m[1].replace(/\n$/, '') });
    last = m.index + m[0].length;
  }
  if (last < text.length) out.push(...inline(text.slice(last), names, myName));
  return merge(out);
}

function inline(text, names, myName) {
  const out = [];
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) out.push(...mentions(text.slice(last, m.index), names, myName));
    const [whole, code, url, strong, star, under] = m;
    if (code !== undefined) out.push({ t: 'code', text: code });
    else if (url !== undefined) out.push(...link(url));
    else if (strong !== undefined) out.push({ t: 'strong', children: inline(strong, names, myName) });
    else out.push({ t: 'em', children: inline(star ?? under, names, myName) });
    last = m.index + whole.length;
  }
  if (last < text.length) out.push(...mentions(text.slice(last), names, myName));
  return out;
}

function link(raw) {
  const trail = TRAILING.exec(raw)?.[0] ?? '';
  let url = raw.slice(0, raw.length - trail.length);
  let rest = trail;
  // A closing parenthesis that closes one inside the URL (Wikipedia-style) belongs to it.
  if (rest.startsWith(')') && count(url, '(') > count(url, ')')) {
    url += ')';
    rest = rest.slice(1);
  }
  let href = null;
  try {
    const parsed = new URL(url);
    if (parsed.protocol === 'http:' || parsed.protocol === 'https:') href = parsed.href;
  } catch {
    href = null;
  }
  const nodes = href ? [{ t: 'link', href, text: url }] : [{ t: 'text', text: url }];
  if (rest) nodes.push({ t: 'text', text: rest });
  return nodes;
}

function count(s, ch) {
  let n = 0;
  for (const c of s) if (c === ch) n++;
  return n;
}

/** Splits out `@Name` where Name is one of `names` (case-insensitive), or `@room` / `@here`. */
function mentions(text, names, myName) {
  if (!text.includes('@')) return [{ t: 'text', text }];
  const out = [];
  let buf = '';
  const lower = text.toLowerCase();
  const candidates = [...new Set([...names, 'room', 'here'])].sort((a, b) => b.length - a.length);
  for (let i = 0; i < text.length; ) {
    const boundary = i === 0 || !/[\p{L}\p{N}_]/u.test(text[i - 1]);
    if (text[i] === '@' && boundary) {
      const hit = candidates.find((n) => {
        if (!n || !lower.startsWith(n.toLowerCase(), i + 1)) return false;
        const after = text[i + 1 + n.length];
        return after === undefined || !/[\p{L}\p{N}_]/u.test(after);
      });
      if (hit) {
        if (buf) out.push({ t: 'text', text: buf });
        buf = '';
        const shown = text.slice(i, i + 1 + hit.length);
        const me = hit === 'room' || hit === 'here' || (myName !== null && hit.toLowerCase() === myName.toLowerCase());
        out.push({ t: 'mention', text: shown, me });
        i += 1 + hit.length;
        continue;
      }
    }
    buf += text[i];
    i++;
  }
  if (buf) out.push({ t: 'text', text: buf });
  return out;
}

/** Joins neighbouring text nodes. */
function merge(nodes) {
  const out = [];
  for (const n of nodes) {
    const prev = out[out.length - 1];
    if (n.t === 'text' && prev?.t === 'text') prev.text += n.text;
    else out.push(n);
  }
  return out;
}

/** Whether the message mentions me (by name, or @room / @here). */
export function mentionsMe(nodes) {
  return nodes.some((n) => (n.t === 'mention' && n.me) || ((n.t === 'strong' || n.t === 'em') && mentionsMe(n.children)));
}
