// The signed-in screen: sidebar, connection status, one message view per room (each keeps its
// own DOM and scroll position while another room is shown), the composer.
//
// Every piece of text from the network goes into the page as a text node (see dom.js).

import { h, byId } from './dom.js';
import { roomNameProblem } from './chat.js';
import { parse, mentionsMe } from './markup.js';

/** The reactions offered by a message's React button. */
const QUICK_REACTIONS = ['👍', '❤️', '😂', '🎉', '😮', '😢'];

/** Elements for parsed message text (markup.js): text nodes and a few plain elements only. */
function toNodes(nodes) {
  return nodes.map((n) => {
    switch (n.t) {
      case 'strong':
        return h('strong', {}, toNodes(n.children));
      case 'em':
        return h('em', {}, toNodes(n.children));
      case 'code':
        return h('code', {}, n.text);
      case 'codeblock':
        return h('pre', { class: 'codeblock' }, h('code', {}, n.text));
      case 'link':
        return h('a', { href: n.href, target: '_blank', rel: 'noopener noreferrer nofollow' }, n.text);
      case 'mention':
        return h('span', { class: `mention${n.me ? ' mention--me' : ''}` }, n.text);
      default:
        return n.text;
    }
  });
}

/** Consecutive messages by one sender within this interval are grouped under one header. */
const GROUP_WITHIN_MS = 5 * 60_000;
/** "At the bottom", in pixels: new messages scroll into view only then. */
const BOTTOM_SLACK = 48;
/** A leave and a re-join of one user closer together than this are not shown. */
const RECONNECT_BLIP_MS = 60_000;
/** Scrolled this close to the top, the previous page of history is fetched. */
const LOAD_OLDER_WITHIN = 300;

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit' });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'medium' });

function timeElement(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return h('time', {}, '');
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  return h(
    'time',
    { datetime: d.toISOString(), title: fullFormat.format(d) },
    sameDay ? timeFormat.format(d) : dateTimeFormat.format(d),
  );
}

/** The room a client-side URL names (`/r/<room>`), if any. */
export function roomFromPath(pathname) {
  const m = /^\/r\/([^/]+)\/?$/.exec(pathname);
  if (!m) return null;
  try {
    const name = decodeURIComponent(m[1]);
    return roomNameProblem(name) ? null : name;
  } catch {
    return null;
  }
}

/** One room's messages: a scroller with the history status on top and the list below. */
class RoomView {
  constructor(room, owner) {
    this.room = room;
    this.owner = owner;
    /** seq → element, clientId → element (outbox entries) */
    this.bySeq = new Map();
    /** Display names seen in this room: what @mentions may name. */
    this.names = new Set();
    this.byClient = new Map();
    /** Whether the view follows new messages (the user is at the bottom). */
    this.stick = true;
    this.savedFromBottom = 0;
    this.status = h('div', { class: 'history' });
    this.list = h('ol', { class: 'messages', 'aria-label': `Messages in #${room.name}` });
    this.scroller = h(
      'div',
      { class: 'scroller', tabindex: '0', role: 'region', 'aria-label': `#${room.name} conversation` },
      this.status,
      this.list,
    );
    this.jump = h(
      'button',
      { type: 'button', class: 'jump', hidden: true, onclick: () => this.scrollToBottom(true) },
      'New messages ↓',
    );
    this.el = h('section', { class: 'room', hidden: true, dataset: { room: room.name } }, this.scroller, this.jump);
    this.scroller.addEventListener('scroll', () => this.onScroll(), { passive: true });
    this.renderStatus();
  }

  get visible() {
    return !this.el.hidden;
  }

  show() {
    this.el.hidden = false;
    if (this.stick) this.scrollToBottom();
    else this.scroller.scrollTop = this.scroller.scrollHeight - this.savedFromBottom;
    this.fillViewport();
  }

  hide() {
    if (!this.el.hidden) this.savedFromBottom = this.scroller.scrollHeight - this.scroller.scrollTop;
    this.el.hidden = true;
  }

  atBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight <= BOTTOM_SLACK;
  }

  scrollToBottom(focusComposer = false) {
    this.scroller.scrollTop = this.scroller.scrollHeight;
    this.stick = true;
    this.jump.hidden = true;
    if (focusComposer) this.owner.focusComposer();
  }

  onScroll() {
    if (!this.visible) return;
    this.stick = this.atBottom();
    if (this.stick) this.jump.hidden = true;
    if (this.scroller.scrollTop < LOAD_OLDER_WITHIN) this.owner.chat.loadOlder(this.room.name);
  }

  /** Loads older pages until the scroller can scroll (a tall window, a short first page). */
  fillViewport() {
    const r = this.room;
    if (this.visible && r.historyLoaded && r.hasMore && !r.loadingHistory && !r.historyError) {
      if (this.scroller.scrollHeight <= this.scroller.clientHeight + LOAD_OLDER_WITHIN) {
        this.owner.chat.loadOlder(r.name);
      }
    }
  }

  /**
   * Runs `change` (which adds or removes elements) keeping what the user sees in place: at the
   * bottom it stays at the bottom, otherwise the distance from the bottom is kept (so a page of
   * history added above does not move the messages being read).
   */
  preserving(change, { follow = false } = {}) {
    const s = this.scroller;
    const wasAtBottom = this.visible ? this.atBottom() : this.stick;
    const fromBottom = s.scrollHeight - s.scrollTop;
    change();
    if (!this.visible) {
      if (follow) this.stick = true;
      return wasAtBottom;
    }
    if (wasAtBottom || follow) this.scrollToBottom();
    else s.scrollTop = s.scrollHeight - fromBottom;
    return wasAtBottom || follow;
  }

  renderStatus() {
    const r = this.room;
    let content;
    if (r.loadingHistory) content = h('p', { class: 'muted' }, 'Loading older messages…');
    else if (r.historyError)
      content = h(
        'p',
        { class: 'error-text' },
        `Could not load older messages: ${r.historyError} `,
        h('button', { type: 'button', class: 'link', onclick: () => this.owner.chat.loadOlder(r.name) }, 'Try again'),
      );
    else if (r.historyLoaded && !r.hasMore) content = h('p', { class: 'muted' }, `This is the beginning of #${r.name}.`);
    else if (r.historyLoaded)
      content = h(
        'button',
        { type: 'button', class: 'link', onclick: () => this.owner.chat.loadOlder(r.name) },
        'Load older messages',
      );
    else content = h('p', { class: 'muted' }, r.joinError ? r.joinError : 'Joining…');
    this.status.replaceChildren(content);
  }

  /** Sort key of an element: a message's seq; a system line sorts after the seq it followed. */
  static key(el) {
    return Number(el.dataset.key);
  }

  /** Inserts a keyed element in order, before the outbox entries at the end. */
  place(el) {
    const key = RoomView.key(el);
    const first = this.list.firstElementChild;
    if (first && first.dataset.key !== undefined && key < RoomView.key(first)) {
      this.list.insertBefore(el, first);
      return;
    }
    let node = this.list.lastElementChild;
    while (node && (node.dataset.key === undefined || RoomView.key(node) > key)) node = node.previousElementSibling;
    this.list.insertBefore(el, node ? node.nextElementSibling : this.list.firstElementChild);
  }

  messageElement(msg) {
    const chat = this.owner.chat;
    const own = msg.senderId === chat.me.id;
    const name = this.room.name;
    const remove = chat.mayDelete(name, msg)
      ? h(
          'button',
          {
            type: 'button',
            class: 'link msg-delete',
            'aria-label': 'Delete this message',
            onclick: () => {
              chat.deleteMessage(name, msg.id).catch((e) => {
                this.owner.el.announcer.textContent = `Not deleted: ${e.message}`;
              });
            },
          },
          'Delete',
        )
      : null;
    if (msg.senderName) this.names.add(msg.senderName);
    const myName = chat.me.displayName ?? null;
    const parsed = msg.deletedAt ? [] : parse(msg.content, { names: [...this.names, ...(myName ? [myName] : [])], myName });
    const body = msg.deletedAt
      ? h('p', { class: 'msg-body msg-deleted' }, 'This message was deleted.')
      : h('div', { class: 'msg-body' }, toNodes(parsed));
    const mentioned = !own && (msg.mentionsAll || msg.mentions?.includes(chat.me.id) || mentionsMe(parsed));
    const canReact = !msg.deletedAt && !msg.provisional && this.room.joined;
    const react = canReact
      ? h(
          'button',
          {
            type: 'button',
            class: 'link msg-react',
            'aria-label': 'React to this message',
            'aria-expanded': 'false',
            onclick: (e) => this.togglePicker(e.currentTarget, msg),
          },
          'React',
        )
      : null;
    const reactions =
      !msg.deletedAt && msg.reactions?.length
        ? h(
            'div',
            { class: 'reactions' },
            msg.reactions.map((r) =>
              h(
                'button',
                {
                  type: 'button',
                  class: `reaction${r.me ? ' reaction--mine' : ''}`,
                  'aria-pressed': String(Boolean(r.me)),
                  'aria-label': `${r.emoji} ${r.count}${r.me ? ', mine: take it back' : ''}`,
                  onclick: () => this.react(msg, r.emoji),
                },
                `${r.emoji} ${r.count}`,
              ),
            ),
          )
        : null;
    const edit =
      own && !msg.deletedAt && !msg.provisional
        ? h('button', { type: 'button', class: 'link msg-edit', 'aria-label': 'Edit this message', onclick: (e) => this.startEdit(e.target.closest('.msg'), msg) }, 'Edit')
        : null;
    const edited = msg.editedAt && !msg.deletedAt ? h('span', { class: 'msg-edited', title: fullFormat.format(new Date(msg.editedAt)) }, '(edited)') : null;
    return h(
      'li',
      {
        class: `msg${own ? ' msg--own' : ''}${mentioned ? ' msg--mention' : ''}`,
        dataset: { key: String(msg.seq), seq: String(msg.seq), sender: msg.senderId, time: String(Date.parse(msg.createdAt)) },
      },
      h('div', { class: 'msg-head' }, h('span', { class: 'msg-sender' }, msg.senderName ?? msg.senderEmail), ' ', timeElement(msg.createdAt), edited, react, edit, remove),
      body,
      reactions,
    );
  }

  /** Puts (or takes back) my reaction `emoji` on `msg`. */
  react(msg, emoji) {
    this.owner.chat.toggleReaction(this.room.name, msg.id, emoji).catch((e) => {
      this.owner.el.announcer.textContent = `Reaction not saved: ${e.message}`;
    });
  }

  /** Shows (or hides) the quick reactions under a message's React button. */
  togglePicker(button, msg) {
    const el = button.closest('.msg');
    const open = el?.querySelector('.reaction-picker');
    if (open) {
      open.remove();
      button.setAttribute('aria-expanded', 'false');
      return;
    }
    const picker = h(
      'div',
      { class: 'reaction-picker', role: 'group', 'aria-label': 'Reactions' },
      QUICK_REACTIONS.map((emoji) =>
        h(
          'button',
          {
            type: 'button',
            class: 'reaction',
            'aria-label': `React with ${emoji}`,
            onclick: () => {
              picker.remove();
              button.setAttribute('aria-expanded', 'false');
              this.react(msg, emoji);
            },
          },
          emoji,
        ),
      ),
    );
    button.setAttribute('aria-expanded', 'true');
    el?.append(picker);
    picker.querySelector('button')?.focus();
  }

  /** Brings message `seq` into view and marks it for a moment (a search result). */
  highlight(seq) {
    const el = this.bySeq.get(seq);
    if (!el) return false;
    this.stick = false;
    el.scrollIntoView({ block: 'center' });
    el.classList.add('msg--found');
    setTimeout(() => el.classList.remove('msg--found'), 4000);
    return true;
  }

  /** Opens the editor on my latest message (↑ in an empty composer). */
  editLast() {
    const msg = this.owner.chat.lastOwn(this.room.name);
    const el = msg ? this.bySeq.get(msg.seq) : null;
    if (!el) return false;
    el.scrollIntoView({ block: 'nearest' });
    this.startEdit(el, msg);
    return true;
  }

  /** Swaps `el`'s text for an editor; Save sends the edit (the event then redraws it). */
  startEdit(el, msg) {
    const bodyEl = el?.querySelector('.msg-body');
    if (!bodyEl || el.querySelector('.msg-editor')) return;
    const chat = this.owner.chat;
    const input = h('textarea', { class: 'msg-editor-input', rows: '2', 'aria-label': 'Edit message' });
    input.value = msg.content;
    const error = h('p', { class: 'form-error', role: 'alert', hidden: true });
    const close = () => {
      form.remove();
      bodyEl.hidden = false;
    };
    const form = h(
      'form',
      {
        class: 'msg-editor',
        onsubmit: async (e) => {
          e.preventDefault();
          try {
            await chat.editMessage(this.room.name, msg.id, input.value);
            close();
          } catch (err) {
            error.textContent = err.message;
            error.hidden = false;
          }
        },
      },
      input,
      h('div', { class: 'row' }, h('button', { type: 'submit', class: 'primary' }, 'Save'), h('button', { type: 'button', class: 'quiet', onclick: close }, 'Cancel')),
      error,
    );
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') {
        e.preventDefault();
        close();
        this.owner.focusComposer();
      } else if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        form.requestSubmit();
      }
    });
    bodyEl.hidden = true;
    bodyEl.after(form);
    input.focus();
  }

  outboxElement(entry) {
    const chat = this.owner.chat;
    const name = this.room.name;
    let status;
    if (entry.status === 'failed') {
      status = h(
        'p',
        { class: 'msg-status error-text' },
        `Not sent: ${(entry.error ?? 'no answer').replace(/\.$/, '')}. `,
        h('button', { type: 'button', class: 'link', onclick: () => chat.retry(name, entry.clientId) }, 'Retry'),
        ' · ',
        h('button', { type: 'button', class: 'link', onclick: () => chat.discard(name, entry.clientId) }, 'Discard'),
      );
    } else {
      status = h('p', { class: 'msg-status muted' }, entry.status === 'queued' ? 'Waiting for connection…' : 'Sending…');
    }
    return h(
      'li',
      {
        class: `msg msg--own msg--out msg--${entry.status}`,
        dataset: { clientId: entry.clientId, sender: chat.me.id, time: String(Date.parse(entry.createdAt)) },
        'aria-busy': entry.status === 'failed' ? null : 'true',
      },
      h('div', { class: 'msg-head' }, h('span', { class: 'msg-sender' }, chat.me.displayName ?? chat.me.email), ' ', timeElement(entry.createdAt)),
      h('p', { class: 'msg-body' }, entry.content),
      status,
    );
  }

  /** Marks `el` as continuing the previous message's group, or not. */
  static regroup(el) {
    if (!el || !el.classList.contains('msg')) return;
    const prev = el.previousElementSibling;
    const cont =
      prev !== null &&
      prev.classList.contains('msg') &&
      prev.dataset.sender === el.dataset.sender &&
      Math.abs(Number(el.dataset.time) - Number(prev.dataset.time)) < GROUP_WITHIN_MS;
    el.classList.toggle('msg--cont', cont);
  }

  static regroupAround(el) {
    RoomView.regroup(el);
    RoomView.regroup(el.nextElementSibling);
  }

  addMessages(msgs) {
    if (msgs.length === 0) return;
    this.preserving(() => {
      const first = this.list.firstElementChild;
      const allBefore = !first || first.dataset.key === undefined || msgs.every((m) => m.seq < RoomView.key(first));
      if (allBefore) {
        // A page of history: one insertion at the top.
        const frag = document.createDocumentFragment();
        const els = msgs.map((m) => this.messageElement(m));
        for (const [i, el] of els.entries()) {
          this.bySeq.set(msgs[i].seq, el);
          frag.append(el);
        }
        this.list.insertBefore(frag, first);
        for (const el of els) RoomView.regroup(el);
        RoomView.regroup(els.at(-1).nextElementSibling);
      } else {
        for (const m of msgs) this.insertOne(m);
      }
    });
    this.fillViewport();
  }

  insertOne(msg) {
    const el = this.messageElement(msg);
    const old = this.bySeq.get(msg.seq);
    this.bySeq.set(msg.seq, el);
    if (old) old.replaceWith(el);
    else this.place(el);
    RoomView.regroupAround(el);
  }

  /** A live message; true when it is in view (the user was at the bottom). */
  addLive(msg) {
    const shown = this.preserving(() => this.insertOne(msg));
    if (!shown && this.visible) this.jump.hidden = false;
    return shown;
  }

  replace(msg) {
    if (!this.bySeq.has(msg.seq)) return;
    this.preserving(() => this.insertOne(msg));
  }

  addSystem(frame, at) {
    // "x left" then "x joined" with nothing in between is a reconnect (a reload, a server
    // restart), not news: both lines go.
    const previous = this.lastKeyed();
    if (
      frame.event === 'join' &&
      previous?.classList.contains('sys') &&
      previous.dataset.event === 'leave' &&
      previous.dataset.user === frame.userId &&
      Date.parse(at) - Number(previous.dataset.time) < RECONNECT_BLIP_MS
    ) {
      const next = previous.nextElementSibling;
      previous.remove();
      RoomView.regroup(next);
      return;
    }
    const last = this.room.lastSeq ?? 0;
    const el = h(
      'li',
      {
        class: 'sys',
        dataset: { key: String(last + 0.5), event: frame.event, user: frame.userId, time: String(Date.parse(at)) },
      },
      h('span', {}, frame.message ?? `${frame.name ?? frame.email} ${frame.event === 'leave' ? 'left' : 'joined'}`),
      ' ',
      timeElement(at),
    );
    this.preserving(() => {
      this.place(el);
      RoomView.regroup(el.nextElementSibling);
    });
  }

  /** Puts the "new messages" line after seq `seq` (my read marker when the room was opened). */
  setDivider(seq) {
    this.divider?.remove();
    this.divider = null;
    if (typeof seq !== 'number' || (this.room.lastSeq ?? 0) <= seq) return;
    const el = h(
      'li',
      { class: 'unread-divider', role: 'separator', dataset: { key: String(seq + 0.25) } },
      h('span', {}, 'New messages'),
    );
    this.divider = el;
    this.preserving(() => {
      this.place(el);
      RoomView.regroup(el.nextElementSibling);
    });
  }

  /** The last element that is not an outbox entry. */
  lastKeyed() {
    let node = this.list.lastElementChild;
    while (node && node.dataset.key === undefined) node = node.previousElementSibling;
    return node;
  }

  setOutbox(entry, { follow = false } = {}) {
    const el = this.outboxElement(entry);
    const old = this.byClient.get(entry.clientId);
    this.byClient.set(entry.clientId, el);
    this.preserving(
      () => {
        if (old) old.replaceWith(el);
        else this.list.append(el);
        RoomView.regroupAround(el);
      },
      { follow },
    );
  }

  confirm(clientId, msg) {
    const old = this.byClient.get(clientId);
    this.byClient.delete(clientId);
    this.preserving(() => {
      const next = old?.nextElementSibling;
      old?.remove();
      if (next) RoomView.regroup(next);
      this.insertOne(msg);
    });
  }

  discard(clientId) {
    const old = this.byClient.get(clientId);
    this.byClient.delete(clientId);
    if (!old) return;
    const next = old.nextElementSibling;
    old.remove();
    RoomView.regroup(next);
  }
}

