//! Static pods, as a kubelet's `staticPodPath` runs them: Pod manifests (YAML or JSON,
//! one per file) in the agent's `--manifest-dir`, watched with notify, run by the agent
//! itself whether or not the API server is there. Each is named `<name>-<node>` and
//! mirrored into the API as a mirror pod (annotated `kubernetes.io/config.mirror`,
//! owned by the Node) that shows its status; deleting the mirror pod does not stop the
//! pod, the agent recreates it. Changing a file replaces the pod; removing it stops it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::logs::PodDirs;
use crate::pod::{PodWorker, WorkerContext};
use crate::runtime::Runtime;

/// On a mirror pod: the hash of the static pod it mirrors.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// On a static pod and its mirror: where it came from (`file`).
pub const SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
/// On a static pod and its mirror: the hash of its manifest.
pub const HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
/// The uids (and pod directories) of static pods start with this.
pub const UID_PREFIX: &str = "static-";

/// How soon mirror pods are written again after the API refused or was away.
const MIRROR_RETRY: Duration = Duration::from_secs(5);
/// How long file events settle before the directory is read again.
const SETTLE: Duration = Duration::from_millis(100);

/// Whether `pod` is a mirror pod (run by its agent from a file, not from the API).
pub fn is_mirror(pod: &Pod) -> bool {
    pod.annotations().contains_key(MIRROR_ANNOTATION)
}

/// FNV-1a of `bytes`, in hex: stable across runs, so a pod keeps its uid (and its
/// containers are adopted) over agent restarts.
fn hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// The static pod a manifest file describes, for node `node`.
pub fn parse(file: &Path, text: &str, node: &str) -> Result<Pod, String> {
    let value: serde_json::Value = serde_yaml::from_str(text).map_err(|e| format!("{}: {e}", file.display()))?;
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    let api_version = value.get("apiVersion").and_then(|k| k.as_str()).unwrap_or("");
    if kind != "Pod" || api_version != "v1" {
        return Err(format!(
            "{}: a static pod manifest is one v1 Pod, not {api_version}/{kind}",
            file.display()
        ));
    }
    let mut pod: Pod = serde_json::from_value(value).map_err(|e| format!("{}: {e}", file.display()))?;
    let name = pod
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("{}: metadata.name: Required value", file.display()))?;
    let canonical = serde_json::to_vec(&pod).map_err(|e| e.to_string())?;
    let digest = hash(&[canonical.as_slice(), node.as_bytes()].concat());
    pod.metadata.name = Some(format!("{name}-{node}"));
    if pod.metadata.namespace.as_deref().unwrap_or("").is_empty() {
        pod.metadata.namespace = Some("default".into());
    }
    pod.metadata.uid = Some(format!("{UID_PREFIX}{digest}"));
    let annotations = pod.metadata.annotations.get_or_insert_with(Default::default);
    annotations.insert(SOURCE_ANNOTATION.into(), "file".into());
    annotations.insert(HASH_ANNOTATION.into(), digest);
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.node_name = Some(node.to_string());
    Ok(pod)
}

/// Reads every manifest in `dir`: the pods, by file, and the files that did not parse.
fn read_dir(dir: &Path, node: &str) -> (HashMap<PathBuf, Pod>, Vec<String>) {
    let (mut pods, mut errors) = (HashMap::new(), Vec::new());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (pods, errors);
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let manifest = path
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json");
        // Editors' temporary files and hidden files are not manifests.
        let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if !manifest || hidden || !path.is_file() {
            continue;
        }
        match std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: {e}", path.display()))
            .and_then(|text| parse(&path, &text, node))
        {
            Ok(pod) => {
                pods.insert(path, pod);
            }
            Err(e) => errors.push(e),
        }
    }
    (pods, errors)
}

