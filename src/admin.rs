//! The admin listener (never the main one): `/healthz`, `/readyz`, `/metrics`, `POST /reload`.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::body::{full, Body};
use crate::state::State;

fn text(status: StatusCode, body: impl Into<Bytes>, ctype: &'static str) -> Response<Body> {
    let mut r = Response::new(full(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

async fn route(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Body>, Infallible> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n", PLAIN),
        (&Method::GET | &Method::HEAD, "/readyz") => {
            if state.draining.load(Ordering::SeqCst) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n", PLAIN)
            } else {
                text(StatusCode::OK, "ready\n", PLAIN)
            }
        }
        (&Method::GET | &Method::HEAD, "/metrics") => text(
            StatusCode::OK,
            crate::metrics::render(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        (&Method::POST, "/reload") => match crate::reload::reload(&state) {
            Ok(gen) => text(
                StatusCode::OK,
                format!("reloaded: generation {gen}\n"),
                PLAIN,
            ),
            Err(e) => text(StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n"), PLAIN),
        },
        (_, p @ ("/healthz" | "/readyz" | "/metrics" | "/reload")) => {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n",
                PLAIN,
            );
            let allow = match p {
                "/reload" => "POST",
                _ => "GET, HEAD",
            };
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n", PLAIN),
    };
    Ok(resp)
}

/// Serve the admin listener until the task is aborted: it stays up through the drain, so that
/// `/readyz` answers 503 while in-flight requests finish ([`crate::server::Running::wait`]
/// stops it once the drain is over).
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| route(req, state.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
