//! ReplicaSet controller: keeps the number of active pods a ReplicaSet controls equal to
//! its replicas, replacing pods that failed or were deleted, and reports the counts as
//! Kubernetes does (`replicas`, `fullyLabeledReplicas`, `readyReplicas`,
//! `availableReplicas` — ready for `minReadySeconds` — and `observedGeneration`).
//!
//! Pods are read from an [`OwnerIndex`] fed by one watch of all pods; creations and
//! deletions not yet seen there are [`Expectations`].
//!
//! A ReplicaSet claims pods by its selector as Kubernetes' does ([`claim`]): it adopts
//! the orphans of its namespace whose labels match (so pods that were there first count
//! toward its replicas) and releases the pods it controls whose labels no longer match
//! (and replaces them). The index keeps orphan pods by namespace for this, and an
//! orphan's watch event wakes the ReplicaSets that select it.
//!
//! Missing pods are created one at a time, at most [`BURST_REPLICAS`] per reconcile, and
//! each only while the controller's own store still shows the ReplicaSet alive: a
//! reconcile works from a snapshot, and one that outlives its ReplicaSet (deleted by the
//! garbage collector while thousands of creations were still to go) must not keep
//! creating pods the garbage collector then deletes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::watch;

use super::claim;
use super::deployment::owner_ref;
use super::informer::{Informer, Shared};
use super::{Error, Expectations, OwnerIndex};

/// Pods created per reconcile at most (Kubernetes' `BurstReplicas`); the pods' watch
/// events bring the next reconcile for the rest.
const BURST_REPLICAS: usize = 500;

/// What every reconcile shares: the client, the pod cache and the controller's own
/// ReplicaSet store (newer than the snapshot a long reconcile started from).
struct Context {
    client: kube::Client,
    pods: OwnerIndex<Pod>,
    expectations: Expectations,
    replicasets: Store<ReplicaSet>,
}

/// Runs the controller until shutdown, reading pods from the shared `pods`.
pub(crate) async fn run(client: kube::Client, pods: &Informer<Pod>, shutdown: watch::Receiver<bool>) {
    let replicasets: Api<ReplicaSet> = Api::all(client.clone());
    let controller = Controller::new(replicasets, watcher::Config::default());
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods: pods.index(),
        expectations: Expectations::default(),
        replicasets: controller.store(),
    });
    let observer = ctx.clone();
    let pods = pods.subscribe(move |e| observer.expectations.observe(e));
    let store = controller.store();
    controller
        // A pod wakes the ReplicaSets it names as owners and, an orphan, those that
        // may adopt it.
        .watches_stream(pods, move |pod: Shared<Pod>| replicasets_for_pod(&store, &pod))
        .graceful_shutdown_on(super::stopped(shutdown))
        .run(reconcile, super::retry_soon, ctx)
        .for_each(|r| async move { super::log_result("replicaset", r) })
        .await;
}

/// The pod's phase (`Pending` until the node says otherwise).
pub(crate) fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// The ReplicaSets (of `all`) a pod event concerns: its owners and, for an active
/// orphan, those that may adopt it ([`claim::owners_to_wake`]).
fn replicasets_for_pod(all: &Store<ReplicaSet>, pod: &Pod) -> Vec<ObjectRef<ReplicaSet>> {
    claim::owners_to_wake(
        || all.state(),
        pod,
        is_active(pod),
        |rs| rs.spec.as_ref().map(|s| &s.selector),
    )
}

/// Whether pods may still be created for the ReplicaSet with uid `uid`, given what the
/// controller's store holds under its name now: not if it is gone, replaced by another
/// of the same name, or being deleted.
fn still_wanted(current: Option<&ReplicaSet>, uid: &str) -> bool {
    current.is_some_and(|rs| rs.metadata.uid.as_deref() == Some(uid) && rs.metadata.deletion_timestamp.is_none())
}

/// Whether the pod counts toward a ReplicaSet: not finished and not being deleted.
pub fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase(pod), "Failed" | "Succeeded")
}

/// When the pod's Ready condition turned True, if it is True.
fn ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

/// Whether the pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Whether the pod has been ready for `min_ready` seconds at `now` (Kubernetes'
/// `IsPodAvailable`); if it is ready but not yet available, how long until it is.
pub fn availability(pod: &Pod, min_ready: i32, now: Timestamp) -> (bool, Option<Duration>) {
    match ready_since(pod) {
        None => (false, None),
        Some(_) if min_ready <= 0 => (true, None),
        // Ready with no transition time: nothing to wait from.
        Some(None) => (true, None),
        Some(Some(since)) => {
            let until = since.as_second() + i64::from(min_ready);
            if until <= now.as_second() {
                (true, None)
            } else {
                (false, Some(Duration::from_secs((until - now.as_second()) as u64)))
            }
        }
    }
}

