// Chat state: the rooms this user is in, their messages (by seq), the outbox of own messages not
// yet confirmed, typing indicators and unread counts (from the server's read markers, so every
// device of a user agrees). No DOM: the view listens to the events
// this dispatches, and node's test runner can drive it with a fake connection.
//
// Invariants, per room:
// - `messages` holds each seq once, whichever way it came (history, live, catch-up, ack).
// - `lastSeq` is the `since` for a resume: the join ack's seq on a fresh join, then the highest
//   seq that arrived as a `message` frame. The server delivers a room's frames in seq order
//   without gaps after a join, so nothing below it is missing from the live stream. A seq known
//   only from a send's ack does not move it (the frames before it may still be on their way).
// - An outbox entry keeps its `clientId` for ever: however often it is sent again (reconnects,
//   retry button), the server stores it once.

export const ROOM_RULE = /^[A-Za-z0-9:_-]{1,64}$/;
export const ROOM_RULE_MESSAGE = 'room names are 1 to 64 characters of A-Z a-z 0-9 : _ -';
export const HISTORY_PAGE = 50;
/** The longest message until the server says its own (`messageMaxLen` in `hello`). */
export const MESSAGE_MAX_LEN = 2000;
const SEND_TIMEOUT = 10_000;
const TYPING_SEND_EVERY = 2_000;
/** The server passes on at most one `typing` per user and room in this interval. */
const SERVER_TYPING_INTERVAL = 1_000;
const TYPING_SHOWN_FOR = 4_000;
/** A burst of messages in view is marked read with one `mark_read`. */
const READ_DEBOUNCE = 300;

/** Why a room name is refused, or null when it is a valid name. */
export function roomNameProblem(name) {
  return ROOM_RULE.test(name) ? null : ROOM_RULE_MESSAGE;
}

export class Room {
  constructor(name) {
    this.name = name;
    /** @type {Map<number, object>} seq → message */
    this.messages = new Map();
    this.lastSeq = null;
    this.joined = false;
    this.joinError = null;
    /** Whether the newest page of history has been fetched (after the first join). */
    this.historyLoaded = false;
    this.hasMore = true;
    this.loadingHistory = false;
    this.historyError = null;
    /**
     * My read marker: the seq up to which I have read. The server's (GET /api/rooms, `read`
     * frames, `mark_read` acks) once known; until then the seq of my first join here.
     */
    this.lastReadSeq = null;
    this.readKnown = false;
    /** Messages after the marker (the server's count, then one more per message that arrives unseen). */
    this.unread = 0;
    /** Of those, the ones that mention me. */
    this.mentions = 0;
    /** The marker when the room was last opened: the "new messages" divider goes after it. */
    this.readAtOpen = null;
    /** @type {Map<string, {clientId: string, content: string, status: string, error: string|null, createdAt: string}>} */
    this.outbox = new Map();
    /** @type {Map<string, {email: string, until: number}>} userId → who is typing */
    this.typing = new Map();
    this.lastTypingSent = 0;
    /** An own message went out since the last `typing`: others have hidden the indicator. */
    this.sentSinceTyping = false;
    /** The server's view of the room (GET /api/rooms): kind, title, topic, peer, my role. */
    this.info = null;
    /** Until when I may not write here (RFC 3339), while muted. */
    this.mutedUntil = null;
    /** Who is in the room right now (user ids), from `presence` events; null until the first. */
    this.online = null;
  }

  /**
   * Takes the server's word for my read marker and the messages after it (the marker only
   * moves forward once known).
   */
  setRead(seq, unread, mentions) {
    if (typeof seq !== 'number') return false;
    if (this.readKnown && this.lastReadSeq !== null && seq < this.lastReadSeq) return false;
    this.lastReadSeq = seq;
    this.readKnown = true;
    if (typeof unread === 'number') this.unread = unread;
    if (typeof mentions === 'number') this.mentions = mentions;
    return true;
  }

  /** Messages held here after `seq`. */
  heldAfter(seq) {
    let n = 0;
    for (const s of this.messages.keys()) if (s > seq) n++;
    return n;
  }

