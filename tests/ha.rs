//! A highly available control plane under faults, with real `kairn server` processes on
//! loopback: the leader killed during a stream of writes, every member stopped and
//! started again, a damaged snapshot and a torn write at the end of the Raft log.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::Members;
use common::wait_for;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ListParams, PostParams};
use kube::Api;

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "data": {"payload": "x".repeat(200)},
    }))
    .unwrap()
}

/// The names of every ConfigMap in `default`, read linearizably through `client`.
async fn names(client: &kube::Client) -> Option<BTreeSet<String>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let list = api.list(&ListParams::default()).await.ok()?;
    Some(list.items.into_iter().filter_map(|c| c.metadata.name).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_during_writes_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = Members::new(dir.path(), 3, &[]);
    members.start_all();
    let clients = [
        members.client(1).await,
        members.client(2).await,
        members.client(3).await,
    ];
    let leader = wait_for("a leader", Duration::from_secs(30), || members.leader(1)).await;
    println!("member {leader} leads");

    // Four writers, each on its own member's API, moving to the next member when theirs
    // fails; a name counts only once its create was acknowledged.
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4usize {
        let clients = clients.clone();
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut at = w % 3;
            let mut n = 0;
            let mut errors = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let name = format!("w{w}-{n}");
                let api: Api<ConfigMap> = Api::namespaced(clients[at].clone(), "default");
                match api.create(&PostParams::default(), &config_map(&name)).await {
                    Ok(_) => {
                        acknowledged.lock().unwrap().insert(name);
                        n += 1;
                    }
                    // Already there: an earlier attempt was applied, unacknowledged.
                    Err(kube::Error::Api(s)) if s.code == 409 => n += 1,
                    Err(_) => {
                        errors += 1;
                        at = (at + 1) % 3;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            errors
        }));
    }
    wait_for("writes before the kill", Duration::from_secs(30), || {
        let count = acknowledged.lock().unwrap().len();
        async move { (count >= 100).then_some(()) }
    })
    .await;

    // kill -9 the leader mid-stream.
    let before_kill = acknowledged.lock().unwrap().len();
    members.kill(leader);
    let killed_at = Instant::now();
    let survivor = if leader == 1 { 2 } else { 1 };
    let new_leader = wait_for("a new leader", Duration::from_secs(30), || async {
        members.leader(survivor).await.filter(|l| *l != leader)
    })
    .await;
    wait_for("writes after the kill", Duration::from_secs(30), || {
        let count = acknowledged.lock().unwrap().len();
        async move { (count >= before_kill + 100).then_some(()) }
    })
    .await;
    let recovered = killed_at.elapsed();
    println!("member {new_leader} leads; 100 more writes acknowledged {recovered:?} after the kill");
    // A few election timeouts (400-800 ms) plus the clients moving over.
    assert!(
        recovered < Duration::from_secs(10),
        "writes resumed only after {recovered:?}"
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }

    // Every acknowledged write is there, read linearizably through both survivors, and
    // again once the killed member is back and caught up.
    let acknowledged = acknowledged.lock().unwrap().clone();
    for id in [1, 2, 3].into_iter().filter(|id| *id != leader) {
        let seen = names(&clients[id as usize - 1])
            .await
            .expect("a list through a survivor");
        let missing: Vec<_> = acknowledged.difference(&seen).collect();
        assert!(missing.is_empty(), "member {id} lacks acknowledged writes: {missing:?}");
    }
    members.start(leader);
    let restarted = members.client(leader).await;
    wait_for("the restarted member to catch up", Duration::from_secs(60), || {
        let (restarted, acknowledged) = (restarted.clone(), acknowledged.clone());
        async move { names(&restarted).await.filter(|seen| seen.is_superset(&acknowledged)) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_stopped_and_started_again_resumes_state_revisions_and_watches() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = Members::new(dir.path(), 3, &[]);
    members.start_all();
    for id in 1..=3 {
        members.client(id).await;
    }
    let client = members.client(2).await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let created = api.create(&PostParams::default(), &config_map("kept")).await.unwrap();
    let rv: u64 = created.metadata.resource_version.unwrap().parse().unwrap();

    // Every member stops cleanly, then all start again.
    for id in 1..=3 {
        assert_eq!(members.stop(id), Some(0), "member {id} exits 0 on SIGTERM");
    }
    members.start_all();
    let client = tokio::time::timeout(Duration::from_secs(70), members.client(3)).await;
    let Ok(client) = client else {
        panic!("member 3 did not come back; its log:\n{}", members.node(3).log());
    };
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let kept = wait_for("the object after the restart", Duration::from_secs(60), || {
        let api = api.clone();
        async move { api.get("kept").await.ok() }
    })
    .await;
    assert_eq!(kept.metadata.resource_version.as_deref(), Some(rv.to_string().as_str()));

    // Revisions continue past the old ones, and a watch from a list sees new writes.
    let list = api.list(&ListParams::default()).await.unwrap();
    let list_rv = list.metadata.resource_version.clone().unwrap();
    let mut watch = Box::pin(api.watch(&kube::api::WatchParams::default(), &list_rv).await.unwrap());
    let after = api.create(&PostParams::default(), &config_map("after")).await.unwrap();
    let after_rv: u64 = after.metadata.resource_version.unwrap().parse().unwrap();
    assert!(after_rv > rv, "revision {after_rv} after the restart is past {rv}");
    use futures::StreamExt;
    let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a watch event")
        .expect("the stream goes on")
        .unwrap();
    match event {
        kube::api::WatchEvent::Added(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("after")),
        other => panic!("expected the new object, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_member_refuses_to_start_and_a_torn_tail_recovers() {
    let dir = tempfile::tempdir().unwrap();
    // Snapshots early, so member 3 has one to damage.
    let mut members = Members::new(dir.path(), 3, &[]);
    members.start_all();
    let client = members.client(1).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..20 {
        api.create(&PostParams::default(), &config_map(&format!("c{i}")))
            .await
            .unwrap();
    }

    // A torn tail: member 2 is killed mid-write, as it were: half a record (garbage) at
    // the end of its Raft log, past everything it acknowledged. It comes back (the torn
    // record is cut off) and serves everything. (Cutting off acknowledged bytes instead
    // is not a torn write but lost durable data, which Raft cannot survive on a member:
    // openraft's leader panics on a follower whose log went backwards.)
    members.kill(2);
    let log_dir = members.node(2).dir.join("store/raft-log");
    let mut segments: Vec<_> = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    let last = segments.last().expect("member 2 has a Raft log segment");
    // Records are a 4-byte big-endian length and that many bytes; the file is
    // preallocated, so the records end at the first length of zero.
    let mut bytes = std::fs::read(last).unwrap();
    let mut end = 0;
    while let Some(len) = bytes
        .get(end..end + 4)
        .map(|h| u32::from_be_bytes([h[0], h[1], h[2], h[3]]))
    {
        if len == 0 {
            break;
        }
        end += 4 + len as usize;
    }
    assert!(end > 0, "member 2's last segment holds records");
    bytes.truncate(end);
    bytes.extend_from_slice(&[0xA5; 100]);
    std::fs::write(last, &bytes).unwrap();
    members.start(2);
    let two = members.client(2).await;
    wait_for("member 2 serving every object", Duration::from_secs(60), || {
        let two = two.clone();
        async move {
            names(&two)
                .await
                .filter(|n| (0..20).all(|i| n.contains(&format!("c{i}"))))
        }
    })
    .await;

    let log = members.node(2).log();
    assert!(
        log.contains("torn write"),
        "member 2 says it cut off the torn record: {log}"
    );

    // A damaged snapshot: member 3 refuses to start, saying which file and why.
    members.stop(3);
    let snapshot = members.node(3).dir.join("store/raft-snapshot/current");
    if snapshot.exists() {
        let mut bytes = std::fs::read(&snapshot).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&snapshot, bytes).unwrap();
    } else {
        // No snapshot yet: plant a damaged one.
        std::fs::create_dir_all(snapshot.parent().unwrap()).unwrap();
        std::fs::write(&snapshot, b"KAIRNSNAP2 not really a snapshot").unwrap();
    }
    members.start(3);
    let code = members.wait_exit(3, Duration::from_secs(30));
    assert_eq!(
        code,
        Some(2),
        "a damaged member exits 2; log:\n{}",
        members.node(3).log()
    );
    let log = members.node(3).log();
    assert!(
        log.contains("snapshot") && log.contains("damaged") && log.contains("raft-snapshot/current"),
        "the error names the file: {log}"
    );
    // The other two go on.
    api.create(&PostParams::default(), &config_map("after")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn learners_serve_the_api_without_a_vote() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = Members::new(dir.path(), 3, &["--components", "api"]);
    members.start_all();
    let _ = members.client(1).await;
    wait_for("a leader", Duration::from_secs(30), || members.leader(1)).await;

    println!("two learners join; they serve the API");
    let learners = [members.add_learner(), members.add_learner()];
    for &id in &learners {
        let client = members.client(id).await;
        let api: Api<ConfigMap> = Api::namespaced(client, "default");
        api.create(&PostParams::default(), &config_map(&format!("via-{id}")))
            .await
            .unwrap();
    }
    let client = members.client(1).await;
    let request = http::Request::get("/apis/kairn.dev/v1/members")
        .body(Vec::new())
        .unwrap();
    let list: serde_json::Value = client.request(request).await.unwrap();
    let roles: Vec<(u64, String)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_u64().unwrap(), m["role"].as_str().unwrap().to_string()))
        .collect();
    println!("{roles:?}");
    assert_eq!(roles.iter().filter(|(_, r)| r == "voter").count(), 3);
    assert_eq!(roles.iter().filter(|(_, r)| r == "learner").count(), 2);

    println!("stop both learners and one voter: two voters of three still make a quorum");
    for id in learners {
        assert_eq!(members.stop(id), Some(0));
    }
    let leader = wait_for("a leader", Duration::from_secs(30), || members.leader(1)).await;
    let voter = if leader == 3 { 2 } else { 3 };
    assert_eq!(members.stop(voter), Some(0));
    let survivor = (1..=3).find(|id| *id != voter && *id != leader).unwrap();
    for id in [leader, survivor] {
        let client = members.client(id).await;
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        wait_for("a write with one voter down", Duration::from_secs(30), || {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &config_map(&format!("after-{id}")))
                    .await
                    .ok()
            }
        })
        .await;
        let seen = names(&client).await.unwrap();
        assert!(seen.contains("via-4") && seen.contains("via-5"), "{seen:?}");
    }
}

