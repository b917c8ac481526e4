//! Deployment controller: one ReplicaSet per pod template (named by the template's
//! hash), rolled as Kubernetes' `pkg/controller/deployment` rolls them — RollingUpdate
//! within `maxSurge`/`maxUnavailable`, or Recreate — with revisions numbered on the
//! ReplicaSets (`deployment.kubernetes.io/revision`) so that `kubectl rollout history`
//! and `rollout undo` work, and a status (`updatedReplicas`, `availableReplicas`, the
//! Progressing and Available conditions) that `kubectl rollout status` and
//! `kubectl wait --for=condition=Available` read.
//!
//! ReplicaSets are read from an [`OwnerIndex`] fed by one watch of all ReplicaSets;
//! every write carries the cached `resourceVersion`, so a lagging cache gets a conflict
//! (and a retry once the watch catches up) rather than a stale write.
//!
//! A Deployment claims ReplicaSets by its selector as Kubernetes' does
//! ([`claim`](super::claim)): it adopts orphan ReplicaSets of its namespace whose labels
//! match and releases those it controls whose labels no longer do. The index keeps
//! orphan ReplicaSets by namespace, and an orphan's watch event wakes the Deployments
//! that select it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::informer::{Informer, Shared};
use super::{Error, OwnerIndex};

/// Label carrying the pod template hash on ReplicaSets and their pods.
pub const HASH_LABEL: &str = "pod-template-hash";
/// Annotation numbering rollouts, on ReplicaSets and on their Deployment.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions a reused ReplicaSet had, comma separated.
pub const REVISION_HISTORY_ANNOTATION: &str = "deployment.kubernetes.io/revision-history";
/// The Deployment's replicas when the ReplicaSet was last sized.
pub const DESIRED_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/desired-replicas";
/// The most pods the Deployment may have then (replicas + maxSurge).
pub const MAX_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/max-replicas";

/// Deployment annotations never copied to its ReplicaSets (and kept by `rollout undo`).
const SKIP_COPY: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION_ANNOTATION,
    REVISION_HISTORY_ANNOTATION,
    DESIRED_REPLICAS_ANNOTATION,
    MAX_REPLICAS_ANNOTATION,
    "deprecated.deployment.rollback.to",
];

/// Condition reasons, as Kubernetes spells them (kubectl and tools match on them).
pub mod reason {
    /// Progressing: a new ReplicaSet was created.
    pub const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
    /// Progressing: an existing ReplicaSet matches the template.
    pub const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
    /// Progressing: the rollout moved.
    pub const RS_UPDATED: &str = "ReplicaSetUpdated";
    /// Progressing: the rollout is complete.
    pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
    /// Progressing False: no progress within `progressDeadlineSeconds`.
    pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";
    /// Progressing Unknown: paused.
    pub const PAUSED: &str = "DeploymentPaused";
    /// Progressing Unknown: resumed.
    pub const RESUMED: &str = "DeploymentResumed";
    /// Available True.
    pub const MIN_AVAILABLE: &str = "MinimumReplicasAvailable";
    /// Available False.
    pub const MIN_UNAVAILABLE: &str = "MinimumReplicasUnavailable";
}

/// What every reconcile shares: the client and the ReplicaSet cache.
struct Context {
    client: kube::Client,
    replicasets: OwnerIndex<ReplicaSet>,
}

/// Runs the controller until shutdown.
pub async fn run(client: kube::Client, shutdown: watch::Receiver<bool>) {
    let deployments: Api<Deployment> = Api::all(client.clone());
    let replicasets = Informer::<ReplicaSet>::new();
    let ctx = Arc::new(Context {
        client: client.clone(),
        replicasets: replicasets.index(),
    });
    let triggers = replicasets.subscribe(|_| {});
    let controller = Controller::new(deployments, watcher::Config::default());
    let store = controller.store();
    let controller = controller
        // A ReplicaSet wakes the Deployments it names as owners and, an orphan, those
        // that may adopt it.
        .watches_stream(triggers, move |rs: Shared<ReplicaSet>| {
            deployments_for_replicaset(&store, &rs)
        })
        .graceful_shutdown_on(super::stopped(shutdown.clone()))
        .run(reconcile, super::retry_soon, ctx)
        .for_each(|r| async move { super::log_result("deployment", r) });
    tokio::join!(controller, replicasets.run(client, shutdown));
}

