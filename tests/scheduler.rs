//! The scheduler's placement rules end to end, with real node agents: required
//! anti-affinity spreads pods over nodes and explains, Kubernetes-style, why the one too
//! many fits nowhere; a tainted node takes only tolerating pods; a high-priority pod
//! preempts a low-priority one; a second scheduler places only the pods that name it.

mod common;

use std::time::Duration;

use common::cluster::{start_agent, Members, Process};
use common::wait_for;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};

/// A pod running `sleep`, with `extra` merged into its spec.
fn pod(name: &str, labels: Value, extra: Value) -> Pod {
    let mut spec = json!({"terminationGracePeriodSeconds": 1,
        "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"]}]});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "spec": spec})).unwrap()
}

/// A pod asking for `milli` millicores on the node `node`, at `class` priority.
fn sized(name: &str, milli: i64, node: &str, class: &str) -> Pod {
    let mut p = pod(
        name,
        json!({}),
        json!({"priorityClassName": class, "nodeSelector": {"kubernetes.io/hostname": node}}),
    );
    if let Some(spec) = p.spec.as_mut() {
        spec.containers[0].resources = serde_json::from_value(json!({"requests": {"cpu": format!("{milli}m")}})).ok();
    }
    p
}

async fn node_of(pods: &Api<Pod>, name: &str) -> String {
    wait_for(&format!("{name} bound"), Duration::from_secs(30), || async {
        pods.get(name).await.ok()?.spec?.node_name
    })
    .await
}

