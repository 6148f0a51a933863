//! `Reject`: every reason the gateway answers instead of the upstream, turned into exactly
//! one problem+json response here. The body says *what* (the `code`); the log says *why*.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{full, Body};

/// Why a token was refused, for the logs only (never sent to the client).
pub type Cause = &'static str;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    BadRequest(Cause),
    TokenMissing,
    TokenInvalid(Cause),
    TokenExpired,
    TokenRevoked,
    IpMismatch,
    DeviceMismatch,
    IpDenied(Cause),
    InsufficientClaims,
    NoRoute,
    MethodNotAllowed(String),
    PayloadTooLarge,
    RateLimited {
        policy: String,
        retry_after: Duration,
    },
    LoginLocked {
        retry_after: Duration,
    },
    UpstreamUnavailable(String),
    UpstreamTimeout,
    /// The client went away while its request body was being sent on: nobody hears the
    /// answer, which is logged and counted as nginx's 499, not as a refusal.
    ClientClosed,
    /// Why (the store's error, which never holds its URL).
    StoreUnavailable(String),
    Internal(String),
}

/// nginx's status for a request the client closed before it was answered.
pub const CLIENT_CLOSED: u16 = 499;

impl Reject {
    pub fn status(&self) -> StatusCode {
        match self {
            Reject::BadRequest(_) => StatusCode::BAD_REQUEST,
            Reject::TokenMissing
            | Reject::TokenInvalid(_)
            | Reject::TokenExpired
            | Reject::TokenRevoked
            | Reject::IpMismatch
            | Reject::DeviceMismatch => StatusCode::UNAUTHORIZED,
            Reject::IpDenied(_) | Reject::InsufficientClaims => StatusCode::FORBIDDEN,
            Reject::NoRoute => StatusCode::NOT_FOUND,
            Reject::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Reject::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reject::RateLimited { .. } | Reject::LoginLocked { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Reject::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            Reject::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Reject::ClientClosed => {
                StatusCode::from_u16(CLIENT_CLOSED).unwrap_or(StatusCode::BAD_REQUEST)
            }
            Reject::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Reject::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Reject::BadRequest(_) => "bad_request",
            Reject::TokenMissing => "token_missing",
            Reject::TokenInvalid(_) => "token_invalid",
            Reject::TokenExpired => "token_expired",
            Reject::TokenRevoked => "token_revoked",
            Reject::IpMismatch => "ip_mismatch",
            Reject::DeviceMismatch => "device_mismatch",
            Reject::IpDenied(_) => "ip_denied",
            Reject::InsufficientClaims => "insufficient_claims",
            Reject::NoRoute => "no_route",
            Reject::MethodNotAllowed(_) => "method_not_allowed",
            Reject::PayloadTooLarge => "payload_too_large",
            Reject::RateLimited { .. } => "rate_limited",
            Reject::LoginLocked { .. } => "login_locked",
            Reject::UpstreamUnavailable(_) => "upstream_unavailable",
            Reject::UpstreamTimeout => "upstream_timeout",
            Reject::ClientClosed => "client_closed",
            Reject::StoreUnavailable(_) => "store_unavailable",
            Reject::Internal(_) => "internal_error",
        }
    }

    /// The public, fixed explanation: never echoes input, never says which check failed.
    pub fn detail(&self) -> &'static str {
        match self {
            Reject::BadRequest(_) => "The request could not be parsed or its path is not allowed.",
            Reject::TokenMissing => "A token is required.",
            Reject::TokenInvalid(_) => "The token is not valid.",
            Reject::TokenExpired => "The token has expired.",
            Reject::TokenRevoked => "The token has been revoked.",
            Reject::IpMismatch => "The token was issued to another client address.",
            Reject::DeviceMismatch => "The token was issued to another device.",
            Reject::IpDenied(_) => "Your address is not allowed here.",
            Reject::InsufficientClaims => "The token does not grant access to this resource.",
            Reject::NoRoute => "No route matches this request.",
            Reject::MethodNotAllowed(_) => "This method is not allowed on this path.",
            Reject::PayloadTooLarge => "The request body is too large.",
            Reject::RateLimited { .. } => "Too many requests; retry later.",
            Reject::LoginLocked { .. } => "Too many failed logins; retry later.",
            Reject::UpstreamUnavailable(_) => "The upstream service is unavailable.",
            Reject::UpstreamTimeout => "The upstream service did not answer in time.",
            Reject::ClientClosed => "The client closed the request.",
            Reject::StoreUnavailable(_) => "A required backing store is unavailable.",
            Reject::Internal(_) => "Internal error.",
        }
    }

