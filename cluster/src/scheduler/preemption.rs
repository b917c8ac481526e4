//! Preemption: a pod that fits nowhere may evict pods of lower priority.
//!
//! For each node that failed only for reasons eviction can change, every lower-priority
//! pod is taken off in a copy of the node; if the pod fits there, the removed pods are
//! put back one by one, most important first, as long as it still fits, and those that
//! cannot be put back are the victims. Among the candidate nodes the one whose most
//! important victim matters least wins, then the fewest victims, then the smallest sum of
//! their priorities. Like Kubernetes, the search stops after a share of the nodes
//! (10%, at least 100) has yielded candidates.

use std::collections::{HashMap, HashSet};

use super::cache::Cache;
use super::plugins::{run_filters, CycleState};
use super::pod_info::PodRef;

/// The fewest candidate nodes examined before choosing.
const MIN_CANDIDATES: usize = 100;
/// The share of nodes, in percent, worth finding candidates among.
const CANDIDATE_PERCENT: usize = 10;

/// Where the pod can go after which pods are evicted.
#[derive(Debug, Clone)]
pub struct Preemption {
    /// The node to nominate.
    pub node: String,
    /// Pods to delete.
    pub victims: Vec<PodRef>,
}

impl Preemption {
    /// (highest victim priority, victims, sum of priorities): smaller is better.
    fn cost(&self) -> (i32, usize, i64) {
        let top = self.victims.iter().map(|v| v.priority).max().unwrap_or(i32::MIN);
        let sum = self.victims.iter().map(|v| i64::from(v.priority)).sum();
        (top, self.victims.len(), sum)
    }
}

/// The best preemption for `pod` among `candidates` (nodes whose failures eviction could
/// resolve), or `None` if no eviction makes it fit. Pods in `leaving` (victims of earlier
/// preemptions) are not chosen again but still take room until gone, and so do the pods
/// `nominated` to a node that are at least as important as `pod`.
pub fn find(
    pod: &PodRef,
    cache: &Cache,
    candidates: &[String],
    nominated: &HashMap<String, Vec<PodRef>>,
    leaving: &HashSet<String>,
) -> Option<Preemption> {
    if pod.never_preempts {
        return None;
    }
    let state = CycleState::new(pod.clone(), cache);
    let enough = (cache.node_count() * CANDIDATE_PERCENT / 100).max(MIN_CANDIDATES);
    let mut found: Vec<Preemption> = Vec::new();
    for name in candidates {
        let Some(node) = cache.node(name) else { continue };
        let mut lower: Vec<PodRef> = node
            .pods
            .values()
            .filter(|p| p.priority < pod.priority && !p.deleting && !leaving.contains(&p.uid))
            .cloned()
            .collect();
        if lower.is_empty() {
            continue;
        }
        let mut trial = node.without_pods();
        for n in super::cycle::reserved(nominated, name, pod) {
            trial.add_share(n);
        }
        for p in &lower {
            trial.take_share(p);
        }
        if run_filters(&state, &trial).is_err() {
            continue;
        }
        // Most important first: they are the ones worth sparing.
        lower.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.created.cmp(&b.created)));
        let mut victims = Vec::new();
        for p in lower {
            trial.add_share(&p);
            if run_filters(&state, &trial).is_err() {
                trial.take_share(&p);
                victims.push(p);
            }
        }
        if victims.is_empty() {
            // It fits without evicting anything: a stale cache made it look full.
            continue;
        }
        found.push(Preemption {
            node: name.clone(),
            victims,
        });
        if found.len() >= enough {
            break;
        }
    }
    found.into_iter().min_by_key(Preemption::cost)
}

#[cfg(test)]
mod tests {
    use super::super::plugins::testing::{cache, node, pod};
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn prio(name: &str, cpu: &str, priority: i32) -> PodRef {
        let mut p = (*pod(
            name,
            json!({}),
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}),
        ))
        .clone();
        p.priority = priority;
        Arc::new(p)
    }

    fn names(p: &Preemption) -> Vec<String> {
        let mut v: Vec<String> = p.victims.iter().map(|v| v.name.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn evicts_the_fewest_least_important_pods() {
        let nodes = [
            node("a", "1", json!({}), json!({})),
            node("b", "1", json!({}), json!({})),
        ];
        let placed = [
            // a: two small low-priority pods and one medium.
            (prio("a-low1", "300m", 1), "a"),
            (prio("a-low2", "300m", 1), "a"),
            (prio("a-mid", "400m", 50), "a"),
            // b: one big pod of middling priority.
            (prio("b-mid", "1", 50), "b"),
        ];
        let c = cache(&nodes, &placed);
        let all = vec!["a".to_string(), "b".to_string()];
        let find = |p: &PodRef, c: &Cache, all: &[String]| find(p, c, all, &HashMap::new(), &HashSet::new());
        let p = find(&prio("p", "600m", 100), &c, &all).expect("a preemption");
        assert_eq!(p.node, "a", "priority-1 victims beat a priority-50 one");
        assert_eq!(names(&p), ["a-low1", "a-low2"], "a-mid is reprieved");

        let small = find(&prio("q", "300m", 100), &c, &all).expect("a preemption");
        assert_eq!(names(&small).len(), 1, "one small victim is enough");

        assert!(
            find(&prio("r", "600m", 1), &c, &all).is_none(),
            "nobody has lower priority"
        );
        let mut never = (*prio("s", "600m", 100)).clone();
        never.never_preempts = true;
        assert!(find(&Arc::new(never), &c, &all).is_none(), "preemptionPolicy: Never");
        assert!(
            find(&prio("t", "2", 100), &c, &all).is_none(),
            "too big even for an empty node"
        );
    }
}
