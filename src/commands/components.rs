//! The control-plane components that act through the API (scheduler, controller manager,
//! reconciler): run inside `kairn server` or apart, as `kairn scheduler`,
//! `kairn controller-manager` and `kairn reconciler`. Wherever they run, each elects its
//! one active instance through a Lease in `kube-system`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use kairn_cluster::api::auth;
use kairn_cluster::election::{self, ElectionConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::{self, ClientArgs};
use crate::shutdown;

/// A component `kairn server --components` may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Component {
    /// The store member and its API server (always on in `kairn server`).
    Api,
    /// The scheduler.
    Scheduler,
    /// The controller manager (Deployments, ReplicaSets, garbage collection, namespaces).
    Controllers,
    /// The GitOps reconciler.
    Reconciler,
}

/// What a component acting through the API is known by.
pub struct Identity {
    /// The API user it acts as.
    pub user: &'static str,
    /// The Lease its instances elect their leader through.
    pub lease: &'static str,
    /// The stem of the kubeconfig a member writes for it (`<stem>.kubeconfig`).
    pub kubeconfig: &'static str,
}

impl Component {
    /// Its user, Lease and kubeconfig; `None` for the API server itself.
    pub fn identity(self) -> Option<Identity> {
        let (user, lease, kubeconfig) = match self {
            Component::Api => return None,
            Component::Scheduler => (auth::SCHEDULER, election::SCHEDULER_LEASE, "scheduler"),
            Component::Controllers => (
                auth::CONTROLLER_MANAGER,
                election::CONTROLLER_MANAGER_LEASE,
                "controller-manager",
            ),
            Component::Reconciler => (auth::RECONCILER, election::RECONCILER_LEASE, "reconciler"),
        };
        Some(Identity {
            user,
            lease,
            kubeconfig,
        })
    }
}

/// Every component, the default of `--components`.
pub const ALL: &[Component] = &[
    Component::Api,
    Component::Scheduler,
    Component::Controllers,
    Component::Reconciler,
];

/// Leader-election flags, named as kube-scheduler's and kube-controller-manager's.
#[derive(Debug, Clone, clap::Args)]
pub struct LeaderElectArgs {
    /// Elect one active instance through a Lease (turn off only when exactly one runs).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// How long a standby waits after the holder's last renewal before taking over.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub leader_elect_lease_duration: Duration,
    /// How long the holder keeps acting without renewing (shorter than the duration).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub leader_elect_renew_deadline: Duration,
    /// How often candidates try to take, and the holder to renew, the Lease.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub leader_elect_retry_period: Duration,
}

/// Parses `15s`, `500ms`, `1m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 15s, 500ms, 1m)"))?;
    let seconds = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

impl LeaderElectArgs {
    /// The election of `lease` for a candidate on `host`, checked for safe timings.
    pub fn config(&self, lease: &str, host: &str) -> anyhow::Result<ElectionConfig> {
        let mut config = ElectionConfig::new(lease, host);
        config.lease_duration = self.leader_elect_lease_duration;
        config.renew_deadline = self.leader_elect_renew_deadline;
        config.retry_period = self.leader_elect_retry_period;
        config.validate().map_err(anyhow::Error::msg)?;
        Ok(config)
    }
}

/// What components need beyond a client: the reconciler's data directory and the
/// scheduler's settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the reconciler keeps its Git mirrors.
    pub data_dir: PathBuf,
    /// The scheduler's name and tuning.
    pub scheduler: kairn_cluster::scheduler::Config,
    /// The controller manager's tuning.
    pub controllers: kairn_cluster::controllers::Config,
}

impl Options {
    /// Defaults with `data_dir`.
    pub fn new(data_dir: PathBuf) -> Options {
        Options {
            data_dir,
            scheduler: kairn_cluster::scheduler::Config::default(),
            controllers: kairn_cluster::controllers::Config::default(),
        }
    }
}

