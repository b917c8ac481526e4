//! Adoption and release by selector end to end, on a real member with the scheduler, the
//! controllers and a node agent running pods as host processes: a ReplicaSet adopts the
//! bare pods it selects and counts them, releases (and replaces) a pod relabelled out of
//! its selector, leaves its pods behind when deleted with `--cascade=orphan`, and a new
//! ReplicaSet adopts them; a Deployment re-created after an orphaning deletion adopts its
//! old ReplicaSet instead of making a new one.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{json, Value};

use common::{cluster, kubectl, wait_for, wait_until, Cluster};

/// How long anything here may take.
const DEADLINE: Duration = Duration::from_secs(60);

fn pod_spec() -> Value {
    json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "300"]}],
    })
}

fn bare_pod(name: &str, app: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": pod_spec(),
    }))
    .unwrap()
}

fn replicaset(name: &str, app: &str, replicas: i32) -> ReplicaSet {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": {"metadata": {"labels": {"app": app}}, "spec": pod_spec()},
        },
    }))
    .unwrap()
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec()},
        },
    }))
    .unwrap()
}

/// The uid of an object's controlling owner, and whether that reference blocks its
/// owner's deletion.
fn controller_of<K: ResourceExt>(obj: &K) -> Option<(String, bool)> {
    obj.owner_references()
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| (r.uid.clone(), r.block_owner_deletion == Some(true)))
}

/// A pod as these tests look at it: name, uid, and controller (see [`controller_of`]).
type PodSummary = (String, String, Option<(String, bool)>);

/// The live (not deleting) pods labelled `app=<app>`, by name.
async fn live_pods(pods: &Api<Pod>, app: &str) -> Vec<PodSummary> {
    let list = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap();
    let mut v: Vec<_> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.name_any(), p.uid().unwrap(), controller_of(p)))
        .collect();
    v.sort();
    v
}

/// Waits until exactly `n` live pods labelled `app` are all controlled (blocking) by
/// `owner`; their names.
async fn owned_pods(pods: &Api<Pod>, app: &str, owner: &str, n: usize) -> BTreeSet<String> {
    wait_for(&format!("{n} pods of app={app} owned by {owner}"), DEADLINE, || async {
        let v = live_pods(pods, app).await;
        let all_owned = v.iter().all(|(_, _, c)| c.as_ref() == Some(&(owner.to_string(), true)));
        (v.len() == n && all_owned).then(|| v.into_iter().map(|(name, _, _)| name).collect())
    })
    .await
}

async fn running(pods: &Api<Pod>, name: &str) -> bool {
    pods.get_opt(name)
        .await
        .unwrap()
        .and_then(|p| p.status?.phase)
        .as_deref()
        == Some("Running")
}

/// Deletes `kind/name` leaving its dependents, with kubectl when present, and waits
/// until it is gone.
async fn delete_orphaning<K>(c: &Cluster, api: &Api<K>, kind: &str, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let target = format!("{kind}/{name}");
    if kubectl(&c.s, &["delete", &target, "--cascade=orphan", "--timeout=60s"])
        .await
        .is_none()
    {
        api.delete(name, &DeleteParams::orphan()).await.unwrap();
    }
    wait_until(&format!("{target} gone"), DEADLINE, || async {
        api.get_opt(name).await.unwrap().is_none()
    })
    .await;
}

