//! Phase 3: normalized path + host + method -> the route.
//!
//! An exact `path` beats any `prefix`; the longest prefix wins; ties go to the earlier
//! route. A route whose methods exclude the request's is skipped; when only such routes
//! matched the path, the answer is 405 with `Allow` listing their methods.

use http::Method;

use crate::config::{PathMatch, RouteConfig};
use crate::error::Reject;
use crate::state::Route;

/// Does `path` (normalized) fall under this matcher? Returns its specificity.
fn score(m: &PathMatch, path: &str) -> Option<(u8, usize)> {
    match m {
        PathMatch::Exact(p) => (p == path).then_some((2, p.len())),
        PathMatch::Prefix(p) => {
            let hit = path.len() >= p.len()
                && path.as_bytes().starts_with(p.as_bytes())
                && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/');
            hit.then_some((1, p.len()))
        }
    }
}

fn host_matches(route: &RouteConfig, host: Option<&str>) -> bool {
    match (&route.host, host) {
        (None, _) => true,
        (Some(want), Some(h)) => want.eq_ignore_ascii_case(h),
        (Some(_), None) => false,
    }
}

/// The request's host without port, for matching (`Host`, or `:authority` on HTTP/2). The
/// root's trailing dot goes too: `api.example.com.` is the same name (and apps treat it so).
pub fn host_of(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map(|(a, _)| &host[..a.len() + 1])
            .unwrap_or(host);
    }
    let name = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    name.trim_end_matches('.')
}

/// Find the route index for a request.
pub fn find(
    routes: &[Route],
    method: &Method,
    host: Option<&str>,
    path: &str,
) -> Result<usize, Reject> {
    let mut best: Option<((u8, usize), usize)> = None;
    let mut path_hit: Option<(u8, usize)> = None;
    for (i, r) in routes.iter().enumerate() {
        let cfg = &r.cfg;
        let Some(s) = score(&cfg.matcher, path) else {
            continue;
        };
        if !host_matches(cfg, host) {
            continue;
        }
        if !method_allowed(&cfg.methods, method) {
            path_hit = Some(path_hit.map_or(s, |p| p.max(s)));
            continue;
        }
        if best.is_none_or(|(b, _)| s > b) {
            best = Some((s, i));
        }
    }
    match (best, path_hit) {
        (Some((_, i)), _) => Ok(i),
        (None, Some(_)) => Err(Reject::MethodNotAllowed(allowed_methods(
            routes, host, path,
        ))),
        (None, None) => Err(Reject::NoRoute),
    }
}

fn allowed_methods(routes: &[Route], host: Option<&str>, path: &str) -> String {
    let mut methods: Vec<&str> = Vec::new();
    for r in routes {
        if score(&r.cfg.matcher, path).is_some() && host_matches(&r.cfg, host) {
            for m in &r.cfg.methods {
                if !methods.contains(&m.as_str()) {
                    methods.push(m.as_str());
                }
            }
        }
    }
    if methods.contains(&"GET") && !methods.contains(&"HEAD") {
        methods.push("HEAD");
    }
    methods.join(", ")
}

/// `methods` empty allows every method; a route that allows GET allows HEAD too (RFC 9110
/// §9.3.2: HEAD is GET without the body, and clients and health checkers send it).
pub(crate) fn method_allowed(methods: &[Method], method: &Method) -> bool {
    methods.is_empty()
        || methods.contains(method)
        || (*method == Method::HEAD && methods.contains(&Method::GET))
}

/// The path the upstream receives: `strip_prefix` removes the matched prefix, `rewrite`
/// replaces it; otherwise the normalized path itself.
/// The prefix a `strip_prefix` route takes off the path, unless it is the root.
pub fn stripped_prefix(route: &RouteConfig) -> Option<&str> {
    if !route.strip_prefix || route.rewrite.is_some() {
        return None;
    }
    let p = match &route.matcher {
        PathMatch::Exact(p) | PathMatch::Prefix(p) => p.trim_end_matches('/'),
    };
    (!p.is_empty()).then_some(p)
}

