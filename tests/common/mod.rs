//! Helpers for end-to-end tests: a real `kairn up` process on a temp data directory, a
//! real Git repository driven by the `git` command, and waiting on conditions with a
//! deadline instead of sleeping.

#![allow(dead_code)]

pub mod cluster;
pub mod linearizability;
pub mod proxy;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;

/// Polls `check` until it returns `Some`, or panics naming `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Git work tree in a temp directory.
pub struct Repo {
    pub dir: PathBuf,
}

impl Repo {
    /// `git init -b main` in `dir`.
    pub fn init(dir: &Path) -> Repo {
        std::fs::create_dir_all(dir).unwrap();
        let repo = Repo { dir: dir.to_path_buf() };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    /// Runs git with a fixed identity; panics on failure.
    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=Test Author",
                "-c",
                "user.email=author@example.com",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Writes `content` to `path` and commits it; returns the commit SHA.
    pub fn commit_file(&self, path: &str, content: &str, message: &str) -> String {
        let full = self.dir.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
        self.git(&["add", path]);
        self.git(&["commit", "-q", "-m", message]);
        self.head()
    }

    /// The SHA of HEAD.
    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }
}

/// A running `kairn up`.
pub struct Kairn {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub client: kube::Client,
    pub kubeconfig: PathBuf,
}

impl Kairn {
    /// Starts `kairn up --repo <repo>` on `data_dir` with a free port, and connects.
    pub async fn up(data_dir: &Path, repo: &Path) -> Kairn {
        std::fs::create_dir_all(data_dir).unwrap();
        let _ = std::fs::remove_file(data_dir.join("api-addr"));
        let _ = std::fs::remove_file(data_dir.join("kubeconfig"));
        let child = kairn_logging_to(&data_dir.join("kairn.log"))
            .args([
                "up",
                "--api-addr",
                "127.0.0.1:0",
                "--raft-addr",
                "127.0.0.1:0",
                "--log-addr",
                "127.0.0.1:0",
                "--node-name",
                "e2e-node",
                "--data-dir",
            ])
            .arg(data_dir)
            .arg("--repo")
            .arg(repo)
            .spawn()
            .expect("kairn starts");
        // The kubeconfig (with the admin's token) is written once the API serves.
        let kubeconfig_file = data_dir.join("kubeconfig");
        let kubeconfig = wait_for("the kubeconfig", Duration::from_secs(60), || {
            let f = kubeconfig_file.clone();
            async move { kube::config::Kubeconfig::read_from(f).ok() }
        })
        .await;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        Kairn {
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            client,
            kubeconfig: data_dir.join("kubeconfig"),
        }
    }

    /// Runs a `kairn` client verb against this cluster; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_kairn"))
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--no-color")
            .output()
            .expect("kairn runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The log of the `kairn up` process so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("kairn.log")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        terminate(&mut child, Duration::from_secs(45), || self.log())
    }
}

/// The `kairn` binary under test, logging (at `KAIRN_TEST_LOG`, EnvFilter syntax, else
/// info) to the end of the file `log`, stdout discarded.
pub fn kairn_logging_to(log: &Path) -> Command {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_kairn"));
    command
        .env(
            "KAIRN_LOG",
            std::env::var("KAIRN_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(file);
    command
}

/// SIGTERM to `child`, and waits up to `timeout` for its exit code; past that, kills it
/// and panics with `log()` (what it said).
pub fn terminate(child: &mut Child, timeout: Duration, log: impl Fn() -> String) -> Option<i32> {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "process {} did not stop within {timeout:?} of SIGTERM; its log:\n{}",
                child.id(),
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Kairn {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(2));
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running pod's container process id (from `containerID: process://<pid>`).
pub fn pid_of(pod: &Pod) -> Option<i32> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let status = statuses.first()?;
    status.state.as_ref()?.running.as_ref()?;
    status.container_id.as_ref()?.strip_prefix("process://")?.parse().ok()
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// Pods in `ns` with the label selector, that are Running with a live process.
pub async fn running_pods(client: &kube::Client, ns: &str, selector: &str) -> Vec<(Pod, i32)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let Ok(list) = pods.list(&ListParams::default().labels(selector)).await else {
        return vec![];
    };
    list.items
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| pid_of(&p).filter(|pid| alive(*pid)).map(|pid| (p, pid)))
        .collect()
}

/// Whether the real `kubectl` is on PATH (tests that drive it say why they skip it).
pub fn kubectl_present() -> bool {
    Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
}