/// The Deployments (of `all`) a ReplicaSet event concerns: its owners and, for a live
/// orphan, those that may adopt it ([`claim::owners_to_wake`](super::claim::owners_to_wake)).
fn deployments_for_replicaset(all: &Store<Deployment>, rs: &ReplicaSet) -> Vec<ObjectRef<Deployment>> {
    super::claim::owners_to_wake(|| all.state(), rs, true, |d| d.spec.as_ref().map(|s| &s.selector))
}

// ---------------------------------------------------------------------------------------
// Templates and revisions

/// The template as hashed and compared: without the `pod-template-hash` label, keys
/// sorted, and empty or null values dropped (an empty map and a missing one mean the
/// same to the API).
fn normalized(template: &PodTemplateSpec) -> Value {
    let mut v = serde_json::to_value(template).unwrap_or(Value::Null);
    if let Some(labels) = v.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
        labels.remove(HASH_LABEL);
    }
    canonical(&v).unwrap_or(Value::Null)
}

fn canonical(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Object(m) => {
            let sorted: BTreeMap<String, Value> =
                m.iter().filter_map(|(k, v)| Some((k.clone(), canonical(v)?))).collect();
            (!sorted.is_empty()).then(|| Value::Object(sorted.into_iter().collect()))
        }
        // Array elements keep their place, empty ones included.
        Value::Array(a) => {
            (!a.is_empty()).then(|| Value::Array(a.iter().map(|x| canonical(x).unwrap_or(Value::Null)).collect()))
        }
        other => Some(other.clone()),
    }
}

/// The name suffix and `pod-template-hash` of a template: FNV-1a over its normalized
/// JSON, encoded as Kubernetes' SafeEncodeString. Stable across runs and versions, and
/// blind to the hash label itself (a template copied back from a ReplicaSet by
/// `rollout undo` hashes as before).
pub fn template_hash(template: &PodTemplateSpec) -> String {
    let canonical = normalized(template).to_string();
    let mut hash: u32 = 0x811c9dc5;
    for b in canonical.bytes() {
        hash ^= b as u32;
        hash = hash.wrapping_mul(0x01000193);
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string()
        .bytes()
        .map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char)
        .collect()
}

/// Whether two templates are the same but for the hash label (Kubernetes' EqualIgnoreHash).
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    normalized(a) == normalized(b)
}

/// A ReplicaSet's revision (0 when it has none).
pub fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION_ANNOTATION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// The annotations the new ReplicaSet should have (Kubernetes'
/// SetNewReplicaSetAnnotations): the Deployment's own (added or changed, never removed,
/// bar the skipped ones), the revision raised to `new_revision` (the old number going
/// to the revision history when an existing ReplicaSet is reused), and for a new one the
/// replica annotations. Returns whether anything changed.
pub fn new_rs_annotations(
    deployment: &BTreeMap<String, String>,
    rs: &mut BTreeMap<String, String>,
    new_revision: i64,
    exists: bool,
    sizes: (i32, i32),
) -> bool {
    let mut changed = false;
    for (k, v) in deployment {
        if SKIP_COPY.contains(&k.as_str()) || rs.get(k) == Some(v) {
            continue;
        }
        rs.insert(k.clone(), v.clone());
        changed = true;
    }
    let old = rs.get(REVISION_ANNOTATION).cloned();
    let old_number: i64 = old.as_deref().and_then(|r| r.parse().ok()).unwrap_or(0);
    if old_number < new_revision {
        rs.insert(REVISION_ANNOTATION.into(), new_revision.to_string());
        changed = true;
        if let Some(old) = old.filter(|o| exists && !o.is_empty()) {
            let history = match rs.get(REVISION_HISTORY_ANNOTATION) {
                Some(h) if !h.is_empty() => format!("{h},{old}"),
                _ => old,
            };
            rs.insert(REVISION_HISTORY_ANNOTATION.into(), history);
        }
    }
    if !exists {
        rs.insert(DESIRED_REPLICAS_ANNOTATION.into(), sizes.0.to_string());
        rs.insert(MAX_REPLICAS_ANNOTATION.into(), sizes.1.to_string());
        changed = true;
    }
    changed
}

