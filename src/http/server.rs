//! The HTTP/1.1 server: accepting connections, bounding what each client can hold, and
//! stopping gracefully. The routes are poem's; the connections are hyper's, driven here because
//! poem's own server sets no header-read timeout and counts no connections.
//!
//! Bounds, each a configuration key:
//! - `http.header_read_timeout`: a request's headers must arrive whole within it, and an idle
//!   keep-alive connection is closed after it (hyper's header-read timer covers both), so
//!   half-sent requests (slowloris) cannot hold descriptors;
//! - `http.max_connections_per_ip`: open connections per client address, WebSockets included
//!   (the count lives in the socket, so it follows the connection through the upgrade);
//!   trusted proxies are exempt, since every client behind one shares its address.
//!
//! Upgraded WebSockets outlive their HTTP connection here: the session code has its own
//! heartbeat and idle timeout, and its own shutdown.

use std::{
    collections::HashMap,
    convert::Infallible,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use poem::{
    Endpoint, EndpointExt as _,
    http::uri::Scheme,
    web::{LocalAddr, RemoteAddr},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::sync::MutexExt as _;
use crate::telemetry;

/// The bounds the server enforces on every connection.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    /// 0: no limit.
    pub max_connections_per_ip: u32,
    /// Addresses the per-IP limit does not apply to (reverse proxies).
    pub exempt: Arc<[IpAddr]>,
}

/// Open connections per client address.
struct PerIp {
    limits: ConnectionLimits,
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// One connection's place in its address's count, freed when the connection's socket is.
struct ConnSlot {
    per_ip: Arc<PerIp>,
    /// `None` when the address is not counted (exempt, or no limit).
    ip: Option<IpAddr>,
}

impl PerIp {
    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, u32>> {
        // Plain counters: a panic elsewhere cannot leave them half-written.
        self.open.lock_unpoisoned()
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnSlot> {
        let max = self.limits.max_connections_per_ip;
        if max == 0 || self.limits.exempt.contains(&ip) {
            return Some(ConnSlot { per_ip: Arc::clone(self), ip: None });
        }
        let mut open = self.lock();
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ConnSlot { per_ip: Arc::clone(self), ip: Some(ip) })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        metrics::gauge!(telemetry::HTTP_CONNECTIONS).decrement(1.0);
        let Some(ip) = self.ip else { return };
        let mut open = self.per_ip.lock();
        if let Some(n) = open.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&ip);
            }
        }
    }
}

/// A client socket that carries its connection slot, so the slot is held exactly as long as
/// the socket: through hyper and, after an upgrade, through the WebSocket session.
struct Counted {
    io: TcpStream,
    _slot: ConnSlot,
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Serves `endpoint` on `listener` until `shutdown` completes; then stops accepting, lets each
/// connection finish its request in flight, and returns once they are done or `grace` is up.
pub async fn serve(
    listener: TcpListener,
    endpoint: impl Endpoint + 'static,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) {
    let endpoint = Arc::new(endpoint.map_to_response().boxed());
    let local = listener.local_addr().map_or(LocalAddr::default(), |a| LocalAddr(a.into()));
    let header_timeout = limits.header_read_timeout;
    let per_ip = Arc::new(PerIp { limits, open: Mutex::new(HashMap::new()) });
    let connections = TaskTracker::new();
    let stopping = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors (or memory): nothing to accept with until some close.
                    // Pausing keeps the loop from spinning on the error meanwhile.
                    tracing::warn!(error = %e, "cannot accept a connection; pausing");
                    metrics::counter!(telemetry::HTTP_CONNECTIONS_REFUSED, "reason" => "accept_error").increment(1);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = per_ip.admit(peer.ip()) else {
            metrics::counter!(telemetry::HTTP_CONNECTIONS_REFUSED, "reason" => "per_ip").increment(1);
            continue; // dropped: closed at once
        };
        metrics::gauge!(telemetry::HTTP_CONNECTIONS).increment(1.0);
        // Nagle off: a chat server writes small frames, which Nagle would hold back for the
        // peer's delayed ACK (measured: p99 22 ms against a p90 of 1.5 ms). Best effort.
        let _ = stream.set_nodelay(true);
        let io = Counted { io: stream, _slot: slot };
        connections.spawn(serve_connection(
            io,
            peer,
            local.clone(),
            Arc::clone(&endpoint),
            header_timeout,
            stopping.clone(),
        ));
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    if tokio::time::timeout(grace, connections.wait()).await.is_err() {
        tracing::debug!(open = connections.len(), "HTTP connections still open after the grace period");
    }
}

async fn serve_connection(
    io: Counted,
    peer: SocketAddr,
    local: LocalAddr,
    endpoint: Arc<poem::endpoint::BoxEndpoint<'static, poem::Response>>,
    header_timeout: Duration,
    stopping: CancellationToken,
) {
    let remote = RemoteAddr(peer.into());
    let service = hyper::service::service_fn(move |req| {
        let (endpoint, local, remote) = (Arc::clone(&endpoint), local.clone(), remote.clone());
        async move {
            let resp = endpoint.get_response((req, local, remote, Scheme::HTTP).into()).await;
            Ok::<_, Infallible>(hyper::Response::from(resp))
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        }
        () = stopping.cancelled() => {
            // Finish the request in flight (if any), then close; the caller bounds the wait.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
