//! REST handlers for objects: get, list, watch, create, update, patch, delete and
//! deletecollection, and the routing of subresources. Reads of one object go to the store
//! (linearizable); lists and watches are served by the watch cache.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::admission::{self, object_name, Admitted, FieldValidation};
use super::auth::UserInfo;
use super::cache::{CachedObject, Filter, ReadAt};
use super::error::ApiError;
use super::patch::{self, PatchKind};
use super::registry::{self, ResourceInfo};
use super::selectors::{FieldSelector, LabelSelector};
use super::write::{self, Outcome, WriteSet};
use super::{subresources, table, watch, AppState};
use crate::store::KeyValue;

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

    /// The object name ("" for a collection).
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    /// The store key of the addressed object.
    pub fn key(&self) -> String {
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
    serde_json::to_vec(&WithoutRevision(obj)).map_err(|e| ApiError::Internal(e.to_string()))
}

/// An object serialized as is but for `metadata.resourceVersion`, which it leaves out
/// (without copying the object to remove it: this runs on every write).
struct WithoutRevision<'a>(&'a Value);

impl serde::Serialize for WithoutRevision<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Value::Object(top) = self.0 else {
            return self.0.serialize(serializer);
        };
        let mut map = serializer.serialize_map(Some(top.len()))?;
        for (k, v) in top {
            match v {
                Value::Object(meta) if k == "metadata" => {
                    map.serialize_key(k)?;
                    map.serialize_value(&Filtered(meta))?;
                }
                _ => map.serialize_entry(k, v)?,
            }
        }
        map.end()
    }
}

/// A metadata map without its `resourceVersion`.
struct Filtered<'a>(&'a serde_json::Map<String, Value>);

impl serde::Serialize for Filtered<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().filter(|(k, _)| k.as_str() != "resourceVersion"))
    }
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
        kind: res.qualified_plural(),
        name: name.to_string(),
    }
}

/// Reads one object (linearizable), with the revision of its last write.
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

/// Where a write's copy of the live object came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The watch cache: no quorum round, and possibly behind the store.
    Cache,
    /// A linearizable read of the store.
    Store,
}

/// The live object a write starts from, with its revision and where it came from.
///
/// As kube-apiserver's GuaranteedUpdate starts from the cacher's copy, a first try reads
/// the watch cache (a linearizable read costs a quorum round per request). The write's
/// compare on the revision refuses a stale copy; whatever else is decided on a cached
/// copy without a write (an error, a no-op) must be decided again on `Source::Store`.
pub async fn read_for_write(
    state: &AppState,
    res: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
    from: Source,
) -> Result<(Value, u64, Source), ApiError> {
    if from == Source::Cache {
        if let Some(obj) = cached(state, res, ns, name).await? {
            return Ok((obj.value()?, obj.revision, Source::Cache));
        }
    }
    let (live, rev) = read(state, res, ns, name).await?;
    Ok((live, rev, Source::Store))
}

/// The watch cache's copy of an object, without waiting for the newest revision; `None`
/// when it has none (or `res` has no cache).
async fn cached(
    state: &AppState,
    res: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
) -> Result<Option<Arc<CachedObject>>, ApiError> {
    let Ok(cache) = state.caches.get(res) else {
        return Ok(None);
    };
    cache.prepare(&state.store, ReadAt::Any).await?;
    cache.get(&res.key(ns, name))
}

/// Whether `obj` is being deleted: it carries a (non-null) deletionTimestamp.
pub fn being_deleted(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null())
}

