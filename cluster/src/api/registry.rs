//! The kinds the API server serves: one entry per resource, naming everything the server
//! needs to know of it (names for discovery, its type, defaults, validation, columns).
//!
//! Objects travel as JSON; each entry's `normalize` round-trips an object through its
//! typed k8s-openapi (or Kairn) struct, which is the validation of field types and
//! names, and drops unknown fields as kube-apiserver's pruning does. What a kind does
//! beyond its type lives in `resources/`.

use std::fmt::Write as _;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use schemars::SchemaGenerator;

use super::error::Cause;
use super::resources::{self, application, core as misc, pod, policy, service, storage, workloads, Column};
use super::schema::schema_name_of;
use super::validation::{Errors, NameRule};
use crate::kinds::Application;
use k8s_openapi::api::{
    apps::v1 as apps, batch::v1 as batch, coordination::v1 as coordination, core::v1 as core,
    discovery::v1 as discovery, networking::v1 as networking, scheduling::v1 as scheduling,
};

/// Type-checks an object through its typed struct: the normalized object and the paths
/// of the fields the type does not know, or the field that does not fit.
pub type Normalize = fn(Value) -> Result<(Value, Vec<String>), Cause>;

/// A served resource.
#[derive(Debug)]
pub struct ResourceInfo {
    /// API group ("" for core).
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// Kind, e.g. `Pod`.
    pub kind: &'static str,
    /// URL segment, e.g. `pods`.
    pub plural: &'static str,
    /// Singular name, e.g. `pod`.
    pub singular: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: &'static [&'static str],
    /// Categories (`all` makes `kubectl get all` include the kind).
    pub categories: &'static [&'static str],
    /// Subresources served (`status`, `scale`, `binding`, `log`, `eviction`, `finalize`).
    pub subresources: &'static [&'static str],
    /// How object names are checked.
    pub name_rule: NameRule,
    /// Type-checks and normalizes an object of this kind; also returns the paths of
    /// fields the type does not know (dropped from the normalized object).
    pub normalize: Normalize,
    /// Registers the kind's schema with a generator and returns its definition name.
    pub schema: fn(&mut SchemaGenerator) -> String,
    /// Fills the defaults Kubernetes applies on every write.
    pub defaults: fn(&mut Value),
    /// Sets what the server owns on a new object (initial status, generated fields).
    pub prepare_create: fn(&mut Value),
    /// Carries over from the live object what a replacement may leave out.
    pub prepare_update: fn(&mut Value, &Value),
    /// Semantic validation of a new object, or of a change to `old`.
    pub validate: fn(&Value, Option<&Value>, &mut Errors),
    /// `kubectl get` columns.
    pub columns: &'static [Column],
    /// One row's cells, in the order of `columns`.
    pub cells: fn(&Value) -> Vec<Value>,
}

/// What an entry has unless it says otherwise.
const BASE: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "",
    plural: "",
    singular: "",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    name_rule: NameRule::Subdomain,
    normalize: typed::<Value>,
    schema: schema_name_of::<Value>,
    defaults: resources::no_defaults,
    prepare_create: resources::no_defaults,
    prepare_update: |_, _| {},
    validate: resources::no_validation,
    columns: resources::NAME_AGE,
    cells: resources::name_age,
};

/// A registry entry for the typed struct `$ty`: its normalization and schema come from it.
macro_rules! resource {
    ($ty:ty { $($field:ident: $value:expr),* $(,)? }) => {
        ResourceInfo {
            normalize: typed::<$ty>,
            schema: schema_name_of::<$ty>,
            $($field: $value,)*
            ..BASE
        }
    };
}

