//! Unit tests of the protobuf conversion: JSON round trips of rich objects, bodies built
//! with k8s-pb's own prost types, the field table against the schemas, and negotiation.

use std::collections::BTreeMap;

use k8s_pb::api::apps::v1 as pb_apps;
use k8s_pb::api::core::v1 as pb_core;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as pb_meta;
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use prost::Message as _;
use serde_json::{json, Value};

use super::table::{table, JsonName, Ty};
use super::*;
use crate::api::registry::RESOURCES;

fn round_trip(obj: Value) {
    let bytes = encode_object(&obj).expect("encodes");
    assert!(bytes.starts_with(b"k8s\0"));
    let back = decode_object(&bytes).expect("decodes");
    assert_eq!(back, obj, "{}", serde_json::to_string_pretty(&back).unwrap_or_default());
}

fn rich_pod() -> Value {
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "name": "web-0", "namespace": "default", "uid": "6f1c2d4e-0000-4000-8000-000000000001",
            "resourceVersion": "42", "generation": 2,
            "creationTimestamp": "2024-05-01T12:00:00Z",
            "labels": {"app": "web", "empty": ""},
            "annotations": {"note": "a\nmultiline value"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc",
                "uid": "6f1c2d4e-0000-4000-8000-000000000002", "controller": true, "blockOwnerDeletion": true}],
            "finalizers": ["kairn.dev/test"],
            "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                "time": "2024-05-01T12:00:00Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}}}]
        },
        "spec": {
            "containers": [{
                "name": "web", "image": "nginx:1.27", "command": ["nginx"], "args": ["-g", "daemon off;"],
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "env": [
                    {"name": "MODE", "value": "prod"},
                    {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode", "optional": true}}},
                    {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}}
                ],
                "envFrom": [{"secretRef": {"name": "creds"}}],
                "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "250m", "memory": "64Mi"}},
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
                    "initialDelaySeconds": 5, "periodSeconds": 10, "failureThreshold": 3},
                "readinessProbe": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 2},
                "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg", "readOnly": true}],
                "securityContext": {"runAsUser": 1000, "runAsNonRoot": true,
                    "capabilities": {"drop": ["ALL"]}},
                "imagePullPolicy": "IfNotPresent"
            }],
            "volumes": [
                {"name": "cfg", "configMap": {"name": "cfg", "defaultMode": 420,
                    "items": [{"key": "a", "path": "a.txt"}]}},
                {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}
            ],
            "nodeSelector": {"disk": "ssd"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "web",
                "effect": "NoExecute", "tolerationSeconds": 300}],
            "terminationGracePeriodSeconds": 30,
            "restartPolicy": "Always",
            "nodeName": "node-1"
        },
        "status": {
            "phase": "Running", "hostIP": "10.0.0.1", "podIP": "10.1.0.5",
            "podIPs": [{"ip": "10.1.0.5"}], "startTime": "2024-05-01T12:00:01Z",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2024-05-01T12:00:05Z"}],
            "containerStatuses": [{"name": "web", "ready": true, "restartCount": 1, "image": "nginx:1.27",
                "imageID": "sha256:abc", "started": true,
                "state": {"running": {"startedAt": "2024-05-01T12:00:03Z"}}}]
        }
    })
}

fn rich_deployment() -> Value {
    json!({
        "kind": "Deployment", "apiVersion": "apps/v1",
        "metadata": {"name": "web", "namespace": "default", "generation": 3,
            "creationTimestamp": "2024-05-01T12:00:00Z", "labels": {"app": "web"},
            "deletionTimestamp": "2024-06-01T00:00:00Z", "deletionGracePeriodSeconds": 30},
        "spec": {
            "replicas": 3, "revisionHistoryLimit": 5, "progressDeadlineSeconds": 600, "minReadySeconds": 10,
            "selector": {"matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx",
                    "resources": {"limits": {"cpu": "1", "memory": "1.5Gi", "nvidia.com/gpu": "2"},
                                  "requests": {"cpu": "100m", "memory": "128974848"}}}]}
            }
        },
        "status": {"observedGeneration": 3, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 2,
            "availableReplicas": 2, "unavailableReplicas": 1,
            "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                "lastUpdateTime": "2024-05-01T12:00:00Z", "lastTransitionTime": "2024-05-01T12:00:00Z"}]}
    })
}

