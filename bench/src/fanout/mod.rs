//! The fan-out engine behind `fanout`, `step`, `cluster` (and the connections of `idle`).
//!
//! Layout: client `i` joins room `i mod R` on node `(i / R) mod nodes`, so every room has
//! members on every node; the first S clients send (sender `j` is client `j`).
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
//! - `connect`: opening every connection, waiting for hello, joining the rooms ([`Clients`]).
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

pub use connect::{Clients, FANOUT_BUFFER, join};
pub use phase::Phase;
pub use scan::{Kind, MIN_SIZE, encode_send, kind};
// Outside `fanout`, only the floor's and the preload's tests read a frame's seq and tag.
#[cfg(test)]
pub use scan::{seq, tag};

/// Who is where.
#[derive(Clone, Debug)]
pub struct Plan {
    pub clients: usize,
    pub rooms: usize,
    pub senders: usize,
    pub nodes: usize,
    pub size: usize,
    /// Whether every send carries a `clientId`.
    pub client_ids: bool,
    /// Room `r` is `<room_prefix>-<r>`.
    pub room_prefix: String,
}

impl Plan {
    pub fn room_of(&self, client: usize) -> usize {
        client % self.rooms
    }

    pub fn node_of(&self, client: usize) -> usize {
        (client / self.rooms) % self.nodes
    }

    pub fn room_name(&self, room: usize) -> String {
        format!("{}-{room}", self.room_prefix)
    }

    /// Clients in `room`.
    pub fn members(&self, room: usize) -> u64 {
        (self.clients.saturating_sub(room)).div_ceil(self.rooms) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_spread_over_nodes() {
        let plan = Plan {
            clients: 1000,
            rooms: 10,
            senders: 50,
            nodes: 2,
            size: 100,
            client_ids: true,
            room_prefix: "x".into(),
        };
        assert_eq!((0..10).map(|r| plan.members(r)).sum::<u64>(), 1000);
        let room0_nodes: std::collections::HashSet<_> =
            (0..1000).filter(|i| i % 10 == 0).map(|i| plan.node_of(i)).collect();
        assert_eq!(room0_nodes.len(), 2);
        let plan = Plan { clients: 15, rooms: 4, ..plan };
        assert_eq!((0..4).map(|r| plan.members(r)).collect::<Vec<_>>(), vec![4, 4, 4, 3]);
    }
}
