//! ResourceQuota and LimitRange against a real member with the quota controller running:
//! LimitRange defaults land on new pods and its bounds refuse pods with Kubernetes'
//! messages; quotas count pods, compute resources and objects, refuse what would exceed
//! them (403, `exceeded quota: ...`), give usage back on deletion and when pods finish,
//! hold under concurrent creates, and read as kubectl prints them.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{start, wait_for, wait_until, Server};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, LimitRange, Namespace, Pod, ResourceQuota, Secret};
use kairn_cluster::api::auth;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;

/// A member with the quota controller running.
struct Quotas {
    s: Server,
    stop: watch::Sender<bool>,
    controller: tokio::task::JoinHandle<()>,
}

async fn quotas() -> Quotas {
    let s = start().await;
    let (stop, rx) = watch::channel(false);
    let client = s.member().client_as(auth::CONTROLLER_MANAGER).unwrap();
    let controller = tokio::spawn(kairn_cluster::controllers::resourcequota::run(client, rx));
    Quotas { s, stop, controller }
}

impl Quotas {
    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.controller)
            .await
            .unwrap()
            .unwrap();
        self.s.stop().await;
    }

    fn api<K>(&self, ns: &str) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.s.client.clone(), ns)
    }

    async fn namespace(&self, ns: &str) {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        Api::<Namespace>::all(self.s.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
    }

    /// Creates a quota and waits until the controller has counted it.
    async fn quota(&self, ns: &str, name: &str, hard: Value) -> ResourceQuota {
        let api: Api<ResourceQuota> = self.api(ns);
        let q: ResourceQuota =
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"hard": hard}})).unwrap();
        api.create(&PostParams::default(), &q).await.unwrap();
        let want: Vec<String> = hard.as_object().unwrap().keys().cloned().collect();
        wait_for(
            &format!("quota {ns}/{name} counted"),
            Duration::from_secs(20),
            || async {
                let q = api.get(name).await.ok()?;
                let status = q.status.clone()?;
                let (hard, used) = (status.hard?, status.used?);
                let counted = want.iter().all(|k| hard.contains_key(k) && used.contains_key(k));
                counted.then_some(q)
            },
        )
        .await
    }

    /// `status.used[resource]` of a quota, as stored.
    async fn used(&self, ns: &str, name: &str, resource: &str) -> Option<String> {
        let q = self.api::<ResourceQuota>(ns).get(name).await.ok()?;
        q.status?.used?.get(resource).map(|v| v.0.clone())
    }
}

async fn create<K>(api: &Api<K>, obj: Value) -> Result<K, kube::Error>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let typed: K = serde_json::from_value(obj).unwrap();
    api.create(&PostParams::default(), &typed).await
}

fn pod(name: &str, resources: Value) -> Value {
    json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "busybox", "resources": resources}]}})
}

/// The 403 of a refused write: its message.
fn forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"), "{}", s.message);
            s.message
        }
        other => panic!("expected 403 Forbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn limit_ranges_fill_in_defaults_and_refuse_pods_over_the_max() {
    let t = quotas().await;
    t.namespace("limits").await;
    let ranges: Api<LimitRange> = t.api("limits");
    let lr = create(
        &ranges,
        json!({"metadata": {"name": "lr"}, "spec": {"limits": [{"type": "Container",
            "max": {"cpu": "1", "memory": "1Gi"},
            "default": {"cpu": "500m"}, "defaultRequest": {"cpu": "100m"}}]}}),
    )
    .await
    .unwrap();
    // The memory default comes from the max, as Kubernetes defaults a LimitRange.
    let item = &lr.spec.unwrap().limits[0];
    assert_eq!(item.default.as_ref().unwrap()["memory"].0, "1Gi");
    assert_eq!(item.default_request.as_ref().unwrap()["memory"].0, "1Gi");

    if let Some(out) = common::kubectl(&t.s, &["describe", "limitrange", "lr", "-n", "limits"]).await {
        // Type, Resource, Min, Max, Default Request, Default Limit, Max Limit/Request Ratio.
        let row: Vec<&str> = out
            .lines()
            .find(|l| l.starts_with("Container") && l.contains("cpu"))
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(row, ["Container", "cpu", "-", "1", "100m", "500m", "-"], "{out}");
    }

    let pods: Api<Pod> = t.api("limits");
    let plain = create(&pods, pod("plain", json!({}))).await.unwrap();
    let stored = pods.get("plain").await.unwrap();
    for p in [&plain, &stored] {
        let resources = serde_json::to_value(&p.spec.as_ref().unwrap().containers[0].resources).unwrap();
        assert_eq!(
            resources,
            json!({"requests": {"cpu": "100m", "memory": "1Gi"}, "limits": {"cpu": "500m", "memory": "1Gi"}})
        );
        assert_eq!(
            p.metadata.annotations.as_ref().unwrap()["kubernetes.io/limit-ranger"],
            "LimitRanger plugin set: cpu, memory request for container c; cpu, memory limit for container c"
        );
    }
    assert_eq!(
        stored.status.unwrap().qos_class.as_deref(),
        Some("Burstable"),
        "the QoS class follows the defaults"
    );

    let big = create(&pods, pod("big", json!({"limits": {"cpu": "2"}}))).await;
    assert_eq!(
        forbidden(big),
        "pods \"big\" is forbidden: maximum cpu usage per Container is 1, but limit is 2"
    );
    assert!(pods.get_opt("big").await.unwrap().is_none());

    // A LimitRange whose default is over its max is invalid.
    let bad = create(
        &ranges,
        json!({"metadata": {"name": "bad"}, "spec": {"limits": [{"type": "Container",
            "max": {"cpu": "1"}, "default": {"cpu": "2"}}]}}),
    )
    .await;
    match bad {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{}", s.message);
            assert!(
                s.message.contains("default value 2 is greater than max value 1"),
                "{}",
                s.message
            );
        }
        other => panic!("expected 422, got {other:?}"),
    }
    t.stop().await;
}

