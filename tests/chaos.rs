//! The chaos suite: three real `confab serve` processes on one PostgreSQL database and a private
//! `redis-server`, with clients that behave as the web client does (resume every room with
//! `since` after a reconnect, retry an unacknowledged send with the same `clientId`, back off
//! with jitter), while the test breaks things: `kill -9` of a node, a Redis restart, every
//! database connection killed for 5 s, a consumer that stops reading, and a reconnect storm of
//! thousands of clients after a node restart.
//!
//! Each scenario prints one line (sent / acked / delivered / lost / duplicated / reordered, the
//! reconnects, and each surviving node's descriptors and RSS before and after) and asserts what
//! PROTOCOL.md promises: every acknowledged message reaches every member of its room exactly
//! once, in `seq` order, whatever the failure; and once the clients are gone the nodes hold
//! about what they held before. RELIABILITY.md quotes these lines.
//!
//! Needs `CONFAB_TEST_DATABASE_URL`, `CONFAB_TEST_REDIS_URL` (as the sign that Redis, and so
//! `redis-server`, is installed) and the `confab` binary cargo builds for the tests. The
//! scenarios run one at a time: they measure the nodes, and the machine has two cores.
//! `CONFAB_CHAOS_STORM_CLIENTS` changes the size of the storm (default 5,000).

// Only part of the shared test infrastructure is used here.
#[allow(unused_macros, unused_imports)]
mod common;

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Backend, TestDb, service_url};
use futures_util::{SinkExt as _, StreamExt as _};
use rand::Rng as _;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{Connection as _, PgConnection};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::watch,
};
use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};

const NODES: usize = 3;
/// Bound on starting a node or Redis.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// A scenario fails when its clients make no progress (no client joins, receives a seq it had
/// not seen, or finishes) for this long: a hang, told apart from a busy machine, on which the
/// storm takes ~40-50 s of a quiet machine's debug build and two or three times that under load.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// And a backstop on a whole scenario that progresses too slowly to be believed.
const SCENARIO_CAP: Duration = Duration::from_secs(600);
/// Clients that connect at once when a scenario starts.
const JOIN_WAVE: usize = 250;
const PASSWORD: &str = "chaos suite password";

/// One scenario at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// Processes: Redis and the nodes.

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A `redis-server` of this test's own, persisting nothing, restartable on the same port.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    async fn start() -> Self {
        let mut redis = Self { port: free_port(), child: None };
        redis.spawn().await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (CONFAB_TEST_REDIS_URL says Redis is here)");
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                let mut reply = [0u8; 7];
                if conn.write_all(b"PING\r\n").await.is_ok()
                    && conn.read_exact(&mut reply).await.is_ok()
                    && &reply == b"+PONG\r\n"
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not answer on {}", self.port);
            // The pause between polls, bounded by the deadline.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `confab serve` process on a fixed port, so that it can be killed and started again.
struct Node {
    index: usize,
    addr: SocketAddr,
    env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
}

impl Node {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_confab"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("CONFAB_LISTEN", self.addr.to_string())
            .env("CONFAB_NODE_ID", format!("chaos-{}", self.index))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn confab serve");
        self.child = Some(child);
    }

    async fn wait_ready(&mut self, http: &reqwest::Client) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(resp) = http.get(format!("http://{}/ready", self.addr)).send().await
                && resp.status().is_success()
            {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait")) {
                panic!("node {} exited with {status}:\n{}", self.index, self.log_tail());
            }
            assert!(Instant::now() < deadline, "node {} not ready:\n{}", self.index, self.log_tail());
            // The pause between polls, bounded by the deadline.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`: no shutdown, no goodbyes.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Open descriptors and resident memory (KiB), from /proc.
    fn usage(&self) -> Option<Usage> {
        let pid = self.pid()?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
        Some(Usage { pid, fds, rss_kib })
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Clone, Copy, Debug)]
struct Usage {
    pid: u32,
    fds: usize,
    rss_kib: u64,
}

