//! Garbage collector, as Kubernetes' `pkg/controller/garbagecollector` does it.
//!
//! One metadata-only watcher per served kind feeds an in-memory owner graph (uid -> the
//! object's identity, owner references and deletion state; owner uid -> dependents),
//! updated incrementally from watch events. Graph changes queue work, never a sweep:
//!
//! - `AttemptToDelete(uid)`: the object's owners may be gone (its owner was deleted, or it
//!   names an owner the graph has not seen), or an owner deletes its dependents in the
//!   foreground; for a foreground-deleting owner, whether its blocking dependents are gone.
//! - `AttemptToOrphan(uid)`: an owner deleted with `propagationPolicy: Orphan`.
//!
//! Decisions are pure functions of the graph ([`Graph::plan_delete`], [`Graph::plan_orphan`]),
//! executed by a few workers with per-item exponential back-off. Writes are guarded
//! against a stale graph: deletes carry uid and resourceVersion preconditions, patches are
//! JSON patches whose `test` operations fail if the entry moved. The only reads are a
//! metadata GET of an owner the graph has never seen (watchers of different kinds run
//! independently, so a dependent can arrive before its owner), as Kubernetes does too.
//!
//! The same graph counts each namespace's content for the namespace controller
//! (`super::namespace`), which it wakes when a terminating namespace's content changes.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

use crate::api::registry::RESOURCES;

/// Finalizer of a foreground deletion: the owner waits for its blocking dependents.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// Finalizer of an orphaning deletion: the dependents lose their references first.
pub const ORPHAN_FINALIZER: &str = "orphan";

/// Concurrent collector workers (Kubernetes' default `--concurrent-gc-syncs` is 20; this
/// is a small control plane).
const WORKERS: usize = 4;

/// Why one piece of work failed (it is retried with back-off).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("api: {0}")]
    Api(#[from] kube::Error),
    /// A patch the collector built could not be encoded.
    #[error("patch: {0}")]
    Patch(#[from] serde_json::Error),
}

/// A served kind the collector watches.
#[derive(Debug, Clone, PartialEq)]
pub struct Kind {
    /// Group, version, kind and plural, as kube-rs addresses the kind.
    pub resource: ApiResource,
    /// Whether objects of the kind live in a namespace.
    pub namespaced: bool,
}

impl Kind {
    /// A kind of `api_version`/`kind`, served at `plural`.
    pub fn new(api_version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        Kind {
            resource: ApiResource {
                group: group.into(),
                version: version.into(),
                api_version: api_version.into(),
                kind: kind.into(),
                plural: plural.into(),
            },
            namespaced,
        }
    }

    /// `plural.group` as Kubernetes prints a resource in messages (`pods.`, `deployments.apps`).
    pub fn qualified_plural(&self) -> String {
        format!("{}.{}", self.resource.plural, self.resource.group)
    }
}

/// Every kind the API server serves (its registry), in discovery order.
pub fn served_kinds() -> Vec<Kind> {
    RESOURCES
        .iter()
        .map(|r| Kind::new(&r.api_version(), r.kind, r.plural, r.namespaced))
        .collect()
}

/// What the graph knows of one object: its identity and the metadata decisions read.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Index of the object's kind in the graph's kinds.
    pub kind: usize,
    /// Namespace, for namespaced kinds.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// Uid (owner references name owners by uid).
    pub uid: String,
    /// resourceVersion last seen: deletes are conditional on it.
    pub resource_version: Option<String>,
    /// Owner references, in the object's order (patches address them by index).
    pub owners: Vec<OwnerReference>,
    /// Finalizers, in the object's order.
    pub finalizers: Vec<String>,
    /// Whether `deletionTimestamp` is set.
    pub deleting: bool,
}

impl Node {
    /// The node of an object of kind `kind` with metadata `meta`; `None` without a uid.
    pub fn from_meta(kind: usize, meta: &ObjectMeta) -> Option<Node> {
        Some(Node {
            kind,
            namespace: meta.namespace.clone().filter(|n| !n.is_empty()),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().filter(|u| !u.is_empty())?,
            resource_version: meta.resource_version.clone(),
            owners: meta.owner_references.clone().unwrap_or_default(),
            finalizers: meta.finalizers.clone().unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
        })
    }

    fn has_finalizer(&self, finalizer: &str) -> bool {
        self.finalizers.iter().any(|f| f == finalizer)
    }

    /// Being deleted in the foreground: waits for its blocking dependents.
    pub fn deleting_dependents(&self) -> bool {
        self.deleting && self.has_finalizer(FOREGROUND_FINALIZER)
    }

    /// Being deleted with its dependents orphaned.
    pub fn orphaning(&self) -> bool {
        self.deleting && self.has_finalizer(ORPHAN_FINALIZER)
    }

    /// `namespace/name` (or `name`) for logs.
    pub fn label(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// Whether a reference holds its owner's foreground deletion.
fn blocks(r: &OwnerReference) -> bool {
    r.block_owner_deletion == Some(true)
}

/// Work the graph asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Work {
    /// Decide whether the object (by uid) goes, or whether a foreground-deleting owner is
    /// done waiting for its dependents.
    AttemptToDelete(String),
    /// Strip the references to this owner (by uid) from its dependents, then its `orphan`
    /// finalizer.
    AttemptToOrphan(String),
    /// The content of this terminating namespace changed (for the namespace controller).
    Namespace(String),
}

/// How many objects of one kind a namespace holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCount {
    /// Objects of the kind.
    pub objects: usize,
    /// Those not yet being deleted.
    pub undeleted: usize,
}

/// What a namespace holds, as the graph counts it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceContent {
    /// Per kind index, its objects.
    pub kinds: BTreeMap<usize, KindCount>,
    /// Per finalizer, how many objects carry it.
    pub finalizers: BTreeMap<String, usize>,
}

impl NamespaceContent {
    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.kinds.values().all(|c| c.objects == 0)
    }

    fn count(&mut self, node: &Node, add: bool) {
        let entry = self.kinds.entry(node.kind).or_default();
        let step = |n: &mut usize| *n = if add { *n + 1 } else { n.saturating_sub(1) };
        step(&mut entry.objects);
        if !node.deleting {
            step(&mut entry.undeleted);
        }
        if entry.objects == 0 {
            self.kinds.remove(&node.kind);
        }
        for f in &node.finalizers {
            let n = self.finalizers.entry(f.clone()).or_default();
            step(n);
            if *n == 0 {
                self.finalizers.remove(f);
            }
        }
    }
}

