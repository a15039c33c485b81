//! Test infrastructure shared by every test binary: which database backend a test runs on, a
//! fresh database per test (a temp SQLite file, or a UUID-named PostgreSQL database that is
//! dropped afterwards), a unique Redis key prefix, and `both_backends!`, which turns one async
//! test body into a SQLite test and a PostgreSQL test.
//!
//! Services come from the environment, as `.ci/run` sets them:
//! - `CONFAB_TEST_DATABASE_URL`: an admin URL of a PostgreSQL server (must be allowed to
//!   `CREATE DATABASE`), e.g. `postgres://postgres@127.0.0.1:5432/postgres`;
//! - `CONFAB_TEST_REDIS_URL`: e.g. `redis://127.0.0.1:6379`;
//! - `CONFAB_TEST_REQUIRE_SERVICES=1`: a test whose service is not configured fails instead of
//!   printing why it did not run.
//!
//! Nothing here sleeps: every wait on a service is bounded by [`SERVICE_TIMEOUT`].

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::{future::Future, time::Duration};

use confab::config::DatabaseKind;
// The only dynamic SQL here is a database name this module made from a UUID.
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};

/// Upper bound on any single wait for PostgreSQL or Redis set-up and clean-up.
pub const SERVICE_TIMEOUT: Duration = Duration::from_secs(30);

/// Prefix of every database the tests create; a leftover one is easy to find and drop.
pub const TEST_DB_PREFIX: &str = "confab_test_";

/// The storage a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn kind(self) -> DatabaseKind {
        match self {
            Self::Sqlite => DatabaseKind::Sqlite,
            Self::Postgres => DatabaseKind::Postgres,
        }
    }

    /// Whether a test on this backend can run here. When it cannot, says why on stderr, or
    /// panics if `CONFAB_TEST_REQUIRE_SERVICES=1`.
    pub fn available(self) -> bool {
        match self {
            Self::Sqlite => true,
            Self::Postgres => service_url("CONFAB_TEST_DATABASE_URL").is_some(),
        }
    }
}

/// The value of a service variable; `None` (after saying so) when unset and not required.
pub fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var("CONFAB_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1") => {
            panic!("{var} is not set but CONFAB_TEST_REQUIRE_SERVICES=1")
        }
        _ => {
            eprintln!("skipping: {var} not set");
            None
        }
    }
}

/// Runs `fut` on a fresh single-threaded runtime in a new OS thread and waits for it. `Drop`
/// impls use this to do async clean-up while the test's own runtime may be blocked or gone.
fn block_on_thread<F, T>(fut: F) -> T
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds")
            .block_on(fut)
    })
    .join()
    .expect("clean-up thread panicked")
}

/// A database for one test, created empty and removed when the last owner drops it.
#[derive(Debug)]
pub struct TestDb {
    backend: Backend,
    url: String,
    /// Keeps the SQLite file's directory alive; removed on drop.
    _dir: Option<tempfile::TempDir>,
    /// `(admin url, database name)` of a PostgreSQL database to drop.
    pg: Option<(String, String)>,
}

