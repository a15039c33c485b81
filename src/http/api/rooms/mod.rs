//! `/api/rooms`: rooms as entities (public and private), their members, and what members do to
//! a room's messages. One file per role:
//!
//! - `manage`: listing, creating, describing, changing and archiving rooms; read markers;
//!   direct rooms.
//! - `members`: the member list, adding members, leaving and kicking.
//! - `moderation`: mutes and bans.
//! - `messages`: deleting, editing and reacting to a room's messages (history is in
//!   `api::messages`, sending on the WebSocket).
//!
//! This file holds what they share: the room views, and who may read or moderate a room.

mod manage;
mod members;
mod messages;
mod moderation;

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::{ApiResponse, Enum, Object};
use uuid::Uuid;

use crate::{
    domain::{ReadMarker, Role, Room, RoomKind, RoomName, Seq, User, UserId},
    http::{AppState, error::ApiError},
};

/// The room endpoints, one type per role (poem-openapi wants one `impl` per type), listed in
/// the order their paths had in `/api/openapi.json` when they were one type, so that the
/// document is unchanged. A path's operations must stay together in one type.
pub type Api = (
    manage::RoomsApi,
    moderation::MutesApi,
    messages::RoomMessagesApi,
    manage::DirectApi,
    members::MembersApi,
    moderation::BansApi,
);

/// The value of [`Api`], for the OpenAPI service.
pub const API: Api = (
    manage::RoomsApi,
    moderation::MutesApi,
    messages::RoomMessagesApi,
    manage::DirectApi,
    members::MembersApi,
    moderation::BansApi,
);

/// Most members a member list returns.
const MEMBERS_LIMIT: u32 = 1000;

/// Who may find and join a room.
#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
enum KindView {
    /// Listed to everyone; anyone may join.
    Public,
    /// Listed to and joined by its members only; members are invited.
    Private,
    /// Two users' conversation.
    Direct,
}

impl From<RoomKind> for KindView {
    fn from(k: RoomKind) -> Self {
        match k {
            RoomKind::Public => Self::Public,
            RoomKind::Private => Self::Private,
            RoomKind::Direct => Self::Direct,
        }
    }
}

/// A member's role in a room.
#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
enum RoleView {
    Member,
    /// Deletes any message, kicks, bans and mutes members.
    Moderator,
    /// Created the room; a moderator who also manages it.
    Owner,
}

impl From<Role> for RoleView {
    fn from(r: Role) -> Self {
        match r {
            Role::Member => Self::Member,
            Role::Moderator => Self::Moderator,
            Role::Owner => Self::Owner,
        }
    }
}

/// A room.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
struct RoomView {
    name: String,
    kind: KindView,
    /// Shown instead of the name when set.
    #[oai(skip_serializing_if_is_none)]
    title: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    topic: Option<String>,
    created_at: DateTime<Utc>,
    /// Seq of the room's latest message (0: none yet).
    last_seq: Seq,
    /// Members currently joined, on every node (other nodes' counts refresh every few seconds).
    members: u64,
    /// My role, if I am a member.
    #[oai(skip_serializing_if_is_none)]
    role: Option<RoleView>,
    /// For a member: the seq up to which I have read (`mark_read`).
    #[oai(skip_serializing_if_is_none)]
    last_read_seq: Option<Seq>,
    /// For a member: how many messages came after my read marker (mine included until I
    /// mark them read; edits, deletions and reactions are not counted).
    #[oai(skip_serializing_if_is_none)]
    unread: Option<i64>,
    /// For a member: how many of those mention me (by name, or `@room` / `@here`).
    #[oai(skip_serializing_if_is_none)]
    mentions: Option<i64>,
    /// Set when the room is archived: readable, but nobody joins or writes.
    #[oai(skip_serializing_if_is_none)]
    archived_at: Option<DateTime<Utc>>,
    /// For a direct room: the other person.
    #[oai(skip_serializing_if_is_none)]
    peer: Option<PeerView>,
}

/// The other member of a direct room.
#[derive(Object, Clone)]
#[oai(rename_all = "camelCase")]
struct PeerView {
    user_id: Uuid,
    display_name: String,
}

