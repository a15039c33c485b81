//! `spawn_app`: the real confab `App`, built in-process on port 0 with a fresh database, and
//! a `TestApp` that speaks its REST API the way a client does.
//!
//! Tests get cheap argon2 parameters, no auth rate limit and a known JWT key unless they say
//! otherwise in `spawn_app_with`. Every request has a timeout, so a hung server fails the test
//! instead of hanging it.
//!
//! `TestSocket` speaks the native WebSocket protocol (`/ws`) the way a client does: `join`,
//! `send`, `next_message`, `expect_error`. Every receive has a deadline, so a frame that never
//! comes fails the test instead of hanging it.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use confab::Config;
use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::{net::TcpStream, time::Instant};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message, client::IntoClientRequest as _, http::HeaderValue},
};

pub use crate::common::{Backend, ClusterSpec, PASSWORD, TestDb, TestRedis, spawn_cluster};
use crate::common::{TestNode, node_config};

/// Upper bound on one HTTP request, and on the app's start and stop.
pub const TIMEOUT: Duration = crate::common::APP_TIMEOUT;

/// The app under test: the shared in-process node, spoken to by the methods below.
pub type TestApp = TestNode;

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
    /// The session in a register or login answer.
    pub fn from_register(body: Value) -> Self {
        Self::from_body(body)
    }

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

    /// The display name rooms show: the one registered with, else the address's local part.
    pub fn name(&self) -> &str {
        self.body["user"]["displayName"].as_str().expect("user.displayName")
    }
}

/// The configuration every test app starts from: [`node_config`] (loopback port 0, cheap
/// hashing, no auth rate limit, a known JWT key, so tests can forge tokens) on `db`, as node
/// `test-node`.
pub fn test_config(db: &TestDb) -> Config {
    let mut cfg = node_config(db, None);
    cfg.node_id = Some("test-node".into());
    cfg
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
/// nodes given the same `db` and `redis` (and JWT key) form a cluster.
pub async fn spawn_node(
    db: Arc<TestDb>,
    redis: Option<Arc<TestRedis>>,
    configure: impl FnOnce(&mut Config),
) -> TestApp {
    TestNode::spawn(db, redis, |cfg| {
        cfg.node_id = Some("test-node".into());
        configure(cfg);
    })
    .await
}

impl TestApp {
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

/// A single chat node for a test on `backend`: SQLite with the in-process bus, or PostgreSQL
/// with the Redis bus (when `CONFAB_TEST_REDIS_URL` is set), so the single-node tests cover both
/// fan-out paths. Chat rate limits are off unless `configure` sets them.
pub async fn spawn_chat_node(backend: Backend, configure: impl FnOnce(&mut Config)) -> TestApp {
    let db = Arc::new(TestDb::create(backend).await);
    let redis = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => TestRedis::from_env().map(Arc::new),
    };
    spawn_node(db, redis, |cfg| {
        cfg.limits.messages_per_second = 0;
        configure(cfg);
    })
    .await
}

/// Upper bound on waiting for one WebSocket frame (generous: the test machine is small and busy).
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(15);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The answer to a `send_message`: where the message was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendAck {
    pub id: String,
    pub seq: i64,
}

/// A `message` frame, its fields checked to have the protocol's types.
#[derive(Debug, Clone)]
pub struct Msg {
    pub id: String,
    pub room: String,
    pub seq: i64,
    pub sender_id: String,
    /// The sender's display name (native frames carry no email).
    pub sender_name: String,
    pub content: String,
    pub created_at: String,
    pub client_id: Option<String>,
    /// The frame as received.
    pub raw: Value,
}

impl Msg {
    pub fn parse(frame: Value) -> Self {
        let text = |key: &str| {
            frame[key].as_str().unwrap_or_else(|| panic!("message frame without a string {key}: {frame}")).to_owned()
        };
        assert_eq!(frame["type"], "message", "not a message: {frame}");
        let allowed = [
            "type",
            "id",
            "room",
            "seq",
            "senderId",
            "senderName",
            "content",
            "createdAt",
            "clientId",
            "deletedAt",
            "editedAt",
            "mentions",
            "mentionsAll",
        ];
        let keys = frame.as_object().expect("a frame is an object").keys();
        for key in keys {
            assert!(allowed.contains(&key.as_str()), "unexpected field {key} in {frame}");
        }
        let msg = Self {
            id: text("id"),
            room: text("room"),
            seq: frame["seq"].as_i64().unwrap_or_else(|| panic!("message without a numeric seq: {frame}")),
            sender_id: text("senderId"),
            sender_name: text("senderName"),
            content: text("content"),
            created_at: text("createdAt"),
            client_id: frame.get("clientId").map(|_| text("clientId")),
            raw: Value::Null,
        };
        assert!(uuid::Uuid::parse_str(&msg.id).is_ok(), "id is a UUID: {frame}");
        assert!(chrono::DateTime::parse_from_rfc3339(&msg.created_at).is_ok(), "createdAt is RFC 3339: {frame}");
        Self { raw: frame, ..msg }
    }
}

/// Frames a helper looking for one kind of frame passes over (and keeps for `next_frame`).
fn is_noise(frame: &Value) -> bool {
    matches!(frame["type"].as_str(), Some("ping" | "pong" | "typing" | "system"))
}

/// A WebSocket request for `app`'s `/ws`, with `Authorization: Bearer <token>` if given.
pub fn ws_request(app: &TestApp, token: Option<&str>) -> tungstenite::handshake::client::Request {
    let mut req = format!("ws://{}/ws", app.addr).into_client_request().expect("a valid WebSocket URL");
    if let Some(token) = token {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).expect("a token is a header value");
        req.headers_mut().insert("authorization", value);
    }
    req
}

