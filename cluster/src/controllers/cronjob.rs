//! CronJob controller, as Kubernetes' `pkg/controller/cronjob` (controller v2) runs a
//! CronJob. A pass finds the most recent time of the [`schedule`] missed since
//! `status.lastScheduleTime` or, before the first run, the CronJob's creation, and creates
//! a Job for it from `spec.jobTemplate`, named `<cronjob>-<scheduled time in minutes
//! since the epoch>`: the name is the lock that keeps one time from starting twice, so an
//! AlreadyExists on create means the time was handled. Earlier missed times are skipped,
//! as in Kubernetes; so is the time itself when it is more than `startingDeadlineSeconds`
//! old (the search starts that long before now), when the CronJob is suspended, or when
//! `concurrencyPolicy: Forbid` finds a Job still running; `Replace` deletes the running
//! ones first (background propagation). More than 100 missed times are reported with a
//! `TooManyMissedTimes` warning Event and the most recent one still starts (v2's
//! behaviour; the v1 controller gave up instead). Schedules run in `spec.timeZone`, and in
//! UTC when it is unset (Kubernetes uses the controller manager's local zone then).
//!
//! The status lists the running Jobs (`active`), `lastScheduleTime` and
//! `lastSuccessfulTime`; finished Jobs beyond `successfulJobsHistoryLimit` (Complete) and
//! `failedJobsHistoryLimit` (Failed) are deleted, those that started first first. Each
//! pass requeues the CronJob for the next time of its schedule (100 ms after it, as
//! Kubernetes does); nothing sweeps. Jobs are read from an [`OwnerIndex`] fed by one watch
//! of all Jobs, and Job creations and deletions the index has not shown yet are
//! [`Expectations`]; a Job the status lists but the index lacks is read once from the API
//! before it is dropped from `active` (a `MissingJob` Event), as Kubernetes reads it.
//! Events carry Kubernetes' reasons and messages.
//!
//! One departure: where Kubernetes' estimate of the most recent missed time finds none
//! though one was missed (irregular schedules, such as weekdays only, after a long
//! outage), this controller looks further back instead of skipping the run.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::{mpsc, watch};

use super::deployment::owner_ref;
use super::informer::Informer;
use super::job::get_condition;
use super::{Error, Expectations, OwnerIndex};
use crate::cron::{Schedule, ScheduleError};

/// Annotation on a CronJob's Jobs: the time they were scheduled for, RFC 3339 in the
/// CronJob's time zone.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// More missed times than this are reported (Kubernetes' "more than 80, less than lots").
pub const TOO_MANY_MISSED: i64 = 100;
/// How long after a scheduled time its pass runs, so that clock skew between the timer
/// and the wall clock does not wake it just before (Kubernetes' nextScheduleDelta).
const NEXT_SCHEDULE_DELTA: Duration = Duration::from_millis(100);
/// The component named on Events.
const COMPONENT: &str = "cronjob-controller";
/// Events waiting to be written at most; more are dropped.
const EVENT_QUEUE: usize = 256;
/// How long the same Event about the same CronJob is not written again (Kubernetes'
/// correlator aggregates repeats within ten minutes).
const REPEAT_AFTER: Duration = Duration::from_secs(600);
/// `Next` calls one search for the most recent missed time makes at most.
const SCAN_LIMIT: usize = 10_000;

/// What every reconcile shares: the client, the Job cache, and the controller's own
/// CronJob store (newer than the snapshot a pass started from).
struct Context {
    client: kube::Client,
    jobs: OwnerIndex<Job>,
    expectations: Expectations,
    cronjobs: Store<CronJob>,
    events: Recorder,
}

