//! Presence across nodes, kept in Redis and exchanged by change.
//!
//! Keys (all under the bus's key prefix, which carries a hash tag on a Redis Cluster so that a
//! round's pipeline stays on one slot):
//!
//! - `<p>:presence-live`, a sorted set of node ids scored by when each stops counting as alive
//!   (refreshed every round, so a killed node drops out `chat.presence_ttl` after its last round);
//! - `<p>:who:<room>`, a hash per room: one field per node with users in the room, whose value
//!   lists those users; a field counts only while its node is alive;
//! - `<p>:rooms-of:<node>`, the rooms where a node has a field, so the node that notices another's
//!   death can remove its fields;
//! - `<p>:presence-changes`, a stream: each round that changed anything appends which rooms it
//!   changed, and every node reads what was appended since its last round.
//!
//! A round writes only the rooms whose members changed on this node, and reads only the rooms
//! hosted here that some node changed, so rooms whose members stay put cost nothing, however many
//! there are. Every hosted room is read again when something may have been missed: a node came
//! or went, the stream was cut short before this node read it, a round failed, or this node's
//! own entries may be gone (Redis restarted, or this node was counted dead); in the last case it
//! writes all of its rooms again too.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use uuid::Uuid;

use super::Hub;
use crate::{bus::RedisConn, domain::RoomName, telemetry};

/// Entries kept in the changes stream (approximately: Redis trims whole blocks).
const STREAM_LENGTH: usize = 4096;
/// Most changes read in one round; more means reading every hosted room instead.
const READ_MAX: usize = 1024;

/// Removes a node's field from a room unless the node is alive again (atomic: a node that comes
/// back writes its fields after refreshing its liveness, so a fresh field is never removed).
/// KEYS: live set, room hash; ARGV: node, now (ms).
const REMOVE_IF_DEAD: &str = "local s = redis.call('ZSCORE', KEYS[1], ARGV[1]) \
     if s and tonumber(s) > tonumber(ARGV[2]) then return 0 end \
     return redis.call('HDEL', KEYS[2], ARGV[1])";
/// Removes a dead node's list of rooms, unless it is alive again. KEYS: live set, rooms-of set;
/// ARGV: node, now (ms).
const FORGET_IF_DEAD: &str = "local s = redis.call('ZSCORE', KEYS[1], ARGV[1]) \
     if s and tonumber(s) > tonumber(ARGV[2]) then return 0 end \
     return redis.call('DEL', KEYS[2])";

pub(super) struct Shared {
    conn: RedisConn,
    node: String,
    ttl_ms: i64,
    live_key: String,
    changes_key: String,
    /// `<p>:who:` and `<p>:rooms-of:`.
    who_prefix: String,
    rooms_of_prefix: String,
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Rooms where this node has a field.
    written: HashSet<RoomName>,
    /// Rooms whose members changed here and are not written yet.
    pending: HashSet<RoomName>,
    /// The other nodes alive at the last round.
    others: HashSet<String>,
    /// The last entry of the changes stream this node has read.
    cursor: Option<String>,
    /// Read every hosted room next round: something may have been missed.
    read_all: bool,
}

/// What one round found: who is online in each room it read.
pub(super) type Online = Vec<(RoomName, HashSet<Uuid>)>;

