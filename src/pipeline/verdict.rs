//! Phases 2–5 (IP policy, route, rate limits, auth): the verdict on a request before anything
//! goes upstream. Forward auth and `explain` ask the same question.

use super::*;

/// A request as phases 2–5 see it (also built by forward auth and `explain`).
pub struct Ask<'a> {
    pub method: &'a Method,
    /// Without port; compared case-insensitively.
    pub host: Option<&'a str>,
    /// Normalized.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// The resolved client IP (phase 1).
    pub ip: IpAddr,
    /// When the request arrived: the time its rate-limit checks count it at.
    pub started: Instant,
}

/// The verdict of phases 2–5.
pub struct Judged {
    pub route: usize,
    pub claims: Option<Claims>,
}

/// Phases 2–5: IP policy, route, rate limits, auth. Cheap checks come first, so an
/// abusive client never reaches signature verification.
pub async fn judge(
    a: &Ask<'_>,
    active: &Active,
    state: &State,
    out: &mut Outcome,
) -> Result<Judged, Reject> {
    let cfg = &active.config;
    let ip = a.ip;

    // 2. global IP policy. A dry-run route records an address outside the global allow list
    // and goes on (rolling out a new allow list); the global deny list is a blocklist and
    // holds on every route.
    if let Err(e) = active.ip_policy.check(ip) {
        if !global_refusal_recorded(active, ip, a.method, a.host, a.path) {
            return Err(e);
        }
        enforce(Err(e), true, out)?;
    }

    // 3. route, then its own IP policy
    let idx = route::find(&active.routes, a.method, a.host, a.path)?;
    out.route = Some(idx);
    let route = &active.routes[idx];
    let rc = &route.cfg;
    if let Some(p) = &route.ip {
        if let Err(e) = enforce(p.check(ip), rc.dry_run, out) {
            // Refused before the limits: they count nothing, and report where the client
            // stands.
            out.ratelimit = first_policy_state(a, active, state, idx);
            return Err(e);
        }
    }

    // 4. rate limits (subject-keyed policies wait for a verified subject after phase 5); a
    // login lock-out between the local ones and the shared `global` ones, whose count cannot
    // be given back: a locked-out client never spends everyone's shared budget.
    let counted = limits(a, active, state, idx, None, false, Pass::Local, 0, out).await?;
    if let AuthMode::Mint(_) = rc.auth {
        if let Some(left) = shared::login_locked(active, state, ip).await? {
            if !rc.dry_run {
                // Refused: what the limits counted is given back, as for a policy's refusal.
                let now = active.limiters.time(a.started);
                refund(a, active, idx, None, false, counted, now, out);
            }
            enforce(
                Err(Reject::LoginLocked { retry_after: left }),
                rc.dry_run,
                out,
            )?;
        }
    }
    if state.store.shared().is_some() {
        limits(
            a,
            active,
            state,
            idx,
            None,
            false,
            Pass::Shared,
            counted,
            out,
        )
        .await?;
    }

    // 5. auth
    let mut claims = None;
    if let AuthMode::Token = rc.auth {
        let (Some(tc), Some(keys)) = (&cfg.token, &active.keys) else {
            return Err(Reject::Internal("token route without keys".into()));
        };
        let verdict = auth::verify(
            a.headers,
            tc,
            keys,
            &state.store,
            cfg.store.on_error,
            ip,
            &rc.require,
            &mut out.sub,
        )
        .await;
        crate::metrics::verified(verdict.as_ref().err().map(Reject::code));
        match verdict {
            Ok(c) => claims = Some(c),
            Err(e) => enforce(Err(e), rc.dry_run, out)?,
        }
        let sub = claims.as_ref().and_then(|c| c.sub.as_deref());
        limits(a, active, state, idx, sub, true, Pass::Both, 0, out).await?;
    }
    Ok(Judged { route: idx, claims })
}

/// Which of a route's policies [`limits`] checks: those kept in this instance, the `global`
/// ones kept in the shared store, or both (local first).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    Local,
    Shared,
    Both,
}

