//! How Kubernetes merges each list (and some maps and structs) of the served types: the
//! `patchStrategy`/`patchMergeKey` struct tags and the `+listType`/`+listMapKey`/`+mapType`/
//! `+structType` markers of the Go types in `k8s.io/api` and `k8s.io/apimachinery`, written
//! once here for every type reachable from the served kinds.
//!
//! The schema module copies them into the served OpenAPI as Kubernetes' extensions
//! (`x-kubernetes-patch-strategy`, `x-kubernetes-list-type`, ...); strategic merge reads the
//! patch strategy and merge key, server-side apply the list and map types. A list with no
//! entry is atomic for both, as in Kubernetes (tolerations, for one, are replaced whole).

use serde_json::{json, Map, Value};

/// The definition name of a type of a Kubernetes API group.
macro_rules! def {
    (meta, $t:literal) => {
        concat!("io.k8s.apimachinery.pkg.apis.meta.v1.", $t)
    };
    (core, $t:literal) => {
        concat!("io.k8s.api.core.v1.", $t)
    };
    (apps, $t:literal) => {
        concat!("io.k8s.api.apps.v1.", $t)
    };
    (batch, $t:literal) => {
        concat!("io.k8s.api.batch.v1.", $t)
    };
    (discovery, $t:literal) => {
        concat!("io.k8s.api.discovery.v1.", $t)
    };
    (networking, $t:literal) => {
        concat!("io.k8s.api.networking.v1.", $t)
    };
}

/// One field's tags: `(field, patchStrategy, patchMergeKey, listType, listMapKeys)`, "" when
/// the Go field has no such tag.
type Field = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
);

