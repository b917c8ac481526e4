//! InterPodAffinity: required pod affinity and anti-affinity by topology domain, the
//! anti-affinity of pods already placed (it binds both ways), and preferred terms as a
//! score.
//!
//! The domains come from the cache's label groups, which keep their pods counted per
//! domain of every tracked topology key: a term is matched against each distinct
//! (namespace, labels) group, not against every pod, and a node is then checked with a
//! lookup of its domain, not a walk over the pods.

use std::borrow::Cow;
use std::collections::HashMap;

use super::super::cache::{Cache, DomainCounts};
use super::super::pod_info::{AffinityTerm, PodInfo};
use super::{CycleState, NodeInfo, Unfit};

/// The pod's affinity rules resolved to topology domains.
#[derive(Debug, Default)]
pub struct State<'a> {
    /// Per required anti-affinity term: its topology key and the per-domain counts of
    /// the groups the term selects.
    anti: Vec<(String, Vec<Cow<'a, DomainCounts>>)>,
    /// Per placed pods' required anti-affinity term that selects this pod: its key and
    /// where those pods are.
    existing_anti: Vec<(String, &'a DomainCounts)>,
    /// Per required affinity term: its key and the counts of the groups it selects.
    affinity: Vec<(String, Vec<Cow<'a, DomainCounts>>)>,
    /// No pod matches the affinity terms yet but the pod matches them itself: the first
    /// of a group that wants to be together may go to any node with the keys.
    first_of_group: bool,
    /// Preferred terms (both ways): per key, domain -> summed weight.
    preferred: Vec<(String, HashMap<String, i64>)>,
}

/// Per-domain counts of the groups `term` selects (only those with pods somewhere).
fn selected<'a>(cache: &'a Cache, term: &AffinityTerm) -> Vec<Cow<'a, DomainCounts>> {
    cache
        .label_groups()
        .filter(|g| term.matches(&g.namespace, &g.labels, cache.namespace_labels(&g.namespace)))
        .map(|g| cache.group_domains(g, &term.topology_key))
        .filter(|d| !d.is_empty())
        .collect()
}

/// Whether any of `groups` has a pod in `domain`.
fn present(groups: &[Cow<DomainCounts>], domain: &str) -> bool {
    groups.iter().any(|g| g.contains_key(domain))
}

