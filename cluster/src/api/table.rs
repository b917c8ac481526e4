//! `kubectl get` tables (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`): the
//! columns kube-apiserver prints for each kind, computed server-side.

use serde_json::{json, Value};

use super::registry::ResourceInfo;

/// kubectl's short human duration ("45s", "3m12s", "5h", "2d") since `created`.
pub fn human_age(created: &str) -> String {
    human_duration_between(created, &crate::kinds::now())
}

/// The time from `start` to `end` (RFC 3339), as kubectl prints durations.
pub fn human_duration_between(start: &str, end: &str) -> String {
    let (Ok(start), Ok(end)) = (
        start.parse::<k8s_openapi::jiff::Timestamp>(),
        end.parse::<k8s_openapi::jiff::Timestamp>(),
    ) else {
        return "<unknown>".into();
    };
    human_duration((end.as_second() - start.as_second()).max(0))
}

/// kubectl's `HumanDuration` of a number of seconds.
pub fn human_duration(secs: i64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match secs {
        _ if secs < 120 => format!("{secs}s"),
        _ if m < 10 => format!("{m}m{}s", secs % 60),
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if d < 8 => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
    }
}

/// A `meta.k8s.io/v1` Table for the items of a list, with the kind's columns.
pub fn table(res: &ResourceInfo, list: &Value) -> Value {
    let items = list
        .get("items")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let rows: Vec<Value> = items
        .iter()
        .map(|obj| json!({"cells": (res.cells)(obj), "object": partial_metadata(obj)}))
        .collect();
    let column_definitions: Vec<Value> = res
        .columns
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": c.ty, "format": if c.name == "Name" { "name" } else { "" },
                "description": "", "priority": c.priority})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list.get("metadata").cloned().unwrap_or(json!({})),
        "columnDefinitions": column_definitions,
        "rows": rows,
    })
}

/// The `PartialObjectMetadata` of an object: what a Table row and a metadata-only list
/// carry (kubectl reads names, namespaces and labels from it).
pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
    })
}
