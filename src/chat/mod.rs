//! The real-time core ("node"): join, leave, send, typing. Owns the hub, the bus, the store
//! handle and the per-room writers.
//!
//! Knows nothing of HTTP or of how frames look on a particular transport: the native
//! WebSocket and Socket.IO codecs both call these methods and hand the core the same kind of
//! [`Outbox`], so their clients share one path and one order.

pub mod event;
pub mod hub;
pub mod indexer;
pub mod presence;
pub mod registry;
pub mod session;
pub mod writer;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{SubsecRound as _, Utc};
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use self::session::{Failure, Form, Outbox, Reply, ReplyBody, Revocation, Tag};
use self::{
    event::{Encoded, Presence},
    hub::{Hub, Room, Start},
    registry::{SessionRegistry, SessionSlot},
    session::SessionHandle,
    writer::WriteRequest,
};
use crate::{
    bus::Bus,
    domain::{
        ClientId, Content, InvalidContent, Mentions, NewMessage, NewRoom, ReadMarker, Role, RoomKind, RoomName, Seq,
        User, UserId,
    },
    ratelimit::KeyedLimiter,
    store::{Store, StoreError},
    telemetry,
};
/// At most one `typing` per user and room in this interval is passed on.
const TYPING_INTERVAL: Duration = Duration::from_millis(1000);
/// A node republishes its (unchanged) session list this often; `confab user sessions` ignores
/// lists older than three of these (a node that was killed).
pub const SESSION_LIST_HEARTBEAT: Duration = Duration::from_secs(30);
/// Most sessions one node lists.
const MAX_LISTED_SESSIONS: usize = 100_000;
/// How far back each look for revocations reaches. Wide, to cover clocks of the processes that
/// revoke (another node, the CLI on another machine) that run behind this one, and commits that
/// land late; seeing a revocation again is harmless, as a session ends only once.
const REVOCATION_LOOKBACK: Duration = Duration::from_secs(60);

/// Everything a chat command can fail with. Each variant is exactly one wire `code`.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{0}")]
    InvalidPayload(String),
    #[error("room names are 1 to 64 characters of A-Z a-z 0-9 : _ -")]
    InvalidRoom,
    #[error("message is longer than {max} characters")]
    TooLong { max: usize },
    #[error("too many {0}; slow down")]
    RateLimited(&'static str),
    #[error("this account has {max} connections open already; close one first")]
    TooManySessions { max: u32 },
    #[error("join the room before using it")]
    NotJoined,
    #[error("no such room")]
    NoSuchRoom,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("you are muted in this room until {until}")]
    Muted { until: String },
    #[error("the server is shutting down or overloaded; try again")]
    Unavailable,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ChatError {
    /// The `code` that `PROTOCOL.md` promises for this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidPayload(_) => "invalid_payload",
            Self::InvalidRoom => "invalid_room",
            Self::TooLong { .. } => "too_long",
            Self::RateLimited(_) => "rate_limited",
            Self::TooManySessions { .. } => "too_many_sessions",
            Self::NotJoined => "not_joined",
            Self::NoSuchRoom => "not_found",
            Self::Forbidden(_) => "forbidden",
            Self::Muted { .. } => "muted",
            Self::Unavailable => "unavailable",
            Self::Store(e) if e.is_unavailable() => "unavailable",
            Self::Store(_) => "internal",
        }
    }

    /// The message shown to the client: store details stay in the server log.
    pub fn client_message(&self) -> String {
        match self {
            Self::Store(e) => {
                tracing::warn!(error = ?e, "chat command failed in the store");
                "the server could not complete this; try again".into()
            }
            other => other.to_string(),
        }
    }
}

/// Tuning knobs of the chat core, from the configuration.
#[derive(Clone, Debug)]
pub struct ChatSettings {
    pub message_max_len: usize,
    pub messages_per_second: u32,
    pub message_burst: u32,
    pub joins_per_second: u32,
    pub join_burst: u32,
    pub max_rooms_per_session: usize,
    pub outbound_queue: usize,
    /// Joining an unknown room creates it (public).
    pub auto_create_rooms: bool,
    /// How often presence changes are gathered and told (coalesced within it).
    pub presence_interval: Duration,
    /// How long a node's presence entries outlive its last refresh (a dead node's users go
    /// offline after this).
    pub presence_ttl: Duration,
    /// How often stored messages are indexed for search.
    pub search_index_interval: Duration,
    /// How long a room's writer outlives its last send.
    pub writer_idle: Duration,
}

