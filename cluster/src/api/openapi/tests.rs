//! Tests of the documents: every kind present with its group-version-kind, references that
//! resolve, the shapes kubectl's parsers insist on, and the protobuf decoding back.

use std::collections::BTreeSet;

use serde_json::Map;

use super::*;
use crate::api::registry::by_kind;

fn docs() -> Documents {
    build().unwrap_or_else(|e| panic!("{e}"))
}

fn v2_json(d: &Documents) -> Value {
    serde_json::from_slice(&d.v2_json.body).unwrap()
}

fn v3_json(d: &Documents, gv: &str) -> Value {
    serde_json::from_slice(&d.v3[gv].body).unwrap_or_else(|e| panic!("{gv}: {e}"))
}

/// The definition names `value` refers to, in either document's spelling.
fn all_refs(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(obj) => {
            for (k, v) in obj {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => {
                        let name = r
                            .strip_prefix("#/definitions/")
                            .or_else(|| r.strip_prefix("#/components/schemas/"));
                        out.insert(name.unwrap_or(r).to_string());
                    }
                    _ => all_refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| all_refs(v, out)),
        _ => {}
    }
}

fn gv_of(res: &ResourceInfo) -> String {
    group_version_path(res.group, res.version)
}

/// The PATCH operations of a document carrying `gvk`.
fn patch_ops<'a>(paths: &'a Value, gvk: &Value) -> Vec<(&'a String, &'a Value)> {
    paths
        .as_object()
        .unwrap()
        .iter()
        .filter_map(|(p, item)| item.get("patch").map(|op| (p, op)))
        .filter(|(_, op)| op.get("x-kubernetes-group-version-kind") == Some(gvk))
        .collect()
}

fn has_field_validation(op: &Value) -> bool {
    op["parameters"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["name"] == "fieldValidation" && p["in"] == "query"))
}

#[test]
fn v2_has_every_kind_with_its_group_version_kind_and_field_validation() {
    let d = docs();
    let doc = v2_json(&d);
    assert_eq!(doc["swagger"], "2.0");
    let defs = Definitions::build();
    for res in RESOURCES {
        let gvk = Gvk::of(res).json();
        let root = &doc["definitions"][defs.root(res)];
        assert_eq!(root["x-kubernetes-group-version-kind"][0], gvk, "{}", res.kind);
        let required = root["required"].as_array().cloned().unwrap_or_default();
        assert!(!required.contains(&json!("metadata")), "{}", res.kind);
        let list = &doc["definitions"][defs.list(res)];
        assert_eq!(
            list["properties"]["items"]["items"]["$ref"],
            format!("#/definitions/{}", defs.root(res))
        );
        let patches = patch_ops(&doc["paths"], &gvk);
        assert!(!patches.is_empty(), "no PATCH for {}", res.kind);
        for (path, op) in patches {
            assert!(has_field_validation(op), "{path}");
            assert_eq!(op["x-kubernetes-action"], "patch");
        }
    }
    let deploy = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"];
    assert_eq!(deploy["patch"]["operationId"], "patchAppsV1NamespacedDeployment");
    let consumes = deploy["patch"]["consumes"].as_array().unwrap();
    assert!(consumes.contains(&json!("application/strategic-merge-patch+json")));
    let create = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments"]["post"];
    let names: Vec<&Value> = create["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["name"])
        .collect();
    for want in ["body", "dryRun", "fieldManager", "fieldValidation"] {
        assert!(names.contains(&&json!(want)), "{names:?}");
    }
    assert_eq!(
        doc["paths"]["/apis/apps/v1/deployments"]["get"]["operationId"],
        "listAppsV1DeploymentForAllNamespaces"
    );
    assert_eq!(
        doc["paths"]["/apis/kairn.dev/v1/namespaces/{namespace}/applications/{name}"]["get"]["operationId"],
        "readKairnDevV1NamespacedApplication"
    );
    assert!(
        doc["paths"]["/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"]["get"]["tags"][0]
            .as_str()
            .is_some_and(|t| t == "coordination_v1")
    );
}

/// Checks a Swagger schema the way kube-openapi's `proto.NewOpenAPIData` (kubectl's parser
/// of this document) does, and that references resolve.
fn check_v2_schema(schema: &Value, at: &str, defs: &Map<String, Value>) {
    let obj = schema.as_object().unwrap_or_else(|| panic!("{at}: not an object"));
    if let Some(r) = obj.get("$ref") {
        let name = r.as_str().and_then(|r| r.strip_prefix("#/definitions/"));
        assert!(name.is_some_and(|n| defs.contains_key(n)), "{at}: dangling {r}");
        assert!(
            !obj.contains_key("type") && !obj.contains_key("properties"),
            "{at}: $ref with a type"
        );
        return;
    }
    match obj.get("type") {
        None => {}
        Some(Value::String(t)) => {
            assert!(
                ["object", "array", "string", "integer", "number", "boolean"].contains(&t.as_str()),
                "{at}: type {t}"
            );
            if t == "array" {
                let items = obj.get("items").unwrap_or_else(|| panic!("{at}: array without items"));
                check_v2_schema(items, &format!("{at}[]"), defs);
            }
        }
        Some(other) => panic!("{at}: type {other}"),
    }
    for k in ["anyOf", "oneOf", "nullable", "const", "$schema"] {
        assert!(!obj.contains_key(k), "{at}: {k} is not Swagger 2.0");
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            check_v2_schema(prop, &format!("{at}.{name}"), defs);
        }
    }
    if let Some(ap) = obj.get("additionalProperties").filter(|a| a.is_object()) {
        check_v2_schema(ap, &format!("{at}{{}}"), defs);
    }
}

