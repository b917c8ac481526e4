//! `kairn bench`: benchmarks that start their own `kairn server` on a temp directory
//! (a child process on loopback, TLS and tokens as `kairn up` serves them) and measure
//! through kube-rs, as any client sees the API. Numbers go to stdout as a Markdown table for
//! `docs/benchmarks.md`.
//!
//! `kairn bench api`:
//! - LIST: N ConfigMaps read through kube-rs pages (`limit`/`continue`), and in one list;
//! - a kube-rs watcher (list, then watch) over those N objects while a writer changes
//!   them: its cache must end equal to the server's state (no event lost);
//! - watch fan-out: W watchers of one namespace, one writer; the delay from each write's
//!   timestamp to each watcher receiving it (p50, p99, max), and every event received.
//!
//! `kairn bench writes`: 200-byte ConfigMap creates per second with 1, 16 and 64 clients,
//! on its own member or (`--kubeconfig`) on any API server, to compare builds.
//!
//! `kairn bench store`: the store against etcd 3.4, side by side (`store.rs`).
//!
//! `kairn bench gitops`: the reconciler on repos of 1,000 and 10,000 objects (`gitops.rs`).
//!
//! `kairn bench scheduler`: scheduling throughput over hollow nodes (`scheduler.rs`).
//!
//! `kairn bench pods`: pod start latency and agent memory on one real agent (`pods.rs`).
//!
//! `kairn bench controllers`: a controller manager's memory and CPU per pod it holds
//! (`controllers.rs`).

mod controllers;
mod gitops;
mod pods;
mod scheduler;
mod store;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kairn_cluster::kinds::{Batch, BatchOperation, BatchResult, BatchVerb};
use kube::api::{ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use serde_json::json;

/// `kairn bench` flags.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub which: Which,
}

/// The benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum Which {
    /// LIST of many ConfigMaps through kube-rs pages, a watcher over them, watch fan-out.
    Api(ApiArgs),
    /// ConfigMap creates per second through the API with 1, 16 and 64 clients, on one
    /// member and on three.
    Writes(WritesArgs),
    /// First sync, 1% change and one-object change of repos of 1,000 and 10,000 objects.
    Gitops(gitops::GitopsArgs),
    /// Puts, linearizable reads and watch fan-out on a 3-member Kairn store and a
    /// 3-member etcd, with the same etcd-protocol client.
    Store(store::StoreArgs),
    /// Pods scheduled per second over thousands of hollow nodes, per placement workload.
    Scheduler(scheduler::SchedulerArgs),
    /// Pod start latency (created to Running) and the agent's memory, on one real agent.
    Pods(pods::PodsArgs),
    /// A controller manager's memory and CPU holding the pods of one large ReplicaSet.
    Controllers(controllers::ControllersArgs),
}

/// `kairn bench writes` flags.
#[derive(Debug, clap::Args)]
pub struct WritesArgs {
    /// Creates per client count.
    #[arg(long, default_value_t = 3_000)]
    pub count: usize,
    /// Concurrent clients, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub clients: Vec<usize>,
    /// Cluster sizes to measure, comma-separated: each a fresh cluster of that many
    /// `kairn server` processes (`--peers`), clients spread over their API servers.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    pub members: Vec<u64>,
    /// Measure the API server this kubeconfig names instead of starting one (to compare
    /// builds: it must be empty, the benchmark creates namespaces).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
}

/// `kairn bench api` flags.
#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// ConfigMaps to list.
    #[arg(long, default_value_t = 30_000)]
    pub objects: usize,
    /// Page size of the paged LIST (kube-rs' watcher default is 500).
    #[arg(long, default_value_t = 500)]
    pub page: u32,
    /// Watchers of the fan-out.
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,
    /// Writes the fan-out's writer makes.
    #[arg(long, default_value_t = 1_000)]
    pub writes: usize,
}

/// Runs a benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.which {
        Which::Api(a) => api(a).await,
        Which::Writes(w) => writes(w).await,
        Which::Gitops(g) => gitops::run(g).await,
        Which::Store(s) => store::run(s).await,
        Which::Scheduler(s) => scheduler::run(s).await,
        Which::Pods(p) => pods::run(p).await,
        Which::Controllers(c) => controllers::run(c).await,
    }
}

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

/// A `kairn server` child process on a temp directory (so its memory is its own), and an
/// admin client of it. The process is killed when dropped.
struct Server {
    child: std::process::Child,
    pub(super) client: kube::Client,
    dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> anyhow::Result<Server> {
        Server::start_with(&["--api-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0"]).await
    }