impl TestDb {
    /// A fresh, empty (unmigrated) database. Panics if the backend is unavailable: check
    /// [`Backend::available`] first (`both_backends!` does).
    pub async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::Builder::new().prefix("confab-test-").tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("confab.db").display());
                Self { backend, url, _dir: Some(dir), pg: None }
            }
            Backend::Postgres => {
                let admin = std::env::var("CONFAB_TEST_DATABASE_URL").expect("CONFAB_TEST_DATABASE_URL is set");
                let name = format!("{TEST_DB_PREFIX}{}", uuid::Uuid::new_v4().simple());
                let mut conn = tokio::time::timeout(SERVICE_TIMEOUT, PgConnection::connect(&admin))
                    .await
                    .expect("connecting to CONFAB_TEST_DATABASE_URL timed out")
                    .expect("cannot connect to CONFAB_TEST_DATABASE_URL");
                tokio::time::timeout(
                    SERVICE_TIMEOUT,
                    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\""))).execute(&mut conn),
                )
                .await
                .expect("CREATE DATABASE timed out")
                .expect("CREATE DATABASE failed: does the CONFAB_TEST_DATABASE_URL role have CREATEDB?");
                let _ = conn.close().await;
                let mut url = url::Url::parse(&admin).expect("CONFAB_TEST_DATABASE_URL is a URL");
                url.set_path(&format!("/{name}"));
                // A statement stuck on a lock fails the test instead of hanging it.
                url.query_pairs_mut().append_pair("options", "-c statement_timeout=30000");
                Self { backend, url: url.to_string(), _dir: None, pg: Some((admin, name)) }
            }
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL to put in `database.url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The PostgreSQL database's name (None for SQLite).
    pub fn pg_name(&self) -> Option<&str> {
        self.pg.as_ref().map(|(_, name)| name.as_str())
    }

    /// Drops the PostgreSQL database now, terminating whoever is connected to it (used to
    /// simulate a database outage). Dropping `self` later is then a no-op.
    pub async fn drop_pg_database(&self) {
        if let Some((admin, name)) = &self.pg {
            drop_pg_database(admin.clone(), name.clone()).await;
        }
    }
}

async fn drop_pg_database(admin: String, name: String) {
    let work = async {
        let mut conn = PgConnection::connect(&admin).await?;
        // FORCE: the app under test may still hold pooled connections.
        sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")))
            .execute(&mut conn)
            .await?;
        conn.close().await
    };
    match tokio::time::timeout(SERVICE_TIMEOUT, work).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("warning: could not drop test database {name}: {e}"),
        Err(_) => eprintln!("warning: dropping test database {name} timed out"),
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg.take() {
            block_on_thread(drop_pg_database(admin, name));
        }
    }
}

/// A Redis server and a key/channel prefix no other test uses; its keys are deleted on drop.
#[derive(Debug)]
pub struct TestRedis {
    pub url: String,
    pub prefix: String,
}

impl TestRedis {
    /// `None` (after saying why) when `CONFAB_TEST_REDIS_URL` is unset and not required.
    pub fn from_env() -> Option<Self> {
        let url = service_url("CONFAB_TEST_REDIS_URL")?;
        Some(Self { url, prefix: format!("{TEST_DB_PREFIX}{}", uuid::Uuid::new_v4().simple()) })
    }

    /// Keys currently under this test's prefix.
    pub async fn keys(&self) -> Vec<String> {
        redis_keys(&self.url, &self.prefix).await.expect("cannot list Redis keys")
    }
}

async fn redis_connection(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    tokio::time::timeout(SERVICE_TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connecting to Redis timed out")))?
}

async fn redis_keys(url: &str, prefix: &str) -> redis::RedisResult<Vec<String>> {
    let mut conn = redis_connection(url).await?;
    redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        block_on_thread(async move {
            let work = async {
                let keys = redis_keys(&url, &prefix).await?;
                if !keys.is_empty() {
                    let mut conn = redis_connection(&url).await?;
                    redis::cmd("DEL").arg(&keys).query_async::<()>(&mut conn).await?;
                }
                Ok::<_, redis::RedisError>(())
            };
            match tokio::time::timeout(SERVICE_TIMEOUT, work).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("warning: could not delete Redis keys {prefix}*: {e}"),
                Err(_) => eprintln!("warning: deleting Redis keys {prefix}* timed out"),
            }
        });
    }
}

/// For each `name`, an `async fn name(backend: Backend)` written once becomes two tests,
/// `name::sqlite` and `name::postgres`. The PostgreSQL one prints why it did not run when
/// `CONFAB_TEST_DATABASE_URL` is unset (or fails, with `CONFAB_TEST_REQUIRE_SERVICES=1`).
/// Both run on a two-thread runtime, so concurrent work in a test really runs in parallel.
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                use crate::common::Backend;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(Backend::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if Backend::Postgres.available() {
                        super::$name(Backend::Postgres).await;
                    }
                }
            }
        )+
    };
}
pub(crate) use both_backends;

/// Threads that keep every core busy until dropped, so a test can check what the server
/// promises on a loaded machine, where a task may be preempted between any two steps. Bounded:
/// the threads stop when the guard drops, or after [`CpuLoad::MAX`] whatever happens.
pub struct CpuLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuLoad {
    /// The longest a load runs, even if its guard is leaked.
    pub const MAX: Duration = Duration::from_secs(120);

    /// One spinning thread per core.
    pub fn start() -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        let threads = (0..cores)
            .map(|_| {
                let stop = std::sync::Arc::clone(&stop);
                std::thread::spawn(move || {
                    let until = std::time::Instant::now() + Self::MAX;
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < until {
                        for i in 0..10_000u64 {
                            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
                        }
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
