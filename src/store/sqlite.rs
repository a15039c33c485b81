//! SQLite backend: the embedded default. One file, WAL, foreign keys on.
//!
//! SQLite allows one writer at a time, so writes go through a pool of exactly one connection
//! (queueing in-process instead of spinning on `SQLITE_BUSY`) and start with `BEGIN IMMEDIATE`
//! (another process, such as `confab create-user` next to a running server, then waits on
//! `busy_timeout` instead of failing a read-to-write upgrade). Reads use their own pool and, thanks
//! to WAL, never wait for the writer.

use std::{path::Path, str::FromStr, time::Duration};

use sqlx::{
    Sqlite, SqlitePool, Transaction,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use super::{Message, StoreError, sql::Backend};

#[derive(Clone, Debug)]
pub struct SqliteStore {
    read: SqlitePool,
    write: SqlitePool,
}

impl Backend for SqliteStore {
    type Db = Sqlite;
}

impl SqliteStore {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Open(format!("bad SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a message acked to a client survives a power cut, not only a crash.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let path = options.get_filename().to_owned();
        if path != Path::new(":memory:")
            && let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Open(format!("cannot create {}: {e}", dir.display())))?;
        }
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
        let read = SqlitePoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
        Ok(Self { read, write })
    }

    fn migrator() -> sqlx::migrate::Migrator {
        sqlx::migrate!("migrations/sqlite")
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.write.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn insert_messages(tx: &mut Transaction<'static, Sqlite>, rows: &[Message]) -> Result<(), StoreError> {
        // SQLite has no arrays; a multi-row VALUES list stays far below its 32k-parameter limit
        // for any batch the chat core builds (8 parameters a row).
        for chunk in rows.chunks(512) {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO messages (id, room, seq, sender_id, sender_email, content, created_at, client_id) ",
            );
            q.push_values(chunk, |mut b, m| {
                b.push_bind(m.id)
                    .push_bind(m.room.clone())
                    .push_bind(m.seq)
                    .push_bind(m.sender_id)
                    .push_bind(m.sender_email.clone())
                    .push_bind(m.content.clone())
                    .push_bind(m.created_at)
                    .push_bind(m.client_id.clone());
            });
            q.build().execute(&mut **tx).await?;
        }
        Ok(())
    }
}

shared_queries!(SqliteStore);
