//! `confab-bench floor-server`: the floor that confab's fan-out figures are printed beside.
//!
//! A minimal in-memory broadcaster speaking just enough of the native protocol (PROTOCOL.md) for
//! the fan-out scenarios: `hello` after the upgrade (any token, or none, is accepted: nothing is
//! provisioned), `join_room` and `leave_room` acked with the room's seq, `send_message` acked and
//! then broadcast to every member of the room, the sender included, as a `message` event with a
//! per-room `seq`, and `ping`. Nothing is stored, authorised, rate limited or made idempotent.
//!
//! What it does do is the least a broadcaster must: parse each command, encode each message's
//! event and frame once and share those bytes with every recipient, and write them to each
//! recipient's socket with one non-blocking write (queued only when the socket would block, then
//! written by that connection's flush task), as confab's outbox does. So the floor is what the
//! kernel's loopback TCP, WebSocket framing and a JSON parse cost on this machine, and the gap
//! between confab's figures and the floor's, taken by the same generator in the same invocation,
//! is what storage, checks and confab's own code add.
//!
//! It runs as a process of its own (the bench starts `confab-bench floor-server` for `--floor`),
//! so that its CPU time is read from /proc like a node's, apart from the generator's.
//!
//! One file per role:
//!
//! - `frames`: WebSocket by hand: the upgrade key, client frames in, server frames out.
//! - `session`: one connection: the upgrade, hello, and the commands it reads.
//! - `outbox`: the write side of a connection, shared by every room it joined.
//!
//! This file holds the listener and the rooms.

mod frames;
mod outbox;
mod session;

use std::{
    collections::HashMap,
    io,
    sync::{Arc, Mutex, MutexGuard, PoisonError, atomic::AtomicU64},
    time::Duration,
};

use anyhow::Context as _;
use tokio::net::TcpListener;

use outbox::Outbox;
use session::connection;

/// The first line `floor-server` prints: this prefix, then the address it listens on.
pub const LISTENING: &str = "FLOOR_LISTENING ";

/// Binds `listen`, prints [`LISTENING`] with the address, and serves until SIGTERM or Ctrl-C.
pub async fn serve(listen: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    {
        use std::io::Write as _;
        let mut out = io::stdout().lock();
        writeln!(out, "{LISTENING}{addr}")?;
        out.flush()?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = accept_loop(listener) => Ok(()),
        _ = term.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// Accepts connections for ever, each served by a task of its own.
pub async fn accept_loop(listener: TcpListener) {
    let floor = Arc::new(Floor::default());
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let floor = Arc::clone(&floor);
                tokio::spawn(async move {
                    // A client that breaks the protocol is simply dropped: the bench notices.
                    let _ = connection(stream, floor).await;
                });
            }
            // Out of descriptors, say: let some connections go first.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct Floor {
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    users: AtomicU64,
}

impl Floor {
    fn room(&self, name: &str) -> Arc<Room> {
        let mut rooms = lock(&self.rooms);
        if let Some(room) = rooms.get(name) {
            return Arc::clone(room);
        }
        let room = Arc::new(Room::default());
        rooms.insert(name.to_owned(), Arc::clone(&room));
        room
    }
}

#[derive(Default)]
struct Room {
    state: Mutex<RoomState>,
}

/// A room's seq and members. Its lock is held while a message is written to every member, so
/// each member gets the room's messages in seq order.
#[derive(Default)]
struct RoomState {
    seq: u64,
    members: Vec<Arc<Outbox>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        fanout::{Kind, encode_send, join, kind, seq, tag},
        ws::{OP_TEXT, WsConn},
    };

    async fn text(conn: &mut WsConn) -> Vec<u8> {
        tokio::time::timeout(Duration::from_secs(10), conn.next_text())
            .await
            .expect("a frame within 10 s")
            .expect("reading")
            .expect("not closed")
    }

    /// The bench's own client against the floor: hello, joins acked with the room's seq, a send
    /// acked and delivered to every member (the sender too) with the next seq and the bench tag
    /// intact, in the shape the fan-out receivers scan.
    #[tokio::test]
    async fn the_floor_acks_and_broadcasts_with_a_room_seq() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(accept_loop(listener));
        let mut alice = WsConn::connect(&addr, "/ws", "any token", 4096).await.unwrap();
        let mut bob = WsConn::connect(&addr, "/ws", "", 4096).await.unwrap();
        for conn in [&mut alice, &mut bob] {
            let hello: serde_json::Value = serde_json::from_slice(&text(conn).await).unwrap();
            assert_eq!(hello["type"], "hello", "{hello}");
            assert!(hello["user"]["id"].is_string(), "{hello}");
        }
        assert_eq!(join(&mut alice, "r").await.unwrap(), 0);
        assert_eq!(join(&mut bob, "r").await.unwrap(), 0);

        let mut json = Vec::new();
        for k in 0..2 {
            encode_send(&mut json, "r", 3, k, 1_000 + k, 100, true);
            alice.send(OP_TEXT, &json).await.unwrap();
            let ack = text(&mut alice).await;
            assert_eq!((kind(&ack), seq(&ack)), (Kind::Ack, Some(k + 1)), "{}", String::from_utf8_lossy(&ack));
            for conn in [&mut alice, &mut bob] {
                let message = text(conn).await;
                let shown = String::from_utf8_lossy(&message).into_owned();
                assert_eq!((kind(&message), seq(&message)), (Kind::Message, Some(k + 1)), "{shown}");
                let bench_tag = tag(&message).expect("the tag survives");
                let sched = crate::clock::from_unix(bench_tag.sched_unix_ns);
                assert_eq!((bench_tag.sender, bench_tag.k, sched), (3, k, 1_000 + k), "{shown}");
                let event: serde_json::Value = serde_json::from_slice(&message).unwrap();
                assert_eq!(event["clientId"], format!("00000003-0000-4000-8000-{k:012x}"), "{event}");
                assert_eq!(event["room"], "r");
            }
        }
        // A later joiner sees the room's seq; a send to a room not joined is refused.
        let mut carol = WsConn::connect(&addr, "/ws", "t", 4096).await.unwrap();
        text(&mut carol).await;
        assert_eq!(join(&mut carol, "r").await.unwrap(), 2);
        encode_send(&mut json, "other", 0, 0, 0, 100, false);
        carol.send(OP_TEXT, &json).await.unwrap();
        assert_eq!(kind(&text(&mut carol).await), Kind::Error);
        carol.send(OP_TEXT, br#"{"type":"ping","ref":"p1"}"#).await.unwrap();
        assert_eq!(text(&mut carol).await, br#"{"type":"pong","ref":"p1"}"#);
        server.abort();
    }
}
