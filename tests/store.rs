//! The store's conformance suite: the same scenarios against every backend, directly on
//! `confab::store::Store` (connect + migrate), so SQLite and PostgreSQL cannot drift apart.

mod common;

use std::{collections::HashSet, sync::Arc};

use chrono::{Duration, Utc};
use confab::{
    domain::{NewMessage, NewRoom, Role, RoomKind, RoomName, User, UserId},
    store::{Appended, NewRefreshToken, Refreshed, Store, StoreError},
};
use uuid::Uuid;

use crate::common::{Backend, SERVICE_TIMEOUT, TestDb, both_backends};

/// A migrated store on a fresh database; the `TestDb` must outlive it.
async fn open(backend: Backend) -> (Store, TestDb) {
    let db = TestDb::create(backend).await;
    let store = tokio::time::timeout(SERVICE_TIMEOUT, Store::connect(backend.kind(), db.url(), 16))
        .await
        .expect("connect timed out")
        .expect("connect");
    let applied = store.migrate().await.expect("migrate");
    assert!(applied >= 1, "a fresh database gets every migration");
    (store, db)
}

fn room(name: &str) -> RoomName {
    RoomName::parse(name).expect("valid room name")
}

fn message(room: &RoomName, sender: &User, content: &str, client_id: Option<&str>) -> NewMessage {
    NewMessage {
        id: Uuid::now_v7(),
        room: room.clone(),
        sender_id: sender.id,
        sender_email: sender.email.clone(),
        sender_name: sender.display_name.clone(),
        content: content.to_owned(),
        client_id: client_id.map(str::to_owned),
        created_at: Utc::now(),
        kind: confab::domain::MessageKind::Message,
        target_id: None,
        mentions: confab::domain::Mentions::default(),
    }
}

fn refresh_token(user: &User, family: Uuid, expires_in: Duration) -> (String, NewRefreshToken) {
    let raw = Uuid::new_v4().to_string();
    let hash = format!("hash-of-{raw}");
    (hash.clone(), NewRefreshToken { hash, user_id: user.id, family_id: family, expires_at: Utc::now() + expires_in })
}

/// A token to rotate into: the store takes user and family from the token it replaces.
fn successor() -> NewRefreshToken {
    NewRefreshToken {
        hash: format!("hash-of-{}", Uuid::new_v4()),
        user_id: UserId(Uuid::nil()),
        family_id: Uuid::nil(),
        expires_at: Utc::now() + Duration::days(1),
    }
}

fn seqs(messages: &[confab::domain::Message]) -> Vec<i64> {
    messages.iter().map(|m| m.seq).collect()
}

both_backends!(
    migrating_again_applies_nothing,
    users_are_created_found_and_unique_by_email,
    disabling_a_user_revokes_its_refresh_tokens,
    users_are_looked_up_many_at_once,
    settings_keep_the_first_value_stored,
    refresh_tokens_rotate_once_and_reuse_revokes_the_family,
    revoking_a_family_is_logout,
    expired_refresh_tokens_are_invalid,
    appended_messages_get_gapless_seqs_in_order,
    a_repeated_client_id_returns_the_original_and_takes_no_seq,
    a_client_id_repeated_within_one_batch_is_stored_once,
    a_client_id_reused_in_another_room_is_a_new_message_there,
    the_duplicate_look_up_uses_the_index_among_a_million_messages,
    the_planner_gets_statistics_as_the_messages_table_grows,
    the_sqlite_wal_is_checkpointed_off_the_commit_path,
    history_pages_oldest_first_and_resumes_after_a_seq,
    rooms_are_listed_with_their_last_seq,
    concurrent_appends_to_one_room_get_seqs_one_to_n,
    a_failing_batch_fails_only_its_own_room_among_concurrent_ones,
    concurrent_appends_with_one_client_id_store_one_message,
    a_database_of_the_previous_release_keeps_its_rooms_public_and_its_writers_members,
    rooms_are_created_once_and_list_public_ones_and_mine,
    concurrent_joins_and_sends_each_get_their_own_answer,
    rooms_stored_together_keep_their_own_seqs_and_client_ids,
    two_nodes_storing_the_same_rooms_keep_each_rooms_seqs_gapless,
    search_indexing_follows_each_rooms_stream_behind_the_commit,
);

async fn migrating_again_applies_nothing(backend: Backend) {
    let (store, db) = open(backend).await;
    assert_eq!(store.migrate().await.expect("migrate again"), 0);
    store.close().await;
    // A second connection (another process, or a restart) finds it migrated too.
    let again = Store::connect(backend.kind(), db.url(), 2).await.expect("reconnect");
    assert_eq!(again.migrate().await.expect("migrate after reconnect"), 0);
    again.ping().await.expect("ping");
    assert_eq!(again.backend(), if backend == Backend::Sqlite { "sqlite" } else { "postgres" });
}

async fn users_are_created_found_and_unique_by_email(backend: Backend) {
    let (store, _db) = open(backend).await;
    let alice = store.create_user("alice@example.com", "hash-a").await.expect("create");
    assert_eq!(alice.email, "alice@example.com");
    assert!(alice.disabled_at.is_none());

    let found = store.user_by_id(alice.id).await.expect("query").expect("found by id");
    assert_eq!((found.id, found.email.as_str()), (alice.id, "alice@example.com"));
    assert_eq!(found, alice, "what was returned is what was stored");
    let creds = store.credentials_by_email("alice@example.com").await.expect("query").expect("found by email");
    assert_eq!((creds.user.id, creds.password_hash.as_str()), (alice.id, "hash-a"));

    assert!(matches!(store.create_user("alice@example.com", "hash-b").await, Err(StoreError::Conflict)));
    assert!(store.credentials_by_email("nobody@example.com").await.expect("query").is_none());
    assert!(store.user_by_id(UserId(Uuid::new_v4())).await.expect("query").is_none());

    let bob = store.create_user("bob@example.com", "hash-b").await.expect("create");
    let all: Vec<UserId> = store.list_users().await.expect("list").into_iter().map(|u| u.id).collect();
    assert_eq!(all, [alice.id, bob.id]);

    assert!(store.set_password_hash("bob@example.com", "hash-b2").await.expect("set"));
    let creds = store.credentials_by_email("bob@example.com").await.expect("query").expect("found");
    assert_eq!(creds.password_hash, "hash-b2");
    assert!(!store.set_password_hash("nobody@example.com", "x").await.expect("set"));
}

async fn disabling_a_user_revokes_its_refresh_tokens(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = store.create_user("carol@example.com", "h").await.expect("create");
    let (hash, token) = refresh_token(&user, Uuid::new_v4(), Duration::days(1));
    store.insert_refresh_token(&token).await.expect("insert");

    assert!(store.set_user_disabled("carol@example.com", true).await.expect("disable"));
    assert!(store.user_by_id(user.id).await.expect("query").expect("found").disabled_at.is_some());
    assert_eq!(store.rotate_refresh_token(&hash, &successor()).await.expect("rotate"), Refreshed::Invalid);

    assert!(store.set_user_disabled("carol@example.com", false).await.expect("enable"));
    assert!(store.user_by_id(user.id).await.expect("query").expect("found").disabled_at.is_none());
    assert_eq!(store.rotate_refresh_token(&hash, &successor()).await.expect("rotate"), Refreshed::Invalid);
    assert!(!store.set_user_disabled("nobody@example.com", true).await.expect("disable"));
}

