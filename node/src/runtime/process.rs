//! The process runtime: a container is its `command` + `args` run on the host, in its
//! own process group so that stopping it also stops whatever it spawned.

use std::fs::OpenOptions;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use super::{Container, ContainerConfig, Exit, Runtime, RuntimeError};

/// Runs containers as host processes.
#[derive(Debug, Clone, Default)]
pub struct ProcessRuntime;

/// A container running as a process group.
#[derive(Debug)]
pub struct Process {
    child: tokio::process::Child,
    pid: u32,
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
        let log_err = log.try_clone().map_err(io("duplicating the log handle".into()))?;
        let child = tokio::process::Command::new(program)
            .args(args)
            .env_clear()
            .envs(config.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&config.working_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0)
            .spawn()
            .map_err(io(format!("starting {program}")))?;
        let pid = child
            .id()
            .ok_or_else(|| RuntimeError::Config(format!("{program} exited before it started")))?;
        Ok(Process { child, pid })
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
        assert_eq!(log, format!("hi\n{}\n", canonical.display()));
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
