//! The hub: which sessions on this node are in which rooms, and in-order delivery to them.
//!
//! It never talks to Redis and reads the store only to repair gaps: every event comes from the
//! bus, even ones published on this node. Invariant: a member sees a room's messages in `seq`
//! order, each exactly once. A message that arrives early (Redis reordered or dropped
//! something, or a reconnect lost some) waits in `pending` until the gap is filled from the
//! store, which holds every seq below any published one (a message is published only after it
//! is committed, and a room's seqs are committed in order).
//!
//! Locking: a sharded map finds a room (short critical sections, never across `.await`); each
//! room has its own mutex, so rooms never wait for one another. Lock order: shard, then room.

use std::{
    collections::{BTreeMap, HashMap},
    hash::BuildHasher,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::sync::{OnceCell, oneshot};

use super::{
    event::{self, Encoded, Event, EventKind},
    registry::SessionRegistry,
    session::{Flusher, Form, SessionHandle, corked},
    writer,
};
use crate::sync::MutexExt as _;
use crate::{
    domain::{RoomName, Seq},
    store::{Store, StoreError},
    telemetry,
};

const SHARDS: usize = 64;
/// Messages fetched per store read when repairing a gap or catching a member up.
pub const PAGE: u32 = 256;

/// One room with members on this node.
pub struct Room {
    pub name: RoomName,
    inner: Mutex<RoomInner>,
    /// Set once the room is subscribed on the bus and knows its latest seq.
    ready: OnceCell<()>,
    /// The bus's confirmation of our subscription, awaited by the first initialiser.
    subscribed: Mutex<Option<oneshot::Receiver<()>>>,
    /// This room's group-commit writer on this node, while sends come.
    pub writer: writer::Slot,
}

struct RoomInner {
    members: Vec<Member>,
    /// Last seq delivered, in order, to this node's members; `None` until initialised.
    delivered: Option<Seq>,
    /// Messages that arrived ahead of a gap, by seq.
    pending: BTreeMap<Seq, Arc<Encoded>>,
    /// Highest seq known to exist in the store; a repair task runs while `delivered` is below.
    fill_target: Seq,
    filling: bool,
    /// Removed from the hub: joiners holding this `Arc` must look the room up again.
    closed: bool,
    /// Messages written to members, by transport (native, Socket.IO).
    delivered_total: [metrics::Counter; 2],
}

struct Member {
    handle: SessionHandle,
    /// Last seq queued for this member; later events at or below it are duplicates.
    last: Seq,
    /// False while the member catches up from the store; live events skip it meanwhile.
    live: bool,
}

/// The room is gone from the hub; look it up again.
#[derive(Debug)]
pub struct RoomClosed;

/// Where a member starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Live from now on; the room's latest delivered seq is given.
    Live { latest: Seq },
    /// Must catch up from the store after `from` before going live.
    CatchUp { latest: Seq, from: Seq },
}

