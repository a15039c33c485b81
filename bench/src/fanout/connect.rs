//! Setting the clients up: every connection opened (at most so many at once) and greeted with
//! hello, then every room joined, in one or more measured rounds; each connection's task then
//! keeps receiving until the [`Clients`] are dropped.
//!
//! Between rounds, and while the others finish theirs, a connection keeps reading (answering
//! the server's pings), so that a setup of minutes does not look idle to the server.

use std::{
    ops::Range,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::{
    sync::{Semaphore, mpsc, watch},
    task::JoinHandle,
};

use super::{
    Plan,
    pacer::Sender,
    receive::{Batch, Counters, Hists, Receiver, SHARDS, Shared, receive},
    scan::{Kind, kind, seq},
};
use crate::{
    clock,
    nodes::Targets,
    procfs::{CpuDelta, CpuSample, servers_rss_kib},
    ws::{OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, SharedWriter, WsConn},
};

/// Read buffer per fan-out connection.
pub const FANOUT_BUFFER: usize = 16 * 1024;

/// How the clients join their rooms.
#[derive(Clone, Debug)]
pub struct Joining {
    /// Connections being opened at once, and connections joining at once.
    pub concurrency: usize,
    /// `join_room`s a connection keeps unacknowledged.
    pub window: usize,
    /// The memberships of the [`Plan`] are joined in rounds, by number: round `r` joins
    /// memberships `round_ends[r - 1]..round_ends[r]` (the first from 0), and starts once the
    /// round before it is acked everywhere. The last end is `plan.memberships()`.
    pub round_ends: Vec<usize>,
    /// Say on stderr how far a round is, this often.
    pub progress: Option<Duration>,
}

impl Joining {
    /// Every membership in one round, one join at a time per connection.
    pub fn at_once(plan: &Plan, concurrency: usize) -> Self {
        Self { concurrency, window: 1, round_ends: vec![plan.memberships()], progress: None }
    }

    /// The memberships of each round.
    fn rounds(&self) -> Vec<Range<usize>> {
        let starts = std::iter::once(0).chain(self.round_ends.iter().copied());
        starts.zip(&self.round_ends).map(|(start, &end)| start..end).collect()
    }
}

/// What setting the clients up took.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    pub connect_secs: f64,
    /// All rounds of joins together.
    pub join_secs: f64,
    /// Servers' RSS once every connection was open, before any joined (KiB).
    pub rss_connected_kib: u64,
    pub rounds: Vec<JoinRound>,
}

/// One round of joins.
#[derive(Clone, Debug, Default)]
pub struct JoinRound {
    /// `join_room`s acked.
    pub joins: u64,
    pub secs: f64,
    /// Servers' RSS once the round was acked (KiB).
    pub rss_kib: u64,
    /// CPU over the round.
    pub cpu: CpuDelta,
}

impl JoinRound {
    pub fn per_s(&self) -> f64 {
        if self.secs > 0.0 { self.joins as f64 / self.secs } else { 0.0 }
    }
}

/// The coordinator's side of the setup: what the client tasks say, and the go for each round.
struct Coordinator {
    events: mpsc::UnboundedReceiver<SetupEvent>,
    /// How many rounds of joins may have started.
    go: watch::Sender<usize>,
}

enum SetupEvent {
    Connected,
    /// Client `i` is through a round, with this many joins acked; after the last round, with
    /// its writer if it sends.
    Joined {
        i: usize,
        acked: u64,
        writer: Option<Arc<SharedWriter>>,
    },
    Failed(String),
}

/// Connected, joined clients and their receivers.
pub struct Clients {
    pub plan: Plan,
    pub setup: Setup,
    pub(super) shared: Arc<Shared>,
    pub(super) counters: Vec<Arc<Counters>>,
    pub(super) senders: Vec<Sender>,
    tasks: Vec<JoinHandle<()>>,
    pub(super) pids: Vec<i32>,
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
    /// Opens every connection (at most `concurrency` at once), then joins every room, one join
    /// in flight per connection; each connection's task then keeps receiving until dropped.
    pub async fn open(
        targets: &Targets,
        tokens: &[String],
        plan: Plan,
        concurrency: usize,
        buffer: usize,
    ) -> anyhow::Result<Self> {
        let joining = Joining::at_once(&plan, concurrency);
        Self::open_joining(targets, tokens, plan, &joining, buffer).await
    }

