//! Leader election through a `coordination.k8s.io/v1` Lease, as client-go's
//! `leaderelection` does it for kube-scheduler and kube-controller-manager: so that of
//! several schedulers, controller managers or reconcilers only one acts at a time.
//!
//! A candidate reads the Lease every retry period. It takes the Lease when nobody holds
//! it, when the holder released it, or when the record has not changed for a whole lease
//! duration *as this candidate observed it* (by its own monotonic clock, so the members'
//! clocks need not agree). Taking and renewing are compare-and-swap writes on the Lease's
//! `resourceVersion`, so two candidates never both win one round. The holder renews every
//! retry period; if it has not renewed for the renew deadline (shorter than the lease
//! duration) it stops its component before anybody else may take over.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{PostParams, ResourceExt};
use kube::Api;
use tokio::sync::watch;

/// The namespace the control plane's Leases live in.
pub const NAMESPACE: &str = "kube-system";
/// The scheduler's Lease.
pub const SCHEDULER_LEASE: &str = "kube-scheduler";
/// The controller manager's Lease.
pub const CONTROLLER_MANAGER_LEASE: &str = "kube-controller-manager";
/// The GitOps reconciler's Lease.
pub const RECONCILER_LEASE: &str = "kairn-reconciler";

/// How long a stopped component gets before it is aborted.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Timing of one election, with client-go's defaults (15 s, 10 s, 2 s).
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// The Lease's name (in [`NAMESPACE`]).
    pub lease_name: String,
    /// Who this candidate is, unique among candidates (`host_uuid`).
    pub identity: String,
    /// How long a standby waits after the last change it saw before taking over.
    pub lease_duration: Duration,
    /// How long the holder keeps acting without a successful renewal.
    pub renew_deadline: Duration,
    /// How often candidates try to take, and the holder to renew, the Lease.
    pub retry_period: Duration,
}

impl ElectionConfig {
    /// The defaults for `lease_name`, with a fresh identity on `host`.
    pub fn new(lease_name: &str, host: &str) -> ElectionConfig {
        ElectionConfig {
            lease_name: lease_name.to_string(),
            identity: format!("{host}_{}", uuid::Uuid::new_v4()),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Rejects timings under which two holders could act at once.
    pub fn validate(&self) -> Result<(), String> {
        if self.renew_deadline >= self.lease_duration {
            return Err(format!(
                "the renew deadline ({:?}) must be shorter than the lease duration ({:?})",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.retry_period >= self.renew_deadline {
            return Err(format!(
                "the retry period ({:?}) must be shorter than the renew deadline ({:?})",
                self.retry_period, self.renew_deadline
            ));
        }
        if self.lease_duration.as_secs() < 1 {
            return Err("the lease duration must be at least 1s (the Lease counts whole seconds)".into());
        }
        Ok(())
    }
}

/// What this candidate last saw of the Lease, and when (by its own clock).
struct Observed {
    holder: String,
    renew_time: Option<MicroTime>,
    at: Instant,
}

/// One candidate for one Lease.
struct Elector {
    api: Api<Lease>,
    config: ElectionConfig,
    observed: Option<Observed>,
}

/// The outcome of one attempt to take or renew the Lease.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// This candidate holds the Lease now.
    Held,
    /// Somebody else holds it, and it has not expired.
    HeldByOther(String),
    /// Another write to the Lease came first; read it again next time.
    Raced,
}

impl Elector {
    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// Takes the Lease if it is free or expired, or renews it if this candidate holds it.
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let me = self.config.identity.clone();
        let current = match self.api.get_opt(&self.config.lease_name).await? {
            Some(lease) => lease,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.lease_name.clone()),
                        namespace: Some(NAMESPACE.into()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(me.clone()),
                        lease_duration_seconds: Some(self.lease_seconds()),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now.clone()),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => {
                        self.observe(&me, Some(now));
                        Ok(Attempt::Held)
                    }
                    // Another candidate created it first.
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Raced),
                    Err(e) => Err(e),
                };
            }
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let changed = match &self.observed {
            Some(seen) => seen.holder != holder || seen.renew_time != spec.renew_time,
            None => true,
        };
        if changed {
            self.observe(&holder, spec.renew_time.clone());
        }
        // The holder's own duration decides, as in client-go (it may differ from ours).
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(self.config.lease_duration);
        let seen_at = self.observed.as_ref().map(|o| o.at).unwrap_or_else(Instant::now);
        if !holder.is_empty() && holder != me && seen_at.elapsed() < duration {
            return Ok(Attempt::HeldByOther(holder));
        }
        let (acquire_time, transitions) = if holder == me {
            (spec.acquire_time.clone(), spec.lease_transitions.unwrap_or(0))
        } else {
            (Some(now.clone()), spec.lease_transitions.unwrap_or(0).saturating_add(1))
        };
        let mut lease = current;
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(me.clone()),
            lease_duration_seconds: Some(self.lease_seconds()),
            acquire_time,
            renew_time: Some(now.clone()),
            lease_transitions: Some(transitions),
            ..spec
        });
        // `replace` carries the resourceVersion read above: a compare-and-swap.
        match self
            .api
            .replace(&self.config.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                if holder != me {
                    tracing::info!(lease = %self.config.lease_name, identity = %me, previous = %holder, "took the lease");
                }
                self.observe(&me, Some(now));
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Raced),
            Err(e) => Err(e),
        }
    }

    fn observe(&mut self, holder: &str, renew_time: Option<MicroTime>) {
        self.observed = Some(Observed {
            holder: holder.to_string(),
            renew_time,
            at: Instant::now(),
        });
    }

    /// Gives the Lease up (holder cleared, 1 s duration) so a standby takes over at once.
    async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.lease_name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        lease.spec = Some(spec);
        let name = lease.name_any();
        self.api.replace(&name, &PostParams::default(), &lease).await?;
        tracing::info!(lease = %name, identity = %self.config.identity, "released the lease");
        Ok(())
    }

    /// One attempt, bounded in time so a hung request cannot stretch a renewal past the
    /// renew deadline unnoticed.
    async fn attempt(&mut self) -> Option<Attempt> {
        let bound = self.config.retry_period.max(Duration::from_secs(1));
        match tokio::time::timeout(bound, self.try_acquire_or_renew()).await {
            Ok(Ok(a)) => Some(a),
            Ok(Err(e)) => {
                tracing::debug!(lease = %self.config.lease_name, error = %e, "lease attempt failed");
                None
            }
            Err(_) => {
                tracing::debug!(lease = %self.config.lease_name, "lease attempt timed out");
                None
            }
        }
    }
}

