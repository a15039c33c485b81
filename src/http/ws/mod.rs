//! WebSocket transports: authentication and origin checks before the upgrade, then one session
//! loop that turns frames into chat commands.
//!
//! - this module: the two endpoints (`GET /ws`, `/socket.io/`), who may upgrade.
//! - [`upgrade`]: the raw upgrade, and the socket whose two directions part ways — tungstenite
//!   reads client frames (with small buffers, for many idle connections), while everything
//!   sent goes through the session's [`Outbox`](crate::chat::Outbox), to which the chat core
//!   writes already framed, shared bytes directly.
//! - [`session`]: the one session loop both transports share.
//! - [`engineio`] and [`polling`]: the Engine.IO handshake of Socket.IO clients, over a
//!   WebSocket or long-polling until they upgrade.

mod engineio;
pub mod polling;
mod session;
mod upgrade;

use poem::{
    Request, Response, handler,
    http::{StatusCode, header},
    web::Data,
};

use self::{
    session::{Opening, run_session},
    upgrade::{abandon, upgrade},
};
use super::{AppState, error, middleware::is_same_origin};
use crate::{
    domain::User,
    protocol::{Codec, native, socketio},
};

/// Who a session runs as, and for how long: the user, and the claims of the token that
/// admitted it (a session lives only as long as its token, and only in its session epoch).
#[derive(Clone, Debug)]
pub struct Identity {
    pub user: User,
    /// Unix seconds when the token expires; the session ends then unless refreshed in-band.
    pub expires_at: i64,
    pub epoch: i64,
}

impl Identity {
    pub(crate) fn new(user: User, claims: &crate::auth::token::Claims) -> Self {
        Self { user, expires_at: claims.exp, epoch: claims.sep }
    }
}

/// `GET /ws`: the native protocol.
#[handler]
pub async fn native_endpoint(req: &Request, state: Data<&AppState>) -> Response {
    if let Err(resp) = check_upgrade(req, &state) {
        return *resp;
    }
    let Some(token) = bearer_token(req) else {
        return error::json(StatusCode::UNAUTHORIZED, "missing access token", "unauthorized");
    };
    let who = match state.auth.authenticate_session(&token).await {
        Ok((user, claims)) => Identity::new(user, &claims),
        Err(e) => {
            let status =
                if e.code() == "unavailable" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::UNAUTHORIZED };
            return error::json(status, &e.to_string(), e.code());
        }
    };
    upgrade(req, &state, Codec::Native, move |socket, state| {
        let hello = native::hello(&who.user, &state.node_id, state.config.chat.message_max_len);
        run_session(socket, state, Box::new(Opening { who, greeting: vec![hello], replay: Vec::new() }))
    })
}

/// `/socket.io/?EIO=4&transport=…`: Socket.IO clients. The token arrives later, in the CONNECT
/// packet, so authentication happens inside the protocol. `transport=polling` serves the
/// long-polling start of default clients until they upgrade (see [`polling`]).
#[handler]
pub async fn socketio_endpoint(req: &Request, state: Data<&AppState>, body: poem::Body) -> Response {
    let query: Vec<(String, String)> =
        req.uri().query().map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
    let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    if param("EIO") != Some("4") {
        return error::json(
            StatusCode::BAD_REQUEST,
            "unsupported Engine.IO protocol version: use a Socket.IO v3/v4 client (EIO=4)",
            "unsupported_protocol",
        );
    }
    let sid = param("sid");
    match (param("transport"), req.method().as_str(), sid) {
        (Some("polling"), "GET", None) => return polling::open(&state),
        (Some("polling"), "GET", Some(sid)) => return polling::poll(&state, sid).await,
        (Some("polling"), "POST", Some(sid)) => {
            let Ok(body) = body.into_string().await else {
                return error::json(StatusCode::BAD_REQUEST, "polling payloads are UTF-8 text", "invalid_payload");
            };
            return polling::post(&state, sid, &body).await;
        }
        (Some("websocket"), _, _) => {}
        _ => {
            return error::json(
                StatusCode::BAD_REQUEST,
                "unsupported transport: use websocket (or polling, upgraded to websocket)",
                "transport_unsupported",
            );
        }
    }
    if let Err(resp) = check_upgrade(req, &state) {
        return *resp;
    }
    if let Some(sid) = sid {
        let Some(session) = state.polling.get(sid) else {
            return error::json(StatusCode::BAD_REQUEST, "unknown or expired sid", "invalid_session");
        };
        return upgrade(req, &state, Codec::SocketIo, move |mut socket, state| async move {
            // Boxed, like the handshake below: a session's future keeps room for its largest
            // state all its life.
            let upgraded = Box::pin(engineio::finish_upgrade(&mut socket, &session, &state)).await;
            if upgraded.is_some() {
                state.polling.remove_upgraded(session.sid.clone());
            } else {
                state.polling.remove(&session.sid);
            }
            match upgraded {
                Some((who, greeting, replay)) => {
                    run_session(socket, state, Box::new(Opening { who, greeting, replay })).await;
                }
                None => abandon(socket).await,
            }
        });
    }
    upgrade(req, &state, Codec::SocketIo, |mut socket, state| async move {
        let sid = uuid::Uuid::new_v4().simple().to_string();
        let opened = socket.send_now(engineio::open_packet(&state, &sid, false)).await.is_some();
        if let Some(who) = if opened { Box::pin(engineio::handshake(&mut socket, &state)).await } else { None } {
            let greeting = vec![socketio::connected(&sid)];
            run_session(socket, state, Box::new(Opening { who, greeting, replay: Vec::new() })).await;
        } else {
            abandon(socket).await;
        }
    })
}

/// Checks that this is a WebSocket upgrade from an allowed origin.
fn check_upgrade(req: &Request, state: &AppState) -> Result<(), Box<Response>> {
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_upgrade || req.headers().get(header::SEC_WEBSOCKET_KEY).is_none() {
        return Err(Box::new(error::from_status(
            StatusCode::BAD_REQUEST,
            Some("this endpoint speaks WebSocket: send an upgrade request".into()),
        )));
    }
    // RFC 6455 is version 13; anything else gets 426 and the version this server speaks.
    if req.headers().get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
        let mut resp = error::json(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version: use version 13 (RFC 6455)",
            "unsupported_version",
        );
        resp.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, header::HeaderValue::from_static("13"));
        return Err(Box::new(resp));
    }
    if !origin_allowed(req, &state.config.http.cors_origins.0) {
        return Err(Box::new(error::json(StatusCode::FORBIDDEN, "origin not allowed", "forbidden_origin")));
    }
    Ok(())
}

/// The token from `Authorization: Bearer` or `?access_token=` (browsers cannot set headers on
/// WebSocket requests).
fn bearer_token(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, token) = v.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned());
    }
    url::form_urlencoded::parse(req.uri().query()?.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
}

/// Refuses cross-site WebSocket hijacking: a browser always sends `Origin`, which must be the
/// server's own or in the CORS allow-list. Non-browser clients send none and are allowed.
fn origin_allowed(req: &Request, allowed: &[String]) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    if allowed.iter().any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin)) {
        return true;
    }
    is_same_origin(req.headers())
}
