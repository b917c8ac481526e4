//! Kubernetes' validation rules that every kind shares: names (DNS-1123, DNS-1035),
//! label and annotation syntax, object metadata, quantities, ports. Each check appends
//! [`Cause`]s with Kubernetes' reasons and messages, so a 422 names every bad field at once.

use serde_json::Value;

use super::error::Cause;

/// Collects the causes of one object's validation.
#[derive(Debug, Default)]
pub struct Errors(pub Vec<Cause>);

impl Errors {
    /// `field: Required value`.
    pub fn required(&mut self, field: &str) {
        self.0.push(Cause::new("FieldValueRequired", field, "Required value"));
    }

    /// `field: Invalid value: <value>: <detail>`.
    pub fn invalid(&mut self, field: &str, value: &Value, detail: impl AsRef<str>) {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            Value::Null => "null".into(),
            other => other.to_string(),
        };
        self.0.push(Cause::new(
            "FieldValueInvalid",
            field,
            format!("Invalid value: {shown}: {}", detail.as_ref()),
        ));
    }

    /// `field: Unsupported value: "x": supported values: "a", "b"`.
    pub fn unsupported(&mut self, field: &str, value: &str, supported: &[&str]) {
        let list = supported
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        self.0.push(Cause::new(
            "FieldValueNotSupported",
            field,
            format!("Unsupported value: {value:?}: supported values: {list}"),
        ));
    }

    /// `field: Duplicate value: <value>`.
    pub fn duplicate(&mut self, field: &str, value: &Value) {
        self.0.push(Cause::new(
            "FieldValueDuplicate",
            field,
            format!("Duplicate value: {value}"),
        ));
    }

    /// `field: Forbidden: <detail>`.
    pub fn forbidden(&mut self, field: &str, detail: impl AsRef<str>) {
        self.0.push(Cause::new(
            "FieldValueForbidden",
            field,
            format!("Forbidden: {}", detail.as_ref()),
        ));
    }

    /// `field: Too long: may not be more than N bytes`.
    pub fn too_long(&mut self, field: &str, max: usize) {
        self.0.push(Cause::new(
            "FieldValueTooLong",
            field,
            format!("Too long: may not be more than {max} bytes"),
        ));
    }

    /// `field: Invalid value: ...: field is immutable` when `new` differs from `old`.
    pub fn immutable(&mut self, field: &str, new: Option<&Value>, old: Option<&Value>) {
        if new != old {
            self.invalid(field, new.unwrap_or(&Value::Null), "field is immutable");
        }
    }

    /// Whether nothing was found wrong.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Joins a field path and a child name.
pub fn path(base: &str, child: &str) -> String {
    if base.is_empty() {
        child.to_string()
    } else {
        format!("{base}.{child}")
    }
}

/// The value at a dotted path (`spec.template.spec`), if present and not null.
pub fn at<'a>(obj: &'a Value, dotted: &str) -> Option<&'a Value> {
    let mut cur = obj;
    for seg in dotted.split('.').filter(|s| !s.is_empty()) {
        cur = cur.get(seg)?;
    }
    (!cur.is_null()).then_some(cur)
}

/// Items of the array at `dotted`, with their field paths.
pub fn items<'a>(obj: &'a Value, base: &str, dotted: &str) -> Vec<(String, &'a Value)> {
    at(obj, dotted)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, v)| (format!("{}[{i}]", path(base, dotted)), v))
        .collect()
}

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

fn is_label_chars(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// Problems of `s` as an RFC 1123 label (at most 63 characters).
pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push("must be no more than 63 characters".into());
    }
    if !is_label_chars(s) {
        out.push(DNS1123_LABEL_MSG.into());
    }
    out
}

/// Problems of `s` as an RFC 1123 subdomain (at most 253 characters).
pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 253 {
        out.push("must be no more than 253 characters".into());
    }
    if !s.split('.').all(is_label_chars) {
        out.push(DNS1123_SUBDOMAIN_MSG.into());
    }
    out
}

/// Problems of `s` as an RFC 1035 label (Service names).
pub fn dns1035_label(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push("must be no more than 63 characters".into());
    }
    if !is_label_chars(s) || !s.as_bytes()[0].is_ascii_lowercase() {
        out.push(DNS1035_LABEL_MSG.into());
    }
    out
}

/// Which rule an object's name follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain: most kinds.
    Subdomain,
    /// RFC 1123 label: namespaces.
    Label,
    /// RFC 1035 label: services.
    Dns1035,
}

