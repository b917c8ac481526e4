//! The Kubernetes-compatible API server (axum). The only component that touches the store.
//!
//! Paths follow Kubernetes: `/api/v1/...` for the core group, `/apis/<group>/<version>/...`
//! for the others; errors are `Status` objects; `kubectl` and kube-rs work against it.

mod admission;
mod batch;
mod discovery;
mod error;
mod logs;
mod objects;
pub mod patch;
pub mod registry;
pub mod schema;
mod selectors;
mod table;
mod watch;

use std::collections::HashMap;
use std::future::Future;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::json;

pub use error::{ApiError, Cause};
pub use table::human_age;

use crate::kinds::Batch;
use crate::store::Store;

/// Shared state of the API server's handlers.
#[derive(Clone)]
pub struct AppState {
    store: Store,
    /// Flips to true when the server shuts down, ending open watches.
    shutdown: tokio::sync::watch::Receiver<bool>,
}

/// Builds the router over `store`; `shutdown` ends open watches when it changes.
pub fn router(store: Store, shutdown: tokio::sync::watch::Receiver<bool>) -> Router {
    let state = AppState { store, shutdown };
    Router::new()
        .route("/version", get(|| async { Json(discovery::version()) }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/api", get(|| async { Json(discovery::core_versions()) }))
        .route("/apis", get(|| async { Json(discovery::groups()) }))
        .route("/api/v1", get(|| async { resource_list("", "v1") }))
        .route("/api/v1/{*rest}", any(core_handler))
        .route(
            "/apis/{group}/{version}",
            get(|Path((g, v)): Path<(String, String)>| async move { resource_list(&g, &v) }),
        )
        .route("/apis/kairn.dev/v1/batches", post(batch_handler))
        .route("/apis/{group}/{version}/{*rest}", any(group_handler))
        .fallback(|| async {
            ApiError::NotFound {
                kind: "path".into(),
                name: String::new(),
            }
        })
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

async fn core_handler(
    State(state): State<AppState>,
    method: Method,
    Path(rest): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    dispatch(state, method, "", "v1", &rest, params, headers, body).await
}

async fn group_handler(
    State(state): State<AppState>,
    method: Method,
    Path((group, version, rest)): Path<(String, String, String)>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    dispatch(state, method, &group, &version, &rest, params, headers, body).await
}

#[allow(clippy::too_many_arguments)]
async fn dispatch(
    state: AppState,
    method: Method,
    group: &str,
    version: &str,
    rest: &str,
    params: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = match objects::Target::parse(group, version, rest) {
        Ok(target) => objects::handle(state, method, target, params, headers, body).await,
        Err(e) => Err(e),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn batch_handler(State(state): State<AppState>, body: Bytes) -> Response {
    let batch: Batch = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return ApiError::BadRequest(format!("the batch is not valid: {e}")).into_response(),
    };
    match batch::apply(&state, batch).await {
        Ok(result) => (axum::http::StatusCode::CREATED, Json(result)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Creates the namespaces every cluster starts with, if missing.
pub async fn bootstrap(store: &Store) -> Result<(), ApiError> {
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let state = AppState {
        store: store.clone(),
        shutdown: rx,
    };
    let res = registry::by_plural("", "v1", "namespaces").ok_or_else(|| ApiError::Internal("no namespaces".into()))?;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let target = objects::Target {
            res,
            namespace: None,
            name: None,
            sub: None,
        };
        match objects::create(
            &state,
            &target,
            json!({"metadata": {"name": ns}}),
            objects::WriteOptions {
                dry_run: false,
                fields: admission::FieldValidation::Strict,
                manager: Some("kairn".into()),
            },
        )
        .await
        {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Serves the API on `listener` until `shutdown` resolves; open watches end then too.
pub async fn serve(
    store: Store,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let app = router(store, rx);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = tx.send(true);
        })
        .await
}
