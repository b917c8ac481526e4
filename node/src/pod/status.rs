//! The pod's status as a kubelet reports it: phase, the `Initialized`,
//! `ContainersReady` and `Ready` conditions (whose `lastTransitionTime` moves only when
//! their status does: `minReadySeconds` counts from it), and one status per container.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::{now, ContainerState, PodState};

/// The conditions' last statuses and when they took them.
#[derive(Debug, Default)]
pub(crate) struct Transitions(HashMap<&'static str, (bool, String)>);

impl Transitions {
    /// The condition `type_` at `status`, keeping its transition time while it holds.
    fn condition(&mut self, type_: &'static str, status: bool, reason: Option<&str>, message: Option<String>) -> Value {
        let entry = self.0.entry(type_).or_insert_with(|| (status, now()));
        if entry.0 != status {
            *entry = (status, now());
        }
        let mut c = json!({"type": type_, "status": if status { "True" } else { "False" },
            "lastProbeTime": null, "lastTransitionTime": entry.1});
        if let Some(r) = reason {
            c["reason"] = json!(r);
        }
        if let Some(m) = message {
            c["message"] = json!(m);
        }
        c
    }
}

fn container_status(c: &ContainerState, init: bool) -> Value {
    // A finished init container counts as ready, as a kubelet reports it.
    let ready = if init {
        c.done.is_some_and(|e| e.code == 0)
    } else {
        c.ready && c.running
    };
    let mut s = json!({"name": c.name, "image": c.image, "imageID": "", "ready": ready,
        "started": c.running && c.started, "restartCount": c.restarts, "state": c.state});
    if !c.id.is_empty() {
        s["containerID"] = json!(c.id);
    }
    s["lastState"] = if c.last_state.is_null() {
        json!({})
    } else {
        c.last_state.clone()
    };
    s
}

/// The phase: Pending until a container has run, Succeeded or Failed once every app
/// container is done for good, Failed at once if the pod as a whole failed.
pub(crate) fn phase(state: &PodState) -> &'static str {
    if state.failed.is_some() {
        return "Failed";
    }
    let apps = &state.app;
    if state.initialized && !apps.is_empty() && apps.iter().all(|c| c.done.is_some()) {
        return if apps.iter().all(|c| c.done.is_some_and(|e| e.code == 0)) {
            "Succeeded"
        } else {
            "Failed"
        };
    }
    let ran = |c: &ContainerState| c.running || c.restarts > 0 || c.done.is_some();
    if state.initialized && apps.iter().any(ran) {
        "Running"
    } else {
        "Pending"
    }
}

