//! A pod's volumes on this node: each in `<pod dir>/volumes/<name>` (or on the host for
//! `hostPath`), bound at the containers' `mountPath`s by the runtime.
//!
//! ConfigMap, Secret, downward API and projected volumes are written as a kubelet's
//! atomic writer writes them: the files live in a timestamped `..<time>` directory,
//! `..data` links to it, and each top-level name links through `..data`, so that an
//! update (a new directory, then one rename of the `..data` link) is seen whole or not
//! at all. They follow their sources: the ConfigMaps and Secrets they name are watched
//! (one watch per object, by name) and the pod's own labels and annotations come with
//! each update of the pod.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume, VolumeProjection,
};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::{mpsc, watch};

use crate::runtime::Mount;

/// Why a volume cannot be set up (shown as a `FailedMount` event).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MountVolume.SetUp failed for volume {volume:?} : {reason}")]
pub(crate) struct VolumeError {
    pub volume: String,
    pub reason: String,
}

fn fail(volume: &str, reason: impl Into<String>) -> VolumeError {
    VolumeError {
        volume: volume.to_string(),
        reason: reason.into(),
    }
}

/// The ConfigMaps and Secrets the pod's volumes name, as last seen by their watches:
/// `None` inside means "does not exist", a missing entry "not listed yet".
#[derive(Default, Clone)]
pub(crate) struct Sources {
    config_maps: HashMap<String, Option<ConfigMap>>,
    secrets: HashMap<String, Option<Secret>>,
}

/// The objects the pod's volumes read: (ConfigMap names, Secret names).
fn referenced(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let (mut cms, mut secrets) = (Vec::new(), Vec::new());
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if let Some(c) = &v.config_map {
            cms.push(c.name.clone());
        }
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.push(s);
        }
        for p in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(c) = &p.config_map {
                cms.push(c.name.clone());
            }
            if let Some(s) = &p.secret {
                secrets.push(s.name.clone());
            }
        }
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

/// One file of a volume: contents and mode.
type Files = BTreeMap<String, (Vec<u8>, u32)>;

/// A relative path inside a volume, refused if it could leave it.
fn safe_path(volume: &str, p: &str) -> Result<String, VolumeError> {
    let path = Path::new(p);
    let ok = !p.is_empty() && !p.starts_with("..") && path.components().all(|c| matches!(c, Component::Normal(_)));
    ok.then(|| p.to_string()).ok_or_else(|| {
        fail(
            volume,
            format!("invalid path {p:?}: must be relative and may not contain '..'"),
        )
    })
}

/// The files of keyed data (a ConfigMap's or Secret's), by `items` or every key.
fn keyed_files(
    volume: &str,
    data: Option<Vec<(String, Vec<u8>)>>,
    what: &str,
    items: Option<&Vec<KeyToPath>>,
    optional: bool,
    mode: u32,
) -> Result<Files, VolumeError> {
    let Some(data) = data else {
        return if optional {
            Ok(Files::new())
        } else {
            Err(fail(volume, format!("{what} not found")))
        };
    };
    let mut files = Files::new();
    match items {
        Some(items) if !items.is_empty() => {
            for item in items {
                match data.iter().find(|(k, _)| *k == item.key) {
                    Some((_, v)) => {
                        let m = item.mode.map(|m| m as u32).unwrap_or(mode);
                        files.insert(safe_path(volume, &item.path)?, (v.clone(), m));
                    }
                    None if optional => {}
                    None => {
                        return Err(fail(
                            volume,
                            format!("configured to use key {} of {what}, which does not exist", item.key),
                        ))
                    }
                }
            }
        }
        _ => {
            for (k, v) in data {
                files.insert(safe_path(volume, &k)?, (v, mode));
            }
        }
    }
    Ok(files)
}

/// Every key of a ConfigMap (`data` and `binaryData`) with its bytes.
pub(super) fn config_map_data(cm: &ConfigMap) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    out.extend(cm.binary_data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())));
    out
}

