//! The rest of the room model: display names instead of addresses, mutes, archiving, direct
//! rooms, the registration policy with invitation codes, and the audit log of what
//! administrators and moderators did. Both backends; mutes also across two nodes.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    common::{Backend, both_backends},
    helpers::{
        Session, TestApp, TestSocket, expect_error, expect_json, spawn_app_with, spawn_chat_node, spawn_cluster,
    },
    ws::connect_user,
};

both_backends!(
    rooms_show_display_names_and_never_addresses,
    a_muted_member_reads_but_cannot_send_until_unmuted,
    an_archived_room_is_left_by_everyone_and_refuses_joins,
    a_direct_room_is_the_same_for_a_pair_and_closed_to_others,
    closed_registration_refuses_and_invite_registration_needs_a_live_code,
    moderation_and_administration_are_in_the_audit_log,
    a_deletion_is_an_event_of_the_stream_and_history_keeps_a_tombstone,
    an_edit_is_an_event_of_the_stream_and_history_shows_the_latest_content,
);

async fn call(app: &TestApp, method: Method, path: &str, token: &str, body: Option<Value>) -> reqwest::Response {
    let mut req = app.client.request(method, app.url(path)).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.expect("request")
}

async fn create_room(app: &TestApp, owner: &Session, body: Value) -> Value {
    expect_json(call(app, Method::POST, "/api/rooms", &owner.token, Some(body)).await, StatusCode::CREATED).await
}

async fn rooms_show_display_names_and_never_addresses(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let body = json!({ "email": "ann@example.com", "password": "password123", "displayName": "  Ann   Lee " });
    let registered = expect_json(app.post_json("/api/auth/register", &body).await, StatusCode::OK).await;
    assert_eq!(registered["user"]["displayName"], "Ann Lee", "white space tidied");
    let ann = crate::helpers::Session::from_register(registered);
    // Invisible characters are dropped, not refused; a name longer than 32 characters is refused.
    let hidden = json!({ "email": "zed@example.com", "password": "password123", "displayName": "z\u{200B}ed" });
    let zed = expect_json(app.post_json("/api/auth/register", &hidden).await, StatusCode::OK).await;
    assert_eq!(zed["user"]["displayName"], "zed");
    let long = json!({ "email": "long@example.com", "password": "password123", "displayName": "x".repeat(33) });
    expect_error(app.post_json("/api/auth/register", &long).await, StatusCode::BAD_REQUEST, "invalid_payload").await;
    // So is an invitation code over 64 characters, even where none is needed.
    let code = json!({ "email": "long@example.com", "password": "password123", "inviteCode": "c".repeat(65) });
    expect_error(app.post_json("/api/auth/register", &code).await, StatusCode::BAD_REQUEST, "invalid_payload").await;
    let (bob, mut bob_ws) = connect_user(&app, "bob.smith@example.com").await;
    assert_eq!(bob.name(), "bob.smith", "the default is the address's local part");

    let mut ann_ws = TestSocket::connect(&app, &ann.token).await;
    ann_ws.join("general").await;
    bob_ws.join("general").await;
    let joined = ann_ws.next_of_type("system").await;
    assert_eq!((&joined["name"], &joined["message"]), (&json!("bob.smith"), &json!("bob.smith joined general")));
    assert!(!joined.to_string().contains("@example.com"), "no address in {joined}");
    bob_ws.send("general", "hi").await;
    let msg = ann_ws.next_message().await;
    assert_eq!(msg.sender_name, "bob.smith");
    assert!(!msg.raw.to_string().contains("@example.com"), "no address in {}", msg.raw);

    // Renamed: new messages carry the new name; what was sent keeps the old one.
    let renamed = call(&app, Method::PATCH, "/api/me", &bob.token, Some(json!({ "displayName": "Bobby" }))).await;
    assert_eq!(expect_json(renamed, StatusCode::OK).await["displayName"], "Bobby");
    // Nothing left after tidying: back to the default.
    let blank = call(&app, Method::PATCH, "/api/me", &ann.token, Some(json!({ "displayName": " \u{200B} " }))).await;
    assert_eq!(expect_json(blank, StatusCode::OK).await["displayName"], "ann");
    let mut bob_again = TestSocket::connect(&app, &bob.token).await;
    bob_again.join("general").await;
    bob_again.send("general", "renamed").await;
    let history = expect_json(app.get_authed("/api/messages/general", &ann.token).await, StatusCode::OK).await;
    let names: Vec<&Value> =
        history["messages"].as_array().expect("messages").iter().map(|m| &m["senderName"]).collect();
    assert_eq!(names, [&json!("bob.smith"), &json!("Bobby")]);
    assert!(!history.to_string().contains("@example.com"), "history shows no addresses: {history}");
    let members = expect_json(app.get_authed("/api/rooms/general/members", &ann.token).await, StatusCode::OK).await;
    assert!(!members.to_string().contains("@example.com"), "member lists show no addresses: {members}");
    // My own address is mine to see.
    assert_eq!(expect_json(app.me(&bob.token).await, StatusCode::OK).await["email"], "bob.smith@example.com");
}

