//! The Git source: resolving a branch, reading manifests at a commit, noticing new commits,
//! mirroring remote repositories and writing revert commits.
//!
//! git2 handles are not `Send`, so each call opens the repository on a blocking thread
//! and returns plain data. [`Source`] is one Application's repository: a local one is read
//! in place (`local`), a remote one through a bare mirror under the data directory
//! (`remote`); `revert` writes the commits that undo others.

mod local;
mod remote;
mod revert;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use git2::{ObjectType, Repository, TreeWalkMode, TreeWalkResult};
use notify::Watcher;
use tokio::sync::mpsc;

pub use remote::redacted;

/// Errors reading a Git source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// libgit2 failed (no such repo, branch, path...).
    #[error("{context}: {source}")]
    Git { context: String, source: git2::Error },
    /// A blocking task died.
    #[error("git task failed: {0}")]
    Task(String),
    /// A file in the tree is not UTF-8 text.
    #[error("{0}: not UTF-8 text")]
    NotText(String),
    /// Watching the repository for changes failed.
    #[error("watching {path}: {source}")]
    Watch { path: String, source: notify::Error },
    /// A repository URL that is neither a local path nor a supported remote.
    #[error("unsupported repository URL {0}")]
    BadUrl(String),
    /// Reading or writing a file or directory failed.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// Fetching from the remote failed (the URL is shown without its password).
    #[error("fetching {url}: {source}")]
    Fetch { url: String, source: git2::Error },
    /// The remote refused a push, or the push failed.
    #[error("pushing {refname} to {url}: {message}")]
    Push {
        url: String,
        refname: String,
        message: String,
    },
    /// A file in the tree is larger than [`MAX_FILE_SIZE`].
    #[error("{path}: {size} bytes is over the limit of {limit} bytes")]
    TooLarge { path: String, size: usize, limit: usize },
    /// `base` is not an ancestor of `tip`.
    #[error("{base} is not an ancestor of {tip}")]
    NotAncestor { base: String, tip: String },
    /// Reverting a commit conflicts with what came after it.
    #[error("reverting {commit} conflicts in {}", files.join(", "))]
    Conflict { commit: String, files: Vec<String> },
    /// The branch to revert is checked out with uncommitted changes.
    #[error("{branch} is checked out in {path} with uncommitted changes to {}; commit or stash them first", files.join(", "))]
    Dirty {
        branch: String,
        path: String,
        files: Vec<String>,
    },
    /// A revert was asked for with no commits.
    #[error("nothing to revert")]
    NothingToRevert,
}

/// The largest file [`Source::read_tree`] reads.
pub const MAX_FILE_SIZE: usize = 16 * 1024 * 1024;

fn git(context: impl Into<String>) -> impl FnOnce(git2::Error) -> SourceError {
    let context = context.into();
    move |source| SourceError::Git { context, source }
}

/// The first 12 characters of a commit SHA, as status, history and the CLI show it.
pub fn short_sha(sha: &str) -> &str {
    sha.char_indices().nth(12).map_or(sha, |(i, _)| &sha[..i])
}

/// A commit, as history and status show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    /// Full SHA.
    pub sha: String,
    /// Author name and email.
    pub author: String,
    /// First line of the message.
    pub summary: String,
    /// Commit time, in seconds since the Unix epoch.
    pub time: i64,
    /// The whole message.
    pub message: String,
}

impl CommitInfo {
    /// The description of a commit.
    pub fn of(commit: &git2::Commit<'_>) -> Self {
        let author = commit.author();
        CommitInfo {
            sha: commit.id().to_string(),
            author: format!("{} <{}>", author.name().unwrap_or("?"), author.email().unwrap_or("?")),
            summary: commit.summary().ok().flatten().unwrap_or("").to_string(),
            time: commit.time().seconds(),
            message: String::from_utf8_lossy(commit.message_bytes()).into_owned(),
        }
    }
}

/// One manifest file at a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Path relative to the repository root.
    pub path: String,
    /// File content.
    pub content: String,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SourceError> + Send + 'static,
) -> Result<T, SourceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SourceError::Task(e.to_string()))?
}

