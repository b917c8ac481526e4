//! ResourceQuota admission, as Kubernetes' `ResourceQuota` plugin and its quota
//! evaluators do it: what an object uses in quota terms ([`usage`]: compute resources and
//! `pods` for a live pod, object counts for everything, `count/<resource>.<group>` and the
//! legacy names), which quotas select it (scopes), the constraints a pod must meet where
//! cpu or memory is quota'd, and the `exceeded quota` check with Kubernetes' messages.
//!
//! Race-free by construction: the write path ([`super::write`]) turns every write's change
//! of usage into a [`Charge`]; at commit, [`settle`] reads the namespace's quotas, checks
//! and adds the charges to their `status.used`, and the new quota statuses ride in the
//! SAME store transaction as the write, each with a compare on the quota's revision. Two
//! concurrent creates cannot both pass on the same `used`: the second one's compare
//! fails, and it is settled again against the quota the first one wrote. Deletions (and
//! pods reaching Succeeded or Failed) give their usage back the same way, so `used` is
//! exact at every revision; the quota controller (`controllers::resourcequota`) fills in
//! `status.hard` and a first `used`, and repairs drift. A write that a quota could refuse
//! also compares that quota's revision when it leaves the quota unchanged: admission reads
//! quotas from the watch cache, and a cached quota may be older than the one in the store.
//!
//! As in Kubernetes, a quota constrains only what its `status.hard` lists: until the
//! controller has seen a new quota, it admits everything.
//!
//! Where this differs from Kubernetes: a pod being deleted counts until it is removed
//! (Kubernetes stops counting one stuck past its grace period, a decision of the clock
//! that no write would settle); and the quota statuses written with a write carry no
//! audit record of their own (the write they ride with has one).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde_json::Value;

use super::amount::{self, Amount, ResourceList};
use super::cache::{Filter, ReadAt};
use super::error::ApiError;
use super::registry::{self, ResourceInfo};
use super::AppState;

/// Resources a pod's containers must all state when a quota covers them (Kubernetes'
/// backward-compatible `validationSet`).
pub const VALIDATION_RESOURCES: [&str; 6] = [
    "cpu",
    "limits.cpu",
    "limits.memory",
    "memory",
    "requests.cpu",
    "requests.memory",
];

/// The pod resources quota tracks by name (Kubernetes' `podResources`).
const POD_RESOURCES: [&str; 11] = [
    "count/pods",
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "pods",
];

/// The fields of a pod's spec its usage ([`pod_total`]) and scope facts ([`PodFacts`])
/// are read from.
const POD_MEASURED: [&str; 6] = [
    "containers",
    "initContainers",
    "overhead",
    "activeDeadlineSeconds",
    "priorityClassName",
    "affinity",
];

/// Core kinds that also count under their plain plural (`configmaps: 10`).
const LEGACY_COUNTS: [&str; 4] = ["configmaps", "secrets", "replicationcontrollers", "resourcequotas"];

/// Scopes a quota may name (`spec.scopes`, `spec.scopeSelector`).
pub const SCOPES: [&str; 6] = [
    "Terminating",
    "NotTerminating",
    "BestEffort",
    "NotBestEffort",
    "PriorityClass",
    "CrossNamespacePodAffinity",
];

/// How many times a write is settled against quotas that concurrent writes keep
/// changing before it gives up with a conflict.
pub const SETTLE_ATTEMPTS: usize = 100;

/// The `count/...` name objects of `res` are counted under (`count/deployments.apps`).
pub fn count_name(res: &ResourceInfo) -> String {
    if res.group.is_empty() {
        format!("count/{}", res.plural)
    } else {
        format!("count/{}.{}", res.plural, res.group)
    }
}

/// Whether `name` is an extended resource (`example.com/gpu`): domain-qualified, and not
/// in the `kubernetes.io` domain.
fn is_extended(name: &str) -> bool {
    match name.split_once('/') {
        Some((domain, _)) => {
            !name.starts_with("requests.") && domain != "kubernetes.io" && !domain.ends_with(".kubernetes.io")
        }
        None => false,
    }
}

/// Whether `name` is a hard limit the quota evaluator of `res` keeps (Kubernetes'
/// `MatchingResources`).
pub fn covers(res: &ResourceInfo, name: &str) -> bool {
    if name == count_name(res) {
        return true;
    }
    if !res.group.is_empty() {
        return false;
    }
    match res.plural {
        "pods" => {
            POD_RESOURCES.contains(&name)
                || name.starts_with("hugepages-")
                || name.starts_with("requests.hugepages-")
                || name.strip_prefix("requests.").is_some_and(is_extended)
        }
        "services" => matches!(name, "services" | "services.loadbalancers" | "services.nodeports"),
        "persistentvolumeclaims" => {
            matches!(name, "persistentvolumeclaims" | "requests.storage")
                || name.ends_with(".storageclass.storage.k8s.io/requests.storage")
                || name.ends_with(".storageclass.storage.k8s.io/persistentvolumeclaims")
        }
        plural => LEGACY_COUNTS.contains(&plural) && name == plural,
    }
}

