//! `http`: one request with a timeout; a status outside 2xx is classified by the rules
//! (`worker/rules/default.yaml`: 408/429/502/503/504 transient, 400/422 and other malformed
//! requests validation, other 4xx permanent, other 5xx unknown). Retry-After is honoured on
//! transient failures.

use super::parse_config;
use crate::classify::{Classifier, Failure, io_kind_name};
use secflow_common::{ErrorClass, TaskError, nodes::HttpConfig};
use serde_json::{Value, json};
use std::{error::Error as _, time::Duration};

/// Sends the configured request and returns status, content type and (bounded) body.
pub async fn run(
    client: &reqwest::Client,
    config: &Value,
    timeout: Duration,
    max_body: usize,
    classifier: &Classifier,
) -> Result<Value, TaskError> {
    let cfg: HttpConfig = parse_config("http", config)?;
    let method = match cfg.method.to_ascii_uppercase().as_str() {
        "GET" => reqwest::Method::GET,
        "POST" => reqwest::Method::POST,
        "HEAD" => reqwest::Method::HEAD,
        "PUT" => reqwest::Method::PUT,
        "DELETE" => reqwest::Method::DELETE,
        other => {
            return Err(TaskError::validation(
                "invalid_config",
                format!("http: unsupported method `{other}`"),
            ));
        }
    };
    let mut req = client.request(method, &cfg.url).timeout(timeout);
    for (k, v) in &cfg.headers {
        req = req.header(k, v);
    }
    if let Some(json) = &cfg.json {
        req = req.json(json);
    } else if let Some(body) = cfg.body {
        req = req.body(body);
    }
    let mut resp = req
        .send()
        .await
        .map_err(|e| request_error(&cfg.url, &e, classifier))?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut body = Vec::new();
    let mut truncated = false;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| request_error(&cfg.url, &e, classifier))?
    {
        let room = max_body.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if chunk.len() > room {
            truncated = true;
            break;
        }
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    if (200..300).contains(&status) {
        return Ok(
            json!({ "status": status, "content_type": content_type, "body": text, "body_truncated": truncated }),
        );
    }
    let verdict = classifier.classify(&Failure {
        http_status: Some(status),
        ..Failure::default()
    });
    let (class, code) = (verdict.class, verdict.code);
    // One line of the body is enough to tell an error page from an API error.
    let snippet: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(200)
        .collect();
    let err = TaskError::new(
        class,
        code,
        format!("http {} returned {status}: {snippet}", cfg.url),
    );
    Err(match retry_after {
        Some(d) if class == ErrorClass::Transient => err.with_retry_after(d),
        _ => err,
    })
}

/// Retry-After is either delta-seconds or an HTTP date.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value.trim()).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Classifies a failed request by what reqwest says it was, then by its source chain.
fn request_error(url: &str, e: &reqwest::Error, classifier: &Classifier) -> TaskError {
    let mut detail = e.to_string();
    let mut source = e.source();
    let mut io_kind = None;
    while let Some(s) = source {
        detail = format!("{detail}: {s}");
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            io_kind = Some(io_kind_name(io.kind()));
        }
        source = s.source();
    }
    let message = format!("http {url}: {detail}");
    if e.is_timeout() {
        return TaskError::new(ErrorClass::Transient, "timeout", message);
    }
    if e.is_builder() {
        return TaskError::validation("invalid_request", message);
    }
    if e.is_redirect() {
        return TaskError::new(ErrorClass::Permanent, "too_many_redirects", message);
    }
    let verdict = classifier.classify(&Failure {
        message: detail,
        io_kind,
        ..Failure::default()
    });
    let network = e.is_connect() || e.is_request();
    let by_rule = verdict.matched.starts_with("rule:");
    match verdict.class {
        // A connection-level failure no rule recognised is still the network's, whatever the
        // model guessed, unless it guessed an attack.
        ErrorClass::Unknown if network => TaskError::new(ErrorClass::Transient, "network", message),
        class if network && !by_rule && class != ErrorClass::Security => {
            TaskError::new(ErrorClass::Transient, "network", message)
        }
        class => TaskError::new(class, verdict.code, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let future = std::time::SystemTime::now() + Duration::from_secs(120);
        let d = parse_retry_after(&httpdate::fmt_http_date(future)).unwrap();
        assert!(
            d > Duration::from_secs(110) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
