//! Pod workers running real processes (no API server: status writes fail and are
//! retried, which these tests do not look at).

use std::time::Instant;

use k8s_openapi::api::core::v1::{Container, ExecAction, PodSpec, Probe};

use super::*;
use crate::runtime::process::ProcessRuntime;

fn client() -> kube::Client {
    // Nothing listens there: the worker's status writes fail quietly.
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

fn sh(name: &str, script: &str) -> Container {
    Container {
        name: name.into(),
        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        ..Default::default()
    }
}

fn exec_probe(script: &str, failure_threshold: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        }),
        period_seconds: Some(1),
        failure_threshold: Some(failure_threshold),
        ..Default::default()
    }
}

fn start(spec: PodSpec, dir: &std::path::Path) -> PodWorker {
    let mut pod = Pod::default();
    pod.metadata.name = Some("p".into());
    pod.metadata.namespace = Some("t".into());
    pod.metadata.uid = Some("u".into());
    pod.spec = Some(spec);
    let ctx = WorkerContext {
        client: client(),
        node_ip: "127.0.0.1".into(),
        events: Recorder::discard(),
    };
    PodWorker::start(ctx, pod, Arc::new(ProcessRuntime), dir.to_path_buf())
}

async fn until(w: &PodWorker, what: &str, f: impl Fn(&PodState) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if w.shared.read(&f) {
            return;
        }
        let state = w.shared.read(|s| format!("{s:?}"));
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {state}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn app(w: &PodWorker, i: usize) -> ContainerState {
    w.shared.get(Slot::App(i)).unwrap()
}

fn pid(s: &ContainerState) -> i32 {
    s.id.strip_prefix("process://").and_then(|p| p.parse().ok()).unwrap()
}

#[tokio::test]
async fn a_killed_container_restarts_and_a_stubborn_one_is_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    // Ignores SIGTERM (and so do its children): only SIGKILL ends it.
    let spec = PodSpec {
        containers: vec![sh("c", "trap '' TERM; while true; do sleep 0.1; done")],
        ..Default::default()
    };
    let w = start(spec, dir.path());
    until(&w, "the first start", |s| s.app[0].running).await;
    let first = app(&w, 0);
    unsafe { libc::kill(pid(&first), libc::SIGKILL) };
    until(&w, "a restart", |s| s.app[0].running && s.app[0].restarts == 1).await;
    let second = app(&w, 0);
    assert_ne!(pid(&second), pid(&first));
    assert_eq!(
        second.last_state.pointer("/terminated/signal"),
        Some(&json!(libc::SIGKILL))
    );
    assert!(
        dir.path().join("c.previous.log").exists(),
        "the first run's log is kept"
    );

    let grace = Duration::from_millis(500);
    let asked = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), w.stop(Some(grace)))
        .await
        .unwrap();
    assert!(asked.elapsed() >= grace, "SIGKILL waits for the grace period");
    let gone = unsafe { libc::kill(pid(&second), 0) } != 0;
    assert!(gone, "the container's process is gone after stop");
}

#[tokio::test]
async fn a_crashing_container_backs_off() {
    let dir = tempfile::tempdir().unwrap();
    let spec = PodSpec {
        containers: vec![sh("c", "exit 3")],
        ..Default::default()
    };
    let w = start(spec, dir.path());
    // The first restart is immediate, the second waits 10 s.
    until(&w, "back-off", |s| {
        s.app[0].state.pointer("/waiting/reason") == Some(&json!("CrashLoopBackOff"))
    })
    .await;
    let c = app(&w, 0);
    assert_eq!(c.restarts, 2, "{c:?}");
    assert_eq!(c.last_state.pointer("/terminated/exitCode"), Some(&json!(3)));
    let message = c
        .state
        .pointer("/waiting/message")
        .and_then(Value::as_str)
        .unwrap_or("");
    assert!(
        message.starts_with("back-off 10s restarting failed container=c pod=p_t(u)"),
        "{message}"
    );
    w.stop(Some(Duration::ZERO)).await;
}

