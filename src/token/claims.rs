//! The verified claims of a presented token.
//!
//! The payload is indexed in one pass (claim name → where its JSON value sits in the
//! payload text) and values are parsed only when asked for: a request reads a handful of
//! registered claims, and building a full `serde_json::Map` per request was the largest part
//! of verification. Duplicate claim names are refused, so no two parsers can disagree on
//! which value counts.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::TokenError;

/// A claim name: where it sits in the payload, or its unescaped text when the payload
/// spelled it with escapes.
#[derive(Debug, Clone)]
enum Name {
    At(Range<u32>),
    Unescaped(Box<str>),
}

/// Verified claims of a presented token.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    /// The verified payload (JSON text).
    payload: Box<str>,
    /// Every claim: its name's tag, its name and the range of its JSON value in `payload`.
    index: Vec<Entry>,
    pub sub: Option<String>,
    pub jti: Option<String>,
    pub exp: u64,
    pub ip: Option<IpAddr>,
    pub dev: Option<String>,
    pub fam: Option<String>,
}

#[derive(Debug, Clone)]
struct Entry {
    tag: u64,
    name: Name,
    value: Range<u32>,
}

/// A cheap first comparison of claim names (most are three bytes long): the length and the
/// first seven bytes packed into one word. Equal names have equal tags.
fn tag(name: &str) -> u64 {
    let b = name.as_bytes();
    let mut t = (b.len().min(255) as u64) << 56;
    for (i, byte) in b.iter().take(7).enumerate() {
        t |= u64::from(*byte) << (8 * i);
    }
    t
}

/// A string that borrows from the input when it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Where `part` (a subslice of `whole`) starts and ends in `whole`.
fn span(whole: &str, part: &str) -> Option<Range<u32>> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    if end > whole.len() {
        return None;
    }
    Some(u32::try_from(start).ok()?..u32::try_from(end).ok()?)
}

/// Index a JSON object: each member's name and the span of its value.
fn index(payload: &str) -> Result<Vec<Entry>, TokenError> {
    struct Indexer<'p>(&'p str);
    impl<'de> Visitor<'de> for Indexer<'de> {
        type Value = Vec<Entry>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            use serde::de::Error;
            let mut out: Vec<Entry> = Vec::with_capacity(12);
            while let Some(Text(k)) = m.next_key::<Text<'de>>()? {
                let v: &'de RawValue = m.next_value()?;
                let at = span(self.0, v.get()).ok_or_else(|| A::Error::custom("span"))?;
                let name = match k {
                    Cow::Borrowed(b) => {
                        Name::At(span(self.0, b).ok_or_else(|| A::Error::custom("span"))?)
                    }
                    Cow::Owned(o) => Name::Unescaped(o.into_boxed_str()),
                };
                let text = name_text(self.0, &name);
                let tag = tag(text);
                if out
                    .iter()
                    .any(|e| e.tag == tag && name_text(self.0, &e.name) == text)
                {
                    return Err(A::Error::custom("duplicate claim"));
                }
                out.push(Entry {
                    tag,
                    name,
                    value: at,
                });
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(payload);
    let out = de
        .deserialize_map(Indexer(payload))
        .map_err(|_| TokenError::Invalid("payload not a JSON object without duplicate claims"))?;
    de.end()
        .map_err(|_| TokenError::Invalid("payload not a JSON object"))?;
    Ok(out)
}

fn name_text<'a>(payload: &'a str, n: &'a Name) -> &'a str {
    match n {
        Name::At(r) => payload.get(r.start as usize..r.end as usize).unwrap_or(""),
        Name::Unescaped(s) => s,
    }
}

impl Claims {
    /// Index a payload (signature already verified). Registered claims are left for
    /// `check_claims` to read.
    pub(crate) fn parse(payload: String) -> Result<Claims, TokenError> {
        let index = index(&payload)?;
        Ok(Claims {
            payload: payload.into_boxed_str(),
            index,
            ..Claims::default()
        })
    }

    /// Claims from a map (tests and tools).
    pub fn from_map(m: &Map<String, Value>) -> Claims {
        let text = Value::Object(m.clone()).to_string();
        Claims::parse(text).unwrap_or_default()
    }

    /// The JSON text of a claim's value.
    pub fn raw(&self, name: &str) -> Option<&str> {
        let t = tag(name);
        self.index
            .iter()
            .find(|e| e.tag == t && name_text(&self.payload, &e.name) == name)
            .and_then(|e| {
                self.payload
                    .get(e.value.start as usize..e.value.end as usize)
            })
    }

    /// A claim's value.
    pub fn get(&self, name: &str) -> Option<Value> {
        serde_json::from_str(self.raw(name)?).ok()
    }

    /// A string claim: absent → None; present but not a string → error.
    pub(crate) fn str(&self, name: &str) -> Result<Option<Cow<'_, str>>, TokenError> {
        match self.raw(name) {
            None => Ok(None),
            Some(raw) => serde_json::from_str::<Text<'_>>(raw)
                .map(|t| Some(t.0))
                .map_err(|_| TokenError::Invalid("claim of the wrong type")),
        }
    }

    /// A NumericDate claim (non-negative; fractions truncated).
    pub(crate) fn numeric_date(&self, name: &str) -> Result<Option<u64>, TokenError> {
        let Some(raw) = self.raw(name) else {
            return Ok(None);
        };
        let n: serde_json::Number =
            serde_json::from_str(raw).map_err(|_| TokenError::Invalid("date claim malformed"))?;
        n.as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or(TokenError::Invalid("date claim malformed"))
    }

    /// Every claim, as a map.
    pub fn to_map(&self) -> Map<String, Value> {
        self.index
            .iter()
            .filter_map(|e| {
                let raw = self
                    .payload
                    .get(e.value.start as usize..e.value.end as usize)?;
                Some((
                    name_text(&self.payload, &e.name).to_string(),
                    serde_json::from_str(raw).ok()?,
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_finds_each_claim_and_unescapes_names() {
        let c =
            Claims::parse(r#"{"sub":"a\"b","\u0072ole":["x",1],"n":1.5,"o":{"k":[1,{}]}}"#.into())
                .unwrap();
        assert_eq!(c.str("sub").unwrap().as_deref(), Some("a\"b"));
        assert_eq!(c.get("role"), Some(serde_json::json!(["x", 1])));
        assert_eq!(c.raw("o"), Some(r#"{"k":[1,{}]}"#));
        assert_eq!(c.numeric_date("n").unwrap(), Some(1));
        assert!(c.str("role").is_err());
        assert_eq!(c.raw("missing"), None);
        assert_eq!(c.to_map().len(), 4);
    }

    #[test]
    fn duplicates_and_non_objects_are_refused() {
        for bad in [
            r#"{"sub":"a","sub":"b"}"#,
            r#"{"sub":"a","\u0073ub":"b"}"#,
            r#"["sub"]"#,
            r#""x""#,
            r#"{"a":1} {"b":2}"#,
            r#"{"a":1"#,
        ] {
            assert!(Claims::parse(bad.into()).is_err(), "{bad}");
        }
        assert!(Claims::parse(" { } ".into()).is_ok());
    }

    #[test]
    fn negative_or_non_numeric_dates_are_malformed() {
        let c = Claims::parse(r#"{"a":-1,"b":"5","c":1e3}"#.into()).unwrap();
        assert!(c.numeric_date("a").is_err());
        assert!(c.numeric_date("b").is_err());
        assert_eq!(c.numeric_date("c").unwrap(), Some(1000));
    }
}
