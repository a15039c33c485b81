//! WebSocket transports: authentication and origin checks before the upgrade, then one session
//! loop that turns frames into chat commands.
//!
//! The upgrade is done here rather than with poem's `WebSocket` extractor so that the two
//! directions part ways: tungstenite reads client frames (with small buffers, for many idle
//! connections), while everything sent goes through the session's [`Outbox`], to which the
//! chat core writes already framed, shared bytes directly (see [`crate::chat::session`]).

pub mod native;
pub mod polling;
pub mod socketio;

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt as _;
use poem::{
    Request, Response, Upgraded, handler,
    http::{StatusCode, header},
    web::Data,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf, ReadHalf},
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

use super::{AppState, error};
use crate::{
    chat::{ChatError, ChatService, Failure, Form, Outbox, Reply, ReplyBody, Revocation, Session, Tag},
    config::WsConfig,
    domain::{Seq, User},
    telemetry,
};

/// A transport-neutral command decoded from a frame.
#[derive(Debug)]
pub enum Command {
    Join {
        room: String,
        since: Option<Seq>,
    },
    Leave {
        room: String,
    },
    Send {
        room: String,
        content: String,
        client_id: Option<String>,
    },
    Typing {
        room: String,
    },
    /// Moves my read marker in `room` up to `seq`.
    MarkRead {
        room: String,
        seq: Seq,
    },
    Ping,
    /// A fresh access token for the open session (in-band refresh).
    Auth {
        token: String,
    },
}

/// Who a session runs as, and for how long: the user, and the claims of the token that
/// admitted it (a session lives only as long as its token, and only in its session epoch).
#[derive(Clone, Debug)]
pub struct Identity {
    pub user: User,
    /// Unix seconds when the token expires; the session ends then unless refreshed in-band.
    pub expires_at: i64,
    pub epoch: i64,
}

impl Identity {
    fn new(user: User, claims: &crate::auth::token::Claims) -> Self {
        Self { user, expires_at: claims.exp, epoch: claims.sep }
    }
}

/// How a session's frames look on the wire. Everything else about a session is shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Codec {
    Native,
    SocketIo,
}

impl Codec {
    fn form(self) -> Form {
        match self {
            Self::Native => Form::Native,
            Self::SocketIo => Form::SocketIo,
        }
    }

