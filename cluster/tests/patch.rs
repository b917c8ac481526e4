//! PATCH in every format against a real one-member cluster, through kube-rs as any client
//! would: strategic merge, JSON patch, JSON merge patch and server-side apply (conflicts,
//! force, create, no-op), and the managedFields each write leaves.

mod common;

use axum::http::header::{CONTENT_TYPE, USER_AGENT};
use k8s_openapi::api::apps::v1::Deployment;
use kairn_cluster::api::auth;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};

use common::start;

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other}"),
    }
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [
                    {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}], "ports": [{"containerPort": 80}]},
                    {"name": "sidecar", "image": "side:1"},
                ]},
            },
        },
    }))
    .unwrap()
}

fn as_json(d: &Deployment) -> Value {
    serde_json::to_value(d).unwrap()
}

/// The fieldsV1 of `manager`'s entry with `operation`, if any.
fn fields_of(d: &Deployment, manager: &str, operation: &str) -> Option<Value> {
    d.metadata
        .managed_fields
        .iter()
        .flatten()
        .find(|e| e.manager.as_deref() == Some(manager) && e.operation.as_deref() == Some(operation))
        .map(|e| e.fields_v1.as_ref().map(|f| f.0.clone()).unwrap_or_default())
}

fn manager(name: &str) -> PatchParams {
    PatchParams {
        field_manager: Some(name.into()),
        ..PatchParams::default()
    }
}

#[tokio::test]
async fn strategic_json_and_merge_patches() {
    let s = start().await;
    let deploys: Api<Deployment> = Api::namespaced(s.client.clone(), "default");
    let post = PostParams {
        field_manager: Some("creator".into()),
        ..PostParams::default()
    };
    let created = deploys.create(&post, &deployment("web")).await.unwrap();
    let creator = fields_of(&created, "creator", "Update").expect("the creator's entry");
    assert!(creator.pointer("/f:spec/f:replicas").is_some(), "{creator}");

    // Strategic: env merges by name inside the container merged by name, in the order
    // kubectl's $setElementOrder gives; the sidecar stays.
    let env = json!({"spec": {"template": {"spec": {"containers": [{
        "name": "app",
        "$setElementOrder/env": [{"name": "A"}, {"name": "B"}],
        "env": [{"name": "B", "value": "2"}],
    }]}}}});
    let patched = deploys
        .patch("web", &manager("smp"), &Patch::Strategic(env))
        .await
        .unwrap();
    let spec = as_json(&patched)["spec"]["template"]["spec"].clone();
    assert_eq!(
        spec["containers"][0]["env"],
        json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
    );
    assert_eq!(spec["containers"][1]["name"], "sidecar");
    let smp = fields_of(&patched, "smp", "Update").unwrap();
    assert!(
        smp.pointer("/f:spec/f:template/f:spec/f:containers/k:{\"name\":\"app\"}/f:env/k:{\"name\":\"B\"}")
            .is_some(),
        "{smp}"
    );

    // Strategic directives: delete the sidecar by key.
    let delete = json!({"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}}}});
    let patched = deploys
        .patch("web", &manager("smp"), &Patch::Strategic(delete))
        .await
        .unwrap();
    assert_eq!(patched.spec.unwrap().template.spec.unwrap().containers.len(), 1);

    // An unknown directive is a bad request.
    let bad = json!({"spec": {"$frobnicate": 1}});
    let err = api_error(
        deploys
            .patch("web", &manager("smp"), &Patch::Strategic(bad))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (400, "BadRequest"));

    // JSON patch: test, then replace.
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/spec/replicas", "value": 1},
        {"op": "replace", "path": "/spec/replicas", "value": 4},
        {"op": "add", "path": "/metadata/labels", "value": {"tier": "web"}},
    ]))
    .unwrap();
    let patched = deploys
        .patch("web", &manager("jp"), &Patch::Json::<()>(ops))
        .await
        .unwrap();
    assert_eq!(patched.spec.as_ref().unwrap().replicas, Some(4));
    assert!(fields_of(&patched, "jp", "Update")
        .unwrap()
        .pointer("/f:spec/f:replicas")
        .is_some());
    assert!(fields_of(&patched, "creator", "Update")
        .unwrap()
        .pointer("/f:spec/f:replicas")
        .is_none());

    // A failing test is 422, and nothing is written.
    let failing: json_patch::Patch = serde_json::from_value(json!([
        {"op": "replace", "path": "/spec/replicas", "value": 9},
        {"op": "test", "path": "/spec/replicas", "value": 1},
    ]))
    .unwrap();
    let err = api_error(
        deploys
            .patch("web", &manager("jp"), &Patch::Json::<()>(failing))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert_eq!(deploys.get("web").await.unwrap().spec.unwrap().replicas, Some(4));

    // Merge patch: maps merge, null removes, lists are replaced.
    let merge = json!({"metadata": {"labels": {"tier": null, "team": "a"}}});
    let patched = deploys
        .patch("web", &manager("mp"), &Patch::Merge(merge))
        .await
        .unwrap();
    assert_eq!(as_json(&patched)["metadata"]["labels"], json!({"team": "a"}));

    // Without a field manager the write is named after the User-Agent (a member's own
    // clients send `kairn/...`), and without either it is the unknown manager's.
    let merge = json!({"metadata": {"annotations": {"note": "x"}}});
    let patched = deploys
        .patch("web", &PatchParams::default(), &Patch::Merge(merge))
        .await
        .unwrap();
    assert!(fields_of(&patched, "kairn", "Update").is_some());
    let mut bare = s.member().config_as(auth::ADMIN).unwrap();
    bare.headers.retain(|(name, _)| name != USER_AGENT);
    let bare: Api<Deployment> = Api::namespaced(kube::Client::try_from(bare).unwrap(), "default");
    let merge = json!({"metadata": {"annotations": {"other": "y"}}});
    let patched = bare
        .patch("web", &PatchParams::default(), &Patch::Merge(merge))
        .await
        .unwrap();
    assert!(fields_of(&patched, "unknown", "Update").is_some());

    // Status patches are recorded against the status subresource.
    let status = json!({"status": {"conditions": [{"type": "Available", "status": "True"}]}});
    let patched = deploys
        .patch_status("web", &manager("controller"), &Patch::Strategic(status))
        .await
        .unwrap();
    let entry = patched
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .find(|e| e.manager.as_deref() == Some("controller"))
        .unwrap();
    assert_eq!(entry.subresource.as_deref(), Some("status"));
    s.stop().await;
}

