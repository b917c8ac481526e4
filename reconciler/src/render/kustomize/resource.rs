//! A resource being kustomized: the object, where it came from, and the identities it has
//! had (kustomize's "previous ids"), which patches and name references match against.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use super::Context;
use crate::manifest::{Manifest, ManifestError};

/// kustomize's placeholder namespace of cluster-scoped objects.
const CLUSTER: &str = "_non_namespaceable_";

/// Kinds kustomize knows to be cluster-scoped (from the Kubernetes OpenAPI it embeds),
/// by group and kind.
const CLUSTER_SCOPED: &[(&str, &str)] = &[
    ("", "Namespace"),
    ("", "Node"),
    ("", "PersistentVolume"),
    ("", "ComponentStatus"),
    ("rbac.authorization.k8s.io", "ClusterRole"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
    ("apiregistration.k8s.io", "APIService"),
    ("storage.k8s.io", "StorageClass"),
    ("storage.k8s.io", "CSIDriver"),
    ("storage.k8s.io", "CSINode"),
    ("storage.k8s.io", "VolumeAttachment"),
    ("scheduling.k8s.io", "PriorityClass"),
    ("node.k8s.io", "RuntimeClass"),
    ("networking.k8s.io", "IngressClass"),
    ("policy", "PodSecurityPolicy"),
    ("certificates.k8s.io", "CertificateSigningRequest"),
    ("admissionregistration.k8s.io", "MutatingWebhookConfiguration"),
    ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding"),
    ("flowcontrol.apiserver.k8s.io", "FlowSchema"),
    ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration"),
];

/// Whether objects of `group`/`kind` live outside namespaces.
pub fn cluster_scoped(group: &str, kind: &str) -> bool {
    CLUSTER_SCOPED.contains(&(group, kind))
}

/// `(group, version)` of an apiVersion.
pub fn group_version(api_version: &str) -> (&str, &str) {
    api_version.split_once('/').unwrap_or(("", api_version))
}

/// An identity: group, version, kind, name and effective namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResId {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub name: String,
    /// `default` for an unset namespace, [`CLUSTER`] for cluster-scoped kinds, as kustomize.
    pub namespace: String,
}

impl ResId {
    /// The identity of an object's apiVersion, kind, name and namespace.
    pub fn of(object: &Value) -> ResId {
        let s = |p: &str| object.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
        let api_version = s("/apiVersion");
        let (group, version) = group_version(&api_version);
        let kind = s("/kind");
        let namespace = effective_namespace(group, &kind, &s("/metadata/namespace"));
        ResId {
            group: group.to_string(),
            version: version.to_string(),
            kind,
            name: s("/metadata/name"),
            namespace,
        }
    }

    /// kustomize's `Gvk.IsSelected`: empty selector parts match anything.
    pub fn gvk_selected(&self, group: &str, version: &str, kind: &str) -> bool {
        (group.is_empty() || self.group == group)
            && (version.is_empty() || self.version == version)
            && (kind.is_empty() || self.kind == kind)
    }

    /// `kind.version.group`, kustomize's `Gvk.String`.
    fn gvk_string(&self) -> String {
        let or = |s: &str, d: &str| if s.is_empty() { d.to_string() } else { s.to_string() };
        format!(
            "{}.{}.{}",
            or(&self.kind, "[noKind]"),
            or(&self.version, "[noVer]"),
            or(&self.group, "[noGrp]")
        )
    }

    /// For messages: `kind group/version namespace/name`.
    pub fn describe(&self) -> String {
        format!("{} {}/{}", self.gvk_string(), self.namespace, self.name)
    }
}

/// kustomize's `EffectiveNamespace`.
pub fn effective_namespace(group: &str, kind: &str, namespace: &str) -> String {
    if cluster_scoped(group, kind) {
        CLUSTER.into()
    } else if namespace.is_empty() {
        "default".into()
    } else {
        namespace.into()
    }
}

