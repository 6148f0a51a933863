//! Path normalization (SPEC §5): the one path that routing, policy and the upstream see.
//!
//! Percent-escapes of unreserved characters are decoded; `.`/`..` segments are resolved
//! (after decoding, so `%2e%2e` is `..`); repeated `/` are merged. Anything still carrying
//! an encoded `/`, `\` or NUL, a raw backslash, a malformed escape or a `..` above the root
//! is refused, because a gateway and an app that disagree on a path is how auth is bypassed.
//! So is a `;` anywhere in the path: servlet containers strip `;` path parameters before
//! routing (`/public/..;/admin` is `/admin` to Tomcat), which would put the app on a different
//! path than the one the gateway judged.

/// Why a path was refused (log only).
pub type Refusal = &'static str;

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decode one segment: unreserved escapes decoded, other escapes kept (hex uppercased).
fn decode_segment(seg: &str, out: &mut String) -> Result<(), Refusal> {
    let b = seg.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (h, l) = match (
                    b.get(i + 1).and_then(|c| hex(*c)),
                    b.get(i + 2).and_then(|c| hex(*c)),
                ) {
                    (Some(h), Some(l)) => (h, l),
                    _ => return Err("malformed percent-escape"),
                };
                let v = h * 16 + l;
                match v {
                    b'/' => return Err("encoded slash"),
                    b'\\' => return Err("encoded backslash"),
                    0 => return Err("encoded NUL"),
                    _ if unreserved(v) => out.push(v as char),
                    _ => {
                        out.push('%');
                        out.push(char::from(b"0123456789ABCDEF"[h as usize]));
                        out.push(char::from(b"0123456789ABCDEF"[l as usize]));
                    }
                }
                i += 3;
            }
            b'\\' => return Err("backslash"),
            0 => return Err("NUL"),
            c => {
                // Input comes from http::Uri, which is ASCII; keep any byte as-is.
                out.push(c as char);
                i += 1;
            }
        }
    }
    Ok(())
}

/// Normalize an absolute path (no query). `Ok` holds the canonical form.
pub fn normalize(path: &str) -> Result<String, Refusal> {
    if !path.starts_with('/') {
        return Err("not an absolute path");
    }
    // One pass: refuse a `;` (path parameters: servlet containers, Tomcat, Jetty, Spring,
    // strip them before routing, so the upstream would see another path than the one the
    // gateway decided on), and see whether anything needs the full treatment: an escape, a
    // backslash or NUL, a repeated `/`, a `.` or `..` segment.
    let b = path.as_bytes();
    let mut simple = true;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b';' => return Err("`;` in the path"),
            b'%' | b'\\' | 0 => simple = false,
            b'/' if b.get(i + 1) == Some(&b'/') => simple = false,
            b'.' if b[i - 1] == b'/' => {
                let end = |j: usize| matches!(b.get(j), None | Some(b'/'));
                if end(i + 1) || (b.get(i + 1) == Some(&b'.') && end(i + 2)) {
                    simple = false;
                }
            }
            _ => {}
        }
    }
    if simple {
        Ok(path.to_string())
    } else {
        full(path)
    }
}

/// The full normalization of an absolute path without `;`.
fn full(path: &str) -> Result<String, Refusal> {
    let mut segments: Vec<String> = Vec::new();
    let raw: Vec<&str> = path[1..].split('/').collect();
    let last = raw.len() - 1;
    let mut trailing_slash = false;
    for (i, seg) in raw.iter().enumerate() {
        let mut s = String::with_capacity(seg.len());
        decode_segment(seg, &mut s)?;
        match s.as_str() {
            "" => {
                if i == last {
                    trailing_slash = true;
                }
            }
            "." => trailing_slash = i == last,
            ".." => {
                if segments.pop().is_none() {
                    return Err("dot-dot above the root");
                }
                trailing_slash = i == last;
            }
            _ => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{full, normalize};
    use proptest::prelude::*;

    #[test]
    fn examples() {
        let ok = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a//b", "/a/b"),
            ("//a///b/", "/a/b/"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/../c", "/a/c"),
            ("/%61dmin", "/admin"),
            ("/a/%2e%2e/admin", "/admin"),
            ("/a/%2E/b", "/a/b"),
            ("/x%20y", "/x%20y"),
            ("/x%3fy", "/x%3Fy"),
            ("/a/.", "/a/"),
            ("/..a", "/..a"),
        ];
        for (i, o) in ok {
            assert_eq!(normalize(i).as_deref(), Ok(o), "{i}");
        }
        for bad in [
            "/a%2Fb",
            "/a%2fb",
            "/a%5Cb",
            "/a%00b",
            "/a\\b",
            "/..",
            "/a/../..",
            "/%2e%2e/x",
            "/%zz",
            "/%4",
            "a/b",
            "/public/..;/admin",
            "/admin;x/secret",
            "/a;jsessionid=1",
        ] {
            assert!(normalize(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn normalized_is_a_fixed_point(p in "/[a-z./%0-9A-F]{0,30}") {
            if let Ok(n) = normalize(&p) {
                let again = normalize(&n);
                prop_assert_eq!(again.as_deref(), Ok(n.as_str()));
                prop_assert!(n.starts_with('/'));
                prop_assert!(!n.contains("//"));
                prop_assert!(!n.split('/').any(|s| s == "." || s == ".."));
            }
        }

        /// The one-pass check sends to the full normalization every path it would change.
        #[test]
        fn fast_path_agrees_with_the_full_one(p in "/[a-z./%0-9A-F\\\\]{0,30}") {
            prop_assert_eq!(normalize(&p), full(&p));
        }
    }
}
