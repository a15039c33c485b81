//! Redis pub/sub fan-out between nodes.
//!
//! One channel per room (`<prefix>:room:<name>`), and one (`<prefix>:users`) that every node
//! subscribes to for events addressed to a user's sessions wherever they are (read markers). A node subscribes only to rooms it has local
//! members in, over one shared subscriber connection, so it does not receive the whole
//! cluster's traffic. Publishing goes through a multiplexed connection; whatever is queued is
//! sent as one pipeline. Payloads carry the publishing instance so a node skips its own events
//! (it delivered them locally already).
//!
//! Redis pub/sub is at-most-once: on a reconnect the subscriber resubscribes every room and asks
//! the hub to compare each with the store, which repairs what was missed. While Redis is down,
//! local delivery goes on and [`RedisBus::connected`] reports false for `/ready`.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt as _;
use redis::{AsyncCommands as _, aio::ConnectionManager};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

use super::BusError;
use crate::{
    chat::{
        event::{Encoded, Event, EventKind},
        hub::Hub,
        session::corked,
    },
    domain::RoomName,
    telemetry,
};

/// Events waiting to be published before new ones are dropped (the other nodes then repair the
/// gap from the store when they notice it).
const PUBLISH_QUEUE: usize = 65_536;
const PUBLISH_BATCH: usize = 512;
/// Events from other nodes waiting for a fan-out task before the subscriber stops reading.
const DISPATCH_QUEUE: usize = 4096;
/// Events fanned out under one cork.
const DISPATCH_BATCH: usize = 256;
/// How often a node publishes its rooms' member counts, and how long they count as current.
const PRESENCE_EVERY: Duration = Duration::from_secs(5);
const PRESENCE_TTL_SECS: i64 = 20;

enum Control {
    Subscribe(String, oneshot::Sender<()>),
    Unsubscribe(String),
}

#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

struct Inner {
    hub: Arc<Hub>,
    prefix: String,
    /// The channel of events addressed to users.
    users_channel: String,
    /// `redis.prefix` as configured.
    base_prefix: String,
    /// Random per process: lets a node recognise its own events coming back.
    instance: u64,
    publish_tx: mpsc::Sender<(String, Vec<u8>)>,
    control_tx: mpsc::UnboundedSender<Control>,
    connected: AtomicBool,
    /// For presence reads and writes (publishing has its own clone).
    conn: ConnectionManager,
    /// `<prefix>:nodes` (live instances by heartbeat) and `<prefix>:presence:` (room counts).
    nodes_key: String,
    presence_prefix: String,
}

