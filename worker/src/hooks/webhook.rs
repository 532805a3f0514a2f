//! One attempt of a webhook delivery: `POST` of the event with the SecFlow headers, signed with
//! the fleet's hook secret, and what the answer means (2xx delivered; 408, 429, 5xx, no
//! answer or no connection: try again; anything else: the delivery failed for good).

use super::deliver::Attempt;
use secflow_common::{ErrorClass, TaskError, hooks::signature};
use std::time::Duration;

/// The request of one attempt.
pub(super) struct Post<'a> {
    /// Receiver URL.
    pub url: &'a str,
    /// Event kind (`X-SecFlow-Event`).
    pub kind: &'a str,
    /// `HOOK_ID:EVENT_ID` (`X-SecFlow-Delivery`), the same for every attempt.
    pub delivery_id: &'a str,
    /// The event as published.
    pub body: &'a [u8],
    /// Time the attempt may take.
    pub timeout: Duration,
}

/// Sends `post` once.
pub(super) async fn post(client: &reqwest::Client, secret: &[u8], post: &Post<'_>) -> Attempt {
    let timestamp = secflow_common::now_ms() / 1000;
    let request = client
        .post(post.url)
        .timeout(post.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-SecFlow-Event", post.kind)
        .header("X-SecFlow-Delivery", post.delivery_id)
        .header("X-SecFlow-Timestamp", timestamp.to_string())
        .header(
            "X-SecFlow-Signature",
            signature(secret, timestamp, post.body),
        )
        .body(post.body.to_vec());
    // reqwest's timeout covers the whole exchange; this deadline also holds if it did not.
    let sent = tokio::time::timeout(post.timeout + Duration::from_secs(1), request.send()).await;
    let response = match sent {
        Err(_) => {
            return Attempt::Retry {
                reason: format!("no answer within {} ms", post.timeout.as_millis()),
                after: None,
            };
        }
        Ok(Err(e)) if e.is_builder() => {
            return Attempt::Fail(TaskError::validation(
                "invalid_request",
                format!("the webhook request cannot be built: {}", e.without_url()),
            ));
        }
        Ok(Err(e)) => {
            let reason = if e.is_timeout() {
                format!("no answer within {} ms", post.timeout.as_millis())
            } else {
                describe(&e.without_url())
            };
            return Attempt::Retry {
                reason,
                after: None,
            };
        }
        Ok(Ok(response)) => response,
    };
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::handlers::parse_retry_after);
    answer(response.status().as_u16(), retry_after)
}

/// What the receiver's status means.
pub(super) fn answer(status: u16, retry_after: Option<Duration>) -> Attempt {
    match status {
        200..=299 => Attempt::Delivered,
        408 | 429 | 500..=599 => Attempt::Retry {
            reason: format!("the receiver answered {status}"),
            after: retry_after,
        },
        _ => Attempt::Fail(TaskError::new(
            ErrorClass::Permanent,
            format!("http_{status}"),
            format!("the receiver answered {status}: not retried"),
        )),
    }
}

/// An error with its causes (reqwest's own message is often just "error sending request").
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_mean_delivered_retry_or_failed() {
        assert!(matches!(answer(204, None), Attempt::Delivered));
        for status in [408, 429, 500, 503, 599] {
            assert!(
                matches!(answer(status, None), Attempt::Retry { .. }),
                "{status}"
            );
        }
        let after = Some(Duration::from_secs(3));
        assert!(matches!(answer(429, after), Attempt::Retry { after: a, .. } if a == after));
        for status in [301, 400, 401, 404, 410, 422] {
            match answer(status, None) {
                Attempt::Fail(e) => {
                    assert_eq!(e.class, ErrorClass::Permanent);
                    assert_eq!(e.code, format!("http_{status}"));
                }
                _ => panic!("{status} must fail for good"),
            }
        }
    }
}
