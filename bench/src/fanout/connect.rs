//! Setting the clients up: every connection opened (at most so many at once) and greeted with
//! hello, then every room joined; each connection's task then keeps receiving until the
//! [`Clients`] are dropped.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use anyhow::{Context as _, bail};
use tokio::{
    sync::{Semaphore, mpsc, watch},
    task::JoinHandle,
};

use super::{
    Plan,
    pacer::Sender,
    receive::{Batch, Counters, Hists, Receiver, SHARDS, Shared, Track, receive},
    scan::{Kind, kind, seq},
};
use crate::{
    clock,
    nodes::Targets,
    procfs::servers_rss_kib,
    ws::{OP_TEXT, SharedWriter, WsConn},
};

/// Read buffer per fan-out connection.
pub const FANOUT_BUFFER: usize = 16 * 1024;

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
