//! GitOps in depth, end to end against the real binary and real Git repositories:
//! review before apply (diff, manual sync), prune on and off, self-heal on and off after
//! a scale, ownership conflicts, history and the audit trail.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{wait_for, Kairn, Repo};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kairn_cluster::kinds::{Application, ApplicationSource, ApplicationSpec, SyncPolicy};
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(60);

/// New commits applied, removals pruned, drift left alone.
const AUTOMATED: SyncPolicy = SyncPolicy {
    automated: true,
    prune: true,
    self_heal: false,
};

/// Nothing applied until `kairn sync`.
const MANUAL: SyncPolicy = SyncPolicy {
    automated: false,
    prune: true,
    self_heal: false,
};

fn config_map(ns: &str, name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\ndata:\n  value: \"{value}\"\n"
    )
}

fn namespace(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n")
}

/// A cluster following an empty bootstrap repository, for tests that add their own
/// Applications.
async fn cluster(dir: &Path) -> Kairn {
    let boot = Repo::init(&dir.join("boot"));
    boot.commit_file("README.md", "bootstrap\n", "empty");
    Kairn::up(&dir.join("data"), &boot.dir).await
}

async fn create_app(kairn: &Kairn, name: &str, repo: &str, path: &str, policy: SyncPolicy) {
    let apps: Api<Application> = Api::namespaced(kairn.client.clone(), "kairn-system");
    let spec = ApplicationSpec {
        source: ApplicationSource {
            repo_url: repo.to_string(),
            target_revision: "main".into(),
            path: path.into(),
            poll_interval_seconds: None,
        },
        sync_policy: policy,
        ..Default::default()
    };
    apps.create(&PostParams::default(), &Application::new(name, spec))
        .await
        .expect("application created");
}

async fn app_status(kairn: &Kairn, name: &str) -> Value {
    let apps: Api<Application> = Api::namespaced(kairn.client.clone(), "kairn-system");
    let app = apps.get(name).await.expect("application exists");
    serde_json::to_value(app.status.unwrap_or_default()).unwrap()
}

async fn wait_status(kairn: &Kairn, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, TIMEOUT, || async {
        let status = app_status(kairn, name).await;
        check(&status).then_some(status)
    })
    .await
}

async fn config_value(kairn: &Kairn, ns: &str, name: &str) -> Option<String> {
    let cms: Api<ConfigMap> = Api::namespaced(kairn.client.clone(), ns);
    cms.get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|c| c.data?.get("value").cloned())
}

