//! Name references: after renames (prefix, suffix, hash), every field that names another
//! object of the result — a Deployment's ConfigMap volume, a RoleBinding's roleRef, … —
//! is rewritten to that object's final name, as kustomize's `nameref` filter does.

use std::collections::BTreeSet;

use serde_json::Value;

use super::fieldspec::{FieldSpec, Leaf};
use super::resource::{ResId, Resource};
use crate::manifest::ManifestError;
use crate::render::file_error;

/// `(group, version, kind)`, "" for any.
type Gvk = (&'static str, &'static str, &'static str);
/// `(group, version, kind, path)` of a referrer field.
type Referrer = (&'static str, &'static str, &'static str, &'static str);

/// What the rewrite needs to know of a possible referral.
struct Candidate {
    prev_ids: Vec<ResId>,
    cur: ResId,
    /// Raw `metadata.namespace`.
    namespace: String,
}

/// Rewrites every name reference of the referrer fields kustomize knows.
pub fn fix(resources: &mut [Resource]) -> Result<(), Vec<ManifestError>> {
    let all: Vec<Candidate> = resources
        .iter()
        .map(|r| Candidate {
            prev_ids: r.prev_ids.clone(),
            cur: r.cur_id(),
            namespace: r.namespace().to_string(),
        })
        .collect();
    let mut errors = Vec::new();
    for r in resources.iter_mut() {
        let referrer = r.cur_id();
        let candidates = could_be_referenced(&referrer, &r.object, &all);
        for ((group, version, kind), specs) in NAME_REFERENCES {
            for (g, v, k, path) in specs.iter() {
                let spec = FieldSpec::new(g, v, k, path);
                if !spec.matches(&r.object) {
                    continue;
                }
                let role_ref = role_ref_gvk(path, &r.object);
                let referral = Referral {
                    gvk: (group, version, kind),
                    role_ref,
                    referrer: &referrer,
                    candidates: &candidates,
                };
                let result = spec.apply(&mut r.object, Leaf::None, &mut |node| referral.set(node));
                if let Err(e) = result {
                    errors.push(file_error(
                        &r.file,
                        r.doc,
                        &path.replace('/', "."),
                        format!("updating name reference: {e}"),
                    ));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// kustomize's `SubsetThatCouldBeReferencedByResource`.
fn could_be_referenced<'a>(referrer: &ResId, object: &Value, all: &'a [Candidate]) -> Vec<&'a Candidate> {
    if is_cluster(referrer) {
        return all.iter().collect();
    }
    let mut binding_namespaces = BTreeSet::new();
    if referrer.kind == "RoleBinding" || referrer.kind == "ClusterRoleBinding" {
        for s in object.get("subjects").and_then(Value::as_array).into_iter().flatten() {
            if s.get("kind").and_then(Value::as_str) == Some("ServiceAccount") {
                if let Some(ns) = s.get("namespace").and_then(Value::as_str) {
                    binding_namespaces.insert(ns.to_string());
                }
            }
        }
    }
    all.iter()
        .filter(|c| {
            is_cluster(&c.cur) || c.cur.namespace == referrer.namespace || binding_namespaces.contains(&c.namespace)
        })
        .collect()
}

fn is_cluster(id: &ResId) -> bool {
    id.namespace == "_non_namespaceable_"
}

/// A roleRef's `(apiGroup, kind)`, which a roleRef name must also match.
fn role_ref_gvk(path: &str, object: &Value) -> Option<(String, String)> {
    if !path.ends_with("roleRef/name") {
        return None;
    }
    let group = object.pointer("/roleRef/apiGroup")?.as_str()?;
    let kind = object.pointer("/roleRef/kind")?.as_str()?;
    Some((group.to_string(), kind.to_string()))
}

/// One referrer field's rewrite.
struct Referral<'a> {
    gvk: (&'a str, &'a str, &'a str),
    role_ref: Option<(String, String)>,
    referrer: &'a ResId,
    candidates: &'a [&'a Candidate],
}

impl Referral<'_> {
    fn set(&self, node: &mut Value) -> Result<(), String> {
        match node {
            Value::Null => Ok(()),
            Value::String(_) => self.set_scalar(node),
            Value::Object(_) => self.set_mapping(node),
            Value::Array(items) => {
                for item in items.iter_mut() {
                    match item {
                        Value::String(_) => self.set_scalar(item)?,
                        Value::Object(_) => self.set_mapping(item)?,
                        _ => {}
                    }
                }
                Ok(())
            }
            _ => Err("node must be a scalar, sequence or map".into()),
        }
    }

    fn set_scalar(&self, node: &mut Value) -> Result<(), String> {
        let Some(old) = node.as_str() else { return Ok(()) };
        let all: Vec<&Candidate> = self.candidates.to_vec();
        if let Some(c) = self.select(old, all, false)? {
            *node = Value::String(c.cur.name.clone());
        }
        Ok(())
    }

    /// A `{name, namespace}` map (RoleBinding subjects, webhook services).
    fn set_mapping(&self, node: &mut Value) -> Result<(), String> {
        let Some(map) = node.as_object_mut() else { return Ok(()) };
        let Some(old) = map.get("name").and_then(Value::as_str).map(str::to_string) else {
            return Err("path config error; no 'name' field in node".into());
        };
        let candidates: Vec<&Candidate> = match map.get("namespace").and_then(Value::as_str) {
            None => self.candidates.to_vec(),
            Some(ns) => {
                let original: Vec<&Candidate> = self
                    .candidates
                    .iter()
                    .copied()
                    .filter(|c| original_namespace(c) == ns)
                    .collect();
                if original.is_empty() {
                    self.candidates.iter().copied().filter(|c| c.namespace == ns).collect()
                } else {
                    original
                }
            }
        };
        let Some(c) = self.select(&old, candidates, true)? else {
            return Ok(());
        };
        if c.cur.name == old && c.namespace.is_empty() {
            return Ok(());
        }
        map.insert("name".into(), Value::String(c.cur.name.clone()));
        if !c.namespace.is_empty() {
            map.insert("namespace".into(), Value::String(c.namespace.clone()));
        }
        Ok(())
    }

    /// kustomize's `selectReferral`.
    fn select<'c>(
        &self,
        old: &str,
        candidates: Vec<&'c Candidate>,
        with_namespace: bool,
    ) -> Result<Option<&'c Candidate>, String> {
        let (g, v, k) = self.gvk;
        let picked: Vec<&Candidate> = candidates
            .into_iter()
            .filter(|c| c.prev_ids.iter().any(|id| id.name == old))
            .filter(|c| c.prev_ids.iter().any(|id| id.gvk_selected(g, v, k)))
            .filter(|c| match &self.role_ref {
                Some((group, kind)) => c.prev_ids.iter().any(|id| id.gvk_selected(group, "", kind)),
                None => true,
            })
            .filter(|c| {
                is_cluster(self.referrer)
                    || is_cluster(&c.cur)
                    || c.cur.kind == "ServiceAccount"
                    || c.cur.namespace == self.referrer.namespace
            })
            .collect();
        match picked.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            [first, rest @ ..] => {
                let same = rest
                    .iter()
                    .all(|c| c.cur.name == first.cur.name && (!with_namespace || c.namespace == first.namespace));
                if same {
                    Ok(Some(first))
                } else {
                    let ids: Vec<String> = picked.iter().map(|c| c.cur.describe()).collect();
                    Err(format!(
                        "found multiple possible referrals for {old:?}: {}",
                        ids.join(", ")
                    ))
                }
            }
        }
    }
}

