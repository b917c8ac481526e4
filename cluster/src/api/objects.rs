//! REST handlers for objects: get, list, create, update, patch, delete, and the `status`
//! and `binding` subresources. Reads and writes go to the store here and nowhere else.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::admission::{self, object_name};
use super::error::ApiError;
use super::patch::{self, PatchKind};
use super::registry::{self, ResourceInfo};
use super::selectors::{labels_of, FieldSelector, LabelSelector};
use super::{table, watch, AppState};
use crate::store::{Compare, Expect, KeyValue, Op, Txn};

/// What a request path addresses.
#[derive(Debug, Clone)]
pub struct Target {
    /// The resource.
    pub res: &'static ResourceInfo,
    /// The namespace from the path, if any.
    pub namespace: Option<String>,
    /// The object name, if the path names one.
    pub name: Option<String>,
    /// The subresource, if any.
    pub sub: Option<String>,
}

impl Target {
    /// Parses the part of a path after `/api/v1/` or `/apis/<group>/<version>/`.
    pub fn parse(group: &str, version: &str, rest: &str) -> Result<Self, ApiError> {
        let segs: Vec<&str> = rest.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
        let unknown = |plural: &str| ApiError::NotFound {
            kind: "resource".into(),
            name: plural.to_string(),
        };
        let lookup = |plural: &str| registry::by_plural(group, version, plural).ok_or_else(|| unknown(plural));
        let s = |i: usize| segs.get(i).map(|s| s.to_string());
        // `namespaces/<ns>/<plural>...` addresses namespaced objects, unless <plural> is not
        // a namespaced resource, in which case it is a namespace's own subresource.
        if segs.len() >= 3 && segs[0] == "namespaces" {
            if let Some(res) = registry::by_plural(group, version, segs[2]).filter(|r| r.namespaced) {
                if segs.len() > 5 {
                    return Err(unknown(rest));
                }
                return Ok(Target {
                    res,
                    namespace: s(1),
                    name: s(3),
                    sub: s(4),
                });
            }
        }
        match segs.as_slice() {
            [plural] | [plural, _] | [plural, _, _] => Ok(Target {
                res: lookup(plural)?,
                namespace: None,
                name: s(1),
                sub: s(2),
            }),
            _ => Err(unknown(rest)),
        }
    }

    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    fn key(&self) -> String {
        self.res.key(self.namespace.as_deref(), self.name())
    }
}

/// Request query parameters (all optional).
pub type Params = HashMap<String, String>;

/// Turns a stored value into the object a client sees (with its resourceVersion).
pub fn decode(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut obj: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::Internal(format!("stored object {} is not JSON: {e}", kv.key)))?;
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
    }
    Ok(obj)
}

/// Serializes an object for the store, without its resourceVersion (the store's revision is).
pub fn encode(obj: &Value) -> Result<Vec<u8>, ApiError> {
    let mut obj = obj.clone();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&obj).map_err(|e| ApiError::Internal(e.to_string()))
}

/// Sets the resourceVersion a write produced on the object returned to the client.
pub fn with_revision(mut obj: Value, revision: u64) -> Value {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(revision.to_string()));
    }
    obj
}

fn not_found(res: &ResourceInfo, name: &str) -> ApiError {
    ApiError::NotFound {
        kind: res.plural.to_string(),
        name: name.to_string(),
    }
}

/// Reads one object, with the revision of its last write.
pub async fn read(
    state: &AppState,
    res: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
) -> Result<(Value, u64), ApiError> {
    let kv = state
        .store
        .get(&res.key(ns, name))
        .await?
        .ok_or_else(|| not_found(res, name))?;
    Ok((decode(&kv)?, kv.mod_revision))
}

/// Whether a namespace exists.
pub async fn namespace_exists(state: &AppState, ns: &str) -> Result<bool, ApiError> {
    let res = registry::by_plural("", "v1", "namespaces").ok_or_else(|| ApiError::Internal("no namespaces".into()))?;
    Ok(state.store.get(&res.key(None, ns)).await?.is_some())
}