/// Whether the namespace `ns` exists, and if so whether it is being deleted: from the
/// watch cache, as Kubernetes' NamespaceLifecycle admission reads its informer, or from
/// the store when the cache does not have it (yet). The cached copy is not decoded: this
/// runs on every create.
pub async fn namespace_deleting(state: &AppState, ns: &str) -> Result<Option<bool>, ApiError> {
    let res = registry::by_plural("", "v1", "namespaces").ok_or_else(|| ApiError::Internal("no namespaces".into()))?;
    if let Some(obj) = cached(state, res, None, ns).await? {
        return Ok(Some(obj.deleting()));
    }
    match read(state, res, None, ns).await {
        Ok((obj, _)) => Ok(Some(being_deleted(&obj))),
        Err(ApiError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Refuses new objects in a namespace that does not exist or is being deleted.
pub async fn check_namespace_open(state: &AppState, res: &ResourceInfo, ns: &str, name: &str) -> Result<(), ApiError> {
    match namespace_deleting(state, ns).await? {
        None => Err(ApiError::NotFound {
            kind: "namespaces".into(),
            name: ns.to_string(),
        }),
        Some(true) => Err(ApiError::Forbidden(format!(
            "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
            res.qualified_plural()
        ))),
        Some(false) => Ok(()),
    }
}

/// How a response body is shaped, from the request's `Accept` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The objects themselves.
    Full,
    /// A `meta.k8s.io/v1` Table (`kubectl get`).
    Table,
    /// `PartialObjectMetadata` (metadata-only clients such as the garbage collector).
    Metadata,
}

impl Shape {
    /// The shape the client asked for.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let accept = headers
            .get(axum::http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        // The first acceptable media type wins, as the client orders its preference.
        for part in accept.split(',') {
            if part.contains("as=Table") {
                return Shape::Table;
            }
            if part.contains("as=PartialObjectMetadata") {
                return Shape::Metadata;
            }
            if part.trim_start().starts_with("application/json") || part.contains("*/*") {
                return Shape::Full;
            }
        }
        Shape::Full
    }
}

/// Everything a handler needs to know of a request besides its target.
pub struct Request {
    /// The method.
    pub method: Method,
    /// Query parameters.
    pub params: Params,
    /// Headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// Who asks.
    pub user: Arc<UserInfo>,
}

impl Request {
    /// The `Content-Type` (JSON when absent).
    pub fn content_type(&self) -> &str {
        self.headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
    }

    /// The body as a JSON value.
    pub fn json(&self) -> Result<Value, ApiError> {
        parse_body(&self.body)
    }

    /// Write options from the query parameters and the user.
    pub fn write_options(&self) -> Result<WriteOptions, ApiError> {
        let manager = Some(patch::field_manager(&self.params, &self.headers, "UpdateOptions")?);
        let verb = match self.method {
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH if self.content_type() == "application/apply-patch+yaml" => "apply",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "write",
        };
        Ok(WriteOptions {
            dry_run: self.params.get("dryRun").is_some_and(|d| d == "All"),
            fields: FieldValidation::from_param(self.params.get("fieldValidation").map(String::as_str))?,
            manager,
            user: self.user.clone(),
            verb: verb.to_string(),
        })
    }
}

/// A JSON response with Kubernetes `Warning` headers.
pub fn reply(status: StatusCode, body: &Value, warnings: &[String]) -> Response {
    let mut resp = (status, axum::Json(body)).into_response();
    for w in warnings {
        let text = format!("299 - {}", serde_json::to_string(w).unwrap_or_default());
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append("warning", v);
        }
    }
    resp
}

/// Serves one request below `/api/v1/` or `/apis/<group>/<version>/`.
pub async fn handle(state: AppState, target: Target, req: Request) -> Result<Response, ApiError> {
    let shape = Shape::from_headers(&req.headers);
    let has_name = target.name.is_some();
    if let (true, Some(sub)) = (has_name, target.sub.as_deref()) {
        if !target.res.subresources.contains(&sub) {
            return Err(ApiError::NotFound {
                kind: format!("{}/{sub}", target.res.qualified_plural()),
                name: target.name().to_string(),
            });
        }
    }
    match (req.method.clone(), has_name, target.sub.as_deref()) {
        (Method::GET, false, None) => {
            if req.params.get("watch").is_some_and(|w| w == "true" || w == "1") {
                return watch::serve(state, target, req.params, shape).await;
            }
            list(&state, &target, &req.params, shape).await
        }
        (Method::POST, false, None) => {
            let opts = req.write_options()?;
            let admitted = create(&state, &target, req.json()?, &opts).await?;
            Ok(reply(StatusCode::CREATED, &admitted.object, &admitted.warnings))
        }
        (Method::DELETE, false, None) => delete_collection(&state, &target, &req).await,
        (Method::GET, true, None | Some("status")) => {
            let obj = get(&state, &target, &req.params).await?;
            Ok(match shape {
                Shape::Table => {
                    axum::Json(table::table(target.res, &json!({"items": [obj], "metadata": {}}))).into_response()
                }
                Shape::Metadata => axum::Json(table::partial_metadata(&obj)).into_response(),
                Shape::Full => axum::Json(obj).into_response(),
            })
        }
        (Method::PUT, true, sub @ (None | Some("status") | Some("finalize"))) => {
            let body = req.json()?;
            let mode = match sub {
                Some("status") => Mode::Status,
                Some("finalize") => Mode::Finalize,
                _ => Mode::Main,
            };
            let opts = req.write_options()?;
            let admitted = update(&state, &target, mode, |_| Ok(body.clone()), &opts).await?;
            Ok(reply(StatusCode::OK, &admitted.object, &admitted.warnings))
        }
        (Method::PATCH, true, sub @ (None | Some("status"))) => {
            let kind = patch_kind(req.content_type())?;
            let mode = if sub == Some("status") {
                Mode::Status
            } else {
                Mode::Main
            };
            let (manager, force) = patch::patch_options(kind, &req.params, &req.headers)?;
            let mut opts = req.write_options()?;
            opts.manager = Some(manager);
            if kind == PatchKind::Apply {
                return server_apply(&state, &target, mode, &req.body, force, opts).await;
            }
            let body = req.json()?;
            let res = target.res;
            let change = |live: &Value| patch::patch(Some(res), kind, live, &body);
            let admitted = update(&state, &target, mode, change, &opts).await?;
            Ok(reply(StatusCode::OK, &admitted.object, &admitted.warnings))
        }
        (Method::DELETE, true, None) => {
            let opts = DeleteOptions::from_request(&req)?;
            let (obj, _) = delete(&state, &target, &opts, &req.user).await?;
            Ok(axum::Json(obj).into_response())
        }
        (Method::GET, true, Some("log")) => super::logs::proxy(&state, &target, &req.params).await,
        (_, true, Some("scale")) => subresources::scale(&state, &target, &req).await,
        (Method::POST, true, Some("binding")) => subresources::bind(&state, &target, &req).await,
        (Method::POST, true, Some("eviction")) => subresources::evict(&state, &target, &req).await,
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// Options of a write, from its query parameters.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// `dryRun=All`: admit but do not store.
    pub dry_run: bool,
    /// `fieldValidation`: what to do with unknown fields.
    pub fields: FieldValidation,
    /// The field manager the write is recorded for in managedFields (`fieldManager`,
    /// else the user agent's name); `None` for a server-side apply, which records itself.
    pub manager: Option<String>,
    /// Who writes.
    pub user: Arc<UserInfo>,
    /// The request's verb, as the audit trail records it.
    pub verb: String,
}

impl WriteOptions {
    /// Options for the server's own writes (bootstrap objects).
    pub fn system() -> Self {
        WriteOptions {
            dry_run: false,
            fields: FieldValidation::Strict,
            manager: Some("kube-apiserver".into()),
            user: Arc::new(UserInfo {
                name: "system:apiserver".into(),
                uid: String::new(),
                groups: vec!["system:masters".into()],
            }),
            verb: "create".into(),
        }
    }
}

/// Parses a JSON request body.
pub fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))
}

