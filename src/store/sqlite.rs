//! SQLite backend: the embedded default. One file, WAL, foreign keys on.
//!
//! SQLite allows one writer at a time, so writes go through a pool of exactly one connection
//! (queueing in-process instead of spinning on `SQLITE_BUSY`) and start with `BEGIN IMMEDIATE`
//! (another process, such as `confab create-user` next to a running server, then waits on
//! `busy_timeout` instead of failing a read-to-write upgrade). Reads use their own pool and, thanks
//! to WAL, never wait for the writer.
//!
//! Three writes come in floods: messages (from many rooms at once), and rooms created and
//! members added by joins (a reconnect storm, a client rejoining its rooms). Each room's writer
//! already batches its own sends; here every such write waiting for the write connection —
//! rooms' batches, new rooms, new memberships — is stored in one transaction (should one fail,
//! they are stored again with a savepoint each, so that it answers only its own caller), so the
//! commits per second, and the fsyncs that `synchronous = FULL` makes of them, stop growing with
//! the number of busy rooms and joining clients. That transaction runs on a thread of its own.

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

use super::{Appended, IndexStep, StoreError, messages::plan_batch, sql::Backend};
use chrono::{DateTime, Utc};

use crate::domain::{Message, MessageKind, NewMessage, NewRoom, Role, RoomName, SearchQuery, Seq, UserId};

/// The stored copies of the client ids of several rooms' batches: `$1` is a JSON array of
/// `[room, client id]` pairs, so the statement is the same text (and prepared once) for any
/// number of rooms and messages. `client_id IS NOT NULL` lets SQLite use the partial unique
/// index `messages_room_client_idx`, one index look-up per pair.
macro_rules! stored_client_ids {
    () => {
        concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE client_id IS NOT NULL \
               AND (room, client_id) IN \
                   (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each($1))"
        )
    };
}
const STORED_CLIENT_IDS: &str = stored_client_ids!();

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

/// The `[room, client id]` pairs of the batches' messages that have a client id, as a JSON
/// array; `None` when none has one.
fn client_ids_json(batches: &[(&RoomName, &[NewMessage])]) -> Option<String> {
    let pairs: Vec<(&str, &str)> = batches
        .iter()
        .flat_map(|(room, batch)| batch.iter().filter_map(|m| Some((room.as_str(), m.client_id.as_deref()?))))
        .collect();
    (!pairs.is_empty()).then(|| serde_json::to_string(&pairs).expect("a list of string pairs serializes"))
}

/// The file a `sqlite:` URL names; `None` for an in-memory database or a URL that does not parse.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let options = SqliteConnectOptions::from_str(url).ok()?;
    let path = options.get_filename();
    (path != Path::new(":memory:")).then(|| path.to_owned())
}

#[derive(Clone, Debug)]
pub struct SqliteStore {
    read: SqlitePool,
    write: SqlitePool,
    /// Writes waiting to be stored together (see the module's docs).
    commits: mpsc::Sender<Write>,
}

/// Writes stored in one transaction, at most.
const WRITES_PER_COMMIT: usize = 64;

/// A write that shares a transaction with whatever else is waiting, and where its result goes.
#[derive(Debug)]
enum Write {
    /// One room's batch of messages.
    Messages { room: RoomName, batch: Vec<NewMessage>, done: oneshot::Sender<Result<Vec<Appended>, StoreError>> },
    /// A new room (with its owner), for `create_room`.
    Room { room: NewRoom, owner: Option<UserId>, now: DateTime<Utc>, done: oneshot::Sender<Result<bool, StoreError>> },
    /// A new membership, for `add_member`.
    Member {
        room: RoomName,
        user: UserId,
        role: Role,
        now: DateTime<Utc>,
        done: oneshot::Sender<Result<bool, StoreError>>,
    },
}

/// What a [`Write`] returns when its statements succeeded.
enum Outcome {
    Messages(Vec<Appended>),
    Flag(bool),
}

impl Write {
    /// Whether its statements need a savepoint of their own when it shares a transaction: a
    /// single statement that fails changes nothing (SQLite undoes the statement), several
    /// could leave half a write behind.
    fn needs_savepoint(&self) -> bool {
        !matches!(self, Self::Member { .. })
    }