  get oldestSeq() {
    let min = null;
    for (const seq of this.messages.keys()) if (min === null || seq < min) min = seq;
    return min;
  }
}

export class Chat extends EventTarget {
  /** @type {Map<string, Room>} */
  rooms = new Map();
  /** The longest message the server takes, in characters, as its `hello` said. */
  messageMaxLen = MESSAGE_MAX_LEN;
  active = null;
  /** Rooms with activity, from GET /api/rooms. */
  directory = [];
  me;

  #auth;
  #conn;
  #storage;
  #uuid;
  #now;
  #typingTimer = 0;
  #listeners = [];
  #visible;
  #directoryLoaded = false;
  /** room name → timer of a pending `mark_read` */
  #readTimers = new Map();

  constructor({
    auth,
    conn,
    user,
    storage = globalThis.localStorage,
    uuid = () => globalThis.crypto.randomUUID(),
    now = () => Date.now(),
    visible = () => !globalThis.document?.hidden,
  }) {
    super();
    this.#auth = auth;
    this.#conn = conn;
    this.me = user;
    this.#storage = storage;
    this.#uuid = uuid;
    this.#now = now;
    this.#visible = visible;
    this.#listen(conn, 'open', (e) => {
      const max = e.detail?.messageMaxLen;
      if (Number.isInteger(max) && max > 0 && max !== this.messageMaxLen) {
        this.messageMaxLen = max;
        this.#emit('limits');
      }
      this.#resume();
    });
    this.#listen(conn, 'close', () => this.#onDisconnect());
    this.#listen(conn, 'frame', (e) => this.#onFrame(e.detail));
    for (const name of this.#savedRooms()) this.rooms.set(name, new Room(name));
  }

  /** Detaches from the connection (sign-out). */
  dispose() {
    for (const [target, type, fn] of this.#listeners) target.removeEventListener(type, fn);
    this.#listeners = [];
    clearTimeout(this.#typingTimer);
    for (const t of this.#readTimers.values()) clearTimeout(t);
    this.#readTimers.clear();
  }

  get totalUnread() {
    let n = 0;
    for (const room of this.rooms.values()) n += room.unread;
    return n;
  }

  /** Joins `name` (validated client-side first); resolves once the server has acked it. */
  join(name) {
    const problem = roomNameProblem(name);
    if (problem) throw new Error(problem);
    let room = this.rooms.get(name);
    if (!room) {
      room = new Room(name);
      this.rooms.set(name, room);
      this.#saveRooms();
      this.#emit('rooms');
      if (this.#conn.connected) this.#joinRoom(room);
    } else if (room.joinError && this.#conn.connected) {
      this.#joinRoom(room);
    }
    return room;
  }

  leave(name) {
    const room = this.rooms.get(name);
    if (!room) return;
    this.rooms.delete(name);
    this.#saveRooms();
    if (room.joined) this.#conn.request({ type: 'leave_room', room: name }).catch(() => {});
    // Membership too, or the room comes back from the server's list on the next visit.
    if (room.info?.role) {
      const path = `/api/rooms/${encodeURIComponent(name)}/members/${encodeURIComponent(this.me.id)}`;
      this.#auth.api(path, { method: 'DELETE' }).catch(() => {});
    }
    if (this.active === name) this.active = null;
    this.#emit('left', { room });
    this.#emit('rooms');
  }

  setActive(name) {
    const room = this.rooms.get(name);
    const changed = this.active !== (room ? name : null);
    this.active = room ? name : null;
    if (room && changed) {
      room.readAtOpen = room.readKnown ? room.lastReadSeq : null;
      this.#emit('divider', { room });
    }
    if (room) this.markRead(name);
    this.#emit('active', { room: room ?? null });
  }

  /**
   * I have seen everything in `name` (it is shown, and the page is visible): the marker moves
   * to the room's latest seq at once here, and the server hears of it shortly after (one
   * `mark_read` for a burst of messages), which tells my other devices.
   */
  markRead(name) {
    const room = this.rooms.get(name);
    if (!room || room.lastSeq === null || !this.#visible()) return;
    if (room.lastReadSeq !== null && room.lastSeq <= room.lastReadSeq && room.unread === 0 && room.mentions === 0) return;
    room.lastReadSeq = Math.max(room.lastReadSeq ?? 0, room.lastSeq);
    room.unread = 0;
    room.mentions = 0;
    this.#emit('rooms');
    if (this.#readTimers.has(name)) return;
    this.#readTimers.set(
      name,
      setTimeout(() => {
        this.#readTimers.delete(name);
        const r = this.rooms.get(name);
        // Not before the server's marker is known: opening a room must not move it past the
        // place where its "new messages" divider belongs.
        if (!r || !this.#conn.connected || r.lastReadSeq === null || !r.readKnown) return;
        this.#conn
          .request({ type: 'mark_read', room: name, seq: r.lastReadSeq })
          .then((ack) => {
            // Messages that came in meanwhile are read too (the room is in view): marked next.
            if (this.rooms.get(name) === r && ack.seq >= r.lastReadSeq && r.setRead(ack.seq, ack.unread, ack.mentions)) {
              this.#floorUnread(r);
              this.#emit('rooms');
            }
          })
          .catch(() => {}); // not a member (yet), or offline: the next view marks it again
      }, READ_DEBOUNCE),
    );
  }

  /** Queues `content` for `name` and sends it; the entry is shown at once as pending. */
  send(name, content) {
    const room = this.rooms.get(name);
    const text = content.trim();
    if (!room || !text) return null;
    const entry = {
      clientId: this.#uuid(),
      content: text,
      status: 'queued',
      error: null,
      createdAt: new Date(this.#now()).toISOString(),
    };
    if ([...text].length > this.messageMaxLen) {
      entry.status = 'failed';
      entry.error = `message is longer than ${this.messageMaxLen} characters`;
    }
    room.outbox.set(entry.clientId, entry);
    // Others hide "typing" when this message arrives: typing again is announced sooner.
    room.sentSinceTyping = true;
    this.#emit('outbox', { room, entry });
    if (entry.status === 'queued') this.#trySend(room, entry);
    return entry;
  }

  /** Sends a failed entry again, with its original clientId. */
  retry(name, clientId) {
    const room = this.rooms.get(name);
    const entry = room?.outbox.get(clientId);
    if (!entry || entry.status !== 'failed') return;
    entry.status = 'queued';
    entry.error = null;
    this.#emit('outbox', { room, entry });
    this.#trySend(room, entry);
  }

  discard(name, clientId) {
    const room = this.rooms.get(name);
    const entry = room?.outbox.get(clientId);
    if (!entry || entry.status !== 'failed') return;
    room.outbox.delete(clientId);
    this.#emit('discarded', { room, clientId });
  }

  /** The user typed in `name`'s composer: tell the room, at most every two seconds. */
  typing(name) {
    const room = this.rooms.get(name);
    if (!room?.joined) return;
    const now = this.#now();
    const since = now - room.lastTypingSent;
    // After an own message, as soon as the server would pass it on again (once a second).
    const due = since >= TYPING_SEND_EVERY || (room.sentSinceTyping && since >= SERVER_TYPING_INTERVAL);
    if (!due) return;
    if (this.#conn.notify({ type: 'typing', room: name })) {
      room.lastTypingSent = now;
      room.sentSinceTyping = false;
    }
  }

  /** Who is typing in `name` now (emails), oldest first. */
  typists(name) {
    const room = this.rooms.get(name);
    if (!room) return [];
    const now = this.#now();
    return [...room.typing.values()].filter((t) => t.until > now).map((t) => t.name);
  }

  /** Fetches the page of history before the oldest message held (infinite scroll upward). */
  async loadOlder(name) {
    const room = this.rooms.get(name);
    if (!room || room.loadingHistory || !room.hasMore || room.lastSeq === null) return;
    const before = room.oldestSeq ?? room.lastSeq + 1;
    if (before <= 1) {
      room.hasMore = false;
      room.historyLoaded = true;
      this.#emit('history', { room, added: [] });
      return;
    }
    room.loadingHistory = true;
    room.historyError = null;
    this.#emit('history-state', { room });
    try {
      const path = `/api/messages/${encodeURIComponent(name)}?limit=${HISTORY_PAGE}&before=${before}`;
      const { messages } = await this.#auth.api(path);
      if (this.rooms.get(name) !== room) return;
      const added = [];
      for (const msg of messages) {
        if (!room.messages.has(msg.seq)) {
          room.messages.set(msg.seq, msg);
          added.push(msg);
        }
      }
      room.hasMore = messages.length === HISTORY_PAGE && messages[0].seq > 1;
      room.historyLoaded = true;
      room.loadingHistory = false;
      this.#emit('history', { room, added });
    } catch (e) {
      room.loadingHistory = false;
      room.historyError = e.message;
      this.#emit('history-state', { room });
    }
  }

  /**
   * The rooms I can see (GET /api/rooms): public ones for the directory, and those I am a
   * member of, which join the sidebar — so a new device shows my rooms.
   */
  async loadDirectory() {
    let rooms;
    try {
      ({ rooms } = await this.#auth.api('/api/rooms'));
    } catch {
      return; // a convenience; fetched again on the next reconnect
    }
    this.directory = rooms;
    this.#directoryLoaded = true;
    let added = false;
    for (const info of rooms) {
      let room = this.rooms.get(info.name);
      if (room) {
        room.info = info;
      } else if (info.role || info.kind === 'direct') {
        room = new Room(info.name);
        room.info = info;
        this.rooms.set(info.name, room);
        added = true;
        if (this.#conn.connected) this.#joinRoom(room);
      }
      if (room && typeof info.lastReadSeq === 'number') {
        const first = !room.readKnown;
        room.setRead(info.lastReadSeq, info.unread, info.mentions);
        if (first && this.active === room.name) {
          room.readAtOpen = room.lastReadSeq;
          this.#emit('divider', { room });
        }
        if (this.active === room.name) this.markRead(room.name);
      }
    }
    if (added) this.#saveRooms();
    this.#emit('rooms');
    this.#emit('directory');
  }

  /** How the UI names a room: `@peer` for a direct room, else its title, else `#name`. */
  label(name) {
    const info = this.rooms.get(name)?.info ?? this.directory.find((r) => r.name === name);
    if (info?.kind === 'direct') return info.peer ? `@${info.peer.displayName}` : 'Notes to self';
    return info?.title || `#${name}`;
  }

  /** Creates a room (I become its owner) and joins it. */
  async createRoom(name, kind = 'public', title = '') {
    const problem = roomNameProblem(name);
    if (problem) throw new Error(problem);
    const body = { name, kind };
    if (title.trim()) body.title = title.trim();
    const info = await this.#auth.api('/api/rooms', { method: 'POST', body });
    this.directory = [...this.directory.filter((r) => r.name !== info.name), info];
    const room = this.join(info.name);
    room.info = info;
    this.#emit('rooms');
    return room;
  }

  /** Opens (creating on first use) the direct room with `userId` and joins it. */
  async openDirect(userId) {
    const info = await this.#auth.api(`/api/dm/${encodeURIComponent(userId)}`, { method: 'POST' });
    this.directory = [...this.directory.filter((r) => r.name !== info.name), info];
    const room = this.join(info.name);
    room.info = info;
    this.#emit('rooms');
    return room;
  }

  /** Who is banned from `name` (owners and moderators): `[{ userId, displayName, bannedAt }]`. */
  async bans(name) {
    const { bans } = await this.#auth.api(`/api/rooms/${encodeURIComponent(name)}/bans`);
    return bans;
  }

  /** A single-use invitation code (administrators): `{ code, expiresAt }`. */
  async createInvite() {
    return this.#auth.api('/api/admin/invites', { method: 'POST' });
  }

  /** A room's members: `[{ userId, displayName, role, joinedAt, mutedUntil? }]`. */
  async members(name) {
    const { members } = await this.#auth.api(`/api/rooms/${encodeURIComponent(name)}/members`);
    return members;
  }

  /** My power in `name`: 'owner' | 'moderator' | 'member' | null (administrators: 'owner'). */
  myRole(name) {
    if (this.me.isAdmin) return 'owner';
    return this.rooms.get(name)?.info?.role ?? null;
  }

  /** Moderation over REST: 'invite' | 'kick' | 'ban' | 'mute' (10 minutes by default). */
  async moderate(name, action, userId, { minutes = 10 } = {}) {
    const room = encodeURIComponent(name);
    const user = encodeURIComponent(userId);
    const calls = {
      invite: [`/api/rooms/${room}/members`, { method: 'POST', body: { userId } }],
      kick: [`/api/rooms/${room}/members/${user}`, { method: 'DELETE' }],
      ban: [`/api/rooms/${room}/bans`, { method: 'POST', body: { userId } }],
      mute: [`/api/rooms/${room}/mutes`, { method: 'POST', body: { userId, minutes } }],
      unmute: [`/api/rooms/${room}/mutes/${user}`, { method: 'DELETE' }],
      unban: [`/api/rooms/${room}/bans/${user}`, { method: 'DELETE' }],
    };
    const [path, init] = calls[action] ?? [];
    if (!path) throw new Error(`unknown action ${action}`);
    return this.#auth.api(path, init);
  }

  // --- connection events -------------------------------------------------------------------

  #resume() {
    for (const room of this.rooms.values()) this.#joinRoom(room);
    this.loadDirectory();
  }

  #onDisconnect() {
    for (const room of this.rooms.values()) {
      room.joined = false;
      // Stale from now on: the re-join brings who is there.
      room.online = null;
    }
    this.#emit('rooms');
  }

  async #joinRoom(room) {
    const since = room.lastSeq;
    const frame = { type: 'join_room', room: room.name };
    if (since !== null) frame.since = since;
    let ack;
    try {
      ack = await this.#conn.request(frame);
    } catch (e) {
      // Disconnected / timed out: the next `open` joins again.
      if (e.name === 'ServerError') {
        room.joinError = e.message;
        this.#emit('rooms');
        this.#emit('join-error', { room, message: e.message });
      }
      return;
    }
    if (this.rooms.get(room.name) !== room) return;
    room.joined = true;
    room.joinError = null;
    // A fresh join: live delivery starts after the room's latest seq, and history covers the
    // rest. A resume (with `since`) streams what was missed next, as ordinary message frames.
    if (room.lastSeq === null) room.lastSeq = ack.seq;
    // A new member has read what came before them: so says the server, which did not list me
    // in this room before. Otherwise the marker is provisional until the list comes.
    if (room.lastReadSeq === null) room.lastReadSeq = ack.seq;
    if (!room.readKnown && this.#directoryLoaded && !this.directory.some((r) => r.name === room.name && r.role)) {
      room.readKnown = true;
    }
    if (this.active === room.name) this.markRead(room.name);
    this.#emit('rooms');
    this.#emit('joined', { room });
    if (!room.historyLoaded) this.loadOlder(room.name);
    // Sends cut off by the disconnect, or typed while it lasted: same clientIds, no duplicates.
    for (const entry of room.outbox.values()) {
      if (entry.status === 'queued' || entry.status === 'sending') this.#trySend(room, entry);
    }
  }

  async #trySend(room, entry) {
    if (!room.joined || !this.#conn.connected) {
      entry.status = 'queued';
      this.#emit('outbox', { room, entry });
      return;
    }
    entry.status = 'sending';
    this.#emit('outbox', { room, entry });
    try {
      const ack = await this.#conn.request(
        { type: 'send_message', room: room.name, content: entry.content, clientId: entry.clientId },
        { timeout: SEND_TIMEOUT },
      );
      this.#confirm(room, entry.clientId, { id: ack.id, seq: ack.seq });
    } catch (e) {
      if (!room.outbox.has(entry.clientId)) return; // confirmed meanwhile by its message frame
      if (e.name === 'Disconnected') {
        entry.status = 'queued'; // sent again after the re-join
      } else {
        entry.status = 'failed';
        entry.error = e.message || 'not sent';
        if (e.code === 'not_joined' && this.#conn.connected) this.#joinRoom(room);
      }
      this.#emit('outbox', { room, entry });
    }
  }

  /** An own message is stored: it leaves the outbox and takes its place by seq. */
  #confirm(room, clientId, { id, seq }) {
    const entry = room.outbox.get(clientId);
    if (!entry) return;
    room.outbox.delete(clientId);
    let msg = room.messages.get(seq);
    if (!msg) {
      // The ack came before the message frame: show it now, replaced when the frame arrives.
      msg = {
        id,
        room: room.name,
        seq,
        senderId: this.me.id,
        senderName: this.me.displayName ?? this.me.email,
        content: entry.content,
        createdAt: entry.createdAt,
        clientId,
        provisional: true,
      };
      room.messages.set(seq, msg);
    }
    this.#emit('confirmed', { room, clientId, msg });
  }

  #onFrame(frame) {
    const room = typeof frame.room === 'string' ? this.rooms.get(frame.room) : undefined;
    if (!room) return;
    switch (frame.type) {
      case 'message':
        this.#onMessage(room, frame);
        break;
      case 'system':
        this.#emit('system', { room, frame, at: new Date(this.#now()).toISOString() });
        break;
      case 'removed':
        this.#onRemoved(room, frame);
        break;
      case 'muted':
        this.#onMuted(room, frame);
        break;
      case 'message_deleted':
        this.#onDeleted(room, frame);
        break;
      case 'message_edited':
        this.#onEdited(room, frame);
        break;
      case 'read':
        if (room.setRead(frame.seq, frame.unread, frame.mentions)) {
          this.#floorUnread(room);
          this.#emit('rooms');
        }
        break;
      case 'reaction':
        this.#onReaction(room, frame);
        break;
      case 'presence':
        room.online ??= new Set();
        for (const id of frame.online ?? []) room.online.add(id);
        for (const id of frame.offline ?? []) room.online.delete(id);
        this.#emit('presence', { room });
        break;
      case 'typing':
        if (frame.userId === this.me.id) return;
        room.typing.set(frame.userId, { name: frame.name ?? frame.email, until: this.#now() + TYPING_SHOWN_FOR });
        this.#emit('typing', { room });
        this.#scheduleTypingExpiry();
        break;
      default:
    }
  }

  /** A deletion: an event of the seq stream (so it moves `lastSeq`); the message becomes a tombstone. */
  #onDeleted(room, frame) {
    if (typeof frame.seq === 'number' && (room.lastSeq === null || frame.seq > room.lastSeq)) room.lastSeq = frame.seq;
    this.#seen(room);
    for (const msg of room.messages.values()) {
      if (msg.id !== frame.id) continue;
      if (msg.deletedAt) return;
      msg.content = '';
      msg.deletedAt = frame.deletedAt ?? new Date(this.#now()).toISOString();
      this.#emit('updated', { room, msg });
      return;
    }
  }

  /** An edit: an event of the seq stream; the message shows its new content. */
  #onEdited(room, frame) {
    if (typeof frame.seq === 'number' && (room.lastSeq === null || frame.seq > room.lastSeq)) room.lastSeq = frame.seq;
    this.#seen(room);
    for (const msg of room.messages.values()) {
      if (msg.id !== frame.id || msg.deletedAt) continue;
      msg.content = frame.content;
      msg.editedAt = frame.editedAt;
      this.#emit('updated', { room, msg });
      return;
    }
  }

  /** A reaction put on or taken back: an event of the seq stream; the message shows the new count. */
  #onReaction(room, frame) {
    if (typeof frame.seq === 'number' && (room.lastSeq === null || frame.seq > room.lastSeq)) room.lastSeq = frame.seq;
    this.#seen(room);
    for (const msg of room.messages.values()) {
      if (msg.id !== frame.id) continue;
      const list = Array.isArray(msg.reactions) ? msg.reactions : [];
      let entry = list.find((r) => r.emoji === frame.emoji);
      if (!entry) {
        entry = { emoji: frame.emoji, count: 0, me: false };
        list.push(entry);
      }
      entry.count = typeof frame.count === 'number' ? frame.count : entry.count;
      if (frame.userId === this.me.id) entry.me = Boolean(frame.added);
      msg.reactions = list.filter((r) => r.count > 0);
      this.#emit('updated', { room, msg });
      return;
    }
  }

  /** Puts my reaction `emoji` on message `id` of `name`, or takes it back when I had it. */
  async toggleReaction(name, id, emoji) {
    const msg = [...(this.rooms.get(name)?.messages.values() ?? [])].find((m) => m.id === id);
    const mine = msg?.reactions?.some((r) => r.emoji === emoji && r.me);
    const base = `/api/rooms/${encodeURIComponent(name)}/messages/${encodeURIComponent(id)}/reactions`;
    if (mine) await this.#auth.api(`${base}/${encodeURIComponent(emoji)}`, { method: 'DELETE' });
    else await this.#auth.api(base, { method: 'POST', body: { emoji } });
  }

  /** Messages holding every word of `q` in the rooms I may read: `{ results, next }`. */
  async search(q, { before = null } = {}) {
    const params = new URLSearchParams({ q });
    if (before) params.set('before', before);
    return this.#auth.api(`/api/search?${params}`);
  }

  /**
   * Makes sure message `seq` of `name` is loaded (history pages back from the oldest one held,
   * so what is shown stays gap-free), at most `maxPages` pages. True when it is there.
   */
  async loadUntil(name, seq, maxPages = 40) {
    const room = this.rooms.get(name);
    if (!room) return false;
    for (let i = 0; i < maxPages; i++) {
      if (room.messages.has(seq) || (room.oldestSeq !== null && room.oldestSeq <= seq)) return room.messages.has(seq);
      if (!room.hasMore && room.historyLoaded) return false;
      if (room.loadingHistory || room.lastSeq === null) await new Promise((r) => setTimeout(r, 100));
      else await this.loadOlder(name);
    }
    return room.messages.has(seq);
  }

  /** Whether `userId` is in room `name` now, from presence events; undefined before the first. */
  isOnline(name, userId) {
    const online = this.rooms.get(name)?.online;
    return online ? online.has(userId) : undefined;
  }

  /** My latest message in `name` that I may still edit. */
  lastOwn(name) {
    const room = this.rooms.get(name);
    if (!room) return null;
    let best = null;
    for (const msg of room.messages.values()) {
      if (msg.senderId === this.me.id && !msg.deletedAt && !msg.provisional && (!best || msg.seq > best.seq)) best = msg;
    }
    return best;
  }

  /** Replaces the content of my message `id` in `name`; everyone is told. */
  async editMessage(name, id, content) {
    const text = content.trim();
    if (!text) throw new Error('A message needs some text.');
    await this.#auth.api(`/api/rooms/${encodeURIComponent(name)}/messages/${encodeURIComponent(id)}`, {
      method: 'PATCH',
      body: { content: text },
    });
  }

  /** Deletes message `id` of `name` (mine, or anyone's as a moderator); everyone is told. */
  async deleteMessage(name, id) {
    await this.#auth.api(`/api/rooms/${encodeURIComponent(name)}/messages/${encodeURIComponent(id)}`, {
      method: 'DELETE',
    });
  }

  /** Whether I may delete `msg` in `name`: mine, or I moderate the room. */
  mayDelete(name, msg) {
    if (msg.deletedAt) return false;
    const role = this.myRole(name);
    return msg.senderId === this.me.id || role === 'owner' || role === 'moderator';
  }

  /** A member was muted (or unmuted); if it is me, say until when. */
  #onMuted(room, frame) {
    if (frame.userId !== this.me.id) return;
    room.mutedUntil = frame.until ?? null;
    const when = frame.until ? new Date(frame.until).toLocaleTimeString() : null;
    const message = when ? `You are muted in this room until ${when}.` : 'You may write in this room again.';
    this.#emit('system', { room, frame: { ...frame, message }, at: new Date(this.#now()).toISOString() });
    this.#emit('rooms');
  }

  /** Someone is no longer a member; if it is me, the room is shut until I may join again. */
  #onRemoved(room, frame) {
    const at = new Date(this.#now()).toISOString();
    if (frame.userId !== this.me.id && frame.reason !== 'archived') {
      const message = frame.reason === 'left' ? 'A member left the room' : `A member was ${frame.reason} from the room`;
      this.#emit('system', { room, frame: { ...frame, message }, at });
      return;
    }
    room.joined = false;
    room.joinError = {
      banned: 'You were banned from this room.',
      kicked: 'You were removed from this room.',
      archived: 'This room was archived.',
    }[frame.reason] ?? 'You are no longer a member of this room.';
    for (const entry of room.outbox.values()) {
      if (entry.status === 'queued' || entry.status === 'sending') {
        entry.status = 'failed';
        entry.error = room.joinError;
        this.#emit('outbox', { room, entry });
      }
    }
    this.#emit('rooms');
    this.#emit('join-error', { room, message: room.joinError });
  }

  #onMessage(room, frame) {
    const { type: _type, ...msg } = frame;
    if (typeof msg.seq !== 'number') return;
    if (room.lastSeq === null || msg.seq > room.lastSeq) {
      room.lastSeq = msg.seq;
      if (!this.#inView(room)) {
        room.unread++;
        if (msg.senderId !== this.me.id && (msg.mentionsAll || msg.mentions?.includes(this.me.id))) room.mentions++;
      }
      this.#seen(room);
    }
    if (room.typing.delete(msg.senderId)) this.#emit('typing', { room });
    const known = room.messages.get(msg.seq);
    if (known && !known.provisional) return; // history and live overlapped: seen already
    room.messages.set(msg.seq, msg);
    const own = msg.senderId === this.me.id;
    if (own && msg.clientId && room.outbox.has(msg.clientId)) {
      this.#confirm(room, msg.clientId, msg);
      return;
    }
    if (known) {
      this.#emit('updated', { room, msg });
      return;
    }
    this.#emit('message', { room, msg });
  }

  /**
   * The server counts a room's unread messages when it stores a read marker, and its answer can
   * reach this page after messages stored later, which were counted here already: out of view,
   * never show fewer unread than the messages held here after the marker.
   */
  #floorUnread(room) {
    if (!this.#inView(room) && room.lastReadSeq !== null) {
      room.unread = Math.max(room.unread, room.heldAfter(room.lastReadSeq));
    }
  }

  #inView(room) {
    return this.active === room.name && this.#visible();
  }

  /** The stream of `room` moved: read at once if it is in view. */
  #seen(room) {
    if (this.#inView(room)) this.markRead(room.name);
    else this.#emit('rooms');
  }

  #scheduleTypingExpiry() {
    clearTimeout(this.#typingTimer);
    const now = this.#now();
    let next = Infinity;
    for (const room of this.rooms.values()) {
      let changed = false;
      for (const [id, t] of room.typing) {
        if (t.until <= now) {
          room.typing.delete(id);
          changed = true;
        } else {
          next = Math.min(next, t.until);
        }
      }
      if (changed) this.#emit('typing', { room });
    }
    if (next !== Infinity) this.#typingTimer = setTimeout(() => this.#scheduleTypingExpiry(), next - now + 10);
  }

  // --- helpers -------------------------------------------------------------------------------

  #listen(target, type, fn) {
    target.addEventListener(type, fn);
    this.#listeners.push([target, type, fn]);
  }

  #emit(type, detail = {}) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #roomsKey() {
    return `confab.rooms.${this.me.id}`;
  }

  #savedRooms() {
    try {
      const names = JSON.parse(this.#storage?.getItem(this.#roomsKey()) ?? '[]');
      return Array.isArray(names) ? names.filter((n) => typeof n === 'string' && ROOM_RULE.test(n)) : [];
    } catch {
      return [];
    }
  }

  #saveRooms() {
    try {
      this.#storage?.setItem(this.#roomsKey(), JSON.stringify([...this.rooms.keys()]));
    } catch {
      // Private mode / quota: the rooms are just not remembered across visits.
    }
  }
}
