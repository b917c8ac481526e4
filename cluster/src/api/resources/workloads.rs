//! Workloads that stamp out pods from a template: Deployment, ReplicaSet, DaemonSet, Job.
//! They share the template checks (a selector that matches the template's labels, a
//! valid pod spec, the restart policies the controller supports, an immutable selector).

use serde_json::{json, Value};

use super::{cell, child, pod, set_default, Column};
use crate::api::selectors::{labels_of, LabelSelector};
use crate::api::validation::{self as v, Errors};
use crate::cron::{time_zone_named, Schedule, ScheduleError};

/// Fills the pod template's defaults.
fn template_defaults(obj: &mut Value) {
    if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
        pod::spec_defaults(spec);
    }
}

/// The checks every template-based workload shares.
fn validate_template(errs: &mut Errors, obj: &Value, old: Option<&Value>, restart: &[&str]) {
    validate_template_with(errs, obj, old, restart, &[]);
}

/// The template checks, with volume names the pods get besides their own (`claims`).
fn validate_template_with(errs: &mut Errors, obj: &Value, old: Option<&Value>, restart: &[&str], claims: &[&str]) {
    let selector = v::at(obj, "spec.selector");
    match selector.map(LabelSelector::from_object) {
        None => errs.required("spec.selector"),
        Some(Err(m)) => errs.invalid("spec.selector", selector.unwrap_or(&Value::Null), m),
        Some(Ok(sel)) if sel.is_empty() => errs.invalid(
            "spec.selector",
            selector.unwrap_or(&Value::Null),
            "empty selector is invalid for deployment",
        ),
        Some(Ok(sel)) => {
            let template = obj.pointer("/spec/template").cloned().unwrap_or(Value::Null);
            if !sel.matches(&labels_of(&template)) {
                errs.invalid(
                    "spec.template.metadata.labels",
                    template.pointer("/metadata/labels").unwrap_or(&Value::Null),
                    "`selector` does not match template `labels`",
                );
            }
        }
    }
    v::labels(
        errs,
        "spec.template.metadata.labels",
        obj.pointer("/spec/template/metadata/labels"),
    );
    pod::validate_spec_with(errs, obj.pointer("/spec/template/spec"), "spec.template.spec", claims);
    if let Some(p) = obj.pointer("/spec/template/spec/restartPolicy").and_then(Value::as_str) {
        if !restart.contains(&p) {
            errs.unsupported("spec.template.spec.restartPolicy", p, restart);
        }
    }
    if let Some(old) = old {
        errs.immutable(
            "spec.selector",
            v::at(obj, "spec.selector"),
            v::at(old, "spec.selector"),
        );
    }
    v::non_negative(errs, "spec.minReadySeconds", obj.pointer("/spec/minReadySeconds"));
}

/// An int-or-percent (`maxSurge: 1` or `"25%"`) as a number and whether it is a percent.
fn int_or_percent(errs: &mut Errors, field: &str, value: Option<&Value>) -> Option<(i64, bool)> {
    let value = value?;
    let parsed = match value {
        Value::Number(n) => n.as_i64().map(|n| (n, false)),
        Value::String(s) => s.strip_suffix('%').and_then(|p| p.parse().ok()).map(|p| (p, true)),
        _ => None,
    };
    match parsed {
        None => errs.invalid(field, value, "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"),
        Some((n, _)) if n < 0 => errs.invalid(field, value, "must be greater than or equal to 0"),
        Some(_) => {}
    }
    parsed
}

/// Deployment defaults.
pub fn deployment_defaults(d: &mut Value) {
    if let Some(spec) = d.get_mut("spec").filter(|s| s.is_object()) {
        set_default(spec, "replicas", json!(1));
        set_default(spec, "revisionHistoryLimit", json!(10));
        set_default(spec, "progressDeadlineSeconds", json!(600));
        if let Some(strategy) = child(spec, "strategy") {
            set_default(strategy, "type", json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                if let Some(ru) = child(strategy, "rollingUpdate") {
                    set_default(ru, "maxUnavailable", json!("25%"));
                    set_default(ru, "maxSurge", json!("25%"));
                }
            }
        }
    }
    template_defaults(d);
}

