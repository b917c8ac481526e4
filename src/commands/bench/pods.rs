//! `kairn bench pods`: pod start latency on one real node agent, as Kubernetes' density
//! test measures it: N pods (`sleep`) created through the API, each timed from the
//! create request to the watch event that shows it Running (scheduled, started by the
//! agent, reported). Prints p50/p90/p99/max, and the agent's memory and CPU with the N
//! pods running.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::PostParams;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::{Mutex, Semaphore};

use super::scheduler::Process;
use super::{create_namespace, percentile, Server};

/// `kairn bench pods` flags.
#[derive(Debug, clap::Args)]
pub struct PodsArgs {
    /// Pods to start on the one agent.
    #[arg(long, default_value_t = 100)]
    pub pods: usize,
    /// Creates in flight at once.
    #[arg(long, default_value_t = 20)]
    pub parallel: usize,
}

/// Runs the benchmark.
pub async fn run(args: PodsArgs) -> anyhow::Result<ExitCode> {
    let server = Server::start().await?;
    let client = server.client.clone();
    let dir = server.dir().to_path_buf();
    let kubeconfig = dir.join("kubeconfig");
    let agent_dir = dir.join("agent");
    let agent = Process::start(
        &[
            "agent",
            "--kubeconfig",
            kubeconfig.to_str().context("a UTF-8 temp path")?,
            "--node-name",
            "bench-node",
            "--data-dir",
            agent_dir.to_str().context("a UTF-8 temp path")?,
            "--log-addr",
            "127.0.0.1:0",
        ],
        &dir.join("agent.log"),
    )?;
    wait_ready(&client, "bench-node").await?;
    create_namespace(&client, "bench").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "bench");

    // Watch first, so that no Running is missed; times are taken when events arrive.
    let running: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen = running.clone();
    let watched: Api<Pod> = Api::namespaced(client.clone(), "bench");
    let watch = tokio::spawn(async move {
        let mut events = watcher(watched, watcher::Config::default()).applied_objects().boxed();
        while let Some(Ok(p)) = events.next().await {
            if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                seen.lock().await.entry(p.name_any()).or_insert_with(Instant::now);
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let slots = Arc::new(Semaphore::new(args.parallel.max(1)));
    let started = Instant::now();
    let creates = (0..args.pods).map(|i| {
        let (pods, sent, slots) = (pods.clone(), sent.clone(), slots.clone());
        async move {
            let _slot = slots.acquire().await?;
            let name = format!("p{i}");
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]},
            }))?;
            sent.lock().await.insert(name, Instant::now());
            pods.create(&PostParams::default(), &pod).await?;
            anyhow::Ok(())
        }
    });
    futures::future::try_join_all(creates).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while running.lock().await.len() < args.pods {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} pods were Running after 5 minutes",
                running.lock().await.len(),
                args.pods
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_running = started.elapsed();
    watch.abort();
    let sent = sent.lock().await;
    let running = running.lock().await;
    let mut latencies: Vec<f64> = sent
        .iter()
        .filter_map(|(name, at)| Some(running.get(name)?.duration_since(*at).as_secs_f64() * 1000.0))
        .collect();
    latencies.sort_by(f64::total_cmp);
    // Let the pods settle, then the agent's footprint with all of them running.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_mib = agent.rss_kib() / 1024;
    let cpu = agent.cpu_seconds();

    println!("| pods | all Running after (s) | p50 ms | p90 ms | p99 ms | max ms | agent RSS (MiB) | agent CPU (s) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.1} |",
        args.pods,
        all_running.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0),
        rss_mib,
        cpu,
    );
    Ok(ExitCode::SUCCESS)
}

/// Waits until node `name` is registered and Ready.
async fn wait_ready(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = nodes.get_opt(name).await.ok().flatten().is_some_and(|n| {
            n.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("node {name} was not Ready within a minute");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
