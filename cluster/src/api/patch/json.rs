//! The two RFC patch formats: JSON merge patch (RFC 7386, `application/merge-patch+json`)
//! and JSON patch (RFC 6902, `application/json-patch+json`, every operation including
//! `test`, `move` and `copy`, through the `json-patch` crate).

use serde_json::{json, Value};

/// kube-apiserver's limit on the operations of one JSON patch.
pub const MAX_OPERATIONS: usize = 10_000;

/// Why a JSON patch cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum JsonPatchError {
    /// The body is not a list of operations.
    #[error("invalid JSON patch: {0}")]
    Malformed(#[from] serde_json::Error),
    /// More operations than kube-apiserver accepts.
    #[error("the allowed maximum operations in a JSON patch is {MAX_OPERATIONS}, got {0}")]
    TooManyOperations(usize),
    /// An operation failed: a `test` that did not match, a path that does not exist.
    #[error("{0}")]
    Failed(#[from] json_patch::PatchError),
}

/// RFC 7386: objects merge recursively, `null` removes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(target) = target else { return };
    for (k, v) in patch {
        if v.is_null() {
            target.remove(k);
        } else {
            merge_patch(target.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// RFC 6902: applies the operations in order; all or nothing.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, JsonPatchError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())?;
    if ops.0.len() > MAX_OPERATIONS {
        return Err(JsonPatchError::TooManyOperations(ops.0.len()));
    }
    // Work on a copy: a failed patch leaves nothing half-done to undo.
    let mut out = target.clone();
    json_patch::patch_unsafe(&mut out, &ops)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc7386() {
        // The examples of RFC 7386's appendix A, and its worked example.
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "b"}), json!({"b": "c"}), json!({"a": "b", "b": "c"})),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (json!({"a": "b", "b": "c"}), json!({"a": null}), json!({"b": "c"})),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (json!({"a": [{"b": "c"}]}), json!({"a": [1]}), json!({"a": [1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (json!({"e": null}), json!({"a": 1}), json!({"e": null, "a": 1})),
            (json!([1, 2]), json!({"a": "b", "c": null}), json!({"a": "b"})),
            (json!({}), json!({"a": {"bb": {"ccc": null}}}), json!({"a": {"bb": {}}})),
            (
                json!({"a": {"b": 1, "c": 2}, "d": [1]}),
                json!({"a": {"b": null, "e": 3}, "d": [2]}),
                json!({"a": {"c": 2, "e": 3}, "d": [2]}),
            ),
        ];
        for (target, patch, want) in cases {
            let mut got = target.clone();
            merge_patch(&mut got, &patch);
            assert_eq!(got, want, "{target} + {patch}");
        }
    }

    #[test]
    fn json_patch_runs_every_operation() {
        let doc = json!({"spec": {"replicas": 1, "list": ["a", "b"]}, "metadata": {"labels": {"x": "1"}}});
        let cases = [
            (
                json!([{"op": "add", "path": "/spec/paused", "value": true}]),
                json!(true),
                "/spec/paused",
            ),
            (
                json!([{"op": "add", "path": "/spec/list/1", "value": "z"}]),
                json!(["a", "z", "b"]),
                "/spec/list",
            ),
            (
                json!([{"op": "add", "path": "/spec/list/-", "value": "c"}]),
                json!(["a", "b", "c"]),
                "/spec/list",
            ),
            (
                json!([{"op": "remove", "path": "/metadata/labels/x"}]),
                json!({}),
                "/metadata/labels",
            ),
            (
                json!([{"op": "replace", "path": "/spec/replicas", "value": 3}]),
                json!(3),
                "/spec/replicas",
            ),
            (
                json!([{"op": "move", "from": "/metadata/labels/x", "path": "/metadata/labels/y"}]),
                json!({"y": "1"}),
                "/metadata/labels",
            ),
            (
                json!([{"op": "copy", "from": "/spec/replicas", "path": "/spec/minReadySeconds"}]),
                json!(1),
                "/spec/minReadySeconds",
            ),
            (
                json!([{"op": "test", "path": "/spec/replicas", "value": 1}, {"op": "replace", "path": "/spec/replicas", "value": 2}]),
                json!(2),
                "/spec/replicas",
            ),
        ];
        for (patch, want, at) in cases {
            let got = json_patch(&doc, &patch).unwrap_or_else(|e| panic!("{patch}: {e}"));
            assert_eq!(got.pointer(at), Some(&want), "{patch}");
        }
    }

    #[test]
    fn json_patch_fails_whole() {
        let doc = json!({"spec": {"replicas": 1}});
        let failed_test = json!([
            {"op": "replace", "path": "/spec/replicas", "value": 5},
            {"op": "test", "path": "/spec/replicas", "value": 1},
        ]);
        assert!(matches!(json_patch(&doc, &failed_test), Err(JsonPatchError::Failed(_))));
        let missing = json!([{"op": "remove", "path": "/spec/nothing"}]);
        assert!(matches!(json_patch(&doc, &missing), Err(JsonPatchError::Failed(_))));
        let malformed = json!([{"op": "frobnicate", "path": "/spec"}]);
        assert!(matches!(
            json_patch(&doc, &malformed),
            Err(JsonPatchError::Malformed(_))
        ));
        assert!(matches!(
            json_patch(&doc, &json!({"op": "add"})),
            Err(JsonPatchError::Malformed(_))
        ));
        let many = Value::Array(vec![
            json!({"op": "test", "path": "/spec", "value": {}});
            MAX_OPERATIONS + 1
        ]);
        assert!(matches!(
            json_patch(&doc, &many),
            Err(JsonPatchError::TooManyOperations(_))
        ));
    }
}
