//! Accounts and tokens: register, login, refresh (with rotation and reuse detection), logout,
//! and turning a bearer token into a live user.
//!
//! Knows the store and the crypto, nothing of HTTP: the REST layer maps [`AuthError`] to statuses.

mod lookup;
pub mod password;
pub mod token;

use std::time::Duration;

use uuid::Uuid;

pub use password::PasswordHasher;
pub use token::TokenKeys;

use crate::{
    config::Registration,
    domain::{DisplayName, Email, InvalidPassword, Password, User},
    store::{NewRefreshToken, Refreshed, Store, StoreError},
};

/// What `POST /api/auth/register` was given besides email and password.
#[derive(Clone, Copy, Debug, Default)]
pub struct Signup<'a> {
    /// Tidied (see [`DisplayName::tidy`]); nothing left, or none given, means the address's
    /// local part.
    pub display_name: Option<&'a str>,
    /// Required when registration is by invitation.
    pub invite_code: Option<&'a str>,
}

/// A new single-use invitation code: 128 random bits, URL-safe base64 (22 characters).
pub fn new_invite_code() -> String {
    use base64::Engine as _;
    use rand::RngCore as _;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What is stored for an invitation code: its SHA-256, as for refresh tokens.
pub fn invite_hash(code: &str) -> String {
    token::hash_refresh_token(code.trim())
}

/// Everything an auth operation can fail with; each variant is one `code` on the wire.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("a valid email address is required")]
    InvalidEmail,
    #[error("{0}")]
    InvalidPassword(#[from] InvalidPassword),
    #[error("this email is already registered")]
    EmailTaken,
    #[error("registration is closed on this server; ask an administrator for an account")]
    RegistrationClosed,
    #[error("registration needs a valid invitation code (unused and unexpired)")]
    InvalidInvite,
    /// Unknown email and wrong password are deliberately the same answer.
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("this account is disabled")]
    Disabled,
    #[error("invalid or expired refresh token")]
    InvalidRefreshToken,
    #[error("missing, invalid or expired access token")]
    Unauthorized,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hash(#[from] password::HashError),
}

impl AuthError {
    /// The machine-readable `code` for this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidEmail => "invalid_email",
            Self::InvalidPassword(_) => "invalid_password",
            Self::EmailTaken => "email_taken",
            Self::RegistrationClosed => "registration_closed",
            Self::InvalidInvite => "invalid_invite",
            Self::InvalidCredentials => "invalid_credentials",
            Self::Disabled => "account_disabled",
            Self::InvalidRefreshToken | Self::Unauthorized => "unauthorized",
            Self::Store(e) if e.is_unavailable() => "unavailable",
            Self::Hash(password::HashError::Busy { .. }) => "busy",
            Self::Store(_) | Self::Hash(_) => "internal",
        }
    }
}

/// Creates an account after checking the email and password rules (register, and the CLI's
/// `create-user`, which issues no tokens).
pub async fn create_account(
    store: &Store,
    hasher: &PasswordHasher,
    email: &str,
    password: &str,
) -> Result<User, AuthError> {
    let email = Email::parse(email).map_err(|_| AuthError::InvalidEmail)?;
    let password = Password::parse(password)?;
    let hash = hasher.hash(password.expose().to_owned()).await?;
    match store.create_user(email.as_str(), &hash).await {
        Err(StoreError::Conflict) => Err(AuthError::EmailTaken),
        other => Ok(other?),
    }
}

/// A freshly issued pair of tokens.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
    /// Seconds until `access` expires.
    pub expires_in: u64,
}

/// Issues and checks credentials. Cheap to clone.
#[derive(Clone)]
pub struct AuthService {
    store: Store,
    users: lookup::UserLookup,
    hasher: PasswordHasher,
    keys: TokenKeys,
    refresh_ttl: Duration,
}

impl AuthService {
    pub fn new(store: Store, hasher: PasswordHasher, keys: TokenKeys, refresh_ttl: Duration) -> Self {
        Self { users: lookup::UserLookup::new(store.clone()), store, hasher, keys, refresh_ttl }
    }

    pub fn keys(&self) -> &TokenKeys {
        &self.keys
    }

