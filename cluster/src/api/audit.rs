//! The audit trail: one record per object written, appended by the write path in the
//! SAME store transaction as the write (so the trail can neither miss nor invent a
//! change), read back by `GET /apis/kairn.dev/v1/auditrecords`, and bounded by a
//! retention task.
//!
//! Heartbeats are not recorded, as Kubernetes' default audit policies leave them out:
//! Leases (renewed by every node every 10 s, by every elected component every 2 s) and
//! Events. At 5,000 nodes they would be 500 records a second, pushing every change a
//! person or a commit made out of the bounded trail within minutes.
//!
//! Records are store appends (`/kairn/audit/<revision>.<n>`): ordered by revision, and
//! the revision in the key is the object's new resourceVersion. Secret values never
//! reach a record: they are replaced by a hash of the value.

use std::collections::HashMap;
use std::time::Duration;

use json_patch::jsonptr::PointerBuf;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::AppState;
use crate::kinds::{AuditRecord, API_VERSION};
use crate::store::{append_revision, Op, Store, Txn};

/// Where audit records live in the store.
pub const PREFIX: &str = "/kairn/audit/";

/// How many records are kept at most (the oldest go first).
pub const MAX_RECORDS: usize = 200_000;
/// How long a record is kept at most.
pub const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(300);

/// Whether writes of `res` get audit records (not Leases, not Events).
pub fn audited(res: &super::registry::ResourceInfo) -> bool {
    !matches!(
        (res.group, res.plural),
        ("coordination.k8s.io", "leases") | ("", "events") | ("events.k8s.io", "events")
    )
}

/// Where a write comes from when Git is its source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    /// `namespace/name` of the Application.
    pub application: String,
    /// Full SHA of the commit.
    pub commit: String,
}

/// The time `secs` seconds ago, RFC 3339 in UTC with microseconds (records of one
/// second stay ordered for a reader who sorts by time, and compare as strings).
fn micros_ago(secs: i64) -> Option<String> {
    let then = k8s_openapi::jiff::Timestamp::now()
        .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(secs))
        .ok()?;
    Some(then.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
}

/// `sha256:` and the first 16 hex digits of the hash of `bytes`: enough to tell two values
/// apart or equal, nothing to recover them from.
pub fn hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A Secret with every value of `data` and `stringData` (and the last-applied
/// annotation, which holds them too) replaced by its hash; other kinds unchanged.
pub fn redact(obj: &Value) -> Value {
    if !is_secret(obj) {
        return obj.clone();
    }
    let mut out = obj.clone();
    for field in ["data", "stringData"] {
        if let Some(map) = out.get_mut(field).and_then(Value::as_object_mut) {
            for v in map.values_mut() {
                let text = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
                *v = json!(hash(text.as_bytes()));
            }
        }
    }
    if let Some(a) = out.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
        if let Some(v) = a.get_mut("kubectl.kubernetes.io/last-applied-configuration") {
            let text = v.as_str().unwrap_or_default().to_string();
            *v = json!(hash(text.as_bytes()));
        }
    }
    out
}

/// Whether `obj` is a core Secret, whose values a record must not hold.
fn is_secret(obj: &Value) -> bool {
    obj.get("kind").and_then(Value::as_str) == Some("Secret")
        && obj.get("apiVersion").and_then(Value::as_str) == Some("v1")
}

/// The metadata fields a patch need not mention: bookkeeping that changes on every write.
const BOOKKEEPING: [&str; 2] = ["managedFields", "resourceVersion"];

/// What a patch need not say: bookkeeping that changes on every write.
fn comparable(obj: &Value) -> Value {
    let mut out = redact(obj);
    if let Some(m) = out.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in BOOKKEEPING {
            m.remove(field);
        }
    }
    out
}

/// `json_patch::diff(before, after)` without the operations on bookkeeping, which is
/// never walked, and with equal subtrees passed over at once: an update changes little of
/// an object (a pod's status, not its spec), and this runs on every write. The operations
/// are built as JSON at once, as a record holds them.
fn diff(before: &Value, after: &Value) -> Vec<Value> {
    let mut patch = Vec::new();
    diff_at(before, after, &mut PointerBuf::new(), &mut patch);
    patch
}

/// One operation as JSON Patch writes it.
fn op(op: &str, path: &PointerBuf, value: Option<&Value>) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("op".into(), Value::String(op.into()));
    out.insert("path".into(), Value::String(path.as_str().into()));
    if let Some(value) = value {
        out.insert("value".into(), value.clone());
    }
    Value::Object(out)
}

