//! confab: a single-binary, real-time chat server.
//!
//! # Layout
//!
//! Layers, each importing only the ones below it (docs/ARCHITECTURE.md; `tests/layers.rs` reads
//! the sources and fails on an import against it):
//!
//! ```text
//! cli, app              the command line; building and running a node
//! http                  REST API (OpenAPI), WebSocket transports, ops endpoints, embedded UI
//!  ├─ chat              the real-time core: join/resume, send, hub, room writers, outboxes
//!  │   ├─ bus           fan-out between nodes: in-process, Redis, Redis Cluster
//!  │   │   └─ protocol  the wire: commands, replies, events, the two codecs (pure)
//!  │   └─ store         SQLite or PostgreSQL
//!  └─ auth              accounts, passwords, tokens (on the store)
//! domain                validated values (room names, content, seq…)
//! config, telemetry, ratelimit, sync, systemd: used by any layer
//! ```
//!
//! The one upward call is at run time: the bus hands events to the chat core's hub through
//! [`bus::EventHandler`], which the hub implements; the bus never imports `chat`.
//!
//! # The message path
//!
//! A `send_message` frame is read by the session loop ([`http::ws`]), decoded by its codec
//! ([`protocol::native`] or [`protocol::socketio`]) into a [`protocol::Command`], validated by
//! [`chat::ChatService`] and queued to the room's writer ([`chat::writer`]), which stores a
//! whole batch in one transaction (one seq range), acks each sender through its
//! [`chat::Outbox`] after the commit, encodes each message once ([`protocol::events`]) and
//! publishes the batch on the [`bus`]. The bus delivers to this node's hub at once — with Redis
//! too: local delivery never waits for Redis — and, with Redis, publishes for the other nodes,
//! whose subscribers hand the same bytes to their hubs. The hub ([`chat::hub`]) delivers in
//! `seq` order, holding early events back until a gap is repaired from the store, and writes
//! each event's frame (built once per codec) straight to every member's socket.
//!
//! - [`cli`] the command line; [`config`] typed configuration; [`telemetry`] logs and metrics;
//!   [`systemd`] readiness, watchdog and reload for the service manager.
//! - [`app`] builds a node from a config and runs it until stopped.
//! - [`domain`] validated newtypes (email, room name, content…) and the plain data of users,
//!   rooms and messages that every layer passes around.
//! - [`auth`] accounts, argon2 passwords, JWT access tokens, rotating refresh tokens.
//! - [`store`] durable state on SQLite or PostgreSQL.
//! - [`protocol`] the wire of docs/PROTOCOL.md, with no I/O.
//! - [`chat`] the real-time core; [`bus`] fan-out between nodes.
//! - [`http`] REST API (OpenAPI), WebSocket transports, operational endpoints, embedded UI.
//! - [`ratelimit`] keyed token buckets; [`sync`] locks that outlive panics, per-core tasks.

pub mod app;
pub mod auth;
pub mod bus;
pub mod chat;
pub mod cli;
pub mod config;
pub mod domain;
pub mod http;
pub mod protocol;
pub mod ratelimit;
pub mod store;
pub mod sync;
pub mod systemd;
pub mod telemetry;

pub use app::App;
pub use config::Config;
