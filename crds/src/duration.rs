//! Durations as written in workflow files: `90s`, `10m`, `1h30m`, `500ms`.
//!
//! Hand-written rather than humantime: the accepted grammar is exactly the
//! documented one (Go/Kubernetes style, no spaces, no months), and errors say
//! which part is wrong.

use std::time::Duration;

/// Parses `1h30m`-style durations: one or more `<number><unit>` parts with
/// units `h`, `m`, `s`, `ms`, largest first. Zero is rejected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("the duration is empty".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    let mut last_rank = u8::MAX;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("expected a number at `{rest}`"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{}` is too large", &rest[..digits]))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        let (rank, part) = match unit {
            "h" => (3, n.checked_mul(3600).map(Duration::from_secs)),
            "m" => (2, n.checked_mul(60).map(Duration::from_secs)),
            "s" => (1, Some(Duration::from_secs(n))),
            "ms" => (0, Some(Duration::from_millis(n))),
            "" => return Err(format!("`{n}` has no unit")),
            other => return Err(format!("unknown unit `{other}`")),
        };
        if rank >= last_rank {
            return Err(format!("unit `{unit}` is out of order or repeated"));
        }
        last_rank = rank;
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| "the duration is too large".to_string())?;
        rest = &rest[unit_len..];
    }
    if total.is_zero() {
        return Err("the duration is zero".into());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_forms_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1m500ms"), Ok(Duration::from_millis(60_500)));
    }

    #[test]
    fn malformed_durations_say_what_is_wrong() {
        assert_eq!(parse_duration("10"), Err("`10` has no unit".into()));
        assert_eq!(parse_duration("10x"), Err("unknown unit `x`".into()));
        assert_eq!(parse_duration("m"), Err("expected a number at `m`".into()));
        assert_eq!(
            parse_duration("30m1h"),
            Err("unit `h` is out of order or repeated".into())
        );
        assert_eq!(parse_duration("0s"), Err("the duration is zero".into()));
        assert_eq!(parse_duration(""), Err("the duration is empty".into()));
        assert!(parse_duration("99999999999999999999h").is_err());
    }
}
