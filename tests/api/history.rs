//! `GET /api/messages/{room}` and `GET /api/rooms`: history pages oldest first, the wire shape
//! of `Message`, room-name and limit validation, and authentication.

use confab::domain::{NewMessage, RoomName, UserId};
use reqwest::StatusCode;
use serde_json::Value;

use crate::{
    common::{Backend, both_backends},
    helpers::{Session, TestApp, expect_error, expect_json, spawn_app},
};

both_backends!(
    a_fresh_room_has_no_history_and_no_rooms_are_listed,
    history_pages_backwards_oldest_first,
    rooms_with_messages_are_listed_with_their_last_seq,
);

/// Stores `n` messages from `sender` in `room` (chat over WebSocket is not part of this
/// suite yet, so history is arranged through the store).
async fn store_messages(app: &TestApp, sender: &Session, room: &str, n: usize) {
    let room = RoomName::parse(room).expect("valid room");
    let sender_id = UserId(sender.user_id.parse().expect("uuid"));
    let batch: Vec<NewMessage> = (1..=n)
        .map(|i| NewMessage {
            id: uuid::Uuid::now_v7(),
            room: room.clone(),
            sender_id,
            sender_email: sender.email.clone(),
            sender_name: sender.email.split('@').next().expect("local part").to_owned(),
            content: format!("message {i}"),
            client_id: (i % 2 == 0).then(|| format!("{room}-client-{i}")),
            created_at: chrono::Utc::now(),
            kind: confab::domain::MessageKind::Message,
            target_id: None,
            mentions: confab::domain::Mentions::default(),
        })
        .collect();
    let stored = app.state.store.append_messages(&room, &batch).await.expect("append");
    assert!(stored.iter().all(|a| !a.duplicate));
}

fn seqs(body: &Value) -> Vec<i64> {
    body["messages"].as_array().expect("messages array").iter().map(|m| m["seq"].as_i64().expect("seq")).collect()
}

async fn a_fresh_room_has_no_history_and_no_rooms_are_listed(backend: Backend) {
    let app = spawn_app(backend).await;
    let s = app.register("jane@example.com").await;

    let body = expect_json(app.get_authed("/api/messages/general", &s.token).await, StatusCode::OK).await;
    assert_eq!(body, serde_json::json!({ "messages": [] }));
    let body = expect_json(app.get_authed("/api/rooms", &s.token).await, StatusCode::OK).await;
    assert_eq!(body, serde_json::json!({ "rooms": [] }));
}

async fn history_pages_backwards_oldest_first(backend: Backend) {
    let app = spawn_app(backend).await;
    let s = app.register("kim@example.com").await;
    store_messages(&app, &s, "team:dev_1-x", 10).await;

    let all = expect_json(app.get_authed("/api/messages/team:dev_1-x", &s.token).await, StatusCode::OK).await;
    assert_eq!(seqs(&all), (1..=10).collect::<Vec<_>>());

    // The wire shape of a Message, camelCase, clientId only when given.
    let first = &all["messages"][0];
    let mut keys: Vec<&str> = first.as_object().expect("object").keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["content", "createdAt", "id", "room", "senderId", "senderName", "seq"], "{first}");
    assert_eq!(first["room"], "team:dev_1-x");
    assert_eq!(first["senderId"], s.user_id.as_str());
    assert_eq!(first["senderName"], "kim", "a display name, never the address");
    assert_eq!(first["content"], "message 1");
    assert!(chrono::DateTime::parse_from_rfc3339(first["createdAt"].as_str().expect("createdAt")).is_ok(), "{first}");
    assert!(uuid::Uuid::parse_str(first["id"].as_str().expect("id")).is_ok(), "{first}");
    assert_eq!(all["messages"][1]["clientId"], "team:dev_1-x-client-2");

    let newest =
        expect_json(app.get_authed("/api/messages/team:dev_1-x?limit=3", &s.token).await, StatusCode::OK).await;
    assert_eq!(seqs(&newest), [8, 9, 10]);
    let older =
        expect_json(app.get_authed("/api/messages/team:dev_1-x?limit=3&before=8", &s.token).await, StatusCode::OK)
            .await;
    assert_eq!(seqs(&older), [5, 6, 7]);
    let oldest =
        expect_json(app.get_authed("/api/messages/team:dev_1-x?limit=5&before=2", &s.token).await, StatusCode::OK)
            .await;
    assert_eq!(seqs(&oldest), [1]);
    let none = expect_json(app.get_authed("/api/messages/team:dev_1-x?before=1", &s.token).await, StatusCode::OK).await;
    assert_eq!(seqs(&none), Vec::<i64>::new());
    let bounds =
        expect_json(app.get_authed("/api/messages/team:dev_1-x?limit=200", &s.token).await, StatusCode::OK).await;
    assert_eq!(seqs(&bounds).len(), 10);
    let one = expect_json(app.get_authed("/api/messages/team:dev_1-x?limit=1", &s.token).await, StatusCode::OK).await;
    assert_eq!(seqs(&one), [10]);

    // Another room's history is separate.
    let other = expect_json(app.get_authed("/api/messages/general", &s.token).await, StatusCode::OK).await;
    assert_eq!(seqs(&other), Vec::<i64>::new());
}