/// The branch HEAD points at in `repo` (e.g. `main`).
pub async fn default_branch(repo: &Path) -> Result<String, SourceError> {
    let repo = repo.to_path_buf();
    blocking(move || {
        let r = Repository::open(&repo).map_err(git(format!("opening {}", repo.display())))?;
        let head = r.find_reference("HEAD").map_err(git("reading HEAD"))?;
        let target = head.symbolic_target().ok().flatten().unwrap_or("refs/heads/main");
        Ok(target.strip_prefix("refs/heads/").unwrap_or(target).to_string())
    })
    .await
}

/// The commit a branch, tag, SHA (full or short) or `HEAD` names in `repo`.
pub async fn resolve(repo: &Path, revision: &str) -> Result<CommitInfo, SourceError> {
    let (repo, revision) = (repo.to_path_buf(), revision.to_string());
    blocking(move || {
        let r = open(&repo)?;
        let commit = find_commit(&r, &revision)?;
        Ok(CommitInfo::of(&commit))
    })
    .await
}

fn open(path: &Path) -> Result<Repository, SourceError> {
    Repository::open(path).map_err(git(format!("opening {}", path.display())))
}

/// The commit `revision` names: a branch first (a branch and a tag may share a name),
/// then a tag, then anything `git rev-parse` takes (a SHA, `HEAD`).
fn find_commit<'r>(r: &'r Repository, revision: &str) -> Result<git2::Commit<'r>, SourceError> {
    let revision = if revision.is_empty() { "HEAD" } else { revision };
    let obj = r
        .revparse_single(&format!("refs/heads/{revision}"))
        .or_else(|_| r.revparse_single(&format!("refs/tags/{revision}")))
        .or_else(|_| r.revparse_single(revision))
        .map_err(git(format!("resolving {revision}")))?;
    obj.peel_to_commit().map_err(git(format!("{revision} is not a commit")))
}

/// Every `*.yaml` / `*.yml` file under `dir` at commit `sha`, sorted by path; files and
/// directories whose names start with `.` are skipped (CI configs are not manifests).
pub async fn read_manifests(repo: &Path, sha: &str, dir: &str) -> Result<Vec<SourceFile>, SourceError> {
    let (repo, sha, dir) = (repo.to_path_buf(), sha.to_string(), dir.trim_matches('/').to_string());
    blocking(move || {
        let r = Repository::open(&repo).map_err(git(format!("opening {}", repo.display())))?;
        let oid = git2::Oid::from_str(&sha).map_err(git(format!("bad commit id {sha}")))?;
        let commit = r.find_commit(oid).map_err(git(format!("finding commit {sha}")))?;
        let root = commit.tree().map_err(git("reading the commit's tree"))?;
        let tree = if dir.is_empty() || dir == "." {
            root
        } else {
            let entry = root
                .get_path(Path::new(&dir))
                .map_err(git(format!("path {dir} at {sha}")))?;
            r.find_tree(entry.id())
                .map_err(git(format!("{dir} is not a directory")))?
        };
        let base = if dir.is_empty() || dir == "." {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut found = Vec::new();
        tree.walk(TreeWalkMode::PreOrder, |parent, entry| {
            let name = entry.name().unwrap_or("");
            if name.starts_with('.') {
                return TreeWalkResult::Skip;
            }
            let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
            if entry.kind() == Some(ObjectType::Blob) && is_yaml {
                found.push((format!("{base}{parent}{name}"), entry.id()));
            }
            TreeWalkResult::Ok
        })
        .map_err(git("walking the tree"))?;
        let mut files = Vec::with_capacity(found.len());
        for (path, id) in found {
            let blob = r.find_blob(id).map_err(git(format!("reading {path}")))?;
            let content = String::from_utf8(blob.content().to_vec()).map_err(|_| SourceError::NotText(path.clone()))?;
            files.push(SourceFile { path, content });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    })
    .await
}

/// Creates a repository at `path` with one commit holding `files` on branch `main`.
pub async fn init_seeded(path: &Path, files: &[(&str, &str)], message: &str) -> Result<String, SourceError> {
    let path = path.to_path_buf();
    let files: Vec<(String, String)> = files.iter().map(|(p, c)| (p.to_string(), c.to_string())).collect();
    let message = message.to_string();
    blocking(move || {
        let mut opts = git2::RepositoryInitOptions::new();
        opts.initial_head("main");
        let r = Repository::init_opts(&path, &opts).map_err(git(format!("creating {}", path.display())))?;
        for (rel, content) in &files {
            let full = path.join(rel);
            if let Some(parent) = full.parent() {
                std::fs::create_dir_all(parent).map_err(|e| SourceError::Task(e.to_string()))?;
            }
            std::fs::write(&full, content).map_err(|e| SourceError::Task(format!("{}: {e}", full.display())))?;
        }
        let mut index = r.index().map_err(git("opening the index"))?;
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .map_err(git("adding files"))?;
        index.write().map_err(git("writing the index"))?;
        let tree_id = index.write_tree().map_err(git("writing the tree"))?;
        let tree = r.find_tree(tree_id).map_err(git("reading the tree"))?;
        let sig = r
            .signature()
            .or_else(|_| git2::Signature::now("Kairn", "kairn@localhost"))
            .map_err(git("making a signature"))?;
        let oid = r
            .commit(Some("HEAD"), &sig, &sig, &message, &tree, &[])
            .map_err(git("committing"))?;
        Ok(oid.to_string())
    })
    .await
}

/// The `.git` directory of a work tree (or the repository itself when bare).
pub async fn git_dir(repo: &Path) -> Result<PathBuf, SourceError> {
    let repo = repo.to_path_buf();
    blocking(move || {
        let r = Repository::open(&repo).map_err(git(format!("opening {}", repo.display())))?;
        Ok(r.path().to_path_buf())
    })
    .await
}

/// Watches a repository's refs; sends a unit on every change (coalesced by the receiver).
/// The returned watcher must be kept alive for as long as notifications are wanted.
pub fn watch_refs(git_dir: &Path, tx: mpsc::Sender<()>) -> Result<notify::RecommendedWatcher, SourceError> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reading the repository opens its files: only a write can move a ref, and an
        // access must not wake the reader that made it (it would spin).
        if event.is_ok_and(|e| e.kind.is_access()) {
            return;
        }
        // A full channel already holds a wake-up: dropping this one loses nothing.
        let _ = tx.try_send(());
    })
    .map_err(|source| SourceError::Watch {
        path: git_dir.display().to_string(),
        source,
    })?;
    // HEAD and packed-refs live at the top; branch refs below refs/.
    watcher
        .watch(git_dir, notify::RecursiveMode::NonRecursive)
        .map_err(|source| SourceError::Watch {
            path: git_dir.display().to_string(),
            source,
        })?;
    let refs = git_dir.join("refs");
    if refs.exists() {
        watcher
            .watch(&refs, notify::RecursiveMode::Recursive)
            .map_err(|source| SourceError::Watch {
                path: refs.display().to_string(),
                source,
            })?;
    }
    Ok(watcher)
}

