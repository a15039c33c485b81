//! Socket.IO v5 over Engine.IO v4 (websocket transport), so `socket.io-client` code written for
//! the original platform connects unchanged.
//!
//! Engine.IO frames are one text frame each: `0` open, `1` close, `2` ping (server → client),
//! `3` pong, `4` message. A message carries a Socket.IO packet: `0` CONNECT (with the auth
//! payload `{ "token": … }`), `1` DISCONNECT, `2` EVENT `["name", payload]`, `3` ACK, `4`
//! CONNECT_ERROR, `5`/`6` binary variants (refused). An EVENT may carry an ack id between the
//! type and the JSON (`4212["send_message",{…}]`), answered by `43<id>[<reply>]`.

use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{Command, Reply, ReplyBody, Tag, native};

/// The Engine.IO ping the server sends; the client answers `3`.
pub const PING: &str = "2";

/// One inbound text frame, classified.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Engine.IO ping from a client (answer `3`), pong, or noop/upgrade probes: no command.
    EioPing,
    EioOther,
    /// Engine.IO close, or Socket.IO DISCONNECT of the default namespace.
    Close,
    Connect {
        nsp: &'a str,
        auth: &'a str,
    },
    Event {
        nsp: &'a str,
        ack_id: Option<u64>,
        data: &'a str,
    },
    /// Binary events and acks: this server speaks JSON only. `attachments` binary frames
    /// follow the packet; `ack_id` is the id a BINARY_EVENT's ack callback waits on.
    Binary {
        attachments: usize,
        ack_id: Option<u64>,
    },
    /// An ACK for an event we sent (we never ask for one) or a disconnect of another namespace.
    Ignored,
    Malformed,
}

/// Classifies a text frame.
pub fn parse(text: &str) -> Packet<'_> {
    let mut chars = text.chars();
    match chars.next() {
        Some('2') => return Packet::EioPing,
        Some('1') => return Packet::Close,
        Some('4') => {}
        Some('3' | '5' | '6') => return Packet::EioOther,
        _ => return Packet::Malformed,
    }
    // By characters, not bytes: a multi-byte character here is malformed, not a panic.
    let Some(kind) = chars.next() else { return Packet::Malformed };
    let mut rest = chars.as_str();
    // Binary packets put the attachment count first: `451-["x",{"_placeholder":true,"num":0}]`.
    let mut attachments = None;
    if matches!(kind, '5' | '6') {
        let Some((count, after)) = rest.split_once('-') else { return Packet::Malformed };
        let Ok(count) = count.parse() else { return Packet::Malformed };
        attachments = Some(count);
        rest = after;
    }
    let mut nsp = "/";
    if rest.starts_with('/') {
        if let Some(i) = rest.find(',') {
            nsp = &rest[..i];
            rest = &rest[i + 1..];
        } else {
            nsp = rest;
            rest = "";
        }
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let ack_id = if digits > 0 { rest[..digits].parse().ok() } else { None };
    let data = &rest[digits..];
    match kind {
        '0' => Packet::Connect { nsp, auth: data },
        '1' if nsp == "/" => Packet::Close,
        '2' => Packet::Event { nsp, ack_id, data },
        // A BINARY_ACK answers an event of ours; we never ask for acks, so its id means nothing.
        '5' => Packet::Binary { attachments: attachments.unwrap_or_default(), ack_id },
        '6' => Packet::Binary { attachments: attachments.unwrap_or_default(), ack_id: None },
        '1' | '3' => Packet::Ignored,
        _ => Packet::Malformed,
    }
}

/// Engine.IO OPEN: session id and heartbeat settings.
pub fn open(sid: &str, upgrades: bool, ping_interval_ms: u128, ping_timeout_ms: u128, max_payload: usize) -> Utf8Bytes {
    let upgrades: &[&str] = if upgrades { &["websocket"] } else { &[] };
    let body = serde_json::json!({
        "sid": sid,
        "upgrades": upgrades,
        "pingInterval": ping_interval_ms,
        "pingTimeout": ping_timeout_ms,
        "maxPayload": max_payload,
    });
    Utf8Bytes::from(format!("0{body}"))
}

/// The token from a CONNECT's auth payload (`{"token": "…"}`).
pub fn token(auth: &str) -> Option<String> {
    let v: Value = serde_json::from_str(auth).ok()?;
    v.get("token")?.as_str().map(str::to_owned)
}

