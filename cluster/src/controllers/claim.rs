//! Adoption and release of children by label selector, as Kubernetes'
//! `ControllerRefManager` does it (`ClaimPods`, `ClaimReplicaSets` in
//! `pkg/controller/controller_ref_manager.go`).
//!
//! An owner (a ReplicaSet, a Deployment) looks at the children it controls and at the
//! orphans of its namespace (objects with no controlling owner), both from its watch-fed
//! [`OwnerIndex`](super::OwnerIndex):
//!
//! - a child it controls whose labels still match its selector stays;
//! - a child it controls whose labels no longer match is released: its reference to the
//!   owner is removed, and the owner replaces it;
//! - an orphan whose labels match is adopted: the owner adds itself as controller
//!   (`blockOwnerDeletion: true`), after a fresh read of itself has shown it is not being
//!   deleted (Kubernetes' `RecheckDeletionTimestamp`: the cache may not show a deletion
//!   yet, and the garbage collector orphaning the children must not see them adopted
//!   back by the owner it is deleting);
//! - a child another controller controls is never touched.
//!
//! Every patch carries the cached `resourceVersion` of the child: the store's revision
//! is global, so it pins that very version of that very object, and a cache that lags
//! (labels changed, another controller adopted it first) gets a conflict, not a wrong
//! adoption or release.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::api::{Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::Error;

/// What an owner does with one candidate child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Controlled by the owner and still selected: it counts.
    Keep,
    /// An orphan the owner selects: make the owner its controller, then it counts.
    Adopt,
    /// Controlled by the owner but no longer selected: remove the owner's reference.
    Release,
    /// Not the owner's business (another controller's, not selected, being deleted).
    Ignore,
}

/// Kubernetes' `ClaimObject` decision for `child`, given whether the owner's selector
/// matches its labels and whether it has finished (a Succeeded or Failed pod: not
/// adopted, as Kubernetes only claims active pods).
pub(crate) fn decide(owner: &ObjectMeta, child: &ObjectMeta, matches: bool, finished: bool) -> Claim {
    let owner_deleting = owner.deletion_timestamp.is_some();
    let child_deleting = child.deletion_timestamp.is_some();
    match super::controller_uid(child) {
        Some(uid) if Some(uid) != owner.uid.as_deref() => Claim::Ignore,
        Some(_) if matches => Claim::Keep,
        // A deleting owner makes no changes; a deleting child is going anyway.
        Some(_) if owner_deleting || child_deleting => Claim::Ignore,
        Some(_) => Claim::Release,
        None if owner_deleting || !matches || child_deleting || finished => Claim::Ignore,
        None if owner.namespace.is_some() && owner.namespace != child.namespace => Claim::Ignore,
        None => Claim::Adopt,
    }
}

/// The owner's compiled selector; `None` for an empty one, which selects nothing here
/// (the API rejects empty workload selectors; should one get through, adopting every
/// orphan of the namespace would be the wrong way to find out).
pub(crate) fn compile(selector: &LabelSelector) -> Result<Option<Selector>, Error> {
    let compiled =
        Selector::try_from(selector.clone()).map_err(|e| Error::Malformed(format!("invalid selector: {e}")))?;
    Ok((!compiled.selects_all()).then_some(compiled))
}

/// The merge patch making `controller` the controlling owner of `child` (any other
/// reference to the same owner is replaced), pinned to the cached version of `child`.
pub(crate) fn adopt_patch(child: &ObjectMeta, controller: &OwnerReference) -> Value {
    let mut refs: Vec<OwnerReference> = child.owner_references.clone().unwrap_or_default();
    refs.retain(|r| r.uid != controller.uid);
    refs.push(controller.clone());
    json!({"metadata": {
        // kube-apiserver refuses a uid change; the resourceVersion is what pins the
        // object here.
        "uid": child.uid,
        "resourceVersion": child.resource_version,
        "ownerReferences": refs,
    }})
}

/// The merge patch removing every reference to the owner with uid `owner` from `child`,
/// pinned to the cached version of `child`.
pub(crate) fn release_patch(child: &ObjectMeta, owner: &str) -> Value {
    let refs: Vec<&OwnerReference> = child
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.uid != owner)
        .collect();
    json!({"metadata": {
        "uid": child.uid,
        "resourceVersion": child.resource_version,
        "ownerReferences": if refs.is_empty() { Value::Null } else { json!(refs) },
    }})
}