/// The raw namespace an object had first (kustomize groups by the original namespace).
fn original_namespace(c: &Candidate) -> String {
    match c.prev_ids.first() {
        // Previous ids store effective namespaces; "default" was most likely unset.
        Some(id) => id.namespace.clone(),
        None => c.namespace.clone(),
    }
}

/// kustomize's default `nameReference` configuration (`api/internal/konfig/builtinpluginconsts/namereference.go`):
/// for each referral kind `(group, version, kind)`, the referrer fields `(group, version, kind, path)`.
const NAME_REFERENCES: &[(Gvk, &[Referrer])] = &[
    (
        ("", "", "Deployment"),
        &[("", "", "HorizontalPodAutoscaler", "spec/scaleTargetRef/name")],
    ),
    (
        ("", "", "ReplicationController"),
        &[("", "", "HorizontalPodAutoscaler", "spec/scaleTargetRef/name")],
    ),
    (
        ("", "", "ReplicaSet"),
        &[("", "", "HorizontalPodAutoscaler", "spec/scaleTargetRef/name")],
    ),
    (
        ("", "", "StatefulSet"),
        &[("", "", "HorizontalPodAutoscaler", "spec/scaleTargetRef/name")],
    ),
    (
        ("", "v1", "ConfigMap"),
        &[
            ("", "v1", "Pod", "spec/volumes/configMap/name"),
            ("", "v1", "Pod", "spec/containers/env/valueFrom/configMapKeyRef/name"),
            (
                "",
                "v1",
                "Pod",
                "spec/initContainers/env/valueFrom/configMapKeyRef/name",
            ),
            ("", "v1", "Pod", "spec/containers/envFrom/configMapRef/name"),
            ("", "v1", "Pod", "spec/initContainers/envFrom/configMapRef/name"),
            ("", "v1", "Pod", "spec/volumes/projected/sources/configMap/name"),
            ("", "", "PodTemplate", "template/spec/volumes/configMap/name"),
            (
                "",
                "",
                "PodTemplate",
                "template/spec/containers/env/valueFrom/configMapKeyRef/name",
            ),
            (
                "",
                "",
                "PodTemplate",
                "template/spec/initContainers/env/valueFrom/configMapKeyRef/name",
            ),
            (
                "",
                "",
                "PodTemplate",
                "template/spec/containers/envFrom/configMapRef/name",
            ),
            (
                "",
                "",
                "PodTemplate",
                "template/spec/initContainers/envFrom/configMapRef/name",
            ),
            (
                "",
                "",
                "PodTemplate",
                "template/spec/volumes/projected/sources/configMap/name",
            ),
            ("", "", "Deployment", "spec/template/spec/volumes/configMap/name"),
            (
                "",
                "",
                "Deployment",
                "spec/template/spec/containers/env/valueFrom/configMapKeyRef/name",
            ),
            (
                "",
                "",
                "Deployment",
                "spec/template/spec/initContainers/env/valueFrom/configMapKeyRef/name",
            ),
            (
                "",
                "",
                "Deployment",
                "spec/template/spec/containers/envFrom/configMapRef/name",
            ),
            (
                "",
                "",
                "Deployment",
                "spec/template/spec/initContainers/envFrom/configMapRef/name",
            ),
            (
                "",
                "",
                "Deployment",
                "spec/template/spec/volumes/projected/sources/configMap/name",
            ),
            ("", "", "ReplicaSet", "spec/template/spec/volumes/configMap/name"),
            (
                "",
                "",
                "ReplicaSet",
                "spec/template/spec/containers/env/valueFrom/configMapKeyRef/name",
            ),
            (
                "",
                "",
                "ReplicaSet",
                "spec/template/spec/initContainers/env/valueFrom/configMapKeyRef/name",
            ),
            (
                "",
                "",
                "ReplicaSet",
                "spec/template/spec/containers/envFrom/configMapRef/name",
            ),
            (
                "",
                "",
                "ReplicaSet",
                "spec/template/spec/initContainers/envFrom/configMapRef/name",
            ),
            (
                "",
                "",
                "ReplicaSet",
                "spec/template/spec/volumes/projected/sources/configMap/name",
            ),
            ("", "", "DaemonSet", "spec/template/spec/volumes/configMap/name"),
            (
                "",
                "",
                "DaemonSet",
                "spec/template/spec/containers/env/valueFrom/configMapKeyRef/name",
            ),
            (
                "",
                "",
                "DaemonSet",
                "spec/template/spec/initContainers/env/valueFrom/configMapKeyRef/name",
            ),
            (
                "",
                "",
                "DaemonSet",
                "spec/template/spec/containers/envFrom/configMapRef/name",
            ),
            (
                "",
                "",
                "DaemonSet",
                "spec/template/spec/initContainers/envFrom/configMapRef/name",
            ),
            (
                "",
                "",
                "DaemonSet",
                "spec/template/spec/volumes/projected/sources/configMap/name",
            ),
            ("", "", "StatefulSet", "spec/template/spec/volumes/configMap/name"),
            (
                "",
                "",
                "StatefulSet",
                "spec/template/spec/containers/env/valueFrom/configMapKeyRef/name",
            ),
            (
                "",
                "",
                "StatefulSet",
                "spec/template/spec/initContainers/env/valueFrom/configMapKeyRef/name",
            ),
            (
                "",
                "",
                "StatefulSet",
                "spec/template/spec/containers/envFrom/configMapRef/name",
            ),
            (
                "",
                "",
                "StatefulSet",
                "spec/template/spec/initContainers/envFrom/configMapRef/name",
            ),
            (
                "",
                "",
                "StatefulSet",
                "spec/template/spec/volumes/projected/sources/configMap/name",
            ),
            ("", "", "Job", "spec/template/spec/volumes/configMap/name"),
            (
                "",
                "",
                "Job",
                "spec/template/spec/containers/env/valueFrom/configMapKeyRef/name",
            ),
            (
                "",
                "",
                "Job",
                "spec/template/spec/initContainers/env/valueFrom/configMapKeyRef/name",
            ),
            ("", "", "Job", "spec/template/spec/containers/envFrom/configMapRef/name"),
            (
                "",
                "",
                "Job",
                "spec/template/spec/initContainers/envFrom/configMapRef/name",
            ),
            (
                "",
                "",
                "Job",
                "spec/template/spec/volumes/projected/sources/configMap/name",
            ),
            (
                "",
                "",
                "CronJob",
                "spec/jobTemplate/spec/template/spec/volumes/configMap/name",
            ),
            (
                "",
                "",
                "CronJob",
                "spec/jobTemplate/spec/template/spec/volumes/projected/sources/configMap/name",
            ),
            (
                "",
                "",
                "CronJob",
                "spec/jobTemplate/spec/template/spec/containers/env/valueFrom/configMapKeyRef/name",
            ),
            (
                "",
                "",
                "CronJob",
                "spec/jobTemplate/spec/template/spec/initContainers/env/valueFrom/configMapKeyRef/name",
            ),
            (
                "",
                "",
                "CronJob",
                "spec/jobTemplate/spec/template/spec/containers/envFrom/configMapRef/name",
            ),
            (
                "",
                "",
                "CronJob",
                "spec/jobTemplate/spec/template/spec/initContainers/envFrom/configMapRef/name",
            ),
            ("", "", "Node", "spec/configSource/configMap"),
            ("", "", "Role", "rules/resourceNames"),
            ("", "", "ClusterRole", "rules/resourceNames"),
            (
                "",
                "",
                "Ingress",
                "metadata/annotations/nginx.ingress.kubernetes.io\\/fastcgi-params-configmap",
            ),
        ],
    ),
    (
        ("", "v1", "Secret"),
        &[
            ("", "v1", "Pod", "spec/volumes/secret/secretName"),
            ("", "v1", "Pod", "spec/containers/env/valueFrom/secretKeyRef/name"),
            ("", "v1", "Pod", "spec/initContainers/env/valueFrom/secretKeyRef/name"),
            ("", "v1", "Pod", "spec/containers/envFrom/secretRef/name"),
            ("", "v1", "Pod", "spec/initContainers/envFrom/secretRef/name"),
            ("", "v1", "Pod", "spec/imagePullSecrets/name"),
            ("", "v1", "Pod", "spec/volumes/projected/sources/secret/name"),
            ("", "", "PodTemplate", "template/spec/volumes/secret/secretName"),
            (
                "",
                "",
                "PodTemplate",
                "template/spec/containers/env/valueFrom/secretKeyRef/name",
            ),
            (
                "",
                "",
                "PodTemplate",
                "template/spec/initContainers/env/valueFrom/secretKeyRef/name",
            ),
            ("", "", "PodTemplate", "template/spec/containers/envFrom/secretRef/name"),
            (
                "",
                "",
                "PodTemplate",
                "template/spec/initContainers/envFrom/secretRef/name",
            ),
            ("", "", "PodTemplate", "template/spec/imagePullSecrets/name"),
            (
                "",
                "",
                "PodTemplate",
                "template/spec/volumes/projected/sources/secret/name",
            ),
            ("", "", "Deployment", "spec/template/spec/volumes/secret/secretName"),
            (
                "",
                "",
                "Deployment",
                "spec/template/spec/containers/env/valueFrom/secretKeyRef/name",
            ),
            (
                "",
                "",
                "Deployment",
                "spec/template/spec/initContainers/env/valueFrom/secretKeyRef/name",
            ),
            (
                "",
                "",
                "Deployment",
                "spec/template/spec/containers/envFrom/secretRef/name",
            ),
            (
                "",
                "",
                "Deployment",
                "spec/template/spec/initContainers/envFrom/secretRef/name",
            ),
            ("", "", "Deployment", "spec/template/spec/imagePullSecrets/name"),
            (
                "",
                "",
                "Deployment",
                "spec/template/spec/volumes/projected/sources/secret/name",
            ),
            ("", "", "ReplicaSet", "spec/template/spec/volumes/secret/secretName"),
            (
                "",
                "",
                "ReplicaSet",
                "spec/template/spec/containers/env/valueFrom/secretKeyRef/name",
            ),
            (
                "",
                "",
                "ReplicaSet",
                "spec/template/spec/initContainers/env/valueFrom/secretKeyRef/name",
            ),
            (
                "",
                "",
                "ReplicaSet",
                "spec/template/spec/containers/envFrom/secretRef/name",
            ),
            (
                "",
                "",
                "ReplicaSet",
                "spec/template/spec/initContainers/envFrom/secretRef/name",
            ),
            ("", "", "ReplicaSet", "spec/template/spec/imagePullSecrets/name"),
            (
                "",
                "",
                "ReplicaSet",
                "spec/template/spec/volumes/projected/sources/secret/name",
            ),
            ("", "", "DaemonSet", "spec/template/spec/volumes/secret/secretName"),
            (
                "",
                "",
                "DaemonSet",
                "spec/template/spec/containers/env/valueFrom/secretKeyRef/name",
            ),
            (
                "",
                "",
                "DaemonSet",
                "spec/template/spec/initContainers/env/valueFrom/secretKeyRef/name",
            ),
            (
                "",
                "",
                "DaemonSet",
                "spec/template/spec/containers/envFrom/secretRef/name",
            ),
            (
                "",
                "",
                "DaemonSet",
                "spec/template/spec/initContainers/envFrom/secretRef/name",
            ),
            ("", "", "DaemonSet", "spec/template/spec/imagePullSecrets/name"),
            (
                "",
                "",
                "DaemonSet",
                "spec/template/spec/volumes/projected/sources/secret/name",
            ),
            ("", "", "StatefulSet", "spec/template/spec/volumes/secret/secretName"),
            (
                "",
                "",
                "StatefulSet",
                "spec/template/spec/containers/env/valueFrom/secretKeyRef/name",
            ),
            (
                "",
                "",
                "StatefulSet",
                "spec/template/spec/initContainers/env/valueFrom/secretKeyRef/name",
            ),
            (
                "",
                "",
                "StatefulSet",
                "spec/template/spec/containers/envFrom/secretRef/name",
            ),
            (
                "",
                "",
                "StatefulSet",
                "spec/template/spec/initContainers/envFrom/secretRef/name",
            ),
            ("", "", "StatefulSet", "spec/template/spec/imagePullSecrets/name"),
            (
                "",
                "",
                "StatefulSet",
                "spec/template/spec/volumes/projected/sources/secret/name",
            ),
            ("", "", "Job", "spec/template/spec/volumes/secret/secretName"),
            (
                "",
                "",
                "Job",
                "spec/template/spec/containers/env/valueFrom/secretKeyRef/name",
            ),
            (
                "",
                "",
                "Job",
                "spec/template/spec/initContainers/env/valueFrom/secretKeyRef/name",
            ),
            ("", "", "Job", "spec/template/spec/containers/envFrom/secretRef/name"),
            (
                "",
                "",
                "Job",
                "spec/template/spec/initContainers/envFrom/secretRef/name",
            ),
            ("", "", "Job", "spec/template/spec/imagePullSecrets/name"),
            (
                "",
                "",
                "Job",
                "spec/template/spec/volumes/projected/sources/secret/name",
            ),
            (
                "",
                "",
                "CronJob",
                "spec/jobTemplate/spec/template/spec/volumes/secret/secretName",
            ),
            (
                "",
                "",
                "CronJob",
                "spec/jobTemplate/spec/template/spec/volumes/projected/sources/secret/name",
            ),
            (
                "",
                "",
                "CronJob",
                "spec/jobTemplate/spec/template/spec/containers/env/valueFrom/secretKeyRef/name",
            ),
            (
                "",
                "",
                "CronJob",
                "spec/jobTemplate/spec/template/spec/initContainers/env/valueFrom/secretKeyRef/name",
            ),
            (
                "",
                "",
                "CronJob",
                "spec/jobTemplate/spec/template/spec/containers/envFrom/secretRef/name",
            ),
            (
                "",
                "",
                "CronJob",
                "spec/jobTemplate/spec/template/spec/initContainers/envFrom/secretRef/name",
            ),
            (
                "",
                "",
                "CronJob",
                "spec/jobTemplate/spec/template/spec/imagePullSecrets/name",
            ),
            ("", "", "Ingress", "spec/tls/secretName"),
            (
                "",
                "",
                "Ingress",
                "metadata/annotations/ingress.kubernetes.io\\/auth-secret",
            ),
            (
                "",
                "",
                "Ingress",
                "metadata/annotations/nginx.ingress.kubernetes.io\\/auth-secret",
            ),
            (
                "",
                "",
                "Ingress",
                "metadata/annotations/nginx.ingress.kubernetes.io\\/auth-tls-secret",
            ),
            ("", "", "ServiceAccount", "imagePullSecrets/name"),
            ("", "", "StorageClass", "parameters/secretName"),
            ("", "", "StorageClass", "parameters/adminSecretName"),
            ("", "", "StorageClass", "parameters/userSecretName"),
            ("", "", "StorageClass", "parameters/secretRef"),
            ("", "", "Role", "rules/resourceNames"),
            ("", "", "ClusterRole", "rules/resourceNames"),
            (
                "serving.knative.dev",
                "v1",
                "Service",
                "spec/template/spec/containers/env/valueFrom/secretKeyRef/name",
            ),
            ("", "", "PersistentVolume", "spec/azureFile/secretName"),
        ],
    ),
    (
        ("", "v1", "Service"),
        &[
            ("apps", "", "StatefulSet", "spec/serviceName"),
            ("", "", "Ingress", "spec/rules/http/paths/backend/serviceName"),
            ("", "", "Ingress", "spec/backend/serviceName"),
            ("", "", "Ingress", "spec/rules/http/paths/backend/service/name"),
            ("", "", "Ingress", "spec/defaultBackend/service/name"),
            ("apiregistration.k8s.io", "", "APIService", "spec/service/name"),
            (
                "admissionregistration.k8s.io",
                "",
                "ValidatingWebhookConfiguration",
                "webhooks/clientConfig/service",
            ),
            (
                "admissionregistration.k8s.io",
                "",
                "MutatingWebhookConfiguration",
                "webhooks/clientConfig/service",
            ),
        ],
    ),
    (
        ("rbac.authorization.k8s.io", "", "Role"),
        &[("rbac.authorization.k8s.io", "", "RoleBinding", "roleRef/name")],
    ),
    (
        ("rbac.authorization.k8s.io", "", "ClusterRole"),
        &[
            ("rbac.authorization.k8s.io", "", "RoleBinding", "roleRef/name"),
            ("rbac.authorization.k8s.io", "", "ClusterRoleBinding", "roleRef/name"),
        ],
    ),
    (
        ("", "v1", "ServiceAccount"),
        &[
            ("rbac.authorization.k8s.io", "", "RoleBinding", "subjects"),
            ("rbac.authorization.k8s.io", "", "ClusterRoleBinding", "subjects"),
            ("", "", "Pod", "spec/serviceAccountName"),
            ("", "", "StatefulSet", "spec/template/spec/serviceAccountName"),
            ("", "", "Deployment", "spec/template/spec/serviceAccountName"),
            ("", "", "ReplicationController", "spec/template/spec/serviceAccountName"),
            (
                "",
                "",
                "CronJob",
                "spec/jobTemplate/spec/template/spec/serviceAccountName",
            ),
            ("", "", "Job", "spec/template/spec/serviceAccountName"),
            ("", "", "DaemonSet", "spec/template/spec/serviceAccountName"),
        ],
    ),
    (
        ("", "v1", "PersistentVolumeClaim"),
        &[
            ("", "", "Pod", "spec/volumes/persistentVolumeClaim/claimName"),
            (
                "",
                "",
                "StatefulSet",
                "spec/template/spec/volumes/persistentVolumeClaim/claimName",
            ),
            (
                "",
                "",
                "Deployment",
                "spec/template/spec/volumes/persistentVolumeClaim/claimName",
            ),
            (
                "",
                "",
                "ReplicationController",
                "spec/template/spec/volumes/persistentVolumeClaim/claimName",
            ),
            (
                "",
                "",
                "CronJob",
                "spec/jobTemplate/spec/template/spec/volumes/persistentVolumeClaim/claimName",
            ),
            (
                "",
                "",
                "Job",
                "spec/template/spec/volumes/persistentVolumeClaim/claimName",
            ),
            (
                "",
                "",
                "DaemonSet",
                "spec/template/spec/volumes/persistentVolumeClaim/claimName",
            ),
        ],
    ),
    (
        ("", "v1", "PersistentVolume"),
        &[
            ("", "", "PersistentVolumeClaim", "spec/volumeName"),
            ("", "", "ClusterRole", "rules/resourceNames"),
        ],
    ),
    (
        ("storage.k8s.io", "v1", "StorageClass"),
        &[
            ("", "", "PersistentVolume", "spec/storageClassName"),
            ("", "", "PersistentVolumeClaim", "spec/storageClassName"),
            ("", "", "StatefulSet", "spec/volumeClaimTemplates/spec/storageClassName"),
        ],
    ),
    (
        ("scheduling.k8s.io", "v1", "PriorityClass"),
        &[
            ("", "", "Pod", "spec/priorityClassName"),
            ("", "", "StatefulSet", "spec/template/spec/priorityClassName"),
            ("", "", "Deployment", "spec/template/spec/priorityClassName"),
            ("", "", "ReplicationController", "spec/template/spec/priorityClassName"),
            (
                "",
                "",
                "CronJob",
                "spec/jobTemplate/spec/template/spec/priorityClassName",
            ),
            ("", "", "Job", "spec/template/spec/priorityClassName"),
            ("", "", "DaemonSet", "spec/template/spec/priorityClassName"),
        ],
    ),
    (
        ("networking.k8s.io/v1", "v1", "IngressClass"),
        &[("", "", "Ingress", "spec/ingressClassName")],
    ),
    (
        ("admissionregistration.k8s.io", "", "ValidatingAdmissionPolicy"),
        &[(
            "admissionregistration.k8s.io",
            "",
            "ValidatingAdmissionPolicyBinding",
            "spec/policyName",
        )],
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;
    use serde_json::json;

    fn resource(object: Value) -> Resource {
        Resource::from_manifest(Manifest {
            file: "f.yaml".into(),
            doc: 0,
            object,
        })
    }

    #[test]
    fn renamed_config_maps_and_service_accounts_are_followed() {
        let mut cm = resource(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}}));
        cm.store_previous_id();
        cm.set_name("p-cfg-abc");
        let mut sa = resource(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa"}}));
        sa.store_previous_id();
        sa.set_name("p-sa");
        let deploy = resource(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"template": {"spec": {
                "serviceAccountName": "sa",
                "volumes": [{"name": "v", "configMap": {"name": "cfg"}}, {"name": "w", "configMap": {"name": "other"}}],
                "containers": [{"name": "c", "envFrom": [{"configMapRef": {"name": "cfg"}}],
                                "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}}]}]
            }}}
        }));
        let binding = resource(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "b"},
            "subjects": [{"kind": "ServiceAccount", "name": "sa"}]
        }));
        let mut list = vec![cm, sa, deploy, binding];
        fix(&mut list).expect("fixes");
        let spec = &list[2].object["spec"]["template"]["spec"];
        assert_eq!(spec["serviceAccountName"], "p-sa");
        assert_eq!(spec["volumes"][0]["configMap"]["name"], "p-cfg-abc");
        assert_eq!(spec["volumes"][1]["configMap"]["name"], "other");
        assert_eq!(spec["containers"][0]["envFrom"][0]["configMapRef"]["name"], "p-cfg-abc");
        assert_eq!(
            spec["containers"][0]["env"][0]["valueFrom"]["configMapKeyRef"]["name"],
            "p-cfg-abc"
        );
        assert_eq!(list[3].object["subjects"][0]["name"], "p-sa");
    }

    #[test]
    fn references_stay_within_the_namespace() {
        let mut cm =
            resource(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "a"}}));
        cm.store_previous_id();
        cm.set_name("x-cfg");
        let pod = resource(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "b"},
            "spec": {"volumes": [{"name": "v", "configMap": {"name": "cfg"}}]}
        }));
        let mut list = vec![cm, pod];
        fix(&mut list).expect("fixes");
        assert_eq!(list[1].object["spec"]["volumes"][0]["configMap"]["name"], "cfg");
    }
}