pub fn connected(sid: &str) -> Utf8Bytes {
    Utf8Bytes::from(format!("40{}", serde_json::json!({ "sid": sid })))
}

/// CONNECT_ERROR for `nsp` (`/` is written without a namespace prefix, as clients expect).
pub fn connect_error(nsp: &str, message: &str) -> Utf8Bytes {
    let body = serde_json::json!({ "message": message });
    if nsp == "/" { Utf8Bytes::from(format!("44{body}")) } else { Utf8Bytes::from(format!("44{nsp},{body}")) }
}

/// Why an EVENT is not a command.
#[derive(Debug)]
pub struct DecodeError {
    pub tag: Tag,
    pub message: String,
}

/// The command in an EVENT's JSON array. Room-only events also accept a bare room string
/// (`emit("join_room", "general")`), as older clients send.
pub fn decode_event(data: &str, ack_id: Option<u64>) -> Result<(Command, Tag), DecodeError> {
    let fail = |tag: Tag, message: &str| DecodeError { tag, message: message.to_owned() };
    let Ok(Value::Array(mut items)) = serde_json::from_str::<Value>(data) else {
        return Err(fail(Tag { cmd_ref: None, ack_id }, "event is not a JSON array"));
    };
    let payload = if items.len() > 1 { items.swap_remove(1) } else { Value::Null };
    let name = items.first().and_then(Value::as_str).unwrap_or_default().to_owned();
    let cmd_ref = payload.get("ref").and_then(Value::as_str).map(str::to_owned);
    let tag = Tag { cmd_ref: cmd_ref.filter(|r| super::ref_fits(r)), ack_id };
    let text = |key: &str| payload.get(key).and_then(Value::as_str).map(str::to_owned);
    let room = || match &payload {
        Value::String(room) => Some(room.clone()),
        _ => text("room"),
    };
    let cmd = match name.as_str() {
        "join_room" => {
            let since = match payload.get("since") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_i64().ok_or_else(|| fail(tag.clone(), "since must be a seq number"))?),
            };
            Command::Join { room: room().ok_or_else(|| fail(tag.clone(), "missing field `room`"))?, since }
        }
        "leave_room" => Command::Leave { room: room().ok_or_else(|| fail(tag.clone(), "missing field `room`"))? },
        "typing" => Command::Typing { room: room().ok_or_else(|| fail(tag.clone(), "missing field `room`"))? },
        "send_message" => Command::Send {
            room: text("room").ok_or_else(|| fail(tag.clone(), "missing field `room`"))?,
            content: text("content").ok_or_else(|| fail(tag.clone(), "missing field `content`"))?,
            client_id: match payload.get("clientId") {
                None | Some(Value::Null) => None,
                Some(Value::String(c)) => Some(c.clone()),
                Some(_) => return Err(fail(tag, "clientId must be a string")),
            },
        },
        "mark_read" => Command::MarkRead {
            room: text("room").ok_or_else(|| fail(tag.clone(), "missing field `room`"))?,
            seq: payload
                .get("seq")
                .and_then(Value::as_i64)
                .ok_or_else(|| fail(tag.clone(), "seq must be a seq number"))?,
        },
        "ping" => Command::Ping,
        "auth" => Command::Auth { token: text("token").ok_or_else(|| fail(tag.clone(), "missing field `token`"))? },
        "" => return Err(fail(tag, "event name missing")),
        other => return Err(fail(tag, &format!("unknown event `{other}`"))),
    };
    Ok((cmd, tag))
}

