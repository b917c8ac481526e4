//! One scheduling cycle: filter the nodes, score those that fit, pick the best.
//!
//! As in Kubernetes, a large cluster is not searched whole for every pod: the search
//! starts where the previous one stopped and ends once enough nodes fit
//! ([`feasible_nodes_to_find`]: all of them up to 100 nodes, then an adaptive share down
//! to 5%), so every node still gets its turn and a decision costs about the same at
//! 5,000 nodes as at 500. A pod that fits nowhere has seen every node, which is what its
//! "0/N nodes are available" message counts.

use std::collections::{BTreeMap, HashMap};

use super::cache::Cache;
use super::node_info::NodeInfo;
use super::plugins::{run_filters, score_nodes, CycleState, Unfit};
use super::pod_info::{PodInfo, PodRef};

/// Below this many nodes every node is examined.
const MIN_FEASIBLE_NODES: usize = 100;
/// The smallest adaptive share of nodes examined, in percent.
const MIN_PERCENTAGE: usize = 5;

/// Where a pod goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The chosen node.
    pub node: String,
    /// Nodes examined.
    pub evaluated: usize,
    /// Nodes that fit among those.
    pub feasible: usize,
}

/// Why a pod fits nowhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnosis {
    /// Nodes examined (every existing node).
    pub nodes: usize,
    /// Reason -> how many nodes gave it.
    pub reasons: BTreeMap<String, usize>,
    /// Nodes that failed only for reasons evicting pods could remove.
    pub resolvable: Vec<String>,
    /// The pod itself cannot be read (a malformed selector).
    pub invalid: Option<String>,
}

impl Diagnosis {
    /// Kubernetes' message: "0/5 nodes are available: 2 Insufficient cpu, 3 node(s) had
    /// untolerated taint {k: v}." (reasons with counts, sorted).
    pub fn message(&self) -> String {
        if let Some(invalid) = &self.invalid {
            return format!("pod cannot be scheduled: {invalid}");
        }
        if self.nodes == 0 {
            return "no nodes available to schedule pods".to_string();
        }
        let mut parts: Vec<String> = self.reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
        parts.sort();
        format!("0/{} nodes are available: {}.", self.nodes, parts.join(", "))
    }
}

/// How many fitting nodes to find before choosing among them, out of `nodes`, with
/// `percentage` of nodes to score (0: adaptive, Kubernetes' 50% minus 1% per 125 nodes,
/// at least 5%).
pub fn feasible_nodes_to_find(nodes: usize, percentage: u32) -> usize {
    if nodes < MIN_FEASIBLE_NODES || percentage >= 100 {
        return nodes;
    }
    let pct = if percentage == 0 {
        50usize.saturating_sub(nodes / 125).max(MIN_PERCENTAGE)
    } else {
        percentage as usize
    };
    (nodes * pct / 100).max(MIN_FEASIBLE_NODES)
}

/// The pods nominated to `node` whose room `pod` must leave them: others at least as
/// important.
pub fn reserved<'a>(
    nominated: &'a HashMap<String, Vec<PodRef>>,
    node: &str,
    pod: &'a PodInfo,
) -> impl Iterator<Item = &'a PodRef> {
    nominated
        .get(node)
        .into_iter()
        .flatten()
        .filter(move |n| n.uid != pod.uid && n.priority >= pod.priority)
}

/// Runs the filters on `node`, counting the pods nominated there that are at least as
/// important as the pod (their room is kept for them).
fn check(state: &CycleState, node: &NodeInfo, nominated: &HashMap<String, Vec<PodRef>>) -> Result<(), Unfit> {
    let reserved: Vec<&PodRef> = reserved(nominated, &node.name, &state.pod).collect();
    if reserved.is_empty() {
        return run_filters(state, node);
    }
    let mut with = node.without_pods();
    for n in reserved {
        with.add_share(n);
    }
    run_filters(state, &with)
}

/// Whether `pod` fits on the node named `node` now.
pub fn fits_on(pod: &PodRef, cache: &Cache, nominated: &HashMap<String, Vec<PodRef>>, node: &str) -> bool {
    let Some(info) = cache.node(node) else { return false };
    check(&CycleState::new(pod.clone(), cache), info, nominated).is_ok()
}

/// The state kept between cycles: where the next search starts, and a random source to
/// break ties between equally good nodes.
#[derive(Debug)]
pub struct Cycles {
    next_start: usize,
    percentage: u32,
    rng: u64,
}