/// The old ReplicaSets beyond `limit` that may go: lowest revisions first, and only
/// those with no pods, sized to zero, whose status is current (Kubernetes'
/// cleanupDeployment).
pub fn to_clean_up<'a>(old: &[&'a ReplicaSet], limit: i32) -> Vec<&'a ReplicaSet> {
    let mut alive: Vec<&ReplicaSet> = old
        .iter()
        .copied()
        .filter(|rs| rs.metadata.deletion_timestamp.is_none())
        .collect();
    let excess = alive.len() as i64 - i64::from(limit.max(0));
    if excess <= 0 {
        return Vec::new();
    }
    alive.sort_by_key(|rs| (revision_of(rs), created(rs)));
    alive
        .into_iter()
        .take(excess as usize)
        .filter(|rs| {
            let status = rs.status.as_ref();
            status.map_or(0, |s| s.replicas) == 0
                && spec_replicas(rs) == 0
                && rs.metadata.generation.unwrap_or(0) <= status.and_then(|s| s.observed_generation).unwrap_or(0)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Sizes

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0)
}

fn created(rs: &ReplicaSet) -> (i64, String) {
    let t = rs.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second());
    (t, rs.name_any())
}

fn desired(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn is_recreate(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate")
}

/// An int-or-percent against `total`, percentages rounded up or down.
pub(crate) fn scaled(value: Option<&IntOrString>, default: &str, total: i32, round_up: bool) -> i32 {
    let percent = |p: &str| -> Option<i32> {
        let p: f64 = p.strip_suffix('%')?.parse().ok()?;
        let v = p * f64::from(total) / 100.0;
        Some(if round_up { v.ceil() } else { v.floor() } as i32)
    };
    match value {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => percent(s).or_else(|| s.parse().ok()).unwrap_or(0),
        None => percent(default).unwrap_or(0),
    }
}

/// `(maxSurge, maxUnavailable)` of a RollingUpdate Deployment; never both zero.
pub fn fenceposts(d: &Deployment) -> (i32, i32) {
    if is_recreate(d) {
        return (0, 0);
    }
    let replicas = desired(d);
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let surge = scaled(ru.and_then(|r| r.max_surge.as_ref()), "25%", replicas, true).max(0);
    let unavailable = scaled(ru.and_then(|r| r.max_unavailable.as_ref()), "25%", replicas, false).max(0);
    if surge == 0 && unavailable == 0 {
        return (0, 1);
    }
    (surge, unavailable)
}

/// The most pods that may be unavailable during a rollout.
pub fn max_unavailable(d: &Deployment) -> i32 {
    if is_recreate(d) || desired(d) == 0 {
        return 0;
    }
    fenceposts(d).1.min(desired(d))
}

/// The new ReplicaSet's next size in a rolling update (Kubernetes' NewRSNewReplicas):
/// up toward `replicas` as far as the surge allows, `all_spec` being every ReplicaSet's
/// current size.
pub fn rolling_new_size(replicas: i32, surge: i32, new_spec: i32, all_spec: i32) -> i32 {
    let max_total = replicas + surge;
    if all_spec >= max_total {
        return new_spec;
    }
    new_spec + (max_total - all_spec).min(replicas - new_spec).max(0)
}

/// New sizes of the old ReplicaSets (oldest first, `(spec, available)` each) in a
/// rolling update: unhealthy pods go first, then available ones as far as
/// `maxUnavailable` allows (Kubernetes' reconcileOldReplicaSets).
pub fn rolling_old_sizes(replicas: i32, max_unavailable: i32, new: (i32, i32), old: &[(i32, i32)]) -> Vec<i32> {
    let mut sizes: Vec<i32> = old.iter().map(|(s, _)| *s).collect();
    let old_total: i32 = sizes.iter().sum();
    if old_total == 0 {
        return sizes;
    }
    let all_total = old_total + new.0;
    let min_available = replicas - max_unavailable;
    let new_unavailable = new.0 - new.1;
    let max_scaled_down = all_total - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return sizes;
    }
    // Unhealthy old pods cost no availability: they go first.
    let mut cleaned = 0;
    for (i, (spec, avail)) in old.iter().enumerate() {
        if cleaned >= max_scaled_down {
            break;
        }
        if *spec == 0 || spec == avail {
            continue;
        }
        let down = (max_scaled_down - cleaned).min(spec - avail);
        sizes[i] -= down;
        cleaned += down;
    }
    // Then available ones, as long as enough stay available.
    let available_total: i32 = new.1 + old.iter().map(|(_, a)| a).sum::<i32>();
    if available_total <= min_available {
        return sizes;
    }
    let budget = available_total - min_available;
    let mut done = 0;
    for size in sizes.iter_mut() {
        if done >= budget {
            break;
        }
        if *size == 0 {
            continue;
        }
        let down = (*size).min(budget - done);
        *size -= down;
        done += down;
    }
    sizes
}

