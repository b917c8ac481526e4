//! Who is asking. Every request carries a user: static bearer tokens, as kube-apiserver's
//! `--token-auth-file` (CSV lines `token,user,uid,"group1,group2"`). An unknown or
//! missing token is 401 `Unauthorized`, except on the public endpoints kube-apiserver
//! shows to `system:anonymous` (`/version`, `/healthz`, `/livez`, `/readyz`).
//!
//! Authorization (RBAC) comes later; the user is recorded now, for the audit trail.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// The admin user `kairn up` puts in its kubeconfig.
pub const ADMIN: &str = "kairn-admin";
/// The scheduler's identity.
pub const SCHEDULER: &str = "system:kube-scheduler";
/// The controller manager's identity.
pub const CONTROLLER_MANAGER: &str = "system:kube-controller-manager";
/// The GitOps reconciler's identity.
pub const RECONCILER: &str = "system:kairn-reconciler";
/// The group of every authenticated user.
pub const AUTHENTICATED: &str = "system:authenticated";

/// The identity of a node agent.
pub fn node_user(node: &str) -> String {
    format!("system:node:{node}")
}

/// The User-Agent of a client acting as `user`. A write with no `fieldManager` is
/// recorded under the agent's first word (as kube-apiserver does), so the components'
/// writes show in managedFields under Kubernetes' names: `kube-scheduler`,
/// `kube-controller-manager`, `kubelet`.
pub fn user_agent(user: &str) -> String {
    let product = match user {
        SCHEDULER => "kube-scheduler",
        CONTROLLER_MANAGER => "kube-controller-manager",
        RECONCILER => "kairn-reconciler",
        node if node.starts_with("system:node:") => "kubelet",
        _ => "kairn",
    };
    format!("{product}/v{} kairn", env!("CARGO_PKG_VERSION"))
}

/// The users a control plane always has: the admin and its components' identities.
pub const STANDARD_USERS: &[(&str, &[&str])] = &[
    (ADMIN, &["system:masters"]),
    (SCHEDULER, &[]),
    (CONTROLLER_MANAGER, &[]),
    (RECONCILER, &[]),
];

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// User name, e.g. `system:kube-scheduler`.
    pub name: String,
    /// Stable id.
    pub uid: String,
    /// Groups, e.g. `system:masters`.
    pub groups: Vec<String>,
}

impl UserInfo {
    /// The anonymous user of public endpoints.
    pub fn anonymous() -> Self {
        UserInfo {
            name: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
        }
    }
}

/// Why a token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read or written.
    #[error("token file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// A line is not `token,user,uid[,"groups"]`.
    #[error("token file {path} line {line}: {message}")]
    Malformed { path: String, line: usize, message: String },
}

/// Maps bearer tokens to users.
#[derive(Debug, Default, Clone)]
pub struct Authenticator {
    tokens: HashMap<String, UserInfo>,
}

