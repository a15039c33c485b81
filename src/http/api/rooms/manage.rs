//! Rooms themselves: listing, creating, describing, changing and archiving them, my read
//! marker in one, and opening a direct room with someone.

use poem::Request;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, param::Path, payload::Json};
use uuid::Uuid;

use super::{PeerView, Removed, RoomView, moderator_only, power, readable_or_404, readable_room, room_name};
use crate::{
    chat::ChatError,
    domain::{DIRECT_PREFIX, NewRoom, ReadMarker, Role, Room, RoomKind, RoomName, Seq, User, UserId},
    http::{
        AppState,
        api::{ApiTags, admin::audit, security::BearerAuth},
        error::ApiError,
    },
};

/// Longest title and topic, in characters.
const TITLE_MAX: usize = 100;
const TOPIC_MAX: usize = 500;

/// Where to move my read marker.
#[derive(Object)]
struct ReadBody {
    /// The seq of the last event I have seen; a marker never moves back, and stops at the
    /// room's latest seq.
    #[oai(validator(minimum(value = "0")))]
    seq: Seq,
}

/// My read marker in a room.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
struct ReadView {
    room: String,
    last_read_seq: Seq,
    /// Messages after my marker.
    unread: i64,
    /// Of those, the ones that mention me.
    mentions: i64,
}

#[derive(Object)]
struct RoomsBody {
    rooms: Vec<RoomView>,
}

/// The kinds of room `POST /api/rooms` makes.
#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
enum NewKind {
    /// Listed to everyone; anyone may join.
    Public,
    /// Listed to and joined by its members only; members are invited.
    Private,
}

checked_string!(
    /// A new room's name: 1 to 64 characters of `A-Z a-z 0-9 : _ -`.
    RoomNameInput,
    "string(room)",
    |schema| {
        schema.pattern = Some("^[A-Za-z0-9:_-]{1,64}$".into());
        schema.min_length = Some(1);
        schema.max_length = Some(RoomName::MAX_LEN);
    }
);

optional_text!(
    /// A room's title: at most 100 characters.
    TitleInput,
    TITLE_MAX
);

optional_text!(
    /// A room's topic: at most 500 characters.
    TopicInput,
    TOPIC_MAX
);

/// A room to create. I become its owner.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
struct CreateRoomBody {
    /// 1 to 64 characters of `A-Z a-z 0-9 : _ -`.
    name: RoomNameInput,
    /// `public` (default) or `private`.
    #[oai(nullable)]
    kind: Option<NewKind>,
    /// At most 100 characters; shown instead of the name.
    title: TitleInput,
    /// At most 500 characters.
    topic: TopicInput,
}

#[derive(ApiResponse)]
enum Created {
    /// The room, with me as its owner.
    #[oai(status = 201)]
    Room(Json<RoomView>),
}

/// What to change about a room; absent fields stay as they are, an empty string clears.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
struct RoomPatch {
    /// At most 100 characters.
    title: TitleInput,
    /// At most 500 characters.
    topic: TopicInput,
}

/// Display text as stored: at most `max` characters as sent; control and invisible
/// characters (which could make one title look like another) dropped; trimmed; empty meaning
/// none.
fn bounded(text: Option<String>, max: usize, what: &str) -> Result<Option<String>, ApiError> {
    if text.as_ref().is_some_and(|t| t.chars().count() > max) {
        return Err(ApiError::bad_request(format!("{what} is at most {max} characters"), "invalid_payload"));
    }
    Ok(text
        .map(|t| t.chars().filter(|c| !c.is_control() && !crate::domain::is_invisible(*c)).collect::<String>())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty()))
}

pub struct RoomsApi;

#[OpenApi(tag = "ApiTags::Chat")]
impl RoomsApi {
    /// Rooms I can see.
    ///
    /// Every public room and every room I am a member of (archived rooms left out), with the
    /// latest seq, the members joined right now and my role.
    #[oai(path = "/rooms", method = "get")]
    async fn rooms(&self, req: &Request, auth: BearerAuth) -> Result<Json<RoomsBody>, ApiError> {
        let state = req.data::<AppState>().ok_or_else(ApiError::internal)?;
        let rooms = state.store.rooms_for(auth.0.id).await?;
        let names: Vec<String> = rooms.iter().map(|r| r.room.name.clone()).collect();
        let members = state.chat.member_counts(&names).await;
        let peers = if rooms.iter().any(|r| r.room.kind == RoomKind::Direct) {
            state.store.direct_peers(auth.0.id).await?
        } else {
            Vec::new()
        };
        let rooms = rooms
            .into_iter()
            .zip(members)
            .map(|(r, members)| {
                let role = r.role.clone().and_then(|role| Role::try_from(role).ok());
                let peer = peers
                    .iter()
                    .find(|p| p.room == r.room.name)
                    .map(|p| PeerView { user_id: p.user_id, display_name: p.display_name.clone() });
                let read = match (role, r.last_read_seq, r.unread()) {
                    (Some(_), Some(last_read_seq), Some(unread)) => {
                        Some(ReadMarker { last_read_seq, unread, mentions: r.unread_mentions })
                    }
                    _ => None,
                };
                RoomView { peer, ..RoomView::new(r.room, members, role).read_upto(read) }
            })
            .collect();
        Ok(Json(RoomsBody { rooms }))
    }