impl Shared {
    pub(super) fn new(conn: RedisConn, prefix: &str, node: String, ttl: Duration) -> Self {
        Self {
            conn,
            node,
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 4),
            live_key: format!("{prefix}:presence-live"),
            changes_key: format!("{prefix}:presence-changes"),
            who_prefix: format!("{prefix}:who:"),
            rooms_of_prefix: format!("{prefix}:rooms-of:"),
            state: tokio::sync::Mutex::default(),
        }
    }

    fn who(&self, room: &RoomName) -> String {
        format!("{}{room}", self.who_prefix)
    }

    /// Who is online in `room` now, on any live node (this node's users included by the caller).
    pub(super) async fn online(&self, room: &RoomName) -> HashSet<Uuid> {
        let now = now_ms();
        let mut pipe = redis::pipe();
        pipe.hgetall(self.who(room)).zrangebyscore(&self.live_key, now, "+inf");
        let mut conn = self.conn.clone();
        match pipe.query_async::<(HashMap<String, String>, Vec<String>)>(&mut conn).await {
            Ok((fields, live)) => {
                let live: HashSet<String> = live.into_iter().collect();
                users_of_live(&fields, &live, &self.node).0
            }
            Err(_) => HashSet::new(),
        }
    }

    /// One round: writes the rooms in `changed` (and any a failed round left), reads the rooms
    /// that changed anywhere, and returns who is online in each room read.
    pub(super) async fn round(&self, hub: &Hub, changed: Vec<RoomName>) -> Result<Online, redis::RedisError> {
        let mut state = self.state.lock().await;
        state.pending.extend(changed);
        let now = now_ms();
        let (dirty, dead) = self.listen(&mut state, hub, now).await?;
        let pending: Vec<RoomName> = state.pending.iter().cloned().collect();
        let reads: Vec<RoomName> = if state.read_all {
            hub.room_names()
        } else {
            dirty
                .into_iter()
                .chain(pending.iter().cloned())
                .collect::<HashSet<_>>()
                .into_iter()
                .filter(|r| hub.get(r).is_some())
                .collect()
        };
        if pending.is_empty() && reads.is_empty() && dead.is_empty() {
            return Ok(Vec::new());
        }
        let (replies, has_field) = match self.exchange(hub, &pending, &reads, &dead, now).await {
            Ok(done) => done,
            Err(e) => {
                // The changes heard above are consumed: read everything next time.
                state.read_all = true;
                return Err(e);
            }
        };
        for (room, has) in pending.iter().zip(has_field) {
            state.pending.remove(room);
            if has {
                state.written.insert(room.clone());
            } else {
                state.written.remove(room);
            }
        }
        state.read_all = false;
        drop(state);
        metrics::counter!(telemetry::PRESENCE_ROOMS, "op" => "written").increment(pending.len() as u64);
        Ok(self.found(hub, replies, reads, dead, now).await)
    }

    /// Refreshes this node's liveness and hears what changed elsewhere since the last round:
    /// the rooms other nodes changed, and the nodes that are gone. Sets `read_all` (and queues
    /// every room here to be written) when something may have been missed.
    async fn listen(
        &self,
        state: &mut State,
        hub: &Hub,
        now: i64,
    ) -> Result<(HashSet<RoomName>, Vec<String>), redis::RedisError> {
        type Heard = (Option<f64>, Vec<String>, Vec<StreamEntry>, Vec<StreamEntry>);
        let mut pipe = redis::pipe();
        pipe.zscore(&self.live_key, &self.node)
            .zadd(&self.live_key, &self.node, now + self.ttl_ms)
            .ignore()
            .zrembyscore(&self.live_key, "-inf", now - self.ttl_ms)
            .ignore()
            .zrangebyscore(&self.live_key, now, "+inf");
        match &state.cursor {
            Some(cursor) => pipe.cmd("XRANGE").arg(&self.changes_key).arg(format!("({cursor}")).arg("+"),
            None => pipe.cmd("XREVRANGE").arg(&self.changes_key).arg("+").arg("-"),
        }
        .arg("COUNT")
        .arg(if state.cursor.is_some() { READ_MAX } else { 1 });
        pipe.cmd("XRANGE").arg(&self.changes_key).arg("-").arg("+").arg("COUNT").arg(1);
        let mut conn = self.conn.clone();
        let (score, live, entries, first): Heard = pipe.query_async(&mut conn).await?;

        // Our entries may be gone (first round, Redis restarted, or we were counted dead).
        #[allow(clippy::cast_precision_loss)]
        if score.is_none_or(|s| s <= now as f64) {
            let hosted = hub.room_names();
            let written: Vec<RoomName> = state.written.iter().cloned().collect();
            state.pending.extend(hosted.into_iter().chain(written));
            state.read_all = true;
        }
        let others: HashSet<String> = live.into_iter().filter(|n| *n != self.node).collect();
        let dead: Vec<String> = state.others.difference(&others).cloned().collect();
        if others != state.others {
            state.read_all = true;
            state.others = others;
        }
        let mut dirty = HashSet::new();
        if let Some(cursor) = &state.cursor {
            let cut_short = first.first().is_some_and(|(id, _)| stream_id(id) > stream_id(cursor));
            if cut_short || entries.len() >= READ_MAX {
                state.read_all = true;
            }
            for (_, fields) in &entries {
                let (node, rooms) = change_of(fields);
                if node != Some(self.node.as_str()) {
                    dirty.extend(rooms.split(' ').filter_map(|r| RoomName::parse(r).ok()));
                }
            }
        }
        if let Some((id, _)) = entries.last() {
            state.cursor = Some(id.clone());
        } else if state.cursor.is_none() {
            state.cursor = Some("0-0".to_owned());
        }
        Ok((dirty, dead))
    }

    /// Writes this node's users of the `pending` rooms and says they changed, then reads the
    /// `reads` rooms, the rooms of the `dead` nodes, and who is alive *after* those reads: a
    /// field seen in a read belongs to a node that was alive before it wrote, so a node missing
    /// from that later set really is gone. Returns the replies, and for each pending room
    /// whether this node now has a field there.
    async fn exchange(
        &self,
        hub: &Hub,
        pending: &[RoomName],
        reads: &[RoomName],
        dead: &[String],
        now: i64,
    ) -> Result<(Vec<redis::Value>, Vec<bool>), redis::RedisError> {
        let mut pipe = redis::pipe();
        let mut has_field = Vec::with_capacity(pending.len());
        for room in pending {
            let users = hub.users_in(room);
            if users.is_empty() {
                pipe.hdel(self.who(room), &self.node).ignore();
                pipe.srem(self.rooms_of(&self.node), room.as_str()).ignore();
            } else {
                let list = users.iter().map(Uuid::to_string).collect::<Vec<_>>().join(",");
                pipe.hset(self.who(room), &self.node, list).ignore();
                pipe.sadd(self.rooms_of(&self.node), room.as_str()).ignore();
            }
            has_field.push(!users.is_empty());
        }
        if !pending.is_empty() {
            self.announce_change(&mut pipe, pending.iter());
        }
        for room in reads {
            pipe.hgetall(self.who(room));
        }
        for node in dead {
            pipe.smembers(self.rooms_of(node));
        }
        pipe.zrangebyscore(&self.live_key, now, "+inf");
        let mut conn = self.conn.clone();
        Ok((pipe.query_async(&mut conn).await?, has_field))
    }

    /// Adds to `pipe` an entry of the changes stream naming `rooms`.
    fn announce_change<'a>(&self, pipe: &mut redis::Pipeline, rooms: impl Iterator<Item = &'a RoomName>) {
        let rooms = rooms.map(RoomName::as_str).collect::<Vec<_>>().join(" ");
        pipe.cmd("XADD")
            .arg(&self.changes_key)
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_LENGTH)
            .arg("*")
            .arg("node")
            .arg(&self.node)
            .arg("rooms")
            .arg(rooms)
            .ignore();
    }

    /// Who is online in each room read, from [`Shared::exchange`]'s replies; removes what
    /// nodes that are gone left behind.
    async fn found(
        &self,
        hub: &Hub,
        replies: Vec<redis::Value>,
        reads: Vec<RoomName>,
        dead: Vec<String>,
        now: i64,
    ) -> Online {
        let mut replies = replies.into_iter();
        let mut next = || replies.next().unwrap_or(redis::Value::Nil);
        let fields: Vec<HashMap<String, String>> =
            reads.iter().map(|_| redis::from_redis_value(next()).unwrap_or_default()).collect();
        let rooms_of_dead: Vec<Vec<String>> =
            dead.iter().map(|_| redis::from_redis_value(next()).unwrap_or_default()).collect();
        let live: HashSet<String> =
            redis::from_redis_value::<Vec<String>>(next()).unwrap_or_default().into_iter().collect();

        let mut leftovers = Vec::new();
        let online = reads
            .into_iter()
            .zip(fields)
            .map(|(room, fields)| {
                let (mut users, gone) = users_of_live(&fields, &live, &self.node);
                leftovers.extend(gone.into_iter().map(|node| (self.who(&room), node)));
                users.extend(hub.users_in(&room));
                (room, users)
            })
            .collect();
        for (node, rooms) in dead.iter().zip(rooms_of_dead) {
            let rooms = rooms.iter().filter_map(|r| RoomName::parse(r).ok());
            leftovers.extend(rooms.map(|room| (self.who(&room), node.clone())));
        }
        // The fields first, then the list of where they were: if removing them fails, the
        // next node to notice still finds the list.
        if self.remove_stale(leftovers, now).await {
            for node in &dead {
                self.forget(node, now).await;
            }
        }
        online
    }

    fn rooms_of(&self, node: &str) -> String {
        format!("{}{node}", self.rooms_of_prefix)
    }

    /// Removes the fields of nodes that are not alive (best effort: the next reader retries);
    /// false if that failed.
    async fn remove_stale(&self, stale: Vec<(String, String)>, now: i64) -> bool {
        if stale.is_empty() {
            return true;
        }
        let mut pipe = redis::pipe();
        for (key, node) in &stale {
            pipe.cmd("EVAL").arg(REMOVE_IF_DEAD).arg(2).arg(&self.live_key).arg(key).arg(node).arg(now).ignore();
        }
        let mut conn = self.conn.clone();
        match pipe.query_async::<()>(&mut conn).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "removing a dead node's presence failed");
                false
            }
        }
    }

    async fn forget(&self, node: &str, now: i64) {
        let mut conn = self.conn.clone();
        let _: Result<(), _> = redis::cmd("EVAL")
            .arg(FORGET_IF_DEAD)
            .arg(2)
            .arg(&self.live_key)
            .arg(self.rooms_of(node))
            .arg(node)
            .arg(now)
            .query_async(&mut conn)
            .await;
    }

    /// Removes this node's entries (it is stopping), so its users go offline elsewhere at once.
    pub(super) async fn withdraw(&self) {
        let state = std::mem::take(&mut *self.state.lock().await);
        let mut pipe = redis::pipe();
        for room in &state.written {
            pipe.hdel(self.who(room), &self.node).ignore();
        }
        if !state.written.is_empty() {
            self.announce_change(&mut pipe, state.written.iter());
        }
        pipe.del(self.rooms_of(&self.node)).ignore().zrem(&self.live_key, &self.node).ignore();
        let mut conn = self.conn.clone();
        let _ = tokio::time::timeout(Duration::from_secs(1), pipe.query_async::<()>(&mut conn)).await;
    }
}

