//! Password hashing with argon2id, on a small pool of its own threads, bounded.
//!
//! Each hash holds `argon2.memory_kib` (19 MiB by default) while it runs, and login needs no
//! account: unbounded, 200 parallel logins took a node to 4.4 GB and stalled chat. So hashes and
//! verifications run on exactly `auth.hash_concurrency` threads, never on the async workers. At
//! most `auth.hash_queue` more wait, each for at most `auth.hash_queue_timeout`; beyond that the
//! caller is told [`HashError::Busy`] at once (the API answers 503 with `Retry-After`). A fixed
//! set of threads also bounds what the allocator keeps afterwards: each thread reuses its own
//! arena, so a storm leaves at most `hash_concurrency` hashes' worth of memory behind, not one
//! per blocking-pool thread that happened to run a hash.
//!
//! Logins for unknown emails verify against a dummy hash made with the same parameters, so
//! "no such user" and "wrong password" cost the same time.

use std::{
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, PasswordVerifier as _, Version};
use tokio::sync::oneshot;

use crate::sync::MutexExt as _;
use crate::{config::Argon2Config, telemetry};

/// Why a password could not be hashed or checked now.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every hashing thread is busy and the queue is full (or the wait ran out): try again
    /// after `retry_after`.
    #[error("too many password checks at once; try again shortly")]
    Busy { retry_after: Duration },
    /// A reason that is not the caller's input (parameters, allocation, a panicked worker).
    #[error("password hashing failed: {0}")]
    Failed(String),
}

/// How much hashing may happen at once, and how long the rest may wait.
#[derive(Clone, Copy, Debug)]
pub struct HashLimits {
    /// Hashing threads (0: one per core).
    pub concurrency: usize,
    /// Requests that may wait for a thread; more are refused at once.
    pub queue: usize,
    /// Longest a request waits for a thread before it is refused.
    pub queue_timeout: Duration,
}

impl HashLimits {
    /// The bounds `auth.hash_*` configure.
    pub fn from_config(auth: &crate::config::AuthConfig) -> Self {
        Self {
            concurrency: auth.hash_concurrency as usize,
            queue: auth.hash_queue as usize,
            queue_timeout: auth.hash_queue_timeout.0,
        }
    }
}

impl Default for HashLimits {
    fn default() -> Self {
        Self { concurrency: 0, queue: 32, queue_timeout: Duration::from_secs(2) }
    }
}

/// Hashes and verifies passwords with configured argon2id parameters. Cheap to clone.
#[derive(Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

struct Inner {
    params: Params,
    /// A hash of a random password, verified against when the email is unknown.
    dummy: String,
    /// Jobs for the hashing threads; the threads end when this is dropped.
    jobs: mpsc::SyncSender<Job>,
    queue_timeout: Duration,
}

/// Work for a hashing thread, which skips it if it waited past its deadline (the caller has
/// been told `Busy` by then, through the dropped answer channel).
struct Job {
    deadline: Instant,
    work: Box<dyn FnOnce() + Send>,
}

impl PasswordHasher {
    pub fn new(config: &Argon2Config) -> Result<Self, HashError> {
        Self::with_limits(config, HashLimits::default())
    }

