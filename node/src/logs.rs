//! Container logs: how the agent stores them and how it serves them.
//!
//! Each container's stdout and stderr go to `<pod dir>/<container>.log` in the CRI log
//! format kubelets use (`<RFC3339Nano time> <stdout|stderr> <F|P> <text>`, `P` for a
//! partial line), so that every line has its time. When a container restarts, its log
//! becomes `<container>.previous.log` (what `kubectl logs --previous` reads).
//!
//! The endpoint `GET /containerLogs/{namespace}/{pod}/{container}` serves them as a
//! kubelet does, with `follow`, `tailLines`, `limitBytes`, `sinceSeconds`, `sinceTime`,
//! `timestamps` and `previous`. The API server proxies `pods/<name>/log` here.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use k8s_openapi::jiff::Timestamp;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, watch};

/// Lines longer than this are split into partial (`P`) lines, as container runtimes do.
pub const MAX_LINE: usize = 16 * 1024;

/// How much of a log file is read at a time.
const CHUNK: usize = 64 * 1024;

/// The time format of log lines and of `timestamps=true` (kubelet's RFC3339NanoFixed).
const TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%S.%NZ";

/// The current time as a log line's timestamp.
pub fn timestamp_now() -> String {
    Timestamp::now().strftime(TIME_FORMAT).to_string()
}

/// Appends one CRI log line to `out`.
pub fn push_line(out: &mut Vec<u8>, time: &str, stream: &str, partial: bool, text: &[u8]) {
    out.extend_from_slice(time.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(text);
    out.push(b'\n');
}

/// A container's current log file in its pod directory.
pub fn current_log(pod_dir: &FsPath, container: &str) -> PathBuf {
    pod_dir.join(format!("{container}.log"))
}

/// The log of the container's previous run.
pub fn previous_log(pod_dir: &FsPath, container: &str) -> PathBuf {
    pod_dir.join(format!("{container}.previous.log"))
}

/// One stored log line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry<'a> {
    /// The stored timestamp text (absent for a line not in CRI form).
    time: Option<&'a [u8]>,
    /// Whether the line continues in the next one.
    partial: bool,
    text: &'a [u8],
}

impl Entry<'_> {
    fn timestamp(&self) -> Option<Timestamp> {
        std::str::from_utf8(self.time?).ok()?.parse().ok()
    }
}

/// Parses one line (without its newline). Lines not in CRI form are taken whole.
fn parse_line(line: &[u8]) -> Entry<'_> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    if let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) {
        let ok = matches!(stream, b"stdout" | b"stderr") && matches!(tag, b"F" | b"P");
        if ok {
            return Entry {
                time: Some(time),
                partial: tag == b"P",
                text: parts.next().unwrap_or_default(),
            };
        }
    }
    Entry {
        time: None,
        partial: false,
        text: line,
    }
}

/// What to serve of a log.
#[derive(Debug, Clone, Default)]
struct Options {
    since: Option<Timestamp>,
    timestamps: bool,
}

/// Renders one entry as served.
fn render(out: &mut Vec<u8>, e: &Entry, timestamps: bool) {
    if timestamps {
        if let Some(t) = e.time {
            out.extend_from_slice(t);
            out.push(b' ');
        }
    }
    out.extend_from_slice(e.text);
    if !e.partial {
        out.push(b'\n');
    }
}

/// Renders the complete lines of `content` (a log file's bytes) as served: lines before
/// `since` left out.
fn render_log(content: &[u8], opts: &Options) -> Vec<u8> {
    let mut out = Vec::new();
    let entries = content
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(parse_line)
        .filter(|e| match (opts.since, e.timestamp()) {
            (Some(since), Some(t)) => t >= since,
            _ => true,
        });
    for e in entries {
        render(&mut out, &e, opts.timestamps);
    }
    out
}