/// The chat core. Cheap to clone.
#[derive(Clone)]
pub struct ChatService {
    inner: Arc<Inner>,
}

struct Inner {
    hub: Arc<Hub>,
    bus: Bus,
    store: Store,
    limiter: KeyedLimiter<Uuid>,
    /// Joins and leaves per user: each is announced to the whole room.
    membership_limiter: KeyedLimiter<Uuid>,
    /// Read markers per user (a store write each), at the rate of joins.
    read_limiter: KeyedLimiter<Uuid>,
    sessions: Arc<SessionRegistry>,
    settings: ChatSettings,
    /// What room writers are started with, and the running ones.
    writers: writer::Writers,
    presence: Arc<presence::Presence>,
    /// Indexes what the writers stored, behind their acks.
    indexer: indexer::SearchIndexer,
    /// `confab_messages_received_total`, registered once rather than looked up per send.
    received: metrics::Counter,
}

/// One connection's chat state, owned by its transport task (no locks).
pub struct Session {
    pub handle: SessionHandle,
    pub user: User,
    rooms: HashMap<RoomName, Arc<Room>>,
    last_typing: HashMap<RoomName, Instant>,
    /// This session's place in its account's session count: freed by
    /// [`ChatService::close_session`], before the client hears the close, so it can reconnect
    /// at once (or when the session drops, whatever ended it).
    slot: Option<SessionSlot>,
}

impl Session {
    pub fn id(&self) -> u64 {
        self.handle.id
    }
    pub fn is_member(&self, room: &RoomName) -> bool {
        self.rooms.contains_key(room)
    }
}

/// A join's result (the ack with the latest seq is already written): whether the member must catch
/// up first.
pub struct Joined {
    pub room: RoomName,
    /// With `since` below the latest: messages after this seq come from [`ChatService::catch_up`].
    pub catch_up_from: Option<Seq>,
}

impl ChatService {
    pub fn new(hub: Arc<Hub>, bus: Bus, store: Store, settings: ChatSettings) -> Self {
        let limiter = KeyedLimiter::per_second(settings.messages_per_second, settings.message_burst);
        let membership_limiter = KeyedLimiter::per_second(settings.joins_per_second, settings.join_burst);
        let read_limiter = KeyedLimiter::per_second(settings.joins_per_second, settings.join_burst);
        let sessions = Arc::clone(&hub.sessions);
        let backing = match &bus {
            Bus::Local(_) => presence::Backing::Local,
            Bus::Redis(redis) => redis.presence_backing(),
        };
        let presence = presence::Presence::new(Arc::clone(&hub), backing, settings.presence_ttl);
        let indexer = indexer::SearchIndexer::new();
        let writers = writer::Writers {
            store: store.clone(),
            bus: bus.clone(),
            indexer: indexer.clone(),
            max_batch: writer::batch_limit(settings.outbound_queue),
            idle: settings.writer_idle,
            tasks: TaskTracker::new(),
        };
        let inner = Inner {
            presence,
            hub,
            bus,
            store,
            limiter,
            membership_limiter,
            read_limiter,
            sessions,
            settings,
            writers,
            indexer,
            received: metrics::counter!(telemetry::MESSAGES_RECEIVED),
        };
        Self { inner: Arc::new(inner) }
    }

    /// Room writers running on this node (rooms sent to within `chat.writer_idle`).
    pub fn running_writers(&self) -> usize {
        self.inner.writers.running()
    }

    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Members of each of `rooms` connected to any node: this node's count, plus — when
    /// clustered — what the other live nodes last reported.
    pub async fn member_counts(&self, rooms: &[String]) -> Vec<u64> {
        let mut counts: Vec<u64> =
            rooms.iter().map(|r| RoomName::parse(r).map_or(0, |r| self.inner.hub.member_count(&r) as u64)).collect();
        if let Bus::Redis(bus) = &self.inner.bus {
            for (total, remote) in counts.iter_mut().zip(bus.remote_member_counts(rooms).await) {
                *total += remote;
            }
        }
        counts
    }

