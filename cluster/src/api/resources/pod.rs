//! Pods: Kubernetes' defaults and validation of a pod spec (shared with every pod
//! template), the rules for updating a running pod, and `kubectl get pods` columns.

use serde_json::{json, Value};

use super::{cell, set_default, Column};
use crate::api::validation::{self as v, Errors};

/// Defaults Kubernetes applies to a pod spec (also inside templates).
pub fn spec_defaults(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "enableServiceLinks", json!(true));
    for list in ["initContainers", "containers"] {
        for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            container_defaults(c);
        }
    }
    for v in spec
        .get_mut("volumes")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        volume_defaults(v);
    }
}

fn container_defaults(c: &mut Value) {
    if !c.is_object() {
        return;
    }
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
    // Kubernetes pulls `:latest` (or untagged) images always, pinned ones if absent.
    let tag = image.rsplit('/').next().unwrap_or_default();
    let latest = !image.contains('@') && (!tag.contains(':') || tag.ends_with(":latest"));
    set_default(
        c,
        "imagePullPolicy",
        json!(if latest { "Always" } else { "IfNotPresent" }),
    );
    for p in c.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
        set_default(p, "protocol", json!("TCP"));
    }
    for e in c.get_mut("env").and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(field_ref) = e.pointer_mut("/valueFrom/fieldRef") {
            set_default(field_ref, "apiVersion", json!("v1"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let Some(p) = c.get_mut(probe).filter(|p| p.is_object()) else {
            continue;
        };
        set_default(p, "timeoutSeconds", json!(1));
        set_default(p, "periodSeconds", json!(10));
        set_default(p, "successThreshold", json!(1));
        set_default(p, "failureThreshold", json!(3));
        if let Some(h) = p.get_mut("httpGet").filter(|h| h.is_object()) {
            set_default(h, "path", json!("/"));
            set_default(h, "scheme", json!("HTTP"));
        }
    }
    for hook in ["postStart", "preStop"] {
        if let Some(h) = c
            .pointer_mut(&format!("/lifecycle/{hook}/httpGet"))
            .filter(|h| h.is_object())
        {
            set_default(h, "path", json!("/"));
            set_default(h, "scheme", json!("HTTP"));
        }
    }
}

/// Volume defaults: file modes 0644 (420) for projected files, as Kubernetes sets them.
fn volume_defaults(v: &mut Value) {
    for source in ["configMap", "secret", "downwardAPI", "projected"] {
        if let Some(s) = v.get_mut(source).filter(|s| s.is_object()) {
            set_default(s, "defaultMode", json!(420));
        }
    }
    if let Some(h) = v.get_mut("hostPath").filter(|h| h.is_object()) {
        set_default(h, "type", json!(""));
    }
}

/// Defaults of a Pod object: its spec's, and (for pods, not templates, as in
/// Kubernetes' `SetDefaults_Pod`) requests equal to limits where only limits are set.
pub fn defaults(pod: &mut Value) {
    if let Some(spec) = pod.get_mut("spec") {
        spec_defaults(spec);
        for list in ["initContainers", "containers"] {
            for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
                let Some(limits) = c.pointer("/resources/limits").and_then(Value::as_object).cloned() else {
                    continue;
                };
                let resources = &mut c["resources"];
                if !resources.get("requests").is_some_and(Value::is_object) {
                    resources["requests"] = json!({});
                }
                for (name, q) in limits {
                    set_default(&mut resources["requests"], &name, q);
                }
            }
        }
    }
}

