//! Remote sources against a real Git smart-HTTP server (`git http-backend` on loopback):
//! mirroring, resolving, reading trees, fetching again, and reverts pushed to the origin.

#[path = "../../tests/common/git_http.rs"]
mod git_http;

use std::path::Path;
use std::process::Command;

use git_http::GitHttp;
use kairn_reconciler::source::{Source, SourceError};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Dev",
            "-c",
            "user.email=dev@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
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

/// A served bare repository `app.git` and a work tree that pushes to it (by path).
struct Remote {
    _dir: tempfile::TempDir,
    bare: std::path::PathBuf,
    work: std::path::PathBuf,
    data: std::path::PathBuf,
    server: GitHttp,
}

impl Remote {
    fn new() -> Remote {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("served");
        let (bare, work, data) = (root.join("app.git"), dir.path().join("work"), dir.path().join("data"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        git(&root, &["init", "-q", "--bare", "-b", "main", "app.git"]);
        git(&work, &["init", "-q", "-b", "main"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        let server = GitHttp::start(&root);
        Remote {
            _dir: dir,
            bare,
            work,
            data,
            server,
        }
    }

    /// Writes `files` in the work tree, commits them and pushes `main`; returns the SHA.
    fn commit(&self, message: &str, files: &[(&str, &str)]) -> String {
        for (path, content) in files {
            let full = self.work.join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, content).unwrap();
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-qm", message]);
        git(&self.work, &["push", "-q", "origin", "main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    fn remote_rev(&self, rev: &str) -> String {
        git(&self.bare, &["rev-parse", rev])
    }

    fn source(&self) -> Source {
        Source::new(&self.server.url_of("app.git"), &self.data).unwrap()
    }
}

#[tokio::test]
async fn a_remote_is_mirrored_resolved_and_read() {
    let remote = Remote::new();
    let one = remote.commit("one", &[("apps/a.yaml", "a: 1\n"), ("README.md", "hello\n")]);
    git(&remote.work, &["tag", "v1"]);
    git(&remote.work, &["push", "-q", "origin", "v1"]);
    git(&remote.work, &["push", "-q", "origin", "main:dev"]);
    let two = remote.commit("two", &[("apps/b.yaml", "b: 1\n")]);

    let source = remote.source();
    assert!(source.is_remote());
    assert!(
        source.path().starts_with(remote.data.join("repos")),
        "{}",
        source.path().display()
    );
    source.fetch().await.unwrap();

    assert_eq!(source.resolve("main").await.unwrap().sha, two);
    assert_eq!(source.resolve("HEAD").await.unwrap().sha, two);
    assert_eq!(source.resolve("dev").await.unwrap().sha, one);
    let tag = source.resolve("v1").await.unwrap();
    assert_eq!(tag.sha, one);
    assert_eq!(tag.summary, "one");
    assert_eq!(tag.author, "Dev <dev@example.com>");
    assert!(tag.time > 0);
    assert_eq!(source.resolve(&one).await.unwrap().sha, one);
    assert_eq!(source.resolve(&one[..8]).await.unwrap().sha, one);

    let tree = source.read_tree(&two).await.unwrap();
    assert_eq!(
        tree.keys().collect::<Vec<_>>(),
        ["README.md", "apps/a.yaml", "apps/b.yaml"]
    );
    assert_eq!(tree["apps/b.yaml"], b"b: 1\n");
    let between = source.commits_between(&one, &two).await.unwrap();
    assert_eq!(
        between.iter().map(|c| c.sha.as_str()).collect::<Vec<_>>(),
        [two.as_str()]
    );
    assert!(matches!(
        source.commits_between(&two, &one).await,
        Err(SourceError::NotAncestor { .. })
    ));

    // A second fetch reuses the mirror (a marker in it survives) and sees the new commit
    // and the deleted branch.
    let marker = source.path().join("kairn-test-marker");
    std::fs::write(&marker, "x").unwrap();
    let three = remote.commit("three", &[("apps/a.yaml", "a: 3\n")]);
    git(&remote.work, &["push", "-q", "origin", "--delete", "dev"]);
    source.fetch().await.unwrap();
    assert!(marker.exists(), "the mirror was re-cloned");
    assert_eq!(source.resolve("main").await.unwrap().sha, three);
    assert!(source.resolve("dev").await.is_err(), "a deleted branch is pruned");
}

#[tokio::test]
async fn credentials_in_the_url_are_used_and_never_shown() {
    let remote = Remote::new();
    let one = remote.commit("one", &[("a.yaml", "a: 1\n")]);
    let url = remote.server.url_of("app.git").replace("http://", "http://bob:s3cret@");
    let source = Source::new(&url, &remote.data).unwrap();
    assert_eq!(source.redacted_url(), url.replace("s3cret", "***"));
    source.fetch().await.unwrap();
    assert_eq!(source.resolve("main").await.unwrap().sha, one);

    // Nothing listens on port 1: the error names the URL, without the password.
    let dead = Source::new("http://bob:s3cret@127.0.0.1:1/app.git", &remote.data).unwrap();
    let err = dead.fetch().await.unwrap_err().to_string();
    assert!(
        err.starts_with("fetching http://bob:***@127.0.0.1:1/app.git: "),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
    // A repository the server does not have.
    let missing = Source::new(&remote.server.url_of("nope.git"), &remote.data).unwrap();
    let err = missing.fetch().await.unwrap_err();
    assert!(matches!(err, SourceError::Fetch { .. }), "{err}");
}

#[tokio::test]
async fn reverts_are_pushed_to_the_origin() {
    let remote = Remote::new();
    let one = remote.commit("one", &[("a.yaml", "a: 1\n")]);
    let two = remote.commit("two", &[("b.yaml", "b: 1\n")]);
    let three = remote.commit("three", &[("a.yaml", "a: 3\n")]);
    let source = remote.source();
    source.fetch().await.unwrap();

    // One commit.
    let reverted = source
        .revert(
            "main",
            std::slice::from_ref(&two),
            ("Kairn", "kairn@example.com"),
            "Revert two",
        )
        .await
        .unwrap();
    assert_eq!(remote.remote_rev("main"), reverted.sha);
    assert_eq!(remote.remote_rev("main^"), three);
    assert_eq!(source.resolve("main").await.unwrap().sha, reverted.sha);
    assert_eq!(reverted.author, "Kairn <kairn@example.com>");
    let tree = source.read_tree(&reverted.sha).await.unwrap();
    assert_eq!(tree.keys().collect::<Vec<_>>(), ["a.yaml"]);
    assert_eq!(tree["a.yaml"], b"a: 3\n");

    // Everything after `one`, as one commit.
    let after: Vec<String> = source
        .commits_between(&one, "main")
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.sha)
        .collect();
    assert_eq!(after.len(), 3);
    let back = source
        .revert("main", &after, ("Kairn", "kairn@example.com"), "Back to one")
        .await
        .unwrap();
    assert_eq!(remote.remote_rev("main"), back.sha);
    assert_eq!(
        remote.remote_rev("main^{tree}"),
        remote.remote_rev(&format!("{one}^{{tree}}"))
    );
}

#[tokio::test]
async fn a_conflicting_revert_changes_nothing() {
    let remote = Remote::new();
    remote.commit("one", &[("a.yaml", "a: 1\n")]);
    let two = remote.commit("two", &[("a.yaml", "a: 2\n")]);
    let three = remote.commit("three", &[("a.yaml", "a: 3\n")]);
    let source = remote.source();
    let err = source
        .revert("main", &[two], ("Kairn", "kairn@example.com"), "Revert two")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SourceError::Conflict { files, .. } if files == &["a.yaml"]),
        "{err}"
    );
    assert_eq!(remote.remote_rev("main"), three);
    assert_eq!(source.resolve("main").await.unwrap().sha, three);
}

#[tokio::test]
async fn a_rejected_push_is_an_error_and_the_mirror_stays() {
    let remote = Remote::new();
    remote.commit("one", &[("a.yaml", "a: 1\n")]);
    let two = remote.commit("two", &[("b.yaml", "b: 1\n")]);
    let hook = remote.bare.join("hooks/pre-receive");
    std::fs::write(&hook, "#!/bin/sh\necho 'main is protected' >&2\nexit 1\n").unwrap();
    Command::new("chmod").arg("+x").arg(&hook).status().unwrap();
    let source = remote.source();
    let err = source
        .revert(
            "main",
            std::slice::from_ref(&two),
            ("Kairn", "kairn@example.com"),
            "Revert two",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::Push { .. }), "{err}");
    assert!(err.to_string().contains("refs/heads/main"), "{err}");
    assert_eq!(remote.remote_rev("main"), two);
    assert_eq!(source.resolve("main").await.unwrap().sha, two);
}
