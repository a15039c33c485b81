//! The server's events as the native protocol writes them (`type`-tagged JSON objects, see
//! PROTOCOL.md), each encoded once into an [`Encoded`].

use std::sync::Arc;

use serde::Serialize;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use uuid::Uuid;

use super::frames::{Encoded, Event, EventKind};
use crate::{
    domain::{Message, MessageKind, ReadMarker},
    domain::{RoomName, Seq},
};

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case", rename_all_fields = "camelCase")]
enum Wire<'a> {
    Message(&'a Message),
    System {
        room: &'a str,
        event: &'a str,
        user_id: Uuid,
        name: &'a str,
        message: String,
    },
    Typing {
        room: &'a str,
        user_id: Uuid,
        name: &'a str,
    },
    Removed {
        room: &'a str,
        user_id: Uuid,
        reason: &'a str,
    },
    Muted {
        room: &'a str,
        user_id: Uuid,
        until: Option<String>,
    },
    MessageDeleted {
        room: &'a str,
        seq: Seq,
        id: Uuid,
        deleted_by: Uuid,
        deleted_at: String,
    },
    MessageEdited {
        room: &'a str,
        seq: Seq,
        id: Uuid,
        content: &'a str,
        edited_at: String,
    },
    Read {
        room: &'a str,
        seq: Seq,
        unread: i64,
        mentions: i64,
    },
    Reaction {
        room: &'a str,
        seq: Seq,
        id: Uuid,
        emoji: &'a str,
        user_id: Uuid,
        name: &'a str,
        added: bool,
        count: i64,
    },
}

/// Encodes `wire`; `email`, if any, goes to Socket.IO frames only, as member `key`.
fn encode(kind: EventKind, wire: &Wire<'_>, email: Option<(&str, &str)>) -> Arc<Encoded> {
    let json = serde_json::to_string(wire).expect("event frames serialise: plain strings and numbers");
    let compat = match email {
        Some((key, email)) => {
            let value = serde_json::to_string(email).expect("a string serialises");
            format!("\"{key}\":{value}").into_boxed_str()
        }
        None => Box::from(""),
    };
    Encoded::with_compat(kind, Utf8Bytes::from(json), compat)
}

/// The event for a row of a room's seq stream: `message`, `message_edited` for an edit,
/// `message_deleted` for a deletion, or `reaction` for a reaction put on or taken back.
pub fn message(room: &RoomName, msg: &Message) -> Event {
    if msg.kind == MessageKind::Edit {
        let wire = Wire::MessageEdited {
            room: room.as_str(),
            seq: msg.seq,
            id: msg.target_id.unwrap_or_default(),
            content: &msg.content,
            edited_at: msg.created_at.to_rfc3339(),
        };
        return Event { room: room.clone(), frame: encode(EventKind::Edited { seq: msg.seq }, &wire, None) };
    }
    if msg.kind == MessageKind::Delete {
        let wire = Wire::MessageDeleted {
            room: room.as_str(),
            seq: msg.seq,
            id: msg.target_id.unwrap_or_default(),
            deleted_by: msg.sender_id,
            deleted_at: msg.created_at.to_rfc3339(),
        };
        return Event { room: room.clone(), frame: encode(EventKind::Deleted { seq: msg.seq }, &wire, None) };
    }
    if matches!(msg.kind, MessageKind::React | MessageKind::Unreact) {
        let wire = Wire::Reaction {
            room: room.as_str(),
            seq: msg.seq,
            id: msg.target_id.unwrap_or_default(),
            emoji: &msg.content,
            user_id: msg.sender_id,
            name: &msg.sender_name,
            added: msg.kind == MessageKind::React,
            count: msg.tally.unwrap_or(0),
        };
        return Event { room: room.clone(), frame: encode(EventKind::Reacted { seq: msg.seq }, &wire, None) };
    }
    let kind = EventKind::Message { seq: msg.seq };
    Event { room: room.clone(), frame: encode(kind, &Wire::Message(msg), Some(("senderEmail", &msg.sender_email))) }
}