#[tokio::test]
async fn server_side_apply() {
    let s = start().await;
    let deploys: Api<Deployment> = Api::namespaced(s.client.clone(), "default");
    let config = |replicas: i32, image: &str| {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "api"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "api"}},
                "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"containers": [{"name": "api", "image": image}]}},
            },
        })
    };

    // Apply creates.
    let alice = PatchParams::apply("alice");
    let created = deploys
        .patch("api", &alice, &Patch::Apply(config(2, "api:1")))
        .await
        .unwrap();
    assert_eq!(created.spec.as_ref().unwrap().replicas, Some(2));
    let fields = fields_of(&created, "alice", "Apply").expect("alice's apply entry");
    assert_eq!(fields["f:spec"]["f:selector"], json!({}));
    assert!(fields
        .pointer("/f:spec/f:template/f:spec/f:containers/k:{\"name\":\"api\"}/f:image")
        .is_some());

    // Applying the same configuration again changes nothing, not even the resourceVersion.
    let again = deploys
        .patch("api", &alice, &Patch::Apply(config(2, "api:1")))
        .await
        .unwrap();
    assert_eq!(again.metadata.resource_version, created.metadata.resource_version);
    assert_eq!(again.metadata.managed_fields, created.metadata.managed_fields);

    // Bob applies other replicas: a conflict with alice, 409 with the field as cause.
    let bob = PatchParams::apply("bob");
    let bob_config =
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api"}, "spec": {"replicas": 5}});
    let err = api_error(
        deploys
            .patch("api", &bob, &Patch::Apply(bob_config.clone()))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        err.message,
        "Apply failed with 1 conflict: conflict with \"alice\": .spec.replicas"
    );
    let causes = err.details.map(|d| d.causes).unwrap_or_default();
    assert_eq!(causes.len(), 1);
    assert_eq!(
        (
            causes[0].field.as_str(),
            causes[0].reason.as_str(),
            causes[0].message.as_str()
        ),
        (".spec.replicas", "FieldManagerConflict", "conflict with \"alice\"")
    );

    // Forced, bob takes replicas.
    let forced = deploys
        .patch("api", &PatchParams::apply("bob").force(), &Patch::Apply(bob_config))
        .await
        .unwrap();
    assert_eq!(forced.spec.as_ref().unwrap().replicas, Some(5));
    assert!(fields_of(&forced, "bob", "Apply")
        .unwrap()
        .pointer("/f:spec/f:replicas")
        .is_some());
    assert!(fields_of(&forced, "alice", "Apply")
        .unwrap()
        .pointer("/f:spec/f:replicas")
        .is_none());

    // A conflict with an updater names its version, as kubectl shows it.
    let scale = json!({"spec": {"replicas": 7}});
    deploys
        .patch("api", &manager("kubectl-client-side-apply"), &Patch::Merge(scale))
        .await
        .unwrap();
    let err = api_error(
        deploys
            .patch("api", &alice, &Patch::Apply(config(3, "api:1")))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        err.message,
        "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"
    );

    // Alice drops replicas from her configuration and changes the image: no conflict, and
    // replicas stays (someone else owns it).
    let mut without = config(0, "api:2");
    without["spec"].as_object_mut().unwrap().remove("replicas");
    let updated = deploys.patch("api", &alice, &Patch::Apply(without)).await.unwrap();
    let spec = updated.spec.unwrap();
    assert_eq!(spec.replicas, Some(7));
    assert_eq!(
        spec.template.spec.unwrap().containers[0].image.as_deref(),
        Some("api:2")
    );
    s.stop().await;
}

#[tokio::test]
async fn apply_bodies_are_yaml_and_need_a_field_manager() {
    let s = start().await;
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: fast\n";
    let request = |params: &PatchParams| {
        let mut request = kube::core::Request::new("/api/v1/namespaces/default/configmaps")
            .patch("settings", params, &Patch::Merge(json!({})))
            .unwrap();
        *request.body_mut() = yaml.as_bytes().to_vec();
        request
            .headers_mut()
            .insert(CONTENT_TYPE, "application/apply-patch+yaml".parse().unwrap());
        request
    };
    let err = api_error(
        s.client
            .request::<Value>(request(&PatchParams::default()))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert!(err.message.contains("fieldManager"), "{}", err.message);

    let created: Value = s.client.request(request(&manager("yaml-applier"))).await.unwrap();
    assert_eq!(created["data"], json!({"mode": "fast"}));
    assert_eq!(created["metadata"]["managedFields"][0]["manager"], "yaml-applier");
    assert_eq!(created["metadata"]["managedFields"][0]["operation"], "Apply");
    s.stop().await;
}
