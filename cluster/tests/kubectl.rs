//! The real `kubectl` against a real member (over TLS, with the admin's token), as an
//! operator uses it: apply (create, unchanged, configured, pruned), server-side apply and
//! its conflicts, the `create` generators (sent as protobuf), get in every output,
//! label/annotate/scale, taint/cordon/uncordon, drain (evicting pods), wait and delete.
//! Skipped, with a printed reason, when kubectl is not on PATH.

mod common;

use common::{start, text, Server};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};

/// Runs kubectl; panics with its stderr unless it succeeds; returns stdout.
async fn ok(s: &Server, args: &[&str]) -> String {
    let out = s.kubectl(args).await.expect("kubectl is present");
    assert!(out.status.success(), "kubectl {args:?} failed: {}", text(&out.stderr));
    text(&out.stdout)
}

/// Runs kubectl expecting failure; returns stderr.
async fn fails(s: &Server, args: &[&str]) -> String {
    let out = s.kubectl(args).await.expect("kubectl is present");
    assert!(
        !out.status.success(),
        "kubectl {args:?} should fail: {}",
        text(&out.stdout)
    );
    text(&out.stderr)
}

const APP: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: demo-config
  labels: {app: demo}
data:
  greeting: hello
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: demo
  labels: {app: demo}
spec:
  replicas: 1
  selector:
    matchLabels: {app: demo}
  template:
    metadata:
      labels: {app: demo}
    spec:
      containers:
      - name: demo
        image: busybox
        command: [sleep, '300']
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: demo
  labels: {app: demo}
spec:
  selector: {app: demo}
  ports:
  - port: 80
    targetPort: 8080
";

