//! The scheduling queue, as Kubernetes keeps it: pending pods ordered by priority then
//! age; a pod that failed waits out a back-off (1 s doubling to 10 s); a pod that fits
//! nowhere is parked until something that could change that happens (a node added or
//! changed, a placed pod gone), not retried by a periodic sweep. Parked pods also get
//! another try after [`PARKED_LIMIT`], in case an event was missed.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use super::pod_info::PodRef;

/// The first back-off after a failed attempt.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// The longest back-off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a parked pod waits without any event before it is tried again.
pub const PARKED_LIMIT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// In the heap, ready to be tried.
    Active,
    /// Waiting out a back-off until the instant.
    Backoff(Instant),
    /// Fit nowhere; waits for a cluster event.
    Parked(Instant),
    /// Popped: being scheduled or bound.
    InFlight,
}

#[derive(Debug)]
struct Queued {
    pod: PodRef,
    attempts: u32,
    /// Bumped whenever the pod re-enters the heap, so stale heap entries are skipped.
    generation: u64,
    place: Place,
    /// When the last attempt ended (for back-off after an event).
    last_try: Option<Instant>,
}

/// A heap entry: higher priority first, then older, then first queued.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    priority: i32,
    created: i64,
    seq: u64,
    uid: String,
    generation: u64,
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then(other.created.cmp(&self.created))
            .then(other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Pending pods of one scheduler.
#[derive(Debug, Default)]
pub struct Queue {
    pods: HashMap<String, Queued>,
    heap: BinaryHeap<Entry>,
    backoff: BinaryHeap<Reverse<(Instant, String, u64)>>,
    seq: u64,
}

/// The back-off after `attempts` failed attempts.
pub fn backoff(attempts: u32) -> Duration {
    let doubled = INITIAL_BACKOFF.saturating_mul(1 << attempts.saturating_sub(1).min(10));
    doubled.min(MAX_BACKOFF)
}

impl Queue {
    /// How many pods wait in any state.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// Whether no pod waits.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    fn activate(&mut self, uid: &str) {
        let Some(q) = self.pods.get_mut(uid) else { return };
        self.seq += 1;
        q.generation += 1;
        q.place = Place::Active;
        self.heap.push(Entry {
            priority: q.pod.priority,
            created: q.pod.created,
            seq: self.seq,
            uid: uid.to_string(),
            generation: q.generation,
        });
    }

    /// Adds a pending pod, or takes its newer version. A parked pod whose spec changed
    /// is tried again.
    pub fn upsert(&mut self, pod: PodRef) {
        let uid = pod.uid.clone();
        match self.pods.get_mut(&uid) {
            None => {
                self.pods.insert(
                    uid.clone(),
                    Queued {
                        pod,
                        attempts: 0,
                        generation: 0,
                        place: Place::Active,
                        last_try: None,
                    },
                );
                self.activate(&uid);
            }
            Some(q) => {
                let changed = pod.spec_changed_from(&q.pod);
                q.pod = pod;
                if changed && matches!(q.place, Place::Parked(_)) {
                    self.activate(&uid);
                }
            }
        }
    }

    /// Removes a pod that is no longer pending (bound elsewhere, deleted).
    pub fn remove(&mut self, uid: &str) -> Option<PodRef> {
        self.pods.remove(uid).map(|q| q.pod)
    }

    /// The pod to schedule next, if one is ready; it stays known, in flight.
    pub fn pop(&mut self, now: Instant) -> Option<PodRef> {
        self.release_backoffs(now);
        while let Some(entry) = self.heap.pop() {
            let Some(q) = self.pods.get_mut(&entry.uid) else {
                continue;
            };
            if q.generation != entry.generation || q.place != Place::Active {
                continue;
            }
            q.place = Place::InFlight;
            return Some(q.pod.clone());
        }
        None
    }

    fn release_backoffs(&mut self, now: Instant) {
        while let Some(Reverse((at, _, _))) = self.backoff.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, uid, generation))) = self.backoff.pop() else {
                break;
            };
            let due = self
                .pods
                .get(&uid)
                .is_some_and(|q| q.generation == generation && matches!(q.place, Place::Backoff(_)));
            if due {
                self.activate(&uid);
            }
        }
    }

    fn send_to_backoff(&mut self, uid: &str, until: Instant) {
        let Some(q) = self.pods.get_mut(uid) else { return };
        q.generation += 1;
        q.place = Place::Backoff(until);
        self.backoff.push(Reverse((until, uid.to_string(), q.generation)));
    }

    /// An attempt failed for a passing reason (a binding error): retry after back-off.
    pub fn retry_later(&mut self, uid: &str, now: Instant) {
        let Some(q) = self.pods.get_mut(uid) else { return };
        q.attempts += 1;
        q.last_try = Some(now);
        let until = now + backoff(q.attempts);
        self.send_to_backoff(uid, until);
    }

    /// The pod fits nowhere: park it until a cluster event.
    pub fn park(&mut self, uid: &str, now: Instant) {
        let Some(q) = self.pods.get_mut(uid) else { return };
        q.attempts += 1;
        q.last_try = Some(now);
        q.generation += 1;
        q.place = Place::Parked(now);
    }

    /// The pod was bound: it leaves the queue.
    pub fn done(&mut self, uid: &str) {
        self.pods.remove(uid);
    }

    /// Something changed that may let parked pods fit: each goes back to the heap, or
    /// to back-off if its last attempt was too recent.
    pub fn cluster_changed(&mut self, now: Instant) {
        let parked: Vec<(String, Instant)> = self
            .pods
            .iter()
            .filter(|(_, q)| matches!(q.place, Place::Parked(_)))
            .map(|(uid, q)| (uid.clone(), q.last_try.unwrap_or(now) + backoff(q.attempts)))
            .collect();
        for (uid, ready_at) in parked {
            if ready_at <= now {
                self.activate(&uid);
            } else {
                self.send_to_backoff(&uid, ready_at);
            }
        }
    }

    /// Something happened that the pod with `uid` waits for (its preemption victims are
    /// gone): it goes back to the heap at once, back-off or not.
    pub fn wake(&mut self, uid: &str) {
        let waiting = self
            .pods
            .get(uid)
            .is_some_and(|q| matches!(q.place, Place::Parked(_) | Place::Backoff(_)));
        if waiting {
            self.activate(uid);
        }
    }

    /// Parked pods that waited [`PARKED_LIMIT`] go back to the heap.
    pub fn flush_parked(&mut self, now: Instant) {
        let stale: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, q)| matches!(q.place, Place::Parked(since) if now.duration_since(since) >= PARKED_LIMIT))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in stale {
            self.activate(&uid);
        }
    }

    /// When the next back-off ends, if any pod waits on one.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.backoff.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Whether a pod is ready to pop now.
    pub fn has_active(&self, now: Instant) -> bool {
        !self.heap.is_empty() || self.next_wakeup().is_some_and(|at| at <= now)
    }

    /// Whether the pod with `uid` is known (pending, in flight or waiting).
    pub fn contains(&self, uid: &str) -> bool {
        self.pods.contains_key(uid)
    }

    /// Uids of every queued pod, for a relist to drop those that vanished.
    pub fn uids(&self) -> Vec<String> {
        self.pods.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::pod_info::PodInfo;
    use std::sync::Arc;

    fn pod(uid: &str, priority: i32, created: i64) -> PodRef {
        Arc::new(PodInfo {
            uid: uid.into(),
            priority,
            created,
            ..Default::default()
        })
    }

    #[test]
    fn pops_by_priority_then_age() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.upsert(pod("young", 0, 20));
        q.upsert(pod("old", 0, 10));
        q.upsert(pod("important", 1000, 30));
        let order: Vec<String> = std::iter::from_fn(|| q.pop(now)).map(|p| p.uid.clone()).collect();
        assert_eq!(order, ["important", "old", "young"]);
        assert_eq!(q.len(), 3, "popped pods stay known until done");
    }

    #[test]
    fn backoff_doubles_up_to_the_limit() {
        let got: Vec<u64> = (1..=6).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn parked_pods_wait_for_an_event_and_respect_backoff() {
        let mut q = Queue::default();
        let t0 = Instant::now();
        q.upsert(pod("p", 0, 0));
        assert!(q.pop(t0).is_some());
        q.park("p", t0);
        assert!(
            q.pop(t0 + Duration::from_secs(60)).is_none(),
            "parked: no sweep retries it"
        );
        // An event right away: back-off first (1 s after one attempt).
        q.cluster_changed(t0);
        assert!(q.pop(t0).is_none());
        assert!(q.pop(t0 + Duration::from_millis(1001)).is_some());
        q.park("p", t0 + Duration::from_secs(2));
        q.cluster_changed(t0 + Duration::from_secs(10));
        assert!(q.pop(t0 + Duration::from_secs(10)).is_some(), "back-off already served");
        q.park("p", t0 + Duration::from_secs(10));
        q.flush_parked(t0 + Duration::from_secs(10) + PARKED_LIMIT);
        assert!(q.pop(t0 + Duration::from_secs(10) + PARKED_LIMIT).is_some());
        q.done("p");
        assert!(q.is_empty());
    }

    #[test]
    fn a_changed_spec_unparks_but_a_status_update_does_not() {
        let mut q = Queue::default();
        let t0 = Instant::now();
        q.upsert(pod("p", 0, 0));
        q.pop(t0);
        q.park("p", t0);
        q.upsert(pod("p", 0, 0));
        assert!(q.pop(t0).is_none());
        let mut changed = (*pod("p", 0, 0)).clone();
        changed.labels.insert("a".into(), "b".into());
        q.upsert(Arc::new(changed));
        assert!(q.pop(t0).is_some());
    }
}
