//! The few messages whose JSON form is not an object of their fields: times, durations,
//! quantities, int-or-strings and embedded raw JSON. Their layouts are fixed by
//! apimachinery (and checked against k8s-pb's prost types in the tests).

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use super::table::Special;
use super::wire::{next_field, write_len, write_varint, Raw};
use super::{envelope, ProtobufError};

/// Go's zero `time.Time` in Unix seconds: a `Time` holding it is JSON `null`.
const GO_ZERO_TIME: i64 = -62_135_596_800;

fn bad(what: &str, value: impl std::fmt::Display) -> ProtobufError {
    ProtobufError::Field {
        field: what.to_string(),
        message: format!("invalid value {value}"),
    }
}

/// Decodes a special message.
pub fn decode(sp: Special, mut buf: &[u8]) -> Result<Value, ProtobufError> {
    let empty = buf.is_empty();
    let (mut ints, mut bytes): ([i64; 4], [Option<&[u8]>; 4]) = ([0; 4], [None; 4]);
    while !buf.is_empty() {
        match next_field(&mut buf)? {
            (tag @ 1..=3, Raw::Varint(v)) => ints[tag as usize] = v as i64,
            (tag @ 1..=3, Raw::Len(data)) => bytes[tag as usize] = Some(data),
            _ => {}
        }
    }
    let text = |tag: usize| -> Result<String, ProtobufError> {
        let data = bytes[tag].unwrap_or_default();
        String::from_utf8(data.to_vec()).map_err(|_| bad("string", "(not UTF-8)"))
    };
    Ok(match sp {
        // Go's Time keeps whole seconds only (its JSON has no fraction).
        Special::Time if empty || ints[1] == GO_ZERO_TIME => Value::Null,
        Special::Time => Value::String(format_time(ints[1], None)?),
        Special::MicroTime if empty || ints[1] == GO_ZERO_TIME => Value::Null,
        Special::MicroTime => Value::String(format_time(ints[1], Some(ints[2] as i32))?),
        Special::Duration => Value::String(format_duration(ints[1])),
        Special::Quantity if bytes[1].is_none() => Value::String("0".into()),
        Special::Quantity => Value::String(text(1)?),
        // type 1 is a string; anything else an int32.
        Special::IntOrString if ints[1] == 1 => Value::String(text(3)?),
        Special::IntOrString => Value::from(ints[2] as i32),
        Special::RawExtension | Special::FieldsV1 => match bytes[1] {
            None | Some([]) => Value::Null,
            Some(raw) if raw.starts_with(&envelope::MAGIC) => envelope::decode_object(raw)?,
            Some(raw) => serde_json::from_slice(raw).map_err(|e| bad("raw", e))?,
        },
    })
}

/// Encodes a special message from its JSON form.
pub fn encode(sp: Special, value: &Value, out: &mut Vec<u8>) -> Result<(), ProtobufError> {
    match sp {
        Special::Time | Special::MicroTime => {
            let text = value.as_str().ok_or_else(|| bad("time", value))?;
            let ts: Timestamp = text.parse().map_err(|_| bad("time", value))?;
            let nanos = if sp == Special::MicroTime {
                ts.subsec_nanosecond()
            } else {
                0
            };
            write_varint(1, ts.as_second() as u64, out);
            write_varint(2, nanos as i64 as u64, out);
        }
        Special::Duration => {
            let text = value.as_str().ok_or_else(|| bad("duration", value))?;
            write_varint(
                1,
                parse_duration(text).ok_or_else(|| bad("duration", value))? as u64,
                out,
            );
        }
        Special::Quantity => {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(bad("quantity", value)),
            };
            write_len(1, text.as_bytes(), out);
        }
        // Go writes all three fields.
        Special::IntOrString => match value {
            Value::Number(n) => {
                let i = n
                    .as_i64()
                    .and_then(|i| i32::try_from(i).ok())
                    .ok_or_else(|| bad("int-or-string", value))?;
                write_varint(1, 0, out);
                write_varint(2, i as i64 as u64, out);
                write_len(3, b"", out);
            }
            Value::String(s) => {
                write_varint(1, 1, out);
                write_varint(2, 0, out);
                write_len(3, s.as_bytes(), out);
            }
            _ => return Err(bad("int-or-string", value)),
        },
        Special::RawExtension | Special::FieldsV1 => {
            let raw = serde_json::to_vec(value).map_err(|e| bad("raw", e))?;
            write_len(1, &raw, out);
        }
    }
    Ok(())
}

/// RFC 3339 in UTC: whole seconds, or microseconds for a `MicroTime`.
fn format_time(seconds: i64, nanos: Option<i32>) -> Result<String, ProtobufError> {
    let ts = Timestamp::new(seconds, nanos.unwrap_or(0)).map_err(|e| bad("time", e))?;
    let base = ts.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    Ok(match nanos {
        Some(n) => format!("{base}.{:06}Z", n / 1000),
        None => format!("{base}Z"),
    })
}

/// Go's `time.Duration.String()`: `1h2m3.5s`, `150ms`, `0s`.
pub fn format_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    let frac = |v: u64, unit: u64, width: usize| {
        let (whole, rest) = (v / unit, v % unit);
        if rest == 0 {
            whole.to_string()
        } else {
            let digits = format!("{rest:0width$}");
            format!("{whole}.{}", digits.trim_end_matches('0'))
        }
    };
    let body = if n < 1_000 {
        format!("{n}ns")
    } else if n < 1_000_000 {
        format!("{}µs", frac(n, 1_000, 3))
    } else if n < 1_000_000_000 {
        format!("{}ms", frac(n, 1_000_000, 6))
    } else {
        let hours = n / 3_600_000_000_000;
        let minutes = n % 3_600_000_000_000 / 60_000_000_000;
        let seconds = frac(n % 60_000_000_000, 1_000_000_000, 9);
        match (hours, minutes) {
            (0, 0) => format!("{seconds}s"),
            (0, m) => format!("{m}m{seconds}s"),
            (h, m) => format!("{h}h{m}m{seconds}s"),
        }
    };
    format!("{sign}{body}")
}

/// Go's `time.ParseDuration`: a sequence of decimal numbers with units.
pub fn parse_duration(text: &str) -> Option<i64> {
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    let total = total.round() as i64;
    Some(if negative { -total } else { total })
}