/// Which revision a read asks for (`resourceVersion`, `resourceVersionMatch`).
pub fn read_at(params: &Params) -> Result<ReadAt, ApiError> {
    let rv = params.get("resourceVersion").map(String::as_str).unwrap_or("");
    let exact = match params.get("resourceVersionMatch").map(String::as_str) {
        None | Some("") | Some("NotOlderThan") => false,
        Some("Exact") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
            )))
        }
    };
    Ok(match rv {
        "" => ReadAt::Newest,
        "0" if !exact => ReadAt::Any,
        rv => {
            let n = rv
                .parse::<u64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {rv:?}")))?;
            if exact {
                ReadAt::Exact(n)
            } else {
                ReadAt::NotOlderThan(n)
            }
        }
    })
}

/// The filter of a list or watch request.
pub fn filter_of(target: &Target, params: &Params) -> Result<Filter, ApiError> {
    Ok(Filter {
        namespace: target.namespace.clone(),
        labels: LabelSelector::parse(params.get("labelSelector").map(String::as_str).unwrap_or(""))?,
        fields: FieldSelector::parse(params.get("fieldSelector").map(String::as_str).unwrap_or(""))?,
    })
}

/// One object: from the store, or from the watch cache for `resourceVersion=0`.
async fn get(state: &AppState, target: &Target, params: &Params) -> Result<Value, ApiError> {
    match read_at(params)? {
        ReadAt::Newest => Ok(read(state, target.res, target.namespace.as_deref(), target.name())
            .await?
            .0),
        at => {
            let cache = state.caches.get(target.res)?;
            cache.prepare(&state.store, at).await?;
            let filter = Filter {
                namespace: target.namespace.clone(),
                fields: FieldSelector::parse(&format!("metadata.name={}", target.name()))?,
                ..Default::default()
            };
            let page = cache.list(&filter, None, None, at)?;
            page.items
                .first()
                .ok_or_else(|| not_found(target.res, target.name()))?
                .value()
        }
    }
}