/// The API's answer to a request that must have been refused.
fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> kube::core::Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected a refusal from the API, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_member_refuses_and_catches_up_when_healed() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = Members::behind_proxies(dir.path(), 3, &["--components", "api"]);
    members.start_all();
    let _ = members.client(1).await;
    let leader = wait_for("a leader", Duration::from_secs(30), || members.leader(1)).await;
    let cut = if leader == 3 { 2 } else { 3 };
    let majority = (1..=3).find(|id| *id != cut && *id != leader).unwrap();
    let minority = members.client_without_retry(cut).await;
    let api: Api<ConfigMap> = Api::namespaced(minority.clone(), "default");
    api.create(&PostParams::default(), &config_map("before")).await.unwrap();

    println!("member {cut} cut off from members {leader} (leader) and {majority}");
    members.partition(cut);

    println!("the majority keeps writing");
    for id in [leader, majority] {
        let api: Api<ConfigMap> = Api::namespaced(members.client(id).await, "default");
        wait_for("a write on the majority side", Duration::from_secs(30), || {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &config_map(&format!("during-{id}")))
                    .await
                    .ok()
            }
        })
        .await;
    }

    println!("the minority refuses writes and linearizable reads, saying why");
    let status = refusal(api.create(&PostParams::default(), &config_map("minority")).await);
    println!("write refused: {} {}", status.code, status.message);
    assert_eq!(status.code, 503, "{status:?}");
    assert!(
        status.message.contains("no quorum") || status.message.contains("not the leader"),
        "{status:?}"
    );
    let status = refusal(api.list(&ListParams::default()).await);
    println!("read refused: {} {}", status.code, status.message);
    assert_eq!(status.code, 503, "{status:?}");

    println!("healed: member {cut} catches up");
    members.heal();
    let seen = wait_for("the healed member to catch up", Duration::from_secs(60), || async {
        let seen = names(&minority).await?;
        (seen.contains(&format!("during-{leader}")) && seen.contains(&format!("during-{majority}"))).then_some(seen)
    })
    .await;
    assert!(!seen.contains("minority"), "a refused write was applied: {seen:?}");
    api.create(&PostParams::default(), &config_map("after")).await.unwrap();
}