/// The served resource whose objects a hard limit named `name` counts, if any (what the
/// quota controller must watch to compute it).
pub fn resource_for(name: &str) -> Option<&'static ResourceInfo> {
    if let Some(counted) = name.strip_prefix("count/") {
        let (plural, group) = counted.split_once('.').unwrap_or((counted, ""));
        return registry::RESOURCES
            .iter()
            .find(|r| r.namespaced && r.plural == plural && r.group == group);
    }
    ["pods", "services", "persistentvolumeclaims"]
        .into_iter()
        .chain(LEGACY_COUNTS)
        .filter_map(|plural| registry::by_plural("", "v1", plural))
        .find(|r| covers(r, name))
}

/// The requests and limits of one container (`resources` at `c`): requests default to
/// the limits, as Kubernetes' pod defaulting makes them before admission.
pub fn container_resources(c: &Value) -> (ResourceList, ResourceList) {
    let limits = amount::from_json(c.pointer("/resources/limits"));
    let mut requests = amount::from_json(c.pointer("/resources/requests"));
    for (k, v) in &limits {
        requests.entry(k.clone()).or_insert(*v);
    }
    (requests, limits)
}

/// `list[k] = max(list[k], other[k])` for every key of `other`.
fn max_into(list: &mut ResourceList, other: &ResourceList) {
    for (k, v) in other {
        match list.get(k) {
            Some(x) if x >= v => {}
            _ => {
                list.insert(k.clone(), *v);
            }
        }
    }
}

/// What a pod requests (`limits == false`) or is limited to: the sum of its containers and
/// restartable (sidecar) init containers, or the largest init container plus the sidecars
/// before it if more, plus the overhead if asked (Kubernetes' `PodRequests`/`PodLimits`).
pub fn pod_total(pod: &Value, limits: bool, overhead: bool) -> ResourceList {
    let pick = |c: &Value| {
        let (r, l) = container_resources(c);
        if limits {
            l
        } else {
            r
        }
    };
    let list = |p: &str| pod.pointer(p).and_then(Value::as_array).into_iter().flatten();
    let mut total = ResourceList::new();
    for c in list("/spec/containers") {
        total = amount::add(&total, &pick(c));
    }
    let mut sidecars = ResourceList::new();
    let mut init = ResourceList::new();
    for c in list("/spec/initContainers") {
        let own = pick(c);
        let during = if c.get("restartPolicy").and_then(Value::as_str) == Some("Always") {
            total = amount::add(&total, &own);
            sidecars = amount::add(&sidecars, &own);
            sidecars.clone()
        } else {
            amount::add(&own, &sidecars)
        };
        max_into(&mut init, &during);
    }
    max_into(&mut total, &init);
    if overhead {
        let extra = amount::from_json(pod.pointer("/spec/overhead"));
        if limits {
            // Overhead adds to a limit only where there is one.
            for (k, v) in extra {
                if let Some(x) = total.get_mut(&k) {
                    *x = x.plus(v);
                }
            }
        } else {
            total = amount::add(&total, &extra);
        }
    }
    total
}

/// Requests and limits in quota names (`podComputeUsageHelper`): `pods: 1`, `cpu` and
/// `requests.cpu` from the cpu request, `limits.cpu` from its limit, and so on.
fn compute_usage(requests: &ResourceList, limits: &ResourceList) -> ResourceList {
    let mut out = ResourceList::new();
    out.insert("pods".into(), Amount::count(1));
    for r in ["cpu", "memory", "ephemeral-storage"] {
        if let Some(q) = requests.get(r) {
            out.insert(r.into(), *q);
            out.insert(format!("requests.{r}"), *q);
        }
        if let Some(q) = limits.get(r) {
            out.insert(format!("limits.{r}"), *q);
        }
    }
    for (r, q) in requests {
        if r.starts_with("hugepages-") {
            out.insert(r.clone(), *q);
            out.insert(format!("requests.{r}"), *q);
        } else if is_extended(r) {
            out.insert(format!("requests.{r}"), *q);
        }
    }
    out
}

