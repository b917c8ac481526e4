//! A container's environment as a kubelet builds it: `envFrom` first, then `env` in
//! order, `$(VAR)` references expanded against what came before, with values taken from
//! ConfigMaps, Secrets, the pod's own fields (the downward API) and the container's
//! resources. A missing reference that is not optional is an error the container waits
//! on (`CreateContainerConfigError`).

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, ResourceFieldSelector, Secret};
use kube::{Api, ResourceExt};

/// Why a container's environment cannot be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EnvError {
    /// A ConfigMap or Secret named by the pod does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    /// The object exists but lacks the key.
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    NoKey {
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
    },
    /// A `fieldRef` this agent does not know.
    #[error("unsupported fieldPath {0:?}")]
    FieldPath(String),
    /// A `resourceFieldRef` this agent does not know, or a bad divisor.
    #[error("unsupported resource {0:?}")]
    Resource(String),
    /// The API could not be asked.
    #[error("reading {kind} {name:?}: {source}")]
    Api {
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
}

/// What values can come from besides the pod itself.
pub(crate) struct Sources<'a> {
    pub client: &'a kube::Client,
    pub node_ip: &'a str,
}

/// The ConfigMaps and Secrets read for one container, each at most once.
#[derive(Default)]
struct Fetched {
    config_maps: HashMap<String, Option<ConfigMap>>,
    secrets: HashMap<String, Option<Secret>>,
}

impl Fetched {
    async fn config_map(
        &mut self,
        client: &kube::Client,
        ns: &str,
        name: &str,
    ) -> Result<Option<&ConfigMap>, EnvError> {
        if !self.config_maps.contains_key(name) {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            let cm = api.get_opt(name).await.map_err(|source| EnvError::Api {
                kind: "configmap",
                name: name.to_string(),
                source,
            })?;
            self.config_maps.insert(name.to_string(), cm);
        }
        Ok(self.config_maps.get(name).and_then(Option::as_ref))
    }

    async fn secret(&mut self, client: &kube::Client, ns: &str, name: &str) -> Result<Option<&Secret>, EnvError> {
        if !self.secrets.contains_key(name) {
            let api: Api<Secret> = Api::namespaced(client.clone(), ns);
            let s = api.get_opt(name).await.map_err(|source| EnvError::Api {
                kind: "secret",
                name: name.to_string(),
                source,
            })?;
            self.secrets.insert(name.to_string(), s);
        }
        Ok(self.secrets.get(name).and_then(Option::as_ref))
    }
}

/// Bytes as an environment value (invalid UTF-8 replaced).
fn text(entries: Vec<(String, Vec<u8>)>) -> Vec<(String, String)> {
    entries
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            )
        })
        .collect()
}

/// Every key and value of a ConfigMap (`data` and `binaryData`).
fn config_map_entries(cm: &ConfigMap) -> Vec<(String, String)> {
    text(super::volumes::config_map_data(cm))
}

/// Every key and value of a Secret (`data`, and `stringData` if it was not folded in).
fn secret_entries(s: &Secret) -> Vec<(String, String)> {
    text(super::volumes::secret_data(s))
}

/// Whether `name` may be an environment variable (Kubernetes' C_IDENTIFIER-like rule:
/// printable, no `=`).
fn valid_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('=') && name.bytes().all(|b| b.is_ascii_graphic())
}

/// Expands `$(NAME)` from `vars` and `$$` to `$`, as Kubernetes expands `env` values,
/// `command` and `args`; unknown references stay as written.
pub(crate) fn expand(s: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match vars(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// `metadata.labels['key']` -> `key`.
fn subscript<'a>(path: &'a str, field: &str) -> Option<&'a str> {
    let inner = path.strip_prefix(field)?.strip_prefix("['")?.strip_suffix("']")?;
    Some(inner)
}

/// A downward-API field of the pod, as `fieldRef.fieldPath` names it.
pub(crate) fn field_value(pod: &Pod, path: &str, node_ip: &str) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let map_line = |m: Option<&std::collections::BTreeMap<String, String>>| {
        m.into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok(match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => map_line(meta.labels.as_ref()),
        "metadata.annotations" => map_line(meta.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        // The process runtime shares the node's network: the pod's IP is the node's.
        "status.hostIP" | "status.podIP" | "status.hostIPs" | "status.podIPs" => node_ip.to_string(),
        p => {
            if let Some(k) = subscript(p, "metadata.labels") {
                meta.labels.as_ref().and_then(|l| l.get(k)).cloned().unwrap_or_default()
            } else if let Some(k) = subscript(p, "metadata.annotations") {
                meta.annotations
                    .as_ref()
                    .and_then(|a| a.get(k))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(EnvError::FieldPath(p.to_string()));
            }
        }
    })
}

