// assets/js/chat.js in node, against a scripted connection: ordering, de-duplication, resume
// with `since`, and the outbox's clientId discipline.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { Chat, ROOM_RULE_MESSAGE } from '../assets/js/chat.js';
import { Disconnected, ServerError, backoff } from '../assets/js/connection.js';

const ME = { id: 'me', email: 'me@example.com', displayName: 'Me' };

/** A connection whose requests the test answers by hand. */
class FakeConn extends EventTarget {
  connected = false;
  requests = [];
  /** Every request ever made: a close fails those still unanswered, as the real one does. */
  all = [];
  notified = [];
  request(frame) {
    if (!this.connected) return Promise.reject(new Disconnected());
    return new Promise((resolve, reject) => {
      const r = { frame, resolve, reject };
      this.requests.push(r);
      this.all.push(r);
    });
  }
  notify(frame) {
    this.notified.push(frame);
    return this.connected;
  }
  open(hello = {}) {
    this.connected = true;
    this.dispatchEvent(new CustomEvent('open', { detail: { type: 'hello', ...hello } }));
  }
  close() {
    this.connected = false;
    this.requests = [];
    for (const r of this.all.splice(0)) r.reject(new Disconnected());
    this.dispatchEvent(new CustomEvent('close', { detail: { code: 1006 } }));
  }
  frame(f) {
    this.dispatchEvent(new CustomEvent('frame', { detail: f }));
  }
  /** Takes the oldest unanswered request of `type`. */
  take(type) {
    const i = this.requests.findIndex((r) => r.frame.type === type);
    assert.notEqual(i, -1, `no ${type} request among ${JSON.stringify(this.requests.map((r) => r.frame))}`);
    return this.requests.splice(i, 1)[0];
  }
}

function msg(seq, { sender = 'other', clientId, content = `m${seq}` } = {}) {
  return {
    type: 'message',
    id: `id-${seq}`,
    room: 'general',
    seq,
    senderId: sender,
    senderName: sender === 'me' ? ME.displayName : 'Other',
    content,
    createdAt: new Date(1_700_000_000_000 + seq * 1000).toISOString(),
    ...(clientId ? { clientId } : {}),
  };
}

function setup({ history = () => [], rooms = [] } = {}) {
  const conn = new FakeConn();
  const apiCalls = [];
  const auth = {
    api: async (path, init = {}) => {
      apiCalls.push(init.method ? `${init.method} ${path}` : path);
      if (path === '/api/rooms') return { rooms };
      if (path.startsWith('/api/dm/')) return { name: 'dm:abc', kind: 'direct', peer: { userId: 'u2', displayName: 'Bo' } };
      return { messages: history(path) };
    },
  };
  let n = 0;
  const chat = new Chat({ auth, conn, user: ME, storage: null, uuid: () => `c${++n}` });
  const events = [];
  for (const type of ['message', 'history', 'confirmed', 'outbox', 'updated']) {
    chat.addEventListener(type, (e) => events.push({ type, ...e.detail }));
  }
  return { conn, chat, auth, apiCalls, events };
}

const tick = () => new Promise((r) => setImmediate(r));

test('room names are checked with the server rule before joining', () => {
  const { chat } = setup();
  assert.throws(() => chat.join('no spaces'), { message: ROOM_RULE_MESSAGE });
  assert.throws(() => chat.join('x'.repeat(65)), { message: ROOM_RULE_MESSAGE });
  assert.doesNotThrow(() => chat.join('team:dev_ops-1'));
});

