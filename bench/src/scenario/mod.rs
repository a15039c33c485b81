//! The six scenarios: set up, measure, report.
//!
//! One file per scenario: `fanout` (`fanout` and `cluster`, and the phase report that `step`
//! prints too), `step`, `idle`, `rooms` and `store`; `floor` runs the floor of `--floor` beside
//! confab. This file holds the [`Context`] every report describes, and what the reports share.

mod fanout;
mod floor;
mod idle;
mod rooms;
mod step;
mod store;

use serde_json::{Value, json};

use crate::{fanout::Phase, nodes::Targets, report::per};

pub use fanout::fanout;
pub use idle::idle;
pub use rooms::rooms;
pub use step::step;
pub use store::store;

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

fn us_per_delivery(p: &Phase) -> f64 {
    per(p.cpu.servers_us as f64, p.delivered as f64)
}

/// What every load phase reports the same way (`fanout`, `step`, `cluster`, and the busy phase
/// of `rooms`): what was sent and delivered, how late, and what it cost.
fn delivery_json(p: &Phase, known_pids: bool) -> Value {
    json!({
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
        "deliveries_per_s": crate::report::round1(p.deliveries_per_s()),
        "latency_ms": p.latency.json(),
        "read_delay_ms": p.read_delay.json(),
        "unstamped_deliveries": p.unstamped,
        "send_lag_ms": p.send_lag.json(),
        "server_cpu_s": known_pids.then(|| crate::report::round3(p.cpu.servers_us as f64 / 1e6)),
        "server_cpu_us_per_delivery": known_pids.then(|| crate::report::round3(us_per_delivery(p))),
        "generator_cpu_s": crate::report::round3(p.cpu.bench_us as f64 / 1e6),
        "machine_busy_pct": crate::report::round1(p.cpu.machine_busy_pct),
        "window_unix_ns": [crate::clock::to_unix(p.window_ns.0), crate::clock::to_unix(p.window_ns.1)],
    })
}
