//! PostgreSQL's shared statements: the batches of many rooms stored by one statement.
//!
//! Every busy room has a writer storing its batches one after another; alone, each batch was
//! a statement and a commit of its own, and a look-up of earlier copies before it when a
//! message carried a client id (two round trips). At a few thousand messages a second spread
//! over many rooms that is a thousand commits and two thousand statements a second per node,
//! each a PostgreSQL backend's parse, plan and WAL flush. Here the batches waiting at one
//! moment go into one statement: it looks their client ids up, takes the rooms' row locks (in
//! name order, so two nodes' statements never wait on each other in a cycle), stores the
//! messages with their seqs, and commits once. At most [`IN_FLIGHT`] statements run at a
//! time; batches arriving meanwhile wait for the next one, so under load statements grow
//! instead of multiplying, and alone a batch goes at once.
//!
//! The statement runs on connections of its own, with `plan_cache_mode = force_generic_plan`:
//! PostgreSQL otherwise plans a prepared statement anew for every execution when its array
//! parameters make the custom plan look cheaper, and planning this one cost more CPU than
//! running it (0.86 ms a statement). A generic plan made while the table is small must not scan
//! it once it has grown: `enable_seqscan = off` on these connections (which run nothing else)
//! keeps the look-up an index probe per client id, whatever the statistics said when the plan
//! was made; everything else joins the statement's own arrays. *Which* index it probes is the
//! planner's choice, though: with no statistics yet, a table of a hundred or so rows makes the
//! probe of `messages_room_client_idx` and a walk of the room in `messages_room_seq_key` (the
//! client id checked row by row) cost the same, and a plan that took the second, kept while the
//! table grew to a million rows, read a whole room per client id (the statement went from
//! milliseconds to seconds). Autovacuum's ANALYZE would have replaced the plan: a server with
//! autovacuum turned off never does. So the statistics are kept here too (see [`Analyzer`]).
//!
//! A room whose batch has a client id already stored (a resend) is left out of the statement
//! and stored alone by the per-room path, which answers with the stored copy; so is every
//! batch of a statement that failed, so one bad batch answers only its own writer. Batches
//! with edits or deletions (which update stored messages) always go alone.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::super::{Appended, StoreError, messages::plan_batch};
use super::{MessageColumns, PgQueryAs, append_alone};
use crate::{
    domain::{Message, MessageKind, NewMessage, RoomName, Seq},
    telemetry,
};

/// Statements running at once, per node, at most (each on a connection of its own).
pub(super) const IN_FLIGHT: u32 = 4;
/// Batches (rooms) in one statement, at most.
const ROOMS_PER_STATEMENT: usize = 64;
/// Messages in one statement, at most (a statement takes at least one batch, whatever its size).
const MESSAGES_PER_STATEMENT: usize = 2048;

/// Messages this node stores through shared statements before it first runs `ANALYZE messages`.
const FIRST_ANALYZE: u64 = 1_000;

/// Runs `ANALYZE messages` each time the messages this node stored through shared statements have
/// doubled, from [`FIRST_ANALYZE`] on: what autovacuum does as a table grows, done whether or not
/// autovacuum runs. New statistics invalidate every cached plan on the table, so a plan made while
/// the table was tiny (see the module's note) is replaced once the table has grown; after the
/// first ANALYZE the statistics say a room holds many messages and a client id few, and the probe
/// takes the client-id index. One at a time, in the background; about ten over a node's first
/// million messages, each sampling at most 30,000 rows. If ANALYZE is refused (a role that does
/// not own the table), it says so once and stops; another failure waits for the next doubling.
pub(super) struct Analyzer {
    pool: PgPool,
    stored: AtomicU64,
    next: AtomicU64,
    running: AtomicBool,
}

impl Analyzer {
    pub(super) fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Self {
            pool,
            stored: AtomicU64::new(0),
            next: AtomicU64::new(FIRST_ANALYZE),
            running: AtomicBool::new(false),
        })
    }

    /// `n` more messages were stored.
    fn stored(self: &Arc<Self>, n: u64) {
        let total = self.stored.fetch_add(n, Ordering::Relaxed) + n;
        if total < self.next.load(Ordering::Relaxed) || self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        self.next.store(total.saturating_mul(2), Ordering::Relaxed);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            match sqlx::query("ANALYZE messages").execute(&this.pool).await {
                Ok(_) => tracing::debug!(stored = total, took = ?started.elapsed(), "analyzed the messages table"),
                // insufficient_privilege: this role may not; it will not later either.
                Err(e)
                    if e.as_database_error().and_then(sqlx::error::DatabaseError::code).as_deref() == Some("42501") =>
                {
                    tracing::warn!(error = %e, "ANALYZE messages is refused; the planner's statistics are left to autovacuum");
                    this.next.store(u64::MAX, Ordering::Relaxed);
                }
                // Anything else (a lost connection): tried again when the messages stored double.
                Err(e) => tracing::warn!(error = %e, "ANALYZE messages failed"),
            }
            this.running.store(false, Ordering::Release);
        });
    }
}

