//! Who may use the console. Scripts send `Authorization: Bearer TOKEN`; a browser signs in once
//! with the token (the sign-in form, or `/login?token=TOKEN`) and gets an HttpOnly,
//! SameSite=Strict session cookie. Two roles: `read` sees everything (secrets masked), `operator`
//! may also act. A request that changes anything through a cookie must carry the session's CSRF
//! token in `X-CSRF-Token` (a bearer token is no ambient credential: it needs none).

use super::{Shared, error::ApiError, tokens::Tokens};
use axum::{
    extract::{Request, State},
    http::{HeaderMap, Method, StatusCode, header},
    middleware::Next,
    response::Response,
};
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// The session cookie's name.
pub const COOKIE: &str = "sf_console";
/// The header that carries the CSRF token of a cookie session.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a browser session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once (the oldest expired ones go first).
const MAX_SESSIONS: usize = 10_000;

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Look only.
    Read,
    /// Look and act.
    Operator,
}

impl Role {
    /// The role's name (`read`, `operator`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Operator => "operator",
        }
    }
}

/// The caller of one request.
#[derive(Clone, Debug)]
pub struct Principal {
    /// Its role.
    pub role: Role,
    /// Who it is in the audit trail: `console:operator`, `console:read`, `console:anonymous`.
    pub by: String,
    /// The CSRF token of its browser session (`None` for bearer tokens).
    pub csrf: Option<String>,
}

struct BrowserSession {
    role: Role,
    csrf: String,
    expires: Instant,
}

/// The tokens and the browser sessions signed in with them.
pub struct Auth {
    tokens: Tokens,
    sessions: Mutex<HashMap<String, BrowserSession>>,
}

impl Auth {
    /// Checks requests against `tokens`.
    pub fn new(tokens: Tokens) -> Self {
        Self {
            tokens,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Opens a browser session for `token`: its id and role, or why not.
    pub fn sign_in(&self, token: &str) -> Result<(String, Role), &'static str> {
        let role = self
            .tokens
            .role_of(token)
            .ok_or("That token is not one of this console's.")?;
        let id = random_token();
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            return Err("Too many open sessions: sign out elsewhere, or wait for them to expire.");
        }
        let session = BrowserSession {
            role,
            csrf: random_token(),
            expires: now + SESSION_TTL,
        };
        sessions.insert(id.clone(), session);
        Ok((id, role))
    }

    /// Ends the browser session of `headers`' cookie, if any.
    pub fn sign_out(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE) {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.remove(id);
        }
    }

    /// The caller of a request with `headers`: its bearer token, else its session cookie.
    pub fn principal(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        if self.tokens.open {
            return Ok(principal(Role::Operator, "anonymous", None));
        }
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| unauthorized("the Authorization header must be `Bearer TOKEN`"))?;
            let role = self
                .tokens
                .role_of(token.trim())
                .ok_or_else(|| unauthorized("that token is not one of this console's"))?;
            return Ok(principal(role, role.name(), None));
        }
        let id = cookie(headers, COOKIE).ok_or_else(|| {
            unauthorized("sign in: send `Authorization: Bearer TOKEN`, or open /login")
        })?;
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match sessions.get(id) {
            Some(s) if s.expires > Instant::now() => {
                Ok(principal(s.role, s.role.name(), Some(s.csrf.clone())))
            }
            _ => Err(unauthorized(
                "the session has ended: sign in again at /login",
            )),
        }
    }
}

fn principal(role: Role, name: &str, csrf: Option<String>) -> Principal {
    Principal {
        role,
        by: format!("console:{name}"),
        csrf,
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, message)
}

/// The API's gate: 401 without a valid token or session; for anything but GET, 403 for a cookie
/// request without the session's CSRF token and for the read-only role. The caller is passed on
/// to the handler as a request extension.
pub async fn guard(State(console): State<Shared>, mut req: Request, next: Next) -> Response {
    use axum::response::IntoResponse;
    let who = match console.auth.principal(req.headers()) {
        Ok(who) => who,
        Err(e) => return e.into_response(),
    };
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        if let Some(expected) = &who.csrf {
            let sent = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            if !sent.is_some_and(|s| same(s.as_bytes(), expected.as_bytes())) {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "missing or wrong CSRF token: reload the console and try again",
                )
                .into_response();
            }
        }
        let signing_out = req.uri().path() == "/logout";
        if who.role != Role::Operator && !signing_out {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "this token is read-only: actions need the operator token",
            )
            .into_response();
        }
    }
    req.extensions_mut().insert(who);
    next.run(req).await
}

/// The value of cookie `name` in `headers`.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// 256 random bits as hex (two v4 UUIDs: 244 random bits).
fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn auth() -> Auth {
        Auth::new(Tokens::fixed(
            Some("operator-token-0123456789"),
            Some("read-token-0123456789"),
        ))
    }

    #[test]
    fn bearer_tokens_and_sessions_name_their_role() {
        let a = auth();
        let mut h = HeaderMap::new();
        assert_eq!(
            a.principal(&h).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer read-token-0123456789"),
        );
        let p = a.principal(&h).unwrap();
        assert_eq!(
            (p.role, p.by.as_str(), p.csrf),
            (Role::Read, "console:read", None)
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer nope"),
        );
        assert!(a.principal(&h).is_err());
        assert!(a.sign_in("nope").is_err());
        let (id, role) = a.sign_in("operator-token-0123456789").unwrap();
        assert_eq!(role, Role::Operator);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("x=1; {COOKIE}={id}")).unwrap(),
        );
        let p = a.principal(&h).unwrap();
        assert_eq!(p.by, "console:operator");
        assert_eq!(p.csrf.as_ref().map(String::len), Some(64));
        a.sign_out(&h);
        assert!(a.principal(&h).is_err());
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