/// Whether a pod has finished (Succeeded or Failed): it no longer uses compute quota.
pub fn is_terminal(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

/// What an object of `res` uses in quota terms (Kubernetes' evaluators' `Usage`).
pub fn usage(res: &ResourceInfo, obj: &Value) -> ResourceList {
    let mut out = ResourceList::new();
    out.insert(count_name(res), Amount::count(1));
    if !res.group.is_empty() {
        return out;
    }
    match res.plural {
        // `count/pods` counts every pod; compute resources (and `pods`) only live ones.
        "pods" if !is_terminal(obj) => {
            let compute = compute_usage(&pod_total(obj, false, true), &pod_total(obj, true, true));
            out = amount::add(&out, &compute);
        }
        "services" => {
            out.insert("services".into(), Amount::count(1));
            let ports = obj.pointer("/spec/ports").and_then(Value::as_array).map_or(0, Vec::len);
            match obj.pointer("/spec/type").and_then(Value::as_str) {
                Some("NodePort") => {
                    out.insert("services.nodeports".into(), Amount::count(ports as i64));
                }
                Some("LoadBalancer") => {
                    out.insert("services.nodeports".into(), Amount::count(ports as i64));
                    out.insert("services.loadbalancers".into(), Amount::count(1));
                }
                _ => {}
            }
        }
        "persistentvolumeclaims" => {
            out.insert("persistentvolumeclaims".into(), Amount::count(1));
            let storage = Amount::at(obj.pointer("/spec/resources/requests"), "storage");
            let class = obj
                .pointer("/spec/storageClassName")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty());
            if let Some(q) = storage {
                out.insert("requests.storage".into(), q);
            }
            if let Some(class) = class {
                let prefix = format!("{class}.storageclass.storage.k8s.io/");
                out.insert(format!("{prefix}persistentvolumeclaims"), Amount::count(1));
                if let Some(q) = storage {
                    out.insert(format!("{prefix}requests.storage"), q);
                }
            }
        }
        plural if LEGACY_COUNTS.contains(&plural) => {
            out.insert(plural.into(), Amount::count(1));
        }
        _ => {}
    }
    out.retain(|_, v| !v.is_zero());
    out
}

/// What quota scopes select a pod by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFacts {
    /// `activeDeadlineSeconds` is set (the `Terminating` scope).
    pub terminating: bool,
    /// No container requests or limits cpu or memory (QoS class BestEffort).
    pub best_effort: bool,
    /// `spec.priorityClassName`, "" if none.
    pub priority_class: String,
    /// An affinity term reaches into other namespaces.
    pub cross_namespace_affinity: bool,
}

impl PodFacts {
    /// The facts of `pod`.
    pub fn of(pod: &Value) -> PodFacts {
        let containers = ["/spec/containers", "/spec/initContainers"]
            .into_iter()
            .filter_map(|p| pod.pointer(p).and_then(Value::as_array))
            .flatten();
        let best_effort = !containers.into_iter().any(|c| {
            let (r, l) = container_resources(c);
            ["cpu", "memory"]
                .iter()
                .any(|k| r.get(*k).is_some_and(|q| !q.is_zero()) || l.get(*k).is_some_and(|q| !q.is_zero()))
        });
        let mut terms = Vec::new();
        for kind in ["podAffinity", "podAntiAffinity"] {
            let Some(a) = pod.pointer(&format!("/spec/affinity/{kind}")) else {
                continue;
            };
            let list = |k: &str| a.get(k).and_then(Value::as_array).into_iter().flatten();
            terms.extend(list("requiredDuringSchedulingIgnoredDuringExecution"));
            terms.extend(
                list("preferredDuringSchedulingIgnoredDuringExecution").filter_map(|w| w.get("podAffinityTerm")),
            );
        }
        let cross_namespace_affinity = terms.iter().any(|t| {
            t.get("namespaces")
                .and_then(Value::as_array)
                .is_some_and(|n| !n.is_empty())
                || t.get("namespaceSelector").is_some_and(|s| !s.is_null())
        });
        PodFacts {
            terminating: pod
                .pointer("/spec/activeDeadlineSeconds")
                .and_then(Value::as_i64)
                .is_some_and(|d| d >= 0),
            best_effort,
            priority_class: pod
                .pointer("/spec/priorityClassName")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            cross_namespace_affinity,
        }
    }
}

/// What quota sees of one object: its usage and, for a pod, its scope facts.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    /// Its usage ([`usage`]).
    pub usage: ResourceList,
    /// For a pod, what scopes select it by; `None` for other kinds (which no scoped
    /// quota selects).
    pub pod: Option<PodFacts>,
}

impl Subject {
    /// The subject of `obj`, an object of `res`.
    pub fn of(res: &ResourceInfo, obj: &Value) -> Subject {
        let is_pod = res.group.is_empty() && res.plural == "pods";
        Subject {
            usage: usage(res, obj),
            pod: is_pod.then(|| PodFacts::of(obj)),
        }
    }
}

/// One scope requirement of a quota (`spec.scopes` entries are `Exists` requirements).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeRequirement {
    /// The scope, e.g. `BestEffort`.
    pub scope: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// Values, for `In` and `NotIn`.
    pub values: Vec<String>,
}

/// The scope requirements of a quota's spec.
pub fn scope_requirements(spec: Option<&Value>) -> Vec<ScopeRequirement> {
    let Some(spec) = spec else { return Vec::new() };
    let mut out: Vec<ScopeRequirement> = spec
        .get("scopes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|s| ScopeRequirement {
            scope: s.to_string(),
            operator: "Exists".into(),
            values: Vec::new(),
        })
        .collect();
    for e in spec
        .pointer("/scopeSelector/matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push(ScopeRequirement {
            scope: e.get("scopeName").and_then(Value::as_str).unwrap_or_default().into(),
            operator: e.get("operator").and_then(Value::as_str).unwrap_or_default().into(),
            values: e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
        });
    }
    out
}

