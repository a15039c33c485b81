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

/// Readiness: 200 only when the database (and Redis, if configured) answer.
#[handler]
pub async fn ready(state: Data<&AppState>) -> Response {
    let database = tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ping()).await;
    let database_ok = matches!(database, Ok(Ok(())));
    let redis = state.chat.bus().redis_connected();
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

/// Prometheus text format.
#[handler]
pub async fn metrics() -> Response {
    Response::builder()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::telemetry::metrics_handle().render())
}
