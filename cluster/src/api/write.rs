//! The one write path. Every API write, single or batch, is admitted (`admission`) and
//! then turned into store operations here: the object itself, the values it holds
//! exclusively (a Service's cluster IP and node ports), and the end of a deletion whose
//! finalizers are done. One [`WriteSet`] is one store transaction, and carries the
//! audit record of every object it writes.
//!
//! Deletion follows Kubernetes: an object with finalizers (or a pod with a grace period,
//! or a namespace with content) first gets a `deletionTimestamp`; it is removed when the
//! last finalizer goes and the grace period is over.
//!
//! Every write that changes what ResourceQuotas count (a create, a removal, a pod that
//! finishes) is a [`quota::Charge`]; at commit the namespace's quotas are settled and
//! their new `status.used` rides in the same transaction, guarded by the quotas'
//! revisions (see [`super::quota`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{json, Value};

use super::admission::object_name;
use super::audit::{self, Provenance};
use super::auth::UserInfo;
use super::cache::ReadAt;
use super::error::{ApiError, Cause};
use super::objects::{being_deleted, encode, with_revision};
use super::quota::{self, Charge};
use super::registry::ResourceInfo;
use super::resources::core::NAMESPACE_FINALIZER;
use super::resources::service::{self, Allocation};
use super::AppState;
use crate::store::{Compare, Expect, Op, Txn, TxnResult};

/// What a compare in a write set protects, to explain a failure.
#[derive(Debug, Clone)]
enum Guard {
    /// The object itself (absent for a create, at a revision otherwise).
    Object { resource: String, name: String },
    /// A value held exclusively; `chosen` when the client asked for this very value.
    Allocation {
        field: String,
        value: String,
        chosen: bool,
        kind: String,
        name: String,
    },
}

/// Store operations being gathered into one transaction, written by one user; every
/// object written adds its audit record to the same transaction.
#[derive(Debug)]
pub struct WriteSet {
    txn: Txn,
    guards: HashMap<String, Guard>,
    user: Arc<UserInfo>,
    /// The request's verb, for the audit records (`patch`, `update/status`...).
    verb: String,
    /// The Application and commit, when the writes come from Git.
    provenance: Option<Provenance>,
    /// The puts (by position in the transaction) of objects that expire with the Event
    /// TTL: they get the current Event lease at commit.
    expiring: Vec<usize>,
    /// The changes of quota usage the writes make, settled at commit.
    charges: Vec<Charge>,
}

/// What happened to an object in a write set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It is stored.
    Stored,
    /// It is removed (a deletion completed).
    Deleted,
}

/// Whether a deletion is complete: the timestamp is set, no finalizer remains and no
/// grace period is left (a namespace also waits for its `spec.finalizers`).
pub fn deletion_complete(obj: &Value) -> bool {
    let meta = obj.get("metadata");
    let deleting = being_deleted(obj);
    let finalizers = meta
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    let grace = meta
        .and_then(|m| m.get("deletionGracePeriodSeconds"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let ns_finalizers = obj
        .pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| f.iter().any(|x| x == NAMESPACE_FINALIZER))
        && obj.get("kind") == Some(&json!("Namespace"));
    deleting && !finalizers && grace == 0 && !ns_finalizers
}

fn random_below(n: u32) -> u32 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) % n.max(1)
}

impl WriteSet {
    /// An empty set of writes by `user` through a request of `verb` (as the audit trail
    /// names it: `create`, `patch`, `update/status`, ...).
    pub fn new(user: &Arc<UserInfo>, verb: &str) -> Self {
        WriteSet {
            txn: Txn::default(),
            guards: HashMap::new(),
            user: user.clone(),
            verb: verb.to_string(),
            provenance: None,
            expiring: Vec::new(),
            charges: Vec::new(),
        }
    }

    /// Remembers what the write of `res` from `old` to `new` changes in quota usage.
    fn charge(&mut self, res: &'static ResourceInfo, old: Option<&Value>, new: Option<&Value>) {
        if let Some(c) = Charge::of(res, old, new) {
            self.charges.push(c);
        }
    }

