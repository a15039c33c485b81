//! What one client (or one account) can make a node do or hold, tried as an abuser would: each
//! test pushes past a bound and checks the clear answer, that nothing is lost, that the bound is
//! counted in `/metrics`, and that the node serves everyone else meanwhile.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::{
    common::{Backend, both_backends},
    helpers::{PASSWORD, TestApp, TestSocket, expect_error, spawn_chat_node},
    ws::{connect_user, system},
};

both_backends!(
    a_client_id_reused_in_another_room_is_a_new_message_there_not_a_false_ack,
    one_account_cannot_open_more_sessions_than_its_cap,
    joins_and_leaves_are_rate_limited_per_account,
    a_session_cannot_join_more_rooms_than_its_cap,
    look_alike_emails_are_one_account_or_refused,
    invalid_utf8_closes_with_1007_and_old_websocket_versions_get_426,
    a_login_storm_is_bounded_by_the_hashing_threads_and_answered_503,
    half_sent_requests_and_idle_connections_are_closed_after_the_header_timeout,
    connections_per_address_are_capped_websockets_included,
    an_account_creates_a_bounded_number_of_rooms,
    edits_and_deletions_share_the_message_rate_limit,
);

/// The value of the Prometheus sample whose line starts with `series` (name and labels), 0 if
/// absent.
async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.get("/metrics").await.text().await.expect("metrics body");
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
}

async fn a_client_id_reused_in_another_room_is_a_new_message_there_not_a_false_ack(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let shared = r#"confab_store_shared_batches_total{outcome="shared"}"#;
    let resent = r#"confab_store_shared_batches_total{outcome="resend"}"#;
    let before = (metric(&app, shared).await, metric(&app, resent).await);
    let (_, mut alice) = connect_user(&app, "alice@example.com").await;
    let (b, mut bob) = connect_user(&app, "bob@example.com").await;
    alice.join("general").await;
    alice.join("random").await;
    bob.join("random").await;
    assert_eq!(alice.next_frame().await, system("random", "join", &b));

    let first = alice.send_with_client_id("general", "in general", "cid-1").await;
    assert_eq!(first.seq, 1);
    // The web client's clientIds are unique, but a confused client may reuse one elsewhere:
    // that is a new message in that room, acked with that room's seq.
    let second = alice.send_with_client_id("random", "in random", "cid-1").await;
    assert_eq!(second.seq, 1, "random's first message");
    assert_ne!(second.id, first.id, "not the general message's ack");
    let got = bob.next_message().await;
    assert_eq!((got.id.as_str(), got.content.as_str(), got.seq), (second.id.as_str(), "in random", 1));
    // And resending it in random is a duplicate of random's copy.
    let again = alice.send_with_client_id("random", "in random", "cid-1").await;
    assert_eq!((again.id.as_str(), again.seq), (second.id.as_str(), 1));
    if backend == Backend::Postgres {
        // The first two went through shared statements; the resend was left out of one and
        // stored alone (other tests' apps share the counters, which only adds to both).
        let after = (metric(&app, shared).await, metric(&app, resent).await);
        assert!(after.0 >= before.0 + 2.0, "shared batches {before:?} -> {after:?}");
        assert!(after.1 > before.1, "resent batches {before:?} -> {after:?}");
    }
}

async fn one_account_cannot_open_more_sessions_than_its_cap(backend: Backend) {
    let app = spawn_chat_node(backend, |c| c.ws.max_sessions_per_user = 3).await;
    let (mallory, first) = connect_user(&app, "mallory@example.com").await;
    let mut open = vec![first];
    for _ in 1..3 {
        open.push(TestSocket::connect(&app, &mallory.token).await);
    }
    let refused_before = metric(&app, "confab_ws_sessions_refused_total{reason=\"too_many_sessions\"}").await;

    // The fourth: told why, then closed with 1008.
    let mut extra = TestSocket::connect_unchecked(&app, &mallory.token).await;
    let frames = extra.expect_close(1008).await;
    assert_eq!(frames.len(), 1, "one error frame before the close: {frames:?}");
    assert_eq!(frames[0]["type"], "error");
    assert_eq!(frames[0]["code"], "too_many_sessions");
    let refused_after = metric(&app, "confab_ws_sessions_refused_total{reason=\"too_many_sessions\"}").await;
    assert!(refused_after > refused_before, "counted: {refused_before} -> {refused_after}");

    // Another account is not affected, and the open sessions still work.
    let (_, mut bob) = connect_user(&app, "bob@example.com").await;
    bob.ping().await;
    for socket in &mut open {
        socket.ping().await;
    }
    // Closing one frees its place.
    open.pop().expect("three open").close().await;
    let mut again = TestSocket::connect(&app, &mallory.token).await;
    again.ping().await;
}

