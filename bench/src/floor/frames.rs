//! WebSocket by hand, as much as the floor needs: the `Sec-WebSocket-Key` of the upgrade
//! request, masked client frames parsed in place, and server frames built once to be shared by
//! every recipient.

use anyhow::{Context as _, bail};
use bytes::Bytes;

/// Largest client frame, as confab's `ws.max_frame` default.
const MAX_FRAME: usize = 64 * 1024;

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

pub(super) fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// The `Sec-WebSocket-Key` of an upgrade request head.
pub(super) fn upgrade_key(head: &[u8]) -> Option<String> {
    let head = std::str::from_utf8(head).ok()?;
    if !head.starts_with("GET ") {
        return None;
    }
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim().eq_ignore_ascii_case("sec-websocket-key").then(|| value.trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::{OP_TEXT, encode_frame};

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
}