    /// The keys of the objects the set writes (their quotas' statuses are not also
    /// settled here: the set's own write of a quota wins).
    fn object_keys(&self) -> HashSet<String> {
        self.guards
            .iter()
            .filter(|(_, g)| matches!(g, Guard::Object { .. }))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Checks the set's charges against the quotas without writing (a dry run).
    pub async fn check_quota(&self, state: &AppState) -> Result<(), ApiError> {
        if !self.charges.is_empty() {
            quota::settle(state, &self.charges, &self.object_keys(), ReadAt::Newest).await?;
        }
        Ok(())
    }

    /// Names the verb of the writes added from now on.
    pub fn set_verb(&mut self, verb: &str) {
        verb.clone_into(&mut self.verb);
    }

    /// Marks the writes as coming from an Application's commit (for the audit trail).
    pub fn set_provenance(&mut self, provenance: Provenance) {
        self.provenance = Some(provenance);
    }

    /// Adds a raw store op (a history entry riding with a sync, for instance).
    pub fn push(&mut self, op: Op) {
        self.txn.ops.push(op);
    }

    fn audit(&mut self, res: &ResourceInfo, before: Option<(&Value, u64)>, after: Option<&Value>) {
        if !audit::audited(res) {
            return;
        }
        let op = audit::append(&self.user.name, &self.verb, before, after, self.provenance.as_ref());
        self.txn.ops.push(op);
    }

    fn guard(&mut self, key: String, expect: Expect, guard: Guard) {
        self.txn.compares.push(Compare {
            key: key.clone(),
            expect,
        });
        self.guards.insert(key, guard);
    }

    /// Guards the object itself at `key` (absent, or at a revision).
    fn guard_object(&mut self, res: &ResourceInfo, key: &str, expect: Expect, obj: &Value) {
        let (name, _) = object_name(obj);
        let guard = Guard::Object {
            resource: res.qualified_plural(),
            name,
        };
        self.guard(key.to_string(), expect, guard);
    }

    fn hold(&mut self, res: &ResourceInfo, obj: &Value, held: Vec<Allocation>, chosen: &[Allocation], owner_key: &str) {
        let (name, _) = object_name(obj);
        for a in held {
            let (field, value) = match &a {
                Allocation::ClusterIp(ip) => ("spec.clusterIPs", ip.clone()),
                Allocation::NodePort(p) => ("spec.ports.nodePort", p.to_string()),
            };
            let guard = Guard::Allocation {
                field: field.into(),
                value,
                chosen: chosen.contains(&a),
                kind: res.qualified_kind(),
                name: name.clone(),
            };
            self.guard(a.key(), Expect::Absent, guard);
            self.txn.ops.push(Op::put(a.key(), owner_key.as_bytes()));
        }
    }

    fn release(&mut self, held: Vec<Allocation>) {
        for a in held {
            self.txn.ops.push(Op::Delete { key: a.key() });
        }
    }

    /// Adds the creation of an admitted object (filling in the values it is allotted).
    pub fn create(&mut self, res: &'static ResourceInfo, key: String, obj: &mut Value) -> Result<(), ApiError> {
        // The object's own compare first: an existing object is "already exists", not a
        // clash over the values it holds.
        self.guard_object(res, &key, Expect::Absent, obj);
        if allocates(res) {
            let chosen = service::held(obj);
            let held = service::allocate(obj, random_below);
            self.hold(res, obj, held, &chosen, &key);
        }
        self.leased(res);
        self.txn.ops.push(Op::Put {
            key,
            value: encode(obj)?,
            lease: None,
        });
        self.audit(res, None, Some(obj));
        self.charge(res, None, Some(obj));
        Ok(())
    }

    /// Adds the replacement of `old` (last written at `rev`) by the admitted `new`; a
    /// finished deletion removes the object instead.
    pub fn update(
        &mut self,
        res: &'static ResourceInfo,
        key: String,
        rev: u64,
        old: &Value,
        new: &mut Value,
    ) -> Result<Outcome, ApiError> {
        self.guard_object(res, &key, Expect::ModRevision(rev), new);
        if deletion_complete(new) {
            if allocates(res) {
                self.release(service::held(old));
            }
            self.txn.ops.push(Op::Delete { key });
            self.audit(res, Some((old, rev)), None);
            self.charge(res, Some(old), None);
            return Ok(Outcome::Deleted);
        }
        if allocates(res) {
            let before = service::held(old);
            let chosen = service::held(new);
            let after = service::allocate(new, random_below);
            let added: Vec<Allocation> = after.iter().filter(|a| !before.contains(a)).cloned().collect();
            let gone: Vec<Allocation> = before.into_iter().filter(|a| !after.contains(a)).collect();
            self.hold(res, new, added, &chosen, &key);
            self.release(gone);
        }
        self.leased(res);
        self.txn.ops.push(Op::Put {
            key,
            value: encode(new)?,
            lease: None,
        });
        self.audit(res, Some((old, rev)), Some(new));
        self.charge(res, Some(old), Some(new));
        Ok(Outcome::Stored)
    }

    /// Adds the removal of `old`, last written at `rev`.
    pub fn delete(&mut self, res: &'static ResourceInfo, key: String, rev: u64, old: &Value) {
        self.guard_object(res, &key, Expect::ModRevision(rev), old);
        if allocates(res) {
            self.release(service::held(old));
        }
        self.txn.ops.push(Op::Delete { key });
        self.audit(res, Some((old, rev)), None);
        self.charge(res, Some(old), None);
    }

    /// Marks the put about to be added as one that expires, if `res` is Events.
    fn leased(&mut self, res: &ResourceInfo) {
        if super::event_ttl::expires(res.plural) {
            self.expiring.push(self.txn.ops.len());
        }
    }

    /// Sends one transaction; Event puts get the current Event lease (a fresh one, once,
    /// if that lease just ended).
    async fn send(&self, state: &AppState, mut txn: Txn) -> Result<TxnResult, ApiError> {
        let Some(leases) = state.event_leases.as_ref().filter(|_| !self.expiring.is_empty()) else {
            return Ok(state.store.txn(txn).await?);
        };
        // A lease that just ended cannot take new Events: take a fresh one, once.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let id = leases.lease(&state.store).await?;
            for i in &self.expiring {
                if let Some(Op::Put { lease, .. }) = txn.ops.get_mut(*i) {
                    *lease = Some(id);
                }
            }
            let result = state.store.txn(txn.clone()).await?;
            if result.missing_lease.is_none() || attempt == 2 {
                return Ok(result);
            }
            leases.forget(id).await;
        }
    }

