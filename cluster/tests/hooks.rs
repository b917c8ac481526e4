//! `POST /hooks/git` against a real member: signed pushes from GitHub, GitLab and Gitea
//! mark the Applications that follow the pushed repository and branch, and nothing else.

use axum::body::Bytes;
use axum::http::{Request, StatusCode};
use hmac::{Hmac, Mac};
use http_body_util::BodyExt;
use kairn_cluster::api::{auth, ApiConfig};
use kairn_cluster::member::Member;
use serde_json::{json, Value};
use sha2::Sha256;

const SECRET: &str = "s3cret";
const APPS: &str = "/apis/kairn.dev/v1/namespaces/kairn-system/applications";
const REFRESH: &str = "kairn.dev/refresh";

struct Hooked {
    member: Member,
    admin: kube::Client,
    /// A client with no token: what a forge is.
    anonymous: kube::Client,
    _dir: tempfile::TempDir,
}

async fn start(secret: Option<&str>) -> Hooked {
    let dir = tempfile::tempdir().unwrap();
    let config = ApiConfig {
        webhook_secret: secret.map(String::from),
        ..Default::default()
    };
    let member = Member::start_local_with(&dir.path().join("store"), &[], config)
        .await
        .unwrap();
    let mut anonymous = member.config_as(auth::ADMIN).unwrap();
    anonymous.auth_info.token = None;
    Hooked {
        admin: member.client().unwrap(),
        anonymous: kube::Client::try_from(anonymous).unwrap(),
        member,
        _dir: dir,
    }
}

async fn send(
    client: &kube::Client,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> (StatusCode, Bytes) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let resp = client
        .send(req.body(kube::client::Body::from(body)).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    (parts.status, body.collect().await.unwrap().to_bytes())
}

impl Hooked {
    async fn create_app(&self, name: &str, repo: &str, revision: &str) {
        let app = json!({"apiVersion": "kairn.dev/v1", "kind": "Application",
            "metadata": {"name": name, "namespace": "kairn-system"},
            "spec": {"source": {"repoURL": repo, "targetRevision": revision, "path": "."}}});
        let (status, body) = send(&self.admin, "POST", APPS, &[], app.to_string().into_bytes()).await;
        assert_eq!(status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
    }

    async fn refreshed_at(&self, name: &str) -> Option<String> {
        let (status, body) = send(&self.admin, "GET", &format!("{APPS}/{name}"), &[], Vec::new()).await;
        assert_eq!(status, StatusCode::OK);
        let app: Value = serde_json::from_slice(&body).unwrap();
        app.pointer("/metadata/annotations")
            .and_then(|a| a.get(REFRESH))
            .and_then(Value::as_str)
            .map(String::from)
    }

    async fn hook(&self, headers: &[(&str, String)], payload: &Value) -> (StatusCode, Value) {
        let (status, body) = send(
            &self.anonymous,
            "POST",
            "/hooks/git",
            headers,
            payload.to_string().into_bytes(),
        )
        .await;
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

fn hmac_hex(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn github_push(git_ref: &str, clone_url: &str) -> Value {
    json!({"ref": git_ref, "after": "0123456789abcdef0123456789abcdef01234567",
        "repository": {"full_name": "org/web", "clone_url": clone_url,
            "html_url": clone_url.trim_end_matches(".git"), "ssh_url": "git@github.com:org/web.git"}})
}

#[tokio::test]
async fn a_signed_github_push_refreshes_only_the_matching_apps() {
    let h = start(Some(SECRET)).await;
    h.create_app("web", "git@github.com:org/web.git", "main").await;
    h.create_app("web-dev", "https://github.com/org/web", "dev").await;
    h.create_app("web-head", "ssh://git@github.com/org/web", "HEAD").await;
    h.create_app("other", "https://github.com/org/other.git", "main").await;

    let push = github_push("refs/heads/main", "https://github.com/org/web.git");
    let sig = format!("sha256={}", hmac_hex(push.to_string().as_bytes()));
    let headers = [("x-github-event", "push".to_string()), ("x-hub-signature-256", sig)];
    let (status, body) = h.hook(&headers, &push).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"refreshed": ["kairn-system/web", "kairn-system/web-head"]})
    );
    let stamp = h.refreshed_at("web").await.expect("web is refreshed");
    assert!(stamp.parse::<k8s_openapi::jiff::Timestamp>().is_ok(), "{stamp}");
    assert!(h.refreshed_at("web-head").await.is_some());
    assert_eq!(h.refreshed_at("web-dev").await, None);
    assert_eq!(h.refreshed_at("other").await, None);

    // A bad or missing signature is refused and changes nothing.
    let dev = github_push("refs/heads/dev", "https://github.com/org/web.git");
    let bad = [("x-hub-signature-256", format!("sha256={}", hmac_hex(b"something else")))];
    assert_eq!(h.hook(&bad, &dev).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(h.hook(&[], &dev).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(h.refreshed_at("web-dev").await, None);
    assert_eq!(h.refreshed_at("web").await, Some(stamp));

    // A signed body that is not a push event is a clear 400.
    let junk = json!({"zen": "hello"});
    let sig = format!("sha256={}", hmac_hex(junk.to_string().as_bytes()));
    let (status, body) = h.hook(&[("x-hub-signature-256", sig)], &junk).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not a git push event"),
        "{body}"
    );
    h.member.stop().await.unwrap();
}

#[tokio::test]
async fn gitlab_tokens_and_gitea_signatures_are_accepted() {
    let h = start(Some(SECRET)).await;
    h.create_app("web-dev", "https://gitlab.example.com/group/web.git", "dev")
        .await;
    h.create_app("web-v1", "https://gitlab.example.com/group/web", "v1")
        .await;

    let gitlab = json!({"object_kind": "push", "ref": "refs/heads/dev",
        "project": {"git_http_url": "https://gitlab.example.com/group/web.git",
            "git_ssh_url": "git@gitlab.example.com:group/web.git", "web_url": "https://gitlab.example.com/group/web"},
        "repository": {"url": "git@gitlab.example.com:group/web.git", "homepage": "https://gitlab.example.com/group/web"}});
    let (status, _) = h.hook(&[("x-gitlab-token", "wrong".to_string())], &gitlab).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = h.hook(&[("x-gitlab-token", SECRET.to_string())], &gitlab).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"refreshed": ["kairn-system/web-dev"]}));

    // A Gitea tag push: the app following the tag.
    let gitea = json!({"ref": "refs/tags/v1", "repository": {"clone_url": "https://gitlab.example.com/group/web.git",
        "html_url": "https://gitlab.example.com/group/web", "ssh_url": "git@gitlab.example.com:group/web.git"}});
    let sig = hmac_hex(gitea.to_string().as_bytes());
    let (status, body) = h.hook(&[("x-gitea-signature", sig)], &gitea).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"refreshed": ["kairn-system/web-v1"]}));
    assert!(h.refreshed_at("web-v1").await.is_some());
    h.member.stop().await.unwrap();
}

#[tokio::test]
async fn without_a_secret_any_push_is_accepted() {
    let h = start(None).await;
    h.create_app("web", "https://github.com/org/web", "main").await;
    let push = github_push("refs/heads/main", "https://github.com/org/web.git");
    let (status, body) = h.hook(&[], &push).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"refreshed": ["kairn-system/web"]}));
    let (status, _) = send(&h.anonymous, "POST", "/hooks/git", &[], b"not json".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    h.member.stop().await.unwrap();
}