/// Deployment validation.
pub fn validate_deployment(d: &Value, old: Option<&Value>, errs: &mut Errors) {
    v::non_negative(errs, "spec.replicas", d.pointer("/spec/replicas"));
    v::non_negative(
        errs,
        "spec.revisionHistoryLimit",
        d.pointer("/spec/revisionHistoryLimit"),
    );
    validate_template(errs, d, old, &["Always"]);
    let kind = d
        .pointer("/spec/strategy/type")
        .and_then(Value::as_str)
        .unwrap_or("RollingUpdate");
    match kind {
        "Recreate" => {
            if d.pointer("/spec/strategy/rollingUpdate").is_some_and(|r| !r.is_null()) {
                errs.forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                );
            }
        }
        "RollingUpdate" => {
            let surge = int_or_percent(
                errs,
                "spec.strategy.rollingUpdate.maxSurge",
                d.pointer("/spec/strategy/rollingUpdate/maxSurge"),
            );
            let unavailable = int_or_percent(
                errs,
                "spec.strategy.rollingUpdate.maxUnavailable",
                d.pointer("/spec/strategy/rollingUpdate/maxUnavailable"),
            );
            if let Some((u, true)) = unavailable {
                if u > 100 {
                    errs.invalid(
                        "spec.strategy.rollingUpdate.maxUnavailable",
                        &json!(format!("{u}%")),
                        "must not be greater than 100%",
                    );
                }
            }
            if surge.is_some_and(|(s, _)| s == 0) && unavailable.is_some_and(|(u, _)| u == 0) {
                errs.invalid(
                    "spec.strategy.rollingUpdate.maxUnavailable",
                    &json!(0),
                    "may not be 0 when `maxSurge` is 0",
                );
            }
        }
        other => errs.unsupported("spec.strategy.type", other, &["Recreate", "RollingUpdate"]),
    }
    let deadline = d.pointer("/spec/progressDeadlineSeconds").and_then(Value::as_i64);
    let min_ready = d.pointer("/spec/minReadySeconds").and_then(Value::as_i64).unwrap_or(0);
    if let Some(deadline) = deadline {
        if deadline <= min_ready {
            errs.invalid(
                "spec.progressDeadlineSeconds",
                &json!(deadline),
                "must be greater than minReadySeconds",
            );
        }
    }
}

/// `kubectl get deployments` columns.
pub static DEPLOYMENT_COLUMNS: &[Column] = &[
    Column::new("Name", "string", 0),
    Column::new("Ready", "string", 0),
    Column::new("Up-to-date", "integer", 0),
    Column::new("Available", "integer", 0),
    Column::new("Age", "string", 0),
    Column::new("Containers", "string", 1),
    Column::new("Images", "string", 1),
    Column::new("Selector", "string", 1),
];

/// One Deployment's row.
pub fn deployment_cells(d: &Value) -> Vec<Value> {
    vec![
        cell::name(d),
        json!(format!(
            "{}/{}",
            cell::n(d, "/status/readyReplicas"),
            cell::n(d, "/spec/replicas")
        )),
        json!(cell::n(d, "/status/updatedReplicas")),
        json!(cell::n(d, "/status/availableReplicas")),
        cell::age(d),
        cell::container_names(d, "/spec/template/spec/containers"),
        cell::container_images(d, "/spec/template/spec/containers"),
        cell::selector(d, "/spec/selector"),
    ]
}

/// ReplicaSet defaults.
pub fn replicaset_defaults(rs: &mut Value) {
    if let Some(spec) = rs.get_mut("spec").filter(|s| s.is_object()) {
        set_default(spec, "replicas", json!(1));
    }
    template_defaults(rs);
}

/// ReplicaSet validation.
pub fn validate_replicaset(rs: &Value, old: Option<&Value>, errs: &mut Errors) {
    v::non_negative(errs, "spec.replicas", rs.pointer("/spec/replicas"));
    validate_template(errs, rs, old, &["Always"]);
}

