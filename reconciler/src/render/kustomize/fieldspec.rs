//! Field specs: kustomize's way of naming where a transformer writes (`spec/template/
//! metadata/labels` on Deployments, …), and the walk that finds those fields — through
//! every item of a list on the way, creating missing maps when the spec says so.

use serde_json::{Map, Value};

use super::resource::group_version;

/// One field spec: a slash-separated path on objects of a group/version/kind ("" = any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub path: &'static str,
    /// Whether missing fields on the way are created.
    pub create: bool,
}

/// Shorthand for the tables below.
const fn fs(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    path: &'static str,
    create: bool,
) -> FieldSpec {
    FieldSpec {
        group,
        version,
        kind,
        path,
        create,
    }
}

/// What a created leaf is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    /// Never create (kustomize's `CreateKind` 0).
    None,
    /// A map (labels, annotations).
    Map,
    /// A scalar (namespace, replicas).
    Scalar,
}

/// kustomize's `metadataLabelsFieldSpecs` (`templateLabels`).
pub const METADATA_LABELS: &[FieldSpec] = &[
    fs("", "", "", "metadata/labels", true),
    fs("", "v1", "ReplicationController", "spec/template/metadata/labels", true),
    fs("", "", "Deployment", "spec/template/metadata/labels", true),
    fs("", "", "ReplicaSet", "spec/template/metadata/labels", true),
    fs("", "", "DaemonSet", "spec/template/metadata/labels", true),
    fs("apps", "", "StatefulSet", "spec/template/metadata/labels", true),
    fs("batch", "", "Job", "spec/template/metadata/labels", true),
    fs("batch", "", "CronJob", "spec/jobTemplate/metadata/labels", true),
    fs(
        "batch",
        "",
        "CronJob",
        "spec/jobTemplate/spec/template/metadata/labels",
        true,
    ),
];

/// kustomize's `volumeClaimTemplatesMetadataLabels`.
pub const VOLUME_CLAIM_TEMPLATE_LABELS: &[FieldSpec] = &[fs(
    "apps",
    "",
    "StatefulSet",
    "spec/volumeClaimTemplates[]/metadata/labels",
    true,
)];

/// The selector part of kustomize's `commonLabelFieldSpecs` (the rest is
/// [`METADATA_LABELS`] and [`VOLUME_CLAIM_TEMPLATE_LABELS`]).
pub const SELECTOR_LABELS: &[FieldSpec] = &[
    fs("", "v1", "Service", "spec/selector", true),
    fs("", "v1", "ReplicationController", "spec/selector", true),
    fs("", "", "Deployment", "spec/selector/matchLabels", true),
    fs("apps", "", "Deployment", "spec/template/spec/affinity/podAffinity/preferredDuringSchedulingIgnoredDuringExecution/podAffinityTerm/labelSelector/matchLabels", false),
    fs("apps", "", "Deployment", "spec/template/spec/affinity/podAffinity/requiredDuringSchedulingIgnoredDuringExecution/labelSelector/matchLabels", false),
    fs("apps", "", "Deployment", "spec/template/spec/affinity/podAntiAffinity/preferredDuringSchedulingIgnoredDuringExecution/podAffinityTerm/labelSelector/matchLabels", false),
    fs("apps", "", "Deployment", "spec/template/spec/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution/labelSelector/matchLabels", false),
    fs("apps", "", "Deployment", "spec/template/spec/topologySpreadConstraints/labelSelector/matchLabels", false),
    fs("", "", "ReplicaSet", "spec/selector/matchLabels", true),
    fs("", "", "DaemonSet", "spec/selector/matchLabels", true),
    fs("apps", "", "StatefulSet", "spec/selector/matchLabels", true),
    fs("apps", "", "StatefulSet", "spec/template/spec/affinity/podAffinity/preferredDuringSchedulingIgnoredDuringExecution/podAffinityTerm/labelSelector/matchLabels", false),
    fs("apps", "", "StatefulSet", "spec/template/spec/affinity/podAffinity/requiredDuringSchedulingIgnoredDuringExecution/labelSelector/matchLabels", false),
    fs("apps", "", "StatefulSet", "spec/template/spec/affinity/podAntiAffinity/preferredDuringSchedulingIgnoredDuringExecution/podAffinityTerm/labelSelector/matchLabels", false),
    fs("apps", "", "StatefulSet", "spec/template/spec/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution/labelSelector/matchLabels", false),
    fs("apps", "", "StatefulSet", "spec/template/spec/topologySpreadConstraints/labelSelector/matchLabels", false),
    fs("batch", "", "Job", "spec/selector/matchLabels", false),
    fs("batch", "", "CronJob", "spec/jobTemplate/spec/selector/matchLabels", false),
    fs("policy", "", "PodDisruptionBudget", "spec/selector/matchLabels", false),
    fs("networking.k8s.io", "", "NetworkPolicy", "spec/podSelector/matchLabels", false),
    fs("networking.k8s.io", "", "NetworkPolicy", "spec/ingress/from/podSelector/matchLabels", false),
    fs("networking.k8s.io", "", "NetworkPolicy", "spec/egress/to/podSelector/matchLabels", false),
];

