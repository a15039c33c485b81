//! What a chat command can fail with, one wire `code` per variant.

use crate::store::StoreError;

/// Everything a chat command can fail with. Each variant is exactly one wire `code`.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{0}")]
    InvalidPayload(String),
    #[error("room names are 1 to 64 characters of A-Z a-z 0-9 : _ -")]
    InvalidRoom,
    #[error("message is longer than {max} characters")]
    TooLong { max: usize },
    #[error("too many {0}; slow down")]
    RateLimited(&'static str),
    #[error("this account has {max} connections open already; close one first")]
    TooManySessions { max: u32 },
    #[error("join the room before using it")]
    NotJoined,
    #[error("no such room")]
    NoSuchRoom,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("you are muted in this room until {until}")]
    Muted { until: String },
    #[error("the server is shutting down or overloaded; try again")]
    Unavailable,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ChatError {
    /// The `code` that `PROTOCOL.md` promises for this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidPayload(_) => "invalid_payload",
            Self::InvalidRoom => "invalid_room",
            Self::TooLong { .. } => "too_long",
            Self::RateLimited(_) => "rate_limited",
            Self::TooManySessions { .. } => "too_many_sessions",
            Self::NotJoined => "not_joined",
            Self::NoSuchRoom => "not_found",
            Self::Forbidden(_) => "forbidden",
            Self::Muted { .. } => "muted",
            Self::Unavailable => "unavailable",
            Self::Store(e) if e.is_unavailable() => "unavailable",
            Self::Store(_) => "internal",
        }
    }

    /// The message shown to the client: store details stay in the server log.
    pub fn client_message(&self) -> String {
        match self {
            Self::Store(e) => {
                tracing::warn!(error = ?e, "chat command failed in the store");
                "the server could not complete this; try again".into()
            }
            other => other.to_string(),
        }
    }
}
