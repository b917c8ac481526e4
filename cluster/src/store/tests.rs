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
        let sm = StateMachine::open(&db, &dir.path().join("raft-snapshot"))?;
        let log = LogStore::open(&db, &dir.path().join("raft-log"), None)
            .map_err(|e| StorageError::from(openraft::StorageIOError::write(openraft::AnyError::new(&e))))?;
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
        lease: None,
    }
}

async fn open(dir: &std::path::Path) -> Store {
    let config = StoreConfig {
        node_id: 1,
        raft_addr: "127.0.0.1:0".parse().unwrap(),
        start: crate::store::Start::Single,
    };
    // A store reopened in the same process: the one shut down may still be letting go of
    // the database lock in its background tasks (Raft's core and state machine worker).
    // A real restart is a new process, where the lock goes with it.
    let mut tries = 0;
    loop {
        match Store::open(dir, config.clone()).await {
            Ok(store) => return store,
            Err(StoreError::Db(e)) if tries < 50 && e.to_string().contains("could not acquire lock") => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("store opens: {e}"),
        }
    }
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
async fn watch_replays_history_then_streams_and_resumes_after_a_restart() {
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

    // After a restart the data is there, and so is the history: re-applying the log
    // since the last snapshot (none yet) publishes the same events at the same revisions.
    let store = open(dir.path()).await;
    assert!(store.get("/other").await.unwrap().is_some());
    assert!(store.get("/w/1").await.unwrap().is_none());
    let mut w = store.watch("/w/", start).unwrap();
    let ev = w.next_events().await.unwrap().unwrap().events[0].clone();
    assert_eq!((ev.kind, ev.kv.mod_revision), (EventKind::Put, first.revision));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_entries_but_each_gets_its_own_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let start = store.revision();
    let mut watch = store.watch("/c/", start).unwrap();

    // 200 creates and 50 compare-and-swaps of one key, all at once: they are gathered
    // into few Raft entries, yet every successful one has a revision of its own and
    // exactly one swap from the same starting revision wins.
    store
        .txn(Txn {
            compares: vec![],
            ops: vec![put("/c/shared", "0")],
        })
        .await
        .unwrap();
    let base = store.get("/c/shared").await.unwrap().unwrap().mod_revision;
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..200 {
        let store = store.clone();
        writes.spawn(async move {
            let key = format!("/c/{i:03}");
            let txn = Txn {
                compares: vec![Compare {
                    key: key.clone(),
                    expect: Expect::Absent,
                }],
                ops: vec![put(&key, "v")],
            };
            store.txn(txn).await.unwrap()
        });
    }
    for i in 0..50 {
        let store = store.clone();
        writes.spawn(async move {
            let txn = Txn {
                compares: vec![Compare {
                    key: "/c/shared".into(),
                    expect: Expect::ModRevision(base),
                }],
                ops: vec![put("/c/shared", &format!("swap {i}"))],
            };
            store.txn(txn).await.unwrap()
        });
    }
    let results = writes.join_all().await;
    let won: Vec<u64> = results.iter().filter(|r| r.succeeded).map(|r| r.revision).collect();
    assert_eq!(won.len(), 201, "every create and exactly one swap succeed");
    let mut sorted = won.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), won.len(), "no two writes share a revision");
    assert_eq!(
        (sorted[0], sorted[sorted.len() - 1]),
        (base + 1, base + 201),
        "revisions count writes, with no gaps"
    );
    assert_eq!(store.revision(), base + 201);
    let lost = results.iter().find(|r| !r.succeeded).unwrap();
    let actual = lost.failed.as_ref().map(|(_, actual)| *actual);
    assert!(
        actual.is_some_and(|a| a > base),
        "a lost swap names the winner's revision: {actual:?}"
    );

    // The watch sees every write once, in revision order.
    let mut seen = Vec::new();
    while seen.len() < 202 {
        let w = tokio::time::timeout(Duration::from_secs(5), watch.next_events())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.extend(w.events.iter().map(|e| e.kv.mod_revision));
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "watch order: {seen:?}");
    assert_eq!(seen[0], base);
    store.shutdown().await.unwrap();
    drop(store);

    // The revision survives a restart.
    let store = open(dir.path()).await;
    assert_eq!(store.revision(), base + 201);
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_unless_kept_alive_and_revocation_deletes_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let leased = |key: &str, lease| Txn {
        compares: vec![],
        ops: vec![Op::Put {
            key: key.into(),
            value: b"v".to_vec(),
            lease: Some(lease),
        }],
    };

    // A put naming a lease that does not exist writes nothing.
    let refused = store.txn(leased("/l/none", 42)).await.unwrap();
    assert!(!refused.succeeded);
    assert_eq!(refused.missing_lease, Some(42));
    assert!(store.get("/l/none").await.unwrap().is_none());

    // Two 1-second leases: one left alone, one kept alive; a third revoked at once.
    let short = store.lease_grant(1).await.unwrap();
    let kept = store.lease_grant(1).await.unwrap();
    let revoked = store.lease_grant(60).await.unwrap();
    let start = store.revision();
    let mut watch = store.watch("/l/", start).unwrap();
    for (key, lease) in [("/l/short", short), ("/l/kept", kept), ("/l/revoked", revoked)] {
        assert!(store.txn(leased(key, lease)).await.unwrap().succeeded);
    }
    assert_eq!(store.get("/l/short").await.unwrap().unwrap().lease, short);

    store.lease_revoke(revoked).await.unwrap();
    assert!(
        store.get("/l/revoked").await.unwrap().is_none(),
        "revoking deletes at once"
    );
    assert!(!store.leases().unwrap().contains_key(&revoked));

    let until = std::time::Instant::now() + Duration::from_millis(2500);
    while std::time::Instant::now() < until {
        assert_eq!(store.lease_keep_alive(kept).await.unwrap(), Some(1));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(store.get("/l/short").await.unwrap().is_none(), "the idle lease expired");
    assert!(store.get("/l/kept").await.unwrap().is_some(), "the kept lease did not");
    assert_eq!(store.lease_keep_alive(short).await.unwrap(), None);

    // Expiry is a delete like any other: watchers see it.
    let mut deleted = Vec::new();
    while deleted.len() < 2 {
        let w = tokio::time::timeout(Duration::from_secs(5), watch.next_events())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        deleted.extend(
            w.events
                .iter()
                .filter(|e| e.kind == EventKind::Delete)
                .map(|e| e.kv.key.clone()),
        );
    }
    assert_eq!(deleted, vec!["/l/revoked".to_string(), "/l/short".to_string()]);

    // Leases outlive a restart, and still expire after it.
    store.shutdown().await.unwrap();
    drop(store);
    let store = open(dir.path()).await;
    assert!(store.leases().unwrap().contains_key(&kept));
    assert!(store.get("/l/kept").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        store.get("/l/kept").await.unwrap().is_none(),
        "expired after the restart"
    );
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_snapshot_carries_leases_and_what_is_attached_to_them() {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};

    use super::types::Proposal;

    let entry = |index: u64, ops: Vec<Op>| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal {
            txns: vec![Txn { compares: vec![], ops }],
        }),
    };
    let source_dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().path(source_dir.path()).open().unwrap();
    let mut source = StateMachine::open(&db, &source_dir.path().join("raft-snapshot")).unwrap();
    source
        .apply([
            entry(1, vec![Op::LeaseGrant { id: 7, ttl_seconds: 30 }]),
            entry(
                2,
                vec![Op::Put {
                    key: "/s/leased".into(),
                    value: b"v".to_vec(),
                    lease: Some(7),
                }],
            ),
            entry(3, vec![put("/s/plain", "v")]),
        ])
        .await
        .unwrap();
    let snapshot = source.build_snapshot().await.unwrap();

    let target_dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().path(target_dir.path()).open().unwrap();
    let mut target = StateMachine::open(&db, &target_dir.path().join("raft-snapshot")).unwrap();
    target
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    assert_eq!(target.leases().unwrap().get(&7), Some(&30));
    assert_eq!(target.revision(), source.revision());
    assert_eq!(target.get("/s/leased").unwrap().unwrap().lease, 7);

    // The attachment came along: revoking the lease there deletes its key, only that one.
    target.apply([entry(4, vec![Op::LeaseRevoke { id: 7 }])]).await.unwrap();
    assert!(target.get("/s/leased").unwrap().is_none());
    assert!(target.get("/s/plain").unwrap().is_some());
    assert!(target.leases().unwrap().is_empty());
}

