//! ResourceQuota controller, as Kubernetes' `resourcequota-controller`: a quota's
//! `status.hard` mirrors its `spec.hard`, and `status.used` is counted for every resource
//! it limits, so admission can enforce it and `kubectl describe quota` shows Used/Hard.
//!
//! The API server's write path keeps `used` exact from then on: every create, removal
//! and finished pod settles its usage in the same transaction as the write (see
//! `api::quota`). This controller therefore writes `used` when a quota is new or its
//! hard limits change (counting the resources it did not track before), and repairs
//! drift: objects written before the API server knew the quota, or given back before
//! their usage was counted.
//!
//! Usage is read from watch-fed caches, one per kind a quota counts (started when the
//! first quota needs it), each keeping per-namespace totals updated on every event; a
//! cache event wakes the quotas of its namespace, and nothing is swept periodically. A
//! reconcile that finds the caches agreeing with the quota writes nothing and reads
//! nothing else.
//!
//! A count is written only after a recount that cannot be stale: the caches trail the
//! quota (whose `used` the write path has already charged), and a watch that reconnects
//! can trail it for seconds, so a count from them could lower `used` below what is
//! really there and let creates through. Before writing, the controller lists the counted
//! kinds in the namespace at a resourceVersion no older than the quota's, and writes with
//! the quota's resourceVersion as precondition: every charge before that revision is in
//! the list, and any charge after it makes the write a conflict. That list is made only
//! when a count is due (a new quota, changed limits, or a difference from the caches that
//! has lasted [`SETTLE`] with the quota unchanged), never on a reconcile that agrees.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ResourceQuota, ResourceQuotaStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kairn_client::trimmed::{self, Trimmed};
use kube::api::{ApiResource, DynamicObject, ListParams, VersionMatch};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use tokio::sync::{mpsc, watch};

use super::Error;
use crate::api::amount::{self, Amount, ResourceList};
use crate::api::quota::{self as q, ScopeRequirement, Subject};
use crate::api::registry::ResourceInfo;

/// How long a difference between a quota's `used` and the caches' count must last, with
/// the quota unchanged, before it is recounted (see the module docs): while writes go
/// on, the caches trail the quota and differ from it for a moment.
pub const SETTLE: Duration = Duration::from_secs(2);

/// How long a reconcile waits for a newly started cache's first list.
const FIRST_LIST: Duration = Duration::from_secs(10);

/// What every reconcile shares.
struct Context {
    client: kube::Client,
    /// One usage cache per counted kind, by `plural.group`.
    indices: Mutex<HashMap<String, Arc<UsageIndex>>>,
    /// Namespaces whose content changed: their quotas are reconciled.
    wake: mpsc::UnboundedSender<String>,
    shutdown: watch::Receiver<bool>,
    /// Quota uid -> (resourceVersion, since when) of a difference not yet written.
    drift: Mutex<HashMap<String, (String, Instant)>>,
}

/// Runs the controller until shutdown.
pub async fn run(client: kube::Client, shutdown: watch::Receiver<bool>) {
    let controller = Controller::new(Api::<ResourceQuota>::all(client.clone()), watcher::Config::default());
    let (wake, woken) = mpsc::unbounded_channel::<String>();
    let store = controller.store();
    let ctx = Arc::new(Context {
        client,
        indices: Mutex::new(HashMap::new()),
        wake,
        shutdown: shutdown.clone(),
        drift: Mutex::new(HashMap::new()),
    });
    let triggers = tokio_stream::wrappers::UnboundedReceiverStream::new(woken)
        .flat_map(move |ns| futures::stream::iter(quotas_in(&store.state(), &ns)));
    controller
        .reconcile_on(triggers)
        .graceful_shutdown_on(super::stopped(shutdown))
        .run(reconcile, super::retry_soon, ctx)
        .for_each(|r| async move { super::log_result("resourcequota", r) })
        .await;
}

/// The quotas (of `all`) in namespace `ns`.
fn quotas_in(all: &[Arc<ResourceQuota>], ns: &str) -> Vec<ObjectRef<ResourceQuota>> {
    all.iter()
        .filter(|q| q.metadata.namespace.as_deref() == Some(ns))
        .map(|q| ObjectRef::from_obj(q.as_ref()))
        .collect()
}

/// The usage of one kind's objects: per namespace, each object's [`Subject`] and their
/// total, kept up to date from watch events.
pub(crate) struct UsageIndex {
    res: &'static ResourceInfo,
    inner: RwLock<IndexInner>,
    ready: watch::Sender<bool>,
}

