//! What each served kind does beyond its type: the defaults Kubernetes fills in, the
//! validation it enforces (including immutable fields), what the server sets on
//! creation, and its `kubectl get` columns. The registry points at these functions.

pub mod application;
pub mod core;
pub mod pod;
pub mod policy;
pub mod service;
pub mod storage;
pub mod workloads;

use serde_json::Value;

/// One `kubectl get` column (a Table's `columnDefinitions` entry).
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Header, e.g. `Ready`.
    pub name: &'static str,
    /// OpenAPI type of the cells: `string`, `integer`, `date`.
    pub ty: &'static str,
    /// 0: always shown; 1: only with `-o wide`.
    pub priority: u8,
}

impl Column {
    /// A column definition.
    pub const fn new(name: &'static str, ty: &'static str, priority: u8) -> Self {
        Column { name, ty, priority }
    }
}

/// Columns of kinds without their own: NAME and AGE.
pub static NAME_AGE: &[Column] = &[Column::new("Name", "string", 0), Column::new("Age", "string", 0)];

/// The cells of [`NAME_AGE`].
pub fn name_age(obj: &Value) -> Vec<Value> {
    vec![cell::name(obj), cell::age(obj)]
}

/// No defaults.
pub fn no_defaults(_: &mut Value) {}

/// No validation beyond the type and the metadata.
pub fn no_validation(_: &Value, _: Option<&Value>, _: &mut crate::api::validation::Errors) {}

/// Sets `obj[key]` to `value` if absent or null.
pub fn set_default(obj: &mut Value, key: &str, value: Value) {
    if let Some(map) = obj.as_object_mut() {
        match map.get(key) {
            Some(v) if !v.is_null() => {}
            _ => {
                map.insert(key.to_string(), value);
            }
        }
    }
}

/// The map at `obj[key]`, created if absent (`None` if `obj` is not an object).
pub fn child<'a>(obj: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    let map = obj.as_object_mut()?;
    let entry = map
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Default::default()));
    if entry.is_null() {
        *entry = Value::Object(Default::default());
    }
    Some(entry)
}

/// Helpers for table cells.
pub mod cell {
    use serde_json::{json, Value};

    /// The string at `pointer`, or "".
    pub fn s<'a>(obj: &'a Value, pointer: &str) -> &'a str {
        obj.pointer(pointer).and_then(Value::as_str).unwrap_or("")
    }

    /// The integer at `pointer`, or 0.
    pub fn n(obj: &Value, pointer: &str) -> i64 {
        obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
    }

    /// The object's name.
    pub fn name(obj: &Value) -> Value {
        json!(s(obj, "/metadata/name"))
    }

    /// The object's age, as kubectl prints it.
    pub fn age(obj: &Value) -> Value {
        json!(crate::api::table::human_age(s(obj, "/metadata/creationTimestamp")))
    }

    /// `value`, or `<none>` when empty.
    pub fn or_none(value: &str) -> Value {
        json!(if value.is_empty() { "<none>" } else { value })
    }

    /// Names of the containers at `pointer`, comma-separated.
    pub fn container_names(obj: &Value, pointer: &str) -> Value {
        let names = obj.pointer(pointer).and_then(Value::as_array).into_iter().flatten();
        json!(names.map(|c| s(c, "/name")).collect::<Vec<_>>().join(","))
    }

    /// Images of the containers at `pointer`, comma-separated.
    pub fn container_images(obj: &Value, pointer: &str) -> Value {
        let names = obj.pointer(pointer).and_then(Value::as_array).into_iter().flatten();
        json!(names.map(|c| s(c, "/image")).collect::<Vec<_>>().join(","))
    }

    /// A `LabelSelector` at `pointer` in kubectl's text form (`app=web,tier in (a,b)`).
    pub fn selector(obj: &Value, pointer: &str) -> Value {
        let sel = obj.pointer(pointer);
        let mut parts: Vec<String> = sel
            .and_then(|s| s.get("matchLabels"))
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        for e in sel
            .and_then(|s| s.get("matchExpressions"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = s(e, "/key");
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            parts.push(match s(e, "/operator") {
                "In" => format!("{key} in ({})", values.join(",")),
                "NotIn" => format!("{key} notin ({})", values.join(",")),
                "Exists" => key.to_string(),
                "DoesNotExist" => format!("!{key}"),
                other => format!("{key} {other}"),
            });
        }
        or_none(&parts.join(","))
    }

    /// A `map[string]string` (a Service's selector, a nodeSelector) as `k=v,k2=v2`.
    pub fn map(obj: &Value, pointer: &str) -> Value {
        let parts: Vec<String> = obj
            .pointer(pointer)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        or_none(&parts.join(","))
    }
}
