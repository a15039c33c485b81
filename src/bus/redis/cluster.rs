//! A Redis Cluster: `SPUBLISH` pipelines per hash slot, `SSUBSCRIBE` through a cluster
//! connection whose node connections deliver messages as RESP3 pushes.
//!
//! The client library reconnects nodes and follows slot moves on its own. This module adds what
//! delivery needs on top: when any node connection drops, or the server withdraws a channel
//! (its slot moved, or its master became a replica), every wanted channel is subscribed again
//! until that succeeds on the slots' current masters, and only then is every room compared with
//! the store, so messages published while a shard failed over are repaired rather than lost.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::{StreamExt as _, future::join_all, stream};
use redis::{
    ProtocolVersion, PushInfo, PushKind, Value,
    aio::{AsyncPushSender, SendError},
    cluster::{ClusterClient, ClusterClientBuilder},
    cluster_async::ClusterConnection,
    cluster_routing::Slot,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    BusError, Control, DISPATCH_QUEUE, Dispatchers, Inner, Outgoing, PUBLISH_BATCH, count_published, next_batch,
};
use crate::telemetry;

/// How long one attempt to reach the cluster may take: short, so a dead master is noticed
/// before clients notice anything.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Between attempts to subscribe everything again after a loss.
const RETRY: Duration = Duration::from_millis(250);
/// Subscriptions sent at once while subscribing everything again.
const RESUBSCRIBE_CONCURRENCY: usize = 64;
/// After a node connection drops, how long every room is subscribed again (and repaired) every
/// [`SETTLE_EVERY`], even once that has worked: a subscription made while the cluster was still
/// failing over may have reached a node that does not keep it.
const SETTLE: Duration = Duration::from_secs(20);
const SETTLE_EVERY: Duration = Duration::from_secs(1);

/// Connects the publishing connection and prepares the subscriber.
pub(super) async fn connect(urls: &[&str]) -> Result<(ClusterConnection, Subscriber), BusError> {
    let builder =
        || ClusterClientBuilder::new(urls.to_vec()).connection_timeout(TIMEOUT).response_timeout(TIMEOUT).retries(3);
    let publisher =
        builder().build().map_err(BusError::Connect)?.get_async_connection().await.map_err(BusError::Connect)?;
    let (messages_tx, messages) = mpsc::channel(DISPATCH_QUEUE);
    let (events_tx, events) = mpsc::unbounded_channel();
    let overflowed = Arc::new(AtomicBool::new(false));
    let pushes = Pushes { messages: messages_tx, events: events_tx, overflowed: Arc::clone(&overflowed) };
    let client =
        builder().use_protocol(ProtocolVersion::RESP3).push_sender(pushes).build().map_err(BusError::Connect)?;
    Ok((publisher, Subscriber { client, messages, events, overflowed }))
}

/// Where the cluster connection's pushes go: messages into a bounded queue (when it is full a
/// message is dropped and everything is repaired from the store once the queue has room), the
/// rare connection events into their own queue so that none is ever dropped.
struct Pushes {
    messages: mpsc::Sender<PushInfo>,
    events: mpsc::UnboundedSender<PushInfo>,
    overflowed: Arc<AtomicBool>,
}

impl AsyncPushSender for Pushes {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        if info.kind == PushKind::SMessage {
            if self.messages.try_send(info).is_err() {
                self.overflowed.store(true, Ordering::Relaxed);
                metrics::counter!(telemetry::BUS_DROPPED, "bus" => "redis").increment(1);
            }
            Ok(())
        } else {
            self.events.send(info).map_err(|_| SendError)
        }
    }
}

pub(super) async fn run_publisher(conn: ClusterConnection, mut rx: mpsc::Receiver<Outgoing>, stop: CancellationToken) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while next_batch(&mut rx, &mut batch, &stop).await {
        // One pipeline per slot, all sent at once: a room's events stay in order within its
        // slot's pipeline, and no pipeline spans two slots (the cluster would refuse it).
        let mut slots: HashMap<Slot, (redis::Pipeline, usize)> = HashMap::new();
        for (channel, payload) in batch.drain(..) {
            let (pipe, count) = slots.entry(Slot::for_key(channel.as_bytes())).or_insert_with(|| (redis::pipe(), 0));
            pipe.cmd("SPUBLISH").arg(channel).arg(payload).ignore();
            *count += 1;
        }
        join_all(slots.into_values().map(|(pipe, count)| {
            let mut conn = conn.clone();
            async move { count_published(count, pipe.query_async::<()>(&mut conn).await.err()) }
        }))
        .await;
    }
}

pub(super) struct Subscriber {
    client: ClusterClient,
    messages: mpsc::Receiver<PushInfo>,
    events: mpsc::UnboundedReceiver<PushInfo>,
    overflowed: Arc<AtomicBool>,
}