    fn label(self) -> &'static str {
        self.form().label()
    }

    /// The heartbeat, framed: a WebSocket ping, or Engine.IO's own `2` in a text frame.
    fn heartbeat(self) -> Bytes {
        match self {
            Self::Native => Bytes::from_static(&[0x89, 0x00]),
            Self::SocketIo => Bytes::from_static(&[0x81, 0x01, b'2']),
        }
    }

    /// The frame that tells a client why its session ends: an `error` frame, or a Socket.IO
    /// `error` event.
    fn revoked(self, why: Revocation) -> Utf8Bytes {
        let reply = Reply::error(Tag::default(), why.code(), why.message());
        match self {
            Self::Native => native::reply(&reply),
            Self::SocketIo => Utf8Bytes::from(format!("42[\"error\",{}]", native::reply_json(&reply))),
        }
    }

    fn encoder(self) -> fn(&Reply) -> Vec<Utf8Bytes> {
        match self {
            Self::Native => |reply| vec![native::reply(reply)],
            Self::SocketIo => socketio::reply,
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

/// Refused CONNECTs allowed on one Socket.IO connection (WebSocket or polling) before it is
/// closed.
const MAX_CONNECT_ATTEMPTS: usize = 5;

/// Longest accepted `ref` of a command, in characters, on either transport.
const MAX_REF: usize = 64;

/// Whether `cmd_ref` is short enough to be echoed back.
fn ref_fits(cmd_ref: &str) -> bool {
    cmd_ref.chars().count() <= MAX_REF
}

/// `GET /ws`: the native protocol.
#[handler]
pub async fn native_endpoint(req: &Request, state: Data<&AppState>) -> Response {
    if let Err(resp) = check_upgrade(req, &state) {
        return *resp;
    }
    let Some(token) = bearer_token(req) else {
        return json_error(StatusCode::UNAUTHORIZED, "missing access token", "unauthorized");
    };
    let who = match state.auth.authenticate_session(&token).await {
        Ok((user, claims)) => Identity::new(user, &claims),
        Err(e) => {
            let status =
                if e.code() == "unavailable" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::UNAUTHORIZED };
            return json_error(status, &e.to_string(), e.code());
        }
    };
    upgrade(req, &state, Codec::Native, move |socket, state| async move {
        let hello = native::hello(&who.user, &state.node_id, state.config.chat.message_max_len);
        run_session(socket, state, who, vec![hello], Vec::new()).await;
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
        return upgrade(req, &state, Codec::SocketIo, move |mut socket, state| async move {
            let upgraded = finish_upgrade(&mut socket, &session, &state).await;
            if upgraded.is_some() {
                state.polling.remove_upgraded(session.sid.clone());
            } else {
                state.polling.remove(&session.sid);
            }
            match upgraded {
                Some((user, greeting, replay)) => run_session(socket, state, user, greeting, replay).await,
                None => abandon(socket).await,
            }
        });
    }
    upgrade(req, &state, Codec::SocketIo, |mut socket, state| async move {
        let sid = uuid::Uuid::new_v4().simple().to_string();
        let opened = socket.send_now(open_packet(&state, &sid, false)).await.is_some();
        if let Some(user) = if opened { socketio_handshake(&mut socket, &state).await } else { None } {
            run_session(socket, state, user, vec![socketio::connected(&sid)], Vec::new()).await;
        } else {
            abandon(socket).await;
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
async fn connect_user(state: &AppState, auth: &str) -> Result<Identity, &'static str> {
    let token = socketio::token(auth).ok_or("unauthorized")?;
    let (user, claims) = state
        .auth
        .authenticate_session(&token)
        .await
        .map_err(|e| if e.code() == "unavailable" { "unavailable" } else { "unauthorized" })?;
    Ok(Identity::new(user, &claims))
}

/// The WebSocket half of a polling upgrade: `2probe` → `3probe`, then `5`. Returns the user
/// (waiting for a CONNECT here if none came over polling), the packets the client has not
/// polled yet, and the events it sent before upgrading.
async fn finish_upgrade(
    socket: &mut Socket,
    session: &polling::PollSession,
    state: &AppState,
) -> Option<(Identity, Vec<Utf8Bytes>, Vec<String>)> {
    let deadline = tokio::time::Instant::now() + state.config.ws.handshake_timeout.0;
    loop {
        let Message::Text(text) = tokio::time::timeout_at(deadline, socket.ws.next()).await.ok()??.ok()? else {
            continue;
        };
        match text.as_str() {
            "2probe" => socket.send_now(Utf8Bytes::from_static("3probe")).await?,
            "5" => break,
            _ => return None,
        }
    }
    let (user, outbox, inbox) = session.upgrade();
    let greeting = outbox.into_iter().map(Utf8Bytes::from).collect();
    let user = match user {
        Some(user) => user,
        None => socketio_handshake(socket, state).await?,
    };
    Some((user, greeting, inbox))
}

/// Waits for a CONNECT to the default namespace with a valid token. Refused attempts get
/// CONNECT_ERROR and may be retried on the same connection.
async fn socketio_handshake(socket: &mut Socket, state: &AppState) -> Option<Identity> {
    // One deadline for the whole handshake: retries do not extend it.
    let deadline = tokio::time::Instant::now() + state.config.ws.handshake_timeout.0;
    let mut attempts = 0;
    loop {
        let frame = tokio::time::timeout_at(deadline, socket.ws.next()).await.ok()??.ok()?;
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
        socket.send_now(answer).await?;
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
    // RFC 6455 is version 13; anything else gets 426 and the version this server speaks.
    if req.headers().get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
        let mut resp = json_error(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version: use version 13 (RFC 6455)",
            "unsupported_version",
        );
        resp.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, header::HeaderValue::from_static("13"));
        return Err(Box::new(resp));
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
fn upgrade<F, Fut>(req: &Request, state: &AppState, codec: Codec, session: F) -> Response
where
    F: FnOnce(Box<Socket>, AppState) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).map(|k| derive_accept_key(k.as_bytes())) else {
        return error::from_status(StatusCode::BAD_REQUEST, None);
    };
    let Ok(on_upgrade) = req.take_upgrade() else {
        return error::from_status(StatusCode::BAD_REQUEST, Some("connection cannot be upgraded".into()));
    };
    let state = state.clone();
    let peer = super::client_ip(req, &state.trusted_proxies);
    state.sessions.clone().spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let (read, write) = tokio::io::split(upgraded);
        let out = Outbox::new(write, codec.form(), codec.encoder(), state.config.ws.outbound_queue);
        let duplex = Duplex { read, out: Arc::clone(&out) };
        let ws = WebSocketStream::from_raw_socket(duplex, Role::Server, Some(ws_config(&state.config.ws))).await;
        session(Box::new(Socket { ws, out, codec, peer }), state).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, key)
        .finish()
}

/// Small read buffers for many mostly idle connections. tungstenite writes only control frames
/// (pongs, close replies), straight into the outbox.
fn ws_config(ws: &WsConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(256)
        .write_buffer_size(0)
        .max_message_size(Some(ws.max_frame))
        .max_frame_size(Some(ws.max_frame))
}

/// An upgraded connection: frames come in through tungstenite and go out through the outbox,
/// which the chat core also writes to directly.
struct Socket {
    ws: WebSocketStream<Duplex>,
    out: Arc<Outbox>,
    codec: Codec,
    /// The client's address, for `confab user sessions`.
    peer: std::net::IpAddr,
}

impl Socket {
    /// Writes a text frame and waits until the socket has taken it (handshakes).
    async fn send_now(&mut self, payload: Utf8Bytes) -> Option<()> {
        self.out.send_text(payload).then_some(())?;
        self.out.drained().await.ok()
    }
}

/// The connection as tungstenite sees it: it reads the socket, and what it writes (pongs,
/// close frames) joins the outbox, in order with every other frame.
struct Duplex {
    read: ReadHalf<Upgraded>,
    out: Arc<Outbox>,
}

impl AsyncRead for Duplex {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Duplex {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(if self.out.send_raw(&Bytes::copy_from_slice(buf)) {
            Ok(buf.len())
        } else {
            Err(io::ErrorKind::BrokenPipe.into())
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
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
    Revoked(Revocation),
}

impl End {
    fn label(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Slow => "slow",
            Self::Shutdown => "shutdown",
            Self::Timeout => "timeout",
            Self::Error | Self::Refused(..) => "error",
            Self::Revoked(Revocation::Expired) => "expired",
            Self::Revoked(Revocation::Revoked) => "revoked",
        }
    }

    fn close_frame(self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            Self::Slow => (CloseCode::Again, "too slow: resume with since"),
            Self::Shutdown => (CloseCode::Away, "server shutting down"),
            Self::Timeout => (CloseCode::Policy, "idle timeout"),
            Self::Refused(code, reason) => (code, reason),
            Self::Revoked(Revocation::Expired) => (CloseCode::Policy, "token expired"),
            Self::Revoked(Revocation::Revoked) => (CloseCode::Policy, "session revoked"),
            Self::Client | Self::Error => return None,
        };
        Some(CloseFrame { code, reason: reason.into() })
    }
}

impl End {
    fn linger(self) -> Duration {
        if self == Self::Slow { SLOW_CLOSE_LINGER } else { CLOSE_LINGER }
    }
}

impl From<Failure> for End {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Slow => Self::Slow,
            Failure::Broken => Self::Error,
            Failure::Revoked(why) => Self::Revoked(why),
        }
    }
}

struct Conn {
    chat: ChatService,
    session: Session,
    out: Arc<Outbox>,
    codec: Codec,
    /// Binary frames still due as attachments of a refused Socket.IO binary packet: dropped
    /// quietly, since the packet itself was already answered.
    attachments_to_skip: usize,
    /// Unix seconds when the session's token expires (later after an in-band `auth`).
    expires_at: i64,
    state: AppState,
}

/// The session loop shared by both transports: frames in become chat commands; the chat core
/// writes events and answers through the outbox, and this task finishes writes the socket
/// could not take at once; heartbeats, a too-slow reader and shutdown end it.
async fn run_session(
    mut socket: Box<Socket>,
    state: AppState,
    who: Identity,
    greeting: Vec<Utf8Bytes>,
    replay: Vec<String>,
) {
    let (out, codec) = (Arc::clone(&socket.out), socket.codec);
    let chat = state.chat.clone();
    let expires_at = who.expires_at;
    let origin = crate::chat::registry::Origin { addr: socket.peer, transport: codec.label() };
    let session = match chat.open_session(who.user, who.epoch, Arc::clone(&out), origin) {
        Ok(session) => session,
        Err(e) => return refuse(socket, codec, &e).await,
    };
    let mut conn =
        Conn { chat, session, out: Arc::clone(&out), codec, attachments_to_skip: 0, expires_at, state: state.clone() };
    metrics::gauge!(telemetry::WS_SESSIONS, "transport" => codec.label()).increment(1.0);
    metrics::counter!(telemetry::WS_SESSIONS_OPENED, "transport" => codec.label()).increment(1);
    let shutdown = state.shutdown.clone();
    let ws_config = &state.config.ws;
    let idle = ws_config.idle_timeout.0;
    let mut heartbeat = tokio::time::interval(ws_config.ping_interval.0);
    heartbeat.tick().await;
    let mut last_seen = Instant::now();

    let greeted = greeting.into_iter().all(|frame| out.send_text(frame));
    let mut end = if greeted { End::Client } else { End::Error };
    // Events a Socket.IO client sent over polling before it upgraded.
    for text in replay {
        if end == End::Client && !matches!(Box::pin(conn.handle_text(&text)).await, Ok(true)) {
            end = End::Error;
        }
    }
    if end == End::Client {
        // Made once: re-creating it each turn would re-register with the token's waiter list,
        // which every session shares.
        let stopping = shutdown.cancelled();
        tokio::pin!(stopping);
        end = loop {
            tokio::select! {
                frame = socket.ws.next() => {
                    last_seen = Instant::now();
                    match frame {
                        Some(Ok(Message::Text(text))) => {
                            // Boxed: a command's future (a join streams history) is far larger
                            // than the idle loop, and every idle connection would carry it.
                            let work = Box::pin(conn.handle_text(&text));
                            match guarded(work, &out, &mut heartbeat, idle).await {
                                Ok(Ok(true)) => {}
                                Ok(Ok(false)) => break End::Client,
                                Ok(Err(failure)) => break End::from(failure),
                                Err(end) => break end,
                            }
                        }
                        Some(Ok(Message::Binary(_))) if conn.attachments_to_skip > 0 => {
                            conn.attachments_to_skip -= 1;
                        }
                        Some(Ok(Message::Binary(_))) => {
                            let message = "binary frames are not supported; send JSON text";
                            conn.reply(&Reply::error(Tag::default(), "invalid_payload", message));
                            if codec == Codec::Native {
                                break End::Refused(CloseCode::Unsupported, "binary frames are not supported");
                            }
                        }
                        Some(Ok(Message::Close(_))) | None => break End::Client,
                        Some(Ok(_)) => {} // ping (answered by tungstenite), pong, raw frame
                        Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                            let message = format!("frame larger than {} bytes", ws_config.max_frame);
                            conn.reply(&Reply::error(Tag::default(), "invalid_payload", message));
                            break End::Refused(CloseCode::Size, "frame too large");
                        }
                        Some(Err(WsError::Utf8(_))) => {
                            break End::Refused(CloseCode::Invalid, "text frames must be UTF-8");
                        }
                        Some(Err(_)) => break End::Error,
                    }
                }
                failure = out.failed() => break End::from(failure),
                _ = heartbeat.tick() => {
                    // A peer that stops reading leaves its writes stuck: cut it off as idle.
                    if last_seen.elapsed() > idle || out.stalled_for() > idle {
                        break End::Timeout;
                    }
                    // Checked on the heartbeat, so an idle session costs no timer of its own.
                    if chrono::Utc::now().timestamp() >= conn.expires_at {
                        break End::Revoked(Revocation::Expired);
                    }
                    if !out.send_raw(&codec.heartbeat()) {
                        break End::Error;
                    }
                }
                () = &mut stopping => {
                    // Acks of sends whose commits are in flight still go out, within the grace.
                    let _ = tokio::time::timeout(state.config.shutdown.grace.0, out.settled()).await;
                    break End::Shutdown;
                }
            }
        };
    }
    // Leave rooms first, so no more events come; room writers may still answer sends, but
    // from here on only the close frame is written.
    conn.chat.close_session(&mut conn.session);
    if let End::Revoked(why) = end {
        // Said before the close, so clients that cannot read close reasons know what to do.
        let _ = out.send_text(codec.revoked(why));
    }
    out.begin_close();
    Box::pin(finish(&mut socket.ws, &out, end.close_frame(), end.linger())).await;
    out.close();
    metrics::gauge!(telemetry::WS_SESSIONS, "transport" => codec.label()).decrement(1.0);
    metrics::counter!(telemetry::WS_SESSIONS_CLOSED, "reason" => end.label()).increment(1);
}

/// Refuses an authenticated connection that may not become a session (its account has too
/// many): says why the transport's way (an `error` frame, or Socket.IO's CONNECT_ERROR), then
/// closes with 1008 and the reason.
async fn refuse(mut socket: Box<Socket>, codec: Codec, e: &ChatError) {
    let why = match codec {
        Codec::Native => native::reply(&Reply::error(Tag::default(), e.code(), e.client_message())),
        Codec::SocketIo => socketio::connect_error("/", e.code()),
    };
    let _ = socket.out.send_text(why);
    socket.out.begin_close();
    let close = CloseFrame { code: CloseCode::Policy, reason: "too many connections for this account".into() };
    Box::pin(finish(&mut socket.ws, &socket.out, Some(close), CLOSE_LINGER)).await;
    socket.out.close();
}

/// Closes a connection that never became a session.
async fn abandon(mut socket: Box<Socket>) {
    socket.out.begin_close();
    Box::pin(finish(&mut socket.ws, &socket.out, None, CLOSE_LINGER)).await;
    socket.out.close();
}

/// How long a closing connection may take to take its close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// How long a consumer cut off as too slow has to read what was already on its way and then
/// its 1013 close. Its queue is gone by then, so this holds only the descriptor and the
/// kernel's buffers (and the per-address connection cap bounds how many).
const SLOW_CLOSE_LINGER: Duration = Duration::from_secs(5);

/// Sends the close frame (or answers the client's) behind whatever is still queued, waiting
/// `linger` at most for the peer to take it, then ends the TCP connection without destroying
/// what is still on its way to the peer: FIN, then read and discard whatever the peer still
/// sends (the rest of an oversized frame, its close reply) until it hangs up, for at most a
/// second. Dropping a socket with unread input makes the kernel answer with a reset, and a
/// peer that gets one loses the close frame and anything else it has not read yet.
async fn finish(ws: &mut WebSocketStream<Duplex>, out: &Outbox, close: Option<CloseFrame>, linger: Duration) {
    let _ = tokio::time::timeout(linger, async {
        let _ = ws.close(close).await;
        let _ = out.drained().await;
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        out.shutdown().await;
        let mut discard = vec![0u8; 1024];
        while matches!(ws.get_mut().read.read(&mut discard).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Runs `work` (a command) unless the outbox fails meanwhile, or the work or the socket's
/// writes make no progress for `limit` (a peer that stopped reading blocks them). The limit is
/// checked on the session's heartbeat ticks: no timer is armed per command.
async fn guarded<F: Future>(
    work: F,
    out: &Outbox,
    heartbeat: &mut tokio::time::Interval,
    limit: Duration,
) -> Result<F::Output, End> {
    tokio::pin!(work);
    let started = Instant::now();
    loop {
        tokio::select! {
            res = &mut work => return Ok(res),
            failure = out.failed() => return Err(End::from(failure)),
            _ = heartbeat.tick() => if started.elapsed() > limit || out.stalled_for() > limit {
                return Err(End::Timeout);
            },
        }
    }
}

impl Conn {
    /// Writes a reply. A failed socket ends the session through [`Outbox::failed`].
    fn reply(&self, reply: &Reply) {
        self.out.offer_reply(reply);
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
    async fn handle_text(&mut self, text: &str) -> Result<bool, Failure> {
        // Attachments follow their packet at once; a text frame means no more are coming.
        self.attachments_to_skip = 0;
        let (cmd, tag) = match self.decode(text) {
            Inbound::Command(cmd, tag) => (cmd, tag),
            Inbound::Invalid(tag, message) => {
                self.reply(&Reply::error(tag, "invalid_payload", message));
                return Ok(true);
            }
            Inbound::Answer(frame) => {
                self.out.send_text(frame);
                return Ok(true);
            }
            Inbound::Nothing => return Ok(true),
            Inbound::Close => return Ok(false),
        };
        let result = match cmd {
            Command::Join { room, since } => return self.join(&room, since, tag).await.map(|()| true),
            Command::Leave { room } => {
                self.chat.leave(&mut self.session, &room).map(|room| Some(ReplyBody::Left { room: room.to_string() }))
            }
            Command::Send { room, content, client_id } => self
                .chat
                .send_message(&self.session, &room, &content, client_id.as_deref(), tag.clone())
                .await
                .map(|()| None), // the writer acks once the message is stored
            Command::Typing { room } => self.chat.typing(&mut self.session, &room).map(|()| None),
            Command::MarkRead { room, seq } => {
                self.chat.mark_read(self.session.user.id, self.session.id(), &room, seq).await.map(|(room, m)| {
                    Some(ReplyBody::MarkedRead {
                        room: room.to_string(),
                        seq: m.last_read_seq,
                        unread: m.unread,
                        mentions: m.mentions,
                    })
                })
            }
            Command::Ping => Ok(Some(ReplyBody::Pong)),
            Command::Auth { token } => Ok(Some(self.reauthenticate(&token).await)),
        };
        match result {
            Ok(Some(body)) => self.reply(&Reply::new(tag, body)),
            Ok(None) => {}
            Err(e) => self.chat_error(tag, &e),
        }
        Ok(true)
    }

    /// In-band refresh: a new access token for this session's user extends it to the new
    /// token's expiry. A bad token is answered and changes nothing (the old one still runs).
    async fn reauthenticate(&mut self, token: &str) -> ReplyBody {
        match self.state.auth.authenticate_session(token).await {
            Ok((user, claims)) if user.id == self.session.user.id => {
                self.expires_at = claims.exp;
                self.chat.refresh_session(&self.session, claims.sep);
                ReplyBody::Authenticated { expires_at: claims.exp }
            }
            Ok(_) => ReplyBody::Error { code: "unauthorized", message: "the token is another user's".into() },
            Err(e) => {
                let message = match e.code() {
                    "unauthorized" => e.to_string(),
                    _ => "the token could not be checked now; try again".to_owned(),
                };
                ReplyBody::Error { code: e.code(), message }
            }
        }
    }

    fn chat_error(&self, tag: Tag, e: &ChatError) {
        self.reply(&Reply::error(tag, e.code(), e.client_message()));
    }

    /// Joins, acks with the latest seq, then — with `since` — streams the missed messages
    /// straight from the store before switching the member to live delivery.
    async fn join(&mut self, room: &str, since: Option<Seq>, tag: Tag) -> Result<(), Failure> {
        let joined = match self.chat.join(&mut self.session, room, since, &tag).await {
            Ok(j) => j,
            Err(e) => {
                self.chat_error(tag, &e);
                return Ok(());
            }
        };
        let Some(mut sent) = joined.catch_up_from else { return Ok(()) };
        let form = self.codec.form();
        loop {
            let page = match self.chat.catch_up(&joined.room, sent).await {
                Ok(page) => page,
                Err(e) => {
                    // Cannot resume now: leave, so the client's retry starts clean.
                    self.chat.part(&mut self.session, &joined.room);
                    self.chat_error(Tag::default(), &e);
                    return Ok(());
                }
            };
            if page.is_empty() && self.chat.go_live(&self.session, &joined.room, sent) {
                return Ok(());
            }
            // A page at a time, each written out before the next is read: a resuming client
            // is not cut off as slow for the backlog it asked for.
            for (seq, frame) in page {
                self.out.send_raw(frame.frame(form));
                sent = seq;
            }
            self.out.drained().await?;
        }
    }
}
