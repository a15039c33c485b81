//! WebSocket transports: authentication and origin checks before the upgrade, then one session
//! loop that turns frames into chat commands and drains the session's outbound queue.
//!
//! The upgrade is done here rather than with poem's `WebSocket` extractor so that frames are
//! tungstenite `Utf8Bytes`: an event's bytes are shared by every recipient instead of copied
//! into a `String` per socket, and the buffers are sized for many idle connections.

pub mod native;
pub mod polling;
pub mod socketio;

use std::{future::Future, pin::Pin, time::Duration};

use futures_util::{
    SinkExt as _, StreamExt as _,
    stream::{SplitSink, SplitStream},
};
use poem::{
    Request, Response, Upgraded, handler,
    http::{StatusCode, header},
    web::Data,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    time::Instant,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message, Utf8Bytes,
        error::{CapacityError, Error as WsError},
        handshake::derive_accept_key,
        protocol::{CloseFrame, Role, WebSocketConfig, frame::coding::CloseCode},
    },
};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::{AppState, error};
use crate::{
    chat::{
        ChatError, ChatService, Outbound, Reply, ReplyBody, Session, Tag,
        event::{Encoded, EventKind},
    },
    config::WsConfig,
    domain::Seq,
    store::User,
    telemetry,
};

/// A transport-neutral command decoded from a frame.
#[derive(Debug)]
pub enum Command {
    Join { room: String, since: Option<Seq> },
    Leave { room: String },
    Send { room: String, content: String, client_id: Option<String> },
    Typing { room: String },
    Ping,
}

/// How a session's frames look on the wire. Everything else about a session is shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Codec {
    Native,
    SocketIo,
}

impl Codec {
    fn label(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::SocketIo => "socketio",
        }
    }

    /// The heartbeat: a WebSocket ping, or Engine.IO's own `2`.
    fn heartbeat(self) -> Message {
        match self {
            Self::Native => Message::Ping(bytes::Bytes::new()),
            Self::SocketIo => Message::text(socketio::PING),
        }
    }

    fn event(self, ev: &Encoded) -> Utf8Bytes {
        match self {
            Self::Native => ev.native.clone(),
            Self::SocketIo => ev.socketio().clone(),
        }
    }
}

/// What an inbound text frame asks for.
enum Inbound {
    Command(Command, Tag),
    Invalid(Tag, String),
    /// Answer with this frame (Engine.IO ping from the client, CONNECT to another namespace).
    Answer(Utf8Bytes),
    Nothing,
    Close,
}

/// Frames written per flush when the queue has a backlog.
const WRITE_BATCH: usize = 64;
/// CONNECT attempts allowed on one Socket.IO connection before it is closed.
const MAX_CONNECT_ATTEMPTS: usize = 5;

/// `GET /ws`: the native protocol.
#[handler]
pub async fn native_endpoint(req: &Request, state: Data<&AppState>) -> Response {
    if let Err(resp) = check_upgrade(req, &state) {
        return *resp;
    }
    let Some(token) = bearer_token(req) else {
        return json_error(StatusCode::UNAUTHORIZED, "missing access token", "unauthorized");
    };
    let user = match state.auth.authenticate(&token).await {
        Ok(user) => user,
        Err(e) => {
            let status =
                if e.code() == "unavailable" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::UNAUTHORIZED };
            return json_error(status, &e.to_string(), e.code());
        }
    };
    upgrade(req, &state, move |socket, state| async move {
        let (sink, stream) = socket.split();
        let hello = native::hello(&user, &state.node_id);
        run_session(sink, stream, state, user, Codec::Native, vec![hello], Vec::new()).await;
    })
}

