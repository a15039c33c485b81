//! Keeps `confab-bench` working and honest.
//!
//! - A tiny fan-out run against a node it spawns itself (SQLite), with a preload and the floor
//!   beside it, checked through its machine-readable line.
//! - A tiny `rooms` run the same way: every join acked, every busy room's message delivered
//!   once and in order.
//! - A cross-check: a fan-out run against a node this test starts, while an independent client
//!   (../tests/interop/bench-crosscheck.mjs: Node.js and the `ws` package, no code shared with the
//!   bench) sits in the same rooms and measures the latency of the same messages with its own
//!   clock. The two medians must agree.
//!
//! The tests take turns (see [`MACHINE`]), and nothing sleeps to synchronise: every wait is for
//! a line, an exit or a readiness answer, bounded in time.
//!
//! Both run the server binary, which belongs to the other package of the workspace (see
//! [`confab_bin`]): `cargo test` at the workspace root builds it; alone, run
//! `cargo build -p confab && cargo test -p confab-bench`.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock, PoisonError, mpsc},
    time::{Duration, Instant, SystemTime},
};

/// A whole bench run (spawn, provision, preload, traffic, drain, the floor, stop) takes seconds.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Each test runs a generator and a server on the machine's cores: one at a time, or each would
/// show up in the other's latency.
static MACHINE: Mutex<()> = Mutex::new(());

/// The workspace's root: the server's package, and its Node.js interop suite (tests/interop/).
fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("bench/ is in the workspace root")
}

/// The `confab` binary the tests run: the one cargo built beside `confab-bench`, in the same
/// profile directory (`target/debug`), where the bench itself looks for it.
///
/// It is the other package's binary, so cargo gives this test no `CARGO_BIN_EXE_confab`, and
/// builds it only when that package's targets are built too: `cargo test` at the workspace root
/// (both packages are default members) builds both binaries before any test runs, while
/// `cargo test -p confab-bench` or `--test bench` builds only the bench. A missing binary, or one
/// older than the server's sources, fails the test with the command to run, rather than
/// measuring a server that is not the one in the tree.
fn confab_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bench = Path::new(env!("CARGO_BIN_EXE_confab-bench"));
        let bin = bench.with_file_name(format!("confab{}", std::env::consts::EXE_SUFFIX));
        let fix = "run `cargo build -p confab`, or `cargo test` at the workspace root (it builds both binaries)";
        let built = std::fs::metadata(&bin)
            .and_then(|m| m.modified())
            .unwrap_or_else(|e| panic!("no confab binary beside confab-bench, at {} ({e}): {fix}", bin.display()));
        if let Some(source) = newer_source(built) {
            panic!("{} was built before {} changed: {fix}", bin.display(), source.display());
        }
        bin
    })
}

/// A source of the server modified after `built`, if any: what cargo rebuilds `confab` for when
/// it changes (src/, the migrations it embeds, build.rs). Not assets/: a debug build reads those
/// from the disk.
fn newer_source(built: SystemTime) -> Option<PathBuf> {
    let root = workspace_root();
    let mut pending = vec![root.join("src"), root.join("migrations"), root.join("build.rs")];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.is_dir() {
            pending.extend(std::fs::read_dir(&path).into_iter().flatten().flatten().map(|entry| entry.path()));
        } else if meta.modified().is_ok_and(|modified| modified > built) {
            return Some(path);
        }
    }
    None
}

/// Runs `confab-bench` with `args` to completion and returns its `BENCH_JSON` line.
fn run_bench(args: &[&str]) -> serde_json::Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_confab-bench"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("confab-bench starts");
    // Drain both pipes on threads, so a chatty run cannot block on a full pipe.
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let status = wait_bounded(&mut child, TIMEOUT, "confab-bench");
    let (stdout, stderr) = (stdout.join().expect("stdout reader"), stderr.join().expect("stderr reader"));
    assert!(status.success(), "confab-bench failed: {status}\n{stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH_JSON "))
        .unwrap_or_else(|| panic!("no BENCH_JSON line in:\n{stdout}\n{stderr}"));
    eprintln!("{stdout}");
    serde_json::from_str(line).expect("BENCH_JSON is JSON")
}

