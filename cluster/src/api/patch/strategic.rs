//! Kubernetes' strategic merge patch (`application/strategic-merge-patch+json`) on JSON
//! values, following `k8s.io/apimachinery/pkg/util/strategicpatch` (patch.go).
//!
//! Maps merge key by key and `null` deletes. A list merges only if its schema says
//! `x-kubernetes-patch-strategy: merge`: by `x-kubernetes-patch-merge-key` for lists of
//! maps (items keep their live order, patched items take the patch's order), as a union for
//! lists of primitives; every other list is replaced. Directives: `$patch: replace|delete|merge`
//! on a map or on an item of a merging list, `$retainKeys`, `$setElementOrder/<list>` and
//! `$deleteFromPrimitiveList/<list>`; any other `$` key is an error.
//!
//! Where patch.go leaves a directive in the result (new content that is not merged into
//! anything, replaced lists) it is applied here against nothing, so no `$` key ever reaches
//! an object; `$patch: merge` is accepted as the explicit default it names.

use serde_json::{Map, Value};

use crate::api::schema::Schemas;

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList";

/// Why a strategic merge patch cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StrategicError {
    /// The patch or the object is not a JSON object.
    #[error("invalid JSON document: a strategic merge patch and the object it patches must be JSON objects")]
    NotAnObject,
    /// `$patch` names no known directive.
    #[error("unknown patch type: {0}")]
    UnknownPatchType(String),
    /// A `$` key that is no directive.
    #[error("unknown strategic merge patch directive {0:?}")]
    UnknownDirective(String),
    /// An item of a list merged by key lacks the key.
    #[error("map: {item} does not contain declared merge key: {key}")]
    NoMergeKey { item: String, key: String },
    /// A list of maps declared `merge` without a merge key.
    #[error("cannot merge lists without merge key for {0}")]
    NoMergeKeyDeclared(String),
    /// Lists of lists cannot be merged.
    #[error("lists of lists are not supported")]
    ListOfLists,
    /// A merging list mixes maps and primitives (or primitives of different types).
    #[error("list element types are not identical: {0}")]
    MixedList(String),
    /// A value of the wrong type where a directive or merging list expects another.
    #[error("{field}: expected {expected}, got {got}")]
    BadType {
        field: String,
        expected: &'static str,
        got: String,
    },
    /// `$deleteFromPrimitiveList` misused.
    #[error("invalid patch format of primitive list: {0}")]
    BadPrimitiveList(String),
    /// `$retainKeys` is not a list, or the patch sets a field it does not retain.
    #[error("invalid patch format of retainKeys: {0}")]
    BadRetainKeys(String),
    /// `$setElementOrder` misused, or it orders the patch list differently.
    #[error("invalid patch format of setElementOrder list: {0}")]
    BadSetElementOrder(String),
}

/// Applies strategic merge patch `patch` to `original`, an object of the type described by
/// `schema` (a served kind's root definition, or any definition or inline schema; `$ref`s
/// are resolved through `schemas`). Fields the schema does not describe merge as maps and
/// replace as lists.
pub fn merge(schemas: &Schemas, schema: &Value, original: &Value, patch: &Value) -> Result<Value, StrategicError> {
    let (Value::Object(original), Value::Object(patch)) = (original, patch) else {
        return Err(StrategicError::NotAnObject);
    };
    let merger = Merger { schemas };
    Ok(Value::Object(merger.merge_map(
        Some(schema),
        original.clone(),
        patch,
        "",
    )?))
}

/// The two kinds of items a merging list may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Items {
    Maps,
    Primitives,
}

struct Merger<'s> {
    schemas: &'s Schemas,
}

fn type_name(v: &Value) -> String {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "map",
    }
    .to_string()
}

fn join(path: &str, field: &str) -> String {
    format!("{path}.{field}")
}

/// The field a `<prefix>/<field>` directive names.
fn directive_field<'k>(key: &'k str, prefix: &str) -> Option<&'k str> {
    key.strip_prefix(prefix)?.strip_prefix('/').filter(|f| !f.is_empty())
}

