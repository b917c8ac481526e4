//! `pods/<name>/log`: proxied to the agent of the pod's node, which serves the
//! container's log file (as kube-apiserver proxies to the kubelet).

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::error::ApiError;
use super::objects::{self, Params, Target};
use super::{registry, AppState};

/// Query parameters passed on to the agent.
const PASSED: &[&str] = &["follow", "tailLines", "limitBytes"];

/// Serves a log request for the pod `target` names.
pub async fn proxy(state: &AppState, target: &Target, params: &Params) -> Result<Response, ApiError> {
    let name = target.name.as_deref().unwrap_or_default();
    let ns = target.namespace.as_deref().unwrap_or("default");
    let (pod, _) = objects::read(state, target.res, Some(ns), name).await?;
    let containers: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    let container = match params.get("container") {
        Some(c) if containers.contains(&c.as_str()) => c.clone(),
        Some(c) => {
            return Err(ApiError::BadRequest(format!(
                "container {c} is not valid for pod {name}"
            )))
        }
        None if containers.len() == 1 => containers[0].to_string(),
        None => {
            return Err(ApiError::BadRequest(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )))
        }
    };
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    let node_name =
        node_name.ok_or_else(|| ApiError::BadRequest(format!("pod {name} does not have a host assigned")))?;
    let nodes = registry::by_plural("", "v1", "nodes").ok_or_else(|| ApiError::Internal("no nodes resource".into()))?;
    let (node, _) = objects::read(state, nodes, None, node_name).await?;
    let address = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
        .and_then(|a| a["address"].as_str())
        .ok_or_else(|| ApiError::BadRequest(format!("node {node_name} reports no InternalIP")))?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .ok_or_else(|| ApiError::BadRequest(format!("node {node_name} reports no log endpoint")))?;
    let query: Vec<String> = PASSED
        .iter()
        .filter_map(|k| params.get(*k).map(|v| format!("{k}={}", v.replace(['&', '='], ""))))
        .collect();
    let url = format!(
        "http://{address}:{port}/containerLogs/{ns}/{name}/{container}?{}",
        query.join("&")
    );
    let uri: axum::http::Uri = url
        .parse()
        .map_err(|e| ApiError::Internal(format!("log URL {url}: {e}")))?;

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<axum::body::Bytes>>();
    let response = client
        .get(uri)
        .await
        .map_err(|e| ApiError::BadRequest(format!("cannot reach node {node_name} for logs: {e}")))?;
    let status = response.status();
    if status != StatusCode::OK {
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(ApiError::BadRequest(String::from_utf8_lossy(&body).into_owned()));
    }
    Response::builder()
        .header("content-type", "text/plain")
        .body(Body::new(response.into_body()))
        .map_err(|e| ApiError::Internal(e.to_string()))
}
