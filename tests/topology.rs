//! The topology of docker-compose.yml, without Docker: a one-shot `confab migrate`, then two
//! `confab serve` nodes (`confab1`, `confab2`) on one PostgreSQL database and one Redis, with
//! `auto_migrate` off, metrics on ports of their own and nginx as their trusted proxy, behind
//! Debian's `nginx` running the shipped `config/nginx/confab.conf`. Only the upstream servers
//! (`confab1:4000`, `confab2:4000`) and the `listen 80;` line are rewritten, to loopback ports;
//! every location rule is the file's own.
//!
//! Through the balancer: `/health` answers from both nodes by name, `/ready` sees the database
//! and Redis, `/metrics` is not served; accounts registered there work on either node (the JWT
//! key the nodes generated is shared through the database); a WebSocket through nginx and one
//! straight to the other node exchange messages in a room both ways; a cross-site `Origin` is
//! still refused through the proxy and the page's own is not (nginx passes `Host` with its
//! port); Socket.IO's long-polling handshake sticks to one node (`ip_hash`) and its WebSocket
//! transport passes; and `X-Forwarded-For` from nginx names the real client in the audit log,
//! while a forged one is ignored.
//!
//! Needs `nginx`, `CONFAB_TEST_DATABASE_URL` and `CONFAB_TEST_REDIS_URL`: without them the test
//! says why and passes, unless `CONFAB_TEST_REQUIRE_SERVICES=1`, which makes it fail. Every wait
//! is bounded; polls (readiness) have deadlines, and everything else awaits the event itself.

// Only part of the shared test infrastructure is used here.
#[allow(unused_macros, unused_imports)]
mod common;

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{Backend, TestDb, TestRedis, service_url};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message, client::IntoClientRequest as _, http::HeaderValue},
};

/// Bound on a node or nginx starting to answer.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a one-shot command (`migrate`, `user promote`).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on waiting for one WebSocket frame that must come.
const FRAME_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on nginx and the nodes exiting after SIGTERM, before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const PASSWORD: &str = "topology test password";
const ROOM: &str = "topology";

/// The nginx config that docker-compose.yml mounts, and what this test rewrites in it.
const NGINX_CONF: &str = "config/nginx/confab.conf";
const UPSTREAM_1: &str = "confab1:4000";
const UPSTREAM_2: &str = "confab2:4000";
const LISTEN: &str = "listen 80;";

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn required() -> bool {
    std::env::var("CONFAB_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

fn nginx_installed() -> bool {
    Command::new("nginx")
        .arg("-v")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

// ---------------------------------------------------------------------------------------------
// Processes

/// `confab` with only what the test gives it, and cheap password hashing.
fn confab() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_confab"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CONFAB_AUTH__ARGON2__MEMORY_KIB", "64")
        .env("CONFAB_AUTH__ARGON2__ITERATIONS", "1")
        .stdin(Stdio::null());
    cmd
}

fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill").arg(signal).arg(pid.to_string()).stderr(Stdio::null()).status();
}

/// Runs a one-shot command to completion, killing it after [`COMMAND_TIMEOUT`].
fn run(mut cmd: Command) -> Output {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(output) = rx.recv_timeout(COMMAND_TIMEOUT) else {
        signal(pid, "-KILL");
        panic!("{cmd:?} did not finish within {COMMAND_TIMEOUT:?}");
    };
    let output = output.expect("wait");
    assert!(
        output.status.success(),
        "{cmd:?}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A long-running child (a node, nginx) that logs to a file; stopped with SIGTERM, then
/// SIGKILL, when dropped.
struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self { name: name.to_owned(), child: Some(child), log }
    }

    /// The last lines of its log, for failure messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!("--- {} ({}):\n{}", self.name, self.log.display(), lines[lines.len().saturating_sub(40)..].join("\n"))
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait"))
    }

    /// Polls `url` until it answers 200 (bounded), failing early if the process exits.
    async fn wait_for(&mut self, http: &reqwest::Client, url: &str, extra_log: &str) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(resp) = http.get(url).send().await
                && resp.status() == reqwest::StatusCode::OK
            {
                return;
            }
            if let Some(status) = self.exited() {
                panic!("{} exited with {status}\n{}\n{extra_log}", self.name, self.log_tail());
            }
            assert!(Instant::now() < deadline, "{url} not 200 within {STARTUP_TIMEOUT:?}\n{}", self.log_tail());
            // The pause between polls, bounded by the deadline.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        signal(child.id(), "-TERM");
        let deadline = Instant::now() + STOP_TIMEOUT;
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A confab node as compose runs it.
struct Node {
    name: &'static str,
    addr: String,
    metrics_addr: String,
    process: Process,
}