/// Connects with `req` and asserts the server refuses the upgrade; returns the status.
pub async fn ws_refused(req: tungstenite::handshake::client::Request) -> StatusCode {
    let what = format!("{} {:?}", req.uri(), req.headers().keys().collect::<Vec<_>>());
    let Ok(result) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(req)).await else {
        panic!("{what}: the handshake timed out")
    };
    match result {
        Ok(_) => panic!("{what}: the upgrade was accepted"),
        Err(tungstenite::Error::Http(resp)) => resp.status(),
        Err(e) => panic!("{what}: expected an HTTP refusal, got {e}"),
    }
}

/// How a connection ended, as [`TestSocket::until_closed`] saw it.
#[derive(Debug)]
pub struct Ended {
    /// Text frames received before the end.
    pub frames: Vec<Value>,
    /// The server's close frame, if one arrived.
    pub close: Option<tungstenite::protocol::CloseFrame>,
    /// The read error that ended the connection instead, if any.
    pub error: Option<String>,
}

/// A native-protocol client. Frames read while a helper looks for something else are kept, in
/// order, and handed out first by the next helper that wants them.
pub struct TestSocket {
    ws: Ws,
    /// The `hello` frame, checked.
    pub hello: Value,
    pub user_id: String,
    pub email: String,
    /// The node the server said this connection is on.
    pub node: String,
    refs: u64,
    buffered: VecDeque<Value>,
    /// Whether `presence` frames are kept. They come on the server's own schedule, so tests
    /// that check exact sequences of frames never see them; the presence tests ask for them.
    presence: bool,
}

impl TestSocket {
    /// From now on, `presence` frames are handed out like the others.
    pub fn watch_presence(&mut self) {
        self.presence = true;
    }