impl ResourceInfo {
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The store key prefix of this resource, optionally within a namespace.
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        let group = if self.group.is_empty() { "core" } else { self.group };
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{group}/{}/{ns}/", self.plural),
            _ => format!("/registry/{group}/{}/", self.plural),
        }
    }

    /// The store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.prefix(namespace))
    }

    /// `Kind.group` as Kubernetes names a kind in messages (`Deployment.apps`, `Pod`).
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.to_string()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// `plural.group` as Kubernetes names a resource in messages (`deployments.apps`).
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether the `status` subresource exists (then writes to the object keep status).
    pub fn has_status(&self) -> bool {
        self.subresources.contains(&"status")
    }
}

/// Round-trips `value` through the typed struct `K`, naming the failing field.
fn typed<K: DeserializeOwned + Serialize>(value: Value) -> Result<(Value, Vec<String>), Cause> {
    // Decoded from a borrow (no copy of the object), and without tracking the path: this
    // runs on every write, and only a failure needs to name the field.
    let typed: K = match K::deserialize(&value) {
        Ok(typed) => typed,
        Err(plain) => {
            return Err(match serde_path_to_error::deserialize::<_, K>(&value) {
                Err(e) => {
                    let path = e.path().to_string();
                    Cause::invalid(
                        if path == "." { String::new() } else { path },
                        e.into_inner().to_string(),
                    )
                }
                Ok(_) => Cause::invalid("", plain.to_string()),
            })
        }
    };
    let normalized = serde_json::to_value(typed).map_err(|e| Cause::invalid("", e.to_string()))?;
    let mut unknown = Vec::new();
    unknown_fields(&value, &normalized, &mut String::new(), &mut unknown);
    Ok((normalized, unknown))
}