    /// Commits the set as one transaction; a failed compare becomes the API error it
    /// means (already exists, not found, modified, value already allocated). Quota
    /// statuses the writes change are settled and written in the same transaction; when
    /// a concurrent write changed one of those quotas first, the set is settled again
    /// against the newer quota (and may then be refused).
    pub async fn commit(mut self, state: &AppState) -> Result<u64, ApiError> {
        let ops = self.txn.ops.len();
        let own = if self.charges.is_empty() {
            HashSet::new()
        } else {
            self.object_keys()
        };
        // The watch cache first, as admission reads everything else; after a lost race,
        // a linearizable read, so the next try sees the quota that won.
        let mut at = ReadAt::Any;
        let mut result = None;
        for attempt in 1..=quota::SETTLE_ATTEMPTS {
            let quotas = if self.charges.is_empty() {
                Vec::new()
            } else {
                quota::settle(state, &self.charges, &own, at).await?
            };
            if quotas.is_empty() {
                let txn = std::mem::take(&mut self.txn);
                result = Some(self.send(state, txn).await?);
                break;
            }
            let mut txn = self.txn.clone();
            for q in &quotas {
                txn.compares.push(Compare {
                    key: q.key.clone(),
                    expect: Expect::ModRevision(q.revision),
                });
                if let Some(obj) = &q.object {
                    txn.ops.push(Op::put(q.key.clone(), encode(obj)?));
                }
            }
            let sent = self.send(state, txn).await?;
            let lost = sent
                .failed
                .as_ref()
                .is_some_and(|(cmp, _)| quotas.iter().any(|q| q.key == cmp.key));
            if !lost {
                result = Some(sent);
                break;
            }
            tracing::debug!(user = %self.user.name, verb = %self.verb, attempt, "quota changed meanwhile; settling again");
            at = ReadAt::Newest;
        }
        let Some(result) = result else {
            return Err(ApiError::Conflict {
                kind: "resourcequotas".into(),
                name: self.charges.first().map(|c| c.namespace.clone()).unwrap_or_default(),
                message: "the object has been modified by too many concurrent writes; please apply your changes again"
                    .into(),
            });
        };
        if let Some(id) = result.missing_lease {
            return Err(ApiError::Store(crate::store::StoreError::Raft(format!(
                "the lease {id} the Event was to expire with no longer exists; retry"
            ))));
        }
        let Some((cmp, actual)) = result.failed else {
            tracing::debug!(user = %self.user.name, verb = %self.verb, revision = result.revision, ops, "write committed");
            return Ok(result.revision);
        };
        Err(match self.guards.get(&cmp.key) {
            Some(Guard::Object { resource, name }) => match cmp.expect {
                Expect::Absent => ApiError::AlreadyExists {
                    kind: resource.clone(),
                    name: name.clone(),
                },
                _ if actual == 0 => ApiError::NotFound {
                    kind: resource.clone(),
                    name: name.clone(),
                },
                _ => ApiError::modified(resource.clone(), name.clone()),
            },
            Some(Guard::Allocation {
                field,
                value,
                chosen,
                kind,
                name,
            }) => {
                if *chosen {
                    ApiError::Invalid {
                        kind: kind.clone(),
                        name: name.clone(),
                        causes: vec![Cause::invalid(
                            field.clone(),
                            format!(
                                "Invalid value: {value:?}: provided {} is already allocated",
                                if field.contains("IP") { "IP" } else { "port" }
                            ),
                        )],
                    }
                } else {
                    ApiError::AllocationRace
                }
            }
            None => ApiError::Conflict {
                kind: String::new(),
                name: cmp.key.clone(),
                message: "a precondition of the write failed".into(),
            },
        })
    }
}