/// What the server sets on a new Pod: the Pending phase, the service account, and the
/// tolerations for not-ready and unreachable nodes (Kubernetes' DefaultTolerationSeconds).
pub fn prepare_create(pod: &mut Value) {
    pod["status"] = json!({"phase": "Pending", "qosClass": qos_class(pod)});
    let Some(spec) = pod.get_mut("spec").filter(|s| s.is_object()) else {
        return;
    };
    let sa = spec
        .get("serviceAccountName")
        .or_else(|| spec.get("serviceAccount"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    spec["serviceAccountName"] = json!(sa);
    spec["serviceAccount"] = json!(sa);
    if !spec.get("tolerations").is_some_and(Value::is_array) {
        spec["tolerations"] = json!([]);
    }
    if let Some(tolerations) = spec["tolerations"].as_array_mut() {
        for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
            let tolerated = tolerations.iter().any(|t| {
                (t.get("key").and_then(Value::as_str) == Some(key)
                    || t.get("operator") == Some(&json!("Exists")) && t.get("key").is_none())
                    && t.get("effect").and_then(Value::as_str).is_none_or(|e| e == "NoExecute")
            });
            if !tolerated {
                tolerations
                    .push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
            }
        }
    }
}

/// Kubernetes' QoS class: Guaranteed when every container's requests equal its limits
/// for cpu and memory, BestEffort when nothing is requested or limited, else Burstable.
fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["/spec/initContainers", "/spec/containers"]
        .iter()
        .filter_map(|p| pod.pointer(p).and_then(Value::as_array))
        .flatten()
        .collect();
    let (mut any, mut guaranteed) = (false, true);
    for c in containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        if requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for r in ["cpu", "memory"] {
            let limit = limits
                .and_then(|l| l.get(r))
                .and_then(Value::as_str)
                .and_then(crate::quantity::millis);
            // A request defaults to the limit when only the limit is set.
            let request = requests
                .and_then(|q| q.get(r))
                .and_then(Value::as_str)
                .and_then(crate::quantity::millis)
                .or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// Validates a pod spec at `base` (`spec` or `spec.template.spec`).
pub fn validate_spec(errs: &mut Errors, spec: Option<&Value>, base: &str) {
    validate_spec_with(errs, spec, base, &[]);
}

/// Validates a pod spec whose volume mounts may also name `extra_volumes` (a
/// StatefulSet's claim templates).
pub fn validate_spec_with(errs: &mut Errors, spec: Option<&Value>, base: &str, extra_volumes: &[&str]) {
    let Some(spec) = spec.filter(|s| s.is_object()) else {
        errs.required(base);
        return;
    };
    let containers = spec.get("containers").and_then(Value::as_array);
    if containers.is_none_or(|c| c.is_empty()) {
        errs.required(&v::path(base, "containers"));
    }
    let volumes: Vec<&str> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|vol| vol.get("name").and_then(Value::as_str))
        .chain(extra_volumes.iter().copied())
        .collect();
    let mut seen_volumes = std::collections::HashSet::new();
    for (field, vol) in v::items(spec, base, "volumes") {
        let name = vol.get("name").unwrap_or(&Value::Null);
        let n = name.as_str().unwrap_or_default();
        if n.is_empty() {
            errs.required(&format!("{field}.name"));
        } else {
            for m in v::dns1123_label(n) {
                errs.invalid(&format!("{field}.name"), name, m);
            }
            if !seen_volumes.insert(n) {
                errs.duplicate(&format!("{field}.name"), name);
            }
        }
        let sources = vol.as_object().map_or(0, |o| o.keys().filter(|k| *k != "name").count());
        if sources > 1 {
            errs.forbidden(&field, "may not specify more than 1 volume type");
        }
    }
    let mut names = std::collections::HashSet::new();
    for list in ["initContainers", "containers"] {
        for (field, c) in v::items(spec, base, list) {
            validate_container(errs, c, &field, &volumes, &mut names);
        }
    }
    if let Some(p) = spec.get("restartPolicy").and_then(Value::as_str) {
        if !["Always", "OnFailure", "Never"].contains(&p) {
            errs.unsupported(&v::path(base, "restartPolicy"), p, &["Always", "OnFailure", "Never"]);
        }
    }
    if let Some(p) = spec.get("dnsPolicy").and_then(Value::as_str) {
        let supported = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
        if !supported.contains(&p) {
            errs.unsupported(&v::path(base, "dnsPolicy"), p, &supported);
        }
    }
    v::non_negative(
        errs,
        &v::path(base, "terminationGracePeriodSeconds"),
        spec.get("terminationGracePeriodSeconds"),
    );
    if let Some(d) = spec.get("activeDeadlineSeconds") {
        if d.as_i64().is_some_and(|n| n <= 0) {
            errs.invalid(
                &v::path(base, "activeDeadlineSeconds"),
                d,
                "must be greater than or equal to 1",
            );
        }
    }
    v::labels(errs, &v::path(base, "nodeSelector"), spec.get("nodeSelector"));
    for (field, t) in v::items(spec, base, "tolerations") {
        validate_toleration(errs, t, &field);
    }
}

fn validate_container(
    errs: &mut Errors,
    c: &Value,
    field: &str,
    volumes: &[&str],
    names: &mut std::collections::HashSet<String>,
) {
    let name = c.get("name").cloned().unwrap_or(Value::Null);
    match name.as_str().filter(|n| !n.is_empty()) {
        None => errs.required(&format!("{field}.name")),
        Some(n) => {
            for m in v::dns1123_label(n) {
                errs.invalid(&format!("{field}.name"), &name, m);
            }
            if !names.insert(n.to_string()) {
                errs.duplicate(&format!("{field}.name"), &name);
            }
        }
    }
    if c.get("image")
        .and_then(Value::as_str)
        .is_none_or(|i| i.trim().is_empty())
    {
        errs.required(&format!("{field}.image"));
    }
    let mut port_names = std::collections::HashSet::new();
    for (pf, p) in v::items(c, field, "ports") {
        v::port_number(errs, &format!("{pf}.containerPort"), p.get("containerPort"));
        if let Some(hp) = p.get("hostPort").filter(|h| h.as_i64() != Some(0)) {
            v::port_number(errs, &format!("{pf}.hostPort"), Some(hp));
        }
        v::protocol(errs, &format!("{pf}.protocol"), p.get("protocol"));
        if let Some(n) = p.get("name") {
            v::port_name(errs, &format!("{pf}.name"), n);
            if !port_names.insert(n.to_string()) {
                errs.duplicate(&format!("{pf}.name"), n);
            }
        }
    }
    for (ef, e) in v::items(c, field, "env") {
        if e.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
            errs.required(&format!("{ef}.name"));
        }
        if let Some(from) = e.get("valueFrom") {
            let sources = from.as_object().map_or(0, |o| o.len());
            if sources != 1 {
                errs.invalid(
                    &format!("{ef}.valueFrom"),
                    from,
                    "may not have more than one field specified at a time",
                );
            }
            if e.get("value").and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
                errs.invalid(
                    &format!("{ef}.valueFrom"),
                    from,
                    "may not be specified when `value` is not empty",
                );
            }
        }
    }
    let requests = v::at(c, "resources.requests");
    let limits = v::at(c, "resources.limits");
    v::resource_list(errs, &format!("{field}.resources.requests"), requests);
    v::resource_list(errs, &format!("{field}.resources.limits"), limits);
    for (r, q) in requests.and_then(Value::as_object).into_iter().flatten() {
        let limit = limits
            .and_then(|l| l.get(r))
            .and_then(Value::as_str)
            .and_then(crate::quantity::millis);
        let request = q.as_str().and_then(crate::quantity::millis);
        if let (Some(l), Some(req)) = (limit, request) {
            if req > l {
                let lq = limits
                    .and_then(|l| l.get(r))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                errs.invalid(
                    &format!("{field}.resources.requests"),
                    q,
                    format!("must be less than or equal to {r} limit of {lq}"),
                );
            }
        }
    }
    for (mf, m) in v::items(c, field, "volumeMounts") {
        let name = m.get("name").cloned().unwrap_or(Value::Null);
        match name.as_str().filter(|n| !n.is_empty()) {
            None => errs.required(&format!("{mf}.name")),
            Some(n) if !volumes.contains(&n) => errs.0.push(crate::api::error::Cause::new(
                "FieldValueNotFound",
                format!("{mf}.name"),
                format!("Not found: {name}"),
            )),
            Some(_) => {}
        }
        if m.get("mountPath").and_then(Value::as_str).is_none_or(str::is_empty) {
            errs.required(&format!("{mf}.mountPath"));
        }
    }
}

