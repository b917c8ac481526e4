//! The controller manager: Deployment -> ReplicaSet -> Pods, CronJob -> Job -> Pods,
//! DaemonSet -> Pods, the default ServiceAccount of every namespace, node lifecycle
//! (unreachable nodes tainted, their pods evicted), the garbage collector and the
//! namespace controller.
//! Each controller talks to the API server like any client; none of them touches the
//! store.
//!
//! Controllers read through watch-fed caches only: the object being reconciled comes
//! from the `Controller`'s own reflector, its children from an [`OwnerIndex`] kept by an
//! [`informer::Informer`], one watch of the child kind shared by every controller that
//! owns that kind (so a reconcile never LISTs, and a pod is decoded and held once).
//! Writes made from a cache that may lag carry the cached `resourceVersion` (a stale
//! cache gets a conflict and a retry, not a wrong write), and pod creations and
//! deletions are remembered as [`Expectations`] until the cache has seen them.

pub(crate) mod claim;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod gc;
mod informer;
pub mod job;
pub mod namespace;
pub mod node_lifecycle;
pub mod replicaset;
pub mod resourcequota;
pub mod serviceaccount;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams, Preconditions, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// Errors of a reconcile pass (all retried after a short delay).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("api: {0}")]
    Api(#[from] kube::Error),
    /// An object lacks something the controller needs.
    #[error("{0}")]
    Malformed(String),
    /// The object being reconciled is gone, replaced or being deleted (seen by a fresh
    /// read the cache has not caught up with).
    #[error("{0}")]
    Stale(String),
}

impl Error {
    /// Whether the write lost a race with another writer or a newer cache state; the
    /// watch event that follows reconciles again, so this is not worth a log line.
    fn is_conflict(&self) -> bool {
        matches!(self, Error::Api(kube::Error::Api(s)) if s.code == 409)
    }
}