/// Runs the controller until shutdown.
pub async fn run(client: kube::Client, shutdown: watch::Receiver<bool>) {
    let cronjobs: Api<CronJob> = Api::all(client.clone());
    let controller = Controller::new(cronjobs, watcher::Config::default());
    let jobs = Informer::<Job>::new();
    let ctx = Arc::new(Context {
        client: client.clone(),
        jobs: jobs.index(),
        expectations: Expectations::default(),
        cronjobs: controller.store(),
        events: Recorder::new(client.clone()),
    });
    let observer = ctx.clone();
    let triggers = jobs.subscribe(move |e| observer.expectations.observe(e));
    let controller = controller
        .owns_stream(triggers)
        .graceful_shutdown_on(super::stopped(shutdown.clone()))
        .run(reconcile, super::retry_soon, ctx)
        .for_each(|r| async move { super::log_result("cronjob", r) });
    tokio::join!(controller, jobs.run(client, shutdown));
}

// ---------------------------------------------------------------------------------------
// Events

/// Something a pass reports as an Event (and a log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// A Warning rather than a Normal Event.
    pub warning: bool,
    /// Kubernetes' reason (`SuccessfulCreate`, `JobAlreadyActive`, ...).
    pub reason: &'static str,
    /// What happened.
    pub message: String,
}

impl Note {
    fn normal(reason: &'static str, message: String) -> Note {
        Note {
            warning: false,
            reason,
            message,
        }
    }

    fn warning(reason: &'static str, message: String) -> Note {
        Note {
            warning: true,
            reason,
            message,
        }
    }
}

/// Writes Events about CronJobs in the background, as Kubernetes' recorder does: a pass
/// never waits for them, and when too many are waiting the newest are dropped. The same
/// note about the same CronJob is written once per [`REPEAT_AFTER`] (where Kubernetes'
/// correlator would count it up), so a pass repeated by every Job update does not repeat
/// its Events.
struct Recorder {
    queue: mpsc::Sender<Event>,
    sent: Repeats,
}

/// When each (CronJob uid, reason, message) was last written.
#[derive(Default)]
struct Repeats(Mutex<HashMap<(String, &'static str, String), Instant>>);

impl Repeats {
    /// Whether `note` about the CronJob with uid `uid` was not written within
    /// [`REPEAT_AFTER`] before `now`; if so it counts as written now.
    fn fresh(&self, uid: &str, note: &Note, now: Instant) -> bool {
        // A panic while holding the lock leaves a usable map.
        let mut sent = self.0.lock().unwrap_or_else(|e| e.into_inner());
        sent.retain(|_, at| now.saturating_duration_since(*at) < REPEAT_AFTER);
        let key = (uid.to_string(), note.reason, note.message.clone());
        if sent.contains_key(&key) {
            return false;
        }
        sent.insert(key, now);
        true
    }
}

impl Recorder {
    fn new(client: kube::Client) -> Recorder {
        let (queue, mut pending) = mpsc::channel::<Event>(EVENT_QUEUE);
        tokio::spawn(async move {
            while let Some(event) = pending.recv().await {
                let ns = event.metadata.namespace.clone().unwrap_or_default();
                let api: Api<Event> = Api::namespaced(client.clone(), &ns);
                if let Err(e) = api.create(&PostParams::default(), &event).await {
                    tracing::debug!(error = %e, reason = ?event.reason, "could not write a cronjob event");
                }
            }
        });
        Recorder {
            queue,
            sent: Repeats::default(),
        }
    }

    fn record(&self, cj: &CronJob, note: &Note) {
        if !self.sent.fresh(&cj.uid().unwrap_or_default(), note, Instant::now()) {
            return;
        }
        let key = format!("{}/{}", cj.namespace().unwrap_or_default(), cj.name_any());
        if note.warning {
            tracing::warn!(object = %key, reason = note.reason, "{}", note.message);
        } else {
            tracing::info!(object = %key, reason = note.reason, "{}", note.message);
        }
        let now = Time(Timestamp::now());
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", cj.name_any())),
                namespace: cj.namespace(),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("batch/v1".into()),
                kind: Some("CronJob".into()),
                name: cj.metadata.name.clone(),
                namespace: cj.namespace(),
                uid: cj.uid(),
                resource_version: cj.resource_version(),
                ..Default::default()
            },
            type_: Some(if note.warning { "Warning" } else { "Normal" }.into()),
            reason: Some(note.reason.into()),
            message: Some(note.message.clone()),
            source: Some(EventSource {
                component: Some(COMPONENT.into()),
                host: None,
            }),
            reporting_component: Some(COMPONENT.into()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Default::default()
        };
        if self.queue.try_send(event).is_err() {
            tracing::debug!(object = %key, reason = note.reason, "event queue full; dropping the event");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Jobs and the status

/// The name of the Job for the time `at`: minutes since the epoch, so one per minute.
pub fn job_name(cronjob: &str, at: Timestamp) -> String {
    format!("{cronjob}-{}", at.as_second().div_euclid(60))
}

/// `at` as Go's RFC 3339 in `tz` (`Z` for a zero offset).
pub fn rfc3339_in(at: Timestamp, tz: &TimeZone) -> String {
    let zoned = at.to_zoned(tz.clone());
    if zoned.offset().seconds() == 0 {
        zoned.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        zoned.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }
}

/// The Job for the time `at`: `spec.jobTemplate`'s labels, annotations (with
/// [`SCHEDULED_TIMESTAMP`]) and spec, controlled by the CronJob (Kubernetes'
/// getJobFromTemplate2).
pub fn job_for(cj: &CronJob, at: Timestamp, tz: &TimeZone) -> Result<Job, Error> {
    let name = cj.name_any();
    let spec = cj
        .spec
        .as_ref()
        .ok_or_else(|| Error::Malformed(format!("cronjob {name} has no spec")))?;
    let meta = spec.job_template.metadata.clone().unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.into(), rfc3339_in(at, tz));
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(job_name(&name, at)),
            namespace: cj.namespace(),
            labels: meta.labels.filter(|l| !l.is_empty()),
            annotations: Some(annotations),
            owner_references: Some(vec![owner_ref(cj)?]),
            ..Default::default()
        },
        spec: spec.job_template.spec.clone(),
        status: None,
    })
}