    /// [`Self::open`], joining as `joining` says: each round measured on its own.
    pub async fn open_joining(
        targets: &Targets,
        tokens: &[String],
        plan: Plan,
        joining: &Joining,
        buffer: usize,
    ) -> anyhow::Result<Self> {
        plan.check()?;
        if joining.round_ends.last() != Some(&plan.memberships()) || !joining.round_ends.is_sorted() {
            bail!("the rounds of joins must end in order, the last with the last membership");
        }
        if tokens.len() < plan.clients {
            bail!("{} tokens for {} clients", tokens.len(), plan.clients);
        }
        let started = clock::now_ns();
        let (mut clients, mut setup) = Self::spawn(targets, tokens, plan, joining, buffer);
        let n = clients.plan.clients;
        for _ in 0..n {
            match setup.events.recv().await {
                Some(SetupEvent::Connected) => {}
                Some(SetupEvent::Failed(e)) => bail!("opening connections failed: {e}"),
                _ => bail!("opening connections failed"),
            }
        }
        let connected = clock::now_ns();
        clients.setup.connect_secs = (connected - started) as f64 / 1e9;
        clients.setup.rss_connected_kib = servers_rss_kib(&clients.pids);
        let mut writers = vec![None; n];
        for round in 0..joining.round_ends.len() {
            let joined = clients.join_round(&mut setup, round, joining, &mut writers).await?;
            clients.setup.rounds.push(joined);
        }
        clients.setup.join_secs = (clock::now_ns() - connected) as f64 / 1e9;
        for (j, seat) in clients.plan.senders.iter().enumerate() {
            clients.senders.push(Sender {
                id: j,
                writer: Arc::clone(writers[seat.client].as_ref().context("a sender has no writer")?),
                room: clients.plan.room_name(seat.room),
                members: clients.plan.members(seat.room),
                k: 0,
                pending: false,
            });
        }
        Ok(clients)
    }

