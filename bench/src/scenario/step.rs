//! `step`: a search over rising rates for the highest one whose phase is clean (nothing lost,
//! duplicated or reordered, p99 under the limit), and the same search on the floor if `--floor`.

use std::time::Duration;

use anyhow::bail;
use serde_json::{Value, json};

use super::{
    Context,
    fanout::{Extra, check_fanout, open_fanout, preloaded_json, report_phase},
    floor::{Floor, floor_rows},
    us_per_delivery,
};
use crate::{
    cli::{FanoutArgs, StepArgs},
    fanout::{Clients, Phase},
    report::{json_line, round1, round3, table},
};

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
    let extra = Extra { preloaded: preloaded.as_ref(), ..Extra::default() };
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
