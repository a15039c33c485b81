//! Logging (tracing) and metrics (Prometheus): setup, and every metric name as a constant.
//!
//! Metric names carry the `confab_` prefix and base units; labels are low-cardinality only
//! (never a room, user id or email).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt, prelude::*, reload};

use crate::config::LogFormat;

pub const HTTP_REQUESTS: &str = "confab_http_requests_total";
pub const HTTP_DURATION: &str = "confab_http_request_duration_seconds";
pub const HTTP_CONNECTIONS: &str = "confab_http_connections";
pub const HTTP_CONNECTIONS_REFUSED: &str = "confab_http_connections_refused_total";
pub const ENGINEIO_PENDING: &str = "confab_engineio_pending_sessions";
pub const WS_SESSIONS: &str = "confab_ws_sessions";
pub const WS_SESSIONS_CLOSED: &str = "confab_ws_sessions_closed_total";
pub const WS_SESSIONS_OPENED: &str = "confab_ws_sessions_opened_total";
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
pub const MESSAGES_RECEIVED: &str = "confab_messages_received_total";
pub const MESSAGES_REJECTED: &str = "confab_messages_rejected_total";
pub const MESSAGE_ACK_DURATION: &str = "confab_message_ack_duration_seconds";
pub const STORE_ERRORS: &str = "confab_store_errors_total";
pub const STORE_SHARED_BATCHES: &str = "confab_store_shared_batches_total";
pub const SQLITE_WAL_PAGES: &str = "confab_store_sqlite_wal_pages";
pub const BUS_PUBLISHED: &str = "confab_bus_published_total";
pub const BUS_RECEIVED: &str = "confab_bus_received_total";
pub const BUS_DROPPED: &str = "confab_bus_dropped_total";
pub const ROOM_WRITERS: &str = "confab_room_writers";
pub const PRESENCE_ROOMS: &str = "confab_presence_rooms_total";
pub const REDIS_CONNECTED: &str = "confab_redis_connected";
pub const GAP_REPAIRED: &str = "confab_gap_repaired_messages_total";
pub const AUTH_REQUESTS: &str = "confab_auth_requests_total";
pub const READY: &str = "confab_ready";
pub const DATABASE_UP: &str = "confab_database_up";
pub const BUILD_INFO: &str = "confab_build_info";

/// The commit this binary was built from (`build.rs`), `unknown` outside a git checkout.
pub const GIT_SHA: &str = env!("BUILD_GIT_SHA");

type FilterHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// The installed subscriber's filter, for [`set_log_level`].
static FILTER: OnceLock<FilterHandle> = OnceLock::new();

/// Installs the global tracing subscriber. `RUST_LOG`, when set, wins over `level`.
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    // `try_init`: tests and embedders may have installed a subscriber already.
    let _ = match format {
        // Colours only on a terminal: journald and log files get plain text.
        LogFormat::Text => registry
            .with(fmt::layer().with_target(false).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())))
            .try_init(),
        LogFormat::Json => registry.with(fmt::layer().json().flatten_event(true)).try_init(),
    }
    .map(|()| FILTER.set(handle));
}

/// Whether `level` is a valid filter (`info`, `confab=debug,warn`, …).
pub fn check_log_level(level: &str) -> Result<(), String> {
    EnvFilter::try_new(level).map(drop).map_err(|e| format!("invalid log level `{level}`: {e}"))
}

/// Replaces the log level of the running process (SIGHUP). `Ok(false)` when `RUST_LOG` is set,
/// which wins as it did at start; an error for a level that does not parse.
pub fn set_log_level(level: &str) -> Result<bool, String> {
    if std::env::var_os("RUST_LOG").is_some() {
        return Ok(false);
    }
    let filter = EnvFilter::try_new(level).map_err(|e| format!("invalid log level `{level}`: {e}"))?;
    let handle = FILTER.get().ok_or("logging was not set up by confab")?;
    handle.reload(filter).map_err(|e| e.to_string())?;
    Ok(true)
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
            process_collector().describe();
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "git_sha" => GIT_SHA).set(1.0);
            handle
        })
        .clone()
}

