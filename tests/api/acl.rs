//! The access matrix: for each kind of room (public, private, direct) and each standing in it
//! (owner, member, outsider, banned, administrator), every action — history over REST, the
//! member list, join, resume with `since`, send — is allowed or refused exactly as PROTOCOL.md
//! says, checked against the server, on both backends. (Socket.IO refusals: tests/socketio.rs.)

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    common::{Backend, both_backends},
    helpers::{Session, TestApp, TestSocket, expect_json, spawn_chat_node},
    ws::connect_user,
};

both_backends!(every_kind_and_standing_gets_exactly_its_rights);

async fn call(app: &TestApp, method: Method, path: &str, token: &str, body: Option<Value>) -> reqwest::Response {
    let mut req = app.client.request(method, app.url(path)).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.expect("request")
}

/// What a user may do in a room: everything, or nothing (not even see it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rights {
    All,
    None,
}

async fn every_kind_and_standing_gets_exactly_its_rights(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (owner, mut owner_ws) = connect_user(&app, "owner@example.com").await;
    let (member, _) = connect_user(&app, "member@example.com").await;
    let (outsider, _) = connect_user(&app, "outsider@example.com").await;
    let (banned, _) = connect_user(&app, "banned@example.com").await;
    let (admin, _) = connect_user(&app, "admin@example.com").await;
    assert!(app.state.store.set_admin("admin@example.com", true).await.expect("promote"));

    for (name, kind) in [("pub", "public"), ("priv", "private")] {
        let created = call(&app, Method::POST, "/api/rooms", &owner.token, Some(json!({ "name": name, "kind": kind })));
        expect_json(created.await, StatusCode::CREATED).await;
        for who in [&member, &banned] {
            let path = format!("/api/rooms/{name}/members");
            let added = call(&app, Method::POST, &path, &owner.token, Some(json!({ "userId": who.user_id }))).await;
            expect_json(added, StatusCode::OK).await;
        }
        let bans = format!("/api/rooms/{name}/bans");
        let ban = call(&app, Method::POST, &bans, &owner.token, Some(json!({ "userId": banned.user_id }))).await;
        assert_eq!(ban.status(), StatusCode::NO_CONTENT);
        owner_ws.join(name).await;
        owner_ws.send(name, "first").await;
    }
    let dm = expect_json(
        call(&app, Method::POST, &format!("/api/dm/{}", member.user_id), &owner.token, None).await,
        StatusCode::OK,
    )
    .await;
    let dm = dm["name"].as_str().expect("dm name").to_owned();
    owner_ws.join(&dm).await;
    owner_ws.send(&dm, "first").await;

    let matrix: [(&str, &Session, Rights); 14] = [
        ("pub", &owner, Rights::All),
        ("pub", &member, Rights::All),
        ("pub", &outsider, Rights::All),
        ("pub", &banned, Rights::None),
        ("pub", &admin, Rights::All),
        ("priv", &owner, Rights::All),
        ("priv", &member, Rights::All),
        ("priv", &outsider, Rights::None),
        ("priv", &banned, Rights::None),
        ("priv", &admin, Rights::All),
        (&dm, &owner, Rights::All),
        (&dm, &member, Rights::All),
        (&dm, &outsider, Rights::None),
        (&dm, &admin, Rights::All),
    ];
    for (room, who, rights) in matrix {
        let case = format!("{} in {room}", who.email);
        let history = app.get_authed(&format!("/api/messages/{room}"), &who.token).await;
        let members = app.get_authed(&format!("/api/rooms/{room}/members"), &who.token).await;
        let expected = if rights == Rights::All { StatusCode::OK } else { StatusCode::NOT_FOUND };
        assert_eq!((history.status(), members.status()), (expected, expected), "history, members: {case}");

        let mut ws = TestSocket::connect(&app, &who.token).await;
        let join = json!({ "type": "join_room", "room": room });
        let resume = json!({ "type": "join_room", "room": room, "since": 0 });
        let send = json!({ "type": "send_message", "room": room, "content": "hello" });
        if rights == Rights::All {
            let ack = ws.request(resume).await;
            assert_eq!(ack["type"], "ack", "resume: {case}: {ack}");
            assert_eq!(ws.next_message().await.content, "first", "the missed message: {case}");
            ws.leave(room).await;
            ws.join(room).await;
            let stored = ws.request(send).await;
            assert!(stored["seq"].as_i64().is_some_and(|s| s >= 2), "send: {case}: {stored}");
        } else {
            ws.request_error(join, "forbidden").await;
            ws.request_error(resume, "forbidden").await;
            ws.request_error(send, "not_joined").await;
        }
        ws.close().await;
    }
}
