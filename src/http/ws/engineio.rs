//! The Engine.IO side of Socket.IO clients on a WebSocket: the OPEN packet, the CONNECT
//! handshake (the token arrives in it), and the WebSocket half of an upgrade from polling.

use futures_util::StreamExt as _;
use tokio_tungstenite::tungstenite::Message;

use super::{Identity, polling, upgrade::Socket};
use crate::{
    http::AppState,
    protocol::{Utf8Bytes, socketio},
};

/// Refused CONNECTs allowed on one Socket.IO connection (WebSocket or polling) before it is
/// closed.
pub(super) const MAX_CONNECT_ATTEMPTS: usize = 5;

/// Engine.IO OPEN for this server's heartbeat settings.
pub(super) fn open_packet(state: &AppState, sid: &str, upgrades: bool) -> Utf8Bytes {
    let ws = &state.config.ws;
    let ping_timeout = ws.idle_timeout.0.saturating_sub(ws.ping_interval.0);
    socketio::open(sid, upgrades, ws.ping_interval.0.as_millis(), ping_timeout.as_millis(), ws.max_frame)
}

/// The user a CONNECT's auth payload (`{"token": "…"}`) belongs to, or the CONNECT_ERROR
/// message: `unauthorized`, or `unavailable` when the database cannot say (as `/ws` answers 503:
/// a client told "unauthorized" would drop a good token).
pub(super) async fn connect_user(state: &AppState, auth: &str) -> Result<Identity, &'static str> {
    let token = socketio::token(auth).ok_or("unauthorized")?;
    let (user, claims) = state
        .auth
        .authenticate_session(&token)
        .await
        .map_err(|e| if e.code() == "unavailable" { "unavailable" } else { "unauthorized" })?;
    Ok(Identity::new(user, &claims))
}

/// The WebSocket half of a polling upgrade: `2probe` → `3probe`, then `5`. Returns the user
/// (waiting for a CONNECT here if none came over polling), the packets the client has not
/// polled yet, and the events it sent before upgrading.
pub(super) async fn finish_upgrade(
    socket: &mut Socket,
    session: &polling::PollSession,
    state: &AppState,
) -> Option<(Identity, Vec<Utf8Bytes>, Vec<String>)> {
    let deadline = tokio::time::Instant::now() + state.config.ws.handshake_timeout.0;
    loop {
        let Message::Text(text) = tokio::time::timeout_at(deadline, socket.ws.next()).await.ok()??.ok()? else {
            continue;
        };
        match text.as_str() {
            "2probe" => socket.send_now(Utf8Bytes::from_static("3probe")).await?,
            "5" => break,
            _ => return None,
        }
    }
    let (user, outbox, inbox) = session.upgrade();
    let greeting = outbox.into_iter().map(Utf8Bytes::from).collect();
    let user = match user {
        Some(user) => user,
        None => handshake(socket, state).await?,
    };
    Some((user, greeting, inbox))
}

/// Waits for a CONNECT to the default namespace with a valid token. Refused attempts get
/// CONNECT_ERROR and may be retried on the same connection.
pub(super) async fn handshake(socket: &mut Socket, state: &AppState) -> Option<Identity> {
    // One deadline for the whole handshake: retries do not extend it.
    let deadline = tokio::time::Instant::now() + state.config.ws.handshake_timeout.0;
    let mut attempts = 0;
    loop {
        let frame = tokio::time::timeout_at(deadline, socket.ws.next()).await.ok()??.ok()?;
        let Message::Text(text) = frame else { continue };
        let answer = match socketio::parse(&text) {
            socketio::Packet::Connect { nsp: "/", auth } => {
                attempts += 1;
                match connect_user(state, auth).await {
                    Ok(user) => return Some(user),
                    Err(message) => socketio::connect_error("/", message),
                }
            }
            socketio::Packet::Connect { nsp, .. } => {
                attempts += 1;
                socketio::connect_error(nsp, "Invalid namespace")
            }
            socketio::Packet::EioPing => Utf8Bytes::from_static("3"),
            socketio::Packet::Close | socketio::Packet::Malformed => return None,
            _ => continue,
        };
        socket.send_now(answer).await?;
        if attempts >= MAX_CONNECT_ATTEMPTS {
            return None;
        }
    }
}
