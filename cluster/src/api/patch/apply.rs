//! Server-side apply and the `metadata.managedFields` every write keeps, as kube-apiserver
//! does (k8s.io/apimachinery `util/managedfields` over sigs.k8s.io/structured-merge-diff).
//!
//! Each entry of `metadata.managedFields` is one manager's set of fields: `manager`,
//! `operation` (`Apply` or `Update`), `apiVersion`, `time`, `subresource` for status
//! writes, and the set as `fieldsType: FieldsV1`, `fieldsV1: {"f:spec":{"f:replicas":{}}}`.
//!
//! [`apply`] merges an applied configuration into the live object: a field another manager
//! owns with another value is a conflict unless forced (then the applier takes it); fields
//! the applier applied before and omits now are removed unless someone else owns them.
//! [`record_update`] gives every other write's changed fields to its manager and takes
//! them from the others.

use std::sync::LazyLock;

use serde_json::{json, Map, Value};

use super::fields::{path_string, Comparison, FieldSet, FieldsError, PathElement, Walker};
use crate::api::schema::Schemas;

/// Where Kubernetes caps `Update` entries; older ones merge into `ancient-changes`.
const MAX_UPDATE_MANAGERS: usize = 10;

/// The manager that takes the fields of an object first applied with no managedFields.
const BEFORE_FIRST_APPLY: &str = "before-first-apply";

/// Who writes, through which endpoint, and when.
#[derive(Debug, Clone, Copy)]
pub struct Writer<'a> {
    /// The field manager (`?fieldManager=`, or the client's User-Agent product).
    pub manager: &'a str,
    /// `Some("status")` for writes through the status subresource.
    pub subresource: Option<&'a str>,
    /// The write's time (RFC 3339), recorded when it changes the object.
    pub time: &'a str,
    /// Top-level fields this endpoint does not write, left out of ownership (Kubernetes'
    /// reset fields: `status` through the main endpoint of a kind with a status subresource).
    pub ignored: &'a [&'a str],
}

/// A managedFields operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    /// Server-side apply.
    Apply,
    /// Any other write.
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// One field another manager owns that an apply would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The other manager, as Kubernetes prints it (`"kubectl" using apps/v1`).
    pub manager: String,
    /// The field, as Kubernetes prints it (`.spec.replicas`).
    pub field: String,
}

/// Why an apply (or reading managedFields) failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Fields owned by other managers would change.
    #[error("{}", conflict_message(.0))]
    Conflicts(Vec<Conflict>),
    /// The applied configuration does not fit its schema (a list item without its key, two
    /// items with one key).
    #[error("{0}")]
    Fields(#[from] FieldsError),
    /// The live object's managedFields cannot be read.
    #[error("failed to decode managed fields: {0}")]
    ManagedFields(String),
    /// The applied configuration is not YAML (or JSON).
    #[error("the apply patch is not valid YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// The applied configuration is not an object of this kind, or sets managedFields.
    #[error("{0}")]
    BadRequest(String),
}

/// Kubernetes' message for apply conflicts.
fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [only] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            only.manager, only.field
        );
    }
    let mut managers: Vec<&str> = conflicts.iter().map(|c| c.manager.as_str()).collect();
    managers.sort();
    managers.dedup();
    let mut lines = Vec::new();
    for manager in managers {
        lines.push(format!("conflicts with {manager}:"));
        for c in conflicts.iter().filter(|c| c.manager == manager) {
            lines.push(format!("- {}", c.field));
        }
    }
    format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
}

/// Parses an apply body (`application/apply-patch+yaml`; JSON is YAML too).
pub fn parse(body: &[u8]) -> Result<Value, ApplyError> {
    let value: Value = serde_yaml::from_slice(body)?;
    if !value.is_object() {
        return Err(ApplyError::BadRequest(
            "an apply patch must be a YAML (or JSON) object".into(),
        ));
    }
    Ok(value)
}

/// One manager's entry.
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: Operation,
    api_version: String,
    subresource: String,
    time: Option<String>,
    /// Changed only through [`Entry::fields_mut`], which forgets `written`.
    fields: FieldSet,
    /// The entry as it was read, written back as it is while its fields are unchanged:
    /// encoding every untouched manager's set again cost more than the rest of an update.
    written: Option<Value>,
}

impl Entry {
    fn new(who: &Writer, operation: Operation, api_version: &str) -> Self {
        Entry {
            // Kubernetes' name for a write that gave none.
            manager: if who.manager.is_empty() { "unknown" } else { who.manager }.to_string(),
            operation,
            api_version: api_version.to_string(),
            subresource: who.subresource.unwrap_or_default().to_string(),
            time: None,
            fields: FieldSet::new(),
            written: None,
        }
    }