/// The status to write for `state`.
pub(crate) fn pod_status(
    state: &PodState,
    node_ip: &str,
    start_time: &str,
    scheduled: &Value,
    transitions: &mut Transitions,
) -> Value {
    let phase = phase(state);
    let pending_init: Vec<&str> = state
        .init
        .iter()
        .filter(|c| c.done.is_none_or(|e| e.code != 0) && !(c.sidecar && c.started))
        .map(|c| c.name.as_str())
        .collect();
    let unready: Vec<&str> = state
        .app
        .iter()
        .chain(state.init.iter().filter(|c| c.sidecar))
        .filter(|c| !(c.ready && c.running))
        .map(|c| c.name.as_str())
        .collect();
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let initialized = state.initialized;
    let ready = unready.is_empty() && !terminal;
    let list = |names: &[&str]| format!("[{}]", names.join(" "));
    let not_ready_reason = if terminal { "PodCompleted" } else { "ContainersNotReady" };
    let conditions = vec![
        transitions.condition(
            "Initialized",
            initialized,
            (!initialized).then_some("ContainersNotInitialized"),
            (!initialized).then(|| format!("containers with incomplete status: {}", list(&pending_init))),
        ),
        transitions.condition(
            "Ready",
            ready,
            (!ready).then_some(not_ready_reason),
            (!ready && !terminal).then(|| format!("containers with unready status: {}", list(&unready))),
        ),
        transitions.condition(
            "ContainersReady",
            ready,
            (!ready).then_some(not_ready_reason),
            (!ready && !terminal).then(|| format!("containers with unready status: {}", list(&unready))),
        ),
        scheduled.clone(),
    ];
    let mut status = json!({
        "phase": phase,
        "hostIP": node_ip,
        "hostIPs": [{"ip": node_ip}],
        "podIP": node_ip,
        "podIPs": [{"ip": node_ip}],
        "startTime": start_time,
        "conditions": conditions,
        "containerStatuses": state.app.iter().map(|c| container_status(c, false)).collect::<Vec<_>>(),
    });
    if !state.init.is_empty() {
        status["initContainerStatuses"] = state.init.iter().map(|c| container_status(c, true)).collect();
    }
    if let Some((reason, message)) = &state.failed {
        status["reason"] = json!(reason);
        status["message"] = json!(message);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Exit;

    fn c(name: &str, f: impl FnOnce(&mut ContainerState)) -> ContainerState {
        let mut s = ContainerState {
            name: name.into(),
            ..Default::default()
        };
        f(&mut s);
        s
    }

    fn state(init: Vec<ContainerState>, app: Vec<ContainerState>) -> PodState {
        PodState {
            initialized: init.iter().all(|c| c.done.is_some_and(|e| e.code == 0)),
            init,
            app,
            failed: None,
        }
    }

    const OK: Exit = Exit { code: 0, signal: None };
    const BAD: Exit = Exit { code: 1, signal: None };

    fn running_ready(s: &mut ContainerState) {
        s.running = true;
        s.started = true;
        s.ready = true;
    }

    #[test]
    fn phases() {
        let cases: Vec<(PodState, &str)> = vec![
            (state(vec![], vec![c("a", |_| {})]), "Pending"),
            (state(vec![c("i", |_| {})], vec![c("a", |_| {})]), "Pending"),
            (
                state(vec![c("i", |s| s.done = Some(OK))], vec![c("a", running_ready)]),
                "Running",
            ),
            (state(vec![], vec![c("a", |s| s.restarts = 2)]), "Running"),
            (
                state(vec![], vec![c("a", |s| s.done = Some(OK)), c("b", running_ready)]),
                "Running",
            ),
            (
                state(
                    vec![],
                    vec![c("a", |s| s.done = Some(OK)), c("b", |s| s.done = Some(OK))],
                ),
                "Succeeded",
            ),
            (
                state(
                    vec![],
                    vec![c("a", |s| s.done = Some(OK)), c("b", |s| s.done = Some(BAD))],
                ),
                "Failed",
            ),
            (
                PodState {
                    failed: Some(("DeadlineExceeded".into(), "late".into())),
                    ..state(vec![], vec![c("a", running_ready)])
                },
                "Failed",
            ),
        ];
        for (s, want) in cases {
            assert_eq!(phase(&s), want, "{:?}", s.app);
        }
    }

    #[test]
    fn readiness_and_transition_times() {
        let mut t = Transitions::default();
        let scheduled = json!({"type": "PodScheduled", "status": "True"});
        let unready = state(vec![], vec![c("a", |s| s.running = true), c("b", running_ready)]);
        let st = pod_status(&unready, "10.0.0.1", "t0", &scheduled, &mut t);
        let ready = &st["conditions"][1];
        assert_eq!(
            (ready["type"].as_str(), ready["status"].as_str()),
            (Some("Ready"), Some("False"))
        );
        assert_eq!(ready["message"], "containers with unready status: [a]");
        assert_eq!(st["containerStatuses"][0]["ready"], false);
        assert_eq!(st["containerStatuses"][1]["ready"], true);
        let since = ready["lastTransitionTime"].clone();

        // Same status again: the transition time holds.
        let st = pod_status(&unready, "10.0.0.1", "t0", &scheduled, &mut t);
        assert_eq!(st["conditions"][1]["lastTransitionTime"], since);

        let all = state(vec![], vec![c("a", running_ready)]);
        let st = pod_status(&all, "10.0.0.1", "t0", &scheduled, &mut t);
        assert_eq!(st["conditions"][1]["status"], "True");
        assert_eq!(st["conditions"][2]["status"], "True");
        assert_eq!(st["conditions"][3], scheduled);
        assert_eq!(st["phase"], "Running");
    }

    #[test]
    fn init_containers_report_their_progress() {
        let mut t = Transitions::default();
        let s = state(
            vec![c("first", |s| s.done = Some(OK)), c("second", |s| s.running = true)],
            vec![c("app", |_| {})],
        );
        let st = pod_status(&s, "ip", "t0", &json!({}), &mut t);
        assert_eq!(st["conditions"][0]["status"], "False");
        assert_eq!(
            st["conditions"][0]["message"],
            "containers with incomplete status: [second]"
        );
        assert_eq!(st["initContainerStatuses"][0]["ready"], true);
        assert_eq!(st["initContainerStatuses"][1]["ready"], false);
        assert_eq!(st["phase"], "Pending");
    }
}
