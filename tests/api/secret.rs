//! A JWT key generated because none is configured is kept in the database: tokens survive a
//! restart, and every node sharing the database signs and verifies with the same key.

use std::sync::Arc;

use reqwest::StatusCode;

use crate::{
    common::{Backend, TestDb, both_backends},
    helpers::{PASSWORD, expect_error, expect_json, spawn_app_on, spawn_app_with},
};

both_backends!(a_generated_jwt_key_survives_a_restart);

async fn a_generated_jwt_key_survives_a_restart(backend: Backend) {
    let first = spawn_app_with(backend, |cfg| cfg.auth.jwt_secret = None).await;
    assert!(first.jwt_secret.is_none());
    let session = first.register("olga@example.com").await;
    expect_json(first.me(&session.token).await, StatusCode::OK).await;
    let db = Arc::clone(&first.db);
    first.stop().await;

    let second = spawn_app_on(Arc::clone(&db), |cfg| cfg.auth.jwt_secret = None).await;
    let me = expect_json(second.me(&session.token).await, StatusCode::OK).await;
    assert_eq!(me["email"], "olga@example.com");
    expect_json(second.refresh(&session.refresh_token).await, StatusCode::OK).await;
    second.login("olga@example.com", PASSWORD).await;

    // Control: the key is generated, not a constant — another database has another key.
    let elsewhere = spawn_app_with(backend, |cfg| cfg.auth.jwt_secret = None).await;
    expect_error(elsewhere.me(&session.token).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

/// Two nodes starting at once on one PostgreSQL database race to store the key; both must end
/// up with the winner's, so a token from one works on the other, both ways.
#[tokio::test]
async fn two_nodes_on_one_postgres_database_agree_on_the_generated_key() {
    if !Backend::Postgres.available() {
        return;
    }
    let db = Arc::new(TestDb::create(Backend::Postgres).await);
    let (a, b) = tokio::join!(
        spawn_app_on(Arc::clone(&db), |cfg| cfg.auth.jwt_secret = None),
        spawn_app_on(Arc::clone(&db), |cfg| cfg.auth.jwt_secret = None),
    );
    let on_a = a.register("pia@example.com").await;
    let on_b = b.login("pia@example.com", PASSWORD).await;
    let me = expect_json(b.me(&on_a.token).await, StatusCode::OK).await;
    assert_eq!(me["id"], on_a.user_id.as_str());
    expect_json(a.me(&on_b.token).await, StatusCode::OK).await;
    // Refresh tokens live in the shared database too.
    expect_json(b.refresh(&on_a.refresh_token).await, StatusCode::OK).await;
    expect_error(a.refresh(&on_a.refresh_token).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
}