/// Items per chunk of a streamed list body.
const LIST_CHUNK: usize = 256;

/// Lists objects from the watch cache as a `<Kind>List` (or Table, or metadata list),
/// honouring selectors, `limit`/`continue` and `resourceVersion`.
async fn list(state: &AppState, target: &Target, params: &Params, shape: Shape) -> Result<Response, ApiError> {
    let filter = filter_of(target, params)?;
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let token = params.get("continue").filter(|c| !c.is_empty());
    let at = read_at(params)?;
    let cache = state.caches.get(target.res)?;
    if token.is_none() {
        cache.prepare(&state.store, at).await?;
    }
    let page = cache.list(&filter, limit, token.map(String::as_str), at)?;
    let mut metadata = json!({"resourceVersion": page.revision.to_string()});
    if let Some(next) = &page.continue_token {
        metadata["continue"] = json!(next);
    }
    match shape {
        Shape::Table => {
            let items = page
                .items
                .iter()
                .map(|o| o.value())
                .collect::<Result<Vec<Value>, ApiError>>()?;
            let list = json!({"metadata": metadata, "items": items});
            Ok(axum::Json(table::table(target.res, &list)).into_response())
        }
        Shape::Metadata => {
            let items = page
                .items
                .iter()
                .map(|o| o.partial_metadata_json().map(Bytes::from))
                .collect::<Result<Vec<Bytes>, ApiError>>()?;
            let head = format!(
                r#"{{"kind":"PartialObjectMetadataList","apiVersion":"meta.k8s.io/v1","metadata":{metadata},"items":["#
            );
            list_body(head, items)
        }
        Shape::Full => {
            let head = format!(
                r#"{{"kind":"{}List","apiVersion":"{}","metadata":{},"items":["#,
                target.res.kind,
                target.res.api_version(),
                metadata
            );
            // The items' JSON is shared with the cache, not copied.
            list_body(head, page.items.iter().map(|o| o.json.clone()).collect())
        }
    }
}

/// A list's body: `head`, the items' JSON separated by commas, and `]}`, streamed in
/// chunks rather than built as one large body.
fn list_body(head: String, items: Vec<Bytes>) -> Result<Response, ApiError> {
    let chunks = items.len().div_ceil(LIST_CHUNK);
    let body = futures::stream::iter(
        std::iter::once(Bytes::from(head))
            .chain((0..chunks).map(move |c| {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate().skip(c * LIST_CHUNK).take(LIST_CHUNK) {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(item);
                }
                Bytes::from(out)
            }))
            .chain(std::iter::once(Bytes::from_static(b"]}")))
            .map(Ok::<_, std::convert::Infallible>),
    );
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(body))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Whether `res` is core/v1 pods (whose creation also passes priority admission).
pub fn is_pod(res: &ResourceInfo) -> bool {
    res.group.is_empty() && res.plural == "pods"
}