/// How often a repository is polled even without a notification.
pub const POLL_INTERVAL: Duration = Duration::from_secs(3);

/// Where a [`Source`] reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// A repository on this machine, read in place.
    Local { path: PathBuf },
    /// A remote repository, fetched into a bare mirror.
    Remote { url: String, mirror: PathBuf },
}

/// One Application's repository: local, or remote and mirrored under the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    url: String,
    kind: Kind,
}

impl Source {
    /// Local paths and `file://` URLs are read in place; `http(s)://`, `ssh://`, `git://`
    /// and scp-like `user@host:path` URLs are mirrored into `<data_dir>/repos/<name>`.
    pub fn new(repo_url: &str, data_dir: &Path) -> Result<Source, SourceError> {
        let kind = if let Some(path) = repo_url.strip_prefix("file://") {
            Kind::Local {
                path: PathBuf::from(path),
            }
        } else if remote::is_remote(repo_url) {
            Kind::Remote {
                url: repo_url.to_string(),
                mirror: data_dir.join("repos").join(remote::mirror_name(repo_url)),
            }
        } else if repo_url.contains("://") || repo_url.is_empty() {
            return Err(SourceError::BadUrl(redacted(repo_url)));
        } else {
            Kind::Local {
                path: PathBuf::from(repo_url),
            }
        };
        Ok(Source {
            url: repo_url.to_string(),
            kind,
        })
    }

    /// Whether the repository is remote (read through a mirror).
    pub fn is_remote(&self) -> bool {
        matches!(self.kind, Kind::Remote { .. })
    }

    /// The URL, without its password: what logs and errors show.
    pub fn redacted_url(&self) -> String {
        redacted(&self.url)
    }

