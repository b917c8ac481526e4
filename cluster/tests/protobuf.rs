//! Protobuf bodies over HTTP against a real one-member cluster: a ConfigMap written as
//! `application/vnd.kubernetes.protobuf` (built with k8s-pb's prost types, as a Go client
//! would) reads back as JSON and as protobuf; errors come back as protobuf `Status`;
//! a kind without a protobuf form is a 415; and, when `kubectl` is on PATH, the real
//! `kubectl create configmap` (which sends protobuf) works.

use std::collections::BTreeMap;

mod common;

use axum::body::Bytes;
use axum::http::{header, Method, StatusCode};
use common::Server;
use k8s_pb::api::core::v1 as pb_core;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as pb_meta;
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use prost::Message as _;
use serde_json::{json, Value};

const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// `k8s\0` + `runtime.Unknown`, as client-go writes a body.
fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = b"k8s\0".to_vec();
    out.extend(unknown.encode_to_vec());
    out
}

/// The `(apiVersion, kind, raw)` of a protobuf response.
fn open(body: &[u8]) -> (String, String, Vec<u8>) {
    let inner = body.strip_prefix(b"k8s\0").expect("the k8s\\0 prefix");
    let unknown = Unknown::decode(inner).expect("a runtime.Unknown");
    let meta = unknown.type_meta.unwrap_or_default();
    (
        meta.api_version.unwrap_or_default(),
        meta.kind.unwrap_or_default(),
        unknown.raw.unwrap_or_default(),
    )
}

/// A request to the member (over HTTPS, as the admin): status, content type and body.
struct Http<'a>(&'a Server);

impl Http<'_> {
    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        accept: &str,
        body: Vec<u8>,
    ) -> (StatusCode, String, Bytes) {
        let mut headers = vec![(header::ACCEPT.as_str(), accept)];
        if !content_type.is_empty() {
            headers.push((header::CONTENT_TYPE.as_str(), content_type));
        }
        let (status, headers, bytes) = self.0.request(method.as_str(), path, &headers, body).await;
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (status, ct, bytes)
    }
}

#[tokio::test]
async fn protobuf_config_map_round_trips_over_http() {
    let server = common::start().await;
    let http = Http(&server);

    // Written as Go writes it: every non-pointer field, even empty.
    let cm = pb_core::ConfigMap {
        metadata: Some(pb_meta::ObjectMeta {
            name: Some("pb".into()),
            generate_name: Some(String::new()),
            namespace: Some(String::new()),
            generation: Some(0),
            creation_timestamp: Some(pb_meta::Time::default()),
            labels: BTreeMap::from([("via".to_string(), "protobuf".to_string())]),
            ..Default::default()
        }),
        data: BTreeMap::from([("a".to_string(), "b".to_string())]),
        binary_data: BTreeMap::from([("bin".to_string(), vec![0u8, 255])]),
        immutable: None,
    };
    let body = envelope("v1", "ConfigMap", cm.encode_to_vec());
    let path = "/api/v1/namespaces/default/configmaps";
    let (status, ct, created) = http
        .send(Method::POST, path, PROTOBUF, "application/json", body.clone())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&created));
    assert!(ct.starts_with("application/json"), "{ct}");
    let created: Value = serde_json::from_slice(&created).unwrap();
    assert_eq!(created["data"], json!({"a": "b"}));
    assert_eq!(created["binaryData"], json!({"bin": "AP8="}));
    assert_eq!(created["metadata"]["labels"], json!({"via": "protobuf"}));
    // Go's empty strings and zero generation were not taken for values.
    assert!(created["metadata"].get("generateName").is_none() && created["metadata"].get("generation").is_none());

    // Read back as JSON.
    let (status, _, got) = http
        .send(
            Method::GET,
            &format!("{path}/pb"),
            "application/json",
            "application/json",
            Vec::new(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let got: Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(
        (got["data"].clone(), got["binaryData"].clone()),
        (json!({"a": "b"}), json!({"bin": "AP8="}))
    );

    // Read back as protobuf, as kubectl asks.
    let accept = "application/vnd.kubernetes.protobuf,application/json";
    let (status, ct, got) = http
        .send(Method::GET, &format!("{path}/pb"), "", accept, Vec::new())
        .await;
    assert_eq!((status, ct.as_str()), (StatusCode::OK, PROTOBUF));
    let (api_version, kind, raw) = open(&got);
    assert_eq!((api_version.as_str(), kind.as_str()), ("v1", "ConfigMap"));
    let back = pb_core::ConfigMap::decode(raw.as_slice()).unwrap();
    assert_eq!(back.data, cm.data);
    assert_eq!(back.binary_data, cm.binary_data);
    let meta = back.metadata.unwrap_or_default();
    assert_eq!(meta.name.as_deref(), Some("pb"));
    assert!(meta.uid.is_some_and(|u| !u.is_empty()));
    assert!(meta.creation_timestamp.and_then(|t| t.seconds).is_some_and(|s| s > 0));

    // A list, in protobuf.
    let (status, _, list) = http.send(Method::GET, path, "", accept, Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let (_, kind, raw) = open(&list);
    assert_eq!(kind, "ConfigMapList");
    let list = pb_core::ConfigMapList::decode(raw.as_slice()).unwrap();
    assert!(list
        .items
        .iter()
        .any(|i| i.metadata.as_ref().and_then(|m| m.name.as_deref()) == Some("pb")));

    // Errors are protobuf Status objects: creating it again is a 409.
    let (status, ct, err) = http.send(Method::POST, path, PROTOBUF, accept, body).await;
    assert_eq!((status, ct.as_str()), (StatusCode::CONFLICT, PROTOBUF));
    let (_, kind, raw) = open(&err);
    assert_eq!(kind, "Status");
    let s = pb_meta::Status::decode(raw.as_slice()).unwrap();
    assert_eq!((s.code, s.reason.as_deref()), (Some(409), Some("AlreadyExists")));

    // Kairn's own kinds have no protobuf form.
    let app = envelope("kairn.dev/v1", "Application", Vec::new());
    let (status, _, _) = http
        .send(Method::POST, "/apis/kairn.dev/v1/applications", PROTOBUF, accept, app)
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    kubectl_create_configmap(&http).await;
    server.stop().await;
}

/// The real kubectl sends `create configmap` as protobuf and reads the answer as protobuf.
async fn kubectl_create_configmap(http: &Http<'_>) {
    let args = ["create", "configmap", "from-kubectl", "--from-literal=k=v", "-v=8"];
    let Some(out) = http.0.kubectl(&args).await else { return };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl failed: {stderr}");
    assert!(
        stderr.contains("Content-Type: application/vnd.kubernetes.protobuf"),
        "kubectl did not send protobuf: {stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configmap/from-kubectl created"));
    let (status, _, got) = http
        .send(
            Method::GET,
            "/api/v1/namespaces/default/configmaps/from-kubectl",
            "",
            "application/json",
            Vec::new(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let got: Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(got["data"], json!({"k": "v"}));
    let meta = got["metadata"].as_object().cloned().unwrap_or_default();
    let mut keys: Vec<&str> = meta.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "creationTimestamp",
            "managedFields",
            "name",
            "namespace",
            "resourceVersion",
            "uid"
        ],
        "only what kubectl set plus server fields: {got}"
    );
}