async fn a_muted_member_reads_but_cannot_send_until_unmuted(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (owner, mut owner_ws) = connect_user(&app, "owner@example.com").await;
    let (eve, mut eve_ws) = connect_user(&app, "eve@example.com").await;
    create_room(&app, &owner, json!({ "name": "hall" })).await;
    owner_ws.join("hall").await;
    eve_ws.join("hall").await;
    let mute = |by: &Session, who: &Session, minutes: u32| {
        let (app, token, body) = (&app, by.token.clone(), json!({ "userId": who.user_id, "minutes": minutes }));
        async move { call(app, Method::POST, "/api/rooms/hall/mutes", &token, Some(body)).await }
    };
    expect_error(mute(&eve, &owner, 5).await, StatusCode::FORBIDDEN, "forbidden").await;
    expect_error(mute(&owner, &owner, 5).await, StatusCode::FORBIDDEN, "forbidden").await;
    expect_error(mute(&owner, &eve, 0).await, StatusCode::BAD_REQUEST, "invalid_payload").await;
    let stranger = json!({ "userId": uuid::Uuid::new_v4() });
    let banned = call(&app, Method::POST, "/api/rooms/hall/bans", &owner.token, Some(stranger.clone())).await;
    expect_error(banned, StatusCode::CONFLICT, "unknown_user").await;
    let muted = call(
        &app,
        Method::POST,
        "/api/rooms/hall/mutes",
        &owner.token,
        Some(json!({ "userId": stranger["userId"], "minutes": 5 })),
    );
    expect_error(muted.await, StatusCode::CONFLICT, "not_a_member").await;

    assert_eq!(mute(&owner, &eve, 10).await.status(), StatusCode::NO_CONTENT);
    let muted = eve_ws.next_of_type("muted").await;
    assert_eq!((&muted["room"], &muted["userId"]), (&json!("hall"), &json!(eve.user_id)));
    assert!(muted["until"].as_str().is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()), "{muted}");
    assert_eq!(owner_ws.next_of_type("muted").await, muted, "the room hears it too");
    let members = expect_json(app.get_authed("/api/rooms/hall/members", &owner.token).await, StatusCode::OK).await;
    let muted_members: Vec<&Value> =
        members["members"].as_array().expect("members").iter().filter(|m| m["mutedUntil"].is_string()).collect();
    assert_eq!(muted_members.len(), 1, "{members}");
    assert_eq!(muted_members[0]["userId"], eve.user_id.as_str());
    let refused =
        eve_ws.request_error(json!({ "type": "send_message", "room": "hall", "content": "x" }), "muted").await;
    assert!(refused["message"].as_str().is_some_and(|m| m.contains("muted")), "{refused}");
    // She still reads the room.
    owner_ws.send("hall", "still here?").await;
    assert_eq!(eve_ws.next_message().await.content, "still here?");
    // The mute is stored: a new session of hers is muted too.
    let mut eve_again = TestSocket::connect(&app, &eve.token).await;
    eve_again.join("hall").await;
    eve_again.request_error(json!({ "type": "send_message", "room": "hall", "content": "x" }), "muted").await;

    let path = format!("/api/rooms/hall/mutes/{}", eve.user_id);
    expect_error(call(&app, Method::DELETE, &path, &eve.token, None).await, StatusCode::FORBIDDEN, "forbidden").await;
    assert_eq!(call(&app, Method::DELETE, &path, &owner.token, None).await.status(), StatusCode::NO_CONTENT);
    let unmuted = eve_ws.next_of_type("muted").await;
    assert_eq!(unmuted["until"], Value::Null, "{unmuted}");
    eve_ws.send("hall", "thanks").await;
    eve_again.next_of_type("muted").await;
    eve_again.send("hall", "me too").await;
}