    /// Registers and signs in, as `policy` allows.
    pub async fn register(
        &self,
        email: &str,
        password: &str,
        signup: Signup<'_>,
        policy: Registration,
    ) -> Result<(User, Tokens), AuthError> {
        let invite = match (policy, signup.invite_code) {
            (Registration::Closed, _) => return Err(AuthError::RegistrationClosed),
            (Registration::Invite, None) => return Err(AuthError::InvalidInvite),
            (Registration::Invite, Some(code)) => Some(invite_hash(code)),
            (Registration::Open, _) => None,
        };
        let email = Email::parse(email).map_err(|_| AuthError::InvalidEmail)?;
        let password = Password::parse(password)?;
        let name = signup.display_name.and_then(DisplayName::tidy).unwrap_or_else(|| DisplayName::from_email(&email));
        let hash = self.hasher.hash(password.expose().to_owned()).await?;
        let created = match &invite {
            Some(code_hash) => self.store.create_invited_user(email.as_str(), name.as_str(), &hash, code_hash).await,
            None => self.store.create_named_user(email.as_str(), name.as_str(), &hash).await.map(Some),
        };
        let user = match created {
            Err(StoreError::Conflict) => return Err(AuthError::EmailTaken),
            other => other?.ok_or(AuthError::InvalidInvite)?,
        };
        let tokens = self.issue(&user, Uuid::new_v4()).await?;
        Ok((user, tokens))
    }

    pub async fn login(&self, email: &str, password: &str) -> Result<(User, Tokens), AuthError> {
        // A malformed email cannot exist, but it still costs a verification, so the timing
        // says nothing about which check failed.
        let creds = match Email::parse(email) {
            Ok(email) => self.store.credentials_by_email(email.as_str()).await?,
            Err(_) => None,
        };
        let (user, hash) = match creds {
            Some(c) => (Some(c.user), Some(c.password_hash)),
            None => (None, None),
        };
        if !self.hasher.verify(password.to_owned(), hash).await? {
            return Err(AuthError::InvalidCredentials);
        }
        let user = user.ok_or(AuthError::InvalidCredentials)?;
        if user.disabled_at.is_some() {
            return Err(AuthError::Disabled);
        }
        let tokens = self.issue(&user, Uuid::new_v4()).await?;
        Ok((user, tokens))
    }

    /// Spends `refresh_token` and issues a new pair in the same family.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens, AuthError> {
        let refresh = token::new_refresh_token();
        let new = NewRefreshToken {
            hash: token::hash_refresh_token(&refresh),
            // The store keeps the old token's owner and family; these are placeholders.
            user_id: crate::domain::UserId(Uuid::nil()),
            family_id: Uuid::nil(),
            expires_at: self.refresh_expiry(),
        };
        let old = token::hash_refresh_token(refresh_token);
        let Refreshed::Rotated { user_id } = self.store.rotate_refresh_token(&old, &new).await? else {
            return Err(AuthError::InvalidRefreshToken);
        };
        let user = self.store.user_by_id(user_id).await?.ok_or(AuthError::InvalidRefreshToken)?;
        if user.disabled_at.is_some() {
            return Err(AuthError::InvalidRefreshToken);
        }
        Ok(Tokens {
            access: self.keys.issue(user.id, &user.email, user.session_epoch),
            refresh,
            expires_in: self.keys.ttl().as_secs(),
        })
    }

    /// Revokes the token's family: that device is signed out.
    pub async fn logout(&self, refresh_token: &str) -> Result<(), AuthError> {
        if self.store.revoke_refresh_family(&token::hash_refresh_token(refresh_token)).await? {
            Ok(())
        } else {
            Err(AuthError::InvalidRefreshToken)
        }
    }

    /// The live, enabled user a bearer token belongs to.
    pub async fn authenticate(&self, access_token: &str) -> Result<User, AuthError> {
        Ok(self.authenticate_session(access_token).await?.0)
    }

    /// The live, enabled user a bearer token belongs to, and the token's claims (a session
    /// lives only as long as its token, and only in its epoch). A token of an older epoch than
    /// the user's was revoked (password change, disable, kick).
    pub async fn authenticate_session(&self, access_token: &str) -> Result<(User, token::Claims), AuthError> {
        let claims = self.keys.verify(access_token).ok_or(AuthError::Unauthorized)?;
        let user = self.users.user(crate::domain::UserId(claims.sub)).await?.ok_or(AuthError::Unauthorized)?;
        if user.disabled_at.is_some() || claims.sep < user.session_epoch {
            return Err(AuthError::Unauthorized);
        }
        Ok((user, claims))
    }

    async fn issue(&self, user: &User, family_id: Uuid) -> Result<Tokens, AuthError> {
        let refresh = token::new_refresh_token();
        self.store
            .insert_refresh_token(&NewRefreshToken {
                hash: token::hash_refresh_token(&refresh),
                user_id: user.id,
                family_id,
                expires_at: self.refresh_expiry(),
            })
            .await?;
        Ok(Tokens {
            access: self.keys.issue(user.id, &user.email, user.session_epoch),
            refresh,
            expires_in: self.keys.ttl().as_secs(),
        })
    }

    fn refresh_expiry(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now() + chrono::Duration::from_std(self.refresh_ttl).unwrap_or(chrono::Duration::days(30))
    }
}
