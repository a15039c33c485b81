//! Logging (tracing) and metrics (Prometheus): setup, and every metric name as a constant.
//!
//! Metric names carry the `confab_` prefix and base units; labels are low-cardinality only
//! (never a room, user id or email).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

pub const HTTP_REQUESTS: &str = "confab_http_requests_total";
pub const HTTP_DURATION: &str = "confab_http_request_duration_seconds";
pub const HTTP_CONNECTIONS: &str = "confab_http_connections";
pub const HTTP_CONNECTIONS_REFUSED: &str = "confab_http_connections_refused_total";
pub const ENGINEIO_PENDING: &str = "confab_engineio_pending_sessions";
pub const WS_SESSIONS: &str = "confab_ws_sessions";
pub const WS_SESSIONS_CLOSED: &str = "confab_ws_sessions_closed_total";
pub const MESSAGES_STORED: &str = "confab_messages_stored_total";
pub const MESSAGES_DELIVERED: &str = "confab_messages_delivered_total";
pub const STORE_QUERY_DURATION: &str = "confab_store_query_duration_seconds";
pub const BUS_PUBLISH_ERRORS: &str = "confab_bus_publish_errors_total";
pub const AUTH_RATE_LIMITED: &str = "confab_auth_rate_limited_total";
pub const AUTH_HASH_RUNNING: &str = "confab_auth_hash_running";
pub const AUTH_HASH_QUEUED: &str = "confab_auth_hash_queued";
pub const AUTH_HASH_REJECTED: &str = "confab_auth_hash_rejected_total";
pub const WS_SESSIONS_REFUSED: &str = "confab_ws_sessions_refused_total";
pub const CHAT_RATE_LIMITED: &str = "confab_chat_rate_limited_total";
pub const AUDIT_WRITE_FAILED: &str = "confab_audit_write_failures_total";
pub const ROOMS_REFUSED: &str = "confab_rooms_refused_total";
pub const SEARCHES: &str = "confab_searches_total";
pub const SEARCH_INDEXED: &str = "confab_search_indexed_total";

/// Installs the global tracing subscriber. `RUST_LOG`, when set, wins over `level`.
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    // `try_init`: tests and embedders may have installed a subscriber already.
    let _ = match format {
        // Colours only on a terminal: journald and log files get plain text.
        LogFormat::Text => registry
            .with(fmt::layer().with_target(false).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())))
            .try_init(),
        LogFormat::Json => registry.with(fmt::layer().json().flatten_event(true)).try_init(),
    };
}

/// The process-wide Prometheus recorder, installed on first use. Several apps in one process
/// (tests) share it, which is what a global recorder means anyway.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
                .expect("bucket list is non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; then ours just renders nothing.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(HTTP_REQUESTS, "HTTP requests by route and status");
    metrics::describe_histogram!(HTTP_DURATION, metrics::Unit::Seconds, "HTTP request latency");
    metrics::describe_gauge!(HTTP_CONNECTIONS, "open client connections, upgraded WebSockets included");
    metrics::describe_counter!(HTTP_CONNECTIONS_REFUSED, "connections refused before they became sessions, by reason");
    metrics::describe_gauge!(ENGINEIO_PENDING, "Socket.IO polling connections not yet upgraded (as of the last open)");
    metrics::describe_gauge!(WS_SESSIONS, "open WebSocket sessions");
    metrics::describe_counter!(WS_SESSIONS_CLOSED, "WebSocket sessions closed, by reason");
    metrics::describe_counter!(MESSAGES_STORED, "messages durably stored by this node");
    metrics::describe_counter!(MESSAGES_DELIVERED, "messages written to WebSocket clients by this node");
    metrics::describe_histogram!(STORE_QUERY_DURATION, metrics::Unit::Seconds, "store query latency");
    metrics::describe_counter!(BUS_PUBLISH_ERRORS, "failed publishes to the fan-out bus");
    metrics::describe_counter!(AUTH_RATE_LIMITED, "auth requests refused by the per-IP rate limit");
    metrics::describe_gauge!(AUTH_HASH_RUNNING, "password hashes running on the hashing threads");
    metrics::describe_gauge!(AUTH_HASH_QUEUED, "password hashes waiting for a hashing thread");
    metrics::describe_counter!(AUTH_HASH_REJECTED, "password checks refused as busy, by reason");
    metrics::describe_counter!(WS_SESSIONS_REFUSED, "WebSocket sessions refused after authentication, by reason");
    metrics::describe_counter!(CHAT_RATE_LIMITED, "chat commands refused by a per-user rate limit, by command");
    metrics::describe_counter!(ROOMS_REFUSED, "room creations refused, by reason");
    metrics::describe_counter!(SEARCHES, "full-text searches, by outcome (ok, refused, rate_limited, failed)");
    metrics::describe_counter!(SEARCH_INDEXED, "messages added to the full-text index (behind the acks)");
    metrics::describe_counter!(AUDIT_WRITE_FAILED, "audited actions that happened but could not be recorded");
}
