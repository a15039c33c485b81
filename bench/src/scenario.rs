//! The five scenarios: set up, measure, report.

use std::time::Duration;

use anyhow::bail;
use serde_json::{Value, json};

use crate::{
    cli::{FanoutArgs, IdleArgs, StepArgs, StoreArgs},
    clock,
    fanout::{Clients, FANOUT_BUFFER, MIN_SIZE, Phase, Plan},
    nodes::Targets,
    preload::{self, Preloaded},
    procfs::{CpuSample, servers_rss_kib},
    report::{json_line, per, round1, round3, table},
    store, users,
};

/// Read buffer per idle connection: small, like the server's own.
const IDLE_BUFFER: usize = 4 * 1024;

/// What every report says about the setup.
pub struct Context<'a> {
    pub targets: &'a Targets,
    pub workers: usize,
    pub provision_concurrency: usize,
    /// Unique per run: room names and account emails carry it.
    pub run: String,
}

impl Context<'_> {
    fn describe(&self) -> String {
        let n = self.targets.nodes.len();
        let redis = if self.targets.redis { ", Redis" } else { "" };
        format!("{n} node{} ({}{redis})", if n == 1 { "" } else { "s" }, self.targets.database)
    }

    fn json_base(&self, scenario: &str) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("scenario".into(), json!(scenario));
        m.insert("nodes".into(), json!(self.targets.nodes.len()));
        m.insert("database".into(), json!(self.targets.database));
        m.insert("redis".into(), json!(self.targets.redis));
        m.insert("generator_workers".into(), json!(self.workers));
        m.insert("cores".into(), json!(std::thread::available_parallelism().map_or(0, std::num::NonZero::get)));
        m
    }
}

fn check_fanout(args: &FanoutArgs) -> anyhow::Result<()> {
    if args.size < MIN_SIZE {
        bail!("--size must be at least {MIN_SIZE} (the content carries sender, sequence and send time)");
    }
    if args.senders == 0 || args.senders > args.clients {
        bail!("--senders must be between 1 and --clients");
    }
    if args.rooms == 0 || args.rooms > args.clients {
        bail!("--rooms must be between 1 and --clients");
    }
    if args.rate.is_nan() || args.rate <= 0.0 {
        bail!("--rate must be positive");
    }
    if let Some(prefix) = &args.room_prefix {
        let longest = format!("{prefix}-{}", args.rooms - 1);
        if longest.len() > 64 || !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_:".contains(&b)) {
            bail!("--room-prefix: room names are 1 to 64 characters of A-Z a-z 0-9 : _ -");
        }
    }
    Ok(())
}

fn plan(args: &FanoutArgs, nodes: usize, room_prefix: String) -> Plan {
    Plan {
        clients: args.clients,
        rooms: args.rooms,
        senders: args.senders,
        nodes,
        size: args.size,
        client_ids: !args.no_client_id,
        room_prefix,
    }
}

/// Provisions the users, preloads the rooms if asked, then connects and joins every client.
async fn open_fanout(ctx: &Context<'_>, args: &FanoutArgs) -> anyhow::Result<(Clients, Option<Preloaded>)> {
    let tokens = users::provision(ctx.targets, args.clients, ctx.provision_concurrency, &ctx.run).await?;
    let prefix = args.room_prefix.clone().unwrap_or_else(|| format!("b{}", ctx.run));
    let plan = plan(args, ctx.targets.nodes.len(), prefix);
    let preloaded = if args.preload > 0 {
        Some(preload::run(ctx.targets, &tokens, &plan, args.preload, args.preload_window).await?)
    } else {
        None
    };
    let clients = Clients::open(ctx.targets, &tokens, plan, args.connect_concurrency, FANOUT_BUFFER).await?;
    eprintln!(
        "confab-bench: {} connections open in {:.2} s, joined in {:.2} s",
        args.clients, clients.setup.connect_secs, clients.setup.join_secs
    );
    Ok((clients, preloaded))
}

