//! Messages: the rows of a room's seq stream (messages, edits, deletions, reactions), and how
//! they appear on the wire.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{RoomName, UserId};

/// A per-room message sequence number; the first message of a room has seq 1.
pub type Seq = i64;

/// A stored chat message; serialises to the wire `Message` shape of `PROTOCOL.md`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: Uuid,
    pub room: String,
    pub seq: Seq,
    pub sender_id: Uuid,
    /// Not on the native wire (rooms see names, not addresses): Socket.IO compatibility frames
    /// add it as `senderEmail` for the original platform's clients.
    #[serde(skip)]
    pub sender_email: String,
    /// The sender's display name when they wrote it.
    pub sender_name: String,
    pub content: String,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// A message, or the event of one's deletion (which the wire shows as `message_deleted`).
    #[serde(skip)]
    #[sqlx(try_from = "String")]
    pub kind: MessageKind,
    /// For a deletion: the message deleted.
    #[serde(skip)]
    pub target_id: Option<Uuid>,
    /// Set once deleted; the content is then empty.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "rfc3339_opt")]
    pub deleted_at: Option<DateTime<Utc>>,
    /// Set once edited: `content` is the latest version.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "rfc3339_opt")]
    pub edited_at: Option<DateTime<Utc>>,
    /// For a reaction event: how many have that reaction on the message after it.
    #[serde(skip)]
    pub tally: Option<i64>,
    /// Whom it mentions (`mentions`, `mentionsAll` on the wire).
    #[serde(flatten)]
    #[sqlx(try_from = "Option<String>")]
    pub mentions: Mentions,
}

/// Whom a message mentions: members by id, and for `@room` / `@here` (by a moderator) everyone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Mentions {
    #[serde(rename = "mentions", skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<Uuid>,
    #[serde(rename = "mentionsAll", skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

impl Mentions {
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && !self.all
    }

    /// As stored: user ids separated by spaces, `all` for everyone; `None` when nobody.
    pub fn to_db(&self) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        let mut parts: Vec<String> = self.users.iter().map(Uuid::to_string).collect();
        if self.all {
            parts.push("all".into());
        }
        Some(parts.join(" "))
    }

    /// The rows of the `mentions` table: each user, and the nil user for everyone.
    pub fn targets(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.users.iter().copied().chain(self.all.then_some(Uuid::nil()))
    }
}

impl TryFrom<Option<String>> for Mentions {
    type Error = String;
    fn try_from(raw: Option<String>) -> Result<Self, Self::Error> {
        let mut out = Self::default();
        for part in raw.as_deref().unwrap_or_default().split_whitespace() {
            if part == "all" {
                out.all = true;
            } else {
                out.users.push(part.parse().map_err(|e| format!("bad mention {part:?}: {e}"))?);
            }
        }
        Ok(out)
    }
}

/// What a row of a room's seq stream is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MessageKind {
    #[default]
    Message,
    /// A new version (`content`) of the message `target_id`, by its author.
    Edit,
    /// The deletion of the message `target_id`, by `sender_id`.
    Delete,
    /// `sender_id` put the reaction `content` (an emoji) on the message `target_id`.
    React,
    /// `sender_id` took the reaction `content` back.
    Unreact,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Edit => "edit",
            Self::Delete => "delete",
            Self::React => "react",
            Self::Unreact => "unreact",
        }
    }
}

impl TryFrom<String> for MessageKind {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "message" => Ok(Self::Message),
            "edit" => Ok(Self::Edit),
            "delete" => Ok(Self::Delete),
            "react" => Ok(Self::React),
            "unreact" => Ok(Self::Unreact),
            _ => Err(format!("unknown message kind {s:?}")),
        }
    }
}

#[allow(clippy::ref_option)] // serde hands `serialize_with` a reference to the field
fn rfc3339_opt<S: serde::Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&t.to_rfc3339()),
        None => s.serialize_none(),
    }
}

/// `createdAt` exactly as the REST API writes it (`…+00:00`), so a client comparing a live
/// message with the same message from history sees the same string.
pub(super) fn rfc3339<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339())
}

/// A message to store; it gets its `seq` from the store.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub id: Uuid,
    pub room: RoomName,
    pub sender_id: UserId,
    pub sender_email: String,
    pub sender_name: String,
    pub content: String,
    pub client_id: Option<String>,
    pub created_at: DateTime<Utc>,
    /// `Delete` with `target_id`: the deletion of that message (empty content, no client id).
    pub kind: MessageKind,
    pub target_id: Option<Uuid>,
    /// Whom a message mentions, resolved when it was sent.
    pub mentions: Mentions,
}

/// One emoji on one message.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ReactionCount {
    pub message_id: Uuid,
    pub emoji: String,
    pub count: i64,
    /// Whether I am among them.
    pub mine: bool,
}
