//! Namespace controller, as Kubernetes' `pkg/controller/namespace/deletion` does it: a
//! namespace with `deletionTimestamp` gets its content deleted (a `deletecollection` per
//! namespaced kind that still has live objects), its status conditions set
//! (`NamespaceDeletionContentFailure`, `NamespaceContentRemaining`,
//! `NamespaceFinalizersRemaining`, ...), and once nothing is left its `kubernetes`
//! finalizer removed through the `finalize` subresource, after which the server removes it.
//!
//! What a namespace holds is read from the garbage collector's graph, which counts it per
//! kind from the same metadata watchers and wakes this controller whenever a terminating
//! namespace's content changes: pods finishing their grace period, finalizers going. The
//! Namespaces themselves come from a reflector. The one read that is not a cache is a
//! `limit=1` list per kind just before finalizing, so that a watcher lagging behind cannot
//! let a namespace go with something still in it.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition, NamespaceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use serde_json::json;

use super::gc::{Kind, NamespaceContent, Queue, Shared};
use crate::api::resources::core::NAMESPACE_FINALIZER;

/// Concurrent namespace workers.
const WORKERS: usize = 2;

/// Why a namespace's deletion cannot finish yet (it is retried with back-off).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("api: {0}")]
    Api(#[from] kube::Error),
    /// Some kinds' content could not be deleted.
    #[error("failed to delete all resource types, {count} remaining: {message}")]
    ContentDeletion {
        /// Kinds that failed.
        count: usize,
        /// Their errors.
        message: String,
    },
    /// The cache said empty, the server still lists objects of this kind.
    #[error("{0} still has objects the cache has not seen")]
    Lagging(String),
}

/// Condition types the controller maintains, in Kubernetes' order, with their reason and
/// message when all is well.
const CONDITIONS: &[(&str, &str, &str)] = &[
    (
        "NamespaceDeletionDiscoveryFailure",
        "ResourcesDiscovered",
        "All resources successfully discovered",
    ),
    (
        "NamespaceDeletionGroupVersionParsingFailure",
        "ParsedGroupVersions",
        "All legacy kube types successfully parsed",
    ),
    (
        "NamespaceDeletionContentFailure",
        "ContentDeleted",
        "All content successfully deleted, may be waiting on finalization",
    ),
    (
        "NamespaceContentRemaining",
        "ContentRemoved",
        "All content successfully removed",
    ),
    (
        "NamespaceFinalizersRemaining",
        "ContentHasNoFinalizers",
        "All content-preserving finalizers finished",
    ),
];

/// A condition the controller wants: type, status, reason, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// Condition type.
    pub type_: &'static str,
    /// `True` when something is wrong or waiting.
    pub status: &'static str,
    /// Reason.
    pub reason: String,
    /// Message.
    pub message: String,
}

/// The conditions a namespace's deletion should show, from what it holds and the kinds
/// whose `deletecollection` failed, as Kubernetes words them.
pub fn wanted_conditions(content: &NamespaceContent, kinds: &[Kind], failures: &[String]) -> Vec<Wanted> {
    CONDITIONS
        .iter()
        .map(|(type_, ok_reason, ok_message)| {
            let problem = match *type_ {
                "NamespaceDeletionContentFailure" if !failures.is_empty() => {
                    let mut msgs = failures.to_vec();
                    msgs.sort();
                    Some((
                        "ContentDeletionFailed",
                        format!(
                            "Failed to delete all resource types, {} remaining: {}",
                            msgs.len(),
                            msgs.join(", ")
                        ),
                    ))
                }
                "NamespaceContentRemaining" if !content.is_empty() => {
                    let mut left: Vec<String> = content
                        .kinds
                        .iter()
                        .filter(|(_, c)| c.objects > 0)
                        .filter_map(|(k, c)| {
                            let kind = kinds.get(*k)?;
                            Some(format!(
                                "{} has {} resource instances",
                                kind.qualified_plural(),
                                c.objects
                            ))
                        })
                        .collect();
                    left.sort();
                    Some((
                        "SomeResourcesRemain",
                        format!("Some resources are remaining: {}", left.join(", ")),
                    ))
                }
                "NamespaceFinalizersRemaining" if !content.finalizers.is_empty() => {
                    let mut left: Vec<String> = content
                        .finalizers
                        .iter()
                        .map(|(f, n)| format!("{f} in {n} resource instances"))
                        .collect();
                    left.sort();
                    Some((
                        "SomeFinalizersRemain",
                        format!(
                            "Some content in the namespace has finalizers remaining: {}",
                            left.join(", ")
                        ),
                    ))
                }
                _ => None,
            };
            match problem {
                Some((reason, message)) => Wanted {
                    type_,
                    status: "True",
                    reason: reason.into(),
                    message,
                },
                None => Wanted {
                    type_,
                    status: "False",
                    reason: (*ok_reason).into(),
                    message: (*ok_message).into(),
                },
            }
        })
        .collect()
}