/// One room's batch, and where its result goes.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) room: RoomName,
    pub(super) batch: Vec<NewMessage>,
    pub(super) done: oneshot::Sender<Result<Vec<Appended>, StoreError>>,
}

/// Whether `batch` can share a statement: it only adds messages (no edit or deletion).
pub(super) fn shareable(batch: &[NewMessage]) -> bool {
    batch.iter().all(|m| !matches!(m.kind, MessageKind::Edit | MessageKind::Delete))
}

/// The pool the shared statements run on: `connections` of `options`, planning generically and
/// never scanning a table.
pub(super) fn pool(options: PgConnectOptions, connections: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(connections)
        // A connection that broke fails its statement, and the batches are stored alone.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| Box::pin(super::ping_if_idle(conn, meta)))
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options.options([("plan_cache_mode", "force_generic_plan"), ("enable_seqscan", "off")]))
}

/// Starts the task that gathers batches into statements run on `shared` (the batches left out
/// are stored alone through `alone`); it ends when every sender is dropped.
pub(super) fn spawn(shared: PgPool, alone: PgPool) -> mpsc::Sender<Pending> {
    let (tx, rx) = mpsc::channel(4 * ROOMS_PER_STATEMENT);
    let analyzer = Analyzer::new(alone.clone());
    tokio::spawn(gather(shared, alone, analyzer, rx));
    tx
}

async fn gather(shared: PgPool, alone: PgPool, analyzer: Arc<Analyzer>, mut queue: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(shared.options().get_max_connections() as usize));
    // A second batch of a room already in the statement being gathered waits for the next (one
    // statement locks and bumps a room once).
    let mut held: Option<Pending> = None;
    loop {
        // Wait for a free slot first: whatever arrives meanwhile joins the next statement.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
        let first = match held.take() {
            Some(p) => p,
            None => match queue.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut messages = first.batch.len();
        let mut group = vec![first];
        while group.len() < ROOMS_PER_STATEMENT && messages < MESSAGES_PER_STATEMENT {
            let Ok(next) = queue.try_recv() else { break };
            if group.iter().any(|p| p.room == next.room) {
                held = Some(next);
                break;
            }
            messages += next.batch.len();
            group.push(next);
        }
        let (shared, alone, analyzer) = (shared.clone(), alone.clone(), Arc::clone(&analyzer));
        tokio::spawn(async move {
            store(&shared, &alone, &analyzer, group).await;
            drop(slot);
        });
    }
}

/// Stores `group` in one statement, the batches it leaves out alone, and answers each: the
/// stored ones first, so none waits for another's batch stored alone.
async fn store(shared: &PgPool, alone: &PgPool, analyzer: &Arc<Analyzer>, group: Vec<Pending>) {
    let mut planned: Vec<Planned> = group.into_iter().map(Planned::of).collect();
    // Row locks in one order on every node.
    planned.sort_by(|a, b| a.pending.room.as_str().cmp(b.pending.room.as_str()));
    let (stored, left_out) = match together(shared, &planned).await {
        // The rooms it left out resent a client id stored before.
        Ok(rows) => (rows, "resend"),
        Err(e) => {
            // Another node stored one of the client ids meanwhile (the alone path answers with
            // its copy), or the statement itself failed: say so, as every batch now costs two.
            if matches!(e, StoreError::Conflict) {
                tracing::debug!(rooms = planned.len(), "a shared statement met a client id stored meanwhile");
                (Vec::new(), "conflict")
            } else {
                tracing::warn!(error = %e, rooms = planned.len(), "a shared statement failed; storing its batches alone");
                (Vec::new(), "failed")
            }
        }
    };
    let shared_count = stored.len() as u64;
    metrics::counter!(telemetry::STORE_SHARED_BATCHES, "outcome" => "shared").increment(shared_count);
    metrics::counter!(telemetry::STORE_SHARED_BATCHES, "outcome" => left_out)
        .increment(planned.len() as u64 - shared_count);
    let mut left = Vec::new();
    let mut messages = 0;
    for p in planned {
        let Planned { pending, fresh, out } = p;
        match stored.iter().find(|(name, _)| name == pending.room.as_str()) {
            Some(&(_, last)) => {
                messages += fresh.len() as u64;
                let _ = pending.done.send(Ok(answer(out, fresh.len(), last)));
            }
            // Left out (a client id stored before) or the statement failed.
            None => left.push(pending),
        }
    }
    analyzer.stored(messages);
    for pending in left {
        let result = append_alone(alone, &pending.room, &pending.batch).await;
        let _ = pending.done.send(result);
    }
}

