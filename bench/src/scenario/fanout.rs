//! `fanout` and `cluster`: one open-loop phase at one rate, reported as a table and a
//! `BENCH_JSON` line, beside the floor's if `--floor`. `step` sets up and reports its phases with
//! the same functions.

use anyhow::bail;
use serde_json::{Value, json};

use super::{
    Context,
    floor::{Floor, floor_json, floor_rows},
    us_per_delivery,
};
use crate::{
    cli::FanoutArgs,
    fanout::{Clients, FANOUT_BUFFER, MIN_SIZE, Phase, Plan},
    preload::{self, Preloaded},
    report::{json_line, per, round1, round3, table},
    users,
};

pub(super) fn check_fanout(args: &FanoutArgs) -> anyhow::Result<()> {
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

pub(super) fn plan(args: &FanoutArgs, nodes: usize, room_prefix: String) -> Plan {
    Plan {
        clients: args.clients,
        rooms: args.rooms,
        rooms_per_client: 1,
        senders: Vec::new(),
        nodes,
        size: args.size,
        client_ids: !args.no_client_id,
        room_prefix,
    }
    .first_clients_send(args.senders)
}

/// Provisions the users, preloads the rooms if asked, then connects and joins every client.
pub(super) async fn open_fanout(ctx: &Context<'_>, args: &FanoutArgs) -> anyhow::Result<(Clients, Option<Preloaded>)> {
    let tokens = users::provision(ctx.targets, args.clients, ctx.provision_concurrency, &ctx.run).await?;
    let prefix = args.room_prefix.clone().unwrap_or_else(|| format!("b{}", ctx.run));
    let plan = plan(args, ctx.targets.nodes.len(), prefix);
    let preloaded = if args.preload > 0 {
        let preloaded = preload::run(ctx.targets, &tokens, &plan, args.preload, args.preload_window).await?;
        if let Some(secs) = ctx.targets.vacuum_analyze().await? {
            eprintln!("confab-bench: vacuumed and analyzed the scratch database in {secs:.1} s, as autovacuum would");
        }
        let secs = ctx.targets.settle_disk().await?;
        eprintln!("confab-bench: wrote the preload's dirty pages to disk in {secs:.1} s");
        Some(preloaded)
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
    let repaired_before = preload::nodes_metric(ctx.targets, REPAIRED_METRIC).await;
    let phase = clients.phase(args.rate, args.warmup, args.duration, args.drain).await?;
    let repaired = match (repaired_before, preload::nodes_metric(ctx.targets, REPAIRED_METRIC).await) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let floor_phase = if args.floor {
        // confab's clients stay connected, idle, so the floor runs beside the same idle load.
        let mut floor = Floor::open(args).await?;
        let phase = floor.clients.phase(args.rate, args.warmup, args.duration, args.drain).await;
        floor.stop().await;
        Some(phase?)
    } else {
        None
    };
    let extra = Extra { preloaded: preloaded.as_ref(), floor: floor_phase.as_ref(), repaired };
    report_phase(ctx, scenario, args, &clients, &phase, None, &extra);
    Ok(())
}

/// What a fan-out report shows besides the phase itself.
#[derive(Clone, Copy, Default)]
pub(super) struct Extra<'a> {
    pub(super) preloaded: Option<&'a Preloaded>,
    /// The floor's phase at the same rate, if `--floor`.
    pub(super) floor: Option<&'a Phase>,
    /// Messages the nodes read back from the store to fill gaps in what the bus brought them,
    /// during the phase (warm-up and drain included), if their `/metrics` said.
    pub(super) repaired: Option<f64>,
}

/// The nodes' count of messages read back from the store for gap repair.
const REPAIRED_METRIC: &str = "confab_gap_repaired_messages_total";

pub(super) fn report_phase(
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
                plan.senders.len(),
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
        ("read delay (generator)", p.read_delay_line()),
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
    if let Some(n) = extra.repaired {
        rows.push(("read back for gap repair", format!("{n:.0} messages (over warm-up, window and drain)")));
    }
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

pub(super) fn preloaded_json(pre: Option<&Preloaded>) -> Value {
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
        "senders": plan.senders.len(),
        "size": plan.size,
        "client_ids": plan.client_ids,
        "rate": p.rate,
        "duration_s": p.window_s,
        "warmup_s": args.warmup.as_secs_f64(),
        "latency_same_node_ms": if plan.nodes > 1 { p.same_node.json() } else { Value::Null },
        "latency_cross_node_ms": if plan.nodes > 1 { p.cross_node.json() } else { Value::Null },
        "cross_node_added_ms": if plan.nodes > 1 && p.cross_node.count > 0 && p.same_node.count > 0 {
            json!({ "p50": round3(p.cross_node.p50 - p.same_node.p50), "p99": round3(p.cross_node.p99 - p.same_node.p99) })
        } else { Value::Null },
        "generator_cpu_cores": round3(cores(p.cpu.bench_us)),
        "generator_cpu_us_per_delivery": round3(per(p.cpu.bench_us as f64, p.delivered as f64)),
        "connect_per_s": round1(per(plan.clients as f64, clients.setup.connect_secs)),
        "clean": p.correct(),
        "room_prefix": plan.room_prefix,
        "preloaded": preloaded_json(extra.preloaded),
        "floor": extra.floor.map_or(Value::Null, floor_json),
        "gap_repaired": extra.repaired,
    });
    for part in [v, super::delivery_json(p, known_pids)] {
        if let Value::Object(part) = part {
            m.extend(part);
        }
    }
    json_line(&Value::Object(m));
}
