//! One module per `kairn` verb.

pub mod agent;
pub mod diff;
pub mod get;
pub mod server;
pub mod status;
pub mod up;

use anyhow::Context;
use kairn_cluster::kinds::Application;
use kube::api::ListParams;
use kube::Api;

/// The Application named `name`, or every Application.
pub async fn applications(client: &kube::Client, name: Option<&str>) -> anyhow::Result<Vec<Application>> {
    let api: Api<Application> = Api::all(client.clone());
    let found = match name {
        Some(name) => api.get(name).await.map(|app| vec![app]),
        None => api.list(&ListParams::default()).await.map(|list| list.items),
    };
    found
        .map_err(crate::client::server_error)
        .context("reading applications")
}