/// The tagged list fields, by type, in the order of the Go sources.
#[rustfmt::skip]
static RULES: &[(&str, &[Field])] = &[
    (def!(meta, "ObjectMeta"), &[
        ("ownerReferences", "merge", "uid", "map",    &["uid"]),
        ("finalizers",      "merge", "",    "set",    &[]),
        ("managedFields",   "",      "",    "atomic", &[]),
    ]),
    (def!(meta, "LabelSelector"), &[
        ("matchExpressions", "", "", "atomic", &[]),
    ]),
    (def!(meta, "LabelSelectorRequirement"), &[
        ("values", "", "", "atomic", &[]),
    ]),
    (def!(core, "ResourceQuotaSpec"), &[
        ("scopes", "", "", "atomic", &[]),
    ]),
    (def!(core, "ScopeSelector"), &[
        ("matchExpressions", "", "", "atomic", &[]),
    ]),
    (def!(core, "ScopedResourceSelectorRequirement"), &[
        ("values", "", "", "atomic", &[]),
    ]),
    (def!(core, "LimitRangeSpec"), &[
        ("limits", "", "", "atomic", &[]),
    ]),
    (def!(core, "PersistentVolumeClaimSpec"), &[
        ("accessModes", "", "", "atomic", &[]),
    ]),
    (def!(core, "RBDVolumeSource"), &[
        ("monitors", "", "", "atomic", &[]),
    ]),
    (def!(core, "CephFSVolumeSource"), &[
        ("monitors", "", "", "atomic", &[]),
    ]),
    (def!(core, "SecretVolumeSource"), &[
        ("items", "", "", "atomic", &[]),
    ]),
    (def!(core, "SecretProjection"), &[
        ("items", "", "", "atomic", &[]),
    ]),
    (def!(core, "ISCSIVolumeSource"), &[
        ("portals", "", "", "atomic", &[]),
    ]),
    (def!(core, "FCVolumeSource"), &[
        ("targetWWNs", "", "", "atomic", &[]),
        ("wwids",      "", "", "atomic", &[]),
    ]),
    (def!(core, "ConfigMapVolumeSource"), &[
        ("items", "", "", "atomic", &[]),
    ]),
    (def!(core, "ConfigMapProjection"), &[
        ("items", "", "", "atomic", &[]),
    ]),
    (def!(core, "ProjectedVolumeSource"), &[
        ("sources", "", "", "atomic", &[]),
    ]),
    (def!(core, "HTTPGetAction"), &[
        ("httpHeaders", "", "", "atomic", &[]),
    ]),
    (def!(core, "ExecAction"), &[
        ("command", "", "", "atomic", &[]),
    ]),
    (def!(core, "Capabilities"), &[
        ("add",  "", "", "atomic", &[]),
        ("drop", "", "", "atomic", &[]),
    ]),
    (def!(core, "ResourceRequirements"), &[
        ("claims", "", "", "map", &["name"]),
    ]),
    (def!(core, "Container"), &[
        ("command",       "",      "",              "atomic", &[]),
        ("args",          "",      "",              "atomic", &[]),
        ("ports",         "merge", "containerPort", "map",    &["containerPort", "protocol"]),
        ("envFrom",       "",      "",              "atomic", &[]),
        ("env",           "merge", "name",          "map",    &["name"]),
        ("resizePolicy",  "",      "",              "atomic", &[]),
        ("volumeMounts",  "merge", "mountPath",     "map",    &["mountPath"]),
        ("volumeDevices", "merge", "devicePath",    "map",    &["devicePath"]),
    ]),
    (def!(core, "ContainerStatus"), &[
        ("volumeMounts",             "merge", "mountPath", "map", &["mountPath"]),
        ("allocatedResourcesStatus", "merge", "name",      "map", &["name"]),
    ]),
    (def!(core, "ResourceStatus"), &[
        ("resources", "", "", "map", &["resourceID"]),
    ]),
    (def!(core, "LinuxContainerUser"), &[
        ("supplementalGroups", "", "", "atomic", &[]),
    ]),
    (def!(core, "NodeSelector"), &[
        ("nodeSelectorTerms", "", "", "atomic", &[]),
    ]),
    (def!(core, "NodeSelectorTerm"), &[
        ("matchExpressions", "", "", "atomic", &[]),
        ("matchFields",      "", "", "atomic", &[]),
    ]),
    (def!(core, "NodeSelectorRequirement"), &[
        ("values", "", "", "atomic", &[]),
    ]),
    (def!(core, "PodAffinity"), &[
        ("requiredDuringSchedulingIgnoredDuringExecution",  "", "", "atomic", &[]),
        ("preferredDuringSchedulingIgnoredDuringExecution", "", "", "atomic", &[]),
    ]),
    (def!(core, "PodAntiAffinity"), &[
        ("requiredDuringSchedulingIgnoredDuringExecution",  "", "", "atomic", &[]),
        ("preferredDuringSchedulingIgnoredDuringExecution", "", "", "atomic", &[]),
    ]),
    (def!(core, "PodAffinityTerm"), &[
        ("namespaces",        "", "", "atomic", &[]),
        ("matchLabelKeys",    "", "", "atomic", &[]),
        ("mismatchLabelKeys", "", "", "atomic", &[]),
    ]),
    (def!(core, "NodeAffinity"), &[
        ("preferredDuringSchedulingIgnoredDuringExecution", "", "", "atomic", &[]),
    ]),
    (def!(core, "PodSpec"), &[
        ("volumes",                   "merge,retainKeys", "name",        "map",    &["name"]),
        ("initContainers",            "merge",            "name",        "map",    &["name"]),
        ("containers",                "merge",            "name",        "map",    &["name"]),
        ("ephemeralContainers",       "merge",            "name",        "map",    &["name"]),
        ("imagePullSecrets",          "merge",            "name",        "map",    &["name"]),
        ("tolerations",               "",                 "",            "atomic", &[]),
        ("hostAliases",               "merge",            "ip",          "map",    &["ip"]),
        ("readinessGates",            "",                 "",            "atomic", &[]),
        ("topologySpreadConstraints", "merge",            "topologyKey", "map",    &["topologyKey", "whenUnsatisfiable"]),
        ("schedulingGates",           "merge",            "name",        "map",    &["name"]),
        ("resourceClaims",            "merge,retainKeys", "name",        "map",    &["name"]),
    ]),
    (def!(core, "TopologySpreadConstraint"), &[
        ("matchLabelKeys", "", "", "atomic", &[]),
    ]),
    (def!(core, "HostAlias"), &[
        ("hostnames", "", "", "atomic", &[]),
    ]),
    (def!(core, "PodSecurityContext"), &[
        ("supplementalGroups", "", "", "atomic", &[]),
        ("sysctls",            "", "", "atomic", &[]),
    ]),
    (def!(core, "PodDNSConfig"), &[
        ("nameservers", "", "", "atomic", &[]),
        ("searches",    "", "", "atomic", &[]),
        ("options",     "", "", "atomic", &[]),
    ]),
    (def!(core, "EphemeralContainer"), &[
        ("command",       "",      "",              "atomic", &[]),
        ("args",          "",      "",              "atomic", &[]),
        ("ports",         "merge", "containerPort", "map",    &["containerPort", "protocol"]),
        ("envFrom",       "",      "",              "atomic", &[]),
        ("env",           "merge", "name",          "map",    &["name"]),
        ("resizePolicy",  "",      "",              "atomic", &[]),
        ("volumeMounts",  "merge", "mountPath",     "map",    &["mountPath"]),
        ("volumeDevices", "merge", "devicePath",    "map",    &["devicePath"]),
    ]),
    (def!(core, "PodStatus"), &[
        ("conditions",                 "merge",            "type", "map",    &["type"]),
        ("hostIPs",                    "merge",            "ip",   "atomic", &[]),
        ("podIPs",                     "merge",            "ip",   "map",    &["ip"]),
        ("initContainerStatuses",      "",                 "",     "atomic", &[]),
        ("containerStatuses",          "",                 "",     "atomic", &[]),
        ("ephemeralContainerStatuses", "",                 "",     "atomic", &[]),
        ("resourceClaimStatuses",      "merge,retainKeys", "name", "map",    &["name"]),
    ]),
    (def!(core, "ServiceStatus"), &[
        ("conditions", "merge", "type", "map", &["type"]),
    ]),
    (def!(core, "LoadBalancerStatus"), &[
        ("ingress", "", "", "atomic", &[]),
    ]),
    (def!(core, "LoadBalancerIngress"), &[
        ("ports", "", "", "atomic", &[]),
    ]),
    (def!(core, "ServiceSpec"), &[
        ("ports",                    "merge", "port", "map",    &["port", "protocol"]),
        ("clusterIPs",               "",      "",     "atomic", &[]),
        ("externalIPs",              "",      "",     "atomic", &[]),
        ("loadBalancerSourceRanges", "",      "",     "atomic", &[]),
        ("ipFamilies",               "",      "",     "atomic", &[]),
    ]),
    (def!(core, "ServiceAccount"), &[
        ("secrets",          "merge", "name", "map",    &["name"]),
        ("imagePullSecrets", "",      "",     "atomic", &[]),
    ]),
    (def!(core, "Endpoints"), &[
        ("subsets", "", "", "atomic", &[]),
    ]),
    (def!(core, "EndpointSubset"), &[
        ("addresses",         "", "", "atomic", &[]),
        ("notReadyAddresses", "", "", "atomic", &[]),
        ("ports",             "", "", "atomic", &[]),
    ]),
    (def!(core, "NodeSpec"), &[
        ("podCIDRs", "merge", "", "set",    &[]),
        ("taints",   "",      "", "atomic", &[]),
    ]),
    (def!(core, "NodeStatus"), &[
        ("conditions",      "merge", "type", "map",    &["type"]),
        ("addresses",       "merge", "type", "map",    &["type"]),
        ("images",          "",      "",     "atomic", &[]),
        ("volumesInUse",    "",      "",     "atomic", &[]),
        ("volumesAttached", "",      "",     "atomic", &[]),
        ("runtimeHandlers", "",      "",     "atomic", &[]),
    ]),
    (def!(core, "ContainerImage"), &[
        ("names", "", "", "atomic", &[]),
    ]),
    (def!(core, "NamespaceSpec"), &[
        ("finalizers", "", "", "atomic", &[]),
    ]),
    (def!(core, "NamespaceStatus"), &[
        ("conditions", "merge", "type", "map", &["type"]),
    ]),
    (def!(core, "DownwardAPIVolumeSource"), &[
        ("items", "", "", "atomic", &[]),
    ]),
    (def!(core, "DownwardAPIProjection"), &[
        ("items", "", "", "atomic", &[]),
    ]),
    (def!(apps, "DeploymentSpec"), &[
        ("strategy", "retainKeys", "", "", &[]),
    ]),
    (def!(apps, "DeploymentStatus"), &[
        ("conditions", "merge", "type", "map", &["type"]),
    ]),
    (def!(apps, "StatefulSetSpec"), &[
        ("volumeClaimTemplates", "", "", "atomic", &[]),
    ]),
    (def!(apps, "StatefulSetStatus"), &[
        ("conditions", "merge", "type", "map", &["type"]),
    ]),
    (def!(core, "ReplicationControllerStatus"), &[
        ("conditions", "merge", "type", "map", &["type"]),
    ]),
    (def!(batch, "CronJobStatus"), &[
        ("active", "", "", "atomic", &[]),
    ]),
    (def!(networking, "IngressSpec"), &[
        ("tls",   "", "", "atomic", &[]),
        ("rules", "", "", "atomic", &[]),
    ]),
    (def!(networking, "IngressTLS"), &[
        ("hosts", "", "", "atomic", &[]),
    ]),
    (def!(networking, "HTTPIngressRuleValue"), &[
        ("paths", "", "", "atomic", &[]),
    ]),
    (def!(networking, "IngressLoadBalancerStatus"), &[
        ("ingress", "", "", "atomic", &[]),
    ]),
    (def!(networking, "IngressLoadBalancerIngress"), &[
        ("ports", "", "", "atomic", &[]),
    ]),
    (def!(core, "PersistentVolumeClaimStatus"), &[
        ("accessModes", "", "", "atomic", &[]),
        ("conditions",  "merge", "type", "map", &["type"]),
    ]),
    (def!(core, "PersistentVolumeSpec"), &[
        ("accessModes",  "", "", "atomic", &[]),
        ("mountOptions", "", "", "atomic", &[]),
    ]),
    (def!(core, "CephFSPersistentVolumeSource"), &[
        ("monitors", "", "", "atomic", &[]),
    ]),
    (def!(core, "RBDPersistentVolumeSource"), &[
        ("monitors", "", "", "atomic", &[]),
    ]),
    (def!(core, "ISCSIPersistentVolumeSource"), &[
        ("portals", "", "", "atomic", &[]),
    ]),
    (def!(apps, "DaemonSetStatus"), &[
        ("conditions", "merge", "type", "map", &["type"]),
    ]),
    (def!(apps, "ReplicaSetStatus"), &[
        ("conditions", "merge", "type", "map", &["type"]),
    ]),
    (def!(batch, "PodFailurePolicyOnExitCodesRequirement"), &[
        ("values", "", "", "set", &[]),
    ]),
    (def!(batch, "PodFailurePolicyRule"), &[
        ("onPodConditions", "", "", "atomic", &[]),
    ]),
    (def!(batch, "PodFailurePolicy"), &[
        ("rules", "", "", "atomic", &[]),
    ]),
    (def!(batch, "SuccessPolicy"), &[
        ("rules", "", "", "atomic", &[]),
    ]),
    (def!(batch, "JobStatus"), &[
        ("conditions", "merge", "type", "atomic", &[]),
    ]),
    (def!(batch, "UncountedTerminatedPods"), &[
        ("succeeded", "", "", "set", &[]),
        ("failed",    "", "", "set", &[]),
    ]),
    (def!(discovery, "EndpointSlice"), &[
        ("endpoints", "", "", "atomic", &[]),
        ("ports",     "", "", "atomic", &[]),
    ]),
    (def!(discovery, "Endpoint"), &[
        ("addresses", "", "", "set", &[]),
    ]),
    (def!(discovery, "EndpointHints"), &[
        ("forZones", "", "", "atomic", &[]),
        ("forNodes", "", "", "atomic", &[]),
    ]),
];

