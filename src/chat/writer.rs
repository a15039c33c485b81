//! Group commit: one writer task per room that is being written to on this node.
//!
//! A room's writer starts with the first send and retires after `chat.writer_idle` without one, so a
//! room whose members only read (most rooms, most of the time) holds no task and no queue. A
//! writer that retires first closes its queue, then stores whatever was already in it; a send
//! that finds the queue closed starts the next writer, which waits for the retiring one to
//! finish before it commits anything, so a room's messages are stored in the order they were
//! queued.
//!
//! Sends queue here; the writer takes everything queued (up to [`batch_limit`]) and stores it in
//! one transaction with one seq range. Under light load a batch is one message and nothing
//! waits; under heavy load batches grow by themselves while the previous commit is in flight.
//! Each sender gets its `ack` only after the commit, and before the message itself is
//! published, so a sender sees its ack first. A failed commit answers every sender of the
//! batch with `unavailable`/`internal` and publishes nothing: no ack for anything not stored.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::{cork::corked, indexer::SearchIndexer, session::SessionHandle};
use crate::{
    bus::Bus,
    domain::NewMessage,
    domain::RoomName,
    protocol::{Reply, ReplyBody, Tag, events},
    store::Store,
    sync::MutexExt as _,
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

/// What every writer of this node needs: where to store, publish and index, and its batch limit.
#[derive(Clone)]
pub struct Writers {
    pub store: Store,
    pub bus: Bus,
    pub indexer: SearchIndexer,
    pub max_batch: usize,
    /// How long a writer waits for another send before it retires.
    pub idle: Duration,
    /// The running writers (and nothing else), so shutdown can wait for in-flight commits.
    pub tasks: TaskTracker,
}

impl Writers {
    /// Writers running now.
    pub fn running(&self) -> usize {
        self.tasks.len()
    }
}

/// One room's writer on this node, while one runs.
#[derive(Default)]
pub struct Slot(Mutex<Option<Running>>);

struct Running {
    tx: mpsc::Sender<WriteRequest>,
    /// Completes when this writer has stored everything it took.
    finished: oneshot::Receiver<()>,
}

impl Slot {
    /// Queues `request` for `room`'s writer, starting one if none runs; waits while the queue is
    /// full. `Err` gives the request back only when the node is stopping.
    pub async fn submit(&self, room: &RoomName, writers: &Writers, request: WriteRequest) -> Result<(), WriteRequest> {
        let mut request = request;
        // A writer can retire between taking its sender and sending: try the next one. Two
        // retirements in a row mean writers cannot run at all.
        for _ in 0..3 {
            let tx = self.sender(room, writers);
            match tx.send(request).await {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(back)) => request = back,
            }
        }
        Err(request)
    }

    fn sender(&self, room: &RoomName, writers: &Writers) -> mpsc::Sender<WriteRequest> {
        let mut slot = self.0.lock_unpoisoned();
        if let Some(running) = slot.as_ref()
            && !running.tx.is_closed()
        {
            return running.tx.clone();
        }
        let previous = slot.take().map(|r| r.finished);
        let (tx, rx) = mpsc::channel(QUEUE);
        let (finished_tx, finished) = oneshot::channel();
        writers.tasks.spawn(run(room.clone(), rx, writers.clone(), previous, finished_tx));
        *slot = Some(Running { tx: tx.clone(), finished });
        tx
    }
}

async fn run(
    room: RoomName,
    mut rx: mpsc::Receiver<WriteRequest>,
    writers: Writers,
    previous: Option<oneshot::Receiver<()>>,
    finished: oneshot::Sender<()>,
) {
    // Whatever the retiring writer took is stored before anything queued here.
    if let Some(previous) = previous {
        let _ = previous.await;
    }
    let Writers { store, bus, indexer, max_batch, idle, .. } = writers;
    let gauge = metrics::gauge!(telemetry::ROOM_WRITERS);
    gauge.increment(1.0);
    // Grown by the batches that come, not reserved up front: most writers see small ones.
    let mut requests = Vec::new();
    let mut batch = Vec::new();
    let mut replies = Vec::new();
    // Handles registered once per writer, not looked up per batch.
    let commit_time = metrics::histogram!(
        telemetry::STORE_QUERY_DURATION, "query" => "append_messages", "backend" => store.backend()
    );
    let stored = metrics::counter!(telemetry::MESSAGES_STORED);
    let ack_time = metrics::histogram!(telemetry::MESSAGE_ACK_DURATION);
    let failed = metrics::counter!(telemetry::STORE_ERRORS, "query" => "append_messages");
    let mut retiring = false;
    loop {
        let taken = if retiring {
            rx.recv_many(&mut requests, max_batch).await
        } else {
            let Ok(n) = tokio::time::timeout(idle, rx.recv_many(&mut requests, max_batch)).await else {
                // Idle: refuse new sends (they start the next writer), store what is queued.
                rx.close();
                retiring = true;
                continue;
            };
            n
        };
        if taken == 0 {
            break;
        }
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
            Ok(appended) => corked(|| {
                let mut published = Vec::with_capacity(appended.len());
                for ((tag, reply_to, accepted), a) in replies.drain(..).zip(appended) {
                    let body = ReplyBody::Sent { id: a.message.id, seq: a.message.seq };
                    reply_to.outbox.settle_send(&Reply::new(tag, body));
                    ack_time.record(accepted.elapsed().as_secs_f64());
                    if !a.duplicate {
                        published.push(events::message(&room, &a.message));
                    }
                }
                stored.increment(published.len() as u64);
                if !published.is_empty() {
                    indexer.stored(&room);
                }
                bus.publish(published);
            }),
            Err(e) => {
                let code = if e.is_unavailable() { "unavailable" } else { "internal" };
                tracing::warn!(room = %room, error = ?e, count = replies.len(), "storing messages failed");
                failed.increment(1);
                corked(|| {
                    for (tag, reply_to, _) in replies.drain(..) {
                        let reply = Reply::error(tag, code, "the message could not be stored; try again");
                        reply_to.outbox.settle_send(&reply);
                    }
                });
            }
        }
        batch.clear();
    }
    gauge.decrement(1.0);
    let _ = finished.send(());
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
