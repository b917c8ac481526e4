//! ResourceQuota and LimitRange: their defaults (a LimitRange's `Container` items default
//! their limits from `max` and their requests from `default` or `min`), Kubernetes'
//! validation of both (resource names, quantities, scopes; `min <= defaultRequest <=
//! default <= max`, ratios), what the server owns on a new quota (its status, which the
//! quota controller fills in) and their `kubectl get` columns.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::{cell, Column};
use crate::api::amount::{self, Amount};
use crate::api::quota::SCOPES;
use crate::api::validation::{qualified_name, Errors};

/// Quota resource names without a domain that Kubernetes knows (`IsStandardQuotaResourceName`).
const STANDARD_QUOTA_RESOURCES: [&str; 19] = [
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.storage",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "pods",
    "resourcequotas",
    "services",
    "replicationcontrollers",
    "secrets",
    "persistentvolumeclaims",
    "configmaps",
    "services.nodeports",
    "services.loadbalancers",
];

/// Quota resources counted in whole objects (`IsIntegerResourceName`, and object counts).
const INTEGER_QUOTA_RESOURCES: [&str; 9] = [
    "pods",
    "services",
    "replicationcontrollers",
    "resourcequotas",
    "secrets",
    "configmaps",
    "persistentvolumeclaims",
    "services.nodeports",
    "services.loadbalancers",
];

/// The resources each scope may limit (`IsResourceQuotaScopeValidForResource`).
fn scope_allows(scope: &str, resource: &str) -> bool {
    const POD_COMPUTE: [&str; 8] = [
        "pods",
        "count/pods",
        "cpu",
        "memory",
        "limits.cpu",
        "limits.memory",
        "requests.cpu",
        "requests.memory",
    ];
    match scope {
        "BestEffort" => matches!(resource, "pods" | "count/pods"),
        _ => POD_COMPUTE.contains(&resource),
    }
}

/// The map at `obj[key]` as (name, value) pairs, in name order.
fn entries<'a>(obj: &'a Value, key: &str) -> Vec<(&'a String, &'a Value)> {
    let mut out: Vec<_> = obj.get(key).and_then(Value::as_object).into_iter().flatten().collect();
    out.sort_by(|a, b| a.0.cmp(b.0));
    out
}

/// Checks a quantity at `field`: a valid quantity, not negative, and whole where
/// `integer`; the parsed amount if valid.
fn quantity(errs: &mut Errors, field: &str, q: &Value, integer: bool) -> Option<Amount> {
    let Some(a) = q.as_str().and_then(Amount::parse) else {
        errs.invalid(
            field,
            q,
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
        );
        return None;
    };
    if a.millis < 0 {
        errs.invalid(field, q, "must be greater than or equal to 0");
    } else if integer && a.millis % 1000 != 0 {
        errs.invalid(field, q, "must be an integer");
    }
    Some(a)
}

/// Checks a resource name is a qualified name (`validateResourceName`).
fn resource_name(errs: &mut Errors, field: &str, name: &str) -> bool {
    let problems = qualified_name(name);
    for m in &problems {
        errs.invalid(field, &json!(name), m);
    }
    problems.is_empty()
}

/// Checks one quota `ResourceList` (`spec.hard`, `status.hard`, `status.used`).
fn quota_list(errs: &mut Errors, base: &str, list: &Value) {
    let mut sorted: Vec<_> = list.as_object().into_iter().flatten().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (name, q) in sorted {
        let field = format!("{base}[{name}]");
        if resource_name(errs, &field, name)
            && !name.contains('/')
            && !STANDARD_QUOTA_RESOURCES.contains(&name.as_str())
            && !name.starts_with("hugepages-")
            && !name.starts_with("requests.hugepages-")
        {
            errs.invalid(&field, &json!(name), "must be a standard resource for quota");
        }
        let integer = INTEGER_QUOTA_RESOURCES.contains(&name.as_str()) || name.starts_with("count/");
        quantity(errs, &field, q, integer);
    }
}

