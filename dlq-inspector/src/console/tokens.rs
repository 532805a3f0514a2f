//! The console's tokens: the operator's (`SECFLOW_CONSOLE_TOKEN` or `--token-file`) and the
//! read-only one (`SECFLOW_CONSOLE_READ_TOKEN` or `--read-token-file`). Without either the
//! console does not start, unless `--no-auth` says so out loud (and then only on loopback).

use super::auth::{Role, same};
use std::{net::SocketAddr, path::Path};

/// The environment variable of the operator's token.
pub const TOKEN_ENV: &str = "SECFLOW_CONSOLE_TOKEN";
/// The environment variable of the read-only token.
pub const READ_TOKEN_ENV: &str = "SECFLOW_CONSOLE_READ_TOKEN";
/// Shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// The tokens the console accepts.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    operator: Option<String>,
    read: Option<String>,
    /// `--no-auth`: anyone who reaches the console is an operator.
    pub open: bool,
}

/// Where the tokens come from.
pub struct TokenSources<'a> {
    /// `--token-file`.
    pub token_file: Option<&'a Path>,
    /// `--read-token-file`.
    pub read_token_file: Option<&'a Path>,
    /// `--no-auth`.
    pub no_auth: bool,
    /// `--addr`.
    pub addr: SocketAddr,
}

impl Tokens {
    /// Reads the tokens from `sources` and the environment (`env`, so tests pass a map).
    pub fn load(
        sources: &TokenSources<'_>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let operator = one(TOKEN_ENV, sources.token_file, env)?;
        let read = one(READ_TOKEN_ENV, sources.read_token_file, env)?;
        if sources.no_auth {
            if operator.is_some() || read.is_some() {
                return Err("--no-auth and a console token exclude each other: drop one".into());
            }
            if !sources.addr.ip().is_loopback() {
                return Err(format!(
                    "--no-auth is only allowed on a loopback address, not {}",
                    sources.addr
                ));
            }
            return Ok(Self {
                open: true,
                ..Self::default()
            });
        }
        if operator.is_none() && read.is_none() {
            return Err(format!(
                "the console needs a token: set {TOKEN_ENV} (or --token-file) for operators and {READ_TOKEN_ENV} (or --read-token-file) for read-only access, or pass --no-auth to run it open on loopback"
            ));
        }
        if let (Some(o), Some(r)) = (&operator, &read)
            && same(o.as_bytes(), r.as_bytes())
        {
            return Err("the operator and the read-only token must differ".into());
        }
        Ok(Self {
            operator,
            read,
            open: false,
        })
    }

    /// Fixed tokens (tests).
    pub fn fixed(operator: Option<&str>, read: Option<&str>) -> Self {
        Self {
            operator: operator.map(str::to_string),
            read: read.map(str::to_string),
            open: false,
        }
    }

    /// The role `token` grants, if any.
    pub fn role_of(&self, token: &str) -> Option<Role> {
        let is = |t: &Option<String>| {
            t.as_ref()
                .is_some_and(|t| same(t.as_bytes(), token.as_bytes()))
        };
        if is(&self.operator) {
            Some(Role::Operator)
        } else if is(&self.read) {
            Some(Role::Read)
        } else {
            None
        }
    }
}

/// One token: from its file (trimmed) if given, else from its environment variable.
fn one(
    var: &str,
    file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, String> {
    let (token, from) = match file {
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?,
            path.display().to_string(),
        ),
        None => match env(var) {
            Some(t) => (t, var.to_string()),
            None => return Ok(None),
        },
    };
    let token = token.trim().to_string();
    if token.len() < MIN_TOKEN_LEN || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "the token in {from} must be at least {MIN_TOKEN_LEN} characters without spaces (e.g. `od -An -N24 -tx1 /dev/urandom | tr -d ' \\n'`)"
        ));
    }
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(no_auth: bool, addr: &str) -> TokenSources<'static> {
        TokenSources {
            token_file: None,
            read_token_file: None,
            no_auth,
            addr: addr.parse().unwrap(),
        }
    }

    #[test]
    fn a_token_is_required_unless_no_auth_on_loopback() {
        let none = |_: &str| None;
        let e = Tokens::load(&sources(false, "127.0.0.1:8080"), &none).unwrap_err();
        assert!(e.contains(TOKEN_ENV) && e.contains("--no-auth"), "{e}");
        assert!(
            Tokens::load(&sources(true, "127.0.0.1:8080"), &none)
                .unwrap()
                .open
        );
        let e = Tokens::load(&sources(true, "0.0.0.0:8080"), &none).unwrap_err();
        assert!(e.contains("loopback"), "{e}");
    }

    #[test]
    fn tokens_grant_their_roles() {
        let env = |v: &str| match v {
            TOKEN_ENV => Some(" operator-token-0123456789\n".to_string()),
            READ_TOKEN_ENV => Some("read-token-0123456789".to_string()),
            _ => None,
        };
        let t = Tokens::load(&sources(false, "127.0.0.1:1"), &env).unwrap();
        assert_eq!(t.role_of("operator-token-0123456789"), Some(Role::Operator));
        assert_eq!(t.role_of("read-token-0123456789"), Some(Role::Read));
        assert_eq!(t.role_of("read-token-012345678"), None);
        let short = |_: &str| Some("short".to_string());
        let e = Tokens::load(&sources(false, "127.0.0.1:1"), &short).unwrap_err();
        assert!(e.contains("at least 16"), "{e}");
    }
}