/// A reference to a Job for `status.active` (Kubernetes' getRef).
fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.namespace(),
        uid: job.uid(),
        resource_version: job.resource_version(),
        ..Default::default()
    }
}

/// How the Job finished: `Complete` or `Failed` (the first of them that is True).
pub fn finished_as(job: &Job) -> Option<&'static str> {
    let status = job.status.as_ref()?;
    ["Complete", "Failed"]
        .into_iter()
        .find(|t| get_condition(status, t).is_some_and(|c| c.status == "True"))
}

fn active_mut(status: &mut CronJobStatus) -> &mut Vec<ObjectReference> {
    status.active.get_or_insert_with(Vec::new)
}

fn in_active(status: &CronJobStatus, uid: &str) -> bool {
    status.active.iter().flatten().any(|r| r.uid.as_deref() == Some(uid))
}

fn remove_active(status: &mut CronJobStatus, uid: &str) {
    active_mut(status).retain(|r| r.uid.as_deref() != Some(uid));
}

/// Kubernetes writes an empty `active` as absent; so does this controller, so that an
/// unchanged status compares equal.
fn tidy(status: &mut CronJobStatus) {
    if status.active.as_ref().is_some_and(Vec::is_empty) {
        status.active = None;
    }
}

/// What the cached Jobs tell about the status (the first loop of Kubernetes'
/// syncCronJob): finished Jobs leave `active` (a `SawCompletedJob` note each), and the
/// newest completion of a Complete Job becomes `lastSuccessfulTime`. Returns the active
/// references no cached Job matches and the unfinished Jobs `active` does not list.
pub fn sync_active<'a>(
    status: &mut CronJobStatus,
    jobs: &[&'a Job],
    notes: &mut Vec<Note>,
) -> (Vec<ObjectReference>, Vec<&'a Job>) {
    let mut unlisted = Vec::new();
    for job in jobs {
        let uid = job.uid().unwrap_or_default();
        let listed = in_active(status, &uid);
        let finished = finished_as(job);
        match finished {
            None if !listed && job.metadata.deletion_timestamp.is_none() => unlisted.push(*job),
            Some(how) if listed => {
                remove_active(status, &uid);
                notes.push(Note::normal(
                    "SawCompletedJob",
                    format!("Saw completed job: {}, condition: {how}", job.name_any()),
                ));
            }
            _ => {}
        }
        if finished == Some("Complete") {
            let completed = job.status.as_ref().and_then(|s| s.completion_time.clone());
            let last = status.last_successful_time.as_ref().map(|t| t.0);
            if let Some(done) = completed.filter(|c| last.is_none_or(|l| c.0 > l)) {
                status.last_successful_time = Some(done);
            }
        }
    }
    let cached: HashSet<String> = jobs.iter().filter_map(|j| j.uid()).collect();
    let missing = status
        .active
        .iter()
        .flatten()
        .filter(|r| !r.uid.as_ref().is_some_and(|u| cached.contains(u)))
        .cloned()
        .collect();
    (missing, unlisted)
}

