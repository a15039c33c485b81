//! `GET /api/me`, `PATCH /api/me`.

use poem::Request;
use poem_openapi::{Object, OpenApi, payload::Json};

use super::{ApiTags, UserView, security::BearerAuth};
use crate::{domain::DisplayName, http::error::ApiError};

checked_string!(
    /// A display name: at most 32 characters.
    NameInput,
    "string(display-name)",
    |schema| {
        schema.max_length = Some(DisplayName::MAX_CHARS);
    }
);

/// What to change about me.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
struct MePatch {
    /// At most 32 characters. Tidied: control and invisible characters dropped, NFKC, runs of
    /// white space made one space; if nothing is left, the name goes back to the default (the
    /// address's part before `@`). Messages keep the name they were sent under; new ones, and
    /// joins, use this one.
    display_name: NameInput,
}

pub struct MeApi;

#[OpenApi(tag = "ApiTags::Account")]
impl MeApi {
    /// The signed-in user.
    #[oai(path = "/me", method = "get")]
    async fn me(&self, auth: BearerAuth) -> Result<Json<UserView>, ApiError> {
        Ok(Json(auth.0.into()))
    }

    /// Change my display name.
    ///
    /// Sessions opened from now on show the new name; open ones keep the old one until they
    /// reconnect.
    #[oai(path = "/me", method = "patch")]
    async fn update(&self, req: &Request, auth: BearerAuth, body: Json<MePatch>) -> Result<Json<UserView>, ApiError> {
        let state = req.data::<crate::http::AppState>().ok_or_else(ApiError::internal)?;
        if body.0.display_name.0.chars().count() > DisplayName::MAX_CHARS {
            return Err(ApiError::bad_request("a display name is at most 32 characters", "invalid_payload"));
        }
        let mut user = auth.0;
        let name = DisplayName::tidy(&body.0.display_name.0).unwrap_or_else(|| DisplayName::default_for(&user.email));
        state.store.set_display_name(user.id, &name).await?;
        user.display_name = name.into_string();
        Ok(Json(user.into()))
    }
}
