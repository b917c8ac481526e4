//! The watch cache, one per resource, as kube-apiserver's cacher: an in-memory, ordered
//! index of the resource's objects; lists and watch starts are served from it at a
//! consistent revision, and each change is decoded once and fanned out to every watcher.
//! One store watch feeds them all: a dispatcher routes each change to its resource's
//! cache, so a write wakes one task, not one per resource.
//!
//! The index is a persistent ordered map (`imbl::OrdMap`), so taking a snapshot is O(1):
//! a paged list pins the snapshot of its first page, and its continue token (carrying that
//! revision) pages through exactly that view, however the resource changes meanwhile. A
//! token whose snapshot has been let go answers 410 Expired with a token that continues
//! from the current state instead.
//!
//! Consistent reads ("the newest state") work as in Kubernetes 1.31+: the store confirms
//! the revision a linearizable read must reflect, and the cache waits until it has
//! applied that revision. Every applied store entry reaches the dispatcher, with or
//! without events, so the caches' revision keeps up with the store's.

mod raw;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use base64::Engine;
use imbl::OrdMap;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use super::error::ApiError;
use super::registry::{ResourceInfo, RESOURCES};
use super::selectors::{field_text, labels_of, FieldSelector, LabelSelector};
use crate::store::{Event, EventKind, KeyValue, Store, StoreError};

/// Events kept for watches that start from an older revision.
const HISTORY: usize = 10_000;
/// Messages a watcher may fall behind before it is ended (and relists).
const CHANNEL: usize = 16_384;
/// How long a paged list's snapshot stays available to its continue tokens (etcd's
/// default compaction interval, which bounds kube-apiserver's tokens the same way).
const SNAPSHOT_TTL: Duration = Duration::from_secs(300);
/// Snapshots kept at most, newest first.
const SNAPSHOTS: usize = 64;
/// How long a read waits for the cache to reach the revision it must reflect.
const WAIT_FOR_REVISION: Duration = Duration::from_secs(3);
/// How often watchers learn the cache's progress when nothing they watch changes.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The fields every kind lets clients select on.
const SELECTABLE: &[&str] = &["metadata.name", "metadata.namespace"];
/// A pod's selectable fields.
const POD_SELECTABLE: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];
/// An Event's selectable fields.
const EVENT_SELECTABLE: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "type",
    "reason",
    "source",
    "reportingComponent",
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
];

/// The fields Kubernetes lets clients select on for `res` (its per-kind field
/// selectors), read once per object version; other paths are read from the JSON when
/// asked for. Only these are read: looking up every kind's fields in every object was a
/// visible share of each write's cost.
fn selectable(res: &ResourceInfo) -> &'static [&'static str] {
    match (res.group, res.plural) {
        ("", "pods") => POD_SELECTABLE,
        ("", "events") | ("events.k8s.io", "events") => EVENT_SELECTABLE,
        ("", "nodes") => &["metadata.name", "metadata.namespace", "spec.unschedulable"],
        ("", "namespaces") => &["metadata.name", "metadata.namespace", "status.phase"],
        ("", "secrets") => &["metadata.name", "metadata.namespace", "type"],
        ("", "replicationcontrollers") | ("apps", "replicasets") => {
            &["metadata.name", "metadata.namespace", "status.replicas"]
        }
        ("batch", "jobs") => &["metadata.name", "metadata.namespace", "status.successful"],
        _ => SELECTABLE,
    }
}

/// One object as cached: serialized once, with what filters read taken out of it. The
/// JSON is what every response shares; the decoded form is not kept (it costs ten times
/// the bytes) and is rebuilt for the few answers that need it (tables, metadata).
#[derive(Debug)]
pub struct CachedObject {
    /// Its store key.
    pub key: String,
    /// The revision of its last write (its resourceVersion).
    pub revision: u64,
    /// The object as JSON, with its resourceVersion.
    pub json: Bytes,
    /// Its namespace, if namespaced.
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    labels: BTreeMap<String, String>,
    /// The fields read ahead for field selectors ([`selectable`]).
    selectable: &'static [&'static str],
    /// Values of the `selectable` fields the object has.
    fields: Vec<(&'static str, String)>,
    /// Whether it carries a deletionTimestamp (it is being deleted).
    deleting: bool,
}