/// The operations of `json_patch::diff`, in its order, for the values at `path`.
fn diff_at(before: &Value, after: &Value, path: &mut PointerBuf, patch: &mut Vec<Value>) {
    if before == after {
        return;
    }
    let in_metadata = path.as_str() == "/metadata";
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let walked = |key: &String| !(in_metadata && BOOKKEEPING.contains(&key.as_str()));
            for (key, value) in a.iter().filter(|(k, _)| walked(k)) {
                path.push_back(key);
                match b.get(key) {
                    Some(was) => diff_at(was, value, path, patch),
                    None => patch.push(op("add", path, Some(value))),
                }
                path.pop_back();
            }
            for key in b.keys().filter(|k| walked(k) && !a.contains_key(*k)) {
                path.push_back(key);
                patch.push(op("remove", path, None));
                path.pop_back();
            }
        }
        (Value::Array(b), Value::Array(a)) => {
            // As json_patch: item by position; a removed item shifts the ones after it.
            let mut shift = 0usize;
            for i in 0..b.len().max(a.len()) {
                path.push_back(i - shift);
                match (b.get(i), a.get(i)) {
                    (Some(was), Some(value)) => diff_at(was, value, path, patch),
                    (Some(_), None) => {
                        shift += 1;
                        patch.push(op("remove", path, None));
                    }
                    (None, Some(value)) => patch.push(op("add", path, Some(value))),
                    (None, None) => {}
                }
                path.pop_back();
            }
        }
        _ => patch.push(op("replace", path, Some(after))),
    }
}

/// The JSON patch from `before` to `after` (either absent for a create or a delete).
pub fn change(before: Option<&Value>, after: Option<&Value>) -> Value {
    match (before, after) {
        (None, Some(a)) => json!([{"op": "add", "path": "", "value": comparable(a)}]),
        (Some(_), None) => json!([{"op": "remove", "path": ""}]),
        // Diffed as they are (a Secret redacted first), the bookkeeping passed over: the
        // same patch as from copies without it, and no copies of two whole objects on
        // every update.
        (Some(b), Some(a)) => Value::Array(if is_secret(b) || is_secret(a) {
            diff(&redact(b), &redact(a))
        } else {
            diff(b, a)
        }),
        (None, None) => json!([]),
    }
}

/// The store op that appends the record of one write.
pub fn append(
    user: &str,
    verb: &str,
    before: Option<(&Value, u64)>,
    after: Option<&Value>,
    provenance: Option<&Provenance>,
) -> Op {
    let obj = after.or(before.map(|(b, _)| b)).unwrap_or(&Value::Null);
    let s = |p: &str| obj.pointer(p).and_then(Value::as_str).map(str::to_string);
    let record = AuditRecord {
        time: micros_ago(0).unwrap_or_default(),
        user: user.to_string(),
        verb: verb.to_string(),
        api_version: s("/apiVersion").unwrap_or_default(),
        kind: s("/kind").unwrap_or_default(),
        namespace: s("/metadata/namespace"),
        name: s("/metadata/name").unwrap_or_default(),
        resource_version_before: before.map(|(_, rev)| rev.to_string()),
        resource_version_after: None,
        application: provenance.map(|p| p.application.clone()),
        commit: provenance.map(|p| p.commit.clone()),
        patch: change(before.map(|(b, _)| b), after),
    };
    Op::Append {
        prefix: PREFIX.to_string(),
        value: serde_json::to_vec(&record).unwrap_or_default(),
    }
}

/// What `kairn audit` asks for: every filter optional.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only this kind (case-insensitive; plural or singular resource names also match).
    pub kind: Option<String>,
    /// Only objects of this name.
    pub name: Option<String>,
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only writes from this Application (`name` or `namespace/name`).
    pub application: Option<String>,
    /// Only this user.
    pub user: Option<String>,
    /// Only records at or after this time (RFC 3339).
    pub since: Option<String>,
    /// At most this many (the newest).
    pub limit: usize,
}

impl Query {
    /// Reads the filters from query parameters.
    pub fn from_params(params: &HashMap<String, String>) -> Result<Self, ApiError> {
        let get = |k: &str| params.get(k).filter(|v| !v.is_empty()).cloned();
        let limit = match params.get("limit") {
            Some(l) => l
                .parse()
                .map_err(|_| ApiError::BadRequest(format!("limit: not a number: {l}")))?,
            None => 500,
        };
        let since = match get("since") {
            Some(s) => Some(parse_since(&s)?),
            None => None,
        };
        Ok(Query {
            kind: get("kind"),
            name: get("name"),
            namespace: get("namespace"),
            application: get("application"),
            user: get("user"),
            since,
            limit,
        })
    }

