//! Durable state: users, refresh tokens, rooms and messages, on SQLite (the embedded default) or
//! PostgreSQL, chosen by the scheme of `database.url`.
//!
//! One enum, one method per query. The SQL both backends share is written once (see
//! [`sql`]); each backend adds only what its dialect does differently (connecting, storing
//! messages). Invariant kept here, not by callers: a room's seqs are 1, 2, 3… with no hole and no
//! duplicate, however many nodes write at once, and a `(room, sender, client_id)` is stored once.

#[macro_use]
mod sql;
mod postgres;
mod sqlite;

use chrono::{DateTime, SubsecRound as _, Utc};
use uuid::Uuid;

use crate::{
    config::DatabaseKind,
    domain::{
        AuditEntry, Ban, Credentials, DisplayName, Member, Membership, Mentions, Message, MessageKind, NewAudit,
        NewMessage, NewRoom, Peer, ReactionCount, ReadMarker, Role, Room, RoomListing, RoomName, RoomSummary,
        SearchQuery, Seq, User, UserId, direct_room_name,
    },
};
pub use postgres::PgStore;
pub use sqlite::{SqliteStore, sqlite_path};

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

/// The result of storing one message.
#[derive(Clone, Debug)]
pub struct Appended {
    pub message: Message,
    /// The `(sender, client_id)` pair was already stored: `message` is the earlier copy, and
    /// nothing new was written.
    pub duplicate: bool,
}

/// One node's open sessions, as it last published them (a JSON array of
/// [`LiveSession`](crate::chat::registry::LiveSession)).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct NodeSessions {
    pub node: String,
    pub seen_at: DateTime<Utc>,
    pub sessions: String,
}

/// What presenting a refresh token led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refreshed {
    /// The token was live; it is now spent and `new_hash` is stored in its family.
    Rotated { user_id: UserId },
    /// The token had already been spent: its whole family is now revoked.
    Reused,
    /// Unknown, expired or revoked.
    Invalid,
}

/// A refresh token to store (only its hash).
#[derive(Clone, Debug)]
pub struct NewRefreshToken {
    pub hash: String,
    pub user_id: UserId,
    pub family_id: Uuid,
    pub expires_at: DateTime<Utc>,
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

    /// Creates a user named after its address (see [`DisplayName::from_email`]); `Conflict` if
    /// the email is taken.
    pub async fn create_user(&self, email: &str, password_hash: &str) -> Result<User, StoreError> {
        let name = DisplayName::default_for(email);
        self.create_named_user(email, name.as_str(), password_hash).await
    }

    /// Creates a user with a display name; `Conflict` if the email is taken.
    pub async fn create_named_user(&self, email: &str, name: &str, password_hash: &str) -> Result<User, StoreError> {
        let id = UserId(Uuid::now_v7());
        // Microseconds: what PostgreSQL keeps, so the user returned is the user stored.
        each_backend!(self, s => s.create_user(id, email, name, password_hash, Utc::now().trunc_subsecs(6)).await)
    }

    /// Creates a user and spends invitation `code_hash` (see `auth::invite_hash`), both or
    /// neither. `Ok(None)`: no such live code. `Conflict` if the email is taken.
    pub async fn create_invited_user(
        &self,
        email: &str,
        name: &str,
        password_hash: &str,
        code_hash: &str,
    ) -> Result<Option<User>, StoreError> {
        let id = UserId(Uuid::now_v7());
        let now = Utc::now().trunc_subsecs(6);
        each_backend!(self, s => s.create_invited_user(id, email, name, password_hash, code_hash, now).await)
    }

    /// Stores a single-use invitation code (its hash), valid until `expires_at`.
    pub async fn insert_invite(
        &self,
        code_hash: &str,
        created_by: Option<UserId>,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        each_backend!(self, s => s.insert_invite(code_hash, created_by.map(|u| u.0), Utc::now(), expires_at).await)
    }

