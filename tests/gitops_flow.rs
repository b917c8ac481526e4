//! The walking skeleton end to end: commits to a real Git repository become running
//! processes through the real `kairn up` binary.

mod common;

use std::time::Duration;

use common::{alive, running_pods, wait_for, Kairn, Repo};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, LogParams};
use kube::Api;

const TIMEOUT: Duration = Duration::from_secs(60);

fn deployment(replicas: u32) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: e2e
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: e2e
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
        - name: loop
          image: none
          command: ["sh", "-c", "while true; do echo tick; sleep 1; done"]
"#
    )
}

const INVALID: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: broken
  namespace: e2e
spec:
  replicas: "three"
  selector:
    matchLabels: {app: broken}
  template:
    metadata:
      labels: {app: broken}
    spec:
      containers:
        - name: c
          image: busybox
          command: ["sleep", "300"]
"#;

async fn wait_running(kairn: &Kairn, count: usize, what: &str) -> Vec<(Pod, i32)> {
    wait_for(what, TIMEOUT, || async {
        let pods = running_pods(&kairn.client, "e2e", "app=web").await;
        let all: Api<Pod> = Api::namespaced(kairn.client.clone(), "e2e");
        let total = all
            .list(&ListParams::default().labels("app=web"))
            .await
            .map(|l| l.items.len())
            .unwrap_or(0);
        (pods.len() == count && total == count).then_some(pods)
    })
    .await
}

async fn synced_to(kairn: &Kairn, sha: &str) {
    wait_for(&format!("the application to sync {sha}"), TIMEOUT, || async {
        let (_, out, _) = kairn.cli(&["status", "-o", "json"]);
        let apps: serde_json::Value = serde_json::from_str(&out).ok()?;
        (apps[0]["status"]["syncedRevision"] == sha).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_flow_to_running_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("repo"));
    let first = repo.commit_file("apps/web.yaml", &deployment(2), "web: 2 replicas");

    // 1. A Deployment of 2 replicas becomes 2 Running pods backed by 2 live processes.
    let mut kairn = Kairn::up(&tmp.path().join("data"), &repo.dir).await;
    synced_to(&kairn, &first).await;
    let two = wait_running(&kairn, 2, "2 running pods").await;
    assert_ne!(two[0].1, two[1].1, "each pod is its own process");
    let deployments: Api<Deployment> = Api::namespaced(kairn.client.clone(), "e2e");
    let web = deployments.get("web").await.unwrap();
    let annotations = web.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get("kairn.dev/commit"),
        Some(&first),
        "objects record their commit"
    );
    assert_eq!(
        annotations.get("kairn.dev/source-path").map(String::as_str),
        Some("apps/web.yaml#1")
    );
    let labels = web.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("app.kairn.dev/name").map(String::as_str), Some("repo"));

    // Their output is captured and served as `kubectl logs` would read it.
    let pods: Api<Pod> = Api::namespaced(kairn.client.clone(), "e2e");
    let first_pod = two[0].0.metadata.name.clone().unwrap();
    wait_for("the pod's log", TIMEOUT, || async {
        let log = pods.logs(&first_pod, &LogParams::default()).await.ok()?;
        log.contains("tick").then_some(())
    })
    .await;

    // 2. replicas: 3, proposed on a branch and reviewed with `kairn diff` before merging.
    repo.git(&["switch", "-q", "-c", "grow"]);
    let scaled = repo.commit_file("apps/web.yaml", &deployment(3), "web: 3 replicas");
    repo.git(&["switch", "-q", "main"]);
    let (code, diff, _) = kairn.cli(&["diff", "--revision", "grow"]);
    assert_eq!(code, 1, "differences found:\n{diff}");
    assert!(
        diff.contains("=== update apps/v1/Deployment e2e/web (apps/web.yaml#1)"),
        "{diff}"
    );
    assert!(diff.contains("-  replicas: 2\n+  replicas: 3"), "{diff}");
    assert_eq!(web_replicas(&deployments).await, 2, "diff changes nothing");
    repo.git(&["merge", "-q", "--ff-only", "grow"]);
    synced_to(&kairn, &scaled).await;
    wait_running(&kairn, 3, "3 running pods").await;

    // 3. Reverting that commit brings it back to 2; the surplus pod's process stops.
    repo.git(&["revert", "--no-edit", "HEAD"]);
    let reverted = repo.head();
    synced_to(&kairn, &reverted).await;
    let back = wait_running(&kairn, 2, "2 running pods after the revert").await;
    let live_pids: Vec<i32> = back.iter().map(|(_, pid)| *pid).collect();
    assert_eq!(web_replicas(&deployments).await, 2);

    // 4. A commit with an invalid manifest changes nothing, and status names file and field.
    let bad = repo.commit_file("apps/broken.yaml", INVALID, "add a broken deployment");
    let (_, status, _) = wait_for("status to report the rejected commit", TIMEOUT, || async {
        let out = kairn.cli(&["status"]);
        out.1.contains(&bad[..12]).then_some(out)
    })
    .await;
    assert!(
        status.contains("error: apps/broken.yaml#0: apps/v1/Deployment e2e/broken: spec.replicas:"),
        "status names file, document, object and field:\n{status}"
    );
    assert!(
        deployments.get_opt("broken").await.unwrap().is_none(),
        "nothing of the rejected commit is applied"
    );
    assert_eq!(web_replicas(&deployments).await, 2);
    let (code, _, stderr) = kairn.cli(&["diff"]);
    assert_eq!(code, 2, "diff of an invalid revision is an error");
    assert!(stderr.contains("apps/broken.yaml#0"), "{stderr}");

    // 5. Fixing the manifest syncs it.
    let fixed = repo.commit_file(
        "apps/broken.yaml",
        &INVALID.replace("\"three\"", "1"),
        "fix the broken deployment",
    );
    synced_to(&kairn, &fixed).await;
    assert!(deployments.get_opt("broken").await.unwrap().is_some());
    let (code, _, _) = kairn.cli(&["diff"]);
    assert_eq!(code, 0, "nothing left to apply after a sync");

    // 6. Killing a pod's process gets it restarted (restartPolicy Always) or replaced.
    let victim = live_pids[0];
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let after = wait_for("the killed process to be replaced", TIMEOUT, || async {
        let pods = running_pods(&kairn.client, "e2e", "app=web").await;
        (pods.len() == 2 && pods.iter().all(|(_, pid)| *pid != victim)).then_some(pods)
    })
    .await;
    assert!(after.iter().all(|(_, pid)| alive(*pid)));

    // 7. Ctrl-C (SIGTERM) stops everything cleanly: exit 0, no pod process left behind.
    let pids: Vec<i32> = after.iter().map(|(_, pid)| *pid).collect();
    assert_eq!(kairn.stop(), Some(0), "kairn exits 0 on SIGTERM; log:\n{}", kairn.log());
    assert!(pids.iter().all(|pid| !alive(*pid)), "pod processes stop with the node");

    // 8. A second `kairn up` on the same data directory resumes the same state.
    let kairn = Kairn::up(&tmp.path().join("data"), &repo.dir).await;
    let resumed = wait_running(&kairn, 2, "pods running again after restart").await;
    assert!(resumed.iter().all(|(_, pid)| !pids.contains(pid)));
    let (_, status, _) = kairn.cli(&["status"]);
    assert!(
        status.contains(&fixed[..12]),
        "the synced commit survives a restart:\n{status}"
    );
}

async fn web_replicas(deployments: &Api<Deployment>) -> i32 {
    deployments
        .get("web")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.replicas)
        .unwrap_or(-1)
}