async fn users_are_looked_up_many_at_once(backend: Backend) {
    let (store, _db) = open(backend).await;
    let dan = store.create_user("dan@example.com", "h").await.expect("create");
    let eve = store.create_user("eve@example.com", "h").await.expect("create");
    store.set_user_disabled("eve@example.com", true).await.expect("disable");
    let unknown = UserId(Uuid::now_v7());
    let mut found = store.users_by_ids(&[eve.id, unknown, dan.id]).await.expect("query");
    found.sort_by_key(|u| u.email.clone());
    let emails: Vec<&str> = found.iter().map(|u| u.email.as_str()).collect();
    assert_eq!(emails, ["dan@example.com", "eve@example.com"], "unknown ids are left out");
    assert_eq!(found[0].id, dan.id);
    assert!(found[1].disabled_at.is_some(), "the account as stored now");
    assert!(store.users_by_ids(&[]).await.expect("empty query").is_empty());
}

async fn settings_keep_the_first_value_stored(backend: Backend) {
    let (store, _db) = open(backend).await;
    assert_eq!(store.setting_or_insert("jwt_secret", "first").await.expect("insert"), "first");
    assert_eq!(store.setting_or_insert("jwt_secret", "second").await.expect("read"), "first");
    assert_eq!(store.setting_or_insert("other", "x").await.expect("insert"), "x");
}

async fn refresh_tokens_rotate_once_and_reuse_revokes_the_family(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = store.create_user("dave@example.com", "h").await.expect("create");
    let (first, token) = refresh_token(&user, Uuid::new_v4(), Duration::days(1));
    store.insert_refresh_token(&token).await.expect("insert");
    let (other_family, other) = refresh_token(&user, Uuid::new_v4(), Duration::days(1));
    store.insert_refresh_token(&other).await.expect("insert");

    let second = successor();
    assert_eq!(
        store.rotate_refresh_token(&first, &second).await.expect("rotate"),
        Refreshed::Rotated { user_id: user.id }
    );
    let third = successor();
    assert_eq!(
        store.rotate_refresh_token(&second.hash, &third).await.expect("rotate"),
        Refreshed::Rotated { user_id: user.id },
        "the rotated token belongs to the same user and family"
    );

    // The spent first token comes back: reuse, and the family's live token is revoked.
    assert_eq!(store.rotate_refresh_token(&first, &successor()).await.expect("reuse"), Refreshed::Reused);
    assert_eq!(store.rotate_refresh_token(&third.hash, &successor()).await.expect("rotate"), Refreshed::Invalid);
    assert!(!store.revoke_refresh_family(&third.hash).await.expect("revoke"));

    // Other families are untouched; unknown tokens are invalid.
    assert_eq!(
        store.rotate_refresh_token(&other_family, &successor()).await.expect("rotate"),
        Refreshed::Rotated { user_id: user.id }
    );
    assert_eq!(store.rotate_refresh_token("no-such-hash", &successor()).await.expect("rotate"), Refreshed::Invalid);
}

async fn revoking_a_family_is_logout(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = store.create_user("erin@example.com", "h").await.expect("create");
    let (hash, token) = refresh_token(&user, Uuid::new_v4(), Duration::days(1));
    store.insert_refresh_token(&token).await.expect("insert");
    let next = successor();
    assert!(matches!(store.rotate_refresh_token(&hash, &next).await.expect("rotate"), Refreshed::Rotated { .. }));

    // Only a live token signs out; the spent one does not.
    assert!(!store.revoke_refresh_family(&hash).await.expect("revoke with a spent token"));
    assert!(store.revoke_refresh_family(&next.hash).await.expect("revoke"));
    assert!(!store.revoke_refresh_family(&next.hash).await.expect("revoke again"));
    assert_eq!(store.rotate_refresh_token(&next.hash, &successor()).await.expect("rotate"), Refreshed::Invalid);
    assert!(!store.revoke_refresh_family("no-such-hash").await.expect("revoke unknown"));
}

async fn expired_refresh_tokens_are_invalid(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = store.create_user("finn@example.com", "h").await.expect("create");
    let (hash, token) = refresh_token(&user, Uuid::new_v4(), Duration::seconds(-1));
    store.insert_refresh_token(&token).await.expect("insert");
    assert_eq!(store.rotate_refresh_token(&hash, &successor()).await.expect("rotate"), Refreshed::Invalid);
    assert!(!store.revoke_refresh_family(&hash).await.expect("revoke"));
}

async fn appended_messages_get_gapless_seqs_in_order(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = store.create_user("gus@example.com", "h").await.expect("create");
    let general = room("general");
    assert_eq!(store.last_seq(&general).await.expect("last_seq"), 0);

    let one = store.append_message(message(&general, &user, "one", None)).await.expect("append");
    assert_eq!((one.message.seq, one.duplicate), (1, false));
    let batch: Vec<NewMessage> = (2..=6).map(|i| message(&general, &user, &format!("m{i}"), None)).collect();
    let appended = store.append_messages(&general, &batch).await.expect("append batch");
    assert_eq!(appended.iter().map(|a| a.message.seq).collect::<Vec<_>>(), [2, 3, 4, 5, 6]);
    assert!(appended.iter().all(|a| !a.duplicate));
    for (a, m) in appended.iter().zip(&batch) {
        assert_eq!((a.message.id, a.message.content.as_str()), (m.id, m.content.as_str()));
    }
    assert!(store.append_messages(&general, &[]).await.expect("empty batch").is_empty());
    assert_eq!(store.last_seq(&general).await.expect("last_seq"), 6);

    // Each room counts on its own.
    let other = room("other");
    let first = store.append_message(message(&other, &user, "elsewhere", None)).await.expect("append");
    assert_eq!(first.message.seq, 1);

    let stored = store.messages_after(&general, 0, 100).await.expect("read");
    assert_eq!(seqs(&stored), [1, 2, 3, 4, 5, 6]);
    assert_eq!(stored[0], one.message, "what was returned is what was stored");
    assert_eq!(stored[0].sender_id, user.id.0);
    assert_eq!(stored[0].sender_email, "gus@example.com");
}

async fn a_repeated_client_id_returns_the_original_and_takes_no_seq(backend: Backend) {
    let (store, _db) = open(backend).await;
    let (alice, bob) = (
        store.create_user("alice@example.com", "h").await.expect("create"),
        store.create_user("bob@example.com", "h").await.expect("create"),
    );
    let general = room("general");
    let original = store.append_message(message(&general, &alice, "hi", Some("c-1"))).await.expect("append");
    assert!(!original.duplicate);

    let again = store.append_message(message(&general, &alice, "hi (resent)", Some("c-1"))).await.expect("append");
    assert!(again.duplicate);
    assert_eq!(again.message, original.message, "the original comes back, content and all");

    // The key is per sender: bob's c-1 is his own message.
    let bobs = store.append_message(message(&general, &bob, "hey", Some("c-1"))).await.expect("append");
    assert!(!bobs.duplicate);
    assert_eq!(bobs.message.seq, 2);
    let next = store.append_message(message(&general, &alice, "next", Some("c-2"))).await.expect("append");
    assert_eq!(next.message.seq, 3, "the duplicate took no seq");
    assert_eq!(seqs(&store.messages_after(&general, 0, 100).await.expect("read")), [1, 2, 3]);
}

