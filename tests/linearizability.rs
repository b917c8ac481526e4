//! Linearizability under faults: concurrent clients read and write registers (one
//! ConfigMap each) through every member's API while a follower is partitioned away and
//! the leader is killed with -9 and restarted; their history must have a linearization
//! (`common::linearizability`). The checker's own tests come first: it must accept
//! what is allowed and catch a stale read.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::Members;
use common::linearizability::{check, check_register, Kind, Op};
use common::wait_for;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;

fn op(client: usize, call: u64, ret: Option<u64>, kind: Kind) -> Op {
    Op {
        client,
        key: "k".into(),
        call,
        ret,
        kind,
    }
}

fn write(v: &str) -> Kind {
    Kind::Write(v.into())
}

fn read(v: Option<&str>) -> Kind {
    Kind::Read(v.map(str::to_string))
}

#[test]
fn the_checker_accepts_overlapping_operations_in_either_order() {
    // A read overlapping a write may see the old value or the new one.
    for seen in [Some("a"), Some("b")] {
        let history = [
            op(0, 0, Some(10), write("a")),
            op(1, 20, Some(40), write("b")),
            op(2, 30, Some(50), read(seen)),
        ];
        check_register(None, &history).unwrap();
    }
    // Two reads overlapping one write: the first may see the new value and the later
    // one, which began after the first returned, must not go back to the old one.
    let history = [
        op(0, 0, Some(100), write("b")),
        op(1, 10, Some(20), read(Some("b"))),
        op(2, 30, Some(40), read(Some("a"))),
    ];
    assert!(check_register(Some("a"), &history).is_err());
}

#[test]
fn the_checker_catches_a_stale_read() {
    let history = [
        op(0, 0, Some(10), write("a")),
        op(0, 20, Some(30), write("b")),
        op(1, 40, Some(50), read(Some("a"))),
    ];
    let why = check_register(None, &history).unwrap_err();
    assert!(why.contains("not linearizable"), "{why}");
    // A value nobody wrote.
    assert!(check_register(None, &[op(0, 0, Some(1), read(Some("z")))]).is_err());
}

#[test]
fn a_write_of_unknown_outcome_may_land_late_or_never() {
    // The client of "b" saw an error: "b" may show up later...
    let late = [
        op(0, 0, Some(10), write("a")),
        op(1, 20, None, write("b")),
        op(2, 30, Some(40), read(Some("a"))),
        op(2, 100, Some(110), read(Some("b"))),
    ];
    check_register(None, &late).unwrap();
    // ...or never.
    let never = [
        op(0, 0, Some(10), write("a")),
        op(1, 20, None, write("b")),
        op(2, 100, Some(110), read(Some("a"))),
    ];
    check_register(None, &never).unwrap();
    // But once seen, it stays (no later read of the older value).
    let flip = [
        op(0, 0, Some(10), write("a")),
        op(1, 20, None, write("b")),
        op(2, 30, Some(40), read(Some("b"))),
        op(2, 50, Some(60), read(Some("a"))),
    ];
    assert!(check_register(None, &flip).is_err());
}

const REGISTERS: usize = 4;
const CLIENTS: usize = 6;

fn register(k: usize) -> String {
    format!("reg-{k}")
}

/// A small deterministic generator, so a failing run can be told apart by its seed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_and_writes_stay_linearizable_through_a_partition_and_a_killed_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = Members::behind_proxies(dir.path(), 3, &["--components", "api"]);
    members.start_all();
    let admin = members.client(1).await;
    let leader = wait_for("a leader", Duration::from_secs(30), || members.leader(1)).await;
    let api: Api<ConfigMap> = Api::namespaced(admin.clone(), "default");
    for k in 0..REGISTERS {
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": register(k)},
            "data": {"v": "init"},
        }))
        .unwrap();
        api.create(&PostParams::default(), &cm).await.unwrap();
    }

    // Each client talks to one member's API, without kube-rs' retries, so every
    // operation's interval is exactly one request.
    let start = Instant::now();
    let history = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let member = (c % 3) as u64 + 1;
        let api: Api<ConfigMap> = Api::namespaced(members.client_without_retry(member).await, "default");
        let (history, stop) = (history.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut rng = Lcg(c as u64 + 1);
            let now = || start.elapsed().as_micros() as u64;
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let key = register(rng.next() as usize % REGISTERS);
                let call = now();
                let (kind, ok) = if rng.next().is_multiple_of(2) {
                    n += 1;
                    let value = format!("c{c}-{n}");
                    let patch = serde_json::json!({"data": {"v": value}});
                    let result = api.patch(&key, &PatchParams::default(), &Patch::Merge(&patch)).await;
                    (Kind::Write(value), result.is_ok())
                } else {
                    match api.get(&key).await {
                        Ok(cm) => (Kind::Read(cm.data.and_then(|d| d.get("v").cloned())), true),
                        // A failed read tells nothing.
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    }
                };
                let ret = ok.then(now);
                history.lock().unwrap().push(Op {
                    client: c,
                    key,
                    call,
                    ret,
                    kind,
                });
                let pause = if ok { 5 } else { 100 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(3)).await;
    let cut = if leader == 3 { 2 } else { 3 };
    println!("member {cut} cut off from the others (member {leader} leads)");
    members.partition(cut);
    tokio::time::sleep(Duration::from_secs(4)).await;
    println!("healed");
    members.heal();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = wait_for("a leader", Duration::from_secs(30), || members.leader(cut)).await;
    println!("kill -9 the leader, member {leader}");
    members.kill(leader);
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("member {leader} restarted");
    members.start(leader);
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }

    let history = history.lock().unwrap().clone();
    let completed = history.iter().filter(|op| op.ret.is_some()).count();
    let unknown = history.len() - completed;
    let reads = history.iter().filter(|op| matches!(op.kind, Kind::Read(_))).count();
    println!(
        "{} operations: {completed} completed ({reads} reads), {unknown} writes of unknown outcome",
        history.len()
    );
    assert!(completed >= 200, "too few operations to tell anything: {completed}");
    let checked = Instant::now();
    if let Err(why) = check(Some("init"), &history) {
        panic!("the history is not linearizable: {why}");
    }
    println!("linearizable (checked in {:?})", checked.elapsed());
}