    /// Create a room.
    ///
    /// Public rooms are listed to everyone and anyone may join them; private rooms only to
    /// their members, who are invited. 409 `room_exists` if the name is taken, `name_reserved`
    /// for names starting `dm:` (direct rooms').
    #[oai(path = "/rooms", method = "post")]
    async fn create(&self, req: &Request, auth: BearerAuth, body: Json<CreateRoomBody>) -> Result<Created, ApiError> {
        let state = req.data::<AppState>().ok_or_else(ApiError::internal)?;
        let body = body.0;
        let kind = match body.kind.unwrap_or(NewKind::Public) {
            NewKind::Public => RoomKind::Public,
            NewKind::Private => RoomKind::Private,
        };
        if body.name.0.starts_with(DIRECT_PREFIX) {
            return Err(ApiError::conflict("names starting dm: are kept for direct rooms", "name_reserved"));
        }
        let new = NewRoom {
            name: room_name(&body.name.0)?,
            kind,
            title: bounded(body.title.0, TITLE_MAX, "title")?,
            topic: bounded(body.topic.0, TOPIC_MAX, "topic")?,
            created_by: auth.0.id,
        };
        let max = state.config.rooms.max_created_per_user;
        if max > 0 && state.store.rooms_created_by(auth.0.id).await? >= u64::from(max) {
            metrics::counter!(crate::telemetry::ROOMS_REFUSED, "reason" => "too_many_rooms").increment(1);
            return Err(ApiError::forbidden_code(
                format!("you have created {max} rooms, the most this server allows; archive or reuse one"),
                "too_many_rooms",
            ));
        }
        if !state.store.create_room(&new, Some(auth.0.id)).await? {
            return Err(ApiError::conflict("a room with this name exists", "room_exists"));
        }
        let room = state.store.room(&new.name).await?.ok_or_else(ApiError::internal)?;
        Ok(Created::Room(Json(RoomView::new(room, 0, Some(Role::Owner)))))
    }

    /// One room.
    #[oai(path = "/rooms/:room", method = "get")]
    async fn describe(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// Room name.
        #[oai(validator(pattern = "^[A-Za-z0-9:_-]{1,64}$"))]
        room: Path<String>,
    ) -> Result<Json<RoomView>, ApiError> {
        let (state, _, found) = readable_room(req, &auth.0, &room.0).await?;
        Ok(Json(describe(state, found, &auth.0).await?))
    }

    /// Change a room's title or topic (owners and moderators).
    #[oai(path = "/rooms/:room", method = "patch")]
    async fn update(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// Room name.
        #[oai(validator(pattern = "^[A-Za-z0-9:_-]{1,64}$"))]
        room: Path<String>,
        body: Json<RoomPatch>,
    ) -> Result<Json<RoomView>, ApiError> {
        let (state, name, _) = readable_room(req, &auth.0, &room.0).await?;
        moderator_only(state, &name, &auth.0, "change a room").await?;
        let body = body.0;
        // Present and empty clears; absent leaves alone.
        let title = body.title.0.map(|t| bounded(Some(t), TITLE_MAX, "title")).transpose()?;
        let topic = body.topic.0.map(|t| bounded(Some(t), TOPIC_MAX, "topic")).transpose()?;
        state
            .store
            .update_room(&name, title.as_ref().map(Option::as_deref), topic.as_ref().map(Option::as_deref))
            .await?;
        let detail = [title.as_ref().map(|_| "title"), topic.as_ref().map(|_| "topic")].into_iter().flatten();
        audit(
            state,
            req,
            &auth.0,
            "room.update",
            None,
            Some(name.as_str()),
            Some(detail.collect::<Vec<_>>().join(",")),
        )
        .await;
        let found = readable_or_404(state, &name, &auth.0).await?;
        Ok(Json(describe(state, found, &auth.0).await?))
    }