/// A stream entry: its id and its fields and values, in turn.
type StreamEntry = (String, Vec<String>);

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A stream id (`<ms>-<seq>`) as a pair that orders as ids do.
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// The node and the space-separated rooms of a change.
fn change_of(fields: &[String]) -> (Option<&str>, &str) {
    let mut node = None;
    let mut rooms = "";
    for pair in fields.chunks_exact(2) {
        match pair[0].as_str() {
            "node" => node = Some(pair[1].as_str()),
            "rooms" => rooms = pair[1].as_str(),
            _ => {}
        }
    }
    (node, rooms)
}

/// The users of a room's fields whose node is alive (or is `me`), and the nodes of the others.
fn users_of_live(fields: &HashMap<String, String>, live: &HashSet<String>, me: &str) -> (HashSet<Uuid>, Vec<String>) {
    let mut users = HashSet::new();
    let mut gone = Vec::new();
    for (node, list) in fields {
        if node == me || live.contains(node) {
            users.extend(list.split(',').filter_map(|u| u.parse::<Uuid>().ok()));
        } else {
            gone.push(node.clone());
        }
    }
    (users, gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_order_by_time_then_sequence() {
        assert!(stream_id("1700000000000-1") > stream_id("1700000000000-0"));
        assert!(stream_id("1700000000001-0") > stream_id("1700000000000-9"));
        assert_eq!(stream_id("0-0"), (0, 0));
    }

    #[test]
    fn only_live_nodes_make_users_online() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let fields =
            HashMap::from([("n1".to_owned(), format!("{a},{b}")), ("dead".to_owned(), Uuid::new_v4().to_string())]);
        let live = HashSet::from(["n1".to_owned()]);
        let (users, gone) = users_of_live(&fields, &live, "me");
        assert_eq!(users, HashSet::from([a, b]));
        assert_eq!(gone, ["dead"]);
    }

    #[test]
    fn a_change_names_its_node_and_rooms() {
        let fields: Vec<String> = ["node", "n1", "rooms", "a b"].map(str::to_owned).into();
        assert_eq!(change_of(&fields), (Some("n1"), "a b"));
        assert_eq!(change_of(&[]), (None, ""));
    }
}