    /// The fields, to change: the entry is encoded anew.
    fn fields_mut(&mut self) -> &mut FieldSet {
        self.written = None;
        &mut self.fields
    }

    /// Whether `written` still says what this entry says, beside its fields.
    fn written_matches(&self, written: &Value) -> bool {
        let text = |name: &str| written.get(name).and_then(Value::as_str);
        text("manager").unwrap_or_default() == self.manager
            && text("operation") == Some(self.operation.as_str())
            && text("apiVersion") == Some(self.api_version.as_str())
            && text("subresource").unwrap_or_default() == self.subresource
            && text("time") == self.time.as_deref()
    }

    /// Whether two entries are the same manager (an applier is one across versions).
    fn same_manager(&self, other: &Entry) -> bool {
        self.manager == other.manager
            && self.operation == other.operation
            && self.subresource == other.subresource
            && (self.operation == Operation::Apply || self.api_version == other.api_version)
    }

    /// The manager as Kubernetes prints it in conflicts.
    fn describe(&self) -> String {
        let mut out = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            out += &format!(" with subresource {:?}", self.subresource);
        }
        if self.operation == Operation::Update {
            out += &format!(" using {}", self.api_version);
        }
        out
    }

    fn into_json(mut self) -> Value {
        if let Some(written) = self.written.take() {
            if self.written_matches(&written) {
                return written;
            }
        }
        let mut out = json!({
            "manager": self.manager,
            "operation": self.operation.as_str(),
            "apiVersion": self.api_version,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.fields.to_fields_v1(),
        });
        if let Some(time) = &self.time {
            out["time"] = json!(time);
        }
        if !self.subresource.is_empty() {
            out["subresource"] = json!(self.subresource);
        }
        out
    }

    fn from_json(value: Value, index: usize) -> Result<Self, ApplyError> {
        let bad = |what: &str| ApplyError::ManagedFields(format!("entry {index}: {what}"));
        let text = |name: &str| value.get(name).and_then(Value::as_str);
        let operation = match text("operation") {
            Some("Apply") => Operation::Apply,
            Some("Update") => Operation::Update,
            _ => return Err(bad("operation must be `Apply` or `Update`")),
        };
        let api_version = text("apiVersion")
            .filter(|v| !v.is_empty())
            .ok_or_else(|| bad("apiVersion must not be empty"))?;
        match text("fieldsType") {
            Some("FieldsV1") => {}
            Some(other) => return Err(bad(&format!("invalid fieldsType {other:?}"))),
            None => return Err(bad("missing fieldsType")),
        }
        let fields = match value.get("fieldsV1") {
            Some(f) => FieldSet::from_fields_v1(f).map_err(|e| bad(&e.to_string()))?,
            None => FieldSet::new(),
        };
        Ok(Entry {
            manager: text("manager").unwrap_or_default().to_string(),
            operation,
            api_version: api_version.to_string(),
            subresource: text("subresource").unwrap_or_default().to_string(),
            time: text("time").map(String::from),
            fields,
            written: Some(value),
        })
    }
}

fn managed_fields(obj: &Value) -> Option<&Value> {
    obj.pointer("/metadata/managedFields").filter(|v| !v.is_null())
}

/// The entries of a managedFields list (a later entry for the same manager wins), each
/// keeping its JSON to be written back unchanged.
fn decode(list: Option<Value>) -> Result<Vec<Entry>, ApplyError> {
    let Some(list) = list else { return Ok(Vec::new()) };
    let Value::Array(items) = list else {
        return Err(ApplyError::ManagedFields("managedFields must be a list".into()));
    };
    let mut out: Vec<Entry> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let entry = Entry::from_json(item, i)?;
        out.retain(|e| !e.same_manager(&entry));
        out.push(entry);
    }
    Ok(out)
}

/// Writes the entries into `obj.metadata.managedFields` in Kubernetes' order (or removes the
/// field when there are none).
fn encode(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.sort_by(|a, b| {
        (a.operation, &a.time, &a.manager, &a.api_version, &a.subresource).cmp(&(
            b.operation,
            &b.time,
            &b.manager,
            &b.api_version,
            &b.subresource,
        ))
    });
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert(
            "managedFields".into(),
            Value::Array(entries.into_iter().map(Entry::into_json).collect()),
        );
    }
}

fn without_managed_fields(obj: &Value) -> Value {
    let mut out = obj.clone();
    if let Some(meta) = out.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    out
}

fn without_ignored(obj: &Value, ignored: &[&str]) -> Value {
    let mut out = obj.clone();
    if let Some(map) = out.as_object_mut() {
        for field in ignored {
            map.remove(*field);
        }
    }
    out
}

/// The metadata the server owns, which no manager is recorded to own (built once: every
/// write asks).
fn server_owned() -> &'static FieldSet {
    static SET: LazyLock<FieldSet> = LazyLock::new(server_owned_set);
    &SET
}

