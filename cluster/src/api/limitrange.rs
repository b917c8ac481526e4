//! LimitRange admission, as Kubernetes' `LimitRanger` plugin does it for a new pod: every
//! LimitRange of the pod's namespace first fills in what its containers leave out (type
//! `Container`: `default` limits, `defaultRequest` requests, noted in the
//! `kubernetes.io/limit-ranger` annotation), then each checks the pod (`min`, `max` and
//! `maxLimitRequestRatio` per container, and for type `Pod` over the whole pod); the first
//! LimitRange the pod breaks refuses it with 403 and Kubernetes' messages.
//!
//! LimitRanges are read from the watch cache, as kube-apiserver reads them from an
//! informer, once the cache has caught up with this member's store. Pod updates are not
//! checked: containers and their resources cannot change.

use serde_json::{json, Map, Value};

use super::admission::object_name;
use super::amount::{self, Amount, ResourceList};
use super::cache::{Filter, ReadAt};
use super::error::ApiError;
use super::quota::{container_resources, pod_total};
use super::registry::{self, ResourceInfo};
use super::validation::Errors;
use super::AppState;

/// The annotation naming what LimitRanger filled in.
pub const ANNOTATION: &str = "kubernetes.io/limit-ranger";

/// Fills in and checks a new pod against the LimitRanges the cache holds for its
/// namespace.
pub async fn admit_pod(state: &AppState, res: &ResourceInfo, pod: &mut Value) -> Result<(), ApiError> {
    let (_, ns) = object_name(pod);
    let Some(ns) = ns else { return Ok(()) };
    let ranges_res = registry::by_plural("", "v1", "limitranges")
        .ok_or_else(|| ApiError::Internal("limitranges are not served".into()))?;
    let cache = state.caches.get(ranges_res)?;
    // As new as this member's store: a LimitRange created through it applies to the
    // next pod at once (a cheap wait for the cache, not a quorum read).
    let at = ReadAt::NotOlderThan(state.store.revision());
    cache.prepare(&state.store, at).await?;
    let filter = Filter {
        namespace: Some(ns),
        ..Default::default()
    };
    let page = cache.list(&filter, None, None, at)?;
    if page.items.is_empty() {
        return Ok(());
    }
    let mut ranges = page.items.iter().map(|o| o.value()).collect::<Result<Vec<_>, _>>()?;
    ranges.sort_by_key(|r| object_name(r).0);
    let changed = admit(pod, &ranges)?;
    if changed {
        // The defaults change the pod's QoS class, and must themselves be valid (a
        // default limit under a stated request is not).
        (res.prepare_create)(pod);
        let mut errs = Errors::default();
        (res.validate)(pod, None, &mut errs);
        if !errs.is_empty() {
            return Err(ApiError::Invalid {
                kind: res.qualified_kind(),
                name: object_name(pod).0,
                causes: errs.0,
            });
        }
        tracing::debug!(pod = %object_name(pod).0, ranges = ranges.len(), "limit ranges applied defaults");
    }
    Ok(())
}

/// Applies the defaults of every range, then checks the pod against each; whether the
/// pod changed, or the 403 of the first range it breaks.
pub fn admit(pod: &mut Value, ranges: &[Value]) -> Result<bool, ApiError> {
    let mut changed = false;
    for range in ranges {
        changed |= apply_defaults(pod, range);
    }
    for range in ranges {
        let errors = check(pod, range);
        if !errors.is_empty() {
            let name = object_name(pod).0;
            return Err(ApiError::Forbidden(format!(
                "pods \"{name}\" is forbidden: {}",
                aggregate(&errors)
            )));
        }
    }
    Ok(changed)
}

/// The items of a range's `spec.limits` of type `ty`.
fn items<'a>(range: &'a Value, ty: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    range
        .pointer("/spec/limits")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(move |i| i.get("type").and_then(Value::as_str) == Some(ty))
}

/// The default requests and limits of a range's `Container` items (a later item wins).
pub fn container_defaults(range: &Value) -> (ResourceList, ResourceList) {
    let (mut requests, mut limits) = (ResourceList::new(), ResourceList::new());
    for item in items(range, "Container") {
        requests.extend(amount::from_json(item.get("defaultRequest")));
        limits.extend(amount::from_json(item.get("default")));
    }
    (requests, limits)
}