/// Map fields tagged `+mapType=atomic`: apply owns and replaces them whole.
static ATOMIC_MAPS: &[(&str, &str)] = &[
    (def!(core, "PodSpec"), "nodeSelector"),
    (def!(core, "ServiceSpec"), "selector"),
];

/// Structs tagged `+structType=atomic`: apply owns and replaces them whole.
#[rustfmt::skip]
static ATOMIC_STRUCTS: &[&str] = &[
    def!(meta, "LabelSelector"),
    def!(meta, "OwnerReference"),
    def!(core, "ConfigMapKeySelector"),
    def!(core, "EndpointAddress"),
    def!(core, "EndpointPort"),
    def!(core, "LocalObjectReference"),
    def!(core, "NodeSelector"),
    def!(core, "NodeSelectorTerm"),
    def!(core, "ObjectFieldSelector"),
    def!(core, "ObjectReference"),
    def!(core, "ResourceFieldSelector"),
    def!(core, "SecretKeySelector"),
    def!(core, "TypedLocalObjectReference"),
    def!(discovery, "EndpointPort"),
];

/// `+default` of fields that key a list map: apply keys an item that omits one by its default
/// (a container port without `protocol` is the `TCP` one).
static KEY_DEFAULTS: &[(&str, &str, &str)] = &[
    (def!(core, "ContainerPort"), "protocol", "TCP"),
    (def!(core, "ServicePort"), "protocol", "TCP"),
    (def!(core, "LocalObjectReference"), "name", ""),
];