/// Creates an object; returns it as stored, with the warnings of its admission.
pub async fn create(state: &AppState, target: &Target, obj: Value, opts: &WriteOptions) -> Result<Admitted, ApiError> {
    // Only what tracking keeps of the submitted object, not a copy of all of it.
    let submitted = patch::submitted_managed_fields(&obj).cloned();
    let mut admitted = admission::admit_create(target.res, target.namespace.as_deref(), obj, opts.fields)?;
    patch::track(
        target.res,
        None,
        submitted.as_ref(),
        &mut admitted.object,
        opts.manager.as_deref(),
        false,
    );
    let (name, ns) = object_name(&admitted.object);
    if let Some(ns) = &ns {
        check_namespace_open(state, target.res, ns, &name).await?;
    }
    if is_pod(target.res) {
        // Kubernetes' order: LimitRanger, then Priority; ResourceQuota last, at commit.
        super::limitrange::admit_pod(state, target.res, &mut admitted.object).await?;
        super::priority::admit_pod(state, &mut admitted.object).await?;
    }
    if opts.dry_run {
        write::check_create(state, target.res, &admitted.object).await?;
        return Ok(admitted);
    }
    admitted.object = write::create(state, target.res, admitted.object, &opts.user, &opts.verb).await?;
    tracing::debug!(object = %format!("{}/{name}", target.res.plural), user = %opts.user.name, manager = ?opts.manager, "created");
    Ok(admitted)
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The object but its status.
    Main,
    /// Only `.status`.
    Status,
    /// Only a Namespace's `spec.finalizers`.
    Finalize,
}

/// Replaces an object with what `change` makes of the live one; retries on a concurrent
/// write when the client gave no resourceVersion of its own.
pub async fn update(
    state: &AppState,
    target: &Target,
    mode: Mode,
    change: impl Fn(&Value) -> Result<Value, ApiError>,
    opts: &WriteOptions,
) -> Result<Admitted, ApiError> {
    let mut from = Source::Cache;
    for _attempt in 0..6 {
        let (live, rev, source) =
            read_for_write(state, target.res, target.namespace.as_deref(), target.name(), from).await?;
        let cached = source == Source::Cache;
        // Anything but a write, decided on a cached copy, is decided again on the store's.
        from = Source::Store;
        let desired = match change(&live) {
            Ok(d) => d,
            Err(_) if cached => continue,
            Err(e) => return Err(e),
        };
        let pinned = admission::resource_version(&desired).is_some();
        let submitted = patch::submitted_managed_fields(&desired).cloned();
        let admitted = match mode {
            Mode::Main => admission::admit_update(target.res, &live, desired, opts.fields),
            Mode::Status => admission::admit_status(target.res, &live, desired),
            Mode::Finalize => admission::admit_finalize(target.res, &live, &desired),
        };
        let mut admitted = match admitted {
            Ok(a) => a,
            Err(_) if cached => continue,
            Err(e) => return Err(e),
        };
        patch::track(
            target.res,
            Some(&live),
            submitted.as_ref(),
            &mut admitted.object,
            opts.manager.as_deref(),
            mode == Mode::Status,
        );
        // Nothing changed: no write and no new resourceVersion, as in Kubernetes. (Compared
        // with the live version set in place, rather than on a copy of the object.)
        admitted.object = with_revision(admitted.object, rev);
        if admitted.object == live || opts.dry_run {
            if cached {
                continue;
            }
            return Ok(admitted);
        }
        // (The store copy drops the resourceVersion; the write sets the new one.)
        let verb = match mode {
            Mode::Main => opts.verb.clone(),
            Mode::Status => format!("{}/status", opts.verb),
            Mode::Finalize => format!("{}/finalize", opts.verb),
        };
        // Taken, not copied: a failed attempt admits the object again from scratch.
        match write::update(
            state,
            target.res,
            rev,
            &live,
            std::mem::take(&mut admitted.object),
            &opts.user,
            &verb,
        )
        .await
        {
            Ok((obj, outcome)) => {
                if outcome == Outcome::Deleted {
                    tracing::debug!(object = %format!("{}/{}", target.res.plural, target.name()), "finalized and deleted");
                }
                admitted.object = obj;
                return Ok(admitted);
            }
            // A refusal (a conflict, a quota) of a write made from a cached copy may be the
            // copy's doing.
            Err(_) if cached => continue,
            Err(ApiError::Conflict { .. }) if !pinned => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::Conflict {
        kind: target.res.qualified_plural(),
        name: target.name().to_string(),
        message: "too many concurrent writes; try again".into(),
    })
}

/// How dependents of a deleted object are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// The object goes now; the garbage collector deletes its dependents.
    Background,
    /// The object stays (with the `foregroundDeletion` finalizer) until its dependents are gone.
    Foreground,
    /// The dependents are kept, their owner references to the object removed.
    Orphan,
}

