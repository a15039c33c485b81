//! Full-text search (`GET /api/search`) on both backends: words found whatever their case, the
//! last word as a prefix, the index following edits and deletions, pages that cover every
//! match once, the room access rules, and hostile or oversized queries answered cleanly.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    common::{Backend, both_backends},
    helpers::{Session, TestApp, expect_error, expect_json, spawn_chat_node},
    ws::connect_user,
};

both_backends!(
    search_finds_every_word_and_follows_edits_and_deletions,
    search_pages_cover_every_match_once_newest_first,
    search_never_shows_a_room_i_may_not_read,
    hostile_and_oversized_searches_are_answered_cleanly,
    searches_are_rate_limited_per_user,
);

async fn search(app: &TestApp, who: &Session, query: &[(&str, &str)]) -> reqwest::Response {
    app.client.get(app.url("/api/search")).query(query).bearer_auth(&who.token).send().await.expect("request")
}

/// The contents (snippets) found for `q`, newest first.
async fn found(app: &TestApp, who: &Session, q: &str) -> Vec<String> {
    let body = expect_json(search(app, who, &[("q", q)]).await, StatusCode::OK).await;
    body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["snippet"].as_str().expect("snippet").to_owned())
        .collect()
}

async fn call(app: &TestApp, method: Method, path: &str, who: &Session, body: Option<Value>) -> reqwest::Response {
    let mut req = app.client.request(method, app.url(path)).bearer_auth(&who.token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.expect("request")
}

async fn search_finds_every_word_and_follows_edits_and_deletions(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (ann, mut ws) = connect_user(&app, "ann@example.com").await;
    ws.join("general").await;
    let mut ids = Vec::new();
    for text in [
        "deploy the prod server tonight",
        "lunch at noon?",
        "Deploying again tomorrow",
        "prod is DOWN",
        "nothing to see",
    ] {
        ids.push(ws.send("general", text).await.id);
    }
    assert_eq!(found(&app, &ann, "deploy").await, ["Deploying again tomorrow", "deploy the prod server tonight"]);
    assert_eq!(found(&app, &ann, "PROD deploy").await, ["deploy the prod server tonight"], "every word");
    assert_eq!(found(&app, &ann, "down").await, ["prod is DOWN"], "any case");
    assert!(found(&app, &ann, "deploy lunch").await.is_empty());
    // A hit says where it is.
    let body = expect_json(search(&app, &ann, &[("q", "lunch")]).await, StatusCode::OK).await;
    let hit = &body["results"][0];
    assert_eq!(
        (&hit["id"], &hit["room"], &hit["seq"], &hit["senderName"]),
        (&json!(ids[1]), &json!("general"), &json!(2), &json!("ann"))
    );
    assert!(body.get("next").is_none(), "one page: {body}");

    // Edited: found by the new words only. Deleted: not found at all.
    let path = format!("/api/rooms/general/messages/{}", ids[1]);
    let edited = call(&app, Method::PATCH, &path, &ann, Some(json!({ "content": "dinner at eight" }))).await;
    assert_eq!(edited.status(), StatusCode::NO_CONTENT);
    assert!(found(&app, &ann, "lunch").await.is_empty(), "the old text is out of the index");
    assert_eq!(found(&app, &ann, "dinner").await, ["dinner at eight"]);
    let body = expect_json(search(&app, &ann, &[("q", "dinner")]).await, StatusCode::OK).await;
    assert!(body["results"][0]["editedAt"].is_string(), "{body}");
    let path = format!("/api/rooms/general/messages/{}", ids[3]);
    assert_eq!(call(&app, Method::DELETE, &path, &ann, None).await.status(), StatusCode::NO_CONTENT);
    assert!(found(&app, &ann, "down").await.is_empty(), "a deleted message is never found");
    assert_eq!(found(&app, &ann, "prod").await, ["deploy the prod server tonight"]);

    // A long message comes back as a piece around the match.
    let long = format!("{} the needle is here {}", "hay ".repeat(100), "stack ".repeat(100));
    ws.send("general", &long).await;
    let snippet = found(&app, &ann, "needle").await.remove(0);
    assert!(snippet.contains("the needle is here") && snippet.starts_with('…') && snippet.ends_with('…'), "{snippet}");
    assert!(snippet.chars().count() <= 162, "{snippet}");
}

async fn search_pages_cover_every_match_once_newest_first(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (ann, mut ws) = connect_user(&app, "ann@example.com").await;
    ws.join("general").await;
    ws.join("random").await;
    for i in 0..25 {
        let room = if i % 2 == 0 { "general" } else { "random" };
        ws.send(room, &format!("needle number {i}")).await;
        ws.send(room, &format!("hay number {i}")).await;
    }
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut query = vec![("q", "needle".to_owned()), ("limit", "10".to_owned())];
        if let Some(b) = &before {
            query.push(("before", b.clone()));
        }
        let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let body = expect_json(search(&app, &ann, &query).await, StatusCode::OK).await;
        pages += 1;
        for r in body["results"].as_array().expect("results") {
            seen.push(r["snippet"].as_str().expect("snippet").to_owned());
        }
        match body.get("next").and_then(Value::as_str) {
            Some(next) => before = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10, "pages never end");
    }
    let expected: Vec<String> = (0..25).rev().map(|i| format!("needle number {i}")).collect();
    assert_eq!(seen, expected, "every match once, newest first, across both rooms");
    assert_eq!(pages, 3);
    // One room only.
    let body =
        expect_json(search(&app, &ann, &[("q", "needle"), ("room", "random"), ("limit", "50")]).await, StatusCode::OK)
            .await;
    let rooms: Vec<&Value> = body["results"].as_array().expect("results").iter().map(|r| &r["room"]).collect();
    assert_eq!(rooms.len(), 12);
    assert!(rooms.iter().all(|r| **r == "random"));
}

