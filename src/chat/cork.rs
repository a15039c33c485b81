//! Corked delivery: frames offered while a thread is corked are queued, not written, and each
//! session reached is then written once, with everything for it, when the cork comes off. A
//! room writer delivers a committed batch (its acks and its messages) this way, and so does the
//! bus for a batch from another node: under load a recipient costs one write per batch rather
//! than one per frame. The writes happen on the delivering task itself: handing them to a task
//! of their own cost a wake-up per batch and, measured, saved no writes (a busy room's batches
//! grow while its writer is writing, so frames still share writes).

use std::{cell::RefCell, sync::Arc};

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

/// Runs `deliver` with writes held back, then writes each session it reached once, with all
/// its frames (a socket that does not take everything leaves the rest to its session task).
/// `deliver` must not await (the cork is per thread). Nested calls join the outermost cork.
pub fn corked<R>(deliver: impl FnOnce() -> R) -> R {
    struct Uncork;
    impl Drop for Uncork {
        fn drop(&mut self) {
            // Also on a panic: nothing stays queued without a writer.
            let list = CORK.with(|c| c.borrow_mut().take()).unwrap_or_default();
            for out in list {
                out.uncork();
            }
        }
    }
    if CORK.with(|c| c.borrow().is_some()) {
        return deliver();
    }
    CORK.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let _uncork = Uncork;
    deliver()
}