fn server_owned_set() -> FieldSet {
    let mut set = FieldSet::new();
    let field = |name: &str| PathElement::Field(name.to_string());
    for top in ["apiVersion", "kind", "metadata"] {
        set.insert(&[field(top)]);
    }
    for meta in [
        "name",
        "namespace",
        "creationTimestamp",
        "selfLink",
        "uid",
        "clusterName",
        "generation",
        "managedFields",
        "resourceVersion",
    ] {
        set.insert(&[field("metadata"), field(meta)]);
    }
    set
}

/// Settles the other managers' sets after `comparison`: fields that changed are theirs no
/// more, nor fields that are gone. Returns the fields that changed under them when not
/// forcing (nothing is changed then).
fn settle(entries: &mut Vec<Entry>, skip: Option<&Entry>, comparison: &Comparison, force: bool) -> Vec<Conflict> {
    let others = || entries.iter().filter(|e| skip.is_none_or(|s| !s.same_manager(e)));
    if others().next().is_none() {
        // No other manager (a create): nothing to settle.
        entries.retain(|e| !e.fields.is_empty());
        return Vec::new();
    }
    let changed = comparison.modified.union(&comparison.added);
    if !force {
        let conflicts: Vec<Conflict> = others()
            .flat_map(|e| {
                let manager = e.describe();
                e.fields
                    .intersection(&changed)
                    .paths()
                    .into_iter()
                    .map(move |p| Conflict {
                        manager: manager.clone(),
                        field: path_string(&p),
                    })
            })
            .collect();
        if !conflicts.is_empty() {
            return conflicts;
        }
    }
    for e in entries.iter_mut().filter(|e| skip.is_none_or(|s| !s.same_manager(e))) {
        // An entry the write did not touch (a status write and the spec's managers) stays
        // as it was written.
        if !e.fields.meets(&changed) && !e.fields.meets(&comparison.removed) {
            continue;
        }
        let kept = e.fields.difference(&changed);
        *e.fields_mut() = if comparison.removed.is_empty() {
            kept
        } else {
            kept.difference(&comparison.removed)
        };
    }
    entries.retain(|e| !e.fields.is_empty());
    Vec::new()
}

/// Gives the fields `comparison` changed to `entry`'s manager (joining its earlier entry).
fn record(entries: &mut Vec<Entry>, mut entry: Entry, comparison: &Comparison, time: &str) {
    let mut changed = comparison.modified.clone();
    changed.extend(&comparison.added);
    let set = changed.difference(server_owned());
    if set.is_empty() {
        return;
    }
    *entry.fields_mut() = match entries.iter().position(|e| e.same_manager(&entry)) {
        Some(i) => {
            let mut fields = entries.remove(i).fields;
            fields.extend(&set);
            fields
        }
        None => set,
    };
    entry.time = Some(time.to_string());
    entries.push(entry);
}

/// Kubernetes keeps at most ten `Update` entries: the oldest merge into `ancient-changes`.
fn cap_updaters(entries: &mut Vec<Entry>) {
    let mut updaters: Vec<Entry> = entries
        .iter()
        .filter(|e| e.operation == Operation::Update)
        .cloned()
        .collect();
    if updaters.len() <= MAX_UPDATE_MANAGERS {
        return;
    }
    updaters.sort_by(|a, b| (&a.time, &a.manager).cmp(&(&b.time, &b.manager)));
    let mut first_of_version: Vec<(String, Entry)> = Vec::new();
    let mut count = updaters.len();
    for old in updaters {
        if count <= MAX_UPDATE_MANAGERS {
            break;
        }
        let Some((_, first)) = first_of_version.iter().find(|(v, _)| *v == old.api_version) else {
            first_of_version.push((old.api_version.clone(), old));
            continue;
        };
        let bucket_id = Entry {
            manager: "ancient-changes".into(),
            operation: Operation::Update,
            api_version: old.api_version.clone(),
            subresource: String::new(),
            time: None,
            fields: FieldSet::new(),
            written: None,
        };
        let mut bucket = match entries.iter().position(|e| e.same_manager(&bucket_id)) {
            Some(i) => entries.remove(i),
            None => {
                // The first of this version becomes the bucket.
                let i = entries.iter().position(|e| e.same_manager(first));
                let fields = i.map(|i| entries.remove(i).fields).unwrap_or_default();
                Entry { fields, ..bucket_id }
            }
        };
        entries.retain(|e| !e.same_manager(&old));
        bucket.fields_mut().extend(&old.fields);
        bucket.time = old.time.clone();
        entries.push(bucket);
        count -= 1;
    }
}

