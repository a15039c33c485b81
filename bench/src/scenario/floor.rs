//! The floor of `--floor`, run beside confab: a `confab-bench floor-server` process of its own
//! (the server is `crate::floor`), the same clients in the same layout, and its own table and
//! JSON for the same load.

use serde_json::{Value, json};

use super::{fanout::plan, us_per_delivery};
use crate::{
    cli::FanoutArgs,
    fanout::{Clients, FANOUT_BUFFER, Phase, Plan},
    nodes::Targets,
    report::{per, round1, round3},
};

/// The floor of `--floor`: its own server process and clients, in the same layout as confab's.
pub(super) struct Floor {
    targets: Targets,
    pub(super) clients: Clients,
}

impl Floor {
    pub(super) async fn open(args: &FanoutArgs) -> anyhow::Result<Self> {
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

    pub(super) async fn stop(self) {
        let Self { mut targets, clients } = self;
        drop(clients);
        targets.stop().await;
    }
}

/// The floor's own table: the same figures as confab's, for the same load.
pub(super) fn floor_rows(plan: &Plan, f: &Phase) -> Vec<(&'static str, String)> {
    let cores = |us: u64| us as f64 / 1e6 / f.window_s;
    let mut rows = vec![
        ("target", "floor: in-memory broadcaster (confab-bench floor-server), nothing stored".into()),
        (
            "load",
            format!(
                "{} clients, {} rooms, {} senders, {:.0} msg/s, {} B",
                plan.clients,
                plan.rooms,
                plan.senders.len(),
                f.rate,
                plan.size
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
        ("read delay (generator)", f.read_delay_line()),
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

pub(super) fn floor_json(f: &Phase) -> Value {
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
        "read_delay_ms": f.read_delay.json(),
        "send_lag_ms": f.send_lag.json(),
        "server_cpu_s": round3(f.cpu.servers_us as f64 / 1e6),
        "server_cpu_us_per_delivery": round3(us_per_delivery(f)),
        "generator_cpu_us_per_delivery": round3(per(f.cpu.bench_us as f64, f.delivered as f64)),
        "machine_busy_pct": round1(f.cpu.machine_busy_pct),
        "clean": f.correct(),
    })
}
