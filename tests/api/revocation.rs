//! Live sessions obey revocation: a socket whose account is disabled, whose password is
//! changed or which is signed out everywhere (`confab user kick`) is told `session_revoked` and
//! closed with 1008 within `auth.revocation_check_interval` — whichever process made the change
//! (this node, another node, the CLI against the same database). A socket whose token expires is
//! told `token_expired` and closed, unless the client sent a fresh token with `auth` first.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    common::{Backend, both_backends},
    helpers::{Session, TestApp, TestSocket, expect_error, spawn_chat_node, spawn_cluster},
    ws::{connect_user, system},
};

both_backends!(
    disabling_an_account_closes_its_live_sessions_and_tells_the_room,
    a_password_change_closes_live_sessions_and_refuses_old_tokens,
    kicking_from_the_cli_reaches_the_running_server,
    an_expired_token_closes_the_session_unless_refreshed_in_band,
);

/// How often the nodes in these tests look for revocations.
const CHECK: Duration = Duration::from_millis(200);

async fn node(backend: Backend) -> TestApp {
    spawn_chat_node(backend, |c| c.auth.revocation_check_interval = confab::config::HumanDuration(CHECK)).await
}

/// Reads until the server closes `socket`: the last frame before the close must be an `error`
/// with `code`, and the close 1008. Returns how long it took from `since`.
async fn expect_ended(socket: &mut TestSocket, code: &str, since: Instant) -> Duration {
    let frames = socket.expect_close(1008).await;
    let took = since.elapsed();
    let last = frames.last().unwrap_or_else(|| panic!("{}: no error frame before the close", socket.who()));
    assert_eq!((&last["type"], &last["code"]), (&json!("error"), &json!(code)), "{last}");
    assert!(last["message"].as_str().is_some_and(|m| !m.is_empty()), "{last}");
    took
}

