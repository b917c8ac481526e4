//! One pod on this node: its containers' lifecycles (start, restart policy with back-off,
//! graceful stop) and the status reported back to the API server.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container as ContainerSpec, Pod};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

use crate::runtime::{Container, ContainerConfig, Exit, Runtime};

/// The current time in the Kubernetes `Time` format (RFC 3339, UTC, seconds).
pub(crate) fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The observed state of one container.
#[derive(Debug, Clone, Default)]
struct ContainerState {
    name: String,
    image: String,
    /// `running`, `terminated` or `waiting` as a JSON ContainerState.
    state: Value,
    last_state: Value,
    restarts: i32,
    running: bool,
    /// Ended for good (restart policy says no more restarts).
    done: Option<Exit>,
    id: String,
}

/// Shared between container tasks, the status reporter and the log endpoint.
struct Shared {
    containers: Mutex<Vec<ContainerState>>,
    changed: Notify,
}

impl crate::logs::Liveness for Shared {
    fn running(&self, container: &str) -> bool {
        let containers = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        containers.iter().any(|c| c.name == container && c.running)
    }
}

/// Handle of a running pod worker.
pub struct PodWorker {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    shared: Arc<Shared>,
}

impl PodWorker {
    /// Starts the pod's containers and reports its status until stopped.
    pub fn start<R: Runtime>(
        client: kube::Client,
        pod: Pod,
        runtime: Arc<R>,
        pod_dir: PathBuf,
        node_ip: String,
    ) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let spec = pod.spec.clone().unwrap_or_default();
        let shared = Arc::new(Shared {
            containers: Mutex::new(
                spec.containers
                    .iter()
                    .map(|c| ContainerState {
                        name: c.name.clone(),
                        image: c.image.clone().unwrap_or_default(),
                        state: json!({"waiting": {"reason": "ContainerCreating"}}),
                        ..Default::default()
                    })
                    .collect(),
            ),
            changed: Notify::new(),
        });
        let task = tokio::spawn(run(client, pod, runtime, pod_dir, node_ip, shared.clone(), stop_rx));
        PodWorker { stop, task, shared }
    }

    /// Tells the log endpoint whether a container of this pod runs.
    pub fn liveness(&self) -> Arc<dyn crate::logs::Liveness> {
        self.shared.clone()
    }

    /// Stops the containers (SIGTERM, the pod's grace period, then SIGKILL) and waits.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn container_config(pod: &Pod, spec: &ContainerSpec, pod_dir: &std::path::Path) -> ContainerConfig {
    let mut argv: Vec<String> = spec.command.clone().unwrap_or_default();
    argv.extend(spec.args.clone().unwrap_or_default());
    let mut env = vec![
        (
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
        ("HOSTNAME".to_string(), pod.name_any()),
        ("HOME".to_string(), pod_dir.display().to_string()),
    ];
    for e in spec.env.iter().flatten() {
        // valueFrom (ConfigMap/Secret/field refs) arrives with the agent's env support.
        if let Some(v) = &e.value {
            env.push((e.name.clone(), v.clone()));
        }
    }
    let working_dir = spec
        .working_dir
        .as_ref()
        .map(PathBuf::from)
        .unwrap_or_else(|| pod_dir.to_path_buf());
    ContainerConfig {
        name: spec.name.clone(),
        argv,
        env,
        working_dir,
        log_path: crate::logs::current_log(pod_dir, &spec.name),
    }
}

/// Whether the restart policy restarts a container that exited with `exit`.
fn restarts(policy: &str, exit: Exit) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit.code != 0,
        _ => true,
    }
}

/// Back-off before restart number `n` (1-based): 0s, 1s, 2s, 4s ... capped at 60s.
fn backoff(n: i32) -> Duration {
    if n <= 1 {
        Duration::ZERO
    } else {
        Duration::from_secs(1u64 << (n - 2).min(6)).min(Duration::from_secs(60))
    }
}

async fn run<R: Runtime>(
    client: kube::Client,
    pod: Pod,
    runtime: Arc<R>,
    pod_dir: PathBuf,
    node_ip: String,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let spec = pod.spec.clone().unwrap_or_default();
    let name = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    if let Err(e) = std::fs::create_dir_all(&pod_dir) {
        tracing::error!(object = %name, error = %e, dir = %pod_dir.display(), "cannot create the pod directory");
    }
    let grace = Duration::from_secs(spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64);
    let policy = spec.restart_policy.clone().unwrap_or_else(|| "Always".into());
    let mut tasks = Vec::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let config = container_config(&pod, c, &pod_dir);
        let task = run_container(
            runtime.clone(),
            config,
            i,
            shared.clone(),
            policy.clone(),
            grace,
            stop.clone(),
            name.clone(),
        );
        tasks.push(tokio::spawn(task));
    }
    let reporter = tokio::spawn(report(client, pod.clone(), shared.clone(), node_ip, stop.clone()));
    for t in tasks {
        let _ = t.await;
    }
    let _ = reporter.await;
}