/// Whether a member joined or left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    Join,
    Leave,
}

/// Who an event is about, as rooms see them.
#[derive(Clone, Copy, Debug)]
pub struct Who<'a> {
    pub id: Uuid,
    pub name: &'a str,
    /// Shown to Socket.IO clients only.
    pub email: &'a str,
}

/// The `system` event the original platform sent: `"<name> joined <room>"`.
pub fn system(room: &RoomName, presence: Presence, origin: u64, who: Who<'_>) -> Event {
    let (event, verb) = match presence {
        Presence::Join => ("join", "joined"),
        Presence::Leave => ("leave", "left"),
    };
    let message = format!("{} {verb} {room}", who.name);
    let wire = Wire::System { room: room.as_str(), event, user_id: who.id, name: who.name, message };
    Event { room: room.clone(), frame: encode(EventKind::System { origin }, &wire, Some(("email", who.email))) }
}

/// The `typing` event.
pub fn typing(room: &RoomName, who: Who<'_>) -> Event {
    let wire = Wire::Typing { room: room.as_str(), user_id: who.id, name: who.name };
    Event { room: room.clone(), frame: encode(EventKind::Typing { user: who.id }, &wire, Some(("email", who.email))) }
}

/// The `muted` event: `user` may not send in `room` until `until` (Unix seconds; 0: unmuted).
pub fn muted(room: &RoomName, user_id: Uuid, until: i64) -> Event {
    let at = (until > 0).then(|| chrono::DateTime::from_timestamp(until, 0).unwrap_or_default().to_rfc3339());
    let wire = Wire::Muted { room: room.as_str(), user_id, until: at };
    Event { room: room.clone(), frame: encode(EventKind::Muted { user: user_id, until }, &wire, None) }
}

/// The `read` event: `user` has read `room` up to `marker` (told to their other sessions).
pub fn read(room: &RoomName, user: Uuid, origin: u64, marker: ReadMarker) -> Event {
    let wire =
        Wire::Read { room: room.as_str(), seq: marker.last_read_seq, unread: marker.unread, mentions: marker.mentions };
    Event { room: room.clone(), frame: encode(EventKind::Read { user, origin }, &wire, None) }
}

/// The `removed` event: `user` is no longer a member of `room`, for `reason` (`kicked`,
/// `left`).
pub fn removed(room: &RoomName, user_id: Uuid, reason: &str) -> Event {
    let wire = Wire::Removed { room: room.as_str(), user_id, reason };
    Event { room: room.clone(), frame: encode(EventKind::Removed { user: user_id }, &wire, None) }
}

#[derive(Serialize)]
#[serde(tag = "type", rename = "presence")]
struct PresenceWire<'a> {
    room: &'a str,
    online: Vec<Uuid>,
    offline: Vec<Uuid>,
}

