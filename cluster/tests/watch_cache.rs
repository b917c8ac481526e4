//! Lists and watches served by the watch cache, through kube-rs against a real member:
//! a paged list is one consistent snapshot however the objects change between pages, an
//! expired continue token is a 410 that carries a token to go on with, resourceVersion
//! semantics (0, NotOlderThan, a revision from the future), metadata-only lists, and
//! kube-rs watchers (list-then-watch and streaming lists) that lose no event.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use base64::Engine;
use common::start;
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, VersionMatch};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use serde_json::{json, Value};

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"set": "paged"}}, "data": {"k": "v"}})).unwrap()
}

async fn create_many(cms: &Api<ConfigMap>, names: impl Iterator<Item = String>) {
    for name in names {
        cms.create(&PostParams::default(), &config_map(&name)).await.unwrap();
    }
}

#[tokio::test]
async fn paged_lists_are_one_snapshot_and_expired_tokens_say_how_to_go_on() {
    let s = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), "default");
    create_many(&cms, (0..50).map(|i| format!("cm-{i:03}"))).await;

    // Page 1, then change the set: create new objects, delete some not yet read.
    let first = cms
        .list(&ListParams::default().labels("set=paged").limit(10))
        .await
        .unwrap();
    let rv = first.metadata.resource_version.clone().unwrap();
    let mut token = first.metadata.continue_.clone().unwrap();
    let mut names: Vec<String> = first.items.iter().map(|c| c.name_any()).collect();
    create_many(&cms, (50..55).map(|i| format!("cm-{i:03}"))).await;
    for i in [30, 40, 49] {
        cms.delete(&format!("cm-{i:03}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    loop {
        let page = cms
            .list(
                &ListParams::default()
                    .labels("set=paged")
                    .limit(10)
                    .continue_token(&token),
            )
            .await
            .unwrap();
        assert_eq!(
            page.metadata.resource_version.as_deref(),
            Some(rv.as_str()),
            "every page is at the first page's revision"
        );
        names.extend(page.items.iter().map(|c| c.name_any()));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(next) => token = next,
            None => break,
        }
    }
    let expected: Vec<String> = (0..50).map(|i| format!("cm-{i:03}")).collect();
    assert_eq!(names, expected, "the list is the state of its first page");

    // A fresh list sees the changes.
    let now = cms.list(&ListParams::default().labels("set=paged")).await.unwrap();
    assert_eq!(now.items.len(), 52);

    // A token whose snapshot the server no longer keeps: 410 Expired, with a token that
    // continues (inconsistently) from the same place.
    let raw = base64::engine::general_purpose::URL_SAFE.decode(&token).unwrap();
    let mut forged: Value = serde_json::from_slice(&raw).unwrap();
    forged["rv"] = json!(1);
    let forged = base64::engine::general_purpose::URL_SAFE.encode(forged.to_string());
    let path = format!("/api/v1/namespaces/default/configmaps?limit=10&continue={forged}");
    let (status, _, body) = s.get(&path, &[]).await;
    assert_eq!(status.as_u16(), 410);
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(err["reason"], "Expired");
    let hint = err["metadata"]["continue"].as_str().unwrap();
    let rest = cms
        .list(&ListParams::default().limit(100).continue_token(hint))
        .await
        .unwrap();
    assert!(!rest.items.is_empty(), "the hinted token goes on");
    s.stop().await;
}

