//! PostgreSQL backend, for clusters: every node shares it.
//!
//! Per-room seqs are serialised by the `rooms` row lock taken by each statement that stores
//! messages, so concurrent writers to one room queue there (on every node) while other rooms
//! proceed. Batches are stored by statements taking them as arrays (`UNNEST`), prepared once
//! whatever their size: the batches of many rooms in one (see [`commits`]), and one room's
//! alone when it resends a stored client id or its shared statement failed.

mod commits;

use std::{str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::{
    PgPool, Postgres, Transaction,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::sync::{mpsc, oneshot};

use super::{
    Appended, IndexStep, StoreError,
    messages::plan_batch,
    sql::{self, Backend},
};
use crate::domain::{Message, MessageKind, NewMessage, NewRoom, Role, RoomName, SearchQuery, Seq, UserId};

/// The stored copies of a batch's client ids in one room; `client_id IS NOT NULL` lets the
/// planner use the partial unique index `messages_room_client_idx`.
macro_rules! stored_client_ids {
    () => {
        concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE room = $1 AND client_id IS NOT NULL AND client_id = ANY($2::text[])"
        )
    };
}
const STORED_CLIENT_IDS: &str = stored_client_ids!();

#[derive(Clone, Debug)]
pub struct PgStore {
    read: PgPool,
    /// The same pool as `read`: PostgreSQL takes concurrent writers.
    write: PgPool,
    /// The connections of the shared message statements (see [`commits`]).
    shared: PgPool,
    /// Batches waiting to be stored together (see [`commits`]).
    commits: mpsc::Sender<commits::Pending>,
}

impl Backend for PgStore {
    type Db = Postgres;
}

impl PgStore {
    /// Opens `max_connections` connections at most: up to [`commits::IN_FLIGHT`] (a quarter)
    /// for the shared message statements, the rest for everything else (at least one each).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options =
            PgConnectOptions::from_str(url).map_err(|e| StoreError::Open(format!("bad PostgreSQL URL: {e}")))?;
        let shared = commits::IN_FLIGHT.min(max_connections / 4).max(1);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.saturating_sub(shared).max(1))
            .acquire_timeout(Duration::from_secs(5))
            .test_before_acquire(false)
            .before_acquire(|conn, meta| Box::pin(ping_if_idle(conn, meta)))
            .connect_with(options.clone())
            .await
            .map_err(|e| StoreError::Open(e.to_string()))?;
        let shared = commits::pool(options, shared);
        let commits = commits::spawn(shared.clone(), pool.clone());
        Ok(Self { read: pool.clone(), write: pool, shared, commits })
    }

    fn migrator() -> sqlx::migrate::Migrator {
        sqlx::migrate!("migrations/postgres")
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self.write.begin().await?)
    }

    /// Creates `room` (with `owner` as its owner) in its own transaction; false when it exists.
    pub async fn create_room(
        &self,
        room: &NewRoom,
        owner: Option<UserId>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let created = sqlx::query(sql::rooms::CREATE_ROOM)
            .bind(room.name.as_str())
            .bind(now)
            .bind(room.kind.as_str())
            .bind(room.title.as_deref())
            .bind(room.topic.as_deref())
            .bind(room.created_by.0)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if created && let Some(owner) = owner {
            sqlx::query(sql::rooms::ADD_OWNER)
                .bind(room.name.as_str())
                .bind(owner.0)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(created)
    }

    /// Makes `user` a member of `room` (one statement: its own transaction, and PostgreSQL
    /// flushes concurrent commits together).
    pub async fn add_member(
        &self,
        room: &RoomName,
        user: UserId,
        role: Role,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let added = sqlx::query(sql::rooms::ADD_MEMBER)
            .bind(room.as_str())
            .bind(user.0)
            .bind(role.as_str())
            .bind(now)
            .execute(&self.write)
            .await?
            .rows_affected();
        Ok(added == 1)
    }

    /// Stores a batch, in a statement shared with other rooms' batches (see [`commits`]), or
    /// alone when it edits or deletes.
    pub async fn append_messages(&self, room: &RoomName, batch: &[NewMessage]) -> Result<Vec<Appended>, StoreError> {
        if !commits::shareable(batch) {
            return append_alone(&self.write, room, batch).await;
        }
        let (done, result) = oneshot::channel();
        let stopped = || StoreError::Unavailable(sqlx::Error::PoolClosed);
        let pending = commits::Pending { room: room.clone(), batch: batch.to_vec(), done };
        self.commits.send(pending).await.map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }

    /// PostgreSQL's plans for the send path's duplicate look-ups (`EXPLAIN`), one line per
    /// step: the per-room look-up's, then the shared statement's over 64 rooms; proof that they
    /// use the index however large the table grows.
    pub async fn dedupe_plan(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(concat!("EXPLAIN ", stored_client_ids!()))
            .bind("room")
            .bind(vec!["a", "b"])
            .fetch_all(&self.read)
            .await?;
        let mut plan: Vec<String> = rows.into_iter().map(|(line,)| line).collect();
        plan.extend(commits::explain(&self.shared, 64).await?);
        Ok(plan)
    }

    /// The search indexer's step as PostgreSQL plans it generically (the plan a connection keeps
    /// once the table has grown): `EXPLAIN`, nothing runs.
    pub async fn index_plan(&self) -> Result<Vec<String>, StoreError> {
        let mut tx = self.read.begin().await?;
        sqlx::query("SET LOCAL plan_cache_mode = force_generic_plan").execute(&mut *tx).await?;
        let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN {}", Self::INDEX_STEP)))
            .bind("room")
            .bind(256_i64)
            .fetch_all(&mut *tx)
            .await?;
        tx.rollback().await?;
        Ok(rows.into_iter().map(|(line,)| line).collect())
    }
}

