//! A room's members: the member list, adding members, leaving and kicking.

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::{Object, OpenApi, param::Path, payload::Json};
use uuid::Uuid;

use super::{InviteBody, MEMBERS_LIMIT, Removed, RoleView, may_moderate, power, readable_room, unknown_user};
use crate::{
    domain::{Member, Role, RoomKind, UserId},
    http::{
        api::{ApiTags, admin::audit, security::BearerAuth},
        error::ApiError,
    },
};

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

pub struct MembersApi;

#[OpenApi(tag = "ApiTags::Chat")]
impl MembersApi {
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
}