    async fn apply(&self, tx: &mut Transaction<'static, Sqlite>) -> Result<Outcome, StoreError> {
        match self {
            Self::Messages { room, batch, .. } => {
                let mut out = SqliteStore::append_in(tx, &[(room, batch)]).await?;
                Ok(Outcome::Messages(out.pop().unwrap_or_default()))
            }
            Self::Room { room, owner, now, .. } => {
                SqliteStore::create_room_on(tx, room, *owner, *now).await.map(Outcome::Flag)
            }
            Self::Member { room, user, role, now, .. } => {
                SqliteStore::add_member_on(tx, room.as_str(), user.0, role.as_str(), *now).await.map(Outcome::Flag)
            }
        }
    }

    /// Answers the caller (who may have stopped waiting).
    fn finish(self, result: Result<Outcome, StoreError>) {
        match self {
            Self::Messages { done, .. } => {
                let _ = done.send(result.and_then(|o| match o {
                    Outcome::Messages(out) => Ok(out),
                    Outcome::Flag(_) => Err(mismatch()),
                }));
            }
            Self::Room { done, .. } | Self::Member { done, .. } => {
                let _ = done.send(result.and_then(|o| match o {
                    Outcome::Flag(flag) => Ok(flag),
                    Outcome::Messages(_) => Err(mismatch()),
                }));
            }
        }
    }
}

