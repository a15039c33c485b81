//! `GET /api/search`: full-text search of the messages I may read.

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::{Object, OpenApi, param::Query, payload::Json};
use uuid::Uuid;

use super::{ApiTags, security::BearerAuth};
use crate::{
    domain::{Message, RoomName, SearchQuery, Seq},
    http::{AppState, error::ApiError},
    store::SearchScope,
    telemetry,
};

/// Characters of a result's snippet (plus `…` where it was cut).
const SNIPPET: usize = 160;
const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 50;

/// A message that matched.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
struct SearchHit {
    id: Uuid,
    room: String,
    /// Its place in the room's stream: load history around it with `GET
    /// /api/messages/{room}?before=<seq + n>`.
    seq: Seq,
    sender_id: Uuid,
    sender_name: String,
    created_at: DateTime<Utc>,
    #[oai(skip_serializing_if_is_none)]
    edited_at: Option<DateTime<Utc>>,
    /// Up to 160 characters of the message around the first word that matched (plain text,
    /// `…` where it was cut).
    snippet: String,
}

/// One page of results, newest first.
#[derive(Object)]
struct SearchBody {
    results: Vec<SearchHit>,
    /// Pass as `before` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    next: Option<Uuid>,
}

pub struct SearchApi;

#[OpenApi(tag = "ApiTags::Chat")]
impl SearchApi {
    /// Search messages.
    ///
    /// Every word of `q` (letters and digits; other characters separate words; case and, on
    /// SQLite, accents do not matter) must be in the message; the last word also matches as
    /// the start of a word. Looks in the rooms I may read (public rooms, and rooms I am a
    /// member of and not banned from; administrators: every room), or only in `room`.
    /// Deleted messages are never found; edited ones are found by their latest text. Newest
    /// first; page with `before` = the previous page's `next`. Rate limited per user
    /// (`limits.searches_per_minute`). Messages are indexed behind their acks: this node's own
    /// are found at once, other nodes' within `chat.search_index_interval` (500 ms).
    #[oai(path = "/search", method = "get")]
    async fn search(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// What to look for: at most 200 characters. Without any letter or digit it finds nothing.
        #[oai(validator(max_length = 200))]
        q: Query<String>,
        /// Only this room.
        #[oai(validator(pattern = "^[A-Za-z0-9:_-]{1,64}$"))]
        room: Query<Option<String>>,
        /// Only messages older than this one: the `next` of the previous page.
        before: Query<Option<Uuid>>,
        /// How many results, 1 to 50 (default 20).
        #[oai(validator(minimum(value = "1"), maximum(value = "50")))]
        limit: Query<Option<u32>>,
    ) -> Result<Json<SearchBody>, ApiError> {
        let state = req.data::<AppState>().ok_or_else(ApiError::internal)?;
        let outcome = |o: &'static str| metrics::counter!(telemetry::SEARCHES, "outcome" => o).increment(1);
        let query = SearchQuery::parse(&q.0).map_err(|e| {
            outcome("refused");
            ApiError::bad_request(e.to_string(), "invalid_query")
        })?;
        if query.terms().is_empty() {
            // Nothing to look for (no letters or digits): nothing found, nothing read.
            return Ok(Json(SearchBody { results: Vec::new(), next: None }));
        }
        let limit = limit.0.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            outcome("refused");
            return Err(ApiError::bad_request("limit must be between 1 and 50", "invalid_limit"));
        }
        let room = match room.0 {
            Some(r) => {
                let name = RoomName::parse(&r).map_err(|e| ApiError::bad_request(e.to_string(), "invalid_room"))?;
                super::rooms::readable(state, &name, &auth.0)
                    .await?
                    .ok_or_else(|| ApiError::not_found("no such room"))?;
                Some(name)
            }
            None => None,
        };
        if let Err(wait) = state.search_limiter.check(&auth.0.id.0) {
            outcome("rate_limited");
            return Err(ApiError::rate_limited(wait.as_secs() + 1));
        }
        let scope = SearchScope { user: auth.0.id, admin: auth.0.is_admin, room, before: before.0, limit };
        let found = state.chat.search(&query, &scope).await.inspect_err(|_| outcome("failed"))?;
        outcome("ok");
        let next = (found.len() == limit as usize).then(|| found.last().map(|m| m.id)).flatten();
        let results = found.into_iter().map(|m| hit(&query, m)).collect();
        Ok(Json(SearchBody { results, next }))
    }
}

fn hit(query: &SearchQuery, m: Message) -> SearchHit {
    SearchHit {
        snippet: query.snippet(&m.content, SNIPPET),
        id: m.id,
        room: m.room,
        seq: m.seq,
        sender_id: m.sender_id,
        sender_name: m.sender_name,
        created_at: m.created_at,
        edited_at: m.edited_at,
    }
}
