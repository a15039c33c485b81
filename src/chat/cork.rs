//! Corked delivery: frames offered while a thread is corked are queued, not written, and each
//! session reached is then written once, with everything for it, by a [`Flusher`] task. A room
//! writer delivers a committed batch (its acks and its messages) this way, and so does the bus
//! for a batch from another node: under load a recipient costs one write per batch rather than
//! one per frame.

use std::{
    cell::RefCell,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::sync::mpsc;

use super::outbox::Outbox;

/// Whether this thread is corked now.
pub(super) fn is_corked() -> bool {
    CORK.with(|c| c.borrow().is_some())
}

/// Remembers `out`, which got frames under this thread's cork, for the flush.
pub(super) fn hold(out: Arc<Outbox>) {
    CORK.with(|c| {
        if let Some(list) = c.borrow_mut().as_mut() {
            list.push(out);
        }
    });
}

thread_local! {
    /// Outboxes that got frames while this thread is corked.
    static CORK: RefCell<Option<Vec<Arc<Outbox>>>> = const { RefCell::new(None) };
}

/// Writes corked outboxes on tasks of their own (one per core), just after the batch that
/// filled them. Under light load that is at once; when the node is busy the flush waits its
/// turn behind other ready tasks, later batches join the same write, and each session costs
/// fewer sends per message the busier the node is.
pub struct Flusher {
    shards: Vec<mpsc::UnboundedSender<Vec<Arc<Outbox>>>>,
    next: AtomicUsize,
}

impl Flusher {
    /// Starts the flush tasks; they stop when the flusher is dropped.
    pub fn spawn() -> Arc<Self> {
        let shards = crate::sync::per_core(|_| {
            let (tx, mut rx) = mpsc::unbounded_channel::<Vec<Arc<Outbox>>>();
            tokio::spawn(async move {
                let mut lists = Vec::new();
                while rx.recv_many(&mut lists, 256).await > 0 {
                    for out in lists.drain(..).flatten() {
                        out.uncork();
                    }
                }
            });
            tx
        });
        Arc::new(Self { shards, next: AtomicUsize::new(0) })
    }

    fn submit(&self, list: Vec<Arc<Outbox>>) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        if let Err(unsent) = self.shards[i].send(list) {
            // Shutting down: write them here.
            unsent.0.iter().for_each(|out| out.uncork());
        }
    }
}

/// Runs `deliver` with writes held back; the sessions it reached are then written by the
/// [`Flusher`], each with one write for all its frames. `deliver` must not await (the
/// cork is per thread). Nested calls join the outermost cork.
pub fn corked<R>(flusher: &Flusher, deliver: impl FnOnce() -> R) -> R {
    struct Uncork<'a>(&'a Flusher);
    impl Drop for Uncork<'_> {
        fn drop(&mut self) {
            // Also on a panic: nothing stays queued without a writer.
            let list = CORK.with(|c| c.borrow_mut().take()).unwrap_or_default();
            if !list.is_empty() {
                self.0.submit(list);
            }
        }
    }
    if CORK.with(|c| c.borrow().is_some()) {
        return deliver();
    }
    CORK.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let _uncork = Uncork(flusher);
    deliver()
}
