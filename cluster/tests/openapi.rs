//! The OpenAPI documents over HTTP from a real one-member store, and the real `kubectl`
//! against that member when it is on PATH: `explain` reads the v3 documents (and the v2
//! protobuf), `apply` leaves field validation to the server and fails on a typo the way
//! it does against kube-apiserver.

mod common;

use axum::body::Bytes;
use axum::http::{header, StatusCode};
use std::process::Output;

use common::{start, text, Server};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use serde_json::{json, Value};

const PROTOBUF_V2: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

fn json_of(body: &Bytes) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn documents_are_served_with_etags() {
    let s = start().await;

    let (status, headers, body) = s.get("/openapi/v2", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let doc = json_of(&body);
    assert_eq!(doc["swagger"], "2.0");
    assert_eq!(
        doc["definitions"]["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"][0]["kind"],
        "Deployment"
    );
    let etag = headers[header::ETAG].to_str().unwrap().to_string();
    let (status, _, body) = s.get("/openapi/v2", &[("if-none-match", &etag)]).await;
    assert_eq!((status, body.len()), (StatusCode::NOT_MODIFIED, 0));

    // What kubectl asks for: gnostic protobuf, starting with `swagger: "2.0"` (field 1).
    let (status, headers, body) = s.get("/openapi/v2", &[("accept", PROTOBUF_V2)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers[header::CONTENT_TYPE],
        "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
    );
    assert_eq!(&body[..5], b"\x0a\x032.0");
    let (status, _, _) = s.get("/openapi/v2", &[("accept", "text/html")]).await;
    assert_eq!(status, StatusCode::NOT_ACCEPTABLE);

    let (status, _, body) = s.get("/openapi/v3", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let index = json_of(&body);
    for gv in [
        "api/v1",
        "apis/apps/v1",
        "apis/coordination.k8s.io/v1",
        "apis/kairn.dev/v1",
    ] {
        assert!(index["paths"][gv]["serverRelativeURL"].is_string(), "{gv}: {index}");
    }
    let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"].as_str().unwrap();
    let (status, headers, body) = s.get(url, &[("accept", "application/json")]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CACHE_CONTROL].to_str().unwrap().contains("immutable"));
    let apps = json_of(&body);
    let patch = &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
    assert_eq!(
        patch["x-kubernetes-group-version-kind"],
        json!({"group": "apps", "version": "v1", "kind": "Deployment"})
    );
    assert!(patch["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "fieldValidation"));
    let (status, headers, _) = s.get("/openapi/v3/apis/apps/v1?hash=stale", &[]).await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(headers[header::LOCATION], url);
    let (status, _, _) = s.get("/openapi/v3/apis/nowhere/v1", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    s.stop().await;
}

#[tokio::test]
async fn unknown_fields_warn_by_default_and_fail_when_strict() {
    let s = start().await;
    let json = [("content-type", "application/json")];
    let cm = r#"{"metadata": {"name": "one"}, "data": {"a": "b"}, "dta": {"c": "d"}}"#;

    let (status, headers, _) = s
        .request("POST", "/api/v1/namespaces/default/configmaps", &json, cm)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let warnings: Vec<&str> = headers.get_all("warning").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(warnings, [r#"299 - "unknown field \"dta\"""#]);

    let (status, headers, _) = s
        .request(
            "PUT",
            "/api/v1/namespaces/default/configmaps/one?fieldValidation=Ignore",
            &json,
            cm,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get("warning").is_none());

    let (status, _, body) = s
        .request(
            "POST",
            "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
            &json,
            cm.replace("one", "two"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let err = json_of(&body);
    assert_eq!(err["reason"], "BadRequest");
    assert_eq!(
        err["message"],
        r#"ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: unknown field "dta""#
    );

    let (status, _, body) = s
        .request(
            "PATCH",
            "/api/v1/namespaces/default/configmaps/one?fieldValidation=Strict",
            &[("content-type", "application/merge-patch+json")],
            r#"{"dta": {"c": "d"}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let err = json_of(&body);
    assert_eq!(err["details"]["causes"][0]["field"], "patch");
    assert!(err["message"]
        .as_str()
        .unwrap()
        .ends_with(r#"strict decoding error: unknown field "dta""#));

    s.stop().await;
}

/// kubectl's output, or `None` (the test returns) when kubectl is absent.
async fn kubectl(s: &Server, args: &[&str]) -> Output {
    s.kubectl(args)
        .await
        .expect("kubectl was present at the start of the test")
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: busybox
";

#[tokio::test]
async fn kubectl_explains_and_applies_with_server_side_validation() {
    if !common::kubectl_present().await {
        eprintln!("skipping: kubectl is not on PATH");
        return;
    }
    let s = start().await;
    let dir = s.dir.path();

    // explain reads /openapi/v3 by default, /openapi/v2 (protobuf) on request.
    for args in [
        &["explain", "deployments.spec"][..],
        &["explain", "deployments.spec", "--output=plaintext-openapiv2"],
    ] {
        let out = kubectl(&s, args).await;
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(
            stdout.contains("Deployment") && stdout.contains("replicas"),
            "{args:?}: {stdout}"
        );
    }

    // apply without --validate=false: created, then patched.
    let manifest = dir.join("web.yaml");
    std::fs::write(&manifest, DEPLOYMENT).unwrap();
    let path = manifest.to_str().unwrap();
    let out = kubectl(&s, &["apply", "-f", path]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "deployment.apps/web created");
    std::fs::write(&manifest, DEPLOYMENT.replace("replicas: 1", "replicas: 2")).unwrap();
    let out = kubectl(&s, &["apply", "-f", path]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "deployment.apps/web configured");
    let deployments: Api<Deployment> = Api::namespaced(s.member().client().unwrap(), "default");
    let web = deployments.get("web").await.unwrap();
    assert_eq!(web.spec.and_then(|s| s.replicas), Some(2));

    // A typo fails as against kube-apiserver: the server rejects it (Strict).
    std::fs::write(
        &manifest,
        DEPLOYMENT.replace("  replicas: 1\n", "  replicas: 1\n  replicsa: 3\n"),
    )
    .unwrap();
    let out = kubectl(&s, &["apply", "-f", path]).await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(r#"strict decoding error: unknown field "spec.replicsa""#),
        "{stderr}"
    );

    s.stop().await;
}
