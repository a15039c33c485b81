//! Browser-facing protections: security headers on every kind of response, and CORS that lets
//! exactly the configured origins in.

use reqwest::{Method, Response, StatusCode, header};

use crate::helpers::{Backend, TestApp, spawn_app, spawn_app_with};

fn header_value<'a>(resp: &'a Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).map(|v| v.to_str().expect("ascii header"))
}

fn assert_security_headers(resp: &Response, what: &str) {
    let csp = header_value(resp, "content-security-policy").unwrap_or_else(|| panic!("{what}: no CSP"));
    assert!(csp.contains("default-src 'self'"), "{what}: CSP {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: CSP {csp}");
    assert_eq!(header_value(resp, "x-content-type-options"), Some("nosniff"), "{what}");
    assert_eq!(header_value(resp, "x-frame-options"), Some("DENY"), "{what}");
    assert_eq!(header_value(resp, "referrer-policy"), Some("no-referrer"), "{what}");
    assert_eq!(header_value(resp, "cross-origin-opener-policy"), Some("same-origin"), "{what}");
    assert_eq!(header_value(resp, "strict-transport-security"), None, "{what}: HSTS is off by default");
}

#[tokio::test]
async fn every_kind_of_response_carries_the_security_headers() {
    let app = spawn_app(Backend::Sqlite).await;
    let session = app.register("nora@example.com").await;

    let index = app.get("/").await;
    assert_eq!(index.status(), StatusCode::OK);
    assert!(header_value(&index, "content-type").is_some_and(|ct| ct.starts_with("text/html")));
    assert_security_headers(&index, "GET /");

    let cases = [
        ("GET /api/me (200)", app.me(&session.token).await, StatusCode::OK),
        ("GET /api/me (401)", app.get("/api/me").await, StatusCode::UNAUTHORIZED),
        ("GET /api/nope (404)", app.get("/api/nope").await, StatusCode::NOT_FOUND),
        ("POST login (400)", app.post_raw("/api/auth/login", "application/json", "{").await, StatusCode::BAD_REQUEST),
        ("GET /health", app.get("/health").await, StatusCode::OK),
        ("GET /api/openapi.json", app.get("/api/openapi.json").await, StatusCode::OK),
    ];
    for (what, resp, status) in &cases {
        assert_eq!(resp.status(), *status, "{what}");
        assert_security_headers(resp, what);
    }
}

#[tokio::test]
async fn hsts_is_sent_when_configured() {
    let app = spawn_app_with(Backend::Sqlite, |cfg| cfg.http.hsts = true).await;
    let resp = app.get("/health").await;
    let hsts = header_value(&resp, "strict-transport-security").expect("HSTS header");
    assert!(hsts.contains("max-age="), "{hsts}");
}

async fn preflight(app: &TestApp, origin: &str, method: &str, headers: &str) -> Response {
    app.client
        .request(Method::OPTIONS, app.url("/api/auth/login"))
        .header(header::ORIGIN, origin)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, method)
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, headers)
        .send()
        .await
        .expect("preflight")
}

fn list_contains(resp: &Response, name: &str, item: &str) -> bool {
    header_value(resp, name).is_some_and(|v| v.split(',').any(|x| x.trim().eq_ignore_ascii_case(item)))
}

#[tokio::test]
async fn cors_allows_the_configured_origin_and_no_other() {
    let app = spawn_app_with(Backend::Sqlite, |cfg| {
        cfg.http.cors_origins = confab::config::List(vec!["http://allowed.test".into()]);
    })
    .await;

    for (method, request_header) in [("POST", "content-type"), ("GET", "authorization")] {
        let resp = preflight(&app, "http://allowed.test", method, request_header).await;
        assert!(resp.status().is_success(), "{method} preflight: {}", resp.status());
        assert_eq!(header_value(&resp, "access-control-allow-origin"), Some("http://allowed.test"));
        assert!(list_contains(&resp, "access-control-allow-methods", method), "{:?}", resp.headers());
        assert!(list_contains(&resp, "access-control-allow-headers", request_header), "{:?}", resp.headers());
        assert_eq!(header_value(&resp, "access-control-allow-credentials"), Some("true"));
    }

    for (method, request_header) in [("POST", "content-type"), ("GET", "authorization")] {
        let resp = preflight(&app, "http://evil.test", method, request_header).await;
        assert!(!resp.status().is_success(), "evil preflight allowed: {}", resp.status());
        assert_eq!(header_value(&resp, "access-control-allow-origin"), None, "{:?}", resp.headers());
    }

    // An actual request from the allowed origin is answered with the origin echoed; one from
    // another origin gets no CORS grant a browser would honour.
    let resp =
        app.client.get(app.url("/health")).header(header::ORIGIN, "http://allowed.test").send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header_value(&resp, "access-control-allow-origin"), Some("http://allowed.test"));
    let resp =
        app.client.get(app.url("/health")).header(header::ORIGIN, "http://evil.test").send().await.expect("send");
    assert_eq!(header_value(&resp, "access-control-allow-origin"), None, "{:?}", resp.headers());
}

#[tokio::test]
async fn without_cors_origins_no_origin_is_granted() {
    let app = spawn_app(Backend::Sqlite).await;
    let resp = preflight(&app, "http://allowed.test", "POST", "content-type").await;
    assert_eq!(header_value(&resp, "access-control-allow-origin"), None, "{:?}", resp.headers());
}
