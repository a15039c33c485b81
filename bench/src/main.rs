//! `confab-bench`: the load benchmark of BENCHMARKS.md.
//!
//! It speaks the native WebSocket protocol to one or several confab nodes (running ones, or
//! nodes it starts itself), provisions one account per client over REST, and runs a scenario:
//! open-loop fan-out, a rate step search, idle connections, acked durable stores, fan-out
//! across a cluster, or many rooms, most of them idle. Each run prints a table and one
//! `BENCH_JSON {...}` line.
//!
//! The generator runs on the same cores as the server it measures, so it is built to be cheap
//! per received message (see `fanout/`) and reports its own CPU time next to the server's.

// Statistics mix integer counts and times with float rates and percentiles; the values involved
// (counts below 2^52, nanoseconds since start) are far from where these casts lose anything.
#![allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod cli;
mod fanout;
mod floor;
mod http;
mod nodes;
mod preload;
mod procfs;
mod report;
mod scenario;
mod store;
mod users;
mod ws;

use std::process::ExitCode;

use anyhow::anyhow;
use clap::Parser as _;

use crate::{
    cli::{Cli, Scenario},
    nodes::Targets,
    scenario::Context,
};

/// One monotonic clock for the whole process, in nanoseconds: send times are embedded in
/// messages and compared with receive times on other threads.
///
/// Messages carry their scheduled send time as Unix time (ns since 1970, UTC), so that any other
/// client on the machine can compute the same latency with its own reading of the system clock
/// (tests/bench.rs does, with an independent Node.js client). The wall clock is read once, when
/// the monotonic base is taken; from then on both are the base plus monotonic time, so a step of
/// the system clock during a run cannot distort the bench's own figures.
mod clock {
    use std::{
        sync::OnceLock,
        time::{Duration, Instant, SystemTime, UNIX_EPOCH},
    };

    static BASE: OnceLock<(Instant, u64)> = OnceLock::new();

    fn base() -> (Instant, u64) {
        *BASE.get_or_init(|| {
            let mono = Instant::now();
            let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
            (mono, unix)
        })
    }

    pub fn now_ns() -> u64 {
        base().0.elapsed().as_nanos() as u64
    }

    /// The instant `ns` after the base.
    pub fn instant(ns: u64) -> Instant {
        base().0 + Duration::from_nanos(ns)
    }

    /// Clock time `ns` as Unix time in nanoseconds.
    pub fn to_unix(ns: u64) -> u64 {
        base().1 + ns
    }

    /// Unix time in nanoseconds as clock time (0 for anything before the base).
    pub fn from_unix(unix_ns: u64) -> u64 {
        unix_ns.saturating_sub(base().1)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    clock::now_ns();
    let nofile = procfs::raise_nofile_limit();
    let workers = cli.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, std::num::NonZero::get));
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(workers.max(1)).enable_all().build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("confab-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli, workers, nofile));
    // A pacer thread still sleeping towards its next send must not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("confab-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, workers: usize, nofile: u64) -> anyhow::Result<()> {
    let clients = match &cli.scenario {
        Scenario::Fanout(a) | Scenario::Cluster(a) => a.clients,
        Scenario::Step(a) => a.fanout.clients,
        Scenario::Idle(a) => a.clients,
        Scenario::Rooms(a) => a.clients,
        Scenario::Store(a) => a.senders,
        Scenario::FloorServer(a) => return floor::serve(&a.listen).await,
    };
    if nofile > 0 && (clients as u64) + 64 > nofile {
        eprintln!("confab-bench: warning: {clients} connections but only {nofile} open files allowed (ulimit -n)");
    }
    let spawn_default = if matches!(cli.scenario, Scenario::Cluster(_)) { 2 } else { 1 };
    let mut targets = Targets::start(&cli.target, spawn_default).await?;
    // Connections to one address each need a local port of their own.
    let per_node = clients.div_ceil(targets.nodes.len().max(1)) as u64;
    if let Some(ports) = procfs::local_ports()
        && per_node + 64 > ports
    {
        eprintln!(
            "confab-bench: warning: {per_node} connections to one node but only {ports} local ports (net.ipv4.ip_local_port_range)"
        );
    }
    let ctx = Context {
        targets: &targets,
        workers,
        provision_concurrency: cli.target.provision_concurrency,
        run: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
    };
    let result = tokio::select! {
        r = async {
            match &cli.scenario {
                Scenario::Fanout(a) => scenario::fanout(&ctx, a, "fanout").await,
                Scenario::Cluster(a) => scenario::fanout(&ctx, a, "cluster").await,
                Scenario::Step(a) => scenario::step(&ctx, a).await,
                Scenario::Idle(a) => scenario::idle(&ctx, a).await,
                Scenario::Rooms(a) => scenario::rooms(&ctx, a).await,
                Scenario::Store(a) => scenario::store(&ctx, a).await,
                Scenario::FloorServer(_) => unreachable!("served above"),
            }
        } => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    targets.stop().await;
    result
}