/// The `presence` event for `room`: who came online and who went offline (sorted).
pub fn presence(room: &RoomName, mut online: Vec<Uuid>, mut offline: Vec<Uuid>) -> Arc<Encoded> {
    online.sort_unstable();
    offline.sort_unstable();
    let wire = PresenceWire { room: room.as_str(), online, offline };
    let json = serde_json::to_string(&wire).expect("presence frames serialise: strings only");
    Encoded::new(EventKind::Presence, Utf8Bytes::from(json))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_message_frame_is_the_protocol_shape_and_socketio_wraps_it() {
        let room = RoomName::parse("general").unwrap();
        let msg = Message {
            id: Uuid::nil(),
            room: "general".into(),
            seq: 7,
            sender_id: Uuid::nil(),
            sender_email: "a@b.co".into(),
            sender_name: "Ann".into(),
            content: "hi \"there\"".into(),
            created_at: chrono::DateTime::from_timestamp(0, 0).unwrap(),
            client_id: None,
            kind: MessageKind::Message,
            target_id: None,
            deleted_at: None,
            edited_at: None,
            tally: None,
            mentions: crate::domain::Mentions::default(),
        };
        let ev = message(&room, &msg);
        let v: serde_json::Value = serde_json::from_str(ev.frame.native.as_str()).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["senderName"], "Ann");
        assert!(v.get("senderEmail").is_none(), "rooms see names, not addresses");
        assert_eq!(v["content"], "hi \"there\"");
        assert_eq!(v["createdAt"], "1970-01-01T00:00:00+00:00", "the same string as REST history");
        assert!(v.get("clientId").is_none());
        let sio = ev.frame.socketio().as_str();
        assert!(sio.starts_with("42[\"message\",{") && sio.ends_with("}]"), "{sio}");
        let arr: serde_json::Value = serde_json::from_str(&sio[2..]).unwrap();
        assert_eq!(arr[1]["seq"], 7);
        assert!(v.get("deletedAt").is_none());
        // Its deletion is the next event of the stream.
        let gone = Message { kind: MessageKind::Delete, target_id: Some(msg.id), seq: 8, ..msg.clone() };
        let ev = message(&room, &gone);
        assert_eq!(ev.frame.kind, EventKind::Deleted { seq: 8 });
        let v: serde_json::Value = serde_json::from_str(ev.frame.native.as_str()).unwrap();
        assert_eq!((&v["type"], &v["seq"], &v["id"]), (&json!("message_deleted"), &json!(8), &json!(msg.id)));
        assert!(ev.frame.socketio().as_str().starts_with("42[\"message_deleted\",{"));
        let fixed =
            Message { kind: MessageKind::Edit, target_id: Some(msg.id), seq: 9, content: "hi!".into(), ..msg.clone() };
        let ev = message(&room, &fixed);
        assert_eq!(ev.frame.kind, EventKind::Edited { seq: 9 });
        let v: serde_json::Value = serde_json::from_str(ev.frame.native.as_str()).unwrap();
        assert_eq!((&v["type"], &v["id"], &v["content"]), (&json!("message_edited"), &json!(msg.id), &json!("hi!")));
        let liked = Message {
            kind: MessageKind::React,
            target_id: Some(msg.id),
            seq: 10,
            content: "👍".into(),
            tally: Some(2),
            ..msg.clone()
        };
        let ev = message(&room, &liked);
        assert_eq!(ev.frame.kind, EventKind::Reacted { seq: 10 });
        let v: serde_json::Value = serde_json::from_str(ev.frame.native.as_str()).unwrap();
        assert_eq!(
            v,
            json!({ "type": "reaction", "room": "general", "seq": 10, "id": msg.id, "emoji": "👍",
                    "userId": msg.sender_id, "name": "Ann", "added": true, "count": 2 })
        );
        assert_eq!(arr[1]["senderEmail"], "a@b.co", "the original platform's clients show addresses");
        assert_eq!(arr[1]["senderName"], "Ann");
    }

    #[test]
    fn system_frames_carry_the_original_message() {
        let room = RoomName::parse("general").unwrap();
        let ev = system(&room, Presence::Join, 1, Who { id: Uuid::nil(), name: "Ann \"A\"", email: "a@b.co" });
        let v: serde_json::Value = serde_json::from_str(ev.frame.native.as_str()).unwrap();
        assert_eq!(v["message"], "Ann \"A\" joined general");
        assert_eq!(v["name"], "Ann \"A\"");
        assert_eq!(v["event"], "join");
        assert_eq!(v["userId"], Uuid::nil().to_string());
        assert!(v.get("email").is_none());
        let sio: serde_json::Value = serde_json::from_str(&ev.frame.socketio().as_str()[2..]).unwrap();
        assert_eq!((&sio[1]["email"], &sio[1]["message"]), (&json!("a@b.co"), &v["message"]));
        let plain = removed(&room, Uuid::nil(), "kicked");
        let sio: serde_json::Value = serde_json::from_str(&plain.frame.socketio().as_str()[2..]).unwrap();
        assert_eq!(sio[1]["reason"], "kicked", "events without compatibility members are wrapped as they are");
    }
}