fn validate_toleration(errs: &mut Errors, t: &Value, field: &str) {
    let op = t.get("operator").and_then(Value::as_str).unwrap_or("Equal");
    let key = t.get("key").and_then(Value::as_str).unwrap_or_default();
    match op {
        "Exists" => {
            if t.get("value").and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
                errs.invalid(
                    &format!("{field}.operator"),
                    &json!(op),
                    "value must be empty when `operator` is 'Exists'",
                );
            }
        }
        "Equal" => {
            if key.is_empty() {
                errs.invalid(
                    &format!("{field}.operator"),
                    &json!(op),
                    "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
                );
            }
        }
        other => errs.unsupported(&format!("{field}.operator"), other, &["Equal", "Exists"]),
    }
    if !key.is_empty() {
        for m in v::qualified_name(key) {
            errs.invalid(&format!("{field}.key"), &json!(key), m);
        }
    }
    if let Some(e) = t.get("effect").and_then(Value::as_str).filter(|e| !e.is_empty()) {
        let supported = ["NoSchedule", "PreferNoSchedule", "NoExecute"];
        if !supported.contains(&e) {
            errs.unsupported(&format!("{field}.effect"), e, &supported);
        }
    }
}

/// Pod validation: the spec on create; on update, only what Kubernetes lets change.
pub fn validate(pod: &Value, old: Option<&Value>, errs: &mut Errors) {
    validate_spec(errs, pod.get("spec"), "spec");
    let Some(old) = old else { return };
    // A running pod's spec is fixed but for images, the deadline, added tolerations and
    // the grace period; its node is set once, through the binding subresource.
    let mutable = |spec: Option<&Value>| -> Value {
        let mut s = spec.cloned().unwrap_or_default();
        if let Some(o) = s.as_object_mut() {
            for k in ["activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"] {
                o.remove(k);
            }
        }
        for list in ["initContainers", "containers"] {
            for c in s.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
                if let Some(o) = c.as_object_mut() {
                    o.remove("image");
                }
            }
        }
        s
    };
    if mutable(pod.get("spec")) != mutable(old.get("spec")) {
        errs.forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        );
    }
}