/// Resolves when `rx` turns true (or its sender is gone).
async fn fired(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Waits `period`, less a random part of up to a fifth, so that candidates started
/// together do not stay in step.
fn jittered(period: Duration) -> Duration {
    let fifth = period / 5;
    let nanos = u64::try_from(fifth.as_nanos()).unwrap_or(u64::MAX).max(1);
    let r = u64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap_or([0; 8]));
    period - fifth + Duration::from_nanos(r % nanos)
}

/// Runs `component` whenever this candidate holds the Lease, until `shutdown` fires.
///
/// `component(client, stop)` must return soon after `stop` turns true: it is told so
/// when the Lease is lost or on shutdown (and aborted after 10 s). On shutdown a held
/// Lease is released, so a standby takes over without waiting for it to expire.
pub async fn run_elected<F, Fut>(
    client: kube::Client,
    config: ElectionConfig,
    shutdown: watch::Receiver<bool>,
    component: F,
) where
    F: Fn(kube::Client, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut elector = Elector {
        api: Api::namespaced(client.clone(), NAMESPACE),
        config,
        observed: None,
    };
    let name = elector.config.lease_name.clone();
    let identity = elector.config.identity.clone();
    loop {
        // Standing by.
        let mut last_holder = None;
        loop {
            if *shutdown.borrow() {
                return;
            }
            match elector.attempt().await {
                Some(Attempt::Held) => break,
                Some(Attempt::HeldByOther(holder)) => {
                    if last_holder.as_ref() != Some(&holder) {
                        tracing::info!(lease = %name, identity = %identity, holder = %holder, "standing by");
                        last_holder = Some(holder);
                    }
                }
                Some(Attempt::Raced) | None => {}
            }
            tokio::select! {
                () = tokio::time::sleep(jittered(elector.config.retry_period)) => {}
                () = fired(shutdown.clone()) => return,
            }
        }
        // Leading.
        tracing::info!(lease = %name, identity = %identity, "became the leader");
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut task = tokio::spawn(component(client.clone(), stop_rx));
        let mut renewed = Instant::now();
        let shutting_down = loop {
            tokio::select! {
                () = tokio::time::sleep(elector.config.retry_period) => {}
                () = fired(shutdown.clone()) => break true,
                _ = &mut task => {
                    tracing::warn!(lease = %name, "the component ended by itself; giving up the lease");
                    break true;
                }
            }
            match elector.attempt().await {
                Some(Attempt::Held) => renewed = Instant::now(),
                Some(Attempt::HeldByOther(holder)) => {
                    tracing::warn!(lease = %name, identity = %identity, holder = %holder, "lost the lease");
                    break false;
                }
                Some(Attempt::Raced) | None if renewed.elapsed() >= elector.config.renew_deadline => {
                    tracing::warn!(lease = %name, identity = %identity, "could not renew the lease in time; stopping");
                    break false;
                }
                Some(Attempt::Raced) | None => {}
            }
        };
        let _ = stop_tx.send(true);
        if !task.is_finished() && tokio::time::timeout(STOP_TIMEOUT, &mut task).await.is_err() {
            tracing::warn!(lease = %name, "the component did not stop in time; aborting it");
            task.abort();
        }
        if shutting_down {
            if let Err(e) = elector.release().await {
                tracing::debug!(lease = %name, error = %e, "could not release the lease");
            }
            return;
        }
        // Forget what was seen: the new holder must be observed afresh.
        elector.observed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_client_gos_and_valid() {
        let c = ElectionConfig::new(SCHEDULER_LEASE, "host");
        assert_eq!(c.lease_duration, Duration::from_secs(15));
        assert_eq!(c.renew_deadline, Duration::from_secs(10));
        assert_eq!(c.retry_period, Duration::from_secs(2));
        assert!(c.identity.starts_with("host_"));
        assert!(c.validate().is_ok());
        assert_ne!(c.identity, ElectionConfig::new(SCHEDULER_LEASE, "host").identity);
    }

    #[test]
    fn unsafe_timings_are_refused() {
        let mut c = ElectionConfig::new(SCHEDULER_LEASE, "host");
        c.renew_deadline = c.lease_duration;
        assert!(c.validate().unwrap_err().contains("renew deadline"));
        let mut c = ElectionConfig::new(SCHEDULER_LEASE, "host");
        c.retry_period = c.renew_deadline;
        assert!(c.validate().unwrap_err().contains("retry period"));
    }

    #[test]
    fn jitter_stays_within_a_fifth_below_the_period() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(2));
            assert!(d >= Duration::from_millis(1600) && d <= Duration::from_secs(2), "{d:?}");
        }
    }
}
