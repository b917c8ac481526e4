//! The garbage collector and the namespace controller against a real one-member cluster,
//! driven through kube-rs as kubectl would: background, foreground and orphan deletion of
//! owners, a Deployment taking its ReplicaSet and pods with it, a re-created owner that is
//! not the owner, and a namespace deleted with everything in it.

mod common;

use std::time::Duration;

use common::wait_until;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kairn_cluster::api::auth;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

/// How long anything here may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// A member with the controller manager running as `system:kube-controller-manager`.
struct Cluster {
    server: common::Server,
    shutdown: watch::Sender<bool>,
}

impl Cluster {
    async fn start() -> Self {
        let server = common::start().await;
        let client = server
            .member()
            .client_as(auth::CONTROLLER_MANAGER)
            .expect("controller manager client");
        let (shutdown, rx) = watch::channel(false);
        tokio::spawn(kairn_cluster::controllers::run(client, rx));
        Cluster { server, shutdown }
    }

    fn api<K>(&self, ns: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.server.client.clone(), ns)
    }

    async fn stop(self) {
        self.shutdown.send_replace(true);
        self.server.stop().await;
    }
}

/// Polls `check` until it holds, or panics naming `what` after `deadline`.
async fn gone<K>(api: &Api<K>, name: &str) -> bool
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.expect("get").is_none()
}

fn config_map(name: &str, owners: Vec<OwnerReference>, finalizers: &[&str]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            owner_references: (!owners.is_empty()).then_some(owners),
            finalizers: (!finalizers.is_empty()).then(|| finalizers.iter().map(|f| f.to_string()).collect()),
            ..ObjectMeta::default()
        },
        data: Some([("k".to_string(), "v".to_string())].into()),
        ..ConfigMap::default()
    }
}

fn owned_by(owner: &ConfigMap, block: bool) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: owner.name_any(),
        uid: owner.uid().expect("uid"),
        controller: None,
        block_owner_deletion: block.then_some(true),
    }
}

async fn create(api: &Api<ConfigMap>, cm: ConfigMap) -> ConfigMap {
    api.create(&PostParams::default(), &cm).await.expect("create")
}

async fn drop_finalizers(api: &Api<ConfigMap>, name: &str) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("remove finalizers");
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "app:1"}]},
            },
        },
    }))
    .expect("deployment")
}

#[tokio::test]
async fn background_delete_collects_dependents_down_the_chain() {
    let c = Cluster::start().await;
    let cms: Api<ConfigMap> = c.api("default");
    let owner = create(&cms, config_map("owner", vec![], &[])).await;
    let child = create(&cms, config_map("child", vec![owned_by(&owner, false)], &[])).await;
    create(&cms, config_map("grandchild", vec![owned_by(&child, false)], &[])).await;
    let bystander = create(&cms, config_map("bystander", vec![], &[])).await;

    cms.delete("owner", &DeleteParams::default()).await.expect("delete");
    wait_until("the child and grandchild to be collected", DEADLINE, || async {
        gone(&cms, "child").await && gone(&cms, "grandchild").await
    })
    .await;
    let left = cms.get("bystander").await.expect("bystander stays");
    assert_eq!(left.uid(), bystander.uid());
    c.stop().await;
}

#[tokio::test]
async fn foreground_delete_waits_for_blocking_dependents() {
    let c = Cluster::start().await;
    let cms: Api<ConfigMap> = c.api("default");
    let owner = create(&cms, config_map("owner", vec![], &[])).await;
    // Held by a finalizer of its own, so the owner visibly waits for it.
    create(
        &cms,
        config_map("blocking", vec![owned_by(&owner, true)], &["example.com/hold"]),
    )
    .await;
    create(&cms, config_map("loose", vec![owned_by(&owner, false)], &[])).await;

    cms.delete("owner", &DeleteParams::foreground()).await.expect("delete");
    wait_until("the dependents to be deleted", DEADLINE, || async {
        let blocking = cms.get("blocking").await.expect("blocking is held by its finalizer");
        blocking.metadata.deletion_timestamp.is_some() && gone(&cms, "loose").await
    })
    .await;
    let waiting = cms.get("owner").await.expect("the owner waits");
    assert!(waiting.metadata.deletion_timestamp.is_some());
    assert_eq!(waiting.finalizers(), ["foregroundDeletion".to_string()]);

    drop_finalizers(&cms, "blocking").await;
    wait_until("the owner to go once its dependent is gone", DEADLINE, || async {
        gone(&cms, "blocking").await && gone(&cms, "owner").await
    })
    .await;
    c.stop().await;
}

#[tokio::test]
async fn orphan_delete_keeps_dependents_without_the_reference() {
    let c = Cluster::start().await;
    let cms: Api<ConfigMap> = c.api("default");
    let owner = create(&cms, config_map("owner", vec![], &[])).await;
    let other = create(&cms, config_map("other", vec![], &[])).await;
    create(
        &cms,
        config_map("dependent", vec![owned_by(&owner, true), owned_by(&other, false)], &[]),
    )
    .await;

    cms.delete("owner", &DeleteParams::orphan()).await.expect("delete");
    wait_until("the orphaned owner to go", DEADLINE, || async {
        gone(&cms, "owner").await
    })
    .await;
    let dependent = cms.get("dependent").await.expect("the dependent stays");
    assert_eq!(dependent.owner_references(), [owned_by(&other, false)]);
    c.stop().await;
}

