//! `kubectl get` tables (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`): the
//! columns kube-apiserver prints for each kind, computed server-side.

use serde_json::{json, Value};

use super::registry::ResourceInfo;

fn s<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn n(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// kubectl's short human duration ("45s", "3m12s", "5h", "2d").
pub fn human_age(created: &str) -> String {
    let Ok(then) = created.parse::<k8s_openapi::jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = (k8s_openapi::jiff::Timestamp::now().as_second() - then.as_second()).max(0);
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

fn pod_status(pod: &Value) -> String {
    let mut reason = s(pod, "/status/phase").to_string();
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        return "Terminating".into();
    }
    for cs in pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let waiting = s(cs, "/state/waiting/reason");
        let terminated = s(cs, "/state/terminated/reason");
        if !waiting.is_empty() {
            reason = waiting.to_string();
        } else if !terminated.is_empty() && reason == "Running" {
            reason = terminated.to_string();
        }
    }
    if reason.is_empty() {
        "Pending".into()
    } else {
        reason
    }
}

fn columns_and_cells(res: &ResourceInfo, obj: &Value) -> (Vec<(&'static str, &'static str, u8)>, Vec<Value>) {
    let name = json!(s(obj, "/metadata/name"));
    let age = json!(human_age(s(obj, "/metadata/creationTimestamp")));
    match res.kind {
        "Pod" => {
            let statuses = obj.pointer("/status/containerStatuses").and_then(Value::as_array);
            let total = obj
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, |c| c.len());
            let ready = statuses.map_or(0, |c| c.iter().filter(|c| c["ready"] == json!(true)).count());
            let restarts: i64 = statuses.map_or(0, |c| c.iter().map(|c| n(c, "/restartCount")).sum());
            let ip = s(obj, "/status/podIP");
            let node = s(obj, "/spec/nodeName");
            (
                vec![
                    ("Name", "string", 0),
                    ("Ready", "string", 0),
                    ("Status", "string", 0),
                    ("Restarts", "string", 0),
                    ("Age", "string", 0),
                    ("IP", "string", 1),
                    ("Node", "string", 1),
                ],
                vec![
                    name,
                    json!(format!("{ready}/{total}")),
                    json!(pod_status(obj)),
                    json!(restarts.to_string()),
                    age,
                    json!(if ip.is_empty() { "<none>" } else { ip }),
                    json!(if node.is_empty() { "<none>" } else { node }),
                ],
            )
        }
        "Deployment" => (
            vec![
                ("Name", "string", 0),
                ("Ready", "string", 0),
                ("Up-to-date", "integer", 0),
                ("Available", "integer", 0),
                ("Age", "string", 0),
                ("Containers", "string", 1),
                ("Selector", "string", 1),
            ],
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    n(obj, "/status/readyReplicas"),
                    n(obj, "/spec/replicas")
                )),
                json!(n(obj, "/status/updatedReplicas")),
                json!(n(obj, "/status/availableReplicas")),
                age,
                json!(container_names(obj, "/spec/template/spec/containers")),
                json!(selector(obj)),
            ],
        ),
        "ReplicaSet" => (
            vec![
                ("Name", "string", 0),
                ("Desired", "integer", 0),
                ("Current", "integer", 0),
                ("Ready", "integer", 0),
                ("Age", "string", 0),
                ("Containers", "string", 1),
                ("Selector", "string", 1),
            ],
            vec![
                name,
                json!(n(obj, "/spec/replicas")),
                json!(n(obj, "/status/replicas")),
                json!(n(obj, "/status/readyReplicas")),
                age,
                json!(container_names(obj, "/spec/template/spec/containers")),
                json!(selector(obj)),
            ],
        ),
        "Node" => {
            let ready = obj
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .map(|c| if c["status"] == "True" { "Ready" } else { "NotReady" })
                .unwrap_or("Unknown");
            let status = if obj.pointer("/spec/unschedulable") == Some(&json!(true)) {
                format!("{ready},SchedulingDisabled")
            } else {
                ready.to_string()
            };
            (
                vec![
                    ("Name", "string", 0),
                    ("Status", "string", 0),
                    ("Age", "string", 0),
                    ("Version", "string", 0),
                ],
                vec![
                    name,
                    json!(status),
                    age,
                    json!(s(obj, "/status/nodeInfo/kubeletVersion")),
                ],
            )
        }
        "Namespace" => (
            vec![("Name", "string", 0), ("Status", "string", 0), ("Age", "string", 0)],
            vec![name, json!(s(obj, "/status/phase")), age],
        ),
        "ConfigMap" => (
            vec![("Name", "string", 0), ("Data", "integer", 0), ("Age", "string", 0)],
            vec![
                name,
                json!(obj.get("data").and_then(Value::as_object).map_or(0, |d| d.len())),
                age,
            ],
        ),
        "Application" => (
            vec![
                ("Name", "string", 0),
                ("Sync Status", "string", 0),
                ("Revision", "string", 0),
                ("Age", "string", 0),
            ],
            vec![
                name,
                json!(s(obj, "/status/syncStatus")),
                json!(s(obj, "/status/syncedRevision").chars().take(12).collect::<String>()),
                age,
            ],
        ),
        _ => (vec![("Name", "string", 0), ("Age", "string", 0)], vec![name, age]),
    }
}

fn container_names(obj: &Value, pointer: &str) -> String {
    let names = obj.pointer(pointer).and_then(Value::as_array).into_iter().flatten();
    names.map(|c| s(c, "/name").to_string()).collect::<Vec<_>>().join(",")
}

fn selector(obj: &Value) -> String {
    let labels = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten();
    labels
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect::<Vec<_>>()
        .join(",")
}

/// A `meta.k8s.io/v1` Table for the items of a list.
pub fn table(res: &ResourceInfo, list: &Value) -> Value {
    let items = list.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
    let (columns, _) = columns_and_cells(res, &json!({}));
    let rows: Vec<Value> = items
        .iter()
        .map(|obj| {
            let (_, cells) = columns_and_cells(res, obj);
            json!({"cells": cells, "object": obj})
        })
        .collect();
    let column_definitions: Vec<Value> = columns
        .iter()
        .map(|(name, ty, priority)| json!({"name": name, "type": ty, "format": if *name == "Name" { "name" } else { "" }, "description": "", "priority": priority}))
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list.get("metadata").cloned().unwrap_or(json!({})),
        "columnDefinitions": column_definitions,
        "rows": rows,
    })
}