/// ResourceQuota validation (`ValidateResourceQuota`): resource names and quantities of
/// the spec and status, and the scopes.
pub fn validate_quota(quota: &Value, _old: Option<&Value>, errs: &mut Errors) {
    let spec = quota.get("spec").cloned().unwrap_or_default();
    if let Some(hard) = spec.get("hard") {
        quota_list(errs, "spec.hard", hard);
    }
    for field in ["hard", "used"] {
        if let Some(list) = quota.pointer(&format!("/status/{field}")) {
            quota_list(errs, &format!("status.{field}"), list);
        }
    }
    let hard: Vec<&String> = spec
        .get("hard")
        .and_then(Value::as_object)
        .map(|h| h.keys().collect())
        .unwrap_or_default();
    let scopes_value = spec.get("scopes").cloned().unwrap_or(Value::Null);
    let scopes: Vec<&str> = scopes_value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut seen = BTreeSet::new();
    for scope in &scopes {
        if !SCOPES.contains(scope) {
            errs.invalid("spec.scopes", &scopes_value, "unsupported scope");
        }
        let standard = |n: &str| STANDARD_QUOTA_RESOURCES.contains(&n) || n == "count/pods";
        if hard.iter().any(|n| standard(n) && !scope_allows(scope, n)) {
            errs.invalid("spec.scopes", &scopes_value, "unsupported scope applied to resource");
        }
        seen.insert(*scope);
    }
    for (a, b) in [("BestEffort", "NotBestEffort"), ("Terminating", "NotTerminating")] {
        if seen.contains(a) && seen.contains(b) {
            errs.invalid("spec.scopes", &scopes_value, "conflicting scopes");
        }
    }
    let expressions = spec
        .pointer("/scopeSelector/matchExpressions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, e) in expressions.iter().enumerate() {
        let base = format!("spec.scopeSelector.matchExpressions[{i}]");
        let scope = e.get("scopeName").and_then(Value::as_str).unwrap_or_default();
        if !SCOPES.contains(&scope) {
            errs.invalid(&format!("{base}.scopeName"), &json!(scope), "unsupported scope");
        }
        let op = e.get("operator").and_then(Value::as_str).unwrap_or_default();
        let values = e.get("values").and_then(Value::as_array).map_or(0, Vec::len);
        match op {
            "In" | "NotIn" if values == 0 => errs.required(&format!("{base}.values")),
            "Exists" | "DoesNotExist" if values > 0 => errs.invalid(
                &format!("{base}.values"),
                e.get("values").unwrap_or(&Value::Null),
                "must be no more than 0",
            ),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errs.unsupported(
                &format!("{base}.operator"),
                other,
                &["DoesNotExist", "Exists", "In", "NotIn"],
            ),
        }
        if matches!(scope, "Terminating" | "NotTerminating" | "BestEffort" | "NotBestEffort") && op != "Exists" {
            errs.invalid(
                &format!("{base}.operator"),
                &json!(op),
                "must be 'Exists' when scope is any of ResourceQuotaScopeTerminating, ResourceQuotaScopeNotTerminating, ResourceQuotaScopeBestEffort or ResourceQuotaScopeNotBestEffort",
            );
        }
    }
}

/// A new quota starts without status: the quota controller computes it.
pub fn quota_prepare_create(quota: &mut Value) {
    if let Some(o) = quota.as_object_mut() {
        o.remove("status");
    }
}

/// `kubectl get resourcequotas` columns.
pub static QUOTA_COLUMNS: &[Column] = &[
    Column::new("Name", "string", 0),
    Column::new("Age", "string", 0),
    Column::new("Request", "string", 0),
    Column::new("Limit", "string", 0),
];

/// One quota's row: `used/hard` of each resource, the `limits.*` ones under Limit.
pub fn quota_cells(quota: &Value) -> Vec<Value> {
    let hard = amount::from_json(quota.pointer("/status/hard"));
    let used = amount::from_json(quota.pointer("/status/used"));
    let names: BTreeSet<&String> = quota
        .pointer("/spec/hard")
        .and_then(Value::as_object)
        .map(|h| h.keys().collect())
        .unwrap_or_default();
    let (mut request, mut limit) = (Vec::new(), Vec::new());
    for name in names {
        let show = |l: &amount::ResourceList| l.get(name).copied().unwrap_or(Amount::ZERO).to_string();
        let text = format!("{name}: {}/{}", show(&used), show(&hard));
        if name.split('.').next() == Some("limits") && name.contains('.') {
            limit.push(text);
        } else {
            request.push(text);
        }
    }
    vec![
        cell::name(quota),
        cell::age(quota),
        json!(request.join(", ")),
        json!(limit.join(", ")),
    ]
}

/// Limit types Kubernetes knows (`IsStandardLimitRangeType`).
const LIMIT_TYPES: [&str; 3] = ["Pod", "Container", "PersistentVolumeClaim"];

