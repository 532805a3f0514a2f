//! The embedded page and its assets, the sign-in form and `/login?token=`, the session's own
//! API (`/api/session`, `/api/logout`), and the headers every response carries (no framing, no
//! source but the console itself).

use super::{
    Shared,
    auth::{COOKIE, Principal, SESSION_TTL},
};
use axum::{
    Extension, Form, Json,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};

const INDEX: &str = include_str!("assets/index.html");
const LOGIN: &str = include_str!("assets/login.html");
const APP_JS: &str = include_str!("assets/app.js");
const DAG_JS: &str = include_str!("assets/dag.js");
const RUNS_JS: &str = include_str!("assets/runs.js");
const DLQ_JS: &str = include_str!("assets/dlq.js");
const FLEET_JS: &str = include_str!("assets/fleet.js");
const BOOT_JS: &str = include_str!("assets/boot.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// `/`: the console once signed in, else the way to the sign-in form.
pub async fn index(State(console): State<Shared>, headers: HeaderMap) -> Response {
    match console.auth.principal(&headers) {
        Ok(_) => Html(INDEX).into_response(),
        Err(_) => Redirect::to("/login").into_response(),
    }
}

/// `?token=` on `/login`.
#[derive(Deserialize)]
pub struct TokenForm {
    token: Option<String>,
}

/// `GET /login`: the sign-in form, or with `?token=TOKEN` a sign-in (for links).
pub async fn login_get(State(console): State<Shared>, Query(q): Query<TokenForm>) -> Response {
    match q.token {
        Some(token) => sign_in(&console, &token),
        None => login_page(StatusCode::OK, ""),
    }
}

/// `POST /login` from the sign-in form.
pub async fn login_post(State(console): State<Shared>, Form(f): Form<TokenForm>) -> Response {
    sign_in(&console, f.token.as_deref().unwrap_or_default())
}

fn sign_in(console: &Shared, token: &str) -> Response {
    match console.auth.sign_in(token.trim()) {
        Ok((id, _)) => {
            let cookie = format!(
                "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
                SESSION_TTL.as_secs()
            );
            let mut response = Redirect::to("/").into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, v);
            }
            response
        }
        Err(why) => login_page(StatusCode::UNAUTHORIZED, why),
    }
}

fn login_page(status: StatusCode, error: &str) -> Response {
    let page = LOGIN.replace("{{error}}", error);
    (status, Html(page)).into_response()
}

/// `GET /assets/FILE`: the page's script and style.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "dag.js" => (DAG_JS, "text/javascript; charset=utf-8"),
        "runs.js" => (RUNS_JS, "text/javascript; charset=utf-8"),
        "dlq.js" => (DLQ_JS, "text/javascript; charset=utf-8"),
        "fleet.js" => (FLEET_JS, "text/javascript; charset=utf-8"),
        "boot.js" => (BOOT_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// `GET /api/session`: the caller's role, name, and the CSRF token its actions must send.
pub async fn session(
    State(console): State<Shared>,
    Extension(who): Extension<Principal>,
) -> Json<Value> {
    Json(json!({
        "role": who.role,
        "by": who.by,
        "csrf": who.csrf,
        "namespace": console.broker.namespace,
        "live": console.live.subscribed(),
    }))
}

/// `POST /api/logout`: ends the browser session and clears its cookie.
pub async fn logout(State(console): State<Shared>, headers: HeaderMap) -> Response {
    console.auth.sign_out(&headers);
    let clear = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    let mut response = Json(json!({"signed_out": true})).into_response();
    if let Ok(v) = HeaderValue::from_str(&clear) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// Headers on every response: the page may load nothing from elsewhere and may not be framed;
/// API answers are never cached.
pub async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}