/// A reply as Socket.IO frames: the ack callback's argument when the event asked for one,
/// otherwise an `error` event for errors; plus the `system` lines the original platform sent.
pub fn reply(reply: &Reply) -> Vec<Utf8Bytes> {
    let mut out = Vec::with_capacity(2);
    let json = native::reply_json(reply);
    match (reply.tag.ack_id, &reply.body) {
        (Some(id), _) => out.push(Utf8Bytes::from(format!("43{id}[{json}]"))),
        (None, ReplyBody::Error { .. }) => out.push(Utf8Bytes::from(format!("42[\"error\",{json}]"))),
        (None, ReplyBody::Pong) => out.push(Utf8Bytes::from(format!("42[\"pong\",{json}]"))),
        (None, _) => {}
    }
    let system = match &reply.body {
        ReplyBody::Error { code: "invalid_room", .. } => Some(serde_json::json!({ "message": "Invalid room name." })),
        ReplyBody::Error { code: "invalid_payload" | "too_long", .. } => {
            Some(serde_json::json!({ "message": "Invalid message payload." }))
        }
        ReplyBody::Joined { room, .. } => {
            Some(serde_json::json!({ "room": room, "message": format!("You joined {room}") }))
        }
        _ => None,
    };
    if let Some(system) = system {
        out.push(Utf8Bytes::from(format!("42[\"system\",{system}]")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_classified() {
        assert_eq!(parse("2"), Packet::EioPing);
        assert_eq!(parse("3"), Packet::EioOther);
        assert_eq!(parse("1"), Packet::Close);
        assert_eq!(parse("41"), Packet::Close);
        assert_eq!(parse(r#"40{"token":"t"}"#), Packet::Connect { nsp: "/", auth: r#"{"token":"t"}"# });
        assert_eq!(parse("40/admin,"), Packet::Connect { nsp: "/admin", auth: "" });
        assert_eq!(parse(r#"42["ping"]"#), Packet::Event { nsp: "/", ack_id: None, data: r#"["ping"]"# });
        assert_eq!(parse(r#"4217["ping"]"#), Packet::Event { nsp: "/", ack_id: Some(17), data: r#"["ping"]"# });
        assert_eq!(
            parse(r#"451-["x",{"_placeholder":true,"num":0}]"#),
            Packet::Binary { attachments: 1, ack_id: None }
        );
        assert_eq!(
            parse(r#"452-/chat,7["x",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#),
            Packet::Binary { attachments: 2, ack_id: Some(7) }
        );
        assert_eq!(parse(r#"461-3[{"_placeholder":true,"num":0}]"#), Packet::Binary { attachments: 1, ack_id: None });
        assert_eq!(parse(r#"45["x"]"#), Packet::Malformed);
        assert_eq!(parse(r#"45x-["x"]"#), Packet::Malformed);
        assert_eq!(parse("x"), Packet::Malformed);
        assert_eq!(parse(""), Packet::Malformed);
        assert_eq!(parse("4"), Packet::Malformed);
        assert_eq!(parse("4é"), Packet::Malformed);
        assert_eq!(parse("4é[]"), Packet::Malformed);
        assert_eq!(parse("é"), Packet::Malformed);
    }

    #[test]
    fn events_decode_like_native_commands() {
        let (cmd, tag) =
            decode_event(r#"["send_message",{"room":"general","content":"hi","clientId":"c","ref":"r"}]"#, Some(3))
                .unwrap();
        assert!(matches!(cmd, Command::Send { ref room, .. } if room == "general"));
        assert_eq!(tag, Tag { cmd_ref: Some("r".into()), ack_id: Some(3) });
        let (cmd, _) = decode_event(r#"["join_room","general"]"#, None).unwrap();
        assert!(matches!(cmd, Command::Join { ref room, since: None } if room == "general"));
        let err = decode_event(r#"["send_message",{"room":"general"}]"#, Some(4)).unwrap_err();
        assert_eq!(err.tag.ack_id, Some(4));
        assert!(decode_event(r#"["dance",{}]"#, None).unwrap_err().message.contains("dance"));
        assert!(decode_event("{}", None).is_err());
    }

    #[test]
    fn replies_become_acks_or_events() {
        let tag = Tag { cmd_ref: None, ack_id: Some(9) };
        let frames = reply(&Reply::new(tag, ReplyBody::Sent { id: uuid::Uuid::nil(), seq: 2 }));
        assert_eq!(frames.len(), 1);
        assert!(frames[0].as_str().starts_with(r#"439[{"type":"ack""#), "{}", frames[0].as_str());
        let frames = reply(&Reply::error(Tag::default(), "invalid_room", "bad"));
        assert!(frames[0].as_str().starts_with(r#"42["error",{"#));
        assert_eq!(frames[1].as_str(), r#"42["system",{"message":"Invalid room name."}]"#);
        assert_eq!(connect_error("/", "unauthorized").as_str(), r#"44{"message":"unauthorized"}"#);
        assert_eq!(connect_error("/admin", "x").as_str(), r#"44/admin,{"message":"x"}"#);
    }
}
