//! Parsers for the string-typed fields the predecessor's CRDs fixed (durations, thresholds,
//! prices). The CEL rules in the schema accept exactly what these accept, so an object the API
//! server stored parses here; the errors still name the field for objects read from files.
//!
//! [`parse_duration`] is the one duration grammar of the project: CRD fields, scenario files
//! and command-line flags all call it, so a value that works in one place works in all.
use jiff::SignedDuration;

/// A field of a Group or Node CR that does not hold what it should. `field` is the path the
/// caller gave (e.g. `Node homelab/m1 spec.bootTimeout`), so the message says where to look.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("{field}: {}", duration_problem(.value))]
    Duration { field: String, value: String },
    #[error(
        "{field}: {value:?} is not a decimal between 0 and 1; write a fraction as a string, \
         e.g. \"0.5\" (for 70% write \"0.7\", not \"70\")"
    )]
    Threshold { field: String, value: String },
    #[error("{field}: {value:?} is not a non-negative decimal; write it like \"0.12\"")]
    Decimal { field: String, value: String },
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
}

/// Parses a Go-style duration (`time.ParseDuration` without a sign): a sequence of decimal
/// numbers each with a unit `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`, e.g. `1h30m`, `1.5s`; the bare
/// `0` is allowed as in Go. `field` names the field in the error.
///
/// Go's grammar because the Cluster Autoscaler's flags and Kubernetes' own durations use it, so
/// values copy between them; it has no day unit (`7d` is `168h`).
pub fn parse_duration(field: &str, value: &str) -> Result<SignedDuration, FieldError> {
    parse_go_duration(value).ok_or_else(|| FieldError::Duration {
        field: field.to_owned(),
        value: value.to_owned(),
    })
}

/// [`parse_duration`] for a command-line flag (clap's `value_parser`): a non-negative
/// `std::time::Duration`, and the message clap prints after the flag's name.
pub fn parse_duration_arg(value: &str) -> Result<std::time::Duration, String> {
    parse_go_duration(value)
        .and_then(|d| std::time::Duration::try_from(d).ok())
        .ok_or_else(|| duration_problem(value))
}

/// Why `value` is not a duration and what to write instead (without a field name).
pub fn duration_problem(value: &str) -> String {
    let hint = if let Some(hours) = days_as_hours(value) {
        format!(
            "there is no day unit (durations are written as in Kubernetes and the Cluster \
             Autoscaler's flags): write {hours}"
        )
    } else if value.chars().any(char::is_whitespace) {
        "write it without spaces, like 90s, 10m or 1h30m".to_owned()
    } else if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        format!("give it a unit, like {value}s or {value}m")
    } else {
        "write it like 90s, 10m or 1h30m (units ns, us, ms, s, m, h)".to_owned()
    };
    format!("{value:?} is not a duration; {hint}")
}

/// `7d` → `168h`, `2d12h` → `60h`: what a value written with days means, when it parses
/// otherwise and comes out in whole seconds.
fn days_as_hours(value: &str) -> Option<String> {
    let (days, rest) = value.split_once('d')?;
    if days.is_empty() || !days.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rest = if rest.is_empty() {
        SignedDuration::ZERO
    } else {
        parse_go_duration(rest)?
    };
    let days: i64 = days.parse().ok()?;
    let total = SignedDuration::from_hours(days.checked_mul(24)?).checked_add(rest)?;
    if total.subsec_nanos() != 0 {
        return None;
    }
    let secs = total.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = format!("{h}h");
    if m != 0 {
        out.push_str(&format!("{m}m"));
    }
    if s != 0 {
        out.push_str(&format!("{s}s"));
    }
    Some(out)
}

/// Go's `time.ParseDuration` without a sign, in integer nanoseconds. Written here rather than
/// taken from `kube::core::Duration`: that parser also takes an empty string (as zero) and a
/// sign, and multiplies in floating point; the CRDs' CEL rules accept exactly this grammar, so
/// an object the API server stored must parse here. `kube_duration_accepts_more_than_the_crds`
/// below pins the difference.
fn parse_go_duration(s: &str) -> Option<SignedDuration> {
    if s == "0" {
        return Some(SignedDuration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total_nanos: i128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        let (int_part, frac_part) = match num.split_once('.') {
            Some((i, f)) => (i, f),
            None => (num, ""),
        };
        // Go accepts "1.", ".5" but not "." and not two dots.
        if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
            return None;
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let unit_nanos: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            _ => return None,
        };
        let int: i128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().ok()?
        };
        let mut frac_nanos: i128 = 0;
        let mut scale: i128 = 1;
        for d in frac_part.bytes().take(18) {
            frac_nanos = frac_nanos * 10 + i128::from(d - b'0');
            scale *= 10;
        }
        total_nanos = total_nanos
            .checked_add(int.checked_mul(unit_nanos)?)?
            .checked_add(frac_nanos * unit_nanos / scale)?;
        rest = next;
    }
    // Go's limit: durations are int64 nanoseconds.
    let nanos = i64::try_from(total_nanos).ok()?;
    Some(SignedDuration::from_nanos(nanos))
}

