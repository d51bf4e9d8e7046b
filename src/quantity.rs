//! Kubernetes quantities (`500m`, `2`, `1.5Gi`, `1e3`, `64M`): the one parser the operator
//! (pod prices) and the simulator (capacities and requests) share. It follows the grammar of
//! `resource.Quantity` in k8s.io/apimachinery:
//!
//! ```text
//! <quantity>        ::= <signedNumber><suffix>
//! <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
//! <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
//! <decimalSI>       ::= n | u | m | "" | k | M | G | T | P | E
//! <decimalExponent> ::= "e" <signedInteger> | "E" <signedInteger>
//! <signedNumber>    ::= [+-] <digits> | [+-] <digits>. | [+-] <digits>.<digits> | [+-] .<digits>
//! ```
//!
//! Values are `f64`: exact for what capacities and requests are written as, and what the
//! pricing arithmetic uses anyway. Surrounding whitespace is tolerated (Kubernetes rejects it;
//! both callers always have).

/// A parsed quantity: the number as written and the power its suffix scales it by.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quantity {
    number: f64,
    scale: Scale,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scale {
    /// × 10^n (decimal SI suffixes and exponents).
    Decimal(i32),
    /// × 1024^n (binary SI suffixes).
    Binary(i32),
}

const BINARY: [(&str, i32); 6] = [
    ("Ki", 1),
    ("Mi", 2),
    ("Gi", 3),
    ("Ti", 4),
    ("Pi", 5),
    ("Ei", 6),
];
const DECIMAL: [(&str, i32); 9] = [
    ("n", -9),
    ("u", -6),
    ("m", -3),
    ("k", 3),
    ("M", 6),
    ("G", 9),
    ("T", 12),
    ("P", 15),
    ("E", 18),
];

impl Quantity {
    /// Parses `s`; `None` when it is not a quantity in the grammar above (or out of `f64`'s
    /// range).
    pub fn parse(s: &str) -> Option<Quantity> {
        let s = s.trim();
        let end = number_end(s)?;
        let (number, suffix) = s.split_at(end);
        let scale = suffix_scale(suffix)?;
        let number: f64 = number.parse().ok()?;
        let q = Quantity { number, scale };
        q.value().is_finite().then_some(q)
    }

    /// The value in base units (cores, bytes, pods).
    pub fn value(self) -> f64 {
        self.in_units_of(0)
    }

    /// The value in units of 10^`exp` (`-3`: milli-units, as CPU is counted). Scaled in one
    /// step from the number as written, so `"500m"` is exactly 500 milli-units.
    pub fn in_units_of(self, exp: i32) -> f64 {
        match self.scale {
            Scale::Decimal(e) => times_ten_to(self.number, e - exp),
            Scale::Binary(k) => times_ten_to(self.number * 1024f64.powi(k), -exp),
        }
    }
}

/// `v × 10^e`, dividing for negative `e` (10^-e is exact in `f64` up to 10^22, its reciprocal
/// is not).
fn times_ten_to(v: f64, e: i32) -> f64 {
    if e >= 0 {
        v * 10f64.powi(e)
    } else {
        v / 10f64.powi(-e)
    }
}

/// Where `<signedNumber>` ends in `s`; `None` when `s` does not start with one (at least one
/// digit, before or after the point).
fn number_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let int_start = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    let mut digits = i - int_start;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let frac_start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        digits += i - frac_start;
    }
    (digits > 0).then_some(i)
}

/// The scale a suffix gives: SI (decimal or binary) or an exponent with a signed integer.
fn suffix_scale(suffix: &str) -> Option<Scale> {
    if suffix.is_empty() {
        return Some(Scale::Decimal(0));
    }
    if let Some(&(_, k)) = BINARY.iter().find(|(s, _)| *s == suffix) {
        return Some(Scale::Binary(k));
    }
    if let Some(&(_, e)) = DECIMAL.iter().find(|(s, _)| *s == suffix) {
        return Some(Scale::Decimal(e));
    }
    let exp = suffix.strip_prefix(['e', 'E'])?;
    let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    exp.parse().ok().map(Scale::Decimal)
}

/// A quantity as a number of base units; `None` when it does not parse.
pub fn parse_quantity(s: &str) -> Option<f64> {
    Quantity::parse(s).map(Quantity::value)
}

