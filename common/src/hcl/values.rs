//! Parsers of the values both config files share: Go durations (SPIRE's syntax), ports, listen
//! addresses, paths, HTTP paths and trust domains. Each returns the message a config error
//! shows at the key's line.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use sigil_proto::TrustDomain;

/// Parses a port written as a string, with the message config errors use.
pub fn parse_port(s: &str) -> Result<u16, String> {
    s.parse().map_err(|_| format!("{s:?} is not a valid port"))
}

/// Parses a duration in Go's `time.ParseDuration` syntax, which SPIRE's config uses: a
/// sequence of decimal numbers, each with an optional fraction and a unit among `ns`, `us`
/// (`µs`), `ms`, `s`, `m`, `h`; or `0`. Negative durations are refused.
///
/// Hand-written because humantime's syntax differs both ways: it accepts units SPIRE rejects
/// (`d`, `w`, `y`) and rejects fractions SPIRE accepts (`1.5h`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = || {
        format!("{s:?} is not a valid duration (use Go syntax such as \"24h\", \"1h30m\", \"90s\")")
    };
    let rest = s.strip_prefix('+').unwrap_or(s);
    if rest.starts_with('-') {
        return Err(format!(
            "{s:?} is negative; a duration must be positive or zero"
        ));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total_nanos: u128 = 0;
    let mut rest = rest;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(after) => {
                let frac_len = after
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after.len());
                after.split_at(frac_len)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            _ => return Err(invalid()),
        };
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| invalid())?
        };
        let mut nanos = int.checked_mul(unit_nanos).ok_or_else(invalid)?;
        // The fraction: digits beyond nanosecond precision are dropped, as in Go.
        let mut scale = unit_nanos;
        for digit in frac_part.bytes() {
            scale /= 10;
            nanos += u128::from(digit - b'0') * scale;
        }
        total_nanos = total_nanos.checked_add(nanos).ok_or_else(invalid)?;
        rest = after;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| invalid())?;
    // The remainder is below 10^9, so it fits in u32.
    let subsec = (total_nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, subsec))
}

/// Parses an IP address, also accepting `localhost` (SPIRE's default for listener addresses).
pub fn parse_listen_ip(s: &str) -> Result<IpAddr, String> {
    if s.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    s.parse()
        .map_err(|_| format!("{s:?} is not a valid IP address"))
}

/// Parses a trust domain, with the message config errors use.
pub fn parse_trust_domain(s: &str) -> Result<TrustDomain, String> {
    TrustDomain::new(s).map_err(|e| format!("{s:?} is not a valid trust domain: {e}"))
}

/// Parses a path that must be given (an empty string is refused).
pub fn parse_path(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(PathBuf::from(s))
    }
}

/// Parses an HTTP path: it must start with `/`.
pub fn parse_http_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} is not an HTTP path (it must start with /)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ok = [
            ("0", Duration::ZERO),
            ("24h", Duration::from_secs(86_400)),
            ("1h30m", Duration::from_secs(5_400)),
            ("90s", Duration::from_secs(90)),
            ("500ms", Duration::from_millis(500)),
            ("1.5h", Duration::from_secs(5_400)),
            (".5s", Duration::from_millis(500)),
            ("+5m", Duration::from_secs(300)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("1ns", Duration::from_nanos(1)),
            ("2h45m10s", Duration::from_secs(9_910)),
        ];
        for (s, want) in ok {
            assert_eq!(parse_duration(s), Ok(want), "{s}");
        }
        for bad in [
            "", "forever", "5", "1d", "h", ".s", "1.h2", "5 m", "-1h", "1hh",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(
            parse_duration("forever").unwrap_err(),
            r#""forever" is not a valid duration (use Go syntax such as "24h", "1h30m", "90s")"#
        );
    }
}
