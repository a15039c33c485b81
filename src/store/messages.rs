//! A room's seq stream: storing messages (group commit, idempotent by client id), history,
//! edits, deletions, reactions, and full-text search with its indexing.

use chrono::{SubsecRound as _, Utc};
use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::{
    Mentions, Message, MessageKind, NewMessage, ReactionCount, RoomName, SearchQuery, Seq, User, UserId,
};

/// The result of storing one message.
#[derive(Clone, Debug)]
pub struct Appended {
    pub message: Message,
    /// The `(sender, client_id)` pair was already stored: `message` is the earlier copy, and
    /// nothing new was written.
    pub duplicate: bool,
}

impl Store {
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

    /// How the search indexer reads a room's unindexed range: `EXPLAIN` output, for tests.
    pub async fn index_plan(&self) -> Result<Vec<String>, StoreError> {
        each_backend!(self, s => s.index_plan().await)
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
pub(super) fn plan_batch(batch: &[NewMessage], existing: &[Message], first_seq: Seq) -> (Vec<Message>, Vec<Appended>) {
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