/// Every key of a Secret (`data`, and `stringData` if it was not folded in) with its
/// bytes.
pub(super) fn secret_data(s: &Secret) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = s.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect();
    out.extend(
        s.string_data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes())),
    );
    out
}

/// The files of downward API items.
fn downward_files(
    volume: &str,
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    node_ip: &str,
    mode: u32,
) -> Result<Files, VolumeError> {
    let mut files = Files::new();
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            super::env::field_value(pod, &f.field_path, node_ip).map_err(|e| fail(volume, e.to_string()))?
        } else if let Some(r) = &item.resource_field_ref {
            let name = r.container_name.clone().unwrap_or_default();
            let container = pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .find(|c| c.name == name)
                .cloned()
                .ok_or_else(|| fail(volume, format!("resourceFieldRef names no container {name:?}")))?;
            super::env::resource_value(pod, &container, r).map_err(|e| fail(volume, e.to_string()))?
        } else {
            continue;
        };
        let m = item.mode.map(|m| m as u32).unwrap_or(mode);
        files.insert(safe_path(volume, &item.path)?, (value.into_bytes(), m));
    }
    Ok(files)
}

/// The files of a projected volume's sources, together.
fn projected_files(
    volume: &str,
    pod: &Pod,
    projections: &[VolumeProjection],
    sources: &Sources,
    node_ip: &str,
    mode: u32,
) -> Result<Files, VolumeError> {
    let mut files = Files::new();
    for p in projections {
        if let Some(c) = &p.config_map {
            let data = known(volume, sources.config_maps.get(&c.name))?.map(config_map_data);
            let what = format!("configmap {:?}", c.name);
            files.extend(keyed_files(
                volume,
                data,
                &what,
                c.items.as_ref(),
                c.optional == Some(true),
                mode,
            )?);
        }
        if let Some(s) = &p.secret {
            let data = known(volume, sources.secrets.get(&s.name))?.map(secret_data);
            let what = format!("secret {:?}", s.name);
            files.extend(keyed_files(
                volume,
                data,
                &what,
                s.items.as_ref(),
                s.optional == Some(true),
                mode,
            )?);
        }
        if let Some(d) = &p.downward_api {
            files.extend(downward_files(
                volume,
                pod,
                d.items.as_deref().unwrap_or(&[]),
                node_ip,
                mode,
            )?);
        }
        if p.service_account_token.is_some() || p.cluster_trust_bundle.is_some() {
            return Err(fail(
                volume,
                "service account tokens and trust bundles are not projected by this agent",
            ));
        }
    }
    Ok(files)
}

/// A watched object as last seen, or an error if its watch has not listed it yet.
fn known<'a, K>(volume: &str, seen: Option<&'a Option<K>>) -> Result<Option<&'a K>, VolumeError> {
    seen.map(Option::as_ref)
        .ok_or_else(|| fail(volume, "waiting for the first list of its source"))
}

fn mode_of(default_mode: Option<i32>) -> u32 {
    default_mode.map(|m| m as u32).unwrap_or(0o644)
}

/// What one volume is: files written by the agent, a plain directory, or a host path.
enum Content {
    Files(Files),
    EmptyDir,
    Host(PathBuf),
}