/// Formats a duration the way Go prints `time.Duration` for whole seconds (`1h30m0s`), used for
/// defaults shown to users.
pub fn format_duration(d: SignedDuration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// Parses a scale-down threshold: a decimal string in [0, 1] (`"0.5"`).
pub fn parse_threshold(field: &str, value: &str) -> Result<f64, FieldError> {
    match parse_plain_decimal(value) {
        Some(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(FieldError::Threshold {
            field: field.to_owned(),
            value: value.to_owned(),
        }),
    }
}

/// Parses a non-negative decimal string such as a price (`"0.12"`).
pub fn parse_decimal(field: &str, value: &str) -> Result<f64, FieldError> {
    parse_plain_decimal(value).ok_or_else(|| FieldError::Decimal {
        field: field.to_owned(),
        value: value.to_owned(),
    })
}

/// Digits with at most one dot and at least one digit (`1`, `1.`, `.5`, `0.25`): the grammar of
/// [`DECIMAL_PATTERN`](super::cel::DECIMAL_PATTERN). No sign, no exponent.
fn parse_plain_decimal(s: &str) -> Option<f64> {
    let digits = s.bytes().filter(u8::is_ascii_digit).count();
    let dots = s.bytes().filter(|b| *b == b'.').count();
    if digits == 0 || dots > 1 || digits + dots != s.len() {
        return None;
    }
    s.parse().ok()
}

/// Whether `s` is a MAC address, six hex octets separated consistently by `:` or `-`.
pub fn is_mac(s: &str) -> bool {
    let sep = match s.as_bytes().get(2) {
        Some(b':') => ':',
        Some(b'-') => '-',
        _ => return false,
    };
    let parts: Vec<&str> = s.split(sep).collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Parses a MAC address into its six octets.
pub fn parse_mac(field: &str, value: &str) -> Result<[u8; 6], FieldError> {
    let bad = || FieldError::Invalid {
        field: field.to_owned(),
        problem: format!("{value:?} is not a MAC address; write it like aa:bb:cc:dd:ee:ff"),
    };
    if !is_mac(value) {
        return Err(bad());
    }
    let mut out = [0u8; 6];
    for (slot, part) in out.iter_mut().zip(value.split([':', '-'])) {
        *slot = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Option<SignedDuration> {
        parse_duration("f", s).ok()
    }

    #[test]
    fn durations_follow_go() {
        assert_eq!(d("0"), Some(SignedDuration::ZERO));
        assert_eq!(d("10m"), Some(SignedDuration::from_secs(600)));
        assert_eq!(d("1h30m"), Some(SignedDuration::from_secs(5400)));
        assert_eq!(d("1.5s"), Some(SignedDuration::from_millis(1500)));
        assert_eq!(d(".5h"), Some(SignedDuration::from_secs(1800)));
        assert_eq!(d("1."), None, "a number needs a unit");
        assert_eq!(d("1.s"), Some(SignedDuration::from_secs(1)));
        assert_eq!(d("300ms"), Some(SignedDuration::from_millis(300)));
        assert_eq!(d("2us"), Some(SignedDuration::from_micros(2)));
        assert_eq!(d("2µs"), Some(SignedDuration::from_micros(2)));
        assert_eq!(d("1h1m1s1ms"), Some(SignedDuration::from_millis(3_661_001)));
        for bad in [
            "", "10", "m", ".s", "1..5s", "-1m", "+1m", "1d", "10 m", "1h 2m", "abc",
        ] {
            assert_eq!(d(bad), None, "{bad:?} must be rejected");
        }
        // int64 nanoseconds overflow, as in Go.
        assert_eq!(d("2562048h"), None);
        assert!(d("2562047h").is_some());
    }

    #[test]
    fn duration_errors_say_what_to_write_instead() {
        let problem = |v: &str| parse_duration("spec.x", v).unwrap_err().to_string();
        assert!(problem("7d").ends_with("write 168h"), "{}", problem("7d"));
        assert!(
            problem("2d12h").ends_with("write 60h"),
            "{}",
            problem("2d12h")
        );
        assert!(
            problem("10 m").contains("without spaces"),
            "{}",
            problem("10 m")
        );
        assert!(problem("600").contains("like 600s"), "{}", problem("600"));
        assert!(problem("soon").contains("like 90s"), "{}", problem("soon"));
        assert!(
            problem("soon").starts_with("spec.x: \"soon\""),
            "{}",
            problem("soon")
        );
    }

    #[test]
    fn flags_use_the_same_grammar() {
        use std::time::Duration;
        assert_eq!(parse_duration_arg("2.5s"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration_arg("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration_arg("0"), Ok(Duration::ZERO));
        // What a looser parser would take, and the CRDs refuse.
        for bad in ["2 minutes", "PT2M", "1d", "-2s", "2", " 2s"] {
            assert!(parse_duration_arg(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn duration_error_names_field_and_fix() {
        let e = parse_duration("Node ns/m1 spec.bootTimeout", "ten minutes").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("spec.bootTimeout"), "{msg}");
        assert!(msg.contains("10m"), "{msg}");
    }

    #[test]
    fn thresholds() {
        assert_eq!(parse_threshold("t", "0.5"), Ok(0.5));
        assert_eq!(parse_threshold("t", "1"), Ok(1.0));
        assert_eq!(parse_threshold("t", "0"), Ok(0.0));
        assert_eq!(parse_threshold("t", ".25"), Ok(0.25));
        for bad in ["70", "1.01", "-0.1", "", "0.5.1", "1e-1", "half", " 0.5"] {
            let e = parse_threshold("spec.scaleDownUtilizationThreshold", bad).unwrap_err();
            assert!(e.to_string().contains("0.7"), "{e}");
            assert!(
                e.to_string().contains("scaleDownUtilizationThreshold"),
                "{e}"
            );
        }
    }

    #[test]
    fn decimals() {
        assert_eq!(parse_decimal("p", "0.12"), Ok(0.12));
        assert_eq!(parse_decimal("p", "3"), Ok(3.0));
        assert!(parse_decimal("p", "-1").is_err());
        assert!(parse_decimal("p", "$1").is_err());
        assert!(parse_decimal("p", ".").is_err());
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("m", "aa:BB:cc:00:11:22"),
            Ok([0xaa, 0xbb, 0xcc, 0x00, 0x11, 0x22])
        );
        assert!(is_mac("aa-bb-cc-00-11-22"));
        for bad in [
            "aa:bb:cc:00:11",
            "aa:bb-cc:00:11:22",
            "aabbcc001122",
            "gg:bb:cc:00:11:22",
            "aa:bb:cc:00:11:22:33",
        ] {
            assert!(!is_mac(bad), "{bad}");
            assert!(parse_mac("spec.power.powerOn.wakeOnLan.mac", bad).is_err());
        }
    }

    #[test]
    fn format_whole_seconds() {
        assert_eq!(format_duration(SignedDuration::from_secs(600)), "10m0s");
        assert_eq!(format_duration(SignedDuration::from_secs(5)), "5s");
        assert_eq!(format_duration(SignedDuration::from_secs(5400)), "1h30m0s");
    }
}

#[cfg(test)]
mod go_duration_tests {
    use super::*;

    /// Where `kube::core::Duration` (the duration parser already in the dependency tree) and
    /// ours agree, and the inputs on which it accepts what the CRDs reject: the reason ours stays.
    #[test]
    fn kube_duration_accepts_more_than_the_crds() {
        let kube = |v: &str| {
            v.parse::<kube::core::Duration>()
                .ok()
                .map(|d| std::time::Duration::from(d).as_nanos())
        };
        let ours = |v: &str| parse_go_duration(v).map(|d| d.as_nanos().unsigned_abs());
        for same in [
            "0",
            "1s",
            "90s",
            "10m",
            "1h30m",
            "1.5s",
            ".5s",
            "1.s",
            "100ms",
            "10us",
            "10µs",
            "10μs",
            "1ns",
            "2h45m30.5s",
            "5",
            "7d",
            "1x",
            "s",
            "1.5.5s",
            " 5s",
        ] {
            assert_eq!(kube(same), ours(same), "{same:?}");
        }
        for (kube_only, why) in [
            ("", "empty is not a duration (CEL rejects it)"),
            ("+5s", "signs are not part of the CRDs' grammar"),
            ("-5s", "a negative timeout makes no sense here"),
        ] {
            assert!(
                kube(kube_only).is_some() && ours(kube_only).is_none(),
                "{why}"
            );
        }
    }
}

/// A window the calendar could not parse is a field error like any other.
impl From<crate::operator::calendar::Invalid> for FieldError {
    fn from(e: crate::operator::calendar::Invalid) -> FieldError {
        FieldError::Invalid {
            field: e.field,
            problem: e.problem,
        }
    }
}
