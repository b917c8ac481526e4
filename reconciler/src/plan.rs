//! The plan: what to create, update, prune or leave alone to make the cluster match a
//! commit, each change with a YAML diff. Only fields the manifest sets are compared, so
//! defaults and status filled in by the server are never a difference.

use std::collections::{BTreeMap, HashMap};

use kairn_cluster::api::audit::redact;
use kairn_cluster::kinds::{PlanSummary, APP_LABEL, COMMIT_ANNOTATION, SOURCE_PATH_ANNOTATION};
use kube::discovery::{ApiResource, Discovery, Scope};
use serde_json::{json, Value};

use crate::manifest::{self, Manifest, ManifestError};

/// The kinds the API server serves, from discovery.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    kinds: HashMap<(String, String), (ApiResource, bool)>,
}

impl Catalog {
    /// Reads the served kinds from the API server.
    pub async fn discover(client: &kube::Client) -> Result<Self, kube::Error> {
        let discovery = Discovery::new(client.clone()).run().await?;
        let mut kinds = HashMap::new();
        for group in discovery.groups() {
            for version in group.versions() {
                for (ar, caps) in group.versioned_resources(version) {
                    let listable = caps.operations.iter().any(|o| o == "list");
                    if !listable {
                        continue;
                    }
                    let namespaced = matches!(caps.scope, Scope::Namespaced);
                    kinds.insert((ar.api_version.clone(), ar.kind.clone()), (ar, namespaced));
                }
            }
        }
        Ok(Catalog { kinds })
    }

    /// A catalog of the given resources (each with whether it is namespaced).
    pub fn from_resources(resources: impl IntoIterator<Item = (ApiResource, bool)>) -> Self {
        let kinds = resources
            .into_iter()
            .map(|(ar, ns)| ((ar.api_version.clone(), ar.kind.clone()), (ar, ns)))
            .collect();
        Catalog { kinds }
    }

    /// The resource of an apiVersion/kind and whether it is namespaced.
    pub fn get(&self, api_version: &str, kind: &str) -> Option<&(ApiResource, bool)> {
        self.kinds.get(&(api_version.to_string(), kind.to_string()))
    }

    /// The apiVersions this cluster serves `kind` under.
    pub fn versions_of(&self, kind: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .kinds
            .keys()
            .filter(|(_, k)| k == kind)
            .map(|(av, _)| av.clone())
            .collect();
        v.sort();
        v
    }

    /// Every served resource an Application may own (all but Kairn's own kinds).
    pub fn manageable(&self) -> impl Iterator<Item = &(ApiResource, bool)> {
        self.kinds
            .values()
            .filter(|(ar, _)| ar.group != kairn_cluster::kinds::GROUP)
    }
}

/// What happens to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// In Git, not live.
    Create,
    /// In Git and live, but different.
    Update,
    /// Live and managed, no longer in Git.
    Prune,
    /// As in Git already.
    Unchanged,
}

/// One object's part of a plan.
#[derive(Debug, Clone)]
pub struct Change {
    /// What to do.
    pub action: Action,
    /// `apiVersion/kind namespace/name`.
    pub object: String,
    /// `<file>#<doc>` the object comes from (None for prunes).
    pub source: Option<String>,
    /// The object as it should be (None for prunes).
    pub desired: Option<Value>,
    /// The live object (None for creates).
    pub live: Option<Value>,
    /// Unified YAML diff, live -> desired, over the fields the manifest sets.
    pub diff: String,
}

/// The whole plan for one commit.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Changes in apply order: creates and updates in manifest order, then prunes.
    pub changes: Vec<Change>,
}

impl Plan {
    /// Counts per action.
    pub fn summary(&self) -> PlanSummary {
        let mut s = PlanSummary::default();
        for c in &self.changes {
            match c.action {
                Action::Create => s.created += 1,
                Action::Update => s.updated += 1,
                Action::Prune => s.pruned += 1,
                Action::Unchanged => s.unchanged += 1,
            }
        }
        s
    }

    /// Whether applying would change anything.
    pub fn has_changes(&self) -> bool {
        self.changes.iter().any(|c| c.action != Action::Unchanged)
    }

