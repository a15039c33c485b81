//! Rate limits: per client IP for the auth endpoints, per user for chat messages.
//!
//! Both are GCRA token buckets from `governor`, keyed, lock-free per key. Keys of clients that
//! went quiet are swept periodically so a stream of distinct addresses cannot grow memory
//! without bound.

use std::{hash::Hash, num::NonZeroU32, sync::Arc, time::Duration};

use governor::{
    Quota, RateLimiter,
    clock::{Clock as _, DefaultClock},
    state::keyed::DefaultKeyedStateStore,
};

/// A keyed token bucket. `None` inside means the limit is switched off (configured as 0).
#[derive(Clone)]
pub struct KeyedLimiter<K: Hash + Eq + Clone + Send + Sync + 'static> {
    inner: Option<Arc<RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>>>,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> KeyedLimiter<K> {
    /// `per_minute` requests a minute, all of which may come at once.
    pub fn per_minute(per_minute: u32) -> Self {
        Self { inner: NonZeroU32::new(per_minute).map(|n| Arc::new(RateLimiter::keyed(Quota::per_minute(n)))) }
    }

    /// `per_second` sustained, with bursts of up to `burst`.
    pub fn per_second(per_second: u32, burst: u32) -> Self {
        Self {
            inner: NonZeroU32::new(per_second).map(|n| {
                let burst = NonZeroU32::new(burst.max(1)).unwrap_or(n);
                Arc::new(RateLimiter::keyed(Quota::per_second(n).allow_burst(burst)))
            }),
        }
    }

    /// Takes one token for `key`; `Err(wait)` says how long until one is available.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        let Some(limiter) = &self.inner else { return Ok(()) };
        limiter.check_key(key).map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets keys whose buckets are full again. Call periodically.
    pub fn sweep(&self) {
        if let Some(limiter) = &self.inner {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_limited_alone_and_zero_disables() {
        let limiter = KeyedLimiter::per_minute(2);
        assert!(limiter.check(&1).is_ok());
        assert!(limiter.check(&1).is_ok());
        let wait = limiter.check(&1).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(30), "{wait:?}");
        assert!(limiter.check(&2).is_ok(), "other keys have their own bucket");
        let off = KeyedLimiter::per_minute(0);
        assert!((0..1000).all(|_| off.check(&1).is_ok()));
    }
}
