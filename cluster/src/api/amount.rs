//! Resource amounts that quota and limit admission add, compare and print: an exact
//! integer (thousandths, from [`crate::quantity`]) with the format Kubernetes keeps beside
//! it, printed the way `resource.Quantity.String()` prints (`500m`, `1`, `1536Mi`, `1500k`),
//! so messages and `status.used` read as they do in Kubernetes.
//!
//! The format follows Kubernetes' rules: a sum keeps its first term's format unless that
//! term is zero; a binary amount that is not a whole number of bytes, or is under 1024,
//! prints as a decimal one.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

/// How an amount was written, which is how it prints (`resource.Format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `k`, `M`, `m`, or no suffix.
    DecimalSi,
    /// `Ki`, `Mi`, `Gi`...
    BinarySi,
    /// `1e3`.
    DecimalExponent,
}

/// An exact resource amount: thousandths of its unit, and its format.
#[derive(Debug, Clone, Copy)]
pub struct Amount {
    /// The amount in thousandths of its unit (millicores, millibytes, milli-objects).
    pub millis: i128,
    /// How it prints.
    pub format: Format,
}

/// Resource name -> amount, sorted by name (a `ResourceList`).
pub type ResourceList = BTreeMap<String, Amount>;

impl PartialEq for Amount {
    fn eq(&self, other: &Self) -> bool {
        self.millis == other.millis
    }
}

impl Eq for Amount {}

impl PartialOrd for Amount {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Amount {
    fn cmp(&self, other: &Self) -> Ordering {
        self.millis.cmp(&other.millis)
    }
}

impl Amount {
    /// Zero, as Kubernetes prints an empty usage (`0`).
    pub const ZERO: Amount = Amount {
        millis: 0,
        format: Format::DecimalSi,
    };

    /// `n` whole units, decimal (`pods: 1`).
    pub fn count(n: i64) -> Amount {
        Amount {
            millis: i128::from(n) * 1000,
            format: Format::DecimalSi,
        }
    }

    /// Parses a quantity string; `None` if it is not one.
    pub fn parse(q: &str) -> Option<Amount> {
        let millis = crate::quantity::millis(q)?;
        let q = q.trim();
        let suffix = q.trim_start_matches(|c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '.'));
        // `1E` is exa (decimal); `1e3` and `1E3` are exponents.
        let format = if suffix.ends_with('i') {
            Format::BinarySi
        } else if suffix.len() > 1 && suffix.starts_with(['e', 'E']) {
            Format::DecimalExponent
        } else {
            Format::DecimalSi
        };
        Some(Amount { millis, format })
    }

    /// The amount at `list[name]` of a JSON `ResourceList`, if it is a valid quantity.
    pub fn at(list: Option<&serde_json::Value>, name: &str) -> Option<Amount> {
        list?.get(name)?.as_str().and_then(Amount::parse)
    }

    /// Whether the amount is zero.
    pub fn is_zero(&self) -> bool {
        self.millis == 0
    }

    /// The sum; a zero left side takes the right side's format, as `Quantity.Add` does.
    pub fn plus(self, other: Amount) -> Amount {
        Amount {
            millis: self.millis.saturating_add(other.millis),
            format: if self.millis == 0 { other.format } else { self.format },
        }
    }

    /// The difference, in this amount's format (as `Quantity.Sub`).
    pub fn minus(self, other: Amount) -> Amount {
        Amount {
            millis: self.millis.saturating_sub(other.millis),
            format: if self.millis == 0 { other.format } else { self.format },
        }
    }

    /// Kubernetes' `Quantity.Value()`: whole units, rounded up.
    pub fn value(&self) -> i128 {
        let whole = (self.millis.abs() + 999) / 1000;
        if self.millis < 0 {
            -whole
        } else {
            whole
        }
    }
}

/// `(mantissa, times)`: `n` with every factor `base` taken out, and how many there were.
fn remove_factors(mut n: i128, base: i128) -> (i128, u32) {
    let mut times = 0;
    while n != 0 && n % base == 0 {
        n /= base;
        times += 1;
    }
    (n, times)
}

/// The suffix of a decimal exponent (a multiple of 3) in `format`.
fn decimal_suffix(exponent: i32, format: Format) -> String {
    if format == Format::DecimalSi {
        let si = match exponent {
            -9 => Some("n"),
            -6 => Some("u"),
            -3 => Some("m"),
            0 => Some(""),
            3 => Some("k"),
            6 => Some("M"),
            9 => Some("G"),
            12 => Some("T"),
            15 => Some("P"),
            18 => Some("E"),
            _ => None,
        };
        if let Some(s) = si {
            return s.to_string();
        }
    }
    if exponent == 0 {
        String::new()
    } else {
        format!("e{exponent}")
    }
}

impl fmt::Display for Amount {
    /// `Quantity.String()`: the canonical form (`CanonicalizeBytes`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.millis == 0 {
            return f.write_str("0");
        }
        let whole = self.millis % 1000 == 0;
        let binary = self.format == Format::BinarySi && whole && self.millis.abs() >= 1024 * 1000;
        if binary {
            let (mantissa, times) = remove_factors(self.millis / 1000, 1024);
            return match ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"].get(times as usize) {
                Some(suffix) => write!(f, "{mantissa}{suffix}"),
                // Past Ei there is no suffix: print the bytes.
                None => write!(f, "{}", self.millis / 1000),
            };
        }
        let format = match self.format {
            Format::BinarySi => Format::DecimalSi,
            other => other,
        };
        // Every trailing zero out, then back down to an exponent that is a multiple of 3.
        let (mut mantissa, times) = remove_factors(self.millis, 10);
        let mut exponent = times as i32 - 3;
        match exponent.rem_euclid(3) {
            1 => {
                mantissa *= 10;
                exponent -= 1;
            }
            2 => {
                mantissa *= 100;
                exponent -= 2;
            }
            _ => {}
        }
        write!(f, "{mantissa}{}", decimal_suffix(exponent, format))
    }
}