async fn an_archived_room_is_left_by_everyone_and_refuses_joins(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (owner, mut owner_ws) = connect_user(&app, "owner@example.com").await;
    let (bob, mut bob_ws) = connect_user(&app, "bob@example.com").await;
    create_room(&app, &owner, json!({ "name": "old", "title": "Old times" })).await;
    owner_ws.join("old").await;
    bob_ws.join("old").await;
    bob_ws.send("old", "last words").await;
    bob_ws.next_message().await;
    owner_ws.next_message().await;

    let patched = call(&app, Method::PATCH, "/api/rooms/old", &bob.token, Some(json!({ "topic": "x" }))).await;
    expect_error(patched, StatusCode::FORBIDDEN, "forbidden").await;
    let patch = json!({ "topic": "  the past ", "title": "" });
    let patched =
        expect_json(call(&app, Method::PATCH, "/api/rooms/old", &owner.token, Some(patch)).await, StatusCode::OK).await;
    assert_eq!((&patched["topic"], patched.get("title")), (&json!("the past"), None), "{patched}");

    let archive = |who: &Session| {
        let (app, token) = (&app, who.token.clone());
        async move { call(app, Method::POST, "/api/rooms/old/archive", &token, None).await }
    };
    expect_error(archive(&bob).await, StatusCode::FORBIDDEN, "forbidden").await;
    assert_eq!(archive(&owner).await.status(), StatusCode::NO_CONTENT);
    let removed = json!({ "type": "removed", "room": "old", "userId": uuid::Uuid::nil(), "reason": "archived" });
    assert_eq!(bob_ws.next_of_type("removed").await, removed);
    assert_eq!(owner_ws.next_of_type("removed").await, removed);
    bob_ws.request_error(json!({ "type": "send_message", "room": "old", "content": "x" }), "forbidden").await;
    bob_ws.request_error(json!({ "type": "join_room", "room": "old" }), "forbidden").await;
    // Still readable, no longer listed.
    let history = expect_json(app.get_authed("/api/messages/old", &bob.token).await, StatusCode::OK).await;
    assert_eq!(history["messages"][0]["content"], "last words");
    let listed = expect_json(app.get_authed("/api/rooms", &bob.token).await, StatusCode::OK).await;
    assert!(listed["rooms"].as_array().expect("rooms").iter().all(|r| r["name"] != "old"), "{listed}");
    let described = expect_json(app.get_authed("/api/rooms/old", &bob.token).await, StatusCode::OK).await;
    assert!(described["archivedAt"].is_string(), "{described}");

    let back = call(&app, Method::DELETE, "/api/rooms/old/archive", &owner.token, None).await;
    assert_eq!(back.status(), StatusCode::NO_CONTENT);
    bob_ws.join("old").await;
}

