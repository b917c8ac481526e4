//! The schema of every served kind, generated once from the Rust types: k8s-openapi's
//! `schemars` implementations (which carry Kubernetes' own descriptions) for the built-in
//! kinds and a derive for Kairn's. Kubernetes' list-merge extensions
//! (`x-kubernetes-patch-merge-key`, `x-kubernetes-list-type`, ...) are added from
//! [`super::patch::keys`], the one table the patch code reads too.
//!
//! Served as OpenAPI by `openapi`, walked by strategic merge and server-side apply to
//! learn how a list merges.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Value};

use super::patch::keys;
use super::registry::{ResourceInfo, RESOURCES};

/// Registers `K`'s schema (and everything it refers to) and returns its definition name.
pub fn schema_name_of<K: JsonSchema>(generator: &mut SchemaGenerator) -> String {
    generator.subschema_for::<K>();
    K::schema_name().into_owned()
}

/// The definitions of every served kind and the types they use.
#[derive(Debug)]
pub struct Schemas {
    /// Definitions by name (`io.k8s.api.core.v1.Pod`); `$ref`s read `#/definitions/<name>`.
    pub definitions: BTreeMap<String, Value>,
    /// The definition name of each served kind, by `(group, version, kind)`.
    roots: HashMap<(&'static str, &'static str, &'static str), String>,
}

/// The schemas, generated on first use.
pub fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(generate)
}

fn generate() -> Schemas {
    let mut settings = SchemaSettings::draft07();
    // Keep k8s-openapi's schemas as written (a `$ref` beside its `description`, as in
    // Kubernetes' own OpenAPI v2 document).
    settings.transforms.clear();
    settings.meta_schema = None;
    let mut generator = SchemaGenerator::new(settings);
    let mut roots = HashMap::new();
    for res in RESOURCES {
        let name = (res.schema)(&mut generator);
        roots.insert((res.group, res.version, res.kind), name);
    }
    let mut definitions: BTreeMap<String, Value> = generator.take_definitions(false).into_iter().collect();
    for def in definitions.values_mut() {
        drop_null_types(def);
    }
    for (name, def) in definitions.iter_mut() {
        if let (Some(ext), Some(obj)) = (keys::definition_extensions(name), def.as_object_mut()) {
            obj.extend(ext);
        }
        if let Some(props) = def.get_mut("properties").and_then(Value::as_object_mut) {
            for (field, prop) in props.iter_mut() {
                if let Some(ext) = keys::extensions(name, field) {
                    if let Some(obj) = prop.as_object_mut() {
                        obj.extend(ext);
                    }
                }
            }
        }
    }
    for ((group, version, kind), name) in &roots {
        if let Some(def) = definitions.get_mut(name).and_then(Value::as_object_mut) {
            def.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": group, "version": version, "kind": kind}]),
            );
        }
    }
    Schemas { definitions, roots }
}

/// Optional fields of derived types come out as `type: [T, "null"]` or `anyOf: [T, null]`;
/// Kubernetes' schemas say only `T` (absence is what optional means there).
fn drop_null_types(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    map.insert("type".into(), only);
                }
            }
            if let Some(Value::Array(any)) = map.get("anyOf") {
                let rest: Vec<Value> = any
                    .iter()
                    .filter(|s| s.get("type") != Some(&json!("null")))
                    .cloned()
                    .collect();
                if rest.len() == 1 {
                    map.remove("anyOf");
                    if let Value::Object(inner) = &rest[0] {
                        for (k, v) in inner {
                            map.entry(k.clone()).or_insert_with(|| v.clone());
                        }
                    }
                }
            }
            for v in map.values_mut() {
                drop_null_types(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(drop_null_types),
        _ => {}
    }
}

impl Schemas {
    /// The definition name of a served kind.
    pub fn root_name(&self, res: &ResourceInfo) -> Option<&str> {
        self.roots.get(&(res.group, res.version, res.kind)).map(String::as_str)
    }

    /// The definition of a served kind.
    pub fn root(&self, res: &ResourceInfo) -> Option<&Value> {
        self.root_name(res).and_then(|n| self.definitions.get(n))
    }

    /// The definition name a schema refers to, if it is a `$ref`.
    pub fn ref_name(schema: &Value) -> Option<&str> {
        schema
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/definitions/"))
    }

    /// Follows `$ref`s to the schema itself.
    pub fn resolve<'a>(&'a self, mut schema: &'a Value) -> &'a Value {
        // Bounded: a `$ref` cycle would be a bug in the generated definitions.
        for _ in 0..8 {
            match Self::ref_name(schema).and_then(|n| self.definitions.get(n)) {
                Some(next) => schema = next,
                None => break,
            }
        }
        schema
    }

    /// The schema of property `field` of an object schema (unresolved: it may be a `$ref`).
    pub fn property<'a>(&'a self, schema: &'a Value, field: &str) -> Option<&'a Value> {
        let schema = self.resolve(schema);
        schema
            .get("properties")
            .and_then(|p| p.get(field))
            .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()))
    }

    /// The schema of the items of an array schema.
    pub fn items<'a>(&'a self, schema: &'a Value) -> Option<&'a Value> {
        self.resolve(schema).get("items")
    }

    /// The `x-kubernetes-patch-merge-key` of a list field, if it merges by key.
    pub fn merge_key<'a>(&'a self, schema: &'a Value) -> Option<&'a str> {
        schema.get("x-kubernetes-patch-merge-key").and_then(Value::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::registry::by_kind;

    #[test]
    fn every_kind_has_a_definition_with_its_group_version_kind() {
        let s = schemas();
        for res in RESOURCES {
            let root = s.root(res).unwrap_or_else(|| panic!("no schema for {}", res.kind));
            assert_eq!(root["x-kubernetes-group-version-kind"][0]["kind"], res.kind);
        }
        let deploy = by_kind("apps/v1", "Deployment").unwrap();
        let spec = s.property(s.root(deploy).unwrap(), "spec").unwrap();
        let template = s.property(spec, "template").unwrap();
        let pod_spec = s.property(template, "spec").unwrap();
        let containers = s.property(pod_spec, "containers").unwrap();
        assert_eq!(s.merge_key(containers), Some("name"));
        let container = s.items(containers).unwrap();
        assert!(s.resolve(container)["description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()));
    }

    #[test]
    fn kairn_kinds_have_no_null_types() {
        let s = schemas();
        let app = by_kind(crate::kinds::API_VERSION, "Application").unwrap();
        let text = s.root(app).unwrap().to_string();
        assert!(!text.contains("\"null\""), "{text}");
    }
}
