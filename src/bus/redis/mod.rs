//! Redis pub/sub fan-out between nodes, on one Redis server or a Redis Cluster.
//!
//! One channel per room (`<prefix>:room:<name>`), and one (`<prefix>:users`) that every node
//! subscribes to for events addressed to a user's sessions wherever they are (read markers). A
//! node subscribes only to rooms it has local members in, so it does not receive the whole
//! cluster's traffic. Whatever is queued for publishing is sent as one pipeline (per shard on a
//! cluster). Payloads carry the publishing instance so a node skips its own events (it
//! delivered them locally already).
//!
//! On a Redis Cluster the channels are sharded (`SPUBLISH`/`SSUBSCRIBE`): each room's channel
//! lives on the shard that owns its hash slot, so fan-out traffic spreads over the masters instead
//! of being broadcast to every node of the cluster as plain `PUBLISH` would be. The keys this
//! module and presence keep (heartbeats, member counts, who is online) share one hash tag,
//! `{<prefix>}`, so the pipelines that read and write them stay on one slot.
//!
//! Redis pub/sub is at-most-once: after the subscriber loses a connection (or a shard fails
//! over) every room is subscribed again where it now lives and the hub compares each with the
//! store, which repairs what was missed. While Redis is down, local delivery goes on and
//! [`RedisBus::connected`] reports false for `/ready`.

mod cluster;
mod single;
mod wire;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use redis::{
    AsyncCommands as _, Cmd, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager},
    cluster_async::ClusterConnection,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{BusError, EventHandler, PresenceBacking};