impl Cycles {
    /// Cycles examining `percentage` of nodes (0: adaptive).
    pub fn new(percentage: u32) -> Cycles {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Cycles {
            next_start: 0,
            percentage,
            rng: seed | 1,
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64: tie-breaking needs no more.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Chooses a node for `pod`, or says why none fits; `nominated_to` is where preemption
    /// made room for it, if anywhere. `nominated` holds, per node, the pods preemption is
    /// making room for there: they count against the node for pods of no higher
    /// priority, so the room is not taken by someone less important.
    pub fn schedule(
        &mut self,
        pod: &PodRef,
        cache: &Cache,
        nominated: &HashMap<String, Vec<PodRef>>,
        nominated_to: Option<&str>,
    ) -> Result<Placement, Diagnosis> {
        let total = cache.node_count();
        if let Some(invalid) = &pod.invalid {
            return Err(Diagnosis {
                nodes: total,
                invalid: Some(invalid.clone()),
                ..Default::default()
            });
        }
        let state = CycleState::new(pod.clone(), cache);
        // Where preemption made room for it is tried first, as Kubernetes does.
        if let Some(node) = nominated_to.and_then(|n| cache.node(n)) {
            if check(&state, node, nominated).is_ok() {
                return Ok(Placement {
                    node: node.name.clone(),
                    evaluated: 1,
                    feasible: 1,
                });
            }
        }
        let want = feasible_nodes_to_find(total, self.percentage);
        let mut feasible: Vec<&NodeInfo> = Vec::with_capacity(want.min(total));
        let mut diagnosis = Diagnosis {
            nodes: total,
            ..Default::default()
        };
        let start = if total == 0 { 0 } else { self.next_start % total };
        let mut evaluated = 0;
        for i in 0..total {
            let Some(node) = cache.node_at((start + i) % total) else {
                continue;
            };
            evaluated += 1;
            match check(&state, node, nominated) {
                Ok(()) => {
                    feasible.push(node);
                    if feasible.len() >= want {
                        break;
                    }
                }
                Err(unfit) => {
                    if !unfit.unresolvable {
                        diagnosis.resolvable.push(node.name.clone());
                    }
                    for r in unfit.reasons {
                        *diagnosis.reasons.entry(r.into_owned()).or_default() += 1;
                    }
                }
            }
        }
        self.next_start = start + evaluated;
        if feasible.is_empty() {
            return Err(diagnosis);
        }
        let chosen = if feasible.len() == 1 {
            feasible[0]
        } else {
            let scores = score_nodes(&state, &feasible);
            // The best score; among equals, each is equally likely (reservoir sampling).
            let mut best = 0;
            let mut ties = 0u64;
            for (i, s) in scores.iter().enumerate() {
                if *s > scores[best] {
                    best = i;
                    ties = 1;
                } else if *s == scores[best] {
                    ties += 1;
                    if self.random().is_multiple_of(ties) {
                        best = i;
                    }
                }
            }
            feasible[best]
        };
        Ok(Placement {
            node: chosen.name.clone(),
            evaluated,
            feasible: feasible.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::plugins::testing::{cache, node, pod, pod_cpu};
    use super::*;
    use serde_json::json;

    #[test]
    fn adaptive_share_of_nodes_to_find() {
        let cases = [
            (50, 0, 50),
            (100, 0, 100),
            (1000, 0, 420),
            (5000, 0, 500),
            (10000, 0, 500),
            (5000, 30, 1500),
            (5000, 100, 5000),
        ];
        for (nodes, pct, want) in cases {
            assert_eq!(feasible_nodes_to_find(nodes, pct), want, "{nodes} nodes at {pct}%");
        }
    }

    #[test]
    fn the_message_counts_reasons_like_kubernetes() {
        let nodes = [
            node("small1", "100m", json!({}), json!({})),
            node("small2", "100m", json!({}), json!({})),
            node(
                "tainted",
                "8",
                json!({}),
                json!({"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}),
            ),
        ];
        let c = cache(&nodes, &[]);
        let err = Cycles::new(0)
            .schedule(&pod_cpu("p", "1"), &c, &HashMap::new(), None)
            .expect_err("fits nowhere");
        assert_eq!(
            err.message(),
            "0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 Insufficient cpu."
        );
        assert_eq!(err.resolvable.len(), 2, "only the small nodes could be freed up");
        let none = Cycles::new(0)
            .schedule(&pod_cpu("p", "1"), &cache(&[], &[]), &HashMap::new(), None)
            .expect_err("no nodes");
        assert_eq!(none.message(), "no nodes available to schedule pods");
    }

    #[test]
    fn assumed_pods_count_against_the_next_decision() {
        let c0 = [
            node("a", "1", json!({}), json!({})),
            node("b", "1", json!({}), json!({})),
        ];
        let mut c = cache(&c0, &[]);
        let mut cycles = Cycles::new(0);
        let mut chosen = Vec::new();
        for i in 0..2 {
            let p = pod_cpu(&format!("p{i}"), "600m");
            let placed = cycles.schedule(&p, &c, &HashMap::new(), None).expect("fits");
            c.assume(&p, &placed.node);
            chosen.push(placed.node);
        }
        chosen.sort();
        assert_eq!(chosen, ["a", "b"], "the second pod saw the first before any binding");
        assert!(cycles
            .schedule(&pod_cpu("p2", "600m"), &c, &HashMap::new(), None)
            .is_err());
    }

    #[test]
    fn room_made_by_preemption_is_kept_for_the_nominated_pod() {
        let c = cache(&[node("a", "1", json!({}), json!({}))], &[]);
        let mut important = (*pod_cpu("vip", "800m")).clone();
        important.priority = 100;
        let nominated = HashMap::from([("a".to_string(), vec![std::sync::Arc::new(important)])]);
        let mut cycles = Cycles::new(0);
        assert!(cycles.schedule(&pod_cpu("low", "500m"), &c, &nominated, None).is_err());
        let mut higher = (*pod_cpu("higher", "500m")).clone();
        higher.priority = 200;
        assert!(cycles
            .schedule(&std::sync::Arc::new(higher), &c, &nominated, None)
            .is_ok());
    }

    #[test]
    fn a_malformed_pod_says_why() {
        let c = cache(&[node("a", "1", json!({}), json!({}))], &[]);
        let mut bad = (*pod("p", json!({}), json!({}))).clone();
        bad.invalid = Some("spec.affinity.podAffinity: Invalid expression operator".into());
        let err = Cycles::new(0)
            .schedule(&std::sync::Arc::new(bad), &c, &HashMap::new(), None)
            .expect_err("invalid");
        assert!(err.message().contains("Invalid expression operator"));
    }
}