/// `/socket.io/?EIO=4&transport=…`: Socket.IO clients. The token arrives later, in the CONNECT
/// packet, so authentication happens inside the protocol. `transport=polling` serves the
/// long-polling start of default clients until they upgrade (see [`polling`]).
#[handler]
pub async fn socketio_endpoint(req: &Request, state: Data<&AppState>, body: poem::Body) -> Response {
    let query: Vec<(String, String)> =
        req.uri().query().map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
    let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    if param("EIO") != Some("4") {
        return json_error(
            StatusCode::BAD_REQUEST,
            "unsupported Engine.IO protocol version: use a Socket.IO v3/v4 client (EIO=4)",
            "unsupported_protocol",
        );
    }
    let sid = param("sid");
    match (param("transport"), req.method().as_str(), sid) {
        (Some("polling"), "GET", None) => return polling::open(&state),
        (Some("polling"), "GET", Some(sid)) => return polling::poll(&state, sid).await,
        (Some("polling"), "POST", Some(sid)) => {
            let Ok(body) = body.into_string().await else {
                return json_error(StatusCode::BAD_REQUEST, "polling payloads are UTF-8 text", "invalid_payload");
            };
            return polling::post(&state, sid, &body).await;
        }
        (Some("websocket"), _, _) => {}
        _ => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "unsupported transport: use websocket (or polling, upgraded to websocket)",
                "transport_unsupported",
            );
        }
    }
    if let Err(resp) = check_upgrade(req, &state) {
        return *resp;
    }
    if let Some(sid) = sid {
        let Some(session) = state.polling.get(sid) else {
            return json_error(StatusCode::BAD_REQUEST, "unknown or expired sid", "invalid_session");
        };
        return upgrade(req, &state, move |socket, state| async move {
            let (mut sink, mut stream) = socket.split();
            let upgraded = finish_upgrade(&mut sink, &mut stream, &session, &state).await;
            state.polling.remove(&session.sid);
            match upgraded {
                Some((user, greeting, replay)) => {
                    run_session(sink, stream, state, user, Codec::SocketIo, greeting, replay).await;
                }
                None => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
                }
            }
        });
    }
    upgrade(req, &state, |socket, state| async move {
        let (mut sink, mut stream) = socket.split();
        let sid = uuid::Uuid::new_v4().simple().to_string();
        let opened = sink.send(Message::Text(open_packet(&state, &sid, false))).await.is_ok();
        if let Some(user) = if opened { socketio_handshake(&mut sink, &mut stream, &state).await } else { None } {
            run_session(sink, stream, state, user, Codec::SocketIo, vec![socketio::connected(&sid)], Vec::new()).await;
        } else {
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
        }
    })
}

/// Engine.IO OPEN for this server's heartbeat settings.
fn open_packet(state: &AppState, sid: &str, upgrades: bool) -> Utf8Bytes {
    let ws = &state.config.ws;
    let ping_timeout = ws.idle_timeout.0.saturating_sub(ws.ping_interval.0);
    socketio::open(sid, upgrades, ws.ping_interval.0.as_millis(), ping_timeout.as_millis(), ws.max_frame)
}

/// The user a CONNECT's auth payload (`{"token": "…"}`) belongs to, or the CONNECT_ERROR
/// message: `unauthorized`, or `unavailable` when the database cannot say (as `/ws` answers 503:
/// a client told "unauthorized" would drop a good token).
async fn connect_user(state: &AppState, auth: &str) -> Result<User, &'static str> {
    let token = socketio::token(auth).ok_or("unauthorized")?;
    state
        .auth
        .authenticate(&token)
        .await
        .map_err(|e| if e.code() == "unavailable" { "unavailable" } else { "unauthorized" })
}

/// The WebSocket half of a polling upgrade: `2probe` → `3probe`, then `5`. Returns the user
/// (waiting for a CONNECT here if none came over polling), the packets the client has not
/// polled yet, and the events it sent before upgrading.
async fn finish_upgrade(
    sink: &mut Sink,
    stream: &mut Stream,
    session: &polling::PollSession,
    state: &AppState,
) -> Option<(User, Vec<Utf8Bytes>, Vec<String>)> {
    let wait = state.config.ws.idle_timeout.0;
    loop {
        let Message::Text(text) = tokio::time::timeout(wait, stream.next()).await.ok()??.ok()? else { continue };
        match text.as_str() {
            "2probe" => sink.send(Message::text("3probe")).await.ok()?,
            "5" => break,
            _ => return None,
        }
    }
    let (user, outbox, inbox) = session.upgrade();
    let greeting = outbox.into_iter().map(Utf8Bytes::from).collect();
    let user = match user {
        Some(user) => user,
        None => socketio_handshake(sink, stream, state).await?,
    };
    Some((user, greeting, inbox))
}

