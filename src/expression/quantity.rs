//! Kubernetes resource quantities (`500m`, `8Gi`, `1e3`) as a CEL type.
//!
//! Written by hand because the crates that parse quantities go through
//! `f64` (kube_quantity 0.9 parses the number with nom's `double`), which
//! loses precision and so cannot compare exactly as Kubernetes does. This
//! follows `k8s.io/apimachinery/pkg/api/resource`: the grammar of
//! `ParseQuantity`, magnitudes rounded up to a whole nano-unit and capped
//! at 2^63-1 units, and the canonical form of `Quantity.String()`.

use cel::common::types::{Kind, Type};
use cel::common::value::{StaticVal, Val};
use num_bigint::BigUint;
use std::any::Any;
use std::cmp::Ordering;
use std::fmt;

/// The CEL type of quantities, named as in Kubernetes.
pub(crate) static QUANTITY_TYPE: Type = Type::simple_type(Kind::Opaque, "kubernetes.Quantity");

const NANOS_PER_UNIT: i128 = 1_000_000_000;

/// The largest magnitude a parsed quantity has, 2^63-1 units, in nano-units.
const MAX_NANOS: i128 = i64::MAX as i128 * NANOS_PER_UNIT;

/// The maximum number of significant digits in a quantity. More would let a
/// hostile string of digits cost quadratic time to convert. Kubernetes
/// accepts them, but no real quantity needs them.
const MAX_DIGITS: usize = 1000;

const DECIMAL_SUFFIXES: [(&str, i64); 10] = [
    ("n", -9),
    ("u", -6),
    ("m", -3),
    ("", 0),
    ("k", 3),
    ("M", 6),
    ("G", 9),
    ("T", 12),
    ("P", 15),
    ("E", 18),
];

const BINARY_SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

/// The notation a quantity was written in, which its canonical string keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `1.5Gi`: powers of 1024.
    BinarySi,
    /// `500m`, `2k`, `3`: powers of 1000.
    DecimalSi,
    /// `1e3`, `5E-3`.
    DecimalExponent,
}

/// A quantity, held exactly as a whole number of nano-units.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quantity {
    nanos: i128,
    format: Format,
}

/// An error parsing a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum QuantityError {
    #[error(
        "{0:?} is not a quantity: expected a number with an optional suffix \
         (n, u, m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei) or exponent (e3), such as 500m or 8Gi"
    )]
    Invalid(String),
    #[error("{0:?} has more than {MAX_DIGITS} significant digits; round it")]
    TooManyDigits(String),
}

impl Quantity {
    pub(crate) fn parse(text: &str) -> Result<Quantity, QuantityError> {
        let invalid = || QuantityError::Invalid(text.to_owned());
        let (negative, rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let integer_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (integer, rest) = rest.split_at(integer_len);
        let (fraction, suffix) = match rest.strip_prefix('.') {
            Some(after_point) => {
                let fraction_len = after_point.bytes().take_while(u8::is_ascii_digit).count();
                after_point.split_at(fraction_len)
            }
            None => ("", rest),
        };
        if integer.is_empty() && fraction.is_empty() {
            return Err(invalid());
        }
        let (format, exponent10, exponent2) = parse_suffix(suffix).ok_or_else(invalid)?;
        let magnitude = nanos(integer, fraction, exponent10, exponent2)
            .ok_or_else(|| QuantityError::TooManyDigits(text.to_owned()))?;
        let nanos = if negative { -magnitude } else { magnitude };
        Ok(Quantity { nanos, format })
    }

    pub(crate) fn sign(&self) -> i64 {
        self.nanos.signum() as i64
    }

    /// Returns the value as an `int`, when it is a whole number that fits one.
    pub(crate) fn as_integer(&self) -> Option<i64> {
        if self.nanos % NANOS_PER_UNIT != 0 {
            return None;
        }
        i64::try_from(self.nanos / NANOS_PER_UNIT).ok()
    }

    pub(crate) fn as_approximate_float(&self) -> f64 {
        self.nanos as f64 / NANOS_PER_UNIT as f64
    }

    /// `self + other`, or `None` past ±1.7e29 units, which no sum of parsed
    /// quantities reaches in practice. Kubernetes keeps the format of `self`.
    pub(crate) fn checked_add(&self, other: &Quantity) -> Option<Quantity> {
        let nanos = self.nanos.checked_add(other.nanos)?;
        Some(Quantity { nanos, ..*self })
    }

    pub(crate) fn checked_sub(&self, other: &Quantity) -> Option<Quantity> {
        let nanos = self.nanos.checked_sub(other.nanos)?;
        Some(Quantity { nanos, ..*self })
    }

    /// `units` as a quantity of the same format as `self`.
    pub(crate) fn with_units(&self, units: i64) -> Quantity {
        let nanos = i128::from(units) * NANOS_PER_UNIT;
        Quantity { nanos, ..*self }
    }
}

/// Returns the format, power of ten and power of two a suffix means.
fn parse_suffix(suffix: &str) -> Option<(Format, i64, u32)> {
    if let Some(&(_, exponent)) = DECIMAL_SUFFIXES.iter().find(|(s, _)| *s == suffix) {
        return Some((Format::DecimalSi, exponent, 0));
    }
    if let Some(power) = BINARY_SUFFIXES.iter().skip(1).position(|s| *s == suffix) {
        return Some((Format::BinarySi, 0, 10 * (power as u32 + 1)));
    }
    let exponent = suffix.strip_prefix(['e', 'E'])?;
    let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Kubernetes reads the exponent as an int32.
    let exponent: i32 = exponent.parse().ok()?;
    Some((Format::DecimalExponent, i64::from(exponent), 0))
}

/// Computes the magnitude of `integer.fraction × 10^exponent10 × 2^exponent2`
/// in nano-units, rounded up and capped at [`MAX_NANOS`]. Returns `None`
/// when that would take more than [`MAX_DIGITS`] digits.
fn nanos(integer: &str, fraction: &str, exponent10: i64, exponent2: u32) -> Option<i128> {
    let fraction = fraction.trim_end_matches('0');
    let digits = format!("{integer}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some(0);
    }
    // The value is `digits × 10^scale` nano-units, times 2^exponent2.
    let scale = exponent10 - fraction.len() as i64 + 9;
    let len = digits.len() as i64;
    // At least 10^28 nano-units, past the cap whatever follows.
    if len - 1 + scale >= 28 {
        return Some(MAX_NANOS);
    }
    // Below 10^len × 2^60 / 10^-scale < 1 nano-unit: rounded up to one.
    if -scale > len + 19 {
        return Some(1);
    }
    if digits.len() > MAX_DIGITS {
        return None;
    }
    let mantissa = BigUint::parse_bytes(digits.as_bytes(), 10)? << exponent2;
    let value = if scale >= 0 {
        mantissa * BigUint::from(10u32).pow(scale as u32)
    } else {
        let divisor = BigUint::from(10u32).pow(-scale as u32);
        let rounded_up = (&mantissa % &divisor) != BigUint::ZERO;
        mantissa / divisor + u32::from(rounded_up)
    };
    Some(i128::try_from(value).map_or(MAX_NANOS, |n| n.min(MAX_NANOS)))
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

/// The canonical form Kubernetes prints: `1536Mi` for `1.5Gi`, `500m` for
/// `0.5`, `1500e3` for `1.5e6`.
impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }

        let sign = if self.nanos < 0 { "-" } else { "" };
        let magnitude = self.nanos.unsigned_abs();
        let nanos_per_unit = NANOS_PER_UNIT as u128;

        // Binary quantities print in powers of 1024 when whole and at least 1Ki.
        if self.format == Format::BinarySi
            && magnitude >= 1024 * nanos_per_unit
            && magnitude % nanos_per_unit == 0
        {
            let (mut units, mut power) = (magnitude / nanos_per_unit, 0);
            while units % 1024 == 0 && power + 1 < BINARY_SUFFIXES.len() {
                units /= 1024;
                power += 1;
            }
            return write!(f, "{sign}{units}{}", BINARY_SUFFIXES[power]);
        }

        let (mut mantissa, mut exponent) = (magnitude, -9_i64);
        while mantissa % 10 == 0 {
            mantissa /= 10;
            exponent += 1;
        }
        while exponent.rem_euclid(3) != 0 {
            mantissa *= 10;
            exponent -= 1;
        }

        // Stripping k zeros and adding back at most k keeps the mantissa in range.
        let si = DECIMAL_SUFFIXES.iter().find(|(_, e)| *e == exponent);
        match si {
            Some((suffix, _)) if self.format != Format::DecimalExponent => {
                write!(f, "{sign}{mantissa}{suffix}")
            }
            _ if exponent == 0 => write!(f, "{sign}{mantissa}"),
            _ => write!(f, "{sign}{mantissa}e{exponent}"),
        }
    }
}

impl Val for Quantity {
    fn get_type(&self) -> &Type {
        &QUANTITY_TYPE
    }

    fn cel_type() -> &'static Type {
        &QUANTITY_TYPE
    }

    /// Equal by value, as in Kubernetes: `quantity("1") == quantity("1000m")`.
    fn equals(&self, other: &dyn Val) -> bool {
        other.downcast_ref::<Quantity>() == Some(self)
    }

    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(*self)
    }

    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}