fn content(v: &Volume, pod: &Pod, sources: &Sources, node_ip: &str) -> Result<Content, VolumeError> {
    let name = v.name.as_str();
    if let Some(c) = &v.config_map {
        let data = known(name, sources.config_maps.get(&c.name))?.map(config_map_data);
        let what = format!("configmap {:?}", c.name);
        let mode = mode_of(c.default_mode);
        return keyed_files(name, data, &what, c.items.as_ref(), c.optional == Some(true), mode).map(Content::Files);
    }
    if let Some(s) = &v.secret {
        let secret = s.secret_name.clone().unwrap_or_default();
        let data = known(name, sources.secrets.get(&secret))?.map(secret_data);
        let what = format!("secret {secret:?}");
        let mode = mode_of(s.default_mode);
        return keyed_files(name, data, &what, s.items.as_ref(), s.optional == Some(true), mode).map(Content::Files);
    }
    if let Some(d) = &v.downward_api {
        let items = d.items.as_deref().unwrap_or(&[]);
        return downward_files(name, pod, items, node_ip, mode_of(d.default_mode)).map(Content::Files);
    }
    if let Some(p) = &v.projected {
        let projections = p.sources.as_deref().unwrap_or(&[]);
        return projected_files(name, pod, projections, sources, node_ip, mode_of(p.default_mode)).map(Content::Files);
    }
    if v.empty_dir.is_some() {
        return Ok(Content::EmptyDir);
    }
    if let Some(h) = &v.host_path {
        let path = PathBuf::from(&h.path);
        let io = |e: std::io::Error| fail(name, format!("hostPath {}: {e}", h.path));
        match h.type_.as_deref().unwrap_or("") {
            "DirectoryOrCreate" => std::fs::create_dir_all(&path).map_err(io)?,
            "FileOrCreate" => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(io)?;
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io)?;
            }
            "Directory" if !path.is_dir() => {
                return Err(fail(
                    name,
                    format!("hostPath type check failed: {} is not a directory", h.path),
                ))
            }
            "File" if !path.is_file() => {
                return Err(fail(
                    name,
                    format!("hostPath type check failed: {} is not a file", h.path),
                ))
            }
            "Socket" | "CharDevice" | "BlockDevice" | "Directory" | "File" | "" => {}
            other => return Err(fail(name, format!("unknown hostPath type {other:?}"))),
        }
        return Ok(Content::Host(path));
    }
    Err(fail(name, "this volume type is not supported by this agent (emptyDir, configMap, secret, downwardAPI, projected and hostPath are)"))
}

/// Writes `files` into `dir` atomically (see the module doc); a no-op if they are
/// there already.
pub(crate) fn write_atomically(dir: &Path, files: &Files) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let data = dir.join("..data");
    if let Ok(current) = std::fs::read_link(&data) {
        if same_files(&dir.join(&current), files) {
            return Ok(());
        }
    }
    let stamp = k8s_openapi::jiff::Timestamp::now()
        .strftime("..%Y_%m_%d_%H_%M_%S.%f")
        .to_string();
    let fresh = dir.join(&stamp);
    std::fs::create_dir(&fresh)?;
    for (path, (bytes, mode)) in files {
        let file = fresh.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, bytes)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(*mode & 0o777))?;
    }
    let old = std::fs::read_link(&data).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, &data)?;
    // Top-level names link through `..data`; names no longer there go.
    let tops: std::collections::BTreeSet<String> = files
        .keys()
        .filter_map(|p| p.split('/').next().map(str::to_string))
        .collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(top), &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !tops.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

fn same_files(dir: &Path, files: &Files) -> bool {
    let mut count = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            return false;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            count += 1;
            let Ok(rel) = path.strip_prefix(dir) else { return false };
            let Some((bytes, mode)) = files.get(&*rel.to_string_lossy()) else {
                return false;
            };
            let same_mode = e
                .metadata()
                .is_ok_and(|m| m.permissions().mode() & 0o777 == mode & 0o777);
            if !same_mode || std::fs::read(&path).ok().as_ref() != Some(bytes) {
                return false;
            }
        }
    }
    count == files.len()
}

/// Sets up (or refreshes) every volume of the pod; their host paths by name.
pub(crate) fn render(
    pod: &Pod,
    pod_dir: &Path,
    sources: &Sources,
    node_ip: &str,
) -> Result<HashMap<String, PathBuf>, VolumeError> {
    let mut paths = HashMap::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let dir = pod_dir.join("volumes").join(&v.name);
        let path = match content(v, pod, sources, node_ip)? {
            Content::Files(files) => {
                write_atomically(&dir, &files).map_err(|e| fail(&v.name, format!("writing {}: {e}", dir.display())))?;
                dir
            }
            Content::EmptyDir => {
                std::fs::create_dir_all(&dir).map_err(|e| fail(&v.name, format!("creating {}: {e}", dir.display())))?;
                dir
            }
            Content::Host(path) => path,
        };
        paths.insert(v.name.clone(), path);
    }
    Ok(paths)
}

