//! Admission of writes: metadata the server owns, defaulting, and validation.
//!
//! Every write path (single create/update, subresources, the atomic batch) goes through
//! these functions, so an object is admitted the same way however it arrives.

use serde_json::{json, Map, Value};

use super::error::{ApiError, Cause};
use super::registry::ResourceInfo;
use super::validation::{self, Errors};

fn invalid(res: &ResourceInfo, name: &str, field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Invalid {
        kind: res.qualified_kind(),
        name: name.to_string(),
        causes: vec![Cause::invalid(field, message)],
    }
}

/// The name and namespace an incoming object is addressed by.
pub fn object_name(obj: &Value) -> (String, Option<String>) {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(String::from);
    (name, ns)
}

/// The resourceVersion an object carries, if any.
pub fn resource_version(obj: &Value) -> Option<String> {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata was just made an object")
}

fn random_suffix() -> String {
    // Kubernetes' generateName alphabet: no vowels, no confusable characters.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let uuid = uuid::Uuid::new_v4();
    uuid.as_bytes()[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// Checks that the body's apiVersion/kind belong to `res`, filling them if absent.
fn check_type(res: &ResourceInfo, obj: &mut Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::BadRequest("the request body must be a JSON object".into()));
    }
    let api_version = res.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v != api_version => {
            return Err(ApiError::BadRequest(format!(
                "apiVersion {v} does not match the resource's {api_version}"
            )))
        }
        _ => obj["apiVersion"] = json!(api_version),
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some(k) if k != res.kind => {
            return Err(ApiError::BadRequest(format!(
                "kind {k} does not match the resource's kind {}",
                res.kind
            )))
        }
        _ => obj["kind"] = json!(res.kind),
    }
    Ok(())
}

/// An admitted object, and the warnings to send with the response.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The object as it will be stored.
    pub object: Value,
    /// `Warning` headers, e.g. `unknown field "spec.replicsa"`.
    pub warnings: Vec<String>,
}

/// Admits a new object: names it, stamps server-owned metadata, defaults and validates.
/// `path_ns` is the namespace of the URL (or the batch's namespace for the object).
pub fn admit_create(
    res: &ResourceInfo,
    path_ns: Option<&str>,
    mut obj: Value,
    fields: FieldValidation,
) -> Result<Admitted, ApiError> {
    check_type(res, &mut obj)?;
    let meta = meta_mut(&mut obj);
    if res.namespaced {
        let body_ns = meta
            .get("namespace")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(String::from);
        let ns = match (path_ns, body_ns) {
            (Some(p), Some(b)) if p != b => {
                return Err(ApiError::BadRequest(format!(
                    "the namespace of the provided object ({b}) does not match the namespace sent on the request ({p})"
                )))
            }
            (Some(p), _) => p.to_string(),
            (None, Some(b)) => b,
            (None, None) => "default".to_string(),
        };
        meta.insert("namespace".into(), json!(ns));
    } else {
        meta.remove("namespace");
    }
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
    let name = if name.is_empty() {
        match meta.get("generateName").and_then(Value::as_str) {
            Some(prefix) if !prefix.is_empty() => format!("{prefix}{}", random_suffix()),
            _ => {
                return Err(invalid(
                    res,
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required",
                ))
            }
        }
    } else {
        name
    };
    meta.insert("name".into(), json!(name));
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), json!(crate::kinds::now()));
    for server_owned in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        meta.remove(server_owned);
    }
    if obj.get("spec").is_some() {
        meta_mut(&mut obj).insert("generation".into(), json!(1));
    }
    (res.defaults)(&mut obj);
    (res.prepare_create)(&mut obj);
    finish(res, &name, obj, None, fields)
}

