//! PodTopologySpread: `topologySpreadConstraints` keep the pods a selector picks evenly
//! spread over topology domains (`maxSkew`; `DoNotSchedule` filters, `ScheduleAnyway`
//! scores), and a pod without constraints is spread with its siblings (the pods of the
//! same controlling owner, as a ReplicaSet's) over hosts and zones, as Kubernetes'
//! default constraints do.

use std::collections::HashMap;

use super::super::cache::Cache;
use super::super::pod_info::{PodInfo, SpreadConstraint};
use super::{node_affinity, taints, CycleState, NodeInfo, Unfit};

/// The zone label the default spreading uses.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// One constraint with the matching pods counted per domain.
#[derive(Debug)]
struct Counted {
    key: String,
    max_skew: i64,
    hard: bool,
    /// 1 if the pod matches its own selector (placing it adds to its domain).
    self_match: i64,
    /// Domain -> matching pods, over the nodes the constraint counts.
    counts: HashMap<String, i64>,
    /// The smallest count (zero with fewer domains than `minDomains`).
    min: i64,
}

/// The pod's spread constraints counted against the cache.
#[derive(Debug, Default)]
pub struct State {
    constraints: Vec<Counted>,
    /// Spreading by owner when the pod has no constraints: its owner's uid.
    owner: Option<String>,
    /// Default spreading over zones: zone -> the owner's pods there.
    owner_zones: HashMap<String, i64>,
}

/// Whether constraint `c` of `pod` counts the pods on `node`.
fn counts_node(pod: &PodInfo, c: &SpreadConstraint, node: &NodeInfo) -> bool {
    node.domain(&c.topology_key).is_some()
        && (!c.honor_node_affinity || node_affinity::pod_accepts(pod, node))
        && (!c.honor_taints
            || taints::untolerated(&node.taints, &pod.tolerations, &["NoSchedule", "NoExecute"]).is_none())
}

impl State {
    /// Counts `pod`'s constraints over `cache`.
    pub fn new(pod: &PodInfo, cache: &Cache) -> State {
        let mut state = State::default();
        // With every node eligible, the counts come straight from the cache's per-domain
        // indexes; otherwise the eligible nodes are walked.
        let one_key = pod.spread.windows(2).all(|w| w[0].topology_key == w[1].topology_key);
        let no_affinity = pod.node_selector.is_empty() && pod.required_node_affinity.is_none();
        for c in &pod.spread {
            let indexed = one_key && (no_affinity || !c.honor_node_affinity) && !c.honor_taints;
            let (counts, domains, min) = if indexed {
                Self::indexed_counts(pod, c, cache)
            } else {
                Self::walked_counts(pod, c, cache)
            };
            let too_few = c.min_domains.is_some_and(|m| (domains as i64) < m);
            state.constraints.push(Counted {
                key: c.topology_key.clone(),
                max_skew: c.max_skew,
                hard: c.hard,
                self_match: i64::from(c.selector.matches(&pod.labels)),
                counts,
                min: if too_few { 0 } else { min },
            });
        }
        if pod.spread.is_empty() {
            if let Some(owner) = pod.owner_uid.as_ref() {
                state.owner = Some(owner.clone());
                for (node, n) in cache.owner_nodes(owner).into_iter().flatten() {
                    if let Some(zone) = cache.node(node).and_then(|i| i.domain(ZONE_LABEL)) {
                        *state.owner_zones.entry(zone.to_string()).or_default() += i64::from(*n);
                    }
                }
            }
        }
        state
    }

    /// Matching pods per domain, the number of domains and the smallest count, from the
    /// cache's indexes (every node with the key is eligible).
    fn indexed_counts(pod: &PodInfo, c: &SpreadConstraint, cache: &Cache) -> (HashMap<String, i64>, usize, i64) {
        let universe = cache.key_domains(&c.topology_key);
        let mut counts: HashMap<String, i64> = HashMap::new();
        let groups = cache
            .label_groups()
            .filter(|g| g.namespace == pod.namespace && c.selector.matches(&g.labels));
        for g in groups {
            for (d, n) in cache.group_domains(g, &c.topology_key).iter() {
                *counts.entry(d.clone()).or_default() += n;
            }
        }
        let min = if universe.keys().any(|d| !counts.contains_key(d)) {
            0
        } else {
            universe
                .keys()
                .filter_map(|d| counts.get(d))
                .copied()
                .min()
                .unwrap_or(0)
        };
        (counts, universe.len(), min)
    }

    /// The same over the nodes the constraint counts, walked one by one.
    fn walked_counts(pod: &PodInfo, c: &SpreadConstraint, cache: &Cache) -> (HashMap<String, i64>, usize, i64) {
        let mut counts: HashMap<String, i64> = HashMap::new();
        for node in cache.nodes().filter(|n| counts_node(pod, c, n)) {
            if let Some(d) = node.domain(&c.topology_key) {
                if !counts.contains_key(d) {
                    counts.insert(d.to_string(), 0);
                }
            }
        }
        let matched = cache.domain_counts(
            &c.topology_key,
            |g| g.namespace == pod.namespace && c.selector.matches(&g.labels),
            |n| counts_node(pod, c, n),
        );
        for (d, n) in matched {
            *counts.entry(d).or_default() += n;
        }
        let min = counts.values().copied().min().unwrap_or(0);
        let domains = counts.len();
        (counts, domains, min)
    }
}