/// What every controller does after an error: try again soon.
pub(crate) fn retry_soon<K, C>(_obj: Arc<K>, error: &Error, _ctx: Arc<C>) -> Action {
    if error.is_conflict() {
        tracing::trace!(error = %error, "reconcile raced a newer write; retrying");
        return Action::requeue(Duration::from_millis(500));
    }
    tracing::debug!(error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// The controller name a `Controller` reports in logs.
pub(crate) fn log_result<T: std::fmt::Debug, E: std::fmt::Display>(controller: &'static str, result: Result<T, E>) {
    if let Err(e) = result {
        tracing::debug!(controller, error = %e, "reconcile error");
    }
}

/// How the controller manager is tuned.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// When nodes count as unreachable.
    pub node_lifecycle: node_lifecycle::Config,
}

/// Runs every controller with the default [`Config`] until `shutdown` turns true.
pub async fn run(client: kube::Client, shutdown: watch::Receiver<bool>) {
    run_with(client, Config::default(), shutdown).await
}

/// Runs every controller until `shutdown` turns true.
pub async fn run_with(client: kube::Client, config: Config, shutdown: watch::Receiver<bool>) {
    // One watch and one cache of pods for the three controllers that own pods.
    let pods = informer::Informer::<Pod>::new();
    tokio::join!(
        deployment::run(client.clone(), shutdown.clone()),
        replicaset::run(client.clone(), &pods, shutdown.clone()),
        job::run(client.clone(), &pods, shutdown.clone()),
        cronjob::run(client.clone(), shutdown.clone()),
        daemonset::run(client.clone(), &pods, shutdown.clone()),
        pods.run(client.clone(), shutdown.clone()),
        serviceaccount::run(client.clone(), shutdown.clone()),
        resourcequota::run(client.clone(), shutdown.clone()),
        node_lifecycle::run(client.clone(), config.node_lifecycle, shutdown.clone()),
        // The garbage collector and the namespace controller, on one metadata graph.
        gc::run(client, shutdown),
    );
}

/// A future that resolves when `rx` reports shutdown.
pub(crate) async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// The uid of the object's controlling owner, if it has one.
pub(crate) fn controller_uid(meta: &ObjectMeta) -> Option<&str> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// The current time at the second precision Kubernetes stores (`metav1.Time`).
pub(crate) fn now() -> k8s_openapi::jiff::Timestamp {
    let t = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// Writes a status computed from the cache: `set` puts it on a copy of the cached
/// object, whose resourceVersion rides along, so a cache older than the stored object
/// gets a conflict (and a retry after the watch catches up), never a status computed
/// from children older than the write it would overwrite.
pub(crate) async fn write_status<K>(api: &Api<K>, cached: &K, set: impl FnOnce(&mut K)) -> Result<(), Error>
where
    K: Resource + Clone + serde::Serialize + DeserializeOwned + std::fmt::Debug,
{
    let mut updated = cached.clone();
    set(&mut updated);
    updated.meta_mut().managed_fields = None;
    api.replace_status(&updated.name_any(), &PostParams::default(), &updated)
        .await?;
    Ok(())
}

/// Creates `pod` as a child of the owner with uid `owner`, expecting it until the cache
/// shows it.
pub(crate) async fn create_pod(
    expectations: &Expectations,
    api: &Api<Pod>,
    owner: &str,
    pod: &Pod,
) -> Result<Pod, Error> {
    let created = api.create(&PostParams::default(), pod).await?;
    if let Some(uid) = created.uid() {
        expectations.created(owner, uid);
    }
    Ok(created)
}

/// Deletes one child pod of the owner with uid `owner` (that very pod: a new one of the
/// same name is not the owner's to delete), expecting the deletion until the cache shows
/// it. A pod already gone is no error.
pub(crate) async fn delete_pod(
    expectations: &Expectations,
    api: &Api<Pod>,
    owner: &str,
    pod: &Pod,
) -> Result<(), Error> {
    let Some(uid) = pod.uid() else { return Ok(()) };
    delete_child(expectations, api, owner, &pod.name_any(), Some(uid), None).await
}

/// Deletes the child `name` of the owner with uid `owner`, only while it is the object
/// with `uid` (when known), expecting the deletion until the cache shows it; its own
/// dependents go as `propagation` says. A child already gone is no error.
pub(crate) async fn delete_child<K>(
    expectations: &Expectations,
    api: &Api<K>,
    owner: &str,
    name: &str,
    uid: Option<String>,
    propagation: Option<PropagationPolicy>,
) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    if let Some(uid) = &uid {
        expectations.deleting(owner, uid.clone());
    }
    let params = DeleteParams {
        propagation_policy: propagation,
        preconditions: Some(Preconditions {
            uid: uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => {
            if let Some(uid) = &uid {
                expectations.delete_failed(owner, uid);
            }
            Err(e.into())
        }
    }
}

/// A watch-fed cache of objects of kind `K`, indexed by their controlling owner's uid,
/// with the objects that have none by namespace: what a controller asks instead of
/// LISTing its children or the orphans it may adopt.
/// It follows the watcher's relists (`Init` .. `InitDone`) by swapping in the relisted
/// set whole.
pub(crate) struct OwnerIndex<K> {
    inner: Arc<RwLock<IndexInner<K>>>,
    ready: watch::Sender<bool>,
}

impl<K> Clone for OwnerIndex<K> {
    fn clone(&self) -> Self {
        OwnerIndex {
            inner: self.inner.clone(),
            ready: self.ready.clone(),
        }
    }
}

struct IndexInner<K> {
    /// Owner uid -> object uid -> object.
    by_owner: HashMap<String, HashMap<String, Arc<K>>>,
    /// Object uid -> owner uid, to move an object whose owner changes.
    owner_of: HashMap<String, String>,
    /// Namespace (empty when cluster-scoped) -> object uid -> object, for objects with
    /// no controlling owner.
    orphans: HashMap<String, HashMap<String, Arc<K>>>,
    /// Orphan uid -> its namespace, to find it again when it is adopted or deleted.
    orphan_in: HashMap<String, String>,
    /// Objects of a relist in progress.
    relist: Option<Vec<Arc<K>>>,
}

impl<K: Resource + Clone> OwnerIndex<K> {
    /// An empty index; not ready until its first list is complete.
    pub(crate) fn new() -> Self {
        OwnerIndex {
            inner: Arc::new(RwLock::new(IndexInner {
                by_owner: HashMap::new(),
                owner_of: HashMap::new(),
                orphans: HashMap::new(),
                orphan_in: HashMap::new(),
                relist: None,
            })),
            ready: watch::Sender::new(false),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, IndexInner<K>> {
        // A panic while holding the lock leaves a consistent map (each change is one
        // insert or remove), so a poisoned lock is still usable.
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, IndexInner<K>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one watcher event.
    pub(crate) fn apply(&self, event: &watcher::Event<Arc<K>>) {
        match event {
            watcher::Event::Apply(obj) => self.write().insert(obj.clone()),
            watcher::Event::Delete(obj) => {
                if let Some(uid) = obj.uid() {
                    self.write().remove(&uid);
                }
            }
            watcher::Event::Init => self.write().relist = Some(Vec::new()),
            watcher::Event::InitApply(obj) => {
                if let Some(buffer) = self.write().relist.as_mut() {
                    buffer.push(obj.clone());
                }
            }
            watcher::Event::InitDone => {
                {
                    let mut inner = self.write();
                    let objects = inner.relist.take().unwrap_or_default();
                    inner.by_owner.clear();
                    inner.owner_of.clear();
                    inner.orphans.clear();
                    inner.orphan_in.clear();
                    for obj in objects {
                        inner.insert(obj);
                    }
                }
                self.ready.send_replace(true);
            }
        }
    }

    /// The objects whose controlling owner has uid `owner`.
    pub(crate) fn owned_by(&self, owner: &str) -> Vec<Arc<K>> {
        self.read()
            .by_owner
            .get(owner)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The objects in `namespace` with no controlling owner, for controllers that adopt
    /// them.
    pub(crate) fn orphans_in(&self, namespace: &str) -> Vec<Arc<K>> {
        self.read()
            .orphans
            .get(namespace)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every object held, owned or not, and those of a relist in progress (so a late
    /// subscriber misses none of them; one may come twice).
    pub(crate) fn all(&self) -> Vec<Arc<K>> {
        let inner = self.read();
        let owned = inner.by_owner.values().flat_map(HashMap::values);
        let orphans = inner.orphans.values().flat_map(HashMap::values);
        let relisted = inner.relist.iter().flatten();
        owned.chain(orphans).chain(relisted).cloned().collect()
    }

    /// Waits until the first list has been seen whole: before that, "no children" only
    /// means "not known yet".
    pub(crate) async fn ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }
}

impl<K: Resource> IndexInner<K> {
    fn insert(&mut self, obj: Arc<K>) {
        let Some(uid) = obj.meta().uid.clone() else { return };
        let owner = controller_uid(obj.meta()).map(str::to_string);
        if self.owner_of.get(&uid) != owner.as_ref() || self.orphan_in.contains_key(&uid) {
            self.remove(&uid);
        }
        if let Some(owner) = owner {
            self.owner_of.insert(uid.clone(), owner.clone());
            self.by_owner.entry(owner).or_default().insert(uid, obj);
        } else {
            let namespace = obj.meta().namespace.clone().unwrap_or_default();
            self.orphan_in.insert(uid.clone(), namespace.clone());
            self.orphans.entry(namespace).or_default().insert(uid, obj);
        }
    }

    fn remove(&mut self, uid: &str) {
        if let Some(namespace) = self.orphan_in.remove(uid) {
            if let Some(m) = self.orphans.get_mut(&namespace) {
                m.remove(uid);
                if m.is_empty() {
                    self.orphans.remove(&namespace);
                }
            }
        }
        if let Some(owner) = self.owner_of.remove(uid) {
            if let Some(m) = self.by_owner.get_mut(&owner) {
                m.remove(uid);
                if m.is_empty() {
                    self.by_owner.remove(&owner);
                }
            }
        }
    }
}

/// What the cache holds of some children, as [`Expectations::outstanding`] reads it:
/// each uid, with whether the child is being deleted.
pub(crate) fn cache_state<K: Resource>(children: &[Arc<K>]) -> HashMap<String, bool> {
    children
        .iter()
        .filter_map(|c| Some((c.uid()?, c.meta().deletion_timestamp.is_some())))
        .collect()
}

/// How long a creation or deletion may stay unseen before it is no longer expected (a
/// lost watch event must not stall a controller for good).
const EXPECTATION_TTL: Duration = Duration::from_secs(300);

/// Creations and deletions a controller made that its cache has not shown yet, per
/// owner uid (Kubernetes' controller "expectations", kept by uid). A reconcile counts
/// outstanding creations as present and outstanding deletions as gone, so a lagging
/// cache never makes it create or delete twice.
#[derive(Default)]
pub(crate) struct Expectations {
    pending: Mutex<HashMap<String, Pending>>,
}

#[derive(Debug)]
struct Pending {
    adds: HashSet<String>,
    deletes: HashSet<String>,
    since: Instant,
}

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry<'a>(map: &'a mut HashMap<String, Pending>, owner: &str) -> &'a mut Pending {
        map.entry(owner.to_string()).or_insert_with(|| Pending {
            adds: HashSet::new(),
            deletes: HashSet::new(),
            since: Instant::now(),
        })
    }

    /// Records a child created for `owner`.
    pub(crate) fn created(&self, owner: &str, uid: String) {
        let mut map = self.lock();
        let p = Self::entry(&mut map, owner);
        p.adds.insert(uid);
        p.since = Instant::now();
    }

    /// Records a child of `owner` being deleted.
    pub(crate) fn deleting(&self, owner: &str, uid: String) {
        let mut map = self.lock();
        let p = Self::entry(&mut map, owner);
        p.deletes.insert(uid);
        p.since = Instant::now();
    }

    /// A deletion request that failed: the child stays.
    pub(crate) fn delete_failed(&self, owner: &str, uid: &str) {
        if let Some(p) = self.lock().get_mut(owner) {
            p.deletes.remove(uid);
        }
    }

    /// Takes note of a watch event on a child.
    pub(crate) fn observe<K: Resource>(&self, event: &watcher::Event<Arc<K>>) {
        let (obj, gone) = match event {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => (o, o.meta().deletion_timestamp.is_some()),
            watcher::Event::Delete(o) => (o, true),
            _ => return,
        };
        let (Some(owner), Some(uid)) = (controller_uid(obj.meta()), obj.meta().uid.as_deref()) else {
            return;
        };
        let mut map = self.lock();
        if let Some(p) = map.get_mut(owner) {
            p.adds.remove(uid);
            if gone {
                p.deletes.remove(uid);
            }
            if p.adds.is_empty() && p.deletes.is_empty() {
                map.remove(owner);
            }
        }
    }

    /// The creations and deletions of `owner`'s children not yet in `cached` (the uids
    /// the cache holds, with whether each is being deleted: see [`cache_state`]).
    pub(crate) fn outstanding(
        &self,
        owner: &str,
        cached: &HashMap<String, bool>,
    ) -> (HashSet<String>, HashSet<String>) {
        let mut map = self.lock();
        let Some(p) = map.get_mut(owner) else {
            return Default::default();
        };
        if p.since.elapsed() > EXPECTATION_TTL {
            tracing::warn!(
                owner,
                adds = p.adds.len(),
                deletes = p.deletes.len(),
                "expected changes never seen; forgetting them"
            );
            map.remove(owner);
            return Default::default();
        }
        // The cache may show a change before it was recorded here.
        p.adds.retain(|uid| !cached.contains_key(uid));
        p.deletes.retain(|uid| cached.get(uid) == Some(&false));
        let out = (p.adds.clone(), p.deletes.clone());
        if p.adds.is_empty() && p.deletes.is_empty() {
            map.remove(owner);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn pod(uid: &str, owner: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(uid.into()),
                uid: Some(uid.into()),
                owner_references: owner.map(|o| {
                    vec![OwnerReference {
                        uid: o.into(),
                        controller: Some(true),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn names(v: Vec<Arc<Pod>>) -> Vec<String> {
        let mut n: Vec<String> = v.iter().map(|p| p.name_any()).collect();
        n.sort();
        n
    }

    #[test]
    fn owner_index_follows_applies_deletes_owner_changes_and_relists() {
        let index = OwnerIndex::<Pod>::new();
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(Arc::new(pod("a", Some("rs1")))));
        index.apply(&watcher::Event::InitApply(Arc::new(pod("b", Some("rs1")))));
        index.apply(&watcher::Event::InitApply(Arc::new(pod("c", None))));
        assert!(index.owned_by("rs1").is_empty(), "a relist shows only when done");
        index.apply(&watcher::Event::InitDone);
        assert!(*index.ready.borrow());
        assert_eq!(names(index.owned_by("rs1")), ["a", "b"]);

        index.apply(&watcher::Event::Apply(Arc::new(pod("b", Some("rs2")))));
        assert_eq!(names(index.owned_by("rs1")), ["a"]);
        assert_eq!(names(index.owned_by("rs2")), ["b"]);
        index.apply(&watcher::Event::Delete(Arc::new(pod("a", Some("rs1")))));
        assert!(index.owned_by("rs1").is_empty());

        // A relist replaces everything: "b" vanished while the watch was down.
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(Arc::new(pod("d", Some("rs1")))));
        index.apply(&watcher::Event::InitDone);
        assert_eq!(names(index.owned_by("rs1")), ["d"]);
        assert!(index.owned_by("rs2").is_empty());
    }

    #[test]
    fn orphans_are_kept_by_namespace_and_leave_when_adopted_or_deleted() {
        let in_ns = |mut p: Pod, ns: &str| {
            p.metadata.namespace = Some(ns.into());
            p
        };
        let index = OwnerIndex::<Pod>::new();
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(Arc::new(in_ns(pod("a", None), "ns1"))));
        index.apply(&watcher::Event::InitApply(Arc::new(in_ns(pod("b", None), "ns2"))));
        index.apply(&watcher::Event::InitApply(Arc::new(in_ns(
            pod("c", Some("rs1")),
            "ns1",
        ))));
        index.apply(&watcher::Event::InitDone);
        assert_eq!(names(index.orphans_in("ns1")), ["a"]);
        assert_eq!(names(index.orphans_in("ns2")), ["b"]);

        // Adopted: an owned child, no longer an orphan; released: the other way round.
        index.apply(&watcher::Event::Apply(Arc::new(in_ns(pod("a", Some("rs1")), "ns1"))));
        assert!(index.orphans_in("ns1").is_empty());
        assert_eq!(names(index.owned_by("rs1")), ["a", "c"]);
        index.apply(&watcher::Event::Apply(Arc::new(in_ns(pod("c", None), "ns1"))));
        assert_eq!(names(index.orphans_in("ns1")), ["c"]);
        assert_eq!(names(index.owned_by("rs1")), ["a"]);
        index.apply(&watcher::Event::Delete(Arc::new(in_ns(pod("c", None), "ns1"))));
        assert!(index.orphans_in("ns1").is_empty());

        // A relist drops orphans that vanished meanwhile.
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(Arc::new(in_ns(pod("d", None), "ns1"))));
        index.apply(&watcher::Event::InitDone);
        assert_eq!(names(index.orphans_in("ns1")), ["d"]);
        assert!(index.orphans_in("ns2").is_empty());
    }

    #[test]
    fn expectations_count_until_the_cache_catches_up() {
        let e = Expectations::default();
        e.created("rs", "p1".into());
        e.created("rs", "p2".into());
        e.deleting("rs", "p0".into());
        let cached: HashMap<String, bool> = [("p0".to_string(), false)].into();
        let (adds, deletes) = e.outstanding("rs", &cached);
        assert_eq!(adds.len(), 2);
        assert_eq!(deletes.len(), 1);

        // A watch event seen for p1, and the cache showing p2 and p0 terminating.
        e.observe(&watcher::Event::Apply(Arc::new(pod("p1", Some("rs")))));
        let cached: HashMap<String, bool> = [("p0".to_string(), true), ("p2".to_string(), false)].into();
        let (adds, deletes) = e.outstanding("rs", &cached);
        assert!(adds.is_empty() && deletes.is_empty());
        assert!(e.lock().is_empty(), "a satisfied owner is forgotten");

        e.deleting("rs", "p3".into());
        e.delete_failed("rs", "p3");
        let (_, deletes) = e.outstanding("rs", &[("p3".to_string(), false)].into());
        assert!(deletes.is_empty());
    }
}