/// Starts `component` (not `Api`) on `client`, under leader election unless turned off.
pub fn spawn(
    component: Component,
    client: kube::Client,
    election: &LeaderElectArgs,
    host: &str,
    options: Options,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    let Some(identity) = component.identity() else {
        return Ok(None);
    };
    // A scheduler with its own name elects its leader apart from the default one's, as
    // a second kube-scheduler profile with its own lease name does.
    let lease = match component {
        Component::Scheduler if options.scheduler.name != kairn_cluster::scheduler::DEFAULT_SCHEDULER => {
            options.scheduler.name.clone()
        }
        _ => identity.lease.to_string(),
    };
    let run = move |client: kube::Client, stop: watch::Receiver<bool>| {
        let options = options.clone();
        async move {
            match component {
                Component::Api => {}
                Component::Scheduler => kairn_cluster::scheduler::run_with(client, options.scheduler, stop).await,
                Component::Controllers => kairn_cluster::controllers::run_with(client, options.controllers, stop).await,
                Component::Reconciler => {
                    kairn_reconciler::run(
                        client,
                        kairn_reconciler::Config {
                            data_dir: options.data_dir,
                        },
                        stop,
                    )
                    .await
                }
            }
        }
    };
    if !election.leader_elect {
        return Ok(Some(tokio::spawn(run(client, shutdown))));
    }
    let config = election.config(&lease, host)?;
    Ok(Some(tokio::spawn(election::run_elected(client, config, shutdown, run))))
}

/// Flags of a standalone component.
#[derive(Debug, clap::Args)]
pub struct StandaloneArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub election: LeaderElectArgs,
}

/// `kairn reconciler` flags.
#[derive(Debug, clap::Args)]
pub struct ReconcilerArgs {
    #[command(flatten)]
    pub standalone: StandaloneArgs,
    /// Data directory (the Git mirrors).
    #[arg(long, default_value = ".kairn")]
    pub data_dir: PathBuf,
}

/// `kairn scheduler` flags.
#[derive(Debug, clap::Args)]
pub struct SchedulerArgs {
    #[command(flatten)]
    pub standalone: StandaloneArgs,
    /// The scheduler's name: it places the pods whose `spec.schedulerName` says so (a
    /// name of its own also elects its leader through a Lease of that name).
    #[arg(long, default_value = kairn_cluster::scheduler::DEFAULT_SCHEDULER)]
    pub name: String,
    /// Percentage of nodes to find fitting before choosing among them (0: adaptive, as
    /// kube-scheduler's `percentageOfNodesToScore`).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub percentage_of_nodes_to_score: u32,
    /// Bindings written at once.
    #[arg(long, default_value_t = 128)]
    pub parallel_binds: usize,
}

impl SchedulerArgs {
    /// The scheduler's configuration.
    pub fn config(&self) -> kairn_cluster::scheduler::Config {
        kairn_cluster::scheduler::Config {
            name: self.name.clone(),
            percentage_of_nodes_to_score: self.percentage_of_nodes_to_score,
            parallel_binds: self.parallel_binds,
        }
    }
}

/// `kairn controller-manager` flags.
#[derive(Debug, clap::Args)]
pub struct ControllerManagerArgs {
    #[command(flatten)]
    pub standalone: StandaloneArgs,
    /// How long a node's Lease may go unrenewed before the node is unreachable: tainted
    /// `node.kubernetes.io/unreachable`, its pods evicted after their toleration.
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub node_monitor_grace_period: Duration,
}

impl ControllerManagerArgs {
    /// The controller manager's configuration.
    pub fn config(&self) -> kairn_cluster::controllers::Config {
        kairn_cluster::controllers::Config {
            node_lifecycle: kairn_cluster::controllers::node_lifecycle::Config {
                grace_period: self.node_monitor_grace_period,
            },
        }
    }
}

/// Runs one component apart from the API servers until a signal.
pub async fn run_standalone(
    component: Component,
    args: StandaloneArgs,
    data_dir: Option<PathBuf>,
    tune: impl FnOnce(&mut Options),
) -> anyhow::Result<ExitCode> {
    let client = args.client.connect().await?;
    let stop = shutdown::on_signal();
    // Only the reconciler keeps files (its Git mirrors).
    let data_dir = match data_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.canonicalize().context("resolving the data directory")?
        }
        None => PathBuf::from("."),
    };
    let mut options = Options::new(data_dir);
    tune(&mut options);
    let task = spawn(component, client, &args.election, &client::hostname(), options, stop)?;
    if let Some(task) = task {
        task.await?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_kubernetes_flags_write_them() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("15x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("s").is_err());
    }
}
