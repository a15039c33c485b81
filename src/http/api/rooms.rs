//! `/api/rooms`: rooms as entities (public and private), and their members.

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use uuid::Uuid;

use super::{ApiTags, admin::audit, security::BearerAuth};
use crate::{
    chat::ChatError,
    domain::{
        Ban, DIRECT_PREFIX, Member, Membership, NewRoom, Reaction, ReadMarker, Role, Room, RoomKind, RoomName, Seq,
        User, UserId,
    },
    http::{AppState, error::ApiError},
    store::Reacted,
};

/// Longest mute, in minutes (a year).
const MUTE_MAX_MINUTES: u32 = 525_600;

/// Most members a member list returns.
const MEMBERS_LIMIT: u32 = 1000;
/// Longest title and topic, in characters.
const TITLE_MAX: usize = 100;
const TOPIC_MAX: usize = 500;

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

/// A room member.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
struct MemberView {
    user_id: Uuid,
    display_name: String,
    role: RoleView,
    joined_at: DateTime<Utc>,
    /// While muted: until when.
    #[oai(skip_serializing_if_is_none)]
    muted_until: Option<DateTime<Utc>>,
    /// In the room right now: a session of theirs is joined to it, on any node.
    online: bool,
}

impl From<Member> for MemberView {
    fn from(m: Member) -> Self {
        let muted_until = m.muted_until.filter(|t| *t > Utc::now());
        Self {
            user_id: m.user_id,
            display_name: m.display_name,
            role: m.role.into(),
            joined_at: m.joined_at,
            muted_until,
            online: false,
        }
    }
}

#[derive(Object)]
struct MembersBody {
    /// Oldest first, at most 1000.
    members: Vec<MemberView>,
}

/// Whom to add to the room.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
struct InviteBody {
    user_id: Uuid,
}

/// A user banned from a room.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
struct BanView {
    user_id: Uuid,
    display_name: String,
    banned_at: DateTime<Utc>,
}

impl From<Ban> for BanView {
    fn from(b: Ban) -> Self {
        Self { user_id: b.user_id, display_name: b.display_name, banned_at: b.banned_at }
    }
}

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

/// Whom to mute, and for how long.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
struct MuteBody {
    user_id: Uuid,
    /// 1 to 525600 (a year).
    #[oai(validator(minimum(value = "1"), maximum(value = "525600")))]
    minutes: u32,
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

#[derive(Object)]
struct BansBody {
    /// Earliest first, at most 1000.
    bans: Vec<BanView>,
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

    /// Mute a member for a while (owners and moderators, to members of a lower role): they
    /// still read the room, but `send_message` there is `error` `muted` until then, on every
    /// node (event `muted`).
    #[oai(path = "/rooms/:room/mutes", method = "post")]
    async fn mute(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// Room name.
        #[oai(validator(pattern = "^[A-Za-z0-9:_-]{1,64}$"))]
        room: Path<String>,
        body: Json<MuteBody>,
    ) -> Result<Removed, ApiError> {
        let (state, name, _) = readable_room(req, &auth.0, &room.0).await?;
        let target = UserId(body.0.user_id);
        if target == auth.0.id {
            return Err(ApiError::forbidden("you cannot mute yourself"));
        }
        may_moderate(state, &name, &auth.0, target).await?;
        let minutes = body.0.minutes.clamp(1, MUTE_MAX_MINUTES);
        let until = Utc::now() + chrono::Duration::minutes(i64::from(minutes));
        if !state.store.set_muted(&name, target, Some(until)).await? {
            return Err(ApiError::conflict("only members are muted; this user is not one", "not_a_member"));
        }
        state.chat.mute(&name, target, until.timestamp());
        audit(
            state,
            req,
            &auth.0,
            "room.mute",
            Some(target.to_string()),
            Some(name.as_str()),
            Some(format!("{minutes} min")),
        )
        .await;
        Ok(Removed::Done)
    }

    /// Lift a mute (owners and moderators).
    #[oai(path = "/rooms/:room/mutes/:user_id", method = "delete")]
    async fn unmute(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// Room name.
        #[oai(validator(pattern = "^[A-Za-z0-9:_-]{1,64}$"))]
        room: Path<String>,
        /// The muted member.
        user_id: Path<Uuid>,
    ) -> Result<Removed, ApiError> {
        let (state, name, _) = readable_room(req, &auth.0, &room.0).await?;
        let target = UserId(user_id.0);
        may_moderate(state, &name, &auth.0, target).await?;
        if !state.store.set_muted(&name, target, None).await? {
            return Err(ApiError::conflict("this user is not a member", "not_a_member"));
        }
        state.chat.mute(&name, target, 0);
        audit(state, req, &auth.0, "room.unmute", Some(target.to_string()), Some(name.as_str()), None).await;
        Ok(Removed::Done)
    }

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

    /// A room's members, with their roles.
    #[oai(path = "/rooms/:room/members", method = "get")]
    async fn members(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// Room name.
        #[oai(validator(pattern = "^[A-Za-z0-9:_-]{1,64}$"))]
        room: Path<String>,
    ) -> Result<Json<MembersBody>, ApiError> {
        let (state, name, _) = readable_room(req, &auth.0, &room.0).await?;
        let members = state.store.members(&name, MEMBERS_LIMIT).await?;
        let online = state.chat.online_in(&name).await;
        let members = members
            .into_iter()
            .map(|m| {
                let here = online.contains(&m.user_id);
                MemberView { online: here, ..m.into() }
            })
            .collect();
        Ok(Json(MembersBody { members }))
    }