    /// The directory of the repository read (the work tree or the mirror), e.g. for `watch_refs`.
    pub fn path(&self) -> &Path {
        match &self.kind {
            Kind::Local { path } => path,
            Kind::Remote { mirror, .. } => mirror,
        }
    }

    /// Remote: fetches branches and tags into the mirror (created on first use, pruned,
    /// never re-cloned). Local: nothing to do.
    pub async fn fetch(&self) -> Result<(), SourceError> {
        let Kind::Remote { url, mirror } = &self.kind else {
            return Ok(());
        };
        let (url, mirror) = (url.clone(), mirror.clone());
        blocking(move || remote::fetch(&url, &mirror).map(|_| ())).await
    }

    /// The commit a branch, tag, SHA (full or short) or `HEAD` names.
    pub async fn resolve(&self, revision: &str) -> Result<CommitInfo, SourceError> {
        resolve(self.path(), revision).await
    }

    /// Every file of the commit's tree, path -> bytes (submodules are not files); a file
    /// over [`MAX_FILE_SIZE`] is an error naming it.
    pub async fn read_tree(&self, sha: &str) -> Result<BTreeMap<String, Vec<u8>>, SourceError> {
        let (repo, sha) = (self.path().to_path_buf(), sha.to_string());
        blocking(move || {
            let r = open(&repo)?;
            let tree = find_commit(&r, &sha)?
                .tree()
                .map_err(git("reading the commit's tree"))?;
            let odb = r.odb().map_err(git("opening the object database"))?;
            let mut found = Vec::new();
            tree.walk(TreeWalkMode::PreOrder, |parent, entry| {
                if entry.kind() == Some(ObjectType::Blob) {
                    found.push((
                        format!("{parent}{}", String::from_utf8_lossy(entry.name_bytes())),
                        entry.id(),
                    ));
                }
                TreeWalkResult::Ok
            })
            .map_err(git("walking the tree"))?;
            let mut files = BTreeMap::new();
            for (path, id) in found {
                // The header first: a huge blob is refused without being loaded.
                let (size, _) = odb.read_header(id).map_err(git(format!("reading {path}")))?;
                if size > MAX_FILE_SIZE {
                    return Err(SourceError::TooLarge {
                        path,
                        size,
                        limit: MAX_FILE_SIZE,
                    });
                }
                let blob = r.find_blob(id).map_err(git(format!("reading {path}")))?;
                files.insert(path, blob.content().to_vec());
            }
            Ok(files)
        })
        .await
    }

    /// Commits after `base` (exclusive) up to `tip` (inclusive), newest first, along
    /// first parents; an error if `base` is not an ancestor of `tip`.
    pub async fn commits_between(&self, base: &str, tip: &str) -> Result<Vec<CommitInfo>, SourceError> {
        let (repo, base, tip) = (self.path().to_path_buf(), base.to_string(), tip.to_string());
        blocking(move || {
            let r = open(&repo)?;
            revert::commits_between(&r, &base, &tip)
        })
        .await
    }

    /// Writes one commit on `branch` that reverts `commits` (newest first), by `author`
    /// (name, email) with `message`. A conflict changes nothing. Local: moves the branch
    /// (and the work tree when it is checked out and clean). Remote: pushes the commit to
    /// the origin, then moves the mirror's branch. Returns the new commit.
    pub async fn revert(
        &self,
        branch: &str,
        commits: &[String],
        author: (&str, &str),
        message: &str,
    ) -> Result<CommitInfo, SourceError> {
        let request = revert::Request {
            branch: branch.to_string(),
            commits: commits.to_vec(),
            author: (author.0.to_string(), author.1.to_string()),
            message: message.to_string(),
        };
        match self.kind.clone() {
            Kind::Local { path } => blocking(move || local::revert(&path, &request)).await,
            Kind::Remote { url, mirror } => blocking(move || remote::revert(&url, &mirror, &request)).await,
        }
    }
}

/// Git's `user.name` and `user.email`: the repository's configuration when `repo` is
/// given, else the user's (for the author of a rollback).
pub fn git_identity(repo: Option<&Path>) -> Option<(String, String)> {
    let config = repo
        .and_then(|r| Repository::open(r).ok())
        .and_then(|r| r.config().ok())
        .or_else(|| git2::Config::open_default().ok())?;
    Some((
        config.get_string("user.name").ok()?,
        config.get_string("user.email").ok()?,
    ))
}
