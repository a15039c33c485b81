//! The monitoring that ships in `config/` (docs/MONITORING.md), proved against a real
//! Prometheus: two `confab serve` nodes on PostgreSQL and Redis, each with its own metrics
//! listener as in the compose deployment, get real traffic (accounts, logins, two WebSockets on
//! different nodes, messages across them, a search, a flood into the rate limit); `prometheus`
//! scrapes them with `config/prometheus/prometheus.yml` (only the targets and intervals
//! changed) and loads `config/prometheus/alerts.yml` from it. Then:
//!
//! - the counters Prometheus holds are the traffic the test made, each on the node it went to
//!   (`instance` is the node's identity);
//! - every PromQL expression of `config/grafana/confab.json`, with Grafana's variables filled
//!   in as Grafana would, parses and returns at least one series;
//! - every alert rule loaded, evaluates without error and its query parses; ConfabNodeDown
//!   goes pending for a node that is killed;
//! - `promtool check config` and `promtool check rules` accept the shipped files.
//!
//! Needs `prometheus` and `promtool` on PATH (Debian: `apt-get install prometheus`),
//! `CONFAB_TEST_DATABASE_URL` and `CONFAB_TEST_REDIS_URL`. Without them it says why and passes,
//! unless `CONFAB_TEST_REQUIRE_SERVICES=1`, which makes any of them missing a failure. Every
//! wait is a bounded poll; every child process is killed when the test ends, however it ends.

// Only part of the shared test infrastructure is used here.
#[allow(unused_macros, unused_imports)]
mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Backend, TestDb, TestRedis, service_url};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

/// Bound on a node or Prometheus starting.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on Prometheus scraping what the test waits for.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on every dashboard expression returning data (rates need two scrapes of a series).
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a WebSocket frame the test expects.
const FRAME_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on a `promtool` run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
/// The pause between two polls; every poll loop is bounded by one of the timeouts above.
const POLL: Duration = Duration::from_millis(100);

/// What Grafana makes of `$__rate_interval` for the provisioned data source (15 s scrapes:
/// four scrapes); here, with 1 s scrapes, it spans the whole test.
const RATE_INTERVAL: &str = "1m";
/// `$__interval`, `$__range`: a step and a range of a small dashboard.
const INTERVAL: &str = "15s";
const RANGE: &str = "5m";