/// Admits a replacement of `existing` by `new` through the main endpoint: server-owned
/// metadata and (for kinds with a status subresource) the status are kept.
pub fn admit_update(
    res: &ResourceInfo,
    existing: &Value,
    mut new: Value,
    fields: FieldValidation,
) -> Result<Admitted, ApiError> {
    check_type(res, &mut new)?;
    let (name, ns) = object_name(existing);
    let (new_name, new_ns) = object_name(&new);
    if !new_name.is_empty() && new_name != name {
        return Err(invalid(
            res,
            &name,
            "metadata.name",
            format!("Invalid value: {new_name:?}: field is immutable"),
        ));
    }
    if res.namespaced && new_ns.is_some() && new_ns != ns {
        return Err(invalid(
            res,
            &name,
            "metadata.namespace",
            "Invalid value: field is immutable",
        ));
    }
    check_precondition(res, existing, &new)?;
    let old_meta = existing.get("metadata").cloned().unwrap_or_default();
    let meta = meta_mut(&mut new);
    meta.insert("name".into(), json!(name));
    if let Some(ns) = &ns {
        meta.insert("namespace".into(), json!(ns));
    }
    for kept in [
        "uid",
        "creationTimestamp",
        "generation",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match old_meta.get(kept) {
            Some(v) => meta.insert(kept.into(), v.clone()),
            None => meta.remove(kept),
        };
    }
    meta.remove("resourceVersion");
    if res.has_status() {
        match existing.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    }
    (res.prepare_update)(&mut new, existing);
    (res.defaults)(&mut new);
    if new.get("spec") != existing.get("spec") && new.get("spec").is_some() {
        let generation = existing
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            + 1;
        meta_mut(&mut new).insert("generation".into(), json!(generation));
    }
    finish(res, &name, new, Some(existing), fields)
}

/// Admits a write to the `status` subresource: only `.status` changes.
pub fn admit_status(res: &ResourceInfo, existing: &Value, mut new: Value) -> Result<Admitted, ApiError> {
    check_precondition(res, existing, &new)?;
    let (name, _) = object_name(existing);
    // The live object but its status, and the new status moved in: neither status is
    // copied (a pod's is most of it).
    let status = new.as_object_mut().and_then(|o| o.remove("status"));
    let mut out = match existing.as_object() {
        Some(live) => Value::Object(
            live.iter()
                .filter(|(k, _)| k.as_str() != "status")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        None => existing.clone(),
    };
    if let (Some(status), Some(o)) = (status, out.as_object_mut()) {
        o.insert("status".into(), status);
    }
    meta_mut(&mut out).remove("resourceVersion");
    // Status is written by components through typed clients: unknown fields are dropped.
    finish(res, &name, out, Some(existing), FieldValidation::Ignore)
}

/// Admits a write to a Namespace's `finalize` subresource: only `spec.finalizers` changes.
pub fn admit_finalize(res: &ResourceInfo, existing: &Value, new: &Value) -> Result<Admitted, ApiError> {
    check_precondition(res, existing, new)?;
    let (name, _) = object_name(existing);
    let mut out = existing.clone();
    let finalizers = new.pointer("/spec/finalizers").cloned().unwrap_or_else(|| json!([]));
    match out.get_mut("spec").and_then(Value::as_object_mut) {
        Some(spec) => {
            spec.insert("finalizers".into(), finalizers);
        }
        None => out["spec"] = json!({"finalizers": finalizers}),
    }
    meta_mut(&mut out).remove("resourceVersion");
    finish(res, &name, out, Some(existing), FieldValidation::Ignore)
}

/// 409 if `new` names a resourceVersion other than the live one.
pub fn check_precondition(res: &ResourceInfo, existing: &Value, new: &Value) -> Result<(), ApiError> {
    if let Some(want) = resource_version(new) {
        if resource_version(existing).as_deref() != Some(want.as_str()) {
            let (name, _) = object_name(existing);
            return Err(ApiError::modified(res.qualified_plural(), name));
        }
    }
    Ok(())
}

/// What to do with fields an object's type does not know (`?fieldValidation=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Reject the object, naming the field (kubectl's default).
    Strict,
    /// Drop them and say so in a `Warning` header (the server's default).
    Warn,
    /// Drop them silently.
    Ignore,
}

impl FieldValidation {
    /// From the `fieldValidation` query parameter; Kubernetes defaults to `Warn`.
    pub fn from_param(param: Option<&str>) -> Result<Self, ApiError> {
        match param {
            Some("Strict") => Ok(FieldValidation::Strict),
            Some("Warn") | None | Some("") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some(other) => Err(ApiError::BadRequest(format!(
                "fieldValidation parameter unsupported: {other}"
            ))),
        }
    }
}