/// Removes `null` fields: an applied `null` clears the field (and claims it).
fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// The `apiVersion` and `kind` a root schema is for.
fn group_version_kind(schema: &Value) -> Option<(String, String)> {
    let gvk = schema.get("x-kubernetes-group-version-kind")?.get(0)?;
    let (group, version, kind) = (
        gvk.get("group")?.as_str()?,
        gvk.get("version")?.as_str()?,
        gvk.get("kind")?.as_str()?,
    );
    let api_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some((api_version, kind.to_string()))
}

fn check_applied(schema: &Value, live: Option<&Value>, applied: &Value) -> Result<String, ApplyError> {
    let text = |v: &Value, name: &str| v.get(name).and_then(Value::as_str).map(String::from);
    let (Some(api_version), Some(kind)) = (text(applied, "apiVersion"), text(applied, "kind")) else {
        return Err(ApplyError::BadRequest(
            "an apply patch must set apiVersion and kind".into(),
        ));
    };
    let expected = group_version_kind(schema).or_else(|| Some((text(live?, "apiVersion")?, text(live?, "kind")?)));
    if let Some((want_version, want_kind)) = expected {
        if api_version != want_version {
            return Err(ApplyError::BadRequest(format!(
                "Incorrect version specified in apply patch. Specified patch version: {api_version}, expected: {want_version}"
            )));
        }
        if kind != want_kind {
            return Err(ApplyError::BadRequest(format!(
                "the apply patch is for kind {kind}, not {want_kind}"
            )));
        }
    }
    if managed_fields(applied).is_some() {
        return Err(ApplyError::BadRequest("metadata.managedFields must be nil".into()));
    }
    Ok(api_version)
}

/// Server-side apply of `applied` (an object of the kind `schema` describes) to `live`
/// (`None` creates). Returns the new object with its managedFields.
pub fn apply(
    schemas: &Schemas,
    schema: &Value,
    live: Option<&Value>,
    applied: &Value,
    who: &Writer,
    force: bool,
) -> Result<Value, ApplyError> {
    let walker = Walker::new(schemas);
    let api_version = check_applied(schema, live, applied)?;
    let config = without_ignored(applied, who.ignored);
    let live_obj = live.map(without_managed_fields).unwrap_or_else(|| json!({}));
    let mut entries = decode(live.and_then(managed_fields).cloned())?;
    if entries.is_empty() && live.is_some() {
        // An object no one tracked yet: what it has belongs to a stand-in manager, so the
        // first apply cannot silently take over fields other writers set.
        let first = Writer {
            manager: BEFORE_FIRST_APPLY,
            ..*who
        };
        let comparison = walker.compare_without(schema, &json!({}), &live_obj, who.ignored)?;
        record(
            &mut entries,
            Entry::new(&first, Operation::Update, &api_version),
            &comparison,
            who.time,
        );
    }

    let merged = walker.merge(schema, &live_obj, &config)?;
    let mut me = Entry::new(who, Operation::Apply, &api_version);
    let last = entries
        .iter()
        .position(|e| e.same_manager(&me))
        .map(|i| entries.remove(i));
    me.time = last.as_ref().and_then(|l| l.time.clone());
    *me.fields_mut() = walker.applied_field_set(schema, &config)?;
    entries.push(me.clone());

    let mut new = match last {
        Some(last) if !last.fields.is_empty() => prune(&walker, schema, &merged, &entries, &last.fields)?,
        _ => merged,
    };
    strip_nulls(&mut new);

    let comparison = walker.compare_without(schema, &live_obj, &new, who.ignored)?;
    let conflicts = settle(&mut entries, Some(&me), &comparison, force);
    if !conflicts.is_empty() {
        return Err(ApplyError::Conflicts(conflicts));
    }
    let changed = new != live_obj;
    if let Some(mine) = entries.iter_mut().find(|e| e.same_manager(&me)) {
        let owned = mine.fields.difference(server_owned());
        *mine.fields_mut() = owned;
        if changed {
            mine.time = Some(who.time.to_string());
        }
    }
    entries.retain(|e| !e.fields.is_empty());
    encode(&mut new, entries);
    Ok(new)
}

/// Removes from `merged` what the applier owned before (`last`) and owns no more, unless
/// another manager owns it (structured-merge-diff's prune, add back owned, add back
/// dangling).
fn prune(
    walker: &Walker,
    schema: &Value,
    merged: &Value,
    entries: &[Entry],
    last: &FieldSet,
) -> Result<Value, ApplyError> {
    let named = |set: &FieldSet| walker.with_named_fields(schema, set);
    let last = named(last);
    let pruned = walker.remove(schema, merged, &last);
    let owned = entries.iter().fold(FieldSet::new(), |acc, e| acc.union(&e.fields));
    let all = named(&walker.field_set(schema, merged)?);
    let kept = named(&walker.field_set(schema, &pruned)?).union(&named(&owned));
    let pruned = walker.remove(schema, merged, &all.difference(&kept));
    // Only what the applier owned may go: what pruning took below it that nobody owns
    // (defaults, say) goes along only if the applier owned the field holding it.
    let kept = named(&walker.field_set(schema, &pruned)?);
    Ok(walker.remove(schema, merged, &all.difference(&kept).intersection(&last)))
}

