//! Table-driven tests of the Deployment controller's pure parts: template hashing,
//! revisions, rolling-update sizes, and the status and conditions it reports.

use super::*;
use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStrategy, ReplicaSetStatus, RollingUpdateDeployment};
use kube::core::SelectorExt;

fn ts(s: i64) -> Timestamp {
    Timestamp::from_second(s).unwrap()
}

fn template(v: Value) -> PodTemplateSpec {
    serde_json::from_value(v).unwrap()
}

#[test]
fn template_hash_is_stable_ignores_the_hash_label_and_tracks_content() {
    let a =
        template(json!({"metadata": {"labels": {"app": "web", "tier": "x"}}, "spec": {"containers": [{"name": "c"}]}}));
    let b =
        template(json!({"spec": {"containers": [{"name": "c"}]}, "metadata": {"labels": {"tier": "x", "app": "web"}}}));
    let with_hash = template(
        json!({"metadata": {"labels": {"app": "web", "tier": "x", "pod-template-hash": "abc"}}, "spec": {"containers": [{"name": "c"}]}}),
    );
    let empty_annotations = template(
        json!({"metadata": {"labels": {"app": "web", "tier": "x"}, "annotations": {}}, "spec": {"containers": [{"name": "c"}]}}),
    );
    let other =
        template(json!({"metadata": {"labels": {"app": "web", "tier": "x"}}, "spec": {"containers": [{"name": "d"}]}}));
    for same in [&b, &with_hash, &empty_annotations] {
        assert_eq!(template_hash(&a), template_hash(same));
        assert!(equal_ignore_hash(&a, same));
    }
    assert_ne!(template_hash(&a), template_hash(&other));
    assert!(!equal_ignore_hash(&a, &other));
    // The same input hashes the same in every run and version (no random state).
    assert_eq!(template_hash(&a), template_hash(&a.clone()));
    assert!(template_hash(&a)
        .chars()
        .all(|ch| "bcdfghjklmnpqrstvwxz2456789".contains(ch)));
    let only_hash_label = template(json!({"metadata": {"labels": {"pod-template-hash": "x"}}}));
    assert_eq!(
        template_hash(&only_hash_label),
        template_hash(&PodTemplateSpec::default())
    );
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn new_replica_set_annotations_number_revisions_as_kubernetes_does() {
    const CAUSE: &str = "kubernetes.io/change-cause";
    // (deployment annotations, RS annotations before, new revision, exists) -> (after, changed)
    type Case<'a> = (
        &'a [(&'a str, &'a str)],
        &'a [(&'a str, &'a str)],
        i64,
        bool,
        &'a [(&'a str, &'a str)],
        bool,
    );
    let cases: Vec<Case> = vec![
        // A new ReplicaSet: revision, sizes, the change cause; never last-applied.
        (
            &[
                (CAUSE, "set image"),
                ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
                (REVISION_ANNOTATION, "1"),
            ],
            &[],
            2,
            false,
            &[
                (CAUSE, "set image"),
                (REVISION_ANNOTATION, "2"),
                (DESIRED_REPLICAS_ANNOTATION, "3"),
                (MAX_REPLICAS_ANNOTATION, "4"),
            ],
            true,
        ),
        // Rolled back to: moves to max+1 and remembers its old number.
        (
            &[],
            &[(REVISION_ANNOTATION, "1")],
            3,
            true,
            &[(REVISION_ANNOTATION, "3"), (REVISION_HISTORY_ANNOTATION, "1")],
            true,
        ),
        (
            &[],
            &[(REVISION_ANNOTATION, "3"), (REVISION_HISTORY_ANNOTATION, "1")],
            5,
            true,
            &[(REVISION_ANNOTATION, "5"), (REVISION_HISTORY_ANNOTATION, "1,3")],
            true,
        ),
        // Already the newest: nothing to do.
        (
            &[(CAUSE, "x")],
            &[(REVISION_ANNOTATION, "2"), (CAUSE, "x")],
            2,
            true,
            &[(REVISION_ANNOTATION, "2"), (CAUSE, "x")],
            false,
        ),
        // A changed cause is copied; annotations only the RS has stay.
        (
            &[(CAUSE, "y")],
            &[(REVISION_ANNOTATION, "2"), (CAUSE, "x"), ("mine", "1")],
            2,
            true,
            &[(REVISION_ANNOTATION, "2"), (CAUSE, "y"), ("mine", "1")],
            true,
        ),
    ];
    for (i, (deploy, before, rev, exists, after, changed)) in cases.into_iter().enumerate() {
        let mut rs = map(before);
        let got = new_rs_annotations(&map(deploy), &mut rs, rev, exists, (3, 4));
        assert_eq!(rs, map(after), "case {i}");
        assert_eq!(got, changed, "case {i}");
    }
}