/// Waits for a CONNECT to the default namespace with a valid token. Refused attempts get
/// CONNECT_ERROR and may be retried on the same connection.
async fn socketio_handshake(sink: &mut Sink, stream: &mut Stream, state: &AppState) -> Option<User> {
    let ws = &state.config.ws;
    let mut attempts = 0;
    loop {
        let frame = tokio::time::timeout(ws.idle_timeout.0, stream.next()).await.ok()??.ok()?;
        let Message::Text(text) = frame else { continue };
        let answer = match socketio::parse(&text) {
            socketio::Packet::Connect { nsp: "/", auth } => {
                attempts += 1;
                match connect_user(state, auth).await {
                    Ok(user) => return Some(user),
                    Err(message) => socketio::connect_error("/", message),
                }
            }
            socketio::Packet::Connect { nsp, .. } => {
                attempts += 1;
                socketio::connect_error(nsp, "Invalid namespace")
            }
            socketio::Packet::EioPing => Utf8Bytes::from_static("3"),
            socketio::Packet::Close | socketio::Packet::Malformed => return None,
            _ => continue,
        };
        sink.send(Message::Text(answer)).await.ok()?;
        if attempts >= MAX_CONNECT_ATTEMPTS {
            return None;
        }
    }
}

/// Checks that this is a WebSocket upgrade from an allowed origin.
fn check_upgrade(req: &Request, state: &AppState) -> Result<(), Box<Response>> {
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_upgrade || req.headers().get(header::SEC_WEBSOCKET_KEY).is_none() {
        return Err(Box::new(error::from_status(
            StatusCode::BAD_REQUEST,
            Some("this endpoint speaks WebSocket: send an upgrade request".into()),
        )));
    }
    if !origin_allowed(req, &state.config.http.cors_origins.0) {
        return Err(Box::new(json_error(StatusCode::FORBIDDEN, "origin not allowed", "forbidden_origin")));
    }
    Ok(())
}

fn json_error(status: StatusCode, message: &str, code: &str) -> Response {
    let body = serde_json::json!({ "error": message, "code": code }).to_string();
    Response::builder().status(status).content_type("application/json; charset=utf-8").body(body)
}

/// The token from `Authorization: Bearer` or `?access_token=` (browsers cannot set headers on
/// WebSocket requests).
fn bearer_token(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, token) = v.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned());
    }
    url::form_urlencoded::parse(req.uri().query()?.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
}

/// Refuses cross-site WebSocket hijacking: a browser always sends `Origin`, which must be the
/// server's own or in the CORS allow-list. Non-browser clients send none and are allowed.
fn origin_allowed(req: &Request, allowed: &[String]) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    if allowed.iter().any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin)) {
        return true;
    }
    let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok());
    let authority = origin.split_once("://").map(|(_, rest)| rest);
    matches!((host, authority), (Some(h), Some(a)) if h.eq_ignore_ascii_case(a))
}

/// Answers 101 and runs `session` on the upgraded connection, tracked for shutdown.
fn upgrade<F, Fut>(req: &Request, state: &AppState, session: F) -> Response
where
    F: FnOnce(WebSocketStream<Upgraded>, AppState) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).map(|k| derive_accept_key(k.as_bytes())) else {
        return error::from_status(StatusCode::BAD_REQUEST, None);
    };
    let Ok(on_upgrade) = req.take_upgrade() else {
        return error::from_status(StatusCode::BAD_REQUEST, Some("connection cannot be upgraded".into()));
    };
    let state = state.clone();
    state.sessions.clone().spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let socket = WebSocketStream::from_raw_socket(upgraded, Role::Server, Some(ws_config(&state.config.ws))).await;
        session(socket, state).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, key)
        .finish()
}

/// Small buffers for many mostly idle connections; a bounded write backlog.
fn ws_config(ws: &WsConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(Some(ws.max_frame))
        .max_frame_size(Some(ws.max_frame))
}

/// Why a session ended, for the `reason` label and the close frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Client,
    Slow,
    Shutdown,
    Timeout,
    Error,
    Refused(CloseCode, &'static str),
}

impl End {
    fn label(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Slow => "slow",
            Self::Shutdown => "shutdown",
            Self::Timeout => "timeout",
            Self::Error | Self::Refused(..) => "error",
        }
    }
}

type Sink = SplitSink<WebSocketStream<Upgraded>, Message>;
type Stream = SplitStream<WebSocketStream<Upgraded>>;

struct Conn {
    chat: ChatService,
    session: Session,
    sink: Sink,
    codec: Codec,
    /// `send_message` commands not yet answered: shutdown waits for them.
    inflight: usize,
    /// Messages and events written to this socket, counted per flush.
    delivered: metrics::Counter,
    unflushed: u64,
    /// Binary frames still due as attachments of a refused Socket.IO binary packet: dropped
    /// quietly, since the packet itself was already answered.
    attachments_to_skip: usize,
}

