//! `idle`: connections that only hold on, for the server's RSS per connection, its CPU while
//! idle, and the connect and join rates.

use std::time::Duration;

use anyhow::bail;
use serde_json::{Value, json};

use super::Context;
use crate::{
    cli::IdleArgs,
    clock,
    fanout::{Clients, MIN_SIZE, Plan},
    procfs::{CpuSample, servers_rss_kib},
    report::{json_line, per, round1, round3, table},
    users,
};

/// Read buffer per idle connection: small, like the server's own.
const IDLE_BUFFER: usize = 4 * 1024;

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
        rooms_per_client: 1,
        senders: Vec::new(),
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
