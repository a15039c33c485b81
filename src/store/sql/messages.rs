//! The shared SQL of a room's seq stream, apart from storing messages (which each backend does
//! its own way): history, reactions, search and its indexing (see [`super`]).

/// History, reactions, search and indexing, for a backend (see `shared_queries!`).
macro_rules! message_queries {
    ($store:ty) => {
        impl $store {
            pub async fn messages_before(
                &self,
                room: &str,
                before: $crate::domain::Seq,
                limit: i64,
            ) -> Result<Vec<$crate::domain::Message>, $crate::store::StoreError> {
                Ok(sqlx::query_as(concat!(
                    "SELECT * FROM (SELECT ",
                    message_columns!(),
                    " \
                     FROM messages WHERE room = $1 AND seq < $2 AND kind = 'message' \
                     ORDER BY seq DESC LIMIT $3) AS page ORDER BY seq"
                ))
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
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    message_columns!(),
                    " \
                     FROM messages WHERE room = $1 AND seq > $2 ORDER BY seq LIMIT $3"
                ))
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
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    message_columns!(),
                    " FROM messages WHERE id = $1 AND room = $2 AND kind = 'message'"
                ))
                .bind(id)
                .bind(room)
                .fetch_optional(&self.read)
                .await?)
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
        }
    };
}