/// The store key of an admitted object.
fn key_of(res: &ResourceInfo, obj: &Value) -> String {
    let (name, ns) = object_name(obj);
    res.key(ns.as_deref(), &name)
}

/// Writes an admitted new object for `user` through a request of `verb`; returns it as
/// stored.
pub async fn create(
    state: &AppState,
    res: &'static ResourceInfo,
    mut obj: Value,
    user: &Arc<UserInfo>,
    verb: &str,
) -> Result<Value, ApiError> {
    let key = key_of(res, &obj);
    // A randomly drawn cluster IP or node port may be taken: draw again.
    for _ in 0..8 {
        let mut attempt = fresh_attempt(res, &mut obj);
        let mut set = WriteSet::new(user, verb);
        set.create(res, key.clone(), &mut attempt)?;
        match set.commit(state).await {
            Ok(rev) => return Ok(with_revision(attempt, rev)),
            Err(ApiError::AllocationRace) if allocates(res) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::Internal("no free cluster IP or node port found".into()))
}

/// Whether writes of `res` allocate values (a Service's cluster IPs and node ports), and
/// so may lose a race for them and be tried again.
fn allocates(res: &ResourceInfo) -> bool {
    res.kind == "Service"
}

/// The object one attempt at writing `obj` works on. Only an allocating write changes
/// it and may need the original again; any other write takes it without a copy.
fn fresh_attempt(res: &ResourceInfo, obj: &mut Value) -> Value {
    if allocates(res) {
        obj.clone()
    } else {
        std::mem::take(obj)
    }
}

/// Checks an admitted new object against its namespace's quotas without writing it (a
/// dry run is refused as the create would be).
pub async fn check_create(state: &AppState, res: &'static ResourceInfo, obj: &Value) -> Result<(), ApiError> {
    match Charge::of(res, None, Some(obj)) {
        Some(charge) => quota::settle(state, &[charge], &HashSet::new(), ReadAt::Newest)
            .await
            .map(|_| ()),
        None => Ok(()),
    }
}

/// Writes an admitted replacement of `old` (last written at `rev`) for `user` through a
/// request of `verb`.
pub async fn update(
    state: &AppState,
    res: &'static ResourceInfo,
    rev: u64,
    old: &Value,
    mut new: Value,
    user: &Arc<UserInfo>,
    verb: &str,
) -> Result<(Value, Outcome), ApiError> {
    let key = key_of(res, &new);
    for _ in 0..8 {
        let mut attempt = fresh_attempt(res, &mut new);
        let mut set = WriteSet::new(user, verb);
        let outcome = set.update(res, key.clone(), rev, old, &mut attempt)?;
        match set.commit(state).await {
            Ok(rev) => return Ok((with_revision(attempt, rev), outcome)),
            Err(ApiError::AllocationRace) if allocates(res) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::Internal("no free cluster IP or node port found".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletions_complete_when_nothing_holds_them() {
        let deleting = json!({"kind": "ConfigMap", "metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}});
        assert!(deletion_complete(&deleting));
        let mut finalized = deleting.clone();
        finalized["metadata"]["finalizers"] = json!(["example.com/hold"]);
        assert!(!deletion_complete(&finalized));
        let mut graceful = deleting.clone();
        graceful["metadata"]["deletionGracePeriodSeconds"] = json!(30);
        assert!(!deletion_complete(&graceful));
        let ns = json!({"kind": "Namespace", "metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"finalizers": ["kubernetes"]}});
        assert!(!deletion_complete(&ns));
        assert!(!deletion_complete(&json!({"kind": "ConfigMap", "metadata": {}})));
    }
}