    /// Every `every`, ends this node's sessions of accounts revoked since (by any process that
    /// shares the database), until `stop`. Through the database, so a CLI run against the same
    /// SQLite file reaches a running server, and every node of a cluster hears every change.
    /// The same tick publishes the node's list of open sessions (as `node`) when it changed,
    /// for `confab user sessions`.
    pub async fn watch_revocations(&self, every: Duration, node: Arc<str>, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lookback = i64::try_from(REVOCATION_LOOKBACK.as_millis()).unwrap_or(i64::MAX);
        let mut published: Option<(u64, Instant)> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => {
                    let _ = self.inner.store.forget_node_sessions(&node).await;
                    return;
                }
            }
            let generation = self.inner.sessions.generation();
            let due = published.is_none_or(|(g, at)| g != generation || at.elapsed() >= SESSION_LIST_HEARTBEAT);
            if due {
                let list = self.inner.sessions.snapshot(MAX_LISTED_SESSIONS);
                let json = serde_json::to_string(&list).unwrap_or_else(|_| "[]".into());
                match self.inner.store.publish_sessions(&node, &json).await {
                    Ok(()) => published = Some((generation, Instant::now())),
                    Err(e) => tracing::warn!(error = %e, "publishing this node's session list failed; trying again"),
                }
            }
            let since = Utc::now().timestamp_millis().saturating_sub(lookback);
            match self.inner.store.revoked_users_since(since).await {
                Ok(users) => {
                    for user in &users {
                        let ended = self.revoke_sessions(user);
                        if ended > 0 {
                            tracing::info!(user = %user.id.0, sessions = ended, "ended the sessions of a revoked account");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "looking for revoked accounts failed; trying again"),
            }
        }
    }

    /// Gathers and tells presence changes every `chat.presence_interval` until `stop`, then
    /// takes this node's users out of the cluster's presence.
    pub async fn run_presence(&self, stop: tokio_util::sync::CancellationToken) {
        let every = self.inner.settings.presence_interval;
        Arc::clone(&self.inner.presence).run(every, stop).await;
    }

    /// Indexes stored messages for search until `stop`.
    pub async fn run_search_indexer(&self, stop: tokio_util::sync::CancellationToken) {
        let every = self.inner.settings.search_index_interval;
        self.inner.indexer.run(self.inner.store.clone(), every, stop).await;
    }

    /// Messages matching `query` that `scope` may read, newest first, including everything this
    /// node stored before the call (see [`indexer`]).
    pub async fn search(
        &self,
        query: &crate::domain::SearchQuery,
        scope: &crate::store::SearchScope,
    ) -> Result<Vec<crate::domain::Message>, StoreError> {
        self.inner.indexer.catch_up().await;
        self.inner.store.search(query, scope).await
    }

    /// Who is online in `room` now (a session joined to it on a live node).
    pub async fn online_in(&self, room: &RoomName) -> std::collections::HashSet<Uuid> {
        self.inner.presence.online(room).await
    }

    /// Forgets rate-limit state of users who went quiet. Call periodically.
    pub fn sweep(&self) {
        self.inner.limiter.sweep();
        self.inner.membership_limiter.sweep();
        self.inner.read_limiter.sweep();
    }

    /// Waits (up to `grace`) for room writers to finish in-flight commits.
    pub async fn drain(&self, grace: Duration) {
        self.inner.writers.tasks.close();
        let _ = tokio::time::timeout(grace, self.inner.writers.tasks.wait()).await;
    }

    /// A new session for `user` on a token of session epoch `epoch`, whose frames go out
    /// through `outbox`; refused when the account has `ws.max_sessions_per_user` open on this
    /// node already.
    pub fn open_session(
        &self,
        user: User,
        epoch: i64,
        outbox: Arc<Outbox>,
        origin: registry::Origin,
    ) -> Result<Session, ChatError> {
        let handle = SessionHandle::new(user.id.0, outbox);
        let Ok(slot) = self.inner.sessions.admit(user.id.0, handle.id, epoch, &handle.outbox, origin) else {
            metrics::counter!(telemetry::WS_SESSIONS_REFUSED, "reason" => "too_many_sessions").increment(1);
            return Err(ChatError::TooManySessions { max: self.inner.sessions.max() });
        };
        Ok(Session { handle, user, rooms: HashMap::new(), last_typing: HashMap::new(), slot: Some(slot) })
    }

    /// The session now runs on a token of session epoch `epoch` (refreshed in-band).
    pub fn refresh_session(&self, s: &Session, epoch: i64) {
        if let Some(slot) = &s.slot {
            slot.set_epoch(epoch);
        }
    }