    pub fn with_limits(config: &Argon2Config, limits: HashLimits) -> Result<Self, HashError> {
        let params = Params::new(config.memory_kib, config.iterations, config.parallelism, None)
            .map_err(|e| HashError::Failed(format!("argon2 parameters: {e}")))?;
        let dummy = hash_blocking(&params, uuid::Uuid::new_v4().to_string().as_bytes())?;
        let threads = match limits.concurrency {
            0 => std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
            n => n,
        };
        let (jobs, queue) = mpsc::sync_channel::<Job>(limits.queue);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("confab-hash-{i}"))
                .spawn(move || run_worker(&queue))
                .map_err(|e| HashError::Failed(format!("cannot start a hashing thread: {e}")))?;
        }
        Ok(Self { inner: Arc::new(Inner { params, dummy, jobs, queue_timeout: limits.queue_timeout }) })
    }

    /// Runs `work` on a hashing thread, or says the pool is too busy.
    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, HashError> {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            deadline: Instant::now() + self.inner.queue_timeout,
            work: Box::new(move || {
                let _ = tx.send(work());
            }),
        };
        let busy = || {
            let retry_after = self.inner.queue_timeout.max(Duration::from_secs(1));
            HashError::Busy { retry_after }
        };
        match self.inner.jobs.try_send(job) {
            Ok(()) => metrics::gauge!(telemetry::AUTH_HASH_QUEUED).increment(1.0),
            Err(mpsc::TrySendError::Full(_)) => {
                metrics::counter!(telemetry::AUTH_HASH_REJECTED, "reason" => "queue_full").increment(1);
                return Err(busy());
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(HashError::Failed("no hashing threads".into())),
        }
        rx.await.map_err(|_| {
            metrics::counter!(telemetry::AUTH_HASH_REJECTED, "reason" => "timeout").increment(1);
            busy()
        })
    }

    /// The PHC string (`$argon2id$v=19$m=…`) for `password`, with a fresh random salt.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let inner = Arc::clone(&self.inner);
        self.run(move || hash_blocking(&inner.params, password.as_bytes())).await?
    }

    /// Whether `password` matches `stored`. With `stored = None` (unknown account) it does the
    /// same work and answers false.
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<bool, HashError> {
        let inner = Arc::clone(&self.inner);
        self.run(move || {
            let known = stored.is_some();
            let hash = stored.unwrap_or_else(|| inner.dummy.clone());
            // The stored hash carries its own parameters, so changing the configured cost does
            // not lock out existing accounts.
            let ok = Argon2::default().verify_password(password.as_bytes(), hash.as_str()).is_ok();
            ok && known
        })
        .await
    }
}

/// A hashing thread: takes jobs until the pool is dropped.
fn run_worker(queue: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        // The lock is held only while taking a job, never while hashing.
        let Ok(job) = queue.lock_unpoisoned().recv() else { return };
        metrics::gauge!(telemetry::AUTH_HASH_QUEUED).decrement(1.0);
        if Instant::now() > job.deadline {
            continue; // its caller has given up; dropping the job tells it so
        }
        let running = metrics::gauge!(telemetry::AUTH_HASH_RUNNING);
        running.increment(1.0);
        (job.work)();
        running.decrement(1.0);
    }
}

fn hash_blocking(params: &Params, password: &[u8]) -> Result<String, HashError> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password(password)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::future::Future as _;

    use super::*;

    fn cheap() -> PasswordHasher {
        PasswordHasher::new(&Argon2Config { memory_kib: 64, iterations: 1, parallelism: 1 }).unwrap()
    }

    #[tokio::test]
    async fn a_hash_verifies_only_its_own_password() {
        let h = cheap();
        let stored = h.hash("correct horse".into()).await.unwrap();
        assert!(stored.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{stored}");
        assert!(h.verify("correct horse".into(), Some(stored.clone())).await.unwrap());
        assert!(!h.verify("wrong horse".into(), Some(stored)).await.unwrap());
    }

    #[tokio::test]
    async fn unknown_accounts_never_verify() {
        let h = cheap();
        assert!(!h.verify("anything".into(), None).await.unwrap());
        assert!(!h.verify("anything".into(), Some("not a phc string".into())).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_threads_and_the_queue_callers_are_told_busy() {
        let limits = HashLimits { concurrency: 1, queue: 1, queue_timeout: Duration::from_millis(300) };
        let h = PasswordHasher::with_limits(&Argon2Config { memory_kib: 64, iterations: 1, parallelism: 1 }, limits)
            .unwrap();
        // Occupy the one thread until released, and know when it has started.
        let (started_tx, started) = oneshot::channel();
        let (release, released) = mpsc::channel::<()>();
        let blocker = tokio::spawn({
            let h = h.clone();
            async move {
                h.run(move || {
                    let _ = started_tx.send(());
                    let _ = released.recv();
                })
                .await
            }
        });
        started.await.unwrap();
        // One waits in the queue (its first poll queues it); the next is refused at once.
        let waiting = h.hash("waits".into());
        tokio::pin!(waiting);
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(waiting.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "queued behind the busy thread");
        let Err(HashError::Busy { retry_after: refused }) = h.hash("refused".into()).await else {
            panic!("the queue is full, yet a hash was accepted")
        };
        assert!(refused >= Duration::from_secs(1), "{refused:?}");
        // Released after the waiting one's deadline: it was skipped, and its caller told busy.
        tokio::time::sleep(Duration::from_millis(400)).await;
        release.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        assert!(matches!(waiting.await, Err(HashError::Busy { .. })));
        // And the pool works again.
        assert!(h.hash("later".into()).await.is_ok());
    }
}
