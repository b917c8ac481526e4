//! Admission of writes: metadata the server owns, defaulting, and validation.
//!
//! Every write path (single create/update, subresources, the atomic batch) goes through
//! these functions, so an object is admitted the same way however it arrives.

use serde_json::{json, Map, Value};

use super::error::{ApiError, Cause};
use super::registry::ResourceInfo;

fn invalid(res: &ResourceInfo, name: &str, field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Invalid {
        kind: res.kind.to_string(),
        name: name.to_string(),
        causes: vec![Cause {
            field: field.to_string(),
            message: message.into(),
        }],
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

/// Whether `name` is a valid DNS-1123 subdomain (or label, when `label` is set).
fn valid_name(name: &str, label: bool) -> Result<(), String> {
    let max = if label { 63 } else { 253 };
    if name.is_empty() || name.len() > max {
        return Err(format!("must be 1 to {max} characters"));
    }
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (c == '.' && !label));
    let ok_ends = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().last().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok_chars && ok_ends {
        Ok(())
    } else {
        Err(format!(
            "a lowercase RFC 1123 {} must consist of lower case alphanumeric characters, '-'{}, and must start and end with an alphanumeric character",
            if label { "label" } else { "subdomain" },
            if label { "" } else { " or '.'" }
        ))
    }
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

/// Admits a new object: names it, stamps server-owned metadata, defaults and validates.
/// `path_ns` is the namespace of the URL (or the batch's namespace for the object).
pub fn admit_create(
    res: &ResourceInfo,
    path_ns: Option<&str>,
    mut obj: Value,
    fields: FieldValidation,
) -> Result<Value, ApiError> {
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
            _ => return Err(invalid(res, "", "metadata.name", "name or generateName is required")),
        }
    } else {
        name
    };
    valid_name(&name, res.kind == "Namespace").map_err(|m| invalid(res, &name, "metadata.name", m))?;
    meta.insert("name".into(), json!(name));
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), json!(crate::kinds::now()));
    for server_owned in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
    ] {
        meta.remove(server_owned);
    }
    if obj.get("spec").is_some() {
        meta_mut(&mut obj).insert("generation".into(), json!(1));
    }
    apply_defaults(res, &mut obj, true);
    finish(res, &name, obj, fields)
}

/// Admits a replacement of `existing` by `new` through the main endpoint: server-owned
/// metadata and (for kinds with a status subresource) the status are kept.
pub fn admit_update(
    res: &ResourceInfo,
    existing: &Value,
    mut new: Value,
    fields: FieldValidation,
) -> Result<Value, ApiError> {
    check_type(res, &mut new)?;
    let (name, ns) = object_name(existing);
    let (new_name, new_ns) = object_name(&new);
    if !new_name.is_empty() && new_name != name {
        return Err(invalid(
            res,
            &name,
            "metadata.name",
            format!("field is immutable (was {name}, got {new_name})"),
        ));
    }
    if res.namespaced && new_ns.is_some() && new_ns != ns {
        return Err(invalid(res, &name, "metadata.namespace", "field is immutable"));
    }
    check_precondition(res, existing, &new)?;
    let old_meta = existing.get("metadata").cloned().unwrap_or_default();
    let meta = meta_mut(&mut new);
    meta.insert("name".into(), json!(name));
    if let Some(ns) = &ns {
        meta.insert("namespace".into(), json!(ns));
    }
    for kept in ["uid", "creationTimestamp", "generation", "deletionTimestamp"] {
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
    apply_defaults(res, &mut new, false);
    if new.get("spec") != existing.get("spec") && new.get("spec").is_some() {
        let generation = existing
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            + 1;
        meta_mut(&mut new).insert("generation".into(), json!(generation));
    }
    finish(res, &name, new, fields)
}

/// Admits a write to the `status` subresource: only `.status` changes.
pub fn admit_status(res: &ResourceInfo, existing: &Value, new: &Value) -> Result<Value, ApiError> {
    check_precondition(res, existing, new)?;
    let (name, _) = object_name(existing);
    let mut out = existing.clone();
    match new.get("status") {
        Some(s) => out["status"] = s.clone(),
        None => {
            if let Some(o) = out.as_object_mut() {
                o.remove("status");
            }
        }
    }
    meta_mut(&mut out).remove("resourceVersion");
    // Status is written by components through typed clients: unknown fields are dropped.
    finish(res, &name, out, FieldValidation::Ignore)
}

/// 409 if `new` names a resourceVersion other than the live one.
pub fn check_precondition(res: &ResourceInfo, existing: &Value, new: &Value) -> Result<(), ApiError> {
    if let Some(want) = resource_version(new) {
        if resource_version(existing).as_deref() != Some(want.as_str()) {
            let (name, _) = object_name(existing);
            return Err(ApiError::modified(res.plural, name));
        }
    }
    Ok(())
}

/// What to do with fields an object's type does not know (`?fieldValidation=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Reject the object, naming the fields (kubectl's default, and the batch write's).
    Strict,
    /// Drop them, with one warning each (Kubernetes' default).
    Warn,
    /// Drop them silently.
    Ignore,
}

