//! `--preload N`: N messages stored in the run's rooms before anyone measures anything, so the
//! measured window runs against a big messages table rather than an empty one.
//!
//! The messages go in the way every message does, through the server: acked `send_message`s,
//! each with a `clientId`, over WebSocket. Nothing is written to the database behind the
//! server's back, so each room's `last_seq`, its messages' seqs, the idempotency keys and the
//! search index stay as the server keeps them. One connection per room (client `r`, the first
//! member of room `r`) keeps `--preload-window` sends unacknowledged, closed loop, as fast as the
//! acks come: with one sender per room each message fans out to its sender only, so the cost is
//! the store's. This is the `store` scenario's path, the fastest the server offers for durable
//! messages.
//!
//! Preloading happens before the fan-out clients connect, and joins without `since` replay
//! nothing, so receivers never see a preloaded message; their content has no bench tag either,
//! so a receiver would ignore one anyway.
//!
//! Afterwards the bench waits for the nodes' search indexers (which index behind the acks) to
//! have taken in every preloaded message, read from `confab_search_indexed_total` on `/metrics`,
//! so that the measured window does not share the machine with an indexing backlog.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::sync::{mpsc, watch};

use crate::{
    fanout::{Kind, Plan, join, kind},
    http::HttpConn,
    nodes::Targets,
    ws::{OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, WsConn},
};

/// The indexers' counter on `/metrics`.
const INDEXED_METRIC: &str = "confab_search_indexed_total";
/// Longest wait for the search index to catch up after the preload.
const INDEX_WAIT: Duration = Duration::from_secs(300);

/// What the preload did.
#[derive(Clone, Debug)]
pub struct Preloaded {
    pub messages: u64,
    /// From the first send to the last ack.
    pub secs: f64,
    pub connections: usize,
    pub window: usize,
    /// How long the search index took to catch up after the last ack; `None` if `/metrics` could
    /// not tell (a node serving it elsewhere), or it did not within [`INDEX_WAIT`].
    pub index_wait_secs: Option<f64>,
}

impl Preloaded {
    pub fn per_s(&self) -> f64 {
        if self.secs > 0.0 { self.messages as f64 / self.secs } else { 0.0 }
    }
}

/// Stores `n` messages of `plan.size` bytes into the plan's rooms, `n / rooms` each (the first
/// `n mod rooms` rooms one more), with `window` sends in flight per room.
pub async fn run(
    targets: &Targets,
    tokens: &[String],
    plan: &Plan,
    n: u64,
    window: usize,
) -> anyhow::Result<Preloaded> {
    let conns = plan.rooms.min(tokens.len()).max(1);
    let window = window.max(1);
    let indexed_before = indexed_total(targets).await;
    eprintln!("confab-bench: preloading {n} messages into {conns} rooms ({window} in flight per room)");
    let (ready_tx, mut ready) = mpsc::unbounded_channel::<anyhow::Result<()>>();
    let (go_tx, go_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for (c, token) in tokens.iter().enumerate().take(conns) {
        let count = n / conns as u64 + u64::from((c as u64) < n % conns as u64);
        let addr = targets.nodes[c % targets.nodes.len()].addr.clone();
        let token = token.clone();
        let room = plan.room_name(plan.room_of(c));
        let (ready_tx, mut go_rx, size) = (ready_tx.clone(), go_rx.clone(), plan.size);
        tasks.spawn(async move {
            let setup = async {
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
                    return Ok(());
                }
            };
            go_rx.wait_for(|go| *go).await?;
            send_acked(&mut conn, &room, c, count, window, size).await.with_context(|| format!("preloading {room}"))
        });
    }
    drop(ready_tx);
    for _ in 0..conns {
        match ready.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => bail!("preload connection failed: {e:#}"),
            None => bail!("preload connection failed"),
        }
    }
    let started = Instant::now();
    go_tx.send(true).context("no preload connection is waiting")?;
    while let Some(done) = tasks.join_next().await {
        done.context("a preload task panicked")??;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!("confab-bench: preloaded {n} messages in {secs:.1} s ({:.0}/s)", n as f64 / secs.max(1e-9));

    let index_wait_secs = match indexed_before {
        None => {
            eprintln!("confab-bench: warning: no {INDEXED_METRIC} on /metrics; not waiting for the search index");
            None
        }
        Some(before) => wait_for_index(targets, before + n as f64).await,
    };
    Ok(Preloaded { messages: n, secs, connections: conns, window, index_wait_secs })
}