/// Commits one transaction, turning a failed compare into the matching API error.
pub async fn commit(state: &AppState, txn: Txn, describe: impl Fn(&str) -> (String, String)) -> Result<u64, ApiError> {
    let result = state.store.txn(txn).await?;
    if let Some((cmp, actual)) = result.failed {
        let (kind, name) = describe(&cmp.key);
        return Err(match cmp.expect {
            Expect::Absent => ApiError::AlreadyExists { kind, name },
            _ if actual == 0 => ApiError::NotFound { kind, name },
            _ => ApiError::modified(kind, name),
        });
    }
    Ok(result.revision)
}

/// Writes `obj` at `key` only while the key is still at revision `rev`.
pub fn replace_txn(key: String, rev: u64, obj: &Value) -> Result<Txn, ApiError> {
    Ok(Txn {
        compares: vec![Compare {
            key: key.clone(),
            expect: Expect::ModRevision(rev),
        }],
        ops: vec![Op::Put {
            key,
            value: encode(obj)?,
        }],
    })
}

fn describe_for(res: &'static ResourceInfo, name: String) -> impl Fn(&str) -> (String, String) {
    move |_| (res.plural.to_string(), name.clone())
}

/// Serves one request below `/api/v1/` or `/apis/<group>/<version>/`.
pub async fn handle(
    state: AppState,
    method: Method,
    target: Target,
    params: Params,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let wants_table = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"));
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    match (method.clone(), target.name.is_some(), target.sub.as_deref()) {
        (_, true, Some(sub)) if !target.res.subresources.contains(&sub) => Err(ApiError::NotFound {
            kind: format!("{}/{sub}", target.res.plural),
            name: target.name().to_string(),
        }),
        (Method::GET, false, None) => {
            let watching = params.get("watch").is_some_and(|w| w == "true" || w == "1");
            if watching {
                return watch::serve(state, target, params).await;
            }
            let list = list(&state, &target, &params).await?;
            if wants_table {
                return Ok(Json(table::table(target.res, &list)).into_response());
            }
            Ok(Json(list).into_response())
        }
        (Method::POST, false, None) => {
            let obj = parse_body(&body)?;
            let created = create(&state, &target, obj, WriteOptions::from_request(&params, &headers)?).await?;
            Ok((StatusCode::CREATED, Json(created)).into_response())
        }
        (Method::GET, true, None | Some("status")) => {
            let (obj, _) = read(&state, target.res, target.namespace.as_deref(), target.name()).await?;
            if wants_table {
                let list = json!({"items": [obj], "metadata": {}});
                return Ok(Json(table::table(target.res, &list)).into_response());
            }
            Ok(Json(obj).into_response())
        }
        (Method::PUT, true, sub @ (None | Some("status"))) => {
            let obj = parse_body(&body)?;
            Ok(Json(
                update(
                    &state,
                    &target,
                    sub == Some("status"),
                    |_| Ok(obj.clone()),
                    WriteOptions::from_request(&params, &headers)?,
                )
                .await?,
            )
            .into_response())
        }
        (Method::PATCH, true, sub @ (None | Some("status"))) => {
            let kind = patch_kind(content_type)?;
            let status_only = sub == Some("status");
            let (manager, force) = patch::patch_options(kind, &params, &headers)?;
            let mut opts = WriteOptions::from_request(&params, &headers)?;
            opts.manager = Some(manager);
            if kind == PatchKind::Apply {
                return server_apply(&state, &target, status_only, &body, force, opts).await;
            }
            let patch = parse_body(&body)?;
            let patched = update(
                &state,
                &target,
                status_only,
                |live| patch::patch(Some(target.res), kind, live, &patch),
                opts,
            );
            Ok(Json(patched.await?).into_response())
        }
        (Method::GET, true, Some("log")) => super::logs::proxy(&state, &target, &params).await,
        (Method::GET, true, Some("scale")) => {
            let (obj, _) = read(&state, target.res, target.namespace.as_deref(), target.name()).await?;
            Ok(Json(scale_of(&obj)).into_response())
        }
        (Method::PUT | Method::PATCH, true, Some("scale")) => {
            let body = parse_body(&body)?;
            let patch_type = if method == Method::PATCH {
                Some(patch_kind(content_type)?)
            } else {
                None
            };
            let change = |live: &Value| {
                let mut scale = scale_of(live);
                match patch_type {
                    Some(kind) => scale = patch::patch(None, kind, &scale, &body)?,
                    None => scale = body.clone(),
                }
                let replicas =
                    scale
                        .pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .ok_or_else(|| ApiError::Invalid {
                            kind: "Scale".into(),
                            name: target.name().to_string(),
                            causes: vec![super::error::Cause {
                                field: "spec.replicas".into(),
                                message: "Required value: an integer".into(),
                            }],
                        })?;
                let mut out = live.clone();
                out["spec"]["replicas"] = json!(replicas);
                // The Scale's resourceVersion, if any, is the object's: keep it as a precondition.
                match admission::resource_version(&scale) {
                    Some(rv) if patch_type.is_none() => out["metadata"]["resourceVersion"] = json!(rv),
                    _ => {
                        if let Some(m) = out.get_mut("metadata").and_then(Value::as_object_mut) {
                            m.remove("resourceVersion");
                        }
                    }
                }
                Ok(out)
            };
            let updated = update(
                &state,
                &target,
                false,
                change,
                WriteOptions::from_request(&params, &headers)?,
            )
            .await?;
            Ok(Json(scale_of(&updated)).into_response())
        }
        (Method::DELETE, true, None) => {
            let opts: Value = if body.is_empty() { json!({}) } else { parse_body(&body)? };
            Ok(Json(delete(&state, &target, &opts, WriteOptions::from_params(&params)).await?).into_response())
        }
        (Method::POST, true, Some("binding")) => {
            let binding = parse_body(&body)?;
            bind(&state, &target, &binding).await?;
            let ok = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
            Ok((StatusCode::CREATED, Json(ok)).into_response())
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// Options of a write, from its query parameters.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// `dryRun=All`: admit but do not store.
    pub dry_run: bool,
    /// `fieldValidation=Strict`: unknown fields are an error.
    pub fields: admission::FieldValidation,
    /// The field manager the write is recorded for in managedFields; `None` for a
    /// server-side apply, which records itself.
    pub manager: Option<String>,
}

impl WriteOptions {
    fn from_params(params: &Params) -> Self {
        WriteOptions {
            dry_run: params.get("dryRun").is_some_and(|d| d == "All"),
            fields: admission::FieldValidation::from_param(params.get("fieldValidation").map(String::as_str)),
            manager: None,
        }
    }

    /// The options of a write recorded in managedFields for its field manager.
    fn from_request(params: &Params, headers: &HeaderMap) -> Result<Self, ApiError> {
        Ok(WriteOptions {
            manager: Some(patch::field_manager(params, headers, "UpdateOptions")?),
            ..Self::from_params(params)
        })
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))
}

/// Lists objects as a `<Kind>List`, honouring selectors and `limit`/`continue`.
pub async fn list(state: &AppState, target: &Target, params: &Params) -> Result<Value, ApiError> {
    let labels = LabelSelector::parse(params.get("labelSelector").map(String::as_str).unwrap_or(""))?;
    let fields = FieldSelector::parse(params.get("fieldSelector").map(String::as_str).unwrap_or(""))?;
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let prefix = target.res.prefix(target.namespace.as_deref());
    let mut start_after = params.get("continue").filter(|c| !c.is_empty()).cloned();
    if start_after.as_ref().is_some_and(|c| !c.starts_with(&prefix)) {
        return Err(ApiError::BadRequest("invalid continue token".into()));
    }
    let mut items = Vec::new();
    let mut list_rev = None;
    let next = loop {
        let page = limit.map(|l| l - items.len());
        let (kvs, rev, more) = state.store.list(&prefix, start_after.as_deref(), page).await?;
        list_rev.get_or_insert(rev);
        for kv in &kvs {
            let obj = decode(kv)?;
            if labels.matches(&labels_of(&obj)) && fields.matches(&obj) {
                items.push(obj);
            }
        }
        start_after = kvs.last().map(|kv| kv.key.clone());
        if !more {
            break None;
        }
        if limit.is_some_and(|l| items.len() >= l) {
            break start_after;
        }
    };
    let mut metadata = json!({"resourceVersion": list_rev.unwrap_or(0).to_string()});
    if let Some(next) = next {
        metadata["continue"] = json!(next);
    }
    Ok(json!({
        "kind": format!("{}List", target.res.kind),
        "apiVersion": target.res.api_version(),
        "metadata": metadata,
        "items": items,
    }))
}

/// Creates an object; returns it as stored.
pub async fn create(state: &AppState, target: &Target, obj: Value, opts: WriteOptions) -> Result<Value, ApiError> {
    let submitted = obj.clone();
    let mut obj = admission::admit_create(target.res, target.namespace.as_deref(), obj, opts.fields)?;
    patch::track(target.res, None, &submitted, &mut obj, opts.manager.as_deref(), false);
    let (name, ns) = object_name(&obj);
    if let Some(ns) = &ns {
        if !namespace_exists(state, ns).await? {
            return Err(ApiError::NotFound {
                kind: "namespaces".into(),
                name: ns.clone(),
            });
        }
    }
    if opts.dry_run {
        return Ok(obj);
    }
    let key = target.res.key(ns.as_deref(), &name);
    let txn = Txn {
        compares: vec![Compare {
            key: key.clone(),
            expect: Expect::Absent,
        }],
        ops: vec![Op::Put {
            key,
            value: encode(&obj)?,
        }],
    };
    let rev = commit(state, txn, describe_for(target.res, name.clone())).await?;
    tracing::debug!(object = %format!("{}/{}", target.res.plural, name), revision = rev, "created");
    Ok(with_revision(obj, rev))
}

/// Replaces an object with what `change` makes of the live one; retries on a concurrent
/// write when the client gave no resourceVersion of its own.
pub async fn update(
    state: &AppState,
    target: &Target,
    status_only: bool,
    change: impl Fn(&Value) -> Result<Value, ApiError>,
    opts: WriteOptions,
) -> Result<Value, ApiError> {
    for _attempt in 0..5 {
        let (live, rev) = read(state, target.res, target.namespace.as_deref(), target.name()).await?;
        let desired = change(&live)?;
        let pinned = admission::resource_version(&desired).is_some();
        let mut obj = if status_only {
            admission::admit_status(target.res, &live, &desired)?
        } else {
            admission::admit_update(target.res, &live, desired.clone(), opts.fields)?
        };
        patch::track(
            target.res,
            Some(&live),
            &desired,
            &mut obj,
            opts.manager.as_deref(),
            status_only,
        );
        // Nothing changed: no write and no new resourceVersion, as in Kubernetes.
        if with_revision(obj.clone(), rev) == live {
            return Ok(live);
        }
        if opts.dry_run {
            return Ok(with_revision(obj, rev));
        }
        let txn = replace_txn(target.key(), rev, &obj)?;
        match commit(state, txn, describe_for(target.res, target.name().to_string())).await {
            Ok(new_rev) => return Ok(with_revision(obj, new_rev)),
            Err(ApiError::Conflict { .. }) if !pinned => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::Conflict {
        kind: target.res.plural.to_string(),
        name: target.name().to_string(),
        message: "too many concurrent writes; try again".into(),
    })
}

/// Deletes an object (immediately); returns it as it was.
pub async fn delete(state: &AppState, target: &Target, opts: &Value, write: WriteOptions) -> Result<Value, ApiError> {
    let (live, rev) = read(state, target.res, target.namespace.as_deref(), target.name()).await?;
    if let Some(want) = opts.pointer("/preconditions/resourceVersion").and_then(Value::as_str) {
        if want != rev.to_string() {
            return Err(ApiError::Conflict {
                kind: target.res.plural.to_string(),
                name: target.name().to_string(),
                message: format!("Precondition failed: ResourceVersion in precondition: {want}, in object: {rev}"),
            });
        }
    }
    if let Some(want) = opts.pointer("/preconditions/uid").and_then(Value::as_str) {
        if Some(want) != live.pointer("/metadata/uid").and_then(Value::as_str) {
            return Err(ApiError::Conflict {
                kind: target.res.plural.to_string(),
                name: target.name().to_string(),
                message: format!("Precondition failed: UID in precondition: {want}"),
            });
        }
    }
    if write.dry_run {
        return Ok(live);
    }
    let key = target.key();
    let txn = Txn {
        compares: vec![Compare {
            key: key.clone(),
            expect: Expect::ModRevision(rev),
        }],
        ops: vec![Op::Delete { key }],
    };
    let new_rev = commit(state, txn, describe_for(target.res, target.name().to_string())).await?;
    Ok(with_revision(live, new_rev))
}

/// Binds a pod to a node (`pods/<name>/binding`): sets `spec.nodeName` once.
async fn bind(state: &AppState, target: &Target, binding: &Value) -> Result<(), ApiError> {
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::Invalid {
            kind: "Binding".into(),
            name: target.name().to_string(),
            causes: vec![super::error::Cause {
                field: "target.name".into(),
                message: "Required value".into(),
            }],
        })?;
    let (mut pod, rev) = read(state, target.res, target.namespace.as_deref(), target.name()).await?;
    if let Some(existing) = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        return Err(ApiError::Conflict {
            kind: "pods/binding".into(),
            name: target.name().to_string(),
            message: format!("pod {} is already assigned to node \"{existing}\"", target.name()),
        });
    }
    pod["spec"]["nodeName"] = json!(node);
    if let Some(conds) = pod.pointer_mut("/status/conditions").and_then(Value::as_array_mut) {
        conds.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
    }
    let scheduled = json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": crate::kinds::now()});
    match pod.pointer_mut("/status/conditions").and_then(Value::as_array_mut) {
        Some(conds) => conds.push(scheduled),
        None => pod["status"]["conditions"] = json!([scheduled]),
    }
    let txn = replace_txn(target.key(), rev, &pod)?;
    commit(state, txn, describe_for(target.res, target.name().to_string())).await?;
    Ok(())
}

