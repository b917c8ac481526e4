//! A test-only Git smart-HTTP server: serves a directory of bare repositories on loopback
//! by running the real `git http-backend` as a CGI program, pushes included.
//!
//! Standalone on purpose (it uses nothing else of `tests/common`), so any test crate can
//! include it: `#[path = "../../tests/common/git_http.rs"] mod git_http;`. The server runs
//! on its own thread and runtime, so a test may drive the blocking `git` command (or
//! blocking git2 calls) while it serves.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use tokio::io::AsyncWriteExt;

/// A running server; stops when dropped.
pub struct GitHttp {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GitHttp {
    /// Serves the bare repositories under `root` (e.g. `root/app.git`) on 127.0.0.1.
    pub fn start(root: &Path) -> GitHttp {
        let root = root.to_path_buf();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime for the git HTTP server");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("binding the git HTTP server");
                addr_tx
                    .send(listener.local_addr().expect("the server's address"))
                    .expect("reporting the address");
                let app = axum::Router::new()
                    .fallback(move |req: Request| {
                        let root = root.clone();
                        async move { cgi(&root, req).await }
                    })
                    // Pushes carry whole packs.
                    .layer(DefaultBodyLimit::disable());
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
        });
        let addr = addr_rx.recv().expect("the git HTTP server did not start");
        GitHttp {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>/<repo>`: the clone URL of `root/<repo>`.
    pub fn url_of(&self, repo: &str) -> String {
        format!("http://{}/{}", self.addr, repo.trim_start_matches('/'))
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server and waits for its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for GitHttp {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn error(status: StatusCode, message: String) -> Response {
    let mut resp = Response::new(Body::from(message));
    *resp.status_mut() = status;
    resp
}

/// Runs `git http-backend` for one request (RFC 3875 CGI) and turns its output into a response.
async fn cgi(root: &PathBuf, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
    };
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("HTTP_GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_USER", "test")
        .env("REMOTE_ADDR", "127.0.0.1")
        // Receive-pack is off for anonymous users unless enabled: let tests push.
        .env("GIT_CONFIG_COUNT", "2")
        .env("GIT_CONFIG_KEY_0", "http.receivepack")
        .env("GIT_CONFIG_VALUE_0", "true")
        .env("GIT_CONFIG_KEY_1", "safe.directory")
        .env("GIT_CONFIG_VALUE_1", "*")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("running git http-backend: {e}"),
            )
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A backend that stops reading early (an error) is reported by its output below.
        let _ = stdin.write_all(&body).await;
    }
    let out = match child.wait_with_output().await {
        Ok(o) => o,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("git http-backend: {e}")),
    };
    parse_cgi(&out.stdout).unwrap_or_else(|| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("git http-backend: {}", String::from_utf8_lossy(&out.stderr)),
        )
    })
}

/// A CGI response: header lines (`Status:` among them), a blank line, the body.
fn parse_cgi(out: &[u8]) -> Option<Response> {
    let (head_len, sep) = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))?;
    let head = std::str::from_utf8(&out[..head_len]).ok()?;
    let mut resp = Response::new(Body::from(out[head_len + sep..].to_vec()));
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next()?.parse::<u16>().ok()?;
            *resp.status_mut() = StatusCode::from_u16(code).ok()?;
        } else if let (Ok(n), Ok(v)) = (HeaderName::try_from(name.trim()), HeaderValue::from_str(value)) {
            resp.headers_mut().append(n, v);
        }
    }
    Some(resp)
}