/** The signed-in screen, bound to one Chat and Connection until dispose(). */
export class ChatView {
  constructor({ chat, conn, auth, onLogout }) {
    this.chat = chat;
    this.conn = conn;
    this.auth = auth;
    /** @type {Map<string, RoomView>} */
    this.views = new Map();
    this.drafts = new Map();
    this.abort = new AbortController();
    this.retryTicker = 0;
    const on = (target, type, fn) => target.addEventListener(type, fn, { signal: this.abort.signal });

    this.el = {
      root: byId('chat'),
      me: byId('me'),
      conn: byId('conn'),
      connText: byId('conn-text'),
      connRetry: byId('conn-retry'),
      logout: byId('logout'),
      toggle: byId('rooms-toggle'),
      toggleBadge: byId('toggle-badge'),
      sidebar: byId('sidebar'),
      scrim: byId('scrim'),
      joinForm: byId('join-form'),
      joinName: byId('join-name'),
      joinError: byId('join-error'),
      roomList: byId('room-list'),
      noRooms: byId('no-rooms'),
      directory: byId('directory'),
      noDirectory: byId('no-directory'),
      title: byId('room-title'),
      leave: byId('leave'),
      createForm: byId('create-form'),
      createName: byId('create-name'),
      createTitle: byId('create-title'),
      createKind: byId('create-kind'),
      createError: byId('create-error'),
      create: byId('create'),
      membersToggle: byId('members-toggle'),
      members: byId('members'),
      memberList: byId('member-list'),
      membersError: byId('members-error'),
      inviteForm: byId('invite-form'),
      inviteId: byId('invite-id'),
      bansHeading: byId('bans-heading'),
      banList: byId('ban-list'),
      adminTools: byId('admin-tools'),
      makeInvite: byId('make-invite'),
      inviteCode: byId('invite-code'),
      empty: byId('empty'),
      tryGeneral: byId('try-general'),
      views: byId('views'),
      typing: byId('typing'),
      composer: byId('composer'),
      composerLabel: byId('composer-label'),
      input: byId('composer-input'),
      announcer: byId('announcer'),
      searchForm: byId('search-form'),
      searchQ: byId('search-q'),
      searchError: byId('search-error'),
      searchPanel: byId('search-panel'),
      searchSummary: byId('search-summary'),
      searchResults: byId('search-results'),
      searchMore: byId('search-more'),
      searchClose: byId('search-close'),
    };
    /** The search shown: its words and the cursor of its next page. */
    this.searchState = null;
    const el = this.el;
    el.me.textContent = chat.me.displayName ?? chat.me.email;
    // My id is what others need to invite me to a private room.
    el.me.title = `${chat.me.email} · user id ${chat.me.id}`;
    el.input.maxLength = chat.messageMaxLen;

    on(el.logout, 'click', onLogout);
    on(el.connRetry, 'click', () => conn.retryNow());
    on(el.toggle, 'click', () => this.setSidebar(!el.root.classList.contains('sidebar-open')));
    on(el.scrim, 'click', () => this.setSidebar(false));
    on(document, 'keydown', (e) => {
      if (e.key === 'Escape' && el.root.classList.contains('sidebar-open')) {
        this.setSidebar(false);
        el.toggle.focus();
      }
    });
    on(el.joinForm, 'submit', (e) => {
      e.preventDefault();
      this.joinFromForm();
    });
    on(el.joinName, 'input', () => this.showJoinError(null));
    on(el.tryGeneral, 'click', () => this.open('general', { focus: true }));
    on(el.leave, 'click', () => this.leaveActive());
    on(el.createForm, 'submit', (e) => {
      e.preventDefault();
      this.createFromForm();
    });
    on(el.membersToggle, 'click', () => this.setMembers(el.members.hidden));
    el.adminTools.hidden = !chat.me.isAdmin;
    on(el.makeInvite, 'click', async () => {
      try {
        const { code, expiresAt } = await this.chat.createInvite();
        el.inviteCode.textContent = `${code} — single use, valid until ${dateTimeFormat.format(new Date(expiresAt))}`;
      } catch (e) {
        el.inviteCode.textContent = e.message;
      }
    });
    on(el.inviteForm, 'submit', (e) => {
      e.preventDefault();
      this.inviteFromForm();
    });
    on(el.composer, 'submit', (e) => {
      e.preventDefault();
      this.sendFromComposer();
    });
    on(el.searchForm, 'submit', (e) => {
      e.preventDefault();
      this.search(el.searchQ.value);
    });
    on(el.searchQ, 'input', () => this.showSearchError(null));
    on(el.searchMore, 'click', () => this.search(this.searchState?.q ?? '', { more: true }));
    on(el.searchClose, 'click', () => this.closeSearch());
    on(el.input, 'keydown', (e) => {
      // ↑ in an empty composer edits my last message, as in most chat clients.
      if (e.key === 'ArrowUp' && el.input.value === '' && this.chat.active) {
        if (this.views.get(this.chat.active)?.editLast()) e.preventDefault();
        return;
      }
      // Enter sends, Shift+Enter is a new line; never in the middle of an IME composition.
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        this.sendFromComposer();
      }
    });
    on(el.input, 'input', () => {
      if (this.chat.active && el.input.value.trim()) this.chat.typing(this.chat.active);
    });
    on(window, 'popstate', () => {
      const name = roomFromPath(location.pathname);
      if (name) this.open(name, { push: false });
    });

