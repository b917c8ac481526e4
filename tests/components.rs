//! The scheduler and the controller manager run apart from the API servers, several of
//! each, electing one active instance through a Lease in `kube-system`: none of them
//! anywhere leaves the cluster where it is; one started takes over; the holder stopped,
//! killed, or killed with its whole member, another takes over and the work goes on.

mod common;

use std::time::Duration;

use common::cluster::{start_agent, Members, Process};
use common::{running_pods, wait_for};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::Api;

/// Short election timings, so takeovers happen within seconds in tests.
const ELECTION: [&str; 6] = [
    "--leader-elect-lease-duration",
    "3s",
    "--leader-elect-renew-deadline",
    "2s",
    "--leader-elect-retry-period",
    "500ms",
];

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"]}]},
            },
        },
    }))
    .unwrap()
}

async fn scale(client: &kube::Client, name: &str, replicas: i32) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": replicas}})),
    )
    .await
    .unwrap();
}

/// The Lease's holder identity, if it has one.
async fn holder(client: &kube::Client, lease: &str) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    api.get(lease).await.ok()?.spec?.holder_identity
}

/// Waits until `n` pods with `app=<app>` run (a live process each).
async fn wait_running(client: &kube::Client, app: &str, n: usize, timeout: Duration) {
    let selector = format!("app={app}");
    wait_for(&format!("{n} running {app} pods"), timeout, || async {
        (running_pods(client, "default", &selector).await.len() == n).then_some(())
    })
    .await;
}

