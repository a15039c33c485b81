//! Read markers and unread counts: `mark_read` moves a member's marker forward only, never past
//! the room's latest seq; the user's other sessions hear of it (on every node); `GET
//! /api/rooms` shows `unread = lastSeq - lastReadSeq`, exact after a burst and a reconnect.
//! Both backends; the cross-node case on a two-node cluster.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    common::{Backend, both_backends},
    helpers::{Session, TestApp, TestSocket, expect_error, expect_json, spawn_chat_node, spawn_cluster},
    ws::connect_user,
};

both_backends!(
    a_read_marker_moves_forward_only_and_reaches_my_other_sessions,
    only_members_have_read_markers,
    unread_counts_are_exact_after_a_burst_and_a_reconnect,
    mentions_are_resolved_when_sent_and_counted_until_read,
);

/// Short: only used to back up an absence that a later reply already showed.
const QUIET: Duration = Duration::from_millis(200);

/// My entry for `room` in `GET /api/rooms`.
async fn listed(app: &TestApp, who: &Session, room: &str) -> Value {
    let rooms = expect_json(app.get_authed("/api/rooms", &who.token).await, StatusCode::OK).await;
    rooms["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .find(|r| r["name"] == room)
        .unwrap_or_else(|| panic!("{room} not listed in {rooms}"))
        .clone()
}

async fn mark(socket: &mut TestSocket, room: &str, seq: i64) -> Value {
    socket.request(json!({ "type": "mark_read", "room": room, "seq": seq })).await
}

async fn put_read(app: &TestApp, who: &Session, room: &str, body: Value) -> reqwest::Response {
    app.client
        .request(Method::PUT, app.url(&format!("/api/rooms/{room}/read")))
        .bearer_auth(&who.token)
        .json(&body)
        .send()
        .await
        .expect("request")
}

async fn a_read_marker_moves_forward_only_and_reaches_my_other_sessions(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (ann, mut ann_ws) = connect_user(&app, "ann@example.com").await;
    let (bob, mut bob_ws) = connect_user(&app, "bob@example.com").await;
    ann_ws.join("general").await;
    bob_ws.join("general").await;
    for i in 0..5 {
        bob_ws.send("general", &format!("m{i}")).await;
    }
    ann_ws.messages(5).await;
    let entry = listed(&app, &ann, "general").await;
    assert_eq!((&entry["lastSeq"], &entry["lastReadSeq"], &entry["unread"]), (&json!(5), &json!(0), &json!(5)));

    // A second session of Ann's, not even in the room, hears where her marker went.
    let mut ann_phone = TestSocket::connect(&app, &ann.token).await;
    let ack = mark(&mut ann_ws, "general", 3).await;
    assert_eq!((&ack["type"], &ack["room"], &ack["seq"]), (&json!("ack"), &json!("general"), &json!(3)), "{ack}");
    let told = ann_phone.next_of_type("read").await;
    assert_eq!(told, json!({ "type": "read", "room": "general", "seq": 3, "unread": 2, "mentions": 0 }));
    assert_eq!(ack["unread"], 2);
    assert_eq!(listed(&app, &ann, "general").await["unread"], 2);

    // Never back; never past the latest seq.
    assert_eq!(mark(&mut ann_ws, "general", 1).await["seq"], 3, "a marker does not move back");
    assert_eq!(ann_phone.next_of_type("read").await["seq"], 3);
    assert_eq!(mark(&mut ann_ws, "general", 1_000_000).await["seq"], 5, "clamped to the room's latest seq");
    assert_eq!(ann_phone.next_of_type("read").await["seq"], 5);
    let entry = listed(&app, &ann, "general").await;
    assert_eq!((&entry["lastReadSeq"], &entry["unread"]), (&json!(5), &json!(0)));
    // The session that moved it is not told again (the news goes out before the ack, so it
    // would be here by now), and other users hear nothing of it.
    assert!(ann_ws.unread().iter().all(|f| f["type"] != "read"), "{:?}", ann_ws.unread());
    bob_ws.ping().await;
    assert!(bob_ws.unread().iter().all(|f| f["type"] != "read"), "{:?}", bob_ws.unread());

    // Over REST too, with the same answer and the same news for the sessions.
    bob_ws.send("general", "one more").await;
    ann_ws.next_message().await;
    let read = expect_json(put_read(&app, &ann, "general", json!({ "seq": 6 })).await, StatusCode::OK).await;
    assert_eq!(read, json!({ "room": "general", "lastReadSeq": 6, "unread": 0, "mentions": 0 }));
    assert_eq!(ann_ws.next_of_type("read").await["seq"], 6, "REST has no session: all of them hear it");
    assert_eq!(ann_phone.next_of_type("read").await["seq"], 6);
    // The room's own page says the same.
    let room = expect_json(app.get_authed("/api/rooms/general", &ann.token).await, StatusCode::OK).await;
    assert_eq!((&room["lastReadSeq"], &room["unread"]), (&json!(6), &json!(0)));

    // Edits (and deletions, and reactions) take seqs but are not unread messages.
    let last = bob_ws.send("general", "typo").await;
    ann_ws.next_message().await;
    let edit = app
        .client
        .request(Method::PATCH, app.url(&format!("/api/rooms/general/messages/{}", last.id)))
        .bearer_auth(&bob.token)
        .json(&json!({ "content": "fixed" }))
        .send()
        .await
        .expect("edit");
    assert_eq!(edit.status(), StatusCode::NO_CONTENT);
    let entry = listed(&app, &ann, "general").await;
    assert_eq!((&entry["lastSeq"], &entry["lastReadSeq"], &entry["unread"]), (&json!(8), &json!(6), &json!(1)));
    assert_eq!(mark(&mut ann_ws, "general", 8).await["unread"], 0);

    // Someone who joins later has read what was there before them.
    let (dave, mut dave_ws) = connect_user(&app, "dave@example.com").await;
    dave_ws.join("general").await;
    let entry = listed(&app, &dave, "general").await;
    assert_eq!((&entry["lastReadSeq"], &entry["unread"]), (&json!(8), &json!(0)));

    // Bad input is answered, changing nothing.
    ann_ws.request_error(json!({ "type": "mark_read", "room": "general", "seq": -1 }), "invalid_payload").await;
    ann_ws.request_error(json!({ "type": "mark_read", "room": "general" }), "invalid_payload").await;
    ann_ws.request_error(json!({ "type": "mark_read", "room": "no way", "seq": 1 }), "invalid_room").await;
    let bad = put_read(&app, &ann, "general", json!({ "seq": -1 })).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(listed(&app, &ann, "general").await["lastReadSeq"], 8);
}

async fn only_members_have_read_markers(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (ann, mut ann_ws) = connect_user(&app, "ann@example.com").await;
    let (carol, mut carol_ws) = connect_user(&app, "carol@example.com").await;
    ann_ws.join("lobby").await;
    ann_ws.send("lobby", "hello").await;
    // A public room Carol has not joined: listed, without a marker, and she cannot set one.
    let entry = listed(&app, &carol, "lobby").await;
    assert!(entry.get("unread").is_none() && entry.get("lastReadSeq").is_none(), "{entry}");
    carol_ws.request_error(json!({ "type": "mark_read", "room": "lobby", "seq": 1 }), "forbidden").await;
    expect_error(put_read(&app, &carol, "lobby", json!({ "seq": 1 })).await, StatusCode::FORBIDDEN, "forbidden").await;
    // A private room is not even there for her.
    let body = json!({ "name": "inner", "kind": "private" });
    let created = app.client.post(app.url("/api/rooms")).bearer_auth(&ann.token).json(&body).send().await;
    assert_eq!(created.expect("create").status(), StatusCode::CREATED);
    carol_ws.request_error(json!({ "type": "mark_read", "room": "inner", "seq": 0 }), "forbidden").await;
    expect_error(put_read(&app, &carol, "inner", json!({ "seq": 0 })).await, StatusCode::NOT_FOUND, "not_found").await;
    // The owner of a new room has read it all (nothing).
    assert_eq!(listed(&app, &ann, "inner").await["unread"], 0);
}

async fn unread_counts_are_exact_after_a_burst_and_a_reconnect(backend: Backend) {
    const BURST: i64 = 10_000;
    let app = spawn_chat_node(backend, |_| {}).await;
    let (ann, mut ann_ws) = connect_user(&app, "ann@example.com").await;
    let (_bob, mut bob_ws) = connect_user(&app, "bob@example.com").await;
    ann_ws.join("busy").await;
    bob_ws.join("busy").await;
    // Ann goes away; Bob writes a burst, many commands in flight at once.
    drop(ann_ws);
    let mut refs = std::collections::VecDeque::new();
    for i in 0..BURST {
        refs.push_back(bob_ws.submit_send("busy", &format!("m{i}")).await);
        if refs.len() >= 256 {
            let r = refs.pop_front().expect("a ref");
            bob_ws.send_ack(&r).await;
        }
    }
    let mut last = 0;
    while let Some(r) = refs.pop_front() {
        last = bob_ws.send_ack(&r).await.seq;
    }
    assert_eq!(last, BURST);
    let entry = listed(&app, &ann, "busy").await;
    assert_eq!((&entry["lastSeq"], &entry["unread"]), (&json!(BURST), &json!(BURST)), "{entry}");

    // Back, she reads 6000 of them: what is left is exactly what a resume from her marker
    // delivers.
    let mut ann_ws = TestSocket::connect(&app, &ann.token).await;
    assert_eq!(mark(&mut ann_ws, "busy", 6000).await["seq"], 6000);
    drop(ann_ws);
    let entry = listed(&app, &ann, "busy").await;
    let unread = entry["unread"].as_i64().expect("unread");
    assert_eq!(unread, BURST - 6000);
    let mut ann_ws = TestSocket::connect(&app, &ann.token).await;
    let marker = entry["lastReadSeq"].as_i64().expect("lastReadSeq");
    ann_ws.join_since("busy", marker).await;
    let missed = ann_ws.messages(usize::try_from(unread).expect("small")).await;
    assert_eq!((missed[0].seq, missed[missed.len() - 1].seq), (6001, BURST));
    ann_ws.ping().await;
    ann_ws.expect_no_frame_within(QUIET).await;
}

/// Ann's phone on one node hears where her laptop on the other node moved her marker.
#[tokio::test]
async fn read_markers_reach_my_sessions_on_other_nodes() {
    let Some(cluster) = spawn_cluster(2, |_| {}).await else { return };
    let (a, b) = (cluster.node(0), cluster.node(1));
    let (ann, mut laptop) = connect_user(a, "ann@example.com").await;
    let mut phone = TestSocket::connect(b, &ann.token).await;
    laptop.join("general").await;
    laptop.send("general", "hi").await;
    laptop.send("general", "there").await;
    assert_eq!(mark(&mut laptop, "general", 2).await["seq"], 2);
    assert_eq!(
        phone.next_of_type("read").await,
        json!({ "type": "read", "room": "general", "seq": 2, "unread": 0, "mentions": 0 })
    );
    // And the other way, over REST on node b.
    assert_eq!(listed(b, &ann, "general").await["unread"], 0);
    laptop.send("general", "more").await;
    laptop.messages(3).await;
    assert_eq!(listed(b, &ann, "general").await["unread"], 1);
    expect_json(put_read(b, &ann, "general", json!({ "seq": 3 })).await, StatusCode::OK).await;
    assert_eq!(laptop.next_of_type("read").await["seq"], 3);
}

async fn mentions_are_resolved_when_sent_and_counted_until_read(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let body = json!({ "email": "ann@example.com", "password": "password123", "displayName": "Ann Lee" });
    let ann =
        Session::from_register(expect_json(app.post_json("/api/auth/register", &body).await, StatusCode::OK).await);
    let mut ann_ws = TestSocket::connect(&app, &ann.token).await;
    let (bob, mut bob_ws) = connect_user(&app, "bob@example.com").await;
    let (carol, mut carol_ws) = connect_user(&app, "carol@example.com").await;
    let created =
        app.client.post(app.url("/api/rooms")).bearer_auth(&carol.token).json(&json!({ "name": "team" })).send().await;
    assert_eq!(created.expect("create").status(), StatusCode::CREATED);
    for ws in [&mut carol_ws, &mut ann_ws, &mut bob_ws] {
        ws.join("team").await;
    }
    let first = bob_ws.send("team", "hey @ann lee, look (and @dave, who is not here)").await;
    let msg = ann_ws.next_message().await;
    assert_eq!(msg.raw["mentions"], json!([ann.user_id]), "{}", msg.raw);
    assert!(msg.raw.get("mentionsAll").is_none());
    // Only owners and moderators reach everyone.
    bob_ws.send("team", "@room anyone?").await;
    assert!(ann_ws.next_message().await.raw.get("mentionsAll").is_none());
    carol_ws.send("team", "@here standup in 5").await;
    let all = ann_ws.next_message().await;
    assert_eq!(all.raw["mentionsAll"], true, "{}", all.raw);
    bob_ws.send("team", "nothing for anyone").await;

    let entry = listed(&app, &ann, "team").await;
    assert_eq!((&entry["unread"], &entry["mentions"]), (&json!(4), &json!(2)), "{entry}");
    assert_eq!(listed(&app, &bob, "team").await["mentions"], 1, "@here counts for Bob too");
    // Read past the first: one mention left; past everything: none.
    let ack = mark(&mut ann_ws, "team", first.seq).await;
    assert_eq!((&ack["unread"], &ack["mentions"]), (&json!(3), &json!(1)), "{ack}");
    let ack = mark(&mut ann_ws, "team", 100).await;
    assert_eq!((&ack["unread"], &ack["mentions"]), (&json!(0), &json!(0)), "{ack}");
    // History keeps whom each message mentioned.
    let history = expect_json(app.get_authed("/api/messages/team", &ann.token).await, StatusCode::OK).await;
    assert_eq!(history["messages"][0]["mentions"], json!([ann.user_id]));
    assert_eq!(history["messages"][2]["mentionsAll"], true);
}