struct Cluster {
    nodes: Vec<Node>,
    redis: Redis,
    db: TestDb,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Three nodes on a fresh database and a private Redis, or None (after saying why) when
    /// the services are not configured.
    async fn start(extra_env: &[(&str, &str)]) -> Option<Self> {
        service_url("CONFAB_TEST_DATABASE_URL")?;
        service_url("CONFAB_TEST_REDIS_URL")?;
        let db = TestDb::create(Backend::Postgres).await;
        let redis = Redis::start().await;
        let dir = tempfile::Builder::new().prefix("confab-chaos-").tempdir().expect("temp dir");
        let mut env: Vec<(String, String)> = [
            ("CONFAB_DATABASE__URL", db.url()),
            ("CONFAB_REDIS__URL", redis.url().as_str()),
            ("CONFAB_AUTH__JWT_SECRET", "chaos-suite-secret-that-is-long-enough-for-hs256"),
            ("CONFAB_AUTH__ARGON2__MEMORY_KIB", "64"),
            ("CONFAB_AUTH__ARGON2__ITERATIONS", "1"),
            // One machine plays thousands of clients from one address and a handful of users.
            ("CONFAB_LIMITS__AUTH_PER_MINUTE", "0"),
            ("CONFAB_LIMITS__MESSAGES_PER_SECOND", "0"),
            ("CONFAB_LIMITS__JOINS_PER_SECOND", "0"),
            ("CONFAB_WS__MAX_SESSIONS_PER_USER", "0"),
            ("CONFAB_HTTP__MAX_CONNECTIONS_PER_IP", "0"),
            ("CONFAB_LOG_LEVEL", "warn"),
            ("CONFAB_SHUTDOWN__GRACE", "2s"),
            // As the systemd unit and the image run it.
            ("MALLOC_ARENA_MAX", "2"),
            ("MALLOC_MMAP_THRESHOLD_", "1048576"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        env.extend(extra_env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let nodes = (0..NODES)
            .map(|index| Node {
                index,
                addr: format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
                env: env.clone(),
                child: None,
                log: dir.path().join(format!("node-{index}.log")),
            })
            .collect();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("http client");
        let mut cluster = Self { nodes, redis, db, http, _dir: dir };
        // The first applies the migrations; the others find them applied.
        cluster.nodes[0].spawn();
        cluster.nodes[0].wait_ready(&cluster.http).await;
        for i in 1..NODES {
            cluster.restart(i).await;
        }
        Some(cluster)
    }

    async fn restart(&mut self, i: usize) {
        self.nodes[i].spawn();
        self.nodes[i].wait_ready(&self.http).await;
    }

    fn ws_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("ws://{}/ws", n.addr)).collect()
    }

    /// `count` users, registered round-robin across the nodes; their access tokens.
    async fn users(&self, count: usize) -> Vec<String> {
        let mut tokens = Vec::with_capacity(count);
        for i in 0..count {
            let node = &self.nodes[i % NODES];
            let resp = self
                .http
                .post(format!("http://{}/api/auth/register", node.addr))
                .json(&json!({ "email": format!("user{i}@chaos.example"), "password": PASSWORD }))
                .send()
                .await
                .expect("register");
            assert!(resp.status().is_success(), "register user{i}: {}", resp.status());
            let body: Value = resp.json().await.expect("register body");
            tokens.push(body["token"].as_str().expect("token").to_owned());
        }
        tokens
    }

    /// The latest seq of every room with messages, from the first live node.
    async fn latest_seqs(&self, token: &str) -> HashMap<String, i64> {
        let node = self.nodes.iter().find(|n| n.child.is_some()).expect("a live node");
        let resp = self
            .http
            .get(format!("http://{}/api/rooms", node.addr))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET /api/rooms");
        assert!(resp.status().is_success(), "GET /api/rooms: {}", resp.status());
        let body: Value = resp.json().await.expect("rooms body");
        body["rooms"]
            .as_array()
            .expect("rooms")
            .iter()
            .map(|r| (r["name"].as_str().expect("name").to_owned(), r["lastSeq"].as_i64().expect("lastSeq")))
            .collect()
    }

    fn usage(&self) -> Vec<Option<Usage>> {
        self.nodes.iter().map(Node::usage).collect()
    }

    /// Kills every connection to the test's database, again and again, for `outage`: to the
    /// nodes, PostgreSQL is down (new connections are refused by the killing, too).
    async fn database_outage(&self, outage: Duration) -> usize {
        let admin = std::env::var("CONFAB_TEST_DATABASE_URL").expect("set");
        let name = self.db.pg_name().expect("postgres").to_owned();
        let mut conn = PgConnection::connect(&admin).await.expect("admin connection");
        let until = Instant::now() + outage;
        let mut killed = 0;
        while Instant::now() < until {
            let rows: Vec<(bool,)> = sqlx::query_as(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            )
            .bind(&name)
            .fetch_all(&mut conn)
            .await
            .expect("pg_terminate_backend");
            killed += rows.iter().filter(|(k,)| *k).count();
            // Killing in a tight loop: the pause is the outage's resolution, not a sync point.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = conn.close().await;
        killed
    }
}

// ---------------------------------------------------------------------------------------------
// Clients.

#[derive(Clone)]
struct ClientSpec {
    token: String,
    /// The node it connects to first (and again after a drop while that node answers).
    home: usize,
    rooms: Vec<String>,
    /// Messages to send (round-robin over its rooms), one in flight at a time.
    messages: usize,
    every: Duration,
    content_len: usize,
    /// Stops reading for this long once it has received this many messages.
    pause: Option<(usize, Duration)>,
}

/// Shared by the clients of one scenario.
struct Shared {
    urls: Vec<String>,
    clients: usize,
    /// Senders still sending.
    senders: watch::Sender<usize>,
    /// Clients that have joined their rooms for the first time.
    joined: watch::Sender<usize>,
    /// Open sessions per node.
    sessions: Vec<AtomicUsize>,
    /// The most sessions each node held at once.
    peak_sessions: Vec<AtomicUsize>,
    /// Each room's final seq, once the senders are done: the clients read up to it.
    targets: watch::Receiver<Option<HashMap<String, i64>>>,
    /// Where each client is, for the report of a scenario whose clients do not catch up.
    status: Vec<std::sync::Mutex<Status>>,
    /// Steps forward of all clients: joins, seqs received for the first time, finishes.
    progress: AtomicUsize,
}

impl Shared {
    fn advanced(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits for `until` while the clients make progress; None when they stalled for
    /// [`STALL_TIMEOUT`] or the scenario ran past `cap`.
    async fn progressing<T>(&self, cap: Instant, until: impl Future<Output = T>) -> Option<T> {
        tokio::pin!(until);
        let mut seen = self.progress.load(Ordering::Relaxed);
        let mut still_since = Instant::now();
        let mut check = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                out = &mut until => return Some(out),
                _ = check.tick() => {
                    let now = self.progress.load(Ordering::Relaxed);
                    if now != seen {
                        seen = now;
                        still_since = Instant::now();
                    } else if still_since.elapsed() > STALL_TIMEOUT {
                        return None;
                    }
                    if Instant::now() > cap {
                        return None;
                    }
                }
            }
        }
    }
}

/// One client's state as last seen, for the failure report.
#[derive(Debug, Default)]
struct Status {
    /// The node of its open session, if one is open.
    node: Option<usize>,
    sessions: usize,
    /// Rooms whose join is not answered yet in the open session.
    unjoined: usize,
    /// The highest seq received per room.
    last_seq: Vec<(String, i64)>,
    pending_send: bool,
    errors: usize,
    done: bool,
}

#[derive(Default)]
struct Outcome {
    rooms: Vec<String>,
    /// Per room: every seq received, in arrival order, with the clientId in its content.
    received: HashMap<String, Vec<(i64, String)>>,
    /// clientId → (room, seq) as acknowledged.
    acked: HashMap<String, (String, i64)>,
    sent: usize,
    reconnects: usize,
    /// Sends and joins answered with an error (the store or bus was down) and so retried.
    errors: usize,
    closes_1013: usize,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(rename = "ref", default, borrow)]
    cmd_ref: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<i64>,
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
}