/// The one process of `group` that logged taking the lease last, by index.
fn acting(group: &[Process]) -> Vec<usize> {
    group
        .iter()
        .enumerate()
        .filter(|(_, p)| p.log().contains("became the leader"))
        .map(|(i, _)| i)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standalone_components_elect_one_leader_and_take_over() {
    let dir = tempfile::tempdir().unwrap();
    // A member that serves only the API: no scheduler, no controller manager anywhere.
    let mut members = Members::new(dir.path(), 1, &["--components", "api"]);
    members.start_all();
    let client = members.client(1).await;
    let member_dir = members.node(1).dir.clone();
    let _agent = start_agent(
        dir.path(),
        &member_dir.join("kubeconfig"),
        &members.api_urls(),
        "n1",
        &client,
    )
    .await;

    println!("no controller manager: a new Deployment gets no ReplicaSet and no pods");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deployments
        .create(&PostParams::default(), &deployment("web", 2))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    assert!(replicasets.list(&ListParams::default()).await.unwrap().items.is_empty());
    assert!(pods.list(&ListParams::default()).await.unwrap().items.is_empty());

    println!("three controller managers: one acts; the pods appear and stay Pending (no scheduler)");
    let kubeconfig = |name: &str| {
        member_dir
            .join(format!("{name}.kubeconfig"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let start = |kind: &str, i: usize| {
        let mut args = vec![kind.to_string(), "--kubeconfig".into(), kubeconfig(kind)];
        args.extend(ELECTION.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Process::start(&dir.path().join(format!("{kind}-{i}")), kind, &args)
    };
    let mut managers: Vec<Process> = (0..3).map(|i| start("controller-manager", i)).collect();
    wait_for("two pods", Duration::from_secs(60), || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await.ok()?;
        (list.items.len() == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for pod in pods.list(&ListParams::default()).await.unwrap().items {
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name, None, "no scheduler, yet a pod was bound");
        assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
    }
    assert_eq!(acting(&managers).len(), 1, "exactly one controller manager acts");

    println!("three schedulers: one acts; the pods run");
    let mut schedulers: Vec<Process> = (0..3).map(|i| start("scheduler", i)).collect();
    wait_running(&client, "web", 2, Duration::from_secs(60)).await;
    assert_eq!(acting(&schedulers).len(), 1, "exactly one scheduler acts");
    let lease = holder(&client, "kube-scheduler")
        .await
        .expect("the scheduler lease has a holder");
    println!("kube-scheduler held by {lease}");

    println!(
        "two of each stopped (the scheduler holder by kill -9, the manager holder by SIGTERM): the rest take over"
    );
    let scheduler_holder = acting(&schedulers)[0];
    schedulers[scheduler_holder].kill();
    schedulers[(scheduler_holder + 1) % 3].stop();
    let manager_holder = acting(&managers)[0];
    assert_eq!(managers[manager_holder].stop(), Some(0));
    managers[(manager_holder + 1) % 3].stop();
    scale(&client, "web", 4).await;
    wait_running(&client, "web", 4, Duration::from_secs(60)).await;
    let survivor = (scheduler_holder + 2) % 3;
    assert!(schedulers[survivor].log().contains("became the leader"));
    assert!(managers[(manager_holder + 2) % 3].log().contains("became the leader"));
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let lease = leases.get("kube-scheduler").await.unwrap().spec.unwrap();
    assert!(lease.lease_transitions.unwrap_or(0) >= 1, "{lease:?}");
    assert_ne!(lease.holder_identity.as_deref(), None);
}

/// The member number in a member's candidate identity (`<host>-member-<id>_<uuid>`).
fn member_of(identity: &str) -> Option<u64> {
    identity.split("-member-").nth(1)?.split('_').next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_member_that_holds_a_lease_moves_the_work_to_another() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = Members::new(dir.path(), 3, &ELECTION);
    members.start_all();
    let urls = members.api_urls();
    // Waits until member 1 serves and has written its kubeconfig.
    let _ = members.client(1).await;
    let kubeconfig = kube::config::Kubeconfig::read_from(members.node(1).dir.join("kubeconfig")).unwrap();
    let base = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let urls_list: Vec<String> = urls.split(',').map(String::from).collect();
    // A client that fails over between the members, as the agent does.
    let client = kairn_cluster::failover::client(kairn_cluster::failover::configs(&base, &urls_list).unwrap()).unwrap();
    let _agent = start_agent(
        dir.path(),
        &members.node(1).dir.join("kubeconfig"),
        &urls,
        "n1",
        &client,
    )
    .await;

    let scheduler_member = wait_for("a scheduler leader", Duration::from_secs(60), || async {
        member_of(&holder(&client, "kube-scheduler").await?)
    })
    .await;
    if common::kubectl_present() {
        let out = std::process::Command::new("kubectl")
            .args(["--kubeconfig", members.node(1).dir.join("kubeconfig").to_str().unwrap()])
            .args(["get", "lease", "-n", "kube-system"])
            .output()
            .unwrap();
        let table = String::from_utf8_lossy(&out.stdout);
        println!("{table}");
        assert!(table.contains("kube-scheduler") && table.contains(&format!("-member-{scheduler_member}_")));
    } else {
        println!("kubectl not on PATH: skipping the kubectl view of the leases");
    }

    println!("kill -9 member {scheduler_member}, which holds the scheduler lease");
    members.kill(scheduler_member);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    wait_for("a create after the kill", Duration::from_secs(30), || async {
        deployments
            .create(&PostParams::default(), &deployment("web", 2))
            .await
            .ok()
    })
    .await;
    wait_running(&client, "web", 2, Duration::from_secs(60)).await;
    let now = member_of(&holder(&client, "kube-scheduler").await.unwrap()).unwrap();
    assert_ne!(now, scheduler_member, "the lease moved to a live member");
    println!("member {now} schedules now");

    println!("member {scheduler_member} back; kill the controller manager's member");
    members.start(scheduler_member);
    let _ = members.client(scheduler_member).await;
    let manager_member = member_of(&holder(&client, "kube-controller-manager").await.unwrap()).unwrap();
    // Its store must be caught up before another member goes, or there is no quorum.
    wait_for("the restarted member to serve", Duration::from_secs(60), || async {
        let c = members.client(scheduler_member).await;
        let api: Api<Deployment> = Api::namespaced(c, "default");
        api.get_opt("web").await.ok().flatten().map(|_| ())
    })
    .await;
    println!("kill -9 member {manager_member}, which holds the controller manager lease");
    members.kill(manager_member);
    wait_for("a scale after the kill", Duration::from_secs(30), || async {
        let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
        api.patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 3}})),
        )
        .await
        .ok()
    })
    .await;
    wait_running(&client, "web", 3, Duration::from_secs(60)).await;
    let now = member_of(&holder(&client, "kube-controller-manager").await.unwrap()).unwrap();
    assert_ne!(now, manager_member);
    println!("member {now} runs the controllers now");
}
