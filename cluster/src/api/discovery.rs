//! Discovery: `/version`, `/api`, `/apis` and the per-group resource lists kubectl and
//! client-go read before anything else. Answered as plain JSON, so client-go falls back
//! from aggregated discovery to these lists.

use serde_json::{json, Value};

use super::registry::{self, RESOURCES};

/// The Kubernetes version the API reports (the k8s-openapi version feature in use).
pub const KUBE_MINOR: &str = "33";

/// `GET /version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": KUBE_MINOR,
        "gitVersion": format!("v1.{KUBE_MINOR}.0-kairn.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}

/// `GET /api`.
pub fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

/// `GET /apis`.
pub fn groups() -> Value {
    let groups: Vec<Value> = registry::groups()
        .into_iter()
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /api/v1` or `/apis/<group>/<version>`; `None` if the group/version is not served.
pub fn resources(group: &str, version: &str) -> Option<Value> {
    let mut list = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == group && r.version == version) {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        list.push(entry);
        for sub in r.subresources {
            let (kind, verbs) = match *sub {
                "binding" => ("Binding", json!(["create"])),
                "eviction" => ("Eviction", json!(["create"])),
                "finalize" => (r.kind, json!(["update"])),
                "log" => ("Pod", json!(["get"])),
                "scale" => ("Scale", json!(["get", "patch", "update"])),
                _ => (r.kind, json!(["get", "patch", "update"])),
            };
            let mut entry = json!({"name": format!("{}/{sub}", r.plural), "singularName": "",
                "namespaced": r.namespaced, "kind": kind, "verbs": verbs});
            // kubectl finds the group and version of Scale and Eviction here.
            match *sub {
                "scale" => {
                    entry["group"] = json!("autoscaling");
                    entry["version"] = json!("v1");
                }
                "eviction" => {
                    entry["group"] = json!("policy");
                    entry["version"] = json!("v1");
                }
                _ => {}
            }
            list.push(entry);
        }
    }
    if group == crate::kinds::GROUP && version == crate::kinds::VERSION {
        list.push(json!({"name": "batches", "singularName": "batch", "namespaced": false, "kind": "Batch", "verbs": ["create"]}));
    }
    if list.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": list}))
}