impl Room {
    fn lock(&self) -> MutexGuard<'_, RoomInner> {
        // A panic while holding the lock cannot leave the room half-updated in a way that
        // matters more than stopping delivery would, so poisoning is ignored.
        self.inner.lock_unpoisoned()
    }

    /// Adds a session. With `since`, it must catch up (see [`Hub::go_live`]). `joined` runs
    /// under the room's lock just before the member is added, with the latest seq the join
    /// answers: whatever it writes to the session precedes every live event of the room.
    pub fn add_member(
        &self,
        handle: SessionHandle,
        since: Option<Seq>,
        joined: impl FnOnce(Seq),
    ) -> Result<Start, RoomClosed> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(RoomClosed);
        }
        let latest = inner.delivered.unwrap_or(0);
        inner.members.retain(|m| m.handle.id != handle.id);
        let (member, start) = match since {
            Some(from) if from < latest => {
                (Member { handle, last: from, live: false }, Start::CatchUp { latest, from })
            }
            // A client that has seen more than this node delivered so far (it came from a node
            // further ahead) is live at once; what it has seen is skipped as it arrives.
            Some(from) => (Member { handle, last: from, live: true }, Start::Live { latest: latest.max(from) }),
            None => (Member { handle, last: latest, live: true }, Start::Live { latest }),
        };
        let (Start::Live { latest } | Start::CatchUp { latest, .. }) = start;
        joined(latest);
        inner.members.push(member);
        Ok(start)
    }

    /// Members on this node.
    pub fn member_count(&self) -> usize {
        self.lock().members.len()
    }

    /// The users of this node's members.
    fn users(&self) -> std::collections::HashSet<uuid::Uuid> {
        self.lock().members.iter().map(|m| m.handle.user).collect()
    }

    /// Delivers one message event in seq order, holding early ones back. Returns true when a
    /// gap appeared that no repair task is working on yet.
    fn accept(&self, seq: Seq, frame: &Arc<Encoded>) -> bool {
        let mut inner = self.lock();
        let Some(delivered) = inner.delivered else {
            inner.pending.insert(seq, Arc::clone(frame));
            return false;
        };
        if seq <= delivered {
            return false; // already delivered: a duplicate from the bus or a repair
        }
        if seq > delivered + 1 {
            inner.pending.insert(seq, Arc::clone(frame));
            inner.fill_target = inner.fill_target.max(seq - 1);
            return !std::mem::replace(&mut inner.filling, true);
        }
        deliver(&mut inner, seq, frame);
        drain_pending(&mut inner);
        false
    }

    /// Delivers a system or typing event to live members other than its origin.
    fn broadcast(&self, kind: EventKind, frame: &Arc<Encoded>) {
        let mut inner = self.lock();
        let mut kicked = false;
        for m in inner.members.iter().filter(|m| m.live) {
            let skip = match kind {
                EventKind::System { origin } => m.handle.id == origin,
                EventKind::Typing { user } => m.handle.user == user,
                EventKind::Message { .. }
                | EventKind::Deleted { .. }
                | EventKind::Edited { .. }
                | EventKind::Reacted { .. }
                | EventKind::Removed { .. }
                | EventKind::Muted { .. }
                | EventKind::Read { .. } => false,
                // The original platform's clients have no use for it.
                EventKind::Presence => m.handle.outbox.form() == Form::SocketIo,
            };
            if !skip && !m.handle.outbox.offer_event(frame) {
                kicked = true;
            }
        }
        if kicked {
            remove_kicked(&mut inner);
        }
        // The removed user's sessions, told above, are members no more: nothing else of this
        // room reaches them, and their sessions refuse to use it.
        if let EventKind::Muted { user, until } = kind {
            for m in inner.members.iter().filter(|m| m.handle.user == user) {
                m.handle.mute(&self.name, until);
            }
        }
        if let EventKind::Removed { user } = kind {
            // The nil user stands for everyone: the room was archived.
            let everyone = user.is_nil();
            inner.members.retain(|m| {
                let stays = !everyone && m.handle.user != user;
                if !stays {
                    m.handle.evict(&self.name);
                }
                stays
            });
        }
    }
}

/// Queues message `seq` for every live member that has not had it. Caller holds the lock and
/// has checked `seq == delivered + 1`.
fn deliver(inner: &mut RoomInner, seq: Seq, frame: &Arc<Encoded>) {
    inner.delivered = Some(seq);
    let mut kicked = false;
    let mut written = [0u64; 2];
    for m in &mut inner.members {
        if !m.live || seq <= m.last {
            continue;
        }
        if m.handle.outbox.offer_event(frame) {
            m.last = seq;
            written[usize::from(m.handle.outbox.form() == Form::SocketIo)] += 1;
        } else {
            kicked = true;
        }
    }
    // Once per message, not per recipient: the counters are shared by every thread.
    for (counter, n) in inner.delivered_total.iter().zip(written) {
        if n > 0 {
            counter.increment(n);
        }
    }
    if kicked {
        remove_kicked(inner);
    }
}

fn drain_pending(inner: &mut RoomInner) {
    while let Some(delivered) = inner.delivered {
        let Some(entry) = inner.pending.first_entry() else { break };
        if *entry.key() <= delivered {
            entry.remove();
        } else if *entry.key() == delivered + 1 {
            let (seq, frame) = entry.remove_entry();
            deliver(inner, seq, &frame);
        } else {
            break;
        }
    }
}

/// Drops members whose session was kicked (queue overflow) or has gone.
fn remove_kicked(inner: &mut RoomInner) {
    inner.members.retain(|m| m.handle.outbox.is_open());
}

type Shard = Mutex<HashMap<RoomName, Arc<Room>>>;

