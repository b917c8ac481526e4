//! What the API server admits and refuses, through kube-rs against a real member: every
//! served kind round-trips, validation errors are 422 `Invalid` with Kubernetes' causes,
//! immutable fields stay, a Service's cluster IP is its own, bodies over 3 MiB are 413,
//! and unknown tokens are 401.

mod common;

use common::start;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, PersistentVolume, PersistentVolumeClaim, ReplicationController, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

fn invalid(e: kube::Error) -> Vec<(String, String)> {
    match e {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{}", s.message);
            s.details
                .map(|d| d.causes.into_iter().map(|c| (c.field, c.reason)).collect())
                .unwrap_or_default()
        }
        other => panic!("expected 422, got {other}"),
    }
}

async fn round_trip<K>(api: Api<K>, obj: Value) -> K
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let typed: K = serde_json::from_value(obj).unwrap();
    let created = api.create(&PostParams::default(), &typed).await.unwrap();
    let got = api.get(&created.name_any()).await.unwrap();
    assert!(got.meta().uid.is_some());
    got
}

fn template(app: &str, restart: &str) -> Value {
    json!({"metadata": {"labels": {"app": app}}, "spec": {"restartPolicy": restart,
        "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "1"]}]}})
}

#[tokio::test]
async fn every_kind_round_trips_with_its_defaults() {
    let s = start().await;
    let c = &s.client;
    let svc: Service = round_trip(
        Api::namespaced(c.clone(), "default"),
        json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
    )
    .await;
    let spec = svc.spec.unwrap();
    assert!(spec.cluster_ip.unwrap().starts_with("10."));
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(
        spec.ports.unwrap()[0].target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(80))
    );
    round_trip::<Endpoints>(
        Api::namespaced(c.clone(), "default"),
        json!({"metadata": {"name": "web"}, "subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]}),
    )
    .await;
    round_trip::<EndpointSlice>(
        Api::namespaced(c.clone(), "default"),
        json!({"metadata": {"name": "web-1"}, "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"]}]}),
    )
    .await;
    round_trip::<ServiceAccount>(
        Api::namespaced(c.clone(), "default"),
        json!({"metadata": {"name": "robot"}}),
    )
    .await;
    let ds: DaemonSet = round_trip(
        Api::namespaced(c.clone(), "default"),
        json!({"metadata": {"name": "agent"}, "spec": {"selector": {"matchLabels": {"app": "agent"}},
            "template": template("agent", "Always")}}),
    )
    .await;
    assert_eq!(
        ds.spec.unwrap().update_strategy.unwrap().type_.as_deref(),
        Some("RollingUpdate")
    );
    let job: Job = round_trip(
        Api::namespaced(c.clone(), "default"),
        json!({"metadata": {"name": "once"}, "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox"}]}}}}),
    )
    .await;
    let selector = job.spec.unwrap().selector.unwrap().match_labels.unwrap();
    assert!(
        selector.contains_key("batch.kubernetes.io/controller-uid"),
        "a generated selector"
    );
    let pc: PriorityClass = round_trip(
        Api::all(c.clone()),
        json!({"metadata": {"name": "high"}, "value": 1000}),
    )
    .await;
    assert_eq!(pc.preemption_policy.as_deref(), Some("PreemptLowerPriority"));
    round_trip::<StatefulSet>(
        Api::namespaced(c.clone(), "default"),
        json!({"metadata": {"name": "db"}, "spec": {"serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": template("db", "Always")}}),
    )
    .await;
    round_trip::<CronJob>(
        Api::namespaced(c.clone(), "default"),
        json!({"metadata": {"name": "nightly"}, "spec": {"schedule": "0 3 * * *",
            "jobTemplate": {"spec": {"template": template("nightly", "OnFailure")}}}}),
    )
    .await;
    round_trip::<ReplicationController>(
        Api::namespaced(c.clone(), "default"),
        json!({"metadata": {"name": "old"}, "spec": {"template": template("old", "Always")}}),
    )
    .await;
    round_trip::<Ingress>(
        Api::namespaced(c.clone(), "default"),
        json!({"metadata": {"name": "front"}, "spec": {"rules": [{"host": "example.com", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}),
    )
    .await;
    let pvc: PersistentVolumeClaim = round_trip(
        Api::namespaced(c.clone(), "default"),
        json!({"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}}}),
    )
    .await;
    assert_eq!(pvc.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
    round_trip::<PersistentVolume>(
        Api::all(c.clone()),
        json!({"metadata": {"name": "pv1"}, "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "hostPath": {"path": "/tmp/pv1"}}}),
    )
    .await;
    s.stop().await;
}

#[tokio::test]
async fn invalid_objects_are_refused_naming_each_field() {
    let s = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), "default");
    let bad: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "Bad_Name", "labels": {"bad key": "v"}},
        "data": {"no/slash": "x"}}))
    .unwrap();
    let causes = invalid(cms.create(&PostParams::default(), &bad).await.unwrap_err());
    let fields: Vec<&str> = causes.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(fields, ["metadata.name", "metadata.labels", "data[no/slash]"]);

    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), "default");
    let mut d = json!({"metadata": {"name": "web"}, "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x",
            "resources": {"requests": {"cpu": "lots"}}}]}}}});
    let causes = invalid(
        deployments
            .create(&PostParams::default(), &serde_json::from_value(d.clone()).unwrap())
            .await
            .unwrap_err(),
    );
    assert_eq!(causes[0].0, "spec.template.spec.containers[0].resources.requests[cpu]");
    d["spec"]["template"]["spec"]["containers"][0]["resources"] = json!({});
    deployments
        .create(&PostParams::default(), &serde_json::from_value(d).unwrap())
        .await
        .unwrap();
    // The selector is fixed once created.
    let moved = json!({"spec": {"selector": {"matchLabels": {"app": "web", "tier": "x"}},
        "template": {"metadata": {"labels": {"app": "web", "tier": "x"}}}}});
    let causes = invalid(
        deployments
            .patch("web", &PatchParams::default(), &Patch::Merge(moved))
            .await
            .unwrap_err(),
    );
    assert_eq!(causes, [("spec.selector".to_string(), "FieldValueInvalid".to_string())]);
    s.stop().await;
}

