//! The controller manager: Deployment -> ReplicaSet -> Pods, the garbage collector and
//! the namespace controller. Each controller talks to the API server like any client and
//! reads through watch-fed caches; none of them touches the store.

pub mod deployment;
pub mod gc;
pub mod namespace;
pub mod replicaset;

use std::time::Duration;

use kube::runtime::controller::Action;
use tokio::sync::watch;

/// Errors of a reconcile pass (all retried after a short delay).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("api: {0}")]
    Api(#[from] kube::Error),
    /// An object lacks something the controller needs.
    #[error("{0}")]
    Malformed(String),
}

/// What every controller does after an error: try again soon.
pub(crate) fn retry_soon<K>(_obj: std::sync::Arc<K>, error: &Error, _ctx: std::sync::Arc<kube::Client>) -> Action {
    tracing::debug!(error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// The controller name a `Controller` reports in logs.
pub(crate) fn log_result<T: std::fmt::Debug, E: std::fmt::Display>(controller: &'static str, result: Result<T, E>) {
    if let Err(e) = result {
        tracing::debug!(controller, error = %e, "reconcile error");
    }
}

/// Runs every controller until `shutdown` turns true.
pub async fn run(client: kube::Client, shutdown: watch::Receiver<bool>) {
    tokio::join!(
        deployment::run(client.clone(), shutdown.clone()),
        replicaset::run(client.clone(), shutdown.clone()),
        // The garbage collector and the namespace controller, on one metadata graph.
        gc::run(client, shutdown),
    );
}

/// A future that resolves when `rx` reports shutdown.
pub(crate) async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// `k=v,k2=v2` for a `matchLabels` map, as a list's labelSelector parameter.
pub(crate) fn selector_string(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether `obj`'s controller owner reference points at uid `owner`.
pub(crate) fn controlled_by(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, owner: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == owner)
}
