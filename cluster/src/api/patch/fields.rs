//! Field sets as server-side apply keeps them (sigs.k8s.io/structured-merge-diff): which
//! fields of an object a manager owns, their `fieldsV1` form in `metadata.managedFields`,
//! and the schema-driven walks over objects that apply needs: an object's field set, the
//! difference of two objects, the merge of an applied configuration into an object, and
//! the removal of a set of fields.
//!
//! How a value is owned comes from its schema: a struct's fields and a map's keys are owned
//! one by one unless the type is atomic (`x-kubernetes-map-type: atomic`); a list is owned
//! whole (`atomic`, the default), item by item by value (`set`), or item by item by its key
//! fields (`map`). A value the schema says nothing about is owned like a JSON map, or whole
//! if it is a list.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde_json::{Map, Value};

use crate::api::schema::Schemas;

/// Why a field set cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldsError {
    /// An item of a list map lacks one of the list's keys.
    #[error("{path}: associative list with keys has an element that omits key field {key:?} (and doesn't have default value)")]
    MissingKey { path: String, key: String },
    /// An item of a list map is not a map.
    #[error("{path}: associative list with keys may not have non-map elements")]
    NotAMap { path: String },
    /// An item of a set is a map, a list or null.
    #[error("{path}: associative list without keys may only have primitive elements")]
    NotAPrimitive { path: String },
    /// Two items of a list in an applied configuration have the same key.
    #[error("{path}: duplicate entries for key {key}")]
    Duplicate { path: String, key: String },
    /// A `fieldsV1` value that is not Kubernetes' format.
    #[error("invalid fieldsV1: {0}")]
    BadFieldsV1(String),
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathElement {
    /// A field of a struct or a key of a map: `f:<name>`.
    Field(String),
    /// An item of a list map, by its key fields' values (JSON text, sorted by field):
    /// `k:{"name":"c"}`.
    Key(Vec<(String, String)>),
    /// An item of a set, by its value (JSON text): `v:"x"`.
    Value(String),
    /// An item by position: `i:<n>` (read from fieldsV1 written elsewhere).
    Index(usize),
}

impl PathElement {
    /// The element's `fieldsV1` key.
    pub fn to_fields_v1(&self) -> String {
        match self {
            PathElement::Field(name) => format!("f:{name}"),
            PathElement::Key(keys) => {
                let fields: Vec<String> = keys
                    .iter()
                    .map(|(name, value)| format!("{}:{value}", Value::String(name.clone())))
                    .collect();
                format!("k:{{{}}}", fields.join(","))
            }
            PathElement::Value(value) => format!("v:{value}"),
            PathElement::Index(i) => format!("i:{i}"),
        }
    }

    /// Parses a `fieldsV1` key (anything but `.`).
    pub fn from_fields_v1(s: &str) -> Result<Self, FieldsError> {
        let bad = || FieldsError::BadFieldsV1(format!("{s:?} is no path element"));
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        match kind {
            "f" => Ok(PathElement::Field(rest.to_string())),
            "k" => match serde_json::from_str::<Value>(rest) {
                Ok(Value::Object(keys)) => Ok(PathElement::Key(
                    keys.into_iter().map(|(k, v)| (k, v.to_string())).collect(),
                )),
                _ => Err(bad()),
            },
            // Re-serialized so two spellings of one value are one element.
            "v" => serde_json::from_str::<Value>(rest)
                .map(|v| PathElement::Value(v.to_string()))
                .map_err(|_| bad()),
            "i" => rest.parse().map(PathElement::Index).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for PathElement {
    /// As Kubernetes prints paths in conflicts: `.spec`, `[name="c"]`, `[="x"]`, `[0]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathElement::Field(name) => write!(f, ".{name}"),
            PathElement::Key(keys) => {
                let keys: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "[{}]", keys.join(","))
            }
            PathElement::Value(v) => write!(f, "[={v}]"),
            PathElement::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// A field path, printed as Kubernetes does (`.spec.containers[name="c"].image`).
pub fn path_string(path: &[PathElement]) -> String {
    path.iter().map(ToString::to_string).collect()
}

/// A set of field paths. A path is a member if it is owned itself; its ancestors are
/// only containers unless they are members too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    members: BTreeSet<PathElement>,
    children: BTreeMap<PathElement, FieldSet>,
}

impl FieldSet {
    /// The empty set.
    pub fn new() -> Self {
        FieldSet::default()
    }

    /// Whether the set has no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.children.is_empty()
    }

    /// Adds a path (the empty path, the object itself, is never a member).
    pub fn insert(&mut self, path: &[PathElement]) {
        match path {
            [] => {}
            [last] => {
                self.members.insert(last.clone());
            }
            [first, rest @ ..] => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    /// Whether `path` is a member.
    pub fn contains(&self, path: &[PathElement]) -> bool {
        match path {
            [] => false,
            [last] => self.members.contains(last),
            [first, rest @ ..] => self.children.get(first).is_some_and(|c| c.contains(rest)),
        }
    }

    /// The members below `element`, relative to it.
    pub fn child(&self, element: &PathElement) -> Option<&FieldSet> {
        self.children.get(element)
    }

    /// Every member of either set.
    pub fn union(&self, other: &FieldSet) -> FieldSet {
        let mut out = self.clone();
        out.extend(other);
        out
    }

    /// Adds every member of `other`, in place: no copy of what this set already holds.
    pub fn extend(&mut self, other: &FieldSet) {
        for pe in &other.members {
            if !self.members.contains(pe) {
                self.members.insert(pe.clone());
            }
        }
        for (pe, child) in &other.children {
            match self.children.get_mut(pe) {
                Some(mine) => mine.extend(child),
                None => {
                    self.children.insert(pe.clone(), child.clone());
                }
            }
        }
    }

    /// The members of this set that are not members of `other` (a member of `other` does
    /// not take away the paths below it).
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let members = self.members.difference(&other.members).cloned().collect();
        let mut children = BTreeMap::new();
        for (pe, child) in &self.children {
            let rest = match other.children.get(pe) {
                Some(theirs) => child.difference(theirs),
                None => child.clone(),
            };
            if !rest.is_empty() {
                children.insert(pe.clone(), rest);
            }
        }
        FieldSet { members, children }
    }

    /// The members of both sets.
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let members = self.members.intersection(&other.members).cloned().collect();
        let mut children = BTreeMap::new();
        for (pe, child) in &self.children {
            if let Some(theirs) = other.children.get(pe) {
                let both = child.intersection(theirs);
                if !both.is_empty() {
                    children.insert(pe.clone(), both);
                }
            }
        }
        FieldSet { members, children }
    }

    /// Whether the sets share a member (the intersection is not empty), without building
    /// the intersection.
    pub fn meets(&self, other: &FieldSet) -> bool {
        self.members.iter().any(|pe| other.members.contains(pe))
            || self
                .children
                .iter()
                .any(|(pe, child)| other.children.get(pe).is_some_and(|theirs| child.meets(theirs)))
    }

    /// Every member's path, each level's members before the paths below it.
    pub fn paths(&self) -> Vec<Vec<PathElement>> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Vec<PathElement>, out: &mut Vec<Vec<PathElement>>) {
        for pe in &self.members {
            prefix.push(pe.clone());
            out.push(prefix.clone());
            prefix.pop();
        }
        for (pe, child) in &self.children {
            prefix.push(pe.clone());
            child.collect(prefix, out);
            prefix.pop();
        }
    }

