//! The native protocol's codec: JSON text frames discriminated by `type` (PROTOCOL.md).

use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use uuid::Uuid;

use super::{Command, Reply, ReplyBody, Tag};
use crate::{domain::Seq, domain::User};

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", rename_all_fields = "camelCase")]
enum ClientFrame {
    JoinRoom {
        room: String,
        since: Option<Seq>,
        #[serde(rename = "ref")]
        cmd_ref: Option<String>,
    },
    LeaveRoom {
        room: String,
        #[serde(rename = "ref")]
        cmd_ref: Option<String>,
    },
    SendMessage {
        room: String,
        content: String,
        client_id: Option<String>,
        #[serde(rename = "ref")]
        cmd_ref: Option<String>,
    },
    Typing {
        room: String,
        #[serde(rename = "ref")]
        cmd_ref: Option<String>,
    },
    MarkRead {
        room: String,
        seq: Seq,
        #[serde(rename = "ref")]
        cmd_ref: Option<String>,
    },
    Ping {
        #[serde(rename = "ref")]
        cmd_ref: Option<String>,
    },
    Auth {
        token: String,
        #[serde(rename = "ref")]
        cmd_ref: Option<String>,
    },
}

/// Just the `ref`, to answer a frame that failed to parse as a whole.
#[derive(Deserialize)]
struct RefOnly {
    #[serde(rename = "ref")]
    cmd_ref: Option<String>,
}

/// Why a frame is not a command: answered with an `invalid_payload` error carrying `cmd_ref`.
#[derive(Debug)]
pub struct DecodeError {
    pub cmd_ref: Option<String>,
    pub message: String,
}

/// Parses one text frame into a command and the tag its reply carries.
pub fn decode(text: &str) -> Result<(Command, Tag), DecodeError> {
    let frame: ClientFrame = serde_json::from_str(text).map_err(|e| DecodeError {
        cmd_ref: serde_json::from_str::<RefOnly>(text).ok().and_then(|r| r.cmd_ref).filter(|r| super::ref_fits(r)),
        message: describe(&e),
    })?;
    let (cmd, cmd_ref) = match frame {
        ClientFrame::JoinRoom { room, since, cmd_ref } => (Command::Join { room, since }, cmd_ref),
        ClientFrame::LeaveRoom { room, cmd_ref } => (Command::Leave { room }, cmd_ref),
        ClientFrame::SendMessage { room, content, client_id, cmd_ref } => {
            (Command::Send { room, content, client_id }, cmd_ref)
        }
        ClientFrame::Typing { room, cmd_ref } => (Command::Typing { room }, cmd_ref),
        ClientFrame::MarkRead { room, seq, cmd_ref } => (Command::MarkRead { room, seq }, cmd_ref),
        ClientFrame::Ping { cmd_ref } => (Command::Ping, cmd_ref),
        ClientFrame::Auth { token, cmd_ref } => (Command::Auth { token }, cmd_ref),
    };
    if cmd_ref.as_ref().is_some_and(|r| !super::ref_fits(r)) {
        return Err(DecodeError {
            cmd_ref: None,
            message: format!("ref must be at most {} characters", super::MAX_REF),
        });
    }
    Ok((cmd, Tag { cmd_ref, ack_id: None }))
}

