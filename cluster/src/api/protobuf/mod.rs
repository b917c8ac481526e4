//! `application/vnd.kubernetes.protobuf` for the built-in kinds, so clients that prefer it
//! (kubectl's `create` subcommands, client-go's typed clients) work unchanged. Objects stay
//! JSON everywhere inside the server: a protobuf request body is converted to the JSON
//! the JSON path would have received and then admitted as usual; a response is converted
//! from JSON at the last moment when the client prefers protobuf.
//!
//! # Approach
//!
//! Converting needs, per type, each field's tag, JSON name, shape and nested type. Rather
//! than hand-written conversions (hundreds of types) or checked-in `.proto` files, the
//! knowledge is taken from two crates the workspace already pins to Kubernetes 1.33:
//!
//! - **k8s-pb 0.8** (generated from Kubernetes 1.33.1's `.proto` files, prost 0.14 like
//!   the rest of the workspace). The build script (`build/k8s_pb_table.rs`) finds its
//!   sources with `cargo metadata`, parses the prost structs with `syn` and writes a field
//!   table (tag, cardinality, scalar or message type) for every message, plus the
//!   `(apiVersion, kind)` of each resource. k8s-pb has no descriptor set and no serde, so
//!   this is the cheapest faithful source: the table is exactly what prost would decode.
//! - **k8s-openapi's schemas** ([`super::schema`]): property names are the exact JSON
//!   names. prost snake-cases field names (`pod_ips`), so fields are matched to properties
//!   ignoring case and underscores (`podIPs`). A message field with no property is a Go
//!   embedded struct (`json:",inline"`, e.g. `Probe.handler`), whose fields are the
//!   parent's in JSON. Types without a schema (lists, `ListMeta`) use camelCase, which is
//!   exact for them.
//!
//! A generic converter ([`wire`]) walks the wire format with prost's encoding primitives,
//! driven by the table; [`special`] handles the handful of types whose JSON is not their
//! message (`Time`, `MicroTime`, `Duration`, `Quantity`, `IntOrString`, `RawExtension`,
//! `FieldsV1`; `bytes` are base64). The envelope and watch frames use k8s-pb's own prost
//! types ([`envelope`]). Alternatives rejected: prost-reflect needs descriptors k8s-pb
//! does not ship; decoding into k8s-pb structs and mapping them to k8s-openapi structs
//! is per-type code.
//!
//! One gap is inherent: Go writes a non-pointer scalar even when zero, so a zero on the
//! wire is either "unset" or an explicit zero in a pointer field (`replicas: 0`), and
//! neither k8s-pb nor the schemas say which fields are pointers. Decoding follows Go's
//! JSON `omitempty` (zero scalars are dropped unless the schema requires the field),
//! which reproduces the JSON path exactly for everything kubectl sends, except for a
//! short list of pointer fields whose explicit zero matters (`replicas: 0`, a zero
//! grace period, `automountServiceAccountToken: false`): [`table::EXPLICIT_ZEROS`].
//!
//! Kinds without a k8s-pb message (Kairn's `Application`) answer 415 to a protobuf body
//! and JSON to a client that also accepts JSON. Tables (`as=Table`) stay JSON.

mod envelope;
mod special;
mod table;
mod wire;

#[cfg(test)]
mod tests;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::error::ApiError;

pub use envelope::{decode_object, encode_object, watch_frame};

/// The protobuf media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// A body that is not valid Kubernetes protobuf, or an object that has no protobuf form.
#[derive(Debug, thiserror::Error)]
pub enum ProtobufError {
    /// The body does not start with `k8s\0`.
    #[error("not a Kubernetes protobuf object: the k8s\\0 prefix is missing")]
    NoMagic,
    /// The wire format is broken.
    #[error("malformed protobuf: {0}")]
    Malformed(String),
    /// A field's value does not fit its type.
    #[error("field {field}: {message}")]
    Field {
        /// `message.field`
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Nested deeper than any Kubernetes type.
    #[error("objects nested deeper than {0} levels")]
    TooDeep(u32),
    /// The kind has no protobuf message.
    #[error("{kind} ({api_version}) has no protobuf form; use application/json")]
    NoMessage {
        /// The object's apiVersion.
        api_version: String,
        /// The object's kind.
        kind: String,
    },
    /// `runtime.Unknown.contentEncoding` was set (Kubernetes never sets it).
    #[error("content encoding {0:?} is not supported")]
    ContentEncoding(String),
}

impl From<ProtobufError> for ApiError {
    fn from(e: ProtobufError) -> Self {
        match e {
            ProtobufError::NoMessage { .. } | ProtobufError::ContentEncoding(_) => {
                ApiError::UnsupportedMediaType(e.to_string())
            }
            other => ApiError::BadRequest(format!("the request body is not valid protobuf: {other}")),
        }
    }
}

fn media_type(value: &str) -> &str {
    value.split(';').next().unwrap_or_default().trim()
}

/// Whether a `Content-Type` is Kubernetes protobuf.
pub fn is_protobuf(content_type: &str) -> bool {
    media_type(content_type).eq_ignore_ascii_case(MEDIA_TYPE)
}

/// The decode hook: a protobuf request body becomes the JSON of the same object; any other
/// body is returned as it is.
pub fn request_body(content_type: &str, body: Bytes) -> Result<Bytes, ApiError> {
    if !is_protobuf(content_type) {
        return Ok(body);
    }
    let obj = decode_object(&body)?;
    let json = serde_json::to_vec(&obj).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Bytes::from(json))
}

