use super::*;
use serde_json::json;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// A CronJob created at `created` with `spec` (schedule, policy...) and `status`.
fn cronjob(created: &str, spec: serde_json::Value, status: serde_json::Value) -> CronJob {
    let mut spec = spec;
    spec["jobTemplate"] = json!({
        "metadata": {"labels": {"app": "report"}, "annotations": {"team": "ops"}},
        "spec": {"template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox"}],
        }}},
    });
    serde_json::from_value(json!({
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {
            "name": "report", "namespace": "default", "uid": "cj-uid",
            "creationTimestamp": created,
        },
        "spec": spec,
        "status": status,
    }))
    .unwrap()
}

/// A Job of the CronJob: `state` R running, C complete, F failed; started at `start`.
fn job(name: &str, state: char, start: Option<&str>, completed: Option<&str>) -> Job {
    let conditions = match state {
        'C' => json!([{"type": "Complete", "status": "True"}]),
        'F' => json!([{"type": "Failed", "status": "True"}]),
        _ => json!([]),
    };
    serde_json::from_value(json!({
        "metadata": {
            "name": name, "namespace": "default", "uid": format!("{name}-uid"),
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "report",
                "uid": "cj-uid", "controller": true}],
        },
        "status": {"conditions": conditions, "startTime": start, "completionTime": completed},
    }))
    .unwrap()
}

fn reference(name: &str) -> serde_json::Value {
    json!({"apiVersion": "batch/v1", "kind": "Job", "name": name, "namespace": "default",
        "uid": format!("{name}-uid")})
}

#[test]
fn most_recent_missed_time_and_its_estimate() {
    // (schedule, earliest, now) -> (most recent time, missed)
    type Case = (&'static str, &'static str, &'static str, Option<&'static str>, Missed);
    let cases: Vec<Case> = vec![
        // Before the first time.
        (
            "0 * * * *",
            "2024-01-01T10:00:00Z",
            "2024-01-01T10:30:00Z",
            None,
            Missed::None,
        ),
        // Exactly at it, and just after.
        (
            "0 * * * *",
            "2024-01-01T10:00:00Z",
            "2024-01-01T11:00:00Z",
            Some("2024-01-01T11:00:00Z"),
            Missed::None,
        ),
        (
            "0 * * * *",
            "2024-01-01T10:00:00Z",
            "2024-01-01T11:00:00.1Z",
            Some("2024-01-01T11:00:00Z"),
            Missed::None,
        ),
        // Five missed: the last of them.
        (
            "0 * * * *",
            "2024-01-01T10:00:00Z",
            "2024-01-01T15:30:00Z",
            Some("2024-01-01T15:00:00Z"),
            Missed::Few,
        ),
        // The earliest time itself does not count (it was the last run).
        (
            "*/5 * * * *",
            "2024-01-01T10:05:00Z",
            "2024-01-01T10:09:59Z",
            None,
            Missed::None,
        ),
        // 100 missed are few, 101 many.
        (
            "* * * * *",
            "2024-01-01T10:00:00Z",
            "2024-01-01T11:40:30Z",
            Some("2024-01-01T11:40:00Z"),
            Missed::Few,
        ),
        (
            "* * * * *",
            "2024-01-01T10:00:00Z",
            "2024-01-01T11:41:30Z",
            Some("2024-01-01T11:41:00Z"),
            Missed::Many,
        ),
        // Irregular: 06:30, 10:30, 14:30 on weekdays (2024-01-01 is a Monday).
        (
            "30 6-16/4 * * 1-5",
            "2024-01-01T07:00:00Z",
            "2024-01-03T12:00:00Z",
            Some("2024-01-03T10:30:00Z"),
            Missed::Few,
        ),
        // Over the weekend Kubernetes' estimate lands past Friday's last time; it is found.
        (
            "30 6-16/4 * * 1-5",
            "2024-01-01T07:00:00Z",
            "2024-01-06T12:00:00Z",
            Some("2024-01-05T14:30:00Z"),
            Missed::Few,
        ),
        // Month ends: the 31st of months that have one.
        (
            "0 0 31 * *",
            "2024-01-31T00:00:00Z",
            "2024-07-15T00:00:00Z",
            Some("2024-05-31T00:00:00Z"),
            Missed::Few,
        ),
        // @every counts from the earliest time.
        (
            "@every 90s",
            "2024-01-01T10:00:00Z",
            "2024-01-01T10:05:00Z",
            Some("2024-01-01T10:04:30Z"),
            Missed::Few,
        ),
    ];
    for (spec, earliest, now, want, missed) in cases {
        let s = Schedule::parse(spec).unwrap();
        let got = most_recent_time(&s, ts(earliest), ts(now)).unwrap();
        assert_eq!(got, (want.map(ts), missed), "{spec} from {earliest} at {now}");
    }
    let never = Schedule::parse("0 0 30 2 *").unwrap();
    assert_eq!(
        most_recent_time(&never, ts("2024-01-01T00:00:00Z"), ts("2024-06-01T00:00:00Z")),
        Err(Unsatisfiable)
    );
}

