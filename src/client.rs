//! What every client verb shares: finding the kubeconfig, connecting, output options.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Output formats of client verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Columns, as kubectl prints them.
    Table,
    /// Columns including the wide ones.
    Wide,
    /// YAML.
    Yaml,
    /// JSON.
    Json,
}

/// Flags common to every client verb.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Kubeconfig to use (else $KUBECONFIG, else ./.kairn/kubeconfig, else ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace.
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Never color output (color is used only on a terminal anyway).
    #[arg(long, global = true)]
    pub no_color: bool,
    /// API server addresses to use instead of the kubeconfig's (`https://HOST:PORT,...`,
    /// several members' APIs: a request goes to the next when one cannot be reached).
    #[arg(short = 's', long = "server", global = true, value_delimiter = ',')]
    pub servers: Vec<String>,
}

impl ClientArgs {
    /// Whether to color stdout.
    pub fn color(&self) -> bool {
        use std::io::IsTerminal;
        !self.no_color && std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
    }

    /// The kubeconfig path, by the conventions' order of precedence.
    pub fn kubeconfig_path(&self) -> PathBuf {
        if let Some(p) = &self.kubeconfig {
            return p.clone();
        }
        if let Some(p) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        let local = PathBuf::from(".kairn/kubeconfig");
        if local.exists() {
            return local;
        }
        std::env::var_os("HOME")
            .map(|h| Path::new(&h).join(".kube/config"))
            .unwrap_or(local)
    }

    /// Connects to the API server the kubeconfig names.
    pub async fn connect(&self) -> anyhow::Result<kube::Client> {
        let path = self.kubeconfig_path();
        let kubeconfig = kube::config::Kubeconfig::read_from(&path)
            .with_context(|| format!("reading kubeconfig {}", path.display()))?;
        // The kubeconfigs a member writes for its components name their users.
        let user = kubeconfig
            .contexts
            .iter()
            .find(|c| kubeconfig.current_context.as_ref() == Some(&c.name))
            .and_then(|c| c.context.as_ref()?.user.clone())
            .unwrap_or_default();
        let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await
            .with_context(|| format!("loading kubeconfig {}", path.display()))?;
        let agent = kairn_cluster::api::auth::user_agent(&user);
        config.headers.push((
            http::header::USER_AGENT,
            http::HeaderValue::from_str(&agent).with_context(|| format!("User-Agent {agent:?}"))?,
        ));
        if self.servers.is_empty() {
            return kube::Client::try_from(config).context("creating the API client");
        }
        let configs = kairn_cluster::failover::configs(&config, &self.servers).map_err(anyhow::Error::msg)?;
        kairn_cluster::failover::client(configs).context("creating the API client")
    }
}

/// An API error as the server words it (kube-rs' own message repeats the whole Status).
pub fn server_error(e: kube::Error) -> anyhow::Error {
    match e {
        kube::Error::Api(status) => anyhow::anyhow!("{}", status.message),
        other => other.into(),
    }
}

/// Writes a kubeconfig for `url` whose context is named `kairn`, trusting the cluster CA
/// `ca_pem` and authenticating with `token` (readable by its owner only: it holds a
/// credential).
pub fn write_kubeconfig(path: &Path, url: &str, ca_pem: &str, token: &str) -> anyhow::Result<()> {
    write_kubeconfig_for(path, url, ca_pem, "kairn-admin", token)
}

/// As [`write_kubeconfig`], naming the kubeconfig's user `user` (a component's identity).
pub fn write_kubeconfig_for(path: &Path, url: &str, ca_pem: &str, user: &str, token: &str) -> anyhow::Result<()> {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let content = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kairn\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\ncontexts:\n- name: kairn\n  context:\n    cluster: kairn\n    user: \"{user}\"\n    namespace: default\ncurrent-context: kairn\nusers:\n- name: \"{user}\"\n  user:\n    token: {token}\n"
    );
    // Written aside and renamed, so a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    kairn_cluster::api::auth::write_private(&tmp, &content).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// The host's name (lower case), the default Node name and the stem of leader identities.
pub fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim().to_lowercase();
    if name.is_empty() {
        "kairn-node".into()
    } else {
        name
    }
}
