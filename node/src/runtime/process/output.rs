//! A container's output: its stdout and stderr go straight to files in its pod
//! directory (`<name>.stdout`, `<name>.stderr`), not through pipes, so that the process
//! outlives an agent that dies (a pipe would kill it with SIGPIPE) and a new agent can
//! pick its output up where the last one stopped. A tailer per stream turns what is
//! written into CRI log lines (see [`crate::logs`]), stamped when read, and records how
//! far it got in `<name>.<stream>.offset`; what it has read is punched out of the raw
//! file so that it takes no disk space. The log itself is rotated at its cap.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// A container log grows to this size before it is rotated (kubelet's
/// `containerLogMaxSize` default).
pub const LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// Read output is punched out of the raw file once this much has piled up.
const PUNCH_EVERY: u64 = 1024 * 1024;
/// How long a tailer waits when there is nothing new, at most.
const IDLE_MAX: Duration = Duration::from_millis(250);

/// A container's current log file, rotated when it reaches its cap: the full file
/// becomes `<log>.1` (replacing the one before), and writing starts on a new file.
#[derive(Debug)]
pub(super) struct LogFile {
    file: File,
    size: u64,
    path: PathBuf,
    max: u64,
}

impl LogFile {
    pub(super) fn open(path: &Path, max: u64) -> std::io::Result<LogFile> {
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
    pub(super) fn write(&mut self, out: &[u8]) -> std::io::Result<()> {
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

/// The raw output file of one stream of the container whose log is `log_path`.
pub(super) fn raw_path(log_path: &Path, stream: &str) -> PathBuf {
    log_path.with_extension(stream)
}

fn offset_path(raw: &Path) -> PathBuf {
    let mut p = raw.as_os_str().to_owned();
    p.push(".offset");
    PathBuf::from(p)
}

/// Empties the raw files of a container about to start, and returns them opened for the
/// process to append to (stdout, stderr).
pub(super) fn fresh(log_path: &Path) -> std::io::Result<(File, File)> {
    let open = |stream: &str| -> std::io::Result<File> {
        let raw = raw_path(log_path, stream);
        let _ = std::fs::remove_file(&raw);
        let _ = std::fs::remove_file(offset_path(&raw));
        OpenOptions::new().create(true).append(true).open(&raw)
    };
    Ok((open("stdout")?, open("stderr")?))
}

/// Turns what the stream's raw file receives into log lines, from the recorded offset,
/// until `exited` turns true and everything written has been read.
pub(super) async fn tail(
    raw: PathBuf,
    stream: &'static str,
    log: Arc<Mutex<LogFile>>,
    mut exited: watch::Receiver<bool>,
) {
    let offsets = offset_path(&raw);
    let file = match OpenOptions::new().read(true).write(true).open(&raw) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(file = %raw.display(), error = %e, "cannot read the container's output");
            return;
        }
    };
    let mut offset: u64 = std::fs::read_to_string(&offsets)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let mut punched = 0;
    // Bytes read but not yet written out (the start of a line).
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut idle = Duration::from_millis(10);
    loop {
        let ended = *exited.borrow_and_update();
        let n = file.read_at(&mut chunk, offset + pending.len() as u64).unwrap_or(0);
        if n > 0 {
            pending.extend_from_slice(&chunk[..n]);
            let time = crate::logs::timestamp_now();
            let mut out = Vec::new();
            let mut used = 0;
            // Whole lines; lines longer than the limit go out in partial pieces first.
            loop {
                let rest = &pending[used..];
                match rest.iter().position(|b| *b == b'\n') {
                    Some(end) if end <= crate::logs::MAX_LINE => {
                        crate::logs::push_line(&mut out, &time, stream, false, &rest[..end]);
                        used += end + 1;
                    }
                    _ if rest.len() >= crate::logs::MAX_LINE => {
                        crate::logs::push_line(&mut out, &time, stream, true, &rest[..crate::logs::MAX_LINE]);
                        used += crate::logs::MAX_LINE;
                    }
                    _ => break,
                }
            }
            if !out.is_empty() {
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = log.write(&out) {
                    tracing::warn!(file = %raw.display(), error = %e, "cannot write the container log");
                }
            }
            pending.drain(..used);
            offset += used as u64;
            let _ = std::fs::write(&offsets, offset.to_string());
            if offset - punched >= PUNCH_EVERY {
                punched = punch(&file, offset).unwrap_or(punched);
            }
            idle = Duration::from_millis(10);
            continue;
        }
        if ended {
            // What is left when the stream ends goes out as a partial line.
            if !pending.is_empty() {
                let mut out = Vec::new();
                crate::logs::push_line(&mut out, &crate::logs::timestamp_now(), stream, true, &pending);
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                let _ = log.write(&out);
                offset += pending.len() as u64;
                let _ = std::fs::write(&offsets, offset.to_string());
            }
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(idle) => {}
            _ = exited.changed() => {}
        }
        idle = (idle * 2).min(IDLE_MAX);
    }
}

/// Frees the disk space of the first `upto` bytes (they have been read), keeping the
/// file's size and offsets; returns how far it punched.
fn punch(file: &File, upto: u64) -> Option<u64> {
    let len = upto / 4096 * 4096;
    // SAFETY: a valid descriptor; the range lies within the file.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            len as libc::off_t,
        )
    };
    (rc == 0).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn texts(log: &Path) -> Vec<String> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(|l| l.splitn(4, ' ').skip(2).collect::<Vec<_>>().join(" "))
            .collect()
    }

    #[tokio::test]
    async fn a_new_tailer_resumes_where_the_last_one_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("c.log");
        let (mut out, _err) = fresh(&log_path).unwrap();
        let log = Arc::new(Mutex::new(LogFile::open(&log_path, LOG_MAX_BYTES).unwrap()));
        let (exited, rx) = watch::channel(false);
        let first = tokio::spawn(tail(raw_path(&log_path, "stdout"), "stdout", log.clone(), rx));
        out.write_all(b"one\ntw").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while texts(&log_path) != ["F one"] {
            assert!(std::time::Instant::now() < deadline, "{:?}", texts(&log_path));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The first tailer goes (as with its agent); the process writes on.
        first.abort();
        out.write_all(b"o\nthree").unwrap();
        let (exited2, rx2) = watch::channel(false);
        let second = tokio::spawn(tail(raw_path(&log_path, "stdout"), "stdout", log, rx2));
        exited2.send(true).unwrap();
        second.await.unwrap();
        drop(exited);
        assert_eq!(texts(&log_path), ["F one", "F two", "P three"]);
    }
}