async fn rooms_with_messages_are_listed_with_their_last_seq(backend: Backend) {
    let app = spawn_app(backend).await;
    let s = app.register("lee@example.com").await;
    store_messages(&app, &s, "zeta", 2).await;
    store_messages(&app, &s, "alpha", 3).await;

    let body = expect_json(app.get_authed("/api/rooms", &s.token).await, StatusCode::OK).await;
    let rooms = body["rooms"].as_array().expect("rooms");
    let summary: Vec<(&str, i64)> =
        rooms.iter().map(|r| (r["name"].as_str().expect("name"), r["lastSeq"].as_i64().expect("lastSeq"))).collect();
    assert_eq!(summary, [("alpha", 3), ("zeta", 2)]);
    assert!(rooms.iter().all(|r| r["members"].is_u64()), "{body}");
}

#[tokio::test]
async fn bad_room_names_limits_and_cursors_are_400() {
    let app = spawn_app(Backend::Sqlite).await;
    let s = app.register("mia@example.com").await;
    let long = "r".repeat(65);
    for room in ["bad.room", "has%20space", "semi;colon", "%C3%BCmlaut", long.as_str()] {
        let resp = app.get_authed(&format!("/api/messages/{room}"), &s.token).await;
        expect_error(resp, StatusCode::BAD_REQUEST, "invalid_room").await;
    }
    let max = "r".repeat(64);
    expect_json(app.get_authed(&format!("/api/messages/{max}"), &s.token).await, StatusCode::OK).await;

    for (query, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=201", "invalid_limit"),
        ("limit=-1", "invalid_limit"),
        ("before=0", "invalid_before"),
        ("before=-5", "invalid_before"),
    ] {
        let resp = app.get_authed(&format!("/api/messages/general?{query}"), &s.token).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{query} accepted");
        expect_error(resp, StatusCode::BAD_REQUEST, code).await;
    }
    // Not numbers at all: the same parameter codes.
    for (query, code) in
        [("limit=abc", "invalid_limit"), ("limit=1.5", "invalid_limit"), ("before=x", "invalid_before")]
    {
        let resp = app.get_authed(&format!("/api/messages/general?{query}"), &s.token).await;
        expect_error(resp, StatusCode::BAD_REQUEST, code).await;
    }
}

#[tokio::test]
async fn history_and_rooms_need_a_token() {
    let app = spawn_app(Backend::Sqlite).await;
    for path in ["/api/messages/general", "/api/rooms", "/api/messages/bad.room?limit=0"] {
        expect_error(app.get(path).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
        expect_error(app.get_authed(path, "not-a-jwt").await, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
}
