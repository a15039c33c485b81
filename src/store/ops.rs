//! What operators and the cluster keep in the database: the audit log, and each node's list of
//! open sessions.

use chrono::{DateTime, SubsecRound as _, Utc};

use super::{Store, StoreError};
use crate::domain::{AuditEntry, NewAudit};

/// One node's open sessions, as it last published them: a JSON array the chat core writes and
/// `confab user sessions` reads; the store keeps it as text.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct NodeSessions {
    pub node: String,
    pub seen_at: DateTime<Utc>,
    pub sessions: String,
}

impl Store {
    /// Records an administrative or moderation action.
    pub async fn append_audit(&self, entry: &NewAudit) -> Result<(), StoreError> {
        each_backend!(self, s => s.append_audit(entry, Utc::now().trunc_subsecs(6)).await)
    }

    /// The newest `limit` audit entries older than entry `before` (all if None), newest first.
    pub async fn audit_log(&self, before: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        each_backend!(self, s => s.audit_log(before.unwrap_or(i64::MAX), i64::from(limit)).await)
    }

    /// Replaces `node`'s published list of open sessions (JSON).
    pub async fn publish_sessions(&self, node: &str, sessions: &str) -> Result<(), StoreError> {
        each_backend!(self, s => s.publish_sessions(node, sessions, Utc::now()).await)
    }

    /// The session lists of nodes that published since `fresh_since`, by node.
    pub async fn node_sessions(&self, fresh_since: DateTime<Utc>) -> Result<Vec<NodeSessions>, StoreError> {
        each_backend!(self, s => s.node_sessions(fresh_since).await)
    }

    /// Removes `node`'s list (it is stopping).
    pub async fn forget_node_sessions(&self, node: &str) -> Result<(), StoreError> {
        each_backend!(self, s => s.forget_node_sessions(node).await)
    }
}
