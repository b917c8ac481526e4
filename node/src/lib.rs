//! Kairn's node agent: registers a Node, keeps its Lease, and runs the pods bound to it
//! through a [`runtime::Runtime`] (host processes by default), reporting their status;
//! or, with [`simulate`], stands in for thousands of hollow nodes that run nothing.

pub mod events;
pub mod logs;
pub mod node_status;
pub mod pod;
pub mod runtime;
pub mod simulate;
pub mod static_pods;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::watch;

use pod::{PodWorker, WorkerContext};
use runtime::Runtime;

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The Node's name.
    pub node_name: String,
    /// The address pods and the node are reachable at.
    pub node_ip: String,
    /// Where pod directories (`pods/<uid>/`: logs, working directories) live.
    pub data_dir: PathBuf,
    /// Where the agent serves container logs to the API server (port 0 picks one).
    pub log_addr: SocketAddr,
    /// Static pod manifests to run without the API server (kubelet's `staticPodPath`).
    pub manifest_dir: Option<PathBuf>,
    /// When the node reports memory or disk pressure.
    pub eviction_hard: node_status::EvictionHard,
}

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Registering the Node failed.
    #[error("registering node {node}: {source}")]
    Register { node: String, source: kube::Error },
    /// The log endpoint could not be served.
    #[error("serving logs on {addr}: {source}")]
    Logs { addr: SocketAddr, source: std::io::Error },
}

/// Runs the agent until `shutdown` turns true, then stops every pod it runs.
pub async fn run<R: Runtime>(
    client: kube::Client,
    config: AgentConfig,
    runtime: R,
    shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let node = config.node_name.clone();
    let logs_err = |source| Error::Logs {
        addr: config.log_addr,
        source,
    };
    let listener = tokio::net::TcpListener::bind(config.log_addr).await.map_err(logs_err)?;
    let log_port = listener.local_addr().map_err(logs_err)?.port();
    let pod_dirs = logs::PodDirs::default();
    let mut log_stop = shutdown.clone();
    let log_server =
        axum::serve(listener, logs::router(pod_dirs.clone(), shutdown.clone())).with_graceful_shutdown(async move {
            let _ = log_stop.changed().await;
        });
    let log_task = tokio::spawn(async move {
        if let Err(e) = log_server.await {
            tracing::error!(error = %e, "log endpoint failed");
        }
    });
    let ctx = WorkerContext {
        client: client.clone(),
        node_ip: config.node_ip.clone(),
        events: crate::events::Recorder::new(client.clone(), &config.node_name),
    };
    let runtime = Arc::new(runtime);
    let (mirror_gone, mirror_rx) = tokio::sync::mpsc::channel(1);
    let static_pods = config.manifest_dir.clone().map(|dir| {
        let (ctx, config, runtime, pod_dirs, shutdown) = (
            ctx.clone(),
            config.clone(),
            runtime.clone(),
            pod_dirs.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move { static_pods::run(ctx, (dir, &config), runtime, pod_dirs, mirror_rx, shutdown).await })
    });
    // The API server may still be starting: retry registration for a while, and for
    // good when static pods run (they may be what brings the API server up).
    let mut attempt = 0;
    loop {
        match node_status::register(
            &client,
            &node,
            &config.node_ip,
            log_port,
            &config.data_dir,
            &config.eviction_hard,
        )
        .await
        {
            Ok(()) => break,
            Err(e) if attempt < 20 || static_pods.is_some() => {
                attempt += 1;
                tracing::debug!(node = %node, error = %e, "registration failed; retrying");
                let delay = Duration::from_millis(if attempt <= 20 { 250 } else { 5000 });
                let mut stop = shutdown.clone();
                let stopping = *stop.borrow()
                    || tokio::select! {
                        _ = tokio::time::sleep(delay) => false,
                        _ = stop.changed() => true,
                    };
                if stopping {
                    if let Some(task) = static_pods {
                        let _ = task.await;
                    }
                    return Ok(());
                }
            }
            Err(source) => return Err(Error::Register { node, source }),
        }
    }
    let beat = tokio::spawn(heartbeats(client.clone(), config.clone(), shutdown.clone()));
    run_pods(ctx, &config, runtime, pod_dirs, mirror_gone, shutdown).await;
    if let Some(task) = static_pods {
        let _ = task.await;
    }
    let mut since = beat.await.unwrap_or_default();
    let _ = log_task.await;
    let pressure = node_status::Pressure::measure(&config.data_dir, &config.eviction_hard);
    if let Err(e) = node_status::heartbeat(&client, &node, false, pressure, &mut since).await {
        tracing::debug!(node = %node, error = %e, "could not mark the node not ready");
    }
    Ok(())
}

