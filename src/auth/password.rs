//! Password hashing with argon2id, always off the async worker threads.
//!
//! A login storm must not stall chat traffic, so every hash and verify runs in
//! `spawn_blocking`. Logins for unknown emails verify against a dummy hash made with the same
//! parameters, so "no such user" and "wrong password" cost the same time.

use std::sync::Arc;

use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, PasswordVerifier as _, Version};

use crate::config::Argon2Config;

/// Hashing failed for a reason that is not the caller's input (parameters, allocation, a
/// panicked worker).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

/// Hashes and verifies passwords with configured argon2id parameters. Cheap to clone.
#[derive(Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

struct Inner {
    params: Params,
    /// A hash of a random password, verified against when the email is unknown.
    dummy: String,
}

impl PasswordHasher {
    pub fn new(config: &Argon2Config) -> Result<Self, HashError> {
        let params = Params::new(config.memory_kib, config.iterations, config.parallelism, None)
            .map_err(|e| HashError(format!("argon2 parameters: {e}")))?;
        let dummy = hash_blocking(&params, uuid::Uuid::new_v4().to_string().as_bytes())?;
        Ok(Self { inner: Arc::new(Inner { params, dummy }) })
    }

    /// The PHC string (`$argon2id$v=19$m=…`) for `password`, with a fresh random salt.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || hash_blocking(&inner.params, password.as_bytes()))
            .await
            .map_err(|e| HashError(format!("hashing task: {e}")))?
    }

    /// Whether `password` matches `stored`. With `stored = None` (unknown account) it does the
    /// same work and returns false.
    pub async fn verify(&self, password: String, stored: Option<String>) -> bool {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let known = stored.is_some();
            let hash = stored.unwrap_or_else(|| inner.dummy.clone());
            // The stored hash carries its own parameters, so changing the configured cost does
            // not lock out existing accounts.
            let ok = Argon2::default().verify_password(password.as_bytes(), hash.as_str()).is_ok();
            ok && known
        })
        .await
        .unwrap_or(false)
    }
}

fn hash_blocking(params: &Params, password: &[u8]) -> Result<String, HashError> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password(password)
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> PasswordHasher {
        PasswordHasher::new(&Argon2Config { memory_kib: 64, iterations: 1, parallelism: 1 }).unwrap()
    }

    #[tokio::test]
    async fn a_hash_verifies_only_its_own_password() {
        let h = cheap();
        let stored = h.hash("correct horse".into()).await.unwrap();
        assert!(stored.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{stored}");
        assert!(h.verify("correct horse".into(), Some(stored.clone())).await);
        assert!(!h.verify("wrong horse".into(), Some(stored)).await);
    }

    #[tokio::test]
    async fn unknown_accounts_never_verify() {
        let h = cheap();
        assert!(!h.verify("anything".into(), None).await);
        assert!(!h.verify("anything".into(), Some("not a phc string".into())).await);
    }
}