/// The OpenAPI extensions (and `default`) describing how field `field` of definition `def`
/// merges, if it has any.
pub fn extensions(def: &str, field: &str) -> Option<Map<String, Value>> {
    let mut ext = Map::new();
    let rule = RULES
        .iter()
        .filter(|(d, _)| *d == def)
        .flat_map(|(_, fields)| fields.iter())
        .find(|f| f.0 == field);
    if let Some((_, strategy, key, list, keys)) = rule {
        let mut put = |name: &str, v: &str| {
            if !v.is_empty() {
                ext.insert(name.into(), json!(v));
            }
        };
        put("x-kubernetes-patch-strategy", strategy);
        put("x-kubernetes-patch-merge-key", key);
        put("x-kubernetes-list-type", list);
        if !keys.is_empty() {
            ext.insert("x-kubernetes-list-map-keys".into(), json!(keys));
        }
    }
    if ATOMIC_MAPS.contains(&(def, field)) {
        ext.insert("x-kubernetes-map-type".into(), json!("atomic"));
    }
    if let Some((_, _, default)) = KEY_DEFAULTS.iter().find(|(d, f, _)| *d == def && *f == field) {
        ext.insert("default".into(), json!(default));
    }
    (!ext.is_empty()).then_some(ext)
}

/// The OpenAPI extensions of definition `def` itself (`x-kubernetes-map-type: atomic` for
/// atomic structs), if any.
pub fn definition_extensions(def: &str) -> Option<Map<String, Value>> {
    ATOMIC_STRUCTS
        .contains(&def)
        .then(|| Map::from_iter([("x-kubernetes-map-type".to_string(), json!("atomic"))]))
}