/// Renews the node's Lease and writes its conditions when they change (or once in
/// [`node_status::STATUS_REPORT`]); returns the conditions' transition times.
async fn heartbeats(
    client: kube::Client,
    config: AgentConfig,
    mut shutdown: watch::Receiver<bool>,
) -> node_status::Transitions {
    let node = config.node_name.clone();
    let mut since = node_status::Transitions::new();
    let mut last: Option<(node_status::Pressure, std::time::Instant)> = None;
    // The Node as the API has it: when something else (the node lifecycle controller,
    // after a lost Lease) changed our Ready condition, write ours again at once.
    let (api_ready_tx, api_ready) = watch::channel(true);
    let own = watcher::Config::default().fields(&format!("metadata.name={node}"));
    let mut own_node = watcher(Api::<k8s_openapi::api::core::v1::Node>::all(client.clone()), own).boxed();
    let follower = tokio::spawn(async move {
        while let Some(e) = own_node.next().await {
            if let Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) = e {
                let ready = n
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                api_ready_tx.send_replace(ready);
            }
        }
    });
    loop {
        if let Err(e) = node_status::renew_lease(&client, &node).await {
            tracing::warn!(node = %node, error = %e, "lease renewal failed");
        }
        let pressure = node_status::Pressure::measure(&config.data_dir, &config.eviction_hard);
        let due = !*api_ready.borrow()
            || last.is_none_or(|(p, at)| p != pressure || at.elapsed() >= node_status::STATUS_REPORT);
        if due {
            if pressure != node_status::Pressure::default() {
                tracing::warn!(node = %node, memory = pressure.memory, disk = pressure.disk, pids = pressure.pids, "node under pressure");
            }
            match node_status::heartbeat(&client, &node, true, pressure, &mut since).await {
                Ok(()) => last = Some((pressure, std::time::Instant::now())),
                Err(e) => tracing::warn!(node = %node, error = %e, "node status update failed"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(node_status::HEARTBEAT) => {}
            _ = shutdown.changed() => {
                follower.abort();
                return since;
            }
        }
    }
}

/// Ends a graceful deletion: stops the pod's containers (if they run here), then deletes
/// the pod for good (grace period 0, only this very pod by its uid).
async fn finish_deletion<R: Runtime>(
    client: kube::Client,
    pod: Pod,
    worker: Option<PodWorker>,
    dir: PathBuf,
    runtime: Arc<R>,
) {
    match worker {
        Some(w) => {
            // The grace period the deletion asked for, as a kubelet honours it.
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .map(|s| Duration::from_secs(s.max(0) as u64));
            w.stop(grace).await;
        }
        // Deleted while no agent ran here: what still runs of it goes now.
        None => runtime.clean_up(&dir),
    }
    let _ = tokio::fs::remove_dir_all(&dir).await;
    let (Some(ns), Some(uid)) = (pod.namespace(), pod.uid()) else {
        return;
    };
    let api: Api<Pod> = Api::namespaced(client, &ns);
    let params = kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(kube::api::Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&pod.name_any(), &params).await {
        Ok(_) => {}
        // Already gone, or replaced by a new pod of the same name.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(e) => {
            tracing::warn!(object = %format!("{ns}/{}", pod.name_any()), error = %e, "could not finish deleting the pod")
        }
    }
}

/// Stops the processes and removes the directories of pods that an earlier agent ran
/// and that are gone now (deleted while no agent was running here).
fn clean_up_gone_pods<R: Runtime>(runtime: &R, pods_dir: &std::path::Path, listed: &HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(pods_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let uid = entry.file_name().to_string_lossy().into_owned();
        // Static pods are not in the API (their mirrors have uids of their own).
        if listed.contains(&uid) || uid.starts_with(static_pods::UID_PREFIX) {
            continue;
        }
        runtime.clean_up(&entry.path());
        if let Err(e) = std::fs::remove_dir_all(entry.path()) {
            tracing::debug!(dir = %entry.path().display(), error = %e, "cannot remove a gone pod's directory");
        }
    }
}

