//! `kairn bench store`: one workload, with one client, against a Kairn store cluster and
//! a real etcd cluster, side by side. Both are three processes on loopback with their
//! data in temp directories on the same disk, fsync on (etcd always fsyncs; Kairn flushes
//! before acknowledging). The client speaks etcd v3's gRPC KV and Watch, which Kairn's
//! members also serve (`kairn_cluster::store::etcd_kv`), so the same code drives both.
//!
//! Workloads: 256-byte puts with 1, 16, 64 and 256 clients; linearizable single-key range
//! reads; a watch fan-out (1 writer, 100 watchers of one prefix). Clients are spread over
//! the three members, sharing one HTTP/2 connection per member, as etcd's own benchmark
//! tool does by default.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kairn_cluster::store::etcd_kv::prefix_end;
use kairn_cluster::store::etcd_kv::proto::kv_client::KvClient;
use kairn_cluster::store::etcd_kv::proto::watch_client::WatchClient;
use kairn_cluster::store::etcd_kv::proto::{watch_request, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest};
use tonic::transport::Channel;

use super::{percentile, port_pairs};

/// `kairn bench store` flags.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// Concurrent put clients, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    pub clients: Vec<usize>,
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Clients of the linearizable read measurement.
    #[arg(long, default_value_t = 64)]
    pub read_clients: usize,
    /// Watchers of the fan-out measurement.
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,
    /// Writes of the fan-out measurement.
    #[arg(long, default_value_t = 1_000)]
    pub fanout_writes: usize,
    /// The etcd server binary (etcd 3.4: `apt-get install etcd-server`).
    #[arg(long, default_value = "etcd")]
    pub etcd: PathBuf,
    /// Measure Kairn only (no etcd on this machine).
    #[arg(long)]
    pub kairn_only: bool,
    /// Where both clusters keep their data (the same disk for both).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Three processes of one system, killed when dropped.
