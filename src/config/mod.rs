//! Typed configuration: built-in defaults < config file < the original platform's variables
//! (`PORT`, `DATABASE_URL`, …) < `CONFAB_*` environment < CLI flags.
//!
//! Everything an operator can set lives here, with its default, and `Config::validate` is the one
//! place that decides whether a value is usable. Its errors name the key and the fix, because the
//! person reading them is at a terminal during a deploy, not in a debugger.
//!
//! This file loads and validates the whole; `sections` defines each section's keys (`[auth]`,
//! `[chat]`…) with their defaults, and `values` how values are written (secrets, durations such
//! as `15m`, comma-separated lists). Every type is re-exported here as `crate::config::X`.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

mod sections;
mod values;

pub use sections::{
    Argon2Config, AuthConfig, ChatConfig, DEFAULT_MESSAGE_MAX_LEN, DatabaseConfig, DatabaseKind, HttpConfig,
    LimitsConfig, RedisConfig, Registration, RoomsConfig, ShutdownConfig, WsConfig,
};
pub use values::{HumanDuration, List, Secret};

/// The configuration file looked for when `--config` is not given, in order.
pub const DEFAULT_CONFIG_PATHS: [&str; 2] = ["confab.toml", "/etc/confab/confab.toml"];

/// The original platform's environment variables and the key each one sets, so its `.env`
/// files keep working. `PORT` is handled separately: it sets only the port of `listen`.
const LEGACY_ENV: [(&str, &str); 5] = [
    ("DATABASE_URL", "database.url"),
    ("REDIS_URL", "redis.url"),
    ("JWT_SECRET", "auth.jwt_secret"),
    ("CORS_ORIGIN", "http.cors_origins"),
    ("MESSAGE_MAX_LEN", "chat.message_max_len"),
];

/// A configuration problem, always tied to the key that causes it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: `{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("cannot read config file {path}: {message}")]
    File { path: PathBuf, message: String },
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>) -> Self {
        Self::Invalid { key: key.to_owned(), message: message.into() }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines for a terminal or journald.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The whole configuration. Field docs are the documentation of each key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP and WebSocket server binds to.
    pub listen: String,
    /// Optional separate address for `/metrics`; unset serves it on `listen`.
    pub metrics_listen: Option<String>,
    /// Name of this instance in `hello` frames and logs; defaults to the host name and port.
    pub node_id: Option<String>,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// tracing filter directive, e.g. `info` or `confab=debug,info`; `RUST_LOG` overrides it.
    pub log_level: String,
    /// Apply pending migrations when `serve` starts.
    pub auto_migrate: bool,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub auth: AuthConfig,
    pub http: HttpConfig,
    pub chat: ChatConfig,
    pub rooms: RoomsConfig,
    pub limits: LimitsConfig,
    pub ws: WsConfig,
    pub shutdown: ShutdownConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:4000".into(),
            metrics_listen: None,
            node_id: None,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            auto_migrate: true,
            database: DatabaseConfig::default(),
            redis: RedisConfig { url: None, cluster: false, prefix: "confab".into() },
            auth: AuthConfig::default(),
            http: HttpConfig::default(),
            chat: ChatConfig::default(),
            rooms: RoomsConfig::default(),
            limits: LimitsConfig::default(),
            ws: WsConfig::default(),
            shutdown: ShutdownConfig::default(),
        }
    }
}

/// The configuration file [`Config::load`] reads for `path`: it, or the first default that exists.
pub fn config_file(path: Option<&Path>) -> Option<PathBuf> {
    match path {
        Some(p) => Some(p.to_owned()),
        None => DEFAULT_CONFIG_PATHS.iter().map(PathBuf::from).find(|p| p.exists()),
    }
}

/// Warns when `path` (a configuration or environment file) holds a secret — a JWT key, or a
/// URL with a password — and any other user may read it.
pub fn warn_if_secrets_exposed(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let Ok(meta) = std::fs::metadata(path) else { return };
        if meta.permissions().mode() & 0o004 == 0 {
            return;
        }
        let Ok(text) = std::fs::read_to_string(path) else { return };
        let secret = text.lines().map(str::trim).filter(|l| !l.starts_with('#')).any(|line| {
            let lower = line.to_ascii_lowercase();
            lower.contains("jwt_secret")
                || lower.contains("password")
                || line
                    .split("://")
                    .nth(1)
                    .is_some_and(|rest| rest.split('/').next().is_some_and(|a| a.contains(':') && a.contains('@')))
        });
        if secret {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "this file holds secrets and every user may read it: chmod o-r it"
            );
        }
    }
}

