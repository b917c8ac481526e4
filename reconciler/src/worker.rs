//! The reconciler: one worker per Application.
//!
//! A worker wakes on a new commit (notify on a local repository's refs, a poll of a
//! remote one, or a webhook's refresh annotation), on a change to one of its managed
//! objects (the live cache's watch), on a sync asked for by hand (`operation`), or on
//! shutdown. Each wake it compares the target revision with the cluster and:
//! - with `automated`, applies a new commit as one transaction;
//! - with `selfHeal`, puts back what was changed outside Git (a drift);
//! - runs a requested `operation` (`kairn sync`), then clears it;
//! - writes status: sync, health, one entry per object, conditions.
//!
//! A rejected commit is recorded (status, history) and never retried; the cluster stays
//! on the last good commit. A sync that raced with another writer is retried.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kairn_cluster::kinds::{
    self, Application, ApplicationCondition, ApplicationSpec, ApplicationStatus, BatchOrigin, HealthState,
    OperationState, PlanSummary, ResourceStatus, SyncError as StatusError, SyncState,
};
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use kube::Api;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::apply::{self, ApplyError};
use crate::health::{self, Health};
use crate::history;
use crate::live::LiveCache;
use crate::plan::{Action, Catalog, Plan};
use crate::source::{self, short_sha, CommitInfo, Source};
use crate::sync::{self, SyncError};

/// How the reconciler runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data directory: remote repositories are mirrored into its `repos/`.
    pub data_dir: PathBuf,
}

/// The annotation a webhook (or a user) sets to make the reconciler fetch at once.
pub use kairn_cluster::api::hooks::REFRESH_ANNOTATION;
/// Default seconds between polls of a remote repository.
const DEFAULT_POLL: u64 = 60;
/// After a sync, how long the live cache may lag behind it before a difference counts
/// as drift.
const SETTLE: Duration = Duration::from_secs(3);
/// Most entries kept in `status.resources`: beyond it, only the objects that are not
/// Synced and Healthy are listed (a status of 10,000 entries would make every status
/// write a megabyte).
const MAX_RESOURCE_ENTRIES: usize = 1_000;

/// Runs the reconciler until `shutdown` turns true: watches Applications and keeps one
/// worker per Application.
pub async fn run(client: kube::Client, config: Config, shutdown: watch::Receiver<bool>) {
    let catalog = loop {
        match Catalog::discover(&client).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, "discovering served kinds; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = wait_shutdown(shutdown.clone()) => return,
                }
            }
        }
    };
    let live = LiveCache::start(&client, &catalog, shutdown.clone());
    // Workers plan against the caches: wait here, once, until they hold the cluster.
    tokio::select! {
        _ = live.ready() => {}
        _ = wait_shutdown(shutdown.clone()) => return,
    }
    tracing::debug!("live caches ready");
    let apps: Api<Application> = Api::all(client.clone());
    let mut events = watcher(apps, watcher::Config::default()).boxed();
    let mut workers: HashMap<String, (ApplicationSpec, watch::Sender<Application>, JoinHandle<()>)> = HashMap::new();
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
                if let Some((_, _, handle)) = workers.remove(&sync::app_key(&app)) {
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
        let key = sync::app_key(&app);
        if let Some((spec, tx, handle)) = workers.get(&key) {
            if *spec == app.spec && !handle.is_finished() {
                // Same source: hand over the new object (an operation, a refresh).
                let _ = tx.send(app);
                continue;
            }
        }
        if let Some((_, _, old)) = workers.remove(&key) {
            old.abort();
        }
        tracing::info!(object = %key, repo = %app.spec.source.repo_url, revision = %app.spec.source.target_revision, "following application");
        let (tx, rx) = watch::channel(app.clone());
        let handle = tokio::spawn(follow(
            client.clone(),
            config.clone(),
            catalog.clone(),
            live.clone(),
            rx,
            shutdown.clone(),
        ));
        workers.insert(key, (app.spec, tx, handle));
    }
    for (_, (_, _, handle)) in workers {
        handle.abort();
    }
}