impl FieldValidation {
    /// From the `fieldValidation` query parameter; absent means `Warn`, as in Kubernetes.
    pub fn from_param(param: Option<&str>) -> Self {
        match param {
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            _ => FieldValidation::Warn,
        }
    }
}

/// Type-checks, normalizes and validates semantics.
fn finish(res: &ResourceInfo, name: &str, obj: Value, fields: FieldValidation) -> Result<Value, ApiError> {
    let invalid = |causes| ApiError::Invalid {
        kind: res.kind.to_string(),
        name: name.to_string(),
        causes,
    };
    let (obj, unknown) = (res.normalize)(obj).map_err(|c| invalid(vec![c]))?;
    match fields {
        FieldValidation::Strict if !unknown.is_empty() => {
            return Err(ApiError::UnknownFields {
                kind: res.kind.to_string(),
                version: res.version.to_string(),
                name: name.to_string(),
                fields: unknown,
            })
        }
        FieldValidation::Warn => {
            for field in unknown {
                super::warning::add(format!("unknown field \"{field}\""));
            }
        }
        _ => {}
    }
    validate(res, name, &obj)?;
    Ok(obj)
}

fn set_default(obj: &mut Value, pointer: &str, value: Value) {
    if obj.pointer(pointer).is_some() {
        return;
    }
    let mut cur = obj;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        if !cur.is_object() {
            return;
        }
        if i + 1 == parts.len() {
            cur[*part] = value;
            return;
        }
        if cur.get(*part).is_none() {
            cur[*part] = json!({});
        }
        cur = &mut cur[*part];
    }
}

fn default_pod_spec(obj: &mut Value, base: &str) {
    if obj.pointer(base).is_none() {
        return;
    }
    set_default(obj, &format!("{base}/restartPolicy"), json!("Always"));
    set_default(obj, &format!("{base}/terminationGracePeriodSeconds"), json!(30));
    set_default(obj, &format!("{base}/schedulerName"), json!("default-scheduler"));
    set_default(obj, &format!("{base}/dnsPolicy"), json!("ClusterFirst"));
}

/// The defaults Kubernetes applies that Kairn's components rely on.
fn apply_defaults(res: &ResourceInfo, obj: &mut Value, creating: bool) {
    match res.kind {
        "Pod" => {
            default_pod_spec(obj, "/spec");
            if creating {
                set_default(obj, "/status/phase", json!("Pending"));
            }
        }
        "Deployment" => {
            set_default(obj, "/spec/replicas", json!(1));
            set_default(obj, "/spec/revisionHistoryLimit", json!(10));
            set_default(obj, "/spec/progressDeadlineSeconds", json!(600));
            set_default(
                obj,
                "/spec/strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
            );
            default_pod_spec(obj, "/spec/template/spec");
        }
        "ReplicaSet" => {
            set_default(obj, "/spec/replicas", json!(1));
            default_pod_spec(obj, "/spec/template/spec");
        }
        "Namespace" if creating => set_default(obj, "/status/phase", json!("Active")),
        _ => {}
    }
}