async fn a_client_id_reused_in_another_room_is_a_new_message_there(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = store.create_user("jo@example.com", "h").await.expect("create");
    let (general, random) = (room("general"), room("random"));
    let first = store.append_message(message(&general, &user, "in general", Some("c-1"))).await.expect("append");
    // The same client id in another room: stored there, with that room's seq — never an ack
    // that points at the first room's message.
    let other = store.append_message(message(&random, &user, "in random", Some("c-1"))).await.expect("append");
    assert!(!other.duplicate, "a client id is per room: {other:?}");
    assert_eq!((other.message.room.as_str(), other.message.seq), ("random", 1));
    assert_ne!(other.message.id, first.message.id);
    // Resent in either room, it is that room's copy.
    for (r, original) in [(&general, &first), (&random, &other)] {
        let again = store.append_message(message(r, &user, "resent", Some("c-1"))).await.expect("append");
        assert!(again.duplicate);
        assert_eq!(again.message, original.message);
    }
    let contents = |msgs: Vec<confab::domain::Message>| msgs.into_iter().map(|m| m.content).collect::<Vec<_>>();
    assert_eq!(contents(store.messages_after(&general, 0, 10).await.expect("read")), ["in general"]);
    assert_eq!(contents(store.messages_after(&random, 0, 10).await.expect("read")), ["in random"]);
}

/// PostgreSQL keeps the shared statement's generic plan for as long as the connection lives; one
/// made while the table held a hundred rows and no statistics probed the room's seq index instead
/// of the client-id index, and kept doing so at a million rows (a whole room read per client id).
/// The store runs ANALYZE itself as the messages it stores double (from 1,000), which replaces
/// such plans, whether or not the server's autovacuum does (this machine's is off). SQLite plans
/// each statement when it is prepared, from its own heuristics: nothing to check there.
async fn the_planner_gets_statistics_as_the_messages_table_grows(backend: Backend) {
    use sqlx::{Connection as _, PgConnection};
    if backend != Backend::Postgres {
        return;
    }
    let (store, db) = open(backend).await;
    let user = store.create_user("stats@example.com", "h").await.expect("create");
    let mut conn = PgConnection::connect(db.url()).await.expect("connect to the test database");
    // Manual (and the store's) ANALYZEs only: autovacuum's are counted apart.
    let analyzed = "SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'messages'";
    let before: i64 = sqlx::query_scalar(analyzed).fetch_one(&mut conn).await.expect("stats");
    assert_eq!(before, 0, "a fresh table was never analyzed");

    // 1,200 messages with client ids in ten rooms, through the shared statements.
    let rooms: Vec<RoomName> = (0..10).map(|r| room(&format!("grow-{r}"))).collect();
    for round in 0..12 {
        let sends = rooms.iter().map(|r| {
            let batch: Vec<NewMessage> =
                (0..10).map(|i| message(r, &user, "x", Some(&format!("c-{round}-{i}")))).collect();
            let store = &store;
            async move { store.append_messages(r, &batch).await.expect("append") }
        });
        futures_util::future::join_all(sends).await;
    }
    // The ANALYZE runs in the background; PostgreSQL publishes its count within a second or so.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        sqlx::query("SELECT pg_stat_clear_snapshot()").execute(&mut conn).await.expect("fresh stats");
        let count: i64 = sqlx::query_scalar(analyzed).fetch_one(&mut conn).await.expect("stats");
        if count >= 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no ANALYZE of messages after 1,200 stored");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The plan the shared connections make now probes the client-id index.
    assert_uses_the_index(backend, &store.dedupe_plan().await.expect("explain").join("\n"));
    let _ = conn.close().await;
}

