// Two users in two headless Chromiums, on two confab nodes sharing PostgreSQL and Redis:
// register, join, chat, hostile content, typing, unread counts, a send that times out and is
// retried, node 1 restarted twice under user A (gracefully, then killed), history paging after
// a reload. Screenshots and node logs land in test-artifacts/.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import {
  accessibilityProblems,
  ConfabNode,
  freePort,
  openBrowser,
  scratchDatabase,
  screenshot,
  skipUnlessReady,
  sleep,
} from './harness.mjs';

const options = { ...skipUnlessReady(), timeout: 240_000 };
const PASSWORD = 'correct horse battery';
const XSS = '<img src=x onerror=alert(1)>';

let db;
let node1;
let node2;
let alice;
let bob;
const run = randomBytes(4).toString('hex');
const emailA = `alice-${run}@example.com`;
const emailB = `bob-${run}@example.com`;
const nameA = emailA.split('@')[0];
const nameB = emailB.split('@')[0];

/** Refresh requests each page made: the token it presented and the answer's status. */
const refreshes = { alice: [], bob: [] };
/** The first send of this text from Bob loses its ack and its frame (see `dropFirstSend`). */
const LOST = 'this one loses its ack';
const dropper = { ref: null, clientId: null };

before(async () => {
  if (options.skip) return;
  db = await scratchDatabase(process.env.CONFAB_TEST_DATABASE_URL);
  const env = {
    CONFAB_DATABASE__URL: db.url,
    CONFAB_REDIS__URL: process.env.CONFAB_TEST_REDIS_URL,
    CONFAB_REDIS__PREFIX: `confab-e2e-${run}`,
    CONFAB_LIMITS__AUTH_PER_MINUTE: '0',
    // Bob types 55 messages as fast as the page takes them.
    CONFAB_LIMITS__MESSAGES_PER_SECOND: '0',
    // Short-lived access tokens, so silent refresh happens several times during the test.
    CONFAB_AUTH__ACCESS_TOKEN_TTL: '20s',
    CONFAB_SHUTDOWN__GRACE: '2s',
  };
  node1 = new ConfabNode('node1', { port: await freePort(), env });
  node2 = new ConfabNode('node2', { port: await freePort(), env });
  // One after the other: the first creates the shared JWT key in the database.
  await node1.start();
  await node2.start();
  alice = await openBrowser('alice');
  // Bob's system prefers dark: the screenshots show both themes.
  bob = await openBrowser('bob', { colorScheme: 'dark' });
  for (const [who, b] of [['alice', alice], ['bob', bob]]) {
    b.page.on('request', (req) => {
      if (req.url().endsWith('/api/auth/refresh')) {
        const entry = { token: JSON.parse(req.postData() ?? '{}').refreshToken, status: null };
        refreshes[who].push(entry);
        req
          .response()
          .then((res) => {
            entry.status = res?.status() ?? 'none';
          })
          .catch(() => {
            entry.status = 'failed';
          });
      }
    });
  }
  await dropFirstSend(bob.page);
});

after(async () => {
  if (options.skip) return;
  // The state each page ended in (after a failure, what it was showing).
  for (const b of [alice, bob]) {
    if (b) await screenshot(b, `e2e-9-final-${b.name}.png`).catch(() => {});
  }
  await alice?.close();
  await bob?.close();
  for (const n of [node1, node2]) {
    if (!n) continue;
    await n.stop('SIGTERM');
    n.saveLog();
    n.cleanup();
  }
  await db?.drop();
});

/**
 * Passes Bob's WebSocket through, except that the first `send_message` of LOST gets neither
 * its ack nor its message frame: the page must time out, offer a retry, and the retry (same
 * clientId) must not store a second copy.
 */
async function dropFirstSend(page) {
  await page.routeWebSocket(/\/ws(\?|$)/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((message) => {
      if (typeof message === 'string' && !dropper.ref) {
        const f = JSON.parse(message);
        if (f.type === 'send_message' && f.content === LOST) {
          dropper.ref = f.ref;
          dropper.clientId = f.clientId;
        }
      }
      server.send(message);
    });
    server.onMessage((message) => {
      if (typeof message === 'string' && dropper.ref) {
        const f = JSON.parse(message);
        if (f.type === 'ack' && f.ref === dropper.ref) return;
        if (f.type === 'message' && f.clientId === dropper.clientId) return;
      }
      ws.send(message);
    });
  });
}

