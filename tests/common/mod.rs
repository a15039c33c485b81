//! Test infrastructure shared by every test binary: which database backend a test runs on, a
//! fresh database per test (a temp SQLite file, or a UUID-named PostgreSQL database that is
//! dropped afterwards), a unique Redis key prefix, and `both_backends!`, which turns one async
//! test body into a SQLite test and a PostgreSQL test. On top of those: the real app started
//! in-process ([`TestNode`]: one on SQLite, or a PostgreSQL + Redis [`ClusterSpec`]), users
//! registered on it, and WebSocket connections to it ([`ws_connect`], [`NativeClient`]).
//!
//! Services come from the environment, as `.ci/run` sets them:
//! - `CONFAB_TEST_DATABASE_URL`: an admin URL of a PostgreSQL server (must be allowed to
//!   `CREATE DATABASE`), e.g. `postgres://postgres@127.0.0.1:5432/postgres`;
//! - `CONFAB_TEST_REDIS_URL`: e.g. `redis://127.0.0.1:6379`;
//! - `CONFAB_TEST_REQUIRE_SERVICES=1`: a test whose service is not configured fails instead of
//!   printing why it did not run.
//!
//! Nothing here sleeps: every wait is bounded, on PostgreSQL or Redis by [`SERVICE_TIMEOUT`], on
//! a node by [`APP_TIMEOUT`], on a WebSocket by [`WS_TIMEOUT`].

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use confab::{
    App, Config,
    config::{Argon2Config, DatabaseKind, HumanDuration, LogFormat, Secret},
    http::AppState,
};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
// The only dynamic SQL here is a database name this module made from a UUID.
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};
use tokio::{net::TcpStream, sync::oneshot, task::JoinHandle};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest as _, protocol::CloseFrame},
};

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

// ---------------------------------------------------------------------------------------------
// In-process nodes
// ---------------------------------------------------------------------------------------------

/// Upper bound on a node's start and stop, and on one HTTP request of its client.
pub const APP_TIMEOUT: Duration = Duration::from_secs(15);

/// A password every test account can use.
pub const PASSWORD: &str = "correct horse battery";

/// With `TEST_LOG` set, the app's debug log goes to the test's output.
fn init_test_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            confab::telemetry::init_logging(LogFormat::Text, "debug");
        }
    });
}

/// A fresh HS256 key: nodes given the same one accept each other's tokens.
pub fn new_jwt_secret() -> String {
    format!("test-secret-{}", uuid::Uuid::new_v4().simple())
}

/// The configuration every in-process node starts from: loopback port 0, `db` (and `redis`,
/// under its test prefix), cheap hashing, no auth rate limit, a fresh JWT key, a short grace.
pub fn node_config(db: &TestDb, redis: Option<&TestRedis>) -> Config {
    let mut cfg = Config { listen: "127.0.0.1:0".into(), ..Config::default() };
    cfg.database.url = Secret::new(db.url());
    cfg.database.max_connections = 8;
    cfg.auth.argon2 = Argon2Config { memory_kib: 64, iterations: 1, parallelism: 1 };
    cfg.auth.jwt_secret = Some(Secret::new(new_jwt_secret()));
    cfg.limits.auth_per_minute = 0;
    cfg.shutdown.grace = HumanDuration(Duration::from_secs(2));
    if let Some(redis) = redis {
        cfg.redis.url = Some(Secret::new(redis.url.as_str()));
        cfg.redis.prefix.clone_from(&redis.prefix);
    }
    cfg
}

/// The real confab `App`, running in-process. Dropping it stops the server; the database and
/// Redis prefix go with their last owner.
pub struct TestNode {
    /// Stops the server when sent to, or dropped.
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    pub addr: SocketAddr,
    /// Where `/metrics` is served when `metrics_listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    /// An HTTP client for this node: bounded by [`APP_TIMEOUT`], follows no redirects.
    pub client: reqwest::Client,
    /// The app's shared state (store, auth service, config), for arranging and inspecting.
    pub state: AppState,
    /// The configured HS256 key, `None` when the app generated one.
    pub jwt_secret: Option<String>,
    pub db: Arc<TestDb>,
    /// The Redis prefix this node uses, when it was given one.
    pub redis: Option<Arc<TestRedis>>,
}