/// Finalizer of a foreground deletion.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// Finalizer of an orphaning deletion.
pub const ORPHAN_FINALIZER: &str = "orphan";

/// `DeleteOptions`, from the body and the query parameters.
#[derive(Debug, Clone)]
pub struct DeleteOptions {
    /// Seconds before a pod is killed; `None` uses the pod's own.
    pub grace_period: Option<i64>,
    /// What happens to dependents.
    pub propagation: Propagation,
    /// Delete only while the object has this uid.
    pub uid: Option<String>,
    /// Delete only while the object is at this resourceVersion.
    pub resource_version: Option<String>,
    /// Admit but do not store.
    pub dry_run: bool,
}

impl Default for DeleteOptions {
    fn default() -> Self {
        DeleteOptions {
            grace_period: None,
            propagation: Propagation::Background,
            uid: None,
            resource_version: None,
            dry_run: false,
        }
    }
}

impl DeleteOptions {
    /// Reads the options of a DELETE request.
    pub fn from_request(req: &Request) -> Result<Self, ApiError> {
        let body = if req.body.is_empty() { json!({}) } else { req.json()? };
        Self::from_parts(&body, &req.params)
    }

    /// Reads options from a `DeleteOptions` body and query parameters (these win).
    pub fn from_parts(body: &Value, params: &Params) -> Result<Self, ApiError> {
        let grace_period = match params.get("gracePeriodSeconds") {
            Some(g) => Some(
                g.parse::<i64>()
                    .map_err(|_| ApiError::BadRequest(format!("invalid gracePeriodSeconds {g:?}")))?,
            ),
            None => body.get("gracePeriodSeconds").and_then(Value::as_i64),
        };
        let orphan = params
            .get("orphanDependents")
            .map(|o| o == "true")
            .or_else(|| body.get("orphanDependents").and_then(Value::as_bool));
        let policy = params
            .get("propagationPolicy")
            .cloned()
            .or_else(|| body.get("propagationPolicy").and_then(Value::as_str).map(String::from));
        let propagation = match (policy.as_deref(), orphan) {
            (Some("Foreground"), _) => Propagation::Foreground,
            (Some("Orphan"), _) | (None, Some(true)) => Propagation::Orphan,
            (Some("Background") | None, _) => Propagation::Background,
            (Some(other), _) => {
                return Err(ApiError::Invalid {
                    kind: "DeleteOptions".into(),
                    name: String::new(),
                    causes: vec![super::error::Cause::new(
                        "FieldValueNotSupported",
                        "propagationPolicy",
                        format!(
                        "Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
                    ),
                    )],
                })
            }
        };
        let dry_run = params.get("dryRun").is_some_and(|d| d == "All")
            || body
                .get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|d| d.iter().any(|x| x == "All"));
        Ok(DeleteOptions {
            grace_period,
            propagation,
            uid: body
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(String::from),
            resource_version: body
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(String::from),
            dry_run,
        })
    }
}

