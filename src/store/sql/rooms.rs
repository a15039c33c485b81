//! The shared SQL of rooms and their members: roles, bans, mutes, direct rooms and read
//! markers (see [`super`]).

/// A new room: `$1` name, `$2` now, `$3` kind, `$4` title, `$5` topic, `$6` created by; nothing
/// when it exists. (Parameters are numbered in order of first use, so SQLite binds them by
/// position too.)
pub(in crate::store) const CREATE_ROOM: &str = "INSERT INTO rooms (name, last_seq, created_at, kind, title, topic, created_by) \
     VALUES ($1, 0, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING";
/// The owner of a room just created: `$1` room, `$2` user, `$3` now.
pub(in crate::store) const ADD_OWNER: &str =
    "INSERT INTO room_members (room, user_id, role, joined_at) VALUES ($1, $2, 'owner', $3)";
/// A new member (`$1` room, `$2` user, `$3` role, `$4` now), who has read what was there before
/// them; nothing when they already have a standing there.
pub(in crate::store) const ADD_MEMBER: &str = "INSERT INTO room_members (room, user_id, role, joined_at, last_read_seq, read_count) \
     SELECT $1, $2, $3, $4, last_seq, message_count FROM rooms WHERE name = $1 \
     ON CONFLICT (room, user_id) DO NOTHING";

/// Rooms and their members, for a backend (see `shared_queries!`).
macro_rules! room_queries {
    ($store:ty) => {
        impl $store {
            pub async fn last_seq(&self, room: &str) -> Result<$crate::domain::Seq, $crate::store::StoreError> {
                let row: Option<($crate::domain::Seq,)> = sqlx::query_as("SELECT last_seq FROM rooms WHERE name = $1")
                    .bind(room)
                    .fetch_optional(&self.read)
                    .await?;
                Ok(row.map_or(0, |(s,)| s))
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

            pub async fn rooms_created_by(&self, user: uuid::Uuid) -> Result<i64, $crate::store::StoreError> {
                let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM rooms WHERE created_by = $1 AND kind <> 'direct'")
                    .bind(user)
                    .fetch_one(&self.read)
                    .await?;
                Ok(n)
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

            pub async fn room(&self, name: &str) -> Result<Option<$crate::domain::Room>, $crate::store::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT name, kind, title, topic, created_by, created_at, archived_at, last_seq, message_count \
                     FROM rooms WHERE name = $1",
                )
                .bind(name)
                .fetch_optional(&self.read)
                .await?)
            }

            pub(in $crate::store) async fn room_and_membership(
                &self,
                name: &str,
                user: uuid::Uuid,
            ) -> Result<Option<$crate::store::rooms::StandingRow>, $crate::store::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT r.name, r.kind, r.title, r.topic, r.created_by, r.created_at, r.archived_at, r.last_seq, \
                            r.message_count, m.role, m.banned_at, m.muted_until, m.last_read_seq, m.read_count \
                     FROM rooms r LEFT JOIN room_members m ON m.room = r.name AND m.user_id = $2 WHERE r.name = $1",
                )
                .bind(name)
                .bind(user)
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