// ---------------------------------------------------------------------------------------
// Status and conditions

fn condition(type_: &str, status: &str, reason: &str, message: String, now: Timestamp) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// The condition of a type, if any.
pub fn get_condition<'a>(status: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    status.conditions.iter().flatten().find(|c| c.type_ == type_)
}

fn remove_condition(status: &mut DeploymentStatus, type_: &str) {
    if let Some(c) = status.conditions.as_mut() {
        c.retain(|c| c.type_ != type_);
    }
}

/// Sets a condition as Kubernetes does: nothing changes when status and reason are the
/// same, and `lastTransitionTime` stays when only the reason changes.
pub fn set_condition(status: &mut DeploymentStatus, mut cond: DeploymentCondition) {
    if let Some(current) = get_condition(status, &cond.type_) {
        if current.status == cond.status && current.reason == cond.reason {
            return;
        }
        if current.status == cond.status {
            cond.last_transition_time = current.last_transition_time.clone();
        }
    }
    remove_condition(status, &cond.type_);
    status.conditions.get_or_insert_with(Vec::new).push(cond);
}

fn has_progress_deadline(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .is_some_and(|s| s != i32::MAX)
}

/// Counts and the Available condition (Kubernetes' calculateStatus); `base` holds the
/// conditions so far.
pub fn calculate_status(
    d: &Deployment,
    base: &DeploymentStatus,
    all: &[&ReplicaSet],
    new_rs: Option<&ReplicaSet>,
    now: Timestamp,
) -> DeploymentStatus {
    let actual = |rs: &&ReplicaSet| rs.status.as_ref().map_or(0, |s| s.replicas);
    let available_replicas: i32 = all.iter().map(|rs| available(rs)).sum();
    let total_spec: i32 = all.iter().map(|rs| spec_replicas(rs)).sum();
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(all.iter().map(actual).sum()),
        updated_replicas: Some(new_rs.as_ref().map_or(0, actual)),
        ready_replicas: Some(
            all.iter()
                .map(|rs| rs.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0))
                .sum(),
        ),
        available_replicas: Some(available_replicas),
        unavailable_replicas: Some((total_spec - available_replicas).max(0)),
        collision_count: base.collision_count,
        conditions: base.conditions.clone(),
        ..Default::default()
    };
    if available_replicas >= desired(d) - max_unavailable(d) {
        let c = condition(
            "Available",
            "True",
            reason::MIN_AVAILABLE,
            "Deployment has minimum availability.".into(),
            now,
        );
        set_condition(&mut status, c);
    } else {
        let c = condition(
            "Available",
            "False",
            reason::MIN_UNAVAILABLE,
            "Deployment does not have minimum availability.".into(),
            now,
        );
        set_condition(&mut status, c);
    }
    status
}

/// Whether the rollout is done: every replica updated and available, nothing old left.
pub fn is_complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let want = desired(d);
    s.updated_replicas == Some(want)
        && s.replicas == Some(want)
        && s.available_replicas == Some(want)
        && s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// Whether the rollout moved since `old` (Kubernetes' DeploymentProgressing).
fn made_progress(old: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    let n = |v: Option<i32>| v.unwrap_or(0);
    let old_old = n(old.replicas) - n(old.updated_replicas);
    let new_old = n(new.replicas) - n(new.updated_replicas);
    n(new.updated_replicas) > n(old.updated_replicas)
        || new_old < old_old
        || n(new.ready_replicas) > n(old.ready_replicas)
        || n(new.available_replicas) > n(old.available_replicas)
}