impl RoomView {
    fn new(room: Room, members: u64, role: Option<Role>) -> Self {
        Self {
            name: room.name,
            kind: room.kind.into(),
            title: room.title,
            topic: room.topic,
            created_at: room.created_at,
            last_seq: room.last_seq,
            members,
            role: role.map(Into::into),
            last_read_seq: None,
            unread: None,
            mentions: None,
            archived_at: room.archived_at,
            peer: None,
        }
    }

    /// With my read marker and the messages after it (I am a member).
    fn read_upto(self, marker: Option<ReadMarker>) -> Self {
        Self {
            last_read_seq: marker.map(|m| m.last_read_seq),
            unread: marker.map(|m| m.unread),
            mentions: marker.map(|m| m.mentions),
            ..self
        }
    }
}

/// Whom to add to the room.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
struct InviteBody {
    user_id: Uuid,
}

#[derive(ApiResponse)]
enum Removed {
    /// Done: no longer a member, banned, or unbanned.
    #[oai(status = 204)]
    Done,
}

/// The room, if `user` may read it: a public room, one `user` is a member of and not banned
/// from, or any room for an administrator. `None`: no such room (which has no messages). A
/// private room is hidden from others (404), as is every room from those banned from it.
pub async fn readable(state: &AppState, name: &RoomName, user: &User) -> Result<Option<Room>, ApiError> {
    let Some(room) = state.store.room(name).await? else { return Ok(None) };
    if user.is_admin {
        return Ok(Some(room));
    }
    let membership = state.store.membership(name, user.id).await?;
    match membership {
        Some(m) if m.banned_at.is_some() => Err(ApiError::not_found("no such room")),
        Some(_) => Ok(Some(room)),
        None if room.kind == RoomKind::Public => Ok(Some(room)),
        None => Err(ApiError::not_found("no such room")),
    }
}

/// What `user` may do in `room`: their role there, or an owner's for an administrator.
async fn power(state: &AppState, name: &RoomName, user: &User) -> Result<Option<Role>, ApiError> {
    if user.is_admin {
        return Ok(Some(Role::Owner));
    }
    Ok(state.store.membership(name, user.id).await?.filter(|m| m.banned_at.is_none()).map(|m| m.role))
}

/// Refuses unless `user` moderates `room` and outranks `target` (who may be no member at all).
async fn may_moderate(state: &AppState, name: &RoomName, user: &User, target: UserId) -> Result<(), ApiError> {
    let mine = power(state, name, user).await?;
    let theirs = state.store.membership(name, target).await?.filter(|m| m.banned_at.is_none()).map(|m| m.role);
    if mine < Some(Role::Moderator) || theirs >= mine {
        return Err(ApiError::forbidden("only owners and moderators do this, to members of a lower role"));
    }
    Ok(())
}

/// A user named in a request body does not exist: 409, not 404, which would say the room
/// (the path's resource) is missing.
fn unknown_user() -> ApiError {
    ApiError::conflict("no such user", "unknown_user")
}

fn room_name(raw: &str) -> Result<RoomName, ApiError> {
    RoomName::parse(raw).map_err(|e| ApiError::bad_request(e.to_string(), "invalid_room"))
}

/// The room, if `user` may read it, or 404.
async fn readable_or_404(state: &AppState, name: &RoomName, user: &User) -> Result<Room, ApiError> {
    readable(state, name, user).await?.ok_or_else(|| ApiError::not_found("no such room"))
}

/// The state, the parsed name and the room behind a request on `/rooms/{room}…`, if `user` may
/// read it (404 otherwise).
async fn readable_room<'a>(
    req: &'a Request,
    user: &User,
    room: &str,
) -> Result<(&'a AppState, RoomName, Room), ApiError> {
    let state = req.data::<AppState>().ok_or_else(ApiError::internal)?;
    let name = room_name(room)?;
    let found = readable_or_404(state, &name, user).await?;
    Ok((state, name, found))
}

/// Refuses unless `user` is (at least) a moderator of `room`, or an administrator.
async fn moderator_only(state: &AppState, name: &RoomName, user: &User, what: &str) -> Result<(), ApiError> {
    if power(state, name, user).await? < Some(Role::Moderator) {
        return Err(ApiError::forbidden(format!("only owners and moderators {what}")));
    }
    Ok(())
}