test('a fresh join loads history below the acked seq, and overlapping live frames are kept once', async () => {
  const { conn, chat, apiCalls, events } = setup({ history: () => [msg(1), msg(2), msg(3)].map(({ type, ...m }) => m) });
  conn.open();
  const room = chat.join('general');
  conn.take('join_room').resolve({ type: 'ack', room: 'general', seq: 3 });
  await tick();
  assert.deepEqual(apiCalls.filter((p) => p.startsWith('/api/messages')), ['/api/messages/general?limit=50&before=4']);
  conn.frame(msg(3)); // overlaps history
  conn.frame(msg(4));
  assert.deepEqual([...room.messages.keys()].sort((a, b) => a - b), [1, 2, 3, 4]);
  assert.deepEqual(events.filter((e) => e.type === 'message').map((e) => e.msg.seq), [4]);
  assert.equal(room.hasMore, false);
});

test('after a drop, each room resumes with since = the last seq seen', async () => {
  const { conn, chat } = setup();
  conn.open();
  chat.join('general');
  const first = conn.take('join_room');
  assert.equal(first.frame.since, undefined);
  first.resolve({ type: 'ack', room: 'general', seq: 0 });
  await tick();
  conn.frame(msg(1));
  conn.frame(msg(2));
  conn.close();
  conn.open();
  const resume = conn.take('join_room');
  assert.equal(resume.frame.since, 2);
  // The resume ack carries the room's latest seq; frames after `since` follow it.
  resume.resolve({ type: 'ack', room: 'general', seq: 5 });
  await tick();
  for (const s of [3, 4, 5]) conn.frame(msg(s));
  assert.equal(chat.rooms.get('general').lastSeq, 5);
});

test('a send cut off by a disconnect is sent again with the same clientId after the re-join', async () => {
  const { conn, chat } = setup();
  conn.open();
  chat.join('general');
  conn.take('join_room').resolve({ type: 'ack', room: 'general', seq: 0 });
  await tick();
  const entry = chat.send('general', '  hello  ');
  assert.equal(entry.content, 'hello');
  const sent = conn.take('send_message');
  assert.equal(sent.frame.clientId, entry.clientId);
  conn.close();
  await tick();
  assert.equal(entry.status, 'queued');
  conn.open();
  conn.take('join_room').resolve({ type: 'ack', room: 'general', seq: 1 });
  await tick();
  const again = conn.take('send_message');
  assert.equal(again.frame.clientId, entry.clientId);
  again.resolve({ type: 'ack', id: 'id-1', seq: 1 });
  await tick();
  const room = chat.rooms.get('general');
  assert.equal(room.outbox.size, 0);
  assert.equal(room.messages.get(1).content, 'hello');
});

test('a refused send is failed until retried, and the retry reuses its clientId', async () => {
  const { conn, chat } = setup();
  conn.open();
  chat.join('general');
  conn.take('join_room').resolve({ type: 'ack', room: 'general', seq: 0 });
  await tick();
  const entry = chat.send('general', 'hi');
  conn.take('send_message').reject(new ServerError('rate_limited', 'too many messages; slow down'));
  await tick();
  assert.equal(entry.status, 'failed');
  assert.equal(entry.error, 'too many messages; slow down');
  chat.retry('general', entry.clientId);
  const retry = conn.take('send_message');
  assert.equal(retry.frame.clientId, entry.clientId);
});

test("the server's message limit from hello bounds what is sent", async () => {
  const { conn, chat } = setup();
  let limits = 0;
  chat.addEventListener('limits', () => limits++);
  conn.open({ messageMaxLen: 10 });
  assert.equal(chat.messageMaxLen, 10);
  assert.equal(limits, 1);
  chat.join('general');
  conn.take('join_room').resolve({ type: 'ack', room: 'general', seq: 0 });
  await tick();
  const long = chat.send('general', 'ü'.repeat(11));
  assert.equal(long.status, 'failed');
  assert.equal(long.error, 'message is longer than 10 characters');
  const fits = chat.send('general', 'ü'.repeat(10));
  assert.notEqual(fits.status, 'failed');
  // A hello without it (an older server) keeps what is known.
  conn.close();
  conn.open();
  assert.equal(chat.messageMaxLen, 10);
});

