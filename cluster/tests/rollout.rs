//! Deployments and logs end to end: a real member over TLS with the scheduler, the
//! controllers and a node agent running pods as host processes, driven by the real
//! `kubectl` (`rollout status/history/undo/restart`, `set env`, `scale`, `wait`, `logs`)
//! and by kube-rs (`Api::<Pod>::logs`, `log_stream`).

mod common;

use std::time::Duration;

use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, LogParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use common::{cluster, kubectl, kubectl_fails, text, wait_for, Cluster};

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "300"]}],
                },
            },
        },
    }))
    .unwrap()
}

fn condition(d: &Deployment, type_: &str) -> Option<(String, String)> {
    let c = d
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone().unwrap_or_default()))
}

/// The Deployment's ReplicaSets by revision: (revision, replicas, change-cause).
async fn revisions(rss: &Api<ReplicaSet>, app: &str) -> Vec<(i64, i32, Option<String>)> {
    let mut v: Vec<_> = rss
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .iter()
        .map(|rs| {
            (
                kairn_cluster::controllers::deployment::revision_of(rs),
                rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
                rs.annotations().get("kubernetes.io/change-cause").cloned(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Waits for the rollout to finish with kubectl, or through the API without it.
async fn rolled_out(c: &Cluster, deploys: &Api<Deployment>, name: &str) {
    let target = format!("deploy/{name}");
    if let Some(out) = kubectl(&c.s, &["rollout", "status", &target, "--timeout=60s"]).await {
        assert!(out.contains("successfully rolled out"), "{out}");
        return;
    }
    wait_for("the rollout", Duration::from_secs(60), || async {
        let d = deploys.get(name).await.ok()?;
        let want = d.spec.as_ref()?.replicas?;
        let s = d.status.as_ref()?;
        (s.observed_generation >= d.metadata.generation
            && s.updated_replicas == Some(want)
            && s.replicas == Some(want)
            && s.available_replicas == Some(want))
        .then_some(())
    })
    .await;
}

#[tokio::test]
async fn rollout_status_history_undo_restart_scale_and_wait() {
    let c = cluster().await;
    let client = c.s.client.clone();
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    deploys
        .create(&PostParams::default(), &deployment("web", 2))
        .await
        .unwrap();
    rolled_out(&c, &deploys, "web").await;

    // The status as Kubernetes reports it once the rollout is done.
    let d = deploys.get("web").await.unwrap();
    let s = d.status.clone().unwrap();
    assert_eq!(s.observed_generation, d.metadata.generation);
    assert_eq!(
        (
            s.replicas,
            s.updated_replicas,
            s.ready_replicas,
            s.available_replicas,
            s.unavailable_replicas
        ),
        (Some(2), Some(2), Some(2), Some(2), Some(0))
    );
    assert_eq!(
        condition(&d, "Available"),
        Some(("True".into(), "MinimumReplicasAvailable".into()))
    );
    assert_eq!(
        condition(&d, "Progressing"),
        Some(("True".into(), "NewReplicaSetAvailable".into()))
    );
    assert_eq!(
        d.annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("1")
    );
    let rs = &rss.list(&ListParams::default()).await.unwrap().items[0];
    let hash = rs.labels()["pod-template-hash"].clone();
    assert_eq!(rs.name_any(), format!("web-{hash}"));
    let rs_status = rs.status.clone().unwrap();
    assert_eq!(
        (
            rs_status.replicas,
            rs_status.fully_labeled_replicas,
            rs_status.ready_replicas,
            rs_status.available_replicas
        ),
        (2, Some(2), Some(2), Some(2))
    );
    assert_eq!(rs_status.observed_generation, rs.metadata.generation);
    for pod in pods.list(&ListParams::default().labels("app=web")).await.unwrap() {
        assert_eq!(pod.labels().get("pod-template-hash"), Some(&hash));
    }
    let available_since = d
        .status
        .as_ref()
        .unwrap()
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "Available")
        .unwrap()
        .last_transition_time
        .clone();

    if kubectl(&c.s, &["version", "--client"]).await.is_none() {
        c.stop().await;
        return;
    }

    // A template change: a new ReplicaSet rolls out; the cause shows in the history.
    // (The cause is annotated after the change: it is copied to the current ReplicaSet.)
    kubectl(&c.s, &["set", "env", "deploy/web", "GREETING=hi"]).await;
    kubectl(
        &c.s,
        &["annotate", "deploy/web", "kubernetes.io/change-cause=greet in English"],
    )
    .await;
    rolled_out(&c, &deploys, "web").await;
    kubectl(&c.s, &["set", "env", "deploy/web", "GREETING=salut"]).await;
    kubectl(
        &c.s,
        &[
            "annotate",
            "--overwrite",
            "deploy/web",
            "kubernetes.io/change-cause=greet in French",
        ],
    )
    .await;
    rolled_out(&c, &deploys, "web").await;
    assert_eq!(
        revisions(&rss, "web").await,
        [
            (1, 0, None),
            (2, 0, Some("greet in English".into())),
            (3, 2, Some("greet in French".into()))
        ]
    );
    let history = kubectl(&c.s, &["rollout", "history", "deploy/web"]).await.unwrap();
    let rows: Vec<Vec<&str>> = history
        .lines()
        .filter(|l| l.starts_with(|ch: char| ch.is_ascii_digit()))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["1", "<none>"],
            vec!["2", "greet", "in", "English"],
            vec!["3", "greet", "in", "French"]
        ],
        "{history}"
    );
    let detail = kubectl(&c.s, &["rollout", "history", "deploy/web", "--revision=2"])
        .await
        .unwrap();
    assert!(
        detail.contains("GREETING:\thi") || detail.contains("GREETING: hi") || detail.contains("hi"),
        "{detail}"
    );
    // Available stayed True through both rollouts (maxUnavailable 0 of 2).
    let d = deploys.get("web").await.unwrap();
    let since = d
        .status
        .as_ref()
        .unwrap()
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "Available")
        .unwrap()
        .last_transition_time
        .clone();
    assert_eq!(
        since, available_since,
        "lastTransitionTime moves only when the status does"
    );

    // Undo: the previous template comes back, its ReplicaSet becomes revision 4.
    kubectl(&c.s, &["rollout", "undo", "deploy/web"]).await;
    rolled_out(&c, &deploys, "web").await;
    let d = deploys.get("web").await.unwrap();
    let env = &d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].env;
    assert_eq!(env.as_ref().unwrap()[0].value.as_deref(), Some("hi"));
    assert_eq!(
        d.annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("4")
    );
    assert_eq!(
        d.annotations().get("kubernetes.io/change-cause").map(String::as_str),
        Some("greet in English")
    );
    assert!(!d
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap()
        .contains_key("pod-template-hash"));
    assert_eq!(
        revisions(&rss, "web").await,
        [
            (1, 0, None),
            (3, 0, Some("greet in French".into())),
            (4, 2, Some("greet in English".into()))
        ]
    );
    let reused = rss
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|rs| kairn_cluster::controllers::deployment::revision_of(rs) == 4)
        .unwrap();
    assert_eq!(
        reused
            .annotations()
            .get("deployment.kubernetes.io/revision-history")
            .map(String::as_str),
        Some("2")
    );
    kubectl(&c.s, &["rollout", "undo", "deploy/web", "--to-revision=1"]).await;
    rolled_out(&c, &deploys, "web").await;
    let d = deploys.get("web").await.unwrap();
    assert!(d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0]
        .env
        .is_none());

    // Restart: a new template (the restartedAt annotation), so a new revision.
    kubectl(&c.s, &["rollout", "restart", "deploy/web"]).await;
    rolled_out(&c, &deploys, "web").await;
    let d = deploys.get("web").await.unwrap();
    let annotations = d
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .clone()
        .unwrap();
    assert!(annotations.contains_key("kubectl.kubernetes.io/restartedAt"));
    assert_eq!(
        d.annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("6")
    );

    // Scale, and wait for Available.
    kubectl(&c.s, &["scale", "deploy/web", "--replicas=3"]).await;
    kubectl(
        &c.s,
        &["wait", "--for=condition=Available", "deploy/web", "--timeout=60s"],
    )
    .await;
    rolled_out(&c, &deploys, "web").await;
    let running = pods.list(&ListParams::default().labels("app=web")).await.unwrap().items;
    assert_eq!(
        running
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .count(),
        3
    );

    // The history limit: old ReplicaSets beyond it go, lowest revisions first.
    kubectl(
        &c.s,
        &["patch", "deploy/web", "-p", r#"{"spec":{"revisionHistoryLimit":1}}"#],
    )
    .await;
    wait_for("old ReplicaSets to go", Duration::from_secs(30), || async {
        let r = revisions(&rss, "web").await;
        (r.len() == 2).then_some(r)
    })
    .await;
    let left: Vec<i64> = revisions(&rss, "web").await.iter().map(|r| r.0).collect();
    assert_eq!(left, [5, 6]);

    // A template whose container cannot start misses its progress deadline.
    kubectl(&c.s, &["patch", "deploy/web", "-p", r#"{"spec":{"progressDeadlineSeconds":2,"template":{"spec":{"containers":[{"name":"c","command":["/nonexistent/program"]}]}}}}"#]).await;
    let failed =
        c.s.kubectl(&["rollout", "status", "deploy/web", "--timeout=60s"])
            .await
            .unwrap();
    assert!(!failed.status.success());
    assert!(
        text(&failed.stderr).contains("exceeded its progress deadline"),
        "{}",
        text(&failed.stderr)
    );
    let d = deploys.get("web").await.unwrap();
    assert_eq!(
        condition(&d, "Progressing"),
        Some(("False".into(), "ProgressDeadlineExceeded".into()))
    );
    // The old pods stay while the new ones fail (maxUnavailable 0 of 3).
    assert_eq!(
        condition(&d, "Available"),
        Some(("True".into(), "MinimumReplicasAvailable".into()))
    );
    c.stop().await;
}

fn two_container_pod() -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "two"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {"name": "a", "image": "busybox", "command": ["sh", "-c",
                    "i=0; while true; do i=$((i+1)); echo a-line $i; echo a-err $i >&2; sleep 0.2; done"]},
                {"name": "b", "image": "busybox", "command": ["sh", "-c", "echo b-start; exec sleep 300"]},
            ],
        },
    }))
    .unwrap()
}

