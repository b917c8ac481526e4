//! `kairn bench scheduler`: scheduling throughput end to end through the API, in the
//! manner of Kubernetes' scheduler_perf.
//!
//! Each workload gets a fresh `kairn server` (API only), a hollow-node agent
//! (`kairn agent --simulate N`: Nodes, their Leases, pods marked Running without
//! processes) and then its pods, created through the API with 64 clients while no
//! scheduler runs. Then a `kairn scheduler` process starts, and a watch times the
//! bindings from the first to the last: the scheduler drains a backlog, as it does
//! after a failover, and the API's write rate (also measured, as the create rate) bounds
//! what it can reach. The preemption workload first fills every node with one
//! low-priority pod each (untimed), then times high-priority pods that each evict one.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kairn_client::Trimmed;
use kube::api::{ListParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use serde_json::{json, Value};

use super::{create_namespace, rss_of, Server};

/// Zones the hollow nodes are spread over.
const ZONES: usize = 10;
/// Concurrent clients creating pods.
const CREATORS: usize = 64;

/// `kairn bench scheduler` flags.
#[derive(Debug, clap::Args)]
pub struct SchedulerArgs {
    /// Hollow nodes.
    #[arg(long, default_value_t = 5_000)]
    pub nodes: usize,
    /// Pods per workload (the anti-affinity workload uses at most 4/5 of the nodes).
    #[arg(long, default_value_t = 10_000)]
    pub pods: usize,
    /// Workloads, comma-separated: basic, node-affinity, anti-affinity, spread, preemption.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "basic,node-affinity,anti-affinity,spread,preemption"
    )]
    pub workloads: Vec<Workload>,
}

/// A scheduler_perf-like workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Pods with cpu and memory requests only.
    Basic,
    /// Pods requiring half of the zones through node affinity.
    NodeAffinity,
    /// Pods with required anti-affinity to each other by hostname.
    AntiAffinity,
    /// Pods spread over zones with maxSkew 1 (DoNotSchedule).
    Spread,
    /// High-priority pods that each preempt a low-priority pod on a full node.
    Preemption,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Basic => "basic",
            Workload::NodeAffinity => "node affinity",
            Workload::AntiAffinity => "required anti-affinity (hostname)",
            Workload::Spread => "topology spread (zone, maxSkew 1)",
            Workload::Preemption => "preemption",
        }
    }

    /// How many pods are timed at `nodes` nodes.
    fn count(self, args: &SchedulerArgs) -> usize {
        match self {
            Workload::AntiAffinity => args.pods.min(args.nodes * 4 / 5),
            Workload::Preemption => args.pods.min(args.nodes),
            _ => args.pods,
        }
    }

    /// The timed pods' spec.
    fn spec(self) -> Value {
        let requests = json!({"cpu": "100m", "memory": "128Mi"});
        let mut spec = json!({"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
            "resources": {"requests": requests}}]});
        match self {
            Workload::Basic => {}
            Workload::NodeAffinity => {
                let zones: Vec<String> = (0..ZONES / 2).map(|z| format!("zone-{z}")).collect();
                spec["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                    {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "topology.kubernetes.io/zone", "operator": "In", "values": zones}]}]}}});
            }
            Workload::AntiAffinity => {
                spec["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "bench"}}, "topologyKey": "kubernetes.io/hostname"}]}});
            }
            Workload::Spread => {
                spec["topologySpreadConstraints"] = json!([{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "bench"}}}]);
            }
            Workload::Preemption => {
                spec["priorityClassName"] = json!("bench-high");
                spec["containers"][0]["resources"]["requests"] = json!({"cpu": "3", "memory": "128Mi"});
            }
        }
        spec
    }
}

/// A child `kairn` process (agent, scheduler), killed when dropped.
pub(super) struct Process {
    child: Child,
}

