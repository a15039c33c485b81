//! The payload of an event on a Redis channel: routing fields a node reads without parsing
//! JSON, then the frames exactly as the publishing node encoded them, so no node encodes an
//! event twice.

use uuid::Uuid;

use crate::{
    domain::RoomName,
    protocol::{Encoded, Event, EventKind, Utf8Bytes},
};

/// `<instance hex>|<kind>|<seq, origin session, user, user:until or user:origin:room>|<compat
/// length>|<compat members><native frame>`.
pub(super) fn encode(instance: u64, e: &Event) -> Vec<u8> {
    let (kind, arg) = match e.frame.kind {
        EventKind::Message { seq } => ('m', seq.to_string()),
        EventKind::Deleted { seq } => ('d', seq.to_string()),
        EventKind::Edited { seq } => ('e', seq.to_string()),
        EventKind::Reacted { seq } => ('x', seq.to_string()),
        EventKind::System { origin } => ('s', origin.to_string()),
        EventKind::Typing { user } => ('t', user.to_string()),
        EventKind::Removed { user } => ('r', user.to_string()),
        EventKind::Muted { user, until } => ('u', format!("{user}:{until}")),
        EventKind::Read { user, origin } => ('R', format!("{user}:{origin}:{}", e.room)),
        // Made by each node for its own members; never published, but encodable all the same.
        EventKind::Presence => ('p', String::new()),
    };
    let frame = e.frame.native.as_bytes();
    let compat = e.frame.compat.as_bytes();
    let mut out = Vec::with_capacity(frame.len() + compat.len() + 72);
    out.extend_from_slice(format!("{instance:016x}|{kind}|{arg}|{}|", compat.len()).as_bytes());
    out.extend_from_slice(compat);
    out.extend_from_slice(frame);
    out
}

/// The event in a payload, unless it is malformed or our own. `room`: the room of the
/// channel it came on (`None`: the users channel, whose events name their room).
pub(super) fn decode(instance: u64, room: Option<RoomName>, payload: &[u8]) -> Option<Event> {
    let mut parts = payload.splitn(5, |b| *b == b'|');
    let from = u64::from_str_radix(std::str::from_utf8(parts.next()?).ok()?, 16).ok()?;
    if from == instance {
        return None;
    }
    let kind = parts.next()?;
    let arg = std::str::from_utf8(parts.next()?).ok()?;
    let mut room = room;
    let kind = match kind {
        b"R" => {
            let mut parts = arg.splitn(3, ':');
            let user = parts.next()?.parse::<Uuid>().ok()?;
            let origin = parts.next()?.parse().ok()?;
            room = Some(RoomName::parse(parts.next()?).ok()?);
            EventKind::Read { user, origin }
        }
        _ if room.is_none() => return None,
        b"m" => EventKind::Message { seq: arg.parse().ok()? },
        b"d" => EventKind::Deleted { seq: arg.parse().ok()? },
        b"e" => EventKind::Edited { seq: arg.parse().ok()? },
        b"x" => EventKind::Reacted { seq: arg.parse().ok()? },
        b"p" => EventKind::Presence,
        b"s" => EventKind::System { origin: arg.parse().ok()? },
        b"t" => EventKind::Typing { user: arg.parse::<Uuid>().ok()? },
        b"r" => EventKind::Removed { user: arg.parse::<Uuid>().ok()? },
        b"u" => {
            let (user, until) = arg.split_once(':')?;
            EventKind::Muted { user: user.parse::<Uuid>().ok()?, until: until.parse().ok()? }
        }
        _ => return None,
    };
    let compat_len: usize = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let rest = parts.next()?;
    if compat_len > rest.len() {
        return None;
    }
    let (compat, frame) = rest.split_at(compat_len);
    let compat = Box::from(std::str::from_utf8(compat).ok()?);
    let frame = Utf8Bytes::try_from(bytes::Bytes::copy_from_slice(frame)).ok()?;
    Some(Event { room: room?, frame: Encoded::with_compat(kind, frame, compat) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_own_events_are_skipped() {
        let room = RoomName::parse("general").unwrap();
        let frame = Encoded::with_compat(
            EventKind::Message { seq: 42 },
            Utf8Bytes::from_static(r#"{"type":"message","a":"|"}"#),
            Box::from(r#""senderEmail":"a|b@c.de""#),
        );
        let event = Event { room: room.clone(), frame };
        let payload = encode(7, &event);
        let back = decode(8, Some(room.clone()), &payload).expect("decodes");
        assert_eq!(back.frame.kind, EventKind::Message { seq: 42 });
        assert_eq!(back.frame.native.as_str(), r#"{"type":"message","a":"|"}"#);
        assert_eq!(&*back.frame.compat, r#""senderEmail":"a|b@c.de""#);
        assert!(decode(7, Some(room.clone()), &payload).is_none(), "own event");
        assert!(decode(8, Some(room.clone()), b"garbage").is_none());
        assert!(decode(8, None, &payload).is_none(), "room events never come on the users channel");
        // Every kind carries its routing argument across.
        let user = Uuid::new_v4();
        for kind in [
            EventKind::System { origin: 9 },
            EventKind::Deleted { seq: 43 },
            EventKind::Edited { seq: 44 },
            EventKind::Reacted { seq: 45 },
            EventKind::Typing { user },
            EventKind::Removed { user },
            EventKind::Muted { user, until: 1_800_000_000 },
        ] {
            let event = Event { room: room.clone(), frame: Encoded::new(kind, Utf8Bytes::from_static("{}")) };
            assert_eq!(decode(8, Some(room.clone()), &encode(7, &event)).expect("decodes").frame.kind, kind);
        }
        // A user's event names its room itself, colons and all.
        let dm = RoomName::parse("dm:0123abcd").unwrap();
        let kind = EventKind::Read { user, origin: 77 };
        let event = Event { room: dm.clone(), frame: Encoded::new(kind, Utf8Bytes::from_static("{}")) };
        let back = decode(8, None, &encode(7, &event)).expect("decodes");
        assert_eq!((back.frame.kind, back.room), (kind, dm));
    }
}
