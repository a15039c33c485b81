//! The REST API under `/api`, described by poem-openapi: the doc comments on operations and
//! types here *are* the documentation at `/api/docs` and `/api/openapi.json`.

// Field types whose JSON and schema poem-openapi's own would get wrong; defined before the
// modules that use them.
/// A string field checked by the handler rather than by poem-openapi, and strictly a JSON
/// string (poem's `String` would take `42` or `true` as text, which the schema says is not
/// valid), documented with the rules the handler applies.
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $title:literal, |$schema:ident| $describe:block) => {
        $(#[$doc])*
        struct $name(String);

        impl poem_openapi::types::Type for $name {
            const IS_REQUIRED: bool = true;
            type RawValueType = Self;
            type RawElementValueType = Self;

            fn name() -> std::borrow::Cow<'static, str> {
                $title.into()
            }

            fn schema_ref() -> poem_openapi::registry::MetaSchemaRef {
                let mut $schema = poem_openapi::registry::MetaSchema::new("string");
                $describe
                poem_openapi::registry::MetaSchemaRef::Inline(Box::new($schema))
            }

            fn as_raw_value(&self) -> Option<&Self::RawValueType> {
                Some(self)
            }

            fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
                Box::new(self.as_raw_value().into_iter())
            }
        }

        impl poem_openapi::types::ParseFromJSON for $name {
            fn parse_from_json(value: Option<serde_json::Value>) -> poem_openapi::types::ParseResult<Self> {
                match value {
                    Some(serde_json::Value::String(s)) => Ok(Self(s)),
                    other => Err(poem_openapi::types::ParseError::expected_type(other.unwrap_or_default())),
                }
            }
        }

        impl poem_openapi::types::ToJSON for $name {
            fn to_json(&self) -> Option<serde_json::Value> {
                Some(serde_json::Value::String(self.0.clone()))
            }
        }
    };
}

/// Optional text of bounded length: absent, or a JSON string (not `null`, which the schema
/// does not allow) of at most `$max` characters as sent.
macro_rules! optional_text {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        struct $name(Option<String>);

        impl poem_openapi::types::Type for $name {
            const IS_REQUIRED: bool = false;
            type RawValueType = String;
            type RawElementValueType = String;

            fn name() -> std::borrow::Cow<'static, str> {
                "string".into()
            }

            fn schema_ref() -> poem_openapi::registry::MetaSchemaRef {
                let mut schema = poem_openapi::registry::MetaSchema::new("string");
                schema.max_length = Some($max);
                poem_openapi::registry::MetaSchemaRef::Inline(Box::new(schema))
            }

            fn as_raw_value(&self) -> Option<&Self::RawValueType> {
                self.0.as_ref()
            }

            fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
                Box::new(self.as_raw_value().into_iter())
            }
        }

        impl poem_openapi::types::ParseFromJSON for $name {
            fn parse_from_json(value: Option<serde_json::Value>) -> poem_openapi::types::ParseResult<Self> {
                match value {
                    None => Ok(Self(None)),
                    Some(serde_json::Value::String(s)) if s.chars().count() > $max => {
                        Err(poem_openapi::types::ParseError::custom(format!("at most {} characters", $max)))
                    }
                    Some(serde_json::Value::String(s)) => Ok(Self(Some(s))),
                    Some(other) => Err(poem_openapi::types::ParseError::expected_type(other)),
                }
            }
        }

        impl poem_openapi::types::ToJSON for $name {
            fn to_json(&self) -> Option<serde_json::Value> {
                self.0.clone().map(serde_json::Value::String)
            }
        }
    };
}

mod admin;
mod auth;
mod me;
mod messages;
mod rooms;
mod search;
pub mod security;

use chrono::{DateTime, Utc};
use poem_openapi::{Object, OpenApiService, Tags};
use uuid::Uuid;

use crate::domain::User;

#[derive(Tags)]
enum ApiTags {
    /// Register, sign in, refresh and sign out.
    Auth,
    /// The signed-in account.
    Account,
    /// Rooms, their members, and message history.
    Chat,
    /// Server administration (administrators only).
    Admin,
}

/// A user as the API shows it.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct UserView {
    id: Uuid,
    /// Mine only: other users never see it.
    email: String,
    /// What rooms show of me.
    display_name: String,
    /// A server administrator: sees and moderates every room.
    is_admin: bool,
    created_at: DateTime<Utc>,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        Self {
            id: u.id.0,
            email: u.email,
            display_name: u.display_name,
            is_admin: u.is_admin,
            created_at: u.created_at,
        }
    }
}

pub type Api = (auth::AuthApi, me::MeApi, messages::MessagesApi, rooms::Api, search::SearchApi, admin::AdminApi);

/// The OpenAPI service, mounted at `/api`.
pub fn service() -> OpenApiService<Api, ()> {
    OpenApiService::new(
        (auth::AuthApi, me::MeApi, messages::MessagesApi, rooms::API, search::SearchApi, admin::AdminApi),
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