/// Kubernetes' `SetDefaults_LimitRangeItem`: a `Container` item's default limit is its
/// max, its default request its default limit, else its min.
pub fn limitrange_defaults(range: &mut Value) {
    let items = range
        .get_mut("spec")
        .and_then(|s| s.get_mut("limits"))
        .and_then(Value::as_array_mut);
    for item in items.into_iter().flatten() {
        if item.get("type").and_then(Value::as_str) != Some("Container") {
            continue;
        }
        let map = |item: &Value, k: &str| item.get(k).and_then(Value::as_object).cloned().unwrap_or_default();
        let (max, min) = (map(item, "max"), map(item, "min"));
        let mut default = map(item, "default");
        let mut default_request = map(item, "defaultRequest");
        for (k, v) in max {
            default.entry(k).or_insert(v);
        }
        for (k, v) in &default {
            default_request.entry(k.clone()).or_insert(v.clone());
        }
        for (k, v) in min {
            default_request.entry(k).or_insert(v);
        }
        if let Some(o) = item.as_object_mut() {
            if !default.is_empty() {
                o.insert("default".into(), Value::Object(default));
            }
            if !default_request.is_empty() {
                o.insert("defaultRequest".into(), Value::Object(default_request));
            }
        }
    }
}

/// Checks a resource name a limit of type `ty` may name (`validateLimitRangeResourceName`).
fn limit_resource_name(errs: &mut Errors, ty: &str, field: &str, name: &str) {
    if !resource_name(errs, field, name) || !matches!(ty, "Pod" | "Container") {
        return;
    }
    match name.split_once('/') {
        None => {
            if !matches!(name, "cpu" | "memory" | "ephemeral-storage") && !name.starts_with("hugepages-") {
                errs.invalid(field, &json!(name), "must be a standard resource for containers");
            }
        }
        Some((domain, _)) => {
            let native = domain == "kubernetes.io" || domain.ends_with(".kubernetes.io");
            if !native && name.starts_with("requests.") {
                errs.invalid(field, &json!(name), "doesn't follow extended resource name standard");
            }
        }
    }
}