#[tokio::test]
async fn resource_versions_mean_what_they_mean_in_kubernetes() {
    let s = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), "default");
    let created = cms.create(&PostParams::default(), &config_map("a")).await.unwrap();
    let rv: u64 = created.resource_version().unwrap().parse().unwrap();

    // A consistent list (no resourceVersion) includes the write just made.
    let list = cms.list(&ListParams::default()).await.unwrap();
    assert!(list.items.iter().any(|c| c.name_any() == "a"));
    assert!(list.metadata.resource_version.unwrap().parse::<u64>().unwrap() >= rv);

    // "0" and NotOlderThan are served from the cache.
    let any = cms.list(&ListParams::default().match_any()).await.unwrap();
    assert!(any.items.iter().any(|c| c.name_any() == "a"));
    let not_older = ListParams::default()
        .at(&rv.to_string())
        .matching(VersionMatch::NotOlderThan);
    assert!(!cms.list(&not_older).await.unwrap().items.is_empty());
    let got = cms.get_metadata("a").await.unwrap();
    assert_eq!(got.metadata.name.as_deref(), Some("a"));

    // A revision the cluster has not reached: "Too large resource version" (504, as
    // kube-apiserver answers) after a wait. (kube-rs retries 504s by default: not here.)
    let mut config = s.member().config_as(kairn_cluster::api::auth::ADMIN).unwrap();
    config.default_retry = false;
    let once: Api<ConfigMap> = Api::namespaced(kube::Client::try_from(config).unwrap(), "default");
    let future = ListParams::default()
        .at(&(rv + 1_000_000).to_string())
        .matching(VersionMatch::NotOlderThan);
    let started = Instant::now();
    match once.list(&future).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (504, "Timeout"));
            assert!(e.message.contains("Too large resource version"), "{}", e.message);
        }
        other => panic!("expected a 504, got {other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the server waits before giving up"
    );

    // Metadata-only lists, as the garbage collector reads them.
    let meta = cms.list_metadata(&ListParams::default()).await.unwrap();
    assert!(meta.items.iter().any(|m| m.metadata.name.as_deref() == Some("a")));
    s.stop().await;
}

/// Runs a kube-rs reflector over `api` with `config` while `writes` updates land, then
/// checks the reflector ends with exactly the server's objects and versions.
async fn watcher_loses_nothing(api: Api<ConfigMap>, config: watcher::Config, objects: usize, writes: usize) {
    let (reader, writer) = reflector::store::<ConfigMap>();
    let stream = watcher(api.clone(), config)
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.try_next().await.is_ok_and(|e| e.is_some()) {}
    });
    for i in 0..writes {
        let name = format!("w-{:04}", (i * 37) % objects);
        // Some were deleted below: those patches find nothing, as they should.
        let _ = api
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"i": i.to_string()}})),
            )
            .await;
        if i % 50 == 0 {
            api.delete(&format!("w-{:04}", (i * 13 + 1) % objects), &DeleteParams::default())
                .await
                .ok();
        }
    }
    let truth: BTreeSet<(String, String)> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| (c.name_any(), c.resource_version().unwrap()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen: BTreeSet<(String, String)> = reader
            .state()
            .iter()
            .map(|c| (c.name_any(), c.resource_version().unwrap()))
            .collect();
        if seen == truth {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the watcher's cache never matched the server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
}

#[tokio::test]
async fn kube_rs_watchers_lose_no_event() {
    let s = start().await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(s.client.clone());
    for ns in ["listwatch", "streaming"] {
        let n = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        namespaces.create(&PostParams::default(), &n).await.unwrap();
    }
    let objects = 600;
    for ns in ["listwatch", "streaming"] {
        let api: Api<ConfigMap> = Api::namespaced(s.client.clone(), ns);
        create_many(&api, (0..objects).map(|i| format!("w-{i:04}"))).await;
    }
    // List (in pages of 100) then watch, while writes land.
    let api: Api<ConfigMap> = Api::namespaced(s.client.clone(), "listwatch");
    watcher_loses_nothing(api, watcher::Config::default().page_size(100), objects, 400).await;
    // Streaming list: sendInitialEvents, then the initial-events-end bookmark.
    let api: Api<ConfigMap> = Api::namespaced(s.client.clone(), "streaming");
    watcher_loses_nothing(api, watcher::Config::default().streaming_lists(), objects, 400).await;
    s.stop().await;
}
