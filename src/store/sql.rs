//! The SQL both backends share, written once and expanded for each.
//!
//! Every statement here is valid in PostgreSQL and SQLite alike: `$n` placeholders in order of
//! first use (SQLite binds by first appearance), timestamps bound from Rust rather than `now()`,
//! `ON CONFLICT` and `RETURNING`. A backend provides `read`/`write` pools and `begin_write()`,
//! and gets the rest from [`shared_queries!`]. Storing messages is not shared: PostgreSQL does it
//! in one statement to save round trips (see `postgres.rs`), SQLite step by step in a transaction.

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

macro_rules! shared_queries {
    ($store:ty) => {
        impl $store {
            pub async fn migrate(&self) -> Result<usize, $crate::store::StoreError> {
                let migrator = Self::migrator();
                let mut conn = self.write.acquire().await?;
                let table = "_sqlx_migrations";
                // Before the first run the table does not exist: nothing applied yet.
                let before = sqlx::migrate::Migrate::list_applied_migrations(&mut *conn, table).await.map_or(0, |m| m.len());
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

            pub async fn setting_or_insert(&self, key: &str, candidate: &str) -> Result<String, $crate::store::StoreError> {
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

            pub async fn create_user(
                &self,
                id: $crate::domain::UserId,
                email: &str,
                display_name: &str,
                password_hash: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::domain::User, $crate::store::StoreError> {
                sqlx::query(
                    "INSERT INTO users (id, email, display_name, password_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(id.0)
                .bind(email)
                .bind(display_name)
                .bind(password_hash)
                .bind(now)
                    .execute(&self.write)
                    .await?;
                Ok($crate::domain::User {
                    id,
                    email: email.to_owned(),
                    display_name: display_name.to_owned(),
                    created_at: now,
                    disabled_at: None,
                    session_epoch: 0,
                    is_admin: false,
                })
            }

            pub async fn user_by_id(
                &self,
                id: $crate::domain::UserId,
            ) -> Result<Option<$crate::domain::User>, $crate::store::StoreError> {
                Ok(sqlx::query_as(concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1"))
                    .bind(id.0)
                    .fetch_optional(&self.read)
                    .await?)
            }

            /// The users among `ids` that exist, in no particular order.
            pub async fn users_by_ids(
                &self,
                ids: &[$crate::domain::UserId],
            ) -> Result<Vec<$crate::domain::User>, $crate::store::StoreError> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let mut q = sqlx::QueryBuilder::new(concat!("SELECT ", user_columns!(), " FROM users WHERE id IN ("));
                let mut list = q.separated(", ");
                for id in ids {
                    list.push_bind(id.0);
                }
                q.push(")");
                Ok(q.build_query_as().fetch_all(&self.read).await?)
            }

            pub async fn credentials_by_email(
                &self,
                email: &str,
            ) -> Result<Option<$crate::domain::Credentials>, $crate::store::StoreError> {
                Ok(sqlx::query_as(
                    concat!("SELECT ", user_columns!(), ", password_hash FROM users WHERE email = $1"),
                )
                .bind(email)
                .fetch_optional(&self.read)
                .await?)
            }

            pub async fn list_users(&self) -> Result<Vec<$crate::domain::User>, $crate::store::StoreError> {
                Ok(sqlx::query_as(concat!("SELECT ", user_columns!(), " FROM users ORDER BY created_at, email"))
                    .fetch_all(&self.read)
                    .await?)
            }

            pub async fn set_user_disabled(
                &self,
                email: &str,
                disabled: bool,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
                let mut tx = self.begin_write().await?;
                let found = sqlx::query("UPDATE users SET disabled_at = $2 WHERE email = $1")
                    .bind(email)
                    .bind(disabled.then_some(now))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    > 0;
                if found && disabled {
                    Self::revoke_user_tokens(&mut tx, email, now).await?;
                    Self::bump_session_epoch(&mut tx, email, now).await?;
                }
                tx.commit().await?;
                Ok(found)
            }

            pub async fn set_password_hash(
                &self,
                email: &str,
                password_hash: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
                let mut tx = self.begin_write().await?;
                let found = sqlx::query("UPDATE users SET password_hash = $2 WHERE email = $1")
                    .bind(email)
                    .bind(password_hash)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    > 0;
                if found {
                    Self::revoke_user_tokens(&mut tx, email, now).await?;
                    Self::bump_session_epoch(&mut tx, email, now).await?;
                }
                tx.commit().await?;
                Ok(found)
            }

            /// Signs the user out everywhere: refresh tokens revoked, access tokens and live
            /// sessions of the current epoch refused. False if no such user.
            pub async fn revoke_sessions(
                &self,
                email: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
                let mut tx = self.begin_write().await?;
                let found = Self::bump_session_epoch(&mut tx, email, now).await?;
                if found {
                    Self::revoke_user_tokens(&mut tx, email, now).await?;
                }
                tx.commit().await?;
                Ok(found)
            }

            /// Users whose sessions were revoked at or after `since_ms` (Unix milliseconds),
            /// with their current epoch: an index range, normally a handful of rows.
            pub async fn revoked_users_since(
                &self,
                since_ms: i64,
            ) -> Result<Vec<$crate::domain::User>, $crate::store::StoreError> {
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    user_columns!(),
                    " FROM users WHERE sessions_revoked_ms IS NOT NULL AND sessions_revoked_ms >= $1"
                ))
                .bind(since_ms)
                .fetch_all(&self.read)
                .await?)
            }

            /// Makes every access token and live session of the user stale. Returns whether
            /// the user exists.
            async fn bump_session_epoch(
                tx: &mut sqlx::Transaction<'static, <Self as $crate::store::sql::Backend>::Db>,
                email: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
                Ok(sqlx::query(
                    "UPDATE users SET session_epoch = session_epoch + 1, sessions_revoked_ms = $2 WHERE email = $1",
                )
                .bind(email)
                .bind(now.timestamp_millis())
                .execute(&mut **tx)
                .await?
                .rows_affected()
                    > 0)
            }

            async fn revoke_user_tokens(
                tx: &mut sqlx::Transaction<'static, <Self as $crate::store::sql::Backend>::Db>,
                email: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query(
                    "UPDATE refresh_tokens SET revoked_at = $2 \
                     WHERE user_id = (SELECT id FROM users WHERE email = $1) AND revoked_at IS NULL",
                )
                .bind(email)
                .bind(now)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            pub async fn insert_refresh_token(
                &self,
                token: &$crate::store::NewRefreshToken,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::StoreError> {
                let mut tx = self.begin_write().await?;
                Self::insert_refresh_token_in(&mut tx, token, now).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn insert_refresh_token_in(
                tx: &mut sqlx::Transaction<'static, <Self as $crate::store::sql::Backend>::Db>,
                token: &$crate::store::NewRefreshToken,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query(
                    "INSERT INTO refresh_tokens (token_hash, user_id, family_id, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&token.hash)
                .bind(token.user_id.0)
                .bind(token.family_id)
                .bind(now)
                .bind(token.expires_at)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            pub async fn rotate_refresh_token(
                &self,
                old_hash: &str,
                new: &$crate::store::NewRefreshToken,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::store::Refreshed, $crate::store::StoreError> {
                use $crate::store::Refreshed;
                let mut tx = self.begin_write().await?;
                // The conditional UPDATE is the atomic step: of two requests racing with one
                // token, exactly one sees `spent_at IS NULL`.
                let live: Option<(uuid::Uuid, uuid::Uuid)> = sqlx::query_as(
                    "UPDATE refresh_tokens SET spent_at = $2 \
                     WHERE token_hash = $1 AND spent_at IS NULL AND revoked_at IS NULL AND expires_at > $2 \
                     RETURNING user_id, family_id",
                )
                .bind(old_hash)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some((user_id, family_id)) = live {
                    let token = $crate::store::NewRefreshToken { family_id, user_id: user_id.into(), ..new.clone() };
                    Self::insert_refresh_token_in(&mut tx, &token, now).await?;
                    tx.commit().await?;
                    return Ok(Refreshed::Rotated { user_id: user_id.into() });
                }
                let spent: Option<(uuid::Uuid,)> = sqlx::query_as(
                    "SELECT family_id FROM refresh_tokens WHERE token_hash = $1 AND spent_at IS NOT NULL",
                )
                .bind(old_hash)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((family_id,)) = spent else {
                    return Ok(Refreshed::Invalid);
                };
                // A spent token came back: whoever holds the family's live token may be a thief.
                sqlx::query("UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL")
                    .bind(family_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Refreshed::Reused)
            }

            pub async fn revoke_refresh_family(
                &self,
                hash: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
                let revoked = sqlx::query(
                    "UPDATE refresh_tokens SET revoked_at = $2 WHERE revoked_at IS NULL AND family_id = \
                     (SELECT family_id FROM refresh_tokens \
                      WHERE token_hash = $1 AND spent_at IS NULL AND revoked_at IS NULL AND expires_at > $2)",
                )
                .bind(hash)
                .bind(now)
                .execute(&self.write)
                .await?
                .rows_affected();
                Ok(revoked > 0)
            }

            pub async fn messages_before(
                &self,
                room: &str,
                before: $crate::domain::Seq,
                limit: i64,
            ) -> Result<Vec<$crate::domain::Message>, $crate::store::StoreError> {
                Ok(sqlx::query_as(
                    concat!("SELECT * FROM (SELECT ", message_columns!(), " \
                     FROM messages WHERE room = $1 AND seq < $2 AND kind = 'message' \
                     ORDER BY seq DESC LIMIT $3) AS page ORDER BY seq"),
                )
                .bind(room)
                .bind(before)
                .bind(limit)
                .fetch_all(&self.read)
                .await?)
            }

            pub async fn messages_after(
                &self,
                room: &str,
                after: $crate::domain::Seq,
                limit: i64,
            ) -> Result<Vec<$crate::domain::Message>, $crate::store::StoreError> {
                Ok(sqlx::query_as(
                    concat!("SELECT ", message_columns!(), " \
                     FROM messages WHERE room = $1 AND seq > $2 ORDER BY seq LIMIT $3"),
                )
                .bind(room)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.read)
                .await?)
            }

            /// The message `id` of `room` (not a deletion event), if it exists.
            pub async fn message_in_room(
                &self,
                room: &str,
                id: uuid::Uuid,
            ) -> Result<Option<$crate::domain::Message>, $crate::store::StoreError> {
                Ok(sqlx::query_as(
                    concat!("SELECT ", message_columns!(), " FROM messages WHERE id = $1 AND room = $2 AND kind = 'message'"),
                )
                .bind(id)
                .bind(room)
                .fetch_optional(&self.read)
                .await?)
            }

            pub async fn last_seq(&self, room: &str) -> Result<$crate::domain::Seq, $crate::store::StoreError> {
                let row: Option<($crate::domain::Seq,)> = sqlx::query_as("SELECT last_seq FROM rooms WHERE name = $1")
                    .bind(room)
                    .fetch_optional(&self.read)
                    .await?;
                Ok(row.map_or(0, |(s,)| s))
            }

            pub async fn set_display_name(
                &self,
                user: uuid::Uuid,
                name: &str,
            ) -> Result<bool, $crate::store::StoreError> {
                Ok(sqlx::query("UPDATE users SET display_name = $2 WHERE id = $1")
                    .bind(user)
                    .bind(name)
                    .execute(&self.write)
                    .await?
                    .rows_affected()
                    == 1)
            }

            pub async fn insert_invite(
                &self,
                code_hash: &str,
                created_by: Option<uuid::Uuid>,
                now: chrono::DateTime<chrono::Utc>,
                expires_at: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query("INSERT INTO invites (code_hash, created_by, created_at, expires_at) VALUES ($1, $2, $3, $4)")
                    .bind(code_hash)
                    .bind(created_by)
                    .bind(now)
                    .bind(expires_at)
                    .execute(&self.write)
                    .await?;
                Ok(())
            }

            /// Creates a user and spends the invitation `code_hash` in one transaction: neither
            /// happens unless both do. `Ok(None)`: the code is unknown, spent or expired.
            pub async fn create_invited_user(
                &self,
                id: $crate::domain::UserId,
                email: &str,
                display_name: &str,
                password_hash: &str,
                code_hash: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<Option<$crate::domain::User>, $crate::store::StoreError> {
                let mut tx = self.begin_write().await?;
                sqlx::query(
                    "INSERT INTO users (id, email, display_name, password_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(id.0)
                .bind(email)
                .bind(display_name)
                .bind(password_hash)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                let spent = sqlx::query(
                    "UPDATE invites SET used_by = $1, used_at = $2 \
                     WHERE code_hash = $3 AND used_at IS NULL AND expires_at > $2",
                )
                .bind(id.0)
                .bind(now)
                .bind(code_hash)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if !spent {
                    return Ok(None); // dropping the transaction rolls the user back
                }
                tx.commit().await?;
                Ok(Some($crate::domain::User {
                    id,
                    email: email.to_owned(),
                    display_name: display_name.to_owned(),
                    created_at: now,
                    disabled_at: None,
                    session_epoch: 0,
                    is_admin: false,
                }))
            }

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

            /// Mutes a member until `until` (None lifts it). False if not a member.
            pub async fn set_muted(
                &self,
                room: &str,
                user: uuid::Uuid,
                until: Option<chrono::DateTime<chrono::Utc>>,
            ) -> Result<bool, $crate::store::StoreError> {
                Ok(sqlx::query(
                    "UPDATE room_members SET muted_until = $3 WHERE room = $1 AND user_id = $2 AND banned_at IS NULL",
                )
                .bind(room)
                .bind(user)
                .bind(until)
                .execute(&self.write)
                .await?
                .rows_affected()
                    == 1)
            }

            pub async fn update_room(
                &self,
                room: &str,
                title: Option<Option<&str>>,
                topic: Option<Option<&str>>,
            ) -> Result<(), $crate::store::StoreError> {
                let mut tx = self.begin_write().await?;
                if let Some(title) = title {
                    sqlx::query("UPDATE rooms SET title = $2 WHERE name = $1").bind(room).bind(title).execute(&mut *tx).await?;
                }
                if let Some(topic) = topic {
                    sqlx::query("UPDATE rooms SET topic = $2 WHERE name = $1").bind(room).bind(topic).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            pub async fn set_archived(
                &self,
                room: &str,
                at: Option<chrono::DateTime<chrono::Utc>>,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query("UPDATE rooms SET archived_at = $2 WHERE name = $1").bind(room).bind(at).execute(&self.write).await?;
                Ok(())
            }

            /// Creates the direct room `room` of `a` and `b` unless it exists, and makes sure both
            /// are its members.
            pub async fn open_direct(
                &self,
                room: &str,
                a: uuid::Uuid,
                b: uuid::Uuid,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::StoreError> {
                let mut tx = self.begin_write().await?;
                sqlx::query(
                    "INSERT INTO rooms (name, last_seq, created_at, kind, created_by) VALUES ($1, 0, $2, 'direct', $3) \
                     ON CONFLICT (name) DO NOTHING",
                )
                .bind(room)
                .bind(now)
                .bind(a)
                .execute(&mut *tx)
                .await?;
                for user in [a, b] {
                    sqlx::query(
                        "INSERT INTO room_members (room, user_id, role, joined_at, last_read_seq, read_count) \
                         SELECT $1, $2, 'member', $3, last_seq, message_count FROM rooms WHERE name = $1 \
                         ON CONFLICT (room, user_id) DO NOTHING",
                    )
                    .bind(room)
                    .bind(user)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            /// For each direct room of `user`, the other member.
            pub async fn direct_peers(
                &self,
                user: uuid::Uuid,
            ) -> Result<Vec<$crate::domain::Peer>, $crate::store::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT me.room, u.id AS user_id, u.display_name FROM room_members me \
                     JOIN rooms r ON r.name = me.room AND r.kind = 'direct' \
                     JOIN room_members other ON other.room = me.room AND other.user_id <> me.user_id \
                     JOIN users u ON u.id = other.user_id \
                     WHERE me.user_id = $1",
                )
                .bind(user)
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

            pub async fn rooms_created_by(&self, user: uuid::Uuid) -> Result<i64, $crate::store::StoreError> {
                let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM rooms WHERE created_by = $1 AND kind <> 'direct'")
                    .bind(user)
                    .fetch_one(&self.read)
                    .await?;
                Ok(n)
            }

            /// Grants or takes server administration; false if there is no such user.
            pub async fn set_admin(&self, email: &str, admin: bool) -> Result<bool, $crate::store::StoreError> {
                Ok(sqlx::query("UPDATE users SET is_admin = $2 WHERE email = $1")
                    .bind(email)
                    .bind(admin)
                    .execute(&self.write)
                    .await?
                    .rows_affected()
                    == 1)
            }

            /// Bans `user` from `room` (a member or not): they stay out until unbanned.
            pub async fn ban_member(
                &self,
                room: &str,
                user: uuid::Uuid,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query(
                    "INSERT INTO room_members (room, user_id, role, joined_at, banned_at) VALUES ($1, $2, 'member', $3, $3) \
                     ON CONFLICT (room, user_id) DO UPDATE SET banned_at = excluded.banned_at, role = 'member'",
                )
                .bind(room)
                .bind(user)
                .bind(now)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            /// Lifts a ban: the user is then neither banned nor a member. False if not banned.
            pub async fn unban_member(&self, room: &str, user: uuid::Uuid) -> Result<bool, $crate::store::StoreError> {
                Ok(sqlx::query("DELETE FROM room_members WHERE room = $1 AND user_id = $2 AND banned_at IS NOT NULL")
                    .bind(room)
                    .bind(user)
                    .execute(&self.write)
                    .await?
                    .rows_affected()
                    == 1)
            }

            pub async fn bans(&self, room: &str, limit: i64) -> Result<Vec<$crate::domain::Ban>, $crate::store::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT m.user_id, u.display_name, m.banned_at FROM room_members m JOIN users u ON u.id = m.user_id \
                     WHERE m.room = $1 AND m.banned_at IS NOT NULL ORDER BY m.banned_at, m.user_id LIMIT $2",
                )
                .bind(room)
                .bind(limit)
                .fetch_all(&self.read)
                .await?)
            }

            pub async fn create_room(
                &self,
                room: &$crate::domain::NewRoom,
                owner: Option<$crate::domain::UserId>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
                let mut tx = self.begin_write().await?;
                let created = sqlx::query(
                    "INSERT INTO rooms (name, last_seq, created_at, kind, title, topic, created_by) \
                     VALUES ($1, 0, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
                )
                .bind(room.name.as_str())
                .bind(now)
                .bind(room.kind.as_str())
                .bind(room.title.as_deref())
                .bind(room.topic.as_deref())
                .bind(room.created_by.0)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if created && let Some(owner) = owner {
                    sqlx::query("INSERT INTO room_members (room, user_id, role, joined_at) VALUES ($1, $2, 'owner', $3)")
                        .bind(room.name.as_str())
                        .bind(owner.0)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(created)
            }

            pub async fn room(&self, name: &str) -> Result<Option<$crate::domain::Room>, $crate::store::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT name, kind, title, topic, created_by, created_at, archived_at, last_seq, message_count \
                     FROM rooms WHERE name = $1",
                )
                .bind(name)
                .fetch_optional(&self.read)
                .await?)
            }

            pub async fn rooms_for(
                &self,
                user: uuid::Uuid,
            ) -> Result<Vec<$crate::domain::RoomListing>, $crate::store::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT r.name, r.kind, r.title, r.topic, r.created_by, r.created_at, r.archived_at, r.last_seq, \
                            r.message_count, m.role, m.last_read_seq, m.read_count, \
                            (SELECT COUNT(*) FROM mentions mm WHERE mm.room = r.name AND mm.user_id IN ($1, $2) \
                               AND mm.seq > m.last_read_seq) AS unread_mentions \
                     FROM rooms r \
                     LEFT JOIN room_members m ON m.room = r.name AND m.user_id = $1 \
                     WHERE r.archived_at IS NULL AND m.banned_at IS NULL AND (r.kind = 'public' OR m.role IS NOT NULL) \
                     ORDER BY r.name",
                )
                .bind(user)
                .bind(uuid::Uuid::nil())
                .fetch_all(&self.read)
                .await?)
            }

            pub async fn membership(
                &self,
                room: &str,
                user: uuid::Uuid,
            ) -> Result<Option<$crate::domain::Membership>, $crate::store::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT role, banned_at, muted_until, last_read_seq, read_count FROM room_members \
                     WHERE room = $1 AND user_id = $2",
                )
                .bind(room)
                .bind(user)
                .fetch_optional(&self.read)
                .await?)
            }

            pub async fn add_member(
                &self,
                room: &str,
                user: uuid::Uuid,
                role: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
                // A new member has read what was there before them.
                Ok(sqlx::query(
                    "INSERT INTO room_members (room, user_id, role, joined_at, last_read_seq, read_count) \
                     SELECT $1, $2, $3, $4, last_seq, message_count FROM rooms WHERE name = $1 \
                     ON CONFLICT (room, user_id) DO NOTHING",
                )
                .bind(room)
                .bind(user)
                .bind(role)
                .bind(now)
                .execute(&self.write)
                .await?
                .rows_affected()
                    == 1)
            }

            pub async fn search(
                &self,
                query: &$crate::domain::SearchQuery,
                scope: &$crate::store::SearchScope,
            ) -> Result<Vec<$crate::domain::Message>, $crate::store::StoreError> {
                Ok(sqlx::query_as(Self::SEARCH)
                    .bind(Self::search_text(query))
                    .bind(scope.room.as_ref().map($crate::domain::RoomName::as_str))
                    .bind(scope.before)
                    .bind(scope.admin)
                    .bind(scope.user.0)
                    .bind(i64::from(scope.limit))
                    .fetch_all(&self.read)
                    .await?)
            }

            /// Indexes `room`'s seqs after `from`, up to `last` and at most `max` of them, and
            /// records how far it got, in `tx` (the backend's own statements: `INDEX_MESSAGES`
            /// and `SET_INDEXED`). Nothing to do: the transaction is dropped, changing nothing.
            async fn index_range(
                mut tx: sqlx::Transaction<'static, <Self as $crate::store::sql::Backend>::Db>,
                room: &$crate::domain::RoomName,
                (from, last): ($crate::domain::Seq, $crate::domain::Seq),
                max: $crate::domain::Seq,
            ) -> Result<$crate::store::IndexStep, $crate::store::StoreError> {
                if last <= from {
                    return Ok($crate::store::IndexStep::UpToDate);
                }
                let to = last.min(from.saturating_add(max.max(1)));
                let indexed = sqlx::query(Self::INDEX_MESSAGES)
                    .bind(room.as_str())
                    .bind(from)
                    .bind(to)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                sqlx::query(Self::SET_INDEXED).bind(room.as_str()).bind(to).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok($crate::store::IndexStep::Indexed(indexed))
            }

            pub async fn rooms_behind_index(&self, limit: i64) -> Result<Vec<String>, $crate::store::StoreError> {
                let rows: Vec<(String,)> = sqlx::query_as(
                    "SELECT r.name FROM rooms r LEFT JOIN search_progress p ON p.room = r.name \
                     WHERE r.last_seq > COALESCE(p.indexed_seq, 0) LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&self.read)
                .await?;
                Ok(rows.into_iter().map(|(name,)| name).collect())
            }

            pub async fn message_by_client_id(
                &self,
                room: &str,
                sender: uuid::Uuid,
                client_id: &str,
            ) -> Result<Option<$crate::domain::Message>, $crate::store::StoreError> {
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    message_columns!(),
                    " FROM messages WHERE room = $1 AND client_id = $2 AND sender_id = $3"
                ))
                .bind(room)
                .bind(client_id)
                .bind(sender)
                .fetch_optional(&self.read)
                .await?)
            }

            /// Applies a reaction event (`react` / `unreact`, built by the caller) and, if it
            /// changed anything, stores it at the room's next seq, with the new tally.
            pub async fn react(
                &self,
                event: &$crate::domain::NewMessage,
                max_distinct: i64,
            ) -> Result<$crate::store::Reacted, $crate::store::StoreError> {
                use $crate::{domain::MessageKind, store::Reacted};
                let room = event.room.as_str();
                let target = event.target_id.unwrap_or_default();
                let mut tx = self.begin_write().await?;
                let exists: Option<($crate::domain::Seq,)> = sqlx::query_as(
                    "SELECT seq FROM messages WHERE room = $1 AND id = $2 AND kind = 'message' AND deleted_at IS NULL",
                )
                .bind(room)
                .bind(target)
                .fetch_optional(&mut *tx)
                .await?;
                if exists.is_none() {
                    return Ok(Reacted::NoMessage);
                }
                let changed = if event.kind == MessageKind::React {
                    let (distinct, used): (i64, i64) = sqlx::query_as(
                        "SELECT COUNT(DISTINCT emoji), COUNT(CASE WHEN emoji = $2 THEN 1 END) \
                         FROM reactions WHERE message_id = $1",
                    )
                    .bind(target)
                    .bind(&event.content)
                    .fetch_one(&mut *tx)
                    .await?;
                    if used == 0 && distinct >= max_distinct {
                        return Ok(Reacted::TooMany);
                    }
                    sqlx::query(
                        "INSERT INTO reactions (message_id, emoji, user_id, created_at) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (message_id, emoji, user_id) DO NOTHING",
                    )
                    .bind(target)
                    .bind(&event.content)
                    .bind(event.sender_id.0)
                    .bind(event.created_at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                } else {
                    sqlx::query("DELETE FROM reactions WHERE message_id = $1 AND emoji = $2 AND user_id = $3")
                        .bind(target)
                        .bind(&event.content)
                        .bind(event.sender_id.0)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                };
                if changed == 0 {
                    return Ok(Reacted::Unchanged);
                }
                let (tally,): (i64,) =
                    sqlx::query_as("SELECT COUNT(*) FROM reactions WHERE message_id = $1 AND emoji = $2")
                        .bind(target)
                        .bind(&event.content)
                        .fetch_one(&mut *tx)
                        .await?;
                // The room's row lock (PostgreSQL) or the single writer (SQLite) orders this
                // seq with every other writer's, as for messages.
                let (seq,): ($crate::domain::Seq,) =
                    sqlx::query_as("UPDATE rooms SET last_seq = last_seq + 1 WHERE name = $1 RETURNING last_seq")
                        .bind(room)
                        .fetch_one(&mut *tx)
                        .await?;
                let stored = $crate::domain::Message {
                    id: event.id,
                    room: room.to_owned(),
                    seq,
                    sender_id: event.sender_id.0,
                    sender_email: event.sender_email.clone(),
                    sender_name: event.sender_name.clone(),
                    content: event.content.clone(),
                    created_at: event.created_at,
                    client_id: None,
                    kind: event.kind,
                    target_id: Some(target),
                    deleted_at: None,
                    edited_at: None,
                    tally: Some(tally),
                    mentions: $crate::domain::Mentions::default(),
                };
                sqlx::query(
                    "INSERT INTO messages (id, room, seq, sender_id, sender_email, sender_name, content, created_at, \
                                           kind, target_id, tally) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(stored.id)
                .bind(room)
                .bind(seq)
                .bind(stored.sender_id)
                .bind(&stored.sender_email)
                .bind(&stored.sender_name)
                .bind(&stored.content)
                .bind(stored.created_at)
                .bind(stored.kind.as_str())
                .bind(target)
                .bind(tally)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Reacted::Done(Box::new(stored)))
            }

            /// Reactions on `messages`, grouped by message and emoji, in first-use order.
            pub async fn reactions(
                &self,
                messages: &[uuid::Uuid],
                me: uuid::Uuid,
            ) -> Result<Vec<$crate::domain::ReactionCount>, $crate::store::StoreError> {
                let mut q = sqlx::QueryBuilder::new(
                    "SELECT message_id, emoji, COUNT(*) AS count, \
                            MAX(CASE WHEN user_id = ",
                );
                q.push_bind(me);
                q.push(" THEN 1 ELSE 0 END) = 1 AS mine FROM reactions WHERE message_id IN (");
                let mut list = q.separated(", ");
                for id in messages {
                    list.push_bind(*id);
                }
                q.push(") GROUP BY message_id, emoji ORDER BY message_id, MIN(created_at), emoji");
                Ok(q.build_query_as().fetch_all(&self.read).await?)
            }

            /// Moves `user`'s read marker in `room` up to `seq` (never back, never past the
            /// room's latest seq), counting the messages it passes. `None` if they are not a
            /// member. Returns the marker and the messages after it.
            pub async fn mark_read(
                &self,
                room: &str,
                user: uuid::Uuid,
                seq: $crate::domain::Seq,
            ) -> Result<Option<$crate::domain::ReadMarker>, $crate::store::StoreError> {
                let mut tx = self.begin_write().await?;
                let found: Option<($crate::domain::Seq, i64, $crate::domain::Seq, i64)> = sqlx::query_as(
                    "SELECT m.last_read_seq, m.read_count, r.last_seq, r.message_count \
                     FROM room_members m JOIN rooms r ON r.name = m.room \
                     WHERE m.room = $1 AND m.user_id = $2 AND m.banned_at IS NULL",
                )
                .bind(room)
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((from, read, last_seq, total)) = found else { return Ok(None) };
                let upto = seq.min(last_seq);
                if upto <= from {
                    let mentions = Self::mentions_after(&mut *tx, room, user, from).await?;
                    return Ok(Some($crate::domain::ReadMarker { last_read_seq: from, unread: (total - read).max(0), mentions }));
                }
                // The messages between the old marker and the new one: each is counted once per
                // reader, when passed.
                let (passed,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM messages WHERE room = $1 AND seq > $2 AND seq <= $3 AND kind = 'message'",
                )
                .bind(room)
                .bind(from)
                .bind(upto)
                .fetch_one(&mut *tx)
                .await?;
                // Conditional on the marker read above: of two racing moves, the later one waits
                // (PostgreSQL) or was serialised (SQLite), and finds it moved.
                let moved = sqlx::query(
                    "UPDATE room_members SET last_read_seq = $3, read_count = read_count + $4 \
                     WHERE room = $1 AND user_id = $2 AND last_read_seq = $5",
                )
                .bind(room)
                .bind(user)
                .bind(upto)
                .bind(passed)
                .bind(from)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                let mentions = Self::mentions_after(&mut *tx, room, user, upto).await?;
                tx.commit().await?;
                if !moved {
                    return Err($crate::store::StoreError::Conflict);
                }
                Ok(Some($crate::domain::ReadMarker {
                    last_read_seq: upto,
                    unread: (total - read - passed).max(0),
                    mentions,
                }))
            }

            /// Mentions of `user` (by name, or everyone) in `room` after seq `after`.
            async fn mentions_after<'c, E>(
                conn: E,
                room: &str,
                user: uuid::Uuid,
                after: $crate::domain::Seq,
            ) -> Result<i64, $crate::store::StoreError>
            where
                E: sqlx::Executor<'c, Database = <Self as $crate::store::sql::Backend>::Db>,
            {
                let (n,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM mentions WHERE room = $1 AND user_id IN ($2, $3) AND seq > $4",
                )
                .bind(room)
                .bind(user)
                .bind(uuid::Uuid::nil())
                .bind(after)
                .fetch_one(conn)
                .await?;
                Ok(n)
            }

            pub async fn unread_mentions(
                &self,
                room: &str,
                user: uuid::Uuid,
                after: $crate::domain::Seq,
            ) -> Result<i64, $crate::store::StoreError> {
                Self::mentions_after(&self.read, room, user, after).await
            }

            pub async fn remove_member(&self, room: &str, user: uuid::Uuid) -> Result<bool, $crate::store::StoreError> {
                Ok(sqlx::query("DELETE FROM room_members WHERE room = $1 AND user_id = $2 AND banned_at IS NULL")
                    .bind(room)
                    .bind(user)
                    .execute(&self.write)
                    .await?
                    .rows_affected()
                    == 1)
            }

            pub async fn members(
                &self,
                room: &str,
                limit: i64,
            ) -> Result<Vec<$crate::domain::Member>, $crate::store::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT m.user_id, u.display_name, m.role, m.joined_at, m.muted_until FROM room_members m \
                     JOIN users u ON u.id = m.user_id \
                     WHERE m.room = $1 AND m.banned_at IS NULL ORDER BY m.joined_at, m.user_id LIMIT $2",
                )
                .bind(room)
                .bind(limit)
                .fetch_all(&self.read)
                .await?)
            }

            pub async fn list_rooms(&self) -> Result<Vec<$crate::domain::RoomSummary>, $crate::store::StoreError> {
                Ok(sqlx::query_as("SELECT name, last_seq FROM rooms WHERE last_seq > 0 ORDER BY name")
                    .fetch_all(&self.read)
                    .await?)
            }
        }
    };
}

/// What a backend must name for [`shared_queries!`] to expand.
pub(super) trait Backend {
    type Db: sqlx::Database;
}