/// Records a write that is not an apply (create, update, JSON, merge or strategic patch)
/// in `new`'s managedFields: the fields it changed go to `who`, and no longer belong to
/// anyone else. Like kube-apiserver, an existing object nobody tracked stays untracked,
/// and a failure keeps the old managedFields rather than failing the write.
pub fn record_update(schemas: &Schemas, schema: &Value, old: Option<&Value>, new: &mut Value, who: &Writer) {
    let live = old.and_then(managed_fields);
    let live_entries = || decode(live.cloned()).unwrap_or_default();
    // Taken out of the object in place: the comparison below must not see them, and
    // copying the object to drop them cost more than the rest of this on every write.
    let requested = new
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .and_then(|meta| meta.remove("managedFields"))
        .filter(|v| !v.is_null());
    let reset = |v: &Value| match v {
        Value::Array(items) => {
            items.is_empty() || (items.len() == 1 && items[0].as_object().is_some_and(Map::is_empty))
        }
        _ => false,
    };
    // A write may set managedFields itself (a full update, a patch of them); `[]` or
    // `[{}]` clears them. The status subresource only ever keeps the live ones.
    let status = who.subresource.is_some();
    let entries = match requested {
        Some(v) if !status && reset(&v) => Vec::new(),
        // The live entries, as a patch carries them: decoded from the request's copy
        // rather than copied again.
        Some(v) if Some(&v) == live => decode(Some(v)).unwrap_or_default(),
        Some(v) if !status => match decode(Some(v)) {
            Ok(entries) if !entries.is_empty() => entries,
            _ => live_entries(),
        },
        _ => live_entries(),
    };
    if old.is_some() && entries.is_empty() {
        return;
    }
    let api_version = new
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let nothing = json!({});
    let comparison = Walker::new(schemas).compare_without(schema, old.unwrap_or(&nothing), new, who.ignored);
    let Ok(comparison) = comparison else {
        // As kube-apiserver: the write goes on with the managedFields it had.
        if let (Some(meta), Some(kept)) = (
            new.get_mut("metadata").and_then(Value::as_object_mut),
            old.and_then(managed_fields),
        ) {
            meta.insert("managedFields".into(), kept.clone());
        }
        return;
    };
    let mut entries = entries;
    settle(&mut entries, None, &comparison, true);
    record(
        &mut entries,
        Entry::new(who, Operation::Update, &api_version),
        &comparison,
        who.time,
    );
    cap_updaters(&mut entries);
    encode(new, entries);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::registry::by_kind;
    use crate::api::schema::schemas;

    fn schema() -> &'static Value {
        schemas().root(by_kind("apps/v1", "Deployment").unwrap()).unwrap()
    }

    fn yaml(text: &str) -> Value {
        serde_yaml::from_str(text).unwrap()
    }

    const T1: &str = "2025-01-01T00:00:01Z";
    const T2: &str = "2025-01-01T00:00:02Z";
    const T3: &str = "2025-01-01T00:00:03Z";

    fn writer<'a>(manager: &'a str, time: &'a str) -> Writer<'a> {
        Writer {
            manager,
            subresource: None,
            time,
            ignored: &["status"],
        }
    }

    fn apply_as(
        live: Option<&Value>,
        config: &str,
        manager: &str,
        time: &str,
        force: bool,
    ) -> Result<Value, ApplyError> {
        apply(schemas(), schema(), live, &yaml(config), &writer(manager, time), force)
    }

    fn update_as(old: &Value, new: &mut Value, manager: &str, time: &str) {
        record_update(schemas(), schema(), Some(old), new, &writer(manager, time));
    }

    /// A write of `new` through the status subresource (which writes `status` too).
    fn status_update_as(old: &Value, new: &mut Value, manager: &str, time: &str) {
        let status_writer = Writer {
            subresource: Some("status"),
            ignored: &[],
            ..writer(manager, time)
        };
        record_update(schemas(), schema(), Some(old), new, &status_writer);
    }

    /// The paths `manager` owns, by its entries (`Apply` and `Update` alike).
    fn owned(obj: &Value, manager: &str) -> Vec<String> {
        let entries = decode(managed_fields(obj).cloned()).unwrap();
        let mut out: Vec<String> = entries
            .iter()
            .filter(|e| e.manager == manager)
            .flat_map(|e| e.fields.paths())
            .map(|p| path_string(&p))
            .collect();
        out.sort();
        out
    }

    fn managers(obj: &Value) -> Vec<(String, String)> {
        managed_fields(obj)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["manager"].as_str().unwrap().into(),
                    e["operation"].as_str().unwrap().into(),
                )
            })
            .collect()
    }

    const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: app
        image: app:1
        ports: [{containerPort: 80}]
