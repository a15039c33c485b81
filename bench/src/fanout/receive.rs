//! The receiving side: one task per connection reads frames until the connection ends, and
//! tells fresh, late and duplicate deliveries apart; counters and latency samples are gathered
//! per read and handed to the state every receiver shares once per read (atomics, and one of
//! several sharded histograms).
//!
//! A delivery's latency runs from its scheduled send time to its arrival in the socket (the
//! kernel's receive timestamp, see [`crate::ws`]); the wait from arrival to the bench's read of
//! it is recorded on its own, so a busy generator shows as its own figure instead of as the
//! server's latency.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use hdrhistogram::Histogram;

use super::scan::{Kind, kind, seq, tag};
use crate::{
    clock,
    ws::{OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, SharedWriter, WsConn},
};

/// Histogram shards: connection `i` records into shard `i mod SHARDS`.
pub(super) const SHARDS: usize = 16;
/// Latencies above this are recorded as this (µs).
const MAX_LATENCY_US: u64 = 60_000_000;

/// Per-connection counters of the current phase, summed by the coordinator.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) delivered: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) ooo_seq: AtomicU64,
    pub(super) ooo_sender: AtomicU64,
    pub(super) acks: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) other: AtomicU64,
    /// Deliveries read without an arrival time from the kernel (their latency runs to the read).
    pub(super) unstamped: AtomicU64,
}