/// One entry of an `Accept` header.
struct Accepted<'a> {
    media: &'a str,
    q: f32,
    /// Asks for a transformed form (`as=Table`), which stays JSON.
    transformed: bool,
}

fn accepted(accept: &str) -> Vec<Accepted<'_>> {
    accept
        .split(',')
        .map(|entry| {
            let mut parts = entry.split(';');
            let media = parts.next().unwrap_or_default().trim();
            let (mut q, mut transformed) = (1.0, false);
            for p in parts {
                match p.trim().split_once('=') {
                    Some(("q", v)) => q = v.trim().parse().unwrap_or(1.0),
                    Some(("as", _)) => transformed = true,
                    _ => {}
                }
            }
            Accepted { media, q, transformed }
        })
        .filter(|a| !a.media.is_empty())
        .collect()
}

/// Whether the client's most preferred response type is protobuf.
pub fn prefers_protobuf(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    let mut best: Option<Accepted> = None;
    for a in accepted(accept) {
        if best.as_ref().is_none_or(|b| a.q > b.q) {
            best = Some(a);
        }
    }
    best.is_some_and(|b| !b.transformed && b.media.eq_ignore_ascii_case(MEDIA_TYPE))
}

fn accepts_json(accept: &str) -> bool {
    accepted(accept)
        .iter()
        .any(|a| a.q > 0.0 && matches!(a.media, "application/json" | "application/*" | "*/*"))
}

/// Whether objects of this kind have a protobuf form.
pub fn has_protobuf_form(api_version: &str, kind: &str) -> bool {
    table::table().for_kind(api_version, kind).is_some()
}

/// The encode hook: when the client prefers protobuf, a JSON object, list or `Status`
/// response is re-encoded, and so is a JSON watch stream (`watched` names its
/// `(apiVersion, kind)`: a stream is re-framed as it goes, so its kind is needed up
/// front); anything else passes unchanged.
pub async fn negotiate(accept: Option<&str>, watched: Option<(String, &str)>, response: Response) -> Response {
    if !prefers_protobuf(accept) {
        return response;
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if media_type(content_type) != "application/json" {
        return response;
    }
    if let Some((api_version, kind)) = watched.filter(|_| response.status().is_success()) {
        if has_protobuf_form(&api_version, kind) {
            return watch_stream(response);
        }
        if accept.is_some_and(accepts_json) {
            return response;
        }
        return not_acceptable(&ProtobufError::NoMessage {
            api_version,
            kind: kind.to_string(),
        });
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return ApiError::Internal(format!("reading a response: {e}")).into_response(),
    };
    let encoded = serde_json::from_slice::<Value>(&bytes)
        .map_err(|e| ProtobufError::Malformed(e.to_string()))
        .and_then(|obj| encode_object(&obj));
    match encoded {
        Ok(out) => {
            parts
                .headers
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(out))
        }
        // No protobuf form (Kairn's own kinds): JSON, if the client takes it.
        Err(ProtobufError::NoMessage { .. }) if accept.is_some_and(accepts_json) => {
            Response::from_parts(parts, Body::from(bytes))
        }
        Err(e) => not_acceptable(&e),
    }
}

/// A 406 `Status`, itself in protobuf.
fn not_acceptable(e: &ProtobufError) -> Response {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("the response has no protobuf form: {e}"),
        "reason": "NotAcceptable", "code": 406,
    });
    match encode_object(&status) {
        Ok(body) => (StatusCode::NOT_ACCEPTABLE, [(header::CONTENT_TYPE, MEDIA_TYPE)], body).into_response(),
        Err(_) => (StatusCode::NOT_ACCEPTABLE, axum::Json(status)).into_response(),
    }
}

/// Re-frames a JSON watch stream (one `{"type","object"}` per line) as protobuf frames.
fn watch_stream(response: Response) -> Response {
    use futures::StreamExt;
    let (mut parts, body) = response.into_parts();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        let mut pending: Vec<u8> = Vec::new();
        while let Some(Ok(chunk)) = stream.next().await {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let frame = serde_json::from_slice::<Value>(&line)
                    .map_err(|e| ProtobufError::Malformed(e.to_string()))
                    .and_then(|ev| {
                        let kind = ev.get("type").and_then(Value::as_str).unwrap_or_default();
                        watch_frame(kind, ev.get("object").unwrap_or(&Value::Null))
                    });
                match frame {
                    Ok(frame) => {
                        if tx.send(Bytes::from(frame)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "watch event has no protobuf form; skipped"),
                }
            }
        }
    });
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.kubernetes.protobuf;stream=watch"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let body = Body::from_stream(futures::StreamExt::map(stream, Ok::<_, std::convert::Infallible>));
    Response::from_parts(parts, body)
}