/// A stored batch's answer, from the room's `last_seq` after its `count` fresh messages.
fn answer(mut out: Vec<Appended>, count: usize, last: Seq) -> Vec<Appended> {
    let base = last - Seq::try_from(count).unwrap_or(Seq::MAX);
    for a in &mut out {
        a.message.seq += base;
    }
    out
}

/// A batch with its seqs relative to the room's count of fresh messages.
struct Planned {
    pending: Pending,
    fresh: Vec<Message>,
    out: Vec<Appended>,
}

impl Planned {
    fn of(pending: Pending) -> Self {
        // Nothing stored is known yet: only copies within the batch are answered here (seq k
        // of the k-th fresh message, shifted below).
        let (fresh, out) = plan_batch(&pending.batch, &[], 1);
        Self { pending, fresh, out }
    }

    fn count(&self) -> Seq {
        Seq::try_from(self.fresh.len()).unwrap_or(Seq::MAX)
    }
}

/// Runs the statement; returns `(room, last_seq)` for each room stored (the rest were left out).
async fn together(pool: &PgPool, planned: &[Planned]) -> Result<Vec<(String, Seq)>, StoreError> {
    let c = Columns::of(planned);
    // Outside a transaction the statement commits before PostgreSQL reports it done: a
    // returned seq is a committed one.
    let rows: Vec<(String, Seq)> = bind(sqlx::query_as(STATEMENT), c).fetch_all(pool).await?;
    Ok(rows)
}

/// The shared statement (see [`together`]). `existing`: the rooms where a client id of the
/// statement is stored already, one index probe per client id (`messages_room_client_idx`:
/// `LIMIT` keeps the planner from turning the probes into a hash join over the whole table,
/// which it did when the plan was made while the table was small, and kept as it grew); `room`
/// bumps each other room's last_seq by its count, taking its row lock in name order; the other
/// parts store only what `room` kept.
macro_rules! shared_statement {
    () => {
        "WITH existing AS ( \
             SELECT c.room FROM UNNEST($1::text[], $2::text[]) AS c (room, client_id) \
             CROSS JOIN LATERAL ( \
                 SELECT 1 FROM messages m \
                 WHERE m.room = c.room AND m.client_id = c.client_id AND m.client_id IS NOT NULL LIMIT 1 \
             ) AS found \
         ), room AS ( \
             INSERT INTO rooms AS r (name, last_seq, created_at, message_count) \
             SELECT b.name, b.n, $3, b.messages FROM UNNEST($4::text[], $5::int8[], $6::int8[]) AS b (name, n, messages) \
             WHERE b.name NOT IN (SELECT room FROM existing) \
             ORDER BY b.name \
             ON CONFLICT (name) DO UPDATE SET last_seq = r.last_seq + excluded.last_seq, \
                 message_count = r.message_count + excluded.message_count \
             RETURNING r.name, r.last_seq \
         ), inserted AS ( \
             INSERT INTO messages \
                 (id, room, seq, sender_id, sender_email, sender_name, content, created_at, client_id, \
                  kind, target_id, mentions) \
             SELECT m.id, m.room, room.last_seq + m.rel, m.sender_id, m.sender_email, m.sender_name, m.content, \
                    m.created_at, m.client_id, m.kind, m.target_id, m.mentions \
             FROM UNNEST($7::text[], $8::int8[], $9::uuid[], $10::uuid[], $11::text[], $12::text[], $13::text[], \
                         $14::timestamptz[], $15::text[], $16::text[], $17::uuid[], $18::text[]) \
                 AS m (room, rel, id, sender_id, sender_email, sender_name, content, created_at, client_id, \
                       kind, target_id, mentions) \
             JOIN room ON room.name = m.room \
         ), mentioned AS ( \
             INSERT INTO mentions (room, user_id, seq) \
             SELECT x.room, x.user_id, room.last_seq + x.rel \
             FROM UNNEST($19::text[], $20::int8[], $21::uuid[]) AS x (room, rel, user_id) \
             JOIN room ON room.name = x.room \
             ON CONFLICT DO NOTHING \
         ) \
         SELECT name, last_seq FROM room"
    };
}
const STATEMENT: &str = shared_statement!();

