//! The process runtime: a container is its `command` + `args` run on the host, in its
//! own process group so that stopping it also stops whatever it spawned, and with
//! volumes in its own mount namespace ([`mounts`]). Its output goes to files that the
//! agent turns into its log ([`output`]).
//!
//! A container outlives the agent that started it: each start records the process's
//! pid and start time in `<name>.pid` in its pod directory, and a new agent adopts a
//! process still running under that record instead of starting another. An adopted
//! process is not the agent's child, so its exit status cannot be known: it is
//! reported as 255.

mod mounts;
mod output;

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

pub use output::LOG_MAX_BYTES;

use super::{Container, ContainerConfig, ExecResult, Exit, Runtime, RuntimeError};

/// How much of an exec's output is kept (kubelet keeps 10 KiB of a probe's output).
const EXEC_OUTPUT: usize = 10 * 1024;
/// The exit code reported for an adopted process (its real one cannot be read).
const UNKNOWN_EXIT: i32 = 255;

/// Runs containers as host processes.
#[derive(Debug, Clone, Default)]
pub struct ProcessRuntime;

/// How the end of a container's process is awaited.
#[derive(Debug)]
enum Waiter {
    /// Started by this agent: its child.
    Child(tokio::process::Child),
    /// Adopted: a pidfd, readable once the process has exited.
    Adopted(AsyncFd<OwnedFd>),
}

/// A container running as a process group.
#[derive(Debug)]
pub struct Process {
    pid: u32,
    waiter: Waiter,
    /// The tasks turning its output into its log.
    tailers: Vec<tokio::task::JoinHandle<()>>,
    /// Tells the tailers the process has exited (read to the end, then stop).
    exited: watch::Sender<bool>,
    /// Its `<name>.pid` record, removed when it ends.
    record: PathBuf,
}

fn signal_group(pid: u32, signal: i32) -> Result<(), RuntimeError> {
    // The container leads its own process group (pgid == pid): signal the whole group.
    let rc = unsafe { libc::kill(-(pid as i32), signal) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        return Ok(()); // already gone
    }
    Err(RuntimeError::Io {
        context: format!("signalling process group {pid}"),
        source: err,
    })
}

/// The record of the container whose log is `log_path`.
fn record_path(log_path: &Path) -> PathBuf {
    log_path.with_extension("pid")
}

/// A process's start time (clock ticks after boot, field 22 of `/proc/<pid>/stat`):
/// with the pid, it names one process, whatever reuses the pid later.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from after its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The pid a `<name>.pid` record names, if that very process still runs.
fn running_pid(record: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(record).ok()?;
    let mut fields = text.split_whitespace();
    let pid: u32 = fields.next()?.parse().ok()?;
    let started: u64 = fields.next()?.parse().ok()?;
    (start_time(pid) == Some(started)).then_some(pid)
}

/// Starts the tailers of both output streams.
fn tail_output(
    log_path: &Path,
    exited: &watch::Sender<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, RuntimeError> {
    let log = output::LogFile::open(log_path, output::LOG_MAX_BYTES).map_err(|source| RuntimeError::Io {
        context: format!("opening log {}", log_path.display()),
        source,
    })?;
    let log = Arc::new(Mutex::new(log));
    Ok(["stdout", "stderr"]
        .into_iter()
        .map(|stream| {
            let raw = output::raw_path(log_path, stream);
            tokio::spawn(output::tail(raw, stream, log.clone(), exited.subscribe()))
        })
        .collect())
}

/// The command for a container's process (or one run beside it): its environment and
/// directory, its own process group, and with volumes its own mount namespace where
/// each volume is bound at its `mountPath`.
fn command(config: &ContainerConfig, program: &str, args: &[String]) -> Result<tokio::process::Command, RuntimeError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(config.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&config.working_dir)
        .stdin(Stdio::null())
        .process_group(0);
    if !config.mounts.is_empty() {
        let binds = mounts::mount_points(config)?;
        let working_dir = mounts::cstring(&config.working_dir)?;
        // SAFETY: the closure runs in the forked child before exec and only makes
        // system calls on memory prepared before the fork (no allocation, no locks).
        unsafe {
            cmd.pre_exec(move || mounts::enter_mounts(&binds, &working_dir));
        }
    }
    Ok(cmd)
}

