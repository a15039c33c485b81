//! The pacer: the one thread that sends every message of a phase at its scheduled time, open
//! loop, writing straight to non-blocking duplicates of the sender sockets.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use hdrhistogram::Histogram;

use super::{receive::histogram, scan::encode_send};
use crate::{
    clock,
    ws::{OP_TEXT, SharedWriter},
};

/// A sender as the pacer sees it.
pub(super) struct Sender {
    pub(super) id: usize,
    pub(super) writer: Arc<SharedWriter>,
    pub(super) room: String,
    pub(super) members: u64,
    pub(super) k: u64,
    pub(super) pending: bool,
}

/// One phase's schedule, in clock ns.
#[derive(Clone, Copy, Debug)]
pub(super) struct Schedule {
    pub(super) rate: f64,
    pub(super) t0: u64,
    pub(super) start: u64,
    pub(super) end: u64,
    /// Give up on writing what the server does not read by then.
    pub(super) flush_until: u64,
}

pub(super) struct PacerReport {
    pub(super) sent: u64,
    pub(super) expected: u64,
    pub(super) send_errors: u64,
    pub(super) unflushed_bytes: usize,
    pub(super) lag: Histogram<u64>,
}

/// The pacer thread: sends every message of the phase at its scheduled time.
pub(super) fn pace(
    senders: &mut [Sender],
    s: Schedule,
    (size, client_ids): (usize, bool),
    stop: &AtomicBool,
) -> PacerReport {
    let mut report = PacerReport { sent: 0, expected: 0, send_errors: 0, unflushed_bytes: 0, lag: histogram() };
    let interval = 1e9 / s.rate;
    let mut payload = Vec::with_capacity(size + 128);
    let mut n: u64 = 0;
    let mut pending = 0usize;
    loop {
        let due = s.t0 + (n as f64 * interval) as u64;
        if due >= s.end {
            break;
        }
        let now = clock::now_ns();
        if due > now {
            if pending > 0 {
                pending = flush_pending(senders);
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
            // Never early: a sleep overshoots by the timer slack (~50 µs), which shows as send
            // lag and in the latency, rather than a spin that would burn a core at high rates.
            // With sockets backed up, come back at least every millisecond to push them on.
            let wait = due - now;
            let wait = if pending > 0 { wait.min(1_000_000) } else { wait };
            std::thread::sleep(Duration::from_nanos(wait));
            continue;
        }
        let sender = &mut senders[usize::try_from(n % senders.len() as u64).expect("index fits")];
        encode_send(&mut payload, &sender.room, sender.id, sender.k, due, size, client_ids);
        sender.k += 1;
        n += 1;
        match sender.writer.send(OP_TEXT, &payload) {
            Ok(left) => {
                if left > 0 && !sender.pending {
                    sender.pending = true;
                    pending += 1;
                }
                if (s.start..s.end).contains(&due) {
                    report.sent += 1;
                    report.expected += sender.members;
                    report.lag.saturating_record(clock::now_ns().saturating_sub(due) / 1000);
                }
            }
            Err(_) => report.send_errors += 1,
        }
    }
    while pending > 0 && clock::now_ns() < s.flush_until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(1));
        pending = flush_pending(senders);
    }
    report.unflushed_bytes = senders.iter().filter(|s| s.pending).map(|s| s.writer.flush().unwrap_or(0)).sum();
    report
}

/// Pushes pending bytes on; returns how many senders still have some.
fn flush_pending(senders: &mut [Sender]) -> usize {
    let mut still = 0;
    for s in senders.iter_mut().filter(|s| s.pending) {
        match s.writer.flush() {
            Ok(0) | Err(_) => s.pending = false,
            Ok(_) => still += 1,
        }
    }
    still
}