use crate::{
    config::RedisConfig,
    domain::RoomName,
    protocol::{Event, EventKind},
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

/// A connection for commands: to one server, or to a cluster (which routes each command to the
/// master of its key's slot, and follows failovers).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

struct Inner {
    /// This node's side of the bus: where events from other nodes go.
    handler: Arc<dyn EventHandler>,
    /// What room channels start with: `<prefix>:room:`.
    prefix: String,
    /// The channel of events addressed to users.
    users_channel: String,
    /// What keys start with: `redis.prefix`, or `{redis.prefix}` on a cluster (one slot).
    key_prefix: String,
    /// Random per process: lets a node recognise its own events coming back.
    instance: u64,
    publish_tx: mpsc::Sender<(String, Vec<u8>)>,
    control_tx: mpsc::UnboundedSender<Control>,
    connected: AtomicBool,
    /// For presence reads and writes (publishing has its own clone).
    conn: Conn,
    /// `<key prefix>:nodes` (live instances by heartbeat) and `<key prefix>:presence:` (room counts).
    nodes_key: String,
    presence_prefix: String,
}

impl RedisBus {
    pub async fn connect(
        config: &RedisConfig,
        handler: Arc<dyn EventHandler>,
        stop: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Self, BusError> {
        let urls = config.urls();
        let prefix = &config.prefix;
        let key_prefix = if config.cluster { format!("{{{prefix}}}") } else { prefix.clone() };
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let make = |conn: Conn| {
            Arc::new(Inner {
                handler: Arc::clone(&handler),
                prefix: format!("{prefix}:room:"),
                users_channel: format!("{prefix}:users"),
                instance: rand::random(),
                publish_tx: publish_tx.clone(),
                control_tx: control_tx.clone(),
                connected: AtomicBool::new(false),
                conn,
                nodes_key: format!("{key_prefix}:nodes"),
                presence_prefix: format!("{key_prefix}:presence:"),
                key_prefix: key_prefix.clone(),
            })
        };
        let inner = if config.cluster {
            let (publisher, subscriber) = cluster::connect(&urls).await?;
            let inner = make(Conn::Cluster(publisher.clone()));
            tasks.spawn(cluster::run_publisher(publisher, publish_rx, stop.clone()));
            tasks.spawn(subscriber.run(Arc::clone(&inner), control_rx, stop.clone()));
            inner
        } else {
            let url = urls.first().copied().unwrap_or_default();
            let client = redis::Client::open(url).map_err(BusError::Connect)?;
            let mut publisher = client.get_connection_manager().await.map_err(BusError::Connect)?;
            let info: String = redis::cmd("INFO").arg("cluster").query_async(&mut publisher).await.unwrap_or_default();
            if info.contains("cluster_enabled:1") {
                return Err(BusError::Misconfigured(
                    "redis.url is a Redis Cluster node: set redis.cluster = true (and list its seed nodes)".into(),
                ));
            }
            let inner = make(Conn::Single(publisher.clone()));
            tasks.spawn(single::run_publisher(publisher, publish_rx, stop.clone()));
            tasks.spawn(single::run_subscriber(client, Arc::clone(&inner), control_rx, stop.clone()));
            inner
        };
        tasks.spawn(run_presence(Arc::clone(&inner), stop));
        Ok(Self { inner })
    }

    /// Where this node keeps its presence entries: this bus's connection, key prefix and instance.
    pub fn presence_backing(&self) -> PresenceBacking {
        PresenceBacking::Redis {
            conn: self.inner.conn.clone(),
            prefix: self.inner.key_prefix.clone(),
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
            self.inner.handler.deliver(&e);
            let payload = wire::encode(self.inner.instance, &e);
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

impl Inner {
    /// The event in a message that came on `channel`, unless it is malformed or our own.
    fn event(&self, channel: &str, payload: &[u8]) -> Option<Event> {
        let room = if channel == self.users_channel {
            None
        } else {
            Some(RoomName::parse(channel.strip_prefix(self.prefix.as_str())?).ok()?)
        };
        wire::decode(self.instance, room, payload)
    }
}

/// An event to publish: its channel and payload.
type Outgoing = (String, Vec<u8>);

/// Waits for events to publish and moves up to a batch of them into `batch`; false once the
/// node is stopping (or nothing can be published any more).
async fn next_batch(rx: &mut mpsc::Receiver<Outgoing>, batch: &mut Vec<Outgoing>, stop: &CancellationToken) -> bool {
    let taken = tokio::select! {
        n = rx.recv_many(batch, PUBLISH_BATCH) => n,
        () = stop.cancelled() => 0,
    };
    taken > 0
}

/// Counts a publishing round of `n` events that ended with `error` (or without).
fn count_published(n: usize, error: Option<redis::RedisError>) {
    if let Some(e) = error {
        // The other nodes repair from the store once they see a later seq or reconnect.
        tracing::warn!(error = %e, count = n, "redis publish failed");
        metrics::counter!(telemetry::BUS_PUBLISH_ERRORS, "bus" => "redis").increment(n as u64);
    } else {
        metrics::counter!(telemetry::BUS_PUBLISHED, "bus" => "redis").increment(n as u64);
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
            inner.handler.local_counts().into_iter().filter(|(_, n)| *n > 0).map(|(r, n)| (r.to_string(), n)).collect();
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

/// Fan-out of events from other nodes, one task per core: each event is written to every local
/// member's socket by the task that handles it, so one task alone would cap the node's remote
/// fan-out at one core. A room always goes to the same task, which keeps its events in order.
struct Dispatchers(Vec<mpsc::Sender<Event>>);

impl Dispatchers {
    fn spawn(handler: &Arc<dyn EventHandler>) -> Self {
        Self(crate::sync::per_core(|_| {
            let (tx, mut rx) = mpsc::channel::<Event>(DISPATCH_QUEUE);
            let handler = Arc::clone(handler);
            tokio::spawn(async move {
                let received = metrics::counter!(telemetry::BUS_RECEIVED, "bus" => "redis");
                let mut events = Vec::with_capacity(DISPATCH_BATCH);
                while rx.recv_many(&mut events, DISPATCH_BATCH).await > 0 {
                    received.increment(events.len() as u64);
                    handler.deliver_batch(&events);
                    events.clear();
                }
            });
            tx
        }))
    }

    /// Hands a message that came on `channel` to its room's task, waiting while that task is
    /// behind; false once the tasks are gone (the node is stopping).
    async fn receive(&self, inner: &Inner, channel: &str, payload: &[u8]) -> bool {
        let Some(event) = inner.event(channel, payload) else { return true };
        let shard = &self.0[shard_of(&event.room, self.0.len())];
        shard.send(event).await.is_ok()
    }
}

fn shard_of(room: &RoomName, shards: usize) -> usize {
    // FNV-1a: stable and cheap; any spread will do.
    let hash =
        room.as_str().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    usize::try_from(hash % shards as u64).unwrap_or(0)
}
