//! Building the application from a [`Config`] and running it until asked to stop.
//!
//! `App::build` does everything that can fail at startup — open and migrate the database,
//! resolve the JWT key, bind the listeners (port 0 works, for tests) — so that `run_until_stopped`
//! only serves.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    auth::{AuthService, PasswordHasher, TokenKeys, password::HashLimits, token},
    bus::Bus,
    chat::{ChatService, ChatSettings, hub::Hub, registry::SessionRegistry},
    config::Config,
    http::{self, AppState},
    ratelimit::KeyedLimiter,
    store::Store,
};

/// The settings key under which a generated JWT key is kept.
const JWT_SECRET_SETTING: &str = "jwt_secret";

/// A built, bound, not yet serving confab node.
pub struct App {
    state: AppState,
    listener: TcpListener,
    local_addr: SocketAddr,
    metrics: Option<(TcpListener, SocketAddr)>,
    /// Stops background tasks (the Redis bus) once sessions are done.
    background: CancellationToken,
    background_tasks: TaskTracker,
}

/// Opens the configured store, applying migrations if `migrate` is set.
pub async fn open_store(config: &Config, migrate: bool) -> anyhow::Result<Store> {
    let kind = config.database_kind()?;
    let store = Store::connect(kind, config.database.url.expose(), config.database.max_connections)
        .await
        .with_context(|| format!("cannot open database {}", crate::config::redact_url(config.database.url.expose())))?;
    if migrate {
        let applied = store.migrate().await.context("cannot apply database migrations")?;
        if applied > 0 {
            tracing::info!(applied, backend = store.backend(), "database migrated");
        }
    }
    Ok(store)
}

impl App {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        // Install the recorder before anything counts, or early metrics are lost.
        let _ = crate::telemetry::metrics_handle();
        let store = open_store(&config, config.auto_migrate).await?;
        crate::telemetry::init_series(store.backend(), config.redis.url.is_some());
        let secret = match &config.auth.jwt_secret {
            Some(secret) => secret.expose().to_owned(),
            // Kept in the database so every node sharing it, and every restart, agree.
            None => store
                .setting_or_insert(JWT_SECRET_SETTING, &token::new_secret())
                .await
                .context("cannot read or store the generated JWT key")?,
        };
        let hasher = PasswordHasher::with_limits(&config.auth.argon2, HashLimits::from_config(&config.auth))?;
        let keys = TokenKeys::new(secret.as_bytes(), config.auth.access_token_ttl.0);
        let auth = AuthService::new(store.clone(), hasher, keys, config.auth.refresh_token_ttl.0);

