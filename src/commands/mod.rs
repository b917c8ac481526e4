//! One module per `kairn` verb.

pub mod agent;
pub mod audit;
pub mod bench;
pub mod components;
pub mod diff;
pub mod get;
pub mod history;
pub mod member;
pub mod rollback;
pub mod server;
pub mod status;
pub mod sync;
pub mod up;

use anyhow::Context;
use kairn_cluster::kinds::Application;
use kube::api::ListParams;
use kube::Api;

/// The Application named `name` (in `namespace`, else `kairn-system`), or every
/// Application (in `namespace`, else in all namespaces).
pub async fn applications(
    client: &kube::Client,
    namespace: Option<&str>,
    name: Option<&str>,
) -> anyhow::Result<Vec<Application>> {
    let found = match (name, namespace) {
        (Some(name), ns) => {
            let api: Api<Application> =
                Api::namespaced(client.clone(), ns.unwrap_or(kairn_cluster::kinds::APP_NAMESPACE));
            api.get(name).await.map(|app| vec![app])
        }
        (None, Some(ns)) => {
            let api: Api<Application> = Api::namespaced(client.clone(), ns);
            api.list(&ListParams::default()).await.map(|list| list.items)
        }
        (None, None) => {
            let api: Api<Application> = Api::all(client.clone());
            api.list(&ListParams::default()).await.map(|list| list.items)
        }
    };
    found
        .map_err(crate::client::server_error)
        .context("reading applications")
}