/// `kubectl get replicasets` columns.
pub static REPLICASET_COLUMNS: &[Column] = &[
    Column::new("Name", "string", 0),
    Column::new("Desired", "integer", 0),
    Column::new("Current", "integer", 0),
    Column::new("Ready", "integer", 0),
    Column::new("Age", "string", 0),
    Column::new("Containers", "string", 1),
    Column::new("Images", "string", 1),
    Column::new("Selector", "string", 1),
];

/// One ReplicaSet's row.
pub fn replicaset_cells(rs: &Value) -> Vec<Value> {
    replica_cells(rs, cell::selector(rs, "/spec/selector"))
}

/// A row of [`REPLICASET_COLUMNS`], for ReplicaSets and ReplicationControllers alike.
fn replica_cells(obj: &Value, selector: Value) -> Vec<Value> {
    vec![
        cell::name(obj),
        json!(cell::n(obj, "/spec/replicas")),
        json!(cell::n(obj, "/status/replicas")),
        json!(cell::n(obj, "/status/readyReplicas")),
        cell::age(obj),
        cell::container_names(obj, "/spec/template/spec/containers"),
        cell::container_images(obj, "/spec/template/spec/containers"),
        selector,
    ]
}

/// DaemonSet defaults.
pub fn daemonset_defaults(ds: &mut Value) {
    if let Some(spec) = ds.get_mut("spec").filter(|s| s.is_object()) {
        set_default(spec, "revisionHistoryLimit", json!(10));
        if let Some(strategy) = child(spec, "updateStrategy") {
            set_default(strategy, "type", json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                if let Some(ru) = child(strategy, "rollingUpdate") {
                    set_default(ru, "maxUnavailable", json!(1));
                    set_default(ru, "maxSurge", json!(0));
                }
            }
        }
    }
    template_defaults(ds);
}

/// DaemonSet validation.
pub fn validate_daemonset(ds: &Value, old: Option<&Value>, errs: &mut Errors) {
    validate_template(errs, ds, old, &["Always"]);
    if let Some(t) = ds.pointer("/spec/updateStrategy/type").and_then(Value::as_str) {
        if !["OnDelete", "RollingUpdate"].contains(&t) {
            errs.unsupported("spec.updateStrategy.type", t, &["OnDelete", "RollingUpdate"]);
        }
    }
}

/// `kubectl get daemonsets` columns.
pub static DAEMONSET_COLUMNS: &[Column] = &[
    Column::new("Name", "string", 0),
    Column::new("Desired", "integer", 0),
    Column::new("Current", "integer", 0),
    Column::new("Ready", "integer", 0),
    Column::new("Up-to-date", "integer", 0),
    Column::new("Available", "integer", 0),
    Column::new("Node Selector", "string", 0),
    Column::new("Age", "string", 0),
    Column::new("Containers", "string", 1),
    Column::new("Images", "string", 1),
    Column::new("Selector", "string", 1),
];

/// One DaemonSet's row.
pub fn daemonset_cells(ds: &Value) -> Vec<Value> {
    vec![
        cell::name(ds),
        json!(cell::n(ds, "/status/desiredNumberScheduled")),
        json!(cell::n(ds, "/status/currentNumberScheduled")),
        json!(cell::n(ds, "/status/numberReady")),
        json!(cell::n(ds, "/status/updatedNumberScheduled")),
        json!(cell::n(ds, "/status/numberAvailable")),
        cell::map(ds, "/spec/template/spec/nodeSelector"),
        cell::age(ds),
        cell::container_names(ds, "/spec/template/spec/containers"),
        cell::container_images(ds, "/spec/template/spec/containers"),
        cell::selector(ds, "/spec/selector"),
    ]
}

/// Label on a Job's pods (and in its generated selector) naming the Job's uid.
pub const JOB_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
/// Label on a Job's pods naming the Job.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

/// Job defaults.
pub fn job_defaults(job: &mut Value) {
    if let Some(spec) = job.get_mut("spec").filter(|s| s.is_object()) {
        if spec.get("completions").is_none_or(Value::is_null) && spec.get("parallelism").is_none_or(Value::is_null) {
            spec["completions"] = json!(1);
        }
        set_default(spec, "parallelism", json!(1));
        set_default(spec, "backoffLimit", json!(6));
        set_default(spec, "completionMode", json!("NonIndexed"));
        set_default(spec, "suspend", json!(false));
        let replacement = if spec.get("podFailurePolicy").is_some_and(|p| !p.is_null()) {
            "Failed"
        } else {
            "TerminatingOrFailed"
        };
        set_default(spec, "podReplacementPolicy", json!(replacement));
        set_default(spec, "manualSelector", Value::Null);
    }
    template_defaults(job);
}