async fn a_direct_room_is_the_same_for_a_pair_and_closed_to_others(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (ann, mut ann_ws) = connect_user(&app, "ann@example.com").await;
    let (bob, mut bob_ws) = connect_user(&app, "bob@example.com").await;
    let (eve, mut eve_ws) = connect_user(&app, "eve@example.com").await;
    let open = |who: &Session, with: &Session| {
        let (app, token, path) = (&app, who.token.clone(), format!("/api/dm/{}", with.user_id));
        async move { call(app, Method::POST, &path, &token, None).await }
    };
    let room = expect_json(open(&ann, &bob).await, StatusCode::OK).await;
    let name = room["name"].as_str().expect("name").to_owned();
    assert!(name.starts_with("dm:"), "{room}");
    assert!(!name.contains(&ann.user_id) && !name.contains(&bob.user_id), "the name says nothing of who: {name}");
    assert_eq!((&room["kind"], &room["peer"]["displayName"]), (&json!("direct"), &json!("bob")), "{room}");
    let theirs = expect_json(open(&bob, &ann).await, StatusCode::OK).await;
    assert_eq!((&theirs["name"], &theirs["peer"]["userId"]), (&json!(name), &json!(ann.user_id)));
    let notes = expect_json(open(&ann, &ann).await, StatusCode::OK).await;
    assert_eq!((&notes["kind"], notes.get("peer")), (&json!("direct"), None), "notes to myself: {notes}");
    assert_ne!(notes["name"], room["name"]);
    let nobody = call(&app, Method::POST, &format!("/api/dm/{}", uuid::Uuid::new_v4()), &ann.token, None).await;
    expect_error(nobody, StatusCode::NOT_FOUND, "not_found").await;

    // Both chat in it; it is listed to them with the other person.
    ann_ws.join(&name).await;
    bob_ws.join(&name).await;
    ann_ws.send(&name, "psst").await;
    assert_eq!(bob_ws.next_message().await.content, "psst");
    let listed = expect_json(app.get_authed("/api/rooms", &bob.token).await, StatusCode::OK).await;
    let dm = listed["rooms"].as_array().expect("rooms").iter().find(|r| r["name"] == name.as_str()).cloned();
    assert_eq!(dm.map(|r| r["peer"]["displayName"].clone()), Some(json!("ann")));

    // Eve cannot see, read or join it; nobody makes a dm: room any other way.
    let listed = expect_json(app.get_authed("/api/rooms", &eve.token).await, StatusCode::OK).await;
    assert!(listed["rooms"].as_array().expect("rooms").iter().all(|r| r["name"] != name.as_str()));
    let path = format!("/api/messages/{name}");
    expect_error(app.get_authed(&path, &eve.token).await, StatusCode::NOT_FOUND, "not_found").await;
    eve_ws.request_error(json!({ "type": "join_room", "room": name, "since": 0 }), "forbidden").await;
    eve_ws.request_error(json!({ "type": "join_room", "room": "dm:0123456789" }), "not_found").await;
    let taken = call(&app, Method::POST, "/api/rooms", &eve.token, Some(json!({ "name": "dm:mine" }))).await;
    expect_error(taken, StatusCode::CONFLICT, "name_reserved").await;
}