impl Counters {
    pub(super) fn reset(&self) {
        for c in [
            &self.delivered,
            &self.duplicates,
            &self.ooo_seq,
            &self.ooo_sender,
            &self.acks,
            &self.errors,
            &self.other,
            &self.unstamped,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

pub(super) struct Hists {
    pub(super) all: Histogram<u64>,
    pub(super) same: Histogram<u64>,
    pub(super) cross: Histogram<u64>,
    /// From arrival in the socket to the bench's read, per delivery.
    pub(super) read_delay: Histogram<u64>,
}

pub(super) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds are valid")
}

impl Hists {
    pub(super) fn new() -> Self {
        Self { all: histogram(), same: histogram(), cross: histogram(), read_delay: histogram() }
    }
}

/// State every receiver shares.
pub(super) struct Shared {
    pub(super) window_start: AtomicU64,
    pub(super) window_end: AtomicU64,
    pub(super) hists: Vec<Mutex<Hists>>,
    /// Node of each sender, to split same-node from cross-node latency.
    pub(super) sender_node: Vec<usize>,
    /// Room of each sender: where a receiver in several rooms checks the seq order.
    pub(super) sender_room: Vec<usize>,
    /// Connections the server closed (or that failed) since setup.
    pub(super) closed: AtomicU64,
    pub(super) first_close: Mutex<Option<String>>,
    pub(super) first_error: Mutex<Option<String>>,
    /// Set when the clients are dropped (Ctrl-C, an error): the pacer thread stops early.
    pub(super) stop: AtomicBool,
}

impl Shared {
    fn note_closed(&self, why: String) {
        self.closed.fetch_add(1, Ordering::Relaxed);
        self.first_close.lock().expect("no panics under this lock").get_or_insert(why);
    }
}

/// Duplicate and order tracking of one sender's messages at one receiver: the highest sequence
/// seen and a bitmap of the 64 below it.
#[derive(Clone, Copy, Default)]
pub(super) struct Track {
    /// Highest `k` seen, plus one (0: none yet).
    top: u64,
    seen: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Newer than anything before from this sender.
    Fresh,
    /// Older than one already received, first time seen: out of order.
    Late,
    Duplicate,
}

impl Track {
    fn accept(&mut self, k: u64) -> Verdict {
        if k >= self.top {
            let shift = k + 1 - self.top;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.top = k + 1;
            return Verdict::Fresh;
        }
        let back = self.top - 1 - k;
        if back >= 64 {
            // Too old for the bitmap; confab resends nothing this late, so call it late.
            return Verdict::Late;
        }
        let bit = 1u64 << back;
        if self.seen & bit != 0 {
            Verdict::Duplicate
        } else {
            self.seen |= bit;
            Verdict::Late
        }
    }
}

/// Counts gathered during one read, handed over in one go.
#[derive(Default)]
pub(super) struct Batch {
    delivered: u64,
    duplicates: u64,
    ooo_seq: u64,
    ooo_sender: u64,
    acks: u64,
    errors: u64,
    other: u64,
}

/// One connection's receiving side, owned by its task.
pub(super) struct Receiver {
    pub(super) node: usize,
    pub(super) shard: usize,
    pub(super) shared: Arc<Shared>,
    pub(super) counters: Arc<Counters>,
    pub(super) writer: Option<Arc<SharedWriter>>,
    /// Per sender, allocated with the first tagged message.
    pub(super) tracks: Vec<Track>,
    /// The latest seq seen in each room with senders that this connection is in.
    pub(super) seqs: Vec<(usize, u64)>,
    pub(super) batch: Batch,
    /// (latency µs, cross-node) of this read.
    pub(super) samples: Vec<(u64, bool)>,
    /// From arrival to read of this read's data (µs).
    pub(super) read_delay_us: u64,
    /// Whether the kernel gave this read's arrival time.
    pub(super) stamped: bool,
}

impl Receiver {
    /// The connection joined `room` (a room with senders) at `seq`.
    pub(super) fn joined(&mut self, room: usize, seq: u64) {
        *self.last_seq(room) = seq;
    }

    fn last_seq(&mut self, room: usize) -> &mut u64 {
        let at = self.seqs.iter().position(|&(r, _)| r == room).unwrap_or_else(|| {
            self.seqs.push((room, 0));
            self.seqs.len() - 1
        });
        &mut self.seqs[at].1
    }

    fn on_text(&mut self, p: &[u8], now: u64) {
        match kind(p) {
            Kind::Message => self.on_message(p, now),
            Kind::Ack => self.batch.acks += 1,
            Kind::Error => {
                self.batch.errors += 1;
                let mut first = self.shared.first_error.lock().expect("no panics under this lock");
                first.get_or_insert_with(|| String::from_utf8_lossy(p).into_owned());
            }
            Kind::Other => self.batch.other += 1,
        }
    }

    fn on_message(&mut self, p: &[u8], now: u64) {
        let seq = seq(p);
        let senders = self.shared.sender_room.len();
        let tag = tag(p).filter(|t| t.sender < senders);
        let Some(tag) = tag else {
            // Not one of ours (another client of a shared server): only its seq matters, in
            // the one room this connection watches (in several, which one is not scanned for).
            if let ([(_, last)], Some(seq)) = (self.seqs.as_mut_slice(), seq) {
                *last = (*last).max(seq);
            }
            return;
        };
        if self.tracks.is_empty() {
            self.tracks = vec![Track::default(); senders];
        }
        let verdict = self.tracks[tag.sender].accept(tag.k);
        let start = self.shared.window_start.load(Ordering::Relaxed);
        let end = self.shared.window_end.load(Ordering::Relaxed);
        let sched_ns = clock::from_unix(tag.sched_unix_ns);
        let counted = (start..end).contains(&sched_ns);
        if let Some(seq) = seq {
            let last = self.last_seq(self.shared.sender_room[tag.sender]);
            let backwards = seq <= *last;
            *last = (*last).max(seq);
            if backwards && verdict != Verdict::Duplicate && counted {
                self.batch.ooo_seq += 1;
            }
        }
        if !counted {
            return;
        }
        match verdict {
            Verdict::Duplicate => self.batch.duplicates += 1,
            Verdict::Late | Verdict::Fresh => {
                if verdict == Verdict::Late {
                    self.batch.ooo_sender += 1;
                }
                self.batch.delivered += 1;
                let latency_us = now.saturating_sub(sched_ns) / 1000;
                self.samples.push((latency_us, self.shared.sender_node[tag.sender] != self.node));
            }
        }
    }

    /// Hands this read's counts and samples to the shared state.
    fn flush(&mut self) {
        let b = std::mem::take(&mut self.batch);
        let c = &self.counters;
        for (counter, n) in [
            (&c.delivered, b.delivered),
            (&c.duplicates, b.duplicates),
            (&c.ooo_seq, b.ooo_seq),
            (&c.ooo_sender, b.ooo_sender),
            (&c.acks, b.acks),
            (&c.errors, b.errors),
            (&c.other, b.other),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        if !self.samples.is_empty() {
            if !self.stamped {
                c.unstamped.fetch_add(self.samples.len() as u64, Ordering::Relaxed);
            }
            let mut h = self.shared.hists[self.shard].lock().expect("no panics under this lock");
            h.read_delay.saturating_record_n(self.read_delay_us, self.samples.len() as u64);
            for &(us, cross) in &self.samples {
                h.all.saturating_record(us);
                if cross { h.cross.saturating_record(us) } else { h.same.saturating_record(us) }
            }
            self.samples.clear();
        }
    }
}

/// Reads until the connection ends.
pub(super) async fn receive(mut conn: WsConn, mut rx: Receiver) {
    // Arrival time of the bytes being handled (bench clock, ns).
    let mut now = clock::now_ns();
    loop {
        loop {
            let frame = match conn.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    rx.flush();
                    rx.shared.note_closed(format!("bad frame: {e}"));
                    return;
                }
            };
            match frame.opcode {
                OP_TEXT => rx.on_text(conn.payload(&frame), now),
                OP_PING => {
                    let data = conn.payload(&frame).to_vec();
                    let sent = match &rx.writer {
                        Some(w) => w.send(OP_PONG, &data).map(|_| ()),
                        None => conn.send(OP_PONG, &data).await,
                    };
                    if sent.is_err() {
                        rx.shared.note_closed("pong failed".into());
                        return;
                    }
                }
                OP_CLOSE => {
                    rx.flush();
                    let p = conn.payload(&frame);
                    let code = if p.len() >= 2 { u16::from_be_bytes([p[0], p[1]]) } else { 1005 };
                    let reason = String::from_utf8_lossy(p.get(2..).unwrap_or_default()).into_owned();
                    rx.shared.note_closed(format!("closed by the server: {code} {reason}"));
                    return;
                }
                _ => {}
            }
            conn.consume(&frame);
        }
        rx.flush();
        match conn.fill().await {
            Ok(true) => {
                let read = clock::now_ns();
                now = conn.arrived().map_or(read, |unix| clock::from_unix(unix).min(read));
                rx.stamped = conn.arrived().is_some();
                rx.read_delay_us = (read - now) / 1000;
            }
            Ok(false) => return rx.shared.note_closed("connection closed by the server".into()),
            Err(e) => return rx.shared.note_closed(format!("read failed: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_tell_fresh_late_and_duplicate_apart() {
        let mut t = Track::default();
        assert_eq!(t.accept(0), Verdict::Fresh);
        assert_eq!(t.accept(2), Verdict::Fresh);
        assert_eq!(t.accept(1), Verdict::Late);
        assert_eq!(t.accept(1), Verdict::Duplicate);
        assert_eq!(t.accept(2), Verdict::Duplicate);
        assert_eq!(t.accept(100), Verdict::Fresh);
        assert_eq!(t.accept(3), Verdict::Late); // beyond the bitmap
    }
}