/// The mounts of one container, from its `volumeMounts` (`subPath` included).
pub(crate) fn mounts(container: &Container, paths: &HashMap<String, PathBuf>) -> Result<Vec<Mount>, VolumeError> {
    let mut out = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let base = paths.get(&m.name).ok_or_else(|| {
            fail(
                &m.name,
                format!("container {} mounts a volume the pod does not have", container.name),
            )
        })?;
        let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let p = base.join(safe_path(&m.name, sub)?);
                if !p.exists() {
                    std::fs::create_dir_all(&p).map_err(|e| fail(&m.name, format!("subPath {sub}: {e}")))?;
                }
                // A subPath of a written volume is the file itself, not its `..data` link.
                std::fs::canonicalize(&p).unwrap_or(p)
            }
            None => base.clone(),
        };
        out.push(Mount {
            source,
            target: PathBuf::from(&m.mount_path),
            read_only: m.read_only == Some(true),
        });
    }
    // Outer mount points first, so that nested ones land inside them.
    out.sort_by_key(|m| m.target.components().count());
    Ok(out)
}

/// A change to a watched source: its name and what it is now (`None`: gone).
enum Seen {
    ConfigMap(String, Option<ConfigMap>),
    Secret(String, Option<Secret>),
}

/// Watches the one object `name` and reports each state it takes (after a relist, the
/// listed state: present or not).
async fn watch_one<K>(api: Api<K>, name: String, tx: mpsc::Sender<Seen>, wrap: fn(String, Option<K>) -> Seen)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config).boxed();
    let mut listed = None;
    loop {
        // The pod's worker may end while the object stays quiet: stop with it.
        let e = tokio::select! {
            e = events.next() => match e {
                Some(e) => e,
                None => return,
            },
            _ = tx.closed() => return,
        };
        let seen = match e {
            Ok(watcher::Event::Init) => {
                listed = Some(None);
                continue;
            }
            Ok(watcher::Event::InitApply(o)) => {
                listed = Some(Some(o));
                continue;
            }
            Ok(watcher::Event::InitDone) => listed.take().flatten(),
            Ok(watcher::Event::Apply(o)) => Some(o),
            Ok(watcher::Event::Delete(_)) => None,
            Err(_) => continue,
        };
        if tx.send(wrap(name.clone(), seen)).await.is_err() {
            return;
        }
    }
}

