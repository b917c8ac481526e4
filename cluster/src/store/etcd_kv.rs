//! The store's own key-value protocol: the subset of etcd v3's client API that
//! `kairn bench store` drives (KV `Range` and `Put`, `Watch`), served on each member's
//! Raft port. Wire-compatible with etcd, so one client measures a Kairn store and a real
//! etcd with the same code.
//!
//! Keys live under [`PREFIX`], apart from the API server's objects: this protocol can
//! neither read nor change them. Reads are linearizable unless `serializable` is set
//! (then served from this member's state); writes go through Raft like the API's.

use std::collections::HashMap;
use std::pin::Pin;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{EventKind, Op, Store, StoreError, Txn};

/// The generated etcd messages and services.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("etcdserverpb");
}

use proto::watch_request::RequestUnion;
use proto::{
    KeyValue, PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader, WatchRequest, WatchResponse,
};

/// Where keys written through this protocol live in the store.
pub const PREFIX: &str = "/kv/";

/// How many watch responses may queue for a slow watcher before its stream ends.
const WATCH_QUEUE: usize = 1024;

/// etcd's KV and Watch services over one store member.
#[derive(Clone)]
pub struct EtcdKv {
    store: Store,
}

impl EtcdKv {
    /// The services for `store`.
    pub fn new(store: Store) -> EtcdKv {
        EtcdKv { store }
    }

    fn header(&self, revision: u64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: 0,
            member_id: self.store.node_id(),
            revision: i64::try_from(revision).unwrap_or(i64::MAX),
            raft_term: 0,
        })
    }

    /// The grpc service for KV.
    pub fn kv_server(&self) -> proto::kv_server::KvServer<EtcdKv> {
        proto::kv_server::KvServer::new(self.clone())
    }

    /// The grpc service for Watch.
    pub fn watch_server(&self) -> proto::watch_server::WatchServer<EtcdKv> {
        proto::watch_server::WatchServer::new(self.clone())
    }
}

/// The store key of an etcd key (UTF-8 only: store keys are strings).
fn store_key(key: &[u8]) -> Result<String, Status> {
    let key = std::str::from_utf8(key).map_err(|_| Status::invalid_argument("keys must be UTF-8"))?;
    Ok(format!("{PREFIX}{key}"))
}

/// The end of etcd's prefix range for `key`: the key with its last byte incremented
/// (trailing 0xff bytes dropped), as `clientv3.WithPrefix` computes it.
pub fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every key: etcd's "\0".
    vec![0]
}

/// Which store keys an etcd `key`/`range_end` pair names.
enum Range {
    /// One key.
    Key(String),
    /// Every key under a prefix.
    Prefix(String),
}

fn range(key: &[u8], range_end: &[u8]) -> Result<Range, Status> {
    if range_end.is_empty() {
        return Ok(Range::Key(store_key(key)?));
    }
    if range_end == prefix_end(key).as_slice() || (key.is_empty() && range_end == [0]) {
        return Ok(Range::Prefix(store_key(key)?));
    }
    Err(Status::unimplemented("only single keys and prefix ranges are served"))
}

