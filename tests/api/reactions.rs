//! Reactions, and the stream they share with edits and deletions: each change is an event with
//! its own seq, delivered live and replayed exactly once, in order, by a resume — on one node
//! (both backends) and across two nodes after the first one is gone. History shows each
//! message's reactions with counts and whether I am among them; the bounds hold.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    common::{Backend, both_backends},
    helpers::{Session, TestApp, TestSocket, expect_error, expect_json, spawn_chat_node, spawn_cluster},
    ws::connect_user,
};

both_backends!(
    a_reaction_is_an_event_of_the_stream_and_history_counts_them,
    reactions_are_bounded_and_only_members_who_may_write_react,
    edits_and_deletions_with_a_client_id_happen_once_and_edits_keep_to_the_window,
);

async fn call(app: &TestApp, method: Method, path: &str, who: &Session, body: Option<Value>) -> reqwest::Response {
    let mut req = app.client.request(method, app.url(path)).bearer_auth(&who.token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.expect("request")
}

async fn react(app: &TestApp, who: &Session, room: &str, id: &str, emoji: &str) -> reqwest::Response {
    let path = format!("/api/rooms/{room}/messages/{id}/reactions");
    call(app, Method::POST, &path, who, Some(json!({ "emoji": emoji }))).await
}

async fn unreact(app: &TestApp, who: &Session, room: &str, id: &str, emoji: &str) -> reqwest::Response {
    let emoji: String = url_escape(emoji);
    call(app, Method::DELETE, &format!("/api/rooms/{room}/messages/{id}/reactions/{emoji}"), who, None).await
}

/// Percent-encodes every byte that is not unreserved.
fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The reactions history shows on the first message of `room`, for `who`.
async fn reactions_in_history(app: &TestApp, who: &Session, room: &str) -> Value {
    let history = expect_json(app.get_authed(&format!("/api/messages/{room}"), &who.token).await, StatusCode::OK).await;
    history["messages"][0].get("reactions").cloned().unwrap_or(json!([]))
}

async fn a_reaction_is_an_event_of_the_stream_and_history_counts_them(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (ann, mut ann_ws) = connect_user(&app, "ann@example.com").await;
    let (bob, mut bob_ws) = connect_user(&app, "bob@example.com").await;
    let carol = app.register("carol@example.com").await;
    ann_ws.join("general").await;
    bob_ws.join("general").await;
    let msg = ann_ws.send("general", "ship it?").await;
    for ws in [&mut ann_ws, &mut bob_ws] {
        ws.next_message().await;
    }

    assert_eq!(react(&app, &bob, "general", &msg.id, "👍").await.status(), StatusCode::NO_CONTENT);
    let expected = json!({
        "type": "reaction", "room": "general", "seq": 2, "id": msg.id, "emoji": "👍",
        "userId": bob.user_id, "name": "bob", "added": true, "count": 1,
    });
    for ws in [&mut ann_ws, &mut bob_ws] {
        assert_eq!(ws.next_of_type("reaction").await, expected);
    }
    assert_eq!(react(&app, &ann, "general", &msg.id, "👍").await.status(), StatusCode::NO_CONTENT);
    assert_eq!(bob_ws.next_of_type("reaction").await["count"], 2);
    // Again: nothing changes, nothing is sent (an event would have been handed out before the
    // answer, so it would be here ahead of the pong).
    assert_eq!(react(&app, &bob, "general", &msg.id, " 👍 ").await.status(), StatusCode::NO_CONTENT);
    bob_ws.ping().await;
    ann_ws.ping().await;
    let seen = ann_ws.next_of_type("reaction").await;
    assert_eq!((&seen["seq"], &seen["count"]), (&json!(3), &json!(2)));
    assert!(ann_ws.unread().iter().chain(bob_ws.unread()).all(|f| f["type"] != "reaction"), "a repeat is no event");

    assert_eq!(react(&app, &bob, "general", &msg.id, "🎉").await.status(), StatusCode::NO_CONTENT);
    assert_eq!(bob_ws.next_of_type("reaction").await["emoji"], "🎉");
    assert_eq!(
        reactions_in_history(&app, &ann, "general").await,
        json!([{ "emoji": "👍", "count": 2, "me": true }, { "emoji": "🎉", "count": 1, "me": false }])
    );
    // Carol reads the public room without being in it: counts, and none of them hers.
    assert_eq!(
        reactions_in_history(&app, &carol, "general").await,
        json!([{ "emoji": "👍", "count": 2, "me": false }, { "emoji": "🎉", "count": 1, "me": false }])
    );

    assert_eq!(unreact(&app, &bob, "general", &msg.id, "👍").await.status(), StatusCode::NO_CONTENT);
    let back = bob_ws.next_of_type("reaction").await;
    assert_eq!((&back["seq"], &back["added"], &back["count"]), (&json!(5), &json!(false), &json!(1)));
    assert_eq!(unreact(&app, &bob, "general", &msg.id, "👍").await.status(), StatusCode::NO_CONTENT, "not there: fine");

    // A resume replays every change once, in seq order, after the message itself.
    let mut late = TestSocket::connect(&app, &carol.token).await;
    assert_eq!(late.request(json!({ "type": "join_room", "room": "general", "since": 0 })).await["seq"], 5);
    assert_eq!(late.next_message().await.seq, 1);
    let replayed: Vec<(Value, Value, Value)> = {
        let mut out = Vec::new();
        for _ in 0..4 {
            let r = late.next_of_type("reaction").await;
            out.push((r["seq"].clone(), r["emoji"].clone(), r["added"].clone()));
        }
        out
    };
    assert_eq!(
        replayed,
        [
            (json!(2), json!("👍"), json!(true)),
            (json!(3), json!("👍"), json!(true)),
            (json!(4), json!("🎉"), json!(true)),
            (json!(5), json!("👍"), json!(false)),
        ]
    );
    // None of that is an unread message.
    let rooms = expect_json(app.get_authed("/api/rooms", &bob.token).await, StatusCode::OK).await;
    let general = rooms["rooms"].as_array().expect("rooms").iter().find(|r| r["name"] == "general").cloned();
    assert_eq!(general.expect("listed")["unread"], 1, "one message, four reactions");
}

async fn reactions_are_bounded_and_only_members_who_may_write_react(backend: Backend) {
    let app = spawn_chat_node(backend, |c| c.chat.max_reactions_per_message = 2).await;
    let (ann, mut ann_ws) = connect_user(&app, "ann@example.com").await;
    let (bob, mut bob_ws) = connect_user(&app, "bob@example.com").await;
    let carol = app.register("carol@example.com").await;
    let created = call(&app, Method::POST, "/api/rooms", &ann, Some(json!({ "name": "lobby" }))).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    ann_ws.join("lobby").await;
    bob_ws.join("lobby").await;
    let msg = ann_ws.send("lobby", "react to me").await;

    for bad in ["a b", "\u{200B}", "x\u{202E}y", "\u{FE0F}"] {
        expect_error(react(&app, &bob, "lobby", &msg.id, bad).await, StatusCode::BAD_REQUEST, "invalid_reaction").await;
    }
    for bad in ["", &"x".repeat(17)] {
        assert_eq!(react(&app, &bob, "lobby", &msg.id, bad).await.status(), StatusCode::BAD_REQUEST, "{bad:?}");
    }
    // At most two different reactions on a message; more of one already there is fine.
    for emoji in ["👍", "🎉"] {
        assert_eq!(react(&app, &bob, "lobby", &msg.id, emoji).await.status(), StatusCode::NO_CONTENT);
    }
    expect_error(react(&app, &bob, "lobby", &msg.id, "🔥").await, StatusCode::CONFLICT, "too_many_reactions").await;
    assert_eq!(react(&app, &ann, "lobby", &msg.id, "🎉").await.status(), StatusCode::NO_CONTENT);
    // Only members react (Carol may read the public room, not write in it); no message, no
    // reaction.
    expect_error(react(&app, &carol, "lobby", &msg.id, "👍").await, StatusCode::FORBIDDEN, "forbidden").await;
    let nobody = uuid::Uuid::now_v7().to_string();
    expect_error(react(&app, &bob, "lobby", &nobody, "👍").await, StatusCode::NOT_FOUND, "not_found").await;
    // Muted: no reacting either.
    let mute =
        call(&app, Method::POST, "/api/rooms/lobby/mutes", &ann, Some(json!({ "userId": bob.user_id, "minutes": 5 })))
            .await;
    assert_eq!(mute.status(), StatusCode::NO_CONTENT);
    expect_error(unreact(&app, &bob, "lobby", &msg.id, "👍").await, StatusCode::FORBIDDEN, "muted").await;
    // Deleted: gone for reactions too.
    let path = format!("/api/rooms/lobby/messages/{}", msg.id);
    assert_eq!(call(&app, Method::DELETE, &path, &ann, None).await.status(), StatusCode::NO_CONTENT);
    expect_error(react(&app, &ann, "lobby", &msg.id, "👍").await, StatusCode::NOT_FOUND, "not_found").await;
    assert!(
        reactions_in_history(&app, &ann, "lobby").await.as_array().is_some_and(Vec::is_empty),
        "a tombstone shows none"
    );
}

/// Node a writes a message, edits it, reacts to it and deletes another; Bob on node b sees
/// every change live in seq order. Node b goes away, and Bob's resume on node a replays the same
/// events, exactly once each, in the same order.
#[tokio::test]
async fn stream_events_cross_nodes_and_replay_once_in_order_after_a_node_is_gone() {
    let Some(mut cluster) = spawn_cluster(2, |_| {}).await else { return };
    let (a, b) = (cluster.node(0), cluster.node(1));
    let (ann, mut ann_ws) = connect_user(a, "ann@example.com").await;
    let bob = b.register("bob@example.com").await;
    let mut bob_ws = TestSocket::connect(b, &bob.token).await;
    ann_ws.join("general").await;
    bob_ws.join("general").await;
    let first = ann_ws.send("general", "first").await;
    let second = ann_ws.send("general", "second").await;
    let edit = call(
        a,
        Method::PATCH,
        &format!("/api/rooms/general/messages/{}", first.id),
        &ann,
        Some(json!({ "content": "first!" })),
    )
    .await;
    assert_eq!(edit.status(), StatusCode::NO_CONTENT);
    assert_eq!(react(a, &ann, "general", &first.id, "👍").await.status(), StatusCode::NO_CONTENT);
    let delete = call(a, Method::DELETE, &format!("/api/rooms/general/messages/{}", second.id), &ann, None).await;
    assert_eq!(delete.status(), StatusCode::NO_CONTENT);
    let expected = [(1, "message"), (2, "message"), (3, "message_edited"), (4, "reaction"), (5, "message_deleted")];
    let stream_event =
        |f: &Value| matches!(f["type"].as_str(), Some("message" | "message_edited" | "reaction" | "message_deleted"));
    let mut live = Vec::new();
    while live.len() < expected.len() {
        let f = bob_ws.next_frame().await;
        if stream_event(&f) {
            live.push((f["seq"].as_i64().expect("seq"), f["type"].as_str().expect("type").to_owned()));
        }
    }
    let expected: Vec<(i64, String)> = expected.iter().map(|(s, t)| (*s, (*t).to_owned())).collect();
    assert_eq!(live, expected, "live on node b");

    drop(bob_ws);
    let gone = cluster.nodes.remove(1);
    gone.stop().await;
    let a = cluster.node(0);
    let mut again = TestSocket::connect(a, &bob.token).await;
    again.request(json!({ "type": "join_room", "room": "general", "since": 0 })).await;
    let mut replayed = Vec::new();
    while replayed.len() < expected.len() {
        let f = again.next_frame().await;
        if stream_event(&f) {
            replayed.push((f["seq"].as_i64().expect("seq"), f["type"].as_str().expect("type").to_owned()));
        }
    }
    assert_eq!(replayed, expected, "replayed on node a");
    again.ping().await;
    assert!(!again.unread().iter().any(stream_event), "nothing twice: {:?}", again.unread());
}

/// The room's latest seq, as `GET /api/rooms/{room}` says.
async fn last_seq(app: &TestApp, who: &Session, room: &str) -> i64 {
    let room = expect_json(app.get_authed(&format!("/api/rooms/{room}"), &who.token).await, StatusCode::OK).await;
    room["lastSeq"].as_i64().expect("lastSeq")
}

async fn edits_and_deletions_with_a_client_id_happen_once_and_edits_keep_to_the_window(backend: Backend) {
    let app = spawn_chat_node(backend, |c| {
        c.chat.edit_window = confab::config::HumanDuration(std::time::Duration::from_secs(2));
    })
    .await;
    let (eve, mut ws) = connect_user(&app, "eve@example.com").await;
    ws.join("general").await;
    let first = ws.send_with_client_id("general", "helo", "s1").await;
    let second = ws.send("general", "bye").await;
    let edit = |id: &str, content: &str, key: &str| {
        let (app, eve, path) = (&app, &eve, format!("/api/rooms/general/messages/{id}"));
        let body = json!({ "content": content, "clientId": key });
        async move { call(app, Method::PATCH, &path, eve, Some(body)).await }
    };
    assert_eq!(edit(&first.id, "hello", "e1").await.status(), StatusCode::NO_CONTENT);
    assert_eq!(last_seq(&app, &eve, "general").await, 3);
    assert_eq!(edit(&first.id, "hello", "e1").await.status(), StatusCode::NO_CONTENT, "a repeat is fine");
    assert_eq!(last_seq(&app, &eve, "general").await, 3, "and changes nothing");
    expect_error(edit(&second.id, "other", "e1").await, StatusCode::CONFLICT, "client_id_reused").await;

    let delete = |id: &str, key: Option<&str>| {
        let path = match key {
            Some(k) => format!("/api/rooms/general/messages/{id}?clientId={k}"),
            None => format!("/api/rooms/general/messages/{id}"),
        };
        let (app, eve) = (&app, &eve);
        async move { call(app, Method::DELETE, &path, eve, None).await }
    };
    assert_eq!(delete(&second.id, Some("d1")).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(last_seq(&app, &eve, "general").await, 4);
    assert_eq!(delete(&second.id, Some("d1")).await.status(), StatusCode::NO_CONTENT, "a repeat after it is gone");
    assert_eq!(last_seq(&app, &eve, "general").await, 4);
    expect_error(delete(&second.id, None).await, StatusCode::NOT_FOUND, "not_found").await;
    // A send's key is not a deletion's.
    expect_error(delete(&first.id, Some("s1")).await, StatusCode::CONFLICT, "client_id_reused").await;
    let long = "k".repeat(65);
    assert_eq!(delete(&first.id, Some(&long)).await.status(), StatusCode::BAD_REQUEST);

    // Two seconds after sending, a message is not edited any more (deleting still works).
    let late = ws.send("general", "too late soon").await;
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    expect_error(edit(&late.id, "changed", "e2").await, StatusCode::FORBIDDEN, "edit_window_passed").await;
    assert_eq!(delete(&late.id, None).await.status(), StatusCode::NO_CONTENT);
}
