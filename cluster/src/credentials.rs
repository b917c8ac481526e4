//! The credentials every member of one cluster shares: the CA that issues each API
//! server's certificate, and the static token file. With them shared, one kubeconfig
//! (CA and token) works against every member, and clients can fail over between them.
//!
//! The first member to start keeps its own in the store; every later member adopts the
//! cluster's, keeping local users the cluster does not know yet (a node agent started
//! beside a member) and adding them for all. Each member then issues its own serving
//! certificate from the shared CA, for its own address.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::{Compare, Expect, Op, Store, StoreError, Txn};

/// Where the shared credentials live in the store.
pub const KEY: &str = "/kairn/cluster/credentials";

/// Why the credentials could not be shared.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// The store could not be read or written.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The stored credentials are not readable.
    #[error("the cluster credentials in the store are unreadable: {0}")]
    Decode(serde_json::Error),
}

/// The files a member keeps its credentials in.
#[derive(Debug, Clone)]
pub struct Files {
    /// The CA certificate (PEM).
    pub ca_crt: PathBuf,
    /// The CA key (PEM).
    pub ca_key: PathBuf,
    /// The static token file.
    pub tokens: PathBuf,
}

impl Files {
    /// The standard layout: `<pki>/ca.crt`, `<pki>/ca.key`, and the token file.
    pub fn new(pki_dir: &Path, tokens: &Path) -> Self {
        Files {
            ca_crt: pki_dir.join("ca.crt"),
            ca_key: pki_dir.join("ca.key"),
            tokens: tokens.to_path_buf(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Shared {
    ca_crt: String,
    ca_key: String,
    tokens: String,
}

fn read(path: &Path) -> Result<String, CredentialsError> {
    std::fs::read_to_string(path).map_err(|source| CredentialsError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn write(path: &Path, content: &str) -> Result<(), CredentialsError> {
    crate::api::auth::write_private(path, content).map_err(|source| CredentialsError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// The user a token file line is for (its second field).
fn user_of(line: &str) -> Option<&str> {
    line.split(',').nth(1).map(str::trim).filter(|u| !u.is_empty())
}

/// The cluster's token lines, then local lines for users the cluster does not know.
fn merge_tokens(cluster: &str, local: &str) -> String {
    let known: BTreeSet<&str> = cluster.lines().filter_map(user_of).collect();
    let mut out = cluster.trim_end().to_string();
    for line in local.lines().filter(|l| user_of(l).is_some_and(|u| !known.contains(u))) {
        out.push('\n');
        out.push_str(line);
    }
    out.push('\n');
    out
}

/// Makes this member's credential files the cluster's (see the module doc); returns
/// whether a local file changed. The local files must exist.
pub async fn share(store: &Store, files: &Files) -> Result<bool, CredentialsError> {
    let local = Shared {
        ca_crt: read(&files.ca_crt)?,
        ca_key: read(&files.ca_key)?,
        tokens: read(&files.tokens)?,
    };
    loop {
        let stored = store.get(KEY).await?;
        let (wanted, expect) = match &stored {
            Some(kv) => {
                let cluster: Shared = serde_json::from_slice(&kv.value).map_err(CredentialsError::Decode)?;
                let tokens = merge_tokens(&cluster.tokens, &local.tokens);
                (Shared { tokens, ..cluster }, Expect::ModRevision(kv.mod_revision))
            }
            None => (local.clone(), Expect::Absent),
        };
        let unchanged = stored
            .as_ref()
            .and_then(|kv| serde_json::from_slice::<Shared>(&kv.value).ok())
            .is_some_and(|s| s == wanted);
        if !unchanged {
            let value = serde_json::to_vec(&wanted).map_err(CredentialsError::Decode)?;
            let txn = Txn {
                compares: vec![Compare {
                    key: KEY.into(),
                    expect,
                }],
                ops: vec![Op::put(KEY, value)],
            };
            // Another member changed them meanwhile: start over from theirs.
            if !store.txn(txn).await?.succeeded {
                continue;
            }
        }
        let mut changed = false;
        for (path, content, old) in [
            (&files.ca_crt, &wanted.ca_crt, &local.ca_crt),
            (&files.ca_key, &wanted.ca_key, &local.ca_key),
            (&files.tokens, &wanted.tokens, &local.tokens),
        ] {
            if content != old {
                write(path, content)?;
                changed = true;
            }
        }
        if changed {
            tracing::info!(node = store.node_id(), "adopted the cluster's CA and tokens");
        }
        return Ok(changed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_users_unknown_to_the_cluster_are_kept_and_the_cluster_wins_for_the_rest() {
        let cluster = "t1,kairn-admin,u1,\"system:masters\"\nt2,system:kube-scheduler,u2,\"\"\n";
        let local = "x1,kairn-admin,v1,\"system:masters\"\nx3,system:node:a,v3,\"system:nodes\"\n";
        let merged = merge_tokens(cluster, local);
        assert_eq!(
            merged,
            "t1,kairn-admin,u1,\"system:masters\"\nt2,system:kube-scheduler,u2,\"\"\nx3,system:node:a,v3,\"system:nodes\"\n"
        );
        assert_eq!(merge_tokens(&merged, local), merged, "merging again changes nothing");
    }
}