/// The owners of kind `O` a watch event on `child` concerns: those it references, and,
/// when it is an orphan that may be adopted (`adoptable`: live, not finished), the live
/// ones of `all` (the controller's store, read only then) in its namespace whose selector
/// (`selector_of`) matches its labels — Kubernetes' `getPodReplicaSets` /
/// `getDeploymentsForReplicaSet`. A read of the in-memory store, not of the API.
pub(crate) fn owners_to_wake<O, K>(
    all: impl FnOnce() -> Vec<Arc<O>>,
    child: &K,
    adoptable: bool,
    selector_of: impl Fn(&O) -> Option<&LabelSelector>,
) -> Vec<ObjectRef<O>>
where
    O: Resource<DynamicType = ()>,
    K: Resource,
{
    let ns = child.meta().namespace.as_deref();
    let (kind, group) = (O::kind(&()), O::group(&()));
    let mut refs: Vec<ObjectRef<O>> = child
        .owner_references()
        .iter()
        .filter(|r| r.kind == kind && r.api_version.rsplit_once('/').map_or("", |(g, _)| g) == group)
        .map(|r| {
            let owner = ObjectRef::new(&r.name);
            match ns {
                Some(ns) => owner.within(ns),
                None => owner,
            }
        })
        .collect();
    if adoptable && super::controller_uid(child.meta()).is_none() && child.meta().deletion_timestamp.is_none() {
        refs.extend(
            all()
                .iter()
                .filter(|o| o.meta().deletion_timestamp.is_none() && o.meta().namespace.as_deref() == ns)
                .filter(|o| {
                    let selector = selector_of(o).map(compile);
                    matches!(selector, Some(Ok(Some(s))) if s.matches(child.labels()))
                })
                .map(|o| ObjectRef::from_obj(o.as_ref())),
        );
    }
    refs
}

/// `namespace/name` of an object, for logs.
fn object<K: Resource>(obj: &K) -> String {
    format!("{}/{}", obj.meta().namespace.as_deref().unwrap_or(""), obj.name_any())
}

/// Claims children for `owner` (Kubernetes' `ClaimPods` / `ClaimReplicaSets`): of the
/// `candidates` (the children it controls and the orphans of its namespace, from the
/// cache), adopts and releases as [`decide`] says, and returns those it now controls
/// (the adopted ones as the API returned them). Every candidate is tried; the first
/// error is returned after.
pub(crate) async fn claim<O, K>(
    owner: &O,
    owners: &Api<O>,
    children: &Api<K>,
    selector: &LabelSelector,
    candidates: impl IntoIterator<Item = Arc<K>>,
    finished: impl Fn(&K) -> bool,
) -> Result<Vec<Arc<K>>, Error>
where
    O: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let selector = compile(selector)?;
    let meta = owner.meta();
    let owner_uid = meta.uid.clone().unwrap_or_default();
    let mut claimed = Vec::new();
    let mut first_error = None;
    let mut rechecked = false;
    for child in candidates {
        let matches = match &selector {
            Some(s) => s.matches(child.labels()),
            // Without a selector nothing is adopted or released: what is controlled stays.
            None => super::controller_uid(child.meta()) == Some(owner_uid.as_str()),
        };
        let result = match decide(meta, child.meta(), matches, finished(&child)) {
            Claim::Ignore => Ok(()),
            Claim::Keep => {
                claimed.push(child);
                Ok(())
            }
            Claim::Adopt => {
                let checked = if rechecked {
                    Ok(())
                } else {
                    recheck_deletion(owner, owners).await
                };
                match checked {
                    Ok(()) => {
                        rechecked = true;
                        adopt(owner, children, &child).await.map(|adopted| {
                            claimed.extend(adopted.map(Arc::new));
                        })
                    }
                    // No adoption can follow once the owner is known to be going.
                    Err(e) => return Err(e),
                }
            }
            Claim::Release => release(owner, children, &child, &owner_uid).await,
        };
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(claimed),
    }
}