struct Pending {
    client_id: String,
    room: String,
    content: String,
    /// The ref of the latest attempt: only its answer counts.
    attempt_ref: Option<String>,
    retry_at: Option<tokio::time::Instant>,
}

struct Client {
    spec: ClientSpec,
    shared: Arc<Shared>,
    /// This client's place in `shared.status`.
    index: usize,
    out: Outcome,
    last_seq: HashMap<String, i64>,
    pending: Option<Pending>,
    next_message: usize,
    attempts: usize,
    paused: bool,
    joined_once: bool,
}

enum SessionEnd {
    Done,
    Dropped,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Client {
    async fn run(spec: ClientSpec, shared: Arc<Shared>, index: usize) -> Outcome {
        let mut client = Self {
            last_seq: spec.rooms.iter().map(|r| (r.clone(), 0)).collect(),
            out: Outcome { rooms: spec.rooms.clone(), ..Outcome::default() },
            spec,
            shared,
            index,
            pending: None,
            next_message: 0,
            attempts: 0,
            paused: false,
            joined_once: false,
        };
        let mut node = client.spec.home;
        let mut failures = 0u32;
        loop {
            let url = format!("{}?access_token={}", client.shared.urls[node], client.spec.token);
            let Ok(Ok((ws, _))) =
                tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(&url)).await
            else {
                // Refused (the node is down or busy): back off with jitter, then the next node.
                failures += 1;
                node = (node + 1) % client.shared.urls.len();
                backoff(failures).await;
                continue;
            };
            failures = 0;
            let open = client.shared.sessions[node].fetch_add(1, Ordering::SeqCst) + 1;
            client.shared.peak_sessions[node].fetch_max(open, Ordering::SeqCst);
            client.update_status(|st| {
                st.node = Some(node);
                st.sessions += 1;
            });
            let end = client.session(ws).await;
            client.shared.sessions[node].fetch_sub(1, Ordering::SeqCst);
            client.update_status(|st| st.node = None);
            match end {
                SessionEnd::Done => {
                    client.update_status(|st| st.done = true);
                    client.shared.advanced();
                    return client.out;
                }
                SessionEnd::Dropped => {
                    client.out.reconnects += 1;
                    backoff(1).await;
                }
            }
        }
    }

    fn is_sender(&self) -> bool {
        self.spec.messages > 0
    }

    fn update_status(&self, f: impl FnOnce(&mut Status)) {
        let mut st = self.shared.status[self.index].lock().expect("status");
        f(&mut st);
    }

    /// Records what the failure report shows of this client.
    fn record(&self, unjoined: &HashSet<String>) {
        self.update_status(|st| {
            st.unjoined = unjoined.len();
            st.last_seq = self.spec.rooms.iter().map(|r| (r.clone(), self.last_seq[r])).collect();
            st.pending_send = self.pending.is_some();
            st.errors = self.out.errors;
        });
    }