#[tokio::test]
async fn deleting_a_deployment_takes_its_replicaset_and_pods() {
    let c = Cluster::start().await;
    let deploys: Api<Deployment> = c.api("default");
    let replicasets: Api<ReplicaSet> = c.api("default");
    let pods: Api<Pod> = c.api("default");
    deploys
        .create(&PostParams::default(), &deployment("web", 2))
        .await
        .expect("create");
    let everything = ListParams::default();
    wait_until("the replicaset and its two pods", DEADLINE, || async {
        replicasets.list(&everything).await.expect("list").items.len() == 1
            && pods.list(&everything).await.expect("list").items.len() == 2
    })
    .await;

    deploys.delete("web", &DeleteParams::default()).await.expect("delete");
    wait_until("the replicaset and pods to be collected", DEADLINE, || async {
        replicasets.list(&everything).await.expect("list").items.is_empty()
            && pods.list(&everything).await.expect("list").items.is_empty()
    })
    .await;
    c.stop().await;
}

#[tokio::test]
async fn a_recreated_owner_is_not_the_owner() {
    let c = Cluster::start().await;
    let cms: Api<ConfigMap> = c.api("default");

    // Deleted and re-created at once: the dependent still names the old uid.
    let first = create(&cms, config_map("owner", vec![], &[])).await;
    create(&cms, config_map("dependent", vec![owned_by(&first, false)], &[])).await;
    cms.delete("owner", &DeleteParams::default()).await.expect("delete");
    let second = create(&cms, config_map("owner", vec![], &[])).await;
    assert_ne!(first.uid(), second.uid());

    // A dependent naming a uid the collector saw go before it had dependents: only a read
    // of the owner's name (which now has another uid) can tell.
    let old = create(&cms, config_map("other", vec![], &[])).await;
    cms.delete("other", &DeleteParams::default()).await.expect("delete");
    wait_until("the old owner to go", DEADLINE, || async { gone(&cms, "other").await }).await;
    create(&cms, config_map("other", vec![], &[])).await;
    create(&cms, config_map("late-dependent", vec![owned_by(&old, false)], &[])).await;

    wait_until("the dependents of the old owners to be collected", DEADLINE, || async {
        gone(&cms, "dependent").await && gone(&cms, "late-dependent").await
    })
    .await;
    assert_eq!(cms.get("owner").await.expect("the new owner stays").uid(), second.uid());
    c.stop().await;
}

#[tokio::test]
async fn deleting_a_namespace_removes_its_content_then_itself() {
    let c = Cluster::start().await;
    let namespaces: Api<Namespace> = Api::all(c.server.client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some("doomed".into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    let cms: Api<ConfigMap> = c.api("doomed");
    let deploys: Api<Deployment> = c.api("doomed");
    let replicasets: Api<ReplicaSet> = c.api("doomed");
    let pods: Api<Pod> = c.api("doomed");
    create(&cms, config_map("plain", vec![], &[])).await;
    create(&cms, config_map("held", vec![], &["example.com/hold"])).await;
    deploys
        .create(&PostParams::default(), &deployment("web", 1))
        .await
        .expect("create deployment");
    let everything = ListParams::default();
    wait_until("the deployment's pod", DEADLINE, || async {
        pods.list(&everything).await.expect("list").items.len() == 1
    })
    .await;
    // Elsewhere: untouched.
    let default_cms: Api<ConfigMap> = c.api("default");
    create(&default_cms, config_map("elsewhere", vec![], &[])).await;

    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("delete namespace");
    wait_until("the content without finalizers to go", DEADLINE, || async {
        cms.list(&everything).await.expect("list").items.len() == 1
            && deploys.list(&everything).await.expect("list").items.is_empty()
            && replicasets.list(&everything).await.expect("list").items.is_empty()
            && pods.list(&everything).await.expect("list").items.is_empty()
    })
    .await;
    // New content is refused while it terminates.
    let refused = cms
        .create(&PostParams::default(), &config_map("late", vec![], &[]))
        .await;
    assert!(matches!(refused, Err(kube::Error::Api(s)) if s.code == 403));

    // The held ConfigMap keeps the namespace, and the conditions say why.
    wait_until("the conditions to name the finalizer", DEADLINE, || async {
        let ns = namespaces.get("doomed").await.expect("the namespace waits");
        let conditions = ns.status.and_then(|s| s.conditions).unwrap_or_default();
        let holds = |type_: &str, text: &str| {
            conditions.iter().any(|c| {
                c.type_ == type_ && c.status == "True" && c.message.as_deref().is_some_and(|m| m.contains(text))
            })
        };
        holds(
            "NamespaceFinalizersRemaining",
            "example.com/hold in 1 resource instances",
        ) && holds("NamespaceContentRemaining", "configmaps. has 1 resource instances")
    })
    .await;
    assert_eq!(
        namespaces
            .get("doomed")
            .await
            .expect("namespace")
            .spec
            .and_then(|s| s.finalizers),
        Some(vec!["kubernetes".to_string()])
    );

    drop_finalizers(&cms, "held").await;
    // What `kubectl delete namespace` waits for.
    wait_until("the namespace to go", DEADLINE, || async {
        gone(&namespaces, "doomed").await
    })
    .await;
    assert!(default_cms.get_opt("elsewhere").await.expect("get").is_some());
    c.stop().await;
}