impl NameRule {
    /// Problems of `name` under this rule.
    pub fn check(self, name: &str) -> Vec<String> {
        match self {
            NameRule::Subdomain => dns1123_subdomain(name),
            NameRule::Label => dns1123_label(name),
            NameRule::Dns1035 => dns1035_label(name),
        }
    }
}

fn is_qualified_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// Problems of `key` as a qualified name (`prefix/name`): label and annotation keys,
/// finalizers, taint keys.
pub fn qualified_name(key: &str) -> Vec<String> {
    const MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let mut out = Vec::new();
    if let Some(p) = prefix {
        if p.is_empty() {
            out.push("prefix part must be non-empty".into());
        } else {
            out.extend(dns1123_subdomain(p).into_iter().map(|m| format!("prefix part {m}")));
        }
    }
    if name.len() > 63 {
        out.push("name part must be no more than 63 characters".into());
    } else if !is_qualified_name_part(name) {
        out.push(MSG.into());
    }
    out
}

/// Problems of `value` as a label value (empty, or a qualified name part).
pub fn label_value(value: &str) -> Vec<String> {
    if value.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    if value.len() > 63 {
        out.push("must be no more than 63 characters".into());
    } else if !is_qualified_name_part(value) {
        out.push("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into());
    }
    out
}

/// Checks a `map[string]string` of labels at `field`.
pub fn labels(errs: &mut Errors, field: &str, labels: Option<&Value>) {
    let Some(map) = labels.and_then(Value::as_object) else {
        return;
    };
    for (k, v) in map {
        for m in qualified_name(k) {
            errs.invalid(field, &Value::String(k.clone()), m);
        }
        let value = v.as_str().unwrap_or_default();
        for m in label_value(value) {
            errs.invalid(&format!("{field}[{k}]"), v, m);
        }
    }
}

/// Kubernetes' limit on all annotations of one object together.
pub const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

/// Checks annotation keys and their total size.
pub fn annotations(errs: &mut Errors, field: &str, annotations: Option<&Value>) {
    let Some(map) = annotations.and_then(Value::as_object) else {
        return;
    };
    let mut total = 0;
    for (k, v) in map {
        for m in qualified_name(&k.to_lowercase()) {
            errs.invalid(field, &Value::String(k.clone()), m);
        }
        total += k.len() + v.as_str().map_or(0, str::len);
    }
    if total > ANNOTATIONS_MAX_BYTES {
        errs.too_long(field, ANNOTATIONS_MAX_BYTES);
    }
}

/// Checks object metadata: name by `rule`, labels, annotations, finalizers, owner references.
pub fn object_meta(errs: &mut Errors, meta: &Value, rule: NameRule, namespaced: bool) {
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
    if name.is_empty() {
        errs.required("metadata.name");
    } else {
        for m in rule.check(name) {
            errs.invalid("metadata.name", &Value::String(name.into()), m);
        }
    }
    if namespaced {
        let ns = meta.get("namespace").and_then(Value::as_str).unwrap_or_default();
        for m in dns1123_label(ns) {
            errs.invalid("metadata.namespace", &Value::String(ns.into()), m);
        }
    }
    labels(errs, "metadata.labels", meta.get("labels"));
    annotations(errs, "metadata.annotations", meta.get("annotations"));
    for (i, f) in meta
        .get("finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let s = f.as_str().unwrap_or_default();
        for m in qualified_name(s) {
            errs.invalid(&format!("metadata.finalizers[{i}]"), f, m);
        }
    }
    let owners = meta.get("ownerReferences").and_then(Value::as_array);
    let mut controllers = 0;
    for (i, o) in owners.into_iter().flatten().enumerate() {
        let field = format!("metadata.ownerReferences[{i}]");
        for key in ["apiVersion", "kind", "name", "uid"] {
            if o.get(key).and_then(Value::as_str).is_none_or(str::is_empty) {
                errs.required(&format!("{field}.{key}"));
            }
        }
        if o.get("controller") == Some(&Value::Bool(true)) {
            controllers += 1;
        }
    }
    if controllers > 1 {
        errs.forbidden(
            "metadata.ownerReferences",
            "Only one reference can have Controller set to true",
        );
    }
}

/// Checks a `ResourceList` (requests or limits) at `field`.
pub fn resource_list(errs: &mut Errors, field: &str, list: Option<&Value>) {
    let Some(map) = list.and_then(Value::as_object) else {
        return;
    };
    for (name, q) in map {
        let f = format!("{field}[{name}]");
        for m in qualified_name(name) {
            errs.invalid(&f, &Value::String(name.clone()), m);
        }
        match q.as_str().and_then(crate::quantity::millis) {
            None => errs.invalid(
                &f,
                q,
                "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
            ),
            Some(v) if v < 0 => errs.invalid(&f, q, "must be greater than or equal to 0"),
            Some(_) => {}
        }
    }
}

/// Checks a port number (1-65535) at `field`.
pub fn port_number(errs: &mut Errors, field: &str, port: Option<&Value>) {
    match port {
        None => errs.required(field),
        Some(p) => {
            if !p.as_i64().is_some_and(|n| (1..=65535).contains(&n)) {
                errs.invalid(field, p, "must be between 1 and 65535, inclusive");
            }
        }
    }
}

/// Checks an IANA service name (named ports): at most 15 characters, lowercase
/// alphanumerics and '-', at least one letter, no '--', not at either end.
pub fn port_name(errs: &mut Errors, field: &str, name: &Value) {
    let s = name.as_str().unwrap_or_default();
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.contains("--")
        && !s.starts_with('-')
        && !s.ends_with('-');
    if !ok {
        errs.invalid(field, name, "must be no more than 15 characters, contain only lowercase alphanumerics and '-', contain at least one letter, and not begin or end with '-' or contain '--'");
    }
}

/// Checks a protocol (`TCP`, `UDP`, `SCTP`) at `field`, if set.
pub fn protocol(errs: &mut Errors, field: &str, protocol: Option<&Value>) {
    if let Some(p) = protocol.and_then(Value::as_str) {
        if !["TCP", "UDP", "SCTP"].contains(&p) {
            errs.unsupported(field, p, &["SCTP", "TCP", "UDP"]);
        }
    }
}

/// Checks that an integer at `field` is not negative.
pub fn non_negative(errs: &mut Errors, field: &str, value: Option<&Value>) {
    if let Some(v) = value {
        if v.as_i64().is_some_and(|n| n < 0) {
            errs.invalid(field, v, "must be greater than or equal to 0");
        }
    }
}

/// Checks an IPv4 or IPv6 address at `field`.
pub fn ip(errs: &mut Errors, field: &str, value: &Value) {
    if value
        .as_str()
        .and_then(|s| s.parse::<std::net::IpAddr>().ok())
        .is_none()
    {
        errs.invalid(
            field,
            value,
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_follow_their_rules() {
        assert!(dns1123_subdomain("web.example-1").is_empty());
        assert!(!dns1123_subdomain("Web").is_empty());
        assert!(!dns1123_subdomain("-web").is_empty());
        assert!(dns1123_label("kube-system").is_empty());
        assert!(!dns1123_label("a.b").is_empty());
        assert!(!dns1123_label(&"a".repeat(64)).is_empty());
        assert!(dns1035_label("web").is_empty());
        assert!(!dns1035_label("1web").is_empty());
    }

    #[test]
    fn label_keys_and_values() {
        assert!(qualified_name("app.kubernetes.io/name").is_empty());
        assert!(qualified_name("App_1").is_empty());
        assert!(!qualified_name("/name").is_empty());
        assert!(!qualified_name("bad key").is_empty());
        assert!(!qualified_name("Example.com/x").is_empty());
        assert!(label_value("").is_empty());
        assert!(label_value("v1.2_x").is_empty());
        assert!(!label_value("-x").is_empty());
        let mut errs = Errors::default();
        labels(
            &mut errs,
            "metadata.labels",
            Some(&json!({"ok": "yes", "bad key": "v", "k": "no way"})),
        );
        let fields: Vec<&str> = errs.0.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["metadata.labels", "metadata.labels[k]"]);
    }

    #[test]
    fn metadata_collects_every_problem() {
        let mut errs = Errors::default();
        let meta = json!({"name": "Bad_Name", "namespace": "default", "finalizers": ["ok/x", "not ok"],
            "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "a"}]});
        object_meta(&mut errs, &meta, NameRule::Subdomain, true);
        let fields: Vec<&str> = errs.0.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "metadata.finalizers[1]",
                "metadata.ownerReferences[0].uid"
            ]
        );
        assert_eq!(errs.0[2].message, "Required value");
    }
}