    /// The internal cause, for logs.
    pub fn cause(&self) -> &str {
        match self {
            Reject::BadRequest(c) | Reject::TokenInvalid(c) | Reject::IpDenied(c) => c,
            Reject::UpstreamUnavailable(c) | Reject::Internal(c) | Reject::StoreUnavailable(c) => c,
            // Which of the route's policies refused.
            Reject::RateLimited { policy, .. } => policy,
            _ => "",
        }
    }

    pub fn to_response(&self) -> Response<Body> {
        let status = self.status();
        let title = status.canonical_reason().unwrap_or("Error");
        let body = format!(
            "{{\"type\":\"about:blank\",\"title\":\"{title}\",\"status\":{},\"code\":\"{}\",\"detail\":\"{}\"}}",
            status.as_u16(),
            self.code(),
            self.detail()
        );
        let mut resp = Response::new(full(Bytes::from(body)));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            Reject::TokenMissing => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            r if status == StatusCode::UNAUTHORIZED => {
                let v = format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\"",
                    r.detail()
                );
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            Reject::MethodNotAllowed(allow) => {
                if let Ok(v) = HeaderValue::from_str(allow) {
                    h.insert(header::ALLOW, v);
                }
            }
            Reject::RateLimited { retry_after, .. } | Reject::LoginLocked { retry_after } => {
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(ceil_secs(*retry_after)),
                );
            }
            _ => {}
        }
        resp
    }
}

/// Seconds rounded up (Retry-After, RateLimit `t`).
pub fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 {
        s + 1
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reject_has_its_status_and_code() {
        let table: Vec<(Reject, u16, &str)> = vec![
            (Reject::BadRequest("x"), 400, "bad_request"),
            (Reject::TokenMissing, 401, "token_missing"),
            (Reject::TokenInvalid("x"), 401, "token_invalid"),
            (Reject::TokenExpired, 401, "token_expired"),
            (Reject::TokenRevoked, 401, "token_revoked"),
            (Reject::IpMismatch, 401, "ip_mismatch"),
            (Reject::DeviceMismatch, 401, "device_mismatch"),
            (Reject::IpDenied("x"), 403, "ip_denied"),
            (Reject::InsufficientClaims, 403, "insufficient_claims"),
            (Reject::NoRoute, 404, "no_route"),
            (
                Reject::MethodNotAllowed("GET".into()),
                405,
                "method_not_allowed",
            ),
            (Reject::PayloadTooLarge, 413, "payload_too_large"),
            (
                Reject::RateLimited {
                    policy: "p".into(),
                    retry_after: Duration::from_millis(1500),
                },
                429,
                "rate_limited",
            ),
            (
                Reject::LoginLocked {
                    retry_after: Duration::from_secs(3),
                },
                429,
                "login_locked",
            ),
            (
                Reject::UpstreamUnavailable("x".into()),
                502,
                "upstream_unavailable",
            ),
            (Reject::UpstreamTimeout, 504, "upstream_timeout"),
            (
                Reject::StoreUnavailable("redis: connection refused".into()),
                503,
                "store_unavailable",
            ),
            (Reject::Internal("x".into()), 500, "internal_error"),
        ];
        for (r, status, code) in table {
            assert_eq!(r.status().as_u16(), status, "{r:?}");
            assert_eq!(r.code(), code);
            if code == "store_unavailable" {
                // The log's cause says why; the answer does not.
                assert_eq!(r.cause(), "redis: connection refused");
                assert!(!r.detail().contains("redis"));
            }
            let resp = r.to_response();
            assert_eq!(resp.status().as_u16(), status);
            assert_eq!(
                resp.headers()[header::CONTENT_TYPE],
                "application/problem+json"
            );
        }
    }

    #[test]
    fn retry_after_rounds_up() {
        let r = Reject::RateLimited {
            policy: "p".into(),
            retry_after: Duration::from_millis(1500),
        };
        assert_eq!(r.to_response().headers()[header::RETRY_AFTER], "2");
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
    }

    #[test]
    fn token_missing_has_no_error_attribute() {
        let resp = Reject::TokenMissing.to_response();
        let v = resp.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap_or("");
        assert_eq!(v, "Bearer");
        let resp = Reject::TokenExpired.to_response();
        let v = resp.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap_or("");
        // SPEC §6's form exactly.
        assert_eq!(
            v,
            format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                Reject::TokenExpired.detail()
            )
        );
    }
}