async fn closed_registration_refuses_and_invite_registration_needs_a_live_code(backend: Backend) {
    let closed = spawn_app_with(backend, |c| c.auth.registration = confab::config::Registration::Closed).await;
    let body = |email: &str, code: Option<&str>| {
        let mut b = json!({ "email": email, "password": "password123" });
        if let Some(code) = code {
            b["inviteCode"] = json!(code);
        }
        b
    };
    let refused = closed.post_json("/api/auth/register", &body("a@example.com", None)).await;
    expect_error(refused, StatusCode::FORBIDDEN, "registration_closed").await;

    let app = spawn_app_with(backend, |c| c.auth.registration = confab::config::Registration::Invite).await;
    expect_error(
        app.post_json("/api/auth/register", &body("a@example.com", None)).await,
        StatusCode::FORBIDDEN,
        "invalid_invite",
    )
    .await;
    let forged = app.post_json("/api/auth/register", &body("a@example.com", Some("made-up"))).await;
    expect_error(forged, StatusCode::FORBIDDEN, "invalid_invite").await;
    // An administrator makes codes; others may not.
    confab::auth::create_account(&app.state.store, &test_hasher(), "root@example.com", "password123")
        .await
        .expect("admin account");
    assert!(app.state.store.set_admin("root@example.com", true).await.expect("promote"));
    let root = app.login("root@example.com", "password123").await;
    let made = call(&app, Method::POST, "/api/admin/invites", &root.token, None).await;
    let invite = expect_json(made, StatusCode::CREATED).await;
    let code = invite["code"].as_str().expect("code").to_owned();
    assert!(code.len() >= 22, "{invite}");
    let joined =
        expect_json(app.post_json("/api/auth/register", &body("new@example.com", Some(&code))).await, StatusCode::OK)
            .await;
    let newcomer = crate::helpers::Session::from_register(joined);
    let spent = app.post_json("/api/auth/register", &body("again@example.com", Some(&code))).await;
    expect_error(spent, StatusCode::FORBIDDEN, "invalid_invite").await;
    let denied = call(&app, Method::POST, "/api/admin/invites", &newcomer.token, None).await;
    expect_error(denied, StatusCode::FORBIDDEN, "forbidden").await;
    // A code whose registration failed (email taken) is not spent.
    let second =
        expect_json(call(&app, Method::POST, "/api/admin/invites", &root.token, None).await, StatusCode::CREATED).await;
    let second = second["code"].as_str().expect("code");
    let taken = app.post_json("/api/auth/register", &body("new@example.com", Some(second))).await;
    expect_error(taken, StatusCode::CONFLICT, "email_taken").await;
    expect_json(app.post_json("/api/auth/register", &body("third@example.com", Some(second))).await, StatusCode::OK)
        .await;
}

fn test_hasher() -> confab::auth::PasswordHasher {
    confab::auth::PasswordHasher::new(&confab::config::Argon2Config { memory_kib: 64, iterations: 1, parallelism: 1 })
        .expect("hasher")
}

async fn moderation_and_administration_are_in_the_audit_log(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (owner, _) = connect_user(&app, "owner@example.com").await;
    let (eve, mut eve_ws) = connect_user(&app, "eve@example.com").await;
    let (admin, _) = connect_user(&app, "admin@example.com").await;
    create_room(&app, &owner, json!({ "name": "hall" })).await;
    eve_ws.join("hall").await;
    let mute = json!({ "userId": eve.user_id, "minutes": 5 });
    assert_eq!(
        call(&app, Method::POST, "/api/rooms/hall/mutes", &owner.token, Some(mute)).await.status(),
        StatusCode::NO_CONTENT
    );
    let ban = json!({ "userId": eve.user_id });
    assert_eq!(
        call(&app, Method::POST, "/api/rooms/hall/bans", &owner.token, Some(ban)).await.status(),
        StatusCode::NO_CONTENT
    );

    expect_error(app.get_authed("/api/admin/audit", &owner.token).await, StatusCode::FORBIDDEN, "forbidden").await;
    assert!(app.state.store.set_admin("admin@example.com", true).await.expect("promote"));
    let log = expect_json(app.get_authed("/api/admin/audit", &admin.token).await, StatusCode::OK).await;
    let entries = log["entries"].as_array().expect("entries");
    let seen: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or("?"),
                e["actor"].as_str().unwrap_or("?"),
                e["target"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("room.ban", "owner@example.com", eve.user_id.as_str()),
            ("room.mute", "owner@example.com", eve.user_id.as_str())
        ],
        "newest first: {log}"
    );
    assert_eq!((&entries[0]["room"], &entries[0]["source"]), (&json!("hall"), &json!("127.0.0.1")), "{log}");
    let older = entries[0]["id"].as_i64().expect("id");
    let page = expect_json(
        app.get_authed(&format!("/api/admin/audit?before={older}&limit=1"), &admin.token).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page["entries"].as_array().map(|e| (e.len(), e[0]["action"].clone())), Some((1, json!("room.mute"))));
}

