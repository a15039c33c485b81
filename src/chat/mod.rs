//! The real-time core ("node"): join (with resume), leave, send, typing, read markers. Owns
//! the hub, the bus, the store handle and the per-room writers.
//!
//! Knows nothing of HTTP or of WebSocket: the native and Socket.IO transports both call these
//! methods with [`crate::protocol`] types and hand the core the same kind of [`Outbox`], so
//! their clients share one path and one order. A new command goes through the same layers:
//! its wire form in `protocol`, its rule here, its SQL in `store`.
//!
//! - `join`: joining (access control, resume from `since`), leaving.
//! - `send`: sending (to the room's [`writer`]), typing, read markers, moderation events.
//! - [`hub`]: rooms with members on this node, in-order delivery, gap repair; it is the
//!   [`crate::bus::EventHandler`] the bus delivers to.
//! - [`outbox`] and [`session`]: a connection's way out, and its state; [`cork`]: batched
//!   writes under load.

pub mod cork;
mod error;
pub mod hub;
pub mod indexer;
mod join;
mod mentions;
pub mod outbox;
pub mod presence;
pub mod registry;
mod send;
pub mod session;
pub mod writer;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use self::{
    error::ChatError,
    mentions::resolve_mentions,
    outbox::{Failure, Outbox},
    session::{Revocation, Session},
};
use self::{hub::Hub, registry::SessionRegistry, session::SessionHandle};
use crate::{
    bus::Bus,
    domain::RoomName,
    domain::User,
    protocol::events,
    ratelimit::KeyedLimiter,
    store::{Store, StoreError},
    telemetry,
};

/// A node republishes its (unchanged) session list this often; `confab user sessions` ignores
/// lists older than three of these (a node that was killed).
pub const SESSION_LIST_HEARTBEAT: Duration = Duration::from_secs(30);
/// Most sessions one node lists.
const MAX_LISTED_SESSIONS: usize = 100_000;
/// How far back each look for revocations reaches. Wide, to cover clocks of the processes that
/// revoke (another node, the CLI on another machine) that run behind this one, and commits that
/// land late; seeing a revocation again is harmless, as a session ends only once.
const REVOCATION_LOOKBACK: Duration = Duration::from_secs(60);

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

impl ChatService {
    pub fn new(hub: Arc<Hub>, bus: Bus, store: Store, settings: ChatSettings) -> Self {
        let limiter = KeyedLimiter::per_second(settings.messages_per_second, settings.message_burst);
        let membership_limiter = KeyedLimiter::per_second(settings.joins_per_second, settings.join_burst);
        let read_limiter = KeyedLimiter::per_second(settings.joins_per_second, settings.join_burst);
        let sessions = Arc::clone(&hub.sessions);
        let presence = presence::Presence::new(Arc::clone(&hub), bus.presence_backing(), settings.presence_ttl);
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
        for (total, remote) in counts.iter_mut().zip(self.inner.bus.remote_member_counts(rooms).await) {
            *total += remote;
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

    /// Leaves every room and frees the account's place (the connection is ending).
    pub fn close_session(&self, s: &mut Session) {
        let rooms: Vec<RoomName> = s.rooms.keys().cloned().collect();
        for room in rooms {
            self.part(s, &room);
        }
        s.slot = None;
    }
}

/// How events show `user`.
fn who(user: &User) -> events::Who<'_> {
    events::Who { id: user.id.0, name: &user.display_name, email: &user.email }
}
