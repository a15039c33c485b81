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

use std::{
    collections::{HashMap, VecDeque},
    io,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use bytes::{Buf as _, Bytes};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, tcp::OwnedWriteHalf},
    sync::Notify,
};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::ws::{OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};

/// The first line `floor-server` prints: this prefix, then the address it listens on.
pub const LISTENING: &str = "FLOOR_LISTENING ";
/// Largest client frame, as confab's `ws.max_frame` default.
const MAX_FRAME: usize = 64 * 1024;
/// Largest upgrade request head.
const MAX_HEAD: usize = 8 * 1024;
/// Frames waiting for a reader that does not keep up before it is cut off (confab's
/// `ws.outbound_queue` plays this part there).
const MAX_QUEUED: usize = 64 * 1024;
/// What the floor announces as `messageMaxLen` (confab's default).
const MESSAGE_MAX_LEN: usize = 2000;

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

/// The write side of one connection.
struct Outbox {
    socket: OwnedWriteHalf,
    queue: Mutex<Queue>,
    wake: Notify,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    closed: bool,
}

impl Outbox {
    /// Writes `frame` now if nothing is queued and the socket takes it; queues what it does not.
    fn send(&self, frame: &Bytes) {
        let mut q = lock(&self.queue);
        if q.closed {
            return;
        }
        if !q.frames.is_empty() {
            if q.frames.len() >= MAX_QUEUED {
                q.closed = true;
                q.frames.clear();
                self.wake.notify_one();
            } else {
                q.frames.push_back(frame.clone());
            }
            return;
        }
        match self.socket.try_write(frame) {
            Ok(n) if n == frame.len() => return,
            Ok(n) => q.frames.push_back(frame.slice(n..)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => q.frames.push_back(frame.clone()),
            Err(_) => q.closed = true,
        }
        self.wake.notify_one();
    }

    fn close(&self) {
        lock(&self.queue).closed = true;
        self.wake.notify_one();
    }

    fn is_closed(&self) -> bool {
        lock(&self.queue).closed
    }
}

/// Writes what [`Outbox::send`] had to queue, whenever the socket takes more.
async fn flush(outbox: Arc<Outbox>) {
    loop {
        outbox.wake.notified().await;
        loop {
            {
                let mut q = lock(&outbox.queue);
                if q.closed {
                    return;
                }
                while let Some(front) = q.frames.front_mut() {
                    match outbox.socket.try_write(front) {
                        Ok(n) if n == front.len() => {
                            q.frames.pop_front();
                        }
                        Ok(n) => front.advance(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            q.closed = true;
                            return;
                        }
                    }
                }
                if q.frames.is_empty() {
                    break;
                }
            }
            if outbox.socket.writable().await.is_err() {
                outbox.close();
                return;
            }
        }
    }
}

/// A server frame (unmasked, one fragment), ready to be shared by every recipient.
pub fn server_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | opcode);
    match (u8::try_from(payload.len()), u16::try_from(payload.len())) {
        (Ok(n), _) if n < 126 => out.push(n),
        (_, Ok(n)) => {
            out.push(126);
            out.extend_from_slice(&n.to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// A complete client frame at the start of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientFrame {
    pub opcode: u8,
    /// Header bytes, mask included.
    pub header: usize,
    pub len: usize,
    pub mask: [u8; 4],
}

/// The client frame at the start of `data`: `Ok(None)` while incomplete, an error for what the
/// floor does not take (unmasked or fragmented frames, frames over [`MAX_FRAME`]).
pub fn parse_client_frame(data: &[u8]) -> anyhow::Result<Option<ClientFrame>> {
    let (Some(&b0), Some(&b1)) = (data.first(), data.get(1)) else { return Ok(None) };
    let opcode = b0 & 0x0f;
    if b0 & 0x80 == 0 || opcode == 0 {
        bail!("fragmented frame (unsupported by the floor)");
    }
    if b1 & 0x80 == 0 {
        bail!("unmasked client frame");
    }
    let (at, len) = match b1 & 0x7f {
        126 => match data.get(2..4) {
            Some(b) => (4, u64::from(u16::from_be_bytes([b[0], b[1]]))),
            None => return Ok(None),
        },
        127 => match data.get(2..10) {
            Some(b) => (10, b.iter().fold(0u64, |v, &x| (v << 8) | u64::from(x))),
            None => return Ok(None),
        },
        n => (2, u64::from(n)),
    };
    let len = usize::try_from(len).ok().filter(|&l| l <= MAX_FRAME).with_context(|| format!("frame of {len} bytes"))?;
    let Some(mask) = data.get(at..at + 4) else { return Ok(None) };
    if data.len() < at + 4 + len {
        return Ok(None);
    }
    Ok(Some(ClientFrame { opcode, header: at + 4, len, mask: [mask[0], mask[1], mask[2], mask[3]] }))
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// The `Sec-WebSocket-Key` of an upgrade request head.
fn upgrade_key(head: &[u8]) -> Option<String> {
    let head = std::str::from_utf8(head).ok()?;
    if !head.starts_with("GET ") {
        return None;
    }
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim().eq_ignore_ascii_case("sec-websocket-key").then(|| value.trim().to_owned())
    })
}

/// A command, with the fields the floor looks at.
#[derive(Debug, Deserialize)]
struct Command {
    #[serde(rename = "type")]
    kind: String,
    room: Option<String>,
    content: Option<String>,
    #[serde(rename = "clientId")]
    client_id: Option<String>,
    #[serde(rename = "ref")]
    reference: Option<String>,
}

/// A `message` event, field for field as confab sends it (`type` first).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MessageEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    room: &'a str,
    seq: u64,
    sender_id: &'a str,
    sender_name: &'a str,
    content: &'a str,
    created_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
}

