//! The embedded web client: the files of `assets/`, compiled into the binary with rust-embed
//! (read from disk in debug builds, so editing a `.js` file needs only a reload).
//!
//! Caching: every file is `Cache-Control: no-cache` with an ETag made from its SHA-256, and a
//! matching `If-None-Match` gets a bodyless 304. The client is a handful of small ES modules
//! that import each other by plain name; hashed names with a long cache would need a build step
//! (or rewriting imports at startup) to save one round trip per file on revisits. The ETag is
//! weak because the `Compression` middleware around this endpoint may gzip/brotli the body, and a
//! strong validator must differ per content coding; `Vary: Accept-Encoding` tells caches so.
//!
//! Routing: `/` and any path without a file extension that is not a file (`/r/general`) get
//! `index.html`, so the client's own URLs survive a reload. A missing path *with* an extension
//! (`/missing.js`) is a 404: answering a script request with HTML only hides the mistake.
//! `/api/*` never reaches this endpoint (it is a separate, longer nest).

use poem::{
    Endpoint, Request, Response, Result,
    http::{HeaderValue, Method, StatusCode, header},
};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "assets/"]
struct Assets;

/// The file every client-side route is answered with.
const INDEX: &str = "index.html";

/// Serves `assets/` at `/`.
pub fn endpoint() -> impl Endpoint {
    Ui
}

struct Ui;

impl Endpoint for Ui {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Response> {
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return Ok(Response::builder()
                .status(StatusCode::METHOD_NOT_ALLOWED)
                .header(header::ALLOW, "GET, HEAD")
                .finish());
        }
        let Some((name, file)) = resolve(req.uri().path()) else {
            return Ok(StatusCode::NOT_FOUND.into());
        };
        let etag = format!("W/\"{}\"", hex::encode(file.metadata.sha256_hash()));
        let builder = Response::builder()
            .header(header::ETAG, etag.as_str())
            .header(header::CACHE_CONTROL, "no-cache")
            .header(header::VARY, "accept-encoding");
        if req.headers().get(header::IF_NONE_MATCH).is_some_and(|v| etag_matches(v, &etag)) {
            return Ok(builder.status(StatusCode::NOT_MODIFIED).finish());
        }
        Ok(builder.content_type(content_type(&name)).body(file.data.into_owned()))
    }
}

/// The embedded file for a request path, and its name inside `assets/`.
fn resolve(path: &str) -> Option<(String, rust_embed::EmbeddedFile)> {
    let path = path.trim_start_matches('/');
    // rust-embed guards its debug-mode disk reads too; refusing here keeps that out of question.
    if path.split('/').any(|seg| seg == ".." || seg.contains('\\')) {
        return None;
    }
    let name = if path.is_empty() || path.ends_with('/') { format!("{path}{INDEX}") } else { path.to_owned() };
    if let Some(file) = Assets::get(&name) {
        return Some((name, file));
    }
    let last = name.rsplit('/').next().unwrap_or_default();
    if last.contains('.') {
        return None;
    }
    Assets::get(INDEX).map(|file| (INDEX.to_owned(), file))
}

/// Whether an `If-None-Match` value names `etag` (weak comparison, as RFC 9110 asks for this
/// header), or is `*`.
fn etag_matches(header: &HeaderValue, etag: &str) -> bool {
    let Ok(header) = header.to_str() else { return false };
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    let ours = opaque(etag);
    header.split(',').any(|tag| tag.trim() == "*" || opaque(tag) == ours)
}

/// The `Content-Type` for a file of `assets/`, by extension. A short list on purpose: these
/// are the kinds of file the client is made of; anything else is served as opaque bytes.
fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        Some("webmanifest") => "application/manifest+json",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_routes_get_the_page_and_missing_files_do_not() {
        assert_eq!(resolve("/").map(|(n, _)| n).as_deref(), Some(INDEX));
        assert_eq!(resolve("/r/general").map(|(n, _)| n).as_deref(), Some(INDEX));
        assert!(resolve("/missing.js").is_none());
        assert!(resolve("/../Cargo.toml").is_none());
    }

    #[test]
    fn if_none_match_compares_weakly_and_accepts_lists() {
        let etag = "W/\"abc\"";
        assert!(etag_matches(&HeaderValue::from_static("\"abc\""), etag));
        assert!(etag_matches(&HeaderValue::from_static("\"x\", W/\"abc\""), etag));
        assert!(etag_matches(&HeaderValue::from_static("*"), etag));
        assert!(!etag_matches(&HeaderValue::from_static("\"abd\""), etag));
    }

    #[test]
    fn scripts_are_javascript() {
        assert_eq!(content_type("js/main.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("app.css"), "text/css; charset=utf-8");
    }
}