/// Kubernetes' order of Jobs by start: the earliest `status.startTime` first, Jobs not
/// started last, names breaking ties.
fn by_start(a: &&Job, b: &&Job) -> Ordering {
    let start = |j: &Job| j.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|t| t.0);
    match (start(a), start(b)) {
        (Some(x), Some(y)) if x != y => x.cmp(&y),
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        _ => a.name_any().cmp(&b.name_any()),
    }
}

/// The finished Jobs to delete so that at most `successful` Complete and `failed` Failed
/// ones are left, those that started first first; a limit that is unset keeps all
/// (Kubernetes' cleanupFinishedJobs).
pub fn to_prune<'a>(jobs: &[&'a Job], successful: Option<i32>, failed: Option<i32>) -> Vec<&'a Job> {
    let mut out = Vec::new();
    for (how, limit) in [("Complete", successful), ("Failed", failed)] {
        let Some(limit) = limit else { continue };
        let mut finished: Vec<&Job> = jobs.iter().copied().filter(|j| finished_as(j) == Some(how)).collect();
        let excess = finished.len().saturating_sub(limit.max(0) as usize);
        finished.sort_by(by_start);
        out.extend(finished.into_iter().take(excess));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Schedule times

/// How many scheduled times passed unstarted (Kubernetes' estimate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// At most the one that is due now.
    None,
    /// Some, at most [`TOO_MANY_MISSED`].
    Few,
    /// More than [`TOO_MANY_MISSED`].
    Many,
}

/// A schedule with no time within five years of the last one (the 30th of February).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the schedule has no time within five years")]
pub struct Unsatisfiable;

/// The most recent time of `sched` in `(earliest, now]`, with an estimate of how many
/// were missed (Kubernetes' mostRecentScheduleTime).
pub fn most_recent_time(
    sched: &Schedule,
    earliest: Timestamp,
    now: Timestamp,
) -> Result<(Option<Timestamp>, Missed), Unsatisfiable> {
    let t1 = sched.next(earliest).ok_or(Unsatisfiable)?;
    if now < t1 {
        return Ok((None, Missed::None));
    }
    let t2 = sched.next(t1).ok_or(Unsatisfiable)?;
    if now < t2 {
        return Ok((Some(t1), Missed::None));
    }
    let gap = t2.duration_since(t1);
    let between = gap.as_secs() + i64::from(gap.subsec_nanos() >= 500_000_000);
    if between < 1 {
        return Err(Unsatisfiable);
    }
    // Kubernetes' estimate: as many times as intervals of the first two fit in the time
    // since the first; scanning starts two intervals before the last of them, which finds
    // the most recent time exactly when the schedule is regular.
    let missed = now.duration_since(t1).as_secs() / between + 1;
    let kind = if missed > TOO_MANY_MISSED {
        Missed::Many
    } else {
        Missed::Few
    };
    let mut back = 2;
    loop {
        let start = match missed.checked_sub(back) {
            Some(n) if n >= 0 => t1
                .checked_add(SignedDuration::from_secs(n.saturating_mul(between)))
                .unwrap_or(earliest),
            _ => earliest,
        };
        if let Some(found) = last_until(sched, start, now) {
            return Ok((Some(found), kind));
        }
        // An irregular schedule (weekdays only, one month of the year) can put the estimate
        // past the most recent time; Kubernetes then starts nothing, this looks further back
        // (t1 <= now, so from `earliest` something is found).
        if start <= earliest || kind == Missed::Many {
            return Ok((None, kind));
        }
        back = back.saturating_mul(2);
    }
}

