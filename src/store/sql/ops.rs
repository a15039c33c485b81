//! The shared SQL of the audit log and the nodes' published session lists (see [`super`]).

/// The audit log and the nodes' session lists, for a backend (see `shared_queries!`).
macro_rules! ops_queries {
    ($store:ty) => {
        impl $store {
            pub async fn append_audit(
                &self,
                entry: &$crate::domain::NewAudit,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query(
                    "INSERT INTO audit_log (at, actor_id, actor, source, action, target, room, detail) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(now)
                .bind(entry.actor_id)
                .bind(&entry.actor)
                .bind(&entry.source)
                .bind(entry.action)
                .bind(entry.target.as_deref())
                .bind(entry.room.as_deref())
                .bind(entry.detail.as_deref())
                .execute(&self.write)
                .await?;
                Ok(())
            }

            /// The newest `limit` entries with `id < before`, newest first.
            pub async fn audit_log(
                &self,
                before: i64,
                limit: i64,
            ) -> Result<Vec<$crate::domain::AuditEntry>, $crate::store::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT id, at, actor_id, actor, source, action, target, room, detail FROM audit_log \
                     WHERE id < $1 ORDER BY id DESC LIMIT $2",
                )
                .bind(before)
                .bind(limit)
                .fetch_all(&self.read)
                .await?)
            }

            pub async fn publish_sessions(
                &self,
                node: &str,
                sessions: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query(
                    "INSERT INTO node_sessions (node, seen_at, sessions) VALUES ($1, $2, $3) \
                     ON CONFLICT (node) DO UPDATE SET seen_at = excluded.seen_at, sessions = excluded.sessions",
                )
                .bind(node)
                .bind(now)
                .bind(sessions)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            pub async fn node_sessions(
                &self,
                fresh_since: chrono::DateTime<chrono::Utc>,
            ) -> Result<Vec<$crate::store::NodeSessions>, $crate::store::StoreError> {
                Ok(sqlx::query_as("SELECT node, seen_at, sessions FROM node_sessions WHERE seen_at > $1 ORDER BY node")
                    .bind(fresh_since)
                    .fetch_all(&self.read)
                    .await?)
            }

            pub async fn forget_node_sessions(&self, node: &str) -> Result<(), $crate::store::StoreError> {
                sqlx::query("DELETE FROM node_sessions WHERE node = $1").bind(node).execute(&self.write).await?;
                Ok(())
            }
        }
    };
}