/// The rollout's status with its Progressing condition (Kubernetes' syncRolloutStatus),
/// and when to look again for the progress deadline. `base` is the Deployment's status
/// with the conditions this pass set so far.
pub fn rollout_status(
    d: &Deployment,
    base: &DeploymentStatus,
    all: &[&ReplicaSet],
    new_rs: Option<&ReplicaSet>,
    now: Timestamp,
) -> (DeploymentStatus, Option<Duration>) {
    let mut status = calculate_status(d, base, all, new_rs, now);
    if !has_progress_deadline(d) {
        remove_condition(&mut status, "Progressing");
        return (status, None);
    }
    let current = get_condition(base, "Progressing").cloned();
    let done_before = status.replicas == status.updated_replicas
        && current.as_ref().and_then(|c| c.reason.as_deref()) == Some(reason::NEW_RS_AVAILABLE);
    let what = match new_rs {
        Some(rs) => format!("ReplicaSet {:?}", rs.name_any()),
        None => format!("Deployment {:?}", d.name_any()),
    };
    if !done_before {
        if is_complete(d, &status) {
            let c = condition(
                "Progressing",
                "True",
                reason::NEW_RS_AVAILABLE,
                format!("{what} has successfully progressed."),
                now,
            );
            set_condition(&mut status, c);
        } else if made_progress(base, &status) {
            // Progress refreshes lastUpdateTime even with the same reason: the deadline
            // counts from the last progress.
            let mut c = condition(
                "Progressing",
                "True",
                reason::RS_UPDATED,
                format!("{what} is progressing."),
                now,
            );
            if let Some(cur) = &current {
                if cur.status == "True" {
                    c.last_transition_time = cur.last_transition_time.clone();
                }
                remove_condition(&mut status, "Progressing");
            }
            set_condition(&mut status, c);
        } else if timed_out(d, &status, now) {
            let c = condition(
                "Progressing",
                "False",
                reason::TIMED_OUT,
                format!("{what} has timed out progressing."),
                now,
            );
            set_condition(&mut status, c);
        }
    }
    (status.clone(), recheck_deadline(d, &status, now))
}

fn deadline(d: &Deployment) -> i64 {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .map_or(600, i64::from)
}

fn timed_out(d: &Deployment, status: &DeploymentStatus, now: Timestamp) -> bool {
    let Some(c) = get_condition(status, "Progressing") else {
        return false;
    };
    match c.reason.as_deref() {
        Some(reason::NEW_RS_AVAILABLE) => false,
        Some(reason::TIMED_OUT) => true,
        _ => c
            .last_update_time
            .as_ref()
            .is_some_and(|t| t.0.as_second() + deadline(d) < now.as_second()),
    }
}

/// When an unfinished rollout should be checked against its deadline (no event comes
/// when nothing happens).
fn recheck_deadline(d: &Deployment, status: &DeploymentStatus, now: Timestamp) -> Option<Duration> {
    let c = get_condition(status, "Progressing")?;
    if matches!(c.reason.as_deref(), Some(reason::NEW_RS_AVAILABLE | reason::TIMED_OUT)) || c.status != "True" {
        return None;
    }
    let from = c.last_update_time.as_ref()?.0.as_second();
    let left = (from + deadline(d) - now.as_second()).max(0) + 1;
    Some(Duration::from_secs(left as u64))
}

/// Progressing Unknown while paused, and again on resume (Kubernetes'
/// checkPausedConditions).
fn paused_conditions(d: &Deployment, status: &mut DeploymentStatus, now: Timestamp) {
    if !has_progress_deadline(d) {
        return;
    }
    let reason_now = get_condition(status, "Progressing").and_then(|c| c.reason.clone());
    if reason_now.as_deref() == Some(reason::TIMED_OUT) {
        return;
    }
    let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    let shown = reason_now.as_deref() == Some(reason::PAUSED);
    if paused && !shown {
        let c = condition(
            "Progressing",
            "Unknown",
            reason::PAUSED,
            "Deployment is paused".into(),
            now,
        );
        set_condition(status, c);
    } else if !paused && shown {
        let c = condition(
            "Progressing",
            "Unknown",
            reason::RESUMED,
            "Deployment is resumed".into(),
            now,
        );
        set_condition(status, c);
    }
}

// ---------------------------------------------------------------------------------------
// Reconcile

/// A controller owner reference to `obj`.
pub(crate) fn owner_ref<K: Resource<DynamicType = ()>>(obj: &K) -> Result<OwnerReference, Error> {
    let mut r = obj
        .controller_owner_ref(&())
        .ok_or_else(|| Error::Malformed("owner without name or uid".into()))?;
    r.block_owner_deletion = Some(true);
    Ok(r)
}

