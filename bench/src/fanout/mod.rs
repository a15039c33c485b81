//! The fan-out engine behind `fanout`, `step`, `cluster` and `rooms` (and the connections of
//! `idle`).
//!
//! Layout ([`Plan`]): client `i` joins room `i mod R` on node `(i / R) mod nodes`, so every room
//! has members on every node; the first S clients send (sender `j` is client `j`). With several
//! rooms per client (`rooms`), client `i` is in rooms `(i + k·clients) mod R` and the members of
//! the busy rooms send.
//!
//! Sending is open loop and paced by one dedicated thread (the pacer): message `n` of a phase is
//! due at `t0 + n / M` and goes to sender `n mod S`, whatever the server did with the earlier
//! ones. Its content embeds the sender, the sender's sequence number and the *scheduled* send
//! time (as Unix time, so that an independent client can measure against the same instant), so a
//! receiver's latency (receive time − scheduled time) includes any delay the server
//! caused upstream, and a stalled server cannot hide it by slowing the generator down. The pacer
//! sleeps on the OS timer (tens of µs of slack rather than a runtime timer's millisecond) and
//! writes straight to non-blocking duplicates of the sender sockets.
//!
//! Receiving runs on the multi-thread runtime, one task per connection. Each received frame is
//! scanned, not parsed: the `type`, `"seq":` and the content marker are found with byte searches
//! in the read buffer, and counters and latency samples are gathered per read and handed to
//! shared state once per read (atomics, and one of several sharded histograms).
//!
//! What counts: a message whose scheduled time lies in the measured window. Warm-up messages
//! travel the same path but are not counted; those arriving after the window (while draining)
//! still count, with their full latency.
//!
//! One file per role:
//!
//! - `scan`: the wire format of the bench's messages: encoding a tagged `send_message`, and
//!   reading a received frame's type, seq and tag with byte searches.
//! - `connect`: opening every connection, waiting for hello, joining the rooms, in measured rounds
//!   if asked ([`Clients`]).
//! - `pacer`: the pacer thread, the open-loop traffic of a phase.
//! - `receive`: the task that reads each connection, and the delivery, order and latency
//!   accounting shared by all of them.
//! - `phase`: one measured window of [`Clients`], from the schedule to the summed [`Phase`].
//!
//! This file holds the [`Plan`]: who is where.

mod connect;
mod pacer;
mod phase;
mod receive;
mod scan;

use std::ops::Range;

use anyhow::bail;

pub use connect::{Clients, FANOUT_BUFFER, JoinRound, Joining, join};
pub use phase::Phase;
pub use scan::{Kind, MIN_SIZE, encode_send, kind};
// Outside `fanout`, only the floor's and the preload's tests read a frame's seq and tag.
#[cfg(test)]
pub use scan::{seq, tag};

/// Who is where.
///
/// Memberships are numbered: membership `j`, for `j < clients × rooms_per_client`, puts client
/// `j mod clients` in room `j mod rooms`. With one room per client that is client `i` in room
/// `i mod rooms`. With more, client `i` is in rooms `(i + k·clients) mod rooms` for
/// `k < rooms_per_client`; every room has a member once there are as many memberships as rooms,
/// and memberships `0..rooms` give each room its first member (the `rooms` scenario joins them
/// as a round of their own, which creates the rooms).
#[derive(Clone, Debug)]
pub struct Plan {
    pub clients: usize,
    pub rooms: usize,
    pub rooms_per_client: usize,
    /// Who sends where: sender `j` (the number its messages are tagged with) is `senders[j]`.
    pub senders: Vec<Seat>,
    pub nodes: usize,
    pub size: usize,
    /// Whether every send carries a `clientId`.
    pub client_ids: bool,
    /// Room `r` is `<room_prefix>-<r>`.
    pub room_prefix: String,
}

/// A sender: which client sends, into which of its rooms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seat {
    pub client: usize,
    pub room: usize,
}

impl Plan {
    /// The first `n` clients send, each into its (first) room: fan-out.
    pub fn first_clients_send(mut self, n: usize) -> Self {
        self.senders = (0..n).map(|client| Seat { client, room: self.room_of(client) }).collect();
        self
    }

    /// Every member of the first `n` rooms sends into it: the busy rooms of `rooms`.
    pub fn members_of_first_rooms_send(mut self, n: usize) -> Self {
        self.senders = (0..n.min(self.rooms))
            .flat_map(|room| (0..self.members(room)).map(move |m| (room, m)))
            .map(|(room, m)| Seat { client: self.member(room, m), room })
            .collect();
        self
    }

