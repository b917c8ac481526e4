//! One pod on this node: its init containers in order, each to completion, then its
//! containers side by side (each in [`container`]: probes, hooks, restarts with crash
//! back-off, graceful stop), `activeDeadlineSeconds`, and the status reported back to
//! the API server ([`status`]).

mod backoff;
mod container;
mod env;
mod probe;
mod status;
mod volumes;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::events::{Recorder, Type};
use crate::runtime::{Exit, Runtime};
use backoff::CrashBackoff;
use container::Policy;

/// The current time in the Kubernetes `Time` format (RFC 3339, UTC, seconds).
pub(crate) fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The observed state of one container.
#[derive(Debug, Clone, Default)]
pub(crate) struct ContainerState {
    name: String,
    image: String,
    /// `running`, `terminated` or `waiting` as a JSON ContainerState.
    state: Value,
    last_state: Value,
    restarts: i32,
    running: bool,
    /// Its startup probe passed (or it has none).
    started: bool,
    /// Its readiness probe passed (or it has none).
    ready: bool,
    /// Ended for good (the restart policy starts it no more).
    done: Option<Exit>,
    id: String,
    /// An init container with `restartPolicy: Always`, running beside the others.
    sidecar: bool,
}

/// The observed state of the whole pod.
#[derive(Debug, Default)]
pub(crate) struct PodState {
    init: Vec<ContainerState>,
    app: Vec<ContainerState>,
    /// Every init container has completed.
    initialized: bool,
    /// The pod failed as a whole: reason and message (empty when Kubernetes gives none).
    failed: Option<(String, String)>,
}

/// Which container of the pod.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Slot {
    Init(usize),
    App(usize),
}

/// Shared between container tasks, the status reporter and the log endpoint.
pub(crate) struct Shared {
    state: Mutex<PodState>,
    /// Bumped on every change, so that several tasks can wait for changes.
    changes: watch::Sender<u64>,
    /// The status must be written again even if unchanged (a mirror pod was recreated).
    rewrite: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut PodState) -> T) -> T {
        let out = f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
        self.changes.send_modify(|n| *n += 1);
        out
    }

    /// Reads the state without counting a change.
    fn read<T>(&self, f: impl FnOnce(&PodState) -> T) -> T {
        f(&self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn update(&self, slot: Slot, f: impl FnOnce(&mut ContainerState)) {
        self.with(|s| {
            let c = match slot {
                Slot::Init(i) => s.init.get_mut(i),
                Slot::App(i) => s.app.get_mut(i),
            };
            if let Some(c) = c {
                f(c);
            }
        });
    }

    fn get(&self, slot: Slot) -> Option<ContainerState> {
        self.read(|s| match slot {
            Slot::Init(i) => s.init.get(i).cloned(),
            Slot::App(i) => s.app.get(i).cloned(),
        })
    }
}

impl crate::logs::Liveness for Shared {
    fn running(&self, container: &str) -> bool {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.init
            .iter()
            .chain(s.app.iter())
            .any(|c| c.name == container && c.running)
    }
}

/// What all pod workers of an agent share.
#[derive(Clone)]
pub struct WorkerContext {
    /// The agent's API client.
    pub client: kube::Client,
    /// The node's (and so every pod's) IP.
    pub node_ip: String,
    /// Events about pods.
    pub events: Recorder,
}

/// Handle of a running pod worker.
pub struct PodWorker {
    /// Turns `Some(grace)` when the pod must stop.
    stop: watch::Sender<Option<Duration>>,
    pod: watch::Sender<Arc<Pod>>,
    task: tokio::task::JoinHandle<()>,
    shared: Arc<Shared>,
}

fn grace_of(pod: &Pod) -> Duration {
    let seconds = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    Duration::from_secs(seconds.max(0) as u64)
}

impl PodWorker {
    /// Starts the pod's containers and reports its status until stopped.
    pub fn start<R: Runtime>(ctx: WorkerContext, pod: Pod, runtime: Arc<R>, pod_dir: PathBuf) -> Self {
        let spec = pod.spec.clone().unwrap_or_default();
        let has_init = spec.init_containers.as_ref().is_some_and(|i| !i.is_empty());
        let waiting = |reason: &str| json!({"waiting": {"reason": reason}});
        let init = spec
            .init_containers
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, c)| ContainerState {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                state: waiting(if i == 0 { "ContainerCreating" } else { "PodInitializing" }),
                sidecar: c.restart_policy.as_deref() == Some("Always"),
                ..Default::default()
            })
            .collect();
        let app = spec
            .containers
            .iter()
            .map(|c| ContainerState {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                state: waiting(if has_init {
                    "PodInitializing"
                } else {
                    "ContainerCreating"
                }),
                ..Default::default()
            })
            .collect();
        let shared = Arc::new(Shared {
            state: Mutex::new(PodState {
                init,
                app,
                initialized: !has_init,
                failed: None,
            }),
            changes: watch::Sender::new(0),
            rewrite: std::sync::atomic::AtomicBool::new(false),
        });
        let (stop, stop_rx) = watch::channel(None);
        let (pod_tx, pod_rx) = watch::channel(Arc::new(pod));
        let task = tokio::spawn(run(ctx, runtime, pod_rx, pod_dir, shared.clone(), stop_rx));
        PodWorker {
            stop,
            pod: pod_tx,
            task,
            shared,
        }
    }

    /// Hands the worker a newer version of its pod (labels and annotations change).
    pub fn update(&self, pod: Pod) {
        self.pod.send_replace(Arc::new(pod));
    }

    /// Writes the pod's status again, changed or not (its API object was recreated).
    pub fn report_again(&self) {
        self.shared.rewrite.store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.changes.send_modify(|n| *n += 1);
    }

    /// Tells the log endpoint whether a container of this pod runs.
    pub fn liveness(&self) -> Arc<dyn crate::logs::Liveness> {
        self.shared.clone()
    }

    /// Stops the containers (`preStop`, SIGTERM, `grace` or the pod's own grace period,
    /// then SIGKILL) and waits.
    pub async fn stop(self, grace: Option<Duration>) {
        let grace = grace.unwrap_or_else(|| grace_of(&self.pod.borrow()));
        self.stop.send_replace(Some(grace));
        let _ = self.task.await;
    }
}

