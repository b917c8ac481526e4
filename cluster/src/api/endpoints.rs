//! The `kubernetes` Service's Endpoints: one address per live API server, kept as
//! kube-apiserver's lease endpoint reconciler keeps them.
//!
//! Each API server holds a store key under [`PREFIX`] attached to a lease of [`TTL`]
//! seconds, renewed every [`RENEW`]; a member that dies stops renewing and its key goes
//! with the lease. Every member rebuilds the Endpoints from the live keys on each renewal
//! (a handful of keys, one per member), and a member that stops cleanly revokes its lease
//! and rebuilds them at once, so in-cluster clients stop being sent to it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

use super::error::ApiError;
use super::{objects, registry, AppState};
use crate::store::{LeaseId, Op, Txn};

/// Where API servers record their address, one key each.
const PREFIX: &str = "/kairn/apiservers/";
/// Seconds an API server's key outlives its last renewal.
const TTL: i64 = 15;
/// How often the key is renewed and the Endpoints rebuilt.
pub const RENEW: Duration = Duration::from_secs(5);

/// One API server's registration: its address and the lease that keeps it.
pub struct Registration {
    addr: SocketAddr,
    lease: Option<LeaseId>,
}

impl Registration {
    /// The registration of the API server at `addr` (not yet in the store).
    pub fn new(addr: SocketAddr) -> Self {
        Registration { addr, lease: None }
    }

    /// Renews (or re-creates) this server's key, then rebuilds the Endpoints.
    pub async fn refresh(&mut self, state: &AppState) -> Result<(), ApiError> {
        let alive = match self.lease {
            Some(id) => state.store.lease_keep_alive(id).await?.is_some(),
            None => false,
        };
        if !alive {
            let id = state.store.lease_grant(TTL).await?;
            let put = Op::Put {
                key: format!("{PREFIX}{}", self.addr),
                value: self.addr.to_string().into_bytes(),
                lease: Some(id),
            };
            state
                .store
                .txn(Txn {
                    compares: vec![],
                    ops: vec![put],
                })
                .await?;
            self.lease = Some(id);
        }
        reconcile(state).await
    }

    /// Removes this server's key and rebuilds the Endpoints without it.
    pub async fn withdraw(&mut self, state: &AppState) -> Result<(), ApiError> {
        if let Some(id) = self.lease.take() {
            state.store.lease_revoke(id).await?;
        }
        reconcile(state).await
    }
}

/// Sets the Endpoints to the live API servers' addresses, grouped by port.
async fn reconcile(state: &AppState) -> Result<(), ApiError> {
    let (kvs, _, _) = state.store.list(PREFIX, None, None).await?;
    let mut by_port: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for kv in kvs {
        let Some(addr) = std::str::from_utf8(&kv.value)
            .ok()
            .and_then(|s| s.parse::<SocketAddr>().ok())
        else {
            continue;
        };
        by_port.entry(addr.port()).or_default().push(addr.ip().to_string());
    }
    let subsets: Vec<Value> = by_port
        .into_iter()
        .map(|(port, ips)| {
            json!({"addresses": ips.into_iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}]})
        })
        .collect();
    let endpoints = json!({"metadata": {"name": "kubernetes", "namespace": "default", "labels": labels()},
        "subsets": subsets});
    let target = api_object("endpoints")?;
    let opts = objects::WriteOptions::system();
    match objects::create(state, &target, endpoints.clone(), &opts).await {
        Ok(_) => Ok(()),
        Err(ApiError::AlreadyExists { .. }) => {
            objects::update(state, &target, objects::Mode::Main, |_| Ok(endpoints.clone()), &opts)
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// The `kubernetes` object of core `plural` (`services`, `endpoints`) in `default`.
pub(super) fn api_object(plural: &str) -> Result<objects::Target, ApiError> {
    let res =
        registry::by_plural("", "v1", plural).ok_or_else(|| ApiError::Internal(format!("{plural} not served")))?;
    Ok(objects::Target {
        res,
        namespace: Some("default".into()),
        name: Some("kubernetes".into()),
        sub: None,
    })
}

/// The labels kube-apiserver puts on the `kubernetes` Service and Endpoints.
pub(super) fn labels() -> Value {
    json!({"component": "apiserver", "provider": "kubernetes"})
}
