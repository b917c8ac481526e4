//! Job controller, as Kubernetes' `pkg/controller/job` runs a Job: pods from its template
//! until `completions` of them succeed (with `completionMode: Indexed`, one success per
//! index), at most `parallelism` at a time; failed pods replaced after an exponential
//! back-off (10 s, doubling, at most 10 min) until more than `backoffLimit` have failed;
//! the Job failed once it has been active `activeDeadlineSeconds`. As Kubernetes 1.31+
//! does, the interim condition (`SuccessCriteriaMet`, `FailureTarget`) comes first and the
//! terminal one (`Complete` with `completionTime`, `Failed`) once no pod of the Job is left
//! running or terminating; `kubectl wait --for=condition=complete` reads the latter. A
//! finished Job with `ttlSecondsAfterFinished` is deleted (background propagation) when its
//! time comes, by a requeue at that moment. `suspend` deletes the active pods and holds
//! creation. Finished pods are kept, as Kubernetes keeps them.
//!
//! Pods are read from an [`OwnerIndex`] fed by one watch of all pods; creations and
//! deletions not yet seen there are [`Expectations`], and while any are outstanding a
//! pass only reports status. The counts come from the pods the cache holds: Kubernetes
//! tracks finished pods with a pod finalizer and `uncountedTerminatedPods`, which Kairn
//! does not, so `succeeded` and `failed` never go below what the status already says (a
//! finished pod deleted by hand stays counted) and only pods in phase `Failed` count as
//! failed. `podFailurePolicy`, `successPolicy` and `backoffLimitPerIndex` are not acted on.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Preconditions, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::watch;

use super::deployment::owner_ref;
use super::informer::Informer;
use super::replicaset::{deletion_rank, is_active, is_ready, phase};
use super::{Error, Expectations, OwnerIndex};

/// Annotation (and label) carrying an Indexed Job pod's completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// The environment variable an Indexed Job's containers read their index from.
pub const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// The `spec.managedBy` of Jobs this controller runs (also when unset).
pub const MANAGER: &str = "kubernetes.io/job-controller";

/// Pods created or deleted per pass at most (Kubernetes' `MaxPodCreateDeletePerSync`).
const BURST: usize = 500;
/// The first delay before a failed pod is replaced (`DefaultJobPodFailureBackOff`).
const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// The longest delay (`MaxJobPodFailureBackOff`).
const BACKOFF_MAX: Duration = Duration::from_secs(600);
/// `backoffLimit` when unset.
const DEFAULT_BACKOFF_LIMIT: i32 = 6;

/// Condition reasons, as Kubernetes spells them.
pub mod reason {
    /// SuccessCriteriaMet and Complete: `completions` pods succeeded.
    pub const COMPLETIONS_REACHED: &str = "CompletionsReached";
    /// FailureTarget and Failed: more than `backoffLimit` pods failed.
    pub const BACKOFF_LIMIT_EXCEEDED: &str = "BackoffLimitExceeded";
    /// FailureTarget and Failed: active longer than `activeDeadlineSeconds`.
    pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
    /// Suspended True.
    pub const SUSPENDED: &str = "JobSuspended";
    /// Suspended False.
    pub const RESUMED: &str = "JobResumed";
}

/// What every reconcile shares: the client, the pod cache and the controller's own Job
/// store (newer than the snapshot a long reconcile started from).
struct Context {
    client: kube::Client,
    pods: OwnerIndex<Pod>,
    expectations: Expectations,
    jobs: Store<Job>,
}

/// Runs the controller until shutdown, reading pods from the shared `pods`.
pub(crate) async fn run(client: kube::Client, pods: &Informer<Pod>, shutdown: watch::Receiver<bool>) {
    let jobs: Api<Job> = Api::all(client.clone());
    let controller = Controller::new(jobs, watcher::Config::default());
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods: pods.index(),
        expectations: Expectations::default(),
        jobs: controller.store(),
    });
    let observer = ctx.clone();
    let pods = pods.subscribe(move |e| observer.expectations.observe(e));
    controller
        .owns_stream(pods)
        .graceful_shutdown_on(super::stopped(shutdown))
        .run(reconcile, super::retry_soon, ctx)
        .for_each(|r| async move { super::log_result("job", r) })
        .await;
}

// ---------------------------------------------------------------------------------------
// Conditions

fn condition(type_: &str, status: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// The condition of a type, if any.
pub fn get_condition<'a>(status: &'a JobStatus, type_: &str) -> Option<&'a JobCondition> {
    status.conditions.iter().flatten().find(|c| c.type_ == type_)
}

fn is_true(status: &JobStatus, type_: &str) -> bool {
    get_condition(status, type_).is_some_and(|c| c.status == "True")
}

/// Whether the Job has finished: `Complete` or `Failed` is True.
pub fn is_finished(status: &JobStatus) -> bool {
    is_true(status, "Complete") || is_true(status, "Failed")
}

/// Sets a condition as Kubernetes' ensureJobConditionStatus does: replaced when its
/// status, reason or message differs, never added as False. Whether anything changed.
fn ensure_condition(
    status: &mut JobStatus,
    type_: &str,
    value: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> bool {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != value || c.reason.as_deref() != Some(reason) || c.message.as_deref() != Some(message) {
            *c = condition(type_, value, reason, message, now);
            return true;
        }
        return false;
    }
    if value == "False" {
        return false;
    }
    conditions.push(condition(type_, value, reason, message, now));
    true
}