impl TestNode {
    /// Starts a node on `db` and, if given, `redis` under the test's own prefix, with
    /// `configure` applied to [`node_config`]. Nodes given the same `db`, `redis` and JWT key
    /// form a cluster.
    pub async fn spawn(db: Arc<TestDb>, redis: Option<Arc<TestRedis>>, configure: impl FnOnce(&mut Config)) -> Self {
        init_test_logging();
        let mut cfg = node_config(&db, redis.as_deref());
        configure(&mut cfg);
        let jwt_secret = cfg.auth.jwt_secret.as_ref().map(|s| s.expose().to_owned());
        let app = tokio::time::timeout(APP_TIMEOUT, App::build(cfg))
            .await
            .expect("App::build timed out")
            .expect("App::build");
        let addr = app.local_addr();
        let metrics_addr = app.metrics_addr();
        let state = app.state().clone();
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async move {
            // A send or the sender's drop: either way, stop.
            let _ = rx.await;
        }));
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(APP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("reqwest client");
        Self { shutdown: Some(tx), server: Some(server), addr, metrics_addr, client, state, jwt_secret, db, redis }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Registers a unique user, with [`PASSWORD`], whose address starts with `name`.
    pub async fn new_user(&self, name: &str) -> TestUser {
        let email = format!("{name}-{}@example.com", uuid::Uuid::new_v4().simple());
        let resp = self
            .client
            .post(self.url("/api/auth/register"))
            .json(&json!({ "email": email, "password": PASSWORD }))
            .send()
            .await
            .expect("register request");
        let status = resp.status();
        let body: Value = resp.json().await.expect("register answers JSON");
        assert_eq!(status, 200, "register failed: {body}");
        TestUser {
            token: body["token"].as_str().expect("token").to_owned(),
            id: body["user"]["id"].as_str().expect("user id").to_owned(),
            email: body["user"]["email"].as_str().expect("user email").to_owned(),
            name: body["user"]["displayName"].as_str().expect("user displayName").to_owned(),
        }
    }

    /// Stops the server and waits until it has (bounded), so another node can take over its
    /// database. The database itself stays.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(APP_TIMEOUT, server)
                .await
                .expect("the app did not stop in time")
                .expect("the server task panicked")
                .expect("the server failed");
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            // Graceful stop starts with the sender's drop; aborting makes sure a stuck server
            // does not outlive the test either.
            drop(self.shutdown.take());
            server.abort();
        }
    }
}

/// A user registered by [`TestNode::new_user`].
#[derive(Clone, Debug)]
pub struct TestUser {
    pub token: String,
    pub id: String,
    pub email: String,
    /// What rooms show of the user.
    pub name: String,
}

/// One node on a fresh SQLite database, chat rate limits off unless `configure` sets them.
pub async fn sqlite_node(configure: impl FnOnce(&mut Config)) -> TestNode {
    let db = Arc::new(TestDb::create(Backend::Sqlite).await);
    TestNode::spawn(db, None, |cfg| {
        cfg.limits.messages_per_second = 0;
        configure(cfg);
    })
    .await
}

/// What nodes of one cluster share: a PostgreSQL database, a Redis prefix and a JWT key.
pub struct ClusterSpec {
    pub db: Arc<TestDb>,
    pub redis: Arc<TestRedis>,
    pub jwt_secret: String,
}

impl ClusterSpec {
    /// A fresh database and Redis prefix. `None` (after saying why) when PostgreSQL or Redis is
    /// not configured; with `CONFAB_TEST_REQUIRE_SERVICES=1` that is a failure instead.
    pub async fn new() -> Option<Self> {
        if !Backend::Postgres.available() {
            return None;
        }
        let redis = Arc::new(TestRedis::from_env()?);
        let db = Arc::new(TestDb::create(Backend::Postgres).await);
        Some(Self { db, redis, jwt_secret: new_jwt_secret() })
    }

    /// Node `node-<i>` of this cluster, chat rate limits off unless `configure` sets them.
    pub async fn node(&self, i: usize, configure: impl FnOnce(&mut Config)) -> TestNode {
        TestNode::spawn(Arc::clone(&self.db), Some(Arc::clone(&self.redis)), |cfg| {
            cfg.node_id = Some(format!("node-{i}"));
            // Every node must accept every node's tokens.
            cfg.auth.jwt_secret = Some(Secret::new(self.jwt_secret.as_str()));
            cfg.limits.messages_per_second = 0;
            configure(cfg);
        })
        .await
    }
}

/// Nodes sharing one PostgreSQL database, one Redis prefix and one JWT key: a cluster.
pub struct Cluster {
    pub spec: ClusterSpec,
    pub nodes: Vec<TestNode>,
}

impl Cluster {
    pub fn node(&self, i: usize) -> &TestNode {
        &self.nodes[i]
    }
}

