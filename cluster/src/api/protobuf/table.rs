//! The k8s-pb field table (written by `build/k8s_pb_table.rs` from k8s-pb's prost
//! sources) and, resolved once, the JSON side of every field: its JSON name, whether it
//! is inlined, whether the schema requires it, and the special types whose JSON form is
//! not their message form.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use schemars::generate::SchemaSettings;
use schemars::SchemaGenerator;
use serde_json::Value;

use super::super::schema::{schema_name_of, schemas};

/// A protobuf scalar type.
// Kubernetes' messages use few of these; the table may name any.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    /// `bool`
    Bool,
    /// `int32`
    Int32,
    /// `int64`
    Int64,
    /// `uint32`
    Uint32,
    /// `uint64`
    Uint64,
    /// `sint32`
    Sint32,
    /// `sint64`
    Sint64,
    /// `fixed32`
    Fixed32,
    /// `fixed64`
    Fixed64,
    /// `sfixed32`
    Sfixed32,
    /// `sfixed64`
    Sfixed64,
    /// `float`
    Float,
    /// `double`
    Double,
    /// `string`
    String,
    /// `bytes` (base64 in JSON)
    Bytes,
}

/// The type of a field (of a map's value for a map field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// A scalar.
    Scalar(Scalar),
    /// A message, by index into [`MESSAGES`].
    Message(usize),
}

/// How many values a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Card {
    /// At most one (proto2 `optional`).
    Optional,
    /// A list.
    Repeated,
    /// A map with keys of this scalar type.
    Map(Scalar),
}

/// One field of a message.
#[derive(Debug)]
pub struct Field {
    /// prost's (snake_case) field name.
    pub name: &'static str,
    /// The protobuf tag.
    pub tag: u32,
    /// Cardinality.
    pub card: Card,
    /// Type (of the value, for maps).
    pub ty: Ty,
}

/// One message of k8s-pb.
#[derive(Debug)]
pub struct Message {
    /// Full name: k8s-pb's module path and type, dotted (`api.core.v1.ConfigMap`).
    pub name: &'static str,
    /// Fields, by tag.
    pub fields: &'static [Field],
}

include!(concat!(env!("OUT_DIR"), "/k8s_pb_table.rs"));

/// Messages whose JSON form is not an object of their fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// `meta/v1.Time`: RFC 3339 seconds; zero is `null`.
    Time,
    /// `meta/v1.MicroTime`: RFC 3339 with microseconds; zero is `null`.
    MicroTime,
    /// `meta/v1.Duration`: a Go duration string (`1h2m3s`).
    Duration,
    /// `resource.Quantity`: its string.
    Quantity,
    /// `intstr.IntOrString`: a number or a string.
    IntOrString,
    /// `runtime.RawExtension`: the embedded JSON (or a nested protobuf object).
    RawExtension,
    /// `meta/v1.FieldsV1`: the embedded JSON.
    FieldsV1,
}

fn special_of(name: &str) -> Option<Special> {
    Some(match name {
        "apimachinery.pkg.apis.meta.v1.Time" => Special::Time,
        "apimachinery.pkg.apis.meta.v1.MicroTime" => Special::MicroTime,
        "apimachinery.pkg.apis.meta.v1.Duration" => Special::Duration,
        "apimachinery.pkg.api.resource.Quantity" | "apimachinery.pkg.api.resource.QuantityValue" => Special::Quantity,
        "apimachinery.pkg.util.intstr.IntOrString" => Special::IntOrString,
        "apimachinery.pkg.runtime.RawExtension" => Special::RawExtension,
        "apimachinery.pkg.apis.meta.v1.FieldsV1" => Special::FieldsV1,
        _ => return None,
    })
}