/// Type-checks, normalizes and validates semantics (against `old` for an update).
fn finish(
    res: &ResourceInfo,
    name: &str,
    obj: Value,
    old: Option<&Value>,
    fields: FieldValidation,
) -> Result<Admitted, ApiError> {
    let invalid = |causes| ApiError::Invalid {
        kind: res.qualified_kind(),
        name: name.to_string(),
        causes,
    };
    let (obj, unknown) = (res.normalize)(obj).map_err(|c| invalid(vec![c]))?;
    let warnings = match fields {
        FieldValidation::Strict if !unknown.is_empty() => {
            return Err(ApiError::StrictDecoding {
                kind: res.kind.to_string(),
                version: res.version.to_string(),
                name: name.to_string(),
                fields: unknown,
            })
        }
        FieldValidation::Warn => unknown.iter().map(|f| format!("unknown field {f:?}")).collect(),
        _ => Vec::new(),
    };
    let mut errs = Errors::default();
    validation::object_meta(
        &mut errs,
        obj.get("metadata").unwrap_or(&Value::Null),
        res.name_rule,
        res.namespaced,
    );
    (res.validate)(&obj, old, &mut errs);
    if !errs.is_empty() {
        return Err(invalid(errs.0));
    }
    Ok(Admitted { object: obj, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::registry::by_kind;

    #[test]
    fn create_stamps_metadata_defaults_and_names_bad_fields() {
        let res = by_kind("apps/v1", "Deployment").unwrap();
        let good = json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}});
        let out = admit_create(res, Some("default"), good.clone(), FieldValidation::Strict)
            .unwrap()
            .object;
        assert_eq!(out["metadata"]["namespace"], "default");
        assert_eq!(out["metadata"]["generation"], 1);
        assert_eq!(out["spec"]["replicas"], 1);
        assert!(out["metadata"]["uid"].as_str().is_some_and(|u| !u.is_empty()));

        let mut wrong_type = good.clone();
        wrong_type["spec"]["replicas"] = json!("three");
        match admit_create(res, Some("default"), wrong_type, FieldValidation::Strict) {
            Err(ApiError::Invalid { causes, .. }) => assert_eq!(causes[0].field, "spec.replicas"),
            other => panic!("expected Invalid, got {other:?}"),
        }

        let mut typo = good.clone();
        typo["spec"]["replicsa"] = json!(3);
        match admit_create(res, Some("default"), typo.clone(), FieldValidation::Strict) {
            Err(e @ ApiError::StrictDecoding { .. }) => assert_eq!(
                e.to_string(),
                "Deployment in version \"v1\" cannot be handled as a Deployment: strict decoding error: unknown field \"spec.replicsa\""
            ),
            other => panic!("expected a strict decoding error, got {other:?}"),
        }
        let dropped = admit_create(res, Some("default"), typo.clone(), FieldValidation::Ignore).unwrap();
        assert!(dropped.object["spec"].get("replicsa").is_none());
        assert!(dropped.warnings.is_empty());
        let warned = admit_create(res, Some("default"), typo, FieldValidation::Warn).unwrap();
        assert_eq!(warned.warnings, ["unknown field \"spec.replicsa\""]);

        let mut mismatch = good;
        mismatch["spec"]["selector"]["matchLabels"]["app"] = json!("other");
        assert!(matches!(
            admit_create(res, Some("default"), mismatch, FieldValidation::Strict),
            Err(ApiError::Invalid { .. })
        ));
    }

    #[test]
    fn update_keeps_server_fields_and_bumps_generation_on_spec_change() {
        let res = by_kind("v1", "ConfigMap").unwrap();
        let existing = admit_create(
            res,
            Some("default"),
            json!({"metadata": {"name": "c"}, "data": {"a": "1"}}),
            FieldValidation::Strict,
        )
        .unwrap()
        .object;
        let mut existing_rv = existing.clone();
        existing_rv["metadata"]["resourceVersion"] = json!("5");
        let updated = admit_update(
            res,
            &existing_rv,
            json!({"metadata": {"name": "c"}, "data": {"a": "2"}}),
            FieldValidation::Strict,
        )
        .unwrap()
        .object;
        assert_eq!(updated["metadata"]["uid"], existing["metadata"]["uid"]);
        assert_eq!(updated["data"]["a"], "2");
        let stale = json!({"metadata": {"name": "c", "resourceVersion": "4"}, "data": {}});
        assert!(matches!(
            admit_update(res, &existing_rv, stale, FieldValidation::Strict),
            Err(ApiError::Conflict { .. })
        ));
    }
}