/// Whether a subject passes every scope requirement (none: everything does; some: only
/// pods can).
pub fn in_scope(requirements: &[ScopeRequirement], subject: &Subject) -> bool {
    if requirements.is_empty() {
        return true;
    }
    let Some(pod) = &subject.pod else { return false };
    requirements.iter().all(|r| match r.scope.as_str() {
        "Terminating" => pod.terminating,
        "NotTerminating" => !pod.terminating,
        "BestEffort" => pod.best_effort,
        "NotBestEffort" => !pod.best_effort,
        "CrossNamespacePodAffinity" => pod.cross_namespace_affinity,
        // A label selector over {PriorityClass: <name>}, as Kubernetes evaluates it.
        "PriorityClass" => match r.operator.as_str() {
            "Exists" => !pod.priority_class.is_empty(),
            "In" => r.values.contains(&pod.priority_class),
            "NotIn" => !r.values.contains(&pod.priority_class),
            _ => false,
        },
        _ => false,
    })
}

/// For a pod, each of [`VALIDATION_RESOURCES`] with the containers (and init containers)
/// that do not state it: what `must specify` names when a quota covers the resource.
pub fn unstated(pod: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let containers = ["/spec/containers", "/spec/initContainers"]
        .into_iter()
        .filter_map(|p| pod.pointer(p).and_then(Value::as_array))
        .flatten();
    for c in containers {
        let (requests, limits) = container_resources(c);
        let stated = compute_usage(&requests, &limits);
        let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
        for r in VALIDATION_RESOURCES {
            if !stated.contains_key(r) {
                out.entry(r.to_string()).or_default().insert(name.to_string());
            }
        }
    }
    out
}

/// One write's change of usage in its namespace, settled against the quotas at commit.
#[derive(Debug, Clone)]
pub struct Charge {
    /// The namespace of the object.
    pub namespace: String,
    /// The object's resource as messages name it (`pods`, `deployments.apps`).
    pub resource: String,
    /// The object's name.
    pub name: String,
    /// The object before the write (`None` for a create).
    pub before: Option<Subject>,
    /// The object after the write (`None` for a deletion).
    pub after: Option<Subject>,
    /// For a new pod: the resources some container does not state ([`unstated`]).
    pub unstated: BTreeMap<String, BTreeSet<String>>,
    /// The resource, to know which hard limits it is measured against.
    res: &'static ResourceInfo,
}

impl Charge {
    /// The charge of a write of `res` from `old` to `new` (`None` for a create or a
    /// deletion); `None` when quota cannot see a difference.
    pub fn of(res: &'static ResourceInfo, old: Option<&Value>, new: Option<&Value>) -> Option<Charge> {
        if !res.namespaced {
            return None;
        }
        let is_pod = res.group.is_empty() && res.plural == "pods";
        // Only these kinds' usage depends on their content; an update of any other
        // counts the same object it counted before.
        let measured = res.group.is_empty() && matches!(res.plural, "pods" | "services" | "persistentvolumeclaims");
        // What the measured kinds use is read from their spec, and a pod's also from
        // whether it has finished: an update that changes neither (a pod's status)
        // charges nothing, and is known to without measuring both sides.
        if let (Some(o), Some(n)) = (old, new) {
            let same_use = if is_pod {
                // Only these parts of a pod's spec: a binding (`nodeName`) is no change.
                let (a, b) = (o.get("spec"), n.get("spec"));
                POD_MEASURED
                    .iter()
                    .all(|f| a.and_then(|s| s.get(*f)) == b.and_then(|s| s.get(*f)))
                    && is_terminal(o) == is_terminal(n)
            } else {
                o.get("spec") == n.get("spec")
            };
            if !measured || same_use {
                return None;
            }
        }
        let before = old.map(|o| Subject::of(res, o));
        let after = new.map(|n| Subject::of(res, n));
        if before == after {
            return None;
        }
        let obj = new.or(old)?;
        let (name, namespace) = super::admission::object_name(obj);
        let unstated = match (is_pod, old, new) {
            (true, None, Some(pod)) => unstated(pod),
            _ => BTreeMap::new(),
        };
        Some(Charge {
            namespace: namespace.unwrap_or_default(),
            resource: res.qualified_plural(),
            name,
            before,
            after,
            unstated,
            res,
        })
    }

    fn forbidden(&self, message: String) -> ApiError {
        ApiError::Forbidden(format!("{} \"{}\" is forbidden: {message}", self.resource, self.name))
    }
}

/// A quota as settlement reads and changes it.
#[derive(Debug, Clone)]
pub struct LiveQuota {
    /// Its store key.
    pub key: String,
    /// The revision it was read at (the transaction compares it).
    pub revision: u64,
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The object; `status.used` changes as charges are added.
    pub object: Value,
    /// Whether a charge changed it.
    pub changed: bool,
}