    /// Ends this node's sessions of `user` that its current state no longer allows: all of them
    /// if it is disabled, otherwise those on tokens of an older session epoch. Returns how many.
    pub fn revoke_sessions(&self, user: &User) -> usize {
        self.inner.sessions.revoke(user.id.0, user.session_epoch, user.disabled_at.is_some())
    }

    /// Takes a token from the user's join/leave bucket.
    fn check_membership_rate(&self, s: &Session) -> Result<(), ChatError> {
        self.inner.membership_limiter.check(&s.user.id.0).map_err(|_| {
            metrics::counter!(telemetry::CHAT_RATE_LIMITED, "command" => "membership").increment(1);
            ChatError::RateLimited("joins and leaves")
        })
    }

    /// Joins `room` and acks it (tagged `tag`) before any of the room's live messages. Joining a
    /// room again restarts delivery from `since` (no new `system`).
    pub async fn join(&self, s: &mut Session, room: &str, since: Option<Seq>, tag: &Tag) -> Result<Joined, ChatError> {
        let name = RoomName::parse(room).map_err(|_| ChatError::InvalidRoom)?;
        if matches!(since, Some(n) if n < 0) {
            return Err(ChatError::InvalidPayload("since must be a seq (0 or more)".into()));
        }
        self.forget_evicted(s);
        let rejoin = s.rooms.contains_key(&name);
        let max_rooms = self.inner.settings.max_rooms_per_session;
        if !rejoin && s.rooms.len() >= max_rooms {
            return Err(ChatError::InvalidPayload(format!("a connection can be in at most {max_rooms} rooms")));
        }
        self.check_membership_rate(s)?;
        if !rejoin {
            let muted_until = self.admit(&name, &s.user).await?;
            s.handle.mute(&name, muted_until.unwrap_or(0));
        }
        if let Some(old) = s.rooms.remove(&name) {
            self.remove_member(&old, s.id());
        }
        // The room hears of the join before the joiner gets its ack: whatever the joiner (or
        // anyone it tells) does after the ack — another join, a message — is published after
        // this announcement, so every member hears joins in ack order and never sees a
        // member's message before its join.
        let mut announce = !rejoin;
        let (room, start) = loop {
            let room = self.inner.hub.room_or_insert(&name, || self.inner.bus.subscribe(&name));
            self.inner.hub.ensure_ready(&room).await?;
            if std::mem::take(&mut announce) {
                self.inner.bus.publish(vec![event::system(&name, Presence::Join, s.id(), who(&s.user))]);
            }
            // Err: the room emptied and left the hub meanwhile; look it up again.
            // The ack goes out under the room's lock, ahead of any live message.
            let ack = |latest| {
                let body = ReplyBody::Joined { room: name.to_string(), seq: latest };
                s.handle.outbox.offer_reply(&Reply::new(tag.clone(), body));
            };
            if let Ok(start) = room.add_member(s.handle.clone(), since, ack) {
                break (room, start);
            }
        };
        s.rooms.insert(name.clone(), room);
        // Who is online here, as this node last told the room; changes follow as they come.
        if s.handle.outbox.form() == Form::Native {
            let online = self.inner.presence.announced(&name);
            s.handle.outbox.offer_event(&presence::event(&name, online, Vec::new()));
        }
        Ok(match start {
            Start::Live { .. } => Joined { room: name, catch_up_from: None },
            Start::CatchUp { from, .. } => Joined { room: name, catch_up_from: Some(from) },
        })
    }

    /// Whether `user` may join `room`, making them a member of a public room (created first,
    /// when unknown and `rooms.auto_create` is on). Private and direct rooms admit their
    /// members (and administrators) only; a ban keeps anyone out; an archived room admits
    /// nobody. Returns until when (Unix seconds) the user is muted there, if they are.
    async fn admit(&self, room: &RoomName, who: &User) -> Result<Option<i64>, ChatError> {
        let user = who.id;
        let store = &self.inner.store;
        let found = match store.room(room).await? {
            Some(found) => found,
            // Direct rooms are made by `POST /api/dm/{userId}`, never by joining.
            None if room.as_str().starts_with(crate::domain::DIRECT_PREFIX) => return Err(ChatError::NoSuchRoom),
            None if self.inner.settings.auto_create_rooms => {
                let new =
                    NewRoom { name: room.clone(), kind: RoomKind::Public, title: None, topic: None, created_by: user };
                // Lost races are fine: someone else created it.
                store.create_room(&new, None).await?;
                store.room(room).await?.ok_or(ChatError::NoSuchRoom)?
            }
            None => return Err(ChatError::NoSuchRoom),
        };
        if found.archived_at.is_some() {
            return Err(ChatError::Forbidden("this room is archived"));
        }
        match store.membership(room, user).await? {
            Some(m) if m.banned_at.is_some() => Err(ChatError::Forbidden("you are banned from this room")),
            Some(m) => Ok(m.muted_until.map(|t| t.timestamp())),
            // Administrators enter any room without becoming members of it.
            None if who.is_admin && found.kind != RoomKind::Public => Ok(None),
            None if found.kind == RoomKind::Public => {
                store.add_member(room, user, Role::Member).await?;
                Ok(None)
            }
            None => Err(ChatError::Forbidden("this room is for its members only")),
        }
    }

