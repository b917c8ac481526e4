//! The smaller kinds: Namespace, Node, ConfigMap, Secret, ServiceAccount, Event, Lease
//! and PriorityClass.

use serde_json::{json, Value};

use super::{cell, set_default, Column};
use crate::api::validation::{self as v, Errors};

/// The finalizer that keeps a Namespace until everything in it is deleted.
pub const NAMESPACE_FINALIZER: &str = "kubernetes";

/// A new Namespace is Active and carries the `kubernetes` finalizer.
pub fn namespace_prepare_create(ns: &mut Value) {
    ns["spec"] = json!({"finalizers": [NAMESPACE_FINALIZER]});
    ns["status"] = json!({"phase": "Active"});
}

/// `spec.finalizers` change only through the `finalize` subresource.
pub fn namespace_prepare_update(ns: &mut Value, old: &Value) {
    ns["spec"] = old.get("spec").cloned().unwrap_or_else(|| json!({}));
}

/// `kubectl get namespaces` columns.
pub static NAMESPACE_COLUMNS: &[Column] = &[
    Column::new("Name", "string", 0),
    Column::new("Status", "string", 0),
    Column::new("Age", "string", 0),
];

/// One Namespace's row.
pub fn namespace_cells(ns: &Value) -> Vec<Value> {
    vec![cell::name(ns), json!(cell::s(ns, "/status/phase")), cell::age(ns)]
}

/// Node validation: taints.
pub fn validate_node(node: &Value, _old: Option<&Value>, errs: &mut Errors) {
    let mut seen = std::collections::HashSet::new();
    for (field, t) in v::items(node, "", "spec.taints") {
        let key = cell::s(t, "/key");
        if key.is_empty() {
            errs.required(&format!("{field}.key"));
        }
        for m in v::qualified_name(key) {
            errs.invalid(&format!("{field}.key"), &json!(key), m);
        }
        let value = cell::s(t, "/value");
        for m in v::label_value(value) {
            errs.invalid(&format!("{field}.value"), &json!(value), m);
        }
        let effect = cell::s(t, "/effect");
        let effects = ["NoSchedule", "PreferNoSchedule", "NoExecute"];
        if effect.is_empty() {
            errs.required(&format!("{field}.effect"));
        } else if !effects.contains(&effect) {
            errs.unsupported(&format!("{field}.effect"), effect, &effects);
        }
        if !seen.insert((key.to_string(), effect.to_string())) {
            errs.duplicate(&field, &json!({"key": key, "effect": effect}));
        }
    }
}

/// `kubectl get nodes` columns.
pub static NODE_COLUMNS: &[Column] = &[
    Column::new("Name", "string", 0),
    Column::new("Status", "string", 0),
    Column::new("Roles", "string", 0),
    Column::new("Age", "string", 0),
    Column::new("Version", "string", 0),
    Column::new("Internal-IP", "string", 1),
    Column::new("External-IP", "string", 1),
    Column::new("OS-Image", "string", 1),
    Column::new("Kernel-Version", "string", 1),
    Column::new("Container-Runtime", "string", 1),
];

fn address(node: &Value, kind: &str) -> Value {
    let ip = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|a| a["type"] == kind))
        .map(|a| cell::s(a, "/address"))
        .unwrap_or("");
    cell::or_none(ip)
}

/// One Node's row.
pub fn node_cells(node: &Value) -> Vec<Value> {
    let ready = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .map(|c| if c["status"] == "True" { "Ready" } else { "NotReady" })
        .unwrap_or("Unknown");
    let status = if node.pointer("/spec/unschedulable") == Some(&json!(true)) {
        format!("{ready},SchedulingDisabled")
    } else {
        ready.to_string()
    };
    let mut roles: Vec<&str> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
        .filter(|r| !r.is_empty())
        .collect();
    roles.sort_unstable();
    vec![
        cell::name(node),
        json!(status),
        cell::or_none(&roles.join(",")),
        cell::age(node),
        json!(cell::s(node, "/status/nodeInfo/kubeletVersion")),
        address(node, "InternalIP"),
        address(node, "ExternalIP"),
        json!(cell::s(node, "/status/nodeInfo/osImage")),
        json!(cell::s(node, "/status/nodeInfo/kernelVersion")),
        json!(cell::s(node, "/status/nodeInfo/containerRuntimeVersion")),
    ]
}