/// The floor of `--floor`: its own server process and clients, in the same layout as confab's.
struct Floor {
    targets: Targets,
    clients: Clients,
}

impl Floor {
    async fn open(args: &FanoutArgs) -> anyhow::Result<Self> {
        let targets = Targets::floor().await?;
        // The floor takes any token: nobody is provisioned.
        let tokens = vec!["floor".to_owned(); args.clients];
        let plan = plan(args, 1, "floor".into());
        let clients = Clients::open(&targets, &tokens, plan, args.connect_concurrency, FANOUT_BUFFER).await?;
        eprintln!(
            "confab-bench: floor: {} connections open in {:.2} s, joined in {:.2} s",
            args.clients, clients.setup.connect_secs, clients.setup.join_secs
        );
        Ok(Self { targets, clients })
    }

    async fn stop(self) {
        let Self { mut targets, clients } = self;
        drop(clients);
        targets.stop().await;
    }
}

/// `fanout` and `cluster`.
pub async fn fanout(ctx: &Context<'_>, args: &FanoutArgs, scenario: &str) -> anyhow::Result<()> {
    check_fanout(args)?;
    if scenario == "cluster" && ctx.targets.nodes.len() < 2 {
        bail!(
            "cluster needs at least 2 nodes: --spawn 2 (with --database-url postgres://… and --redis-url …) or two --url"
        );
    }
    if scenario == "cluster" && args.floor {
        bail!("--floor is one process: use it with fanout or step");
    }
    let (mut clients, preloaded) = open_fanout(ctx, args).await?;
    let phase = clients.phase(args.rate, args.warmup, args.duration, args.drain).await?;
    let floor_phase = if args.floor {
        // confab's clients stay connected, idle, so the floor runs beside the same idle load.
        let mut floor = Floor::open(args).await?;
        let phase = floor.clients.phase(args.rate, args.warmup, args.duration, args.drain).await;
        floor.stop().await;
        Some(phase?)
    } else {
        None
    };
    let extra = Extra { preloaded: preloaded.as_ref(), floor: floor_phase.as_ref() };
    report_phase(ctx, scenario, args, &clients, &phase, None, &extra);
    Ok(())
}

/// What a fan-out report shows besides the phase itself.
#[derive(Clone, Copy, Default)]
struct Extra<'a> {
    preloaded: Option<&'a Preloaded>,
    /// The floor's phase at the same rate, if `--floor`.
    floor: Option<&'a Phase>,
}

/// Why a step is not clean, if it is not.
fn unclean(phase: &Phase, p99_limit_ms: f64) -> Option<String> {
    if !phase.correct() {
        Some(format!(
            "{} lost, {} duplicated, {} out of order, {} errors, {} connections closed",
            phase.lost,
            phase.duplicates,
            phase.out_of_order(),
            phase.errors + phase.send_errors,
            phase.closed
        ))
    } else if phase.latency.p99 > p99_limit_ms {
        Some(format!("p99 {:.1} ms > {} ms", phase.latency.p99, p99_limit_ms))
    } else {
        None
    }
}

/// The outcome of a step search: the highest clean phase, and where and why it stopped.
struct Search {
    best: Option<Phase>,
    stopped_at: Option<f64>,
    because: String,
}

impl Search {
    fn json(&self) -> Value {
        let best = self.best.as_ref();
        json!({
            "highest_clean_rate": round1(best.map_or(0.0, |p| p.rate)),
            "highest_clean_deliveries_per_s": round1(best.map_or(0.0, Phase::deliveries_per_s)),
            "p99_ms": best.map(|p| round3(p.latency.p99)),
            "server_cpu_us_per_delivery": best.map(|p| round3(us_per_delivery(p))),
            "stopped_at_rate": self.stopped_at,
            "stopped_because": self.because,
        })
    }
}

