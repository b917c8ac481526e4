//! The live side of every plan: watch-fed caches (kube-runtime reflectors) of the objects
//! Applications manage, so that planning, drift detection and health read memory, never
//! a LIST per sync. Every change to a managed object also wakes its Application's
//! worker, which is how drift is noticed within a moment.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kairn_cluster::kinds::APP_LABEL;
use kube::api::DynamicObject;
use kube::discovery::ApiResource;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use crate::plan::Catalog;

/// One cached kind.
struct Kind {
    resource: ApiResource,
    store: Store<DynamicObject>,
}

/// Caches of every managed object (labelled `app.kairn.dev/name`) and of all pods (for
/// health: a Deployment whose pods crash-loop is Degraded).
#[derive(Clone)]
pub struct LiveCache {
    kinds: Arc<Vec<Kind>>,
    pods: Store<Pod>,
    changes: broadcast::Sender<String>,
}

impl LiveCache {
    /// Starts one reflector per manageable kind of `catalog` and one for pods; they run
    /// until `shutdown` turns true.
    pub fn start(client: &kube::Client, catalog: &Catalog, shutdown: watch::Receiver<bool>) -> Self {
        let (changes, _) = broadcast::channel(1024);
        let mut kinds = Vec::new();
        for (resource, _) in catalog.manageable() {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), resource);
            let writer = reflector::store::Writer::new(resource.clone());
            let store = writer.as_reader();
            let config = watcher::Config::default().labels(APP_LABEL);
            let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
            let tx = changes.clone();
            let kind = resource.kind.clone();
            tokio::spawn(run(
                stream.map(move |event| {
                    // Which Application an event concerns: its worker re-plans.
                    if let Ok(watcher::Event::Apply(obj) | watcher::Event::Delete(obj)) = &event {
                        if let Some(app) = obj.metadata.labels.as_ref().and_then(|l| l.get(APP_LABEL)) {
                            let _ = tx.send(app.clone());
                        }
                    }
                    event.map(|_| ()).map_err(|e| e.to_string())
                }),
                kind,
                shutdown.clone(),
            ));
            kinds.push(Kind {
                resource: resource.clone(),
                store,
            });
        }
        let (pods, writer) = reflector::store();
        let api: Api<Pod> = Api::all(client.clone());
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
        tokio::spawn(run(
            stream.map(|e| e.map(|_| ()).map_err(|e| e.to_string())),
            "Pod".into(),
            shutdown,
        ));
        LiveCache {
            kinds: Arc::new(kinds),
            pods,
            changes,
        }
    }

    /// Waits until every cache has its first full state.
    pub async fn ready(&self) {
        for kind in self.kinds.iter() {
            let _ = kind.store.wait_until_ready().await;
        }
        let _ = self.pods.wait_until_ready().await;
    }

    /// Names of Applications whose objects changed, as they change.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// Every live object labelled as owned by `app`, as JSON with apiVersion and kind.
    pub fn owned_by(&self, app: &str) -> Vec<Value> {
        let mut out = Vec::new();
        for kind in self.kinds.iter() {
            for obj in kind.store.state() {
                let owned = obj
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(APP_LABEL))
                    .is_some_and(|a| a == app);
                if owned {
                    out.push(to_json(&kind.resource, &obj));
                }
            }
        }
        out
    }

    /// The cached kind and object of `apiVersion`/`kind` at `namespace`/`name`.
    fn lookup(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<(&Kind, Arc<DynamicObject>)> {
        let k = self
            .kinds
            .iter()
            .find(|k| k.resource.api_version == api_version && k.resource.kind == kind)?;
        let mut key = ObjectRef::new_with(name, k.resource.clone());
        if let Some(ns) = namespace {
            key = key.within(ns);
        }
        Some((k, k.store.get(&key)?))
    }

    /// The managed object of `apiVersion`/`kind` at `namespace`/`name`, whichever
    /// Application owns it.
    pub fn get(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let (k, obj) = self.lookup(api_version, kind, namespace, name)?;
        Some(to_json(&k.resource, &obj))
    }

    /// The Application that manages the object of `apiVersion`/`kind` at
    /// `namespace`/`name`, if any manages it (no copy of the object is made).
    pub fn owner_of(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Option<String> {
        let (_, obj) = self.lookup(api_version, kind, namespace, name)?;
        obj.metadata.labels.as_ref()?.get(APP_LABEL).cloned()
    }

    /// Pods of `namespace` whose labels match every `match_labels` pair.
    pub fn pods(&self, namespace: &str, match_labels: &HashMap<String, String>) -> Vec<Arc<Pod>> {
        self.pods
            .state()
            .into_iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
            .filter(|p| {
                let labels = p.metadata.labels.as_ref();
                match_labels
                    .iter()
                    .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            })
            .collect()
    }
}

fn to_json(resource: &ApiResource, obj: &DynamicObject) -> Value {
    let mut value = serde_json::to_value(obj).unwrap_or(Value::Null);
    value["apiVersion"] = json!(resource.api_version);
    value["kind"] = json!(resource.kind);
    value
}

/// Drives one reflector until shutdown, logging (not failing on) watch errors: the
/// watcher's back-off retries them.
async fn run(
    stream: impl futures::Stream<Item = Result<(), String>>,
    kind: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut stream = std::pin::pin!(stream);
    loop {
        tokio::select! {
            item = stream.next() => match item {
                Some(Ok(())) => {}
                Some(Err(e)) => tracing::debug!(kind = %kind, error = %e, "watching managed objects"),
                None => return,
            },
            _ = shutdown.changed() => return,
        }
    }
}
