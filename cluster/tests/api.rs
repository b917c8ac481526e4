//! The API server over a real one-member Raft store, exercised through kube-rs as any
//! client would: CRUD and its errors, watch, selectors, subresources, the atomic batch,
//! and the scheduler binding pods.

use std::time::Duration;

mod common;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kairn_cluster::kinds::{Batch, BatchOperation, BatchResult, BatchVerb};
use kube::api::{ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::Api;
use serde_json::json;

use common::start;

fn config_map(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})).unwrap()
}

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn crud_with_kubernetes_errors() {
    let s = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), "default");

    let created = cms
        .create(&PostParams::default(), &config_map("one", json!({"tier": "a"})))
        .await
        .unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    assert_eq!(
        cms.get("one").await.unwrap().metadata.resource_version,
        Some(rv.clone())
    );

    // Creating it again: 409 AlreadyExists.
    let err = api_error(
        cms.create(&PostParams::default(), &config_map("one", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "AlreadyExists"));

    // An update from the current version succeeds; one from a stale version is a 409 Conflict.
    let mut newer = created.clone();
    newer.data = Some([("k".to_string(), "v2".to_string())].into());
    let updated = cms.replace("one", &PostParams::default(), &newer).await.unwrap();
    assert_ne!(updated.metadata.resource_version, Some(rv.clone()));
    let err = api_error(cms.replace("one", &PostParams::default(), &newer).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));

    // Label selectors and paging.
    cms.create(&PostParams::default(), &config_map("two", json!({"tier": "b"})))
        .await
        .unwrap();
    let a = cms.list(&ListParams::default().labels("tier=a")).await.unwrap();
    assert_eq!(
        a.items
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect::<Vec<_>>(),
        vec!["one"]
    );
    let page = cms.list(&ListParams::default().limit(1)).await.unwrap();
    assert_eq!(page.items.len(), 1);
    let rest = cms
        .list(
            &ListParams::default()
                .limit(1)
                .continue_token(page.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(rest.items[0].metadata.name.as_deref(), Some("two"));

    // Merge patch.
    let patched = cms
        .patch(
            "two",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"extra": "1"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap().len(), 2);

    // Delete, then 404 NotFound.
    cms.delete("one", &Default::default()).await.unwrap();
    let err = api_error(cms.get("one").await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));

    // Invalid objects: 422 with the field path; unknown namespaces: 404.
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), "default");
    let no_containers: Pod =
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": []}})).unwrap();
    let err = api_error(pods.create(&PostParams::default(), &no_containers).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert_eq!(err.details.unwrap().causes[0].field, "spec.containers");
    let elsewhere: Api<ConfigMap> = Api::namespaced(s.client.clone(), "nowhere");
    let err = api_error(
        elsewhere
            .create(&PostParams::default(), &config_map("x", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 404);
    s.stop().await;
}

#[tokio::test]
async fn watch_streams_added_modified_deleted() {
    let s = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), "default");
    let start_rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut events = cms
        .watch(&WatchParams::default().labels("watched=yes").timeout(30), &start_rv)
        .await
        .unwrap()
        .boxed();

    cms.create(&PostParams::default(), &config_map("ignored", json!({})))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &config_map("w", json!({"watched": "yes"})))
        .await
        .unwrap();
    cms.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "changed"}})),
    )
    .await
    .unwrap();
    cms.delete("w", &Default::default()).await.unwrap();

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(match ev {
            WatchEvent::Added(cm) => ("ADDED", cm.metadata.name.unwrap()),
            WatchEvent::Modified(cm) => ("MODIFIED", cm.metadata.name.unwrap()),
            WatchEvent::Deleted(cm) => ("DELETED", cm.metadata.name.unwrap()),
            other => panic!("unexpected event {other:?}"),
        });
    }
    let w = "w".to_string();
    assert_eq!(
        seen,
        vec![("ADDED", w.clone()), ("MODIFIED", w.clone()), ("DELETED", w)]
    );
    s.stop().await;
}

async fn batch(client: &kube::Client, batch: &Batch) -> Result<BatchResult, kube::Error> {
    let request = kube::core::Request::new("/apis/kairn.dev/v1/batches")
        .create(&PostParams::default(), serde_json::to_vec(batch).unwrap())
        .unwrap();
    client.request(request).await
}

fn op(op: BatchVerb, object: serde_json::Value, resource_version: Option<String>) -> BatchOperation {
    BatchOperation {
        op,
        object,
        resource_version,
    }
}

