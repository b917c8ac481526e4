//! `kairn agent --simulate N`: hollow nodes registered against a real API server, Ready,
//! in their zones and tainted; a pod bound to one is reported Running with a pod IP, and
//! deleted gracefully, it goes; the agent stops at once on SIGTERM.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{Members, Process};
use common::wait_for;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::Api;

fn ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hollow_nodes_register_and_run_pods_that_are_not_there() {
    let dir = tempfile::tempdir().unwrap();
    // Only the API: no scheduler, no controllers; the test binds the pod itself.
    let mut members = Members::new(dir.path(), 1, &["--components", "api"]);
    members.start_all();
    let client = members.client(1).await;
    let kubeconfig = members.node(1).dir.join("kubeconfig");
    let mut agent = Process::start(
        &dir.path().join("agent"),
        "agent",
        &[
            "agent",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--simulate",
            "20",
            "--zones",
            "2",
            "--register-with-taints",
            "dedicated=sim:NoSchedule",
        ],
    );

    println!("20 hollow nodes, Ready, in two zones, tainted");
    let nodes: Api<Node> = Api::all(client.clone());
    let hollow = wait_for("20 Ready hollow nodes", Duration::from_secs(60), || async {
        let list = nodes.list(&ListParams::default().labels("type=hollow")).await.ok()?;
        (list.items.len() == 20 && list.items.iter().all(ready)).then_some(list.items)
    })
    .await;
    for node in &hollow {
        let name = node.metadata.name.clone().unwrap();
        let i: usize = name.strip_prefix("hollow-node-").unwrap().parse().unwrap();
        let labels = node.metadata.labels.clone().unwrap();
        assert_eq!(
            labels["topology.kubernetes.io/zone"],
            format!("zone-{}", i % 2),
            "{name}"
        );
        assert_eq!(labels["topology.kubernetes.io/region"], "region-0");
        assert_eq!(labels["kubernetes.io/hostname"], name);
        let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        assert_eq!(taints.len(), 1, "{name}: {taints:?}");
        assert_eq!(
            (
                taints[0].key.as_str(),
                taints[0].value.as_deref(),
                taints[0].effect.as_str()
            ),
            ("dedicated", Some("sim"), "NoSchedule")
        );
        let status = node.status.as_ref().unwrap();
        assert_eq!(status.capacity, status.allocatable);
        let capacity = status.capacity.clone().unwrap();
        assert_eq!(
            (
                capacity["cpu"].0.as_str(),
                capacity["memory"].0.as_str(),
                capacity["pods"].0.as_str()
            ),
            ("4", "32Gi", "110")
        );
    }
    assert!(
        agent.log().contains("registered hollow nodes"),
        "one line once all are registered:\n{}",
        agent.log()
    );

    println!("a pod bound to hollow-node-3 runs, with a pod IP");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {
            "nodeName": "hollow-node-3",
            "containers": [{"name": "main", "image": "nginx:1.27"}],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let running = wait_for("the pod Running", Duration::from_secs(30), || async {
        let pod = pods.get("web").await.ok()?;
        let status = pod.status.clone()?;
        (status.phase.as_deref() == Some("Running") && status.pod_ip.is_some()).then_some(pod)
    })
    .await;
    let status = running.status.unwrap();
    let host_ip = status.host_ip.unwrap();
    let address = hollow
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some("hollow-node-3"))
        .and_then(|n| n.status.as_ref()?.addresses.as_ref()?.first().cloned())
        .unwrap();
    assert_eq!(host_ip, address.address, "hostIP is the node's InternalIP");
    assert_ne!(status.pod_ip, Some(host_ip));
    let containers = status.container_statuses.unwrap();
    assert_eq!(containers.len(), 1);
    assert!(containers[0].ready);
    assert!(containers[0].state.as_ref().and_then(|s| s.running.as_ref()).is_some());

    println!("deleted with the default grace period, it goes at once");
    let asked = Instant::now();
    pods.delete("web", &DeleteParams::default()).await.unwrap();
    wait_for("the pod gone", Duration::from_secs(20), || async {
        pods.get_opt("web").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "the hollow node confirmed the deletion, rather than the grace period running out"
    );

    println!("each hollow node holds a Lease");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    wait_for("20 node Leases", Duration::from_secs(30), || async {
        let list = leases.list(&ListParams::default()).await.ok()?;
        let held = list
            .items
            .iter()
            .filter(|l| {
                l.spec
                    .as_ref()
                    .and_then(|s| s.holder_identity.as_deref())
                    .is_some_and(|h| h.starts_with("hollow-node-"))
            })
            .count();
        (held == 20).then_some(())
    })
    .await;

    println!("SIGTERM: the agent stops promptly");
    let asked = Instant::now();
    assert_eq!(agent.stop(), Some(0), "{}", agent.log());
    assert!(asked.elapsed() < Duration::from_secs(5), "{:?}", asked.elapsed());
}

#[test]
fn a_bad_taint_is_refused_naming_the_flag_and_the_entry() {
    let out = Command::new(env!("CARGO_BIN_EXE_kairn"))
        .args([
            "agent",
            "--simulate",
            "3",
            "--register-with-taints",
            "a=b:NoSchedule,dedicated=sim:Sometimes",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--register-with-taints \"dedicated=sim:Sometimes\""),
        "{stderr}"
    );
    assert!(stderr.contains("NoSchedule, PreferNoSchedule or NoExecute"), "{stderr}");
}