/// The last time of `sched` after `start` and at most `now`; `None` also when there are
/// more than [`SCAN_LIMIT`] to go through (a burst of catch-up Jobs, one pass after the
/// other, would be worse than skipping).
fn last_until(sched: &Schedule, start: Timestamp, now: Timestamp) -> Option<Timestamp> {
    let mut found = None;
    let mut t = start;
    for _ in 0..SCAN_LIMIT {
        match sched.next(t) {
            Some(next) if next <= now => {
                found = Some(next);
                t = next;
            }
            _ => return found,
        }
    }
    None
}

fn creation(cj: &CronJob) -> Option<Timestamp> {
    cj.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// Where the search for missed times starts: the last scheduled time, else the
/// creation; with `startingDeadlineSeconds` (when `deadline`), no earlier than that long
/// before `now`.
fn earliest(cj: &CronJob, now: Timestamp, deadline: bool) -> Timestamp {
    let status = cj.status.as_ref();
    let mut earliest = status
        .and_then(|s| s.last_schedule_time.as_ref())
        .map(|t| t.0)
        .or_else(|| creation(cj))
        .unwrap_or(now);
    let seconds = cj.spec.as_ref().and_then(|s| s.starting_deadline_seconds);
    if let (true, Some(seconds)) = (deadline, seconds) {
        let cut = now
            .checked_sub(SignedDuration::from_secs(seconds))
            .unwrap_or(Timestamp::MIN);
        earliest = earliest.max(cut);
    }
    earliest
}

/// How long until the pass after this one: just after the schedule's next time
/// (Kubernetes' nextScheduleTimeDuration); `None` when the schedule has no next time.
pub fn requeue_after(cj: &CronJob, sched: &Schedule, now: Timestamp) -> Option<Duration> {
    let earliest = earliest(cj, now, false);
    let from = match most_recent_time(sched, earliest, now) {
        Ok((Some(t), _)) => t,
        Ok((None, Missed::None)) => earliest,
        Ok((None, _)) | Err(_) => now,
    };
    let next = sched.next(from)?;
    let wait = Duration::try_from(next.duration_since(now)).unwrap_or(Duration::ZERO);
    Some(wait + NEXT_SCHEDULE_DELTA)
}

/// What `concurrencyPolicy` makes of a due time while `active` Jobs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// Start the Job.
    Start,
    /// Skip the time (Forbid).
    Skip,
    /// Delete the running Jobs, then start (Replace).
    Replace,
}

/// The concurrency decision: with nothing running every policy starts.
pub fn concurrency(policy: Option<&str>, active: usize) -> Concurrency {
    match (policy, active) {
        (_, 0) => Concurrency::Start,
        (Some("Forbid"), _) => Concurrency::Skip,
        (Some("Replace"), _) => Concurrency::Replace,
        _ => Concurrency::Start,
    }
}

/// What a pass does about the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No time is due (none since the last, or none within `startingDeadlineSeconds`).
    Wait,
    /// The due time already has its Job.
    Handled(Timestamp),
    /// A Job still runs and the policy is Forbid.
    Forbidden(Timestamp),
    /// Start the Job for the time; with `replace`, delete the running ones first.
    Start {
        /// The scheduled time.
        at: Timestamp,
        /// Whether the running Jobs go first.
        replace: bool,
    },
}