/// One reconcile's view and working state.
struct Pass<'a> {
    d: &'a Deployment,
    ns: String,
    api: Api<ReplicaSet>,
    /// Every live ReplicaSet the Deployment controls, oldest first; writes replace them.
    rss: Vec<ReplicaSet>,
    /// Index of the one whose template is the Deployment's.
    new: Option<usize>,
    /// Status being built (conditions set along the way).
    status: DeploymentStatus,
    now: Timestamp,
}

impl Pass<'_> {
    fn olds(&self) -> impl Iterator<Item = (usize, &ReplicaSet)> {
        self.rss.iter().enumerate().filter(move |(i, _)| Some(*i) != self.new)
    }

    fn max_old_revision(&self) -> i64 {
        self.olds().map(|(_, rs)| revision_of(rs)).max().unwrap_or(0)
    }

    fn sizes(&self) -> (i32, i32) {
        let replicas = desired(self.d);
        (replicas, replicas + fenceposts(self.d).0)
    }

    /// Brings the existing new ReplicaSet's annotations and minReadySeconds up to date.
    async fn sync_new(&mut self) -> Result<(), Error> {
        let Some(i) = self.new else { return Ok(()) };
        let rs = &self.rss[i];
        let mut annotations = rs.annotations().clone();
        let changed = new_rs_annotations(
            self.d.annotations(),
            &mut annotations,
            self.max_old_revision() + 1,
            true,
            self.sizes(),
        );
        let min_ready = self.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
        let rs_min_ready = rs.spec.as_ref().and_then(|s| s.min_ready_seconds);
        if changed || min_ready.unwrap_or(0) != rs_min_ready.unwrap_or(0) {
            let patch = json!({
                "metadata": {"resourceVersion": rs.resource_version(), "annotations": annotations},
                "spec": {"minReadySeconds": min_ready.unwrap_or(0)},
            });
            tracing::info!(object = %format!("{}/{}", self.ns, rs.name_any()), revision = ?annotations.get(REVISION_ANNOTATION), "updating the new replica set");
            self.rss[i] = self
                .api
                .patch(&rs.name_any(), &PatchParams::default(), &Patch::Merge(patch))
                .await?;
        }
        if get_condition(&self.status, "Progressing").is_none() && has_progress_deadline(self.d) {
            let message = format!("Found new replica set {:?}", self.rss[i].name_any());
            let c = condition("Progressing", "True", reason::FOUND_NEW_RS, message, self.now);
            set_condition(&mut self.status, c);
        }
        Ok(())
    }

    /// Creates the ReplicaSet for the Deployment's template with `replicas`.
    async fn create_new(&mut self, replicas: i32) -> Result<(), Error> {
        let spec = self
            .d
            .spec
            .as_ref()
            .ok_or_else(|| Error::Malformed("deployment without spec".into()))?;
        let name = self.d.name_any();
        let hash = template_hash(&spec.template);
        let mut template = spec.template.clone();
        let mut labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert(HASH_LABEL.into(), hash.clone());
        template.metadata.get_or_insert_with(Default::default).labels = Some(labels.clone());
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.clone());
        let mut annotations = BTreeMap::new();
        new_rs_annotations(
            self.d.annotations(),
            &mut annotations,
            self.max_old_revision() + 1,
            false,
            self.sizes(),
        );
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!("{name}-{hash}")),
                namespace: Some(self.ns.clone()),
                labels: Some(labels),
                annotations: Some(annotations),
                owner_references: Some(vec![owner_ref(self.d)?]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: selector.match_labels,
                    match_expressions: selector.match_expressions,
                },
                template: Some(template),
                min_ready_seconds: spec.min_ready_seconds,
            }),
            status: None,
        };
        // An existing one of that name is this very ReplicaSet, created by an earlier
        // pass the cache does not show yet: the conflict retries once it does.
        let created = self.api.create(&PostParams::default(), &rs).await?;
        tracing::info!(object = %format!("{}/{name}", self.ns), replicaset = %created.name_any(), replicas, revision = revision_of(&created), "created new replica set");
        if has_progress_deadline(self.d) {
            let message = format!("Created new replica set {:?}", created.name_any());
            let c = condition("Progressing", "True", reason::NEW_RS_CREATED, message, self.now);
            set_condition(&mut self.status, c);
        }
        self.rss.push(created);
        self.new = Some(self.rss.len() - 1);
        Ok(())
    }

    /// Sizes ReplicaSet `i` to `replicas` (and its replica annotations); whether it changed.
    async fn scale(&mut self, i: usize, replicas: i32) -> Result<bool, Error> {
        let rs = &self.rss[i];
        let (want, max) = self.sizes();
        let annotations = rs.annotations();
        let annotations_stale = annotations.get(DESIRED_REPLICAS_ANNOTATION) != Some(&want.to_string())
            || annotations.get(MAX_REPLICAS_ANNOTATION) != Some(&max.to_string());
        let resize = spec_replicas(rs) != replicas;
        if !resize && !annotations_stale {
            return Ok(false);
        }
        let patch = json!({
            "metadata": {"resourceVersion": rs.resource_version(), "annotations": {
                DESIRED_REPLICAS_ANNOTATION: want.to_string(), MAX_REPLICAS_ANNOTATION: max.to_string()}},
            "spec": {"replicas": replicas},
        });
        if resize {
            tracing::info!(object = %format!("{}/{}", self.ns, rs.name_any()), from = spec_replicas(rs), to = replicas, "scaling replica set");
        }
        self.rss[i] = self
            .api
            .patch(&rs.name_any(), &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(resize)
    }

    /// One rolling-update step: scale up if the surge allows, else scale down old ones.
    async fn roll(&mut self) -> Result<(), Error> {
        let replicas = desired(self.d);
        let (surge, unavailable) = (fenceposts(self.d).0, max_unavailable(self.d));
        if self.new.is_none() {
            let all: i32 = self.rss.iter().map(spec_replicas).sum();
            self.create_new(rolling_new_size(replicas, surge, 0, all)).await?;
            return Ok(());
        }
        let Some(new) = self.new else { return Ok(()) };
        let new_spec = spec_replicas(&self.rss[new]);
        let target = if new_spec > replicas {
            replicas
        } else {
            let all: i32 = self.rss.iter().map(spec_replicas).sum();
            rolling_new_size(replicas, surge, new_spec, all)
        };
        if target != new_spec {
            self.scale(new, target).await?;
            return Ok(());
        }
        let olds: Vec<usize> = self.olds().map(|(i, _)| i).collect();
        let sizes: Vec<(i32, i32)> = olds
            .iter()
            .map(|i| (spec_replicas(&self.rss[*i]), available(&self.rss[*i])))
            .collect();
        let new_sizes = rolling_old_sizes(replicas, unavailable, (new_spec, available(&self.rss[new])), &sizes);
        for (i, size) in olds.into_iter().zip(new_sizes) {
            self.scale(i, size).await?;
        }
        Ok(())
    }

    /// Recreate: every old pod goes before the new ReplicaSet is created or scaled.
    async fn recreate(&mut self) -> Result<(), Error> {
        let olds: Vec<usize> = self.olds().map(|(i, _)| i).collect();
        let mut scaled_down = false;
        for i in olds.iter().copied() {
            scaled_down |= self.scale(i, 0).await?;
        }
        let old_running = olds
            .iter()
            .any(|i| self.rss[*i].status.as_ref().is_some_and(|s| s.replicas > 0));
        if scaled_down || old_running {
            return Ok(());
        }
        match self.new {
            None => self.create_new(desired(self.d)).await,
            Some(i) => self.scale(i, desired(self.d)).await.map(|_| ()),
        }
    }

    /// Paused: no new ReplicaSet; a lone current one still follows `kubectl scale`.
    async fn paused(&mut self) -> Result<(), Error> {
        let active: Vec<usize> = (0..self.rss.len())
            .filter(|i| spec_replicas(&self.rss[*i]) > 0)
            .collect();
        let target = match (self.new, active.as_slice()) {
            (Some(n), []) => Some(n),
            (_, [only]) => Some(*only),
            _ => None,
        };
        if let Some(i) = target {
            self.scale(i, desired(self.d)).await?;
        }
        Ok(())
    }

    /// Deletes old ReplicaSets beyond the revision history limit.
    async fn clean_up(&mut self) -> Result<(), Error> {
        let limit = self
            .d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10);
        let olds: Vec<&ReplicaSet> = self.olds().map(|(_, rs)| rs).collect();
        let names: Vec<(String, Option<String>)> = to_clean_up(&olds, limit)
            .into_iter()
            .map(|rs| (rs.name_any(), rs.uid()))
            .collect();
        for (name, uid) in names {
            tracing::info!(object = %format!("{}/{name}", self.ns), "deleting old replica set beyond the history limit");
            let params = kube::api::DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid,
                    resource_version: None,
                }),
                ..Default::default()
            };
            match self.api.delete(&name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            self.rss.retain(|rs| rs.name_any() != name);
            self.new = self.d.spec.as_ref().and_then(|s| {
                self.rss.iter().position(|rs| {
                    rs.spec
                        .as_ref()
                        .and_then(|r| r.template.as_ref())
                        .is_some_and(|t| equal_ignore_hash(t, &s.template))
                })
            });
        }
        Ok(())
    }
}

