//! `POST /api/auth/{register,login,refresh,logout}`.

use poem::Request;
use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};

use super::{ApiTags, UserView};
use crate::{
    auth::Signup,
    domain::Password,
    http::{AppState, client_ip, error::ApiError},
};

checked_string!(
    /// A new account's email: `domain::Email`'s rules, internationalized addresses included.
    NewEmail,
    "string(email)",
    |schema| {
        schema.format = Some("email");
        schema.max_length = Some(254);
    }
);

checked_string!(
    /// A new password: `domain::Password`'s length rules, in characters.
    NewPassword,
    "string(password)",
    |schema| {
        schema.format = Some("password");
        schema.min_length = Some(Password::MIN_CHARS);
        schema.max_length = Some(Password::MAX_CHARS);
    }
);

optional_text!(
    /// A display name: 1 to 32 characters after tidying.
    DisplayNameInput,
    crate::domain::DisplayName::MAX_CHARS
);

optional_text!(
    /// An invitation code.
    InviteCodeInput,
    64
);

/// Email and a new password.
#[derive(Object)]
#[oai(example, rename_all = "camelCase")]
struct RegisterBody {
    /// Any valid address; stored trimmed, lowercased and NFKC-normalized. Never shown to
    /// other users (except to the original platform's Socket.IO clients: see PROTOCOL.md).
    email: NewEmail,
    /// 8 to 1024 characters.
    password: NewPassword,
    /// What rooms show of me, at most 32 characters; tidied (control and invisible characters
    /// dropped, NFKC, runs of white space made one space). Absent or empty: the address's part
    /// before `@`.
    display_name: DisplayNameInput,
    /// Required when the server registers by invitation (`auth.registration = "invite"`).
    invite_code: InviteCodeInput,
}

impl poem_openapi::types::Example for RegisterBody {
    fn example() -> Self {
        Self {
            email: NewEmail("alice@example.com".into()),
            password: NewPassword("correct horse battery".into()),
            display_name: DisplayNameInput(Some("Alice".into())),
            invite_code: InviteCodeInput(None),
        }
    }
}

/// Email and password.
#[derive(Object)]
#[oai(example)]
struct CredentialsBody {
    email: String,
    password: String,
}

impl poem_openapi::types::Example for CredentialsBody {
    fn example() -> Self {
        Self { email: "alice@example.com".into(), password: "correct horse battery".into() }
    }
}

/// A refresh token from an earlier login, register or refresh.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
struct RefreshBody {
    refresh_token: String,
}

/// A signed-in session.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
struct SessionBody {
    /// Access token (JWT): send as `Authorization: Bearer <token>`.
    token: String,
    /// Opaque refresh token; each use returns a new one and spends this one.
    refresh_token: String,
    /// Seconds until `token` expires.
    expires_in: u64,
    user: UserView,
}

/// A rotated token pair.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
struct TokensBody {
    token: String,
    refresh_token: String,
    expires_in: u64,
}

#[derive(ApiResponse)]
enum LogoutResponse {
    /// The refresh token's family is revoked.
    #[oai(status = 204)]
    Done,
}

pub struct AuthApi;

#[OpenApi(prefix_path = "/auth", tag = "ApiTags::Auth")]
impl AuthApi {
    /// Create an account and sign in.
    ///
    /// Rate limited per client IP (`limits.auth_per_minute`). As `auth.registration` says:
    /// open to anyone (default), by invitation code (403 `invalid_invite` without a live one),
    /// or closed (403 `registration_closed`).
    #[oai(path = "/register", method = "post")]
    async fn register(&self, req: &Request, body: Json<RegisterBody>) -> Result<Json<SessionBody>, ApiError> {
        let state = limited(req)?;
        let signup =
            Signup { display_name: body.display_name.0.as_deref(), invite_code: body.invite_code.0.as_deref() };
        let policy = state.config.auth.registration;
        let (user, tokens) =
            counted("register", state.auth.register(&body.email.0, &body.password.0, signup, policy).await)?;
        Ok(Json(SessionBody {
            token: tokens.access,
            refresh_token: tokens.refresh,
            expires_in: tokens.expires_in,
            user: user.into(),
        }))
    }

    /// Sign in with email and password.
    ///
    /// An unknown email and a wrong password get the same answer, in the same time.
    #[oai(path = "/login", method = "post")]
    async fn login(&self, req: &Request, body: Json<CredentialsBody>) -> Result<Json<SessionBody>, ApiError> {
        let state = limited(req)?;
        let (user, tokens) = counted("login", state.auth.login(&body.email, &body.password).await)?;
        Ok(Json(SessionBody {
            token: tokens.access,
            refresh_token: tokens.refresh,
            expires_in: tokens.expires_in,
            user: user.into(),
        }))
    }

    /// Exchange a refresh token for a new access token and a new refresh token.
    ///
    /// The presented token is spent. Presenting a spent token again revokes every token of its
    /// family (it was probably stolen), signing that device out.
    #[oai(path = "/refresh", method = "post")]
    async fn refresh(&self, req: &Request, body: Json<RefreshBody>) -> Result<Json<TokensBody>, ApiError> {
        let state = limited(req)?;
        let tokens = counted("refresh", state.auth.refresh(&body.refresh_token).await)?;
        Ok(Json(TokensBody { token: tokens.access, refresh_token: tokens.refresh, expires_in: tokens.expires_in }))
    }

    /// Sign out: revoke the refresh token and its family.
    #[oai(path = "/logout", method = "post")]
    async fn logout(&self, req: &Request, body: Json<RefreshBody>) -> Result<LogoutResponse, ApiError> {
        let state = limited(req)?;
        counted("logout", state.auth.logout(&body.refresh_token).await)?;
        Ok(LogoutResponse::Done)
    }
}

/// Counts an auth request's outcome (`ok` or the error code) in `confab_auth_requests_total`.
fn counted<T, E: Into<ApiError>>(action: &'static str, result: Result<T, E>) -> Result<T, ApiError> {
    let result = result.map_err(Into::into);
    let outcome = match &result {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.code().to_owned(),
    };
    metrics::counter!(crate::telemetry::AUTH_REQUESTS, "action" => action, "outcome" => outcome).increment(1);
    result
}

/// The app state, after taking one token from this client's auth bucket.
fn limited(req: &Request) -> Result<&AppState, ApiError> {
    let state = req.data::<AppState>().ok_or_else(ApiError::internal)?;
    let ip = client_ip(req, &state.trusted_proxies);
    state.auth_limiter.check(&ip).map_err(|wait| {
        metrics::counter!(crate::telemetry::AUTH_RATE_LIMITED).increment(1);
        ApiError::rate_limited(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
    })?;
    Ok(state)
}
