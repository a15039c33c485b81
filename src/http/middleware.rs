//! Middleware every response passes through.

use std::{sync::Arc, time::Instant};

use poem::{
    Endpoint, IntoResponse, Middleware, Request, Response, Result,
    http::{HeaderValue, Method, StatusCode, header},
};

use super::error;
use crate::telemetry;

/// Refuses bodies over `limit` bytes with 413, whether or not the client sent a
/// `Content-Length` (chunked bodies are read up to the limit and no further).
pub struct BodyLimit {
    limit: usize,
}

impl BodyLimit {
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<E: Endpoint> Middleware<E> for BodyLimit {
    type Output = BodyLimitEndpoint<E>;
    fn transform(&self, inner: E) -> Self::Output {
        BodyLimitEndpoint { inner, limit: self.limit }
    }
}

pub struct BodyLimitEndpoint<E> {
    inner: E,
    limit: usize,
}

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> Result<Response> {
        let too_large = || error::from_status(StatusCode::PAYLOAD_TOO_LARGE, None);
        if matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
            let declared = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > self.limit as u64) {
                return Ok(too_large());
            }
            match req.take_body().into_bytes_limit(self.limit).await {
                Ok(bytes) => req.set_body(bytes),
                Err(poem::error::ReadBodyError::PayloadTooLarge) => return Ok(too_large()),
                Err(e) => return Ok(error::from_status(StatusCode::BAD_REQUEST, Some(e.to_string()))),
            }
        }
        Ok(flatten(self.inner.call(req).await))
    }
}

/// Drops the `Origin` header of same-origin requests (browsers send it on POSTs), so the CORS
/// allow-list only judges cross-origin callers and confab's own page always works.
pub struct SameOrigin;

impl<E: Endpoint> Middleware<E> for SameOrigin {
    type Output = SameOriginEndpoint<E>;
    fn transform(&self, inner: E) -> Self::Output {
        SameOriginEndpoint { inner }
    }
}

pub struct SameOriginEndpoint<E> {
    inner: E,
}

impl<E: Endpoint> Endpoint for SameOriginEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> Result<Response> {
        if is_same_origin(req.headers()) {
            req.headers_mut().remove(header::ORIGIN);
        }
        Ok(flatten(self.inner.call(req).await))
    }
}

/// Whether the request's `Origin` is the server's own: the same authority as its `Host`.
pub fn is_same_origin(headers: &poem::http::HeaderMap) -> bool {
    match (headers.get(header::ORIGIN), headers.get(header::HOST)) {
        (Some(origin), Some(host)) => origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .is_some_and(|(_, authority)| host.to_str().is_ok_and(|h| h.eq_ignore_ascii_case(authority))),
        _ => false,
    }
}

/// Turns every error — poem's own (unknown route, bad JSON, wrong content type) as well as
/// handlers' — into the API's `{ "error", "code" }` JSON. Responses already in JSON pass as-is.
pub struct JsonErrors;

impl<E: Endpoint> Middleware<E> for JsonErrors {
    type Output = JsonErrorsEndpoint<E>;
    fn transform(&self, inner: E) -> Self::Output {
        JsonErrorsEndpoint { inner }
    }
}

pub struct JsonErrorsEndpoint<E> {
    inner: E,
}

impl<E: Endpoint> Endpoint for JsonErrorsEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Response> {
        let resp = flatten(self.inner.call(req).await);
        let status = resp.status();
        let is_json = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json"));
        if !(status.is_client_error() || status.is_server_error()) || is_json {
            return Ok(resp);
        }
        let (parts, body) = resp.into_parts();
        // poem's own errors carry a short plain-text reason; keep it as the human message.
        let detail = body.into_bytes_limit(1024).await.ok().and_then(|b| String::from_utf8(b.to_vec()).ok());
        if status == StatusCode::BAD_REQUEST
            && let Some(refusal) = detail.as_deref().and_then(error::rule_broken)
        {
            return Ok(refusal.into_response());
        }
        let mut out = error::from_status(status, detail);
        for name in [header::RETRY_AFTER, header::ALLOW, header::WWW_AUTHENTICATE] {
            if let Some(v) = parts.headers.get(&name) {
                out.headers_mut().insert(name, v.clone());
            }
        }
        Ok(out)
    }
}

/// Adds the `Allow` header RFC 9110 requires on a 405 to the answers of the OpenAPI routes,
/// from the methods the OpenAPI document lists for the path (`HEAD` wherever `GET` is: poem
/// answers it).
pub struct AllowHeader {
    routes: Arc<Vec<(Vec<String>, HeaderValue)>>,
}