/// The offset where the last `n` logical lines of a log of `len` bytes start (0 when it
/// has fewer). It reads backwards a chunk at a time, holding only those lines.
async fn tail_start(file: &mut tokio::fs::File, len: u64, n: usize) -> std::io::Result<u64> {
    if n == 0 {
        return Ok(len);
    }
    let mut pos = len;
    // The file from `pos` to the end.
    let mut data: Vec<u8> = Vec::new();
    loop {
        let read = CHUNK.min(pos as usize);
        pos -= read as u64;
        let mut chunk = vec![0u8; read];
        file.seek(std::io::SeekFrom::Start(pos)).await?;
        file.read_exact(&mut chunk).await?;
        chunk.extend_from_slice(&data);
        data = chunk;
        // Entries start after each newline (and at 0 at the file's beginning); only whole
        // entries count, so an incomplete last one is left for when it completes.
        let end = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let mut entries: Vec<usize> = if pos == 0 { vec![0] } else { Vec::new() };
        entries.extend(
            data[..end]
                .iter()
                .enumerate()
                .filter(|(i, b)| **b == b'\n' && i + 1 < end)
                .map(|(i, _)| i + 1),
        );
        // A logical line starts at the file's beginning, or after an entry that is not
        // partial (the first entry read is cut unless the beginning was reached).
        let mut lines: Vec<usize> = Vec::new();
        for (k, start) in entries.iter().enumerate() {
            let starts_line = match k {
                0 => pos == 0,
                _ => !parse_line(&data[entries[k - 1]..start - 1]).partial,
            };
            if starts_line {
                lines.push(*start);
            }
        }
        if lines.len() >= n {
            return Ok(pos + lines[lines.len() - n] as u64);
        }
        if pos == 0 {
            return Ok(0);
        }
    }
}

/// Whether a pod's container is running now; the pod worker answers.
pub trait Liveness: Send + Sync {
    /// Whether `container` runs (a follow ends when it stops).
    fn running(&self, container: &str) -> bool;
}

/// A pod the log endpoint can serve.
#[derive(Clone)]
struct PodLogs {
    dir: PathBuf,
    liveness: Arc<dyn Liveness>,
}

/// The pods running here, by `namespace/name`; kept by the pod manager.
#[derive(Clone, Default)]
pub struct PodDirs(Arc<RwLock<HashMap<String, PodLogs>>>);

impl PodDirs {
    /// Records a running pod's directory and how to tell whether its containers run.
    pub fn insert(&self, ns: &str, name: &str, dir: PathBuf, liveness: Arc<dyn Liveness>) {
        if let Ok(mut m) = self.0.write() {
            m.insert(format!("{ns}/{name}"), PodLogs { dir, liveness });
        }
    }

    /// Forgets a pod.
    pub fn remove(&self, ns: &str, name: &str) {
        if let Ok(mut m) = self.0.write() {
            m.remove(&format!("{ns}/{name}"));
        }
    }

    fn get(&self, ns: &str, name: &str) -> Option<PodLogs> {
        self.0.read().ok()?.get(&format!("{ns}/{name}")).cloned()
    }

    fn contains(&self, ns: &str, name: &str) -> bool {
        self.0.read().is_ok_and(|m| m.contains_key(&format!("{ns}/{name}")))
    }
}

#[derive(Clone)]
struct LogState {
    pods: PodDirs,
    shutdown: watch::Receiver<bool>,
}

/// Query parameters of a log request, as a kubelet takes them.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogParams {
    #[serde(default)]
    follow: bool,
    tail_lines: Option<i64>,
    limit_bytes: Option<i64>,
    since_seconds: Option<i64>,
    since_time: Option<String>,
    #[serde(default)]
    timestamps: bool,
    #[serde(default)]
    previous: bool,
}

/// The router of the log endpoint.
pub fn router(pods: PodDirs, shutdown: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/containerLogs/{namespace}/{pod}/{container}", get(container_logs))
        .with_state(LogState { pods, shutdown })
}

