//! `rooms`: many rooms with a few members each, most of them idle, a few busy.
//!
//! Client `i` is in rooms `(i + k·clients) mod rooms` for `k < --rooms-per-client` (see
//! [`Plan`]). The joins come in two measured rounds, so that the server's memory per room and
//! per membership can be told apart:
//!
//! - round A gives every room its first member: each join creates its room, and there are as
//!   many memberships as rooms;
//! - round B adds every other membership, to rooms that exist already.
//!
//! Per membership is ΔRSS(B) / joins(B); per room is (ΔRSS(A) − joins(A) × per membership) /
//! rooms. The rooms are then held idle for `--hold`, for the server's CPU with nothing to do
//! (an idle room should cost no task, timer or queue), and then the members of the first
//! `--busy-rooms` rooms send open-loop traffic into them, measured as `fanout` measures it:
//! latency from the scheduled send time, every delivery checked for loss, duplicates and order.

use std::time::Duration;

use anyhow::bail;
use serde_json::{Value, json};

use super::{Context, us_per_delivery};
use crate::{
    cli::RoomsArgs,
    clock,
    fanout::{Clients, JoinRound, Joining, MIN_SIZE, Phase, Plan},
    procfs::{CpuSample, servers_rss_kib},
    report::{json_line, per, round1, round3, table},
    users,
};

/// Read buffer per connection: most of them only ever read a few small events.
const ROOMS_BUFFER: usize = 4 * 1024;
/// Senders are numbered with six digits in the message tag.
const MAX_SENDERS: usize = 1_000_000;
/// How often a long round of joins says how far it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

fn check(args: &RoomsArgs) -> anyhow::Result<()> {
    if args.size < MIN_SIZE {
        bail!("--size must be at least {MIN_SIZE} (the content carries sender, sequence and send time)");
    }
    if args.busy_rooms == 0 || args.busy_rooms > args.rooms {
        bail!("--busy-rooms must be between 1 and --rooms");
    }
    if args.rate.is_nan() || args.rate <= 0.0 {
        bail!("--rate must be positive");
    }
    if args.join_window == 0 {
        bail!("--join-window must be at least 1");
    }
    Ok(())
}

/// What the servers' memory did, in KiB (readings are 0 without server pids).
struct Memory {
    before: u64,
    connected: u64,
    /// After round A, and after round B (the same when there is no round B).
    created: u64,
    joined: u64,
    idle: u64,
    after_busy: u64,
    per_connection: f64,
    /// `None` without a round B: then per room includes its one membership.
    per_membership: Option<f64>,
    per_room: f64,
}

impl Memory {
    fn of(before: u64, clients: &Clients, idle: u64, after_busy: u64) -> Self {
        let setup = &clients.setup;
        let connected = setup.rss_connected_kib;
        let a = &setup.rounds[0];
        let b = setup.rounds.get(1);
        let delta = |from: u64, to: u64| to as f64 - from as f64;
        let per_membership = b.map(|b| per(delta(a.rss_kib, b.rss_kib), b.joins as f64));
        let per_room = per(
            delta(connected, a.rss_kib) - a.joins as f64 * per_membership.unwrap_or(0.0),
            clients.plan.rooms as f64,
        );
        Self {
            before,
            connected,
            created: a.rss_kib,
            joined: b.unwrap_or(a).rss_kib,
            idle,
            after_busy,
            per_connection: per(delta(before, connected), clients.plan.clients as f64),
            per_membership,
            per_room,
        }
    }
}