/// Kubernetes' limit on the data of one ConfigMap or Secret.
pub const DATA_MAX_BYTES: usize = 1024 * 1024;

/// Keys of ConfigMap and Secret data: at most 253 of `[-._a-zA-Z0-9]`.
fn data_keys(errs: &mut Errors, obj: &Value, fields: &[&str], decoded_len: impl Fn(&Value) -> usize) {
    let mut total = 0;
    let mut seen = std::collections::HashSet::new();
    for field in fields {
        for (k, value) in obj.get(*field).and_then(Value::as_object).into_iter().flatten() {
            let ok = !k.is_empty()
                && k.len() <= 253
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
                && k != "."
                && k != ".."
                && !k.starts_with("..");
            if !ok {
                errs.invalid(
                    &format!("{field}[{k}]"),
                    &json!(k),
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                );
            }
            if !seen.insert(k.clone()) {
                errs.invalid(
                    &format!("{field}[{k}]"),
                    &json!(k),
                    "duplicate of key present in another data field",
                );
            }
            total += decoded_len(value);
        }
    }
    if total > DATA_MAX_BYTES {
        errs.too_long(fields[0], DATA_MAX_BYTES);
    }
}

/// `immutable: true` freezes the data and the flag itself.
fn immutable_data(errs: &mut Errors, obj: &Value, old: Option<&Value>, fields: &[&str]) {
    let Some(old) = old.filter(|o| o.get("immutable") == Some(&json!(true))) else {
        return;
    };
    if obj.get("immutable") != Some(&json!(true)) {
        errs.forbidden("immutable", "field is immutable when `immutable` is set");
    }
    for f in fields {
        if obj.get(*f) != old.get(*f) {
            errs.forbidden(f, "field is immutable when `immutable` is set");
        }
    }
}

/// ConfigMap validation.
pub fn validate_configmap(cm: &Value, old: Option<&Value>, errs: &mut Errors) {
    data_keys(errs, cm, &["data", "binaryData"], |v| v.as_str().map_or(0, str::len));
    immutable_data(errs, cm, old, &["data", "binaryData"]);
}

/// `kubectl get configmaps` columns.
pub static CONFIGMAP_COLUMNS: &[Column] = &[
    Column::new("Name", "string", 0),
    Column::new("Data", "integer", 0),
    Column::new("Age", "string", 0),
];

fn count(obj: &Value, fields: &[&str]) -> usize {
    fields
        .iter()
        .filter_map(|f| obj.get(*f).and_then(Value::as_object))
        .map(|m| m.len())
        .sum()
}

/// One ConfigMap's row.
pub fn configmap_cells(cm: &Value) -> Vec<Value> {
    vec![cell::name(cm), json!(count(cm, &["data", "binaryData"])), cell::age(cm)]
}

/// Secret defaults: the type, and `stringData` folded into `data`, as the API server
/// does on every write.
pub fn secret_defaults(secret: &mut Value) {
    set_default(secret, "type", json!("Opaque"));
    fold_string_data(secret);
}

/// Moves a Secret's `stringData` into `data` (base64), as the API server stores it; the
/// GitOps diff does the same to a manifest before comparing it with the live Secret.
pub fn fold_string_data(secret: &mut Value) {
    let Some(string_data) = secret.as_object_mut().and_then(|o| o.remove("stringData")) else {
        return;
    };
    let Some(map) = string_data.as_object() else { return };
    if !secret.get("data").is_some_and(Value::is_object) {
        secret["data"] = json!({});
    }
    for (k, v) in map {
        let bytes = k8s_openapi::ByteString(v.as_str().unwrap_or_default().as_bytes().to_vec());
        if let Ok(encoded) = serde_json::to_value(bytes) {
            secret["data"][k] = encoded;
        }
    }
}

