//! Concurrency helpers shared by the chat core and the bus.
//!
//! Locking that outlives a panic: confab's mutexes guard maps and queues whose every update
//! leaves them consistent before anything that could panic, so a panic on another thread is no
//! reason to stop using them: a poisoned lock is taken as it is, rather than turning one failed
//! task into a failed node.
//!
//! Work spread over one task per core ([`per_core`]): fan-out written by one task alone would
//! cap a node at one core.

use std::{
    num::NonZeroUsize,
    sync::{Mutex, MutexGuard, PoisonError},
};

pub trait MutexExt<T> {
    /// The guard, whether or not a holder panicked.
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T>;
}

impl<T> MutexExt<T> for Mutex<T> {
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Most tasks [`per_core`] starts, however many cores the machine has.
const MAX_SHARDS: usize = 16;

/// Starts one task per core (at most 16) with `spawn`, which returns the way to reach it (the
/// sender of its queue).
pub fn per_core<T>(spawn: impl FnMut(usize) -> T) -> Vec<T> {
    let n = std::thread::available_parallelism().map_or(1, NonZeroUsize::get).clamp(1, MAX_SHARDS);
    (0..n).map(spawn).collect()
}