/// SQLite's WAL is copied into the database file by the store's checkpoint thread shortly after
/// commits, not by a committing connection once the log passes 1,000 pages (SQLite's default,
/// which ran the copy and its fsyncs inside a commit that every room's messages waited for).
/// Two megabytes of messages (about 500 pages) reach the file without a commit ever passing a
/// checkpoint threshold. PostgreSQL checkpoints by itself: nothing to check there.
async fn the_sqlite_wal_is_checkpointed_off_the_commit_path(backend: Backend) {
    if backend != Backend::Sqlite {
        return;
    }
    let (store, db) = open(backend).await;
    let user = store.create_user("wal@example.com", "h").await.expect("create");
    let file = db.url().strip_prefix("sqlite://").expect("a SQLite file URL").to_owned();
    let size = || std::fs::metadata(&file).map(|m| m.len()).expect("the database file");
    let before = size();
    let general = room("general");
    let content = "w".repeat(1000);
    for round in 0..20 {
        let batch: Vec<NewMessage> =
            (0..100).map(|i| message(&general, &user, &content, Some(&format!("w-{round}-{i}")))).collect();
        store.append_messages(&general, &batch).await.expect("append");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while size() < before + 1_500_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the database file grew {} bytes in 30 s: the WAL was not checkpointed",
            size() - before
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Messages planted straight into the database, to make the table big.
const PLANTED: i64 = 1_000_000;

/// Stores [`PLANTED`] messages with client ids in room `big` (and `PLANTED` as its last seq)
/// with one statement, much faster than the store's own path.
async fn plant_messages(backend: Backend, db: &TestDb, sender: &User) {
    match backend {
        Backend::Sqlite => {
            use sqlx::{Connection as _, SqliteConnection};
            let mut conn = SqliteConnection::connect(db.url()).await.expect("open the SQLite file");
            // Planted rows are known to be valid; checking a million foreign keys only costs time.
            sqlx::query("PRAGMA foreign_keys = OFF").execute(&mut conn).await.expect("pragma");
            sqlx::query("INSERT INTO rooms (name, last_seq, created_at) VALUES ('big', $1, '2026-01-01T00:00:00Z')")
                .bind(PLANTED)
                .execute(&mut conn)
                .await
                .expect("plant the room");
            sqlx::query(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
                 INSERT INTO messages (id, room, seq, sender_id, sender_email, content, created_at, client_id) \
                 SELECT CAST(printf('%016d', i) AS BLOB), 'big', i, $2, $3, 'planted', '2026-01-01T00:00:00Z', \
                        printf('planted-%07d', i) FROM n",
            )
            .bind(PLANTED)
            .bind(sender.id.0)
            .bind(&sender.email)
            .execute(&mut conn)
            .await
            .expect("plant the messages");
            sqlx::query("ANALYZE").execute(&mut conn).await.expect("analyze");
            let _ = conn.close().await;
        }
        Backend::Postgres => {
            use sqlx::{Connection as _, PgConnection};
            let mut conn = PgConnection::connect(db.url()).await.expect("connect to the test database");
            // Planted rows are known to be valid; checking a million foreign keys only costs time
            // (the test role may create databases, and owns this one).
            sqlx::query("SET session_replication_role = replica").execute(&mut conn).await.expect("skip FK triggers");
            sqlx::query("INSERT INTO rooms (name, last_seq, created_at) VALUES ('big', $1, now())")
                .bind(PLANTED)
                .execute(&mut conn)
                .await
                .expect("plant the room");
            sqlx::query(
                "INSERT INTO messages (id, room, seq, sender_id, sender_email, content, created_at, client_id) \
                 SELECT lpad(to_hex(i), 32, '0')::uuid, 'big', i, $2, $3, 'planted', now(), \
                        'planted-' || lpad(i::text, 7, '0') \
                 FROM generate_series(1, $1::bigint) AS i",
            )
            .bind(PLANTED)
            .bind(sender.id.0)
            .bind(&sender.email)
            .execute(&mut conn)
            .await
            .expect("plant the messages");
            // What autovacuum would do soon after on a real server.
            sqlx::query("ANALYZE messages").execute(&mut conn).await.expect("analyze");
            let _ = conn.close().await;
        }
    }
}

/// A send with a client id looks for an earlier copy before storing: among a million stored
/// messages that look-up must be an index range (the plan says so), not a scan that grows with
/// the table. Timings are printed for the record, not asserted (the benchmark checks speed).
async fn the_duplicate_look_up_uses_the_index_among_a_million_messages(backend: Backend) {
    let (store, db) = open(backend).await;
    let user = store.create_user("big@example.com", "h").await.expect("create");
    // A plan made while the table is small must probe the index too: PostgreSQL keeps a
    // prepared statement's plan while the table grows.
    assert_uses_the_index(backend, &store.dedupe_plan().await.expect("explain").join("\n"));
    assert_indexes_a_range(backend, &store.index_plan().await.expect("explain").join("\n"));
    let started = std::time::Instant::now();
    plant_messages(backend, &db, &user).await;
    eprintln!("{backend:?}: planted {PLANTED} messages in {:?}", started.elapsed());

    assert_uses_the_index(backend, &store.dedupe_plan().await.expect("explain").join("\n"));
    assert_indexes_a_range(backend, &store.index_plan().await.expect("explain").join("\n"));

    let big = room("big");
    let started = std::time::Instant::now();
    for i in 1..=50 {
        let sent = store.append_message(message(&big, &user, "new", Some(&format!("new-{i}")))).await.expect("append");
        assert_eq!((sent.duplicate, sent.message.seq), (false, PLANTED + i));
    }
    let resent = store.append_message(message(&big, &user, "again", Some("planted-0000777"))).await.expect("append");
    assert!(resent.duplicate, "a planted client id is found");
    assert_eq!((resent.message.seq, resent.message.content.as_str()), (777, "planted"));
    eprintln!("{backend:?}: 51 sends with a client id after {PLANTED} messages took {:?}", started.elapsed());
}

/// The search indexer reads the room's unindexed seqs as an index range, never the room from
/// its first message filtered by seq (which grows with the table at every step).
fn assert_indexes_a_range(backend: Backend, plan: &str) {
    let range = match backend {
        Backend::Sqlite => plan.contains("(room=? AND seq>? AND seq<?)"),
        Backend::Postgres => {
            plan.lines().any(|l| l.contains("Index Cond") && l.contains("seq >") && l.contains("seq <="))
        }
    };
    assert!(range, "{backend:?}: the indexer's read is not a seq range of the index:\n{plan}");
    assert!(
        !plan.contains("SCAN messages") && !plan.contains("Seq Scan on messages"),
        "{backend:?}: a table scan:\n{plan}"
    );
}

fn assert_uses_the_index(backend: Backend, plan: &str) {
    assert!(plan.contains("messages_room_client_idx"), "{backend:?}: the look-up does not use the index:\n{plan}");
    assert!(
        !plan.contains("SCAN messages") && !plan.contains("Seq Scan on messages"),
        "{backend:?}: a table scan:\n{plan}"
    );
    if backend == Backend::Postgres {
        // The per-room look-up and the one in the statement shared by many rooms' batches.
        assert_eq!(plan.matches("messages_room_client_idx").count(), 2, "both look-ups use the index:\n{plan}");
    }
}

async fn a_client_id_repeated_within_one_batch_is_stored_once(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = store.create_user("hal@example.com", "h").await.expect("create");
    let general = room("general");
    store.append_message(message(&general, &user, "before", Some("old"))).await.expect("append");

    let batch = [
        message(&general, &user, "a", Some("x")),
        message(&general, &user, "b", None),
        message(&general, &user, "a again", Some("x")),
        message(&general, &user, "old again", Some("old")),
        message(&general, &user, "c", Some("y")),
        message(&general, &user, "d", None),
    ];
    let out: Vec<(i64, bool)> = store
        .append_messages(&general, &batch)
        .await
        .expect("append")
        .iter()
        .map(|a: &Appended| (a.message.seq, a.duplicate))
        .collect();
    assert_eq!(out, [(2, false), (3, false), (2, true), (1, true), (4, false), (5, false)]);
    let stored = store.messages_after(&general, 0, 100).await.expect("read");
    let contents: Vec<&str> = stored.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["before", "a", "b", "c", "d"]);
    assert_eq!(store.last_seq(&general).await.expect("last_seq"), 5);
}

async fn history_pages_oldest_first_and_resumes_after_a_seq(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = store.create_user("ida@example.com", "h").await.expect("create");
    let general = room("general");
    let batch: Vec<NewMessage> = (1..=10).map(|i| message(&general, &user, &format!("m{i}"), None)).collect();
    store.append_messages(&general, &batch).await.expect("append");

    assert_eq!(seqs(&store.messages_before(&general, None, 3).await.expect("read")), [8, 9, 10]);
    assert_eq!(seqs(&store.messages_before(&general, Some(8), 3).await.expect("read")), [5, 6, 7]);
    assert_eq!(seqs(&store.messages_before(&general, Some(3), 50).await.expect("read")), [1, 2]);
    assert!(store.messages_before(&general, Some(1), 50).await.expect("read").is_empty());
    assert_eq!(seqs(&store.messages_before(&general, None, 100).await.expect("read")), (1..=10).collect::<Vec<_>>());

    assert_eq!(seqs(&store.messages_after(&general, 7, 100).await.expect("read")), [8, 9, 10]);
    assert_eq!(seqs(&store.messages_after(&general, 0, 2).await.expect("read")), [1, 2]);
    assert_eq!(seqs(&store.messages_after(&general, 4, 2).await.expect("read")), [5, 6]);
    assert!(store.messages_after(&general, 10, 100).await.expect("read").is_empty());
    assert!(store.messages_after(&room("empty"), 0, 100).await.expect("read").is_empty());
    assert!(store.messages_before(&room("empty"), None, 100).await.expect("read").is_empty());
}

async fn rooms_are_listed_with_their_last_seq(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = store.create_user("jo@example.com", "h").await.expect("create");
    assert!(store.list_rooms().await.expect("list").is_empty());
    for (name, n) in [("zeta", 2), ("alpha", 3), ("mid:room", 1)] {
        let r = room(name);
        for i in 0..n {
            store.append_message(message(&r, &user, &format!("{i}"), None)).await.expect("append");
        }
    }
    let rooms: Vec<(String, i64)> =
        store.list_rooms().await.expect("list").into_iter().map(|r| (r.name, r.last_seq)).collect();
    assert_eq!(rooms, [("alpha".to_owned(), 3), ("mid:room".to_owned(), 1), ("zeta".to_owned(), 2)]);
    assert_eq!(store.last_seq(&room("alpha")).await.expect("last_seq"), 3);
    assert_eq!(store.last_seq(&room("nowhere")).await.expect("last_seq"), 0);
}

const WRITERS: usize = 8;
const PER_WRITER: usize = 50;

/// Many rooms' batches at once (on SQLite they are stored in one transaction when they wait for
/// the write connection together): one batch that cannot be stored (a message id already taken)
/// fails alone; every other room's batch is stored with its seqs.
async fn a_failing_batch_fails_only_its_own_room_among_concurrent_ones(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = store.create_user("writer@example.com", "h").await.expect("create");
    let taken = store.append_message(message(&room("taken"), &user, "first", None)).await.expect("append");
    let store = Arc::new(store);
    let mut tasks = Vec::new();
    for round in 0..5 {
        for r in 0..16 {
            let (store, user) = (Arc::clone(&store), user.clone());
            tasks.push(tokio::spawn(async move {
                let name = room(&format!("room{r}"));
                let mut batch = vec![
                    message(&name, &user, &format!("{round}a"), None),
                    message(&name, &user, &format!("{round}b"), None),
                ];
                if r == 7 && round == 2 {
                    // The same id as a stored message: this batch cannot be stored.
                    batch[1].id = taken.message.id;
                }
                (r, round, store.append_messages(&name, &batch).await)
            }));
        }
    }
    let mut stored = 0;
    for task in tasks {
        let (r, round, result) =
            tokio::time::timeout(SERVICE_TIMEOUT, task).await.expect("appends finish").expect("task");
        if r == 7 && round == 2 {
            assert!(result.is_err(), "a batch with a taken id is refused: {result:?}");
        } else {
            assert_eq!(result.expect("the other rooms' batches are stored").len(), 2);
            stored += 2;
        }
    }
    assert_eq!(stored, 2 * (5 * 16 - 1));
    for r in 0..16 {
        let name = room(&format!("room{r}"));
        let messages = store.messages_after(&name, 0, 100).await.expect("read");
        let expected = if r == 7 { 8 } else { 10 };
        assert_eq!(seqs(&messages), (1..=expected).collect::<Vec<_>>(), "room{r} is gapless");
        assert_eq!(store.last_seq(&name).await.expect("last_seq"), expected);
    }
}

async fn concurrent_appends_to_one_room_get_seqs_one_to_n(backend: Backend) {
    let (store, _db) = open(backend).await;
    let general = room("general");
    let mut users = Vec::new();
    for w in 0..WRITERS {
        users.push(store.create_user(&format!("writer{w}@example.com"), "h").await.expect("create"));
    }
    let store = Arc::new(store);
    let tasks: Vec<_> = users
        .into_iter()
        .enumerate()
        .map(|(w, user)| {
            let (store, general) = (Arc::clone(&store), general.clone());
            // Spawned, so that on a multi-threaded runtime they really run in parallel.
            tokio::spawn(async move {
                let mut seqs = Vec::with_capacity(PER_WRITER);
                for i in 0..PER_WRITER {
                    let m = message(&general, &user, &format!("w{w}-{i}"), Some(&format!("w{w}-{i}")));
                    let appended = store.append_message(m).await.expect("append");
                    assert!(!appended.duplicate);
                    seqs.push(appended.message.seq);
                }
                seqs
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        let seqs = tokio::time::timeout(SERVICE_TIMEOUT * 2, task).await.expect("writers finish").expect("writer ok");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "one writer's messages keep its order: {seqs:?}");
        all.extend(seqs);
    }
    let total = i64::try_from(WRITERS * PER_WRITER).expect("small");
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "a seq was handed out twice");
    all.sort_unstable();
    assert_eq!(all, (1..=total).collect::<Vec<_>>());

    let stored = store.messages_after(&general, 0, 1000).await.expect("read");
    assert_eq!(seqs(&stored), (1..=total).collect::<Vec<_>>());
    assert_eq!(store.last_seq(&general).await.expect("last_seq"), total);
    // Each writer's messages are stored in the order it sent them.
    for w in 0..WRITERS {
        let mine: Vec<&str> =
            stored.iter().filter(|m| m.content.starts_with(&format!("w{w}-"))).map(|m| m.content.as_str()).collect();
        let expected: Vec<String> = (0..PER_WRITER).map(|i| format!("w{w}-{i}")).collect();
        assert_eq!(mine, expected);
    }
}

async fn concurrent_appends_with_one_client_id_store_one_message(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = store.create_user("kai@example.com", "h").await.expect("create");
    let store = Arc::new(store);

    // The same resend racing itself in one room: one message, everyone gets it back.
    let client_id = "resend";
    let tasks: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (store, user, r) = (Arc::clone(&store), user.clone(), room("general"));
            tokio::spawn(async move { store.append_message(message(&r, &user, "once", Some(client_id))).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        let appended = tokio::time::timeout(SERVICE_TIMEOUT, task).await.expect("finish").expect("task");
        results.push(appended.unwrap_or_else(|e| panic!("append failed: {e:?}")));
    }
    assert_eq!(results.iter().filter(|a| !a.duplicate).count(), 1, "exactly one append stores the message");
    let ids: HashSet<Uuid> = results.iter().map(|a| a.message.id).collect();
    assert_eq!(ids.len(), 1, "everyone gets the one stored message back");
    assert_eq!(results[0].message.seq, 1);
    assert_eq!(store.messages_after(&room("general"), 0, 100).await.expect("read").len(), 1, "one message stored");

    // The same client id racing into several rooms (a confused client): a client id is per
    // room, so each room stores its own message, and no ack points into another room.
    let rooms = ["r1", "r2", "r3", "r4"];
    let tasks: Vec<_> = rooms
        .iter()
        .map(|name| {
            let (store, user, r) = (Arc::clone(&store), user.clone(), room(name));
            tokio::spawn(async move { store.append_message(message(&r, &user, "once", Some(client_id))).await })
        })
        .collect();
    for (task, name) in tasks.into_iter().zip(rooms) {
        let appended = tokio::time::timeout(SERVICE_TIMEOUT, task).await.expect("finish").expect("task");
        let appended = appended.unwrap_or_else(|e| panic!("append to {name} failed: {e:?}"));
        assert!(!appended.duplicate, "{name}: {appended:?}");
        assert_eq!((appended.message.room.as_str(), appended.message.seq), (name, 1));
        assert_eq!(store.messages_after(&room(name), 0, 100).await.expect("read").len(), 1, "{name}");
    }
}

/// A database made by the release before rooms became entities (migrations 1 to 3), with
/// messages in it, migrated now: each room is public, whoever wrote there is a member, and
/// every message reads as before.
async fn a_database_of_the_previous_release_keeps_its_rooms_public_and_its_writers_members(backend: Backend) {
    use sqlx::Connection as _;
    let db = TestDb::create(backend).await;
    let store = Store::connect(backend.kind(), db.url(), 4).await.expect("connect");
    let dir = match backend {
        Backend::Sqlite => "migrations/sqlite",
        Backend::Postgres => "migrations/postgres",
    };
    let mut old = sqlx::migrate::Migrator::new(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
        .await
        .expect("migrations");
    let newer = old.migrations.iter().filter(|m| m.version > 3).count();
    old.migrations = std::borrow::Cow::Owned(old.migrations.iter().filter(|m| m.version <= 3).cloned().collect());
    let (writer, reader) = (UserId(Uuid::now_v7()), UserId(Uuid::now_v7()));
    // The old release's rows, written with its own columns.
    macro_rules! old_release {
        ($conn:expr) => {{
            let conn = $conn;
            old.run(&mut *conn).await.expect("old schema");
            for (id, email) in [(writer, "writer@example.com"), (reader, "reader@example.com")] {
                sqlx::query("INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, 'hash', $3)")
                    .bind(id.0)
                    .bind(email)
                    .bind(Utc::now())
                    .execute(&mut *conn)
                    .await
                    .expect("old user");
            }
            sqlx::query("INSERT INTO rooms (name, last_seq, created_at) VALUES ('general', 2, $1)")
                .bind(Utc::now())
                .execute(&mut *conn)
                .await
                .expect("old room");
            for (seq, text) in [(1_i64, "one"), (2, "two")] {
                sqlx::query(
                    "INSERT INTO messages (id, room, seq, sender_id, sender_email, content, created_at) \
                     VALUES ($1, 'general', $2, $3, 'writer@example.com', $4, $5)",
                )
                .bind(Uuid::now_v7())
                .bind(seq)
                .bind(writer.0)
                .bind(text)
                .bind(Utc::now())
                .execute(&mut *conn)
                .await
                .expect("old message");
            }
        }};
    }
    match backend {
        Backend::Sqlite => old_release!(&mut sqlx::SqliteConnection::connect(db.url()).await.expect("sqlite")),
        Backend::Postgres => old_release!(&mut sqlx::PgConnection::connect(db.url()).await.expect("postgres")),
    }
    let general = room("general");

    assert_eq!(store.migrate().await.expect("migrate"), newer, "every later migration applies");
    let found = store.room(&general).await.expect("room").expect("general exists");
    assert_eq!((found.kind, found.last_seq), (RoomKind::Public, 2));
    assert_eq!(store.membership(&general, writer).await.expect("membership").map(|m| m.role), Some(Role::Member));
    assert_eq!(store.membership(&general, reader).await.expect("membership"), None);
    let listed = store.rooms_for(reader).await.expect("rooms");
    assert_eq!(
        listed.iter().map(|r| (r.room.name.as_str(), r.role.as_deref())).collect::<Vec<_>>(),
        [("general", None)]
    );
    let history = store.messages_after(&general, 0, 10).await.expect("history");
    assert_eq!(history.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(), ["one", "two"]);
    // Everyone got a display name from their address, and old messages carry it.
    assert!(history.iter().all(|m| m.sender_name == "writer"), "{history:?}");
    let users = store.users_by_ids(&[writer, reader]).await.expect("users");
    let mut names: Vec<&str> = users.iter().map(|u| u.display_name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["reader", "writer"]);
}

async fn rooms_are_created_once_and_list_public_ones_and_mine(backend: Backend) {
    let (store, _db) = open(backend).await;
    let owner = store.create_user("owner@example.com", "hash").await.expect("user");
    let other = store.create_user("other@example.com", "hash").await.expect("user");
    let new = |name: &str, kind| NewRoom { name: room(name), kind, title: None, topic: None, created_by: owner.id };
    assert!(store.create_room(&new("open", RoomKind::Public), Some(owner.id)).await.expect("create"));
    assert!(store.create_room(&new("closed", RoomKind::Private), Some(owner.id)).await.expect("create"));
    assert!(
        !store.create_room(&new("closed", RoomKind::Public), None).await.expect("create again"),
        "the name is taken"
    );
    let names =
        |rooms: Vec<confab::domain::RoomListing>| rooms.into_iter().map(|r| (r.room.name, r.role)).collect::<Vec<_>>();
    assert_eq!(
        names(store.rooms_for(owner.id).await.expect("rooms")),
        [("closed".to_owned(), Some("owner".to_owned())), ("open".to_owned(), Some("owner".to_owned()))]
    );
    assert_eq!(names(store.rooms_for(other.id).await.expect("rooms")), [("open".to_owned(), None)]);
    assert!(store.add_member(&room("closed"), other.id, Role::Member).await.expect("add"));
    assert!(
        !store.add_member(&room("closed"), other.id, Role::Moderator).await.expect("add again"),
        "a standing is kept"
    );
    assert_eq!(names(store.rooms_for(other.id).await.expect("rooms")).len(), 2);
    // What a join reads: the room and the user's standing in it, at once.
    let standing = |name: &str, user: UserId| {
        let store = &store;
        let name = room(name);
        async move { store.room_and_membership(&name, user).await.expect("read") }
    };
    let (closed, member) = standing("closed", other.id).await.expect("the room exists");
    assert_eq!((closed.name.as_str(), member.map(|m| m.role)), ("closed", Some(Role::Member)));
    let (open, none) = standing("open", other.id).await.expect("the room exists");
    assert_eq!((open.kind, none), (RoomKind::Public, None), "not a member of the open room");
    assert!(standing("nowhere", other.id).await.is_none(), "no such room");
    store.ban_member(&room("open"), other.id).await.expect("ban");
    let (_, banned) = standing("open", other.id).await.expect("the room exists");
    assert!(banned.is_some_and(|m| m.banned_at.is_some()), "a ban is a standing");
    store.unban_member(&room("open"), other.id).await.expect("unban");
    let members = store.members(&room("closed"), 10).await.expect("members");
    assert_eq!(
        members.iter().map(|m| (m.display_name.as_str(), m.role)).collect::<Vec<_>>(),
        [("owner", Role::Owner), ("other", Role::Member)]
    );
    assert!(store.remove_member(&room("closed"), other.id).await.expect("remove"));
    assert!(!store.remove_member(&room("closed"), other.id).await.expect("remove again"));
}

/// Room creations, memberships and message batches all at once (on SQLite they share
/// transactions when they wait for the write connection together): each creation of a name is
/// answered true exactly once, each user becomes a member once, a membership that cannot be
/// stored (an unknown user) fails alone, and the messages keep their gapless seqs.
async fn concurrent_joins_and_sends_each_get_their_own_answer(backend: Backend) {
    const ROOMS: usize = 6;
    const USERS: usize = 24;
    let (store, _db) = open(backend).await;
    let mut users = Vec::new();
    for u in 0..USERS {
        users.push(store.create_user(&format!("joiner{u}@example.com"), "h").await.expect("create"));
    }
    let store = Arc::new(store);
    let new_room = |r: usize, by: UserId| NewRoom {
        name: room(&format!("lobby{r}")),
        kind: RoomKind::Public,
        title: None,
        topic: None,
        created_by: by,
    };
    // Every user creates every room (one of them wins each) and joins it twice.
    let mut creations = Vec::new();
    for r in 0..ROOMS {
        for user in &users {
            let (store, new) = (Arc::clone(&store), new_room(r, user.id));
            creations.push(tokio::spawn(async move { (r, store.create_room(&new, None).await) }));
        }
    }
    let mut created = [0; ROOMS];
    for task in creations {
        let (r, result) = tokio::time::timeout(SERVICE_TIMEOUT, task).await.expect("creations finish").expect("task");
        created[r] += usize::from(result.expect("a creation is answered"));
    }
    assert_eq!(created, [1; ROOMS], "each room is created exactly once");
    let mut tasks = Vec::new();
    for r in 0..ROOMS {
        for round in 0..2 {
            for user in &users {
                let (store, id) = (Arc::clone(&store), user.id);
                tasks.push(tokio::spawn(async move {
                    (r, round, Some(id), store.add_member(&room(&format!("lobby{r}")), id, Role::Member).await)
                }));
            }
        }
        // A user that does not exist cannot be a member: only this join fails.
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            (r, 0, None, store.add_member(&room(&format!("lobby{r}")), UserId(Uuid::now_v7()), Role::Member).await)
        }));
    }
    let sends: Vec<_> = (0..ROOMS)
        .map(|r| {
            let (store, user) = (Arc::clone(&store), users[r].clone());
            tokio::spawn(async move {
                let name = room(&format!("lobby{r}"));
                let batch = [message(&name, &user, "a", None), message(&name, &user, "b", None)];
                store.append_messages(&name, &batch).await
            })
        })
        .collect();
    let mut added = [0; ROOMS];
    for task in tasks {
        let (r, _round, user, result) =
            tokio::time::timeout(SERVICE_TIMEOUT, task).await.expect("joins finish").expect("task");
        match user {
            Some(_) => added[r] += usize::from(result.expect("a known user's join is answered")),
            None => assert!(result.is_err(), "an unknown user is refused: {result:?}"),
        }
    }
    assert_eq!(added, [USERS; ROOMS], "every user became a member of every room exactly once");
    for (r, send) in sends.into_iter().enumerate() {
        let appended = tokio::time::timeout(SERVICE_TIMEOUT, send).await.expect("sends finish").expect("task");
        assert_eq!(appended.expect("the batch is stored").len(), 2);
        let name = room(&format!("lobby{r}"));
        assert_eq!(seqs(&store.messages_after(&name, 0, 10).await.expect("read")), [1, 2]);
        assert_eq!(store.members(&name, 100).await.expect("members").len(), USERS);
    }
}

/// A new SQLite database (and the directory made for it) is readable by its owner only: it
/// holds password hashes and the generated JWT signing key.
#[cfg(unix)]
#[tokio::test]
async fn a_new_sqlite_database_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("data").join("confab.db");
    let url = format!("sqlite://{}", path.display());
    let store = Store::connect(confab::config::DatabaseKind::Sqlite, &url, 2).await.expect("connect");
    store.migrate().await.expect("migrate");
    store.setting_or_insert("jwt_secret", "s3cret").await.expect("a setting");
    let mode = |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600, "the database file");
    let wal = path.with_file_name("confab.db-wal");
    assert!(wal.exists(), "WAL mode keeps a -wal file");
    assert_eq!(mode(&wal), 0o600, "the -wal file");
    assert_eq!(mode(path.parent().expect("dir")), 0o700, "the directory made for it");
    store.close().await;
    // Opened again, an existing file is left as it is.
    let again = Store::connect(confab::config::DatabaseKind::Sqlite, &url, 2).await.expect("reopen");
    again.close().await;
    assert_eq!(mode(&path), 0o600);
}