/// kustomize's `commonAnnotationFieldSpecs`.
pub const ANNOTATIONS: &[FieldSpec] = &[
    fs("", "", "", "metadata/annotations", true),
    fs(
        "",
        "v1",
        "ReplicationController",
        "spec/template/metadata/annotations",
        true,
    ),
    fs("", "", "Deployment", "spec/template/metadata/annotations", true),
    fs("", "", "ReplicaSet", "spec/template/metadata/annotations", true),
    fs("", "", "DaemonSet", "spec/template/metadata/annotations", true),
    fs("", "", "StatefulSet", "spec/template/metadata/annotations", true),
    fs("batch", "", "Job", "spec/template/metadata/annotations", true),
    fs("batch", "", "CronJob", "spec/jobTemplate/metadata/annotations", true),
    fs(
        "batch",
        "",
        "CronJob",
        "spec/jobTemplate/spec/template/metadata/annotations",
        true,
    ),
];

/// kustomize's `replicasFieldSpecs`.
pub const REPLICAS: &[FieldSpec] = &[
    fs("", "", "Deployment", "spec/replicas", true),
    fs("", "", "ReplicationController", "spec/replicas", true),
    fs("", "", "ReplicaSet", "spec/replicas", true),
    fs("", "", "StatefulSet", "spec/replicas", true),
];

/// The image volume sources of kustomize's `imagesFieldSpecs` (containers are found by
/// its legacy walk, see `transformers`).
pub const IMAGE_VOLUMES: &[FieldSpec] = &[
    fs("", "", "", "spec/volumes[]/image/reference", false),
    fs("", "", "", "spec/template/spec/volumes[]/image/reference", false),
];

impl FieldSpec {
    /// A spec for one referrer field of the name reference table.
    pub fn new(group: &'static str, version: &'static str, kind: &'static str, path: &'static str) -> FieldSpec {
        fs(group, version, kind, path, false)
    }

    /// Whether the spec applies to objects of `apiVersion`/`kind`.
    pub fn matches(&self, object: &Value) -> bool {
        let s = |k: &str| object.get(k).and_then(Value::as_str).unwrap_or("");
        let (group, version) = group_version(s("apiVersion"));
        (self.kind.is_empty() || self.kind == s("kind"))
            && (self.group.is_empty() || self.group == group)
            && (self.version.is_empty() || self.version == version)
    }

    /// Calls `set` on every field the spec names in `object` (none if it does not apply).
    pub fn apply(
        &self,
        object: &mut Value,
        leaf: Leaf,
        set: &mut dyn FnMut(&mut Value) -> Result<(), String>,
    ) -> Result<(), String> {
        if !self.matches(object) {
            return Ok(());
        }
        let path = split_path(self.path);
        walk(object, &path, self.create, leaf, set).map_err(|e| format!("field {}: {e}", self.path))
    }
}