impl RedisBus {
    pub async fn connect(
        url: &str,
        prefix: &str,
        hub: Arc<Hub>,
        stop: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Self, BusError> {
        let client = redis::Client::open(url).map_err(BusError::Connect)?;
        let publisher = client.get_connection_manager().await.map_err(BusError::Connect)?;
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            hub,
            prefix: format!("{prefix}:room:"),
            users_channel: format!("{prefix}:users"),
            base_prefix: prefix.to_owned(),
            instance: rand::random(),
            publish_tx,
            control_tx,
            connected: AtomicBool::new(false),
            conn: publisher.clone(),
            nodes_key: format!("{prefix}:nodes"),
            presence_prefix: format!("{prefix}:presence:"),
        });
        tasks.spawn(run_presence(Arc::clone(&inner), stop.clone()));
        tasks.spawn(run_publisher(publisher, publish_rx, stop.clone()));
        tasks.spawn(run_subscriber(client, Arc::clone(&inner), control_rx, stop));
        Ok(Self { inner })
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.inner.hub
    }

    /// Where this node keeps its presence entries: this bus's connection, prefix and instance.
    pub fn presence_backing(&self) -> crate::chat::presence::Backing {
        crate::chat::presence::Backing::Redis {
            conn: self.inner.conn.clone(),
            prefix: self.inner.base_prefix.clone(),
            node: format!("{:016x}", self.inner.instance),
        }
    }

    pub fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    fn channel(&self, room: &RoomName) -> String {
        format!("{}{}", self.inner.prefix, room)
    }

    pub fn publish(&self, events: Vec<Event>) {
        for e in events {
            self.inner.hub.dispatch(&e);
            let payload = encode(self.inner.instance, &e);
            let channel = match e.frame.kind {
                EventKind::Read { .. } => self.inner.users_channel.clone(),
                _ => self.channel(&e.room),
            };
            if self.inner.publish_tx.try_send((channel, payload)).is_err() {
                metrics::counter!(telemetry::BUS_PUBLISH_ERRORS, "bus" => "redis").increment(1);
            }
        }
    }

    pub fn subscribe(&self, room: &RoomName) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let _ = self.inner.control_tx.send(Control::Subscribe(self.channel(room), tx));
        rx
    }

    /// Members of each of `rooms` on the *other* live nodes (as of their last heartbeat).
    pub async fn remote_member_counts(&self, rooms: &[String]) -> Vec<u64> {
        let mut totals = vec![0u64; rooms.len()];
        if rooms.is_empty() {
            return totals;
        }
        let mut conn = self.inner.conn.clone();
        let since = chrono::Utc::now().timestamp() - PRESENCE_TTL_SECS;
        let nodes: Vec<String> = conn.zrangebyscore(&self.inner.nodes_key, since, "+inf").await.unwrap_or_default();
        let me = format!("{:016x}", self.inner.instance);
        let others: Vec<&String> = nodes.iter().filter(|n| **n != me).collect();
        if others.is_empty() {
            return totals;
        }
        let mut pipe = redis::pipe();
        for node in &others {
            pipe.cmd("HMGET").arg(format!("{}{node}", self.inner.presence_prefix)).arg(rooms);
        }
        let counts: Vec<Vec<Option<u64>>> = match pipe.query_async(&mut conn).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "presence read failed");
                return totals;
            }
        };
        for node in counts {
            for (total, n) in totals.iter_mut().zip(node) {
                *total += n.unwrap_or(0);
            }
        }
        totals
    }

    pub fn unsubscribe(&self, room: &RoomName) {
        let _ = self.inner.control_tx.send(Control::Unsubscribe(self.channel(room)));
    }
}

/// `<instance hex>|<kind>|<seq, origin session, user, user:until or user:origin:room>|<compat
/// length>|<compat members><native frame>`.
fn encode(instance: u64, e: &Event) -> Vec<u8> {
    let (kind, arg) = match e.frame.kind {
        EventKind::Message { seq } => ('m', seq.to_string()),
        EventKind::Deleted { seq } => ('d', seq.to_string()),
        EventKind::Edited { seq } => ('e', seq.to_string()),
        EventKind::Reacted { seq } => ('x', seq.to_string()),
        EventKind::System { origin } => ('s', origin.to_string()),
        EventKind::Typing { user } => ('t', user.to_string()),
        EventKind::Removed { user } => ('r', user.to_string()),
        EventKind::Muted { user, until } => ('u', format!("{user}:{until}")),
        EventKind::Read { user, origin } => ('R', format!("{user}:{origin}:{}", e.room)),
        // Made by each node for its own members; never published, but encodable all the same.
        EventKind::Presence => ('p', String::new()),
    };
    let frame = e.frame.native.as_bytes();
    let compat = e.frame.compat.as_bytes();
    let mut out = Vec::with_capacity(frame.len() + compat.len() + 72);
    out.extend_from_slice(format!("{instance:016x}|{kind}|{arg}|{}|", compat.len()).as_bytes());
    out.extend_from_slice(compat);
    out.extend_from_slice(frame);
    out
}

