//! `store`: acked durable stores per second, with `crate::store` doing the sending.

use anyhow::bail;
use serde_json::{Value, json};

use super::Context;
use crate::{
    cli::StoreArgs,
    report::{json_line, per, round1, round3, table},
    store, users,
};

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