/// A fresh (linearizable) read of the owner, before its first adoption: the cache may
/// not show yet that it was deleted or replaced.
async fn recheck_deletion<O>(owner: &O, owners: &Api<O>) -> Result<(), Error>
where
    O: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let name = owner.name_any();
    let Some(fresh) = owners.get_opt(&name).await? else {
        return Err(Error::Stale(format!("{} is gone; not adopting", object(owner))));
    };
    if fresh.meta().uid != owner.meta().uid {
        return Err(Error::Stale(format!(
            "{} was replaced (uid {:?}, wanted {:?}); not adopting",
            object(owner),
            fresh.meta().uid,
            owner.meta().uid
        )));
    }
    if fresh.meta().deletion_timestamp.is_some() {
        return Err(Error::Stale(format!(
            "{} has just been deleted; not adopting",
            object(owner)
        )));
    }
    Ok(())
}

/// Adopts `child`; `None` when it is gone.
async fn adopt<O, K>(owner: &O, children: &Api<K>, child: &K) -> Result<Option<K>, Error>
where
    O: Resource<DynamicType = ()>,
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let controller = super::deployment::owner_ref(owner)?;
    let patch = adopt_patch(child.meta(), &controller);
    tracing::info!(object = %object(child), owner = %object(owner), "adopting orphan");
    merge_patch(children, child, patch).await
}

/// Releases `child` from the owner with uid `owner_uid`; a child already gone is no error.
async fn release<O, K>(owner: &O, children: &Api<K>, child: &K, owner_uid: &str) -> Result<(), Error>
where
    O: Resource,
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = release_patch(child.meta(), owner_uid);
    tracing::info!(object = %object(child), owner = %object(owner), "releasing child the selector no longer matches");
    merge_patch(children, child, patch).await.map(|_| ())
}

/// Merge-patches `child`; `None` when it is gone.
async fn merge_patch<K>(children: &Api<K>, child: &K, patch: Value) -> Result<Option<K>, Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match children
        .patch(&child.name_any(), &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(patched) => Ok(Some(patched)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(uid: &str, controller: bool) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: format!("rs-{uid}"),
            uid: uid.into(),
            controller: controller.then_some(true),
            block_owner_deletion: None,
        }
    }

    fn child(owners: Vec<OwnerReference>) -> ObjectMeta {
        ObjectMeta {
            name: Some("p".into()),
            namespace: Some("default".into()),
            uid: Some("p-uid".into()),
            resource_version: Some("7".into()),
            owner_references: (!owners.is_empty()).then_some(owners),
            ..Default::default()
        }
    }

    #[test]
    fn adopting_keeps_other_owners_and_pins_the_cached_version() {
        let mut controller = reference("rs1", true);
        controller.block_owner_deletion = Some(true);
        // A plain (non-controller) reference to the same owner becomes the controller one.
        let meta = child(vec![reference("cm", false), reference("rs1", false)]);
        let patch = adopt_patch(&meta, &controller);
        assert_eq!(patch["metadata"]["uid"], "p-uid");
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
        let refs: Vec<OwnerReference> = serde_json::from_value(patch["metadata"]["ownerReferences"].clone()).unwrap();
        assert_eq!(refs, vec![reference("cm", false), controller]);
    }

    #[test]
    fn releasing_removes_only_the_owners_references() {
        let meta = child(vec![reference("cm", false), reference("rs1", true)]);
        let patch = release_patch(&meta, "rs1");
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
        let refs: Vec<OwnerReference> = serde_json::from_value(patch["metadata"]["ownerReferences"].clone()).unwrap();
        assert_eq!(refs, vec![reference("cm", false)]);
        // The last reference gone: the list goes too.
        let patch = release_patch(&child(vec![reference("rs1", true)]), "rs1");
        assert_eq!(patch["metadata"]["ownerReferences"], Value::Null);
    }

    #[test]
    fn an_empty_selector_selects_nothing_and_a_bad_one_is_an_error() {
        assert!(compile(&LabelSelector::default()).unwrap().is_none());
        let s: LabelSelector = serde_json::from_value(json!({"matchLabels": {"app": "x"}})).unwrap();
        assert!(compile(&s).unwrap().is_some());
        let bad: LabelSelector =
            serde_json::from_value(json!({"matchExpressions": [{"key": "app", "operator": "Near", "values": ["x"]}]}))
                .unwrap();
        assert!(matches!(compile(&bad), Err(Error::Malformed(_))));
    }
}