/// The session loop shared by both transports: frames in become chat commands; the outbound
/// queue drains to the socket in batches; heartbeats, kicks and shutdown end it.
async fn run_session(
    sink: Sink,
    mut stream: Stream,
    state: AppState,
    user: User,
    codec: Codec,
    greeting: Vec<Utf8Bytes>,
    replay: Vec<String>,
) {
    let chat = state.chat.clone();
    let (session, mut outbound) = chat.open_session(user);
    let delivered = metrics::counter!(telemetry::MESSAGES_DELIVERED, "transport" => codec.label());
    let mut conn = Conn { chat, session, sink, codec, inflight: 0, delivered, unflushed: 0, attachments_to_skip: 0 };
    metrics::gauge!(telemetry::WS_SESSIONS, "transport" => codec.label()).increment(1.0);
    let kick = conn.session.handle.kick.clone();
    let shutdown: CancellationToken = state.shutdown.clone();
    let ws = &state.config.ws;
    let mut heartbeat = tokio::time::interval(ws.ping_interval.0);
    heartbeat.tick().await;
    let mut last_seen = Instant::now();

    let mut greeted = true;
    for frame in greeting {
        greeted &= conn.sink.feed(Message::Text(frame)).await.is_ok();
    }
    let mut end = if greeted && conn.sink.flush().await.is_ok() { End::Client } else { End::Error };
    // Events a Socket.IO client sent over polling before it upgraded.
    for text in replay {
        if end == End::Client && !matches!(Box::pin(conn.handle_text(&text)).await, Ok(true)) {
            end = End::Error;
        }
    }
    if end == End::Client {
        // Made once: re-creating them each turn would re-register with the tokens' waiter lists,
        // and the shutdown token is shared by every session.
        let kicked = kick.cancelled();
        let stopping = shutdown.cancelled();
        tokio::pin!(kicked, stopping);
        end = loop {
            tokio::select! {
                frame = stream.next() => {
                    last_seen = Instant::now();
                    match frame {
                        Some(Ok(Message::Text(text))) => {
                            // Boxed: a command's future (a join streams history) is far larger
                            // than the idle loop, and every idle connection would carry it.
                            let work = Box::pin(conn.handle_text(&text));
                            match guarded(work, kicked.as_mut(), &mut heartbeat, ws.idle_timeout.0).await {
                                Ok(Ok(true)) => {}
                                Ok(Ok(false)) => break End::Client,
                                Ok(Err(_)) => break End::Error,
                                Err(end) => break end,
                            }
                        }
                        Some(Ok(Message::Binary(_))) if conn.attachments_to_skip > 0 => {
                            conn.attachments_to_skip -= 1;
                        }
                        Some(Ok(Message::Binary(_))) => {
                            let message = "binary frames are not supported; send JSON text";
                            let _ = conn.reply(Reply::error(Tag::default(), "invalid_payload", message)).await;
                            if codec == Codec::Native {
                                break End::Refused(CloseCode::Unsupported, "binary frames are not supported");
                            }
                        }
                        Some(Ok(Message::Close(_))) | None => break End::Client,
                        Some(Ok(_)) => {} // ping (answered by tungstenite), pong, raw frame
                        Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                            let message = format!("frame larger than {} bytes", ws.max_frame);
                            let _ = conn.reply(Reply::error(Tag::default(), "invalid_payload", message)).await;
                            break End::Refused(CloseCode::Size, "frame too large");
                        }
                        Some(Err(_)) => break End::Error,
                    }
                }
                out = outbound.recv() => match out {
                    // A peer that stops reading blocks the write; the hub kicks it once its queue
                    // is full, and the timeout catches one in a room too quiet to fill it.
                    Some(out) => {
                        let work = conn.write_outbound(out, &mut outbound);
                        match guarded(work, kicked.as_mut(), &mut heartbeat, ws.idle_timeout.0).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => break End::Error,
                            Err(end) => break end,
                        }
                    }
                    None => break End::Error,
                },
                () = &mut kicked => break End::Slow,
                _ = heartbeat.tick() => {
                    if last_seen.elapsed() > ws.idle_timeout.0 { break End::Timeout; }
                    if conn.sink.send(codec.heartbeat()).await.is_err() { break End::Error; }
                }
                () = &mut stopping => {
                    Box::pin(conn.finish_inflight(&mut outbound, state.config.shutdown.grace.0)).await;
                    break End::Shutdown;
                }
            }
        };
    }
    // Leave rooms first, so no more frames are queued for a socket that is closing.
    conn.chat.close_session(&mut conn.session);
    let close = match end {
        End::Slow => Some((CloseCode::Again, "too slow: resume with since")),
        End::Shutdown => Some((CloseCode::Away, "server shutting down")),
        End::Timeout => Some((CloseCode::Policy, "idle timeout")),
        End::Refused(code, reason) => Some((code, reason)),
        End::Client | End::Error => None,
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame { code, reason: reason.into() };
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.sink.send(Message::Close(Some(frame)))).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.sink.close()).await;
    linger(conn.sink, stream).await;
    metrics::gauge!(telemetry::WS_SESSIONS, "transport" => codec.label()).decrement(1.0);
    metrics::counter!(telemetry::WS_SESSIONS_CLOSED, "reason" => end.label()).increment(1);
}