impl StaticVal for Quantity {}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Quantity {
        match Quantity::parse(text) {
            Ok(quantity) => quantity,
            Err(error) => panic!("{error}"),
        }
    }

    #[test]
    fn parses_suffixes_and_exponents_exactly() {
        let cases: [(&str, i128); 16] = [
            ("0", 0),
            ("1", NANOS_PER_UNIT),
            ("+1.5", 1_500_000_000),
            ("-2", -2 * NANOS_PER_UNIT),
            ("500m", 500_000_000),
            (".5", 500_000_000),
            ("5.", 5 * NANOS_PER_UNIT),
            ("100u", 100_000),
            ("7n", 7),
            ("2k", 2_000 * NANOS_PER_UNIT),
            ("1E", 1_000_000_000_000_000_000 * NANOS_PER_UNIT),
            ("1Ki", 1024 * NANOS_PER_UNIT),
            ("1.5Gi", 1_610_612_736 * NANOS_PER_UNIT),
            ("1e3", 1_000 * NANOS_PER_UNIT),
            ("1E-3", 1_000_000),
            ("00012.3400", 12_340_000_000),
        ];
        for (text, nanos) in cases {
            assert_eq!(parse(text).nanos, nanos, "{text}");
        }
    }

    #[test]
    fn rounds_magnitudes_up_to_a_nano_unit() {
        assert_eq!(parse("0.1n").nanos, 1);
        assert_eq!(parse("-0.1n").nanos, -1);
        assert_eq!(parse("1.0000000001").nanos, NANOS_PER_UNIT + 1);
        assert_eq!(parse("1e-300").nanos, 1);
        assert_eq!(parse("0.5e-9").nanos, 1);
        assert_eq!(parse("0.0000000000Ki").nanos, 0);
    }

    #[test]
    fn caps_magnitudes_at_the_int64_range() {
        for text in [
            "9223372036854775808",
            "1e100",
            "8Ei",
            "123456789012345678901234567890",
        ] {
            assert_eq!(parse(text).nanos, MAX_NANOS, "{text}");
        }
        assert_eq!(parse("-1e100").nanos, -MAX_NANOS);
        assert_eq!(parse("9223372036854775807").nanos, MAX_NANOS);
    }

    #[test]
    fn rejects_what_kubernetes_rejects() {
        let invalid = [
            "",
            ".",
            "-",
            "+",
            "1.5x",
            "1K",
            "1ki",
            "1e",
            "1e+",
            "1e1.5",
            "1 ",
            " 1",
            "1.2.3",
            "Ki",
            "e3",
            "1Kii",
            "nan",
            "inf",
            "1e99999999999",
            "--1",
            "1,5",
        ];
        for text in invalid {
            assert_eq!(
                Quantity::parse(text).unwrap_err(),
                QuantityError::Invalid(text.to_owned()),
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_numbers_too_long_to_compute() {
        let text = format!("1.{}1", "0".repeat(MAX_DIGITS));
        assert!(matches!(
            Quantity::parse(&text),
            Err(QuantityError::TooManyDigits(_))
        ));
        let long_but_tiny = format!("0.{}1", "0".repeat(MAX_DIGITS));
        assert_eq!(parse(&long_but_tiny).nanos, 1);
    }

    #[test]
    fn prints_the_canonical_form() {
        let cases = [
            ("0", "0"),
            ("1000", "1k"),
            ("1024", "1024"),
            ("0.5", "500m"),
            ("1.5", "1500m"),
            ("1500m", "1500m"),
            ("0.1n", "1n"),
            ("100u", "100u"),
            ("1Ki", "1Ki"),
            ("1024Ki", "1Mi"),
            ("1.5Gi", "1536Mi"),
            ("0.5Ki", "512"),
            ("1.5Ki", "1536"),
            ("-1.5Gi", "-1536Mi"),
            ("1Ei", "1Ei"),
            ("8Ei", "9223372036854775807"),
            ("1e3", "1e3"),
            ("1E3", "1e3"),
            ("1.5e6", "1500e3"),
            ("1e0", "1"),
            ("1e-3", "1e-3"),
            ("1E", "1E"),
            ("12M", "12M"),
        ];
        for (text, canonical) in cases {
            assert_eq!(parse(text).to_string(), canonical, "{text}");
        }
    }

    #[test]
    fn compares_by_value() {
        assert_eq!(parse("1"), parse("1000m"));
        assert_eq!(parse("1Ki"), parse("1024"));
        assert!(parse("1k") < parse("1Ki"));
        assert!(parse("-1") < parse("1n"));
    }

    #[test]
    fn converts_to_integer_and_float() {
        assert_eq!(parse("8Gi").as_integer(), Some(8_589_934_592));
        assert_eq!(parse("1500m").as_integer(), None);
        assert_eq!(parse("-3").as_integer(), Some(-3));
        assert_eq!(parse("1e100").as_integer(), Some(i64::MAX));
        assert_eq!(parse("250m").as_approximate_float(), 0.25);
    }

    #[test]
    fn arithmetic_keeps_the_receiver_format_and_checks_overflow() {
        let sum = parse("1Gi")
            .checked_add(&parse("512M"))
            .map(|q| q.to_string());
        assert_eq!(sum.as_deref(), Some("1548576Ki"));
        let sum = parse("1Gi").checked_add(&parse("1")).map(|q| q.to_string());
        assert_eq!(sum.as_deref(), Some("1073741825"));
        let sum = parse("1Gi")
            .checked_add(&parse("1Gi"))
            .map(|q| q.to_string());
        assert_eq!(sum.as_deref(), Some("2Gi"));
        let difference = parse("1").checked_sub(&parse("1500m"));
        assert_eq!(difference.map(|q| q.to_string()).as_deref(), Some("-500m"));
        let huge = Quantity {
            nanos: i128::MAX,
            format: Format::DecimalSi,
        };
        assert!(huge.checked_add(&parse("1n")).is_none());
    }
}