/// The grace period of a pod's deletion: the request's, else the pod's own; none for a
/// pod that never ran on a node or has finished.
fn pod_grace(pod: &Value, asked: Option<i64>) -> i64 {
    let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or_default();
    let unscheduled = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty);
    if unscheduled || phase == "Succeeded" || phase == "Failed" {
        return 0;
    }
    let own = pod
        .pointer("/spec/terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(30);
    match asked {
        // A negative period means the shortest one, 1 second, as in Kubernetes.
        Some(g) if g < 0 => 1,
        Some(g) => g,
        None => own,
    }
}

/// Deletes an object as Kubernetes does: at once when nothing holds it, else by marking
/// it (`deletionTimestamp`, finalizers) for its finalizers, its grace period or its
/// namespace's content to finish first. Returns the object and whether it is gone.
pub async fn delete(
    state: &AppState,
    target: &Target,
    opts: &DeleteOptions,
    user: &Arc<UserInfo>,
) -> Result<(Value, bool), ApiError> {
    let res = target.res;
    let mut from = Source::Cache;
    for _attempt in 0..6 {
        let (live, rev, source) = read_for_write(state, res, target.namespace.as_deref(), target.name(), from).await?;
        // Anything but a write, decided on a cached copy, is decided again on the store's.
        from = Source::Store;
        let cached = source == Source::Cache;
        if let Some(want) = &opts.resource_version {
            if *want != rev.to_string() {
                if cached {
                    continue;
                }
                return Err(ApiError::Conflict {
                    kind: res.qualified_plural(),
                    name: target.name().to_string(),
                    message: format!("Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rev}"),
                });
            }
        }
        if let Some(want) = &opts.uid {
            let uid = live
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if want != uid {
                if cached {
                    continue;
                }
                return Err(ApiError::Conflict {
                    kind: res.qualified_plural(),
                    name: target.name().to_string(),
                    message: format!("Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"),
                });
            }
        }
        if opts.dry_run && cached {
            continue;
        }
        if opts.dry_run {
            return Ok((live, false));
        }
        let mut marked = live.clone();
        let meta = marked
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ApiError::Internal("stored object without metadata".into()))?;
        meta.remove("resourceVersion");
        let already = meta.get("deletionTimestamp").is_some_and(|t| !t.is_null());
        let grace = if res.kind == "Pod" {
            pod_grace(&live, opts.grace_period)
        } else {
            0
        };
        let current_grace = meta.get("deletionGracePeriodSeconds").and_then(Value::as_i64);
        let mut finalizers: Vec<Value> = meta
            .get("finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let extra = match opts.propagation {
            Propagation::Foreground => Some(FOREGROUND_FINALIZER),
            Propagation::Orphan => Some(ORPHAN_FINALIZER),
            Propagation::Background => None,
        };
        if already {
            // A second delete may only shorten a pod's grace period.
            let shorter = current_grace.is_some_and(|g| grace < g);
            if !shorter && cached {
                continue;
            }
            if !shorter {
                return Ok((live, false));
            }
        } else if let Some(f) = extra {
            if !finalizers.iter().any(|x| x == f) {
                finalizers.push(json!(f));
            }
        }
        let now = k8s_openapi::jiff::Timestamp::now();
        let deadline = now
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(grace))
            .unwrap_or(now)
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        meta.insert("deletionTimestamp".into(), json!(deadline));
        meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
        if !finalizers.is_empty() {
            meta.insert("finalizers".into(), json!(finalizers));
        }
        if !already {
            let generation = meta.get("generation").and_then(Value::as_i64).unwrap_or(0);
            if generation > 0 {
                meta.insert("generation".into(), json!(generation + 1));
            }
        }
        if res.kind == "Namespace" {
            marked["status"] = json!({"phase": "Terminating"});
        }
        let mut set = WriteSet::new(user, "delete");
        let key = target.key();
        let gone = if write::deletion_complete(&marked) {
            set.delete(res, key, rev, &live);
            true
        } else {
            set.update(res, key, rev, &live, &mut marked)?;
            false
        };
        match set.commit(state).await {
            Ok(new_rev) => {
                tracing::debug!(object = %format!("{}/{}", res.plural, target.name()), gone, "delete");
                let out = if gone {
                    with_revision(live, new_rev)
                } else {
                    with_revision(marked, new_rev)
                };
                return Ok((out, gone));
            }
            Err(_) if cached => continue,
            Err(ApiError::Conflict { .. }) if opts.resource_version.is_none() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::Conflict {
        kind: res.qualified_plural(),
        name: target.name().to_string(),
        message: "too many concurrent writes; try again".into(),
    })
}

