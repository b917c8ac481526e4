//! A cluster of real `kairn server` processes on loopback, for fault tests: start,
//! kill -9, stop and restart members, and clients of each member's API.

use std::path::{Path, PathBuf};
use std::process::Child;
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
    /// Joined as a learner (`--join ADDR --learner`) instead of forming with `--peers`.
    pub learner: bool,
    /// The loopback IP it binds Raft on and connects to its peers from.
    pub raft_ip: std::net::IpAddr,
    /// Where its peers reach it, when not at its Raft address (a proxy).
    pub advertised: Option<String>,
    child: Option<Child>,
}

impl Node {
    /// Where the other members reach its Raft port.
    pub fn raft_addr(&self) -> String {
        self.advertised.clone().unwrap_or_else(|| self.raft_bind())
    }

    /// The address its Raft port is bound to.
    pub fn raft_bind(&self) -> String {
        format!("{}:{}", self.raft_ip, self.raft_port)
    }

    /// `https://127.0.0.1:PORT` of its API.
    pub fn api_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
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
    /// One fault-injecting proxy per member, by index, when made with `behind_proxies`.
    proxies: Vec<super::proxy::Proxy>,
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
                learner: false,
                raft_ip: std::net::Ipv4Addr::LOCALHOST.into(),
                advertised: None,
                child: None,
            })
            .collect();
        Members::with_nodes(nodes, extra)
    }

    /// `n` members whose Raft traffic goes through fault-injecting proxies: member `i`
    /// binds `127.0.0.(10+i)` and is reached through its proxy, so it can be cut off
    /// with [`Members::partition`].
    pub fn behind_proxies(dir: &Path, n: u64, extra: &[&str]) -> Members {
        let mut proxies = Vec::new();
        let nodes: Vec<Node> = (1..=n)
            .map(|id| {
                let raft_ip = std::net::IpAddr::from([127, 0, 0, 10 + id as u8]);
                let raft_port = free_port();
                let proxy = super::proxy::Proxy::start(std::net::SocketAddr::new(raft_ip, raft_port));
                let advertised = Some(proxy.addr.to_string());
                proxies.push(proxy);
                Node {
                    id,
                    dir: dir.join(format!("m{id}")),
                    api_port: free_port(),
                    raft_port,
                    learner: false,
                    raft_ip,
                    advertised,
                    child: None,
                }
            })
            .collect();
        let mut members = Members::with_nodes(nodes, extra);
        members.proxies = proxies;
        members
    }

    /// Cuts member `id` off from the others, both ways (its API stays reachable).
    pub fn partition(&self, id: u64) {
        let others: Vec<std::net::IpAddr> = self.nodes.iter().filter(|n| n.id != id).map(|n| n.raft_ip).collect();
        for (node, proxy) in self.nodes.iter().zip(&self.proxies) {
            if node.id == id {
                proxy.block(&others);
            } else {
                proxy.block(&[self.node(id).raft_ip]);
            }
        }
    }

    /// Ends every partition.
    pub fn heal(&self) {
        for proxy in &self.proxies {
            proxy.heal();
        }
    }

    fn with_nodes(nodes: Vec<Node>, extra: &[&str]) -> Members {
        let peers = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.raft_addr()))
            .collect::<Vec<_>>()
            .join(",");
        Members {
            nodes,
            peers,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            proxies: Vec::new(),
        }
    }

    /// Adds a member that joins the running cluster as a learner through member 1, and
    /// starts it; returns its id.
    pub fn add_learner(&mut self) -> u64 {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let dir = self.nodes[0].dir.parent().unwrap().join(format!("m{id}"));
        self.nodes.push(Node {
            id,
            dir,
            api_port: free_port(),
            raft_port: free_port(),
            learner: true,
            raft_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            advertised: None,
            child: None,
        });
        self.start(id);
        id
    }

    /// Every member's API URL, for a client or agent that fails over between them.
    pub fn api_urls(&self) -> String {
        self.nodes.iter().map(|n| n.api_url()).collect::<Vec<_>>().join(",")
    }

    /// Starts member `id` (1-based) and returns at once.
    pub fn start(&mut self, id: u64) {
        let first_raft = self.nodes[0].raft_addr();
        let start: Vec<String> = if self.node(id).learner {
            vec!["--join".into(), first_raft, "--learner".into()]
        } else {
            vec!["--peers".into(), self.peers.clone()]
        };
        let extra = self.extra.clone();
        let node = self.node_mut(id);
        assert!(node.child.is_none(), "member {id} already runs");
        std::fs::create_dir_all(&node.dir).unwrap();
        let _ = std::fs::remove_file(node.dir.join("kubeconfig"));
        let child = super::kairn_logging_to(&node.dir.join("kairn.log"))
            .args(["server", "--id", &id.to_string()])
            .args(&start)
            .args(["--api-addr", &format!("127.0.0.1:{}", node.api_port)])
            .args(["--raft-addr", &node.raft_bind()])
            .arg("--data-dir")
            .arg(&node.dir)
            .args(&extra)
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
        super::terminate(&mut child, Duration::from_secs(45), || self.node(id).log())
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
        kube::Client::try_from(self.config(id).await).unwrap()
    }

    /// As [`Members::client`], without kube-rs' retries of 503 answers (to see them).
    pub async fn client_without_retry(&self, id: u64) -> kube::Client {
        let mut config = self.config(id).await;
        config.default_retry = false;
        kube::Client::try_from(config).unwrap()
    }

    async fn config(&self, id: u64) -> kube::Config {
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
        config
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

/// Another `kairn` process (a standalone component, a node agent) logging to a file,
/// killed when dropped.
pub struct Process {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Process {
    /// Starts `kairn <args>`, its stderr in `dir/<name>.log`.
    pub fn start(dir: &Path, name: &str, args: &[&str]) -> Process {
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = super::kairn_logging_to(&log)
            .args(args)
            .current_dir(dir)
            .spawn()
            .expect("kairn starts");
        Process {
            name: name.to_string(),
            log,
            child: Some(child),
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and waits for the exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        super::terminate(&mut child, Duration::from_secs(30), || self.log())
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM first: an agent stops its pods' processes on the way out.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts a node agent named `name` (data in `dir/<name>`) on every API in `servers`, and
/// waits for its Node.
pub async fn start_agent(dir: &Path, kubeconfig: &Path, servers: &str, name: &str, client: &kube::Client) -> Process {
    let agent_dir = dir.join(name);
    let agent = Process::start(
        &agent_dir,
        "agent",
        &[
            "agent",
            "--kubeconfig",
            kubeconfig.to_str().expect("a UTF-8 path"),
            "--server",
            servers,
            "--node-name",
            name,
            "--data-dir",
            agent_dir.to_str().expect("a UTF-8 path"),
            "--log-addr",
            "127.0.0.1:0",
        ],
    );
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    super::wait_for(&format!("node {name}"), Duration::from_secs(60), || async {
        nodes.get_opt(name).await.ok().flatten().map(|_| ())
    })
    .await;
    agent
}