#[test]
fn most_recent_time_respects_the_time_zone_and_daylight_saving() {
    // 01:30 New York happens twice on 2024-11-03; the second (06:30 UTC) is the most recent.
    let s = Schedule::for_cronjob("30 1 * * *", Some("America/New_York")).unwrap();
    let got = most_recent_time(&s, ts("2024-11-02T12:00:00Z"), ts("2024-11-03T07:00:00Z")).unwrap();
    assert_eq!(got, (Some(ts("2024-11-03T06:30:00Z")), Missed::Few));
    // 02:30 does not happen on 2024-03-10: nothing missed that night.
    let s = Schedule::for_cronjob("30 2 * * *", Some("America/New_York")).unwrap();
    let got = most_recent_time(&s, ts("2024-03-09T12:00:00Z"), ts("2024-03-10T12:00:00Z")).unwrap();
    assert_eq!(got, (None, Missed::None));
}

#[test]
fn requeue_is_just_after_the_next_time() {
    // (schedule, created, last scheduled, now) -> seconds to wait (before the 100 ms)
    type Case = (&'static str, &'static str, Option<&'static str>, &'static str, f64);
    let cases: Vec<Case> = vec![
        // Created mid-minute: the next minute boundary.
        (
            "* * * * *",
            "2024-01-01T10:00:25Z",
            None,
            "2024-01-01T10:00:25.5Z",
            34.5,
        ),
        // Just ran: the following time.
        (
            "*/5 * * * *",
            "2024-01-01T09:00:00Z",
            Some("2024-01-01T10:05:00Z"),
            "2024-01-01T10:05:01Z",
            299.0,
        ),
        // Behind (a missed time not started): the next time after now, not after it.
        (
            "0 * * * *",
            "2024-01-01T09:00:00Z",
            Some("2024-01-01T10:00:00Z"),
            "2024-01-01T12:30:00Z",
            1800.0,
        ),
        ("@daily", "2024-01-01T09:00:00Z", None, "2024-01-01T09:00:00Z", 54000.0),
    ];
    for (spec, created, last, now, want) in cases {
        let status = match last {
            Some(l) => json!({"lastScheduleTime": l}),
            None => json!({}),
        };
        let cj = cronjob(created, json!({"schedule": spec}), status);
        let s = Schedule::parse(spec).unwrap();
        let got = requeue_after(&cj, &s, ts(now)).unwrap();
        assert_eq!(
            got,
            Duration::from_secs_f64(want) + NEXT_SCHEDULE_DELTA,
            "{spec} at {now}"
        );
    }
    let cj = cronjob("2024-01-01T00:00:00Z", json!({"schedule": "0 0 30 2 *"}), json!({}));
    let never = Schedule::parse("0 0 30 2 *").unwrap();
    assert_eq!(requeue_after(&cj, &never, ts("2024-01-02T00:00:00Z")), None);
}