/// The map at `c.resources.<field>`, made if absent.
fn resource_map<'a>(c: &'a mut Value, field: &str) -> Option<&'a mut Map<String, Value>> {
    let resources = super::resources::child(c, "resources")?;
    super::resources::child(resources, field)?.as_object_mut()
}

/// Fills in one container's missing requests and limits; the note for the annotation
/// (`cpu, memory request for container c`), if anything was set.
fn merge_container(c: &mut Value, what: &str, requests: &ResourceList, limits: &ResourceList) -> Vec<String> {
    let name = c.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
    // Kubernetes' pod defaulting has already made a limit without a request the request.
    let stated_limits = c.pointer("/resources/limits").cloned();
    if let (Some(Value::Object(stated)), Some(req)) = (stated_limits, resource_map(c, "requests")) {
        for (k, v) in stated {
            req.entry(k).or_insert(v);
        }
    }
    let mut set_limits = Vec::new();
    if let Some(lim) = resource_map(c, "limits") {
        for (k, v) in limits {
            if !lim.contains_key(k) {
                lim.insert(k.clone(), json!(v.to_string()));
                set_limits.push(k.clone());
            }
        }
    }
    let mut set_requests = Vec::new();
    if let Some(req) = resource_map(c, "requests") {
        for (k, v) in requests {
            if !req.contains_key(k) {
                req.insert(k.clone(), json!(v.to_string()));
                set_requests.push(k.clone());
            }
        }
    }
    // Leave no empty maps behind where nothing was stated or set.
    for field in ["requests", "limits"] {
        if let Some(res) = c.get_mut("resources").and_then(Value::as_object_mut) {
            if res.get(field).and_then(Value::as_object).is_some_and(Map::is_empty) {
                res.remove(field);
            }
        }
    }
    let mut notes = Vec::new();
    if !set_requests.is_empty() {
        notes.push(format!("{} request for {what} {name}", set_requests.join(", ")));
    }
    if !set_limits.is_empty() {
        notes.push(format!("{} limit for {what} {name}", set_limits.join(", ")));
    }
    notes
}

/// Applies one range's container defaults to every container and init container;
/// whether anything was set. The annotation names what this range set, as Kubernetes'
/// does (a later range that sets something replaces it).
pub fn apply_defaults(pod: &mut Value, range: &Value) -> bool {
    let (requests, limits) = container_defaults(range);
    if requests.is_empty() && limits.is_empty() {
        return false;
    }
    let mut notes = Vec::new();
    for (list, what) in [("containers", "container"), ("initContainers", "init container")] {
        let containers = pod
            .get_mut("spec")
            .and_then(|s| s.get_mut(list))
            .and_then(Value::as_array_mut);
        for c in containers.into_iter().flatten() {
            notes.extend(merge_container(c, what, &requests, &limits));
        }
    }
    if notes.is_empty() {
        return false;
    }
    if let Some(meta) = super::resources::child(pod, "metadata") {
        if let Some(annotations) = super::resources::child(meta, "annotations").and_then(Value::as_object_mut) {
            annotations.insert(
                ANNOTATION.into(),
                json!(format!("LimitRanger plugin set: {}", notes.join("; "))),
            );
        }
    }
    true
}

/// `min`: a request must be stated and at least `enforced`, and so must a stated limit.
fn min_constraint(
    ty: &str,
    r: &str,
    enforced: Amount,
    requests: &ResourceList,
    limits: &ResourceList,
) -> Option<String> {
    let Some(req) = requests.get(r) else {
        return Some(format!(
            "minimum {r} usage per {ty} is {enforced}.  No request is specified"
        ));
    };
    if *req < enforced {
        return Some(format!(
            "minimum {r} usage per {ty} is {enforced}, but request is {req}"
        ));
    }
    match limits.get(r) {
        Some(lim) if *lim < enforced => Some(format!("minimum {r} usage per {ty} is {enforced}, but limit is {lim}")),
        _ => None,
    }
}

/// `max`: a limit must be stated and at most `enforced`, and so must a stated request.
fn max_constraint(
    ty: &str,
    r: &str,
    enforced: Amount,
    requests: &ResourceList,
    limits: &ResourceList,
) -> Option<String> {
    let Some(lim) = limits.get(r) else {
        return Some(format!(
            "maximum {r} usage per {ty} is {enforced}.  No limit is specified"
        ));
    };
    if *lim > enforced {
        return Some(format!("maximum {r} usage per {ty} is {enforced}, but limit is {lim}"));
    }
    match requests.get(r) {
        Some(req) if *req > enforced => Some(format!(
            "maximum {r} usage per {ty} is {enforced}, but request is {req}"
        )),
        _ => None,
    }
}

