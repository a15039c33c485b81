//! Bad input on the WebSocket: refused upgrades (token, disabled account, origin) and bad
//! frames (binary, oversized, not JSON, unknown or incomplete commands, bad rooms and content,
//! commands out of turn, too many messages). Each gets the answer `PROTOCOL.md` promises, and
//! the server goes on serving the connection (where it should) and everyone else.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    common::{Backend, both_backends},
    helpers::{
        TestApp, TestSocket, assert_error, expect_error, seqs_of, spawn_chat_node, stored_messages, ws_refused,
        ws_request,
    },
    ws::{connect_user, system},
};

both_backends!(
    a_disabled_user_is_refused_at_connect,
    bad_commands_are_answered_and_the_connection_stays_usable,
    binary_and_oversized_frames_get_an_error_then_their_close_code,
);

/// The upgrade request sent with plain HTTP, to read the refusal's body.
async fn upgrade_over_http(app: &TestApp, token: Option<&str>, origin: Option<&str>) -> reqwest::Response {
    let mut req = app
        .client
        .get(app.url("/ws"))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(origin) = origin {
        req = req.header("origin", origin);
    }
    req.send().await.expect("upgrade request")
}

fn sign(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()))
        .expect("sign")
}

/// Alice and bob in `general`, to show the server still serves others after each refusal.
async fn bystanders(app: &TestApp) -> (TestSocket, TestSocket) {
    let (_, mut alice) = connect_user(app, "alice@example.com").await;
    let (b, mut bob) = connect_user(app, "bob@example.com").await;
    alice.join("general").await;
    bob.join("general").await;
    assert_eq!(alice.next_frame().await, system("general", "join", &b));
    (alice, bob)
}

/// Alice and bob still chat: one message each way, both delivered to both, in order.
async fn still_chatting(alice: &mut TestSocket, bob: &mut TestSocket) {
    let one = alice.send("general", "still there?").await;
    let two = bob.send("general", "yes").await;
    assert_eq!(two.seq, one.seq + 1);
    for socket in [alice, bob] {
        let got = socket.messages(2).await;
        assert_eq!((got[0].id.as_str(), got[1].id.as_str()), (one.id.as_str(), two.id.as_str()), "{}", socket.email);
    }
}

#[tokio::test]
async fn the_upgrade_needs_a_valid_access_token() {
    let app = spawn_chat_node(Backend::Sqlite, |_| {}).await;
    let (mut alice, mut bob) = bystanders(&app).await;
    let s = app.register("ann@example.com").await;
    let secret = app.jwt_secret.clone().expect("the test app has a known key");
    let now = chrono::Utc::now().timestamp();
    let claims = |iat: i64, exp: i64| json!({ "sub": s.user_id, "email": s.email, "iat": iat, "exp": exp, "iss": "confab", "aud": "confab" });
    // Control: a correctly forged token is accepted, so each refusal is for what it changes.
    let forged = sign(&claims(now, now + 600), &secret);
    TestSocket::connect(&app, &forged).await.close().await;

    let cases = [
        ("no token", None),
        ("garbage", Some("garbage".to_owned())),
        ("another key", Some(sign(&claims(now, now + 600), "another-secret-another-secret-0123456789"))),
        ("an expired token", Some(sign(&claims(now - 3600, now - 300), &secret))),
        ("a refresh token", Some(s.refresh_token.clone())),
    ];
    for (what, token) in cases {
        let status = ws_refused(ws_request(&app, token.as_deref())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
        expect_error(upgrade_over_http(&app, token.as_deref(), None).await, StatusCode::UNAUTHORIZED, "unauthorized")
            .await;
    }
    // Another scheme is no token at all.
    let mut req = ws_request(&app, None);
    req.headers_mut().insert("authorization", format!("Basic {}", s.token).parse().expect("header"));
    assert_eq!(ws_refused(req).await, StatusCode::UNAUTHORIZED);

    // Browsers pass the token in the query instead.
    let url = format!("ws://{}/ws?access_token={}", app.addr, s.token);
    let socket = TestSocket::connect_request(
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).expect("url"),
    )
    .await;
    assert_eq!(socket.user_id, s.user_id);
    let url = format!("ws://{}/ws?access_token=garbage", app.addr);
    let req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).expect("url");
    assert_eq!(ws_refused(req).await, StatusCode::UNAUTHORIZED);

    still_chatting(&mut alice, &mut bob).await;
}

async fn a_disabled_user_is_refused_at_connect(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let s = app.register("dan@example.com").await;
    TestSocket::connect(&app, &s.token).await.close().await;

    assert!(app.state.store.set_user_disabled("dan@example.com", true).await.expect("disable"));
    assert_eq!(ws_refused(ws_request(&app, Some(&s.token))).await, StatusCode::UNAUTHORIZED);
    expect_error(upgrade_over_http(&app, Some(&s.token), None).await, StatusCode::UNAUTHORIZED, "unauthorized").await;

    // Re-enabled, the account signs in again; tokens from before the disable stay revoked.
    assert!(app.state.store.set_user_disabled("dan@example.com", false).await.expect("enable"));
    assert_eq!(ws_refused(ws_request(&app, Some(&s.token))).await, StatusCode::UNAUTHORIZED);
    let again = app.login("dan@example.com", crate::helpers::PASSWORD).await;
    TestSocket::connect(&app, &again.token).await.close().await;
}