#[tokio::test]
async fn manual_sync_after_a_diff_then_history() {
    let tmp = tempfile::tempdir().unwrap();
    let kairn = cluster(tmp.path()).await;
    let repo = Repo::init(&tmp.path().join("manual"));
    repo.commit_file("ns.yaml", &namespace("manual"), "namespace");
    let first = repo.commit_file("cm.yaml", &config_map("manual", "settings", "one"), "settings one");
    create_app(&kairn, "manual", &repo.dir.display().to_string(), "", MANUAL).await;

    // 1. Not automated: the new commit only makes the Application OutOfSync.
    let status = wait_status(&kairn, "manual", "OutOfSync", |s| s["sync"]["status"] == "OutOfSync").await;
    assert_eq!(status["targetRevision"], first);
    assert!(
        config_value(&kairn, "manual", "settings").await.is_none(),
        "nothing applied"
    );

    // 2. Review: the diff names what would be created; exit 1 means differences.
    let (code, out, err) = kairn.cli(&["diff", "manual"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("=== create v1/ConfigMap manual/settings (cm.yaml#0)"),
        "{out}"
    );
    assert!(out.contains("+  value: one"), "{out}");
    let (code, json_out, err) = kairn.cli(&["diff", "manual", "-o", "json"]);
    assert_eq!(code, 1, "{err}");
    let plan: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(plan["applications"][0]["summary"]["created"], 2, "{json_out}");

    // 3. A dry run changes nothing; the sync applies the commit.
    let (code, out, err) = kairn.cli(&["sync", "manual", "--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("dry run: 2 to create"), "{out}");
    assert!(
        config_value(&kairn, "manual", "settings").await.is_none(),
        "a dry run applies nothing"
    );
    let (code, out, err) = kairn.cli(&["sync", "manual"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Succeeded"), "{out}");
    assert_eq!(config_value(&kairn, "manual", "settings").await.as_deref(), Some("one"));
    wait_status(&kairn, "manual", "Synced and Healthy", |s| {
        s["sync"]["status"] == "Synced" && s["health"]["status"] == "Healthy" && s["syncedRevision"] == first
    })
    .await;
    let (code, out, _) = kairn.cli(&["diff", "manual"]);
    assert_eq!(code, 0, "no differences after the sync: {out}");

    // 4. A second commit waits for a sync again; sync a chosen revision by hand.
    let second = repo.commit_file("cm.yaml", &config_map("manual", "settings", "two"), "settings two");
    wait_status(&kairn, "manual", "OutOfSync on the second commit", |s| {
        s["sync"]["status"] == "OutOfSync" && s["targetRevision"] == second
    })
    .await;
    assert_eq!(config_value(&kairn, "manual", "settings").await.as_deref(), Some("one"));
    let (code, out, err) = kairn.cli(&["sync", "manual", "--revision", &second[..10]]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(config_value(&kairn, "manual", "settings").await.as_deref(), Some("two"));

    // 5. History: newest first, with author, message and counts; one entry in full.
    let (code, out, _) = kairn.cli(&["history", "manual"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[1].contains(&second[..12]) && lines[1].contains("Succeeded"),
        "{out}"
    );
    assert!(
        lines[1].contains("Test Author") && lines[1].contains("settings two"),
        "{out}"
    );
    assert!(lines[2].contains(&first[..12]), "{out}");
    let (_, out, _) = kairn.cli(&["history", "manual", &second[..8]]);
    assert!(out.contains("-  value: one") && out.contains("+  value: two"), "{out}");
    assert!(out.contains("counts:    0 created, 1 updated"), "{out}");
}

#[tokio::test]
async fn prune_off_keeps_removed_objects_until_turned_on() {
    let tmp = tempfile::tempdir().unwrap();
    let kairn = cluster(tmp.path()).await;
    let repo = Repo::init(&tmp.path().join("prune"));
    repo.commit_file("ns.yaml", &namespace("prune"), "namespace");
    repo.commit_file("a.yaml", &config_map("prune", "a", "1"), "a");
    repo.commit_file("b.yaml", &config_map("prune", "b", "1"), "b");
    create_app(
        &kairn,
        "pruning",
        &repo.dir.display().to_string(),
        "",
        SyncPolicy {
            automated: true,
            prune: false,
            self_heal: false,
        },
    )
    .await;
    wait_for("b to exist", TIMEOUT, || async {
        config_value(&kairn, "prune", "b").await
    })
    .await;

    repo.git(&["rm", "-q", "b.yaml"]);
    repo.git(&["commit", "-q", "-m", "drop b"]);
    let head = repo.head();
    let status = wait_status(&kairn, "pruning", "the removal to be seen", |s| {
        s["syncedRevision"] == head.as_str() && s["sync"]["status"] == "OutOfSync"
    })
    .await;
    assert!(config_value(&kairn, "prune", "b").await.is_some(), "prune off: b stays");
    let entry = status["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "b")
        .expect("b is listed");
    assert_eq!(entry["status"], "OutOfSync");
    assert!(entry["message"].as_str().unwrap().contains("pruning is off"), "{entry}");

    // Turning prune on deletes it.
    let apps: Api<Application> = Api::namespaced(kairn.client.clone(), "kairn-system");
    apps.patch(
        "pruning",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"syncPolicy": {"prune": true}}})),
    )
    .await
    .unwrap();
    // The next commit is synced with pruning.
    repo.commit_file("a.yaml", &config_map("prune", "a", "2"), "a two");
    wait_for("b to be pruned", TIMEOUT, || async {
        config_value(&kairn, "prune", "b").await.is_none().then_some(())
    })
    .await;
    assert_eq!(config_value(&kairn, "prune", "a").await.as_deref(), Some("2"));
}

fn deployment(ns: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {ns}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: sleep
          image: none
          command: ["sleep", "600"]
"#
    )
}

async fn replicas(kairn: &Kairn, ns: &str) -> Option<i32> {
    let deps: Api<Deployment> = Api::namespaced(kairn.client.clone(), ns);
    deps.get_opt("web").await.ok().flatten()?.spec?.replicas
}

async fn scale(kairn: &Kairn, ns: &str, to: i32) {
    let deps: Api<Deployment> = Api::namespaced(kairn.client.clone(), ns);
    deps.patch_scale(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": to}})),
    )
    .await
    .expect("scaled");
}

#[tokio::test]
async fn self_heal_on_and_off_after_a_scale() {
    let tmp = tempfile::tempdir().unwrap();
    let kairn = cluster(tmp.path()).await;
    for (name, heal) in [("healing", true), ("drifting", false)] {
        let repo = Repo::init(&tmp.path().join(name));
        repo.commit_file("ns.yaml", &namespace(name), "namespace");
        repo.commit_file("web.yaml", &deployment(name, 1), "web");
        create_app(
            &kairn,
            name,
            &repo.dir.display().to_string(),
            "",
            SyncPolicy {
                automated: true,
                prune: true,
                self_heal: heal,
            },
        )
        .await;
    }
    for name in ["healing", "drifting"] {
        wait_status(&kairn, name, "synced", |s| s["sync"]["status"] == "Synced").await;
        assert_eq!(replicas(&kairn, name).await, Some(1));
    }

    // Self-heal off: the scale stays, shown as OutOfSync with its diff and who made it.
    scale(&kairn, "drifting", 3).await;
    let status = wait_status(&kairn, "drifting", "drift to be reported", |s| {
        s["sync"]["status"] == "OutOfSync"
    })
    .await;
    let web = status["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "Deployment")
        .unwrap()
        .clone();
    assert!(
        web["message"]
            .as_str()
            .unwrap()
            .contains("changed outside Git by kairn-admin"),
        "{web}"
    );
    let diff = web["diff"].as_str().unwrap();
    assert!(
        diff.contains("-  replicas: 3") && diff.contains("+  replicas: 1"),
        "{diff}"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        replicas(&kairn, "drifting").await,
        Some(3),
        "self-heal off: nothing reverted"
    );
    let (_, out, _) = kairn.cli(&["status", "drifting"]);
    assert!(
        out.contains("out of sync: Deployment drifting/web: changed outside Git by kairn-admin"),
        "{out}"
    );

    // Self-heal on: the scale is put back within seconds and recorded.
    scale(&kairn, "healing", 3).await;
    wait_for("the scale to be reverted", TIMEOUT, || async {
        (replicas(&kairn, "healing").await == Some(1)).then_some(())
    })
    .await;
    let (_, out, _) = kairn.cli(&["history", "healing"]);
    assert!(out.lines().nth(1).unwrap_or_default().contains("self-heal"), "{out}");
    // The audit trail has the scale (by the admin) and the repair (by the reconciler).
    let (_, out, _) = kairn.cli(&["audit", "--object", "deployment/web", "-n", "healing", "-o", "json"]);
    let records: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert!(records.iter().any(|r| r["user"] == "kairn-admin"), "{out}");
    assert!(
        records
            .iter()
            .any(|r| r["user"] == "system:kairn-reconciler" && r["application"] == "kairn-system/healing"),
        "{out}"
    );
}

#[tokio::test]
async fn a_second_application_claiming_an_object_is_a_conflict() {
    let tmp = tempfile::tempdir().unwrap();
    let kairn = cluster(tmp.path()).await;
    let repo = Repo::init(&tmp.path().join("shared"));
    repo.commit_file("one/ns.yaml", &namespace("shared"), "namespace");
    repo.commit_file("one/cm.yaml", &config_map("shared", "settings", "one"), "one");
    repo.commit_file("two/cm.yaml", &config_map("shared", "settings", "two"), "two");
    let url = format!("file://{}", repo.dir.display());
    create_app(&kairn, "first", &url, "one", AUTOMATED).await;
    wait_status(&kairn, "first", "first synced", |s| s["sync"]["status"] == "Synced").await;
    create_app(&kairn, "second", &url, "two", AUTOMATED).await;
    let status = wait_status(&kairn, "second", "the conflict", |s| s["sync"]["status"] == "Failed").await;
    let message = status["sync"]["message"].as_str().unwrap();
    assert!(
        message.contains("already managed by Application \"first\""),
        "{message}"
    );
    assert_eq!(
        config_value(&kairn, "shared", "settings").await.as_deref(),
        Some("one"),
        "no takeover"
    );
    let (_, out, _) = kairn.cli(&["history", "second"]);
    assert!(out.contains("Failed"), "{out}");
}

#[tokio::test]
async fn audit_names_who_changed_what_and_hides_secret_values() {
    let tmp = tempfile::tempdir().unwrap();
    let kairn = cluster(tmp.path()).await;
    let repo = Repo::init(&tmp.path().join("audited"));
    repo.commit_file("ns.yaml", &namespace("audited"), "namespace");
    let sha = repo.commit_file(
        "secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\n  namespace: audited\nstringData:\n  password: hunter2-very-secret\n",
        "a secret",
    );
    create_app(&kairn, "audited", &repo.dir.display().to_string(), "", AUTOMATED).await;
    wait_status(&kairn, "audited", "synced", |s| s["syncedRevision"] == sha.as_str()).await;

    // A change by hand: through the real kubectl when there is one, else through the API.
    let cms: Api<ConfigMap> = Api::namespaced(kairn.client.clone(), "audited");
    if common::kubectl_present() {
        let out = std::process::Command::new("kubectl")
            .args(["--kubeconfig"])
            .arg(&kairn.kubeconfig)
            .args(["create", "configmap", "by-hand", "-n", "audited", "--from-literal=k=v"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    } else {
        eprintln!("kubectl is not on PATH: making the change through the API instead");
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": "by-hand"}, "data": {"k": "v"}})).unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    let (code, out, err) = kairn.cli(&["audit", "--object", "configmap/by-hand", "-n", "audited"]);
    assert_eq!(code, 0, "{err}");
    let row = out.lines().nth(1).unwrap_or_default();
    assert!(
        row.contains("kairn-admin") && row.contains("create") && row.contains("ConfigMap/audited/by-hand"),
        "{out}"
    );

    // The GitOps write names the Application and the commit; the secret's value appears
    // nowhere (audit, history, diff), only its hash.
    let (_, out, _) = kairn.cli(&["audit", "--app", "audited", "-o", "json"]);
    let records: Vec<Value> = serde_json::from_str(&out).unwrap();
    let secret = records
        .iter()
        .find(|r| r["kind"] == "Secret")
        .expect("the secret's record");
    assert_eq!(secret["commit"], sha.as_str());
    assert_eq!(secret["user"], "system:kairn-reconciler");
    assert!(!out.contains("hunter2") && !out.contains("aHVudGVyMi"), "{out}");
    assert!(out.contains("sha256:"), "{out}");
    let (_, history, _) = kairn.cli(&["history", "audited", &sha[..10]]);
    assert!(
        history.contains("password: sha256:") && !history.contains("hunter2"),
        "{history}"
    );
    let (_, audit_all, _) = kairn.cli(&["audit", "--since", "1h", "--limit", "1000", "-o", "json"]);
    assert!(!audit_all.contains("hunter2") && !audit_all.contains("aHVudGVyMi"));
}

#[tokio::test]
async fn rollback_to_a_sha_three_commits_back_sticks_under_auto_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let kairn = cluster(tmp.path()).await;
    let repo = Repo::init(&tmp.path().join("rolling"));
    repo.commit_file("ns.yaml", &namespace("rolling"), "namespace");
    let good = repo.commit_file("cm.yaml", &config_map("rolling", "settings", "v0"), "v0");
    create_app(&kairn, "rolling", &repo.dir.display().to_string(), "", AUTOMATED).await;
    wait_status(&kairn, "rolling", "v0 synced", |s| s["syncedRevision"] == good.as_str()).await;
    let mut last = good.clone();
    for v in ["v1", "v2", "v3"] {
        last = repo.commit_file("cm.yaml", &config_map("rolling", "settings", v), v);
        wait_status(&kairn, "rolling", v, |s| s["syncedRevision"] == last.as_str()).await;
    }
    assert_eq!(config_value(&kairn, "rolling", "settings").await.as_deref(), Some("v3"));

    // Roll back to the commit three back: one revert commit, by the named author.
    let (code, out, err) = kairn.cli(&[
        "rollback",
        "rolling",
        "--to",
        &good[..10],
        "--author",
        "Rita Rollback <rita@example.com>",
        "--wait",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("reverted 3 commit(s) on main"), "{out}");
    assert_eq!(config_value(&kairn, "rolling", "settings").await.as_deref(), Some("v0"));
    let head = repo.head();
    assert_ne!(head, last, "a new commit on the branch");
    assert_eq!(
        repo.git(&["log", "-1", "--format=%an <%ae>"]),
        "Rita Rollback <rita@example.com>"
    );
    assert_eq!(
        repo.git(&["rev-parse", &format!("{head}^")]),
        last,
        "the revert sits on top"
    );
    // The work tree follows (the branch is checked out and was clean).
    let on_disk = std::fs::read_to_string(repo.dir.join("cm.yaml")).unwrap();
    assert!(on_disk.contains("v0"), "{on_disk}");
    // Auto-sync keeps the rollback: the branch no longer carries v3.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(config_value(&kairn, "rolling", "settings").await.as_deref(), Some("v0"));
    let (_, history, _) = kairn.cli(&["history", "rolling"]);
    assert!(
        history.lines().nth(1).unwrap_or_default().contains(&head[..12]),
        "{history}"
    );

    // Rolling back the last synced commit alone (the revert) returns to v3.
    let (code, out, err) = kairn.cli(&["rollback", "rolling", "--author", "Rita <rita@example.com>", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(config_value(&kairn, "rolling", "settings").await.as_deref(), Some("v3"));
}

#[tokio::test]
async fn a_conflicting_rollback_stops_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let kairn = cluster(tmp.path()).await;
    let repo = Repo::init(&tmp.path().join("conflict"));
    repo.commit_file("ns.yaml", &namespace("conflict"), "namespace");
    let synced = repo.commit_file("cm.yaml", &config_map("conflict", "settings", "one"), "one");
    create_app(&kairn, "conflict", &repo.dir.display().to_string(), "", MANUAL).await;
    let (code, _, err) = kairn.cli(&["sync", "conflict"]);
    assert_eq!(code, 0, "{err}");
    // A later commit (not synced) changes the same line: reverting `one` conflicts.
    let later = repo.commit_file("cm.yaml", &config_map("conflict", "settings", "two"), "two");
    wait_status(&kairn, "conflict", "the new commit seen", |s| {
        s["targetRevision"] == later.as_str()
    })
    .await;
    let (code, out, err) = kairn.cli(&["rollback", "conflict", "--author", "R <r@example.com>"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("conflict") && err.contains("cm.yaml"), "{err}");
    assert_eq!(repo.head(), later, "nothing committed");
    assert_eq!(repo.git(&["status", "--porcelain"]), "", "the work tree is untouched");
    let status = app_status(&kairn, "conflict").await;
    assert_eq!(status["syncedRevision"], synced.as_str());
}

#[tokio::test]
async fn a_kustomize_overlay_syncs_as_kubectl_kustomize_renders_it() {
    let tmp = tempfile::tempdir().unwrap();
    let kairn = cluster(tmp.path()).await;
    let repo = Repo::init(&tmp.path().join("kustomized"));
    repo.commit_file(
        "base/kustomization.yaml",
        "resources:\n- cm.yaml\nconfigMapGenerator:\n- name: generated\n  literals:\n  - mode=base\n",
        "base",
    );
    repo.commit_file(
        "base/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  value: base\n",
        "base cm",
    );
    repo.commit_file("overlays/prod/ns.yaml", &namespace("kprod"), "ns");
    let sha = repo.commit_file(
        "overlays/prod/kustomization.yaml",
        "namespace: kprod\nnamePrefix: prod-\ncommonLabels:\n  env: prod\nresources:\n- ns.yaml\n- ../../base\nconfigMapGenerator:\n- name: generated\n  behavior: merge\n  literals:\n  - mode=prod\npatches:\n- patch: |-\n    apiVersion: v1\n    kind: ConfigMap\n    metadata:\n      name: settings\n    data:\n      value: prod\n",
        "prod overlay",
    );
    create_app(
        &kairn,
        "kustomized",
        &repo.dir.display().to_string(),
        "overlays/prod",
        AUTOMATED,
    )
    .await;
    wait_status(&kairn, "kustomized", "the overlay synced", |s| {
        s["syncedRevision"] == sha.as_str()
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(kairn.client.clone(), "kprod");
    let mut names: Vec<String> = cms
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .filter(|n| n.starts_with("prod-"))
        .collect();
    names.sort();
    assert_eq!(
        config_value(&kairn, "kprod", "prod-settings").await.as_deref(),
        Some("prod")
    );
    if common::kubectl_present() {
        let out = std::process::Command::new("kubectl")
            .args(["kustomize"])
            .arg(repo.dir.join("overlays/prod"))
            .output()
            .unwrap();
        let rendered = String::from_utf8_lossy(&out.stdout);
        let mut want: Vec<String> = rendered
            .split("\n---\n")
            .filter(|doc| doc.contains("kind: ConfigMap"))
            .filter_map(|doc| {
                doc.lines()
                    .skip_while(|l| !l.starts_with("metadata:"))
                    .find_map(|l| l.strip_prefix("  name: ").map(str::to_string))
            })
            .collect();
        want.sort();
        assert_eq!(
            names, want,
            "the same ConfigMaps as kubectl kustomize, hash suffix included"
        );
    } else {
        eprintln!("kubectl is not on PATH: not comparing with kubectl kustomize");
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