/// The mirror pod of a static pod: the same pod, owned by the Node, with the API's own
/// uid.
fn mirror_of(pod: &Pod, node: &Node) -> Result<Pod, serde_json::Error> {
    let mut mirror = pod.clone();
    mirror.metadata.uid = None;
    mirror.status = None;
    let hash = pod.annotations().get(HASH_ANNOTATION).cloned().unwrap_or_default();
    mirror
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(MIRROR_ANNOTATION.into(), hash);
    mirror.metadata.owner_references = Some(vec![serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node", "name": node.name_any(),
        "uid": node.uid().unwrap_or_default(), "controller": true,
    }))?]);
    Ok(mirror)
}

/// A static pod running here.
struct Running {
    pod: Pod,
    worker: PodWorker,
    /// Its mirror pod exists as it should.
    mirrored: bool,
}

/// Runs the static pods of `dir` (on the node and in the data directory `config`
/// names) until `shutdown`; a message on `mirror_gone` (a mirror pod was deleted) makes
/// it write the mirrors again.
pub(crate) async fn run<R: Runtime>(
    ctx: WorkerContext,
    (dir, config): (PathBuf, &crate::AgentConfig),
    runtime: Arc<R>,
    pod_dirs: PodDirs,
    mut mirror_gone: mpsc::Receiver<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (node, data_dir) = (config.node_name.clone(), config.data_dir.clone());
    let (tx, mut changed) = mpsc::channel::<()>(1);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot create the static pod directory");
    }
    let _watcher = match notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
        let _ = tx.try_send(());
    }) {
        Ok(mut w) => {
            use notify::Watcher;
            if let Err(e) = w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the static pod directory");
            }
            Some(w)
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the static pod directory");
            None
        }
    };
    let mut running: HashMap<PathBuf, Running> = HashMap::new();
    loop {
        let (wanted, errors) = read_dir(&dir, &node);
        for e in errors {
            tracing::warn!(error = %e, "skipping a static pod manifest");
        }
        // Gone or changed: stop the old pod (and drop its mirror).
        let stale: Vec<PathBuf> = running
            .iter()
            .filter(|(file, r)| wanted.get(*file).is_none_or(|p| p.uid() != r.pod.uid()))
            .map(|(file, _)| file.clone())
            .collect();
        for file in stale {
            if let Some(r) = running.remove(&file) {
                tracing::info!(object = %r.pod.name_any(), file = %file.display(), "stopping static pod");
                pod_dirs.remove(&r.pod.namespace().unwrap_or_default(), &r.pod.name_any());
                r.worker.stop(None).await;
                if let Some(uid) = r.pod.uid() {
                    let _ = std::fs::remove_dir_all(data_dir.join("pods").join(uid));
                }
                delete_mirror(&ctx.client, &r.pod).await;
            }
        }
        for (file, pod) in wanted {
            if running.contains_key(&file) {
                continue;
            }
            let (Some(uid), Some(ns)) = (pod.uid(), pod.namespace()) else {
                continue;
            };
            tracing::info!(object = %pod.name_any(), file = %file.display(), node = %node, "starting static pod");
            let pod_dir = data_dir.join("pods").join(&uid);
            let worker = PodWorker::start(ctx.clone(), pod.clone(), runtime.clone(), pod_dir.clone());
            pod_dirs.insert(&ns, &pod.name_any(), pod_dir, worker.liveness());
            running.insert(
                file,
                Running {
                    pod,
                    worker,
                    mirrored: false,
                },
            );
        }
        // Mirrors: written for every pod that has none as it should be.
        let mut retry = false;
        for r in running.values_mut().filter(|r| !r.mirrored) {
            match ensure_mirror(&ctx.client, &r.pod, &node).await {
                Ok(created) => {
                    r.mirrored = true;
                    if created {
                        // A new mirror starts out Pending: it needs the status again.
                        r.worker.report_again();
                    }
                }
                Err(e) => {
                    tracing::debug!(object = %r.pod.name_any(), error = %e, "mirror pod not written; retrying");
                    retry = true;
                }
            }
        }
        let retry_after = async {
            if retry {
                tokio::time::sleep(MIRROR_RETRY).await
            } else {
                futures::future::pending().await
            }
        };
        tokio::select! {
            Some(()) = changed.recv() => tokio::time::sleep(SETTLE).await,
            Some(()) = mirror_gone.recv() => {
                for r in running.values_mut() {
                    r.mirrored = false;
                }
            }
            _ = retry_after => {}
            _ = shutdown.changed() => break,
        }
    }
    for (_, r) in running {
        pod_dirs.remove(&r.pod.namespace().unwrap_or_default(), &r.pod.name_any());
        r.worker.stop(None).await;
    }
}