/// The event in a payload, unless it is malformed or our own. `room`: the room of the
/// channel it came on (`None`: the users channel, whose events name their room).
fn decode(instance: u64, room: Option<RoomName>, payload: &[u8]) -> Option<Event> {
    let mut parts = payload.splitn(5, |b| *b == b'|');
    let from = u64::from_str_radix(std::str::from_utf8(parts.next()?).ok()?, 16).ok()?;
    if from == instance {
        return None;
    }
    let kind = parts.next()?;
    let arg = std::str::from_utf8(parts.next()?).ok()?;
    let mut room = room;
    let kind = match kind {
        b"R" => {
            let mut parts = arg.splitn(3, ':');
            let user = parts.next()?.parse::<Uuid>().ok()?;
            let origin = parts.next()?.parse().ok()?;
            room = Some(RoomName::parse(parts.next()?).ok()?);
            EventKind::Read { user, origin }
        }
        _ if room.is_none() => return None,
        b"m" => EventKind::Message { seq: arg.parse().ok()? },
        b"d" => EventKind::Deleted { seq: arg.parse().ok()? },
        b"e" => EventKind::Edited { seq: arg.parse().ok()? },
        b"x" => EventKind::Reacted { seq: arg.parse().ok()? },
        b"p" => EventKind::Presence,
        b"s" => EventKind::System { origin: arg.parse().ok()? },
        b"t" => EventKind::Typing { user: arg.parse::<Uuid>().ok()? },
        b"r" => EventKind::Removed { user: arg.parse::<Uuid>().ok()? },
        b"u" => {
            let (user, until) = arg.split_once(':')?;
            EventKind::Muted { user: user.parse::<Uuid>().ok()?, until: until.parse().ok()? }
        }
        _ => return None,
    };
    let compat_len: usize = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let rest = parts.next()?;
    if compat_len > rest.len() {
        return None;
    }
    let (compat, frame) = rest.split_at(compat_len);
    let compat = Box::from(std::str::from_utf8(compat).ok()?);
    let frame = Utf8Bytes::try_from(bytes::Bytes::copy_from_slice(frame)).ok()?;
    Some(Event { room: room?, frame: Encoded::with_compat(kind, frame, compat) })
}

async fn run_publisher(
    mut conn: ConnectionManager,
    mut rx: mpsc::Receiver<(String, Vec<u8>)>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, PUBLISH_BATCH) => n,
            () = stop.cancelled() => 0,
        };
        if n == 0 {
            return;
        }
        let result = if batch.len() == 1 {
            let (channel, payload) = &batch[0];
            conn.publish::<_, _, ()>(channel, payload).await
        } else {
            let mut pipe = redis::pipe();
            for (channel, payload) in &batch {
                pipe.publish(channel, payload).ignore();
            }
            pipe.query_async::<()>(&mut conn).await
        };
        if let Err(e) = result {
            // The other nodes repair from the store once they see a later seq or reconnect.
            tracing::warn!(error = %e, count = batch.len(), "redis publish failed");
            metrics::counter!(telemetry::BUS_PUBLISH_ERRORS, "bus" => "redis").increment(batch.len() as u64);
        } else {
            metrics::counter!(telemetry::BUS_PUBLISHED, "bus" => "redis").increment(batch.len() as u64);
        }
        batch.clear();
    }
}