// --- page helpers ------------------------------------------------------------------------------

async function register(page, base, email) {
  await page.goto(base);
  await page.click('#auth-switch');
  await page.fill('#auth-email', email);
  await page.fill('#auth-password', PASSWORD);
  await page.click('#auth-submit');
  await page.waitForSelector('#chat:not([hidden])');
  await page.waitForSelector('#conn[data-state="connected"]');
}

async function join(page, room) {
  await page.fill('#join-name', room);
  await page.press('#join-name', 'Enter');
  await page.waitForSelector(`section.room[data-room="${room}"]:not([hidden])`);
  await page.waitForSelector(`#room-list [data-room="${room}"]:not(.room-btn--pending)`);
}

async function openRoom(page, room) {
  await page.click(`#room-list [data-room="${room}"]`);
  await page.waitForSelector(`section.room[data-room="${room}"]:not([hidden])`);
}

async function send(page, text) {
  await page.fill('#composer-input', text);
  await page.press('#composer-input', 'Enter');
}

/** Waits until the page has no own message waiting for its ack. */
async function settled(page, timeout = 20_000) {
  await page.waitForFunction(() => document.querySelectorAll('.msg--out').length === 0, null, { timeout });
}

/** Texts of the confirmed messages in a room, in page order. */
function texts(page, room) {
  return page.$$eval(`section.room[data-room="${room}"] .msg[data-seq] .msg-body`, (els) =>
    els.map((e) => e.textContent),
  );
}

function seqs(page, room) {
  return page.$$eval(`section.room[data-room="${room}"] .msg[data-seq]`, (els) =>
    els.map((e) => Number(e.dataset.seq)),
  );
}

async function waitForText(page, room, text, timeout = 15_000) {
  await page.waitForFunction(
    ([r, t]) =>
      [...document.querySelectorAll(`section.room[data-room="${r}"] .msg[data-seq] .msg-body`)].some(
        (e) => e.textContent === t,
      ),
    [room, text],
    { timeout },
  );
}

function assertStrictlyIncreasing(list, what) {
  for (let i = 1; i < list.length; i++) {
    assert.ok(list[i] > list[i - 1], `${what}: seq ${list[i]} after ${list[i - 1]} (${list.join(',')})`);
  }
}

// --- the scenario ------------------------------------------------------------------------------

