//! Garbage collector: deletes ReplicaSets and Pods whose controlling owner is gone, so
//! that pruning a Deployment from Git takes its ReplicaSets and pods with it.

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// How often owners are checked. Orphans are rare (a prune, a manual delete), so a
/// periodic sweep over the API's lists is enough here.
const SWEEP: Duration = Duration::from_secs(2);

/// Runs the collector until shutdown.
pub async fn run(client: kube::Client, mut shutdown: watch::Receiver<bool>) {
    loop {
        if let Err(e) = sweep(&client).await {
            tracing::debug!(error = %e, "garbage collection sweep failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(SWEEP) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn uids<K>(client: &kube::Client) -> Result<HashSet<String>, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|o| o.uid())
        .collect())
}

/// Deletes the objects of kind `K` whose controller owner of kind `O` no longer exists.
async fn collect<K, O>(client: &kube::Client) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    O: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    // Children first, owners second: an owner always exists before its children, so an
    // owner created between the two lists is still seen alive.
    let children = api.list(&ListParams::default()).await?.items;
    let alive = uids::<O>(client).await?;
    let owner_kind = O::kind(&());
    for obj in children {
        let orphaned = obj
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && o.kind == owner_kind && !alive.contains(&o.uid));
        if orphaned {
            let ns = obj.namespace().unwrap_or_default();
            tracing::info!(object = %format!("{ns}/{}", obj.name_any()), owner = %owner_kind, "deleting orphan");
            let ns_api: Api<K> = Api::namespaced(client.clone(), &ns);
            match ns_api.delete(&obj.name_any(), &Default::default()).await {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

async fn sweep(client: &kube::Client) -> Result<(), kube::Error> {
    collect::<ReplicaSet, Deployment>(client).await?;
    collect::<Pod, ReplicaSet>(client).await
}