/// Go pointer fields whose explicit zero means something other than unset (the default
/// is not zero, or zero is an action). On the wire a zero is the same whether Go wrote a
/// pointer set to zero or a non-pointer left unset, and nothing machine-readable says
/// which fields are pointers; so zeros are dropped (`omitempty`) except here. Missing an
/// entry only turns an explicit zero into the field's default.
pub const EXPLICIT_ZEROS: &[&str] = &[
    "api.apps.v1.DeploymentSpec.replicas",
    "api.apps.v1.DeploymentSpec.revision_history_limit",
    "api.apps.v1.DeploymentSpec.progress_deadline_seconds",
    "api.apps.v1.ReplicaSetSpec.replicas",
    "api.apps.v1.StatefulSetSpec.replicas",
    "api.apps.v1.StatefulSetSpec.revision_history_limit",
    "api.apps.v1.DaemonSetSpec.revision_history_limit",
    // Scale's replicas is not a pointer, but zero is the point of scaling to zero.
    "api.autoscaling.v1.ScaleSpec.replicas",
    "api.batch.v1.JobSpec.parallelism",
    "api.batch.v1.JobSpec.completions",
    "api.batch.v1.JobSpec.backoff_limit",
    "api.batch.v1.JobSpec.active_deadline_seconds",
    "api.batch.v1.JobSpec.ttl_seconds_after_finished",
    "api.core.v1.PodSpec.termination_grace_period_seconds",
    "api.core.v1.PodSpec.active_deadline_seconds",
    "api.core.v1.PodSpec.automount_service_account_token",
    "api.core.v1.PodSpec.enable_service_links",
    "api.core.v1.PodSpec.host_users",
    "api.core.v1.Probe.termination_grace_period_seconds",
    "api.core.v1.ServiceAccount.automount_service_account_token",
    "api.core.v1.SecurityContext.run_as_user",
    "api.core.v1.SecurityContext.run_as_group",
    "api.core.v1.SecurityContext.allow_privilege_escalation",
    "api.core.v1.PodSecurityContext.run_as_user",
    "api.core.v1.PodSecurityContext.run_as_group",
    "api.core.v1.PodSecurityContext.fs_group",
    "apimachinery.pkg.apis.meta.v1.DeleteOptions.grace_period_seconds",
];

/// Where a field's value goes in JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonName {
    /// Under this key.
    Key(String),
    /// Its fields are the parent's (a Go embedded struct, `json:",inline"`).
    Inline,
}

/// The JSON side of one message.
#[derive(Debug)]
pub struct Resolved {
    /// Per field (same order as [`Message::fields`]).
    pub json: Vec<JsonName>,
    /// Per field: a zero value is kept (the schema requires the field, or it is one of
    /// [`EXPLICIT_ZEROS`]) rather than dropped as Go's `omitempty` would.
    pub keep_zero: Vec<bool>,
    /// The special JSON form, if any.
    pub special: Option<Special>,
    /// Whether the JSON names came from a schema (rather than camelCasing).
    pub from_schema: bool,
}

/// The field table with its JSON side resolved.
#[derive(Debug)]
pub struct Table {
    resolved: Vec<Resolved>,
    by_name: HashMap<&'static str, usize>,
    by_kind: HashMap<(&'static str, &'static str), usize>,
    /// The k8s-pb package of each group version that has a resource (`apps/v1`: `api.apps.v1`).
    packages: HashMap<&'static str, &'static str>,
}

/// The table, resolved on first use.
pub fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(resolve)
}

impl Table {
    /// The message at `index`.
    pub fn message(&self, index: usize) -> &'static Message {
        &MESSAGES[index]
    }

    /// The JSON side of the message at `index`.
    pub fn resolved(&self, index: usize) -> &Resolved {
        &self.resolved[index]
    }

    /// A message by full name.
    pub fn by_name(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The message of an object with this `apiVersion` and `kind`: a resource, another
    /// type of its group version (`<Kind>List`, `autoscaling/v1` `Scale`), or a `meta/v1`
    /// type (`Status`, `DeleteOptions`), which Kubernetes registers in every group version.
    pub fn for_kind(&self, api_version: &str, kind: &str) -> Option<usize> {
        if let Some(i) = self.by_kind.get(&(api_version, kind)) {
            return Some(*i);
        }
        self.packages
            .get(api_version)
            .and_then(|package| self.by_name(&format!("{package}.{kind}")))
            .or_else(|| self.by_name(&format!("apimachinery.pkg.apis.meta.v1.{kind}")))
    }
}

