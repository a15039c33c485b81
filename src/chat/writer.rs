//! Group commit: one writer task per room with members on this node.
//!
//! Sends queue here; the writer takes everything queued (up to [`batch_limit`]) and stores it in
//! one transaction with one seq range. Under light load a batch is one message and nothing
//! waits; under heavy load batches grow by themselves while the previous commit is in flight.
//! Each sender gets its `ack` only after the commit, and before the message itself is
//! published, so a sender sees its ack first. A failed commit answers every sender of the
//! batch with `unavailable`/`internal` and publishes nothing: no ack for anything not stored.

use std::{sync::Arc, time::Instant};

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::{
    event,
    indexer::SearchIndexer,
    session::{Reply, ReplyBody, SessionHandle, Tag, corked},
};
use crate::{
    bus::Bus,
    domain::RoomName,
    store::{NewMessage, Store},
    telemetry,
};

/// Largest batch stored in one transaction.
pub const MAX_BATCH: usize = 256;

/// The batch limit for sessions whose queues hold `outbound_queue` frames: a batch lands in
/// every member's queue at once, so it must leave room, or a reader that keeps up would be
/// cut off as too slow.
pub fn batch_limit(outbound_queue: usize) -> usize {
    (outbound_queue / 4).clamp(1, MAX_BATCH)
}
/// Sends waiting for a room's writer before senders wait (backpressure on their sockets).
const QUEUE: usize = 4096;

/// A message to store, and whom to answer.
pub struct WriteRequest {
    pub msg: NewMessage,
    pub tag: Tag,
    pub reply_to: SessionHandle,
    /// When the send was accepted, for `confab_message_ack_duration_seconds`.
    pub accepted: Instant,
}

/// Starts the writer for `room`; it stops when every sender is dropped and the queue is empty.
pub fn spawn(
    room: RoomName,
    store: Store,
    bus: Bus,
    indexer: SearchIndexer,
    max_batch: usize,
    tasks: &TaskTracker,
) -> mpsc::Sender<WriteRequest> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tasks.spawn(run(room, rx, store, bus, indexer, max_batch));
    tx
}

async fn run(
    room: RoomName,
    mut rx: mpsc::Receiver<WriteRequest>,
    store: Store,
    bus: Bus,
    indexer: SearchIndexer,
    max_batch: usize,
) {
    let mut requests = Vec::with_capacity(max_batch);
    let mut batch = Vec::with_capacity(max_batch);
    let mut replies = Vec::with_capacity(max_batch);
    // Handles registered once per writer, not looked up per batch.
    let commit_time = metrics::histogram!(
        telemetry::STORE_QUERY_DURATION, "query" => "append_messages", "backend" => store.backend()
    );
    let stored = metrics::counter!(telemetry::MESSAGES_STORED);
    let ack_time = metrics::histogram!(telemetry::MESSAGE_ACK_DURATION);
    let failed = metrics::counter!(telemetry::STORE_ERRORS, "query" => "append_messages");
    let flusher = Arc::clone(&bus.hub().flusher);
    while rx.recv_many(&mut requests, max_batch).await > 0 {
        // Moved apart, not cloned: the messages go to the store, the reply handles stay here.
        for WriteRequest { msg, tag, reply_to, accepted } in requests.drain(..) {
            batch.push(msg);
            replies.push((tag, reply_to, accepted));
        }
        let started = Instant::now();
        let result = store.append_messages(&room, &batch).await;
        commit_time.record(started.elapsed().as_secs_f64());
        match result {
            // Corked: each session gets its acks and the batch's messages in one write.
            Ok(appended) => corked(&flusher, || {
                let mut events = Vec::with_capacity(appended.len());
                for ((tag, reply_to, accepted), a) in replies.drain(..).zip(appended) {
                    let body = ReplyBody::Sent { id: a.message.id, seq: a.message.seq };
                    reply_to.outbox.settle_send(&Reply::new(tag, body));
                    ack_time.record(accepted.elapsed().as_secs_f64());
                    if !a.duplicate {
                        events.push(event::message(&room, &a.message));
                    }
                }
                stored.increment(events.len() as u64);
                if !events.is_empty() {
                    indexer.stored(&room);
                }
                bus.publish(events);
            }),
            Err(e) => {
                let code = if e.is_unavailable() { "unavailable" } else { "internal" };
                tracing::warn!(room = %room, error = ?e, count = replies.len(), "storing messages failed");
                failed.increment(1);
                corked(&flusher, || {
                    for (tag, reply_to, _) in replies.drain(..) {
                        let reply = Reply::error(tag, code, "the message could not be stored; try again");
                        reply_to.outbox.settle_send(&reply);
                    }
                });
            }
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_fits_a_quarter_of_a_session_queue() {
        assert_eq!(batch_limit(1024), MAX_BATCH);
        assert_eq!(batch_limit(16), 4);
        assert_eq!(batch_limit(8), 2);
        assert_eq!(batch_limit(1_000_000), MAX_BATCH);
    }
}
