//! Operational endpoints, no auth: `/health` (liveness), `/ready` (readiness), `/metrics`.

use poem::{IntoResponse, Response, handler, http::StatusCode, web::Data};
use serde_json::json;

use super::AppState;

/// Liveness: the process answers. Never touches dependencies, so a database outage does not
/// get healthy nodes restarted.
#[handler]
pub async fn health(state: Data<&AppState>) -> Response {
    poem::web::Json(json!({ "ok": true, "node": &*state.node_id, "version": env!("CARGO_PKG_VERSION") }))
        .into_response()
}

/// Whether the database answers a ping (within 2 s), and whether Redis is connected (`None`
/// without Redis).
async fn dependencies(state: &AppState) -> (bool, Option<bool>) {
    let database = tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ping()).await;
    (matches!(database, Ok(Ok(()))), state.chat.bus().redis_connected())
}

/// Readiness: 200 only when the database (and Redis, if configured) answer.
#[handler]
pub async fn ready(state: Data<&AppState>) -> Response {
    let (database_ok, redis) = dependencies(&state).await;
    let redis_ok = redis.unwrap_or(true);
    let body = json!({
        "ok": database_ok && redis_ok,
        "node": &*state.node_id,
        "database": if database_ok { "up" } else { "down" },
        "redis": match redis { None => "disabled", Some(true) => "up", Some(false) => "down" },
    });
    if database_ok && redis_ok {
        poem::web::Json(body).into_response()
    } else {
        let mut body = body;
        let failed = match (database_ok, redis_ok) {
            (false, false) => "database and redis unavailable",
            (false, true) => "database unavailable",
            _ => "redis unavailable",
        };
        body["error"] = json!(failed);
        body["code"] = json!("not_ready");
        (StatusCode::SERVICE_UNAVAILABLE, poem::web::Json(body)).into_response()
    }
}

/// Prometheus text format. Readiness is checked at each scrape, so an alert on it sees the
/// state of the last scrape rather than of the last `/ready` request.
#[handler]
pub async fn metrics(state: Data<&AppState>) -> Response {
    use crate::telemetry::{DATABASE_UP, READY, REDIS_CONNECTED};
    let (database_ok, redis) = dependencies(&state).await;
    ::metrics::gauge!(DATABASE_UP).set(f64::from(u8::from(database_ok)));
    if let Some(up) = redis {
        ::metrics::gauge!(REDIS_CONNECTED).set(f64::from(u8::from(up)));
    }
    ::metrics::gauge!(READY).set(f64::from(u8::from(database_ok && redis.unwrap_or(true))));
    Response::builder()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::telemetry::render_metrics())
}

/// `/metrics` on the public listener when metrics have their own (`metrics_listen`): not
/// here, rather than the web UI's page.
#[handler]
pub async fn not_here() -> Response {
    crate::http::error::from_status(StatusCode::NOT_FOUND, None)
}