#[tokio::test]
async fn browser_origins_must_be_the_server_itself_or_allow_listed() {
    let app = spawn_chat_node(Backend::Sqlite, |_| {}).await;
    let (mut alice, mut bob) = bystanders(&app).await;
    let s = app.register("olga@example.com").await;
    let other_port = format!("http://127.0.0.1:{}", app.addr.port().wrapping_add(1));
    for origin in ["http://evil.test", other_port.as_str(), "null"] {
        let mut req = ws_request(&app, Some(&s.token));
        req.headers_mut().insert("origin", origin.parse().expect("header"));
        assert_eq!(ws_refused(req).await, StatusCode::FORBIDDEN, "{origin}");
        let resp = upgrade_over_http(&app, Some(&s.token), Some(origin)).await;
        expect_error(resp, StatusCode::FORBIDDEN, "forbidden_origin").await;
    }
    // Refused for the origin even with no token: nothing is learnt about tokens cross-site.
    let resp = upgrade_over_http(&app, None, Some("http://evil.test")).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // No Origin: not a browser. The server's own origin: its own page.
    TestSocket::connect(&app, &s.token).await.close().await;
    TestSocket::connect_with_origin(&app, &s.token, &format!("http://{}", app.addr)).await.close().await;
    still_chatting(&mut alice, &mut bob).await;

    let listed = spawn_chat_node(Backend::Sqlite, |cfg| {
        cfg.http.cors_origins = confab::config::List(vec!["http://allowed.test".into()]);
    })
    .await;
    let s = listed.register("olga@example.com").await;
    TestSocket::connect_with_origin(&listed, &s.token, "http://allowed.test").await.close().await;
    TestSocket::connect_with_origin(&listed, &s.token, &format!("http://{}", listed.addr)).await.close().await;
    TestSocket::connect(&listed, &s.token).await.close().await;
    let mut req = ws_request(&listed, Some(&s.token));
    req.headers_mut().insert("origin", "http://evil.test".parse().expect("header"));
    assert_eq!(ws_refused(req).await, StatusCode::FORBIDDEN);
    let resp = upgrade_over_http(&listed, Some(&s.token), Some("http://evil.test")).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

async fn bad_commands_are_answered_and_the_connection_stays_usable(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (mut alice, mut bob) = bystanders(&app).await;
    let (m, mut mallory) = connect_user(&app, "mallory@example.com").await;

    // Not a command at all: an error without a ref.
    for text in ["this is not json", "{\"type\": \"ping\"", "", "[1, 2]", "\"ping\"", "null", "{}", "{\"type\": 5}"] {
        mallory.send_text(text).await;
        let error = mallory.expect_error("invalid_payload").await;
        assert!(error.get("ref").is_none(), "{text}: {error}");
    }
    // Commands that cannot be read: the error echoes the ref and names the problem.
    for (frame, mentions) in [
        (json!({ "type": "dance" }), "dance"),
        (json!({ "type": "send_message", "room": "general" }), "content"),
        (json!({ "type": "send_message", "content": "hi" }), "room"),
        (json!({ "type": "send_message", "room": "general", "content": 5 }), "invalid type"),
        (json!({ "type": "join_room" }), "room"),
        (json!({ "type": "join_room", "room": 5 }), "invalid type"),
        (json!({ "type": "join_room", "room": "general", "since": "yesterday" }), "invalid type"),
        (json!({ "type": "join_room", "room": "general", "since": -1 }), "since"),
        (json!({ "type": "leave_room" }), "room"),
        (json!({ "type": "typing" }), "room"),
    ] {
        let error = mallory.request_error(frame.clone(), "invalid_payload").await;
        let message = error["message"].as_str().expect("message");
        assert!(message.contains(mentions), "{frame}: {message}");
    }
    // A ref longer than 64 characters is not echoed; one of 64 is.
    mallory.send_json(&json!({ "type": "ping", "ref": "r".repeat(65) })).await;
    assert_error(&mallory.next_frame().await, "invalid_payload", None, "ref of 65");
    mallory.send_json(&json!({ "type": "ping", "ref": "r".repeat(64) })).await;
    assert_eq!(mallory.next_frame().await, json!({ "type": "pong", "ref": "r".repeat(64) }));

    // Room names outside 1..=64 of [A-Za-z0-9:_-], for every command that names a room.
    let long = "r".repeat(65);
    for room in ["", "has space", "dot.ted", "slash/", "ümlaut", "semi;colon", long.as_str()] {
        for frame in [
            json!({ "type": "join_room", "room": room }),
            json!({ "type": "join_room", "room": room, "since": 0 }),
            json!({ "type": "leave_room", "room": room }),
            json!({ "type": "send_message", "room": room, "content": "hi" }),
            json!({ "type": "typing", "room": room }),
        ] {
            mallory.request_error(frame, "invalid_room").await;
        }
    }

    // Out of turn: the room is fine, mallory is not in it.
    for frame in [
        json!({ "type": "send_message", "room": "general", "content": "hi" }),
        json!({ "type": "leave_room", "room": "general" }),
        json!({ "type": "typing", "room": "general" }),
    ] {
        mallory.request_error(frame, "not_joined").await;
    }

    // Content: 1..=2000 characters after trimming; clientId 1..=64.
    mallory.join("general").await;
    assert_eq!(alice.next_frame().await, system("general", "join", &m));
    assert_eq!(bob.next_frame().await, system("general", "join", &m));
    let send = |content: String| json!({ "type": "send_message", "room": "general", "content": content });
    let error = mallory.request_error(send("y".repeat(10_000)), "too_long").await;
    assert!(error["message"].as_str().expect("message").contains("2000"), "{error}");
    mallory.request_error(send("é".repeat(2001)), "too_long").await;
    for blank in ["", "     ", " \n\t "] {
        mallory.request_error(send(blank.to_owned()), "invalid_payload").await;
    }
    for cid in [String::new(), "c".repeat(65)] {
        let frame = json!({ "type": "send_message", "room": "general", "content": "hi", "clientId": cid });
        mallory.request_error(frame, "invalid_payload").await;
    }
    let longest = mallory.send("general", &format!("  {}  ", "é".repeat(2000))).await;
    assert_eq!(longest.seq, 1, "nothing refused was stored");

    // Everyone carries on, and only the valid message was stored or delivered.
    mallory.ping().await;
    for socket in [&mut alice, &mut bob, &mut mallory] {
        let got = socket.next_message().await;
        assert_eq!((got.seq, got.content.chars().count()), (1, 2000), "{}", socket.email);
    }
    still_chatting(&mut alice, &mut bob).await;
    assert_eq!(seqs_of(&mallory.messages(2).await), [2, 3]);
    let stored = stored_messages(&app, "general").await;
    assert_eq!(stored.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2, 3]);
}

