//! The session loop both transports share: frames in become chat commands; the chat core
//! writes events and answers through the outbox, and this task finishes writes the socket
//! could not take at once; heartbeats, a too-slow reader, revocation and shutdown end it.

use std::{future::Future, sync::Arc, time::Duration};

use futures_util::StreamExt as _;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{
    Message,
    error::{CapacityError, Error as WsError},
    protocol::{CloseFrame, frame::coding::CloseCode},
};

use super::{
    Identity,
    upgrade::{CLOSE_LINGER, SLOW_CLOSE_LINGER, Socket, finish},
};
use crate::{
    chat::{ChatError, ChatService, Failure, Outbox, Revocation, Session},
    http::AppState,
    protocol::{Codec, Command, Reply, ReplyBody, Tag, Utf8Bytes, native, socketio},
    telemetry,
};

/// What an inbound text frame asks for.
enum Inbound {
    Command(Command, Tag),
    Invalid(Tag, String),
    /// Answer with this frame (Engine.IO ping from the client, CONNECT to another namespace).
    Answer(Utf8Bytes),
    Nothing,
    Close,
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

struct Driver {
    chat: ChatService,
    session: Session,
    out: Arc<Outbox>,
    /// Binary frames still due as attachments of a refused Socket.IO binary packet: dropped
    /// quietly, since the packet itself was already answered.
    attachments_to_skip: usize,
    /// Unix seconds when the session's token expires (later after an in-band `auth`).
    expires_at: i64,
    state: AppState,
}

/// What a session starts with: who it runs as, the frames that greet the client, and commands
/// that came before the WebSocket did. Boxed, as it is gone once the session runs, while its
/// room in the session's future would stay for the connection's life.
pub(super) struct Opening {
    pub who: Identity,
    pub greeting: Vec<Utf8Bytes>,
    pub replay: Vec<String>,
}

/// The session loop shared by both transports: frames in become chat commands; the chat core
/// writes events and answers through the outbox, and this task finishes writes the socket
/// could not take at once; heartbeats, a too-slow reader and shutdown end it.
pub(super) async fn run_session(mut socket: Box<Socket>, state: AppState, opening: Box<Opening>) {
    let Opening { who, greeting, replay } = *opening;
    let (out, codec) = (Arc::clone(&socket.out), socket.out.codec());
    let chat = state.chat.clone();
    let expires_at = who.expires_at;
    let origin = crate::chat::registry::Origin { addr: socket.peer, transport: codec.label() };
    let session = match chat.open_session(who.user, who.epoch, Arc::clone(&out), origin) {
        Ok(session) => session,
        Err(e) => return refuse(socket, &e).await,
    };
    let mut driver =
        Driver { chat, session, out: Arc::clone(&out), attachments_to_skip: 0, expires_at, state: state.clone() };
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
        if end == End::Client && !matches!(Box::pin(driver.handle_text(&text)).await, Ok(true)) {
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
                    let text = match frame {
                        Some(Ok(Message::Text(text))) => text,
                        other => match driver.on_other_frame(other.as_ref()) {
                            Some(end) => break end,
                            None => continue,
                        },
                    };
                    // Boxed: a command's future (a join streams history) is far larger than
                    // the idle loop, and every idle connection would carry it.
                    let work = Box::pin(driver.handle_text(&text));
                    match guarded(work, &out, &mut heartbeat, idle).await {
                        Ok(Ok(true)) => {}
                        Ok(Ok(false)) => break End::Client,
                        Ok(Err(failure)) => break End::from(failure),
                        Err(end) => break end,
                    }
                }
                failure = out.failed() => break End::from(failure),
                _ = heartbeat.tick() => {
                    // A peer that stops reading leaves its writes stuck: cut it off as idle.
                    if last_seen.elapsed() > idle || out.stalled_for() > idle {
                        break End::Timeout;
                    }
                    // Checked on the heartbeat, so an idle session costs no timer of its own.
                    if chrono::Utc::now().timestamp() >= driver.expires_at {
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
    driver.chat.close_session(&mut driver.session);
    if let End::Revoked(why) = end {
        // Said before the close, so clients that cannot read close reasons know what to do.
        let _ = out.send_text(codec.notice(why.code(), why.message()));
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
async fn refuse(mut socket: Box<Socket>, e: &ChatError) {
    let why = match socket.out.codec() {
        Codec::Native => native::reply(&Reply::error(Tag::default(), e.code(), e.client_message())),
        Codec::SocketIo => socketio::connect_error("/", e.code()),
    };
    let _ = socket.out.send_text(why);
    socket.out.begin_close();
    let close = CloseFrame { code: CloseCode::Policy, reason: "too many connections for this account".into() };
    Box::pin(finish(&mut socket.ws, &socket.out, Some(close), CLOSE_LINGER)).await;
    socket.out.close();
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

impl Driver {
    /// Handles a frame that is not text (or the end of the stream, or a read error); returns
    /// how the session ends, if it does.
    fn on_other_frame(&mut self, frame: Option<&Result<Message, WsError>>) -> Option<End> {
        match frame {
            Some(Ok(Message::Binary(_))) if self.attachments_to_skip > 0 => self.attachments_to_skip -= 1,
            Some(Ok(Message::Binary(_))) => {
                let message = "binary frames are not supported; send JSON text";
                self.reply(&Reply::error(Tag::default(), "invalid_payload", message));
                if self.out.codec() == Codec::Native {
                    return Some(End::Refused(CloseCode::Unsupported, "binary frames are not supported"));
                }
            }
            Some(Ok(Message::Close(_))) | None => return Some(End::Client),
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                let message = format!("frame larger than {} bytes", self.state.config.ws.max_frame);
                self.reply(&Reply::error(Tag::default(), "invalid_payload", message));
                return Some(End::Refused(CloseCode::Size, "frame too large"));
            }
            Some(Err(WsError::Utf8(_))) => return Some(End::Refused(CloseCode::Invalid, "text frames must be UTF-8")),
            Some(Err(_)) => return Some(End::Error),
            // Ping (answered by tungstenite), pong, raw frame; text is a command.
            Some(Ok(_)) => {}
        }
        None
    }

    /// Writes a reply. A failed socket ends the session through [`Outbox::failed`].
    fn reply(&self, reply: &Reply) {
        self.out.offer_reply(reply);
    }

    fn decode(&mut self, text: &str) -> Inbound {
        match self.out.codec() {
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
            Command::Join { room, since } => self.chat.join(&mut self.session, &room, since, &tag).await.map(|()| None),
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
}