#[test]
fn round_trips_a_rich_pod() {
    round_trip(rich_pod());
}

#[test]
fn round_trips_a_deployment_with_int_or_string_quantities_and_times() {
    round_trip(rich_deployment());
}

#[test]
fn round_trips_a_secret_with_bytes() {
    round_trip(json!({
        "kind": "Secret", "apiVersion": "v1",
        "metadata": {"name": "s", "namespace": "default"},
        "type": "Opaque", "immutable": true,
        // Not UTF-8 on purpose: bytes fields carry arbitrary data.
        "data": {"bin": "AP8QgA==", "p": "cQ=="}
    }));
}

#[test]
fn round_trips_a_config_map() {
    round_trip(json!({
        "kind": "ConfigMap", "apiVersion": "v1",
        "metadata": {"name": "c", "namespace": "default", "labels": {"a": "b"}},
        "data": {"a": "b", "multi": "line1\nline2", "unicode": "héllo ✓"},
        "binaryData": {"blob": "AAECAw=="}
    }));
}

#[test]
fn round_trips_lists_and_status() {
    round_trip(json!({
        "kind": "ConfigMapList", "apiVersion": "v1",
        "metadata": {"resourceVersion": "7", "continue": "next"},
        "items": [{"metadata": {"name": "a"}, "data": {"k": "v"}}, {"metadata": {"name": "b"}}]
    }));
    round_trip(json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "configmaps \"c\" already exists", "reason": "AlreadyExists",
        "details": {"name": "c", "kind": "configmaps",
            "causes": [{"reason": "FieldValueInvalid", "field": "metadata.name", "message": "bad"}]},
        "code": 409
    }));
    round_trip(json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 2}, "status": {"replicas": 1, "selector": "app=web"}
    }));
    round_trip(json!({
        "kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1",
        "gracePeriodSeconds": 0, "propagationPolicy": "Foreground", "preconditions": {"uid": "u"}
    }));
    round_trip(json!({
        "kind": "Lease", "apiVersion": "coordination.k8s.io/v1",
        "metadata": {"name": "node-1", "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 40,
            "renewTime": "2024-05-01T12:00:00.123456Z"}
    }));
}

/// A body as a Go client writes it: k8s-pb's prost types, with Go's always-written
/// empty strings, zero generation and empty `creationTimestamp`.
#[test]
fn decodes_a_config_map_encoded_by_k8s_pb() {
    let cm = pb_core::ConfigMap {
        metadata: Some(pb_meta::ObjectMeta {
            name: Some("c".into()),
            generate_name: Some(String::new()),
            namespace: Some(String::new()),
            uid: Some(String::new()),
            resource_version: Some(String::new()),
            generation: Some(0),
            creation_timestamp: Some(pb_meta::Time::default()),
            labels: BTreeMap::from([("app".to_string(), "web".to_string())]),
            ..Default::default()
        }),
        immutable: None,
        data: BTreeMap::from([("a".to_string(), "b".to_string())]),
        binary_data: BTreeMap::from([("bin".to_string(), vec![0u8, 1, 2, 255])]),
    };
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
        }),
        raw: Some(cm.encode_to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut body = b"k8s\0".to_vec();
    body.extend(unknown.encode_to_vec());
    let decoded = decode_object(&body).expect("decodes");
    assert_eq!(
        decoded,
        json!({
            "kind": "ConfigMap", "apiVersion": "v1",
            "metadata": {"name": "c", "creationTimestamp": null, "labels": {"app": "web"}},
            "data": {"a": "b"},
            "binaryData": {"bin": "AAEC/w=="}
        })
    );
}

