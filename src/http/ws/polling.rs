//! Engine.IO long-polling, for the start of a Socket.IO connection.
//!
//! `socket.io-client` with default options opens with HTTP long-polling and upgrades to a
//! WebSocket right after. This module serves that first phase: the handshake (`GET` → OPEN
//! with `upgrades: ["websocket"]`), the CONNECT with its token (`POST`), polls (`GET`, held
//! until there is something to send or it is time for a ping), and events the client emits
//! before the upgrade, which are kept and replayed into the WebSocket session. After the
//! upgrade (`2probe`/`3probe`/`5`) the connection is a normal Socket.IO WebSocket session. A
//! client that never upgrades is dropped after [`UPGRADE_WITHIN`] and reconnects.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use poem::{Response, http::StatusCode};
use tokio::sync::Notify;

use super::{Identity, engineio::MAX_CONNECT_ATTEMPTS};
use crate::{http::AppState, protocol::socketio, sync::MutexExt as _, telemetry};

/// Engine.IO's packet separator in a polling payload.
const SEPARATOR: char = '\u{1e}';
/// How long a connection may stay on polling before it must have upgraded.
const UPGRADE_WITHIN: Duration = Duration::from_secs(60);
/// Packets buffered either way before the connection counts as misbehaving.
const MAX_BUFFERED: usize = 256;
/// How long an upgraded sid still answers a poll with a noop: a poll the client sent before it
/// upgraded can reach the server after the upgrade (another connection, a proxy).
const LATE_POLL: Duration = Duration::from_secs(5);

/// Polling connections that have not upgraded yet, by Engine.IO sid.
#[derive(Clone, Default)]
pub struct Registry(Arc<Mutex<HashMap<String, Arc<PollSession>>>>);

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<PollSession>>> {
        self.0.lock_unpoisoned()
    }

    pub fn get(&self, sid: &str) -> Option<Arc<PollSession>> {
        self.lock().get(sid).cloned()
    }

    pub fn remove(&self, sid: &str) {
        self.lock().remove(sid);
    }

    /// Forgets an upgraded connection after [`LATE_POLL`], answering late polls until then.
    pub fn remove_upgraded(&self, sid: String) {
        let registry = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(LATE_POLL).await;
            registry.remove(&sid);
        });
    }

    /// A new polling connection, unless `max` are pending already. Expired ones go first:
    /// unauthenticated after `handshake_timeout`, any after [`UPGRADE_WITHIN`]. The scan is
    /// bounded by `max`, so it stays cheap however many clients try.
    fn insert(&self, max: usize, handshake_timeout: Duration) -> Option<Arc<PollSession>> {
        let mut map = self.lock();
        if map.len() >= max {
            map.retain(|_, s| {
                let age = s.created.elapsed();
                let state = s.lock();
                !state.upgraded && age < UPGRADE_WITHIN && (age < handshake_timeout || state.user.is_some())
            });
            metrics::gauge!(telemetry::ENGINEIO_PENDING).set(f64::from(u32::try_from(map.len()).unwrap_or(u32::MAX)));
            if map.len() >= max {
                return None;
            }
        }
        let session = Arc::new(PollSession {
            sid: uuid::Uuid::new_v4().simple().to_string(),
            created: Instant::now(),
            inner: Mutex::new(PollState::default()),
            notify: Notify::new(),
        });
        map.insert(session.sid.clone(), Arc::clone(&session));
        metrics::gauge!(telemetry::ENGINEIO_PENDING).set(f64::from(u32::try_from(map.len()).unwrap_or(u32::MAX)));
        Some(session)
    }
}

pub struct PollSession {
    pub sid: String,
    created: Instant,
    inner: Mutex<PollState>,
    notify: Notify,
}

#[derive(Default)]
struct PollState {
    user: Option<Identity>,
    /// Packets for the client's next poll.
    outbox: Vec<String>,
    /// Socket.IO packets the client sent before upgrading, replayed after.
    inbox: Vec<String>,
    connect_attempts: usize,
    polling: bool,
    upgraded: bool,
}