#[allow(clippy::too_many_arguments)]
async fn run_container<R: Runtime>(
    runtime: Arc<R>,
    config: ContainerConfig,
    index: usize,
    shared: Arc<Shared>,
    policy: String,
    grace: Duration,
    mut stop: watch::Receiver<bool>,
    pod: String,
) {
    let update = |f: &dyn Fn(&mut ContainerState)| {
        if let Ok(mut c) = shared.containers.lock() {
            f(&mut c[index]);
        }
        shared.changed.notify_one();
    };
    let mut restarts_so_far = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        let started_at = now();
        let started = Instant::now();
        let mut container = match runtime.start(&config) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(object = %pod, container = %config.name, error = %e, "cannot start container");
                let message = e.to_string();
                update(&|c| {
                    c.state = json!({"waiting": {"reason": "RunContainerError", "message": message}});
                    c.running = false;
                });
                // Configuration errors do not heal by retrying quickly.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(10)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        let id = container.id();
        tracing::info!(object = %pod, container = %config.name, id = %id, "container started");
        update(&|c| {
            c.state = json!({"running": {"startedAt": started_at}});
            c.running = true;
            c.id = id.clone();
        });
        let exit = tokio::select! {
            exit = container.wait() => exit,
            _ = stop.changed() => {
                let _ = container.terminate();
                let exit = match tokio::time::timeout(grace, container.wait()).await {
                    Ok(exit) => exit,
                    Err(_) => {
                        tracing::info!(object = %pod, container = %config.name, "grace period over; killing");
                        let _ = container.kill();
                        container.wait().await
                    }
                };
                tracing::info!(object = %pod, container = %config.name, exit = ?exit.as_ref().ok(), "container stopped");
                return;
            }
        };
        let exit = match exit {
            Ok(exit) => exit,
            Err(e) => {
                tracing::warn!(object = %pod, container = %config.name, error = %e, "lost track of the container");
                Exit {
                    code: 255,
                    signal: None,
                }
            }
        };
        let finished_at = now();
        let reason = if exit.code == 0 { "Completed" } else { "Error" };
        let terminated = json!({"terminated": {"exitCode": exit.code, "signal": exit.signal, "reason": reason,
            "startedAt": started_at, "finishedAt": finished_at, "containerID": id}});
        tracing::info!(object = %pod, container = %config.name, code = exit.code, "container exited");
        if !restarts(&policy, exit) {
            update(&|c| {
                c.state = terminated.clone();
                c.running = false;
                c.done = Some(exit);
            });
            return;
        }
        // The run that ended keeps its log for `kubectl logs --previous` (and serves as
        // the current one until the next run starts, as a kubelet serves lastState).
        if let Some(dir) = config.log_path.parent() {
            let previous = crate::logs::previous_log(dir, &config.name);
            if let Err(e) = std::fs::rename(&config.log_path, &previous) {
                tracing::debug!(object = %pod, container = %config.name, error = %e, "no log to keep as the previous one");
            }
        }
        // A container that ran a while earns a fresh back-off.
        if started.elapsed() > Duration::from_secs(60) {
            restarts_so_far = 0;
        }
        restarts_so_far += 1;
        let delay = backoff(restarts_so_far);
        update(&|c| {
            c.last_state = terminated.clone();
            c.restarts += 1;
            c.running = false;
            c.state = if delay.is_zero() {
                json!({"waiting": {"reason": "ContainerCreating"}})
            } else {
                json!({"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off {}s restarting failed container", delay.as_secs())}})
            };
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The pod status for the current container states.
fn pod_status(containers: &[ContainerState], node_ip: &str, start_time: &str) -> Value {
    let all_running = containers.iter().all(|c| c.running);
    let all_done = containers.iter().all(|c| c.done.is_some());
    let ever_started = containers
        .iter()
        .any(|c| c.running || c.restarts > 0 || c.done.is_some());
    let phase = if all_done {
        if containers.iter().all(|c| c.done.is_some_and(|e| e.code == 0)) {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if ever_started {
        "Running"
    } else {
        "Pending"
    };
    let ready = if all_running { "True" } else { "False" };
    let t = now();
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            let mut s = json!({"name": c.name, "image": c.image, "imageID": "", "ready": c.running,
                "started": c.running, "restartCount": c.restarts, "state": c.state});
            if !c.id.is_empty() {
                s["containerID"] = json!(c.id);
            }
            if !c.last_state.is_null() {
                s["lastState"] = c.last_state.clone();
            }
            s
        })
        .collect();
    json!({
        "phase": phase,
        "hostIP": node_ip,
        "podIP": node_ip,
        "podIPs": [{"ip": node_ip}],
        "startTime": start_time,
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": t},
            {"type": "Ready", "status": ready, "lastTransitionTime": t},
        ],
        "containerStatuses": statuses,
    })
}