/// Sends commit without touching the search index; `index_room` catches a room up in steps,
/// from where it stopped, and the index still shows every message's current content.
async fn search_indexing_follows_each_rooms_stream_behind_the_commit(backend: Backend) {
    use confab::{
        domain::SearchQuery,
        store::{IndexStep, SearchScope},
    };
    let (store, _db) = open(backend).await;
    let user = store.create_user("ida@example.com", "h").await.expect("create");
    let (general, quiet) = (room("general"), room("quiet"));
    let search = |q: &str| {
        let store = store.clone();
        let query = SearchQuery::parse(q).expect("query");
        let uid = user.id;
        async move {
            let scope = SearchScope { user: uid, admin: true, room: None, before: None, limit: 100 };
            let mut found: Vec<String> =
                store.search(&query, &scope).await.expect("search").into_iter().map(|m| m.content).collect();
            found.sort();
            found
        }
    };
    let batch: Vec<NewMessage> =
        (1..=7).map(|i| message(&general, &user, &format!("walrus number {i}"), None)).collect();
    let stored = store.append_messages(&general, &batch).await.expect("append");
    store.append_message(message(&quiet, &user, "a quiet walrus", None)).await.expect("append");
    assert!(search("walrus").await.is_empty(), "nothing is indexed inside the acking commit");
    let mut behind = store.rooms_behind_index(100).await.expect("behind");
    behind.sort();
    assert_eq!(behind, [general.clone(), quiet.clone()]);

    // Edited and deleted before the indexer gets to them: indexed as they are now.
    store.edit_message(&general, stored[0].message.id, &user, "narwhal now".into(), None).await.expect("edit");
    store.delete_message(&general, stored[1].message.id, &user, None).await.expect("delete");

    // Three seqs at a time: 1..3, 4..6, 7..9 (the edit and the deletion take seqs 8 and 9).
    let step = |room: &RoomName, max: i64| {
        let (store, room) = (store.clone(), room.clone());
        async move { store.index_room(&room, max).await.expect("index") }
    };
    assert!(matches!(step(&general, 3).await, IndexStep::Indexed(_)));
    assert_eq!(search("walrus").await, ["walrus number 3"], "only seqs 1..3 are indexed");
    assert_eq!(search("narwhal").await, ["narwhal now"]);
    assert!(matches!(step(&general, 3).await, IndexStep::Indexed(_)));
    assert_eq!(search("walrus").await, ["walrus number 3", "walrus number 4", "walrus number 5", "walrus number 6"]);
    assert!(matches!(step(&general, 3).await, IndexStep::Indexed(_)));
    assert_eq!(step(&general, 3).await, IndexStep::UpToDate);
    assert_eq!(store.rooms_behind_index(100).await.expect("behind"), std::slice::from_ref(&quiet));
    assert_eq!(search("walrus").await.len(), 5, "{:?}", search("walrus").await);

    // Edits of indexed messages reach the index in their own commit.
    store.edit_message(&general, stored[2].message.id, &user, "seal".into(), None).await.expect("edit");
    store.delete_message(&general, stored[3].message.id, &user, None).await.expect("delete");
    assert_eq!(search("walrus").await, ["walrus number 5", "walrus number 6", "walrus number 7"]);
    assert_eq!(search("seal").await, ["seal"]);

    assert_eq!(step(&quiet, 500).await, IndexStep::Indexed(1));
    // The edit and the deletion moved general's stream on: the indexer steps over them.
    assert_eq!(store.rooms_behind_index(100).await.expect("behind"), std::slice::from_ref(&general));
    assert_eq!(step(&general, 500).await, IndexStep::Indexed(0));
    assert!(store.rooms_behind_index(100).await.expect("behind").is_empty());
    assert_eq!(search("quiet").await, ["a quiet walrus"]);
    // A room never written to has nothing to index.
    assert_eq!(step(&room("empty"), 500).await, IndexStep::UpToDate);
}