    /// The set in Kubernetes' `fieldsV1` form: `{"f:spec":{"f:replicas":{}}}`, with `"."`
    /// marking a member that also has members below it.
    pub fn to_fields_v1(&self) -> Value {
        let mut out = Map::new();
        for pe in self.members.iter().filter(|pe| !self.children.contains_key(*pe)) {
            out.insert(pe.to_fields_v1(), Value::Object(Map::new()));
        }
        for (pe, child) in &self.children {
            let mut inner = match child.to_fields_v1() {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            if self.members.contains(pe) {
                inner.insert(".".into(), Value::Object(Map::new()));
            }
            out.insert(pe.to_fields_v1(), Value::Object(inner));
        }
        Value::Object(out)
    }

    /// Reads Kubernetes' `fieldsV1` form.
    pub fn from_fields_v1(value: &Value) -> Result<FieldSet, FieldsError> {
        let Value::Object(map) = value else {
            return Err(FieldsError::BadFieldsV1(format!("expected an object, got {value}")));
        };
        let mut set = FieldSet::new();
        for (key, inner) in map {
            if key == "." {
                continue;
            }
            let pe = PathElement::from_fields_v1(key)?;
            let Value::Object(inner_map) = inner else {
                return Err(FieldsError::BadFieldsV1(format!(
                    "{key}: expected an object, got {inner}"
                )));
            };
            let below = FieldSet::from_fields_v1(inner)?;
            if inner_map.is_empty() || inner_map.contains_key(".") {
                set.members.insert(pe.clone());
            }
            if !below.is_empty() {
                set.children.insert(pe, below);
            }
        }
        Ok(set)
    }
}

/// How a list is owned and merged.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ListKind<'s> {
    /// Whole.
    Atomic,
    /// Item by item, by value.
    Set,
    /// Item by item, by the values of these fields.
    Map(Vec<&'s str>),
}

/// How a schema node holds its value.
#[derive(Debug, Clone)]
enum Shape<'s> {
    /// Named fields (the resolved schema), owned one by one unless atomic.
    Struct { schema: &'s Value, atomic: bool },
    /// Keys with values of one schema (if known), owned one by one unless atomic.
    Map { values: Option<&'s Value>, atomic: bool },
    /// A list with items of one schema (if known).
    List {
        items: Option<&'s Value>,
        kind: ListKind<'s>,
    },
    /// Owned whole.
    Scalar,
}

impl Shape<'_> {
    fn granular(&self) -> bool {
        match self {
            Shape::Struct { atomic, .. } | Shape::Map { atomic, .. } => !atomic,
            Shape::List { kind, .. } => *kind != ListKind::Atomic,
            Shape::Scalar => false,
        }
    }
}

/// The JSON kind of a value, to tell a value that does not fit its schema.
fn kind_of(v: &Value) -> u8 {
    match v {
        Value::Object(_) => 1,
        Value::Array(_) => 2,
        _ => 0,
    }
}

/// A list's items grouped by their path element, in order of first appearance.
type Groups<'v> = Vec<(PathElement, Vec<&'v Value>)>;

/// The items of `groups` at `pe` (none if it has none there).
fn group_of<'a, 'v>(groups: &'a Groups<'v>, pe: &PathElement) -> &'a [&'v Value] {
    groups
        .iter()
        .find(|(p, _)| p == pe)
        .map(|(_, g)| g.as_slice())
        .unwrap_or_default()
}

/// Fields a comparison passes over as if absent.
struct Skip<'a> {
    /// Top-level fields (`metadata.managedFields` is always passed over).
    top: &'a [&'a str],
}