/// One object in a kustomization's result.
#[derive(Debug, Clone)]
pub struct Resource {
    /// The object as it is now.
    pub object: Value,
    /// The file it came from (for generated objects, the kustomization).
    pub file: String,
    /// Its document in that file (for generated objects, the generator's index).
    pub doc: usize,
    /// Identities before renames, namespace changes and kind changes, oldest first.
    pub prev_ids: Vec<ResId>,
    /// A generated object whose name gets the content-hash suffix at the end.
    pub needs_hash: bool,
}

impl Resource {
    /// A resource read from a file.
    pub fn from_manifest(m: Manifest) -> Resource {
        Resource {
            object: m.object,
            file: m.file,
            doc: m.doc,
            prev_ids: Vec::new(),
            needs_hash: false,
        }
    }

    /// Its identity now.
    pub fn cur_id(&self) -> ResId {
        ResId::of(&self.object)
    }

    /// Its original identity.
    pub fn org_id(&self) -> ResId {
        self.prev_ids.first().cloned().unwrap_or_else(|| self.cur_id())
    }

    /// Every identity it has had, the current last.
    pub fn all_ids(&self) -> Vec<ResId> {
        let mut ids = self.prev_ids.clone();
        ids.push(self.cur_id());
        ids
    }

    /// Remembers the current identity before a change (kustomize's `StorePreviousId`).
    pub fn store_previous_id(&mut self) {
        let id = self.cur_id();
        self.prev_ids.push(id);
    }

    /// A string field of the object.
    pub fn str_at(&self, pointer: &str) -> &str {
        self.object.pointer(pointer).and_then(Value::as_str).unwrap_or("")
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        self.str_at("/metadata/name")
    }

    /// `metadata.namespace` ("" when unset).
    pub fn namespace(&self) -> &str {
        self.str_at("/metadata/namespace")
    }

    /// `kind`.
    pub fn kind(&self) -> &str {
        self.str_at("/kind")
    }

    /// The object's `metadata`, created when missing.
    pub fn metadata_mut(&mut self) -> &mut Map<String, Value> {
        metadata_mut(&mut self.object)
    }

    /// Sets `metadata.name`.
    pub fn set_name(&mut self, name: &str) {
        self.metadata_mut().insert("name".into(), Value::String(name.into()));
    }

    /// Sets `metadata.namespace` (removes it for "").
    pub fn set_namespace(&mut self, namespace: &str) {
        let meta = self.metadata_mut();
        if namespace.is_empty() {
            meta.remove("namespace");
        } else {
            meta.insert("namespace".into(), Value::String(namespace.into()));
        }
    }

    /// A string map under `metadata` (labels, annotations); empty when absent.
    pub fn string_map(&self, field: &str) -> Map<String, Value> {
        self.object
            .pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    }

    /// Sets a string map under `metadata`, removing it when empty.
    pub fn set_string_map(&mut self, field: &str, map: Map<String, Value>) {
        let meta = self.metadata_mut();
        if map.is_empty() {
            meta.remove(field);
        } else {
            meta.insert(field.into(), Value::Object(map));
        }
    }
}

/// The `metadata` map of an object, created (or made a map) when it is not one.
pub fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.is_object() {
        *object = Value::Object(Map::new());
    }
    let Value::Object(obj) = object else {
        unreachable!("made an object above")
    };
    let meta = obj.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    match meta {
        Value::Object(m) => m,
        _ => unreachable!("made an object above"),
    }
}

/// Adds a resource, refusing a second object with the same identity (kustomize's `Append`).
pub fn append(list: &mut Vec<Resource>, r: Resource, ctx: &Context, field: &str) -> Result<(), ManifestError> {
    let id = r.cur_id();
    if let Some(other) = list.iter().find(|o| o.cur_id() == id) {
        return Err(ctx.error(
            field,
            format!(
                "may not add resource with an already registered id: {} (from {}#{} and {}#{})",
                id.describe(),
                other.file,
                other.doc,
                r.file,
                r.doc
            ),
        ));
    }
    list.push(r);
    Ok(())
}

