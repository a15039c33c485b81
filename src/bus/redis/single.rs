//! One Redis server: `PUBLISH` through a multiplexed connection, `SUBSCRIBE` over one
//! dedicated subscriber connection that is re-established (and every room repaired from the
//! store) after it drops.

use std::{
    collections::HashSet,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures_util::StreamExt as _;
use redis::{AsyncCommands as _, aio::ConnectionManager};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Control, Dispatchers, Inner, Outgoing, PUBLISH_BATCH, count_published, next_batch};

pub(super) async fn run_publisher(
    mut conn: ConnectionManager,
    mut rx: mpsc::Receiver<Outgoing>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while next_batch(&mut rx, &mut batch, &stop).await {
        let result = if batch.len() == 1 {
            let (channel, payload) = &batch[0];
            conn.publish::<_, _, ()>(channel, payload).await
        } else {
            let mut pipe = redis::pipe();
            for (channel, payload) in &batch {
                pipe.publish(channel, payload).ignore();
            }
            pipe.query_async::<()>(&mut conn).await
        };
        count_published(batch.len(), result.err());
        batch.clear();
    }
}

pub(super) async fn run_subscriber(
    client: redis::Client,
    inner: Arc<Inner>,
    mut control: mpsc::UnboundedReceiver<Control>,
    stop: CancellationToken,
) {
    // The channels we should be subscribed to: the source of truth across reconnects.
    let mut wanted: HashSet<String> = HashSet::from([inner.users_channel.clone()]);
    let dispatchers = Dispatchers::spawn(&inner.handler);
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        let connection = tokio::select! {
            c = client.get_async_pubsub() => c,
            () = stop.cancelled() => return,
        };
        let (mut sink, mut stream) = match connection {
            Ok(pubsub) => pubsub.split(),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "redis subscriber cannot connect");
                if !wait_while_down(&mut control, &mut wanted, backoff, &stop).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if !wanted.is_empty() && sink.subscribe(wanted.iter().collect::<Vec<_>>()).await.is_err() {
            continue;
        }
        inner.connected.store(true, Ordering::Relaxed);
        backoff = Duration::from_millis(100);
        if first {
            tracing::info!("redis bus connected");
        } else {
            tracing::info!(rooms = wanted.len(), "redis bus reconnected; repairing missed messages from the store");
            inner.handler.resync();
        }
        first = false;
        loop {
            tokio::select! {
                cmd = control.recv() => match cmd {
                    Some(Control::Subscribe(channel, done)) => {
                        let ok = sink.subscribe(&channel).await.is_ok();
                        wanted.insert(channel);
                        let _ = done.send(());
                        if !ok { break; }
                    }
                    Some(Control::Unsubscribe(channel)) => {
                        wanted.remove(&channel);
                        if sink.unsubscribe(&channel).await.is_err() { break; }
                    }
                    None => return,
                },
                msg = stream.next() => match msg {
                    Some(msg) => {
                        // Waits when the fan-out falls behind, so Redis holds the backlog.
                        if !dispatchers.receive(&inner, msg.get_channel_name(), msg.get_payload_bytes()).await {
                            return;
                        }
                    }
                    None => break,
                },
                () = stop.cancelled() => return,
            }
        }
        inner.connected.store(false, Ordering::Relaxed);
        tracing::warn!("redis bus disconnected; local delivery continues, reconnecting");
    }
}

/// While disconnected: keep the wanted set current and confirm subscriptions at once (the
/// rooms are subscribed and repaired on reconnect), for `backoff`. False when stopping.
pub(super) async fn wait_while_down(
    control: &mut mpsc::UnboundedReceiver<Control>,
    wanted: &mut HashSet<String>,
    backoff: Duration,
    stop: &CancellationToken,
) -> bool {
    let deadline = tokio::time::sleep(backoff);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return true,
            () = stop.cancelled() => return false,
            cmd = control.recv() => match cmd {
                Some(Control::Subscribe(channel, done)) => {
                    wanted.insert(channel);
                    let _ = done.send(());
                }
                Some(Control::Unsubscribe(channel)) => {
                    wanted.remove(&channel);
                }
                None => return false,
            },
        }
    }
}
