//! Durable state: users, refresh tokens, rooms and messages, on SQLite (the embedded default) or
//! PostgreSQL, chosen by the scheme of `database.url`.
//!
//! One enum, one method per query. The SQL both backends share is written once (see
//! [`sql`]); each backend adds only what its dialect does differently (connecting, storing
//! messages). Invariant kept here, not by callers: a room's seqs are 1, 2, 3… with no hole and no
//! duplicate, however many nodes write at once, and a `(room, sender, client_id)` is stored once.
//!
//! This file holds the enum, its errors and its lifecycle (connect, migrate, close); its
//! queries are grouped by what they are about: `users` (accounts, invitations, refresh tokens),
//! `rooms` (rooms, members, read markers), `messages` (a room's seq stream, reactions, search)
//! and `ops` (the audit log, nodes' session lists). What they read and write are the types of
//! [`crate::domain`].

#[macro_use]
mod sql;
mod postgres;
mod sqlite;

use crate::config::DatabaseKind;
pub use messages::{Appended, IndexStep, Reacted, SearchScope};
pub use ops::NodeSessions;
pub use postgres::PgStore;
pub use sqlite::{SqliteStore, sqlite_path};
pub use users::{NewRefreshToken, Refreshed};

/// Everything the store can fail with, by what a caller does about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint said no (email taken, …).
    #[error("already exists")]
    Conflict,
    /// The database cannot be reached or is overloaded: retry later, tell the client `unavailable`.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error")]
    Other(#[source] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot open the database: {0}")]
    Open(String),
}

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Conflict,
            sqlx::Error::Database(db)
                // SQLite "database is locked/busy", PostgreSQL "too many connections"/"cannot
                // connect now"/"admin shutdown": the request may well succeed later.
                if matches!(db.code().as_deref(), Some("5" | "6" | "53300" | "57P01" | "57P03")) =>
            {
                Self::Unavailable(e)
            }
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Self::Unavailable(e),
            _ => Self::Other(e),
        }
    }
}

/// Users, refresh tokens and messages. `sqlite://…` (default) or `postgres://…`.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Calls the same method on whichever backend this is.
macro_rules! each_backend {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Sqlite($s) => $call,
            Store::Postgres($s) => $call,
        }
    };
}

// After `each_backend!`, which they use.
mod messages;
mod ops;
mod rooms;
mod users;

impl Store {
    /// Opens (and for SQLite creates) the database at `url`. Does not migrate.
    pub async fn connect(kind: DatabaseKind, url: &str, max_connections: u32) -> Result<Self, StoreError> {
        Ok(match kind {
            DatabaseKind::Sqlite => Self::Sqlite(SqliteStore::connect(url, max_connections).await?),
            DatabaseKind::Postgres => Self::Postgres(PgStore::connect(url, max_connections).await?),
        })
    }

    /// `"sqlite"` or `"postgres"`, for metrics and logs.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Applies pending migrations; running it again is a no-op. Returns how many were applied.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        each_backend!(self, s => s.migrate().await)
    }

    /// A trivial round trip, for readiness.
    pub async fn ping(&self) -> Result<(), StoreError> {
        each_backend!(self, s => s.ping().await)
    }

    pub async fn close(&self) {
        each_backend!(self, s => s.close().await);
    }

    /// Returns the value stored under `key`, storing `candidate` first if there is none. Every
    /// node racing here ends up with the same value.
    pub async fn setting_or_insert(&self, key: &str, candidate: &str) -> Result<String, StoreError> {
        each_backend!(self, s => s.setting_or_insert(key, candidate).await)
    }
}
