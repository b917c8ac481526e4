//! One container's life inside its pod: build its environment, start it, run its
//! `postStart` hook and its probes, restart it by the restart policy with crash
//! back-off, and stop it (`preStop`, SIGTERM, the grace period, SIGKILL).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container as ContainerSpec, Pod};
use kube::ResourceExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::backoff::CrashBackoff;
use super::probe::{self, Action, Kind, Outcome, Report, Target};
use super::{now, ContainerState, Shared, Slot};
use crate::events::{Recorder, Type};
use crate::runtime::{Container, ContainerConfig, Exit, Runtime};

/// How long a `postStart` hook may take before the container is given up on.
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// How soon a container whose configuration failed (a missing ConfigMap) is tried again.
const CONFIG_RETRY: Duration = Duration::from_secs(2);

/// When a container that ended is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    Always,
    OnFailure,
    Never,
}

impl Policy {
    /// The pod's `restartPolicy` (default Always).
    pub(crate) fn of(pod: &Pod) -> Policy {
        match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
            Some("Never") => Policy::Never,
            Some("OnFailure") => Policy::OnFailure,
            _ => Policy::Always,
        }
    }

    /// Whether a container that ended with `exit` starts again.
    pub(crate) fn restarts(self, exit: Exit) -> bool {
        match self {
            Policy::Never => false,
            Policy::OnFailure => exit.code != 0,
            Policy::Always => true,
        }
    }
}

/// Everything one container's task needs.
pub(crate) struct Run<R> {
    pub runtime: Arc<R>,
    pub client: kube::Client,
    pub events: Recorder,
    /// The newest pod object (labels change while it runs).
    pub pod: watch::Receiver<Arc<Pod>>,
    pub spec: ContainerSpec,
    pub slot: Slot,
    pub shared: Arc<Shared>,
    pub policy: Policy,
    pub pod_dir: PathBuf,
    pub node_ip: String,
    /// Turns `Some(grace)` when the container must stop.
    pub stop: watch::Receiver<Option<Duration>>,
    pub backoff: CrashBackoff,
    /// The pod's volumes on the host, by name.
    pub volumes: Arc<HashMap<String, PathBuf>>,
}

/// How one run of the container ended.
enum End {
    Exited(Exit),
    /// Killed after a failed liveness or startup probe.
    Unhealthy(Exit),
    /// Told to stop.
    Stopped,
}

/// The container's variables before `env` and `envFrom`: what a container image and a
/// kubelet would provide.
fn base_env(pod: &Pod, pod_dir: &Path) -> Vec<(String, String)> {
    vec![
        (
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
        ("HOSTNAME".to_string(), pod.name_any()),
        ("HOME".to_string(), pod_dir.display().to_string()),
    ]
}

/// The runtime's view of the container: `command` + `args` with `$(VAR)` expanded.
pub(crate) fn container_config(spec: &ContainerSpec, env: Vec<(String, String)>, pod_dir: &Path) -> ContainerConfig {
    let lookup = |name: &str| env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let argv: Vec<String> = spec
        .command
        .iter()
        .flatten()
        .chain(spec.args.iter().flatten())
        .map(|a| super::env::expand(a, &lookup))
        .collect();
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
        mounts: Vec::new(),
    }
}

impl<R: Runtime> Run<R> {
    fn update(&self, f: impl FnOnce(&mut ContainerState)) {
        self.shared.update(self.slot, f);
    }

    fn object(&self) -> String {
        let pod = self.pod.borrow();
        format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
    }

    fn event(&self, type_: Type, reason: &'static str, message: String) {
        let pod = self.pod.borrow().clone();
        self.events.pod(&pod, Some(&self.spec.name), type_, reason, message);
    }

    fn stopping(&self) -> bool {
        self.stop.borrow().is_some()
    }

