// assets/js/auth.js in node, against a scripted fetch: no server, no browser.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { Auth, refreshMargin } from '../assets/js/auth.js';

const USER = { id: '00000000-0000-0000-0000-000000000001', email: 'a@example.com' };

function json(status, body) {
  return { status, ok: status >= 200 && status < 300, json: async () => body };
}

/** A fake server: refresh tokens are single-use, as on the real one. */
function fakeServer({ refreshDelay = 0 } = {}) {
  const calls = [];
  let n = 0;
  const live = new Set();
  const spent = new Set();
  const pair = () => {
    n += 1;
    const refreshToken = `refresh-${n}`;
    live.add(refreshToken);
    return { token: `access-${n}`, refreshToken, expiresIn: 900 };
  };
  const fetch = async (path, init = {}) => {
    const body = init.body ? JSON.parse(init.body) : undefined;
    calls.push({ path, body, headers: init.headers ?? {} });
    switch (path) {
      case '/api/auth/login':
        return json(200, { ...pair(), user: USER });
      case '/api/auth/refresh': {
        if (refreshDelay) await new Promise((r) => setTimeout(r, refreshDelay));
        if (!live.has(body.refreshToken) || spent.has(body.refreshToken)) {
          return json(401, { error: 'refresh token is not valid', code: 'unauthorized' });
        }
        spent.add(body.refreshToken);
        live.delete(body.refreshToken);
        return json(200, pair());
      }
      default:
        return json(404, { error: 'not found', code: 'not_found' });
    }
  };
  return { fetch, calls, live };
}

function memoryStorage() {
  const m = new Map();
  return {
    getItem: (k) => (m.has(k) ? m.get(k) : null),
    setItem: (k, v) => m.set(k, String(v)),
    removeItem: (k) => m.delete(k),
    size: () => m.size,
  };
}

function makeAuth(server, { now = () => 1_000_000 } = {}) {
  return new Auth({
    fetch: server.fetch,
    storage: memoryStorage(),
    now,
    setTimeout: () => 0,
    clearTimeout: () => {},
  });
}

test('concurrent refreshes share one request, so a refresh token is presented once', async () => {
  const server = fakeServer({ refreshDelay: 20 });
  const auth = makeAuth(server);
  await auth.login('a@example.com', 'password1');
  await Promise.all([auth.refresh(), auth.refresh(), auth.refresh()]);
  const refreshes = server.calls.filter((c) => c.path === '/api/auth/refresh');
  assert.equal(refreshes.length, 1);
  assert.equal(refreshes[0].body.refreshToken, 'refresh-1');
  assert.equal(await auth.token(), 'access-2');
});

test('every refresh presents the newest refresh token, never a spent one', async () => {
  const server = fakeServer();
  const auth = makeAuth(server);
  await auth.login('a@example.com', 'password1');
  for (let i = 0; i < 4; i++) await auth.refresh();
  const presented = server.calls.filter((c) => c.path === '/api/auth/refresh').map((c) => c.body.refreshToken);
  assert.deepEqual(presented, ['refresh-1', 'refresh-2', 'refresh-3', 'refresh-4']);
  assert.equal(auth.signedIn, true);
});

test('a token near expiry is refreshed before use; a fresh one is not', async () => {
  let clock = 1_000_000;
  const server = fakeServer();
  const auth = makeAuth(server, { now: () => clock });
  await auth.login('a@example.com', 'password1');
  assert.equal(await auth.token(), 'access-1');
  clock += 900_000 - refreshMargin(900_000) + 1;
  assert.equal(await auth.token(), 'access-2');
  assert.equal(server.calls.filter((c) => c.path === '/api/auth/refresh').length, 1);
});

test('a refused refresh signs the user out with a reason', async () => {
  const server = fakeServer();
  const auth = makeAuth(server);
  await auth.login('a@example.com', 'password1');
  server.live.clear(); // the family was revoked elsewhere
  const reasons = [];
  auth.addEventListener('signedout', (e) => reasons.push(e.detail.reason));
  await assert.rejects(auth.refresh(), { status: 401 });
  assert.equal(auth.signedIn, false);
  assert.equal(reasons.length, 1);
  assert.match(reasons[0], /sign in again/);
});

test('an API 401 is retried once after a refresh, and a second 401 signs out', async () => {
  const server = fakeServer();
  let meAnswers = [401, 200];
  const fetch = async (path, init) => {
    if (path === '/api/me') {
      const status = meAnswers.shift() ?? 401;
      server.calls.push({ path, headers: init.headers });
      return json(status, status === 200 ? { id: USER.id } : { error: 'expired', code: 'unauthorized' });
    }
    return server.fetch(path, init);
  };
  const auth = new Auth({ fetch, storage: memoryStorage(), setTimeout: () => 0, clearTimeout: () => {} });
  await auth.login('a@example.com', 'password1');
  assert.deepEqual(await auth.api('/api/me'), { id: USER.id });
  const me = server.calls.filter((c) => c.path === '/api/me');
  assert.deepEqual(
    me.map((c) => c.headers.authorization),
    ['Bearer access-1', 'Bearer access-2'],
  );

  meAnswers = [401, 401];
  await assert.rejects(auth.api('/api/me'), { status: 401 });
  assert.equal(auth.signedIn, false);
});

test('the API error message is what the user is shown', async () => {
  const fetch = async () => json(409, { error: 'email already registered', code: 'conflict' });
  const auth = new Auth({ fetch, storage: memoryStorage(), setTimeout: () => 0, clearTimeout: () => {} });
  await assert.rejects(auth.register('a@example.com', 'password1'), { message: 'email already registered' });
});

test('a parked session is restored once and then taken out of storage', async () => {
  const server = fakeServer();
  const storage = memoryStorage();
  const opts = { fetch: server.fetch, storage, setTimeout: () => 0, clearTimeout: () => {} };
  const first = new Auth(opts);
  await first.login('a@example.com', 'password1');
  assert.equal(storage.size(), 0, 'nothing is stored while the page is live');
  first.park();
  const second = new Auth(opts);
  assert.equal(second.restore(), true);
  assert.equal(second.user.email, USER.email);
  assert.equal(storage.size(), 0, 'a duplicated tab would find nothing to share');
  assert.equal(new Auth(opts).restore(), false);
});
