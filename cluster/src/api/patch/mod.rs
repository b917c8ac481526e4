//! Patches: JSON patch (RFC 6902), JSON merge patch (RFC 7386), Kubernetes' strategic merge
//! patch and server-side apply with the `metadata.managedFields` every write keeps. Written
//! once, here, for the API server and for the GitOps renderer's kustomize patches.
//!
//! The submodules work on `serde_json::Value`s and schemas; the functions here are the API
//! server's side: which patch a request is, who its field manager is, and turning the
//! patch errors into Kubernetes' answers.

pub mod apply;
pub mod fields;
pub mod json;
pub mod keys;
pub mod strategic;

use std::collections::HashMap;

use axum::http::HeaderMap;
use serde_json::{json, Map, Value};

use self::apply::{ApplyError, Writer};
use self::fields::Walker;
use self::json::JsonPatchError;
use self::strategic::StrategicError;
use super::error::{ApiError, Cause};
use super::registry::{self, ResourceInfo};
use super::schema::schemas;

/// The patch formats, by request content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// RFC 6902 JSON patch: `application/json-patch+json`.
    Json,
    /// RFC 7386 JSON merge patch: `application/merge-patch+json`.
    Merge,
    /// Kubernetes' strategic merge patch: `application/strategic-merge-patch+json`.
    Strategic,
    /// Server-side apply: `application/apply-patch+yaml`.
    Apply,
}

impl PatchKind {
    /// The patch format of a `Content-Type`, if it is one.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        match content_type.split(';').next().unwrap_or_default().trim() {
            "application/json-patch+json" => Some(PatchKind::Json),
            "application/merge-patch+json" => Some(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Some(PatchKind::Strategic),
            "application/apply-patch+yaml" => Some(PatchKind::Apply),
            _ => None,
        }
    }
}

/// The root schema of a served kind, by `apiVersion` and `kind`: what [`strategic::merge`]
/// needs to patch an object of it.
pub fn schema_for(api_version: &str, kind: &str) -> Option<&'static Value> {
    registry::by_kind(api_version, kind).and_then(|res| schemas().root(res))
}

impl From<StrategicError> for ApiError {
    fn from(e: StrategicError) -> Self {
        match e {
            // As kube-apiserver: a well-formed patch it cannot apply.
            StrategicError::ListOfLists => ApiError::Unprocessable(e.to_string()),
            _ => ApiError::BadRequest(e.to_string()),
        }
    }
}

impl From<JsonPatchError> for ApiError {
    fn from(e: JsonPatchError) -> Self {
        match e {
            // As kube-apiserver: 422 for an operation that fails (a `test` that does not match).
            JsonPatchError::Failed(_) => ApiError::Unprocessable(e.to_string()),
            _ => ApiError::BadRequest(e.to_string()),
        }
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Conflicts(ref conflicts) => ApiError::ApplyConflict {
                message: e.to_string(),
                causes: conflicts
                    .iter()
                    .map(|c| {
                        Cause::new(
                            "FieldManagerConflict",
                            c.field.clone(),
                            format!("conflict with {}", c.manager),
                        )
                    })
                    .collect(),
            },
            ApplyError::Fields(_) => ApiError::Unprocessable(e.to_string()),
            ApplyError::ManagedFields(_) => ApiError::Internal(e.to_string()),
            ApplyError::Yaml(_) | ApplyError::BadRequest(_) => ApiError::BadRequest(e.to_string()),
        }
    }
}

/// Applies a JSON, merge or strategic merge patch to `live`, an object of `res` (`None`
/// for a view with no schema, such as Scale, where strategic merge replaces every list).
pub fn patch(res: Option<&ResourceInfo>, kind: PatchKind, live: &Value, patch: &Value) -> Result<Value, ApiError> {
    let mut out = live.clone();
    let live_rv = live.pointer("/metadata/resourceVersion").cloned();
    // A patch must not pin the version it was computed from unless it says so.
    if let Some(meta) = out.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    match kind {
        PatchKind::Merge => {
            json::merge_patch(&mut out, patch);
            Ok(out)
        }
        PatchKind::Json => {
            // JSON patch sees the whole object: kubectl's `test` of the resourceVersion
            // (when it moves managedFields to server-side apply) must find it. The
            // version stays a precondition only when the patch changed it.
            let mut patched = json::json_patch(live, patch)?;
            if patched.pointer("/metadata/resourceVersion") == live_rv.as_ref() {
                if let Some(meta) = patched.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove("resourceVersion");
                }
            }
            Ok(patched)
        }
        PatchKind::Strategic => {
            let schema = res.and_then(|r| schemas().root(r)).unwrap_or(&Value::Null);
            Ok(strategic::merge(schemas(), schema, &out, patch)?)
        }
        PatchKind::Apply => Err(ApiError::UnsupportedMediaType(
            "apply patches are not supported here".into(),
        )),
    }
}