    on(conn, 'state', () => this.renderConn());
    on(chat, 'rooms', () => this.renderRooms());
    on(chat, 'limits', () => (el.input.maxLength = chat.messageMaxLen));
    on(chat, 'directory', () => this.renderDirectory());
    on(chat, 'joined', (e) => this.view(e.detail.room)?.renderStatus());
    on(chat, 'join-error', (e) => this.view(e.detail.room)?.renderStatus());
    on(chat, 'history-state', (e) => this.view(e.detail.room)?.renderStatus());
    on(chat, 'history', (e) => {
      const v = this.view(e.detail.room);
      v?.renderStatus();
      v?.addMessages(e.detail.added);
    });
    on(chat, 'message', (e) => this.onMessage(e.detail.room, e.detail.msg));
    on(chat, 'updated', (e) => this.view(e.detail.room)?.replace(e.detail.msg));
    on(chat, 'system', (e) => this.view(e.detail.room)?.addSystem(e.detail.frame, e.detail.at));
    on(chat, 'outbox', (e) => this.view(e.detail.room)?.setOutbox(e.detail.entry));
    on(chat, 'confirmed', (e) => this.view(e.detail.room)?.confirm(e.detail.clientId, e.detail.msg));
    on(chat, 'discarded', (e) => this.view(e.detail.room)?.discard(e.detail.clientId));
    on(chat, 'typing', (e) => {
      if (e.detail.room.name === chat.active) this.renderTyping();
    });
    on(chat, 'left', (e) => this.dropView(e.detail.room.name));
    on(chat, 'presence', (e) => {
      if (e.detail.room.name === chat.active && !this.el.members.hidden) this.renderMembers();
    });
    on(chat, 'divider', (e) => this.view(e.detail.room)?.setDivider(e.detail.room.readAtOpen));
    on(document, 'visibilitychange', () => {
      if (!document.hidden && chat.active) chat.markRead(chat.active);
    });

