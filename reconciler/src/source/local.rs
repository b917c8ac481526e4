//! Publishing a revert in a repository on this machine: move the branch, and bring the work
//! tree along when the branch is checked out (refusing to touch uncommitted work).

use std::path::Path;

use git2::{build::CheckoutBuilder, Repository, StatusOptions};

use super::revert::{self, Request};
use super::{find_commit, git, open, CommitInfo, SourceError};

/// Writes the revert commit on `req.branch` in the repository at `path`.
pub fn revert(path: &Path, req: &Request) -> Result<CommitInfo, SourceError> {
    let r = open(path)?;
    let refname = format!("refs/heads/{}", req.branch);
    let tip = find_commit(&r, &refname)?.id();
    let head = r.head().ok().and_then(|h| h.name().ok().map(String::from));
    let checked_out = !r.is_bare() && head.as_deref() == Some(refname.as_str());
    if checked_out {
        refuse_dirty(&r, path, &req.branch)?;
    }
    let id = revert::build(&r, tip, req)?;
    let commit = r.find_commit(id).map_err(git("reading the revert commit"))?;
    if checked_out {
        // Safe checkout from the old tip's tree: only files the revert changes are
        // written, and nothing the work tree holds on its own is overwritten.
        let mut opts = CheckoutBuilder::new();
        opts.safe();
        r.checkout_tree(commit.as_object(), Some(&mut opts))
            .map_err(git(format!("updating the work tree of {}", path.display())))?;
    }
    // Moves only from the tip the revert was built on: a concurrent commit is not lost.
    let summary = commit.summary().ok().flatten().unwrap_or("revert");
    r.reference_matching(&refname, id, true, tip, &format!("kairn: {summary}"))
        .map_err(git(format!("moving {refname}")))?;
    tracing::info!(repo = %path.display(), branch = %req.branch, commit = %id, reverted = req.commits.len(), "revert committed");
    Ok(CommitInfo::of(&commit))
}

