//! PersistentVolumes and PersistentVolumeClaims. Kairn stores and validates them (so
//! manifests that carry them apply, and `kubectl apply --prune` finds every kind it looks
//! for); no controller binds claims to volumes yet.

use serde_json::{json, Value};

use super::{cell, set_default, Column};
use crate::api::validation::{self as v, Errors};

const ACCESS_MODES: [&str; 4] = ["ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"];

fn access_modes(errs: &mut Errors, obj: &Value, base: &str) {
    let modes = v::items(obj, base, "accessModes");
    for (field, m) in &modes {
        let m = m.as_str().unwrap_or_default();
        if !ACCESS_MODES.contains(&m) {
            errs.unsupported(field, m, &ACCESS_MODES);
        }
    }
}

/// PersistentVolumeClaim defaults.
pub fn claim_defaults(pvc: &mut Value) {
    if let Some(spec) = pvc.get_mut("spec").filter(|s| s.is_object()) {
        set_default(spec, "volumeMode", json!("Filesystem"));
    }
}

/// A new claim waits for a volume.
pub fn claim_prepare_create(pvc: &mut Value) {
    pvc["status"] = json!({"phase": "Pending"});
}

/// PersistentVolumeClaim validation: access modes and a storage request; once created,
/// only the requested size may change.
pub fn validate_claim(pvc: &Value, old: Option<&Value>, errs: &mut Errors) {
    let spec = pvc.get("spec").unwrap_or(&Value::Null);
    if spec
        .get("accessModes")
        .and_then(Value::as_array)
        .is_none_or(|m| m.is_empty())
    {
        errs.required("spec.accessModes");
    }
    access_modes(errs, pvc, "spec");
    if spec.pointer("/resources/requests/storage").is_none() {
        errs.required("spec.resources[storage]");
    }
    v::resource_list(errs, "spec.resources.requests", spec.pointer("/resources/requests"));
    if let Some(old) = old {
        let fixed = |o: &Value| {
            let mut s = o.get("spec").cloned().unwrap_or_default();
            if let Some(obj) = s.as_object_mut() {
                obj.remove("resources");
                obj.remove("volumeName");
            }
            s
        };
        if fixed(pvc) != fixed(old) {
            errs.forbidden("spec", "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims");
        }
    }
}

/// `kubectl get persistentvolumeclaims` columns.
pub static CLAIM_COLUMNS: &[Column] = &[
    Column::new("Name", "string", 0),
    Column::new("Status", "string", 0),
    Column::new("Volume", "string", 0),
    Column::new("Capacity", "string", 0),
    Column::new("Access Modes", "string", 0),
    Column::new("StorageClass", "string", 0),
    Column::new("VolumeAttributesClass", "string", 0),
    Column::new("Age", "string", 0),
    Column::new("VolumeMode", "string", 1),
];

/// `RWO,ROX` as kubectl abbreviates access modes.
fn modes(obj: &Value, pointer: &str) -> String {
    obj.pointer(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// One claim's row.
pub fn claim_cells(pvc: &Value) -> Vec<Value> {
    vec![
        cell::name(pvc),
        json!(cell::s(pvc, "/status/phase")),
        json!(cell::s(pvc, "/spec/volumeName")),
        json!(cell::s(pvc, "/status/capacity/storage")),
        json!(modes(pvc, "/status/accessModes")),
        cell::or_none(cell::s(pvc, "/spec/storageClassName")),
        cell::or_none(cell::s(pvc, "/spec/volumeAttributesClassName")),
        cell::age(pvc),
        json!(cell::s(pvc, "/spec/volumeMode")),
    ]
}

/// PersistentVolume defaults.
pub fn volume_defaults(pv: &mut Value) {
    if let Some(spec) = pv.get_mut("spec").filter(|s| s.is_object()) {
        set_default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
        set_default(spec, "volumeMode", json!("Filesystem"));
    }
}

/// A new volume is waiting to become available.
pub fn volume_prepare_create(pv: &mut Value) {
    pv["status"] = json!({"phase": "Pending"});
}

/// PersistentVolume validation: a capacity, access modes, a reclaim policy.
pub fn validate_volume(pv: &Value, _old: Option<&Value>, errs: &mut Errors) {
    if pv.pointer("/spec/capacity/storage").is_none() {
        errs.required("spec.capacity");
    }
    v::resource_list(errs, "spec.capacity", pv.pointer("/spec/capacity"));
    access_modes(errs, pv, "spec");
    if let Some(p) = pv
        .pointer("/spec/persistentVolumeReclaimPolicy")
        .and_then(Value::as_str)
    {
        if !["Delete", "Recycle", "Retain"].contains(&p) {
            errs.unsupported(
                "spec.persistentVolumeReclaimPolicy",
                p,
                &["Delete", "Recycle", "Retain"],
            );
        }
    }
}

/// `kubectl get persistentvolumes` columns.
pub static VOLUME_COLUMNS: &[Column] = &[
    Column::new("Name", "string", 0),
    Column::new("Capacity", "string", 0),
    Column::new("Access Modes", "string", 0),
    Column::new("Reclaim Policy", "string", 0),
    Column::new("Status", "string", 0),
    Column::new("Claim", "string", 0),
    Column::new("StorageClass", "string", 0),
    Column::new("VolumeAttributesClass", "string", 0),
    Column::new("Reason", "string", 0),
    Column::new("Age", "string", 0),
    Column::new("VolumeMode", "string", 1),
];

/// One volume's row.
pub fn volume_cells(pv: &Value) -> Vec<Value> {
    let claim = match (
        cell::s(pv, "/spec/claimRef/namespace"),
        cell::s(pv, "/spec/claimRef/name"),
    ) {
        (_, "") => String::new(),
        (ns, name) => format!("{ns}/{name}"),
    };
    vec![
        cell::name(pv),
        json!(cell::s(pv, "/spec/capacity/storage")),
        json!(modes(pv, "/spec/accessModes")),
        json!(cell::s(pv, "/spec/persistentVolumeReclaimPolicy")),
        json!(cell::s(pv, "/status/phase")),
        json!(claim),
        json!(cell::s(pv, "/spec/storageClassName")),
        cell::or_none(cell::s(pv, "/spec/volumeAttributesClassName")),
        json!(cell::s(pv, "/status/reason")),
        cell::age(pv),
        json!(cell::s(pv, "/spec/volumeMode")),
    ]
}