/// Waits for `child` to exit, killing it (and failing) after `limit`.
fn wait_bounded(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count(run: &serde_json::Value, key: &str) -> u64 {
    run[key].as_u64().unwrap_or_else(|| panic!("{key} missing in {run}"))
}

#[test]
fn a_tiny_fanout_run_delivers_every_message_once_and_in_order() {
    let _machine = MACHINE.lock().unwrap_or_else(PoisonError::into_inner);
    let run = run_bench(&[
        "--spawn",
        "1",
        "--confab-bin",
        confab_bin().to_str().expect("a UTF-8 path"),
        "fanout",
        "--clients",
        "20",
        "--rooms",
        "2",
        "--senders",
        "2",
        "--rate",
        "50",
        "--duration",
        "2s",
        "--warmup",
        "500ms",
        "--drain",
        "5s",
        "--preload",
        "1000",
        "--floor",
    ]);
    // 50 msg/s for 2 s, 10 members per room.
    assert_eq!(count(&run, "sent"), 100, "{run}");
    assert_eq!(count(&run, "expected"), 1000, "{run}");
    assert_eq!(count(&run, "delivered"), count(&run, "expected"), "{run}");
    let faults =
        |run: &serde_json::Value| ["lost", "duplicated", "out_of_order", "errors", "closed"].map(|key| count(run, key));
    assert_eq!(faults(&run), [0; 5], "{run}");
    assert!(run["latency_ms"]["p99"].as_f64().is_some(), "{run}");
    // Latency runs to each delivery's arrival in the socket, as the kernel stamped it; the
    // bench's own wait to read it is reported apart.
    assert_eq!(count(&run, "unstamped_deliveries"), 0, "every read had the kernel's arrival time: {run}");
    assert!(run["read_delay_ms"]["p50"].as_f64().is_some(), "{run}");
    assert_eq!(run["client_ids"], true, "sends carry a clientId by default, as the web client's do: {run}");
    // Read from the node's /metrics: one node delivers its own commits in order, so nothing is
    // read back to fill a gap.
    assert_eq!(run["gap_repaired"].as_f64(), Some(0.0), "{run}");

    // The preload stored every message before the window, and none of them counted in it.
    let preloaded = &run["preloaded"];
    assert_eq!(preloaded["messages"], 1000, "{run}");
    assert!(preloaded["per_s"].as_f64().is_some_and(|r| r > 0.0), "{run}");
    assert!(preloaded["index_wait_s"].as_f64().is_some(), "the search index caught up: {run}");

    // The floor carried the same load, cleanly, and its CPU was measured as a process of its own.
    let floor = &run["floor"];
    assert_eq!((count(floor, "sent"), count(floor, "expected")), (100, 1000), "{run}");
    assert_eq!(count(floor, "delivered"), 1000, "{run}");
    assert_eq!(faults(floor), [0; 5], "{run}");
    assert!(floor["latency_ms"]["p50"].as_f64().is_some(), "{run}");
    assert!(floor["server_cpu_us_per_delivery"].as_f64().is_some_and(|us| us > 0.0), "{run}");
}

/// `rooms`, tiny: 100 rooms, each with three of the 60 clients (five rooms each), 21 of them busy.
/// Client i's rooms are those ≡ i (mod 20), so busy rooms 0 and 20 share their members: those
/// connections receive two busy rooms' messages interleaved, and room seq order must be checked
/// per room.
#[test]
fn a_tiny_rooms_run_joins_every_membership_and_delivers_every_message_once_and_in_order() {
    let _machine = MACHINE.lock().unwrap_or_else(PoisonError::into_inner);
    let run = run_bench(&[
        "--spawn",
        "1",
        "--confab-bin",
        confab_bin().to_str().expect("a UTF-8 path"),
        "rooms",
        "--rooms",
        "100",
        "--clients",
        "60",
        "--rooms-per-client",
        "5",
        "--busy-rooms",
        "21",
        "--rate",
        "100",
        "--duration",
        "2s",
        "--warmup",
        "500ms",
        "--hold",
        "1s",
        "--drain",
        "5s",
    ]);
    assert_eq!(run["scenario"], "rooms", "{run}");
    assert_eq!((count(&run, "memberships"), count(&run, "senders")), (300, 63), "{run}");
    // Round A created every room with its first member; round B added the other two to each.
    assert_eq!(count(&run["join_new_rooms"], "joins"), 100, "{run}");
    assert_eq!(count(&run["join_existing_rooms"], "joins"), 200, "{run}");
    for key in ["rss_per_connection_kib", "rss_per_membership_kib", "rss_per_room_kib", "server_cpu_idle_pct"] {
        assert!(run[key].as_f64().is_some(), "{key} missing in {run}");
    }
    // 100 msg/s for 2 s into rooms of three members.
    assert_eq!(count(&run, "sent"), 200, "{run}");
    assert_eq!(count(&run, "expected"), 600, "{run}");
    assert_eq!(count(&run, "delivered"), 600, "{run}");
    let faults =
        ["lost", "duplicated", "out_of_order", "errors", "closed", "closed_before_busy"].map(|k| count(&run, k));
    assert_eq!(faults, [0; 6], "{run}");
    assert_eq!(run["clean"], true, "{run}");
    assert!(run["latency_ms"]["p99"].as_f64().is_some(), "{run}");
}

// ---------------------------------------------------------------------------------------------
// The cross-check
// ---------------------------------------------------------------------------------------------

/// A confab node started for the test on a free port, SQLite in a temp dir, with the bench's
/// settings (rate limits off: one IP registers every user and sends far above a human's rate).
struct Node {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("confab.toml");
        std::fs::write(&config, "# everything comes from the environment\n").expect("config");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("node.log")).expect("log file");
        let mut cmd = Command::new(confab_bin());
        cmd.arg("--config").arg(&config).args(["serve", "--listen", &addr]);
        cmd.current_dir(dir.path()).stdin(Stdio::null()).stdout(log.try_clone().expect("log")).stderr(log);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("CONFAB_") || ["DATABASE_URL", "REDIS_URL", "JWT_SECRET", "PORT"].contains(&key.as_str())
            {
                cmd.env_remove(key);
            }
        }
        cmd.env("CONFAB_DATABASE__URL", format!("sqlite://{}", dir.path().join("confab.db").display()));
        cmd.envs([
            ("CONFAB_AUTH__JWT_SECRET", "crosscheck-secret-crosscheck-secret-crosscheck-secret-0123456789"),
            ("CONFAB_LIMITS__AUTH_PER_MINUTE", "0"),
            ("CONFAB_LIMITS__MESSAGES_PER_SECOND", "0"),
            ("CONFAB_LIMITS__JOINS_PER_SECOND", "0"),
            ("CONFAB_WS__MAX_SESSIONS_PER_USER", "0"),
            ("CONFAB_HTTP__MAX_CONNECTIONS_PER_IP", "0"),
            ("CONFAB_AUTH__ARGON2__MEMORY_KIB", "64"),
            ("CONFAB_AUTH__ARGON2__ITERATIONS", "1"),
            ("CONFAB_LOG_LEVEL", "warn"),
            ("NO_COLOR", "1"),
        ]);
        let child = cmd.spawn().expect("confab starts");
        let mut node = Self { child, addr, dir };
        let started = Instant::now();
        while !node.ready() {
            if let Some(status) = node.child.try_wait().expect("waiting for confab") {
                panic!("confab exited with {status} before it was ready:\n{}", node.log());
            }
            assert!(started.elapsed() < TIMEOUT, "confab not ready after {TIMEOUT:?}:\n{}", node.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        node
    }

    /// `GET /ready` answers 200.
    fn ready(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(&self.addr) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let request = format!("GET /ready HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.addr);
        let mut answer = String::new();
        stream.write_all(request.as_bytes()).is_ok()
            && stream.read_to_string(&mut answer).is_ok()
            && answer.starts_with("HTTP/1.1 200")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }
}

/// The independent client, and its stdout as lines.
struct Independent {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Independent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Independent {
    fn start(script: &Path, url: &str, rooms: &str) -> Self {
        let mut child = Command::new("node")
            .arg(script)
            .current_dir(script.parent().expect("tests/interop"))
            .env("CONFAB_URL", url)
            .env("CONFAB_ROOMS", rooms)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node starts");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The first line that starts with `prefix`, without it.
    fn expect_line(&self, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => match line.strip_prefix(prefix) {
                    Some(rest) => return rest.trim().to_owned(),
                    None => eprintln!("independent client: {line}"),
                },
                Err(e) => panic!("no `{prefix}` line from the independent client within {limit:?}: {e}"),
            }
        }
    }
}

/// Whether two medians agree: within 20 % of the larger one; when both are under 1 ms, within
/// 0.3 ms. Below a millisecond, 20 % is tens of microseconds, which is one scheduler wakeup on a
/// busy two-core machine: the two clients are separate processes woken separately, so what would
/// decide the comparison there is noise, not measurement.
fn medians_agree(a: f64, b: f64) -> bool {
    let mut tolerance = 0.2 * a.max(b);
    if a < 1.0 && b < 1.0 {
        tolerance = tolerance.max(0.3);
    }
    (a - b).abs() <= tolerance
}

#[test]
fn the_tolerance_of_the_cross_check() {
    assert!(medians_agree(10.0, 8.1));
    assert!(!medians_agree(10.0, 7.9));
    assert!(medians_agree(0.4, 0.7));
    assert!(!medians_agree(0.3, 0.9));
    assert!(!medians_agree(1.0, 1.3));
}

/// The bench's latency is what a client sees: an independent client in the same rooms measures
/// the same messages' latency (its receive time on the system clock minus the scheduled send
/// time the bench put in the content as Unix time) and gets the same median. It also receives
/// every message the bench sent in its window, once. Skipped (saying why) when `node` or
/// `npm ci --prefix tests/interop` (at the workspace root) is missing, unless
/// `CONFAB_TEST_REQUIRE_SERVICES=1`.
#[test]
fn an_independent_client_measures_the_same_latency_as_the_bench() {
    // The server's interop suite: tests/socketio.rs runs it too, and they share one `npm ci`.
    let interop = workspace_root().join("tests/interop");
    let required = std::env::var("CONFAB_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
    let missing = match Command::new("node").arg("--version").output() {
        Err(e) => Some(format!("`node` cannot run: {e}")),
        Ok(out) if !out.status.success() => Some("`node --version` failed".to_owned()),
        Ok(_) if !interop.join("node_modules/ws").is_dir() => {
            Some(format!("{}/node_modules is missing: run `npm ci --prefix tests/interop`", interop.display()))
        }
        Ok(_) => None,
    };
    if let Some(why) = missing {
        assert!(!required, "{why} (CONFAB_TEST_REQUIRE_SERVICES=1)");
        eprintln!("skipping: {why}");
        return;
    }
    let _machine = MACHINE.lock().unwrap_or_else(PoisonError::into_inner);
    let node = Node::start();
    let url = format!("http://{}", node.addr);
    let independent = Independent::start(&interop.join("bench-crosscheck.mjs"), &url, "xc-0,xc-1");
    independent.expect_line("READY", TIMEOUT);

    // 1,600 messages in the window, each one a sample for the independent client (it is in both
    // rooms) and ten for the bench.
    let pid = node.child.id().to_string();
    let run = run_bench(&[
        "--url",
        &url,
        "--server-pid",
        &pid,
        "fanout",
        "--room-prefix",
        "xc",
        "--clients",
        "20",
        "--rooms",
        "2",
        "--senders",
        "4",
        "--rate",
        "400",
        "--duration",
        "4s",
        "--warmup",
        "1s",
        "--drain",
        "5s",
    ]);
    let sent = count(&run, "sent");
    assert_eq!(sent, 1600, "{run}");
    assert_eq!((count(&run, "delivered"), count(&run, "lost")), (count(&run, "expected"), 0), "{run}");
    let window = run["window_unix_ns"].as_array().expect("window_unix_ns");
    let (start, end) = (window[0].as_u64().expect("start"), window[1].as_u64().expect("end"));

    writeln!(independent.child.stdin.as_ref().expect("piped"), "DONE {start} {end} {sent}").expect("to node");
    let seen: serde_json::Value =
        serde_json::from_str(&independent.expect_line("CROSSCHECK ", Duration::from_secs(30))).expect("JSON");
    assert_eq!(seen["count"], sent, "the independent client received every message of the window: {seen}");
    assert_eq!(seen["duplicates"], 0, "{seen}");

    let bench_p50 = run["latency_ms"]["p50"].as_f64().expect("bench p50");
    let seen_p50 = seen["p50_ms"].as_f64().expect("independent p50");
    eprintln!(
        "p50: bench {bench_p50:.3} ms, independent client {seen_p50:.3} ms; p99: bench {} ms, independent {} ms; \
         the bench's own read delay (left out of its latency): {}",
        run["latency_ms"]["p99"], seen["p99_ms"], run["read_delay_ms"]
    );
    assert!(
        medians_agree(bench_p50, seen_p50),
        "the bench's p50 ({bench_p50:.3} ms) and the independent client's ({seen_p50:.3} ms) disagree\n{run}\n{seen}"
    );
}
