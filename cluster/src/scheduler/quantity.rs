//! Kubernetes resource quantities ("100m", "1.5", "128Mi", "1e3") as exact integers.
//!
//! The scheduler compares sums of requests with allocatable amounts, so it counts in
//! integers as Kubernetes does: CPU in millicores and everything else in whole units,
//! both rounded up (`Quantity.MilliValue()` / `Quantity.Value()`). With floating point,
//! three pods of 100m would not fit on 300m.

/// A quantity in thousandths of its unit (millicores for cpu), rounded up.
pub fn milli(q: &str) -> Option<i64> {
    scaled(q, 3)
}

/// A quantity in whole units (bytes for memory, a count for pods), rounded up.
pub fn value(q: &str) -> Option<i64> {
    scaled(q, 0)
}

/// `q` times 10^`shift`, rounded up to an integer; `None` if malformed or out of range.
fn scaled(q: &str, shift: i32) -> Option<i64> {
    let q = q.trim();
    let (negative, rest) = match q.as_bytes().first()? {
        b'-' => (true, &q[1..]),
        b'+' => (false, &q[1..]),
        _ => (false, q),
    };
    let split = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(split);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    // The digits as one integer and the power of ten that places the decimal point.
    let mut mantissa: i128 = 0;
    for d in whole.bytes().chain(fraction.bytes()) {
        mantissa = mantissa.checked_mul(10)?.checked_add(i128::from(d - b'0'))?;
    }
    let mut exp10 = shift - i32::try_from(fraction.len()).ok()?;
    let binary: i128 = match suffix {
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        _ => {
            exp10 += match suffix {
                "" => 0,
                "n" => -9,
                "u" => -6,
                "m" => -3,
                "k" => 3,
                "M" => 6,
                "G" => 9,
                "T" => 12,
                "P" => 15,
                "E" => 18,
                s if s.starts_with(['e', 'E']) => s[1..].parse::<i32>().ok()?,
                _ => return None,
            };
            1
        }
    };
    let mut n = mantissa.checked_mul(binary)?;
    if exp10 >= 0 {
        n = n.checked_mul(10i128.checked_pow(u32::try_from(exp10).ok()?)?)?;
    } else {
        let divisor = 10i128.checked_pow(u32::try_from(-exp10).ok()?).unwrap_or(i128::MAX);
        // Rounded up, away from zero for positive amounts as Kubernetes does.
        n = n / divisor + i128::from(n % divisor != 0);
    }
    let n = if negative { -n } else { n };
    i64::try_from(n).ok()
}

#[cfg(test)]
mod tests {
    use super::{milli, value};

    #[test]
    fn parses_kubernetes_quantities_exactly() {
        let cases: &[(&str, Option<i64>, Option<i64>)] = &[
            // (quantity, milli, value)
            ("100m", Some(100), Some(1)),
            ("2", Some(2000), Some(2)),
            ("1.5", Some(1500), Some(2)),
            ("0.1", Some(100), Some(1)),
            (".5", Some(500), Some(1)),
            ("250u", Some(1), Some(1)),
            ("128Mi", Some(134_217_728_000), Some(134_217_728)),
            ("1Gi", Some(1_073_741_824_000), Some(1_073_741_824)),
            ("1G", Some(1_000_000_000_000), Some(1_000_000_000)),
            ("1e3", Some(1_000_000), Some(1000)),
            ("1.5Ki", Some(1_536_000), Some(1536)),
            ("110", Some(110_000), Some(110)),
            ("-1", Some(-1000), Some(-1)),
            ("lots", None, None),
            ("", None, None),
            ("1Zi", None, None),
        ];
        for (q, m, v) in cases {
            assert_eq!(milli(q), *m, "milli({q:?})");
            assert_eq!(value(q), *v, "value({q:?})");
        }
        // Three 100m pods fit exactly on 300m.
        assert_eq!(3 * milli("100m").unwrap(), milli("300m").unwrap());
        assert_eq!(milli("0.3"), milli("300m"));
    }
}
