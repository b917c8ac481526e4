//! How Kubernetes merges each list (and a few maps) of the served types: the
//! `patchStrategy`/`patchMergeKey` and `listType`/`listMapKeys` tags of the Go types,
//! written once here. The schema module copies them into the served OpenAPI; strategic
//! merge and server-side apply read them from there.

use serde_json::{json, Map, Value};

/// One field's merge rules.
struct Rule {
    /// Definition name of the type holding the field.
    def: &'static str,
    /// JSON name of the field.
    field: &'static str,
    /// `x-kubernetes-patch-strategy` (`merge`, `retainKeys`, `merge,retainKeys`), if any.
    strategy: Option<&'static str>,
    /// `x-kubernetes-patch-merge-key`, if the list merges by key.
    merge_key: Option<&'static str>,
    /// `x-kubernetes-list-type` (`map`, `set`, `atomic`), if declared.
    list_type: Option<&'static str>,
    /// `x-kubernetes-list-map-keys` for `map` lists.
    map_keys: &'static [&'static str],
}

macro_rules! rule {
    ($def:expr, $field:literal, strategy = $s:expr, key = $k:expr, list = $l:expr, keys = $ks:expr) => {
        Rule {
            def: $def,
            field: $field,
            strategy: $s,
            merge_key: $k,
            list_type: $l,
            map_keys: $ks,
        }
    };
}

/// Lists merged by a key, by type and field.
static RULES: &[Rule] = &[
    rule!(
        "io.k8s.api.core.v1.PodSpec",
        "containers",
        strategy = Some("merge"),
        key = Some("name"),
        list = None,
        keys = &[]
    ),
    rule!(
        "io.k8s.api.core.v1.PodSpec",
        "initContainers",
        strategy = Some("merge"),
        key = Some("name"),
        list = None,
        keys = &[]
    ),
    rule!(
        "io.k8s.api.core.v1.PodSpec",
        "volumes",
        strategy = Some("merge,retainKeys"),
        key = Some("name"),
        list = None,
        keys = &[]
    ),
    rule!(
        "io.k8s.api.core.v1.Container",
        "env",
        strategy = Some("merge"),
        key = Some("name"),
        list = None,
        keys = &[]
    ),
    rule!(
        "io.k8s.api.core.v1.Container",
        "ports",
        strategy = Some("merge"),
        key = Some("containerPort"),
        list = Some("map"),
        keys = &["containerPort", "protocol"]
    ),
    rule!(
        "io.k8s.api.core.v1.Container",
        "volumeMounts",
        strategy = Some("merge"),
        key = Some("mountPath"),
        list = None,
        keys = &[]
    ),
];

/// The OpenAPI extensions describing how field `field` of definition `def` merges.
pub fn extensions(def: &str, field: &str) -> Option<Map<String, Value>> {
    let rule = RULES.iter().find(|r| r.def == def && r.field == field)?;
    let mut ext = Map::new();
    if let Some(s) = rule.strategy {
        ext.insert("x-kubernetes-patch-strategy".into(), json!(s));
    }
    if let Some(k) = rule.merge_key {
        ext.insert("x-kubernetes-patch-merge-key".into(), json!(k));
    }
    if let Some(l) = rule.list_type {
        ext.insert("x-kubernetes-list-type".into(), json!(l));
    }
    if !rule.map_keys.is_empty() {
        ext.insert("x-kubernetes-list-map-keys".into(), json!(rule.map_keys));
    }
    Some(ext)
}
