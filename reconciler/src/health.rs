//! Health: how an Application's objects are doing, from their live state, as Argo CD
//! words it (Healthy, Progressing, Degraded, Missing). Kinds without a notion of health
//! (ConfigMaps, Services...) count as healthy once they exist.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

/// One object's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// Running as declared.
    Healthy,
    /// On its way (a rollout, a Job still running, a Pending pod).
    Progressing,
    /// In Git, not in the cluster.
    Missing,
    /// Failing: crash-looping pods, a failed Job, a rollout past its deadline.
    Degraded,
}

impl Health {
    /// The word status shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "Healthy",
            Health::Progressing => "Progressing",
            Health::Missing => "Missing",
            Health::Degraded => "Degraded",
        }
    }
}

/// A health and why.
pub type Assessment = (Health, Option<String>);

/// The pods of a namespace whose labels match a selector (from the live cache).
pub type PodsOf<'a> = &'a dyn Fn(&str, &HashMap<String, String>) -> Vec<std::sync::Arc<Pod>>;

fn int(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Why a pod is failing, if it is: a container waiting in CrashLoopBackOff (or an image
/// or config error), or the pod Failed.
pub fn pod_failure(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() == Some("Failed") {
        return Some(format!(
            "pod {} failed",
            pod.metadata.name.as_deref().unwrap_or_default()
        ));
    }
    let statuses = status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten());
    for c in statuses {
        let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
        if let Some(reason) = waiting.and_then(|w| w.reason.as_deref()) {
            if matches!(
                reason,
                "CrashLoopBackOff" | "CreateContainerConfigError" | "ErrImagePull" | "ImagePullBackOff"
            ) {
                return Some(format!(
                    "pod {} container {}: {reason} (restarted {} times)",
                    pod.metadata.name.as_deref().unwrap_or_default(),
                    c.name,
                    c.restart_count
                ));
            }
        }
    }
    None
}

/// The health of one live object; `pods` gives the pods of a namespace matching a selector.
pub fn assess(obj: &Value, pods: PodsOf<'_>) -> Option<Assessment> {
    let kind = obj.get("kind").and_then(Value::as_str)?;
    let generation = int(obj, "/metadata/generation");
    let observed = int(obj, "/status/observedGeneration");
    let stale = generation > 0 && observed < generation;
    match kind {
        "Deployment" | "StatefulSet" | "ReplicaSet" => {
            let want = obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
            let updated = if kind == "Deployment" {
                int(obj, "/status/updatedReplicas")
            } else {
                int(obj, "/status/replicas")
            };
            let available = if kind == "StatefulSet" {
                int(obj, "/status/readyReplicas")
            } else {
                int(obj, "/status/availableReplicas")
            };
            if let Some(c) = condition(obj, "Progressing").filter(|c| c["status"] == "False") {
                let message = c["message"].as_str().unwrap_or("progress deadline exceeded");
                return Some((Health::Degraded, Some(message.to_string())));
            }
            let ns = obj
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("default");
            let selector: HashMap<String, String> = obj
                .pointer("/spec/selector/matchLabels")
                .and_then(|m| serde_json::from_value(m.clone()).ok())
                .unwrap_or_default();
            if !selector.is_empty() {
                if let Some(why) = pods(ns, &selector).iter().find_map(|p| pod_failure(p)) {
                    return Some((Health::Degraded, Some(why)));
                }
            }
            if stale || updated < want || available < want {
                return Some((
                    Health::Progressing,
                    Some(format!("{available} of {want} replicas available, {updated} updated")),
                ));
            }
            Some((Health::Healthy, None))
        }
        "DaemonSet" => {
            let want = int(obj, "/status/desiredNumberScheduled");
            let ready = int(obj, "/status/numberAvailable");
            if stale || ready < want {
                Some((Health::Progressing, Some(format!("{ready} of {want} pods available"))))
            } else {
                Some((Health::Healthy, None))
            }
        }
        "Job" => {
            if condition(obj, "Failed").is_some_and(|c| c["status"] == "True") {
                let message = condition(obj, "Failed")
                    .and_then(|c| c["message"].as_str())
                    .unwrap_or("job failed");
                Some((Health::Degraded, Some(message.to_string())))
            } else if condition(obj, "Complete").is_some_and(|c| c["status"] == "True") {
                Some((Health::Healthy, None))
            } else {
                Some((Health::Progressing, Some("job running".into())))
            }
        }
        "Pod" => {
            let pod: Pod = serde_json::from_value(obj.clone()).ok()?;
            if let Some(why) = pod_failure(&pod) {
                return Some((Health::Degraded, Some(why)));
            }
            match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
                Some("Succeeded") => Some((Health::Healthy, None)),
                Some("Running") if condition(obj, "Ready").is_some_and(|c| c["status"] == "True") => {
                    Some((Health::Healthy, None))
                }
                _ => Some((Health::Progressing, Some("pod not ready".into()))),
            }
        }
        "PersistentVolumeClaim" => match obj.pointer("/status/phase").and_then(Value::as_str) {
            Some("Bound") => Some((Health::Healthy, None)),
            Some("Lost") => Some((Health::Degraded, Some("claim lost its volume".into()))),
            _ => Some((Health::Progressing, Some("claim not bound".into()))),
        },
        _ => None,
    }
}

