//! The generic converter: protobuf wire format to Kubernetes JSON and back, for any
//! message of the table, driven only by the table (no per-type code besides the
//! [`Special`] types).
//!
//! Decoding follows Go's JSON encoding of the same object: Go's protobuf encoder writes
//! every non-pointer field even when zero, and its JSON encoder then drops the zero ones
//! (`omitempty`), so a zero scalar is dropped here unless the schema requires the field
//! or it is a known pointer field whose zero matters ([`super::table::EXPLICIT_ZEROS`]).
//! Messages are kept (Go writes non-pointer structs as `{}`), and a zero `Time` is `null`.

use base64::Engine as _;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{decode_key, decode_varint, encode_key, encode_varint, WireType};
use serde_json::{Map, Number, Value};

use super::special;
use super::table::{table, Card, JsonName, Scalar, Table, Ty};
use super::ProtobufError;

/// Deeper nesting than any Kubernetes type needs is refused (a hostile body can't recurse).
const MAX_DEPTH: u32 = 64;

fn malformed(what: impl std::fmt::Display) -> ProtobufError {
    ProtobufError::Malformed(what.to_string())
}

fn field_error(message: usize, field: &str, what: impl std::fmt::Display) -> ProtobufError {
    ProtobufError::Field {
        field: format!("{}.{field}", table().message(message).name),
        message: what.to_string(),
    }
}

/// Reads a length-delimited value.
pub(super) fn read_len<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], ProtobufError> {
    let len = decode_varint(buf).map_err(malformed)?;
    let len = usize::try_from(len).map_err(malformed)?;
    if len > buf.len() {
        return Err(malformed("a length runs past the end of the message"));
    }
    let (data, rest) = buf.split_at(len);
    *buf = rest;
    Ok(data)
}

/// One undecoded field value.
#[derive(Debug, Clone, Copy)]
pub(super) enum Raw<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
}

/// Reads the next field: its tag and undecoded value.
pub(super) fn next_field<'a>(buf: &mut &'a [u8]) -> Result<(u32, Raw<'a>), ProtobufError> {
    let (tag, wire) = decode_key(buf).map_err(malformed)?;
    let raw = match wire {
        WireType::Varint => Raw::Varint(decode_varint(buf).map_err(malformed)?),
        WireType::SixtyFourBit => {
            if buf.len() < 8 {
                return Err(malformed("truncated fixed64"));
            }
            Raw::Fixed64(buf.get_u64_le())
        }
        WireType::ThirtyTwoBit => {
            if buf.len() < 4 {
                return Err(malformed("truncated fixed32"));
            }
            Raw::Fixed32(buf.get_u32_le())
        }
        WireType::LengthDelimited => Raw::Len(read_len(buf)?),
        WireType::StartGroup | WireType::EndGroup => return Err(malformed("groups are not supported")),
    };
    Ok((tag, raw))
}

/// Decodes a message to its JSON form.
pub fn decode(message: usize, buf: &[u8]) -> Result<Value, ProtobufError> {
    decode_message(table(), message, buf, 0)
}

fn decode_message(t: &Table, message: usize, buf: &[u8], depth: u32) -> Result<Value, ProtobufError> {
    if depth > MAX_DEPTH {
        return Err(ProtobufError::TooDeep(MAX_DEPTH));
    }
    if let Some(sp) = t.resolved(message).special {
        return special::decode(sp, buf);
    }
    let mut out = Map::new();
    decode_into(t, message, buf, depth, &mut out)?;
    Ok(Value::Object(out))
}