impl LiveQuota {
    /// A quota read from the cache or the store at `revision`.
    pub fn new(key: String, revision: u64, object: Value) -> LiveQuota {
        let (name, namespace) = super::admission::object_name(&object);
        LiveQuota {
            key,
            revision,
            name,
            namespace: namespace.unwrap_or_default(),
            object,
            changed: false,
        }
    }

    fn hard(&self) -> ResourceList {
        amount::from_json(self.object.pointer("/status/hard"))
    }

    fn used(&self) -> ResourceList {
        amount::from_json(self.object.pointer("/status/used"))
    }
}

/// Adds `charges`, in order, to the `quotas` of their namespaces (sorted by name), as
/// the quota admission checks a create: a new pod must state what a quota covers
/// (`failed quota`), a quota must know its usage (`status unknown`), and no increase may
/// take `used` past `hard` (`exceeded quota`). Decreases lower `used` (never below 0).
pub fn apply_charges(quotas: &mut [LiveQuota], charges: &[Charge]) -> Result<(), ApiError> {
    for charge in charges {
        // Every quota's constraints and knowledge first, then the usage, as Kubernetes
        // checks them.
        let mut matched = Vec::new();
        for (i, q) in quotas.iter().enumerate() {
            if q.namespace != charge.namespace {
                continue;
            }
            let hard = q.hard();
            let covered: Vec<&String> = hard.keys().filter(|n| covers(charge.res, n)).collect();
            if covered.is_empty() {
                continue;
            }
            let scopes = scope_requirements(q.object.get("spec"));
            let selects = |s: &Option<Subject>| s.as_ref().is_some_and(|s| in_scope(&scopes, s));
            let (was, is) = (selects(&charge.before), selects(&charge.after));
            if !was && !is {
                continue;
            }
            if is && charge.before.is_none() {
                let missing: Vec<String> = charge
                    .unstated
                    .iter()
                    .filter(|(r, _)| covered.contains(r))
                    .map(|(r, cs)| format!("{r} for: {}", cs.iter().cloned().collect::<Vec<_>>().join(",")))
                    .collect();
                if !missing.is_empty() {
                    return Err(charge.forbidden(format!(
                        "failed quota: {}: must specify {}",
                        q.name,
                        missing.join("; ")
                    )));
                }
                let used = q.used();
                if covered.iter().any(|n| !used.contains_key(*n)) {
                    let mut names: Vec<&str> = covered.iter().map(|n| n.as_str()).collect();
                    names.sort_unstable();
                    return Err(charge.forbidden(format!(
                        "status unknown for quota: {}, resources: {}",
                        q.name,
                        names.join(",")
                    )));
                }
            }
            matched.push((i, hard, was, is));
        }
        for (i, hard, was, is) in matched {
            let q = &mut quotas[i];
            let pick = |s: &Option<Subject>, on: bool| match (s, on) {
                (Some(s), true) => amount::mask(&s.usage, hard.keys()),
                _ => ResourceList::new(),
            };
            let mut delta = amount::subtract(&pick(&charge.after, is), &pick(&charge.before, was));
            delta.retain(|_, v| !v.is_zero());
            if delta.is_empty() {
                continue;
            }
            let used = q.used();
            let requested: ResourceList = delta
                .iter()
                .filter(|(_, v)| v.millis > 0)
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            if let Some(unknown) = requested.keys().find(|k| !used.contains_key(*k)) {
                return Err(charge.forbidden(format!("status unknown for quota: {}, resources: {unknown}", q.name)));
            }
            let exceeded: Vec<&String> = requested
                .iter()
                .filter(|(k, v)| {
                    let now = used.get(*k).copied().unwrap_or(Amount::ZERO);
                    hard.get(*k).is_some_and(|h| now.plus(**v) > *h)
                })
                .map(|(k, _)| k)
                .collect();
            if !exceeded.is_empty() {
                return Err(charge.forbidden(format!(
                    "exceeded quota: {}, requested: {}, used: {}, limited: {}",
                    q.name,
                    amount::pretty(&amount::mask(&requested, exceeded.iter().copied())),
                    amount::pretty(&amount::mask(&used, exceeded.iter().copied())),
                    amount::pretty(&amount::mask(&hard, exceeded.iter().copied())),
                )));
            }
            let mut new_used = used.clone();
            for (k, d) in &delta {
                // A decrease of a usage not known yet is the controller's to count.
                if let Some(now) = used.get(k) {
                    let mut next = now.plus(*d);
                    if next.millis < 0 {
                        next = Amount::ZERO;
                    }
                    new_used.insert(k.clone(), next);
                }
            }
            if new_used != used {
                set_used(&mut q.object, &new_used);
                q.changed = true;
            }
        }
    }
    Ok(())
}

