//! Node agents that die, end to end with real processes: an agent killed with -9 and
//! started again adopts the containers it left running (no duplicates, no restarts);
//! an agent that stays dead has its node marked unreachable and tainted, and its pods
//! are evicted after their toleration and replaced on the node that is left.

mod common;

use std::path::Path;
use std::time::Duration;

use common::cluster::{start_agent, Members, Process};
use common::wait_for;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

/// Processes on this machine whose command line is exactly `argv`.
fn processes(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
                .collect()
        })
        .unwrap_or_default()
}

fn running_on(pods: &[Pod]) -> Vec<(String, String)> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .map(|p| {
            (
                p.name_any(),
                p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
            )
        })
        .collect()
}

/// Starts agent `n1` (data in `dir/n1`) running the static pods of `manifests`, with
/// `extra` flags.
fn static_agent(dir: &Path, kubeconfig: &Path, manifests: &Path, extra: &[&str]) -> Process {
    let agent_dir = dir.join("n1");
    let mut args = vec![
        "agent",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--node-name",
        "n1",
        "--data-dir",
        agent_dir.to_str().unwrap(),
        "--log-addr",
        "127.0.0.1:0",
        "--manifest-dir",
        manifests.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Process::start(&agent_dir, "agent", &args)
}

fn container_id(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .container_id
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_agent_adopts_its_containers() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = Members::new(dir.path(), 1, &[]);
    members.start_all();
    let client = members.client(1).await;
    let kubeconfig = members.node(1).dir.join("kubeconfig");
    let servers = members.api_urls();
    let mut agent = start_agent(dir.path(), &kubeconfig, &servers, "n1", &client).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let argv = ["sleep", "36011"];
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "keep"},
        "spec": {"terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": "busybox", "command": argv}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let first = wait_for("the pod running", Duration::from_secs(60), || async {
        let p = pods.get("keep").await.ok()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Running")).then(|| container_id(&p))?
    })
    .await;
    assert_eq!(processes(&argv).len(), 1);

    // The agent dies; its container does not.
    agent.kill();
    assert_eq!(processes(&argv).len(), 1, "the container outlives its agent");
    let mut agent = start_agent(dir.path(), &kubeconfig, &servers, "n1", &client).await;
    // The new agent reports the same container, not a new one.
    wait_for("the new agent's report", Duration::from_secs(30), || async {
        let log = agent.log();
        log.contains("container adopted").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let p = pods.get("keep").await.unwrap();
    assert_eq!(container_id(&p), Some(first.clone()), "{}", agent.log());
    let restarts = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|c| c[0].restart_count);
    assert_eq!(restarts, Some(0));
    assert_eq!(processes(&argv).len(), 1, "no duplicate was started");

    // Deleted while its agent is dead: the next agent stops what is left.
    agent.kill();
    pods.delete("keep", &Default::default()).await.unwrap();
    let _agent = start_agent(dir.path(), &kubeconfig, &servers, "n1", &client).await;
    wait_for("the pod gone", Duration::from_secs(60), || async {
        pods.get_opt("keep").await.ok()?.is_none().then_some(())
    })
    .await;
    wait_for("its process gone", Duration::from_secs(30), || async {
        processes(&argv).is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_leave_a_node_whose_agent_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = Members::new(dir.path(), 1, &["--node-monitor-grace-period", "12s"]);
    members.start_all();
    let client = members.client(1).await;
    let kubeconfig = members.node(1).dir.join("kubeconfig");
    let servers = members.api_urls();
    let _n1 = start_agent(dir.path(), &kubeconfig, &servers, "n1", &client).await;
    let mut n2 = start_agent(dir.path(), &kubeconfig, &servers, "n2", &client).await;
    let argv = ["sleep", "36012"];
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                        "effect": "NoExecute", "tolerationSeconds": 2}],
                    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "web"}}}],
                    "containers": [{"name": "c", "image": "busybox", "command": argv}],
                },
            },
        },
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let web = ListParams::default().labels("app=web");
    let placed = wait_for("four pods running on both nodes", Duration::from_secs(60), || async {
        let running = running_on(&pods.list(&web).await.ok()?.items);
        (running.len() == 4 && running.iter().any(|(_, n)| n == "n2")).then_some(running)
    })
    .await;
    let on_n2: Vec<String> = placed
        .iter()
        .filter(|(_, n)| n == "n2")
        .map(|(p, _)| p.clone())
        .collect();

    // n2's agent dies and stays dead.
    n2.kill();
    let nodes: Api<Node> = Api::all(client.clone());
    wait_for("n2 unreachable", Duration::from_secs(60), || async {
        let n = nodes.get("n2").await.ok()?;
        let tainted = n
            .spec
            .as_ref()?
            .taints
            .as_ref()?
            .iter()
            .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute");
        let unknown = n
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "Unknown");
        (tainted && unknown).then_some(())
    })
    .await;
    let moved = wait_for("four pods running on n1", Duration::from_secs(60), || async {
        let running = running_on(&pods.list(&web).await.ok()?.items);
        (running.len() == 4 && running.iter().all(|(_, n)| n == "n1")).then_some(running)
    })
    .await;
    assert!(moved.iter().all(|(p, _)| !on_n2.contains(p)), "{moved:?} {on_n2:?}");

    // n2's agent comes back: the taints go, and what it left running of the evicted
    // pods is stopped.
    let _n2 = start_agent(dir.path(), &kubeconfig, &servers, "n2", &client).await;
    wait_for("n2 ready again", Duration::from_secs(60), || async {
        let n = nodes.get("n2").await.ok()?;
        let taints = n.spec.as_ref()?.taints.clone().unwrap_or_default();
        let ready = n
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        (taints.is_empty() && ready).then_some(())
    })
    .await;
    wait_for("only n1's four processes", Duration::from_secs(60), || async {
        (processes(&argv).len() == 4).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn static_pods_run_from_files_and_are_mirrored() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = Members::new(dir.path(), 1, &[]);
    members.start_all();
    let client = members.client(1).await;
    let kubeconfig = members.node(1).dir.join("kubeconfig");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let argv = ["sleep", "36013"];
    std::fs::write(
        manifests.join("web.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {tier: static}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox\n    command: [sleep, '36013']\n",
    )
    .unwrap();
    let _agent = static_agent(dir.path(), &kubeconfig, &manifests, &[]);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let running = || async {
        let p = pods.get_opt("web-n1").await.ok()??;
        let mirrored = p.annotations().contains_key("kubernetes.io/config.mirror");
        (mirrored && p.status.as_ref()?.phase.as_deref() == Some("Running")).then(|| p.uid())?
    };
    let first = wait_for("the mirror pod running", Duration::from_secs(60), running).await;
    assert_eq!(processes(&argv).len(), 1);

    // Deleting the mirror pod does not stop the static pod: it is mirrored again.
    pods.delete("web-n1", &Default::default()).await.unwrap();
    let second = wait_for("the mirror back", Duration::from_secs(60), || async {
        let uid = running().await?;
        (uid != first).then_some(uid)
    })
    .await;
    assert_ne!(second, first);
    assert_eq!(processes(&argv).len(), 1, "the static pod ran on");

    // Removing the file stops the pod and its mirror goes.
    std::fs::remove_file(manifests.join("web.yaml")).unwrap();
    wait_for("the static pod gone", Duration::from_secs(60), || async {
        let gone = pods.get_opt("web-n1").await.ok()?.is_none();
        (gone && processes(&argv).is_empty()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn static_pods_run_while_the_api_server_is_away() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = Members::new(dir.path(), 1, &[]);
    members.start_all();
    // Only for the credentials in its kubeconfig: the agent is sent elsewhere.
    let _ = members.client(1).await;
    let kubeconfig = members.node(1).dir.join("kubeconfig");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let argv = ["sleep", "36014"];
    std::fs::write(
        manifests.join("early.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: early\nspec:\n  containers:\n  - name: c\n    image: busybox\n    command: [sleep, '36014']\n",
    )
    .unwrap();
    // Nothing listens where this agent looks for its API server.
    let dead = format!("https://127.0.0.1:{}", common::cluster::free_port());
    let mut agent = static_agent(dir.path(), &kubeconfig, &manifests, &["--server", &dead]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while processes(&argv).len() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the static pod never ran: {}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(agent.stop(), Some(0), "{}", agent.log());
    wait_for(
        "the static pod stopped with its agent",
        Duration::from_secs(30),
        || async { processes(&argv).is_empty().then_some(()) },
    )
    .await;
}