pub fn upstream_path<'a>(route: &RouteConfig, path: &'a str) -> std::borrow::Cow<'a, str> {
    use std::borrow::Cow;
    let matched = match &route.matcher {
        PathMatch::Exact(p) => p.len(),
        PathMatch::Prefix(p) => p.len(),
    };
    if let Some(rw) = &route.rewrite {
        let rest = &path[matched..];
        let mut out = rw.trim_end_matches('/').to_string();
        if rest.is_empty() {
            if out.is_empty() || rw.ends_with('/') {
                out.push('/');
            }
        } else {
            out.push_str(rest);
        }
        return Cow::Owned(out);
    }
    if route.strip_prefix {
        let rest = &path[matched..];
        return if rest.is_empty() {
            Cow::Borrowed("/")
        } else {
            Cow::Borrowed(rest)
        };
    }
    Cow::Borrowed(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthMode;

    fn route(name: &str, m: PathMatch, methods: &[&str], host: Option<&str>) -> Route {
        Route {
            cfg: RouteConfig {
                name: name.into(),
                matcher: m,
                host: host.map(str::to_string),
                methods: methods.iter().map(|m| m.parse().unwrap()).collect(),
                upstream: 0,
                auth: AuthMode::Public,
                rate_limit: vec![],
                require: vec![],
                ip: None,
                strip_prefix: false,
                rewrite: None,
                dry_run: false,
            },
            ip: None,
        }
    }

    fn name<'a>(
        routes: &'a [Route],
        m: &str,
        host: Option<&str>,
        p: &str,
    ) -> Result<&'a str, Reject> {
        find(routes, &m.parse().unwrap(), host, p).map(|i| routes[i].cfg.name.as_str())
    }

    #[test]
    fn exact_beats_prefix_and_longest_prefix_wins() {
        let rs = vec![
            route("root", PathMatch::Prefix("".into()), &[], None),
            route("api", PathMatch::Prefix("/api".into()), &[], None),
            route("apiv2", PathMatch::Prefix("/api/v2".into()), &[], None),
            route("login", PathMatch::Exact("/login".into()), &["POST"], None),
            route("api-exact", PathMatch::Exact("/api".into()), &[], None),
        ];
        assert_eq!(name(&rs, "GET", None, "/api/v2/x"), Ok("apiv2"));
        assert_eq!(name(&rs, "GET", None, "/api/v"), Ok("api"));
        assert_eq!(name(&rs, "GET", None, "/apix"), Ok("root"));
        assert_eq!(name(&rs, "GET", None, "/api"), Ok("api-exact"));
        assert_eq!(name(&rs, "POST", None, "/login"), Ok("login"));
        // The exact route is skipped for GET; the catch-all answers.
        assert_eq!(name(&rs, "GET", None, "/login"), Ok("root"));
    }

    #[test]
    fn method_mismatch_is_405_with_allow() {
        let rs = vec![
            route("a", PathMatch::Exact("/login".into()), &["POST"], None),
            route("b", PathMatch::Exact("/login".into()), &["PUT"], None),
        ];
        assert_eq!(
            name(&rs, "GET", None, "/login"),
            Err(Reject::MethodNotAllowed("POST, PUT".into()))
        );
        assert_eq!(name(&rs, "GET", None, "/other"), Err(Reject::NoRoute));
    }

    #[test]
    fn host_and_ties() {
        let rs = vec![
            route(
                "api-host",
                PathMatch::Prefix("".into()),
                &[],
                Some("api.example.com"),
            ),
            route("first", PathMatch::Prefix("/x".into()), &[], None),
            route("second", PathMatch::Prefix("/x".into()), &[], None),
        ];
        assert_eq!(
            name(&rs, "GET", Some("API.example.com"), "/"),
            Ok("api-host")
        );
        assert_eq!(name(&rs, "GET", Some("other"), "/"), Err(Reject::NoRoute));
        assert_eq!(name(&rs, "GET", None, "/x/y"), Ok("first"));
        assert_eq!(host_of("Example.com:8443"), "Example.com");
        assert_eq!(host_of("[::1]:8443"), "[::1]");
        assert_eq!(host_of("api.example.com."), "api.example.com");
        assert_eq!(host_of("api.example.com.:8443"), "api.example.com");
        assert_eq!(host_of("api.example.com.."), "api.example.com");
    }

    #[test]
    fn strip_and_rewrite() {
        let mut r = route("a", PathMatch::Prefix("/api".into()), &[], None).cfg;
        assert_eq!(upstream_path(&r, "/api/x"), "/api/x");
        r.strip_prefix = true;
        assert_eq!(upstream_path(&r, "/api/x"), "/x");
        assert_eq!(upstream_path(&r, "/api"), "/");
        r.strip_prefix = false;
        r.rewrite = Some("/v2".into());
        assert_eq!(upstream_path(&r, "/api/x"), "/v2/x");
        assert_eq!(upstream_path(&r, "/api"), "/v2");
        let mut root = route("r", PathMatch::Prefix("".into()), &[], None).cfg;
        root.rewrite = Some("/app".into());
        assert_eq!(upstream_path(&root, "/x"), "/app/x");
    }
}