async fn binary_and_oversized_frames_get_an_error_then_their_close_code(backend: Backend) {
    let app = spawn_chat_node(backend, |cfg| cfg.ws.max_frame = 4096).await;
    let (mut alice, mut bob) = bystanders(&app).await;

    let (m, mut mallory) = connect_user(&app, "mallory@example.com").await;
    mallory.send_binary(vec![0x7b, 0x7d]).await;
    let frames = mallory.expect_close(1003).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_error(&frames[0], "invalid_payload", None, "a binary frame");
    still_chatting(&mut alice, &mut bob).await;

    let mut mallory = TestSocket::connect(&app, &m.token).await;
    mallory.join("general").await;
    for socket in [&mut alice, &mut bob] {
        assert_eq!(socket.next_frame().await, system("general", "join", &m));
    }
    // Just under the limit is an ordinary frame.
    let fits = mallory.send("general", &"z".repeat(1900)).await;
    for socket in [&mut alice, &mut bob, &mut mallory] {
        assert_eq!(socket.next_message().await.id, fits.id);
    }
    let frame = json!({ "type": "send_message", "room": "general", "content": "z".repeat(5000), "ref": "big" });
    mallory.send_json(&frame).await;
    let frames = mallory.expect_close(1009).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_error(&frames[0], "invalid_payload", None, "an oversized frame");
    assert!(frames[0]["message"].as_str().expect("message").contains("4096"), "{}", frames[0]);
    for socket in [&mut alice, &mut bob] {
        assert_eq!(socket.next_frame().await, system("general", "leave", &m));
    }
    still_chatting(&mut alice, &mut bob).await;
    // Two exchanges of two, and the one that fitted: the oversized one was not stored.
    assert_eq!(stored_messages(&app, "general").await.len(), 5);
}

#[tokio::test]
async fn messages_over_the_rate_limit_are_refused_per_user() {
    let app = spawn_chat_node(Backend::Sqlite, |cfg| {
        cfg.limits.messages_per_second = 1;
        cfg.limits.message_burst = 2;
    })
    .await;
    let (mut alice, mut bob) = bystanders(&app).await;

    // Four at once: the burst of two goes through, the rest are refused, each by its ref.
    let mut refs = Vec::new();
    for i in 1..=4 {
        refs.push(alice.submit_send("general", &format!("burst {i}")).await);
    }
    let mut answers = Vec::new();
    for r in &refs {
        let reply = alice.reply(r).await;
        answers.push(if reply["type"] == "ack" {
            format!("ack {}", reply["seq"])
        } else {
            assert_error(&reply, "rate_limited", Some(r), "over the limit");
            "rate_limited".to_owned()
        });
    }
    assert_eq!(answers, ["ack 1", "ack 2", "rate_limited", "rate_limited"]);

    // Bob has his own allowance; both see exactly the stored messages.
    let b = bob.send("general", "my turn").await;
    assert_eq!(b.seq, 3);
    for socket in [&mut alice, &mut bob] {
        assert_eq!(seqs_of(&socket.messages(3).await), [1, 2, 3]);
    }
    alice.ping().await;
    assert_eq!(stored_messages(&app, "general").await.len(), 3);
}
