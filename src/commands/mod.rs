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
    match name {
        Some(name) => Ok(vec![api
            .get(name)
            .await
            .with_context(|| format!("application {name}"))?]),
        None => Ok(api
            .list(&ListParams::default())
            .await
            .context("listing applications")?
            .items),
    }
}