/// Mutes reach sessions on other nodes through the bus.
#[tokio::test]
async fn a_mute_made_on_one_node_holds_on_another() {
    let Some(cluster) = spawn_cluster(2, |_| {}).await else { return };
    let (owner, mut owner_ws) = connect_user(cluster.node(0), "owner@example.com").await;
    let eve = cluster.node(1).register("eve@example.com").await;
    let mut eve_ws = TestSocket::connect(cluster.node(1), &eve.token).await;
    create_room(cluster.node(0), &owner, json!({ "name": "hall" })).await;
    owner_ws.join("hall").await;
    eve_ws.join("hall").await;
    let body = json!({ "userId": eve.user_id, "minutes": 5 });
    let muted = call(cluster.node(0), Method::POST, "/api/rooms/hall/mutes", &owner.token, Some(body)).await;
    assert_eq!(muted.status(), StatusCode::NO_CONTENT);
    assert_eq!(eve_ws.next_of_type("muted").await["userId"], eve.user_id.as_str());
    eve_ws.request_error(json!({ "type": "send_message", "room": "hall", "content": "x" }), "muted").await;
}

async fn a_deletion_is_an_event_of_the_stream_and_history_keeps_a_tombstone(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (owner, mut owner_ws) = connect_user(&app, "owner@example.com").await;
    let (eve, mut eve_ws) = connect_user(&app, "eve@example.com").await;
    let (bob, mut bob_ws) = connect_user(&app, "bob@example.com").await;
    create_room(&app, &owner, json!({ "name": "hall" })).await;
    for ws in [&mut owner_ws, &mut eve_ws, &mut bob_ws] {
        ws.join("hall").await;
    }
    let oops = eve_ws.send("hall", "oops").await;
    let rude = eve_ws.send("hall", "rude").await;
    let fine = bob_ws.send("hall", "fine").await;
    for ws in [&mut owner_ws, &mut eve_ws, &mut bob_ws] {
        assert_eq!(ws.messages(3).await.len(), 3);
    }
    let delete = |who: &Session, id: &str| {
        let (app, token, path) = (&app, who.token.clone(), format!("/api/rooms/hall/messages/{id}"));
        async move { call(app, Method::DELETE, &path, &token, None).await }
    };
    // Others' messages are for moderators only.
    expect_error(delete(&bob, &oops.id).await, StatusCode::FORBIDDEN, "forbidden").await;
    // The author deletes her own: the next seq of the stream, for everyone.
    assert_eq!(delete(&eve, &oops.id).await.status(), StatusCode::NO_CONTENT);
    for ws in [&mut owner_ws, &mut eve_ws, &mut bob_ws] {
        let gone = ws.next_of_type("message_deleted").await;
        assert_eq!((&gone["room"], &gone["seq"], &gone["id"]), (&json!("hall"), &json!(4), &json!(oops.id)), "{gone}");
        assert_eq!(gone["deletedBy"], eve.user_id.as_str());
    }
    expect_error(delete(&eve, &oops.id).await, StatusCode::NOT_FOUND, "not_found").await;
    // The owner deletes someone else's.
    assert_eq!(delete(&owner, &rude.id).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(bob_ws.next_of_type("message_deleted").await["seq"], 5);

    // History: tombstones in place, the deletion events left out.
    let history = expect_json(app.get_authed("/api/messages/hall", &bob.token).await, StatusCode::OK).await;
    let rows: Vec<(i64, &str, bool)> = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| (m["seq"].as_i64().expect("seq"), m["content"].as_str().expect("content"), m["deletedAt"].is_string()))
        .collect();
    assert_eq!(rows, [(1, "", true), (2, "", true), (3, "fine", false)]);
    assert_eq!(fine.seq, 3);
    // A client resuming from before sees the tombstones and then the deletions, in seq order.
    let mut late = TestSocket::connect(&app, &bob.token).await;
    let ack = late.request(json!({ "type": "join_room", "room": "hall", "since": 0 })).await;
    assert_eq!(ack["seq"], 5);
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let frame = late.next_frame().await;
        if let Some(kind @ ("message" | "message_deleted")) = frame["type"].as_str() {
            seen.push((kind.to_owned(), frame["seq"].as_i64().expect("seq")));
        }
    }
    let kinds: Vec<(&str, i64)> = seen.iter().map(|(k, s)| (k.as_str(), *s)).collect();
    assert_eq!(kinds, [("message", 1), ("message", 2), ("message", 3), ("message_deleted", 4), ("message_deleted", 5)]);
    // The owner's deletion of another's message is audited.
    assert!(app.state.store.set_admin("owner@example.com", true).await.expect("promote"));
    let log = expect_json(app.get_authed("/api/admin/audit", &owner.token).await, StatusCode::OK).await;
    assert_eq!(log["entries"][0]["action"], "message.delete", "{log}");
}