    el.root.hidden = false;
    this.renderConn();
    this.renderRooms();
    this.renderDirectory();
    const initial = roomFromPath(location.pathname) ?? [...chat.rooms.keys()][0] ?? null;
    if (initial) this.open(initial, { push: false, replace: true });
    else this.showRoom(null);
  }

  dispose() {
    this.abort.abort();
    clearInterval(this.retryTicker);
    for (const v of this.views.values()) v.el.remove();
    this.views.clear();
    this.el.roomList.replaceChildren();
    this.el.directory.replaceChildren();
    this.el.typing.textContent = '';
    this.el.announcer.textContent = '';
    this.el.input.value = '';
    this.el.root.classList.remove('sidebar-open');
    this.el.root.hidden = true;
    document.title = 'confab';
  }

  view(room) {
    return room ? this.views.get(room.name) : undefined;
  }

  /** The view for `room`, created on first use. */
  ensureView(room) {
    let v = this.views.get(room.name);
    if (!v) {
      v = new RoomView(room, this);
      this.views.set(room.name, v);
      this.el.views.append(v.el);
      const msgs = [...room.messages.values()].sort((a, b) => a.seq - b.seq);
      v.addMessages(msgs);
      for (const entry of room.outbox.values()) v.setOutbox(entry);
    }
    return v;
  }

  dropView(name) {
    this.views.get(name)?.el.remove();
    this.views.delete(name);
    this.drafts.delete(name);
    if (!this.chat.active) {
      const next = [...this.chat.rooms.keys()][0];
      if (next) this.open(next);
      else this.showRoom(null);
    }
  }

  /** Joins (if needed) and shows `name`. */
  open(name, { push = true, replace = false, focus = false } = {}) {
    let room;
    try {
      room = this.chat.join(name);
    } catch (e) {
      this.showJoinError(e.message);
      return false;
    }
    this.ensureView(room);
    this.showRoom(name);
    const url = `/r/${encodeURIComponent(name)}`;
    if (replace) history.replaceState(null, '', url);
    else if (push && location.pathname !== url) history.pushState(null, '', url);
    if (focus) this.focusComposer();
    return true;
  }

  showRoom(name) {
    const el = this.el;
    const previous = this.chat.active;
    if (previous && previous !== name) {
      this.drafts.set(previous, el.input.value);
      this.views.get(previous)?.hide();
    }
    this.chat.setActive(name);
    const v = name ? this.views.get(name) : null;
    el.empty.hidden = Boolean(v);
    el.composer.hidden = !v;
    el.leave.hidden = !v;
    el.membersToggle.hidden = !v;
    if (previous !== name) this.setMembers(false);
    const label = name ? this.chat.label(name) : 'confab';
    el.title.textContent = label;
    el.title.title = name ? `#${name}` : '';
    if (v) {
      v.show();
      if (previous !== name) el.input.value = this.drafts.get(name) ?? '';
      el.input.placeholder = `Message ${label}`;
      el.composerLabel.textContent = `Message ${label}`;
    }
    this.renderTyping();
    this.renderRooms();
  }

  focusComposer() {
    if (!this.el.composer.hidden) this.el.input.focus();
  }

  joinFromForm() {
    const name = this.el.joinName.value.trim();
    const problem = roomNameProblem(name);
    if (problem) {
      this.showJoinError(problem);
      this.el.joinName.focus();
      return;
    }
    if (this.open(name)) {
      this.el.joinName.value = '';
      this.setSidebar(false);
      this.focusComposer();
    }
  }

  showJoinError(message) {
    const { joinError, joinName } = this.el;
    joinError.textContent = message ?? '';
    joinError.hidden = !message;
    if (message) joinName.setAttribute('aria-invalid', 'true');
    else joinName.removeAttribute('aria-invalid');
  }

  leaveActive() {
    const name = this.chat.active;
    if (!name) return;
    this.chat.leave(name);
    if (!this.chat.active) this.el.joinName.focus();
  }

  sendFromComposer() {
    const name = this.chat.active;
    const text = this.el.input.value;
    if (!name || !text.trim()) return;
    const entry = this.chat.send(name, text);
    if (!entry) return;
    this.el.input.value = '';
    this.drafts.delete(name);
    // Own messages always come into view, wherever the user had scrolled.
    this.views.get(name)?.setOutbox(entry, { follow: true });
    this.el.input.focus();
  }

  showSearchError(message) {
    const { searchError, searchQ } = this.el;
    searchError.textContent = message ?? '';
    searchError.hidden = !message;
    if (message) searchQ.setAttribute('aria-invalid', 'true');
    else searchQ.removeAttribute('aria-invalid');
  }

  closeSearch() {
    this.searchState = null;
    this.el.searchPanel.hidden = true;
    this.el.searchResults.replaceChildren();
  }

  /** Runs a search (or fetches its next page) and lists the results in the sidebar. */
  async search(raw, { more = false } = {}) {
    const q = raw.trim();
    if (!q) {
      this.showSearchError('Type some words to look for.');
      return;
    }
    const el = this.el;
    const before = more ? this.searchState?.next : null;
    let page;
    try {
      page = await this.chat.search(q, { before });
    } catch (e) {
      this.showSearchError(e.message);
      return;
    }
    if (!more) el.searchResults.replaceChildren();
    this.searchState = { q, next: page.next ?? null, shown: (more ? this.searchState.shown : 0) + page.results.length };
    for (const hit of page.results) {
      el.searchResults.append(
        h(
          'li',
          { dataset: { room: hit.room, seq: String(hit.seq) } },
          h(
            'button',
            { type: 'button', class: 'search-hit', onclick: () => this.jumpTo(hit.room, hit.seq) },
            h('span', { class: 'search-where' }, this.chat.label(hit.room), ' · ', hit.senderName, ' · ', timeElement(hit.createdAt)),
            h('span', { class: 'search-snippet' }, hit.snippet),
          ),
        ),
      );
    }
    const n = this.searchState.shown;
    el.searchSummary.textContent = n === 0 ? `Nothing found for “${q}”.` : `${n}${page.next ? '+' : ''} message${n === 1 ? '' : 's'} found for “${q}”.`;
    el.searchMore.hidden = !page.next;
    el.searchPanel.hidden = false;
  }

  /** Opens `room` and brings message `seq` into view, loading history back to it. */
  async jumpTo(room, seq) {
    if (!this.open(room)) return;
    this.setSidebar(false);
    const found = await this.chat.loadUntil(room, seq);
    const v = this.views.get(room);
    if (!found || !v?.highlight(seq)) {
      this.el.announcer.textContent = 'That message is too far back to show here.';
    }
  }

  onMessage(room, msg) {
    const v = this.view(room);
    if (!v) return;
    const shown = v.addLive(msg);
    if (room.name === this.chat.active && msg.senderId !== this.chat.me.id && shown) {
      this.el.announcer.textContent = `${msg.senderName ?? msg.senderEmail}: ${msg.content}`;
    }
    this.renderTitle();
  }

  setSidebar(open) {
    const { root, toggle, scrim, joinName } = this.el;
    root.classList.toggle('sidebar-open', open);
    toggle.setAttribute('aria-expanded', String(open));
    scrim.hidden = !open;
    if (open) joinName.focus();
  }

  renderConn() {
    const { conn: box, connText, connRetry } = this.el;
    const state = this.conn.state;
    box.dataset.state = state;
    box.title = this.conn.node ? `server: ${this.conn.node}` : '';
    clearInterval(this.retryTicker);
    const text = () => {
      switch (state) {
        case 'connected':
          return 'Connected';
        case 'connecting':
          return 'Connecting…';
        case 'reconnecting':
          return 'Reconnecting…';
        case 'offline': {
          const s = Math.max(0, Math.ceil((this.conn.retryAt - Date.now()) / 1000));
          return s > 0 ? `Offline — retrying in ${s} s` : 'Offline — retrying…';
        }
        default:
          return 'Disconnected';
      }
    };
    connText.textContent = text();
    connRetry.hidden = state !== 'offline';
    if (state === 'offline') {
      this.retryTicker = setInterval(() => {
        connText.textContent = text();
      }, 1000);
    }
  }

  renderRooms() {
    const { roomList, noRooms, toggleBadge } = this.el;
    const focusedRoom = document.activeElement?.closest?.('#room-list [data-room]')?.dataset.room;
    const items = [...this.chat.rooms.values()].map((room) => {
      const current = room.name === this.chat.active;
      const badge =
        room.unread > 0
          ? h('span', { class: 'badge' }, String(room.unread), h('span', { class: 'sr-only' }, ' unread'))
          : null;
      const mention =
        room.mentions > 0
          ? h(
              'span',
              { class: 'badge badge--mention', title: `${room.mentions} mention${room.mentions === 1 ? '' : 's'} of you` },
              '@',
              h('span', { class: 'sr-only' }, ` ${room.mentions} mention${room.mentions === 1 ? '' : 's'}`),
            )
          : null;
      const state = room.joinError ? h('span', { class: 'room-meta error-text' }, '!') : null;
      const button = h(
        'button',
        {
          type: 'button',
          class: `room-btn${room.joined ? '' : ' room-btn--pending'}`,
          'aria-current': current ? 'page' : null,
          dataset: { room: room.name },
          title: room.joinError ?? null,
          onclick: () => {
            this.open(room.name);
            this.setSidebar(false);
            this.focusComposer();
          },
        },
        h('span', { class: 'room-name' }, this.chat.label(room.name)),
        state,
        mention,
        badge,
      );
      return h('li', {}, button);
    });
    roomList.replaceChildren(...items);
    noRooms.hidden = items.length > 0;
    if (focusedRoom) roomList.querySelector(`[data-room="${CSS.escape(focusedRoom)}"]`)?.focus();
    const unread = this.chat.totalUnread;
    toggleBadge.hidden = unread === 0;
    toggleBadge.textContent = unread ? String(unread) : '';
    this.renderDirectory();
    this.renderTitle();
    if (this.chat.active) this.el.title.textContent = this.chat.label(this.chat.active);
  }

  renderDirectory() {
    const { directory, noDirectory } = this.el;
    const items = this.chat.directory
      .filter((r) => !this.chat.rooms.has(r.name) && r.kind === 'public')
      .slice(0, 50)
      .map((r) =>
        h(
          'li',
          {},
          h(
            'button',
            {
              type: 'button',
              class: 'room-btn',
              onclick: () => {
                this.open(r.name);
                this.setSidebar(false);
                this.focusComposer();
              },
            },
            h('span', { class: 'room-name' }, r.title || `#${r.name}`),
            h('span', { class: 'room-meta' }, `${r.lastSeq} msg${r.lastSeq === 1 ? '' : 's'}`),
          ),
        ),
      );
    directory.replaceChildren(...items);
    noDirectory.hidden = items.length > 0;
  }

  async createFromForm() {
    const { createName, createTitle, createKind, createError } = this.el;
    const name = createName.value.trim();
    const show = (message) => {
      createError.textContent = message ?? '';
      createError.hidden = !message;
    };
    const problem = roomNameProblem(name);
    if (problem) {
      show(problem);
      createName.focus();
      return;
    }
    try {
      await this.chat.createRoom(name, createKind.value, createTitle.value);
    } catch (e) {
      show(e.message);
      return;
    }
    show(null);
    createName.value = '';
    createTitle.value = '';
    this.el.create.open = false;
    this.open(name);
    this.setSidebar(false);
    this.focusComposer();
  }

  /** Shows or hides the active room's member list (fetched fresh each time it opens). */
  setMembers(open) {
    const { members, membersToggle } = this.el;
    members.hidden = !open;
    membersToggle.setAttribute('aria-expanded', String(open));
    if (open) this.renderMembers();
  }

  showMembersError(message) {
    const { membersError } = this.el;
    membersError.textContent = message ?? '';
    membersError.hidden = !message;
  }

  async renderMembers() {
    const name = this.chat.active;
    if (!name) return;
    const { memberList, inviteForm } = this.el;
    const rank = { member: 1, moderator: 2, owner: 3 };
    const mine = rank[this.chat.myRole(name)] ?? 0;
    const info = this.chat.rooms.get(name)?.info;
    inviteForm.hidden = !(info?.kind === 'private' && mine >= rank.moderator);
    let members;
    try {
      members = await this.chat.members(name);
    } catch (e) {
      this.showMembersError(e.message);
      return;
    }
    if (this.chat.active !== name) return;
    this.showMembersError(null);
    const act = (label, run) =>
      h('button', {
        type: 'button',
        class: 'quiet',
        onclick: async () => {
          try {
            await run();
            this.showMembersError(null);
          } catch (e) {
            this.showMembersError(e.message);
          }
          this.renderMembers();
        },
      }, label);
    const items = members.map((m) => {
      const me = m.userId === this.chat.me.id;
      const actions = [];
      if (!me) {
        actions.push(
          h('button', {
            type: 'button',
            class: 'quiet',
            onclick: async () => {
              try {
                const room = await this.chat.openDirect(m.userId);
                this.open(room.name);
              } catch (e) {
                this.showMembersError(e.message);
              }
            },
          }, 'Message'),
        );
        if (mine >= rank.moderator && mine > (rank[m.role] ?? 0)) {
          actions.push(
            m.mutedUntil
              ? act('Unmute', () => this.chat.moderate(name, 'unmute', m.userId))
              : act('Mute 10 min', () => this.chat.moderate(name, 'mute', m.userId)),
            act('Remove', () => this.chat.moderate(name, 'kick', m.userId)),
            act('Ban', () => this.chat.moderate(name, 'ban', m.userId)),
          );
        }
      }
      const here = this.chat.isOnline(name, m.userId) ?? m.online;
      return h(
        'li',
        { dataset: { user: m.userId, online: String(Boolean(here)) } },
        h('span', { class: `presence-dot${here ? ' presence-dot--on' : ''}`, 'aria-hidden': 'true' }),
        h('span', { class: 'member-name', title: m.userId }, m.displayName),
        h('span', { class: 'sr-only' }, here ? ' (online)' : ' (offline)'),
        h('span', { class: 'member-role' }, me ? `${m.role} · you` : m.role),
        m.mutedUntil ? h('span', { class: 'member-role' }, `muted until ${timeFormat.format(new Date(m.mutedUntil))}`) : null,
        h('span', { class: 'member-actions' }, ...actions),
      );
    });
    memberList.replaceChildren(...items);
    await this.renderBans(name, mine >= rank.moderator, act);
  }

  /** The room's bans, with Unban, for those who moderate it. */
  async renderBans(name, moderates, act) {
    const { bansHeading, banList } = this.el;
    let bans = [];
    if (moderates) {
      try {
        bans = await this.chat.bans(name);
      } catch (e) {
        this.showMembersError(e.message);
      }
    }
    if (this.chat.active !== name) return;
    const items = bans.map((b) =>
      h(
        'li',
        { dataset: { user: b.userId } },
        h('span', { class: 'member-name', title: b.userId }, b.displayName),
        h('span', { class: 'member-actions' }, act('Unban', () => this.chat.moderate(name, 'unban', b.userId))),
      ),
    );
    banList.replaceChildren(...items);
    banList.hidden = items.length === 0;
    bansHeading.hidden = items.length === 0;
  }

  async inviteFromForm() {
    const name = this.chat.active;
    const userId = this.el.inviteId.value.trim();
    if (!name || !userId) return;
    try {
      await this.chat.moderate(name, 'invite', userId);
      this.el.inviteId.value = '';
      this.showMembersError(null);
    } catch (e) {
      this.showMembersError(e.message);
    }
    this.renderMembers();
  }

  renderTyping() {
    const names = this.chat.active ? this.chat.typists(this.chat.active) : [];
    let text = '';
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = 'Several people are typing…';
    this.el.typing.textContent = text;
  }

  renderTitle() {
    const unread = this.chat.totalUnread;
    const room = this.chat.active ? `${this.chat.label(this.chat.active)} · ` : '';
    document.title = `${unread ? `(${unread}) ` : ''}${room}confab`;
  }
}