/// What the graph says of one owner reference of a dependent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerState {
    /// The owner exists (and is not deleting its dependents in the foreground).
    Solid,
    /// The owner exists and waits, in a foreground deletion, for its dependents.
    Waiting,
    /// The owner is gone (or was never there, or a new object has its name).
    Dangling,
    /// The graph has not seen it: it must be read before anything is decided.
    Unknown,
}

/// What to do about one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Nothing.
    Nothing,
    /// The graph has never seen these owners: read them, then plan again.
    Verify(Vec<OwnerReference>),
    /// Look at these dependents again (a foreground owner still waits for them).
    Requeue(Vec<String>),
    /// Remove a finalizer from the object.
    RemoveFinalizer(Node, &'static str),
    /// Remove the references to these owner uids from the object.
    RemoveOwnerRefs(Node, Vec<String>),
    /// Delete the object; `unblock` first clears `blockOwnerDeletion` on its references (a
    /// dependent of its own is deleting in the foreground too: do not let a cycle block).
    Delete {
        /// The object.
        node: Node,
        /// How its own dependents are treated.
        propagation: PropagationPolicy,
        /// Whether to unblock its owners first.
        unblock: bool,
    },
    /// Strip the owner's references from these dependents, then its `orphan` finalizer.
    Orphan {
        /// The owner.
        owner: Node,
        /// Its dependents.
        dependents: Vec<Node>,
    },
}

/// The owner graph.
#[derive(Debug)]
pub struct Graph {
    kinds: Vec<Kind>,
    namespace_kind: Option<usize>,
    nodes: HashMap<String, Node>,
    /// Owner uid -> uids of the nodes referencing it (the owner may be absent).
    dependents: HashMap<String, HashSet<String>>,
    /// Owner uids known to be gone that still have dependents (observed deleted, or read
    /// and not found), so they need no read; pruned with their last dependent.
    absent: HashSet<String>,
    namespaces: HashMap<String, NamespaceContent>,
    terminating: HashSet<String>,
    synced: bool,
}

impl Graph {
    /// An empty graph over `kinds`.
    pub fn new(kinds: Vec<Kind>) -> Self {
        let namespace_kind = kinds
            .iter()
            .position(|k| k.resource.api_version == "v1" && k.resource.kind == "Namespace");
        Graph {
            kinds,
            namespace_kind,
            nodes: HashMap::new(),
            dependents: HashMap::new(),
            absent: HashSet::new(),
            namespaces: HashMap::new(),
            terminating: HashSet::new(),
            synced: false,
        }
    }

    /// The kinds, by index.
    pub fn kinds(&self) -> &[Kind] {
        &self.kinds
    }

    /// The node of `uid`.
    pub fn node(&self, uid: &str) -> Option<&Node> {
        self.nodes.get(uid)
    }

    /// Whether every watcher has listed once (decisions about absent owners wait for it).
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// What `namespace` holds.
    pub fn namespace_content(&self, namespace: &str) -> NamespaceContent {
        self.namespaces.get(namespace).cloned().unwrap_or_default()
    }