    /// Starts every client's task; they connect at once, and join as `setup.go` allows.
    fn spawn(
        targets: &Targets,
        tokens: &[String],
        plan: Plan,
        joining: &Joining,
        buffer: usize,
    ) -> (Self, Coordinator) {
        let shared = Arc::new(Shared {
            window_start: AtomicU64::new(u64::MAX),
            window_end: AtomicU64::new(u64::MAX),
            hists: (0..SHARDS).map(|_| Mutex::new(Hists::new())).collect(),
            sender_node: plan.senders.iter().map(|s| plan.node_of(s.client)).collect(),
            sender_room: plan.senders.iter().map(|s| s.room).collect(),
            closed: AtomicU64::new(0),
            first_close: Mutex::new(None),
            first_error: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        // Rooms somebody sends into: their members receive, and watch the room's seq.
        let mut sending_rooms = vec![false; plan.rooms];
        let mut sends = vec![false; plan.clients];
        for seat in &plan.senders {
            sending_rooms[seat.room] = true;
            sends[seat.client] = true;
        }
        let (plan, sending_rooms) = (Arc::new(plan), Arc::<[bool]>::from(sending_rooms));
        let rounds = Arc::<[Range<usize>]>::from(joining.rounds());
        let permits = Arc::new(Semaphore::new(joining.concurrency.max(1)));
        let (events_tx, events) = mpsc::unbounded_channel();
        let (go, go_rx) = watch::channel(0);
        let mut counters = Vec::with_capacity(plan.clients);
        let mut tasks = Vec::with_capacity(plan.clients);
        for (i, token) in tokens.iter().enumerate().take(plan.clients) {
            let c = Arc::new(Counters::default());
            counters.push(Arc::clone(&c));
            let receives = plan.rooms_of(i, 0..plan.memberships()).any(|r| sending_rooms[r]);
            let rx = Receiver {
                node: plan.node_of(i),
                shard: i % SHARDS,
                shared: Arc::clone(&shared),
                counters: c,
                writer: None,
                tracks: Vec::new(),
                seqs: Vec::new(),
                batch: Batch::default(),
                // Connections in no room with a sender carry no latency samples.
                samples: Vec::with_capacity(if receives { 256 } else { 0 }),
                read_delay_us: 0,
                stamped: false,
            };
            let setup = ClientSetup {
                i,
                addr: targets.nodes[plan.node_of(i)].addr.clone(),
                token: token.clone(),
                plan: Arc::clone(&plan),
                sending_rooms: Arc::clone(&sending_rooms),
                rounds: Arc::clone(&rounds),
                window: joining.window.max(1),
                buffer,
                is_sender: sends[i],
                permits: Arc::clone(&permits),
                events: events_tx.clone(),
                go: go_rx.clone(),
            };
            tasks.push(tokio::spawn(run_client(setup, rx)));
        }
        let pids = targets.pids();
        let plan = Arc::unwrap_or_clone(plan);
        let clients = Self { setup: Setup::default(), shared, counters, senders: Vec::new(), tasks, pids, plan };
        (clients, Coordinator { events, go })
    }

    /// Lets round `round` of joins start, and waits until every client is through it; keeps
    /// the writers the senders hand over after the last round.
    async fn join_round(
        &self,
        setup: &mut Coordinator,
        round: usize,
        joining: &Joining,
        writers: &mut [Option<Arc<SharedWriter>>],
    ) -> anyhow::Result<JoinRound> {
        let (started, cpu_start) = (clock::now_ns(), CpuSample::take(&self.pids));
        setup.go.send(round + 1).context("no client is waiting")?;
        let (n, mut joins) = (self.plan.clients, 0);
        let mut progress =
            joining.progress.map(|every| tokio::time::interval_at((Instant::now() + every).into(), every));
        for done in 0..n {
            let event = match &mut progress {
                None => setup.events.recv().await,
                Some(ticks) => loop {
                    tokio::select! {
                        event = setup.events.recv() => break event,
                        _ = ticks.tick() => eprintln!(
                            "confab-bench: joins, round {} of {}: {done} of {n} connections through ({:.0} s)",
                            round + 1,
                            joining.round_ends.len(),
                            (clock::now_ns() - started) as f64 / 1e9
                        ),
                    }
                },
            };
            match event {
                Some(SetupEvent::Joined { i, acked, writer }) => {
                    joins += acked;
                    if writer.is_some() {
                        writers[i] = writer;
                    }
                }
                Some(SetupEvent::Failed(e)) => bail!("joining rooms failed: {e}"),
                _ => bail!("joining rooms failed"),
            }
        }
        let cpu = cpu_start.until(&CpuSample::take(&self.pids));
        let secs = (clock::now_ns() - started) as f64 / 1e9;
        Ok(JoinRound { joins, secs, rss_kib: servers_rss_kib(&self.pids), cpu })
    }

    pub fn server_pids(&self) -> &[i32] {
        &self.pids
    }

    /// Connections closed since setup, and the first reason.
    pub fn closed(&self) -> (u64, Option<String>) {
        (self.shared.closed.load(Ordering::Relaxed), self.shared.first_close.lock().expect("no panics").clone())
    }
}

/// What a client task needs to set itself up.
struct ClientSetup {
    i: usize,
    addr: String,
    token: String,
    plan: Arc<Plan>,
    sending_rooms: Arc<[bool]>,
    rounds: Arc<[Range<usize>]>,
    window: usize,
    buffer: usize,
    is_sender: bool,
    permits: Arc<Semaphore>,
    events: mpsc::UnboundedSender<SetupEvent>,
    /// How many rounds of joins may have started.
    go: watch::Receiver<usize>,
}

/// One client: connect (waiting for hello), then for each round wait for the go and join that
/// round's rooms, then receive until dropped.
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
        let last = s.rounds.len() - 1;
        let mut acked = 0;
        for (round, within) in s.rounds.iter().enumerate() {
            serve_while(&mut conn, s.go.wait_for(|go| *go > round)).await?.context("setup abandoned")?;
            let rooms: Vec<usize> = s.plan.rooms_of(s.i, within.clone()).collect();
            acked = if rooms.is_empty() {
                0
            } else {
                let _permit = serve_while(&mut conn, s.permits.acquire()).await??;
                let sending = &s.sending_rooms;
                join_rooms(&mut conn, &s.plan, &rooms, s.window, |room, seq| {
                    if sending[room] {
                        rx.joined(room, seq);
                    }
                })
                .await?
            };
            if round < last {
                let _ = s.events.send(SetupEvent::Joined { i: s.i, acked, writer: None });
            }
        }
        if !s.is_sender {
            return Ok((conn, acked, None));
        }
        let (conn, writer) = conn.share_writer()?;
        let writer = Arc::new(writer);
        rx.writer = Some(Arc::clone(&writer));
        Ok::<_, anyhow::Error>((conn, acked, Some(writer)))
    }
    .await;
    match result {
        Ok((conn, acked, writer)) => {
            let _ = s.events.send(SetupEvent::Joined { i: s.i, acked, writer });
            receive(conn, rx).await;
        }
        Err(e) => {
            let _ = s.events.send(SetupEvent::Failed(format!("client {}: {e:#}", s.i)));
        }
    }
}