#[test]
fn the_decision_follows_deadline_history_and_concurrency_policy() {
    let created = "2024-01-01T09:59:30Z";
    let now = ts("2024-01-01T10:00:05Z");
    let due = ts("2024-01-01T10:00:00Z");
    let name = job_name("report", due);
    // (spec, status) -> decision
    let cases: Vec<(serde_json::Value, serde_json::Value, Decision)> = vec![
        (
            json!({"schedule": "* * * * *"}),
            json!({}),
            Decision::Start {
                at: due,
                replace: false,
            },
        ),
        // Not yet due.
        (json!({"schedule": "0 11 * * *"}), json!({}), Decision::Wait),
        // Within the deadline, and past it.
        (
            json!({"schedule": "* * * * *", "startingDeadlineSeconds": 10}),
            json!({}),
            Decision::Start {
                at: due,
                replace: false,
            },
        ),
        (
            json!({"schedule": "* * * * *", "startingDeadlineSeconds": 3}),
            json!({"lastScheduleTime": "2024-01-01T09:00:00Z"}),
            Decision::Wait,
        ),
        (
            json!({"schedule": "* * * * *", "startingDeadlineSeconds": 3}),
            json!({}),
            Decision::Wait,
        ),
        // Already handled: the status says so, or its Job is listed as active.
        (
            json!({"schedule": "* * * * *"}),
            json!({"lastScheduleTime": "2024-01-01T10:00:00Z"}),
            Decision::Wait,
        ),
        (
            json!({"schedule": "* * * * *"}),
            json!({"active": [reference(&name)]}),
            Decision::Handled(due),
        ),
        // A Job of an earlier time still runs.
        (
            json!({"schedule": "* * * * *", "concurrencyPolicy": "Allow"}),
            json!({"active": [reference("report-1")]}),
            Decision::Start {
                at: due,
                replace: false,
            },
        ),
        (
            json!({"schedule": "* * * * *", "concurrencyPolicy": "Forbid"}),
            json!({"active": [reference("report-1")]}),
            Decision::Forbidden(due),
        ),
        (
            json!({"schedule": "* * * * *", "concurrencyPolicy": "Replace"}),
            json!({"active": [reference("report-1")]}),
            Decision::Start { at: due, replace: true },
        ),
        (
            json!({"schedule": "* * * * *", "concurrencyPolicy": "Replace"}),
            json!({}),
            Decision::Start {
                at: due,
                replace: false,
            },
        ),
    ];
    for (spec, status, want) in cases {
        let cj = cronjob(created, spec.clone(), status.clone());
        let s = Schedule::parse(cj.spec.as_ref().unwrap().schedule.as_str()).unwrap();
        let (got, _) = decide(&cj, &s, now).unwrap();
        assert_eq!(got, want, "{spec} {status}");
    }
    // The last run long ago: the search starts `startingDeadlineSeconds` before now, and
    // the time 20 s late is within its 30.
    let cj = cronjob(
        "2024-01-01T00:00:00Z",
        json!({"schedule": "0 * * * *", "startingDeadlineSeconds": 30}),
        json!({"lastScheduleTime": "2024-01-01T08:00:00Z"}),
    );
    let s = Schedule::parse("0 * * * *").unwrap();
    assert_eq!(
        decide(&cj, &s, ts("2024-01-01T10:00:20Z")).unwrap(),
        (
            Decision::Start {
                at: due,
                replace: false
            },
            Missed::None
        )
    );
    // A time more than `startingDeadlineSeconds` old is not considered at all: 10:00 is
    // 2 minutes late with a deadline of 60 s.
    let cj = cronjob(
        "2024-01-01T00:00:00Z",
        json!({"schedule": "0 * * * *", "startingDeadlineSeconds": 60}),
        json!({}),
    );
    assert_eq!(decide(&cj, &s, ts("2024-01-01T10:02:00Z")).unwrap().0, Decision::Wait);
    // Many missed (an old creation, no deadline): still the most recent time.
    let cj = cronjob("2023-12-01T00:00:00Z", json!({"schedule": "* * * * *"}), json!({}));
    let s = Schedule::parse("* * * * *").unwrap();
    assert_eq!(
        decide(&cj, &s, now).unwrap(),
        (
            Decision::Start {
                at: due,
                replace: false
            },
            Missed::Many
        )
    );
}