async fn an_edit_is_an_event_of_the_stream_and_history_shows_the_latest_content(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (eve, mut eve_ws) = connect_user(&app, "eve@example.com").await;
    let (bob, mut bob_ws) = connect_user(&app, "bob@example.com").await;
    eve_ws.join("general").await;
    bob_ws.join("general").await;
    let typo = eve_ws.send("general", "helo").await;
    bob_ws.next_message().await;
    eve_ws.next_message().await;
    let edit = |who: &Session, id: &str, content: &str| {
        let (app, token, path) = (&app, who.token.clone(), format!("/api/rooms/general/messages/{id}"));
        let body = json!({ "content": content });
        async move { call(app, Method::PATCH, &path, &token, Some(body)).await }
    };
    expect_error(edit(&bob, &typo.id, "mine now").await, StatusCode::NOT_FOUND, "not_found").await;
    expect_error(edit(&eve, &typo.id, "   ").await, StatusCode::BAD_REQUEST, "invalid_payload").await;
    assert_eq!(edit(&eve, &typo.id, "  hello ").await.status(), StatusCode::NO_CONTENT);
    for ws in [&mut eve_ws, &mut bob_ws] {
        let edited = ws.next_of_type("message_edited").await;
        assert_eq!((&edited["seq"], &edited["id"], &edited["content"]), (&json!(2), &json!(typo.id), &json!("hello")));
    }
    let history = expect_json(app.get_authed("/api/messages/general", &bob.token).await, StatusCode::OK).await;
    let first = &history["messages"][0];
    assert_eq!((&first["content"], first["editedAt"].is_string()), (&json!("hello"), true), "{history}");
    assert_eq!(history["messages"].as_array().map(Vec::len), Some(1), "the edit event is not a message");
    // A resume from the start: the message as it is now, then its edit, in seq order.
    let mut late = TestSocket::connect(&app, &bob.token).await;
    assert_eq!(late.request(json!({ "type": "join_room", "room": "general", "since": 0 })).await["seq"], 2);
    assert_eq!(late.next_message().await.content, "hello");
    assert_eq!(late.next_of_type("message_edited").await["seq"], 2);
    // Deleted, it cannot be edited.
    let path = format!("/api/rooms/general/messages/{}", typo.id);
    assert_eq!(call(&app, Method::DELETE, &path, &eve.token, None).await.status(), StatusCode::NO_CONTENT);
    expect_error(edit(&eve, &typo.id, "again").await, StatusCode::NOT_FOUND, "not_found").await;
}
