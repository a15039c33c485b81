//! `spawn_app`: the real confab `App`, built in-process on port 0 with a fresh database, and
//! a `TestApp` that speaks its REST API the way a client does.
//!
//! Tests get cheap argon2 parameters, no auth rate limit and a known JWT key unless they say
//! otherwise in `spawn_app_with`. Every request has a timeout, so a hung server fails the test
//! instead of hanging it.

use std::{
    net::SocketAddr,
    sync::{Arc, Once},
    time::Duration,
};

use confab::{
    App, Config,
    config::{Argon2Config, LogFormat, Secret},
    http::AppState,
};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::{sync::oneshot, task::JoinHandle};

pub use crate::common::{Backend, TestDb, TestRedis};

/// Upper bound on one HTTP request, and on the app's start and stop.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// A password every test account can use.
pub const PASSWORD: &str = "correct horse battery";

/// A running app. Dropping it asks the server to stop; the database goes when its last
/// `Arc<TestDb>` does.
pub struct TestApp {
    /// Stops the server when sent to, or dropped.
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    /// The app's shared state (store, auth service, config), for arranging and inspecting.
    pub state: AppState,
    /// The configured HS256 key, `None` when the app generated one.
    pub jwt_secret: Option<String>,
    pub db: Arc<TestDb>,
    /// The Redis prefix this app uses, when it was given one (see [`spawn_node`]).
    pub redis: Option<Arc<TestRedis>>,
}

/// What register and login return.
#[derive(Debug, Clone)]
pub struct Session {
    pub token: String,
    pub refresh_token: String,
    pub user_id: String,
    pub email: String,
    /// The whole response body.
    pub body: Value,
}

impl Session {
    fn from_body(body: Value) -> Self {
        let text = |v: &Value| v.as_str().unwrap_or_else(|| panic!("expected a string in {body}")).to_owned();
        Self {
            token: text(&body["token"]),
            refresh_token: text(&body["refreshToken"]),
            user_id: text(&body["user"]["id"]),
            email: text(&body["user"]["email"]),
            body,
        }
    }
}

/// The configuration every test app starts from: loopback port 0, cheap hashing, no auth rate
/// limit, a known JWT key (so tests can forge tokens), the given database.
pub fn test_config(db: &TestDb) -> Config {
    let mut cfg = Config { listen: "127.0.0.1:0".into(), node_id: Some("test-node".into()), ..Config::default() };
    cfg.database.url = Secret::new(db.url());
    cfg.database.max_connections = 8;
    cfg.auth.argon2 = Argon2Config { memory_kib: 64, iterations: 1, parallelism: 1 };
    cfg.auth.jwt_secret = Some(Secret::new(format!("test-secret-{}", uuid::Uuid::new_v4().simple())));
    cfg.limits.auth_per_minute = 0;
    cfg.shutdown.grace = confab::config::HumanDuration(Duration::from_secs(2));
    cfg
}

fn init_test_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            confab::telemetry::init_logging(LogFormat::Text, "debug");
        }
    });
}

/// An app on a fresh database of `backend`, with the test defaults.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// An app on a fresh database of `backend`, with `configure` applied to the test defaults.
pub async fn spawn_app_with(backend: Backend, configure: impl FnOnce(&mut Config)) -> TestApp {
    let db = Arc::new(TestDb::create(backend).await);
    spawn_app_on(db, configure).await
}

/// An app on an existing database (a restart, or a second node sharing it).
pub async fn spawn_app_on(db: Arc<TestDb>, configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn_node(db, None, configure).await
}

/// An app on an existing database and, if given, the test Redis under the test's own prefix:
/// nodes given the same `db` and `redis` form a cluster.
pub async fn spawn_node(
    db: Arc<TestDb>,
    redis: Option<Arc<TestRedis>>,
    configure: impl FnOnce(&mut Config),
) -> TestApp {
    init_test_logging();
    let mut cfg = test_config(&db);
    if let Some(redis) = &redis {
        cfg.redis.url = Some(Secret::new(redis.url.as_str()));
        cfg.redis.prefix.clone_from(&redis.prefix);
    }
    configure(&mut cfg);
    let jwt_secret = cfg.auth.jwt_secret.as_ref().map(|s| s.expose().to_owned());
    let app = tokio::time::timeout(TIMEOUT, App::build(cfg)).await.expect("App::build timed out").expect("App::build");
    let addr = app.local_addr();
    let state = app.state().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        // A send or the sender's drop: either way, stop.
        let _ = rx.await;
    }));
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("reqwest client");
    TestApp { shutdown: Some(tx), server: Some(server), addr, client, state, jwt_secret, db, redis }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub async fn get_authed(&self, path: &str, token: &str) -> Response {
        self.client.get(self.url(path)).bearer_auth(token).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client.post(self.url(path)).json(body).send().await.unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// POSTs `body` verbatim with the given content type.
    pub async fn post_raw(&self, path: &str, content_type: &str, body: impl Into<reqwest::Body>) -> Response {
        self.client
            .post(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// Registers `email` with `password`; panics unless it succeeds.
    pub async fn register_with(&self, email: &str, password: &str) -> Session {
        let resp = self.post_json("/api/auth/register", &json!({ "email": email, "password": password })).await;
        Session::from_body(expect_json(resp, StatusCode::OK).await)
    }

    /// Registers `email` with [`PASSWORD`].
    pub async fn register(&self, email: &str) -> Session {
        self.register_with(email, PASSWORD).await
    }

    pub async fn login_response(&self, email: &str, password: &str) -> Response {
        self.post_json("/api/auth/login", &json!({ "email": email, "password": password })).await
    }

    /// Signs in; panics unless it succeeds.
    pub async fn login(&self, email: &str, password: &str) -> Session {
        Session::from_body(expect_json(self.login_response(email, password).await, StatusCode::OK).await)
    }

    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.post_json("/api/auth/refresh", &json!({ "refreshToken": refresh_token })).await
    }

    pub async fn logout(&self, refresh_token: &str) -> Response {
        self.post_json("/api/auth/logout", &json!({ "refreshToken": refresh_token })).await
    }

    pub async fn me(&self, token: &str) -> Response {
        self.get_authed("/api/me", token).await
    }

    /// Stops the server and waits until it has (bounded), so another app can take over its
    /// database. The database itself stays.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(TIMEOUT, server)
                .await
                .expect("the app did not stop in time")
                .expect("the server task panicked")
                .expect("the server failed");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            // Graceful stop starts with the sender's drop; aborting makes sure a stuck server
            // does not outlive the test either.
            drop(self.shutdown.take());
            server.abort();
        }
    }
}

/// Asserts the status (showing the body if it differs) and returns the JSON body.
pub async fn expect_json(resp: Response, status: StatusCode) -> Value {
    let actual = resp.status();
    let url = resp.url().clone();
    let text = resp.text().await.expect("response body");
    assert_eq!(actual, status, "{url}: unexpected status, body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: body is not JSON ({e}): {text}"))
}

/// Asserts an error response: the status, a JSON content type, and exactly the `{error, code}`
/// shape with a non-empty message and the given code. Returns the body.
pub async fn expect_error(resp: Response, status: StatusCode, code: &str) -> Value {
    let content_type =
        resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let body = expect_json(resp, status).await;
    assert!(content_type.starts_with("application/json"), "content-type {content_type:?}, body {body}");
    let obj = body.as_object().unwrap_or_else(|| panic!("error body is not an object: {body}"));
    assert_eq!(obj.len(), 2, "error body has exactly error and code: {body}");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "no human-readable error: {body}");
    assert_eq!(body["code"], code, "wrong code: {body}");
    body
}