/// Awaits `wait` while reading the connection (answering pings, dropping events): a
/// connection that waits for its turn, or for the others, must still look alive to the server,
/// which closes one it has heard nothing from for `ws.idle_timeout`.
async fn serve_while<F: Future>(conn: &mut WsConn, wait: F) -> anyhow::Result<F::Output> {
    tokio::pin!(wait);
    loop {
        while let Some(frame) = conn.next_frame()? {
            conn.consume(&frame);
            match frame.opcode {
                OP_PING => {
                    let pong = conn.payload(&frame).to_vec();
                    conn.send(OP_PONG, &pong).await?;
                }
                OP_CLOSE => bail!("closed by the server: {}", close_reason(conn.payload(&frame))),
                _ => {}
            }
        }
        tokio::select! {
            done = &mut wait => return Ok(done),
            more = conn.fill() => if !more? {
                bail!("connection closed by the server");
            },
        }
    }
}

/// The next text frame, answering pings; an error that says why if the connection ends.
async fn next_text(conn: &mut WsConn) -> anyhow::Result<Vec<u8>> {
    loop {
        while let Some(frame) = conn.next_frame()? {
            conn.consume(&frame);
            match frame.opcode {
                OP_TEXT => return Ok(conn.payload(&frame).to_vec()),
                OP_PING => {
                    let pong = conn.payload(&frame).to_vec();
                    conn.send(OP_PONG, &pong).await?;
                }
                OP_CLOSE => bail!("closed by the server: {}", close_reason(conn.payload(&frame))),
                _ => {}
            }
        }
        if !conn.fill().await? {
            bail!("connection closed by the server");
        }
    }
}

fn close_reason(p: &[u8]) -> String {
    let code = if p.len() >= 2 { u16::from_be_bytes([p[0], p[1]]) } else { 1005 };
    format!("{code} {}", String::from_utf8_lossy(p.get(2..).unwrap_or_default()))
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

/// Joins the plan's `rooms`, keeping up to `window` `join_room`s unacknowledged, each tagged
/// with its room's number as `ref`; calls `joined(room, seq)` for each ack. Returns how many
/// were acked (all of them: a refusal is an error that names the server's code).
pub async fn join_rooms(
    conn: &mut WsConn,
    plan: &Plan,
    rooms: &[usize],
    window: usize,
    mut joined: impl FnMut(usize, u64),
) -> anyhow::Result<u64> {
    let mut out = Vec::new();
    let (mut sent, mut acked) = (0, 0);
    while acked < rooms.len() {
        out.clear();
        while sent < rooms.len() && sent - acked < window {
            let room = rooms[sent];
            let frame = format!(r#"{{"type":"join_room","ref":"{room}","room":"{}"}}"#, plan.room_name(room));
            conn.encode(&mut out, OP_TEXT, frame.as_bytes());
            sent += 1;
        }
        if !out.is_empty() {
            conn.write_all(&out).await?;
        }
        let p = next_text(conn).await.with_context(|| format!("joining rooms ({acked} of {} acked)", rooms.len()))?;
        match kind(&p) {
            Kind::Ack => {
                let (room, seq) = join_ack(&p)?;
                if !rooms[acked..sent].contains(&room) {
                    bail!("an ack for room {room}, which is not being joined: {}", String::from_utf8_lossy(&p));
                }
                joined(room, seq);
                acked += 1;
            }
            Kind::Error => bail!("{}", refusal(&p, plan)),
            _ => {} // `system` joins of others, `presence`
        }
    }
    Ok(acked as u64)
}

/// The room number (from `ref`) and seq of a `join_room` ack.
fn join_ack(p: &[u8]) -> anyhow::Result<(usize, u64)> {
    let v: serde_json::Value = serde_json::from_slice(p).context("an ack that is not JSON")?;
    let room = v["ref"].as_str().and_then(|r| r.parse().ok());
    match (room, v["seq"].as_u64()) {
        (Some(room), Some(seq)) => Ok((room, seq)),
        _ => bail!("a join_room ack without its ref or seq: {v}"),
    }
}

/// What a refused `join_room` says: the room, the server's code and message.
fn refusal(p: &[u8], plan: &Plan) -> String {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(p) else {
        return format!("the server answered with an error: {}", String::from_utf8_lossy(p));
    };
    let room = v["ref"].as_str().and_then(|r| r.parse::<usize>().ok()).map(|r| plan.room_name(r));
    let code = v["code"].as_str().unwrap_or("?");
    let message = v["message"].as_str().unwrap_or("");
    let mut why = format!("join_room {} refused: {code}: {message}", room.as_deref().unwrap_or("?"));
    if code == "invalid_payload" && plan.rooms_per_client > 256 {
        why.push_str(" (the server's chat.max_rooms_per_session is 256 by default: for spawned nodes, pass --node-env CONFAB_CHAT__MAX_ROOMS_PER_SESSION=N)");
    }
    if code == "rate_limited" {
        why.push_str(" (start the nodes with CONFAB_LIMITS__JOINS_PER_SECOND=0)");
    }
    why
}