/// `a + b`, key by key (`quota.Add`).
pub fn add(a: &ResourceList, b: &ResourceList) -> ResourceList {
    let mut out = a.clone();
    for (k, v) in b {
        let sum = match out.get(k) {
            Some(x) => x.plus(*v),
            None => *v,
        };
        out.insert(k.clone(), sum);
    }
    out
}

/// `a - b`, key by key (`quota.Subtract`: a key only in `b` is negated).
pub fn subtract(a: &ResourceList, b: &ResourceList) -> ResourceList {
    let mut out = a.clone();
    for (k, v) in b {
        let diff = match out.get(k) {
            Some(x) => x.minus(*v),
            None => Amount::ZERO.minus(*v),
        };
        out.insert(k.clone(), diff);
    }
    out
}

/// The entries of `list` whose names are in `names` (`quota.Mask`).
pub fn mask<'a>(list: &ResourceList, names: impl IntoIterator<Item = &'a String>) -> ResourceList {
    names
        .into_iter()
        .filter_map(|n| list.get(n).map(|v| (n.clone(), *v)))
        .collect()
}

/// `list` as `name=amount,...` sorted by name (the quota admission's `prettyPrint`).
pub fn pretty(list: &ResourceList) -> String {
    list.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A JSON `ResourceList` parsed; entries that are not quantities are left out (validation
/// reports them).
pub fn from_json(list: Option<&serde_json::Value>) -> ResourceList {
    list.and_then(serde_json::Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str().and_then(Amount::parse)?)))
        .collect()
}

/// `list` as a JSON `ResourceList` of canonical quantities.
pub fn to_json(list: &ResourceList) -> serde_json::Value {
    serde_json::Value::Object(
        list.iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.to_string())))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(q: &str) -> String {
        Amount::parse(q)
            .map(|a| a.to_string())
            .unwrap_or_else(|| "invalid".into())
    }

    #[test]
    fn amounts_print_as_kubernetes_prints_quantities() {
        let cases = [
            ("500m", "500m"),
            ("1000m", "1"),
            ("1", "1"),
            ("1.5", "1500m"),
            ("0.1", "100m"),
            ("2000", "2k"),
            ("1500000", "1500k"),
            ("1M", "1M"),
            ("128Mi", "128Mi"),
            ("1024Mi", "1Gi"),
            ("1.5Gi", "1536Mi"),
            ("1000Ki", "1000Ki"),
            ("100Ki", "100Ki"),
            // Under 1024 bytes a binary amount prints as decimal.
            ("0.5Ki", "512"),
            ("1e3", "1e3"),
            ("1e6", "1e6"),
            ("1E", "1E"),
            ("0", "0"),
            ("0Mi", "0"),
            ("-500m", "-500m"),
            ("lots", "invalid"),
        ];
        for (q, want) in cases {
            assert_eq!(canonical(q), want, "{q}");
        }
    }

    #[test]
    fn sums_keep_the_first_terms_format_and_compare_exactly() {
        let gi = Amount::parse("1Gi").unwrap();
        let half = Amount::parse("512Mi").unwrap();
        assert_eq!(gi.plus(half).to_string(), "1536Mi");
        assert_eq!(Amount::ZERO.plus(half).to_string(), "512Mi");
        // A binary amount that is not a whole number of KiB prints in bytes.
        assert_eq!(gi.plus(Amount::parse("1G").unwrap()).to_string(), "2073741824");
        let cpu = Amount::parse("100m").unwrap();
        assert_eq!(cpu.plus(cpu).plus(cpu), Amount::parse("300m").unwrap());
        assert_eq!(Amount::parse("1").unwrap().minus(cpu).to_string(), "900m");
        assert!(Amount::parse("1.001").unwrap() > Amount::parse("1").unwrap());
        assert_eq!(Amount::parse("100m").unwrap().value(), 1);
    }

    #[test]
    fn lists_add_subtract_mask_and_print() {
        let a = from_json(Some(&serde_json::json!({"pods": "2", "requests.cpu": "1", "bad": "x"})));
        assert_eq!(a.len(), 2, "an invalid quantity is left out");
        let b = from_json(Some(&serde_json::json!({"pods": "1", "requests.memory": "1Gi"})));
        let sum = add(&a, &b);
        assert_eq!(pretty(&sum), "pods=3,requests.cpu=1,requests.memory=1Gi");
        let diff = subtract(&a, &b);
        assert_eq!(pretty(&diff), "pods=1,requests.cpu=1,requests.memory=-1Gi");
        let names = vec!["pods".to_string(), "limits.cpu".to_string()];
        assert_eq!(pretty(&mask(&sum, &names)), "pods=3");
        assert_eq!(to_json(&mask(&sum, &names)), serde_json::json!({"pods": "3"}));
    }
}
