//! The Socket.IO compatibility layer (`GET /socket.io/?EIO=4&transport=websocket`, PROTOCOL.md)
//! as a client sees it: Engine.IO v4 and Socket.IO v5 packets written and read as raw WebSocket
//! text frames against the real app, in-process. Most tests run on SQLite; the cross-transport
//! test runs two nodes sharing PostgreSQL and Redis, and `interop_with_the_real_socket_io_client`
//! drives the real `socket.io-client` npm package (tests/interop/) against such a pair.
//!
//! Nodes, users and native `/ws` clients come from the shared test infrastructure
//! (tests/common); the Engine.IO/Socket.IO client is here.
//!
//! Every receive is bounded by [`TIMEOUT`]; nothing sleeps to synchronise. A receive that must
//! prove that nothing else arrived uses a ping event with an ack id as a barrier ([`Sio::sync`]).

// Only part of the shared test infrastructure is used here.
#[allow(unused_macros, unused_imports)]
mod common;

use std::{net::SocketAddr, process::Stdio, time::Duration};

use confab::config::HumanDuration;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{
    Message,
    client::IntoClientRequest as _,
    protocol::{CloseFrame, frame::coding::CloseCode},
};

use crate::common::{
    NativeClient, PASSWORD, TestNode, TestUser, WS_TIMEOUT, Ws, expect_closed, pg_redis_pair, recv_frame, sqlite_node,
    ws_connect,
};

/// Upper bound on one receive (the shared WebSocket bound).
const TIMEOUT: Duration = WS_TIMEOUT;
/// Upper bound on the whole Node.js interop run.
const NODE_TIMEOUT: Duration = Duration::from_secs(120);
const SIO_PATH: &str = "/socket.io/?EIO=4&transport=websocket";

// ---------------------------------------------------------------------------------------------
// A raw Socket.IO client
// ---------------------------------------------------------------------------------------------

/// A Socket.IO client on one WebSocket, speaking packets by hand.
struct Sio {
    ws: Ws,
    /// Answer the server's Engine.IO pings (`2`) with `3` and skip them, as a real client does.
    answer_pings: bool,
}

impl Sio {
    /// Opens the Engine.IO connection and returns the OPEN packet's JSON.
    async fn open(addr: SocketAddr) -> (Self, Value) {
        let mut sio = Self { ws: ws_connect(&format!("ws://{addr}{SIO_PATH}"), None).await, answer_pings: true };
        let open = sio.text().await;
        let body = open.strip_prefix('0').unwrap_or_else(|| panic!("expected an OPEN packet, got {open:?}"));
        let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("OPEN is not JSON ({e}): {open}"));
        (sio, body)
    }

    /// Opens, then CONNECTs to the default namespace with `token`, which must succeed.
    async fn connect(addr: SocketAddr, token: &str) -> Self {
        let (mut sio, _) = Self::open(addr).await;
        sio.send(&format!("40{}", json!({ "token": token }))).await;
        sio.expect_connected().await;
        sio
    }

    /// Expects `40{"sid":"…"}` and returns the sid.
    async fn expect_connected(&mut self) -> String {
        let text = self.text().await;
        let body: Value = text
            .strip_prefix("40")
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or_else(|| panic!("expected CONNECT 40{{\"sid\":…}}, got {text:?}"));
        let obj = body.as_object().unwrap_or_else(|| panic!("CONNECT payload is not an object: {text}"));
        assert_eq!(obj.len(), 1, "CONNECT payload has only sid: {text}");
        let sid = body["sid"].as_str().unwrap_or_else(|| panic!("no sid in {text}"));
        assert!(!sid.is_empty(), "empty sid in {text}");
        sid.to_owned()
    }

    async fn send(&mut self, text: &str) {
        tokio::time::timeout(TIMEOUT, self.ws.send(Message::text(text)))
            .await
            .expect("sending a frame timed out")
            .expect("sending a frame failed");
    }

    /// Sends an EVENT, with an ack id when given: `42["name",payload]` or `42<id>["name",payload]`.
    async fn emit(&mut self, ack: Option<u64>, name: &str, payload: &Value) {
        let id = ack.map(|id| id.to_string()).unwrap_or_default();
        self.send(&format!("42{id}{}", json!([name, payload]))).await;
    }

    /// The next frame, which must be text (server pings aside, see `answer_pings`).
    async fn text(&mut self) -> String {
        loop {
            match recv_frame(&mut self.ws).await {
                Message::Text(text) if self.answer_pings && text.as_str() == "2" => self.send("3").await,
                Message::Text(text) => return text.as_str().to_owned(),
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next frame, which must be an EVENT of the default namespace: `(name, payload)`.
    async fn event(&mut self) -> (String, Value) {
        let text = self.text().await;
        let items: Value = text
            .strip_prefix("42")
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or_else(|| panic!("expected an EVENT 42[…], got {text:?}"));
        let items = items.as_array().unwrap_or_else(|| panic!("EVENT data is not an array: {text}"));
        assert_eq!(items.len(), 2, "EVENT carries a name and one payload: {text}");
        let name = items[0].as_str().unwrap_or_else(|| panic!("EVENT name is not a string: {text}"));
        (name.to_owned(), items[1].clone())
    }

    /// The next frame, which must be the EVENT `name`; returns its payload.
    async fn expect_event(&mut self, name: &str) -> Value {
        let (got, payload) = self.event().await;
        assert_eq!(got, name, "unexpected event {got} {payload}");
        payload
    }

    /// The next frame, which must be `43<id>[payload]`; returns the payload.
    async fn ack(&mut self, id: u64) -> Value {
        let text = self.text().await;
        let prefix = format!("43{id}[");
        assert!(text.starts_with(&prefix), "expected ACK {prefix}…], got {text:?}");
        let items: Value = serde_json::from_str(&text[prefix.len() - 1..])
            .unwrap_or_else(|e| panic!("ACK data is not JSON ({e}): {text}"));
        let items = items.as_array().unwrap_or_else(|| panic!("ACK data is not an array: {text}"));
        assert_eq!(items.len(), 1, "an ACK carries exactly the reply object: {text}");
        items[0].clone()
    }

    /// The ack `43<id>[payload]`, passing over any events before it (which are dropped).
    async fn ack_after_events(&mut self, id: u64) -> Value {
        let prefix = format!("43{id}[");
        loop {
            let text = self.text().await;
            if text.starts_with("42") {
                continue;
            }
            assert!(text.starts_with(&prefix), "expected ACK {prefix}…], got {text:?}");
            let items: Value = serde_json::from_str(&text[prefix.len() - 1..])
                .unwrap_or_else(|e| panic!("ACK data is not JSON ({e}): {text}"));
            return items[0].clone();
        }
    }

    /// A barrier: a ping event with ack id `id`, whose ack must be the very next frame.
    async fn sync(&mut self, id: u64) {
        self.emit(Some(id), "ping", &Value::Null).await;
        assert_eq!(self.ack(id).await, json!({ "type": "pong" }));
    }

    /// Joins `room` with ack id `id`: the ack, then the joiner's own system line.
    async fn join(&mut self, id: u64, room: &str) -> Value {
        self.emit(Some(id), "join_room", &json!({ "room": room })).await;
        let ack = self.ack(id).await;
        assert_eq!(ack["type"], "ack", "join of {room} failed: {ack}");
        assert_eq!(ack["room"], room);
        assert_eq!(self.expect_event("system").await, json!({ "room": room, "message": format!("You joined {room}") }));
        ack
    }

    /// Sends `content` to `room` with ack id `id`; returns the ack, then expects its own message.
    async fn send_message(&mut self, id: u64, room: &str, content: &str) -> Value {
        self.emit(Some(id), "send_message", &json!({ "room": room, "content": content })).await;
        let ack = self.ack(id).await;
        assert_eq!(ack["type"], "ack", "send failed: {ack}");
        let msg = self.expect_event("message").await;
        assert_eq!((&msg["id"], &msg["seq"], &msg["content"]), (&ack["id"], &ack["seq"], &json!(content)));
        ack
    }

    async fn expect_closed(&mut self, within: Duration) -> Option<CloseFrame> {
        expect_closed(&mut self.ws, within).await
    }
}

/// The `error` object a refused command's ack (or `error` event) carries.
fn assert_error(reply: &Value, code: &str) {
    assert_eq!(reply["type"], "error", "expected an error, got {reply}");
    assert_eq!(reply["code"], code, "wrong code in {reply}");
    assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()), "no message in {reply}");
    assert_eq!(reply.as_object().map(serde_json::Map::len), Some(3), "type, code and message only: {reply}");
}

