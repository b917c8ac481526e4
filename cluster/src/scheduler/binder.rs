//! The scheduler's writes to the API: bindings, the `PodScheduled=False` condition,
//! `nominatedNodeName`, victims' deletion, and Events.
//!
//! None of these block the scheduling loop: each runs as its own task and reports back
//! through the loop's input channel when the loop needs the outcome (a binding). Events
//! go through a bounded queue and are dropped when it is full, as client-go's event
//! broadcaster does: an Event is worth less than a decision.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Binding, Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::Api;
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};

use super::pod_info::PodInfo;

/// Events waiting to be written; more are dropped.
const EVENT_QUEUE: usize = 1000;
/// Events written at once.
const EVENT_WRITERS: usize = 8;

/// Writes a scheduler makes.
#[derive(Clone)]
pub struct Binder {
    client: kube::Client,
    name: String,
    binds: Arc<Semaphore>,
    events: mpsc::Sender<Event>,
}

fn reference(pod: &PodInfo) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(pod.name.clone()),
        namespace: Some(pod.namespace.clone()),
        uid: Some(pod.uid.clone()),
        ..Default::default()
    }
}

/// Creates `event`. The reply is read as text, not decoded: nothing reads it.
async fn write_event(client: &kube::Client, event: &Event) -> Result<(), kube::Error> {
    let namespace = event.metadata.namespace.as_deref().unwrap_or("default");
    let body = serde_json::to_vec(event).map_err(kube::Error::SerdeError)?;
    let request = kube::core::Request::new(format!("/api/v1/namespaces/{namespace}/events"))
        .create(&PostParams::default(), body)
        .map_err(kube::Error::BuildRequest)?;
    client.request_text(request).await?;
    Ok(())
}

impl Binder {
    /// A binder for the scheduler called `name`, with at most `parallel_binds` bindings in
    /// flight.
    pub fn new(client: kube::Client, name: &str, parallel_binds: usize) -> Binder {
        let (events, mut queue) = mpsc::channel::<Event>(EVENT_QUEUE);
        let writer = client.clone();
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(EVENT_WRITERS));
            while let Some(event) = queue.recv().await {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let writer = writer.clone();
                tokio::spawn(async move {
                    if let Err(e) = write_event(&writer, &event).await {
                        tracing::debug!(error = %e, "writing an event failed");
                    }
                    drop(permit);
                });
            }
        });
        Binder {
            client,
            name: name.to_string(),
            binds: Arc::new(Semaphore::new(parallel_binds.max(1))),
            events,
        }
    }

    /// Binds `pod` to `node` through the `binding` subresource.
    pub async fn bind(&self, pod: &PodInfo, node: &str) -> Result<(), kube::Error> {
        let _slot = self.binds.acquire().await;
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(pod.name.clone()),
                namespace: Some(pod.namespace.clone()),
                uid: Some(pod.uid.clone()),
                ..Default::default()
            },
            target: ObjectReference {
                kind: Some("Node".into()),
                api_version: Some("v1".into()),
                name: Some(node.to_string()),
                ..Default::default()
            },
        };
        let body = serde_json::to_vec(&binding).map_err(kube::Error::SerdeError)?;
        let request = kube::core::Request::new(format!("/api/v1/namespaces/{}/pods", pod.namespace))
            .create_subresource("binding", &pod.name, &PostParams::default(), body)
            .map_err(kube::Error::BuildRequest)?;
        self.client.request::<serde_json::Value>(request).await?;
        Ok(())
    }

    /// Sets `PodScheduled=False, Unschedulable` with `message` on the pod.
    pub async fn mark_unschedulable(&self, pod: &PodInfo, message: &str) -> Result<(), kube::Error> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let condition = json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": message, "lastProbeTime": null, "lastTransitionTime": crate::kinds::now()});
        let patch = json!({"status": {"conditions": [condition]}});
        pods.patch_status(&pod.name, &PatchParams::default(), &Patch::Strategic(patch))
            .await?;
        Ok(())
    }

    /// Records where preemption made room for `pod` (`status.nominatedNodeName`).
    pub async fn nominate(&self, pod: &PodInfo, node: Option<&str>) -> Result<(), kube::Error> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let patch = json!({"status": {"nominatedNodeName": node}});
        pods.patch_status(&pod.name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(())
    }

    /// Deletes a preemption victim with its own grace period.
    pub async fn evict(&self, victim: &PodInfo) -> Result<(), kube::Error> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &victim.namespace);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(victim.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match pods.delete(&victim.name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Queues an Event about `pod`; dropped if too many are waiting.
    pub fn event(&self, pod: &PodInfo, type_: &str, reason: &str, message: String) {
        let now = k8s_openapi::jiff::Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", pod.name)),
                namespace: Some(pod.namespace.clone()),
                ..Default::default()
            },
            involved_object: reference(pod),
            type_: Some(type_.to_string()),
            reason: Some(reason.to_string()),
            message: Some(message),
            source: Some(EventSource {
                component: Some(self.name.clone()),
                host: None,
            }),
            reporting_component: Some(self.name.clone()),
            reporting_instance: Some(self.name.clone()),
            action: Some(if reason == "Scheduled" { "Binding" } else { "Scheduling" }.to_string()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            count: Some(1),
            ..Default::default()
        };
        if self.events.try_send(event).is_err() {
            tracing::debug!(object = %pod.key(), reason, "event queue full; dropping the event");
        }
    }
}