test('an own message frame confirms the pending entry; the later ack changes nothing', async () => {
  const { conn, chat, events } = setup();
  conn.open();
  chat.join('general');
  conn.take('join_room').resolve({ type: 'ack', room: 'general', seq: 0 });
  await tick();
  const entry = chat.send('general', 'mine');
  const sent = conn.take('send_message');
  conn.frame(msg(1, { sender: 'me', clientId: entry.clientId, content: 'mine' }));
  sent.resolve({ type: 'ack', id: 'id-1', seq: 1 });
  await tick();
  const room = chat.rooms.get('general');
  assert.equal(room.outbox.size, 0);
  assert.equal(room.messages.size, 1);
  assert.equal(events.filter((e) => e.type === 'confirmed').length, 1);
  assert.equal(events.filter((e) => e.type === 'message').length, 0);
});

test('an ack before the frame shows the message at once, then the frame replaces it', async () => {
  const { conn, chat, events } = setup();
  conn.open();
  chat.join('general');
  conn.take('join_room').resolve({ type: 'ack', room: 'general', seq: 0 });
  await tick();
  const entry = chat.send('general', 'mine');
  conn.take('send_message').resolve({ type: 'ack', id: 'id-1', seq: 1 });
  await tick();
  const room = chat.rooms.get('general');
  assert.equal(room.messages.get(1).provisional, true);
  assert.equal(room.lastSeq, 0, 'an ack does not move the resume point');
  conn.frame(msg(1, { sender: 'me', clientId: entry.clientId, content: 'mine' }));
  assert.equal(room.messages.get(1).provisional, undefined);
  assert.equal(room.lastSeq, 1);
  assert.equal(events.filter((e) => e.type === 'updated').length, 1);
});

test('messages in rooms not in view count as unread until the room is shown', async () => {
  const { conn, chat } = setup();
  conn.open();
  chat.join('general');
  chat.join('random');
  conn.take('join_room').resolve({ type: 'ack', room: 'general', seq: 0 });
  conn.take('join_room').resolve({ type: 'ack', room: 'random', seq: 0 });
  await tick();
  chat.setActive('general');
  conn.frame({ ...msg(1), room: 'random' });
  conn.frame({ ...msg(2), room: 'random' });
  conn.frame(msg(1));
  assert.equal(chat.rooms.get('random').unread, 2);
  assert.equal(chat.rooms.get('general').unread, 0);
  chat.setActive('random');
  assert.equal(chat.totalUnread, 0);
});

test('typing is sent at most every two seconds', async () => {
  const { conn, chat } = setup();
  conn.open();
  chat.join('general');
  conn.take('join_room').resolve({ type: 'ack', room: 'general', seq: 0 });
  await tick();
  chat.typing('general');
  chat.typing('general');
  assert.equal(conn.notified.length, 1);
});

test('being removed from a room shuts it with the reason; others being removed is a notice', async () => {
  const { conn, chat } = setup();
  const notices = [];
  const errors = [];
  chat.addEventListener('system', (e) => notices.push(e.detail.frame.message));
  chat.addEventListener('join-error', (e) => errors.push(e.detail.message));
  conn.open();
  const room = chat.join('general');
  conn.take('join_room').resolve({ type: 'ack', room: 'general', seq: 0 });
  await tick();
  conn.frame({ type: 'removed', room: 'general', userId: 'other', reason: 'kicked' });
  assert.deepEqual(notices, ['A member was kicked from the room']);
  assert.equal(room.joined, true);
  conn.frame({ type: 'removed', room: 'general', userId: ME.id, reason: 'banned' });
  assert.equal(room.joined, false);
  assert.equal(room.joinError, 'You were banned from this room.');
  assert.deepEqual(errors, ['You were banned from this room.']);
});

