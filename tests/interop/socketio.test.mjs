// confab's Socket.IO compatibility, checked with the real socket.io-client: written the way a
// client of the original Node.js platform is written (`io(url, { auth: { token } })`,
// `socket.emit("join_room", …)`, `socket.on("message", …)`, ack callbacks), plus the one option
// confab needs, `transports: ["websocket"]`. The native side uses the `ws` package (Node 20 has
// no global WebSocket).
//
// Run by tests/socketio.rs (`interop_with_the_real_socket_io_client`) against two confab nodes
// sharing PostgreSQL and Redis. By hand: `npm ci`, start two such nodes, register three users
// with one password, then
//   CONFAB_URLS=http://127.0.0.1:4000,http://127.0.0.1:4001 \
//   CONFAB_EMAILS=a@example.com,b@example.com,c@example.com CONFAB_PASSWORD=… node --test
//
// Every wait is bounded by WAIT_MS; nothing sleeps.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { io } from "socket.io-client";
import WebSocket from "ws";

const WAIT_MS = 10_000;
const URLS = (process.env.CONFAB_URLS ?? "").split(",").filter(Boolean);
const EMAILS = (process.env.CONFAB_EMAILS ?? "").split(",").filter(Boolean);
const PASSWORD = process.env.CONFAB_PASSWORD ?? "";
const CONFIGURED = URLS.length === 2 && EMAILS.length === 3 && PASSWORD !== "";
const SKIP = CONFIGURED ? false : "set CONFAB_URLS (two base URLs), CONFAB_EMAILS (three users) and CONFAB_PASSWORD";
const [NODE_A, NODE_B] = URLS;