/// Paths of keys set in `input` that the typed round trip dropped: fields the type does
/// not have (a typo such as `protectionDoamin`, or a field of another version). `path`
/// is built in place and copied only for a dropped key (this walks every write).
fn unknown_fields(input: &Value, output: &Value, path: &mut String, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                let len = path.len();
                if len > 0 {
                    path.push('.');
                }
                path.push_str(k);
                match o.get(k) {
                    Some(ov) => unknown_fields(v, ov, path, out),
                    None if !v.is_null() => out.push(path.clone()),
                    None => {}
                }
                path.truncate(len);
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (iv, ov)) in i.iter().zip(o).enumerate() {
                let len = path.len();
                let _ = write!(path, "[{n}]");
                unknown_fields(iv, ov, path, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// Every resource the server serves, in discovery order.
pub static RESOURCES: &[ResourceInfo] = &[
    resource!(core::Namespace {
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        namespaced: false,
        short_names: &["ns"],
        subresources: &["status", "finalize"],
        name_rule: NameRule::Label,
        prepare_create: misc::namespace_prepare_create,
        prepare_update: misc::namespace_prepare_update,
        columns: misc::NAMESPACE_COLUMNS,
        cells: misc::namespace_cells,
    }),
    resource!(core::Node {
        kind: "Node",
        plural: "nodes",
        singular: "node",
        namespaced: false,
        short_names: &["no"],
        subresources: &["status"],
        validate: misc::validate_node,
        columns: misc::NODE_COLUMNS,
        cells: misc::node_cells,
    }),
    resource!(core::Pod {
        kind: "Pod",
        plural: "pods",
        singular: "pod",
        short_names: &["po"],
        categories: &["all"],
        subresources: &["status", "binding", "log", "eviction"],
        defaults: pod::defaults,
        prepare_create: pod::prepare_create,
        validate: pod::validate,
        columns: pod::COLUMNS,
        cells: pod::cells,
    }),
    resource!(core::Service {
        kind: "Service",
        plural: "services",
        singular: "service",
        short_names: &["svc"],
        categories: &["all"],
        subresources: &["status"],
        name_rule: NameRule::Dns1035,
        defaults: service::defaults,
        prepare_update: service::prepare_update,
        validate: service::validate,
        columns: service::COLUMNS,
        cells: service::cells,
    }),
    resource!(core::Endpoints {
        kind: "Endpoints",
        plural: "endpoints",
        singular: "endpoints",
        short_names: &["ep"],
        defaults: service::endpoints_defaults,
        validate: service::validate_endpoints,
        columns: service::ENDPOINTS_COLUMNS,
        cells: service::endpoints_cells,
    }),
    resource!(core::PersistentVolumeClaim {
        kind: "PersistentVolumeClaim",
        plural: "persistentvolumeclaims",
        singular: "persistentvolumeclaim",
        short_names: &["pvc"],
        subresources: &["status"],
        defaults: storage::claim_defaults,
        prepare_create: storage::claim_prepare_create,
        validate: storage::validate_claim,
        columns: storage::CLAIM_COLUMNS,
        cells: storage::claim_cells,
    }),
    resource!(core::PersistentVolume {
        kind: "PersistentVolume",
        plural: "persistentvolumes",
        singular: "persistentvolume",
        namespaced: false,
        short_names: &["pv"],
        subresources: &["status"],
        defaults: storage::volume_defaults,
        prepare_create: storage::volume_prepare_create,
        validate: storage::validate_volume,
        columns: storage::VOLUME_COLUMNS,
        cells: storage::volume_cells,
    }),
    resource!(core::ReplicationController {
        kind: "ReplicationController",
        plural: "replicationcontrollers",
        singular: "replicationcontroller",
        short_names: &["rc"],
        categories: &["all"],
        subresources: &["status", "scale"],
        defaults: workloads::replicationcontroller_defaults,
        validate: workloads::validate_replicationcontroller,
        columns: workloads::REPLICASET_COLUMNS,
        cells: workloads::replicationcontroller_cells,
    }),
    resource!(core::ConfigMap {
        kind: "ConfigMap",
        plural: "configmaps",
        singular: "configmap",
        short_names: &["cm"],
        validate: misc::validate_configmap,
        columns: misc::CONFIGMAP_COLUMNS,
        cells: misc::configmap_cells,
    }),
    resource!(core::Secret {
        kind: "Secret",
        plural: "secrets",
        singular: "secret",
        defaults: misc::secret_defaults,
        validate: misc::validate_secret,
        columns: misc::SECRET_COLUMNS,
        cells: misc::secret_cells,
    }),
    resource!(core::ServiceAccount {
        kind: "ServiceAccount",
        plural: "serviceaccounts",
        singular: "serviceaccount",
        short_names: &["sa"],
        columns: misc::SERVICEACCOUNT_COLUMNS,
        cells: misc::serviceaccount_cells,
    }),
    resource!(core::Event {
        kind: "Event",
        plural: "events",
        singular: "event",
        short_names: &["ev"],
        columns: misc::EVENT_COLUMNS,
        cells: misc::event_cells,
    }),
    resource!(core::ResourceQuota {
        kind: "ResourceQuota",
        plural: "resourcequotas",
        singular: "resourcequota",
        short_names: &["quota"],
        subresources: &["status"],
        prepare_create: policy::quota_prepare_create,
        validate: policy::validate_quota,
        columns: policy::QUOTA_COLUMNS,
        cells: policy::quota_cells,
    }),
    resource!(core::LimitRange {
        kind: "LimitRange",
        plural: "limitranges",
        singular: "limitrange",
        short_names: &["limits"],
        defaults: policy::limitrange_defaults,
        validate: policy::validate_limitrange,
        columns: policy::LIMITRANGE_COLUMNS,
        cells: policy::limitrange_cells,
    }),
    resource!(apps::Deployment {
        group: "apps",
        kind: "Deployment",
        plural: "deployments",
        singular: "deployment",
        short_names: &["deploy"],
        categories: &["all"],
        subresources: &["status", "scale"],
        defaults: workloads::deployment_defaults,
        validate: workloads::validate_deployment,
        columns: workloads::DEPLOYMENT_COLUMNS,
        cells: workloads::deployment_cells,
    }),
    resource!(apps::ReplicaSet {
        group: "apps",
        kind: "ReplicaSet",
        plural: "replicasets",
        singular: "replicaset",
        short_names: &["rs"],
        categories: &["all"],
        subresources: &["status", "scale"],
        defaults: workloads::replicaset_defaults,
        validate: workloads::validate_replicaset,
        columns: workloads::REPLICASET_COLUMNS,
        cells: workloads::replicaset_cells,
    }),
    resource!(apps::DaemonSet {
        group: "apps",
        kind: "DaemonSet",
        plural: "daemonsets",
        singular: "daemonset",
        short_names: &["ds"],
        categories: &["all"],
        subresources: &["status"],
        defaults: workloads::daemonset_defaults,
        validate: workloads::validate_daemonset,
        columns: workloads::DAEMONSET_COLUMNS,
        cells: workloads::daemonset_cells,
    }),
    resource!(apps::StatefulSet {
        group: "apps",
        kind: "StatefulSet",
        plural: "statefulsets",
        singular: "statefulset",
        short_names: &["sts"],
        categories: &["all"],
        subresources: &["status", "scale"],
        defaults: workloads::statefulset_defaults,
        validate: workloads::validate_statefulset,
        columns: workloads::STATEFULSET_COLUMNS,
        cells: workloads::statefulset_cells,
    }),
    resource!(batch::Job {
        group: "batch",
        kind: "Job",
        plural: "jobs",
        singular: "job",
        categories: &["all"],
        subresources: &["status"],
        defaults: workloads::job_defaults,
        prepare_create: workloads::job_prepare_create,
        validate: workloads::validate_job,
        columns: workloads::JOB_COLUMNS,
        cells: workloads::job_cells,
    }),
    resource!(batch::CronJob {
        group: "batch",
        kind: "CronJob",
        plural: "cronjobs",
        singular: "cronjob",
        short_names: &["cj"],
        categories: &["all"],
        subresources: &["status"],
        defaults: workloads::cronjob_defaults,
        validate: workloads::validate_cronjob,
        columns: workloads::CRONJOB_COLUMNS,
        cells: workloads::cronjob_cells,
    }),
    resource!(networking::Ingress {
        group: "networking.k8s.io",
        kind: "Ingress",
        plural: "ingresses",
        singular: "ingress",
        short_names: &["ing"],
        subresources: &["status"],
        validate: service::validate_ingress,
        columns: service::INGRESS_COLUMNS,
        cells: service::ingress_cells,
    }),
    resource!(discovery::EndpointSlice {
        group: "discovery.k8s.io",
        kind: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        validate: service::validate_slice,
        columns: service::SLICE_COLUMNS,
        cells: service::slice_cells,
    }),
    resource!(coordination::Lease {
        group: "coordination.k8s.io",
        kind: "Lease",
        plural: "leases",
        singular: "lease",
        columns: misc::LEASE_COLUMNS,
        cells: misc::lease_cells,
    }),
    resource!(scheduling::PriorityClass {
        group: "scheduling.k8s.io",
        kind: "PriorityClass",
        plural: "priorityclasses",
        singular: "priorityclass",
        namespaced: false,
        short_names: &["pc"],
        defaults: misc::priorityclass_defaults,
        validate: misc::validate_priorityclass,
        columns: misc::PRIORITYCLASS_COLUMNS,
        cells: misc::priorityclass_cells,
    }),
    resource!(Application {
        group: crate::kinds::GROUP,
        version: crate::kinds::VERSION,
        kind: "Application",
        plural: "applications",
        singular: "application",
        short_names: &["app", "apps"],
        subresources: &["status"],
        validate: application::validate,
        columns: application::COLUMNS,
        cells: application::cells,
    }),
];

/// The resource at `group/version/plural`.
pub fn by_plural(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource of an object's `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.api_version() == api_version && r.kind == kind)
}

/// The API groups served besides core, each with its one version.
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}
