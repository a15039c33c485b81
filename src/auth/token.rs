//! Access tokens (short-lived HS256 JWTs) and refresh tokens (opaque, stored hashed).
//!
//! Verification is strict: only HS256 is accepted (so `alg: none` and algorithm confusion fail),
//! `iss` and `aud` must be `confab`, and `exp`, `iat` and `sub` must be present.

use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::domain::UserId;

/// The `iss` and `aud` of every token confab issues.
pub const ISSUER: &str = "confab";

/// Claims of an access token, as `PROTOCOL.md` lists them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub email: String,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
    /// The user's session epoch when the token was issued: a token of an older epoch was
    /// revoked (see `users.session_epoch`). Tokens from before epochs existed count as 0.
    #[serde(default)]
    pub sep: i64,
}

/// Signs and verifies access tokens with one key.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl TokenKeys {
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
        // A few seconds for clocks of nodes that disagree slightly, no more.
        validation.leeway = 5;
        Self { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret), validation, ttl }
    }

    /// Lifetime of the tokens this issues.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A signed access token for this user, of its current session epoch.
    pub fn issue(&self, user: UserId, email: &str, epoch: i64) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user.0,
            email: email.to_owned(),
            iat: now,
            exp: now + i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2),
            iss: ISSUER.into(),
            aud: ISSUER.into(),
            sep: epoch,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// The claims of a valid, unexpired token signed with our key; None for anything else.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok().map(|d| d.claims)
    }
}

/// A new opaque refresh token: 256 random bits, URL-safe base64.
pub fn new_refresh_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What is stored for a refresh token: its SHA-256, hex. A fast hash is right here: the token
/// has 256 bits of entropy, so there is nothing to brute-force.
pub fn hash_refresh_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A random secret for generated JWT keys: 512 bits, hex.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 64];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::new(b"0123456789abcdef0123456789abcdef", Duration::from_secs(60))
    }

    // jsonwebtoken panics at the first encode/decode when no crypto backend is enabled; this
    // test is the tripwire for a Cargo.toml change that drops it.
    #[test]
    fn a_signed_token_verifies_with_its_claims() {
        let id = UserId(Uuid::new_v4());
        let token = keys().issue(id, "a@b.co", 0);
        let claims = keys().verify(&token).expect("valid token");
        assert_eq!((claims.sub, claims.email.as_str(), claims.iss.as_str()), (id.0, "a@b.co", "confab"));
        assert_eq!(claims.exp - claims.iat, 60);
    }

    #[test]
    fn tokens_from_another_key_or_algorithm_are_refused() {
        let id = UserId(Uuid::new_v4());
        let other = TokenKeys::new(b"another-secret-another-secret-xx", Duration::from_secs(60));
        assert!(keys().verify(&other.issue(id, "a@b.co", 0)).is_none());
        // alg: none, with otherwise perfect claims.
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = keys().issue(id, "a@b.co", 0);
        let payload = body.split('.').nth(1).unwrap();
        assert!(keys().verify(&format!("{header}.{payload}.")).is_none());
        assert!(keys().verify("garbage").is_none());
    }

    #[test]
    fn refresh_tokens_are_random_and_hashed() {
        let (a, b) = (new_refresh_token(), new_refresh_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(hash_refresh_token(&a).len(), 64);
        assert_ne!(hash_refresh_token(&a), a);
    }
}