#[test]
fn v2_definitions_parse_as_kubectl_parses_them() {
    let doc = v2_json(&docs());
    let defs = doc["definitions"].as_object().unwrap();
    for (name, def) in defs {
        check_v2_schema(def, name, defs);
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        let mut refs = BTreeSet::new();
        all_refs(item, &mut refs);
        for r in refs {
            assert!(defs.contains_key(&r), "{path}: dangling {r}");
        }
    }
    let int_or_string = &defs["io.k8s.apimachinery.pkg.util.intstr.IntOrString"];
    assert_eq!(
        (&int_or_string["type"], &int_or_string["format"]),
        (&json!("string"), &json!("int-or-string"))
    );
}

#[test]
fn protobuf_decodes_back_to_the_json_document() {
    let d = docs();
    let json = v2_json(&d);
    let doc = gnostic::Document::decode(d.v2_protobuf.body.clone()).unwrap();
    assert_eq!(doc.swagger, "2.0");
    let paths = doc.paths.unwrap().path;
    assert_eq!(paths.len(), json["paths"].as_object().unwrap().len());
    let defs = doc.definitions.unwrap().additional_properties;
    assert_eq!(defs.len(), json["definitions"].as_object().unwrap().len());

    // What kubectl's QueryParamVerifier reads: the PATCH of a kind, its GVK extension (as
    // YAML text) and a `fieldValidation` query parameter.
    let item = paths
        .iter()
        .find(|p| p.name == "/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
        .and_then(|p| p.value.as_ref())
        .unwrap();
    let patch = item.patch.as_ref().unwrap();
    let gvk = patch
        .vendor_extension
        .iter()
        .find(|e| e.name == "x-kubernetes-group-version-kind")
        .and_then(|e| e.value.as_ref())
        .unwrap();
    let gvk: Value = serde_json::from_str(&gvk.yaml).unwrap();
    assert_eq!(gvk, json!({"group": "apps", "version": "v1", "kind": "Deployment"}));
    let query_names: Vec<&str> = patch
        .parameters
        .iter()
        .filter_map(|p| match &p.oneof {
            Some(gnostic::parameters_item::Oneof::Parameter(gnostic::Parameter {
                oneof:
                    Some(gnostic::parameter::Oneof::NonBodyParameter(gnostic::NonBodyParameter {
                        oneof: Some(gnostic::non_body_parameter::Oneof::QueryParameterSubSchema(q)),
                    })),
            })) => Some(q.name.as_str()),
            _ => None,
        })
        .collect();
    assert!(query_names.contains(&"fieldValidation"), "{query_names:?}");
    assert!(matches!(
        item.parameters[0].oneof,
        Some(gnostic::parameters_item::Oneof::Parameter(gnostic::Parameter {
            oneof: Some(gnostic::parameter::Oneof::NonBodyParameter(gnostic::NonBodyParameter {
                oneof: Some(gnostic::non_body_parameter::Oneof::PathParameterSubSchema(_))
            }))
        }))
    ));

    // A definition with its properties, a $ref, a list-merge extension and its GVK.
    let deploy = defs
        .iter()
        .find(|s| s.name == "io.k8s.api.apps.v1.Deployment")
        .and_then(|s| s.value.as_ref())
        .unwrap();
    assert_eq!(deploy.r#type.as_ref().unwrap().value, vec!["object".to_string()]);
    let props = &deploy.properties.as_ref().unwrap().additional_properties;
    let spec = props
        .iter()
        .find(|p| p.name == "spec")
        .and_then(|p| p.value.as_ref())
        .unwrap();
    assert_eq!(spec.r#ref, "#/definitions/io.k8s.api.apps.v1.DeploymentSpec");
    let gvk = deploy
        .vendor_extension
        .iter()
        .find(|e| e.name == "x-kubernetes-group-version-kind");
    let gvk: Value = serde_json::from_str(&gvk.and_then(|e| e.value.as_ref()).unwrap().yaml).unwrap();
    assert_eq!(gvk[0]["kind"], "Deployment");
    let pod_spec = defs
        .iter()
        .find(|s| s.name == "io.k8s.api.core.v1.PodSpec")
        .and_then(|s| s.value.as_ref())
        .unwrap();
    let containers = pod_spec
        .properties
        .as_ref()
        .unwrap()
        .additional_properties
        .iter()
        .find(|p| p.name == "containers")
        .and_then(|p| p.value.as_ref())
        .unwrap();
    assert_eq!(containers.items.as_ref().unwrap().schema.len(), 1);
    assert!(containers
        .vendor_extension
        .iter()
        .any(|e| e.name == "x-kubernetes-patch-merge-key" && e.value.as_ref().is_some_and(|v| v.yaml == "\"name\"")));
}

#[test]
fn v3_documents_carry_field_validation_and_resolve_their_references() {
    let d = docs();
    let index: Value = serde_json::from_slice(&d.v3_index.body).unwrap();
    for res in RESOURCES {
        let gv = gv_of(res);
        let doc = v3_json(&d, &gv);
        assert_eq!(
            index["paths"][&gv]["serverRelativeURL"],
            format!("/openapi/v3/{gv}?hash={}", d.v3[&gv].etag)
        );
        let gvk = Gvk::of(res).json();
        // kubectl explain: the collection's GET names the kind, and a schema carries it.
        let collection = if res.namespaced {
            format!("/{gv}/namespaces/{{namespace}}/{}", res.plural)
        } else {
            format!("/{gv}/{}", res.plural)
        };
        assert_eq!(doc["paths"][&collection]["get"]["x-kubernetes-group-version-kind"], gvk);
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        assert!(
            schemas.values().any(|s| s["x-kubernetes-group-version-kind"]
                .as_array()
                .is_some_and(|l| l.contains(&gvk))),
            "{}",
            res.kind
        );
        // kubectl's field-validation check stops at the first PATCH of the kind it finds.
        let patches = patch_ops(&doc["paths"], &gvk);
        assert!(!patches.is_empty());
        for (path, op) in patches {
            assert!(has_field_validation(op), "{path}");
            let content = op["requestBody"]["content"].as_object().unwrap();
            assert_eq!(
                content.contains_key("application/strategic-merge-patch+json"),
                res.group != crate::kinds::GROUP,
                "{path}"
            );
        }
        let mut refs = BTreeSet::new();
        let text = doc.to_string();
        assert!(!text.contains("#/definitions/"), "{gv}");
        all_refs(&doc, &mut refs);
        for r in refs {
            assert!(schemas.contains_key(&r), "{gv}: dangling {r}");
        }
    }
    // A described reference is wrapped, since OpenAPI 3.0 ignores a $ref's siblings.
    let apps = v3_json(&d, "apis/apps/v1");
    let spec = &apps["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"]["properties"]["spec"];
    assert_eq!(
        spec["allOf"][0]["$ref"],
        "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"
    );
    assert!(spec["description"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(apps["components"]["schemas"]
        .get("io.k8s.api.core.v1.Namespace")
        .is_none());
}

#[test]
fn kairn_kinds_get_no_strategic_merge() {
    let app = by_kind(crate::kinds::API_VERSION, "Application").unwrap();
    assert_eq!(
        patch_types(app),
        vec![
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/apply-patch+yaml"
        ]
    );
    let pod = by_kind("v1", "Pod").unwrap();
    assert!(patch_types(pod).contains(&"application/strategic-merge-patch+json"));
}

#[test]
fn negotiation_follows_accept() {
    let offers = [JSON, PROTOBUF_V2, PROTOBUF_V2_ANSWERED];
    let with = |accept: &str| {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
        negotiate(&h, &offers)
    };
    assert_eq!(negotiate(&HeaderMap::new(), &offers), Some(0));
    assert_eq!(with(PROTOBUF_V2), Some(1));
    assert_eq!(with("*/*"), Some(0));
    assert_eq!(
        with("application/json;q=0.5, application/com.github.proto-openapi.spec.v2.v1.0+protobuf"),
        Some(2)
    );
    assert_eq!(with("text/html"), None);
    assert_eq!(with("application/json;q=0"), None);
}

#[test]
fn names_follow_kubernetes() {
    assert_eq!(id_prefix("", "v1"), "CoreV1");
    assert_eq!(id_prefix("coordination.k8s.io", "v1"), "CoordinationV1");
    assert_eq!(id_prefix("kairn.dev", "v1beta1"), "KairnDevV1beta1");
    assert_eq!(tag("", "v1"), "core_v1");
    assert_eq!(tag("kairn.dev", "v1"), "kairnDev_v1");
}