async fn search_never_shows_a_room_i_may_not_read(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (ann, mut ann_ws) = connect_user(&app, "ann@example.com").await;
    let (carol, _carol_ws) = connect_user(&app, "carol@example.com").await;
    let (admin, _admin_ws) = connect_user(&app, "admin@example.com").await;
    assert!(app.state.store.set_admin("admin@example.com", true).await.expect("promote"));
    let created =
        call(&app, Method::POST, "/api/rooms", &ann, Some(json!({ "name": "inner", "kind": "private" }))).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    ann_ws.join("inner").await;
    ann_ws.send("inner", "the secret plan").await;
    let created = call(&app, Method::POST, "/api/rooms", &ann, Some(json!({ "name": "lobby" }))).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    ann_ws.join("lobby").await;
    ann_ws.send("lobby", "the lobby plan").await;
    ann_ws.join("open").await;
    ann_ws.send("open", "the open plan").await;
    let carol_id = carol.user_id.clone();
    let ban = call(&app, Method::POST, "/api/rooms/lobby/bans", &ann, Some(json!({ "userId": carol_id }))).await;
    assert_eq!(ban.status(), StatusCode::NO_CONTENT);

    let mut mine = found(&app, &ann, "plan").await;
    mine.sort();
    assert_eq!(mine, ["the lobby plan", "the open plan", "the secret plan"]);
    // Carol: not a member of the private room, banned from the lobby; the public room is hers
    // to read without joining.
    assert_eq!(found(&app, &carol, "plan").await, ["the open plan"]);
    assert!(found(&app, &carol, "secret").await.is_empty());
    expect_error(search(&app, &carol, &[("q", "secret"), ("room", "inner")]).await, StatusCode::NOT_FOUND, "not_found")
        .await;
    expect_error(search(&app, &carol, &[("q", "plan"), ("room", "lobby")]).await, StatusCode::NOT_FOUND, "not_found")
        .await;
    expect_error(search(&app, &carol, &[("q", "plan"), ("room", "nowhere")]).await, StatusCode::NOT_FOUND, "not_found")
        .await;
    // An administrator reads every room.
    assert_eq!(found(&app, &admin, "secret").await, ["the secret plan"]);
}

async fn hostile_and_oversized_searches_are_answered_cleanly(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (ann, mut ws) = connect_user(&app, "ann@example.com").await;
    ws.join("general").await;
    ws.send("general", "drop table messages").await;
    // Query syntax of either engine, and SQL, are only words here.
    for q in [
        "'; DROP TABLE messages; --",
        "\"unbalanced",
        "NEAR(drop table)",
        "drop OR table",
        "drop AND NOT table",
        "messages:*",
        "drop & !table | x",
        "\\x00 drop",
    ] {
        let resp = search(&app, &ann, &[("q", q)]).await;
        assert_eq!(resp.status(), StatusCode::OK, "{q:?}: {}", resp.text().await.unwrap_or_default());
    }
    assert_eq!(found(&app, &ann, "'; DROP TABLE messages; --").await, ["drop table messages"]);
    for q in ["*** --- ***", ""] {
        let body = expect_json(search(&app, &ann, &[("q", q)]).await, StatusCode::OK).await;
        assert_eq!(body, json!({ "results": [] }), "no words, nothing found: {q:?}");
    }
    // Many words, as long as they fit in 200 characters: every one must be there.
    let many = "drop table messages a b c d e f g h i j k l m n o p q r s t u v w x y z";
    assert!(found(&app, &ann, many).await.is_empty());
    for (query, code) in [
        (vec![("q", "drop"), ("limit", "0")], ""),
        (vec![("q", "drop"), ("limit", "51")], ""),
        (vec![("q", "drop"), ("before", "not-a-uuid")], ""),
        (vec![("q", "drop"), ("room", "no such room")], ""),
    ] {
        let resp = search(&app, &ann, &query).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{query:?}");
        if !code.is_empty() {
            expect_error(resp, StatusCode::BAD_REQUEST, code).await;
        }
    }
    let huge = "x".repeat(201);
    assert_eq!(search(&app, &ann, &[("q", huge.as_str())]).await.status(), StatusCode::BAD_REQUEST);
    let very_huge = "word ".repeat(1_600);
    let resp = search(&app, &ann, &[("q", very_huge.as_str())]).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // The store is fine after all that.
    assert_eq!(found(&app, &ann, "drop").await, ["drop table messages"]);
}

async fn searches_are_rate_limited_per_user(backend: Backend) {
    let app = spawn_chat_node(backend, |c| c.limits.searches_per_minute = 3).await;
    let ann = app.register("ann@example.com").await;
    let bob = app.register("bob@example.com").await;
    for _ in 0..3 {
        assert_eq!(search(&app, &ann, &[("q", "hello")]).await.status(), StatusCode::OK);
    }
    let refused = search(&app, &ann, &[("q", "hello")]).await;
    assert!(refused.headers().contains_key("retry-after"));
    expect_error(refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(search(&app, &bob, &[("q", "hello")]).await.status(), StatusCode::OK, "each user has their own budget");
    // Counted (the recorder is shared by the tests of this binary: at least this one).
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    let refusals: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"confab_searches_total{outcome="rate_limited"}"#)?.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(refusals >= 1.0, "no rate_limited searches counted");
}
