//! Placement rules as Kubernetes' scheduler plugins: filters say whether a node can run
//! the pod, scores rank the nodes that can.
//!
//! Every rule is a pure function of the pod's [`CycleState`] (computed once per pod from
//! the cache, like a plugin's PreFilter) and one [`NodeInfo`], so each is tested alone
//! from plain objects. The lists [`FILTERS`] and [`SCORES`] are the default profile, in
//! Kubernetes' order and with its weights.

pub mod fit;
pub mod inter_pod_affinity;
pub mod node_affinity;
pub mod node_unschedulable;
pub mod ports;
pub mod taints;
pub mod topology_spread;

use std::borrow::Cow;

use super::cache::Cache;
use super::node_info::NodeInfo;
use super::pod_info::PodRef;

/// Why a node cannot run the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfit {
    /// What the pod's status and event say, counted per node ("Insufficient cpu").
    pub reasons: Vec<Cow<'static, str>>,
    /// No eviction could change this (a label mismatch, a taint): preemption skips the node.
    pub unresolvable: bool,
}

impl Unfit {
    /// A reason preemption may resolve by evicting pods.
    pub fn resolvable(reason: impl Into<Cow<'static, str>>) -> Unfit {
        Unfit {
            reasons: vec![reason.into()],
            unresolvable: false,
        }
    }

    /// A reason no eviction resolves.
    pub fn unresolvable(reason: impl Into<Cow<'static, str>>) -> Unfit {
        Unfit {
            reasons: vec![reason.into()],
            unresolvable: true,
        }
    }
}

/// What the rules know about the pod being placed, computed once before its nodes are
/// examined.
pub struct CycleState<'a> {
    /// The pod.
    pub pod: PodRef,
    /// The cluster as cached.
    pub cache: &'a Cache,
    /// Pod affinity and anti-affinity, resolved to topology domains.
    pub affinity: inter_pod_affinity::State<'a>,
    /// Topology spread counts.
    pub spread: topology_spread::State,
}

impl<'a> CycleState<'a> {
    /// Prepares the rules for `pod` against `cache`.
    pub fn new(pod: PodRef, cache: &'a Cache) -> CycleState<'a> {
        let affinity = inter_pod_affinity::State::new(&pod, cache);
        let spread = topology_spread::State::new(&pod, cache);
        CycleState {
            pod,
            cache,
            affinity,
            spread,
        }
    }
}

/// A filter: `Ok` if the node can run the pod.
pub type Filter = fn(&CycleState, &NodeInfo) -> Result<(), Unfit>;

/// The filters, cheapest and most decisive first (Kubernetes' order).
pub const FILTERS: &[(&str, Filter)] = &[
    ("NodeUnschedulable", node_unschedulable::filter),
    ("NodeName", node_affinity::node_name_filter),
    ("TaintToleration", taints::filter),
    ("NodeAffinity", node_affinity::filter),
    ("NodePorts", ports::filter),
    ("NodeResourcesFit", fit::filter),
    ("InterPodAffinity", inter_pod_affinity::filter),
    ("PodTopologySpread", topology_spread::filter),
];

/// Runs every filter; the first that refuses decides.
pub fn run_filters(state: &CycleState, node: &NodeInfo) -> Result<(), Unfit> {
    FILTERS.iter().try_for_each(|(_, f)| f(state, node))
}

/// How a score's raw values become 0..=100 across the nodes being ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalize {
    /// Already 0..=100.
    None,
    /// Scaled so the highest becomes 100.
    Max,
    /// Fewer is better: the lowest becomes 100, the highest 0.
    Reverse,
    /// Scaled from the lowest (0) to the highest (100); may be negative before.
    MinMax,
}

/// A score: a raw value for one node.
pub type Score = fn(&CycleState, &NodeInfo) -> i64;

/// The scores with their weights and normalization (Kubernetes' default profile).
pub const SCORES: &[(&str, Score, i64, Normalize)] = &[
    ("TaintToleration", taints::score, 3, Normalize::Reverse),
    ("NodeAffinity", node_affinity::score, 2, Normalize::Max),
    ("NodeResourcesFit", fit::least_allocated, 1, Normalize::None),
    (
        "NodeResourcesBalancedAllocation",
        fit::balanced_allocation,
        1,
        Normalize::None,
    ),
    ("InterPodAffinity", inter_pod_affinity::score, 2, Normalize::MinMax),
    ("PodTopologySpread", topology_spread::score, 2, Normalize::Reverse),
];