/// Two nodes (two stores on one database) store batches to the same rooms at once, each
/// batch's first message with a client id, and each writer resends one of them halfway: every
/// batch is stored once, each writer's seqs rise, and each room's seqs are 1..n without a gap.
/// On PostgreSQL the nodes' shared statements lock rooms in one order, so they never deadlock;
/// here a deadlock is not broken after a second (and its statements stored alone, unseen), but
/// hangs until the test's timeout fails it.
async fn two_nodes_storing_the_same_rooms_keep_each_rooms_seqs_gapless(backend: Backend) {
    const ROOMS: usize = 8;
    const ROUNDS: usize = 100;
    const PER_BATCH: usize = 3;
    let db = TestDb::create(backend).await;
    let url = if backend == Backend::Postgres {
        let mut url = url::Url::parse(db.url()).expect("url");
        let others: Vec<(String, String)> =
            url.query_pairs().filter(|(k, _)| k != "options").map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        url.query_pairs_mut()
            .clear()
            .extend_pairs(others)
            .append_pair("options", "-c deadlock_timeout=600s -c statement_timeout=600000");
        url.to_string()
    } else {
        db.url().to_owned()
    };
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let store = tokio::time::timeout(SERVICE_TIMEOUT, Store::connect(backend.kind(), &url, 16))
            .await
            .expect("connect timed out")
            .expect("connect");
        store.migrate().await.expect("migrate");
        nodes.push(Arc::new(store));
    }
    let user = nodes[0].create_user("two@example.com", "h").await.expect("create");
    let name = |r: usize| room(&format!("shared{r}"));
    let mut writers = Vec::new();
    for (n, store) in nodes.iter().enumerate() {
        for r in 0..ROOMS {
            let (store, user) = (Arc::clone(store), user.clone());
            writers.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..ROUNDS {
                    // Halfway, the batch starts with the first batch's client id again.
                    let cid = if i == ROUNDS / 2 { format!("n{n}-r{r}-0") } else { format!("n{n}-r{r}-{i}") };
                    let mut batch = vec![message(&name(r), &user, &format!("n{n}-{i}"), Some(&cid))];
                    batch.extend((1..PER_BATCH).map(|k| message(&name(r), &user, &format!("n{n}-{i}-{k}"), None)));
                    let appended = store.append_messages(&name(r), &batch).await.expect("stored");
                    assert_eq!(appended[0].duplicate, i == ROUNDS / 2, "node {n} room {r} batch {i}");
                    seqs.extend(appended.iter().filter(|a| !a.duplicate).map(|a| a.message.seq));
                }
                seqs
            }));
        }
    }
    for writer in writers {
        let seqs = tokio::time::timeout(SERVICE_TIMEOUT * 2, writer).await.expect("writers finish").expect("writer");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "a writer's seqs rise: {seqs:?}");
    }
    let per_room = i64::try_from(2 * (ROUNDS * PER_BATCH - 1)).expect("small");
    for r in 0..ROOMS {
        let stored = nodes[1].messages_after(&name(r), 0, 1000).await.expect("read");
        assert_eq!(seqs(&stored), (1..=per_room).collect::<Vec<_>>(), "room {r} is gapless");
        assert_eq!(nodes[0].last_seq(&name(r)).await.expect("last seq"), per_room);
    }
}