test('the rooms I am a member of come from the server, labelled by title or peer', async () => {
  const rooms = [
    { name: 'lobby', kind: 'public', lastSeq: 3 },
    { name: 'team', kind: 'private', title: 'The Team', role: 'owner', lastSeq: 0 },
    { name: 'dm:abc', kind: 'direct', role: 'member', peer: { userId: 'u2', displayName: 'Bo' }, lastSeq: 1 },
  ];
  const { conn, chat } = setup({ rooms });
  conn.open();
  await tick();
  assert.deepEqual([...chat.rooms.keys()].sort(), ['dm:abc', 'team'], 'a new device shows my rooms, not every public one');
  assert.deepEqual(
    conn.requests.filter((r) => r.frame.type === 'join_room').map((r) => r.frame.room).sort(),
    ['dm:abc', 'team'],
  );
  assert.equal(chat.label('team'), 'The Team');
  assert.equal(chat.label('dm:abc'), '@Bo');
  assert.equal(chat.label('lobby'), '#lobby');
  assert.equal(chat.myRole('team'), 'owner');
  assert.equal(chat.myRole('lobby'), null);
});

test('leaving a room I am a member of ends the membership too', async () => {
  const rooms = [{ name: 'team', kind: 'private', role: 'member', lastSeq: 0 }];
  const { conn, chat, apiCalls } = setup({ rooms });
  conn.open();
  await tick();
  conn.take('join_room').resolve({ type: 'ack', room: 'team', seq: 0 });
  await tick();
  chat.leave('team');
  await tick();
  assert.ok(apiCalls.includes('DELETE /api/rooms/team/members/me'), JSON.stringify(apiCalls));
  assert.ok(!chat.rooms.has('team'));
});

test('a direct room opens over REST and joins', async () => {
  const { conn, chat } = setup();
  conn.open();
  const room = await chat.openDirect('u2');
  assert.equal(room.name, 'dm:abc');
  assert.equal(conn.take('join_room').frame.room, 'dm:abc');
  assert.equal(chat.label('dm:abc'), '@Bo');
});

test('being muted is told in the room, with until when', async () => {
  const { conn, chat } = setup();
  conn.open();
  const room = chat.join('general');
  conn.take('join_room').resolve({ type: 'ack', room: 'general', seq: 0 });
  await tick();
  const notes = [];
  chat.addEventListener('system', (e) => notes.push(e.detail.frame.message));
  conn.frame({ type: 'muted', room: 'general', userId: 'someone', until: '2030-01-01T00:00:00+00:00' });
  assert.equal(room.mutedUntil, null, 'others being muted changes nothing for me');
  conn.frame({ type: 'muted', room: 'general', userId: 'me', until: '2030-01-01T00:00:00+00:00' });
  assert.equal(room.mutedUntil, '2030-01-01T00:00:00+00:00');
  conn.frame({ type: 'muted', room: 'general', userId: 'me', until: null });
  assert.equal(room.mutedUntil, null);
  assert.equal(notes.length, 2);
  assert.match(notes[0], /muted/);
});

test('a deletion turns the message into a tombstone and moves the resume point', async () => {
  const { conn, chat, events } = setup();
  conn.open();
  const room = chat.join('general');
  conn.take('join_room').resolve({ type: 'ack', room: 'general', seq: 0 });
  await tick();
  conn.frame(msg(1));
  conn.frame({ type: 'message_deleted', room: 'general', seq: 2, id: 'id-1', deletedBy: 'other', deletedAt: '2030-01-01T00:00:00+00:00' });
  assert.equal(room.lastSeq, 2, 'a resume starts after the deletion');
  assert.equal(room.messages.get(1).content, '');
  assert.equal(room.messages.get(1).deletedAt, '2030-01-01T00:00:00+00:00');
  assert.deepEqual(events.filter((e) => e.type === 'updated').map((e) => e.msg.seq), [1]);
  assert.equal(chat.mayDelete('general', room.messages.get(1)), false, 'a tombstone is not deleted twice');
  assert.equal(chat.mayDelete('general', msg(3, { sender: 'me' })), true, 'mine');
  assert.equal(chat.mayDelete('general', msg(3)), false, 'not mine, and I moderate nothing');
});

