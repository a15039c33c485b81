//! The chat's own vocabulary, independent of storage and transport.
//!
//! - `names`: parsed newtypes for everything that crosses a trust boundary (email, room name,
//!   content…). Once you hold one, it is valid, so deeper layers never re-check.
//! - `user`, `room`, `message`, `audit`: the plain data of accounts, rooms and their members,
//!   the messages of a room's seq stream, and the audit log. The store reads and writes them
//!   (hence their `sqlx::FromRow`), the chat core and the APIs pass them around.
//!
//! Everything is re-exported here: import `crate::domain::X`, not the file it lives in.

mod audit;
mod message;
mod names;
mod room;
mod user;

pub use audit::{AuditEntry, NewAudit};
pub use message::{Mentions, Message, MessageKind, NewMessage, ReactionCount, Seq};
pub use names::{
    ClientId, Content, DisplayName, Email, InvalidContent, InvalidDisplayName, InvalidEmail, InvalidPassword,
    InvalidQuery, InvalidReaction, InvalidRoom, InvalidToken64, Password, Reaction, RoomName, SearchQuery,
    is_invisible,
};
pub use room::{
    Ban, DIRECT_PREFIX, Member, Membership, NewRoom, Peer, ReadMarker, Role, Room, RoomKind, RoomListing, RoomSummary,
    direct_room_name,
};
pub use user::{Credentials, User, UserId};
