// The WebSocket to `/ws` (native protocol, PROTOCOL.md): commands with `ref`s answered by
// `ack` / `error`, fan-out frames as events, and reconnection with exponential backoff and
// jitter. It knows nothing of rooms: whoever listens to `open` re-joins them.
//
// States: `connecting` (first attempt), `connected` (hello received), `reconnecting` (lost, trying
// again), `offline` (the browser says so, or several attempts in a row failed), `closed` (stopped).

const HELLO_TIMEOUT = 10_000;
const PING_EVERY = 20_000;
const PING_TIMEOUT = 10_000;
const BACKOFF_BASE = 500;
const BACKOFF_CAP = 15_000;
/** Consecutive failed attempts after which the state reads `offline` rather than `reconnecting`. */
const OFFLINE_AFTER = 4;

/** A command that got no answer because the socket went away (it may or may not have run). */
export class Disconnected extends Error {
  constructor(message = 'not connected') {
    super(message);
    this.name = 'Disconnected';
  }
}

/** An `error` frame answering a command. */
export class ServerError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'ServerError';
    this.code = code;
  }
}

/** No answer within the time allowed. */
export class Timeout extends Error {
  constructor() {
    super('No answer from the server.');
    this.name = 'Timeout';
  }
}

/** Delay before reconnect attempt `n` (0-based): exponential, capped, with "equal jitter". */
export function backoff(n, random = Math.random) {
  const ceiling = Math.min(BACKOFF_CAP, BACKOFF_BASE * 2 ** Math.min(n, 16));
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

function defaultUrl() {
  const { protocol, host } = globalThis.location;
  return `${protocol === 'https:' ? 'wss:' : 'ws:'}//${host}/ws`;
}

export class Connection extends EventTarget {
  state = 'idle';
  /** When the next attempt is due (ms since epoch), while reconnecting / offline. */
  retryAt = 0;
  /** The node this socket is connected to, from `hello`. */
  node = null;

  #auth;
  #url;
  #WebSocket;
  #ws = null;
  #stopped = true;
  /** An attempt is under way (refreshing the token, or the socket is opening). */
  #connecting = false;
  #everConnected = false;
  #failures = 0;
  #refs = 0;
  /** ref → { resolve, reject, timer } */
  #pending = new Map();
  #retryTimer = 0;
  #helloTimer = 0;
  #pingTimer = 0;

  constructor({ auth, url = defaultUrl(), WebSocket = globalThis.WebSocket } = {}) {
    super();
    this.#auth = auth;
    this.#url = url;
    this.#WebSocket = WebSocket;
    // A refreshed token is handed to the open socket (`auth`), which would otherwise be closed
    // when the token it opened with expires.
    auth?.addEventListener?.('refreshed', () => this.#reauthenticate());
    this.onOnline = () => this.retryNow();
    this.onOffline = () => {
      if (this.state !== 'connected') this.#setState('offline');
    };
  }

  start() {
    if (!this.#stopped) return;
    this.#stopped = false;
    globalThis.addEventListener?.('online', this.onOnline);
    globalThis.addEventListener?.('offline', this.onOffline);
    this.#connect();
  }

  stop() {
    this.#stopped = true;
    globalThis.removeEventListener?.('online', this.onOnline);
    globalThis.removeEventListener?.('offline', this.onOffline);
    clearTimeout(this.#retryTimer);
    const ws = this.#ws;
    this.#drop(new Disconnected('signed out'));
    ws?.close(1000, 'bye');
    this.#setState('closed');
  }

  /** Tries at once instead of waiting for the backoff. */
  retryNow() {
    if (this.#stopped || this.#ws || this.#connecting) return;
    clearTimeout(this.#retryTimer);
    this.#connect();
  }

  get connected() {
    return this.state === 'connected';
  }

  /**
   * Sends a command and resolves with its `ack` (rejects with ServerError, Timeout or
   * Disconnected).
   */
  request(frame, { timeout = 10_000 } = {}) {
    if (!this.connected) return Promise.reject(new Disconnected());
    const ref = `r${++this.#refs}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(ref);
        reject(new Timeout());
      }, timeout);
      this.#pending.set(ref, { resolve, reject, timer });
      this.#ws.send(JSON.stringify({ ...frame, ref }));
    });
  }

  /** Extends the open session with the current token; a failure is left to the reconnect. */
  #reauthenticate() {
    if (!this.connected) return;
    this.#auth
      .token()
      .then((token) => this.request({ type: 'auth', token }))
      .catch(() => {});
  }

  /** Sends a frame that expects no answer (`typing`); false when not connected. */
  notify(frame) {
    if (!this.connected) return false;
    this.#ws.send(JSON.stringify(frame));
    return true;
  }

  async #connect() {
    this.#connecting = true;
    try {
      await this.#open();
    } finally {
      this.#connecting = false;
    }
  }

  async #open() {
    this.#setState(this.#everConnected ? this.#lostState() : 'connecting');
    let token;
    try {
      // Refresh first if the token is near expiry: the upgrade is refused with a bare 401 that
      // a browser cannot read, so an expired token would look like a network failure.
      token = await this.#auth.ensureFresh();
      // Several attempts failed before `hello`: ask the REST API whether the token is still
      // good. Its 401 (after one refresh) signs the user out instead of retrying for ever.
      if (this.#failures >= 2) await this.#auth.api('/api/me');
      token = await this.#auth.ensureFresh();
    } catch (e) {
      if (this.#stopped || e.status === 401) return;
      this.#scheduleRetry();
      return;
    }
    if (this.#stopped) return;
    const ws = new this.#WebSocket(`${this.#url}?access_token=${encodeURIComponent(token)}`);
    this.#ws = ws;
    ws.onmessage = (e) => this.#onMessage(ws, e.data);
    ws.onclose = (e) => this.#onClose(ws, e.code);
    this.#helloTimer = setTimeout(() => this.#abandon(ws), HELLO_TIMEOUT);
  }

  #onMessage(ws, data) {
    if (ws !== this.#ws) return;
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    switch (frame.type) {
      case 'hello':
        clearTimeout(this.#helloTimer);
        this.#failures = 0;
        this.#everConnected = true;
        this.node = frame.node ?? null;
        this.#setState('connected');
        this.#schedulePing(ws);
        this.dispatchEvent(new CustomEvent('open', { detail: frame }));
        break;
      case 'ack':
      case 'pong':
      case 'error': {
        const waiter = frame.ref !== undefined && this.#pending.get(frame.ref);
        if (waiter) {
          this.#pending.delete(frame.ref);
          clearTimeout(waiter.timer);
          if (frame.type === 'error') waiter.reject(new ServerError(frame.code, frame.message));
          else waiter.resolve(frame);
        } else if (frame.type === 'error') {
          this.#onStrayError(ws, frame);
        }
        break;
      }
      default:
        this.dispatchEvent(new CustomEvent('frame', { detail: frame }));
    }
  }

  /**
   * An error that answers no command. `unavailable` / `internal` here means a resume failed and
   * the server left the room for us: start over, which re-joins everything with `since`.
   */
  #onStrayError(ws, frame) {
    if (frame.code === 'unavailable' || frame.code === 'internal') this.#abandon(ws);
  }

  #onClose(ws, code) {
    if (ws !== this.#ws) return;
    this.#drop(new Disconnected());
    if (this.#stopped) return;
    // 1001 (server going away), 1013 / 1008 (too slow, idle) and everything else: resume.
    this.dispatchEvent(new CustomEvent('close', { detail: { code } }));
    this.#scheduleRetry();
  }

  /** Gives up on a socket that went quiet (no hello, no pong) without waiting for its close. */
  #abandon(ws) {
    if (ws !== this.#ws) return;
    ws.onclose = null;
    ws.onmessage = null;
    ws.close();
    this.#onClose(ws, 4000);
  }

  /** Forgets the socket and fails every command still waiting on it. */
  #drop(error) {
    clearTimeout(this.#helloTimer);
    clearTimeout(this.#pingTimer);
    this.#ws = null;
    for (const { reject, timer } of this.#pending.values()) {
      clearTimeout(timer);
      reject(error);
    }
    this.#pending.clear();
  }

  #schedulePing(ws) {
    clearTimeout(this.#pingTimer);
    this.#pingTimer = setTimeout(() => {
      if (ws !== this.#ws) return;
      this.request({ type: 'ping' }, { timeout: PING_TIMEOUT }).then(
        () => this.#schedulePing(ws),
        (e) => {
          if (e instanceof Timeout) this.#abandon(ws);
        },
      );
    }, PING_EVERY);
  }

  #scheduleRetry() {
    if (this.#stopped) return;
    this.#failures++;
    const delay = backoff(this.#failures - 1);
    this.retryAt = Date.now() + delay;
    this.#setState(this.#everConnected ? this.#lostState() : 'connecting', true);
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => this.#connect(), delay);
  }

  #lostState() {
    const offline = globalThis.navigator?.onLine === false || this.#failures >= OFFLINE_AFTER;
    return offline ? 'offline' : 'reconnecting';
  }

  #setState(state, force = false) {
    if (state === this.state && !force) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: { state, retryAt: this.retryAt } }));
  }
}