/// `kubectl get pods` columns.
pub static COLUMNS: &[Column] = &[
    Column::new("Name", "string", 0),
    Column::new("Ready", "string", 0),
    Column::new("Status", "string", 0),
    Column::new("Restarts", "string", 0),
    Column::new("Age", "string", 0),
    Column::new("IP", "string", 1),
    Column::new("Node", "string", 1),
    Column::new("Nominated Node", "string", 1),
    Column::new("Readiness Gates", "string", 1),
];

/// The STATUS column: the phase, or the reason a container is waiting or terminated.
pub fn status_reason(pod: &Value) -> String {
    if crate::api::objects::being_deleted(pod) {
        return "Terminating".into();
    }
    let mut reason = cell::s(pod, "/status/reason").to_string();
    if reason.is_empty() {
        reason = cell::s(pod, "/status/phase").to_string();
    }
    for cs in pod
        .pointer("/status/initContainerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let waiting = cell::s(cs, "/state/waiting/reason");
        if !waiting.is_empty() && waiting != "PodInitializing" {
            return format!("Init:{waiting}");
        }
    }
    for cs in pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let waiting = cell::s(cs, "/state/waiting/reason");
        let terminated = cell::s(cs, "/state/terminated/reason");
        if !waiting.is_empty() {
            reason = waiting.to_string();
        } else if !terminated.is_empty() {
            reason = terminated.to_string();
        }
    }
    if reason.is_empty() {
        "Pending".into()
    } else {
        reason
    }
}