/// Checks a pooled connection before use only when it sat idle for a second or more: a ping
/// before every query doubled the round trips of a busy node (each a wake-up of a PostgreSQL
/// backend and of this process), while a connection in steady use is known to work. One that
/// broke since it was last used fails its query, which is retried or answered as
/// `unavailable`, and the pool replaces it.
async fn ping_if_idle(
    conn: &mut sqlx::PgConnection,
    meta: sqlx::pool::PoolConnectionMetadata,
) -> Result<bool, sqlx::Error> {
    if meta.idle_for >= Duration::from_secs(1) {
        sqlx::Connection::ping(conn).await?;
    }
    Ok(true)
}

/// Stores one room's batch in one statement, which is its own transaction: one round trip, two when a
/// message carries a client id (the look-up for earlier copies comes first). The room's row
/// lock is held only while PostgreSQL executes and commits, never across the network.
///
/// Earlier copies are looked up before the room is locked, so a copy committed meanwhile
/// (another node storing the same `(sender, client_id)`) is not seen; the unique index then
/// refuses the insert, nothing is stored, and [`super::Store::append_messages`] retries,
/// this time finding it.
async fn append_alone(pool: &PgPool, room: &RoomName, batch: &[NewMessage]) -> Result<Vec<Appended>, StoreError> {
    let existing = stored_client_ids(pool, room, batch).await?;
    // Seqs relative to the room's last_seq, which only the write below learns.
    let (fresh, mut out) = plan_batch(batch, &existing, 1);
    if fresh.is_empty() {
        return Ok(out);
    }
    let count = Seq::try_from(fresh.len()).unwrap_or(Seq::MAX);
    let c = Columns::of(&fresh);
    // Bumping last_seq by the batch's size takes the room's row lock (creating the row for a
    // room's first message), so writers of one room queue there on every node; RETURNING
    // gives the value before this batch, whatever committed while we waited. The insert runs
    // after it, as it reads its result. Outside a transaction the statement commits before
    // PostgreSQL reports it done, and sqlx returns only then (ReadyForQuery), even for
    // `fetch_one`: a returned seq is a committed one.
    let query = sqlx::query_as(
        "WITH room AS ( \
                 INSERT INTO rooms AS r (name, last_seq, created_at, message_count) VALUES ($1, $2, $3, $17) \
                 ON CONFLICT (name) DO UPDATE SET last_seq = r.last_seq + excluded.last_seq, \
                     message_count = r.message_count + excluded.message_count \
                 RETURNING r.last_seq - $2 AS base \
             ), inserted AS ( \
                 INSERT INTO messages \
                     (id, room, seq, sender_id, sender_email, sender_name, content, created_at, client_id, \
                      kind, target_id, mentions) \
                 SELECT m.id, $1, room.base + m.k, m.sender_id, m.sender_email, m.sender_name, m.content, \
                        m.created_at, m.client_id, m.kind, m.target_id, m.mentions \
                 FROM room, UNNEST($4::uuid[], $5::uuid[], $6::text[], $7::text[], $8::text[], \
                                   $9::timestamptz[], $10::text[], $11::text[], $12::uuid[], $13::text[]) \
                     WITH ORDINALITY AS m (id, sender_id, sender_email, sender_name, content, created_at, client_id, \
                                           kind, target_id, mentions, k) \
             ), mentioned AS ( \
                 INSERT INTO mentions (room, user_id, seq) \
                 SELECT $1, x.user_id, room.base + x.k FROM room, UNNEST($18::int8[], $19::uuid[]) AS x (k, user_id) \
                 ON CONFLICT DO NOTHING \
             ), deleted AS ( \
                 UPDATE messages SET content = '', deleted_at = $3 \
                 WHERE room = $1 AND kind = 'message' AND id = ANY($14::uuid[]) AND deleted_at IS NULL \
             ), edited AS ( \
                 UPDATE messages SET content = e.content, edited_at = $3 \
                 FROM UNNEST($15::uuid[], $16::text[]) AS e (id, content) \
                 WHERE messages.room = $1 AND messages.kind = 'message' AND messages.id = e.id \
                   AND messages.deleted_at IS NULL \
             ) \
             SELECT base FROM room",
    )
    .bind(room.as_str())
    .bind(count)
    .bind(Utc::now());
    let (base,): (Seq,) = c
        .rows
        .bind(query)
        .bind(c.deleted)
        .bind(c.edited)
        .bind(c.edits)
        .bind(c.messages)
        .bind(c.mention_k)
        .bind(c.mention_user)
        .fetch_one(pool)
        .await?;
    // The k-th fresh message got seq k above, and now base + k; earlier copies keep theirs.
    for a in &mut out {
        if !existing.iter().any(|e| e.id == a.message.id) {
            a.message.seq += base;
        }
    }
    Ok(out)
}

