//! WebSocket transports: authentication and origin checks before the upgrade, then one session
//! loop that turns frames into chat commands and drains the session's outbound queue.
//!
//! The upgrade is done here rather than with poem's `WebSocket` extractor so that frames are
//! tungstenite `Utf8Bytes`: an event's bytes are shared by every recipient instead of copied
//! into a `String` per socket, and the buffers are sized for many idle connections.

pub mod native;

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _, stream::SplitSink};
use poem::{
    Request, Response, Upgraded, handler,
    http::{StatusCode, header},
    web::Data,
};
use tokio::time::Instant;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message, Utf8Bytes,
        error::{CapacityError, Error as WsError},
        handshake::derive_accept_key,
        protocol::{CloseFrame, Role, WebSocketConfig, frame::coding::CloseCode},
    },
};
use tokio_util::sync::CancellationToken;

use super::{AppState, error};
use crate::{
    chat::{ChatError, ChatService, Outbound, Reply, Session},
    config::WsConfig,
    domain::Seq,
    store::User,
    telemetry,
};

/// A transport-neutral command decoded from a frame.
#[derive(Debug)]
pub enum Command {
    Join { room: String, since: Option<Seq>, cmd_ref: Option<String> },
    Leave { room: String, cmd_ref: Option<String> },
    Send { room: String, content: String, client_id: Option<String>, cmd_ref: Option<String> },
    Typing { room: String, cmd_ref: Option<String> },
    Ping { cmd_ref: Option<String> },
}

impl Command {
    pub fn cmd_ref(&self) -> Option<&str> {
        match self {
            Self::Join { cmd_ref, .. }
            | Self::Leave { cmd_ref, .. }
            | Self::Send { cmd_ref, .. }
            | Self::Typing { cmd_ref, .. }
            | Self::Ping { cmd_ref } => cmd_ref.as_deref(),
        }
    }
}

/// Frames written per flush when the queue has a backlog.
const WRITE_BATCH: usize = 64;

/// `GET /ws`: the native protocol.
#[handler]
pub async fn native_endpoint(req: &Request, state: Data<&AppState>) -> Response {
    let user = match authorize(req, &state).await {
        Ok(user) => user,
        Err(resp) => return *resp,
    };
    upgrade(req, &state, user)
}

/// Checks that this is a WebSocket upgrade from an allowed origin with a valid token.
async fn authorize(req: &Request, state: &AppState) -> Result<User, Box<Response>> {
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
    let Some(token) = bearer_token(req) else {
        return Err(Box::new(json_error(StatusCode::UNAUTHORIZED, "missing access token", "unauthorized")));
    };
    state.auth.authenticate(&token).await.map_err(|e| {
        let status = if e.code() == "unavailable" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::UNAUTHORIZED };
        Box::new(json_error(status, &e.to_string(), e.code()))
    })
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