/// When the Job finished (its `Complete` or `Failed` condition turned True).
fn finished_at(status: &JobStatus) -> Option<Timestamp> {
    ["Complete", "Failed"]
        .iter()
        .filter_map(|t| get_condition(status, t))
        .filter(|c| c.status == "True")
        .find_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
        .or_else(|| status.completion_time.as_ref().map(|t| t.0))
}

// ---------------------------------------------------------------------------------------
// Pods

/// A pod's completion index, if it has a valid one below `completions`.
pub fn completion_index(pod: &Pod, completions: i32) -> Option<i32> {
    pod.annotations()
        .get(COMPLETION_INDEX)
        .and_then(|i| i.parse::<i32>().ok())
        .filter(|i| (0..completions).contains(i))
}

/// When the pod finished, in seconds (Kubernetes' getFinishedTime): the last container to
/// terminate, else its deletion, else its creation.
fn finish_time(pod: &Pod) -> i64 {
    let status = pod.status.as_ref();
    let terminated = status
        .into_iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        })
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0.as_second())
        .max();
    terminated
        .or_else(|| pod.metadata.deletion_timestamp.as_ref().map(|t| t.0.as_second()))
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()))
        .unwrap_or(0)
}

/// How long pod creation must still wait after the failures since the last success
/// (Kubernetes' backoff record): 10 s after one failure, doubling per further failure up
/// to 10 min, counted from the last failure. `finished` is (succeeded, finish second).
pub fn backoff_remaining(finished: &[(bool, i64)], now: i64) -> Duration {
    let last_success = finished.iter().filter(|(ok, _)| *ok).map(|(_, t)| *t).max();
    let failures: Vec<i64> = finished
        .iter()
        .filter(|(ok, t)| !ok && last_success.is_none_or(|s| *t > s))
        .map(|(_, t)| *t)
        .collect();
    let Some(last) = failures.iter().max() else {
        return Duration::ZERO;
    };
    let mut delay = BACKOFF_BASE;
    for _ in 1..failures.len() {
        delay = (delay * 2).min(BACKOFF_MAX);
        if delay == BACKOFF_MAX {
            break;
        }
    }
    let elapsed = Duration::from_secs((now - last).max(0) as u64);
    delay.saturating_sub(elapsed)
}

/// Whether the container restarts of the running pods exceed the back-off limit (for
/// `restartPolicy: OnFailure`, Kubernetes' pastBackoffLimitOnFailure).
fn past_backoff_limit_on_failure(job: &Job, pods: &[&Pod], limit: i32) -> bool {
    let policy = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.restart_policy.as_deref());
    if policy != Some("OnFailure") {
        return false;
    }
    let restarts: i32 = pods
        .iter()
        .filter(|p| matches!(phase(p), "Running" | "Pending"))
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum();
    if limit == 0 {
        restarts > 0
    } else {
        restarts >= limit
    }
}

/// Indexes as Kubernetes writes `completedIndexes`: ascending, runs as `a-b`, comma
/// separated (`1,3-5,7`).
pub fn format_indexes(indexes: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut run: Option<(i32, i32)> = None;
    for &i in indexes {
        run = match run {
            Some((a, b)) if i == b + 1 => Some((a, i)),
            Some(done) => {
                out.push(interval(done));
                Some((i, i))
            }
            None => Some((i, i)),
        };
    }
    if let Some(done) = run {
        out.push(interval(done));
    }
    out.join(",")
}

fn interval((a, b): (i32, i32)) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

/// The indexes of a `completedIndexes` string below `completions` (malformed parts are
/// skipped).
pub fn parse_indexes(s: &str, completions: i32) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<i32>(), b.parse::<i32>()),
            None => (part.parse::<i32>(), part.parse::<i32>()),
        };
        if let (Ok(a), Ok(b)) = (a, b) {
            out.extend((a.max(0)..=b.min(completions - 1)).take(completions.max(0) as usize));
        }
    }
    out
}

/// The lowest `count` indexes below `completions` not in `taken` (Kubernetes'
/// firstPendingIndexes).
pub fn first_pending_indexes(completions: i32, taken: &BTreeSet<i32>, count: usize) -> Vec<i32> {
    (0..completions).filter(|i| !taken.contains(i)).take(count).collect()
}

/// How many pods should be active (Kubernetes' manageJob): `parallelism`, but never more
/// than the completions still missing; with no `completions` (a work queue), what runs
/// keeps running once one pod succeeded.
pub fn want_active(completions: Option<i32>, parallelism: i32, succeeded: i32, active: i32) -> i32 {
    match completions {
        None if succeeded > 0 => active,
        None => parallelism.max(0),
        Some(c) => (c - succeeded).clamp(0, parallelism.max(0)),
    }
}

// ---------------------------------------------------------------------------------------
// The plan of one pass