fn container_pid(pod: &Pod, name: &str) -> Option<String> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let s = statuses.iter().find(|s| s.name == name)?;
    s.state.as_ref()?.running.as_ref()?;
    Some(s.container_id.as_ref()?.strip_prefix("process://")?.to_string())
}

fn restarts(pod: &Pod, name: &str) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|s| s.name == name))
        .map_or(0, |s| s.restart_count)
}

#[tokio::test]
async fn logs_with_every_option() {
    let c = cluster().await;
    let pods: Api<Pod> = Api::namespaced(c.s.client.clone(), "default");
    pods.create(&PostParams::default(), &two_container_pod()).await.unwrap();
    // Three seconds' worth, so that `since` has older lines to leave out.
    wait_for("fifteen lines of a", Duration::from_secs(60), || async {
        let lp = LogParams {
            container: Some("a".into()),
            ..Default::default()
        };
        let log = pods.logs("two", &lp).await.ok()?;
        (log.matches("a-line").count() >= 15).then_some(())
    })
    .await;

    let logs = |lp: LogParams| {
        let pods = pods.clone();
        async move { pods.logs("two", &lp).await }
    };
    let a = |f: fn(&mut LogParams)| {
        let mut lp = LogParams {
            container: Some("a".into()),
            ..Default::default()
        };
        f(&mut lp);
        lp
    };
    // stdout and stderr both, in order.
    let all = logs(a(|_| {})).await.unwrap();
    // stdout and stderr are copied side by side: only each stream's own order is fixed.
    let first_out = |log: &str| log.lines().find(|l| l.starts_with("a-line")).map(str::to_string);
    assert!(
        first_out(&all).as_deref() == Some("a-line 1") && all.contains("a-err 1\n"),
        "{all}"
    );
    // tailLines
    let tail = logs(a(|lp| lp.tail_lines = Some(2))).await.unwrap();
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(all.ends_with(&tail) || all.contains(&tail), "{tail}");
    // limitBytes
    let limited = logs(a(|lp| lp.limit_bytes = Some(5))).await.unwrap();
    assert!(limited.len() == 5 && all.starts_with(&limited), "{limited}");
    // timestamps: RFC3339 with nanoseconds, as the kubelet writes them.
    let stamped = logs(a(|lp| {
        lp.tail_lines = Some(1);
        lp.timestamps = true;
    }))
    .await
    .unwrap();
    let (time, line) = stamped.trim_end().split_once(' ').unwrap();
    assert_eq!(time.len(), 30, "{stamped}");
    assert!(time.parse::<k8s_openapi::jiff::Timestamp>().is_ok(), "{stamped}");
    assert!(line.starts_with("a-"), "{stamped}");
    // sinceSeconds and sinceTime: only recent lines.
    let recent = logs(a(|lp| lp.since_seconds = Some(1))).await.unwrap();
    assert!(!recent.contains("a-line 1\n") && recent.contains("a-line"), "{recent}");
    // sinceTime travels as a metav1.Time: whole seconds.
    let later = k8s_openapi::jiff::Timestamp::from_second(k8s_openapi::jiff::Timestamp::now().as_second()).unwrap();
    let since_time = pods
        .logs(
            "two",
            &LogParams {
                container: Some("a".into()),
                since_time: Some(later),
                timestamps: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for l in since_time.lines() {
        let t: k8s_openapi::jiff::Timestamp = l.split(' ').next().unwrap().parse().unwrap();
        assert!(t >= later, "{l} is before {later}");
    }
    // Errors as Kubernetes words them.
    let err = |e: kube::Error| match e {
        kube::Error::Api(s) => (s.code, s.message),
        other => panic!("{other}"),
    };
    let (code, message) = err(pods.logs("two", &LogParams::default()).await.unwrap_err());
    assert_eq!(code, 400);
    assert_eq!(
        message,
        "a container name must be specified for pod two, choose one of: [a b]"
    );
    let (code, message) = err(logs(a(|lp| lp.container = Some("zz".into()))).await.unwrap_err());
    assert_eq!((code, message.as_str()), (400, "container zz is not valid for pod two"));
    let (code, message) = err(logs(a(|lp| lp.previous = true)).await.unwrap_err());
    assert_eq!(code, 400);
    assert_eq!(message, r#"previous terminated container "a" in pod "two" not found"#);
    let (code, _) = err(logs(a(|lp| lp.tail_lines = Some(-3))).await.unwrap_err());
    assert_eq!(code, 422);

    // follow through log_stream: new lines keep coming.
    let stream = pods
        .log_stream(
            "two",
            &LogParams {
                container: Some("a".into()),
                follow: true,
                tail_lines: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut lines = stream.lines();
    let first = lines.next().await.unwrap().unwrap();
    let mut later_lines = Vec::new();
    while later_lines.len() < 4 {
        let l = tokio::time::timeout(Duration::from_secs(10), lines.next())
            .await
            .expect("followed lines keep coming")
            .unwrap()
            .unwrap();
        later_lines.push(l);
    }
    assert!(first.starts_with("a-"), "{first}");
    drop(lines);

    // A killed container restarts; its last run's log is `previous`, and a follow of
    // the old run ends with it.
    let pod = pods.get("two").await.unwrap();
    let pid = container_pid(&pod, "a").unwrap();
    let following = pods
        .log_stream(
            "two",
            &LogParams {
                container: Some("a".into()),
                follow: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    std::process::Command::new("kill").args(["-9", &pid]).status().unwrap();
    let mut followed = following.lines();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        let mut n = 0;
        while let Some(Ok(_)) = followed.next().await {
            n += 1;
        }
        n
    })
    .await
    .expect("a follow ends when its container stops");
    assert!(ended > 0);
    wait_for("the restart", Duration::from_secs(30), || async {
        let pod = pods.get("two").await.ok()?;
        (restarts(&pod, "a") == 1 && container_pid(&pod, "a").is_some()).then_some(())
    })
    .await;
    let previous = logs(a(|lp| lp.previous = true)).await.unwrap();
    assert!(
        first_out(&previous).as_deref() == Some("a-line 1") && previous.matches("a-line").count() >= 5,
        "{previous}"
    );
    let current = wait_for("the new run's first line", Duration::from_secs(10), || async {
        let log = logs(a(|_| {})).await.ok()?;
        first_out(&log).is_some().then_some(log)
    })
    .await;
    assert!(
        first_out(&current).as_deref() == Some("a-line 1") && current.len() < previous.len() + 1000,
        "{current}"
    );
    // b never restarted.
    let (code, _) = err(pods
        .logs(
            "two",
            &LogParams {
                container: Some("b".into()),
                previous: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err());
    assert_eq!(code, 400);

    // A pod no node runs yet.
    let pending: Pod = serde_json::from_value(json!({
        "metadata": {"name": "pending"},
        "spec": {"nodeSelector": {"no": "such-node"}, "containers": [{"name": "c", "image": "busybox", "command": ["true"]}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pending).await.unwrap();
    let (code, message) = err(pods.logs("pending", &LogParams::default()).await.unwrap_err());
    assert_eq!(
        (code, message.as_str()),
        (400, "pod pending does not have a host assigned")
    );

    // The real kubectl, with its flags.
    if let Some(out) = kubectl(&c.s, &["logs", "two", "-c", "b"]).await {
        assert_eq!(out, "b-start\n");
        let out = kubectl(&c.s, &["logs", "two", "-c", "a", "--tail=3"]).await.unwrap();
        assert_eq!(out.lines().count(), 3, "{out}");
        let out = kubectl(&c.s, &["logs", "two", "-c", "a", "--since=1s", "--timestamps"])
            .await
            .unwrap();
        assert!(out.lines().all(|l| l.len() > 31 && l.as_bytes()[30] == b' '), "{out}");
        let out = kubectl(&c.s, &["logs", "two", "-c", "a", "--previous", "--tail=1"])
            .await
            .unwrap();
        assert!(out.starts_with("a-"), "{out}");
        let out = kubectl(&c.s, &["logs", "two", "-c", "a", "--limit-bytes=6"])
            .await
            .unwrap();
        assert_eq!(out, "a-line");
        let err = kubectl_fails(&c.s, &["logs", "two", "-c", "b", "--previous"])
            .await
            .unwrap();
        assert!(
            err.contains(r#"previous terminated container "b" in pod "two" not found"#),
            "{err}"
        );
        let err = kubectl_fails(&c.s, &["logs", "pending"]).await.unwrap();
        assert!(err.contains("pod pending does not have a host assigned"), "{err}");
        // Without -c, kubectl picks the first container.
        let out = c.s.kubectl(&["logs", "two", "--tail=1"]).await.unwrap();
        assert!(
            text(&out.stderr).contains(r#"Defaulted container "a""#),
            "{}",
            text(&out.stderr)
        );
    }
    c.stop().await;
}