/// Secret validation: keys, size, the type's required keys, immutability.
pub fn validate_secret(secret: &Value, old: Option<&Value>, errs: &mut Errors) {
    // Base64 carries three bytes in four characters.
    data_keys(errs, secret, &["data"], |v| v.as_str().map_or(0, |s| s.len() * 3 / 4));
    immutable_data(errs, secret, old, &["data"]);
    let kind = cell::s(secret, "/type");
    let has = |k: &str| secret.pointer(&format!("/data/{}", k.replace('/', "~1"))).is_some();
    let required: &[&str] = match kind {
        "kubernetes.io/tls" => &["tls.crt", "tls.key"],
        "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
        "kubernetes.io/dockercfg" => &[".dockercfg"],
        "kubernetes.io/basic-auth" | "kubernetes.io/ssh-auth" => &[],
        _ => &[],
    };
    for k in required {
        if !has(k) {
            errs.required(&format!("data[{k}]"));
        }
    }
    if kind == "kubernetes.io/ssh-auth" && !has("ssh-privatekey") {
        errs.required("data[ssh-privatekey]");
    }
    if kind == "kubernetes.io/service-account-token"
        && secret
            .pointer("/metadata/annotations/kubernetes.io~1service-account.name")
            .is_none()
    {
        errs.required("metadata.annotations[kubernetes.io/service-account.name]");
    }
    if let Some(old) = old {
        errs.immutable("type", secret.get("type"), old.get("type"));
    }
}

/// `kubectl get secrets` columns.
pub static SECRET_COLUMNS: &[Column] = &[
    Column::new("Name", "string", 0),
    Column::new("Type", "string", 0),
    Column::new("Data", "integer", 0),
    Column::new("Age", "string", 0),
];

/// One Secret's row.
pub fn secret_cells(secret: &Value) -> Vec<Value> {
    vec![
        cell::name(secret),
        json!(cell::s(secret, "/type")),
        json!(count(secret, &["data"])),
        cell::age(secret),
    ]
}

/// `kubectl get serviceaccounts` columns.
pub static SERVICEACCOUNT_COLUMNS: &[Column] = &[
    Column::new("Name", "string", 0),
    Column::new("Secrets", "integer", 0),
    Column::new("Age", "string", 0),
];

/// One ServiceAccount's row.
pub fn serviceaccount_cells(sa: &Value) -> Vec<Value> {
    let secrets = sa.get("secrets").and_then(Value::as_array).map_or(0, Vec::len);
    vec![cell::name(sa), json!(secrets), cell::age(sa)]
}

/// `kubectl get events` columns.
pub static EVENT_COLUMNS: &[Column] = &[
    Column::new("Last Seen", "string", 0),
    Column::new("Type", "string", 0),
    Column::new("Reason", "string", 0),
    Column::new("Object", "string", 0),
    Column::new("Message", "string", 0),
    Column::new("Subobject", "string", 1),
    Column::new("Source", "string", 1),
    Column::new("First Seen", "string", 1),
    Column::new("Count", "string", 1),
    Column::new("Name", "string", 1),
];

/// One Event's row.
pub fn event_cells(ev: &Value) -> Vec<Value> {
    let first = [cell::s(ev, "/firstTimestamp"), cell::s(ev, "/eventTime")]
        .into_iter()
        .find(|t| !t.is_empty())
        .unwrap_or(cell::s(ev, "/metadata/creationTimestamp"));
    let last = [cell::s(ev, "/lastTimestamp"), cell::s(ev, "/series/lastObservedTime")]
        .into_iter()
        .find(|t| !t.is_empty())
        .unwrap_or(first);
    let object = format!(
        "{}/{}",
        cell::s(ev, "/involvedObject/kind").to_lowercase(),
        cell::s(ev, "/involvedObject/name")
    );
    let source = [cell::s(ev, "/source/component"), cell::s(ev, "/reportingComponent")]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or("");
    let count = cell::n(ev, "/count").max(1);
    vec![
        json!(crate::api::table::human_age(last)),
        json!(cell::s(ev, "/type")),
        json!(cell::s(ev, "/reason")),
        json!(object),
        json!(cell::s(ev, "/message").trim()),
        json!(cell::s(ev, "/involvedObject/fieldPath")),
        json!(source),
        json!(crate::api::table::human_age(first)),
        json!(count.to_string()),
        cell::name(ev),
    ]
}

/// `kubectl get leases` columns.
pub static LEASE_COLUMNS: &[Column] = &[
    Column::new("Name", "string", 0),
    Column::new("Holder", "string", 0),
    Column::new("Age", "string", 0),
];

/// One Lease's row.
pub fn lease_cells(lease: &Value) -> Vec<Value> {
    vec![
        cell::name(lease),
        json!(cell::s(lease, "/spec/holderIdentity")),
        cell::age(lease),
    ]
}

