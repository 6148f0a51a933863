//! Human units in gateway.toml: durations ("500ms", "30d"), sizes ("10MiB") and rates ("100/s").

use std::time::Duration;

/// "500ms", "30s", "15m", "1h", "30d", or combinations ("1h 30m").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    // `M` is a month to the parser and a minute to many readers: refused as ambiguous.
    let b = s.as_bytes();
    if b.iter()
        .enumerate()
        .any(|(i, &c)| c == b'M' && !b.get(i + 1).is_some_and(u8::is_ascii_alphabetic) && i > 0)
    {
        return Err(format!(
            "`{s}`: `M` is ambiguous (minutes or months?); write \"15m\" for minutes or \"30d\" for days"
        ));
    }
    // humantime's own message lists units beyond the documented ones: not repeated.
    humantime::parse_duration(s.trim()).map_err(|_| {
        format!("`{s}` is not a duration; write e.g. \"500ms\", \"30s\", \"15m\", \"1h\", \"30d\" or \"1h 30m\"")
    })
}

/// "10MiB", "512KiB", "1GB", "1000" (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size; write e.g. \"10MiB\", \"512KiB\", \"1GB\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "`{s}`: unknown size unit; use B, KB, KiB, MB, MiB, GB or GiB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// "100/s", "5/m", "1000/h" -> (count, period).
pub fn parse_rate(s: &str) -> Result<(u32, Duration), String> {
    let err = || format!("`{s}` is not a rate; write N/s, N/m, N/h or N/d (e.g. \"100/s\")");
    let (n, unit) = s.trim().split_once('/').ok_or_else(err)?;
    let n: u32 = n.trim().parse().map_err(|_| err())?;
    if n == 0 {
        return Err(format!("`{s}`: the rate must be at least 1"));
    }
    let per = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86_400),
        _ => return Err(err()),
    };
    Ok((n, per))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("10").is_err());
        // A month to the parser, a minute to many readers.
        assert!(parse_duration("1M").unwrap_err().contains("ambiguous"));
        assert!(parse_duration("1h 5M").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("2 KB"), Ok(2000));
        assert!(parse_size("10 parsecs").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100/s"), Ok((100, Duration::from_secs(1))));
        assert_eq!(parse_rate("5/m"), Ok((5, Duration::from_secs(60))));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("5 per minute").is_err());
    }
}