    /// The next page of messages after `after` for a catching-up member, encoded. An empty
    /// page means the store has nothing more: try [`ChatService::go_live`].
    pub async fn catch_up(&self, room: &RoomName, after: Seq) -> Result<Vec<(Seq, Arc<Encoded>)>, ChatError> {
        let page = self.inner.store.messages_after(room, after, hub::PAGE).await?;
        Ok(page.iter().map(|m| (m.seq, event::message(room, m).frame)).collect())
    }

    /// Switches a caught-up member to live delivery. False: more was delivered meanwhile,
    /// catch up again from `sent_upto`.
    pub fn go_live(&self, s: &Session, room: &RoomName, sent_upto: Seq) -> bool {
        match s.rooms.get(room) {
            Some(r) => self.inner.hub.go_live(r, s.id(), sent_upto),
            None => true,
        }
    }

    /// `leave_room`: leaves and tells the room (rate limited with joins).
    pub fn leave(&self, s: &mut Session, room: &str) -> Result<RoomName, ChatError> {
        let name = RoomName::parse(room).map_err(|_| ChatError::InvalidRoom)?;
        self.forget_evicted(s);
        if !s.rooms.contains_key(&name) {
            return Err(ChatError::NotJoined);
        }
        self.check_membership_rate(s)?;
        self.part(s, &name);
        Ok(name)
    }

    /// Leaves `room` (if a member) and tells the room; never refused, for the server's own
    /// leaves (the connection ended, a resume failed).
    pub fn part(&self, s: &mut Session, room: &RoomName) {
        let Some(r) = s.rooms.remove(room) else { return };
        self.remove_member(&r, s.id());
        s.last_typing.remove(room);
        self.inner.bus.publish(vec![event::system(room, Presence::Leave, s.id(), who(&s.user))]);
    }

    /// Leaves every room and frees the account's place (the connection is ending).
    pub fn close_session(&self, s: &mut Session) {
        let rooms: Vec<RoomName> = s.rooms.keys().cloned().collect();
        for room in rooms {
            self.part(s, &room);
        }
        s.slot = None;
    }