/// Priorities users may give; above it only the `system-` classes.
pub const HIGHEST_USER_PRIORITY: i64 = 1_000_000_000;

/// The PriorityClasses every cluster has.
pub const SYSTEM_PRIORITY_CLASSES: &[(&str, i64, &str)] = &[
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

/// PriorityClass defaults.
pub fn priorityclass_defaults(pc: &mut Value) {
    set_default(pc, "preemptionPolicy", json!("PreemptLowerPriority"));
}

/// PriorityClass validation: the value's range, the reserved `system-` prefix, and an
/// immutable value.
pub fn validate_priorityclass(pc: &Value, old: Option<&Value>, errs: &mut Errors) {
    let name = cell::s(pc, "/metadata/name");
    let system = SYSTEM_PRIORITY_CLASSES.iter().find(|(n, _, _)| *n == name);
    match pc.get("value").and_then(Value::as_i64) {
        None => errs.required("value"),
        Some(value) => match system {
            Some((_, want, _)) if value != *want => errs.forbidden("value", format!("value of {name} must be {want}")),
            None if value > HIGHEST_USER_PRIORITY => errs.forbidden(
                "value",
                format!("maximum allowed value of a user defined priority is {HIGHEST_USER_PRIORITY}"),
            ),
            _ => {}
        },
    }
    if system.is_none() && name.starts_with("system-") {
        errs.forbidden(
            "metadata.name",
            "priority class names with 'system-' prefix are reserved for system use only",
        );
    }
    if let Some(p) = pc.get("preemptionPolicy").and_then(Value::as_str) {
        if !["Never", "PreemptLowerPriority"].contains(&p) {
            errs.unsupported("preemptionPolicy", p, &["Never", "PreemptLowerPriority"]);
        }
    }
    if let Some(old) = old {
        errs.immutable("value", pc.get("value"), old.get("value"));
    }
}

/// `kubectl get priorityclasses` columns.
pub static PRIORITYCLASS_COLUMNS: &[Column] = &[
    Column::new("Name", "string", 0),
    Column::new("Value", "integer", 0),
    Column::new("Global-Default", "boolean", 0),
    Column::new("Age", "string", 0),
    Column::new("PreemptionPolicy", "string", 0),
];

/// One PriorityClass's row.
pub fn priorityclass_cells(pc: &Value) -> Vec<Value> {
    vec![
        cell::name(pc),
        json!(cell::n(pc, "/value")),
        json!(pc.get("globalDefault") == Some(&json!(true))),
        cell::age(pc),
        json!(cell::s(pc, "/preemptionPolicy")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_fold_string_data_and_check_their_type() {
        let mut s = json!({"metadata": {"name": "s"}, "stringData": {"user": "admin"}, "data": {"a": "Yg=="}});
        secret_defaults(&mut s);
        assert_eq!(s["data"]["user"], "YWRtaW4=");
        assert_eq!(s["type"], "Opaque");
        assert!(s.get("stringData").is_none());
        let tls = json!({"metadata": {"name": "t"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "eA=="}});
        let mut errs = Errors::default();
        validate_secret(&tls, None, &mut errs);
        assert_eq!(errs.0[0].field, "data[tls.key]");
    }

    #[test]
    fn immutable_configmaps_stay_as_they_are() {
        let old = json!({"metadata": {"name": "c"}, "immutable": true, "data": {"a": "1"}});
        let new = json!({"metadata": {"name": "c"}, "immutable": true, "data": {"a": "2"}});
        let mut errs = Errors::default();
        validate_configmap(&new, Some(&old), &mut errs);
        assert_eq!(errs.0[0].field, "data");
        let bad_key = json!({"metadata": {"name": "c"}, "data": {"a b": "1"}});
        let mut errs = Errors::default();
        validate_configmap(&bad_key, None, &mut errs);
        assert_eq!(errs.0[0].field, "data[a b]");
    }

    #[test]
    fn priority_classes_respect_the_reserved_range() {
        let mut errs = Errors::default();
        validate_priorityclass(
            &json!({"metadata": {"name": "high"}, "value": 2_000_000_000i64}),
            None,
            &mut errs,
        );
        validate_priorityclass(
            &json!({"metadata": {"name": "system-mine"}, "value": 5}),
            None,
            &mut errs,
        );
        let fields: Vec<&str> = errs.0.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["value", "metadata.name"]);
    }
}