impl Process {
    /// Starts `kairn <args>` logging warnings to `log`; with `$KAIRN_BENCH_LOG` set, it
    /// logs at info to `$KAIRN_BENCH_LOG.<command>` instead, to see inside a run.
    pub(super) fn start(args: &[&str], log: &Path) -> anyhow::Result<Process> {
        let exe = std::env::current_exe().context("finding the kairn binary")?;
        let command = args.first().copied().unwrap_or_default();
        let (log, level) = match std::env::var_os("KAIRN_BENCH_LOG") {
            Some(base) => {
                let mut path = base;
                path.push(format!(".{command}"));
                (std::path::PathBuf::from(path), "info,openraft=warn")
            }
            None => (log.to_path_buf(), "warn"),
        };
        let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = std::process::Command::new(exe)
            .args(args)
            .env("KAIRN_LOG", level)
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting kairn {command}"))?;
        Ok(Process { child })
    }

    pub(super) fn rss_kib(&self) -> u64 {
        rss_of(&format!("/proc/{}/status", self.child.id()))
    }

    /// CPU seconds used so far (user + system).
    pub(super) fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU seconds of process `pid` (from `/proc/<pid>/stat`).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based).
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // Linux reports these in USER_HZ, which is 100 on every architecture we run on.
    (ticks(11) + ticks(12)) / 100.0
}

/// One measured row.
struct Row {
    workload: Workload,
    pods: usize,
    create_rate: f64,
    throughput: f64,
    seconds: f64,
    scheduler_mib: u64,
    scheduler_cpu: f64,
    server_cpu: f64,
}