#[tokio::test]
async fn liveness_failures_restart_and_readiness_follows_its_probe() {
    let dir = tempfile::tempdir().unwrap();
    let ready_file = dir.path().join("ready");
    let mut c = sh("c", "sleep 60");
    c.liveness_probe = Some(exec_probe("false", 1));
    let mut r = sh("r", "sleep 60");
    r.readiness_probe = Some(exec_probe(&format!("test -e {}", ready_file.display()), 1));
    let spec = PodSpec {
        containers: vec![c, r],
        termination_grace_period_seconds: Some(1),
        ..Default::default()
    };
    let w = start(spec, dir.path());
    until(&w, "a liveness restart", |s| s.app[0].restarts >= 1).await;
    assert_eq!(
        app(&w, 0).last_state.pointer("/terminated/signal"),
        Some(&json!(libc::SIGTERM))
    );
    assert!(!app(&w, 1).ready, "not ready before its probe passes");
    std::fs::write(&ready_file, "").unwrap();
    until(&w, "ready", |s| s.app[1].ready).await;
    std::fs::remove_file(&ready_file).unwrap();
    until(&w, "unready again", |s| !s.app[1].ready).await;
    assert_eq!(app(&w, 1).restarts, 0, "readiness never restarts");
    w.stop(Some(Duration::ZERO)).await;
}

#[tokio::test]
async fn init_containers_run_in_order_before_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let spec = PodSpec {
        init_containers: Some(vec![sh("first", "echo 1 >> order"), sh("second", "echo 2 >> order")]),
        containers: vec![sh("app", "echo app >> order; sleep 60")],
        restart_policy: Some("Never".into()),
        ..Default::default()
    };
    let w = start(spec, dir.path());
    until(&w, "the app running", |s| s.initialized && s.app[0].running).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let order = std::fs::read_to_string(dir.path().join("order")).unwrap();
    assert_eq!(order, "1\n2\napp\n");
    let done = w
        .shared
        .read(|s| s.init.iter().map(|c| c.done.map(|e| e.code)).collect::<Vec<_>>());
    assert_eq!(done, [Some(0), Some(0)]);
    w.stop(Some(Duration::ZERO)).await;
}

#[tokio::test]
async fn a_failed_init_container_fails_a_never_restarting_pod() {
    let dir = tempfile::tempdir().unwrap();
    let spec = PodSpec {
        init_containers: Some(vec![sh("bad", "exit 1")]),
        containers: vec![sh("app", "touch ran")],
        restart_policy: Some("Never".into()),
        ..Default::default()
    };
    let w = start(spec, dir.path());
    until(&w, "the pod failed", |s| status::phase(s) == "Failed").await;
    assert!(!dir.path().join("ran").exists(), "the app never started");
    w.stop(None).await;
}

#[tokio::test]
async fn the_active_deadline_stops_the_pod() {
    let dir = tempfile::tempdir().unwrap();
    let spec = PodSpec {
        containers: vec![sh("c", "sleep 60")],
        active_deadline_seconds: Some(1),
        termination_grace_period_seconds: Some(1),
        ..Default::default()
    };
    let w = start(spec, dir.path());
    until(&w, "deadline exceeded", |s| {
        s.failed.as_ref().is_some_and(|(r, _)| r == "DeadlineExceeded") && !s.app[0].running
    })
    .await;
    w.stop(None).await;
}

#[tokio::test]
async fn volumes_are_mounted_where_the_container_asks() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: mount namespaces need root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().join("scratch");
    let host = dir.path().join("host-data");
    let spec: PodSpec = serde_json::from_value(json!({
        "volumes": [
            {"name": "scratch", "emptyDir": {}},
            {"name": "host", "hostPath": {"path": host.display().to_string(), "type": "DirectoryOrCreate"}},
            {"name": "info", "downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
        ],
        "initContainers": [{"name": "init", "command": ["sh", "-c", format!("echo from-init > {}/note", scratch.display())],
            "volumeMounts": [{"name": "scratch", "mountPath": scratch.display().to_string()}]}],
        "containers": [{"name": "c", "command": ["sh", "-c",
            format!("cat {s}/note {s}/info/name > {h}/seen; sleep 60", s = scratch.display(), h = host.display())],
            "volumeMounts": [
                {"name": "scratch", "mountPath": scratch.display().to_string()},
                {"name": "info", "mountPath": scratch.join("info").display().to_string(), "readOnly": true},
                {"name": "host", "mountPath": host.display().to_string()},
            ]}],
        "restartPolicy": "Never",
    }))
    .unwrap();
    let w = start(spec, dir.path());
    let seen = host.join("seen");
    until(&w, "the app running", |s| s.app[0].running).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&seen).unwrap_or_default().lines().count() < 2 {
        assert!(
            Instant::now() < deadline,
            "the container never wrote {}",
            seen.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "from-init\np");
    // The emptyDir lives in the pod directory; the host path was only a mount point.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("volumes/scratch/note")).unwrap(),
        "from-init\n"
    );
    assert!(!scratch.join("note").exists());
    w.stop(Some(Duration::ZERO)).await;
}