const PASSWORD: &str = "monitoring test password";
const ROOM: &str = "monitoring";
/// Messages Ann sends before the flood, each delivered to Ben on the other node.
const MESSAGES: u32 = 5;
/// Sends of the flood, more than `limits.message_burst` (20) plus what 10/s refills while
/// the node takes them, so some are refused as `rate_limited`.
const FLOOD: u32 = 100;
/// The alerts of the operations issue; `alerts.yml` may hold more rules, not fewer.
const ALERTS: [&str; 6] = [
    "ConfabNodeDown",
    "ConfabNotReady",
    "ConfabRedisDown",
    "ConfabStoreErrors",
    "ConfabSlowConsumerStorm",
    "ConfabHighLatency",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_two_nodes_and_every_dashboard_and_alert_query_answers() {
    let started = Instant::now();
    let Some(tools) = Tools::find() else { return };
    if service_url("CONFAB_TEST_DATABASE_URL").is_none() {
        return;
    }
    let Some(redis) = TestRedis::from_env() else { return };

    let shipped = Shipped::read();
    let dashboard = Dashboard::read();
    tools.check_shipped_files().await;

    // Declared before the processes, so dropped after them.
    let db = TestDb::create(Backend::Postgres).await;
    let dir = tempfile::Builder::new().prefix("confab-monitoring-").tempdir().expect("temp dir");
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().expect("http client");

    let mut nodes = start_nodes(&db, &redis, dir.path(), &http).await;
    let targets: Vec<String> = nodes.iter().map(|n| n.metrics.to_string()).collect();
    let mut prometheus = Prometheus::start(&tools, &shipped, &targets, dir.path(), http.clone()).await;
    prometheus.wait_for_scrapes(&shipped.job, &targets).await;
    let ready_at = started.elapsed();

    make_traffic(&nodes, &http).await;
    prometheus.wait_for_traffic(&shipped.job, &targets).await;
    let traffic_at = started.elapsed();

    prometheus.check_instance_variable(&dashboard, &targets).await;
    prometheus.check_dashboard(&dashboard, &targets).await;
    let dashboard_at = started.elapsed();

    prometheus.check_rules(&shipped).await;
    prometheus.check_node_down_alert(&mut nodes[1], &targets).await;
    prometheus.proc.assert_running();

    eprintln!(
        "monitoring: {} dashboard expressions and {} rules checked; nodes and Prometheus up after {:.1}s, \
         traffic scraped after {:.1}s, dashboard answered after {:.1}s, done in {:.1}s",
        dashboard.queries.len(),
        shipped.alert_rules,
        ready_at.as_secs_f64(),
        traffic_at.as_secs_f64(),
        dashboard_at.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// The shipped files.

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// `config/prometheus/prometheus.yml` and what the test needs to know of it.
struct Shipped {
    dir: PathBuf,
    prometheus_yml: String,
    job: String,
    /// `rule_files` entries, relative to the config file.
    rule_files: Vec<String>,
    /// `- alert:` entries of the rule files.
    alert_rules: usize,
}

impl Shipped {
    fn read() -> Self {
        let dir = config_dir().join("prometheus");
        let prometheus_yml = std::fs::read_to_string(dir.join("prometheus.yml")).expect("read prometheus.yml");
        let jobs: Vec<String> = prometheus_yml
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- job_name:"))
            .map(|v| v.trim().trim_matches(['"', '\'']).to_owned())
            .collect();
        assert_eq!(jobs.len(), 1, "prometheus.yml should scrape one job, the confab nodes: {jobs:?}");
        let rule_files = yaml_list(&prometheus_yml, "rule_files:");
        assert!(!rule_files.is_empty(), "prometheus.yml loads no rule_files");
        let alert_rules = rule_files
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("rule file {f}: {e}"));
                text.lines().filter(|l| l.trim_start().starts_with("- alert:")).count()
            })
            .sum();
        Self { dir, job: jobs[0].clone(), prometheus_yml, rule_files, alert_rules }
    }

    /// The shipped configuration with only the targets (the test's nodes) and the intervals
    /// (1 s) changed: the job, its metrics path and the rule files stay as shipped.
    fn for_test(&self, targets: &[String]) -> String {
        let list = targets.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ");
        let (mut target_lines, mut intervals) = (0, BTreeSet::new());
        let mut out: String = self
            .prometheus_yml
            .lines()
            .map(|line| {
                let trimmed = line.trim_start();
                let indent = &line[..line.len() - trimmed.len()];
                let key = trimmed.strip_prefix("- ").unwrap_or(trimmed).split(':').next().unwrap_or_default();
                match key {
                    "targets" => {
                        target_lines += 1;
                        let dash = if trimmed.starts_with("- ") { "- " } else { "" };
                        format!("{indent}{dash}targets: [{list}]")
                    }
                    "scrape_interval" | "evaluation_interval" | "scrape_timeout" => {
                        intervals.insert(key);
                        format!("{indent}{key}: 1s")
                    }
                    _ => line.to_owned(),
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        out.push('\n');
        assert_eq!(target_lines, 1, "prometheus.yml should list its targets on one `targets:` line:\n{out}");
        assert!(
            intervals.contains("scrape_interval") && intervals.contains("evaluation_interval"),
            "prometheus.yml should set scrape_interval and evaluation_interval:\n{out}"
        );
        out
    }
}

/// The entries of a block-style YAML list under a top-level `key:` (`rule_files:`).
fn yaml_list(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| l.trim_end() != key)
        .skip(1)
        .take_while(|l| l.trim().is_empty() || l.starts_with([' ', '-', '#']))
        .filter_map(|l| l.trim().strip_prefix("- "))
        .map(|v| v.trim().trim_matches(['"', '\'']).to_owned())
        .collect()
}

/// `config/grafana/confab.json`: every panel target's expression.
struct Dashboard {
    json: Value,
    queries: Vec<PanelQuery>,
}

struct PanelQuery {
    panel: String,
    ref_id: String,
    expr: String,
}

impl Dashboard {
    fn read() -> Self {
        let path = config_dir().join("grafana").join("confab.json");
        let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read confab.json"))
            .expect("confab.json is JSON");
        assert!(json["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion: {}", json["schemaVersion"]);
        let variables = json["templating"]["list"].as_array().expect("templating.list");
        let variable =
            |name: &str| variables.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no `{name}` variable"));
        let datasource = variable("datasource");
        assert_eq!((&datasource["type"], &datasource["query"]), (&json!("datasource"), &json!("prometheus")));
        let instance = variable("instance");
        assert_eq!((&instance["multi"], &instance["includeAll"]), (&json!(true), &json!(true)), "{instance}");
        assert_eq!(instance["datasource"]["uid"], "${datasource}", "{instance}");

        let mut queries = Vec::new();
        collect_queries(json["panels"].as_array().expect("panels"), &mut queries);
        assert!(!queries.is_empty(), "the dashboard has no queries");
        Self { json, queries }
    }

    /// The metric of the `instance` variable's `label_values(METRIC, instance)`.
    fn instance_metric(&self) -> String {
        let variable = self.json["templating"]["list"]
            .as_array()
            .and_then(|l| l.iter().find(|v| v["name"] == "instance"))
            .expect("instance variable");
        let query = variable["query"]["query"].as_str().or_else(|| variable["query"].as_str()).expect("its query");
        let inner = query
            .trim()
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("the instance variable should be label_values(…, instance): {query}"));
        let (metric, label) = inner.rsplit_once(',').expect("label_values(METRIC, instance)");
        assert_eq!(label.trim(), "instance", "{query}");
        metric.trim().to_owned()
    }
}

/// Every target of every panel, rows' nested panels included, checking that each reads the
/// templated data source and is per node.
fn collect_queries(panels: &[Value], out: &mut Vec<PanelQuery>) {
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("(untitled)").to_owned();
        if let Some(nested) = panel["panels"].as_array() {
            collect_queries(nested, out);
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {title:?} should use the datasource variable");
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("panel {title:?} has no targets"));
        assert!(!targets.is_empty(), "panel {title:?} has no targets");
        for target in targets {
            let ref_id = target["refId"].as_str().unwrap_or("?").to_owned();
            if !target["datasource"].is_null() {
                assert_eq!(target["datasource"]["uid"], "${datasource}", "{title:?} {ref_id}");
            }
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("{title:?} {ref_id}: no expr")).to_owned();
            assert!(
                expr.contains("by (instance") && (expr.contains("$instance") || expr.contains("${instance}")),
                "{title:?} {ref_id} should be per node (`by (instance…)`, `instance=~\"$instance\"`): {expr}"
            );
            out.push(PanelQuery { panel: title.clone(), ref_id, expr });
        }
    }
}