    /// Mark a room read up to a seq.
    ///
    /// Moves my read marker forward (never back; at most to the room's latest seq), as the
    /// WebSocket command `mark_read` does, and tells my other sessions on every node (event
    /// `read`). Members only (403 otherwise).
    #[oai(path = "/rooms/:room/read", method = "put")]
    async fn mark_read(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// Room name.
        #[oai(validator(pattern = "^[A-Za-z0-9:_-]{1,64}$"))]
        room: Path<String>,
        body: Json<ReadBody>,
    ) -> Result<Json<ReadView>, ApiError> {
        let (state, name, _) = readable_room(req, &auth.0, &room.0).await?;
        let (_, marked) = state.chat.mark_read(auth.0.id, 0, name.as_str(), body.0.seq).await.map_err(|e| match e {
            ChatError::Forbidden(why) => ApiError::forbidden(why),
            ChatError::RateLimited(_) => ApiError::rate_limited(1),
            ChatError::Store(e) => e.into(),
            other => ApiError::bad_request(other.to_string(), other.code()),
        })?;
        Ok(Json(ReadView {
            room: name.to_string(),
            last_read_seq: marked.last_read_seq,
            unread: marked.unread,
            mentions: marked.mentions,
        }))
    }

    /// Archive a room (owners): it stays readable, but nobody joins or writes in it any more,
    /// and everyone in it now leaves it (event `removed` with reason `archived`).
    #[oai(path = "/rooms/:room/archive", method = "post")]
    async fn archive(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// Room name.
        #[oai(validator(pattern = "^[A-Za-z0-9:_-]{1,64}$"))]
        room: Path<String>,
    ) -> Result<Removed, ApiError> {
        set_archived(req, &auth.0, &room.0, true).await
    }

    /// Bring an archived room back (owners).
    #[oai(path = "/rooms/:room/archive", method = "delete")]
    async fn unarchive(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// Room name.
        #[oai(validator(pattern = "^[A-Za-z0-9:_-]{1,64}$"))]
        room: Path<String>,
    ) -> Result<Removed, ApiError> {
        set_archived(req, &auth.0, &room.0, false).await
    }
}

/// Direct rooms: two users' conversation.
pub struct DirectApi;

#[OpenApi(tag = "ApiTags::Chat")]
impl DirectApi {
    /// Open a direct conversation with a user.
    ///
    /// Returns the direct room of the two of us, created on first use with us both as its
    /// members; the same pair always gets the same room. Join it like any room. With my own id:
    /// a room for notes to myself.
    #[oai(path = "/dm/:user_id", method = "post")]
    async fn direct(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// Whom to talk to.
        user_id: Path<Uuid>,
    ) -> Result<Json<RoomView>, ApiError> {
        let state = req.data::<AppState>().ok_or_else(ApiError::internal)?;
        let peer = UserId(user_id.0);
        let other = state.store.user_by_id(peer).await?.ok_or_else(|| ApiError::not_found("no such user"))?;
        if other.disabled_at.is_some() {
            return Err(ApiError::not_found("no such user"));
        }
        let name = state.store.open_direct(auth.0.id, peer).await?;
        let found = readable_or_404(state, &name, &auth.0).await?;
        Ok(Json(describe(state, found, &auth.0).await?))
    }
}

/// The room as `user` sees it: their role, members joined now, and the peer of a direct room.
async fn describe(state: &AppState, found: Room, user: &User) -> Result<RoomView, ApiError> {
    let name = room_name(&found.name)?;
    let membership = state.store.membership(&name, user.id).await?.filter(|m| m.banned_at.is_none());
    let role = membership.as_ref().map(|m| m.role);
    let read = match membership {
        Some(m) => Some(ReadMarker {
            last_read_seq: m.last_read_seq,
            unread: (found.message_count - m.read_count).max(0),
            mentions: state.store.unread_mentions(&name, user.id, m.last_read_seq).await?,
        }),
        None => None,
    };
    let members = state.chat.member_counts(std::slice::from_ref(&found.name)).await.first().copied().unwrap_or(0);
    let peer = if found.kind == RoomKind::Direct {
        state
            .store
            .direct_peers(user.id)
            .await?
            .into_iter()
            .find(|p| p.room == found.name)
            .map(|p| PeerView { user_id: p.user_id, display_name: p.display_name })
    } else {
        None
    };
    Ok(RoomView { peer, ..RoomView::new(found, members, role).read_upto(read) })
}

/// Archives `room` (or brings it back) as one of its owners; archiving sends everyone in it
/// out of it.
async fn set_archived(req: &Request, user: &User, room: &str, archived: bool) -> Result<Removed, ApiError> {
    let (state, name, _) = readable_room(req, user, room).await?;
    if power(state, &name, user).await? < Some(Role::Owner) {
        return Err(ApiError::forbidden("only the room's owners archive it or bring it back"));
    }
    state.store.set_archived(&name, archived).await?;
    if archived {
        state.chat.evict(&name, UserId(Uuid::nil()), "archived");
    }
    let action = if archived { "room.archive" } else { "room.unarchive" };
    audit(state, req, user, action, None, Some(name.as_str()), None).await;
    Ok(Removed::Done)
}