/// A non-negative quantity in units of 10^`exp`, rounded to a whole number; `None` when it does
/// not parse, is negative or does not fit a `u64`.
pub fn parse_whole(s: &str, exp: i32) -> Option<u64> {
    let v = Quantity::parse(s)?.in_units_of(exp).round();
    // 2^64 is exactly representable; anything at or above it does not fit.
    (0.0..18_446_744_073_709_551_616.0)
        .contains(&v)
        .then_some(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The operator's pricing suite (pod requests and Node capacities).
    #[test]
    fn base_units() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("1Gi"), Some(1_073_741_824.0));
        assert_eq!(parse_quantity("64M"), Some(64e6));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("2E"), Some(2e18));
        assert_eq!(parse_quantity("lots"), None);
        assert_eq!(parse_quantity("Gi"), None);
    }

    /// The simulator's suite: CPU in millicores, memory in bytes.
    #[test]
    fn millicores_and_bytes() {
        let cpu = |s| parse_whole(s, -3);
        let memory = |s| parse_whole(s, 0);
        assert_eq!(cpu("500m"), Some(500));
        assert_eq!(cpu("2"), Some(2000));
        assert_eq!(cpu("1.5"), Some(1500));
        assert_eq!(cpu("x"), None);
        assert_eq!(memory("1Gi"), Some(1 << 30));
        assert_eq!(memory("512Mi"), Some(512 << 20));
        assert_eq!(memory("1G"), Some(1_000_000_000));
        assert_eq!(memory("12ab"), None);
        assert_eq!(memory("1.5Gi"), Some(3 << 29));
        assert_eq!(memory("1000"), Some(1000));
        assert_eq!(memory("1E"), Some(1_000_000_000_000_000_000));
        // Millicores are counted from the number as written, not through a rounded 0.001.
        assert_eq!(cpu("123456789m"), Some(123_456_789));
        assert_eq!(cpu("3500m"), Some(3500));
    }

    /// The grammar's other forms: a sign, a point without digits on one side, exponents with
    /// a sign, and the small SI suffixes.
    #[test]
    fn the_whole_grammar() {
        assert_eq!(parse_quantity("+1"), Some(1.0));
        assert_eq!(parse_quantity("-1"), Some(-1.0));
        assert_eq!(parse_quantity(".5"), Some(0.5));
        assert_eq!(parse_quantity("5."), Some(5.0));
        assert_eq!(parse_quantity("1.5e3"), Some(1500.0));
        assert_eq!(parse_quantity("1E+3"), Some(1000.0));
        assert_eq!(parse_quantity("1e-3"), Some(0.001));
        assert_eq!(parse_quantity("1u"), Some(1e-6));
        assert_eq!(parse_quantity("3n"), Some(3e-9));
        assert_eq!(parse_quantity(" 2Gi "), Some(2.0 * 1_073_741_824.0));
        for bad in [
            "", ".", "+", "1.2.3", "1e", "1e1.5", "1K", "1ki", "1Gb", "1 Gi", "0x10", "1_000",
        ] {
            assert_eq!(parse_quantity(bad), None, "{bad:?}");
        }
        // Negative quantities parse; a capacity or request cannot be one.
        assert_eq!(parse_whole("-1", -3), None);
        assert_eq!(parse_whole("1e30", 0), None, "out of u64 range");
    }

    /// Inputs on which the simulator's and the operator's old parsers disagreed, with the
    /// answer `resource.Quantity`'s grammar gives.
    #[test]
    fn where_the_old_parsers_disagreed() {
        // Fractional millicores: the simulator required whole millicores before `m`; the
        // grammar allows a decimal number before any suffix (1.5m CPU is 1.5 millicores).
        assert_eq!(parse_whole("1.5m", -3), Some(2));
        // `k`, binary suffixes and `E` on a CPU quantity: the simulator read only `m` or a
        // plain number; any suffix applies to any resource (1k CPU is 1000 cores).
        assert_eq!(parse_whole("1k", -3), Some(1_000_000));
        assert_eq!(parse_whole("1Ki", -3), Some(1_024_000));
        // `m`, `u`, `n` on memory: the simulator's memory suffixes stopped at `k`; 500m bytes
        // is half a byte (Kubernetes rounds it up to 1, and so does rounding to nearest).
        assert_eq!(parse_whole("500m", 0), Some(1));
        assert_eq!(parse_quantity("500m"), Some(0.5));
        // The old operator parser stripped `Gi` then read any f64, so it took `1e3Gi`;
        // Kubernetes does not: a suffix is SI *or* an exponent, never both.
        assert_eq!(parse_quantity("1e3Gi"), None);
        // Both read f64's own spellings after a suffix; none is a Kubernetes number.
        assert_eq!(parse_quantity("infGi"), None);
        assert_eq!(parse_quantity("NaN"), None);
    }
}
