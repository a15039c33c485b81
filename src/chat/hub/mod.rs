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

mod room;

use self::room::{MemberChanges, RoomInner, drain_pending};
pub use self::room::{Room, RoomClosed, Start};
use super::{cork::corked, registry::SessionRegistry, writer};
use crate::{
    bus::EventHandler,
    domain::{RoomName, Seq},
    protocol::{Codec, Encoded, Event, EventKind, events},
    store::{Store, StoreError},
    sync::MutexExt as _,
    telemetry,
};

const SHARDS: usize = 64;
/// Messages fetched per store read when repairing a gap or catching a member up.
pub const PAGE: u32 = 256;
/// How long a gap seen on the bus may stay open before the store is asked for what is missing.
/// Nodes publish in the order their commits return, not in seq order, so a room written on two
/// nodes at once sees seqs arrive out of order all the time: the missing one is on its way
/// through Redis, later than this node's own, and on a busy node tens of milliseconds later.
/// Reading it from the store costs a query and a decoded copy, and adds load exactly when the
/// node is behind: at 400,000 deliveries/s over two nodes on two cores, 10 ms read back 11,000-
/// 13,500 messages a run and 50 ms 4,800-5,300. A message truly lost on the bus (rare: Redis
/// reconnects are repaired at once) reaches members this much later.
const REORDER_GRACE: Duration = Duration::from_millis(50);

type Shard = Mutex<HashMap<RoomName, Arc<Room>>>;

/// Rooms with members on this node.
pub struct Hub {
    shards: Box<[Shard]>,
    hasher: std::collections::hash_map::RandomState,
    store: Store,
    /// This node's sessions by account, for events addressed to a user rather than a room.
    pub sessions: Arc<SessionRegistry>,
    /// Rooms whose members changed since the last presence round.
    changes: Arc<MemberChanges>,
}