    /// One member serving the API alone: the components under test run as processes
    /// of their own, so each one's memory and CPU can be read apart.
    async fn start_api_only() -> anyhow::Result<Server> {
        Server::start_with(&[
            "--api-addr",
            "127.0.0.1:0",
            "--raft-addr",
            "127.0.0.1:0",
            "--components",
            "api",
        ])
        .await
    }

    /// `members` servers forming one cluster with `--peers` (ports picked beforehand).
    async fn start_members(members: u64) -> anyhow::Result<Vec<Server>> {
        if members == 1 {
            return Ok(vec![Server::start().await?]);
        }
        let ports = port_pairs(members)?;
        let peers = (1..=members)
            .zip(&ports)
            .map(|(id, (_, raft))| format!("{id}=127.0.0.1:{raft}"))
            .collect::<Vec<_>>()
            .join(",");
        let starting = (1..=members).zip(&ports).map(|(id, (api, raft))| {
            let args = [
                "--id".to_string(),
                id.to_string(),
                "--peers".into(),
                peers.clone(),
                "--api-addr".into(),
                format!("127.0.0.1:{api}"),
                "--raft-addr".into(),
                format!("127.0.0.1:{raft}"),
            ];
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                Server::start_with(&args).await
            }
        });
        futures::future::try_join_all(starting).await
    }

    async fn start_with(args: &[&str]) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir().context("creating a temp directory")?;
        let exe = std::env::current_exe().context("finding the kairn binary")?;
        let child = std::process::Command::new(exe)
            .arg("server")
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .env(
                "KAIRN_LOG",
                if std::env::var_os("KAIRN_BENCH_LOG").is_some() {
                    "info,openraft=warn"
                } else {
                    "warn"
                },
            )
            .stdout(std::process::Stdio::null())
            .stderr(server_log())
            .spawn()
            .context("starting kairn server")?;
        let path = dir.path().join("kubeconfig");
        let deadline = Instant::now() + Duration::from_secs(60);
        let kubeconfig = loop {
            if let Ok(k) = kube::config::Kubeconfig::read_from(&path) {
                break k;
            }
            if Instant::now() > deadline {
                bail!("kairn server wrote no kubeconfig within a minute");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        let client = kube::Client::try_from(config)?;
        Ok(Server { child, client, dir })
    }

    /// The server's data directory (its kubeconfigs are there).
    fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The server's process id.
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server process's resident memory, in KiB.
    fn rss_kib(&self) -> u64 {
        rss_of(&format!("/proc/{}/status", self.child.id()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the server's log goes: `$KAIRN_BENCH_LOG` (a file, with the server logging at
/// info) when set, to see inside a run; nowhere otherwise.
fn server_log() -> std::process::Stdio {
    match std::env::var_os("KAIRN_BENCH_LOG").and_then(|p| std::fs::File::create(p).ok()) {
        Some(file) => std::process::Stdio::from(file),
        None => std::process::Stdio::null(),
    }
}

fn rss_of(status_file: &str) -> u64 {
    let status = std::fs::read_to_string(status_file).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `n` pairs of free loopback ports (bound, then released for a child process to bind):
/// a member's two addresses each.
fn port_pairs(n: u64) -> anyhow::Result<Vec<(u16, u16)>> {
    let free = || -> anyhow::Result<u16> { Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()) };
    (0..n).map(|_| Ok((free()?, free()?))).collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn create_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    namespaces.create(&PostParams::default(), &ns).await?;
    Ok(())
}

/// Creates `count` ConfigMaps in `ns` through the atomic batch endpoint, 1,000 a batch.
async fn populate(client: &kube::Client, ns: &str, count: usize) -> anyhow::Result<()> {
    for start in (0..count).step_by(1000) {
        let operations = (start..(start + 1000).min(count))
            .map(|i| BatchOperation {
                op: BatchVerb::Create,
                object: json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": format!("cm-{i:06}"), "namespace": ns, "labels": {"bench": "list"}},
                    "data": {"payload": "x".repeat(160)}}),
                resource_version: None,
            })
            .collect();
        let batch = Batch {
            operations,
            dry_run: false,
            origin: None,
        };
        let req = kube::core::Request::new("/apis/kairn.dev/v1/batches")
            .create(&PostParams::default(), serde_json::to_vec(&batch)?)
            .map_err(kube::Error::BuildRequest)?;
        let _: BatchResult = client.request(req).await.context("creating ConfigMaps in a batch")?;
    }
    Ok(())
}

/// One full paged LIST; returns the items seen and the pages read.
async fn paged_list(api: &Api<ConfigMap>, page: u32) -> anyhow::Result<(usize, usize)> {
    let (mut items, mut pages) = (0, 0);
    let mut token: Option<String> = None;
    loop {
        let mut params = ListParams::default().limit(page);
        if let Some(t) = &token {
            params = params.continue_token(t);
        }
        let list = api.list(&params).await?;
        items += list.items.len();
        pages += 1;
        token = list.metadata.continue_.filter(|c| !c.is_empty());
        if token.is_none() {
            return Ok((items, pages));
        }
    }
}

async fn api(args: ApiArgs) -> anyhow::Result<ExitCode> {
    let server = Server::start().await?;
    let client = server.client.clone();
    let rss_start = server.rss_kib();

    // LIST through pages, as kube-rs' watcher and kubectl read.
    create_namespace(&client, "bench").await?;
    let started = Instant::now();
    populate(&client, "bench", args.objects).await?;
    let populate_time = started.elapsed();
    let rss_populated = server.rss_kib();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "bench");
    let mut paged = Vec::new();
    let mut pages = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let (items, p) = paged_list(&cms, args.page).await?;
        paged.push(t.elapsed());
        pages = p;
        if items != args.objects {
            bail!("a paged LIST saw {items} of {} ConfigMaps", args.objects);
        }
    }
    paged.sort();
    let t = Instant::now();
    let whole = cms.list(&ListParams::default()).await?;
    let unpaged = t.elapsed();
    if whole.items.len() != args.objects {
        bail!("a LIST saw {} of {} ConfigMaps", whole.items.len(), args.objects);
    }
    drop(whole);
    let rss_after_list = server.rss_kib();

    // A kube-rs watcher (pages of `page`, then a watch) over the same objects, while a
    // writer changes them: its cache must end as the server's state is.
    let (reader, writer) = reflector::store::<ConfigMap>();
    let config = watcher::Config::default().page_size(args.page);
    let stream = watcher(cms.clone(), config)
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    let watching = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.try_next().await.is_ok_and(|e| e.is_some()) {}
    });
    let changes = 2_000.min(args.objects);
    let t = Instant::now();
    for i in 0..changes {
        let name = format!("cm-{:06}", (i * 7919) % args.objects);
        let patch = json!({"data": {"changed": i.to_string()}});
        cms.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
    }
    let write_time = t.elapsed();
    let truth: BTreeMap<String, String> = cms
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|c| (c.name_any(), c.resource_version().unwrap_or_default()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let lost = loop {
        let seen: BTreeMap<String, String> = reader
            .state()
            .iter()
            .map(|c| (c.name_any(), c.resource_version().unwrap_or_default()))
            .collect();
        let differing =
            truth.iter().filter(|(k, v)| seen.get(*k) != Some(*v)).count() + seen.len().abs_diff(truth.len());
        if differing == 0 || Instant::now() > deadline {
            break differing;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    watching.abort();
    if lost != 0 {
        bail!("the watcher's cache differs from the server in {lost} objects");
    }

    // Watch fan-out: W watchers, one writer stamping each write with its time.
    create_namespace(&client, "fanout").await?;
    let fan: Api<ConfigMap> = Api::namespaced(client.clone(), "fanout");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "ticker"}, "data": {"t": "0"}}))?;
    let rv = fan
        .create(&PostParams::default(), &cm)
        .await?
        .resource_version()
        .unwrap_or_default();
    let delays: Arc<Mutex<Vec<f64>>> = Arc::default();
    let mut watchers = Vec::new();
    for _ in 0..args.watchers {
        let (fan, rv, delays, writes) = (fan.clone(), rv.clone(), delays.clone(), args.writes);
        watchers.push(tokio::spawn(async move {
            let mut received = 0;
            let mut stream = fan.watch(&WatchParams::default().timeout(290), &rv).await?.boxed();
            while received < writes {
                match stream.next().await {
                    Some(Ok(WatchEvent::Modified(cm))) => {
                        let sent: u128 = cm
                            .data
                            .as_ref()
                            .and_then(|d| d.get("t"))
                            .and_then(|t| t.parse().ok())
                            .unwrap_or(0);
                        let delay = now_micros().saturating_sub(sent) as f64 / 1000.0;
                        if let Ok(mut d) = delays.lock() {
                            d.push(delay);
                        }
                        received += 1;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(anyhow::Error::from(e)),
                    None => break,
                }
            }
            Ok::<usize, anyhow::Error>(received)
        }));
    }
    // Let every watcher's request reach the server before the first write.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    for i in 0..args.writes {
        let patch = json!({"data": {"t": now_micros().to_string(), "i": i.to_string()}});
        fan.patch("ticker", &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    let fan_write_time = t.elapsed();
    let mut received = 0;
    for w in watchers {
        received += w.await??;
    }
    let expected = args.writes * args.watchers;
    if received != expected {
        bail!("watchers received {received} of {expected} events");
    }
    let mut delays = delays.lock().map(|d| d.clone()).unwrap_or_default();
    delays.sort_by(|a, b| a.total_cmp(b));
    let rss_end = server.rss_kib();
    drop(server);

    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    println!("| measurement | result |");
    println!("|---|---|");
    println!(
        "| create {} ConfigMaps (batches of 1,000) | {} |",
        args.objects,
        ms(populate_time)
    );
    println!(
        "| paged LIST of {} ConfigMaps, kube-rs, limit={} ({pages} pages), median of 3 | {} (min {}, max {}) |",
        args.objects,
        args.page,
        ms(paged[1]),
        ms(paged[0]),
        ms(paged[2])
    );
    println!("| one LIST of {} ConfigMaps | {} |", args.objects, ms(unpaged));
    println!(
        "| kube-rs watcher over {} objects, {changes} writes meanwhile ({}) | cache equal to the server, 0 events lost |",
        args.objects,
        ms(write_time)
    );
    println!(
        "| watch fan-out: {} watchers x {} writes ({} of writes) | {expected} events received |",
        args.watchers,
        args.writes,
        ms(fan_write_time)
    );
    println!(
        "| event delay, write to watcher | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms |",
        percentile(&delays, 0.50),
        percentile(&delays, 0.99),
        percentile(&delays, 1.0)
    );
    println!(
        "| `kairn server` RSS | {} MiB idle, {} MiB after creating the ConfigMaps, {} MiB after the LISTs, {} MiB at the end |",
        rss_start / 1024,
        rss_populated / 1024,
        rss_after_list / 1024,
        rss_end / 1024
    );
    Ok(ExitCode::SUCCESS)
}

/// Creates `count` 200-byte ConfigMaps in `ns` from `clients` concurrent tasks, spread
/// over the API servers of `targets` (task i on server i mod n); returns the creates per
/// second and the p99 latency in milliseconds.
async fn create_load(targets: &[kube::Client], ns: &str, count: usize, clients: usize) -> anyhow::Result<(f64, f64)> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..clients {
        let api: Api<ConfigMap> = Api::namespaced(targets[task % targets.len()].clone(), ns);
        let (next, latencies) = (next.clone(), latencies.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    return Ok::<(), anyhow::Error>(());
                }
                let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": format!("w-{i:07}")},
                    "data": {"payload": "x".repeat(200)}}))?;
                let t = Instant::now();
                api.create(&PostParams::default(), &cm).await?;
                if let Ok(mut l) = latencies.lock() {
                    l.push(t.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let mut l = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort_by(|a, b| a.total_cmp(b));
    Ok((rate, percentile(&l, 0.99)))
}

async fn writes(args: WritesArgs) -> anyhow::Result<ExitCode> {
    println!("| members | clients | creates/s | p99 latency |");
    println!("|---|---|---|---|");
    if let Some(path) = &args.kubeconfig {
        let kubeconfig = kube::config::Kubeconfig::read_from(path)
            .with_context(|| format!("reading kubeconfig {}", path.display()))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        let client = kube::Client::try_from(config)?;
        return write_rows(&[client], "given", &args).await;
    }
    for members in &args.members {
        let servers = Server::start_members(*members).await?;
        let clients: Vec<kube::Client> = servers.iter().map(|s| s.client.clone()).collect();
        write_rows(&clients, &members.to_string(), &args).await?;
        drop(servers);
    }
    Ok(ExitCode::SUCCESS)
}

/// One table row per client count, against the API servers of `clients`.
async fn write_rows(clients: &[kube::Client], members: &str, args: &WritesArgs) -> anyhow::Result<ExitCode> {
    for (n, count) in args.clients.iter().enumerate() {
        let ns = format!("writes-{n}-{count}");
        create_namespace(&clients[0], &ns).await?;
        let (rate, p99) = create_load(clients, &ns, args.count, *count).await?;
        println!("| {members} | {count} | {rate:.0} | {p99:.1} ms |");
    }
    Ok(ExitCode::SUCCESS)
}