/// Waits until `rx` holds `Some`.
async fn stopped(mut rx: watch::Receiver<Option<Duration>>) -> Duration {
    loop {
        if let Some(g) = *rx.borrow_and_update() {
            return g;
        }
        if rx.changed().await.is_err() {
            // The worker's handle is gone: stop now.
            return Duration::ZERO;
        }
    }
}

async fn run<R: Runtime>(
    ctx: WorkerContext,
    runtime: Arc<R>,
    pod_rx: watch::Receiver<Arc<Pod>>,
    pod_dir: PathBuf,
    shared: Arc<Shared>,
    stop: watch::Receiver<Option<Duration>>,
) {
    let pod = pod_rx.borrow().clone();
    let object = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    if let Err(e) = std::fs::create_dir_all(&pod_dir) {
        tracing::error!(object = %object, error = %e, dir = %pod_dir.display(), "cannot create the pod directory");
    }
    let spec = pod.spec.clone().unwrap_or_default();
    let policy = Policy::of(&pod);
    // Containers stop on `kill`: when the worker is stopped, or the deadline passes.
    // Sidecars stop on `side_kill`: also once the app containers are done.
    let (kill, kill_rx) = watch::channel(None);
    let (side_kill, side_kill_rx) = watch::channel(None);
    let (kill, side_kill) = (Arc::new(kill), Arc::new(side_kill));
    let (done, done_rx) = watch::channel(false);
    let reporter = tokio::spawn(report(
        ctx.client.clone(),
        (*pod).clone(),
        shared.clone(),
        ctx.node_ip.clone(),
        stop.clone(),
        done_rx,
    ));
    let forward = {
        let (kill, side_kill) = (kill.clone(), side_kill.clone());
        tokio::spawn(async move {
            let grace = stopped(stop).await;
            kill.send_replace(Some(grace));
            side_kill.send_replace(Some(grace));
        })
    };
    let deadline = spec.active_deadline_seconds.map(|seconds| {
        let (kill, side_kill, shared, events, pod) = (
            kill.clone(),
            side_kill.clone(),
            shared.clone(),
            ctx.events.clone(),
            pod.clone(),
        );
        let started = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0)
            .unwrap_or_else(k8s_openapi::jiff::Timestamp::now);
        tokio::spawn(async move {
            let elapsed = k8s_openapi::jiff::Timestamp::now().as_second() - started.as_second();
            tokio::time::sleep(Duration::from_secs((seconds - elapsed).max(0) as u64)).await;
            let message = "Pod was active on the node longer than the specified deadline";
            tracing::info!(object = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()), "active deadline exceeded; stopping the pod");
            shared.with(|s| s.failed = Some(("DeadlineExceeded".into(), message.into())));
            events.pod(&pod, None, Type::Normal, "DeadlineExceeded", message.into());
            kill.send_replace(Some(grace_of(&pod)));
            side_kill.send_replace(Some(grace_of(&pod)));
        })
    });
    // Volumes first: no container starts before they are all in place.
    let (volume_tx, mut volume_rx) = watch::channel(None);
    let follower = tokio::spawn(volumes::follow(
        ctx.client.clone(),
        pod_rx.clone(),
        pod_dir.clone(),
        ctx.node_ip.clone(),
        volume_tx,
    ));
    let mut kill_wait = kill_rx.clone();
    let mut reported = None;
    let volume_paths = loop {
        let current = volume_rx.borrow_and_update().clone();
        match current {
            Some(Ok(paths)) => break Some(Arc::new(paths)),
            Some(Err(e)) if reported.as_ref() != Some(&e) => {
                tracing::info!(object = %object, error = %e, "volume not ready; the pod waits");
                ctx.events.pod(&pod, None, Type::Warning, "FailedMount", e.to_string());
                reported = Some(e);
            }
            _ => {}
        }
        if kill_wait.borrow().is_some() {
            break None;
        }
        tokio::select! {
            changed = volume_rx.changed() => if changed.is_err() { break None },
            _ = kill_wait.changed() => {}
        }
    };
    let mounted = volume_paths.is_some();
    let volume_paths = volume_paths.unwrap_or_default();
    let task = |c: &k8s_openapi::api::core::v1::Container, slot, policy, stop| container::Run {
        runtime: runtime.clone(),
        client: ctx.client.clone(),
        events: ctx.events.clone(),
        pod: pod_rx.clone(),
        spec: c.clone(),
        slot,
        shared: shared.clone(),
        policy,
        pod_dir: pod_dir.clone(),
        node_ip: ctx.node_ip.clone(),
        stop,
        backoff: CrashBackoff::default(),
        volumes: volume_paths.clone(),
    };

    // Init containers, in order, each to success (restarted on failure unless the pod
    // says Never); sidecars start in their turn and run on.
    let mut sidecars = Vec::new();
    let mut initialized = mounted;
    let init_policy = if policy == Policy::Never {
        Policy::Never
    } else {
        Policy::OnFailure
    };
    for (i, c) in spec.init_containers.iter().flatten().enumerate().filter(|_| mounted) {
        let slot = Slot::Init(i);
        let sidecar = c.restart_policy.as_deref() == Some("Always");
        if sidecar {
            let handle = tokio::spawn(task(c, slot, Policy::Always, side_kill_rx.clone()).run());
            sidecars.push(handle);
            let mut changes = shared.changes.subscribe();
            let mut kill_rx = kill_rx.clone();
            while !shared.get(slot).is_some_and(|s| s.running && s.started) && kill_rx.borrow().is_none() {
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = kill_rx.changed() => {}
                }
            }
        } else {
            let _ = tokio::spawn(task(c, slot, init_policy, kill_rx.clone()).run()).await;
        }
        if kill_rx.borrow().is_some() {
            initialized = false;
            break;
        }
        if !sidecar && shared.get(slot).and_then(|s| s.done).is_none_or(|e| e.code != 0) {
            tracing::info!(object = %object, container = %c.name, "init container failed; the pod fails");
            shared.with(|s| s.failed = Some((String::new(), String::new())));
            initialized = false;
            break;
        }
    }
    if initialized {
        shared.with(|s| s.initialized = true);
        let apps: Vec<_> = spec
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| tokio::spawn(task(c, Slot::App(i), policy, kill_rx.clone()).run()))
            .collect();
        futures::future::join_all(apps).await;
    }
    // The app containers are done (or the pod stops): so are its sidecars.
    side_kill.send_replace(Some(kill_rx.borrow().unwrap_or_else(|| grace_of(&pod))));
    futures::future::join_all(sidecars).await;
    forward.abort();
    follower.abort();
    if let Some(d) = deadline {
        d.abort();
    }
    let _ = done.send(true);
    let _ = reporter.await;
}

