//! The order of `system` events that PROTOCOL.md promises: a member's join (or leave) is
//! published before its ack, so members on a node hear joins and leaves in ack order and never
//! see a member's message before its join. Checked with every core kept busy, where a server
//! task can be preempted between any two of its steps; on SQLite with the in-process bus, on
//! PostgreSQL with the Redis bus, and across two nodes (the joiners all on one node).

use serde_json::Value;

use crate::{
    common::{Backend, CpuLoad, both_backends},
    helpers::{Session, TestApp, TestSocket, spawn_chat_node, spawn_cluster},
    ws::connect_user,
};

both_backends!(joins_and_leaves_are_heard_in_ack_order_on_a_busy_node);

/// Users who join one after another, each as soon as the previous one's ack is in.
const JOINERS: usize = 24;
/// Rooms they do it in, one after another: more chances for a race to show.
const ROOMS: [&str; 3] = ["lobby-1", "lobby-2", "lobby-3"];

async fn joins_and_leaves_are_heard_in_ack_order_on_a_busy_node(backend: Backend) {
    let app = spawn_chat_node(backend, |c| c.limits.messages_per_second = 0).await;
    let (_, mut observer) = connect_user(&app, "observer@example.com").await;
    let mut joiners = connect_joiners(&app).await;
    for room in ROOMS {
        observer.join(room).await;
        join_then_leave_in_sequence(room, &mut joiners, &mut [&mut observer]).await;
    }
}

/// Two nodes on PostgreSQL and Redis: the joiners are all on node 1, so their events come from
/// one node; an observer on each node hears them in ack order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_from_one_node_are_heard_in_ack_order_on_every_node() {
    let Some(cluster) = spawn_cluster(2, |_| {}).await else { return };
    let (_, mut far) = connect_user(cluster.node(0), "far@example.com").await;
    let (_, mut near) = connect_user(cluster.node(1), "near@example.com").await;
    let mut joiners = connect_joiners(cluster.node(1)).await;
    for room in ROOMS {
        far.join(room).await;
        near.join(room).await;
        // Far hears near join: its subscription on node 0 is live before the joiners start.
        let frame = far.next_of_type("system").await;
        assert_eq!((&frame["name"], frame.get("email")), (&serde_json::json!("near"), None), "{frame}");
        join_then_leave_in_sequence(room, &mut joiners, &mut [&mut far, &mut near]).await;
    }
}

async fn connect_joiners(app: &TestApp) -> Vec<(Session, TestSocket)> {
    let mut joiners = Vec::with_capacity(JOINERS);
    for i in 0..JOINERS {
        joiners.push(connect_user(app, &format!("joiner{i}@example.com")).await);
    }
    joiners
}

