//! What members do to a room's messages once sent: delete them, edit their own, and react to
//! them. (Reading history is `api::messages`; sending happens on the WebSocket.)

use chrono::Utc;
use poem::Request;
use poem_openapi::{
    Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use uuid::Uuid;

use super::{Removed, moderator_only, readable_room};
use crate::{
    domain::{Membership, Reaction, RoomName, User},
    http::{
        AppState,
        api::{ApiTags, admin::audit, security::BearerAuth},
        error::ApiError,
    },
    store::Reacted,
};

checked_string!(
    /// New message content: what `send_message` accepts.
    ContentInput,
    "string(content)",
    |schema| {
        schema.min_length = Some(1);
        schema.max_length = Some(crate::config::DEFAULT_MESSAGE_MAX_LEN);
        schema.pattern = Some("\\S".into());
    }
);

optional_text!(
    /// An idempotency key: 1 to 64 characters.
    ClientIdInput,
    64
);

/// A message's new content.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
struct EditBody {
    /// Trimmed; 1 to `chat.message_max_len` (2000 by default) characters, as for sending.
    content: ContentInput,
    /// Makes the edit idempotent: the same key again (from me, in this room) changes nothing
    /// more. Keys are shared with sends and deletions: use each once.
    client_id: ClientIdInput,
}

/// A client id as given, checked; an empty one is none.
fn client_id(raw: Option<String>) -> Result<Option<String>, ApiError> {
    raw.filter(|c| !c.is_empty())
        .map(|c| {
            crate::domain::ClientId::parse(&c)
                .map(|c| c.as_str().to_owned())
                .map_err(|_| ApiError::bad_request("clientId must be 1 to 64 characters", "invalid_payload"))
        })
        .transpose()
}

/// Whether `user` already made this change with this client id (true: answer as done, change
/// nothing); 409 when the key was used for something else.
async fn repeated(
    state: &AppState,
    name: &RoomName,
    user: &User,
    key: Option<&str>,
    kind: crate::domain::MessageKind,
    target: Uuid,
) -> Result<bool, ApiError> {
    let Some(key) = key else { return Ok(false) };
    match state.store.message_by_client_id(name, user.id, key).await? {
        None => Ok(false),
        Some(earlier) if earlier.kind == kind && earlier.target_id == Some(target) => Ok(true),
        Some(_) => Err(ApiError::conflict("this clientId was used for something else", "client_id_reused")),
    }
}

/// What a stored change came to: announced when new; a repeat of another kind of request with
/// the same client id is a conflict.
fn settle_change(
    state: &AppState,
    name: &RoomName,
    appended: &crate::store::Appended,
    kind: crate::domain::MessageKind,
    target: Uuid,
) -> Result<(), ApiError> {
    if appended.duplicate {
        if appended.message.kind != kind || appended.message.target_id != Some(target) {
            return Err(ApiError::conflict("this clientId was used for something else", "client_id_reused"));
        }
        return Ok(());
    }
    state.chat.announce_stored(name, &appended.message);
    Ok(())
}

checked_string!(
    /// A reaction: an emoji or a short code, 1 to 16 characters without spaces.
    ReactionInput,
    "string(reaction)",
    |schema| {
        schema.min_length = Some(1);
        schema.max_length = Some(crate::domain::Reaction::MAX_CHARS);
        schema.pattern = Some("^[^\\s\\u0000-\\u001f\\u007f]+$".into());
    }
);

/// A reaction to put on a message.
#[derive(Object)]
struct ReactionBody {
    /// An emoji (or a short code like `:tada:`): 1 to 16 visible characters, no spaces.
    emoji: ReactionInput,
}

pub struct RoomMessagesApi;

#[OpenApi(tag = "ApiTags::Chat")]
impl RoomMessagesApi {
    /// Delete a message.
    ///
    /// Its author deletes their own; owners and moderators (and administrators) any in their
    /// room. The deletion is an event of the room's seq stream (`message_deleted`), so every
    /// member sees it, and a client resuming with `since` too; history shows the message as a
    /// tombstone (`deletedAt`, empty content). 404 if there is no such message (or it is
    /// deleted already).
    #[oai(path = "/rooms/:room/messages/:message_id", method = "delete")]
    async fn delete_message(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// Room name.
        #[oai(validator(pattern = "^[A-Za-z0-9:_-]{1,64}$"))]
        room: Path<String>,
        /// The message's id.
        message_id: Path<Uuid>,
        /// Makes the deletion idempotent (1 to 64 characters): the same key again changes
        /// nothing more, even once the message is gone.
        #[oai(name = "clientId", validator(min_length = 1, max_length = 64))]
        client_id_param: Query<Option<String>>,
    ) -> Result<Removed, ApiError> {
        let (state, name, _) = readable_room(req, &auth.0, &room.0).await?;
        let key = client_id(client_id_param.0)?;
        if repeated(state, &name, &auth.0, key.as_deref(), crate::domain::MessageKind::Delete, message_id.0).await? {
            return Ok(Removed::Done);
        }
        let found = state.store.message_in_room(&name, message_id.0).await?;
        let Some(found) = found.filter(|m| m.deleted_at.is_none()) else {
            return Err(ApiError::not_found("no such message"));
        };
        let own = found.sender_id == auth.0.id.0;
        if !own {
            moderator_only(state, &name, &auth.0, "delete others' messages").await?;
        }
        state.chat.check_message_rate(auth.0.id, "delete_message").map_err(|_| ApiError::rate_limited(1))?;
        let stored = state.store.delete_message(&name, found.id, &auth.0, key).await?;
        let fresh = !stored.duplicate;
        settle_change(state, &name, &stored, crate::domain::MessageKind::Delete, found.id)?;
        if !own && fresh {
            audit(
                state,
                req,
                &auth.0,
                "message.delete",
                Some(found.sender_id.to_string()),
                Some(name.as_str()),
                Some(found.id.to_string()),
            )
            .await;
        }
        Ok(Removed::Done)
    }

    /// React to a message.
    ///
    /// Puts my reaction (an emoji, or a short code such as `:tada:`: 1 to 16 characters without
    /// spaces) on a message of a room I am a member of. The change is an event of the room's
    /// seq stream (`reaction`, with the new count), so every member sees it and a resume
    /// replays it; history shows each message's reactions with counts and whether I am among
    /// them. Reacting again with the same emoji changes nothing. Shares the message rate limit.
    /// 404 if there is no such message (or it was deleted), 409 `too_many_reactions` when the
    /// message already carries `chat.max_reactions_per_message` different ones.
    #[oai(path = "/rooms/:room/messages/:message_id/reactions", method = "post")]
    async fn react(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// Room name.
        #[oai(validator(pattern = "^[A-Za-z0-9:_-]{1,64}$"))]
        room: Path<String>,
        /// The message's id.
        message_id: Path<Uuid>,
        body: Json<ReactionBody>,
    ) -> Result<Removed, ApiError> {
        change_reaction(req, &auth.0, &room.0, message_id.0, &body.0.emoji.0, true).await
    }

    /// Take my reaction back.
    ///
    /// The emoji goes in the path, URL-encoded. An event of the stream like adding one; taking
    /// back a reaction I had not put changes nothing.
    #[oai(path = "/rooms/:room/messages/:message_id/reactions/:emoji", method = "delete")]
    async fn unreact(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// Room name.
        #[oai(validator(pattern = "^[A-Za-z0-9:_-]{1,64}$"))]
        room: Path<String>,
        /// The message's id.
        message_id: Path<Uuid>,
        /// The reaction, URL-encoded.
        #[oai(validator(min_length = 1, max_length = 16))]
        emoji: Path<String>,
    ) -> Result<Removed, ApiError> {
        change_reaction(req, &auth.0, &room.0, message_id.0, &emoji.0, false).await
    }

    /// Edit my message.
    ///
    /// Only its author edits a message. The edit is an event of the room's seq stream
    /// (`message_edited`, with the new content), so every member sees it, and a client
    /// resuming with `since` too; history shows the latest content with `editedAt`.
    /// 404 if there is no such message of mine (or it was deleted).
    #[oai(path = "/rooms/:room/messages/:message_id", method = "patch")]
    async fn edit_message(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// Room name.
        #[oai(validator(pattern = "^[A-Za-z0-9:_-]{1,64}$"))]
        room: Path<String>,
        /// The message's id.
        message_id: Path<Uuid>,
        body: Json<EditBody>,
    ) -> Result<Removed, ApiError> {
        let (state, name, _) = readable_room(req, &auth.0, &room.0).await?;
        let max = state.config.chat.message_max_len;
        let content = crate::domain::Content::parse(&body.0.content.0, max).map_err(|e| match e {
            crate::domain::InvalidContent::Empty => ApiError::bad_request(e.to_string(), "invalid_payload"),
            crate::domain::InvalidContent::TooLong { .. } => ApiError::bad_request(e.to_string(), "too_long"),
        })?;
        let key = client_id(body.0.client_id.0)?;
        if repeated(state, &name, &auth.0, key.as_deref(), crate::domain::MessageKind::Edit, message_id.0).await? {
            return Ok(Removed::Done);
        }
        let found = state.store.message_in_room(&name, message_id.0).await?;
        let Some(found) = found.filter(|m| m.deleted_at.is_none() && m.sender_id == auth.0.id.0) else {
            return Err(ApiError::not_found("no such message of yours"));
        };
        let window = state.config.chat.edit_window.0;
        if !window.is_zero() && chrono::Duration::from_std(window).is_ok_and(|w| found.created_at + w < Utc::now()) {
            let mins = window.as_secs().div_ceil(60);
            return Err(ApiError::forbidden_code(
                format!("messages can be edited for {mins} minute(s) after sending"),
                "edit_window_passed",
            ));
        }
        let muted =
            state.store.membership(&name, auth.0.id).await?.and_then(|m| m.muted_until).filter(|t| *t > Utc::now());
        if muted.is_some() {
            return Err(ApiError::forbidden("you are muted in this room"));
        }
        state.chat.check_message_rate(auth.0.id, "edit_message").map_err(|_| ApiError::rate_limited(1))?;
        let stored = state.store.edit_message(&name, found.id, &auth.0, content.into_string(), key).await?;
        settle_change(state, &name, &stored, crate::domain::MessageKind::Edit, found.id)?;
        Ok(Removed::Done)
    }
}

/// Puts (or takes back) `user`'s reaction `emoji` on message `id` of `room`, as a member who
/// may write there, and tells the room.
async fn change_reaction(
    req: &Request,
    user: &User,
    room: &str,
    id: Uuid,
    emoji: &str,
    add: bool,
) -> Result<Removed, ApiError> {
    let (state, name, _) = readable_room(req, user, room).await?;
    if state.store.message_in_room(&name, id).await?.is_none_or(|m| m.deleted_at.is_some()) {
        return Err(ApiError::not_found("no such message"));
    }
    let emoji = Reaction::parse(emoji).map_err(|e| ApiError::bad_request(e.to_string(), "invalid_reaction"))?;
    let membership = state.store.membership(&name, user.id).await?.filter(|m| m.banned_at.is_none());
    let Some(membership) = membership.or_else(|| user.is_admin.then_some(Membership::admin())) else {
        return Err(ApiError::forbidden("join the room before reacting in it"));
    };
    if let Some(until) = membership.muted_until.filter(|t| *t > Utc::now()) {
        return Err(ApiError::forbidden_code(
            format!("you are muted in this room until {}", until.to_rfc3339()),
            "muted",
        ));
    }
    state.chat.check_message_rate(user.id, "react").map_err(|_| ApiError::rate_limited(1))?;
    let max = state.config.chat.max_reactions_per_message;
    match state.store.react(&name, id, user, emoji.as_str(), add, max).await? {
        Reacted::NoMessage => Err(ApiError::not_found("no such message")),
        Reacted::TooMany => Err(ApiError::conflict(
            format!("a message carries at most {max} different reactions"),
            "too_many_reactions",
        )),
        Reacted::Unchanged => Ok(Removed::Done),
        Reacted::Done(event) => {
            state.chat.announce_stored(&name, &event);
            Ok(Removed::Done)
        }
    }
}