impl CachedObject {
    /// Decodes a stored value of a kind whose selectable fields are `selectable`: reading
    /// only what the cache indexes when it can ([`raw`]), decoding all of it otherwise.
    pub fn decode(kv: &KeyValue, selectable: &'static [&'static str]) -> Result<Self, ApiError> {
        let read = match raw::read(&kv.value, kv.mod_revision, selectable) {
            Some(read) => read,
            None => read_value(kv, selectable)?,
        };
        Ok(CachedObject {
            key: kv.key.clone(),
            revision: kv.mod_revision,
            json: Bytes::from(read.json),
            namespace: read.namespace,
            name: read.name,
            labels: read.labels,
            selectable,
            fields: read.fields,
            deleting: read.deleting,
        })
    }

    /// Whether it is being deleted (it has a deletionTimestamp).
    pub fn deleting(&self) -> bool {
        self.deleting
    }

    /// The object, decoded from its JSON.
    pub fn value(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(&self.json).map_err(|e| ApiError::Internal(format!("cached {}: {e}", self.key)))
    }

    /// The object as `PartialObjectMetadata` JSON (for metadata-only clients such as the
    /// garbage collector), the metadata's text copied as it is and the rest only skipped
    /// over: a metadata watch (the garbage collector's, on every kind) sends one per write.
    pub fn partial_metadata_json(&self) -> Result<Vec<u8>, ApiError> {
        #[derive(serde::Deserialize)]
        struct MetadataOnly<'a> {
            #[serde(borrow)]
            metadata: Option<&'a serde_json::value::RawValue>,
        }
        let only: MetadataOnly =
            serde_json::from_slice(&self.json).map_err(|e| ApiError::Internal(format!("cached {}: {e}", self.key)))?;
        let metadata = only.metadata.map_or("{}", |m| m.get());
        let head = br#"{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":"#;
        let mut out = Vec::with_capacity(head.len() + metadata.len() + 1);
        out.extend_from_slice(head);
        out.extend_from_slice(metadata.as_bytes());
        out.push(b'}');
        Ok(out)
    }

    /// The text of a field for a field selector ("" when absent).
    fn field(&self, path: &str) -> String {
        if self.selectable.contains(&path) {
            return self
                .fields
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
        }
        self.value().map(|v| field_text(&v, path)).unwrap_or_default()
    }
}

