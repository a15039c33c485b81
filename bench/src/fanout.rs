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

use std::{
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use memchr::memmem::Finder;
use tokio::{
    sync::{Semaphore, mpsc, watch},
    task::JoinHandle,
};

use crate::{
    clock,
    nodes::Targets,
    procfs::{CpuDelta, CpuSample, servers_rss_kib},
    report::Summary,
    ws::{OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, SharedWriter, WsConn},
};

/// `"content":"~B~` then sender (6 digits) `~` sequence (10) `~` scheduled send time, Unix ns
/// (19) `~`, then padding.
const MARKER: &[u8] = b"\"content\":\"~B~";
const TAG_LEN: usize = 38;
/// Smallest content that holds the tag.
pub const MIN_SIZE: usize = 3 + TAG_LEN + 2;
/// Histogram shards: connection `i` records into shard `i mod SHARDS`.
const SHARDS: usize = 16;
/// Latencies above this are recorded as this (µs).
const MAX_LATENCY_US: u64 = 60_000_000;
/// Read buffer per fan-out connection.
pub const FANOUT_BUFFER: usize = 16 * 1024;

struct Scanner {
    message_or_type: Finder<'static>,
    seq: Finder<'static>,
    marker: Finder<'static>,
}

static SCAN: LazyLock<Scanner> = LazyLock::new(|| Scanner {
    message_or_type: Finder::new(b"\"type\":\""),
    seq: Finder::new(b"\"seq\":"),
    marker: Finder::new(MARKER),
});

/// What a server frame is, from its `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Message,
    Ack,
    Error,
    Other,
}

/// The frame's `type`: confab writes it first, so this is a prefix check; a byte search covers
/// a server that does not.
pub fn kind(p: &[u8]) -> Kind {
    let rest = if let Some(rest) = p.strip_prefix(b"{\"type\":\"") {
        rest
    } else {
        match SCAN.message_or_type.find(p) {
            Some(at) => &p[at + 8..],
            None => return Kind::Other,
        }
    };
    if rest.starts_with(b"message\"") {
        Kind::Message
    } else if rest.starts_with(b"ack\"") {
        Kind::Ack
    } else if rest.starts_with(b"error\"") {
        Kind::Error
    } else {
        Kind::Other
    }
}

/// The number after `"seq":`, if any.
pub fn seq(p: &[u8]) -> Option<u64> {
    let at = SCAN.seq.find(p)? + 6;
    let digits = p[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 { None } else { digits_value(&p[at..at + digits]) }
}

/// The bench tag of a message: who sent it, its number, and when it was due (Unix ns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    pub sender: usize,
    pub k: u64,
    pub sched_unix_ns: u64,
}

pub fn tag(p: &[u8]) -> Option<Tag> {
    let at = SCAN.marker.find(p)? + MARKER.len();
    let t = p.get(at..at + TAG_LEN)?;
    if t[6] != b'~' || t[17] != b'~' || t[37] != b'~' {
        return None;
    }
    Some(Tag {
        sender: usize::try_from(digits_value(&t[..6])?).ok()?,
        k: digits_value(&t[7..17])?,
        sched_unix_ns: digits_value(&t[18..37])?,
    })
}

fn digits_value(b: &[u8]) -> Option<u64> {
    b.iter().try_fold(0u64, |v, &c| {
        let d = c.wrapping_sub(b'0');
        (d <= 9).then(|| v * 10 + u64::from(d))
    })
}

/// Writes a `send_message` frame's JSON for sender `id`, message `k`, due at `sched_ns` (clock
/// time; the tag carries it as Unix time); with
/// `client_id`, the frame carries a UUID-sized `clientId` unique to the sender and message, as
/// the web client's sends (and every resend after a reconnect) do.
pub fn encode_send(out: &mut Vec<u8>, room: &str, id: usize, k: u64, sched_ns: u64, size: usize, client_id: bool) {
    use std::io::Write as _;
    out.clear();
    out.extend_from_slice(b"{\"type\":\"send_message\",");
    if client_id {
        write!(out, "\"clientId\":\"{id:08x}-0000-4000-8000-{k:012x}\",").expect("writing to a Vec cannot fail");
    }
    out.extend_from_slice(b"\"room\":\"");
    out.extend_from_slice(room.as_bytes());
    out.extend_from_slice(b"\",\"content\":\"~B~");
    write!(out, "{id:06}~{k:010}~{:019}~", clock::to_unix(sched_ns)).expect("writing to a Vec cannot fail");
    out.resize(out.len() + size.saturating_sub(3 + TAG_LEN), b'x');
    out.extend_from_slice(b"\"}");
}

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

