//! One floor connection: the upgrade and `hello`, then a loop reading client frames and
//! answering the commands the fan-out scenarios send (`join_room`, `leave_room`, `send_message`,
//! `ping`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::Ordering},
};

use anyhow::bail;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::Notify,
};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::{
    Floor, Room,
    frames::{parse_client_frame, server_frame, unmask, upgrade_key},
    lock,
    outbox::{Outbox, flush},
};
use crate::ws::{OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};

/// Largest upgrade request head.
const MAX_HEAD: usize = 8 * 1024;
/// What the floor announces as `messageMaxLen` (confab's default).
const MESSAGE_MAX_LEN: usize = 2000;

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

pub(super) async fn connection(mut stream: TcpStream, floor: Arc<Floor>) -> anyhow::Result<()> {
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
