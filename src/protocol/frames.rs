//! An event's frames, encoded once.
//!
//! An event is serialised to its native JSON exactly once, where it originates (the room
//! writer for messages, the command for join/leave/typing). Every recipient on every node gets
//! the same bytes (`Utf8Bytes` is a reference-counted buffer); the Socket.IO form is derived
//! from them at most once per node, on first use, and so is each codec's WebSocket frame, which
//! every recipient's socket is then given as is.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio_tungstenite::tungstenite::{
    Utf8Bytes,
    protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    },
};
use uuid::Uuid;

use super::Codec;
use crate::domain::{RoomName, Seq};

/// A WebSocket text frame (server to client: unmasked), header and payload in one buffer, so
/// one buffer is written however many sockets it goes to.
pub fn text_frame(payload: impl Into<Bytes>) -> Bytes {
    let frame = Frame::message(payload, OpCode::Data(Data::Text), true);
    let mut out = Vec::with_capacity(frame.len());
    frame.format(&mut out).expect("formatting a frame into a Vec cannot fail");
    Bytes::from(out)
}

/// What kind of event, with what the hub needs to route it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A stored message: delivered in `seq` order, exactly once per member.
    Message { seq: Seq },
    /// A message's deletion: an event of the same seq stream, delivered like a message.
    Deleted { seq: Seq },
    /// A message's new content: likewise.
    Edited { seq: Seq },
    /// A reaction put on a message or taken back: likewise.
    Reacted { seq: Seq },
    /// A member joined or left; not delivered to the session it came from.
    System { origin: u64 },
    /// A member is typing; not delivered to that user's sessions.
    Typing { user: Uuid },
    /// A user is no longer a member (kicked, banned, or left over REST): delivered to everyone
    /// in the room, the user's own sessions included, which then leave it. The nil user means
    /// everyone (the room was archived).
    Removed { user: Uuid },
    /// A member was muted until `until` (Unix seconds; 0: unmuted): delivered to everyone in
    /// the room; the user's sessions refuse to send there until then.
    Muted { user: Uuid, until: i64 },
    /// A user's read marker moved: delivered to that user's sessions on every node (whether
    /// or not they are in the room), except session `origin` which moved it.
    Read { user: Uuid, origin: u64 },
    /// Who came online or went offline in the room: made by each node for its own members.
    Presence,
}

impl EventKind {
    /// The event name, which is also the Socket.IO event name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Message { .. } => "message",
            Self::Deleted { .. } => "message_deleted",
            Self::Edited { .. } => "message_edited",
            Self::Reacted { .. } => "reaction",
            Self::System { .. } => "system",
            Self::Typing { .. } => "typing",
            Self::Removed { .. } => "removed",
            Self::Muted { .. } => "muted",
            Self::Read { .. } => "read",
            Self::Presence => "presence",
        }
    }
}

/// An event's frames: the native JSON, and the Socket.IO packet made from it on demand.
#[derive(Debug)]
pub struct Encoded {
    pub kind: EventKind,
    pub native: Utf8Bytes,
    /// JSON members only Socket.IO frames carry (`"senderEmail":"…"`: the original platform's
    /// clients show addresses, native clients see display names); empty for most events.
    pub compat: Box<str>,
    socketio: OnceLock<Utf8Bytes>,
    native_frame: OnceLock<Bytes>,
    socketio_frame: OnceLock<Bytes>,
}

impl Encoded {
    pub fn new(kind: EventKind, native: Utf8Bytes) -> Arc<Self> {
        Self::with_compat(kind, native, Box::from(""))
    }

    /// An event whose Socket.IO form also carries `compat` (JSON members, without braces).
    pub fn with_compat(kind: EventKind, native: Utf8Bytes, compat: Box<str>) -> Arc<Self> {
        Arc::new(Self {
            kind,
            native,
            compat,
            socketio: OnceLock::new(),
            native_frame: OnceLock::new(),
            socketio_frame: OnceLock::new(),
        })
    }

    /// The whole WebSocket frame of this event in `codec`, built once.
    pub fn frame(&self, codec: Codec) -> &Bytes {
        match codec {
            Codec::Native => self.native_frame.get_or_init(|| text_frame(self.native.clone())),
            Codec::SocketIo => self.socketio_frame.get_or_init(|| text_frame(self.socketio().clone())),
        }
    }

    /// `42["<event>",<native json>]`, with the compatibility members spliced in first. The
    /// payload keeps its `type` field, which Socket.IO clients ignore, so no second
    /// serialisation is needed.
    pub fn socketio(&self) -> &Utf8Bytes {
        self.socketio.get_or_init(|| {
            let name = self.kind.name();
            let native = self.native.as_str();
            let mut s = String::with_capacity(native.len() + self.compat.len() + name.len() + 9);
            s.push_str("42[\"");
            s.push_str(name);
            s.push_str("\",");
            match native.strip_prefix('{') {
                Some(rest) if !self.compat.is_empty() => {
                    s.push('{');
                    s.push_str(&self.compat);
                    if !rest.starts_with('}') {
                        s.push(',');
                    }
                    s.push_str(rest);
                }
                _ => s.push_str(native),
            }
            s.push(']');
            Utf8Bytes::from(s)
        })
    }
}

/// An event for one room, as published on the bus.
#[derive(Clone, Debug)]
pub struct Event {
    pub room: RoomName,
    pub frame: Arc<Encoded>,
}