/// Writes the pod's status whenever it changes, until the pod is stopped or done.
async fn report(
    client: kube::Client,
    pod: Pod,
    shared: Arc<Shared>,
    node_ip: String,
    mut stop: watch::Receiver<Option<Duration>>,
    mut done: watch::Receiver<bool>,
) {
    let api: Api<Pod> = Api::namespaced(client, &pod.namespace().unwrap_or_default());
    let name = pod.name_any();
    let old = pod.status.as_ref();
    let start_time = old
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(now);
    let scheduled = old
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
        .and_then(|c| serde_json::to_value(c).ok())
        .unwrap_or_else(|| json!({"type": "PodScheduled", "status": "True"}));
    let static_pod = pod.uid().is_some_and(|u| u.starts_with(crate::static_pods::UID_PREFIX));
    let mut transitions = status::Transitions::default();
    let mut changes = shared.changes.subscribe();
    let mut last: Option<Value> = None;
    loop {
        let finished = *done.borrow();
        changes.borrow_and_update();
        if shared.rewrite.swap(false, std::sync::atomic::Ordering::SeqCst) {
            last = None;
        }
        let status = shared.read(|s| status::pod_status(s, &node_ip, &start_time, &scheduled, &mut transitions));
        if last.as_ref() != Some(&status) {
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": status})))
                .await
            {
                Ok(_) => last = Some(status),
                // Gone from the API; a static pod's mirror comes back, so it waits.
                Err(kube::Error::Api(s)) if s.code == 404 && !static_pod => return,
                Err(e) => tracing::debug!(object = %name, error = %e, "status update failed; retrying"),
            }
        } else if finished {
            return;
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = done.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests;