    fn is_dropped(&self, text: &str) -> bool {
        !self.presence && text.starts_with(r#"{"type":"presence""#)
    }

    /// Connects to `/ws` with a bearer token; the server's `hello` must be the first frame.
    pub async fn connect(app: &TestApp, token: &str) -> Self {
        Self::connect_request(ws_request(app, Some(token))).await
    }

    /// Connects like a browser on `origin` would.
    pub async fn connect_with_origin(app: &TestApp, token: &str, origin: &str) -> Self {
        let mut req = ws_request(app, Some(token));
        req.headers_mut().insert("origin", HeaderValue::from_str(origin).expect("an origin is a header value"));
        Self::connect_request(req).await
    }

    pub async fn connect_request(req: tungstenite::handshake::client::Request) -> Self {
        let mut socket = Self::upgrade(req).await;
        let hello = socket.next_frame().await;
        Self::greeted(socket, hello)
    }

    /// Connects to `/ws` with a bearer token and expects the upgrade, but nothing after it:
    /// for sessions the server refuses once upgraded.
    pub async fn connect_unchecked(app: &TestApp, token: &str) -> Self {
        Self::upgrade(ws_request(app, Some(token))).await
    }

    /// Connects to `/ws` from the loopback address `source` (say 127.0.0.2), as a client on
    /// another machine would, and expects `hello`.
    pub async fn connect_from(app: &TestApp, token: &str, source: std::net::IpAddr) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.bind(std::net::SocketAddr::new(source, 0)).expect("bind the source address");
        let stream = tokio::time::timeout(TIMEOUT, socket.connect(app.addr)).await.expect("connect in time");
        let stream = stream.expect("connect");
        let req = ws_request(app, Some(token));
        let Ok(result) =
            tokio::time::timeout(TIMEOUT, tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))).await
        else {
            panic!("the handshake timed out")
        };
        let (ws, resp) = result.unwrap_or_else(|e| panic!("the upgrade failed: {e}"));
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        let mut socket = Self::over(ws);
        let hello = socket.next_frame().await;
        Self::greeted(socket, hello)
    }

    /// The upgrade alone: 101 is required.
    async fn upgrade(req: tungstenite::handshake::client::Request) -> Self {
        let uri = req.uri().clone();
        let Ok(result) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(req)).await else {
            panic!("{uri}: the handshake timed out")
        };
        let (ws, resp) = result.unwrap_or_else(|e| panic!("{uri}: the upgrade failed: {e}"));
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        Self::over(ws)
    }

    /// A client over an upgraded connection, before its `hello`.
    fn over(ws: Ws) -> Self {
        Self {
            ws,
            hello: Value::Null,
            user_id: String::new(),
            email: String::new(),
            node: String::new(),
            refs: 0,
            buffered: VecDeque::new(),
            presence: false,
        }
    }

    fn greeted(socket: Self, hello: Value) -> Self {
        assert_eq!(hello["type"], "hello", "the first frame is hello: {hello}");
        let mut keys: Vec<&str> = hello.as_object().expect("object").keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["messageMaxLen", "node", "type", "user"], "{hello}");
        assert!(hello["messageMaxLen"].as_u64().is_some_and(|n| n > 0), "{hello}");
        let mut user_keys: Vec<&str> =
            hello["user"].as_object().expect("user object").keys().map(String::as_str).collect();
        user_keys.sort_unstable();
        assert_eq!(user_keys, ["displayName", "email", "id"], "{hello}");
        Self {
            user_id: hello["user"]["id"].as_str().expect("user.id").to_owned(),
            email: hello["user"]["email"].as_str().expect("user.email").to_owned(),
            node: hello["node"].as_str().expect("node").to_owned(),
            hello,
            ..socket
        }
    }

    /// `email on node`, for failure messages.
    pub fn who(&self) -> String {
        format!("{} on {}", self.email, self.node)
    }

    /// A fresh `ref` for a command.
    pub fn new_ref(&mut self) -> String {
        self.refs += 1;
        format!("r{}", self.refs)
    }

    /// Sends `frame` as one text frame, as it is.
    pub async fn send_json(&mut self, frame: &Value) {
        self.send_text(&frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.write(Message::text(text)).await;
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.write(Message::binary(bytes)).await;
    }

    /// Sends a text frame whose payload is `bytes` as they are (valid UTF-8 or not).
    pub async fn send_raw_text(&mut self, bytes: Vec<u8>) {
        use tungstenite::protocol::frame::{
            Frame,
            coding::{Data, OpCode},
        };
        self.write(Message::Frame(Frame::message(bytes, OpCode::Data(Data::Text), true))).await;
    }

    async fn write(&mut self, message: Message) {
        let Ok(result) = tokio::time::timeout(FRAME_TIMEOUT, self.ws.send(message)).await else {
            panic!("{}: writing a frame timed out", self.who())
        };
        if let Err(e) = result {
            panic!("{}: writing a frame failed: {e}", self.who());
        }
    }

    /// Sends `frame` with a fresh `ref` and returns that ref, without waiting for the answer.
    pub async fn submit(&mut self, mut frame: Value) -> String {
        let r = self.new_ref();
        frame["ref"] = json!(r);
        self.send_json(&frame).await;
        r
    }

    /// Sends `frame` with a fresh `ref` and returns the `ack`, `error` or `pong` carrying it.
    pub async fn request(&mut self, frame: Value) -> Value {
        let r = self.submit(frame).await;
        self.reply(&r).await
    }

    /// The `ack`, `error` or `pong` carrying `cmd_ref`. Every other frame before it is kept.
    pub async fn reply(&mut self, cmd_ref: &str) -> Value {
        self.take(
            &format!("the reply to {cmd_ref}"),
            |f| matches!(f["type"].as_str(), Some("ack" | "error" | "pong")) && f["ref"] == cmd_ref,
            |_| true,
        )
        .await
    }

    /// Sends `frame` and asserts it is answered with an error of `code`, its ref echoed.
    pub async fn request_error(&mut self, frame: Value, code: &str) -> Value {
        let what = frame.to_string();
        let r = self.submit(frame).await;
        let reply = self.reply(&r).await;
        assert_error(&reply, code, Some(&r), &what);
        reply
    }

    /// `join_room`; returns the ack's seq (the room's latest).
    pub async fn join(&mut self, room: &str) -> i64 {
        let ack = self.request(json!({ "type": "join_room", "room": room })).await;
        expect_join_ack(&ack, room)
    }

    /// `join_room` with `since`; returns the ack's seq. The missed messages follow.
    pub async fn join_since(&mut self, room: &str, since: i64) -> i64 {
        let ack = self.request(json!({ "type": "join_room", "room": room, "since": since })).await;
        expect_join_ack(&ack, room)
    }

    /// `leave_room`; asserts the ack `{ref, room}`.
    pub async fn leave(&mut self, room: &str) {
        let r = self.submit(json!({ "type": "leave_room", "room": room })).await;
        let ack = self.reply(&r).await;
        assert_eq!(ack, json!({ "type": "ack", "ref": r, "room": room }), "leave_room {room}");
    }

    /// `send_message`; returns the ack `{id, seq}`.
    pub async fn send(&mut self, room: &str, content: &str) -> SendAck {
        let ack = self.request(json!({ "type": "send_message", "room": room, "content": content })).await;
        parse_send_ack(&ack)
    }

    /// `send_message` with an idempotency key.
    pub async fn send_with_client_id(&mut self, room: &str, content: &str, client_id: &str) -> SendAck {
        let frame = json!({ "type": "send_message", "room": room, "content": content, "clientId": client_id });
        let ack = self.request(frame).await;
        parse_send_ack(&ack)
    }

    /// `send_message` without waiting: returns the ref to pass to [`TestSocket::send_ack`].
    pub async fn submit_send(&mut self, room: &str, content: &str) -> String {
        self.submit(json!({ "type": "send_message", "room": room, "content": content })).await
    }

    /// The ack to an earlier [`TestSocket::submit_send`].
    pub async fn send_ack(&mut self, cmd_ref: &str) -> SendAck {
        parse_send_ack(&self.reply(cmd_ref).await)
    }

    /// `ping`; asserts the `pong` carries the ref.
    pub async fn ping(&mut self) {
        let r = self.submit(json!({ "type": "ping" })).await;
        let pong = self.reply(&r).await;
        assert_eq!(pong, json!({ "type": "pong", "ref": r }));
    }

    /// `typing` (the server answers nothing).
    pub async fn typing(&mut self, room: &str) {
        self.send_json(&json!({ "type": "typing", "room": room })).await;
    }

    /// The next frame of any kind.
    pub async fn next_frame(&mut self) -> Value {
        if let Some(frame) = self.buffered.pop_front() {
            return frame;
        }
        self.read_frame(Instant::now() + FRAME_TIMEOUT).await
    }

    /// The next frame of type `kind`, passing over (and keeping) ping/pong/typing/system frames;
    /// any other frame before it fails the test.
    pub async fn next_of_type(&mut self, kind: &str) -> Value {
        self.take(&format!("a {kind} frame"), |f| f["type"] == kind, is_noise).await
    }

    /// The next `message`, passing over (and keeping) ping/pong/typing/system frames.
    pub async fn next_message(&mut self) -> Msg {
        Msg::parse(self.next_of_type("message").await)
    }

    /// The next `n` messages.
    pub async fn messages(&mut self, n: usize) -> Vec<Msg> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next_message().await);
        }
        out
    }

    /// The next `error` frame, which must have `code`.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let frame = self.next_of_type("error").await;
        assert_eq!(frame["code"], code, "{}: {frame}", self.who());
        assert!(frame["message"].as_str().is_some_and(|m| !m.is_empty()), "an error says why: {frame}");
        frame
    }

    /// Asserts that nothing at all arrives within `within` (and nothing is kept unread).
    /// Only for asserting absence: keep `within` short.
    pub async fn expect_no_frame_within(&mut self, within: Duration) {
        assert!(self.buffered.is_empty(), "{}: unread frames {:?}", self.who(), self.buffered);
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                Ok(Some(Ok(Message::Text(text)))) if self.is_dropped(&text) => {}
                Ok(other) => panic!("{}: expected nothing, got {other:?}", self.who()),
            }
        }
    }

    /// Reads until the server's close frame, which must have `code`; returns the text frames
    /// that came before it (kept ones first).
    pub async fn expect_close(&mut self, code: u16) -> Vec<Value> {
        let ended = self.until_closed().await;
        let close = ended.close.unwrap_or_else(|| {
            panic!(
                "{}: the connection ended without a close frame ({:?}); frames {:?}",
                self.who(),
                ended.error,
                ended.frames
            )
        });
        assert_eq!(u16::from(close.code), code, "{}: close frame {close:?}", self.who());
        ended.frames
    }

    /// Reads until the connection ends: the text frames before the end, and the close frame if
    /// the server sent one (or why the connection just dropped).
    pub async fn until_closed(&mut self) -> Ended {
        let mut frames: Vec<Value> = self.buffered.drain(..).collect();
        let deadline = Instant::now() + FRAME_TIMEOUT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{}: the connection was not closed in time", self.who()));
            match next {
                Some(Ok(Message::Text(text))) if self.is_dropped(&text) => {}
                Some(Ok(Message::Text(text))) => frames.push(parse_frame(&text)),
                Some(Ok(Message::Close(close))) => return Ended { frames, close, error: None },
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(other)) => panic!("{}: unexpected frame {other:?}", self.who()),
                Some(Err(e)) => return Ended { frames, close: None, error: Some(e.to_string()) },
                None => return Ended { frames, close: None, error: None },
            }
        }
    }

    /// Closes the connection from the client side and waits for the server to finish it.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(FRAME_TIMEOUT, self.ws.close(None)).await;
        let deadline = Instant::now() + FRAME_TIMEOUT;
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.ws.next()).await {}
    }

    /// The next frame that is not the `system` join of one of `earlier` in `room`. A member that
    /// joined on another node just before this one may be announced here late: events of
    /// different nodes have no order (PROTOCOL.md), so such a join can follow this socket's own.
    pub async fn next_frame_after_late_joins(&mut self, room: &str, earlier: &[&Session]) -> Value {
        loop {
            let frame = self.next_frame().await;
            if !is_join_of(&frame, room, earlier) {
                return frame;
            }
        }
    }

    /// Forgets kept frames that are late `system` joins of `earlier` in `room` (see
    /// [`TestSocket::next_frame_after_late_joins`]).
    pub fn drop_late_joins(&mut self, room: &str, earlier: &[&Session]) {
        self.buffered.retain(|f| !is_join_of(f, room, earlier));
    }

    /// Frames read but not yet handed out.
    pub fn unread(&self) -> &VecDeque<Value> {
        &self.buffered
    }

    /// The first frame (kept or new) that `wanted` accepts. Frames before it must satisfy
    /// `keep` (they stay, in order, for later helpers); anything else fails the test.
    async fn take(&mut self, what: &str, wanted: impl Fn(&Value) -> bool, keep: impl Fn(&Value) -> bool) -> Value {
        for i in 0..self.buffered.len() {
            if wanted(&self.buffered[i]) {
                return self.buffered.remove(i).expect("index in range");
            }
            assert!(keep(&self.buffered[i]), "{}: waiting for {what}, got {}", self.who(), self.buffered[i]);
        }
        let deadline = Instant::now() + FRAME_TIMEOUT;
        loop {
            let frame = self.read_frame_for(deadline, what).await;
            if wanted(&frame) {
                return frame;
            }
            assert!(keep(&frame), "{}: waiting for {what}, got {frame}", self.who());
            self.buffered.push_back(frame);
        }
    }

    async fn read_frame(&mut self, deadline: Instant) -> Value {
        self.read_frame_for(deadline, "a frame").await
    }

    async fn read_frame_for(&mut self, deadline: Instant, what: &str) -> Value {
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next()).await.unwrap_or_else(|_| {
                panic!("{}: no {what} within {FRAME_TIMEOUT:?}; unread: {:?}", self.who(), self.buffered)
            });
            match next {
                Some(Ok(Message::Text(text))) if self.is_dropped(&text) => {}
                Some(Ok(Message::Text(text))) => return parse_frame(&text),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(frame))) => {
                    panic!("{}: closed by the server ({frame:?}) while waiting for {what}", self.who())
                }
                Some(Ok(other)) => panic!("{}: unexpected frame {other:?}", self.who()),
                Some(Err(e)) => panic!("{}: connection failed while waiting for {what}: {e}", self.who()),
                None => panic!("{}: connection ended while waiting for {what}", self.who()),
            }
        }
    }
}