    async fn session(&mut self, mut ws: Ws) -> SessionEnd {
        // Rejoin every room from where this client stopped.
        let mut unjoined: HashSet<String> = HashSet::new();
        for room in self.spec.rooms.clone() {
            if !self.join(&mut ws, &room).await {
                return SessionEnd::Dropped;
            }
            unjoined.insert(room);
        }
        self.record(&unjoined);
        let mut rejoin_at: Vec<(tokio::time::Instant, String)> = Vec::new();
        let mut tick = tokio::time::interval(self.spec.every.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut targets = self.shared.targets.clone();
        loop {
            if unjoined.is_empty() && self.finished() {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                return SessionEnd::Done;
            }
            if let Some((after, pause)) = self.spec.pause
                && !self.paused
                && self.out.received.values().map(Vec::len).sum::<usize>() >= after
            {
                // Reads nothing for a while: the server must cut it off, not buffer for it.
                self.paused = true;
                tokio::time::sleep(pause).await;
            }
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        let handled = self.on_frame(&text, &mut unjoined, &mut rejoin_at);
                        self.record(&unjoined);
                        match handled {
                            Ok(true) => {
                                self.shared.advanced();
                                if !self.joined_once {
                                    self.joined_once = true;
                                    self.shared.joined.send_modify(|n| *n += 1);
                                }
                                // Joined everything: an unanswered send goes again, same clientId.
                                if unjoined.is_empty() && !self.send_pending(&mut ws).await {
                                    return SessionEnd::Dropped;
                                }
                            }
                            Ok(false) => {}
                            Err(e) => panic!("bad frame: {e}: {text}"),
                        }
                    }
                    Some(Ok(Message::Close(close))) => {
                        if close.is_some_and(|c| c.code == CloseCode::Again) {
                            self.out.closes_1013 += 1;
                        }
                        return SessionEnd::Dropped;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return SessionEnd::Dropped,
                },
                _ = tick.tick() => {
                    let now = tokio::time::Instant::now();
                    let due: Vec<String> = rejoin_at.iter().filter(|(at, _)| *at <= now).map(|(_, r)| r.clone()).collect();
                    rejoin_at.retain(|(at, _)| *at > now);
                    for room in due {
                        if !self.join(&mut ws, &room).await {
                            return SessionEnd::Dropped;
                        }
                    }
                    if unjoined.is_empty() && !self.on_tick(&mut ws).await {
                        return SessionEnd::Dropped;
                    }
                }
                _ = targets.changed() => {}
            }
        }
    }

    async fn join(&mut self, ws: &mut Ws, room: &str) -> bool {
        let since = self.last_seq[room];
        let frame = json!({ "type": "join_room", "room": room, "since": since, "ref": format!("j:{room}") });
        ws.send(Message::text(frame.to_string())).await.is_ok()
    }

    /// Handles one frame; true when it completed the joins.
    fn on_frame(
        &mut self,
        text: &str,
        unjoined: &mut HashSet<String>,
        rejoin_at: &mut Vec<(tokio::time::Instant, String)>,
    ) -> Result<bool, serde_json::Error> {
        let frame: Frame = serde_json::from_str(text)?;
        match frame.kind.as_ref() {
            "message" => {
                let room = frame.room.expect("message room").into_owned();
                let seq = frame.seq.expect("message seq");
                let content = frame.content.expect("message content");
                let client_id = content.split(' ').next().unwrap_or_default().to_owned();
                let last = self.last_seq.get_mut(&room).expect("a room of this client");
                if seq > *last {
                    *last = seq;
                    self.shared.advanced();
                }
                self.out.received.entry(room).or_default().push((seq, client_id));
            }
            "ack" => {
                let cmd_ref = frame.cmd_ref.expect("ack ref");
                if let Some(room) = cmd_ref.strip_prefix("j:") {
                    return Ok(unjoined.remove(room) && unjoined.is_empty());
                }
                if let Some(p) = &self.pending
                    && p.attempt_ref.as_deref() == Some(cmd_ref.as_ref())
                {
                    let p = self.pending.take().expect("pending");
                    self.out.acked.insert(p.client_id, (p.room, frame.seq.expect("ack seq")));
                }
            }
            "error" => {
                let cmd_ref = frame.cmd_ref.unwrap_or_default();
                let code = frame.code.unwrap_or_default();
                // What a client may retry: the store or bus was down for a moment.
                assert!(
                    matches!(code.as_ref(), "unavailable" | "internal"),
                    "unexpected error {code} for {cmd_ref}: {text}"
                );
                self.out.errors += 1;
                let later = tokio::time::Instant::now() + Duration::from_millis(100);
                if let Some(room) = cmd_ref.strip_prefix("j:") {
                    rejoin_at.push((later, room.to_owned()));
                } else if let Some(p) = &mut self.pending
                    && p.attempt_ref.as_deref() == Some(cmd_ref.as_ref())
                {
                    p.attempt_ref = None;
                    p.retry_at = Some(later);
                }
            }
            _ => {}
        }
        Ok(false)
    }

    /// Starts the next message, or retries the unanswered one when its time has come.
    async fn on_tick(&mut self, ws: &mut Ws) -> bool {
        if let Some(p) = &self.pending {
            if p.retry_at.is_some_and(|at| at <= tokio::time::Instant::now()) {
                return self.send_pending(ws).await;
            }
            return true;
        }
        // Traffic starts once every client is in.
        if self.next_message >= self.spec.messages || *self.shared.joined.borrow() < self.shared.clients {
            return true;
        }
        let n = self.next_message;
        self.next_message += 1;
        let room = self.spec.rooms[n % self.spec.rooms.len()].clone();
        let client_id = format!("{}-{n}", uuid::Uuid::new_v4().simple());
        let mut content = format!("{client_id} ");
        content.extend(std::iter::repeat_n('x', self.spec.content_len.saturating_sub(content.len())));
        self.pending = Some(Pending { client_id, room, content, attempt_ref: None, retry_at: None });
        self.out.sent += 1;
        self.send_pending(ws).await
    }

    /// (Re)sends the unanswered message, if any, under a new ref and the same clientId.
    async fn send_pending(&mut self, ws: &mut Ws) -> bool {
        let Some(p) = &mut self.pending else { return true };
        self.attempts += 1;
        let attempt_ref = format!("s:{}", self.attempts);
        let frame = json!({ "type": "send_message", "room": p.room, "content": p.content, "clientId": p.client_id, "ref": attempt_ref });
        p.attempt_ref = Some(attempt_ref);
        p.retry_at = None;
        ws.send(Message::text(frame.to_string())).await.is_ok()
    }

    /// Done sending, and every room read up to its final seq.
    fn finished(&mut self) -> bool {
        if self.is_sender() && self.pending.is_none() && self.next_message == self.spec.messages {
            // Counted down once.
            self.next_message += 1;
            self.shared.senders.send_modify(|n| *n -= 1);
        }
        if self.pending.is_some() || self.next_message < self.spec.messages {
            return false;
        }
        let targets = self.shared.targets.borrow();
        let Some(targets) = targets.as_ref() else { return false };
        self.spec.rooms.iter().all(|r| self.last_seq[r] >= targets.get(r).copied().unwrap_or(0))
    }
}

async fn backoff(failures: u32) {
    let base = Duration::from_millis(50) * 2u32.pow(failures.min(5));
    let jitter = rand::rng().random_range(0.5..1.5);
    tokio::time::sleep(base.mul_f64(jitter).min(Duration::from_secs(2))).await;
}

