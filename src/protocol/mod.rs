//! The wire of docs/PROTOCOL.md, pure: commands decoded from client frames, replies and events
//! encoded for the two codecs (the native JSON protocol and Socket.IO v5 over Engine.IO v4).
//! No I/O, no state, no tasks; everything above (the chat core, the bus, the HTTP transports)
//! speaks in these types.
//!
//! - [`Command`] is what a client asks; [`Reply`] (tagged by [`Tag`]) answers it.
//! - [`frames`]: an event ([`Event`]) is encoded once, and its frames once per [`Codec`].
//! - [`events`]: the server's events (`message`, `system`, `typing`, …) as the native JSON.
//! - [`native`] and [`socketio`]: the two codecs.

pub mod events;
pub mod frames;
pub mod native;
pub mod socketio;

use bytes::Bytes;
/// Text payloads: reference-counted UTF-8, shared by every socket a frame goes to.
pub use tokio_tungstenite::tungstenite::Utf8Bytes;
use uuid::Uuid;

pub use self::frames::{Encoded, Event, EventKind, text_frame};
use crate::domain::Seq;

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

/// Which command a reply answers: the native `ref` and/or the Socket.IO ack id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tag {
    pub cmd_ref: Option<String>,
    pub ack_id: Option<u64>,
}

/// Longest accepted `ref` of a command, in characters, on either codec.
pub const MAX_REF: usize = 64;

/// Whether `cmd_ref` is short enough to be echoed back.
pub fn ref_fits(cmd_ref: &str) -> bool {
    cmd_ref.chars().count() <= MAX_REF
}

/// A command's result, transport-neutral; each codec encodes it its own way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub tag: Tag,
    pub body: ReplyBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyBody {
    /// `send_message` stored (or found stored, for a repeated client id).
    Sent {
        id: Uuid,
        seq: Seq,
    },
    /// `join_room`: the room's latest seq.
    Joined {
        room: String,
        seq: Seq,
    },
    Left {
        room: String,
    },
    /// `mark_read`: where my read marker in `room` now stands.
    MarkedRead {
        room: String,
        seq: Seq,
        /// Messages after it.
        unread: i64,
        /// Of those, the ones that mention me.
        mentions: i64,
    },
    /// `auth`: the session now runs until the new token's expiry (Unix seconds).
    Authenticated {
        expires_at: i64,
    },
    Pong,
    Error {
        code: &'static str,
        message: String,
    },
}

impl Reply {
    pub fn new(tag: Tag, body: ReplyBody) -> Self {
        Self { tag, body }
    }

    pub fn error(tag: Tag, code: &'static str, message: impl Into<String>) -> Self {
        Self { tag, body: ReplyBody::Error { code, message: message.into() } }
    }
}

/// How a session's frames look on the wire. Everything else about a session is shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// The native JSON protocol of PROTOCOL.md.
    Native,
    /// Socket.IO v5 packets over Engine.IO v4.
    SocketIo,
}

impl Codec {
    /// The `transport` label of metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::SocketIo => "socketio",
        }
    }

    /// A reply as whole WebSocket frames: one native frame; or a Socket.IO ack (or `error`
    /// event) and the `system` lines the original platform sent with it.
    pub fn encode_reply(self, reply: &Reply) -> Vec<Bytes> {
        match self {
            Self::Native => vec![text_frame(native::reply(reply))],
            Self::SocketIo => socketio::reply(reply).into_iter().map(text_frame).collect(),
        }
    }

    /// The heartbeat, framed: a WebSocket ping, or Engine.IO's own `2` in a text frame.
    pub fn heartbeat(self) -> Bytes {
        match self {
            Self::Native => Bytes::from_static(&[0x89, 0x00]),
            Self::SocketIo => Bytes::from_static(&[0x81, 0x01, b'2']),
        }
    }

    /// An error the server raises on its own (not an answer to a command), such as why a
    /// session ends: an `error` frame, or a Socket.IO `error` event.
    pub fn notice(self, code: &'static str, message: &str) -> Utf8Bytes {
        let reply = Reply::error(Tag::default(), code, message);
        match self {
            Self::Native => native::reply(&reply),
            Self::SocketIo => Utf8Bytes::from(format!("42[\"error\",{}]", native::reply_json(&reply))),
        }
    }
}
