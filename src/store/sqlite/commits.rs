//! SQLite's shared commits, on a thread of their own that talks to SQLite directly.
//!
//! Messages (from many rooms at once), new rooms and new memberships come in floods; every such
//! write waiting is stored in one transaction here, so commits per second, and the fsyncs that
//! `synchronous = FULL` makes of them, stop growing with the number of busy rooms and joining
//! clients. The transaction runs on this thread's own connection (rusqlite), statement after
//! statement as plain calls: through sqlx every statement was a hand-off to the connection's
//! thread and back, a dozen per transaction, each waiting for a core when the node is busy
//! with fan-out, which made a transaction of a millisecond's work take several.
//!
//! The store's other writes use sqlx's single write connection. While a transaction runs here,
//! this thread holds that connection (checked out of its pool, unused), so writers in this
//! process take turns in the pool's queue and never meet as `SQLITE_BUSY`; another process
//! (`confab create-user` beside a running server) is waited for on the busy handler.
//!
//! The WAL is checkpointed by a thread of its own (see [`checkpointer`]), not by whichever
//! connection commits when it passes SQLite's default 1,000 pages: that checkpoint ran inside a
//! commit, on this thread or on the write connection this thread waits for, copying and
//! fsyncing megabytes while every room's messages waited behind it.

use std::{
    sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    time::Duration,
};

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::super::{Appended, StoreError, messages::plan_batch, sql::rooms};
use crate::{
    domain::{Mentions, Message, MessageKind, NewMessage, NewRoom, Role, RoomName, UserId},
    telemetry,
};

/// The WAL pages after which a committing connection checkpoints by itself: only when the
/// checkpointer thread has fallen this far behind (about 64 MiB with 4 KiB pages). SQLite's
/// default, on every connection, is 1,000.
pub(super) const WAL_AUTOCHECKPOINT: u32 = 16_384;
/// How long the checkpointer lets commits gather after one is made, before it copies them.
const CHECKPOINT_AFTER: Duration = Duration::from_millis(100);

/// Writes stored in one transaction, at most.
pub(super) const WRITES_PER_COMMIT: usize = 64;

/// See `stored_client_ids!` (in the parent module, which explains its plan).
pub(super) const STORED_CLIENT_IDS: &str = stored_client_ids!();