/// Watches the ConfigMaps and Secrets the pod's volumes name and re-renders the volumes
/// when they or the pod change; publishes the volume paths, or why they cannot be set
/// up, on `out`. Runs until the pod worker ends.
pub(crate) async fn follow(
    client: kube::Client,
    mut pod_rx: watch::Receiver<Arc<Pod>>,
    pod_dir: PathBuf,
    node_ip: String,
    out: watch::Sender<Option<Result<HashMap<String, PathBuf>, VolumeError>>>,
) {
    let pod = pod_rx.borrow().clone();
    let ns = pod.namespace().unwrap_or_default();
    let (config_maps, secrets) = referenced(&pod);
    let (tx, mut rx) = mpsc::channel::<Seen>(64);
    for name in config_maps {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        tokio::spawn(watch_one(api, name, tx.clone(), Seen::ConfigMap));
    }
    for name in secrets {
        let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
        tokio::spawn(watch_one(api, name, tx.clone(), Seen::Secret));
    }
    drop(tx);
    let mut sources = Sources::default();
    loop {
        let pod = pod_rx.borrow_and_update().clone();
        let result = render(&pod, &pod_dir, &sources, &node_ip);
        if let Err(e) = &result {
            tracing::debug!(object = %format!("{ns}/{}", pod.name_any()), error = %e, "volume not ready");
        }
        out.send_replace(Some(result));
        tokio::select! {
            seen = rx.recv() => match seen {
                Some(Seen::ConfigMap(name, o)) => { sources.config_maps.insert(name, o); }
                Some(Seen::Secret(name, o)) => { sources.secrets.insert(name, o); }
                // No sources to follow: only the pod itself changes.
                None => if pod_rx.changed().await.is_err() { return },
            },
            changed = pod_rx.changed() => if changed.is_err() { return },
            _ = out.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMapVolumeSource, PodSpec, VolumeMount};

    fn files(entries: &[(&str, &str)]) -> Files {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), (v.as_bytes().to_vec(), 0o644)))
            .collect()
    }

    #[test]
    fn atomic_writes_swap_the_data_link() {
        let dir = tempfile::tempdir().unwrap();
        let v = dir.path().join("v");
        write_atomically(&v, &files(&[("a", "1"), ("sub/b", "2")])).unwrap();
        assert_eq!(std::fs::read_to_string(v.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(v.join("sub/b")).unwrap(), "2");
        assert_eq!(std::fs::read_link(v.join("a")).unwrap(), Path::new("..data/a"));
        let first = std::fs::read_link(v.join("..data")).unwrap();
        // Unchanged: nothing is rewritten.
        write_atomically(&v, &files(&[("a", "1"), ("sub/b", "2")])).unwrap();
        assert_eq!(std::fs::read_link(v.join("..data")).unwrap(), first);
        // Changed: a new directory, the old one and the dropped key gone.
        write_atomically(&v, &files(&[("a", "one")])).unwrap();
        assert_eq!(std::fs::read_to_string(v.join("a")).unwrap(), "one");
        assert!(!v.join("sub").exists());
        assert!(!v.join(&first).exists());
    }

    fn pod_with(volume: Volume) -> Pod {
        Pod {
            spec: Some(PodSpec {
                volumes: Some(vec![volume]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn config_map_volumes_need_their_source_unless_optional() {
        let dir = tempfile::tempdir().unwrap();
        let mut volume = Volume {
            name: "cfg".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "settings".into(),
                items: Some(vec![KeyToPath {
                    key: "greeting".into(),
                    path: "conf/greeting.txt".into(),
                    mode: Some(0o600),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut sources = Sources::default();
        let err = render(&pod_with(volume.clone()), dir.path(), &sources, "ip").unwrap_err();
        assert!(err.reason.contains("waiting"), "{err}");
        sources.config_maps.insert("settings".into(), None);
        let err = render(&pod_with(volume.clone()), dir.path(), &sources, "ip").unwrap_err();
        assert_eq!(
            err.to_string(),
            "MountVolume.SetUp failed for volume \"cfg\" : configmap \"settings\" not found"
        );
        let cm = ConfigMap {
            data: Some([("greeting".to_string(), "hello".to_string())].into()),
            ..Default::default()
        };
        sources.config_maps.insert("settings".into(), Some(cm));
        let paths = render(&pod_with(volume.clone()), dir.path(), &sources, "ip").unwrap();
        let file = paths["cfg"].join("conf/greeting.txt");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "hello");
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        // Optional and absent: an empty volume.
        if let Some(c) = volume.config_map.as_mut() {
            c.optional = Some(true);
        }
        sources.config_maps.insert("settings".into(), None);
        assert!(render(&pod_with(volume), dir.path(), &sources, "ip").is_ok());
    }

    #[test]
    fn paths_may_not_leave_the_volume_and_mounts_go_outer_first() {
        assert!(safe_path("v", "../etc/passwd").is_err());
        assert!(safe_path("v", "/etc/passwd").is_err());
        assert!(safe_path("v", "a/../../b").is_err());
        assert!(safe_path("v", "a/b").is_ok());
        let c = Container {
            name: "c".into(),
            volume_mounts: Some(vec![
                VolumeMount {
                    name: "v".into(),
                    mount_path: "/srv/app/data".into(),
                    ..Default::default()
                },
                VolumeMount {
                    name: "v".into(),
                    mount_path: "/srv".into(),
                    read_only: Some(true),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let paths = HashMap::from([("v".to_string(), dir.path().to_path_buf())]);
        let m = mounts(&c, &paths).unwrap();
        assert_eq!(m[0].target, Path::new("/srv"));
        assert!(m[0].read_only);
        assert_eq!(m[1].target, Path::new("/srv/app/data"));
        let missing = HashMap::new();
        assert!(mounts(&c, &missing).is_err());
    }
}