/// LimitRange validation (`ValidateLimitRange`): types, resource names and quantities,
/// and that `min <= defaultRequest <= default <= max` with a ratio the bounds allow.
pub fn validate_limitrange(range: &Value, _old: Option<&Value>, errs: &mut Errors) {
    let items = range
        .pointer("/spec/limits")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut types = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        let base = format!("spec.limits[{i}]");
        let ty = item.get("type").and_then(Value::as_str).unwrap_or_default();
        let type_field = format!("{base}.type");
        if resource_name(errs, &type_field, ty) && !ty.contains('/') && !LIMIT_TYPES.contains(&ty) {
            errs.invalid(
                &type_field,
                &json!(ty),
                "must be a standard limit type or fully qualified",
            );
        }
        if !types.insert(ty.to_string()) {
            errs.duplicate(&type_field, &json!(ty));
        }
        let read = |errs: &mut Errors, key: &str| -> amount::ResourceList {
            let mut out = amount::ResourceList::new();
            for (name, q) in entries(item, key) {
                let field = format!("{base}.{key}[{name}]");
                limit_resource_name(errs, ty, &field, name);
                if let Some(a) = quantity(errs, &field, q, false) {
                    out.insert(name.clone(), a);
                }
            }
            out
        };
        let max = read(errs, "max");
        let min = read(errs, "min");
        let (default, default_request) = if ty == "Pod" {
            for key in ["default", "defaultRequest"] {
                if !entries(item, key).is_empty() {
                    errs.forbidden(&format!("{base}.{key}"), "may not be specified when `type` is 'Pod'");
                }
            }
            Default::default()
        } else {
            (read(errs, "default"), read(errs, "defaultRequest"))
        };
        let ratios = read(errs, "maxLimitRequestRatio");
        if ty == "PersistentVolumeClaim" && !min.contains_key("storage") && !max.contains_key("storage") {
            errs.0.push(crate::api::error::Cause::new(
                "FieldValueRequired",
                format!("{base}.limits"),
                "Required value: either minimum or maximum storage value is required, but neither was provided",
            ));
        }
        let keys: BTreeSet<&String> = max
            .keys()
            .chain(min.keys())
            .chain(default.keys())
            .chain(default_request.keys())
            .chain(ratios.keys())
            .collect();
        for k in keys {
            let at = |key: &str| format!("{base}.{key}[{k}]");
            let (mn, mx, d, dr, ratio) = (
                min.get(k),
                max.get(k),
                default.get(k),
                default_request.get(k),
                ratios.get(k),
            );
            let text = |a: &Amount| json!(a.to_string());
            if let (Some(mn), Some(mx)) = (mn, mx) {
                if mn > mx {
                    errs.invalid(
                        &at("min"),
                        &text(mn),
                        format!("min value {mn} is greater than max value {mx}"),
                    );
                }
            }
            if let (Some(dr), Some(mn)) = (dr, mn) {
                if mn > dr {
                    errs.invalid(
                        &at("defaultRequest"),
                        &text(dr),
                        format!("min value {mn} is greater than default request value {dr}"),
                    );
                }
            }
            if let (Some(dr), Some(mx)) = (dr, mx) {
                if dr > mx {
                    errs.invalid(
                        &at("defaultRequest"),
                        &text(dr),
                        format!("default request value {dr} is greater than max value {mx}"),
                    );
                }
            }
            if let (Some(dr), Some(d)) = (dr, d) {
                if dr > d {
                    errs.invalid(
                        &at("defaultRequest"),
                        &text(dr),
                        format!("default request value {dr} is greater than default limit value {d}"),
                    );
                }
            }
            if let (Some(d), Some(mn)) = (d, mn) {
                if mn > d {
                    errs.invalid(
                        &at("default"),
                        &text(mn),
                        format!("min value {mn} is greater than default value {d}"),
                    );
                }
            }
            if let (Some(d), Some(mx)) = (d, mx) {
                if d > mx {
                    errs.invalid(
                        &at("default"),
                        &text(mx),
                        format!("default value {d} is greater than max value {mx}"),
                    );
                }
            }
            if let Some(ratio) = ratio {
                if *ratio < Amount::count(1) {
                    errs.invalid(
                        &at("maxLimitRequestRatio"),
                        &text(ratio),
                        format!("ratio {ratio} is less than 1"),
                    );
                }
                // ratio > max / min, exactly: ratio * min > max (in thousandths).
                if let (Some(mn), Some(mx)) = (mn, mx) {
                    if mn.millis > 0 && ratio.millis.saturating_mul(mn.millis) > mx.millis.saturating_mul(1000) {
                        let bound = mx.millis * 1_000_000 / mn.millis;
                        errs.invalid(
                            &at("maxLimitRequestRatio"),
                            &text(ratio),
                            format!(
                                "ratio {ratio} is greater than max/min = {}.{:06}",
                                bound / 1_000_000,
                                bound % 1_000_000
                            ),
                        );
                    }
                }
            }
            // Resources that cannot be overcommitted (hugepages, extended resources) must
            // default their request to their limit.
            let overcommit = matches!(k.as_str(), "cpu" | "memory" | "ephemeral-storage");
            if let (false, Some(d), Some(dr)) = (overcommit, d, dr) {
                if d != dr {
                    errs.invalid(
                        &at("defaultRequest"),
                        &text(dr),
                        format!("default value {d} must equal to defaultRequest value {dr} in {k}"),
                    );
                }
            }
        }
    }
}

/// `kubectl get limitranges` columns.
pub static LIMITRANGE_COLUMNS: &[Column] = &[Column::new("Name", "string", 0), Column::new("Created At", "date", 0)];

