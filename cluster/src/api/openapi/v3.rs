//! The OpenAPI 3.0 documents of `/openapi/v3/<group-version>`: the paths of one
//! group-version and the schemas they reach, in `components.schemas`.
//!
//! kubectl reads these for `explain`, for the patch it computes in client-side `apply`
//! (the merge keys of `components.schemas`), and to learn that the server validates fields
//! (a `fieldValidation` parameter on each PATCH operation of the kind).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use super::v2::response_description;
use super::{Definitions, In, Op, Param, PathSpec};
use crate::api::discovery;

const DEFINITIONS: &str = "#/definitions/";
const COMPONENTS: &str = "#/components/schemas/";

/// One document per group-version, by `api/v1` or `apis/<group>/<version>`.
pub(super) fn documents(defs: &Definitions, paths: &[PathSpec]) -> BTreeMap<String, Value> {
    let mut by_gv: BTreeMap<&str, Vec<&PathSpec>> = BTreeMap::new();
    for spec in paths {
        by_gv.entry(&spec.group_version).or_default().push(spec);
    }
    by_gv
        .into_iter()
        .map(|(gv, specs)| (gv.to_string(), document(defs, &specs)))
        .collect()
}

fn document(defs: &Definitions, specs: &[&PathSpec]) -> Value {
    let mut paths = Map::new();
    let mut wanted = BTreeSet::new();
    for spec in specs {
        let mut item = Map::new();
        if !spec.params.is_empty() {
            item.insert("parameters".into(), spec.params.iter().map(parameter).collect());
        }
        for op in &spec.ops {
            for schema in op
                .body
                .iter()
                .map(|b| &b.schema)
                .chain(op.responses.iter().map(|(_, s)| s))
            {
                references(schema, &mut wanted);
            }
            item.insert(op.method.into(), operation(op));
        }
        paths.insert(spec.path.clone(), Value::Object(item));
    }
    // Only the schemas the paths reach, as kube-apiserver publishes them.
    let mut reached = BTreeSet::new();
    while let Some(name) = wanted.pop_first() {
        if reached.insert(name.clone()) {
            if let Some(schema) = defs.schemas.get(&name) {
                references(schema, &mut wanted);
            }
        }
    }
    let schemas: Map<String, Value> = reached
        .iter()
        .filter_map(|name| defs.schemas.get(name).map(|s| (name.clone(), openapi3_schema(s))))
        .collect();
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kairn", "version": discovery::version()["gitVersion"]},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// Adds the definition names `schema` refers to (at any depth) to `out`.
fn references(schema: &Value, out: &mut BTreeSet<String>) {
    match schema {
        Value::Object(obj) => {
            for (k, v) in obj {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => {
                        if let Some(name) = r.strip_prefix(DEFINITIONS) {
                            out.insert(name.to_string());
                        }
                    }
                    _ => references(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, out)),
        _ => {}
    }
}

fn parameter(p: &Param) -> Value {
    let mut out = json!({
        "name": p.name,
        "in": match p.location { In::Path => "path", In::Query => "query" },
        "description": p.description,
        "schema": {"type": p.ty},
    });
    if p.location == In::Path {
        out["required"] = json!(true);
    }
    out
}

fn operation(op: &Op) -> Value {
    let responses: Map<String, Value> = op
        .responses
        .iter()
        .map(|(code, schema)| {
            let content: Map<String, Value> = op
                .produces
                .iter()
                .map(|m| (m.to_string(), json!({"schema": openapi3_schema(schema)})))
                .collect();
            (
                code.to_string(),
                json!({"description": response_description(code), "content": content}),
            )
        })
        .collect();
    let mut out = json!({
        "tags": [op.tag],
        "description": op.description,
        "operationId": op.id,
        "responses": responses,
        "x-kubernetes-action": op.action,
    });
    if !op.params.is_empty() {
        out["parameters"] = op.params.iter().map(parameter).collect();
    }
    if let Some(body) = &op.body {
        let content: Map<String, Value> = body
            .media
            .iter()
            .map(|m| (m.to_string(), json!({"schema": openapi3_schema(&body.schema)})))
            .collect();
        out["requestBody"] = json!({"content": content, "required": body.required});
    }
    if let Some(gvk) = &op.gvk {
        out["x-kubernetes-group-version-kind"] = gvk.json();
    }
    out
}

/// Keywords OpenAPI 3.0 schemas have (besides `x-*` extensions).
const OPENAPI3_KEYWORDS: &[&str] = &[
    "title",
    "multipleOf",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "maxProperties",
    "minProperties",
    "required",
    "enum",
    "description",
    "format",
    "default",
    "nullable",
    "discriminator",
    "readOnly",
    "writeOnly",
    "xml",
    "externalDocs",
    "example",
    "deprecated",
];

/// A schema in OpenAPI 3.0 form: references into `components.schemas`, and a reference
/// with a description (or default) beside it wrapped in `allOf`, since 3.0 ignores what
/// sits beside a `$ref` (kube-apiserver writes them the same way).
pub(super) fn openapi3_schema(schema: &Value) -> Value {
    let Value::Object(obj) = schema else {
        return json!({});
    };
    let mut out = Map::new();
    for (k, v) in obj {
        match k.as_str() {
            k if k.starts_with("x-") => {
                out.insert(k.into(), v.clone());
            }
            "$ref" => {
                let r = v.as_str().unwrap_or_default();
                let r = match r.strip_prefix(DEFINITIONS) {
                    Some(name) => format!("{COMPONENTS}{name}"),
                    None => r.to_string(),
                };
                out.insert(k.into(), json!(r));
            }
            "properties" => {
                let props = v
                    .as_object()
                    .map(|p| p.iter().map(|(n, s)| (n.clone(), openapi3_schema(s))).collect())
                    .unwrap_or_default();
                out.insert(k.into(), Value::Object(props));
            }
            "items" => {
                let items = match v {
                    Value::Array(list) => list.first().map(openapi3_schema).unwrap_or_else(|| json!({})),
                    s => openapi3_schema(s),
                };
                out.insert(k.into(), items);
            }
            "additionalProperties" => {
                let ap = if v.is_boolean() { v.clone() } else { openapi3_schema(v) };
                out.insert(k.into(), ap);
            }
            "allOf" | "anyOf" | "oneOf" => {
                let all = v
                    .as_array()
                    .map(|l| l.iter().map(openapi3_schema).collect())
                    .unwrap_or_default();
                out.insert(k.into(), Value::Array(all));
            }
            "not" => {
                out.insert(k.into(), openapi3_schema(v));
            }
            "type" => match v {
                Value::String(_) => {
                    out.insert(k.into(), v.clone());
                }
                // 3.0 has no type lists: a nullable single type, or none at all.
                Value::Array(types) => {
                    let real: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
                    if let [only] = real.as_slice() {
                        out.insert(k.into(), (*only).clone());
                    }
                    if real.len() < types.len() {
                        out.insert("nullable".into(), json!(true));
                    }
                }
                _ => {}
            },
            "const" => {
                out.insert("enum".into(), json!([v]));
            }
            // Draft 7 bounds are numbers; OpenAPI 3.0's are flags on minimum/maximum.
            "exclusiveMinimum" | "exclusiveMaximum" if v.is_number() => {
                let bound = if k == "exclusiveMinimum" { "minimum" } else { "maximum" };
                out.insert(bound.into(), v.clone());
                out.insert(k.into(), json!(true));
            }
            k if OPENAPI3_KEYWORDS.contains(&k) => {
                out.insert(k.into(), v.clone());
            }
            _ => {}
        }
    }
    if let Some(r) = out.remove("$ref") {
        for k in ["type", "properties", "items", "additionalProperties"] {
            out.remove(k);
        }
        if out.is_empty() {
            out.insert("$ref".into(), r);
        } else if let Some(Value::Array(all)) = out.get_mut("allOf") {
            all.insert(0, json!({"$ref": r}));
        } else {
            out.insert("allOf".into(), json!([{"$ref": r}]));
        }
    }
    Value::Object(out)
}
