//! Remote repositories: a bare mirror per URL under `<data_dir>/repos`, fetched with git2
//! (branches and tags, pruned, never re-cloned), credentials from the URL or ssh-agent,
//! and reverts pushed to the origin before the mirror moves.
//!
//! The URL given to libgit2 never carries a password (credentials go through the callback),
//! so libgit2's own error messages cannot leak one; logs and errors use [`redacted`].

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use git2::{
    AutotagOption, Cred, CredentialType, Direction, FetchOptions, FetchPrune, ObjectType, Oid, PushOptions,
    RemoteCallbacks, Repository,
};

use super::revert::{self, Request};
use super::{git, CommitInfo, SourceError};

/// Schemes fetched over the network.
const REMOTE_SCHEMES: &[&str] = &["http://", "https://", "ssh://", "git://", "git+ssh://", "ssh+git://"];

/// Temporary ref a revert commit is pushed from (libgit2 pushes refs, not bare ids).
const PUSH_REF: &str = "refs/kairn/revert";

/// How many times the credentials callback answers before giving up (libgit2 asks again
/// after every rejected credential).
const MAX_AUTH_ATTEMPTS: u32 = 4;

/// Whether `url` names a remote repository (a network scheme, or scp-like `user@host:path`).
pub fn is_remote(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    if REMOTE_SCHEMES.iter().any(|s| lower.starts_with(s)) {
        return true;
    }
    // scp-like: `host:path` with no slash before the colon (a path like `./a:b` has one).
    match url.split_once(':') {
        Some((host, path)) => !url.contains("://") && !host.contains('/') && host.len() > 1 && !path.is_empty(),
        None => false,
    }
}

/// The URL with its password (and a bare http user, which is usually a token) hidden.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    let hidden = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None if scheme.starts_with("http") => "***".to_string(),
        None => userinfo.to_string(),
    };
    format!("{scheme}://{hidden}{}", &rest[at..])
}

/// Credentials written into a URL (`user:token@`).
#[derive(Debug, Default, Clone)]
struct UrlCredentials {
    user: Option<String>,
    password: Option<String>,
}

/// The URL without `user:password@` for http(s) (given to libgit2), and what was there.
/// Other schemes keep their user (`ssh://git@host/...`), which is not a secret.
fn split_credentials(url: &str) -> (String, UrlCredentials) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), UrlCredentials::default());
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return (url.to_string(), UrlCredentials::default());
    };
    let (user, password) = match rest[..at].split_once(':') {
        Some((u, p)) => (percent_decode(u), Some(percent_decode(p))),
        None => (percent_decode(&rest[..at]), None),
    };
    if !scheme.to_ascii_lowercase().starts_with("http") {
        return (
            url.to_string(),
            UrlCredentials {
                user: Some(user),
                password,
            },
        );
    }
    let clean = format!("{scheme}://{}", &rest[at + 1..]);
    (
        clean,
        UrlCredentials {
            user: Some(user),
            password,
        },
    )
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mirror's directory name: the URL's host and path made file-name safe, and a short
/// hash of the URL (without credentials) so that distinct URLs never share a mirror.
pub fn mirror_name(url: &str) -> String {
    let (clean, _) = split_credentials(url);
    let without_scheme = clean.split_once("://").map_or(clean.as_str(), |(_, rest)| rest);
    let without_user = match without_scheme.split_once('@') {
        Some((user, rest)) if !user.contains('/') => rest,
        _ => without_scheme,
    };
    let mut name = String::new();
    for c in without_user.trim_end_matches('/').trim_end_matches(".git").chars() {
        if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
            name.push(c.to_ascii_lowercase());
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    let name: String = name.trim_matches(|c| c == '-' || c == '.').chars().take(64).collect();
    let hash = Oid::hash_object(ObjectType::Blob, clean.as_bytes())
        .map(|id| id.to_string())
        .unwrap_or_default();
    format!(
        "{}-{}",
        if name.is_empty() { "repo" } else { &name },
        &hash[..hash.len().min(12)]
    )
}

/// One lock per mirror: two Applications on one repository must not fetch into it at once
/// (libgit2 would fail to lock its refs).
fn mirror_lock(mirror: &Path) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    locks.entry(mirror.to_path_buf()).or_default().clone()
}

