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

use super::{Container, ContainerConfig, ExecResult, Exit, Runtime, RuntimeError};

/// How much of an exec's output is kept (kubelet keeps 10 KiB of a probe's output).
const EXEC_OUTPUT: usize = 10 * 1024;

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

/// A container log grows to this size before it is rotated (kubelet's
/// `containerLogMaxSize` default).
pub const LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// A container's current log file, rotated when it reaches its cap: the full file
/// becomes `<log>.1` (replacing the one before), and writing starts on a new file.
#[derive(Debug)]
struct LogFile {
    file: File,
    size: u64,
    path: std::path::PathBuf,
    max: u64,
}

impl LogFile {
    fn open(path: &std::path::Path, max: u64) -> std::io::Result<LogFile> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogFile {
            file,
            size,
            path: path.to_path_buf(),
            max,
        })
    }

    /// Appends `out`, rotating first if it would pass the cap.
    fn write(&mut self, out: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + out.len() as u64 > self.max {
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            std::fs::rename(&self.path, &rotated)?;
            *self = LogFile::open(&self.path, self.max)?;
        }
        self.file.write_all(out)?;
        self.size += out.len() as u64;
        Ok(())
    }
}

/// Copies one output stream of a container into its log, as CRI log lines.
async fn copy_lines(mut pipe: impl AsyncRead + Unpin, stream: &'static str, log: Arc<Mutex<LogFile>>, path: String) {
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
            if let Err(e) = file.write(&out) {
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
        let binds = mount_points(config)?;
        let working_dir = cstring(&config.working_dir)?;
        // SAFETY: the closure runs in the forked child before exec and only makes
        // system calls on memory prepared before the fork (no allocation, no locks).
        unsafe {
            cmd.pre_exec(move || enter_mounts(&binds, &working_dir));
        }
    }
    Ok(cmd)
}

/// A mount prepared for the child: source, target, read-only.
type Bind = (std::ffi::CString, std::ffi::CString, bool);

fn cstring(p: &std::path::Path) -> Result<std::ffi::CString, RuntimeError> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| RuntimeError::Config(format!("path {} contains a NUL byte", p.display())))
}

/// Makes sure every mount point exists on the host (a directory, or an empty file for
/// a file), as a bind mount needs one, and prepares the paths for the child.
fn mount_points(config: &ContainerConfig) -> Result<Vec<Bind>, RuntimeError> {
    let mut binds = Vec::new();
    for (i, m) in config.mounts.iter().enumerate() {
        let io = |source| RuntimeError::Io {
            context: format!(
                "preparing mount point {} of container {}",
                m.target.display(),
                config.name
            ),
            source,
        };
        // Inside an earlier mount, the mount point must exist in what that mount shows.
        let point = config.mounts[..i]
            .iter()
            .filter_map(|outer| Some((outer, m.target.strip_prefix(&outer.target).ok()?)))
            .max_by_key(|(outer, _)| outer.target.components().count())
            .map(|(outer, rest)| outer.source.join(rest))
            .unwrap_or_else(|| m.target.clone());
        if m.source.is_dir() {
            std::fs::create_dir_all(&point).map_err(io)?;
        } else {
            if let Some(parent) = point.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            if !point.exists() {
                File::create(&point).map_err(io)?;
            }
        }
        binds.push((cstring(&m.source)?, cstring(&m.target)?, m.read_only));
    }
    Ok(binds)
}

/// In the child: a mount namespace of its own, private (nothing propagates back to
/// the host), with each volume bound at its place.
fn enter_mounts(binds: &[Bind], working_dir: &std::ffi::CStr) -> std::io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let none = c"none".as_ptr();
    // SAFETY: plain system calls on valid NUL-terminated strings.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            none,
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        for (source, target, read_only) in binds {
            check(libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ))?;
            if *read_only {
                let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC;
                check(libc::mount(
                    none,
                    target.as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                ))?;
            }
        }
        // The directory may be inside a volume: enter it again, now that it is there.
        check(libc::chdir(working_dir.as_ptr()))?;
    }
    Ok(())
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
        let log = LogFile::open(&config.log_path, LOG_MAX_BYTES)
            .map_err(io(format!("opening log {}", config.log_path.display())))?;
        let mut child = command(config, program, args)?
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io(if config.mounts.is_empty() {
                format!("starting {program}")
            } else {
                format!("starting {program} with its volumes mounted")
            }))?;
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

    #[test]
    fn logs_rotate_at_their_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let mut log = LogFile::open(&path, 10).unwrap();
        log.write(b"12345678\n").unwrap();
        log.write(b"abc\n").unwrap();
        log.write(b"def\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("c.log.1")).unwrap(),
            "12345678\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "abc\ndef\n");
        log.write(b"ghi\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("c.log.1")).unwrap(),
            "abc\ndef\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "ghi\n");
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
