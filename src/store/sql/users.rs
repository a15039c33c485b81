//! The shared SQL of accounts, invitation codes and refresh tokens (see [`super`]).

/// Accounts, invitation codes and refresh tokens, for a backend (see `shared_queries!`).
macro_rules! user_queries {
    ($store:ty) => {
        impl $store {
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
        }
    };
}