/// `DELETE` on a collection: deletes every object the selectors match, each as a single
/// delete would.
async fn delete_collection(state: &AppState, target: &Target, req: &Request) -> Result<Response, ApiError> {
    let opts = DeleteOptions::from_request(req)?;
    let filter = filter_of(target, &req.params)?;
    let cache = state.caches.get(target.res)?;
    cache.prepare(&state.store, ReadAt::Newest).await?;
    let page = cache.list(&filter, None, None, ReadAt::Newest)?;
    let mut deleted = Vec::new();
    for obj in page.items {
        let one = Target {
            res: target.res,
            namespace: obj.namespace.clone(),
            name: Some(obj.name.clone()),
            sub: None,
        };
        match delete(state, &one, &opts, &req.user).await {
            Ok((obj, _)) => deleted.push(obj),
            Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let list = json!({
        "kind": format!("{}List", target.res.kind),
        "apiVersion": target.res.api_version(),
        "metadata": {"resourceVersion": state.store.revision().to_string()},
        "items": deleted,
    });
    Ok(axum::Json(list).into_response())
}

/// The patch format of a `Content-Type`, or 415.
pub fn patch_kind(content_type: &str) -> Result<PatchKind, ApiError> {
    PatchKind::from_content_type(content_type)
        .ok_or_else(|| ApiError::UnsupportedMediaType(format!("the patch type {content_type} is not supported")))
}

/// Server-side apply (PATCH `application/apply-patch+yaml`): updates the object, or creates
/// it (201) if it does not exist. `opts.manager` is the applier.
async fn server_apply(
    state: &AppState,
    target: &Target,
    mode: Mode,
    body: &[u8],
    force: bool,
    mut opts: WriteOptions,
) -> Result<Response, ApiError> {
    let manager = opts.manager.take().unwrap_or_default();
    let request = patch::ApplyRequest {
        body,
        manager: &manager,
        force,
        status: mode == Mode::Status,
        strict: opts.fields == FieldValidation::Strict,
        name: target.name(),
        namespace: target.namespace.as_deref(),
    };
    let apply = |live: &Value| patch::server_apply(target.res, Some(live), &request);
    match update(state, target, mode, apply, &opts).await {
        Err(ApiError::NotFound { .. }) if mode == Mode::Main => {
            let obj = patch::server_apply(target.res, None, &request)?;
            let created = create(state, target, obj, &opts).await?;
            Ok(reply(StatusCode::CREATED, &created.object, &created.warnings))
        }
        updated => {
            let updated = updated?;
            Ok(reply(StatusCode::OK, &updated.object, &updated.warnings))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_form_leaves_out_only_the_resource_version() {
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"resourceVersion": "kept"},
            "metadata": {"name": "a", "resourceVersion": "7", "labels": {"resourceVersion": "kept"}}});
        let stored: Value = serde_json::from_slice(&encode(&obj).unwrap()).unwrap();
        let mut want = obj.clone();
        want["metadata"].as_object_mut().unwrap().remove("resourceVersion");
        assert_eq!(stored, want);
        assert_eq!(
            decode(&KeyValue {
                key: "k".into(),
                mod_revision: 7,
                lease: 0,
                value: encode(&obj).unwrap()
            })
            .unwrap(),
            obj
        );
    }

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
