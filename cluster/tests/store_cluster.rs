//! Three store members on loopback: replication over the tonic transport, writes
//! forwarded from a follower to the leader, and a new leader after the old one stops.

use std::time::{Duration, Instant};

use kairn_cluster::store::{Op, Start, Store, StoreConfig, Txn};

async fn member(dir: &std::path::Path, id: u64, start: Start) -> Store {
    let config = StoreConfig {
        node_id: id,
        raft_addr: "127.0.0.1:0".parse().unwrap(),
        start,
    };
    Store::open(&dir.join(id.to_string()), config)
        .await
        .expect("member opens")
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn put(key: &str, value: &str) -> Txn {
    Txn {
        compares: vec![],
        ops: vec![Op::put(key, value.as_bytes())],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_replicate_forward_and_fail_over() {
    let dir = tempfile::tempdir().unwrap();

    // Member 1 starts a cluster; 2 and 3 join it as voters.
    let one = member(dir.path(), 1, Start::Single).await;
    let join = Start::Join {
        addr: one.raft_addr().to_string(),
        learner: false,
    };
    let two = member(dir.path(), 2, join.clone()).await;
    let three = member(dir.path(), 3, join).await;
    let members = one.members().unwrap();
    assert_eq!(members.len(), 3, "{members:?}");
    assert!(members.iter().all(|m| m.role == "voter"), "{members:?}");

    // A write sent to a follower is forwarded to the leader and replicated everywhere.
    let written = two.txn(put("/k/a", "1")).await.unwrap();
    assert!(written.succeeded);
    eventually("the write on every member", || {
        [&one, &two, &three].iter().all(|m| {
            m.get_local("/k/a")
                .unwrap()
                .is_some_and(|kv| kv.mod_revision == written.revision && kv.value == b"1")
        })
    })
    .await;

    // A linearizable read on a follower sees the write just acknowledged elsewhere.
    let seen = three.txn(put("/k/c", "3")).await.unwrap();
    assert!(two.linearizable_revision().await.unwrap() >= seen.revision);
    assert_eq!(two.get("/k/c").await.unwrap().unwrap().value, b"3");

    // The leader stops; the other two elect a new one and keep accepting writes.
    one.shutdown().await.unwrap();
    eventually("a new leader", || {
        matches!(two.leader(), Some(l) if l != 1) && two.leader() == three.leader()
    })
    .await;
    let after = three.txn(put("/k/b", "2")).await.unwrap();
    assert!(after.succeeded && after.revision > written.revision);
    eventually("the write after failover on both members", || {
        [&two, &three].iter().all(|m| m.get_local("/k/b").unwrap().is_some())
    })
    .await;
    two.shutdown().await.unwrap();
    three.shutdown().await.unwrap();
}