#[test]
fn a_state_machine_kept_in_sled_by_an_older_version_moves_into_a_snapshot() {
    use openraft::{CommittedLeaderId, LogId};

    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().path(dir.path()).open().unwrap();
    // The layout earlier versions wrote: revision and lease (8 bytes BE
    // each) before the value, the last applied log id and the revision beside the data.
    let tree = db.open_tree("state").unwrap();
    let mut value = 41u64.to_be_bytes().to_vec();
    value.extend_from_slice(&0u64.to_be_bytes());
    value.extend_from_slice(b"hello");
    tree.insert(b"k/registry/a", value).unwrap();
    tree.insert(b"m/revision", &42u64.to_be_bytes()).unwrap();
    let last = LogId::<NodeId>::new(CommittedLeaderId::new(3, 1), 77);
    tree.insert(b"m/last_applied", super::codec::encode_framed(&last).unwrap())
        .unwrap();

    let sm = StateMachine::open(&db, &dir.path().join("raft-snapshot")).unwrap();
    let kv = sm.get("registry/a").unwrap().expect("the key moved over");
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"hello"[..], 41));
    assert_eq!(sm.revision(), 42);
    assert_eq!(sm.last_applied().unwrap(), Some(last));
    assert!(
        !db.tree_names().iter().any(|n| n.as_ref() == b"state"),
        "the tree is dropped"
    );
    drop(sm);

    // What moved is in the snapshot file now: a second open finds it there.
    let sm = StateMachine::open(&db, &dir.path().join("raft-snapshot")).unwrap();
    assert_eq!(
        sm.get("registry/a").unwrap().map(|kv| kv.value),
        Some(b"hello".to_vec())
    );
    assert_eq!(sm.last_applied().unwrap(), Some(last));
}