fn decode_into(
    t: &Table,
    message: usize,
    mut buf: &[u8],
    depth: u32,
    out: &mut Map<String, Value>,
) -> Result<(), ProtobufError> {
    let msg = t.message(message);
    let resolved = t.resolved(message);
    while !buf.is_empty() {
        let (tag, raw) = next_field(&mut buf)?;
        // Unknown fields are skipped, as Go's generated code does.
        let Some(index) = msg.fields.iter().position(|f| f.tag == tag) else {
            continue;
        };
        let field = &msg.fields[index];
        let key = match &resolved.json[index] {
            JsonName::Inline => {
                let (Ty::Message(sub), Raw::Len(data)) = (field.ty, raw) else {
                    return Err(field_error(message, field.name, "an inlined field must be a message"));
                };
                decode_into(t, sub, data, depth + 1, out)?;
                continue;
            }
            JsonName::Key(key) => key,
        };
        match field.card {
            Card::Optional => {
                let value = decode_value(t, message, field.name, field.ty, raw, depth)?;
                if field_is_zero(field.ty, &value) && !resolved.keep_zero[index] {
                    out.remove(key);
                } else {
                    out.insert(key.clone(), value);
                }
            }
            Card::Repeated => {
                let list = out.entry(key.clone()).or_insert_with(|| Value::Array(Vec::new()));
                let Value::Array(list) = list else {
                    return Err(field_error(message, field.name, "repeated field decoded twice"));
                };
                match (field.ty, raw) {
                    // Packed scalars: accepted as proto2 parsers do, though Go sends them unpacked.
                    (Ty::Scalar(s), Raw::Len(mut data)) if !matches!(s, Scalar::String | Scalar::Bytes) => {
                        while !data.is_empty() {
                            let raw = match wire_of(s) {
                                WireType::SixtyFourBit if data.len() >= 8 => Raw::Fixed64(data.get_u64_le()),
                                WireType::ThirtyTwoBit if data.len() >= 4 => Raw::Fixed32(data.get_u32_le()),
                                WireType::Varint => Raw::Varint(decode_varint(&mut data).map_err(malformed)?),
                                _ => return Err(malformed("truncated packed field")),
                            };
                            list.push(decode_value(t, message, field.name, field.ty, raw, depth)?);
                        }
                    }
                    _ => list.push(decode_value(t, message, field.name, field.ty, raw, depth)?),
                }
            }
            Card::Map(key_type) => {
                let Raw::Len(mut entry) = raw else {
                    return Err(field_error(message, field.name, "a map entry must be length-delimited"));
                };
                let (mut k, mut v) = (None, None);
                while !entry.is_empty() {
                    match next_field(&mut entry)? {
                        (1, raw) => k = Some(decode_value(t, message, field.name, Ty::Scalar(key_type), raw, depth)?),
                        (2, raw) => v = Some(decode_value(t, message, field.name, field.ty, raw, depth)?),
                        _ => {}
                    }
                }
                let k = match k {
                    Some(Value::String(s)) => s,
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                let v = match v {
                    Some(v) => v,
                    None => decode_value_of_empty(t, message, field.name, field.ty, depth)?,
                };
                let map = out.entry(key.clone()).or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(map) = map {
                    map.insert(k, v);
                }
            }
        }
    }
    Ok(())
}

/// A map entry without its value holds the value's zero.
fn decode_value_of_empty(t: &Table, message: usize, field: &str, ty: Ty, depth: u32) -> Result<Value, ProtobufError> {
    match ty {
        Ty::Message(_) => decode_value(t, message, field, ty, Raw::Len(&[]), depth),
        Ty::Scalar(Scalar::String | Scalar::Bytes) => Ok(Value::String(String::new())),
        Ty::Scalar(Scalar::Bool) => Ok(Value::Bool(false)),
        Ty::Scalar(_) => Ok(Value::from(0)),
    }
}

/// A zero scalar Go's JSON encoder would have left out (`omitempty`).
fn field_is_zero(ty: Ty, value: &Value) -> bool {
    match (ty, value) {
        (Ty::Message(_), _) => false,
        (_, Value::String(s)) => s.is_empty(),
        (_, Value::Bool(b)) => !b,
        (_, Value::Number(n)) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

fn wire_of(s: Scalar) -> WireType {
    match s {
        Scalar::Bool
        | Scalar::Int32
        | Scalar::Int64
        | Scalar::Uint32
        | Scalar::Uint64
        | Scalar::Sint32
        | Scalar::Sint64 => WireType::Varint,
        Scalar::Fixed64 | Scalar::Sfixed64 | Scalar::Double => WireType::SixtyFourBit,
        Scalar::Fixed32 | Scalar::Sfixed32 | Scalar::Float => WireType::ThirtyTwoBit,
        Scalar::String | Scalar::Bytes => WireType::LengthDelimited,
    }
}

fn decode_value(
    t: &Table,
    message: usize,
    field: &str,
    ty: Ty,
    raw: Raw<'_>,
    depth: u32,
) -> Result<Value, ProtobufError> {
    let wrong = || field_error(message, field, "wire type does not match the field's type");
    Ok(match (ty, raw) {
        (Ty::Message(sub), Raw::Len(data)) => decode_message(t, sub, data, depth + 1)?,
        (Ty::Scalar(s), Raw::Varint(v)) => match s {
            Scalar::Bool => Value::Bool(v != 0),
            // Negative int32s are sign-extended to ten bytes on the wire.
            Scalar::Int32 => Value::from(v as i64 as i32),
            Scalar::Int64 => Value::from(v as i64),
            Scalar::Uint32 => Value::from(v as u32),
            Scalar::Uint64 => Value::from(v),
            Scalar::Sint32 => Value::from(((v >> 1) as i64 ^ -((v & 1) as i64)) as i32),
            Scalar::Sint64 => Value::from((v >> 1) as i64 ^ -((v & 1) as i64)),
            _ => return Err(wrong()),
        },
        (Ty::Scalar(s), Raw::Fixed64(v)) => match s {
            Scalar::Fixed64 => Value::from(v),
            Scalar::Sfixed64 => Value::from(v as i64),
            Scalar::Double => {
                float(f64::from_bits(v)).ok_or_else(|| field_error(message, field, "not a finite number"))?
            }
            _ => return Err(wrong()),
        },
        (Ty::Scalar(s), Raw::Fixed32(v)) => match s {
            Scalar::Fixed32 => Value::from(v),
            Scalar::Sfixed32 => Value::from(v as i32),
            Scalar::Float => {
                float(f64::from(f32::from_bits(v))).ok_or_else(|| field_error(message, field, "not a finite number"))?
            }
            _ => return Err(wrong()),
        },
        (Ty::Scalar(Scalar::String), Raw::Len(data)) => Value::String(
            std::str::from_utf8(data)
                .map_err(|_| field_error(message, field, "a string is not UTF-8"))?
                .to_string(),
        ),
        (Ty::Scalar(Scalar::Bytes), Raw::Len(data)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(data))
        }
        _ => return Err(wrong()),
    })
}

fn float(f: f64) -> Option<Value> {
    Number::from_f64(f).map(Value::Number)
}

/// Encodes the JSON form of a message.
pub fn encode(message: usize, value: &Value) -> Result<Vec<u8>, ProtobufError> {
    let mut out = Vec::new();
    encode_message(table(), message, value, &mut out, 0)?;
    Ok(out)
}

fn encode_message(
    t: &Table,
    message: usize,
    value: &Value,
    out: &mut Vec<u8>,
    depth: u32,
) -> Result<(), ProtobufError> {
    if depth > MAX_DEPTH {
        return Err(ProtobufError::TooDeep(MAX_DEPTH));
    }
    if let Some(sp) = t.resolved(message).special {
        return special::encode(sp, value, out);
    }
    let Value::Object(obj) = value else {
        return Err(ProtobufError::Field {
            field: t.message(message).name.to_string(),
            message: format!("expected an object, got {value}"),
        });
    };
    encode_fields(t, message, obj, out, depth)
}

/// Writes the fields of `message` found in `obj`, in tag order as Go does.
fn encode_fields(
    t: &Table,
    message: usize,
    obj: &Map<String, Value>,
    out: &mut Vec<u8>,
    depth: u32,
) -> Result<(), ProtobufError> {
    let msg = t.message(message);
    let resolved = t.resolved(message);
    for (index, field) in msg.fields.iter().enumerate() {
        let key = match &resolved.json[index] {
            JsonName::Inline => {
                let Ty::Message(sub) = field.ty else {
                    return Err(field_error(message, field.name, "an inlined field must be a message"));
                };
                let mut inner = Vec::new();
                encode_fields(t, sub, obj, &mut inner, depth + 1)?;
                write_len(field.tag, &inner, out);
                continue;
            }
            JsonName::Key(key) => key,
        };
        let Some(value) = obj.get(key).filter(|v| !v.is_null()) else {
            continue;
        };
        match field.card {
            Card::Optional => encode_value(t, message, field.name, field.tag, field.ty, value, out, depth)?,
            Card::Repeated => {
                let Value::Array(items) = value else {
                    return Err(field_error(
                        message,
                        field.name,
                        format!("expected a list, got {value}"),
                    ));
                };
                // Unpacked, as proto2 (and Go) write repeated scalars.
                for item in items {
                    encode_value(t, message, field.name, field.tag, field.ty, item, out, depth)?;
                }
            }
            Card::Map(key_type) => {
                let Value::Object(entries) = value else {
                    return Err(field_error(
                        message,
                        field.name,
                        format!("expected an object, got {value}"),
                    ));
                };
                // serde_json's map is sorted: entries go out in key order, as Go sorts them.
                for (k, v) in entries {
                    let mut entry = Vec::new();
                    encode_value(
                        t,
                        message,
                        field.name,
                        1,
                        Ty::Scalar(key_type),
                        &Value::String(k.clone()),
                        &mut entry,
                        depth,
                    )?;
                    if !v.is_null() {
                        encode_value(t, message, field.name, 2, field.ty, v, &mut entry, depth)?;
                    }
                    write_len(field.tag, &entry, out);
                }
            }
        }
    }
    Ok(())
}

pub(super) fn write_len(tag: u32, data: &[u8], out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(data.len() as u64, out);
    out.put_slice(data);
}

pub(super) fn write_varint(tag: u32, v: u64, out: &mut Vec<u8>) {
    encode_key(tag, WireType::Varint, out);
    encode_varint(v, out);
}

#[allow(clippy::too_many_arguments)]
fn encode_value(
    t: &Table,
    message: usize,
    field: &str,
    tag: u32,
    ty: Ty,
    value: &Value,
    out: &mut Vec<u8>,
    depth: u32,
) -> Result<(), ProtobufError> {
    let bad = |want: &str| field_error(message, field, format!("expected {want}, got {value}"));
    let s = match ty {
        Ty::Message(sub) => {
            let mut inner = Vec::new();
            encode_message(t, sub, value, &mut inner, depth + 1)?;
            write_len(tag, &inner, out);
            return Ok(());
        }
        Ty::Scalar(s) => s,
    };
    // Integers may come as JSON strings of digits from lenient writers; Kubernetes
    // JSON itself always uses numbers.
    let int = || -> Result<i64, ProtobufError> {
        value
            .as_i64()
            .or_else(|| value.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| bad("an integer"))
    };
    match s {
        Scalar::Bool => write_varint(tag, u64::from(value.as_bool().ok_or_else(|| bad("a boolean"))?), out),
        Scalar::Int32 | Scalar::Int64 => write_varint(tag, int()? as u64, out),
        Scalar::Uint32 | Scalar::Uint64 => {
            let v = value.as_u64().ok_or_else(|| bad("an unsigned integer"))?;
            write_varint(tag, v, out)
        }
        Scalar::Sint32 | Scalar::Sint64 => {
            let v = int()?;
            write_varint(tag, ((v << 1) ^ (v >> 63)) as u64, out)
        }
        Scalar::Fixed64 | Scalar::Sfixed64 | Scalar::Double => {
            let bits = match s {
                Scalar::Double => value.as_f64().ok_or_else(|| bad("a number"))?.to_bits(),
                Scalar::Fixed64 => value.as_u64().ok_or_else(|| bad("an unsigned integer"))?,
                _ => int()? as u64,
            };
            encode_key(tag, WireType::SixtyFourBit, out);
            out.put_u64_le(bits);
        }
        Scalar::Fixed32 | Scalar::Sfixed32 | Scalar::Float => {
            let bits = match s {
                Scalar::Float => (value.as_f64().ok_or_else(|| bad("a number"))? as f32).to_bits(),
                Scalar::Fixed32 => u32::try_from(value.as_u64().ok_or_else(|| bad("an unsigned integer"))?)
                    .map_err(|_| bad("a 32-bit integer"))?,
                _ => int()? as i32 as u32,
            };
            encode_key(tag, WireType::ThirtyTwoBit, out);
            out.put_u32_le(bits);
        }
        Scalar::String => write_len(tag, value.as_str().ok_or_else(|| bad("a string"))?.as_bytes(), out),
        Scalar::Bytes => {
            let text = value.as_str().ok_or_else(|| bad("a base64 string"))?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| field_error(message, field, format!("not base64: {e}")))?;
            write_len(tag, &data, out)
        }
    }
    Ok(())
}