fn deployment(replicas: i32, strategy: Option<(&str, Option<IntOrString>, Option<IntOrString>)>) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some("web".into()),
            generation: Some(2),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            progress_deadline_seconds: Some(600),
            strategy: strategy.map(|(t, surge, unavailable)| DeploymentStrategy {
                type_: Some(t.into()),
                rolling_update: (t == "RollingUpdate").then_some(RollingUpdateDeployment {
                    max_surge: surge,
                    max_unavailable: unavailable,
                }),
            }),
            ..Default::default()
        }),
        status: None,
    }
}

#[test]
fn surge_and_unavailability_resolve_like_kubernetes() {
    let pct = |s: &str| Some(IntOrString::String(s.into()));
    let int = |n: i32| Some(IntOrString::Int(n));
    // (replicas, strategy) -> (maxSurge, maxUnavailable as used)
    let cases = vec![
        (4, None, (1, 1)),
        (1, None, (1, 0)),
        (10, Some(("RollingUpdate", pct("25%"), pct("25%"))), (3, 2)),
        (3, Some(("RollingUpdate", int(0), int(0))), (0, 1)),
        (3, Some(("RollingUpdate", int(2), pct("100%"))), (2, 3)),
        (3, Some(("Recreate", None, None)), (0, 0)),
        (0, None, (0, 0)),
    ];
    for (replicas, strategy, want) in cases {
        let d = deployment(replicas, strategy.clone());
        assert_eq!((fenceposts(&d).0, max_unavailable(&d)), want, "{replicas} {strategy:?}");
    }
}

#[test]
fn rolling_update_sizes() {
    // (replicas, surge, new spec, all spec) -> new size
    for (replicas, surge, new_spec, all, want) in [
        (3, 1, 0, 3, 1),
        (3, 1, 1, 4, 1),
        (3, 1, 1, 3, 2),
        (3, 0, 0, 3, 0),
        (1, 1, 0, 1, 1),
        (5, 2, 0, 0, 5),
    ] {
        assert_eq!(
            rolling_new_size(replicas, surge, new_spec, all),
            want,
            "{replicas} {surge} {new_spec} {all}"
        );
    }
    // (replicas, maxUnavailable, new (spec, available), old [(spec, available)]) -> old sizes
    type Case<'a> = (i32, i32, (i32, i32), &'a [(i32, i32)], &'a [i32]);
    let cases: Vec<Case> = vec![
        // New pod not available yet: nothing old may go.
        (1, 0, (1, 0), &[(1, 1)], &[1]),
        // New pod available: the old one goes.
        (1, 0, (1, 1), &[(1, 1)], &[0]),
        // Unhealthy old pods go first, even when availability is short.
        (3, 0, (1, 1), &[(3, 1)], &[2]),
        // ...but not past what the new unavailable pods already cost.
        (3, 0, (1, 0), &[(3, 1)], &[3]),
        // Oldest first, within maxUnavailable.
        (4, 1, (2, 2), &[(1, 1), (3, 3)], &[0, 1]),
        (2, 0, (0, 0), &[(0, 0), (2, 2)], &[0, 2]),
    ];
    for (replicas, unavailable, new, old, want) in cases {
        assert_eq!(
            rolling_old_sizes(replicas, unavailable, new, old),
            want,
            "{replicas} {unavailable} {new:?} {old:?}"
        );
    }
}

fn rs(name: &str, revision: i64, spec: i32, status: (i32, i32, i32)) -> ReplicaSet {
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.into()),
            generation: Some(1),
            annotations: Some(map(&[(REVISION_ANNOTATION, &revision.to_string())])),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(spec),
            ..Default::default()
        }),
        status: Some(ReplicaSetStatus {
            replicas: status.0,
            ready_replicas: Some(status.1),
            available_replicas: Some(status.2),
            observed_generation: Some(1),
            ..Default::default()
        }),
    }
}

