//! The audit log: administrative and moderation actions, who did them and to whom.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::message::rfc3339;

/// An administrative or moderation action to record.
#[derive(Clone, Debug)]
pub struct NewAudit {
    /// None: the command line.
    pub actor_id: Option<Uuid>,
    /// The actor's email, or `cli`.
    pub actor: String,
    /// The client's address, or `cli:<login>`.
    pub source: String,
    /// e.g. `room.ban`, `user.disable`.
    pub action: &'static str,
    /// Whom it was done to (an email or a user id), if anyone.
    pub target: Option<String>,
    pub room: Option<String>,
    pub detail: Option<String>,
}

/// A recorded action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub id: i64,
    #[serde(serialize_with = "rfc3339")]
    pub at: DateTime<Utc>,
    pub actor_id: Option<Uuid>,
    pub actor: String,
    pub source: String,
    pub action: String,
    pub target: Option<String>,
    pub room: Option<String>,
    pub detail: Option<String>,
}
