//! Rooms as entities: public and private rooms created over REST, who may see, join, read and
//! manage them, and free-form names that create public rooms on first join (`rooms.auto_create`).
//! Every test runs on SQLite with the in-process bus and on PostgreSQL with the Redis bus.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    common::{Backend, both_backends},
    helpers::{Session, TestApp, expect_error, expect_json, spawn_chat_node},
    ws::connect_user,
};

both_backends!(
    a_public_room_is_listed_to_everyone_and_anyone_who_joins_becomes_a_member,
    a_private_room_is_hidden_from_non_members_until_they_are_invited,
    members_are_removed_by_themselves_or_by_a_higher_role_only,
    with_auto_create_off_only_created_rooms_can_be_joined,
    a_ban_keeps_a_user_out_until_lifted,
    administrators_see_and_moderate_every_room,
);

async fn call(app: &TestApp, method: Method, path: &str, token: &str, body: Option<Value>) -> reqwest::Response {
    let mut req = app.client.request(method, app.url(path)).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.expect("request")
}

async fn create(app: &TestApp, owner: &Session, body: Value) -> Value {
    expect_json(call(app, Method::POST, "/api/rooms", &owner.token, Some(body)).await, StatusCode::CREATED).await
}

/// The names of the rooms `who` sees, with their role in each.
async fn listed(app: &TestApp, who: &Session) -> Vec<(String, Value)> {
    let body = expect_json(app.get_authed("/api/rooms", &who.token).await, StatusCode::OK).await;
    body["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .map(|r| (r["name"].as_str().expect("name").to_owned(), r["role"].clone()))
        .collect()
}

async fn roles(app: &TestApp, who: &Session, room: &str) -> Vec<(String, String)> {
    let body =
        expect_json(app.get_authed(&format!("/api/rooms/{room}/members"), &who.token).await, StatusCode::OK).await;
    body["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            assert!(m.get("email").is_none(), "member lists show names, not addresses: {m}");
            (m["displayName"].as_str().expect("displayName").to_owned(), m["role"].as_str().expect("role").to_owned())
        })
        .collect()
}

async fn a_public_room_is_listed_to_everyone_and_anyone_who_joins_becomes_a_member(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (owner, _) = connect_user(&app, "owner@example.com").await;
    let (bob, mut bob_ws) = connect_user(&app, "bob@example.com").await;
    let room = create(&app, &owner, json!({ "name": "lobby", "title": "The lobby", "topic": "say hi" })).await;
    assert_eq!(
        (room["kind"].as_str(), room["role"].as_str(), room["title"].as_str()),
        (Some("public"), Some("owner"), Some("The lobby"))
    );
    assert_eq!(room["lastSeq"], 0);
    // The name is taken now.
    let again = call(&app, Method::POST, "/api/rooms", &bob.token, Some(json!({ "name": "lobby" }))).await;
    expect_error(again, StatusCode::CONFLICT, "room_exists").await;

    assert_eq!(listed(&app, &bob).await, [("lobby".to_owned(), Value::Null)]);
    bob_ws.join("lobby").await;
    bob_ws.send("lobby", "hello").await;
    assert_eq!(listed(&app, &bob).await, [("lobby".to_owned(), json!("member"))]);
    assert_eq!(
        roles(&app, &bob, "lobby").await,
        [("owner".to_owned(), "owner".to_owned()), ("bob".to_owned(), "member".to_owned())]
    );
    let described = expect_json(app.get_authed("/api/rooms/lobby", &bob.token).await, StatusCode::OK).await;
    assert_eq!((described["lastSeq"].as_i64(), described["topic"].as_str()), (Some(1), Some("say hi")));
    expect_error(app.get_authed("/api/rooms/nowhere", &bob.token).await, StatusCode::NOT_FOUND, "not_found").await;
}

