//! Kubernetes' protobuf framing, with k8s-pb's own prost types: an object is the magic
//! `k8s\0` followed by a `runtime.Unknown` whose `typeMeta` names the kind and whose
//! `raw` is the object's message; a watch stream is a sequence of 4-byte big-endian
//! length-prefixed `meta/v1.WatchEvent`s (without magic), each carrying its object as
//! a full magic-prefixed envelope in `object.raw`.

use k8s_pb::apimachinery::pkg::apis::meta::v1::WatchEvent;
use k8s_pb::apimachinery::pkg::runtime::{RawExtension, TypeMeta, Unknown};
use prost::Message as _;
use serde_json::{Map, Value};

use super::table::table;
use super::{wire, ProtobufError};

/// The four bytes every Kubernetes protobuf object starts with.
pub const MAGIC: [u8; 4] = *b"k8s\0";

/// Splits an envelope into `(apiVersion, kind, raw message)`.
pub fn unwrap(body: &[u8]) -> Result<(String, String, Vec<u8>), ProtobufError> {
    let inner = body.strip_prefix(&MAGIC).ok_or(ProtobufError::NoMagic)?;
    let unknown = Unknown::decode(inner).map_err(|e| ProtobufError::Malformed(e.to_string()))?;
    if let Some(enc) = unknown.content_encoding.filter(|e| !e.is_empty()) {
        return Err(ProtobufError::ContentEncoding(enc));
    }
    let meta = unknown.type_meta.unwrap_or_default();
    Ok((
        meta.api_version.unwrap_or_default(),
        meta.kind.unwrap_or_default(),
        unknown.raw.unwrap_or_default(),
    ))
}

/// Wraps a message in an envelope.
pub fn wrap(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.to_string()),
            kind: Some(kind.to_string()),
        }),
        raw: Some(raw),
        // Go always writes these two, empty.
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = MAGIC.to_vec();
    unknown.encode(&mut out).unwrap_or_default();
    out
}

/// Decodes an envelope to the JSON object, with its `apiVersion` and `kind`.
pub fn decode_object(body: &[u8]) -> Result<Value, ProtobufError> {
    let (api_version, kind, raw) = unwrap(body)?;
    let message = table()
        .for_kind(&api_version, &kind)
        .ok_or_else(|| ProtobufError::NoMessage {
            api_version: api_version.clone(),
            kind: kind.clone(),
        })?;
    let mut fields = match wire::decode(message, &raw)? {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    // TypeMeta lives in the envelope, not the message; JSON has it first.
    let mut obj = Map::new();
    obj.insert("kind".into(), Value::String(kind));
    obj.insert("apiVersion".into(), Value::String(api_version));
    obj.append(&mut fields);
    Ok(Value::Object(obj))
}

/// Encodes a JSON object (which names its `apiVersion` and `kind`) as an envelope.
pub fn encode_object(obj: &Value) -> Result<Vec<u8>, ProtobufError> {
    let text = |key: &str| obj.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    let message = table().for_kind(&api_version, &kind).ok_or(ProtobufError::NoMessage {
        api_version: api_version.clone(),
        kind: kind.clone(),
    })?;
    Ok(wrap(&api_version, &kind, wire::encode(message, obj)?))
}

/// One watch stream frame: the length-prefixed `WatchEvent` of an object.
pub fn watch_frame(event_type: &str, object: &Value) -> Result<Vec<u8>, ProtobufError> {
    let event = WatchEvent {
        r#type: Some(event_type.to_string()),
        object: Some(RawExtension {
            raw: Some(encode_object(object)?),
        }),
    };
    let body = event.encode_to_vec();
    let len = u32::try_from(body.len()).map_err(|_| ProtobufError::Malformed("watch event too large".into()))?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    Ok(out)
}
