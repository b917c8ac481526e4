//! The Kubernetes-compatible API server (axum). The only component that touches the store.
//!
//! Paths follow Kubernetes: `/api/v1/...` for the core group, `/apis/<group>/<version>/...`
//! for the others; errors are `Status` objects; `kubectl` and kube-rs work against it.
//! Every request is authenticated (`auth`); lists and watches are served by per-resource
//! watch caches (`cache`); every write goes through `admission` and `write`.

mod admission;
pub mod amount;
pub mod audit;
pub mod auth;
mod batch;
pub mod cache;
mod discovery;
pub mod endpoints;
mod error;
pub mod event_ttl;
pub mod history;
pub mod hooks;
mod limitrange;
mod logs;
mod members;
mod objects;
mod openapi;
pub mod patch;
mod priority;
mod protobuf;
pub mod quota;
pub mod registry;
pub mod resources;
pub mod schema;
pub mod selectors;
mod subresources;
mod table;
pub mod tls;
pub mod validation;
mod watch;
mod write;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Extension, Json, Router};
use serde_json::json;

pub use auth::{Authenticator, UserInfo};
pub use error::{ApiError, Cause};
pub use table::human_age;

use crate::kinds::Batch;
use crate::store::Store;

/// kube-apiserver's limit on one request body (`MaxRequestBodyBytes`).
pub const MAX_OBJECT_BODY: usize = 3 * 1024 * 1024;
/// The limit of an atomic batch: a whole commit of manifests (10,000 objects and more).
pub const MAX_BATCH_BODY: usize = 512 * 1024 * 1024;

/// Settings of the API server beyond its store and users.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The secret `POST /hooks/git` deliveries must be signed with; `None` accepts any.
    pub webhook_secret: Option<String>,
    /// How long Events are kept (kube-apiserver's `--event-ttl`); `None` keeps them.
    pub event_ttl: Option<std::time::Duration>,
}

/// kube-apiserver's default `--event-ttl`.
pub const DEFAULT_EVENT_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            webhook_secret: None,
            event_ttl: Some(DEFAULT_EVENT_TTL),
        }
    }
}

/// Shared state of the API server's handlers.
#[derive(Clone)]
pub struct AppState {
    /// Behind one `Arc`: the state is cloned for every request, and a `Store` clone
    /// counts up a reference on each of its parts.
    store: Arc<Store>,
    caches: Arc<cache::Caches>,
    /// Flips to true when the server shuts down, ending open watches.
    shutdown: tokio::sync::watch::Receiver<bool>,
    config: Arc<ApiConfig>,
    /// The lease Events are attached to, when they expire.
    event_leases: Option<Arc<event_ttl::EventLeases>>,
}

impl AppState {
    /// The state of an API server over `store`: starts its watch caches, which run until
    /// `shutdown` turns true.
    pub fn new(store: Store, shutdown: tokio::sync::watch::Receiver<bool>) -> Self {
        let caches = cache::Caches::start(&store, shutdown.clone());
        tokio::spawn(audit::retain(store.clone(), shutdown.clone()));
        AppState {
            store: Arc::new(store),
            caches,
            shutdown,
            config: Arc::default(),
            event_leases: Some(Arc::new(event_ttl::EventLeases::new(DEFAULT_EVENT_TTL))),
        }
    }

    /// The same state with `config`.
    pub fn with_config(mut self, config: ApiConfig) -> Self {
        self.event_leases = config.event_ttl.map(|ttl| Arc::new(event_ttl::EventLeases::new(ttl)));
        self.config = Arc::new(config);
        self
    }
}