#[derive(Default)]
struct IndexInner {
    by_ns: HashMap<String, NsUsage>,
    /// Objects of a relist in progress: (namespace, uid, subject).
    relist: Option<Vec<(String, String, Subject)>>,
}

/// One namespace's objects of a kind.
#[derive(Default)]
struct NsUsage {
    items: HashMap<String, Subject>,
    total: ResourceList,
}

impl NsUsage {
    fn insert(&mut self, uid: String, subject: Subject) {
        if let Some(old) = self.items.remove(&uid) {
            self.total = amount::subtract(&self.total, &old.usage);
        }
        self.total = amount::add(&self.total, &subject.usage);
        self.total.retain(|_, v| !v.is_zero());
        self.items.insert(uid, subject);
    }

    fn remove(&mut self, uid: &str) {
        if let Some(old) = self.items.remove(uid) {
            self.total = amount::subtract(&self.total, &old.usage);
            self.total.retain(|_, v| !v.is_zero());
        }
    }
}

impl UsageIndex {
    /// An empty index of `res`; not ready until its first list is complete.
    pub(crate) fn new(res: &'static ResourceInfo) -> Self {
        UsageIndex {
            res,
            inner: RwLock::new(IndexInner::default()),
            ready: watch::Sender::new(false),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, IndexInner> {
        // Each change is one insert or remove: a poisoned lock still holds a usable map.
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, IndexInner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// What quota sees of a watched object: (namespace, uid, subject).
    fn subject(&self, obj: &DynamicObject) -> Option<(String, String, Subject)> {
        let ns = obj.metadata.namespace.clone()?;
        let uid = obj.metadata.uid.clone()?;
        let value = serde_json::to_value(obj).ok()?;
        Some((ns, uid, Subject::of(self.res, &value)))
    }

    /// Applies one watcher event; the namespaces whose usage it may change.
    pub(crate) fn apply(&self, event: &watcher::Event<DynamicObject>) -> Vec<String> {
        match event {
            watcher::Event::Apply(obj) => {
                let Some((ns, uid, subject)) = self.subject(obj) else {
                    return Vec::new();
                };
                self.write().by_ns.entry(ns.clone()).or_default().insert(uid, subject);
                vec![ns]
            }
            watcher::Event::Delete(obj) => {
                let (Some(ns), Some(uid)) = (obj.metadata.namespace.clone(), obj.metadata.uid.as_deref()) else {
                    return Vec::new();
                };
                let mut inner = self.write();
                if let Some(usage) = inner.by_ns.get_mut(&ns) {
                    usage.remove(uid);
                    if usage.items.is_empty() {
                        inner.by_ns.remove(&ns);
                    }
                }
                vec![ns]
            }
            watcher::Event::Init => {
                self.write().relist = Some(Vec::new());
                Vec::new()
            }
            watcher::Event::InitApply(obj) => {
                let subject = self.subject(obj);
                if let (Some(s), Some(buffer)) = (subject, self.write().relist.as_mut()) {
                    buffer.push(s);
                }
                Vec::new()
            }
            watcher::Event::InitDone => {
                let touched = {
                    let mut inner = self.write();
                    let objects = inner.relist.take().unwrap_or_default();
                    let mut by_ns: HashMap<String, NsUsage> = HashMap::new();
                    for (ns, uid, subject) in objects {
                        by_ns.entry(ns).or_default().insert(uid, subject);
                    }
                    let touched: BTreeSet<String> = inner.by_ns.keys().chain(by_ns.keys()).cloned().collect();
                    inner.by_ns = by_ns;
                    touched
                };
                self.ready.send_replace(true);
                touched.into_iter().collect()
            }
        }
    }

    /// The usage, in the names of `hard`, of the objects of `ns` that `scopes` select:
    /// the kept total when unscoped, else a sum over the namespace's objects.
    pub(crate) fn usage(&self, ns: &str, hard: &ResourceList, scopes: &[ScopeRequirement]) -> ResourceList {
        let inner = self.read();
        let Some(usage) = inner.by_ns.get(ns) else {
            return ResourceList::new();
        };
        if scopes.is_empty() {
            return amount::mask(&usage.total, hard.keys());
        }
        usage
            .items
            .values()
            .filter(|s| q::in_scope(scopes, s))
            .fold(ResourceList::new(), |sum, s| {
                amount::add(&sum, &amount::mask(&s.usage, hard.keys()))
            })
    }

    /// Waits until the first list has been seen whole.
    async fn ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }
}

/// How kube-rs addresses `res`.
fn api_resource(res: &ResourceInfo) -> ApiResource {
    ApiResource {
        group: res.group.into(),
        version: res.version.into(),
        api_version: res.api_version(),
        kind: res.kind.into(),
        plural: res.plural.into(),
    }
}

impl Context {
    /// The usage cache of `res`, started (watching every namespace) on first use.
    fn index(&self, res: &'static ResourceInfo) -> Arc<UsageIndex> {
        let mut indices = self.indices.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(index) = indices.get(&res.qualified_plural()) {
            return index.clone();
        }
        let index = Arc::new(UsageIndex::new(res));
        indices.insert(res.qualified_plural(), index.clone());
        // Without managedFields, which no quota reads (the pods' often a third of them).
        let api: Api<Trimmed<DynamicObject>> = Api::all_with(self.client.clone(), &api_resource(res));
        let (feed, wake, shutdown) = (index.clone(), self.wake.clone(), self.shutdown.clone());
        tracing::debug!(resource = %res.qualified_plural(), "quota usage cache started");
        tokio::spawn(async move {
            let events = trimmed::watch(api, watcher::Config::default()).default_backoff();
            let stop = super::stopped(shutdown);
            tokio::pin!(events, stop);
            loop {
                let event = tokio::select! {
                    event = events.next() => event,
                    _ = &mut stop => return,
                };
                match event {
                    Some(Ok(event)) => {
                        for ns in feed.apply(&event) {
                            // The controller is gone only at shutdown.
                            let _ = wake.send(ns);
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(resource = %feed.res.qualified_plural(), error = %e, "quota usage watch failed; retrying")
                    }
                    None => return,
                }
            }
        });
        index
    }
}

/// What a reconcile writes to a quota's status.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Status in step: nothing.
    Nothing,
    /// `status.hard` differs from the spec, or `used` lacks (or has extra) resources:
    /// write the spec's hard and this `used` (tracked entries as they are).
    Sync(ResourceList),
    /// The counted usage differs from `used` (written once it has lasted).
    Drift(ResourceList),
}

/// What to write, from the spec's `hard`, the status' `hard` and `used`, and the usage
/// the caches count.
pub fn plan(hard: &ResourceList, status_hard: &ResourceList, used: &ResourceList, counted: &ResourceList) -> Plan {
    let count = |k: &String| counted.get(k).copied().unwrap_or(Amount::ZERO);
    // (Lists compare by name and amount.)
    if hard != status_hard || !hard.keys().eq(used.keys()) {
        // What the write path already keeps stays; newly limited resources are counted.
        let next = hard
            .keys()
            .map(|k| {
                let tracked = status_hard.contains_key(k).then(|| used.get(k)).flatten();
                (k.clone(), tracked.copied().unwrap_or_else(|| count(k)))
            })
            .collect();
        return Plan::Sync(next);
    }
    let counted: ResourceList = hard.keys().map(|k| (k.clone(), count(k))).collect();
    if counted != *used {
        return Plan::Drift(counted);
    }
    Plan::Nothing
}

/// `list` as a typed `ResourceList`.
fn quantities(list: &ResourceList) -> BTreeMap<String, Quantity> {
    list.iter().map(|(k, v)| (k.clone(), Quantity(v.to_string()))).collect()
}

/// A typed `ResourceList` as amounts.
fn amounts(list: Option<&BTreeMap<String, Quantity>>) -> ResourceList {
    list.into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), Amount::parse(&v.0)?)))
        .collect()
}