impl Runtime for ProcessRuntime {
    type Container = Process;

    fn start(&self, config: &ContainerConfig) -> Result<Process, RuntimeError> {
        let Some((program, args)) = config.argv.split_first() else {
            return Err(RuntimeError::Config(format!(
                "container {} has no command: the process runtime runs spec.containers[].command on the host and does not pull images",
                config.name
            )));
        };
        let io = |context: String| move |source| RuntimeError::Io { context, source };
        let (stdout, stderr) = output::fresh(&config.log_path).map_err(io(format!(
            "creating the output files of {}",
            config.log_path.display()
        )))?;
        let child = command(config, program, args)?
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(io(if config.mounts.is_empty() {
                format!("starting {program}")
            } else {
                format!("starting {program} with its volumes mounted")
            }))?;
        let pid = child
            .id()
            .ok_or_else(|| RuntimeError::Config(format!("{program} exited before it started")))?;
        let record = record_path(&config.log_path);
        if let Some(started) = start_time(pid) {
            if let Err(e) = std::fs::write(&record, format!("{pid} {started}\n")) {
                tracing::warn!(file = %record.display(), error = %e, "cannot record the container's process; a restarted agent will not adopt it");
            }
        }
        let (exited, _) = watch::channel(false);
        let tailers = tail_output(&config.log_path, &exited)?;
        Ok(Process {
            pid,
            waiter: Waiter::Child(child),
            tailers,
            exited,
            record,
        })
    }

    fn clean_up(&self, pod_dir: &Path) {
        for (pid, record) in ProcessRuntime::recorded(pod_dir) {
            tracing::info!(pid, dir = %pod_dir.display(), "stopping a container process of a pod that is gone");
            let _ = signal_group(pid, libc::SIGKILL);
            let _ = std::fs::remove_file(record);
        }
    }

    fn adopt(&self, config: &ContainerConfig) -> Option<Process> {
        let record = record_path(&config.log_path);
        let Some(pid) = running_pid(&record) else {
            // Gone, or the pid now names another process (or no record at all).
            let _ = std::fs::remove_file(&record);
            return None;
        };
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_long, 0 as libc::c_long) };
        if fd < 0 {
            return None;
        }
        // SAFETY: a descriptor the call above just opened and nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the AsyncFd owns the descriptor, so it stays open while registered.
        let fd = unsafe { AsyncFd::register(fd) }.ok()?;
        let (exited, _) = watch::channel(false);
        let tailers = tail_output(&config.log_path, &exited).ok()?;
        tracing::info!(container = %config.name, pid, "adopted a container process left by an earlier agent");
        Some(Process {
            pid,
            waiter: Waiter::Adopted(fd),
            tailers,
            exited,
            record,
        })
    }

    async fn exec(
        &self,
        config: &ContainerConfig,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        let Some((program, args)) = argv.split_first() else {
            return Err(RuntimeError::Config("exec with an empty command".into()));
        };
        let child = command(config, program, args)?
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| RuntimeError::Io {
                context: format!("running {program}"),
                source,
            })?;
        let pid = child.id();
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => {
                let mut output = out.stdout;
                output.extend_from_slice(&out.stderr);
                output.truncate(EXEC_OUTPUT);
                let code = out
                    .status
                    .code()
                    .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0));
                Ok(ExecResult {
                    code: Some(code),
                    output: String::from_utf8_lossy(&output).into_owned(),
                })
            }
            Ok(Err(source)) => Err(RuntimeError::Io {
                context: format!("waiting for {program}"),
                source,
            }),
            Err(_) => {
                // Whatever it spawned goes too.
                if let Some(pid) = pid {
                    let _ = signal_group(pid, libc::SIGKILL);
                }
                Ok(ExecResult {
                    code: None,
                    output: format!("command timed out after {}s", timeout.as_secs_f64()),
                })
            }
        }
    }
}