impl Subscriber {
    pub(super) async fn run(
        mut self,
        inner: Arc<Inner>,
        mut control: mpsc::UnboundedReceiver<Control>,
        stop: CancellationToken,
    ) {
        let dispatchers = Dispatchers::spawn(&inner.handler);
        // The channels we should be subscribed to: the source of truth across failovers.
        let mut wanted: HashSet<String> = HashSet::from([inner.users_channel.clone()]);
        let mut backoff = Duration::from_millis(100);
        let mut conn = loop {
            tokio::select! {
                c = self.client.get_async_connection() => match c {
                    Ok(c) => break c,
                    Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "redis cluster subscriber cannot connect"),
                },
                () = stop.cancelled() => return,
            }
            if !super::single::wait_while_down(&mut control, &mut wanted, backoff, &stop).await {
                return;
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        };
        // Whether some subscription may be missing: everything is subscribed again, and every
        // room repaired, until that works. The first round subscribes; nothing needs repair yet.
        let mut lost = true;
        let mut first = true;
        let mut retry = tokio::time::interval(RETRY);
        // Until when, and when next, the rooms are subscribed again after a loss.
        let mut settling: Option<(tokio::time::Instant, tokio::time::Instant)> = None;
        loop {
            tokio::select! {
                cmd = control.recv() => match cmd {
                    Some(Control::Subscribe(channel, done)) => {
                        lost |= conn.ssubscribe(&channel).await.is_err();
                        wanted.insert(channel);
                        let _ = done.send(());
                    }
                    Some(Control::Unsubscribe(channel)) => {
                        wanted.remove(&channel);
                        let _ = conn.sunsubscribe(&channel).await;
                    }
                    None => return,
                },
                Some(push) = self.messages.recv() => {
                    if let Some((channel, payload)) = message(&push)
                        && !dispatchers.receive(&inner, channel, payload).await
                    {
                        return;
                    }
                }
                Some(push) = self.events.recv() => match push.kind {
                    PushKind::Disconnection => {
                        let now = tokio::time::Instant::now();
                        settling = Some((now + SETTLE, now + SETTLE_EVERY));
                        if !lost {
                            tracing::warn!("a redis cluster node connection dropped; subscribing again, local delivery continues");
                        }
                        inner.connected.store(false, Ordering::Relaxed);
                        lost = true;
                    }
                    // The server withdrew a channel we still want (its slot moved, or its master
                    // became a replica): subscribe it where the slot lives now.
                    PushKind::SUnsubscribe if push.data.first().and_then(text).is_some_and(|c| wanted.contains(c)) => {
                        lost = true;
                    }
                    _ => {}
                },
                _ = retry.tick(), if lost || settling.is_some() || self.overflowed.load(Ordering::Relaxed) => {
                    let overflowed = self.overflowed.load(Ordering::Relaxed);
                    if !lost && !overflowed {
                        // Settling: again every SETTLE_EVERY until SETTLE has passed.
                        let now = tokio::time::Instant::now();
                        match settling {
                            Some((until, next)) if now < until => {
                                if now < next {
                                    continue;
                                }
                                settling = Some((until, now + SETTLE_EVERY));
                            }
                            _ => {
                                settling = None;
                                continue;
                            }
                        }
                    }
                    let (was_lost, resubscribe) = (lost, lost || settling.is_some());
                    if resubscribe && !subscribe_all(&mut conn, &wanted).await {
                        lost = true;
                        continue;
                    }
                    lost = false;
                    self.overflowed.store(false, Ordering::Relaxed);
                    inner.connected.store(true, Ordering::Relaxed);
                    if first {
                        tracing::info!("redis cluster bus connected");
                    } else {
                        if was_lost {
                            tracing::info!(rooms = wanted.len(), "redis cluster bus resubscribed; repairing missed messages from the store");
                        }
                        inner.handler.resync();
                    }
                    first = false;
                }
                () = stop.cancelled() => return,
            }
        }
    }
}

/// Subscribes every channel in `wanted` on its slot's current master; true when all succeeded.
async fn subscribe_all(conn: &mut ClusterConnection, wanted: &HashSet<String>) -> bool {
    // One command per channel: a subscription spanning two slots would be refused.
    let results: Vec<bool> = stream::iter(wanted.iter().cloned())
        .map(|channel| {
            let mut conn = conn.clone();
            async move {
                match tokio::time::timeout(TIMEOUT, conn.ssubscribe(&channel)).await {
                    Ok(Ok(())) => true,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, channel, "ssubscribe failed; retrying");
                        false
                    }
                    Err(_) => false,
                }
            }
        })
        .buffer_unordered(RESUBSCRIBE_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().all(|ok| ok)
}

/// The channel and payload of a sharded message push.
fn message(push: &PushInfo) -> Option<(&str, &[u8])> {
    match push.data.as_slice() {
        [channel, Value::BulkString(payload), ..] => Some((text(channel)?, payload)),
        _ => None,
    }
}

fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}