test('an edit replaces the content, marks it edited and moves the resume point', async () => {
  const { conn, chat, events } = setup();
  conn.open();
  const room = chat.join('general');
  conn.take('join_room').resolve({ type: 'ack', room: 'general', seq: 0 });
  await tick();
  conn.frame(msg(1, { content: 'helo' }));
  conn.frame({ type: 'message_edited', room: 'general', seq: 2, id: 'id-1', content: 'hello', editedAt: '2030-01-01T00:00:00+00:00' });
  assert.equal(room.lastSeq, 2);
  assert.equal(room.messages.get(1).content, 'hello');
  assert.equal(room.messages.get(1).editedAt, '2030-01-01T00:00:00+00:00');
  assert.deepEqual(events.filter((e) => e.type === 'updated').map((e) => e.msg.seq), [1]);
  await assert.rejects(chat.editMessage('general', 'id-1', '   '), /needs some text/);
});

test('reconnect backoff grows, is capped, and is jittered', () => {
  assert.ok(backoff(0, () => 0) >= 250 && backoff(0, () => 1) <= 500);
  assert.ok(backoff(3, () => 0.5) > backoff(1, () => 0.5));
  assert.ok(backoff(40, () => 1) <= 15_000);
  assert.notEqual(backoff(5, () => 0), backoff(5, () => 1));
});

test('unread counts come from the read marker, which the server and my other devices move', async () => {
  const rooms = [
    { name: 'general', kind: 'public', lastSeq: 5, role: 'member', lastReadSeq: 2, unread: 3 },
    { name: 'random', kind: 'public', lastSeq: 0, role: 'member', lastReadSeq: 0, unread: 0 },
  ];
  const { conn, chat } = setup({ rooms });
  conn.open();
  await chat.loadDirectory();
  for (const name of ['general', 'random']) {
    const r = conn.take('join_room');
    r.resolve({ type: 'ack', room: r.frame.room, seq: name === 'general' ? 5 : 0 });
  }
  await tick();
  assert.equal(chat.rooms.get('general').unread, 3, 'what the server says, before anything is shown');
  conn.frame({ ...msg(1), room: 'random' });
  assert.equal(chat.rooms.get('random').unread, 1);
  // An edit moves the stream but is not an unread message.
  conn.frame({ type: 'message_edited', room: 'random', seq: 2, id: 'id-1', content: 'x', editedAt: new Date().toISOString() });
  assert.equal(chat.rooms.get('random').unread, 1);
  assert.equal(chat.totalUnread, 4);
  // Another device of mine read general up to 4.
  conn.frame({ type: 'read', room: 'general', seq: 4, unread: 1 });
  assert.equal(chat.rooms.get('general').unread, 1);
  // A stale marker does not move it back.
  conn.frame({ type: 'read', room: 'general', seq: 3, unread: 2 });
  assert.equal(chat.rooms.get('general').unread, 1);
});

test('a room in view is read at once, and a burst is told to the server with one mark_read', async () => {
  const { conn, chat } = setup();
  conn.open();
  await chat.loadDirectory(); // general is not in it: joining makes me a new member
  chat.join('general');
  conn.take('join_room').resolve({ type: 'ack', room: 'general', seq: 0 });
  await tick();
  let dividers = 0;
  chat.addEventListener('divider', () => dividers++);
  chat.setActive('general');
  assert.equal(dividers, 1, 'opening a room places the divider');
  for (let seq = 1; seq <= 5; seq++) conn.frame(msg(seq));
  assert.equal(chat.rooms.get('general').unread, 0);
  await new Promise((r) => setTimeout(r, 400));
  const marks = conn.requests.filter((r) => r.frame.type === 'mark_read');
  assert.equal(marks.length, 1, JSON.stringify(marks.map((r) => r.frame)));
  assert.deepEqual(marks[0].frame, { type: 'mark_read', room: 'general', seq: 5 });
  marks[0].resolve({ type: 'ack', room: 'general', seq: 5, unread: 0 });
  await tick();
  assert.equal(chat.rooms.get('general').lastReadSeq, 5);
  chat.dispose();
});