    fn dependents_of<'a>(&'a self, uid: &str) -> impl Iterator<Item = &'a Node> + 'a {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| self.nodes.get(d))
    }

    fn unlink(&mut self, owner: &str, dependent: &str) {
        if let Some(set) = self.dependents.get_mut(owner) {
            set.remove(dependent);
            if set.is_empty() {
                self.dependents.remove(owner);
                self.absent.remove(owner);
            }
        }
    }

    fn owner_is_deleting_dependents(&self, uid: &str) -> bool {
        self.nodes.get(uid).is_some_and(Node::deleting_dependents)
    }

    fn account(&mut self, node: &Node, add: bool) {
        if let Some(ns) = &node.namespace {
            let content = self.namespaces.entry(ns.clone()).or_default();
            content.count(node, add);
            if content.kinds.is_empty() && content.finalizers.is_empty() {
                self.namespaces.remove(ns);
            }
        }
    }

    /// An object was added or changed; returns the work this asks for.
    pub fn apply(&mut self, node: Node) -> Vec<Work> {
        let mut work = Vec::new();
        let uid = node.uid.clone();
        let old = self.nodes.remove(&uid);
        let old_owners = old.as_ref().map(|o| o.owners.clone()).unwrap_or_default();

        // A reference dropped, or no longer blocking: its foreground owner may be done.
        for before in &old_owners {
            let after = node.owners.iter().find(|o| o.uid == before.uid);
            if after.is_none() {
                self.unlink(&before.uid, &uid);
            }
            let unblocked = after.is_none_or(|a| blocks(before) && !blocks(a));
            if unblocked && self.owner_is_deleting_dependents(&before.uid) {
                work.push(Work::AttemptToDelete(before.uid.clone()));
            }
        }
        for after in &node.owners {
            if old_owners.iter().any(|o| o.uid == after.uid) {
                continue;
            }
            self.dependents
                .entry(after.uid.clone())
                .or_default()
                .insert(uid.clone());
            let owner = self.nodes.get(&after.uid);
            // An owner not seen may be gone (checked once every kind is listed); one
            // deleting its dependents wants this one gone too.
            if (self.synced && owner.is_none()) || owner.is_some_and(Node::deleting_dependents) {
                work.push(Work::AttemptToDelete(uid.clone()));
            }
        }

        if node.deleting_dependents() && !old.as_ref().is_some_and(Node::deleting_dependents) {
            work.extend(self.dependents_of(&uid).map(|d| Work::AttemptToDelete(d.uid.clone())));
            work.push(Work::AttemptToDelete(uid.clone()));
        }
        if node.orphaning() && !old.as_ref().is_some_and(Node::orphaning) {
            work.push(Work::AttemptToOrphan(uid.clone()));
        }

        if Some(node.kind) == self.namespace_kind {
            if node.deleting {
                if self.terminating.insert(node.name.clone()) {
                    work.push(Work::Namespace(node.name.clone()));
                }
            } else {
                self.terminating.remove(&node.name);
            }
        }
        if let Some(old) = &old {
            self.account(old, false);
        }
        self.account(&node, true);
        let content_changed = old
            .as_ref()
            .is_none_or(|o| o.deleting != node.deleting || o.finalizers != node.finalizers);
        if let Some(ns) = node.namespace.as_ref().filter(|ns| self.terminating.contains(*ns)) {
            if content_changed {
                work.push(Work::Namespace(ns.clone()));
            }
        }
        self.nodes.insert(uid, node);
        work
    }

    /// An object is gone; returns the work this asks for.
    pub fn remove(&mut self, uid: &str) -> Vec<Work> {
        let Some(node) = self.nodes.remove(uid) else {
            return Vec::new();
        };
        let mut work = Vec::new();
        for owner in &node.owners {
            self.unlink(&owner.uid, uid);
            if self.owner_is_deleting_dependents(&owner.uid) {
                work.push(Work::AttemptToDelete(owner.uid.clone()));
            }
        }
        if let Some(deps) = self.dependents.get(uid) {
            // uids are never reused: its dependents need not read it to know it is gone.
            self.absent.insert(uid.to_string());
            let mut deps: Vec<&String> = deps.iter().collect();
            deps.sort();
            work.extend(deps.into_iter().map(|d| Work::AttemptToDelete(d.clone())));
        }
        self.account(&node, false);
        if Some(node.kind) == self.namespace_kind {
            self.terminating.remove(&node.name);
        }
        if let Some(ns) = node.namespace.as_ref().filter(|ns| self.terminating.contains(*ns)) {
            work.push(Work::Namespace(ns.clone()));
        }
        work
    }

    /// A watcher of `kind` relisted and saw `seen`: the kind's other nodes are gone.
    pub fn relisted(&mut self, kind: usize, seen: &HashSet<String>) -> Vec<Work> {
        let stale: Vec<String> = self
            .nodes
            .values()
            .filter(|n| n.kind == kind && !seen.contains(&n.uid))
            .map(|n| n.uid.clone())
            .collect();
        stale.iter().flat_map(|uid| self.remove(uid)).collect()
    }

    /// Every watcher has listed: objects naming owners the graph has not seen get looked at.
    pub fn mark_synced(&mut self) -> Vec<Work> {
        self.synced = true;
        let mut work: Vec<Work> = self
            .nodes
            .values()
            .filter(|n| n.owners.iter().any(|o| !self.nodes.contains_key(&o.uid)))
            .map(|n| Work::AttemptToDelete(n.uid.clone()))
            .collect();
        work.sort();
        work
    }

    /// A read found owner `uid` gone.
    pub fn mark_absent(&mut self, uid: &str) {
        if self.dependents.contains_key(uid) && !self.nodes.contains_key(uid) {
            self.absent.insert(uid.to_string());
        }
    }

    /// What the graph says of `dependent`'s reference `r`, given owners read this pass.
    pub fn owner_state(&self, r: &OwnerReference, dependent: &Node, read: &HashMap<String, OwnerState>) -> OwnerState {
        if let Some(state) = read.get(&r.uid) {
            return *state;
        }
        match self.nodes.get(&r.uid) {
            // An owner is looked up in its dependent's namespace (or cluster-wide): one
            // elsewhere is not its owner, as in Kubernetes.
            Some(o) if o.namespace.is_some() && o.namespace != dependent.namespace => OwnerState::Dangling,
            Some(o) if o.deleting_dependents() => OwnerState::Waiting,
            Some(_) => OwnerState::Solid,
            None if self.absent.contains(&r.uid) => OwnerState::Dangling,
            None => OwnerState::Unknown,
        }
    }

    /// Kubernetes' `attemptToDeleteItem`, without its reads: what to do about `uid`.
    pub fn plan_delete(&self, uid: &str, read: &HashMap<String, OwnerState>) -> Plan {
        let Some(node) = self.nodes.get(uid) else {
            return Plan::Nothing;
        };
        if node.deleting_dependents() {
            let blocking: Vec<&Node> = self
                .dependents_of(uid)
                .filter(|d| d.owners.iter().any(|o| o.uid == uid && blocks(o)))
                .collect();
            if blocking.is_empty() {
                return Plan::RemoveFinalizer(node.clone(), FOREGROUND_FINALIZER);
            }
            let mut again: Vec<String> = blocking
                .iter()
                .filter(|d| !d.deleting_dependents())
                .map(|d| d.uid.clone())
                .collect();
            again.sort();
            return if again.is_empty() {
                Plan::Nothing
            } else {
                Plan::Requeue(again)
            };
        }
        // Already going: its own finalizers (or grace period) decide when.
        if node.deleting || node.owners.is_empty() {
            return Plan::Nothing;
        }
        let (mut solid, mut dangling, mut waiting, mut unknown) = (0, Vec::new(), Vec::new(), Vec::new());
        for r in &node.owners {
            match self.owner_state(r, node, read) {
                OwnerState::Solid => solid += 1,
                OwnerState::Dangling => dangling.push(r.uid.clone()),
                OwnerState::Waiting => waiting.push(r.uid.clone()),
                OwnerState::Unknown => unknown.push(r.clone()),
            }
        }
        if !unknown.is_empty() {
            return Plan::Verify(unknown);
        }
        if solid > 0 {
            // Still owned: only the references to gone or waiting owners go.
            if dangling.is_empty() && waiting.is_empty() {
                return Plan::Nothing;
            }
            dangling.extend(waiting);
            return Plan::RemoveOwnerRefs(node.clone(), dangling);
        }
        let own_dependents: Vec<&Node> = self.dependents_of(uid).collect();
        if !waiting.is_empty() && !own_dependents.is_empty() {
            // A foreground owner's dependent with dependents of its own goes in the
            // foreground too, so the owner waits for the whole chain.
            return Plan::Delete {
                node: node.clone(),
                propagation: PropagationPolicy::Foreground,
                unblock: own_dependents.iter().any(|d| d.deleting_dependents()),
            };
        }
        let propagation = if node.has_finalizer(ORPHAN_FINALIZER) {
            PropagationPolicy::Orphan
        } else if node.has_finalizer(FOREGROUND_FINALIZER) {
            PropagationPolicy::Foreground
        } else {
            PropagationPolicy::Background
        };
        Plan::Delete {
            node: node.clone(),
            propagation,
            unblock: false,
        }
    }

    /// Kubernetes' `attemptToOrphan`: what to do about owner `uid`.
    pub fn plan_orphan(&self, uid: &str) -> Plan {
        match self.nodes.get(uid) {
            Some(owner) if owner.orphaning() => {
                let mut dependents: Vec<Node> = self.dependents_of(uid).cloned().collect();
                dependents.sort_by(|a, b| a.uid.cmp(&b.uid));
                Plan::Orphan {
                    owner: owner.clone(),
                    dependents,
                }
            }
            _ => Plan::Nothing,
        }
    }
}

