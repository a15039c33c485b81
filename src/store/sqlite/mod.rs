//! SQLite backend: the embedded default. One file, WAL, foreign keys on.
//!
//! SQLite allows one writer at a time, so writes go through a pool of exactly one connection
//! (queueing in-process instead of spinning on `SQLITE_BUSY`) and start with `BEGIN IMMEDIATE`
//! (another process, such as `confab create-user` next to a running server, then waits on
//! `busy_timeout` instead of failing a read-to-write upgrade). Reads use their own pool and, thanks
//! to WAL, never wait for the writer.
//!
//! Three writes come in floods: messages (from many rooms at once), and rooms created and
//! members added by joins (a reconnect storm, a client rejoining its rooms). Every such write
//! waiting is stored in one transaction, on a thread and connection of its own ([`commits`]).

use std::{
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use sqlx::{
    Sqlite, SqlitePool, Transaction,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use tokio::sync::{mpsc, oneshot};

/// Stored copies of a batch's client ids in one room: `?2` is a JSON array of them, so the
/// statement is the same text (prepared once) for any batch size. `client_id IS NOT NULL` lets
/// SQLite use the partial unique index `messages_room_client_idx`.
macro_rules! stored_client_ids {
    () => {
        "SELECT id, seq, sender_id, client_id FROM messages \
         WHERE room = ?1 AND client_id IS NOT NULL AND client_id IN (SELECT value FROM json_each(?2))"
    };
}

mod commits;

use self::commits::{WRITES_PER_COMMIT, Write};
use super::{Appended, IndexStep, StoreError, sql::Backend};
use chrono::{DateTime, Utc};

use crate::domain::{Message, NewMessage, NewRoom, Role, RoomName, SearchQuery, Seq, UserId};

/// Creates `dir` (and its parents) readable by this user only.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Creates the database file, empty (which SQLite takes for a new database), readable and
/// writable by this user only: it holds password hashes and the generated JWT signing key.
/// SQLite gives its `-wal` and `-shm` files the same mode. An existing file is left as it is,
/// with a warning when others may read it.
fn private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                if let Ok(meta) = std::fs::metadata(path)
                    && meta.permissions().mode() & 0o077 != 0
                {
                    tracing::warn!(
                        path = %path.display(),
                        mode = format!("{:o}", meta.permissions().mode() & 0o777),
                        "the database file is readable by other users; it holds password hashes and the JWT \
                         signing key: chmod 600 it"
                    );
                }
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The file a `sqlite:` URL names; `None` for an in-memory database or a URL that does not parse.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let options = SqliteConnectOptions::from_str(url).ok()?;
    let path = options.get_filename();
    (!in_memory(path)).then(|| path.to_owned())
}

/// Whether sqlx's `filename` is an in-memory database: `:memory:`, or the shared-cache name
/// sqlx gives `sqlite::memory:` (which is not a file and must not be created as one).
fn in_memory(filename: &Path) -> bool {
    filename == Path::new(":memory:") || filename.to_string_lossy().starts_with("file:sqlx-in-memory-")
}

#[derive(Clone, Debug)]
pub struct SqliteStore {
    read: SqlitePool,
    write: SqlitePool,
    /// Writes waiting to be stored together (see the module's docs).
    commits: mpsc::Sender<Write>,
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
            .busy_timeout(Duration::from_secs(5))
            // The commit thread's checkpointer copies the WAL into the file (see `commits`).
            .pragma("wal_autocheckpoint", commits::WAL_AUTOCHECKPOINT.to_string());
        let path = options.get_filename().to_owned();
        let in_memory = in_memory(&path);
        if !in_memory {
            if let Some(dir) = path.parent()
                && !dir.as_os_str().is_empty()
                && !dir.exists()
            {
                private_dir(dir).map_err(|e| StoreError::Open(format!("cannot create {}: {e}", dir.display())))?;
            }
            private_file(&path).map_err(|e| StoreError::Open(format!("cannot create {}: {e}", path.display())))?;
        }
        // No test before each acquire: the connections are in this process, and the test is
        // a round trip to the connection's thread before every transaction and every read.
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
        let read = SqlitePoolOptions::new()
            .max_connections(max_connections.max(2))
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
        let (commits, queue) = mpsc::channel(4 * WRITES_PER_COMMIT);
        let filename = path.to_string_lossy().into_owned();
        commits::spawn(&filename, in_memory, write.clone(), queue)?;
        Ok(Self { read, write, commits })
    }

    /// Writes a consistent, compacted copy of the database to `path` (which must not exist),
    /// while others keep reading and writing: `VACUUM INTO` reads one snapshot.
    pub async fn vacuum_into(&self, path: &Path) -> Result<(), StoreError> {
        let target = path.to_str().ok_or_else(|| StoreError::Open("the backup path is not UTF-8".into()))?;
        sqlx::query("VACUUM INTO $1").bind(target).execute(&self.read).await?;
        Ok(())
    }

    fn migrator() -> sqlx::migrate::Migrator {
        sqlx::migrate!("migrations/sqlite")
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.write.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Queues `write` for the next shared transaction and waits for its answer.
    async fn grouped<T>(
        &self,
        write: Write,
        result: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let stopped = || StoreError::Unavailable(sqlx::Error::PoolClosed);
        self.commits.send(write).await.map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }

    pub async fn append_messages(&self, room: &RoomName, batch: &[NewMessage]) -> Result<Vec<Appended>, StoreError> {
        let (done, result) = oneshot::channel();
        let mut appended =
            self.grouped(Write::Messages { room: room.clone(), batch: batch.to_vec(), done }, result).await?;
        // The commit answers a duplicate with the stored copy's id and seq; the rest is read
        // here (a resend is rare, and the copy is committed).
        for a in appended.iter_mut().filter(|a| a.duplicate) {
            if let Some(stored) = sqlx::query_as::<_, Message>(commits::MESSAGE_BY_ID)
                .bind(a.message.id)
                .fetch_optional(&self.read)
                .await?
            {
                a.message = stored;
            }
        }
        Ok(appended)
    }

    /// Creates `room` (with `owner` as its owner), in a transaction shared with other writes;
    /// false when it exists.
    pub async fn create_room(
        &self,
        room: &NewRoom,
        owner: Option<UserId>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let (done, result) = oneshot::channel();
        self.grouped(Write::Room { room: room.clone(), owner, now, done }, result).await
    }

    /// Makes `user` a member of `room`, in a transaction shared with other writes; false when
    /// they already have a standing there.
    pub async fn add_member(
        &self,
        room: &RoomName,
        user: UserId,
        role: Role,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let (done, result) = oneshot::channel();
        self.grouped(Write::Member { room: room.clone(), user, role, now, done }, result).await
    }

    /// The search indexer's range query as SQLite plans it (`EXPLAIN QUERY PLAN`).
    pub async fn index_plan(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {}", Self::INDEX_MESSAGES)))
                .bind("room")
                .bind(0_i64)
                .bind(256_i64)
                .fetch_all(&self.read)
                .await?;
        Ok(rows.into_iter().map(|(_, _, _, detail)| detail).collect())
    }

    /// SQLite's plan for the send path's duplicate look-up (`EXPLAIN QUERY PLAN`), one line per
    /// step: proof that it uses the index however large the table grows.
    pub async fn dedupe_plan(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(i64, i64, i64, String)> = sqlx::query_as(concat!("EXPLAIN QUERY PLAN ", stored_client_ids!()))
            .bind("room")
            .bind(r#"["a","b"]"#)
            .fetch_all(&self.read)
            .await?;
        Ok(rows.into_iter().map(|(.., detail)| detail).collect())
    }
}

impl SqliteStore {
    /// See [`super::Store::index_room`]. The single write connection serialises this with
    /// sends, edits and other indexers: the range read here is exactly what is committed.
    pub async fn index_room(&self, room: &RoomName, max: Seq) -> Result<IndexStep, StoreError> {
        let mut tx = self.begin_write().await?;
        let (from, last): (Seq, Seq) = sqlx::query_as(
            "SELECT COALESCE((SELECT indexed_seq FROM search_progress WHERE room = $1), 0), \
                    COALESCE((SELECT last_seq FROM rooms WHERE name = $1), 0)",
        )
        .bind(room.as_str())
        .fetch_one(&mut *tx)
        .await?;
        Self::index_range(tx, room, (from, last), max).await
    }

    /// Indexes `room`'s seqs after `from`, up to `last` and at most `max` of them, and records
    /// how far it got, in `tx`. Nothing to do: the transaction is dropped, changing nothing.
    async fn index_range(
        mut tx: Transaction<'static, Sqlite>,
        room: &RoomName,
        (from, last): (Seq, Seq),
        max: Seq,
    ) -> Result<IndexStep, StoreError> {
        if last <= from {
            return Ok(IndexStep::UpToDate);
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
        Ok(IndexStep::Indexed(indexed))
    }

    /// The messages of a seq range (`$1` room, `$2` after, `$3` up to) into the search table;
    /// its trigger copies each one's content into `messages_fts`.
    const INDEX_MESSAGES: &'static str = "INSERT INTO message_search (message_id) SELECT id FROM messages \
         WHERE room = $1 AND seq > $2 AND seq <= $3 AND kind = 'message' ORDER BY seq \
         ON CONFLICT (message_id) DO NOTHING";
    /// How far the room is indexed.
    const SET_INDEXED: &'static str = "INSERT INTO search_progress (room, indexed_seq) VALUES ($1, $2) \
         ON CONFLICT (room) DO UPDATE SET indexed_seq = excluded.indexed_seq";
}

impl SqliteStore {
    /// Full-text search through FTS5 (see [`search_messages!`]).
    const SEARCH: &'static str = search_messages!(
        "id IN (SELECT s.message_id FROM messages_fts JOIN message_search s ON s.rowid = messages_fts.rowid \
                WHERE messages_fts MATCH $1)"
    );

    fn search_text(query: &SearchQuery) -> String {
        query.fts5()
    }
}

shared_queries!(SqliteStore);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_urls_name_no_file() {
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("sqlite://:memory:"), None);
        assert_eq!(sqlite_path("sqlite://data/confab.db"), Some(PathBuf::from("data/confab.db")));
    }
}