/// The schema definitions the JSON names are read from: the served kinds' (with every
/// type they use) and the `meta/v1` and subresource types the API also sends and takes.
fn definitions() -> BTreeMap<String, Value> {
    let mut defs = schemas().definitions.clone();
    let mut settings = SchemaSettings::draft07();
    settings.transforms.clear();
    settings.meta_schema = None;
    let mut generator = SchemaGenerator::new(settings);
    {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
        schema_name_of::<meta::Status>(&mut generator);
        schema_name_of::<meta::DeleteOptions>(&mut generator);
        schema_name_of::<meta::ListMeta>(&mut generator);
        schema_name_of::<k8s_openapi::api::autoscaling::v1::Scale>(&mut generator);
        schema_name_of::<k8s_openapi::api::core::v1::Binding>(&mut generator);
    }
    for (name, def) in generator.take_definitions(false) {
        defs.entry(name).or_insert(def);
    }
    defs
}

/// `io.k8s.<module path>.<Type>`: how k8s-openapi names the definition of a k8s-pb message.
pub fn definition_name(message: &str) -> String {
    format!("io.k8s.{}", message.replace('_', "-"))
}

/// Letters and digits only, lowercase: `pod_ips` and `podIPs` compare equal.
fn normalized(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// `snake_case` to `lowerCamelCase`, for messages without a schema (lists, `ListMeta`, ...),
/// whose JSON names are exactly that.
pub fn camel_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The JSON side of `m`, from the definition whose properties name its fields.
fn resolve_with(m: &Message, def: Option<&Value>) -> Resolved {
    let props: HashMap<String, &str> = def
        .and_then(|d| d.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().map(|k| (normalized(k), k.as_str())).collect())
        .unwrap_or_default();
    let required: Vec<&str> = def
        .and_then(|d| d.get("required"))
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let from_schema = !props.is_empty();
    let json: Vec<JsonName> = m
        .fields
        .iter()
        .map(|f| match props.get(&normalized(f.name)) {
            Some(key) => JsonName::Key((*key).to_string()),
            // go-to-protobuf turns an embedded struct into a field named after its
            // type; in JSON its fields are the parent's own.
            None if from_schema && f.card == Card::Optional && matches!(f.ty, Ty::Message(_)) => JsonName::Inline,
            None => JsonName::Key(camel_case(f.name)),
        })
        .collect();
    let keep_zero = json
        .iter()
        .zip(m.fields)
        .map(|(j, f)| {
            matches!(j, JsonName::Key(k) if required.contains(&k.as_str()))
                || EXPLICIT_ZEROS.contains(&format!("{}.{}", m.name, f.name).as_str())
        })
        .collect();
    Resolved {
        json,
        keep_zero,
        special: special_of(m.name),
        from_schema,
    }
}

fn resolve() -> Table {
    let defs = definitions();
    // prost renames some types (`PodOS` is `PodOs`): definitions are found ignoring case.
    let by_lower: HashMap<String, &Value> = defs.iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
    let def_of = |m: &Message| by_lower.get(&definition_name(m.name).to_ascii_lowercase()).copied();
    let mut resolved: Vec<Resolved> = MESSAGES.iter().map(|m| resolve_with(m, def_of(m))).collect();
    // An embedded struct often has no definition of its own (`ProbeHandler`,
    // `VolumeSource`): its JSON names are properties of the struct embedding it.
    loop {
        let mut inherit = Vec::new();
        for (i, m) in MESSAGES.iter().enumerate() {
            for (f, json) in m.fields.iter().zip(&resolved[i].json) {
                if let (JsonName::Inline, Ty::Message(sub)) = (json, f.ty) {
                    if !resolved[sub].from_schema {
                        inherit.push((sub, def_of(m)));
                    }
                }
            }
        }
        if inherit.is_empty() {
            break;
        }
        for (sub, def) in inherit {
            resolved[sub] = resolve_with(&MESSAGES[sub], def);
            // A parent without a definition leaves nothing to inherit; stop there.
            resolved[sub].from_schema = true;
        }
    }
    let by_name = MESSAGES.iter().enumerate().map(|(i, m)| (m.name, i)).collect();
    let by_kind = KINDS.iter().map(|(v, k, i)| ((*v, *k), *i)).collect();
    let packages = KINDS
        .iter()
        .filter_map(|(v, _, i)| MESSAGES[*i].name.rsplit_once('.').map(|(package, _)| (*v, package)))
        .collect();
    Table {
        resolved,
        by_name,
        by_kind,
        packages,
    }
}
