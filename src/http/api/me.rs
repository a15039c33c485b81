//! `GET /api/me`.

use poem_openapi::{OpenApi, payload::Json};

use super::{ApiTags, UserView, security::BearerAuth};
use crate::http::error::ApiError;

pub struct MeApi;

#[OpenApi(tag = "ApiTags::Account")]
impl MeApi {
    /// The signed-in user.
    #[oai(path = "/me", method = "get")]
    async fn me(&self, auth: BearerAuth) -> Result<Json<UserView>, ApiError> {
        Ok(Json(auth.0.into()))
    }
}