/// The ReplicaSet whose template is the Deployment's (the oldest, should there be two).
fn find_new(rss: &[ReplicaSet], template: &PodTemplateSpec) -> Option<usize> {
    rss.iter().position(|rs| {
        rs.spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .is_some_and(|t| equal_ignore_hash(t, template))
    })
}

async fn reconcile(deploy: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.replicasets.ready().await;
    let d = deploy.as_ref();
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = d
        .namespace()
        .ok_or_else(|| Error::Malformed("deployment without namespace".into()))?;
    let name = d.name_any();
    let uid = d
        .uid()
        .ok_or_else(|| Error::Malformed("deployment without uid".into()))?;
    let spec = d
        .spec
        .as_ref()
        .ok_or_else(|| Error::Malformed(format!("deployment {name} has no spec")))?;

    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    // Adopt matching orphan ReplicaSets, release those that stopped matching; a failed
    // adoption or release ends the pass before anything is scaled.
    let claimed = super::claim::claim(
        d,
        &Api::<Deployment>::namespaced(ctx.client.clone(), &ns),
        &api,
        &spec.selector,
        ctx.replicasets
            .owned_by(&uid)
            .into_iter()
            .chain(ctx.replicasets.orphans_in(&ns)),
        |_| false,
    )
    .await?;
    let mut rss: Vec<ReplicaSet> = claimed
        .into_iter()
        .filter(|rs| rs.metadata.deletion_timestamp.is_none())
        .map(|rs| (*rs).clone())
        .collect();
    rss.sort_by_key(created);
    let new = find_new(&rss, &spec.template);
    let mut pass = Pass {
        d,
        ns: ns.clone(),
        api,
        rss,
        new,
        status: d.status.clone().unwrap_or_default(),
        now: super::now(),
    };

    let paused = spec.paused.unwrap_or(false);
    paused_conditions(d, &mut pass.status, pass.now);
    pass.sync_new().await?;
    if paused {
        pass.paused().await?;
    } else if is_recreate(d) {
        pass.recreate().await?;
    } else {
        pass.roll().await?;
    }

    let all: Vec<&ReplicaSet> = pass.rss.iter().collect();
    let new_rs = pass.new.map(|i| &pass.rss[i]);
    let (mut status, mut recheck) = if paused {
        (calculate_status(d, &pass.status, &all, new_rs, pass.now), None)
    } else {
        rollout_status(d, &pass.status, &all, new_rs, pass.now)
    };
    if !paused && is_complete(d, &status) {
        pass.clean_up().await?;
        let all: Vec<&ReplicaSet> = pass.rss.iter().collect();
        let new_rs = pass.new.map(|i| &pass.rss[i]);
        (status, recheck) = rollout_status(d, &pass.status, &all, new_rs, pass.now);
    }

    // The Deployment carries its newest revision, as `kubectl rollout` reads it.
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let mut resource_version = d.resource_version();
    if let Some(revision) = pass.new.map(|i| revision_of(&pass.rss[i]).to_string()) {
        if d.annotations().get(REVISION_ANNOTATION) != Some(&revision) {
            let patch = json!({"metadata": {"resourceVersion": resource_version, "annotations": {REVISION_ANNOTATION: revision}}});
            let patched = api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
            resource_version = patched.resource_version();
        }
    }
    if d.status.as_ref() != Some(&status) {
        super::write_status(&api, d, |u| {
            u.metadata.resource_version = resource_version;
            u.status = Some(status);
        })
        .await?;
    }
    Ok(recheck.map_or_else(Action::await_change, Action::requeue))
}

#[cfg(test)]
mod tests;