    fn matches(&self, r: &AuditRecord) -> bool {
        let kind_ok = self.kind.as_deref().is_none_or(|k| {
            let k = k.to_ascii_lowercase();
            let kind = r.kind.to_ascii_lowercase();
            k == kind || k == format!("{kind}s") || k == format!("{kind}es") || k.trim_end_matches('s') == kind
        });
        let app_ok = self.application.as_deref().is_none_or(|a| {
            r.application
                .as_deref()
                .is_some_and(|have| have == a || have.rsplit('/').next() == Some(a))
        });
        kind_ok
            && app_ok
            && self.name.as_deref().is_none_or(|n| r.name == n)
            && self
                .namespace
                .as_deref()
                .is_none_or(|n| r.namespace.as_deref() == Some(n))
            && self.user.as_deref().is_none_or(|u| r.user == u)
            && self.since.as_deref().is_none_or(|s| r.time.as_str() >= s)
    }
}

/// `since` as an RFC 3339 time: either one already, or a duration back from now
/// (`90s`, `15m`, `2h`, `7d`).
pub fn parse_since(s: &str) -> Result<String, ApiError> {
    if s.contains('T') {
        return Ok(s.to_string());
    }
    let bad = || {
        ApiError::BadRequest(format!(
            "since: want a duration such as 15m, 2h or 7d, or an RFC 3339 time: {s}"
        ))
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(bad()),
    };
    micros_ago(secs).ok_or_else(bad)
}

/// The records matching `query`, newest first.
pub async fn list(state: &AppState, query: &Query) -> Result<Vec<AuditRecord>, ApiError> {
    let (kvs, _, _) = state.store.list(PREFIX, None, None).await?;
    let mut out = Vec::new();
    // Newest first: walk backwards and stop at the limit.
    for kv in kvs.iter().rev() {
        let Ok(mut record) = serde_json::from_slice::<AuditRecord>(&kv.value) else {
            continue;
        };
        if !query.matches(&record) {
            continue;
        }
        record.resource_version_after = append_revision(&kv.key).map(|r| r.to_string());
        out.push(record);
        if out.len() >= query.limit {
            break;
        }
    }
    Ok(out)
}

/// `GET /apis/kairn.dev/v1/auditrecords`: the records matching the query parameters.
pub async fn serve(state: &AppState, params: &HashMap<String, String>) -> Result<Value, ApiError> {
    let query = Query::from_params(params)?;
    let items = list(state, &query).await?;
    Ok(json!({"apiVersion": API_VERSION, "kind": "AuditRecordList", "metadata": {}, "items": items}))
}

/// Keeps the trail bounded until `shutdown`: the oldest records beyond [`MAX_RECORDS`]
/// or older than [`MAX_AGE`] are deleted every few minutes.
pub async fn retain(store: Store, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RETENTION_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = prune(&store, MAX_RECORDS, MAX_AGE).await {
            tracing::warn!(error = %e, "audit retention failed");
        }
    }
}

