//! Container runtimes. The agent only knows this trait; the process runtime (default)
//! runs a container's command as a host process, a CRI runtime can come later.

pub mod process;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// What a runtime needs to start one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerConfig {
    /// Container name (for messages).
    pub name: String,
    /// `command` followed by `args`.
    pub argv: Vec<String>,
    /// Environment variables, in order.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub working_dir: PathBuf,
    /// File that receives stdout and stderr (appended).
    pub log_path: PathBuf,
    /// Host paths the container sees elsewhere (its volumes), in order.
    pub mounts: Vec<Mount>,
}

/// A host path bound into the container's view of the file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// What is mounted (a volume's directory, or a file or directory in it).
    pub source: PathBuf,
    /// Where the container sees it (`mountPath`).
    pub target: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code (128 + signal when killed by a signal, as shells report it).
    pub code: i32,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
}

/// Errors from a runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The container cannot be started as configured.
    #[error("{0}")]
    Config(String),
    /// Starting, signalling or waiting failed.
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

/// A running container.
pub trait Container: Send + 'static {
    /// Runtime-specific id, e.g. `process://1234`.
    fn id(&self) -> String;
    /// Waits for the container to end.
    fn wait(&mut self) -> impl Future<Output = Result<Exit, RuntimeError>> + Send;
    /// Asks the container to stop (SIGTERM).
    fn terminate(&self) -> Result<(), RuntimeError>;
    /// Stops the container now (SIGKILL).
    fn kill(&self) -> Result<(), RuntimeError>;
}

/// What a command run beside a container (an exec probe, a lifecycle hook) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    /// Its exit code, or `None` if it ran out of time and was killed.
    pub code: Option<i32>,
    /// The start of its stdout and stderr (for probe failure messages).
    pub output: String,
}

/// Starts containers.
pub trait Runtime: Send + Sync + 'static {
    /// The container handle type.
    type Container: Container;
    /// Starts a container.
    fn start(&self, config: &ContainerConfig) -> Result<Self::Container, RuntimeError>;
    /// The container `config` describes if it still runs from before the agent
    /// restarted, to follow instead of starting another.
    fn adopt(&self, config: &ContainerConfig) -> Option<Self::Container>;
    /// Stops whatever still runs from the pod directory `pod_dir` of a pod that is gone
    /// (it went while no agent was there to stop it).
    fn clean_up(&self, pod_dir: &std::path::Path);
    /// Runs `argv` in the container's environment and directory, for at most `timeout`.
    fn exec(
        &self,
        config: &ContainerConfig,
        argv: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecResult, RuntimeError>> + Send;
}
