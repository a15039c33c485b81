//! Command line of `confab-bench`: where the servers are, and one subcommand per scenario.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

/// Load benchmark for confab (native WebSocket protocol). See BENCHMARKS.md.
///
/// Point it at running nodes with --url (started with rate limits off, see BENCHMARKS.md), or let
/// it start its own with --spawn N. Every run prints a table and one `BENCH_JSON {...}` line.
#[derive(Debug, Parser)]
#[command(name = "confab-bench", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Generator worker threads (the runtime that reads the sockets); default: one per core.
    #[arg(long, global = true, value_name = "N")]
    pub workers: Option<usize>,

    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, Args)]
pub struct TargetArgs {
    /// Base URL of a running node, e.g. http://127.0.0.1:4000 (repeat for several nodes).
    #[arg(long = "url", global = true, value_name = "URL")]
    pub urls: Vec<String>,

    /// Pid of a running node's process, for server CPU and RSS figures (repeatable).
    #[arg(long = "server-pid", global = true, value_name = "PID")]
    pub server_pids: Vec<i32>,

    /// Start N confab nodes on free ports for the run, and stop them afterwards
    /// [default: 1, or 2 for `cluster`, when no --url is given].
    #[arg(long, global = true, value_name = "N")]
    pub spawn: Option<usize>,

    /// The confab binary to spawn [default: `confab` next to this executable].
    #[arg(long, global = true, value_name = "PATH")]
    pub confab_bin: Option<PathBuf>,

    /// Database of spawned nodes: unset = SQLite in a temp dir; postgres://… = an admin URL in
    /// which the bench creates (and afterwards drops) a scratch database.
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// Redis of spawned nodes (required with --spawn > 1); a unique prefix is used per run.
    #[arg(long, global = true, value_name = "URL")]
    pub redis_url: Option<String>,

    /// Extra environment for spawned nodes, KEY=VALUE (repeatable), e.g. CONFAB_WS__OUTBOUND_QUEUE=4096.
    #[arg(long = "node-env", global = true, value_name = "KEY=VALUE")]
    pub node_env: Vec<String>,

    /// Registrations in flight while provisioning users.
    #[arg(long, global = true, default_value_t = 32, value_name = "N")]
    pub provision_concurrency: usize,
}

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Open-loop fan-out: N clients in R rooms, S senders, M messages/s in total.
    Fanout(FanoutArgs),
    /// Fan-out at rising rates until p99 exceeds the limit or anything is lost.
    Step(StepArgs),
    /// N authenticated, joined, idle connections: connect rate and server RSS per connection.
    Idle(IdleArgs),
    /// Durable stores per second: K senders in distinct rooms, each with a window of unacked sends.
    Store(StoreArgs),
    /// Fan-out over 2-3 nodes sharing PostgreSQL and Redis, with same-node vs cross-node latency.
    Cluster(FanoutArgs),
    /// Many rooms with a few members each, most idle, a few busy: memory per room and per
    /// membership, join rate, idle CPU, and the busy rooms' latency.
    Rooms(RoomsArgs),
    /// The in-memory broadcaster that `--floor` measures beside confab (started by the bench
    /// itself; run it by hand to point other tools at it). Prints `FLOOR_LISTENING <addr>`.
    FloorServer(FloorServerArgs),
}

#[derive(Clone, Debug, Args)]
pub struct FloorServerArgs {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "HOST:PORT")]
    pub listen: String,
}

#[derive(Clone, Debug, Args)]
pub struct FanoutArgs {
    /// Connected clients, each a distinct user.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Rooms; client i joins room i mod R.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Clients that send (the first S; sender j is in room j mod R).
    #[arg(long, default_value_t = 50)]
    pub senders: usize,
    /// Total send rate, messages per second over all senders (open loop).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Measured window.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Sending before the measured window starts (not counted).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Message content size, bytes (at least 43: sender, sequence and send time are embedded).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// How long to wait after the window for messages still in flight before counting them lost.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Send without a `clientId` (by default every send has one, as the web client's do).
    #[arg(long)]
    pub no_client_id: bool,
    /// Store N messages into the run's rooms (acked sends through the server, before the
    /// clients connect), so the measured window runs against a big messages table.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub preload: u64,
    /// Unacknowledged preload sends kept in flight per room.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub preload_window: usize,
    /// Also run the same load against the floor (`confab-bench floor-server`: an in-memory
    /// broadcaster, no storage) and report its latency and CPU beside confab's.
    #[arg(long)]
    pub floor: bool,
    /// Room names are PREFIX-0 … PREFIX-(R-1) [default: b<run id>, unique per run].
    #[arg(long, value_name = "PREFIX")]
    pub room_prefix: Option<String>,
}

#[derive(Clone, Debug, Args)]
pub struct StepArgs {
    #[command(flatten)]
    pub fanout: FanoutArgs,
    /// Each step's rate is the previous one times this factor (--rate is the first step).
    #[arg(long, default_value_t = 1.5)]
    pub factor: f64,
    /// Do not go above this rate, messages per second.
    #[arg(long, default_value_t = 100_000.0)]
    pub max_rate: f64,
    /// Explicit rates instead of --rate/--factor, e.g. 500,1000,2000,4000.
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    /// A step is clean while its p99 latency stays at or below this many milliseconds.
    #[arg(long, default_value_t = 100.0)]
    pub p99_limit_ms: f64,
}

#[derive(Clone, Debug, Args)]
pub struct IdleArgs {
    /// Connections to open and hold, each a distinct user.
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Rooms they join (client i joins room i mod R).
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Connections being opened (and joins in flight) at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// How long to hold the connections before measuring RSS again.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
}

#[derive(Clone, Debug, Args)]
pub struct StoreArgs {
    /// Senders, each alone in its own room.
    #[arg(long, default_value_t = 50)]
    pub senders: usize,
    /// Unacknowledged sends each sender keeps in flight.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Measured window.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Sending before the measured window starts (not counted).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Message content size, bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Send without a `clientId` (by default every send has one, as the web client's do).
    #[arg(long)]
    pub no_client_id: bool,
}

#[derive(Clone, Debug, Args)]
pub struct RoomsArgs {
    /// Rooms, created by the run (each by its first join).
    #[arg(long, default_value_t = 100_000)]
    pub rooms: usize,
    /// Connected clients, each a distinct user. The default stays below 20,000 open files and
    /// the 28,232 local ports Linux gives connections to one address by default.
    #[arg(long, default_value_t = 15_000)]
    pub clients: usize,
    /// Rooms each client joins: client i joins rooms (i + k·clients) mod rooms, k < N; clients
    /// × N must be at least --rooms. The server takes at most chat.max_rooms_per_session (256).
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub rooms_per_client: usize,
    /// Busy rooms: the first B rooms, whose members send the traffic and receive it.
    #[arg(long, default_value_t = 10, value_name = "B")]
    pub busy_rooms: usize,
    /// Total send rate into the busy rooms, messages per second (open loop).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Measured window of the busy phase.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Sending before the measured window starts (not counted).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Message content size, bytes (at least 43: sender, sequence and send time are embedded).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// How long to wait after the window for messages still in flight before counting them lost.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Connections being opened at once, and connections joining at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// `join_room`s a joining connection keeps unacknowledged.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub join_window: usize,
    /// How long every room is held idle, after the joins, for the server's idle CPU.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
    /// Send without a `clientId` (by default every send has one, as the web client's do).
    #[arg(long)]
    pub no_client_id: bool,
}
