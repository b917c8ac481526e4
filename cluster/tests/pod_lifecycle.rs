//! The node agent in depth, end to end: a real member, scheduler, controllers and a node
//! agent running pods as host processes. Probes (liveness restarts, readiness drives
//! Ready), crash back-off (`CrashLoopBackOff` with growing delays, `logs --previous`),
//! environment from ConfigMaps and the downward API (`CreateContainerConfigError` until
//! the ConfigMap exists), a ConfigMap volume that follows its ConfigMap, events for
//! `kubectl describe`, and a rolling update that never drops below
//! `replicas - maxUnavailable` ready pods.

mod common;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod};
use kube::api::{ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{json, Value};

use common::{cluster, kubectl, wait_for, wait_until};

fn pod(name: &str, container: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [container]},
    }))
    .unwrap()
}

fn container_status(p: &Pod) -> Value {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .map(|c| serde_json::to_value(c).unwrap())
        .unwrap_or(Value::Null)
}

fn condition(p: &Pod, type_: &str) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

/// Reasons of the events about pod `name`.
async fn event_reasons(events: &Api<Event>, name: &str) -> Vec<(String, String)> {
    let lp = ListParams::default().fields(&format!("involvedObject.name={name}"));
    events
        .list(&lp)
        .await
        .map(|l| {
            l.items
                .into_iter()
                .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn probes_back_off_and_configuration_from_the_api() {
    let c = cluster().await;
    let pods: Api<Pod> = Api::namespaced(c.s.client.clone(), "default");
    let events: Api<Event> = Api::namespaced(c.s.client.clone(), "default");
    let gate = c.s.dir.path().join("ready-gate");
    let pp = PostParams::default();

    // 1. A container whose liveness probe always fails is restarted.
    let live = pod(
        "live",
        json!({"name": "c", "image": "busybox", "command": ["sleep", "300"],
            "livenessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 1}}),
    );
    // 2. A container that crashes backs off: 10 s, then 20 s.
    let crash = pod(
        "crash",
        json!({"name": "c", "image": "busybox", "command": ["sh", "-c", "echo run $(date +%s%N); exit 1"]}),
    );
    // 3. Readiness follows its probe, and the Ready condition follows readiness.
    let ready = pod(
        "ready",
        json!({"name": "c", "image": "busybox", "command": ["sleep", "300"],
            "readinessProbe": {"exec": {"command": ["test", "-e", gate.display().to_string()]},
                "periodSeconds": 1, "failureThreshold": 1}}),
    );
    // 4. Environment from a ConfigMap that does not exist yet, and from the pod itself.
    let config = pod(
        "config",
        json!({"name": "c", "image": "busybox", "command": ["sh", "-c", "echo greeting=$GREETING me=$ME color=$COLOR; sleep 300"],
            "env": [
                {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
                {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ],
            "envFrom": [{"configMapRef": {"name": "settings"}}]}),
    );
    // 5. The same ConfigMap as a mounted file, which follows the ConfigMap.
    let mount = c.s.dir.path().join("mounted-settings");
    let mounted: Pod = serde_json::from_value(json!({
        "metadata": {"name": "mounted"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "settings", "configMap": {"name": "settings"}}],
            "containers": [{"name": "c", "image": "busybox",
                "command": ["sh", "-c", format!("while true; do echo file=$(cat {}/greeting); sleep 0.2; done", mount.display())],
                "volumeMounts": [{"name": "settings", "mountPath": mount.display().to_string(), "readOnly": true}]}],
        },
    }))
    .unwrap();
    for p in [&live, &crash, &ready, &config, &mounted] {
        pods.create(&pp, p).await.unwrap();
    }

    wait_until("the configuration error", Duration::from_secs(30), || async {
        let p = pods.get("config").await.unwrap();
        let s = container_status(&p);
        s.pointer("/state/waiting/reason") == Some(&json!("CreateContainerConfigError"))
            && s.pointer("/state/waiting/message") == Some(&json!("configmap \"settings\" not found"))
    })
    .await;
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "settings"},
        "data": {"greeting": "hello", "COLOR": "blue"},
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(c.s.client.clone(), "default")
        .create(&pp, &cm)
        .await
        .unwrap();
    wait_until("the configured process's output", Duration::from_secs(30), || async {
        pods.logs("config", &LogParams::default())
            .await
            .is_ok_and(|l| l.contains("greeting=hello me=config color=blue"))
    })
    .await;
    let file_says = |what: &'static str| {
        let pods = pods.clone();
        async move {
            let tail = LogParams {
                tail_lines: Some(1),
                ..Default::default()
            };
            pods.logs("mounted", &tail)
                .await
                .is_ok_and(|l| l.trim() == format!("file={what}"))
        }
    };
    wait_until("the mounted file", Duration::from_secs(30), || file_says("hello")).await;
    Api::<ConfigMap>::namespaced(c.s.client.clone(), "default")
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"greeting": "bonjour"}})),
        )
        .await
        .unwrap();
    wait_until("the mounted file to change", Duration::from_secs(30), || {
        file_says("bonjour")
    })
    .await;

    wait_until("a liveness restart", Duration::from_secs(30), || async {
        let p = pods.get("live").await.unwrap();
        container_status(&p)["restartCount"].as_i64().unwrap_or(0) >= 1
    })
    .await;

    let p = pods.get("ready").await.unwrap();
    assert_eq!(
        condition(&p, "Ready").as_deref(),
        Some("False"),
        "not ready before the gate"
    );
    std::fs::write(&gate, "").unwrap();
    wait_until("ready", Duration::from_secs(30), || async {
        let p = pods.get("ready").await.unwrap();
        condition(&p, "Ready").as_deref() == Some("True") && container_status(&p)["ready"] == json!(true)
    })
    .await;
    std::fs::remove_file(&gate).unwrap();
    wait_until("unready again", Duration::from_secs(30), || async {
        let p = pods.get("ready").await.unwrap();
        condition(&p, "Ready").as_deref() == Some("False") && container_status(&p)["restartCount"] == json!(0)
    })
    .await;

    // Back-off: the first restart is at once, the next after 10 s, then 20 s.
    let backoff = |delay: &'static str| {
        let pods = pods.clone();
        async move {
            let p = pods.get("crash").await.unwrap();
            let s = container_status(&p);
            let message = s
                .pointer("/state/waiting/message")
                .and_then(Value::as_str)
                .unwrap_or("");
            (s.pointer("/state/waiting/reason") == Some(&json!("CrashLoopBackOff"))
                && message.starts_with(&format!(
                    "back-off {delay} restarting failed container=c pod=crash_default("
                )))
            .then_some(s)
        }
    };
    let first = wait_for("back-off 10s", Duration::from_secs(30), || backoff("10s")).await;
    assert_eq!(first["restartCount"], 2, "{first}");
    assert_eq!(first.pointer("/lastState/terminated/exitCode"), Some(&json!(1)));
    let second = wait_for("back-off 20s", Duration::from_secs(40), || backoff("20s")).await;
    assert_eq!(second["restartCount"], 3, "{second}");
    let previous = pods
        .logs(
            "crash",
            &LogParams {
                previous: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(previous.starts_with("run "), "{previous}");
    if let Some(table) = kubectl(&c.s, &["get", "pod", "crash"]).await {
        assert!(table.contains("CrashLoopBackOff"), "{table}");
    }

    // What `kubectl describe pod` lists under Events.
    wait_until("the events", Duration::from_secs(30), || async {
        let live = event_reasons(&events, "live").await;
        let crash = event_reasons(&events, "crash").await;
        let config = event_reasons(&events, "config").await;
        live.iter()
            .any(|(r, m)| r == "Unhealthy" && m.starts_with("Liveness probe failed"))
            && live
                .iter()
                .any(|(r, m)| r == "Killing" && m == "Container c failed liveness probe, will be restarted")
            && crash.iter().any(|(r, m)| {
                r == "BackOff" && m.starts_with("Back-off restarting failed container c in pod crash_default(")
            })
            && config
                .iter()
                .any(|(r, m)| r == "Failed" && m == "Error: configmap \"settings\" not found")
            && config.iter().any(|(r, _)| r == "Started")
    })
    .await;
    if let Some(describe) = kubectl(&c.s, &["describe", "pod", "live"]).await {
        assert!(describe.contains("Liveness probe failed"), "{describe}");
    }
    c.stop().await;
}

#[tokio::test]
async fn a_rolling_update_keeps_replicas_minus_max_unavailable_ready() {
    let c = cluster().await;
    let deploys: Api<Deployment> = Api::namespaced(c.s.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(c.s.client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "300"], "env": [{"name": "V", "value": "1"}],
                        // Ready a second or two after it starts, as a real server would be.
                        "readinessProbe": {"exec": {"command": ["true"]}, "initialDelaySeconds": 1, "periodSeconds": 1}}],
                },
            },
        },
    }))
    .unwrap();
    deploys.create(&PostParams::default(), &d).await.unwrap();
    let ready_pods = || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default().labels("app=web")).await.unwrap();
            list.items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none() && condition(p, "Ready").as_deref() == Some("True"))
                .count()
        }
    };
    wait_until("four ready pods", Duration::from_secs(60), || async {
        ready_pods().await == 4
    })
    .await;

    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "env": [{"name": "V", "value": "2"}]}]}}}});
    deploys
        .patch("web", &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .unwrap();
    let mut fewest = 4;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        fewest = fewest.min(ready_pods().await);
        let d = deploys.get("web").await.unwrap();
        let s = d.status.clone().unwrap_or_default();
        let done = d.metadata.generation == s.observed_generation
            && s.updated_replicas == Some(4)
            && s.available_replicas == Some(4)
            && s.replicas == Some(4);
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rollout did not finish: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(fewest >= 3, "ready pods fell to {fewest} during the rollout");
    let list = pods.list(&ListParams::default().labels("app=web")).await.unwrap();
    let current: Vec<String> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.name_any())
        .collect();
    assert_eq!(current.len(), 4, "{current:?}");
    c.stop().await;
}