impl ProcessRuntime {
    /// The container processes recorded in `pod_dir` that still run: (pid, record).
    fn recorded(pod_dir: &Path) -> Vec<(u32, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(pod_dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pid"))
            .filter_map(|p| Some((running_pid(&p)?, p)))
            .collect()
    }
}

impl Container for Process {
    fn id(&self) -> String {
        format!("process://{}", self.pid)
    }

    async fn wait(&mut self) -> Result<Exit, RuntimeError> {
        let exit = match &mut self.waiter {
            Waiter::Child(child) => {
                let status = child.wait().await.map_err(|source| RuntimeError::Io {
                    context: format!("waiting for process {}", self.pid),
                    source,
                })?;
                let signal = status.signal();
                let code = status.code().unwrap_or_else(|| 128 + signal.unwrap_or(0));
                Exit { code, signal }
            }
            Waiter::Adopted(fd) => {
                let _ = fd.readable().await.map_err(|source| RuntimeError::Io {
                    context: format!("waiting for process {}", self.pid),
                    source,
                })?;
                Exit {
                    code: UNKNOWN_EXIT,
                    signal: None,
                }
            }
        };
        // Leave nothing of the container behind (children of a shell, say).
        let _ = signal_group(self.pid, libc::SIGKILL);
        let _ = std::fs::remove_file(&self.record);
        // The log is complete once the tailers have read the output to its end.
        self.exited.send_replace(true);
        for tailer in self.tailers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(2), tailer).await;
        }
        Ok(exit)
    }

    fn terminate(&self) -> Result<(), RuntimeError> {
        signal_group(self.pid, libc::SIGTERM)
    }

    fn kill(&self) -> Result<(), RuntimeError> {
        signal_group(self.pid, libc::SIGKILL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path, argv: &[&str]) -> ContainerConfig {
        ContainerConfig {
            name: "c".into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![
                ("GREETING".into(), "hi".into()),
                ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
            ],
            working_dir: dir.to_path_buf(),
            log_path: dir.join("c.log"),
            mounts: vec![],
        }
    }

    #[tokio::test]
    async fn runs_a_command_with_env_and_captures_output() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = ProcessRuntime
            .start(&config(dir.path(), &["sh", "-c", "echo $GREETING; pwd; exit 3"]))
            .unwrap();
        let exit = p.wait().await.unwrap();
        assert_eq!(exit, Exit { code: 3, signal: None });
        let log = std::fs::read_to_string(dir.path().join("c.log")).unwrap();
        let canonical = dir.path().canonicalize().unwrap();
        // Each line: `<time> stdout F <text>`.
        let lines: Vec<(&str, &str)> = log
            .lines()
            .map(|l| {
                let mut p = l.splitn(4, ' ');
                let time = p.next().unwrap();
                assert!(time.ends_with('Z') && time.len() == 30, "{l}");
                assert_eq!(p.next(), Some("stdout"));
                (p.next().unwrap(), p.next().unwrap())
            })
            .collect();
        assert_eq!(lines, [("F", "hi"), ("F", canonical.to_str().unwrap())]);
    }

    #[tokio::test]
    async fn stderr_long_lines_and_an_unfinished_last_line_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let script = format!(
            "echo oops >&2; printf '%{}s\\n' x; printf tail",
            crate::logs::MAX_LINE + 10
        );
        let mut p = ProcessRuntime
            .start(&config(dir.path(), &["sh", "-c", &script]))
            .unwrap();
        p.wait().await.unwrap();
        let log = std::fs::read_to_string(dir.path().join("c.log")).unwrap();
        let tags: Vec<(String, String, usize)> = log
            .lines()
            .map(|l| {
                let p: Vec<&str> = l.splitn(4, ' ').collect();
                (p[1].to_string(), p[2].to_string(), p[3].len())
            })
            .collect();
        assert!(tags.contains(&("stderr".into(), "F".into(), 4)), "{tags:?}");
        assert!(
            tags.contains(&("stdout".into(), "P".into(), crate::logs::MAX_LINE)),
            "{tags:?}"
        );
        assert!(tags.contains(&("stdout".into(), "F".into(), 10)), "{tags:?}");
        // stdout and stderr are copied side by side: only each stream's own order is fixed.
        let last_stdout = tags.iter().rev().find(|(stream, _, _)| stream == "stdout");
        assert_eq!(last_stdout, Some(&("stdout".into(), "P".into(), 4)));
    }

    #[tokio::test]
    async fn terminate_stops_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = ProcessRuntime
            .start(&config(dir.path(), &["sh", "-c", "sleep 30 & wait"]))
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        p.terminate().unwrap();
        let exit = tokio::time::timeout(std::time::Duration::from_secs(5), p.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(exit.signal, Some(libc::SIGTERM));
    }

    #[tokio::test]
    async fn a_process_left_by_a_dead_agent_is_adopted_with_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(
            dir.path(),
            &[
                "sh",
                "-c",
                "i=0; while true; do i=$((i+1)); echo line $i; sleep 0.05; done",
            ],
        );
        let first = ProcessRuntime.start(&c).unwrap();
        let id = first.id();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The agent dies: its handle and tailers go, the process runs on.
        for t in &first.tailers {
            t.abort();
        }
        drop(first);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut adopted = ProcessRuntime.adopt(&c).expect("the process is adopted");
        assert_eq!(adopted.id(), id);
        tokio::time::sleep(Duration::from_millis(300)).await;
        adopted.kill().unwrap();
        let exit = adopted.wait().await.unwrap();
        assert_eq!(exit.code, UNKNOWN_EXIT);
        // One unbroken count in the log: nothing lost or repeated across the handover.
        let log = std::fs::read_to_string(dir.path().join("c.log")).unwrap();
        let counts: Vec<u32> = log.lines().filter_map(|l| l.rsplit(' ').next()?.parse().ok()).collect();
        assert!(counts.len() > 10, "{log}");
        assert!(counts.windows(2).all(|w| w[1] == w[0] + 1), "{counts:?}");
        // Gone now: nothing to adopt.
        assert!(ProcessRuntime.adopt(&c).is_none());
    }

    #[tokio::test]
    async fn exec_reports_code_output_and_timeouts() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), &["true"]);
        let argv = |s: &str| vec!["sh".to_string(), "-c".to_string(), s.to_string()];
        let r = ProcessRuntime
            .exec(&c, &argv("echo $GREETING; exit 4"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!((r.code, r.output.as_str()), (Some(4), "hi\n"));
        let r = ProcessRuntime
            .exec(&c, &argv("sleep 5"), Duration::from_millis(200))
            .await
            .unwrap();
        assert_eq!(r.code, None, "{r:?}");
    }

    #[tokio::test]
    async fn volumes_appear_at_their_mount_paths_and_only_inside() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: mount namespaces need root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("volume");
        std::fs::create_dir(&volume).unwrap();
        std::fs::write(volume.join("greeting"), "hello").unwrap();
        let target = dir.path().join("mnt/config");
        let mut c = config(
            dir.path(),
            &[
                "sh",
                "-c",
                &format!("cat {}/greeting; touch {}/x", target.display(), target.display()),
            ],
        );
        c.mounts = vec![super::super::Mount {
            source: volume.clone(),
            target: target.clone(),
            read_only: true,
        }];
        let mut p = ProcessRuntime.start(&c).unwrap();
        let exit = p.wait().await.unwrap();
        let log = std::fs::read_to_string(dir.path().join("c.log")).unwrap();
        assert!(log.contains(" hello"), "{log}");
        assert!(log.contains("Read-only file system"), "{log}");
        assert_ne!(exit.code, 0);
        // The host sees an empty mount point, not the volume.
        assert!(target.is_dir() && !target.join("greeting").exists());
        // An exec beside it sees the volume too.
        let r = ProcessRuntime
            .exec(
                &c,
                &["cat".to_string(), target.join("greeting").display().to_string()],
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!((r.code, r.output.as_str()), (Some(0), "hello"));
    }

    #[test]
    fn a_container_without_command_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        match ProcessRuntime.start(&config(dir.path(), &[])) {
            Err(RuntimeError::Config(m)) => assert!(m.contains("no command"), "{m}"),
            other => panic!("expected a config error, got {other:?}"),
        }
    }
}
