//! The sessions open on this node, by account: how many each account has (so one account
//! cannot make the node hold an unbounded number of sockets and, with each one's rooms,
//! unbounded memory), and a way to end an account's sessions when its tokens are revoked.
//!
//! A session takes a [`SessionSlot`] when it opens and gives it back when the slot drops, so a
//! session that ends any way at all (client close, error, panic in its task) frees its place.
//! Not on the message path: only opening, closing and revoking a session touch the map, under
//! one of a few sharded locks.

use std::{
    collections::HashMap,
    hash::BuildHasher as _,
    net::IpAddr,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicU64, Ordering},
    },
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{outbox::Outbox, session::Revocation};
use crate::{protocol::Encoded, sync::MutexExt as _};

const SHARDS: usize = 16;

/// Where a session comes from, for `confab user sessions`.
#[derive(Clone, Copy, Debug)]
pub struct Origin {
    /// The client's address (a trusted proxy's `X-Forwarded-For` believed).
    pub addr: IpAddr,
    /// `native` or `socketio`.
    pub transport: &'static str,
}

/// One open session, as `confab user sessions` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveSession {
    pub user_id: Uuid,
    pub since: DateTime<Utc>,
    pub address: IpAddr,
    pub transport: String,
}

/// One open session, as the registry knows it.
struct Entry {
    session: u64,
    /// The epoch of the token the session runs on (see `users.session_epoch`).
    epoch: i64,
    /// Weak: the registry never keeps a finished session's socket alive.
    out: Weak<Outbox>,
    since: DateTime<Utc>,
    origin: Origin,
}

/// One shard of the registry: the open sessions of the accounts that hash to it.
type Shard = Mutex<HashMap<Uuid, Vec<Entry>>>;

/// Open sessions by account.
pub struct SessionRegistry {
    /// At most this many per account; 0 means no limit.
    max: u32,
    shards: Box<[Shard]>,
    hasher: std::collections::hash_map::RandomState,
    /// Bumped whenever a session opens or closes: whether a published list is stale.
    generation: AtomicU64,
}

/// One open session's place in the registry; dropping it frees the place.
pub struct SessionSlot {
    registry: Arc<SessionRegistry>,
    user: Uuid,
    session: u64,
}

/// The account has as many sessions open as it may.
#[derive(Debug)]
pub struct QuotaFull;

impl SessionRegistry {
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            generation: AtomicU64::new(0),
        })
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    fn shard(&self, user: &Uuid) -> MutexGuard<'_, HashMap<Uuid, Vec<Entry>>> {
        let idx = usize::try_from(self.hasher.hash_one(user) % SHARDS as u64).unwrap_or(0);
        // Every update leaves the map consistent before anything that could panic.
        self.shards[idx].lock_unpoisoned()
    }

    /// Registers session `session` of `user` (token epoch `epoch`, writing to `out`, from
    /// `origin`), unless the account has `max` open already.
    pub fn admit(
        self: &Arc<Self>,
        user: Uuid,
        session: u64,
        epoch: i64,
        out: &Arc<Outbox>,
        origin: Origin,
    ) -> Result<SessionSlot, QuotaFull> {
        let mut shard = self.shard(&user);
        // Room for one: most accounts have one session open (a Vec's first push makes room
        // for four, which every idle connection would carry).
        let open = shard.entry(user).or_insert_with(|| Vec::with_capacity(1));
        if self.max > 0 && open.len() >= self.max as usize {
            if open.is_empty() {
                shard.remove(&user);
            }
            return Err(QuotaFull);
        }
        open.push(Entry { session, epoch, out: Arc::downgrade(out), since: Utc::now(), origin });
        self.generation.fetch_add(1, Ordering::Relaxed);
        Ok(SessionSlot { registry: Arc::clone(self), user, session })
    }

    /// Changes with every session opened or closed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Up to `limit` of the sessions open here, shard by shard (a shard's lock at a time).
    pub fn snapshot(&self, limit: usize) -> Vec<LiveSession> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock_unpoisoned();
            for (user, entries) in shard.iter() {
                for e in entries {
                    if out.len() == limit {
                        return out;
                    }
                    out.push(LiveSession {
                        user_id: *user,
                        since: e.since,
                        address: e.origin.addr,
                        transport: e.origin.transport.to_owned(),
                    });
                }
            }
        }
        out
    }

    /// Sessions `user` has open here.
    pub fn open(&self, user: Uuid) -> usize {
        self.shard(&user).get(&user).map_or(0, Vec::len)
    }

    /// Gives `frame` to every session of `user` open here but `except`.
    pub fn deliver(&self, user: Uuid, except: u64, frame: &Encoded) {
        let shard = self.shard(&user);
        for entry in shard.get(&user).into_iter().flatten().filter(|e| e.session != except) {
            if let Some(out) = entry.out.upgrade() {
                out.offer_event(frame);
            }
        }
    }

    /// Ends `user`'s sessions whose token epoch is older than `epoch` (all of them when
    /// `disabled`); returns how many were told to end.
    pub fn revoke(&self, user: Uuid, epoch: i64, disabled: bool) -> usize {
        let shard = self.shard(&user);
        let Some(open) = shard.get(&user) else { return 0 };
        let mut ended = 0;
        for entry in open.iter().filter(|e| disabled || e.epoch < epoch) {
            if let Some(out) = entry.out.upgrade()
                && out.revoke(Revocation::Revoked)
            {
                ended += 1;
            }
        }
        ended
    }
}