/// `query` (of [`STATEMENT`]) with `c` bound to its parameters.
fn bind<'q, O>(query: PgQueryAs<'q, O>, c: Columns<'q>) -> PgQueryAs<'q, O> {
    let query = query
        .bind(c.client_rooms)
        .bind(c.client_ids_only)
        .bind(Utc::now())
        .bind(c.rooms)
        .bind(c.counts)
        .bind(c.message_counts)
        .bind(c.room)
        .bind(c.offset);
    c.rows.bind(query).bind(c.mention_room).bind(c.mention_offset).bind(c.mention_user)
}

/// PostgreSQL's plan for the shared statement over `rooms` rooms of a few messages with client
/// ids each (`EXPLAIN`, nothing runs): proof that its look-up uses the index.
pub(super) async fn explain(pool: &PgPool, rooms: usize) -> Result<Vec<String>, StoreError> {
    let mut planned = Vec::with_capacity(rooms);
    for r in 0..rooms {
        let room = RoomName::parse(&format!("explained{r}")).map_err(|e| StoreError::Open(e.to_string()))?;
        let batch = (0..4)
            .map(|i| NewMessage {
                id: uuid::Uuid::new_v4(),
                room: room.clone(),
                sender_id: crate::domain::UserId(uuid::Uuid::nil()),
                sender_email: String::new(),
                sender_name: String::new(),
                content: String::new(),
                client_id: Some(format!("c{i}")),
                created_at: Utc::now(),
                kind: MessageKind::Message,
                target_id: None,
                mentions: crate::domain::Mentions::default(),
            })
            .collect();
        planned.push(Planned::of(Pending { room, batch, done: oneshot::channel().0 }));
    }
    let rows: Vec<(String,)> =
        bind(sqlx::query_as(concat!("EXPLAIN ", shared_statement!())), Columns::of(&planned)).fetch_all(pool).await?;
    Ok(rows.into_iter().map(|(line,)| line).collect())
}

/// A statement's batches as the column arrays it unnests.
#[derive(Default)]
struct Columns<'a> {
    /// (room, client id) of every message with a client id: the look-up of earlier copies.
    client_rooms: Vec<&'a str>,
    client_ids_only: Vec<&'a str>,
    /// Per room: its name, its count of fresh messages, and of those the messages proper
    /// (as opposed to edits, deletions and reactions: what unread counts count).
    rooms: Vec<&'a str>,
    counts: Vec<Seq>,
    message_counts: Vec<i64>,
    /// Per fresh message.
    room: Vec<&'a str>,
    offset: Vec<Seq>,
    rows: MessageColumns<'a>,
    /// (room, offset, user): the message at offset mentions user (nil: everyone).
    mention_room: Vec<&'a str>,
    mention_offset: Vec<Seq>,
    mention_user: Vec<uuid::Uuid>,
}

impl<'a> Columns<'a> {
    fn of(planned: &'a [Planned]) -> Self {
        let mut c = Self::default();
        for p in planned {
            let room = p.pending.room.as_str();
            let count = p.count();
            let mut messages = 0;
            for m in &p.fresh {
                // The k-th fresh message has seq k (from 1) until shifted.
                let offset = m.seq - count;
                if let Some(cid) = m.client_id.as_deref() {
                    c.client_rooms.push(room);
                    c.client_ids_only.push(cid);
                }
                c.room.push(room);
                c.offset.push(offset);
                c.rows.push(m);
                for user in m.mentions.targets() {
                    c.mention_room.push(room);
                    c.mention_offset.push(offset);
                    c.mention_user.push(user);
                }
                if m.kind == MessageKind::Message {
                    messages += 1;
                }
            }
            c.rooms.push(room);
            c.counts.push(count);
            c.message_counts.push(messages);
        }
        c
    }
}