impl<'s> Merger<'s> {
    /// The schema of field `field` of an object of schema `schema`.
    fn field_schema(&self, schema: Option<&'s Value>, field: &str) -> Option<&'s Value> {
        schema.and_then(|s| self.schemas.property(s, field))
    }

    /// The schema of the items of a list of schema `schema`.
    fn item_schema(&self, schema: Option<&'s Value>) -> Option<&'s Value> {
        schema.and_then(|s| self.schemas.items(s))
    }

    /// An extension of a field's schema, looked up beside a `$ref` and behind it.
    fn extension(&self, schema: Option<&'s Value>, name: &str) -> Option<&'s str> {
        let schema = schema?;
        schema
            .get(name)
            .or_else(|| self.schemas.resolve(schema).get(name))
            .and_then(Value::as_str)
    }

    /// Whether a list field merges (`merge` among its patch strategies) rather than replaces.
    fn merges(&self, schema: Option<&'s Value>) -> bool {
        self.extension(schema, "x-kubernetes-patch-strategy")
            .is_some_and(|s| s.split(',').any(|s| s.trim() == "merge"))
    }

    fn merge_key(&self, schema: Option<&'s Value>) -> Option<&'s str> {
        self.extension(schema, "x-kubernetes-patch-merge-key")
    }

    /// Whether `key` is a real field of the schema (so a `$` key that is not a directive).
    fn declares(&self, schema: Option<&'s Value>, key: &str) -> bool {
        schema.is_some_and(|s| self.schemas.resolve(s).pointer(&format!("/properties/{key}")).is_some())
    }

    fn merge_map(
        &self,
        schema: Option<&'s Value>,
        mut original: Map<String, Value>,
        patch: &Map<String, Value>,
        path: &str,
    ) -> Result<Map<String, Value>, StrategicError> {
        if let Some(directive) = patch.get(PATCH) {
            let mut rest = patch.clone();
            rest.remove(PATCH);
            match directive.as_str() {
                Some("replace") => return self.merge_map(schema, Map::new(), &rest, path),
                Some("delete") => return Ok(Map::new()),
                Some("merge") => return self.merge_map(schema, original, &rest, path),
                _ => return Err(StrategicError::UnknownPatchType(directive.to_string())),
            }
        }
        if let Some(retain) = patch.get(RETAIN_KEYS) {
            self.retain_keys(&mut original, patch, retain)?;
        }
        // Lists named by `$setElementOrder` are merged and ordered together with it.
        let mut ordered = Vec::new();
        for (key, order) in patch.iter().filter(|(k, _)| k.starts_with(SET_ELEMENT_ORDER)) {
            let field = directive_field(key, SET_ELEMENT_ORDER)
                .ok_or_else(|| StrategicError::BadSetElementOrder(format!("{key} names no list")))?;
            self.set_element_order(schema, &mut original, field, order, patch.get(field), path)?;
            ordered.push(field);
        }
        let mut deletions = Vec::new();
        for (key, value) in patch {
            if key == RETAIN_KEYS || key.starts_with(SET_ELEMENT_ORDER) || ordered.contains(&key.as_str()) {
                continue;
            }
            if key.starts_with(DELETE_FROM_PRIMITIVE_LIST) {
                let field = directive_field(key, DELETE_FROM_PRIMITIVE_LIST)
                    .ok_or_else(|| StrategicError::BadPrimitiveList(format!("{key} names no list")))?;
                deletions.push((field, value));
                continue;
            }
            if key.starts_with('$') && !self.declares(schema, key) {
                return Err(StrategicError::UnknownDirective(key.clone()));
            }
            self.merge_field(schema, &mut original, key, value, path)?;
        }
        // After the merges, so an item both added and deleted ends up deleted.
        for (field, values) in deletions {
            self.delete_from_primitive_list(&mut original, field, values, path)?;
        }
        Ok(original)
    }

    /// `$retainKeys`: drop the original's fields the list does not name; the patch may only
    /// set fields it names.
    fn retain_keys(
        &self,
        original: &mut Map<String, Value>,
        patch: &Map<String, Value>,
        retain: &Value,
    ) -> Result<(), StrategicError> {
        let Value::Array(retain) = retain else {
            return Err(StrategicError::BadRetainKeys(format!("expected a list, got {retain}")));
        };
        let retained = |k: &str| retain.iter().any(|r| r.as_str() == Some(k));
        for (key, value) in patch {
            let directive =
                key == RETAIN_KEYS || key.starts_with(SET_ELEMENT_ORDER) || key.starts_with(DELETE_FROM_PRIMITIVE_LIST);
            if !value.is_null() && !directive && !retained(key) {
                return Err(StrategicError::BadRetainKeys(format!(
                    "the patch sets {key:?}, which $retainKeys does not list"
                )));
            }
        }
        original.retain(|k, _| retained(k));
        Ok(())
    }

    fn merge_field(
        &self,
        schema: Option<&'s Value>,
        original: &mut Map<String, Value>,
        key: &str,
        patch: &Value,
        path: &str,
    ) -> Result<(), StrategicError> {
        let here = join(path, key);
        let field_schema = self.field_schema(schema, key);
        let merged = match (original.remove(key), patch) {
            (_, Value::Null) => None,
            (Some(Value::Object(live)), Value::Object(patch)) => {
                Some(Value::Object(self.merge_map(field_schema, live, patch, &here)?))
            }
            (Some(Value::Array(live)), Value::Array(patch)) => {
                Some(Value::Array(self.merge_list_field(field_schema, live, patch, &here)?))
            }
            // Absent, or of another type: the patch's value, its directives applied to nothing.
            (_, patch) => self.fresh(field_schema, patch, &here)?,
        };
        if let Some(merged) = merged {
            original.insert(key.to_string(), merged);
        }
        Ok(())
    }

    /// A patch value where there is nothing to merge it into, with its directives applied;
    /// `None` for a map that deletes itself.
    fn fresh(&self, schema: Option<&'s Value>, patch: &Value, path: &str) -> Result<Option<Value>, StrategicError> {
        Ok(match patch {
            Value::Object(map) if map.get(PATCH).and_then(Value::as_str) == Some("delete") => None,
            Value::Object(map) => Some(Value::Object(self.merge_map(schema, Map::new(), map, path)?)),
            Value::Array(items) => Some(Value::Array(self.merge_list_field(schema, Vec::new(), items, path)?)),
            other => Some(other.clone()),
        })
    }

    /// A list field: merged if its strategy says so, else replaced by the patch's list.
    fn merge_list_field(
        &self,
        schema: Option<&'s Value>,
        original: Vec<Value>,
        patch: &[Value],
        path: &str,
    ) -> Result<Vec<Value>, StrategicError> {
        if self.merges(schema) {
            return self.merge_list(schema, original, patch, path);
        }
        let item_schema = self.item_schema(schema);
        let mut out = Vec::with_capacity(patch.len());
        for item in patch {
            // A directive item means nothing in a replaced list.
            if item.get(PATCH).is_some() {
                continue;
            }
            out.extend(self.fresh(item_schema, item, path)?);
        }
        Ok(out)
    }

    /// Whether a list (or two) holds maps or primitives; empty lists say nothing.
    fn items_of(&self, lists: &[&[Value]], path: &str) -> Result<Option<Items>, StrategicError> {
        let mut seen: Option<&Value> = None;
        for item in lists.iter().flat_map(|l| l.iter()) {
            if item.is_array() {
                return Err(StrategicError::ListOfLists);
            }
            match seen {
                None => seen = Some(item),
                Some(first) if std::mem::discriminant(first) != std::mem::discriminant(item) => {
                    return Err(StrategicError::MixedList(format!(
                        "{path} holds a {} and a {}",
                        type_name(first),
                        type_name(item)
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(seen.map(|v| if v.is_object() { Items::Maps } else { Items::Primitives }))
    }

    fn merge_list(
        &self,
        schema: Option<&'s Value>,
        original: Vec<Value>,
        patch: &[Value],
        path: &str,
    ) -> Result<Vec<Value>, StrategicError> {
        let Some(items) = self.items_of(&[&original, patch], path)? else {
            return Ok(original);
        };
        if items == Items::Primitives {
            let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
            for v in original.iter().chain(patch) {
                if !merged.contains(v) {
                    merged.push(v.clone());
                }
            }
            let (in_patch, server_only) = merged.into_iter().partition(|v| patch.contains(v));
            return order_items(in_patch, server_only, patch, &original, None);
        }
        let key = self
            .merge_key(schema)
            .ok_or_else(|| StrategicError::NoMergeKeyDeclared(path.to_string()))?;
        let item_schema = self.item_schema(schema);
        // Directive items first: deletions, and whether the list is replaced.
        let mut original = original;
        let mut plain: Vec<Map<String, Value>> = Vec::new();
        let mut replace = false;
        for item in patch {
            let Value::Object(map) = item else { continue };
            match map.get(PATCH) {
                None => plain.push(map.clone()),
                Some(Value::String(d)) if d == "delete" => {
                    let value = key_of(map, key)?;
                    original.retain(|o| o.get(key) != Some(value));
                }
                Some(Value::String(d)) if d == "replace" => replace = true,
                Some(Value::String(d)) if d == "merge" => {
                    let mut map = map.clone();
                    map.remove(PATCH);
                    plain.push(map);
                }
                Some(other) => return Err(StrategicError::UnknownPatchType(other.to_string())),
            }
        }
        if replace {
            let mut replaced = Vec::with_capacity(plain.len());
            for item in &plain {
                replaced.push(Value::Object(self.merge_map(item_schema, Map::new(), item, path)?));
            }
            return Ok(replaced);
        }
        let live_order = original.clone();
        for item in &plain {
            let value = key_of(item, key)?;
            let here = format!("{path}[{key}={value}]");
            match original.iter().position(|o| o.get(key) == Some(value)) {
                Some(i) => {
                    let live = match std::mem::take(&mut original[i]) {
                        Value::Object(m) => m,
                        _ => Map::new(),
                    };
                    original[i] = Value::Object(self.merge_map(item_schema, live, item, &here)?);
                }
                None => original.push(Value::Object(self.merge_map(item_schema, Map::new(), item, &here)?)),
            }
        }
        let plain: Vec<Value> = plain.into_iter().map(Value::Object).collect();
        let mut in_patch = Vec::new();
        let mut server_only = Vec::new();
        for item in original {
            let value = item_key(&item, key)?;
            if plain.iter().any(|p| p.get(key) == Some(value)) {
                in_patch.push(item);
            } else {
                server_only.push(item);
            }
        }
        order_items(in_patch, server_only, &plain, &live_order, Some(key))
    }

    /// `$setElementOrder/<field>`: merges the field's list (if the patch has it) and orders
    /// the result: listed items as listed, the others where they were.
    fn set_element_order(
        &self,
        schema: Option<&'s Value>,
        original: &mut Map<String, Value>,
        field: &str,
        order: &Value,
        patch: Option<&Value>,
        path: &str,
    ) -> Result<(), StrategicError> {
        let here = join(path, field);
        let Value::Array(order) = order else {
            return Err(StrategicError::BadSetElementOrder(format!(
                "{here}: expected a list, got {order}"
            )));
        };
        let list = |v: Option<&Value>, what: &str| -> Result<Option<Vec<Value>>, StrategicError> {
            match v {
                None => Ok(None),
                Some(Value::Array(items)) => Ok(Some(items.clone())),
                Some(other) => Err(StrategicError::BadType {
                    field: format!("{here} ({what})"),
                    expected: "a list",
                    got: type_name(other),
                }),
            }
        };
        let live = list(original.get(field), "object")?;
        let patch = list(patch, "patch")?;
        let field_schema = self.field_schema(schema, field);
        let items = self.items_of(
            &[
                live.as_deref().unwrap_or_default(),
                patch.as_deref().unwrap_or_default(),
            ],
            &here,
        )?;
        let key = match items {
            Some(Items::Maps) => self.merge_key(field_schema),
            _ => None,
        };
        if let Some(patch) = &patch {
            check_order(patch, order, key, &here)?;
        }
        let merged = match (&live, &patch) {
            (Some(live), None) => live.clone(),
            (None, Some(patch)) => self.merge_list_field(field_schema, Vec::new(), patch, &here)?,
            (Some(live), Some(patch)) => self.merge_list_field(field_schema, live.clone(), patch, &here)?,
            (None, None) => return Ok(()),
        };
        let mut listed = Vec::new();
        let mut server_only = Vec::new();
        for item in merged {
            let found = match key {
                Some(key) => {
                    let value = item_key(&item, key)?;
                    order.iter().any(|o| o.get(key) == Some(value))
                }
                None => order.contains(&item),
            };
            if found {
                listed.push(item);
            } else {
                server_only.push(item);
            }
        }
        let ordered = order_items(listed, server_only, order, live.as_deref().unwrap_or_default(), key)?;
        original.insert(field.to_string(), Value::Array(ordered));
        Ok(())
    }

    fn delete_from_primitive_list(
        &self,
        original: &mut Map<String, Value>,
        field: &str,
        values: &Value,
        path: &str,
    ) -> Result<(), StrategicError> {
        let Value::Array(values) = values else {
            return Err(StrategicError::BadPrimitiveList(format!(
                "{}: expected a list, got {values}",
                join(path, field)
            )));
        };
        // Nothing to delete from: the list is not added either.
        let Some(Value::Array(items)) = original.get_mut(field) else {
            return Ok(());
        };
        if self.items_of(&[items, values], path)? == Some(Items::Maps) {
            return Err(StrategicError::BadPrimitiveList(format!(
                "{} holds maps, not primitives",
                join(path, field)
            )));
        }
        items.retain(|v| !values.contains(v));
        Ok(())
    }
}

/// The merge key's value of a patch item.
fn key_of<'v>(map: &'v Map<String, Value>, key: &str) -> Result<&'v Value, StrategicError> {
    map.get(key).ok_or_else(|| StrategicError::NoMergeKey {
        item: Value::Object(map.clone()).to_string(),
        key: key.to_string(),
    })
}

/// The merge key's value of a list item.
fn item_key<'v>(item: &'v Value, key: &str) -> Result<&'v Value, StrategicError> {
    item.get(key).ok_or_else(|| StrategicError::NoMergeKey {
        item: item.to_string(),
        key: key.to_string(),
    })
}

/// What identifies an item: its merge key's value, or itself.
fn ident<'v>(item: &'v Value, key: Option<&str>) -> Option<&'v Value> {
    match key {
        Some(key) => item.get(key),
        None => Some(item),
    }
}

fn position(list: &[Value], item: &Value, key: Option<&str>) -> Option<usize> {
    let wanted = ident(item, key);
    list.iter().position(|v| ident(v, key) == wanted)
}

/// Orders a merged list as patch.go's `normalizeElementOrder` does: the patched items in
/// the patch's (or `$setElementOrder`'s) order, the items only the server has in their live
/// order, interleaved so each server-only item stays before the live items it preceded.
fn order_items(
    mut patched: Vec<Value>,
    mut server_only: Vec<Value>,
    patch_order: &[Value],
    live_order: &[Value],
    key: Option<&str>,
) -> Result<Vec<Value>, StrategicError> {
    if let Some(key) = key {
        for item in patched.iter().chain(&server_only).chain(patch_order).chain(live_order) {
            item_key(item, key)?;
        }
    }
    let rank = |order: &[Value], item: &Value| position(order, item, key).unwrap_or(usize::MAX);
    patched.sort_by_key(|item| rank(patch_order, item));
    server_only.sort_by_key(|item| rank(live_order, item));
    let mut out = Vec::with_capacity(patched.len() + server_only.len());
    let (mut left, mut right) = (server_only.into_iter().peekable(), patched.into_iter().peekable());
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
            (Some(l), Some(r)) => match (position(live_order, l, key), position(live_order, r, key)) {
                (Some(li), Some(ri)) => li < ri,
                _ => false,
            },
        };
        out.extend(if take_left { left.next() } else { right.next() });
    }
    Ok(out)
}

/// patch.go's check that `$setElementOrder` lists the patch's items in the patch's order.
fn check_order(patch: &[Value], order: &[Value], key: Option<&str>, path: &str) -> Result<(), StrategicError> {
    let items: Vec<&Value> = patch
        .iter()
        .filter(|item| key.is_none() || item.get(PATCH).and_then(Value::as_str) != Some("delete"))
        .collect();
    let (mut p, mut o) = (0, 0);
    while p < items.len() && o < order.len() {
        if items[p].get(PATCH).is_some() {
            p += 1;
            continue;
        }
        let same = match key {
            Some(key) => item_key(items[p], key)? == item_key(&order[o], key)?,
            None => items[p] == &order[o],
        };
        if same {
            p += 1;
        }
        o += 1;
    }
    if p < items.len() {
        return Err(StrategicError::BadSetElementOrder(format!(
            "{path}: the order in patch list {} doesn't match $setElementOrder list {}",
            Value::Array(patch.to_vec()),
            Value::Array(order.to_vec())
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::schema::schemas;

    /// The schema of Kubernetes' own strategic merge test type (`mergeItem`), nested a few
    /// levels deep.
    fn merge_item(depth: usize) -> Value {
        let item = if depth == 0 {
            json!({"type": "object"})
        } else {
            merge_item(depth - 1)
        };
        let merging = json!({"type": "array", "items": item, "x-kubernetes-patch-strategy": "merge", "x-kubernetes-patch-merge-key": "name"});
        json!({"type": "object", "properties": {
            "name": {"type": "string"}, "value": {"type": "string"}, "other": {"type": "string"},
            "mergingList": merging,
            "mergeItemPtr": merging,
            "nonMergingList": {"type": "array", "items": item},
            "mergingIntList": {"type": "array", "items": {"type": "integer"}, "x-kubernetes-patch-strategy": "merge"},
            "nonMergingIntList": {"type": "array", "items": {"type": "integer"}},
            "simpleMap": {"type": "object", "additionalProperties": {"type": "string"}},
            "retainKeysMap": {"type": "object", "x-kubernetes-patch-strategy": "retainKeys", "properties": {
                "name": {"type": "string"}, "value": {"type": "string"}, "other": {"type": "string"},
                "simpleMap": {"type": "object", "additionalProperties": {"type": "string"}},
                "mergingList": merging,
                "nonMergingList": {"type": "array", "items": item},
                "mergingIntList": {"type": "array", "items": {"type": "integer"}, "x-kubernetes-patch-strategy": "merge"},
            }},
            "retainKeysMergingList": {"type": "array", "items": item, "x-kubernetes-patch-strategy": "merge,retainKeys", "x-kubernetes-patch-merge-key": "name"},
        }})
    }

    fn yaml(text: &str) -> Value {
        serde_yaml::from_str(text).unwrap_or_else(|e| panic!("bad test YAML {text}: {e}"))
    }

    /// `Ok(result)` or `Err(part of the error message)`.
    type Want = Result<&'static str, &'static str>;

    /// Cases of Kubernetes' strategic merge tests (patch.go's test suite), written anew:
    /// (description, live object, patch, result).
    const CASES: &[(&str, &str, &str, Want)] = &[
        ("add field to map", "name: 1", "value: 1", Ok("{name: 1, value: 1}")),
        ("add field and delete field from map", "name: 1", "{name: null, value: 1}", Ok("value: 1")),
        ("delete field from nested map", "simpleMap: {key1: 1, key2: 1}", "simpleMap: {key2: null}", Ok("simpleMap: {key1: 1}")),
        ("delete all fields from map", "{name: 1, value: 1}", "{name: null, value: null}", Ok("{}")),
        ("delete map from nested map", "simpleMap: {key1: 1, key2: 1}", "simpleMap: {$patch: delete}", Ok("simpleMap: {}")),
        ("delete all keys from map", "{name: 1, value: 1}", "$patch: replace", Ok("{}")),
        ("add key and delete all keys from map", "{name: 1, value: 1}", "{other: a, $patch: replace}", Ok("other: a")),
        ("replace list of scalars", "nonMergingIntList: [1, 2]", "nonMergingIntList: [2, 3]", Ok("nonMergingIntList: [2, 3]")),
        ("unique scalars when merging lists", "mergingIntList: [1, 2]", "mergingIntList: [2, 3]", Ok("mergingIntList: [1, 2, 3]")),
        ("merge empty merging lists", "mergingList: []", "mergingList: []", Ok("mergingList: []")),
        ("delete all items from merging list", "mergingList: [{name: 1}, {name: 2}]", "mergingList: [{$patch: replace}]", Ok("mergingList: []")),
        (
            "delete all duplicate entries in a merging list",
            "mergingList: [{name: 1}, {name: 1}, {name: 2, value: a}, {name: 3}, {name: 3}]",
            "mergingList: [{name: 1, $patch: delete}, {name: 3, $patch: delete}]",
            Ok("mergingList: [{name: 2, value: a}]"),
        ),
        (
            "merge lists of maps",
            "mergingList: [{name: 1, value: 1}, {name: 2, value: 2}]",
            "mergingList: [{name: 1, other: a}, {name: 3, value: 3}]",
            Ok("mergingList: [{name: 1, value: 1, other: a}, {name: 3, value: 3}, {name: 2, value: 2}]"),
        ),
        (
            "preserve the order from the patch in a merging list",
            "mergingList: [{name: 1}, {name: 2, value: b}, {name: 3}]",
            "mergingList: [{name: 3, value: c}, {name: 1, value: a}, {name: 2, other: x}]",
            Ok("mergingList: [{name: 3, value: c}, {name: 1, value: a}, {name: 2, value: b, other: x}]"),
        ),
        (
            "preserve the order from the patch in a merging list 2",
            "mergingList: [{name: 1}, {name: 2, value: b}, {name: 3}]",
            "mergingList: [{name: 3, value: c}, {name: 1, value: a}]",
            Ok("mergingList: [{name: 2, value: b}, {name: 3, value: c}, {name: 1, value: a}]"),
        ),
        ("preserve the order from the patch in a merging int list", "mergingIntList: [1, 2, 3]", "mergingIntList: [3, 1, 2]", Ok("mergingIntList: [3, 1, 2]")),
        ("preserve the order from the patch in a merging int list 2", "mergingIntList: [1, 2, 3]", "mergingIntList: [3, 1]", Ok("mergingIntList: [2, 3, 1]")),
        (
            "delete map from merging list",
            "mergingList: [{name: 1}, {name: 2}]",
            "mergingList: [{name: 1, $patch: delete}]",
            Ok("mergingList: [{name: 2}]"),
        ),
        ("delete missing map from merging list", "mergingList: [{name: 1}]", "mergingList: [{name: 2, $patch: delete}]", Ok("mergingList: [{name: 1}]")),
        (
            "delete field from map in merging list",
            "mergingList: [{name: 1, value: 1}, {name: 2, value: 2}]",
            "mergingList: [{name: 1, value: null}]",
            Ok("mergingList: [{name: 1}, {name: 2, value: 2}]"),
        ),
        (
            "replace non merging list nested in merging list",
            "mergingList: [{name: 1, other: a, nonMergingList: [{name: 1}, {name: 2, value: 2}]}, {name: 2, other: b}]",
            "{$setElementOrder/mergingList: [{name: 1}, {name: 2}], mergingList: [{name: 1, nonMergingList: [{name: 1, value: 1}]}]}",
            Ok("mergingList: [{name: 1, other: a, nonMergingList: [{name: 1, value: 1}]}, {name: 2, other: b}]"),
        ),
        (
            "add field to map in merging list nested in merging list",
            "mergingList: [{name: 1, mergingList: [{name: 1}, {name: 2, value: 2}]}, {name: 2}]",
            "mergingList: [{name: 1, mergingList: [{name: 1, value: 1}]}]",
            Ok("mergingList: [{name: 1, mergingList: [{name: 1, value: 1}, {name: 2, value: 2}]}, {name: 2}]"),
        ),
        (
            "add an item in a list and preserve order",
            "mergingList: [{name: 1, other: a}, {name: 2, value: 2, other: b}]",
            "{$setElementOrder/mergingList: [{name: 3}, {name: 1}, {name: 2}], mergingList: [{name: 3, value: 3}]}",
            Ok("mergingList: [{name: 3, value: 3}, {name: 1, other: a}, {name: 2, value: 2, other: b}]"),
        ),
        (
            "set elements order in a list with server-only items",
            "mergingList: [{name: 1, other: a}, {name: 3, value: 3}, {name: 4, value: 4}, {name: 2, value: 2}, {name: 9}]",
            "$setElementOrder/mergingList: [{name: 4}, {name: 2}, {name: 3}, {name: 1}]",
            Ok("mergingList: [{name: 4, value: 4}, {name: 2, value: 2}, {name: 3, value: 3}, {name: 1, other: a}, {name: 9}]"),
        ),
        (
            "set elements order in a list with server-only items 2",
            "mergingList: [{name: 1, other: a}, {name: 2, value: 2}, {name: 9}, {name: 3, value: 3}, {name: 4, value: 4}]",
            "$setElementOrder/mergingList: [{name: 2}, {name: 1}, {name: 4}, {name: 3}]",
            Ok("mergingList: [{name: 2, value: 2}, {name: 1, other: a}, {name: 9}, {name: 4, value: 4}, {name: 3, value: 3}]"),
        ),
        (
            "set elements order in a list with server-only items 3",
            "mergingList: [{name: 1, other: a}, {name: 2, value: 2}, {name: 7}, {name: 9}, {name: 8}, {name: 3, value: 3}, {name: 4, value: 4}]",
            "$setElementOrder/mergingList: [{name: 2}, {name: 1}, {name: 4}, {name: 3}]",
            Ok("mergingList: [{name: 2, value: 2}, {name: 1, other: a}, {name: 7}, {name: 9}, {name: 8}, {name: 4, value: 4}, {name: 3, value: 3}]"),
        ),
        (
            "set elements order in an int list with server-only items",
            "mergingIntList: [1, 3, 4, 2, 9]",
            "$setElementOrder/mergingIntList: [4, 2, 3, 1]",
            Ok("mergingIntList: [4, 2, 3, 1, 9]"),
        ),
        (
            "$setElementOrder contains item that is not present in the list to be merged",
            "mergingList: [{name: 1}, {name: 3}]",
            "{$setElementOrder/mergingList: [{name: 3}, {name: 2}, {name: 1}], mergingList: [{name: 3, value: 3}, {name: 1, value: 1}]}",
            Ok("mergingList: [{name: 3, value: 3}, {name: 1, value: 1}]"),
        ),
        (
            "should check if order in $setElementOrder and patch list match",
            "mergingList: [{name: 1}, {name: 3}, {name: 2}]",
            "{$setElementOrder/mergingList: [{name: 1}, {name: 2}, {name: 3}], mergingList: [{name: 3, value: 3}, {name: 1, value: 1}]}",
            Err("doesn't match"),
        ),
        (
            "delete and reorder in one list, reorder in another",
            "{mergingList: [{name: a, value: a}, {name: b, value: b}], mergeItemPtr: [{name: c, value: c}, {name: d, value: d}]}",
            "{$setElementOrder/mergingList: [{name: b}], $setElementOrder/mergeItemPtr: [{name: d}, {name: c}], mergingList: [{name: a, $patch: delete}]}",
            Ok("{mergingList: [{name: b, value: b}], mergeItemPtr: [{name: d, value: d}, {name: c, value: c}]}"),
        ),
        ("missing merge key should error out", "mergingList: [{name: 1, value: a}]", "mergingList: [{value: b}]", Err("does not contain declared merge key: name")),
        ("$deleteFromPrimitiveList of nonexistent item", "mergingIntList: [1, 2]", "$deleteFromPrimitiveList/mergingIntList: [3]", Ok("mergingIntList: [1, 2]")),
        ("$deleteFromPrimitiveList on nonexistent primitive list", "foo: [bar]", "$deleteFromPrimitiveList/mergingIntList: [3]", Ok("foo: [bar]")),
        ("$deleteFromPrimitiveList from a merging list", "mergingIntList: [1, 2, 3]", "$deleteFromPrimitiveList/mergingIntList: [2]", Ok("mergingIntList: [1, 3]")),
        ("$deleteFromPrimitiveList from a non-merging list", "nonMergingIntList: [1, 2, 3]", "$deleteFromPrimitiveList/nonMergingIntList: [2]", Ok("nonMergingIntList: [1, 3]")),
        (
            "add and delete items in lists of scalars",
            "mergingIntList: [1, 2, 3]",
            "{$setElementOrder/mergingIntList: [1, 2, 4], mergingIntList: [4], $deleteFromPrimitiveList/mergingIntList: [3]}",
            Ok("mergingIntList: [1, 2, 4]"),
        ),
        ("retainKeys map can add a field when no retainKeys directive present", "retainKeysMap: {name: foo}", "retainKeysMap: {value: bar}", Ok("retainKeysMap: {name: foo, value: bar}")),
        ("retainKeys map merge an empty map", "retainKeysMap: {name: foo, value: a}", "retainKeysMap: {}", Ok("retainKeysMap: {name: foo, value: a}")),
        ("retainKeys map should clear defaulted field", "retainKeysMap: {value: foo}", "retainKeysMap: {$retainKeys: [other], other: bar}", Ok("retainKeysMap: {other: bar}")),
        (
            "retainKeys map should clear defaulted field (discriminated union)",
            "retainKeysMap: {name: type1, value: foo}",
            "retainKeysMap: {$retainKeys: [name, other], name: type2, other: bar}",
            Ok("retainKeysMap: {name: type2, other: bar}"),
        ),
        (
            "retainKeys map replaces non-merging list",
            "retainKeysMap: {name: foo, value: bar, nonMergingList: [{name: a}, {name: b}]}",
            "retainKeysMap: {$retainKeys: [name, nonMergingList, value], nonMergingList: [{name: a}, {name: c}, {name: b}]}",
            Ok("retainKeysMap: {name: foo, value: bar, nonMergingList: [{name: a}, {name: c}, {name: b}]}"),
        ),
        (
            "retainKeys list of maps clears a field",
            "retainKeysMergingList: [{name: bar}, {name: foo, value: a, other: x}]",
            "retainKeysMergingList: [{name: foo, $retainKeys: [name, value]}]",
            Ok("retainKeysMergingList: [{name: bar}, {name: foo, value: a}]"),
        ),
        ("retainKeys rejects a patched field it does not list", "retainKeysMap: {name: a}", "retainKeysMap: {$retainKeys: [name], value: b}", Err("retainKeys")),
        ("retainKeys must be a list", "retainKeysMap: {name: a}", "retainKeysMap: {$retainKeys: name}", Err("retainKeys")),
        ("an unknown $patch is an error", "simpleMap: {a: b}", "simpleMap: {$patch: frobnicate}", Err("unknown patch type")),
        ("an unknown $patch in a list item is an error", "mergingList: [{name: 1}]", "mergingList: [{name: 1, $patch: frobnicate}]", Err("unknown patch type")),
        ("an unknown directive is an error", "name: 1", "$frobnicate/name: 1", Err("unknown strategic merge patch directive")),
        ("$patch: merge is the default, on a map", "simpleMap: {a: b}", "simpleMap: {$patch: merge, c: d}", Ok("simpleMap: {a: b, c: d}")),
        ("$patch: merge is the default, in a list", "mergingList: [{name: 1, value: 1}]", "mergingList: [{name: 1, $patch: merge, other: a}]", Ok("mergingList: [{name: 1, value: 1, other: a}]")),
        ("new content has its directives applied", "{}", "{simpleMap: {$patch: replace, a: b}, mergingList: [{name: 1}, {$patch: replace}]}", Ok("{simpleMap: {a: b}, mergingList: [{name: 1}]}")),
        ("a replaced list drops directive items", "nonMergingList: [{name: 1}]", "nonMergingList: [{name: 2}, {name: 3, $patch: delete}]", Ok("nonMergingList: [{name: 2}]")),
        ("a null in new content is dropped", "{}", "simpleMap: {a: b, c: null}", Ok("simpleMap: {a: b}")),
        ("lists of lists cannot merge", "mergingIntList: [1]", "mergingIntList: [[2]]", Err("lists of lists")),
        ("a merging list cannot mix maps and primitives", "mergingIntList: [1]", "mergingIntList: [{a: 1}]", Err("not identical")),
        ("a value of another type replaces", "simpleMap: {a: b}", "simpleMap: [1]", Ok("simpleMap: [1]")),
    ];

    #[test]
    fn kubernetes_strategic_merge_cases() {
        let schema = merge_item(4);
        for (description, live, patch, want) in CASES {
            let got = merge(schemas(), &schema, &yaml(live), &yaml(patch));
            match (want, got) {
                (Ok(want), Ok(got)) => assert_eq!(got, yaml(want), "{description}"),
                (Err(part), Err(e)) => assert!(e.to_string().contains(part), "{description}: {e}"),
                (want, got) => panic!("{description}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    fn deployment() -> Value {
        yaml(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, finalizers: [a, b]}
spec:
  replicas: 1
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  template:
    spec:
      tolerations: [{key: a, operator: Exists}, {key: b, operator: Exists}]
      volumes: [{name: data, emptyDir: {}}]
      containers:
      - name: app
        image: app:1
        env: [{name: A, value: "1"}, {name: B, value: "2"}]
        ports: [{containerPort: 80}]
      - name: sidecar
        image: sidecar:1
"#,
        )
    }

    /// The real schema: containers, env and ports merge by key, tolerations are replaced,
    /// volumes and the strategy honour `$retainKeys`, finalizers are a set.
    #[test]
    fn deployment_lists_merge_as_kubernetes_declares() {
        let s = schemas();
        let res = crate::api::registry::by_kind("apps/v1", "Deployment").unwrap();
        let schema = s.root(res).unwrap();
        let cases: &[(&str, &str, &str)] = &[
            (
                "containers merge by name, env by name",
                r#"spec: {template: {spec: {containers: [{name: app, image: app:2, env: [{name: B, value: "3"}, {name: C, value: "4"}]}]}}}"#,
                r#"[{name: app, image: app:2, env: [{name: A, value: "1"}, {name: B, value: "3"}, {name: C, value: "4"}], ports: [{containerPort: 80}]}, {name: sidecar, image: sidecar:1}]"#,
            ),
            (
                "a container is deleted by key",
                "spec: {template: {spec: {containers: [{name: sidecar, $patch: delete}]}}}",
                r#"[{name: app, image: app:1, env: [{name: A, value: "1"}, {name: B, value: "2"}], ports: [{containerPort: 80}]}]"#,
            ),
            (
                "ports merge by containerPort",
                "spec: {template: {spec: {containers: [{name: sidecar, ports: [{containerPort: 9090, name: metrics}]}]}}}",
                r#"[{name: app, image: app:1, env: [{name: A, value: "1"}, {name: B, value: "2"}], ports: [{containerPort: 80}]}, {name: sidecar, image: sidecar:1, ports: [{containerPort: 9090, name: metrics}]}]"#,
            ),
        ];
        for (description, patch, containers) in cases {
            let got = merge(s, schema, &deployment(), &yaml(patch)).unwrap();
            assert_eq!(
                got.pointer("/spec/template/spec/containers"),
                Some(&yaml(containers)),
                "{description}"
            );
        }

        let got = merge(
            s,
            schema,
            &deployment(),
            &yaml("spec: {template: {spec: {tolerations: [{key: c, operator: Exists}]}}}"),
        )
        .unwrap();
        assert_eq!(
            got.pointer("/spec/template/spec/tolerations"),
            Some(&yaml("[{key: c, operator: Exists}]"))
        );

        let recreate = "spec: {strategy: {$retainKeys: [type], type: Recreate}}";
        let got = merge(s, schema, &deployment(), &yaml(recreate)).unwrap();
        assert_eq!(got.pointer("/spec/strategy"), Some(&yaml("{type: Recreate}")));

        let volume = "spec: {template: {spec: {volumes: [{name: data, $retainKeys: [configMap, name], configMap: {name: cm}}]}}}";
        let got = merge(s, schema, &deployment(), &yaml(volume)).unwrap();
        assert_eq!(
            got.pointer("/spec/template/spec/volumes"),
            Some(&yaml("[{name: data, configMap: {name: cm}}]"))
        );

        let finalizers = "metadata: {finalizers: [c, a], $deleteFromPrimitiveList/finalizers: [b]}";
        let got = merge(s, schema, &deployment(), &yaml(finalizers)).unwrap();
        assert_eq!(got.pointer("/metadata/finalizers"), Some(&yaml("[c, a]")));

        // Any definition works, not only a kind's root: the renderer patches with those too.
        let pod_spec = s.definitions.get("io.k8s.api.core.v1.PodSpec").unwrap();
        let live = deployment().pointer("/spec/template/spec").cloned().unwrap();
        let got = merge(s, pod_spec, &live, &yaml("containers: [{name: app, image: app:3}]")).unwrap();
        assert_eq!(got.pointer("/containers/0/image"), Some(&json!("app:3")));
        assert_eq!(got.pointer("/containers/1/name"), Some(&json!("sidecar")));

        assert_eq!(
            merge(s, schema, &json!([]), &json!({})),
            Err(StrategicError::NotAnObject)
        );
    }
}