/// Many rooms' batches at once (on SQLite they share a transaction and its statements): each
/// room gets its own gapless seqs, a client id repeated in another room is a new message there,
/// and a resend finds the copy of its own room.
async fn rooms_stored_together_keep_their_own_seqs_and_client_ids(backend: Backend) {
    const ROOMS: usize = 12;
    let (store, _db) = open(backend).await;
    let user = store.create_user("many@example.com", "h").await.expect("create");
    let store = Arc::new(store);
    let name = |r: usize| room(&format!("together{r}"));
    let send_all = |first: bool| {
        let (store, user) = (Arc::clone(&store), user.clone());
        async move {
            let tasks: Vec<_> = (0..ROOMS)
                .map(|r| {
                    let (store, user) = (Arc::clone(&store), user.clone());
                    tokio::spawn(async move {
                        let content = if first { format!("first in {r}") } else { format!("resent in {r}") };
                        let mut batch = vec![message(&name(r), &user, &content, Some("same"))];
                        // Room r sends r + 1 more, so the rooms' ranges differ in length.
                        batch.extend((0..=r).map(|i| message(&name(r), &user, &format!("{i}"), None)));
                        store.append_messages(&name(r), &batch).await
                    })
                })
                .collect();
            let mut out = Vec::new();
            for task in tasks {
                out.push(tokio::time::timeout(SERVICE_TIMEOUT, task).await.expect("sends finish").expect("task"));
            }
            out
        }
    };
    for (r, result) in send_all(true).await.into_iter().enumerate() {
        let appended = result.expect("stored");
        let got: Vec<(i64, bool)> = appended.iter().map(|a| (a.message.seq, a.duplicate)).collect();
        let expected: Vec<(i64, bool)> = (1..=i64::try_from(r).expect("small") + 2).map(|s| (s, false)).collect();
        assert_eq!(got, expected, "room {r}: its own range from 1");
        assert_eq!(appended[0].message.content, format!("first in {r}"));
    }
    for (r, result) in send_all(false).await.into_iter().enumerate() {
        let appended = result.expect("stored");
        assert!(appended[0].duplicate, "room {r}: the resend is a duplicate");
        assert_eq!(
            (appended[0].message.seq, appended[0].message.content.as_str()),
            (1, format!("first in {r}").as_str())
        );
        let next = i64::try_from(r).expect("small") + 3;
        let fresh: Vec<i64> = appended[1..].iter().map(|a| a.message.seq).collect();
        assert_eq!(fresh, (next..=next + i64::try_from(r).expect("small")).collect::<Vec<_>>(), "room {r}: gapless");
        assert_eq!(seqs(&store.messages_after(&name(r), 0, 100).await.expect("read")).len(), 2 * r + 3);
        assert_eq!(store.last_seq(&name(r)).await.expect("last seq"), 2 * i64::try_from(r).expect("small") + 3);
    }
}
