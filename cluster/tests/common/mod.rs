//! What the API tests share: a real one-member cluster on a temp dir (TLS and tokens as
//! `kairn up` serves them), raw HTTPS requests through its admin client, and the real
//! `kubectl` against it when kubectl is on PATH.

#![allow(dead_code)]

use std::future::Future;
use std::process::Output;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use kairn_cluster::api::auth;
use kairn_cluster::member::Member;
use kairn_node::runtime::process::ProcessRuntime;
use kairn_node::AgentConfig;
use tokio::sync::watch;

/// A running member and an admin client of its API.
pub struct Server {
    pub client: kube::Client,
    member: Option<Member>,
    pub dir: tempfile::TempDir,
}

/// Starts a one-member cluster (with `extra_users`, e.g. node identities).
pub async fn start_with(extra_users: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let member = Member::start_local(&dir.path().join("store"), extra_users)
        .await
        .unwrap();
    Server {
        client: member.client().unwrap(),
        member: Some(member),
        dir,
    }
}

/// Starts a one-member cluster.
pub async fn start() -> Server {
    start_with(&[]).await
}

impl Server {
    /// The member.
    pub fn member(&self) -> &Member {
        self.member.as_ref().unwrap()
    }

    /// Stops the member cleanly.
    pub async fn stop(mut self) {
        if let Some(m) = self.member.take() {
            m.stop().await.unwrap();
        }
    }

    /// One raw request as the admin; the answer's status, headers and body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Vec<u8>>,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(kube::client::Body::from(body.into())).unwrap();
        let resp = self.client.send(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        (parts.status, parts.headers, body.collect().await.unwrap().to_bytes())
    }

    /// A raw GET.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Bytes) {
        self.request("GET", path, headers, Vec::new()).await
    }

    /// Runs the real kubectl as the admin, with its own kubeconfig and cache; `None`
    /// (after printing why) when kubectl is not on PATH.
    pub async fn kubectl(&self, args: &[&str]) -> Option<Output> {
        if !kubectl_present().await {
            eprintln!("skipping the kubectl check: kubectl is not on PATH");
            return None;
        }
        let kubeconfig = self.dir.path().join("kubeconfig");
        if !kubeconfig.exists() {
            std::fs::write(&kubeconfig, self.member().kubeconfig_as(auth::ADMIN).unwrap()).unwrap();
        }
        let out = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("kube-cache"))
            .args(args)
            .env_remove("KUBECONFIG")
            .output()
            .await
            .unwrap();
        Some(out)
    }
}

/// Whether the real kubectl can run here.
pub async fn kubectl_present() -> bool {
    tokio::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .await
        .is_ok_and(|o| o.status.success())
}

/// Text of a command's output.
pub fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// Polls `check` until it returns `Some`, or panics naming `what` after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` until it holds, or panics naming `what` after `deadline`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, deadline, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// A member with everything that makes pods run, stopped by [`Cluster::stop`].
pub struct Cluster {
    pub s: Server,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts a member, a scheduler, the controllers and node agent `n1` running pods as
/// host processes.
pub async fn cluster() -> Cluster {
    cluster_of(&["n1"]).await
}

/// Starts a member, the scheduler, the controllers and an agent for each of `nodes`
/// (each as its own node user, with its own data directory), running pods as host
/// processes.
pub async fn cluster_of(nodes: &[&str]) -> Cluster {
    let users: Vec<String> = nodes.iter().map(|n| auth::node_user(n)).collect();
    let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let s = start_with(&user_refs).await;
    let (stop, rx) = watch::channel(false);
    let member = s.member();
    let mut tasks = vec![
        tokio::spawn(kairn_cluster::scheduler::run(
            member.client_as(auth::SCHEDULER).unwrap(),
            rx.clone(),
        )),
        tokio::spawn(kairn_cluster::controllers::run(
            member.client_as(auth::CONTROLLER_MANAGER).unwrap(),
            rx.clone(),
        )),
    ];
    for (node, user) in nodes.iter().zip(&users) {
        let agent = member.client_as(user).unwrap();
        let config = AgentConfig {
            node_name: node.to_string(),
            node_ip: "127.0.0.1".into(),
            data_dir: s.dir.path().join(format!("node-{node}")),
            log_addr: "127.0.0.1:0".parse().unwrap(),
            manifest_dir: None,
            eviction_hard: Default::default(),
        };
        let agent_rx = rx.clone();
        tasks.push(tokio::spawn(async move {
            kairn_node::run(agent, config, ProcessRuntime, agent_rx).await.unwrap();
        }));
    }
    Cluster { s, stop, tasks }
}

impl Cluster {
    /// Stops the agent (and with it every pod's processes), the controllers, the member.
    pub async fn stop(self) {
        self.stop.send(true).unwrap();
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(60), t).await.unwrap().unwrap();
        }
        self.s.stop().await;
    }
}

/// Runs kubectl; `None` when it is not installed. Panics on failure.
pub async fn kubectl(s: &Server, args: &[&str]) -> Option<String> {
    let out = s.kubectl(args).await?;
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    Some(text(&out.stdout))
}

/// Runs kubectl expecting it to fail; its stderr.
pub async fn kubectl_fails(s: &Server, args: &[&str]) -> Option<String> {
    let out = s.kubectl(args).await?;
    assert!(
        !out.status.success(),
        "kubectl {args:?} should fail: {}",
        text(&out.stdout)
    );
    Some(text(&out.stderr))
}