    /// Add a user to a room.
    ///
    /// Owners and moderators add members to private rooms; anyone may add anyone to a public
    /// room (which anyone may join anyway). 409 `unknown_user` if the user does not exist.
    #[oai(path = "/rooms/:room/members", method = "post")]
    async fn invite(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// Room name.
        #[oai(validator(pattern = "^[A-Za-z0-9:_-]{1,64}$"))]
        room: Path<String>,
        body: Json<InviteBody>,
    ) -> Result<Json<MemberView>, ApiError> {
        let (state, name, found) = readable_room(req, &auth.0, &room.0).await?;
        let my_role = power(state, &name, &auth.0).await?;
        if found.kind != RoomKind::Public && my_role < Some(Role::Moderator) {
            return Err(ApiError::forbidden("only the room's owners and moderators add members"));
        }
        if found.archived_at.is_some() {
            return Err(ApiError::forbidden("this room is archived"));
        }
        let invitee = UserId(body.0.user_id);
        let user = state.store.user_by_id(invitee).await?.ok_or_else(unknown_user)?;
        if state.store.membership(&name, invitee).await?.is_some_and(|m| m.banned_at.is_some()) {
            return Err(ApiError::forbidden("this user is banned from the room"));
        }
        if state.store.add_member(&name, invitee, Role::Member).await? && found.kind != RoomKind::Public {
            audit(state, req, &auth.0, "room.invite", Some(invitee.to_string()), Some(name.as_str()), None).await;
        }
        let member = state
            .store
            .members(&name, MEMBERS_LIMIT)
            .await?
            .into_iter()
            .find(|m| m.user_id == user.id.0)
            .ok_or_else(ApiError::internal)?;
        Ok(Json(member.into()))
    }

    /// Remove a member (kick), or leave.
    ///
    /// Anyone may remove themselves; owners and moderators remove members of a lower role.
    #[oai(path = "/rooms/:room/members/:user_id", method = "delete")]
    async fn remove(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// Room name.
        #[oai(validator(pattern = "^[A-Za-z0-9:_-]{1,64}$"))]
        room: Path<String>,
        /// The member to remove.
        user_id: Path<Uuid>,
    ) -> Result<Removed, ApiError> {
        let (state, name, _) = readable_room(req, &auth.0, &room.0).await?;
        let target = UserId(user_id.0);
        let their_role = state.store.membership(&name, target).await?.filter(|m| m.banned_at.is_none()).map(|m| m.role);
        if their_role.is_none() {
            return Err(ApiError::not_found("not a member"));
        }
        if target != auth.0.id {
            may_moderate(state, &name, &auth.0, target).await?;
        }
        state.store.remove_member(&name, target).await?;
        // Their sessions in the room, on every node, leave it now.
        state.chat.evict(&name, target, if target == auth.0.id { "left" } else { "kicked" });
        if target != auth.0.id {
            audit(state, req, &auth.0, "room.kick", Some(target.to_string()), Some(name.as_str()), None).await;
        }
        Ok(Removed::Done)
    }

    /// Ban a user from a room.
    ///
    /// Owners and moderators (and administrators) ban anyone of a lower role, member or not:
    /// a banned user cannot see, read or join the room until unbanned, and their sessions in
    /// it, on every node, leave it at once (event `removed`, reason `banned`).
    #[oai(path = "/rooms/:room/bans", method = "post")]
    async fn ban(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// Room name.
        #[oai(validator(pattern = "^[A-Za-z0-9:_-]{1,64}$"))]
        room: Path<String>,
        body: Json<InviteBody>,
    ) -> Result<Removed, ApiError> {
        let (state, name, _) = readable_room(req, &auth.0, &room.0).await?;
        let target = UserId(body.0.user_id);
        if target == auth.0.id {
            return Err(ApiError::forbidden("you cannot ban yourself"));
        }
        state.store.user_by_id(target).await?.ok_or_else(unknown_user)?;
        may_moderate(state, &name, &auth.0, target).await?;
        state.store.ban_member(&name, target).await?;
        state.chat.evict(&name, target, "banned");
        audit(state, req, &auth.0, "room.ban", Some(target.to_string()), Some(name.as_str()), None).await;
        Ok(Removed::Done)
    }

    /// Lift a ban. The user is then not a member: they may join a public room again, and
    /// must be invited to a private one.
    #[oai(path = "/rooms/:room/bans/:user_id", method = "delete")]
    async fn unban(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// Room name.
        #[oai(validator(pattern = "^[A-Za-z0-9:_-]{1,64}$"))]
        room: Path<String>,
        /// The banned user.
        user_id: Path<Uuid>,
    ) -> Result<Removed, ApiError> {
        let (state, name, _) = readable_room(req, &auth.0, &room.0).await?;
        moderator_only(state, &name, &auth.0, "lift bans").await?;
        if !state.store.unban_member(&name, UserId(user_id.0)).await? {
            return Err(ApiError::not_found("not banned"));
        }
        audit(state, req, &auth.0, "room.unban", Some(user_id.0.to_string()), Some(name.as_str()), None).await;
        Ok(Removed::Done)
    }

    /// Who is banned from a room (owners and moderators only).
    #[oai(path = "/rooms/:room/bans", method = "get")]
    async fn bans(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// Room name.
        #[oai(validator(pattern = "^[A-Za-z0-9:_-]{1,64}$"))]
        room: Path<String>,
    ) -> Result<Json<BansBody>, ApiError> {
        let (state, name, _) = readable_room(req, &auth.0, &room.0).await?;
        moderator_only(state, &name, &auth.0, "see the bans").await?;
        let bans = state.store.bans(&name, MEMBERS_LIMIT).await?;
        Ok(Json(BansBody { bans: bans.into_iter().map(Into::into).collect() }))
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