impl PollSession {
    fn lock(&self) -> MutexGuard<'_, PollState> {
        self.inner.lock_unpoisoned()
    }

    /// The upgrade is complete: a pending poll returns a noop, and the WebSocket session takes
    /// the user, the undelivered packets and the early events.
    pub fn upgrade(&self) -> (Option<Identity>, Vec<String>, Vec<String>) {
        let mut s = self.lock();
        s.upgraded = true;
        let taken = (s.user.clone(), std::mem::take(&mut s.outbox), std::mem::take(&mut s.inbox));
        drop(s);
        self.notify.notify_one();
        taken
    }
}

fn text(status: StatusCode, body: String) -> Response {
    Response::builder().status(status).content_type("text/plain; charset=UTF-8").body(body)
}

fn bad(message: &str) -> Response {
    crate::http::error::json(StatusCode::BAD_REQUEST, message, "invalid_session")
}

/// `GET /socket.io/?EIO=4&transport=polling` without a sid: a new connection.
pub fn open(state: &AppState) -> Response {
    let ws = &state.config.ws;
    let Some(session) = state.polling.insert(ws.max_pending_handshakes as usize, ws.handshake_timeout.0) else {
        metrics::counter!(telemetry::HTTP_CONNECTIONS_REFUSED, "reason" => "engineio_pending").increment(1);
        return crate::http::error::json(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many Socket.IO connections are opening at once; try again shortly",
            "busy",
        );
    };
    text(StatusCode::OK, super::engineio::open_packet(state, &session.sid, true).to_string())
}

/// `GET …&sid=X`: waits for packets to deliver, or answers with a ping when it is time for one.
pub async fn poll(state: &AppState, sid: &str) -> Response {
    let Some(session) = state.polling.get(sid) else { return bad("unknown or expired sid") };
    {
        let mut s = session.lock();
        if s.polling {
            drop(s);
            state.polling.remove(sid);
            return bad("overlapping polls");
        }
        s.polling = true;
    }
    let deadline = tokio::time::Instant::now() + state.config.ws.ping_interval.0;
    let body = loop {
        let notified = session.notify.notified();
        {
            let mut s = session.lock();
            if s.upgraded {
                break "6".to_owned();
            }
            if !s.outbox.is_empty() {
                break std::mem::take(&mut s.outbox).join(&SEPARATOR.to_string());
            }
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            break socketio::PING.to_owned();
        }
    };
    session.lock().polling = false;
    text(StatusCode::OK, body)
}

/// `POST …&sid=X`: packets from the client. CONNECT is answered through the next poll; events
/// wait for the upgrade.
pub async fn post(state: &AppState, sid: &str, body: &str) -> Response {
    let Some(session) = state.polling.get(sid) else { return bad("unknown or expired sid") };
    if session.lock().upgraded {
        return bad("this connection has moved to its WebSocket");
    }
    for packet in body.split(SEPARATOR) {
        match socketio::parse(packet) {
            socketio::Packet::Connect { nsp: "/", auth } => {
                if session.lock().user.is_some() {
                    continue;
                }
                let user = super::engineio::connect_user(state, auth).await;
                let mut s = session.lock();
                s.connect_attempts += usize::from(user.is_err());
                match user {
                    Ok(user) => {
                        s.user = Some(user);
                        s.outbox.push(socketio::connected(&session.sid).to_string());
                    }
                    Err(message) => s.outbox.push(socketio::connect_error("/", message).to_string()),
                }
            }
            socketio::Packet::Connect { nsp, .. } => {
                let mut s = session.lock();
                s.connect_attempts += 1;
                s.outbox.push(socketio::connect_error(nsp, "Invalid namespace").to_string());
            }
            socketio::Packet::Close => {
                state.polling.remove(sid);
                return text(StatusCode::OK, "ok".into());
            }
            socketio::Packet::EioPing => session.lock().outbox.push("3".into()),
            socketio::Packet::Event { .. } | socketio::Packet::Binary { .. } | socketio::Packet::Malformed => {
                let mut s = session.lock();
                if s.user.is_some() {
                    s.inbox.push(packet.to_owned());
                }
            }
            socketio::Packet::EioOther | socketio::Packet::Ignored => {}
        }
    }
    let overflow = {
        let s = session.lock();
        s.inbox.len() > MAX_BUFFERED || s.outbox.len() > MAX_BUFFERED || s.connect_attempts >= MAX_CONNECT_ATTEMPTS
    };
    if overflow {
        state.polling.remove(sid);
        return bad("too many packets before the upgrade to WebSocket");
    }
    session.notify.notify_one();
    text(StatusCode::OK, "ok".into())
}