/// What we encode is what k8s-pb's prost types (as a Go client would) read.
#[test]
fn k8s_pb_reads_what_we_encode() {
    let bytes = encode_object(&rich_deployment()).expect("encodes");
    let unknown = Unknown::decode(&bytes[4..]).expect("envelope");
    let meta = unknown.type_meta.unwrap_or_default();
    assert_eq!(
        (meta.api_version.as_deref(), meta.kind.as_deref()),
        (Some("apps/v1"), Some("Deployment"))
    );
    let d = pb_apps::Deployment::decode(unknown.raw.unwrap_or_default().as_slice()).expect("deployment");
    let spec = d.spec.unwrap_or_default();
    assert_eq!(spec.replicas, Some(3));
    let rolling = spec.strategy.unwrap_or_default().rolling_update.unwrap_or_default();
    let surge = rolling.max_surge.unwrap_or_default();
    assert_eq!((surge.r#type, surge.str_val.as_deref()), (Some(1), Some("25%")));
    assert_eq!(rolling.max_unavailable.unwrap_or_default().int_val, Some(1));
    let meta = d.metadata.unwrap_or_default();
    assert_eq!(meta.creation_timestamp.unwrap_or_default().seconds, Some(1_714_564_800));
    let container = spec
        .template
        .unwrap_or_default()
        .spec
        .unwrap_or_default()
        .containers
        .remove(0);
    let limits = container.resources.unwrap_or_default().limits;
    assert_eq!(limits.get("memory").and_then(|q| q.string.as_deref()), Some("1.5Gi"));

    let secret = json!({"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "s"}, "data": {"p": "AP8="}});
    let bytes = encode_object(&secret).expect("encodes");
    let raw = Unknown::decode(&bytes[4..]).expect("envelope").raw.unwrap_or_default();
    let s = pb_core::Secret::decode(raw.as_slice()).expect("secret");
    assert_eq!(s.data.get("p"), Some(&vec![0u8, 255]));

    let status = ApiError::AlreadyExists {
        kind: "configmaps".into(),
        name: "c".into(),
    }
    .status();
    let bytes = encode_object(&status).expect("encodes");
    let raw = Unknown::decode(&bytes[4..]).expect("envelope").raw.unwrap_or_default();
    let s = pb_meta::Status::decode(raw.as_slice()).expect("status");
    assert_eq!((s.code, s.reason.as_deref()), (Some(409), Some("AlreadyExists")));
    assert_eq!(s.details.unwrap_or_default().name.as_deref(), Some("c"));
}

/// Go embeds structs (`Probe.ProbeHandler`, `Volume.VolumeSource`,
/// `ConfigMapKeySelector.LocalObjectReference`); in JSON their fields are the parent's.
#[test]
fn embedded_structs_are_inlined() {
    let bytes = encode_object(&rich_pod()).expect("encodes");
    let raw = Unknown::decode(&bytes[4..]).expect("envelope").raw.unwrap_or_default();
    let pod = pb_core::Pod::decode(raw.as_slice()).expect("pod");
    let spec = pod.spec.unwrap_or_default();
    let handler = spec.containers[0]
        .liveness_probe
        .clone()
        .unwrap_or_default()
        .handler
        .unwrap_or_default();
    assert_eq!(handler.http_get.unwrap_or_default().path.as_deref(), Some("/healthz"));
    let source = spec.volumes[0].volume_source.clone().unwrap_or_default();
    let cm = source.config_map.unwrap_or_default();
    assert_eq!(
        cm.local_object_reference.unwrap_or_default().name.as_deref(),
        Some("cfg")
    );
}

/// Every field of every message a served kind uses has a JSON name from the schemas (or
/// is an inlined struct whose fields do): a k8s-pb / k8s-openapi version mismatch fails here.
#[test]
fn every_served_field_resolves_against_the_schemas() {
    let t = table();
    let mut seen = std::collections::BTreeSet::new();
    let mut todo: Vec<usize> = Vec::new();
    for res in RESOURCES {
        match t.for_kind(&res.api_version(), res.kind) {
            Some(i) => todo.push(i),
            None => assert_eq!(res.kind, "Application", "{} has no protobuf message", res.kind),
        }
    }
    let mut problems = Vec::new();
    while let Some(i) = todo.pop() {
        if !seen.insert(i) {
            continue;
        }
        let (msg, resolved) = (t.message(i), t.resolved(i));
        if resolved.special.is_some() {
            continue;
        }
        if !resolved.from_schema {
            problems.push(format!("{}: no schema", msg.name));
        }
        for (f, json) in msg.fields.iter().zip(&resolved.json) {
            if let Ty::Message(sub) = f.ty {
                todo.push(sub);
            }
            if *json == JsonName::Inline
                && !t
                    .resolved(match f.ty {
                        Ty::Message(sub) => sub,
                        Ty::Scalar(_) => usize::MAX,
                    })
                    .from_schema
            {
                problems.push(format!("{}.{}: inlined without a schema", msg.name, f.name));
            }
        }
    }
    assert!(seen.len() > 100, "only {} messages reached", seen.len());
    assert!(problems.is_empty(), "{problems:#?}");
}

/// A pointer field's explicit zero survives; a non-pointer's zero is dropped as in JSON.
#[test]
fn explicit_zeros_of_pointer_fields_are_kept() {
    let d = pb_apps::Deployment {
        spec: Some(pb_apps::DeploymentSpec {
            replicas: Some(0),
            min_ready_seconds: Some(0),
            paused: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    };
    let body = envelope::wrap("apps/v1", "Deployment", d.encode_to_vec());
    let obj = decode_object(&body).expect("decodes");
    assert_eq!(obj["spec"], json!({"replicas": 0}));
    // Every entry names a real field.
    for entry in table::EXPLICIT_ZEROS {
        let (message, field) = entry.rsplit_once('.').unwrap_or_default();
        let index = table()
            .by_name(message)
            .unwrap_or_else(|| panic!("no message {message}"));
        assert!(table().message(index).fields.iter().any(|f| f.name == field), "{entry}");
    }
}

#[test]
fn kinds_without_a_message_are_unsupported_media() {
    let body = envelope::wrap("kairn.dev/v1", "Application", Vec::new());
    let err = request_body(MEDIA_TYPE, Bytes::from(body)).unwrap_err();
    assert!(matches!(err, ApiError::UnsupportedMediaType(_)), "{err:?}");
    let err = request_body(MEDIA_TYPE, Bytes::from_static(b"{\"kind\":\"ConfigMap\"}")).unwrap_err();
    assert!(matches!(err, ApiError::BadRequest(_)), "{err:?}");
    let truncated = &encode_object(&rich_pod()).expect("encodes")[..200];
    let err = request_body(MEDIA_TYPE, Bytes::copy_from_slice(truncated)).unwrap_err();
    assert!(matches!(err, ApiError::BadRequest(_)), "{err:?}");
    // JSON bodies pass untouched.
    let json_body = Bytes::from_static(b"{}");
    assert_eq!(
        request_body("application/json", json_body.clone()).ok(),
        Some(json_body)
    );
}

#[test]
fn accept_headers_are_negotiated() {
    assert!(prefers_protobuf(Some(
        "application/vnd.kubernetes.protobuf,application/json"
    )));
    assert!(prefers_protobuf(Some(
        "application/vnd.kubernetes.protobuf;stream=watch"
    )));
    assert!(!prefers_protobuf(Some(
        "application/json, application/vnd.kubernetes.protobuf"
    )));
    assert!(!prefers_protobuf(Some(
        "application/json;q=0.9,application/vnd.kubernetes.protobuf;q=0.5"
    )));
    assert!(prefers_protobuf(Some(
        "application/json;q=0.5,application/vnd.kubernetes.protobuf"
    )));
    assert!(!prefers_protobuf(Some(
        "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io,application/json"
    )));
    assert!(!prefers_protobuf(None));
    assert!(accepts_json("application/vnd.kubernetes.protobuf, */*"));
    assert!(!accepts_json("application/vnd.kubernetes.protobuf"));
}

#[test]
fn watch_frames_are_length_prefixed_watch_events() {
    let cm = json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "c"}, "data": {"a": "b"}});
    let frame = watch_frame("ADDED", &cm).expect("frame");
    let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    assert_eq!(len, frame.len() - 4);
    let event = pb_meta::WatchEvent::decode(&frame[4..]).expect("watch event");
    assert_eq!(event.r#type.as_deref(), Some("ADDED"));
    let raw = event.object.unwrap_or_default().raw.unwrap_or_default();
    assert_eq!(decode_object(&raw).expect("object"), cm);
}

#[test]
fn go_durations() {
    for (nanos, text) in [
        (0, "0s"),
        (1_500_000_000, "1.5s"),
        (90_000_000_000, "1m30s"),
        (3_600_000_000_000, "1h0m0s"),
        (150_000_000, "150ms"),
        (-2_000, "-2µs"),
    ] {
        assert_eq!(special::format_duration(nanos), text);
        assert_eq!(special::parse_duration(text), Some(nanos), "{text}");
    }
    assert_eq!(special::parse_duration("1h"), Some(3_600_000_000_000));
    assert_eq!(special::parse_duration("5x"), None);
}
