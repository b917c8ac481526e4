//! Events expire after the API server's event TTL (kube-apiserver's `--event-ttl`),
//! through a store lease; other objects stay.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Event};
use kairn_cluster::api::ApiConfig;
use kairn_cluster::member::Member;
use kube::api::PostParams;
use kube::Api;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_deleted_after_the_event_ttl_and_other_objects_stay() {
    let dir = tempfile::tempdir().unwrap();
    let config = ApiConfig {
        event_ttl: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    let member = Member::start_local_with(&dir.path().join("store"), &[], config)
        .await
        .unwrap();
    let client = member.client().unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let config_maps: Api<ConfigMap> = Api::namespaced(client, "default");

    let event: Event = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "pod-a.started"},
        "involvedObject": {"kind": "Pod", "name": "pod-a", "namespace": "default"},
        "reason": "Started",
        "message": "Started container app",
        "type": "Normal",
    }))
    .unwrap();
    let config_map: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": "stays"}})).unwrap();
    let written = Instant::now();
    events.create(&PostParams::default(), &event).await.unwrap();
    config_maps.create(&PostParams::default(), &config_map).await.unwrap();
    assert!(events.get_opt("pod-a.started").await.unwrap().is_some());

    // 2 s of TTL, plus the lease's reuse window (a twentieth of it) and the lessor's tick.
    let deadline = written + Duration::from_secs(15);
    while events.get_opt("pod-a.started").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the event outlived its TTL by far");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lived = written.elapsed();
    println!("the event lived {lived:?}");
    assert!(
        lived >= Duration::from_secs(2),
        "the event went before its TTL: {lived:?}"
    );
    assert!(config_maps.get_opt("stays").await.unwrap().is_some());
    member.stop().await.unwrap();
}