impl SessionSlot {
    /// The session now runs on a token of `epoch` (refreshed in-band).
    pub fn set_epoch(&self, epoch: i64) {
        let mut shard = self.registry.shard(&self.user);
        if let Some(entry) = shard.get_mut(&self.user).and_then(|v| v.iter_mut().find(|e| e.session == self.session)) {
            entry.epoch = epoch;
        }
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut shard = self.registry.shard(&self.user);
        if let Some(open) = shard.get_mut(&self.user) {
            open.retain(|e| e.session != self.session);
            self.registry.generation.fetch_add(1, Ordering::Relaxed);
            if open.is_empty() {
                // No entry for accounts without sessions: the map stays as small as what is open.
                shard.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{chat::outbox::Failure, protocol::Codec};

    fn outbox() -> Arc<Outbox> {
        Outbox::new(tokio::io::sink(), Codec::Native, 8)
    }

    const HERE: Origin = Origin { addr: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), transport: "native" };

    #[tokio::test]
    async fn an_account_gets_max_places_and_a_dropped_one_is_free_again() {
        let registry = SessionRegistry::new(2);
        let (alice, bob, out) = (Uuid::new_v4(), Uuid::new_v4(), outbox());
        let first = registry.admit(alice, 1, 0, &out, HERE).expect("first");
        let second = registry.admit(alice, 2, 0, &out, HERE).expect("second");
        assert!(registry.admit(alice, 3, 0, &out, HERE).is_err(), "a third is refused");
        assert!(registry.admit(bob, 4, 0, &out, HERE).is_ok(), "another account has its own count");
        drop(first);
        assert_eq!(registry.open(alice), 1);
        let third = registry.admit(alice, 5, 0, &out, HERE).expect("a freed place is taken again");
        drop((second, third));
        assert_eq!(registry.open(alice), 0);
        assert!(!registry.shard(&alice).contains_key(&alice), "no entry is left for an account without sessions");
    }

    #[tokio::test]
    async fn the_snapshot_lists_open_sessions_and_the_generation_moves_with_them() {
        let registry = SessionRegistry::new(0);
        let (user, out) = (Uuid::new_v4(), outbox());
        let g0 = registry.generation();
        let slot = registry.admit(user, 1, 0, &out, HERE).expect("admit");
        let listed = registry.snapshot(10);
        assert_eq!((listed.len(), listed[0].user_id, listed[0].transport.as_str()), (1, user, "native"));
        let g1 = registry.generation();
        assert_ne!(g0, g1);
        let _more: Vec<_> = (2..6).map(|i| registry.admit(user, i, 0, &out, HERE).expect("admit")).collect();
        assert_eq!(registry.snapshot(3).len(), 3, "bounded");
        drop(slot);
        assert_eq!(registry.snapshot(10).len(), 4);
        assert_ne!(registry.generation(), g1);
    }

    #[tokio::test]
    async fn zero_means_no_limit() {
        let registry = SessionRegistry::new(0);
        let (user, out) = (Uuid::new_v4(), outbox());
        let slots: Vec<_> = (0..1000).map(|i| registry.admit(user, i, 0, &out, HERE).expect("never refused")).collect();
        assert_eq!(registry.open(user), 1000);
        drop(slots);
        assert_eq!(registry.open(user), 0);
    }

    #[tokio::test]
    async fn revoking_ends_the_sessions_of_older_epochs_or_all_when_disabled() {
        let registry = SessionRegistry::new(0);
        let user = Uuid::new_v4();
        let (old, refreshed, current) = (outbox(), outbox(), outbox());
        let _a = registry.admit(user, 1, 0, &old, HERE).expect("admit");
        let b = registry.admit(user, 2, 0, &refreshed, HERE).expect("admit");
        let _c = registry.admit(user, 3, 1, &current, HERE).expect("admit");
        b.set_epoch(1);
        assert_eq!(registry.revoke(user, 1, false), 1, "only the session still on epoch 0");
        assert_eq!(old.failed().await, Failure::Revoked(Revocation::Revoked));
        assert!(refreshed.is_open() && current.is_open());
        assert_eq!(registry.revoke(user, 1, false), 0, "seeing the same revocation again ends nothing more");
        assert_eq!(registry.revoke(user, 1, true), 2, "a disabled account loses every session");
        assert!(!refreshed.is_open() && !current.is_open());
    }
}
