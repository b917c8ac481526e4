//! NodeResourcesFit and NodeResourcesBalancedAllocation: the node has room for the
//! pod's requests and one more pod; emptier and evenly loaded nodes score higher.

use std::borrow::Cow;

use super::{CycleState, NodeInfo, Unfit};

/// Fails with every resource the node lacks ("Insufficient cpu", "Too many pods").
pub fn filter(state: &CycleState, node: &NodeInfo) -> Result<(), Unfit> {
    let want = &state.pod.requests;
    let (alloc, used) = (&node.allocatable, &node.requested);
    let mut reasons: Vec<Cow<'static, str>> = Vec::new();
    if node.pod_count as i64 + 1 > node.allowed_pods {
        reasons.push("Too many pods".into());
    }
    // A zero request is never refused, even on a node that is already over-committed.
    let short = |want: i64, alloc: i64, used: i64| want > 0 && want > alloc - used;
    if short(want.milli_cpu, alloc.milli_cpu, used.milli_cpu) {
        reasons.push("Insufficient cpu".into());
    }
    if short(want.memory, alloc.memory, used.memory) {
        reasons.push("Insufficient memory".into());
    }
    if short(want.ephemeral_storage, alloc.ephemeral_storage, used.ephemeral_storage) {
        reasons.push("Insufficient ephemeral-storage".into());
    }
    for (name, amount) in &want.scalar {
        let have = alloc.scalar.get(name).copied().unwrap_or(0);
        let taken = used.scalar.get(name).copied().unwrap_or(0);
        if short(*amount, have, taken) {
            reasons.push(format!("Insufficient {name}").into());
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(Unfit {
            reasons,
            unresolvable: false,
        })
    }
}

/// The share of cpu and of memory left free with the pod placed, averaged (0..=100).
pub fn least_allocated(state: &CycleState, node: &NodeInfo) -> i64 {
    let (cpu, mem) = with_pod(state, node);
    let free = |used: i64, total: i64| {
        if total <= 0 || used > total {
            0
        } else {
            (total - used) * 100 / total
        }
    };
    (free(cpu, node.allocatable.milli_cpu) + free(mem, node.allocatable.memory)) / 2
}

/// How evenly cpu and memory would be used with the pod placed: 100 when both are the
/// same share of the node, lower as they diverge.
pub fn balanced_allocation(state: &CycleState, node: &NodeInfo) -> i64 {
    let (cpu, mem) = with_pod(state, node);
    let share = |used: i64, total: i64| {
        if total <= 0 {
            1.0
        } else {
            (used as f64 / total as f64).min(1.0)
        }
    };
    let (c, m) = (
        share(cpu, node.allocatable.milli_cpu),
        share(mem, node.allocatable.memory),
    );
    // The standard deviation of two shares is half their difference.
    let std = (c - m).abs() / 2.0;
    ((1.0 - std) * 100.0) as i64
}

/// The node's cpu and memory in use (missing requests counted as defaults) plus the pod's.
fn with_pod(state: &CycleState, node: &NodeInfo) -> (i64, i64) {
    (
        node.non_zero_requested.0 + state.pod.non_zero.0,
        node.non_zero_requested.1 + state.pod.non_zero.1,
    )
}

#[cfg(test)]
mod tests {
    use super::super::super::pod_info::PodRef;
    use super::super::testing::{cache, info, node, pod, pod_cpu};
    use super::*;
    use serde_json::json;

    #[test]
    fn fit_counts_integer_millicores_memory_pods_and_extended_resources() {
        let gpu = |n: &str| {
            pod(
                "g",
                json!({}),
                json!({"containers": [{"name": "c", "resources": {"requests": {"example.com/gpu": n}}}]}),
            )
        };
        let mut gpu_node = node("n", "300m", json!({}), json!({}));
        if let Some(s) = gpu_node.status.as_mut().and_then(|s| s.allocatable.as_mut()) {
            s.insert(
                "example.com/gpu".into(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("2".into()),
            );
        }
        type Case<'a> = (&'a str, Vec<(PodRef, &'a str)>, PodRef, Result<(), Vec<&'a str>>);
        let cases: Vec<Case> = vec![
            (
                "three 100m pods fill 300m exactly",
                vec![(pod_cpu("a", "100m"), "n"), (pod_cpu("b", "0.1"), "n")],
                pod_cpu("p", "100m"),
                Ok(()),
            ),
            (
                "one millicore too many",
                vec![(pod_cpu("a", "200m"), "n")],
                pod_cpu("p", "101m"),
                Err(vec!["Insufficient cpu"]),
            ),
            (
                "a pod without requests always fits",
                vec![(pod_cpu("a", "300m"), "n")],
                pod_cpu("p", "0"),
                Ok(()),
            ),
            (
                "memory",
                vec![],
                pod(
                    "p",
                    json!({}),
                    json!({"containers": [{"name": "c", "resources": {"requests": {"memory": "5Gi"}}}]}),
                ),
                Err(vec!["Insufficient memory"]),
            ),
            ("extended resource fits", vec![(gpu("1"), "n")], gpu("1"), Ok(())),
            (
                "extended resource short",
                vec![(gpu("2"), "n")],
                gpu("1"),
                Err(vec!["Insufficient example.com/gpu"]),
            ),
        ];
        for (name, placed, incoming, want) in cases {
            let c = cache(std::slice::from_ref(&gpu_node), &placed);
            let state = CycleState::new(incoming, &c);
            let got =
                filter(&state, info(&c, "n")).map_err(|u| u.reasons.iter().map(|r| r.to_string()).collect::<Vec<_>>());
            assert_eq!(
                got,
                want.map_err(|v| v.into_iter().map(String::from).collect()),
                "{name}"
            );
        }
    }

    #[test]
    fn a_full_node_reports_too_many_pods() {
        let n = node("n", "10", json!({}), json!({}));
        let placed: Vec<_> = (0..10).map(|i| (pod_cpu(&format!("p{i}"), "1m"), "n")).collect();
        let c = cache(&[n], &placed);
        let state = CycleState::new(pod_cpu("new", "1m"), &c);
        let err = filter(&state, info(&c, "n")).expect_err("full");
        assert_eq!(err.reasons, ["Too many pods"]);
        assert!(!err.unresolvable);
    }

    #[test]
    fn emptier_and_balanced_nodes_score_higher() {
        let nodes = [
            node("empty", "4", json!({}), json!({})),
            node("busy", "4", json!({}), json!({})),
        ];
        let c = cache(&nodes, &[(pod_cpu("a", "3"), "busy")]);
        let state = CycleState::new(pod_cpu("p", "500m"), &c);
        assert!(least_allocated(&state, info(&c, "empty")) > least_allocated(&state, info(&c, "busy")));
        // busy: cpu 3.5/4 used against memory 400Mi/4Gi: unbalanced.
        assert!(balanced_allocation(&state, info(&c, "empty")) > balanced_allocation(&state, info(&c, "busy")));
    }
}