/// A write that shares a transaction with whatever else is waiting, and where its result goes.
#[derive(Debug)]
pub(super) enum Write {
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
    fn apply(&self, tx: &Connection) -> rusqlite::Result<Outcome> {
        match self {
            Self::Messages { room, batch, .. } => append(tx, room, batch).map(Outcome::Messages),
            Self::Room { room, owner, now, .. } => create_room(tx, room, *owner, *now).map(Outcome::Flag),
            Self::Member { room, user, role, now, .. } => add_member(tx, room, *user, *role, *now).map(Outcome::Flag),
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

/// A rusqlite error as the store's: a unique constraint is a conflict, a busy or locked database
/// (or one that cannot be opened or written) is unavailable, anything else is other.
fn store_error(e: &rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    let text = sqlx::Error::Protocol(format!("sqlite: {e}"));
    match e.sqlite_error() {
        Some(f) if f.extended_code == 2067 || f.extended_code == 1555 => StoreError::Conflict,
        Some(f)
            if matches!(
                f.code,
                C::DatabaseBusy | C::DatabaseLocked | C::CannotOpen | C::DiskFull | C::SystemIoFailure
            ) =>
        {
            StoreError::Unavailable(text)
        }
        _ => StoreError::Other(text),
    }
}

/// Opens this thread's connection to the file (or shared in-memory database) `filename` names,
/// as sqlx opens its own: WAL (already set on the file by the pools), `synchronous = FULL`,
/// foreign keys on.
fn open(filename: &str, in_memory: bool) -> rusqlite::Result<Connection> {
    let conn = if in_memory {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        Connection::open_with_flags(format!("{filename}?mode=memory&cache=shared"), flags)?
    } else {
        Connection::open_with_flags(filename, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?
    };
    // FULL: a message acked to a client survives a power cut, not only a crash.
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT)?;
    // Another process holding the write lock is waited for in short steps, up to 5 s.
    conn.busy_handler(Some(|tries| {
        std::thread::sleep(Duration::from_micros(200));
        tries < 25_000
    }))?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Starts the commit thread for the database `filename` names; it stores what comes on `queue`
/// until every store handle is gone.
pub(super) fn spawn(
    filename: &str,
    in_memory: bool,
    write: SqlitePool,
    queue: mpsc::Receiver<Write>,
) -> Result<(), StoreError> {
    let conn = open(filename, in_memory).map_err(|e| StoreError::Open(format!("{filename}: {e}")))?;
    // The thread waits for sqlx's write connection on a runtime of its own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Open(format!("cannot start the SQLite commit thread: {e}")))?;
    // An in-memory database has no WAL to checkpoint.
    let checkpoints = if in_memory { None } else { Some(checkpointer(filename)?) };
    std::thread::Builder::new()
        .name("confab-sqlite-commit".into())
        .spawn(move || run(conn, &runtime, &write, queue, checkpoints.as_ref()))
        .map_err(|e| StoreError::Open(format!("cannot start the SQLite commit thread: {e}")))?;
    Ok(())
}

/// Starts the thread that checkpoints the WAL of `filename` into the database file, PASSIVE (it
/// never blocks a writer or a reader), 100 ms after a commit is made (so a checkpoint takes
/// everything committed meanwhile); returns how the commit thread says it made one. It ends
/// with the commit thread. A commit does not wait for it: SQLite lets one connection
/// checkpoint while another writes, and the writer starts the WAL over once all of it is in the
/// file. Were it to fall behind by [`WAL_AUTOCHECKPOINT`] pages, committing connections
/// checkpoint by themselves again.
fn checkpointer(filename: &str) -> Result<SyncSender<()>, StoreError> {
    let conn = open(filename, false).map_err(|e| StoreError::Open(format!("{filename}: {e}")))?;
    let (made, commits) = sync_channel(1);
    std::thread::Builder::new()
        .name("confab-sqlite-checkpoint".into())
        .spawn(move || checkpoint(&conn, &commits))
        .map_err(|e| StoreError::Open(format!("cannot start the SQLite checkpoint thread: {e}")))?;
    Ok(made)
}

fn checkpoint(conn: &Connection, commits: &Receiver<()>) {
    while commits.recv().is_ok() {
        std::thread::sleep(CHECKPOINT_AFTER);
        // Commits made meanwhile are in this checkpoint too.
        while commits.try_recv().is_ok() {}
        let pages = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get::<_, i64>(1));
        match pages {
            Ok(pages) => metrics::gauge!(telemetry::SQLITE_WAL_PAGES).set(f64::from(u32::try_from(pages).unwrap_or(0))),
            Err(e) => tracing::warn!(error = %e, "a WAL checkpoint failed; the next commit tries again"),
        }
    }
}

fn run(
    mut conn: Connection,
    runtime: &tokio::runtime::Runtime,
    write: &SqlitePool,
    mut queue: mpsc::Receiver<Write>,
    checkpoints: Option<&SyncSender<()>>,
) {
    // The held connection goes back to its pool (a Tokio task) outside `block_on` too.
    let _context = runtime.enter();
    let mut writes = Vec::with_capacity(WRITES_PER_COMMIT);
    while runtime.block_on(queue.recv_many(&mut writes, WRITES_PER_COMMIT)) > 0 {
        // Holding sqlx's write connection keeps this process's other writers out meanwhile.
        let held = runtime.block_on(write.acquire());
        let results = match held {
            Ok(_) => commit_together(&mut conn, &writes),
            Err(e) => Err(StoreError::from(e)),
        };
        match results {
            Ok(results) => {
                for (write, result) in writes.drain(..).zip(results) {
                    write.finish(result);
                }
                // Full: a checkpoint is due already, and takes this commit too.
                if let Some(Err(TrySendError::Disconnected(()))) = checkpoints.map(|c| c.try_send(())) {
                    tracing::warn!("the SQLite checkpoint thread stopped; commits checkpoint by themselves");
                }
            }
            Err(e) => {
                // Nothing of this transaction was stored: every caller hears why.
                let unavailable = e.is_unavailable();
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

/// One transaction for `writes`, each in a savepoint of its own so that a write that fails
/// answers only its own caller (in-process, a savepoint costs next to nothing). `Err` only when
/// the transaction itself failed.
fn commit_together(conn: &mut Connection, writes: &[Write]) -> Result<Vec<Result<Outcome, StoreError>>, StoreError> {
    let err = |e: rusqlite::Error| store_error(&e);
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
    let mut results = Vec::with_capacity(writes.len());
    for w in writes {
        let sp = tx.savepoint().map_err(err)?;
        match w.apply(&sp) {
            Ok(outcome) => {
                sp.commit().map_err(err)?;
                results.push(Ok(outcome));
            }
            // Dropping the savepoint rolls it back.
            Err(e) => results.push(Err(store_error(&e))),
        }
    }
    tx.commit().map_err(err)?;
    Ok(results)
}

/// How sqlx stores a timestamp in SQLite, so that both write the same text.
fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

/// How sqlx stores a UUID in SQLite: its 16 bytes.
fn uuid_bytes(id: Uuid) -> [u8; 16] {
    *id.as_bytes()
}

/// Appends one room's batch: its seq range from `rooms` (created if it is new), duplicates of
/// stored client ids answered with the stored copy (only its id and seq: the caller reads the
/// rest), the new messages inserted.
fn append(tx: &Connection, room: &RoomName, batch: &[NewMessage]) -> rusqlite::Result<Vec<Appended>> {
    let last_seq: i64 = tx
        .prepare_cached(
            "INSERT INTO rooms (name, last_seq, created_at) VALUES (?1, 0, ?2) \
             ON CONFLICT (name) DO UPDATE SET last_seq = rooms.last_seq RETURNING last_seq",
        )?
        .query_row(params![room.as_str(), timestamp(Utc::now())], |r| r.get(0))?;
    let existing = stored_client_ids(tx, room, batch)?;
    let (fresh, out) = plan_batch(batch, &existing, last_seq + 1);
    let Some(last) = fresh.last() else { return Ok(out) };
    let messages = i64::try_from(fresh.iter().filter(|m| m.kind == MessageKind::Message).count()).unwrap_or(0);
    tx.prepare_cached("UPDATE rooms SET last_seq = ?2, message_count = message_count + ?3 WHERE name = ?1")?
        .execute(params![room.as_str(), last.seq, messages])?;
    insert_messages(tx, &fresh)?;
    Ok(out)
}

/// Stored messages of `room` whose client id matches one in `batch` (callers match senders),
/// with what the dedupe needs: id, seq, sender and client id.
fn stored_client_ids(tx: &Connection, room: &RoomName, batch: &[NewMessage]) -> rusqlite::Result<Vec<Message>> {
    let ids: Vec<&str> = batch.iter().filter_map(|m| m.client_id.as_deref()).collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let json = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into());
    let mut stmt = tx.prepare_cached(STORED_CLIENT_IDS)?;
    let rows = stmt.query_map(params![room.as_str(), json], |r| {
        let uuid = |i: usize| -> rusqlite::Result<Uuid> {
            let bytes: Vec<u8> = r.get(i)?;
            Uuid::from_slice(&bytes)
                .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, e.into()))
        };
        Ok(Message {
            id: uuid(0)?,
            room: room.as_str().to_owned(),
            seq: r.get(1)?,
            sender_id: uuid(2)?,
            sender_email: String::new(),
            sender_name: String::new(),
            content: String::new(),
            created_at: DateTime::<Utc>::MIN_UTC,
            client_id: r.get(3)?,
            kind: MessageKind::Message,
            target_id: None,
            deleted_at: None,
            edited_at: None,
            tally: None,
            mentions: Mentions::default(),
        })
    })?;
    rows.collect()
}

fn insert_messages(tx: &Connection, rows: &[Message]) -> rusqlite::Result<()> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO messages \
         (id, room, seq, sender_id, sender_email, sender_name, content, created_at, client_id, kind, target_id, mentions) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    for m in rows {
        insert.execute(params![
            uuid_bytes(m.id),
            m.room,
            m.seq,
            uuid_bytes(m.sender_id),
            m.sender_email,
            m.sender_name,
            m.content,
            timestamp(m.created_at),
            m.client_id,
            m.kind.as_str(),
            m.target_id.map(uuid_bytes),
            m.mentions.to_db(),
        ])?;
    }
    // Who was mentioned where, for unread mention counts.
    let mut mention =
        tx.prepare_cached("INSERT INTO mentions (room, user_id, seq) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING")?;
    for m in rows {
        for user in m.mentions.targets() {
            mention.execute(params![m.room, uuid_bytes(user), m.seq])?;
        }
    }
    // Edits and deletions change their message in the same transaction.
    for m in rows {
        let Some(target) = m.target_id else { continue };
        match m.kind {
            MessageKind::Delete => tx
                .prepare_cached(
                    "UPDATE messages SET deleted_at = ?1, content = '' \
                     WHERE id = ?2 AND kind = 'message' AND deleted_at IS NULL",
                )?
                .execute(params![timestamp(m.created_at), uuid_bytes(target)])?,
            MessageKind::Edit => tx
                .prepare_cached(
                    "UPDATE messages SET edited_at = ?1, content = ?3 \
                     WHERE id = ?2 AND kind = 'message' AND deleted_at IS NULL",
                )?
                .execute(params![timestamp(m.created_at), uuid_bytes(target), m.content])?,
            MessageKind::Message | MessageKind::React | MessageKind::Unreact => continue,
        };
    }
    Ok(())
}

/// Creates `room` (with `owner` as its owner); false when it exists.
fn create_room(tx: &Connection, room: &NewRoom, owner: Option<UserId>, now: DateTime<Utc>) -> rusqlite::Result<bool> {
    let created = tx.prepare_cached(rooms::CREATE_ROOM)?.execute(params![
        room.name.as_str(),
        timestamp(now),
        room.kind.as_str(),
        room.title.as_deref(),
        room.topic.as_deref(),
        uuid_bytes(room.created_by.0),
    ])? == 1;
    if created && let Some(owner) = owner {
        tx.prepare_cached(rooms::ADD_OWNER)?.execute(params![
            room.name.as_str(),
            uuid_bytes(owner.0),
            timestamp(now)
        ])?;
    }
    Ok(created)
}

/// Makes `user` a member of `room` with `role`; false when they already have a standing there.
fn add_member(
    tx: &Connection,
    room: &RoomName,
    user: UserId,
    role: Role,
    now: DateTime<Utc>,
) -> rusqlite::Result<bool> {
    let added = tx.prepare_cached(rooms::ADD_MEMBER)?.execute(params![
        room.as_str(),
        uuid_bytes(user.0),
        role.as_str(),
        timestamp(now)
    ])?;
    Ok(added == 1)
}

/// The stored message `id` in full (the commit thread answers a duplicate with its id and seq).
pub(super) const MESSAGE_BY_ID: &str = concat!("SELECT ", message_columns!(), " FROM messages WHERE id = $1");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_written_as_sqlx_writes_them() {
        let t = DateTime::parse_from_rfc3339("2026-12-07T19:00:00.123456Z").expect("time").with_timezone(&Utc);
        assert_eq!(timestamp(t), "2026-12-07T19:00:00.123456+00:00");
    }

    #[test]
    fn a_unique_violation_is_a_conflict() {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY); INSERT INTO t VALUES ('a');").expect("setup");
        let e = conn.execute("INSERT INTO t VALUES ('a')", []).expect_err("duplicate");
        assert!(matches!(store_error(&e), StoreError::Conflict));
    }
}