async fn a_private_room_is_hidden_from_non_members_until_they_are_invited(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (owner, mut owner_ws) = connect_user(&app, "owner@example.com").await;
    let (eve, mut eve_ws) = connect_user(&app, "eve@example.com").await;
    create(&app, &owner, json!({ "name": "secret", "kind": "private" })).await;
    owner_ws.join("secret").await;
    owner_ws.send("secret", "for members only").await;

    // Eve cannot see, read, join or manage it.
    assert!(listed(&app, &eve).await.is_empty());
    for path in ["/api/rooms/secret", "/api/rooms/secret/members", "/api/messages/secret"] {
        expect_error(app.get_authed(path, &eve.token).await, StatusCode::NOT_FOUND, "not_found").await;
    }
    eve_ws.request_error(json!({ "type": "join_room", "room": "secret" }), "forbidden").await;
    eve_ws.request_error(json!({ "type": "join_room", "room": "secret", "since": 0 }), "forbidden").await;
    eve_ws.request_error(json!({ "type": "send_message", "room": "secret", "content": "hi" }), "not_joined").await;
    let invite_self =
        call(&app, Method::POST, "/api/rooms/secret/members", &eve.token, Some(json!({ "userId": eve.user_id }))).await;
    expect_error(invite_self, StatusCode::NOT_FOUND, "not_found").await;

    // Invited, she sees it, reads it and joins it.
    let invited =
        call(&app, Method::POST, "/api/rooms/secret/members", &owner.token, Some(json!({ "userId": eve.user_id })))
            .await;
    let member = expect_json(invited, StatusCode::OK).await;
    assert_eq!((member["displayName"].as_str(), member["role"].as_str()), (Some("eve"), Some("member")));
    assert_eq!(listed(&app, &eve).await, [("secret".to_owned(), json!("member"))]);
    let history = expect_json(app.get_authed("/api/messages/secret", &eve.token).await, StatusCode::OK).await;
    assert_eq!(history["messages"][0]["content"], "for members only");
    assert_eq!(eve_ws.join_since("secret", 0).await, 1);
    assert_eq!(eve_ws.next_message().await.content, "for members only");

    // A member may not invite others to a private room; a stranger does not exist.
    let by_member =
        call(&app, Method::POST, "/api/rooms/secret/members", &eve.token, Some(json!({ "userId": owner.user_id })))
            .await;
    expect_error(by_member, StatusCode::FORBIDDEN, "forbidden").await;
    let nobody = json!({ "userId": uuid::Uuid::new_v4() });
    expect_error(
        call(&app, Method::POST, "/api/rooms/secret/members", &owner.token, Some(nobody)).await,
        StatusCode::CONFLICT,
        "unknown_user",
    )
    .await;
}

async fn members_are_removed_by_themselves_or_by_a_higher_role_only(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (owner, mut owner_ws) = connect_user(&app, "owner@example.com").await;
    let (ann, _) = connect_user(&app, "ann@example.com").await;
    let (ben, mut ben_ws) = connect_user(&app, "ben@example.com").await;
    create(&app, &owner, json!({ "name": "club", "kind": "private" })).await;
    for who in [&ann, &ben] {
        let resp =
            call(&app, Method::POST, "/api/rooms/club/members", &owner.token, Some(json!({ "userId": who.user_id })))
                .await;
        expect_json(resp, StatusCode::OK).await;
    }
    // A member cannot remove another, nor the owner.
    for target in [&ben, &owner] {
        let resp =
            call(&app, Method::DELETE, &format!("/api/rooms/club/members/{}", target.user_id), &ann.token, None).await;
        expect_error(resp, StatusCode::FORBIDDEN, "forbidden").await;
    }
    // Ann leaves; the owner removes Ben, who is in the room on a socket: it hears so at once,
    // as does everyone there, and may no longer send, join or read.
    let left = call(&app, Method::DELETE, &format!("/api/rooms/club/members/{}", ann.user_id), &ann.token, None).await;
    assert_eq!(left.status(), StatusCode::NO_CONTENT);
    ben_ws.join("club").await;
    owner_ws.join("club").await;
    let kicked =
        call(&app, Method::DELETE, &format!("/api/rooms/club/members/{}", ben.user_id), &owner.token, None).await;
    assert_eq!(kicked.status(), StatusCode::NO_CONTENT);
    let removed = json!({ "type": "removed", "room": "club", "userId": ben.user_id, "reason": "kicked" });
    assert_eq!(ben_ws.next_of_type("removed").await, removed);
    assert_eq!(owner_ws.next_of_type("removed").await, removed);
    ben_ws
        .request_error(json!({ "type": "send_message", "room": "club", "content": "still here?" }), "forbidden")
        .await;
    let after = owner_ws.send("club", "ben is gone").await;
    assert_eq!(owner_ws.next_message().await.id, after.id);
    // Ben's pong comes after anything the room sent him meanwhile: nothing.
    ben_ws.ping().await;
    assert!(ben_ws.unread().iter().all(|f| f["type"] != "message"), "ben got a message after his removal");
    assert_eq!(roles(&app, &owner, "club").await, [("owner".to_owned(), "owner".to_owned())]);
    ben_ws.request_error(json!({ "type": "join_room", "room": "club" }), "forbidden").await;
    expect_error(app.get_authed("/api/messages/club", &ben.token).await, StatusCode::NOT_FOUND, "not_found").await;
    let again =
        call(&app, Method::DELETE, &format!("/api/rooms/club/members/{}", ben.user_id), &owner.token, None).await;
    expect_error(again, StatusCode::NOT_FOUND, "not_found").await;
}

