//! Services and their endpoints: defaults, validation (ports, types, the immutable
//! cluster IP), the cluster IPs and node ports a Service holds, and table columns.
//!
//! A Service's cluster IP and node ports are unique cluster-wide. Each allocated value is
//! also a key in the store (`/registry/ranges/...`), created in the same transaction as
//! the Service with an "absent" compare, so two Services can never share one.

use serde_json::{json, Value};

use super::{cell, set_default, Column};
use crate::api::validation::{self as v, Errors};

/// The range cluster IPs come from (kube-apiserver's default, 10.96.0.0/12).
pub const CLUSTER_IP_BASE: u32 = u32::from_be_bytes([10, 96, 0, 0]);
/// Addresses in the cluster IP range.
pub const CLUSTER_IP_COUNT: u32 = 1 << 20;
/// The node port range (kube-apiserver's default).
pub const NODE_PORTS: std::ops::RangeInclusive<i64> = 30000..=32767;
/// The cluster IP of the `kubernetes` Service, the first of the range.
pub const API_SERVICE_IP: &str = "10.96.0.1";

/// Service defaults.
pub fn defaults(svc: &mut Value) {
    let Some(spec) = svc.get_mut("spec").filter(|s| s.is_object()) else {
        return;
    };
    set_default(spec, "type", json!("ClusterIP"));
    let kind = spec["type"].as_str().unwrap_or_default().to_string();
    if kind == "ExternalName" {
        return;
    }
    set_default(spec, "sessionAffinity", json!("None"));
    set_default(spec, "internalTrafficPolicy", json!("Cluster"));
    if kind == "NodePort" || kind == "LoadBalancer" {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if kind == "LoadBalancer" {
        set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    for p in spec
        .get_mut("ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        set_default(p, "protocol", json!("TCP"));
        if let Some(port) = p.get("port").cloned() {
            set_default(p, "targetPort", port);
        }
    }
}

/// An update keeps what the server allocated when the new object leaves it out, as
/// kube-apiserver does (so `kubectl replace` of a manifest without a clusterIP works).
pub fn prepare_update(svc: &mut Value, old: &Value) {
    let Some(spec) = svc.get_mut("spec").filter(|s| s.is_object()) else {
        return;
    };
    if spec["type"] == "ExternalName" {
        return;
    }
    for field in [
        "clusterIP",
        "clusterIPs",
        "ipFamilies",
        "ipFamilyPolicy",
        "healthCheckNodePort",
    ] {
        if spec.get(field).is_none_or(|v| v.is_null() || v == "") {
            if let Some(old) = old.pointer(&format!("/spec/{field}")) {
                spec[field] = old.clone();
            }
        }
    }
    let old_ports = old
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for p in spec
        .get_mut("ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if p.get("nodePort").is_none_or(Value::is_null) {
            let same = old_ports
                .iter()
                .find(|o| o.get("port") == p.get("port") && o.get("protocol") == p.get("protocol"));
            if let Some(np) = same.and_then(|o| o.get("nodePort")) {
                p["nodePort"] = np.clone();
            }
        }
    }
}

/// Whether the Service gets a cluster IP (not ExternalName, not headless).
fn wants_cluster_ip(svc: &Value) -> bool {
    cell::s(svc, "/spec/type") != "ExternalName" && cell::s(svc, "/spec/clusterIP") != "None"
}

/// Whether the Service's ports get node ports.
fn wants_node_ports(svc: &Value) -> bool {
    match cell::s(svc, "/spec/type") {
        "NodePort" => true,
        "LoadBalancer" => svc.pointer("/spec/allocateLoadBalancerNodePorts") != Some(&json!(false)),
        _ => false,
    }
}

/// Fills a cluster IP and node ports where the Service asks for them and names none;
/// `random` draws the candidates. Returns the values the Service holds.
pub fn allocate(svc: &mut Value, mut random: impl FnMut(u32) -> u32) -> Vec<Allocation> {
    if wants_cluster_ip(svc) && cell::s(svc, "/spec/clusterIP").is_empty() {
        // Skip the network address and the `kubernetes` Service's address.
        let n = 2 + random(CLUSTER_IP_COUNT - 3);
        let ip = std::net::Ipv4Addr::from(CLUSTER_IP_BASE + n).to_string();
        svc["spec"]["clusterIP"] = json!(ip);
    }
    if wants_cluster_ip(svc) {
        let ip = cell::s(svc, "/spec/clusterIP").to_string();
        svc["spec"]["clusterIPs"] = json!([ip]);
        svc["spec"]["ipFamilies"] = json!(["IPv4"]);
        set_default(&mut svc["spec"], "ipFamilyPolicy", json!("SingleStack"));
    }
    if wants_node_ports(svc) {
        let span = (NODE_PORTS.end() - NODE_PORTS.start() + 1) as u32;
        for p in svc["spec"]["ports"].as_array_mut().into_iter().flatten() {
            if p.get("nodePort").is_none_or(|n| n.is_null() || n == 0) {
                p["nodePort"] = json!(NODE_PORTS.start() + random(span) as i64);
            }
        }
    }
    held(svc)
}

/// A value a Service holds exclusively.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Allocation {
    /// A cluster IP.
    ClusterIp(String),
    /// A node port (per protocol, as Kubernetes allows TCP and UDP on one number).
    NodePort(i64),
}

