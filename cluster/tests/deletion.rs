//! Deletion as Kubernetes does it, through kube-rs against a real member: a scheduled
//! pod's grace period, finalizers that hold an object, propagation finalizers,
//! deletecollection, a terminating namespace that takes no new objects, and eviction.
//! (The garbage collector and the namespace controller that finish these are tested in
//! `gc.rs`.)

mod common;

use common::start;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::{Api, ResourceExt};
use serde_json::json;

fn pod(name: &str) -> Pod {
    serde_json::from_value(
        json!({"metadata": {"name": name}, "spec": {"terminationGracePeriodSeconds": 20,
        "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "300"]}]}}),
    )
    .unwrap()
}

async fn bind(s: &common::Server, name: &str, node: &str) {
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": {"kind": "Node", "name": node}});
    let path = format!("/api/v1/namespaces/default/pods/{name}/binding");
    let (status, _, body) = s
        .request(
            "POST",
            &path,
            &[("content-type", "application/json")],
            binding.to_string(),
        )
        .await;
    assert_eq!(status.as_u16(), 201, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn pods_on_a_node_get_a_grace_period_others_go_at_once() {
    let s = start().await;
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), "default");

    pods.create(&PostParams::default(), &pod("pending")).await.unwrap();
    pods.delete("pending", &DeleteParams::default()).await.unwrap();
    assert!(
        pods.get_opt("pending").await.unwrap().is_none(),
        "an unscheduled pod goes at once"
    );

    pods.create(&PostParams::default(), &pod("running")).await.unwrap();
    bind(&s, "running", "n1").await;
    let bound = pods.get("running").await.unwrap();
    assert_eq!(bound.spec.as_ref().and_then(|s| s.node_name.as_deref()), Some("n1"));
    pods.delete("running", &DeleteParams::default()).await.unwrap();
    let terminating = pods.get("running").await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(20));
    // A second delete may shorten the grace period; 0 (what the node agent sends once the
    // processes stopped) removes the pod.
    pods.delete("running", &DeleteParams::default().grace_period(5))
        .await
        .unwrap();
    assert_eq!(
        pods.get("running")
            .await
            .unwrap()
            .metadata
            .deletion_grace_period_seconds,
        Some(5)
    );
    pods.delete("running", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert!(pods.get_opt("running").await.unwrap().is_none());

    // A terminating pod cannot be bound.
    pods.create(&PostParams::default(), &pod("late")).await.unwrap();
    bind(&s, "late", "n1").await;
    let again = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "late"}, "target": {"name": "n2"}});
    let (status, _, _) = s
        .request(
            "POST",
            "/api/v1/namespaces/default/pods/late/binding",
            &[("content-type", "application/json")],
            again.to_string(),
        )
        .await;
    assert_eq!(status.as_u16(), 409, "a pod is bound once");

    // Eviction (kubectl drain) deletes a pod as its delete options say.
    pods.evict("late", &EvictParams::default()).await.unwrap();
    assert!(pods.get("late").await.unwrap().metadata.deletion_timestamp.is_some());
    // (kube-rs sends its delete options as `delete_options`, which the API ignores as
    // kube-apiserver does: kubectl's body says `deleteOptions`.)
    let now = json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "late"},
        "deleteOptions": {"gracePeriodSeconds": 0}});
    let (status, _, _) = s
        .request(
            "POST",
            "/api/v1/namespaces/default/pods/late/eviction",
            &[("content-type", "application/json")],
            now.to_string(),
        )
        .await;
    assert_eq!(status.as_u16(), 201);
    assert!(pods.get_opt("late").await.unwrap().is_none());
    s.stop().await;
}

#[tokio::test]
async fn finalizers_hold_an_object_until_they_are_removed() {
    let s = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), "default");
    let held: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}})).unwrap();
    cms.create(&PostParams::default(), &held).await.unwrap();
    cms.delete("held", &DeleteParams::default()).await.unwrap();
    let marked = cms.get("held").await.unwrap();
    assert!(
        marked.metadata.deletion_timestamp.is_some(),
        "held, marked for deletion"
    );
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(
        cms.get_opt("held").await.unwrap().is_none(),
        "gone with its last finalizer"
    );

    // Propagation policies become finalizers for the garbage collector.
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), "default");
    for (name, policy, finalizer) in [
        ("fg", PropagationPolicy::Foreground, "foregroundDeletion"),
        ("orphan", PropagationPolicy::Orphan, "orphan"),
    ] {
        let d: Deployment = serde_json::from_value(json!({"metadata": {"name": name}, "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}}))
        .unwrap();
        deployments.create(&PostParams::default(), &d).await.unwrap();
        let params = DeleteParams {
            propagation_policy: Some(policy),
            ..Default::default()
        };
        deployments.delete(name, &params).await.unwrap();
        let live = deployments.get(name).await.unwrap();
        assert_eq!(live.finalizers(), [finalizer]);
        assert!(live.metadata.deletion_timestamp.is_some());
    }

    // deletecollection takes exactly what the selector matches.
    for (name, tier) in [("a", "x"), ("b", "x"), ("c", "y")] {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"tier": tier}}})).unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    cms.delete_collection(&DeleteParams::default(), &ListParams::default().labels("tier=x"))
        .await
        .unwrap();
    let left: Vec<String> = cms
        .list(&ListParams::default().labels("tier"))
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    assert_eq!(left, ["c"]);
    s.stop().await;
}

#[tokio::test]
async fn a_terminating_namespace_takes_no_new_objects() {
    let s = start().await;
    let namespaces: Api<Namespace> = Api::all(s.client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "doomed"}})).unwrap();
    let created = namespaces.create(&PostParams::default(), &ns).await.unwrap();
    assert_eq!(
        created.spec.and_then(|s| s.finalizers),
        Some(vec!["kubernetes".to_string()])
    );
    namespaces.delete("doomed", &DeleteParams::default()).await.unwrap();
    let terminating = namespaces.get("doomed").await.unwrap();
    assert_eq!(terminating.status.and_then(|s| s.phase).as_deref(), Some("Terminating"));
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), "doomed");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "late"}})).unwrap();
    match cms.create(&PostParams::default(), &cm).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
            assert!(e.message.contains("because it is being terminated"), "{}", e.message);
        }
        other => panic!("expected 403, got {other:?}"),
    }
    // Finalizing (the namespace controller's last step) removes the namespace.
    let mut finalized = namespaces.get("doomed").await.unwrap();
    finalized.spec = Some(Default::default());
    namespaces
        .replace_subresource("finalize", "doomed", &PostParams::default(), &finalized)
        .await
        .unwrap();
    assert!(namespaces.get_opt("doomed").await.unwrap().is_none());
    s.stop().await;
}
