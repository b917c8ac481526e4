//! TaintToleration: a node's NoSchedule and NoExecute taints keep out pods that do not
//! tolerate them; untolerated PreferNoSchedule taints only lower the node's score.

use k8s_openapi::api::core::v1::{Taint, Toleration};

use super::{CycleState, NodeInfo, Unfit};

/// Whether `toleration` tolerates `taint` (Kubernetes' `ToleratesTaint`): an empty key
/// with `Exists` tolerates every taint, an empty effect every effect.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty()) {
        if effect != taint.effect {
            return false;
        }
    }
    let key = toleration.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            !key.is_empty() && toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

/// The first of `taints` with one of `effects` that no toleration tolerates.
pub fn untolerated<'a>(taints: &'a [Taint], tolerations: &[Toleration], effects: &[&str]) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| effects.contains(&t.effect.as_str()))
        .find(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
}

/// Fails on the first NoSchedule or NoExecute taint the pod does not tolerate.
pub fn filter(state: &CycleState, node: &NodeInfo) -> Result<(), Unfit> {
    match untolerated(&node.taints, &state.pod.tolerations, &["NoSchedule", "NoExecute"]) {
        None => Ok(()),
        Some(t) => Err(Unfit::unresolvable(format!(
            "node(s) had untolerated taint {{{}: {}}}",
            t.key,
            t.value.as_deref().unwrap_or("")
        ))),
    }
}

/// How many PreferNoSchedule taints the pod does not tolerate (fewer is better).
pub fn score(state: &CycleState, node: &NodeInfo) -> i64 {
    let prefer: Vec<&Toleration> = state
        .pod
        .tolerations
        .iter()
        .filter(|t| {
            t.effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == "PreferNoSchedule")
        })
        .collect();
    node.taints
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule")
        .filter(|t| !prefer.iter().any(|tol| tolerates(tol, t)))
        .count() as i64
}

#[cfg(test)]
mod tests {
    use super::super::testing::{cache, info, node, pod};
    use super::*;
    use serde_json::json;

    #[test]
    fn tolerations_match_taints_as_kubernetes_does() {
        let taint = |k: &str, v: &str, e: &str| Taint {
            key: k.into(),
            value: Some(v.into()),
            effect: e.into(),
            ..Default::default()
        };
        let tol = |v: serde_json::Value| -> Toleration { serde_json::from_value(v).expect("toleration") };
        let cases = [
            (
                json!({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}),
                taint("k", "v", "NoSchedule"),
                true,
            ),
            (json!({"key": "k", "value": "v"}), taint("k", "v", "NoExecute"), true),
            (
                json!({"key": "k", "value": "other"}),
                taint("k", "v", "NoSchedule"),
                false,
            ),
            (
                json!({"key": "k", "operator": "Exists"}),
                taint("k", "anything", "NoSchedule"),
                true,
            ),
            (json!({"operator": "Exists"}), taint("any", "v", "NoExecute"), true),
            (
                json!({"key": "k", "operator": "Exists", "effect": "NoExecute"}),
                taint("k", "v", "NoSchedule"),
                false,
            ),
            (
                json!({"key": "other", "operator": "Exists"}),
                taint("k", "v", "NoSchedule"),
                false,
            ),
        ];
        for (t, taint, want) in cases {
            assert_eq!(tolerates(&tol(t.clone()), &taint), want, "{t} vs {taint:?}");
        }
    }

    #[test]
    fn untolerated_taints_filter_and_prefer_no_schedule_scores() {
        let tainted = node(
            "t",
            "1",
            json!({}),
            json!({"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}),
        );
        let soft = node(
            "s",
            "1",
            json!({}),
            json!({"taints": [{"key": "spot", "effect": "PreferNoSchedule"}]}),
        );
        let c = cache(&[tainted, soft], &[]);
        let plain = CycleState::new(pod("p", json!({}), json!({})), &c);
        let err = filter(&plain, info(&c, "t")).expect_err("tainted");
        assert_eq!(err.reasons, ["node(s) had untolerated taint {dedicated: gpu}"]);
        assert!(err.unresolvable);
        assert!(
            filter(&plain, info(&c, "s")).is_ok(),
            "PreferNoSchedule does not filter"
        );
        assert_eq!(score(&plain, info(&c, "s")), 1);
        let tolerant = CycleState::new(
            pod(
                "q",
                json!({}),
                json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu"},
                {"key": "spot", "operator": "Exists", "effect": "PreferNoSchedule"}]}),
            ),
            &c,
        );
        assert!(filter(&tolerant, info(&c, "t")).is_ok());
        assert_eq!(score(&tolerant, info(&c, "s")), 0);
    }

    #[test]
    fn a_node_that_is_not_ready_is_tainted_so() {
        let mut n = node("n", "1", json!({}), json!({}));
        if let Some(s) = n.status.as_mut() {
            s.conditions = Some(vec![serde_json::from_value(
                json!({"type": "Ready", "status": "False"}),
            )
            .expect("c")]);
        }
        let c = cache(&[n], &[]);
        let state = CycleState::new(pod("p", json!({}), json!({})), &c);
        let err = filter(&state, info(&c, "n")).expect_err("not ready");
        assert_eq!(
            err.reasons,
            ["node(s) had untolerated taint {node.kubernetes.io/not-ready: }"]
        );
    }
}