/// Rooms with members on this node.
pub struct Hub {
    shards: Box<[Shard]>,
    hasher: std::collections::hash_map::RandomState,
    store: Store,
    /// This node's sessions by account, for events addressed to a user rather than a room.
    pub sessions: Arc<SessionRegistry>,
    /// Writes what deliveries corked (see [`session::corked`](super::session::corked)).
    pub flusher: Arc<Flusher>,
}

impl Hub {
    pub fn new(store: Store, sessions: Arc<SessionRegistry>) -> Arc<Self> {
        Arc::new(Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            store,
            sessions,
            flusher: Flusher::spawn(),
        })
    }

    fn shard(&self, room: &RoomName) -> MutexGuard<'_, HashMap<RoomName, Arc<Room>>> {
        let idx = usize::try_from(self.hasher.hash_one(room) % SHARDS as u64).unwrap_or(0);
        self.shards[idx].lock_unpoisoned()
    }

    pub fn get(&self, room: &RoomName) -> Option<Arc<Room>> {
        self.shard(room).get(room).cloned()
    }

    /// The room, created if this node has none. `subscribe` runs under the shard lock and
    /// returns the new room's bus subscription, so subscribe and unsubscribe requests for one
    /// room reach the bus in the order rooms come and go.
    pub fn room_or_insert(&self, room: &RoomName, subscribe: impl FnOnce() -> oneshot::Receiver<()>) -> Arc<Room> {
        let mut shard = self.shard(room);
        if let Some(existing) = shard.get(room) {
            return Arc::clone(existing);
        }
        let subscribed = subscribe();
        let new = Arc::new(Room {
            name: room.clone(),
            inner: Mutex::new(RoomInner {
                members: Vec::new(),
                delivered: None,
                pending: BTreeMap::new(),
                fill_target: 0,
                filling: false,
                closed: false,
                delivered_total: [Form::Native, Form::SocketIo]
                    .map(|f| metrics::counter!(telemetry::MESSAGES_DELIVERED, "transport" => f.label())),
            }),
            ready: OnceCell::new(),
            subscribed: Mutex::new(Some(subscribed)),
            writer: writer::Slot::default(),
        });
        shard.insert(room.clone(), Arc::clone(&new));
        new
    }

    /// Waits until the room is subscribed and knows where it starts: the store's latest seq
    /// read *after* subscribing, so no message falls between the two.
    pub async fn ensure_ready(self: &Arc<Self>, room: &Arc<Room>) -> Result<(), StoreError> {
        room.ready
            .get_or_try_init(|| async {
                let subscribed = room.subscribed.lock_unpoisoned().take();
                if let Some(rx) = subscribed {
                    let _ = rx.await;
                }
                let latest = self.store.last_seq(&room.name).await?;
                let gap = {
                    let mut inner = room.lock();
                    inner.delivered = Some(latest);
                    drain_pending(&mut inner);
                    match inner.pending.first_key_value() {
                        Some((&first, _)) => {
                            inner.fill_target = inner.fill_target.max(first - 1);
                            !std::mem::replace(&mut inner.filling, true)
                        }
                        None => false,
                    }
                };
                if gap {
                    self.spawn_repair(Arc::clone(room));
                }
                Ok::<(), StoreError>(())
            })
            .await?;
        Ok(())
    }

    /// Removes a session from a room. When it was the last member the room leaves the hub and
    /// `on_empty` runs under the shard lock (to unsubscribe in order). Returns whether the
    /// session was a member.
    pub fn remove_member(&self, room: &Arc<Room>, session: u64, on_empty: impl FnOnce(&RoomName)) -> bool {
        let (was_member, empty) = {
            let mut inner = room.lock();
            let before = inner.members.len();
            inner.members.retain(|m| m.handle.id != session);
            (inner.members.len() < before, inner.members.is_empty())
        };
        if empty {
            let mut shard = self.shard(&room.name);
            let mut inner = room.lock();
            let same = shard.get(&room.name).is_some_and(|r| Arc::ptr_eq(r, room));
            if same && inner.members.is_empty() && !inner.closed {
                inner.closed = true;
                shard.remove(&room.name);
                on_empty(&room.name);
            }
        }
        was_member
    }

    /// Makes a catching-up member live if it has everything the room delivered so far.
    /// Returns false if more arrived meanwhile (fetch again from `sent_upto`).
    pub fn go_live(&self, room: &Room, session: u64, sent_upto: Seq) -> bool {
        let mut inner = room.lock();
        if inner.delivered.unwrap_or(0) > sent_upto {
            return false;
        }
        if let Some(m) = inner.members.iter_mut().find(|m| m.handle.id == session) {
            m.live = true;
            m.last = m.last.max(sent_upto);
        }
        true
    }

    /// Hands an event from the bus to the room's members on this node.
    pub fn dispatch(self: &Arc<Self>, event: &Event) {
        if let EventKind::Read { user, origin } = event.frame.kind {
            self.sessions.deliver(user, origin, &event.frame);
            return;
        }
        let Some(room) = self.get(&event.room) else { return };
        match event.frame.kind {
            EventKind::Message { seq }
            | EventKind::Deleted { seq }
            | EventKind::Edited { seq }
            | EventKind::Reacted { seq } => {
                if room.accept(seq, &event.frame) {
                    self.spawn_repair(room);
                }
            }
            kind => room.broadcast(kind, &event.frame),
        }
    }

    /// After the bus may have lost events (reconnect): compare every room with the store and
    /// repair what is missing.
    pub fn resync_all(self: &Arc<Self>) {
        for room in self.rooms() {
            let hub = Arc::clone(self);
            tokio::spawn(async move {
                let Ok(latest) = hub.store.last_seq(&room.name).await else { return };
                let start = {
                    let mut inner = room.lock();
                    match inner.delivered {
                        Some(d) if latest > d => {
                            inner.fill_target = inner.fill_target.max(latest);
                            !std::mem::replace(&mut inner.filling, true)
                        }
                        _ => false,
                    }
                };
                if start {
                    hub.spawn_repair(room);
                }
            });
        }
    }

    /// Every room with members here.
    fn rooms(&self) -> Vec<Arc<Room>> {
        self.shards.iter().flat_map(|s| s.lock_unpoisoned().values().cloned().collect::<Vec<_>>()).collect()
    }

    /// The users with a session in each room here.
    pub fn users_by_room(&self) -> HashMap<RoomName, std::collections::HashSet<uuid::Uuid>> {
        self.rooms().iter().map(|r| (r.name.clone(), r.users())).collect()
    }

    /// The users with a session in `room` here.
    pub fn users_in(&self, room: &RoomName) -> std::collections::HashSet<uuid::Uuid> {
        self.get(room).map(|r| r.users()).unwrap_or_default()
    }

    /// Gives `frame` (made on this node for this node) to the live members of `room` here.
    pub fn tell_local(&self, room: &RoomName, frame: &Arc<Encoded>) {
        if let Some(r) = self.get(room) {
            corked(&self.flusher, || r.broadcast(EventKind::Presence, frame));
        }
    }

    /// Every room here with its member count.
    pub fn member_counts(&self) -> Vec<(RoomName, usize)> {
        self.rooms().iter().map(|r| (r.name.clone(), r.member_count())).collect()
    }

    /// Members of `room` on this node.
    pub fn member_count(&self, room: &RoomName) -> usize {
        self.get(room).map_or(0, |r| r.member_count())
    }

    /// Fetches missing seqs from the store until the room has delivered up to its fill target.
    /// Runs until done; only one per room at a time (`filling`).
    fn spawn_repair(self: &Arc<Self>, room: Arc<Room>) {
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(10);
            loop {
                let (after, want) = {
                    let mut inner = room.lock();
                    match inner.delivered {
                        Some(d) if d < inner.fill_target => (d, inner.fill_target - d),
                        _ => {
                            inner.filling = false;
                            return;
                        }
                    }
                };
                let limit = u32::try_from(want).unwrap_or(PAGE).min(PAGE);
                match store.messages_after(&room.name, after, limit).await {
                    Ok(found) if !found.is_empty() => {
                        tracing::debug!(room = %room.name, after, count = found.len(), "gap repaired from the store");
                        metrics::counter!(telemetry::GAP_REPAIRED).increment(found.len() as u64);
                        for msg in &found {
                            room.accept(msg.seq, &event::message(&room.name, msg).frame);
                        }
                        backoff = Duration::from_millis(10);
                    }
                    // Not visible yet (a replica lagging) or the store is down: try again.
                    result => {
                        if let Err(e) = result {
                            tracing::warn!(room = %room.name, error = %e, "gap repair: store unavailable");
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                }
            }
        });
    }
}
