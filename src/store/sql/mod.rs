//! The SQL both backends share, written once and expanded for each.
//!
//! Every statement here is valid in PostgreSQL and SQLite alike: `$n` placeholders in order of
//! first use (SQLite binds by first appearance), timestamps bound from Rust rather than `now()`,
//! `ON CONFLICT` and `RETURNING`. A backend provides `read`/`write` pools and `begin_write()`,
//! and gets the rest from [`shared_queries!`]. Storing messages is not shared: PostgreSQL does it
//! in one statement to save round trips (see `postgres.rs`), SQLite step by step in a transaction.
//!
//! This file holds the column lists and query fragments the backends use too, and
//! [`shared_queries!`], which expands the lifecycle queries below and one macro per aggregate,
//! each in its own file as in `store/`: `users`, `rooms`, `messages`, `ops`.

#[macro_use]
mod messages;
#[macro_use]
mod ops;
#[macro_use]
pub(super) mod rooms;
#[macro_use]
mod users;

/// The columns of a [`Message`](crate::domain::Message), in its `FromRow` order: a literal, so
/// queries can `concat!` it into `&'static str` SQL.
macro_rules! message_columns {
    () => {
        "id, room, seq, sender_id, sender_email, sender_name, content, created_at, client_id, kind, target_id, deleted_at, \
         edited_at, tally, mentions"
    };
}

/// The columns of a [`User`](crate::domain::User), in its `FromRow` order.
macro_rules! user_columns {
    () => {
        "id, email, display_name, created_at, disabled_at, session_epoch, is_admin"
    };
}

/// Messages matching a full-text query (`$1`, in the backend's syntax, used by `$matches`)
/// that the user `$5` may read — in public rooms and rooms they are a member of, not banned
/// from; everywhere when `$4` (an administrator) — optionally in room `$2` only, newest first,
/// older than message id `$3` (ids are UUIDv7: time-ordered), at most `$6`.
macro_rules! search_messages {
    ($matches:literal) => {
        concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE ",
            $matches,
            " AND kind = 'message' AND deleted_at IS NULL \
               AND ($2 IS NULL OR room = $2) \
               AND ($3 IS NULL OR id < $3) \
               AND ($4 OR room IN (SELECT r.name FROM rooms r \
                     LEFT JOIN room_members rm ON rm.room = r.name AND rm.user_id = $5 \
                     WHERE rm.banned_at IS NULL AND (r.kind = 'public' OR rm.role IS NOT NULL))) \
             ORDER BY id DESC LIMIT $6"
        )
    };
}

/// Everything a backend gets: the lifecycle queries here, then each aggregate's.
macro_rules! shared_queries {
    ($store:ty) => {
        impl $store {
            pub async fn migrate(&self) -> Result<usize, $crate::store::StoreError> {
                let migrator = Self::migrator();
                let mut conn = self.write.acquire().await?;
                let table = "_sqlx_migrations";
                // Before the first run the table does not exist: nothing applied yet.
                let before =
                    sqlx::migrate::Migrate::list_applied_migrations(&mut *conn, table).await.map_or(0, |m| m.len());
                migrator.run(&mut *conn).await?;
                let after = sqlx::migrate::Migrate::list_applied_migrations(&mut *conn, table).await?.len();
                Ok(after.saturating_sub(before))
            }

            pub async fn ping(&self) -> Result<(), $crate::store::StoreError> {
                sqlx::query("SELECT 1").execute(&self.read).await?;
                Ok(())
            }

            pub async fn close(&self) {
                self.read.close().await;
                self.write.close().await;
            }

            pub async fn setting_or_insert(
                &self,
                key: &str,
                candidate: &str,
            ) -> Result<String, $crate::store::StoreError> {
                sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                    .bind(key)
                    .bind(candidate)
                    .execute(&self.write)
                    .await?;
                let (value,): (String,) = sqlx::query_as("SELECT value FROM settings WHERE key = $1")
                    .bind(key)
                    .fetch_one(&self.write)
                    .await?;
                Ok(value)
            }
        }

        user_queries!($store);
        room_queries!($store);
        message_queries!($store);
        ops_queries!($store);
    };
}

/// What a backend must name for [`shared_queries!`] to expand.
pub(super) trait Backend {
    type Db: sqlx::Database;
}