/// What one pass does for a Job, decided from the Job and its cached pods alone.
#[derive(Debug, Default)]
pub struct Plan<'a> {
    /// The status to write (written when it differs from the Job's).
    pub status: JobStatus,
    /// Pods to create, by completion index (`None` for a NonIndexed Job).
    pub create: Vec<Option<i32>>,
    /// Pods to delete.
    pub delete: Vec<&'a Pod>,
    /// When to look again though no event comes (deadline, back-off, TTL).
    pub requeue: Option<Duration>,
    /// The finished Job's TTL has passed: delete it.
    pub expired: bool,
}

fn sooner(requeue: &mut Option<Duration>, after: Duration) {
    *requeue = Some(requeue.map_or(after, |r| r.min(after)));
}

/// The decision that ends a Job, once taken: (interim condition, terminal condition,
/// reason, message).
type Finishing = (&'static str, &'static str, String, String);

/// The end already decided (its interim condition is True), else the one the failure
/// rules decide now (Kubernetes' order: back-off limit, then deadline); with the time
/// left to the deadline when it is still ahead.
fn finishing(
    job: &Job,
    status: &JobStatus,
    pods: &[&Pod],
    failed: i32,
    now: Timestamp,
) -> (Option<Finishing>, Option<Duration>) {
    let spec = job.spec.clone().unwrap_or_default();
    let decided = |interim: &'static str, terminal: &'static str| {
        let c = get_condition(status, interim).filter(|c| c.status == "True")?;
        let reason = c.reason.clone().unwrap_or_default();
        Some((interim, terminal, reason, c.message.clone().unwrap_or_default()))
    };
    if let Some(f) = decided("SuccessCriteriaMet", "Complete").or_else(|| decided("FailureTarget", "Failed")) {
        return (Some(f), None);
    }
    let limit = spec.backoff_limit.unwrap_or(DEFAULT_BACKOFF_LIMIT);
    if failed > limit || past_backoff_limit_on_failure(job, pods, limit) {
        let message = "Job has reached the specified backoff limit".to_string();
        return (
            Some((
                "FailureTarget",
                "Failed",
                reason::BACKOFF_LIMIT_EXCEEDED.into(),
                message,
            )),
            None,
        );
    }
    let suspended = spec.suspend == Some(true);
    if let (Some(deadline), Some(start), false) = (spec.active_deadline_seconds, &status.start_time, suspended) {
        let end = start.0.as_second().saturating_add(deadline);
        if now.as_second() >= end {
            let message = "Job was active longer than specified deadline".to_string();
            return (
                Some(("FailureTarget", "Failed", reason::DEADLINE_EXCEEDED.into(), message)),
                None,
            );
        }
        return (None, Some(Duration::from_secs((end - now.as_second()) as u64)));
    }
    (None, None)
}