struct Cluster {
    name: &'static str,
    children: Vec<Child>,
    endpoints: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<Stdio> {
    Ok(Stdio::from(std::fs::File::create(dir.join(name))?))
}

/// Three `kairn server --components api` members; the endpoints are their Raft ports.
fn start_kairn(base: &Path) -> anyhow::Result<Cluster> {
    let dir = tempfile::tempdir_in(base).context("creating a temp directory")?;
    let exe = std::env::current_exe().context("finding the kairn binary")?;
    let ports = port_pairs(3)?;
    let peers = ports
        .iter()
        .enumerate()
        .map(|(i, (_, raft))| format!("{}=127.0.0.1:{raft}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    for (i, (api, raft)) in ports.iter().enumerate() {
        let data = dir.path().join(format!("m{}", i + 1));
        let child = Command::new(&exe)
            .args([
                "server",
                "--components",
                "api",
                "--id",
                &(i + 1).to_string(),
                "--peers",
                &peers,
            ])
            .args(["--api-addr", &format!("127.0.0.1:{api}")])
            .args(["--raft-addr", &format!("127.0.0.1:{raft}")])
            .arg("--data-dir")
            .arg(&data)
            .env("KAIRN_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log_file(dir.path(), &format!("m{}.log", i + 1))?)
            .spawn()
            .context("starting kairn server")?;
        children.push(child);
    }
    Ok(Cluster {
        name: "kairn",
        children,
        endpoints: ports
            .iter()
            .map(|(_, raft)| format!("http://127.0.0.1:{raft}"))
            .collect(),
        _dir: dir,
    })
}

/// Three etcd members, as the etcd docs' local cluster (fsync on: etcd has no switch).
fn start_etcd(base: &Path, etcd: &Path) -> anyhow::Result<Cluster> {
    let version = Command::new(etcd).arg("--version").output().with_context(|| {
        format!(
            "running {} (install etcd 3.4 with `apt-get install etcd-server`, or pass --etcd PATH or --kairn-only)",
            etcd.display()
        )
    })?;
    let version = String::from_utf8_lossy(&version.stdout);
    eprintln!("{}", version.lines().next().unwrap_or("etcd: unknown version"));
    let dir = tempfile::tempdir_in(base).context("creating a temp directory")?;
    let ports = port_pairs(3)?;
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("e{}=http://127.0.0.1:{peer}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let name = format!("e{}", i + 1);
        let child = Command::new(etcd)
            .args(["--name", &name])
            .arg("--data-dir")
            .arg(dir.path().join(&name))
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-cluster", &initial, "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "kairn-bench"])
            .stdout(Stdio::null())
            .stderr(log_file(dir.path(), &format!("{name}.log"))?)
            .spawn()
            .context("starting etcd")?;
        children.push(child);
    }
    Ok(Cluster {
        name: "etcd",
        children,
        endpoints: ports
            .iter()
            .map(|(client, _)| format!("http://127.0.0.1:{client}"))
            .collect(),
        _dir: dir,
    })
}

/// One connection per member, once a put through each succeeds.
async fn connect(cluster: &Cluster) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for endpoint in &cluster.endpoints {
        let deadline = Instant::now() + Duration::from_secs(60);
        let channel = loop {
            let attempt = async {
                let channel = Channel::from_shared(endpoint.clone())?.connect().await?;
                KvClient::new(channel.clone())
                    .put(PutRequest {
                        key: b"bench/ready".to_vec(),
                        value: b"1".to_vec(),
                        ..Default::default()
                    })
                    .await?;
                Ok::<_, anyhow::Error>(channel)
            };
            match attempt.await {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => {
                    bail!("{} at {endpoint} did not serve within a minute: {e:#}", cluster.name)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        channels.push(channel);
    }
    Ok(channels)
}

/// Throughput and latency of one measurement.
struct Measured {
    ops_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Runs `clients` loops of `op` (given the client's index and its channel) for `seconds`.
async fn load<F, Fut>(channels: &[Channel], clients: usize, seconds: u64, op: F) -> anyhow::Result<Measured>
where
    F: Fn(usize, u64, Channel) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (op, stop) = (op.clone(), stop.clone());
        let channel = channels[c % channels.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                op(c, n, channel.clone()).await?;
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                n += 1;
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok(Measured {
        ops_per_s: all.len() as f64 / elapsed,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
    })
}

async fn puts(channels: &[Channel], clients: usize, args: &StoreArgs) -> anyhow::Result<Measured> {
    let value = vec![b'x'; args.value_size];
    load(channels, clients, args.seconds, move |c, n, channel| {
        let value = value.clone();
        async move {
            KvClient::new(channel)
                .put(PutRequest {
                    key: format!("bench/put/{c}/{n}").into_bytes(),
                    value,
                    ..Default::default()
                })
                .await?;
            Ok(())
        }
    })
    .await
}

async fn reads(channels: &[Channel], args: &StoreArgs) -> anyhow::Result<Measured> {
    // The keys read were written by the first put measurement's clients.
    load(channels, args.read_clients, args.seconds, |c, n, channel| async move {
        let response = KvClient::new(channel)
            .range(RangeRequest {
                key: format!("bench/put/0/{}", (c as u64 + n) % 16).into_bytes(),
                ..Default::default()
            })
            .await?;
        if response.get_ref().kvs.is_empty() {
            bail!("a key written before was not read back");
        }
        Ok(())
    })
    .await
}

/// 1 writer, `watchers` watchers of one prefix: events delivered per second and the
/// delay from a put's start to each watcher receiving it.
async fn fanout(channels: &[Channel], args: &StoreArgs) -> anyhow::Result<(Measured, f64)> {
    let prefix = b"bench/fan/".to_vec();
    let origin = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    let expected = args.fanout_writes as u64;
    let mut watchers = Vec::new();
    for w in 0..args.watchers {
        let mut client = WatchClient::new(channels[w % channels.len()].clone());
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                key: prefix.clone(),
                range_end: prefix_end(&prefix),
                ..Default::default()
            })),
        })
        .await?;
        let mut stream = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        // The first response confirms the watch.
        let created = stream.message().await?.context("the watch ended at once")?;
        anyhow::ensure!(created.created, "the watch was not created");
        let delivered = delivered.clone();
        watchers.push(tokio::spawn(async move {
            let _keep_open = tx;
            let mut delays = Vec::new();
            let mut seen = 0u64;
            while seen < expected {
                let Some(response) = stream.message().await? else { break };
                let now = origin.elapsed().as_secs_f64() * 1000.0;
                for event in response.events {
                    let sent: f64 = event
                        .kv
                        .as_ref()
                        .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.trim_end_matches('x').parse().ok())
                        .unwrap_or(now);
                    delays.push(now - sent);
                    seen += 1;
                }
                delivered.fetch_add(seen, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(delays)
        }));
    }
    let start = Instant::now();
    let mut kv = KvClient::new(channels[0].clone());
    for i in 0..args.fanout_writes {
        let sent = origin.elapsed().as_secs_f64() * 1000.0;
        let mut value = format!("{sent:.3}").into_bytes();
        value.resize(args.value_size.max(value.len()), b'x');
        kv.put(PutRequest {
            key: format!("bench/fan/{i}").into_bytes(),
            value,
            ..Default::default()
        })
        .await?;
    }
    let mut all = Vec::new();
    for w in watchers {
        let delays = tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .context("a watcher did not receive every event within a minute")???;
        anyhow::ensure!(
            delays.len() as u64 == expected,
            "a watcher received {} of {expected} events",
            delays.len()
        );
        all.extend(delays);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let writes_per_s = args.fanout_writes as f64 / elapsed;
    Ok((
        Measured {
            ops_per_s: all.len() as f64 / elapsed,
            p50_ms: percentile(&all, 0.50),
            p99_ms: percentile(&all, 0.99),
        },
        writes_per_s,
    ))
}

/// Every measurement on one cluster, in order: `(label, result)`.
async fn measure(cluster: &Cluster, args: &StoreArgs) -> anyhow::Result<Vec<(String, Measured)>> {
    let channels = connect(cluster).await?;
    let mut results = Vec::new();
    for &clients in &args.clients {
        let m = puts(&channels, clients, args).await?;
        eprintln!("{}: put, {clients} clients: {:.0}/s", cluster.name, m.ops_per_s);
        results.push((format!("put {}-byte values, {clients} clients", args.value_size), m));
    }
    let m = reads(&channels, args).await?;
    eprintln!("{}: linearizable read: {:.0}/s", cluster.name, m.ops_per_s);
    results.push((format!("linearizable get, {} clients", args.read_clients), m));
    let (m, writes) = fanout(&channels, args).await?;
    eprintln!(
        "{}: fan-out: {:.0} events/s ({writes:.0} writes/s)",
        cluster.name, m.ops_per_s
    );
    results.push((
        format!("watch fan-out: events delivered, 1 writer, {} watchers", args.watchers),
        m,
    ));
    Ok(results)
}

/// Runs the benchmark and prints a Markdown table.
pub async fn run(args: StoreArgs) -> anyhow::Result<ExitCode> {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let kairn = {
        let cluster = start_kairn(&base)?;
        let results = measure(&cluster, &args).await?;
        drop(cluster);
        results
    };
    let etcd = if args.kairn_only {
        None
    } else {
        let cluster = start_etcd(&base, &args.etcd)?;
        let results = measure(&cluster, &args).await?;
        drop(cluster);
        Some(results)
    };
    println!("| workload | Kairn ops/s | Kairn p50 / p99 ms | etcd ops/s | etcd p50 / p99 ms | Kairn/etcd |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (i, (label, k)) in kairn.iter().enumerate() {
        let e = etcd.as_ref().and_then(|e| e.get(i)).map(|(_, m)| m);
        let (e_ops, e_lat, ratio) = match e {
            Some(e) => (
                format!("{:.0}", e.ops_per_s),
                format!("{:.2} / {:.2}", e.p50_ms, e.p99_ms),
                format!("{:.2}", k.ops_per_s / e.ops_per_s.max(f64::MIN_POSITIVE)),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {label} | {:.0} | {:.2} / {:.2} | {e_ops} | {e_lat} | {ratio} |",
            k.ops_per_s, k.p50_ms, k.p99_ms
        );
    }
    Ok(ExitCode::SUCCESS)
}
