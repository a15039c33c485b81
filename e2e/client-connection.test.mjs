// assets/js/connection.js in node, against a scripted WebSocket: refs and acks, and what a
// dropped socket does to commands in flight and to the state shown.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { Connection, Disconnected, ServerError } from '../assets/js/connection.js';

class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.sent = [];
    FakeSocket.all.push(this);
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close() {}
  serve(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  drop(code = 1006) {
    this.onclose?.({ code });
  }
}

const auth = { ensureFresh: async () => 'tok en', api: async () => ({}) };
const tick = () => new Promise((r) => setImmediate(r));

async function connected() {
  FakeSocket.all = [];
  const conn = new Connection({ auth, url: 'ws://test/ws', WebSocket: FakeSocket });
  const states = [];
  conn.addEventListener('state', (e) => states.push(e.detail.state));
  conn.start();
  await tick();
  const ws = FakeSocket.all[0];
  ws.serve({ type: 'hello', user: { id: 'u', email: 'u@example.com' }, node: 'n1' });
  return { conn, ws, states };
}

test('the token travels in the query string, and hello makes the state connected', async () => {
  const { conn, ws, states } = await connected();
  assert.equal(ws.url, 'ws://test/ws?access_token=tok%20en');
  assert.deepEqual(states, ['connecting', 'connected']);
  assert.equal(conn.node, 'n1');
  conn.stop();
});

test('acks and errors answer the command with the same ref', async () => {
  const { conn, ws } = await connected();
  const join = conn.request({ type: 'join_room', room: 'general' });
  const send = conn.request({ type: 'send_message', room: 'general', content: 'x' });
  const [a, b] = ws.sent;
  assert.notEqual(a.ref, b.ref);
  ws.serve({ type: 'error', ref: b.ref, code: 'not_joined', message: 'join the room before using it' });
  ws.serve({ type: 'ack', ref: a.ref, room: 'general', seq: 7 });
  assert.equal((await join).seq, 7);
  await assert.rejects(send, (e) => e instanceof ServerError && e.code === 'not_joined');
  conn.stop();
});

test('a dropped socket fails commands in flight and reconnects with a new socket', async () => {
  const { conn, ws, states } = await connected();
  const pending = conn.request({ type: 'ping' });
  ws.drop(1001);
  await assert.rejects(pending, (e) => e instanceof Disconnected);
  assert.equal(states.at(-1), 'reconnecting');
  await new Promise((r) => setTimeout(r, 600)); // first backoff is 250-500 ms
  assert.equal(FakeSocket.all.length, 2);
  FakeSocket.all[1].serve({ type: 'hello', user: { id: 'u', email: 'u@example.com' }, node: 'n2' });
  assert.equal(conn.state, 'connected');
  assert.equal(conn.node, 'n2');
  conn.stop();
  assert.equal(conn.state, 'closed');
});
