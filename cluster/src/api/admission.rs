//! Admission of writes: metadata the server owns, defaulting, and validation.
//!
//! Every write path (single create/update, subresources, the atomic batch) goes through
//! these functions, so an object is admitted the same way however it arrives.

use std::collections::HashSet;
use std::sync::LazyLock;

use serde_json::{json, Map, Value};

use super::error::{ApiError, Cause};
use super::registry::{ResourceInfo, RESOURCES};
use super::validation::{self, Errors};

fn invalid(res: &ResourceInfo, name: &str, field: &str, message: impl Into<String>) -> ApiError {
    rejected(res, name, vec![Cause::invalid(field, message)])
}

/// 422 for `name` of `res`, with its causes.
fn rejected(res: &ResourceInfo, name: &str, causes: Vec<Cause>) -> ApiError {
    ApiError::Invalid {
        kind: res.qualified_kind(),
        name: name.to_string(),
        causes,
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
    let status = new.as_object_mut().and_then(|o| o.remove("status"));
    meta_mut(&mut new).remove("resourceVersion");
    // A patch (the usual status write) made `new` from the live object: kept as it is
    // rather than copied from the live one again. Neither status is copied.
    let mut out = if same_but_status(existing, &new) {
        new
    } else {
        let mut out = match existing.as_object() {
            Some(live) => Value::Object(
                live.iter()
                    .filter(|(k, _)| k.as_str() != "status")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            None => existing.clone(),
        };
        meta_mut(&mut out).remove("resourceVersion");
        out
    };
    // Only the status is type-checked where the type takes it alone: the rest is the live
    // object's, checked when it was written (a pod's spec and metadata would be most of
    // the round trip). Other kinds are type-checked whole.
    let alone = takes_status_alone(res);
    let status = match status {
        Some(status) if alone => typed_status(res, &name, status)?,
        status => status,
    };
    if let (Some(status), Some(o)) = (status, out.as_object_mut()) {
        o.insert("status".into(), status);
    }
    if alone {
        validate(res, &name, out, Some(existing), Vec::new())
    } else {
        // Status is written by components through typed clients: unknown fields are dropped.
        finish(res, &name, out, Some(existing), FieldValidation::Ignore)
    }
}

/// Whether the kind's type accepts an object with nothing but a status (every
/// k8s-openapi type does; a type with a required `spec` does not). Worked out once for
/// every kind: each status write asks.
fn takes_status_alone(res: &ResourceInfo) -> bool {
    static ALONE: LazyLock<HashSet<(&str, &str, &str)>> = LazyLock::new(|| {
        RESOURCES
            .iter()
            .filter(|r| (r.normalize)(Value::Object(Map::new())).is_ok())
            .map(|r| (r.group, r.version, r.kind))
            .collect()
    });
    ALONE.contains(&(res.group, res.version, res.kind))
}

/// `status` type-checked through the kind's type, as part of an object holding nothing
/// else; `None` if the type has no status. Status is written by components through typed
/// clients: unknown fields are dropped.
fn typed_status(res: &ResourceInfo, name: &str, status: Value) -> Result<Option<Value>, ApiError> {
    let alone = Value::Object(Map::from_iter([("status".to_string(), status)]));
    let (mut typed, _unknown) = (res.normalize)(alone).map_err(|c| rejected(res, name, vec![c]))?;
    Ok(typed.as_object_mut().and_then(|o| o.remove("status")))
}

/// Whether `new` (its status taken out, no resourceVersion) is `existing` but for its
/// status and resourceVersion. Compared in place: no copy of either.
fn same_but_status(existing: &Value, new: &Value) -> bool {
    let (Some(live), Some(new)) = (existing.as_object(), new.as_object()) else {
        return false;
    };
    let fields = live.len() - usize::from(live.contains_key("status"));
    fields == new.len()
        && live
            .iter()
            .filter(|(k, _)| k.as_str() != "status")
            .all(|(k, v)| match k.as_str() {
                "metadata" => match (v.as_object(), new.get(k).and_then(Value::as_object)) {
                    (Some(live_meta), Some(new_meta)) => {
                        live_meta.len() - usize::from(live_meta.contains_key("resourceVersion")) == new_meta.len()
                            && live_meta
                                .iter()
                                .filter(|(k, _)| k.as_str() != "resourceVersion")
                                .all(|(k, v)| new_meta.get(k) == Some(v))
                    }
                    _ => false,
                },
                _ => new.get(k) == Some(v),
            })
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
    let (obj, unknown) = (res.normalize)(obj).map_err(|c| rejected(res, name, vec![c]))?;
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
    validate(res, name, obj, old, warnings)
}

/// Validates the semantics of a type-checked object (against `old` for an update).
fn validate(
    res: &ResourceInfo,
    name: &str,
    obj: Value,
    old: Option<&Value>,
    warnings: Vec<String>,
) -> Result<Admitted, ApiError> {
    let mut errs = Errors::default();
    validation::object_meta(
        &mut errs,
        obj.get("metadata").unwrap_or(&Value::Null),
        res.name_rule,
        res.namespaced,
    );
    (res.validate)(&obj, old, &mut errs);
    if !errs.is_empty() {
        return Err(rejected(res, name, errs.0));
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

    #[test]
    fn status_writes_change_only_the_status_and_type_check_it() {
        let res = by_kind("v1", "Pod").unwrap();
        let mut live = admit_create(
            res,
            Some("default"),
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}),
            FieldValidation::Strict,
        )
        .unwrap()
        .object;
        live["metadata"]["resourceVersion"] = json!("7");
        let want_spec = live["spec"].clone();

        // A patch: the live object with a new status (and a stray field the type lacks).
        let mut patched = live.clone();
        patched["status"] = json!({"phase": "Running", "podIP": "10.0.0.1", "nonsense": 1});
        let out = admit_status(res, &live, patched).unwrap().object;
        assert_eq!(out["status"], json!({"phase": "Running", "podIP": "10.0.0.1"}));
        assert_eq!(out["spec"], want_spec);
        assert_eq!(out["metadata"]["uid"], live["metadata"]["uid"]);
        assert!(out["metadata"].get("resourceVersion").is_none());

        // A full object that also changes the spec and labels: only its status is taken.
        let mut replaced = live.clone();
        replaced["spec"]["containers"][0]["image"] = json!("y");
        replaced["metadata"]["labels"] = json!({"a": "b"});
        replaced["status"] = json!({"phase": "Succeeded"});
        let out = admit_status(res, &live, replaced).unwrap().object;
        assert_eq!(out["spec"], want_spec);
        assert!(out["metadata"].get("labels").is_none());
        assert_eq!(out["status"], json!({"phase": "Succeeded"}));

        // A status of the wrong type names its field.
        let mut bad = live.clone();
        bad["status"] = json!({"phase": 3});
        match admit_status(res, &live, bad) {
            Err(ApiError::Invalid { causes, .. }) => assert_eq!(causes[0].field, "status.phase"),
            other => panic!("expected Invalid, got {other:?}"),
        }

        // A kind without status keeps none; a stale resourceVersion conflicts.
        let cm = by_kind("v1", "ConfigMap").unwrap();
        let cm_live = json!({"metadata": {"name": "c", "namespace": "default", "resourceVersion": "3"},
            "data": {"a": "1"}});
        let out = admit_status(cm, &cm_live, json!({"metadata": {"name": "c"}, "status": {"x": 1}}))
            .unwrap()
            .object;
        assert!(out.get("status").is_none());
        assert_eq!(out["data"]["a"], "1");
        let stale = json!({"metadata": {"name": "c", "resourceVersion": "2"}});
        assert!(matches!(
            admit_status(cm, &cm_live, stale),
            Err(ApiError::Conflict { .. })
        ));

        // A kind whose type requires a spec is type-checked whole.
        let app = by_kind("kairn.dev/v1", "Application").unwrap();
        let app_live = admit_create(
            app,
            Some("kairn-system"),
            json!({"metadata": {"name": "a"}, "spec": {"source": {"repoURL": "/r", "targetRevision": "main"}}}),
            FieldValidation::Strict,
        )
        .unwrap()
        .object;
        let mut synced = app_live.clone();
        synced["status"] = json!({"sync": {"status": "Synced"}});
        let out = admit_status(app, &app_live, synced).unwrap().object;
        assert_eq!(out["spec"], app_live["spec"]);
        assert_eq!(out["status"]["sync"]["status"], "Synced");
    }
}
