//! Locking that outlives a panic.
//!
//! confab's mutexes guard maps and queues whose every update leaves them consistent before
//! anything that could panic, so a panic on another thread is no reason to stop using them:
//! a poisoned lock is taken as it is, rather than turning one failed task into a failed node.

use std::sync::{Mutex, MutexGuard, PoisonError};

pub trait MutexExt<T> {
    /// The guard, whether or not a holder panicked.
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T>;
}

impl<T> MutexExt<T> for Mutex<T> {
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
