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
    /// The answer to one of this session's commands, encoded by its transport's codec.
    Reply(Reply),
}

/// A command's result, transport-neutral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `send_message` stored (or found stored, for a repeated client id).
    Sent {
        cmd_ref: Option<String>,
        id: Uuid,
        seq: Seq,
    },
    /// `join_room`: the room's latest seq.
    Joined {
        cmd_ref: Option<String>,
        room: String,
        seq: Seq,
    },
    Left {
        cmd_ref: Option<String>,
        room: String,
    },
    Pong {
        cmd_ref: Option<String>,
    },
    Error {
        cmd_ref: Option<String>,
        code: &'static str,
        message: String,
    },
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
