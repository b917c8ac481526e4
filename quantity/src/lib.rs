//! Kubernetes resource quantities ("100m", "1.5", "128Mi", "1e3") as exact integers.
//!
//! API validation checks them, the scheduler sums them and the node agent hands them to
//! processes (`resourceFieldRef`), all in integers as Kubernetes does
//! (`Quantity.MilliValue()` / `Quantity.Value()`, rounded up): with floating point, three
//! pods of 100m would not fit on 300m.

/// A parsed quantity in thousandths of its unit (milli-units), or `None` if invalid.
pub fn millis(q: &str) -> Option<i128> {
    let q = q.trim();
    if q.is_empty() {
        return None;
    }
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let (negative, number) = match number.as_bytes().first() {
        Some(b'-') => (true, &number[1..]),
        Some(b'+') => (false, &number[1..]),
        _ => (false, number),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // value = (int.frac) * 10^exp10 * 2^exp2, kept exact as a fraction over 10^frac.len().
    let (exp10, exp2): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        s if s.starts_with(['e', 'E']) => (s[1..].parse().ok()?, 0),
        _ => return None,
    };
    let digits: i128 = format!("{int}{frac}").trim_start_matches('0').parse().unwrap_or(0);
    let scale = exp10 + 3 - frac.len() as i32;
    let mut value = digits.checked_mul(1i128.checked_shl(exp2)?)?;
    if scale >= 0 {
        value = value.checked_mul(10i128.checked_pow(scale as u32)?)?;
    } else {
        // Round up as Kubernetes does when a quantity is finer than the unit asked for.
        let div = 10i128.checked_pow((-scale) as u32)?;
        value = (value + div - 1) / div;
    }
    Some(if negative { -value } else { value })
}

/// A quantity in thousandths of its unit (millicores for cpu), rounded up.
pub fn milli(q: &str) -> Option<i64> {
    millis(q).and_then(|m| i64::try_from(m).ok())
}

/// A quantity in whole units (bytes for memory, a count for pods), rounded up (away from
/// zero, as for the thousandths).
pub fn value(q: &str) -> Option<i64> {
    let m = millis(q)?;
    let whole = (m.abs() + 999) / 1000;
    i64::try_from(if m < 0 { -whole } else { whole }).ok()
}

#[cfg(test)]
mod tests {
    use super::{milli, millis, value};

    #[test]
    fn quantities_are_exact_integers() {
        assert_eq!(millis("100m"), Some(100));
        assert_eq!(millis("1"), Some(1000));
        assert_eq!(millis("1.5"), Some(1500));
        assert_eq!(millis("128Mi"), Some(128 * 1024 * 1024 * 1000));
        assert_eq!(millis("1G"), Some(1_000_000_000_000));
        assert_eq!(millis("1e3"), Some(1_000_000));
        assert_eq!(millis("1n"), Some(1));
        assert_eq!(millis("-2"), Some(-2000));
        assert_eq!(millis("lots"), None);
        assert_eq!(millis("1.2.3"), None);
        assert_eq!(millis("12Qi"), None);
        assert_eq!(millis("100m").map(|v| v * 3), millis("300m"));
    }

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