/// `old` with `wanted` merged in (a condition's transition time moves only when its status
/// does); `None` when nothing changes.
pub fn merge_conditions(old: &[NamespaceCondition], wanted: &[Wanted], now: &Time) -> Option<Vec<NamespaceCondition>> {
    let mut out = old.to_vec();
    let mut changed = false;
    for w in wanted {
        match out.iter_mut().find(|c| c.type_ == w.type_) {
            Some(c) => {
                if c.status != w.status
                    || c.reason.as_deref() != Some(&w.reason)
                    || c.message.as_deref() != Some(&w.message)
                {
                    if c.status != w.status {
                        c.last_transition_time = Some(now.clone());
                    }
                    c.status = w.status.into();
                    c.reason = Some(w.reason.clone());
                    c.message = Some(w.message.clone());
                    changed = true;
                }
            }
            None => {
                out.push(NamespaceCondition {
                    type_: w.type_.into(),
                    status: w.status.into(),
                    reason: Some(w.reason.clone()),
                    message: Some(w.message.clone()),
                    last_transition_time: Some(now.clone()),
                });
                changed = true;
            }
        }
    }
    changed.then_some(out)
}

struct Controller {
    client: kube::Client,
    shared: Shared,
    store: Store<Namespace>,
    queue: Arc<Queue<String>>,
}

