//! `?watch=true`: a chunked stream of `{"type": ..., "object": ...}` lines, served from
//! the resource's watch cache.
//!
//! Without a resourceVersion the current objects come first as ADDED (a consistent read),
//! with "0" the cache's current objects, with a revision the changes after it. A revision
//! the cache no longer holds yields an ERROR event holding a 410 Expired Status, and the
//! client relists. Each change reaches every watcher as the same decoded object and the
//! same JSON bytes; a watcher only filters and frames it.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use tokio::sync::{broadcast, mpsc};

use super::cache::{bookmark, event_line, CacheEvent, CacheMessage, CachedObject, EventType, Filter, ReadAt};
use super::error::ApiError;
use super::objects::{filter_of, read_at, Params, Shape, Target};
use super::registry::ResourceInfo;
use super::table;
use super::AppState;

/// How often a watch that asked for bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(30);

/// One watcher's view of the stream.
struct Watcher {
    filter: Filter,
    shape: Shape,
    res: &'static ResourceInfo,
}

impl Watcher {
    fn line(&self, kind: &str, obj: &CachedObject) -> Bytes {
        match self.shape {
            Shape::Metadata => match obj.partial_metadata_json() {
                Ok(v) => event_line(kind, &v),
                Err(e) => event_line("ERROR", e.status().to_string().as_bytes()),
            },
            // `kubectl get -w`: each event a Table of one row, with the same columns as
            // the list before it, so kubectl prints the header once.
            Shape::Table => match obj.value() {
                Ok(v) => {
                    let one = table::table(self.res, &serde_json::json!({"items": [v], "metadata": {}}));
                    event_line(kind, one.to_string().as_bytes())
                }
                Err(e) => event_line("ERROR", e.status().to_string().as_bytes()),
            },
            _ => event_line(kind, &obj.json),
        }
    }

    /// The line this watcher sees for a change, if any: an object entering the filter
    /// is ADDED to it, one leaving is DELETED.
    fn event(&self, ev: &CacheEvent) -> Option<Bytes> {
        let was = ev.prev.as_ref().is_some_and(|p| self.filter.matches(p));
        let kind = match ev.kind {
            EventType::Deleted => was.then_some("DELETED"),
            EventType::Added | EventType::Modified => match (was, self.filter.matches(&ev.object)) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            },
        }?;
        Some(self.line(kind, &ev.object))
    }
}

fn error_line(e: &ApiError) -> Bytes {
    event_line("ERROR", e.status().to_string().as_bytes())
}

/// Starts a watch and returns the streaming response.
pub async fn serve(state: AppState, target: Target, params: Params, shape: Shape) -> Result<Response, ApiError> {
    let filter = filter_of(&target, &params)?;
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let bookmarks = params.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let initial_events = params.get("sendInitialEvents").map(|s| s == "true");
    let at = read_at(&params)?;
    let cache = state.caches.get(target.res)?.clone();
    cache.prepare(&state.store, at).await?;
    // Kubernetes: no resourceVersion (or "0") starts with the current objects as ADDED,
    // unless sendInitialEvents says otherwise; a revision starts after it.
    let from = match (at, initial_events) {
        (_, Some(true)) | (ReadAt::Newest | ReadAt::Any, None) => None,
        (ReadAt::Newest | ReadAt::Any, Some(false)) => Some(cache.revision()),
        (ReadAt::NotOlderThan(rev) | ReadAt::Exact(rev), _) => Some(rev),
    };
    let start = cache.watch(from, &filter);
    let res = target.res;
    let watcher = Watcher { filter, shape, res };
    let mut shutdown = state.shutdown.clone();

    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let mut start = match start {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(error_line(&e)).await;
                return;
            }
        };
        let mut last_rev = start.revision;
        for obj in std::mem::take(&mut start.initial) {
            if tx.send(watcher.line("ADDED", &obj)).await.is_err() {
                return;
            }
        }
        if initial_events == Some(true) && tx.send(bookmark(res, last_rev, true)).await.is_err() {
            return;
        }
        for ev in std::mem::take(&mut start.backlog) {
            last_rev = ev.revision;
            if let Some(line) = watcher.event(&ev) {
                if tx.send(line).await.is_err() {
                    return;
                }
            }
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut bookmark_tick = tokio::time::interval(BOOKMARK_EVERY);
        bookmark_tick.tick().await;
        loop {
            let msg = tokio::select! {
                msg = start.rx.recv() => msg,
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = shutdown.changed() => return,
                _ = bookmark_tick.tick(), if bookmarks => {
                    if tx.send(bookmark(res, last_rev, false)).await.is_err() { return; }
                    continue;
                }
            };
            let line = match msg {
                // The channel was subscribed to with the backlog taken: no change repeats.
                Ok(CacheMessage::Event(ev)) => {
                    last_rev = ev.revision;
                    watcher.event(&ev)
                }
                Ok(CacheMessage::Progress(rev)) => {
                    last_rev = last_rev.max(rev);
                    None
                }
                // The cache was rebuilt, or this watcher fell too far behind: relist.
                Ok(CacheMessage::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    let e = ApiError::Expired("the watch fell behind; relist".into());
                    let _ = tx.send(error_line(&e)).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if let Some(line) = line {
                if tx.send(line).await.is_err() {
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