/// Heartbeat and member counts of this node, for `GET /api/rooms` on every node. Counts are
/// a snapshot every few seconds; a node that stops refreshing drops out after the TTL.
async fn run_presence(inner: Arc<Inner>, stop: CancellationToken) {
    let key = format!("{}{:016x}", inner.presence_prefix, inner.instance);
    let me = format!("{:016x}", inner.instance);
    let mut conn = inner.conn.clone();
    let mut every = tokio::time::interval(PRESENCE_EVERY);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stop.cancelled() => break,
        }
        let now = chrono::Utc::now().timestamp();
        let counts: Vec<(String, usize)> =
            inner.hub.member_counts().into_iter().filter(|(_, n)| *n > 0).map(|(r, n)| (r.to_string(), n)).collect();
        let mut pipe = redis::pipe();
        pipe.atomic().del(&key).ignore();
        if !counts.is_empty() {
            pipe.hset_multiple(&key, &counts).ignore();
        }
        pipe.expire(&key, PRESENCE_TTL_SECS).ignore();
        pipe.zadd(&inner.nodes_key, &me, now).ignore();
        pipe.zrembyscore(&inner.nodes_key, "-inf", now - PRESENCE_TTL_SECS).ignore();
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            tracing::debug!(error = %e, "presence heartbeat failed");
        }
    }
    // Leaving: other nodes stop counting our members at once rather than after the TTL.
    let mut pipe = redis::pipe();
    pipe.del(&key).ignore().zrem(&inner.nodes_key, &me).ignore();
    let _ = tokio::time::timeout(Duration::from_secs(1), pipe.query_async::<()>(&mut conn)).await;
}

async fn run_subscriber(
    client: redis::Client,
    inner: Arc<Inner>,
    mut control: mpsc::UnboundedReceiver<Control>,
    stop: CancellationToken,
) {
    // The channels we should be subscribed to: the source of truth across reconnects.
    let mut wanted: HashSet<String> = HashSet::from([inner.users_channel.clone()]);
    let dispatchers = spawn_dispatchers(&inner.hub);
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        let connection = tokio::select! {
            c = client.get_async_pubsub() => c,
            () = stop.cancelled() => return,
        };
        let (mut sink, mut stream) = match connection {
            Ok(pubsub) => pubsub.split(),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "redis subscriber cannot connect");
                if !wait_while_down(&mut control, &mut wanted, backoff, &stop).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if !wanted.is_empty() && sink.subscribe(wanted.iter().collect::<Vec<_>>()).await.is_err() {
            continue;
        }
        inner.connected.store(true, Ordering::Relaxed);
        backoff = Duration::from_millis(100);
        if first {
            tracing::info!("redis bus connected");
        } else {
            tracing::info!(rooms = wanted.len(), "redis bus reconnected; repairing missed messages from the store");
            inner.hub.resync_all();
        }
        first = false;
        loop {
            tokio::select! {
                cmd = control.recv() => match cmd {
                    Some(Control::Subscribe(channel, done)) => {
                        let ok = sink.subscribe(&channel).await.is_ok();
                        wanted.insert(channel);
                        let _ = done.send(());
                        if !ok { break; }
                    }
                    Some(Control::Unsubscribe(channel)) => {
                        wanted.remove(&channel);
                        if sink.unsubscribe(&channel).await.is_err() { break; }
                    }
                    None => return,
                },
                msg = stream.next() => match msg {
                    Some(msg) => {
                        let channel = msg.get_channel_name();
                        let room = if channel == inner.users_channel {
                            None
                        } else {
                            let Some(room) = channel.strip_prefix(inner.prefix.as_str()) else { continue };
                            let Ok(room) = RoomName::parse(room) else { continue };
                            Some(room)
                        };
                        if let Some(event) = decode(inner.instance, room, msg.get_payload_bytes()) {
                            let shard = &dispatchers[shard_of(&event.room, dispatchers.len())];
                            // Waits when the fan-out falls behind, so Redis holds the backlog.
                            if shard.send(event).await.is_err() { return; }
                        }
                    }
                    None => break,
                },
                () = stop.cancelled() => return,
            }
        }
        inner.connected.store(false, Ordering::Relaxed);
        tracing::warn!("redis bus disconnected; local delivery continues, reconnecting");
    }
}