/// Follows the pods bound to this node: a worker per pod, stopped when the pod goes.
async fn run_pods<R: Runtime>(
    ctx: WorkerContext,
    config: &AgentConfig,
    runtime: Arc<R>,
    pod_dirs: logs::PodDirs,
    mirror_gone: tokio::sync::mpsc::Sender<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    let client = ctx.client.clone();
    let pods: Api<Pod> = Api::all(client.clone());
    let bound_here = watcher::Config::default().fields(&format!("spec.nodeName={}", config.node_name));
    let mut events = watcher(pods, bound_here).boxed();
    // By pod uid: the pod's namespace and name (for the log endpoint) and its worker.
    let mut workers: HashMap<String, (String, String, PodWorker)> = HashMap::new();
    // Pods seen during a relist; workers for pods missing from it are stopped after it.
    let mut relisted: Option<HashSet<String>> = None;
    // Pods whose graceful deletion this agent is finishing.
    let mut terminating: HashSet<String> = HashSet::new();
    // After the first list, what an earlier agent left of pods now gone is cleaned up.
    let mut first_list = true;
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            _ = shutdown.changed() => break,
        };
        let Some(event) = event else { break };
        match event {
            Ok(watcher::Event::Init) => relisted = Some(HashSet::new()),
            Ok(watcher::Event::InitApply(pod)) | Ok(watcher::Event::Apply(pod)) => {
                let Some(uid) = pod.uid() else { continue };
                if let Some(seen) = relisted.as_mut() {
                    seen.insert(uid.clone());
                }
                if pod.metadata.deletion_timestamp.is_some() {
                    if !terminating.insert(uid.clone()) {
                        continue;
                    }
                    // Deleted gracefully: stop the containers, then let the pod go.
                    let worker = workers.remove(&uid);
                    if let Some((ns, name, _)) = &worker {
                        pod_dirs.remove(ns, name);
                        tracing::info!(object = %format!("{ns}/{name}"), "stopping terminating pod");
                    }
                    let dir = config.data_dir.join("pods").join(&uid);
                    tokio::spawn(finish_deletion(
                        client.clone(),
                        pod,
                        worker.map(|(_, _, w)| w),
                        dir,
                        runtime.clone(),
                    ));
                    continue;
                }
                let phase = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .unwrap_or("Pending");
                if let Some((_, _, w)) = workers.get(&uid) {
                    w.update(pod);
                    continue;
                }
                // A mirror pod only shows a static pod, which runs from its file.
                if static_pods::is_mirror(&pod) {
                    continue;
                }
                if matches!(phase, "Succeeded" | "Failed") {
                    continue;
                }
                tracing::info!(object = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()), node = %config.node_name, "starting pod");
                let dir = config.data_dir.join("pods").join(&uid);
                let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
                let worker = PodWorker::start(ctx.clone(), pod, runtime.clone(), dir.clone());
                pod_dirs.insert(&ns, &name, dir, worker.liveness());
                workers.insert(uid, (ns, name, worker));
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(seen) = relisted.take() {
                    if std::mem::take(&mut first_list) {
                        clean_up_gone_pods(&*runtime, &config.data_dir.join("pods"), &seen);
                    }
                    let gone: Vec<String> = workers.keys().filter(|uid| !seen.contains(*uid)).cloned().collect();
                    for uid in gone {
                        if let Some((ns, name, w)) = workers.remove(&uid) {
                            pod_dirs.remove(&ns, &name);
                            tokio::spawn(w.stop(None));
                        }
                    }
                }
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(uid) = pod.uid() {
                    terminating.remove(&uid);
                }
                if static_pods::is_mirror(&pod) {
                    // Static pods cannot be deleted through the API: mirror them again.
                    let _ = mirror_gone.try_send(());
                }
                if let Some((ns, name, w)) = pod.uid().and_then(|uid| workers.remove(&uid)) {
                    pod_dirs.remove(&ns, &name);
                    tracing::info!(object = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()), "stopping deleted pod");
                    // Stopping may take the grace period: do not hold up other pods.
                    let dir = pod.uid().map(|uid| config.data_dir.join("pods").join(uid));
                    tokio::spawn(async move {
                        w.stop(Some(Duration::ZERO)).await;
                        if let Some(dir) = dir {
                            let _ = tokio::fs::remove_dir_all(dir).await;
                        }
                    });
                }
            }
            Err(e) => {
                tracing::warn!(node = %config.node_name, error = %e, "watching pods");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    // The agent is going away: its processes go with it, gracefully.
    futures::future::join_all(workers.into_values().map(|(_, _, w)| w.stop(None))).await;
}