/// Every `(definition, field)` the tables name, for checking them against the generated schemas.
#[cfg(test)]
pub(crate) fn named_fields() -> impl Iterator<Item = (&'static str, &'static str)> {
    let lists = RULES
        .iter()
        .flat_map(|(def, fields)| fields.iter().map(move |f| (*def, f.0)));
    let defaults = KEY_DEFAULTS.iter().map(|(d, f, _)| (*d, *f));
    lists.chain(ATOMIC_MAPS.iter().copied()).chain(defaults)
}

/// Every atomic struct the table names.
#[cfg(test)]
pub(crate) fn atomic_structs() -> &'static [&'static str] {
    ATOMIC_STRUCTS
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::{apps, batch, core, discovery, networking, scheduling};
    use schemars::generate::SchemaSettings;
    use schemars::SchemaGenerator;

    use super::*;
    use crate::api::registry::RESOURCES;

    /// The definitions of the served kinds and of the kinds about to be served.
    fn definitions() -> BTreeMap<String, Value> {
        let mut settings = SchemaSettings::draft07();
        settings.transforms.clear();
        let mut generator = SchemaGenerator::new(settings);
        for res in RESOURCES {
            (res.schema)(&mut generator);
        }
        generator.subschema_for::<core::v1::Service>();
        generator.subschema_for::<core::v1::Endpoints>();
        generator.subschema_for::<core::v1::ServiceAccount>();
        generator.subschema_for::<discovery::v1::EndpointSlice>();
        generator.subschema_for::<apps::v1::DaemonSet>();
        generator.subschema_for::<batch::v1::Job>();
        generator.subschema_for::<scheduling::v1::PriorityClass>();
        generator.subschema_for::<apps::v1::StatefulSet>();
        generator.subschema_for::<core::v1::ReplicationController>();
        generator.subschema_for::<batch::v1::CronJob>();
        generator.subschema_for::<networking::v1::Ingress>();
        generator.subschema_for::<core::v1::PersistentVolume>();
        generator.subschema_for::<core::v1::PersistentVolumeClaim>();
        generator.take_definitions(false).into_iter().collect()
    }

    #[test]
    fn every_rule_names_a_field_of_a_generated_type() {
        let defs = definitions();
        for (def, field) in named_fields() {
            let found = defs.get(def).and_then(|d| d.pointer(&format!("/properties/{field}")));
            assert!(found.is_some(), "{def}.{field} is not in the generated schemas");
        }
        for def in atomic_structs() {
            assert!(defs.contains_key(*def), "{def} is not in the generated schemas");
        }
    }

    #[test]
    fn every_kubernetes_list_is_tagged() {
        // Kubernetes tags every list of these types; an untagged one here is a missed rule.
        for (def, schema) in definitions().iter().filter(|(d, _)| d.starts_with("io.k8s.")) {
            let props = schema
                .get("properties")
                .and_then(Value::as_object)
                .into_iter()
                .flatten();
            for (field, prop) in props.filter(|(_, p)| p.get("type") == Some(&json!("array"))) {
                let ext = extensions(def, field).unwrap_or_default();
                assert!(
                    ext.contains_key("x-kubernetes-list-type") || ext.contains_key("x-kubernetes-patch-strategy"),
                    "{def}.{field} ({prop}) has no list rule"
                );
            }
        }
    }

    #[test]
    fn tags_become_extensions() {
        let ports = extensions(def!(core, "Container"), "ports").unwrap();
        assert_eq!(ports["x-kubernetes-patch-merge-key"], "containerPort");
        assert_eq!(
            ports["x-kubernetes-list-map-keys"],
            json!(["containerPort", "protocol"])
        );
        let tolerations = extensions(def!(core, "PodSpec"), "tolerations").unwrap();
        assert!(!tolerations.contains_key("x-kubernetes-patch-merge-key"));
        assert_eq!(tolerations["x-kubernetes-list-type"], "atomic");
        assert_eq!(
            extensions(def!(apps, "DeploymentSpec"), "strategy").unwrap()["x-kubernetes-patch-strategy"],
            "retainKeys"
        );
        assert_eq!(
            extensions(def!(core, "ContainerPort"), "protocol").unwrap()["default"],
            "TCP"
        );
        assert!(definition_extensions(def!(meta, "LabelSelector")).is_some());
        assert!(extensions(def!(core, "PodSpec"), "hostname").is_none());
    }
}
