//! Reading a stored object into the watch cache without decoding all of it.
//!
//! Every write is decoded by the watch cache of every member, to index it and to give
//! every response the same JSON. Decoding it into a `serde_json::Value` and serializing
//! it again, only to add `metadata.resourceVersion` (the store keeps the revision, not
//! the field), took about 9% of the API server's CPU in the scheduler bench. Here the
//! stored JSON is kept as it is, with the resourceVersion spliced into its metadata, and
//! only what the cache indexes is read: the metadata's name, namespace, labels and
//! deletion mark, and the kind's selectable fields, each by skipping over the rest.
//!
//! Anything not in the shape the store writes (a key with escapes, a label that is not a
//! string, a stored resourceVersion) is left to the full decode: `None`.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::api::selectors::text_of;

/// What the cache reads of an object, and its JSON as served.
#[derive(Debug)]
pub(super) struct Read {
    /// The stored JSON with `metadata.resourceVersion` set.
    pub json: Vec<u8>,
    /// `metadata.name` ("" when absent).
    pub name: String,
    /// `metadata.namespace`, when not empty.
    pub namespace: Option<String>,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// Values of the selectable fields the object has (not empty).
    pub fields: Vec<(&'static str, String)>,
    /// Whether `metadata.deletionTimestamp` is set.
    pub deleting: bool,
}

/// The metadata fields the cache reads; the rest is skipped.
#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(borrow, default)]
    name: Option<&'a str>,
    #[serde(borrow, default)]
    namespace: Option<&'a str>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "deletionTimestamp")]
    deletion_timestamp: Option<IgnoredAny>,
}

/// The members of a JSON object, each left unparsed.
type Members<'a> = BTreeMap<&'a str, &'a RawValue>;

/// Reads `stored` (an object as the store keeps it) at `revision`, with the fields of
/// `selectable`; `None` when only the full decode can.
pub(super) fn read(stored: &[u8], revision: u64, selectable: &'static [&'static str]) -> Option<Read> {
    let text = std::str::from_utf8(stored).ok()?;
    let top: Members = serde_json::from_str(text).ok()?;
    let meta_raw = *top.get("metadata")?;
    let meta_text = meta_raw.get();
    // A stored resourceVersion (the store's encoding leaves it out) would be a second key.
    if meta_text.contains("\"resourceVersion\"") {
        return None;
    }
    let meta: Metadata = serde_json::from_str(meta_text).ok()?;
    let mut fields = Vec::new();
    // A pod's spec and status each hold several selectable fields: read each once.
    let mut objects: BTreeMap<&str, Option<Members>> = BTreeMap::new();
    for path in selectable {
        let value = match *path {
            "metadata.name" => meta.name.unwrap_or_default().to_string(),
            "metadata.namespace" => meta.namespace.unwrap_or_default().to_string(),
            path => field(&top, &mut objects, path)?,
        };
        if !value.is_empty() {
            fields.push((*path, value));
        }
    }
    Some(Read {
        json: with_revision(stored, text, meta_text, revision)?,
        name: meta.name.unwrap_or_default().to_string(),
        namespace: meta.namespace.filter(|n| !n.is_empty()).map(str::to_string),
        labels: meta.labels.unwrap_or_default(),
        fields,
        deleting: meta.deletion_timestamp.is_some(),
    })
}

/// The text of the field at the dotted `path` below `top`, as field selectors compare it
/// ("" if absent); `None` when an object on the way cannot be read without escapes.
/// `objects` keeps the members of the top-level objects read so far.
fn field<'a>(top: &Members<'a>, objects: &mut BTreeMap<&'a str, Option<Members<'a>>>, path: &str) -> Option<String> {
    let mut segments = path.split('.');
    let Some((&first, &raw)) = segments.next().and_then(|first| top.get_key_value(first)) else {
        return Some(String::new());
    };
    let Some(second) = segments.next() else {
        return leaf_text(raw);
    };
    let first_members = match objects.entry(first) {
        Entry::Occupied(read) => read.into_mut(),
        Entry::Vacant(unread) => unread.insert(members(raw)?),
    };
    let mut raw = match first_members.as_ref().and_then(|m| m.get(second)) {
        Some(raw) => *raw,
        None => return Some(String::new()),
    };
    for segment in segments {
        raw = match members(raw)?.and_then(|m| m.get(segment).copied()) {
            Some(next) => next,
            None => return Some(String::new()),
        };
    }
    leaf_text(raw)
}

