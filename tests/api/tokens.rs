//! Access tokens: only unexpired HS256 tokens signed with the app's key, issued by and for
//! `confab`, for a live user, open `/api/me`. Tokens are forged with the key the test configured,
//! and a correctly forged one is accepted, so each refusal is for the reason under test.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    common::{Backend, both_backends},
    helpers::{TestApp, expect_error, expect_json, spawn_app},
};

both_backends!(forged_and_damaged_access_tokens_are_refused);

fn sign(claims: &Value, secret: &str, alg: Algorithm) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret.as_bytes())).expect("sign")
}

fn claims(sub: &str, email: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({ "sub": sub, "email": email, "iat": now, "exp": now + 600, "iss": "confab", "aud": "confab" })
}

async fn expect_refused(app: &TestApp, token: &str, what: &str) {
    let resp = app.me(token).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what} was not refused");
    expect_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

async fn forged_and_damaged_access_tokens_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let secret = app.jwt_secret.clone().expect("the test app has a configured key");
    let session = app.register("grace@example.com").await;
    let (sub, email) = (session.user_id.as_str(), "grace@example.com");

    // Control: the forging is right, so the refusals below are for what each one changes.
    let good = sign(&claims(sub, email), &secret, Algorithm::HS256);
    let me = expect_json(app.me(&good).await, StatusCode::OK).await;
    assert_eq!(me["id"], sub);

    let now = chrono::Utc::now().timestamp();
    let mut expired = claims(sub, email);
    expired["iat"] = json!(now - 3600);
    expired["exp"] = json!(now - 60);
    expect_refused(&app, &sign(&expired, &secret, Algorithm::HS256), "an expired token").await;

    expect_refused(
        &app,
        &sign(&claims(sub, email), "another-secret-another-secret-123456", Algorithm::HS256),
        "another key",
    )
    .await;
    expect_refused(&app, &sign(&claims(sub, email), &secret, Algorithm::HS512), "HS512 with the right key").await;

    for (claim, value) in [("iss", "someone-else"), ("aud", "someone-else")] {
        let mut wrong = claims(sub, email);
        wrong[claim] = json!(value);
        expect_refused(&app, &sign(&wrong, &secret, Algorithm::HS256), &format!("wrong {claim}")).await;
    }
    for claim in ["exp", "sub", "iss", "aud", "iat"] {
        let mut missing = claims(sub, email);
        missing.as_object_mut().expect("object").remove(claim);
        expect_refused(&app, &sign(&missing, &secret, Algorithm::HS256), &format!("no {claim}")).await;
    }
    let stranger = uuid::Uuid::new_v4().to_string();
    expect_refused(&app, &sign(&claims(&stranger, email), &secret, Algorithm::HS256), "an unknown user").await;

    // Tampering: the real token with a changed payload keeps its now-wrong signature.
    let parts: Vec<&str> = session.token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts");
    let mut payload: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("base64")).expect("json");
    payload["exp"] = json!(now + 365 * 24 * 3600);
    let tampered = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(payload.to_string()), parts[2]);
    expect_refused(&app, &tampered, "a tampered payload").await;
    // Change the signature's first character (the last one may carry only padding bits).
    let flipped = if parts[2].starts_with('A') { "B" } else { "A" };
    let bad_signature = format!("{}.{}.{flipped}{}", parts[0], parts[1], &parts[2][1..]);
    expect_refused(&app, &bad_signature, "a damaged signature").await;

    // alg: none, with otherwise perfect claims and no signature.
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    expect_refused(&app, &format!("{none_header}.{}.", parts[1]), "alg none").await;

    expect_refused(&app, "garbage", "garbage").await;
    expect_refused(&app, "", "an empty token").await;

    // No credentials, or the wrong scheme.
    expect_error(app.get("/api/me").await, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let basic =
        app.client.get(app.url("/api/me")).basic_auth("grace@example.com", Some("pw")).send().await.expect("send");
    expect_error(basic, StatusCode::UNAUTHORIZED, "unauthorized").await;

    // The real token was fine all along.
    expect_json(app.me(&session.token).await, StatusCode::OK).await;
}