/// Splits one CSV line, honouring double quotes (groups are a quoted, comma-separated list).
fn csv_fields(line: &str) -> Vec<String> {
    let (mut fields, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    fields.push(cur);
    fields.into_iter().map(|f| f.trim().to_string()).collect()
}

impl Authenticator {
    /// Reads a kube-apiserver token file.
    pub fn from_file(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses the content of a token file (`origin` names it in errors).
    pub fn parse(text: &str, origin: &str) -> Result<Self, AuthError> {
        let mut tokens = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = csv_fields(line);
            if fields.len() < 3 || fields[0].is_empty() || fields[1].is_empty() {
                return Err(AuthError::Malformed {
                    path: origin.to_string(),
                    line: n + 1,
                    message: "expected token,user,uid[,\"group1,group2\"]".into(),
                });
            }
            let mut groups: Vec<String> = fields[3..]
                .iter()
                .flat_map(|g| g.split(','))
                .map(|g| g.trim().to_string())
                .filter(|g| !g.is_empty())
                .collect();
            groups.push(AUTHENTICATED.into());
            tokens.insert(
                fields[0].clone(),
                UserInfo {
                    name: fields[1].clone(),
                    uid: fields[2].clone(),
                    groups,
                },
            );
        }
        Ok(Authenticator { tokens })
    }

    /// An authenticator with a fresh random token for each of `users` (name, groups).
    pub fn with_users(users: &[(&str, &[&str])]) -> Self {
        let mut text = String::new();
        for (name, groups) in users {
            text.push_str(&format!(
                "{},{name},{},\"{}\"\n",
                new_token(),
                uuid::Uuid::new_v4(),
                groups.join(",")
            ));
        }
        // The lines were just written in the expected form.
        Self::parse(&text, "generated").unwrap_or_default()
    }

    /// The user a request's `Authorization` header names.
    pub fn authenticate(&self, authorization: Option<&str>) -> Option<&UserInfo> {
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        self.tokens.get(token)
    }

    /// The token of user `name`, if the file has one (for writing kubeconfigs).
    pub fn token_of(&self, name: &str) -> Option<&str> {
        self.tokens
            .iter()
            .find(|(_, u)| u.name == name)
            .map(|(t, _)| t.as_str())
    }
}

/// A fresh random token (244 bits from two v4 UUIDs).
pub fn new_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// Makes sure `path` holds a token for each of `users` (name, groups), adding lines for
/// missing ones, and returns the authenticator it now describes. `kairn up` and
/// `kairn server` keep their identities this way across restarts.
pub fn ensure_token_file(path: &Path, users: &[(&str, &[&str])]) -> Result<Authenticator, AuthError> {
    let io = |source| AuthError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let existing = Authenticator::parse(&text, &path.display().to_string())?;
    let mut changed = false;
    for (name, groups) in users {
        if existing.token_of(name).is_none() {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!(
                "{},{name},{},\"{}\"\n",
                new_token(),
                uuid::Uuid::new_v4(),
                groups.join(",")
            ));
            changed = true;
        }
    }
    if changed {
        write_private(path, &text).map_err(io)?;
    }
    Authenticator::parse(&text, &path.display().to_string())
}

/// Writes a file only its owner can read (it holds credentials).
pub fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content.as_bytes())
}

/// Paths anyone may read, as kube-apiserver's `system:public-info-viewer`.
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/version" | "/version/" | "/healthz" | "/livez" | "/readyz" | super::hooks::PATH
    )
}

/// Axum middleware: resolves the user and stores it in the request's extensions.
pub async fn authenticate(State(auth): State<Arc<Authenticator>>, mut req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let user = match auth.authenticate(header) {
        Some(u) => u.clone(),
        None if is_public(req.uri().path()) => UserInfo::anonymous(),
        None => return ApiError::Unauthorized.into_response(),
    };
    req.extensions_mut().insert(Arc::new(user));
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_known_by_kubernetes_names() {
        let product = |user: &str| user_agent(user).split('/').next().unwrap_or_default().to_string();
        assert_eq!(product(SCHEDULER), "kube-scheduler");
        assert_eq!(product(CONTROLLER_MANAGER), "kube-controller-manager");
        assert_eq!(product(&node_user("n1")), "kubelet");
        assert_eq!(product(RECONCILER), "kairn-reconciler");
        assert_eq!(product(ADMIN), "kairn");
        assert_eq!(product(""), "kairn");
    }

    #[test]
    fn token_files_read_like_kube_apiservers() {
        let auth = Authenticator::parse(
            "# comment\nabc,alice,1,\"dev,ops\"\ndef,system:node:n1,2\n",
            "tokens.csv",
        )
        .unwrap();
        let alice = auth.authenticate(Some("Bearer abc")).unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.groups, ["dev", "ops", AUTHENTICATED]);
        assert_eq!(auth.authenticate(Some("Bearer def")).unwrap().name, "system:node:n1");
        assert!(auth.authenticate(Some("Bearer nope")).is_none());
        assert!(auth.authenticate(None).is_none());
        assert!(Authenticator::parse("onlytoken\n", "t").is_err());
    }

    #[test]
    fn ensure_adds_missing_users_and_keeps_existing_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.csv");
        let first = ensure_token_file(&path, &[(ADMIN, &["system:masters"])]).unwrap();
        let admin = first.token_of(ADMIN).unwrap().to_string();
        let second = ensure_token_file(&path, &[(ADMIN, &["system:masters"]), (SCHEDULER, &[])]).unwrap();
        assert_eq!(second.token_of(ADMIN), Some(admin.as_str()));
        assert!(second.token_of(SCHEDULER).is_some());
        let mode = std::fs::metadata(&path).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
        assert_eq!(mode.unwrap() & 0o777, 0o600);
    }
}