#[tokio::test]
async fn batch_writes_all_or_nothing() {
    let s = start().await;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}});
    let cm = |name: &str, data: serde_json::Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "team"}, "data": data});

    // One invalid object rejects the whole batch, pointing at the operation and field.
    let bad = Batch {
        operations: vec![
            op(BatchVerb::Create, ns.clone(), None),
            op(BatchVerb::Create, cm("bad", json!({"k": 5})), None),
        ],
        dry_run: false,
        origin: None,
    };
    let err = api_error(batch(&s.client, &bad).await.unwrap_err());
    assert_eq!(err.code, 422);
    assert_eq!(err.details.unwrap().causes[0].field, "operations[1].object.data.k");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(s.client.clone());
    assert!(
        namespaces.get_opt("team").await.unwrap().is_none(),
        "nothing of a rejected batch lands"
    );

    // An object in a namespace that neither exists nor comes with the batch is named.
    let orphan = Batch {
        operations: vec![op(BatchVerb::Create, cm("lost", json!({})), None)],
        dry_run: false,
        origin: None,
    };
    let err = api_error(batch(&s.client, &orphan).await.unwrap_err());
    assert_eq!(err.code, 422);
    assert_eq!(
        err.details.unwrap().causes[0].field,
        "operations[0].object.metadata.namespace"
    );

    // A namespace and objects in it land together, at one revision.
    let good = Batch {
        operations: vec![
            op(BatchVerb::Create, ns, None),
            op(BatchVerb::Create, cm("a", json!({"k": "1"})), None),
        ],
        dry_run: false,
        origin: None,
    };
    let result = batch(&s.client, &good).await.unwrap();
    let rvs: Vec<_> = result
        .objects
        .iter()
        .map(|o| o["metadata"]["resourceVersion"].clone())
        .collect();
    assert_eq!(rvs[0], rvs[1]);
    assert_eq!(rvs[0], json!(result.revision.to_string()));

    // A stale precondition fails the batch, and the other operation with it.
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), "team");
    let stale = Some("1".to_string());
    let conflicting = Batch {
        operations: vec![
            op(BatchVerb::Create, cm("b", json!({})), None),
            op(BatchVerb::Update, cm("a", json!({"k": "2"})), stale),
        ],
        dry_run: false,
        origin: None,
    };
    let err = api_error(batch(&s.client, &conflicting).await.unwrap_err());
    assert_eq!(err.code, 409);
    assert!(cms.get_opt("b").await.unwrap().is_none());
    assert_eq!(cms.get("a").await.unwrap().data.unwrap()["k"], "1");

    // Update and delete in one batch.
    let live = cms.get("a").await.unwrap().metadata.resource_version;
    let mixed = Batch {
        operations: vec![
            op(BatchVerb::Delete, cm("a", json!({})), live),
            op(BatchVerb::Create, cm("c", json!({})), None),
        ],
        dry_run: false,
        origin: None,
    };
    batch(&s.client, &mixed).await.unwrap();
    assert!(cms.get_opt("a").await.unwrap().is_none() && cms.get_opt("c").await.unwrap().is_some());
    s.stop().await;
}

fn pod(name: &str, cpu: &str) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"containers": [
        {"name": "c", "image": "busybox", "command": ["true"], "resources": {"requests": {"cpu": cpu}}}]}}))
    .unwrap()
}

#[tokio::test]
async fn subresources_and_the_scheduler() {
    let s = start().await;
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), "default");

    // status changes only through /status.
    let p = pods.create(&PostParams::default(), &pod("s", "1m")).await.unwrap();
    assert_eq!(p.status.as_ref().and_then(|st| st.phase.as_deref()), Some("Pending"));
    let patched = pods
        .patch_status(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.status.unwrap().phase.as_deref(), Some("Running"));
    let ignored = pods
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Failed"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        ignored.status.unwrap().phase.as_deref(),
        Some("Running"),
        "the main endpoint ignores status"
    );
    pods.delete("s", &Default::default()).await.unwrap();

    // The scheduler binds what fits and explains what does not.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let scheduler = tokio::spawn(kairn_cluster::scheduler::run(s.client.clone(), stopped));
    let nodes: Api<Node> = Api::all(s.client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let node_status = json!({"status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "10"},
        "conditions": [{"type": "Ready", "status": "True"}]}});
    nodes
        .patch_status("n1", &PatchParams::default(), &Patch::Merge(node_status))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("fits", "500m")).await.unwrap();
    pods.create(&PostParams::default(), &pod("too-big", "4")).await.unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let fits = pods.get("fits").await.unwrap();
        let big = pods.get("too-big").await.unwrap();
        let bound = fits.spec.as_ref().and_then(|s| s.node_name.clone());
        let why = big
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "PodScheduled");
        if bound.is_some() && why.is_some() {
            assert_eq!(bound.as_deref(), Some("n1"));
            let why = why.unwrap();
            assert_eq!(
                (why.status.as_str(), why.reason.as_deref()),
                ("False", Some("Unschedulable"))
            );
            assert!(why.message.unwrap_or_default().contains("Insufficient cpu"));
            assert!(big.spec.unwrap().node_name.is_none());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "scheduler did not act within 20s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A node with room appearing is noticed at once (not at the next retry).
    let big_node: Node = serde_json::from_value(json!({"metadata": {"name": "n2"}})).unwrap();
    nodes.create(&PostParams::default(), &big_node).await.unwrap();
    let big_status = json!({"status": {"allocatable": {"cpu": "8", "memory": "8Gi", "pods": "10"},
        "conditions": [{"type": "Ready", "status": "True"}]}});
    nodes
        .patch_status("n2", &PatchParams::default(), &Patch::Merge(big_status))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pods
        .get("too-big")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.node_name)
        .as_deref()
        != Some("n2")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "a pending pod was not bound when a node fit it"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A pod binds once: a second binding is a conflict.
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "fits"}, "target": {"kind": "Node", "name": "n2"}});
    let request = kube::core::Request::new("/api/v1/namespaces/default/pods")
        .create_subresource(
            "binding",
            "fits",
            &PostParams::default(),
            serde_json::to_vec(&binding).unwrap(),
        )
        .unwrap();
    let err = api_error(s.client.request::<serde_json::Value>(request).await.unwrap_err());
    assert_eq!(err.code, 409);
    let _ = stop.send(true);
    let _ = scheduler.await;
    s.stop().await;
}