#[test]
fn concurrency_policies_decide_about_running_jobs() {
    let cases = [
        (None, 0, Concurrency::Start),
        (None, 2, Concurrency::Start),
        (Some("Allow"), 1, Concurrency::Start),
        (Some("Forbid"), 0, Concurrency::Start),
        (Some("Forbid"), 1, Concurrency::Skip),
        (Some("Replace"), 0, Concurrency::Start),
        (Some("Replace"), 3, Concurrency::Replace),
    ];
    for (policy, active, want) in cases {
        assert_eq!(concurrency(policy, active), want, "{policy:?} with {active}");
    }
}

#[test]
fn history_keeps_the_newest_finished_jobs_of_each_kind() {
    let jobs = [
        job("c1", 'C', Some("2024-01-01T01:00:00Z"), None),
        job("c2", 'C', Some("2024-01-01T02:00:00Z"), None),
        job("c3", 'C', Some("2024-01-01T03:00:00Z"), None),
        job("c4", 'C', Some("2024-01-01T04:00:00Z"), None),
        // Never started: counted newest.
        job("c0", 'C', None, None),
        // Same start: by name.
        job("cb", 'C', Some("2024-01-01T00:00:00Z"), None),
        job("ca", 'C', Some("2024-01-01T00:00:00Z"), None),
        job("f1", 'F', Some("2024-01-01T01:00:00Z"), None),
        job("f2", 'F', Some("2024-01-01T02:00:00Z"), None),
        job("r1", 'R', Some("2023-01-01T00:00:00Z"), None),
    ];
    let refs: Vec<&Job> = jobs.iter().collect();
    let names = |v: Vec<&Job>| v.iter().map(|j| j.name_any()).collect::<Vec<_>>();
    // (successful limit, failed limit) -> deleted, in order
    let cases: Vec<(Option<i32>, Option<i32>, Vec<&str>)> = vec![
        (Some(3), Some(1), vec!["ca", "cb", "c1", "c2", "f1"]),
        (Some(10), Some(10), vec![]),
        (None, None, vec![]),
        (None, Some(0), vec!["f1", "f2"]),
        (Some(0), None, vec!["ca", "cb", "c1", "c2", "c3", "c4", "c0"]),
        (Some(1), Some(2), vec!["ca", "cb", "c1", "c2", "c3", "c4"]),
    ];
    for (successful, failed, want) in cases {
        assert_eq!(
            names(to_prune(&refs, successful, failed)),
            want,
            "limits {successful:?}/{failed:?}"
        );
    }
}

#[test]
fn the_status_follows_the_jobs() {
    let jobs = [
        job("a", 'C', None, Some("2024-01-01T10:00:30Z")),
        job("b", 'C', None, Some("2024-01-01T10:01:30Z")),
        job("c", 'F', None, None),
        job("d", 'R', None, None),
        job("e", 'R', None, None),
    ];
    let refs: Vec<&Job> = jobs.iter().collect();
    let mut status: CronJobStatus = serde_json::from_value(json!({
        "active": [reference("a"), reference("c"), reference("d"), reference("gone")],
        "lastSuccessfulTime": "2024-01-01T09:00:00Z",
    }))
    .unwrap();
    let mut notes = Vec::new();
    let (missing, unlisted) = sync_active(&mut status, &refs, &mut notes);
    // Finished Jobs leave `active`, the running one stays, the unknown one is missing.
    let active: Vec<_> = status
        .active
        .iter()
        .flatten()
        .map(|r| r.name.clone().unwrap())
        .collect();
    assert_eq!(active, ["d", "gone"]);
    assert_eq!(missing.len(), 1);
    assert_eq!(missing[0].name.as_deref(), Some("gone"));
    assert_eq!(unlisted.iter().map(|j| j.name_any()).collect::<Vec<_>>(), ["e"]);
    assert_eq!(
        notes.iter().map(|n| n.reason).collect::<Vec<_>>(),
        ["SawCompletedJob", "SawCompletedJob"]
    );
    // The newest completion of a Complete Job (listed or not).
    assert_eq!(
        status.last_successful_time.map(|t| t.0),
        Some(ts("2024-01-01T10:01:30Z"))
    );
    // An older completion does not move it back.
    let mut status = CronJobStatus {
        last_successful_time: Some(Time(ts("2024-02-01T00:00:00Z"))),
        ..Default::default()
    };
    sync_active(&mut status, &refs, &mut Vec::new());
    assert_eq!(
        status.last_successful_time.map(|t| t.0),
        Some(ts("2024-02-01T00:00:00Z"))
    );
}