/// A new Job without `manualSelector` gets a selector on its own uid, and its template
/// the matching labels, as Kubernetes generates them.
pub fn job_prepare_create(job: &mut Value) {
    let uid = cell::s(job, "/metadata/uid").to_string();
    let name = cell::s(job, "/metadata/name").to_string();
    if job.pointer("/spec/manualSelector") == Some(&json!(true)) {
        return;
    }
    let Some(spec) = job.get_mut("spec").filter(|s| s.is_object()) else {
        return;
    };
    if let Some(o) = spec.as_object_mut() {
        o.remove("manualSelector");
    }
    spec["selector"] = json!({"matchLabels": {JOB_UID_LABEL: uid}});
    if let Some(meta) = child(spec, "template").and_then(|t| child(t, "metadata")) {
        if let Some(labels) = child(meta, "labels") {
            for (k, v) in [
                (JOB_UID_LABEL, &uid),
                (JOB_NAME_LABEL, &name),
                ("controller-uid", &uid),
                ("job-name", &name),
            ] {
                labels[k] = json!(v);
            }
        }
    }
    job["status"] = json!({});
}

/// Job validation.
pub fn validate_job(job: &Value, old: Option<&Value>, errs: &mut Errors) {
    validate_template(errs, job, old, &["OnFailure", "Never"]);
    for f in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ] {
        v::non_negative(errs, &format!("spec.{f}"), job.pointer(&format!("/spec/{f}")));
    }
    if let Some(m) = job.pointer("/spec/completionMode").and_then(Value::as_str) {
        if !["NonIndexed", "Indexed"].contains(&m) {
            errs.unsupported("spec.completionMode", m, &["NonIndexed", "Indexed"]);
        }
    }
    if let Some(old) = old {
        errs.immutable(
            "spec.template",
            v::at(job, "spec.template"),
            v::at(old, "spec.template"),
        );
        errs.immutable(
            "spec.completions",
            v::at(job, "spec.completions"),
            v::at(old, "spec.completions"),
        );
    }
}

/// `kubectl get jobs` columns.
pub static JOB_COLUMNS: &[Column] = &[
    Column::new("Name", "string", 0),
    Column::new("Status", "string", 0),
    Column::new("Completions", "string", 0),
    Column::new("Duration", "string", 0),
    Column::new("Age", "string", 0),
    Column::new("Containers", "string", 1),
    Column::new("Images", "string", 1),
    Column::new("Selector", "string", 1),
];

fn condition_true(obj: &Value, kind: &str) -> bool {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == kind && c["status"] == "True")
}

/// One Job's row.
pub fn job_cells(job: &Value) -> Vec<Value> {
    let status = if condition_true(job, "Complete") {
        "Complete"
    } else if condition_true(job, "Failed") {
        "Failed"
    } else if condition_true(job, "FailureTarget") {
        "FailureTarget"
    } else if condition_true(job, "Suspended") {
        "Suspended"
    } else {
        "Running"
    };
    let completions = match job.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(c) => format!("{}/{c}", cell::n(job, "/status/succeeded")),
        None => format!(
            "{}/1 of {}",
            cell::n(job, "/status/succeeded"),
            cell::n(job, "/spec/parallelism")
        ),
    };
    let start = cell::s(job, "/status/startTime");
    let duration = if start.is_empty() {
        String::new()
    } else {
        match cell::s(job, "/status/completionTime") {
            "" => crate::api::table::human_age(start),
            end => crate::api::table::human_duration_between(start, end),
        }
    };
    vec![
        cell::name(job),
        json!(status),
        json!(completions),
        json!(duration),
        cell::age(job),
        cell::container_names(job, "/spec/template/spec/containers"),
        cell::container_images(job, "/spec/template/spec/containers"),
        cell::selector(job, "/spec/selector"),
    ]
}

