//! The Git source: resolving a branch, reading manifests at a commit, noticing new commits.
//!
//! git2 handles are not `Send`, so each call opens the repository on a blocking thread
//! and returns plain data.

use std::path::{Path, PathBuf};
use std::time::Duration;

use git2::{ObjectType, Repository, TreeWalkMode, TreeWalkResult};
use notify::Watcher;
use tokio::sync::mpsc;

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
}

fn git(context: impl Into<String>) -> impl FnOnce(git2::Error) -> SourceError {
    let context = context.into();
    move |source| SourceError::Git { context, source }
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

/// The commit at the tip of `branch`.
pub async fn resolve(repo: &Path, revision: &str) -> Result<CommitInfo, SourceError> {
    let (repo, revision) = (repo.to_path_buf(), revision.to_string());
    blocking(move || {
        let r = Repository::open(&repo).map_err(git(format!("opening {}", repo.display())))?;
        let obj = r
            .revparse_single(&format!("refs/heads/{revision}"))
            .or_else(|_| r.revparse_single(&revision))
            .map_err(git(format!("resolving {revision}")))?;
        let commit = obj
            .peel_to_commit()
            .map_err(git(format!("{revision} is not a commit")))?;
        let author = commit.author();
        Ok(CommitInfo {
            sha: commit.id().to_string(),
            author: format!("{} <{}>", author.name().unwrap_or("?"), author.email().unwrap_or("?")),
            summary: commit.summary().ok().flatten().unwrap_or("").to_string(),
        })
    })
    .await
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
    let mut watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
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

/// One Application's repository (placeholder: local only).
#[derive(Debug, Clone)]
pub struct Source {
    path: PathBuf,
}

impl Source {
    /// Opens a local path or file:// URL.
    pub fn new(repo_url: &str, _data_dir: &Path) -> Result<Source, SourceError> {
        Ok(Source { path: PathBuf::from(repo_url.strip_prefix("file://").unwrap_or(repo_url)) })
    }
    /// Whether it is fetched from elsewhere.
    pub fn is_remote(&self) -> bool {
        false
    }
    /// The repository read.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Fetches (no-op locally).
    pub async fn fetch(&self) -> Result<(), SourceError> {
        Ok(())
    }
    /// Resolves a revision.
    pub async fn resolve(&self, revision: &str) -> Result<CommitInfo, SourceError> {
        resolve(&self.path, revision).await
    }
    /// Every file of the commit.
    pub async fn read_tree(&self, sha: &str) -> Result<std::collections::BTreeMap<String, Vec<u8>>, SourceError> {
        let files = read_manifests(&self.path, sha, "").await?;
        Ok(files.into_iter().map(|f| (f.path, f.content.into_bytes())).collect())
    }
}