/// One LimitRange's row.
pub fn limitrange_cells(range: &Value) -> Vec<Value> {
    vec![cell::name(range), json!(cell::s(range, "/metadata/creationTimestamp"))]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(errs: &Errors) -> Vec<(String, String)> {
        errs.0.iter().map(|c| (c.field.clone(), c.message.clone())).collect()
    }

    #[test]
    fn quotas_name_standard_resources_with_valid_amounts() {
        let mut errs = Errors::default();
        let q = json!({"spec": {"hard": {"pods": "10", "requests.cpu": "2", "count/deployments.apps": "3",
            "requests.example.com/gpu": "1", "hugepages-2Mi": "1Gi"}}});
        validate_quota(&q, None, &mut errs);
        assert!(errs.is_empty(), "{:?}", fields(&errs));

        let mut errs = Errors::default();
        let q = json!({"spec": {"hard": {"pods": "1.5", "widgets": "1", "cpu": "-1", "memory": "lots"},
            "scopes": ["BestEffort", "NotBestEffort"]}});
        validate_quota(&q, None, &mut errs);
        let got = fields(&errs);
        let has = |f: &str, m: &str| got.iter().any(|(gf, gm)| gf == f && gm.contains(m));
        assert!(has("spec.hard[pods]", "must be an integer"), "{got:?}");
        assert!(
            has("spec.hard[widgets]", "must be a standard resource for quota"),
            "{got:?}"
        );
        assert!(has("spec.hard[cpu]", "must be greater than or equal to 0"), "{got:?}");
        assert!(has("spec.hard[memory]", "quantities must match"), "{got:?}");
        assert!(has("spec.scopes", "conflicting scopes"), "{got:?}");
        assert!(has("spec.scopes", "unsupported scope applied to resource"), "{got:?}");
    }

    #[test]
    fn quota_rows_show_used_over_hard() {
        let q = json!({"metadata": {"name": "q"}, "spec": {"hard": {"pods": "2", "limits.cpu": "2", "requests.cpu": "1"}},
            "status": {"hard": {"pods": "2", "limits.cpu": "2", "requests.cpu": "1"}, "used": {"pods": "1", "requests.cpu": "500m"}}});
        let cells = quota_cells(&q);
        assert_eq!(cells[2], "pods: 1/2, requests.cpu: 500m/1");
        assert_eq!(cells[3], "limits.cpu: 0/2");
    }

    #[test]
    fn container_items_default_from_max_and_min() {
        let mut lr = json!({"spec": {"limits": [
            {"type": "Container", "max": {"cpu": "1", "memory": "1Gi"}, "min": {"cpu": "100m", "memory": "64Mi"},
             "default": {"memory": "512Mi"}},
            {"type": "Pod", "max": {"cpu": "4"}},
        ]}});
        limitrange_defaults(&mut lr);
        let c = &lr["spec"]["limits"][0];
        assert_eq!(c["default"], json!({"cpu": "1", "memory": "512Mi"}));
        assert_eq!(c["defaultRequest"], json!({"cpu": "1", "memory": "512Mi"}));
        assert!(lr["spec"]["limits"][1].get("default").is_none());
        let mut errs = Errors::default();
        validate_limitrange(&lr, None, &mut errs);
        assert!(errs.is_empty(), "{:?}", fields(&errs));
    }

    #[test]
    fn limit_ranges_keep_their_bounds_in_order() {
        let lr = json!({"spec": {"limits": [
            {"type": "Container", "max": {"cpu": "500m"}, "min": {"cpu": "1"}, "default": {"cpu": "2"},
             "defaultRequest": {"cpu": "3"}, "maxLimitRequestRatio": {"cpu": "500m"}},
            {"type": "Pod", "default": {"cpu": "1"}},
            {"type": "Pod"},
            {"type": "Widget", "max": {"gpus": "1"}},
        ]}});
        let mut errs = Errors::default();
        validate_limitrange(&lr, None, &mut errs);
        let got = fields(&errs);
        let has = |f: &str, m: &str| got.iter().any(|(gf, gm)| gf == f && gm.contains(m));
        assert!(
            has("spec.limits[0].min[cpu]", "min value 1 is greater than max value 500m"),
            "{got:?}"
        );
        assert!(
            has(
                "spec.limits[0].default[cpu]",
                "default value 2 is greater than max value 500m"
            ),
            "{got:?}"
        );
        assert!(
            has(
                "spec.limits[0].defaultRequest[cpu]",
                "default request value 3 is greater than default limit value 2"
            ),
            "{got:?}"
        );
        assert!(
            has("spec.limits[0].maxLimitRequestRatio[cpu]", "ratio 500m is less than 1"),
            "{got:?}"
        );
        assert!(
            has("spec.limits[1].default", "may not be specified when `type` is 'Pod'"),
            "{got:?}"
        );
        assert!(has("spec.limits[2].type", "Duplicate value"), "{got:?}");
        assert!(
            has(
                "spec.limits[3].type",
                "must be a standard limit type or fully qualified"
            ),
            "{got:?}"
        );

        let mut errs = Errors::default();
        let ratio = json!({"spec": {"limits": [{"type": "Container", "min": {"cpu": "100m"}, "max": {"cpu": "200m"},
            "maxLimitRequestRatio": {"cpu": "3"}}]}});
        validate_limitrange(&ratio, None, &mut errs);
        assert_eq!(
            fields(&errs),
            [(
                "spec.limits[0].maxLimitRequestRatio[cpu]".to_string(),
                "Invalid value: \"3\": ratio 3 is greater than max/min = 2.000000".to_string()
            )]
        );
    }
}