/// Callbacks answering libgit2's credential requests: the URL's user and token for
/// http(s); ssh-agent, then `~/.ssh/id_ed25519` and `id_rsa`, for ssh.
fn callbacks<'a>(creds: &'a UrlCredentials, attempts: &'a Cell<u32>) -> RemoteCallbacks<'a> {
    let mut cb = RemoteCallbacks::new();
    cb.credentials(move |_url, username_from_url, allowed| {
        let n = attempts.get();
        attempts.set(n + 1);
        if n >= MAX_AUTH_ATTEMPTS {
            return Err(git2::Error::from_str(
                "authentication failed (no more credentials to try)",
            ));
        }
        let user = username_from_url
            .map(String::from)
            .or_else(|| creds.user.clone())
            .unwrap_or_else(|| "git".to_string());
        if allowed.contains(CredentialType::USERNAME) {
            return Cred::username(&user);
        }
        if allowed.contains(CredentialType::SSH_KEY) {
            // First attempt: the agent; then the usual key files, in order.
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
            let keys: Vec<PathBuf> = ["id_ed25519", "id_rsa"]
                .iter()
                .map(|k| home.join(".ssh").join(k))
                .filter(|k| k.exists())
                .collect();
            return match n {
                0 => Cred::ssh_key_from_agent(&user),
                n => match keys.get(n as usize - 1) {
                    Some(key) => Cred::ssh_key(&user, None, key, None),
                    None => Err(git2::Error::from_str(
                        "no ssh key accepted (tried ssh-agent and ~/.ssh)",
                    )),
                },
            };
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            if let Some(user) = &creds.user {
                return Cred::userpass_plaintext(user, creds.password.as_deref().unwrap_or(""));
            }
            return Err(git2::Error::from_str(
                "the server asks for credentials; put user:token@ in the repository URL",
            ));
        }
        Err(git2::Error::from_str("no supported credential type"))
    });
    cb
}

/// Opens the mirror, creating it (bare) on first use.
fn open_mirror(mirror: &Path) -> Result<Repository, SourceError> {
    if mirror.join("HEAD").exists() {
        return Repository::open_bare(mirror).map_err(git(format!("opening the mirror {}", mirror.display())));
    }
    std::fs::create_dir_all(mirror).map_err(|source| SourceError::Io {
        path: mirror.display().to_string(),
        source,
    })?;
    Repository::init_bare(mirror).map_err(git(format!("creating the mirror {}", mirror.display())))
}