/// The `autoscaling/v1` Scale view of a Deployment or ReplicaSet.
fn scale_of(obj: &Value) -> Value {
    let meta = obj.get("metadata").cloned().unwrap_or_default();
    let labels = obj.pointer("/spec/selector/matchLabels").and_then(Value::as_object);
    let selector = labels
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect::<Vec<_>>();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"), "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector.join(",")},
    })
}

fn patch_kind(content_type: &str) -> Result<PatchKind, ApiError> {
    PatchKind::from_content_type(content_type)
        .ok_or_else(|| ApiError::UnsupportedMediaType(format!("the patch type {content_type} is not supported")))
}

/// Server-side apply (PATCH `application/apply-patch+yaml`): updates the object, or creates
/// it (201) if it does not exist. `opts.manager` is the applier.
async fn server_apply(
    state: &AppState,
    target: &Target,
    status_only: bool,
    body: &[u8],
    force: bool,
    mut opts: WriteOptions,
) -> Result<Response, ApiError> {
    let manager = opts.manager.take().unwrap_or_default();
    let request = patch::ApplyRequest {
        body,
        manager: &manager,
        force,
        status: status_only,
        strict: opts.fields == admission::FieldValidation::Strict,
        name: target.name(),
        namespace: target.namespace.as_deref(),
    };
    let apply = |live: &Value| patch::server_apply(target.res, Some(live), &request);
    match update(state, target, status_only, apply, opts.clone()).await {
        Err(ApiError::NotFound { .. }) if !status_only => {
            let obj = patch::server_apply(target.res, None, &request)?;
            let created = create(state, target, obj, opts).await?;
            Ok((StatusCode::CREATED, Json(created)).into_response())
        }
        updated => Ok(Json(updated?).into_response()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_to_resources() {
        let t = Target::parse("", "v1", "namespaces/default/pods/web/status").unwrap();
        assert_eq!(
            (t.res.kind, t.namespace.as_deref(), t.name.as_deref(), t.sub.as_deref()),
            ("Pod", Some("default"), Some("web"), Some("status"))
        );
        let t = Target::parse("", "v1", "namespaces/default/status").unwrap();
        assert_eq!(
            (t.res.kind, t.name.as_deref(), t.sub.as_deref()),
            ("Namespace", Some("default"), Some("status"))
        );
        let t = Target::parse("", "v1", "namespaces/default").unwrap();
        assert_eq!((t.res.kind, t.name.as_deref()), ("Namespace", Some("default")));
        let t = Target::parse("apps", "v1", "deployments").unwrap();
        assert_eq!((t.res.kind, t.namespace), ("Deployment", None));
        assert!(Target::parse("", "v1", "widgets").is_err());
    }
}
