//! `/api/admin`: invitation codes and the audit log, for server administrators; and
//! [`audit`], which every administrative or moderation action calls.

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::{ApiResponse, Object, OpenApi, param::Query, payload::Json};
use uuid::Uuid;

use super::{ApiTags, security::BearerAuth};
use crate::{
    domain::{AuditEntry, NewAudit, User},
    http::{AppState, client_ip, error::ApiError},
};

/// Records that `actor` did `action` (to `target`, in `room`) from this request's client.
/// The action has happened by now, so a failure to record it is logged, not answered.
pub async fn audit(
    state: &AppState,
    req: &Request,
    actor: &User,
    action: &'static str,
    target: Option<String>,
    room: Option<&str>,
    detail: Option<String>,
) {
    let entry = NewAudit {
        actor_id: Some(actor.id.0),
        actor: actor.email.clone(),
        source: client_ip(req, &state.trusted_proxies).to_string(),
        action,
        target,
        room: room.map(str::to_owned),
        detail,
    };
    if let Err(e) = state.store.append_audit(&entry).await {
        metrics::counter!(crate::telemetry::AUDIT_WRITE_FAILED).increment(1);
        tracing::error!(error = ?e, action, actor = %actor.id, "could not record an audited action");
    }
}

fn admin_only(user: &User) -> Result<(), ApiError> {
    if user.is_admin { Ok(()) } else { Err(ApiError::forbidden("server administrators only")) }
}

/// A new invitation code.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
struct InviteView {
    /// Single use: give it to one person, who registers with it as `inviteCode`. Shown once.
    code: String,
    expires_at: DateTime<Utc>,
}

#[derive(ApiResponse)]
enum InviteCreated {
    #[oai(status = 201)]
    Created(Json<InviteView>),
}

/// An audited action.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
struct AuditView {
    /// Increasing; page back with `before`.
    id: i64,
    at: DateTime<Utc>,
    /// Who did it (absent for the command line).
    #[oai(skip_serializing_if_is_none)]
    actor_id: Option<Uuid>,
    /// Their email, or `cli`.
    actor: String,
    /// Their client's address, or `cli:<login>`.
    source: String,
    /// e.g. `room.ban`, `room.kick`, `room.mute`, `user.disable`, `invite.create`.
    action: String,
    #[oai(skip_serializing_if_is_none)]
    target: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    room: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    detail: Option<String>,
}

impl From<AuditEntry> for AuditView {
    fn from(e: AuditEntry) -> Self {
        Self {
            id: e.id,
            at: e.at,
            actor_id: e.actor_id,
            actor: e.actor,
            source: e.source,
            action: e.action,
            target: e.target,
            room: e.room,
            detail: e.detail,
        }
    }
}

#[derive(Object)]
struct AuditBody {
    /// Newest first.
    entries: Vec<AuditView>,
}

pub struct AdminApi;

#[OpenApi(prefix_path = "/admin", tag = "ApiTags::Admin")]
impl AdminApi {
    /// Create a single-use invitation code (administrators).
    ///
    /// Valid for `auth.invite_ttl` (7 days by default); needed to register when
    /// `auth.registration = "invite"`.
    #[oai(path = "/invites", method = "post")]
    async fn create_invite(&self, req: &Request, auth: BearerAuth) -> Result<InviteCreated, ApiError> {
        let state = req.data::<AppState>().ok_or_else(ApiError::internal)?;
        admin_only(&auth.0)?;
        let code = crate::auth::new_invite_code();
        let ttl = chrono::Duration::from_std(state.config.auth.invite_ttl.0).unwrap_or(chrono::Duration::days(7));
        let expires_at = Utc::now() + ttl;
        state.store.insert_invite(&crate::auth::invite_hash(&code), Some(auth.0.id), expires_at).await?;
        audit(state, req, &auth.0, "invite.create", None, None, Some(format!("expires {}", expires_at.to_rfc3339())))
            .await;
        Ok(InviteCreated::Created(Json(InviteView { code, expires_at })))
    }

    /// The audit log (administrators): administrative and moderation actions, newest first.
    #[oai(path = "/audit", method = "get")]
    async fn audit_log(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// How many entries, 1 to 500 (default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<u32>>,
        /// Only entries with a smaller id.
        #[oai(validator(minimum(value = "1")))]
        before: Query<Option<i64>>,
    ) -> Result<Json<AuditBody>, ApiError> {
        let state = req.data::<AppState>().ok_or_else(ApiError::internal)?;
        admin_only(&auth.0)?;
        let entries = state.store.audit_log(before.0, limit.0.unwrap_or(100)).await?;
        Ok(Json(AuditBody { entries: entries.into_iter().map(Into::into).collect() }))
    }
}