/// The Application's health: the worst of its objects'.
pub fn overall(each: impl IntoIterator<Item = Health>) -> Health {
    each.into_iter().max().unwrap_or(Health::Healthy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn no_pods(_: &str, _: &HashMap<String, String>) -> Vec<std::sync::Arc<Pod>> {
        vec![]
    }

    #[test]
    fn deployments_are_healthy_when_every_replica_is_updated_and_available() {
        let dep = |updated: i64, available: i64| {
            json!({"kind": "Deployment", "metadata": {"generation": 2, "namespace": "d"},
                "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "w"}}},
                "status": {"observedGeneration": 2, "updatedReplicas": updated, "availableReplicas": available}})
        };
        assert_eq!(assess(&dep(3, 3), &no_pods).map(|a| a.0), Some(Health::Healthy));
        assert_eq!(assess(&dep(2, 3), &no_pods).map(|a| a.0), Some(Health::Progressing));
        assert_eq!(assess(&dep(3, 1), &no_pods).map(|a| a.0), Some(Health::Progressing));
        let crashing = |_: &str, sel: &HashMap<String, String>| {
            assert_eq!(sel.get("app").map(String::as_str), Some("w"));
            let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "w-1"}, "status": {"phase": "Running",
                "containerStatuses": [{"name": "c", "image": "", "imageID": "", "ready": false, "restartCount": 4,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}))
            .unwrap();
            vec![std::sync::Arc::new(pod)]
        };
        let (health, why) = assess(&dep(3, 1), &crashing).unwrap();
        assert_eq!(health, Health::Degraded);
        assert!(why.unwrap().contains("CrashLoopBackOff"));
    }

    #[test]
    fn jobs_are_healthy_when_complete_and_degraded_when_failed() {
        let job = |t: &str| json!({"kind": "Job", "status": {"conditions": [{"type": t, "status": "True"}]}});
        assert_eq!(assess(&job("Complete"), &no_pods).map(|a| a.0), Some(Health::Healthy));
        assert_eq!(assess(&job("Failed"), &no_pods).map(|a| a.0), Some(Health::Degraded));
        assert_eq!(
            assess(&json!({"kind": "Job"}), &no_pods).map(|a| a.0),
            Some(Health::Progressing)
        );
        assert_eq!(assess(&json!({"kind": "ConfigMap"}), &no_pods), None);
        assert_eq!(
            overall([Health::Healthy, Health::Missing, Health::Progressing]),
            Health::Missing
        );
    }
}