#[tokio::test]
async fn a_pod_quota_admits_up_to_its_hard_limit_and_frees_room_on_delete() {
    let t = quotas().await;
    t.namespace("team").await;
    let q = t.quota("team", "pods", json!({"pods": "2"})).await;
    assert_eq!(q.status.unwrap().used.unwrap()["pods"].0, "0");

    let pods: Api<Pod> = t.api("team");
    create(&pods, pod("p1", json!({}))).await.unwrap();
    create(&pods, pod("p2", json!({}))).await.unwrap();
    assert_eq!(t.used("team", "pods", "pods").await.as_deref(), Some("2"));
    let third = create(&pods, pod("p3", json!({}))).await;
    assert_eq!(
        forbidden(third),
        "pods \"p3\" is forbidden: exceeded quota: pods, requested: pods=1, used: pods=2, limited: pods=2"
    );

    if let Some(out) = common::kubectl(&t.s, &["describe", "quota", "pods", "-n", "team"]).await {
        let header = out.lines().find(|l| l.starts_with("Resource")).unwrap_or_default();
        assert!(header.contains("Used") && header.contains("Hard"), "{out}");
        let row: Vec<&str> = out
            .lines()
            .find(|l| l.starts_with("pods"))
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(row, ["pods", "2", "2"], "{out}");
        let listed = common::kubectl(&t.s, &["get", "quota", "-n", "team"]).await.unwrap();
        assert!(listed.contains("pods: 2/2"), "{listed}");
    }

    // An unscheduled pod goes at once, and its pod is given back in the same write.
    pods.delete("p1", &DeleteParams::default()).await.unwrap();
    assert_eq!(t.used("team", "pods", "pods").await.as_deref(), Some("1"));
    create(&pods, pod("p3", json!({}))).await.unwrap();
    assert_eq!(t.used("team", "pods", "pods").await.as_deref(), Some("2"));

    // Deleting the quota lifts the limit.
    t.api::<ResourceQuota>("team")
        .delete("pods", &DeleteParams::default())
        .await
        .unwrap();
    create(&pods, pod("p4", json!({}))).await.unwrap();
    t.stop().await;
}

