//! How many sessions each account has open on this node, so one account cannot make the node
//! hold an unbounded number of sockets (and, with each one's rooms, unbounded memory).
//!
//! A session takes a [`SessionSlot`] when it opens and gives it back when the slot drops, so a
//! session that ends any way at all (client close, error, panic in its task) frees its place.
//! Not on the message path: only opening and closing a session touch the counts, under one of
//! a few sharded locks.

use std::{
    collections::HashMap,
    hash::BuildHasher as _,
    sync::{Arc, Mutex, MutexGuard},
};

use uuid::Uuid;

const SHARDS: usize = 16;

/// Open sessions per account.
pub struct SessionQuota {
    /// At most this many per account; 0 means no limit (and nothing is counted).
    max: u32,
    shards: Box<[Mutex<HashMap<Uuid, u32>>]>,
    hasher: std::collections::hash_map::RandomState,
}

/// One open session's place in its account's count; dropping it frees the place.
pub struct SessionSlot {
    /// `None` when sessions are not limited (nothing was counted).
    quota: Option<Arc<SessionQuota>>,
    user: Uuid,
}

/// The account has as many sessions open as it may.
#[derive(Debug)]
pub struct QuotaFull;

impl SessionQuota {
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        })
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    fn shard(&self, user: &Uuid) -> MutexGuard<'_, HashMap<Uuid, u32>> {
        let idx = usize::try_from(self.hasher.hash_one(user) % SHARDS as u64).unwrap_or(0);
        // The counts are plain integers: a panic elsewhere cannot leave them half-written.
        self.shards[idx].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for one more session of `user`, unless it has `max` open already.
    pub fn admit(self: &Arc<Self>, user: Uuid) -> Result<SessionSlot, QuotaFull> {
        if self.max == 0 {
            return Ok(SessionSlot { quota: None, user });
        }
        let mut shard = self.shard(&user);
        let open = shard.entry(user).or_insert(0);
        if *open >= self.max {
            return Err(QuotaFull);
        }
        *open += 1;
        Ok(SessionSlot { quota: Some(Arc::clone(self)), user })
    }

    /// Sessions `user` has open here (0 when not counted).
    pub fn open(&self, user: Uuid) -> u32 {
        self.shard(&user).get(&user).copied().unwrap_or(0)
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let Some(quota) = &self.quota else { return };
        let mut shard = quota.shard(&self.user);
        if let Some(open) = shard.get_mut(&self.user) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                // No entry for accounts without sessions: the map stays as small as what is open.
                shard.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_gets_max_slots_and_a_dropped_one_is_free_again() {
        let quota = SessionQuota::new(2);
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let first = quota.admit(alice).expect("first");
        let second = quota.admit(alice).expect("second");
        assert!(quota.admit(alice).is_err(), "a third is refused");
        assert!(quota.admit(bob).is_ok(), "another account has its own count");
        drop(first);
        assert_eq!(quota.open(alice), 1);
        let third = quota.admit(alice).expect("a freed place is taken again");
        drop((second, third));
        assert_eq!(quota.open(alice), 0);
        assert!(!quota.shard(&alice).contains_key(&alice), "no entry is left for an account without sessions");
    }

    #[test]
    fn zero_means_no_limit_and_nothing_counted() {
        let quota = SessionQuota::new(0);
        let user = Uuid::new_v4();
        let slots: Vec<_> = (0..1000).map(|_| quota.admit(user).expect("never refused")).collect();
        assert_eq!(quota.open(user), 0);
        drop(slots);
    }
}