/// Per-connection counters of the current phase, summed by the coordinator.
#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    duplicates: AtomicU64,
    ooo_seq: AtomicU64,
    ooo_sender: AtomicU64,
    acks: AtomicU64,
    errors: AtomicU64,
    other: AtomicU64,
}

impl Counters {
    fn reset(&self) {
        for c in
            [&self.delivered, &self.duplicates, &self.ooo_seq, &self.ooo_sender, &self.acks, &self.errors, &self.other]
        {
            c.store(0, Ordering::Relaxed);
        }
    }
}

struct Hists {
    all: Histogram<u64>,
    same: Histogram<u64>,
    cross: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds are valid")
}

impl Hists {
    fn new() -> Self {
        Self { all: histogram(), same: histogram(), cross: histogram() }
    }
}

/// State every receiver shares.
struct Shared {
    window_start: AtomicU64,
    window_end: AtomicU64,
    hists: Vec<Mutex<Hists>>,
    /// Node of each sender, to split same-node from cross-node latency.
    sender_node: Vec<usize>,
    /// Connections the server closed (or that failed) since setup.
    closed: AtomicU64,
    first_close: Mutex<Option<String>>,
    first_error: Mutex<Option<String>>,
    /// Set when the clients are dropped (Ctrl-C, an error): the pacer thread stops early.
    stop: AtomicBool,
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
struct Track {
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
struct Batch {
    delivered: u64,
    duplicates: u64,
    ooo_seq: u64,
    ooo_sender: u64,
    acks: u64,
    errors: u64,
    other: u64,
}

/// One connection's receiving side, owned by its task.
struct Receiver {
    node: usize,
    shard: usize,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    writer: Option<Arc<SharedWriter>>,
    tracks: Vec<Track>,
    last_seq: u64,
    batch: Batch,
    /// (latency µs, cross-node) of this read.
    samples: Vec<(u64, bool)>,
}

impl Receiver {
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
        let tag = tag(p).filter(|t| t.sender < self.tracks.len());
        let Some(tag) = tag else {
            // Not one of ours (another client of a shared server): only its seq matters.
            self.last_seq = self.last_seq.max(seq.unwrap_or(0));
            return;
        };
        let verdict = self.tracks[tag.sender].accept(tag.k);
        let start = self.shared.window_start.load(Ordering::Relaxed);
        let end = self.shared.window_end.load(Ordering::Relaxed);
        let sched_ns = clock::from_unix(tag.sched_unix_ns);
        let counted = (start..end).contains(&sched_ns);
        if let Some(seq) = seq {
            if seq <= self.last_seq && verdict != Verdict::Duplicate && counted {
                self.batch.ooo_seq += 1;
            }
            self.last_seq = self.last_seq.max(seq);
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
            let mut h = self.shared.hists[self.shard].lock().expect("no panics under this lock");
            for &(us, cross) in &self.samples {
                h.all.saturating_record(us);
                if cross { h.cross.saturating_record(us) } else { h.same.saturating_record(us) }
            }
            self.samples.clear();
        }
    }
}

/// Reads until the connection ends.
async fn receive(mut conn: WsConn, mut rx: Receiver) {
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
            Ok(true) => now = clock::now_ns(),
            Ok(false) => return rx.shared.note_closed("connection closed by the server".into()),
            Err(e) => return rx.shared.note_closed(format!("read failed: {e}")),
        }
    }
}

/// A sender as the pacer sees it.
struct Sender {
    id: usize,
    writer: Arc<SharedWriter>,
    room: String,
    members: u64,
    k: u64,
    pending: bool,
}

/// One phase's schedule, in clock ns.
#[derive(Clone, Copy, Debug)]
struct Schedule {
    rate: f64,
    t0: u64,
    start: u64,
    end: u64,
    /// Give up on writing what the server does not read by then.
    flush_until: u64,
}

struct PacerReport {
    sent: u64,
    expected: u64,
    send_errors: u64,
    unflushed_bytes: usize,
    lag: Histogram<u64>,
}

/// The pacer thread: sends every message of the phase at its scheduled time.
fn pace(senders: &mut [Sender], s: Schedule, (size, client_ids): (usize, bool), stop: &AtomicBool) -> PacerReport {
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

/// What setting the clients up took.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    pub connect_secs: f64,
    pub join_secs: f64,
    /// Servers' RSS once every connection was open, before any joined (KiB).
    pub rss_connected_kib: u64,
}

enum SetupEvent {
    Connected,
    Joined(usize, Option<Arc<SharedWriter>>),
    Failed(String),
}