fn cond(type_: &str, status: &str, reason: &str, transition: i64, update: i64) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(String::new()),
        last_transition_time: Some(Time(ts(transition))),
        last_update_time: Some(Time(ts(update))),
    }
}

fn summary(s: &DeploymentStatus) -> Vec<(String, String, String, i64, i64)> {
    let mut v: Vec<_> = s
        .conditions
        .iter()
        .flatten()
        .map(|c| {
            (
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone().unwrap_or_default(),
                c.last_transition_time.as_ref().unwrap().0.as_second(),
                c.last_update_time.as_ref().unwrap().0.as_second(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn rollout_status_and_conditions() {
    let now = 1000;
    struct Case {
        name: &'static str,
        replicas: i32,
        conditions: Vec<DeploymentCondition>,
        old_counts: (i32, i32, i32, i32),
        rss: Vec<ReplicaSet>,
        // (replicas, updated, ready, available, unavailable)
        counts: (i32, i32, i32, i32, i32),
        // (type, status, reason, transition, update)
        want: Vec<(&'static str, &'static str, &'static str, i64, i64)>,
        recheck: Option<u64>,
    }
    let cases = vec![
        Case {
            name: "just created: the new RS has no pods yet",
            replicas: 2,
            conditions: vec![cond("Progressing", "True", reason::NEW_RS_CREATED, 990, 990)],
            old_counts: (0, 0, 0, 0),
            rss: vec![rs("new", 1, 2, (0, 0, 0))],
            counts: (0, 0, 0, 0, 2),
            want: vec![
                ("Available", "False", reason::MIN_UNAVAILABLE, now, now),
                ("Progressing", "True", reason::NEW_RS_CREATED, 990, 990),
            ],
            recheck: Some(591),
        },
        Case {
            name: "pods came up: progress refreshes lastUpdateTime only",
            replicas: 2,
            conditions: vec![
                cond("Available", "False", reason::MIN_UNAVAILABLE, 990, 990),
                cond("Progressing", "True", reason::NEW_RS_CREATED, 990, 990),
            ],
            old_counts: (0, 0, 0, 0),
            rss: vec![rs("new", 1, 2, (2, 1, 1))],
            counts: (2, 2, 1, 1, 1),
            want: vec![
                ("Available", "False", reason::MIN_UNAVAILABLE, 990, 990),
                ("Progressing", "True", reason::RS_UPDATED, 990, now),
            ],
            recheck: Some(601),
        },
        Case {
            name: "complete: NewReplicaSetAvailable, Available turns True",
            replicas: 2,
            conditions: vec![
                cond("Available", "False", reason::MIN_UNAVAILABLE, 990, 990),
                cond("Progressing", "True", reason::RS_UPDATED, 990, 995),
            ],
            old_counts: (2, 2, 1, 1),
            rss: vec![rs("old", 1, 0, (0, 0, 0)), rs("new", 2, 2, (2, 2, 2))],
            counts: (2, 2, 2, 2, 0),
            want: vec![
                ("Available", "True", reason::MIN_AVAILABLE, now, now),
                ("Progressing", "True", reason::NEW_RS_AVAILABLE, 990, now),
            ],
            recheck: None,
        },
        Case {
            name: "old pods pending termination count in replicas, not updated",
            replicas: 1,
            conditions: vec![
                cond("Available", "True", reason::MIN_AVAILABLE, 900, 900),
                cond("Progressing", "True", reason::NEW_RS_CREATED, 990, 990),
            ],
            old_counts: (2, 1, 2, 2),
            rss: vec![rs("old", 1, 0, (1, 1, 1)), rs("new", 2, 1, (1, 1, 1))],
            counts: (2, 1, 2, 2, 0),
            want: vec![
                ("Available", "True", reason::MIN_AVAILABLE, 900, 900),
                ("Progressing", "True", reason::NEW_RS_CREATED, 990, 990),
            ],
            recheck: Some(591),
        },
        Case {
            name: "no progress past the deadline",
            replicas: 1,
            conditions: vec![
                cond("Available", "False", reason::MIN_UNAVAILABLE, 100, 100),
                cond("Progressing", "True", reason::RS_UPDATED, 100, 300),
            ],
            old_counts: (1, 1, 0, 0),
            rss: vec![rs("new", 1, 1, (1, 0, 0))],
            counts: (1, 1, 0, 0, 1),
            want: vec![
                ("Available", "False", reason::MIN_UNAVAILABLE, 100, 100),
                ("Progressing", "False", reason::TIMED_OUT, now, now),
            ],
            recheck: None,
        },
        Case {
            name: "a finished rollout stays finished on resync",
            replicas: 1,
            conditions: vec![
                cond("Available", "True", reason::MIN_AVAILABLE, 100, 100),
                cond("Progressing", "True", reason::NEW_RS_AVAILABLE, 100, 100),
            ],
            old_counts: (1, 1, 1, 1),
            rss: vec![rs("new", 1, 1, (1, 1, 1))],
            counts: (1, 1, 1, 1, 0),
            want: vec![
                ("Available", "True", reason::MIN_AVAILABLE, 100, 100),
                ("Progressing", "True", reason::NEW_RS_AVAILABLE, 100, 100),
            ],
            recheck: None,
        },
    ];
    for case in cases {
        let mut d = deployment(case.replicas, None);
        let base = DeploymentStatus {
            replicas: Some(case.old_counts.0),
            updated_replicas: Some(case.old_counts.1),
            ready_replicas: Some(case.old_counts.2),
            available_replicas: Some(case.old_counts.3),
            conditions: Some(case.conditions.clone()),
            ..Default::default()
        };
        d.status = Some(base.clone());
        let all: Vec<&ReplicaSet> = case.rss.iter().collect();
        let new_rs = case.rss.last();
        let (s, recheck) = rollout_status(&d, &base, &all, new_rs, ts(now));
        let counts = (
            s.replicas.unwrap(),
            s.updated_replicas.unwrap(),
            s.ready_replicas.unwrap(),
            s.available_replicas.unwrap(),
            s.unavailable_replicas.unwrap(),
        );
        assert_eq!(counts, case.counts, "{}", case.name);
        assert_eq!(s.observed_generation, Some(2), "{}", case.name);
        let want: Vec<_> = case
            .want
            .iter()
            .map(|(t, st, r, tr, up)| (t.to_string(), st.to_string(), r.to_string(), *tr, *up))
            .collect();
        assert_eq!(summary(&s), want, "{}", case.name);
        assert_eq!(recheck.map(|d| d.as_secs()), case.recheck, "{}", case.name);
    }
}

#[test]
fn set_condition_keeps_transition_time_unless_status_changes() {
    let mut s = DeploymentStatus::default();
    set_condition(&mut s, cond("Available", "True", "A", 1, 1));
    set_condition(&mut s, cond("Available", "True", "A", 5, 5));
    assert_eq!(summary(&s)[0].3, 1, "same status and reason: untouched");
    set_condition(&mut s, cond("Available", "True", "B", 6, 6));
    assert_eq!(
        (summary(&s)[0].3, summary(&s)[0].4),
        (1, 6),
        "reason only: transition kept"
    );
    set_condition(&mut s, cond("Available", "False", "B", 7, 7));
    assert_eq!(summary(&s)[0].3, 7, "status change: new transition time");
    assert_eq!(s.conditions.as_ref().unwrap().len(), 1);
}

#[test]
fn paused_and_resumed_conditions() {
    let mut d = deployment(1, None);
    let mut s = DeploymentStatus::default();
    d.spec.as_mut().unwrap().paused = Some(true);
    paused_conditions(&d, &mut s, ts(10));
    assert_eq!(
        get_condition(&s, "Progressing").unwrap().reason.as_deref(),
        Some(reason::PAUSED)
    );
    d.spec.as_mut().unwrap().paused = Some(false);
    paused_conditions(&d, &mut s, ts(20));
    let c = get_condition(&s, "Progressing").unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_deref()),
        ("Unknown", Some(reason::RESUMED))
    );
}

#[test]
fn history_limit_removes_the_lowest_idle_revisions() {
    let a = rs("a", 1, 0, (0, 0, 0));
    let b = rs("b", 2, 0, (0, 0, 0));
    let busy = rs("c", 3, 0, (1, 0, 0));
    let d = rs("d", 4, 0, (0, 0, 0));
    let names = |v: Vec<&ReplicaSet>| v.iter().map(|r| r.name_any()).collect::<Vec<_>>();
    // (limit) -> deleted
    let olds = [&d, &busy, &a, &b];
    assert_eq!(names(to_clean_up(&olds, 10)), Vec::<String>::new());
    assert_eq!(names(to_clean_up(&olds, 2)), ["a", "b"]);
    assert_eq!(names(to_clean_up(&olds, 1)), ["a", "b"], "one still has pods");
    assert_eq!(names(to_clean_up(&olds, 0)), ["a", "b", "d"]);
}

/// Deployment `web` (uid `d-1`) in `default` selecting `app=web`.
fn selecting_web(deleting: bool) -> Deployment {
    let mut d = deployment(2, None);
    d.metadata.namespace = Some("default".into());
    d.metadata.uid = Some("d-1".into());
    d.metadata.deletion_timestamp = deleting.then(|| Time(ts(5)));
    d.spec.as_mut().unwrap().selector = serde_json::from_value(json!({"matchLabels": {"app": "web"}})).unwrap();
    d
}

/// ReplicaSet `name` in `ns` labelled `app`, controlled by the Deployment `controller`.
fn labelled_rs(name: &str, ns: &str, app: &str, controller: Option<&str>) -> ReplicaSet {
    let mut r = rs(name, 1, 1, (1, 1, 1));
    r.metadata.namespace = Some(ns.into());
    r.metadata.uid = Some(format!("{name}-uid"));
    r.metadata.labels = Some(map(&[("app", app), (HASH_LABEL, "abc")]));
    r.metadata.owner_references = controller.map(|uid| {
        vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: format!("d-{uid}"),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]
    });
    r
}

#[test]
fn deployments_claim_replica_sets_as_kubernetes_does() {
    use crate::controllers::claim::{compile, decide, Claim::*};
    // (Deployment deleting, namespace, label, controller, ReplicaSet deleting) -> claim
    let cases = [
        (false, "default", "web", None, false, Adopt),
        (false, "default", "db", None, false, Ignore),
        (false, "other", "web", None, false, Ignore),
        (true, "default", "web", None, false, Ignore),
        (false, "default", "web", None, true, Ignore),
        (false, "default", "web", Some("d-1"), false, Keep),
        (false, "default", "db", Some("d-1"), false, Release),
        (true, "default", "db", Some("d-1"), false, Ignore),
        (false, "default", "db", Some("d-1"), true, Ignore),
        (false, "default", "web", Some("d-2"), false, Ignore),
    ];
    for (i, (d_deleting, ns, app, controller, rs_deleting, want)) in cases.into_iter().enumerate() {
        let d = selecting_web(d_deleting);
        let selector = compile(&d.spec.as_ref().unwrap().selector).unwrap().unwrap();
        let mut r = labelled_rs("r", ns, app, controller);
        r.metadata.deletion_timestamp = rs_deleting.then(|| Time(ts(6)));
        let got = decide(&d.metadata, &r.metadata, selector.matches(r.labels()), false);
        assert_eq!(got, want, "case {i}");
    }
}

#[test]
fn a_replica_set_wakes_its_owner_and_as_an_orphan_the_deployments_selecting_it() {
    let mut other_ns = selecting_web(false);
    other_ns.metadata.namespace = Some("other".into());
    let mut deleting = selecting_web(true);
    deleting.metadata.name = Some("going".into());
    let (all, mut writer) = kube::runtime::reflector::store();
    for d in [selecting_web(false), other_ns, deleting] {
        writer.apply_watcher_event(&watcher::Event::Apply(d));
    }
    let names = |refs: Vec<ObjectRef<Deployment>>| {
        refs.iter()
            .map(|r| format!("{}/{}", r.namespace.as_deref().unwrap_or(""), r.name))
            .collect::<Vec<_>>()
    };
    let orphan = labelled_rs("r", "default", "web", None);
    assert_eq!(names(deployments_for_replicaset(&all, &orphan)), ["default/web"]);
    assert!(deployments_for_replicaset(&all, &labelled_rs("r", "default", "db", None)).is_empty());
    let owned = labelled_rs("r", "default", "web", Some("d-9"));
    assert_eq!(names(deployments_for_replicaset(&all, &owned)), ["default/d-d-9"]);
}
