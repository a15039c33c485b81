//! HTTP: the REST API, operational endpoints, the WebSocket upgrade and the embedded UI, with
//! the middleware every response passes through (security headers, CORS, JSON errors, body
//! limit, metrics and access log).

pub mod api;
pub mod error;
mod middleware;
mod ops;
pub mod server;
mod ui;
pub mod ws;

use std::{net::IpAddr, sync::Arc};

use poem::{
    Endpoint, EndpointExt, Request, Route,
    http::Method,
    middleware::{Compression, Cors},
};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{auth::AuthService, chat::ChatService, config::Config, ratelimit::KeyedLimiter, store::Store};

/// What every handler can reach: one pointer, cheap to clone, and small inside each of the
/// many long-lived WebSocket session tasks that hold it.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The node's shared state, behind [`AppState`].
pub struct Shared {
    pub config: Arc<Config>,
    pub store: Store,
    pub auth: AuthService,
    /// Per client IP, shared by all auth endpoints (like the original platform's limiter).
    pub auth_limiter: KeyedLimiter<IpAddr>,
    /// Per user: full-text searches (`limits.searches_per_minute`).
    pub search_limiter: KeyedLimiter<uuid::Uuid>,
    /// Addresses whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<[IpAddr]>,
    /// This instance's name, for `hello` frames and `/health`.
    pub node_id: Arc<str>,
    pub chat: ChatService,
    /// WebSocket sessions, so shutdown can wait for them to close.
    pub sessions: TaskTracker,
    /// Cancelled when the node starts shutting down: sessions close with 1001.
    pub shutdown: CancellationToken,
    /// Socket.IO connections still on long-polling, waiting to upgrade.
    pub polling: ws::polling::Registry,
}

/// All routes with their middleware.
pub fn routes(state: AppState) -> impl Endpoint + 'static {
    let api = api::service();
    let allow = middleware::AllowHeader::from_spec("/api", &api.spec());
    let spec = api.spec_endpoint();
    let docs = api.swagger_ui();
    let config = Arc::clone(&state.config);
    let mut route = Route::new()
        .nest("/api/openapi.json", spec)
        .nest("/api/docs", docs)
        .nest("/api", api)
        .at("/health", ops::health)
        .at("/ready", ops::ready);
    route = if config.metrics_listen.is_none() {
        route.at("/metrics", ops::metrics)
    } else {
        route.at("/metrics", ops::not_here)
    };
    // Compression stays off the WebSocket upgrade.
    let route = Route::new()
        .at("/ws", ws::native_endpoint)
        .at("/socket.io/", ws::socketio_endpoint)
        .at("/socket.io", ws::socketio_endpoint)
        .nest("/", route.nest("/", ui::endpoint()).with(Compression::new()));

    let cors = (!config.http.cors_origins.0.is_empty()).then(|| {
        Cors::new()
            .allow_origins(config.http.cors_origins.0.iter().map(String::as_str))
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers(["authorization", "content-type"])
            .allow_credentials(true)
            .max_age(600)
    });
    route
        .with_if(cors.is_some(), cors.unwrap_or_default())
        .with(middleware::SameOrigin)
        .with(middleware::BodyLimit::new(config.http.body_limit))
        .with(middleware::JsonErrors)
        .with(allow)
        .with(middleware::SecurityHeaders::new(config.http.hsts))
        .with(middleware::AccessLog)
        .data(state)
}

/// The endpoint serving only `/metrics`, for `metrics_listen`.
pub fn metrics_routes(state: AppState) -> impl Endpoint + 'static {
    Route::new().at("/metrics", ops::metrics).data(state)
}

/// The client's address: the peer, or — when the peer is a trusted proxy — the rightmost
/// address in `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(req: &Request, trusted: &[IpAddr]) -> IpAddr {
    let peer = req.remote_addr().as_socket_addr().map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip().to_canonical());
    if !trusted.contains(&peer) {
        return peer;
    }
    let forwarded = req.headers().get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>();
    forwarded
        .iter()
        .flat_map(|v| v.split(','))
        .rev()
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .find(|ip| !trusted.contains(ip))
        .unwrap_or(peer)
}