/// Writes the pod's status whenever a container changes, until the pod is stopped.
async fn report(client: kube::Client, pod: Pod, shared: Arc<Shared>, node_ip: String, mut stop: watch::Receiver<bool>) {
    let api: Api<Pod> = Api::namespaced(client, &pod.namespace().unwrap_or_default());
    let name = pod.name_any();
    let start_time = now();
    let mut last: Option<Value> = None;
    loop {
        let status = match shared.containers.lock() {
            Ok(c) => pod_status(&c, &node_ip, &start_time),
            Err(_) => return,
        };
        // Compare without timestamps of conditions: only real changes are written.
        let mut comparable = status.clone();
        comparable["conditions"] = Value::Null;
        if last.as_ref() != Some(&comparable) {
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": status})))
                .await
            {
                Ok(_) => last = Some(comparable),
                Err(kube::Error::Api(s)) if s.code == 404 => return,
                Err(e) => tracing::debug!(object = %name, error = %e, "status update failed; retrying"),
            }
        }
        tokio::select! {
            _ = shared.changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policy_and_backoff() {
        let ok = Exit { code: 0, signal: None };
        let bad = Exit { code: 1, signal: None };
        assert!(restarts("Always", ok) && restarts("Always", bad));
        assert!(!restarts("OnFailure", ok) && restarts("OnFailure", bad));
        assert!(!restarts("Never", bad));
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(100), Duration::from_secs(60));
    }

    #[test]
    fn phase_follows_containers() {
        let running = ContainerState {
            running: true,
            ..Default::default()
        };
        let failed = ContainerState {
            done: Some(Exit { code: 2, signal: None }),
            ..Default::default()
        };
        let succeeded = ContainerState {
            done: Some(Exit { code: 0, signal: None }),
            ..Default::default()
        };
        assert_eq!(pod_status(&[running.clone()], "127.0.0.1", "t")["phase"], "Running");
        assert_eq!(pod_status(&[failed.clone()], "127.0.0.1", "t")["phase"], "Failed");
        assert_eq!(pod_status(&[succeeded.clone()], "127.0.0.1", "t")["phase"], "Succeeded");
        assert_eq!(
            pod_status(&[ContainerState::default()], "127.0.0.1", "t")["phase"],
            "Pending"
        );
        assert_eq!(
            pod_status(&[running, succeeded], "127.0.0.1", "t")["conditions"][3]["status"],
            "False"
        );
    }

    fn state(shared: &Shared) -> ContainerState {
        shared.containers.lock().unwrap()[0].clone()
    }

    async fn until(shared: &Shared, what: &str, f: impl Fn(&ContainerState) -> bool) -> ContainerState {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = state(shared);
            if f(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn pid(s: &ContainerState) -> i32 {
        s.id.strip_prefix("process://").and_then(|p| p.parse().ok()).unwrap()
    }

    #[tokio::test]
    async fn a_killed_container_restarts_and_a_stubborn_one_is_killed_after_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Arc::new(Shared {
            containers: Mutex::new(vec![ContainerState::default()]),
            changed: Notify::new(),
        });
        let config = ContainerConfig {
            name: "c".into(),
            // Ignores SIGTERM (and so do its children): only SIGKILL ends it.
            argv: vec![
                "sh".into(),
                "-c".into(),
                "trap '' TERM; while true; do sleep 0.1; done".into(),
            ],
            env: vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())],
            working_dir: dir.path().to_path_buf(),
            log_path: dir.path().join("c.log"),
        };
        let (stop, stop_rx) = watch::channel(false);
        let grace = Duration::from_millis(500);
        let runtime = Arc::new(crate::runtime::process::ProcessRuntime);
        let task = tokio::spawn(run_container(
            runtime,
            config,
            0,
            shared.clone(),
            "Always".into(),
            grace,
            stop_rx,
            "t/p".into(),
        ));

        let first = until(&shared, "the first start", |s| s.running).await;
        unsafe { libc::kill(pid(&first), libc::SIGKILL) };
        let second = until(&shared, "a restart", |s| s.running && s.restarts == 1).await;
        assert_ne!(pid(&second), pid(&first));
        assert!(
            second.last_state.pointer("/terminated/signal") == Some(&json!(libc::SIGKILL)),
            "{second:?}"
        );

        let asked = Instant::now();
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert!(asked.elapsed() >= grace, "SIGKILL waits for the grace period");
        let gone = unsafe { libc::kill(pid(&second), 0) } != 0;
        assert!(gone, "the container's process is gone after stop");
    }
}
