//! A remote source end to end: a repository served over HTTP by the real
//! `git http-backend`, followed through a `file://` URL and through `http://`, a push
//! webhook that makes the reconciler fetch at once, a rollback pushed to the remote, and
//! an outage that leaves the cluster on its last synced commit with a clear condition.

mod common;
#[path = "common/git_http.rs"]
mod git_http;

use std::path::Path;
use std::time::Duration;

use common::{wait_for, Kairn, Repo};
use k8s_openapi::api::core::v1::ConfigMap;
use kairn_cluster::kinds::{Application, ApplicationSource, ApplicationSpec, SyncPolicy};
use kube::api::PostParams;
use kube::Api;
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(60);

fn config_map(value: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: remote\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: remote\ndata:\n  value: \"{value}\"\n")
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=Pusher", "-c", "user.email=pusher@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn value(kairn: &Kairn) -> Option<String> {
    let cms: Api<ConfigMap> = Api::namespaced(kairn.client.clone(), "remote");
    cms.get_opt("settings")
        .await
        .ok()
        .flatten()
        .and_then(|c| c.data?.get("value").cloned())
}

async fn status(kairn: &Kairn, name: &str) -> Value {
    let apps: Api<Application> = Api::namespaced(kairn.client.clone(), "kairn-system");
    serde_json::to_value(apps.get(name).await.unwrap().status.unwrap_or_default()).unwrap()
}

/// Sends a GitHub-style push notification for `url` to the API server.
async fn push_hook(kairn: &Kairn, url: &str) -> Value {
    let payload = json!({"ref": "refs/heads/main", "repository": {"clone_url": url}});
    let request = http::Request::post("/hooks/git")
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .body(payload.to_string().into_bytes())
        .unwrap();
    let text = kairn.client.request_text(request).await.expect("the hook is accepted");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn a_remote_syncs_on_push_rolls_back_by_push_and_survives_an_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let boot = Repo::init(&tmp.path().join("boot"));
    boot.commit_file("README.md", "bootstrap\n", "empty");
    let kairn = Kairn::up(&tmp.path().join("data"), &boot.dir).await;

    // A bare repository served over HTTP, and a work tree that pushes to it.
    let served = tmp.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    git(&served, &["init", "-q", "--bare", "-b", "main", "app.git"]);
    let work = Repo::init(&tmp.path().join("work"));
    work.git(&["remote", "add", "origin", served.join("app.git").to_str().unwrap()]);
    let v1 = work.commit_file("app.yaml", &config_map("one"), "one");
    work.git(&["push", "-q", "origin", "main"]);
    let server = git_http::GitHttp::start(&served);
    let url = server.url_of("app.git");

    // Polled once an hour: only the first fetch and the webhook bring commits in.
    let apps: Api<Application> = Api::namespaced(kairn.client.clone(), "kairn-system");
    let spec = ApplicationSpec {
        source: ApplicationSource {
            repo_url: url.clone(),
            target_revision: "main".into(),
            path: String::new(),
            poll_interval_seconds: Some(3600),
        },
        sync_policy: SyncPolicy {
            automated: true,
            prune: true,
            self_heal: false,
        },
        ..Default::default()
    };
    apps.create(&PostParams::default(), &Application::new("remote", spec))
        .await
        .unwrap();
    wait_for("the first commit from the remote", TIMEOUT, || async {
        (status(&kairn, "remote").await["syncedRevision"] == v1.as_str()).then_some(())
    })
    .await;
    assert!(
        kairn.data_dir.join("repos").read_dir().unwrap().count() == 1,
        "one mirror under <data-dir>/repos"
    );

    // A push, then its webhook: fetched and synced at once.
    let v2 = work.commit_file("app.yaml", &config_map("two"), "two");
    work.git(&["push", "-q", "origin", "main"]);
    let answer = push_hook(&kairn, &url).await;
    assert_eq!(answer["refreshed"], json!(["kairn-system/remote"]), "{answer}");
    wait_for("the pushed commit", Duration::from_secs(15), || async {
        (status(&kairn, "remote").await["syncedRevision"] == v2.as_str()).then_some(())
    })
    .await;
    assert_eq!(value(&kairn).await.as_deref(), Some("two"));

    // Rollback writes a revert commit and pushes it to the remote; the sync applies it.
    let cli_data = tmp.path().join("cli");
    let (code, out, err) = kairn.cli(&[
        "rollback",
        "remote",
        "--author",
        "Rita <rita@example.com>",
        "--data-dir",
        cli_data.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("(pushed)"), "{out}");
    let remote_head = git(&served.join("app.git"), &["rev-parse", "main"]);
    assert_ne!(remote_head, v2);
    assert_eq!(git(&served.join("app.git"), &["log", "-1", "--format=%an"]), "Rita");
    push_hook(&kairn, &url).await;
    wait_for("the pushed revert", Duration::from_secs(15), || async {
        (status(&kairn, "remote").await["syncedRevision"] == remote_head.as_str()).then_some(())
    })
    .await;
    assert_eq!(value(&kairn).await.as_deref(), Some("one"));

    // The remote goes away: the cluster stays on its last commit, and says why.
    server.stop();
    push_hook(&kairn, &url).await;
    let st = wait_for("a source condition", TIMEOUT, || async {
        let st = status(&kairn, "remote").await;
        st["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "SourceError"))
            .then_some(st)
    })
    .await;
    let condition = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "SourceError")
        .unwrap()
        .clone();
    assert!(
        condition["message"].as_str().unwrap().contains("fetching"),
        "{condition}"
    );
    assert_eq!(st["syncedRevision"], remote_head.as_str());
    assert_eq!(value(&kairn).await.as_deref(), Some("one"));
    let (_, out, _) = kairn.cli(&["status", "remote"]);
    assert!(out.contains("condition: SourceError: fetching"), "{out}");
}

#[tokio::test]
async fn a_file_url_is_followed_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("app"));
    let sha = repo.commit_file("app.yaml", &config_map("file"), "file");
    let url = format!("file://{}", repo.dir.display());
    let kairn = Kairn::up(&tmp.path().join("data"), Path::new(&url)).await;
    wait_for("the file:// repository synced", TIMEOUT, || async {
        let (_, out, _) = kairn.cli(&["status", "-o", "json"]);
        let apps: Vec<Value> = serde_json::from_str(&out).ok()?;
        apps.iter()
            .any(|a| a["status"]["syncedRevision"] == sha.as_str())
            .then_some(())
    })
    .await;
    assert_eq!(value(&kairn).await.as_deref(), Some("file"));
}