/// Fetches `url` into the mirror (the caller holds the mirror's lock).
fn fetch_locked(url: &str, mirror: &Path) -> Result<Repository, SourceError> {
    let r = open_mirror(mirror)?;
    let (clean, creds) = split_credentials(url);
    let attempts = Cell::new(0);
    let fetch_error = |source| SourceError::Fetch {
        url: redacted(url),
        source,
    };
    {
        let mut remote = r.remote_anonymous(&clean).map_err(fetch_error)?;
        // The mirror's HEAD follows the remote's default branch, learned once (a bare
        // init points it at an unborn `master`).
        if r.head().is_err() {
            let conn = remote
                .connect_auth(Direction::Fetch, Some(callbacks(&creds, &attempts)), None)
                .map_err(fetch_error)?;
            if let Ok(Ok(head)) = conn.default_branch().map(|b| b.as_str().map(String::from)) {
                drop(conn);
                r.set_head(&head).map_err(git("setting the mirror's HEAD"))?;
            }
        }
        attempts.set(0);
        let mut opts = FetchOptions::new();
        opts.remote_callbacks(callbacks(&creds, &attempts))
            .prune(FetchPrune::On)
            .download_tags(AutotagOption::None);
        remote
            .fetch(
                &["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
                Some(&mut opts),
                Some("kairn: fetch"),
            )
            .map_err(fetch_error)?;
    }
    tracing::debug!(url = %redacted(url), mirror = %mirror.display(), "fetched");
    Ok(r)
}

/// Fetches `url` into the bare mirror at `mirror`.
pub fn fetch(url: &str, mirror: &Path) -> Result<Repository, SourceError> {
    let lock = mirror_lock(mirror);
    let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
    fetch_locked(url, mirror)
}

/// Fetches, writes the revert on top of the remote branch, pushes it, and only then moves
/// the mirror's branch.
pub fn revert(url: &str, mirror: &Path, req: &Request) -> Result<CommitInfo, SourceError> {
    let lock = mirror_lock(mirror);
    let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
    // Fresh first: the revert goes on the branch as the origin has it now.
    let r = fetch_locked(url, mirror)?;
    let refname = format!("refs/heads/{}", req.branch);
    let tip = r.refname_to_id(&refname).map_err(git(format!("resolving {refname}")))?;
    let id = revert::build(&r, tip, req)?;
    r.reference(PUSH_REF, id, true, "kairn: revert to push")
        .map_err(git("writing the push ref"))?;
    let pushed = push(&r, url, &refname);
    if let Ok(mut tmp) = r.find_reference(PUSH_REF) {
        let _ = tmp.delete();
    }
    pushed?;
    r.reference_matching(&refname, id, true, tip, "kairn: revert pushed")
        .map_err(git(format!("moving the mirror's {refname}")))?;
    let commit = r.find_commit(id).map_err(git("reading the revert commit"))?;
    tracing::info!(url = %redacted(url), branch = %req.branch, commit = %id, reverted = req.commits.len(), "revert pushed");
    Ok(CommitInfo::of(&commit))
}

/// Pushes [`PUSH_REF`] to `refname` on the origin; a rejection is an error saying why.
fn push(r: &Repository, url: &str, refname: &str) -> Result<(), SourceError> {
    let (clean, creds) = split_credentials(url);
    let attempts = Cell::new(0);
    let rejected: RefCell<Option<String>> = RefCell::new(None);
    let push_error = |message: String| SourceError::Push {
        url: redacted(url),
        refname: refname.to_string(),
        message,
    };
    {
        let mut cb = callbacks(&creds, &attempts);
        cb.push_update_reference(|name, status| {
            if let Some(why) = status {
                *rejected.borrow_mut() = Some(format!("{name} rejected: {why}"));
            }
            Ok(())
        });
        let mut opts = PushOptions::new();
        opts.remote_callbacks(cb);
        let mut remote = r
            .remote_anonymous(&clean)
            .map_err(|e| push_error(e.message().to_string()))?;
        remote
            .push(&[format!("{PUSH_REF}:{refname}")], Some(&mut opts))
            .map_err(|e| push_error(e.message().to_string()))?;
    }
    match rejected.into_inner() {
        Some(why) => Err(push_error(why)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_classified() {
        for url in [
            "https://github.com/org/repo.git",
            "http://127.0.0.1:8080/repo",
            "ssh://git@host/org/repo",
            "git://host/repo",
            "git@github.com:org/repo.git",
        ] {
            assert!(is_remote(url), "{url}");
        }
        for url in ["/srv/repo", "./repo", "repo", "file:///srv/repo", "./a:b"] {
            assert!(!is_remote(url), "{url}");
        }
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redacted("https://bob:s3cret@example.com/org/repo.git"),
            "https://bob:***@example.com/org/repo.git"
        );
        assert_eq!(redacted("https://ghp_token@example.com/r"), "https://***@example.com/r");
        assert_eq!(redacted("ssh://git@example.com/r"), "ssh://git@example.com/r");
        assert_eq!(redacted("https://example.com/a@b"), "https://example.com/a@b");
        let (clean, creds) = split_credentials("https://bob:p%40ss@example.com/r.git");
        assert_eq!(clean, "https://example.com/r.git");
        assert_eq!(creds.user.as_deref(), Some("bob"));
        assert_eq!(creds.password.as_deref(), Some("p@ss"));
    }

    #[test]
    fn mirror_names_are_safe_and_distinct() {
        let a = mirror_name("https://GitHub.com/Org/Repo.git");
        assert!(a.starts_with("github.com-org-repo-"), "{a}");
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)), "{a}");
        // Credentials do not change the mirror; another URL gets another one.
        assert_eq!(a, mirror_name("https://bob:tok@GitHub.com/Org/Repo.git"));
        assert_ne!(a, mirror_name("https://github.com/org/repo2.git"));
        assert!(mirror_name("git@host:org/r.git").starts_with("host-org-r-"));
    }
}