/// Check the route's rate-limit policies of one kind (subject-keyed or not). `global` policies
/// kept in the shared store come last: their count cannot be given back, so a client the local
/// policies refuse never spends everyone's shared budget. `counted`: the policies (by
/// position, the first 64) that counted the request in an earlier pass. Returns those that
/// have counted it now, for [`refund`].
#[allow(clippy::too_many_arguments)]
pub(super) async fn limits(
    a: &Ask<'_>,
    active: &Active,
    state: &State,
    idx: usize,
    sub: Option<&str>,
    subject_phase: bool,
    pass: Pass,
    mut counted: u64,
    out: &mut Outcome,
) -> Result<u64, Reject> {
    let rc = &active.routes[idx].cfg;
    let now = active.limiters.time(a.started);
    let shared_store = state.store.shared().is_some();
    // Shared `global` policies in a second pass; without a shared store there are none.
    let passes: &[bool] = match (pass, shared_store) {
        (_, false) | (Pass::Local, true) => &[false],
        (Pass::Shared, true) => &[true],
        (Pass::Both, true) => &[false, true],
    };

    for &shared_pass in passes {
        for (n, &pi) in rc.rate_limit.iter().enumerate() {
            let policy = active.limiters.policy(pi);
            let shared = policy.key == LimitKey::Global && shared_store;
            if shared != shared_pass {
                continue;
            }
            if (policy.key == LimitKey::Subject) != subject_phase {
                if n == 0 && !subject_phase {
                    // The first policy waits for a verified subject: until then (and on a
                    // refusal before it) the headers report its whole quota, since nothing was
                    // counted.
                    let full = rate_limit::Decision::untouched(policy.burst);
                    out.ratelimit = Some(ratelimit_headers(active, pi, &full));
                }
                continue;
            }
            let d = if shared {
                Box::pin(shared::global(active, state, policy)).await?
            } else {
                None
            };
            let d = match d {
                Some(d) => d,
                None => active
                    .limiters
                    .check_at(pi, &key_input(a, &rc.name, sub), now),
            };
            if n == 0 {
                out.ratelimit = Some(ratelimit_headers(active, pi, &d));
            }
            if d.allowed {
                if n < 64 {
                    counted |= 1 << n;
                }
                continue;
            }
            if !rc.dry_run {
                // On a dry-run route the refusal is counted as one (`iptgate_dry_run_total`).
                crate::metrics::rate_limited(&policy.name);
                refund(a, active, idx, sub, subject_phase, counted, now, out);
            }
            enforce(
                Err(Reject::RateLimited {
                    policy: policy.name.clone(),
                    retry_after: d.retry_after,
                }),
                rc.dry_run,
                out,
            )?;
        }
    }
    Ok(counted)
}

/// The headers of the route's first policy for a request it did not count: its client's bucket
/// as it stands. A subject-keyed policy before verification, or a `global` one kept in the
/// shared store (not asked for a refused request), reports its whole quota.
fn first_policy_state(
    a: &Ask<'_>,
    active: &Active,
    state: &State,
    idx: usize,
) -> Option<(HeaderValue, HeaderValue)> {
    let rc = &active.routes[idx].cfg;
    let &pi = rc.rate_limit.first()?;
    let policy = active.limiters.policy(pi);
    let remote = policy.key == LimitKey::Global && state.store.shared().is_some();
    let d = if remote {
        rate_limit::Decision::untouched(policy.burst)
    } else {
        let now = active.limiters.time(a.started);
        active
            .limiters
            .peek_at(pi, &key_input(a, &rc.name, None), now)
    };
    Some(ratelimit_headers(active, pi, &d))
}

/// What a rate-limit policy keys the request on.
fn key_input<'a>(a: &'a Ask<'_>, route: &'a str, sub: Option<&'a str>) -> rate_limit::KeyInput<'a> {
    rate_limit::KeyInput {
        ip: a.ip,
        sub,
        route,
        headers: a.headers,
    }
}

/// `RateLimit-Policy` and `RateLimit` for policy `pi` in state `d`.
pub(super) fn ratelimit_headers(
    active: &Active,
    pi: usize,
    d: &rate_limit::Decision,
) -> (HeaderValue, HeaderValue) {
    let (policy_hdr, name) = &active.ratelimit_headers[pi];
    (policy_hdr.clone(), rate_limit::state_header(name, d))
}

/// A request one policy refuses costs nothing in the route's others: what they counted is
/// given back, so a client that waits out `Retry-After` gets in. `counted`: the policies of
/// this phase that counted the request (by position); in the subject phase every non-subject
/// policy has. A `global` policy's count in the shared store is not given back (it is
/// checked last, see [`limits`]).
#[allow(clippy::too_many_arguments)]
fn refund(
    a: &Ask<'_>,
    active: &Active,
    idx: usize,
    sub: Option<&str>,
    subject_phase: bool,
    counted: u64,
    now: rate_limit::Time,
    out: &mut Outcome,
) {
    let rc = &active.routes[idx].cfg;
    for (m, &pi) in rc.rate_limit.iter().enumerate() {
        let is_subject = active.limiters.policy(pi).key == LimitKey::Subject;
        let was_counted = if is_subject == subject_phase {
            m < 64 && counted & (1 << m) != 0
        } else {
            subject_phase
        };
        if !was_counted {
            continue;
        }
        if let Some(d) = active
            .limiters
            .refund_at(pi, &key_input(a, &rc.name, sub), now)
        {
            if m == 0 {
                out.ratelimit = Some(ratelimit_headers(active, pi, &d));
            }
        }
    }
}

/// On a dry-run route a refusal is recorded and the request goes on.
/// Whether the global IP policy's refusal of `ip` is only recorded: the address is outside
/// the allow list (not denied: the deny list holds on every route) and the request's route
/// is a dry run (rolling out a new allow list).
pub fn global_refusal_recorded(
    active: &Active,
    ip: std::net::IpAddr,
    method: &http::Method,
    host: Option<&str>,
    path: &str,
) -> bool {
    !active.ip_policy.denies(ip)
        && route::find(&active.routes, method, host, path)
            .is_ok_and(|i| active.routes[i].cfg.dry_run)
}

fn enforce(r: Result<(), Reject>, dry_run: bool, out: &mut Outcome) -> Result<(), Reject> {
    match r {
        Err(e) if dry_run => {
            // Logged with the request's fields by the access log, at the end.
            crate::metrics::dry_run(e.code());
            out.dry_run.push((e.code(), e.cause().to_string()));
            Ok(())
        }
        other => other,
    }
}