/// Semantic checks beyond types, for the kinds whose controllers depend on them.
fn validate(res: &ResourceInfo, name: &str, obj: &Value) -> Result<(), ApiError> {
    let check_pod_spec = |base: &str| -> Result<(), ApiError> {
        let containers = obj.pointer(&format!("{base}/containers")).and_then(Value::as_array);
        let containers = containers.filter(|c| !c.is_empty()).ok_or_else(|| {
            invalid(
                res,
                name,
                &format!("{}.containers", base.trim_start_matches('/').replace('/', ".")),
                "Required value",
            )
        })?;
        let mut seen = std::collections::HashSet::new();
        for (i, c) in containers.iter().enumerate() {
            let cname = c.get("name").and_then(Value::as_str).unwrap_or_default();
            let field = format!(
                "{}.containers[{i}].name",
                base.trim_start_matches('/').replace('/', ".")
            );
            valid_name(cname, true).map_err(|m| invalid(res, name, &field, m))?;
            if !seen.insert(cname) {
                return Err(invalid(res, name, &field, format!("Duplicate value: \"{cname}\"")));
            }
        }
        Ok(())
    };
    match res.kind {
        "Pod" => check_pod_spec("/spec")?,
        "Deployment" | "ReplicaSet" => {
            if obj
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .is_some_and(|r| r < 0)
            {
                return Err(invalid(
                    res,
                    name,
                    "spec.replicas",
                    "must be greater than or equal to 0",
                ));
            }
            let selector = obj.pointer("/spec/selector/matchLabels").and_then(Value::as_object);
            let selector = selector.filter(|s| !s.is_empty()).ok_or_else(|| {
                invalid(
                    res,
                    name,
                    "spec.selector",
                    "Required value: matchLabels must not be empty",
                )
            })?;
            let labels = obj.pointer("/spec/template/metadata/labels").and_then(Value::as_object);
            let matches = selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
            if !matches {
                return Err(invalid(
                    res,
                    name,
                    "spec.template.metadata.labels",
                    "Invalid value: `selector` does not match template `labels`",
                ));
            }
            check_pod_spec("/spec/template/spec")?;
        }
        _ => {}
    }
    Ok(())
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
        let out = admit_create(res, Some("default"), good.clone(), FieldValidation::Strict).unwrap();
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
            Err(e @ ApiError::UnknownFields { .. }) => assert_eq!(
                e.to_string(),
                r#"Deployment in version "v1" cannot be handled as a Deployment: strict decoding error: unknown field "spec.replicsa""#
            ),
            other => panic!("expected UnknownFields, got {other:?}"),
        }
        let dropped = admit_create(res, Some("default"), typo, FieldValidation::Ignore).unwrap();
        assert!(dropped["spec"].get("replicsa").is_none());

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
        .unwrap();
        let mut existing_rv = existing.clone();
        existing_rv["metadata"]["resourceVersion"] = json!("5");
        let updated = admit_update(
            res,
            &existing_rv,
            json!({"metadata": {"name": "c"}, "data": {"a": "2"}}),
            FieldValidation::Strict,
        )
        .unwrap();
        assert_eq!(updated["metadata"]["uid"], existing["metadata"]["uid"]);
        assert_eq!(updated["data"]["a"], "2");
        let stale = json!({"metadata": {"name": "c", "resourceVersion": "4"}, "data": {}});
        assert!(matches!(
            admit_update(res, &existing_rv, stale, FieldValidation::Strict),
            Err(ApiError::Conflict { .. })
        ));
    }
}