impl Allocation {
    /// The store key that marks this value as taken.
    pub fn key(&self) -> String {
        match self {
            Allocation::ClusterIp(ip) => format!("/registry/ranges/serviceips/{ip}"),
            Allocation::NodePort(p) => format!("/registry/ranges/servicenodeports/{p}"),
        }
    }
}

/// The cluster IP and node ports a Service holds.
pub fn held(svc: &Value) -> Vec<Allocation> {
    let mut out = Vec::new();
    let ip = cell::s(svc, "/spec/clusterIP");
    if wants_cluster_ip(svc) && !ip.is_empty() {
        out.push(Allocation::ClusterIp(ip.to_string()));
    }
    for p in svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(n) = p.get("nodePort").and_then(Value::as_i64).filter(|n| *n != 0) {
            let a = Allocation::NodePort(n);
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

/// Service validation.
pub fn validate(svc: &Value, old: Option<&Value>, errs: &mut Errors) {
    let kind = svc.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP");
    let types = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
    if !types.contains(&kind) {
        errs.unsupported("spec.type", kind, &types);
    }
    let ports = v::items(svc, "", "spec.ports");
    let headless = cell::s(svc, "/spec/clusterIP") == "None";
    if ports.is_empty() && kind != "ExternalName" && !headless {
        errs.required("spec.ports");
    }
    let mut names = std::collections::HashSet::new();
    let mut seen = std::collections::HashSet::new();
    for (field, p) in &ports {
        let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            errs.required(&format!("{field}.name"));
        }
        if !name.is_empty() {
            for m in v::dns1123_label(name) {
                errs.invalid(&format!("{field}.name"), &json!(name), m);
            }
            if !names.insert(name.to_string()) {
                errs.duplicate(&format!("{field}.name"), &json!(name));
            }
        }
        v::port_number(errs, &format!("{field}.port"), p.get("port"));
        v::protocol(errs, &format!("{field}.protocol"), p.get("protocol"));
        let key = (p.get("port").cloned(), p.get("protocol").cloned());
        if !seen.insert(format!("{key:?}")) {
            errs.duplicate(field, &json!({"port": p.get("port"), "protocol": p.get("protocol")}));
        }
        match p.get("targetPort") {
            Some(Value::String(s)) => v::port_name(errs, &format!("{field}.targetPort"), &json!(s)),
            Some(t @ Value::Number(_)) => v::port_number(errs, &format!("{field}.targetPort"), Some(t)),
            _ => {}
        }
        if let Some(np) = p.get("nodePort").filter(|n| !n.is_null() && *n != 0) {
            if !(kind == "NodePort" || kind == "LoadBalancer") {
                errs.forbidden(
                    &format!("{field}.nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                );
            } else if !np.as_i64().is_some_and(|n| NODE_PORTS.contains(&n)) {
                errs.invalid(
                    &format!("{field}.nodePort"),
                    np,
                    format!(
                        "provided port is not in the valid range. The range of valid ports is {}-{}",
                        NODE_PORTS.start(),
                        NODE_PORTS.end()
                    ),
                );
            }
        }
    }
    v::labels(errs, "spec.selector", svc.pointer("/spec/selector"));
    if kind == "ExternalName" {
        let name = cell::s(svc, "/spec/externalName");
        if name.is_empty() {
            errs.required("spec.externalName");
        } else {
            for m in v::dns1123_subdomain(name.trim_end_matches('.')) {
                errs.invalid("spec.externalName", &json!(name), m);
            }
        }
    }
    if let Some(ip) = svc.pointer("/spec/clusterIP").filter(|ip| *ip != "" && *ip != "None") {
        v::ip(errs, "spec.clusterIP", ip);
    }
    if let Some(policy) = svc.pointer("/spec/sessionAffinity").and_then(Value::as_str) {
        if !["ClientIP", "None"].contains(&policy) {
            errs.unsupported("spec.sessionAffinity", policy, &["ClientIP", "None"]);
        }
    }
    if let Some(old) = old {
        let (new_ip, old_ip) = (cell::s(svc, "/spec/clusterIP"), cell::s(old, "/spec/clusterIP"));
        let changes_type = (kind == "ExternalName") != (cell::s(old, "/spec/type") == "ExternalName");
        if !old_ip.is_empty() && new_ip != old_ip && !changes_type {
            errs.invalid("spec.clusterIPs[0]", &json!(new_ip), "may not change once set");
        }
    }
}

/// `kubectl get services` columns.
pub static COLUMNS: &[Column] = &[
    Column::new("Name", "string", 0),
    Column::new("Type", "string", 0),
    Column::new("Cluster-IP", "string", 0),
    Column::new("External-IP", "string", 0),
    Column::new("Port(s)", "string", 0),
    Column::new("Age", "string", 0),
    Column::new("Selector", "string", 1),
];

/// One Service's row.
pub fn cells(svc: &Value) -> Vec<Value> {
    let kind = cell::s(svc, "/spec/type");
    let ports: Vec<String> = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) => format!("{}:{np}/{proto}", cell::n(p, "/port")),
                None => format!("{}/{proto}", cell::n(p, "/port")),
            }
        })
        .collect();
    let mut external: Vec<String> = svc
        .pointer("/spec/externalIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.as_str().map(String::from))
        .collect();
    let external = match kind {
        "ExternalName" => cell::s(svc, "/spec/externalName").to_string(),
        "LoadBalancer" => {
            for ing in svc
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let ip = cell::s(ing, "/ip");
                external.push(if ip.is_empty() {
                    cell::s(ing, "/hostname").to_string()
                } else {
                    ip.to_string()
                });
            }
            if external.is_empty() {
                "<pending>".into()
            } else {
                external.join(",")
            }
        }
        _ if external.is_empty() => "<none>".into(),
        _ => external.join(","),
    };
    vec![
        cell::name(svc),
        json!(kind),
        cell::or_none(cell::s(svc, "/spec/clusterIP")),
        json!(external),
        cell::or_none(&ports.join(",")),
        cell::age(svc),
        cell::map(svc, "/spec/selector"),
    ]
}