/// The message of the pod's `PodScheduled=False` condition, once it has one.
async fn unschedulable_message(pods: &Api<Pod>, name: &str) -> String {
    wait_for(&format!("{name} unschedulable"), Duration::from_secs(30), || async {
        let pod = pods.get(name).await.ok()?;
        pod.status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
            .and_then(|c| c.message)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placement_rules_hold_with_real_agents() {
    let dir = tempfile::tempdir().unwrap();
    // No scheduler in the member: the test starts its own.
    let mut members = Members::new(dir.path(), 1, &["--components", "api,controllers"]);
    members.start_all();
    let client = members.client(1).await;
    let member_dir = members.node(1).dir.clone();
    let servers = members.api_urls();
    let mut agents = Vec::new();
    for name in ["n1", "n2", "n3"] {
        agents.push(start_agent(dir.path(), &member_dir.join("kubeconfig"), &servers, name, &client).await);
    }
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            "n3",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"taints": [{"key": "dedicated", "value": "special", "effect": "NoSchedule"}]}}),
            ),
        )
        .await
        .unwrap();
    let scheduler_kubeconfig = member_dir.join("scheduler.kubeconfig");
    let kubeconfig = scheduler_kubeconfig.to_str().unwrap();
    let mut scheduler = Process::start(
        &dir.path().join("scheduler"),
        "scheduler",
        &["scheduler", "--kubeconfig", kubeconfig, "--leader-elect", "false"],
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    println!("required anti-affinity by hostname: two pods on two nodes, the third fits nowhere");
    let spread = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "spread"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
    for name in ["spread-1", "spread-2"] {
        pods.create(
            &PostParams::default(),
            &pod(name, json!({"app": "spread"}), spread.clone()),
        )
        .await
        .unwrap();
    }
    let a = node_of(&pods, "spread-1").await;
    let b = node_of(&pods, "spread-2").await;
    assert_ne!(a, b, "anti-affinity put both on {a}");
    assert!(a != "n3" && b != "n3", "the tainted node took an intolerant pod");
    pods.create(
        &PostParams::default(),
        &pod("spread-3", json!({"app": "spread"}), spread.clone()),
    )
    .await
    .unwrap();
    let message = unschedulable_message(&pods, "spread-3").await;
    assert!(
        message.starts_with(
            "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: special}, \
             2 node(s) didn't match pod anti-affinity rules."
        ),
        "{message}"
    );
    assert!(message.contains("preemption: 0/3 nodes are available"), "{message}");
    // Written as Kubernetes' scheduler writes it: under its own name, through status.
    let managers: Vec<(String, Option<String>)> = pods
        .get("spread-3")
        .await
        .unwrap()
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .map(|m| (m.manager.unwrap_or_default(), m.subresource))
        .collect();
    assert!(
        managers.contains(&("kube-scheduler".into(), Some("status".into()))),
        "{managers:?}"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    wait_for("a FailedScheduling event", Duration::from_secs(30), || async {
        let list = events
            .list(&ListParams::default().fields("involvedObject.name=spread-3"))
            .await
            .ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("FailedScheduling"))
            .map(|_| ())
    })
    .await;

    println!("taints: plain pods avoid n3, a tolerating pod pinned to it lands there");
    for i in 0..4 {
        pods.create(
            &PostParams::default(),
            &pod(&format!("plain-{i}"), json!({}), json!({})),
        )
        .await
        .unwrap();
    }
    for i in 0..4 {
        assert_ne!(node_of(&pods, &format!("plain-{i}")).await, "n3");
    }
    let tolerant = json!({"nodeSelector": {"kubernetes.io/hostname": "n3"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "special", "effect": "NoSchedule"}]});
    pods.create(&PostParams::default(), &pod("tolerant", json!({}), tolerant))
        .await
        .unwrap();
    assert_eq!(node_of(&pods, "tolerant").await, "n3");

    println!("preemption: a high-priority pod evicts a low-priority one on a full node");
    let n1 = nodes.get("n1").await.unwrap();
    let cpu = n1
        .status
        .and_then(|s| s.allocatable)
        .and_then(|a| a.get("cpu").cloned())
        .unwrap();
    let milli = cpu.0.parse::<i64>().map(|c| c * 1000).unwrap_or(1000);
    let classes = json!([
        {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "low"}, "value": 10},
        {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "high"}, "value": 1000}]);
    let pcs: Api<k8s_openapi::api::scheduling::v1::PriorityClass> = Api::all(client.clone());
    for pc in classes.as_array().unwrap() {
        pcs.create(&PostParams::default(), &serde_json::from_value(pc.clone()).unwrap())
            .await
            .unwrap();
    }
    // Three quarters of n1 each: the two cannot share it.
    let share = milli * 3 / 4;
    pods.create(&PostParams::default(), &sized("victim", share, "n1", "low"))
        .await
        .unwrap();
    assert_eq!(node_of(&pods, "victim").await, "n1");
    let victim_uid = pods.get("victim").await.unwrap().metadata.uid;
    pods.create(&PostParams::default(), &sized("vip", share, "n1", "high"))
        .await
        .unwrap();
    let vip = pods.get("vip").await.unwrap();
    assert_eq!(
        vip.spec.as_ref().and_then(|s| s.priority),
        Some(1000),
        "priority admission"
    );
    assert_eq!(node_of(&pods, "vip").await, "n1");
    let now = pods.get_opt("victim").await.unwrap();
    assert!(
        now.is_none_or(|p| p.metadata.uid != victim_uid || p.metadata.deletion_timestamp.is_some()),
        "the victim was not evicted"
    );
    assert!(scheduler.log().contains("preempting"), "{}", scheduler.log());

    println!("a second scheduler places only the pods that name it");
    let mine = json!({"schedulerName": "my-scheduler"});
    pods.create(&PostParams::default(), &pod("mine", json!({}), mine))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = pods.get("mine").await.unwrap();
    assert_eq!(
        waiting.spec.and_then(|s| s.node_name),
        None,
        "the default scheduler took another's pod"
    );
    let mut second = Process::start(
        &dir.path().join("my-scheduler"),
        "my-scheduler",
        &[
            "scheduler",
            "--name",
            "my-scheduler",
            "--kubeconfig",
            kubeconfig,
            "--leader-elect",
            "false",
        ],
    );
    node_of(&pods, "mine").await;
    assert!(second.log().contains("default/mine"), "{}", second.log());
    assert!(
        !second.log().contains("default/plain-0"),
        "the second scheduler placed a default pod"
    );
    assert!(
        !scheduler.log().contains("default/mine"),
        "the default scheduler placed my-scheduler's pod"
    );
    second.stop();
    scheduler.stop();
    for mut agent in agents {
        agent.stop();
    }
}