fn describe(e: &serde_json::Error) -> String {
    if e.is_syntax() || e.is_eof() {
        "frame is not valid JSON".into()
    } else {
        // serde names the missing field, wrong type or unknown `type` variant.
        format!("invalid command: {}", e.to_string().split(" at line").next().unwrap_or_default())
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerFrame<'a> {
    Hello {
        user: UserRef<'a>,
        node: &'a str,
        /// The longest message this server takes (`chat.message_max_len`), in characters.
        #[serde(rename = "messageMaxLen")]
        message_max_len: usize,
    },
    Ack {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        cmd_ref: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Uuid>,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<Seq>,
        /// Messages after my read marker, and mentions of me among them (`mark_read`).
        #[serde(skip_serializing_if = "Option::is_none")]
        unread: Option<i64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        mentions: Option<i64>,
        /// Unix seconds when the session's new token expires (`auth`).
        #[serde(rename = "expiresAt", skip_serializing_if = "Option::is_none")]
        expires_at: Option<i64>,
    },
    Pong {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        cmd_ref: Option<&'a str>,
    },
    Error {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        cmd_ref: Option<&'a str>,
        code: &'a str,
        message: &'a str,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserRef<'a> {
    id: Uuid,
    email: &'a str,
    display_name: &'a str,
}

pub fn hello(user: &User, node: &str, message_max_len: usize) -> Utf8Bytes {
    let me = UserRef { id: user.id.0, email: &user.email, display_name: &user.display_name };
    let frame = ServerFrame::Hello { user: me, node, message_max_len };
    Utf8Bytes::from(serde_json::to_string(&frame).expect("server frames serialise: strings and numbers only"))
}

/// The reply as the native protocol's JSON object (Socket.IO acks carry the same object).
pub fn reply_json(reply: &Reply) -> String {
    let cmd_ref = reply.tag.cmd_ref.as_deref();
    let frame = match &reply.body {
        ReplyBody::Sent { id, seq } => ServerFrame::Ack {
            cmd_ref,
            id: Some(*id),
            room: None,
            seq: Some(*seq),
            unread: None,
            mentions: None,
            expires_at: None,
        },
        ReplyBody::Joined { room, seq } => ServerFrame::Ack {
            cmd_ref,
            id: None,
            room: Some(room),
            seq: Some(*seq),
            unread: None,
            mentions: None,
            expires_at: None,
        },
        ReplyBody::MarkedRead { room, seq, unread, mentions } => ServerFrame::Ack {
            cmd_ref,
            id: None,
            room: Some(room),
            seq: Some(*seq),
            unread: Some(*unread),
            mentions: Some(*mentions),
            expires_at: None,
        },
        ReplyBody::Left { room } => ServerFrame::Ack {
            cmd_ref,
            id: None,
            room: Some(room),
            seq: None,
            unread: None,
            mentions: None,
            expires_at: None,
        },
        ReplyBody::Authenticated { expires_at } => ServerFrame::Ack {
            cmd_ref,
            id: None,
            room: None,
            seq: None,
            unread: None,
            mentions: None,
            expires_at: Some(*expires_at),
        },
        ReplyBody::Pong => ServerFrame::Pong { cmd_ref },
        ReplyBody::Error { code, message } => ServerFrame::Error { cmd_ref, code, message },
    };
    serde_json::to_string(&frame).expect("server frames serialise: strings and numbers only")
}

pub fn reply(reply: &Reply) -> Utf8Bytes {
    Utf8Bytes::from(reply_json(reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_with_camel_case_fields() {
        let (cmd, tag) =
            decode(r#"{"type":"send_message","room":"general","content":"hi","clientId":"c1","ref":"r1"}"#).unwrap();
        let Command::Send { room, client_id, .. } = cmd else { panic!("not a send: {cmd:?}") };
        assert_eq!((room.as_str(), client_id.as_deref()), ("general", Some("c1")));
        assert_eq!(tag.cmd_ref.as_deref(), Some("r1"));
        let (cmd, _) = decode(r#"{"type":"join_room","room":"general","since":5}"#).unwrap();
        assert!(matches!(cmd, Command::Join { since: Some(5), .. }));
    }

    #[test]
    fn bad_frames_keep_their_ref_when_it_can_be_read() {
        let err = decode(r#"{"type":"send_message","ref":"r9"}"#).unwrap_err();
        assert_eq!(err.cmd_ref.as_deref(), Some("r9"));
        assert!(err.message.contains("room"), "{}", err.message);
        let err = decode(r#"{"type":"dance","ref":"r1"}"#).unwrap_err();
        assert_eq!(err.cmd_ref.as_deref(), Some("r1"));
        assert_eq!(decode("not json").unwrap_err().message, "frame is not valid JSON");
        assert!(decode(&format!(r#"{{"type":"ping","ref":"{}"}}"#, "x".repeat(65))).is_err());
    }

    #[test]
    fn replies_have_protocol_shapes() {
        let tag = Tag { cmd_ref: Some("r".into()), ack_id: None };
        let f = reply(&Reply::new(tag, ReplyBody::Sent { id: Uuid::nil(), seq: 3 }));
        let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
        assert_eq!((v["type"].as_str(), v["ref"].as_str(), v["seq"].as_i64()), (Some("ack"), Some("r"), Some(3)));
        let f = reply(&Reply::error(Tag::default(), "not_joined", "join first"));
        let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
        assert_eq!(v["code"], "not_joined");
        assert!(v.get("ref").is_none());
    }
}