/// The pass for `job` with its pods `pods` (all the cache holds, finished and terminating
/// ones included); `settled` says that no creation or deletion is still unseen (else only
/// the status is brought up to date, as Kubernetes does with unsatisfied expectations).
pub fn plan<'a>(job: &Job, pods: &[&'a Pod], settled: bool, now: Timestamp) -> Plan<'a> {
    let mut status = job.status.clone().unwrap_or_default();
    let mut requeue = None;
    let spec = job.spec.clone().unwrap_or_default();
    if is_finished(&status) {
        // Only the TTL is left to act on.
        let mut expired = false;
        if let (Some(ttl), Some(at)) = (spec.ttl_seconds_after_finished, finished_at(&status)) {
            let expire = at.as_second() + i64::from(ttl);
            if now.as_second() >= expire {
                expired = true;
            } else {
                sooner(&mut requeue, Duration::from_secs((expire - now.as_second()) as u64));
            }
        }
        return Plan {
            status,
            requeue,
            expired,
            ..Default::default()
        };
    }
    let parallelism = spec.parallelism.unwrap_or(1);
    let completions = spec.completions;
    let indexed = spec.completion_mode.as_deref() == Some("Indexed") && completions.is_some();
    let suspended = spec.suspend == Some(true);
    let only_failed_replaced = spec.pod_replacement_policy.as_deref() == Some("Failed");

    let mut active: Vec<&'a Pod> = pods.iter().copied().filter(|p| is_active(p)).collect();
    let terminating = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some() && !matches!(phase(p), "Succeeded" | "Failed"))
        .count() as i32;
    let succeeded_pods: Vec<&Pod> = pods.iter().copied().filter(|p| phase(p) == "Succeeded").collect();
    let failed_pods: Vec<&Pod> = pods.iter().copied().filter(|p| phase(p) == "Failed").collect();
    let failed = (failed_pods.len() as i32).max(status.failed.unwrap_or(0));
    let mut succeeded_indexes = BTreeSet::new();
    let succeeded = match (indexed, completions) {
        (true, Some(c)) => {
            succeeded_indexes = parse_indexes(status.completed_indexes.as_deref().unwrap_or(""), c);
            succeeded_indexes.extend(succeeded_pods.iter().filter_map(|p| completion_index(p, c)));
            succeeded_indexes.len() as i32
        }
        _ => (succeeded_pods.len() as i32).max(status.succeeded.unwrap_or(0)),
    };

    if status.start_time.is_none() && !suspended {
        status.start_time = Some(Time(now));
    }
    let (finish, deadline_in) = finishing(job, &status, pods, failed, now);
    if let Some(after) = deadline_in {
        sooner(&mut requeue, after);
    }

    let ready = active.iter().filter(|p| is_ready(p)).count() as i32;
    let mut create: Vec<Option<i32>> = Vec::new();
    let mut delete: Vec<&'a Pod> = Vec::new();
    let mut active_now = active.len() as i32;

    if let Some((interim, terminal, why, message)) = &finish {
        // Every active pod goes; the terminal condition waits for them to be gone.
        delete = active.iter().copied().take(BURST).collect();
        active_now -= delete.len() as i32;
        if !is_true(&status, interim) {
            ensure_condition(&mut status, interim, "True", why, message, now);
        }
        if settled && active_now == 0 && terminating + delete.len() as i32 == 0 {
            ensure_condition(&mut status, terminal, "True", why, message, now);
            if *terminal == "Complete" {
                status.completion_time = Some(Time(now));
            }
        }
    } else {
        if settled && suspended {
            active.sort_by_key(|p| deletion_rank(p));
            delete = active.iter().copied().take(BURST).collect();
        } else if settled {
            let want = want_active(completions, parallelism, succeeded, active_now);
            // Indexed: pods of an index that is invalid, done, or taken twice go first.
            let mut active_indexes = BTreeSet::new();
            if let (true, Some(c)) = (indexed, completions) {
                active.sort_by_key(|p| std::cmp::Reverse(deletion_rank(p)));
                let (keep, drop): (Vec<&'a Pod>, Vec<&'a Pod>) = active.iter().partition(|p| {
                    completion_index(p, c).is_some_and(|i| !succeeded_indexes.contains(&i) && active_indexes.insert(i))
                });
                delete = drop;
                active = keep;
            }
            let excess = (active.len() + delete.len()) as i32 - want;
            if excess > delete.len() as i32 {
                active.sort_by_key(|p| deletion_rank(p));
                let more = (excess as usize - delete.len()).min(active.len());
                delete.extend(active.iter().copied().take(more));
            }
            delete.truncate(BURST);
            let blocked = if only_failed_replaced { terminating } else { 0 };
            let missing = want - blocked - active_now;
            // Deletions first: a pass either deletes or creates (as Kubernetes does).
            if delete.is_empty() && missing > 0 {
                let finished: Vec<(bool, i64)> = succeeded_pods
                    .iter()
                    .map(|p| (true, finish_time(p)))
                    .chain(failed_pods.iter().map(|p| (false, finish_time(p))))
                    .collect();
                let wait = backoff_remaining(&finished, now.as_second());
                let count = (missing as usize).min(BURST);
                if wait > Duration::ZERO {
                    sooner(&mut requeue, wait);
                } else if let (true, Some(c)) = (indexed, completions) {
                    let mut taken = succeeded_indexes.clone();
                    taken.extend(active_indexes.iter().copied());
                    create = first_pending_indexes(c, &taken, count).into_iter().map(Some).collect();
                } else {
                    create = vec![None; count];
                }
            }
        }
        active_now += create.len() as i32 - delete.len() as i32;
        let complete = match completions {
            None => succeeded > 0 && active_now == 0,
            Some(c) => succeeded >= c && active_now == 0,
        };
        if complete {
            let message = "Reached expected number of succeeded pods";
            ensure_condition(
                &mut status,
                "SuccessCriteriaMet",
                "True",
                reason::COMPLETIONS_REACHED,
                message,
                now,
            );
            if settled && terminating + delete.len() as i32 == 0 {
                ensure_condition(
                    &mut status,
                    "Complete",
                    "True",
                    reason::COMPLETIONS_REACHED,
                    message,
                    now,
                );
                status.completion_time = Some(Time(now));
            }
        } else if settled && suspended {
            ensure_condition(
                &mut status,
                "Suspended",
                "True",
                reason::SUSPENDED,
                "Job suspended",
                now,
            );
        } else if settled && ensure_condition(&mut status, "Suspended", "False", reason::RESUMED, "Job resumed", now) {
            // The deadline counts the time the Job is continuously active.
            status.start_time = Some(Time(now));
        }
    }

    let removed_ready = delete.iter().filter(|p| is_ready(p)).count() as i32;
    status.active = Some(active_now.max(0));
    status.ready = Some((ready - removed_ready).max(0));
    status.terminating = Some(terminating + delete.len() as i32);
    status.succeeded = Some(succeeded);
    status.failed = Some(failed);
    if indexed {
        status.completed_indexes = Some(format_indexes(&succeeded_indexes));
    }
    Plan {
        status,
        create,
        delete,
        requeue,
        expired: false,
    }
}

// ---------------------------------------------------------------------------------------
// Reconcile