    /// The plan for machines (`kairn diff -o json`): every change but the unchanged
    /// ones, with its diff, and the counts.
    pub fn to_json(&self) -> Value {
        let changes: Vec<Value> = self
            .changes
            .iter()
            .filter(|c| c.action != Action::Unchanged)
            .map(|c| json!({"action": c.action.as_str(), "object": c.object, "source": c.source, "diff": c.diff}))
            .collect();
        json!({"changes": changes, "summary": self.summary()})
    }
}

impl Action {
    /// The verb shown to people: `create`, `update`, `prune`, `unchanged`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Prune => "prune",
            Action::Unchanged => "unchanged",
        }
    }
}

/// Identity of an object across desired and live: apiVersion's group, kind, namespace, name.
fn identity(obj: &Value) -> (String, String, String, String) {
    let s = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
    let group = s("/apiVersion")
        .rsplit_once('/')
        .map(|(g, _)| g.to_string())
        .unwrap_or_default();
    (group, s("/kind"), s("/metadata/namespace"), s("/metadata/name"))
}

/// Turns manifests into the objects to apply: served kind, namespace defaulted (to the
/// Application's destination), and the Application label, commit and source annotations
/// set. Collects every error.
pub fn desired_objects(
    manifests: Vec<Manifest>,
    catalog: &Catalog,
    app: &str,
    commit: &str,
    default_namespace: &str,
) -> Result<Vec<(String, Value)>, Vec<ManifestError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut seen: HashMap<(String, String, String, String), String> = HashMap::new();
    'manifests: for m in manifests {
        let source = m.source();
        let api_version = m.object["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = m.object["kind"].as_str().unwrap_or_default().to_string();
        let Some((_, namespaced)) = catalog.get(&api_version, &kind) else {
            errors.push(ManifestError {
                source_path: source,
                object: m.describe(),
                field: "kind".into(),
                message: match catalog.versions_of(&kind).as_slice() {
                    [] => format!("{kind} is not served by this cluster"),
                    served => format!(
                        "{api_version} is not served for {kind} (an old or unknown version); use {}",
                        served.join(" or ")
                    ),
                },
            });
            continue;
        };
        let mut obj = m.object;
        let meta = &mut obj["metadata"];
        if !meta.is_object() {
            errors.push(ManifestError {
                source_path: source,
                object: manifest::describe(&obj),
                field: "metadata".into(),
                message: "must be a mapping".into(),
            });
            continue;
        }
        if *namespaced {
            if meta.get("namespace").and_then(Value::as_str).is_none_or(str::is_empty) {
                meta["namespace"] = json!(default_namespace);
            }
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        for (field, value) in [
            ("labels", json!({APP_LABEL: app})),
            (
                "annotations",
                json!({COMMIT_ANNOTATION: commit, SOURCE_PATH_ANNOTATION: source}),
            ),
        ] {
            if !obj["metadata"].get(field).is_none_or(Value::is_object) {
                errors.push(ManifestError {
                    source_path: source.clone(),
                    object: manifest::describe(&obj),
                    field: format!("metadata.{field}"),
                    message: "must be a mapping of strings".into(),
                });
                continue 'manifests;
            }
            let target = &mut obj["metadata"][field];
            if target.is_null() {
                *target = json!({});
            }
            for (k, v) in value.as_object().into_iter().flatten() {
                target[k] = v.clone();
            }
        }
        if api_version == "v1" && kind == "Secret" {
            // The server keeps `stringData` as `data`: compare what it will keep.
            kairn_cluster::api::resources::core::fold_string_data(&mut obj);
        }
        if let Some(first) = seen.insert(identity(&obj), source.clone()) {
            errors.push(ManifestError {
                source_path: source,
                object: manifest::describe(&obj),
                field: String::new(),
                message: format!("defined twice (first at {first})"),
            });
            continue;
        }
        out.push((source, obj));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Lists the live objects of every manageable kind that some Application manages (for
/// the CLI, which has no watch-fed cache; the reconciler reads its cache instead).
pub async fn live_objects(client: &kube::Client, catalog: &Catalog) -> Result<Vec<Value>, kube::Error> {
    let params = kube::api::ListParams::default().labels(APP_LABEL);
    let mut out = Vec::new();
    for (ar, _) in catalog.manageable() {
        let api: kube::Api<kube::api::DynamicObject> = kube::Api::all_with(client.clone(), ar);
        for obj in api.list(&params).await?.items {
            let mut value = serde_json::to_value(&obj).map_err(kube::Error::SerdeError)?;
            value["apiVersion"] = json!(ar.api_version);
            value["kind"] = json!(ar.kind);
            out.push(value);
        }
    }
    Ok(out)
}

/// The Application a live object is labelled as managed by, if any.
pub fn owner(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/labels")?.get(APP_LABEL)?.as_str()
}

/// Objects of the commit that another Application already owns: an object belongs to
/// exactly one Application, and a second claim is an error, never a takeover. `live` is
/// every managed object, of any Application.
pub fn foreign_claims(desired: &[(String, Value)], app: &str, live: &[Value]) -> Vec<ManifestError> {
    let key = |o: &Value| {
        let s = |p: &str| o.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
        (
            s("/apiVersion"),
            s("/kind"),
            s("/metadata/namespace"),
            s("/metadata/name"),
        )
    };
    let others: HashMap<_, &str> = live
        .iter()
        .filter_map(|o| owner(o).filter(|owner| *owner != app).map(|owner| (key(o), owner)))
        .collect();
    let mut errors = Vec::new();
    for (source, obj) in desired {
        if let Some(other) = others.get(&key(obj)) {
            errors.push(ManifestError {
                source_path: source.clone(),
                object: manifest::describe(obj),
                field: format!("metadata.labels.{APP_LABEL}"),
                message: format!(
                    "already managed by Application {other:?}; an object belongs to one Application (remove it from one of them)"
                ),
            });
        }
    }
    errors
}

/// Where a kind goes in a sync: what others depend on first (Namespaces, then accounts
/// and configuration, then Services, then workloads), as Argo CD and Helm order them.
pub fn kind_rank(kind: &str) -> u8 {
    match kind {
        "Namespace" => 0,
        "ResourceQuota" | "LimitRange" | "PriorityClass" => 1,
        "ServiceAccount" => 2,
        "Secret" => 3,
        "ConfigMap" => 4,
        "PersistentVolume" | "PersistentVolumeClaim" | "StorageClass" => 5,
        "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding" => 6,
        "Service" | "Endpoints" | "EndpointSlice" => 7,
        "DaemonSet" | "Pod" | "ReplicationController" | "ReplicaSet" | "Deployment" | "StatefulSet" => 8,
        "Job" | "CronJob" => 9,
        "Ingress" => 10,
        _ => 11,
    }
}

/// Whether every field `desired` sets has the same value in `live`.
pub fn contains(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, dv)| match l.get(k) {
            Some(lv) => contains(dv, lv),
            // An empty map or list set in Git and absent live says the same thing.
            None => {
                dv.is_null()
                    || dv.as_object().is_some_and(|o| o.is_empty())
                    || dv.as_array().is_some_and(|a| a.is_empty())
            }
        }),
        (Value::Array(d), Value::Array(l)) => d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| contains(dv, lv)),
        (Value::Number(d), Value::Number(l)) => d.as_f64() == l.as_f64(),
        // A quantity written as a YAML number (`cpu: 1`) is stored as a string ("1").
        (Value::Number(d), Value::String(l)) => l.parse::<f64>().ok() == d.as_f64(),
        (d, l) => d == l,
    }
}

