//! Moderation of a room: muting members for a while, and banning users from it.

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::{Object, OpenApi, param::Path, payload::Json};
use uuid::Uuid;

use super::{InviteBody, MEMBERS_LIMIT, Removed, may_moderate, moderator_only, readable_room, unknown_user};
use crate::{
    domain::{Ban, UserId},
    http::{
        api::{ApiTags, admin::audit, security::BearerAuth},
        error::ApiError,
    },
};

/// Longest mute, in minutes (a year).
const MUTE_MAX_MINUTES: u32 = 525_600;

/// Whom to mute, and for how long.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
struct MuteBody {
    user_id: Uuid,
    /// 1 to 525600 (a year).
    #[oai(validator(minimum(value = "1"), maximum(value = "525600")))]
    minutes: u32,
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

#[derive(Object)]
struct BansBody {
    /// Earliest first, at most 1000.
    bans: Vec<BanView>,
}

pub struct MutesApi;

#[OpenApi(tag = "ApiTags::Chat")]
impl MutesApi {
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
}

pub struct BansApi;

#[OpenApi(tag = "ApiTags::Chat")]
impl BansApi {
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