/// Builds the router; every request but the public ones needs a token `auth` knows.
pub fn router(state: AppState, auth: Arc<Authenticator>) -> Router {
    Router::new()
        .route("/version", get(|| async { Json(discovery::version()) }))
        // The python client asks for `/version/`.
        .route("/version/", get(|| async { Json(discovery::version()) }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/openapi/v2", get(openapi::serve_v2))
        .route("/openapi/v3", get(openapi::serve_v3_index))
        .route("/openapi/v3/{*group_version}", get(openapi::serve_v3))
        .route("/api", get(|| async { Json(discovery::core_versions()) }))
        .route("/api/", get(|| async { Json(discovery::core_versions()) }))
        .route("/apis", get(|| async { Json(discovery::groups()) }))
        .route("/apis/", get(|| async { Json(discovery::groups()) }))
        .route("/api/v1", get(|| async { resource_list("", "v1") }))
        .route("/api/v1/{*rest}", any(core_handler))
        .route(
            "/apis/{group}/{version}",
            get(|Path((g, v)): Path<(String, String)>| async move { resource_list(&g, &v) }),
        )
        .route(
            "/apis/kairn.dev/v1/batches",
            post(batch_handler).layer(DefaultBodyLimit::max(MAX_BATCH_BODY)),
        )
        .route("/apis/kairn.dev/v1/auditrecords", get(audit_handler))
        .route(members::PATH, get(members::list).post(members::add))
        .route(
            "/apis/kairn.dev/v1/members/{id}",
            axum::routing::delete(members::remove),
        )
        .route(
            "/apis/kairn.dev/v1/namespaces/{ns}/applications/{name}/history",
            get(history_list_handler).post(history_append_handler),
        )
        .route("/apis/{group}/{version}/{*rest}", any(group_handler))
        // Public (forges send no token); signed when a secret is configured.
        .route(hooks::PATH, post(hooks::handle))
        .fallback(|| async {
            ApiError::NotFound {
                kind: "path".into(),
                name: String::new(),
            }
        })
        .layer(DefaultBodyLimit::max(MAX_OBJECT_BODY))
        .layer(axum::middleware::from_fn_with_state(auth, auth::authenticate))
        .with_state(state)
}

fn resource_list(group: &str, version: &str) -> Response {
    match discovery::resources(group, version) {
        Some(list) => Json(list).into_response(),
        None => ApiError::NotFound {
            kind: "groupversion".into(),
            name: format!("{group}/{version}"),
        }
        .into_response(),
    }
}

/// A body, or the 413 (as a Status) when it is over the route's limit.
fn body_or_error(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge { limit }
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    })
}

#[allow(clippy::too_many_arguments)]
async fn core_handler(
    State(state): State<AppState>,
    Extension(user): Extension<Arc<UserInfo>>,
    method: Method,
    Path(rest): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    dispatch(state, user, method, "", "v1", &rest, params, headers, body).await
}

#[allow(clippy::too_many_arguments)]
async fn group_handler(
    State(state): State<AppState>,
    Extension(user): Extension<Arc<UserInfo>>,
    method: Method,
    Path((group, version, rest)): Path<(String, String, String)>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    dispatch(state, user, method, &group, &version, &rest, params, headers, body).await
}

#[allow(clippy::too_many_arguments)]
async fn dispatch(
    state: AppState,
    user: Arc<UserInfo>,
    method: Method,
    group: &str,
    version: &str,
    rest: &str,
    params: HashMap<String, String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let watching = params.get("watch").is_some_and(|w| w == "true" || w == "1");
    let target = objects::Target::parse(group, version, rest);
    let watched = target
        .as_ref()
        .ok()
        .filter(|_| watching)
        .map(|t| (t.res.api_version(), t.res.kind));
    let is_patch = method == Method::PATCH;
    let result = async {
        let body = body_or_error(body, MAX_OBJECT_BODY)?;
        let content_type = headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json");
        let body = protobuf::request_body(content_type, body)?;
        let patch = body.clone();
        let req = objects::Request {
            method,
            params,
            headers,
            body,
            user,
        };
        objects::handle(state, target?, req)
            .await
            .map_err(|e| if is_patch { e.for_patch(&patch) } else { e })
    };
    let response = result.await.unwrap_or_else(IntoResponse::into_response);
    protobuf::negotiate(accept.as_deref(), watched, response).await
}