test('two users chat in browsers across two nodes, through restarts', options, async (t) => {
  const a = () => alice.page;
  const b = () => bob.page;

  await t.test('A registers on node 1 and B on node 2; both join general', async () => {
    await register(a(), node1.url, emailA);
    await register(b(), node2.url, emailB);
    assert.equal(await a().textContent('#me'), nameA, 'the display name, defaulting to the local part');
    await join(a(), 'general');
    await join(b(), 'general');
  });

  await t.test('A sends and B sees it, with the sender and a local time', async () => {
    await send(a(), 'hello from A');
    await waitForText(b(), 'general', 'hello from A');
    const head = await b().$eval('section.room[data-room="general"] .msg[data-seq] .msg-head', (e) => e.textContent);
    assert.match(head, new RegExp(nameA.replace(/[.]/g, '\\.')));
    assert.doesNotMatch(head, /@/, 'no address in the room');
    await settled(a());
  });

  await t.test('hostile markup from B shows as text on A: no element, no dialog', async () => {
    await send(b(), XSS);
    await waitForText(a(), 'general', XSS);
    await sleep(300); // an onerror handler would have fired by now
    assert.deepEqual(alice.record.dialogs, []);
    assert.equal(await a().$$eval('.messages img', (els) => els.length), 0);
    const body = await a().$eval('section.room[data-room="general"] .msg[data-seq]:last-child .msg-body', (e) => ({
      text: e.textContent,
      children: e.childElementCount,
    }));
    assert.deepEqual(body, { text: XSS, children: 0 });
    await screenshot(alice, 'e2e-1-markup-alice.png');
  });

  await t.test('A sees "B is typing…", which goes away', async () => {
    await b().focus('#composer-input');
    // At a person's pace: a notice goes out at most every two seconds.
    await b().keyboard.type('typing something', { delay: 150 });
    await a().waitForFunction((name) => document.querySelector('#typing').textContent.includes(name), nameB, {
      timeout: 5_000,
    });
    assert.match(await a().textContent('#typing'), /is typing…/);
    await b().fill('#composer-input', '');
    await a().waitForFunction(() => document.querySelector('#typing').textContent === '', null, { timeout: 8_000 });
  });

  await t.test('a room not in view counts unread messages', async () => {
    await join(a(), 'random');
    await openRoom(a(), 'general');
    await join(b(), 'random');
    await send(b(), 'psst, over here');
    await a().waitForSelector('#room-list [data-room="random"] .badge');
    assert.match(await a().textContent('#room-list [data-room="random"] .badge'), /^1/);
    await openRoom(a(), 'random');
    await waitForText(a(), 'random', 'psst, over here');
    assert.equal(await a().$('#room-list [data-room="random"] .badge'), null);
    await openRoom(a(), 'general');
    await openRoom(b(), 'general');
  });

  await t.test('unread counts are the server\'s: they survive a reload, agree across two browsers of A, and the divider marks where A stopped', async () => {
    const randomBadge = '#room-list [data-room="random"] .badge';
    const twoUnread = [([sel, n]) => document.querySelector(sel)?.textContent.startsWith(n) ?? false, [randomBadge, '2']];
    await openRoom(b(), 'random');
    await send(b(), 'first unread');
    await send(b(), 'second unread');
    await settled(b());
    await a().waitForFunction(...twoUnread);
    const other = await openBrowser('alice-2');
    try {
      const p = other.page;
      await p.goto(node2.url);
      await p.fill('#auth-email', emailA);
      await p.fill('#auth-password', PASSWORD);
      await p.click('#auth-submit');
      await p.waitForSelector('#conn[data-state="connected"]');
      await p.waitForFunction(...twoUnread, { timeout: 20_000 });
      await a().reload();
      await a().waitForSelector('#conn[data-state="connected"]');
      await a().waitForFunction(...twoUnread, { timeout: 20_000 });
      await openRoom(a(), 'random');
      await a().waitForFunction(
        () =>
          document.querySelector('section.room[data-room="random"] .unread-divider')?.nextElementSibling?.querySelector('.msg-body')
            ?.textContent === 'first unread',
        null,
        { timeout: 15_000 },
      );
      assert.equal(await a().$(randomBadge), null);
      // Read on one browser: the other one's count goes too.
      await p.waitForFunction((sel) => !document.querySelector(sel), randomBadge, { timeout: 15_000 });
      assert.deepEqual(other.record.errors, [], 'page errors in the second browser');
    } finally {
      await other.close();
    }
    await openRoom(a(), 'general');
    await openRoom(b(), 'general');
  });

  await t.test('a send whose ack is lost fails visibly, and its retry is stored once', async () => {
    await send(b(), LOST);
    await b().waitForSelector('.msg--failed', { timeout: 15_000 });
    assert.match(await b().textContent('.msg--failed .msg-status'), /Not sent/);
    await screenshot(bob, 'e2e-2-failed-send-bob.png');
    await b().click('.msg--failed button:text("Retry")');
    await settled(b());
    await waitForText(a(), 'general', LOST);
    assert.equal((await texts(b(), 'general')).filter((x) => x === LOST).length, 1);
    assert.equal((await texts(a(), 'general')).filter((x) => x === LOST).length, 1);
  });

  await t.test('node 1 stops gracefully: A shows it, queues a message, and sends it once back', async () => {
    await node1.stop('SIGTERM');
    await a().waitForSelector('#conn:is([data-state="reconnecting"], [data-state="offline"])', { timeout: 10_000 });
    await send(a(), 'typed while node 1 was down');
    await a().waitForSelector('.msg--queued');
    await screenshot(alice, 'e2e-3-reconnecting-alice.png');
    await node1.start();
    await a().waitForSelector('#conn[data-state="connected"]', { timeout: 30_000 });
    await settled(a());
    await waitForText(b(), 'general', 'typed while node 1 was down');
    await sleep(500);
    assert.equal((await texts(b(), 'general')).filter((x) => x === 'typed while node 1 was down').length, 1);
  });

  await t.test('node 1 is killed while B sends three messages: A gets all three once, in order', async () => {
    await node1.stop('SIGKILL');
    await a().waitForSelector('#conn:is([data-state="reconnecting"], [data-state="offline"])', { timeout: 10_000 });
    for (const n of [1, 2, 3]) {
      await send(b(), `during restart ${n}`);
      await settled(b());
    }
    await node1.start();
    await a().waitForSelector('#conn[data-state="connected"]', { timeout: 30_000 });
    await waitForText(a(), 'general', 'during restart 3');
    await sleep(500);
    const during = (await texts(a(), 'general')).filter((x) => x.startsWith('during restart'));
    assert.deepEqual(during, ['during restart 1', 'during restart 2', 'during restart 3']);
    assertStrictlyIncreasing(await seqs(a(), 'general'), 'A after the restart');
  });

  await t.test('after 55 more messages and a reload, scrolling up pages through all history', async () => {
    for (let i = 1; i <= 55; i++) await send(b(), `history ${i}`);
    await settled(b(), 60_000);
    await waitForText(a(), 'general', 'history 55', 30_000);

    // A reload keeps the session (parked in sessionStorage for the next page only) and the room.
    await a().reload();
    await a().waitForSelector('#conn[data-state="connected"]');
    await a().waitForSelector('section.room[data-room="general"]:not([hidden])');
    await waitForText(a(), 'general', 'history 55');
    const firstPage = await seqs(a(), 'general');
    assert.equal(firstPage.length, 50, `first page: ${firstPage.join(',')}`);
    const atBottom = await a().$eval(
      'section.room[data-room="general"] .scroller',
      (s) => s.scrollHeight - s.scrollTop - s.clientHeight < 50,
    );
    assert.ok(atBottom, 'a room opens at its newest message');

    await a().$eval('section.room[data-room="general"] .scroller', (s) => {
      s.scrollTop = 0;
    });
    await a().waitForFunction(() => document.querySelector('.history')?.textContent.includes('beginning of #general'));
    const all = await seqs(a(), 'general');
    assert.equal(all[0], 1);
    assertStrictlyIncreasing(all, 'A after paging');
    assert.equal(all.length, all.at(-1), 'no seq missing between 1 and the newest');
    const allTexts = await texts(a(), 'general');
    assert.equal(allTexts[0], 'hello from A');
    assert.equal(allTexts.filter((x) => x === XSS).length, 1);
  });

  await t.test('a last exchange after all that', async () => {
    await send(a(), 'all 55 arrived, in order');
    await waitForText(b(), 'general', 'all 55 arrived, in order');
    await send(b(), 'great —\nsee you tomorrow');
    await waitForText(a(), 'general', 'great —\nsee you tomorrow');
    await settled(a());
    await settled(b());
  });

  await t.test('B sees every message once, in order', async () => {
    const all = await seqs(b(), 'general');
    assertStrictlyIncreasing(all, 'B');
    assert.equal((await texts(b(), 'general')).filter((x) => x === 'hello from A').length, 1);
  });

  await t.test('tokens were refreshed silently, each refresh token presented once', async () => {
    for (const who of ['alice', 'bob']) {
      const list = refreshes[who];
      assert.ok(list.length >= 1, `${who} never refreshed (20 s tokens)`);
      const tokens = list.map((r) => r.token);
      assert.equal(new Set(tokens).size, tokens.length, `${who} presented a refresh token twice`);
      assert.ok(
        list.every((r) => r.status === 200 || r.status === 'failed'),
        `${who}: ${JSON.stringify(list.map((r) => r.status))}`,
      );
    }
    assert.equal(await a().$eval('#signin', (e) => e.hidden), true);
    assert.equal(await b().$eval('#signin', (e) => e.hidden), true);
    for (const who of ['alice', 'bob']) refreshes[who].length = 0;
  });

  await t.test('A creates a private room; B cannot open it until invited, then finds it after a reload', async () => {
    await a().click('#create summary');
    await a().fill('#create-name', 'secret');
    await a().fill('#create-title', 'Secret plans');
    await a().selectOption('#create-kind', 'private');
    await a().click('#create-form button[type="submit"]');
    await a().waitForSelector('#room-list [data-room="secret"]:not(.room-btn--pending)');
    assert.equal(await a().textContent('#room-title'), 'Secret plans');

    await b().goto(`${node2.url}/r/secret`);
    await b().waitForSelector('#room-list [data-room="secret"] .error-text');
    assert.match(await b().getAttribute('#room-list [data-room="secret"]', 'title'), /members only/);
    const bobId = (await b().getAttribute('#me', 'title')).split('user id ')[1];
    assert.ok(bobId, 'my id is in the header, for invitations');

    await a().click('#members-toggle');
    await a().fill('#invite-id', bobId);
    await a().click('#invite-form button[type="submit"]');
    await a().waitForSelector(`#member-list li[data-user="${bobId}"]`);
    assert.equal(await a().textContent(`#member-list li[data-user="${bobId}"] .member-name`), nameB);

    await b().reload();
    await b().waitForSelector('#room-list [data-room="secret"]:not(.room-btn--pending)', { timeout: 20_000 });
    await openRoom(b(), 'secret');
    await send(a(), 'for members only');
    await waitForText(b(), 'secret', 'for members only');
    await settled(a());
  });

  await t.test('A messages B directly from the member list; B finds the conversation after a reload', async () => {
    const bobId = (await b().getAttribute('#me', 'title')).split('user id ')[1];
    await a().click(`#member-list li[data-user="${bobId}"] .member-actions button`);
    await a().waitForFunction((name) => document.querySelector('#room-title').textContent === `@${name}`, nameB);
    const dm = await a().$eval('section.room:not([hidden])', (e) => e.dataset.room);
    assert.match(dm, /^dm:[0-9a-f]{40}$/);
    await a().waitForSelector(`#room-list [data-room="${dm}"]:not(.room-btn--pending)`);
    await send(a(), 'just between us');
    await settled(a());

    await b().reload();
    await b().waitForSelector(`#room-list [data-room="${dm}"]:not(.room-btn--pending)`, { timeout: 20_000 });
    assert.equal((await b().textContent(`#room-list [data-room="${dm}"] .room-name`)).trim(), `@${nameA}`);
    await openRoom(b(), dm);
    await waitForText(b(), dm, 'just between us');
    await openRoom(b(), 'general');
    await openRoom(a(), 'general');
  });

  await t.test('the owner deletes B\'s message: it is gone for both, also after a reload', async () => {
    await openRoom(a(), 'secret');
    await openRoom(b(), 'secret');
    await send(b(), 'delete me');
    await waitForText(a(), 'secret', 'delete me');
    await settled(b());
    const seq = await a().$$eval('section.room[data-room="secret"] .msg[data-seq]', (els) =>
      els.find((e) => e.querySelector('.msg-body').textContent === 'delete me').dataset.seq,
    );
    const item = `section.room[data-room="secret"] .msg[data-seq="${seq}"]`;
    await a().hover(item);
    await a().click(`${item} .msg-delete`);
    for (const page of [a(), b()]) {
      await page.waitForSelector(`${item} .msg-deleted`);
      assert.equal(await page.textContent(`${item} .msg-body`), 'This message was deleted.');
    }
    assert.equal(await b().$(`${item} .msg-delete`), null, 'nothing left to delete');
    await b().reload();
    await b().waitForSelector('#conn[data-state="connected"]');
    await openRoom(b(), 'secret');
    await b().waitForSelector(`${item} .msg-deleted`);
    assert.ok(!(await texts(b(), 'secret')).includes('delete me'));
    await openRoom(a(), 'general');
    await openRoom(b(), 'general');
  });

  await t.test('A fixes a typo: B sees the new text, marked edited', async () => {
    await openRoom(a(), 'general');
    await openRoom(b(), 'general');
    await send(a(), 'teh end');
    await waitForText(b(), 'general', 'teh end');
    await settled(a());
    const seq = await a().$$eval('section.room[data-room="general"] .msg[data-seq]', (els) =>
      els.find((e) => e.querySelector('.msg-body').textContent === 'teh end').dataset.seq,
    );
    const item = `section.room[data-room="general"] .msg[data-seq="${seq}"]`;
    await a().hover(item);
    await a().click(`${item} .msg-edit`);
    await a().fill(`${item} .msg-editor-input`, 'the end');
    await a().click(`${item} .msg-editor button[type="submit"]`);
    await waitForText(b(), 'general', 'the end');
    assert.equal(await b().textContent(`${item} .msg-edited`), '(edited)');
    await waitForText(a(), 'general', 'the end');
    assert.equal(await a().$(`${item} .msg-editor`), null, 'the editor closes');
  });

  await t.test('markdown, a mention, a reaction, ↑ to edit, and search that jumps to the message', async () => {
    await openRoom(a(), 'general');
    await openRoom(b(), 'general');
    const room = 'section.room[data-room="general"]';
    // A writes to B by name, with a little markdown and a link.
    await send(a(), `**heads up** @${nameB}: see https://example.com/docs.`);
    await b().waitForSelector(`${room} .msg.msg--mention strong`);
    const item = `${room} .msg.msg--mention`;
    assert.equal(await b().textContent(`${item} strong`), 'heads up');
    assert.equal(await b().getAttribute(`${item} a`, 'href'), 'https://example.com/docs');
    assert.equal(await b().getAttribute(`${item} a`, 'rel'), 'noopener noreferrer nofollow');
    assert.equal(await b().textContent(`${item} .mention--me`), `@${nameB}`);
    await settled(a());

    // B reacts; A sees the count, and taking it back removes it.
    await b().hover(item);
    await b().click(`${item} .msg-react`);
    await b().click(`${item} .reaction-picker button[aria-label="React with 🎉"]`);
    const seq = await b().$eval(item, (e) => e.dataset.seq);
    const onA = `${room} .msg[data-seq="${seq}"]`;
    await a().waitForSelector(`${onA} .reactions .reaction`);
    assert.equal(await a().textContent(`${onA} .reactions .reaction`), '🎉 1');
    await b().waitForSelector(`${item} .reactions .reaction--mine`);
    await b().click(`${item} .reactions .reaction--mine`);
    await a().waitForSelector(`${onA} .reactions`, { state: 'detached' });

    // ↑ in an empty composer edits A's last message.
    await send(a(), 'a typo here: teh');
    await settled(a());
    await a().focus('#composer-input');
    await a().keyboard.press('ArrowUp');
    await a().waitForSelector(`${room} .msg-editor-input`);
    await a().fill(`${room} .msg-editor-input`, 'a typo here: the');
    await a().keyboard.press('Enter');
    await waitForText(b(), 'general', 'a typo here: the');

    // Search finds the first message of the conversation; its result brings it into view.
    await b().fill('#search-q', 'hello from');
    await b().press('#search-q', 'Enter');
    await b().waitForSelector('#search-results .search-hit');
    assert.match(await b().textContent('#search-results .search-hit'), /hello from A/);
    await b().click('#search-results .search-hit');
    await b().waitForSelector(`${room} .msg.msg--found`);
    assert.equal(await b().textContent(`${room} .msg.msg--found .msg-body`), 'hello from A');
    await b().click('#search-close');

    // Who is here: B shows as online in A's member list.
    const bobId = (await b().getAttribute('#me', 'title')).split('user id ')[1];
    await a().click('#members-toggle');
    await a().waitForSelector(`#member-list li[data-user="${bobId}"][data-online="true"] .presence-dot--on`);
    await a().click('#members-toggle');
  });

  await t.test('the owner mutes B, who cannot write until unmuted; bans and unbans B', async () => {
    const bobId = (await b().getAttribute('#me', 'title')).split('user id ')[1];
    const row = `#member-list li[data-user="${bobId}"]`;
    await openRoom(a(), 'secret');
    await openRoom(b(), 'secret');
    if (await a().$eval('#members', (e) => e.hidden)) await a().click('#members-toggle');
    await a().click(`${row} button:has-text("Mute 10 min")`);
    await a().waitForSelector(`${row} button:has-text("Unmute")`);
    assert.match(await a().textContent(row), /muted until/);
    await b().waitForFunction(() => document.querySelector('section.room[data-room="secret"]').textContent.includes('You are muted'));
    await send(b(), 'can I talk?');
    await b().waitForSelector('section.room[data-room="secret"] .msg--failed');
    assert.match(await b().textContent('section.room[data-room="secret"] .msg--failed'), /muted/);
    await a().click(`${row} button:has-text("Unmute")`);
    await b().waitForFunction(() => document.querySelector('section.room[data-room="secret"]').textContent.includes('You may write'));
    await b().click('section.room[data-room="secret"] .msg--failed button:has-text("Retry")');
    await waitForText(a(), 'secret', 'can I talk?');
    await settled(b());

    await a().click(`${row} button:has-text("Ban")`);
    await a().waitForSelector(`#ban-list li[data-user="${bobId}"]`);
    await b().waitForSelector('#room-list [data-room="secret"] .error-text');
    assert.match(await b().getAttribute('#room-list [data-room="secret"]', 'title'), /banned/);
    await a().click(`#ban-list li[data-user="${bobId}"] button:has-text("Unban")`);
    await a().waitForFunction(() => document.querySelector('#ban-list').hidden);
    await a().click('#members-toggle');
    await openRoom(a(), 'general');
    await openRoom(b(), 'general');
  });

  await t.test('the conversation, wide and at 375 px (screenshots)', async () => {
    for (const br of [alice, bob]) {
      await br.page.$eval('section.room:not([hidden]) .scroller', (s) => {
        s.scrollTop = s.scrollHeight;
      });
      await screenshot(br, `e2e-4-conversation-${br.name}.png`);
    }
    await a().setViewportSize({ width: 375, height: 720 });
    await screenshot(alice, 'e2e-5-alice-375px.png');
    await a().click('#rooms-toggle');
    await a().waitForSelector('#chat.sidebar-open');
    await sleep(400); // the slide-in transition
    assert.equal(await a().evaluate(() => document.activeElement?.id), 'join-name');
    await screenshot(alice, 'e2e-5-alice-375px-rooms.png');
    await a().keyboard.press('Escape');
    assert.equal(await a().evaluate(() => document.activeElement?.id), 'rooms-toggle');
    const fits = await a().evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);
    assert.ok(fits, 'nothing overflows sideways at 375 px');
    await a().setViewportSize({ width: 1100, height: 720 });
  });

  await t.test('axe finds no serious accessibility problem, light (A) or dark (B)', async () => {
    assert.deepEqual(await accessibilityProblems(a()), []);
    assert.deepEqual(await accessibilityProblems(b()), []);
  });

  await t.test('A signs out, is refused a wrong password, signs in again: rooms remembered', async () => {
    const logout = a().waitForRequest((r) => r.url().endsWith('/api/auth/logout'));
    await a().click('#logout');
    await logout;
    await a().waitForSelector('#signin:not([hidden])');
    assert.equal(await a().evaluate(() => document.activeElement?.id), 'auth-email');
    await a().fill('#auth-email', emailA);
    await a().fill('#auth-password', 'not the password');
    await a().click('#auth-submit');
    await a().waitForSelector('#auth-error:not([hidden])');
    assert.equal(await a().textContent('#auth-error'), 'invalid credentials');
    assert.deepEqual(await accessibilityProblems(a()), [], 'the sign-in form, with its error');
    await a().fill('#auth-password', PASSWORD);
    await a().press('#auth-password', 'Enter');
    await a().waitForSelector('#conn[data-state="connected"]');
    const rooms = await a().$$eval('#room-list [data-room]', (els) => els.map((e) => e.dataset.room));
    assert.equal(rooms.length, 4, JSON.stringify(rooms));
    assert.deepEqual(rooms.filter((r) => !r.startsWith('dm:')).sort(), ['general', 'random', 'secret']);
    await waitForText(a(), 'general', 'great —\nsee you tomorrow');
  });

  await t.test('a disabled account is sent back to sign-in, with the reason', async () => {
    await node2.admin(['user', 'disable', '--email', emailB]);
    // Its open socket may live on; the next connection is refused, and the REST check that
    // follows repeated refusals ends the session.
    await b().reload();
    await b().waitForSelector('#signin:not([hidden])', { timeout: 20_000 });
    assert.match(await b().textContent('#auth-error'), /session has ended/i);
    await screenshot(bob, 'e2e-6-signed-out-bob.png');
    assert.equal(await b().$eval('#chat', (e) => e.hidden), true);
  });

  await t.test('no page error, dialog or CSP violation in either browser', () => {
    for (const br of [alice, bob]) {
      assert.deepEqual(br.record.dialogs, [], `${br.name} dialogs`);
      assert.deepEqual(br.record.errors, [], `${br.name} page errors`);
      assert.deepEqual(br.record.csp, [], `${br.name} CSP violations`);
    }
  });
});