/// Endpoints validation.
pub fn validate_endpoints(ep: &Value, _old: Option<&Value>, errs: &mut Errors) {
    for (sf, subset) in v::items(ep, "", "subsets") {
        for list in ["addresses", "notReadyAddresses"] {
            for (af, a) in v::items(subset, &sf, list) {
                v::ip(errs, &format!("{af}.ip"), a.get("ip").unwrap_or(&Value::Null));
            }
        }
        for (pf, p) in v::items(subset, &sf, "ports") {
            v::port_number(errs, &format!("{pf}.port"), p.get("port"));
            v::protocol(errs, &format!("{pf}.protocol"), p.get("protocol"));
        }
    }
}

/// Endpoints defaults.
pub fn endpoints_defaults(ep: &mut Value) {
    for subset in ep
        .get_mut("subsets")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        for p in subset
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            set_default(p, "protocol", json!("TCP"));
        }
    }
}

/// `ip:port` pairs, the first three and a count of the rest, as kubectl shows them.
fn endpoint_list(pairs: Vec<String>) -> Value {
    match pairs.len() {
        0 => json!("<none>"),
        n if n > 3 => json!(format!("{} + {} more...", pairs[..3].join(","), n - 3)),
        _ => json!(pairs.join(",")),
    }
}

/// `kubectl get endpoints` columns.
pub static ENDPOINTS_COLUMNS: &[Column] = &[
    Column::new("Name", "string", 0),
    Column::new("Endpoints", "string", 0),
    Column::new("Age", "string", 0),
];