#[tokio::test]
async fn replicasets_adopt_release_and_readopt_pods_by_selector() {
    let c = cluster().await;
    let client = c.s.client.clone();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();

    // Two bare pods first, and a pod of another app that nobody selects.
    for name in ["bare-1", "bare-2"] {
        pods.create(&pp, &bare_pod(name, "x")).await.unwrap();
    }
    pods.create(&pp, &bare_pod("other", "z")).await.unwrap();
    let originals: Vec<PodSummary> = live_pods(&pods, "x").await;
    assert_eq!(originals.len(), 2);

    // A ReplicaSet of 3 over them: it adopts both and creates just one.
    let rs = rss.create(&pp, &replicaset("x", "x", 3)).await.unwrap();
    let rs_uid = rs.uid().unwrap();
    let names = owned_pods(&pods, "x", &rs_uid, 3).await;
    assert!(names.contains("bare-1") && names.contains("bare-2"), "{names:?}");
    for (name, uid, _) in &originals {
        let p = pods.get(name).await.unwrap();
        assert_eq!(&p.uid().unwrap(), uid, "{name} is the same pod, adopted");
    }
    wait_until("the ReplicaSet to count 3 replicas", DEADLINE, || async {
        rss.get("x").await.unwrap().status.is_some_and(|s| s.replicas == 3)
    })
    .await;
    // And no more than that, once everything has settled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(live_pods(&pods, "x").await.len(), 3);
    assert_eq!(
        controller_of(&pods.get("other").await.unwrap()),
        None,
        "a pod the selector does not match is not adopted"
    );

    // Relabelled out of the selector: released (still running) and replaced.
    wait_until("bare-1 running", DEADLINE, || running(&pods, "bare-1")).await;
    let bare_1_uid = pods.get("bare-1").await.unwrap().uid().unwrap();
    pods.patch(
        "bare-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "y"}}})),
    )
    .await
    .unwrap();
    wait_until("bare-1 released", DEADLINE, || async {
        controller_of(&pods.get("bare-1").await.unwrap()).is_none()
    })
    .await;
    let names = owned_pods(&pods, "x", &rs_uid, 3).await;
    assert!(!names.contains("bare-1") && names.contains("bare-2"), "{names:?}");
    let released = pods.get("bare-1").await.unwrap();
    assert_eq!(released.uid().unwrap(), bare_1_uid);
    assert!(
        released.owner_references().is_empty(),
        "{:?}",
        released.owner_references()
    );
    assert!(released.metadata.deletion_timestamp.is_none());
    assert!(running(&pods, "bare-1").await, "the released pod keeps running");

    // Deleted leaving its pods: they lose their owner and stay.
    let before: Vec<(String, String)> = live_pods(&pods, "x")
        .await
        .into_iter()
        .map(|(n, u, _)| (n, u))
        .collect();
    delete_orphaning(&c, &rss, "rs", "x").await;
    wait_until("the pods orphaned", DEADLINE, || async {
        let v = live_pods(&pods, "x").await;
        v.len() == 3 && v.iter().all(|(_, _, c)| c.is_none())
    })
    .await;

    // A new ReplicaSet with the same selector adopts them, creating and deleting none.
    let rs2 = rss.create(&pp, &replicaset("x", "x", 3)).await.unwrap();
    let rs2_uid = rs2.uid().unwrap();
    assert_ne!(rs2_uid, rs_uid);
    owned_pods(&pods, "x", &rs2_uid, 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: Vec<(String, String)> = live_pods(&pods, "x")
        .await
        .into_iter()
        .map(|(n, u, _)| (n, u))
        .collect();
    assert_eq!(after, before, "the same pods, adopted again");
    // The released pod was left alone throughout.
    let released = pods.get("bare-1").await.unwrap();
    assert!(released.owner_references().is_empty());
    assert!(running(&pods, "bare-1").await);

    c.stop().await;
}

#[tokio::test]
async fn a_recreated_deployment_adopts_its_orphaned_replicaset() {
    let c = cluster().await;
    let client = c.s.client.clone();
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();

    let d = deploys.create(&pp, &deployment("web", 2)).await.unwrap();
    let d_uid = d.uid().unwrap();
    let rs = wait_for("the Deployment's ReplicaSet", DEADLINE, || async {
        let list = rss.list(&ListParams::default()).await.unwrap().items;
        list.into_iter()
            .find(|rs| controller_of(rs).is_some_and(|(uid, _)| uid == d_uid))
    })
    .await;
    let rs_uid = rs.uid().unwrap();
    owned_pods(&pods, "web", &rs_uid, 2).await;

    // Deleted leaving its ReplicaSet (and so its pods) behind.
    delete_orphaning(&c, &deploys, "deploy", "web").await;
    wait_until("the ReplicaSet orphaned", DEADLINE, || async {
        let rs = rss.get(&rs.name_any()).await.unwrap();
        controller_of(&rs).is_none()
    })
    .await;

    // Re-created: it adopts that ReplicaSet rather than making a new one.
    let d2 = deploys.create(&pp, &deployment("web", 2)).await.unwrap();
    let d2_uid = d2.uid().unwrap();
    wait_until("the ReplicaSet adopted", DEADLINE, || async {
        let rs = rss.get(&rs.name_any()).await.unwrap();
        controller_of(&rs) == Some((d2_uid.clone(), true))
    })
    .await;
    wait_until("the Deployment available", DEADLINE, || async {
        let d = deploys.get("web").await.unwrap();
        d.status
            .is_some_and(|s| s.available_replicas == Some(2) && s.updated_replicas == Some(2))
    })
    .await;
    let list = rss.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(list.len(), 1, "no second ReplicaSet");
    assert_eq!(list[0].uid().unwrap(), rs_uid);
    // The pods never changed hands: still the same ReplicaSet's two.
    owned_pods(&pods, "web", &rs_uid, 2).await;

    c.stop().await;
}
