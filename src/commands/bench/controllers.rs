//! `kairn bench controllers`: what a controller manager costs per pod it holds.
//!
//! Per size: a fresh `kairn server` (API only), a `kairn controller-manager` process with
//! its own kubeconfig, and one ReplicaSet of N replicas. The ReplicaSet controller
//! creates the N pods (500 per pass, as Kubernetes' burst), every controller's caches
//! follow them, and once the ReplicaSet reports N replicas and the process settles, its
//! memory and CPU are read from `/proc`: the cost of holding N pods in watch-fed caches,
//! which must stay bounded at 100,000 objects.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::api::PostParams;
use kube::Api;
use serde_json::json;

use super::scheduler::Process;
use super::Server;

/// `kairn bench controllers` flags.
#[derive(Debug, clap::Args)]
pub struct ControllersArgs {
    /// Pods of the ReplicaSet, one fresh cluster per size, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "20000")]
    pub pods: Vec<usize>,
}

/// How long the controller manager is left to settle before its memory is read.
const SETTLE: Duration = Duration::from_secs(5);

/// Runs the sizes and prints one row each.
pub async fn run(args: ControllersArgs) -> anyhow::Result<ExitCode> {
    let mut rows = Vec::new();
    for &pods in &args.pods {
        eprintln!("controllers: one ReplicaSet of {pods} pods");
        rows.push((pods, measure(pods).await?));
    }
    println!("| pods | created in (s) | controller-manager RSS (MiB) | KiB per pod | controller-manager CPU (s) |");
    println!("|---:|---:|---:|---:|---:|");
    for (pods, r) in rows {
        println!(
            "| {pods} | {:.1} | {} | {:.1} | {:.1} |",
            r.seconds,
            r.rss_kib / 1024,
            r.rss_kib as f64 / pods.max(1) as f64,
            r.cpu
        );
    }
    Ok(ExitCode::SUCCESS)
}

struct Measured {
    seconds: f64,
    rss_kib: u64,
    cpu: f64,
}

async fn measure(pods: usize) -> anyhow::Result<Measured> {
    let server = Server::start_api_only().await?;
    let dir = server.dir().to_path_buf();
    let kubeconfig = dir.join("controller-manager.kubeconfig");
    let manager = Process::start(
        &[
            "controller-manager",
            "--kubeconfig",
            kubeconfig.to_str().context("a UTF-8 temp path")?,
            "--leader-elect",
            "false",
        ],
        &dir.join("controller-manager.log"),
    )?;
    let replicasets: Api<ReplicaSet> = Api::namespaced(server.client.clone(), "default");
    // A pod template of the usual size: a port, environment, requests and limits, a probe.
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "big"},
        "spec": {
            "replicas": pods,
            "selector": {"matchLabels": {"app": "big"}},
            "template": {
                "metadata": {"labels": {"app": "big", "tier": "web"}},
                "spec": {"containers": [{
                    "name": "web", "image": "registry.k8s.io/nginx:1.27",
                    "ports": [{"containerPort": 80, "name": "http"}],
                    "env": [{"name": "MODE", "value": "production"}, {"name": "LOG_LEVEL", "value": "info"}],
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": 80}, "periodSeconds": 5},
                }]},
            },
        },
    }))?;
    let started = Instant::now();
    replicasets.create(&PostParams::default(), &rs).await?;
    let deadline = started + Duration::from_secs(1200);
    loop {
        let rs = replicasets.get("big").await?;
        if rs.status.map(|s| s.replicas) == Some(pods as i32) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the ReplicaSet did not reach {pods} pods in 20 minutes");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    Ok(Measured {
        seconds,
        rss_kib: manager.rss_kib(),
        cpu: manager.cpu_seconds(),
    })
}