/// Runs the workloads.
pub async fn run(args: SchedulerArgs) -> anyhow::Result<ExitCode> {
    let mut rows = Vec::new();
    for &workload in &args.workloads {
        eprintln!(
            "{}: {} nodes, {} pods",
            workload.name(),
            args.nodes,
            workload.count(&args)
        );
        rows.push(measure(workload, &args).await?);
    }
    println!(
        "| workload | nodes | pods | creates/s (API, 64 clients) | scheduled pods/s | first..last bind (s) \
         | scheduler RSS (MiB) | scheduler CPU (s) | API server CPU (s) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.2} | {} | {:.1} | {:.1} |",
            r.workload.name(),
            args.nodes,
            r.pods,
            r.create_rate,
            r.throughput,
            r.seconds,
            r.scheduler_mib,
            r.scheduler_cpu,
            r.server_cpu
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn measure(workload: Workload, args: &SchedulerArgs) -> anyhow::Result<Row> {
    let server = Server::start_api_only().await?;
    let client = server.client.clone();
    let dir = server.dir().to_path_buf();
    let kubeconfig = dir.join("kubeconfig");
    let kubeconfig = kubeconfig.to_str().context("a UTF-8 temp path")?;
    let nodes = args.nodes.to_string();
    let zones = ZONES.to_string();
    let started = Instant::now();
    let _agent = Process::start(
        &[
            "agent",
            "--kubeconfig",
            kubeconfig,
            "--simulate",
            &nodes,
            "--zones",
            &zones,
            "--capacity-cpu",
            "4",
            "--capacity-memory",
            "32Gi",
            "--data-dir",
            dir.join("agent").to_str().unwrap_or("agent"),
        ],
        &dir.join("agent.log"),
    )?;
    wait_for_nodes(&client, args.nodes).await?;
    eprintln!(
        "  {} hollow nodes ready in {:.1}s",
        args.nodes,
        started.elapsed().as_secs_f64()
    );
    create_namespace(&client, "bench").await?;
    let scheduler_kubeconfig = dir.join("scheduler.kubeconfig");
    let scheduler_args = [
        "scheduler",
        "--kubeconfig",
        scheduler_kubeconfig.to_str().context("a UTF-8 temp path")?,
        "--leader-elect",
        "false",
    ];

    // Preemption first fills every node with one low-priority pod (untimed).
    let mut scheduler = None;
    if workload == Workload::Preemption {
        create_priority_classes(&client).await?;
        let low = json!({"priorityClassName": "bench-low", "containers": [{"name": "c",
            "image": "registry.k8s.io/pause:3.10", "resources": {"requests": {"cpu": "3", "memory": "128Mi"}}}]});
        create_pods(&client, "fill", args.nodes, &low).await?;
        scheduler = Some(Process::start(&scheduler_args, &dir.join("scheduler.log"))?);
        let t = Instant::now();
        wait_bound(&client, "fill", args.nodes).await?;
        eprintln!(
            "  {} low-priority pods placed in {:.1}s",
            args.nodes,
            t.elapsed().as_secs_f64()
        );
    }

    let count = workload.count(args);
    let t = Instant::now();
    create_pods(&client, "pod", count, &workload.spec()).await?;
    let create_rate = count as f64 / t.elapsed().as_secs_f64();
    eprintln!("  {count} pods created at {create_rate:.0}/s");
    let server_cpu_before = cpu_seconds(server.pid());
    let scheduler = match scheduler {
        Some(s) => s,
        None => Process::start(&scheduler_args, &dir.join("scheduler.log"))?,
    };
    let scheduler_cpu_before = scheduler.cpu_seconds();
    let (first, last) = wait_bound(&client, "pod", count).await?;
    let seconds = last.duration_since(first).as_secs_f64().max(1e-3);
    let row = Row {
        workload,
        pods: count,
        create_rate,
        throughput: count.saturating_sub(1) as f64 / seconds,
        seconds,
        scheduler_mib: scheduler.rss_kib() / 1024,
        scheduler_cpu: scheduler.cpu_seconds() - scheduler_cpu_before,
        server_cpu: cpu_seconds(server.pid()) - server_cpu_before,
    };
    eprintln!("  scheduled at {:.0} pods/s", row.throughput);
    Ok(row)
}

async fn create_priority_classes(client: &kube::Client) -> anyhow::Result<()> {
    let api: Api<k8s_openapi::api::scheduling::v1::PriorityClass> = Api::all(client.clone());
    for (name, value) in [("bench-low", 10), ("bench-high", 1000)] {
        let pc = serde_json::from_value(json!({"metadata": {"name": name}, "value": value}))?;
        api.create(&PostParams::default(), &pc).await?;
    }
    Ok(())
}

/// Creates `count` pods `<prefix>-<i>` labelled `app=bench`/`set=<prefix>` in `bench`,
/// from [`CREATORS`] concurrent clients.
async fn create_pods(client: &kube::Client, prefix: &str, count: usize, spec: &Value) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "bench");
    futures::stream::iter(0..count)
        .map(|i| {
            let pods = pods.clone();
            let app = if prefix == "pod" { "bench" } else { prefix };
            let pod = serde_json::from_value::<Pod>(json!({
                "metadata": {"name": format!("{prefix}-{i}"), "labels": {"app": app, "set": prefix}},
                "spec": spec,
            }));
            async move {
                let pod = pod?;
                pods.create(&PostParams::default(), &pod)
                    .await
                    .with_context(|| format!("creating pod {prefix}-{i}"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CREATORS)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Waits until `count` Nodes exist.
async fn wait_for_nodes(client: &kube::Client, count: usize) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let list = nodes.list_metadata(&ListParams::default()).await?;
        if list.items.len() >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {count} hollow nodes registered in 10 minutes",
                list.items.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Watches the `set=<set>` pods until `count` are bound; returns when the first and the
/// last binding were seen.
async fn wait_bound(client: &kube::Client, set: &str, count: usize) -> anyhow::Result<(Instant, Instant)> {
    // Decoded as the scheduler decodes them: the watch shares the two cores with it.
    let pods: Api<Trimmed<Pod>> = Api::namespaced(client.clone(), "bench");
    let config = watcher::Config::default().labels(&format!("set={set}"));
    let mut stream = std::pin::pin!(watcher(pods, config).default_backoff().applied_objects());
    let mut bound = HashSet::new();
    let mut first = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1200);
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        let pod = match next {
            Err(_) => bail!("only {} of {count} {set} pods were bound in 20 minutes", bound.len()),
            Ok(None) => bail!("the pod watch ended"),
            Ok(Some(pod)) => pod?.into_inner(),
        };
        if pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() && bound.insert(pod.name_any()) {
            let now = Instant::now();
            let first = *first.get_or_insert(now);
            if bound.len() >= count {
                return Ok((first, now));
            }
        }
    }
}
