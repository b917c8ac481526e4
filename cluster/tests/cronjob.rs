//! CronJobs end to end: a real member with the scheduler, the controllers and a node agent
//! running pods as host processes. A CronJob of `* * * * *` starts its Job at the next
//! minute boundary (so the test waits at most a minute for it), the Job completes and the
//! CronJob's status records both times; a suspended one starts nothing; a schedule or time
//! zone the controller could not run is a 422 naming the field.

mod common;

use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use common::{cluster, kubectl, wait_for};

const SCHEDULED: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

fn cronjob(name: &str, spec: serde_json::Value) -> CronJob {
    let mut spec = spec;
    spec["jobTemplate"] = json!({
        "metadata": {"labels": {"cron": name}},
        "spec": {"template": {"spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", "echo hi"]}],
        }}},
    });
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

/// The 422 message of a create that must fail validation.
async fn rejected(api: &Api<CronJob>, cj: &CronJob) -> String {
    match api.create(&PostParams::default(), cj).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{}", s.message);
            s.message
        }
        other => panic!("expected a 422, got {other:?}"),
    }
}

/// The Jobs the CronJob with uid `uid` controls.
async fn jobs_of(jobs: &Api<Job>, uid: &str) -> Vec<Job> {
    let listed = jobs.list(&ListParams::default()).await.unwrap().items;
    listed
        .into_iter()
        .filter(|j| {
            j.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == uid)
        })
        .collect()
}

fn condition_true(job: &Job, type_: &str) -> bool {
    job.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[tokio::test]
async fn a_cronjob_starts_its_job_on_the_minute_and_records_its_success() {
    let w = cluster().await;
    let client = w.s.client.clone();
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");

    // What the controller could not run is refused up front.
    let message = rejected(&cronjobs, &cronjob("bad", json!({"schedule": "* * * *"}))).await;
    assert!(
        message.contains("spec.schedule") && message.contains("expected exactly 5 fields"),
        "{message}"
    );
    let message = rejected(
        &cronjobs,
        &cronjob("bad", json!({"schedule": "* * * * *", "timeZone": "Mars/Olympus"})),
    )
    .await;
    assert!(
        message.contains("spec.timeZone") && message.contains("unknown time zone"),
        "{message}"
    );

    let every = cronjobs
        .create(
            &PostParams::default(),
            &cronjob("every", json!({"schedule": "* * * * *", "timeZone": "Etc/UTC"})),
        )
        .await
        .unwrap();
    let paused = cronjobs
        .create(
            &PostParams::default(),
            &cronjob("paused", json!({"schedule": "* * * * *", "suspend": true})),
        )
        .await
        .unwrap();
    let spec = every.spec.as_ref().unwrap();
    assert_eq!(spec.concurrency_policy.as_deref(), Some("Allow"));
    assert_eq!(spec.successful_jobs_history_limit, Some(3));
    assert_eq!(spec.failed_jobs_history_limit, Some(1));
    let every_uid = every.uid().unwrap();
    let paused_uid = paused.uid().unwrap();

    // The next minute boundary brings the Job, named by its minute.
    let job = wait_for("the cronjob's first job", Duration::from_secs(70), || async {
        jobs_of(&jobs, &every_uid).await.into_iter().next()
    })
    .await;
    let scheduled: Timestamp = job.annotations()[SCHEDULED].parse().unwrap();
    assert_eq!(scheduled.as_second() % 60, 0, "{scheduled}");
    assert!(job.annotations()[SCHEDULED].ends_with('Z'));
    assert_eq!(job.name_any(), format!("every-{}", scheduled.as_second() / 60));
    assert_eq!(job.labels().get("cron").map(String::as_str), Some("every"));
    let owner = &job.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("CronJob", "every", Some(true))
    );
    let created = job.creation_timestamp().unwrap().0;
    assert!(
        created.as_second() - scheduled.as_second() < 10,
        "created {created} for {scheduled}"
    );

    // It runs to completion; the CronJob records when it was scheduled and succeeded.
    wait_for("the job to complete", Duration::from_secs(30), || async {
        let j = jobs.get(&job.name_any()).await.ok()?;
        condition_true(&j, "Complete").then_some(())
    })
    .await;
    let status = wait_for("the cronjob's status", Duration::from_secs(10), || async {
        let cj = cronjobs.get("every").await.ok()?;
        let s = cj.status?;
        (s.last_successful_time.is_some() && s.active.as_ref().is_none_or(Vec::is_empty)).then_some(s)
    })
    .await;
    assert_eq!(status.last_schedule_time.map(|t| t.0), Some(scheduled));
    let succeeded = status.last_successful_time.unwrap().0;
    assert!(succeeded >= scheduled, "{succeeded} before {scheduled}");

    // The same minute boundary passed for the suspended CronJob: nothing started.
    assert!(jobs_of(&jobs, &paused_uid).await.is_empty());
    let paused = cronjobs.get("paused").await.unwrap();
    assert!(paused.status.as_ref().is_none_or(|s| s.last_schedule_time.is_none()));

    // Events tell what happened, as Kubernetes' controller tells it, and nothing odd.
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let reasons = wait_for("the cronjob's events", Duration::from_secs(10), || async {
        let listed = events.list(&ListParams::default()).await.ok()?.items;
        let reasons: Vec<String> = listed
            .iter()
            .filter(|e| e.involved_object.name.as_deref() == Some("every"))
            .filter_map(|e| e.reason.clone())
            .collect();
        reasons.iter().any(|r| r == "SawCompletedJob").then_some(reasons)
    })
    .await;
    assert!(reasons.iter().any(|r| r == "SuccessfulCreate"), "{reasons:?}");
    assert!(
        reasons
            .iter()
            .all(|r| ["SuccessfulCreate", "SawCompletedJob"].contains(&r.as_str())),
        "{reasons:?}"
    );

    if let Some(out) = kubectl(&w.s, &["get", "cronjobs"]).await {
        assert!(out.contains("every") && out.contains("* * * * *"), "{out}");
    }
    w.stop().await;
}