fn parse_frame(text: &str) -> Value {
    let frame: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("a frame that is not JSON ({e}): {text}"));
    assert!(frame["type"].is_string(), "a frame without a type: {frame}");
    frame
}

fn expect_join_ack(ack: &Value, room: &str) -> i64 {
    assert_eq!(ack["type"], "ack", "join_room {room}: {ack}");
    assert_eq!(ack["room"], room, "{ack}");
    let mut keys: Vec<&str> = ack.as_object().expect("object").keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["ref", "room", "seq", "type"], "{ack}");
    ack["seq"].as_i64().unwrap_or_else(|| panic!("a join ack has a numeric seq: {ack}"))
}

fn parse_send_ack(ack: &Value) -> SendAck {
    assert_eq!(ack["type"], "ack", "send_message: {ack}");
    let mut keys: Vec<&str> = ack.as_object().expect("object").keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["id", "ref", "seq", "type"], "{ack}");
    let id = ack["id"].as_str().expect("id").to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{ack}");
    SendAck { id, seq: ack["seq"].as_i64().expect("seq") }
}

/// Asserts `frame` is an `error` with `code`, a message, and `cmd_ref` (or no ref).
pub fn assert_error(frame: &Value, code: &str, cmd_ref: Option<&str>, what: &str) {
    assert_eq!(frame["type"], "error", "{what}: {frame}");
    assert_eq!(frame["code"], code, "{what}: {frame}");
    assert!(frame["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: an error says why: {frame}");
    match cmd_ref {
        Some(r) => assert_eq!(frame["ref"], r, "{what}: {frame}"),
        None => assert!(frame.get("ref").is_none(), "{what}: {frame}"),
    }
}

/// The seqs of `msgs`, for exact comparisons.
pub fn seqs_of(msgs: &[Msg]) -> Vec<i64> {
    msgs.iter().map(|m| m.seq).collect()
}

/// Every message of `room` in the store, oldest first (paged like a resuming client).
pub async fn stored_messages(app: &TestApp, room: &str) -> Vec<confab::domain::Message> {
    let room = confab::domain::RoomName::parse(room).expect("a valid room");
    let mut all = Vec::new();
    loop {
        let after = all.last().map_or(0, |m: &confab::domain::Message| m.seq);
        let page = tokio::time::timeout(TIMEOUT, app.state.store.messages_after(&room, after, 200))
            .await
            .expect("reading messages timed out")
            .expect("reading messages");
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// Whether `frame` is the `system` join of one of `users` in `room`.
fn is_join_of(frame: &Value, room: &str, users: &[&Session]) -> bool {
    frame["type"] == "system"
        && frame["event"] == "join"
        && frame["room"] == room
        && users.iter().any(|u| frame["userId"] == u.user_id.as_str())
}

/// `GET /api/rooms`' answer with only each room's name, latest seq and live member count.
pub fn room_counts(rooms: &Value) -> Value {
    let list = rooms["rooms"].as_array().unwrap_or_else(|| panic!("no rooms: {rooms}"));
    json!({ "rooms": list.iter().map(|r| json!({ "name": r["name"], "lastSeq": r["lastSeq"], "members": r["members"] })).collect::<Vec<_>>() })
}