"#;

    #[test]
    fn apply_creates_with_kubernetes_managed_fields() {
        let obj = apply_as(None, WEB, "kubectl", T1, false).unwrap();
        assert_eq!(obj["spec"]["replicas"], 2);
        let entry = &obj["metadata"]["managedFields"][0];
        assert_eq!(
            (
                &entry["manager"],
                &entry["operation"],
                &entry["apiVersion"],
                &entry["fieldsType"],
                &entry["time"]
            ),
            (
                &json!("kubectl"),
                &json!("Apply"),
                &json!("apps/v1"),
                &json!("FieldsV1"),
                &json!(T1)
            )
        );
        let fields = r#"{"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:replicas":{},"f:selector":{},"f:template":{"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"app\"}":{".":{},"f:image":{},"f:name":{},"f:ports":{"k:{\"containerPort\":80,\"protocol\":\"TCP\"}":{".":{},"f:containerPort":{}}}}}}}}}"#;
        assert_eq!(entry["fieldsV1"], serde_json::from_str::<Value>(fields).unwrap());
        assert!(entry.get("subresource").is_none());
    }

    #[test]
    fn applying_the_same_configuration_twice_changes_nothing() {
        let first = apply_as(None, WEB, "kubectl", T1, false).unwrap();
        let second = apply_as(Some(&first), WEB, "kubectl", T2, false).unwrap();
        // Not even the entry's time: the object did not change.
        assert_eq!(second, first);
    }

    #[test]
    fn two_appliers_share_equal_values_and_conflict_on_different_ones() {
        let obj = apply_as(None, WEB, "alice", T1, false).unwrap();
        // Bob applies the same replicas and a field of his own: no conflict, both own replicas.
        let bob =
            "{apiVersion: apps/v1, kind: Deployment, metadata: {name: web}, spec: {replicas: 2, minReadySeconds: 5}}";
        let obj = apply_as(Some(&obj), bob, "bob", T2, false).unwrap();
        assert_eq!(owned(&obj, "bob"), [".spec.minReadySeconds", ".spec.replicas"]);
        assert!(owned(&obj, "alice").contains(&".spec.replicas".to_string()));
        assert_eq!(obj["spec"]["minReadySeconds"], 5);

        // Carol wants 3 replicas: both owners conflict.
        let carol = "{apiVersion: apps/v1, kind: Deployment, metadata: {name: web}, spec: {replicas: 3}}";
        let err = apply_as(Some(&obj), carol, "carol", T3, false).unwrap_err();
        let ApplyError::Conflicts(conflicts) = &err else {
            panic!("{err}")
        };
        assert_eq!(conflicts.len(), 2);
        assert_eq!(
            err.to_string(),
            "Apply failed with 2 conflicts: conflicts with \"alice\":\n- .spec.replicas\nconflicts with \"bob\":\n- .spec.replicas"
        );

        // Forced, Carol takes replicas from both.
        let obj = apply_as(Some(&obj), carol, "carol", T3, true).unwrap();
        assert_eq!(obj["spec"]["replicas"], 3);
        assert_eq!(owned(&obj, "carol"), [".spec.replicas"]);
        assert!(!owned(&obj, "alice").contains(&".spec.replicas".to_string()));
        assert_eq!(owned(&obj, "bob"), [".spec.minReadySeconds"]);
    }

    #[test]
    fn a_conflict_with_an_updater_names_its_version() {
        let created = apply_as(None, WEB, "kubectl", T1, false).unwrap();
        let mut scaled = created.clone();
        scaled["spec"]["replicas"] = json!(5);
        update_as(&created, &mut scaled, "kubectl-client-side-apply", T2);
        assert_eq!(owned(&scaled, "kubectl-client-side-apply"), [".spec.replicas"]);
        assert!(!owned(&scaled, "kubectl").contains(&".spec.replicas".to_string()));

        let err = apply_as(Some(&scaled), WEB, "kubectl", T3, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"
        );
        let forced = apply_as(Some(&scaled), WEB, "kubectl", T3, true).unwrap();
        assert_eq!(forced["spec"]["replicas"], 2);
        // The updater owned nothing else: its entry is gone.
        assert_eq!(managers(&forced), [("kubectl".to_string(), "Apply".to_string())]);
    }

    #[test]
    fn a_field_the_applier_drops_is_removed_unless_someone_else_owns_it() {
        let with_min = "{apiVersion: apps/v1, kind: Deployment, metadata: {name: web}, spec: {replicas: 2, minReadySeconds: 5, paused: true}}";
        let obj = apply_as(None, with_min, "alice", T1, false).unwrap();
        let bob = "{apiVersion: apps/v1, kind: Deployment, metadata: {name: web}, spec: {paused: true}}";
        let obj = apply_as(Some(&obj), bob, "bob", T2, false).unwrap();
        let without = "{apiVersion: apps/v1, kind: Deployment, metadata: {name: web}, spec: {replicas: 2}}";
        let obj = apply_as(Some(&obj), without, "alice", T3, false).unwrap();
        assert!(obj["spec"].get("minReadySeconds").is_none(), "{obj}");
        // Bob still owns paused: it stays.
        assert_eq!(obj["spec"]["paused"], true);
        assert_eq!(owned(&obj, "alice"), [".spec.replicas"]);
    }

    #[test]
    fn list_map_items_belong_to_their_appliers() {
        let obj = apply_as(None, WEB, "alice", T1, false).unwrap();
        let sidecar = "{apiVersion: apps/v1, kind: Deployment, metadata: {name: web}, spec: {template: {spec: {containers: [{name: sidecar, image: side:1}]}}}}";
        let obj = apply_as(Some(&obj), sidecar, "bob", T2, false).unwrap();
        let names = |obj: &Value| -> Vec<String> {
            obj["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(names(&obj), ["app", "sidecar"]);
        assert!(owned(&obj, "bob").contains(&r#".spec.template.spec.containers[name="sidecar"]"#.to_string()));

        // Alice renames her container: hers goes, Bob's stays.
        let renamed = WEB.replace("name: app", "name: app2");
        let obj = apply_as(Some(&obj), &renamed, "alice", T3, false).unwrap();
        assert_eq!(names(&obj), ["sidecar", "app2"]);
        let alice = owned(&obj, "alice");
        assert!(alice.contains(&r#".spec.template.spec.containers[name="app2"]"#.to_string()));
        assert!(!alice.iter().any(|p| p.contains(r#"name="app""#)), "{alice:?}");

        // Bob changing Alice's image conflicts on that one field of her item.
        let image = "{apiVersion: apps/v1, kind: Deployment, metadata: {name: web}, spec: {template: {spec: {containers: [{name: app2, image: app:9}]}}}}";
        let err = apply_as(Some(&obj), image, "bob", T3, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"alice\": .spec.template.spec.containers[name=\"app2\"].image"
        );
    }

    #[test]
    fn updates_move_changed_fields_to_their_manager() {
        // Create: everything set goes to the creator, except what the server owns.
        let mut created = yaml(WEB);
        created["metadata"]["uid"] = json!("u1");
        created["metadata"]["resourceVersion"] = json!("7");
        record_update(schemas(), schema(), None, &mut created, &writer("kubectl-create", T1));
        let creator = owned(&created, "kubectl-create");
        assert!(creator.contains(&".spec.replicas".to_string()) && creator.contains(&".spec.template".to_string()));
        assert!(!creator
            .iter()
            .any(|p| p.starts_with(".metadata.uid") || p == ".apiVersion" || p == ".metadata.name"));
        assert_eq!(created["metadata"]["managedFields"][0]["operation"], "Update");
        assert_eq!(created["metadata"]["managedFields"][0]["time"], T1);

        // A scaler changes replicas: it owns it, the creator does not any more.
        let mut scaled = created.clone();
        scaled["spec"]["replicas"] = json!(4);
        update_as(&created, &mut scaled, "scaler", T2);
        assert_eq!(owned(&scaled, "scaler"), [".spec.replicas"]);
        assert!(!owned(&scaled, "kubectl-create").contains(&".spec.replicas".to_string()));

        // A write that changes nothing records nothing, not even a time.
        let mut same = scaled.clone();
        update_as(&scaled, &mut same, "other", T3);
        assert_eq!(same, scaled);

        // Server-owned metadata is nobody's.
        let mut bumped = scaled.clone();
        bumped["metadata"]["generation"] = json!(9);
        update_as(&scaled, &mut bumped, "other", T3);
        assert_eq!(managed_fields(&bumped), managed_fields(&scaled));

        // Removing the only field an entry owns drops the entry.
        let mut unscaled = scaled.clone();
        unscaled["spec"].as_object_mut().unwrap().remove("replicas");
        update_as(&scaled, &mut unscaled, "trimmer", T3);
        let names: Vec<String> = managers(&unscaled).into_iter().map(|(m, _)| m).collect();
        assert!(
            !names.contains(&"scaler".to_string()) && !names.contains(&"trimmer".to_string()),
            "{names:?}"
        );

        // Status writes are recorded per subresource.
        let mut status = created.clone();
        status["status"] = json!({"replicas": 1});
        status_update_as(&created, &mut status, "controller", T2);
        let entry = managed_fields(&status)
            .and_then(Value::as_array)
            .and_then(|l| l.iter().find(|e| e["manager"] == "controller"))
            .cloned()
            .unwrap();
        assert_eq!(entry["subresource"], "status");
        // `.status` too: it did not exist before (Kubernetes' typed objects always have one).
        assert_eq!(owned(&status, "controller"), [".status", ".status.replicas"]);
    }

    #[test]
    fn untouched_entries_are_written_back_as_they_were_read() {
        // An entry spelled as our encoder would not (spaces in a key): only an entry the
        // write takes fields from is encoded again.
        let mut live = yaml(WEB);
        live["metadata"]["managedFields"] = json!([
            {"manager": "imager", "operation": "Update", "apiVersion": "apps/v1", "time": T1,
             "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {
                "k:{\"name\": \"app\"}": {"f:image": {}}}}}}}},
            {"manager": "scaler", "operation": "Update", "apiVersion": "apps/v1", "time": T1,
             "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
        ]);
        let imager = live["metadata"]["managedFields"][0].clone();

        let mut status = live.clone();
        status["status"] = json!({"replicas": 2});
        status_update_as(&live, &mut status, "controller", T2);
        let entries = managed_fields(&status).and_then(Value::as_array).unwrap();
        assert_eq!(entries.len(), 3);
        assert!(entries.contains(&imager), "{entries:?}");

        // A write of the image takes it from the imager: its entry goes (it owned nothing
        // else), the scaler's stays.
        let mut moved = live.clone();
        moved["spec"]["template"]["spec"]["containers"][0]["image"] = json!("app:2");
        update_as(&live, &mut moved, "mover", T2);
        let names: Vec<String> = managers(&moved).into_iter().map(|(m, _)| m).collect();
        assert_eq!(names, ["scaler", "mover"]);
    }

    #[test]
    fn untracked_objects_stay_untracked_and_reset_clears() {
        let old = yaml(WEB);
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(3);
        update_as(&old, &mut new, "someone", T1);
        assert!(managed_fields(&new).is_none());

        let mut created = yaml(WEB);
        record_update(schemas(), schema(), None, &mut created, &writer("creator", T1));
        let mut reset = created.clone();
        reset["metadata"]["managedFields"] = json!([{}]);
        update_as(&created, &mut reset, "someone", T2);
        assert!(managed_fields(&reset).is_none());

        // The first apply to an untracked object conflicts with what was there.
        let err = apply_as(Some(&new), WEB, "kubectl", T2, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"before-first-apply\" using apps/v1: .spec.replicas"
        );
    }

    #[test]
    fn update_managers_are_capped_at_ten() {
        let mut obj = yaml(WEB);
        record_update(schemas(), schema(), None, &mut obj, &writer("creator", T1));
        for i in 0..12 {
            let mut next = obj.clone();
            next["metadata"]["labels"][format!("l{i}")] = json!("x");
            let time = format!("2025-01-01T00:01:{i:02}Z");
            update_as(&obj, &mut next, &format!("m{i:02}"), &time);
            obj = next;
        }
        let names: Vec<String> = managers(&obj).into_iter().map(|(m, _)| m).collect();
        assert_eq!(names.len(), 10, "{names:?}");
        assert!(names.contains(&"ancient-changes".to_string()) && !names.contains(&"creator".to_string()));
        assert!(owned(&obj, "ancient-changes").contains(&".metadata.labels.l0".to_string()));
    }

    #[test]
    fn bad_applies_are_refused() {
        let cases = [
            ("{apiVersion: apps/v2, kind: Deployment, metadata: {name: web}}", "Incorrect version"),
            ("{apiVersion: apps/v1, kind: ReplicaSet, metadata: {name: web}}", "kind ReplicaSet"),
            ("{metadata: {name: web}}", "apiVersion and kind"),
            ("{apiVersion: apps/v1, kind: Deployment, metadata: {name: web, managedFields: []}}", "managedFields must be nil"),
            (
                "{apiVersion: apps/v1, kind: Deployment, metadata: {name: web}, spec: {template: {spec: {containers: [{name: a}, {name: a}]}}}}",
                "duplicate entries",
            ),
            (
                "{apiVersion: apps/v1, kind: Deployment, metadata: {name: web}, spec: {template: {spec: {containers: [{image: a}]}}}}",
                "omits key field",
            ),
        ];
        for (config, part) in cases {
            let err = apply_as(None, config, "kubectl", T1, false).unwrap_err();
            assert!(err.to_string().contains(part), "{config}: {err}");
        }
        assert!(parse(b"apiVersion: apps/v1\nkind: Deployment\n").is_ok());
        assert!(parse(br#"{"apiVersion": "apps/v1"}"#).is_ok());
        assert!(matches!(parse(b"- a\n- b\n"), Err(ApplyError::BadRequest(_))));
        assert!(matches!(parse(b"a: [b"), Err(ApplyError::Yaml(_))));
    }
}
