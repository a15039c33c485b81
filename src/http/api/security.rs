//! Bearer authentication for REST operations, as an OpenAPI security scheme so Swagger UI's
//! "Authorize" button works.

use poem::Request;
use poem_openapi::{SecurityScheme, auth::Bearer};

use crate::{domain::User, http::AppState, http::error::ApiError};

/// A request authenticated with `Authorization: Bearer <access token>`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "check_bearer")]
pub struct BearerAuth(pub User);

async fn check_bearer(req: &Request, bearer: Bearer) -> poem::Result<User> {
    let state = req.data::<AppState>().ok_or_else(|| ApiError::internal().into_poem())?;
    state.auth.authenticate(&bearer.token).await.map_err(|e| ApiError::from(e).into_poem())
}