/// Sends `count` messages to `room`, keeping `window` unacknowledged, until all are acked.
async fn send_acked(
    conn: &mut WsConn,
    room: &str,
    c: usize,
    count: u64,
    window: usize,
    size: usize,
) -> anyhow::Result<()> {
    let (mut sent, mut acked, mut inflight) = (0u64, 0u64, 0usize);
    let (mut json, mut wire) = (Vec::with_capacity(size + 128), Vec::new());
    while acked < count {
        wire.clear();
        while inflight < window && sent < count {
            encode_preload(&mut json, room, c, sent, size);
            conn.encode(&mut wire, OP_TEXT, &json);
            sent += 1;
            inflight += 1;
        }
        if !wire.is_empty() {
            conn.write_all(&wire).await?;
        }
        if !conn.fill().await? {
            bail!("connection closed by the server after {acked} acks");
        }
        while let Some(frame) = conn.next_frame()? {
            match frame.opcode {
                OP_TEXT => {
                    let p = conn.payload(&frame);
                    match kind(p) {
                        Kind::Ack => {
                            acked += 1;
                            inflight = inflight.saturating_sub(1);
                        }
                        Kind::Error => bail!("the server refused a send: {}", String::from_utf8_lossy(p)),
                        _ => {} // our own messages coming back
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
    }
    Ok(())
}

/// A preload `send_message`: a `clientId` unique per connection and message, and content of
/// `size` bytes without the bench tag, so no receiver counts it.
pub fn encode_preload(out: &mut Vec<u8>, room: &str, c: usize, k: u64, size: usize) {
    use std::io::Write as _;
    out.clear();
    write!(
        out,
        r#"{{"type":"send_message","clientId":"preload-{c:06x}-{k:012x}","room":"{room}","content":"preload {k:010} "#
    )
    .expect("writing to a Vec cannot fail");
    let content_start = out.len() - 19;
    out.resize(content_start + size.max(19), b'x');
    out.extend_from_slice(b"\"}");
}

/// Messages indexed so far by all nodes together, or `None` if a node's `/metrics` cannot tell.
async fn indexed_total(targets: &Targets) -> Option<f64> {
    nodes_metric(targets, INDEXED_METRIC).await
}

/// The sum of metric `name` over every node's `/metrics`, or `None` if a node's cannot tell
/// (metrics served elsewhere, or not at all).
pub async fn nodes_metric(targets: &Targets, name: &str) -> Option<f64> {
    let mut total = 0.0;
    for node in &targets.nodes {
        let resp = HttpConn::new(&node.addr).request("GET", "/metrics", None).await.ok()?;
        if resp.status != 200 || !resp.body.contains("# TYPE") {
            return None;
        }
        total += metric_sum(&resp.body, name);
    }
    Some(total)
}

/// The sum of a metric's samples in Prometheus text (0 when it has none yet).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                return None;
            }
            l.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// Waits until the nodes have indexed `target` messages in all; how long that took.
async fn wait_for_index(targets: &Targets, target: f64) -> Option<f64> {
    let started = Instant::now();
    let mut reported = Instant::now();
    loop {
        let indexed = indexed_total(targets).await?;
        if indexed >= target {
            let secs = started.elapsed().as_secs_f64();
            eprintln!("confab-bench: the search index caught up {secs:.1} s after the preload");
            return Some(secs);
        }
        if started.elapsed() > INDEX_WAIT {
            eprintln!(
                "confab-bench: warning: the search index is {:.0} messages behind after {INDEX_WAIT:?}; measuring anyway",
                target - indexed
            );
            return None;
        }
        if reported.elapsed() > Duration::from_secs(10) {
            eprintln!("confab-bench: waiting for the search index: {:.0} messages behind", target - indexed);
            reported = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::tag;

    #[test]
    fn preload_sends_are_json_of_the_size_asked_for_and_untagged() {
        let mut out = Vec::new();
        encode_preload(&mut out, "r-1", 3, 42, 100);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(v["type"], "send_message");
        assert_eq!(v["room"], "r-1");
        assert_eq!(v["clientId"], "preload-000003-00000000002a");
        let content = v["content"].as_str().unwrap();
        assert_eq!(content.len(), 100);
        assert!(content.starts_with("preload 0000000042 x"), "{content}");
        let event = format!(r#"{{"type":"message","seq":1,"content":"{content}"}}"#);
        assert_eq!(tag(event.as_bytes()), None, "no receiver may count a preloaded message");
        encode_preload(&mut out, "r", 0, 0, 5);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(v["content"].as_str().unwrap().len(), 19, "at least the prefix");
    }

    #[test]
    fn the_indexed_counter_is_summed_over_its_samples() {
        let text = "# HELP confab_search_indexed_total x\n# TYPE confab_search_indexed_total counter\n\
                    confab_search_indexed_total 1500\nconfab_search_indexed_total_other 7\n\
                    confab_search_indexed_total{node=\"b\"} 20\n";
        assert!((metric_sum(text, INDEXED_METRIC) - 1520.0).abs() < f64::EPSILON);
        assert!(metric_sum("# TYPE x counter\n", INDEXED_METRIC).abs() < f64::EPSILON);
    }
}