impl Skip<'_> {
    /// Whether the field `key` of the object at `path` is passed over.
    fn skips(&self, path: &[PathElement], key: &str) -> bool {
        match path {
            [] => self.top.contains(&key),
            [PathElement::Field(meta)] => meta == "metadata" && key == "managedFields",
            _ => false,
        }
    }

    /// Whether `map` (of one member) at `path` holds nothing but passed-over fields.
    fn skips_all(&self, path: &[PathElement], map: &serde_json::Map<String, Value>) -> bool {
        map.keys().all(|k| self.skips(path, k))
    }
}

/// Schema-driven walks over objects.
pub(crate) struct Walker<'s> {
    schemas: &'s Schemas,
}

impl<'s> Walker<'s> {
    pub(crate) fn new(schemas: &'s Schemas) -> Self {
        Walker { schemas }
    }

    fn extension(&self, schema: &'s Value, name: &str) -> Option<&'s Value> {
        schema.get(name).or_else(|| self.schemas.resolve(schema).get(name))
    }

    /// The shape of a value of schema `schema`; without a schema, of the value as JSON.
    fn shape(&self, schema: Option<&'s Value>, value: Option<&Value>) -> Shape<'s> {
        let Some(schema) = schema else {
            return match value {
                Some(Value::Object(_)) => Shape::Map {
                    values: None,
                    atomic: false,
                },
                Some(Value::Array(_)) => Shape::List {
                    items: None,
                    kind: ListKind::Atomic,
                },
                _ => Shape::Scalar,
            };
        };
        let resolved = self.schemas.resolve(schema);
        let atomic = self.extension(schema, "x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic");
        if resolved.get("properties").is_some() {
            return Shape::Struct {
                schema: resolved,
                atomic,
            };
        }
        let values = resolved.get("additionalProperties").filter(|a| a.is_object());
        match resolved.get("type").and_then(Value::as_str) {
            Some("object") => Shape::Map { values, atomic },
            Some("array") => Shape::List {
                items: resolved.get("items"),
                kind: self.list_kind(schema),
            },
            Some(_) => Shape::Scalar,
            None if values.is_some() => Shape::Map { values, atomic },
            // int-or-string and the like: as the value is.
            None => self.shape(None, value),
        }
    }

    fn list_kind(&self, schema: &'s Value) -> ListKind<'s> {
        let text = |name| self.extension(schema, name).and_then(Value::as_str);
        match text("x-kubernetes-list-type") {
            Some("atomic") => return ListKind::Atomic,
            Some("set") => return ListKind::Set,
            Some("map") => {
                let keys = self
                    .extension(schema, "x-kubernetes-list-map-keys")
                    .and_then(Value::as_array);
                return ListKind::Map(keys.into_iter().flatten().filter_map(Value::as_str).collect());
            }
            _ => {}
        }
        // Without a list type, a merging patch strategy says how (as Kubernetes' OpenAPI
        // to structured-merge-diff conversion reads it).
        let merges = text("x-kubernetes-patch-strategy").is_some_and(|s| s.split(',').any(|s| s == "merge"));
        match (merges, text("x-kubernetes-patch-merge-key")) {
            (true, Some(key)) => ListKind::Map(vec![key]),
            (true, None) => ListKind::Set,
            (false, _) => ListKind::Atomic,
        }
    }

    /// The schema of a child of a struct or map.
    fn field_schema(&self, shape: &Shape<'s>, field: &str) -> Option<&'s Value> {
        match shape {
            Shape::Struct { schema, .. } => schema.get("properties").and_then(|p| p.get(field)),
            Shape::Map { values, .. } => *values,
            _ => None,
        }
    }

    /// The path element of a list item.
    fn item_element(
        &self,
        kind: &ListKind<'s>,
        items: Option<&'s Value>,
        item: &Value,
        path: &[PathElement],
    ) -> Result<PathElement, FieldsError> {
        let at = || path_string(path);
        match kind {
            ListKind::Map(keys) => {
                let Value::Object(map) = item else {
                    return Err(FieldsError::NotAMap { path: at() });
                };
                let props = items.map(|s| self.schemas.resolve(s)).and_then(|s| s.get("properties"));
                let mut out = Vec::with_capacity(keys.len());
                for key in keys {
                    let value = map
                        .get(*key)
                        .or_else(|| props.and_then(|p| p.get(*key)).and_then(|p| p.get("default")))
                        .ok_or_else(|| FieldsError::MissingKey {
                            path: at(),
                            key: key.to_string(),
                        })?;
                    out.push((key.to_string(), value.to_string()));
                }
                out.sort();
                Ok(PathElement::Key(out))
            }
            _ if item.is_object() || item.is_array() || item.is_null() => {
                Err(FieldsError::NotAPrimitive { path: at() })
            }
            _ => Ok(PathElement::Value(item.to_string())),
        }
    }

    /// The elements of a list's items, in order.
    fn item_elements(
        &self,
        kind: &ListKind<'s>,
        items: Option<&'s Value>,
        list: &[Value],
        path: &[PathElement],
    ) -> Result<Vec<PathElement>, FieldsError> {
        list.iter()
            .map(|item| self.item_element(kind, items, item, path))
            .collect()
    }

    /// Every field path `value` sets (structured-merge-diff's `ToFieldSet`): leaves, list
    /// items, and empty or null maps.
    pub(crate) fn field_set(&self, schema: &'s Value, value: &Value) -> Result<FieldSet, FieldsError> {
        let mut set = FieldSet::new();
        self.set_of(
            &self.shape(Some(schema), Some(value)),
            value,
            &mut Vec::new(),
            &mut set,
            false,
        )?;
        Ok(set)
    }

    /// The field set of an applied configuration, where two list items with one key are an
    /// error (a live object may have them; a configuration must say what it means).
    pub(crate) fn applied_field_set(&self, schema: &'s Value, value: &Value) -> Result<FieldSet, FieldsError> {
        let mut set = FieldSet::new();
        self.set_of(
            &self.shape(Some(schema), Some(value)),
            value,
            &mut Vec::new(),
            &mut set,
            true,
        )?;
        Ok(set)
    }

    fn set_of(
        &self,
        shape: &Shape<'s>,
        value: &Value,
        path: &mut Vec<PathElement>,
        set: &mut FieldSet,
        unique: bool,
    ) -> Result<(), FieldsError> {
        if !shape.granular() {
            set.insert(path);
            return Ok(());
        }
        match (shape, value) {
            (Shape::Struct { .. } | Shape::Map { .. }, Value::Object(map)) => {
                for (key, v) in map {
                    path.push(PathElement::Field(key.clone()));
                    let field_schema = self.field_schema(shape, key);
                    self.set_of(&self.shape(field_schema, Some(v)), v, path, set, unique)?;
                    // A null or empty map is owned as such; so is every map key (only
                    // struct fields are containers alone).
                    let empty = v.is_null() || v.as_object().is_some_and(Map::is_empty);
                    if empty || !matches!(shape, Shape::Struct { .. }) || field_schema.is_none() {
                        set.insert(path);
                    }
                    path.pop();
                }
            }
            (Shape::List { items, kind }, Value::Array(list)) => {
                let elements = self.item_elements(kind, *items, list, path)?;
                let mut seen = HashMap::new();
                for pe in &elements {
                    let count = seen.entry(pe).or_insert(0);
                    *count += 1;
                    if unique && *count > 1 {
                        return Err(FieldsError::Duplicate {
                            path: path_string(path),
                            key: pe.to_string(),
                        });
                    }
                }
                for (pe, item) in elements.iter().zip(list) {
                    path.push(pe.clone());
                    // A duplicated item is owned whole: it cannot be told apart from its twin.
                    if seen[pe] == 1 {
                        self.set_of(&self.shape(*items, Some(item)), item, path, set, unique)?;
                    }
                    set.insert(path);
                    path.pop();
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The fields `new` adds, changes and removes relative to `old` (structured-merge-diff's
    /// `Compare`), as if both objects had neither the top-level fields `skipped` nor
    /// `metadata.managedFields`: passed over, not copied away (this runs on every write).
    pub(crate) fn compare_without(
        &self,
        schema: &'s Value,
        old: &Value,
        new: &Value,
        skipped: &[&str],
    ) -> Result<Comparison, FieldsError> {
        let mut out = Comparison::default();
        let shape = self.shape(Some(schema), Some(new));
        let skip = Skip { top: skipped };
        self.cmp(&shape, Some(old), Some(new), &mut Vec::new(), &mut out, &skip)?;
        Ok(out)
    }

    fn cmp<'v>(
        &self,
        shape: &Shape<'s>,
        old: Option<&'v Value>,
        new: Option<&'v Value>,
        path: &mut Vec<PathElement>,
        out: &mut Comparison,
        skip: &Skip,
    ) -> Result<(), FieldsError> {
        let leaf = |out: &mut Comparison| match (old, new) {
            (None, Some(_)) => out.added.insert(path),
            (Some(_), None) => out.removed.insert(path),
            (Some(a), Some(b)) if a != b => out.modified.insert(path),
            _ => {}
        };
        if let (Some(a), Some(b)) = (old, new) {
            // Equal values add, change and remove nothing. Most of an update is unchanged
            // (a pod's spec under a status write), so this skips nearly all of it; the
            // price is that a malformed list inside an unchanged part goes unnoticed here.
            if a == b {
                return Ok(());
            }
            if kind_of(a) != kind_of(b) {
                // The value changed kind: what was below it is gone.
                let mut was = FieldSet::new();
                self.set_of(&self.shape(None, Some(a)), a, &mut path.clone(), &mut was, false)?;
                out.removed.extend(&was);
                out.modified.insert(path);
                return Ok(());
            }
        }
        let empty = |v: Option<&Value>| match v {
            None => true,
            Some(Value::Object(m)) => skip.skips_all(path, m),
            Some(Value::Array(l)) => l.is_empty(),
            Some(_) => false,
        };
        if !shape.granular() {
            leaf(out);
            return Ok(());
        }
        if empty(old) && empty(new) {
            // Nothing inside either that the comparison sees: only presence tells them apart.
            match (old, new) {
                (None, Some(_)) => out.added.insert(path),
                (Some(_), None) => out.removed.insert(path),
                _ => {}
            }
            return Ok(());
        }
        match shape {
            Shape::Struct { .. } | Shape::Map { .. } => {
                let (a, b) = (old.and_then(Value::as_object), new.and_then(Value::as_object));
                // Every key of either, once (the comparison's sets do not depend on order).
                let only_new = b
                    .into_iter()
                    .flat_map(|m| m.keys())
                    .filter(|k| a.is_none_or(|a| !a.contains_key(*k)));
                for key in a.into_iter().flat_map(|m| m.keys()).chain(only_new) {
                    if skip.skips(path, key) {
                        continue;
                    }
                    let (x, y) = (a.and_then(|m| m.get(key)), b.and_then(|m| m.get(key)));
                    let field_schema = self.field_schema(shape, key);
                    path.push(PathElement::Field(key.clone()));
                    self.cmp(&self.shape(field_schema, y.or(x)), x, y, path, out, skip)?;
                    path.pop();
                }
            }
            Shape::List { items, kind } => {
                // Items are grouped by their element by reference: a pod's containers are
                // compared where they lie, not copied at every level.
                let group = |list: Option<&'v Value>| -> Result<Groups<'v>, FieldsError> {
                    let mut groups: Groups<'v> = Vec::new();
                    for item in list.and_then(Value::as_array).into_iter().flatten() {
                        let pe = self.item_element(kind, *items, item, path)?;
                        match groups.iter_mut().find(|(p, _)| *p == pe) {
                            Some((_, g)) => g.push(item),
                            None => groups.push((pe, vec![item])),
                        }
                    }
                    Ok(groups)
                };
                let (a, b) = (group(old)?, group(new)?);
                let mut all: Vec<&PathElement> = a.iter().map(|(pe, _)| pe).collect();
                all.extend(b.iter().map(|(pe, _)| pe).filter(|pe| !a.iter().any(|(p, _)| p == *pe)));
                for pe in all {
                    let (x, y) = (group_of(&a, pe), group_of(&b, pe));
                    path.push(pe.clone());
                    let item_shape = self.shape(*items, y.first().or(x.first()).copied());
                    match (x.len(), y.len()) {
                        (0..=1, 0..=1) => {
                            self.cmp(&item_shape, x.first().copied(), y.first().copied(), path, out, skip)?
                        }
                        (2.., 2..) if x != y => out.modified.insert(path),
                        (2.., 2..) => {}
                        (2.., _) => {
                            if let Some(first) = y.first() {
                                self.cmp(&item_shape, None, Some(first), path, out, skip)?;
                            }
                            out.removed.insert(path);
                        }
                        (_, _) => {
                            if let Some(first) = x.first() {
                                self.cmp(&item_shape, Some(first), None, path, out, skip)?;
                            }
                            out.added.insert(path);
                        }
                    }
                    path.pop();
                }
            }
            Shape::Scalar => {}
        }
        match (old, new) {
            (None, Some(_)) => out.added.insert(path),
            (Some(_), None) => out.removed.insert(path),
            _ => {}
        }
        Ok(())
    }

    /// `config` merged into `live` (structured-merge-diff's `Merge`): maps and granular
    /// structs key by key, list maps and sets item by item (live-only items stay where they
    /// were, the configuration's in its order), anything else from the configuration.
    pub(crate) fn merge(&self, schema: &'s Value, live: &Value, config: &Value) -> Result<Value, FieldsError> {
        let shape = self.shape(Some(schema), Some(config));
        Ok(self
            .mrg(&shape, Some(live), Some(config), &mut Vec::new())?
            .unwrap_or(Value::Null))
    }

    fn mrg(
        &self,
        shape: &Shape<'s>,
        live: Option<&Value>,
        config: Option<&Value>,
        path: &mut Vec<PathElement>,
    ) -> Result<Option<Value>, FieldsError> {
        let (live, config) = match (live, config) {
            (None, c) => return Ok(c.cloned()),
            (l, None) => return Ok(l.cloned()),
            (Some(l), Some(c)) if !shape.granular() || kind_of(l) != kind_of(c) => return Ok(Some(c.clone())),
            (Some(l), Some(c)) => (l, c),
        };
        match (shape, live, config) {
            (Shape::Struct { .. } | Shape::Map { .. }, Value::Object(l), Value::Object(c)) => {
                if l.is_empty() && c.is_empty() {
                    return Ok(Some(config.clone()));
                }
                let mut out = Map::new();
                let keys: BTreeSet<&String> = l.keys().chain(c.keys()).collect();
                for key in keys {
                    let (x, y) = (l.get(key), c.get(key));
                    path.push(PathElement::Field(key.clone()));
                    let merged = self.mrg(&self.shape(self.field_schema(shape, key), y.or(x)), x, y, path)?;
                    path.pop();
                    if let Some(v) = merged {
                        out.insert(key.clone(), v);
                    }
                }
                Ok(Some(Value::Object(out)))
            }
            (Shape::List { items, kind }, Value::Array(l), Value::Array(c)) => {
                if l.is_empty() && c.is_empty() {
                    return Ok(Some(config.clone()));
                }
                Ok(Some(Value::Array(self.merge_items(*items, kind, l, c, path)?)))
            }
            _ => Ok(Some(config.clone())),
        }
    }

    /// structured-merge-diff's list merge, step for step.
    fn merge_items(
        &self,
        items: Option<&'s Value>,
        kind: &ListKind<'s>,
        live: &[Value],
        config: &[Value],
        path: &mut Vec<PathElement>,
    ) -> Result<Vec<Value>, FieldsError> {
        let live_pes = self.item_elements(kind, items, live, path)?;
        let config_pes = self.item_elements(kind, items, config, path)?;
        let mut in_config: HashMap<&PathElement, &Value> = HashMap::new();
        for (pe, item) in config_pes.iter().zip(config) {
            if in_config.insert(pe, item).is_some() {
                return Err(FieldsError::Duplicate {
                    path: path_string(path),
                    key: pe.to_string(),
                });
            }
        }
        // A live item with a twin merges as if absent: there is no telling which is meant.
        let mut in_live: HashMap<&PathElement, Option<&Value>> = HashMap::new();
        for (pe, item) in live_pes.iter().zip(live) {
            in_live.entry(pe).and_modify(|seen| *seen = None).or_insert(Some(item));
        }
        let mut shared = config_pes.iter().filter(|pe| in_live.contains_key(*pe));
        let mut next_shared = shared.next();
        let mut merged: BTreeSet<&PathElement> = BTreeSet::new();
        let mut out = Vec::with_capacity(live.len().max(config.len()));
        let (mut l, mut c) = (0, 0);
        let merge_item = |pe: &PathElement, x: Option<&Value>, y: Option<&Value>, path: &mut Vec<PathElement>| {
            path.push(pe.clone());
            let shape = self.shape(items, y.or(x));
            let merged = self.mrg(&shape, x, y, path);
            path.pop();
            merged
        };
        while l < live_pes.len() || c < config_pes.len() {
            let progress = (l, c);
            if l < live_pes.len() && c < config_pes.len() {
                let pe = &live_pes[l];
                if *pe == config_pes[c] {
                    merged.insert(pe);
                    out.extend(merge_item(pe, in_live[pe], Some(in_config[pe]), path)?);
                    l += 1;
                    c += 1;
                    next_shared = shared.next();
                    continue;
                }
                if in_config.contains_key(pe) && next_shared.is_some_and(|n| n != pe) {
                    l += 1;
                    continue;
                }
            }
            if l < live_pes.len() {
                let pe = &live_pes[l];
                if !in_config.contains_key(pe) {
                    out.extend(merge_item(pe, Some(&live[l]), None, path)?);
                    l += 1;
                    continue;
                } else if merged.contains(pe) {
                    l += 1;
                }
            }
            if c < config_pes.len() {
                let pe = &config_pes[c];
                merged.insert(pe);
                let x = in_live.get(pe).copied().flatten();
                out.extend(merge_item(pe, x, Some(in_config[pe]), path)?);
                c += 1;
                if next_shared == Some(pe) {
                    next_shared = shared.next();
                }
            }
            if (l, c) == progress {
                break;
            }
        }
        Ok(out)
    }

    /// `value` without the members of `set` (structured-merge-diff's `RemoveItems`); `None`
    /// when nothing is left. A map or list emptied by the removal goes too.
    pub(crate) fn remove(&self, schema: &'s Value, value: &Value, set: &FieldSet) -> Value {
        let shape = self.shape(Some(schema), Some(value));
        self.rm(&shape, value, set, &mut Vec::new())
            .unwrap_or_else(|| Value::Object(Map::new()))
    }

    fn rm(&self, shape: &Shape<'s>, value: &Value, set: &FieldSet, path: &mut Vec<PathElement>) -> Option<Value> {
        if !shape.granular() {
            return Some(value.clone());
        }
        match (shape, value) {
            (Shape::Struct { .. } | Shape::Map { .. }, Value::Object(map)) if !map.is_empty() => {
                let mut out = Map::new();
                for (key, v) in map {
                    let pe = PathElement::Field(key.clone());
                    if set.members.contains(&pe) {
                        continue;
                    }
                    let kept = match set.children.get(&pe) {
                        Some(below) => {
                            path.push(pe);
                            let kept = self.rm(&self.shape(self.field_schema(shape, key), Some(v)), v, below, path);
                            path.pop();
                            kept
                        }
                        None => Some(v.clone()),
                    };
                    if let Some(kept) = kept {
                        out.insert(key.clone(), kept);
                    }
                }
                (!out.is_empty()).then_some(Value::Object(out))
            }
            (Shape::List { items, kind }, Value::Array(list)) if !list.is_empty() => {
                let mut out = Vec::with_capacity(list.len());
                for item in list {
                    let Ok(pe) = self.item_element(kind, *items, item, path) else {
                        out.push(item.clone());
                        continue;
                    };
                    if set.members.contains(&pe) {
                        continue;
                    }
                    match set.children.get(&pe) {
                        Some(below) => {
                            path.push(pe);
                            let kept = self.rm(&self.shape(*items, Some(item)), item, below, path);
                            path.pop();
                            out.push(kept.unwrap_or_else(|| Value::Object(Map::new())));
                        }
                        None => out.push(item.clone()),
                    }
                }
                (!out.is_empty()).then_some(Value::Array(out))
            }
            _ => Some(value.clone()),
        }
    }

    /// `set` with every struct field that has members below it made a member too
    /// (structured-merge-diff's `EnsureNamedFieldsAreMembers`), so that removing it removes
    /// what nobody owns below it.
    pub(crate) fn with_named_fields(&self, schema: &'s Value, set: &FieldSet) -> FieldSet {
        self.named(&self.shape(Some(schema), None), set)
    }

    fn named(&self, shape: &Shape<'s>, set: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            members: set.members.clone(),
            children: BTreeMap::new(),
        };
        for (pe, below) in &set.children {
            let child_schema = match (shape, pe) {
                (Shape::Struct { .. } | Shape::Map { .. }, PathElement::Field(name)) => self.field_schema(shape, name),
                (Shape::List { items, .. }, _) => *items,
                _ => None,
            };
            if let (Shape::Struct { .. }, PathElement::Field(_), Some(_)) = (shape, pe, child_schema) {
                out.members.insert(pe.clone());
            }
            out.children
                .insert(pe.clone(), self.named(&self.shape(child_schema, None), below));
        }
        out
    }

    /// Removes the fields of structs the schema does not declare; returns their paths
    /// (`spec.template.spec.containers[0].imagePullPolicyy`).
    pub(crate) fn drop_unknown(&self, schema: &'s Value, value: &mut Value) -> Vec<String> {
        let mut out = Vec::new();
        self.unknown(&self.shape(Some(schema), Some(value)), value, "", &mut out);
        out
    }

    fn unknown(&self, shape: &Shape<'s>, value: &mut Value, path: &str, out: &mut Vec<String>) {
        let at = |key: &str| {
            if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            }
        };
        match (shape, value) {
            (Shape::Struct { schema, .. }, Value::Object(map)) => {
                let props = schema.get("properties");
                map.retain(|key, _| {
                    let known = props.and_then(|p| p.get(key)).is_some();
                    if !known {
                        out.push(at(key));
                    }
                    known
                });
                for (key, v) in map.iter_mut() {
                    let field_schema = self.field_schema(shape, key);
                    self.unknown(&self.shape(field_schema, Some(v)), v, &at(key), out);
                }
            }
            (
                Shape::Map {
                    values: Some(values), ..
                },
                Value::Object(map),
            ) => {
                for (key, v) in map.iter_mut() {
                    self.unknown(&self.shape(Some(values), Some(v)), v, &at(key), out);
                }
            }
            (Shape::List { items: Some(items), .. }, Value::Array(list)) => {
                for (i, v) in list.iter_mut().enumerate() {
                    self.unknown(&self.shape(Some(items), Some(v)), v, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
}

/// How two objects differ, as field sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Fields only the new object has.
    pub added: FieldSet,
    /// Fields whose value changed.
    pub modified: FieldSet,
    /// Fields only the old object has.
    pub removed: FieldSet,
}

impl Comparison {
    /// Whether the objects are the same.
    pub fn is_same(&self) -> bool {
        self.added.is_empty() && self.modified.is_empty() && self.removed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::registry::by_kind;
    use crate::api::schema::schemas;

    fn deployment_schema() -> &'static Value {
        schemas().root(by_kind("apps/v1", "Deployment").unwrap()).unwrap()
    }

    fn yaml(text: &str) -> Value {
        serde_yaml::from_str(text).unwrap()
    }

    fn paths(set: &FieldSet) -> Vec<String> {
        set.paths().iter().map(|p| path_string(p)).collect()
    }

    const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}, finalizers: [a]}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      tolerations: [{key: a, operator: Exists}]
      containers:
      - name: app
        image: app:1
        ports: [{containerPort: 80}]
"#;

    #[test]
    fn fields_v1_is_kubernetes_format() {
        let text = r#"{"f:metadata":{"f:labels":{".":{},"f:app":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"app\"}":{".":{},"f:image":{}}},"f:finalizers":{"v:\"x\"":{}},"f:replicas":{}}}"#;
        let value: Value = serde_json::from_str(text).unwrap();
        let set = FieldSet::from_fields_v1(&value).unwrap();
        assert_eq!(
            paths(&set),
            [
                ".metadata.labels",
                ".metadata.labels.app",
                ".spec.replicas",
                r#".spec.containers[name="app"]"#,
                r#".spec.containers[name="app"].image"#,
                r#".spec.finalizers[="x"]"#,
            ]
        );
        assert_eq!(set.to_fields_v1(), value);
        let key = PathElement::from_fields_v1(r#"k:{"protocol":"TCP","containerPort":80}"#).unwrap();
        assert_eq!(key.to_fields_v1(), r#"k:{"containerPort":80,"protocol":"TCP"}"#);
        assert_eq!(key.to_string(), r#"[containerPort=80,protocol="TCP"]"#);
        for bad in [json!({"x:y": {}}), json!({"f:a": 1}), json!([]), json!({"k:[1]": {}})] {
            assert!(FieldSet::from_fields_v1(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn set_algebra_is_by_member() {
        let set = |paths: &[&[&str]]| {
            let mut s = FieldSet::new();
            for p in paths {
                let p: Vec<PathElement> = p.iter().map(|f| PathElement::Field(f.to_string())).collect();
                s.insert(&p);
            }
            s
        };
        let a = set(&[&["a"], &["a", "b"], &["c"]]);
        let b = set(&[&["a"], &["d"]]);
        assert_eq!(paths(&a.union(&b)), [".a", ".c", ".d", ".a.b"]);
        // A member of `b` does not take away the members below it.
        assert_eq!(paths(&a.difference(&b)), [".c", ".a.b"]);
        assert_eq!(paths(&a.intersection(&b)), [".a"]);
        assert!(a.contains(&[PathElement::Field("a".into()), PathElement::Field("b".into())]));
        assert!(a.difference(&a).is_empty());
        // `meets` is a non-empty intersection; a parent alone is not a shared member.
        assert!(a.meets(&b) && b.meets(&a));
        assert!(!set(&[&["a", "x"], &["c", "b"]]).meets(&a));
        assert!(set(&[&["a", "b"]]).meets(&a));
        assert!(!a.meets(&FieldSet::new()));
    }

    #[test]
    fn field_set_follows_the_schema() {
        let walker = Walker::new(schemas());
        let set = walker.field_set(deployment_schema(), &yaml(DEPLOYMENT)).unwrap();
        let got = paths(&set);
        for want in [
            ".apiVersion",
            ".metadata.name",
            ".metadata.labels.app",
            r#".metadata.finalizers[="a"]"#,
            ".spec.replicas",
            // Atomic: a label selector and tolerations are owned whole.
            ".spec.selector",
            ".spec.template.spec.tolerations",
            r#".spec.template.spec.containers[name="app"]"#,
            r#".spec.template.spec.containers[name="app"].image"#,
            // The port's key has the protocol's default.
            r#".spec.template.spec.containers[name="app"].ports[containerPort=80,protocol="TCP"].containerPort"#,
        ] {
            assert!(got.contains(&want.to_string()), "{want} not in {got:#?}");
        }
        assert!(!got.contains(&".spec".to_string()) && !got.contains(&".spec.selector.matchLabels".to_string()));

        let no_key = yaml("spec: {template: {spec: {containers: [{image: x}]}}}");
        assert!(matches!(
            walker.field_set(deployment_schema(), &no_key),
            Err(FieldsError::MissingKey { .. })
        ));
    }

    #[test]
    fn compare_names_added_modified_removed() {
        let walker = Walker::new(schemas());
        let old = yaml(DEPLOYMENT);
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(3);
        new["spec"]["paused"] = json!(true);
        new["metadata"]["labels"] = json!({});
        new["spec"]["template"]["spec"]["containers"][0]["ports"] = json!([{"containerPort": 81}]);
        let c = walker.compare_without(deployment_schema(), &old, &new, &[]).unwrap();
        assert_eq!(paths(&c.modified), [".spec.replicas"]);
        let port =
            |p: u16| format!(r#".spec.template.spec.containers[name="app"].ports[containerPort={p},protocol="TCP"]"#);
        let added = paths(&c.added);
        assert!(
            added.contains(&".spec.paused".into()) && added.contains(&port(81)),
            "{added:?}"
        );
        let removed = paths(&c.removed);
        assert!(
            removed.contains(&".metadata.labels.app".into()) && removed.contains(&port(80)),
            "{removed:?}"
        );
        assert!(walker
            .compare_without(deployment_schema(), &old, &old, &[])
            .unwrap()
            .is_same());
    }

    #[test]
    fn compare_passes_over_skipped_fields_and_managed_fields() {
        let walker = Walker::new(schemas());
        let old = yaml(DEPLOYMENT);
        let mut new = old.clone();
        new["status"] = json!({"replicas": 2});
        new["metadata"]["managedFields"] = json!([{"manager": "a"}]);
        let c = walker
            .compare_without(deployment_schema(), &old, &new, &["status"])
            .unwrap();
        assert!(c.is_same(), "{:?} {:?}", paths(&c.added), paths(&c.modified));
        // Without the skip, status counts as added.
        let c = walker.compare_without(deployment_schema(), &old, &new, &[]).unwrap();
        assert!(paths(&c.added).contains(&".status.replicas".into()));

        // Metadata holding only managedFields compares as empty metadata, whatever they are.
        let a = json!({"metadata": {"managedFields": [{"manager": "a"}]}});
        let b = json!({"metadata": {"managedFields": [{"manager": "b"}]}});
        assert!(walker
            .compare_without(deployment_schema(), &a, &b, &[])
            .unwrap()
            .is_same());
        let c = walker
            .compare_without(deployment_schema(), &a, &json!({}), &[])
            .unwrap();
        assert_eq!(paths(&c.removed), [".metadata"]);
    }

    #[test]
    fn merge_keeps_live_items_and_replaces_atomic_values() {
        let walker = Walker::new(schemas());
        let live = yaml(
            "spec: {template: {spec: {tolerations: [{key: a}], containers: [{name: a, image: a:1}, {name: b, image: b:1}, {name: c, image: c:1}]}}}",
        );
        let config = yaml(
            "spec: {template: {spec: {tolerations: [{key: z}], containers: [{name: d, image: d:1}, {name: b, image: b:2}]}}}",
        );
        let merged = walker.merge(deployment_schema(), &live, &config).unwrap();
        let names: Vec<&str> = merged["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "d", "b", "c"]);
        assert_eq!(
            merged.pointer("/spec/template/spec/containers/2/image"),
            Some(&json!("b:2"))
        );
        assert_eq!(
            merged.pointer("/spec/template/spec/tolerations"),
            Some(&json!([{"key": "z"}]))
        );

        let dup = yaml("spec: {template: {spec: {containers: [{name: a}, {name: a}]}}}");
        assert!(matches!(
            walker.merge(deployment_schema(), &live, &dup),
            Err(FieldsError::Duplicate { .. })
        ));
    }

    #[test]
    fn remove_takes_members_and_named_fields_reach_below() {
        let walker = Walker::new(schemas());
        let obj = yaml(DEPLOYMENT);
        let mut set = FieldSet::new();
        let f = |s: &str| PathElement::Field(s.to_string());
        set.insert(&[f("metadata"), f("labels"), f("app")]);
        set.insert(&[f("spec"), f("replicas")]);
        let out = walker.remove(deployment_schema(), &obj, &set);
        // The emptied labels map goes too.
        assert!(out.pointer("/metadata/labels").is_none() && out.pointer("/spec/replicas").is_none());
        assert_eq!(out.pointer("/spec/selector"), obj.pointer("/spec/selector"));

        let named = walker.with_named_fields(deployment_schema(), &set);
        assert_eq!(
            paths(&named),
            [
                ".metadata",
                ".spec",
                ".metadata.labels",
                ".metadata.labels.app",
                ".spec.replicas"
            ]
        );
    }

    #[test]
    fn unknown_fields_are_named_and_dropped() {
        let walker = Walker::new(schemas());
        let mut obj = yaml(DEPLOYMENT);
        obj["spec"]["replicsa"] = json!(1);
        obj["spec"]["template"]["spec"]["containers"][0]["imag"] = json!("x");
        obj["metadata"]["labels"]["free-form"] = json!("ok");
        let unknown = walker.drop_unknown(deployment_schema(), &mut obj);
        assert_eq!(unknown, ["spec.replicsa", "spec.template.spec.containers[0].imag"]);
        assert!(obj["spec"].get("replicsa").is_none());
        assert_eq!(obj["metadata"]["labels"]["free-form"], "ok");
    }
}
