//! Accounts, invitation codes and refresh tokens: everything `auth` asks of the store.

use chrono::{DateTime, SubsecRound as _, Utc};
use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::{Credentials, DisplayName, User, UserId};

/// What presenting a refresh token led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refreshed {
    /// The token was live; it is now spent and `new_hash` is stored in its family.
    Rotated { user_id: UserId },
    /// The token had already been spent: its whole family is now revoked.
    Reused,
    /// Unknown, expired or revoked.
    Invalid,
}

/// A refresh token to store (only its hash).
#[derive(Clone, Debug)]
pub struct NewRefreshToken {
    pub hash: String,
    pub user_id: UserId,
    pub family_id: Uuid,
    pub expires_at: DateTime<Utc>,
}

impl Store {
    /// Creates a user named after its address (see [`DisplayName::from_email`]); `Conflict` if
    /// the email is taken.
    pub async fn create_user(&self, email: &str, password_hash: &str) -> Result<User, StoreError> {
        let name = DisplayName::default_for(email);
        self.create_named_user(email, name.as_str(), password_hash).await
    }

    /// Creates a user with a display name; `Conflict` if the email is taken.
    pub async fn create_named_user(&self, email: &str, name: &str, password_hash: &str) -> Result<User, StoreError> {
        let id = UserId(Uuid::now_v7());
        // Microseconds: what PostgreSQL keeps, so the user returned is the user stored.
        each_backend!(self, s => s.create_user(id, email, name, password_hash, Utc::now().trunc_subsecs(6)).await)
    }

    /// Creates a user and spends invitation `code_hash` (see `auth::invite_hash`), both or
    /// neither. `Ok(None)`: no such live code. `Conflict` if the email is taken.
    pub async fn create_invited_user(
        &self,
        email: &str,
        name: &str,
        password_hash: &str,
        code_hash: &str,
    ) -> Result<Option<User>, StoreError> {
        let id = UserId(Uuid::now_v7());
        let now = Utc::now().trunc_subsecs(6);
        each_backend!(self, s => s.create_invited_user(id, email, name, password_hash, code_hash, now).await)
    }

    /// Stores a single-use invitation code (its hash), valid until `expires_at`.
    pub async fn insert_invite(
        &self,
        code_hash: &str,
        created_by: Option<UserId>,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        each_backend!(self, s => s.insert_invite(code_hash, created_by.map(|u| u.0), Utc::now(), expires_at).await)
    }

    /// Renames a user. False if there is no such user.
    pub async fn set_display_name(&self, user: UserId, name: &DisplayName) -> Result<bool, StoreError> {
        each_backend!(self, s => s.set_display_name(user.0, name.as_str()).await)
    }

    pub async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        each_backend!(self, s => s.user_by_id(id).await)
    }

    /// The users among `ids` that exist, in no particular order.
    pub async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<User>, StoreError> {
        each_backend!(self, s => s.users_by_ids(ids).await)
    }

    pub async fn credentials_by_email(&self, email: &str) -> Result<Option<Credentials>, StoreError> {
        each_backend!(self, s => s.credentials_by_email(email).await)
    }

    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        each_backend!(self, s => s.list_users().await)
    }

    /// Disables (or re-enables) an account; a disabled account's refresh tokens and sessions are
    /// revoked.
    /// Returns false when no such user exists.
    pub async fn set_user_disabled(&self, email: &str, disabled: bool) -> Result<bool, StoreError> {
        each_backend!(self, s => s.set_user_disabled(email, disabled, Utc::now()).await)
    }

    /// Signs a user out everywhere: refresh tokens revoked, and access tokens and live sessions
    /// refused from now on (they carry an older epoch). False if no such user.
    pub async fn revoke_sessions(&self, email: &str) -> Result<bool, StoreError> {
        each_backend!(self, s => s.revoke_sessions(email, Utc::now()).await)
    }

    /// Users whose sessions were revoked at or after `since_ms` (Unix milliseconds).
    pub async fn revoked_users_since(&self, since_ms: i64) -> Result<Vec<User>, StoreError> {
        each_backend!(self, s => s.revoked_users_since(since_ms).await)
    }

    /// Replaces a user's password hash and revokes their refresh tokens and sessions. False if
    /// no such user.
    pub async fn set_password_hash(&self, email: &str, password_hash: &str) -> Result<bool, StoreError> {
        each_backend!(self, s => s.set_password_hash(email, password_hash, Utc::now()).await)
    }

    pub async fn insert_refresh_token(&self, token: &NewRefreshToken) -> Result<(), StoreError> {
        each_backend!(self, s => s.insert_refresh_token(token, Utc::now()).await)
    }

    /// Spends the token hashed `old_hash` and stores `new` in its family, atomically: of two
    /// concurrent uses, one rotates and the other counts as reuse.
    pub async fn rotate_refresh_token(&self, old_hash: &str, new: &NewRefreshToken) -> Result<Refreshed, StoreError> {
        each_backend!(self, s => s.rotate_refresh_token(old_hash, new, Utc::now()).await)
    }

    /// Revokes the family of a live token (logout). False if the token is not live.
    pub async fn revoke_refresh_family(&self, hash: &str) -> Result<bool, StoreError> {
        each_backend!(self, s => s.revoke_refresh_family(hash, Utc::now()).await)
    }

    /// Grants (or takes) server administration. False if there is no user with `email`.
    pub async fn set_admin(&self, email: &str, admin: bool) -> Result<bool, StoreError> {
        each_backend!(self, s => s.set_admin(email, admin).await)
    }
}