fn options_invalid(options: &str, field: &str, message: String) -> ApiError {
    ApiError::Invalid {
        kind: format!("{options}.meta.k8s.io"),
        name: String::new(),
        causes: vec![Cause::invalid(field, message)],
    }
}

/// The field manager of a write, as kube-apiserver picks it: `?fieldManager=`, else the
/// product of the User-Agent (`kubectl` for `kubectl/v1.33.0 (linux/amd64)`). `options`
/// names the request's options kind (`PatchOptions`) for the 422 of a bad one.
pub fn field_manager(params: &HashMap<String, String>, headers: &HeaderMap, options: &str) -> Result<String, ApiError> {
    if let Some(manager) = params.get("fieldManager").filter(|m| !m.is_empty()) {
        if manager.len() > 128 {
            return Err(options_invalid(
                options,
                "fieldManager",
                "Too long: may not be more than 128 bytes".into(),
            ));
        }
        if let Some((i, c)) = manager.char_indices().find(|(_, c)| c.is_control()) {
            return Err(options_invalid(
                options,
                "fieldManager",
                format!("Invalid value: {manager:?}: invalid character {c:?} (at position {i})"),
            ));
        }
        return Ok(manager.clone());
    }
    let agent = headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    Ok(agent.split('/').next().unwrap_or_default().to_string())
}

/// The options of a PATCH: its field manager, and `force` (apply only, as Kubernetes checks:
/// apply needs a field manager, other patches may not force).
pub fn patch_options(
    kind: PatchKind,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<(String, bool), ApiError> {
    let force = params.get("force");
    if kind == PatchKind::Apply {
        if params.get("fieldManager").is_none_or(|m| m.is_empty()) {
            return Err(options_invalid(
                "PatchOptions",
                "fieldManager",
                "Required value: is required for apply patch".into(),
            ));
        }
    } else if force.is_some() {
        return Err(options_invalid(
            "PatchOptions",
            "force",
            "Forbidden: may not be specified for non-apply patch".into(),
        ));
    }
    let manager = field_manager(params, headers, "PatchOptions")?;
    Ok((manager, force.is_some_and(|f| f == "true" || f == "1")))
}

/// Top-level fields a write through this endpoint does not own (Kubernetes' reset fields).
fn ignored(res: &ResourceInfo, status: bool) -> &'static [&'static str] {
    if !status && res.has_status() {
        &["status"]
    } else {
        &[]
    }
}

/// The managedFields a client submitted with an object, which [`track`] keeps for a
/// server-side apply.
pub fn submitted_managed_fields(submitted: &Value) -> Option<&Value> {
    submitted.pointer("/metadata/managedFields")
}

/// Sets the managedFields of an object a write admitted. With a manager, the write is
/// recorded as an `Update` by it (`old` is the live object, `None` on create); without
/// (a server-side apply, which recorded its own), `submitted`, the managedFields of the
/// object before admission ([`submitted_managed_fields`]), are kept.
pub fn track(
    res: &ResourceInfo,
    old: Option<&Value>,
    submitted: Option<&Value>,
    admitted: &mut Value,
    manager: Option<&str>,
    status: bool,
) {
    let Some(manager) = manager else {
        let kept = submitted.cloned();
        if let Some(meta) = admitted.get_mut("metadata").and_then(Value::as_object_mut) {
            match kept {
                Some(kept) => meta.insert("managedFields".into(), kept),
                None => meta.remove("managedFields"),
            };
        }
        return;
    };
    let Some(schema) = schemas().root(res) else { return };
    let time = crate::kinds::now();
    let who = Writer {
        manager,
        subresource: status.then_some("status"),
        time: &time,
        ignored: ignored(res, status),
    };
    apply::record_update(schemas(), schema, old, admitted, &who);
}

/// A server-side apply request.
#[derive(Debug, Clone, Copy)]
pub struct ApplyRequest<'a> {
    /// The applied configuration (YAML or JSON).
    pub body: &'a [u8],
    /// `?fieldManager=`.
    pub manager: &'a str,
    /// `?force=true`: take conflicting fields from their managers.
    pub force: bool,
    /// Through the status subresource: only `status` is applied.
    pub status: bool,
    /// `?fieldValidation=Strict`: unknown fields are an error rather than dropped.
    pub strict: bool,
    /// The object's name from the URL.
    pub name: &'a str,
    /// The namespace from the URL.
    pub namespace: Option<&'a str>,
}

