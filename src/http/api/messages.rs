//! `GET /api/messages/{room}`: history.

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::{
    Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use uuid::Uuid;

use super::{ApiTags, security::BearerAuth};
use crate::{
    domain::{Message, RoomName, Seq},
    http::{AppState, error::ApiError},
};

/// A stored chat message.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct MessageView {
    id: Uuid,
    room: String,
    /// Position in the room's stream: increasing; the gaps are deletion events, which history
    /// leaves out (it shows the deleted message as a tombstone instead).
    seq: Seq,
    sender_id: Uuid,
    /// The sender's display name when they sent it (addresses are not shown to others).
    sender_name: String,
    content: String,
    created_at: DateTime<Utc>,
    /// The sender's idempotency key, if it gave one.
    #[oai(skip_serializing_if_is_none)]
    client_id: Option<String>,
    /// Set if the message was deleted: its content is then empty.
    #[oai(skip_serializing_if_is_none)]
    deleted_at: Option<DateTime<Utc>>,
    /// Set if the message was edited: `content` is its latest version.
    #[oai(skip_serializing_if_is_none)]
    edited_at: Option<DateTime<Utc>>,
    /// Members it mentions (by name, resolved when it was sent).
    #[oai(skip_serializing_if = "Vec::is_empty")]
    mentions: Vec<Uuid>,
    /// It mentions everyone (`@room` / `@here` from an owner or moderator).
    #[oai(skip_serializing_if = "std::ops::Not::not")]
    mentions_all: bool,
    /// Its reactions, in the order they were first used (absent: none).
    #[oai(skip_serializing_if = "Vec::is_empty")]
    reactions: Vec<ReactionView>,
}

/// One reaction on a message.
#[derive(Object, Clone)]
pub struct ReactionView {
    emoji: String,
    /// How many put it there.
    count: i64,
    /// Whether I am among them.
    me: bool,
}

impl From<Message> for MessageView {
    fn from(m: Message) -> Self {
        Self {
            id: m.id,
            room: m.room,
            seq: m.seq,
            sender_id: m.sender_id,
            sender_name: m.sender_name,
            content: m.content,
            created_at: m.created_at,
            client_id: m.client_id,
            deleted_at: m.deleted_at,
            edited_at: m.edited_at,
            mentions: m.mentions.users,
            mentions_all: m.mentions.all,
            reactions: Vec::new(),
        }
    }
}

/// A page of history, oldest first.
#[derive(Object)]
struct MessagesBody {
    messages: Vec<MessageView>,
}

pub struct MessagesApi;

#[OpenApi(tag = "ApiTags::Chat")]
impl MessagesApi {
    /// A room's message history.
    ///
    /// Returns the newest `limit` messages with `seq < before` (or the newest overall), oldest
    /// first. Page backwards by passing the smallest `seq` you have as `before`. A room that
    /// does not exist has no messages; a private room is readable by its members only (404).
    #[oai(path = "/messages/:room", method = "get")]
    async fn messages(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// Room name: 1 to 64 characters of `A-Z a-z 0-9 : _ -`.
        #[oai(validator(pattern = "^[A-Za-z0-9:_-]{1,64}$"))]
        room: Path<String>,
        /// How many messages, 1 to 200 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "200")))]
        limit: Query<Option<i64>>,
        /// Only messages with a smaller seq.
        #[oai(validator(minimum(value = "1")))]
        before: Query<Option<Seq>>,
    ) -> Result<Json<MessagesBody>, ApiError> {
        let state = req.data::<AppState>().ok_or_else(ApiError::internal)?;
        let room = RoomName::parse(&room.0).map_err(|e| ApiError::bad_request(e.to_string(), "invalid_room"))?;
        let limit = match limit.0 {
            None => 50,
            Some(n @ 1..=200) => u32::try_from(n).unwrap_or(50),
            Some(_) => return Err(ApiError::bad_request("limit must be between 1 and 200", "invalid_limit")),
        };
        if matches!(before.0, Some(b) if b < 1) {
            return Err(ApiError::bad_request("before must be a positive seq", "invalid_before"));
        }
        super::rooms::readable(state, &room, &auth.0).await?;
        let messages = state.store.messages_before(&room, before.0, limit).await?;
        let ids: Vec<Uuid> = messages.iter().filter(|m| m.deleted_at.is_none()).map(|m| m.id).collect();
        let reactions = state.store.reactions(&ids, auth.0.id).await?;
        let messages = messages
            .into_iter()
            .map(|m| {
                let id = m.id;
                let mut view = MessageView::from(m);
                view.reactions = reactions
                    .iter()
                    .filter(|r| r.message_id == id)
                    .map(|r| ReactionView { emoji: r.emoji.clone(), count: r.count, me: r.mine })
                    .collect();
                view
            })
            .collect();
        Ok(Json(MessagesBody { messages }))
    }
}