/// An outcome of the wrong kind: cannot happen, as [`Write::apply`] returns each kind's own.
fn mismatch() -> StoreError {
    StoreError::Other(sqlx::Error::Protocol("a write's outcome did not match its kind".into()))
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
        if path != Path::new(":memory:") {
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
        spawn_committer(write.clone(), queue)?;
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
        self.grouped(Write::Messages { room: room.clone(), batch: batch.to_vec(), done }, result).await
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

    /// Appends several rooms' batches (each room at most once) inside `tx`, in a fixed number
    /// of statements however many rooms there are: one look-up of stored client ids, one
    /// `rooms` update that hands out each room's seq range, one insert of the messages. Every
    /// statement is a round trip to SQLite's connection thread, so statements per room were
    /// most of a shared transaction's cost.
    async fn append_in(
        tx: &mut Transaction<'static, Sqlite>,
        batches: &[(&RoomName, &[NewMessage])],
    ) -> Result<Vec<Vec<Appended>>, StoreError> {
        let existing = Self::stored_client_ids(tx, batches).await?;
        let stored: Vec<Vec<Message>> = batches
            .iter()
            .map(|(room, _)| existing.iter().filter(|e| e.room == room.as_str()).cloned().collect())
            .collect();
        // Planned once to count what is new, and again from where each room's range starts.
        let mut plans: Vec<(Vec<Message>, Vec<Appended>)> =
            batches.iter().zip(&stored).map(|((_, batch), mine)| plan_batch(batch, mine, 1)).collect();
        let counts: Vec<(&str, Seq, i64)> = batches
            .iter()
            .zip(&plans)
            .filter(|(_, (fresh, _))| !fresh.is_empty())
            .map(|((room, _), (fresh, _))| {
                let messages = fresh.iter().filter(|m| m.kind == MessageKind::Message).count();
                (room.as_str(), Seq::try_from(fresh.len()).unwrap_or(Seq::MAX), i64::try_from(messages).unwrap_or(0))
            })
            .collect();
        if counts.is_empty() {
            return Ok(plans.into_iter().map(|(_, out)| out).collect());
        }
        // The single write connection and `BEGIN IMMEDIATE` serialise writers: each sees the
        // previous one's messages. A room stored for the first time starts at seq 1.
        let now = chrono::Utc::now();
        let mut q = sqlx::QueryBuilder::new("INSERT INTO rooms (name, last_seq, message_count, created_at) ");
        q.push_values(&counts, |mut b, (room, fresh, messages)| {
            b.push_bind(*room).push_bind(*fresh).push_bind(*messages).push_bind(now);
        });
        q.push(
            " ON CONFLICT (name) DO UPDATE SET last_seq = rooms.last_seq + excluded.last_seq, \
               message_count = rooms.message_count + excluded.message_count RETURNING name, last_seq",
        );
        let last_seqs: Vec<(String, Seq)> = q.build_query_as().fetch_all(&mut **tx).await?;
        for (((room, batch), mine), plan) in batches.iter().zip(&stored).zip(&mut plans) {
            let Some(count) = Seq::try_from(plan.0.len()).ok().filter(|n| *n > 0) else { continue };
            let last = last_seqs
                .iter()
                .find(|(name, _)| name == room.as_str())
                .map(|(_, last)| *last)
                .ok_or_else(|| StoreError::Other(sqlx::Error::RowNotFound))?;
            *plan = plan_batch(batch, mine, last - count + 1);
        }
        let rows: Vec<Message> = plans.iter().flat_map(|(fresh, _)| fresh.iter().cloned()).collect();
        Self::insert_messages(tx, &rows).await?;
        Ok(plans.into_iter().map(|(_, out)| out).collect())
    }

    /// Stored messages whose room and client id match a message of `batches` (callers match
    /// senders). One statement for all of them, an index look-up per client id.
    async fn stored_client_ids(
        tx: &mut Transaction<'static, Sqlite>,
        batches: &[(&RoomName, &[NewMessage])],
    ) -> Result<Vec<Message>, StoreError> {
        let Some(pairs) = client_ids_json(batches) else { return Ok(Vec::new()) };
        Ok(sqlx::query_as(STORED_CLIENT_IDS).bind(pairs).fetch_all(&mut **tx).await?)
    }

    /// SQLite's plan for the send path's duplicate look-up (`EXPLAIN QUERY PLAN`), one line per
    /// step: proof that it uses the index however large the table grows.
    pub async fn dedupe_plan(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(i64, i64, i64, String)> = sqlx::query_as(concat!("EXPLAIN QUERY PLAN ", stored_client_ids!()))
            .bind(r#"[["room","a"],["room","b"]]"#)
            .fetch_all(&self.read)
            .await?;
        Ok(rows.into_iter().map(|(.., detail)| detail).collect())
    }

    async fn insert_messages(tx: &mut Transaction<'static, Sqlite>, rows: &[Message]) -> Result<(), StoreError> {
        // SQLite has no arrays; a multi-row VALUES list of 2,000 rows (12 parameters a row) stays
        // below its 32,766-parameter limit.
        for chunk in rows.chunks(2000) {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO messages \
                 (id, room, seq, sender_id, sender_email, sender_name, content, created_at, client_id, kind, target_id, \
                  mentions) ",
            );
            q.push_values(chunk, |mut b, m| {
                b.push_bind(m.id)
                    .push_bind(m.room.clone())
                    .push_bind(m.seq)
                    .push_bind(m.sender_id)
                    .push_bind(m.sender_email.clone())
                    .push_bind(m.sender_name.clone())
                    .push_bind(m.content.clone())
                    .push_bind(m.created_at)
                    .push_bind(m.client_id.clone())
                    .push_bind(m.kind.as_str())
                    .push_bind(m.target_id)
                    .push_bind(m.mentions.to_db());
            });
            q.build().execute(&mut **tx).await?;
        }
        // Who was mentioned where, for unread mention counts.
        let mentioned: Vec<(&str, uuid::Uuid, Seq)> =
            rows.iter().flat_map(|m| m.mentions.targets().map(move |user| (m.room.as_str(), user, m.seq))).collect();
        for chunk in mentioned.chunks(1000) {
            let mut q = sqlx::QueryBuilder::new("INSERT INTO mentions (room, user_id, seq) ");
            q.push_values(chunk, |mut b, (room, user, seq)| {
                b.push_bind(*room).push_bind(*user).push_bind(*seq);
            });
            q.push(" ON CONFLICT DO NOTHING");
            q.build().execute(&mut **tx).await?;
        }
        // Edits and deletions change their message in the same transaction.
        for m in rows {
            let Some(target) = m.target_id else { continue };
            let query = match m.kind {
                MessageKind::Delete => sqlx::query(
                    "UPDATE messages SET deleted_at = $1, content = '' \
                     WHERE id = $2 AND kind = 'message' AND deleted_at IS NULL",
                ),
                MessageKind::Edit => sqlx::query(
                    "UPDATE messages SET edited_at = $1, content = $3 \
                     WHERE id = $2 AND kind = 'message' AND deleted_at IS NULL",
                ),
                MessageKind::Message | MessageKind::React | MessageKind::Unreact => continue,
            };
            let query = query.bind(m.created_at).bind(target);
            let query = if m.kind == MessageKind::Edit { query.bind(&m.content) } else { query };
            query.execute(&mut **tx).await?;
        }
        Ok(())
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

/// Runs [`run_commits`] on a thread of its own. A transaction is a dozen statements or more,
/// each a hand-off to SQLite's connection thread and back; on the node's shared runtime every
/// hand-off back waited behind whatever fan-out the workers were doing, and under load a commit
/// of ten rooms' batches took over 10 ms. Here the commit task is the only task its thread
/// runs.
fn spawn_committer(write: SqlitePool, queue: mpsc::Receiver<Write>) -> Result<(), StoreError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Open(format!("cannot start the SQLite commit thread: {e}")))?;
    std::thread::Builder::new()
        .name("confab-sqlite-commit".into())
        .spawn(move || runtime.block_on(run_commits(write, queue)))
        .map_err(|e| StoreError::Open(format!("cannot start the SQLite commit thread: {e}")))?;
    Ok(())
}

/// Stores what was queued for the write connection, everything waiting at once in one
/// transaction, until every store handle is gone.
async fn run_commits(write: SqlitePool, mut queue: mpsc::Receiver<Write>) {
    let mut writes = Vec::with_capacity(WRITES_PER_COMMIT);
    while queue.recv_many(&mut writes, WRITES_PER_COMMIT).await > 0 {
        match commit_together(&write, &writes).await {
            Ok(results) => {
                for (write, result) in writes.drain(..).zip(results) {
                    write.finish(result);
                }
            }
            Err(e) => {
                // Nothing of this transaction was stored: every caller hears why.
                let unavailable = e.is_unavailable();
                // The cause goes along in words (the error itself cannot be cloned).
                let text = std::error::Error::source(&e).map_or_else(|| e.to_string(), |cause| format!("{e}: {cause}"));
                for write in writes.drain(..) {
                    let error = sqlx::Error::Protocol(text.clone());
                    write.finish(Err(if unavailable {
                        StoreError::Unavailable(error)
                    } else {
                        StoreError::Other(error)
                    }));
                }
            }
        }
    }
}

/// One transaction for `writes`. `Err` only when the transaction itself failed; a write whose
/// own statements failed gets its error in the list.
///
/// Every statement is a round trip to SQLite's connection thread, so the writes are first tried
/// together without savepoints, new rooms and memberships first, then every room's messages in
/// the same few statements; only if that fails is the attempt rolled back and the writes done
/// again, each of several statements in a savepoint of its own, so that a failing write
/// answers only its own caller.
async fn commit_together(write: &SqlitePool, writes: &[Write]) -> Result<Vec<Result<Outcome, StoreError>>, StoreError> {
    let mut tx = write.begin_with("BEGIN IMMEDIATE").await?;
    if let [one] = writes {
        // Alone: its error is the transaction's (rolled back on drop), kept as it is so that
        // the caller can tell a conflict from an outage.
        let result = one.apply(&mut tx).await;
        if result.is_ok() {
            tx.commit().await?;
        }
        return Ok(vec![result]);
    }
    let mut results: Vec<Option<Outcome>> = Vec::with_capacity(writes.len());
    let mut batches: Vec<(&RoomName, &[NewMessage])> = Vec::new();
    for w in writes {
        if let Write::Messages { room, batch, .. } = w {
            batches.push((room, batch));
            results.push(None);
            continue;
        }
        let Ok(outcome) = w.apply(&mut tx).await else {
            tx.rollback().await?;
            return isolated(write, writes).await;
        };
        results.push(Some(outcome));
    }
    let mut rooms: Vec<&str> = batches.iter().map(|(room, _)| room.as_str()).collect();
    rooms.sort_unstable();
    rooms.dedup();
    // A room's writer waits for its commit, so a room has one batch here; two would need
    // seq ranges one after the other, which the shared statements do not hand out.
    let appended = if rooms.len() < batches.len() {
        Err(StoreError::Other(sqlx::Error::Protocol("two batches of one room in a transaction".into())))
    } else {
        SqliteStore::append_in(&mut tx, &batches).await
    };
    let Ok(appended) = appended else {
        tx.rollback().await?;
        return isolated(write, writes).await;
    };
    let mut appended = appended.into_iter();
    let results = results
        .into_iter()
        .map(|r| Ok(r.unwrap_or_else(|| Outcome::Messages(appended.next().unwrap_or_default()))))
        .collect();
    tx.commit().await?;
    Ok(results)
}

/// [`commit_together`] after a write failed: one transaction again, each write of several
/// statements in a savepoint, so the others are stored.
async fn isolated(write: &SqlitePool, writes: &[Write]) -> Result<Vec<Result<Outcome, StoreError>>, StoreError> {
    let mut tx = write.begin_with("BEGIN IMMEDIATE").await?;
    let mut results = Vec::with_capacity(writes.len());
    for w in writes {
        if !w.needs_savepoint() {
            results.push(w.apply(&mut tx).await);
            continue;
        }
        sqlx::query("SAVEPOINT write").execute(&mut *tx).await?;
        let result = w.apply(&mut tx).await;
        if result.is_err() {
            sqlx::query("ROLLBACK TO write").execute(&mut *tx).await?;
        }
        sqlx::query("RELEASE write").execute(&mut *tx).await?;
        results.push(result);
    }
    tx.commit().await?;
    Ok(results)
}