async fn batch_handler(
    State(state): State<AppState>,
    Extension(user): Extension<Arc<UserInfo>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let body = body_or_error(body, MAX_BATCH_BODY)?;
        let batch: Batch =
            serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("the batch is not valid: {e}")))?;
        let manager = patch::field_manager(&params, &headers, "BatchOptions")?;
        tracing::debug!(user = %user.name, manager = %manager, operations = batch.operations.len(), "batch");
        batch::apply(&state, batch, &manager, &user).await
    };
    match result.await {
        Ok(result) => (StatusCode::CREATED, Json(result)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /apis/kairn.dev/v1/auditrecords`: `kairn audit`.
async fn audit_handler(State(state): State<AppState>, Query(params): Query<HashMap<String, String>>) -> Response {
    match audit::serve(&state, &params).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET .../applications/{name}/history`: `kairn history`.
async fn history_list_handler(State(state): State<AppState>, Path((ns, name)): Path<(String, String)>) -> Response {
    match history::serve_list(&state, &ns, &name).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST .../applications/{name}/history`: a sync recorded without a batch.
async fn history_append_handler(
    State(state): State<AppState>,
    Extension(user): Extension<Arc<UserInfo>>,
    Path((ns, name)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let body = body_or_error(body, MAX_OBJECT_BODY)?;
        history::serve_append(&state, &user, &ns, &name, &body).await
    };
    match result.await {
        Ok(entry) => (StatusCode::CREATED, Json(entry)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Creates what every cluster starts with, if missing: the initial namespaces (with
/// `kairn-system` for Applications), the system PriorityClasses and the `default`
/// ServiceAccounts.
pub async fn bootstrap(state: &AppState) -> Result<(), ApiError> {
    let opts = objects::WriteOptions::system();
    let create = |plural: &'static str, group: &'static str, version: &'static str, ns: Option<&str>, obj| {
        let target = registry::by_plural(group, version, plural).map(|res| objects::Target {
            res,
            namespace: ns.map(String::from),
            name: None,
            sub: None,
        });
        let opts = &opts;
        async move {
            let target = target.ok_or_else(|| ApiError::Internal(format!("{plural} not served")))?;
            match objects::create(state, &target, obj, opts).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        }
    };
    for ns in [
        "default",
        "kube-system",
        "kube-public",
        "kube-node-lease",
        crate::kinds::APP_NAMESPACE,
    ] {
        create("namespaces", "", "v1", None, json!({"metadata": {"name": ns}})).await?;
        create(
            "serviceaccounts",
            "",
            "v1",
            Some(ns),
            json!({"metadata": {"name": "default", "namespace": ns}}),
        )
        .await?;
    }
    for (name, value, description) in resources::core::SYSTEM_PRIORITY_CLASSES {
        let pc = json!({"metadata": {"name": name}, "value": value, "description": description});
        create("priorityclasses", "scheduling.k8s.io", "v1", None, pc).await?;
    }
    Ok(())
}

/// Creates the `kubernetes` Service in `default` (on first start) and registers this API
/// server in its Endpoints ([`endpoints`]); the registration is returned to be kept
/// fresh.
pub async fn publish_api_service(
    state: &AppState,
    addr: std::net::SocketAddr,
) -> Result<endpoints::Registration, ApiError> {
    let opts = objects::WriteOptions::system();
    let target = endpoints::api_object("services")?;
    let svc = json!({"metadata": {"name": "kubernetes", "namespace": "default", "labels": endpoints::labels()},
        "spec": {"type": "ClusterIP", "clusterIP": resources::service::API_SERVICE_IP,
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": addr.port()}]}});
    match objects::create(state, &target, svc, &opts).await {
        Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
        Err(e) => return Err(e),
    }
    let mut registration = endpoints::Registration::new(addr);
    registration.refresh(state).await?;
    Ok(registration)
}

/// Serves the API over TLS on `listener` until `shutdown` resolves.
pub async fn serve(
    state: AppState,
    listener: tls::TlsListener,
    auth: Arc<Authenticator>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state, auth))
        .with_graceful_shutdown(shutdown)
        .await
}