impl<'a> State<'a> {
    /// Resolves `pod`'s terms, and placed pods' terms about it, against `cache`.
    pub fn new(pod: &PodInfo, cache: &'a Cache) -> State<'a> {
        let own_ns = cache.namespace_labels(&pod.namespace);
        let resolve = |terms: &[AffinityTerm]| -> Vec<(String, Vec<Cow<'a, DomainCounts>>)> {
            terms
                .iter()
                .map(|t| (t.topology_key.clone(), selected(cache, t)))
                .collect()
        };
        let mut state = State {
            anti: resolve(&pod.anti_affinity),
            affinity: resolve(&pod.affinity),
            ..Default::default()
        };
        state.first_of_group = !state.affinity.is_empty()
            && state.affinity.iter().all(|(_, groups)| groups.is_empty())
            && pod
                .affinity
                .iter()
                .all(|t| t.matches(&pod.namespace, &pod.labels, own_ns));
        let mut preferred: HashMap<String, HashMap<String, i64>> = HashMap::new();
        for group in cache.term_groups() {
            if !group.term.matches(&pod.namespace, &pod.labels, own_ns) {
                continue;
            }
            let key = &group.term.topology_key;
            let domains = cache.term_domains(group);
            if group.weight == 0 {
                state.existing_anti.push((key.clone(), domains));
            } else {
                let scores = preferred.entry(key.clone()).or_default();
                for (d, n) in domains {
                    *scores.entry(d.clone()).or_default() += group.weight * n;
                }
            }
        }
        let weighted = pod
            .preferred_affinity
            .iter()
            .map(|w| (w, w.weight))
            .chain(pod.preferred_anti_affinity.iter().map(|w| (w, -w.weight)));
        for (w, weight) in weighted {
            let scores = preferred.entry(w.term.topology_key.clone()).or_default();
            for domains in selected(cache, &w.term) {
                for (d, n) in domains.iter() {
                    *scores.entry(d.clone()).or_default() += weight * n;
                }
            }
        }
        state.preferred = preferred.into_iter().collect();
        state
    }
}

/// Fails where a required anti-affinity (the pod's or a placed pod's) forbids the
/// node's domain, or where a required affinity term finds none of its pods.
pub fn filter(state: &CycleState, node: &NodeInfo) -> Result<(), Unfit> {
    let s = &state.affinity;
    let in_domain = |key: &str, groups: &[Cow<DomainCounts>]| node.domain(key).is_some_and(|d| present(groups, d));
    if s.anti.iter().any(|(key, groups)| in_domain(key, groups)) {
        return Err(Unfit::resolvable("node(s) didn't match pod anti-affinity rules"));
    }
    let existing = s
        .existing_anti
        .iter()
        .any(|(key, domains)| node.domain(key).is_some_and(|d| domains.contains_key(d)));
    if existing {
        return Err(Unfit::resolvable(
            "node(s) didn't satisfy existing pods anti-affinity rules",
        ));
    }
    for (key, groups) in &s.affinity {
        let ok = match node.domain(key) {
            None => false,
            Some(d) => s.first_of_group || present(groups, d),
        };
        if !ok {
            return Err(Unfit::unresolvable("node(s) didn't match pod affinity rules"));
        }
    }
    Ok(())
}

/// The summed weights of preferred terms (positive: affinity, negative: anti-affinity)
/// for the node's domains.
pub fn score(state: &CycleState, node: &NodeInfo) -> i64 {
    state
        .affinity
        .preferred
        .iter()
        .filter_map(|(key, scores)| node.domain(key).and_then(|d| scores.get(d)))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::super::testing::{cache, info, node, pod};
    use super::*;
    use serde_json::json;

    fn term(kind: &str, app: &str, key: &str) -> serde_json::Value {
        json!({"affinity": {kind: {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key}]}}})
    }

    #[test]
    fn required_affinity_and_anti_affinity_by_topology_domain() {
        let nodes = [
            node(
                "a1",
                "1",
                json!({"zone": "a", "kubernetes.io/hostname": "a1"}),
                json!({}),
            ),
            node(
                "a2",
                "1",
                json!({"zone": "a", "kubernetes.io/hostname": "a2"}),
                json!({}),
            ),
            node(
                "b1",
                "1",
                json!({"zone": "b", "kubernetes.io/hostname": "b1"}),
                json!({}),
            ),
            node("bare", "1", json!({}), json!({})),
        ];
        let db = pod("db", json!({"app": "db"}), json!({}));
        let c = cache(&nodes, &[(db, "a1")]);
        // (case, pod spec, pod labels, nodes that fit)
        let cases = [
            (
                "anti-affinity by host",
                term("podAntiAffinity", "db", "kubernetes.io/hostname"),
                json!({}),
                vec!["a2", "b1", "bare"],
            ),
            (
                "anti-affinity by zone",
                term("podAntiAffinity", "db", "zone"),
                json!({}),
                vec!["b1", "bare"],
            ),
            (
                "affinity by zone",
                term("podAffinity", "db", "zone"),
                json!({}),
                vec!["a1", "a2"],
            ),
            (
                "affinity to nobody",
                term("podAffinity", "cache", "zone"),
                json!({}),
                vec![],
            ),
            // The first pod of a group that wants to be together goes anywhere with the key.
            (
                "first of its group",
                term("podAffinity", "cache", "zone"),
                json!({"app": "cache"}),
                vec!["a1", "a2", "b1"],
            ),
        ];
        for (name, spec, labels, want) in cases {
            let state = CycleState::new(pod("p", labels, spec), &c);
            let fit: Vec<&str> = ["a1", "a2", "b1", "bare"]
                .into_iter()
                .filter(|n| filter(&state, info(&c, n)).is_ok())
                .collect();
            assert_eq!(fit, want, "{name}");
        }
    }

    #[test]
    fn placed_pods_anti_affinity_keeps_matching_pods_away() {
        let nodes = [
            node("a1", "1", json!({"zone": "a"}), json!({})),
            node("b1", "1", json!({"zone": "b"}), json!({})),
        ];
        let loner = pod("loner", json!({"app": "loner"}), term("podAntiAffinity", "web", "zone"));
        let c = cache(&nodes, &[(loner, "a1")]);
        let web = CycleState::new(pod("w", json!({"app": "web"}), json!({})), &c);
        let err = filter(&web, info(&c, "a1")).expect_err("kept away");
        assert_eq!(
            err.reasons,
            ["node(s) didn't satisfy existing pods anti-affinity rules"]
        );
        assert!(filter(&web, info(&c, "b1")).is_ok());
        let other = CycleState::new(pod("o", json!({"app": "other"}), json!({})), &c);
        assert!(filter(&other, info(&c, "a1")).is_ok());
    }

    #[test]
    fn other_namespaces_are_not_counted_unless_named() {
        let nodes = [node("a1", "1", json!({"zone": "a"}), json!({}))];
        let mut db = (*pod("db", json!({"app": "db"}), json!({}))).clone();
        db.namespace = "data".into();
        let c = cache(&nodes, &[(std::sync::Arc::new(db), "a1")]);
        let same_ns = CycleState::new(pod("p", json!({}), term("podAntiAffinity", "db", "zone")), &c);
        assert!(filter(&same_ns, info(&c, "a1")).is_ok());
        let named = CycleState::new(
            pod(
                "p",
                json!({}),
                json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone", "namespaces": ["data"]}]}}}),
            ),
            &c,
        );
        assert!(filter(&named, info(&c, "a1")).is_err());
    }

    #[test]
    fn preferred_terms_weigh_domains_both_ways() {
        let nodes = [
            node("a1", "1", json!({"zone": "a"}), json!({})),
            node("b1", "1", json!({"zone": "b"}), json!({})),
        ];
        let db = pod("db", json!({"app": "db"}), json!({}));
        let c = cache(&nodes, &[(db, "a1")]);
        let near = CycleState::new(
            pod(
                "p",
                json!({}),
                json!({"affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 50, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}}]}}}),
            ),
            &c,
        );
        assert_eq!(score(&near, info(&c, "a1")), 50);
        assert_eq!(score(&near, info(&c, "b1")), 0);
        let far = CycleState::new(
            pod(
                "p",
                json!({}),
                json!({"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 30, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}}]}}}),
            ),
            &c,
        );
        assert_eq!(score(&far, info(&c, "a1")), -30);
    }
}