/// The pod to create for `job` (with its completion index, for an Indexed Job).
pub fn pod_for(job: &Job, index: Option<i32>) -> Result<Pod, Error> {
    let name = job.name_any();
    let spec = job
        .spec
        .as_ref()
        .ok_or_else(|| Error::Malformed(format!("job {name} has no spec")))?;
    let template = spec.template.clone();
    let meta = template.metadata.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    let mut pod_spec = template.spec.unwrap_or_default();
    let mut generate_name = format!("{name}-");
    if let Some(i) = index {
        labels.insert(COMPLETION_INDEX.into(), i.to_string());
        annotations.insert(COMPLETION_INDEX.into(), i.to_string());
        generate_name = format!("{name}-{i}-");
        if pod_spec.hostname.as_deref().is_none_or(str::is_empty) {
            pod_spec.hostname = Some(format!("{name}-{i}"));
        }
        let containers = pod_spec
            .containers
            .iter_mut()
            .chain(pod_spec.init_containers.iter_mut().flatten());
        for c in containers {
            let env = c.env.get_or_insert_with(Vec::new);
            if !env.iter().any(|e| e.name == COMPLETION_INDEX_ENV) {
                env.push(EnvVar {
                    name: COMPLETION_INDEX_ENV.into(),
                    value: Some(i.to_string()),
                    value_from: None,
                });
            }
        }
    }
    Ok(Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: job.namespace(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: Some(vec![owner_ref(job)?]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    })
}

/// Whether pods may still be created for the Job with uid `uid`, given what the
/// controller's store holds under its name now.
fn still_wanted(current: Option<&Job>, uid: &str) -> bool {
    current.is_some_and(|j| {
        j.metadata.uid.as_deref() == Some(uid)
            && j.metadata.deletion_timestamp.is_none()
            && j.spec.as_ref().and_then(|s| s.suspend) != Some(true)
    })
}

/// Deletes the finished Job whose TTL has passed, with its pods in the background; the
/// cached resourceVersion makes sure it is the Job as seen (Kubernetes' TTL controller).
async fn delete_expired(ctx: &Context, job: &Job, ns: &str) -> Result<(), Error> {
    let name = job.name_any();
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        preconditions: Some(Preconditions {
            uid: job.uid(),
            resource_version: job.resource_version(),
        }),
        ..Default::default()
    };
    tracing::info!(object = %format!("{ns}/{name}"), "deleting finished job past its ttlSecondsAfterFinished");
    match api.delete(&name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.pods.ready().await;
    let ns = job
        .namespace()
        .ok_or_else(|| Error::Malformed("job without namespace".into()))?;
    let name = job.name_any();
    let uid = job.uid().ok_or_else(|| Error::Malformed("job without uid".into()))?;
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let manager = job.spec.as_ref().and_then(|s| s.managed_by.as_deref());
    if manager.is_some_and(|m| m != MANAGER) {
        return Ok(Action::await_change());
    }

    let owned = ctx.pods.owned_by(&uid);
    let cached = super::cache_state(&owned);
    let (adds, deletes) = ctx.expectations.outstanding(&uid, &cached);
    let now = super::now();
    // A pod whose deletion the cache does not show yet is terminating all the same.
    let deleting: Vec<Pod> = owned
        .iter()
        .filter(|p| p.uid().is_some_and(|u| deletes.contains(&u)))
        .map(|p| {
            let mut p = (**p).clone();
            p.metadata.deletion_timestamp = Some(Time(now));
            p
        })
        .collect();
    let pods: Vec<&Pod> = owned
        .iter()
        .filter(|p| !p.uid().is_some_and(|u| deletes.contains(&u)))
        .map(|p| p.as_ref())
        .chain(deleting.iter())
        .collect();
    let plan = plan(&job, &pods, adds.is_empty() && deletes.is_empty(), now);

    if plan.expired {
        delete_expired(&ctx, &job, &ns).await?;
        return Ok(Action::await_change());
    }
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    for pod in &plan.delete {
        tracing::info!(object = %format!("{ns}/{}", pod.name_any()), job = %name, "deleting job pod");
        super::delete_pod(&ctx.expectations, &pods_api, &uid, pod).await?;
    }
    for index in &plan.create {
        // The store moves on while this loop runs; the snapshot `job` does not.
        if !still_wanted(ctx.jobs.get(&ObjectRef::from_obj(job.as_ref())).as_deref(), &uid) {
            tracing::info!(object = %format!("{ns}/{name}"), "job gone, deleting or suspended; not creating more pods");
            return Ok(Action::await_change());
        }
        let created = super::create_pod(&ctx.expectations, &pods_api, &uid, &pod_for(&job, *index)?).await?;
        tracing::info!(object = %format!("{ns}/{}", created.name_any()), job = %name, index = ?index, "created job pod");
    }

    if job.status.as_ref() != Some(&plan.status) {
        for c in plan.status.conditions.iter().flatten() {
            let before = job.status.as_ref().and_then(|s| get_condition(s, &c.type_));
            if before.map(|b| (&b.status, &b.reason)) != Some((&c.status, &c.reason)) {
                tracing::info!(object = %format!("{ns}/{name}"), condition = %c.type_, status = %c.status, reason = ?c.reason, "job condition");
            }
        }
        let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
        super::write_status(&api, &*job, |j| j.status = Some(plan.status.clone())).await?;
    }
    // A Job that just finished with a TTL: the status write brings the next pass, which
    // requeues for the TTL.
    Ok(match plan.requeue {
        Some(after) => Action::requeue(after + Duration::from_millis(200)),
        None => Action::await_change(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::JobSpec;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus, PodTemplateSpec};
    use serde_json::json;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn job(spec: serde_json::Value) -> Job {
        let mut spec: JobSpec = serde_json::from_value(spec).unwrap();
        if spec.template == PodTemplateSpec::default() {
            spec.template = serde_json::from_value(json!({
                "metadata": {"labels": {"job-name": "j"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]},
            }))
            .unwrap();
        }
        Job {
            metadata: ObjectMeta {
                name: Some("j".into()),
                namespace: Some("default".into()),
                uid: Some("job-uid".into()),
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        }
    }

    /// A pod: `phase` (R running and ready, P pending, S succeeded, F failed, T
    /// terminating), created at `created`, finished at `created + 1`.
    fn pod(uid: &str, phase: char, created: i64, index: Option<i32>) -> Pod {
        let name = match phase {
            'R' | 'T' => "Running",
            'S' => "Succeeded",
            'F' => "Failed",
            _ => "Pending",
        };
        serde_json::from_value(json!({
            "metadata": {
                "name": uid, "uid": uid,
                "creationTimestamp": ts(created).to_string(),
                "deletionTimestamp": (phase == 'T').then(|| ts(created + 1).to_string()),
                "annotations": index.map(|i| json!({COMPLETION_INDEX: i.to_string()})),
            },
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {
                "phase": name,
                "conditions": [{"type": "Ready", "status": if phase == 'R' { "True" } else { "False" }}],
                "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                    "state": if matches!(phase, 'S' | 'F') {
                        json!({"terminated": {"exitCode": 0, "finishedAt": ts(created + 1).to_string()}})
                    } else { json!({"running": {}}) }}],
            },
        }))
        .unwrap()
    }

    fn pods(spec: &str, indexed: bool) -> Vec<Pod> {
        spec.chars()
            .enumerate()
            .map(|(i, c)| pod(&format!("p{i}"), c, 100 + i as i64, indexed.then_some(i as i32)))
            .collect()
    }

    fn conditions(s: &JobStatus) -> Vec<String> {
        s.conditions
            .iter()
            .flatten()
            .map(|c| format!("{}={}", c.type_, c.status))
            .collect()
    }

    #[test]
    fn pods_to_create_and_delete_follow_completions_and_parallelism() {
        // (spec, pods, settled) -> (create, delete, active, succeeded, conditions)
        type Case = (
            serde_json::Value,
            &'static str,
            bool,
            (usize, usize, i32, i32, &'static [&'static str]),
        );
        let cases: Vec<Case> = vec![
            // A new Job of 5 completions, 2 at a time.
            (json!({"completions": 5, "parallelism": 2}), "", true, (2, 0, 2, 0, &[])),
            // Two running: nothing to do.
            (
                json!({"completions": 5, "parallelism": 2}),
                "RR",
                true,
                (0, 0, 2, 0, &[]),
            ),
            // One succeeded: one more.
            (
                json!({"completions": 5, "parallelism": 2}),
                "SR",
                true,
                (1, 0, 2, 1, &[]),
            ),
            // Four succeeded: only the last one runs.
            (
                json!({"completions": 5, "parallelism": 2}),
                "SSSS",
                true,
                (1, 0, 1, 4, &[]),
            ),
            // Unseen creations: status only.
            (
                json!({"completions": 5, "parallelism": 2}),
                "S",
                false,
                (0, 0, 0, 1, &[]),
            ),
            // Parallelism lowered: the surplus goes.
            (
                json!({"completions": 5, "parallelism": 1}),
                "RRP",
                true,
                (0, 2, 1, 0, &[]),
            ),
            // Done: the interim and the terminal condition together.
            (
                json!({"completions": 2, "parallelism": 2}),
                "SS",
                true,
                (0, 0, 0, 2, &["SuccessCriteriaMet=True", "Complete=True"]),
            ),
            // Done but a pod still terminating: Complete waits.
            (
                json!({"completions": 2, "parallelism": 2}),
                "SST",
                true,
                (0, 0, 0, 2, &["SuccessCriteriaMet=True"]),
            ),
            // A work queue (no completions): runs parallelism, done when one succeeded and
            // nothing runs.
            (json!({"parallelism": 3}), "", true, (3, 0, 3, 0, &[])),
            (json!({"parallelism": 3}), "SR", true, (0, 0, 1, 1, &[])),
            (
                json!({"parallelism": 3}),
                "SF",
                true,
                (0, 0, 0, 1, &["SuccessCriteriaMet=True", "Complete=True"]),
            ),
            // Suspended: active pods go, nothing is created.
            (
                json!({"completions": 3, "parallelism": 2, "suspend": true}),
                "RR",
                true,
                (0, 2, 0, 0, &["Suspended=True"]),
            ),
            // Terminating pods are replaced at once by default, not with podReplacementPolicy Failed.
            (
                json!({"completions": 3, "parallelism": 2}),
                "TR",
                true,
                (1, 0, 2, 0, &[]),
            ),
            (
                json!({"completions": 3, "parallelism": 2, "podReplacementPolicy": "Failed"}),
                "TR",
                true,
                (0, 0, 1, 0, &[]),
            ),
        ];
        for (spec, pods_spec, settled, want) in cases {
            let j = job(spec.clone());
            let ps = pods(pods_spec, false);
            let refs: Vec<&Pod> = ps.iter().collect();
            let p = plan(&j, &refs, settled, ts(1000));
            let got = (
                p.create.len(),
                p.delete.len(),
                p.status.active.unwrap(),
                p.status.succeeded.unwrap(),
                conditions(&p.status),
            );
            let want = (
                want.0,
                want.1,
                want.2,
                want.3,
                want.4.iter().map(|s| s.to_string()).collect(),
            );
            assert_eq!(got, want, "{spec} with pods {pods_spec:?}");
            assert!(!p.expired);
        }
    }

    #[test]
    fn failures_back_off_then_fail_the_job_past_the_backoff_limit() {
        // One failure at 101 (its finish time): the replacement waits 10 s.
        let j = job(json!({"completions": 1, "parallelism": 1, "backoffLimit": 1}));
        let ps = pods("F", false);
        let refs: Vec<&Pod> = ps.iter().collect();
        let p = plan(&j, &refs, true, ts(105));
        assert!(p.create.is_empty());
        assert_eq!(p.requeue, Some(Duration::from_secs(6)));
        assert_eq!(p.status.failed, Some(1));
        let p = plan(&j, &refs, true, ts(111));
        assert_eq!(p.create.len(), 1);

        // A second failure: more than backoffLimit 1, the Job fails.
        let ps = pods("FF", false);
        let refs: Vec<&Pod> = ps.iter().collect();
        let p = plan(&j, &refs, true, ts(200));
        assert!(p.create.is_empty());
        assert_eq!(conditions(&p.status), ["FailureTarget=True", "Failed=True"]);
        let failed = get_condition(&p.status, "Failed").unwrap();
        assert_eq!(failed.reason.as_deref(), Some(reason::BACKOFF_LIMIT_EXCEEDED));
        assert_eq!(p.status.completion_time, None);

        // Still a pod running when the limit is passed: it goes first, Failed after.
        let ps = pods("FFR", false);
        let refs: Vec<&Pod> = ps.iter().collect();
        let p = plan(&j, &refs, true, ts(200));
        assert_eq!(p.delete.len(), 1);
        assert_eq!(p.status.active, Some(0));
        assert_eq!(p.status.terminating, Some(1));
        assert_eq!(conditions(&p.status), ["FailureTarget=True"]);
    }

    #[test]
    fn back_off_doubles_per_failure_since_the_last_success() {
        // (finished pods as (succeeded, time), now) -> remaining seconds
        type Case = (Vec<(bool, i64)>, i64, u64);
        let cases: Vec<Case> = vec![
            (vec![], 100, 0),
            (vec![(true, 90)], 100, 0),
            (vec![(false, 95)], 100, 5),
            (vec![(false, 80), (false, 95)], 100, 15),
            (vec![(false, 80), (false, 90), (false, 95)], 100, 35),
            // A success resets the count.
            (vec![(false, 80), (false, 90), (true, 92), (false, 95)], 100, 5),
            (vec![(false, 80), (true, 92)], 100, 0),
            // Capped at 10 minutes.
            ((0..20).map(|i| (false, i)).collect(), 100, 600 - 81),
        ];
        for (finished, now, want) in cases {
            assert_eq!(backoff_remaining(&finished, now).as_secs(), want, "{finished:?}");
        }
    }

    #[test]
    fn the_deadline_fails_the_job_and_is_waited_for_by_a_requeue() {
        let mut j = job(json!({"completions": 3, "parallelism": 1, "activeDeadlineSeconds": 30}));
        j.status = Some(JobStatus {
            start_time: Some(Time(ts(100))),
            ..Default::default()
        });
        let ps = pods("R", false);
        let refs: Vec<&Pod> = ps.iter().collect();
        let p = plan(&j, &refs, true, ts(110));
        assert!(p.delete.is_empty());
        assert_eq!(p.requeue, Some(Duration::from_secs(20)));
        let p = plan(&j, &refs, true, ts(130));
        assert_eq!(p.delete.len(), 1);
        assert_eq!(conditions(&p.status), ["FailureTarget=True"]);
        assert_eq!(
            get_condition(&p.status, "FailureTarget").unwrap().reason.as_deref(),
            Some(reason::DEADLINE_EXCEEDED)
        );
        // Once the pod is gone: Failed, with the same reason, and nothing new.
        j.status = Some(p.status.clone());
        let p = plan(&j, &[], true, ts(132));
        assert!(p.create.is_empty());
        assert_eq!(conditions(&p.status), ["FailureTarget=True", "Failed=True"]);
        assert_eq!(
            get_condition(&p.status, "Failed").unwrap().reason.as_deref(),
            Some(reason::DEADLINE_EXCEEDED)
        );
    }

    #[test]
    fn a_finished_job_waits_for_its_ttl_then_expires() {
        let mut j = job(json!({"completions": 1, "ttlSecondsAfterFinished": 60}));
        let mut status = JobStatus::default();
        ensure_condition(
            &mut status,
            "Complete",
            "True",
            reason::COMPLETIONS_REACHED,
            "m",
            ts(100),
        );
        j.status = Some(status);
        let p = plan(&j, &[], true, ts(130));
        assert!(!p.expired);
        assert_eq!(p.requeue, Some(Duration::from_secs(30)));
        assert_eq!(Some(&p.status), j.status.as_ref(), "a finished Job's status stays");
        assert!(plan(&j, &[], true, ts(160)).expired);
        j.spec.as_mut().unwrap().ttl_seconds_after_finished = None;
        let p = plan(&j, &[], true, ts(1000));
        assert!(!p.expired && p.requeue.is_none());
    }

    #[test]
    fn indexed_jobs_run_each_missing_index_once() {
        let spec = json!({"completions": 4, "parallelism": 2, "completionMode": "Indexed"});
        let j = job(spec);
        // Index 0 succeeded, 1 running: index 2 is next.
        let ps = pods("SR", true);
        let refs: Vec<&Pod> = ps.iter().collect();
        let p = plan(&j, &refs, true, ts(1000));
        assert_eq!(p.create, [Some(2)]);
        assert_eq!(p.status.completed_indexes.as_deref(), Some("0"));
        // Two pods of index 1: one goes.
        let mut ps = pods("SR", true);
        ps.push(pod("dup", 'P', 200, Some(1)));
        let refs: Vec<&Pod> = ps.iter().collect();
        let p = plan(&j, &refs, true, ts(1000));
        assert!(p.create.is_empty());
        assert_eq!(p.delete.iter().map(|p| p.name_any()).collect::<Vec<_>>(), ["dup"]);
        // Indexes recorded in the status stay succeeded though their pods are gone.
        let mut j = job(json!({"completions": 4, "parallelism": 2, "completionMode": "Indexed"}));
        j.status = Some(JobStatus {
            completed_indexes: Some("0-1,3".into()),
            ..Default::default()
        });
        let p = plan(&j, &[], true, ts(1000));
        assert_eq!(p.create, [Some(2)]);
        assert_eq!(p.status.succeeded, Some(3));
        let pod = pod_for(&j, Some(2)).unwrap();
        assert_eq!(pod.annotations().get(COMPLETION_INDEX).map(String::as_str), Some("2"));
        assert_eq!(pod.labels().get(COMPLETION_INDEX).map(String::as_str), Some("2"));
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("j-2-"));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("j-2"));
        let env = spec.containers[0].env.clone().unwrap();
        assert_eq!(env[0].name, COMPLETION_INDEX_ENV);
        assert_eq!(env[0].value.as_deref(), Some("2"));
    }

    #[test]
    fn completed_indexes_format_and_parse_as_kubernetes_writes_them() {
        let cases = [
            (vec![], ""),
            (vec![0], "0"),
            (vec![0, 1, 2], "0-2"),
            (vec![1, 3, 4, 5, 7], "1,3-5,7"),
        ];
        for (indexes, text) in cases {
            let set: BTreeSet<i32> = indexes.into_iter().collect();
            assert_eq!(format_indexes(&set), text);
            assert_eq!(parse_indexes(text, 10), set);
        }
        assert_eq!(parse_indexes("1,8-12,x", 10), [1, 8, 9].into_iter().collect());
        assert_eq!(first_pending_indexes(6, &[0, 2, 3].into_iter().collect(), 2), [1, 4]);
    }

    #[test]
    fn job_pods_carry_the_template_and_a_controller_reference() {
        let mut j = job(json!({"completions": 1}));
        j.spec.as_mut().unwrap().template.metadata = Some(ObjectMeta {
            labels: Some(
                [
                    ("batch.kubernetes.io/controller-uid", "job-uid"),
                    ("batch.kubernetes.io/job-name", "j"),
                    ("controller-uid", "job-uid"),
                    ("job-name", "j"),
                ]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ),
            ..Default::default()
        });
        let pod = pod_for(&j, None).unwrap();
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("j-"));
        assert_eq!(pod.labels().len(), 4);
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Job", "job-uid"));
        assert_eq!(owner.controller, Some(true));
        assert_eq!(pod.spec.unwrap().restart_policy.as_deref(), Some("Never"));
    }

    #[test]
    fn on_failure_restarts_count_against_the_backoff_limit() {
        let j = job(json!({"completions": 1, "backoffLimit": 2, "template": {
            "spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c"}]}}}));
        let mut p = pod("p", 'R', 100, None);
        let status: &mut PodStatus = p.status.as_mut().unwrap();
        status.container_statuses.as_mut().unwrap()[0].restart_count = 2;
        status.conditions = Some(vec![PodCondition {
            type_: "Ready".into(),
            status: "False".into(),
            ..Default::default()
        }]);
        let plan = plan(&j, &[&p], true, ts(1000));
        assert_eq!(plan.delete.len(), 1);
        assert_eq!(conditions(&plan.status), ["FailureTarget=True"]);
    }

    #[test]
    fn creations_stop_once_the_store_shows_the_job_gone_deleting_or_suspended() {
        let mut live = job(json!({"completions": 1}));
        assert!(still_wanted(Some(&live), "job-uid"));
        assert!(!still_wanted(None, "job-uid"));
        assert!(!still_wanted(Some(&live), "other"));
        live.spec.as_mut().unwrap().suspend = Some(true);
        assert!(!still_wanted(Some(&live), "job-uid"));
    }
}