fn error(status: StatusCode, what: String) -> Response {
    (status, what).into_response()
}

/// Only a container name (a DNS label) may pick a file: nothing like `../x`.
fn is_container_name(container: &str) -> bool {
    !container.is_empty() && container.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Identifies the file a handle or path is (to notice a rotation while following).
async fn file_id(path: &FsPath) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    tokio::fs::metadata(path).await.ok().map(|m| m.ino())
}

async fn container_logs(
    State(state): State<LogState>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(params): Query<LogParams>,
) -> Response {
    let Some(entry) = state.pods.get(&namespace, &pod) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} is not running on this node"),
        );
    };
    if !is_container_name(&container) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("container {container:?} in pod {pod:?} is not available"),
        );
    }
    let since = match (params.since_seconds, params.since_time.as_deref()) {
        (Some(s), _) => Timestamp::now()
            .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(s))
            .ok(),
        (None, Some(t)) => match t.parse::<Timestamp>() {
            Ok(t) => Some(t),
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("sinceTime {t:?}: {e}")),
        },
        (None, None) => None,
    };
    let opts = Options {
        since,
        timestamps: params.timestamps,
    };
    let tail_lines = params.tail_lines.map(|n| n.max(0) as usize);
    let mut path = if params.previous {
        previous_log(&entry.dir, &container)
    } else {
        current_log(&entry.dir, &container)
    };
    if !params.previous && !path.exists() && !entry.liveness.running(&container) {
        // Between a run's end and the next start, the last run's log is the current one.
        path = previous_log(&entry.dir, &container);
    }
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) if params.previous => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("previous terminated container {container:?} in pod {pod:?} not found"),
            )
        }
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("container {container:?} in pod {pod:?} is waiting to start: ContainerCreating"),
            )
        }
    };
    // The served part starts `tailLines` logical lines before the end; it is read and
    // sent in chunks, so a large log is never held in memory.
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading {}: {e}", path.display()),
            )
        }
    };
    let start = match tail_lines {
        Some(n) => match tail_start(&mut file, len, n).await {
            Ok(s) => s,
            Err(e) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("reading {}: {e}", path.display()),
                )
            }
        },
        None => 0,
    };
    let budget = params.limit_bytes.map(|n| n.max(0) as usize);
    let follow = params.follow && !params.previous;
    // What is there, then (following) whatever is appended, until the container stops
    // (or restarts, which rotates its log), the pod goes, or the client does.
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let mut shutdown = state.shutdown.clone();
    let id = file_id(&path).await;
    // Without follow, the log as it was when asked: lines written meanwhile would make a
    // `tailLines=N` answer longer than N.
    let end = if follow { u64::MAX } else { len };
    tokio::spawn(async move {
        let mut budget = budget;
        let mut offset = start;
        let mut pending: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; CHUNK];
        loop {
            // Checked before reading, so what was written before the stop is still sent.
            let ended = !follow
                || !entry.liveness.running(&container)
                || !state.pods.contains(&namespace, &pod)
                || file_id(&path).await != id;
            // Everything up to the current end, a chunk at a time.
            loop {
                if file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
                    return;
                }
                let want = CHUNK.min(end.saturating_sub(offset).min(CHUNK as u64) as usize);
                if want == 0 {
                    break;
                }
                let n = match file.read(&mut chunk[..want]).await {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(_) => return,
                };
                offset += n as u64;
                pending.extend_from_slice(&chunk[..n]);
                // Only whole lines; an incomplete last one waits for the rest.
                let complete = pending.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                if complete == 0 {
                    continue;
                }
                let mut out = render_log(&pending[..complete], &opts);
                pending.drain(..complete);
                if let Some(left) = budget.as_mut() {
                    out.truncate(*left);
                    *left -= out.len();
                }
                if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                    return;
                }
                if budget == Some(0) {
                    return;
                }
            }
            if ended {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = tx.closed() => return,
                _ = shutdown.changed() => return,
            }
        }
    });
    let stream = futures::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        Ok::<_, std::convert::Infallible>,
    );
    Response::builder()
        .header("content-type", "text/plain")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_container_names_pick_a_log_file() {
        assert!(is_container_name("web-1"));
        for bad in ["", "../x", "a/b", "..", "a.b"] {
            assert!(!is_container_name(bad), "{bad}");
        }
        let dir = FsPath::new("/data/pods/u");
        assert_eq!(current_log(dir, "c"), dir.join("c.log"));
        assert_eq!(previous_log(dir, "c"), dir.join("c.previous.log"));
    }

    fn log(lines: &[(i64, bool, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (second, partial, text) in lines {
            let t = Timestamp::from_second(*second)
                .unwrap()
                .strftime(TIME_FORMAT)
                .to_string();
            push_line(&mut out, &t, "stdout", *partial, text.as_bytes());
        }
        out
    }

    #[test]
    fn timestamps_are_rfc3339_with_nine_fraction_digits() {
        let t = Timestamp::from_second(0).unwrap().strftime(TIME_FORMAT).to_string();
        assert_eq!(t, "1970-01-01T00:00:00.000000000Z");
        let now = timestamp_now();
        assert_eq!(now.len(), 30, "{now}");
        assert!(now.parse::<Timestamp>().is_ok());
    }

    #[tokio::test]
    async fn renders_tail_since_and_timestamps() {
        // Enough lines before the ones checked that the tail is found across chunks.
        let filler: Vec<(i64, bool, String)> = (0..20_000).map(|i| (1, i % 3 == 0, format!("filler {i}"))).collect();
        let mut lines: Vec<(i64, bool, &str)> = filler.iter().map(|(t, p, s)| (*t, *p, s.as_str())).collect();
        lines.extend([
            (2, false, "end of filler"),
            (10, false, "a"),
            (20, true, "b1"),
            (20, false, "b2"),
            (30, false, "c"),
        ]);
        let content = log(&lines);
        assert!(content.len() > 3 * CHUNK);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        std::fs::write(&path, &content).unwrap();
        let mut file = tokio::fs::File::open(&path).await.unwrap();
        let opts = |since: Option<i64>, timestamps: bool| Options {
            since: since.map(|s| Timestamp::from_second(s).unwrap()),
            timestamps,
        };
        // (tail, since, timestamps) -> output
        let cases = [
            (Some(1), None, false, "c\n"),
            (Some(2), None, false, "b1b2\nc\n"),
            (Some(3), None, false, "a\nb1b2\nc\n"),
            (Some(0), None, false, ""),
            (None, Some(20), false, "b1b2\nc\n"),
            (Some(5), Some(25), false, "c\n"),
            (Some(1), None, true, "1970-01-01T00:00:30.000000000Z c\n"),
        ];
        for (tail, since, ts, want) in cases {
            let start = match tail {
                Some(n) => tail_start(&mut file, content.len() as u64, n).await.unwrap() as usize,
                None => 0,
            };
            let got = render_log(&content[start..], &opts(since, ts));
            assert_eq!(String::from_utf8_lossy(&got), want, "{tail:?} {since:?} {ts}");
        }
        let all = tail_start(&mut file, content.len() as u64, 1_000_000).await.unwrap();
        assert_eq!(all, 0, "more lines asked for than there are: from the beginning");
        let short = log(&[(10, true, "x1"), (10, false, "x2")]);
        std::fs::write(&path, &short).unwrap();
        let mut file = tokio::fs::File::open(&path).await.unwrap();
        assert_eq!(
            tail_start(&mut file, short.len() as u64, 1).await.unwrap(),
            0,
            "a partial first line"
        );
        // A line not in CRI form is served as it is.
        assert_eq!(render_log(b"plain text\n", &Options::default()), b"plain text\n");
    }
}