/// What the cache keeps of a stored value, decoded in full and serialized again with its
/// resourceVersion: for what [`raw::read`] leaves to it.
fn read_value(kv: &KeyValue, selectable: &'static [&'static str]) -> Result<raw::Read, ApiError> {
    let value = super::objects::decode(kv)?;
    let json = serde_json::to_vec(&value).map_err(|e| ApiError::Internal(e.to_string()))?;
    let fields = selectable
        .iter()
        .map(|path| (*path, field_text(&value, path)))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let (name, namespace) = super::admission::object_name(&value);
    Ok(raw::Read {
        json,
        name,
        namespace,
        labels: labels_of(&value),
        fields,
        deleting: super::objects::being_deleted(&value),
    })
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed (the object as it last was, at the deletion's revision).
    Deleted,
}

impl EventType {
    /// The watch event type's name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as every watcher of the resource sees it.
#[derive(Debug)]
pub struct CacheEvent {
    /// The revision of the change.
    pub revision: u64,
    /// Created, changed or removed.
    pub kind: EventType,
    /// The object after the change (before it, for a removal).
    pub object: Arc<CachedObject>,
    /// The object before the change, if it existed: a filtered watch needs it to see an
    /// object enter or leave its filter.
    pub prev: Option<Arc<CachedObject>>,
}

/// What a cache sends its watchers.
#[derive(Debug, Clone)]
pub enum CacheMessage {
    /// A change.
    Event(Arc<CacheEvent>),
    /// The cache has everything up to this revision.
    Progress(u64),
    /// The cache was rebuilt (after a store snapshot install): watchers must relist.
    Reset,
}

/// Which objects a request is about.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this namespace (for a namespaced path).
    pub namespace: Option<String>,
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
}

impl Filter {
    /// Whether `obj` passes the filter.
    pub fn matches(&self, obj: &CachedObject) -> bool {
        if self.namespace.is_some() && obj.namespace != self.namespace {
            return false;
        }
        self.labels.matches(&obj.labels) && (self.fields.is_empty() || self.fields.matches_by(|path| obj.field(path)))
    }
}

/// The objects of one list page.
#[derive(Debug)]
pub struct Page {
    /// The items, in key order.
    pub items: Vec<Arc<CachedObject>>,
    /// The revision the page (and the whole paged list) is consistent at.
    pub revision: u64,
    /// The token for the next page, if more remain.
    pub continue_token: Option<String>,
}

/// Which revision a read must reflect (`resourceVersion`, `resourceVersionMatch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAt {
    /// The newest state: a linearizable read (no resourceVersion).
    Newest,
    /// Whatever the cache has (`resourceVersion=0`).
    Any,
    /// At least this revision (`resourceVersionMatch=NotOlderThan`, the default).
    NotOlderThan(u64),
    /// Exactly this revision (`resourceVersionMatch=Exact`).
    Exact(u64),
}

struct Snapshot {
    objects: OrdMap<String, Arc<CachedObject>>,
    taken: Instant,
}

struct State {
    objects: OrdMap<String, Arc<CachedObject>>,
    revision: u64,
    history: VecDeque<Arc<CacheEvent>>,
    /// Every change after `floor` is in `history`.
    floor: u64,
    snapshots: BTreeMap<u64, Snapshot>,
}

/// The cache of one resource.
pub struct Cacher {
    res: &'static ResourceInfo,
    state: RwLock<State>,
    tx: broadcast::Sender<CacheMessage>,
    /// The store revision every cache has applied (0 until the first fill): the
    /// dispatcher publishes it after applying an entry's changes to their caches.
    progress: watch::Receiver<u64>,
}

/// A consistent start for a watch: the objects at `revision` and every change after it.
pub struct WatchStart {
    /// Objects to send as ADDED first (empty when the watch starts from a revision).
    pub initial: Vec<Arc<CachedObject>>,
    /// Changes after `revision` already in the cache's history.
    pub backlog: VecDeque<Arc<CacheEvent>>,
    /// The revision the watch starts at.
    pub revision: u64,
    /// Later messages.
    pub rx: broadcast::Receiver<CacheMessage>,
}

fn read_lock<T>(lock: &RwLock<T>) -> Result<std::sync::RwLockReadGuard<'_, T>, ApiError> {
    lock.read()
        .map_err(|_| ApiError::Internal("watch cache lock poisoned".into()))
}

fn write_lock<T>(lock: &RwLock<T>) -> Result<std::sync::RwLockWriteGuard<'_, T>, ApiError> {
    lock.write()
        .map_err(|_| ApiError::Internal("watch cache lock poisoned".into()))
}

/// A continue token, as Kubernetes encodes it: base64 of `{"v","rv","start"}`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Token {
    v: String,
    rv: u64,
    start: String,
}

fn encode_token(rv: u64, start: &str) -> String {
    let token = Token {
        v: "meta.k8s.io/v1".into(),
        rv,
        start: start.to_string(),
    };
    let json = serde_json::to_vec(&token).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE.encode(json)
}

fn decode_token(token: &str) -> Result<Token, ApiError> {
    let bad = || ApiError::BadRequest(format!("continue key is not valid: {token}"));
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(token))
        .map_err(|_| bad())?;
    serde_json::from_slice(&raw).map_err(|_| bad())
}

