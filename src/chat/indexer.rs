//! Full-text indexing behind the acks.
//!
//! Tokenising a message for search inside the commit that acks it cost the send path about a
//! quarter more CPU and stretched its latency (BENCHMARKS.md), and per-commit FTS segments are
//! the most expensive way to build an index. So writers only *hint* which rooms got new
//! messages; one task per node indexes those rooms in batches of up to [`STEP`] seqs per
//! transaction, following each room's seq stream from where the store says it stopped
//! (`search_progress`). Nothing is lost to a crash or a full hint queue: the store knows which
//! rooms are behind, and the task asks it at start, after a missed hint, and every
//! [`RESCAN`] (which also covers rooms written by a node that died before indexing them).
//!
//! A search first asks the task for a pass and waits for it (up to [`CATCH_UP`]), so a search
//! on the node that stored a message finds it at once; on another node, within
//! `chat.search_index_interval`. Edits and deletions of indexed messages re-index them in
//! their own commit (a database trigger): they are rare and must not show stale text.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::sync::MutexExt as _;
use crate::{
    domain::{RoomName, Seq},
    store::{IndexStep, Store},
    telemetry,
};

/// Most seqs of one room indexed in one transaction: keeps each write short, so sends queued
/// behind it on SQLite's single write connection wait little.
const STEP: Seq = 500;
/// Hints waiting for the indexer; when full, the next pass asks the store instead.
const HINTS: usize = 4096;
/// Searches waiting for a pass; more go ahead without waiting.
const WAITERS: usize = 256;
/// How long a search waits for the index to catch up before it runs on what is indexed.
pub const CATCH_UP: Duration = Duration::from_secs(2);
/// How often the indexer asks the store which rooms are behind.
const RESCAN: Duration = Duration::from_secs(60);
/// Most rooms one rescan returns (the next takes the rest).
const RESCAN_LIMIT: u32 = 10_000;

/// The indexer's inbox; cheap to clone.
#[derive(Clone)]
pub struct SearchIndexer {
    hints: mpsc::Sender<RoomName>,
    waiters: mpsc::Sender<oneshot::Sender<()>>,
    /// A hint was dropped: the next pass rescans.
    missed: Arc<AtomicBool>,
    inbox: Arc<Mutex<Option<Inbox>>>,
}

struct Inbox {
    hints: mpsc::Receiver<RoomName>,
    waiters: mpsc::Receiver<oneshot::Sender<()>>,
}

impl Default for SearchIndexer {
    fn default() -> Self {
        Self::new()
    }
}

impl SearchIndexer {
    pub fn new() -> Self {
        let (hints, hints_rx) = mpsc::channel(HINTS);
        let (waiters, waiters_rx) = mpsc::channel(WAITERS);
        Self {
            hints,
            waiters,
            missed: Arc::default(),
            inbox: Arc::new(Mutex::new(Some(Inbox { hints: hints_rx, waiters: waiters_rx }))),
        }
    }

    /// `room` has new messages to index. Never waits.
    pub fn stored(&self, room: &RoomName) {
        if self.hints.try_send(room.clone()).is_err() {
            self.missed.store(true, Ordering::Relaxed);
        }
    }

    /// Waits (up to [`CATCH_UP`]) for a pass that starts after this call: everything this node
    /// stored before is then searchable.
    pub async fn catch_up(&self) {
        let (tx, rx) = oneshot::channel();
        if self.waiters.try_send(tx).is_ok() {
            let _ = tokio::time::timeout(CATCH_UP, rx).await;
        }
    }

    /// Indexes hinted rooms every `every` (and whenever a search asks) until `stop`.
    pub async fn run(&self, store: Store, every: Duration, stop: CancellationToken) {
        let taken = self.inbox.lock_unpoisoned().take();
        let Some(Inbox { mut hints, mut waiters }) = taken else { return };
        let mut pending: HashSet<RoomName> = HashSet::new();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first rescan is at once: rooms left behind by the last run.
        let mut rescan_at = Instant::now();
        let mut answer = Vec::new();
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
                Some(waiter) = waiters.recv() => answer.push(waiter),
            }
            while let Ok(waiter) = waiters.try_recv() {
                answer.push(waiter);
            }
            while let Ok(room) = hints.try_recv() {
                pending.insert(room);
            }
            if self.missed.swap(false, Ordering::Relaxed) || Instant::now() >= rescan_at {
                rescan_at = Instant::now() + RESCAN;
                match store.rooms_behind_index(RESCAN_LIMIT).await {
                    Ok(rooms) => pending.extend(rooms),
                    Err(e) => tracing::warn!(error = ?e, "cannot list rooms behind the search index"),
                }
            }
            pass(&store, &mut pending, &stop).await;
            for waiter in answer.drain(..) {
                let _ = waiter.send(());
            }
        }
    }
}

/// Indexes every room of `pending` up to date; rooms that fail or that another node holds stay
/// for the next pass.
async fn pass(store: &Store, pending: &mut HashSet<RoomName>, stop: &CancellationToken) {
    let indexed = metrics::counter!(telemetry::SEARCH_INDEXED);
    let duration =
        metrics::histogram!(telemetry::STORE_QUERY_DURATION, "query" => "index_messages", "backend" => store.backend());
    let mut retry = Vec::new();
    for room in pending.drain() {
        loop {
            if stop.is_cancelled() {
                retry.push(room);
                break;
            }
            let started = Instant::now();
            let outcome = store.index_room(&room, STEP).await;
            duration.record(started.elapsed().as_secs_f64());
            match outcome {
                Ok(IndexStep::Indexed(n)) => indexed.increment(n),
                Ok(IndexStep::UpToDate) => break,
                Ok(IndexStep::Busy) => {
                    retry.push(room);
                    break;
                }
                Err(e) => {
                    metrics::counter!(telemetry::STORE_ERRORS, "query" => "index_messages").increment(1);
                    tracing::warn!(room = %room, error = ?e, "indexing messages for search failed; will retry");
                    retry.push(room);
                    break;
                }
            }
        }
    }
    pending.extend(retry);
}