/// `live` cut down to the fields `desired` sets (for a readable diff).
fn project(live: &Value, desired: &Value) -> Value {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => {
            let m: serde_json::Map<String, Value> = d
                .iter()
                .filter_map(|(k, dv)| l.get(k).map(|lv| (k.clone(), project(lv, dv))))
                .collect();
            Value::Object(m)
        }
        (Value::Array(d), Value::Array(l)) if d.len() == l.len() => {
            Value::Array(d.iter().zip(l).map(|(dv, lv)| project(lv, dv)).collect())
        }
        _ => live.clone(),
    }
}

/// A copy without the commit annotation, which differs on every commit by design.
fn without_commit(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if let Some(a) = obj.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
        a.remove(COMMIT_ANNOTATION);
    }
    obj
}

/// A copy without what the server owns (for showing live objects).
fn without_server_fields(obj: &Value) -> Value {
    let mut obj = without_commit(obj);
    if let Some(o) = obj.as_object_mut() {
        o.remove("status");
    }
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in [
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "managedFields",
        ] {
            m.remove(f);
        }
    }
    obj
}

fn unified(old: &str, new: &str, object: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("live/{object}"), &format!("git/{object}"))
        .to_string()
}

/// Compares desired objects with live ones.
pub fn compute(desired: Vec<(String, Value)>, live: Vec<Value>) -> Plan {
    let mut live_by_id: BTreeMap<_, Value> = live.into_iter().map(|o| (identity(&o), o)).collect();
    let mut changes = Vec::new();
    let mut desired = desired;
    // Stable: manifest order within a kind.
    desired.sort_by_key(|(_, o)| kind_rank(o.get("kind").and_then(Value::as_str).unwrap_or_default()));
    for (source, mut want) in desired {
        let object = manifest::describe(&want);
        match live_by_id.remove(&identity(&want)) {
            None => {
                let shown_want = redact(&without_commit(&want));
                changes.push(Change {
                    action: Action::Create,
                    diff: unified("", &manifest::to_yaml(&shown_want), &object),
                    object,
                    source: Some(source),
                    desired: Some(want),
                    live: None,
                })
            }
            Some(have) => {
                // The commit annotation differs on every commit by design: compare without
                // it (taken out and put back, rather than copying every object).
                let commit = want
                    .pointer_mut("/metadata/annotations")
                    .and_then(Value::as_object_mut)
                    .and_then(|a| a.remove(COMMIT_ANNOTATION));
                let same = contains(&want, &have);
                let diff = if same {
                    String::new()
                } else {
                    let shown_want = redact(&want);
                    let shown_have = project(&redact(&without_commit(&have)), &shown_want);
                    unified(
                        &manifest::to_yaml(&shown_have),
                        &manifest::to_yaml(&shown_want),
                        &object,
                    )
                };
                if let (Some(c), Some(a)) = (
                    commit,
                    want.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut),
                ) {
                    a.insert(COMMIT_ANNOTATION.to_string(), c);
                }
                changes.push(Change {
                    action: if same { Action::Unchanged } else { Action::Update },
                    object,
                    source: Some(source),
                    desired: Some(want),
                    live: Some(have),
                    diff,
                });
            }
        }
    }
    // Whatever is still live and labelled for this app has left Git: pruned last, the
    // workloads before what they use.
    let mut gone: Vec<Value> = live_by_id.into_values().collect();
    gone.sort_by_key(|o| std::cmp::Reverse(kind_rank(o.get("kind").and_then(Value::as_str).unwrap_or_default())));
    for have in gone {
        let object = manifest::describe(&have);
        changes.push(Change {
            action: Action::Prune,
            diff: unified(&manifest::to_yaml(&redact(&without_server_fields(&have))), "", &object),
            object,
            source: None,
            desired: None,
            live: Some(have),
        });
    }
    Plan { changes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fields_set_in_git_are_compared() {
        let desired = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c"}]}}}});
        let live = json!({"spec": {"replicas": 2, "revisionHistoryLimit": 10,
            "template": {"spec": {"containers": [{"name": "c", "imagePullPolicy": "IfNotPresent"}]}}}, "status": {}});
        assert!(contains(&desired, &live));
        let more = json!({"spec": {"replicas": 3}});
        assert!(!contains(&more, &live));
        assert!(!contains(
            &json!({"spec": {"template": {"spec": {"containers": []}}}}),
            &live
        ));
        // A quantity written as a YAML number is stored as a string.
        assert!(contains(
            &json!({"cpu": 1, "memory": 0.5}),
            &json!({"cpu": "1", "memory": "0.5"})
        ));
        assert!(!contains(&json!({"cpu": 1}), &json!({"cpu": "1m"})));
    }

    fn catalog() -> Catalog {
        let ar = |group: &str, version: &str, kind: &str, plural: &str| ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: if group.is_empty() {
                version.into()
            } else {
                format!("{group}/{version}")
            },
            kind: kind.into(),
            plural: plural.into(),
        };
        Catalog::from_resources([
            (ar("", "v1", "Namespace", "namespaces"), false),
            (ar("apps", "v1", "Deployment", "deployments"), true),
        ])
    }

    fn manifest(doc: usize, object: Value) -> Manifest {
        Manifest {
            file: "app.yaml".into(),
            doc,
            object,
        }
    }

    #[test]
    fn desired_objects_are_labelled_annotated_and_namespaced() {
        let manifests = vec![
            manifest(
                0,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n", "namespace": "x"}}),
            ),
            manifest(
                1,
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"a": "b"}}}),
            ),
        ];
        let out = desired_objects(manifests, &catalog(), "app", "abc123", "default").unwrap();
        assert!(
            out[0].1["metadata"].get("namespace").is_none(),
            "cluster-scoped objects have no namespace"
        );
        let d = &out[1].1["metadata"];
        assert_eq!(d["namespace"], "default");
        assert_eq!(d["labels"], json!({"a": "b", APP_LABEL: "app"}));
        assert_eq!(
            d["annotations"],
            json!({COMMIT_ANNOTATION: "abc123", SOURCE_PATH_ANNOTATION: "app.yaml#1"})
        );
    }

    #[test]
    fn unserved_kinds_old_versions_and_duplicates_are_named() {
        let d = |doc, api: &str, kind: &str| {
            manifest(doc, json!({"apiVersion": api, "kind": kind, "metadata": {"name": "x"}}))
        };
        let manifests = vec![
            d(0, "extensions/v1beta1", "Deployment"),
            d(1, "v1", "Service"),
            d(2, "apps/v1", "Deployment"),
            d(3, "apps/v1", "Deployment"),
        ];
        let errors: Vec<String> = desired_objects(manifests, &catalog(), "app", "c", "default")
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errors,
            vec![
                "app.yaml#0: extensions/v1beta1/Deployment x: kind: extensions/v1beta1 is not served for Deployment (an old or unknown version); use apps/v1",
                "app.yaml#1: v1/Service x: kind: Service is not served by this cluster",
                "app.yaml#3: apps/v1/Deployment default/x: defined twice (first at app.yaml#2)",
            ]
        );
    }

    #[test]
    fn plan_creates_updates_prunes_and_leaves_alone() {
        let obj = |name: &str, replicas: i64| {
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": "default", "annotations": {COMMIT_ANNOTATION: "new"}},
                "spec": {"replicas": replicas}})
        };
        let desired = vec![
            ("a.yaml#0".to_string(), obj("same", 1)),
            ("a.yaml#1".to_string(), obj("grow", 3)),
            ("a.yaml#2".to_string(), obj("fresh", 1)),
        ];
        let mut live_same = obj("same", 1);
        live_same["metadata"]["annotations"][COMMIT_ANNOTATION] = json!("old");
        let live = vec![live_same, obj("grow", 2), obj("gone", 1)];
        let plan = compute(desired, live);
        let actions: Vec<_> = plan.changes.iter().map(|c| (c.action, c.object.clone())).collect();
        assert_eq!(
            actions,
            vec![
                (Action::Unchanged, "apps/v1/Deployment default/same".to_string()),
                (Action::Update, "apps/v1/Deployment default/grow".to_string()),
                (Action::Create, "apps/v1/Deployment default/fresh".to_string()),
                (Action::Prune, "apps/v1/Deployment default/gone".to_string()),
            ]
        );
        let update = &plan.changes[1].diff;
        assert!(
            update.contains("-  replicas: 2") && update.contains("+  replicas: 3"),
            "{update}"
        );
        assert_eq!(
            plan.summary(),
            PlanSummary {
                created: 1,
                updated: 1,
                pruned: 1,
                unchanged: 1
            }
        );
    }
}