impl Cacher {
    fn new(res: &'static ResourceInfo, progress: watch::Receiver<u64>) -> Self {
        let (tx, _) = broadcast::channel(CHANNEL);
        Cacher {
            res,
            state: RwLock::new(State {
                objects: OrdMap::new(),
                revision: 0,
                history: VecDeque::new(),
                floor: 0,
                snapshots: BTreeMap::new(),
            }),
            tx,
            progress,
        }
    }

    /// The resource cached.
    pub fn resource(&self) -> &'static ResourceInfo {
        self.res
    }

    /// The revision the cache has applied.
    pub fn revision(&self) -> u64 {
        let progress = *self.progress.borrow();
        read_lock(&self.state).map_or(progress, |s| s.revision.max(progress))
    }

    /// The revision a view of `state` is at. `progress` must be read before the lock is
    /// taken: everything up to it is then in `state`, which may also hold later changes
    /// of this resource (up to `state.revision`); in between, nothing of it changed.
    fn current(progress: u64, state: &State) -> u64 {
        progress.max(state.revision)
    }

    /// Waits until the cache has applied `revision` (or times out, as kube-apiserver
    /// does with "Too large resource version").
    pub async fn wait_for(&self, revision: u64) -> Result<(), ApiError> {
        let mut rx = self.progress.clone();
        let reached = tokio::time::timeout(WAIT_FOR_REVISION, rx.wait_for(|r| *r >= revision)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ApiError::Unavailable("the watch cache stopped".into())),
            Err(_) => Err(ApiError::Timeout(format!(
                "Too large resource version: {revision}, current: {}",
                self.revision()
            ))),
        }
    }

    /// Brings the cache to the revision a read must reflect.
    pub async fn prepare(&self, store: &Store, at: ReadAt) -> Result<(), ApiError> {
        match at {
            ReadAt::Newest => {
                let rev = store.linearizable_revision().await?;
                self.wait_for(rev).await
            }
            // Even "any" waits for the first fill: an empty cache is not a state.
            ReadAt::Any => self.wait_for(1).await,
            ReadAt::NotOlderThan(rev) | ReadAt::Exact(rev) => self.wait_for(rev.max(1)).await,
        }
    }

    /// The object at store key `key` as the cache has it now (after `prepare`): possibly
    /// older than the store's, so a write that starts from it must be able to tell.
    pub fn get(&self, key: &str) -> Result<Option<Arc<CachedObject>>, ApiError> {
        Ok(read_lock(&self.state)?.objects.get(key).cloned())
    }

    /// One page of the objects passing `filter`, after `prepare`.
    pub fn list(
        &self,
        filter: &Filter,
        limit: Option<usize>,
        continue_token: Option<&str>,
        at: ReadAt,
    ) -> Result<Page, ApiError> {
        let (objects, revision, start) = {
            let progress = *self.progress.borrow();
            let mut state = write_lock(&self.state)?;
            let current = Self::current(progress, &state);
            prune_snapshots(&mut state);
            match continue_token {
                Some(token) => {
                    let token = decode_token(token)?;
                    let objects = if token.rv == current {
                        Some(state.objects.clone())
                    } else {
                        state.snapshots.get(&token.rv).map(|s| s.objects.clone())
                    };
                    match objects {
                        Some(objects) => (objects, token.rv, Some(token.start)),
                        None => {
                            return Err(ApiError::ContinueExpired {
                                token: encode_token(current, &token.start),
                            })
                        }
                    }
                }
                None => match at {
                    ReadAt::Exact(rev) if rev != current => match state.snapshots.get(&rev) {
                        Some(s) => (s.objects.clone(), rev, None),
                        None => {
                            return Err(ApiError::Expired(format!(
                                "too old resource version: {rev} ({current})"
                            )))
                        }
                    },
                    _ => (state.objects.clone(), current, None),
                },
            }
        };
        let prefix = self.res.prefix(filter.namespace.as_deref());
        let lower = match &start {
            Some(s) => {
                if !s.starts_with(&prefix) {
                    return Err(ApiError::BadRequest("continue key is not valid: wrong resource".into()));
                }
                Bound::Excluded(s.clone())
            }
            None => Bound::Included(prefix.clone()),
        };
        let mut items = Vec::new();
        let mut last_key = None;
        let mut more = false;
        for (key, obj) in objects.range::<_, String>((lower, Bound::Unbounded)) {
            if !key.starts_with(&prefix) {
                break;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                more = true;
                break;
            }
            if filter.matches(obj) {
                items.push(obj.clone());
            }
            last_key = Some(key.clone());
        }
        let continue_token = match (more, last_key) {
            (true, Some(key)) => {
                let mut state = write_lock(&self.state)?;
                state.snapshots.entry(revision).or_insert(Snapshot {
                    objects,
                    taken: Instant::now(),
                });
                prune_snapshots(&mut state);
                Some(encode_token(revision, &key))
            }
            _ => None,
        };
        Ok(Page {
            items,
            revision,
            continue_token,
        })
    }

    /// Starts a watch, after `prepare`: from `from` (changes after it), or, when `from` is
    /// `None`, from the current objects (sent as ADDED) and every change after them.
    pub fn watch(&self, from: Option<u64>, filter: &Filter) -> Result<WatchStart, ApiError> {
        let progress = *self.progress.borrow();
        let state = read_lock(&self.state)?;
        let current = Self::current(progress, &state);
        let rx = self.tx.subscribe();
        match from {
            None => {
                let prefix = self.res.prefix(filter.namespace.as_deref());
                let initial = state
                    .objects
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .filter(|(_, o)| filter.matches(o))
                    .map(|(_, o)| o.clone())
                    .collect();
                Ok(WatchStart {
                    initial,
                    backlog: VecDeque::new(),
                    revision: current,
                    rx,
                })
            }
            Some(rev) => {
                if rev < state.floor {
                    return Err(ApiError::Expired(format!(
                        "too old resource version: {rev} ({})",
                        state.floor
                    )));
                }
                let backlog = state.history.iter().filter(|e| e.revision > rev).cloned().collect();
                Ok(WatchStart {
                    initial: Vec::new(),
                    backlog,
                    revision: rev,
                    rx,
                })
            }
        }
    }

    /// Replaces the whole content (first fill, or a rebuild when the store can no longer
    /// replay what the dispatcher missed).
    fn fill(&self, kvs: &[KeyValue], revision: u64) -> Result<(), ApiError> {
        let mut objects = OrdMap::new();
        for kv in kvs {
            objects.insert(
                kv.key.clone(),
                Arc::new(CachedObject::decode(kv, selectable(self.res))?),
            );
        }
        let rebuilt = {
            let mut state = write_lock(&self.state)?;
            let rebuilt = state.revision != 0;
            state.objects = objects;
            state.revision = revision;
            state.history.clear();
            state.floor = revision;
            state.snapshots.clear();
            rebuilt
        };
        if rebuilt {
            let _ = self.tx.send(CacheMessage::Reset);
        }
        Ok(())
    }

    /// Applies the changes of one store entry (at `revision`) to this resource.
    fn apply(&self, revision: u64, events: &[&Arc<Event>]) -> Result<(), ApiError> {
        // Decoded before the lock is taken: readers of the cache do not wait on it.
        let selectable = selectable(self.res);
        let objects = events
            .iter()
            .map(|ev| CachedObject::decode(&ev.kv, selectable).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let mut state = write_lock(&self.state)?;
        for (ev, object) in events.iter().zip(objects) {
            let prev = state.objects.get(&ev.kv.key).cloned();
            let kind = match (ev.kind, &prev) {
                (EventKind::Put, None) => EventType::Added,
                (EventKind::Put, Some(_)) => EventType::Modified,
                (EventKind::Delete, _) => EventType::Deleted,
            };
            match kind {
                EventType::Deleted => state.objects.remove(&ev.kv.key),
                _ => state.objects.insert(ev.kv.key.clone(), object.clone()),
            };
            let event = Arc::new(CacheEvent {
                revision,
                kind,
                object,
                prev,
            });
            state.history.push_back(event.clone());
            // Sent under the lock, so a watch start sees each change exactly once:
            // either in the history it copies or on the channel it subscribed to.
            let _ = self.tx.send(CacheMessage::Event(event));
        }
        while state.history.len() > HISTORY {
            if let Some(old) = state.history.pop_front() {
                state.floor = old.revision;
            }
        }
        state.revision = revision;
        Ok(())
    }

    /// Tells this resource's watchers how far the cache has got (for their bookmarks).
    fn tell_progress(&self, revision: u64) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(CacheMessage::Progress(revision));
        }
    }
}

