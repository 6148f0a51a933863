//! One JSON access-log line per request (target `access`), refusals also on target
//! `security` at warn. Never a token, cookie, Authorization header or query string: only
//! the normalized path is logged.

use std::time::Instant;

use http::Method;

use crate::pipeline::Outcome;
use crate::state::Active;

/// Codes of answers the upstream caused (502, 504): logged and counted as failures, not as
/// refusals (`iptgate_denials_total`, target `security`).
pub fn is_upstream_failure(code: &str) -> bool {
    matches!(code, "upstream_unavailable" | "upstream_timeout")
}

/// `bytes`: the response body's length when known up front.
pub fn record(
    method: &Method,
    path: Option<&str>,
    status: u16,
    bytes: Option<u64>,
    out: &Outcome,
    active: &Active,
    started: Instant,
) {
    let total = started.elapsed().as_secs_f64();
    let route = out
        .route
        .map(|i| active.routes[i].cfg.name.as_str())
        .unwrap_or("");
    out.route
        .map(|i| &active.route_metrics[i])
        .unwrap_or(&active.unrouted_metrics)
        .request(status, out.code, total, out.upstream_ms.map(|m| m / 1000.0));
    let access = tracing::enabled!(target: "access", tracing::Level::INFO);
    if !access && out.code.is_none() && out.dry_run.is_empty() {
        // Nothing to log: skip formatting the line's fields.
        return;
    }
    let client_ip = out.client_ip.map(|i| i.to_string());
    if access {
        tracing::info!(
            target: "access",
            time = %humantime::format_rfc3339_millis(std::time::SystemTime::now()),
            client_ip = client_ip.as_deref().unwrap_or(""),
            method = method.as_str(),
            path = path.unwrap_or(""),
            route,
            status,
            code = out.code.unwrap_or(""),
            sub = out.sub.as_deref().unwrap_or(""),
            upstream_ms = out.upstream_ms.unwrap_or(0.0),
            total_ms = total * 1000.0,
            bytes = bytes.unwrap_or(0),
            minted = out.minted,
            dry_run = out
                .dry_run
                .iter()
                .map(|(c, _)| *c)
                .collect::<Vec<_>>()
                .join(",")
                .as_str(),
        );
    }
    // Refusals on target `security`: those a dry-run route let through, then the real one.
    let refusals = out
        .dry_run
        .iter()
        .map(|(code, cause)| (*code, cause.as_str(), true))
        .chain(
            out.code
                .map(|c| (c, out.cause.as_deref().unwrap_or(""), false)),
        );
    for (code, cause, dry_run) in refusals {
        if is_upstream_failure(code) {
            // Not a refusal of the client: the upstream failed it.
            tracing::warn!(
                target: "upstream",
                client_ip = client_ip.as_deref().unwrap_or(""),
                method = method.as_str(),
                path = path.unwrap_or(""),
                route,
                status,
                code,
                cause,
                "upstream failed"
            );
            continue;
        }
        tracing::warn!(
            target: "security",
            client_ip = client_ip.as_deref().unwrap_or(""),
            method = method.as_str(),
            path = path.unwrap_or(""),
            route,
            status,
            code,
            cause,
            dry_run,
            "{}",
            if dry_run { "would refuse (dry run)" } else { "refused" }
        );
    }
}

/// A response body past this size, or of unknown size (chunked, streamed), is logged when it
/// ends: `bytes` as sent and `total_ms` to the last byte, as nginx's `$body_bytes_sent` and
/// `$request_time`. A smaller one of known size is logged with the head (what the client is
/// sent is that size, written at once).
pub const LOG_AT_END_OVER: u64 = 64 * 1024;

/// Whether a response body of this exact size (`None`: unknown, streamed) is logged at its
/// end rather than with its head.
pub fn logged_at_end(exact_size: Option<u64>) -> bool {
    exact_size.is_none_or(|b| b > LOG_AT_END_OVER)
}

/// What the access line of a response logged at its end needs.
pub struct Deferred {
    pub method: Method,
    pub path: Option<String>,
    pub status: u16,
    pub out: Outcome,
    pub active: std::sync::Arc<Active>,
    pub started: Instant,
}

/// A response body that writes its access line when it ends, fails, or is dropped unfinished
/// (the client went away): with the bytes passed on so far.
pub struct LoggedBody {
    inner: crate::body::Body,
    sent: u64,
    log: Option<Deferred>,
}

impl LoggedBody {
    pub fn new(inner: crate::body::Body, log: Deferred) -> LoggedBody {
        LoggedBody {
            inner,
            sent: 0,
            log: Some(log),
        }
    }

    fn finish(&mut self) {
        if let Some(d) = self.log.take() {
            record(
                &d.method,
                d.path.as_deref(),
                d.status,
                Some(self.sent),
                &d.out,
                &d.active,
                d.started,
            );
        }
    }
}

impl http_body::Body for LoggedBody {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let r = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.sent += d.len() as u64;
                }
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(d) = &self.log {
                    // The client sees the body cut short; the log says why.
                    tracing::warn!(
                        target: "upstream",
                        method = d.method.as_str(),
                        path = d.path.as_deref().unwrap_or(""),
                        status = d.status,
                        bytes = self.sent,
                        error = %e,
                        "response body failed midway"
                    );
                }
                self.finish();
            }
            Poll::Ready(None) => self.finish(),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        self.finish();
    }
}