/// The cells of one pod's row.
pub fn cells(pod: &Value) -> Vec<Value> {
    let statuses = pod.pointer("/status/containerStatuses").and_then(Value::as_array);
    let total = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = statuses.map_or(0, |c| c.iter().filter(|c| c["ready"] == json!(true)).count());
    let restarts: i64 = statuses.map_or(0, |c| c.iter().map(|c| cell::n(c, "/restartCount")).sum());
    vec![
        cell::name(pod),
        json!(format!("{ready}/{total}")),
        json!(status_reason(pod)),
        json!(restarts.to_string()),
        cell::age(pod),
        cell::or_none(cell::s(pod, "/status/podIP")),
        cell::or_none(cell::s(pod, "/spec/nodeName")),
        cell::or_none(cell::s(pod, "/status/nominatedNodeName")),
        json!("<none>"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "default"}, "spec": spec})
    }

    #[test]
    fn defaults_and_creation_fill_what_kubernetes_does() {
        let mut p = pod(
            json!({"containers": [{"name": "c", "image": "busybox", "ports": [{"containerPort": 80}],
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}),
        );
        defaults(&mut p);
        prepare_create(&mut p);
        assert_eq!(p["spec"]["restartPolicy"], "Always");
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(p["spec"]["containers"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(p["spec"]["serviceAccountName"], "default");
        assert_eq!(p["spec"]["tolerations"].as_array().map(Vec::len), Some(2));
        assert_eq!(p["status"]["qosClass"], "Guaranteed");
        assert_eq!(
            p["spec"]["containers"][0]["resources"]["requests"],
            json!({"cpu": "1", "memory": "1Gi"})
        );
        let mut pinned = pod(json!({"containers": [{"name": "c", "image": "registry:5000/busybox:1.36"}]}));
        defaults(&mut pinned);
        assert_eq!(pinned["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent");
        let mut probed = pod(json!({
            "volumes": [{"name": "v", "configMap": {"name": "x"}}],
            "containers": [{"name": "c", "image": "busybox",
                "livenessProbe": {"httpGet": {"port": 80}}, "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 2}}]}));
        defaults(&mut probed);
        let c = &probed["spec"]["containers"][0];
        assert_eq!(
            c["livenessProbe"],
            json!({"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1, "periodSeconds": 10,
                "successThreshold": 1, "failureThreshold": 3})
        );
        assert_eq!(c["readinessProbe"]["periodSeconds"], 2);
        assert_eq!(probed["spec"]["volumes"][0]["configMap"]["defaultMode"], 420);
    }

    #[test]
    fn the_status_column_says_terminating_only_for_a_set_deletion_timestamp() {
        let mut p = pod(json!({}));
        p["status"] = json!({"phase": "Running"});
        assert_eq!(status_reason(&p), "Running");
        p["metadata"]["deletionTimestamp"] = Value::Null;
        assert_eq!(
            status_reason(&p),
            "Running",
            "a null deletionTimestamp is not a deletion"
        );
        p["metadata"]["deletionTimestamp"] = json!("2026-12-05T17:00:00Z");
        assert_eq!(status_reason(&p), "Terminating");
    }

    #[test]
    fn spec_validation_names_each_field() {
        let cases = [
            (json!({"containers": []}), "spec.containers"),
            (
                json!({"containers": [{"name": "C", "image": "x"}]}),
                "spec.containers[0].name",
            ),
            (json!({"containers": [{"name": "c"}]}), "spec.containers[0].image"),
            (
                json!({"containers": [{"name": "c", "image": "x"}, {"name": "c", "image": "y"}]}),
                "spec.containers[1].name",
            ),
            (
                json!({"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 70000}]}]}),
                "spec.containers[0].ports[0].containerPort",
            ),
            (
                json!({"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}]}),
                "spec.containers[0].resources.requests",
            ),
            (
                json!({"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "lots"}}}]}),
                "spec.containers[0].resources.requests[cpu]",
            ),
            (
                json!({"containers": [{"name": "c", "image": "x", "volumeMounts": [{"name": "data", "mountPath": "/d"}]}]}),
                "spec.containers[0].volumeMounts[0].name",
            ),
            (
                json!({"restartPolicy": "Sometimes", "containers": [{"name": "c", "image": "x"}]}),
                "spec.restartPolicy",
            ),
            (
                json!({"containers": [{"name": "c", "image": "x"}], "tolerations": [{"key": "k", "operator": "Maybe"}]}),
                "spec.tolerations[0].operator",
            ),
        ];
        for (spec, field) in cases {
            let mut errs = Errors::default();
            validate(&pod(spec.clone()), None, &mut errs);
            assert!(
                errs.0.iter().any(|c| c.field == field),
                "{spec}: expected {field}, got {:?}",
                errs.0
            );
        }
        let mut errs = Errors::default();
        validate(
            &pod(json!({"containers": [{"name": "c", "image": "x"}]})),
            None,
            &mut errs,
        );
        assert!(errs.is_empty(), "{:?}", errs.0);
    }

    #[test]
    fn running_pods_change_only_images() {
        let old = pod(json!({"containers": [{"name": "c", "image": "x"}]}));
        let mut errs = Errors::default();
        validate(
            &pod(json!({"containers": [{"name": "c", "image": "y"}]})),
            Some(&old),
            &mut errs,
        );
        assert!(errs.is_empty());
        validate(
            &pod(json!({"containers": [{"name": "c", "image": "x", "command": ["sh"]}]})),
            Some(&old),
            &mut errs,
        );
        assert_eq!(errs.0[0].field, "spec");
    }
}
