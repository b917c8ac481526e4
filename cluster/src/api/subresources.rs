//! Subresources that are views or actions rather than objects: `scale` (the
//! `autoscaling/v1` Scale of a Deployment or ReplicaSet), `binding` (the scheduler's
//! placement of a pod) and `eviction` (a policy/v1 Eviction: `kubectl drain`).

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::error::{ApiError, Cause};
use super::objects::{self, DeleteOptions, Mode, Request, Source, Target};
use super::write;
use super::AppState;

fn success(code: u16) -> Response {
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code});
    let http = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    (http, axum::Json(status)).into_response()
}

/// The `autoscaling/v1` Scale view of a Deployment or ReplicaSet.
pub fn scale_of(obj: &Value) -> Value {
    let meta = obj.get("metadata").cloned().unwrap_or_default();
    // A ReplicationController's selector is a plain map; the others' a LabelSelector.
    let selector = if obj.pointer("/spec/selector/matchLabels").is_some()
        || obj.pointer("/spec/selector/matchExpressions").is_some()
    {
        super::resources::cell::selector(obj, "/spec/selector")
    } else {
        super::resources::cell::map(obj, "/spec/selector")
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"), "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {
            "replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": if selector == "<none>" { json!("") } else { selector },
        },
    })
}

/// `GET`, `PUT` and `PATCH` of `<resource>/<name>/scale`.
pub async fn scale(state: &AppState, target: &Target, req: &Request) -> Result<Response, ApiError> {
    if req.method == Method::GET {
        let (obj, _) = objects::read(state, target.res, target.namespace.as_deref(), target.name()).await?;
        return Ok(axum::Json(scale_of(&obj)).into_response());
    }
    let body = req.json()?;
    let patch_type = match req.method {
        Method::PATCH => Some(objects::patch_kind(req.content_type())?),
        Method::PUT => None,
        _ => return Err(ApiError::MethodNotAllowed),
    };
    let change = |live: &Value| {
        let scale = match patch_type {
            Some(kind) => super::patch::patch(None, kind, &scale_of(live), &body)?,
            None => body.clone(),
        };
        let replicas = scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .ok_or_else(|| ApiError::Invalid {
                kind: "Scale.autoscaling".into(),
                name: target.name().to_string(),
                causes: vec![Cause::new("FieldValueRequired", "spec.replicas", "Required value")],
            })?;
        let mut out = live.clone();
        out["spec"]["replicas"] = json!(replicas);
        // The Scale's resourceVersion, if any, is the object's: keep it as a precondition.
        match super::admission::resource_version(&scale) {
            Some(rv) if patch_type.is_none() => out["metadata"]["resourceVersion"] = json!(rv),
            _ => {
                if let Some(m) = out.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
            }
        }
        Ok(out)
    };
    let opts = req.write_options()?;
    let updated = objects::update(state, target, Mode::Main, change, &opts).await?;
    Ok(axum::Json(scale_of(&updated.object)).into_response())
}

/// Binds a pod to a node (`pods/<name>/binding`): sets `spec.nodeName` once, with the
/// `PodScheduled` condition, in one write. The server makes this change itself: pod
/// validation, which forbids moving a pod through an update, does not apply.
pub async fn bind(state: &AppState, target: &Target, req: &Request) -> Result<Response, ApiError> {
    let binding = req.json()?;
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::Invalid {
            kind: "Binding".into(),
            name: target.name().to_string(),
            causes: vec![Cause::new("FieldValueRequired", "target.name", "Required value")],
        })?;
    let name = target.name();
    // The first try starts from the watch cache; a refusal decided on it is decided
    // again on the store's copy (see `objects::read_for_write`).
    let mut from = Source::Cache;
    for _attempt in 0..6 {
        let (live, rev, source) =
            objects::read_for_write(state, target.res, target.namespace.as_deref(), name, from).await?;
        from = Source::Store;
        let assigned = live
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        if source == Source::Cache && (assigned || objects::being_deleted(&live)) {
            continue;
        }
        if objects::being_deleted(&live) {
            return Err(ApiError::Conflict {
                kind: "pods/binding".into(),
                name: name.to_string(),
                message: format!("pod {name} is being deleted, cannot be assigned to a host"),
            });
        }
        if let Some(existing) = live
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            return Err(ApiError::Conflict {
                kind: "pods/binding".into(),
                name: name.to_string(),
                message: format!("pod {name} is already assigned to node \"{existing}\""),
            });
        }
        let mut pod = live.clone();
        pod["spec"]["nodeName"] = json!(node);
        let mut conds: Vec<Value> = pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c["type"] != "PodScheduled")
            .collect();
        conds.push(json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": crate::kinds::now()}));
        pod["status"]["conditions"] = json!(conds);
        match write::update(state, target.res, rev, &live, pod, &req.user, "create/binding").await {
            Ok(_) => return Ok(success(201)),
            Err(_) if source == Source::Cache => continue,
            Err(ApiError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::modified("pods", name))
}

/// `POST pods/<name>/eviction`: deletes the pod as its Eviction's delete options say
/// (no PodDisruptionBudgets are served, so every eviction is allowed).
pub async fn evict(state: &AppState, target: &Target, req: &Request) -> Result<Response, ApiError> {
    let eviction = req.json()?;
    let name = eviction
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !name.is_empty() && name != target.name() {
        return Err(ApiError::BadRequest(format!(
            "name in URL does not match name in Eviction object: {} != {name}",
            target.name()
        )));
    }
    let body = eviction.get("deleteOptions").cloned().unwrap_or_else(|| json!({}));
    let opts = DeleteOptions::from_parts(&body, &req.params)?;
    let pod = Target {
        res: target.res,
        namespace: target.namespace.clone(),
        name: target.name.clone(),
        sub: None,
    };
    objects::delete(state, &pod, &opts, &req.user).await?;
    Ok(success(201))
}
