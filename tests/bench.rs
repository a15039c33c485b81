//! Keeps `confab-bench` working: a tiny fan-out run against a node it spawns itself (SQLite),
//! checked through its machine-readable line.

use std::{
    io::Read as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// The whole run (spawn, provision, 2.5 s of traffic, drain, stop) takes a few seconds.
const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn a_tiny_fanout_run_delivers_every_message_once_and_in_order() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_confab-bench"))
        .args(["--spawn", "1", "--confab-bin", env!("CARGO_BIN_EXE_confab"), "fanout"])
        .args(["--clients", "20", "--rooms", "2", "--senders", "2", "--rate", "50"])
        .args(["--duration", "2s", "--warmup", "500ms", "--drain", "5s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("confab-bench starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for confab-bench") {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("confab-bench did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child.stdout.take().expect("piped").read_to_string(&mut stdout).expect("stdout");
    child.stderr.take().expect("piped").read_to_string(&mut stderr).expect("stderr");
    assert!(status.success(), "confab-bench failed: {status}\n{stdout}\n{stderr}");

    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH_JSON "))
        .unwrap_or_else(|| panic!("no BENCH_JSON line in:\n{stdout}\n{stderr}"));
    let run: serde_json::Value = serde_json::from_str(line).expect("BENCH_JSON is JSON");
    let n = |key: &str| run[key].as_u64().unwrap_or_else(|| panic!("{key} missing in {run}"));
    // 50 msg/s for 2 s, 10 members per room.
    assert_eq!(n("sent"), 100, "{run}");
    assert_eq!(n("expected"), 1000, "{run}");
    assert_eq!(n("delivered"), n("expected"), "{run}");
    assert_eq!((n("lost"), n("duplicated"), n("out_of_order"), n("errors"), n("closed")), (0, 0, 0, 0, 0), "{run}");
    assert!(run["latency_ms"]["p99"].as_f64().is_some(), "{run}");
    assert_eq!(run["client_ids"], true, "sends carry a clientId by default, as the web client's do: {run}");
}