/// The decision about the schedule at `now` for a CronJob that is not suspended (the
/// middle of Kubernetes' syncCronJob), with the estimate of missed times.
pub fn decide(cj: &CronJob, sched: &Schedule, now: Timestamp) -> Result<(Decision, Missed), Unsatisfiable> {
    let (most_recent, missed) = most_recent_time(sched, earliest(cj, now, true), now)?;
    let Some(at) = most_recent else {
        return Ok((Decision::Wait, missed));
    };
    // Kubernetes then checks `at` against `startingDeadlineSeconds` again (the
    // `MissSchedule` Event), but the search above started that long before now, so the
    // check never fires there and is left out here.
    let spec = cj.spec.as_ref();
    let status = cj.status.clone().unwrap_or_default();
    let name = job_name(&cj.name_any(), at);
    let active = status.active.as_deref().unwrap_or_default();
    let listed = active
        .iter()
        .any(|r| r.name.as_deref() == Some(name.as_str()) && r.namespace == cj.namespace());
    if listed || status.last_schedule_time.as_ref().map(|t| t.0) == Some(at) {
        return Ok((Decision::Handled(at), missed));
    }
    let policy = spec.and_then(|s| s.concurrency_policy.as_deref());
    let decision = match concurrency(policy, active.len()) {
        Concurrency::Skip => Decision::Forbidden(at),
        Concurrency::Start => Decision::Start { at, replace: false },
        Concurrency::Replace => Decision::Start { at, replace: true },
    };
    Ok((decision, missed))
}

// ---------------------------------------------------------------------------------------
// Reconcile

/// Whether a Job may still be created for the CronJob with uid `uid`, given what the
/// controller's store holds under its name now.
fn still_wanted(current: Option<&CronJob>, uid: &str) -> bool {
    current.is_some_and(|c| {
        c.metadata.uid.as_deref() == Some(uid)
            && c.metadata.deletion_timestamp.is_none()
            && c.spec.as_ref().and_then(|s| s.suspend) != Some(true)
    })
}

/// Deletes one Job of the CronJob (that very Job, by uid) with its pods in the
/// background; a Job already gone is no error.
async fn delete_job(ctx: &Context, owner: &str, ns: &str, name: &str, uid: Option<String>) -> Result<(), Error> {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    super::delete_child(
        &ctx.expectations,
        &api,
        owner,
        name,
        uid,
        Some(PropagationPolicy::Background),
    )
    .await
}

/// One pass's working state: the status being built and the notes to report.
struct Pass<'a> {
    ctx: &'a Context,
    cj: &'a CronJob,
    ns: String,
    name: String,
    uid: String,
    status: CronJobStatus,
    notes: Vec<Note>,
}