/// Fails where placing the pod would make a `DoNotSchedule` constraint's skew exceed
/// `maxSkew`, or where the node lacks the constraint's topology label.
pub fn filter(state: &CycleState, node: &NodeInfo) -> Result<(), Unfit> {
    for c in state.spread.constraints.iter().filter(|c| c.hard) {
        let Some(domain) = node.domain(&c.key) else {
            return Err(Unfit::unresolvable(
                "node(s) didn't match pod topology spread constraints (missing required label)",
            ));
        };
        let count = c.counts.get(domain).copied().unwrap_or(0);
        if count + c.self_match - c.min > c.max_skew {
            return Err(Unfit::resolvable(
                "node(s) didn't match pod topology spread constraints",
            ));
        }
    }
    Ok(())
}

/// How many matching pods the node's domains already hold for the `ScheduleAnyway`
/// constraints, or of the pod's siblings on the node and in its zone (fewer is better).
pub fn score(state: &CycleState, node: &NodeInfo) -> i64 {
    let s = &state.spread;
    let mut total = 0;
    for c in s.constraints.iter().filter(|c| !c.hard) {
        total += match node.domain(&c.key) {
            Some(d) => c.counts.get(d).copied().unwrap_or(0),
            // A node outside every domain is the worst place to spread to.
            None => c.counts.values().copied().max().unwrap_or(0) + 1,
        };
    }
    if let Some(owner) = s.owner.as_ref() {
        total += state
            .cache
            .owner_nodes(owner)
            .and_then(|m| m.get(&node.name))
            .map_or(0, |n| i64::from(*n));
        if let Some(zone) = node.domain(ZONE_LABEL) {
            total += s.owner_zones.get(zone).copied().unwrap_or(0);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::super::testing::{cache, info, node, pod};
    use super::*;
    use serde_json::json;

    fn spread(key: &str, skew: i32, when: &str) -> serde_json::Value {
        json!({"topologySpreadConstraints": [{"maxSkew": skew, "topologyKey": key, "whenUnsatisfiable": when,
            "labelSelector": {"matchLabels": {"app": "web"}}}]})
    }

    #[test]
    fn max_skew_over_zones() {
        let nodes = [
            node("a1", "1", json!({"zone": "a"}), json!({})),
            node("a2", "1", json!({"zone": "a"}), json!({})),
            node("b1", "1", json!({"zone": "b"}), json!({})),
            node("c1", "1", json!({"zone": "c"}), json!({})),
            node("bare", "1", json!({}), json!({})),
        ];
        let web = |n: &str| pod(n, json!({"app": "web"}), json!({}));
        // zone a holds 2, zone b 1, zone c none.
        let c = cache(&nodes, &[(web("w1"), "a1"), (web("w2"), "a2"), (web("w3"), "b1")]);
        let cases = [
            ("skew 1 allows only the emptiest zone", 1, vec!["c1"]),
            ("skew 2 allows b and c", 2, vec!["b1", "c1"]),
            ("skew 3 allows all zones", 3, vec!["a1", "a2", "b1", "c1"]),
        ];
        for (name, skew, want) in cases {
            let state = CycleState::new(
                pod("p", json!({"app": "web"}), spread("zone", skew, "DoNotSchedule")),
                &c,
            );
            let fit: Vec<&str> = ["a1", "a2", "b1", "c1", "bare"]
                .into_iter()
                .filter(|n| filter(&state, info(&c, n)).is_ok())
                .collect();
            assert_eq!(fit, want, "{name}");
        }
        let state = CycleState::new(pod("p", json!({"app": "web"}), spread("zone", 1, "DoNotSchedule")), &c);
        let missing = filter(&state, info(&c, "bare")).expect_err("no zone label");
        assert!(missing.reasons[0].contains("missing required label"));
        // ScheduleAnyway only ranks: the emptiest zone has the lowest count.
        let soft = CycleState::new(pod("p", json!({"app": "web"}), spread("zone", 1, "ScheduleAnyway")), &c);
        assert!(filter(&soft, info(&c, "a1")).is_ok());
        assert_eq!(score(&soft, info(&c, "a1")), 2);
        assert_eq!(score(&soft, info(&c, "c1")), 0);
    }

    #[test]
    fn min_domains_counts_missing_domains_as_empty() {
        let nodes = [
            node("a1", "1", json!({"zone": "a"}), json!({})),
            node("b1", "1", json!({"zone": "b"}), json!({})),
        ];
        let web = |n: &str| pod(n, json!({"app": "web"}), json!({}));
        let c = cache(&nodes, &[(web("w1"), "a1"), (web("w2"), "b1")]);
        let mut spec = spread("zone", 1, "DoNotSchedule");
        spec["topologySpreadConstraints"][0]["minDomains"] = json!(3);
        let state = CycleState::new(pod("p", json!({"app": "web"}), spec), &c);
        assert!(
            filter(&state, info(&c, "a1")).is_err(),
            "1 + 1 - 0 > 1: a third domain is wanted"
        );
    }

    #[test]
    fn siblings_spread_over_nodes_by_default() {
        let nodes = [
            node("n1", "1", json!({}), json!({})),
            node("n2", "1", json!({}), json!({})),
        ];
        let sibling = |name: &str| pod(name, json!({}), json!({})).as_ref().clone();
        let mut a = sibling("a");
        a.owner_uid = Some("rs".into());
        let c = cache(&nodes, &[(std::sync::Arc::new(a), "n1")]);
        let mut p = sibling("p");
        p.owner_uid = Some("rs".into());
        let state = CycleState::new(std::sync::Arc::new(p), &c);
        assert!(score(&state, info(&c, "n1")) > score(&state, info(&c, "n2")));
    }
}