#[test]
fn jobs_are_named_by_minute_and_carry_the_template_and_the_scheduled_time() {
    let cj = cronjob("2024-01-01T00:00:00Z", json!({"schedule": "0 9 * * *"}), json!({}));
    let at = ts("2024-03-11T13:00:00Z");
    let job = job_for(&cj, at, &TimeZone::UTC).unwrap();
    assert_eq!(job.name_any(), format!("report-{}", at.as_second() / 60));
    assert_eq!(job.name_any(), "report-28502700");
    assert_eq!(job.namespace().as_deref(), Some("default"));
    assert_eq!(job.labels().get("app").map(String::as_str), Some("report"));
    let annotations = job.annotations();
    assert_eq!(annotations.get("team").map(String::as_str), Some("ops"));
    assert_eq!(
        annotations.get(SCHEDULED_TIMESTAMP).map(String::as_str),
        Some("2024-03-11T13:00:00Z")
    );
    let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("CronJob", "report", "cj-uid")
    );
    assert_eq!((owner.controller, owner.block_owner_deletion), (Some(true), Some(true)));
    assert_eq!(job.spec, cj.spec.as_ref().unwrap().job_template.spec);

    // In the CronJob's zone: 09:00 in New York, daylight saving time.
    let ny = crate::cron::time_zone_named("America/New_York").unwrap();
    let job = job_for(&cj, at, &ny).unwrap();
    assert_eq!(
        job.annotations().get(SCHEDULED_TIMESTAMP).map(String::as_str),
        Some("2024-03-11T09:00:00-04:00")
    );
    assert_eq!(rfc3339_in(ts("2024-01-15T12:00:00Z"), &ny), "2024-01-15T07:00:00-05:00");
}

#[test]
fn jobs_start_only_while_the_store_shows_the_cronjob_wanting_them() {
    let mut live = cronjob("2024-01-01T00:00:00Z", json!({"schedule": "* * * * *"}), json!({}));
    assert!(still_wanted(Some(&live), "cj-uid"));
    assert!(!still_wanted(None, "cj-uid"));
    assert!(!still_wanted(Some(&live), "other"));
    live.spec.as_mut().unwrap().suspend = Some(true);
    assert!(!still_wanted(Some(&live), "cj-uid"));
}

#[test]
fn an_empty_active_list_is_written_as_absent() {
    let mut status = CronJobStatus {
        active: Some(vec![]),
        ..Default::default()
    };
    tidy(&mut status);
    assert_eq!(status, CronJobStatus::default());
}

#[test]
fn the_same_event_is_written_once_per_ten_minutes() {
    let repeats = Repeats::default();
    let start = Instant::now();
    let forbid = Note::normal("JobAlreadyActive", "prior execution is running".into());
    let created = Note::normal("SuccessfulCreate", "Created job report-1".into());
    assert!(repeats.fresh("cj-uid", &forbid, start));
    assert!(!repeats.fresh("cj-uid", &forbid, start + Duration::from_secs(60)));
    // Another message, another CronJob: written.
    assert!(repeats.fresh("cj-uid", &created, start + Duration::from_secs(60)));
    assert!(repeats.fresh("other-uid", &forbid, start + Duration::from_secs(60)));
    // Ten minutes later: again.
    assert!(repeats.fresh("cj-uid", &forbid, start + REPEAT_AFTER));
}
