//! The Swagger 2.0 document of `/openapi/v2`: every definition and every path.
//!
//! The schemas come from JSON Schema generators (draft 7); Swagger 2.0 knows a subset of
//! that, and kubectl's parser of this document (kube-openapi's `proto` package) is stricter
//! still: no `type` beside a `$ref`, one `type`, one `items` schema per array. The
//! definitions are rewritten to fit.

use serde_json::{json, Map, Value};

use super::{Definitions, In, Op, Param, PathSpec};
use crate::api::discovery;

/// The whole document.
pub(super) fn document(defs: &Definitions, paths: &[PathSpec]) -> Value {
    let definitions: Map<String, Value> = defs
        .schemas
        .iter()
        .map(|(name, schema)| (name.clone(), swagger_schema(schema)))
        .collect();
    let mut out = Map::new();
    for spec in paths {
        let mut item = Map::new();
        if !spec.params.is_empty() {
            item.insert("parameters".into(), spec.params.iter().map(parameter).collect());
        }
        for op in &spec.ops {
            item.insert(op.method.into(), operation(op));
        }
        out.insert(spec.path.clone(), Value::Object(item));
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kairn", "version": discovery::version()["gitVersion"]},
        "paths": out,
        "definitions": definitions,
    })
}

/// A parameter, inline (kube-apiserver shares them through `#/parameters/`; kubectl reads
/// both forms).
pub(super) fn parameter(p: &Param) -> Value {
    let mut out = json!({
        "name": p.name,
        "in": match p.location { In::Path => "path", In::Query => "query" },
        "description": p.description,
        "type": p.ty,
    });
    if p.location == In::Path {
        out["required"] = json!(true);
    }
    out
}

/// The description kube-apiserver gives each response code.
pub(super) fn response_description(code: &str) -> &'static str {
    match code {
        "200" => "OK",
        "201" => "Created",
        "202" => "Accepted",
        _ => "",
    }
}

fn operation(op: &Op) -> Value {
    let mut params: Vec<Value> = Vec::new();
    if let Some(body) = &op.body {
        let mut b = json!({"name": "body", "in": "body", "schema": body.schema});
        if body.required {
            b["required"] = json!(true);
        }
        params.push(b);
    }
    params.extend(op.params.iter().map(parameter));
    let responses: Map<String, Value> = op
        .responses
        .iter()
        .map(|(code, schema)| {
            (
                code.to_string(),
                json!({"description": response_description(code), "schema": schema}),
            )
        })
        .collect();
    let mut out = json!({
        "description": op.description,
        "operationId": op.id,
        "tags": [op.tag],
        "produces": op.produces,
        "responses": responses,
        "x-kubernetes-action": op.action,
    });
    if !params.is_empty() {
        out["parameters"] = Value::Array(params);
    }
    if let Some(body) = &op.body {
        out["consumes"] = json!(body.media);
    }
    if let Some(gvk) = &op.gvk {
        out["x-kubernetes-group-version-kind"] = gvk.json();
    }
    out
}

/// Keywords Swagger 2.0 schemas have (besides `x-*` extensions).
const SWAGGER_KEYWORDS: &[&str] = &[
    "$ref",
    "format",
    "title",
    "description",
    "default",
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
    "type",
    "items",
    "allOf",
    "properties",
    "additionalProperties",
    "discriminator",
    "readOnly",
    "xml",
    "externalDocs",
    "example",
];

/// A schema as Swagger 2.0 (and kubectl) accept it.
pub(super) fn swagger_schema(schema: &Value) -> Value {
    // A boolean schema (`true`) allows anything: so does an empty one.
    let Value::Object(obj) = schema else {
        return json!({});
    };
    let mut out = Map::new();
    for (k, v) in obj {
        match k.as_str() {
            k if k.starts_with("x-") => {
                out.insert(k.into(), v.clone());
            }
            "properties" => {
                let props = v
                    .as_object()
                    .map(|p| p.iter().map(|(n, s)| (n.clone(), swagger_schema(s))).collect())
                    .unwrap_or_default();
                out.insert(k.into(), Value::Object(props));
            }
            // Tuple-style items do not exist in Swagger: the first schema stands for all.
            "items" => {
                let items = match v {
                    Value::Array(list) => list.first().map(swagger_schema).unwrap_or_else(|| json!({})),
                    s => swagger_schema(s),
                };
                out.insert(k.into(), items);
            }
            "additionalProperties" => {
                let ap = if v.is_boolean() { v.clone() } else { swagger_schema(v) };
                out.insert(k.into(), ap);
            }
            "allOf" => {
                let all = v
                    .as_array()
                    .map(|l| l.iter().map(swagger_schema).collect())
                    .unwrap_or_default();
                out.insert(k.into(), Value::Array(all));
            }
            "type" => match v {
                Value::String(_) => {
                    out.insert(k.into(), v.clone());
                }
                // One type, or none (any value): Swagger has no type lists, kubectl no nulls.
                Value::Array(types) => {
                    let real: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
                    if let [only] = real.as_slice() {
                        out.insert(k.into(), (*only).clone());
                    }
                }
                _ => {}
            },
            "const" => {
                out.insert("enum".into(), json!([v]));
            }
            // Draft 7 bounds are numbers; Swagger's are flags on minimum/maximum.
            "exclusiveMinimum" | "exclusiveMaximum" if v.is_number() => {
                let bound = if k == "exclusiveMinimum" { "minimum" } else { "maximum" };
                out.insert(bound.into(), v.clone());
                out.insert(k.into(), json!(true));
            }
            k if SWAGGER_KEYWORDS.contains(&k) => {
                out.insert(k.into(), v.clone());
            }
            // anyOf, oneOf, not, nullable, const, $schema, ...: not Swagger 2.0.
            _ => {}
        }
    }
    if out.contains_key("$ref") {
        // kubectl rejects a reference that also defines a type.
        for k in ["type", "properties", "items", "additionalProperties"] {
            out.remove(k);
        }
    }
    // How Kubernetes' v2 document spells IntOrString (kubectl accepts numbers for strings).
    if out.get("x-kubernetes-int-or-string") == Some(&json!(true)) && !out.contains_key("type") {
        out.insert("type".into(), json!("string"));
        out.entry("format").or_insert(json!("int-or-string"));
    }
    // kubectl needs exactly one items schema per array.
    if out.get("type") == Some(&json!("array")) && !out.contains_key("items") {
        out.insert("items".into(), json!({}));
    }
    Value::Object(out)
}