    /// Validates and queues a message for storing; the ack (or error) goes out through the
    /// session's outbox once the room's writer has committed it.
    pub async fn send_message(
        &self,
        s: &Session,
        room: &str,
        content: &str,
        client_id: Option<&str>,
        tag: Tag,
    ) -> Result<(), ChatError> {
        self.inner.received.increment(1);
        // A block, so that every refusal below is counted once, by its code.
        let queued = async {
            let name = RoomName::parse(room).map_err(|_| ChatError::InvalidRoom)?;
            let content = Content::parse(content, self.inner.settings.message_max_len).map_err(|e| match e {
                InvalidContent::Empty => ChatError::InvalidPayload(e.to_string()),
                InvalidContent::TooLong { max } => ChatError::TooLong { max },
            })?;
            let client_id = client_id
                .map(|c| {
                    ClientId::parse(c)
                        .map_err(|_| ChatError::InvalidPayload("clientId must be 1 to 64 characters".into()))
                })
                .transpose()?;
            let room = s.rooms.get(&name).ok_or(ChatError::NotJoined)?;
            if s.handle.is_evicted_from(&name) {
                return Err(ChatError::Forbidden("you are no longer a member of this room"));
            }
            if let Some(until) = s.handle.muted_until(&name, Utc::now().timestamp()) {
                let until = chrono::DateTime::from_timestamp(until, 0).unwrap_or_default().to_rfc3339();
                return Err(ChatError::Muted { until });
            }
            self.check_message_rate(s.user.id, "send_message")?;
            // Only a message that could mention someone pays for the member list.
            let mentions = if content.as_str().contains('@') {
                self.mentions_in(&name, &s.user, content.as_str()).await?
            } else {
                Mentions::default()
            };
            let msg = NewMessage {
                id: Uuid::now_v7(),
                room: name,
                sender_id: s.user.id,
                sender_email: s.user.email.clone(),
                sender_name: s.user.display_name.clone(),
                content: content.into_string(),
                client_id: client_id.map(|c| c.as_str().to_owned()),
                // PostgreSQL keeps microseconds: truncate now so live frames and history agree.
                created_at: Utc::now().trunc_subsecs(6),
                kind: crate::domain::MessageKind::Message,
                target_id: None,
                mentions,
            };
            // Counted before the writer can answer, so the answer always finds it counted.
            s.handle.outbox.began_send();
            let accepted = std::time::Instant::now();
            let request = WriteRequest { msg, tag, reply_to: s.handle.clone(), accepted };
            room.writer.submit(&room.name, &self.inner.writers, request).await.map_err(|_| {
                s.handle.outbox.cancel_send();
                ChatError::Unavailable
            })
        }
        .await;
        if let Err(e) = &queued {
            metrics::counter!(telemetry::MESSAGES_REJECTED, "reason" => e.code()).increment(1);
        }
        queued
    }

    /// Whom `content`, sent by `sender` in `room`, mentions: members by display name, and
    /// everyone for `@room` / `@here` from an owner, moderator or administrator.
    async fn mentions_in(&self, room: &RoomName, sender: &User, content: &str) -> Result<Mentions, ChatError> {
        let members = self.inner.store.members(room, MENTION_CANDIDATES).await?;
        let may_mention_all = sender.is_admin
            || members.iter().any(|m| m.user_id == sender.id.0 && m.role >= crate::domain::Role::Moderator);
        let named: Vec<(Uuid, &str)> =
            members.iter().filter(|m| m.user_id != sender.id.0).map(|m| (m.user_id, m.display_name.as_str())).collect();
        Ok(resolve_mentions(content, &named, may_mention_all))
    }

    /// Takes one token from `user`'s message budget (`limits.messages_per_second`), which sends
    /// and the REST edits and deletions share: each of them is a write and a fan-out.
    pub fn check_message_rate(&self, user: UserId, command: &'static str) -> Result<(), ChatError> {
        self.inner.limiter.check(&user.0).map_err(|_| {
            metrics::counter!(telemetry::CHAT_RATE_LIMITED, "command" => command).increment(1);
            ChatError::RateLimited("messages")
        })
    }

    /// Tells the room's other members this user is typing (at most once a second).
    pub fn typing(&self, s: &mut Session, room: &str) -> Result<(), ChatError> {
        let name = RoomName::parse(room).map_err(|_| ChatError::InvalidRoom)?;
        self.forget_evicted(s);
        if !s.rooms.contains_key(&name) {
            return Err(ChatError::NotJoined);
        }
        let now = Instant::now();
        if s.last_typing.get(&name).is_some_and(|t| now.duration_since(*t) < TYPING_INTERVAL) {
            return Ok(());
        }
        s.last_typing.insert(name.clone(), now);
        self.inner.bus.publish(vec![event::typing(&name, who(&s.user))]);
        Ok(())
    }

    /// Moves `user`'s read marker in `room` forward to `seq` (clamped to the room's latest;
    /// never back) and tells the user's other sessions, on every node, except `origin` (0 for
    /// none). Returns where the marker stands and the messages after it. Refused for
    /// non-members.
    pub async fn mark_read(
        &self,
        user: UserId,
        origin: u64,
        room: &str,
        seq: Seq,
    ) -> Result<(RoomName, ReadMarker), ChatError> {
        let name = RoomName::parse(room).map_err(|_| ChatError::InvalidRoom)?;
        if seq < 0 {
            return Err(ChatError::InvalidPayload("seq must be 0 or more".into()));
        }
        self.inner.read_limiter.check(&user.0).map_err(|_| {
            metrics::counter!(telemetry::CHAT_RATE_LIMITED, "command" => "mark_read").increment(1);
            ChatError::RateLimited("read markers")
        })?;
        let marked = self
            .inner
            .store
            .mark_read(&name, user, seq)
            .await?
            .ok_or(ChatError::Forbidden("only members of a room have a read marker there"))?;
        self.inner.bus.publish(vec![event::read(&name, user.0, origin, marked)]);
        Ok((name, marked))
    }

