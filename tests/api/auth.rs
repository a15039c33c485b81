//! Accounts: register, login, `/api/me`, refresh-token rotation and reuse detection, logout,
//! duplicate emails, identical answers for unknown emails and wrong passwords, disabled users.

use confab::config::Argon2Config;
use reqwest::StatusCode;
use serde_json::json;

use crate::{
    common::{Backend, both_backends},
    helpers::{PASSWORD, expect_error, expect_json, spawn_app, spawn_app_with},
};

both_backends!(
    register_then_me_then_login_then_refresh,
    refreshing_rotates_the_token_and_spends_the_old_one,
    reusing_a_spent_refresh_token_revokes_its_whole_family,
    logout_revokes_the_refresh_token,
    an_email_is_taken_whatever_its_case_or_surrounding_spaces,
    unknown_email_and_wrong_password_get_the_same_401,
    a_disabled_user_is_refused_even_with_a_live_token,
    concurrent_requests_each_get_their_own_account,
    default_argon2_parameters_are_owasps_recommendation,
    concurrent_registrations_of_one_email_make_one_account,
    a_refresh_token_used_twice_at_once_rotates_once_and_revokes_the_family,
);

async fn register_then_me_then_login_then_refresh(backend: Backend) {
    let app = spawn_app(backend).await;

    let registered = app.register("alice@example.com").await;
    assert_eq!(registered.email, "alice@example.com");
    assert!(registered.body["expiresIn"].as_u64().is_some_and(|s| s > 0), "{}", registered.body);
    assert!(registered.body["user"]["createdAt"].is_string(), "{}", registered.body);

    let me = expect_json(app.me(&registered.token).await, StatusCode::OK).await;
    assert_eq!(me["id"], registered.user_id.as_str());
    assert_eq!(me["email"], "alice@example.com");
    assert_eq!(me["createdAt"], registered.body["user"]["createdAt"]);

    let login = app.login("alice@example.com", PASSWORD).await;
    assert_eq!(login.user_id, registered.user_id);
    assert_ne!(login.refresh_token, registered.refresh_token, "every login starts a new token family");
    let me = expect_json(app.me(&login.token).await, StatusCode::OK).await;
    assert_eq!(me["id"], registered.user_id.as_str());

    let refreshed = expect_json(app.refresh(&login.refresh_token).await, StatusCode::OK).await;
    let keys: Vec<&str> = refreshed.as_object().expect("object").keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 3, "refresh answers token, refreshToken, expiresIn: {refreshed}");
    assert!(refreshed["expiresIn"].as_u64().is_some_and(|s| s > 0), "{refreshed}");
    let token = refreshed["token"].as_str().expect("token");
    let me = expect_json(app.me(token).await, StatusCode::OK).await;
    assert_eq!(me["email"], "alice@example.com");
}