impl Hub {
    pub fn new(store: Store, sessions: Arc<SessionRegistry>) -> Arc<Self> {
        Arc::new(Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            store,
            sessions,
            changes: Arc::default(),
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
                delivered_total: [Codec::Native, Codec::SocketIo]
                    .map(|f| metrics::counter!(telemetry::MESSAGES_DELIVERED, "transport" => f.label())),
                announced: Vec::new(),
                changes_listed: false,
            }),
            ready: OnceCell::new(),
            subscribed: Mutex::new(Some(subscribed)),
            writer: writer::Slot::default(),
            changes: Arc::clone(&self.changes),
        });
        shard.insert(room.clone(), Arc::clone(&new));
        new
    }

    /// Waits until the room is subscribed and knows where it starts: the store's latest seq
    /// read *after* subscribing, so no message falls between the two.
    pub async fn ensure_ready(&self, room: &Arc<Room>) -> Result<(), StoreError> {
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
                    spawn_repair(self.store.clone(), Arc::clone(room), Duration::ZERO);
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
            // Listed even when the session was gone already (kicked as too slow): presence
            // rounds learn of kicked sessions this way.
            room.members_changed(&mut inner);
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
    pub fn dispatch(&self, event: &Event) {
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
                    spawn_repair(self.store.clone(), room, REORDER_GRACE);
                }
            }
            kind => room.broadcast(kind, &event.frame),
        }
    }

    /// After the bus may have lost events (reconnect): compare every room with the store and
    /// repair what is missing.
    pub fn resync_all(&self) {
        for room in self.rooms() {
            let store = self.store.clone();
            tokio::spawn(async move {
                let Ok(latest) = store.last_seq(&room.name).await else { return };
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
                    spawn_repair(store, room, Duration::ZERO);
                }
            });
        }
    }

    /// Every room with members here.
    fn rooms(&self) -> Vec<Arc<Room>> {
        self.shards.iter().flat_map(|s| s.lock_unpoisoned().values().cloned().collect::<Vec<_>>()).collect()
    }

    /// The rooms with members here.
    pub fn room_names(&self) -> Vec<RoomName> {
        self.shards.iter().flat_map(|s| s.lock_unpoisoned().keys().cloned().collect::<Vec<_>>()).collect()
    }

    /// The rooms whose members changed since the last call (a room that had its last member
    /// leave is among them, and no longer here).
    pub fn member_changes(&self) -> Vec<RoomName> {
        let mut names = self.changes.take();
        names.sort_unstable();
        names.dedup();
        for name in &names {
            if let Some(room) = self.get(name) {
                room.looked_at();
            }
        }
        names
    }

    /// The users with a session in `room` here.
    pub fn users_in(&self, room: &RoomName) -> std::collections::HashSet<uuid::Uuid> {
        self.get(room).map(|r| r.users()).unwrap_or_default()
    }

    /// Gives `frame` (made on this node for this node) to the live members of `room` here.
    pub fn tell_local(&self, room: &RoomName, frame: &Arc<Encoded>) {
        if let Some(r) = self.get(room) {
            corked(|| r.broadcast(EventKind::Presence, frame));
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
}

/// Fetches missing seqs from the store until the room has delivered up to its fill target,
/// after `grace` (the bus may fill the gap meanwhile, and then nothing is read). Runs until
/// done; only one per room at a time (`filling`). Its result is the number of messages read.
fn spawn_repair(store: Store, room: Arc<Room>, grace: Duration) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut read = 0;
        if !grace.is_zero() {
            tokio::time::sleep(grace).await;
        }
        let mut backoff = Duration::from_millis(10);
        loop {
            let (after, want) = {
                let mut inner = room.lock();
                match inner.delivered {
                    Some(d) if d < inner.fill_target => {
                        // Only the hole before the first message held back: those held are
                        // here already, and reading them again cost a row and a decode each.
                        let upto = inner
                            .pending
                            .first_key_value()
                            .map_or(inner.fill_target, |(&first, _)| inner.fill_target.min(first - 1));
                        (d, upto.max(d + 1) - d)
                    }
                    _ => {
                        inner.filling = false;
                        return read;
                    }
                }
            };
            let limit = u32::try_from(want).unwrap_or(PAGE).min(PAGE);
            match store.messages_after(&room.name, after, limit).await {
                Ok(found) if !found.is_empty() => {
                    tracing::debug!(room = %room.name, after, count = found.len(), "gap repaired from the store");
                    metrics::counter!(telemetry::GAP_REPAIRED).increment(found.len() as u64);
                    read += found.len();
                    for msg in &found {
                        room.accept(msg.seq, &events::message(&room.name, msg).frame);
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
    })
}

/// The bus delivers here: events published on this node or received from others.
impl EventHandler for Hub {
    fn deliver(&self, event: &Event) {
        self.dispatch(event);
    }

    /// A batch from another node: whatever has arrived goes out as one write per session.
    fn deliver_batch(&self, events: &[Event]) {
        corked(|| events.iter().for_each(|event| self.dispatch(event)));
    }

    fn resync(&self) {
        self.resync_all();
    }

    fn local_counts(&self) -> Vec<(RoomName, usize)> {
        self.member_counts()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{chat::outbox::Outbox, chat::session::SessionHandle, config::DatabaseKind};

    /// A repair reads the holes only: messages already held back behind a gap are not read
    /// from the store again.
    #[tokio::test]
    async fn a_repair_reads_only_the_missing_seqs() {
        use crate::domain::{MessageKind, NewMessage, NewRoom, RoomKind};
        let store = Store::connect(DatabaseKind::Sqlite, "sqlite::memory:", 2).await.expect("store");
        store.migrate().await.expect("migrations");
        let user = store.create_user("holes@example.com", "not a hash").await.expect("user");
        let name = RoomName::parse("holes").expect("name");
        let new_room =
            NewRoom { name: name.clone(), kind: RoomKind::Public, title: None, topic: None, created_by: user.id };
        store.create_room(&new_room, None).await.expect("room");
        let batch: Vec<NewMessage> = (1..=12)
            .map(|i| NewMessage {
                id: uuid::Uuid::now_v7(),
                room: name.clone(),
                sender_id: user.id,
                sender_email: user.email.clone(),
                sender_name: user.display_name.clone(),
                content: format!("message {i}"),
                client_id: None,
                created_at: chrono::Utc::now(),
                kind: MessageKind::Message,
                target_id: None,
                mentions: crate::domain::Mentions::default(),
            })
            .collect();
        let stored = store.append_messages(&name, &batch).await.expect("stored");
        let hub = Hub::new(store.clone(), SessionRegistry::new(0));
        let room = hub.room_or_insert(&name, || oneshot::channel().1);
        room.lock().delivered = Some(5);
        // 8, 9 and 12 arrive early, as the bus brings them: the holes are 6-7 and 10-11.
        let gaps: Vec<bool> = stored
            .iter()
            .filter(|a| [8, 9, 12].contains(&a.message.seq))
            .map(|a| room.accept(a.message.seq, &events::message(&name, &a.message).frame))
            .collect();
        assert_eq!(gaps, [true, false, false], "one repair for the room");
        let read = spawn_repair(store, Arc::clone(&room), Duration::ZERO).await.expect("repair");
        assert_eq!(read, 4, "6, 7, 10 and 11");
        let inner = room.lock();
        assert_eq!(inner.delivered, Some(12));
        assert!(inner.pending.is_empty() && !inner.filling);
    }

    /// Idle rooms cost a presence round nothing: it is handed only the rooms whose members
    /// changed since the last one.
    #[tokio::test]
    async fn presence_rounds_see_only_rooms_whose_members_changed() {
        let store = Store::connect(DatabaseKind::Sqlite, "sqlite::memory:", 2).await.expect("store");
        let hub = Hub::new(store, SessionRegistry::new(0));
        let user = uuid::Uuid::now_v7();
        let (wire, _peer) = tokio::io::duplex(1024);
        let session = SessionHandle::new(user, Outbox::new(wire, Codec::Native, 16));
        let rooms: Vec<_> = (0..50)
            .map(|i| {
                let name = RoomName::parse(&format!("r{i}")).expect("name");
                let room = hub.room_or_insert(&name, || oneshot::channel().1);
                room.add_member(session.clone(), None, |_| {}).expect("open room");
                room
            })
            .collect();
        let first = hub.member_changes();
        assert_eq!(first.len(), 50, "every room got a member");
        assert!(first.iter().all(|name| hub.users_in(name).contains(&user)));
        assert!(hub.member_changes().is_empty(), "nothing changed since");
        hub.remove_member(&rooms[7], session.id, |_| {});
        let after_leave = hub.member_changes();
        assert_eq!(after_leave.len(), 1);
        assert_eq!(after_leave[0].as_str(), "r7");
        assert!(hub.get(&after_leave[0]).is_none(), "the room left the hub with its last member");
        assert!(hub.member_changes().is_empty());
    }
}