/// The text Prometheus scrapes: this process's CPU, memory, descriptors and start time are
/// read (from /proc) at each scrape, everything else is kept as it happens.
pub fn render_metrics() -> String {
    let handle = metrics_handle();
    process_collector().collect();
    handle.render()
}

fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Registers every series a dashboard or alert reads, at zero, so that they exist from the
/// start (an absent series is not a zero to PromQL: `rate()` and alerts see nothing). Labels
/// are those the code uses; series with other labels appear when first counted.
pub fn init_series(store_backend: &'static str, redis: bool) {
    for reason in ["client", "slow", "shutdown", "timeout", "error", "expired", "revoked"] {
        metrics::counter!(WS_SESSIONS_CLOSED, "reason" => reason).increment(0);
    }
    for transport in ["native", "socketio"] {
        metrics::gauge!(WS_SESSIONS, "transport" => transport).increment(0.0);
        metrics::counter!(WS_SESSIONS_OPENED, "transport" => transport).increment(0);
        metrics::counter!(MESSAGES_DELIVERED, "transport" => transport).increment(0);
    }
    for counter in
        [MESSAGES_RECEIVED, MESSAGES_STORED, SEARCH_INDEXED, AUTH_RATE_LIMITED, AUDIT_WRITE_FAILED, GAP_REPAIRED]
    {
        metrics::counter!(counter).increment(0);
    }
    for reason in ["invalid_payload", "too_long", "rate_limited", "not_joined", "forbidden", "muted", "unavailable"] {
        metrics::counter!(MESSAGES_REJECTED, "reason" => reason).increment(0);
    }
    for query in ["append_messages", "index_messages"] {
        metrics::counter!(STORE_ERRORS, "query" => query).increment(0);
    }
    if store_backend == "postgres" {
        for outcome in ["shared", "resend", "conflict", "failed"] {
            metrics::counter!(STORE_SHARED_BATCHES, "outcome" => outcome).increment(0);
        }
    }
    if store_backend == "sqlite" {
        metrics::gauge!(SQLITE_WAL_PAGES).set(0.0);
    }
    for reason in ["per_ip", "accept_error", "engineio_pending"] {
        metrics::counter!(HTTP_CONNECTIONS_REFUSED, "reason" => reason).increment(0);
    }
    metrics::counter!(WS_SESSIONS_REFUSED, "reason" => "too_many_sessions").increment(0);
    for command in ["send_message", "edit_message", "delete_message", "react", "membership", "mark_read"] {
        metrics::counter!(CHAT_RATE_LIMITED, "command" => command).increment(0);
    }
    metrics::counter!(ROOMS_REFUSED, "reason" => "too_many_rooms").increment(0);
    metrics::gauge!(ENGINEIO_PENDING).increment(0.0);
    for action in ["register", "login", "refresh", "logout"] {
        metrics::counter!(AUTH_REQUESTS, "action" => action, "outcome" => "ok").increment(0);
    }
    for reason in ["queue_full", "timeout"] {
        metrics::counter!(AUTH_HASH_REJECTED, "reason" => reason).increment(0);
    }
    for outcome in ["ok", "refused", "rate_limited", "failed"] {
        metrics::counter!(SEARCHES, "outcome" => outcome).increment(0);
    }
    metrics::gauge!(HTTP_CONNECTIONS).increment(0.0);
    metrics::gauge!(ROOM_WRITERS).increment(0.0);
    metrics::counter!(PRESENCE_ROOMS, "op" => "read").increment(0);
    metrics::counter!(PRESENCE_ROOMS, "op" => "written").increment(0);
    metrics::gauge!(AUTH_HASH_RUNNING).increment(0.0);
    metrics::gauge!(AUTH_HASH_QUEUED).increment(0.0);
    metrics::counter!(BUS_PUBLISH_ERRORS, "bus" => "redis").increment(0);
    if redis {
        metrics::counter!(BUS_PUBLISHED, "bus" => "redis").increment(0);
        metrics::counter!(BUS_RECEIVED, "bus" => "redis").increment(0);
        metrics::counter!(BUS_DROPPED, "bus" => "redis").increment(0);
    }
    // Histograms with no sample yet: their buckets exist at zero.
    let _ = metrics::histogram!(STORE_QUERY_DURATION, "query" => "append_messages", "backend" => store_backend);
    let _ = metrics::histogram!(MESSAGE_ACK_DURATION);
}