        let listen = config.listen_addr()?;
        let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let local_addr = listener.local_addr().context("listener has no address")?;
        let metrics = match &config.metrics_listen {
            Some(addr) => {
                let listener = TcpListener::bind(addr.as_str())
                    .await
                    .with_context(|| format!("cannot listen on {addr} (metrics_listen)"))?;
                let addr = listener.local_addr().context("metrics listener has no address")?;
                Some((listener, addr))
            }
            None => None,
        };
        let hub = Hub::new(store.clone(), SessionRegistry::new(config.ws.max_sessions_per_user));
        let background = CancellationToken::new();
        let background_tasks = TaskTracker::new();
        // The bus delivers to the hub through `bus::EventHandler`: the bus never imports the core.
        let handler: Arc<dyn crate::bus::EventHandler> = Arc::clone(&hub) as _;
        let bus = match &config.redis.url {
            Some(url) => Bus::redis(&config.redis, Arc::clone(&handler), background.clone(), &background_tasks)
                .await
                .with_context(|| {
                let shown: Vec<String> = url.expose().split(',').map(crate::config::redact_url).collect();
                format!("cannot connect to Redis at {}", shown.join(","))
            })?,
            None => Bus::local(handler),
        };
        let chat = ChatService::new(
            hub,
            bus,
            store.clone(),
            ChatSettings {
                message_max_len: config.chat.message_max_len,
                messages_per_second: config.limits.messages_per_second,
                message_burst: config.limits.message_burst,
                joins_per_second: config.limits.joins_per_second,
                join_burst: config.limits.join_burst,
                max_rooms_per_session: config.chat.max_rooms_per_session,
                outbound_queue: config.ws.outbound_queue,
                auto_create_rooms: config.rooms.auto_create,
                presence_interval: config.chat.presence_interval.0,
                presence_ttl: config.chat.presence_ttl.0,
                search_index_interval: config.chat.search_index_interval.0,
                writer_idle: config.chat.writer_idle.0,
            },
        );
        let node_id = config.node_id.clone().unwrap_or_else(|| format!("{}:{}", hostname(), local_addr.port()));
        let trusted_proxies = config.trusted_proxies()?.into();
        let state = AppState::new(crate::http::Shared {
            auth_limiter: KeyedLimiter::per_minute(config.limits.auth_per_minute),
            search_limiter: KeyedLimiter::per_minute(config.limits.searches_per_minute),
            config: Arc::new(config),
            store,
            auth,
            trusted_proxies,
            node_id: node_id.into(),
            chat,
            sessions: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            polling: crate::http::ws::polling::Registry::default(),
        });
        Ok(Self { state, listener, local_addr, metrics, background, background_tasks })
    }

    /// The address the HTTP server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address `/metrics` is served on, when it has its own listener.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(_, a)| *a)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then drains for up to `shutdown.grace`.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Self { state, listener, local_addr, metrics, background, background_tasks } = self;
        {
            let (chat, stop) = (state.chat.clone(), background.clone());
            background_tasks.spawn(async move { chat.run_presence(stop).await });
            let (chat, stop) = (state.chat.clone(), background.clone());
            background_tasks.spawn(async move { chat.run_search_indexer(stop).await });
        }
        let limits = http::server::ConnectionLimits {
            header_read_timeout: state.config.http.header_read_timeout.0,
            max_connections_per_ip: state.config.http.max_connections_per_ip,
            exempt: Arc::clone(&state.trusted_proxies),
        };
        let stop = state.shutdown.clone();
        let grace = state.config.shutdown.grace.0;
        tracing::info!(
            addr = %local_addr,
            node = %state.node_id,
            database = state.store.backend(),
            bus = state.chat.bus().name(),
            version = env!("CARGO_PKG_VERSION"),
            "confab listening"
        );
        crate::systemd::ready(&format!("listening on {local_addr}"));
        background_tasks.spawn(crate::systemd::watchdog(background.clone()));

        let sweeper = {
            let limiter = state.auth_limiter.clone();
            let searches = state.search_limiter.clone();
            let chat = state.chat.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tokio::select! {
                        _ = every.tick() => {
                            limiter.sweep();
                            searches.sweep();
                            chat.sweep();
                        }
                        () = stop.cancelled() => break,
                    }
                }
            })
        };
        let revocations = {
            let (chat, stop, node) = (state.chat.clone(), stop.clone(), state.node_id.clone());
            let every = state.config.auth.revocation_check_interval.0;
            tokio::spawn(async move { chat.watch_revocations(every, node, stop).await })
        };
        let metrics_server = metrics.map(|(listener, addr)| {
            tracing::info!(%addr, "metrics listening");
            let (stop, limits, state) = (stop.clone(), limits.clone(), state.clone());
            tokio::spawn(async move {
                let stopped = stop.cancelled_owned();
                let routes = http::metrics_routes(state);
                http::server::serve(listener, routes, limits, stopped, Duration::from_secs(1)).await;
            })
        });

        let store = state.store.clone();
        let (sessions, chat) = (state.sessions.clone(), state.chat.clone());
        let signal = {
            let stop = stop.clone();
            async move {
                shutdown.await;
                tracing::info!("shutting down");
                crate::systemd::stopping();
                stop.cancel();
            }
        };
        http::server::serve(listener, http::routes(state), limits, signal, grace).await;
        stop.cancel();
        // Sessions saw `stop` and are closing with 1001 once their in-flight sends are acked.
        sessions.close();
        if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
            tracing::warn!(remaining = sessions.len(), "sessions still open after the grace period");
        }
        chat.drain(grace).await;
        background.cancel();
        background_tasks.close();
        // The bus removes this node from the cluster's presence on its way out.
        let _ = tokio::time::timeout(Duration::from_secs(2), background_tasks.wait()).await;
        let _ = sweeper.await;
        let _ = revocations.await;
        if let Some(task) = metrics_server {
            let _ = task.await;
        }
        store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "confab".into())
}
