//! One watch of a kind shared by every controller that reads it, as kube-controller-manager
//! shares one informer per kind: the ReplicaSet, Job and DaemonSet controllers all read
//! pods, and each used to decode every pod event and hold every pod on its own.
//!
//! An [`Informer`] feeds one [`OwnerIndex`] (holding each object once, behind an `Arc`,
//! without its managedFields) and then hands each event to its subscribers, each through
//! its own unbounded queue: a slow controller delays only itself, and none misses an
//! event (client-go's shared informer buffers its listeners the same way).

use std::fmt;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use kairn_client::trimmed::{self, Trimmed};
use kairn_client::watch_event;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::OwnerIndex;

/// An object of the shared cache as a controller's trigger streams carry it: the cache's
/// own copy, not a clone of it.
#[derive(Clone)]
pub(crate) struct Shared<K>(pub Arc<K>);

impl<K> std::ops::Deref for Shared<K> {
    type Target = K;

    fn deref(&self) -> &K {
        &self.0
    }
}

impl<K: fmt::Debug> fmt::Debug for Shared<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

// `Controller::watches_stream` asks its triggers to be decodable, though it never
// decodes them.
impl<'de, K: Deserialize<'de>> Deserialize<'de> for Shared<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        K::deserialize(d).map(|k| Shared(Arc::new(k)))
    }
}

impl<K: Resource + Clone> Resource for Shared<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> std::borrow::Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &Self::DynamicType) -> std::borrow::Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &Self::DynamicType) -> std::borrow::Cow<'_, str> {
        K::version(dt)
    }

    fn api_version(dt: &Self::DynamicType) -> std::borrow::Cow<'_, str> {
        K::api_version(dt)
    }

    fn plural(dt: &Self::DynamicType) -> std::borrow::Cow<'_, str> {
        K::plural(dt)
    }

    fn url_path(dt: &Self::DynamicType, namespace: Option<&str>) -> String {
        K::url_path(dt, namespace)
    }

    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        self.0.meta()
    }

    fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        Arc::make_mut(&mut self.0).meta_mut()
    }
}

/// An event as subscribers receive it.
pub(crate) type Event<K> = watcher::Event<Arc<K>>;

/// One watch of every `K`, its index, and the controllers subscribed to its events.
pub(crate) struct Informer<K> {
    index: OwnerIndex<K>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Event<K>>>>,
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + fmt::Debug + Send + Sync + 'static,
{
    /// An informer with an empty index; nothing flows until [`Informer::run`].
    pub(crate) fn new() -> Self {
        Informer {
            index: OwnerIndex::new(),
            subscribers: Mutex::new(Vec::new()),
        }
    }

    /// The shared index (updated before subscribers see the event that changed it).
    pub(crate) fn index(&self) -> OwnerIndex<K> {
        self.index.clone()
    }

    fn subscribers(&self) -> std::sync::MutexGuard<'_, Vec<mpsc::UnboundedSender<Event<K>>>> {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A stream of the objects each event touches, for `Controller::owns_stream` or
    /// `watches_stream`; `observe` sees each event first (a controller's expectations).
    /// A subscriber that comes late first gets every object already held, as client-go
    /// replays its cache to a handler added to a running informer.
    pub(crate) fn subscribe(
        &self,
        observe: impl Fn(&Event<K>) + Send + 'static,
    ) -> impl Stream<Item = Result<Shared<K>, watcher::Error>> + Send + 'static {
        let (tx, rx) = mpsc::unbounded_channel();
        {
            // Under the lock `run` holds from applying an event to handing it out: the
            // replay and the events after it neither overlap nor leave a gap.
            let mut subscribers = self.subscribers();
            for obj in self.index.all() {
                let _ = tx.send(watcher::Event::InitApply(obj));
            }
            subscribers.push(tx);
        }
        UnboundedReceiverStream::new(rx).filter_map(move |event: Event<K>| {
            observe(&event);
            let touched = match event {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) | watcher::Event::Delete(o) => {
                    Some(Ok(Shared(o)))
                }
                watcher::Event::Init | watcher::Event::InitDone => None,
            };
            futures::future::ready(touched)
        })
    }

    /// Watches `K` (decoded without managedFields, as kube-controller-manager's informers
    /// hold objects) until `shutdown` turns true.
    pub(crate) async fn run(&self, client: kube::Client, shutdown: watch::Receiver<bool>) {
        let events = trimmed::watch(Api::<Trimmed<K>>::all(client), watcher::Config::default())
            .default_backoff()
            .take_until(super::stopped(shutdown));
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(e) => watch_event::map(e, Arc::new),
                Err(e) => {
                    // The watcher backs off and relists by itself.
                    tracing::debug!(kind = %K::kind(&()), error = %e, "shared watch failed; retrying");
                    continue;
                }
            };
            self.deliver(event);
        }
    }

    /// Applies `event` to the index, then hands it to every subscriber still there.
    fn deliver(&self, event: Event<K>) {
        let mut subscribers = self.subscribers();
        self.index.apply(&event);
        subscribers.retain(|s| s.send(event.clone()).is_ok());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Pod;
    use kube::ResourceExt;

    use super::*;

    fn pod(name: &str) -> Arc<Pod> {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("default".into());
        p.metadata.uid = Some(format!("uid-{name}"));
        Arc::new(p)
    }

    async fn names(
        stream: &mut (impl Stream<Item = Result<Shared<Pod>, watcher::Error>> + Unpin),
        n: usize,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            let touched = stream.next().await.expect("an object").expect("no error");
            out.push(touched.name_any());
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn every_subscriber_sees_each_event_once_and_late_ones_get_the_cache_first() {
        let informer = Informer::<Pod>::new();
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        let mut early = Box::pin(informer.subscribe(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        informer.deliver(watcher::Event::Init);
        informer.deliver(watcher::Event::InitApply(pod("a")));
        informer.deliver(watcher::Event::InitDone);
        informer.deliver(watcher::Event::Apply(pod("b")));
        assert_eq!(names(&mut early, 2).await, ["a", "b"]);
        // `observe` saw all four events, the list's bounds included.
        assert_eq!(seen.load(Ordering::SeqCst), 4);

        // A subscriber that comes late starts from what the index holds, then follows;
        // one that comes during a relist also gets the objects relisted so far.
        let mut late = Box::pin(informer.subscribe(|_| {}));
        assert_eq!(names(&mut late, 2).await, ["a", "b"]);
        informer.deliver(watcher::Event::Delete(pod("a")));
        assert_eq!(names(&mut late, 1).await, ["a"]);
        assert_eq!(names(&mut early, 1).await, ["a"]);
        let held: Vec<String> = informer.index().all().iter().map(|p| p.name_any()).collect();
        assert_eq!(held, ["b"]);

        informer.deliver(watcher::Event::Init);
        informer.deliver(watcher::Event::InitApply(pod("r")));
        let mut later = Box::pin(informer.subscribe(|_| {}));
        assert_eq!(names(&mut later, 2).await, ["b", "r"]);
        informer.deliver(watcher::Event::InitDone);
        assert_eq!(names(&mut early, 1).await, ["r"]);
        assert_eq!(names(&mut late, 1).await, ["r"]);

        // A subscriber that went away is dropped; the others go on.
        drop(late);
        informer.deliver(watcher::Event::Apply(pod("c")));
        assert_eq!(informer.subscribers().len(), 2);
        assert_eq!(names(&mut early, 1).await, ["c"]);
        assert_eq!(names(&mut later, 1).await, ["c"]);
    }
}
