//! Presence: who is online in a room, told in coalesced `presence` events and shown in the
//! member list, on one node (both backends: PostgreSQL runs with the Redis bus) and across two
//! nodes, where a user stays online while any of their sessions is in the room.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{
    common::{Backend, both_backends},
    helpers::{FRAME_TIMEOUT, Session, TestApp, TestSocket, expect_json, spawn_chat_node, spawn_cluster},
    ws::connect_user,
};

both_backends!(presence_is_told_in_coalesced_events_and_shown_in_the_member_list);

fn fast(c: &mut confab::Config, interval_ms: u64) {
    c.chat.presence_interval = confab::config::HumanDuration(Duration::from_millis(interval_ms));
    c.chat.presence_ttl = confab::config::HumanDuration(Duration::from_millis(interval_ms * 5));
}

/// Presence events seen by `ws` until one satisfies `done`; returns all of them.
async fn presence_until(ws: &mut TestSocket, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + FRAME_TIMEOUT;
    let mut seen = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "{}: no such presence event; saw {seen:?}", ws.who());
        let f = ws.next_frame().await;
        if f["type"] != "presence" {
            continue;
        }
        let stop = done(&f);
        seen.push(f);
        if stop {
            return seen;
        }
    }
}

fn lists(f: &Value, key: &str, user: &str) -> bool {
    f[key].as_array().is_some_and(|a| a.iter().any(|u| u == user))
}

/// Whether each listed member of `room` is online, by display name.
async fn member_list(app: &TestApp, who: &Session, room: &str) -> Vec<(String, bool)> {
    let body =
        expect_json(app.get_authed(&format!("/api/rooms/{room}/members"), &who.token).await, reqwest::StatusCode::OK)
            .await;
    let mut out: Vec<(String, bool)> = body["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| (m["displayName"].as_str().expect("name").to_owned(), m["online"].as_bool().expect("online")))
        .collect();
    out.sort();
    out
}

async fn presence_is_told_in_coalesced_events_and_shown_in_the_member_list(backend: Backend) {
    // Long enough that a reconnect right after a round falls well inside the next one.
    let app = spawn_chat_node(backend, |c| fast(c, 1500)).await;
    let (ann, mut ann_ws) = connect_user(&app, "ann@example.com").await;
    let (bob, mut bob_ws) = connect_user(&app, "bob@example.com").await;
    let (carol, mut carol_ws) = connect_user(&app, "carol@example.com").await;
    ann_ws.watch_presence();
    ann_ws.join("lobby").await;
    let first = ann_ws.next_of_type("presence").await;
    assert_eq!(first["room"], "lobby", "a join is followed by who is online: {first}");
    bob_ws.join("lobby").await;
    carol_ws.join("lobby").await;
    carol_ws.leave("lobby").await;
    presence_until(&mut ann_ws, |f| lists(f, "online", &bob.user_id)).await;
    assert_eq!(
        member_list(&app, &ann, "lobby").await,
        [("ann".to_owned(), true), ("bob".to_owned(), true), ("carol".to_owned(), false)]
    );

    // Bob's connection drops and comes back at once, right after a round: one interval later,
    // nobody has heard that he was gone.
    drop(bob_ws);
    let mut bob_ws = TestSocket::connect(&app, &bob.token).await;
    bob_ws.join("lobby").await;
    carol_ws.join("lobby").await;
    let seen = presence_until(&mut ann_ws, |f| lists(f, "online", &carol.user_id)).await;
    assert!(!seen.iter().any(|f| lists(f, "offline", &bob.user_id)), "a flap is no news: {seen:?}");

    // Gone for good: told once, with whoever else went in the same round.
    drop(bob_ws);
    carol_ws.leave("lobby").await;
    let seen = presence_until(&mut ann_ws, |f| lists(f, "offline", &bob.user_id)).await;
    let last = seen.last().expect("one event");
    let mut offline: Vec<&str> =
        last["offline"].as_array().expect("offline").iter().filter_map(Value::as_str).collect();
    offline.sort_unstable();
    let mut expected = vec![bob.user_id.as_str(), carol.user_id.as_str()];
    expected.sort_unstable();
    assert_eq!(offline, expected, "one event for both: {last}");
    assert_eq!(
        member_list(&app, &ann, "lobby").await,
        [("ann".to_owned(), true), ("bob".to_owned(), false), ("carol".to_owned(), false)]
    );
}

/// Bob has a session on each node: closing one leaves him online; closing both takes him
/// offline, and a node that stops takes its users with it.
#[tokio::test]
async fn across_nodes_a_user_is_online_while_any_session_is_in_the_room() {
    let Some(cluster) = spawn_cluster(2, |c| fast(c, 400)).await else { return };
    let (a, b) = (cluster.node(0), cluster.node(1));
    let (_ann, mut ann_ws) = connect_user(a, "ann@example.com").await;
    ann_ws.watch_presence();
    let (bob, mut bob_on_a) = connect_user(a, "bob@example.com").await;
    let mut bob_on_b = TestSocket::connect(b, &bob.token).await;
    let carol = b.register("carol@example.com").await;
    let mut carol_ws = TestSocket::connect(b, &carol.token).await;
    ann_ws.join("lobby").await;
    bob_on_a.join("lobby").await;
    bob_on_b.join("lobby").await;
    presence_until(&mut ann_ws, |f| lists(f, "online", &bob.user_id)).await;

    // Bob leaves on node a: still in the room through node b.
    drop(bob_on_a);
    carol_ws.join("lobby").await;
    let seen = presence_until(&mut ann_ws, |f| lists(f, "online", &carol.user_id)).await;
    assert!(!seen.iter().any(|f| lists(f, "offline", &bob.user_id)), "online through node b: {seen:?}");
    let online = a.state.chat.online_in(&confab::domain::RoomName::parse("lobby").expect("name")).await;
    assert!(online.contains(&bob.user_id.parse().expect("uuid")), "node a counts node b's sessions");

    // Node b stops: Bob and Carol go offline for Ann on node a.
    drop((bob_on_b, carol_ws));
    let mut cluster = cluster;
    let gone = cluster.nodes.remove(1);
    gone.stop().await;
    let seen = presence_until(&mut ann_ws, |f| lists(f, "offline", &carol.user_id)).await;
    assert!(seen.iter().any(|f| lists(f, "offline", &bob.user_id)), "Bob went with node b: {seen:?}");
}