/// The status for the active pods, and when availability should be looked at again.
pub fn compute_status(rs: &ReplicaSet, active: &[&Pod], now: Timestamp) -> (ReplicaSetStatus, Option<Duration>) {
    let spec = rs.spec.as_ref();
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let template_labels = spec
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let mut status = ReplicaSetStatus {
        replicas: active.len() as i32,
        observed_generation: rs.metadata.generation,
        // Conditions (ReplicaFailure) are kept as they are.
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
        ..Default::default()
    };
    let (mut labeled, mut ready, mut available) = (0, 0, 0);
    let mut recheck: Option<Duration> = None;
    for pod in active {
        let labels = pod.labels();
        if template_labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            labeled += 1;
        }
        if is_ready(pod) {
            ready += 1;
        }
        let (is_available, wait) = availability(pod, min_ready, now);
        if is_available {
            available += 1;
        }
        if let Some(w) = wait {
            recheck = Some(recheck.map_or(w, |r| r.min(w)));
        }
    }
    status.fully_labeled_replicas = Some(labeled);
    status.ready_replicas = Some(ready);
    status.available_replicas = Some(available);
    (status, recheck)
}

/// The order in which surplus pods go: unscheduled, then not ready, then the newest.
pub(crate) fn deletion_rank(p: &Pod) -> (bool, bool, std::cmp::Reverse<i64>) {
    let scheduled = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
    let created = p
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(0);
    (scheduled, is_ready(p), std::cmp::Reverse(created))
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.pods.ready().await;
    let ns = rs
        .namespace()
        .ok_or_else(|| Error::Malformed("replicaset without namespace".into()))?;
    let name = rs.name_any();
    let uid = rs
        .uid()
        .ok_or_else(|| Error::Malformed("replicaset without uid".into()))?;
    let spec = rs
        .spec
        .as_ref()
        .ok_or_else(|| Error::Malformed(format!("replicaset {name} has no spec")))?;
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let want = spec.replicas.unwrap_or(1).max(0) as usize;
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);

    let owned = ctx.pods.owned_by(&uid);
    let cached = super::cache_state(&owned);
    // Adopt matching orphans, release pods that stopped matching; what is left is this
    // ReplicaSet's. A failed adoption or release ends the pass before any pod is created
    // or deleted: which pods are ours is not settled yet.
    let owned = claim::claim(
        rs.as_ref(),
        &Api::<ReplicaSet>::namespaced(ctx.client.clone(), &ns),
        &pods_api,
        &spec.selector,
        owned.into_iter().chain(ctx.pods.orphans_in(&ns)),
        |p| matches!(phase(p), "Failed" | "Succeeded"),
    )
    .await?;
    let (adds, deletes) = ctx.expectations.outstanding(&uid, &cached);
    let not_deleting = |p: &&Arc<Pod>| !p.uid().is_some_and(|u| deletes.contains(&u));

    // Pods that ended for good are replaced, as Kubernetes does.
    for pod in owned.iter().filter(not_deleting) {
        if pod.metadata.deletion_timestamp.is_none() && matches!(phase(pod), "Failed" | "Succeeded") {
            tracing::info!(object = %format!("{ns}/{}", pod.name_any()), phase = phase(pod), "removing finished pod");
            super::delete_pod(&ctx.expectations, &pods_api, &uid, pod).await?;
        }
    }
    let mut active: Vec<&Arc<Pod>> = owned.iter().filter(|p| is_active(p)).filter(not_deleting).collect();
    // Created pods the cache does not show yet count as there.
    let present = active.len() + adds.len();

    if present < want {
        let template = spec.template.clone().unwrap_or_default();
        let meta = template.metadata.clone().unwrap_or_default();
        let missing = (want - present).min(BURST_REPLICAS);
        for _ in 0..missing {
            // The store moves on while this loop runs; the snapshot `rs` does not.
            if !still_wanted(ctx.replicasets.get(&ObjectRef::from_obj(rs.as_ref())).as_deref(), &uid) {
                tracing::info!(object = %format!("{ns}/{name}"), "replicaset gone or deleting; not creating more pods");
                return Ok(Action::await_change());
            }
            let pod = Pod {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{name}-")),
                    namespace: Some(ns.clone()),
                    labels: meta.labels.clone(),
                    annotations: meta.annotations.clone(),
                    owner_references: Some(vec![owner_ref(rs.as_ref())?]),
                    ..Default::default()
                },
                spec: template.spec.clone(),
                status: None,
            };
            let created = pods_api.create(&PostParams::default(), &pod).await?;
            if let Some(pod_uid) = created.uid() {
                ctx.expectations.created(&uid, pod_uid);
            }
            tracing::info!(object = %format!("{ns}/{}", created.name_any()), replicaset = %name, "created pod");
        }
    } else if present > want && adds.is_empty() {
        // With creations still unseen, which pods exist is not known yet: wait for them.
        active.sort_by_key(|p| deletion_rank(p));
        let excess = present - want;
        for pod in active.drain(..excess) {
            tracing::info!(object = %format!("{ns}/{}", pod.name_any()), replicaset = %name, "deleting surplus pod");
            super::delete_pod(&ctx.expectations, &pods_api, &uid, pod).await?;
        }
    }

    // Status counts what the cache shows (as Kubernetes counts its informer's pods).
    let observed: Vec<&Pod> = owned
        .iter()
        .filter(|p| is_active(p))
        .filter(not_deleting)
        .map(|p| p.as_ref())
        .collect();
    let (status, recheck) = compute_status(&rs, &observed, super::now());
    if rs.status.as_ref() != Some(&status) {
        let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
        super::write_status(&api, &*rs, |r| r.status = Some(status)).await?;
    }
    Ok(match recheck {
        // Pods become available by the clock, not by an event.
        Some(after) => Action::requeue(after + Duration::from_millis(200)),
        None => Action::await_change(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::core::SelectorExt;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn pod(labels: &[(&str, &str)], ready_at: Option<i64>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready_at.is_some() { "True" } else { "False" }.into(),
                    last_transition_time: ready_at.map(|s| Time(ts(s))),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn rs(min_ready: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                generation: Some(3),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(3),
                min_ready_seconds: Some(min_ready),
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some([("app".to_string(), "web".to_string())].into()),
                        ..Default::default()
                    }),
                    spec: None,
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn status_counts_as_kubernetes_does() {
        // (minReadySeconds, pods as (labels match, ready since), now) ->
        // (replicas, fullyLabeled, ready, available, recheck after)
        type Case = (i32, Vec<(bool, Option<i64>)>, i64, (i32, i32, i32, i32, Option<u64>));
        let cases: Vec<Case> = vec![
            (0, vec![], 100, (0, 0, 0, 0, None)),
            (0, vec![(true, Some(90)), (true, None)], 100, (2, 2, 1, 1, None)),
            (0, vec![(false, Some(90))], 100, (1, 0, 1, 1, None)),
            (10, vec![(true, Some(95)), (true, Some(80))], 100, (2, 2, 2, 1, Some(5))),
            (10, vec![(true, Some(90))], 100, (1, 1, 1, 1, None)),
        ];
        for (min_ready, pods, now, want) in cases {
            let pods: Vec<Pod> = pods
                .iter()
                .map(|(labeled, ready)| {
                    let labels: &[(&str, &str)] = if *labeled {
                        &[("app", "web"), ("x", "y")]
                    } else {
                        &[("app", "db")]
                    };
                    pod(labels, *ready)
                })
                .collect();
            let refs: Vec<&Pod> = pods.iter().collect();
            let (s, recheck) = compute_status(&rs(min_ready), &refs, ts(now));
            let got = (
                s.replicas,
                s.fully_labeled_replicas.unwrap(),
                s.ready_replicas.unwrap(),
                s.available_replicas.unwrap(),
                recheck.map(|d| d.as_secs()),
            );
            assert_eq!(got, want, "minReady {min_ready}, now {now}");
            assert_eq!(s.observed_generation, Some(3));
        }
    }

    #[test]
    fn creations_stop_once_the_store_shows_the_replicaset_gone_or_deleting() {
        let mut live = rs(0);
        live.metadata.uid = Some("rs-1".into());
        assert!(still_wanted(Some(&live), "rs-1"));
        // Deleted (the garbage collector's background deletion) while the loop ran.
        assert!(!still_wanted(None, "rs-1"));
        // Recreated under the same name: a different ReplicaSet.
        assert!(!still_wanted(Some(&live), "rs-0"));
        let mut deleting = live.clone();
        deleting.metadata.deletion_timestamp = Some(Time(ts(5)));
        assert!(!still_wanted(Some(&deleting), "rs-1"));
    }

    /// A ReplicaSet `rs-1` in `default` selecting `app=x`.
    fn selecting_x(deleting: bool) -> ReplicaSet {
        let mut r = rs(0);
        r.metadata.name = Some("x".into());
        r.metadata.namespace = Some("default".into());
        r.metadata.uid = Some("rs-1".into());
        r.metadata.deletion_timestamp = deleting.then(|| Time(ts(5)));
        r.spec.as_mut().unwrap().selector =
            serde_json::from_value(serde_json::json!({"matchLabels": {"app": "x"}})).unwrap();
        r
    }

    /// A running pod in `ns` labelled `app`, controlled by `controller` if any.
    fn candidate(ns: &str, app: &str, controller: Option<&str>) -> Pod {
        let mut p = pod(&[("app", app)], Some(1));
        p.metadata.name = Some("p".into());
        p.metadata.uid = Some("p-1".into());
        p.metadata.namespace = Some(ns.into());
        p.metadata.owner_references = controller.map(|uid| {
            vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: format!("rs-{uid}"),
                uid: uid.into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]
        });
        p
    }

    #[test]
    fn replicasets_claim_pods_as_kubernetes_does() {
        use claim::Claim::*;
        // (ReplicaSet deleting, pod namespace, pod label, controller, pod state) -> claim
        #[derive(Clone, Copy)]
        enum State {
            Running,
            Deleting,
            Finished,
        }
        let cases = [
            // Orphans: adopted when selected, live, in the namespace, and the
            // ReplicaSet is not being deleted.
            (false, "default", "x", None, State::Running, Adopt),
            (false, "default", "y", None, State::Running, Ignore),
            (true, "default", "x", None, State::Running, Ignore),
            (false, "default", "x", None, State::Deleting, Ignore),
            (false, "default", "x", None, State::Finished, Ignore),
            (false, "other", "x", None, State::Running, Ignore),
            // Its own: kept while selected (even while either is being deleted),
            // released when not, unless either is being deleted.
            (false, "default", "x", Some("rs-1"), State::Running, Keep),
            (true, "default", "x", Some("rs-1"), State::Running, Keep),
            (false, "default", "x", Some("rs-1"), State::Deleting, Keep),
            (false, "default", "y", Some("rs-1"), State::Running, Release),
            (false, "default", "y", Some("rs-1"), State::Finished, Release),
            (true, "default", "y", Some("rs-1"), State::Running, Ignore),
            (false, "default", "y", Some("rs-1"), State::Deleting, Ignore),
            // Another controller's: never touched.
            (false, "default", "x", Some("rs-2"), State::Running, Ignore),
            (false, "default", "y", Some("rs-2"), State::Running, Ignore),
        ];
        for (i, (rs_deleting, ns, app, controller, state, want)) in cases.into_iter().enumerate() {
            let r = selecting_x(rs_deleting);
            let selector = claim::compile(&r.spec.as_ref().unwrap().selector).unwrap().unwrap();
            let mut p = candidate(ns, app, controller);
            match state {
                State::Running => {}
                State::Deleting => p.metadata.deletion_timestamp = Some(Time(ts(6))),
                State::Finished => p.status.as_mut().unwrap().phase = Some("Succeeded".into()),
            }
            let finished = matches!(phase(&p), "Failed" | "Succeeded");
            let got = claim::decide(&r.metadata, &p.metadata, selector.matches(p.labels()), finished);
            assert_eq!(
                got, want,
                "case {i}: rs deleting {rs_deleting}, pod {ns} app={app} {controller:?}"
            );
        }
    }

    #[test]
    fn a_pod_wakes_its_owner_and_as_an_orphan_the_replicasets_selecting_it() {
        let x = selecting_x(false);
        let mut other_ns = selecting_x(false);
        other_ns.metadata.namespace = Some("other".into());
        let mut deleting = selecting_x(true);
        deleting.metadata.name = Some("gone".into());
        let mut y = selecting_x(false);
        y.metadata.name = Some("y".into());
        y.spec.as_mut().unwrap().selector =
            serde_json::from_value(serde_json::json!({"matchLabels": {"app": "y"}})).unwrap();
        let (all, mut writer) = kube::runtime::reflector::store();
        for r in [x, other_ns, deleting, y] {
            writer.apply_watcher_event(&watcher::Event::Apply(r));
        }
        let names = |refs: Vec<ObjectRef<ReplicaSet>>| {
            let mut v: Vec<String> = refs
                .iter()
                .map(|r| format!("{}/{}", r.namespace.as_deref().unwrap_or(""), r.name))
                .collect();
            v.sort();
            v
        };

        assert_eq!(
            names(replicasets_for_pod(&all, &candidate("default", "x", None))),
            ["default/x"]
        );
        assert_eq!(
            names(replicasets_for_pod(&all, &candidate("default", "y", None))),
            ["default/y"]
        );
        // Owned: its owner only, whatever else selects it.
        assert_eq!(
            names(replicasets_for_pod(&all, &candidate("default", "x", Some("9")))),
            ["default/rs-9"]
        );
        // A finished orphan is adopted by no one.
        let mut done = candidate("default", "x", None);
        done.status.as_mut().unwrap().phase = Some("Failed".into());
        assert!(replicasets_for_pod(&all, &done).is_empty());
    }

    #[test]
    fn deleting_and_finished_pods_are_not_active() {
        let mut p = pod(&[], Some(1));
        assert!(is_active(&p));
        p.metadata.deletion_timestamp = Some(Time(ts(5)));
        assert!(!is_active(&p));
        let mut done = pod(&[], None);
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(!is_active(&done));
    }
}