/// One Endpoints' row.
pub fn endpoints_cells(ep: &Value) -> Vec<Value> {
    let mut pairs = Vec::new();
    for subset in ep.get("subsets").and_then(Value::as_array).into_iter().flatten() {
        let ports: Vec<i64> = subset
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| cell::n(p, "/port"))
            .collect();
        for a in subset.get("addresses").and_then(Value::as_array).into_iter().flatten() {
            let ip = cell::s(a, "/ip");
            if ports.is_empty() {
                pairs.push(ip.to_string());
            }
            pairs.extend(ports.iter().map(|p| format!("{ip}:{p}")));
        }
    }
    vec![cell::name(ep), endpoint_list(pairs), cell::age(ep)]
}

/// EndpointSlice validation: the address type is required and fixed.
pub fn validate_slice(slice: &Value, old: Option<&Value>, errs: &mut Errors) {
    let types = ["FQDN", "IPv4", "IPv6"];
    match slice.get("addressType").and_then(Value::as_str) {
        None => errs.required("addressType"),
        Some(t) if !types.contains(&t) => errs.unsupported("addressType", t, &types),
        Some(_) => {}
    }
    for (ef, e) in v::items(slice, "", "endpoints") {
        let n = e.get("addresses").and_then(Value::as_array).map_or(0, Vec::len);
        if n == 0 {
            errs.required(&format!("{ef}.addresses"));
        } else if n > 100 {
            errs.0.push(crate::api::error::Cause::new(
                "FieldValueTooMany",
                format!("{ef}.addresses"),
                format!("Too many: {n}: must have at most 100 items"),
            ));
        }
    }
    for (pf, p) in v::items(slice, "", "ports") {
        if let Some(port) = p.get("port").filter(|p| !p.is_null()) {
            v::port_number(errs, &format!("{pf}.port"), Some(port));
        }
        v::protocol(errs, &format!("{pf}.protocol"), p.get("protocol"));
    }
    if let Some(old) = old {
        errs.immutable("addressType", slice.get("addressType"), old.get("addressType"));
    }
}

/// `kubectl get endpointslices` columns.
pub static SLICE_COLUMNS: &[Column] = &[
    Column::new("Name", "string", 0),
    Column::new("AddressType", "string", 0),
    Column::new("Ports", "string", 0),
    Column::new("Endpoints", "string", 0),
    Column::new("Age", "string", 0),
];

/// One EndpointSlice's row.
pub fn slice_cells(slice: &Value) -> Vec<Value> {
    let ports: Vec<String> = slice
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| cell::n(p, "/port").to_string())
        .collect();
    let addresses: Vec<String> = slice
        .get("endpoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|e| {
            e.get("addresses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    vec![
        cell::name(slice),
        json!(cell::s(slice, "/addressType")),
        cell::or_none(&ports.join(",")),
        endpoint_list(addresses),
        cell::age(slice),
    ]
}