    /// Waits `delay`; false if told to stop meanwhile.
    async fn sleep(&mut self, delay: Duration) -> bool {
        if self.stopping() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = self.stop.changed() => false,
        }
    }

    /// Runs the container until it is done for good or told to stop.
    pub(crate) async fn run(mut self) {
        let name = self.spec.name.clone();
        // Only the first start may find the container still running from before.
        let mut may_adopt = true;
        loop {
            if self.stopping() {
                return;
            }
            let pod = self.pod.borrow().clone();
            let sources = super::env::Sources {
                client: &self.client,
                node_ip: &self.node_ip,
            };
            let base = base_env(&pod, &self.pod_dir);
            let env = match super::env::resolve(&sources, &pod, &self.spec, base).await {
                Ok(env) => env,
                Err(e) => {
                    let message = e.to_string();
                    tracing::info!(object = %self.object(), container = %name, error = %message, "cannot build the container's environment");
                    self.update(|c| {
                        c.state = json!({"waiting": {"reason": "CreateContainerConfigError", "message": message}});
                    });
                    self.event(Type::Warning, "Failed", format!("Error: {e}"));
                    if !self.sleep(CONFIG_RETRY).await {
                        return;
                    }
                    continue;
                }
            };
            let mounts = match super::volumes::mounts(&self.spec, &self.volumes) {
                Ok(m) => m,
                Err(e) => {
                    let message = e.to_string();
                    self.update(|c| {
                        c.state = json!({"waiting": {"reason": "CreateContainerError", "message": message}});
                    });
                    self.event(Type::Warning, "Failed", format!("Error: {e}"));
                    if !self.sleep(CONFIG_RETRY).await {
                        return;
                    }
                    continue;
                }
            };
            let mut config = container_config(&self.spec, env, &self.pod_dir);
            config.mounts = mounts;
            let started_at = now();
            let started = Instant::now();
            let adopted = if std::mem::take(&mut may_adopt) {
                self.runtime.adopt(&config)
            } else {
                None
            };
            if adopted.is_some() {
                // Its restarts so far are the API's to tell.
                let restarts = self.restarts_reported();
                self.update(|c| c.restarts = restarts);
            }
            let started_fresh = adopted.is_none();
            let mut container = match adopted.map(Ok).unwrap_or_else(|| self.runtime.start(&config)) {
                Ok(c) => c,
                Err(e) => {
                    let message = e.to_string();
                    tracing::warn!(object = %self.object(), container = %name, error = %message, "cannot start container");
                    self.event(Type::Warning, "Failed", format!("Error: {message}"));
                    let terminated = json!({"terminated": {"exitCode": 128, "reason": "StartError", "message": message,
                        "startedAt": started_at, "finishedAt": now()}});
                    if !self
                        .after_exit(
                            Exit {
                                code: 128,
                                signal: None,
                            },
                            terminated,
                            started,
                        )
                        .await
                    {
                        return;
                    }
                    continue;
                }
            };
            let id = container.id();
            if started_fresh {
                tracing::info!(object = %self.object(), container = %name, id = %id, "container started");
                self.event(Type::Normal, "Created", format!("Created container {name}"));
                self.event(Type::Normal, "Started", format!("Started container {name}"));
            } else {
                tracing::info!(object = %self.object(), container = %name, id = %id, "container adopted");
            }
            let startup = self.spec.startup_probe.clone();
            let liveness = self.spec.liveness_probe.clone();
            let readiness = self.spec.readiness_probe.clone();
            let (has_startup, has_readiness) = (startup.is_some(), readiness.is_some());
            self.update(|c| {
                c.state = json!({"running": {"startedAt": started_at}});
                c.running = true;
                c.started = !has_startup;
                c.ready = !has_startup && !has_readiness;
                c.id = id.clone();
            });
            let target = Target {
                runtime: self.runtime.clone(),
                config: config.clone(),
                ip: self.node_ip.clone(),
                ports: self.spec.ports.clone().unwrap_or_default(),
            };
            let hook = if started_fresh {
                self.post_start(&target, &mut container).await
            } else {
                None
            };
            let end = match hook {
                Some(end) => end,
                None => {
                    self.supervise(&mut container, target, [startup, liveness, readiness])
                        .await
                }
            };
            let exit = match end {
                End::Stopped => {
                    self.stop_container(&mut container, &config).await;
                    return;
                }
                End::Exited(exit) | End::Unhealthy(exit) => exit,
            };
            let reason = if exit.code == 0 { "Completed" } else { "Error" };
            let terminated = json!({"terminated": {"exitCode": exit.code, "signal": exit.signal, "reason": reason,
                "startedAt": started_at, "finishedAt": now(), "containerID": id}});
            tracing::info!(object = %self.object(), container = %name, code = exit.code, "container exited");
            if !self.after_exit(exit, terminated, started).await {
                return;
            }
        }
    }

    /// The container's restart count as the pod's status last said.
    fn restarts_reported(&self) -> i32 {
        let pod = self.pod.borrow();
        let status = pod.status.as_ref();
        let statuses = match self.slot {
            Slot::Init(_) => status.and_then(|s| s.init_container_statuses.as_ref()),
            Slot::App(_) => status.and_then(|s| s.container_statuses.as_ref()),
        };
        statuses
            .into_iter()
            .flatten()
            .find(|c| c.name == self.spec.name)
            .map(|c| c.restart_count)
            .unwrap_or(0)
    }

    /// Runs the `postStart` hook; on failure the container is killed and the run ends.
    async fn post_start(&mut self, target: &Target<R>, container: &mut R::Container) -> Option<End> {
        let hook = self.spec.lifecycle.as_ref().and_then(|l| l.post_start.clone())?;
        let outcome = tokio::select! {
            o = probe::check(Action::of_hook(&hook), target, HOOK_TIMEOUT) => o,
            exit = container.wait() => return Some(End::Exited(exit.unwrap_or(Exit { code: 255, signal: None }))),
        };
        let Outcome::Failure(why) = outcome else { return None };
        self.event(
            Type::Warning,
            "FailedPostStartHook",
            format!("PostStartHook failed: {why}"),
        );
        let _ = container.kill();
        let exit = container.wait().await.unwrap_or(Exit {
            code: 137,
            signal: None,
        });
        Some(End::Exited(exit))
    }

    /// Follows the running container and its probes until it ends, a probe kills it or
    /// it is told to stop.
    async fn supervise(
        &mut self,
        container: &mut R::Container,
        target: Target<R>,
        probes: [Option<k8s_openapi::api::core::v1::Probe>; 3],
    ) -> End {
        let name = self.spec.name.clone();
        let config = target.config.clone();
        let any_probe = probes.iter().any(Option::is_some);
        let has_readiness = probes[2].is_some();
        let (tx, mut reports) = mpsc::channel(16);
        let prober = any_probe.then(|| tokio::spawn(probe::run(probes, target, tokio::time::Instant::now(), tx)));
        let end = loop {
            tokio::select! {
                exit = container.wait() => {
                    break End::Exited(exit.unwrap_or_else(|e| {
                        tracing::warn!(object = %self.object(), container = %name, error = %e, "lost track of the container");
                        Exit { code: 255, signal: None }
                    }));
                }
                Some(report) = reports.recv(), if prober.is_some() => match report {
                    Report::Failed(kind, why) => {
                        self.event(Type::Warning, "Unhealthy", format!("{} probe failed: {why}", kind.title()));
                    }
                    Report::Verdict(Kind::Startup, true) => self.update(|c| {
                        c.started = true;
                        c.ready = !has_readiness;
                    }),
                    Report::Verdict(Kind::Readiness, ready) => self.update(|c| c.ready = ready && c.started),
                    Report::Verdict(kind, _) => {
                        let which = kind.title().to_lowercase();
                        tracing::info!(object = %self.object(), container = %name, probe = %which, "probe failed; restarting the container");
                        self.event(Type::Normal, "Killing", format!("Container {name} failed {which} probe, will be restarted"));
                        self.update(|c| c.ready = false);
                        let grace = self.probe_grace(kind);
                        break End::Unhealthy(self.terminate(container, &config, grace).await);
                    }
                },
                _ = self.stop.changed() => break End::Stopped,
            }
        };
        if let Some(p) = prober {
            p.abort();
        }
        end
    }

    /// The grace period after a failed probe: the probe's own, else the pod's.
    fn probe_grace(&self, kind: Kind) -> Duration {
        let probe = match kind {
            Kind::Startup => self.spec.startup_probe.as_ref(),
            Kind::Liveness => self.spec.liveness_probe.as_ref(),
            Kind::Readiness => self.spec.readiness_probe.as_ref(),
        };
        let pod = self.pod.borrow();
        let seconds = probe
            .and_then(|p| p.termination_grace_period_seconds)
            .or_else(|| pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30);
        Duration::from_secs(seconds.max(0) as u64)
    }

    /// The `preStop` hook, then SIGTERM; SIGKILL once `grace` is spent.
    async fn terminate(&self, container: &mut R::Container, config: &ContainerConfig, grace: Duration) -> Exit {
        let deadline = Instant::now() + grace;
        if let Some(hook) = self.spec.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
            let target = Target {
                runtime: self.runtime.clone(),
                config: config.clone(),
                ip: self.node_ip.clone(),
                ports: self.spec.ports.clone().unwrap_or_default(),
            };
            if let Outcome::Failure(why) = probe::check(Action::of_hook(hook), &target, grace).await {
                self.event(Type::Warning, "FailedPreStopHook", format!("PreStopHook failed: {why}"));
            }
        }
        let _ = container.terminate();
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, container.wait()).await {
            Ok(exit) => exit.unwrap_or(Exit {
                code: 143,
                signal: None,
            }),
            Err(_) => {
                tracing::info!(object = %self.object(), container = %self.spec.name, "grace period over; killing");
                let _ = container.kill();
                container.wait().await.unwrap_or(Exit {
                    code: 137,
                    signal: None,
                })
            }
        }
    }

    /// Stops the container for good because the pod stops.
    async fn stop_container(&mut self, container: &mut R::Container, config: &ContainerConfig) {
        let grace = (*self.stop.borrow()).unwrap_or(Duration::from_secs(30));
        self.event(
            Type::Normal,
            "Killing",
            format!("Stopping container {}", self.spec.name),
        );
        let id = container.id();
        let exit = self.terminate(container, config, grace).await;
        tracing::info!(object = %self.object(), container = %self.spec.name, code = exit.code, "container stopped");
        let reason = if exit.code == 0 { "Completed" } else { "Error" };
        let terminated = json!({"terminated": {"exitCode": exit.code, "signal": exit.signal, "reason": reason,
            "finishedAt": now(), "containerID": id}});
        self.update(|c| {
            c.state = terminated;
            c.running = false;
            c.ready = false;
            c.done = Some(exit);
        });
    }

    /// Records an ended run and waits out the back-off; false if the container is done
    /// for good (by its restart policy) or told to stop.
    async fn after_exit(&mut self, exit: Exit, terminated: Value, started: Instant) -> bool {
        let name = self.spec.name.clone();
        if !self.policy.restarts(exit) || self.stopping() {
            self.update(|c| {
                c.state = terminated;
                c.running = false;
                c.ready = false;
                c.done = Some(exit);
            });
            return false;
        }
        // The run that ended keeps its log for `kubectl logs --previous`.
        let log = crate::logs::current_log(&self.pod_dir, &name);
        let previous = crate::logs::previous_log(&self.pod_dir, &name);
        if let Err(e) = std::fs::rename(&log, &previous) {
            tracing::debug!(object = %self.object(), container = %name, error = %e, "no log to keep as the previous one");
        }
        let delay = self.backoff.after_exit(started.elapsed());
        let pod = self.pod.borrow().clone();
        let pod_ref = format!(
            "{}_{}({})",
            pod.name_any(),
            pod.namespace().unwrap_or_default(),
            pod.uid().unwrap_or_default()
        );
        self.update(|c| {
            c.last_state = terminated;
            c.restarts += 1;
            c.running = false;
            c.started = false;
            c.ready = false;
            c.state = if delay.is_zero() {
                json!({"waiting": {"reason": "ContainerCreating"}})
            } else {
                json!({"waiting": {"reason": "CrashLoopBackOff",
                    "message": format!("back-off {} restarting failed container={name} pod={pod_ref}", humantime(delay))}})
            };
        });
        if !delay.is_zero() {
            self.event(
                Type::Warning,
                "BackOff",
                format!("Back-off restarting failed container {name} in pod {pod_ref}"),
            );
        }
        self.sleep(delay).await
    }
}

