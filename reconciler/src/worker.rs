//! The reconciler: one worker per Application, following its branch.
//!
//! A worker wakes on a change to the repository's refs (notify), on a poll tick, or on
//! shutdown. A new commit is planned and applied; a rejected commit is recorded in the
//! Application's status and not retried, leaving the cluster on the last good commit.
//! Every so often the last good commit is re-applied to undo drift.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kairn_cluster::kinds::{self, Application, ApplicationSpec};
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use kube::Api;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::source;
use crate::sync;

/// How often the last good commit is re-applied to correct drift.
const RESYNC: Duration = Duration::from_secs(30);

/// Runs the reconciler until `shutdown` turns true: watches Applications and keeps one
/// worker per Application.
pub async fn run(client: kube::Client, shutdown: watch::Receiver<bool>) {
    let apps: Api<Application> = Api::all(client.clone());
    let mut events = watcher(apps, watcher::Config::default()).boxed();
    let mut workers: HashMap<String, (ApplicationSpec, JoinHandle<()>)> = HashMap::new();
    let mut stop = shutdown.clone();
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            _ = stop.changed() => break,
        };
        let Some(event) = event else { break };
        let app = match event {
            Ok(watcher::Event::Apply(app) | watcher::Event::InitApply(app)) => app,
            Ok(watcher::Event::Delete(app)) => {
                if let Some((_, handle)) = workers.remove(&app_key(&app)) {
                    handle.abort();
                }
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "watching applications");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if app.metadata.name.is_none() {
            continue;
        }
        let name = app_key(&app);
        if workers
            .get(&name)
            .is_some_and(|(spec, handle)| *spec == app.spec && !handle.is_finished())
        {
            continue;
        }
        if let Some((_, old)) = workers.remove(&name) {
            old.abort();
        }
        tracing::info!(object = %name, repo = %app.spec.repo_url, branch = %app.spec.target_revision, "following application");
        let handle = tokio::spawn(follow(client.clone(), app.clone(), shutdown.clone()));
        workers.insert(name, (app.spec, handle));
    }
    for (_, (_, handle)) in workers {
        handle.abort();
    }
}

/// `namespace/name` of an Application: workers are keyed by it.
fn app_key(app: &Application) -> String {
    format!(
        "{}/{}",
        app.metadata.namespace.as_deref().unwrap_or_default(),
        app.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Follows one Application's branch until shutdown.
async fn follow(client: kube::Client, app: Application, mut shutdown: watch::Receiver<bool>) {
    let name = app.metadata.name.clone().unwrap_or_default();
    let repo = sync::repo_path(&app).to_path_buf();
    let (tx, mut wake) = mpsc::channel(1);
    // Kept alive for the worker's lifetime; without it, polling still works.
    let _watcher = match source::git_dir(&repo)
        .await
        .and_then(|dir| source::watch_refs(&dir, tx))
    {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(object = %name, error = %e, "cannot watch the repository; polling only");
            None
        }
    };
    let namespace = app
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| kairn_cluster::kinds::APP_NAMESPACE.to_string());
    let mut worker = Worker {
        api: Api::namespaced(client.clone(), &namespace),
        client,
        good: app.status.as_ref().and_then(|s| s.synced_revision.clone()),
        app,
        name,
        last_attempt: None,
        last_resync: Instant::now(),
        last_error: None,
    };
    loop {
        worker.tick().await;
        tokio::select! {
            _ = wake.recv() => {
                // Let the rest of a multi-file ref update land before reading.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while wake.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(source::POLL_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
    }
}

struct Worker {
    client: kube::Client,
    api: Api<Application>,
    app: Application,
    name: String,
    /// The newest commit tried, successfully or not.
    last_attempt: Option<String>,
    /// The last commit applied successfully.
    good: Option<String>,
    last_resync: Instant,
    /// The last error written to status (not rewritten while unchanged).
    last_error: Option<Vec<String>>,
}

impl Worker {
    async fn tick(&mut self) {
        let head = match source::resolve(sync::repo_path(&self.app), &self.app.spec.target_revision).await {
            Ok(head) => head,
            Err(e) => {
                tracing::warn!(object = %self.name, error = %e, "cannot read the branch");
                self.record_error(None, vec![e.to_string()]).await;
                return;
            }
        };
        if self.last_attempt.as_deref() != Some(&head.sha) {
            self.attempt(&head).await;
        } else if self.last_resync.elapsed() >= RESYNC {
            self.last_resync = Instant::now();
            if self.good.as_deref() == Some(head.sha.as_str()) {
                // Drift correction: re-apply the commit the cluster should be on.
                if let Err(e) = sync::sync(&self.client, &self.app, &head).await {
                    tracing::warn!(object = %self.name, commit = %head.sha, error = %e, "resync failed");
                }
            }
        }
    }

    async fn attempt(&mut self, head: &source::CommitInfo) {
        let started = Instant::now();
        match sync::sync(&self.client, &self.app, head).await {
            Ok((plan, revision)) => {
                let summary = plan.summary();
                tracing::info!(
                    object = %self.name, commit = %head.sha, author = %head.author, revision,
                    created = summary.created, updated = summary.updated, pruned = summary.pruned,
                    unchanged = summary.unchanged, elapsed_ms = started.elapsed().as_millis() as u64,
                    "synced commit"
                );
                self.last_attempt = Some(head.sha.clone());
                self.good = Some(head.sha.clone());
                self.last_error = None;
                let status = json!({"status": {
                    "syncStatus": "Synced", "syncedRevision": head.sha, "pendingRevision": null,
                    "lastSyncTime": kinds::now(), "lastPlan": summary, "lastError": null}});
                self.patch_status(status).await;
            }
            Err(e) if e.is_rejection() => {
                tracing::warn!(object = %self.name, commit = %head.sha, error = %e, "commit rejected");
                self.last_attempt = Some(head.sha.clone());
                self.record_error(Some(&head.sha), e.messages()).await;
            }
            Err(e) => {
                // Transient (API down, concurrent change): retried on the next tick.
                tracing::warn!(object = %self.name, commit = %head.sha, error = %e, "sync failed; will retry");
                self.record_error(Some(&head.sha), e.messages()).await;
            }
        }
    }

    async fn record_error(&mut self, commit: Option<&str>, messages: Vec<String>) {
        if self.last_error.as_ref() == Some(&messages) {
            return;
        }
        self.last_error = Some(messages.clone());
        let revision = commit.unwrap_or_default();
        let status = json!({"status": {
            "syncStatus": "OutOfSync", "pendingRevision": commit,
            "lastError": {"revision": revision, "messages": messages, "time": kinds::now()}}});
        self.patch_status(status).await;
    }

    async fn patch_status(&self, patch: serde_json::Value) {
        if let Err(e) = self
            .api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(object = %self.name, error = %e, "cannot update application status");
        }
    }
}