// ---------------------------------------------------------------------------------------------
// Engine.IO handshake and HTTP refusals
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_packet_advertises_sid_heartbeat_and_payload_limit() {
    let node = sqlite_node(|c| {
        c.ws.ping_interval = HumanDuration(Duration::from_secs(20));
        c.ws.idle_timeout = HumanDuration(Duration::from_secs(50));
        c.ws.max_frame = 32 * 1024;
    })
    .await;
    let (_sio, open) = Sio::open(node.addr).await;
    let sid = open["sid"].as_str().unwrap_or_else(|| panic!("no sid in {open}"));
    assert!(!sid.is_empty());
    assert_eq!(
        open,
        json!({ "sid": sid, "upgrades": [], "pingInterval": 20_000, "pingTimeout": 30_000, "maxPayload": 32 * 1024 })
    );
    // Each connection has its own sid.
    let (_other, open2) = Sio::open(node.addr).await;
    assert_ne!(open2["sid"], open["sid"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_transports_and_old_engine_io_versions_get_a_clear_400() {
    let node = sqlite_node(|_| {}).await;
    let expect_400 = |path: &'static str, code: &'static str| {
        let (http, url) = (node.client.clone(), node.url(path));
        async move {
            let resp = http.get(&url).send().await.expect("GET");
            let status = resp.status();
            let content_type = resp.headers()["content-type"].to_str().expect("content type").to_owned();
            let body: Value = resp.json().await.expect("a JSON body");
            assert_eq!(status, 400, "{url}: {body}");
            assert!(content_type.starts_with("application/json"), "{url}: {content_type}");
            assert_eq!(body.as_object().map(serde_json::Map::len), Some(2), "{url}: error and code only: {body}");
            assert_eq!(body["code"], code, "{url}: {body}");
            body["error"].as_str().expect("a human-readable error").to_owned()
        }
    };
    // What a default `io(url)` client asks first is served (see
    // `polling_start_hands_over_to_the_websocket`); an unknown transport is not.
    let error = expect_400("/socket.io/?EIO=4&transport=flash", "transport_unsupported").await;
    assert!(error.contains("websocket"), "the error says what is supported: {error}");
    expect_400("/socket.io/?EIO=4", "transport_unsupported").await;
    // Polling requests for a session that does not exist.
    expect_400("/socket.io/?EIO=4&transport=polling&sid=nope", "invalid_session").await;
    // Socket.IO v2 clients speak Engine.IO 3.
    let error = expect_400("/socket.io/?EIO=3&transport=websocket", "unsupported_protocol").await;
    assert!(error.contains("EIO=4"), "{error}");
    expect_400("/socket.io/?transport=websocket", "unsupported_protocol").await;

    // The same answers to WebSocket upgrade requests.
    for path in ["/socket.io/?EIO=3&transport=websocket", "/socket.io/?EIO=4&transport=flash"] {
        let req = format!("ws://{}{path}", node.addr).into_client_request().expect("request");
        match tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(req)).await.expect("connect timed out") {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 400, "{path}");
                let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).expect("JSON");
                assert!(body["code"].is_string() && body["error"].is_string(), "{path}: {body}");
            }
            Err(e) => panic!("{path}: unexpected error {e}"),
            Ok(_) => panic!("{path}: the upgrade was accepted"),
        }
    }
    // A plain GET with the right query is told to upgrade.
    let resp = node.client.get(node.url(SIO_PATH)).send().await.expect("GET");
    assert_eq!(resp.status(), 400);
}

/// The long-polling start of a default `io(url)` client: OPEN offering the upgrade, CONNECT
/// answered through the next poll, an event sent before the upgrade replayed after it, and the
/// Polling handshakes need no login, so they are bounded: at most `ws.max_pending_handshakes`
/// at once (one more gets 503 `busy`), and one that does not authenticate within
/// `ws.handshake_timeout` is dropped, making room. Over WebSocket, a connection that sends no
/// CONNECT within the timeout is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_handshakes_are_capped_and_expire() {
    let node = sqlite_node(|c| {
        c.ws.max_pending_handshakes = 2;
        c.ws.handshake_timeout = HumanDuration(Duration::from_secs(1));
    })
    .await;
    let base = node.url("/socket.io/?EIO=4&transport=polling");
    let open = || async { node.client.get(&base).send().await.expect("GET open") };
    let started = std::time::Instant::now();
    for _ in 0..2 {
        assert_eq!(open().await.status(), 200);
    }
    let refused = open().await;
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.expect("JSON");
    assert_eq!(body["code"], "busy", "{body}");
    // Once the two have been pending past the handshake timeout, they make room.
    let deadline = started + Duration::from_secs(20);
    loop {
        let resp = open().await;
        if resp.status() == 200 {
            assert!(started.elapsed() >= Duration::from_secs(1), "room was made before the timeout");
            break;
        }
        assert_eq!(resp.status(), 503);
        assert!(std::time::Instant::now() < deadline, "expired handshakes never made room");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A WebSocket that never sends CONNECT is closed after the timeout.
    let (mut silent, _) = Sio::open(node.addr).await;
    silent.expect_closed(TIMEOUT).await;
}

/// pending poll released with a noop once the WebSocket takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_start_hands_over_to_the_websocket() {
    let node = sqlite_node(|_| {}).await;
    let alice = node.new_user("alice").await;
    let base = node.url("/socket.io/?EIO=4&transport=polling");
    let open = node.client.get(&base).send().await.expect("GET open").text().await.expect("body");
    let open: Value = serde_json::from_str(open.strip_prefix('0').expect("an OPEN packet")).expect("JSON");
    assert_eq!(open["upgrades"], json!(["websocket"]));
    let sid = open["sid"].as_str().expect("sid").to_owned();
    let with_sid = format!("{base}&sid={sid}");
    // CONNECT and an event in one payload (packets separated by U+001E).
    let payload = format!("40{}\u{1e}42[\"join_room\",\"general\"]", json!({ "token": alice.token }));
    let posted = node.client.post(&with_sid).body(payload).send().await.expect("POST");
    assert_eq!(posted.status(), 200);
    assert_eq!(posted.text().await.expect("body"), "ok");
    let polled = node.client.get(&with_sid).send().await.expect("poll").text().await.expect("body");
    assert_eq!(polled, format!("40{}", json!({ "sid": sid })));
    // A poll in flight while the client upgrades: released with a noop, whether it was parked
    // before the upgrade or reaches the server after it.
    let pending = tokio::spawn({
        let (http, url) = (node.client.clone(), with_sid.clone());
        async move { http.get(&url).send().await.expect("poll").text().await.expect("body") }
    });
    let ws_url = format!("ws://{}/socket.io/?EIO=4&transport=websocket&sid={sid}", node.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.expect("upgrade");
    ws.send(Message::text("2probe")).await.expect("probe");
    let probe = tokio::time::timeout(TIMEOUT, ws.next()).await.expect("probe answer").expect("open").expect("frame");
    assert_eq!(probe.into_text().expect("text").as_str(), "3probe");
    ws.send(Message::text("5")).await.expect("upgrade packet");
    assert_eq!(tokio::time::timeout(TIMEOUT, pending).await.expect("poll released").expect("task"), "6");
    // The join sent over polling was replayed: its system line arrives on the WebSocket, and the
    // session is a member of the room.
    let mut saw_join = false;
    while !saw_join {
        let frame = tokio::time::timeout(TIMEOUT, ws.next()).await.expect("a frame").expect("open").expect("frame");
        let text = frame.into_text().expect("text");
        saw_join = text.as_str() == r#"42["system",{"message":"You joined general","room":"general"}]"#;
    }
    ws.send(Message::text(format!("421{}", json!(["send_message", { "room": "general", "content": "hi" }]))))
        .await
        .expect("send");
    loop {
        let frame = tokio::time::timeout(TIMEOUT, ws.next()).await.expect("a frame").expect("open").expect("frame");
        let text = frame.into_text().expect("text");
        if let Some(ack) = text.as_str().strip_prefix("431") {
            let ack: Value = serde_json::from_str(ack).expect("ack JSON");
            assert_eq!((ack[0]["type"].as_str(), ack[0]["seq"].as_i64()), (Some("ack"), Some(1)));
            break;
        }
    }
    // A poll that reaches the server after the upgrade (the client sent it before; the one
    // above may have been one) is a noop; packets over polling are refused from now on.
    let late = node.client.get(&with_sid).send().await.expect("late poll");
    assert_eq!((late.status().as_u16(), late.text().await.expect("body").as_str()), (200, "6"));
    let stale = node.client.post(&with_sid).body("42[\"typing\",\"general\"]").send().await.expect("stale post");
    assert_eq!(stale.status(), 400);
}

