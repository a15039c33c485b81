//! The REST API as a client sees it, against the real app on a real database: one test binary,
//! one module per feature. Tests that touch storage run on SQLite and on PostgreSQL
//! (`CONFAB_TEST_DATABASE_URL`), see `both_backends!`.

#[path = "../common/mod.rs"]
mod common;
mod helpers;

mod abuse;
mod acl;
mod auth;
mod backup;
mod cluster;
mod fixtures;
mod history;
mod limits;
mod moderation;
mod ops;
mod ordering;
mod presence;
mod reactions;
mod reads;
mod redis_cluster;
mod revocation;
mod rooms;
mod search;
mod secret;
mod security;
mod tokens;
mod validation;
mod ws;
mod ws_errors;