/// `rooms`.
pub async fn rooms(ctx: &Context<'_>, args: &RoomsArgs) -> anyhow::Result<()> {
    check(args)?;
    let plan = Plan {
        clients: args.clients,
        rooms: args.rooms,
        rooms_per_client: args.rooms_per_client,
        senders: Vec::new(),
        nodes: ctx.targets.nodes.len(),
        size: args.size,
        client_ids: !args.no_client_id,
        room_prefix: format!("b{}", ctx.run),
    }
    .members_of_first_rooms_send(args.busy_rooms);
    plan.check()?;
    if plan.senders.len() >= MAX_SENDERS {
        bail!("{} members in the busy rooms: at most {} can send", plan.senders.len(), MAX_SENDERS - 1);
    }
    let pids = ctx.targets.pids();
    let tokens = users::provision(ctx.targets, args.clients, ctx.provision_concurrency, &ctx.run).await?;
    // Let the registration burst settle before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = servers_rss_kib(&pids);
    let (rooms, memberships) = (plan.rooms, plan.memberships());
    // Round A: memberships 0..rooms, each room's first; round B: the others.
    let mut round_ends = vec![rooms];
    if memberships > rooms {
        round_ends.push(memberships);
    }
    eprintln!(
        "confab-bench: {} clients join {rooms} rooms ({memberships} memberships) in {}, {} connections × {} joins in flight",
        args.clients,
        if round_ends.len() == 1 { "one round" } else { "two rounds" },
        args.connect_concurrency,
        args.join_window
    );
    let joining = Joining {
        concurrency: args.connect_concurrency,
        window: args.join_window,
        round_ends,
        progress: Some(PROGRESS_EVERY),
    };
    let mut clients = Clients::open_joining(ctx.targets, &tokens, plan, &joining, ROOMS_BUFFER).await?;
    drop(tokens);
    let setup = &clients.setup;
    eprintln!(
        "confab-bench: {} connections open in {:.2} s; joins {}",
        args.clients,
        setup.connect_secs,
        setup
            .rounds
            .iter()
            .map(|r| format!("{} in {:.2} s ({:.0}/s)", r.joins, r.secs, r.per_s()))
            .collect::<Vec<_>>()
            .join(", then ")
    );

    // Every room idle: the server should have nothing to do.
    let cpu_start = CpuSample::take(&pids);
    let held_from = clock::now_ns();
    tokio::time::sleep(args.hold).await;
    let idle_cpu = cpu_start.until(&CpuSample::take(&pids));
    let held_s = (clock::now_ns() - held_from) as f64 / 1e9;
    let rss_idle = servers_rss_kib(&pids);
    let (closed_before_busy, _) = clients.closed();

    let phase = clients.phase(args.rate, args.warmup, args.duration, args.drain).await?;
    let rss_after_busy = servers_rss_kib(&pids);
    let memory = Memory::of(rss_before, &clients, rss_idle, rss_after_busy);
    let idle_pct = 100.0 * idle_cpu.servers_us as f64 / 1e6 / held_s;
    let report = Report { ctx, args, clients: &clients, phase: &phase, memory, idle_pct, held_s, closed_before_busy };
    report.table();
    report.json();
    Ok(())
}

struct Report<'a> {
    ctx: &'a Context<'a>,
    args: &'a RoomsArgs,
    clients: &'a Clients,
    phase: &'a Phase,
    memory: Memory,
    idle_pct: f64,
    held_s: f64,
    closed_before_busy: u64,
}

