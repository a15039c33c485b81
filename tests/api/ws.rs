//! Chat over the native WebSocket protocol (`/ws`) on one node, as clients see it: delivery to
//! members only and in order, acks before echoes, join/leave/typing events, history over REST,
//! resuming with `since`, idempotent sends, slow consumers and graceful shutdown.
//!
//! Every test runs on SQLite with the in-process bus and on PostgreSQL with the Redis bus.
//! Absence ("bob got nothing") is shown by ordering wherever possible: a later event that must
//! arrive first proves an earlier one was not queued; short silent waits only back that up.

use std::{sync::Arc, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{
    common::{Backend, both_backends},
    helpers::{
        FRAME_TIMEOUT, Msg, Session, TestApp, TestSocket, expect_json, seqs_of, spawn_chat_node, spawn_node,
        stored_messages,
    },
};

both_backends!(
    members_exchange_messages_and_each_sender_gets_its_ack_first,
    joining_and_leaving_tell_the_others_and_leaving_stops_delivery,
    typing_reaches_the_other_members_only,
    history_and_rooms_over_rest_show_what_was_sent,
    resuming_with_since_replays_exactly_what_was_missed,
    a_repeated_client_id_stores_and_delivers_one_message,
    a_client_that_stops_reading_is_cut_off_and_the_others_keep_receiving,
    shutdown_acks_in_flight_sends_then_closes_with_1001,
);

/// Short: only ever used to back up an absence that ordering already showed.
const QUIET: Duration = Duration::from_millis(300);

/// Registers `email` and opens a socket for it.
pub async fn connect_user(app: &TestApp, email: &str) -> (Session, TestSocket) {
    let session = app.register(email).await;
    let socket = TestSocket::connect(app, &session.token).await;
    (session, socket)
}

/// The `system` frame `PROTOCOL.md` describes.
pub fn system(room: &str, event: &str, who: &Session) -> Value {
    let verb = if event == "join" { "joined" } else { "left" };
    json!({
        "type": "system",
        "room": room,
        "event": event,
        "userId": who.user_id,
        "name": who.name(),
        "message": format!("{} {verb} {room}", who.name()),
    })
}

/// `createdAt` as an instant: both forms of RFC 3339 UTC (`Z`, `+00:00`) are the same time.
fn normalise_time(v: &mut Value) {
    let at = v["createdAt"].as_str().unwrap_or_else(|| panic!("no createdAt in {v}"));
    let at = chrono::DateTime::parse_from_rfc3339(at).unwrap_or_else(|e| panic!("createdAt {at}: {e}"));
    v["createdAt"] = json!(at.with_timezone(&chrono::Utc).to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
}

/// The message frame without its `type`: what history returns for it.
fn as_history(msg: &Msg) -> Value {
    let mut v = msg.raw.clone();
    v.as_object_mut().expect("object").remove("type");
    normalise_time(&mut v);
    v
}

async fn members_exchange_messages_and_each_sender_gets_its_ack_first(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (a, mut alice) = connect_user(&app, "alice@example.com").await;
    let (b, mut bob) = connect_user(&app, "Bob@Example.com").await;
    let (_, mut carol) = connect_user(&app, "carol@example.com").await;
    assert_eq!(
        alice.hello,
        json!({
            "type": "hello",
            "user": { "id": a.user_id, "email": "alice@example.com", "displayName": "alice" },
            "node": "test-node",
            "messageMaxLen": 2000
        })
    );
    assert_eq!(bob.email, "bob@example.com", "emails are lowercased");

    assert_eq!(alice.join("general").await, 0);
    assert_eq!(bob.join("general").await, 0);
    assert_eq!(carol.join("elsewhere").await, 0);
    assert_eq!(alice.next_frame().await, system("general", "join", &b));

    // The sender's ack comes first, then its own message, like everyone else's copy.
    let r = alice.submit_send("general", "  hello bob \n").await;
    let ack = alice.next_frame().await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!((ack["ref"].as_str(), ack["seq"].as_i64()), (Some(r.as_str()), Some(1)), "{ack}");
    let own = Msg::parse(alice.next_frame().await);
    assert_eq!((own.seq, own.id.as_str()), (1, ack["id"].as_str().expect("id")));
    assert_eq!((own.room.as_str(), own.content.as_str()), ("general", "hello bob"), "content is trimmed");
    assert_eq!((own.sender_id.as_str(), own.sender_name.as_str()), (a.user_id.as_str(), "alice"));
    assert_eq!(own.client_id, None);
    // Bob's first frame is that message: nobody is told about their own join.
    let got = Msg::parse(bob.next_frame().await);
    assert_eq!(got.raw, own.raw);

    let ack = bob.send("general", "hi alice").await;
    assert_eq!(ack.seq, 2);
    let echo = bob.next_frame().await;
    assert_eq!((echo["seq"].as_i64(), echo["id"].as_str()), (Some(2), Some(ack.id.as_str())), "{echo}");
    let got = Msg::parse(alice.next_frame().await);
    assert_eq!((got.seq, got.content.as_str(), got.sender_id.as_str()), (2, "hi alice", b.user_id.as_str()));

    alice.ping().await;
    // A ping without a ref gets a pong without one.
    alice.send_json(&json!({ "type": "ping" })).await;
    assert_eq!(alice.next_frame().await, json!({ "type": "pong" }));

    // Carol, connected but not in general, got none of it: her first frames are her own.
    let r = carol.submit_send("elsewhere", "anyone?").await;
    let ack = carol.next_frame().await;
    assert_eq!((ack["type"].as_str(), ack["ref"].as_str(), ack["seq"].as_i64()), (Some("ack"), Some(&*r), Some(1)));
    let own = Msg::parse(carol.next_frame().await);
    assert_eq!((own.room.as_str(), own.seq), ("elsewhere", 1), "rooms count seqs separately");
    carol.expect_no_frame_within(QUIET).await;
    alice.expect_no_frame_within(QUIET).await;
    bob.expect_no_frame_within(QUIET).await;
}

async fn joining_and_leaving_tell_the_others_and_leaving_stops_delivery(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (a, mut alice) = connect_user(&app, "alice@example.com").await;
    let (b, mut bob) = connect_user(&app, "bob@example.com").await;
    let (c, mut carol) = connect_user(&app, "carol@example.com").await;

    alice.join("general").await;
    bob.join("general").await;
    assert_eq!(alice.next_frame().await, system("general", "join", &b));
    carol.join("general").await;
    assert_eq!(alice.next_frame().await, system("general", "join", &c));
    assert_eq!(bob.next_frame().await, system("general", "join", &c));

    bob.leave("general").await;
    assert_eq!(alice.next_frame().await, system("general", "leave", &b));
    assert_eq!(carol.next_frame().await, system("general", "leave", &b));

    let sent = alice.send("general", "after bob left").await;
    assert_eq!(sent.seq, 1);
    assert_eq!(alice.next_message().await.seq, 1);
    assert_eq!(carol.next_frame().await["seq"], 1);
    // Had bob still been a member, the message would be queued for him before this join.
    assert_eq!(bob.join("other").await, 0);
    assert_eq!(alice.join("other").await, 0);
    assert_eq!(bob.next_frame().await, system("other", "join", &a));
    let sent = alice.send("other", "in other").await;
    let got = Msg::parse(bob.next_frame().await);
    assert_eq!((got.room.as_str(), got.seq, got.id.as_str()), ("other", 1, sent.id.as_str()));
    assert_eq!(alice.next_message().await.seq, 1);

    // Joining a room again restarts delivery quietly: no second `join` event.
    assert_eq!(bob.join("other").await, 1);
    // A connection that goes away leaves its rooms.
    carol.close().await;
    assert_eq!(alice.next_frame().await, system("general", "leave", &c));
    alice.expect_no_frame_within(QUIET).await;
    bob.expect_no_frame_within(QUIET).await;
}

async fn typing_reaches_the_other_members_only(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (_, mut alice) = connect_user(&app, "alice@example.com").await;
    let (b, mut bob) = connect_user(&app, "bob@example.com").await;
    alice.join("general").await;
    bob.join("general").await;
    assert_eq!(alice.next_frame().await, system("general", "join", &b));
    // Bob on a second connection: still bob, so not told that bob is typing.
    let mut bob2 = TestSocket::connect(&app, &b.token).await;
    bob2.join("general").await;
    assert_eq!(alice.next_frame().await, system("general", "join", &b));
    assert_eq!(bob.next_frame().await, system("general", "join", &b), "another session of bob joined");

    bob.typing("general").await;
    let typing = alice.next_frame().await;
    assert_eq!(typing, json!({ "type": "typing", "room": "general", "userId": b.user_id, "name": b.name() }));

    // Alice saw the typing before she sent; bob's connections get her message first, so no
    // typing frame was queued for them.
    let sent = alice.send("general", "I saw that").await;
    for socket in [&mut bob, &mut bob2] {
        let got = socket.next_frame().await;
        assert_eq!((got["type"].as_str(), got["id"].as_str()), (Some("message"), Some(sent.id.as_str())), "{got}");
    }
    assert_eq!(alice.next_message().await.id, sent.id);
    for socket in [&mut alice, &mut bob, &mut bob2] {
        socket.expect_no_frame_within(QUIET).await;
    }
}

async fn history_and_rooms_over_rest_show_what_was_sent(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (a, mut alice) = connect_user(&app, "alice@example.com").await;
    let (b, mut bob) = connect_user(&app, "bob@example.com").await;
    let room = "team:dev_1-x";
    alice.join(room).await;
    bob.join(room).await;
    assert_eq!(alice.next_frame().await, system(room, "join", &b));

    let mut acks = Vec::new();
    for i in 1..=5 {
        acks.push(alice.send(room, &format!("a{i}")).await);
        if i % 2 == 0 {
            acks.push(bob.send_with_client_id(room, &format!("b{i}"), &format!("bob-{i}")).await);
        }
    }
    assert_eq!(acks.iter().map(|a| a.seq).collect::<Vec<_>>(), (1..=7).collect::<Vec<_>>());
    let live = bob.messages(7).await;
    assert_eq!(seqs_of(&live), (1..=7).collect::<Vec<_>>());
    for (msg, ack) in live.iter().zip(&acks) {
        assert_eq!(msg.id, ack.id);
    }
    let contents: Vec<&str> = live.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["a1", "a2", "b2", "a3", "a4", "b4", "a5"]);

    // History is exactly what was delivered live (without `type`), oldest first.
    let mut all = expect_json(app.get_authed(&format!("/api/messages/{room}"), &a.token).await, StatusCode::OK).await;
    all["messages"].as_array_mut().expect("messages").iter_mut().for_each(normalise_time);
    assert_eq!(all, json!({ "messages": live.iter().map(as_history).collect::<Vec<_>>() }));
    assert_eq!(all["messages"][2]["clientId"], "bob-2");
    assert_eq!(all["messages"][2]["senderId"], b.user_id.as_str());
    let page = |query: &'static str| {
        let app = &app;
        let token = a.token.clone();
        async move {
            let body =
                expect_json(app.get_authed(&format!("/api/messages/{room}?{query}"), &token).await, StatusCode::OK)
                    .await;
            body["messages"]
                .as_array()
                .expect("messages")
                .iter()
                .map(|m| m["seq"].as_i64().expect("seq"))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(page("limit=3").await, [5, 6, 7]);
    assert_eq!(page("limit=3&before=5").await, [2, 3, 4]);
    assert_eq!(page("limit=3&before=2").await, [1]);

    // Rooms: the latest seq, and who is joined on this node right now.
    let rooms = |token: String| {
        let app = &app;
        async move {
            crate::helpers::room_counts(&expect_json(app.get_authed("/api/rooms", &token).await, StatusCode::OK).await)
        }
    };
    assert_eq!(rooms(b.token.clone()).await, json!({ "rooms": [{ "name": room, "lastSeq": 7, "members": 2 }] }));
    alice.close().await;
    assert_eq!(bob.next_of_type("system").await, system(room, "leave", &a));
    assert_eq!(rooms(b.token.clone()).await, json!({ "rooms": [{ "name": room, "lastSeq": 7, "members": 1 }] }));
    bob.leave(room).await;
    assert_eq!(rooms(b.token.clone()).await, json!({ "rooms": [{ "name": room, "lastSeq": 7, "members": 0 }] }));
}

async fn resuming_with_since_replays_exactly_what_was_missed(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (_, mut alice) = connect_user(&app, "alice@example.com").await;
    let (b, mut bob) = connect_user(&app, "bob@example.com").await;
    let room = "resume";
    alice.join(room).await;
    bob.join(room).await;
    assert_eq!(alice.next_frame().await, system(room, "join", &b));
    for i in 1..=3 {
        alice.send(room, &format!("m{i}")).await;
    }
    assert_eq!(seqs_of(&bob.messages(3).await), [1, 2, 3]);
    assert_eq!(seqs_of(&alice.messages(3).await), [1, 2, 3]);
    bob.close().await;
    assert_eq!(alice.next_frame().await, system(room, "leave", &b));
    for i in 4..=8 {
        alice.send(room, &format!("m{i}")).await;
    }

    // Back with the last seq it saw: the ack names the latest, then exactly 4..=8, then live.
    let mut bob = TestSocket::connect(&app, &b.token).await;
    assert_eq!(bob.join_since(room, 3).await, 8);
    let missed = bob.messages(5).await;
    assert_eq!(seqs_of(&missed), [4, 5, 6, 7, 8]);
    assert_eq!(missed.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(), ["m4", "m5", "m6", "m7", "m8"]);
    let live = alice.send(room, "m9").await;
    let got = bob.next_message().await;
    assert_eq!((got.seq, got.id.as_str()), (9, live.id.as_str()));

    // since=0 replays the whole room, identical to history.
    let (d, mut dave) = connect_user(&app, "dave@example.com").await;
    assert_eq!(dave.join_since(room, 0).await, 9);
    let replay = dave.messages(9).await;
    assert_eq!(seqs_of(&replay), (1..=9).collect::<Vec<_>>());
    let history = stored_messages(&app, room).await;
    assert_eq!(
        replay.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        history.iter().map(|m| m.id.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(bob.next_frame().await, system(room, "join", &d));

    // The seam: eve resumes from 2 while alice keeps sending; every seq once, in order.
    let (_, mut eve) = connect_user(&app, "eve@example.com").await;
    let sender = tokio::spawn(async move {
        for i in 10..=59 {
            alice.send(room, &format!("m{i}")).await;
        }
        alice
    });
    let latest = eve.join_since(room, 2).await;
    assert!((9..=59).contains(&latest), "join ack seq {latest}");
    let got = eve.messages(57).await;
    assert_eq!(seqs_of(&got), (3..=59).collect::<Vec<_>>());
    let _alice = sender.await.expect("sender");
    eve.expect_no_frame_within(QUIET).await;
    let bob_rest = bob.messages(50).await;
    assert_eq!(seqs_of(&bob_rest), (10..=59).collect::<Vec<_>>());
}

async fn a_repeated_client_id_stores_and_delivers_one_message(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (a, mut alice) = connect_user(&app, "alice@example.com").await;
    let (b, mut bob) = connect_user(&app, "bob@example.com").await;
    let room = "idem";
    alice.join(room).await;
    bob.join(room).await;
    assert_eq!(alice.next_frame().await, system(room, "join", &b));

    // Same connection, same clientId: one message, the same ack twice, one delivery.
    let frame =
        |content: &str, cid: &str| json!({ "type": "send_message", "room": room, "content": content, "clientId": cid });
    let r1 = alice.submit(frame("first", "cid-1")).await;
    let ack1 = alice.next_frame().await;
    assert_eq!(ack1["ref"], r1.as_str());
    let echo = Msg::parse(alice.next_frame().await);
    assert_eq!((echo.seq, echo.client_id.as_deref()), (1, Some("cid-1")));
    let r2 = alice.submit(frame("first, again", "cid-1")).await;
    let ack2 = alice.next_frame().await;
    assert_eq!(ack2["ref"], r2.as_str());
    assert_eq!((&ack2["id"], &ack2["seq"]), (&ack1["id"], &ack1["seq"]), "{ack1} vs {ack2}");
    // Nothing was delivered for the repeat: alice's next frames are the next send's.
    let next = alice.send(room, "next").await;
    assert_eq!(next.seq, 2);
    assert_eq!(alice.next_frame().await["seq"], 2);
    assert_eq!(seqs_of(&bob.messages(2).await), [1, 2]);

    // Another connection of the same user, same clientId: the original.
    let mut alice2 = TestSocket::connect(&app, &a.token).await;
    alice2.join(room).await;
    assert_eq!(alice.next_frame().await, system(room, "join", &a));
    assert_eq!(bob.next_frame().await, system(room, "join", &a));
    let again = alice2.send_with_client_id(room, "from the other tab", "cid-1").await;
    assert_eq!((again.id.as_str(), again.seq), (ack1["id"].as_str().expect("id"), 1));

    // Both connections racing with one new clientId: one message, two equal acks.
    let ra = alice.submit(frame("race from tab 1", "cid-2")).await;
    let rb = alice2.submit(frame("race from tab 2", "cid-2")).await;
    let (x, y) = (alice.send_ack(&ra).await, alice2.send_ack(&rb).await);
    assert_eq!(x, y);
    assert_eq!(x.seq, 3);
    // Another user's clientId is their own.
    let bobs = bob.send_with_client_id(room, "bob's", "cid-2").await;
    assert_eq!(bobs.seq, 4);

    for socket in [&mut alice, &mut alice2, &mut bob] {
        let got = socket.messages(2).await;
        assert_eq!(seqs_of(&got), [3, 4], "{}", socket.email);
        assert_eq!(got[0].id, x.id);
    }
    let stored = stored_messages(&app, room).await;
    let summary: Vec<(i64, Option<&str>)> = stored.iter().map(|m| (m.seq, m.client_id.as_deref())).collect();
    assert_eq!(summary, [(1, Some("cid-1")), (2, None), (3, Some("cid-2")), (4, Some("cid-2"))]);
    assert_eq!(stored[0].content, "first");
    for socket in [&mut alice, &mut alice2, &mut bob] {
        socket.expect_no_frame_within(QUIET).await;
    }
}

async fn a_client_that_stops_reading_is_cut_off_and_the_others_keep_receiving(backend: Backend) {
    // Big messages fill the socket buffers of a client that does not read quickly (the kernel
    // holds a few MB); then its queue of 16 overflows.
    const BIG: usize = 60_000;
    let app = spawn_chat_node(backend, |cfg| {
        cfg.ws.outbound_queue = 16;
        cfg.chat.message_max_len = BIG;
    })
    .await;
    let (_, mut alice) = connect_user(&app, "alice@example.com").await;
    assert_eq!(alice.hello["messageMaxLen"], BIG, "hello says the configured limit");
    let (b, mut bob) = connect_user(&app, "bob@example.com").await;
    let (s, mut slow) = connect_user(&app, "slow@example.com").await;
    let room = "firehose";
    alice.join(room).await;
    bob.join(room).await;
    slow.join(room).await;
    assert_eq!(alice.next_frame().await, system(room, "join", &b));
    assert_eq!(alice.next_frame().await, system(room, "join", &s));
    assert_eq!(bob.next_frame().await, system(room, "join", &s));

    // Bob reads everything as it comes; slow reads nothing from here on.
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        loop {
            let msg = bob.next_message().await;
            seqs.push(msg.seq);
            if msg.content == "done" {
                return (bob, seqs);
            }
        }
    });
    let big = "x".repeat(BIG - 10);
    let mut sent = 0;
    let mut own = Vec::new();
    // Until the server lets go of slow (sending one at a time: a burst bigger than a queue
    // would cut off a reader that keeps up, too).
    while app.state.chat.member_counts(&[room.to_owned()]).await[0] == 3 {
        assert!(sent < 2_000, "slow was never cut off");
        alice.send(room, &format!("{sent} {big}")).await;
        sent += 1;
        // Alice reads her own copies as she goes.
        while alice.unread().iter().any(|f| f["type"] == "message") {
            own.push(alice.next_message().await.seq);
        }
    }
    eprintln!("slow consumer cut off after {sent} messages of {BIG} characters");
    // Slow reads again, in time to be told why it was cut off.
    let slow_reader = tokio::spawn(async move { slow.until_closed().await });
    let done = alice.send(room, "done").await;
    let (mut bob, seqs) = reader.await.expect("reader");
    assert_eq!(seqs, (1..=done.seq).collect::<Vec<_>>(), "bob missed or repeated something");
    assert_eq!(bob.next_frame().await, system(room, "leave", &s));
    while own.last() != Some(&done.seq) {
        own.push(alice.next_message().await.seq);
    }
    assert_eq!(own, (1..=done.seq).collect::<Vec<_>>(), "alice missed or repeated something");
    assert_eq!(alice.next_frame().await, system(room, "leave", &s));

    // What slow did get is a gapless prefix, then a 1013 close.
    let ended = slow_reader.await.expect("slow reader");
    let got: Vec<i64> = ended.frames.iter().map(|f| f["seq"].as_i64().unwrap_or_else(|| panic!("{f}"))).collect();
    assert_eq!(got, (1..=i64::try_from(got.len()).expect("small")).collect::<Vec<_>>());
    assert!(got.len() < usize::try_from(done.seq).expect("small"));
    let close = ended.close.as_ref().unwrap_or_else(|| panic!("no close frame: {:?}", ended.error));
    assert_eq!(u16::from(close.code), 1013, "{close:?}");
    eprintln!("slow got {} messages, then {:?} / {:?}", got.len(), ended.close, ended.error);

    // The server still serves: slow resumes where it stopped, the others chat on.
    let mut slow = TestSocket::connect(&app, &s.token).await;
    let last = got.last().copied().unwrap_or(0);
    assert_eq!(slow.join_since(room, last).await, done.seq);
    let mut caught_up = Vec::new();
    while caught_up.last() != Some(&done.seq) {
        caught_up.push(slow.next_message().await.seq);
    }
    assert_eq!(caught_up, ((last + 1)..=done.seq).collect::<Vec<_>>());
    let after = bob.send(room, "still here").await;
    assert_eq!(slow.next_message().await.id, after.id);
    assert_eq!(alice.next_frame().await, system(room, "join", &s));
    assert_eq!(alice.next_message().await.id, after.id);
}

async fn shutdown_acks_in_flight_sends_then_closes_with_1001(backend: Backend) {
    let app = spawn_chat_node(backend, |cfg| {
        cfg.shutdown.grace = confab::config::HumanDuration(Duration::from_secs(10));
    })
    .await;
    let (a, mut alice) = connect_user(&app, "alice@example.com").await;
    let (b, mut bob) = connect_user(&app, "bob@example.com").await;
    let room = "last-words";
    alice.join(room).await;
    bob.join(room).await;
    assert_eq!(alice.next_frame().await, system(room, "join", &b));

    // Many sends in flight, then a ping: its pong proves the server read every send before it.
    let mut refs = Vec::new();
    for i in 1..=30 {
        refs.push(alice.submit_send(room, &format!("last words {i}")).await);
    }
    alice.ping().await;
    let (db, redis, secret) = (Arc::clone(&app.db), app.redis.clone(), app.jwt_secret.clone().expect("known key"));
    let (stopped, alice_frames, bob_frames) = tokio::join!(
        tokio::time::timeout(FRAME_TIMEOUT * 2, app.stop()),
        alice.expect_close(1001),
        bob.expect_close(1001),
    );
    stopped.expect("the node stopped in time");

    // Every send was acked before the close, in order: none was lost.
    let mut seqs = Vec::new();
    let mut ids = Vec::new();
    for r in &refs {
        let ack = alice_frames
            .iter()
            .find(|f| f["type"] == "ack" && f["ref"] == r.as_str())
            .unwrap_or_else(|| panic!("no ack for {r} before the close: {alice_frames:?}"));
        seqs.push(ack["seq"].as_i64().expect("seq"));
        ids.push(ack["id"].as_str().expect("id").to_owned());
    }
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
    // Besides acks, alice got her messages (a gapless prefix) and maybe bob leaving as his
    // connection closed first.
    let leave = system(room, "leave", &b);
    assert!(
        alice_frames.iter().all(|f| f["type"] == "ack" || f["type"] == "message" || *f == leave),
        "{alice_frames:?}"
    );
    let own: Vec<i64> =
        alice_frames.iter().filter(|f| f["type"] == "message").map(|f| f["seq"].as_i64().expect("seq")).collect();
    assert_eq!(own, (1..=i64::try_from(own.len()).expect("small")).collect::<Vec<_>>());
    // What bob got before the close is in order, without gaps (and maybe alice leaving).
    let leave = system(room, "leave", &a);
    let bob_seqs: Vec<i64> = bob_frames
        .iter()
        .filter(|f| **f != leave)
        .map(|f| f["seq"].as_i64().unwrap_or_else(|| panic!("{f}")))
        .collect();
    assert_eq!(bob_seqs, (1..=i64::try_from(bob_seqs.len()).expect("small")).collect::<Vec<_>>());

    // A new node on the same database has all 30 in its history.
    let app = spawn_node(db, redis, |cfg| cfg.auth.jwt_secret = Some(confab::config::Secret::new(secret))).await;
    let history = expect_json(app.get_authed(&format!("/api/messages/{room}"), &a.token).await, StatusCode::OK).await;
    let stored: Vec<(i64, String)> = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| (m["seq"].as_i64().expect("seq"), m["id"].as_str().expect("id").to_owned()))
        .collect();
    assert_eq!(stored, seqs.into_iter().zip(ids).collect::<Vec<_>>());
}

/// Heartbeats: the server pings every `ws.ping_interval`; a connection that sends nothing, not
/// even the pong a WebSocket client returns automatically while it reads, is closed with 1008
/// after `ws.idle_timeout`. One that keeps reading stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_stops_answering_pings_is_closed_with_1008() {
    let app = spawn_chat_node(Backend::Sqlite, |cfg| {
        // Four ping intervals: a reader delayed by a busy machine still answers in time.
        cfg.ws.ping_interval = confab::config::HumanDuration(Duration::from_secs(1));
        cfg.ws.idle_timeout = confab::config::HumanDuration(Duration::from_secs(4));
    })
    .await;
    let (_, mut alive) = connect_user(&app, "alive@example.com").await;
    alive.join("general").await;
    // A WebSocket library answers pings as soon as it reads, so the silent client is raw TCP.
    let silent = app.register("silent@example.com").await;
    let mut raw = raw_upgrade(&app, &silent.token).await;

    // Alive reads (and so answers pings) for well past the idle timeout; silent reads nothing.
    alive.expect_no_frame_within(Duration::from_secs(6)).await;
    let mut bytes = Vec::new();
    tokio::time::timeout(FRAME_TIMEOUT, raw.read_to_end(&mut bytes))
        .await
        .expect("the server did not close the silent connection")
        .expect("read the silent connection");
    let frames = server_frames(&bytes);
    let opcodes: Vec<u8> = frames.iter().map(|(op, _)| *op).collect();
    // hello (text), at least one ping, then the close, and nothing else.
    assert_eq!(opcodes.first(), Some(&0x1), "{opcodes:?}");
    assert_eq!(opcodes.last(), Some(&0x8), "{opcodes:?}");
    assert!(opcodes.len() >= 3 && opcodes[1..opcodes.len() - 1].iter().all(|op| *op == 0x9), "{opcodes:?}");
    let close = &frames.last().expect("frames").1;
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1008, "close payload {close:?}");

    let sent = alive.send("general", "still here").await;
    assert_eq!(alive.next_message().await.id, sent.id);
}

/// Upgrades a plain TCP connection to `/ws` and returns it, the server's frames unread.
async fn raw_upgrade(app: &TestApp, token: &str) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.expect("connect");
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {token}\r\n\r\n",
        app.addr
    );
    tcp.write_all(request.as_bytes()).await.expect("write the upgrade request");
    // The response head, byte by byte so that no frame is consumed with it.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(FRAME_TIMEOUT, tcp.read_exact(&mut byte)).await.expect("response in time").expect("read");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp
}

/// Splits what a server sent (unmasked frames) into `(opcode, payload)`.
fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let opcode = bytes[0] & 0x0f;
        assert_eq!(bytes[1] & 0x80, 0, "server frames are not masked");
        let (len, header) = match bytes[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 => (usize::try_from(u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes"))).expect("len"), 10),
            n => (usize::from(n), 2),
        };
        frames.push((opcode, bytes[header..header + len].to_vec()));
        bytes = &bytes[header + len..];
    }
    frames
}
