//! Jobs, DaemonSets and default ServiceAccounts end to end: a real member over TLS with the
//! scheduler, the controllers and node agents running pods as host processes, checked
//! through kube-rs and, when it is installed, the real `kubectl` (`wait
//! --for=condition=complete`, `rollout status ds/...`).

mod common;

use std::cell::Cell;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use common::{cluster_of, kubectl, wait_for, wait_until, Server};

fn job(name: &str, spec: serde_json::Value, script: &str) -> Job {
    let mut spec = spec;
    spec["template"] = json!({
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", script]}],
        },
    });
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

/// The Job's conditions that are True, as `type:reason`.
fn true_conditions(j: &Job) -> Vec<String> {
    j.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .filter(|c| c.status == "True")
        .map(|c| format!("{}:{}", c.type_, c.reason.clone().unwrap_or_default()))
        .collect()
}

fn phase(p: &Pod) -> &str {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

#[tokio::test]
async fn jobs_complete_within_their_parallelism_fail_past_their_limits_and_expire() {
    let w = cluster_of(&["n1"]).await;
    let client = w.s.client.clone();
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    jobs.create(
        &PostParams::default(),
        &job("five", json!({"completions": 5, "parallelism": 2}), "sleep 0.3"),
    )
    .await
    .unwrap();
    jobs.create(
        &PostParams::default(),
        &job("fails", json!({"backoffLimit": 1}), "exit 1"),
    )
    .await
    .unwrap();
    jobs.create(
        &PostParams::default(),
        &job("slow", json!({"activeDeadlineSeconds": 2}), "sleep 300"),
    )
    .await
    .unwrap();
    jobs.create(
        &PostParams::default(),
        &job("brief", json!({"ttlSecondsAfterFinished": 1}), "true"),
    )
    .await
    .unwrap();

    // Sample the pods until the Job completes: never more than 2 run at once.
    let by_job = ListParams::default().labels("batch.kubernetes.io/job-name=five");
    let most_active = Cell::new(0);
    let samples = Cell::new(0);
    wait_for("job five to complete", Duration::from_secs(90), || async {
        let listed = pods.list(&by_job).await.ok()?.items;
        let active = listed
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && !matches!(phase(p), "Succeeded" | "Failed"))
            .count();
        most_active.set(most_active.get().max(active));
        samples.set(samples.get() + 1);
        let j = jobs.get("five").await.ok()?;
        true_conditions(&j)
            .iter()
            .any(|c| c.starts_with("Complete:"))
            .then_some(())
    })
    .await;
    assert!(samples.get() > 5, "sampled {} times", samples.get());
    assert_eq!(
        most_active.get(),
        2,
        "parallelism 2: at most (and at first) two pods at once"
    );
    if let Some(out) = kubectl(&w.s, &["wait", "--for=condition=complete", "job/five", "--timeout=30s"]).await {
        assert!(out.contains("condition met"), "{out}");
    }

    let j = jobs.get("five").await.unwrap();
    // Finished means settled: no further status writes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(jobs.get("five").await.unwrap().resource_version(), j.resource_version());
    let s = j.status.clone().unwrap();
    assert_eq!(
        (s.succeeded, s.failed, s.active.unwrap_or(0), s.ready.unwrap_or(0)),
        (Some(5), Some(0), 0, 0)
    );
    assert!(s.start_time.is_some() && s.completion_time.is_some());
    assert!(s.start_time.unwrap().0 <= s.completion_time.unwrap().0);
    assert_eq!(
        true_conditions(&j),
        ["SuccessCriteriaMet:CompletionsReached", "Complete:CompletionsReached"]
    );
    // The finished pods are kept, labelled and owned as Kubernetes makes them.
    let kept = pods.list(&by_job).await.unwrap().items;
    assert_eq!(kept.len(), 5);
    let uid = j.uid().unwrap();
    for p in &kept {
        assert_eq!(phase(p), "Succeeded", "{}", p.name_any());
        let labels = p.labels();
        assert_eq!(labels.get("batch.kubernetes.io/controller-uid"), Some(&uid));
        assert_eq!(labels.get("controller-uid"), Some(&uid));
        assert_eq!(labels.get("job-name").map(String::as_str), Some("five"));
        let owner = &p.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Job", uid.as_str(), Some(true))
        );
    }

    // The failing Job: one failure, a 10 s back-off, a second failure, Failed.
    let failed = wait_for("job fails to fail", Duration::from_secs(90), || async {
        let j = jobs.get("fails").await.ok()?;
        true_conditions(&j)
            .iter()
            .any(|c| c.starts_with("Failed:"))
            .then_some(j)
    })
    .await;
    let s = failed.status.clone().unwrap();
    assert_eq!((s.failed, s.succeeded, s.active.unwrap_or(0)), (Some(2), Some(0), 0));
    assert_eq!(
        true_conditions(&failed),
        ["FailureTarget:BackoffLimitExceeded", "Failed:BackoffLimitExceeded"]
    );
    assert!(s.completion_time.is_none());
    let attempts = pods
        .list(&ListParams::default().labels("batch.kubernetes.io/job-name=fails"))
        .await
        .unwrap()
        .items;
    assert_eq!(attempts.iter().filter(|p| phase(p) == "Failed").count(), 2);
    assert_eq!(attempts.len(), 2, "no attempt after the limit");

    // Past its deadline: the running pod is deleted, then the Job is Failed.
    let slow = wait_for("job slow to fail", Duration::from_secs(60), || async {
        let j = jobs.get("slow").await.ok()?;
        true_conditions(&j)
            .iter()
            .any(|c| c.starts_with("Failed:"))
            .then_some(j)
    })
    .await;
    assert_eq!(
        true_conditions(&slow),
        ["FailureTarget:DeadlineExceeded", "Failed:DeadlineExceeded"]
    );
    let left = pods
        .list(&ListParams::default().labels("batch.kubernetes.io/job-name=slow"))
        .await
        .unwrap()
        .items;
    assert!(
        left.iter().all(|p| matches!(phase(p), "Succeeded" | "Failed")),
        "nothing runs once Failed"
    );

    // A finished Job with a TTL goes, and its pods with it.
    wait_until("job brief and its pods to go", Duration::from_secs(60), || async {
        let gone = jobs.get_opt("brief").await.is_ok_and(|j| j.is_none());
        let pods_left = pods
            .list(&ListParams::default().labels("batch.kubernetes.io/job-name=brief"))
            .await
            .map_or(1, |l| l.items.len());
        gone && pods_left == 0
    })
    .await;

    w.stop().await;
}

