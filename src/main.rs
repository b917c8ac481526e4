//! `kairn`: one binary for the control plane, the node agent and the Git verbs.

mod client;
mod commands;
mod examples;
mod logging;
mod shutdown;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Kairn: a Kubernetes-style cluster whose desired state lives in Git.
#[derive(Debug, Parser)]
#[command(name = "kairn", version, about)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = logging::Format::Text)]
    log_format: logging::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a control plane and a node in one process, syncing a Git repository.
    Up(commands::up::UpArgs),
    /// Run a control-plane member (store, API server, scheduler, controllers, reconciler).
    Server(commands::server::ServerArgs),
    /// Run a scheduler apart from the API servers (one of several elects itself active).
    Scheduler(commands::components::SchedulerArgs),
    /// Run a controller manager apart from the API servers (one elects itself active).
    ControllerManager(commands::components::ControllerManagerArgs),
    /// Run a GitOps reconciler apart from the API servers (one elects itself active).
    Reconciler(commands::components::ReconcilerArgs),
    /// Run a node agent against an API server.
    Agent(commands::agent::AgentArgs),
    /// Show objects: `kairn get pods`, `kairn get deploy web -o yaml`.
    Get(commands::get::GetArgs),
    /// Show what the next sync would change (exit 1 when there are differences).
    Diff(commands::diff::DiffArgs),
    /// Show each Application's source, sync, health, drift and last error.
    Status(commands::status::StatusArgs),
    /// Sync an Application now, optionally to another revision or as a dry run.
    Sync(commands::sync::SyncArgs),
    /// List an Application's syncs, or show one in full.
    History(commands::history::HistoryArgs),
    /// Roll back by writing a revert commit on the Application's branch.
    Rollback(commands::rollback::RollbackArgs),
    /// Show who changed what, when, and from which commit.
    Audit(commands::audit::AuditArgs),
    /// List the store's members, or add or remove one.
    Member(commands::member::MemberArgs),
    /// Run a benchmark on a cluster of its own: `kairn bench api`.
    Bench(commands::bench::BenchArgs),
}

/// mimalloc instead of glibc's malloc: the store and the API allocate many small,
/// short-lived buffers from several threads, where glibc's arenas spent a tenth of the
/// CPU of a 3-member write benchmark (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up(args) => commands::up::run(args).await,
            Command::Server(args) => commands::server::run(args).await,
            Command::Scheduler(args) => {
                let config = args.config();
                commands::components::run_standalone(
                    commands::components::Component::Scheduler,
                    args.standalone,
                    None,
                    |o| o.scheduler = config,
                )
                .await
            }
            Command::ControllerManager(args) => {
                let config = args.config();
                commands::components::run_standalone(
                    commands::components::Component::Controllers,
                    args.standalone,
                    None,
                    |o| o.controllers = config,
                )
                .await
            }
            Command::Reconciler(args) => {
                commands::components::run_standalone(
                    commands::components::Component::Reconciler,
                    args.standalone,
                    Some(args.data_dir),
                    |_| {},
                )
                .await
            }
            Command::Agent(args) => commands::agent::run(args).await,
            Command::Get(args) => commands::get::run(args).await,
            Command::Diff(args) => commands::diff::run(args).await,
            Command::Status(args) => commands::status::run(args).await,
            Command::Sync(args) => commands::sync::run(args).await,
            Command::History(args) => commands::history::run(args).await,
            Command::Rollback(args) => commands::rollback::run(args).await,
            Command::Audit(args) => commands::audit::run(args).await,
            Command::Member(args) => commands::member::run(args).await,
            Command::Bench(args) => commands::bench::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