// ---------------------------------------------------------------------------------------------
// A scenario: clients, a disruption, a report.

struct Report {
    name: &'static str,
    sent: usize,
    acked: usize,
    delivered: usize,
    lost: usize,
    duplicated: usize,
    reordered: usize,
    reconnects: usize,
    errors: usize,
    closes_1013: usize,
    /// How long the clients took to connect and join, before the disruption.
    connected: Duration,
    elapsed: Duration,
    before: Vec<Option<Usage>>,
    after: Vec<Option<Usage>>,
    /// The most sessions each node held at once.
    peak_sessions: Vec<usize>,
}

impl Report {
    fn print(&self) {
        let nodes: Vec<String> = self
            .before
            .iter()
            .zip(&self.after)
            .enumerate()
            .map(|(i, (b, a))| match (b, a) {
                (Some(b), Some(a)) if a.pid == b.pid => {
                    format!("node{i} fds {}→{} rss {}→{} MiB", b.fds, a.fds, b.rss_kib / 1024, a.rss_kib / 1024)
                }
                _ => format!("node{i} restarted"),
            })
            .collect();
        eprintln!(
            "chaos {}: sent {} acked {} delivered {} lost {} duplicated {} reordered {} | reconnects {} errors {} closes-1013 {} | joined in {:.1}s, done in {:.1}s | {}",
            self.name,
            self.sent,
            self.acked,
            self.delivered,
            self.lost,
            self.duplicated,
            self.reordered,
            self.reconnects,
            self.errors,
            self.closes_1013,
            self.connected.as_secs_f64(),
            self.elapsed.as_secs_f64(),
            nodes.join(", ")
        );
    }

    /// How much resident memory node `i` may keep once the clients are gone: twice what it had,
    /// 64 MiB, and 32 KiB for each session it held at the peak. glibc keeps what closed
    /// connections freed in its arenas for the next ones (RELIABILITY.md, "Memory after a
    /// storm"): 5,000 sessions through one node left 52–106 MiB of it behind, ~11–21 KiB each.
    /// A leak grows with the traffic, not with the peak, and goes past this.
    fn rss_bound_kib(&self, i: usize, before: &Usage) -> u64 {
        let peak = self.peak_sessions.get(i).copied().unwrap_or(0) as u64;
        before.rss_kib * 2 + 64 * 1024 + peak * 32
    }

    fn assert_clean(&self) {
        assert_eq!(self.acked, self.sent, "{}: every send is acknowledged in the end", self.name);
        assert!(self.acked > 0 && self.delivered > 0, "{}: no traffic", self.name);
        assert_eq!(
            (self.lost, self.duplicated, self.reordered),
            (0, 0, 0),
            "{}: lost / duplicated / reordered",
            self.name
        );
        for (i, (b, a)) in self.before.iter().zip(&self.after).enumerate() {
            if let (Some(b), Some(a)) = (b, a)
                && a.pid == b.pid
            {
                // The pools may hold a few more database and Redis connections than before.
                assert!(a.fds <= b.fds + 24, "{}: node{i} kept descriptors: {} → {}", self.name, b.fds, a.fds);
                assert!(
                    a.rss_kib <= self.rss_bound_kib(i, b),
                    "{}: node{i} kept memory: {} → {} KiB (bound {} KiB with {} sessions at the peak)",
                    self.name,
                    b.rss_kib,
                    a.rss_kib,
                    self.rss_bound_kib(i, b),
                    self.peak_sessions.get(i).copied().unwrap_or(0)
                );
            }
        }
    }
}

impl Report {
    /// Counts what the clients saw against each room's final seq.
    fn tally(name: &'static str, outcomes: &[Outcome], latest: &HashMap<String, i64>) -> Self {
        // What the room streams hold: seq → clientId, from whoever received it.
        let mut streams: HashMap<String, HashMap<i64, String>> = HashMap::new();
        let mut report = Report {
            name,
            sent: 0,
            acked: 0,
            delivered: 0,
            lost: 0,
            duplicated: 0,
            reordered: 0,
            reconnects: 0,
            errors: 0,
            closes_1013: 0,
            connected: Duration::ZERO,
            elapsed: Duration::ZERO,
            before: Vec::new(),
            after: Vec::new(),
            peak_sessions: Vec::new(),
        };
        for out in outcomes {
            report.sent += out.sent;
            report.acked += out.acked.len();
            report.reconnects += out.reconnects;
            report.errors += out.errors;
            report.closes_1013 += out.closes_1013;
            for room in &out.rooms {
                let got = out.received.get(room).map_or(&[][..], Vec::as_slice);
                let target = latest.get(room).copied().unwrap_or(0);
                report.delivered += got.len();
                let mut seen = HashSet::new();
                let mut highest = 0;
                for (seq, client_id) in got {
                    if !seen.insert(*seq) {
                        report.duplicated += 1;
                    } else if *seq < highest {
                        report.reordered += 1;
                    }
                    highest = highest.max(*seq);
                    let stream = streams.entry(room.clone()).or_default();
                    let known = stream.entry(*seq).or_insert_with(|| client_id.clone());
                    assert_eq!(known, client_id, "{name}: two messages at seq {seq} of {room}");
                }
                report.lost += (1..=target).filter(|s| !seen.contains(s)).count();
            }
        }
        // Every acknowledged message is in its room's stream at the acknowledged seq, once.
        let mut stored_twice: HashMap<&str, usize> = HashMap::new();
        for stream in streams.values() {
            for client_id in stream.values() {
                *stored_twice.entry(client_id.as_str()).or_default() += 1;
            }
        }
        report.duplicated += stored_twice.values().filter(|n| **n > 1).count();
        for out in outcomes {
            for (client_id, (room, seq)) in &out.acked {
                if streams.get(room).and_then(|s| s.get(seq)) != Some(client_id) {
                    report.lost += 1;
                }
            }
        }
        report
    }
}

