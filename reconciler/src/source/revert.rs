//! Reverts in memory: the history between two commits, and one commit whose tree undoes a
//! list of commits on top of a branch tip. Nothing here moves a ref; `local` and `remote`
//! decide how the new commit is published.

use git2::{Oid, Repository, Sort};

use super::{find_commit, git, CommitInfo, SourceError};

/// What to revert, on which branch, written by whom.
#[derive(Debug, Clone)]
pub struct Request {
    /// The branch the revert commit goes on.
    pub branch: String,
    /// The commits to undo, newest first.
    pub commits: Vec<String>,
    /// Author name and email (also the committer).
    pub author: (String, String),
    /// The commit message.
    pub message: String,
}

/// Commits after `base` up to `tip`, newest first, along first parents.
pub fn commits_between(r: &Repository, base: &str, tip: &str) -> Result<Vec<CommitInfo>, SourceError> {
    let base_id = find_commit(r, base)?.id();
    let tip_id = find_commit(r, tip)?.id();
    if base_id == tip_id {
        return Ok(Vec::new());
    }
    let descends = r
        .graph_descendant_of(tip_id, base_id)
        .map_err(git(format!("comparing {base} and {tip}")))?;
    if !descends {
        return Err(SourceError::NotAncestor {
            base: base.to_string(),
            tip: tip.to_string(),
        });
    }
    let mut walk = r.revwalk().map_err(git("walking history"))?;
    walk.set_sorting(Sort::TOPOLOGICAL).map_err(git("walking history"))?;
    walk.simplify_first_parent().map_err(git("walking history"))?;
    walk.push(tip_id).map_err(git("walking history"))?;
    walk.hide(base_id).map_err(git("walking history"))?;
    let mut commits = Vec::new();
    for id in walk {
        let id = id.map_err(git("walking history"))?;
        let commit = r.find_commit(id).map_err(git(format!("reading commit {id}")))?;
        commits.push(CommitInfo::of(&commit));
    }
    Ok(commits)
}

/// Writes (as an unreferenced object) one commit on top of `parent` that reverts
/// `commits`, newest first; returns its id. A conflict is an error naming the files.
pub fn build(r: &Repository, parent: Oid, req: &Request) -> Result<Oid, SourceError> {
    if req.commits.is_empty() {
        return Err(SourceError::NothingToRevert);
    }
    let parent = r.find_commit(parent).map_err(git(format!("reading commit {parent}")))?;
    let mut tree = parent.tree().map_err(git("reading the branch's tree"))?;
    for sha in &req.commits {
        let commit = find_commit(r, sha)?;
        // A revert is a three-way merge: from the commit's tree back to its (first, the
        // mainline for merges) parent's, applied to what the branch has now.
        let before = match commit.parent(0) {
            Ok(p) => p.tree().map_err(git(format!("reading the parent of {sha}")))?,
            Err(_) => {
                let empty = r
                    .treebuilder(None)
                    .and_then(|b| b.write())
                    .map_err(git("writing an empty tree"))?;
                r.find_tree(empty).map_err(git("reading an empty tree"))?
            }
        };
        let after = commit.tree().map_err(git(format!("reading the tree of {sha}")))?;
        let mut index = r
            .merge_trees(&after, &tree, &before, None)
            .map_err(git(format!("reverting {sha}")))?;
        if index.has_conflicts() {
            let mut files: Vec<String> = index
                .conflicts()
                .map_err(git("reading conflicts"))?
                .filter_map(Result::ok)
                .filter_map(|c| c.our.or(c.their).or(c.ancestor))
                .map(|e| String::from_utf8_lossy(&e.path).into_owned())
                .collect();
            files.dedup();
            return Err(SourceError::Conflict {
                commit: commit.id().to_string(),
                files,
            });
        }
        let id = index
            .write_tree_to(r)
            .map_err(git(format!("writing the revert of {sha}")))?;
        tree = r.find_tree(id).map_err(git("reading the reverted tree"))?;
    }
    let sig = git2::Signature::now(&req.author.0, &req.author.1).map_err(git("making the author's signature"))?;
    r.commit(None, &sig, &sig, &req.message, &tree, &[&parent])
        .map_err(git("writing the revert commit"))
}
