//! The fan-out bus: how an event published on one node reaches the hub of every node with
//! members in its room.
//!
//! `Local` (the default) hands events straight to this node's hub. `Redis` does the same for
//! this node — local delivery never waits for, or depends on, Redis — and also publishes them
//! for the other nodes, whose subscriber tasks hand them to their hubs. Either way every event
//! enters a hub through [`Hub::dispatch`], so one node and five take the same delivery path.

mod redis;

use std::sync::Arc;

use tokio::sync::oneshot;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use self::redis::{Conn as RedisConn, RedisBus};
use crate::{
    chat::{event::Event, hub::Hub},
    config::RedisConfig,
    domain::RoomName,
};

/// Publishing failed in a way callers may want to know about (startup only).
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to Redis: {0}")]
    Connect(#[source] ::redis::RedisError),
    #[error("{0}")]
    Misconfigured(String),
}

#[derive(Clone)]
pub enum Bus {
    Local(Arc<Hub>),
    Redis(RedisBus),
}

impl Bus {
    pub fn local(hub: Arc<Hub>) -> Self {
        Self::Local(hub)
    }

    /// Connects to Redis (one server or a cluster); the bus's tasks run on `tasks` until `stop`
    /// is cancelled.
    pub async fn redis(
        config: &RedisConfig,
        hub: Arc<Hub>,
        stop: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Self, BusError> {
        Ok(Self::Redis(RedisBus::connect(config, hub, stop, tasks).await?))
    }

    /// Delivers `events` (in order) on this node and, when clustered, to the other nodes.
    pub fn publish(&self, events: Vec<Event>) {
        match self {
            Self::Local(hub) => {
                for e in &events {
                    hub.dispatch(e);
                }
            }
            Self::Redis(bus) => bus.publish(events),
        }
    }

    /// Starts receiving `room`'s events from other nodes; the receiver completes once the
    /// subscription is active (or at once when there is nothing to wait for).
    /// The hub this bus delivers to.
    pub fn hub(&self) -> &Arc<Hub> {
        match self {
            Self::Local(hub) => hub,
            Self::Redis(bus) => bus.hub(),
        }
    }

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