/// Every other frame the floor sends, `type` first as confab writes it (the bench's scan of
/// `hello` relies on that), absent fields left out.
#[derive(Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct Reply<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_max_len: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

/// One connection's reading side, and what it joined.
struct Session {
    floor: Arc<Floor>,
    outbox: Arc<Outbox>,
    user_id: String,
    name: String,
    rooms: HashMap<String, Arc<Room>>,
}

async fn connection(mut stream: TcpStream, floor: Arc<Floor>) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut end = 0;
    let head_len = loop {
        if let Some(at) = memchr::memmem::find(&buf[..end], b"\r\n\r\n") {
            break at + 4;
        }
        if end >= MAX_HEAD {
            bail!("upgrade request head over {MAX_HEAD} bytes");
        }
        let n = stream.read(&mut buf[end..MAX_HEAD]).await?;
        if n == 0 {
            return Ok(());
        }
        end += n;
    };
    let Some(key) = upgrade_key(&buf[..head_len]) else {
        stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await?;
        return Ok(());
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(response.as_bytes()).await?;
    buf.copy_within(head_len..end, 0);
    end -= head_len;

    let (mut read, write) = stream.into_split();
    let outbox = Arc::new(Outbox { socket: write, queue: Mutex::default(), wake: Notify::new() });
    tokio::spawn(flush(Arc::clone(&outbox)));
    let n = floor.users.fetch_add(1, Ordering::Relaxed) + 1;
    let mut session = Session {
        floor,
        outbox,
        user_id: format!("00000000-0000-4000-8000-{n:012x}"),
        name: format!("floor-{n}"),
        rooms: HashMap::new(),
    };
    let user = serde_json::json!({
        "id": session.user_id,
        "email": format!("{}@floor.invalid", session.name),
        "displayName": session.name,
    });
    session.reply(&Reply {
        kind: "hello",
        user: Some(user),
        node: Some("floor"),
        message_max_len: Some(MESSAGE_MAX_LEN),
        ..Reply::default()
    });
    let result = session.read_loop(&mut read, buf, end).await;
    for room in session.rooms.values() {
        lock(&room.state).members.retain(|m| !Arc::ptr_eq(m, &session.outbox));
    }
    session.outbox.close();
    result
}

impl Session {
    async fn read_loop(
        &mut self,
        read: &mut tokio::net::tcp::OwnedReadHalf,
        mut buf: Vec<u8>,
        mut end: usize,
    ) -> anyhow::Result<()> {
        let mut start = 0;
        loop {
            while let Some(f) = parse_client_frame(&buf[start..end])? {
                let payload = start + f.header..start + f.header + f.len;
                unmask(&mut buf[payload.clone()], f.mask);
                let p = &buf[payload];
                match f.opcode {
                    OP_TEXT => self.command(p),
                    OP_PING => self.outbox.send(&server_frame(OP_PONG, p)),
                    OP_PONG => {}
                    OP_CLOSE => {
                        self.outbox.send(&server_frame(OP_CLOSE, p.get(..2).unwrap_or_default()));
                        return Ok(());
                    }
                    _ => {
                        self.error(None, "invalid_payload", "only text frames are understood");
                        self.outbox.send(&server_frame(OP_CLOSE, &1003u16.to_be_bytes()));
                        return Ok(());
                    }
                }
                start += f.header + f.len;
                if self.outbox.is_closed() {
                    return Ok(());
                }
            }
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
            if end == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
            let n = read.read(&mut buf[end..]).await?;
            if n == 0 {
                return Ok(());
            }
            end += n;
        }
    }

    fn reply(&self, reply: &Reply<'_>) {
        // A struct of strings and numbers always serialises.
        if let Ok(json) = serde_json::to_vec(reply) {
            self.outbox.send(&server_frame(OP_TEXT, &json));
        }
    }

    fn error(&self, reference: Option<&str>, code: &str, message: &str) {
        self.reply(&Reply { kind: "error", reference, code: Some(code), message: Some(message), ..Reply::default() });
    }