/// `lim / req` as Go's `%f` prints it (six decimals), in integers.
fn ratio_text(lim: i128, req: i128) -> String {
    let micro = (lim * 1_000_000 * 2 + req) / (req * 2);
    format!("{}.{:06}", micro / 1_000_000, micro % 1_000_000)
}

/// `maxLimitRequestRatio`: limit / request at most `enforced`, both stated and non-zero.
fn ratio_constraint(
    ty: &str,
    r: &str,
    enforced: Amount,
    requests: &ResourceList,
    limits: &ResourceList,
) -> Option<String> {
    let req = requests.get(r).filter(|q| !q.is_zero());
    let lim = limits.get(r).filter(|q| !q.is_zero());
    let Some(req) = req else {
        return Some(format!(
            "{r} max limit to request ratio per {ty} is {enforced}, but no request is specified or request is 0"
        ));
    };
    let Some(lim) = lim else {
        return Some(format!(
            "{r} max limit to request ratio per {ty} is {enforced}, but no limit is specified or limit is 0"
        ));
    };
    // lim / req > enforced, exactly: lim * 1000 > enforced(milli) * req.
    if lim.millis.saturating_mul(1000) > enforced.millis.saturating_mul(req.millis) {
        return Some(format!(
            "{r} max limit to request ratio per {ty} is {enforced}, but provided ratio is {}",
            ratio_text(lim.millis, req.millis)
        ));
    }
    None
}

/// Checks `requests`/`limits` against one item's `min`, `max` and `maxLimitRequestRatio`.
fn check_item(item: &Value, ty: &str, requests: &ResourceList, limits: &ResourceList, out: &mut Vec<String>) {
    for (r, q) in amount::from_json(item.get("min")) {
        out.extend(min_constraint(ty, &r, q, requests, limits));
    }
    for (r, q) in amount::from_json(item.get("max")) {
        out.extend(max_constraint(ty, &r, q, requests, limits));
    }
    for (r, q) in amount::from_json(item.get("maxLimitRequestRatio")) {
        out.extend(ratio_constraint(ty, &r, q, requests, limits));
    }
}

/// Everything the pod breaks of one range.
pub fn check(pod: &Value, range: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let containers = |list: &str| {
        pod.pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    for item in range
        .pointer("/spec/limits")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match item.get("type").and_then(Value::as_str) {
            Some("Container") => {
                for c in containers("containers").iter().chain(&containers("initContainers")) {
                    let (requests, limits) = container_resources(c);
                    check_item(item, "Container", &requests, &limits, &mut out);
                }
            }
            Some("Pod") => {
                // The containers' totals, without the pod overhead, as Kubernetes checks.
                let requests = pod_total(pod, false, false);
                let limits = pod_total(pod, true, false);
                check_item(item, "Pod", &requests, &limits, &mut out);
            }
            _ => {}
        }
    }
    out
}

