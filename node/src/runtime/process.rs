//! The process runtime: a container is its `command` + `args` run on the host, in its
//! own process group so that stopping it also stops whatever it spawned. Its stdout and
//! stderr are read through pipes and written to its log file a line at a time, each
//! line stamped with its time (the CRI log format, see [`crate::logs`]).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::{Container, ContainerConfig, Exit, Runtime, RuntimeError};

/// Runs containers as host processes.
#[derive(Debug, Clone, Default)]
pub struct ProcessRuntime;

/// A container running as a process group.
#[derive(Debug)]
pub struct Process {
    child: tokio::process::Child,
    pid: u32,
    /// The tasks copying stdout and stderr into the log.
    copiers: Vec<tokio::task::JoinHandle<()>>,
}

/// Copies one output stream of a container into its log, as CRI log lines.
async fn copy_lines(mut pipe: impl AsyncRead + Unpin, stream: &'static str, log: Arc<Mutex<File>>, path: String) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 8192];
    loop {
        let n = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let time = crate::logs::timestamp_now();
        let mut out = Vec::new();
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            crate::logs::push_line(&mut out, &time, stream, false, &buf[..end]);
            buf.drain(..=end);
        }
        // Overlong lines, and what is left when the stream ends, go out as partial lines.
        while buf.len() >= crate::logs::MAX_LINE || (n == 0 && !buf.is_empty()) {
            let end = buf.len().min(crate::logs::MAX_LINE);
            crate::logs::push_line(&mut out, &time, stream, true, &buf[..end]);
            buf.drain(..end);
        }
        if !out.is_empty() {
            let mut file = log.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = file.write_all(&out) {
                tracing::warn!(log = %path, error = %e, "cannot write the container log");
            }
        }
        if n == 0 {
            return;
        }
    }
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
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.log_path)
            .map_err(io(format!("opening log {}", config.log_path.display())))?;
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .env_clear()
            .envs(config.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&config.working_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(io(format!("starting {program}")))?;
        let pid = child
            .id()
            .ok_or_else(|| RuntimeError::Config(format!("{program} exited before it started")))?;
        let log = Arc::new(Mutex::new(log));
        let path = config.log_path.display().to_string();
        let mut copiers = Vec::new();
        if let Some(out) = child.stdout.take() {
            copiers.push(tokio::spawn(copy_lines(out, "stdout", log.clone(), path.clone())));
        }
        if let Some(err) = child.stderr.take() {
            copiers.push(tokio::spawn(copy_lines(err, "stderr", log, path)));
        }
        Ok(Process { child, pid, copiers })
    }
}

impl Container for Process {
    fn id(&self) -> String {
        format!("process://{}", self.pid)
    }

    async fn wait(&mut self) -> Result<Exit, RuntimeError> {
        let status = self.child.wait().await.map_err(|source| RuntimeError::Io {
            context: format!("waiting for process {}", self.pid),
            source,
        })?;
        // Leave nothing of the container behind (children of a shell, say).
        let _ = signal_group(self.pid, libc::SIGKILL);
        // The log is complete once both pipes are drained (they close with the group).
        for copier in self.copiers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(2), copier).await;
        }
        let signal = status.signal();
        let code = status.code().unwrap_or_else(|| 128 + signal.unwrap_or(0));
        Ok(Exit { code, signal })
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

    #[test]
    fn a_container_without_command_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        match ProcessRuntime.start(&config(dir.path(), &[])) {
            Err(RuntimeError::Config(m)) => assert!(m.contains("no command"), "{m}"),
            other => panic!("expected a config error, got {other:?}"),
        }
    }
}