fn prune_snapshots(state: &mut State) {
    state.snapshots.retain(|_, s| s.taken.elapsed() < SNAPSHOT_TTL);
    while state.snapshots.len() > SNAPSHOTS {
        let Some(oldest) = state.snapshots.keys().next().copied() else {
            break;
        };
        state.snapshots.remove(&oldest);
    }
}

/// The caches of every served resource.
pub struct Caches {
    by_resource: HashMap<(&'static str, &'static str), Arc<Cacher>>,
}

/// The part of a store key that names its resource: `/registry/<group>/<plural>/`.
fn resource_prefix(key: &str) -> Option<&str> {
    let end = key.match_indices('/').nth(3)?.0;
    Some(&key[..=end])
}

/// Routes the store's changes to the caches of their resources.
struct Dispatcher {
    by_prefix: HashMap<String, Arc<Cacher>>,
    progress: watch::Sender<u64>,
}

impl Dispatcher {
    /// The prefix (the `by_prefix` key) of the cache a store key belongs to, if any.
    fn prefix_of(&self, key: &str) -> Option<&str> {
        let (prefix, _) = self.by_prefix.get_key_value(resource_prefix(key)?)?;
        Some(prefix.as_str())
    }

    /// Fills every cache from one consistent read of the store; returns its revision.
    async fn fill(&self, store: &Store) -> Result<u64, ApiError> {
        let read = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.snapshot_local(REGISTRY)).await
        };
        let (kvs, revision) = read.map_err(|e| ApiError::Internal(e.to_string()))??;
        let mut by_cache: HashMap<&str, Vec<KeyValue>> = HashMap::new();
        for kv in kvs {
            if let Some(prefix) = self.prefix_of(&kv.key) {
                by_cache.entry(prefix).or_default().push(kv);
            }
        }
        for (prefix, cache) in &self.by_prefix {
            cache.fill(
                by_cache.get(prefix.as_str()).map(Vec::as_slice).unwrap_or_default(),
                revision,
            )?;
        }
        self.progress.send_replace(revision);
        Ok(revision)
    }

    /// Applies one store entry to the caches it concerns, then publishes the revision.
    fn apply(&self, watched: &crate::store::Watched) -> Result<(), ApiError> {
        let mut by_cache: HashMap<&str, Vec<&Arc<Event>>> = HashMap::new();
        for ev in &watched.events {
            if let Some(prefix) = self.prefix_of(&ev.kv.key) {
                by_cache.entry(prefix).or_default().push(ev);
            }
        }
        for (prefix, events) in by_cache {
            if let Some(cache) = self.by_prefix.get(prefix) {
                cache.apply(watched.revision, &events)?;
            }
        }
        self.progress.send_replace(watched.revision);
        Ok(())
    }

    /// Fills the caches and follows the store until `shutdown`; fills them anew whenever
    /// the store can no longer replay what was missed.
    async fn run(self, store: Store, mut shutdown: watch::Receiver<bool>) {
        loop {
            let revision = match self.fill(&store).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "watch cache fill failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            };
            let mut stream = match store.watch(REGISTRY, revision) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "watch cache could not follow the store");
                    continue;
                }
            };
            let mut told = Instant::now();
            loop {
                let item = tokio::select! {
                    item = stream.next() => item,
                    _ = shutdown.changed() => return,
                };
                match item {
                    None => return,
                    Some(Ok(watched)) => {
                        if let Err(e) = self.apply(&watched) {
                            tracing::warn!(error = %e, "watch cache rebuilt");
                            break;
                        }
                        if told.elapsed() >= PROGRESS_EVERY {
                            told = Instant::now();
                            for cache in self.by_prefix.values() {
                                cache.tell_progress(watched.revision);
                            }
                        }
                    }
                    Some(Err(StoreError::Expired { .. })) => {
                        tracing::info!("watch cache fell behind the store; filling it anew");
                        break;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "watch cache rebuilt");
                        break;
                    }
                }
            }
        }
    }
}