/// Runs `specs` against `cluster` while `disrupt` breaks something, then checks the outcome.
async fn run_scenario<F>(name: &'static str, cluster: &mut Cluster, specs: Vec<ClientSpec>, disrupt: F) -> Report
where
    F: AsyncFnOnce(&mut Cluster, &Shared),
{
    let before = cluster.usage();
    let started = Instant::now();
    let senders = specs.iter().filter(|s| s.messages > 0).count();
    let total = specs.len();
    let (set_targets, targets) = watch::channel(None);
    let shared = Arc::new(Shared {
        urls: cluster.ws_urls(),
        clients: total,
        senders: watch::Sender::new(senders),
        joined: watch::Sender::new(0),
        sessions: (0..NODES).map(|_| AtomicUsize::new(0)).collect(),
        peak_sessions: (0..NODES).map(|_| AtomicUsize::new(0)).collect(),
        targets,
        status: (0..total).map(|_| std::sync::Mutex::default()).collect(),
        progress: AtomicUsize::new(0),
    });
    let token = specs[0].token.clone();
    // Everyone is in before anything breaks (and before the senders start). They come in
    // waves, so that the start is not a storm of its own.
    let cap = Instant::now() + SCENARIO_CAP;
    let mut clients = tokio::task::JoinSet::new();
    let mut joined = shared.joined.subscribe();
    let mut specs = specs.into_iter().enumerate().peekable();
    while specs.peek().is_some() {
        for (index, spec) in specs.by_ref().take(JOIN_WAVE) {
            clients.spawn(Client::run(spec, shared.clone(), index));
        }
        let wave = clients.len();
        shared
            .progressing(cap, joined.wait_for(|n| *n == wave))
            .await
            .unwrap_or_else(|| {
                let report = stuck(cluster, &shared, &HashMap::new());
                panic!("{name}: only {} of {total} clients joined\n{report}", *shared.joined.borrow())
            })
            .expect("joined");
    }
    let connected = started.elapsed();

    disrupt(cluster, &shared).await;
    // Bounded: the senders finish, whatever was broken is back.
    let mut sending = shared.senders.subscribe();
    shared
        .progressing(cap, sending.wait_for(|n| *n == 0))
        .await
        .unwrap_or_else(|| {
            let report = stuck(cluster, &shared, &HashMap::new());
            panic!("{name}: {} senders did not finish\n{report}", *shared.senders.borrow())
        })
        .expect("senders");
    let latest = cluster.latest_seqs(&token).await;
    set_targets.send_replace(Some(latest.clone()));

    let mut outcomes = Vec::new();
    while let Some(res) = shared.progressing(cap, clients.join_next()).await.unwrap_or_else(|| {
        panic!("{name}: {} clients did not catch up\n{}", clients.len(), stuck(cluster, &shared, &latest))
    }) {
        outcomes.push(res.expect("client task"));
    }
    let elapsed = started.elapsed();

    let mut report = Report::tally(name, &outcomes, &latest);
    report.connected = connected;
    report.elapsed = elapsed;
    report.before = before;
    report.peak_sessions = shared.peak_sessions.iter().map(|p| p.load(Ordering::SeqCst)).collect();

    // The nodes let go of what the clients made them hold.
    let settle = Instant::now() + Duration::from_secs(15);
    loop {
        report.after = cluster.usage();
        let settled = report.before.iter().zip(&report.after).all(|(b, a)| match (b, a) {
            (Some(b), Some(a)) if a.pid == b.pid => a.fds <= b.fds + 24,
            _ => true,
        });
        if settled || Instant::now() > settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report.print();
    report
}

/// What the clients that did not finish were doing, the rooms' targets and the nodes' logs.
fn stuck(cluster: &Cluster, shared: &Shared, targets: &HashMap<String, i64>) -> String {
    let mut report = format!("targets: {targets:?}\n");
    let waiting: Vec<(usize, String)> = shared
        .status
        .iter()
        .enumerate()
        .filter_map(|(i, st)| {
            let st = st.lock().expect("status");
            (!st.done).then(|| (i, format!("{st:?}")))
        })
        .collect();
    for (i, st) in waiting.iter().take(40) {
        let _ = writeln!(report, "client {i}: {st}");
    }
    for node in &cluster.nodes {
        let _ = writeln!(report, "--- node {} log (last lines):\n{}", node.index, node.log_tail());
    }
    report
}

/// `users` users; `clients` clients spread over the nodes, each in `rooms_each` of `rooms`
/// rooms; the first `senders` of them send.
#[allow(clippy::too_many_arguments)]
fn mesh(
    tokens: &[String],
    clients: usize,
    rooms: usize,
    rooms_each: usize,
    senders: usize,
    messages: usize,
    every: Duration,
    content_len: usize,
) -> Vec<ClientSpec> {
    (0..clients)
        .map(|i| ClientSpec {
            token: tokens[i % tokens.len()].clone(),
            home: i % NODES,
            rooms: (0..rooms_each).map(|k| format!("room-{}", (i + k) % rooms)).collect(),
            messages: if i < senders { messages } else { 0 },
            every,
            content_len,
            pause: None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The scenarios.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_mid_traffic_loses_nothing_acknowledged() {
    let _serial = SERIAL.lock().await;
    let Some(mut cluster) = Cluster::start(&[]).await else { return };
    let tokens = cluster.users(12).await;
    let specs = mesh(&tokens, 36, 4, 2, 12, 50, Duration::from_millis(40), 120);
    let report = run_scenario("kill-9", &mut cluster, specs, async |c: &mut Cluster, _: &Shared| {
        tokio::time::sleep(Duration::from_millis(800)).await;
        c.nodes[1].kill();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        c.restart(1).await;
    })
    .await;
    report.assert_clean();
    assert!(report.reconnects >= 12, "the killed node's clients reconnected: {}", report.reconnects);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_traffic_loses_nothing_acknowledged() {
    let _serial = SERIAL.lock().await;
    let Some(mut cluster) = Cluster::start(&[]).await else { return };
    let tokens = cluster.users(12).await;
    let specs = mesh(&tokens, 36, 4, 2, 12, 50, Duration::from_millis(40), 120);
    let report = run_scenario("redis-restart", &mut cluster, specs, async |c: &mut Cluster, _: &Shared| {
        tokio::time::sleep(Duration::from_millis(800)).await;
        c.redis.kill();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        c.redis.spawn().await;
    })
    .await;
    report.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_seconds_without_the_database_loses_nothing_acknowledged() {
    let _serial = SERIAL.lock().await;
    let Some(mut cluster) = Cluster::start(&[]).await else { return };
    let tokens = cluster.users(12).await;
    let specs = mesh(&tokens, 36, 4, 2, 12, 80, Duration::from_millis(60), 120);
    let report = run_scenario("database-outage", &mut cluster, specs, async |c: &mut Cluster, _: &Shared| {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let killed = c.database_outage(Duration::from_secs(5)).await;
        assert!(killed > 0, "no database connection was killed");
    })
    .await;
    report.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_is_cut_off_and_resumes_without_loss() {
    let _serial = SERIAL.lock().await;
    // Big messages and a short queue, so that a few seconds without reading overflow it.
    let Some(mut cluster) =
        Cluster::start(&[("CONFAB_WS__OUTBOUND_QUEUE", "16"), ("CONFAB_CHAT__MESSAGE_MAX_LEN", "40000")]).await
    else {
        return;
    };
    let tokens = cluster.users(6).await;
    let mut specs = mesh(&tokens, 12, 1, 1, 6, 80, Duration::from_millis(20), 32_000);
    specs[11].pause = Some((20, Duration::from_secs(4)));
    let report = run_scenario("slow-consumer", &mut cluster, specs, async |_: &mut Cluster, _: &Shared| {}).await;
    report.assert_clean();
    assert!(report.closes_1013 >= 1, "the slow consumer was not closed with 1013");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_after_a_node_restart_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let Some(mut cluster) = Cluster::start(&[]).await else { return };
    let listeners: usize =
        std::env::var("CONFAB_CHAOS_STORM_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000);
    let tokens = cluster.users(20).await;
    // Senders on nodes 1 and 2; everyone else listens on node 0, which is killed and restarted.
    let mut specs = mesh(&tokens, 6, 10, 2, 6, 40, Duration::from_millis(150), 80);
    for s in &mut specs {
        s.home = 1 + s.home % 2;
    }
    specs.extend((0..listeners).map(|i| ClientSpec {
        token: tokens[i % tokens.len()].clone(),
        home: 0,
        rooms: vec![format!("room-{}", i % 10)],
        messages: 0,
        every: Duration::from_millis(500),
        content_len: 0,
        pause: None,
    }));
    let on_node_0 = AtomicUsize::new(0);
    let report = run_scenario("reconnect-storm", &mut cluster, specs, async |c: &mut Cluster, shared: &Shared| {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        on_node_0.store(shared.sessions[0].load(Ordering::SeqCst), Ordering::SeqCst);
        c.nodes[0].kill();
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.restart(0).await;
    })
    .await;
    report.assert_clean();
    let storm = on_node_0.load(Ordering::SeqCst);
    eprintln!("chaos reconnect-storm: {storm} clients were on the killed node");
    assert_eq!(storm, listeners, "the listeners were all on node 0");
    assert!(report.reconnects >= storm, "every client of the killed node reconnected: {}", report.reconnects);
}

/// A small client for the presence test: a WebSocket that answers nothing and keeps frames.
struct Watcher {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    user_id: String,
}

impl Watcher {
    async fn connect(url: &str, token: &str) -> Self {
        let url = format!("{url}?access_token={token}");
        let (mut ws, _) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(&url))
            .await
            .expect("connect timed out")
            .expect("connect");
        let hello = Self::next_json(&mut ws).await;
        let user_id = hello["user"]["id"].as_str().expect("hello names the user").to_owned();
        Self { ws, user_id }
    }

    async fn next_json(
        ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    ) -> Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(15), ws.next())
                .await
                .expect("no frame within 15 s")
                .expect("the socket ended")
                .expect("a frame");
            if let Message::Text(text) = msg {
                return serde_json::from_str(text.as_str()).expect("JSON frame");
            }
        }
    }

    async fn join(&mut self, room: &str) {
        self.command("join_room", room).await;
    }

    async fn leave(&mut self, room: &str) {
        self.command("leave_room", room).await;
    }

    async fn command(&mut self, kind: &str, room: &str) {
        let frame = json!({ "type": kind, "room": room, "ref": "j" });
        self.ws.send(Message::text(frame.to_string())).await.expect("send join");
        loop {
            let f = Self::next_json(&mut self.ws).await;
            if f["ref"] == "j" {
                assert_eq!(f["type"], "ack", "{kind} {room}: {f}");
                return;
            }
        }
    }

    /// Presence events until one satisfies `done`; all of them.
    async fn presence_until(&mut self, mut done: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let f = Self::next_json(&mut self.ws).await;
            if f["type"] == "presence" {
                let stop = done(&f);
                seen.push(f);
                if stop {
                    return seen;
                }
            }
        }
    }
}

fn names(f: &Value, key: &str, user: &str) -> bool {
    f[key].as_array().is_some_and(|a| a.iter().any(|u| u == user))
}

/// kill -9 of a node: nothing is said, yet its users go offline for the others within the
/// presence TTL, while a user who also has a session on a live node stays online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_of_a_killed_node_go_offline_within_the_presence_ttl() {
    const TTL: Duration = Duration::from_secs(2);
    let _serial = SERIAL.lock().await;
    let Some(mut cluster) =
        Cluster::start(&[("CONFAB_CHAT__PRESENCE_INTERVAL", "300ms"), ("CONFAB_CHAT__PRESENCE_TTL", "2s")]).await
    else {
        return;
    };
    let tokens = cluster.users(3).await;
    let urls = cluster.ws_urls();
    let mut watcher = Watcher::connect(&urls[0], &tokens[0]).await;
    let mut twice_on_live = Watcher::connect(&urls[1], &tokens[1]).await;
    let mut twice_on_doomed = Watcher::connect(&urls[2], &tokens[1]).await;
    let mut only_there = Watcher::connect(&urls[2], &tokens[2]).await;
    for w in [&mut watcher, &mut twice_on_live, &mut twice_on_doomed, &mut only_there] {
        w.join("lobby").await;
    }
    let (both, only) = (twice_on_live.user_id.clone(), only_there.user_id.clone());
    let mut online = HashSet::new();
    watcher
        .presence_until(|f| {
            for u in f["online"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                online.insert(u.to_owned());
            }
            online.contains(&both) && online.contains(&only)
        })
        .await;

    cluster.nodes[2].kill();
    let killed = Instant::now();
    let seen = watcher.presence_until(|f| names(f, "offline", &only)).await;
    let took = killed.elapsed();
    println!("presence: a killed node's user was offline elsewhere {took:?} after the kill (TTL {TTL:?})");
    assert!(took <= TTL + Duration::from_secs(2), "offline only after {took:?}");
    assert!(!seen.iter().any(|f| names(f, "offline", &both)), "still online through node 1: {seen:?}");
    drop((twice_on_doomed, twice_on_live));
}

/// `confab_presence_rooms_total{op}` of a node: rooms its presence rounds read and wrote.
async fn presence_rooms(cluster: &Cluster, node: usize) -> (u64, u64) {
    let url = format!("http://{}/metrics", cluster.nodes[node].addr);
    let text = cluster.http.get(url).send().await.expect("metrics").text().await.expect("metrics body");
    let count = |op: &str| {
        let prefix = format!("confab_presence_rooms_total{{op=\"{op}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(prefix.as_str())).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    (count("read"), count("written"))
}

async fn all_presence_rooms(cluster: &Cluster) -> [(u64, u64); NODES] {
    [presence_rooms(cluster, 0).await, presence_rooms(cluster, 1).await, presence_rooms(cluster, 2).await]
}

/// With Redis, a presence round costs only the rooms whose members changed, on any node: three
/// nodes sharing many rooms do nothing round after round while nobody comes or goes, and one
/// leave is written once (by its node) and read once by each node hosting the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_rounds_cost_only_the_rooms_that_changed() {
    const ROOMS: usize = 40;
    let _serial = SERIAL.lock().await;
    let Some(cluster) =
        Cluster::start(&[("CONFAB_CHAT__PRESENCE_INTERVAL", "100ms"), ("CONFAB_CHAT__PRESENCE_TTL", "5s")]).await
    else {
        return;
    };
    let tokens = cluster.users(3).await;
    let urls = cluster.ws_urls();
    let mut watchers = Vec::new();
    for (url, token) in urls.iter().zip(&tokens) {
        watchers.push(Watcher::connect(url, token).await);
    }
    for w in &mut watchers {
        for r in 0..ROOMS {
            w.join(&format!("p{r}")).await;
        }
    }
    // Settled: the watcher on node 0 was told the user of node 2 is online in the last room.
    let last = format!("p{}", ROOMS - 1);
    let far = watchers[2].user_id.clone();
    watchers[0].presence_until(|f| f["room"] == last.as_str() && names(f, "online", &far)).await;

    // Idle: let rounds pass (about 20 at 100 ms) and count what they did.

    let mut before = all_presence_rooms(&cluster).await;
    // A round in flight when the last join was told may still finish: wait until a whole
    // second passes with no work on any node (at most a few tries).
    let mut quiet = false;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = all_presence_rooms(&cluster).await;
        if after == before {
            quiet = true;
            break;
        }
        before = after;
    }
    assert!(quiet, "presence rounds kept working on rooms nobody joined or left: {before:?}");

    // One leave on node 2: written there once, read once by each node still hosting the room
    // (node 2 hosts it no more).
    watchers[2].leave("p7").await;
    watchers[0].presence_until(|f| f["room"] == "p7" && names(f, "offline", &far)).await;
    // The other nodes' rounds have read it by the time node 0 told it, or do within one more.
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let after = all_presence_rooms(&cluster).await;
        if (after[1].0 > before[1].0 && after[0].0 > before[0].0) || Instant::now() > deadline {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let read: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a.0 - b.0).collect();
    let written: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a.1 - b.1).collect();
    println!("presence: one leave among {ROOMS} rooms: rooms read per node {read:?}, written {written:?}");
    assert_eq!(written, [0, 0, 1], "only the leaver's node wrote, and one room");
    assert_eq!(read, [1, 1, 0], "each node hosting the room read it, and nothing else");
    drop(watchers);
}
