//! NodeName, nodeSelector and NodeAffinity: the nodes a pod asks for by name, by labels,
//! and by node selector terms (In, NotIn, Exists, DoesNotExist, Gt, Lt; `matchFields` on
//! `metadata.name`); preferred terms add their weights to a node's score.

use k8s_openapi::api::core::v1::{NodeSelector, NodeSelectorRequirement, NodeSelectorTerm};

use super::super::pod_info::{Labels, PodInfo};
use super::{CycleState, NodeInfo, Unfit};

/// Whether a requirement holds for a value (`None`: the label or field is absent).
fn requirement(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), Some(bound)) = (value.and_then(number), values.first().and_then(|b| number(b))) else {
                return false;
            };
            if req.operator == "Gt" {
                have > bound
            } else {
                have < bound
            }
        }
        _ => false,
    }
}

/// Whether one node selector term holds; a term with no requirements matches nothing.
pub fn term_matches(term: &NodeSelectorTerm, name: &str, labels: &Labels) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement(r, labels.get(&r.key).map(String::as_str)))
        && fields
            .iter()
            .all(|r| requirement(r, (r.key == "metadata.name").then_some(name)))
}

/// Whether a node selector (terms ORed) selects the node.
pub fn selector_matches(selector: &NodeSelector, name: &str, labels: &Labels) -> bool {
    selector
        .node_selector_terms
        .iter()
        .any(|t| term_matches(t, name, labels))
}

/// Whether the pod's `nodeSelector` and required node affinity both accept the node.
pub fn pod_accepts(pod: &PodInfo, node: &NodeInfo) -> bool {
    pod.node_selector.iter().all(|(k, v)| node.labels.get(k) == Some(v))
        && pod
            .required_node_affinity
            .as_ref()
            .is_none_or(|s| selector_matches(s, &node.name, &node.labels))
}

/// Fails on a node the pod does not ask for by name (`spec.nodeName`).
pub fn node_name_filter(state: &CycleState, node: &NodeInfo) -> Result<(), Unfit> {
    match state.pod.node_name.as_deref() {
        Some(want) if want != node.name => Err(Unfit::unresolvable("node(s) didn't match the requested node name")),
        _ => Ok(()),
    }
}

/// Fails on a node the pod's nodeSelector or required node affinity excludes.
pub fn filter(state: &CycleState, node: &NodeInfo) -> Result<(), Unfit> {
    if pod_accepts(&state.pod, node) {
        Ok(())
    } else {
        Err(Unfit::unresolvable("node(s) didn't match Pod's node affinity/selector"))
    }
}

/// The sum of the weights of the preferred terms the node matches.
pub fn score(state: &CycleState, node: &NodeInfo) -> i64 {
    state
        .pod
        .preferred_node_affinity
        .iter()
        .filter(|p| term_matches(&p.preference, &node.name, &node.labels))
        .map(|p| i64::from(p.weight))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::super::testing::{cache, info, node, pod};
    use super::*;
    use serde_json::json;

    fn affinity(terms: serde_json::Value) -> serde_json::Value {
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}})
    }

    #[test]
    fn node_selector_and_required_affinity_operators() {
        let n = node("n1", "1", json!({"disk": "ssd", "zone": "a", "cores": "8"}), json!({}));
        let c = cache(&[n], &[]);
        let expr = |key: &str, op: &str, values: serde_json::Value| {
            affinity(json!([{"matchExpressions": [{"key": key, "operator": op, "values": values}]}]))
        };
        let cases = [
            ("no constraints", json!({}), true),
            ("nodeSelector match", json!({"nodeSelector": {"disk": "ssd"}}), true),
            ("nodeSelector mismatch", json!({"nodeSelector": {"disk": "hdd"}}), false),
            ("In", expr("zone", "In", json!(["a", "b"])), true),
            ("In misses", expr("zone", "In", json!(["b"])), false),
            ("NotIn", expr("zone", "NotIn", json!(["b"])), true),
            ("NotIn of an absent label", expr("gpu", "NotIn", json!(["x"])), true),
            ("Exists", expr("disk", "Exists", json!(null)), true),
            ("DoesNotExist", expr("disk", "DoesNotExist", json!(null)), false),
            ("Gt", expr("cores", "Gt", json!(["4"])), true),
            ("Gt fails", expr("cores", "Gt", json!(["8"])), false),
            ("Lt", expr("cores", "Lt", json!(["16"])), true),
            ("Gt of a non-number", expr("zone", "Gt", json!(["1"])), false),
            (
                "terms are ORed",
                affinity(
                    json!([{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z"]}]},
                {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}]),
                ),
                true,
            ),
            ("an empty term matches nothing", affinity(json!([{}])), false),
            (
                "matchFields on the name",
                affinity(json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}])),
                true,
            ),
            (
                "matchFields on another name",
                affinity(json!([{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]}])),
                false,
            ),
        ];
        for (name, spec, fits) in cases {
            let state = CycleState::new(pod("p", json!({}), spec), &c);
            let got = filter(&state, info(&c, "n1"));
            assert_eq!(got.is_ok(), fits, "{name}");
            if let Err(e) = got {
                assert_eq!(e.reasons, ["node(s) didn't match Pod's node affinity/selector"]);
            }
        }
    }

    #[test]
    fn node_name_and_preferred_weights() {
        let c = cache(
            &[
                node("a", "1", json!({"zone": "a"}), json!({})),
                node("b", "1", json!({"zone": "b"}), json!({})),
            ],
            &[],
        );
        let named = CycleState::new(pod("p", json!({}), json!({"nodeName": "a"})), &c);
        assert!(node_name_filter(&named, info(&c, "a")).is_ok());
        assert!(node_name_filter(&named, info(&c, "b")).is_err());
        let preferring = CycleState::new(
            pod(
                "p",
                json!({}),
                json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 80, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}},
                {"weight": 20, "preference": {"matchExpressions": [{"key": "zone", "operator": "Exists"}]}}]}}}),
            ),
            &c,
        );
        assert_eq!(score(&preferring, info(&c, "a")), 20);
        assert_eq!(score(&preferring, info(&c, "b")), 100);
    }
}