    /// Records an administrative or moderation action.
    pub async fn append_audit(&self, entry: &NewAudit) -> Result<(), StoreError> {
        each_backend!(self, s => s.append_audit(entry, Utc::now().trunc_subsecs(6)).await)
    }

    /// The newest `limit` audit entries older than entry `before` (all if None), newest first.
    pub async fn audit_log(&self, before: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        each_backend!(self, s => s.audit_log(before.unwrap_or(i64::MAX), i64::from(limit)).await)
    }

    /// Mutes a member of `room` until `until` (None: unmutes). False if not a member.
    pub async fn set_muted(
        &self,
        room: &RoomName,
        user: UserId,
        until: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        each_backend!(self, s => s.set_muted(room.as_str(), user.0, until).await)
    }

    /// Changes a room's title and/or topic (`Some(None)` clears one).
    pub async fn update_room(
        &self,
        room: &RoomName,
        title: Option<Option<&str>>,
        topic: Option<Option<&str>>,
    ) -> Result<(), StoreError> {
        each_backend!(self, s => s.update_room(room.as_str(), title, topic).await)
    }

    /// Archives a room (`Some(now)`) or brings it back (`None`).
    pub async fn set_archived(&self, room: &RoomName, archived: bool) -> Result<(), StoreError> {
        each_backend!(self, s => s.set_archived(room.as_str(), archived.then(Utc::now)).await)
    }

    /// The direct room of users `a` and `b` (the same for `b` and `a`), created with both as
    /// members if it does not exist yet.
    pub async fn open_direct(&self, a: UserId, b: UserId) -> Result<RoomName, StoreError> {
        let name = direct_room_name(a, b);
        each_backend!(self, s => s.open_direct(name.as_str(), a.0, b.0, Utc::now().trunc_subsecs(6)).await)?;
        Ok(name)
    }

    /// For each direct room `user` is in, who the other member is.
    pub async fn direct_peers(&self, user: UserId) -> Result<Vec<Peer>, StoreError> {
        each_backend!(self, s => s.direct_peers(user.0).await)
    }

    /// Replaces `node`'s published list of open sessions (JSON).
    pub async fn publish_sessions(&self, node: &str, sessions: &str) -> Result<(), StoreError> {
        each_backend!(self, s => s.publish_sessions(node, sessions, Utc::now()).await)
    }

    /// The session lists of nodes that published since `fresh_since`, by node.
    pub async fn node_sessions(&self, fresh_since: DateTime<Utc>) -> Result<Vec<NodeSessions>, StoreError> {
        each_backend!(self, s => s.node_sessions(fresh_since).await)
    }

    /// Removes `node`'s list (it is stopping).
    pub async fn forget_node_sessions(&self, node: &str) -> Result<(), StoreError> {
        each_backend!(self, s => s.forget_node_sessions(node).await)
    }

    /// How many (non-direct) rooms `user` created.
    pub async fn rooms_created_by(&self, user: UserId) -> Result<u64, StoreError> {
        let n = each_backend!(self, s => s.rooms_created_by(user.0).await)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Renames a user. False if there is no such user.
    pub async fn set_display_name(&self, user: UserId, name: &DisplayName) -> Result<bool, StoreError> {
        each_backend!(self, s => s.set_display_name(user.0, name.as_str()).await)
    }

    pub async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        each_backend!(self, s => s.user_by_id(id).await)
    }

    /// The users among `ids` that exist, in no particular order.
    pub async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<User>, StoreError> {
        each_backend!(self, s => s.users_by_ids(ids).await)
    }

