//! The upgrade to WebSocket, done here rather than with poem's extractor so that the two
//! directions part ways: tungstenite reads client frames, and everything sent goes through the
//! session's outbox. Also the end of a connection: its close frame, and a FIN that loses nothing.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use poem::{
    Request, Response, Upgraded,
    http::{StatusCode, header},
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf, ReadHalf};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        handshake::derive_accept_key,
        protocol::{CloseFrame, Role, WebSocketConfig},
    },
};

use crate::{
    chat::Outbox,
    config::WsConfig,
    http::{AppState, error},
    protocol::{Codec, Utf8Bytes},
};

/// Answers 101 and runs `session` on the upgraded connection, tracked for shutdown.
pub(super) fn upgrade<F, Fut>(req: &Request, state: &AppState, codec: Codec, session: F) -> Response
where
    F: FnOnce(Box<Socket>, AppState) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).map(|k| derive_accept_key(k.as_bytes())) else {
        return error::from_status(StatusCode::BAD_REQUEST, None);
    };
    let Ok(on_upgrade) = req.take_upgrade() else {
        return error::from_status(StatusCode::BAD_REQUEST, Some("connection cannot be upgraded".into()));
    };
    let state = state.clone();
    let peer = crate::http::client_ip(req, &state.trusted_proxies);
    let sessions = state.sessions.clone();
    // Two tasks: this one waits for the upgrade, then hands the connection to a task that runs
    // only the session. A task's future is as large as its largest state, and every idle
    // connection holds its session's for hours: it should not also hold room for the upgrade.
    sessions.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let (read, write) = tokio::io::split(upgraded);
        let out = Outbox::new(write, codec, state.config.ws.outbound_queue);
        let duplex = Duplex { read, out: Arc::clone(&out) };
        let ws = WebSocketStream::from_raw_socket(duplex, Role::Server, Some(ws_config(&state.config.ws))).await;
        let tracker = state.sessions.clone();
        tracker.spawn(session(Box::new(Socket { ws, out, peer }), state));
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, key)
        .finish()
}

/// Small read buffers for many mostly idle connections. tungstenite writes only control frames
/// (pongs, close replies), straight into the outbox.
fn ws_config(ws: &WsConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(256)
        .write_buffer_size(0)
        .max_message_size(Some(ws.max_frame))
        .max_frame_size(Some(ws.max_frame))
}

/// An upgraded connection: frames come in through tungstenite and go out through the outbox,
/// which the chat core also writes to directly.
pub(super) struct Socket {
    pub ws: WebSocketStream<Duplex>,
    pub out: Arc<Outbox>,
    /// The client's address, for `confab user sessions`.
    pub peer: std::net::IpAddr,
}

impl Socket {
    /// Writes a text frame and waits until the socket has taken it (handshakes).
    pub async fn send_now(&mut self, payload: Utf8Bytes) -> Option<()> {
        self.out.send_text(payload).then_some(())?;
        self.out.drained().await.ok()
    }
}

/// The connection as tungstenite sees it: it reads the socket, and what it writes (pongs,
/// close frames) joins the outbox, in order with every other frame.
pub(super) struct Duplex {
    read: ReadHalf<Upgraded>,
    out: Arc<Outbox>,
}

impl AsyncRead for Duplex {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Duplex {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(if self.out.send_raw(&Bytes::copy_from_slice(buf)) {
            Ok(buf.len())
        } else {
            Err(io::ErrorKind::BrokenPipe.into())
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Closes a connection that never became a session.
pub(super) async fn abandon(mut socket: Box<Socket>) {
    socket.out.begin_close();
    Box::pin(finish(&mut socket.ws, &socket.out, None, CLOSE_LINGER)).await;
    socket.out.close();
}

/// How long a closing connection may take to take its close frame.
pub(super) const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// How long a consumer cut off as too slow has to read what was already on its way and then
/// its 1013 close. Its queue is gone by then, so this holds only the descriptor and the
/// kernel's buffers (and the per-address connection cap bounds how many).
pub(super) const SLOW_CLOSE_LINGER: Duration = Duration::from_secs(5);

/// Sends the close frame (or answers the client's) behind whatever is still queued, waiting
/// `linger` at most for the peer to take it, then ends the TCP connection without destroying
/// what is still on its way to the peer: FIN, then read and discard whatever the peer still
/// sends (the rest of an oversized frame, its close reply) until it hangs up, for at most a
/// second. Dropping a socket with unread input makes the kernel answer with a reset, and a
/// peer that gets one loses the close frame and anything else it has not read yet.
pub(super) async fn finish(
    ws: &mut WebSocketStream<Duplex>,
    out: &Outbox,
    close: Option<CloseFrame>,
    linger: Duration,
) {
    let _ = tokio::time::timeout(linger, async {
        let _ = ws.close(close).await;
        let _ = out.drained().await;
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        out.shutdown().await;
        let mut discard = vec![0u8; 1024];
        while matches!(ws.get_mut().read.read(&mut discard).await, Ok(n) if n > 0) {}
    })
    .await;
}