/// A container's resource as `resourceFieldRef` asks for it: rounded up to the divisor,
/// and the node's allocatable when the container sets no limit.
pub(crate) fn resource_value(pod: &Pod, own: &Container, r: &ResourceFieldSelector) -> Result<String, EnvError> {
    let bad = || EnvError::Resource(r.resource.clone());
    let container = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => pod
            .spec
            .as_ref()
            .and_then(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
                    .find(|c| c.name == name)
            })
            .ok_or_else(bad)?,
        None => own,
    };
    let (which, resource) = r.resource.split_once('.').ok_or_else(bad)?;
    let resources = container.resources.as_ref();
    let set = match which {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => return Err(bad()),
    }
    .and_then(|m| m.get(resource))
    .map(|q| q.0.clone());
    let divisor = r.divisor.as_ref().map(|d| d.0.as_str()).unwrap_or("1");
    let divisor = kairn_quantity::millis(divisor).filter(|d| *d > 0).ok_or_else(bad)?;
    let millis: i128 = match (resource, set) {
        (_, Some(q)) => kairn_quantity::millis(&q).ok_or_else(bad)?,
        // Unset limits default to what the node can give; unset requests to zero.
        ("cpu", None) if which == "limits" => {
            std::thread::available_parallelism()
                .map(|n| n.get() as i128)
                .unwrap_or(1)
                * 1000
        }
        ("memory", None) if which == "limits" => crate::node_status::memory_kib() as i128 * 1024 * 1000,
        ("cpu" | "memory" | "ephemeral-storage", None) => 0,
        _ => return Err(bad()),
    };
    // Rounded up, and at least 1 for cpu (as kubelet's ExtractContainerResourceValue).
    let mut value = (millis + divisor - 1) / divisor;
    if resource == "cpu" && value == 0 && millis > 0 {
        value = 1;
    }
    Ok(value.to_string())
}