/// The API ports the `kubernetes` Endpoints list, read through `client`.
async fn api_endpoints(client: &kube::Client) -> Option<BTreeSet<u16>> {
    let api: Api<k8s_openapi::api::core::v1::Endpoints> = Api::namespaced(client.clone(), "default");
    let endpoints = api.get("kubernetes").await.ok()?;
    Some(
        endpoints
            .subsets
            .unwrap_or_default()
            .iter()
            .flat_map(|s| s.ports.iter().flatten().map(|p| p.port as u16))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_kubernetes_endpoints_follow_the_live_api_servers() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = Members::new(dir.path(), 3, &["--components", "api"]);
    members.start_all();
    let client = members.client(1).await;
    let all: BTreeSet<u16> = members.nodes.iter().map(|n| n.api_port).collect();
    let without_3: BTreeSet<u16> = all.iter().copied().filter(|p| *p != members.node(3).api_port).collect();

    println!("every member's API server is listed");
    wait_for("three API servers in the Endpoints", Duration::from_secs(30), || {
        let (client, all) = (client.clone(), all.clone());
        async move { api_endpoints(&client).await.filter(|p| *p == all) }
    })
    .await;

    println!("kill -9 member 3: its address goes when its lease expires");
    members.kill(3);
    let killed = Instant::now();
    // Its lease lives 15 s and the others rebuild the Endpoints every 5 s: about 20 s,
    // with room for a CI machine busy with other tests.
    wait_for("the dead member out of the Endpoints", Duration::from_secs(60), || {
        let (client, want) = (client.clone(), without_3.clone());
        async move { api_endpoints(&client).await.filter(|p| *p == want) }
    })
    .await;
    println!("gone after {:?}", killed.elapsed());

    println!("restarted, it is back; stopped cleanly, it goes at once");
    members.start(3);
    wait_for("the restarted member in the Endpoints", Duration::from_secs(40), || {
        let (client, all) = (client.clone(), all.clone());
        async move { api_endpoints(&client).await.filter(|p| *p == all) }
    })
    .await;
    members.stop(3);
    let ports = api_endpoints(&client).await;
    assert_eq!(
        ports,
        Some(without_3),
        "a member stopped cleanly withdraws itself before it exits"
    );
}