async fn refreshing_rotates_the_token_and_spends_the_old_one(backend: Backend) {
    let app = spawn_app(backend).await;
    let session = app.register("rotate@example.com").await;

    let first = expect_json(app.refresh(&session.refresh_token).await, StatusCode::OK).await;
    let rotated = first["refreshToken"].as_str().expect("refreshToken").to_owned();
    assert_ne!(rotated, session.refresh_token);

    // The new token is good exactly once more; the original is spent.
    let second = expect_json(app.refresh(&rotated).await, StatusCode::OK).await;
    assert_ne!(second["refreshToken"], rotated.as_str());
    assert_ne!(second["refreshToken"], session.refresh_token.as_str());
    expect_error(app.refresh(&session.refresh_token).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

async fn reusing_a_spent_refresh_token_revokes_its_whole_family(backend: Backend) {
    let app = spawn_app(backend).await;
    let session = app.register("reuse@example.com").await;
    let other_device = app.login("reuse@example.com", PASSWORD).await;

    let rotated = expect_json(app.refresh(&session.refresh_token).await, StatusCode::OK).await;
    let newer = rotated["refreshToken"].as_str().expect("refreshToken");

    // Someone replays the spent token: refused, and the legitimate newer token dies with it.
    expect_error(app.refresh(&session.refresh_token).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
    expect_error(app.refresh(newer).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
    expect_error(app.logout(newer).await, StatusCode::UNAUTHORIZED, "unauthorized").await;

    // Another family (another login) is untouched.
    let other = expect_json(app.refresh(&other_device.refresh_token).await, StatusCode::OK).await;
    assert!(other["token"].is_string());
}

async fn logout_revokes_the_refresh_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let session = app.register("bye@example.com").await;

    let resp = app.logout(&session.refresh_token).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.bytes().await.expect("body").is_empty(), "204 has no body");

    expect_error(app.refresh(&session.refresh_token).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
    expect_error(app.logout(&session.refresh_token).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
    expect_error(app.logout("not-a-token-at-all").await, StatusCode::UNAUTHORIZED, "unauthorized").await;

    // Signing in again works: logout ended a session, not the account.
    let again = app.login("bye@example.com", PASSWORD).await;
    assert_eq!(again.user_id, session.user_id);
}

async fn an_email_is_taken_whatever_its_case_or_surrounding_spaces(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = app.register("  Carol@Example.COM ").await;
    assert_eq!(first.email, "carol@example.com", "stored lowercased and trimmed");

    for variant in ["carol@example.com", "CAROL@EXAMPLE.COM", " carol@example.com", "carol@example.com\t"] {
        let resp = app.post_json("/api/auth/register", &json!({ "email": variant, "password": PASSWORD })).await;
        expect_error(resp, StatusCode::CONFLICT, "email_taken").await;
    }
    // Any spelling signs in to the one account.
    let login = app.login("CaRoL@example.com ", PASSWORD).await;
    assert_eq!(login.user_id, first.user_id);
}

async fn unknown_email_and_wrong_password_get_the_same_401(backend: Backend) {
    let app = spawn_app(backend).await;
    app.register("dave@example.com").await;

    let wrong_password = expect_error(
        app.login_response("dave@example.com", "not the password").await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    let unknown_email = expect_error(
        app.login_response("nobody@example.com", PASSWORD).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    assert_eq!(wrong_password, unknown_email, "the answers must not tell which check failed");
}

async fn a_disabled_user_is_refused_even_with_a_live_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let session = app.register("erin@example.com").await;
    expect_json(app.me(&session.token).await, StatusCode::OK).await;

    assert!(app.state.store.set_user_disabled("erin@example.com", true).await.expect("disable"));

    // The access token has not expired, but the account behind it is disabled.
    expect_error(app.me(&session.token).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
    expect_error(app.get_authed("/api/rooms", &session.token).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
    expect_error(app.login_response("erin@example.com", PASSWORD).await, StatusCode::FORBIDDEN, "account_disabled")
        .await;
    expect_error(app.refresh(&session.refresh_token).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // A wrong password still says nothing about the account's state.
    expect_error(
        app.login_response("erin@example.com", "wrong password").await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;

    // Re-enabled, it signs in again; its old refresh tokens stay revoked.
    assert!(app.state.store.set_user_disabled("erin@example.com", false).await.expect("enable"));
    let again = app.login("erin@example.com", PASSWORD).await;
    expect_json(app.me(&again.token).await, StatusCode::OK).await;
    expect_error(app.refresh(&session.refresh_token).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

/// Lookups that arrive together share one database query; each request must still get its
/// own account, and a disabled one among them must still be refused.
async fn concurrent_requests_each_get_their_own_account(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut sessions = Vec::new();
    for i in 0..12 {
        sessions.push(app.register(&format!("user{i}@example.com")).await);
    }
    assert!(app.state.store.set_user_disabled("user7@example.com", true).await.expect("disable"));
    for _ in 0..3 {
        let answers = futures_util::future::join_all(sessions.iter().map(|s| app.me(&s.token))).await;
        for (i, resp) in answers.into_iter().enumerate() {
            if i == 7 {
                expect_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
            } else {
                let me = expect_json(resp, StatusCode::OK).await;
                assert_eq!(me["email"], format!("user{i}@example.com"));
                assert_eq!(me["id"], sessions[i].user_id.as_str());
            }
        }
    }
}

async fn default_argon2_parameters_are_owasps_recommendation(backend: Backend) {
    let app = spawn_app_with(backend, |cfg| cfg.auth.argon2 = Argon2Config::default()).await;
    app.register("frank@example.com").await;
    let creds = app.state.store.credentials_by_email("frank@example.com").await.expect("query").expect("stored");
    assert!(creds.password_hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{}", creds.password_hash);
    assert!(!creds.password_hash.contains(PASSWORD));
    app.login("frank@example.com", PASSWORD).await;

    // The cheap test parameters really are what other tests use (and hashes carry their own).
    let cheap = spawn_app(backend).await;
    cheap.register("frank@example.com").await;
    let creds = cheap.state.store.credentials_by_email("frank@example.com").await.expect("query").expect("stored");
    assert!(creds.password_hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{}", creds.password_hash);
}

async fn concurrent_registrations_of_one_email_make_one_account(backend: Backend) {
    let app = spawn_app(backend).await;
    let emails = ["race@example.com", "RACE@example.com", " race@example.com", "race@EXAMPLE.com"];
    let bodies = emails.map(|email| json!({ "email": email, "password": PASSWORD }));
    let responses =
        futures_util::future::join_all(bodies.iter().map(|body| app.post_json("/api/auth/register", body))).await;
    let statuses: Vec<StatusCode> = responses.iter().map(reqwest::Response::status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::CONFLICT).count(), 3, "{statuses:?}");
    assert_eq!(app.state.store.list_users().await.expect("list").len(), 1);
}

async fn a_refresh_token_used_twice_at_once_rotates_once_and_revokes_the_family(backend: Backend) {
    let app = spawn_app(backend).await;
    let session = app.register("twice@example.com").await;

    let (a, b) = tokio::join!(app.refresh(&session.refresh_token), app.refresh(&session.refresh_token));
    let (a_status, b_status) = (a.status(), b.status());
    let (winner, loser) = match (a_status, b_status) {
        (StatusCode::OK, StatusCode::UNAUTHORIZED) => (a, b),
        (StatusCode::UNAUTHORIZED, StatusCode::OK) => (b, a),
        other => panic!("expected one 200 and one 401, got {other:?}"),
    };
    expect_error(loser, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let rotated = expect_json(winner, StatusCode::OK).await;
    // The second use counted as reuse of a spent token: the winner's new token is revoked too.
    let newer = rotated["refreshToken"].as_str().expect("refreshToken");
    expect_error(app.refresh(newer).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
}