async fn reconcile(quota: Arc<ResourceQuota>, ctx: Arc<Context>) -> Result<Action, Error> {
    if quota.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let (name, ns) = (quota.name_any(), quota.namespace().unwrap_or_default());
    let hard = amounts(quota.spec.as_ref().and_then(|s| s.hard.as_ref()));
    let spec = serde_json::to_value(&quota.spec).map_err(|e| Error::Malformed(e.to_string()))?;
    let scopes = q::scope_requirements(Some(&spec));
    // Every kind the limits count, cached and listed before anything is counted.
    let kinds: BTreeMap<String, &'static ResourceInfo> = hard
        .keys()
        .filter_map(|k| q::resource_for(k))
        .map(|r| (r.qualified_plural(), r))
        .collect();
    let mut counted = ResourceList::new();
    for res in kinds.values() {
        let index = ctx.index(res);
        if tokio::time::timeout(FIRST_LIST, index.ready()).await.is_err() {
            tracing::debug!(quota = %format!("{ns}/{name}"), resource = %res.qualified_plural(), "usage cache not listed yet");
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        counted = amount::add(&counted, &index.usage(&ns, &hard, &scopes));
    }
    let status = quota.status.clone().unwrap_or_default();
    let (status_hard, used) = (amounts(status.hard.as_ref()), amounts(status.used.as_ref()));
    let uid = quota.uid().unwrap_or_default();
    let rv = quota.resource_version().unwrap_or_default();
    match plan(&hard, &status_hard, &used, &counted) {
        Plan::Nothing => {
            ctx.forget_drift(&uid);
            return Ok(Action::await_change());
        }
        Plan::Sync(_) => {}
        Plan::Drift(_) => {
            let waited = ctx.drift_since(&uid, &rv);
            if waited < SETTLE {
                return Ok(Action::requeue(SETTLE - waited + Duration::from_millis(100)));
            }
        }
    }
    // A count is due: recount from a list no older than the quota.
    let kinds: Vec<&'static ResourceInfo> = kinds.into_values().collect();
    let recounted = ctx.recount(&ns, &hard, &scopes, &kinds, &rv).await?;
    let next = match plan(&hard, &status_hard, &used, &recounted) {
        Plan::Nothing => {
            // The caches were behind.
            ctx.forget_drift(&uid);
            return Ok(Action::await_change());
        }
        Plan::Sync(next) => next,
        Plan::Drift(next) => {
            tracing::info!(quota = %format!("{ns}/{name}"), used = %amount::pretty(&used),
                counted = %amount::pretty(&next), "quota usage drifted; correcting");
            next
        }
    };
    let api: Api<ResourceQuota> = Api::namespaced(ctx.client.clone(), &ns);
    // The cached resourceVersion rides along: a quota charged meanwhile is a conflict
    // and a retry, never a lost charge.
    let status = ResourceQuotaStatus {
        hard: Some(quantities(&hard)),
        used: Some(quantities(&next)),
    };
    super::write_status(&api, quota.as_ref(), |q| q.status = Some(status)).await?;
    ctx.forget_drift(&uid);
    tracing::debug!(quota = %format!("{ns}/{name}"), used = %amount::pretty(&next), "quota status written");
    Ok(Action::await_change())
}

impl Context {
    /// The usage, in the names of `hard`, of the objects of `kinds` in `ns` that `scopes`
    /// select, from a list at a resourceVersion no older than `rv` (the quota's).
    async fn recount(
        &self,
        ns: &str,
        hard: &ResourceList,
        scopes: &[ScopeRequirement],
        kinds: &[&'static ResourceInfo],
        rv: &str,
    ) -> Result<ResourceList, Error> {
        let params = ListParams {
            resource_version: Some(rv.to_string()),
            version_match: Some(VersionMatch::NotOlderThan),
            ..Default::default()
        };
        let mut total = ResourceList::new();
        for res in kinds {
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &api_resource(res));
            for obj in api.list(&params).await?.items {
                let value = serde_json::to_value(&obj).map_err(|e| Error::Malformed(e.to_string()))?;
                let subject = Subject::of(res, &value);
                if q::in_scope(scopes, &subject) {
                    total = amount::add(&total, &amount::mask(&subject.usage, hard.keys()));
                }
            }
        }
        Ok(total)
    }

    /// How long the quota with `uid` has differed from the count at resourceVersion `rv`
    /// (zero when first seen, or when the quota changed since).
    fn drift_since(&self, uid: &str, rv: &str) -> Duration {
        let mut drift = self.drift.lock().unwrap_or_else(|e| e.into_inner());
        match drift.get(uid) {
            Some((seen, since)) if seen == rv => since.elapsed(),
            _ => {
                drift.insert(uid.to_string(), (rv.to_string(), Instant::now()));
                Duration::ZERO
            }
        }
    }

    fn forget_drift(&self, uid: &str) {
        self.drift.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use kube::api::ObjectMeta;
    use serde_json::{json, Value};

    use super::*;
    use crate::api::registry::RESOURCES;

    fn list(v: Value) -> ResourceList {
        amount::from_json(Some(&v))
    }

    #[test]
    fn a_new_quota_is_counted_and_tracked_entries_are_kept() {
        let hard = list(json!({"pods": "5", "requests.cpu": "2"}));
        let counted = list(json!({"pods": "3", "requests.cpu": "1500m"}));
        // New: everything counted.
        assert_eq!(
            plan(&hard, &ResourceList::new(), &ResourceList::new(), &counted),
            Plan::Sync(counted.clone())
        );
        // A limit added: only it is counted; `pods` stays as the write path keeps it.
        let status_hard = list(json!({"pods": "5"}));
        let used = list(json!({"pods": "4"}));
        assert_eq!(
            plan(&hard, &status_hard, &used, &counted),
            Plan::Sync(list(json!({"pods": "4", "requests.cpu": "1500m"})))
        );
        // A limit changed, one removed.
        let hard2 = list(json!({"pods": "10"}));
        assert_eq!(
            plan(
                &hard2,
                &hard,
                &list(json!({"pods": "4", "requests.cpu": "1"})),
                &counted
            ),
            Plan::Sync(list(json!({"pods": "4"})))
        );
        // In step, or drifted.
        let used = list(json!({"pods": "3", "requests.cpu": "1500m"}));
        assert_eq!(plan(&hard, &hard, &used, &counted), Plan::Nothing);
        let zero = plan(&hard, &hard, &used, &ResourceList::new());
        assert_eq!(zero, Plan::Drift(list(json!({"pods": "0", "requests.cpu": "0"}))));
    }

    fn pod(uid: &str, ns: &str, cpu: &str, phase: &str) -> DynamicObject {
        let mut obj = DynamicObject::new(
            uid,
            &ApiResource {
                group: String::new(),
                version: "v1".into(),
                api_version: "v1".into(),
                kind: "Pod".into(),
                plural: "pods".into(),
            },
        );
        obj.metadata = ObjectMeta {
            name: Some(uid.into()),
            namespace: Some(ns.into()),
            uid: Some(uid.into()),
            ..Default::default()
        };
        obj.data = json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]},
            "status": {"phase": phase}});
        obj
    }

    #[test]
    fn the_index_keeps_namespace_totals_through_events_and_relists() {
        let res = RESOURCES.iter().find(|r| r.plural == "pods").unwrap();
        let index = UsageIndex::new(res);
        let hard = list(json!({"pods": "10", "requests.cpu": "10"}));
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(pod("a", "ns", "1", "Running")));
        index.apply(&watcher::Event::InitApply(pod("b", "other", "1", "Running")));
        assert!(
            index.usage("ns", &hard, &[]).is_empty(),
            "a relist shows only when done"
        );
        let touched = index.apply(&watcher::Event::InitDone);
        assert_eq!(touched, ["ns", "other"]);
        assert!(*index.ready.borrow());
        assert_eq!(amount::pretty(&index.usage("ns", &hard, &[])), "pods=1,requests.cpu=1");

        index.apply(&watcher::Event::Apply(pod("c", "ns", "500m", "Pending")));
        assert_eq!(
            amount::pretty(&index.usage("ns", &hard, &[])),
            "pods=2,requests.cpu=1500m"
        );
        // Finishing gives the compute back; deleting gives the rest.
        index.apply(&watcher::Event::Apply(pod("a", "ns", "1", "Succeeded")));
        assert_eq!(
            amount::pretty(&index.usage("ns", &hard, &[])),
            "pods=1,requests.cpu=500m"
        );
        assert_eq!(
            index.apply(&watcher::Event::Delete(pod("c", "ns", "500m", "Pending"))),
            ["ns"]
        );
        assert!(index.usage("ns", &hard, &[]).is_empty());

        let best_effort = vec![ScopeRequirement {
            scope: "NotBestEffort".into(),
            operator: "Exists".into(),
            values: vec![],
        }];
        assert_eq!(
            amount::pretty(&index.usage("other", &hard, &best_effort)),
            "pods=1,requests.cpu=1"
        );
        // A relist replaces everything.
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitDone);
        assert!(index.usage("other", &hard, &[]).is_empty());
    }

    #[test]
    fn a_namespace_wakes_only_its_quotas() {
        let quota = |ns: &str, name: &str| {
            Arc::new(ResourceQuota {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(ns.into()),
                    ..Default::default()
                },
                ..Default::default()
            })
        };
        let all = [quota("a", "q1"), quota("b", "q2"), quota("a", "q3")];
        let names: Vec<String> = quotas_in(&all, "a").into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["q1", "q3"]);
    }
}