impl Report<'_> {
    fn known(&self) -> bool {
        !self.clients.server_pids().is_empty()
    }

    fn join_line(&self, r: &JoinRound, what: &str) -> String {
        let cpu = if self.known() {
            format!(", server {:.0} µs/join", per(r.cpu.servers_us as f64, r.joins as f64))
        } else {
            String::new()
        };
        format!("{} {what} in {:.2} s = {:.0}/s{cpu}", r.joins, r.secs, r.per_s())
    }

    fn table(&self) {
        let mut rows = vec![("target", self.ctx.describe())];
        rows.extend(self.setup_rows());
        rows.extend(self.memory_rows());
        rows.extend(self.busy_rows());
        table("rooms", &rows);
    }

    /// The layout, the load, and how connecting and joining went.
    fn setup_rows(&self) -> Vec<(&'static str, String)> {
        let (args, plan, p) = (self.args, &self.clients.plan, self.phase);
        let setup = &self.clients.setup;
        vec![
            (
                "rooms",
                format!(
                    "{} rooms, {} clients × {} rooms = {} memberships ({:.1} per room)",
                    plan.rooms,
                    plan.clients,
                    plan.rooms_per_client,
                    plan.memberships(),
                    per(plan.memberships() as f64, plan.rooms as f64)
                ),
            ),
            (
                "busy load",
                format!(
                    "{} busy rooms, their {} members send {:.0} msg/s, {} B, {:.1} s window after {:.1} s warm-up",
                    args.busy_rooms,
                    plan.senders.len(),
                    p.rate,
                    plan.size,
                    p.window_s,
                    args.warmup.as_secs_f64()
                ),
            ),
            (
                "connect rate",
                format!(
                    "{:.0}/s ({:.2} s, {} at a time)",
                    per(plan.clients as f64, setup.connect_secs),
                    setup.connect_secs,
                    args.connect_concurrency
                ),
            ),
            (
                "joins, new rooms",
                format!(
                    "{} ({} connections at a time, {} in flight each)",
                    self.join_line(&setup.rounds[0], "rooms created"),
                    args.connect_concurrency,
                    args.join_window
                ),
            ),
            (
                "joins, existing rooms",
                setup.rounds.get(1).map_or_else(|| "-".into(), |r| self.join_line(r, "members added")),
            ),
        ]
    }

    /// The servers' RSS along the run, what it says per connection, membership and room, and
    /// the CPU of idle rooms.
    fn memory_rows(&self) -> Vec<(&'static str, String)> {
        let m = &self.memory;
        let known = self.known();
        let kib =
            |v: u64| if known { format!("{:.1} MiB", v as f64 / 1024.0) } else { "unknown: pass --server-pid".into() };
        let per_kib = |v: f64| if known { format!("{v:.3} KiB") } else { "-".into() };
        vec![
            ("server RSS before", kib(m.before)),
            ("  connected", kib(m.connected)),
            ("  rooms created", kib(m.created)),
            ("  all joined", kib(m.joined)),
            ("  idle", format!("{} (after {:.1} s)", kib(m.idle), self.held_s)),
            ("  after the busy phase", kib(m.after_busy)),
            ("RSS per connection", per_kib(m.per_connection)),
            ("RSS per membership", m.per_membership.map_or_else(|| "- (no round B)".into(), per_kib)),
            ("RSS per room", per_kib(m.per_room)),
            (
                "server CPU while idle",
                if known { format!("{:.2}% of a core ({:.1} s)", self.idle_pct, self.held_s) } else { "-".into() },
            ),
        ]
    }

    /// The busy phase, as `fanout` reports it.
    fn busy_rows(&self) -> Vec<(&'static str, String)> {
        let p = self.phase;
        let cores = |us: u64| us as f64 / 1e6 / p.window_s;
        let mut rows = vec![
            ("sent", format!("{} messages", p.sent)),
            (
                "expected deliveries",
                format!("{} ({:.1} per message)", p.expected, per(p.expected as f64, p.sent as f64)),
            ),
            ("delivered", p.delivered.to_string()),
            ("lost", p.lost.to_string()),
            ("duplicated", p.duplicates.to_string()),
            (
                "out of order",
                format!("{} (by room seq {}, by sender sequence {})", p.out_of_order(), p.ooo_seq, p.ooo_sender),
            ),
            ("latency", p.latency.line()),
            ("read delay (generator)", p.read_delay_line()),
            ("send lag (generator)", p.send_lag.line()),
            (
                "server CPU",
                if self.known() {
                    format!(
                        "{:.2} s = {:.2} cores, {:.2} µs/delivery",
                        p.cpu.servers_us as f64 / 1e6,
                        cores(p.cpu.servers_us),
                        us_per_delivery(p)
                    )
                } else {
                    "unknown: pass --server-pid".into()
                },
            ),
            (
                "generator CPU",
                format!(
                    "{:.2} s = {:.2} cores ({} workers + pacer)",
                    p.cpu.bench_us as f64 / 1e6,
                    cores(p.cpu.bench_us),
                    self.ctx.workers
                ),
            ),
            ("machine busy", format!("{:.0}% of all cores", p.cpu.machine_busy_pct)),
            ("acks / errors (with warm-up)", format!("{} / {}", p.acks, p.errors + p.send_errors)),
        ];
        if let Some(e) = &p.first_error {
            rows.push(("first error", e.clone()));
        }
        if self.closed_before_busy + p.closed > 0 {
            rows.push((
                "connections closed",
                format!(
                    "{} before the busy phase, {} during it ({})",
                    self.closed_before_busy,
                    p.closed,
                    p.first_close.as_deref().unwrap_or("?")
                ),
            ));
        }
        if p.unflushed_bytes > 0 {
            rows.push(("unsent bytes", format!("{} (the server stopped reading)", p.unflushed_bytes)));
        }
        rows
    }

    fn round_json(&self, r: Option<&JoinRound>) -> Value {
        let known = self.known();
        r.map_or(Value::Null, |r| {
            json!({
                "joins": r.joins,
                "secs": round3(r.secs),
                "per_s": round1(r.per_s()),
                "server_cpu_s": known.then(|| round3(r.cpu.servers_us as f64 / 1e6)),
                "server_cpu_us_per_join": known.then(|| round1(per(r.cpu.servers_us as f64, r.joins as f64))),
                "rss_kib": known.then_some(r.rss_kib),
            })
        })
    }

    fn json(&self) {
        let (args, plan, p, m) = (self.args, &self.clients.plan, self.phase, &self.memory);
        let setup = &self.clients.setup;
        let known = self.known();
        let kib = |v: f64| known.then(|| round3(v));
        let mut out = self.ctx.json_base("rooms");
        let setup = json!({
            "clients": plan.clients,
            "rooms": plan.rooms,
            "rooms_per_client": plan.rooms_per_client,
            "memberships": plan.memberships(),
            "busy_rooms": args.busy_rooms,
            "senders": plan.senders.len(),
            "size": plan.size,
            "client_ids": plan.client_ids,
            "rate": p.rate,
            "duration_s": p.window_s,
            "warmup_s": args.warmup.as_secs_f64(),
            "connect_concurrency": args.connect_concurrency,
            "join_window": args.join_window,
            "connect_per_s": round1(per(plan.clients as f64, setup.connect_secs)),
            "join_new_rooms": self.round_json(setup.rounds.first()),
            "join_existing_rooms": self.round_json(setup.rounds.get(1)),
            "rss_before_kib": known.then_some(m.before),
            "rss_connected_kib": known.then_some(m.connected),
            "rss_rooms_created_kib": known.then_some(m.created),
            "rss_joined_kib": known.then_some(m.joined),
            "rss_idle_kib": known.then_some(m.idle),
            "rss_after_busy_kib": known.then_some(m.after_busy),
            "rss_per_connection_kib": kib(m.per_connection),
            "rss_per_membership_kib": m.per_membership.and_then(kib),
            "rss_per_room_kib": kib(m.per_room),
            "idle_s": round3(self.held_s),
            "server_cpu_idle_pct": known.then(|| round3(self.idle_pct)),
            "closed_before_busy": self.closed_before_busy,
        });
        // The busy phase, with the names `fanout` gives the same figures.
        let busy = json!({
            "clean": p.correct() && self.closed_before_busy == 0,
            "room_prefix": plan.room_prefix,
        });
        for part in [setup, busy, super::delivery_json(p, known)] {
            if let Value::Object(part) = part {
                out.extend(part);
            }
        }
        json_line(&Value::Object(out));
    }
}