/// Ends the TCP connection without destroying what is still on its way to the peer: sends FIN,
/// then reads and discards whatever the peer still sends (the rest of an oversized frame, its
/// close reply) until it hangs up, for at most a second. Dropping a socket with unread input
/// makes the kernel answer with a reset, and a peer that gets one loses the close frame and
/// anything else it has not read yet.
async fn linger(sink: Sink, stream: Stream) {
    let Ok(mut socket) = sink.reunite(stream) else { return };
    let io = socket.get_mut();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = io.shutdown().await;
        let mut discard = [0u8; 4096];
        while matches!(io.read(&mut discard).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Runs `work` (a command, or a write to the socket) unless the session is kicked meanwhile, or
/// the work makes no progress for `limit` (a peer that stopped reading blocks a write). The
/// limit is checked on the session's heartbeat ticks: no timer is armed per write.
async fn guarded<F: Future>(
    work: F,
    mut kicked: Pin<&mut WaitForCancellationFuture<'_>>,
    heartbeat: &mut tokio::time::Interval,
    limit: Duration,
) -> Result<F::Output, End> {
    tokio::pin!(work);
    let started = Instant::now();
    loop {
        tokio::select! {
            out = &mut work => return Ok(out),
            () = &mut kicked => return Err(End::Slow),
            _ = heartbeat.tick() => if started.elapsed() > limit { return Err(End::Timeout) },
        }
    }
}

impl Conn {
    /// Writes a reply at once (flushed).
    async fn reply(&mut self, reply: Reply) -> Result<(), WsError> {
        self.feed(Outbound::Reply(Box::new(reply))).await?;
        self.sink.flush().await
    }

    /// Writes `first` and whatever else is queued (up to a batch), then flushes once.
    async fn write_outbound(
        &mut self,
        first: Outbound,
        queue: &mut tokio::sync::mpsc::Receiver<Outbound>,
    ) -> Result<(), WsError> {
        self.feed(first).await?;
        for _ in 1..WRITE_BATCH {
            match queue.try_recv() {
                Ok(out) => self.feed(out).await?,
                Err(_) => break,
            }
        }
        self.delivered.increment(std::mem::take(&mut self.unflushed));
        self.sink.flush().await
    }

    async fn feed(&mut self, out: Outbound) -> Result<(), WsError> {
        match out {
            Outbound::Event(ev) => {
                self.unflushed += u64::from(matches!(ev.kind, EventKind::Message { .. }));
                self.sink.feed(Message::Text(self.codec.event(&ev))).await
            }
            Outbound::Reply(reply) => {
                if reply.settles_send() {
                    self.inflight = self.inflight.saturating_sub(1);
                }
                match self.codec {
                    Codec::Native => self.sink.feed(Message::Text(native::reply(&reply))).await,
                    Codec::SocketIo => {
                        for frame in socketio::reply(&reply) {
                            self.sink.feed(Message::Text(frame)).await?;
                        }
                        Ok(())
                    }
                }
            }
        }
    }

    /// On shutdown: keep writing acks until every send this session made is answered (their
    /// commits are in flight), within the grace period.
    async fn finish_inflight(&mut self, queue: &mut tokio::sync::mpsc::Receiver<Outbound>, grace: Duration) {
        let deadline = Instant::now() + grace;
        while self.inflight > 0 {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(out)) => {
                    if self.write_outbound(out, queue).await.is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    }

    fn decode(&mut self, text: &str) -> Inbound {
        match self.codec {
            Codec::Native => match native::decode(text) {
                Ok((cmd, tag)) => Inbound::Command(cmd, tag),
                Err(e) => Inbound::Invalid(Tag { cmd_ref: e.cmd_ref, ack_id: None }, e.message),
            },
            Codec::SocketIo => match socketio::parse(text) {
                socketio::Packet::Event { nsp: "/", ack_id, data } => match socketio::decode_event(data, ack_id) {
                    Ok((cmd, tag)) => Inbound::Command(cmd, tag),
                    Err(e) => Inbound::Invalid(e.tag, e.message),
                },
                socketio::Packet::EioPing => Inbound::Answer(Utf8Bytes::from_static("3")),
                // socket.io-client multiplexes namespaces on one connection: a CONNECT to another
                // can come at any time, and its socket waits for an answer.
                socketio::Packet::Connect { nsp, .. } if nsp != "/" => {
                    Inbound::Answer(socketio::connect_error(nsp, "Invalid namespace"))
                }
                socketio::Packet::Close => Inbound::Close,
                socketio::Packet::Binary { attachments, ack_id } => {
                    self.attachments_to_skip = attachments;
                    Inbound::Invalid(Tag { cmd_ref: None, ack_id }, "binary packets are not supported".into())
                }
                socketio::Packet::Malformed => Inbound::Invalid(Tag::default(), "malformed Socket.IO packet".into()),
                _ => Inbound::Nothing,
            },
        }
    }

    /// Handles one text frame. `Ok(false)`: the client asked to close.
    async fn handle_text(&mut self, text: &str) -> Result<bool, WsError> {
        // Attachments follow their packet at once; a text frame means no more are coming.
        self.attachments_to_skip = 0;
        let (cmd, tag) = match self.decode(text) {
            Inbound::Command(cmd, tag) => (cmd, tag),
            Inbound::Invalid(tag, message) => {
                return self.reply(Reply::error(tag, "invalid_payload", message)).await.map(|()| true);
            }
            Inbound::Answer(frame) => return self.sink.send(Message::Text(frame)).await.map(|()| true),
            Inbound::Nothing => return Ok(true),
            Inbound::Close => return Ok(false),
        };
        let result = match cmd {
            Command::Join { room, since } => return self.join(&room, since, tag).await.map(|()| true),
            Command::Leave { room } => {
                self.chat.leave(&mut self.session, &room).map(|room| Some(ReplyBody::Left { room: room.to_string() }))
            }
            Command::Send { room, content, client_id } => {
                let sent =
                    self.chat.send_message(&self.session, &room, &content, client_id.as_deref(), tag.clone()).await;
                if sent.is_ok() {
                    self.inflight += 1;
                }
                sent.map(|()| None) // the writer acks once the message is stored
            }
            Command::Typing { room } => self.chat.typing(&mut self.session, &room).map(|()| None),
            Command::Ping => Ok(Some(ReplyBody::Pong)),
        };
        match result {
            Ok(Some(body)) => self.reply(Reply::new(tag, body)).await?,
            Ok(None) => {}
            Err(e) => self.chat_error(tag, &e).await?,
        }
        Ok(true)
    }

    async fn chat_error(&mut self, tag: Tag, e: &ChatError) -> Result<(), WsError> {
        self.reply(Reply::error(tag, e.code(), e.client_message())).await
    }

    /// Joins, acks with the latest seq, then — with `since` — streams the missed messages
    /// straight from the store before switching the member to live delivery.
    async fn join(&mut self, room: &str, since: Option<Seq>, tag: Tag) -> Result<(), WsError> {
        let joined = match self.chat.join(&mut self.session, room, since).await {
            Ok(j) => j,
            Err(e) => return self.chat_error(tag, &e).await,
        };
        self.reply(Reply::new(tag, ReplyBody::Joined { room: joined.room.to_string(), seq: joined.latest })).await?;
        let Some(mut sent) = joined.catch_up_from else { return Ok(()) };
        loop {
            let page = match self.chat.catch_up(&joined.room, sent).await {
                Ok(page) => page,
                Err(e) => {
                    // Cannot resume now: leave, so the client's retry starts clean.
                    let _ = self.chat.leave(&mut self.session, joined.room.as_str());
                    return self.chat_error(Tag::default(), &e).await;
                }
            };
            if page.is_empty() && self.chat.go_live(&self.session, &joined.room, sent) {
                return Ok(());
            }
            for (seq, frame) in page {
                self.sink.feed(Message::Text(self.codec.event(&frame))).await?;
                sent = seq;
            }
            self.sink.flush().await?;
        }
    }
}