/// StatefulSet defaults.
pub fn statefulset_defaults(sts: &mut Value) {
    if let Some(spec) = sts.get_mut("spec").filter(|s| s.is_object()) {
        set_default(spec, "replicas", json!(1));
        set_default(spec, "podManagementPolicy", json!("OrderedReady"));
        set_default(spec, "revisionHistoryLimit", json!(10));
        set_default(
            spec,
            "persistentVolumeClaimRetentionPolicy",
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
        );
        if let Some(strategy) = child(spec, "updateStrategy") {
            set_default(strategy, "type", json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                if let Some(ru) = child(strategy, "rollingUpdate") {
                    set_default(ru, "partition", json!(0));
                }
            }
        }
    }
    template_defaults(sts);
}

/// StatefulSet validation: the template checks, and what may not change once created
/// (everything but replicas, template, update strategy, ordinals and the retention policy).
pub fn validate_statefulset(sts: &Value, old: Option<&Value>, errs: &mut Errors) {
    v::non_negative(errs, "spec.replicas", sts.pointer("/spec/replicas"));
    let claims: Vec<&str> = sts
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.pointer("/metadata/name").and_then(Value::as_str))
        .collect();
    validate_template_with(errs, sts, old, &["Always"], &claims);
    if let Some(p) = sts.pointer("/spec/podManagementPolicy").and_then(Value::as_str) {
        if !["OrderedReady", "Parallel"].contains(&p) {
            errs.unsupported("spec.podManagementPolicy", p, &["OrderedReady", "Parallel"]);
        }
    }
    if let Some(old) = old {
        for f in ["serviceName", "volumeClaimTemplates", "podManagementPolicy"] {
            errs.immutable(
                &format!("spec.{f}"),
                v::at(sts, &format!("spec.{f}")),
                v::at(old, &format!("spec.{f}")),
            );
        }
    }
}

/// `kubectl get statefulsets` columns.
pub static STATEFULSET_COLUMNS: &[Column] = &[
    Column::new("Name", "string", 0),
    Column::new("Ready", "string", 0),
    Column::new("Age", "string", 0),
    Column::new("Containers", "string", 1),
    Column::new("Images", "string", 1),
];

/// One StatefulSet's row.
pub fn statefulset_cells(sts: &Value) -> Vec<Value> {
    vec![
        cell::name(sts),
        json!(format!(
            "{}/{}",
            cell::n(sts, "/status/readyReplicas"),
            cell::n(sts, "/spec/replicas")
        )),
        cell::age(sts),
        cell::container_names(sts, "/spec/template/spec/containers"),
        cell::container_images(sts, "/spec/template/spec/containers"),
    ]
}

/// ReplicationController defaults: one replica, and a selector taken from the template's
/// labels when none is given.
pub fn replicationcontroller_defaults(rc: &mut Value) {
    let labels = rc.pointer("/spec/template/metadata/labels").cloned();
    if let Some(spec) = rc.get_mut("spec").filter(|s| s.is_object()) {
        set_default(spec, "replicas", json!(1));
        if let Some(labels) = labels {
            set_default(spec, "selector", labels);
        }
    }
    template_defaults(rc);
}

/// ReplicationController validation: a selector (a plain map) matching the template.
pub fn validate_replicationcontroller(rc: &Value, _old: Option<&Value>, errs: &mut Errors) {
    v::non_negative(errs, "spec.replicas", rc.pointer("/spec/replicas"));
    let selector = rc.pointer("/spec/selector").and_then(Value::as_object);
    match selector.filter(|s| !s.is_empty()) {
        None => errs.required("spec.selector"),
        Some(sel) => {
            let labels = rc.pointer("/spec/template/metadata/labels").and_then(Value::as_object);
            if !sel.iter().all(|(k, val)| labels.and_then(|l| l.get(k)) == Some(val)) {
                errs.invalid(
                    "spec.template.metadata.labels",
                    rc.pointer("/spec/template/metadata/labels").unwrap_or(&Value::Null),
                    "`selector` does not match template `labels`",
                );
            }
        }
    }
    if rc.pointer("/spec/template").is_some() {
        pod::validate_spec(errs, rc.pointer("/spec/template/spec"), "spec.template.spec");
    }
}