#[tokio::test]
async fn a_cluster_ip_belongs_to_one_service() {
    let s = start().await;
    let services: Api<Service> = Api::namespaced(s.client.clone(), "default");
    let svc = |name: &str, ip: &str| -> Service {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"clusterIP": ip, "ports": [{"port": 80}]}}))
            .unwrap()
    };
    services
        .create(&PostParams::default(), &svc("one", "10.96.10.10"))
        .await
        .unwrap();
    let causes = invalid(
        services
            .create(&PostParams::default(), &svc("two", "10.96.10.10"))
            .await
            .unwrap_err(),
    );
    assert_eq!(causes[0].0, "spec.clusterIPs");
    // Changing it is refused; leaving it out of a replacement keeps it.
    let causes = invalid(
        services
            .patch(
                "one",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"clusterIP": "10.96.10.11"}})),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(causes[0].0, "spec.clusterIPs[0]");
    let mut replacement = services.get("one").await.unwrap();
    replacement.spec.as_mut().unwrap().cluster_ip = None;
    replacement.spec.as_mut().unwrap().cluster_ips = None;
    let replaced = services
        .replace("one", &PostParams::default(), &replacement)
        .await
        .unwrap();
    assert_eq!(replaced.spec.unwrap().cluster_ip.as_deref(), Some("10.96.10.10"));
    // Deleting the Service frees its address.
    services.delete("one", &DeleteParams::default()).await.unwrap();
    services
        .create(&PostParams::default(), &svc("two", "10.96.10.10"))
        .await
        .unwrap();
    s.stop().await;
}

#[tokio::test]
async fn bodies_are_bounded_and_every_request_has_a_user() {
    let s = start().await;
    let big = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"},
        "data": {"blob": "x".repeat(3 * 1024 * 1024 + 1)}});
    let (status, _, body) = s
        .request(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            &[("content-type", "application/json")],
            big.to_string(),
        )
        .await;
    assert_eq!(status.as_u16(), 413);
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(err["reason"], "RequestEntityTooLarge");
    assert_eq!(err["message"], "Request entity too large: limit is 3145728");

    // A token the server does not know: 401 on the API, public endpoints still answer.
    let mut config = kube::Config::new(s.member().api_url().parse().unwrap());
    config.auth_info.token = Some("not-a-token".to_string().into());
    config.root_cert = Some(vec![s.member().ca_der().unwrap()]);
    let stranger = kube::Client::try_from(config).unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(stranger.clone(), "default");
    match cms.list(&Default::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!((e.code, e.reason.as_str()), (401, "Unauthorized")),
        other => panic!("expected 401, got {other:?}"),
    }
    assert!(stranger.apiserver_version().await.is_ok(), "/version is public");
    s.stop().await;
}