/// `expr` with Grafana's variables as Grafana fills them in: `$instance` with "All" of a
/// multi-value variable is the escaped values joined as a regex alternation.
fn substitute(expr: &str, targets: &[String]) -> String {
    let all = format!("({})", targets.iter().map(|t| t.replace('.', "\\\\.")).collect::<Vec<_>>().join("|"));
    let out = expr
        .replace("${__rate_interval}", RATE_INTERVAL)
        .replace("$__rate_interval", RATE_INTERVAL)
        .replace("${__interval}", INTERVAL)
        .replace("$__interval", INTERVAL)
        .replace("${__range}", RANGE)
        .replace("$__range", RANGE)
        .replace("${instance}", &all)
        .replace("$instance", &all);
    assert!(!out.contains('$'), "a variable the test does not know is left in {out}\n(from {expr})");
    out
}

// ---------------------------------------------------------------------------------------------
// Processes.

fn required() -> bool {
    std::env::var("CONFAB_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(name)).find(|p| p.is_file())
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr")
}

/// A child process, killed and reaped on drop; its output goes to a log file.
struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: String, mut cmd: Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("log file");
        cmd.stdin(Stdio::null()).stdout(file.try_clone().expect("dup log")).stderr(file);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self { name, child: Some(child), log }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Panics (with the log) if the process has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait")) {
            panic!("{} exited with {status}:\n{}", self.name, self.log_tail());
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `prometheus` and `promtool` from PATH.
struct Tools {
    prometheus: PathBuf,
    promtool: PathBuf,
}

impl Tools {
    /// `None` (after saying why) when one is missing and services are not required.
    fn find() -> Option<Self> {
        if let (Some(prometheus), Some(promtool)) = (on_path("prometheus"), on_path("promtool")) {
            return Some(Self { prometheus, promtool });
        }
        let why = "`prometheus` and `promtool` are not both on PATH (Debian: apt-get install prometheus)";
        assert!(!required(), "{why}, but CONFAB_TEST_REQUIRE_SERVICES=1");
        eprintln!("skipping: {why}");
        None
    }

    /// `promtool check WHAT FILE`, bounded; panics with its output unless it succeeds.
    async fn check(&self, what: &str, file: &Path) {
        let mut cmd = tokio::process::Command::new(&self.promtool);
        cmd.args(["check", what]).arg(file).stdin(Stdio::null()).kill_on_drop(true);
        let run = format!("promtool check {what} {}", file.display());
        let output = tokio::time::timeout(TOOL_TIMEOUT, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("{run} took over {TOOL_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("{run}: {e}"));
        assert!(
            output.status.success(),
            "{run} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The files as shipped: the config (which loads the rule files next to it) and the rules.
    async fn check_shipped_files(&self) {
        let dir = config_dir().join("prometheus");
        self.check("config", &dir.join("prometheus.yml")).await;
        self.check("rules", &dir.join("alerts.yml")).await;
    }
}

/// A `confab serve` with its public and metrics listeners.
struct Node {
    proc: Proc,
    addr: SocketAddr,
    metrics: SocketAddr,
}

impl Node {
    fn spawn(index: usize, env: &[(&str, &str)], dir: &Path) -> Self {
        let (addr, metrics) = (free_addr(), free_addr());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_confab"));
        cmd.arg("serve")
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .env("CONFAB_LISTEN", addr.to_string())
            // As the compose deployment runs it: metrics on their own listener.
            .env("CONFAB_METRICS_LISTEN", metrics.to_string())
            .env("CONFAB_NODE_ID", format!("monitoring-{index}"));
        let proc = Proc::spawn(format!("node {index}"), cmd, dir.join(format!("node-{index}.log")));
        Self { proc, addr, metrics }
    }

    /// Polls `/ready` and the metrics listener until both answer 200 (bounded).
    async fn wait_ready(&mut self, http: &reqwest::Client) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let ok = |r: Result<reqwest::Response, reqwest::Error>| r.is_ok_and(|r| r.status().is_success());
            if ok(http.get(format!("http://{}/ready", self.addr)).send().await)
                && ok(http.get(format!("http://{}/metrics", self.metrics)).send().await)
            {
                return;
            }
            self.proc.assert_running();
            assert!(
                Instant::now() < deadline,
                "{} not ready within {STARTUP_TIMEOUT:?}:\n{}",
                self.proc.name,
                self.proc.log_tail()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Two nodes on the test's database and Redis prefix; the first applies the migrations.
async fn start_nodes(db: &TestDb, redis: &TestRedis, dir: &Path, http: &reqwest::Client) -> Vec<Node> {
    let env = [
        ("CONFAB_DATABASE__URL", db.url()),
        ("CONFAB_REDIS__URL", redis.url.as_str()),
        ("CONFAB_REDIS__PREFIX", redis.prefix.as_str()),
        ("CONFAB_AUTH__JWT_SECRET", "monitoring-test-secret-long-enough-for-hs256"),
        ("CONFAB_AUTH__ARGON2__MEMORY_KIB", "64"),
        ("CONFAB_AUTH__ARGON2__ITERATIONS", "1"),
        ("CONFAB_LOG_LEVEL", "warn"),
        ("CONFAB_SHUTDOWN__GRACE", "2s"),
    ];
    let mut first = Node::spawn(0, &env, dir);
    first.wait_ready(http).await;
    let mut second = Node::spawn(1, &env, dir);
    second.wait_ready(http).await;
    vec![first, second]
}

// ---------------------------------------------------------------------------------------------
// Traffic.

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// A native WebSocket client (docs/PROTOCOL.md).
struct Ws {
    name: &'static str,
    socket: Socket,
}

impl Ws {
    async fn connect(name: &'static str, node: &Node, token: &str) -> Self {
        let url = format!("ws://{}/ws?access_token={token}", node.addr);
        let Ok(upgrade) = tokio::time::timeout(FRAME_TIMEOUT, tokio_tungstenite::connect_async(url)).await else {
            panic!("{name}: WebSocket upgrade timed out")
        };
        let (socket, _) = upgrade.unwrap_or_else(|e| panic!("{name}: WebSocket upgrade: {e}"));
        let mut ws = Self { name, socket };
        let hello = ws.next().await;
        assert_eq!(hello["type"], "hello", "{name}: first frame {hello}");
        ws
    }

    async fn send(&mut self, frame: &Value) {
        self.socket.send(Message::text(frame.to_string())).await.unwrap_or_else(|e| panic!("{}: send: {e}", self.name));
    }

    /// The next JSON frame (bounded by FRAME_TIMEOUT).
    async fn next(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(FRAME_TIMEOUT, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("{}: no frame within {FRAME_TIMEOUT:?}", self.name));
            match msg {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(text.as_str())
                        .unwrap_or_else(|e| panic!("{}: {e}: {}", self.name, text.as_str()));
                }
                Some(Ok(Message::Close(frame))) => panic!("{}: closed by the server: {frame:?}", self.name),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("{}: {e}", self.name),
                None => panic!("{}: connection ended", self.name),
            }
        }
    }

    /// Reads frames until one satisfies `pred` and returns it.
    async fn until(&mut self, what: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
        loop {
            let frame = self.next().await;
            if pred(&frame) {
                return frame;
            }
            assert!(frame["type"] != "error", "{}: waiting for {what}, got {frame}", self.name);
        }
    }

    async fn join(&mut self, room: &str) {
        self.send(&json!({ "type": "join_room", "room": room, "ref": "join" })).await;
        self.until("the join ack", |f| f["type"] == "ack" && f["ref"] == "join").await;
    }

    async fn close(mut self) {
        let _ = self.socket.close(None).await;
        // The server's close frame, then the end of the stream (bounded).
        let _ = tokio::time::timeout(FRAME_TIMEOUT, async { while self.socket.next().await.is_some() {} }).await;
    }
}

async fn post(http: &reqwest::Client, node: &Node, path: &str, body: &Value) -> (reqwest::StatusCode, Value) {
    let resp = http
        .post(format!("http://{}{path}", node.addr))
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(http: &reqwest::Client, node: &Node, path: &str, token: &str) -> Value {
    let resp = http
        .get(format!("http://{}{path}", node.addr))
        .bearer_auth(token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
    resp.json().await.expect("a JSON body")
}

/// An account registered on `node`: its access and refresh tokens.
async fn register(http: &reqwest::Client, node: &Node, email: &str) -> (String, String) {
    let (status, body) = post(http, node, "/api/auth/register", &json!({ "email": email, "password": PASSWORD })).await;
    assert!(status.is_success(), "register {email}: {status} {body}");
    let token = |k: &str| body[k].as_str().unwrap_or_else(|| panic!("register {email}: no {k} in {body}")).to_owned();
    (token("token"), token("refreshToken"))
}

/// What the dashboard shows, made for real: Ann on node 0 and Ben on node 1 in one room, Ann's
/// messages reaching Ben through Redis and Ben's reaching Ann, logins good and bad, a refresh,
/// a search, history, and a flood of sends into the per-user rate limit. Every send is
/// answered before this returns.
async fn make_traffic(nodes: &[Node], http: &reqwest::Client) {
    let (ann_token, ann_refresh) = register(http, &nodes[0], "ann@monitoring.example").await;
    let (ben_token, _) = register(http, &nodes[1], "ben@monitoring.example").await;
    let login = json!({ "email": "ann@monitoring.example", "password": PASSWORD });
    let (status, body) = post(http, &nodes[1], "/api/auth/login", &login).await;
    assert!(status.is_success(), "login: {status} {body}");
    let bad = json!({ "email": "ann@monitoring.example", "password": "not the password" });
    let (status, _) = post(http, &nodes[0], "/api/auth/login", &bad).await;
    assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED, "a wrong password");
    let (status, body) = post(http, &nodes[0], "/api/auth/refresh", &json!({ "refreshToken": ann_refresh })).await;
    assert!(status.is_success(), "refresh: {status} {body}");

    let mut ann = Ws::connect("ann", &nodes[0], &ann_token).await;
    let mut ben = Ws::connect("ben", &nodes[1], &ben_token).await;
    ann.join(ROOM).await;
    ben.join(ROOM).await;

    for i in 0..MESSAGES {
        ann.send(
            &json!({ "type": "send_message", "room": ROOM, "content": format!("hello {i}"), "ref": format!("s{i}") }),
        )
        .await;
    }
    for i in 0..MESSAGES {
        let content = format!("hello {i}");
        ben.until(&format!("message {content:?} from the other node"), |f| {
            f["type"] == "message" && f["content"] == *content
        })
        .await;
    }
    ben.send(&json!({ "type": "send_message", "room": ROOM, "content": "hello back", "ref": "b" })).await;
    ann.until("Ben's message from the other node", |f| f["type"] == "message" && f["content"] == "hello back").await;

    let found = get(http, &nodes[0], "/api/search?q=hello", &ann_token).await;
    assert!(found["results"].is_array(), "search: {found}");
    let history = get(http, &nodes[1], &format!("/api/messages/{ROOM}"), &ben_token).await;
    assert!(history["messages"].as_array().is_some_and(|m| m.len() > 5), "history: {history}");
    ben.close().await;

    // The flood: every send answered (ack or error), some of them `rate_limited`.
    for i in 0..FLOOD {
        let frame =
            json!({ "type": "send_message", "room": ROOM, "content": format!("flood {i}"), "ref": format!("f{i}") });
        ann.socket.feed(Message::text(frame.to_string())).await.expect("feed");
    }
    ann.socket.flush().await.expect("flush");
    let (mut answered, mut limited) = (BTreeSet::new(), 0);
    while answered.len() < FLOOD as usize {
        let frame = ann.next().await;
        let is_answer = matches!(frame["type"].as_str(), Some("ack" | "error"));
        if let Some(r) = frame["ref"].as_str().filter(|r| is_answer && r.starts_with('f')) {
            answered.insert(r.to_owned());
            limited += usize::from(frame["code"] == "rate_limited");
        }
    }
    assert!(limited > 0, "{FLOOD} sends at once and none was rate limited");
    ann.close().await;
}

// ---------------------------------------------------------------------------------------------
// Prometheus.

struct Prometheus {
    proc: Proc,
    addr: SocketAddr,
    http: reqwest::Client,
}

impl Prometheus {
    /// Prometheus on a free loopback port, with the shipped config pointed at `targets` and
    /// the rule files it names next to it; ready when it answers `/-/ready`.
    async fn start(tools: &Tools, shipped: &Shipped, targets: &[String], dir: &Path, http: reqwest::Client) -> Self {
        let config_dir = dir.join("prometheus");
        std::fs::create_dir_all(&config_dir).expect("config dir");
        let config = config_dir.join("prometheus.yml");
        std::fs::write(&config, shipped.for_test(targets)).expect("write prometheus.yml");
        for file in &shipped.rule_files {
            let to = config_dir.join(file);
            std::fs::create_dir_all(to.parent().expect("a parent")).expect("rule dir");
            std::fs::copy(shipped.dir.join(file), &to).unwrap_or_else(|e| panic!("copy {file}: {e}"));
        }
        // What the test runs is valid too.
        tools.check("config", &config).await;

        let addr = free_addr();
        let mut cmd = Command::new(&tools.prometheus);
        cmd.current_dir(dir)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={addr}"));
        let mut prometheus =
            Self { proc: Proc::spawn("prometheus".into(), cmd, dir.join("prometheus.log")), addr, http };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let ready = prometheus.http.get(format!("http://{addr}/-/ready")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return prometheus;
            }
            prometheus.proc.assert_running();
            assert!(
                Instant::now() < deadline,
                "Prometheus not ready within {STARTUP_TIMEOUT:?}:\n{}",
                prometheus.proc.log_tail()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// `GET /api/v1/{path}`: its `data`, or Prometheus' error.
    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let url = url::Url::parse_with_params(&format!("http://{}/api/v1/{path}", self.addr), params).expect("url");
        let resp = self.http.get(url).send().await.map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|e| format!("HTTP {status}, not JSON: {e}"))?;
        if body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(format!("HTTP {status}: {}: {}", body["errorType"], body["error"]))
        }
    }

    /// The series (or scalar) of an instant query.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api("query", &[("query", expr)]).await?;
        match data["resultType"].as_str() {
            Some("vector" | "matrix") => Ok(data["result"].as_array().cloned().unwrap_or_default()),
            Some("scalar" | "string") => Ok(vec![data["result"].clone()]),
            other => Err(format!("unexpected resultType {other:?}")),
        }
    }

    /// `instance` → value of an instant vector query.
    async fn values(&self, expr: &str) -> BTreeMap<String, f64> {
        let series = self.query(expr).await.unwrap_or_else(|e| panic!("{expr}: {e}"));
        series
            .iter()
            .map(|s| {
                let instance = s["metric"]["instance"].as_str().unwrap_or_default().to_owned();
                let value = s["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
                (instance, value)
            })
            .collect()
    }

    /// Polls `expr` until `pred` holds of its values by instance; panics with `what` and the
    /// last values after SCRAPE_TIMEOUT.
    async fn wait_until(&mut self, what: &str, expr: &str, pred: impl Fn(&BTreeMap<String, f64>) -> bool) {
        let deadline = Instant::now() + SCRAPE_TIMEOUT;
        loop {
            let values = self.values(expr).await;
            if pred(&values) {
                return;
            }
            self.proc.assert_running();
            assert!(Instant::now() < deadline, "{what}: not within {SCRAPE_TIMEOUT:?}; `{expr}` is {values:?}");
            tokio::time::sleep(POLL).await;
        }
    }

    /// Both targets up, each scraped a few times.
    async fn wait_for_scrapes(&mut self, job: &str, targets: &[String]) {
        let deadline = Instant::now() + SCRAPE_TIMEOUT;
        loop {
            let data = self.api("targets", &[("state", "active")]).await.expect("targets");
            let up: BTreeSet<&str> = data["activeTargets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| t["labels"]["job"] == job && t["health"] == "up")
                .filter_map(|t| t["labels"]["instance"].as_str())
                .collect();
            if targets.iter().all(|t| up.contains(t.as_str())) {
                break;
            }
            self.proc.assert_running();
            assert!(Instant::now() < deadline, "targets not up within {SCRAPE_TIMEOUT:?}: {data}");
            tokio::time::sleep(POLL).await;
        }
        let expr = format!("count_over_time(up{{job=\"{job}\"}}[1m])");
        self.wait_until("three scrapes of each node", &expr, |v| {
            targets.iter().all(|t| v.get(t).is_some_and(|n| *n >= 3.0))
        })
        .await;
    }

    /// The traffic scraped, each part on the node it went to: every send counted by the node it
    /// was sent to, and node 1 got node 0's messages through Redis and delivered them.
    async fn wait_for_traffic(&mut self, job: &str, targets: &[String]) {
        let sent = [f64::from(MESSAGES + FLOOD), 1.0];
        let expr = format!("confab_messages_received_total{{job=\"{job}\"}}");
        self.wait_until("each node's sends counted on it", &expr, |v| {
            targets.iter().zip(sent).all(|(t, n)| v.get(t).is_some_and(|got| (got - n).abs() < 0.5))
        })
        .await;
        let other = &targets[1];
        let expr = format!("confab_bus_received_total{{job=\"{job}\"}}");
        self.wait_until("node 1 received events through Redis", &expr, |v| {
            v.get(other).is_some_and(|n| *n >= f64::from(MESSAGES))
        })
        .await;
        let expr = format!("sum by (instance) (confab_messages_delivered_total{{job=\"{job}\"}})");
        self.wait_until("node 1 delivered node 0's messages", &expr, |v| {
            v.get(other).is_some_and(|n| *n >= f64::from(MESSAGES))
        })
        .await;
    }

    /// The `instance` variable's query lists both nodes.
    async fn check_instance_variable(&self, dashboard: &Dashboard, targets: &[String]) {
        let metric = dashboard.instance_metric();
        let found = self.values(&metric).await;
        for target in targets {
            assert!(
                found.contains_key(target),
                "the instance variable (label_values of {metric}) lacks {target}: {found:?}"
            );
        }
    }

    /// Every dashboard expression parses and returns data, retried (bounded) while some return
    /// nothing yet; the failure lists every expression that erred or stayed empty.
    async fn check_dashboard(&self, dashboard: &Dashboard, targets: &[String]) {
        let queries: Vec<(String, &PanelQuery)> =
            dashboard.queries.iter().map(|q| (substitute(&q.expr, targets), q)).collect();
        let deadline = Instant::now() + QUERY_TIMEOUT;
        let mut empty: Vec<&(String, &PanelQuery)> = queries.iter().collect();
        let mut errors = Vec::new();
        loop {
            let mut still_empty = Vec::new();
            for query in empty {
                match self.query(&query.0).await {
                    Err(e) => errors.push(format!("{:?} {}: {e}\n    {}", query.1.panel, query.1.ref_id, query.0)),
                    Ok(series) if series.is_empty() => still_empty.push(query),
                    Ok(_) => {}
                }
            }
            empty = still_empty;
            if empty.is_empty() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(POLL * 5).await;
        }
        let empty: Vec<String> =
            empty.iter().map(|(expr, q)| format!("{:?} {}: no series\n    {expr}", q.panel, q.ref_id)).collect();
        assert!(
            errors.is_empty() && empty.is_empty(),
            "{} of {} dashboard expressions failed (after up to {QUERY_TIMEOUT:?}):\n{}",
            errors.len() + empty.len(),
            queries.len(),
            errors.iter().chain(&empty).map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n")
        );
    }

    /// Every rule of the shipped files is loaded, has been evaluated without error, carries a
    /// severity and its annotations, and its query parses.
    async fn check_rules(&self, shipped: &Shipped) {
        let deadline = Instant::now() + SCRAPE_TIMEOUT;
        let rules = loop {
            let data = self.api("rules", &[("type", "alert")]).await.expect("rules");
            let rules: Vec<Value> = data["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            if rules.len() >= shipped.alert_rules && rules.iter().all(|r| r["health"] != "unknown") {
                break rules;
            }
            assert!(Instant::now() < deadline, "rules not loaded and evaluated within {SCRAPE_TIMEOUT:?}: {data}");
            tokio::time::sleep(POLL).await;
        };
        assert_eq!(rules.len(), shipped.alert_rules, "Prometheus loaded a different number of alert rules");
        let names: BTreeSet<&str> = rules.iter().filter_map(|r| r["name"].as_str()).collect();
        for alert in ALERTS {
            assert!(names.contains(alert), "no {alert} rule among {names:?}");
        }
        let mut problems = Vec::new();
        for rule in &rules {
            let (name, query) = (rule["name"].as_str().unwrap_or("?"), rule["query"].as_str().unwrap_or_default());
            if rule["health"] != "ok" {
                problems.push(format!("{name}: health {} {}", rule["health"], rule["lastError"]));
            }
            if !matches!(rule["labels"]["severity"].as_str(), Some("critical" | "warning")) {
                problems.push(format!("{name}: severity {}", rule["labels"]["severity"]));
            }
            for key in ["summary", "description"] {
                if rule["annotations"][key].as_str().is_none_or(str::is_empty) {
                    problems.push(format!("{name}: no {key} annotation"));
                }
            }
            if let Err(e) = self.query(query).await {
                problems.push(format!("{name}: {e}\n    {query}"));
            }
        }
        assert!(problems.is_empty(), "alert rules:\n  {}", problems.join("\n  "));
    }

    /// Node 1 killed: ConfabNodeDown goes pending (it fires after its `for`) for that node only.
    async fn check_node_down_alert(&mut self, node: &mut Node, targets: &[String]) {
        node.proc.kill();
        let deadline = Instant::now() + SCRAPE_TIMEOUT;
        loop {
            let data = self.api("alerts", &[]).await.expect("alerts");
            let down: BTreeSet<&str> = data["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["labels"]["alertname"] == "ConfabNodeDown")
                .filter(|a| matches!(a["state"].as_str(), Some("pending" | "firing")))
                .filter_map(|a| a["labels"]["instance"].as_str())
                .collect();
            if down.contains(targets[1].as_str()) {
                assert!(!down.contains(targets[0].as_str()), "ConfabNodeDown for the live node: {data}");
                return;
            }
            self.proc.assert_running();
            assert!(Instant::now() < deadline, "ConfabNodeDown not pending for the killed node: {data}");
            tokio::time::sleep(POLL).await;
        }
    }
}
