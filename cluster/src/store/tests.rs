//! Store tests: openraft's storage conformance suite, then the store's own semantics on
//! a real one-member Raft cluster in a temp dir.

use std::time::Duration;

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

use super::*;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SledBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir()
            .map_err(|e| StorageError::from(openraft::StorageIOError::write(openraft::AnyError::new(&e))))?;
        let db = sled::Config::new()
            .path(dir.path())
            .open()
            .map_err(|e| StorageError::from(openraft::StorageIOError::write(openraft::AnyError::new(&e))))?;
        let log = LogStore::open(&db)
            .map_err(|e| StorageError::from(openraft::StorageIOError::write(openraft::AnyError::new(&e))))?;
        let sm = StateMachine::open(&db, &dir.path().join("raft-snapshot"))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_conformance_suite() -> Result<(), StorageError<NodeId>> {
    Suite::test_all(SledBuilder)
}

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    }
}

async fn open(dir: &std::path::Path) -> Store {
    let config = StoreConfig {
        node_id: 1,
        raft_addr: "127.0.0.1:0".parse().unwrap(),
        start: crate::store::Start::Single,
    };
    Store::open(dir, config).await.expect("store opens")
}

#[tokio::test]
async fn txn_compares_on_revision_and_applies_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;

    // Two keys written in one transaction share one revision.
    let r = store
        .txn(Txn {
            compares: vec![],
            ops: vec![put("/a/1", "x"), put("/a/2", "y")],
        })
        .await
        .unwrap();
    assert!(r.succeeded);
    let one = store.get("/a/1").await.unwrap().unwrap();
    let two = store.get("/a/2").await.unwrap().unwrap();
    assert_eq!(one.mod_revision, r.revision);
    assert_eq!(two.mod_revision, r.revision);

    // A stale revision fails the compare and writes nothing, not even the other op.
    let stale = Txn {
        compares: vec![Compare {
            key: "/a/1".into(),
            expect: Expect::ModRevision(r.revision - 1),
        }],
        ops: vec![put("/a/1", "z"), put("/a/3", "w")],
    };
    let failed = store.txn(stale).await.unwrap();
    assert!(!failed.succeeded);
    assert_eq!(failed.failed.as_ref().map(|(_, actual)| *actual), Some(r.revision));
    assert!(store.get("/a/3").await.unwrap().is_none());
    assert_eq!(store.get("/a/1").await.unwrap().unwrap().value, b"x");

    // Absent / present compares.
    let create_again = Txn {
        compares: vec![Compare {
            key: "/a/1".into(),
            expect: Expect::Absent,
        }],
        ops: vec![put("/a/1", "q")],
    };
    assert!(!store.txn(create_again).await.unwrap().succeeded);

    // Paged listing under a prefix.
    store
        .txn(Txn {
            compares: vec![],
            ops: vec![put("/b/1", "other")],
        })
        .await
        .unwrap();
    let (page, _, more) = store.list("/a/", None, Some(1)).await.unwrap();
    assert_eq!(page.len(), 1);
    assert!(more);
    let (rest, _, more) = store.list("/a/", Some(&page[0].key), Some(10)).await.unwrap();
    assert_eq!(rest.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(), vec!["/a/2"]);
    assert!(!more);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn watch_replays_history_then_streams_and_refuses_unknown_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let start = store.revision();
    let first = store
        .txn(Txn {
            compares: vec![],
            ops: vec![put("/w/1", "a")],
        })
        .await
        .unwrap();

    let mut w = store.watch("/w/", start).unwrap();
    let ev = w.next_events().await.unwrap().unwrap().events[0].clone();
    assert_eq!(
        (ev.kind, ev.kv.mod_revision, ev.prev.is_some()),
        (EventKind::Put, first.revision, false)
    );

    store
        .txn(Txn {
            compares: vec![],
            ops: vec![put("/other", "ignored"), Op::Delete { key: "/w/1".into() }],
        })
        .await
        .unwrap();
    let watched = tokio::time::timeout(Duration::from_secs(5), w.next_events())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(watched.events.len(), 1, "only the event under the prefix");
    let ev = &watched.events[0];
    assert_eq!(ev.kind, EventKind::Delete);
    assert_eq!(ev.kv.value, b"a", "a delete event carries the last value");
    store.shutdown().await.unwrap();
    drop(store);

    // After a restart the data is there, but older revisions can no longer be watched.
    let store = open(dir.path()).await;
    assert!(store.get("/other").await.unwrap().is_some());
    assert!(store.get("/w/1").await.unwrap().is_none());
    assert!(matches!(store.watch("/w/", start), Err(StoreError::Expired { .. })));
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn appends_are_keyed_by_the_revision_they_land_at() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let append = |v: &str| Op::Append {
        prefix: "/log/".into(),
        value: v.as_bytes().to_vec(),
    };
    let first = store
        .txn(Txn {
            compares: vec![],
            ops: vec![put("/obj", "1"), append("a"), append("b")],
        })
        .await
        .unwrap();
    let second = store
        .txn(Txn {
            compares: vec![],
            ops: vec![append("c")],
        })
        .await
        .unwrap();
    let (kvs, _, _) = store.list("/log/", None, None).await.unwrap();
    let keys: Vec<(String, u64)> = kvs.iter().map(|kv| (kv.key.clone(), kv.mod_revision)).collect();
    assert_eq!(
        keys,
        vec![
            (append_key("/log/", first.revision, 0), first.revision),
            (append_key("/log/", first.revision, 1), first.revision),
            (append_key("/log/", second.revision, 0), second.revision),
        ]
    );
    assert_eq!(append_revision(&keys[2].0), Some(second.revision));
    assert_eq!(kvs[1].value, b"b");
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_etcd_protocol_puts_reads_and_watches_keys_apart_from_the_api() {
    use super::etcd_kv::proto::kv_client::KvClient;
    use super::etcd_kv::proto::watch_client::WatchClient;
    use super::etcd_kv::proto::{watch_request, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest};

    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", store.raft_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut kv = KvClient::new(channel.clone());

    // A watch of a prefix from now, opened before the writes.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"app/".to_vec(),
            range_end: super::etcd_kv::prefix_end(b"app/"),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut watch = WatchClient::new(channel)
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().unwrap().created);

    let put = kv
        .put(PutRequest {
            key: b"app/a".to_vec(),
            value: b"1".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let revision = put.header.unwrap().revision;
    kv.put(PutRequest {
        key: b"other".to_vec(),
        value: b"2".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();

    // A linearizable get sees the put at its revision; the key lives under /kv/.
    let got = kv
        .range(RangeRequest {
            key: b"app/a".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.kvs.len(), 1);
    assert_eq!(got.kvs[0].value, b"1");
    assert_eq!(got.kvs[0].mod_revision, revision);
    assert_eq!(store.get_local("/kv/app/a").unwrap().unwrap().value, b"1");
    // A prefix range sees only its prefix.
    let listed = kv
        .range(RangeRequest {
            key: b"app/".to_vec(),
            range_end: super::etcd_kv::prefix_end(b"app/"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.count, 1);

    // The watch delivers the put under its prefix, not the other one.
    let event = watch.message().await.unwrap().unwrap();
    assert_eq!(event.events.len(), 1);
    assert_eq!(event.events[0].kv.as_ref().unwrap().key, b"app/a");

    // Arbitrary ranges are refused rather than answered wrongly.
    let refused = kv
        .range(RangeRequest {
            key: b"a".to_vec(),
            range_end: b"c".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented);
    store.shutdown().await.unwrap();
}