/// Runs phases at `rates` until one is not clean, calling `report` after each.
async fn search(
    clients: &mut Clients,
    rates: &[f64],
    f: &FanoutArgs,
    p99_limit_ms: f64,
    mut report: impl FnMut(&Clients, &Phase, usize),
) -> anyhow::Result<Search> {
    let mut result = Search { best: None, stopped_at: None, because: "every step was clean".into() };
    for (n, &rate) in rates.iter().enumerate() {
        let phase = clients.phase(rate, f.warmup, f.duration, f.drain).await?;
        report(clients, &phase, n + 1);
        if let Some(reason) = unclean(&phase, p99_limit_ms) {
            result.stopped_at = Some(rate);
            result.because = reason;
            break;
        }
        result.best = Some(phase);
        // Let the server settle between steps.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(result)
}

/// `step`: rising rates until a step is not clean (and the same search on the floor).
pub async fn step(ctx: &Context<'_>, args: &StepArgs) -> anyhow::Result<()> {
    let f = &args.fanout;
    check_fanout(f)?;
    let rates: Vec<f64> = if args.rates.is_empty() {
        if args.factor <= 1.0 {
            bail!("--factor must be above 1");
        }
        std::iter::successors(Some(f.rate), |r| Some(r * args.factor)).take_while(|r| *r <= args.max_rate).collect()
    } else {
        args.rates.clone()
    };
    let (mut clients, preloaded) = open_fanout(ctx, f).await?;
    let extra = Extra { preloaded: preloaded.as_ref(), floor: None };
    let confab = search(&mut clients, &rates, f, args.p99_limit_ms, |clients, phase, n| {
        report_phase(ctx, "step", f, clients, phase, Some(n), &extra);
    })
    .await?;
    let floor = if f.floor {
        let mut floor = Floor::open(f).await?;
        let result = search(&mut floor.clients, &rates, f, args.p99_limit_ms, |clients, phase, n| {
            table(&format!("floor step {n}: {:.0} msg/s", phase.rate), &floor_rows(&clients.plan, phase));
        })
        .await;
        floor.stop().await;
        Some(result?)
    } else {
        None
    };
    let best = confab.best.as_ref();
    let best_rate = best.map_or(0.0, |p| p.rate);
    let best_deliveries = best.map_or(0.0, Phase::deliveries_per_s);
    let mut rows = vec![
        ("highest clean rate", format!("{best_rate:.0} msg/s = {best_deliveries:.0} deliveries/s")),
        ("p99 there", best.map_or("-".into(), |p| format!("{:.3} ms", p.latency.p99))),
        ("server CPU there", best.map_or("-".into(), |p| format!("{:.2} µs/delivery", us_per_delivery(p)))),
        ("stopped at", confab.stopped_at.map_or("-".into(), |r| format!("{r:.0} msg/s"))),
        ("because", confab.because.clone()),
    ];
    if let Some(floor) = &floor {
        let fb = floor.best.as_ref();
        rows.push((
            "floor: highest clean rate",
            fb.map_or("none".into(), |p| {
                format!(
                    "{:.0} msg/s = {:.0} deliveries/s (p99 {:.3} ms, {:.2} µs/delivery)",
                    p.rate,
                    p.deliveries_per_s(),
                    p.latency.p99,
                    us_per_delivery(p)
                )
            }),
        ));
        rows.push((
            "floor: stopped",
            floor.stopped_at.map_or_else(|| floor.because.clone(), |r| format!("at {r:.0} msg/s: {}", floor.because)),
        ));
    }
    table(&format!("step result: {}", ctx.describe()), &rows);
    let mut m = ctx.json_base("step_result");
    if let Value::Object(result) = confab.json() {
        m.extend(result);
    }
    m.insert("p99_limit_ms".into(), json!(args.p99_limit_ms));
    m.insert("preloaded".into(), preloaded_json(preloaded.as_ref()));
    m.insert("floor".into(), floor.as_ref().map_or(Value::Null, Search::json));
    json_line(&Value::Object(m));
    Ok(())
}

fn us_per_delivery(p: &Phase) -> f64 {
    per(p.cpu.servers_us as f64, p.delivered as f64)
}

fn report_phase(
    ctx: &Context<'_>,
    scenario: &str,
    args: &FanoutArgs,
    clients: &Clients,
    p: &Phase,
    step: Option<usize>,
    extra: &Extra<'_>,
) {
    let plan = &clients.plan;
    let fanout = per(p.expected as f64, p.sent as f64);
    let cores = |us: u64| us as f64 / 1e6 / p.window_s;
    let known_pids = !clients.server_pids().is_empty();
    let mut rows = vec![
        ("target", ctx.describe()),
        (
            "load",
            format!(
                "{} clients, {} rooms, {} senders, {:.0} msg/s, {} B, {:.1} s window after {:.1} s warm-up",
                plan.clients,
                plan.rooms,
                plan.senders,
                p.rate,
                plan.size,
                p.window_s,
                args.warmup.as_secs_f64()
            ),
        ),
        ("preloaded", extra.preloaded.map_or_else(|| "-".into(), preloaded_line)),
        ("sent", format!("{} messages", p.sent)),
        ("expected deliveries", format!("{} ({fanout:.1} per message)", p.expected)),
        ("delivered", p.delivered.to_string()),
        ("lost", p.lost.to_string()),
        ("duplicated", p.duplicates.to_string()),
        (
            "out of order",
            format!("{} (by room seq {}, by sender sequence {})", p.out_of_order(), p.ooo_seq, p.ooo_sender),
        ),
        ("deliveries/s", format!("{:.0}", p.deliveries_per_s())),
        ("latency", p.latency.line()),
    ];
    if plan.nodes > 1 {
        rows.extend(cross_node_rows(p));
    }
    rows.push(("send lag (generator)", p.send_lag.line()));
    if known_pids {
        rows.push((
            "server CPU",
            format!(
                "{:.2} s = {:.2} cores, {:.2} µs/delivery",
                p.cpu.servers_us as f64 / 1e6,
                cores(p.cpu.servers_us),
                us_per_delivery(p)
            ),
        ));
    } else {
        rows.push(("server CPU", "unknown: pass --server-pid".into()));
    }
    if let Some(f) = extra.floor {
        rows.extend(beside_the_floor(p, f, known_pids));
    }
    rows.push((
        "generator CPU",
        format!(
            "{:.2} s = {:.2} cores ({} workers + pacer), {:.2} µs/delivery",
            p.cpu.bench_us as f64 / 1e6,
            cores(p.cpu.bench_us),
            ctx.workers,
            per(p.cpu.bench_us as f64, p.delivered as f64)
        ),
    ));
    rows.push(("machine busy", format!("{:.0}% of all cores", p.cpu.machine_busy_pct)));
    rows.push(("acks / errors (with warm-up)", format!("{} / {}", p.acks, p.errors + p.send_errors)));
    if let Some(e) = &p.first_error {
        rows.push(("first error", e.clone()));
    }
    if p.closed > 0 {
        rows.push(("connections closed", format!("{} ({})", p.closed, p.first_close.as_deref().unwrap_or("?"))));
    }
    if p.unflushed_bytes > 0 {
        rows.push(("unsent bytes", format!("{} (the server stopped reading)", p.unflushed_bytes)));
    }
    rows.push((
        "setup",
        format!(
            "{} connections in {:.2} s ({:.0}/s), joins in {:.2} s",
            plan.clients,
            clients.setup.connect_secs,
            per(plan.clients as f64, clients.setup.connect_secs),
            clients.setup.join_secs
        ),
    ));
    let title = match step {
        Some(n) => format!("step {n}: {:.0} msg/s", p.rate),
        None => scenario.to_owned(),
    };
    table(&title, &rows);
    if let Some(f) = extra.floor {
        table(&format!("{title}: floor"), &floor_rows(plan, f));
    }

    phase_json(ctx, scenario, args, clients, p, step, extra);
}

/// Latency of receivers on the sender's node against those on another.
fn cross_node_rows(p: &Phase) -> [(&'static str, String); 3] {
    [
        ("  same node", p.same_node.line()),
        ("  cross node", p.cross_node.line()),
        (
            "  cross-node added",
            format!(
                "p50 {:+.3} ms, p99 {:+.3} ms",
                p.cross_node.p50 - p.same_node.p50,
                p.cross_node.p99 - p.same_node.p99
            ),
        ),
    ]
}

/// The rows that put a phase's figures beside the floor's.
fn beside_the_floor(p: &Phase, f: &Phase, known_pids: bool) -> [(&'static str, String); 2] {
    [
        (
            "floor (same load)",
            format!(
                "latency p50 {:.3} ms, p99 {:.3} ms; server CPU {:.2} µs/delivery ({})",
                f.latency.p50,
                f.latency.p99,
                us_per_delivery(f),
                if f.correct() { "clean" } else { "NOT clean: see the floor table" }
            ),
        ),
        (
            "confab / floor",
            format!(
                "p50 {}, p99 {}, server CPU {}",
                ratio(p.latency.p50, f.latency.p50),
                ratio(p.latency.p99, f.latency.p99),
                if known_pids { ratio(us_per_delivery(p), us_per_delivery(f)) } else { "-".into() }
            ),
        ),
    ]
}

/// `a / b` as a factor, e.g. `3.2×`.
fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 { format!("{:.1}×", a / b) } else { "-".into() }
}

fn preloaded_line(pre: &Preloaded) -> String {
    format!(
        "{} messages in {:.1} s ({:.0}/s acked, {} rooms × {} in flight){}",
        pre.messages,
        pre.secs,
        pre.per_s(),
        pre.connections,
        pre.window,
        pre.index_wait_secs.map_or_else(
            || ", search index not confirmed caught up".into(),
            |s| format!(", search index caught up {s:.1} s later")
        )
    )
}

fn preloaded_json(pre: Option<&Preloaded>) -> Value {
    pre.map_or(Value::Null, |pre| {
        json!({
            "messages": pre.messages,
            "secs": round3(pre.secs),
            "per_s": round1(pre.per_s()),
            "connections": pre.connections,
            "window": pre.window,
            "index_wait_s": pre.index_wait_secs.map(round3),
        })
    })
}

/// The floor's own table: the same figures as confab's, for the same load.
fn floor_rows(plan: &Plan, f: &Phase) -> Vec<(&'static str, String)> {
    let cores = |us: u64| us as f64 / 1e6 / f.window_s;
    let mut rows = vec![
        ("target", "floor: in-memory broadcaster (confab-bench floor-server), nothing stored".into()),
        (
            "load",
            format!(
                "{} clients, {} rooms, {} senders, {:.0} msg/s, {} B",
                plan.clients, plan.rooms, plan.senders, f.rate, plan.size
            ),
        ),
        ("sent", format!("{} messages", f.sent)),
        (
            "delivered",
            format!(
                "{} of {} ({} lost, {} duplicated, {} out of order)",
                f.delivered,
                f.expected,
                f.lost,
                f.duplicates,
                f.out_of_order()
            ),
        ),
        ("latency", f.latency.line()),
        ("send lag (generator)", f.send_lag.line()),
        (
            "server CPU",
            format!(
                "{:.2} s = {:.2} cores, {:.2} µs/delivery",
                f.cpu.servers_us as f64 / 1e6,
                cores(f.cpu.servers_us),
                us_per_delivery(f)
            ),
        ),
        (
            "generator CPU",
            format!(
                "{:.2} s = {:.2} cores, {:.2} µs/delivery",
                f.cpu.bench_us as f64 / 1e6,
                cores(f.cpu.bench_us),
                per(f.cpu.bench_us as f64, f.delivered as f64)
            ),
        ),
        ("machine busy", format!("{:.0}% of all cores", f.cpu.machine_busy_pct)),
    ];
    if let Some(e) = &f.first_error {
        rows.push(("first error", e.clone()));
    }
    if f.closed > 0 {
        rows.push(("connections closed", format!("{} ({})", f.closed, f.first_close.as_deref().unwrap_or("?"))));
    }
    rows
}

fn floor_json(f: &Phase) -> Value {
    json!({
        "sent": f.sent,
        "expected": f.expected,
        "delivered": f.delivered,
        "lost": f.lost,
        "duplicated": f.duplicates,
        "out_of_order": f.out_of_order(),
        "errors": f.errors + f.send_errors,
        "closed": f.closed,
        "deliveries_per_s": round1(f.deliveries_per_s()),
        "latency_ms": f.latency.json(),
        "send_lag_ms": f.send_lag.json(),
        "server_cpu_s": round3(f.cpu.servers_us as f64 / 1e6),
        "server_cpu_us_per_delivery": round3(us_per_delivery(f)),
        "generator_cpu_us_per_delivery": round3(per(f.cpu.bench_us as f64, f.delivered as f64)),
        "machine_busy_pct": round1(f.cpu.machine_busy_pct),
        "clean": f.correct(),
    })
}

fn phase_json(
    ctx: &Context<'_>,
    scenario: &str,
    args: &FanoutArgs,
    clients: &Clients,
    p: &Phase,
    step: Option<usize>,
    extra: &Extra<'_>,
) {
    let plan = &clients.plan;
    let cores = |us: u64| us as f64 / 1e6 / p.window_s;
    let known_pids = !clients.server_pids().is_empty();
    let mut m = ctx.json_base(scenario);
    if let Some(n) = step {
        m.insert("step".into(), json!(n));
    }
    let v = json!({
        "clients": plan.clients,
        "rooms": plan.rooms,
        "senders": plan.senders,
        "size": plan.size,
        "client_ids": plan.client_ids,
        "rate": p.rate,
        "duration_s": p.window_s,
        "warmup_s": args.warmup.as_secs_f64(),
        "sent": p.sent,
        "expected": p.expected,
        "delivered": p.delivered,
        "lost": p.lost,
        "duplicated": p.duplicates,
        "out_of_order": p.out_of_order(),
        "out_of_order_seq": p.ooo_seq,
        "out_of_order_sender": p.ooo_sender,
        "errors": p.errors + p.send_errors,
        "first_error": p.first_error,
        "closed": p.closed,
        "first_close": p.first_close,
        "unsent_bytes": p.unflushed_bytes,
        "acks": p.acks,
        "deliveries_per_s": round1(p.deliveries_per_s()),
        "latency_ms": p.latency.json(),
        "latency_same_node_ms": if plan.nodes > 1 { p.same_node.json() } else { Value::Null },
        "latency_cross_node_ms": if plan.nodes > 1 { p.cross_node.json() } else { Value::Null },
        "cross_node_added_ms": if plan.nodes > 1 && p.cross_node.count > 0 && p.same_node.count > 0 {
            json!({ "p50": round3(p.cross_node.p50 - p.same_node.p50), "p99": round3(p.cross_node.p99 - p.same_node.p99) })
        } else { Value::Null },
        "send_lag_ms": p.send_lag.json(),
        "server_cpu_s": if known_pids { json!(round3(p.cpu.servers_us as f64 / 1e6)) } else { Value::Null },
        "server_cpu_us_per_delivery": if known_pids { json!(round3(us_per_delivery(p))) } else { Value::Null },
        "generator_cpu_s": round3(p.cpu.bench_us as f64 / 1e6),
        "generator_cpu_cores": round3(cores(p.cpu.bench_us)),
        "generator_cpu_us_per_delivery": round3(per(p.cpu.bench_us as f64, p.delivered as f64)),
        "machine_busy_pct": round1(p.cpu.machine_busy_pct),
        "connect_per_s": round1(per(plan.clients as f64, clients.setup.connect_secs)),
        "clean": p.correct(),
        "room_prefix": plan.room_prefix,
        "window_unix_ns": [clock::to_unix(p.window_ns.0), clock::to_unix(p.window_ns.1)],
        "preloaded": preloaded_json(extra.preloaded),
        "floor": extra.floor.map_or(Value::Null, floor_json),
    });
    if let Value::Object(extra) = v {
        m.extend(extra);
    }
    json_line(&Value::Object(m));
}

/// `idle`: RSS per held connection and the connect rate.
pub async fn idle(ctx: &Context<'_>, args: &IdleArgs) -> anyhow::Result<()> {
    if args.rooms == 0 || args.rooms > args.clients {
        bail!("--rooms must be between 1 and --clients");
    }
    let pids = ctx.targets.pids();
    let tokens = users::provision(ctx.targets, args.clients, ctx.provision_concurrency, &ctx.run).await?;
    // Let the registration burst settle before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = servers_rss_kib(&pids);
    let plan = Plan {
        clients: args.clients,
        rooms: args.rooms,
        senders: 0,
        nodes: ctx.targets.nodes.len(),
        size: MIN_SIZE,
        client_ids: false,
        room_prefix: format!("b{}", ctx.run),
    };
    let clients = Clients::open(ctx.targets, &tokens, plan, args.connect_concurrency, IDLE_BUFFER).await?;
    let rss_joined = servers_rss_kib(&pids);
    let cpu_start = CpuSample::take(&pids);
    let held_from = clock::now_ns();
    tokio::time::sleep(args.hold).await;
    let cpu = cpu_start.until(&CpuSample::take(&pids));
    let held_s = (clock::now_ns() - held_from) as f64 / 1e9;
    let rss_held = servers_rss_kib(&pids);
    let (closed, first_close) = clients.closed();
    let n = args.clients as f64;
    let growth = rss_held.max(rss_joined).saturating_sub(rss_before) as f64;
    let per_conn = per(growth, n);
    let connect_rate = per(n, clients.setup.connect_secs);
    let join_rate = per(n, clients.setup.join_secs);
    let known = !pids.is_empty();
    let kib =
        |v: u64| if known { format!("{:.1} MiB", v as f64 / 1024.0) } else { "unknown: pass --server-pid".into() };
    let mut rows = vec![
        ("target", ctx.describe()),
        ("connections", format!("{} authenticated, joined to {} rooms", args.clients, args.rooms)),
        (
            "connect rate",
            format!(
                "{connect_rate:.0}/s ({:.2} s, {} at a time)",
                clients.setup.connect_secs, args.connect_concurrency
            ),
        ),
        ("join rate", format!("{join_rate:.0}/s ({:.2} s)", clients.setup.join_secs)),
        ("server RSS before", kib(rss_before)),
        ("  connected", kib(clients.setup.rss_connected_kib)),
        ("  joined", kib(rss_joined)),
        ("  after holding", format!("{} ({:.1} s)", kib(rss_held), held_s)),
        ("RSS per connection", if known { format!("{per_conn:.2} KiB") } else { "-".into() }),
        ("server CPU while idle", format!("{:.1}% of a core", 100.0 * cpu.servers_us as f64 / 1e6 / held_s)),
    ];
    if closed > 0 {
        rows.push(("connections closed", format!("{closed} ({})", first_close.as_deref().unwrap_or("?"))));
    }
    table("idle", &rows);
    let mut m = ctx.json_base("idle");
    let v = json!({
        "clients": args.clients,
        "rooms": args.rooms,
        "connect_concurrency": args.connect_concurrency,
        "connect_per_s": round1(connect_rate),
        "join_per_s": round1(join_rate),
        "rss_before_kib": known.then_some(rss_before),
        "rss_connected_kib": known.then_some(clients.setup.rss_connected_kib),
        "rss_joined_kib": known.then_some(rss_joined),
        "rss_held_kib": known.then_some(rss_held),
        "rss_per_connection_kib": known.then_some(round3(per_conn)),
        "server_cpu_idle_pct": round1(100.0 * cpu.servers_us as f64 / 1e6 / held_s),
        "closed": closed,
    });
    if let Value::Object(extra) = v {
        m.extend(extra);
    }
    json_line(&Value::Object(m));
    Ok(())
}

/// `store`: acked durable stores per second.
pub async fn store(ctx: &Context<'_>, args: &StoreArgs) -> anyhow::Result<()> {
    if args.senders == 0 || args.size == 0 {
        bail!("--senders and --size must be positive");
    }
    let tokens = users::provision(ctx.targets, args.senders, ctx.provision_concurrency, &ctx.run).await?;
    let r = store::run(ctx.targets, &tokens, args, &ctx.run).await?;
    let secs = args.duration.as_secs_f64();
    let known = !ctx.targets.pids().is_empty();
    let acks_per_s = r.acks as f64 / secs;
    let mut rows = vec![
        ("target", ctx.describe()),
        (
            "load",
            format!(
                "{} senders in their own rooms, {} in flight each, {} B, {:.1} s window after {:.1} s warm-up",
                args.senders,
                args.window,
                args.size,
                secs,
                args.warmup.as_secs_f64()
            ),
        ),
        ("acked stores", r.acks.to_string()),
        ("stores/s", format!("{acks_per_s:.0}")),
        ("ack latency", r.latency.line()),
        ("errors", r.errors.to_string()),
        ("unacked at the end", r.unacked.to_string()),
        (
            "server CPU",
            if known {
                format!(
                    "{:.2} s = {:.2} cores, {:.2} µs/stored message",
                    r.cpu.servers_us as f64 / 1e6,
                    r.cpu.servers_us as f64 / 1e6 / secs,
                    per(r.cpu.servers_us as f64, r.acks as f64)
                )
            } else {
                "unknown: pass --server-pid".into()
            },
        ),
        (
            "generator CPU",
            format!("{:.2} s = {:.2} cores", r.cpu.bench_us as f64 / 1e6, r.cpu.bench_us as f64 / 1e6 / secs),
        ),
        ("machine busy", format!("{:.0}% of all cores", r.cpu.machine_busy_pct)),
        ("setup", format!("{} connections joined in {:.2} s", args.senders, r.connect_secs)),
    ];
    if let Some(e) = &r.first_error {
        rows.push(("first error", e.clone()));
    }
    table("store", &rows);
    let mut m = ctx.json_base("store");
    let v = json!({
        "senders": args.senders,
        "window": args.window,
        "size": args.size,
        "client_ids": !args.no_client_id,
        "duration_s": secs,
        "warmup_s": args.warmup.as_secs_f64(),
        "acks": r.acks,
        "stores_per_s": round1(acks_per_s),
        "ack_latency_ms": r.latency.json(),
        "errors": r.errors,
        "first_error": r.first_error,
        "unacked": r.unacked,
        "server_cpu_s": known.then(|| round3(r.cpu.servers_us as f64 / 1e6)),
        "server_cpu_us_per_store": known.then(|| round3(per(r.cpu.servers_us as f64, r.acks as f64))),
        "generator_cpu_s": round3(r.cpu.bench_us as f64 / 1e6),
        "machine_busy_pct": round1(r.cpu.machine_busy_pct),
    });
    if let Value::Object(extra) = v {
        m.extend(extra);
    }
    json_line(&Value::Object(m));
    Ok(())
}
