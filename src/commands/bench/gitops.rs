//! `kairn bench gitops`: the reconciler end to end on a server of its own. For repos of
//! N ConfigMaps (100 per file): the first sync (Application created -> status Synced at
//! the commit: fetch, render, plan, one batch of N objects, status), then a 1% change
//! and a one-object change, each timed from `git commit` returning to the Application
//! reporting that commit as synced. Also the render + plan time alone, in this process,
//! and the server's memory.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kairn_cluster::kinds::{Application, ApplicationSource, ApplicationSpec, SyncPolicy};
use kairn_reconciler::plan::Catalog;
use kairn_reconciler::source::Source;
use kairn_reconciler::sync;
use kube::api::PostParams;
use kube::Api;

use super::Server;

/// `kairn bench gitops` flags.
#[derive(Debug, clap::Args)]
pub struct GitopsArgs {
    /// Repository sizes (objects), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub objects: Vec<usize>,
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Bench",
            "-c",
            "user.email=bench@localhost",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .context("running git (the benchmark needs git on PATH)")?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Writes file `f` of the repo: ConfigMaps `f*100 .. f*100+100`, version `v` for those
/// in `changed`.
fn write_file(
    dir: &Path,
    ns: &str,
    f: usize,
    count: usize,
    changed: &dyn Fn(usize) -> bool,
    v: u32,
) -> anyhow::Result<()> {
    let mut text = String::new();
    for i in f * 100..((f + 1) * 100).min(count) {
        let version = if changed(i) { v } else { 0 };
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i:06}\n  namespace: {ns}\n  labels:\n    tier: bench\ndata:\n  payload: \"{}\"\n  version: \"{version}\"\n",
            "x".repeat(100)
        ));
    }
    std::fs::write(dir.join(format!("cms/{f:04}.yaml")), text).context("writing a manifest")
}

async fn synced_at(apps: &Api<Application>, name: &str, sha: &str, timeout: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let app = apps.get(name).await?;
        let status = app.status.unwrap_or_default();
        if status.synced_revision.as_deref() == Some(sha) {
            return Ok(started.elapsed());
        }
        if let Some(e) = status.last_error.filter(|e| e.revision == sha) {
            bail!("the commit was rejected: {}", e.messages.join("; "));
        }
        if started.elapsed() > timeout {
            bail!("{name} did not sync {sha} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs `kairn bench gitops`.
pub async fn run(args: GitopsArgs) -> anyhow::Result<ExitCode> {
    println!("| objects | render + plan (in process) | first sync | 1% change, commit to applied | 1 object, commit to applied | server RSS |");
    println!("|---|---|---|---|---|---|");
    for &count in &args.objects {
        let server = Server::start().await?;
        let client = server.client.clone();
        let tmp = tempfile::tempdir()?;
        let repo = tmp.path().join("repo");
        std::fs::create_dir_all(repo.join("cms"))?;
        git(&repo, &["init", "-q", "-b", "main"])?;
        let ns = format!("bench-{count}");
        std::fs::write(
            repo.join("namespace.yaml"),
            format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"),
        )?;
        let files = count.div_ceil(100);
        for f in 0..files {
            write_file(&repo, &ns, f, count, &|_| false, 0)?;
        }
        git(&repo, &["add", "-A"])?;
        git(&repo, &["commit", "-q", "-m", "initial"])?;
        let first = git(&repo, &["rev-parse", "HEAD"])?;

        // Render + plan alone, in this process (what a sync costs before the write).
        let spec = ApplicationSpec {
            source: ApplicationSource {
                repo_url: repo.display().to_string(),
                target_revision: "main".into(),
                path: String::new(),
                poll_interval_seconds: None,
            },
            sync_policy: SyncPolicy {
                automated: true,
                prune: true,
                self_heal: true,
            },
            ..Default::default()
        };
        let app = Application::new("bench", spec.clone());
        let catalog = Catalog::discover(&client).await?;
        let source = Source::new(&spec.source.repo_url, tmp.path())?;
        let t = Instant::now();
        let desired = sync::desired(&source, &app, &catalog, &first).await?;
        let planned = sync::plan(&app, desired, &[])?;
        let render_plan = t.elapsed();
        if planned.changes.len() != count + 1 {
            bail!("planned {} changes for {} objects", planned.changes.len(), count + 1);
        }

        // First sync: from creating the Application to its status naming the commit.
        let apps: Api<Application> = Api::namespaced(client.clone(), kairn_cluster::kinds::APP_NAMESPACE);
        let t = Instant::now();
        apps.create(&PostParams::default(), &app).await?;
        synced_at(&apps, "bench", &first, Duration::from_secs(600)).await?;
        let first_sync = t.elapsed();

        // Let the reconciler's caches take in the first sync before timing a change.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let changed = |i: usize| i % 100 == 7;
        for f in 0..files {
            write_file(&repo, &ns, f, count, &changed, 1)?;
        }
        git(&repo, &["add", "-A"])?;
        let t = Instant::now();
        git(&repo, &["commit", "-q", "-m", "1% change"])?;
        let sha = git(&repo, &["rev-parse", "HEAD"])?;
        synced_at(&apps, "bench", &sha, Duration::from_secs(300)).await?;
        let one_percent = t.elapsed();

        tokio::time::sleep(Duration::from_secs(5)).await;
        write_file(&repo, &ns, 0, count, &|i| i == 3 || changed(i), 2)?;
        git(&repo, &["add", "-A"])?;
        let t = Instant::now();
        git(&repo, &["commit", "-q", "-m", "one object"])?;
        let sha = git(&repo, &["rev-parse", "HEAD"])?;
        synced_at(&apps, "bench", &sha, Duration::from_secs(300)).await?;
        let one = t.elapsed();

        println!(
            "| {count} | {:.0} ms | {:.2} s | {:.0} ms | {:.0} ms | {} MiB |",
            render_plan.as_secs_f64() * 1000.0,
            first_sync.as_secs_f64(),
            one_percent.as_secs_f64() * 1000.0,
            one.as_secs_f64() * 1000.0,
            server.rss_kib() / 1024
        );
        drop(server);
    }
    Ok(ExitCode::SUCCESS)
}