/// A JSON patch removing the references to `remove` from `owners` (the object's list),
/// each guarded by a `test` of its uid: a stale view fails rather than hits another entry.
/// `None` when none of them is there.
pub fn remove_owner_refs_patch(owners: &[OwnerReference], remove: &[String]) -> Option<Value> {
    let mut ops = Vec::new();
    // Highest index first, so the earlier indexes stay valid.
    for (i, r) in owners.iter().enumerate().rev() {
        if remove.contains(&r.uid) {
            ops.push(json!({"op": "test", "path": format!("/metadata/ownerReferences/{i}/uid"), "value": r.uid}));
            ops.push(json!({"op": "remove", "path": format!("/metadata/ownerReferences/{i}")}));
        }
    }
    (!ops.is_empty()).then_some(Value::Array(ops))
}

/// A JSON patch removing `finalizer` from `finalizers` (the object's list), guarded by a
/// `test`; `None` when it is not there.
pub fn remove_finalizer_patch(finalizers: &[String], finalizer: &str) -> Option<Value> {
    let i = finalizers.iter().position(|f| f == finalizer)?;
    Some(json!([
        {"op": "test", "path": format!("/metadata/finalizers/{i}"), "value": finalizer},
        {"op": "remove", "path": format!("/metadata/finalizers/{i}")},
    ]))
}

/// A JSON patch setting `blockOwnerDeletion: false` on every blocking reference.
pub fn unblock_patch(owners: &[OwnerReference]) -> Option<Value> {
    let mut ops = Vec::new();
    for (i, r) in owners.iter().enumerate().filter(|(_, r)| blocks(r)) {
        ops.push(json!({"op": "test", "path": format!("/metadata/ownerReferences/{i}/uid"), "value": r.uid}));
        ops.push(json!({"op": "replace", "path": format!("/metadata/ownerReferences/{i}/blockOwnerDeletion"), "value": false}));
    }
    (!ops.is_empty()).then_some(Value::Array(ops))
}

/// A work queue as client-go's: an item queued twice is queued once; an item queued while
/// a worker has it runs again after; failures are retried after exponential back-off.
#[derive(Debug)]
pub struct Queue<T> {
    state: Mutex<QueueState<T>>,
    ready: Notify,
}

#[derive(Debug)]
struct QueueState<T> {
    items: VecDeque<T>,
    queued: HashSet<T>,
    active: HashSet<T>,
    dirty: HashSet<T>,
    failures: HashMap<T, u32>,
}

/// First retry delay; doubles per failure.
const RETRY_BASE: Duration = Duration::from_millis(10);
/// Longest retry delay.
const RETRY_MAX: Duration = Duration::from_secs(30);

impl<T: Clone + Eq + Hash + Send + 'static> Queue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        Queue {
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                queued: HashSet::new(),
                active: HashSet::new(),
                dirty: HashSet::new(),
                failures: HashMap::new(),
            }),
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState<T>> {
        // The state stays consistent across a panicking holder: every change is one step.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `item` unless it is queued already.
    pub fn add(&self, item: T) {
        let mut s = self.lock();
        if s.queued.contains(&item) {
            return;
        }
        if s.active.contains(&item) {
            s.dirty.insert(item);
            return;
        }
        s.queued.insert(item.clone());
        s.items.push_back(item);
        drop(s);
        self.ready.notify_one();
    }

    /// The next item; the caller owns it until [`Queue::done`].
    pub async fn next(&self) -> T {
        loop {
            let notified = self.ready.notified();
            {
                let mut s = self.lock();
                if let Some(item) = s.items.pop_front() {
                    s.queued.remove(&item);
                    s.active.insert(item.clone());
                    let more = !s.items.is_empty();
                    drop(s);
                    if more {
                        // Pass the wake-up on: another worker may take the rest.
                        self.ready.notify_one();
                    }
                    return item;
                }
            }
            notified.await;
        }
    }

    /// The worker is done with `item`: `Ok` forgets its failures, `Err` retries it later.
    pub fn done(self: &Arc<Self>, item: T, ok: bool) {
        let (rerun, delay) = {
            let mut s = self.lock();
            s.active.remove(&item);
            let rerun = s.dirty.remove(&item);
            let delay = if ok {
                s.failures.remove(&item);
                None
            } else {
                let n = s.failures.entry(item.clone()).or_default();
                *n = n.saturating_add(1);
                Some(RETRY_BASE.saturating_mul(1u32 << (*n - 1).min(20)).min(RETRY_MAX))
            };
            (rerun, delay)
        };
        if rerun {
            self.add(item.clone());
        }
        if let Some(delay) = delay {
            let queue = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                queue.add(item);
            });
        }
    }

    /// Items waiting (not counting those a worker has).
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Whether no item waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: Clone + Eq + Hash + Send + 'static> Default for Queue<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// What the collector shares with the namespace controller.
#[derive(Debug, Clone)]
pub struct Shared {
    graph: Arc<Mutex<Graph>>,
    /// Terminating namespaces whose content changed.
    pub namespaces: Arc<Queue<String>>,
    /// Turns true once every watcher has listed.
    pub synced: watch::Receiver<bool>,
}

impl Shared {
    /// The graph, locked (never across an await).
    pub fn graph(&self) -> MutexGuard<'_, Graph> {
        lock(&self.graph)
    }
}

fn lock(graph: &Mutex<Graph>) -> MutexGuard<'_, Graph> {
    // Graph updates leave it consistent at every step they could panic in.
    graph.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the garbage collector and, on the same graph, the namespace controller, until
/// shutdown.
pub async fn run(client: kube::Client, shutdown: watch::Receiver<bool>) {
    let kinds = served_kinds();
    let graph = Arc::new(Mutex::new(Graph::new(kinds.clone())));
    let work = Arc::new(Queue::new());
    let (synced_tx, synced) = watch::channel(false);
    let shared = Shared {
        graph: graph.clone(),
        namespaces: Arc::new(Queue::new()),
        synced,
    };
    let collector = Arc::new(Collector {
        client: client.clone(),
        graph,
        kinds,
        work,
    });
    let workers = futures::future::join_all((0..WORKERS).map(|_| worker(collector.clone(), shared.synced.clone())));
    tokio::select! {
        _ = super::stopped(shutdown) => {}
        _ = async {
            tokio::join!(
                build_graph(collector.clone(), shared.clone(), synced_tx),
                workers,
                super::namespace::run(client, shared.clone()),
            )
        } => {}
    }
}

struct Collector {
    client: kube::Client,
    graph: Arc<Mutex<Graph>>,
    kinds: Vec<Kind>,
    work: Arc<Queue<Work>>,
}