async fn wait_shutdown(mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// Follows one Application until shutdown.
async fn follow(
    client: kube::Client,
    config: Config,
    catalog: Catalog,
    live: LiveCache,
    mut updates: watch::Receiver<Application>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = updates.borrow_and_update().clone();
    let key = sync::app_key(&app);
    let source = match Source::new(&app.spec.source.repo_url, &config.data_dir) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(object = %key, error = %e, "cannot use the repository");
            let mut w = Worker::new(client, app, None, catalog, live);
            w.status.conditions = vec![condition("SourceError", &e.to_string())];
            w.status.sync = SyncState {
                status: "Unknown".into(),
                message: Some(e.to_string()),
            };
            w.write_status().await;
            return;
        }
    };
    let (tx, mut wake) = mpsc::channel(1);
    // Kept alive for the worker's lifetime; without it, polling still works.
    let _watcher = if source.is_remote() {
        None
    } else {
        match source::git_dir(source.path())
            .await
            .and_then(|dir| source::watch_refs(&dir, tx))
        {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(object = %key, error = %e, "cannot watch the repository; polling only");
                None
            }
        }
    };
    let mut changes = live.subscribe();
    let name = sync::app_name(&app).to_string();
    let mut worker = Worker::new(client, app, Some(source), catalog, live);
    worker.fetch_due = true;
    loop {
        worker.tick().await;
        let poll = if worker.source.as_ref().is_some_and(Source::is_remote) {
            worker.poll_interval()
        } else {
            source::POLL_INTERVAL
        };
        let settle = worker.settling_left();
        if settle.is_none() && worker.compared_settling {
            // The last look raced the sync it followed: look again now.
            continue;
        }
        let timer = tokio::time::sleep(settle.unwrap_or(poll));
        tokio::pin!(timer);
        // Wait for something that concerns this Application.
        loop {
            tokio::select! {
                _ = wake.recv() => {
                    // Let the rest of a multi-file ref update land before reading.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    while wake.try_recv().is_ok() {}
                }
                changed = changes.recv() => match changed {
                    Ok(app) if app != name => continue,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Coalesce a burst (a sync of thousands of objects) into one look.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        while changes.try_recv().is_ok() {}
                        worker.dirty = true;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                r = updates.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let app = updates.borrow_and_update().clone();
                    if annotation(&app, REFRESH_ANNOTATION) != annotation(&worker.app, REFRESH_ANNOTATION) {
                        worker.fetch_due = true;
                    }
                    worker.app = app;
                    worker.dirty = true;
                }
                _ = &mut timer => {
                    if settle.is_none() {
                        worker.fetch_due = true;
                    } else {
                        // The settling window is over: look at the cluster as it now is.
                        worker.dirty = true;
                    }
                }
                _ = shutdown.changed() => return,
            }
            break;
        }
    }
}

fn annotation(app: &Application, key: &str) -> Option<String> {
    app.metadata.annotations.as_ref().and_then(|a| a.get(key)).cloned()
}

fn condition(type_: &str, message: &str) -> ApplicationCondition {
    ApplicationCondition {
        type_: type_.into(),
        message: message.into(),
        last_transition_time: kinds::now(),
    }
}

/// A commit's desired objects (`source#doc`, object), or why it cannot be rendered.
type Rendered = Result<Vec<(String, Value)>, Vec<crate::manifest::ManifestError>>;

/// One Application's state between wakes.
struct Worker {
    client: kube::Client,
    api: Api<Application>,
    app: Application,
    key: String,
    source: Option<Source>,
    catalog: Catalog,
    live: LiveCache,
    /// A fetch is due (poll tick, refresh annotation, start).
    fetch_due: bool,
    /// Why the last fetch failed, until one succeeds.
    fetch_error: Option<String>,
    /// Something a comparison depends on changed since the last one (a managed object,
    /// the Application, the target commit): a comparison of thousands of objects is not
    /// repeated on every poll.
    dirty: bool,
    /// The target commit of the last comparison.
    compared: Option<String>,
    /// Whether the last comparison ran while the live cache could still lag a sync (a
    /// later one must follow).
    compared_settling: bool,
    /// The newest commit an automated sync tried, successfully or not.
    last_attempt: Option<String>,
    /// The operation ids already run.
    last_operation: Option<String>,
    /// The commit the cluster is on.
    synced: Option<String>,
    /// When the last sync landed: the live cache may lag until [`SETTLE`] after it.
    synced_at: Option<Instant>,
    /// Rendered desired objects of one commit (rendering is the costly part of a look).
    rendered: Option<(String, Rendered)>,
    /// Who changed a drifted object, by object and resourceVersion (one audit query each).
    drift_authors: HashMap<(String, String), String>,
    /// The status as last written.
    status: ApplicationStatus,
    written: Option<Value>,
}