#[tokio::test]
async fn object_count_quotas_count_what_was_there_and_what_comes() {
    let t = quotas().await;
    t.namespace("objects").await;
    let secrets: Api<Secret> = t.api("objects");
    create(
        &secrets,
        json!({"metadata": {"name": "before"}, "stringData": {"k": "v"}}),
    )
    .await
    .unwrap();
    t.quota(
        "objects",
        "counts",
        json!({"count/configmaps": "2", "secrets": "5", "count/deployments.apps": "1"}),
    )
    .await;
    assert_eq!(t.used("objects", "counts", "secrets").await.as_deref(), Some("1"));

    let cms: Api<ConfigMap> = t.api("objects");
    for name in ["c1", "c2"] {
        create(&cms, json!({"metadata": {"name": name}})).await.unwrap();
    }
    let third = create(&cms, json!({"metadata": {"name": "c3"}})).await;
    assert_eq!(
        forbidden(third),
        "configmaps \"c3\" is forbidden: exceeded quota: counts, requested: count/configmaps=1, \
         used: count/configmaps=2, limited: count/configmaps=2"
    );
    cms.delete("c1", &DeleteParams::default()).await.unwrap();
    create(&cms, json!({"metadata": {"name": "c3"}})).await.unwrap();

    let deploys: Api<Deployment> = t.api("objects");
    let deploy = |name: &str| {
        json!({"metadata": {"name": name}, "spec": {"selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}})
    };
    create(&deploys, deploy("web")).await.unwrap();
    let second = create(&deploys, deploy("api")).await;
    assert!(
        forbidden(second).contains("exceeded quota: counts, requested: count/deployments.apps=1"),
        "deployments count as count/deployments.apps"
    );
    assert_eq!(
        t.used("objects", "counts", "count/configmaps").await.as_deref(),
        Some("2")
    );
    t.stop().await;
}

#[tokio::test]
async fn concurrent_creates_never_pass_the_quota_together() {
    let t = quotas().await;
    t.namespace("burst").await;
    t.quota("burst", "five", json!({"pods": "5"})).await;
    let pods: Arc<Api<Pod>> = Arc::new(t.api("burst"));
    let creates: Vec<_> = (0..20)
        .map(|i| {
            let pods = pods.clone();
            tokio::spawn(async move { create(&pods, pod(&format!("p{i}"), json!({}))).await })
        })
        .collect();
    let (mut admitted, mut refused) = (0, 0);
    for c in creates {
        match c.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(e) => {
                let message = forbidden::<()>(Err(e));
                assert!(message.contains("exceeded quota: five"), "{message}");
                refused += 1;
            }
        }
    }
    assert_eq!((admitted, refused), (5, 15));
    assert_eq!(pods.list(&Default::default()).await.unwrap().items.len(), 5);
    assert_eq!(t.used("burst", "five", "pods").await.as_deref(), Some("5"));
    t.stop().await;
}

#[tokio::test]
async fn compute_quotas_need_requests_and_stop_counting_finished_pods() {
    let t = quotas().await;
    t.namespace("compute").await;
    t.quota("compute", "cpu", json!({"requests.cpu": "1", "limits.memory": "1Gi"}))
        .await;
    let pods: Api<Pod> = t.api("compute");
    let bare = create(&pods, pod("bare", json!({}))).await;
    assert_eq!(
        forbidden(bare),
        "pods \"bare\" is forbidden: failed quota: cpu: must specify limits.memory for: c; requests.cpu for: c"
    );
    let sized = json!({"requests": {"cpu": "600m"}, "limits": {"memory": "512Mi"}});
    create(&pods, pod("a", sized.clone())).await.unwrap();
    let over = create(&pods, pod("b", sized.clone())).await;
    assert_eq!(
        forbidden(over),
        "pods \"b\" is forbidden: exceeded quota: cpu, requested: requests.cpu=600m, \
         used: requests.cpu=600m, limited: requests.cpu=1"
    );
    assert_eq!(
        t.used("compute", "cpu", "limits.memory").await.as_deref(),
        Some("512Mi")
    );

    // A finished pod uses no compute: its requests are given back.
    pods.patch_status(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
    )
    .await
    .unwrap();
    assert_eq!(t.used("compute", "cpu", "requests.cpu").await.as_deref(), Some("0"));
    create(&pods, pod("b", sized)).await.unwrap();

    // A LimitRange's defaults make a bare pod acceptable to the quota.
    let ranges: Api<LimitRange> = t.api("compute");
    create(
        &ranges,
        json!({"metadata": {"name": "defaults"}, "spec": {"limits": [{"type": "Container",
            "default": {"memory": "256Mi"}, "defaultRequest": {"cpu": "100m"}}]}}),
    )
    .await
    .unwrap();
    create(&pods, pod("bare", json!({}))).await.unwrap();
    wait_until("usage counted", Duration::from_secs(5), || async {
        t.used("compute", "cpu", "requests.cpu").await.as_deref() == Some("700m")
    })
    .await;
    assert_eq!(
        t.used("compute", "cpu", "limits.memory").await.as_deref(),
        Some("768Mi")
    );
    t.stop().await;
}

#[tokio::test]
async fn the_controller_mirrors_hard_limits_and_repairs_drift() {
    let t = quotas().await;
    t.namespace("drift").await;
    let pods: Api<Pod> = t.api("drift");
    create(&pods, pod("p1", json!({}))).await.unwrap();
    t.quota("drift", "q", json!({"pods": "3"})).await;
    assert_eq!(t.used("drift", "q", "pods").await.as_deref(), Some("1"));
    let quotas: Api<ResourceQuota> = t.api("drift");

    // A new limit is mirrored and counted; the tracked one keeps its count.
    quotas
        .patch(
            "q",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"hard": {"pods": "5", "count/pods": "10"}}})),
        )
        .await
        .unwrap();
    wait_until("hard mirrored", Duration::from_secs(10), || async {
        let q = quotas.get("q").await.unwrap();
        let status = q.status.unwrap_or_default();
        let hard = status.hard.unwrap_or_default();
        hard.get("pods").map(|v| v.0.as_str()) == Some("5")
            && status.used.unwrap_or_default().get("count/pods").map(|v| v.0.as_str()) == Some("1")
    })
    .await;

    // A wrong count (as if objects were given back before the quota counted them) is
    // corrected once it has lasted.
    quotas
        .patch_status(
            "q",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"used": {"pods": "4"}}})),
        )
        .await
        .unwrap();
    wait_until("drift repaired", Duration::from_secs(15), || async {
        t.used("drift", "q", "pods").await.as_deref() == Some("1")
    })
    .await;
    create(&pods, pod("p2", json!({}))).await.unwrap();
    assert_eq!(t.used("drift", "q", "pods").await.as_deref(), Some("2"));
    t.stop().await;
}