/// Splits a field spec path on `/`, where `\/` is a slash inside a key (annotation names).
pub fn split_path(path: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'/') => {
                chars.next();
                parts.last_mut().map(|p| p.push('/')).unwrap_or_default();
            }
            '/' => parts.push(String::new()),
            c => parts.last_mut().map(|p| p.push(c)).unwrap_or_default(),
        }
    }
    parts
}

/// kustomize's `fieldspec.Filter`.
fn walk(
    node: &mut Value,
    path: &[String],
    create: bool,
    leaf: Leaf,
    set: &mut dyn FnMut(&mut Value) -> Result<(), String>,
) -> Result<(), String> {
    let Some((first, rest)) = path.split_first() else {
        return set(node);
    };
    match node {
        Value::Null => Ok(()),
        Value::Array(items) => items
            .iter_mut()
            .try_for_each(|item| walk(item, path, create, leaf, set)),
        Value::Object(map) => {
            let (name, is_seq) = match first.strip_suffix("[]") {
                Some(name) => (name, true),
                None => (first.as_str(), false),
            };
            let create_as = if !create || leaf == Leaf::None || is_seq {
                None
            } else if rest.is_empty() {
                Some(leaf)
            } else {
                Some(Leaf::Map)
            };
            let field = match create_as {
                None => match map.get_mut(name) {
                    Some(f) => f,
                    None => return Ok(()),
                },
                Some(kind) => {
                    let f = map.entry(name).or_insert(Value::Null);
                    // A null (or newly created) field becomes what is being created.
                    if f.is_null() && kind == Leaf::Map {
                        *f = Value::Object(Map::new());
                    }
                    f
                }
            };
            walk(field, rest, create, leaf, set)
        }
        _ => Err("expected sequence or mapping node".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set_x(v: &mut Value) -> Result<(), String> {
        *v = json!("x");
        Ok(())
    }

    #[test]
    fn walks_lists_creates_maps_and_matches_gvk() {
        let cases = [
            // (spec, leaf, object, expected)
            (
                fs("", "", "", "a/b", true),
                Leaf::Scalar,
                json!({"kind": "K"}),
                json!({"kind": "K", "a": {"b": "x"}}),
            ),
            (
                fs("", "", "", "a/b", false),
                Leaf::Scalar,
                json!({"kind": "K"}),
                json!({"kind": "K"}),
            ),
            (
                fs("", "", "", "l/b", true),
                Leaf::Scalar,
                json!({"l": [{"b": 1}, {}]}),
                json!({"l": [{"b": "x"}, {"b": "x"}]}),
            ),
            (
                fs("", "", "", "l[]/b", false),
                Leaf::Scalar,
                json!({"l": [{"b": 1}, {}]}),
                json!({"l": [{"b": "x"}, {}]}),
            ),
            (
                fs("apps", "", "Deployment", "a", true),
                Leaf::Scalar,
                json!({"apiVersion": "v1", "kind": "Deployment"}),
                json!({"apiVersion": "v1", "kind": "Deployment"}),
            ),
            (
                fs("apps", "", "Deployment", "a", true),
                Leaf::Scalar,
                json!({"apiVersion": "apps/v1", "kind": "Deployment"}),
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "a": "x"}),
            ),
        ];
        for (spec, leaf, mut object, want) in cases {
            spec.apply(&mut object, leaf, &mut set_x).expect("applies");
            assert_eq!(object, want, "{spec:?}");
        }
    }

    #[test]
    fn escaped_slashes_stay_in_keys() {
        assert_eq!(
            split_path(r"metadata/annotations/a.io\/b"),
            ["metadata", "annotations", "a.io/b"]
        );
    }
}