fn status(e: StoreError) -> Status {
    match e {
        StoreError::NotLeader { .. } | StoreError::NoQuorum(_) => Status::unavailable(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

fn to_kv(kv: &super::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key.strip_prefix(PREFIX).unwrap_or(&kv.key).as_bytes().to_vec(),
        create_revision: 0,
        mod_revision: i64::try_from(kv.mod_revision).unwrap_or(i64::MAX),
        version: 0,
        value: kv.value.clone(),
        lease: i64::try_from(kv.lease).unwrap_or(0),
    }
}

#[tonic::async_trait]
impl proto::kv_server::Kv for EtcdKv {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let r = request.into_inner();
        let limit = usize::try_from(r.limit).ok().filter(|l| *l > 0);
        let (kvs, revision, more) = match range(&r.key, &r.range_end)? {
            Range::Key(key) => {
                let kv = if r.serializable {
                    self.store.get_local(&key).map_err(status)?
                } else {
                    self.store.get(&key).await.map_err(status)?
                };
                (kv.into_iter().collect::<Vec<_>>(), self.store.revision(), false)
            }
            Range::Prefix(prefix) if r.serializable => self
                .store
                .sm
                .range(&prefix, None, limit)
                .map_err(|e| status(e.into()))?,
            Range::Prefix(prefix) => self.store.list(&prefix, None, limit).await.map_err(status)?,
        };
        let count = i64::try_from(kvs.len()).unwrap_or(i64::MAX);
        Ok(Response::new(RangeResponse {
            header: self.header(revision),
            kvs: if r.count_only {
                Vec::new()
            } else {
                kvs.iter().map(to_kv).collect()
            },
            more,
            count,
        }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let r = request.into_inner();
        if r.prev_kv || r.ignore_value || r.ignore_lease {
            return Err(Status::unimplemented("prev_kv and ignore_* are not served"));
        }
        let txn = Txn {
            compares: Vec::new(),
            ops: vec![Op::Put {
                key: store_key(&r.key)?,
                value: r.value,
                lease: (r.lease != 0).then_some(r.lease as u64),
            }],
        };
        let result = self.store.txn(txn).await.map_err(status)?;
        if result.missing_lease.is_some() {
            // etcd's own words, which its clients match on.
            return Err(Status::not_found("etcdserver: requested lease not found"));
        }
        Ok(Response::new(PutResponse {
            header: self.header(result.revision),
            prev_kv: None,
        }))
    }
}

type WatchResponses = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl proto::watch_server::Watch for EtcdKv {
    type WatchStream = WatchResponses;

    async fn watch(&self, request: Request<Streaming<WatchRequest>>) -> Result<Response<WatchResponses>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let service = self.clone();
        tokio::spawn(async move {
            let mut watches: HashMap<i64, tokio::task::JoinHandle<()>> = HashMap::new();
            let mut next_id = 0;
            while let Ok(Some(message)) = incoming.message().await {
                match message.request_union {
                    Some(RequestUnion::CreateRequest(create)) => {
                        let id = if create.watch_id > 0 { create.watch_id } else { next_id };
                        next_id = next_id.max(id) + 1;
                        match service.start_watch(id, create, tx.clone()).await {
                            Some(task) => {
                                watches.insert(id, task);
                            }
                            None => continue,
                        }
                    }
                    Some(RequestUnion::CancelRequest(cancel)) => {
                        if let Some(task) = watches.remove(&cancel.watch_id) {
                            task.abort();
                        }
                        let canceled = WatchResponse {
                            header: service.header(service.store.revision()),
                            watch_id: cancel.watch_id,
                            canceled: true,
                            ..Default::default()
                        };
                        if tx.send(Ok(canceled)).await.is_err() {
                            break;
                        }
                    }
                    None => {}
                }
            }
            // The client went away: its watches end with it.
            for task in watches.into_values() {
                task.abort();
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl EtcdKv {
    /// Starts watch `id`: confirms it (or says why not) and forwards its events.
    async fn start_watch(
        &self,
        id: i64,
        create: proto::WatchCreateRequest,
        tx: mpsc::Sender<Result<WatchResponse, Status>>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let refuse = |reason: String| WatchResponse {
            header: self.header(self.store.revision()),
            watch_id: id,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        };
        let (prefix, exact) = match range(&create.key, &create.range_end) {
            Ok(Range::Key(key)) => (key.clone(), Some(key)),
            Ok(Range::Prefix(prefix)) => (prefix, None),
            Err(e) => {
                let _ = tx.send(Ok(refuse(e.message().to_string()))).await;
                return None;
            }
        };
        let after = match u64::try_from(create.start_revision) {
            Ok(start) if start > 0 => start - 1,
            _ => self.store.revision(),
        };
        let mut stream = match self.store.watch(&prefix, after) {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Ok(refuse(e.to_string()))).await;
                return None;
            }
        };
        let created = WatchResponse {
            header: self.header(after),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        if tx.send(Ok(created)).await.is_err() {
            return None;
        }
        let service = self.clone();
        Some(tokio::spawn(async move {
            while let Some(next) = stream.next_events().await {
                let response = match next {
                    Ok(watched) => {
                        let events: Vec<proto::Event> = watched
                            .events
                            .iter()
                            .filter(|e| exact.as_ref().is_none_or(|k| &e.kv.key == k))
                            .map(|e| proto::Event {
                                r#type: match e.kind {
                                    EventKind::Put => proto::event::EventType::Put as i32,
                                    EventKind::Delete => proto::event::EventType::Delete as i32,
                                },
                                kv: Some(to_kv(&e.kv)),
                                prev_kv: None,
                            })
                            .collect();
                        if events.is_empty() {
                            continue;
                        }
                        WatchResponse {
                            header: service.header(watched.revision),
                            watch_id: id,
                            events,
                            ..Default::default()
                        }
                    }
                    Err(e) => WatchResponse {
                        header: service.header(service.store.revision()),
                        watch_id: id,
                        canceled: true,
                        cancel_reason: e.to_string(),
                        ..Default::default()
                    },
                };
                let canceled = response.canceled;
                if tx.send(Ok(response)).await.is_err() || canceled {
                    return;
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_are_etcds() {
        assert_eq!(prefix_end(b"abc"), b"abd");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert!(matches!(range(b"k", b""), Ok(Range::Key(k)) if k == "/kv/k"));
        assert!(matches!(range(b"bench/", b"bench0"), Ok(Range::Prefix(p)) if p == "/kv/bench/"));
        assert!(range(b"a", b"c").is_err());
    }
}