async fn with_auto_create_off_only_created_rooms_can_be_joined(backend: Backend) {
    let app = spawn_chat_node(backend, |cfg| cfg.rooms.auto_create = false).await;
    let (owner, mut ws) = connect_user(&app, "owner@example.com").await;
    ws.request_error(json!({ "type": "join_room", "room": "general" }), "not_found").await;
    create(&app, &owner, json!({ "name": "general" })).await;
    ws.join("general").await;
    // With it on (the default), a free-form name is a public room after the first join.
    let app = spawn_chat_node(backend, |_| {}).await;
    let (first, mut ws) = connect_user(&app, "first@example.com").await;
    ws.join("general").await;
    let (second, _) = connect_user(&app, "second@example.com").await;
    assert_eq!(listed(&app, &second).await, [("general".to_owned(), Value::Null)]);
    let described = expect_json(app.get_authed("/api/rooms/general", &second.token).await, StatusCode::OK).await;
    assert_eq!(described["kind"], "public");
    // Whoever came first is a member, not its owner.
    assert_eq!(roles(&app, &first, "general").await, [("first".to_owned(), "member".to_owned())]);
}

async fn a_ban_keeps_a_user_out_until_lifted(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (owner, mut owner_ws) = connect_user(&app, "owner@example.com").await;
    let (member, _) = connect_user(&app, "member@example.com").await;
    let (eve, mut eve_ws) = connect_user(&app, "eve@example.com").await;
    create(&app, &owner, json!({ "name": "hall" })).await;
    owner_ws.join("hall").await;
    eve_ws.join("hall").await;
    let ban = |by: &Session, who: &Session| {
        let (app, token, body) = (&app, by.token.clone(), json!({ "userId": who.user_id }));
        async move { call(app, Method::POST, "/api/rooms/hall/bans", &token, Some(body)).await }
    };
    // Members do not ban; nobody bans the owner.
    expect_error(ban(&member, &eve).await, StatusCode::FORBIDDEN, "forbidden").await;
    expect_error(ban(&member, &owner).await, StatusCode::FORBIDDEN, "forbidden").await;
    expect_error(app.get_authed("/api/rooms/hall/bans", &member.token).await, StatusCode::FORBIDDEN, "forbidden").await;

    assert_eq!(ban(&owner, &eve).await.status(), StatusCode::NO_CONTENT);
    let removed = json!({ "type": "removed", "room": "hall", "userId": eve.user_id, "reason": "banned" });
    assert_eq!(eve_ws.next_of_type("removed").await, removed);
    assert_eq!(owner_ws.next_of_type("removed").await, removed);
    // Out: not listed, not readable, not joinable, not even with since.
    assert!(listed(&app, &eve).await.is_empty());
    expect_error(app.get_authed("/api/messages/hall", &eve.token).await, StatusCode::NOT_FOUND, "not_found").await;
    eve_ws.request_error(json!({ "type": "join_room", "room": "hall", "since": 0 }), "forbidden").await;
    let bans = expect_json(app.get_authed("/api/rooms/hall/bans", &owner.token).await, StatusCode::OK).await;
    assert_eq!(bans["bans"][0]["displayName"], "eve");

    // Lifted, she may join the public room again.
    let unban = call(&app, Method::DELETE, &format!("/api/rooms/hall/bans/{}", eve.user_id), &owner.token, None).await;
    assert_eq!(unban.status(), StatusCode::NO_CONTENT);
    let again = call(&app, Method::DELETE, &format!("/api/rooms/hall/bans/{}", eve.user_id), &owner.token, None).await;
    expect_error(again, StatusCode::NOT_FOUND, "not_found").await;
    eve_ws.join("hall").await;
}

async fn administrators_see_and_moderate_every_room(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (owner, _) = connect_user(&app, "owner@example.com").await;
    let (member, _) = connect_user(&app, "member@example.com").await;
    let (admin, _) = connect_user(&app, "admin@example.com").await;
    create(&app, &owner, json!({ "name": "backroom", "kind": "private" })).await;
    let invited = call(
        &app,
        Method::POST,
        "/api/rooms/backroom/members",
        &owner.token,
        Some(json!({ "userId": member.user_id })),
    )
    .await;
    expect_json(invited, StatusCode::OK).await;
    expect_error(app.get_authed("/api/rooms/backroom", &admin.token).await, StatusCode::NOT_FOUND, "not_found").await;

    assert!(app.state.store.set_admin("admin@example.com", true).await.expect("promote"));
    // The same token now carries an administrator's rights: they are looked up per request.
    expect_json(app.get_authed("/api/rooms/backroom", &admin.token).await, StatusCode::OK).await;
    assert_eq!(roles(&app, &admin, "backroom").await.len(), 2);
    let kicked =
        call(&app, Method::DELETE, &format!("/api/rooms/backroom/members/{}", member.user_id), &admin.token, None)
            .await;
    assert_eq!(kicked.status(), StatusCode::NO_CONTENT);
    // A new session joins the private room without becoming a member.
    let mut admin_ws = crate::helpers::TestSocket::connect(&app, &admin.token).await;
    admin_ws.join("backroom").await;
    assert_eq!(roles(&app, &owner, "backroom").await, [("owner".to_owned(), "owner".to_owned())]);
}