/// One ReplicationController's row (its selector is a plain map).
pub fn replicationcontroller_cells(rc: &Value) -> Vec<Value> {
    replica_cells(rc, cell::map(rc, "/spec/selector"))
}

/// CronJob defaults (and the defaults of the Jobs it makes).
pub fn cronjob_defaults(cj: &mut Value) {
    if let Some(spec) = cj.get_mut("spec").filter(|s| s.is_object()) {
        set_default(spec, "concurrencyPolicy", json!("Allow"));
        set_default(spec, "suspend", json!(false));
        set_default(spec, "successfulJobsHistoryLimit", json!(3));
        set_default(spec, "failedJobsHistoryLimit", json!(1));
        if let Some(pod) = spec.pointer_mut("/jobTemplate/spec/template/spec") {
            pod::spec_defaults(pod);
        }
    }
}

/// CronJob validation, as Kubernetes' validateCronJobSpec: a schedule the CronJob
/// controller can run (five fields or an `@` descriptor, no `TZ=`), a `timeZone` of the
/// time zone database (checked when set or changed), non-negative deadline and history
/// limits, a name that leaves room for the Jobs' `-<minutes>` suffix, a valid job template.
pub fn validate_cronjob(cj: &Value, old: Option<&Value>, errs: &mut Errors) {
    // Job names add `-` and up to 11 digits, within a 63-character label.
    let name = cell::s(cj, "/metadata/name");
    if name.len() > 52 {
        errs.invalid("metadata.name", &json!(name), "must be no more than 52 characters");
    }
    match cj.pointer("/spec/schedule").and_then(Value::as_str) {
        None | Some("") => errs.required("spec.schedule"),
        Some(schedule) => {
            let parsed = Schedule::parse(schedule);
            if let Err(e) = &parsed {
                errs.invalid("spec.schedule", &json!(schedule), e.to_string());
            }
            if schedule.contains("TZ") && !matches!(parsed, Err(ScheduleError::TimeZoneInSchedule)) {
                errs.invalid(
                    "spec.schedule",
                    &json!(schedule),
                    ScheduleError::TimeZoneInSchedule.to_string(),
                );
            }
        }
    }
    let zone = cj.pointer("/spec/timeZone").filter(|z| !z.is_null());
    if old.is_none_or(|o| o.pointer("/spec/timeZone").filter(|z| !z.is_null()) != zone) {
        if let Some(zone) = zone {
            match zone.as_str() {
                Some(name) => {
                    if let Err(e) = time_zone_named(name) {
                        errs.invalid("spec.timeZone", zone, e.to_string());
                    }
                }
                None => errs.invalid("spec.timeZone", zone, "must be a string"),
            }
        }
    }
    for f in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        v::non_negative(errs, &format!("spec.{f}"), cj.pointer(&format!("/spec/{f}")));
    }
    // A Job's selector is generated from its uid when it is created.
    if let Some(selector) = cj.pointer("/spec/jobTemplate/spec/selector").filter(|s| !s.is_null()) {
        errs.invalid(
            "spec.jobTemplate.spec.selector",
            selector,
            "`selector` will be auto-generated",
        );
    }
    if cj.pointer("/spec/jobTemplate/spec/manualSelector") == Some(&json!(true)) {
        errs.unsupported("spec.jobTemplate.spec.manualSelector", "true", &["nil", "false"]);
    }
    if let Some(p) = cj.pointer("/spec/concurrencyPolicy").and_then(Value::as_str) {
        if !["Allow", "Forbid", "Replace"].contains(&p) {
            errs.unsupported("spec.concurrencyPolicy", p, &["Allow", "Forbid", "Replace"]);
        }
    }
    pod::validate_spec(
        errs,
        cj.pointer("/spec/jobTemplate/spec/template/spec"),
        "spec.jobTemplate.spec.template.spec",
    );
    if let Some(p) = cj
        .pointer("/spec/jobTemplate/spec/template/spec/restartPolicy")
        .and_then(Value::as_str)
    {
        if !["OnFailure", "Never"].contains(&p) {
            errs.unsupported(
                "spec.jobTemplate.spec.template.spec.restartPolicy",
                p,
                &["OnFailure", "Never"],
            );
        }
    }
}