/// Stored messages of `room` whose client id matches one in `batch` (callers match
/// senders). No round trip when no message has a client id.
async fn stored_client_ids(pool: &PgPool, room: &RoomName, batch: &[NewMessage]) -> Result<Vec<Message>, StoreError> {
    let client_ids: Vec<&str> = batch.iter().filter_map(|m| m.client_id.as_deref()).collect();
    if client_ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(STORED_CLIENT_IDS).bind(room.as_str()).bind(client_ids).fetch_all(pool).await?)
}

/// The stored columns of a list of messages, one array each, as the insert statements unnest
/// them (the per-room one here and the shared one in [`commits`]).
#[derive(Default)]
struct MessageColumns<'a> {
    ids: Vec<uuid::Uuid>,
    senders: Vec<uuid::Uuid>,
    emails: Vec<&'a str>,
    names: Vec<&'a str>,
    contents: Vec<&'a str>,
    times: Vec<DateTime<Utc>>,
    client_ids: Vec<Option<&'a str>>,
    kinds: Vec<&'static str>,
    targets: Vec<Option<uuid::Uuid>>,
    mentions: Vec<Option<String>>,
}

impl<'a> MessageColumns<'a> {
    /// `query` with these arrays bound to its next ten parameters, in the order of the fields.
    fn bind<O>(self, query: PgQueryAs<'a, O>) -> PgQueryAs<'a, O> {
        query
            .bind(self.ids)
            .bind(self.senders)
            .bind(self.emails)
            .bind(self.names)
            .bind(self.contents)
            .bind(self.times)
            .bind(self.client_ids)
            .bind(self.kinds)
            .bind(self.targets)
            .bind(self.mentions)
    }

    fn push(&mut self, m: &'a Message) {
        self.ids.push(m.id);
        self.senders.push(m.sender_id);
        self.emails.push(m.sender_email.as_str());
        self.names.push(m.sender_name.as_str());
        self.contents.push(m.content.as_str());
        self.times.push(m.created_at);
        self.client_ids.push(m.client_id.as_deref());
        self.kinds.push(m.kind.as_str());
        self.targets.push(m.target_id);
        self.mentions.push(m.mentions.to_db());
    }
}

type PgQueryAs<'q, O> = sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments>;

/// A batch as the column arrays the insert statement unnests.
struct Columns<'a> {
    rows: MessageColumns<'a>,
    /// (k, user): the k-th fresh message mentions user (nil: everyone).
    mention_k: Vec<Seq>,
    mention_user: Vec<uuid::Uuid>,
    deleted: Vec<uuid::Uuid>,
    edited: Vec<uuid::Uuid>,
    edits: Vec<&'a str>,
    /// Messages, as opposed to edits, deletions and reactions: what unread counts count.
    messages: i64,
}