impl Node {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Everything the test started; dropped in this order: nginx, the nodes, then the database
/// and the Redis keys.
struct Topology {
    nginx: Process,
    nodes: Vec<Node>,
    nginx_addr: String,
    _redis: TestRedis,
    db: TestDb,
    _dir: tempfile::TempDir,
}

impl Topology {
    /// None (after saying why) when nginx, PostgreSQL or Redis is missing and not required.
    async fn start(http: &reqwest::Client) -> Option<Self> {
        if !nginx_installed() {
            assert!(!required(), "nginx is not installed but CONFAB_TEST_REQUIRE_SERVICES=1 (apt-get install nginx)");
            eprintln!("skipping: nginx is not installed (apt-get install nginx)");
            return None;
        }
        service_url("CONFAB_TEST_DATABASE_URL")?;
        let redis = TestRedis::from_env()?;
        let db = TestDb::create(Backend::Postgres).await;
        let dir = tempfile::Builder::new().prefix("confab-topology-").tempdir().expect("temp dir");
        // nginx's temp folders live here; let it in whichever user it runs as.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod temp dir");

        // The `migrate` service: once, before the nodes, which do not migrate themselves.
        let mut migrate = confab();
        migrate.arg("migrate").env("CONFAB_DATABASE__URL", db.url());
        let out = run(migrate);
        eprintln!("topology: confab migrate: {}", String::from_utf8_lossy(&out.stdout).trim());

        // The nodes, started together as compose starts them; the environment of
        // docker-compose.yml's x-confab-env, with loopback addresses. No JWT key is given:
        // they agree on the one the first of them stores in the database.
        let mut nodes = Vec::new();
        for name in ["confab1", "confab2"] {
            let addr = format!("127.0.0.1:{}", free_port());
            let metrics_addr = format!("127.0.0.1:{}", free_port());
            let mut cmd = confab();
            cmd.arg("serve")
                .env("CONFAB_LISTEN", &addr)
                .env("CONFAB_NODE_ID", name)
                .env("CONFAB_DATABASE__URL", db.url())
                .env("CONFAB_REDIS__URL", &redis.url)
                .env("CONFAB_REDIS__PREFIX", &redis.prefix)
                .env("CONFAB_AUTO_MIGRATE", "false")
                .env("CONFAB_METRICS_LISTEN", &metrics_addr)
                .env("CONFAB_HTTP__TRUSTED_PROXIES", "127.0.0.1")
                .env("CONFAB_SHUTDOWN__GRACE", "2s");
            let process = Process::spawn(name, cmd, dir.path().join(format!("{name}.log")));
            nodes.push(Node { name, addr, metrics_addr, process });
        }
        for node in &mut nodes {
            let url = node.url("/ready");
            node.process.wait_for(http, &url, "").await;
        }

        // nginx with the shipped server and upstream rules.
        let nginx_addr = format!("127.0.0.1:{}", free_port());
        let conf = nginx_config(dir.path(), &nodes[0].addr, &nodes[1].addr, &nginx_addr);
        let mut cmd = Command::new("nginx");
        cmd.arg("-e")
            .arg(dir.path().join("nginx-error.log"))
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"]);
        let mut nginx = Process::spawn("nginx", cmd, dir.path().join("nginx.log"));
        let error_log = std::fs::read_to_string(dir.path().join("nginx-error.log")).unwrap_or_default();
        nginx.wait_for(http, &format!("http://{nginx_addr}/health"), &error_log).await;
        eprintln!(
            "topology: nginx on {nginx_addr} → confab1 on {} (metrics {}), confab2 on {} (metrics {})",
            nodes[0].addr, nodes[0].metrics_addr, nodes[1].addr, nodes[1].metrics_addr
        );
        Some(Self { nginx, nodes, nginx_addr, _redis: redis, db, _dir: dir })
    }

