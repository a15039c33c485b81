//! The REST API under `/api`, described by poem-openapi: the doc comments on operations and
//! types here *are* the documentation at `/api/docs` and `/api/openapi.json`.

mod auth;
mod me;
mod messages;
mod rooms;
pub mod security;

use chrono::{DateTime, Utc};
use poem_openapi::{Object, OpenApiService, Tags};
use uuid::Uuid;

use crate::store::User;

#[derive(Tags)]
enum ApiTags {
    /// Register, sign in, refresh and sign out.
    Auth,
    /// The signed-in account.
    Account,
    /// Rooms, their members, and message history.
    Chat,
}

/// A user as the API shows it.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct UserView {
    id: Uuid,
    email: String,
    created_at: DateTime<Utc>,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        Self { id: u.id.0, email: u.email, created_at: u.created_at }
    }
}

pub type Api = (auth::AuthApi, me::MeApi, messages::MessagesApi, rooms::RoomsApi);

/// The OpenAPI service, mounted at `/api`.
pub fn service() -> OpenApiService<Api, ()> {
    OpenApiService::new(
        (auth::AuthApi, me::MeApi, messages::MessagesApi, rooms::RoomsApi),
        "confab",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "REST API of confab, a real-time chat server. Real-time messaging itself happens over \
             the WebSocket at `/ws` (see PROTOCOL.md). Authorize with the `token` from register or \
             login.",
    )
    .server("/api")
}