impl<'a> Columns<'a> {
    fn of(fresh: &'a [Message]) -> Self {
        let mut c = Columns {
            rows: MessageColumns::default(),
            mention_k: Vec::new(),
            mention_user: Vec::new(),
            deleted: Vec::new(),
            edited: Vec::new(),
            edits: Vec::new(),
            messages: 0,
        };
        for m in fresh {
            c.rows.push(m);
            for user in m.mentions.targets() {
                c.mention_k.push(m.seq);
                c.mention_user.push(user);
            }
            match (m.kind, m.target_id) {
                (MessageKind::Message, _) => c.messages += 1,
                (MessageKind::Delete, Some(target)) => c.deleted.push(target),
                (MessageKind::Edit, Some(target)) => {
                    c.edited.push(target);
                    c.edits.push(m.content.as_str());
                }
                _ => {}
            }
        }
        c
    }
}

impl PgStore {
    /// See [`super::Store::index_room`]. A room's `search_progress` row, locked by the
    /// statement, makes one indexer at a time work on it across nodes; the others skip it.
    /// Everything up to the room's committed `last_seq` is committed, as a batch's messages
    /// and its `last_seq` commit together. One statement (one round trip, its own
    /// transaction) finds the range, indexes it and records how far it got; a second creates
    /// the room's progress row the first time.
    pub async fn index_room(&self, room: &RoomName, max: Seq) -> Result<IndexStep, StoreError> {
        for _ in 0..2 {
            let (locked, indexed, to): (bool, i64, Option<Seq>) =
                sqlx::query_as(Self::INDEX_STEP).bind(room.as_str()).bind(max.max(1)).fetch_one(&self.write).await?;
            if locked {
                return Ok(match to {
                    Some(_) => IndexStep::Indexed(u64::try_from(indexed).unwrap_or_default()),
                    None => IndexStep::UpToDate,
                });
            }
            // No row yet (the room's first indexing), or another node holds it.
            let created = sqlx::query(
                "INSERT INTO search_progress (room, indexed_seq) VALUES ($1, 0) ON CONFLICT (room) DO NOTHING",
            )
            .bind(room.as_str())
            .execute(&self.write)
            .await?
            .rows_affected();
            if created == 0 {
                return Ok(IndexStep::Busy);
            }
        }
        Ok(IndexStep::Busy)
    }

    /// One indexing step of room `$1`, at most `$2` seqs: (whether its progress row was ours to
    /// lock, messages indexed, the seq indexed up to now or NULL when it was up to date).
    ///
    /// The messages are read by a lateral subquery bounded by `LIMIT` (which PostgreSQL does not
    /// flatten), so the seq range is always the index scan's condition. Written as a plain join,
    /// a plan made while the table was small scanned the room from its first message and
    /// filtered by seq at every step: a million-message preload read 1.5 billion index entries
    /// and slowed from 35,000 to 7,400 stored messages a second.
    const INDEX_STEP: &'static str = "WITH progress AS ( \
             SELECT indexed_seq FROM search_progress WHERE room = $1 FOR UPDATE SKIP LOCKED \
         ), span AS ( \
             SELECT p.indexed_seq AS after, LEAST(r.last_seq, p.indexed_seq + $2) AS upto \
             FROM progress p JOIN rooms r ON r.name = $1 WHERE r.last_seq > p.indexed_seq \
         ), indexed AS ( \
             INSERT INTO message_search (message_id, search) \
             SELECT m.id, to_tsvector('simple', m.content) FROM span CROSS JOIN LATERAL ( \
                 SELECT id, content FROM messages \
                 WHERE room = $1 AND seq > span.after AND seq <= span.upto AND kind = 'message' \
                   AND content <> '' \
                 ORDER BY seq LIMIT $2 \
             ) AS m \
             ON CONFLICT (message_id) DO NOTHING \
             RETURNING 1 \
         ), moved AS ( \
             UPDATE search_progress SET indexed_seq = span.upto FROM span WHERE search_progress.room = $1 \
         ) \
         SELECT EXISTS (SELECT 1 FROM progress), (SELECT count(*) FROM indexed), (SELECT upto FROM span)";

    /// Full-text search through `message_search` (see [`search_messages!`]).
    const SEARCH: &'static str =
        search_messages!("id IN (SELECT message_id FROM message_search WHERE search @@ to_tsquery('simple', $1))");

    fn search_text(query: &SearchQuery) -> String {
        query.tsquery()
    }
}

shared_queries!(PgStore);
