//! The bench's messages on the wire: [`encode_send`] writes a `send_message` whose content
//! carries the bench tag (sender, sequence, scheduled send time), and [`kind`], [`seq`] and
//! [`tag`] read a received frame with byte searches instead of a JSON parse, so that receiving
//! stays cheap next to the server it measures.

use std::sync::LazyLock;

use memchr::memmem::Finder;

use crate::clock;

/// `"content":"~B~` then sender (6 digits) `~` sequence (10) `~` scheduled send time, Unix ns
/// (19) `~`, then padding.
const MARKER: &[u8] = b"\"content\":\"~B~";
const TAG_LEN: usize = 38;
/// Smallest content that holds the tag.
pub const MIN_SIZE: usize = 3 + TAG_LEN + 2;

struct Scanner {
    message_or_type: Finder<'static>,
    seq: Finder<'static>,
    marker: Finder<'static>,
}

static SCAN: LazyLock<Scanner> = LazyLock::new(|| Scanner {
    message_or_type: Finder::new(b"\"type\":\""),
    seq: Finder::new(b"\"seq\":"),
    marker: Finder::new(MARKER),
});

/// What a server frame is, from its `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Message,
    Ack,
    Error,
    Other,
}

/// The frame's `type`: confab writes it first, so this is a prefix check; a byte search covers
/// a server that does not.
pub fn kind(p: &[u8]) -> Kind {
    let rest = if let Some(rest) = p.strip_prefix(b"{\"type\":\"") {
        rest
    } else {
        match SCAN.message_or_type.find(p) {
            Some(at) => &p[at + 8..],
            None => return Kind::Other,
        }
    };
    if rest.starts_with(b"message\"") {
        Kind::Message
    } else if rest.starts_with(b"ack\"") {
        Kind::Ack
    } else if rest.starts_with(b"error\"") {
        Kind::Error
    } else {
        Kind::Other
    }
}

/// The number after `"seq":`, if any.
pub fn seq(p: &[u8]) -> Option<u64> {
    let at = SCAN.seq.find(p)? + 6;
    let digits = p[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 { None } else { digits_value(&p[at..at + digits]) }
}

/// The bench tag of a message: who sent it, its number, and when it was due (Unix ns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    pub sender: usize,
    pub k: u64,
    pub sched_unix_ns: u64,
}

pub fn tag(p: &[u8]) -> Option<Tag> {
    let at = SCAN.marker.find(p)? + MARKER.len();
    let t = p.get(at..at + TAG_LEN)?;
    if t[6] != b'~' || t[17] != b'~' || t[37] != b'~' {
        return None;
    }
    Some(Tag {
        sender: usize::try_from(digits_value(&t[..6])?).ok()?,
        k: digits_value(&t[7..17])?,
        sched_unix_ns: digits_value(&t[18..37])?,
    })
}

fn digits_value(b: &[u8]) -> Option<u64> {
    b.iter().try_fold(0u64, |v, &c| {
        let d = c.wrapping_sub(b'0');
        (d <= 9).then(|| v * 10 + u64::from(d))
    })
}

/// Writes a `send_message` frame's JSON for sender `id`, message `k`, due at `sched_ns` (clock
/// time; the tag carries it as Unix time); with
/// `client_id`, the frame carries a UUID-sized `clientId` unique to the sender and message, as
/// the web client's sends (and every resend after a reconnect) do.
pub fn encode_send(out: &mut Vec<u8>, room: &str, id: usize, k: u64, sched_ns: u64, size: usize, client_id: bool) {
    use std::io::Write as _;
    out.clear();
    out.extend_from_slice(b"{\"type\":\"send_message\",");
    if client_id {
        write!(out, "\"clientId\":\"{id:08x}-0000-4000-8000-{k:012x}\",").expect("writing to a Vec cannot fail");
    }
    out.extend_from_slice(b"\"room\":\"");
    out.extend_from_slice(room.as_bytes());
    out.extend_from_slice(b"\",\"content\":\"~B~");
    write!(out, "{id:06}~{k:010}~{:019}~", clock::to_unix(sched_ns)).expect("writing to a Vec cannot fail");
    out.resize(out.len() + size.saturating_sub(3 + TAG_LEN), b'x');
    out.extend_from_slice(b"\"}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_frame_is_scanned_without_parsing() {
        let mut content = Vec::new();
        encode_send(&mut content, "r1", 42, 7, 1_234_567_890, 100, false);
        let v: serde_json::Value = serde_json::from_slice(&content).expect("the send frame is JSON");
        assert!(v.get("clientId").is_none(), "{v}");
        encode_send(&mut content, "r1", 42, 7, 1_234_567_890, 100, true);
        let v: serde_json::Value = serde_json::from_slice(&content).expect("the send frame is JSON");
        assert_eq!(v["clientId"], "0000002a-0000-4000-8000-000000000007");
        let text = v["content"].as_str().unwrap();
        assert_eq!(text.len(), 100);
        let frame = format!(
            r#"{{"type":"message","id":"x","room":"r1","seq":981,"senderId":"y","senderEmail":"a@b.c","content":"{text}","createdAt":"z"}}"#
        );
        assert_eq!(kind(frame.as_bytes()), Kind::Message);
        assert_eq!(seq(frame.as_bytes()), Some(981));
        let sched_unix_ns = clock::to_unix(1_234_567_890);
        assert_eq!(tag(frame.as_bytes()), Some(Tag { sender: 42, k: 7, sched_unix_ns }));
        assert_eq!(clock::from_unix(sched_unix_ns), 1_234_567_890);
        assert!(text.starts_with(&format!("~B~000042~0000000007~{sched_unix_ns:019}~")), "{text}");
        assert_eq!(kind(br#"{"type":"ack","seq":3}"#), Kind::Ack);
        assert_eq!(kind(br#"{"room":"r","type":"error"}"#), Kind::Error);
        assert_eq!(kind(br#"{"type":"system","room":"r"}"#), Kind::Other);
    }
}
