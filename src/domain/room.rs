//! Rooms: what kind they are, who is in them with which role, how far each member has read.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{RoomName, Seq, UserId};

/// Who may find and join a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RoomKind {
    /// Listed to everyone; anyone may join (and so becomes a member).
    Public,
    /// Listed to and joined by its members only; members are invited.
    Private,
    /// Two users' conversation.
    Direct,
}

impl RoomKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Private => "private",
            Self::Direct => "direct",
        }
    }
}

impl TryFrom<String> for RoomKind {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "public" => Ok(Self::Public),
            "private" => Ok(Self::Private),
            "direct" => Ok(Self::Direct),
            _ => Err(format!("unknown room kind {s:?}")),
        }
    }
}

/// A member's role in a room, from least to most power.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Member,
    /// Deletes any message, kicks, bans and mutes members.
    Moderator,
    /// A moderator who also manages the room and its moderators.
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::Moderator => "moderator",
            Self::Owner => "owner",
        }
    }
}

impl TryFrom<String> for Role {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "member" => Ok(Self::Member),
            "moderator" => Ok(Self::Moderator),
            "owner" => Ok(Self::Owner),
            _ => Err(format!("unknown role {s:?}")),
        }
    }
}

/// A room as stored.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Room {
    pub name: String,
    #[sqlx(try_from = "String")]
    pub kind: RoomKind,
    pub title: Option<String>,
    pub topic: Option<String>,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub archived_at: Option<DateTime<Utc>>,
    pub last_seq: Seq,
    /// Messages ever posted (edits, deletions and reactions not counted).
    pub message_count: i64,
}

/// A room listed for a user, with the user's role when a member.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct RoomListing {
    #[sqlx(flatten)]
    pub room: Room,
    pub role: Option<String>,
    /// How far the user has read, when a member.
    pub last_read_seq: Option<Seq>,
    /// How many messages that covers, when a member.
    pub read_count: Option<i64>,
    /// Mentions of the user (or of everyone) after the marker.
    pub unread_mentions: i64,
}

impl RoomListing {
    /// Messages after my read marker, when a member.
    pub fn unread(&self) -> Option<i64> {
        self.read_count.map(|read| (self.room.message_count - read).max(0))
    }
}

/// A member's read marker in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadMarker {
    pub last_read_seq: Seq,
    /// Messages after it.
    pub unread: i64,
    /// Mentions of me (by name, or of everyone) after it.
    pub mentions: i64,
}

/// One user's standing in one room.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Membership {
    #[sqlx(try_from = "String")]
    pub role: Role,
    pub banned_at: Option<DateTime<Utc>>,
    pub muted_until: Option<DateTime<Utc>>,
    /// How far they have read the room.
    pub last_read_seq: Seq,
    /// How many messages that covers.
    pub read_count: i64,
}

impl Membership {
    /// What an administrator who is not a member counts as: an owner, never muted.
    pub fn admin() -> Self {
        Self { role: Role::Owner, banned_at: None, muted_until: None, last_read_seq: 0, read_count: 0 }
    }
}

/// A member as a room's member list shows it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Member {
    pub user_id: Uuid,
    pub display_name: String,
    #[sqlx(try_from = "String")]
    pub role: Role,
    pub joined_at: DateTime<Utc>,
    pub muted_until: Option<DateTime<Utc>>,
}

/// A user banned from a room.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Ban {
    pub user_id: Uuid,
    pub display_name: String,
    pub banned_at: DateTime<Utc>,
}

/// A room to create.
#[derive(Clone, Debug)]
pub struct NewRoom {
    pub name: RoomName,
    pub kind: RoomKind,
    pub title: Option<String>,
    pub topic: Option<String>,
    pub created_by: UserId,
}

/// The other member of a direct room.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Peer {
    pub room: String,
    pub user_id: Uuid,
    pub display_name: String,
}

/// A room with activity.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct RoomSummary {
    pub name: String,
    pub last_seq: Seq,
}

/// The prefix reserved for direct rooms' names: no other room may take one.
pub const DIRECT_PREFIX: &str = "dm:";

/// The name of the direct room of `a` and `b`: `dm:` and 40 hex digits of the SHA-256 of the
/// two ids in order, so the pair always gets the same room and the name says nothing of who.
pub fn direct_room_name(a: UserId, b: UserId) -> RoomName {
    use sha2::{Digest as _, Sha256};
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut hasher = Sha256::new();
    hasher.update(lo.0.as_bytes());
    hasher.update(hi.0.as_bytes());
    let hex = hex::encode(hasher.finalize());
    RoomName::parse(&format!("{DIRECT_PREFIX}{}", &hex[..40])).expect("dm: and hex digits make a valid room name")
}