async fn joins_and_leaves_are_rate_limited_per_account(backend: Backend) {
    let app = spawn_chat_node(backend, |c| {
        c.limits.joins_per_second = 1;
        c.limits.join_burst = 6;
    })
    .await;
    let (_, mut watcher) = connect_user(&app, "watcher@example.com").await;
    let (m, mut mallory) = connect_user(&app, "mallory@example.com").await;
    watcher.join("lobby").await;
    let limited_before = metric(&app, "confab_chat_rate_limited_total{command=\"membership\"}").await;

    // Join/leave cycles as fast as the server answers, until one is refused: the burst of six
    // goes through, then roughly one a second (however slowly this machine runs the loop).
    let started = std::time::Instant::now();
    let mut allowed = Vec::new();
    let refused = loop {
        let kind = if allowed.len() % 2 == 0 { "join_room" } else { "leave_room" };
        let reply = mallory.request(json!({ "type": kind, "room": "lobby" })).await;
        if reply["type"] == "error" {
            break reply;
        }
        assert_eq!(reply["type"], "ack", "{reply}");
        allowed.push(if kind == "join_room" { "join" } else { "leave" });
        assert!(allowed.len() <= 100, "never refused");
    };
    let elapsed = started.elapsed();
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert!(refused["message"].as_str().is_some_and(|m| m.contains("joins")), "{refused}");
    let refill = usize::try_from(elapsed.as_secs()).expect("seconds fit") + 1;
    assert!(
        (6..=6 + refill).contains(&allowed.len()),
        "{} allowed in {elapsed:?} with a burst of 6 at 1/s",
        allowed.len()
    );
    let limited_after = metric(&app, "confab_chat_rate_limited_total{command=\"membership\"}").await;
    assert!(limited_after > limited_before, "counted: {limited_before} -> {limited_after}");

    // The room heard exactly the allowed ones, then nothing of the refused one (bob's join,
    // which mallory's bucket does not limit, is the marker).
    for event in allowed {
        assert_eq!(watcher.next_frame().await, system("lobby", event, &m));
    }
    let (b, mut bob) = connect_user(&app, "bob@example.com").await;
    bob.join("lobby").await;
    assert_eq!(watcher.next_frame().await, system("lobby", "join", &b), "the refused join was not announced");
}

async fn a_session_cannot_join_more_rooms_than_its_cap(backend: Backend) {
    let app = spawn_chat_node(backend, |c| c.chat.max_rooms_per_session = 2).await;
    let (_, mut alice) = connect_user(&app, "alice@example.com").await;
    alice.join("one").await;
    alice.join("two").await;
    let refused = alice.request_error(json!({ "type": "join_room", "room": "three" }), "invalid_payload").await;
    assert!(refused["message"].as_str().is_some_and(|m| m.contains("at most 2 rooms")), "{refused}");
    // Rejoining a room it is in is not a new room; leaving one makes space.
    alice.join("two").await;
    alice.leave("one").await;
    alice.join("three").await;
}

async fn look_alike_emails_are_one_account_or_refused(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    app.register("alice@example.com").await;
    // A zero-width space, a right-to-left override, a byte-order mark: refused outright.
    for bad in ["ali\u{200B}ce@example.com", "alice\u{202E}@example.com", "\u{FEFF}alice@example.com"] {
        let resp = app.post_json("/api/auth/register", &json!({ "email": bad, "password": PASSWORD })).await;
        expect_error(resp, StatusCode::BAD_REQUEST, "invalid_email").await;
    }
    // Full-width letters are the same address after NFKC: taken already, and alice can sign
    // in with them.
    let resp =
        app.post_json("/api/auth/register", &json!({ "email": "ａｌｉｃｅ@example.com", "password": PASSWORD })).await;
    expect_error(resp, StatusCode::CONFLICT, "email_taken").await;
    let session = app.login("ａｌｉｃｅ@EXAMPLE.com", PASSWORD).await;
    assert_eq!(session.email, "alice@example.com");
}

async fn invalid_utf8_closes_with_1007_and_old_websocket_versions_get_426(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (s, mut mallory) = connect_user(&app, "mallory@example.com").await;
    mallory.send_raw_text(vec![b'{', 0xff, 0xfe, b'}']).await;
    mallory.expect_close(1007).await;

    let resp = app
        .client
        .get(app.url("/ws"))
        .bearer_auth(&s.token)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "8")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .expect("upgrade request");
    assert_eq!(
        resp.headers().get("sec-websocket-version").map(reqwest::header::HeaderValue::as_bytes),
        Some(&b"13"[..])
    );
    expect_error(resp, StatusCode::UPGRADE_REQUIRED, "unsupported_version").await;
    // The node serves everyone else meanwhile.
    let (_, mut bob) = connect_user(&app, "bob@example.com").await;
    bob.ping().await;
}

