//! Operational endpoints and API documentation: `/health`, `/ready`, `/metrics`,
//! `/api/openapi.json`, `/api/docs`.

use reqwest::StatusCode;

use crate::{
    common::{Backend, both_backends},
    helpers::{expect_json, spawn_app, spawn_app_with},
};

both_backends!(health_and_readiness_answer_with_the_database_up);

async fn health_and_readiness_answer_with_the_database_up(backend: Backend) {
    let app = spawn_app(backend).await;
    let health = expect_json(app.get("/health").await, StatusCode::OK).await;
    assert_eq!(health["ok"], true, "{health}");
    assert_eq!(health["node"], "test-node", "{health}");

    let ready = expect_json(app.get("/ready").await, StatusCode::OK).await;
    assert_eq!(ready["ok"], true, "{ready}");
    assert_eq!(ready["database"], "up", "{ready}");
}

/// Readiness really asks the database: with the PostgreSQL database gone, `/ready` says 503
/// and which dependency failed, while `/health` (liveness) stays 200.
#[tokio::test]
async fn readiness_fails_when_the_database_is_gone() {
    if !Backend::Postgres.available() {
        return;
    }
    let app = spawn_app(Backend::Postgres).await;
    expect_json(app.get("/ready").await, StatusCode::OK).await;

    app.db.drop_pg_database().await;

    let ready = expect_json(app.get("/ready").await, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(ready["ok"], false, "{ready}");
    assert_eq!(ready["database"], "down", "{ready}");
    assert!(ready["error"].is_string() && ready["code"].is_string(), "{ready}");
    expect_json(app.get("/health").await, StatusCode::OK).await;
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_count_earlier_requests() {
    let app = spawn_app(Backend::Sqlite).await;
    // Requests made before anyone scraped /metrics must be counted too.
    expect_json(app.get("/health").await, StatusCode::OK).await;
    let _ = app.get("/api/nope").await;

    let resp = app.get("/metrics").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = resp.headers()[reqwest::header::CONTENT_TYPE].to_str().expect("ascii").to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = resp.text().await.expect("body");
    assert!(text.contains("# TYPE confab_http_requests_total counter"), "{text}");
    let health_line = text
        .lines()
        .find(|l| {
            l.starts_with("confab_http_requests_total{")
                && l.contains(r#"route="/health""#)
                && l.contains(r#"status="200""#)
        })
        .unwrap_or_else(|| panic!("no counter for GET /health: {text}"));
    let count: f64 = health_line.rsplit(' ').next().and_then(|n| n.parse().ok()).expect("a sample value");
    assert!(count >= 1.0, "{health_line}");
    // Labels stay low-cardinality: unknown paths are one route.
    assert!(text.contains(r#"route="/api/other""#), "{text}");
    assert!(!text.contains("/api/nope"), "{text}");
}

/// What a dashboard and its alerts read exists from the first scrape, at zero where nothing
/// happened yet: the process, the build, readiness, close reasons, errors.
#[tokio::test]
async fn metrics_exist_from_the_first_scrape_with_process_build_and_readiness() {
    let app = spawn_app(Backend::Sqlite).await;
    let text = app.get("/metrics").await.text().await.expect("body");
    let value = |series: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("no series {series} in:\n{text}"));
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("bad sample: {line}"))
    };
    assert!(value("process_open_fds") > 0.0);
    assert!(value("process_resident_memory_bytes") > 1_000_000.0);
    assert!(value("process_start_time_seconds") > 1.7e9);
    let _ = value("process_cpu_seconds_total");
    assert!((value("confab_ready") - 1.0).abs() < f64::EPSILON);
    assert!((value("confab_database_up") - 1.0).abs() < f64::EPSILON);
    assert!(
        text.lines().any(|l| l.starts_with("confab_build_info{") && l.contains(r#"version=""#) && l.ends_with(" 1"))
    );
    for series in [
        r#"confab_ws_sessions_closed_total{reason="slow"}"#,
        r#"confab_messages_rejected_total{reason="rate_limited"}"#,
        r#"confab_store_errors_total{query="append_messages"}"#,
        r#"confab_ws_sessions_opened_total{transport="socketio"}"#,
        r#"confab_chat_rate_limited_total{command="send_message"}"#,
        r#"confab_rooms_refused_total{reason="too_many_rooms"}"#,
        "confab_messages_received_total",
        "confab_gap_repaired_messages_total",
        "confab_message_ack_duration_seconds_count",
        "confab_store_sqlite_wal_pages",
    ] {
        // Present (at zero in a process of its own; other tests' apps share this recorder).
        assert!(value(series) >= 0.0, "{series}");
    }
}

/// With `metrics_listen`, metrics are served there only: the public port says 404, not the
/// web client's page.
#[tokio::test]
async fn metrics_on_their_own_listener_are_not_on_the_public_one() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.metrics_listen = Some("127.0.0.1:0".into())).await;
    let public = app.get("/metrics").await;
    assert_eq!(public.status(), StatusCode::NOT_FOUND);
    let addr = app.metrics_addr.expect("metrics listener");
    let private = app.client.get(format!("http://{addr}/metrics")).send().await.expect("GET metrics");
    assert_eq!(private.status(), StatusCode::OK);
    assert!(private.text().await.expect("body").contains("confab_ready 1"));
}

#[tokio::test]
async fn the_openapi_document_lists_every_rest_route_with_bearer_auth() {
    let app = spawn_app(Backend::Sqlite).await;
    let spec = expect_json(app.get("/api/openapi.json").await, StatusCode::OK).await;

    assert!(spec["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", spec["openapi"]);
    assert_eq!(spec["servers"][0]["url"], "/api");
    let routes = [
        ("/auth/register", "post", false),
        ("/auth/login", "post", false),
        ("/auth/refresh", "post", false),
        ("/auth/logout", "post", false),
        ("/me", "get", true),
        ("/messages/{room}", "get", true),
        ("/rooms", "get", true),
        ("/rooms", "post", true),
        ("/rooms/{room}", "get", true),
        ("/rooms/{room}/members", "get", true),
        ("/rooms/{room}/members", "post", true),
        ("/rooms/{room}/members/{user_id}", "delete", true),
        ("/rooms/{room}/bans", "get", true),
        ("/rooms/{room}/bans", "post", true),
        ("/rooms/{room}/bans/{user_id}", "delete", true),
        ("/rooms/{room}", "patch", true),
        ("/rooms/{room}/archive", "post", true),
        ("/rooms/{room}/archive", "delete", true),
        ("/rooms/{room}/mutes", "post", true),
        ("/rooms/{room}/mutes/{user_id}", "delete", true),
        ("/dm/{user_id}", "post", true),
        ("/rooms/{room}/messages/{message_id}", "delete", true),
        ("/rooms/{room}/messages/{message_id}", "patch", true),
        ("/me", "patch", true),
        ("/admin/invites", "post", true),
        ("/admin/audit", "get", true),
        ("/rooms/{room}/read", "put", true),
        ("/search", "get", true),
        ("/rooms/{room}/messages/{message_id}/reactions", "post", true),
        ("/rooms/{room}/messages/{message_id}/reactions/{emoji}", "delete", true),
    ];
    let paths = spec["paths"].as_object().expect("paths");
    for (path, method, authed) in routes {
        let op = &spec["paths"][path][method];
        assert!(op.is_object(), "{method} {path} missing; paths: {:?}", paths.keys().collect::<Vec<_>>());
        assert_eq!(op["security"].is_array(), authed, "{method} {path} security: {}", op["security"]);
    }
    let distinct: std::collections::BTreeSet<&str> = routes.iter().map(|(p, _, _)| *p).collect();
    assert_eq!(paths.len(), distinct.len(), "unexpected paths: {:?}", paths.keys().collect::<Vec<_>>());

    let schemes = spec["components"]["securitySchemes"].as_object().expect("securitySchemes");
    let (name, scheme) = schemes
        .iter()
        .find(|(_, s)| s["type"] == "http" && s["scheme"].as_str().is_some_and(|v| v.eq_ignore_ascii_case("bearer")))
        .unwrap_or_else(|| panic!("no bearer scheme: {schemes:?}"));
    assert_eq!(scheme["bearerFormat"], "JWT");
    let me_security = &spec["paths"]["/me"]["get"]["security"][0];
    assert!(me_security.get(name).is_some(), "/me uses {me_security}, not {name}");

    // The history endpoint documents its parameters.
    let params = spec["paths"]["/messages/{room}"]["get"]["parameters"].as_array().expect("parameters");
    let names: Vec<&str> = params.iter().filter_map(|p| p["name"].as_str()).collect();
    for expected in ["room", "limit", "before"] {
        assert!(names.contains(&expected), "{expected} not in {names:?}");
    }
}

#[tokio::test]
async fn the_api_docs_are_an_html_page() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut resp = app.get("/api/docs").await;
    if resp.status().is_redirection() {
        let location = resp.headers()[reqwest::header::LOCATION].to_str().expect("ascii").to_owned();
        let path = if location.starts_with('/') { location } else { format!("/api/docs/{location}") };
        resp = app.get(&path).await;
    }
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = resp.headers()[reqwest::header::CONTENT_TYPE].to_str().expect("ascii").to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = resp.text().await.expect("body");
    assert!(html.to_ascii_lowercase().contains("swagger"), "{html}");
    assert!(html.contains("/auth/register"), "the page carries the API's spec: {html}");
}
