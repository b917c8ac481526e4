//! ServiceAccount controller, as Kubernetes' `serviceaccount-controller`: every namespace
//! has a `default` ServiceAccount. A new namespace gets one, one deleted is made again,
//! and a terminating namespace is left alone (its content is going).
//!
//! Namespaces come from the `Controller`'s own reflector, `default` ServiceAccounts from a
//! reflector of their own (one watch, field-selected on the name): a pass creates the
//! account only when that cache lacks it, and a deletion seen there wakes the pass of its
//! namespace.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use tokio::sync::watch;

use super::Error;

/// The ServiceAccount every namespace has.
pub const DEFAULT: &str = "default";

/// What every reconcile shares: the client and the cache of `default` ServiceAccounts.
struct Context {
    client: kube::Client,
    accounts: Store<ServiceAccount>,
}

/// Runs the controller until shutdown.
pub async fn run(client: kube::Client, shutdown: watch::Receiver<bool>) {
    let (accounts, writer) = reflector::store();
    let selected = watcher::Config::default().fields(&format!("metadata.name={DEFAULT}"));
    let changes = reflector::reflector(writer, watcher(Api::<ServiceAccount>::all(client.clone()), selected))
        .default_backoff()
        .touched_objects();
    let ctx = Arc::new(Context {
        client: client.clone(),
        accounts,
    });
    Controller::new(Api::<Namespace>::all(client), watcher::Config::default())
        .watches_stream(changes, |sa: ServiceAccount| {
            sa.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns))
        })
        .graceful_shutdown_on(super::stopped(shutdown))
        .run(reconcile, super::retry_soon, ctx)
        .for_each(|r| async move { super::log_result("serviceaccount", r) })
        .await;
}

/// Whether the namespace needs its default ServiceAccount made: it lacks one and is not
/// terminating.
pub fn needs_default(ns: &Namespace, has_default: bool) -> bool {
    let terminating = ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    !has_default && !terminating
}

/// The default ServiceAccount of namespace `ns`.
pub fn default_account(ns: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    // The store's writer lives as long as the controller.
    let _ = ctx.accounts.wait_until_ready().await;
    let name = ns.name_any();
    let has_default = ctx.accounts.get(&ObjectRef::new(DEFAULT).within(&name)).is_some();
    if !needs_default(&ns, has_default) {
        return Ok(Action::await_change());
    }
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &name);
    match api.create(&PostParams::default(), &default_account(&name)).await {
        Ok(_) => tracing::info!(object = %format!("{name}/{DEFAULT}"), "created default service account"),
        // Made meanwhile (the cache has yet to show it): its watch event follows.
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        // The namespace began terminating since the cache saw it.
        Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("being terminated") => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NamespaceStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn only_live_namespaces_without_one_get_a_default_account() {
        let live = Namespace {
            metadata: ObjectMeta {
                name: Some("team".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut deleting = live.clone();
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let mut terminating = live.clone();
        terminating.status = Some(NamespaceStatus {
            phase: Some("Terminating".into()),
            ..Default::default()
        });
        // (namespace, has a default account) -> create one
        let cases = [
            (&live, false, true),
            (&live, true, false),
            (&deleting, false, false),
            (&terminating, false, false),
        ];
        for (ns, has, want) in cases {
            assert_eq!(needs_default(ns, has), want, "{ns:?} has {has}");
        }
        let sa = default_account("team");
        assert_eq!((sa.name_any(), sa.namespace()), ("default".into(), Some("team".into())));
    }
}
