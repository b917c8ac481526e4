//! NodeUnschedulable: a cordoned node (`spec.unschedulable`) takes only pods that
//! tolerate `node.kubernetes.io/unschedulable:NoSchedule`.

use k8s_openapi::api::core::v1::Taint;

use super::{taints, CycleState, NodeInfo, Unfit};

/// The taint a cordoned node is treated as having.
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// Fails on a cordoned node unless the pod tolerates the cordon.
pub fn filter(state: &CycleState, node: &NodeInfo) -> Result<(), Unfit> {
    if !node.unschedulable {
        return Ok(());
    }
    let cordon = Taint {
        key: UNSCHEDULABLE_TAINT.into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    if state.pod.tolerations.iter().any(|t| taints::tolerates(t, &cordon)) {
        return Ok(());
    }
    Err(Unfit::unresolvable("node(s) were unschedulable"))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{cache, info, node, pod};
    use super::*;
    use serde_json::json;

    #[test]
    fn cordoned_nodes_take_only_tolerating_pods() {
        let cases = [
            (json!({}), json!({}), true),
            (json!({"unschedulable": true}), json!({}), false),
            (
                json!({"unschedulable": true}),
                json!({"tolerations": [{"key": UNSCHEDULABLE_TAINT, "operator": "Exists", "effect": "NoSchedule"}]}),
                true,
            ),
        ];
        for (spec, pod_spec, fits) in cases {
            let c = cache(&[node("n", "1", json!({}), spec.clone())], &[]);
            let state = CycleState::new(pod("p", json!({}), pod_spec.clone()), &c);
            assert_eq!(filter(&state, info(&c, "n")).is_ok(), fits, "{spec} {pod_spec}");
        }
    }
}