/// Whether every node of `names` has registered and reports Ready.
async fn all_ready(nodes: &Api<Node>, names: &[&str]) -> bool {
    let Ok(list) = nodes.list(&ListParams::default()).await else {
        return false;
    };
    names.iter().all(|n| {
        list.items.iter().any(|node| {
            node.name_any() == *n
                && node
                    .status
                    .iter()
                    .flat_map(|s| s.conditions.iter().flatten())
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    })
}

/// Waits for the DaemonSet's rollout with kubectl, or through the API without it.
async fn rolled_out(s: &Server, daemonsets: &Api<DaemonSet>, name: &str, nodes: i32) {
    let target = format!("ds/{name}");
    if let Some(out) = kubectl(s, &["rollout", "status", &target, "--timeout=90s"]).await {
        assert!(out.contains("successfully rolled out"), "{out}");
    }
    wait_until("the daemon set's status", Duration::from_secs(90), || async {
        let Ok(ds) = daemonsets.get(name).await else {
            return false;
        };
        let Some(st) = ds.status.as_ref() else { return false };
        st.observed_generation >= ds.metadata.generation
            && st.desired_number_scheduled == nodes
            && st.current_number_scheduled == nodes
            && st.number_ready == nodes
            && st.updated_number_scheduled == Some(nodes)
            && st.number_available == Some(nodes)
            && st.number_misscheduled == 0
    })
    .await;
}

/// The DaemonSet's live pods as (node, hash label), sorted.
async fn placed(pods: &Api<Pod>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pods
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            (
                p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
                p.labels().get("controller-revision-hash").cloned().unwrap_or_default(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_daemon_set_runs_one_pod_per_untainted_node_and_rolls_its_updates() {
    let names = ["n1", "n2", "n3", "n4"];
    let w = cluster_of(&names).await;
    let client = w.s.client.clone();
    let nodes: Api<Node> = Api::all(client.clone());
    wait_until("four ready nodes", Duration::from_secs(60), || {
        all_ready(&nodes, &names)
    })
    .await;
    // n4 is kept for something else.
    let taint = json!({"spec": {"taints": [{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}]}});
    nodes
        .patch("n4", &PatchParams::default(), &Patch::Merge(taint))
        .await
        .unwrap();

    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "300"]}],
                },
            },
        },
    }))
    .unwrap();
    daemonsets.create(&PostParams::default(), &ds).await.unwrap();
    rolled_out(&w.s, &daemonsets, "agent", 3).await;

    // Rolled out means settled: node heartbeats and pod events write nothing more.
    let settled = daemonsets.get("agent").await.unwrap().resource_version();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(daemonsets.get("agent").await.unwrap().resource_version(), settled);
    let first = placed(&pods).await;
    let on: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(on, ["n1", "n2", "n3"], "one pod per untainted node, none on n4");
    let hash = first[0].1.clone();
    assert!(!hash.is_empty() && first.iter().all(|(_, h)| *h == hash));
    let sample = &pods
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap()
        .items[0];
    let spec = sample.spec.as_ref().unwrap();
    let pinned = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())
        .map(|r| r.node_selector_terms[0].match_fields.clone().unwrap_or_default()[0].clone())
        .unwrap();
    assert_eq!(
        (pinned.key.as_str(), pinned.operator.as_str(), pinned.values.clone()),
        ("metadata.name", "In", spec.node_name.clone().map(|n| vec![n]))
    );
    let tolerated: Vec<String> = spec
        .tolerations
        .iter()
        .flatten()
        .map(|t| {
            format!(
                "{}:{}",
                t.key.clone().unwrap_or_default(),
                t.effect.clone().unwrap_or_default()
            )
        })
        .collect();
    assert!(
        tolerated.contains(&"node.kubernetes.io/not-ready:NoExecute".to_string()),
        "{tolerated:?}"
    );
    assert!(
        tolerated.contains(&"node.kubernetes.io/unschedulable:NoSchedule".to_string()),
        "{tolerated:?}"
    );

    // A new template rolls node by node (maxUnavailable 1) to new pods on the same nodes.
    let patch = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "c", "image": "busybox", "command": ["sleep", "300"], "env": [{"name": "V", "value": "2"}]}]}}}});
    daemonsets
        .patch("agent", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    // Sampled on the way: never fewer than two nodes with a ready pod.
    let fewest_ready = Cell::new(3);
    wait_until("the new template's pods", Duration::from_secs(90), || async {
        let live = pods
            .list(&ListParams::default().labels("app=agent"))
            .await
            .unwrap()
            .items;
        let ready = live
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.status
                    .iter()
                    .flat_map(|s| s.conditions.iter().flatten())
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
            .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        fewest_ready.set(fewest_ready.get().min(ready));
        let now = placed(&pods).await;
        now.len() == 3 && now.iter().all(|(_, h)| *h != hash)
    })
    .await;
    assert!(
        fewest_ready.get() >= 2,
        "maxUnavailable 1: {} ready at worst",
        fewest_ready.get()
    );
    rolled_out(&w.s, &daemonsets, "agent", 3).await;
    let second = placed(&pods).await;
    let on: Vec<&str> = second.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(on, ["n1", "n2", "n3"]);

    w.stop().await;
}

#[tokio::test]
async fn every_namespace_gets_a_default_service_account_back_when_deleted() {
    let w = cluster_of(&[]).await;
    let client = w.s.client.clone();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team-a"}})).unwrap();
    namespaces.create(&PostParams::default(), &ns).await.unwrap();

    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "team-a");
    let first = wait_for("team-a's default service account", Duration::from_secs(30), || async {
        accounts.get_opt("default").await.ok().flatten()
    })
    .await;
    let defaults: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    wait_for("the default namespace's account", Duration::from_secs(30), || async {
        defaults.get_opt("default").await.ok().flatten()
    })
    .await;

    // Deleted: made again.
    accounts.delete("default", &DeleteParams::default()).await.unwrap();
    let again = wait_for("the account made again", Duration::from_secs(30), || async {
        accounts
            .get_opt("default")
            .await
            .ok()
            .flatten()
            .filter(|sa| sa.uid() != first.uid())
    })
    .await;
    assert_eq!(again.name_any(), "default");

    w.stop().await;
}