impl Worker {
    fn new(client: kube::Client, app: Application, source: Option<Source>, catalog: Catalog, live: LiveCache) -> Self {
        let namespace = app
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| kinds::APP_NAMESPACE.to_string());
        let status = app.status.clone().unwrap_or_default();
        Worker {
            api: Api::namespaced(client.clone(), &namespace),
            client,
            key: sync::app_key(&app),
            synced: status.synced_revision.clone(),
            last_attempt: status
                .last_error
                .as_ref()
                .map(|e| e.revision.clone())
                .or_else(|| status.synced_revision.clone()),
            last_operation: status.operation_state.as_ref().map(|o| o.id.clone()),
            status,
            app,
            source,
            catalog,
            live,
            fetch_due: false,
            fetch_error: None,
            dirty: true,
            compared: None,
            compared_settling: false,
            synced_at: None,
            rendered: None,
            drift_authors: HashMap::new(),
            written: None,
        }
    }

    fn name(&self) -> &str {
        sync::app_name(&self.app)
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_secs(
            self.app
                .spec
                .source
                .poll_interval_seconds
                .map(u64::from)
                .unwrap_or(DEFAULT_POLL)
                .max(1),
        )
    }

    /// Time left until the live cache has surely caught up with the last sync.
    fn settling_left(&self) -> Option<Duration> {
        let at = self.synced_at?;
        SETTLE.checked_sub(at.elapsed()).filter(|d| !d.is_zero())
    }

    async fn tick(&mut self) {
        let Some(source) = self.source.clone() else { return };
        let mut conditions = Vec::new();
        if self.fetch_due && source.is_remote() {
            self.fetch_due = false;
            match source.fetch().await {
                Ok(()) => self.fetch_error = None,
                Err(e) => {
                    // The cluster stays on its last synced commit; the mirror keeps the
                    // last fetched state; the condition stays until a fetch succeeds.
                    tracing::warn!(object = %self.key, error = %e, "fetching the repository");
                    self.fetch_error = Some(format!("fetching: {e}"));
                }
            }
        }
        if let Some(e) = &self.fetch_error {
            conditions.push(condition("SourceError", e));
        }
        let target = self.app.spec.source.target_revision.clone();
        tracing::debug!(object = %self.key, revision = %target, "resolving");
        let head = match source.resolve(&target).await {
            Ok(head) => head,
            Err(e) => {
                tracing::warn!(object = %self.key, error = %e, "cannot resolve the target revision");
                conditions.push(condition("SourceError", &e.to_string()));
                self.set_conditions(conditions);
                self.status.sync = SyncState {
                    status: "Unknown".into(),
                    message: Some(e.to_string()),
                };
                self.write_status().await;
                return;
            }
        };
        self.status.target_revision = Some(head.sha.clone());

        if let Some(op) = self
            .app
            .operation
            .clone()
            .filter(|op| Some(&op.id) != self.last_operation.as_ref())
        {
            self.run_operation(&source, &op, &head).await;
        } else if self.app.spec.sync_policy.automated
            && self.last_attempt.as_deref() != Some(&head.sha)
            && self
                .sync(
                    &source,
                    &head,
                    "auto-sync",
                    "automated",
                    self.app.spec.sync_policy.prune,
                )
                .await
        {
            // Say it landed at once; the comparison below refines sync and health.
            self.status.sync = SyncState {
                status: "Synced".into(),
                message: Some("settling after the sync".into()),
            };
            self.write_status().await;
        }
        if self.compared.as_deref() != Some(&head.sha) || (self.compared_settling && self.settling_left().is_none()) {
            self.dirty = true;
        }
        if self.dirty {
            self.dirty = false;
            self.compared = Some(head.sha.clone());
            self.compared_settling = self.settling_left().is_some();
            self.compare(&source, &head, conditions).await;
        } else {
            // Only the source's health may have changed.
            let mut kept: Vec<ApplicationCondition> = self
                .status
                .conditions
                .iter()
                .filter(|c| c.type_ != "SourceError")
                .cloned()
                .collect();
            kept.extend(conditions);
            self.set_conditions(kept);
        }
        self.write_status().await;
    }

    /// Renders `commit` (once per commit; a commit's manifests never change).
    async fn desired(&mut self, source: &Source, sha: &str) -> Result<Vec<(String, Value)>, SyncError> {
        if let Some((cached, result)) = &self.rendered {
            if cached == sha {
                return result.clone().map_err(SyncError::Invalid);
            }
        }
        let result = sync::desired(source, &self.app, &self.catalog, sha).await;
        match &result {
            Ok(objs) => self.rendered = Some((sha.to_string(), Ok(objs.clone()))),
            Err(SyncError::Invalid(errors)) => self.rendered = Some((sha.to_string(), Err(errors.clone()))),
            Err(_) => {}
        }
        result
    }

    /// Plans `commit` against the cluster.
    async fn plan(&mut self, source: &Source, sha: &str) -> Result<Plan, SyncError> {
        let desired = self.desired(source, sha).await?;
        self.plan_desired(desired)
    }

    /// Plans rendered objects against the live cache.
    fn plan_desired(&self, desired: Vec<(String, Value)>) -> Result<Plan, SyncError> {
        let mut live = self.live.owned_by(self.name());
        // Claims on objects owned elsewhere: look each desired object up.
        for (_, obj) in &desired {
            let s = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or_default();
            let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str);
            let (av, kind, name) = (s("/apiVersion"), s("/kind"), s("/metadata/name"));
            let owner = self.live.owner_of(av, kind, ns, name);
            if owner.is_some_and(|o| o != self.name()) {
                live.extend(self.live.get(av, kind, ns, name));
            }
        }
        sync::plan(&self.app, desired, &live)
    }

    /// Syncs `commit`; records history and status. Returns whether it landed.
    async fn sync(&mut self, source: &Source, commit: &CommitInfo, operation: &str, by: &str, prune: bool) -> bool {
        let started = Instant::now();
        let (ns, name) = self
            .key
            .split_once('/')
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .unwrap_or_default();
        // Where a sync's time goes, for the log: rendering, planning, the transaction.
        let (mut render_ms, mut plan_ms) = (0, 0);
        let result = async {
            let t = Instant::now();
            let desired = self.desired(source, &commit.sha).await?;
            render_ms = t.elapsed().as_millis() as u64;
            let t = Instant::now();
            let mut plan = self.plan_desired(desired)?;
            if !prune {
                plan.changes.retain(|c| c.action != Action::Prune);
            }
            let entry = history::entry(commit, &plan, operation, by);
            plan_ms = t.elapsed().as_millis() as u64;
            let origin = BatchOrigin {
                application: self.key.clone(),
                commit: commit.sha.clone(),
                history: Some(entry),
            };
            let revision = apply::apply(&self.client, &plan, false, Some(origin)).await?;
            Ok::<_, SyncError>((plan, revision))
        }
        .await;
        match result {
            Ok((plan, revision)) => {
                let summary = plan.summary();
                tracing::info!(
                    object = %self.key, commit = %commit.sha, author = %commit.author, revision, operation,
                    created = summary.created, updated = summary.updated, pruned = summary.pruned,
                    unchanged = summary.unchanged, render_ms, plan_ms,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "synced commit"
                );
                self.last_attempt = Some(commit.sha.clone());
                self.synced = Some(commit.sha.clone());
                self.synced_at = Some(Instant::now());
                self.dirty = true;
                self.status.synced_revision = Some(commit.sha.clone());
                self.status.last_sync_time = Some(kinds::now());
                self.status.last_plan = Some(summary);
                self.status.last_error = None;
                true
            }
            Err(e) if e.is_rejection() => {
                tracing::warn!(object = %self.key, commit = %commit.sha, error = %e, "commit rejected");
                self.last_attempt = Some(commit.sha.clone());
                let messages = e.messages();
                let entry = history::failure(commit, operation, by, messages.clone());
                if let Err(e) = history::record(&self.client, &ns, &name, &entry).await {
                    tracing::warn!(object = %self.key, error = %e, "cannot record history");
                }
                self.status.last_error = Some(StatusError {
                    revision: commit.sha.clone(),
                    messages,
                    time: kinds::now(),
                });
                false
            }
            Err(e) => {
                // Transient (API down, a concurrent change): retried on the next wake.
                tracing::warn!(object = %self.key, commit = %commit.sha, error = %e, "sync failed; will retry");
                if matches!(e, SyncError::Apply(ApplyError::Conflict(_))) {
                    self.synced_at = Some(Instant::now());
                }
                false
            }
        }
    }

    /// Runs a sync asked for by hand, then clears it from the Application.
    async fn run_operation(&mut self, source: &Source, op: &kinds::Operation, head: &CommitInfo) {
        let commit = match &op.revision {
            Some(rev) if !rev.is_empty() => match source.resolve(rev).await {
                Ok(c) => c,
                Err(e) => {
                    self.finish_operation(op, "Error", e.to_string(), None, None).await;
                    return;
                }
            },
            _ => head.clone(),
        };
        let by = if op.initiated_by.is_empty() {
            "unknown"
        } else {
            &op.initiated_by
        };
        if op.dry_run {
            let result = async {
                let mut plan = self.plan(source, &commit.sha).await?;
                if !(op.prune || self.app.spec.sync_policy.prune) {
                    plan.changes.retain(|c| c.action != Action::Prune);
                }
                apply::apply(&self.client, &plan, true, None).await?;
                Ok::<_, SyncError>(plan)
            }
            .await;
            match result {
                Ok(plan) => {
                    let s = plan.summary();
                    let message = format!(
                        "dry run: {} to create, {} to update, {} to prune",
                        s.created, s.updated, s.pruned
                    );
                    self.finish_operation(op, "Succeeded", message, Some(&commit), Some(s))
                        .await
                }
                Err(e) => {
                    self.finish_operation(op, "Failed", e.messages().join("; "), Some(&commit), None)
                        .await
                }
            }
            return;
        }
        let prune = op.prune || self.app.spec.sync_policy.prune;
        if self.sync(source, &commit, "sync", by, prune).await {
            let summary = self.status.last_plan.clone();
            let message = format!("synced {}", short_sha(&commit.sha));
            self.finish_operation(op, "Succeeded", message, Some(&commit), summary)
                .await;
        } else {
            let message = self
                .status
                .last_error
                .as_ref()
                .filter(|e| e.revision == commit.sha)
                .map(|e| e.messages.join("; "))
                .unwrap_or_else(|| "the sync did not land; see the logs".into());
            self.finish_operation(op, "Failed", message, Some(&commit), None).await;
        }
    }

    async fn finish_operation(
        &mut self,
        op: &kinds::Operation,
        phase: &str,
        message: String,
        commit: Option<&CommitInfo>,
        summary: Option<PlanSummary>,
    ) {
        tracing::info!(object = %self.key, operation = %op.id, phase, message = %message, "operation finished");
        self.last_operation = Some(op.id.clone());
        self.status.operation_state = Some(OperationState {
            id: op.id.clone(),
            phase: phase.into(),
            message,
            revision: commit.map(|c| c.sha.clone()),
            summary,
            finished_at: Some(kinds::now()),
        });
        // Status first (a waiting `kairn sync` reads it), then the request goes.
        self.write_status().await;
        let clear = json!({"operation": null});
        if let Err(e) = self
            .api
            .patch(self.name(), &PatchParams::default(), &Patch::Merge(&clear))
            .await
        {
            tracing::warn!(object = %self.key, error = %e, "cannot clear the operation");
        }
    }

    /// Compares the target revision with the cluster: sync state, drift (healed when
    /// asked), health and the per-object entries.
    async fn compare(&mut self, source: &Source, head: &CommitInfo, mut conditions: Vec<ApplicationCondition>) {
        let settling = self.settling_left().is_some();
        let plan = match self.plan(source, &head.sha).await {
            Ok(plan) => plan,
            Err(e) => {
                let messages = e.messages();
                if e.is_rejection() {
                    self.status.sync = SyncState {
                        status: "Failed".into(),
                        message: Some(format!(
                            "commit {} is rejected: {}",
                            short_sha(&head.sha),
                            messages.join("; ")
                        )),
                    };
                    if self
                        .status
                        .last_error
                        .as_ref()
                        .is_none_or(|err| err.revision != head.sha)
                    {
                        self.status.last_error = Some(StatusError {
                            revision: head.sha.clone(),
                            messages,
                            time: kinds::now(),
                        });
                    }
                } else {
                    conditions.push(condition("ComparisonError", &e.to_string()));
                }
                self.set_conditions(conditions);
                return;
            }
        };
        let on_head = self.synced.as_deref() == Some(head.sha.as_str());
        let policy = self.app.spec.sync_policy.clone();
        let drifted: Vec<&crate::plan::Change> = plan
            .changes
            .iter()
            .filter(|c| c.action != Action::Unchanged)
            .filter(|c| policy.prune || c.action != Action::Prune)
            .collect();
        // Drift: the cluster was on this commit, and something changed since.
        if on_head && !drifted.is_empty() && !settling && policy.automated && policy.self_heal {
            tracing::info!(object = %self.key, commit = %head.sha, objects = drifted.len(), "drift: putting back what Git says");
            let mut heal = plan.clone();
            if !policy.prune {
                heal.changes.retain(|c| c.action != Action::Prune);
            }
            for c in heal.changes.iter().filter(|c| c.action != Action::Unchanged) {
                let who = self.drift_author(c).await;
                tracing::info!(object = %c.object, app = %self.key, changed_by = %who, "drift event");
            }
            self.sync(source, head, "self-heal", "automated", policy.prune).await;
            // Look again once the cache has the result.
            self.set_conditions(conditions);
            return;
        }
        let mut resources = Vec::new();
        let mut healths = Vec::new();
        let mut out_of_sync = 0;
        for change in &plan.changes {
            let obj = change
                .live
                .as_ref()
                .or(change.desired.as_ref())
                .cloned()
                .unwrap_or(Value::Null);
            let s = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
            let (status, mut message) = match change.action {
                Action::Unchanged => ("Synced", None),
                Action::Create => ("OutOfSync", Some("in Git, not in the cluster".to_string())),
                Action::Prune if !policy.prune => ("OutOfSync", Some("no longer in Git; pruning is off".to_string())),
                Action::Prune => ("OutOfSync", Some("no longer in Git; will be pruned".to_string())),
                Action::Update if on_head => {
                    let who = self.drift_author(change).await;
                    ("OutOfSync", Some(format!("changed outside Git by {who}")))
                }
                Action::Update => ("OutOfSync", Some("differs from the target revision".to_string())),
            };
            if change.action != Action::Unchanged {
                out_of_sync += 1;
            }
            let health = match (&change.live, change.action) {
                (None, _) => Some((Health::Missing, None)),
                (Some(_), Action::Prune) => None,
                (Some(live), _) => health::assess(live, &|ns, sel| self.live.pods(ns, sel)),
            };
            if let Some((h, why)) = &health {
                healths.push(*h);
                if *h != Health::Healthy && message.is_none() {
                    message = why.clone();
                }
            }
            let notable = status != "Synced" || health.as_ref().is_some_and(|(h, _)| *h != Health::Healthy);
            if resources.len() < MAX_RESOURCE_ENTRIES && (notable || plan.changes.len() <= MAX_RESOURCE_ENTRIES) {
                resources.push(ResourceStatus {
                    api_version: s("/apiVersion"),
                    kind: s("/kind"),
                    namespace: obj
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .map(String::from),
                    name: s("/metadata/name"),
                    status: status.into(),
                    health: health.map(|(h, _)| h.as_str().to_string()),
                    message,
                    diff: (change.action == Action::Update).then(|| change.diff.clone()),
                });
            }
        }
        let sync_state = if self.status.last_error.as_ref().is_some_and(|e| e.revision == head.sha) {
            let e = self
                .status
                .last_error
                .as_ref()
                .map(|e| e.messages.join("; "))
                .unwrap_or_default();
            SyncState {
                status: "Failed".into(),
                message: Some(format!("commit {} is rejected: {e}", short_sha(&head.sha))),
            }
        } else if out_of_sync == 0 && on_head {
            SyncState {
                status: "Synced".into(),
                message: None,
            }
        } else if settling {
            SyncState {
                status: "Synced".into(),
                message: Some("settling after the sync".into()),
            }
        } else {
            let why = if on_head {
                format!("{out_of_sync} object(s) differ from Git")
            } else {
                format!("revision {} is not applied", short_sha(&head.sha))
            };
            SyncState {
                status: "OutOfSync".into(),
                message: Some(why),
            }
        };
        let overall = health::overall(healths.iter().copied());
        let unhealthy = resources
            .iter()
            .filter(|r| r.health.as_deref().is_some_and(|h| h != "Healthy"))
            .map(|r| format!("{} {}: {}", r.kind, r.name, r.message.clone().unwrap_or_default()))
            .take(3)
            .collect::<Vec<_>>();
        self.status.health = HealthState {
            status: overall.as_str().into(),
            message: (overall != Health::Healthy).then(|| unhealthy.join("; ")),
        };
        if plan.changes.len() > MAX_RESOURCE_ENTRIES {
            conditions.push(condition(
                "ResourcesTruncated",
                &format!(
                    "{} objects: status lists only those not Synced and Healthy (at most {MAX_RESOURCE_ENTRIES})",
                    plan.changes.len()
                ),
            ));
        }
        self.status.sync = sync_state;
        self.status.resources = resources;
        self.set_conditions(conditions);
    }

    /// Who last changed a drifted object, from the audit trail (one query per version).
    async fn drift_author(&mut self, change: &crate::plan::Change) -> String {
        let Some(live) = &change.live else {
            return "unknown".into();
        };
        let rv = live
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let key = (change.object.clone(), rv);
        if let Some(who) = self.drift_authors.get(&key) {
            return who.clone();
        }
        let s = |p: &str| live.pointer(p).and_then(Value::as_str).unwrap_or_default();
        let query = {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query
                .append_pair("kind", s("/kind"))
                .append_pair("name", s("/metadata/name"))
                .append_pair("limit", "50");
            if let Some(ns) = live.pointer("/metadata/namespace").and_then(Value::as_str) {
                query.append_pair("namespace", ns);
            }
            query.finish()
        };
        let who = match history::audit(&self.client, &query).await {
            // The newest write that changed what Git sets (not a controller's status).
            Ok(records) => records
                .iter()
                .find(|r| changes_desired_state(&r.patch))
                .map(|r| format!("{} ({} at {})", r.user, r.verb, r.time))
                .unwrap_or_else(|| "unknown".into()),
            Err(e) => {
                tracing::debug!(error = %e, "reading the audit trail");
                "unknown".into()
            }
        };
        self.drift_authors.insert(key, who.clone());
        who
    }

    /// Sets the conditions, keeping the time of one already reported (a condition that
    /// stays is not a change, and is not rewritten).
    fn set_conditions(&mut self, mut conditions: Vec<ApplicationCondition>) {
        for c in &mut conditions {
            if let Some(old) = self
                .status
                .conditions
                .iter()
                .find(|o| o.type_ == c.type_ && o.message == c.message)
            {
                c.last_transition_time.clone_from(&old.last_transition_time);
            }
        }
        self.status.conditions = conditions;
    }

    /// Writes status when it changed.
    async fn write_status(&mut self) {
        let value = match serde_json::to_value(&self.status) {
            Ok(v) => v,
            Err(_) => return,
        };
        if self.written.as_ref() == Some(&value) {
            return;
        }
        // A merge patch keeps keys it does not name: name the absent ones as null.
        let mut patched = value.clone();
        for key in [
            "syncedRevision",
            "targetRevision",
            "lastSyncTime",
            "lastPlan",
            "lastError",
            "resources",
            "conditions",
            "operationState",
        ] {
            if patched.get(key).is_none() {
                patched[key] = Value::Null;
            }
        }
        for key in ["sync", "health"] {
            if patched[key].get("message").is_none() {
                patched[key]["message"] = Value::Null;
            }
        }
        let patch = json!({"status": patched});
        let params = PatchParams::default();
        match self.api.patch_status(self.name(), &params, &Patch::Merge(&patch)).await {
            Ok(_) => self.written = Some(value),
            Err(e) => tracing::warn!(object = %self.key, error = %e, "cannot update application status"),
        }
    }
}

/// Whether an audit record's patch touches more than status and bookkeeping: a write
/// that may have caused a drift.
fn changes_desired_state(patch: &Value) -> bool {
    patch.as_array().is_some_and(|ops| {
        ops.iter().any(|op| {
            let path = op["path"].as_str().unwrap_or_default();
            !(path.starts_with("/status")
                || path == "/metadata/generation"
                || path.starts_with("/metadata/annotations/deployment.kubernetes.io"))
        })
    })
}
