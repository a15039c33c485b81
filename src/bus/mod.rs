//! The fan-out bus: how an event published on one node reaches every node with members in its
//! room.
//!
//! `Local` (the default) hands events straight to this node's [`EventHandler`] (the chat core's
//! hub). `Redis` does the same for this node — local delivery never waits for, or depends on,
//! Redis — and also publishes them for the other nodes, whose subscriber tasks hand them to
//! their handlers. Either way every event enters a node through [`EventHandler::deliver`], so
//! one node and five take the same delivery path.
//!
//! The bus knows the wire ([`crate::protocol`]) and the domain, never the chat core: the core
//! implements [`EventHandler`] and is handed in at construction, as centrifuge's broker calls
//! the node through a handler interface rather than importing it.

mod redis;

use std::sync::Arc;

use tokio::sync::oneshot;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use self::redis::{Conn as RedisConn, RedisBus};
use crate::{config::RedisConfig, domain::RoomName, protocol::Event};

/// What the bus calls on the node it serves.
pub trait EventHandler: Send + Sync + 'static {
    /// An event for this node's members (published here, or received from another node).
    fn deliver(&self, event: &Event);

    /// A batch of events received from other nodes, in order; the handler may write each
    /// recipient's share in one go.
    fn deliver_batch(&self, events: &[Event]) {
        for event in events {
            self.deliver(event);
        }
    }

    /// Events may have been lost (the bus reconnected): compare every room with the store and
    /// repair what is missing.
    fn resync(&self);

    /// Every room with members on this node, with how many.
    fn local_counts(&self) -> Vec<(RoomName, usize)>;
}

/// Publishing failed in a way callers may want to know about (startup only).
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to Redis: {0}")]
    Connect(#[source] ::redis::RedisError),
    #[error("{0}")]
    Misconfigured(String),
}

/// Where a node keeps its presence entries (who is online in which room).
pub enum PresenceBacking {
    /// One node: its own rooms say it all.
    Local,
    /// A cluster: entries in Redis (see `chat::presence`; `prefix` carries a hash tag on a
    /// Redis Cluster, so that one round's pipeline stays on one slot).
    Redis { conn: RedisConn, prefix: String, node: String },
}

#[derive(Clone)]
pub enum Bus {
    Local(Arc<dyn EventHandler>),
    Redis(RedisBus),
}

impl Bus {
    pub fn local(handler: Arc<dyn EventHandler>) -> Self {
        Self::Local(handler)
    }

    /// Connects to Redis (one server or a cluster); the bus's tasks run on `tasks` until `stop`
    /// is cancelled.
    pub async fn redis(
        config: &RedisConfig,
        handler: Arc<dyn EventHandler>,
        stop: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Self, BusError> {
        Ok(Self::Redis(RedisBus::connect(config, handler, stop, tasks).await?))
    }

    /// Delivers `events` (in order) on this node and, when clustered, to the other nodes.
    pub fn publish(&self, events: Vec<Event>) {
        match self {
            Self::Local(handler) => {
                for e in &events {
                    handler.deliver(e);
                }
            }
            Self::Redis(bus) => bus.publish(events),
        }
    }

    /// Starts receiving `room`'s events from other nodes; the receiver completes once the
    /// subscription is active (or at once when there is nothing to wait for).
    pub fn subscribe(&self, room: &RoomName) -> oneshot::Receiver<()> {
        match self {
            Self::Local(_) => {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(());
                rx
            }
            Self::Redis(bus) => bus.subscribe(room),
        }
    }

    pub fn unsubscribe(&self, room: &RoomName) {
        if let Self::Redis(bus) = self {
            bus.unsubscribe(room);
        }
    }

    /// Members of each of `rooms` on the *other* live nodes (as of their last report); zeros
    /// without Redis.
    pub async fn remote_member_counts(&self, rooms: &[String]) -> Vec<u64> {
        match self {
            Self::Local(_) => vec![0; rooms.len()],
            Self::Redis(bus) => bus.remote_member_counts(rooms).await,
        }
    }

    /// Where this node keeps its presence entries.
    pub fn presence_backing(&self) -> PresenceBacking {
        match self {
            Self::Local(_) => PresenceBacking::Local,
            Self::Redis(bus) => bus.presence_backing(),
        }
    }

    /// `None` without Redis; otherwise whether the subscriber connection is up.
    pub fn redis_connected(&self) -> Option<bool> {
        match self {
            Self::Local(_) => None,
            Self::Redis(bus) => Some(bus.connected()),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Local(_) => "local",
            Self::Redis(_) => "redis",
        }
    }
}