test("a read marker's count taken before messages that arrived first does not hide them", async () => {
  const { conn, chat } = setup();
  conn.open();
  await chat.loadDirectory();
  for (const name of ['general', 'random']) {
    chat.join(name);
    conn.take('join_room').resolve({ type: 'ack', room: name, seq: 0 });
  }
  await tick();
  chat.setActive('general');
  conn.frame(msg(1));
  await new Promise((r) => setTimeout(r, 400));
  const mark = conn.requests.find((r) => r.frame.type === 'mark_read');
  assert.deepEqual(mark.frame, { type: 'mark_read', room: 'general', seq: 1 });
  // I look at another room; two messages reach general before the server answers the mark
  // with the count it took when it stored it (nothing after seq 1 then).
  chat.setActive('random');
  conn.frame(msg(2));
  conn.frame(msg(3));
  assert.equal(chat.rooms.get('general').unread, 2);
  mark.resolve({ type: 'ack', room: 'general', seq: 1, unread: 0 });
  await tick();
  assert.equal(chat.rooms.get('general').unread, 2, 'the two messages after the marker stay unread');
  // The same for the read event my other devices get.
  conn.frame({ type: 'read', room: 'general', seq: 1, unread: 0 });
  assert.equal(chat.rooms.get('general').unread, 2);
  chat.dispose();
});

test('a hidden page does not mark what arrives as read', async () => {
  let visible = false;
  const conn = new FakeConn();
  const auth = { api: async () => ({ rooms: [], messages: [] }) };
  const chat = new Chat({ auth, conn, user: ME, storage: null, uuid: () => 'c', visible: () => visible });
  conn.open();
  chat.join('general');
  conn.take('join_room').resolve({ type: 'ack', room: 'general', seq: 0 });
  await tick();
  chat.setActive('general');
  conn.frame(msg(1));
  conn.frame(msg(2));
  assert.equal(chat.rooms.get('general').unread, 2);
  visible = true;
  chat.markRead('general');
  assert.equal(chat.rooms.get('general').unread, 0);
  chat.dispose();
});

test('mentions of me count apart from other unread messages, from the server and live', async () => {
  const rooms = [{ name: 'team', kind: 'public', lastSeq: 3, role: 'member', lastReadSeq: 1, unread: 2, mentions: 1 }];
  const { conn, chat } = setup({ rooms });
  conn.open();
  await chat.loadDirectory();
  conn.take('join_room').resolve({ type: 'ack', room: 'team', seq: 3 });
  await tick();
  const team = chat.rooms.get('team');
  assert.equal(team.mentions, 1);
  conn.frame({ ...msg(4), room: 'team', mentions: [ME.id] });
  conn.frame({ ...msg(5), room: 'team', mentionsAll: true });
  conn.frame({ ...msg(6), room: 'team', mentions: ['someone-else'] });
  assert.equal(team.unread, 5);
  assert.equal(team.mentions, 3);
  conn.frame({ type: 'read', room: 'team', seq: 6, unread: 0, mentions: 0 });
  assert.equal(team.mentions, 0);
});

test('presence events keep who is in a room; a disconnect forgets it until the re-join', async () => {
  const { conn, chat } = setup();
  conn.open();
  chat.join('general');
  conn.take('join_room').resolve({ type: 'ack', room: 'general', seq: 0 });
  await tick();
  assert.equal(chat.isOnline('general', 'u1'), undefined, 'unknown before the first event');
  conn.frame({ type: 'presence', room: 'general', online: ['u1', 'u2'], offline: [] });
  conn.frame({ type: 'presence', room: 'general', online: [], offline: ['u2'] });
  assert.equal(chat.isOnline('general', 'u1'), true);
  assert.equal(chat.isOnline('general', 'u2'), false);
  conn.close();
  assert.equal(chat.isOnline('general', 'u1'), undefined);
});