/// Deletes the records beyond `max_records` and those older than `max_age`; returns how
/// many went.
pub async fn prune(store: &Store, max_records: usize, max_age: Duration) -> Result<usize, ApiError> {
    let (kvs, _, _) = store.list(PREFIX, None, None).await?;
    let cutoff = micros_ago(max_age.as_secs() as i64).unwrap_or_default();
    let over = kvs.len().saturating_sub(max_records);
    let mut doomed = Vec::new();
    for (i, kv) in kvs.iter().enumerate() {
        let old = serde_json::from_slice::<AuditRecord>(&kv.value).is_ok_and(|r| r.time < cutoff);
        if i < over || old {
            doomed.push(kv.key.clone());
        } else {
            // Records are in revision order, which is time order: the rest is younger.
            break;
        }
    }
    let n = doomed.len();
    for chunk in doomed.chunks(10_000) {
        let ops = chunk.iter().map(|key| Op::Delete { key: key.clone() }).collect();
        store.txn(Txn { compares: vec![], ops }).await?;
    }
    if n > 0 {
        tracing::info!(deleted = n, "audit records past retention deleted");
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_are_not_audited() {
        let by = |group: &str, plural: &str| {
            super::super::registry::RESOURCES
                .iter()
                .find(|r| r.group == group && r.plural == plural)
                .map(audited)
        };
        assert_eq!(by("coordination.k8s.io", "leases"), Some(false));
        assert_eq!(by("", "events"), Some(false));
        assert_eq!(by("", "pods"), Some(true));
        assert_eq!(by("apps", "deployments"), Some(true));
        assert_eq!(by("", "configmaps"), Some(true));
    }

    #[test]
    fn secret_values_become_hashes() {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"data\":{\"p\":\"aHVudGVyMg==\"}}"}},
            "data": {"p": "aHVudGVyMg=="}, "stringData": {"q": "hunter2"}});
        let red = redact(&secret);
        let text = red.to_string();
        assert!(!text.contains("aHVudGVyMg==") && !text.contains("hunter2"), "{text}");
        assert_eq!(red["data"]["p"], json!(hash(b"aHVudGVyMg==")));
        // Same value, same hash: a reader can still see that a value changed.
        assert_eq!(redact(&secret), red);
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"p": "plain"}});
        assert_eq!(redact(&cm), cm);
    }

    #[test]
    fn a_change_is_a_json_patch_without_bookkeeping() {
        let before = json!({"kind": "ConfigMap", "metadata": {"name": "c", "resourceVersion": "4", "managedFields": []}, "data": {"a": "1"}});
        let after = json!({"kind": "ConfigMap", "metadata": {"name": "c", "resourceVersion": "9", "managedFields": [{}]}, "data": {"a": "2"}});
        assert_eq!(
            change(Some(&before), Some(&after)),
            json!([{"op": "replace", "path": "/data/a", "value": "2"}])
        );
        assert_eq!(change(Some(&before), None), json!([{"op": "remove", "path": ""}]));
        assert_eq!(change(None, Some(&after))[0]["op"], "add");
        // A Secret's change names its values by hash only.
        let secret =
            |v: &str| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"p": v}});
        let patch = change(Some(&secret("b2xk")), Some(&secret("bmV3"))).to_string();
        assert!(!patch.contains("bmV3") && patch.contains(&hash(b"bmV3")), "{patch}");
    }

    #[test]
    fn the_diff_is_json_patchs_without_bookkeeping() {
        // What `diff` must equal: json_patch's whole diff, bookkeeping operations dropped.
        let expected = |b: &Value, a: &Value| {
            let mut patch = json_patch::diff(b, a);
            patch.0.retain(|op| {
                let Some(field) = op.path().as_str().strip_prefix("/metadata/") else {
                    return true;
                };
                !BOOKKEEPING.contains(&field.split('/').next().unwrap_or_default())
            });
            serde_json::to_value(patch).unwrap().as_array().cloned().unwrap()
        };
        let pairs = [
            (
                json!({"metadata": {"name": "p", "resourceVersion": "1", "managedFields": [{"a": 1}], "managedFieldsX": 1,
                    "labels": {"a": "1", "gone": "x"}},
                    "spec": {"template": {"metadata": {"resourceVersion": "7"}}, "list": [1, 2, 3, 4], "same": {"x": [1]}}}),
                json!({"metadata": {"name": "p", "resourceVersion": "2", "managedFields": [{"a": 2}, {}], "managedFieldsX": 2,
                    "labels": {"a": "2", "new": "y"}},
                    "spec": {"template": {"metadata": {"resourceVersion": "8"}}, "list": [1, 9], "same": {"x": [1]}},
                    "status": {"phase": "Running"}}),
            ),
            (json!({"a": [1]}), json!({"a": [1, {"b": 2}, 3]})),
            (json!({"a": {"b": 1}}), json!({"a": [1]})),
            (json!({"a": 1}), json!(null)),
            (
                json!([{"metadata": {"resourceVersion": "1"}}]),
                json!([{"metadata": {"resourceVersion": "2"}}]),
            ),
        ];
        for (b, a) in &pairs {
            assert_eq!(diff(b, a), expected(b, a), "{b} -> {a}");
            assert_eq!(diff(a, b), expected(a, b), "{a} -> {b}");
        }
        // The first pair's bookkeeping is left out; the look-alikes are not.
        let ops = Value::Array(diff(&pairs[0].0, &pairs[0].1)).to_string();
        assert!(
            !ops.contains("\"/metadata/resourceVersion\"") && !ops.contains("/metadata/managedFields/"),
            "{ops}"
        );
        assert!(
            ops.contains("/metadata/managedFieldsX") && ops.contains("/spec/template/metadata/resourceVersion"),
            "{ops}"
        );
    }

    #[test]
    fn queries_filter_by_kind_user_app_and_time() {
        let record = AuditRecord {
            time: "2026-11-23T10:00:00.000000Z".into(),
            user: "alice".into(),
            kind: "Deployment".into(),
            name: "web".into(),
            namespace: Some("prod".into()),
            application: Some("kairn-system/shop".into()),
            ..Default::default()
        };
        let q = |f: &dyn Fn(&mut Query)| {
            let mut q = Query {
                limit: 10,
                ..Default::default()
            };
            f(&mut q);
            q.matches(&record)
        };
        assert!(q(&|q| q.kind = Some("deployments".into())));
        assert!(q(&|q| q.kind = Some("deployment".into())));
        assert!(!q(&|q| q.kind = Some("pod".into())));
        assert!(q(&|q| q.application = Some("shop".into())));
        assert!(q(&|q| q.application = Some("kairn-system/shop".into())));
        assert!(!q(&|q| q.user = Some("bob".into())));
        assert!(q(&|q| q.since = Some("2026-11-23T09:00:00Z".into())));
        assert!(!q(&|q| q.since = Some("2026-11-23T11:00:00Z".into())));
        assert!(parse_since("15m").is_ok() && parse_since("2x").is_err());
    }
}