/// Writes `used` into the quota's `status.used`.
fn set_used(quota: &mut Value, used: &ResourceList) {
    if !quota.get("status").is_some_and(Value::is_object) {
        quota["status"] = serde_json::json!({});
    }
    quota["status"]["used"] = amount::to_json(used);
}

/// A quota a write depends on: the write commits only if the quota is still at
/// `revision`, and puts `object` (its new `status.used`) if it changed it.
#[derive(Debug, Clone)]
pub struct QuotaWrite {
    /// The quota's store key.
    pub key: String,
    /// The revision the write was settled against.
    pub revision: u64,
    /// The quota with its new `status.used`, if the write changes it.
    pub object: Option<Value>,
}

/// Whether any charge is of a kind some limit of the quota (in its spec or its status)
/// counts: the write then depends on the quota, even if it changes nothing in it (a
/// cached quota may be older than the one that would refuse the write).
fn concerns(q: &LiveQuota, charges: &[Charge]) -> bool {
    let names = |p: &str| {
        q.object
            .pointer(p)
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let names: Vec<String> = names("/spec/hard").into_iter().chain(names("/status/hard")).collect();
    charges
        .iter()
        .filter(|c| c.namespace == q.namespace)
        .any(|c| names.iter().any(|n| covers(c.res, n)))
}

/// The quotas of `namespace`, sorted by name, from the watch cache as of `at`.
async fn quotas_of(state: &AppState, namespace: &str, at: ReadAt) -> Result<Vec<LiveQuota>, ApiError> {
    let res = registry::by_plural("", "v1", "resourcequotas")
        .ok_or_else(|| ApiError::Internal("resourcequotas are not served".into()))?;
    let cache = state.caches.get(res)?;
    cache.prepare(&state.store, at).await?;
    let filter = Filter {
        namespace: Some(namespace.to_string()),
        ..Default::default()
    };
    let page = cache.list(&filter, None, None, at)?;
    let mut out = page
        .items
        .iter()
        .map(|o| Ok(LiveQuota::new(o.key.clone(), o.revision, o.value()?)))
        .collect::<Result<Vec<_>, ApiError>>()?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Settles `charges` against the quotas of their namespaces as the watch cache has them
/// at `at` (`Any` first; `Newest` after a compare on a quota failed). Returns the quotas
/// the write depends on, with the new statuses of those it changes, or the 403 of a
/// charge no quota admits. Quotas at `skip` (written by the transaction itself) are left
/// alone.
pub async fn settle(
    state: &AppState,
    charges: &[Charge],
    skip: &HashSet<String>,
    at: ReadAt,
) -> Result<Vec<QuotaWrite>, ApiError> {
    let namespaces: BTreeSet<&str> = charges.iter().map(|c| c.namespace.as_str()).collect();
    let mut quotas = Vec::new();
    for ns in namespaces {
        quotas.extend(
            quotas_of(state, ns, at)
                .await?
                .into_iter()
                .filter(|q| !skip.contains(&q.key) && concerns(q, charges)),
        );
    }
    if quotas.is_empty() {
        return Ok(Vec::new());
    }
    apply_charges(&mut quotas, charges)?;
    Ok(quotas
        .into_iter()
        .map(|q| QuotaWrite {
            object: q.changed.then_some(q.object),
            key: q.key,
            revision: q.revision,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn res(plural: &str) -> &'static ResourceInfo {
        registry::RESOURCES.iter().find(|r| r.plural == plural).expect("served")
    }

    fn pod(name: &str, containers: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns"}, "spec": {"containers": containers},
            "status": {"phase": "Pending"}})
    }

    fn quota(name: &str, hard: Value, used: Value) -> LiveQuota {
        LiveQuota::new(
            format!("/registry/core/resourcequotas/ns/{name}"),
            7,
            json!({"metadata": {"name": name, "namespace": "ns"}, "spec": {"hard": hard},
                "status": {"hard": hard, "used": used}}),
        )
    }

    fn create(plural: &str, obj: &Value) -> Charge {
        Charge::of(res(plural), None, Some(obj)).expect("a create charges")
    }

    #[test]
    fn pods_use_their_requests_limits_and_a_pod_until_they_finish() {
        let p = pod(
            "p",
            json!([
                {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "500m"}}},
                {"name": "b", "resources": {"limits": {"cpu": "1", "memory": "128Mi"}}},
            ]),
        );
        let u = usage(res("pods"), &p);
        assert_eq!(
            amount::pretty(&u),
            "count/pods=1,cpu=1250m,limits.cpu=1500m,limits.memory=128Mi,memory=192Mi,pods=1,\
             requests.cpu=1250m,requests.memory=192Mi"
        );
        let mut done = p.clone();
        done["status"]["phase"] = json!("Succeeded");
        assert_eq!(amount::pretty(&usage(res("pods"), &done)), "count/pods=1");
    }

    #[test]
    fn init_containers_count_when_larger_and_sidecars_always() {
        let mut p = pod("p", json!([{"name": "a", "resources": {"requests": {"cpu": "1"}}}]));
        p["spec"]["initContainers"] = json!([
            {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}},
            {"name": "setup", "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}},
        ]);
        p["spec"]["overhead"] = json!({"cpu": "10m"});
        let requests = pod_total(&p, false, true);
        // max(1 + 100m, 2 + 100m) + 10m overhead.
        assert_eq!(amount::pretty(&requests), "cpu=2110m,memory=1Gi");
        assert_eq!(amount::pretty(&pod_total(&p, false, false)), "cpu=2100m,memory=1Gi");
    }

    #[test]
    fn objects_count_by_their_count_name_and_legacy_name() {
        let cm = json!({"metadata": {"name": "c", "namespace": "ns"}});
        assert_eq!(
            amount::pretty(&usage(res("configmaps"), &cm)),
            "configmaps=1,count/configmaps=1"
        );
        assert_eq!(
            amount::pretty(&usage(res("deployments"), &cm)),
            "count/deployments.apps=1"
        );
        let svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 443}]}});
        assert_eq!(
            amount::pretty(&usage(res("services"), &svc)),
            "count/services=1,services=1,services.nodeports=2"
        );
        let pvc = json!({"spec": {"storageClassName": "fast", "resources": {"requests": {"storage": "1Gi"}}}});
        assert_eq!(
            amount::pretty(&usage(res("persistentvolumeclaims"), &pvc)),
            "count/persistentvolumeclaims=1,fast.storageclass.storage.k8s.io/persistentvolumeclaims=1,\
             fast.storageclass.storage.k8s.io/requests.storage=1Gi,persistentvolumeclaims=1,requests.storage=1Gi"
        );
    }

    #[test]
    fn hard_names_lead_to_the_resources_they_count() {
        let plural = |n: &str| resource_for(n).map(|r| r.qualified_plural());
        assert_eq!(plural("count/deployments.apps").as_deref(), Some("deployments.apps"));
        assert_eq!(plural("count/configmaps").as_deref(), Some("configmaps"));
        assert_eq!(plural("configmaps").as_deref(), Some("configmaps"));
        assert_eq!(plural("requests.cpu").as_deref(), Some("pods"));
        assert_eq!(plural("requests.example.com/gpu").as_deref(), Some("pods"));
        assert_eq!(plural("services.nodeports").as_deref(), Some("services"));
        assert_eq!(plural("requests.storage").as_deref(), Some("persistentvolumeclaims"));
        assert_eq!(plural("count/widgets.example.com"), None);
        assert!(covers(res("pods"), "cpu") && !covers(res("pods"), "configmaps"));
        assert!(covers(res("configmaps"), "count/configmaps") && !covers(res("secrets"), "configmaps"));
    }

    #[test]
    fn a_full_quota_refuses_with_kubernetes_message() {
        let mut quotas = vec![quota("q", json!({"pods": "2"}), json!({"pods": "1"}))];
        let p = pod("p1", json!([{"name": "c"}]));
        apply_charges(&mut quotas, &[create("pods", &p)]).expect("room for one");
        assert!(quotas[0].changed);
        assert_eq!(quotas[0].object["status"]["used"], json!({"pods": "2"}));
        let err = apply_charges(&mut quotas, &[create("pods", &pod("p2", json!([{"name": "c"}])))]).expect_err("full");
        assert_eq!(
            err.to_string(),
            "pods \"p2\" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2"
        );
        // Giving a pod back makes room, and two creates in one batch add up.
        apply_charges(&mut quotas, &[Charge::of(res("pods"), Some(&p), None).unwrap()]).unwrap();
        assert_eq!(quotas[0].object["status"]["used"], json!({"pods": "1"}));
        let two = [
            create("pods", &pod("a", json!([]))),
            create("pods", &pod("b", json!([]))),
        ];
        let err = apply_charges(&mut quotas, &two).expect_err("only one fits");
        assert!(
            err.to_string().starts_with("pods \"b\" is forbidden: exceeded quota"),
            "{err}"
        );
    }

    #[test]
    fn compute_quotas_need_every_container_to_say_what_it_uses() {
        let mut quotas = vec![quota(
            "compute",
            json!({"requests.cpu": "1", "limits.cpu": "2", "requests.memory": "1Gi"}),
            json!({"requests.cpu": "500m", "limits.cpu": "0", "requests.memory": "0"}),
        )];
        let p = pod(
            "p",
            json!([{"name": "a", "resources": {"requests": {"cpu": "100m"}}}, {"name": "b"}]),
        );
        let err = apply_charges(&mut quotas, &[create("pods", &p)]).expect_err("unstated");
        assert_eq!(
            err.to_string(),
            "pods \"p\" is forbidden: failed quota: compute: must specify limits.cpu for: a,b; \
             requests.cpu for: b; requests.memory for: a,b"
        );
        let big = pod(
            "big",
            json!([{"name": "a", "resources": {"requests": {"cpu": "600m", "memory": "1Gi"}, "limits": {"cpu": "1"}}}]),
        );
        let err = apply_charges(&mut quotas, &[create("pods", &big)]).expect_err("over cpu");
        assert_eq!(
            err.to_string(),
            "pods \"big\" is forbidden: exceeded quota: compute, requested: requests.cpu=600m, \
             used: requests.cpu=500m, limited: requests.cpu=1"
        );
        let fits = pod(
            "fits",
            json!([{"name": "a", "resources": {"limits": {"cpu": "500m", "memory": "512Mi"}}}]),
        );
        apply_charges(&mut quotas, &[create("pods", &fits)]).expect("limits imply requests");
        assert_eq!(
            quotas[0].object["status"]["used"],
            json!({"requests.cpu": "1", "limits.cpu": "500m", "requests.memory": "512Mi"})
        );
    }

    #[test]
    fn unknown_usage_and_other_namespaces_and_kinds() {
        let mut quotas = vec![quota("q", json!({"count/configmaps": "1"}), json!({}))];
        let cm = json!({"metadata": {"name": "c", "namespace": "ns"}});
        let err = apply_charges(&mut quotas, &[create("configmaps", &cm)]).expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "configmaps \"c\" is forbidden: status unknown for quota: q, resources: count/configmaps"
        );
        let elsewhere = json!({"metadata": {"name": "c", "namespace": "other"}});
        apply_charges(&mut quotas, &[create("configmaps", &elsewhere)]).expect("not this namespace");
        apply_charges(&mut quotas, &[create("secrets", &cm)]).expect("secrets are not limited");
        assert!(!quotas[0].changed);
        // Without status.hard a quota limits nothing yet.
        let mut fresh = vec![quota("q", json!({}), json!({}))];
        fresh[0].object["spec"]["hard"] = json!({"count/configmaps": "0"});
        apply_charges(&mut fresh, &[create("configmaps", &cm)]).expect("not synced yet");
    }

    #[test]
    fn scopes_select_pods_only() {
        let mut q = quota("be", json!({"pods": "1"}), json!({"pods": "1"}));
        q.object["spec"]["scopes"] = json!(["BestEffort"]);
        let mut quotas = vec![q];
        let burstable = pod("b", json!([{"name": "c", "resources": {"requests": {"cpu": "1"}}}]));
        apply_charges(&mut quotas, &[create("pods", &burstable)]).expect("not best effort");
        let err = apply_charges(&mut quotas, &[create("pods", &pod("e", json!([{"name": "c"}])))]);
        assert!(err.is_err(), "a best-effort pod is counted");

        let mut q = quota("prio", json!({"pods": "5"}), json!({"pods": "0"}));
        q.object["spec"]["scopeSelector"] =
            json!({"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]});
        let reqs = scope_requirements(q.object.get("spec"));
        let mut high = pod("h", json!([]));
        high["spec"]["priorityClassName"] = json!("high");
        assert!(in_scope(&reqs, &Subject::of(res("pods"), &high)));
        assert!(!in_scope(&reqs, &Subject::of(res("pods"), &pod("l", json!([])))));
        assert!(!in_scope(&reqs, &Subject::of(res("configmaps"), &high)));
    }

    #[test]
    fn finishing_a_pod_gives_back_its_compute_but_not_its_count() {
        let mut quotas = vec![quota(
            "q",
            json!({"pods": "3", "count/pods": "3", "requests.cpu": "2"}),
            json!({"pods": "1", "count/pods": "1", "requests.cpu": "1"}),
        )];
        let running = pod("p", json!([{"name": "c", "resources": {"requests": {"cpu": "1"}}}]));
        let mut done = running.clone();
        done["status"]["phase"] = json!("Failed");
        let charge = Charge::of(res("pods"), Some(&running), Some(&done)).expect("phase changes usage");
        apply_charges(&mut quotas, &[charge]).unwrap();
        assert_eq!(
            quotas[0].object["status"]["used"],
            json!({"pods": "0", "count/pods": "1", "requests.cpu": "0"})
        );
        // Status updates that change nothing quota sees charge nothing, nor do updates of
        // kinds counted only by number.
        assert!(Charge::of(res("pods"), Some(&done), Some(&done)).is_none());
        // Nor does a binding; a change of what a container requests does.
        let mut bound = running.clone();
        bound["spec"]["nodeName"] = json!("n1");
        assert!(Charge::of(res("pods"), Some(&running), Some(&bound)).is_none());
        let mut resized = bound.clone();
        resized["spec"]["containers"][0]["resources"]["requests"]["cpu"] = json!("2");
        assert!(Charge::of(res("pods"), Some(&bound), Some(&resized)).is_some());
        let cm = json!({"metadata": {"name": "c", "namespace": "ns"}});
        assert!(Charge::of(res("configmaps"), Some(&cm), Some(&cm)).is_none());
        assert!(Charge::of(res("namespaces"), None, Some(&cm)).is_none());
    }
}