impl Config {
    /// Loads the configuration from the file at `path` (or the default locations) and the
    /// process environment, then validates it.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        if let Some(p) = path
            && !p.exists()
        {
            return Err(ConfigError::File { path: p.to_owned(), message: "no such file".into() });
        }
        let file = config_file(path);
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = &file {
            figment = figment.merge(Toml::file_exact(file));
        }
        let legacy = Env::raw()
            .only(&LEGACY_ENV.map(|(var, _)| var))
            .map(|var| LEGACY_ENV.iter().find(|(v, _)| var == *v).map_or(var.into(), |(_, key)| (*key).into()));
        figment = figment.merge(legacy).merge(
            Env::prefixed("CONFAB_")
                // Variables of the test harness and the CLI, not configuration keys.
                // (figment keeps the variable's case here, hence the lowercasing.)
                .filter(|key| {
                    let key = key.as_str().to_ascii_lowercase();
                    !key.starts_with("test_") && key != "config"
                })
                .split("__"),
        );
        let mut config: Config = figment.extract().map_err(|e| ConfigError::Parse(one_line(&e)))?;
        if let Ok(port) = std::env::var("PORT")
            && std::env::var_os("CONFAB_LISTEN").is_none()
        {
            config.listen = with_port(&config.listen, &port)?;
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every value that can be wrong independently of the environment.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        if let Some(addr) = &self.metrics_listen {
            addr.parse::<SocketAddr>()
                .map_err(|_| ConfigError::invalid("metrics_listen", format!("`{addr}` is not HOST:PORT")))?;
        }
        self.database_kind()?;
        in_range("database.max_connections", self.database.max_connections, 1, 1000)?;
        self.redis.validate()?;
        if self.redis.prefix.is_empty() || self.redis.prefix.contains(char::is_whitespace) {
            return Err(ConfigError::invalid("redis.prefix", "must be non-empty, without spaces"));
        }
        if let Some(secret) = &self.auth.jwt_secret
            && secret.expose().len() < 32
        {
            return Err(ConfigError::invalid(
                "auth.jwt_secret",
                "shorter than 32 bytes: set CONFAB_AUTH__JWT_SECRET to 32+ random bytes, or unset it to have one generated",
            ));
        }
        duration_in_range("auth.access_token_ttl", self.auth.access_token_ttl, 10, 7 * 24 * 3600)?;
        duration_in_range("auth.refresh_token_ttl", self.auth.refresh_token_ttl, 60, 365 * 24 * 3600)?;
        let check = self.auth.revocation_check_interval.0;
        if check < Duration::from_millis(100) || check > Duration::from_secs(60) {
            return Err(ConfigError::invalid("auth.revocation_check_interval", "out of range; use 100ms to 60s"));
        }
        in_range("auth.argon2.memory_kib", self.auth.argon2.memory_kib, 8, 4 * 1024 * 1024)?;
        in_range("auth.hash_concurrency", self.auth.hash_concurrency, 0, 256)?;
        in_range("auth.hash_queue", self.auth.hash_queue, 0, 100_000)?;
        duration_in_range("auth.hash_queue_timeout", self.auth.hash_queue_timeout, 0, 60)?;
        in_range("auth.argon2.iterations", self.auth.argon2.iterations, 1, 100)?;
        in_range("auth.argon2.parallelism", self.auth.argon2.parallelism, 1, 64)?;
        for origin in &self.http.cors_origins.0 {
            if origin == "*" {
                return Err(ConfigError::invalid(
                    "http.cors_origins",
                    "`*` is not allowed (credentials are sent); list each origin, e.g. https://chat.example.com",
                ));
            }
            let parsed = url::Url::parse(origin).map_err(|_| {
                ConfigError::invalid("http.cors_origins", format!("`{origin}` is not an origin like https://host:port"))
            })?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                return Err(ConfigError::invalid(
                    "http.cors_origins",
                    format!("`{origin}` is not an origin like https://host:port"),
                ));
            }
        }
        self.trusted_proxies()?;
        in_range("http.body_limit", self.http.body_limit, 1024, 64 * 1024 * 1024)?;
        duration_in_range("http.header_read_timeout", self.http.header_read_timeout, 1, 3600)?;
        in_range("http.max_connections_per_ip", self.http.max_connections_per_ip, 0, 10_000_000)?;
        in_range("chat.message_max_len", self.chat.message_max_len, 1, 100_000)?;
        in_range("limits.auth_per_minute", self.limits.auth_per_minute, 0, 1_000_000)?;
        in_range("limits.messages_per_second", self.limits.messages_per_second, 0, 1_000_000)?;
        in_range("limits.message_burst", self.limits.message_burst, 1, 1_000_000)?;
        in_range("limits.joins_per_second", self.limits.joins_per_second, 0, 1_000_000)?;
        in_range("limits.join_burst", self.limits.join_burst, 1, 1_000_000)?;
        in_range("limits.searches_per_minute", self.limits.searches_per_minute, 0, 1_000_000)?;
        in_range("chat.max_rooms_per_session", self.chat.max_rooms_per_session, 1, 100_000)?;
        in_range("chat.max_reactions_per_message", self.chat.max_reactions_per_message, 1, 1000)?;
        if self.chat.presence_interval.0 < Duration::from_millis(100) {
            return Err(ConfigError::invalid("chat.presence_interval", "must be at least 100ms"));
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&self.chat.search_index_interval.0) {
            return Err(ConfigError::invalid("chat.search_index_interval", "must be between 10ms and 1h"));
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&self.chat.writer_idle.0) {
            return Err(ConfigError::invalid("chat.writer_idle", "must be between 10ms and 1h"));
        }
        if self.chat.presence_ttl.0 < self.chat.presence_interval.0 * 2 {
            return Err(ConfigError::invalid("chat.presence_ttl", "must be at least twice chat.presence_interval"));
        }
        in_range("ws.max_sessions_per_user", self.ws.max_sessions_per_user, 0, 1_000_000)?;
        duration_in_range("ws.handshake_timeout", self.ws.handshake_timeout, 1, 600)?;
        in_range("ws.max_pending_handshakes", self.ws.max_pending_handshakes, 1, 10_000_000)?;
        in_range("ws.max_frame", self.ws.max_frame, 1024, 16 * 1024 * 1024)?;
        in_range("ws.outbound_queue", self.ws.outbound_queue, 8, 1_000_000)?;
        duration_in_range("ws.ping_interval", self.ws.ping_interval, 1, 3600)?;
        duration_in_range("ws.idle_timeout", self.ws.idle_timeout, 2, 7200)?;
        if self.ws.idle_timeout.0 <= self.ws.ping_interval.0 {
            return Err(ConfigError::invalid("ws.idle_timeout", "must be longer than ws.ping_interval"));
        }
        duration_in_range("shutdown.grace", self.shutdown.grace, 0, 3600)?;
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            ConfigError::invalid("listen", format!("`{}` is not HOST:PORT, e.g. 0.0.0.0:4000", self.listen))
        })
    }

    pub fn database_kind(&self) -> Result<DatabaseKind, ConfigError> {
        let url = self.database.url.expose();
        match url.split_once(':').map(|(scheme, _)| scheme) {
            Some("sqlite") => Ok(DatabaseKind::Sqlite),
            Some("postgres" | "postgresql") => {
                url::Url::parse(url).map_err(|e| ConfigError::invalid("database.url", format!("not a URL ({e})")))?;
                Ok(DatabaseKind::Postgres)
            }
            Some(other) => Err(ConfigError::invalid(
                "database.url",
                format!("unknown scheme `{other}`; use sqlite://PATH or postgres://USER@HOST/DB"),
            )),
            None => {
                Err(ConfigError::invalid("database.url", "not a URL; use sqlite://PATH or postgres://USER@HOST/DB"))
            }
        }
    }

    /// Trusted proxy addresses, parsed.
    pub fn trusted_proxies(&self) -> Result<Vec<IpAddr>, ConfigError> {
        self.http
            .trusted_proxies
            .0
            .iter()
            .map(|p| {
                p.parse()
                    .map_err(|_| ConfigError::invalid("http.trusted_proxies", format!("`{p}` is not an IP address")))
            })
            .collect()
    }

    /// The configuration as TOML with every secret replaced by `***` (passwords inside URLs too).
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database.url = Secret::new(redact_url(shown.database.url.expose()));
        shown.redis.url =
            shown.redis.url.map(|u| Secret::new(u.expose().split(',').map(redact_url).collect::<Vec<_>>().join(",")));
        shown.auth.jwt_secret = shown.auth.jwt_secret.map(|_| Secret::new("***"));
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