    fn lb(&self, path: &str) -> String {
        format!("http://{}{path}", self.nginx_addr)
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    fn logs(&self) -> String {
        let mut all: Vec<String> = self.nodes.iter().map(|n| n.process.log_tail()).collect();
        all.push(self.nginx.log_tail());
        all.join("\n")
    }
}

/// `config/nginx/confab.conf` with its upstream servers and listen port moved to loopback,
/// inside a minimal main config of the test's own (pid, logs and temp folders in `dir`).
fn nginx_config(dir: &Path, node1: &str, node2: &str, listen: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(NGINX_CONF);
    let mut text = std::fs::read_to_string(&path).expect("read config/nginx/confab.conf");
    for (from, to) in
        [(UPSTREAM_1, node1.to_owned()), (UPSTREAM_2, node2.to_owned()), (LISTEN, format!("listen {listen};"))]
    {
        assert!(text.contains(from), "{NGINX_CONF} no longer has `{from}`, which tests/topology.rs rewrites");
        text = text.replace(from, &to);
    }
    let unrewritten: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("server ") && l.ends_with(';') && !l.starts_with("server 127.0.0.1:"))
        .collect();
    assert!(unrewritten.is_empty(), "upstream servers this test does not know how to rewrite: {unrewritten:?}");
    let listens: Vec<&str> = text.lines().map(str::trim).filter(|l| l.starts_with("listen ")).collect();
    assert_eq!(listens, [format!("listen {listen};")], "one listen line, the rewritten one");
    let site = dir.join("confab.conf");
    std::fs::write(&site, text).expect("write confab.conf");

    let d = dir.display();
    let main = format!(
        "# tests/topology.rs: nginx in the foreground, one process, everything under {d}.\n\
         master_process off;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/nginx-error.log info;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n\
         \x20   access_log {d}/nginx-access.log;\n\
         \x20   client_body_temp_path {d}/client_body_temp;\n\
         \x20   proxy_temp_path {d}/proxy_temp;\n\
         \x20   fastcgi_temp_path {d}/fastcgi_temp;\n\
         \x20   uwsgi_temp_path {d}/uwsgi_temp;\n\
         \x20   scgi_temp_path {d}/scgi_temp;\n\
         \x20   include {};\n\
         }}\n",
        site.display()
    );
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, main).expect("write nginx.conf");
    conf
}

// ---------------------------------------------------------------------------------------------
// Clients

async fn json_of(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let text = resp.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text}"))
}