#[tokio::test]
async fn kubectl_as_an_operator_uses_it() {
    if !common::kubectl_present().await {
        eprintln!("skipping: kubectl is not on PATH");
        return;
    }
    let s = start().await;
    let file = s.dir.path().join("app.yaml");
    let path = file.to_str().unwrap();

    // apply: created, then unchanged, then configured, then pruned.
    std::fs::write(&file, APP).unwrap();
    let out = ok(&s, &["apply", "-f", path]).await;
    assert!(
        out.contains("deployment.apps/demo created") && out.contains("service/demo created"),
        "{out}"
    );
    let out = ok(&s, &["apply", "-f", path]).await;
    assert!(out.contains("deployment.apps/demo unchanged"), "{out}");
    std::fs::write(&file, APP.replace("replicas: 1", "replicas: 2")).unwrap();
    let out = ok(&s, &["apply", "-f", path]).await;
    assert!(out.contains("deployment.apps/demo configured"), "{out}");
    let without_service = APP
        .split("---\napiVersion: v1\nkind: Service")
        .next()
        .unwrap()
        .to_string();
    std::fs::write(&file, &without_service).unwrap();
    let out = ok(&s, &["apply", "--prune", "-l", "app=demo", "-f", path]).await;
    assert!(out.contains("service/demo pruned"), "{out}");

    // Server-side apply takes over, conflicts with another manager, and forces.
    let out = ok(&s, &["apply", "--server-side", "-f", path]).await;
    assert!(out.contains("deployment.apps/demo serverside-applied"), "{out}");
    ok(&s, &["scale", "deploy/demo", "--replicas=3"]).await;
    let err = fails(&s, &["apply", "--server-side", "-f", path]).await;
    assert!(err.contains("conflict") && err.contains(".spec.replicas"), "{err}");
    let out = ok(&s, &["apply", "--server-side", "--force-conflicts", "-f", path]).await;
    assert!(out.contains("serverside-applied"), "{out}");
    let replicas = ok(&s, &["get", "deploy", "demo", "-o", "jsonpath={.spec.replicas}"]).await;
    assert_eq!(replicas, "1", "the applied configuration wins");

    // The create generators (kubectl sends these bodies as protobuf).
    ok(&s, &["create", "configmap", "plain", "--from-literal=a=b"]).await;
    ok(&s, &["create", "secret", "generic", "token", "--from-literal=p=q"]).await;
    ok(&s, &["create", "service", "clusterip", "front", "--tcp=80:8080"]).await;
    ok(&s, &["create", "deployment", "nginx", "--image=nginx", "--replicas=2"]).await;
    ok(&s, &["create", "namespace", "team"]).await;
    let secret: Value = serde_json::from_str(&ok(&s, &["get", "secret", "token", "-o", "json"]).await).unwrap();
    assert_eq!(secret["data"]["p"], "cQ==");

    // get, in every output kubectl has.
    let all = ok(&s, &["get", "all"]).await;
    for want in [
        "deployment.apps/demo",
        "deployment.apps/nginx",
        "service/front",
        "service/kubernetes",
    ] {
        assert!(all.contains(want), "get all lacks {want}:\n{all}");
    }
    let wide = ok(&s, &["get", "svc", "-A", "-o", "wide"]).await;
    assert!(wide.contains("SELECTOR") && wide.contains("NAMESPACE"), "{wide}");
    let yaml = ok(&s, &["get", "cm", "demo-config", "-o", "yaml"]).await;
    assert!(yaml.contains("greeting: hello"), "{yaml}");
    ok(&s, &["label", "cm", "plain", "tier=cache"]).await;
    ok(&s, &["annotate", "cm", "plain", "owner=ops"]).await;
    let labels = ok(&s, &["get", "cm", "plain", "--show-labels"]).await;
    assert!(labels.contains("tier=cache"), "{labels}");
    let ann = ok(
        &s,
        &["get", "cm", "plain", "-o", "jsonpath={.metadata.annotations.owner}"],
    )
    .await;
    assert_eq!(ann, "ops");

    // A node to taint, cordon and drain: its pods are evicted.
    let nodes: Api<Node> = Api::all(s.client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}}))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    ok(&s, &["taint", "node", "n1", "dedicated=gpu:NoSchedule"]).await;
    let taints = ok(&s, &["get", "node", "n1", "-o", "jsonpath={.spec.taints[0].key}"]).await;
    assert_eq!(taints, "dedicated");
    ok(&s, &["taint", "node", "n1", "dedicated=gpu:NoSchedule-"]).await;
    ok(&s, &["cordon", "n1"]).await;
    assert!(ok(&s, &["get", "node", "n1"]).await.contains("SchedulingDisabled"));
    ok(&s, &["uncordon", "n1"]).await;
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), "default");
    for name in ["p1", "p2"] {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let binding =
            json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": {"name": "n1"}});
        let (status, _, _) = s
            .request(
                "POST",
                &format!("/api/v1/namespaces/default/pods/{name}/binding"),
                &[("content-type", "application/json")],
                binding.to_string(),
            )
            .await;
        assert_eq!(status.as_u16(), 201);
    }
    let out = ok(
        &s,
        &[
            "drain",
            "n1",
            "--force",
            "--grace-period=0",
            "--ignore-daemonsets",
            "--timeout=60s",
        ],
    )
    .await;
    assert!(out.contains("node/n1 drained"), "{out}");
    assert!(pods.get_opt("p1").await.unwrap().is_none() && pods.get_opt("p2").await.unwrap().is_none());

    // wait for a condition, and delete (which waits for the object to be gone).
    let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "waited"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    pods.patch_status("waited", &PatchParams::default(), &Patch::Merge(ready))
        .await
        .unwrap();
    ok(&s, &["wait", "--for=condition=Ready", "pod/waited", "--timeout=30s"]).await;
    let out = ok(&s, &["delete", "cm", "plain"]).await;
    assert!(out.contains("configmap \"plain\" deleted"), "{out}");
    assert!(fails(&s, &["get", "cm", "plain"]).await.contains("NotFound"));
    s.stop().await;
}