/// Runs the namespace controller on the collector's graph (started by `gc::run`).
pub(crate) async fn run(client: kube::Client, shared: Shared) {
    let (store, writer) = reflector::store();
    let controller = Arc::new(Controller {
        client: client.clone(),
        queue: shared.namespaces.clone(),
        shared,
        store,
    });
    let namespaces: Api<Namespace> = Api::all(client);
    let feed = watcher(namespaces, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .for_each(|ns| {
            let queue = controller.queue.clone();
            async move {
                match ns {
                    Ok(ns) if ns.metadata.deletion_timestamp.is_some() => {
                        queue.add(ns.metadata.name.clone().unwrap_or_default());
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "namespace watch failed; retrying"),
                }
            }
        });
    let workers = futures::future::join_all((0..WORKERS).map(|_| worker(controller.clone())));
    tokio::join!(feed, workers);
}

async fn worker(controller: Arc<Controller>) {
    let mut synced = controller.shared.synced.clone();
    if synced.wait_for(|s| *s).await.is_err() || controller.store.wait_until_ready().await.is_err() {
        return;
    }
    loop {
        let name = controller.queue.next().await;
        let result = controller.sync(&name).await;
        if let Err(e) = &result {
            tracing::debug!(namespace = %name, error = %e, "namespace deletion not finished; retrying");
        }
        controller.queue.done(name, result.is_ok());
    }
}

impl Controller {
    async fn sync(&self, name: &str) -> Result<(), Error> {
        let Some(ns) = self.store.get(&ObjectRef::new(name)) else {
            return Ok(());
        };
        let finalizers = ns.spec.as_ref().and_then(|s| s.finalizers.clone()).unwrap_or_default();
        if ns.metadata.deletion_timestamp.is_none() || !finalizers.iter().any(|f| f == NAMESPACE_FINALIZER) {
            return Ok(());
        }
        let (content, kinds) = {
            let graph = self.shared.graph();
            (graph.namespace_content(name), graph.kinds().to_vec())
        };

        // Delete what is not going yet, a collection per kind, as Kubernetes does.
        let mut failures = Vec::new();
        let mut deleted = false;
        for (k, count) in &content.kinds {
            let Some(kind) = kinds.get(*k) else { continue };
            if count.undeleted == 0 {
                continue;
            }
            deleted = true;
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), name, &kind.resource);
            tracing::info!(namespace = %name, kind = %kind.resource.kind, objects = count.undeleted, "deleting namespace content");
            if let Err(e) = api
                .delete_collection(&DeleteParams::background(), &ListParams::default())
                .await
            {
                failures.push(format!("{}: {e}", kind.qualified_plural()));
            }
        }

        if content.is_empty() && failures.is_empty() {
            self.check_empty(name, &kinds).await?;
            return self.finalize(&ns, finalizers).await;
        }

        // Right after deleting, the counts are of before: write them once the deletes
        // have been seen (the graph wakes this controller then).
        if !deleted || !failures.is_empty() {
            let wanted = wanted_conditions(&content, &kinds, &failures);
            let old = ns
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            let now = Time(k8s_openapi::jiff::Timestamp::now());
            if let Some(conditions) = merge_conditions(&old, &wanted, &now) {
                let api: Api<Namespace> = Api::all(self.client.clone());
                let patch = json!({"status": {"conditions": conditions}});
                match api
                    .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if !failures.is_empty() {
            return Err(Error::ContentDeletion {
                count: failures.len(),
                message: failures.join(", "),
            });
        }
        Ok(())
    }

    /// The server agrees nothing is left (the graph could lag behind a watcher).
    async fn check_empty(&self, name: &str, kinds: &[Kind]) -> Result<(), Error> {
        for kind in kinds.iter().filter(|k| k.namespaced) {
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), name, &kind.resource);
            let left = api.list_metadata(&ListParams::default().limit(1)).await?;
            if !left.items.is_empty() {
                return Err(Error::Lagging(kind.qualified_plural()));
            }
        }
        Ok(())
    }

    /// Removes the `kubernetes` finalizer through the `finalize` subresource.
    async fn finalize(&self, ns: &Namespace, finalizers: Vec<String>) -> Result<(), Error> {
        let name = ns.metadata.name.clone().unwrap_or_default();
        let body = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                // Pinned: a concurrent change of the finalizers fails rather than is lost.
                resource_version: ns.metadata.resource_version.clone(),
                ..ObjectMeta::default()
            },
            spec: Some(NamespaceSpec {
                finalizers: Some(finalizers.into_iter().filter(|f| f != NAMESPACE_FINALIZER).collect()),
            }),
            status: None,
        };
        tracing::info!(namespace = %name, "namespace empty; finalizing");
        let api: Api<Namespace> = Api::all(self.client.clone());
        match api
            .replace_subresource("finalize", &name, &PostParams::default(), &body)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::gc::KindCount;

    fn kinds() -> Vec<Kind> {
        vec![
            Kind::new("v1", "Pod", "pods", true),
            Kind::new("apps/v1", "Deployment", "deployments", true),
        ]
    }

    fn content(kinds: &[(usize, usize, usize)], finalizers: &[(&str, usize)]) -> NamespaceContent {
        NamespaceContent {
            kinds: kinds
                .iter()
                .map(|(k, objects, undeleted)| {
                    (
                        *k,
                        KindCount {
                            objects: *objects,
                            undeleted: *undeleted,
                        },
                    )
                })
                .collect(),
            finalizers: finalizers.iter().map(|(f, n)| (f.to_string(), *n)).collect(),
        }
    }

    fn find<'a>(w: &'a [Wanted], type_: &str) -> &'a Wanted {
        w.iter().find(|c| c.type_ == type_).expect("condition")
    }

    #[test]
    fn conditions_say_what_remains_as_kubernetes_does() {
        // (case, content, failures, condition type, status, reason, message)
        let cases = [
            (
                "empty",
                content(&[], &[]),
                vec![],
                "NamespaceContentRemaining",
                "False",
                "ContentRemoved",
                "All content successfully removed",
            ),
            (
                "pods and a deployment left",
                content(&[(0, 2, 0), (1, 1, 0)], &[]),
                vec![],
                "NamespaceContentRemaining",
                "True",
                "SomeResourcesRemain",
                "Some resources are remaining: deployments.apps has 1 resource instances, pods. has 2 resource instances",
            ),
            (
                "finalizers left",
                content(&[(1, 1, 0)], &[("example.com/hold", 1), ("foregroundDeletion", 2)]),
                vec![],
                "NamespaceFinalizersRemaining",
                "True",
                "SomeFinalizersRemain",
                "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances, \
                 foregroundDeletion in 2 resource instances",
            ),
            (
                "no finalizers left",
                content(&[(0, 1, 0)], &[]),
                vec![],
                "NamespaceFinalizersRemaining",
                "False",
                "ContentHasNoFinalizers",
                "All content-preserving finalizers finished",
            ),
            (
                "a deletecollection failed",
                content(&[(0, 1, 1)], &[]),
                vec!["pods.: boom".to_string()],
                "NamespaceDeletionContentFailure",
                "True",
                "ContentDeletionFailed",
                "Failed to delete all resource types, 1 remaining: pods.: boom",
            ),
            (
                "every deletecollection worked",
                content(&[(0, 1, 1)], &[]),
                vec![],
                "NamespaceDeletionContentFailure",
                "False",
                "ContentDeleted",
                "All content successfully deleted, may be waiting on finalization",
            ),
        ];
        for (case, content, failures, type_, status, reason, message) in cases {
            let wanted = wanted_conditions(&content, &kinds(), &failures);
            assert_eq!(wanted.len(), CONDITIONS.len(), "{case}");
            let c = find(&wanted, type_);
            assert_eq!(
                (c.status, c.reason.as_str(), c.message.as_str()),
                (status, reason, message),
                "{case}"
            );
        }
    }

    #[test]
    fn merging_keeps_transition_times_of_unchanged_statuses() {
        let t0 = Time(k8s_openapi::jiff::Timestamp::from_second(1_000).expect("time"));
        let t1 = Time(k8s_openapi::jiff::Timestamp::from_second(2_000).expect("time"));
        let first = wanted_conditions(&content(&[(0, 2, 0)], &[]), &kinds(), &[]);
        let old = merge_conditions(&[], &first, &t0).expect("all new");
        assert_eq!(old.len(), CONDITIONS.len());
        // Same conditions: no write.
        assert_eq!(merge_conditions(&old, &first, &t1), None);
        // A count changes: the message moves, the transition time does not.
        let second = wanted_conditions(&content(&[(0, 1, 0)], &[]), &kinds(), &[]);
        let merged = merge_conditions(&old, &second, &t1).expect("changed");
        let remaining = merged
            .iter()
            .find(|c| c.type_ == "NamespaceContentRemaining")
            .expect("condition");
        assert_eq!(remaining.last_transition_time, Some(t0.clone()));
        assert_eq!(
            remaining.message.as_deref(),
            Some("Some resources are remaining: pods. has 1 resource instances")
        );
        // Content gone: the status flips and the time moves.
        let third = wanted_conditions(&content(&[], &[]), &kinds(), &[]);
        let merged = merge_conditions(&merged, &third, &t1).expect("changed");
        let remaining = merged
            .iter()
            .find(|c| c.type_ == "NamespaceContentRemaining")
            .expect("condition");
        assert_eq!(
            (remaining.status.as_str(), remaining.last_transition_time.clone()),
            ("False", Some(t1))
        );
    }
}