// ---------------------------------------------------------------------------------------------
// CONNECT
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_a_valid_token_gets_a_sid_and_can_talk() {
    let node = sqlite_node(|_| {}).await;
    let alice = node.new_user("alice").await;
    let (mut sio, _) = Sio::open(node.addr).await;
    sio.send(&format!("40{}", json!({ "token": alice.token }))).await;
    sio.expect_connected().await;
    sio.sync(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_over_its_session_cap_gets_connect_error_and_a_1008_close() {
    let node = sqlite_node(|c| c.ws.max_sessions_per_user = 2).await;
    let mallory = node.new_user("mallory").await;
    let mut open = vec![Sio::connect(node.addr, &mallory.token).await, Sio::connect(node.addr, &mallory.token).await];
    let (mut extra, _) = Sio::open(node.addr).await;
    extra.send(&format!("40{}", json!({ "token": mallory.token }))).await;
    assert_eq!(extra.text().await, r#"44{"message":"too_many_sessions"}"#);
    let close = extra.expect_closed(TIMEOUT).await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Policy, "{close:?}");
    // The open ones still work; closing one frees its place.
    for (i, sio) in open.iter_mut().enumerate() {
        sio.sync(u64::try_from(i).expect("small") + 1).await;
    }
    let mut first = open.remove(0);
    first.send("41").await;
    first.expect_closed(TIMEOUT).await;
    let mut again = Sio::connect(node.addr, &mallory.token).await;
    again.sync(9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_account_gets_an_error_event_and_a_1008_close_and_auth_extends_a_session() {
    let node = sqlite_node(|c| c.auth.revocation_check_interval = HumanDuration(Duration::from_millis(200))).await;
    let alice = node.new_user("alice").await;
    let bob = node.new_user("bob").await;
    let mut sio = Sio::connect(node.addr, &alice.token).await;
    let mut other = Sio::connect(node.addr, &bob.token).await;
    // In-band refresh over Socket.IO: the ack carries the new expiry.
    let fresh = node.new_user("carol").await;
    other.emit(Some(1), "auth", &json!({ "token": bob.token })).await;
    let ack = other.ack(1).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert!(ack["expiresAt"].as_i64().is_some(), "{ack}");
    other.emit(Some(2), "auth", &json!({ "token": fresh.token })).await;
    assert_error(&other.ack(2).await, "unauthorized");

    assert!(node.state.store.set_user_disabled(&alice.email, true).await.expect("disable"));
    let error = sio.expect_event("error").await;
    assert_eq!(error["code"], "session_revoked", "{error}");
    let close = sio.expect_closed(TIMEOUT).await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Policy, "{close:?}");
    other.sync(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_or_missing_token_gets_connect_error_and_may_retry_on_the_same_connection() {
    let node = sqlite_node(|_| {}).await;
    let alice = node.new_user("alice").await;
    let (mut sio, _) = Sio::open(node.addr).await;
    let forged = {
        // A well-formed JWT signed with another key.
        let other = sqlite_node(|_| {}).await;
        other.new_user("mallory").await.token
    };
    for attempt in ["40", "40{}", r#"40{"token":"not-a-jwt"}"#] {
        sio.send(attempt).await;
        assert_eq!(sio.text().await, r#"44{"message":"unauthorized"}"#, "after {attempt}");
    }
    // Events before a successful CONNECT are not commands.
    sio.emit(Some(1), "join_room", &json!({ "room": "general" })).await;
    sio.send(&format!("40{}", json!({ "token": forged }))).await;
    assert_eq!(sio.text().await, r#"44{"message":"unauthorized"}"#, "a token signed with another key");
    // The fifth attempt, at last with a good token.
    sio.send(&format!("40{}", json!({ "token": alice.token }))).await;
    sio.expect_connected().await;
    sio.sync(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_refused_connects_close_the_connection() {
    let node = sqlite_node(|_| {}).await;
    let (mut sio, _) = Sio::open(node.addr).await;
    for _ in 0..5 {
        sio.send(r#"40{"token":"nope"}"#).await;
        assert_eq!(sio.text().await, r#"44{"message":"unauthorized"}"#);
    }
    sio.expect_closed(TIMEOUT).await;
}

/// The same limit over long-polling: four refused CONNECTs are answered, the fifth ends the
/// session, and a valid CONNECT does not count against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_refused_connects_over_polling_end_the_session_too() {
    let node = sqlite_node(|_| {}).await;
    let alice = node.new_user("alice").await;
    let base = node.url("/socket.io/?EIO=4&transport=polling");
    let open_session = || async {
        let open = node.client.get(&base).send().await.expect("GET open").text().await.expect("body");
        let open: Value = serde_json::from_str(open.strip_prefix('0').expect("an OPEN packet")).expect("JSON");
        format!("{base}&sid={}", open["sid"].as_str().expect("sid"))
    };
    let refused = r#"40{"token":"nope"}"#;
    let with_sid = open_session().await;
    for _ in 0..4 {
        let posted = node.client.post(&with_sid).body(refused).send().await.expect("POST");
        assert_eq!(posted.status(), 200);
        let polled = node.client.get(&with_sid).send().await.expect("poll").text().await.expect("body");
        assert_eq!(polled, r#"44{"message":"unauthorized"}"#);
    }
    let fifth = node.client.post(&with_sid).body(refused).send().await.expect("POST");
    assert_eq!(fifth.status(), 400, "the fifth refused CONNECT ends the session");
    let gone = node.client.get(&with_sid).send().await.expect("poll");
    assert_eq!(gone.status(), 400, "the session is forgotten");
    // Four refusals and then a valid token: connected, and still usable.
    let with_sid = open_session().await;
    let payload = [refused; 4].join("\u{1e}") + "\u{1e}" + &format!("40{}", json!({ "token": alice.token }));
    let posted = node.client.post(&with_sid).body(payload).send().await.expect("POST");
    assert_eq!(posted.status(), 200);
    let polled = node.client.get(&with_sid).send().await.expect("poll").text().await.expect("body");
    assert!(polled.ends_with(&format!("40{}", json!({ "sid": with_sid.rsplit('=').next() }))), "{polled}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_namespaces_get_connect_error() {
    let node = sqlite_node(|_| {}).await;
    let alice = node.new_user("alice").await;
    let (mut sio, _) = Sio::open(node.addr).await;
    sio.send(&format!("40/admin,{}", json!({ "token": alice.token }))).await;
    assert_eq!(sio.text().await, r#"44/admin,{"message":"Invalid namespace"}"#);
    sio.send("40/chat,").await;
    assert_eq!(sio.text().await, r#"44/chat,{"message":"Invalid namespace"}"#);
    // The default namespace still connects on the same connection.
    sio.send(&format!("40{}", json!({ "token": alice.token }))).await;
    sio.expect_connected().await;
    sio.sync(1).await;
}

/// A valid token while the database cannot be reached is not "unauthorized" (a client would
/// throw its token away): the CONNECT_ERROR says `unavailable`, as `/ws` answers 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_during_connect_is_unavailable_not_unauthorized() {
    let node = sqlite_node(|_| {}).await;
    let alice = node.new_user("alice").await;
    node.state.store.close().await;

    let resp = node
        .client
        .get(node.url("/ws"))
        .bearer_auth(&alice.token)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .expect("GET /ws");
    assert_eq!(resp.status(), 503, "the native endpoint's answer");

    let (mut sio, _) = Sio::open(node.addr).await;
    sio.send(&format!("40{}", json!({ "token": alice.token }))).await;
    assert_eq!(sio.text().await, r#"44{"message":"unavailable"}"#);
    // A bad token is still just unauthorized: it is refused before the store is asked.
    sio.send(r#"40{"token":"not-a-jwt"}"#).await;
    assert_eq!(sio.text().await, r#"44{"message":"unauthorized"}"#);
}

/// socket.io-client multiplexes `io(url)` and `io(url + "/admin")` on one connection, so a
/// CONNECT to another namespace can come after the default one connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_namespaces_get_connect_error_after_the_default_one_connected_too() {
    let node = sqlite_node(|_| {}).await;
    let alice = node.new_user("alice").await;
    let mut sio = Sio::connect(node.addr, &alice.token).await;
    sio.join(1, "general").await;
    sio.send(&format!("40/admin,{}", json!({ "token": alice.token }))).await;
    assert_eq!(sio.text().await, r#"44/admin,{"message":"Invalid namespace"}"#);
    // Its events and disconnect are ignored; the default namespace carries on.
    sio.send(r#"42/admin,1["ping"]"#).await;
    sio.send("41/admin,").await;
    sio.sync(2).await;
    assert_eq!(sio.send_message(3, "general", "still connected").await["seq"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_before_connect_ends_the_connection() {
    let node = sqlite_node(|_| {}).await;
    let (mut sio, _) = Sio::open(node.addr).await;
    sio.send("1").await;
    sio.expect_closed(TIMEOUT).await;
}

// ---------------------------------------------------------------------------------------------
// Events and acks
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_without_an_ack_id_get_events_and_with_one_get_an_ack() {
    let node = sqlite_node(|_| {}).await;
    let alice = node.new_user("alice").await;
    let mut sio = Sio::connect(node.addr, &alice.token).await;

    // ping: a `pong` event without an ack id, the ack callback's argument with one.
    sio.send(r#"42["ping"]"#).await;
    assert_eq!(sio.text().await, r#"42["pong",{"type":"pong"}]"#);
    sio.send(r#"4212["ping",{"ref":"p1"}]"#).await;
    assert_eq!(sio.text().await, r#"4312[{"type":"pong","ref":"p1"}]"#);
    // socket.io-client numbers acks from 0.
    sio.send(r#"420["ping"]"#).await;
    assert_eq!(sio.text().await, r#"430[{"type":"pong"}]"#);

    // join without an ack id: only the joiner's system line.
    sio.emit(None, "join_room", &json!({ "room": "general" })).await;
    assert_eq!(sio.expect_event("system").await, json!({ "room": "general", "message": "You joined general" }));
    // join with one (a re-join, and the older bare-string form): the ack, then the system line.
    sio.send(r#"4213["join_room","general"]"#).await;
    assert_eq!(sio.ack(13).await, json!({ "type": "ack", "room": "general", "seq": 0 }));
    assert_eq!(sio.expect_event("system").await, json!({ "room": "general", "message": "You joined general" }));

    // leave with and without an ack id.
    sio.emit(Some(14), "leave_room", &json!({ "room": "general", "ref": "l1" })).await;
    assert_eq!(sio.ack(14).await, json!({ "type": "ack", "ref": "l1", "room": "general" }));
    sio.join(15, "general").await;
    sio.emit(None, "leave_room", &json!({ "room": "general" })).await;
    sio.sync(16).await;

    // typing needs no answer at all; in a room not joined it is an error.
    sio.join(17, "general").await;
    sio.emit(None, "typing", &json!({ "room": "general" })).await;
    sio.sync(18).await;
    sio.emit(Some(19), "typing", &json!({ "room": "random" })).await;
    assert_error(&sio.ack(19).await, "not_joined");
    sio.sync(20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_is_acked_then_delivered_as_a_message_event() {
    let node = sqlite_node(|_| {}).await;
    let alice = node.new_user("alice").await;
    let bob = node.new_user("bob").await;
    let mut a = Sio::connect(node.addr, &alice.token).await;
    let mut b = Sio::connect(node.addr, &bob.token).await;

    assert_eq!(a.join(1, "general").await, json!({ "type": "ack", "room": "general", "seq": 0 }));
    b.join(1, "general").await;
    // Alice hears of Bob's join, with the original platform's message.
    let system = a.expect_event("system").await;
    assert_eq!(
        system,
        json!({
            "type": "system", "room": "general", "event": "join", "userId": bob.id, "email": bob.email,
            "name": bob.name, "message": format!("{} joined general", bob.name),
        })
    );

    a.emit(Some(2), "send_message", &json!({ "room": "general", "content": "  hello  ", "clientId": "c-1" })).await;
    let ack = a.ack(2).await;
    let id = ack["id"].as_str().unwrap_or_else(|| panic!("no id in {ack}")).to_owned();
    assert_eq!(ack, json!({ "type": "ack", "id": id, "seq": 1 }));
    let msg = a.expect_event("message").await;
    let created_at = msg["createdAt"].as_str().unwrap_or_else(|| panic!("no createdAt in {msg}")).to_owned();
    chrono::DateTime::parse_from_rfc3339(&created_at).expect("createdAt is RFC 3339");
    let expected = json!({
        "type": "message", "id": id, "room": "general", "seq": 1, "senderId": alice.id,
        "senderEmail": alice.email, "senderName": alice.name, "content": "hello", "createdAt": created_at,
        "clientId": "c-1",
    });
    assert_eq!(msg, expected);
    assert_eq!(b.expect_event("message").await, expected, "every member gets the same event");

    // The same clientId again: the original id and seq, and nothing delivered twice.
    a.emit(Some(3), "send_message", &json!({ "room": "general", "content": "hello", "clientId": "c-1" })).await;
    assert_eq!(a.ack(3).await, json!({ "type": "ack", "id": id, "seq": 1 }));
    // Without an ack id the sender gets no ack, only the message.
    a.emit(None, "send_message", &json!({ "room": "general", "content": "second" })).await;
    let second = a.expect_event("message").await;
    assert_eq!((&second["seq"], &second["content"]), (&json!(2), &json!("second")));
    let got = b.expect_event("message").await;
    assert_eq!(got, second, "Bob got seq 2 right after seq 1");
    // The ref is echoed in the ack.
    b.emit(Some(4), "send_message", &json!({ "room": "general", "content": "third", "ref": "r-3" })).await;
    let ack = b.ack(4).await;
    assert_eq!((&ack["ref"], &ack["seq"]), (&json!("r-3"), &json!(3)));
    assert_eq!(b.expect_event("message").await["seq"], 3);
    assert_eq!(a.expect_event("message").await["seq"], 3);

    // Read markers: acked with where the marker stands, and Alice's other session hears it.
    let mut a2 = Sio::connect(node.addr, &alice.token).await;
    a.emit(Some(5), "mark_read", &json!({ "room": "general", "seq": 2 })).await;
    assert_eq!(a.ack(5).await, json!({ "type": "ack", "room": "general", "seq": 2, "unread": 1, "mentions": 0 }));
    assert_eq!(
        a2.expect_event("read").await,
        json!({ "type": "read", "room": "general", "seq": 2, "unread": 1, "mentions": 0 })
    );
    a.emit(Some(6), "mark_read", &json!({ "room": "general" })).await;
    assert_error(&a.ack(6).await, "invalid_payload");
}

/// Socket.IO clients meet the same room rules as native ones: a private room refuses an
/// outsider's join and resume; a muted member's send is `muted`; a banned member is told and
/// cannot come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_clients_meet_the_room_access_rules() {
    let node = sqlite_node(|_| {}).await;
    let (owner, outsider, member) =
        (node.new_user("owner").await, node.new_user("out").await, node.new_user("mem").await);
    let post = |path: &str, body: Value| node.client.post(node.url(path)).bearer_auth(&owner.token).json(&body).send();
    let status = |r: reqwest::Result<reqwest::Response>| r.expect("request").status().as_u16();
    assert_eq!(status(post("/api/rooms", json!({ "name": "priv", "kind": "private" })).await), 201);
    assert_eq!(status(post("/api/rooms/priv/members", json!({ "userId": member.id })).await), 200);

    let dm = node.client.post(node.url(&format!("/api/dm/{}", member.id))).bearer_auth(&owner.token).send().await;
    let dm: Value = dm.expect("dm").json().await.expect("json");
    let dm = dm["name"].as_str().expect("dm name").to_owned();

    // An outsider: refused from the private and the direct room, joining and resuming alike;
    // sending there is `not_joined`.
    let mut out = Sio::connect(node.addr, &outsider.token).await;
    for (i, room) in [(1, "priv"), (3, dm.as_str())] {
        out.emit(Some(i), "join_room", &json!({ "room": room })).await;
        assert_eq!(out.ack_after_events(i).await["code"], "forbidden", "{room}");
        out.emit(Some(i + 1), "join_room", &json!({ "room": room, "since": 0 })).await;
        assert_eq!(out.ack_after_events(i + 1).await["code"], "forbidden", "{room}");
    }
    out.emit(Some(5), "send_message", &json!({ "room": "priv", "content": "x" })).await;
    assert_eq!(out.ack_after_events(5).await["code"], "not_joined");
    // An administrator enters both without being a member.
    assert!(node.state.store.set_admin(&outsider.email, true).await.expect("promote"));
    let mut admin = Sio::connect(node.addr, &outsider.token).await;
    admin.join(1, "priv").await;
    admin.join(2, &dm).await;
    // The DM's other member joins and writes.
    let mut peer = Sio::connect(node.addr, &member.token).await;
    peer.join(1, &dm).await;
    assert_eq!(peer.send_message(2, &dm, "just us").await["type"], "ack");

    let mut mem = Sio::connect(node.addr, &member.token).await;
    mem.join(1, "priv").await;
    assert_eq!(status(post("/api/rooms/priv/mutes", json!({ "userId": member.id, "minutes": 5 })).await), 204);
    assert_eq!(mem.expect_event("muted").await["userId"], member.id.as_str());
    mem.emit(Some(2), "send_message", &json!({ "room": "priv", "content": "x" })).await;
    assert_eq!(mem.ack_after_events(2).await["code"], "muted");
    assert_eq!(status(post("/api/rooms/priv/bans", json!({ "userId": member.id })).await), 204);
    assert_eq!(mem.expect_event("removed").await["reason"], "banned");
    mem.emit(Some(3), "join_room", &json!({ "room": "priv" })).await;
    assert_eq!(mem.ack_after_events(3).await["code"], "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_gets_an_error_and_the_seed_style_system_line() {
    let node = sqlite_node(|c| c.chat.message_max_len = 10).await;
    let alice = node.new_user("alice").await;
    let mut sio = Sio::connect(node.addr, &alice.token).await;
    let invalid_room = json!({ "message": "Invalid room name." });
    let invalid_payload = json!({ "message": "Invalid message payload." });

    // An invalid room: error ack, then the system line.
    sio.emit(Some(1), "join_room", &json!({ "room": "no spaces!" })).await;
    let err = sio.ack(1).await;
    assert_error(&err, "invalid_room");
    assert_eq!(err["message"], "room names are 1 to 64 characters of A-Z a-z 0-9 : _ -");
    assert_eq!(sio.expect_event("system").await, invalid_room);
    // Without an ack id the error comes as an `error` event.
    sio.emit(None, "join_room", &json!({ "room": "x".repeat(65) })).await;
    assert_error(&sio.expect_event("error").await, "invalid_room");
    assert_eq!(sio.expect_event("system").await, invalid_room);
    sio.emit(Some(2), "send_message", &json!({ "room": "", "content": "hi" })).await;
    assert_error(&sio.ack(2).await, "invalid_room");
    assert_eq!(sio.expect_event("system").await, invalid_room);

    sio.join(3, "general").await;
    // Empty (after trimming) and missing content.
    sio.emit(Some(4), "send_message", &json!({ "room": "general", "content": "   " })).await;
    let err = sio.ack(4).await;
    assert_error(&err, "invalid_payload");
    assert_eq!(err["message"], "message content must not be empty");
    assert_eq!(sio.expect_event("system").await, invalid_payload);
    sio.emit(None, "send_message", &json!({ "room": "general" })).await;
    assert_error(&sio.expect_event("error").await, "invalid_payload");
    assert_eq!(sio.expect_event("system").await, invalid_payload);
    sio.emit(Some(5), "send_message", &json!({ "room": "general", "content": 5 })).await;
    assert_error(&sio.ack(5).await, "invalid_payload");
    assert_eq!(sio.expect_event("system").await, invalid_payload);
    // Too long.
    sio.emit(Some(6), "send_message", &json!({ "room": "general", "content": "x".repeat(11) })).await;
    assert_error(&sio.ack(6).await, "too_long");
    assert_eq!(sio.expect_event("system").await, invalid_payload);
    // A bad since or clientId.
    sio.emit(Some(7), "join_room", &json!({ "room": "general", "since": "yesterday" })).await;
    assert_error(&sio.ack(7).await, "invalid_payload");
    assert_eq!(sio.expect_event("system").await, invalid_payload);
    sio.emit(Some(8), "send_message", &json!({ "room": "general", "content": "hi", "clientId": 3 })).await;
    assert_error(&sio.ack(8).await, "invalid_payload");
    assert_eq!(sio.expect_event("system").await, invalid_payload);

    // Not joined: only the error (no seed line for it), and nothing stored or delivered.
    sio.emit(Some(9), "send_message", &json!({ "room": "random", "content": "hi" })).await;
    assert_error(&sio.ack(9).await, "not_joined");
    sio.emit(Some(10), "leave_room", &json!({ "room": "random" })).await;
    assert_error(&sio.ack(10).await, "not_joined");
    sio.sync(11).await;

    // None of that stored anything: the next message in general is seq 1.
    assert_eq!(sio.send_message(12, "general", "ok").await["seq"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_events_and_malformed_packets_are_answered_and_the_connection_stays_usable() {
    let node = sqlite_node(|_| {}).await;
    let alice = node.new_user("alice").await;
    let mut sio = Sio::connect(node.addr, &alice.token).await;
    sio.join(1, "general").await;
    let invalid_payload = json!({ "message": "Invalid message payload." });

    sio.emit(Some(2), "dance", &json!({ "room": "general" })).await;
    let err = sio.ack(2).await;
    assert_error(&err, "invalid_payload");
    assert_eq!(err["message"], "unknown event `dance`");
    assert_eq!(sio.expect_event("system").await, invalid_payload);

    // Packets that are not Socket.IO at all, or whose data is not an event array.
    for (packet, message) in [
        ("hello", "malformed Socket.IO packet"),
        ("4", "malformed Socket.IO packet"),
        ("49[]", "malformed Socket.IO packet"),
        ("", "malformed Socket.IO packet"),
        ("42", "event is not a JSON array"),
        ("42{not json", "event is not a JSON array"),
        (r#"42{"room":"general"}"#, "event is not a JSON array"),
        ("42[]", "event name missing"),
        ("42[1,2]", "event name missing"),
        // Multi-byte characters where a packet type is expected.
        ("4é", "malformed Socket.IO packet"),
        ("é", "malformed Socket.IO packet"),
    ] {
        sio.send(packet).await;
        let err = sio.expect_event("error").await;
        assert_eq!(err, json!({ "type": "error", "code": "invalid_payload", "message": message }), "for {packet:?}");
        assert_eq!(sio.expect_event("system").await, invalid_payload, "for {packet:?}");
    }
    sio.send(r#"4233["send_message"]"#).await;
    assert_error(&sio.ack(33).await, "invalid_payload");
    assert_eq!(sio.expect_event("system").await, invalid_payload);

    // Engine.IO packets that carry no command are ignored: pong, noop, upgrade; an ACK for an
    // event we never sent; events for another namespace.
    for packet in ["3", "6", "5", r#"431["x"]"#, r#"42/admin,["ping"]"#, "41/admin,"] {
        sio.send(packet).await;
    }
    sio.sync(3).await;
    // A client-sent Engine.IO ping gets a pong.
    sio.send("2").await;
    assert_eq!(sio.text().await, "3");

    // Still a working member of general.
    assert_eq!(sio.send_message(4, "general", "still here").await["seq"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_packets_and_frames_are_refused_politely() {
    let node = sqlite_node(|_| {}).await;
    let alice = node.new_user("alice").await;
    let mut sio = Sio::connect(node.addr, &alice.token).await;
    sio.join(1, "general").await;
    let invalid_payload = json!({ "message": "Invalid message payload." });

    let refused = json!({ "type": "error", "code": "invalid_payload", "message": "binary packets are not supported" });
    let binary_frame = || Message::binary(vec![1_u8, 2, 3]);

    // BINARY_EVENT with one attachment, as socket.io-client sends an emit with a Buffer: one
    // error for the packet; its attachment, a binary WebSocket frame, is dropped quietly.
    sio.send(r#"451-["send_message",{"room":"general","content":{"_placeholder":true,"num":0}}]"#).await;
    assert_eq!(sio.expect_event("error").await, refused);
    assert_eq!(sio.expect_event("system").await, invalid_payload);
    sio.ws.send(binary_frame()).await.expect("send binary");
    sio.sync(10).await;

    // With an ack id (an emit with a callback): the callback gets the error.
    sio.send(r#"452-12["send_message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#).await;
    assert_eq!(sio.ack(12).await, refused);
    assert_eq!(sio.expect_event("system").await, invalid_payload);
    sio.ws.send(binary_frame()).await.expect("send binary");
    sio.ws.send(binary_frame()).await.expect("send binary");
    sio.sync(11).await;

    // A binary frame that is no attachment gets its own error.
    sio.ws.send(binary_frame()).await.expect("send binary");
    assert_eq!(
        sio.expect_event("error").await,
        json!({
            "type": "error", "code": "invalid_payload",
            "message": "binary frames are not supported; send JSON text",
        })
    );
    assert_eq!(sio.expect_event("system").await, invalid_payload);
    // Nor does one after a text frame: attachments come right after their packet.
    sio.send(r#"451-["x",{"_placeholder":true,"num":0}]"#).await;
    assert_eq!(sio.expect_event("error").await, refused);
    assert_eq!(sio.expect_event("system").await, invalid_payload);
    sio.sync(13).await;
    sio.ws.send(binary_frame()).await.expect("send binary");
    assert_eq!(sio.expect_event("error").await["message"], "binary frames are not supported; send JSON text");
    assert_eq!(sio.expect_event("system").await, invalid_payload);

    // BINARY_ACK (we never ask for acks, so its id answers nothing): an error event.
    sio.send(r#"461-7[{"_placeholder":true,"num":0}]"#).await;
    assert_eq!(sio.expect_event("error").await, refused);
    assert_eq!(sio.expect_event("system").await, invalid_payload);
    sio.ws.send(binary_frame()).await.expect("send binary");
    sio.sync(14).await;

    // The connection is still usable.
    assert_eq!(sio.send_message(2, "general", "text is fine").await["seq"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_max_payload_is_refused_and_closes_the_connection() {
    let node = sqlite_node(|c| c.ws.max_frame = 2048).await;
    let alice = node.new_user("alice").await;
    let (mut sio, open) = Sio::open(node.addr).await;
    assert_eq!(open["maxPayload"], 2048);
    sio.send(&format!("40{}", json!({ "token": alice.token }))).await;
    sio.expect_connected().await;
    sio.join(1, "general").await;
    sio.emit(Some(2), "send_message", &json!({ "room": "general", "content": "x".repeat(2048) })).await;
    assert_eq!(
        sio.expect_event("error").await,
        json!({ "type": "error", "code": "invalid_payload", "message": "frame larger than 2048 bytes" })
    );
    assert_eq!(sio.expect_event("system").await, json!({ "message": "Invalid message payload." }));
    let close = sio.expect_closed(TIMEOUT).await.expect("a close frame");
    assert_eq!((close.code, close.reason.as_str()), (CloseCode::Size, "frame too large"));
}

// ---------------------------------------------------------------------------------------------
// Disconnect and heartbeat
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_closes_the_connection_and_leaves_the_rooms() {
    let node = sqlite_node(|_| {}).await;
    let alice = node.new_user("alice").await;
    let bob = node.new_user("bob").await;
    let mut a = Sio::connect(node.addr, &alice.token).await;
    a.join(1, "general").await;

    for (i, goodbye) in ["41", "1"].into_iter().enumerate() {
        let mut b = Sio::connect(node.addr, &bob.token).await;
        b.join(1, "general").await;
        assert_eq!(a.expect_event("system").await["event"], "join");
        b.send(goodbye).await;
        b.expect_closed(TIMEOUT).await;
        let left = a.expect_event("system").await;
        assert_eq!(
            left,
            json!({
                "type": "system", "room": "general", "event": "leave", "userId": bob.id, "email": bob.email,
                "name": bob.name, "message": format!("{} left general", bob.name),
            }),
            "after {goodbye:?}"
        );
        a.sync(10 + i as u64).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_answer_pings_is_closed_and_one_that_does_stays() {
    // The idle timeout is four ping intervals, so a client that answers is never cut off by a
    // busy machine delaying one pong.
    let node = sqlite_node(|c| {
        c.ws.ping_interval = HumanDuration(Duration::from_secs(1));
        c.ws.idle_timeout = HumanDuration(Duration::from_secs(4));
    })
    .await;
    let alice = node.new_user("alice").await;
    let bob = node.new_user("bob").await;

    let (mut silent, open) = Sio::open(node.addr).await;
    assert_eq!((&open["pingInterval"], &open["pingTimeout"]), (&json!(1000), &json!(3000)));
    silent.send(&format!("40{}", json!({ "token": alice.token }))).await;
    silent.expect_connected().await;
    let mut answering = Sio::connect(node.addr, &bob.token).await;
    answering.answer_pings = false;

    let silent_task = async move {
        // Pings come, then the close; well within a few intervals.
        let mut pings = 0;
        let close = loop {
            match tokio::time::timeout(TIMEOUT, silent.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "2" => pings += 1,
                Ok(Some(Ok(Message::Close(frame)))) => break frame,
                other => panic!("expected pings then a close, got {other:?}"),
            }
        };
        assert!(pings >= 1, "the server pinged before giving up");
        let close = close.expect("a close frame with a reason");
        assert_eq!((close.code, close.reason.as_str()), (CloseCode::Policy, "idle timeout"));
    };
    let answering_task = async move {
        // Six pings answered is well past the idle timeout.
        for _ in 0..6 {
            let frame = tokio::time::timeout(TIMEOUT, answering.text()).await.expect("a ping");
            assert_eq!(frame, "2");
            answering.send("3").await;
        }
        // Still connected and working (a ping may come in between now).
        answering.answer_pings = true;
        answering.sync(1).await;
        answering.join(2, "general").await;
    };
    tokio::join!(silent_task, answering_task);
}

// ---------------------------------------------------------------------------------------------
// Resume and cross-transport
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_with_since_resumes_over_socket_io() {
    let node = sqlite_node(|_| {}).await;
    let alice = node.new_user("alice").await;
    let bob = node.new_user("bob").await;
    let mut a = Sio::connect(node.addr, &alice.token).await;
    a.join(1, "general").await;
    let mut sent = Vec::new();
    for (i, content) in ["one", "two", "three", "four"].into_iter().enumerate() {
        let id = 2 + i as u64;
        a.emit(Some(id), "send_message", &json!({ "room": "general", "content": content })).await;
        a.ack(id).await;
        sent.push(a.expect_event("message").await);
    }

    // Bob saw up to seq 1 before his connection dropped.
    let mut b = Sio::connect(node.addr, &bob.token).await;
    b.emit(Some(1), "join_room", &json!({ "room": "general", "since": 1 })).await;
    assert_eq!(b.ack(1).await, json!({ "type": "ack", "room": "general", "seq": 4 }));
    assert_eq!(b.expect_event("system").await, json!({ "room": "general", "message": "You joined general" }));
    for expected in &sent[1..] {
        assert_eq!(&b.expect_event("message").await, expected, "missed messages in order, exactly once");
    }
    assert_eq!(a.expect_event("system").await["event"], "join");
    // Then live.
    let ack = a.send_message(10, "general", "five").await;
    assert_eq!(ack["seq"], 5);
    let live = b.expect_event("message").await;
    assert_eq!((&live["seq"], &live["content"]), (&json!(5), &json!("five")));
    b.sync(2).await;

    // since at the latest seq: nothing to catch up.
    let mut c = Sio::connect(node.addr, &bob.token).await;
    c.emit(Some(1), "join_room", &json!({ "room": "general", "since": 5 })).await;
    assert_eq!(c.ack(1).await, json!({ "type": "ack", "room": "general", "seq": 5 }));
    c.expect_event("system").await;
    c.sync(2).await;
}

/// Sends per client in the cross-transport test.
const ROUNDS: u64 = 10;

/// Socket.IO `message` events as a native client gets them: each one's `senderEmail` checked
/// against its sender and taken out.
fn as_native(events: &[Value], senders: &[&TestUser]) -> Vec<Value> {
    events
        .iter()
        .map(|m| {
            let mut m = m.clone();
            let email = m
                .as_object_mut()
                .and_then(|o| o.remove("senderEmail"))
                .unwrap_or_else(|| panic!("no senderEmail: {m}"));
            let sender = senders.iter().find(|u| m["senderId"] == u.id.as_str()).map(|u| u.email.as_str());
            assert_eq!(email.as_str(), sender, "{m}");
            m
        })
        .collect()
}

/// A Socket.IO client on node A and a native client on node B (PostgreSQL + Redis) see the same
/// messages in the same order; system and typing events cross transports and nodes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_and_native_clients_on_two_nodes_see_the_same_messages_in_the_same_order() {
    let Some((node_a, node_b)) = pg_redis_pair(|_| {}).await else { return };
    let alice = node_a.new_user("alice").await;
    let bob = node_b.new_user("bob").await;
    let carol = node_b.new_user("carol").await;

    let mut sio = Sio::connect(node_a.addr, &alice.token).await;
    sio.join(1, "general").await;
    let mut native = NativeClient::connect(node_b.addr, &bob).await;
    native.send(&json!({ "type": "join_room", "room": "general", "ref": "j" })).await;
    assert_eq!(native.expect("ack").await, json!({ "type": "ack", "ref": "j", "room": "general", "seq": 0 }));
    let joined = sio.expect_event("system").await;
    assert_eq!(joined["message"], format!("{} joined general", bob.name));
    assert_eq!(joined["userId"], bob.id.as_str());
    // A second Socket.IO client, on node B.
    let mut sio_b = Sio::connect(node_b.addr, &carol.token).await;
    sio_b.join(1, "general").await;
    assert_eq!(sio.expect_event("system").await["email"], carol.email.as_str());
    // Alice's join, made on node A, may reach node B after bob's own: events of different nodes
    // have no order (PROTOCOL.md). Carol's, made on node B, comes after bob's.
    let late_join = |frame: &Value| frame["event"] == "join" && frame["userId"] == alice.id.as_str();
    let carol_joined = native.expect_except("system", late_join).await;
    assert_eq!((&carol_joined["name"], carol_joined.get("email")), (&json!(carol.name), None), "native: no address");

    // Interleaved sends from both transports on both nodes, without waiting for acks.
    for i in 0..ROUNDS {
        sio.emit(Some(100 + i), "send_message", &json!({ "room": "general", "content": format!("sio {i}") })).await;
        native
            .send(&json!({ "type": "send_message", "room": "general", "content": format!("native {i}"), "ref": i.to_string() }))
            .await;
        sio_b.emit(None, "send_message", &json!({ "room": "general", "content": format!("carol {i}") })).await;
    }
    let total = usize::try_from(ROUNDS * 3).expect("small");
    let mut from_sio = Vec::new();
    let mut sio_acks = Vec::new();
    while from_sio.len() < total {
        let text = sio.text().await;
        if text.starts_with("43") {
            sio_acks.push(text);
            continue;
        }
        let (name, payload) = {
            let v: Value = serde_json::from_str(text.strip_prefix("42").expect("an event")).expect("JSON");
            (v[0].as_str().expect("name").to_owned(), v[1].clone())
        };
        assert_eq!(name, "message", "{text}");
        from_sio.push(payload);
    }
    let mut from_native = Vec::new();
    let mut native_acks = 0;
    while from_native.len() < total {
        let frame = native.recv().await;
        match frame["type"].as_str() {
            Some("ack") => native_acks += 1,
            Some("message") => from_native.push(frame),
            Some("system") if late_join(&frame) => {}
            _ => panic!("unexpected frame {frame}"),
        }
    }
    let mut from_sio_b = Vec::new();
    while from_sio_b.len() < total {
        // Carol, on node B, may likewise hear of alice's join (node A) late.
        match sio_b.event().await {
            (name, payload) if name == "message" => from_sio_b.push(payload),
            (name, payload) if name == "system" && late_join(&payload) => {}
            (name, payload) => panic!("unexpected event {name} {payload}"),
        }
    }
    // A sender's ack is queued before its message is published, so every ack came first.
    assert_eq!(sio_acks.len(), usize::try_from(ROUNDS).expect("small"), "{sio_acks:?}");
    assert_eq!(native_acks, ROUNDS);
    let seqs: Vec<i64> = from_sio.iter().map(|m| m["seq"].as_i64().expect("seq")).collect();
    assert_eq!(seqs, (1..=i64::try_from(total).expect("small")).collect::<Vec<_>>(), "gapless, in order");
    // Socket.IO events are the native ones plus the sender's address, for the original clients.
    let without_email = as_native(&from_sio, &[&alice, &bob, &carol]);
    assert_eq!(without_email, from_native, "the same events, in the same order");
    assert_eq!(from_sio, from_sio_b);
    // Each sender's own messages are in its send order.
    for prefix in ["sio ", "native ", "carol "] {
        let mine: Vec<&str> =
            from_sio.iter().filter_map(|m| m["content"].as_str()).filter(|c| c.starts_with(prefix)).collect();
        let expected: Vec<String> = (0..ROUNDS).map(|i| format!("{prefix}{i}")).collect();
        assert_eq!(mine, expected);
    }
    // Alice's acks name seqs of her own messages.
    for ack in &sio_acks {
        let (id, rest) = ack[2..].split_at(ack[2..].find('[').expect("ack data"));
        let reply: Value = serde_json::from_str::<Value>(rest).expect("JSON")[0].clone();
        let msg = &from_sio[usize::try_from(reply["seq"].as_i64().expect("seq") - 1).expect("seq ≥ 1")];
        assert_eq!((&msg["id"], &msg["senderId"]), (&reply["id"], &json!(alice.id)), "ack {id}");
    }

    // typing from the native client reaches the Socket.IO clients, not the typist.
    native.send(&json!({ "type": "typing", "room": "general" })).await;
    let expected =
        json!({ "type": "typing", "room": "general", "userId": bob.id, "email": bob.email, "name": bob.name });
    assert_eq!(sio.expect_event("typing").await, expected);
    assert_eq!(sio_b.expect_event("typing").await, expected);

    // message events only for rooms the socket joined.
    native.send(&json!({ "type": "join_room", "room": "random", "ref": "r" })).await;
    assert_eq!(native.expect("ack").await["room"], "random");
    native.send(&json!({ "type": "send_message", "room": "random", "content": "elsewhere", "ref": "x" })).await;
    assert_eq!(native.expect("ack").await["seq"], 1);
    assert_eq!(native.expect("message").await["room"], "random");
    native.send(&json!({ "type": "send_message", "room": "general", "content": "back", "ref": "y" })).await;
    native.expect("ack").await;
    let back = sio.expect_event("message").await;
    assert_eq!((&back["room"], &back["content"]), (&json!("general"), &json!("back")));
    assert_eq!(sio_b.expect_event("message").await, back);

    assert_eq!([native.expect("message").await], *as_native(&[back], &[&bob]));
    a_socketio_disconnect_is_a_leave_elsewhere(sio_b, &mut sio, &mut native, &carol).await;
}

/// `carol`'s Socket.IO client (`gone`, on node B) disconnects: the native client (node B) and
/// the other Socket.IO client (node A) hear her leave.
async fn a_socketio_disconnect_is_a_leave_elsewhere(
    mut gone: Sio,
    sio: &mut Sio,
    native: &mut NativeClient,
    carol: &TestUser,
) {
    gone.send("41").await;
    gone.expect_closed(TIMEOUT).await;
    let left = native.expect("system").await;
    assert_eq!((&left["event"], &left["name"], left.get("email")), (&json!("leave"), &json!(carol.name), None));
    let mut sio_left = left.clone();
    sio_left["email"] = json!(carol.email);
    assert_eq!(sio.expect_event("system").await, sio_left, "the same event, with the address for Socket.IO");
}

// ---------------------------------------------------------------------------------------------
// The real socket.io-client (tests/interop/)
// ---------------------------------------------------------------------------------------------

/// Runs `node --test` in tests/interop/ against two nodes sharing PostgreSQL and Redis: the
/// real `socket.io-client` and `ws` npm packages, written as the original platform's clients
/// were. Skipped (saying why) when `node` or `npm ci --prefix tests/interop` is missing, unless
/// `CONFAB_TEST_REQUIRE_SERVICES=1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_with_the_real_socket_io_client() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let required = std::env::var("CONFAB_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
    let node_version = std::process::Command::new("node").arg("--version").output();
    let missing = match &node_version {
        Err(e) => Some(format!("`node` cannot run: {e}")),
        Ok(out) if !out.status.success() => Some("`node --version` failed".to_owned()),
        Ok(_) if !dir.join("node_modules/socket.io-client").is_dir() || !dir.join("node_modules/ws").is_dir() => {
            Some(format!("{}/node_modules is missing: run `npm ci --prefix tests/interop`", dir.display()))
        }
        Ok(_) => None,
    };
    if let Some(why) = missing {
        assert!(!required, "{why} (CONFAB_TEST_REQUIRE_SERVICES=1)");
        eprintln!("skipping: {why}");
        return;
    }
    // A short heartbeat, so the suite sees the real client answer the server's pings; the idle
    // timeout is four intervals, so a pong delayed by a busy machine does not cut it off.
    let Some((node_a, node_b)) = pg_redis_pair(|c| {
        c.ws.ping_interval = HumanDuration(Duration::from_secs(1));
        c.ws.idle_timeout = HumanDuration(Duration::from_secs(4));
    })
    .await
    else {
        return;
    };
    let users = [node_a.new_user("alice").await, node_b.new_user("bob").await, node_b.new_user("carol").await];

    let mut cmd = tokio::process::Command::new("node");
    cmd.arg("--test")
        .arg("--test-reporter=spec")
        .arg(dir.join("socketio.test.mjs"))
        .current_dir(&dir)
        .env("CONFAB_URLS", format!("http://{},http://{}", node_a.addr, node_b.addr))
        .env("CONFAB_EMAILS", users.iter().map(|u| u.email.as_str()).collect::<Vec<_>>().join(","))
        .env("CONFAB_PASSWORD", PASSWORD)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("spawn node");
    let out = tokio::time::timeout(NODE_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("node --test did not finish within {NODE_TIMEOUT:?} (killed)"))
        .expect("waiting for node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "node --test failed ({}):\n{stdout}\n{stderr}", out.status);
    // node:test exits 0 when every test was skipped: make sure they ran. The summary's lines
    // are `ℹ pass 10` (spec reporter) or `# pass 10` (TAP).
    let count = |key: &str| {
        stdout.lines().find_map(|l| l.trim_start_matches(['ℹ', '#', ' ']).strip_prefix(key)?.trim().parse::<u32>().ok())
    };
    assert!(count("pass ").is_some_and(|n| n > 0), "no interop test ran:\n{stdout}\n{stderr}");
    assert_eq!(count("skipped "), Some(0), "an interop test was skipped:\n{stdout}\n{stderr}");
    eprintln!("{stdout}");
}

/// PROTOCOL.md's order of `system` events over Socket.IO, with every core busy: 16 users join a
/// room one after another, each as soon as the previous one's ack is in, and send at once; then
/// each leaves in turn. The observer (on `observer_node`; the joiners are all on
/// `joiner_node`) must hear joins and leaves in ack order and each message after its sender's
/// join, in each of three rooms.
async fn joins_and_leaves_in_ack_order(observer_node: &TestNode, joiner_node: &TestNode) {
    const JOINERS: usize = 16;
    let mut observer = Sio::connect(observer_node.addr, &observer_node.new_user("observer").await.token).await;
    let mut joiners = Vec::with_capacity(JOINERS);
    for i in 0..JOINERS {
        let user = joiner_node.new_user(&format!("joiner{i}")).await;
        joiners.push((Sio::connect(joiner_node.addr, &user.token).await, user));
    }
    let mut ack_id = 0;
    for room in ["lobby-1", "lobby-2", "lobby-3"] {
        ack_id += 1;
        observer.join(ack_id, room).await;
        let load = common::CpuLoad::start();
        for (i, (sio, _)) in joiners.iter_mut().enumerate() {
            ack_id += 1;
            sio.emit(Some(ack_id), "join_room", &json!({ "room": room })).await;
            let ack = sio.ack_after_events(ack_id).await;
            assert_eq!((&ack["type"], &ack["room"]), (&json!("ack"), &json!(room)), "{ack}");
            sio.emit(None, "send_message", &json!({ "room": room, "content": format!("hi from {i}") })).await;
        }
        for (sio, _) in &mut joiners {
            ack_id += 1;
            sio.emit(Some(ack_id), "leave_room", &json!({ "room": room })).await;
            let ack = sio.ack_after_events(ack_id).await;
            assert_eq!((&ack["type"], &ack["room"]), (&json!("ack"), &json!(room)), "{ack}");
        }
        drop(load);

        let index = |user: &Value| joiners.iter().position(|(_, u)| user.as_str() == Some(u.id.as_str()));
        let mut seen: Vec<(&'static str, usize)> = Vec::with_capacity(3 * JOINERS);
        while seen.len() < 3 * JOINERS {
            let (name, payload) = observer.event().await;
            let (kind, user) = match name.as_str() {
                "system" if payload["event"] == "join" => ("join", &payload["userId"]),
                "system" if payload["event"] == "leave" => ("leave", &payload["userId"]),
                "message" => ("message", &payload["senderId"]),
                _ => continue,
            };
            assert_eq!(payload["room"], room, "{name} {payload}");
            seen.push((kind, index(user).unwrap_or_else(|| panic!("a stranger in {name} {payload}"))));
        }
        let order = |kind: &str| -> Vec<usize> { seen.iter().filter(|(k, _)| *k == kind).map(|&(_, j)| j).collect() };
        let in_sequence: Vec<usize> = (0..JOINERS).collect();
        assert_eq!(order("join"), in_sequence, "{room}: joins out of ack order; everything: {seen:?}");
        assert_eq!(order("leave"), in_sequence, "{room}: leaves out of ack order; everything: {seen:?}");
        for j in 0..JOINERS {
            let at = |kind: &str| seen.iter().position(|&s| s == (kind, j));
            assert!(at("message").is_some(), "{room}: no message from joiner {j}: {seen:?}");
            assert!(at("join") < at("message"), "{room}: joiner {j}'s message before its join: {seen:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_leaves_are_heard_in_ack_order_on_a_busy_node() {
    let node = sqlite_node(|_| {}).await;
    joins_and_leaves_in_ack_order(&node, &node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_from_one_node_are_heard_in_ack_order_on_another() {
    let Some((a, b)) = pg_redis_pair(|_| {}).await else { return };
    joins_and_leaves_in_ack_order(&a, &b).await;
    joins_and_leaves_in_ack_order(&b, &b).await;
}