/// Connected, joined clients and their receivers.
pub struct Clients {
    pub plan: Plan,
    pub setup: Setup,
    shared: Arc<Shared>,
    counters: Vec<Arc<Counters>>,
    senders: Vec<Sender>,
    tasks: Vec<JoinHandle<()>>,
    pids: Vec<i32>,
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Clients {
    /// Opens every connection (at most `concurrency` at once), then joins every room; each
    /// connection's task then keeps receiving until dropped.
    pub async fn open(
        targets: &Targets,
        tokens: &[String],
        plan: Plan,
        concurrency: usize,
        buffer: usize,
    ) -> anyhow::Result<Self> {
        if plan.senders > plan.clients || plan.rooms == 0 || plan.rooms > plan.clients.max(1) {
            bail!("need 1 <= rooms <= clients and senders <= clients");
        }
        let shared = Arc::new(Shared {
            window_start: AtomicU64::new(u64::MAX),
            window_end: AtomicU64::new(u64::MAX),
            hists: (0..SHARDS).map(|_| Mutex::new(Hists::new())).collect(),
            sender_node: (0..plan.senders).map(|j| plan.node_of(j)).collect(),
            closed: AtomicU64::new(0),
            first_close: Mutex::new(None),
            first_error: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let (go_tx, go_rx) = watch::channel(false);
        let mut counters = Vec::with_capacity(plan.clients);
        let mut tasks = Vec::with_capacity(plan.clients);
        let started = clock::now_ns();
        for (i, token) in tokens.iter().enumerate().take(plan.clients) {
            let c = Arc::new(Counters::default());
            counters.push(Arc::clone(&c));
            let addr = targets.nodes[plan.node_of(i)].addr.clone();
            let token = token.clone();
            let room = plan.room_name(plan.room_of(i));
            let rx = Receiver {
                node: plan.node_of(i),
                shard: i % SHARDS,
                shared: Arc::clone(&shared),
                counters: c,
                writer: None,
                tracks: vec![Track::default(); plan.senders],
                last_seq: 0,
                batch: Batch::default(),
                // Idle connections (no senders) carry no latency samples.
                samples: Vec::with_capacity(if plan.senders > 0 { 256 } else { 0 }),
            };
            let setup = ClientSetup {
                i,
                addr,
                token,
                room,
                buffer,
                is_sender: i < plan.senders,
                permits: Arc::clone(&permits),
                events: events_tx.clone(),
                go: go_rx.clone(),
            };
            tasks.push(tokio::spawn(run_client(setup, rx)));
        }
        drop(events_tx);
        let mut clients =
            Self { setup: Setup::default(), shared, counters, senders: Vec::new(), tasks, pids: targets.pids(), plan };
        let n = clients.plan.clients;
        for _ in 0..n {
            match events.recv().await {
                Some(SetupEvent::Connected) => {}
                Some(SetupEvent::Failed(e)) => bail!("opening connections failed: {e}"),
                _ => bail!("opening connections failed"),
            }
        }
        let connected = clock::now_ns();
        clients.setup.connect_secs = (connected - started) as f64 / 1e9;
        clients.setup.rss_connected_kib = servers_rss_kib(&clients.pids);
        go_tx.send(true).context("no client is waiting")?;
        let mut writers = vec![None; clients.plan.senders];
        for _ in 0..n {
            match events.recv().await {
                Some(SetupEvent::Joined(i, writer)) => {
                    if let Some(w) = writer {
                        writers[i] = Some(w);
                    }
                }
                Some(SetupEvent::Failed(e)) => bail!("joining rooms failed: {e}"),
                _ => bail!("joining rooms failed"),
            }
        }
        clients.setup.join_secs = (clock::now_ns() - connected) as f64 / 1e9;
        for (j, writer) in writers.into_iter().enumerate() {
            let room = clients.plan.room_of(j);
            clients.senders.push(Sender {
                id: j,
                writer: writer.context("a sender has no writer")?,
                room: clients.plan.room_name(room),
                members: clients.plan.members(room),
                k: 0,
                pending: false,
            });
        }
        Ok(clients)
    }

    pub fn server_pids(&self) -> &[i32] {
        &self.pids
    }

    /// Connections closed since setup, and the first reason.
    pub fn closed(&self) -> (u64, Option<String>) {
        (self.shared.closed.load(Ordering::Relaxed), self.shared.first_close.lock().expect("no panics").clone())
    }

    /// Runs one open-loop phase at `rate` messages/s and measures its window.
    pub async fn phase(
        &mut self,
        rate: f64,
        warmup: Duration,
        duration: Duration,
        drain: Duration,
    ) -> anyhow::Result<Phase> {
        if self.senders.is_empty() || rate <= 0.0 {
            bail!("a phase needs senders and a positive rate");
        }
        // Close the old window before zeroing, so stragglers of the last phase count nowhere.
        self.shared.window_start.store(u64::MAX, Ordering::Relaxed);
        self.shared.window_end.store(u64::MAX, Ordering::Relaxed);
        for c in &self.counters {
            c.reset();
        }
        for h in &self.shared.hists {
            let mut h = h.lock().expect("no panics under this lock");
            h.all.reset();
            h.same.reset();
            h.cross.reset();
        }
        *self.shared.first_error.lock().expect("no panics") = None;
        let closed_before = self.shared.closed.load(Ordering::Relaxed);

        let t0 = clock::now_ns() + 100_000_000;
        let start = t0 + duration_ns(warmup);
        let end = start + duration_ns(duration);
        let schedule = Schedule { rate, t0, start, end, flush_until: end + duration_ns(drain) };
        self.shared.window_start.store(start, Ordering::Relaxed);
        self.shared.window_end.store(end, Ordering::Relaxed);
        let mut senders = std::mem::take(&mut self.senders);
        let (size, client_ids) = (self.plan.size, self.plan.client_ids);
        let shared = Arc::clone(&self.shared);
        let pacer = tokio::task::spawn_blocking(move || {
            let report = pace(&mut senders, schedule, (size, client_ids), &shared.stop);
            (senders, report)
        });
        tokio::time::sleep_until(clock::instant(start).into()).await;
        let cpu_start = CpuSample::take(&self.pids);
        tokio::time::sleep_until(clock::instant(end).into()).await;
        let cpu_end = CpuSample::take(&self.pids);
        let (senders, report) = pacer.await.context("the pacer thread panicked")?;
        self.senders = senders;

        // Drain: wait for what is still in flight, up to the drain time after the window.
        let deadline = end + duration_ns(drain);
        let delivered = loop {
            let delivered = self.sum(|c| &c.delivered);
            if delivered >= report.expected || clock::now_ns() >= deadline {
                break delivered;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // A last moment for duplicates that arrive right behind the final delivery.
        tokio::time::sleep(Duration::from_millis(50)).await;

        let mut all = histogram();
        let mut same = histogram();
        let mut cross = histogram();
        for h in &self.shared.hists {
            let h = h.lock().expect("no panics under this lock");
            all.add(&h.all).expect("same bounds");
            same.add(&h.same).expect("same bounds");
            cross.add(&h.cross).expect("same bounds");
        }
        let cpu = cpu_start.until(&cpu_end);
        let window_s = duration.as_secs_f64();
        let (closed, first_close) = self.closed();
        Ok(Phase {
            rate,
            window_s,
            window_ns: (start, end),
            sent: report.sent,
            expected: report.expected,
            delivered,
            lost: report.expected.saturating_sub(delivered),
            duplicates: self.sum(|c| &c.duplicates),
            ooo_seq: self.sum(|c| &c.ooo_seq),
            ooo_sender: self.sum(|c| &c.ooo_sender),
            acks: self.sum(|c| &c.acks),
            errors: self.sum(|c| &c.errors),
            first_error: self.shared.first_error.lock().expect("no panics").clone(),
            send_errors: report.send_errors,
            unflushed_bytes: report.unflushed_bytes,
            closed: closed - closed_before,
            first_close,
            latency: Summary::of(&all),
            same_node: Summary::of(&same),
            cross_node: Summary::of(&cross),
            send_lag: Summary::of(&report.lag),
            cpu,
        })
    }

    fn sum(&self, field: impl Fn(&Counters) -> &AtomicU64) -> u64 {
        self.counters.iter().map(|c| field(c).load(Ordering::Relaxed)).sum()
    }
}

/// What a client task needs to set itself up.
struct ClientSetup {
    i: usize,
    addr: String,
    token: String,
    room: String,
    buffer: usize,
    is_sender: bool,
    permits: Arc<Semaphore>,
    events: mpsc::UnboundedSender<SetupEvent>,
    go: watch::Receiver<bool>,
}

/// One client: connect (waiting for hello), wait for the go, join, then receive until dropped.
async fn run_client(mut s: ClientSetup, mut rx: Receiver) {
    let result = async {
        let permit = s.permits.acquire().await?;
        let mut conn = WsConn::connect(&s.addr, "/ws", &s.token, s.buffer).await?;
        match conn.next_text().await?.map(|p| kind_name(&p)) {
            Some(name) if name == "hello" => {}
            other => bail!("expected hello after the upgrade, got {other:?}"),
        }
        drop(permit);
        let _ = s.events.send(SetupEvent::Connected);
        s.go.wait_for(|go| *go).await?;
        let _permit = s.permits.acquire().await?;
        rx.last_seq = join(&mut conn, &s.room).await?;
        if !s.is_sender {
            return Ok((conn, None));
        }
        let (conn, writer) = conn.share_writer()?;
        let writer = Arc::new(writer);
        rx.writer = Some(Arc::clone(&writer));
        Ok::<_, anyhow::Error>((conn, Some(writer)))
    }
    .await;
    match result {
        Ok((conn, writer)) => {
            let _ = s.events.send(SetupEvent::Joined(s.i, writer));
            receive(conn, rx).await;
        }
        Err(e) => {
            let _ = s.events.send(SetupEvent::Failed(format!("client {}: {e:#}", s.i)));
        }
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn kind_name(p: &[u8]) -> String {
    let rest = p.strip_prefix(b"{\"type\":\"").unwrap_or(p);
    let end = rest.iter().position(|&b| b == b'"').unwrap_or(rest.len().min(40));
    String::from_utf8_lossy(&rest[..end]).into_owned()
}

/// Joins `room` and waits for the ack; returns the room's latest seq.
pub async fn join(conn: &mut WsConn, room: &str) -> anyhow::Result<u64> {
    let frame = format!(r#"{{"type":"join_room","room":"{room}"}}"#);
    conn.send(OP_TEXT, frame.as_bytes()).await?;
    loop {
        let Some(p) = conn.next_text().await? else { bail!("connection closed while joining {room}") };
        match kind(&p) {
            Kind::Ack => return Ok(seq(&p).unwrap_or(0)),
            Kind::Error => bail!("join_room {room}: {}", String::from_utf8_lossy(&p)),
            _ => {} // others joining before us
        }
    }
}

/// One measured window.
#[derive(Clone, Debug)]
pub struct Phase {
    pub rate: f64,
    pub window_s: f64,
    /// The measured window on the bench's clock: messages scheduled in `start..end` count.
    pub window_ns: (u64, u64),
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub ooo_seq: u64,
    pub ooo_sender: u64,
    pub acks: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub send_errors: u64,
    pub unflushed_bytes: usize,
    pub closed: u64,
    pub first_close: Option<String>,
    pub latency: Summary,
    pub same_node: Summary,
    pub cross_node: Summary,
    pub send_lag: Summary,
    pub cpu: CpuDelta,
}

impl Phase {
    pub fn deliveries_per_s(&self) -> f64 {
        self.delivered as f64 / self.window_s
    }

    pub fn out_of_order(&self) -> u64 {
        self.ooo_seq + self.ooo_sender
    }

    /// Nothing lost, duplicated, reordered or refused.
    pub fn correct(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.out_of_order() == 0
            && self.errors == 0
            && self.send_errors == 0
            && self.closed == 0
            && self.expected > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_frame_is_scanned_without_parsing() {
        let mut content = Vec::new();
        encode_send(&mut content, "r1", 42, 7, 1_234_567_890, 100, false);
        let v: serde_json::Value = serde_json::from_slice(&content).expect("the send frame is JSON");
        assert!(v.get("clientId").is_none(), "{v}");
        encode_send(&mut content, "r1", 42, 7, 1_234_567_890, 100, true);
        let v: serde_json::Value = serde_json::from_slice(&content).expect("the send frame is JSON");
        assert_eq!(v["clientId"], "0000002a-0000-4000-8000-000000000007");
        let text = v["content"].as_str().unwrap();
        assert_eq!(text.len(), 100);
        let frame = format!(
            r#"{{"type":"message","id":"x","room":"r1","seq":981,"senderId":"y","senderEmail":"a@b.c","content":"{text}","createdAt":"z"}}"#
        );
        assert_eq!(kind(frame.as_bytes()), Kind::Message);
        assert_eq!(seq(frame.as_bytes()), Some(981));
        let sched_unix_ns = clock::to_unix(1_234_567_890);
        assert_eq!(tag(frame.as_bytes()), Some(Tag { sender: 42, k: 7, sched_unix_ns }));
        assert_eq!(clock::from_unix(sched_unix_ns), 1_234_567_890);
        assert!(text.starts_with(&format!("~B~000042~0000000007~{sched_unix_ns:019}~")), "{text}");
        assert_eq!(kind(br#"{"type":"ack","seq":3}"#), Kind::Ack);
        assert_eq!(kind(br#"{"room":"r","type":"error"}"#), Kind::Error);
        assert_eq!(kind(br#"{"type":"system","room":"r"}"#), Kind::Other);
    }

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
