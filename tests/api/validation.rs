//! Malformed requests: every refusal is a 4xx with the `{ "error", "code" }` body, whatever
//! part of the stack refuses it (payload parsing, content type, routing, body size).

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::{Backend, PASSWORD, TIMEOUT, expect_error, expect_json, spawn_app, spawn_app_with};

const AUTH_PATHS: [&str; 2] = ["/api/auth/register", "/api/auth/login"];

#[tokio::test]
async fn missing_fields_and_wrong_types_are_400_invalid_payload() {
    let app = spawn_app(Backend::Sqlite).await;
    for path in AUTH_PATHS {
        for body in [
            json!({}),
            json!({ "email": "a@example.com" }),
            json!({ "password": PASSWORD }),
            json!({ "email": null, "password": PASSWORD }),
            json!({ "email": ["a@example.com"], "password": PASSWORD }),
            json!({ "email": "a@example.com", "password": { "value": PASSWORD } }),
            json!(["a@example.com", PASSWORD]),
            json!("a@example.com"),
            json!(null),
        ] {
            let resp = app.post_json(path, &body).await;
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{path} accepted {body}");
            let error = expect_json(resp, StatusCode::BAD_REQUEST).await;
            assert_eq!(error["code"], "invalid_payload", "{path} {body}: {error}");
            assert!(error["error"].as_str().is_some_and(|e| !e.is_empty()), "{error}");
        }
        // Scalars where strings belong: registration takes nothing but strings, as its schema
        // says; login turns them into text, which then matches no account.
        for body in
            [json!({ "email": 42, "password": PASSWORD }), json!({ "email": "a@example.com", "password": true })]
        {
            let resp = app.post_json(path, &body).await;
            if path.ends_with("register") {
                expect_error(resp, StatusCode::BAD_REQUEST, "invalid_payload").await;
            } else {
                // Login never says which rule a credential broke.
                expect_error(resp, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
            }
        }
    }
    for path in ["/api/auth/refresh", "/api/auth/logout"] {
        for body in [json!({}), json!({ "refreshToken": ["x"] }), json!({ "refresh_token": "x" })] {
            expect_error(app.post_json(path, &body).await, StatusCode::BAD_REQUEST, "invalid_payload").await;
        }
    }
}

#[tokio::test]
async fn malformed_json_is_400_invalid_payload() {
    let app = spawn_app(Backend::Sqlite).await;
    for path in AUTH_PATHS {
        for raw in ["{\"email\":", "not json", "", "{\"email\": \"a@example.com\", \"password\": \"x\"} trailing"] {
            let resp = app.post_raw(path, "application/json", raw).await;
            expect_error(resp, StatusCode::BAD_REQUEST, "invalid_payload").await;
        }
    }
}

#[tokio::test]
async fn short_passwords_and_invalid_emails_are_400_with_their_own_codes() {
    let app = spawn_app(Backend::Sqlite).await;
    for password in ["", "1234567", "short"] {
        let resp =
            app.post_json("/api/auth/register", &json!({ "email": "a@example.com", "password": password })).await;
        expect_error(resp, StatusCode::BAD_REQUEST, "invalid_password").await;
    }
    let too_long = "x".repeat(1025);
    let resp = app.post_json("/api/auth/register", &json!({ "email": "a@example.com", "password": too_long })).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "invalid_password").await;

    for email in ["", "not-an-email", "a@b", "@example.com", "a b@example.com", "a@example..com", "a@@example.com"] {
        let resp = app.post_json("/api/auth/register", &json!({ "email": email, "password": PASSWORD })).await;
        expect_error(resp, StatusCode::BAD_REQUEST, "invalid_email").await;
    }
    // Exactly eight characters is enough.
    app.register_with("eight@example.com", "12345678").await;
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415_in_json() {
    let app = spawn_app(Backend::Sqlite).await;
    let body = json!({ "email": "a@example.com", "password": PASSWORD }).to_string();
    for path in AUTH_PATHS {
        for content_type in ["text/plain", "application/x-www-form-urlencoded", "application/xml"] {
            let resp = app.post_raw(path, content_type, body.clone()).await;
            expect_error(resp, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type").await;
        }
        let resp = app.client.post(app.url(path)).body(body.clone()).send().await.expect("send");
        expect_error(resp, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type").await;
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_in_json() {
    let app = spawn_app_with(Backend::Sqlite, |cfg| cfg.http.body_limit = 1024).await;
    let huge = json!({ "email": "a@example.com", "password": "p".repeat(4096) });
    for path in AUTH_PATHS {
        expect_error(app.post_json(path, &huge).await, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    }
    // Just under the limit is still parsed (and refused for its content, not its size).
    let fits = json!({ "email": "a@example.com", "password": "p".repeat(900) });
    expect_error(app.post_json("/api/auth/login", &fits).await, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
}

/// Without a `Content-Length` (chunked), the limit still holds: the body is read up to it and
/// no further. reqwest here has no streaming bodies, so this speaks HTTP/1.1 by hand.
#[tokio::test]
async fn a_chunked_body_over_the_limit_is_413_in_json() {
    let app = spawn_app_with(Backend::Sqlite, |cfg| cfg.http.body_limit = 1024).await;
    let chunk = "x".repeat(700);
    let request = format!(
        "POST /api/auth/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        app.addr,
        len = chunk.len(),
    );
    let response = tokio::time::timeout(TIMEOUT, async {
        let mut stream = tokio::net::TcpStream::connect(app.addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write request");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read response");
        String::from_utf8_lossy(&response).into_owned()
    })
    .await
    .expect("no response in time");
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.to_ascii_lowercase().contains("content-type: application/json"), "{response}");
    assert!(response.contains(r#""code":"payload_too_large""#), "{response}");
}

#[tokio::test]
async fn an_unknown_route_is_404_in_json() {
    let app = spawn_app(Backend::Sqlite).await;
    for path in ["/api/nope", "/api/auth/nope", "/api/messages", "/api/v2/me"] {
        expect_error(app.get(path).await, StatusCode::NOT_FOUND, "not_found").await;
    }
    expect_error(app.post_json("/api/nope", &json!({})).await, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn a_wrong_method_is_405_in_json() {
    let app = spawn_app(Backend::Sqlite).await;
    expect_error(app.get("/api/auth/login").await, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    let resp = app.client.delete(app.url("/api/me")).send().await.expect("send");
    expect_error(resp, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
}

#[tokio::test]
async fn a_405_under_api_says_which_methods_the_path_allows() {
    let app = spawn_app(Backend::Sqlite).await;
    for (method, path, allow) in [
        ("DELETE", "/api/rooms", "GET, POST, HEAD"),
        ("TRACE", "/api/me", "GET, PATCH, HEAD"),
        ("PUT", "/api/messages/general", "GET, HEAD"),
        ("GET", "/api/auth/login", "POST"),
        ("DELETE", "/api/auth/register", "POST"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let resp = app.client.request(method.clone(), app.url(path)).send().await.expect("request");
        assert_eq!(resp.headers().get("allow").and_then(|v| v.to_str().ok()), Some(allow), "{method} {path}");
        expect_error(resp, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    }
}

/// What the server checks, the OpenAPI document states: clients (and schemathesis) can rely
/// on it.
#[tokio::test]
async fn the_openapi_document_states_the_rules_the_server_checks() {
    let app = spawn_app(Backend::Sqlite).await;
    let doc = expect_json(app.get("/api/openapi.json").await, StatusCode::OK).await;
    let history = &doc["paths"]["/messages/{room}"]["get"];
    let param = |name: &str| {
        history["parameters"].as_array().expect("parameters").iter().find(|p| p["name"] == name).expect("param")["schema"]
            .clone()
    };
    assert_eq!(param("room")["pattern"], "^[A-Za-z0-9:_-]{1,64}$");
    assert_eq!((param("limit")["minimum"].as_f64(), param("limit")["maximum"].as_f64()), (Some(1.0), Some(200.0)));
    assert_eq!(param("before")["minimum"].as_f64(), Some(1.0));
    let register = &doc["components"]["schemas"]["RegisterBody"]["properties"];
    assert_eq!(register["password"]["minLength"], 8);
    assert_eq!(register["password"]["maxLength"], 1024);
    assert_eq!(register["email"]["maxLength"], 254);
    for path in ["/auth/register", "/auth/login", "/auth/refresh", "/auth/logout"] {
        assert!(doc["paths"][path]["post"]["responses"]["415"].is_object(), "{path} documents 415");
    }
    // And the parameter rules answer with their own codes.
    let session = app.register("rules@example.com").await;
    for (query, code) in [("messages/bad%20room", "invalid_room"), ("messages/general?limit=201", "invalid_limit")] {
        let resp = app.get_authed(&format!("/api/{query}"), &session.token).await;
        expect_error(resp, StatusCode::BAD_REQUEST, code).await;
    }
}
