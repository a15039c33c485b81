//! The per-IP auth rate limit (`limits.auth_per_minute`): 429 with `Retry-After` and the usual
//! JSON error body, shared by every auth endpoint, not applied to the rest of the API.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Backend, PASSWORD, expect_error, expect_json, spawn_app_with};

#[tokio::test]
async fn auth_requests_over_the_limit_get_429_with_retry_after() {
    let app = spawn_app_with(Backend::Sqlite, |cfg| cfg.limits.auth_per_minute = 3).await;

    // Three requests of any kind and outcome use up the minute's budget.
    let session = app.register("henry@example.com").await;
    expect_error(
        app.login_response("henry@example.com", "wrong password").await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    app.login("henry@example.com", PASSWORD).await;

    for resp in [
        app.login_response("henry@example.com", PASSWORD).await,
        app.post_json("/api/auth/register", &json!({ "email": "ivy@example.com", "password": PASSWORD })).await,
        app.refresh(&session.refresh_token).await,
        app.logout(&session.refresh_token).await,
    ] {
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .map(|v| v.to_str().expect("ascii").to_owned())
            .expect("429 carries Retry-After");
        let seconds: u64 =
            retry_after.parse().unwrap_or_else(|_| panic!("Retry-After {retry_after:?} is whole seconds"));
        // 3 a minute: the next token comes within 20 s.
        assert!((1..=20).contains(&seconds), "Retry-After {seconds}");
        expect_error(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    }

    // The refused register did nothing.
    assert!(app.state.store.credentials_by_email("ivy@example.com").await.expect("query").is_none());
    // The rest of the API is not limited.
    for _ in 0..5 {
        expect_json(app.me(&session.token).await, StatusCode::OK).await;
    }
}