/// Where every served object's key starts.
const REGISTRY: &str = "/registry/";

impl Caches {
    /// Starts the caches of every resource, fed by one store watch that runs until
    /// `shutdown` turns true.
    pub fn start(store: &Store, shutdown: watch::Receiver<bool>) -> Arc<Caches> {
        let (progress, progress_rx) = watch::channel(0);
        let mut by_resource = HashMap::new();
        let mut by_prefix = HashMap::new();
        for res in RESOURCES {
            let cacher = Arc::new(Cacher::new(res, progress_rx.clone()));
            by_prefix.insert(res.prefix(None), cacher.clone());
            by_resource.insert((res.group, res.plural), cacher);
        }
        let dispatcher = Dispatcher { by_prefix, progress };
        tokio::spawn(dispatcher.run(store.clone(), shutdown));
        Arc::new(Caches { by_resource })
    }

    /// The cache of `res`.
    pub fn get(&self, res: &ResourceInfo) -> Result<&Arc<Cacher>, ApiError> {
        self.by_resource
            .get(&(res.group, res.plural))
            .ok_or_else(|| ApiError::Internal(format!("no watch cache for {}", res.plural)))
    }
}

/// A JSON watch event line, built from the object's shared JSON without re-serializing it.
pub fn event_line(kind: &str, object_json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(object_json.len() + 32);
    out.extend_from_slice(br#"{"type":""#);
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(br#"","object":"#);
    out.extend_from_slice(object_json);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

/// A BOOKMARK event for `res` at `revision` (marking the end of the initial events when
/// `initial_end`).
pub fn bookmark(res: &ResourceInfo, revision: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": revision.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let obj = json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": meta});
    event_line("BOOKMARK", obj.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let t = encode_token(42, "/registry/core/configmaps/default/a");
        let d = decode_token(&t).unwrap();
        assert_eq!((d.rv, d.start.as_str()), (42, "/registry/core/configmaps/default/a"));
        assert!(decode_token("not a token").is_err());
    }

    #[test]
    fn partial_metadata_copies_the_metadata_text() {
        let object = |value: Value| {
            let kv = KeyValue {
                key: "/registry/core/configmaps/default/c".into(),
                mod_revision: 7,
                lease: 0,
                value: serde_json::to_vec(&value).unwrap(),
            };
            CachedObject::decode(&kv, &[]).unwrap()
        };
        for value in [
            json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"metadata": "not this"},
                "metadata": {"name": "c", "namespace": "default", "labels": {"a": "\"quoted\""}}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap"}),
        ] {
            let obj = object(value);
            let text: Value = serde_json::from_slice(&obj.partial_metadata_json().unwrap()).unwrap();
            assert_eq!(text, crate::api::table::partial_metadata(&obj.value().unwrap()));
        }
    }

    #[test]
    fn event_lines_embed_the_shared_json() {
        let line = event_line("ADDED", br#"{"a":1}"#);
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v, json!({"type": "ADDED", "object": {"a": 1}}));
    }
}