/// Registers through the balancer, as the web client served by it does (same-origin POST).
async fn register(http: &reqwest::Client, t: &Topology, email: &str) -> Value {
    let resp = http
        .post(t.lb("/api/auth/register"))
        .header("origin", format!("http://{}", t.nginx_addr))
        .json(&json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .expect("register");
    let status = resp.status();
    let body = json_of(resp).await;
    assert_eq!(status, reqwest::StatusCode::OK, "register {email}: {body}");
    body
}

async fn login(http: &reqwest::Client, url: String, email: &str) -> String {
    let resp = http.post(url).json(&json!({ "email": email, "password": PASSWORD })).send().await.expect("login");
    assert_eq!(resp.status(), reqwest::StatusCode::OK, "login {email}");
    json_of(resp).await["token"].as_str().expect("token").to_owned()
}

/// A WebSocket to `url` with the token and, when given, a browser's `Origin`.
async fn connect(url: &str, token: &str, origin: Option<&str>) -> Result<Ws, tungstenite::Error> {
    let mut request = format!("{url}?access_token={token}").into_client_request().expect("request");
    if let Some(origin) = origin {
        request.headers_mut().insert("origin", HeaderValue::from_str(origin).expect("header"));
    }
    tokio::time::timeout(FRAME_TIMEOUT, tokio_tungstenite::connect_async(request))
        .await
        .expect("WebSocket handshake timed out")
        .map(|(ws, _)| ws)
}

async fn next_text(ws: &mut Ws) -> String {
    loop {
        let frame = tokio::time::timeout(FRAME_TIMEOUT, ws.next())
            .await
            .expect("no frame within the timeout")
            .expect("the socket ended")
            .expect("a frame");
        if let Message::Text(text) = frame {
            return text.as_str().to_owned();
        }
    }
}

/// The next frame that `pred` accepts; frames before it (presence, typing, …) are skipped.
/// Each frame must come within [`FRAME_TIMEOUT`].
async fn until(ws: &mut Ws, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..100 {
        let text = next_text(ws).await;
        let frame: Value = serde_json::from_str(&text).expect("JSON frame");
        assert!(frame["type"] != "error", "waiting for {what}: {frame}");
        if pred(&frame) {
            return frame;
        }
    }
    panic!("100 frames without {what}");
}

async fn send(ws: &mut Ws, frame: &Value) {
    ws.send(Message::text(frame.to_string())).await.expect("send frame");
}

async fn join(ws: &mut Ws, who: &str) {
    send(ws, &json!({ "type": "join_room", "room": ROOM, "ref": format!("join-{who}") })).await;
    until(ws, "the join ack", |f| f["type"] == "ack" && f["ref"] == format!("join-{who}")).await;
}

/// Sends `content` from `from` and checks that both `from` and `to` receive it with the seq
/// of its ack.
async fn exchange(from: &mut Ws, to: &mut Ws, content: &str) -> i64 {
    send(from, &json!({ "type": "send_message", "room": ROOM, "content": content, "ref": content })).await;
    let ack = until(from, "the send ack", |f| f["type"] == "ack" && f["ref"] == content).await;
    let seq = ack["seq"].as_i64().expect("seq in the ack");
    for ws in [from, to] {
        let msg = until(ws, "the message", |f| f["type"] == "message" && f["content"] == content).await;
        assert_eq!((msg["room"].as_str(), msg["seq"].as_i64()), (Some(ROOM), Some(seq)), "{msg}");
    }
    seq
}

/// The JSON of an Engine.IO OPEN packet (`0{…}`).
fn engineio_open(body: &str) -> Value {
    let json = body.strip_prefix('0').unwrap_or_else(|| panic!("not an Engine.IO OPEN: {body}"));
    serde_json::from_str(json).unwrap_or_else(|e| panic!("OPEN is not JSON ({e}): {body}"))
}

// ---------------------------------------------------------------------------------------------
// The test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_behind_the_shipped_nginx_config_serve_one_chat() {
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(15)).build().expect("client");
    let Some(t) = Topology::start(&http).await else { return };

    operational_endpoints(&http, &t).await;
    // Two accounts, registered through nginx (on whichever node it picks).
    let alice = register(&http, &t, "alice@topology.example").await;
    let bob = register(&http, &t, "bob@topology.example").await;
    let (alice_token, bob_token) = (alice["token"].as_str().expect("token"), bob["token"].as_str().expect("token"));
    chat_across_the_balancer(&t, alice_token, bob_token).await;
    socketio_through_the_balancer(&http, &t, bob_token).await;
    forwarded_for_names_the_client(&http, &t, "alice@topology.example").await;

    // A clean stop: nginx first, then each node on SIGTERM (Drop does the rest).
    drop(t);
}

