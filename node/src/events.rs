//! Events the agent writes about its pods (`Started`, `Unhealthy`, `BackOff`, ...), as
//! a kubelet does: what `kubectl describe pod` shows under Events. Best effort: they are
//! queued and written by one task, dropped when too many wait, and a repeat of the same
//! event bumps `count` and `lastTimestamp` of the one already written (client-go's
//! event correlator) instead of adding another.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

/// Events waiting to be written; more are dropped.
const QUEUE: usize = 1024;
/// Repeats remembered for aggregation; the memory is cleared beyond this.
const REMEMBERED: usize = 4096;

/// Normal or Warning, as Kubernetes types events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// Something went as it should.
    Normal,
    /// Something needs attention.
    Warning,
}

/// One event to write.
struct Pending {
    pod: ObjectReference,
    type_: Type,
    reason: &'static str,
    message: String,
}

/// Queues events about pods for the writer task.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Pending>,
}

impl Recorder {
    /// A recorder writing as the kubelet of `node`; the writer runs until every clone
    /// of the recorder is dropped.
    pub fn new(client: kube::Client, node: &str) -> Recorder {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write(client, node.to_string(), rx));
        Recorder { tx }
    }

    /// A recorder that writes nothing (unit tests of pod workers).
    #[cfg(test)]
    pub(crate) fn discard() -> Recorder {
        let (tx, mut rx) = mpsc::channel::<Pending>(QUEUE);
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        Recorder { tx }
    }

    /// Queues an event about `pod`, about its container `container` if given.
    pub fn pod(&self, pod: &Pod, container: Option<&str>, type_: Type, reason: &'static str, message: String) {
        let field_path = container.map(|c| {
            let init = pod
                .spec
                .as_ref()
                .and_then(|s| s.init_containers.as_ref())
                .is_some_and(|ics| ics.iter().any(|ic| ic.name == c));
            format!("spec.{}{{{c}}}", if init { "initContainers" } else { "containers" })
        });
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.name_any()),
            namespace: pod.namespace(),
            uid: pod.uid(),
            resource_version: pod.resource_version(),
            field_path,
        };
        let pending = Pending {
            pod: reference,
            type_,
            reason,
            message,
        };
        if self.tx.try_send(pending).is_err() {
            tracing::debug!(object = %pod.name_any(), reason, "event queue full; dropping the event");
        }
    }
}

/// What makes two events the same: pod uid, field path, reason, message.
type Key = (String, String, &'static str, String);

async fn write(client: kube::Client, node: String, mut rx: mpsc::Receiver<Pending>) {
    // Events written so far: their namespace, name and count.
    let mut seen: HashMap<Key, (String, String, i32)> = HashMap::new();
    while let Some(p) = rx.recv().await {
        let ns = p.pod.namespace.clone().unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(client.clone(), &ns);
        let now = k8s_openapi::jiff::Timestamp::now();
        let key = (
            p.pod.uid.clone().unwrap_or_default(),
            p.pod.field_path.clone().unwrap_or_default(),
            p.reason,
            p.message.clone(),
        );
        if let Some((ns, name, count)) = seen.get_mut(&key) {
            *count += 1;
            let patch = json!({"count": *count, "lastTimestamp": Time(now)});
            let api: Api<Event> = Api::namespaced(client.clone(), ns);
            match api.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await {
                Ok(_) => continue,
                // Expired or deleted: write it anew.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    tracing::debug!(error = %e, "updating an event failed");
                    continue;
                }
            }
        }
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", p.pod.name.clone().unwrap_or_default())),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: p.pod,
            type_: Some(format!("{:?}", p.type_)),
            reason: Some(p.reason.to_string()),
            message: Some(p.message),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(node.clone()),
            }),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(node.clone()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            count: Some(1),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &event).await {
            Ok(created) => {
                if seen.len() >= REMEMBERED {
                    seen.clear();
                }
                seen.insert(key, (ns, created.name_any(), 1));
            }
            Err(e) => tracing::debug!(error = %e, "writing an event failed"),
        }
    }
}