impl AllowHeader {
    /// `prefix` is where the API is nested; `spec` the OpenAPI document.
    pub fn from_spec(prefix: &str, spec: &str) -> Self {
        const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
        let doc: serde_json::Value = serde_json::from_str(spec).unwrap_or_default();
        let routes = doc["paths"]
            .as_object()
            .map(|paths| {
                paths
                    .iter()
                    .filter_map(|(path, ops)| {
                        let mut methods: Vec<String> = ops
                            .as_object()?
                            .keys()
                            .filter(|m| METHODS.contains(&m.as_str()))
                            .map(|m| m.to_uppercase())
                            .collect();
                        if methods.iter().any(|m| m == "GET") && !methods.iter().any(|m| m == "HEAD") {
                            methods.push("HEAD".into());
                        }
                        let value = HeaderValue::from_str(&methods.join(", ")).ok()?;
                        Some((segments(&format!("{prefix}{path}")), value))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self { routes: Arc::new(routes) }
    }
}

fn segments(path: &str) -> Vec<String> {
    path.split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

impl<E: Endpoint> Middleware<E> for AllowHeader {
    type Output = AllowHeaderEndpoint<E>;
    fn transform(&self, inner: E) -> Self::Output {
        AllowHeaderEndpoint { inner, routes: Arc::clone(&self.routes) }
    }
}

pub struct AllowHeaderEndpoint<E> {
    inner: E,
    routes: Arc<Vec<(Vec<String>, HeaderValue)>>,
}

impl<E: Endpoint> Endpoint for AllowHeaderEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Response> {
        let path = req.uri().path().to_owned();
        let mut resp = flatten(self.inner.call(req).await);
        if resp.status() == StatusCode::METHOD_NOT_ALLOWED && !resp.headers().contains_key(header::ALLOW) {
            let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
            let found = self.routes.iter().find(|(template, _)| {
                template.len() == parts.len()
                    && template.iter().zip(&parts).all(|(t, p)| (t.starts_with('{') && t.ends_with('}')) || t == p)
            });
            if let Some((_, allow)) = found {
                resp.headers_mut().insert(header::ALLOW, allow.clone());
            }
        }
        Ok(resp)
    }
}

/// Security headers on every response, the equivalents of Helmet's defaults.
pub struct SecurityHeaders {
    hsts: bool,
}

impl SecurityHeaders {
    pub fn new(hsts: bool) -> Self {
        Self { hsts }
    }
}

/// The page and the API: scripts and styles from our own origin only, never inline.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self' ws: wss:; font-src 'self'; object-src 'none'; base-uri 'self'; \
                   form-action 'self'; frame-ancestors 'none'";
/// Swagger UI ships as one HTML page with inline script and styles.
const DOCS_CSP: &str = "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; \
                        img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'self'; \
                        form-action 'self'; frame-ancestors 'none'";

impl<E: Endpoint> Middleware<E> for SecurityHeaders {
    type Output = SecurityHeadersEndpoint<E>;
    fn transform(&self, inner: E) -> Self::Output {
        SecurityHeadersEndpoint { inner, hsts: self.hsts }
    }
}

pub struct SecurityHeadersEndpoint<E> {
    inner: E,
    hsts: bool,
}

impl<E: Endpoint> Endpoint for SecurityHeadersEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Response> {
        let docs = req.uri().path().starts_with("/api/docs");
        let mut resp = flatten(self.inner.call(req).await);
        let h = resp.headers_mut();
        let csp = if docs { DOCS_CSP } else { CSP };
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
        h.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
        h.insert("origin-agent-cluster", HeaderValue::from_static("?1"));
        h.insert(header::X_DNS_PREFETCH_CONTROL, HeaderValue::from_static("off"));
        h.insert("x-permitted-cross-domain-policies", HeaderValue::from_static("none"));
        if self.hsts {
            h.insert(
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static("max-age=31536000; includeSubDomains"),
            );
        }
        Ok(resp)
    }
}

/// Access log line and request metrics. Logs the path only: query strings can carry
/// `access_token`.
pub struct AccessLog;

impl<E: Endpoint> Middleware<E> for AccessLog {
    type Output = AccessLogEndpoint<E>;
    fn transform(&self, inner: E) -> Self::Output {
        AccessLogEndpoint { inner }
    }
}

pub struct AccessLogEndpoint<E> {
    inner: E,
}

impl<E: Endpoint> Endpoint for AccessLogEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Response> {
        let start = Instant::now();
        let method = req.method().clone();
        let route = route_label(req.uri().path());
        let path = req.uri().path().to_owned();
        let resp = flatten(self.inner.call(req).await);
        let status = resp.status().as_u16();
        let elapsed = start.elapsed();
        metrics::counter!(telemetry::HTTP_REQUESTS, "route" => route, "status" => status.to_string()).increment(1);
        metrics::histogram!(telemetry::HTTP_DURATION, "route" => route).record(elapsed.as_secs_f64());
        tracing::debug!(%method, path, status, micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX), "request");
        Ok(resp)
    }
}

/// A low-cardinality name for the route a path belongs to.
fn route_label(path: &str) -> &'static str {
    match path {
        "/api/auth/register" => "/api/auth/register",
        "/api/auth/login" => "/api/auth/login",
        "/api/auth/refresh" => "/api/auth/refresh",
        "/api/auth/logout" => "/api/auth/logout",
        "/api/me" => "/api/me",
        "/api/rooms" => "/api/rooms",
        "/api/openapi.json" => "/api/openapi.json",
        "/health" => "/health",
        "/ready" => "/ready",
        "/metrics" => "/metrics",
        "/ws" => "/ws",
        "/socket.io/" | "/socket.io" => "/socket.io",
        p if p.starts_with("/api/messages/") => "/api/messages/{room}",
        p if p.starts_with("/api/docs") => "/api/docs",
        p if p.starts_with("/api/") => "/api/other",
        _ => "/ui",
    }
}

/// A handler's result as the response the client will get.
fn flatten<T: IntoResponse>(result: Result<T>) -> Response {
    match result {
        Ok(r) => r.into_response(),
        Err(e) => e.into_response(),
    }
}