/// Several errors as Kubernetes aggregates them: one as it is, more as `[a, b]` (each
/// once).
fn aggregate(errors: &[String]) -> String {
    let mut seen = Vec::new();
    for e in errors {
        if !seen.contains(e) {
            seen.push(e.clone());
        }
    }
    match seen.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(limits: Value) -> Value {
        json!({"metadata": {"name": "lr", "namespace": "ns"}, "spec": {"limits": limits}})
    }

    fn pod(containers: Value) -> Value {
        json!({"metadata": {"name": "x", "namespace": "ns"}, "spec": {"containers": containers}})
    }

    #[test]
    fn defaults_fill_what_containers_leave_out_and_say_so() {
        let lr = range(json!([{"type": "Container",
            "default": {"cpu": "500m", "memory": "256Mi"}, "defaultRequest": {"cpu": "100m", "memory": "128Mi"}}]));
        let mut p = pod(json!([
            {"name": "a"},
            {"name": "b", "resources": {"limits": {"cpu": "200m"}}},
        ]));
        p["spec"]["initContainers"] = json!([{"name": "i", "resources": {"requests": {"memory": "64Mi"}}}]);
        assert!(admit(&mut p, &[lr]).expect("within the range"));
        let c = &p["spec"]["containers"];
        assert_eq!(
            c[0]["resources"],
            json!({"requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "500m", "memory": "256Mi"}})
        );
        // A stated limit is the request (pod defaulting), not the range's default request.
        assert_eq!(
            c[1]["resources"],
            json!({"requests": {"cpu": "200m", "memory": "128Mi"},
            "limits": {"cpu": "200m", "memory": "256Mi"}})
        );
        assert_eq!(
            p["spec"]["initContainers"][0]["resources"],
            json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}})
        );
        assert_eq!(
            p["metadata"]["annotations"][ANNOTATION],
            "LimitRanger plugin set: cpu, memory request for container a; cpu, memory limit for container a; \
             memory request for container b; memory limit for container b; cpu request for init container i; \
             cpu, memory limit for init container i"
        );
        let mut stated = pod(
            json!([{"name": "a", "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
            "limits": {"cpu": "1", "memory": "1Gi"}}}]),
        );
        let before = stated.clone();
        let lr = range(json!([{"type": "Container", "default": {"cpu": "500m"}}]));
        assert!(!admit(&mut stated, &[lr]).unwrap());
        assert_eq!(stated, before, "nothing to fill in, nothing changes");
    }

    #[test]
    fn max_min_and_ratio_refuse_with_kubernetes_messages() {
        let lr = range(json!([{"type": "Container", "max": {"cpu": "500m"}, "min": {"memory": "64Mi"}}]));
        let mut p = pod(json!([{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "128Mi"}}}]));
        let err = admit(&mut p, std::slice::from_ref(&lr)).expect_err("over the max");
        assert_eq!(
            err.to_string(),
            "pods \"x\" is forbidden: maximum cpu usage per Container is 500m, but limit is 1"
        );
        let mut p = pod(json!([{"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "32Mi"}}}]));
        let err = admit(&mut p, &[lr]).expect_err("two problems");
        assert_eq!(
            err.to_string(),
            "pods \"x\" is forbidden: [minimum memory usage per Container is 64Mi, but request is 32Mi, \
             maximum cpu usage per Container is 500m.  No limit is specified]"
        );
        let ratio = range(json!([{"type": "Container", "maxLimitRequestRatio": {"cpu": "2"}}]));
        let mut p = pod(json!([{"name": "a", "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "250m"}}}]));
        let err = admit(&mut p, std::slice::from_ref(&ratio)).expect_err("ratio 2.5");
        assert_eq!(
            err.to_string(),
            "pods \"x\" is forbidden: cpu max limit to request ratio per Container is 2, but provided ratio is 2.500000"
        );
        let mut ok = pod(json!([{"name": "a", "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "200m"}}}]));
        admit(&mut ok, std::slice::from_ref(&ratio)).expect("ratio 2 is allowed");
        let mut none = pod(json!([{"name": "a"}]));
        let err = admit(&mut none, &[ratio]).expect_err("no request");
        assert!(
            err.to_string().ends_with("but no request is specified or request is 0"),
            "{err}"
        );
    }

    #[test]
    fn pod_limits_sum_the_containers() {
        let lr = range(json!([{"type": "Pod", "max": {"memory": "1Gi"}}]));
        let two = |m: &str| {
            pod(json!([
                {"name": "a", "resources": {"limits": {"memory": m}}},
                {"name": "b", "resources": {"limits": {"memory": m}}},
            ]))
        };
        admit(&mut two("512Mi"), std::slice::from_ref(&lr)).expect("exactly the max");
        let err = admit(&mut two("600Mi"), &[lr]).expect_err("over");
        assert_eq!(
            err.to_string(),
            "pods \"x\" is forbidden: maximum memory usage per Pod is 1Gi, but limit is 1200Mi"
        );
    }

    #[test]
    fn defaults_come_before_the_checks_and_from_every_range() {
        let defaults = range(json!([{"type": "Container", "default": {"cpu": "2"}}]));
        let mut max = range(json!([{"type": "Container", "max": {"cpu": "1"}}]));
        max["metadata"]["name"] = json!("max");
        let mut p = pod(json!([{"name": "a"}]));
        let err = admit(&mut p, &[defaults, max]).expect_err("the default breaks the max");
        assert!(
            err.to_string()
                .contains("maximum cpu usage per Container is 1, but limit is 2"),
            "{err}"
        );
        assert_eq!(ratio_text(1000, 3000), "0.333333");
    }
}
