//! The fixtures themselves: what a test creates on shared services is gone when it ends, so a
//! run leaves nothing behind and tests cannot see each other's data.

use sqlx::{Connection as _, PgConnection};

use std::sync::Arc;

use reqwest::StatusCode;

use crate::{
    common::{Backend, SERVICE_TIMEOUT, TestDb, TestRedis},
    helpers::{expect_json, spawn_node},
};

async fn connect(url: &str) -> PgConnection {
    tokio::time::timeout(SERVICE_TIMEOUT, PgConnection::connect(url))
        .await
        .expect("connecting to PostgreSQL timed out")
        .expect("connect to PostgreSQL")
}

async fn pg_database_exists(name: &str) -> bool {
    let admin = std::env::var("CONFAB_TEST_DATABASE_URL").expect("set");
    let mut conn = connect(&admin).await;
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .expect("query");
    n == 1
}

#[tokio::test]
async fn a_test_postgres_database_is_dropped_with_its_fixture() {
    if !Backend::Postgres.available() {
        return;
    }
    let db = TestDb::create(Backend::Postgres).await;
    let name = db.pg_name().expect("a PostgreSQL database").to_owned();
    assert!(name.starts_with("confab_test_"), "{name}");
    // Someone still connected (a pooled connection of the app under test) does not stop it.
    let mut held = connect(db.url()).await;
    let (statement_timeout,): (String,) =
        sqlx::query_as("SHOW statement_timeout").fetch_one(&mut held).await.expect("query");
    assert_eq!(statement_timeout, "30s", "a stuck statement fails instead of hanging the test");
    assert!(pg_database_exists(&name).await);

    drop(db);

    assert!(!pg_database_exists(&name).await, "{name} is left behind");
    assert!(sqlx::query("SELECT 1").execute(&mut held).await.is_err(), "the held connection was terminated");
}

#[tokio::test]
async fn a_sqlite_test_database_is_removed_with_its_fixture() {
    let db = TestDb::create(Backend::Sqlite).await;
    let path = db.url().strip_prefix("sqlite://").expect("sqlite URL").to_owned();
    let store = confab::store::Store::connect(Backend::Sqlite.kind(), db.url(), 2).await.expect("connect");
    store.migrate().await.expect("migrate");
    store.close().await;
    assert!(std::path::Path::new(&path).exists());
    drop(db);
    assert!(!std::path::Path::new(&path).exists(), "{path} is left behind");
}

#[tokio::test]
async fn a_redis_fixture_has_its_own_prefix_and_deletes_its_keys() {
    let Some(redis) = TestRedis::from_env() else { return };
    let other = TestRedis::from_env().expect("configured");
    assert_ne!(redis.prefix, other.prefix);

    let client = redis::Client::open(redis.url.as_str()).expect("redis URL");
    let mut conn = tokio::time::timeout(SERVICE_TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .expect("connecting timed out")
        .expect("connect");
    let key = format!("{}:probe", redis.prefix);
    redis::cmd("SET").arg(&key).arg("1").query_async::<()>(&mut conn).await.expect("SET");
    assert_eq!(redis.keys().await, std::slice::from_ref(&key));
    assert!(other.keys().await.is_empty());

    drop(redis);

    let exists: i64 = redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await.expect("EXISTS");
    assert_eq!(exists, 0, "{key} is left behind");
}

#[tokio::test]
async fn a_node_can_be_given_the_test_redis_under_its_own_prefix() {
    let Some(redis) = TestRedis::from_env() else { return };
    let redis = Arc::new(redis);
    let db = Arc::new(TestDb::create(Backend::Sqlite).await);
    let node = spawn_node(db, Some(Arc::clone(&redis)), |_| {}).await;
    // The node holds the fixture, so the prefix's keys live as long as the node.
    let held = node.redis.as_ref().expect("the node holds its Redis fixture");
    assert!(Arc::ptr_eq(held, &redis));
    let configured = &node.state.config.redis;
    assert_eq!(configured.url.as_ref().map(|u| u.expose().to_owned()), Some(redis.url.clone()));
    assert_eq!(configured.prefix, redis.prefix);
    expect_json(node.get("/health").await, StatusCode::OK).await;
}
