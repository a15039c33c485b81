// Accounts and tokens: sign in / register / sign out, the REST helper, and silent refresh.
//
// The access token lives in memory. The refresh token is single-use on the server (each refresh
// spends it and returns a new pair; presenting a spent one revokes the whole family), so:
// - refreshes are serialised: concurrent callers share the one request in flight;
// - the pair is parked in sessionStorage only while the page is away (pagehide/freeze) and taken
//   out again at start, so a reload keeps the session but a duplicated tab (which copies
//   sessionStorage) never holds the same refresh token as its original.
// No DOM access here, so node's test runner can exercise it with a fake fetch.

const PARK_KEY = 'confab.session';

/** An error the API (or the network) gave, with the API's human-readable `error` message. */
export class ApiError extends Error {
  constructor(message, status = 0, code = 'network') {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

/** How long before expiry a token is refreshed: a minute, or a fifth of a short lifetime. */
export function refreshMargin(ttlMs) {
  return Math.min(60_000, ttlMs / 5);
}

export class Auth extends EventTarget {
  /** @type {{token: string, refreshToken: string, expiresAt: number, ttlMs: number, user: object} | null} */
  #session = null;
  /** The refresh request in flight, shared by every caller that needs a fresh token. */
  #refreshing = null;
  #timer = 0;
  #fetch;
  #storage;
  #now;
  #setTimeout;
  #clearTimeout;

  constructor({
    fetch = globalThis.fetch.bind(globalThis),
    storage = globalThis.sessionStorage,
    now = () => Date.now(),
    setTimeout = globalThis.setTimeout.bind(globalThis),
    clearTimeout = globalThis.clearTimeout.bind(globalThis),
  } = {}) {
    super();
    this.#fetch = fetch;
    this.#storage = storage;
    this.#now = now;
    this.#setTimeout = setTimeout;
    this.#clearTimeout = clearTimeout;
  }

  get user() {
    return this.#session?.user ?? null;
  }

  get signedIn() {
    return this.#session !== null;
  }

  /** Takes a session parked by an earlier page of this tab, if any. */
  restore() {
    let parked = null;
    try {
      parked = JSON.parse(this.#storage?.getItem(PARK_KEY) ?? 'null');
      this.#storage?.removeItem(PARK_KEY);
    } catch {
      parked = null;
    }
    const ok =
      parked &&
      typeof parked.token === 'string' &&
      typeof parked.refreshToken === 'string' &&
      typeof parked.expiresAt === 'number' &&
      parked.user &&
      typeof parked.user.id === 'string';
    if (ok) {
      this.#session = parked;
      this.#schedule();
    }
    return this.signedIn;
  }

  /** Parks the session for the next page of this tab (call on pagehide / freeze). */
  park() {
    if (this.#session) this.#storage?.setItem(PARK_KEY, JSON.stringify(this.#session));
  }

  /** Forgets a parked copy (call when the page is shown again from the back/forward cache). */
  unpark() {
    this.#storage?.removeItem(PARK_KEY);
  }

  async login(email, password) {
    return this.#signIn('/api/auth/login', email, password);
  }

  /** `extra`: optional `displayName` and `inviteCode`. */
  async register(email, password, extra = {}) {
    return this.#signIn('/api/auth/register', email, password, extra);
  }

  async #signIn(path, email, password, extra = {}) {
    const body = await this.#post(path, { email, password, ...extra });
    this.#accept(body, body.user);
    this.dispatchEvent(new Event('signedin'));
    return body.user;
  }

  /** Revokes the refresh token on the server (best effort) and forgets the session. */
  async logout() {
    const refreshToken = this.#session?.refreshToken;
    this.#clear();
    this.dispatchEvent(new CustomEvent('signedout', { detail: { reason: null } }));
    if (refreshToken) {
      try {
        await this.#post('/api/auth/logout', { refreshToken });
      } catch {
        // Signed out locally either way; the token expires on its own.
      }
    }
  }

  /** Ends the session because the server refused it: the UI goes back to sign-in. */
  expire(reason = 'Your session has ended. Please sign in again.') {
    if (!this.#session) return;
    this.#clear();
    this.dispatchEvent(new CustomEvent('signedout', { detail: { reason } }));
  }

  /**
   * A new token pair. Every caller while one refresh is in flight gets that same refresh: the
   * refresh token is presented once and only once.
   */
  refresh() {
    if (!this.#refreshing) {
      this.#refreshing = this.#doRefresh().finally(() => {
        this.#refreshing = null;
      });
    }
    return this.#refreshing;
  }

  async #doRefresh() {
    const session = this.#session;
    if (!session) throw new ApiError('not signed in', 401, 'unauthorized');
    let body;
    try {
      body = await this.#post('/api/auth/refresh', { refreshToken: session.refreshToken });
    } catch (e) {
      if (e.status === 401 && this.#session === session) this.expire();
      throw e;
    }
    // Signed out (or in as someone else) meanwhile: this pair belongs to nobody now.
    if (this.#session !== session) throw new ApiError('signed out', 401, 'unauthorized');
    this.#accept(body, session.user);
    this.dispatchEvent(new Event('refreshed'));
  }

  /** Refreshes first if the access token expires within the refresh margin. */
  async ensureFresh() {
    const s = this.#session;
    if (!s) throw new ApiError('not signed in', 401, 'unauthorized');
    if (s.expiresAt - this.#now() < refreshMargin(s.ttlMs)) await this.refresh();
    return this.#session.token;
  }

  /** A current access token (refreshed if it was about to expire). */
  async token() {
    return this.ensureFresh();
  }

  /**
   * GET/POST a JSON API path with the bearer token. A 401 is answered by one refresh and one
   * retry; a second 401 (or a refused refresh) signs the user out.
   */
  async api(path, { method = 'GET', body } = {}) {
    for (let attempt = 0; ; attempt++) {
      const token = await this.token();
      let res;
      try {
        res = await this.#fetch(path, {
          method,
          headers: {
            authorization: `Bearer ${token}`,
            ...(body === undefined ? {} : { 'content-type': 'application/json' }),
          },
          body: body === undefined ? undefined : JSON.stringify(body),
        });
      } catch {
        throw new ApiError('Cannot reach the server.');
      }
      if (res.status === 401 && attempt === 0) {
        // Someone else may have refreshed while this request was out: then just retry.
        if (this.#session?.token === token) await this.refresh();
        continue;
      }
      if (res.status === 401) {
        this.expire();
        throw new ApiError('Your session has ended.', 401, 'unauthorized');
      }
      return readJson(res);
    }
  }

  async #post(path, body) {
    let res;
    try {
      res = await this.#fetch(path, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
    } catch {
      throw new ApiError('Cannot reach the server. Check your connection and try again.');
    }
    return readJson(res);
  }

  #accept(body, user) {
    const ttlMs = Math.max(1, Number(body.expiresIn) || 0) * 1000;
    // Expiry by our own clock from `expiresIn`, so a skewed client clock does not matter.
    this.#session = {
      token: body.token,
      refreshToken: body.refreshToken,
      expiresAt: this.#now() + ttlMs,
      ttlMs,
      user: {
        id: user.id,
        email: user.email,
        displayName: user.displayName ?? user.email,
        isAdmin: Boolean(user.isAdmin),
      },
    };
    this.#schedule();
  }

  #schedule() {
    this.#clearTimeout(this.#timer);
    const s = this.#session;
    if (!s) return;
    const delay = Math.max(0, s.expiresAt - refreshMargin(s.ttlMs) - this.#now());
    this.#timer = this.#setTimeout(() => {
      // A failed refresh (network) is retried by the next caller of ensureFresh.
      this.refresh().catch(() => {});
    }, delay);
  }

  #clear() {
    this.#clearTimeout(this.#timer);
    this.#session = null;
    this.unpark();
  }
}

/** The JSON body of a response, or an ApiError with the API's `error` message. */
async function readJson(res) {
  if (res.status === 204) return null;
  let body = null;
  try {
    body = await res.json();
  } catch {
    body = null;
  }
  if (!res.ok) {
    const message = body?.error ?? `The server answered ${res.status}.`;
    throw new ApiError(message, res.status, body?.code ?? 'http');
  }
  return body;
}