async fn a_login_storm_is_bounded_by_the_hashing_threads_and_answered_503(backend: Backend) {
    // One hashing thread, one waiting place, and a hash that takes a while: parallel logins (no
    // account needed) beyond those are refused with 503 and Retry-After, not queued without
    // bound in memory.
    let app = spawn_chat_node(backend, |c| {
        c.auth.argon2 = confab::config::Argon2Config { memory_kib: 16 * 1024, iterations: 6, parallelism: 1 };
        c.auth.hash_concurrency = 1;
        c.auth.hash_queue = 1;
    })
    .await;
    let rejected_before = metric(&app, "confab_auth_hash_rejected_total{reason=\"queue_full\"}").await;
    let storm: Vec<_> = (0..20)
        .map(|i| {
            let (client, url) = (app.client.clone(), app.url("/api/auth/login"));
            tokio::spawn(async move {
                let body = json!({ "email": format!("nobody{i}@example.com"), "password": PASSWORD });
                client.post(url).json(&body).send().await.expect("login request")
            })
        })
        .collect();
    let (mut refused, mut answered) = (0, 0);
    for request in storm {
        let resp = request.await.expect("task");
        match resp.status() {
            StatusCode::UNAUTHORIZED => answered += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                let retry: u64 = resp.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
                assert!(retry >= 1, "Retry-After {retry}");
                expect_error(resp, StatusCode::SERVICE_UNAVAILABLE, "busy").await;
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(answered >= 1 && refused >= 1, "answered {answered}, refused {refused}");
    let rejected_after = metric(&app, "confab_auth_hash_rejected_total{reason=\"queue_full\"}").await;
    assert!(rejected_after >= rejected_before + f64::from(refused), "{rejected_before} -> {rejected_after}");
    // Once the storm is over, logins work again.
    let session = app.register("late@example.com").await;
    assert_eq!(app.login("late@example.com", PASSWORD).await.user_id, session.user_id);
}

/// Reads until the server closes `conn` (EOF or reset), within `within`; returns what it sent.
async fn closed_by_server(conn: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let Ok(read) = tokio::time::timeout_at(deadline, conn.read(&mut buf)).await else {
            panic!("the server kept the connection open past {within:?}; it sent {got:?}")
        };
        match read {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn half_sent_requests_and_idle_connections_are_closed_after_the_header_timeout(backend: Backend) {
    let app = spawn_chat_node(backend, |c| {
        c.http.header_read_timeout = confab::config::HumanDuration(Duration::from_secs(1));
    })
    .await;
    // Slowloris: a request whose headers never end, dribbled a byte every 300 ms, which would
    // keep it open for ever if the timeout restarted with each byte.
    let mut slow = TcpStream::connect(app.addr).await.expect("connect");
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: confab\r\n").await.expect("write");
    let started = Instant::now();
    let dribbled = async {
        let (mut rd, mut wr) = slow.split();
        let mut buf = [0u8; 1024];
        loop {
            tokio::select! {
                r = rd.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { break started.elapsed() },
                () = tokio::time::sleep(Duration::from_millis(300)) => { let _ = wr.write_all(b"X").await; }
            }
            assert!(started.elapsed() < Duration::from_secs(20), "still open after 20 s of dribbling");
        }
    };
    // Meanwhile a whole request on another connection is served.
    let (closed_after, health) = tokio::join!(dribbled, app.get("/health"));
    assert_eq!(health.status(), StatusCode::OK);
    // The timeout is 1 s; the bound leaves room for a busy machine.
    assert!(closed_after < Duration::from_secs(10), "closed only after {closed_after:?}");

    // An idle keep-alive connection, after a complete exchange, is closed too.
    let mut idle = TcpStream::connect(app.addr).await.expect("connect");
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: confab\r\n\r\n").await.expect("write");
    let answer = closed_by_server(&mut idle, Duration::from_secs(10)).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
}

/// A TCP connection to `app` from the loopback address `source`.
async fn connect_from(app: &TestApp, source: IpAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.bind(SocketAddr::new(source, 0)).expect("bind the source address");
    socket.connect(app.addr).await.expect("connect")
}

async fn connections_per_address_are_capped_websockets_included(backend: Backend) {
    // Mallory's machine is 127.0.0.2. Everything else here comes from 127.0.0.1, which is
    // exempt as a trusted proxy would be: the test's own HTTP client pools connections, and how
    // many it holds is not this test's business.
    let app = spawn_chat_node(backend, |c| {
        c.http.max_connections_per_ip = 3;
        c.http.trusted_proxies = confab::config::List(vec!["127.0.0.1".into()]);
    })
    .await;
    let mallory_ip: IpAddr = [127, 0, 0, 2].into();
    let mallory = app.register("mallory@example.com").await;
    let mut ws = TestSocket::connect_from(&app, &mallory.token, mallory_ip).await;
    // The WebSocket is one; two more connections make three, each served.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = connect_from(&app, mallory_ip).await;
        conn.write_all(b"GET /health HTTP/1.1\r\nHost: confab\r\n\r\n").await.expect("write");
        let mut buf = [0u8; 12];
        conn.read_exact(&mut buf).await.expect("an answer");
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(conn);
    }
    let refused_before = metric(&app, "confab_http_connections_refused_total{reason=\"per_ip\"}").await;
    // The fourth is closed at once, before a byte of HTTP.
    let mut fourth = connect_from(&app, mallory_ip).await;
    let _ = fourth.write_all(b"GET /health HTTP/1.1\r\nHost: confab\r\n\r\n").await;
    assert!(closed_by_server(&mut fourth, Duration::from_secs(10)).await.is_empty(), "served past the cap");
    let refused_after = metric(&app, "confab_http_connections_refused_total{reason=\"per_ip\"}").await;
    assert!(refused_after > refused_before, "{refused_before} -> {refused_after}");
    // Exempt addresses are not affected, and mallory's open ones still work.
    let (_, mut bob) = connect_user(&app, "bob@example.com").await;
    bob.ping().await;
    ws.ping().await;

    // Closing one frees its place (the server notices the close, so poll for it).
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut conn = connect_from(&app, mallory_ip).await;
        let _ = conn.write_all(b"GET /health HTTP/1.1\r\nHost: confab\r\nConnection: close\r\n\r\n").await;
        let answer = closed_by_server(&mut conn, Duration::from_secs(10)).await;
        if answer.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "the closed connection's place was never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn an_account_creates_a_bounded_number_of_rooms(backend: Backend) {
    let app = spawn_chat_node(backend, |c| c.rooms.max_created_per_user = 2).await;
    let (owner, _) = connect_user(&app, "owner@example.com").await;
    let create = |name: &str| {
        let req = app.client.post(app.url("/api/rooms")).bearer_auth(&owner.token).json(&json!({ "name": name }));
        async move { req.send().await.expect("create") }
    };
    for name in ["one", "two"] {
        assert_eq!(create(name).await.status(), StatusCode::CREATED);
    }
    expect_error(create("three").await, StatusCode::FORBIDDEN, "too_many_rooms").await;
    assert!(metric(&app, "confab_rooms_refused_total{reason=\"too_many_rooms\"}").await >= 1.0);
    // Direct rooms do not count.
    let (other, _) = connect_user(&app, "other@example.com").await;
    let dm = app.client.post(app.url(&format!("/api/dm/{}", other.user_id))).bearer_auth(&owner.token).send().await;
    assert_eq!(dm.expect("dm").status(), StatusCode::OK);
}

async fn edits_and_deletions_share_the_message_rate_limit(backend: Backend) {
    let app = spawn_chat_node(backend, |c| {
        c.limits.messages_per_second = 1;
        c.limits.message_burst = 3;
    })
    .await;
    let (eve, mut ws) = connect_user(&app, "eve@example.com").await;
    ws.join("general").await;
    let sent = ws.send("general", "first").await;
    let path = format!("/api/rooms/general/messages/{}", sent.id);
    let edit = || {
        let req = app.client.patch(app.url(&path)).bearer_auth(&eve.token).json(&json!({ "content": "again" }));
        async move { req.send().await.expect("edit") }
    };
    // The send took one token of three; two edits take the rest, the third waits its turn.
    for _ in 0..2 {
        assert_eq!(edit().await.status(), StatusCode::NO_CONTENT);
    }
    let limited = edit().await;
    assert!(limited.headers().contains_key("retry-after"));
    expect_error(limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    let deleted = app.client.delete(app.url(&path)).bearer_auth(&eve.token).send().await.expect("delete");
    expect_error(deleted, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert!(metric(&app, "confab_chat_rate_limited_total{command=\"edit_message\"}").await >= 1.0);
}
