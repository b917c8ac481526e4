//! Priority admission, as Kubernetes' `Priority` plugin: a new pod's
//! `priorityClassName` becomes its `spec.priority` and `spec.preemptionPolicy`; a pod
//! without one gets the class marked `globalDefault`, or priority 0. The scheduler
//! orders and preempts by the number, so it is fixed once, at creation.
//!
//! Classes are read from the watch cache, as kube-apiserver reads them from an informer:
//! admitting a pod costs no store round trip.

use serde_json::{json, Value};

use super::admission::object_name;
use super::cache::{Filter, ReadAt};
use super::{registry, ApiError, AppState};

/// Sets the pod's priority from the PriorityClasses the cache holds.
pub async fn admit_pod(state: &AppState, pod: &mut Value) -> Result<(), ApiError> {
    let res = registry::by_plural("scheduling.k8s.io", "v1", "priorityclasses")
        .ok_or_else(|| ApiError::Internal("priorityclasses are not served".into()))?;
    let cache = state.caches.get(res)?;
    cache.prepare(&state.store, ReadAt::Any).await?;
    let page = cache.list(&Filter::default(), None, None, ReadAt::Any)?;
    let classes: Vec<Value> = page
        .items
        .iter()
        .filter_map(|o| serde_json::from_slice(&o.json).ok())
        .collect();
    resolve(pod, &classes)
}

/// Sets `spec.priority`, `spec.priorityClassName` and `spec.preemptionPolicy` of `pod`
/// from `classes`.
pub fn resolve(pod: &mut Value, classes: &[Value]) -> Result<(), ApiError> {
    let (name, _) = object_name(pod);
    let wanted = pod
        .pointer("/spec/priorityClassName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(String::from);
    let class = match &wanted {
        Some(wanted) => Some(
            classes
                .iter()
                .find(|c| c.pointer("/metadata/name").and_then(Value::as_str) == Some(wanted))
                .ok_or_else(|| {
                    ApiError::Forbidden(format!(
                        "pods \"{name}\" is forbidden: no PriorityClass with name {wanted} was found"
                    ))
                })?,
        ),
        // Of several defaults Kubernetes takes the lowest.
        None => classes
            .iter()
            .filter(|c| c.get("globalDefault").and_then(Value::as_bool) == Some(true))
            .min_by_key(|c| c.get("value").and_then(Value::as_i64).unwrap_or(0)),
    };
    let priority = class.and_then(|c| c.get("value")).and_then(Value::as_i64).unwrap_or(0);
    if let Some(given) = pod.pointer("/spec/priority").and_then(Value::as_i64) {
        if given != priority {
            return Err(ApiError::Forbidden(format!(
                "pods \"{name}\" is forbidden: the integer value of priority ({given}) must not be provided in pod spec; \
                 priority admission controller computed {priority} from the given PriorityClass name"
            )));
        }
    }
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    spec.insert("priority".into(), json!(priority));
    if let Some(class) = class {
        if let Some(n) = class.pointer("/metadata/name") {
            spec.insert("priorityClassName".into(), n.clone());
        }
        let policy = class
            .get("preemptionPolicy")
            .cloned()
            .unwrap_or_else(|| json!("PreemptLowerPriority"));
        spec.entry("preemptionPolicy").or_insert(policy);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, value: i64, default: bool, policy: Option<&str>) -> Value {
        let mut c = json!({"metadata": {"name": name}, "value": value, "globalDefault": default});
        if let Some(p) = policy {
            c["preemptionPolicy"] = json!(p);
        }
        c
    }

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": spec})
    }

    #[test]
    fn priority_comes_from_the_class_or_the_global_default() {
        let classes = [
            class("high", 1000, false, Some("Never")),
            class("low", 10, true, None),
            class("lower", 5, true, None),
        ];
        let cases = [
            (
                json!({"priorityClassName": "high"}),
                Ok((1000, Some("high"), Some("Never"))),
            ),
            (json!({}), Ok((5, Some("lower"), Some("PreemptLowerPriority")))),
            (
                json!({"priorityClassName": "high", "priority": 1000}),
                Ok((1000, Some("high"), Some("Never"))),
            ),
            (
                json!({"priorityClassName": "nope"}),
                Err("no PriorityClass with name nope was found"),
            ),
            (
                json!({"priorityClassName": "high", "priority": 7}),
                Err("must not be provided in pod spec"),
            ),
        ];
        for (spec, want) in cases {
            let mut p = pod(spec.clone());
            let got = resolve(&mut p, &classes).map(|()| {
                (
                    p["spec"]["priority"].as_i64().unwrap_or(-1),
                    p["spec"]["priorityClassName"].as_str().map(String::from),
                    p["spec"]["preemptionPolicy"].as_str().map(String::from),
                )
            });
            match (got, want) {
                (Ok(g), Ok((prio, name, policy))) => {
                    assert_eq!(g, (prio, name.map(String::from), policy.map(String::from)), "{spec}")
                }
                (Err(e), Err(msg)) => assert!(e.to_string().contains(msg), "{spec}: {e}"),
                (g, w) => panic!("{spec}: got {g:?}, want {w:?}"),
            }
        }
        let mut plain = pod(json!({}));
        resolve(&mut plain, &[]).expect("no classes");
        assert_eq!(plain["spec"]["priority"], 0);
    }
}