    /// Tells every node that `user` is no longer a member of `room` (`reason`: `kicked`,
    /// `banned`, `left`; or, for the nil user, everyone: `archived`): the room hears it, and
    /// the user's sessions there, told too, leave it.
    pub fn evict(&self, room: &RoomName, user: UserId, reason: &str) {
        self.inner.bus.publish(vec![event::removed(room, user.0, reason)]);
    }

    /// Hands a row of `room`'s seq stream stored outside the room's writer (a deletion) to
    /// every node's members, in its seq order.
    pub fn announce_stored(&self, room: &RoomName, stored: &crate::domain::Message) {
        self.inner.indexer.stored(room);
        self.inner.bus.publish(vec![event::message(room, stored)]);
    }

    /// Tells every node that `user` may not send in `room` until `until` (Unix seconds; 0 lifts
    /// it): the room hears it, and the user's sessions there refuse to send.
    pub fn mute(&self, room: &RoomName, user: UserId, until: i64) {
        self.inner.bus.publish(vec![event::muted(room, user.0, until)]);
    }

    /// Drops the rooms this session was removed from (the room dropped it already).
    fn forget_evicted(&self, s: &mut Session) {
        for name in s.handle.take_evicted() {
            if let Some(room) = s.rooms.remove(&name) {
                self.remove_member(&room, s.id());
                s.last_typing.remove(&name);
            }
        }
    }

    fn remove_member(&self, room: &Arc<Room>, session: u64) {
        self.inner.hub.remove_member(room, session, |name| self.inner.bus.unsubscribe(name));
    }
}

/// Members a mention is looked for among (the oldest this many); also the most one message
/// mentions.
const MENTION_CANDIDATES: u32 = 1000;

/// Whom `content` mentions: for each `@` that starts a word, the longest of `members`' names
/// (any case) that follows it as whole words; `@room` / `@here` mean everyone when
/// `may_mention_all`. Each member once.
pub fn resolve_mentions(content: &str, members: &[(Uuid, &str)], may_mention_all: bool) -> Mentions {
    let text: Vec<char> = content.chars().collect();
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let starts_with = |at: usize, name: &str| -> Option<usize> {
        let mut i = at;
        for n in name.chars() {
            let c = *text.get(i)?;
            if !c.to_lowercase().eq(n.to_lowercase()) {
                return None;
            }
            i += 1;
        }
        (i > at && text.get(i).is_none_or(|c| !word(*c))).then_some(i - at)
    };
    let mut out = Mentions::default();
    for (i, c) in text.iter().enumerate() {
        if *c != '@' || (i > 0 && word(text[i - 1])) {
            continue;
        }
        if may_mention_all && (starts_with(i + 1, "room").is_some() || starts_with(i + 1, "here").is_some()) {
            out.all = true;
            continue;
        }
        let best = members
            .iter()
            .filter_map(|(id, name)| starts_with(i + 1, name).map(|len| (len, *id)))
            .max_by_key(|(len, _)| *len);
        if let Some((_, id)) = best
            && !out.users.contains(&id)
        {
            out.users.push(id);
        }
    }
    out
}

/// How events show `user`.
fn who(user: &User) -> event::Who<'_> {
    event::Who { id: user.id.0, name: &user.display_name, email: &user.email }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_members_named_after_an_at_sign_longest_name_first() {
        let (ann, ann_lee, bob) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let members = [(ann, "Ann"), (ann_lee, "Ann Lee"), (bob, "bob")];
        let m = resolve_mentions("hi @ann lee and @BOB, @bob again; mail x@bob.com, @bobby, @Ann.", &members, false);
        assert_eq!(m.users, [ann_lee, bob, ann]);
        assert!(!m.all);
        assert!(resolve_mentions("@room look", &members, false).is_empty(), "only moderators reach everyone");
        let all = resolve_mentions("@here look", &members, true);
        assert!(all.all && all.users.is_empty());
        assert_eq!(all.to_db().as_deref(), Some("all"));
        let back = Mentions::try_from(m.to_db()).unwrap();
        assert_eq!(back, m);
        assert_eq!(Mentions::try_from(None).unwrap(), Mentions::default());
    }
}
