//! The chat's own vocabulary, independent of storage and transport.
//!
//! - `names`: parsed newtypes for everything that crosses a trust boundary (email, room name,
//!   content…). Once you hold one, it is valid, so deeper layers never re-check.
//! - `user`: who a user is; `message`: the seq stream of a room.
//!
//! Everything is re-exported here: import `crate::domain::X`, not the file it lives in.

mod message;
mod names;
mod user;

pub use message::Seq;
pub use names::{
    ClientId, Content, DisplayName, Email, InvalidContent, InvalidDisplayName, InvalidEmail, InvalidPassword,
    InvalidQuery, InvalidReaction, InvalidRoom, InvalidToken64, Password, Reaction, RoomName, SearchQuery,
    is_invisible,
};
pub use user::UserId;