/// `n` nodes named `node-0`, `node-1`, … (see [`ClusterSpec`]), `configure` applied to each.
pub async fn spawn_cluster(n: usize, configure: impl Fn(&mut Config)) -> Option<Cluster> {
    let spec = ClusterSpec::new().await?;
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        nodes.push(spec.node(i, &configure).await);
    }
    Some(Cluster { spec, nodes })
}

/// Two nodes of a fresh cluster (see [`ClusterSpec`]): `None` (after saying why) when the
/// services are not configured and not required.
pub async fn pg_redis_pair(configure: impl Fn(&mut Config)) -> Option<(TestNode, TestNode)> {
    let spec = ClusterSpec::new().await?;
    let a = spec.node(0, &configure).await;
    let b = spec.node(1, &configure).await;
    Some((a, b))
}

// ---------------------------------------------------------------------------------------------
// WebSockets
// ---------------------------------------------------------------------------------------------

/// Upper bound on opening a WebSocket, and on sending or waiting for one frame.
pub const WS_TIMEOUT: Duration = Duration::from_secs(10);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket to `url` (`ws://…`), with `Authorization: Bearer <bearer>` if given.
pub async fn ws_connect(url: &str, bearer: Option<&str>) -> Ws {
    let mut req = url.into_client_request().expect("a WebSocket request");
    if let Some(token) = bearer {
        req.headers_mut().insert("authorization", format!("Bearer {token}").parse().expect("header value"));
    }
    let (ws, _) = tokio::time::timeout(WS_TIMEOUT, tokio_tungstenite::connect_async(req))
        .await
        .expect("WebSocket connect timed out")
        .unwrap_or_else(|e| panic!("WebSocket connect to {url} failed: {e}"));
    ws
}

/// The next frame of any kind, within [`WS_TIMEOUT`].
pub async fn recv_frame(ws: &mut Ws) -> Message {
    let next = tokio::time::timeout(WS_TIMEOUT, ws.next()).await;
    match next.unwrap_or_else(|_| panic!("no frame within {WS_TIMEOUT:?}")) {
        Some(Ok(frame)) => frame,
        Some(Err(e)) => panic!("WebSocket error while waiting for a frame: {e}"),
        None => panic!("the connection ended while waiting for a frame"),
    }
}

/// Waits for the server to close: the close frame, if one was sent. Panics on a text frame.
pub async fn expect_closed(ws: &mut Ws, within: Duration) -> Option<CloseFrame> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next()).await;
        match next.unwrap_or_else(|_| panic!("the connection was not closed within {within:?}")) {
            Some(Ok(Message::Close(frame))) => return frame,
            None | Some(Err(_)) => return None,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(other)) => panic!("expected the connection to close, got {other:?}"),
        }
    }
}

/// A minimal native `/ws` client (the api tests have a fuller one, `TestSocket`).
pub struct NativeClient {
    pub ws: Ws,
}

impl NativeClient {
    /// Connects as `user`; the server's `hello` must be the first frame and name them.
    pub async fn connect(addr: SocketAddr, user: &TestUser) -> Self {
        let mut native = Self { ws: ws_connect(&format!("ws://{addr}/ws"), Some(&user.token)).await };
        let hello = native.recv().await;
        assert_eq!(hello["type"], "hello", "{hello}");
        assert_eq!(hello["user"]["email"], user.email.as_str());
        native
    }

    pub async fn send(&mut self, frame: &Value) {
        tokio::time::timeout(WS_TIMEOUT, self.ws.send(Message::text(frame.to_string())))
            .await
            .expect("sending a frame timed out")
            .expect("sending a frame failed");
    }

    /// The next frame; `presence` frames (on the server's own schedule) are passed over.
    pub async fn recv(&mut self) -> Value {
        loop {
            match recv_frame(&mut self.ws).await {
                Message::Text(text) if text.as_str().starts_with(r#"{"type":"presence""#) => {}
                Message::Text(text) => return serde_json::from_str(text.as_str()).expect("native frames are JSON"),
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next frame, which must be of type `kind`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let frame = self.recv().await;
        assert_eq!(frame["type"], kind, "unexpected frame {frame}");
        frame
    }

    /// The next frame, of type `kind`, that `skip` does not pass over.
    pub async fn expect_except(&mut self, kind: &str, skip: impl Fn(&Value) -> bool) -> Value {
        loop {
            let frame = self.expect(kind).await;
            if !skip(&frame) {
                return frame;
            }
        }
    }
}