/// A delay as Go prints a `time.Duration` ("10s", "2m40s", "5m0s").
fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies() {
        let ok = Exit { code: 0, signal: None };
        let bad = Exit { code: 1, signal: None };
        assert!(Policy::Always.restarts(ok) && Policy::Always.restarts(bad));
        assert!(!Policy::OnFailure.restarts(ok) && Policy::OnFailure.restarts(bad));
        assert!(!Policy::Never.restarts(bad));
    }

    #[test]
    fn command_and_args_expand_variables() {
        let spec = ContainerSpec {
            name: "c".into(),
            command: Some(vec!["echo".into(), "$(GREETING)".into()]),
            args: Some(vec!["$(NAME)-$$(GREETING)".into(), "$(MISSING)".into()]),
            ..Default::default()
        };
        let env = vec![("GREETING".into(), "hi".into()), ("NAME".into(), "kairn".into())];
        let c = container_config(&spec, env, Path::new("/tmp/p"));
        assert_eq!(c.argv, ["echo", "hi", "kairn-$(GREETING)", "$(MISSING)"]);
        assert_eq!(c.working_dir, Path::new("/tmp/p"));
    }

    #[test]
    fn durations_print_as_go_does() {
        assert_eq!(humantime(Duration::from_secs(10)), "10s");
        assert_eq!(humantime(Duration::from_secs(160)), "2m40s");
        assert_eq!(humantime(Duration::from_secs(300)), "5m0s");
    }
}
