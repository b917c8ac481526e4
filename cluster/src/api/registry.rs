//! The kinds the API server serves: one entry per resource, with how to type-check it.
//!
//! Objects travel as JSON; each entry's `normalize` round-trips an object through its
//! typed k8s-openapi (or Kairn) struct, which is the validation of field types and
//! names, and drops unknown fields as kube-apiserver's pruning does.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use schemars::SchemaGenerator;

use super::error::Cause;
use super::schema::schema_name_of;
use crate::kinds::Application;
use k8s_openapi::api::{apps::v1 as apps, coordination::v1 as coordination, core::v1 as core};

/// A served resource.
#[derive(Debug)]
pub struct ResourceInfo {
    /// API group ("" for core).
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// Kind, e.g. `Pod`.
    pub kind: &'static str,
    /// URL segment, e.g. `pods`.
    pub plural: &'static str,
    /// Singular name, e.g. `pod`.
    pub singular: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: &'static [&'static str],
    /// Subresources served (`status`, `binding`).
    pub subresources: &'static [&'static str],
    /// Member of the `all` category (`kubectl get all`).
    pub in_all: bool,
    /// Type-checks and normalizes an object of this kind; also returns the paths of
    /// fields the type does not know (dropped from the normalized object).
    pub normalize: fn(Value) -> Result<(Value, Vec<String>), Cause>,
    /// Registers the kind's schema with a generator and returns its definition name.
    pub schema: fn(&mut SchemaGenerator) -> String,
}

impl ResourceInfo {
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The store key prefix of this resource, optionally within a namespace.
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        let group = if self.group.is_empty() { "core" } else { self.group };
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{group}/{}/{ns}/", self.plural),
            _ => format!("/registry/{group}/{}/", self.plural),
        }
    }

    /// The store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.prefix(namespace))
    }

    /// Whether the `status` subresource exists (then writes to the object keep status).
    pub fn has_status(&self) -> bool {
        self.subresources.contains(&"status")
    }
}

/// Round-trips `value` through the typed struct `K`, naming the failing field.
fn typed<K: DeserializeOwned + Serialize>(value: Value) -> Result<(Value, Vec<String>), Cause> {
    let typed: K = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        Cause {
            field: if path == "." { String::new() } else { path },
            message: e.into_inner().to_string(),
        }
    })?;
    let normalized = serde_json::to_value(typed).map_err(|e| Cause {
        field: String::new(),
        message: e.to_string(),
    })?;
    let mut unknown = Vec::new();
    unknown_fields(&value, &normalized, "", &mut unknown);
    Ok((normalized, unknown))
}

/// Paths of keys set in `input` that the typed round trip dropped: fields the type does
/// not have (a typo such as `protectionDoamin`, or a field of another version).
fn unknown_fields(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                let here = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match o.get(k) {
                    Some(ov) => unknown_fields(v, ov, &here, out),
                    None if !v.is_null() => out.push(here),
                    None => {}
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (iv, ov)) in i.iter().zip(o).enumerate() {
                unknown_fields(iv, ov, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Every resource the server serves, in discovery order.
pub static RESOURCES: &[ResourceInfo] = &[
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        namespaced: false,
        short_names: &["ns"],
        subresources: &["status"],
        in_all: false,
        normalize: typed::<core::Namespace>,
        schema: schema_name_of::<core::Namespace>,
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Node",
        plural: "nodes",
        singular: "node",
        namespaced: false,
        short_names: &["no"],
        subresources: &["status"],
        in_all: false,
        normalize: typed::<core::Node>,
        schema: schema_name_of::<core::Node>,
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Pod",
        plural: "pods",
        singular: "pod",
        namespaced: true,
        short_names: &["po"],
        subresources: &["status", "binding", "log"],
        in_all: true,
        normalize: typed::<core::Pod>,
        schema: schema_name_of::<core::Pod>,
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        singular: "configmap",
        namespaced: true,
        short_names: &["cm"],
        subresources: &[],
        in_all: false,
        normalize: typed::<core::ConfigMap>,
        schema: schema_name_of::<core::ConfigMap>,
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
        singular: "secret",
        namespaced: true,
        short_names: &[],
        subresources: &[],
        in_all: false,
        normalize: typed::<core::Secret>,
        schema: schema_name_of::<core::Secret>,
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Event",
        plural: "events",
        singular: "event",
        namespaced: true,
        short_names: &["ev"],
        subresources: &[],
        in_all: false,
        normalize: typed::<core::Event>,
        schema: schema_name_of::<core::Event>,
    },
    ResourceInfo {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        singular: "deployment",
        namespaced: true,
        short_names: &["deploy"],
        subresources: &["status", "scale"],
        in_all: true,
        normalize: typed::<apps::Deployment>,
        schema: schema_name_of::<apps::Deployment>,
    },
    ResourceInfo {
        group: "apps",
        version: "v1",
        kind: "ReplicaSet",
        plural: "replicasets",
        singular: "replicaset",
        namespaced: true,
        short_names: &["rs"],
        subresources: &["status", "scale"],
        in_all: true,
        normalize: typed::<apps::ReplicaSet>,
        schema: schema_name_of::<apps::ReplicaSet>,
    },
    ResourceInfo {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
        singular: "lease",
        namespaced: true,
        short_names: &[],
        subresources: &[],
        in_all: false,
        normalize: typed::<coordination::Lease>,
        schema: schema_name_of::<coordination::Lease>,
    },
    ResourceInfo {
        group: crate::kinds::GROUP,
        version: crate::kinds::VERSION,
        kind: "Application",
        plural: "applications",
        singular: "application",
        namespaced: false,
        short_names: &["app"],
        subresources: &["status"],
        in_all: false,
        normalize: typed::<Application>,
        schema: schema_name_of::<Application>,
    },
];

/// The resource at `group/version/plural`.
pub fn by_plural(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource of an object's `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.api_version() == api_version && r.kind == kind)
}

/// The API groups served besides core, each with its one version.
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}