    fn command(&mut self, p: &[u8]) {
        let c: Command = match serde_json::from_slice(p) {
            Ok(c) => c,
            Err(e) => return self.error(None, "invalid_payload", &e.to_string()),
        };
        let reference = c.reference.as_deref();
        match (c.kind.as_str(), c.room) {
            ("join_room", Some(name)) => {
                let room = self.floor.room(&name);
                let seq = {
                    let mut state = lock(&room.state);
                    if !state.members.iter().any(|m| Arc::ptr_eq(m, &self.outbox)) {
                        state.members.push(Arc::clone(&self.outbox));
                    }
                    state.seq
                };
                self.reply(&Reply { kind: "ack", reference, room: Some(&name), seq: Some(seq), ..Reply::default() });
                self.rooms.insert(name, room);
            }
            ("leave_room", Some(name)) => {
                if let Some(room) = self.rooms.remove(&name) {
                    lock(&room.state).members.retain(|m| !Arc::ptr_eq(m, &self.outbox));
                }
                self.reply(&Reply { kind: "ack", reference, room: Some(&name), ..Reply::default() });
            }
            ("send_message", Some(name)) => {
                let Some(content) = c.content.as_deref().filter(|t| !t.trim().is_empty()) else {
                    return self.error(reference, "invalid_payload", "content is required");
                };
                let Some(room) = self.rooms.get(&name) else {
                    return self.error(reference, "not_joined", "join the room first");
                };
                let id = uuid::Uuid::new_v4().to_string();
                let created_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                let mut state = lock(&room.state);
                state.seq += 1;
                let event = MessageEvent {
                    kind: "message",
                    id: &id,
                    room: &name,
                    seq: state.seq,
                    sender_id: &self.user_id,
                    sender_name: &self.name,
                    content,
                    created_at: &created_at,
                    client_id: c.client_id.as_deref(),
                };
                let frame = match serde_json::to_vec(&event) {
                    Ok(json) => server_frame(OP_TEXT, &json),
                    Err(e) => return self.error(reference, "internal", &e.to_string()),
                };
                // As confab: the sender's ack, then the message to every member.
                self.reply(&Reply { kind: "ack", reference, id: Some(&id), seq: Some(state.seq), ..Reply::default() });
                for member in &state.members {
                    member.send(&frame);
                }
            }
            ("ping", _) => self.reply(&Reply { kind: "pong", reference, ..Reply::default() }),
            (kind, _) => self.error(reference, "invalid_payload", &format!("{kind}: not understood by the floor")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        fanout::{Kind, encode_send, join, kind, seq, tag},
        ws::{WsConn, encode_frame},
    };

    #[test]
    fn client_frames_parse_at_every_length_encoding() {
        for len in [0, 1, 125, 126, 300, 65_535, MAX_FRAME] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut wire = Vec::new();
            encode_frame(&mut wire, OP_TEXT, &payload, [9, 8, 7, 6]);
            for cut in [0, 1, wire.len().min(3), wire.len() - 1] {
                assert_eq!(parse_client_frame(&wire[..cut]).unwrap(), None, "len {len}, first {cut} bytes");
            }
            wire.extend_from_slice(b"next frame");
            let f = parse_client_frame(&wire).unwrap().expect("complete");
            assert_eq!((f.opcode, f.len, f.mask), (OP_TEXT, len, [9, 8, 7, 6]));
            let mut p = wire[f.header..f.header + f.len].to_vec();
            unmask(&mut p, f.mask);
            assert_eq!(p, payload);
        }
    }

    #[test]
    fn frames_the_floor_does_not_take_are_errors() {
        let mut wire = Vec::new();
        encode_frame(&mut wire, OP_TEXT, &vec![b'a'; MAX_FRAME + 1], [1, 2, 3, 4]);
        assert!(parse_client_frame(&wire).is_err(), "too long");
        assert!(parse_client_frame(&server_frame(OP_TEXT, b"hi")).is_err(), "unmasked");
        let mut fragment = Vec::new();
        encode_frame(&mut fragment, OP_TEXT, b"hi", [1, 2, 3, 4]);
        fragment[0] &= 0x7f;
        assert!(parse_client_frame(&fragment).is_err(), "not final");
    }

    #[test]
    fn server_frames_use_the_shortest_length_encoding() {
        assert_eq!(&server_frame(OP_TEXT, b"hi")[..], b"\x81\x02hi");
        let f = server_frame(OP_TEXT, &[b'x'; 300]);
        assert_eq!((&f[..4], f.len()), (&[0x81, 126, 1, 44][..], 304));
        let f = server_frame(OP_TEXT, &vec![b'x'; 70_000]);
        assert_eq!((&f[..10], f.len()), (&[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70][..], 70_010));
    }

    #[test]
    fn the_upgrade_key_is_found_in_any_case() {
        let head = b"GET /ws HTTP/1.1\r\nHost: x\r\nsec-websocket-KEY:  abc== \r\n\r\n";
        assert_eq!(upgrade_key(head).as_deref(), Some("abc=="));
        assert_eq!(upgrade_key(b"POST /ws HTTP/1.1\r\nSec-WebSocket-Key: abc\r\n\r\n"), None);
        assert_eq!(upgrade_key(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"), None);
    }

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