/// An error when tracked files have uncommitted changes (untracked files are fine).
fn refuse_dirty(r: &Repository, path: &Path, branch: &str) -> Result<(), SourceError> {
    let mut opts = StatusOptions::new();
    opts.include_untracked(false).include_ignored(false);
    let statuses = r
        .statuses(Some(&mut opts))
        .map_err(git("reading the work tree's status"))?;
    let files: Vec<String> = statuses
        .iter()
        .filter(|s| !s.status().is_empty())
        .filter_map(|s| s.path().ok().map(String::from))
        .collect();
    if files.is_empty() {
        return Ok(());
    }
    Err(SourceError::Dirty {
        branch: branch.to_string(),
        path: path.display().to_string(),
        files,
    })
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::super::Source;
    use super::*;

    fn sh(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(["-c", "user.name=T", "-c", "user.email=t@example.com"])
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

    /// A work tree on `main` with three commits: a.yaml, then b.yaml, then a change to a.yaml.
    fn repo() -> (tempfile::TempDir, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        sh(p, &["init", "-q", "-b", "main"]);
        std::fs::write(p.join("a.yaml"), "a: 1\n").unwrap();
        sh(p, &["add", "."]);
        sh(p, &["commit", "-qm", "one"]);
        std::fs::write(p.join("b.yaml"), "b: 1\n").unwrap();
        sh(p, &["add", "."]);
        sh(p, &["commit", "-qm", "two"]);
        std::fs::write(p.join("a.yaml"), "a: 2\n").unwrap();
        sh(p, &["commit", "-qam", "three"]);
        let log = sh(p, &["log", "--format=%H"]);
        (dir, log.lines().map(String::from).collect())
    }

    #[tokio::test]
    async fn local_revert_updates_the_checked_out_branch_and_work_tree() {
        let (dir, shas) = repo();
        let source = Source::new(&dir.path().display().to_string(), dir.path()).unwrap();
        assert!(!source.is_remote());
        // Undo "three" and "two": everything after "one".
        let after_one = source.commits_between(&shas[2], "main").await.unwrap();
        assert_eq!(
            after_one.iter().map(|c| c.summary.as_str()).collect::<Vec<_>>(),
            ["three", "two"]
        );
        let undo: Vec<String> = after_one.iter().map(|c| c.sha.clone()).collect();
        let commit = source
            .revert("main", &undo, ("Kairn", "kairn@example.com"), "Revert to one")
            .await
            .unwrap();
        assert_eq!(commit.summary, "Revert to one");
        assert_eq!(commit.author, "Kairn <kairn@example.com>");
        assert_eq!(sh(dir.path(), &["rev-parse", "main"]), commit.sha);
        assert_eq!(sh(dir.path(), &["rev-parse", "main^"]), shas[0]);
        assert_eq!(std::fs::read_to_string(dir.path().join("a.yaml")).unwrap(), "a: 1\n");
        assert!(!dir.path().join("b.yaml").exists());
        // Index and work tree match the new commit.
        assert_eq!(sh(dir.path(), &["status", "--porcelain"]), "");
        let tree = source.read_tree(&commit.sha).await.unwrap();
        assert_eq!(tree.keys().collect::<Vec<_>>(), ["a.yaml"]);
    }

    #[tokio::test]
    async fn local_revert_refuses_a_dirty_work_tree_and_changes_nothing() {
        let (dir, shas) = repo();
        std::fs::write(dir.path().join("b.yaml"), "b: local edit\n").unwrap();
        let source = Source::new(&dir.path().display().to_string(), dir.path()).unwrap();
        let err = source
            .revert("main", &shas[..1], ("Kairn", "kairn@example.com"), "Revert three")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, SourceError::Dirty { files, .. } if files == &["b.yaml"]),
            "{err}"
        );
        assert!(err.to_string().contains("uncommitted changes"), "{err}");
        assert_eq!(sh(dir.path(), &["rev-parse", "main"]), shas[0]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("b.yaml")).unwrap(),
            "b: local edit\n"
        );
        // Untracked files do not count as uncommitted work.
        sh(dir.path(), &["checkout", "--", "b.yaml"]);
        std::fs::write(dir.path().join("notes.txt"), "scratch\n").unwrap();
        let commit = source
            .revert("main", &shas[..1], ("Kairn", "kairn@example.com"), "Revert three")
            .await
            .unwrap();
        assert_eq!(sh(dir.path(), &["rev-parse", "HEAD"]), commit.sha);
        assert_eq!(std::fs::read_to_string(dir.path().join("a.yaml")).unwrap(), "a: 1\n");
        assert!(dir.path().join("notes.txt").exists());
    }

    #[tokio::test]
    async fn local_revert_of_a_branch_not_checked_out_moves_only_the_ref() {
        let (dir, shas) = repo();
        sh(dir.path(), &["branch", "prod"]);
        let source = Source::new(&format!("file://{}", dir.path().display()), dir.path()).unwrap();
        let commit = source
            .revert(
                "prod",
                &shas[..1],
                ("Kairn", "kairn@example.com"),
                "Revert three on prod",
            )
            .await
            .unwrap();
        assert_eq!(sh(dir.path(), &["rev-parse", "prod"]), commit.sha);
        assert_eq!(sh(dir.path(), &["rev-parse", "main"]), shas[0]);
        assert_eq!(std::fs::read_to_string(dir.path().join("a.yaml")).unwrap(), "a: 2\n");
        let tree = source.read_tree("prod").await.unwrap();
        assert_eq!(tree.get("a.yaml").map(Vec::as_slice), Some(&b"a: 1\n"[..]));
    }

    #[tokio::test]
    async fn a_conflicting_local_revert_changes_nothing() {
        let (dir, shas) = repo();
        // "four" changes the line "three" changed: undoing "three" alone conflicts.
        std::fs::write(dir.path().join("a.yaml"), "a: 3\n").unwrap();
        sh(dir.path(), &["commit", "-qam", "four"]);
        let tip = sh(dir.path(), &["rev-parse", "main"]);
        let source = Source::new(&dir.path().display().to_string(), dir.path()).unwrap();
        let err = source
            .revert("main", &shas[..1], ("Kairn", "kairn@example.com"), "Revert three")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, SourceError::Conflict { files, .. } if files == &["a.yaml"]),
            "{err}"
        );
        assert_eq!(sh(dir.path(), &["rev-parse", "main"]), tip);
        assert_eq!(sh(dir.path(), &["status", "--porcelain"]), "");
    }
}