    pub async fn credentials_by_email(&self, email: &str) -> Result<Option<Credentials>, StoreError> {
        each_backend!(self, s => s.credentials_by_email(email).await)
    }

    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        each_backend!(self, s => s.list_users().await)
    }

    /// Disables (or re-enables) an account; a disabled account's refresh tokens and sessions are
    /// revoked.
    /// Returns false when no such user exists.
    pub async fn set_user_disabled(&self, email: &str, disabled: bool) -> Result<bool, StoreError> {
        each_backend!(self, s => s.set_user_disabled(email, disabled, Utc::now()).await)
    }

    /// Signs a user out everywhere: refresh tokens revoked, and access tokens and live sessions
    /// refused from now on (they carry an older epoch). False if no such user.
    pub async fn revoke_sessions(&self, email: &str) -> Result<bool, StoreError> {
        each_backend!(self, s => s.revoke_sessions(email, Utc::now()).await)
    }

    /// Users whose sessions were revoked at or after `since_ms` (Unix milliseconds).
    pub async fn revoked_users_since(&self, since_ms: i64) -> Result<Vec<User>, StoreError> {
        each_backend!(self, s => s.revoked_users_since(since_ms).await)
    }

    /// Replaces a user's password hash and revokes their refresh tokens and sessions. False if
    /// no such user.
    pub async fn set_password_hash(&self, email: &str, password_hash: &str) -> Result<bool, StoreError> {
        each_backend!(self, s => s.set_password_hash(email, password_hash, Utc::now()).await)
    }

    pub async fn insert_refresh_token(&self, token: &NewRefreshToken) -> Result<(), StoreError> {
        each_backend!(self, s => s.insert_refresh_token(token, Utc::now()).await)
    }

    /// Spends the token hashed `old_hash` and stores `new` in its family, atomically: of two
    /// concurrent uses, one rotates and the other counts as reuse.
    pub async fn rotate_refresh_token(&self, old_hash: &str, new: &NewRefreshToken) -> Result<Refreshed, StoreError> {
        each_backend!(self, s => s.rotate_refresh_token(old_hash, new, Utc::now()).await)
    }

    /// Revokes the family of a live token (logout). False if the token is not live.
    pub async fn revoke_refresh_family(&self, hash: &str) -> Result<bool, StoreError> {
        each_backend!(self, s => s.revoke_refresh_family(hash, Utc::now()).await)
    }

    /// Stores messages of one room at its next seqs, in order, in one transaction (group
    /// commit). Messages whose `(sender, client_id)` is already stored in this room, or repeats earlier in
    /// `batch`, come back as duplicates of the first copy and take no seq.
    pub async fn append_messages(&self, room: &RoomName, batch: &[NewMessage]) -> Result<Vec<Appended>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        debug_assert!(batch.iter().all(|m| &m.room == room), "a batch is one room");
        // A concurrent writer (another node) may store the same (sender, client_id) between our
        // duplicate check and our insert; the unique index then refuses the whole batch and
        // the retry finds the winner's copy.
        match each_backend!(self, s => s.append_messages(room, batch).await) {
            Err(StoreError::Conflict) => each_backend!(self, s => s.append_messages(room, batch).await),
            other => other,
        }
    }

    /// Stores one message; see [`Store::append_messages`].
    pub async fn append_message(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        let room = msg.room.clone();
        let mut out = self.append_messages(&room, std::slice::from_ref(&msg)).await?;
        out.pop().ok_or_else(|| StoreError::Open("append returned nothing".into()))
    }

    /// The newest `limit` messages with `seq < before` (all if `before` is None), oldest first.
    pub async fn messages_before(
        &self,
        room: &RoomName,
        before: Option<Seq>,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let before = before.unwrap_or(Seq::MAX);
        each_backend!(self, s => s.messages_before(room.as_str(), before, i64::from(limit)).await)
    }

    /// Up to `limit` messages with `seq > after`, oldest first (resume and gap repair).
    pub async fn messages_after(&self, room: &RoomName, after: Seq, limit: u32) -> Result<Vec<Message>, StoreError> {
        each_backend!(self, s => s.messages_after(room.as_str(), after, i64::from(limit)).await)
    }

    /// What `sender` stored in `room` under `client_id` (a message, edit or deletion), if anything.
    pub async fn message_by_client_id(
        &self,
        room: &RoomName,
        sender: UserId,
        client_id: &str,
    ) -> Result<Option<Message>, StoreError> {
        each_backend!(self, s => s.message_by_client_id(room.as_str(), sender.0, client_id).await)
    }

    /// Message `id` of `room`, if there is one (deletion events are not messages).
    pub async fn message_in_room(&self, room: &RoomName, id: Uuid) -> Result<Option<Message>, StoreError> {
        each_backend!(self, s => s.message_in_room(room.as_str(), id).await)
    }

    /// Deletes message `target` of `room` on behalf of `by`: the deletion takes the room's next
    /// seq (an event every member and every resume sees) and the message keeps its seq but
    /// loses its content. Returns the deletion event.
    /// With `client_id`, a repeat of the same request (`by`, room, client id) is answered with the
    /// first one's event, marked `duplicate`, and changes nothing.
    pub async fn delete_message(
        &self,
        room: &RoomName,
        target: Uuid,
        by: &User,
        client_id: Option<String>,
    ) -> Result<Appended, StoreError> {
        self.change_message(room, target, by, MessageKind::Delete, String::new(), client_id).await
    }

    /// Replaces the content of message `target` of `room` (by its author `by`): the edit takes
    /// the room's next seq, the message keeps its seq with the new content and `edited_at`.
    /// Returns the edit event; idempotent with `client_id` as [`Store::delete_message`].
    pub async fn edit_message(
        &self,
        room: &RoomName,
        target: Uuid,
        by: &User,
        content: String,
        client_id: Option<String>,
    ) -> Result<Appended, StoreError> {
        self.change_message(room, target, by, MessageKind::Edit, content, client_id).await
    }

    async fn change_message(
        &self,
        room: &RoomName,
        target: Uuid,
        by: &User,
        kind: MessageKind,
        content: String,
        client_id: Option<String>,
    ) -> Result<Appended, StoreError> {
        let event = NewMessage {
            id: Uuid::now_v7(),
            room: room.clone(),
            sender_id: by.id,
            sender_email: by.email.clone(),
            sender_name: by.display_name.clone(),
            content,
            client_id,
            created_at: Utc::now().trunc_subsecs(6),
            kind,
            target_id: Some(target),
            mentions: Mentions::default(),
        };
        self.append_message(event).await
    }

    /// Puts reaction `emoji` on message `target` of `room` for `by` (or takes it back): the
    /// change takes the room's next seq (an event every member and every resume sees) unless
    /// there was nothing to change. A message has at most `max_distinct` different reactions.
    pub async fn react(
        &self,
        room: &RoomName,
        target: Uuid,
        by: &User,
        emoji: &str,
        add: bool,
        max_distinct: u32,
    ) -> Result<Reacted, StoreError> {
        let event = NewMessage {
            id: Uuid::now_v7(),
            room: room.clone(),
            sender_id: by.id,
            sender_email: by.email.clone(),
            sender_name: by.display_name.clone(),
            content: emoji.to_owned(),
            client_id: None,
            created_at: Utc::now().trunc_subsecs(6),
            kind: if add { MessageKind::React } else { MessageKind::Unreact },
            target_id: Some(target),
            mentions: Mentions::default(),
        };
        each_backend!(self, s => s.react(&event, i64::from(max_distinct)).await)
    }

    /// The reactions on `messages`, for history: per message, each emoji with its count and
    /// whether `me` is among them, in the order they were first used.
    pub async fn reactions(&self, messages: &[Uuid], me: UserId) -> Result<Vec<ReactionCount>, StoreError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        each_backend!(self, s => s.reactions(messages, me.0).await)
    }

    /// The room's latest seq (0 for a room without messages).
    pub async fn last_seq(&self, room: &RoomName) -> Result<Seq, StoreError> {
        each_backend!(self, s => s.last_seq(room.as_str()).await)
    }

    /// Rooms with at least one message, by name.
    pub async fn list_rooms(&self) -> Result<Vec<RoomSummary>, StoreError> {
        each_backend!(self, s => s.list_rooms().await)
    }

    /// Creates `room`, with `owner` (if any) as its owner. False if the name is taken.
    pub async fn create_room(&self, room: &NewRoom, owner: Option<UserId>) -> Result<bool, StoreError> {
        each_backend!(self, s => s.create_room(room, owner, Utc::now()).await)
    }

    pub async fn room(&self, name: &RoomName) -> Result<Option<Room>, StoreError> {
        each_backend!(self, s => s.room(name.as_str()).await)
    }

    /// Public rooms and the rooms `user` is a member of, without archived rooms and rooms
    /// `user` is banned from.
    pub async fn rooms_for(&self, user: UserId) -> Result<Vec<RoomListing>, StoreError> {
        each_backend!(self, s => s.rooms_for(user.0).await)
    }

    pub async fn membership(&self, room: &RoomName, user: UserId) -> Result<Option<Membership>, StoreError> {
        each_backend!(self, s => s.membership(room.as_str(), user.0).await)
    }

    /// Makes `user` a member with `role` unless they already have a standing in the room
    /// (a role, or a ban). True if they were added.
    pub async fn add_member(&self, room: &RoomName, user: UserId, role: Role) -> Result<bool, StoreError> {
        each_backend!(self, s => s.add_member(room.as_str(), user.0, role.as_str(), Utc::now()).await)
    }

    /// Moves `user`'s read marker in `room` forward to `seq`, clamped to the room's latest seq;
    /// a marker never moves back. Returns where it stands and how many messages come after it,
    /// or `None` when `user` is not a member (or is banned).
    pub async fn mark_read(&self, room: &RoomName, user: UserId, seq: Seq) -> Result<Option<ReadMarker>, StoreError> {
        // A concurrent move of the same marker won the race: look again from where it is now.
        for _ in 0..3 {
            match each_backend!(self, s => s.mark_read(room.as_str(), user.0, seq).await) {
                Err(StoreError::Conflict) => {}
                other => return other,
            }
        }
        each_backend!(self, s => s.mark_read(room.as_str(), user.0, seq).await)
    }

    /// Mentions of `user` (by name, or of everyone) in `room` after seq `after`.
    pub async fn unread_mentions(&self, room: &RoomName, user: UserId, after: Seq) -> Result<i64, StoreError> {
        each_backend!(self, s => s.unread_mentions(room.as_str(), user.0, after).await)
    }

    /// Ends `user`'s membership (a ban stays). True if they were a member.
    pub async fn remove_member(&self, room: &RoomName, user: UserId) -> Result<bool, StoreError> {
        each_backend!(self, s => s.remove_member(room.as_str(), user.0).await)
    }

    /// Grants (or takes) server administration. False if there is no user with `email`.
    pub async fn set_admin(&self, email: &str, admin: bool) -> Result<bool, StoreError> {
        each_backend!(self, s => s.set_admin(email, admin).await)
    }

    /// Bans `user` from `room`, whether or not a member: a member loses their role.
    pub async fn ban_member(&self, room: &RoomName, user: UserId) -> Result<(), StoreError> {
        each_backend!(self, s => s.ban_member(room.as_str(), user.0, Utc::now()).await)
    }

    /// Lifts `user`'s ban from `room`; false if they were not banned.
    pub async fn unban_member(&self, room: &RoomName, user: UserId) -> Result<bool, StoreError> {
        each_backend!(self, s => s.unban_member(room.as_str(), user.0).await)
    }

    /// Who is banned from `room`, earliest first, at most `limit`.
    pub async fn bans(&self, room: &RoomName, limit: u32) -> Result<Vec<Ban>, StoreError> {
        each_backend!(self, s => s.bans(room.as_str(), i64::from(limit)).await)
    }

    /// The room's members (not the banned), oldest first, at most `limit`.
    pub async fn members(&self, room: &RoomName, limit: u32) -> Result<Vec<Member>, StoreError> {
        each_backend!(self, s => s.members(room.as_str(), i64::from(limit)).await)
    }

    /// Messages (not deleted) containing every word of `query`, in the rooms `scope.user` may
    /// read, newest first.
    pub async fn search(&self, query: &SearchQuery, scope: &SearchScope) -> Result<Vec<Message>, StoreError> {
        each_backend!(self, s => s.search(query, scope).await)
    }

    /// Indexes for search the next messages of `room` that are not yet, up to `max` seqs of
    /// its stream in one transaction.
    pub async fn index_room(&self, room: &RoomName, max: Seq) -> Result<IndexStep, StoreError> {
        each_backend!(self, s => s.index_room(room, max).await)
    }

    /// Rooms whose newest messages are not yet indexed for search, at most `limit`.
    pub async fn rooms_behind_index(&self, limit: u32) -> Result<Vec<RoomName>, StoreError> {
        let names = each_backend!(self, s => s.rooms_behind_index(i64::from(limit)).await)?;
        Ok(names.iter().filter_map(|n| RoomName::parse(n).ok()).collect())
    }

    /// The database's plan for the send path's duplicate look-up, one line per step, as its
    /// `EXPLAIN` prints it: for tests and diagnostics.
    pub async fn dedupe_plan(&self) -> Result<Vec<String>, StoreError> {
        each_backend!(self, s => s.dedupe_plan().await)
    }
}