impl Pass<'_> {
    fn key(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }

    /// Reports the notes and writes the status if it changed; the cached
    /// resourceVersion makes a stale pass a conflict rather than a lost update.
    async fn finish(mut self, action: Action) -> Result<Action, Error> {
        for note in &self.notes {
            self.ctx.events.record(self.cj, note);
        }
        tidy(&mut self.status);
        if self.cj.status.clone().unwrap_or_default() != self.status {
            let api: Api<CronJob> = Api::namespaced(self.ctx.client.clone(), &self.ns);
            let status = self.status;
            super::write_status(&api, self.cj, |c| c.status = Some(status)).await?;
        }
        Ok(action)
    }

    /// Drops the active references whose Job is gone: those the cache lacks and that were
    /// not just created are read from the API first, in case the cache lags.
    async fn drop_missing(&mut self, missing: Vec<ObjectReference>, expected: &HashSet<String>) -> Result<(), Error> {
        for r in missing {
            let uid = r.uid.clone().unwrap_or_default();
            if expected.contains(&uid) {
                continue;
            }
            let name = r.name.clone().unwrap_or_default();
            let ns = r.namespace.clone().unwrap_or_else(|| self.ns.clone());
            let api: Api<Job> = Api::namespaced(self.ctx.client.clone(), &ns);
            let live = api.get_opt(&name).await?;
            if live.as_ref().and_then(|j| j.uid()) != Some(uid.clone()) {
                remove_active(&mut self.status, &uid);
                self.notes
                    .push(Note::normal("MissingJob", format!("Active job went missing: {name}")));
            }
        }
        Ok(())
    }

    /// Deletes the finished Jobs beyond the history limits; a failed deletion is
    /// reported and left for a later pass.
    async fn prune(&mut self, jobs: &[&Job]) {
        let spec = self.cj.spec.as_ref();
        let doomed = to_prune(
            jobs,
            spec.and_then(|s| s.successful_jobs_history_limit),
            spec.and_then(|s| s.failed_jobs_history_limit),
        );
        for job in doomed {
            let name = job.name_any();
            match delete_job(self.ctx, &self.uid, &self.ns, &name, job.uid()).await {
                Ok(()) => {
                    remove_active(&mut self.status, &job.uid().unwrap_or_default());
                    self.notes
                        .push(Note::normal("SuccessfulDelete", format!("Deleted job {name}")));
                }
                Err(e) => self
                    .notes
                    .push(Note::warning("FailedDelete", format!("Deleted job: {e}"))),
            }
        }
    }

    /// Deletes the Jobs `active` lists, for `concurrencyPolicy: Replace`.
    async fn replace_active(&mut self) -> Result<(), Error> {
        for r in self.status.active.clone().unwrap_or_default() {
            let name = r.name.clone().unwrap_or_default();
            let ns = r.namespace.clone().unwrap_or_else(|| self.ns.clone());
            tracing::info!(object = %self.key(), job = %name, "deleting job that was still running at next scheduled start time");
            if let Err(e) = delete_job(self.ctx, &self.uid, &ns, &name, r.uid.clone()).await {
                self.notes
                    .push(Note::warning("FailedDelete", format!("Deleted job: {e}")));
                return Err(e);
            }
            remove_active(&mut self.status, &r.uid.clone().unwrap_or_default());
            self.notes
                .push(Note::normal("SuccessfulDelete", format!("Deleted job {name}")));
        }
        Ok(())
    }

    /// Creates the Job for `at`; an existing one of that name that the CronJob controls
    /// means the time was handled (listed in `active` if it is not yet).
    async fn start(&mut self, at: Timestamp, tz: &TimeZone) -> Result<(), Error> {
        let job = job_for(self.cj, at, tz)?;
        let job_name = job.name_any();
        let api: Api<Job> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let job = match api.create(&PostParams::default(), &job).await {
            Ok(created) => {
                if let Some(uid) = created.uid() {
                    self.ctx.expectations.created(&self.uid, uid);
                }
                self.notes
                    .push(Note::normal("SuccessfulCreate", format!("Created job {job_name}")));
                created
            }
            Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => {
                let existing = api.get(&job_name).await?;
                let ours = super::controller_uid(&existing.metadata) == Some(self.uid.as_str());
                if !ours || in_active(&self.status, &existing.uid().unwrap_or_default()) {
                    tracing::info!(object = %self.key(), job = %job_name, ours, "job already exists");
                    return Ok(());
                }
                existing
            }
            Err(e) => {
                self.notes
                    .push(Note::warning("FailedCreate", format!("Error creating job: {e}")));
                return Err(e.into());
            }
        };
        active_mut(&mut self.status).push(job_ref(&job));
        self.status.last_schedule_time = Some(Time(at));
        Ok(())
    }
}

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.jobs.ready().await;
    let ns = cj
        .namespace()
        .ok_or_else(|| Error::Malformed("cronjob without namespace".into()))?;
    let uid = cj.uid().ok_or_else(|| Error::Malformed("cronjob without uid".into()))?;
    let now = Timestamp::now();

    // The Jobs the cache holds, without those whose deletion it has not shown yet.
    let owned = ctx.jobs.owned_by(&uid);
    let cached = super::cache_state(&owned);
    let (adds, deletes) = ctx.expectations.outstanding(&uid, &cached);
    let jobs: Vec<&Job> = owned
        .iter()
        .map(|j| j.as_ref())
        .filter(|j| !j.uid().is_some_and(|u| deletes.contains(&u)))
        .collect();

    let mut pass = Pass {
        ctx: &ctx,
        cj: &cj,
        ns,
        name: cj.name_any(),
        uid: uid.clone(),
        status: cj.status.clone().unwrap_or_default(),
        notes: Vec::new(),
    };
    let (missing, unlisted) = sync_active(&mut pass.status, &jobs, &mut pass.notes);
    // A Job the newest CronJob lists was recorded by a status write this snapshot
    // predates; only the others are unexpected.
    let latest = ctx.cronjobs.get(&ObjectRef::from_obj(cj.as_ref()));
    for job in unlisted {
        let uid = job.uid().unwrap_or_default();
        if !latest
            .as_ref()
            .and_then(|c| c.status.as_ref())
            .is_some_and(|s| in_active(s, &uid))
        {
            pass.notes.push(Note::warning(
                "UnexpectedJob",
                format!(
                    "Saw a job that the controller did not create or forgot: {}",
                    job.name_any()
                ),
            ));
        }
    }
    pass.drop_missing(missing, &adds).await?;
    let settled: Vec<&Job> = jobs
        .iter()
        .copied()
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .collect();
    pass.prune(&settled).await;

    if cj.metadata.deletion_timestamp.is_some() {
        return pass.finish(Action::await_change()).await;
    }
    let spec = cj
        .spec
        .as_ref()
        .ok_or_else(|| Error::Malformed(format!("cronjob {} has no spec", pass.key())))?;
    // Kubernetes' order: an unknown time zone is reported even while suspended.
    let sched = match Schedule::for_cronjob(&spec.schedule, spec.time_zone.as_deref()) {
        Ok(sched) => sched,
        Err(e) => {
            let note = match &e {
                ScheduleError::EmptyTimeZone | ScheduleError::LocalTimeZone | ScheduleError::UnknownTimeZone(_) => {
                    let zone = spec.time_zone.clone().unwrap_or_default();
                    Note::warning("UnknownTimeZone", format!("invalid timeZone: {zone:?}: {e}"))
                }
                _ if spec.suspend == Some(true) => return pass.finish(Action::await_change()).await,
                _ => Note::warning(
                    "UnparseableSchedule",
                    format!("unparseable schedule: {:?} : {e}", spec.schedule),
                ),
            };
            pass.notes.push(note);
            // Nothing to wait for but a change of the spec.
            return pass.finish(Action::await_change()).await;
        }
    };
    if spec.suspend == Some(true) {
        return pass.finish(Action::await_change()).await;
    }

    let (decision, missed) = match decide(&cj, &sched, now) {
        Ok(d) => d,
        Err(e) => {
            pass.notes.push(Note::warning(
                "InvalidSchedule",
                format!("invalid schedule: {} : {e}", spec.schedule),
            ));
            return pass.finish(Action::await_change()).await;
        }
    };
    if missed == Missed::Many && decision != Decision::Wait {
        pass.notes.push(Note::warning(
            "TooManyMissedTimes",
            "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
        ));
    }
    match decision {
        Decision::Wait | Decision::Handled(_) => {}
        Decision::Forbidden(_) => pass.notes.push(Note::normal(
            "JobAlreadyActive",
            "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
        )),
        Decision::Start { at, replace } => {
            // The store moves on while a pass runs; the snapshot `cj` does not.
            if !still_wanted(latest.as_deref(), &uid) {
                tracing::info!(object = %pass.key(), "cronjob gone, deleting or suspended; not starting a job");
                return pass.finish(Action::await_change()).await;
            }
            if replace {
                pass.replace_active().await?;
            }
            pass.start(at, sched.time_zone()).await?;
        }
    }

    // The next time counts from the status as this pass leaves it.
    let mut after = (*cj).clone();
    after.status = Some(pass.status.clone());
    let action = match requeue_after(&after, &sched, Timestamp::now()) {
        Some(wait) => Action::requeue(wait),
        None => {
            tracing::warn!(object = %pass.key(), schedule = %spec.schedule, "schedule has no next time");
            Action::await_change()
        }
    };
    pass.finish(action).await
}

#[cfg(test)]
mod tests;