/// `kubectl get cronjobs` columns.
pub static CRONJOB_COLUMNS: &[Column] = &[
    Column::new("Name", "string", 0),
    Column::new("Schedule", "string", 0),
    Column::new("Timezone", "string", 0),
    Column::new("Suspend", "boolean", 0),
    Column::new("Active", "integer", 0),
    Column::new("Last Schedule", "date", 0),
    Column::new("Age", "string", 0),
    Column::new("Containers", "string", 1),
    Column::new("Images", "string", 1),
];

/// One CronJob's row.
pub fn cronjob_cells(cj: &Value) -> Vec<Value> {
    let last = cell::s(cj, "/status/lastScheduleTime");
    vec![
        cell::name(cj),
        json!(cell::s(cj, "/spec/schedule")),
        cell::or_none(cell::s(cj, "/spec/timeZone")),
        json!(cj.pointer("/spec/suspend") == Some(&json!(true))),
        json!(cj
            .pointer("/status/active")
            .and_then(Value::as_array)
            .map_or(0, Vec::len)),
        json!(if last.is_empty() {
            "<none>".to_string()
        } else {
            crate::api::table::human_age(last)
        }),
        cell::age(cj),
        cell::container_names(cj, "/spec/jobTemplate/spec/template/spec/containers"),
        cell::container_images(cj, "/spec/jobTemplate/spec/template/spec/containers"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Value {
        json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}})
    }

    fn fields(errs: &Errors) -> Vec<&str> {
        errs.0.iter().map(|c| c.field.as_str()).collect()
    }

    #[test]
    fn deployments_default_and_validate_like_kubernetes() {
        let mut d = deployment();
        deployment_defaults(&mut d);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        let mut errs = Errors::default();
        validate_deployment(&d, None, &mut errs);
        assert!(errs.is_empty(), "{:?}", errs.0);

        let mut bad = d.clone();
        bad["spec"]["selector"]["matchLabels"]["app"] = json!("other");
        bad["spec"]["strategy"] =
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}});
        bad["spec"]["replicas"] = json!(-1);
        let mut errs = Errors::default();
        validate_deployment(&bad, None, &mut errs);
        assert_eq!(
            fields(&errs),
            [
                "spec.replicas",
                "spec.template.metadata.labels",
                "spec.strategy.rollingUpdate.maxUnavailable"
            ]
        );

        let mut moved = d.clone();
        moved["spec"]["selector"]["matchLabels"]["tier"] = json!("x");
        moved["spec"]["template"]["metadata"]["labels"]["tier"] = json!("x");
        let mut errs = Errors::default();
        validate_deployment(&moved, Some(&d), &mut errs);
        assert_eq!(fields(&errs), ["spec.selector"]);
        assert!(errs.0[0].message.ends_with("field is immutable"));
    }

    #[test]
    fn stateful_set_pods_mount_their_claim_templates() {
        let mut sts = json!({"metadata": {"name": "db", "namespace": "default"}, "spec": {
            "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "x",
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]}});
        statefulset_defaults(&mut sts);
        let mut errs = Errors::default();
        validate_statefulset(&sts, None, &mut errs);
        assert!(errs.is_empty(), "{:?}", errs.0);
    }

    #[test]
    fn jobs_get_a_generated_selector_and_refuse_always() {
        let mut job = json!({"metadata": {"name": "pi", "namespace": "default", "uid": "u-1"}, "spec": {
            "template": {"spec": {"containers": [{"name": "c", "image": "x"}], "restartPolicy": "Never"}}}});
        job_defaults(&mut job);
        job_prepare_create(&mut job);
        assert_eq!(job["spec"]["selector"]["matchLabels"][JOB_UID_LABEL], "u-1");
        assert_eq!(job["spec"]["template"]["metadata"]["labels"]["job-name"], "pi");
        assert_eq!(job["spec"]["completions"], 1);
        let mut errs = Errors::default();
        validate_job(&job, None, &mut errs);
        assert!(errs.is_empty(), "{:?}", errs.0);
        job["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
        let mut errs = Errors::default();
        validate_job(&job, None, &mut errs);
        assert_eq!(fields(&errs), ["spec.template.spec.restartPolicy"]);
    }

    fn cronjob(spec: Value) -> Value {
        let mut cj = json!({"metadata": {"name": "report", "namespace": "default"}, "spec": spec});
        cj["spec"]["jobTemplate"] = json!({"spec": {"template": {"spec": {
            "containers": [{"name": "c", "image": "x"}], "restartPolicy": "Never"}}}});
        cronjob_defaults(&mut cj);
        cj
    }

    fn cronjob_errors(cj: &Value, old: Option<&Value>) -> Vec<String> {
        let mut errs = Errors::default();
        validate_cronjob(cj, old, &mut errs);
        errs.0.iter().map(|c| format!("{}: {}", c.field, c.message)).collect()
    }

    #[test]
    fn cronjobs_default_and_validate_their_schedule_and_time_zone() {
        let cj = cronjob(json!({"schedule": "*/5 * * * MON-FRI", "timeZone": "Europe/Berlin"}));
        assert_eq!(cj["spec"]["concurrencyPolicy"], "Allow");
        assert_eq!(cj["spec"]["suspend"], false);
        assert_eq!(cj["spec"]["successfulJobsHistoryLimit"], 3);
        assert_eq!(cj["spec"]["failedJobsHistoryLimit"], 1);
        assert!(cronjob_errors(&cj, None).is_empty());
        assert!(cronjob_errors(&cronjob(json!({"schedule": "@hourly"})), None).is_empty());

        let cases = [
            (json!({}), "spec.schedule: Required value"),
            (
                json!({"schedule": "* * * *"}),
                "spec.schedule: Invalid value: \"* * * *\": expected exactly 5 fields, found 4: [* * * *]",
            ),
            (
                json!({"schedule": "61 * * * *"}),
                "spec.schedule: Invalid value: \"61 * * * *\": end of range (61) above maximum (59): 61",
            ),
            (
                json!({"schedule": "@fortnightly"}),
                "spec.schedule: Invalid value: \"@fortnightly\": unrecognized descriptor: @fortnightly",
            ),
            (
                json!({"schedule": "TZ=UTC 0 * * * *"}),
                "spec.schedule: Invalid value: \"TZ=UTC 0 * * * *\": cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
            ),
            (
                json!({"schedule": "0 * * * *", "timeZone": "Mars/Olympus"}),
                "spec.timeZone: Invalid value: \"Mars/Olympus\": unknown time zone Mars/Olympus",
            ),
            (
                json!({"schedule": "0 * * * *", "timeZone": "Local"}),
                "spec.timeZone: Invalid value: \"Local\": timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
            ),
            (
                json!({"schedule": "0 * * * *", "startingDeadlineSeconds": -1}),
                "spec.startingDeadlineSeconds: Invalid value: -1: must be greater than or equal to 0",
            ),
            (
                json!({"schedule": "0 * * * *", "concurrencyPolicy": "Sometimes"}),
                "spec.concurrencyPolicy: Unsupported value: \"Sometimes\": supported values: \"Allow\", \"Forbid\", \"Replace\"",
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(cronjob_errors(&cronjob(spec.clone()), None), [want], "{spec}");
        }

        let mut long = cronjob(json!({"schedule": "0 * * * *"}));
        long["metadata"]["name"] = json!("a".repeat(53));
        assert_eq!(
            cronjob_errors(&long, None),
            [format!(
                "metadata.name: Invalid value: {:?}: must be no more than 52 characters",
                "a".repeat(53)
            )]
        );
        // A time zone is checked when it is set or changed, not on every update.
        let mut old = cronjob(json!({"schedule": "0 * * * *", "timeZone": "Mars/Olympus"}));
        assert!(cronjob_errors(&old.clone(), Some(&old)).is_empty());
        old["spec"]["timeZone"] = json!("UTC");
        assert_eq!(
            cronjob_errors(
                &cronjob(json!({"schedule": "0 * * * *", "timeZone": "Mars/Olympus"})),
                Some(&old)
            )
            .len(),
            1
        );
    }
}
