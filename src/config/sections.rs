//! The sections of the configuration (`[database]`, `[auth]`, `[chat]`…): their keys, what each
//! one means, and its default.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, HumanDuration, List, Secret, redact_url};

/// `chat.message_max_len` unless configured (the original platform's limit).
pub const DEFAULT_MESSAGE_MAX_LEN: usize = 2000;

/// Who may create an account with `POST /api/auth/register`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// Anyone (the quick start).
    #[default]
    Open,
    /// Whoever holds a single-use invitation code from an administrator.
    Invite,
    /// Nobody: administrators create accounts with `confab create-user`.
    Closed,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (file and folder are created) or `postgres://user:pass@host/db`.
    pub url: Secret,
    /// Upper bound on pooled connections.
    pub max_connections: u32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db`; unset means in-process fan-out on a single node. With `cluster`,
    /// one or more comma-separated seed nodes of a Redis Cluster.
    pub url: Option<Secret>,
    /// `url` names a Redis Cluster: rooms are spread over its shards with sharded pub/sub.
    pub cluster: bool,
    /// Prefix of every Redis key and channel, so several deployments can share one Redis.
    pub prefix: String,
}

impl RedisConfig {
    /// The server URL, or the cluster's seed URLs, trimmed; empty when unset.
    pub fn urls(&self) -> Vec<&str> {
        self.url
            .as_ref()
            .map(|u| u.expose().split(',').map(str::trim).filter(|u| !u.is_empty()).collect())
            .unwrap_or_default()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.url {
            let urls = self.urls();
            if urls.len() > 1 && !self.cluster {
                return Err(ConfigError::invalid(
                    "redis.url",
                    "several URLs name the seed nodes of a Redis Cluster: set redis.cluster = true, or give one URL",
                ));
            }
            if urls.is_empty() {
                return Err(ConfigError::invalid(
                    "redis.url",
                    format!("`{}` names no server", redact_url(url.expose())),
                ));
            }
            for one in urls {
                let parsed = url::Url::parse(one).map_err(|e| {
                    ConfigError::invalid("redis.url", format!("not a URL ({e}); use redis://HOST:PORT"))
                })?;
                let schemes: &[&str] =
                    if self.cluster { &["redis", "rediss"] } else { &["redis", "rediss", "unix", "redis+unix"] };
                if !schemes.contains(&parsed.scheme()) {
                    return Err(ConfigError::invalid(
                        "redis.url",
                        format!("unknown scheme `{}`; use redis://HOST:PORT", parsed.scheme()),
                    ));
                }
            }
        } else if self.cluster {
            return Err(ConfigError::invalid("redis.cluster", "set redis.url to the cluster's seed nodes"));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 key for access tokens; unset means one is generated once and kept in the database.
    pub jwt_secret: Option<Secret>,
    pub access_token_ttl: HumanDuration,
    pub refresh_token_ttl: HumanDuration,
    /// How often each node looks for revoked accounts (disabled, password changed, signed out
    /// everywhere) and closes their live sessions: the bound on how long a revoked session runs.
    pub revocation_check_interval: HumanDuration,
    /// Password hashes (register, login, set-password) running at once, each on its own
    /// thread and holding `argon2.memory_kib`; 0 means one per core.
    pub hash_concurrency: u32,
    /// Password checks that may wait for a hashing thread; more are answered 503 at once.
    pub hash_queue: u32,
    /// Longest a password check waits for a hashing thread before it is answered 503.
    pub hash_queue_timeout: HumanDuration,
    pub argon2: Argon2Config,
    /// Who may register: `open`, `invite` (with a code from `confab invite create` or
    /// `POST /api/admin/invites`) or `closed`.
    pub registration: Registration,
    /// How long a new invitation code stays valid.
    pub invite_ttl: HumanDuration,
}

/// argon2id cost; the defaults are OWASP's recommendation (19 MiB, 2 passes, 1 lane).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Argon2Config {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Browser origins allowed to call the API and open WebSockets; empty means same-origin only.
    pub cors_origins: List,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// Peers whose `X-Forwarded-For` is believed (a reverse proxy's address).
    pub trusted_proxies: List,
    /// Send `Strict-Transport-Security` (only behind HTTPS).
    pub hsts: bool,
    /// A request's headers must arrive whole within this, and an idle keep-alive connection
    /// is closed after it: half-sent requests cannot hold connections open.
    pub header_read_timeout: HumanDuration,
    /// Open connections (WebSockets included) per client address; trusted proxies are exempt.
    /// 0 means no limit.
    pub max_connections_per_ip: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    /// Longest message, in characters after trimming.
    pub message_max_len: usize,
    /// Rooms one connection may be in at once: bounds what one socket makes the node hold.
    pub max_rooms_per_session: usize,
    /// Different reactions one message may carry: bounds the rows and events one message
    /// collects.
    pub max_reactions_per_message: u32,
    /// How long after sending its author may edit a message; 0 means no limit.
    pub edit_window: HumanDuration,
    /// How often each node gathers presence changes and tells its members (changes within
    /// one interval are coalesced).
    pub presence_interval: HumanDuration,
    /// How long a node's presence entries outlive its last refresh: a node that dies without
    /// saying so has its users go offline after this.
    pub presence_ttl: HumanDuration,
    /// How often each node indexes the messages it stored for full-text search (in batches,
    /// outside the commits that ack them). A search on the node that stored a message finds it
    /// at once; on another node, within this.
    pub search_index_interval: HumanDuration,
    /// How long a room's writer (its group-commit task and send queue) lives after the last
    /// send; a room that is only read holds none.
    pub writer_idle: HumanDuration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomsConfig {
    /// Joining a room that does not exist creates it as a public room (how the original
    /// platform's clients use free-form room names); false: only rooms created with
    /// `POST /api/rooms` can be joined.
    pub auto_create: bool,
    /// Most rooms one account may create with `POST /api/rooms` (those it made by joining a new
    /// name count too; direct rooms do not); 0 means no limit.
    pub max_created_per_user: u32,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self { auto_create: true, max_created_per_user: 100 }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Register/login/refresh/logout requests per client IP per minute; 0 disables the limit.
    pub auth_per_minute: u32,
    /// Sustained messages per user per second; 0 disables the limit.
    pub messages_per_second: u32,
    /// Messages a user may send in a burst above the sustained rate.
    pub message_burst: u32,
    /// Sustained `join_room` + `leave_room` commands per user per second (each announces itself
    /// to the room); 0 disables the limit.
    pub joins_per_second: u32,
    /// Joins and leaves a user may make in a burst: enough for a reconnecting client to rejoin
    /// every room it was in at once.
    pub join_burst: u32,
    /// Full-text searches per user per minute (each one reads an index and possibly many
    /// rows); 0 disables the limit.
    pub searches_per_minute: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Largest accepted WebSocket frame, in bytes.
    pub max_frame: usize,
    /// Frames queued for one connection before it is considered too slow and closed.
    pub outbound_queue: usize,
    /// How often the server pings an idle connection.
    pub ping_interval: HumanDuration,
    /// A connection that has sent nothing (not even a pong) for this long is dropped.
    pub idle_timeout: HumanDuration,
    /// Open WebSocket sessions (native and Socket.IO together) one account may have on this
    /// node; one more is refused with close code 1008. 0 means no limit.
    pub max_sessions_per_user: u32,
    /// How long a new connection may take to authenticate (the Socket.IO CONNECT, over
    /// polling or WebSocket) before it is dropped.
    pub handshake_timeout: HumanDuration,
    /// Socket.IO long-polling connections not yet upgraded to WebSocket; one more is answered
    /// 503 `busy`.
    pub max_pending_handshakes: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long SIGTERM waits for in-flight work before closing what is left.
    pub grace: HumanDuration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self { url: Secret::new("sqlite://data/confab.db"), max_connections: 16 }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            access_token_ttl: HumanDuration(Duration::from_secs(15 * 60)),
            refresh_token_ttl: HumanDuration(Duration::from_secs(30 * 24 * 3600)),
            revocation_check_interval: HumanDuration(Duration::from_secs(2)),
            hash_concurrency: 0,
            hash_queue: 32,
            hash_queue_timeout: HumanDuration(Duration::from_secs(2)),
            argon2: Argon2Config::default(),
            registration: Registration::Open,
            invite_ttl: HumanDuration(Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

impl Default for Argon2Config {
    fn default() -> Self {
        Self { memory_kib: 19_456, iterations: 2, parallelism: 1 }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            cors_origins: List::default(),
            body_limit: 64 * 1024,
            trusted_proxies: List::default(),
            hsts: false,
            header_read_timeout: HumanDuration(Duration::from_secs(10)),
            max_connections_per_ip: 256,
        }
    }
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            message_max_len: DEFAULT_MESSAGE_MAX_LEN,
            max_rooms_per_session: 256,
            max_reactions_per_message: 20,
            edit_window: HumanDuration(Duration::ZERO),
            presence_interval: HumanDuration(Duration::from_secs(2)),
            presence_ttl: HumanDuration(Duration::from_secs(15)),
            search_index_interval: HumanDuration(Duration::from_millis(500)),
            writer_idle: HumanDuration(Duration::from_secs(30)),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            auth_per_minute: 20,
            messages_per_second: 10,
            message_burst: 20,
            joins_per_second: 20,
            join_burst: 300,
            searches_per_minute: 60,
        }
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            max_frame: 64 * 1024,
            outbound_queue: 1024,
            ping_interval: HumanDuration(Duration::from_secs(25)),
            idle_timeout: HumanDuration(Duration::from_secs(60)),
            max_sessions_per_user: 20,
            handshake_timeout: HumanDuration(Duration::from_secs(10)),
            max_pending_handshakes: 1024,
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { grace: HumanDuration(Duration::from_secs(10)) }
    }
}

/// Which database the URL points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatabaseKind {
    Sqlite,
    Postgres,
}