/// /health answers through nginx, from both nodes (least_conn over idle nodes alternates),
/// with X-Forwarded-For set on the way; /ready sees the shared database and Redis; metrics
/// are on each node's own port only, never through the balancer.
async fn operational_endpoints(http: &reqwest::Client, t: &Topology) {
    let mut answered = BTreeSet::new();
    for _ in 0..6 {
        let resp = http.get(t.lb("/health")).send().await.expect("/health through nginx");
        assert_eq!(resp.status(), reqwest::StatusCode::OK);
        let health = json_of(resp).await;
        assert_eq!(health["ok"], true, "{health}");
        answered.insert(health["node"].as_str().expect("node").to_owned());
    }
    eprintln!("topology: /health through nginx answered by {answered:?}");
    assert_eq!(answered, BTreeSet::from(["confab1".to_owned(), "confab2".to_owned()]), "{}", t.logs());
    let ready = json_of(http.get(t.lb("/ready")).send().await.expect("/ready")).await;
    assert_eq!((&ready["database"], &ready["redis"]), (&json!("up"), &json!("up")), "{ready}");

    for node in &t.nodes {
        let resp = http.get(format!("http://{}/metrics", node.metrics_addr)).send().await.expect("metrics");
        assert_eq!(resp.status(), reqwest::StatusCode::OK, "{}: /metrics on its metrics port", node.name);
        assert!(resp.text().await.expect("text").contains("confab_build_info{"), "{}", node.name);
        let public = http.get(node.url("/metrics")).send().await.expect("metrics").status();
        assert_eq!(public, reqwest::StatusCode::NOT_FOUND, "{}: /metrics on the public port", node.name);
    }
    let through = http.get(t.lb("/metrics")).send().await.expect("metrics through nginx").status();
    assert_eq!(through, reqwest::StatusCode::NOT_FOUND, "/metrics through nginx");
    eprintln!("topology: /ready through nginx: {ready}; /metrics only on the metrics ports");
}

/// A browser's WebSocket through nginx (its own origin is accepted because nginx passes Host
/// with the port; another site's is refused there as it would be on the node) and one straight
/// to the other node exchange messages in one room, both ways.
async fn chat_across_the_balancer(t: &Topology, alice_token: &str, bob_token: &str) {
    let lb_ws = format!("ws://{}/ws", t.nginx_addr);
    let page_origin = format!("http://{}", t.nginx_addr);
    match connect(&lb_ws, alice_token, Some("http://evil.example")).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403, "cross-site WebSocket through nginx"),
        Err(e) => panic!("cross-site WebSocket: {e}"),
        Ok(_) => panic!("a cross-site WebSocket was accepted through nginx"),
    }
    let mut a = connect(&lb_ws, alice_token, Some(&page_origin)).await.expect("alice's WebSocket through nginx");
    let hello: Value = serde_json::from_str(&next_text(&mut a).await).expect("hello");
    assert_eq!(hello["type"], "hello", "{hello}");
    let a_node = hello["node"].as_str().expect("node").to_owned();
    // Bob straight to the other node, with the token whichever node nginx chose gave him.
    let b_node = if a_node == "confab1" { "confab2" } else { "confab1" };
    let mut b = connect(&format!("ws://{}/ws", t.node(b_node).addr), bob_token, None).await.expect("bob's WebSocket");
    let hello: Value = serde_json::from_str(&next_text(&mut b).await).expect("hello");
    assert_eq!(hello["node"], b_node, "{hello}");
    eprintln!("topology: alice on {a_node} through nginx, bob on {b_node} directly");

    join(&mut a, "alice").await;
    join(&mut b, "bob").await;
    let first = exchange(&mut a, &mut b, "hello from alice, through nginx").await;
    let second = exchange(&mut b, &mut a, "hello from bob, on the other node").await;
    assert_eq!(second, first + 1, "one room, one seq stream across the nodes");
    eprintln!("topology: messages crossed both ways ({a_node} ⇄ {b_node}), seqs {first} and {second}");
    let _ = a.close(None).await;
    let _ = b.close(None).await;
}