/// `postgres://user:pw@host/db` → `postgres://user:***@host/db`; other URLs unchanged.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => raw.to_owned(),
    }
}

fn with_port(listen: &str, port: &str) -> Result<String, ConfigError> {
    let port: u16 =
        port.trim().parse().map_err(|_| ConfigError::invalid("PORT", format!("`{port}` is not a port number")))?;
    let mut addr: SocketAddr = listen
        .parse()
        .map_err(|_| ConfigError::invalid("listen", format!("`{listen}` is not HOST:PORT, e.g. 0.0.0.0:4000")))?;
    addr.set_port(port);
    Ok(addr.to_string())
}

fn in_range<T: PartialOrd + fmt::Display + Copy>(key: &str, value: T, min: T, max: T) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::invalid(key, format!("{value} is out of range; use {min} to {max}")));
    }
    Ok(())
}

fn duration_in_range(key: &str, value: HumanDuration, min_secs: u64, max_secs: u64) -> Result<(), ConfigError> {
    if value.0 < Duration::from_secs(min_secs) || value.0 > Duration::from_secs(max_secs) {
        return Err(ConfigError::invalid(
            key,
            format!(
                "{} is out of range; use {} to {}",
                humantime::format_duration(value.0),
                humantime::format_duration(Duration::from_secs(min_secs)),
                humantime::format_duration(Duration::from_secs(max_secs))
            ),
        ));
    }
    Ok(())
}