/// What a reaction change came to.
#[derive(Clone, Debug)]
pub enum Reacted {
    /// No such message in the room (or it is deleted).
    NoMessage,
    /// Already so: nothing stored, no event.
    Unchanged,
    /// The message has as many different reactions as it may.
    TooMany,
    /// Stored: the event, with its seq.
    Done(Box<Message>),
}

/// What one step of search indexing did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexStep {
    /// Indexed this many messages (edits, deletions and reactions in the range need none); the
    /// room may have more.
    Indexed(u64),
    /// The room's index is up to date.
    UpToDate,
    /// Another node is indexing the room right now.
    Busy,
}

/// Where a search looks, for whom, and which page.
#[derive(Clone, Debug)]
pub struct SearchScope {
    pub user: UserId,
    /// Administrators search every room.
    pub admin: bool,
    pub room: Option<RoomName>,
    /// Only messages older than this one (the last of the previous page).
    pub before: Option<Uuid>,
    pub limit: u32,
}

/// Assigns seqs `first_seq..` to the messages of `batch` that are not yet stored, in order.
/// Returns the rows to insert and what each input became. Shared by both backends: `existing`
/// holds the stored copies of any `(sender, client_id)` pairs in the batch.
fn plan_batch(batch: &[NewMessage], existing: &[Message], first_seq: Seq) -> (Vec<Message>, Vec<Appended>) {
    let mut fresh: Vec<Message> = Vec::with_capacity(batch.len());
    let mut out = Vec::with_capacity(batch.len());
    for m in batch {
        let earlier = m.client_id.as_deref().and_then(|cid| {
            let same = |e: &&Message| e.sender_id == m.sender_id.0 && e.client_id.as_deref() == Some(cid);
            existing.iter().find(same).or_else(|| fresh.iter().find(same))
        });
        if let Some(earlier) = earlier {
            out.push(Appended { message: earlier.clone(), duplicate: true });
            continue;
        }
        let stored = Message {
            id: m.id,
            room: m.room.as_str().to_owned(),
            seq: first_seq + Seq::try_from(fresh.len()).unwrap_or(Seq::MAX),
            sender_id: m.sender_id.0,
            sender_email: m.sender_email.clone(),
            sender_name: m.sender_name.clone(),
            content: m.content.clone(),
            // Microseconds, as stored: an ack and a later read of history must agree.
            created_at: m.created_at.trunc_subsecs(6),
            client_id: m.client_id.clone(),
            kind: m.kind,
            target_id: m.target_id,
            deleted_at: None,
            edited_at: None,
            tally: None,
            mentions: m.mentions.clone(),
        };
        out.push(Appended { message: stored.clone(), duplicate: false });
        fresh.push(stored);
    }
    (fresh, out)
}