/// kustomize's default order of kinds (`legacy` sort order): these first, in this order…
const ORDER_FIRST: &[&str] = &[
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
];
/// …and these last.
const ORDER_LAST: &[&str] = &["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"];

/// Sorts as kustomize's legacy `SortOrderTransformer` (the default of `kubectl kustomize`).
pub fn legacy_sort(resources: &mut [Resource]) {
    let rank = |kind: &str| -> i64 {
        if let Some(i) = ORDER_FIRST.iter().position(|k| *k == kind) {
            i as i64 - ORDER_FIRST.len() as i64
        } else if let Some(i) = ORDER_LAST.iter().position(|k| *k == kind) {
            1 + i as i64
        } else {
            0
        }
    };
    let gvk_key = |id: &ResId| {
        let or = |s: &str, d: &str| if s.is_empty() { d.to_string() } else { s.to_string() };
        format!(
            "{}_{}_{}",
            or(&id.group, "~G"),
            or(&id.version, "~V"),
            or(&id.kind, "~K")
        )
    };
    // The raw namespace, not the effective one: kustomize sorts on `ResId.Namespace`.
    let id_key = |r: &Resource, id: &ResId| {
        let ns = if r.namespace().is_empty() { "~X" } else { r.namespace() };
        let name = if id.name.is_empty() { "~N" } else { &id.name };
        format!("{}|{ns}|{name}", id.gvk_string())
    };
    resources.sort_by(|a, b| {
        let (ia, ib) = (a.cur_id(), b.cur_id());
        if (&ia.group, &ia.version, &ia.kind) != (&ib.group, &ib.version, &ib.kind) {
            let (ra, rb) = (rank(&ia.kind), rank(&ib.kind));
            if ra != rb {
                return ra.cmp(&rb);
            }
            let (ka, kb) = (gvk_key(&ia), gvk_key(&ib));
            // kustomize puts a grouped Namespace kind before the core one.
            if ia.kind == "Namespace" && ib.kind == "Namespace" && (ia.group.is_empty() || ib.group.is_empty()) {
                return kb.cmp(&ka);
            }
            return ka.cmp(&kb);
        }
        id_key(a, &ia).cmp(&id_key(b, &ib)).then(Ordering::Equal)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn res(api_version: &str, kind: &str, ns: &str, name: &str) -> Resource {
        let mut object = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name}});
        if !ns.is_empty() {
            object["metadata"]["namespace"] = ns.into();
        }
        Resource::from_manifest(Manifest {
            file: "f.yaml".into(),
            doc: 0,
            object,
        })
    }

    #[test]
    fn legacy_sort_orders_kinds_then_gvk_then_namespace_and_name() {
        let mut list = vec![
            res(
                "admissionregistration.k8s.io/v1",
                "ValidatingWebhookConfiguration",
                "",
                "w",
            ),
            res("apps/v1", "Deployment", "b", "d"),
            res("example.com/v1", "Widget", "", "w"),
            res("apps/v1", "Deployment", "a", "z"),
            res("v1", "ConfigMap", "", "c"),
            res("v1", "Namespace", "", "n"),
            res("batch/v1", "Job", "", "j"),
        ];
        legacy_sort(&mut list);
        let got: Vec<String> = list.iter().map(|r| format!("{}/{}", r.kind(), r.name())).collect();
        assert_eq!(
            got,
            [
                "Namespace/n",
                "ConfigMap/c",
                "Deployment/z",
                "Deployment/d",
                "Job/j",
                "Widget/w",
                "ValidatingWebhookConfiguration/w"
            ]
        );
    }

    #[test]
    fn effective_namespaces_are_kustomizes() {
        assert_eq!(effective_namespace("", "ConfigMap", ""), "default");
        assert_eq!(effective_namespace("", "ConfigMap", "x"), "x");
        assert_eq!(effective_namespace("", "Namespace", "x"), CLUSTER);
    }
}
