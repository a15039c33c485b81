//! A deliberately small WebSocket client: the upgrade handshake, frame parsing in place, and
//! masked client frames.
//!
//! The generator shares the machine with the server it measures, so each received frame must
//! cost as little as possible: frames are parsed straight out of one reusable read buffer (no
//! per-frame allocation, no UTF-8 validation, no message enum) and handed to the caller as byte
//! slices. Server frames are never masked or fragmented by confab (tungstenite writes whole
//! messages); a fragmented frame is reported as an error rather than reassembled.
//!
//! Reads ask the kernel for the time the data arrived in the socket (`SO_TIMESTAMPNS`): the bench
//! shares two cores with the server, and when it is busy its tasks can read a delivery
//! milliseconds after it arrived. Latency is taken at arrival, so that the bench's own queueing
//! is not counted as the server's; how long the bench took to read is reported beside it.
//!
//! Senders write through [`SharedWriter`]: a non-blocking duplicate of the socket that the pacer
//! thread writes to directly, so sends leave on schedule without a trip through the runtime.

use std::{
    io::{self, IoSliceMut, Write as _},
    net::TcpStream as StdTcpStream,
    ops::Range,
    os::fd::{AsRawFd as _, RawFd},
    sync::Mutex,
};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use nix::sys::{
    socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt::ReceiveTimestampns},
    time::TimeSpec,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, Interest},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest frame accepted from the server (confab's own `ws.max_frame` default is 64 KiB).
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// One client connection: the socket and its read buffer.
pub struct WsConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    mask: Masker,
    /// When the data of the last [`Self::fill`] arrived, as the kernel saw it (Unix ns).
    arrived: Option<u64>,
    /// Room for the arrival time's control message, kept so that a read allocates nothing.
    control: Vec<u8>,
}

/// A complete frame found in the read buffer: its opcode and where its payload is.
#[derive(Clone, Debug)]
pub struct FrameRef {
    pub opcode: u8,
    pub payload: Range<usize>,
}

