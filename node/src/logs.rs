//! The agent's log endpoint: `GET /containerLogs/{namespace}/{pod}/{container}`, as a
//! kubelet serves it. The API server proxies `pods/<name>/log` here, so `kubectl logs`
//! reads the container's log file on the node that runs it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, watch};

/// Where each pod's directory is, by `namespace/name`; kept by the pod manager.
#[derive(Clone, Default)]
pub struct PodDirs(Arc<RwLock<HashMap<String, PathBuf>>>);

impl PodDirs {
    /// Records a running pod's directory.
    pub fn insert(&self, ns: &str, name: &str, dir: PathBuf) {
        if let Ok(mut m) = self.0.write() {
            m.insert(format!("{ns}/{name}"), dir);
        }
    }

    /// Forgets a pod.
    pub fn remove(&self, ns: &str, name: &str) {
        if let Ok(mut m) = self.0.write() {
            m.remove(&format!("{ns}/{name}"));
        }
    }

    fn get(&self, ns: &str, name: &str) -> Option<PathBuf> {
        self.0.read().ok()?.get(&format!("{ns}/{name}")).cloned()
    }
}

#[derive(Clone)]
struct LogState {
    pods: PodDirs,
    shutdown: watch::Receiver<bool>,
}

/// Query parameters of a log request (a subset of `kubectl logs`' options).
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogParams {
    #[serde(default)]
    follow: bool,
    tail_lines: Option<usize>,
    limit_bytes: Option<usize>,
}

/// The router of the log endpoint.
pub fn router(pods: PodDirs, shutdown: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/containerLogs/{namespace}/{pod}/{container}", get(container_logs))
        .with_state(LogState { pods, shutdown })
}

fn not_found(what: String) -> Response {
    (StatusCode::NOT_FOUND, what).into_response()
}

/// The log file of `container` in a pod directory. The name comes from the URL, so
/// only a container name (a DNS label) may pick the file: nothing like `../x`.
fn log_file(pod_dir: &std::path::Path, container: &str) -> Option<PathBuf> {
    let is_name = !container.is_empty() && container.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    is_name.then(|| pod_dir.join(format!("{container}.log")))
}

/// The last `n` lines of `text`.
fn tail(text: &[u8], n: usize) -> &[u8] {
    let mut newlines = 0;
    // A trailing newline ends the last line; it does not start a new one.
    let end = if text.ends_with(b"\n") {
        text.len() - 1
    } else {
        text.len()
    };
    for i in (0..end).rev() {
        if text[i] == b'\n' {
            newlines += 1;
            if newlines == n {
                return &text[i + 1..];
            }
        }
    }
    if n == 0 {
        &text[text.len()..]
    } else {
        text
    }
}

async fn container_logs(
    State(state): State<LogState>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(params): Query<LogParams>,
) -> Response {
    let Some(dir) = state.pods.get(&namespace, &pod) else {
        return not_found(format!("pod {namespace}/{pod} is not running on this node"));
    };
    let Some(path) = log_file(&dir, &container) else {
        return not_found(format!("no container {container:?} in pod {namespace}/{pod}"));
    };
    let content = match tokio::fs::read(&path).await {
        Ok(c) => c,
        Err(_) => return not_found(format!("container {container} of pod {namespace}/{pod} has no log yet")),
    };
    let mut offset = content.len() as u64;
    let mut first = match params.tail_lines {
        Some(n) => tail(&content, n).to_vec(),
        None => content,
    };
    if let Some(limit) = params.limit_bytes {
        first.truncate(limit);
    }
    if !params.follow {
        return ([("content-type", "text/plain")], first).into_response();
    }
    // Follow: send what is there, then whatever is appended, until the client goes.
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let mut shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        if tx.send(Bytes::from(first)).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = tx.closed() => return,
                _ = shutdown.changed() => return,
            }
            let Ok(mut file) = tokio::fs::File::open(&path).await else {
                return;
            };
            if file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
                return;
            }
            let mut more = Vec::new();
            if file.read_to_end(&mut more).await.is_err() {
                return;
            }
            if !more.is_empty() {
                offset += more.len() as u64;
                if tx.send(Bytes::from(more)).await.is_err() {
                    return;
                }
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
        .unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())
}

#[cfg(test)]
mod tests {
    use super::{log_file, tail};

    #[test]
    fn only_container_names_pick_a_log_file() {
        let dir = std::path::Path::new("/data/pods/u");
        assert_eq!(log_file(dir, "web-1"), Some(dir.join("web-1.log")));
        for bad in ["", "../x", "a/b", "..", "a.b"] {
            assert_eq!(log_file(dir, bad), None, "{bad}");
        }
    }

    #[test]
    fn tail_counts_lines_from_the_end() {
        assert_eq!(tail(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", 1), b"c");
        assert_eq!(tail(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail(b"a\nb\n", 0), b"");
    }
}
