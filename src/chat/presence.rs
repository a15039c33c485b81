//! Who is online in each room, across nodes.
//!
//! A user is online in a room while one of their sessions, on any live node, is joined to it.
//! Every `chat.presence_interval` each node takes the users of its rooms from its hub (the only
//! source of truth on a node: no hook on join or leave can be forgotten) and, with Redis, writes
//! them to one sorted set per room whose members are `<user>|<node>` and whose scores are expiry
//! times: refreshed while the node lives, removed by the node when the user leaves it, expired
//! `chat.presence_ttl` after a node dies (kill -9 included). A user is online while any entry of
//! theirs is unexpired. Without Redis the hub's users are the whole story.
//!
//! Each node then compares, for each room it hosts, who is online with what it last told its
//! members there (kept in the room), and tells them the difference in one `presence {room,
//! online, offline}` event. So changes are coalesced per interval (a socket that drops and
//! reconnects within one says nothing), every node tells its own members (nothing crosses the
//! bus), and the cost is never per message. Alone, a node looks only at the rooms whose members
//! changed since the last round (rooms list themselves when their members change), so idle
//! rooms cost nothing; with Redis a round costs per hosted room member, as the entries must be
//! refreshed before they expire.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use uuid::Uuid;

use super::hub::Hub;
use crate::{
    bus::{PresenceBacking as Backing, RedisConn},
    domain::RoomName,
    protocol::events::presence,
    sync::MutexExt as _,
};

/// Presence of this node's rooms, and the events that tell their members.
pub struct Presence {
    hub: Arc<Hub>,
    backing: Backing,
    ttl: Duration,
    /// Per room: the users this node last wrote as present (Redis), so leavers are removed.
    written: Mutex<HashMap<RoomName, HashSet<Uuid>>>,
}

impl Presence {
    pub fn new(hub: Arc<Hub>, backing: Backing, ttl: Duration) -> Arc<Self> {
        Arc::new(Self { hub, backing, ttl, written: Mutex::default() })
    }

    fn key(prefix: &str, room: &RoomName) -> String {
        format!("{prefix}:online:{room}")
    }

    /// Who the members of `room` here were last told is online (for a session that joins).
    pub fn announced(&self, room: &RoomName) -> Vec<Uuid> {
        self.hub.get(room).map(|r| r.announced()).unwrap_or_default()
    }

    /// Who is online in `room` now, on any live node.
    pub async fn online(&self, room: &RoomName) -> HashSet<Uuid> {
        match &self.backing {
            Backing::Local => self.hub.users_in(room),
            Backing::Redis { conn, prefix, .. } => {
                let now = chrono::Utc::now().timestamp_millis();
                let mut conn = conn.clone();
                let entries: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                    .arg(Self::key(prefix, room))
                    .arg(now)
                    .arg("+inf")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                let mut users = users_of(&entries);
                // This node's own users count even before its next write.
                users.extend(self.hub.users_in(room));
                users
            }
        }
    }

    /// One round: tells each room's members here what changed. Alone, a node knows everyone
    /// online, and only the rooms whose members changed since the last round are looked at: a
    /// room whose members stay put costs a round nothing. With Redis, the round writes this
    /// node's users and reads who is online in each hosted room.
    pub async fn tick(&self) {
        let mut events = Vec::new();
        let changed = self.hub.member_changes();
        match &self.backing {
            Backing::Local => {
                for (name, found) in changed {
                    let Some((room, users)) = found else { continue };
                    if let Some((came, went)) = room.announce(&users) {
                        events.push((name.clone(), presence(&name, came, went)));
                    }
                }
            }
            Backing::Redis { conn, prefix, node } => {
                let local = self.hub.users_by_room();
                let online = match self.sync(conn, prefix, node, &local).await {
                    Ok(online) => online,
                    Err(e) => {
                        tracing::debug!(error = %e, "presence round failed; trying again next round");
                        return;
                    }
                };
                for (name, now) in &online {
                    let Some(room) = self.hub.get(name) else { continue };
                    if let Some((came, went)) = room.announce(now) {
                        events.push((name.clone(), presence(name, came, went)));
                    }
                }
            }
        }
        for (room, frame) in events {
            self.hub.tell_local(&room, &frame);
        }
    }

    /// Writes this node's entries (refreshing those that stay, removing those that left) and
    /// returns, for each room hosted here, who is online on any live node.
    async fn sync(
        &self,
        conn: &RedisConn,
        prefix: &str,
        node: &str,
        local: &HashMap<RoomName, HashSet<Uuid>>,
    ) -> Result<HashMap<RoomName, HashSet<Uuid>>, redis::RedisError> {
        if local.is_empty() && self.written.lock_unpoisoned().is_empty() {
            // Nothing hosted here and nothing of ours to withdraw: no round trip (and no empty
            // pipeline, which the client refuses).
            return Ok(HashMap::new());
        }
        let now = chrono::Utc::now().timestamp_millis();
        let expires = now + i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let key_ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(60).max(1) * 2;
        let mut pipe = redis::pipe();
        {
            let mut written = self.written.lock_unpoisoned();
            for (room, users) in local {
                let key = Self::key(prefix, room);
                for user in users {
                    pipe.zadd(&key, format!("{user}|{node}"), expires).ignore();
                }
                pipe.expire(&key, key_ttl).ignore();
                pipe.zrembyscore(&key, "-inf", now).ignore();
            }
            for (room, users) in written.iter() {
                let key = Self::key(prefix, room);
                let here = local.get(room);
                for user in users.iter().filter(|u| here.is_none_or(|h| !h.contains(u))) {
                    pipe.zrem(&key, format!("{user}|{node}")).ignore();
                }
            }
            written.clone_from(local);
        }
        let rooms: Vec<&RoomName> = local.keys().collect();
        for room in &rooms {
            pipe.cmd("ZRANGEBYSCORE").arg(Self::key(prefix, room)).arg(now).arg("+inf");
        }
        let mut conn = conn.clone();
        let found: Vec<Vec<String>> = pipe.query_async(&mut conn).await?;
        Ok(rooms.into_iter().zip(found).map(|(room, entries)| (room.clone(), users_of(&entries))).collect())
    }

    /// Removes this node's entries (it is stopping): its users go offline at once elsewhere.
    pub async fn withdraw(&self) {
        let Backing::Redis { conn, prefix, node } = &self.backing else { return };
        let written = std::mem::take(&mut *self.written.lock_unpoisoned());
        let mut pipe = redis::pipe();
        for (room, users) in &written {
            for user in users {
                pipe.zrem(Self::key(prefix, room), format!("{user}|{node}")).ignore();
            }
        }
        let mut conn = conn.clone();
        let _ = tokio::time::timeout(Duration::from_secs(1), pipe.query_async::<()>(&mut conn)).await;
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

/// The users among `<user>|<node>` entries.
fn users_of(entries: &[String]) -> HashSet<Uuid> {
    entries.iter().filter_map(|e| e.split('|').next()?.parse().ok()).collect()
}
