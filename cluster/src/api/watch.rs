//! `?watch=true`: a chunked stream of `{"type": ..., "object": ...}` lines.
//!
//! Without a resourceVersion (or with "0") the current objects come first as ADDED, then
//! changes; with one, changes after it. A revision the store no longer keeps yields an
//! ERROR event holding a 410 Expired Status, and the client relists.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::objects::{self, Params, Target};
use super::selectors::{labels_of, FieldSelector, LabelSelector};
use super::AppState;
use crate::store::EventKind;

fn line(kind: &str, object: &Value) -> Bytes {
    let mut out = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

/// Starts a watch and returns the streaming response.
pub async fn serve(state: AppState, target: Target, params: Params) -> Result<Response, ApiError> {
    let labels = LabelSelector::parse(params.get("labelSelector").map(String::as_str).unwrap_or(""))?;
    let fields = FieldSelector::parse(params.get("fieldSelector").map(String::as_str).unwrap_or(""))?;
    let matches = move |obj: &Value| labels.matches(&labels_of(obj)) && fields.matches(obj);
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let bookmarks = params.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let prefix = target.res.prefix(target.namespace.as_deref());

    // Initial state: either the current objects (as ADDED) or nothing.
    let mut initial = Vec::new();
    let from = match params
        .get("resourceVersion")
        .map(String::as_str)
        .filter(|rv| !rv.is_empty() && *rv != "0")
    {
        Some(rv) => rv
            .parse::<u64>()
            .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {rv}")))?,
        None => {
            let mut list_params = params.clone();
            list_params.remove("limit");
            list_params.remove("continue");
            let list = objects::list(&state, &target, &list_params).await?;
            for item in list["items"].as_array().into_iter().flatten() {
                initial.push(line("ADDED", item));
            }
            list.pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0)
        }
    };
    let kind = target.res.kind;
    let api_version = target.res.api_version();
    let watch = state.store.watch(&prefix, from);
    let mut shutdown = state.shutdown.clone();

    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        for l in initial {
            if tx.send(l).await.is_err() {
                return;
            }
        }
        let mut watch = match watch {
            Ok(w) => w,
            Err(e) => {
                let _ = tx.send(line("ERROR", &ApiError::Store(e).status())).await;
                return;
            }
        };
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut bookmark_tick = tokio::time::interval(Duration::from_secs(30));
        bookmark_tick.tick().await;
        let mut last_rev = from;
        loop {
            let event = tokio::select! {
                ev = watch.next() => ev,
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = shutdown.changed() => return,
                _ = bookmark_tick.tick(), if bookmarks => {
                    let mark = json!({"kind": kind, "apiVersion": api_version,
                        "metadata": {"resourceVersion": last_rev.to_string()}});
                    if tx.send(line("BOOKMARK", &mark)).await.is_err() { return; }
                    continue;
                }
            };
            let ev = match event {
                None => return,
                // Expired becomes a 410 Status: the client relists.
                Some(Err(e)) => {
                    let _ = tx.send(line("ERROR", &ApiError::Store(e).status())).await;
                    return;
                }
                Some(Ok(ev)) => ev,
            };
            last_rev = ev.kv.mod_revision;
            let Ok(now) = objects::decode(&ev.kv) else { continue };
            let before = ev.prev.as_ref().and_then(|p| serde_json::from_slice::<Value>(p).ok());
            let was = before.as_ref().is_some_and(&matches);
            let out = match ev.kind {
                EventKind::Delete if was => Some("DELETED"),
                EventKind::Delete => None,
                EventKind::Put => match (was, matches(&now)) {
                    (true, true) => Some("MODIFIED"),
                    (false, true) => Some("ADDED"),
                    // Left the filter: to this watcher it is gone.
                    (true, false) => Some("DELETED"),
                    (false, false) => None,
                },
            };
            if let Some(kind) = out {
                if tx.send(line(kind, &now)).await.is_err() {
                    return;
                }
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let body = Body::from_stream(futures::StreamExt::map(stream, Ok::<_, std::convert::Infallible>));
    Response::builder()
        .header("content-type", "application/json")
        .body(body)
        .map_err(|e| ApiError::Internal(e.to_string()))
}