/// The container's environment after `base` (PATH, HOSTNAME, ...): `envFrom`, then `env`.
pub(crate) async fn resolve(
    sources: &Sources<'_>,
    pod: &Pod,
    container: &Container,
    base: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, EnvError> {
    let ns = pod.namespace().unwrap_or_default();
    let mut fetched = Fetched::default();
    let mut env = base;
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(name, _)| *name != k);
        env.push((k, v));
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let entries = if let Some(r) = &from.config_map_ref {
            match fetched.config_map(sources.client, &ns, &r.name).await? {
                Some(cm) => config_map_entries(cm),
                None if r.optional == Some(true) => continue,
                None => {
                    return Err(EnvError::NotFound {
                        kind: "configmap",
                        name: r.name.clone(),
                    })
                }
            }
        } else if let Some(r) = &from.secret_ref {
            match fetched.secret(sources.client, &ns, &r.name).await? {
                Some(s) => secret_entries(s),
                None if r.optional == Some(true) => continue,
                None => {
                    return Err(EnvError::NotFound {
                        kind: "secret",
                        name: r.name.clone(),
                    })
                }
            }
        } else {
            continue;
        };
        for (k, v) in entries {
            let name = format!("{prefix}{k}");
            // As a kubelet does: keys that cannot be variables are skipped, not fatal.
            if valid_env_name(&name) {
                set(&mut env, name, v);
            } else {
                tracing::debug!(object = %format!("{ns}/{}", pod.name_any()), key = %name, "skipping an envFrom key that is not a valid variable name");
            }
        }
    }
    for e in container.env.iter().flatten() {
        let value = if let Some(from) = &e.value_from {
            if let Some(r) = &from.config_map_key_ref {
                let cm = fetched.config_map(sources.client, &ns, &r.name).await?;
                match cm.and_then(|cm| config_map_entries(cm).into_iter().find(|(k, _)| *k == r.key)) {
                    Some((_, v)) => v,
                    None if r.optional == Some(true) => continue,
                    None if cm.is_none() => {
                        return Err(EnvError::NotFound {
                            kind: "configmap",
                            name: r.name.clone(),
                        })
                    }
                    None => {
                        return Err(EnvError::NoKey {
                            kind: "ConfigMap",
                            namespace: ns,
                            name: r.name.clone(),
                            key: r.key.clone(),
                        })
                    }
                }
            } else if let Some(r) = &from.secret_key_ref {
                let s = fetched.secret(sources.client, &ns, &r.name).await?;
                match s.and_then(|s| secret_entries(s).into_iter().find(|(k, _)| *k == r.key)) {
                    Some((_, v)) => v,
                    None if r.optional == Some(true) => continue,
                    None if s.is_none() => {
                        return Err(EnvError::NotFound {
                            kind: "secret",
                            name: r.name.clone(),
                        })
                    }
                    None => {
                        return Err(EnvError::NoKey {
                            kind: "Secret",
                            namespace: ns,
                            name: r.name.clone(),
                            key: r.key.clone(),
                        })
                    }
                }
            } else if let Some(f) = &from.field_ref {
                field_value(pod, &f.field_path, sources.node_ip)?
            } else if let Some(r) = &from.resource_field_ref {
                resource_value(pod, container, r)?
            } else {
                String::new()
            }
        } else {
            let known = env.clone();
            expand(e.value.as_deref().unwrap_or(""), &|name| {
                known.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone())
            })
        };
        set(&mut env, e.name.clone(), value);
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    #[test]
    fn expansion_follows_kubernetes() {
        let vars = |n: &str| match n {
            "A" => Some("1".to_string()),
            "B" => Some("two".to_string()),
            _ => None,
        };
        let cases = [
            ("$(A)-$(B)", "1-two"),
            ("$(C)", "$(C)"),
            ("$$(A)", "$(A)"),
            ("cost: $5", "cost: $5"),
            ("$(A", "$(A"),
            ("x$", "x$"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, &vars), want, "{input}");
        }
    }

    fn pod() -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("web-1".into());
        p.metadata.namespace = Some("shop".into());
        p.metadata.uid = Some("u-1".into());
        p.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        p.spec = Some(PodSpec {
            node_name: Some("n1".into()),
            ..Default::default()
        });
        p
    }

    #[test]
    fn downward_api_fields() {
        let p = pod();
        let cases = [
            ("metadata.name", "web-1"),
            ("metadata.namespace", "shop"),
            ("metadata.uid", "u-1"),
            ("metadata.labels['app']", "web"),
            ("metadata.labels['none']", ""),
            ("metadata.labels", "app=\"web\""),
            ("spec.nodeName", "n1"),
            ("status.podIP", "10.0.0.5"),
        ];
        for (path, want) in cases {
            assert_eq!(field_value(&p, path, "10.0.0.5").unwrap(), want, "{path}");
        }
        assert!(matches!(field_value(&p, "spec.bogus", ""), Err(EnvError::FieldPath(_))));
    }

    #[test]
    fn resource_fields_round_up_to_the_divisor() {
        let p = pod();
        let c = Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                limits: Some(
                    [
                        ("cpu".to_string(), Quantity("1500m".into())),
                        ("memory".to_string(), Quantity("64Mi".into())),
                    ]
                    .into(),
                ),
                requests: Some([("cpu".to_string(), Quantity("250m".into()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let field = |resource: &str, divisor: Option<&str>| ResourceFieldSelector {
            resource: resource.into(),
            divisor: divisor.map(|d| Quantity(d.into())),
            container_name: None,
        };
        let cases = [
            (field("limits.cpu", None), "2"),
            (field("limits.cpu", Some("1m")), "1500"),
            (field("requests.cpu", None), "1"),
            (field("limits.memory", None), "67108864"),
            (field("limits.memory", Some("1Mi")), "64"),
            (field("requests.memory", None), "0"),
        ];
        for (f, want) in cases {
            assert_eq!(resource_value(&p, &c, &f).unwrap(), want, "{f:?}");
        }
        assert!(resource_value(&p, &c, &field("limits.gpu", None)).is_err());
        let node_cpus = std::thread::available_parallelism().unwrap().get().to_string();
        let bare = Container::default();
        assert_eq!(
            resource_value(&p, &bare, &field("limits.cpu", None)).unwrap(),
            node_cpus
        );
    }
}