/// Socket.IO long-polling: handshake, CONNECT and the poll that answers it are three requests
/// that must reach the same node (a non-sticky balancer sends the second one to the other node,
/// which knows no such session). Then Socket.IO's WebSocket transport through /socket.io/.
async fn socketio_through_the_balancer(http: &reqwest::Client, t: &Topology, token: &str) {
    let poll = t.lb("/socket.io/?EIO=4&transport=polling");
    let open = engineio_open(&http.get(&poll).send().await.expect("handshake").text().await.expect("text"));
    let sid = open["sid"].as_str().expect("sid").to_owned();
    let session = format!("{poll}&sid={sid}");
    let connect_packet = format!("40{}", json!({ "token": token }));
    let posted = http.post(&session).body(connect_packet.clone()).send().await.expect("POST CONNECT");
    let status = posted.status();
    assert_eq!(status, reqwest::StatusCode::OK, "CONNECT by polling: {}", posted.text().await.unwrap_or_default());
    let polled = http.get(&session).send().await.expect("poll").text().await.expect("text");
    assert!(polled.contains("40{\"sid\""), "polling CONNECT not acknowledged: {polled}");

    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", t.nginx_addr);
    let (mut s, _) = tokio::time::timeout(FRAME_TIMEOUT, tokio_tungstenite::connect_async(url))
        .await
        .expect("Socket.IO handshake timed out")
        .expect("Socket.IO WebSocket through nginx");
    engineio_open(&next_text(&mut s).await);
    s.send(Message::text(connect_packet)).await.expect("send CONNECT");
    let connected = next_text(&mut s).await;
    assert!(connected.starts_with("40{\"sid\""), "Socket.IO CONNECT over WebSocket: {connected}");
    eprintln!("topology: Socket.IO through nginx: polling session {sid} stuck to one node; WebSocket connected");
    let _ = s.close(None).await;
}

/// X-Forwarded-For: the user becomes an administrator (as `docker compose exec confab1 confab
/// user promote` would), then makes invitation codes, which the audit log records with the
/// client's address: from 127.0.0.3 through nginx, with a forged X-Forwarded-For that nginx
/// passes along, and from 127.0.0.4 straight to a node, forging the same. The node believes
/// nginx's addition and nothing else.
async fn forwarded_for_names_the_client(http: &reqwest::Client, t: &Topology, email: &str) {
    let mut promote = confab();
    promote.args(["user", "promote", "--email", email]).env("CONFAB_DATABASE__URL", t.db.url());
    run(promote);
    let admin = login(http, t.lb("/api/auth/login"), email).await;
    let from = |last: u8| {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(15))
            .local_address(IpAddr::from([127, 0, 0, last]))
            .build()
            .expect("client")
    };
    for (client, url) in [(from(3), t.lb("/api/admin/invites")), (from(4), t.node("confab2").url("/api/admin/invites"))]
    {
        let resp = client
            .post(url)
            .bearer_auth(&admin)
            .header("x-forwarded-for", "198.51.100.23")
            .send()
            .await
            .expect("create invite");
        assert_eq!(resp.status(), reqwest::StatusCode::CREATED, "{}", json_of(resp).await);
    }
    let audit =
        json_of(http.get(t.lb("/api/admin/audit?limit=20")).bearer_auth(&admin).send().await.expect("audit")).await;
    let sources: Vec<&str> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["action"] == "invite.create")
        .map(|e| e["source"].as_str().expect("source"))
        .collect();
    eprintln!("topology: audit sources of the invitations, newest first: {sources:?}");
    assert_eq!(
        sources,
        ["127.0.0.4", "127.0.0.3"],
        "through nginx: the client; direct: the peer; never the forged one"
    );
}
