//! A cluster of real `kairn server` processes on loopback, for fault tests: start,
//! kill -9, stop and restart members, and clients of each member's API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound, then released: the member binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One member: its process (when running), data directory and fixed addresses (a
/// restarted member keeps its addresses, as its peers know them).
pub struct Node {
    pub id: u64,
    pub dir: PathBuf,
    pub api_port: u16,
    pub raft_port: u16,
    child: Option<Child>,
}

impl Node {
    /// The member's Raft address.
    pub fn raft_addr(&self) -> String {
        format!("127.0.0.1:{}", self.raft_port)
    }

    /// Whether its process runs.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kairn.log")).unwrap_or_default()
    }
}

/// Members started with `--peers` (all of them voters).
pub struct Members {
    pub nodes: Vec<Node>,
    peers: String,
    extra: Vec<String>,
}

impl Members {
    /// `n` members in `dir/m<id>`, not yet started; `extra` flags go to every member.
    pub fn new(dir: &Path, n: u64, extra: &[&str]) -> Members {
        let nodes: Vec<Node> = (1..=n)
            .map(|id| Node {
                id,
                dir: dir.join(format!("m{id}")),
                api_port: free_port(),
                raft_port: free_port(),
                child: None,
            })
            .collect();
        let peers = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.raft_addr()))
            .collect::<Vec<_>>()
            .join(",");
        Members {
            nodes,
            peers,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Starts member `id` (1-based) and returns at once.
    pub fn start(&mut self, id: u64) {
        let peers = self.peers.clone();
        let extra = self.extra.clone();
        let node = self.node_mut(id);
        assert!(node.child.is_none(), "member {id} already runs");
        std::fs::create_dir_all(&node.dir).unwrap();
        let _ = std::fs::remove_file(node.dir.join("kubeconfig"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("kairn.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kairn"))
            .args(["server", "--id", &id.to_string(), "--peers", &peers])
            .args(["--api-addr", &format!("127.0.0.1:{}", node.api_port)])
            .args(["--raft-addr", &node.raft_addr()])
            .arg("--data-dir")
            .arg(&node.dir)
            .args(&extra)
            .env(
                "KAIRN_LOG",
                std::env::var("KAIRN_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("kairn server starts");
        node.child = Some(child);
    }

    /// Starts every member that is not running.
    pub fn start_all(&mut self) {
        let ids: Vec<u64> = self.nodes.iter().filter(|n| !n.running()).map(|n| n.id).collect();
        for id in ids {
            self.start(id);
        }
    }

    /// The member with this id.
    pub fn node(&self, id: u64) -> &Node {
        self.nodes.iter().find(|n| n.id == id).expect("a member with this id")
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("a member with this id")
    }

    /// kill -9: no shutdown, no flush.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.node_mut(id).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and waits for the exit; returns the exit code.
    pub fn stop(&mut self, id: u64) -> Option<i32> {
        let mut child = self.node_mut(id).child.take()?;
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "member {id} did not stop within 45s of SIGTERM; its log:\n{}",
                    self.node(id).log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for member `id`'s process to exit on its own (a refusal to start); returns
    /// its exit code.
    pub fn wait_exit(&mut self, id: u64, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let node = self.node_mut(id);
        let child = node.child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                node.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// An admin client of member `id`'s API, once it serves (its kubeconfig is written
    /// then, with the cluster's shared CA and token).
    pub async fn client(&self, id: u64) -> kube::Client {
        let file = self.node(id).dir.join("kubeconfig");
        let deadline = Instant::now() + Duration::from_secs(60);
        let kubeconfig = loop {
            if let Ok(k) = kube::config::Kubeconfig::read_from(&file) {
                break k;
            }
            assert!(
                Instant::now() < deadline,
                "member {id} wrote no kubeconfig within 60s; its log:\n{}",
                self.node(id).log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        // A dead member must fail fast, not hang the test.
        config.connect_timeout = Some(Duration::from_secs(2));
        config.read_timeout = Some(Duration::from_secs(15));
        kube::Client::try_from(config).unwrap()
    }

    /// The leader's id, as member `via` reports it.
    pub async fn leader(&self, via: u64) -> Option<u64> {
        let client = self.client(via).await;
        let request = http::Request::get("/apis/kairn.dev/v1/members").body(Vec::new()).ok()?;
        let list: serde_json::Value = client.request(request).await.ok()?;
        list["items"]
            .as_array()?
            .iter()
            .find(|m| m["leader"] == true)
            .and_then(|m| m["id"].as_u64())
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