/// Ingress validation: each rule's paths name a backend and a valid path type.
pub fn validate_ingress(ing: &Value, _old: Option<&Value>, errs: &mut Errors) {
    let types = ["Exact", "ImplementationSpecific", "Prefix"];
    for (rf, rule) in v::items(ing, "", "spec.rules") {
        if let Some(host) = rule.get("host").and_then(Value::as_str) {
            for m in v::dns1123_subdomain(host.trim_start_matches("*.")) {
                errs.invalid(&format!("{rf}.host"), &json!(host), m);
            }
        }
        for (pf, path) in v::items(rule, &rf, "http.paths") {
            match path.get("pathType").and_then(Value::as_str) {
                None => errs.required(&format!("{pf}.pathType")),
                Some(t) if !types.contains(&t) => errs.unsupported(&format!("{pf}.pathType"), t, &types),
                Some(_) => {}
            }
            if path.get("backend").is_none_or(Value::is_null) {
                errs.required(&format!("{pf}.backend"));
            }
        }
    }
}

/// `kubectl get ingresses` columns.
pub static INGRESS_COLUMNS: &[Column] = &[
    Column::new("Name", "string", 0),
    Column::new("Class", "string", 0),
    Column::new("Hosts", "string", 0),
    Column::new("Address", "string", 0),
    Column::new("Ports", "string", 0),
    Column::new("Age", "string", 0),
];

/// One Ingress's row.
pub fn ingress_cells(ing: &Value) -> Vec<Value> {
    let hosts: Vec<&str> = ing
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|r| cell::s(r, "/host"))
        .map(|h| if h.is_empty() { "*" } else { h })
        .collect();
    let addresses: Vec<&str> = ing
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|a| {
            if cell::s(a, "/ip").is_empty() {
                cell::s(a, "/hostname")
            } else {
                cell::s(a, "/ip")
            }
        })
        .collect();
    let tls = ing
        .pointer("/spec/tls")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    vec![
        cell::name(ing),
        cell::or_none(cell::s(ing, "/spec/ingressClassName")),
        json!(if hosts.is_empty() {
            "*".to_string()
        } else {
            hosts.join(",")
        }),
        json!(addresses.join(",")),
        json!(if tls { "80, 443" } else { "80" }),
        cell::age(ing),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_default_allocate_and_keep_their_ip() {
        let mut svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "selector": {"app": "web"},
            "ports": [{"port": 80}]}});
        defaults(&mut svc);
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
        let mut draws = [5u32, 7].into_iter();
        let held = allocate(&mut svc, |_| draws.next().unwrap_or(0));
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.7");
        assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30007);
        assert_eq!(
            held,
            [Allocation::ClusterIp("10.96.0.7".into()), Allocation::NodePort(30007)]
        );
        let mut errs = Errors::default();
        validate(&svc, None, &mut errs);
        assert!(errs.is_empty(), "{:?}", errs.0);

        let mut replaced = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}});
        prepare_update(&mut replaced, &svc);
        assert_eq!(replaced["spec"]["clusterIP"], "10.96.0.7");
        assert_eq!(replaced["spec"]["ports"][0]["nodePort"], 30007);

        let mut moved = svc.clone();
        moved["spec"]["clusterIP"] = json!("10.96.0.9");
        let mut errs = Errors::default();
        validate(&moved, Some(&svc), &mut errs);
        assert_eq!(errs.0[0].field, "spec.clusterIPs[0]");
    }

    #[test]
    fn service_ports_are_checked() {
        let svc = json!({"metadata": {"name": "web"}, "spec": {"type": "ClusterIP",
            "ports": [{"port": 80, "nodePort": 30001}, {"port": 0, "name": "b"}]}});
        let mut errs = Errors::default();
        validate(&svc, None, &mut errs);
        let fields: Vec<&str> = errs.0.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.ports[0].name", "spec.ports[0].nodePort", "spec.ports[1].port"]
        );
    }
}