async fn disabling_an_account_closes_its_live_sessions_and_tells_the_room(backend: Backend) {
    let app = node(backend).await;
    let (a, mut alice) = connect_user(&app, "alice@example.com").await;
    let mut alice_again = TestSocket::connect(&app, &a.token).await;
    let (b, mut bob) = connect_user(&app, "bob@example.com").await;
    alice.join("general").await;
    bob.join("general").await;
    assert_eq!(alice.next_frame().await, system("general", "join", &b));

    let started = Instant::now();
    assert!(app.state.store.set_user_disabled("alice@example.com", true).await.expect("disable"));
    let took = expect_ended(&mut alice, "session_revoked", started).await;
    expect_ended(&mut alice_again, "session_revoked", started).await;
    eprintln!("{backend:?}: a disabled account's sessions closed after {took:?} (checked every {CHECK:?})");
    // The room hears alice leave; bob's session is untouched.
    assert_eq!(bob.next_frame().await, system("general", "leave", &a));
    bob.ping().await;
    // Her token is refused everywhere now.
    expect_error(app.me(&a.token).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

async fn a_password_change_closes_live_sessions_and_refuses_old_tokens(backend: Backend) {
    let app = node(backend).await;
    let (a, mut alice) = connect_user(&app, "alice@example.com").await;
    alice.join("general").await;

    let started = Instant::now();
    let hasher = confab::auth::PasswordHasher::new(&app.state.config.auth.argon2).expect("hasher");
    let hash = hasher.hash("a new password, long enough".to_owned()).await.expect("hash");
    assert!(app.state.store.set_password_hash("alice@example.com", &hash).await.expect("set password"));
    expect_ended(&mut alice, "session_revoked", started).await;
    // The old access token is dead on REST and on /ws, not only the socket that was open.
    expect_error(app.me(&a.token).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // Signing in with the new password gives a token of the new epoch, which works.
    let fresh = app.login("alice@example.com", "a new password, long enough").await;
    let mut again = TestSocket::connect(&app, &fresh.token).await;
    again.join("general").await;
    again.ping().await;
}

async fn kicking_from_the_cli_reaches_the_running_server(backend: Backend) {
    let app = node(backend).await;
    let (_, mut alice) = connect_user(&app, "alice@example.com").await;
    let (_, mut bob) = connect_user(&app, "bob@example.com").await;
    alice.join("general").await;

    // Another process, as an operator would run it: only the database is shared.
    let dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["user", "kick", "--email", "alice@example.com"])
        .env("CONFAB_DATABASE__URL", app.db.url())
        .env_remove("DATABASE_URL")
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out).await.expect("the CLI finished").expect("run the CLI");
    assert!(out.status.success(), "confab user kick failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("alice@example.com"));
    expect_ended(&mut alice, "session_revoked", started).await;
    bob.ping().await;
}

async fn an_expired_token_closes_the_session_unless_refreshed_in_band(backend: Backend) {
    // Heartbeats every second: expiry is checked on them.
    let app = spawn_chat_node(backend, |c| {
        c.ws.ping_interval = confab::config::HumanDuration(Duration::from_secs(1));
        c.ws.idle_timeout = confab::config::HumanDuration(Duration::from_secs(30));
    })
    .await;
    let alice = app.register("alice@example.com").await;

    // Left alone, the session ends when its token does (not before).
    let (short, expires) = forge(&app, &alice, 2);
    let mut lapsing = TestSocket::connect(&app, &short).await;
    expect_ended(&mut lapsing, "token_expired", Instant::now()).await;
    assert!(chrono::Utc::now().timestamp() >= expires, "closed before the token expired");

    // Refreshed in-band before it expires, it lives on past the old expiry.
    let (short, expires) = forge(&app, &alice, 5);
    let mut refreshed = TestSocket::connect(&app, &short).await;
    let (long, _) = forge(&app, &alice, 600);
    let ack = refreshed.request(json!({ "type": "auth", "token": long })).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let expires_at = ack["expiresAt"].as_i64().unwrap_or_else(|| panic!("no expiresAt in {ack}"));
    assert!(expires_at > chrono::Utc::now().timestamp() + 500, "{ack}");
    assert!(chrono::Utc::now().timestamp() < expires, "the machine was too slow to refresh in time");
    // Until two heartbeats past the short token's expiry (a "nothing happens" window).
    let past = u64::try_from(expires + 2 - chrono::Utc::now().timestamp()).unwrap_or(0);
    refreshed.expect_no_frame_within(Duration::from_secs(past)).await;
    assert!(chrono::Utc::now().timestamp() > expires);
    refreshed.ping().await;

    // A bad token, or another user's, is refused and changes nothing.
    let bob = app.register("bob@example.com").await;
    for token in ["not a token".to_owned(), bob.token.clone()] {
        let reply = refreshed.request_error(json!({ "type": "auth", "token": token }), "unauthorized").await;
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()), "{reply}");
    }
    refreshed.ping().await;
}

/// An access token for `user` that expires in `secs` seconds, signed with the app's key, and
/// its `exp`.
fn forge(app: &TestApp, user: &Session, secs: i64) -> (String, i64) {
    let secret = app.jwt_secret.clone().expect("the test app has a configured key");
    let now = chrono::Utc::now().timestamp();
    let claims: Value = json!({
        "sub": user.user_id, "email": user.email, "iat": now, "exp": now + secs, "iss": "confab", "aud": "confab",
        "sep": 0,
    });
    let token =
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
            .expect("sign");
    (token, now + secs)
}

/// Two nodes on PostgreSQL + Redis: disabling on node 0 closes the session on node 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_node_closes_sessions_on_another() {
    let Some(cluster) =
        spawn_cluster(2, |c| c.auth.revocation_check_interval = confab::config::HumanDuration(CHECK)).await
    else {
        return;
    };
    let (_, mut alice) = connect_user(cluster.node(1), "alice@example.com").await;
    alice.ping().await;
    let started = Instant::now();
    assert!(cluster.node(0).state.store.set_user_disabled("alice@example.com", true).await.expect("disable"));
    let took = expect_ended(&mut alice, "session_revoked", started).await;
    eprintln!("closed on the other node after {took:?}");
}