/// Creates the static pod's mirror if it is missing, or replaces one of another
/// version; whether it wrote one.
async fn ensure_mirror(client: &kube::Client, pod: &Pod, node: &str) -> Result<bool, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let hash = pod.annotations().get(HASH_ANNOTATION).cloned();
    if let Some(existing) = pods.get_opt(&pod.name_any()).await? {
        let current = existing.annotations().get(MIRROR_ANNOTATION).cloned();
        if current.is_some() && current == hash && existing.metadata.deletion_timestamp.is_none() {
            return Ok(false);
        }
        // Another version of the pod (or not a mirror at all): the file wins.
        pods.delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
            .await?;
    }
    let node: Node = Api::all(client.clone()).get(node).await?;
    let mirror = mirror_of(pod, &node).map_err(kube::Error::SerdeError)?;
    match pods.create(&PostParams::default(), &mirror).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

async fn delete_mirror(client: &kube::Client, pod: &Pod) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    match pods
        .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => tracing::debug!(object = %pod.name_any(), error = %e, "deleting a mirror pod failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_become_node_bound_static_pods() {
        let file = Path::new("/etc/kairn/manifests/web.yaml");
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: busybox\n    command: [sleep, '60']\n";
        let pod = parse(file, yaml, "n1").unwrap();
        assert_eq!(pod.name_any(), "web-n1");
        assert_eq!(pod.namespace().as_deref(), Some("default"));
        assert_eq!(pod.spec.as_ref().and_then(|s| s.node_name.as_deref()), Some("n1"));
        let uid = pod.uid().unwrap();
        assert!(uid.starts_with(UID_PREFIX));
        assert_eq!(pod.annotations()[SOURCE_ANNOTATION], "file");
        // Stable for the same manifest and node, different for another node or content.
        assert_eq!(parse(file, yaml, "n1").unwrap().uid(), Some(uid.clone()));
        assert_ne!(parse(file, yaml, "n2").unwrap().uid(), Some(uid.clone()));
        let changed = yaml.replace("'60'", "'61'");
        assert_ne!(parse(file, &changed, "n1").unwrap().uid(), Some(uid));

        let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\n";
        assert!(parse(file, deployment, "n1")
            .unwrap_err()
            .contains("one v1 Pod, not apps/v1/Deployment"));
        let nameless = "apiVersion: v1\nkind: Pod\nmetadata: {}\n";
        assert!(parse(file, nameless, "n1")
            .unwrap_err()
            .contains("metadata.name: Required value"));
        assert!(parse(file, "{{{", "n1")
            .unwrap_err()
            .starts_with("/etc/kairn/manifests/web.yaml: "));
    }

    #[test]
    fn mirrors_are_owned_by_the_node_and_annotated() {
        let file = Path::new("web.yaml");
        let pod = parse(file, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n", "n1").unwrap();
        let mut node = Node::default();
        node.metadata.name = Some("n1".into());
        node.metadata.uid = Some("node-uid".into());
        let mirror = mirror_of(&pod, &node).unwrap();
        assert!(is_mirror(&mirror));
        assert_eq!(
            mirror.annotations()[MIRROR_ANNOTATION],
            pod.annotations()[HASH_ANNOTATION]
        );
        assert_eq!(mirror.uid(), None);
        let owner = &mirror.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Node", "node-uid"));
    }
}
