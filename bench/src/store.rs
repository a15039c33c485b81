//! The `store` scenario: how many messages per second the server stores durably and acks.
//!
//! K senders, each alone in its own room (so rooms never contend with each other and nothing
//! fans out beyond the sender's own copy), keep a window of W unacknowledged `send_message`s in
//! flight: closed loop, as fast as acks allow. An ack means "stored" (PROTOCOL.md), so acks per
//! second over the measured window is the durable store rate.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::{
    cli::StoreArgs,
    clock,
    fanout::{Kind, encode_send, join, kind},
    nodes::Targets,
    procfs::{CpuDelta, CpuSample},
    report::Summary,
    ws::{OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, WsConn},
};

/// One sender's tally.
struct Tally {
    acks: u64,
    errors: u64,
    first_error: Option<String>,
    unacked: usize,
    latency: Histogram<u64>,
}

/// The result of a store run.
pub struct StoreRun {
    pub acks: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub unacked: usize,
    pub latency: Summary,
    pub cpu: CpuDelta,
    pub connect_secs: f64,
}

#[derive(Clone, Copy)]
struct Window {
    start: u64,
    end: u64,
    give_up: u64,
}

pub async fn run(targets: &Targets, tokens: &[String], args: &StoreArgs, run: &str) -> anyhow::Result<StoreRun> {
    let pids = targets.pids();
    let (ready_tx, mut ready) = mpsc::unbounded_channel::<anyhow::Result<()>>();
    let (go_tx, go_rx) = watch::channel(None::<Window>);
    let permits = Arc::new(Semaphore::new(64));
    let started = clock::now_ns();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, token) in tokens.iter().enumerate().take(args.senders) {
        let addr = targets.nodes[i % targets.nodes.len()].addr.clone();
        let token = token.clone();
        let room = format!("s{run}-{i}");
        let (ready_tx, mut go_rx, permits) = (ready_tx.clone(), go_rx.clone(), Arc::clone(&permits));
        let (size, window, client_ids) = (args.size, args.window.max(1), !args.no_client_id);
        tasks.spawn(async move {
            let setup = async {
                let _permit = permits.acquire().await?;
                let mut conn = WsConn::connect(&addr, "/ws", &token, 64 * 1024).await?;
                conn.next_text().await?.context("closed before hello")?;
                join(&mut conn, &room).await?;
                Ok::<_, anyhow::Error>(conn)
            }
            .await;
            let mut conn = match setup {
                Ok(conn) => {
                    let _ = ready_tx.send(Ok(()));
                    conn
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return None;
                }
            };
            let w = (*go_rx.wait_for(Option::is_some).await.ok()?)?;
            Some(send_loop(&mut conn, &room, i, window, (size, client_ids), w).await)
        });
    }
    drop(ready_tx);
    for _ in 0..args.senders {
        match ready.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => bail!("store sender setup failed: {e:#}"),
            None => bail!("store sender setup failed"),
        }
    }
    let connect_secs = (clock::now_ns() - started) as f64 / 1e9;
    let t0 = clock::now_ns() + 50_000_000;
    let start = t0 + u64::try_from(args.warmup.as_nanos())?;
    let end = start + u64::try_from(args.duration.as_nanos())?;
    let _ = go_tx.send(Some(Window { start, end, give_up: end + 10_000_000_000 }));
    tokio::time::sleep_until(clock::instant(start).into()).await;
    let cpu_start = CpuSample::take(&pids);
    tokio::time::sleep_until(clock::instant(end).into()).await;
    let cpu_end = CpuSample::take(&pids);

    let mut result = StoreRun {
        acks: 0,
        errors: 0,
        first_error: None,
        unacked: 0,
        latency: Summary::default(),
        cpu: cpu_start.until(&cpu_end),
        connect_secs,
    };
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    while let Some(done) = tasks.join_next().await {
        let tally = done.context("a store sender panicked")?.context("a store sender did not start")??;
        result.acks += tally.acks;
        result.errors += tally.errors;
        result.unacked += tally.unacked;
        if result.first_error.is_none() {
            result.first_error = tally.first_error;
        }
        latency.add(&tally.latency).expect("same bounds");
    }
    result.latency = Summary::of(&latency);
    Ok(result)
}

/// Keeps `window` sends in flight until the end, then collects the outstanding acks.
async fn send_loop(
    conn: &mut WsConn,
    room: &str,
    id: usize,
    window: usize,
    (size, client_ids): (usize, bool),
    w: Window,
) -> anyhow::Result<Tally> {
    let mut tally = Tally {
        acks: 0,
        errors: 0,
        first_error: None,
        unacked: 0,
        latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
    };
    let mut inflight: VecDeque<u64> = VecDeque::with_capacity(window);
    let (mut json, mut wire) = (Vec::with_capacity(size + 128), Vec::with_capacity(window * (size + 160)));
    let mut k = 0;
    // Sending starts at once; acks before `w.start` are the warm-up and are not counted.
    loop {
        // Acks already read first: they open the window for the next sends.
        while let Some(frame) = conn.next_frame()? {
            match frame.opcode {
                OP_TEXT => {
                    let p = conn.payload(&frame);
                    match kind(p) {
                        Kind::Ack | Kind::Error => {
                            let sent = inflight.pop_front().unwrap_or(0);
                            let at = clock::now_ns();
                            if kind(p) == Kind::Error {
                                tally.errors += 1;
                                tally.first_error.get_or_insert_with(|| String::from_utf8_lossy(p).into_owned());
                            } else if (w.start..w.end).contains(&at) {
                                tally.acks += 1;
                                tally.latency.saturating_record(at.saturating_sub(sent) / 1000);
                            }
                        }
                        _ => {} // our own message coming back, system frames
                    }
                }
                OP_PING => {
                    let data = conn.payload(&frame).to_vec();
                    conn.send(OP_PONG, &data).await?;
                }
                OP_CLOSE => bail!("closed by the server: {}", String::from_utf8_lossy(conn.payload(&frame))),
                _ => {}
            }
            conn.consume(&frame);
        }
        let now = clock::now_ns();
        if now < w.end {
            wire.clear();
            while inflight.len() < window {
                encode_send(&mut json, room, id, k, now, size, client_ids);
                conn.encode(&mut wire, OP_TEXT, &json);
                inflight.push_back(now);
                k += 1;
            }
            if !wire.is_empty() {
                conn.write_all(&wire).await?;
            }
        } else if inflight.is_empty() || now >= w.give_up {
            break;
        }
        let until = if now < w.end { w.end } else { w.give_up };
        let wait = Duration::from_nanos(until.saturating_sub(clock::now_ns()).max(1_000_000));
        match tokio::time::timeout(wait, conn.fill()).await {
            Ok(Ok(true)) | Err(_) => {}
            Ok(Ok(false)) => bail!("connection closed by the server"),
            Ok(Err(e)) => return Err(e),
        }
    }
    tally.unacked = inflight.len();
    Ok(tally)
}