    /// Whether the layout is one the clients can join: every room has a member, no client joins
    /// a room twice, every sender is a member of its room.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.clients == 0 || self.rooms == 0 || self.rooms_per_client == 0 {
            bail!("need at least one client, one room and one room per client");
        }
        if self.memberships() < self.rooms {
            bail!(
                "{} clients × {} rooms each leave rooms empty: need clients × rooms per client >= rooms ({})",
                self.clients,
                self.rooms_per_client,
                self.rooms
            );
        }
        // Client i's rooms i + k·C (mod R) come round again after R / gcd(C, R) steps.
        let distinct = self.rooms / gcd(self.clients, self.rooms);
        if self.rooms_per_client > distinct {
            bail!(
                "with {} clients and {} rooms, client i's rooms (i + k·clients) mod rooms repeat after {distinct}: \
                 at most {distinct} rooms per client (change --clients or --rooms)",
                self.clients,
                self.rooms
            );
        }
        if let Some(seat) = self.senders.iter().find(|s| s.client >= self.clients || !self.is_in(s.client, s.room)) {
            bail!("sender {seat:?} is not a member of its room");
        }
        Ok(())
    }

    pub fn memberships(&self) -> usize {
        self.clients * self.rooms_per_client
    }

    /// The client's first room.
    pub fn room_of(&self, client: usize) -> usize {
        client % self.rooms
    }

    /// The rooms of `client` whose memberships fall in `within` (see [`Plan`]).
    pub fn rooms_of(&self, client: usize, within: Range<usize>) -> impl Iterator<Item = usize> + '_ {
        (0..self.rooms_per_client)
            .map(move |k| client + k * self.clients)
            .filter(move |j| within.contains(j))
            .map(|j| j % self.rooms)
    }

    fn is_in(&self, client: usize, room: usize) -> bool {
        self.rooms_of(client, 0..self.memberships()).any(|r| r == room)
    }

    /// Spreads each room's members over the nodes: with one room per client, the members of a
    /// room take turns; with several, the clients are cut into one block per node, and a room's
    /// members `(r + m·R) mod clients` fall in different blocks.
    pub fn node_of(&self, client: usize) -> usize {
        if self.rooms_per_client == 1 { (client / self.rooms) % self.nodes } else { client * self.nodes / self.clients }
    }

    pub fn room_name(&self, room: usize) -> String {
        format!("{}-{room}", self.room_prefix)
    }

    /// Clients in `room`.
    pub fn members(&self, room: usize) -> u64 {
        (self.memberships().saturating_sub(room)).div_ceil(self.rooms) as u64
    }

    /// Member `m` of `room` (`m < members(room)`): membership `room + m·rooms`.
    pub fn member(&self, room: usize, m: u64) -> usize {
        (room + m as usize * self.rooms) % self.clients
    }
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn plan(clients: usize, rooms: usize, rooms_per_client: usize) -> Plan {
        Plan {
            clients,
            rooms,
            rooms_per_client,
            senders: Vec::new(),
            nodes: 1,
            size: 100,
            client_ids: true,
            room_prefix: "x".into(),
        }
    }

    #[test]
    fn rooms_spread_over_nodes() {
        let plan = Plan { nodes: 2, ..plan(1000, 10, 1) }.first_clients_send(50);
        plan.check().unwrap();
        assert_eq!((0..10).map(|r| plan.members(r)).sum::<u64>(), 1000);
        let room0_nodes: HashSet<_> = (0..1000).filter(|i| i % 10 == 0).map(|i| plan.node_of(i)).collect();
        assert_eq!(room0_nodes.len(), 2);
        assert_eq!(plan.senders[13], Seat { client: 13, room: 3 });
        let plan = Plan { clients: 15, rooms: 4, ..plan };
        assert_eq!((0..4).map(|r| plan.members(r)).collect::<Vec<_>>(), vec![4, 4, 4, 3]);
    }

    /// Every membership the plan counts is one a client joins, once, and the first `rooms` of
    /// them are the rooms' first members.
    fn check_layout(plan: &Plan) {
        plan.check().unwrap();
        let mut members: HashMap<usize, Vec<usize>> = HashMap::new();
        for client in 0..plan.clients {
            let rooms: Vec<usize> = plan.rooms_of(client, 0..plan.memberships()).collect();
            assert_eq!(rooms.len(), plan.rooms_per_client);
            assert_eq!(rooms.iter().collect::<HashSet<_>>().len(), rooms.len(), "client {client} joins a room twice");
            assert_eq!(rooms[0], plan.room_of(client));
            for room in rooms {
                members.entry(room).or_default().push(client);
            }
        }
        assert_eq!(members.len(), plan.rooms, "every room has a member");
        let first: Vec<usize> =
            (0..plan.clients).flat_map(|c| plan.rooms_of(c, 0..plan.rooms).collect::<Vec<_>>()).collect();
        assert_eq!(first.len(), plan.rooms, "round A: one join per room");
        assert_eq!(first.iter().collect::<HashSet<_>>().len(), plan.rooms, "round A: one join per room");
        for (room, clients) in members {
            assert_eq!(clients.len() as u64, plan.members(room));
            let mut listed: Vec<usize> = (0..plan.members(room)).map(|m| plan.member(room, m)).collect();
            let mut clients = clients;
            listed.sort_unstable();
            clients.sort_unstable();
            assert_eq!(listed, clients, "room {room}");
        }
    }

    #[test]
    fn many_rooms_per_client_cover_every_room_once_per_membership() {
        check_layout(&plan(15_000, 100_000, 20));
        check_layout(&plan(30_000, 100_000, 10));
        check_layout(&plan(60, 100, 5));
        check_layout(&plan(2000, 5000, 5));
        check_layout(&plan(7, 10, 3));
        let p = plan(15_000, 100_000, 20);
        assert_eq!((p.members(0), p.members(99_999)), (3, 3));
        let p = plan(30_000, 100_000, 10);
        assert_eq!((p.members(0), p.members(99_999)), (3, 3));
        let busy = p.clone().members_of_first_rooms_send(10);
        assert_eq!(busy.senders.len(), 30);
        assert_eq!(&busy.senders[..3], &[0, 10_000, 20_000].map(|client| Seat { client, room: 0 }));
        busy.check().unwrap();
        // 11 rooms each: client i's rooms come round again after 100,000 / 10,000 = 10.
        assert!(plan(30_000, 100_000, 11).check().is_err());
        assert!(plan(10, 100, 5).check().is_err(), "rooms left empty");
    }

    #[test]
    fn several_rooms_per_client_spread_each_room_over_the_nodes() {
        let p = Plan { nodes: 2, ..plan(30_000, 100_000, 10) };
        for room in [0, 1, 5_000, 99_999] {
            let nodes: HashSet<_> = (0..p.members(room)).map(|m| p.node_of(p.member(room, m))).collect();
            assert_eq!(nodes.len(), 2, "room {room}");
        }
    }
}