/// The members of `raw` if it is an object (`Some(None)` if it is not); `None` when they
/// cannot be read without escapes.
fn members(raw: &RawValue) -> Option<Option<Members<'_>>> {
    if !raw.get().trim_start().starts_with('{') {
        return Some(None);
    }
    serde_json::from_str(raw.get()).ok().map(Some)
}

/// The text of a value as field selectors compare it.
fn leaf_text(raw: &RawValue) -> Option<String> {
    let leaf: Value = serde_json::from_str(raw.get()).ok()?;
    Some(text_of(&leaf))
}

/// `stored` with `"resourceVersion":"<revision>"` first in its metadata, whose JSON
/// (`meta_text`) lies within `text`, the same bytes as `stored`.
fn with_revision(stored: &[u8], text: &str, meta_text: &str, revision: u64) -> Option<Vec<u8>> {
    let open = (meta_text.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
    if stored.get(open) != Some(&b'{') {
        return None;
    }
    let empty = meta_text[1..].trim_start().starts_with('}');
    let field = format!("\"resourceVersion\":\"{revision}\"");
    let mut out = Vec::with_capacity(stored.len() + field.len() + 1);
    out.extend_from_slice(&stored[..=open]);
    out.extend_from_slice(field.as_bytes());
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(&stored[open + 1..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cache::{read_value, selectable};
    use crate::api::registry;
    use crate::store::KeyValue;
    use serde_json::json;

    fn stored(obj: &Value) -> KeyValue {
        KeyValue {
            key: "/registry/x".into(),
            value: crate::api::objects::encode(obj).unwrap(),
            mod_revision: 7,
            lease: 0,
        }
    }

    /// The partial read agrees with the full decode on everything the cache keeps.
    fn agrees(obj: Value, plural: (&'static str, &'static str)) {
        let kv = stored(&obj);
        let res = registry::RESOURCES
            .iter()
            .find(|r| (r.group, r.plural) == plural)
            .expect("served");
        let selectable = selectable(res);
        let read = read(&kv.value, kv.mod_revision, selectable).expect("read without the full decode");
        let full = read_value(&kv, selectable).unwrap();
        let served: Value = serde_json::from_slice(&read.json).unwrap();
        let expected: Value = serde_json::from_slice(&full.json).unwrap();
        assert_eq!(served, expected);
        assert_eq!(served["metadata"]["resourceVersion"], "7");
        assert_eq!(read.name, full.name);
        assert_eq!(read.namespace, full.namespace);
        assert_eq!(read.labels, full.labels);
        assert_eq!(read.fields, full.fields);
        assert_eq!(read.deleting, full.deleting);
    }

    #[test]
    fn reads_what_the_full_decode_reads() {
        agrees(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns",
                "labels": {"app": "web"}}, "data": {"a": "1"}}),
            ("", "configmaps"),
        );
        agrees(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns",
                "deletionTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"nodeName": "n1", "hostNetwork": true, "containers": [{"name": "a", "image": "i"}]},
                "status": {"phase": "Running"}}),
            ("", "pods"),
        );
        agrees(
            json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e", "namespace": "ns"},
                "involvedObject": {"kind": "Pod", "name": "p"}, "source": {"component": "kubelet"},
                "reason": "Started", "type": "Normal"}),
            ("", "events"),
        );
        // Empty metadata gets the resourceVersion alone.
        agrees(json!({"kind": "Namespace", "metadata": {}}), ("", "namespaces"));
    }

    #[test]
    fn leaves_other_shapes_to_the_full_decode() {
        let revision = 7;
        let none = |obj: Value| read(&serde_json::to_vec(&obj).unwrap(), revision, &["metadata.name"]);
        assert!(none(json!({"metadata": {"name": "c", "labels": {"n": 1}}})).is_none());
        assert!(none(json!({"metadata": {"name": "c", "resourceVersion": "3"}})).is_none());
        assert!(none(json!({"metadata": {"name": "c\"quoted"}})).is_none());
        assert!(none(json!({"kind": "NoMetadata"})).is_none());
    }
}
