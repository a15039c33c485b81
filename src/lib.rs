//! confab: a single-binary, real-time chat server.
//!
//! # Layout
//!
//! - [`cli`] the command line; [`config`] typed configuration; [`telemetry`] logs and metrics;
//!   [`systemd`] readiness, watchdog and reload for the service manager.
//! - [`app`] builds a node from a config and runs it until stopped.
//! - [`domain`] validated newtypes (email, room name, content…) and the plain data of users,
//!   rooms and messages that every layer passes around.
//! - [`auth`] accounts, argon2 passwords, JWT access tokens, rotating refresh tokens.
//! - [`store`] durable state on SQLite or PostgreSQL.
//! - [`chat`] the real-time core: hub (rooms, in-order delivery), room writers (group commit),
//!   sessions; [`bus`] fan-out between nodes (in-process, Redis pub/sub, or sharded pub/sub on a
//!   Redis Cluster).
//! - [`http`] REST API (OpenAPI), WebSocket transports, operational endpoints, embedded UI.
//! - [`ratelimit`] keyed token buckets.
//!
//! Dependencies point inward: `http` → `chat` → (`store`, `bus`) → `domain`.

pub mod app;
pub mod auth;
pub mod bus;
pub mod chat;
pub mod cli;
pub mod config;
pub mod domain;
pub mod http;
pub mod ratelimit;
pub mod store;
pub mod sync;
pub mod systemd;
pub mod telemetry;

pub use app::App;
pub use config::Config;