/// figment errors can span lines and list several problems; operators get the first, on one line.
fn one_line(e: &figment::Error) -> String {
    // figment names keys with their profile ("default.listen"); operators know them as "listen".
    e.to_string().replace('\n', " ").replace("\"default.", "\"").replace("`default.", "`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().expect("defaults validate");
    }

    #[test]
    fn unknown_database_scheme_names_the_key() {
        let mut c = Config::default();
        c.database.url = Secret::new("mysql://x");
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("database.url") && err.contains("mysql"), "{err}");
    }

    #[test]
    fn redaction_hides_passwords_and_secrets() {
        let mut c = Config::default();
        c.database.url = Secret::new("postgres://u:hunter2@db/confab");
        c.auth.jwt_secret = Some(Secret::new("x".repeat(40)));
        let shown = c.redacted_toml();
        assert!(!shown.contains("hunter2") && !shown.contains(&"x".repeat(40)), "{shown}");
        assert!(shown.contains("u:***@db"), "{shown}");
    }

    #[test]
    fn a_cluster_is_a_list_of_seed_urls_and_says_so() {
        let mut c = Config::default();
        c.redis.url = Some(Secret::new("redis://:pw1@a:7000, redis://:pw2@b:7001"));
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("redis.cluster = true"), "{err}");
        c.redis.cluster = true;
        c.validate().expect("a cluster with two seeds");
        assert_eq!(c.redis.urls(), vec!["redis://:pw1@a:7000", "redis://:pw2@b:7001"]);
        let shown = c.redacted_toml();
        assert!(!shown.contains("pw1") && !shown.contains("pw2"), "{shown}");
        c.redis.url = Some(Secret::new("unix:///run/redis.sock"));
        assert!(c.validate().unwrap_err().to_string().contains("unknown scheme"));
        c.redis.url = None;
        assert!(c.validate().unwrap_err().to_string().contains("redis.cluster"));
    }
}