/// Feeds the graph from one metadata watcher per kind and routes the work it asks for.
async fn build_graph(collector: Arc<Collector>, shared: Shared, synced: watch::Sender<bool>) {
    let streams = collector.kinds.iter().enumerate().map(|(i, kind)| {
        let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(collector.client.clone(), &kind.resource);
        watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .map(move |event| (i, event))
            .boxed()
    });
    let mut events = futures::stream::select_all(streams);
    let kinds = collector.kinds.len();
    let mut listed = vec![false; kinds];
    let mut relisting: Vec<Option<HashSet<String>>> = vec![None; kinds];
    while let Some((kind, event)) = events.next().await {
        let work = {
            let mut graph = lock(&collector.graph);
            match event {
                Ok(Event::Init) => {
                    relisting[kind] = Some(HashSet::new());
                    Vec::new()
                }
                Ok(Event::InitApply(obj)) => match Node::from_meta(kind, &obj.metadata) {
                    Some(node) => {
                        if let Some(seen) = relisting[kind].as_mut() {
                            seen.insert(node.uid.clone());
                        }
                        graph.apply(node)
                    }
                    None => Vec::new(),
                },
                Ok(Event::InitDone) => {
                    let seen = relisting[kind].take().unwrap_or_default();
                    let mut work = graph.relisted(kind, &seen);
                    listed[kind] = true;
                    if !graph.synced() && listed.iter().all(|l| *l) {
                        tracing::info!(objects = graph.nodes.len(), "garbage collector: every kind listed");
                        work.extend(graph.mark_synced());
                        synced.send_replace(true);
                    }
                    work
                }
                Ok(Event::Apply(obj)) => Node::from_meta(kind, &obj.metadata)
                    .map(|node| graph.apply(node))
                    .unwrap_or_default(),
                Ok(Event::Delete(obj)) => obj
                    .metadata
                    .uid
                    .as_deref()
                    .map(|uid| graph.remove(uid))
                    .unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(kind = %collector.kinds[kind].resource.kind, error = %e, "garbage collector watch failed; retrying");
                    Vec::new()
                }
            }
        };
        for w in work {
            match w {
                Work::Namespace(ns) => shared.namespaces.add(ns),
                other => collector.work.add(other),
            }
        }
    }
}

/// Takes work once the graph is synced, until shutdown.
async fn worker(collector: Arc<Collector>, mut synced: watch::Receiver<bool>) {
    if synced.wait_for(|s| *s).await.is_err() {
        return;
    }
    loop {
        let item = collector.work.next().await;
        let result = match &item {
            Work::AttemptToDelete(uid) => collector.attempt_to_delete(uid).await,
            Work::AttemptToOrphan(uid) => collector.attempt_to_orphan(uid).await,
            Work::Namespace(_) => Ok(()),
        };
        if let Err(e) = &result {
            tracing::debug!(work = ?item, error = %e, "garbage collection failed; retrying");
        }
        collector.work.done(item, result.is_ok());
    }
}