/// Answers 101 and runs the session on the upgraded connection, tracked for shutdown.
fn upgrade(req: &Request, state: &AppState, user: User) -> Response {
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
        run_session(socket, state, user).await;
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
        .read_buffer_size(4 * 1024)
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

struct Conn {
    chat: ChatService,
    session: Session,
    sink: Sink,
    /// `send_message` commands not yet acked: shutdown waits for them.
    inflight: usize,
}

async fn run_session(socket: WebSocketStream<Upgraded>, state: AppState, user: User) {
    let chat = state.chat.clone();
    let (session, mut outbound) = chat.open_session(user);
    let (sink, mut stream) = socket.split();
    let mut conn = Conn { chat, session, sink, inflight: 0 };
    let transport = "native";
    metrics::gauge!(telemetry::WS_SESSIONS, "transport" => transport).increment(1.0);
    let kick = conn.session.handle.kick.clone();
    let shutdown: CancellationToken = state.shutdown.clone();
    let ws = &state.config.ws;
    let mut heartbeat = tokio::time::interval(ws.ping_interval.0);
    heartbeat.tick().await;
    let mut last_seen = Instant::now();

    let mut end = match conn.write(native::hello(&conn.session.user, &state.node_id)).await {
        Ok(()) => End::Client,
        Err(_) => End::Error,
    };
    if end == End::Client {
        end = loop {
            tokio::select! {
                frame = stream.next() => {
                    last_seen = Instant::now();
                    match frame {
                        Some(Ok(Message::Text(text))) => {
                            let handled = tokio::select! {
                                r = tokio::time::timeout(ws.idle_timeout.0, conn.handle_text(&text)) => r,
                                () = kick.cancelled() => break End::Slow,
                            };
                            if !matches!(handled, Ok(Ok(()))) { break End::Error; }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            let _ = conn.error(None, "invalid_payload", "binary frames are not supported; send JSON text").await;
                            break End::Refused(CloseCode::Unsupported, "binary frames are not supported");
                        }
                        Some(Ok(Message::Close(_))) | None => break End::Client,
                        Some(Ok(_)) => {} // ping (answered by tungstenite), pong, raw frame
                        Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                            let message = format!("frame larger than {} bytes", ws.max_frame);
                            let _ = conn.error(None, "invalid_payload", &message).await;
                            break End::Refused(CloseCode::Size, "frame too large");
                        }
                        Some(Err(_)) => break End::Error,
                    }
                }
                out = outbound.recv() => match out {
                    // A peer that stops reading blocks the write; the hub kicks it once its queue
                    // is full, and the timeout catches one in a room too quiet to fill it.
                    Some(out) => {
                        let written = tokio::select! {
                            r = tokio::time::timeout(ws.idle_timeout.0, conn.write_outbound(out, &mut outbound)) => r,
                            () = kick.cancelled() => break End::Slow,
                        };
                        if !matches!(written, Ok(Ok(()))) { break End::Error; }
                    }
                    None => break End::Error,
                },
                () = kick.cancelled() => break End::Slow,
                _ = heartbeat.tick() => {
                    if last_seen.elapsed() > ws.idle_timeout.0 { break End::Timeout; }
                    if conn.sink.send(Message::Ping(bytes::Bytes::new())).await.is_err() { break End::Error; }
                }
                () = shutdown.cancelled() => {
                    conn.finish_inflight(&mut outbound, state.config.shutdown.grace.0).await;
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
    metrics::gauge!(telemetry::WS_SESSIONS, "transport" => transport).decrement(1.0);
    metrics::counter!(telemetry::WS_SESSIONS_CLOSED, "reason" => end.label()).increment(1);
}

impl Conn {
    async fn write(&mut self, frame: Utf8Bytes) -> Result<(), WsError> {
        self.sink.send(Message::Text(frame)).await
    }

    async fn error(&mut self, cmd_ref: Option<String>, code: &'static str, message: &str) -> Result<(), WsError> {
        self.write(native::reply(&Reply::Error { cmd_ref, code, message: message.to_owned() })).await
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
        self.sink.flush().await
    }

    async fn feed(&mut self, out: Outbound) -> Result<(), WsError> {
        let frame = match out {
            Outbound::Event(ev) => ev.native.clone(),
            Outbound::Reply(reply) => {
                if matches!(reply, Reply::Sent { .. })
                    || matches!(reply, Reply::Error { code: "unavailable" | "internal", .. })
                {
                    self.inflight = self.inflight.saturating_sub(1);
                }
                native::reply(&reply)
            }
        };
        self.sink.feed(Message::Text(frame)).await
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

    async fn handle_text(&mut self, text: &str) -> Result<(), WsError> {
        let cmd = match native::decode(text) {
            Ok(cmd) => cmd,
            Err(e) => return self.error(e.cmd_ref, "invalid_payload", &e.message).await,
        };
        match cmd {
            Command::Join { room, since, cmd_ref } => self.join(&room, since, cmd_ref).await,
            Command::Leave { room, cmd_ref } => match self.chat.leave(&mut self.session, &room) {
                Ok(room) => self.write(native::reply(&Reply::Left { cmd_ref, room: room.to_string() })).await,
                Err(e) => self.chat_error(cmd_ref, &e).await,
            },
            Command::Send { room, content, client_id, cmd_ref } => {
                match self
                    .chat
                    .send_message(&self.session, &room, &content, client_id.as_deref(), cmd_ref.clone())
                    .await
                {
                    Ok(()) => {
                        self.inflight += 1;
                        Ok(())
                    }
                    Err(e) => self.chat_error(cmd_ref, &e).await,
                }
            }
            Command::Typing { room, cmd_ref } => match self.chat.typing(&mut self.session, &room) {
                Ok(()) => Ok(()),
                Err(e) => self.chat_error(cmd_ref, &e).await,
            },
            Command::Ping { cmd_ref } => self.write(native::reply(&Reply::Pong { cmd_ref })).await,
        }
    }

    async fn chat_error(&mut self, cmd_ref: Option<String>, e: &ChatError) -> Result<(), WsError> {
        self.error(cmd_ref, e.code(), &e.client_message()).await
    }

    /// Joins, acks with the latest seq, then — with `since` — streams the missed messages
    /// straight from the store before switching the member to live delivery.
    async fn join(&mut self, room: &str, since: Option<Seq>, cmd_ref: Option<String>) -> Result<(), WsError> {
        let joined = match self.chat.join(&mut self.session, room, since).await {
            Ok(j) => j,
            Err(e) => return self.chat_error(cmd_ref, &e).await,
        };
        let ack = Reply::Joined { cmd_ref, room: joined.room.to_string(), seq: joined.latest };
        self.write(native::reply(&ack)).await?;
        let Some(mut sent) = joined.catch_up_from else { return Ok(()) };
        loop {
            let page = match self.chat.catch_up(&joined.room, sent).await {
                Ok(page) => page,
                Err(e) => {
                    // Cannot resume now: leave, so the client's retry starts clean.
                    let _ = self.chat.leave(&mut self.session, joined.room.as_str());
                    return self.chat_error(None, &e).await;
                }
            };
            if page.is_empty() && self.chat.go_live(&self.session, &joined.room, sent) {
                return Ok(());
            }
            for (seq, frame) in page {
                self.sink.feed(Message::Text(frame.native.clone())).await?;
                sent = seq;
            }
            self.sink.flush().await?;
        }
    }
}
