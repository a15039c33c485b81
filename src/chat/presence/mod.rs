//! Who is online in each room, across nodes.
//!
//! A user is online in a room while one of their sessions, on any live node, is joined to it.
//! Every `chat.presence_interval` each node takes the rooms whose members changed since the last
//! round from its hub (rooms list themselves when their members change, so no hook on join or
//! leave can be forgotten). Alone, a node knows everyone online. With Redis, it writes its own
//! users of those rooms and learns which rooms other nodes changed ([`shared`]); a killed node's
//! users count until `chat.presence_ttl` after its last round.
//!
//! Each node then compares, for each room it looked at, who is online with what it last told its
//! members there (kept in the room), and tells them the difference in one `presence {room,
//! online, offline}` event. So changes are coalesced per interval (a socket that drops and
//! reconnects within one says nothing), every node tells its own members (nothing crosses the
//! bus), the cost is never per message, and rooms whose members stay put cost a round nothing.

mod shared;

use std::{collections::HashSet, sync::Arc, time::Duration};

use uuid::Uuid;

use self::shared::Shared;
use super::hub::Hub;
use crate::{bus::PresenceBacking as Backing, domain::RoomName, protocol::events::presence, telemetry};

/// Presence of this node's rooms, and the events that tell their members.
pub struct Presence {
    hub: Arc<Hub>,
    /// With Redis: where every node's users are kept.
    shared: Option<Shared>,
}

impl Presence {
    pub fn new(hub: Arc<Hub>, backing: Backing, ttl: Duration) -> Arc<Self> {
        let shared = match backing {
            Backing::Local => None,
            Backing::Redis { conn, prefix, node } => Some(Shared::new(conn, &prefix, node, ttl)),
        };
        Arc::new(Self { hub, shared })
    }

    /// Who the members of `room` here were last told is online (for a session that joins).
    pub fn announced(&self, room: &RoomName) -> Vec<Uuid> {
        self.hub.get(room).map(|r| r.announced()).unwrap_or_default()
    }

    /// Who is online in `room` now, on any live node.
    pub async fn online(&self, room: &RoomName) -> HashSet<Uuid> {
        let mut users = match &self.shared {
            Some(shared) => shared.online(room).await,
            None => HashSet::new(),
        };
        // This node's own users count even before its next write.
        users.extend(self.hub.users_in(room));
        users
    }

    /// One round: tells the members here of each room that changed who came and who went.
    pub async fn tick(&self) {
        let changed = self.hub.member_changes();
        let online: Vec<(RoomName, HashSet<Uuid>)> = match &self.shared {
            None => changed
                .into_iter()
                .map(|name| {
                    let users = self.hub.users_in(&name);
                    (name, users)
                })
                .collect(),
            Some(shared) => match shared.round(&self.hub, changed).await {
                Ok(online) => online,
                Err(e) => {
                    tracing::debug!(error = %e, "presence round failed; trying again next round");
                    return;
                }
            },
        };
        metrics::counter!(telemetry::PRESENCE_ROOMS, "op" => "read").increment(online.len() as u64);
        for (name, now) in online {
            let Some(room) = self.hub.get(&name) else { continue };
            if let Some((came, went)) = room.announce(&now) {
                let frame = presence(&name, came, went);
                self.hub.tell_local(&name, &frame);
            }
        }
    }

    /// Removes this node's entries (it is stopping): its users go offline at once elsewhere.
    pub async fn withdraw(&self) {
        if let Some(shared) = &self.shared {
            shared.withdraw().await;
        }
    }

    /// Runs rounds every `every` until `stop`, then withdraws.
    pub async fn run(self: Arc<Self>, every: Duration, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.tick().await,
                () = stop.cancelled() => break,
            }
        }
        self.withdraw().await;
    }
}