/// Whether an API error says the object is gone already.
fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl Collector {
    fn kind(&self, node: &Node) -> &Kind {
        &self.kinds[node.kind]
    }

    /// An API client for `node`'s kind, in its namespace.
    fn api(&self, node: &Node) -> Api<DynamicObject> {
        let kind = self.kind(node);
        match (&node.namespace, kind.namespaced) {
            (Some(ns), true) => Api::namespaced_with(self.client.clone(), ns, &kind.resource),
            _ => Api::all_with(self.client.clone(), &kind.resource),
        }
    }

    fn object(&self, node: &Node) -> String {
        format!("{}/{}", self.kind(node).resource.plural, node.label())
    }

    async fn json_patch(&self, node: &Node, patch: Value) -> Result<(), Error> {
        let ops: json_patch::Patch = serde_json::from_value(patch)?;
        match self
            .api(node)
            .patch(&node.name, &PatchParams::default(), &Patch::<()>::Json(ops))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads an owner the graph has not seen, in its dependent's namespace.
    async fn read_owner(&self, r: &OwnerReference, dependent: &Node) -> Result<OwnerState, Error> {
        let Some(kind) = self
            .kinds
            .iter()
            .find(|k| k.resource.api_version == r.api_version && k.resource.kind == r.kind)
        else {
            // Not a served kind: nothing can tell it is gone, so the dependent stays.
            tracing::warn!(object = %self.object(dependent), owner = %format!("{}/{}", r.kind, r.name), "owner of an unknown kind");
            return Ok(OwnerState::Solid);
        };
        let api: Api<DynamicObject> = match (kind.namespaced, &dependent.namespace) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &kind.resource),
            // A cluster-scoped object cannot be owned by a namespaced one.
            (true, None) => return Ok(OwnerState::Dangling),
            (false, _) => Api::all_with(self.client.clone(), &kind.resource),
        };
        Ok(match api.get_metadata_opt(&r.name).await? {
            // Same uid: the graph lags behind (its watcher of that kind is slower).
            Some(owner) if owner.metadata.uid.as_deref() == Some(r.uid.as_str()) => {
                let deleting = owner.metadata.deletion_timestamp.is_some();
                let foreground = owner
                    .metadata
                    .finalizers
                    .iter()
                    .flatten()
                    .any(|f| f == FOREGROUND_FINALIZER);
                if deleting && foreground {
                    OwnerState::Waiting
                } else {
                    OwnerState::Solid
                }
            }
            // Gone, or another object of the same name: not the owner.
            _ => OwnerState::Dangling,
        })
    }

    async fn attempt_to_delete(&self, uid: &str) -> Result<(), Error> {
        let mut read = HashMap::new();
        loop {
            let plan = lock(&self.graph).plan_delete(uid, &read);
            match plan {
                Plan::Verify(owners) => {
                    let Some(dependent) = lock(&self.graph).node(uid).cloned() else {
                        return Ok(());
                    };
                    for r in owners {
                        let state = self.read_owner(&r, &dependent).await?;
                        if state == OwnerState::Dangling {
                            lock(&self.graph).mark_absent(&r.uid);
                        }
                        read.insert(r.uid.clone(), state);
                    }
                }
                other => return self.execute(other).await,
            }
        }
    }

    async fn attempt_to_orphan(&self, uid: &str) -> Result<(), Error> {
        let plan = lock(&self.graph).plan_orphan(uid);
        self.execute(plan).await
    }

    async fn execute(&self, plan: Plan) -> Result<(), Error> {
        match plan {
            Plan::Nothing | Plan::Verify(_) => Ok(()),
            Plan::Requeue(uids) => {
                for uid in uids {
                    self.work.add(Work::AttemptToDelete(uid));
                }
                Ok(())
            }
            Plan::RemoveFinalizer(node, finalizer) => {
                let Some(patch) = remove_finalizer_patch(&node.finalizers, finalizer) else {
                    return Ok(());
                };
                tracing::info!(object = %self.object(&node), finalizer, "removing finalizer");
                self.json_patch(&node, patch).await
            }
            Plan::RemoveOwnerRefs(node, owners) => {
                let Some(patch) = remove_owner_refs_patch(&node.owners, &owners) else {
                    return Ok(());
                };
                tracing::info!(object = %self.object(&node), owners = ?owners, "removing references to gone owners");
                self.json_patch(&node, patch).await
            }
            Plan::Delete {
                node,
                propagation,
                unblock,
            } => {
                let mut resource_version = node.resource_version.clone();
                if unblock {
                    if let Some(patch) = unblock_patch(&node.owners) {
                        self.json_patch(&node, patch).await?;
                        // Our own patch moved it on; the uid still pins the object.
                        resource_version = None;
                    }
                }
                tracing::info!(object = %self.object(&node), propagation = ?propagation, "deleting object whose owners are gone");
                let params = DeleteParams {
                    propagation_policy: Some(propagation),
                    // The graph's view of the object: if it changed (a new owner, say),
                    // the delete fails and the newer event decides again.
                    preconditions: Some(Preconditions {
                        uid: Some(node.uid.clone()),
                        resource_version,
                    }),
                    ..DeleteParams::default()
                };
                match self.api(&node).delete(&node.name, &params).await {
                    Ok(_) => Ok(()),
                    Err(e) if not_found(&e) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            Plan::Orphan { owner, dependents } => {
                for dependent in &dependents {
                    if let Some(patch) = remove_owner_refs_patch(&dependent.owners, std::slice::from_ref(&owner.uid)) {
                        tracing::info!(object = %self.object(dependent), owner = %self.object(&owner), "orphaning dependent");
                        self.json_patch(dependent, patch).await?;
                    }
                }
                match remove_finalizer_patch(&owner.finalizers, ORPHAN_FINALIZER) {
                    Some(patch) => self.json_patch(&owner, patch).await,
                    None => Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds() -> Vec<Kind> {
        vec![
            Kind::new("v1", "ConfigMap", "configmaps", true),
            Kind::new("v1", "Namespace", "namespaces", false),
            Kind::new("apps/v1", "Deployment", "deployments", true),
        ]
    }
    const CM: usize = 0;
    const NS: usize = 1;

    fn owner(uid: &str, block: bool) -> OwnerReference {
        OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: format!("name-{uid}"),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: block.then_some(true),
        }
    }

    fn node(uid: &str, owners: &[OwnerReference]) -> Node {
        Node {
            kind: CM,
            namespace: Some("default".into()),
            name: format!("name-{uid}"),
            uid: uid.into(),
            resource_version: Some("1".into()),
            owners: owners.to_vec(),
            finalizers: Vec::new(),
            deleting: false,
        }
    }

    fn deleting(mut n: Node, finalizers: &[&str]) -> Node {
        n.deleting = true;
        n.finalizers = finalizers.iter().map(|f| f.to_string()).collect();
        n
    }

    fn graph(nodes: Vec<Node>) -> Graph {
        let mut g = Graph::new(kinds());
        for n in nodes {
            g.apply(n);
        }
        g.mark_synced();
        g
    }

    fn delete(uid: &str, propagation: PropagationPolicy, unblock: bool, g: &Graph) -> Plan {
        Plan::Delete {
            node: g.node(uid).cloned().expect("node"),
            propagation,
            unblock,
        }
    }

    #[test]
    fn plan_delete_decides_as_kubernetes_attempt_to_delete_item() {
        let read_absent: HashMap<String, OwnerState> = [("ghost".to_string(), OwnerState::Dangling)].into();
        let read_there: HashMap<String, OwnerState> = [("ghost".to_string(), OwnerState::Solid)].into();
        let none = HashMap::new();
        // (case, graph, item, owners read this pass, expected plan builder)
        type Expect = Box<dyn Fn(&Graph) -> Plan>;
        type Case<'a> = (&'a str, Graph, &'a str, &'a HashMap<String, OwnerState>, Expect);
        let cases: Vec<Case> = vec![
            (
                "no owners: nothing",
                graph(vec![node("a", &[])]),
                "a",
                &none,
                Box::new(|_| Plan::Nothing),
            ),
            (
                "owner present: nothing",
                graph(vec![node("o", &[]), node("d", &[owner("o", false)])]),
                "d",
                &none,
                Box::new(|_| Plan::Nothing),
            ),
            (
                "owner never seen: read it first",
                graph(vec![node("d", &[owner("ghost", false)])]),
                "d",
                &none,
                Box::new(|_| Plan::Verify(vec![owner("ghost", false)])),
            ),
            (
                "owner read and gone: background delete",
                graph(vec![node("d", &[owner("ghost", false)])]),
                "d",
                &read_absent,
                Box::new(|g| delete("d", PropagationPolicy::Background, false, g)),
            ),
            (
                "owner read and there (graph lags): nothing",
                graph(vec![node("d", &[owner("ghost", false)])]),
                "d",
                &read_there,
                Box::new(|_| Plan::Nothing),
            ),
            (
                "one owner left, one gone: drop the gone reference",
                graph(vec![
                    node("o", &[]),
                    node("d", &[owner("o", false), owner("ghost", false)]),
                ]),
                "d",
                &read_absent,
                Box::new(|g| Plan::RemoveOwnerRefs(g.node("d").cloned().expect("d"), vec!["ghost".into()])),
            ),
            (
                "one owner left, one waiting in the foreground: drop the waiting reference",
                graph(vec![
                    node("o", &[]),
                    deleting(node("w", &[]), &[FOREGROUND_FINALIZER]),
                    node("d", &[owner("o", false), owner("w", true)]),
                ]),
                "d",
                &none,
                Box::new(|g| Plan::RemoveOwnerRefs(g.node("d").cloned().expect("d"), vec!["w".into()])),
            ),
            (
                "foreground owner, leaf dependent: background delete",
                graph(vec![
                    deleting(node("w", &[]), &[FOREGROUND_FINALIZER]),
                    node("d", &[owner("w", true)]),
                ]),
                "d",
                &none,
                Box::new(|g| delete("d", PropagationPolicy::Background, false, g)),
            ),
            (
                "foreground owner, dependent with dependents: foreground delete",
                graph(vec![
                    deleting(node("w", &[]), &[FOREGROUND_FINALIZER]),
                    node("d", &[owner("w", true)]),
                    node("dd", &[owner("d", true)]),
                ]),
                "d",
                &none,
                Box::new(|g| delete("d", PropagationPolicy::Foreground, false, g)),
            ),
            (
                "foreground chain with a foreground grandchild: unblock first",
                graph(vec![
                    deleting(node("w", &[]), &[FOREGROUND_FINALIZER]),
                    node("d", &[owner("w", true)]),
                    deleting(node("dd", &[owner("d", true)]), &[FOREGROUND_FINALIZER]),
                ]),
                "d",
                &none,
                Box::new(|g| delete("d", PropagationPolicy::Foreground, true, g)),
            ),
            (
                "orphan finalizer preset, owner gone: orphan delete",
                graph(vec![{
                    let mut d = node("d", &[owner("ghost", false)]);
                    d.finalizers = vec![ORPHAN_FINALIZER.into()];
                    d
                }]),
                "d",
                &read_absent,
                Box::new(|g| delete("d", PropagationPolicy::Orphan, false, g)),
            ),
            (
                "being deleted already: nothing",
                graph(vec![deleting(
                    node("d", &[owner("ghost", false)]),
                    &["example.com/hold"],
                )]),
                "d",
                &read_absent,
                Box::new(|_| Plan::Nothing),
            ),
            (
                "foreground owner with a blocking dependent left: look at it again",
                graph(vec![
                    deleting(node("w", &[]), &[FOREGROUND_FINALIZER]),
                    node("d", &[owner("w", true)]),
                ]),
                "w",
                &none,
                Box::new(|_| Plan::Requeue(vec!["d".into()])),
            ),
            (
                "foreground owner waiting on a dependent deleting in the foreground: nothing",
                graph(vec![
                    deleting(node("w", &[]), &[FOREGROUND_FINALIZER]),
                    deleting(node("d", &[owner("w", true)]), &[FOREGROUND_FINALIZER]),
                ]),
                "w",
                &none,
                Box::new(|_| Plan::Nothing),
            ),
            (
                "foreground owner with only non-blocking dependents: remove the finalizer",
                graph(vec![
                    deleting(node("w", &[]), &[FOREGROUND_FINALIZER]),
                    node("d", &[owner("w", false)]),
                ]),
                "w",
                &none,
                Box::new(|g| Plan::RemoveFinalizer(g.node("w").cloned().expect("w"), FOREGROUND_FINALIZER)),
            ),
            (
                "owner in another namespace is not the owner",
                graph(vec![
                    {
                        let mut o = node("o", &[]);
                        o.namespace = Some("other".into());
                        o
                    },
                    node("d", &[owner("o", false)]),
                ]),
                "d",
                &none,
                Box::new(|g| delete("d", PropagationPolicy::Background, false, g)),
            ),
            (
                "unknown object: nothing",
                graph(vec![]),
                "nope",
                &none,
                Box::new(|_| Plan::Nothing),
            ),
        ];
        for (case, g, uid, read, expect) in cases {
            assert_eq!(g.plan_delete(uid, read), expect(&g), "{case}");
        }
    }

    #[test]
    fn removed_owner_is_absent_and_its_dependents_are_queued() {
        let mut g = graph(vec![
            node("o", &[]),
            node("d1", &[owner("o", false)]),
            node("d2", &[owner("o", false)]),
        ]);
        let work = g.remove("o");
        assert_eq!(
            work,
            vec![Work::AttemptToDelete("d1".into()), Work::AttemptToDelete("d2".into())]
        );
        assert_eq!(
            g.plan_delete("d1", &HashMap::new()),
            delete("d1", PropagationPolicy::Background, false, &g)
        );
        // A new owner of the same name has a new uid: the dependents still name the old one.
        assert!(g.apply(node("o2", &[])).is_empty());
        assert_eq!(
            g.plan_delete("d2", &HashMap::new()),
            delete("d2", PropagationPolicy::Background, false, &g)
        );
        // Once no dependent names it, the absent uid is forgotten.
        g.remove("d1");
        g.remove("d2");
        assert!(g.absent.is_empty() && g.dependents.is_empty());
    }

    #[test]
    fn apply_queues_what_each_change_asks_for() {
        // (case, graph before, change, expected work)
        let cases: Vec<(&str, Vec<Node>, Node, Vec<Work>)> = vec![
            ("new object, no owners", vec![], node("a", &[]), vec![]),
            (
                "new dependent of a present owner",
                vec![node("o", &[])],
                node("d", &[owner("o", false)]),
                vec![],
            ),
            (
                "new dependent of an owner never seen",
                vec![],
                node("d", &[owner("ghost", false)]),
                vec![Work::AttemptToDelete("d".into())],
            ),
            (
                "owner starts a foreground deletion: its dependents and itself",
                vec![node("o", &[]), node("d", &[owner("o", true)])],
                deleting(node("o", &[]), &[FOREGROUND_FINALIZER]),
                vec![Work::AttemptToDelete("d".into()), Work::AttemptToDelete("o".into())],
            ),
            (
                "owner starts an orphaning deletion",
                vec![node("o", &[]), node("d", &[owner("o", true)])],
                deleting(node("o", &[]), &[ORPHAN_FINALIZER]),
                vec![Work::AttemptToOrphan("o".into())],
            ),
            (
                "dependent drops its reference to a waiting owner: the owner",
                vec![
                    deleting(node("w", &[]), &[FOREGROUND_FINALIZER]),
                    node("d", &[owner("w", true)]),
                ],
                node("d", &[]),
                vec![Work::AttemptToDelete("w".into())],
            ),
            (
                "dependent stops blocking a waiting owner: the owner",
                vec![
                    deleting(node("w", &[]), &[FOREGROUND_FINALIZER]),
                    node("d", &[owner("w", true)]),
                ],
                node("d", &[owner("w", false)]),
                vec![Work::AttemptToDelete("w".into())],
            ),
            (
                "new dependent of a waiting owner: the dependent",
                vec![deleting(node("w", &[]), &[FOREGROUND_FINALIZER])],
                node("d", &[owner("w", true)]),
                vec![Work::AttemptToDelete("d".into())],
            ),
            (
                "unchanged object: nothing",
                vec![node("o", &[]), node("d", &[owner("o", true)])],
                node("d", &[owner("o", true)]),
                vec![],
            ),
        ];
        for (case, before, change, expect) in cases {
            let mut g = graph(before);
            assert_eq!(g.apply(change), expect, "{case}");
        }
    }

    #[test]
    fn removing_a_blocking_dependent_queues_its_waiting_owner() {
        let mut g = graph(vec![
            deleting(node("w", &[]), &[FOREGROUND_FINALIZER]),
            node("d", &[owner("w", true)]),
        ]);
        assert_eq!(g.remove("d"), vec![Work::AttemptToDelete("w".into())]);
        assert_eq!(
            g.plan_delete("w", &HashMap::new()),
            Plan::RemoveFinalizer(g.node("w").cloned().expect("w"), FOREGROUND_FINALIZER)
        );
    }

    #[test]
    fn owners_are_only_checked_once_every_kind_is_listed() {
        let mut g = Graph::new(kinds());
        assert!(g.apply(node("d", &[owner("o", false)])).is_empty());
        assert!(g.apply(node("d2", &[owner("late", false)])).is_empty());
        assert!(g.apply(node("late", &[])).is_empty());
        assert_eq!(g.mark_synced(), vec![Work::AttemptToDelete("d".into())]);
    }

    #[test]
    fn relist_removes_what_it_no_longer_sees() {
        let mut g = graph(vec![node("o", &[]), node("d", &[owner("o", false)])]);
        let seen: HashSet<String> = ["d".to_string()].into();
        assert_eq!(g.relisted(CM, &seen), vec![Work::AttemptToDelete("d".into())]);
        assert!(g.node("o").is_none());
    }

    #[test]
    fn orphan_plan_lists_the_dependents() {
        let g = graph(vec![
            deleting(node("o", &[]), &[ORPHAN_FINALIZER]),
            node("d", &[owner("o", true)]),
            node("x", &[]),
        ]);
        assert_eq!(
            g.plan_orphan("o"),
            Plan::Orphan {
                owner: g.node("o").cloned().expect("o"),
                dependents: vec![g.node("d").cloned().expect("d")],
            }
        );
        assert_eq!(g.plan_orphan("x"), Plan::Nothing);
    }

    #[test]
    fn namespace_content_is_counted_and_terminating_namespaces_are_told() {
        let mut g = graph(vec![]);
        let ns = Node {
            kind: NS,
            namespace: None,
            name: "default".into(),
            uid: "ns".into(),
            resource_version: None,
            owners: Vec::new(),
            finalizers: Vec::new(),
            deleting: false,
        };
        g.apply(ns.clone());
        g.apply(node("a", &[]));
        g.apply(deleting(node("b", &[]), &["example.com/hold"]));
        let content = g.namespace_content("default");
        assert_eq!(
            content.kinds[&CM],
            KindCount {
                objects: 2,
                undeleted: 1
            }
        );
        assert_eq!(content.finalizers["example.com/hold"], 1);

        // Not terminating: no news for the namespace controller.
        assert!(g.remove("a").is_empty());
        assert_eq!(g.apply(deleting(ns, &[])), vec![Work::Namespace("default".into())]);
        assert_eq!(g.remove("b"), vec![Work::Namespace("default".into())]);
        assert!(g.namespace_content("default").is_empty());
        assert!(g.namespaces.is_empty());
    }

    #[test]
    fn patches_address_entries_by_index_and_test_them() {
        let owners = vec![owner("a", true), owner("b", false), owner("c", true)];
        assert_eq!(
            remove_owner_refs_patch(&owners, &["a".into(), "c".into()]),
            Some(json!([
                {"op": "test", "path": "/metadata/ownerReferences/2/uid", "value": "c"},
                {"op": "remove", "path": "/metadata/ownerReferences/2"},
                {"op": "test", "path": "/metadata/ownerReferences/0/uid", "value": "a"},
                {"op": "remove", "path": "/metadata/ownerReferences/0"},
            ]))
        );
        assert_eq!(remove_owner_refs_patch(&owners, &["z".into()]), None);
        let finalizers = vec!["x".to_string(), FOREGROUND_FINALIZER.to_string()];
        assert_eq!(
            remove_finalizer_patch(&finalizers, FOREGROUND_FINALIZER),
            Some(json!([
                {"op": "test", "path": "/metadata/finalizers/1", "value": FOREGROUND_FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/1"},
            ]))
        );
        assert_eq!(remove_finalizer_patch(&finalizers, ORPHAN_FINALIZER), None);
        assert_eq!(
            unblock_patch(&owners[1..]),
            Some(json!([
                {"op": "test", "path": "/metadata/ownerReferences/1/uid", "value": "c"},
                {"op": "replace", "path": "/metadata/ownerReferences/1/blockOwnerDeletion", "value": false},
            ]))
        );
        // The patches apply as the server applies them.
        let mut obj = json!({"metadata": {"ownerReferences": serde_json::to_value(&owners).expect("json")}});
        let ops: json_patch::Patch =
            serde_json::from_value(remove_owner_refs_patch(&owners, &["a".into(), "c".into()]).expect("patch"))
                .expect("ops");
        json_patch::patch(&mut obj, &ops).expect("applies");
        assert_eq!(
            obj["metadata"]["ownerReferences"],
            json!([serde_json::to_value(&owners[1]).expect("json")])
        );
    }

    #[test]
    fn kinds_come_from_the_registry() {
        let kinds = served_kinds();
        let deploy = kinds
            .iter()
            .find(|k| k.resource.kind == "Deployment")
            .expect("deployments");
        assert_eq!(deploy.resource.api_version, "apps/v1");
        assert_eq!(deploy.resource.group, "apps");
        assert_eq!(deploy.qualified_plural(), "deployments.apps");
        let ns = kinds
            .iter()
            .find(|k| k.resource.kind == "Namespace")
            .expect("namespaces");
        assert!(!ns.namespaced);
        assert_eq!(ns.qualified_plural(), "namespaces.");
    }

    #[tokio::test]
    async fn queue_dedupes_reruns_and_backs_off() {
        let q: Arc<Queue<u32>> = Arc::new(Queue::new());
        q.add(1);
        q.add(1);
        q.add(2);
        assert_eq!(q.len(), 2);
        let one = q.next().await;
        assert_eq!(one, 1);
        // Queued again while a worker has it: runs again once it is done.
        q.add(1);
        assert_eq!(q.len(), 1);
        q.done(1, true);
        assert_eq!(q.len(), 2);
        assert_eq!(q.next().await, 2);
        q.done(2, true);
        assert_eq!(q.next().await, 1);
        // A failure comes back after its back-off.
        q.done(1, false);
        assert!(q.is_empty());
        let again = tokio::time::timeout(Duration::from_secs(5), q.next()).await;
        assert_eq!(again.ok(), Some(1));
    }
}