fn describe() {
    metrics::describe_counter!(HTTP_REQUESTS, "HTTP requests by route and status");
    metrics::describe_histogram!(HTTP_DURATION, metrics::Unit::Seconds, "HTTP request latency");
    metrics::describe_gauge!(HTTP_CONNECTIONS, "open client connections, upgraded WebSockets included");
    metrics::describe_counter!(HTTP_CONNECTIONS_REFUSED, "connections refused before they became sessions, by reason");
    metrics::describe_gauge!(ENGINEIO_PENDING, "Socket.IO polling connections not yet upgraded (as of the last open)");
    metrics::describe_gauge!(WS_SESSIONS, "open WebSocket sessions");
    metrics::describe_counter!(WS_SESSIONS_CLOSED, "WebSocket sessions closed, by reason");
    metrics::describe_counter!(WS_SESSIONS_OPENED, "WebSocket sessions opened (authenticated), by transport");
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
    metrics::describe_counter!(MESSAGES_RECEIVED, "messages clients sent to this node (send_message), valid or not");
    metrics::describe_counter!(MESSAGES_REJECTED, "sent messages refused before storing, by error code");
    metrics::describe_histogram!(
        MESSAGE_ACK_DURATION,
        metrics::Unit::Seconds,
        "from a send passing validation to its ack (queue, durable commit, fan-out hand-off)"
    );
    metrics::describe_counter!(STORE_ERRORS, "store writes of the message path that failed, by query");
    metrics::describe_counter!(
        STORE_SHARED_BATCHES,
        "PostgreSQL: rooms' batches offered to a shared statement, by outcome: stored by it (shared), or stored alone \
         because they resent a stored client id (resend), met one stored meanwhile (conflict) or the statement failed"
    );
    metrics::describe_gauge!(
        SQLITE_WAL_PAGES,
        "SQLite: pages in the write-ahead log at the last checkpoint (the log starts over once they are all in the file)"
    );
    metrics::describe_counter!(BUS_PUBLISHED, "events published to Redis for the other nodes");
    metrics::describe_gauge!(ROOM_WRITERS, "rooms with a running writer (sent to within chat.writer_idle)");
    metrics::describe_counter!(
        PRESENCE_ROOMS,
        "rooms a presence round looked at (read) or wrote its users of to Redis (written): rooms whose members changed"
    );
    metrics::describe_counter!(BUS_RECEIVED, "events received from the other nodes through Redis");
    metrics::describe_counter!(
        BUS_DROPPED,
        "events from the other nodes dropped because this node's fan-out was behind (repaired from the store)"
    );
    metrics::describe_gauge!(REDIS_CONNECTED, "1 while the Redis subscriber connection is up (absent without Redis)");
    metrics::describe_counter!(GAP_REPAIRED, "messages missed on the bus and fetched from the store instead");
    metrics::describe_counter!(AUTH_REQUESTS, "auth requests by action and outcome (ok or the error code)");
    metrics::describe_gauge!(READY, "1 when /ready would answer 200 (checked at each scrape)");
    metrics::describe_gauge!(DATABASE_UP, "1 when the database answered a ping at this scrape");
    metrics::describe_gauge!(BUILD_INFO, "always 1; the labels say which build runs");
}