/// Fan-out of events from other nodes, one task per core: each event is written to every local
/// member's socket by the task that handles it, so one task alone would cap the node's remote
/// fan-out at one core. A room always goes to the same task, which keeps its events in order.
fn spawn_dispatchers(hub: &Arc<Hub>) -> Vec<mpsc::Sender<Event>> {
    let n = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get).clamp(1, 16);
    (0..n)
        .map(|_| {
            let (tx, mut rx) = mpsc::channel::<Event>(DISPATCH_QUEUE);
            let hub = Arc::clone(hub);
            tokio::spawn(async move {
                let received = metrics::counter!(telemetry::BUS_RECEIVED, "bus" => "redis");
                let mut events = Vec::with_capacity(DISPATCH_BATCH);
                while rx.recv_many(&mut events, DISPATCH_BATCH).await > 0 {
                    received.increment(events.len() as u64);
                    // Whatever has arrived goes out as one write per session.
                    corked(&hub.flusher, || events.drain(..).for_each(|event| hub.dispatch(&event)));
                }
            });
            tx
        })
        .collect()
}

fn shard_of(room: &RoomName, shards: usize) -> usize {
    // FNV-1a: stable and cheap; any spread will do.
    let hash =
        room.as_str().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    usize::try_from(hash % shards as u64).unwrap_or(0)
}

/// While disconnected: keep the wanted set current and confirm subscriptions at once (the
/// rooms are subscribed and repaired on reconnect), for `backoff`. False when stopping.
async fn wait_while_down(
    control: &mut mpsc::UnboundedReceiver<Control>,
    wanted: &mut HashSet<String>,
    backoff: Duration,
    stop: &CancellationToken,
) -> bool {
    let deadline = tokio::time::sleep(backoff);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return true,
            () = stop.cancelled() => return false,
            cmd = control.recv() => match cmd {
                Some(Control::Subscribe(channel, done)) => {
                    wanted.insert(channel);
                    let _ = done.send(());
                }
                Some(Control::Unsubscribe(channel)) => {
                    wanted.remove(&channel);
                }
                None => return false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_own_events_are_skipped() {
        let room = RoomName::parse("general").unwrap();
        let frame = Encoded::with_compat(
            EventKind::Message { seq: 42 },
            Utf8Bytes::from_static(r#"{"type":"message","a":"|"}"#),
            Box::from(r#""senderEmail":"a|b@c.de""#),
        );
        let event = Event { room: room.clone(), frame };
        let payload = encode(7, &event);
        let back = decode(8, Some(room.clone()), &payload).expect("decodes");
        assert_eq!(back.frame.kind, EventKind::Message { seq: 42 });
        assert_eq!(back.frame.native.as_str(), r#"{"type":"message","a":"|"}"#);
        assert_eq!(&*back.frame.compat, r#""senderEmail":"a|b@c.de""#);
        assert!(decode(7, Some(room.clone()), &payload).is_none(), "own event");
        assert!(decode(8, Some(room.clone()), b"garbage").is_none());
        assert!(decode(8, None, &payload).is_none(), "room events never come on the users channel");
        // Every kind carries its routing argument across.
        let user = Uuid::new_v4();
        for kind in [
            EventKind::System { origin: 9 },
            EventKind::Deleted { seq: 43 },
            EventKind::Edited { seq: 44 },
            EventKind::Reacted { seq: 45 },
            EventKind::Typing { user },
            EventKind::Removed { user },
            EventKind::Muted { user, until: 1_800_000_000 },
        ] {
            let event = Event { room: room.clone(), frame: Encoded::new(kind, Utf8Bytes::from_static("{}")) };
            assert_eq!(decode(8, Some(room.clone()), &encode(7, &event)).expect("decodes").frame.kind, kind);
        }
        // A user's event names its room itself, colons and all.
        let dm = RoomName::parse("dm:0123abcd").unwrap();
        let kind = EventKind::Read { user, origin: 77 };
        let event = Event { room: dm.clone(), frame: Encoded::new(kind, Utf8Bytes::from_static("{}")) };
        let back = decode(8, None, &encode(7, &event)).expect("decodes");
        assert_eq!((back.frame.kind, back.room), (kind, dm));
    }
}