/// Server-side apply of a request's body to `live` (`None` creates): the object to admit,
/// with its managedFields.
pub fn server_apply(res: &ResourceInfo, live: Option<&Value>, req: &ApplyRequest) -> Result<Value, ApiError> {
    let schemas = schemas();
    let schema = schemas
        .root(res)
        .ok_or_else(|| ApiError::Internal(format!("no schema for {}", res.kind)))?;
    let mut applied = apply::parse(req.body)?;
    match applied.pointer("/metadata/name").and_then(Value::as_str) {
        Some(name) if name != req.name => {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({name}) does not match the name on the URL ({})",
                req.name
            )))
        }
        Some(_) => {}
        None => applied["metadata"]["name"] = json!(req.name),
    }
    let body_ns = applied.pointer("/metadata/namespace").and_then(Value::as_str);
    if let (Some(body_ns), Some(url_ns)) = (body_ns, req.namespace) {
        if res.namespaced && body_ns != url_ns {
            return Err(ApiError::BadRequest(format!(
                "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({url_ns})"
            )));
        }
    }
    let unknown = Walker::new(schemas).drop_unknown(schema, &mut applied);
    if req.strict && !unknown.is_empty() {
        let fields: Vec<String> = unknown.iter().map(|f| format!("unknown field {f:?}")).collect();
        return Err(ApiError::BadRequest(format!(
            "strict decoding error: {}",
            fields.join(", ")
        )));
    }
    if req.status {
        applied = status_only(&applied);
    }
    let live = live.map(|l| {
        let mut l = l.clone();
        if let Some(meta) = l.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        l
    });
    let time = crate::kinds::now();
    let who = Writer {
        manager: req.manager,
        subresource: req.status.then_some("status"),
        time: &time,
        ignored: ignored(res, req.status),
    };
    Ok(apply::apply(schemas, schema, live.as_ref(), &applied, &who, req.force)?)
}