/// With every core busy, each of `joiners` joins `room` as soon as the previous join is acked and sends a message right after its own ack (without waiting for
/// the send's ack); then each leaves in turn. Every observer must hear the joins and the leaves
/// in ack order, and each joiner's message after its join.
async fn join_then_leave_in_sequence(
    room: &str,
    joiners: &mut [(Session, TestSocket)],
    observers: &mut [&mut TestSocket],
) {
    let load = CpuLoad::start();
    for (i, (_, socket)) in joiners.iter_mut().enumerate() {
        socket.join(room).await;
        socket.submit_send(room, &format!("hello from joiner {i}")).await;
    }
    for (_, socket) in joiners.iter_mut() {
        socket.leave(room).await;
    }
    drop(load);

    let ids: Vec<&str> = joiners.iter().map(|(s, _)| s.user_id.as_str()).collect();
    for observer in observers.iter_mut() {
        let who = observer.who();
        // Everything about the joiners, in arrival order: ("join" | "leave" | "message", joiner).
        let mut seen: Vec<(&'static str, usize)> = Vec::with_capacity(3 * JOINERS);
        while seen.len() < 3 * JOINERS {
            let frame = observer.next_frame().await;
            if frame["room"] != room {
                continue;
            }
            let (kind, user) = match frame["type"].as_str() {
                Some("system") if frame["event"] == "join" => ("join", &frame["userId"]),
                Some("system") if frame["event"] == "leave" => ("leave", &frame["userId"]),
                Some("message") => ("message", &frame["senderId"]),
                _ => continue, // typing, pong: not about order
            };
            let Some(joiner) = joiner_index(&ids, user) else {
                // Another observer's join, which may arrive late from the other node (events of
                // different nodes have no order); anything else from a stranger is a bug.
                assert_eq!(kind, "join", "{who}: a stranger in {frame}");
                continue;
            };
            seen.push((kind, joiner));
        }
        let order = |kind: &str| -> Vec<usize> { seen.iter().filter(|(k, _)| *k == kind).map(|&(_, j)| j).collect() };
        let in_sequence: Vec<usize> = (0..JOINERS).collect();
        assert_eq!(order("join"), in_sequence, "{who}: joins out of ack order; everything: {seen:?}");
        assert_eq!(order("leave"), in_sequence, "{who}: leaves out of ack order; everything: {seen:?}");
        let mut messages = order("message");
        messages.sort_unstable();
        assert_eq!(messages, in_sequence, "{who}: one message from each joiner; everything: {seen:?}");
        for j in 0..JOINERS {
            let at = |kind: &str| seen.iter().position(|&s| s == (kind, j)).expect("seen above");
            assert!(at("join") < at("message"), "{who}: joiner {j}'s message before its join: {seen:?}");
        }
    }
}

fn joiner_index(ids: &[&str], user: &Value) -> Option<usize> {
    ids.iter().position(|id| user.as_str() == Some(id))
}

both_backends!(a_room_writer_retires_when_idle_and_sends_across_retirements_keep_their_order);

/// A room's writer exists only while sends come: none for a room that is only joined, one after
/// a send, none again `chat.writer_idle` later; bursts of pipelined sends before, around and
/// after retirements are stored and delivered in the order they were sent, each once. (The
/// instant between a writer's timeout and its closing the queue, which the next writer's wait for
/// the retiring one covers, is too short to hit from outside.)
async fn a_room_writer_retires_when_idle_and_sends_across_retirements_keep_their_order(backend: Backend) {
    let idle = std::time::Duration::from_millis(20);
    let app = spawn_chat_node(backend, |c| c.chat.writer_idle = confab::config::HumanDuration(idle)).await;
    let (_, mut alice) = connect_user(&app, "alice@example.com").await;
    let (_, mut bob) = connect_user(&app, "bob@example.com").await;
    alice.join("quiet").await;
    bob.join("quiet").await;
    assert_eq!(app.state.chat.running_writers(), 0, "joining starts no writer");
    let mut sent = Vec::new();
    for round in 0..12 {
        // Bursts of pipelined sends, with pauses around the idle time between them so that some
        // bursts meet a writer that is retiring.
        let refs = {
            let mut refs = Vec::new();
            for k in 0..4 {
                refs.push(alice.submit_send("quiet", &format!("{round}.{k}")).await);
            }
            refs
        };
        for r in refs {
            sent.push(alice.send_ack(&r).await.seq);
        }
        if round % 3 == 2 {
            // The next burst starts a new writer.
            wait_for_no_writer(&app, idle).await;
        } else {
            // Pauses around the idle time, so a burst may meet a retiring writer: a wait for
            // a moment, not for an event.
            tokio::time::sleep(idle * (round % 3 + 1) / 2).await;
        }
    }
    assert_eq!(sent, (1..=48).collect::<Vec<i64>>(), "acked seqs follow the send order");
    let got: Vec<String> = bob.messages(48).await.into_iter().map(|m| m.content).collect();
    let expected: Vec<String> = (0..12).flat_map(|r| (0..4).map(move |k| format!("{r}.{k}"))).collect();
    assert_eq!(got, expected, "delivered once each, in send order");
    wait_for_no_writer(&app, idle).await;
}

async fn wait_for_no_writer(app: &TestApp, idle: std::time::Duration) {
    let deadline = std::time::Instant::now() + crate::helpers::FRAME_TIMEOUT;
    // The retirement is internal: poll for it, up to a deadline.
    while app.state.chat.running_writers() > 0 {
        assert!(std::time::Instant::now() < deadline, "the writer never retired");
        tokio::time::sleep(idle).await;
    }
}