impl WsConn {
    /// Connects to `host:port`, upgrades `path` with a bearer token, and returns the connection
    /// with whatever frames arrived together with the 101 left in its buffer.
    pub async fn connect(addr: &str, path: &str, token: &str, buf_size: usize) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        // Without it reads carry no arrival time, and latency falls back to the time of the read.
        let _ = setsockopt(&stream, ReceiveTimestampns, &true);
        let key_bytes: [u8; 16] = rand::random();
        let key = base64::engine::general_purpose::STANDARD.encode(key_bytes);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        let mut conn = Self {
            stream,
            buf: vec![0; buf_size.max(1024)],
            start: 0,
            end: 0,
            mask: Masker::new(),
            arrived: None,
            control: nix::cmsg_space!(TimeSpec),
        };
        conn.stream.write_all(request.as_bytes()).await?;
        let head_len = loop {
            if let Some(pos) = memchr::memmem::find(&conn.buf[..conn.end], b"\r\n\r\n") {
                break pos + 4;
            }
            if conn.end == conn.buf.len() {
                bail!("upgrade response headers larger than {} bytes", conn.buf.len());
            }
            let n = conn.stream.read(&mut conn.buf[conn.end..]).await?;
            if n == 0 {
                bail!("connection closed during the WebSocket upgrade");
            }
            conn.end += n;
        };
        let head = String::from_utf8_lossy(&conn.buf[..head_len]).into_owned();
        let status = head.lines().next().unwrap_or_default();
        if !status.starts_with("HTTP/1.1 101") {
            // Refusals (401, 429, 503) carry a JSON body; show what fits in the buffer.
            let body = String::from_utf8_lossy(&conn.buf[head_len..conn.end]);
            bail!("WebSocket upgrade refused: {status} {}", body.trim());
        }
        let accept = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim().eq_ignore_ascii_case("sec-websocket-accept").then(|| value.trim().to_owned())
        });
        if accept.as_deref() != Some(derive_accept_key(key.as_bytes()).as_str()) {
            bail!("WebSocket upgrade answered with a wrong or missing Sec-WebSocket-Accept");
        }
        conn.start = head_len;
        Ok(conn)
    }

    /// The next complete frame already in the buffer, if any; [`Self::consume`] it after use.
    pub fn next_frame(&self) -> anyhow::Result<Option<FrameRef>> {
        let data = &self.buf[self.start..self.end];
        if data.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (data[0], data[1]);
        if b0 & 0x80 == 0 || b0 & 0x0f == OP_CONTINUATION {
            bail!("fragmented WebSocket frame from the server (unsupported by the bench)");
        }
        if b1 & 0x80 != 0 {
            bail!("masked WebSocket frame from the server");
        }
        let (header, len) = match b1 & 0x7f {
            126 if data.len() >= 4 => (4, usize::from(u16::from_be_bytes([data[2], data[3]]))),
            127 if data.len() >= 10 => {
                let len = u64::from_be_bytes(data[2..10].try_into().expect("eight bytes"));
                (10, usize::try_from(len).unwrap_or(usize::MAX))
            }
            126 | 127 => return Ok(None),
            n => (2, usize::from(n)),
        };
        if len > MAX_FRAME {
            bail!("WebSocket frame of {len} bytes from the server");
        }
        if data.len() < header + len {
            return Ok(None);
        }
        let at = self.start + header;
        Ok(Some(FrameRef { opcode: b0 & 0x0f, payload: at..at + len }))
    }

    /// The bytes of a frame returned by [`Self::next_frame`].
    pub fn payload(&self, frame: &FrameRef) -> &[u8] {
        &self.buf[frame.payload.clone()]
    }

    /// Marks `frame` as handled.
    pub fn consume(&mut self, frame: &FrameRef) {
        self.start = frame.payload.end;
    }

    /// When the bytes of the last [`Self::fill`] arrived in the socket, as Unix ns (the arrival of
    /// the last segment the read took, so never earlier than any frame in it), if the kernel said.
    pub fn arrived(&self) -> Option<u64> {
        self.arrived
    }

    /// Reads more bytes from the socket (after the buffered frames were consumed). Returns false
    /// on end of stream.
    pub async fn fill(&mut self) -> anyhow::Result<bool> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            // A frame larger than the buffer: grow to fit it (rare; bounded by MAX_FRAME).
            let len = self.buf.len() * 2;
            self.buf.resize(len, 0);
        }
        let Self { stream, buf, end, control, .. } = self;
        let fd = stream.as_raw_fd();
        let (n, arrived) = stream.async_io(Interest::READABLE, || recv_stamped(fd, &mut buf[*end..], control)).await?;
        self.end += n;
        self.arrived = arrived;
        Ok(n > 0)
    }

    /// Waits for the next text frame, answering pings on the way. `Ok(None)`: the server closed.
    pub async fn next_text(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        loop {
            while let Some(frame) = self.next_frame()? {
                self.consume(&frame);
                match frame.opcode {
                    OP_TEXT => return Ok(Some(self.payload(&frame).to_vec())),
                    OP_CLOSE => return Ok(None),
                    OP_PING => {
                        let pong = self.payload(&frame).to_vec();
                        self.send(OP_PONG, &pong).await?;
                    }
                    _ => {}
                }
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// Writes one masked frame (setup commands and pongs; the hot send path uses SharedWriter).
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        encode_frame(&mut out, opcode, payload, self.mask.next());
        self.stream.write_all(&out).await
    }

    /// Appends a masked frame to `out` (to write several with one [`Self::write_all`]).
    pub fn encode(&mut self, out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
        encode_frame(out, opcode, payload, self.mask.next());
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Splits off a non-blocking duplicate of the socket for the pacer thread. The connection keeps
    /// reading; from now on every write (pongs included) must go through the returned writer so
    /// that frames never interleave.
    pub fn share_writer(self) -> anyhow::Result<(Self, SharedWriter)> {
        let Self { stream, buf, start, end, mask, arrived, control } = self;
        let std = stream.into_std()?;
        let dup = std.try_clone()?; // shares the file description, so it is non-blocking too
        let stream = TcpStream::from_std(std)?;
        let writer = SharedWriter { inner: Mutex::new(WriterInner { stream: dup, pending: Vec::new(), mask }) };
        Ok((Self { stream, buf, start, end, mask: Masker::new(), arrived, control }, writer))
    }
}

/// One non-blocking read into `buf`, with the arrival time the kernel attached (Unix ns).
fn recv_stamped(fd: RawFd, buf: &mut [u8], control: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(control), MsgFlags::MSG_DONTWAIT).map_err(io::Error::from)?;
    let arrived = msg.cmsgs().ok().into_iter().flatten().find_map(|c| match c {
        ControlMessageOwned::ScmTimestampns(t) => {
            Some(u64::try_from(t.tv_sec()).ok()? * 1_000_000_000 + u64::try_from(t.tv_nsec()).ok()?)
        }
        _ => None,
    });
    Ok((msg.bytes, arrived))
}

/// Appends a client frame (always masked, RFC 6455 §5.3) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    const MASKED: u8 = 0x80;
    out.push(0x80 | opcode);
    // Lengths up to 125 fit in the second byte; 126 and 127 announce a 16- or 64-bit length.
    match (u8::try_from(payload.len()), u16::try_from(payload.len())) {
        (Ok(n), _) if n < 126 => out.push(MASKED | n),
        (_, Ok(n)) => {
            out.push(MASKED | 0x7e);
            out.extend_from_slice(&n.to_be_bytes());
        }
        _ => {
            out.push(MASKED | 0x7f);
            out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    let at = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[at..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Masking keys: xorshift, seeded randomly per connection. Cheap, and unpredictable enough for a
/// mask whose only job is to stop intermediaries from misreading frames.
struct Masker(u32);

impl Masker {
    fn new() -> Self {
        Self(rand::random::<u32>() | 1)
    }

    fn next(&mut self) -> [u8; 4] {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x.to_ne_bytes()
    }
}

/// The write side of a sender's connection, used from the pacer thread (and for pongs from the
/// connection's reader). Writes never block: what the socket does not take now stays pending and
/// goes out on the next call, in order.
pub struct SharedWriter {
    inner: Mutex<WriterInner>,
}

struct WriterInner {
    stream: StdTcpStream,
    pending: Vec<u8>,
    mask: Masker,
}

impl SharedWriter {
    /// Queues one frame and writes as much as the socket accepts. Returns the bytes still pending.
    pub fn send(&self, opcode: u8, payload: &[u8]) -> io::Result<usize> {
        let mut inner = self.inner.lock().expect("writer lock is never poisoned: no panics inside");
        let WriterInner { stream, pending, mask } = &mut *inner;
        encode_frame(pending, opcode, payload, mask.next());
        write_pending(stream, pending)
    }

    /// Writes what is pending. Returns the bytes still pending.
    pub fn flush(&self) -> io::Result<usize> {
        let mut inner = self.inner.lock().expect("writer lock is never poisoned: no panics inside");
        let WriterInner { stream, pending, .. } = &mut *inner;
        write_pending(stream, pending)
    }
}

fn write_pending(stream: &mut StdTcpStream, pending: &mut Vec<u8>) -> io::Result<usize> {
    let mut written = 0;
    while written < pending.len() {
        match stream.write(&pending[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    pending.drain(..written);
    Ok(pending.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_masked_with_the_right_length_encoding() {
        for len in [0, 125, 126, 300, 70_000] {
            let payload = vec![b'a'; len];
            let mut out = Vec::new();
            encode_frame(&mut out, OP_TEXT, &payload, [1, 2, 3, 4]);
            let header = match len {
                0..=125 => 2,
                126..=65_535 => 4,
                _ => 10,
            };
            assert_eq!(out.len(), header + 4 + len);
            assert_eq!(out[0], 0x81);
            assert_eq!(out[1] & 0x80, 0x80);
            let unmasked: Vec<u8> =
                out[header + 4..].iter().enumerate().map(|(i, b)| b ^ [1, 2, 3, 4][i & 3]).collect();
            assert_eq!(unmasked, payload);
        }
    }
}