/** Rejects with `what` unless `promise` settles within WAIT_MS. */
function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${WAIT_MS} ms waiting for ${what}`)), WAIT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Events received by one client, in order; `take` waits for the first one that matches. */
class Inbox {
  constructor(label) {
    this.label = label;
    this.items = [];
    this.waiters = [];
  }

  push(name, payload) {
    this.items.push({ name, payload });
    for (const waiter of [...this.waiters]) this.#serve(waiter);
  }

  #serve(waiter) {
    const i = this.items.findIndex((it) => it.name === waiter.name && waiter.match(it.payload));
    if (i < 0) return false;
    const [item] = this.items.splice(i, 1);
    this.waiters = this.waiters.filter((w) => w !== waiter);
    waiter.resolve(item.payload);
    return true;
  }

  /** The first `name` event (matching `match`), removing it; earlier others stay queued. */
  take(name, match = () => true) {
    const promise = new Promise((resolve) => {
      const waiter = { name, match, resolve };
      this.waiters.push(waiter);
      this.#serve(waiter);
    });
    return within(promise, `${this.label}: a "${name}" event (queued: ${JSON.stringify(this.items)})`);
  }

  /** The next `count` events named `name`, in arrival order. */
  async takeMany(name, count) {
    const out = [];
    while (out.length < count) out.push(await this.take(name));
    return out;
  }

  /** Events still queued under `name`. */
  pending(name) {
    return this.items.filter((it) => it.name === name).map((it) => it.payload);
  }
}

/** A Socket.IO event as a native client sees it: the same, without the sender's address. */
function asNative(event) {
  const { senderEmail: _, email: __, ...rest } = event;
  return rest;
}

async function login(url, email) {
  const res = await fetch(`${url}/api/auth/login`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ email, password: PASSWORD }),
    signal: AbortSignal.timeout(WAIT_MS),
  });
  const body = await res.json();
  assert.equal(res.status, 200, `login of ${email} failed: ${JSON.stringify(body)}`);
  return { email, token: body.token, id: body.user.id, name: body.user.displayName };
}

const open = [];

/** A Socket.IO client as the original platform's clients make one, listening for its events. */
async function connectSocketIo(url, token, label) {
  const socket = io(url, { auth: { token }, transports: ["websocket"] });
  open.push(() => socket.disconnect());
  const inbox = new Inbox(label);
  socket.on("message", (msg) => inbox.push("message", msg));
  socket.on("system", (msg) => inbox.push("system", msg));
  socket.on("typing", (msg) => inbox.push("typing", msg));
  socket.on("error", (msg) => inbox.push("error", msg));
  await within(
    new Promise((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("connect_error", reject);
    }),
    `${label}: connect`,
  );
  return { socket, inbox };
}

/** `socket.emit(event, payload, (res) => …)`, the callback's argument as a promise. */
function emitWithCallback(socket, event, payload) {
  return within(new Promise((resolve) => socket.emit(event, payload, (res) => resolve(res))), `the ${event} ack`);
}

/** A native `/ws` client. */
async function connectNative(url, user, label) {
  const ws = new WebSocket(`${url.replace(/^http/, "ws")}/ws`, {
    headers: { authorization: `Bearer ${user.token}` },
  });
  open.push(() => ws.close());
  const inbox = new Inbox(label);
  ws.on("message", (data) => {
    const frame = JSON.parse(data.toString());
    inbox.push(frame.type, frame);
  });
  await within(
    new Promise((resolve, reject) => {
      ws.once("open", resolve);
      ws.once("error", reject);
    }),
    `${label}: WebSocket open`,
  );
  const hello = await inbox.take("hello");
  assert.equal(hello.user.email, user.email);
  return {
    inbox,
    send: (frame) => ws.send(JSON.stringify(frame)),
    close: () => ws.close(),
  };
}

after(() => {
  for (const close of open) close();
});

describe("connecting", { skip: SKIP }, () => {
  let alice;
  before(async () => {
    alice = await login(NODE_A, EMAILS[0]);
  });

  test("a bad or missing token gets connect_error with message unauthorized", async () => {
    for (const auth of [{ token: "not-a-token" }, {}, undefined]) {
      const socket = io(NODE_A, { auth, transports: ["websocket"] });
      open.push(() => socket.disconnect());
      const err = await within(
        new Promise((resolve) => socket.once("connect_error", resolve)),
        `connect_error for auth ${JSON.stringify(auth)}`,
      );
      assert.ok(err instanceof Error);
      assert.equal(err.message, "unauthorized");
      assert.equal(socket.connected, false);
      // The usual way to retry with a fresh token, on the same connection.
      socket.auth = { token: alice.token };
      socket.connect();
      await within(new Promise((resolve) => socket.once("connect", resolve)), "connect after the retry");
      assert.equal(socket.connected, true);
      assert.equal(typeof socket.id, "string");
      socket.disconnect();
    }
  });

  test("the default transports (polling first) connect and upgrade to websocket", async () => {
    const polling = io(NODE_A, { auth: { token: alice.token }, reconnection: false });
    open.push(() => polling.disconnect());
    await within(new Promise((resolve) => polling.once("connect", resolve)), "connect with default transports");
    assert.equal(polling.connected, true);
    if (polling.io.engine.transport.name !== "websocket") {
      await within(new Promise((resolve) => polling.io.engine.once("upgrade", resolve)), "upgrade to websocket");
    }
    assert.equal(polling.io.engine.transport.name, "websocket");
    const ack = await emitWithCallback(polling, "join_room", { room: "polling-start" });
    assert.equal(ack.type, "ack");
    polling.disconnect();
  });
});

describe("chatting across transports and nodes", { skip: SKIP }, () => {
  // alice: Socket.IO on node A; bob: native on node B; carol: Socket.IO on node B.
  let alice, bob, carol;
  let a, b, c;

  before(async () => {
    [alice, bob, carol] = await Promise.all([
      login(NODE_A, EMAILS[0]),
      login(NODE_B, EMAILS[1]),
      login(NODE_B, EMAILS[2]),
    ]);
  });

  test("join_room acks with the room's seq and says so in a system event", async () => {
    a = await connectSocketIo(NODE_A, alice.token, "alice");
    const ack = await emitWithCallback(a.socket, "join_room", { room: "general" });
    assert.deepEqual(ack, { type: "ack", room: "general", seq: ack.seq });
    assert.ok(Number.isInteger(ack.seq));
    assert.deepEqual(await a.inbox.take("system"), { room: "general", message: "You joined general" });

    b = await connectNative(NODE_B, bob, "bob");
    b.send({ type: "join_room", room: "general", ref: "j1" });
    assert.deepEqual(await b.inbox.take("ack"), { type: "ack", ref: "j1", room: "general", seq: ack.seq });
    assert.deepEqual(await a.inbox.take("system"), {
      type: "system",
      room: "general",
      event: "join",
      userId: bob.id,
      email: bob.email,
      name: bob.name,
      message: `${bob.name} joined general`,
    });

    c = await connectSocketIo(NODE_B, carol.token, "carol");
    // The older form: the room name alone.
    const ackC = await emitWithCallback(c.socket, "join_room", "general");
    assert.equal(ackC.type, "ack");
    assert.equal((await c.inbox.take("system")).message, "You joined general");
    assert.equal((await a.inbox.take("system")).message, `${carol.name} joined general`);
    // Bob (node B) may hear of alice's join, made on node A, after his own: events of different
    // nodes have no order. Carol's join comes from his own node, after his.
    const carolJoined = await b.inbox.take("system", (p) => p.userId === carol.id);
    assert.equal(carolJoined.message, `${carol.name} joined general`);
    assert.equal(carolJoined.email, undefined, "native clients see names, not addresses");
  });

  test("send_message acks like the native protocol and everyone gets the same message", async () => {
    const res = await emitWithCallback(a.socket, "send_message", { room: "general", content: "hello from socket.io" });
    assert.equal(res.type, "ack");
    assert.equal(typeof res.id, "string");
    assert.ok(Number.isInteger(res.seq) && res.seq >= 1);
    assert.deepEqual(Object.keys(res).sort(), ["id", "seq", "type"]);

    const mine = await a.inbox.take("message");
    assert.equal(mine.id, res.id);
    assert.equal(mine.seq, res.seq);
    assert.equal(mine.room, "general");
    assert.equal(mine.content, "hello from socket.io");
    assert.equal(mine.senderId, alice.id);
    assert.equal(mine.senderEmail, alice.email);
    assert.equal(mine.senderName, alice.name);
    assert.ok(!Number.isNaN(Date.parse(mine.createdAt)));
    assert.deepEqual(await b.inbox.take("message"), asNative(mine), "the native client on the other node");
    assert.deepEqual(await c.inbox.take("message"), mine, "the Socket.IO client on the other node");

    // Native → Socket.IO.
    b.send({ type: "send_message", room: "general", content: "hello from ws", ref: "s1" });
    const nativeAck = await b.inbox.take("ack");
    assert.equal(nativeAck.ref, "s1");
    assert.equal(nativeAck.seq, res.seq + 1);
    const fromBob = await a.inbox.take("message");
    assert.equal(fromBob.content, "hello from ws");
    assert.equal(fromBob.senderEmail, bob.email);
    assert.equal(fromBob.id, nativeAck.id);
    assert.deepEqual(await c.inbox.take("message"), fromBob);
    assert.deepEqual(await b.inbox.take("message"), asNative(fromBob));

    // emitWithAck (socket.io-client ≥ 4.6) and a clientId for idempotency.
    const first = await c.socket.timeout(WAIT_MS).emitWithAck("send_message", {
      room: "general",
      content: "once",
      clientId: "carol-1",
    });
    const again = await c.socket.timeout(WAIT_MS).emitWithAck("send_message", {
      room: "general",
      content: "once",
      clientId: "carol-1",
    });
    assert.deepEqual(again, first, "a repeated clientId is acked with the original id and seq");
    const once = await a.inbox.take("message");
    assert.equal(once.id, first.id);
    assert.equal(once.clientId, "carol-1");
    assert.deepEqual(await b.inbox.take("message"), asNative(once));
    assert.deepEqual(await c.inbox.take("message"), once);
  });

  test("interleaved sends arrive in the same order on both transports and nodes", async () => {
    const rounds = 8;
    const acks = [];
    for (let i = 0; i < rounds; i++) {
      acks.push(emitWithCallback(a.socket, "send_message", { room: "general", content: `a${i}` }));
      b.send({ type: "send_message", room: "general", content: `b${i}`, ref: `b${i}` });
      c.socket.emit("send_message", { room: "general", content: `c${i}` });
    }
    const total = rounds * 3;
    const [seenA, seenB, seenC] = await Promise.all([
      a.inbox.takeMany("message", total),
      b.inbox.takeMany("message", total),
      c.inbox.takeMany("message", total),
    ]);
    assert.deepEqual(seenB, seenA.map(asNative));
    assert.deepEqual(seenC, seenA);
    const seqs = seenA.map((m) => m.seq);
    for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1] + 1, `gapless: ${seqs}`);
    for (const prefix of ["a", "b", "c"]) {
      const own = seenA.map((m) => m.content).filter((t) => t.startsWith(prefix));
      assert.deepEqual(
        own,
        Array.from({ length: rounds }, (_, i) => `${prefix}${i}`),
      );
    }
    for (const [i, ack] of (await Promise.all(acks)).entries()) {
      const msg = seenA.find((m) => m.seq === ack.seq);
      assert.equal(msg.content, `a${i}`);
      assert.equal(msg.id, ack.id);
    }
    assert.equal((await b.inbox.takeMany("ack", rounds)).length, rounds);
  });

  test("typing reaches the room's other members on both transports", async () => {
    a.socket.emit("typing", { room: "general" });
    const expected = { type: "typing", room: "general", userId: alice.id, email: alice.email, name: alice.name };
    assert.deepEqual(await b.inbox.take("typing"), asNative(expected));
    assert.deepEqual(await c.inbox.take("typing"), expected);
  });

  test("invalid input: an error ack and the original platform's system message", async () => {
    const badRoom = await emitWithCallback(a.socket, "join_room", { room: "not a room!" });
    assert.equal(badRoom.type, "error");
    assert.equal(badRoom.code, "invalid_room");
    assert.equal(typeof badRoom.message, "string");
    assert.deepEqual(await a.inbox.take("system"), { message: "Invalid room name." });

    const empty = await emitWithCallback(a.socket, "send_message", { room: "general", content: "   " });
    assert.equal(empty.type, "error");
    assert.equal(empty.code, "invalid_payload");
    assert.deepEqual(await a.inbox.take("system"), { message: "Invalid message payload." });

    // Without a callback: an `error` event, and the same system message.
    a.socket.emit("send_message", { room: "general" });
    const err = await a.inbox.take("error");
    assert.equal(err.code, "invalid_payload");
    assert.deepEqual(await a.inbox.take("system"), { message: "Invalid message payload." });

    const notJoined = await emitWithCallback(a.socket, "send_message", { room: "random", content: "hi" });
    assert.equal(notJoined.code, "not_joined");

    // Binary payloads are refused, to the callback; the connection stays usable.
    const binary = await emitWithCallback(a.socket, "send_message", {
      room: "general",
      content: Buffer.from("hi"),
    });
    assert.deepEqual(binary, { type: "error", code: "invalid_payload", message: "binary packets are not supported" });
    assert.deepEqual(await a.inbox.take("system"), { message: "Invalid message payload." });
    const pong = await emitWithCallback(a.socket, "ping", {});
    assert.deepEqual(pong, { type: "pong" });
    assert.deepEqual(a.inbox.pending("error"), [], "one answer per binary emit");
    assert.deepEqual(a.inbox.pending("system"), []);
  });

  test("another namespace on the same connection gets connect_error", async () => {
    // What `io(url + "/admin")` does when it reuses the Manager of a socket on `url`.
    const admin = a.socket.io.socket("/admin", { auth: { token: alice.token } });
    open.push(() => admin.disconnect());
    const err = await within(new Promise((resolve) => admin.once("connect_error", resolve)), "connect_error");
    assert.equal(err.message, "Invalid namespace");
    admin.disconnect();
    assert.equal(a.socket.connected, true);
    assert.deepEqual(await emitWithCallback(a.socket, "ping", {}), { type: "pong" });
  });

  test("the client answers the server's heartbeat and stays connected", async () => {
    // tests/socketio.rs runs the nodes with a 1 s ping interval and a 4 s idle timeout: six
    // pings answered are well past it.
    let disconnected = null;
    a.socket.once("disconnect", (reason) => {
      disconnected = reason;
    });
    for (let i = 0; i < 6; i++) {
      await within(new Promise((resolve) => a.socket.io.once("ping", resolve)), `server ping ${i + 1}`);
    }
    assert.equal(disconnected, null);
    assert.equal(a.socket.connected, true);
    assert.deepEqual(await emitWithCallback(a.socket, "ping", {}), { type: "pong" });
  });

  test("message events only for rooms the socket joined", async () => {
    b.send({ type: "join_room", room: "random", ref: "r1" });
    assert.equal((await b.inbox.take("ack")).room, "random");
    b.send({ type: "send_message", room: "random", content: "elsewhere", ref: "r2" });
    await b.inbox.take("ack");
    assert.equal((await b.inbox.take("message")).room, "random");
    b.send({ type: "send_message", room: "general", content: "back in general", ref: "r3" });
    await b.inbox.take("ack");
    const next = await a.inbox.take("message");
    assert.equal(next.content, "back in general");
    assert.deepEqual(await c.inbox.take("message"), next);
    assert.deepEqual(await b.inbox.take("message"), asNative(next));
    assert.deepEqual(a.inbox.pending("message"), []);
    assert.deepEqual(c.inbox.pending("message"), []);
  });

  test("leave_room acks and the others see the system leave line", async () => {
    const ack = await emitWithCallback(c.socket, "leave_room", { room: "general" });
    assert.deepEqual(ack, { type: "ack", room: "general" });
    const left = await a.inbox.take("system", (s) => s.event === "leave");
    assert.equal(left.message, `${carol.name} left general`);
    assert.equal(left.email, carol.email, "Socket.IO clients get the address, as the original platform sent it");
    assert.equal((await b.inbox.take("system", (s) => s.event === "leave")).userId, carol.id);
  });

  test("a reconnecting Socket.IO client resumes with since on the other node", async () => {
    const last = (await emitWithCallback(a.socket, "send_message", { room: "general", content: "before" })).seq;
    await a.inbox.take("message");
    await b.inbox.take("message");
    a.socket.disconnect();
    assert.equal((await b.inbox.take("system", (s) => s.event === "leave")).userId, alice.id);

    const missed = [];
    for (const content of ["missed 1", "missed 2"]) {
      b.send({ type: "send_message", room: "general", content, ref: content });
      await b.inbox.take("ack");
      missed.push(await b.inbox.take("message"));
    }
    const a2 = await connectSocketIo(NODE_B, alice.token, "alice again");
    const ack = await emitWithCallback(a2.socket, "join_room", { room: "general", since: last });
    assert.deepEqual(ack, { type: "ack", room: "general", seq: last + 2 });
    assert.deepEqual((await a2.inbox.takeMany("message", 2)).map(asNative), missed);
    assert.equal((await a2.inbox.take("system")).message, "You joined general");

    b.send({ type: "send_message", room: "general", content: "live again", ref: "l" });
    assert.equal((await a2.inbox.take("message")).content, "live again");
    a2.socket.disconnect();
    b.close();
    c.socket.disconnect();
  });
});
