//! `POST /hooks/git`: push webhooks from GitHub, Gitea and GitLab. A push marks every
//! Application following the pushed repository and ref with the `kairn.dev/refresh`
//! annotation, so the reconciler (which watches Applications) fetches at once instead of
//! waiting for its next poll.
//!
//! Forges cannot send a bearer token, so the route is public; when a secret is configured
//! the payload must be signed with it (GitHub `X-Hub-Signature-256`, Gitea
//! `X-Gitea-Signature`: HMAC-SHA256 of the body; GitLab `X-Gitlab-Token`: the secret).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::admission::FieldValidation;
use super::cache::{Filter, ReadAt};
use super::objects::{self, Mode, Target, WriteOptions};
use super::{registry, ApiError, AppState, UserInfo};

/// The annotation a push sets (RFC 3339 time): a change the reconciler wakes up on.
pub const REFRESH_ANNOTATION: &str = "kairn.dev/refresh";
/// The user the webhook writes as.
pub const WEBHOOK_USER: &str = "system:kairn:webhook";
/// The path of the webhook.
pub const PATH: &str = "/hooks/git";

/// What a push event says: the ref and every URL the repository is known by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The pushed ref (`refs/heads/main`, `refs/tags/v1`).
    pub git_ref: String,
    /// The repository's URLs (clone, ssh, web), as sent.
    pub urls: Vec<String>,
}