/// What a status apply may set: the object's identity and its status.
fn status_only(applied: &Value) -> Value {
    let mut out = Map::new();
    for field in ["apiVersion", "kind", "status"] {
        if let Some(v) = applied.get(field) {
            out.insert(field.into(), v.clone());
        }
    }
    let mut meta = Map::new();
    for field in ["name", "namespace"] {
        if let Some(v) = applied.pointer(&format!("/metadata/{field}")) {
            meta.insert(field.into(), v.clone());
        }
    }
    out.insert("metadata".into(), Value::Object(meta));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::api::registry::by_kind;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn code(e: ApiError) -> (u16, &'static str) {
        let (code, reason) = e.code_and_reason();
        (code.as_u16(), reason)
    }

    #[test]
    fn content_types_name_patch_kinds() {
        let cases = [
            ("application/json-patch+json", Some(PatchKind::Json)),
            ("application/merge-patch+json; charset=utf-8", Some(PatchKind::Merge)),
            ("application/strategic-merge-patch+json", Some(PatchKind::Strategic)),
            ("application/apply-patch+yaml", Some(PatchKind::Apply)),
            ("application/json", None),
        ];
        for (content_type, kind) in cases {
            assert_eq!(PatchKind::from_content_type(content_type), kind, "{content_type}");
        }
    }

    #[test]
    fn field_managers_come_from_the_request() {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::USER_AGENT,
            HeaderValue::from_static("kubectl/v1.33.0 (linux/amd64) kubernetes/abc"),
        );
        let none = params(&[]);
        assert_eq!(field_manager(&none, &headers, "CreateOptions").unwrap(), "kubectl");
        assert_eq!(
            field_manager(&params(&[("fieldManager", "me")]), &headers, "CreateOptions").unwrap(),
            "me"
        );
        assert_eq!(field_manager(&none, &HeaderMap::new(), "CreateOptions").unwrap(), "");
        let long = "m".repeat(129);
        assert_eq!(
            code(field_manager(&params(&[("fieldManager", &long)]), &headers, "CreateOptions").unwrap_err()),
            (422, "Invalid")
        );

        // Apply needs a field manager; other patches may not force.
        let err = patch_options(PatchKind::Apply, &none, &headers).unwrap_err();
        assert_eq!(
            err.to_string(),
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
        );
        let err = patch_options(PatchKind::Merge, &params(&[("force", "true")]), &headers).unwrap_err();
        assert_eq!(code(err), (422, "Invalid"));
        let forced = patch_options(
            PatchKind::Apply,
            &params(&[("fieldManager", "a"), ("force", "true")]),
            &headers,
        );
        assert_eq!(forced.unwrap(), ("a".to_string(), true));
        assert_eq!(
            patch_options(PatchKind::Strategic, &none, &headers).unwrap(),
            ("kubectl".to_string(), false)
        );
    }

    #[test]
    fn patch_errors_answer_as_kubernetes_does() {
        let res = by_kind("apps/v1", "Deployment").unwrap();
        let live = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "resourceVersion": "3"}, "spec": {"replicas": 1}});
        let cases = [
            (
                PatchKind::Json,
                json!([{"op": "test", "path": "/spec/replicas", "value": 2}]),
                (422, "Invalid"),
            ),
            (PatchKind::Json, json!({"op": "add"}), (400, "BadRequest")),
            (
                PatchKind::Strategic,
                json!({"spec": {"$frobnicate": 1}}),
                (400, "BadRequest"),
            ),
            (PatchKind::Strategic, json!([]), (400, "BadRequest")),
            (PatchKind::Apply, json!({}), (415, "UnsupportedMediaType")),
        ];
        for (kind, body, want) in cases {
            let err = patch(Some(res), kind, &live, &body).unwrap_err();
            assert_eq!(code(err), want, "{kind:?} {body}");
        }
        // The live version is no precondition of a patch.
        let out = patch(Some(res), PatchKind::Merge, &live, &json!({"spec": {"paused": true}})).unwrap();
        assert!(out.pointer("/metadata/resourceVersion").is_none());

        let conflict: ApiError = ApplyError::Conflicts(vec![apply::Conflict {
            manager: "\"a\"".into(),
            field: ".spec.replicas".into(),
        }])
        .into();
        let status = conflict.status();
        assert_eq!(
            (status["code"].as_u64(), status["reason"].as_str()),
            (Some(409), Some("Conflict"))
        );
        assert_eq!(
            status["details"]["causes"][0],
            json!({"reason": "FieldManagerConflict", "field": ".spec.replicas", "message": "conflict with \"a\""})
        );
    }

    fn request<'a>(body: &'a str, status: bool, strict: bool) -> ApplyRequest<'a> {
        ApplyRequest {
            body: body.as_bytes(),
            manager: "kubectl",
            force: false,
            status,
            strict,
            name: "web",
            namespace: Some("default"),
        }
    }

    #[test]
    fn server_apply_checks_the_request_and_scopes_status() {
        let res = by_kind("apps/v1", "Deployment").unwrap();
        let body = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: other}\n";
        assert_eq!(
            code(server_apply(res, None, &request(body, false, false)).unwrap_err()),
            (400, "BadRequest")
        );
        let body = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {namespace: prod}\n";
        assert_eq!(
            code(server_apply(res, None, &request(body, false, false)).unwrap_err()),
            (400, "BadRequest")
        );

        // The name comes from the URL; unknown fields are dropped, or refused when strict.
        let body = "apiVersion: apps/v1\nkind: Deployment\nspec: {replicas: 2, replicsa: 3}\nstatus: {replicas: 9}\n";
        let err = server_apply(res, None, &request(body, false, true)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "strict decoding error: unknown field \"spec.replicsa\""
        );
        let obj = server_apply(res, None, &request(body, false, false)).unwrap();
        assert_eq!(obj["metadata"]["name"], "web");
        assert!(obj["spec"].get("replicsa").is_none());
        // The main endpoint does not apply status.
        assert!(obj.get("status").is_none());

        // The status subresource applies only status.
        let live = obj;
        let body = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, labels: {x: y}}\nspec: {replicas: 7}\nstatus: {replicas: 1}\n";
        let out = server_apply(res, Some(&live), &request(body, true, false)).unwrap();
        assert_eq!(
            (out["spec"]["replicas"].as_i64(), out["status"]["replicas"].as_i64()),
            (Some(2), Some(1))
        );
        assert!(out["metadata"].get("labels").is_none());
        let status_entry = out["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e.get("subresource") == Some(&json!("status")))
            .cloned()
            .unwrap();
        assert_eq!(status_entry["fieldsV1"], json!({"f:status": {"f:replicas": {}}}));
    }

    #[test]
    fn track_records_updates_and_keeps_applies() {
        let res = by_kind("v1", "ConfigMap").unwrap();
        let submitted = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "managedFields": [{"manager": "x"}]}, "data": {"a": "1"}});
        let mut admitted = submitted.clone();
        admitted["metadata"].as_object_mut().unwrap().remove("managedFields");
        track(
            res,
            None,
            submitted_managed_fields(&submitted),
            &mut admitted,
            Some("creator"),
            false,
        );
        assert_eq!(admitted["metadata"]["managedFields"][0]["manager"], "creator");
        assert_eq!(
            admitted["metadata"]["managedFields"][0]["fieldsV1"],
            json!({"f:data": {".": {}, "f:a": {}}})
        );

        let mut applied = json!({"metadata": {"name": "c"}});
        track(
            res,
            None,
            submitted_managed_fields(&submitted),
            &mut applied,
            None,
            false,
        );
        assert_eq!(applied["metadata"]["managedFields"], json!([{"manager": "x"}]));
    }
}
