//! A session as the rest of the chat core sees it: a bounded outbound queue and a way to cut it
//! off. The transport (native WebSocket or Socket.IO) owns the socket and drains the queue.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::event::Encoded;
use crate::domain::Seq;

/// Something to write to one session.
#[derive(Debug)]
pub enum Outbound {
    /// A fan-out event, shared by every recipient.
    Event(Arc<Encoded>),
    /// The answer to one of this session's commands, encoded by its transport's codec. Boxed so
    /// a queue slot is two words: tokio allocates a connection's first block of slots up front.
    Reply(Box<Reply>),
}

/// Which command a reply answers: the native `ref` and/or the Socket.IO ack id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tag {
    pub cmd_ref: Option<String>,
    pub ack_id: Option<u64>,
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

    /// Whether this answers a `send_message` (stored, or failed to store).
    pub fn settles_send(&self) -> bool {
        matches!(self.body, ReplyBody::Sent { .. } | ReplyBody::Error { code: "unavailable" | "internal", .. })
    }
}

/// The hub's handle on a session: where to put its frames, and how to close it.
#[derive(Clone, Debug)]
pub struct SessionHandle {
    /// Random per session, unique across nodes for all practical purposes.
    pub id: u64,
    pub user: Uuid,
    pub tx: mpsc::Sender<Outbound>,
    /// Cancelled when the session must go: its queue overflowed (close 1013).
    pub kick: CancellationToken,
}

impl SessionHandle {
    /// Creates a handle and the receiving end of its queue.
    pub fn new(user: Uuid, capacity: usize) -> (Self, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { id: rand::random(), user, tx, kick: CancellationToken::new() }, rx)
    }

    /// Queues `out` without waiting. A full queue means the client is not reading: it is
    /// kicked (and resumes later with `since`) rather than letting memory grow.
    pub fn offer(&self, out: Outbound) -> bool {
        match self.tx.try_send(out) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.kick.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // tokio allocates a connection's first block of 32 queue slots when the channel is made, so
    // the slot size is per-connection memory for every idle client.
    #[test]
    fn a_queue_slot_is_two_words() {
        assert_eq!(std::mem::size_of::<Outbound>(), 2 * std::mem::size_of::<usize>());
    }
}