/// Handles one webhook delivery.
pub async fn handle(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match refresh(&state, &headers, body).await {
        Ok(refreshed) => (StatusCode::OK, Json(json!({ "refreshed": refreshed }))).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn refresh(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Vec<String>, ApiError> {
    let body = super::body_or_error(body, super::MAX_OBJECT_BODY)?;
    if let Some(secret) = state.config.webhook_secret.as_deref() {
        if !verify(headers, &body, secret) {
            tracing::warn!("git webhook: missing or bad signature");
            return Err(ApiError::Unauthorized);
        }
    }
    // GitHub's hello when a hook is created: nothing was pushed.
    if header(headers, "x-github-event") == Some("ping") {
        return Ok(Vec::new());
    }
    let push = parse(&body)?;
    let wanted: Vec<String> = push.urls.iter().map(|u| normalize_url(u)).collect();
    let res = registry::by_plural("kairn.dev", "v1", "applications")
        .ok_or_else(|| ApiError::Internal("applications are not served".into()))?;
    let cache = state.caches.get(res)?;
    cache.prepare(&state.store, ReadAt::Newest).await?;
    let page = cache.list(&Filter::default(), None, None, ReadAt::Newest)?;
    let opts = WriteOptions {
        dry_run: false,
        // Only an annotation changes: the rest of the object is as stored.
        fields: FieldValidation::Ignore,
        manager: Some("kairn-webhook".into()),
        user: Arc::new(UserInfo {
            name: WEBHOOK_USER.into(),
            uid: String::new(),
            groups: vec!["system:authenticated".into()],
        }),
        verb: "patch".into(),
    };
    let mut refreshed = Vec::new();
    for item in page.items {
        let app = item.value()?;
        if !follows(&app, &wanted, &push.git_ref) {
            continue;
        }
        let name = app
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let ns = app
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let target = Target {
            res,
            namespace: Some(ns.to_string()),
            name: Some(name.to_string()),
            sub: None,
        };
        // Nanoseconds: two pushes in one second still change the object.
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let change = |live: &Value| {
            let mut obj = live.clone();
            if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                // Unpinned, so a concurrent write is retried rather than refused.
                meta.remove("resourceVersion");
                let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
                if !annotations.is_object() {
                    *annotations = json!({});
                }
                annotations[REFRESH_ANNOTATION] = json!(now);
            }
            Ok(obj)
        };
        match objects::update(state, &target, Mode::Main, change, &opts).await {
            Ok(_) => refreshed.push(format!("{ns}/{name}")),
            // Deleted since it was listed: nothing to refresh.
            Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    tracing::info!(git_ref = %push.git_ref, repository = ?push.urls.first(), refreshed = ?refreshed, "git push webhook");
    Ok(refreshed)
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether the delivery carries a valid signature (or token) for `secret`.
pub fn verify(headers: &HeaderMap, body: &[u8], secret: &str) -> bool {
    let hmac_ok = |hex_sig: &str| {
        let Ok(sig) = hex::decode(hex_sig.trim()) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
            return false;
        };
        mac.update(body);
        // Constant-time comparison.
        mac.verify_slice(&sig).is_ok()
    };
    if let Some(sig) = header(headers, "x-hub-signature-256") {
        return sig.strip_prefix("sha256=").is_some_and(hmac_ok);
    }
    if let Some(sig) = header(headers, "x-gitea-signature") {
        return hmac_ok(sig);
    }
    if let Some(token) = header(headers, "x-gitlab-token") {
        return bool::from(token.as_bytes().ct_eq(secret.as_bytes()));
    }
    false
}

/// Reads a GitHub, Gitea or GitLab push payload.
pub fn parse(body: &[u8]) -> Result<Push, ApiError> {
    let bad = |why: &str| ApiError::BadRequest(format!("not a git push event: {why}"));
    let payload: Value = serde_json::from_slice(body).map_err(|e| bad(&format!("the body is not JSON ({e})")))?;
    let git_ref = payload
        .get("ref")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| bad("no \"ref\""))?
        .to_string();
    let pointers = [
        "/repository/clone_url",
        "/repository/html_url",
        "/repository/ssh_url",
        "/repository/git_url",
        "/repository/url",
        "/repository/git_http_url",
        "/repository/git_ssh_url",
        "/repository/homepage",
        "/project/git_http_url",
        "/project/git_ssh_url",
        "/project/web_url",
    ];
    let mut urls: Vec<String> = Vec::new();
    for p in pointers {
        if let Some(url) = payload.pointer(p).and_then(Value::as_str).filter(|u| !u.is_empty()) {
            if !urls.iter().any(|u| u == url) {
                urls.push(url.to_string());
            }
        }
    }
    if urls.is_empty() {
        return Err(bad("no repository URL (repository.clone_url, project.git_http_url...)"));
    }
    Ok(Push { git_ref, urls })
}

/// A repository URL reduced to `host/path` for matching: no scheme, user, port, `.git` or
/// trailing `/`, the host lowercased; `git@host:org/repo` becomes `host/org/repo`.
pub fn normalize_url(url: &str) -> String {
    let url = url.trim();
    let rest = match url.split_once("://") {
        Some((_, rest)) => rest.to_string(),
        // scp-like `user@host:path`: the first colon separates host and path.
        None => match url.split_once(':') {
            Some((host, path)) if !host.contains('/') => format!("{host}/{}", path.trim_start_matches('/')),
            _ => url.to_string(),
        },
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest.as_str(), ""));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    // A port is the transport's (22, 443, 2222...), not the repository's.
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path).trim_end_matches('/');
    format!("{}/{}", host.to_ascii_lowercase(), path.trim_start_matches('/'))
}

/// Whether `target_revision` follows `git_ref`: the same branch or tag; `HEAD` or nothing
/// follows every push.
pub fn revision_matches(target_revision: &str, git_ref: &str) -> bool {
    let revision = target_revision.trim();
    if revision.is_empty() || revision == "HEAD" || revision == git_ref {
        return true;
    }
    let short = git_ref
        .strip_prefix("refs/heads/")
        .or_else(|| git_ref.strip_prefix("refs/tags/"))
        .unwrap_or(git_ref);
    revision == short
}

/// Whether the Application follows one of `urls` (normalized) at `git_ref`.
pub fn follows(app: &Value, urls: &[String], git_ref: &str) -> bool {
    let field = |pointer: &str| {
        app.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let repo = field("/spec/source/repoURL");
    if repo.trim().is_empty() {
        return false;
    }
    let repo = normalize_url(&repo);
    urls.contains(&repo) && revision_matches(&field("/spec/source/targetRevision"), git_ref)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_normalize_across_schemes() {
        let canonical = "github.com/org/repo";
        for url in [
            "https://github.com/org/repo",
            "https://GitHub.com/org/repo.git",
            "https://github.com/org/repo/",
            "http://bob:token@github.com/org/repo.git/",
            "git@github.com:org/repo.git",
            "ssh://git@github.com/org/repo.git",
            "ssh://git@github.com:22/org/repo",
            "git://github.com/org/repo.git",
            "github.com/org/repo",
        ] {
            assert_eq!(normalize_url(url), canonical, "{url}");
        }
        assert_ne!(normalize_url("https://github.com/org/other"), canonical);
        assert_ne!(normalize_url("https://gitlab.com/org/repo"), canonical);
        assert_eq!(
            normalize_url("ssh://git@gitlab.example.com:2222/group/sub/repo.git"),
            "gitlab.example.com/group/sub/repo"
        );
    }

    #[test]
    fn revisions_match_branches_tags_and_head() {
        assert!(revision_matches("main", "refs/heads/main"));
        assert!(!revision_matches("main", "refs/heads/dev"));
        assert!(revision_matches("v1.2", "refs/tags/v1.2"));
        assert!(!revision_matches("v1.2", "refs/heads/main"));
        assert!(revision_matches("HEAD", "refs/heads/anything"));
        assert!(revision_matches("", "refs/tags/x"));
        assert!(revision_matches("refs/heads/main", "refs/heads/main"));
    }

    #[test]
    fn apps_match_on_their_source() {
        let urls = vec![normalize_url("https://github.com/org/repo.git")];
        let new = json!({"spec": {"source": {"repoURL": "git@github.com:org/repo", "targetRevision": "main"}}});
        assert!(follows(&new, &urls, "refs/heads/main"));
        assert!(!follows(&new, &urls, "refs/heads/dev"));
        assert!(!follows(&json!({"spec": {}}), &urls, "refs/heads/main"));
    }

    #[test]
    fn payloads_of_each_forge_parse() {
        let github = json!({"ref": "refs/heads/main", "repository": {"clone_url": "https://github.com/o/r.git",
            "html_url": "https://github.com/o/r", "ssh_url": "git@github.com:o/r.git"}});
        let push = parse(github.to_string().as_bytes()).unwrap();
        assert_eq!(push.git_ref, "refs/heads/main");
        assert_eq!(push.urls.len(), 3);
        let gitlab = json!({"ref": "refs/tags/v1", "project": {"git_http_url": "https://gitlab.com/g/r.git",
            "git_ssh_url": "git@gitlab.com:g/r.git", "web_url": "https://gitlab.com/g/r"},
            "repository": {"url": "git@gitlab.com:g/r.git", "homepage": "https://gitlab.com/g/r"}});
        let push = parse(gitlab.to_string().as_bytes()).unwrap();
        assert!(push.urls.contains(&"https://gitlab.com/g/r.git".to_string()));
        assert!(matches!(parse(b"not json"), Err(ApiError::BadRequest(_))));
        assert!(matches!(
            parse(br#"{"ref": "refs/heads/x"}"#),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse(br#"{"repository": {"clone_url": "x"}}"#),
            Err(ApiError::BadRequest(_))
        ));
    }

    #[test]
    fn signatures_are_checked() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(body);
        let sig = hex::encode(mac.finalize().into_bytes());
        let with = |name: &'static str, value: String| {
            let mut h = HeaderMap::new();
            h.insert(name, value.parse().unwrap());
            h
        };
        assert!(verify(
            &with("x-hub-signature-256", format!("sha256={sig}")),
            body,
            "s3cret"
        ));
        assert!(!verify(&with("x-hub-signature-256", sig.clone()), body, "s3cret"));
        assert!(!verify(
            &with("x-hub-signature-256", format!("sha256={sig}")),
            b"other",
            "s3cret"
        ));
        assert!(verify(&with("x-gitea-signature", sig.clone()), body, "s3cret"));
        assert!(!verify(&with("x-gitea-signature", "zz".into()), body, "s3cret"));
        assert!(verify(&with("x-gitlab-token", "s3cret".into()), body, "s3cret"));
        assert!(!verify(&with("x-gitlab-token", "s3cre".into()), body, "s3cret"));
        assert!(!verify(&HeaderMap::new(), body, "s3cret"));
    }
}