/// Scales `raw` to 0..=100 in place as `how` says.
pub fn normalize(raw: &mut [i64], how: Normalize) {
    let (Some(&min), Some(&max)) = (raw.iter().min(), raw.iter().max()) else {
        return;
    };
    for v in raw.iter_mut() {
        *v = match how {
            Normalize::None => *v,
            Normalize::Max if max > 0 => *v * 100 / max,
            Normalize::Max => 0,
            Normalize::Reverse if max > min => (max - *v) * 100 / (max - min),
            Normalize::Reverse => 100,
            Normalize::MinMax if max > min => (*v - min) * 100 / (max - min),
            Normalize::MinMax => 0,
        };
    }
}

/// The weighted total score of each node in `nodes`, in order.
pub fn score_nodes(state: &CycleState, nodes: &[&NodeInfo]) -> Vec<i64> {
    let mut total = vec![0; nodes.len()];
    let mut raw = vec![0; nodes.len()];
    for (_, score, weight, how) in SCORES {
        for (r, node) in raw.iter_mut().zip(nodes) {
            *r = score(state, node);
        }
        normalize(&mut raw, *how);
        for (t, r) in total.iter_mut().zip(&raw) {
            *t += weight * r;
        }
    }
    total
}

#[cfg(test)]
pub(crate) mod testing {
    //! Builders for the plugins' table-driven tests.

    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{Node, Pod};
    use serde_json::{json, Value};

    use super::super::cache::Cache;
    use super::super::node_info::NodeInfo;
    use super::super::pod_info::{PodInfo, PodRef};

    /// A Ready node with `cpu`, 4Gi memory, 10 pods, and the given labels and spec.
    pub fn node(name: &str, cpu: &str, labels: Value, spec: Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "spec": spec,
            "status": {"allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "10"},
                "conditions": [{"type": "Ready", "status": "True"}]}}))
        .expect("test node")
    }

    /// A pod in `default` with the given labels and spec (containers default to one).
    pub fn pod(name: &str, labels: Value, mut spec: Value) -> PodRef {
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "c"}]);
        }
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default",
            "uid": name, "labels": labels}, "spec": spec}))
        .expect("test pod");
        Arc::new(PodInfo::new(&pod))
    }

    /// A pod requesting `cpu`.
    pub fn pod_cpu(name: &str, cpu: &str) -> PodRef {
        pod(
            name,
            json!({}),
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}),
        )
    }

    /// A cache holding `nodes` and, bound to them, `pods` as (pod, node name). The keys
    /// `zone` and `kubernetes.io/hostname` are tracked from the start (counted as pods
    /// arrive, as the scheduler does); any other key is counted on the spot.
    pub fn cache(nodes: &[Node], pods: &[(PodRef, &str)]) -> Cache {
        let mut cache = Cache::default();
        cache.track_key("zone");
        cache.track_key("kubernetes.io/hostname");
        for n in nodes {
            cache.set_node(n);
        }
        for (p, n) in pods {
            let mut bound = (**p).clone();
            bound.node_name = Some(n.to_string());
            cache.set_pod(Arc::new(bound));
        }
        cache
    }

    /// The cached node `name`.
    pub fn info<'a>(cache: &'a Cache, name: &str) -> &'a NodeInfo {
        cache.node(name).expect("node in cache")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_maps_raw_scores_to_0_100() {
        let cases: &[(&[i64], Normalize, &[i64])] = &[
            (&[10, 50, 100], Normalize::None, &[10, 50, 100]),
            (&[1, 2, 4], Normalize::Max, &[25, 50, 100]),
            (&[0, 0], Normalize::Max, &[0, 0]),
            (&[0, 1, 2], Normalize::Reverse, &[100, 50, 0]),
            (&[3, 3], Normalize::Reverse, &[100, 100]),
            (&[-10, 0, 10], Normalize::MinMax, &[0, 50, 100]),
        ];
        for (raw, how, want) in cases {
            let mut v = raw.to_vec();
            normalize(&mut v, *how);
            assert_eq!(&v, want, "{raw:?} {how:?}");
        }
    }
}
