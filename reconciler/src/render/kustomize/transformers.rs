//! The builtin transformers of a kustomization, run in kustomize's order:
//! strategic merge patches, patches, namespace, name prefix, name suffix, labels,
//! annotations, JSON 6902 patches, replicas, images.

use serde_json::{Map, Value};

use super::fieldspec::{self, FieldSpec, Leaf};
use super::kustomization::{Image, Kustomization, Label, StringMap};
use super::patches;
use super::resource::{cluster_scoped, Resource};
use super::Context;
use crate::manifest::ManifestError;

/// Runs every transformer the kustomization configures over its resources.
pub fn run(ctx: &Context, k: &Kustomization, resources: &mut Vec<Resource>) -> Result<(), ManifestError> {
    patches::strategic_merge(ctx, &k.patches_strategic_merge, resources)?;
    patches::patches(ctx, &k.patches, resources)?;
    if !k.namespace.is_empty() {
        namespace(ctx, &k.namespace, resources)?;
    }
    if !k.name_prefix.is_empty() {
        rename(resources, |name| format!("{}{name}", k.name_prefix));
    }
    if !k.name_suffix.is_empty() {
        rename(resources, |name| format!("{name}{}", k.name_suffix));
    }
    for (i, label) in k.labels.iter().enumerate() {
        labels(ctx, &format!("labels[{i}]"), label, resources)?;
    }
    if !k.common_labels.is_empty() {
        let specs: Vec<FieldSpec> = common_label_specs().collect();
        set_map(ctx, "commonLabels", &k.common_labels, &specs, resources)?;
    }
    if !k.common_annotations.is_empty() {
        set_map(
            ctx,
            "commonAnnotations",
            &k.common_annotations,
            fieldspec::ANNOTATIONS,
            resources,
        )?;
    }
    patches::json6902(ctx, &k.patches_json6902, resources)?;
    for (i, replica) in k.replicas.iter().enumerate() {
        replicas(ctx, &format!("replicas[{i}]"), &replica.name, replica.count, resources)?;
    }
    for (i, image) in k.images.iter().enumerate() {
        images(ctx, &format!("images[{i}]"), image, resources)?;
    }
    Ok(())
}

/// Every field `commonLabels` (and `labels` with `includeSelectors`) write.
fn common_label_specs() -> impl Iterator<Item = FieldSpec> {
    fieldspec::SELECTOR_LABELS
        .iter()
        .chain(fieldspec::METADATA_LABELS)
        .chain(fieldspec::VOLUME_CLAIM_TEMPLATE_LABELS)
        .copied()
}

/// kustomize's `NamespaceTransformer`.
fn namespace(ctx: &Context, ns: &str, resources: &mut [Resource]) -> Result<(), ManifestError> {
    for r in resources.iter_mut() {
        r.store_previous_id();
        let id = r.cur_id();
        if !cluster_scoped(&id.group, &id.kind) {
            r.set_namespace(ns);
        }
        let api_version = r.str_at("/apiVersion").to_string();
        // kustomize renames a Namespace object to the kustomization's namespace.
        if id.kind == "Namespace" && api_version == "v1" {
            r.set_name(ns);
        }
        let specs = [
            FieldSpec {
                group: "apiregistration.k8s.io",
                version: "",
                kind: "APIService",
                path: "spec/service/namespace",
                create: true,
            },
            FieldSpec {
                group: "apiextensions.k8s.io",
                version: "",
                kind: "CustomResourceDefinition",
                path: "spec/conversion/webhook/clientConfig/service/namespace",
                create: false,
            },
        ];
        for spec in specs {
            spec.apply(&mut r.object, Leaf::Scalar, &mut |v| {
                *v = Value::String(ns.into());
                Ok(())
            })
            .map_err(|e| ctx.error("namespace", e))?;
        }
        // The `default` ServiceAccount of a (Cluster)RoleBinding follows the namespace
        // (kustomize's `setRoleBindingSubjects: defaultOnly`).
        if id.kind == "RoleBinding" || id.kind == "ClusterRoleBinding" {
            if let Some(Value::Array(subjects)) = r.object.get_mut("subjects") {
                for s in subjects.iter_mut().filter_map(Value::as_object_mut) {
                    if s.get("name").and_then(Value::as_str) == Some("default") {
                        s.insert("namespace".into(), Value::String(ns.into()));
                    }
                }
            }
        }
    }
    for (i, r) in resources.iter().enumerate() {
        let id = r.cur_id();
        if resources[..i].iter().any(|o| o.cur_id() == id) {
            return Err(ctx.error(
                "namespace",
                format!("namespace transformation produces ID conflict: {}", id.describe()),
            ));
        }
    }
    Ok(())
}

/// kustomize's `PrefixTransformer` / `SuffixTransformer` on `metadata.name`.
fn rename(resources: &mut [Resource], new_name: impl Fn(&str) -> String) {
    for r in resources.iter_mut() {
        let org = r.org_id();
        // Names other objects cannot be renamed under: kinds and namespaces are global.
        let skip = org.kind == "CustomResourceDefinition"
            || org.kind == "Namespace"
            || (org.kind == "APIService" && org.group == "apiregistration.k8s.io");
        if skip {
            continue;
        }
        r.store_previous_id();
        let name = new_name(r.name());
        r.set_name(&name);
    }
}

/// One `labels` entry.
fn labels(ctx: &Context, field: &str, label: &Label, resources: &mut [Resource]) -> Result<(), ManifestError> {
    let specs: Vec<FieldSpec> = if label.include_selectors {
        common_label_specs().collect()
    } else {
        let mut specs = Vec::new();
        if label.include_templates {
            specs.extend_from_slice(fieldspec::METADATA_LABELS);
        }
        specs.push(fieldspec::METADATA_LABELS[0]);
        specs
    };
    set_map(ctx, field, &label.pairs, &specs, resources)
}

/// Sets every entry of `pairs` in the maps `specs` name (labels, annotations).
fn set_map(
    ctx: &Context,
    field: &str,
    pairs: &StringMap,
    specs: &[FieldSpec],
    resources: &mut [Resource],
) -> Result<(), ManifestError> {
    for r in resources.iter_mut() {
        for spec in specs {
            spec.apply(&mut r.object, Leaf::Map, &mut |node| {
                if node.is_null() {
                    *node = Value::Object(Map::new());
                }
                let Value::Object(map) = node else {
                    return Err("expected a mapping".into());
                };
                for (k, v) in pairs {
                    map.insert(k.clone(), Value::String(v.0.clone()));
                }
                Ok(())
            })
            .map_err(|e| ctx.error(field, format!("{}: {e}", r.cur_id().describe())))?;
        }
    }
    Ok(())
}

/// kustomize's `ReplicaCountTransformer`: an entry matching nothing is an error.
fn replicas(
    ctx: &Context,
    field: &str,
    name: &str,
    count: i64,
    resources: &mut [Resource],
) -> Result<(), ManifestError> {
    let mut found = false;
    for spec in fieldspec::REPLICAS {
        for r in resources.iter_mut() {
            let hit = r
                .all_ids()
                .iter()
                .any(|id| id.name == name && id.gvk_selected(spec.group, spec.version, spec.kind));
            if !hit {
                continue;
            }
            found = true;
            spec.apply(&mut r.object, Leaf::Scalar, &mut |v| {
                *v = Value::from(count);
                Ok(())
            })
            .map_err(|e| ctx.error(field, e))?;
        }
    }
    if found {
        Ok(())
    } else {
        Err(ctx.error(
            field,
            format!("resource with name {name} does not match a Deployment, ReplicationController, ReplicaSet or StatefulSet"),
        ))
    }
}

/// kustomize's `ImageTagTransformer`: every `containers` / `initContainers` list at any
/// depth (its legacy walk), and image volume sources.
fn images(ctx: &Context, field: &str, image: &Image, resources: &mut [Resource]) -> Result<(), ManifestError> {
    let update = |value: &mut Value| {
        if let Value::String(s) = value {
            if let Some(new) = updated_image(s, image) {
                *s = new;
            }
        }
    };
    for r in resources.iter_mut() {
        if r.kind() == "CustomResourceDefinition" {
            continue;
        }
        walk_containers(&mut r.object, &update);
        for spec in fieldspec::IMAGE_VOLUMES {
            spec.apply(&mut r.object, Leaf::None, &mut |v| {
                update(v);
                Ok(())
            })
            .map_err(|e| ctx.error(field, e))?;
        }
    }
    Ok(())
}

fn walk_containers(node: &mut Value, update: &dyn Fn(&mut Value)) {
    match node {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                walk_containers(value, update);
                if key == "containers" || key == "initContainers" {
                    if let Value::Array(items) = value {
                        for image in items.iter_mut().filter_map(|c| c.get_mut("image")) {
                            update(image);
                        }
                    }
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| walk_containers(i, update)),
        _ => {}
    }
}

/// The new reference for `current` when `image.name` matches it (kustomize's
/// `imageTagUpdater`), else `None`.
pub fn updated_image(current: &str, image: &Image) -> Option<String> {
    if !image_matches(current, &image.name) {
        return None;
    }
    let (mut name, mut tag, mut digest) = split_image(current);
    if !image.new_name.is_empty() {
        name = image.new_name.clone();
    }
    let new_tag = &image.new_tag.0;
    match (new_tag.is_empty(), image.digest.is_empty()) {
        (false, false) => {
            tag = new_tag.clone();
            digest = image.digest.clone();
        }
        (false, true) => {
            tag = new_tag.clone();
            digest = String::new();
        }
        (true, false) => {
            tag = String::new();
            digest = image.digest.clone();
        }
        (true, true) => {}
    }
    if !tag.is_empty() {
        name = format!("{name}:{tag}");
    }
    if !digest.is_empty() {
        name = format!("{name}@{digest}");
    }
    Some(name)
}

/// kustomize's `IsImageMatched`: `name`, then an optional `:tag`, then an optional
/// `@algo:digest`.
fn image_matches(s: &str, name: &str) -> bool {
    let Some(rest) = s.strip_prefix(name) else { return false };
    let tag_char = |c: char| c.is_ascii_alphanumeric() || "_.{}-".contains(c);
    let (tag, digest) = match rest.find('@') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let tag_ok = tag.is_empty() || (tag.starts_with(':') && tag[1..].chars().all(tag_char));
    let digest_ok = digest.is_none_or(|d| {
        let Some((algo, hex)) = d.split_once(':') else {
            return false;
        };
        let algo_ok = !algo.is_empty()
            && algo
                .split(['.', '+', '_', '-'])
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric()));
        algo_ok && hex.chars().all(tag_char)
    });
    tag_ok && digest_ok
}

/// kustomize's `image.Split`: name, tag and digest of an image reference.
fn split_image(image: &str) -> (String, String, String) {
    // A registry port (`host:5000/x`) is not a tag: look only after the first slash.
    let slash = match image.find('/') {
        Some(i) if i > 0 => i,
        _ => 0,
    };
    let search = &image[slash..];
    let at = search.find('@').map(|i| i + slash);
    let colon = search.find(':').map(|i| i + slash);
    match (colon, at) {
        (None, None) => (image.into(), String::new(), String::new()),
        (c, Some(id)) if c.is_none_or(|c| id < c) => (image[..id].into(), String::new(), image[id + 1..].into()),
        (Some(ic), Some(id)) => (image[..ic].into(), image[ic + 1..id].into(), image[id + 1..].into()),
        (Some(ic), None) => (image[..ic].into(), image[ic + 1..].into(), String::new()),
        (None, Some(_)) => unreachable!("handled by the guard above"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::kustomization::Scalar;
    use super::*;

    fn image(name: &str, new_name: &str, new_tag: &str, digest: &str) -> Image {
        Image {
            name: name.into(),
            new_name: new_name.into(),
            new_tag: Scalar(new_tag.into()),
            digest: digest.into(),
        }
    }

    #[test]
    fn images_update_as_kustomize() {
        let cases = [
            ("nginx", image("nginx", "", "1.25", ""), Some("nginx:1.25")),
            ("nginx:1.0", image("nginx", "my/nginx", "", ""), Some("my/nginx:1.0")),
            (
                "nginx:1.0",
                image("nginx", "", "", "sha256:abc"),
                Some("nginx@sha256:abc"),
            ),
            ("nginx@sha256:abc", image("nginx", "", "2", ""), Some("nginx:2")),
            (
                "nginx:1@sha256:abc",
                image("nginx", "", "2", "sha256:def"),
                Some("nginx:2@sha256:def"),
            ),
            (
                "host:5000/app:1",
                image("host:5000/app", "", "2", ""),
                Some("host:5000/app:2"),
            ),
            ("nginx-extra:1", image("nginx", "", "2", ""), None),
            ("docker.io/nginx", image("nginx", "", "2", ""), None),
        ];
        for (current, img, want) in cases {
            assert_eq!(updated_image(current, &img).as_deref(), want, "{current} with {img:?}");
        }
    }

    #[test]
    fn split_image_separates_registry_ports_from_tags() {
        let cases = [
            ("a", ("a", "", "")),
            ("a:1", ("a", "1", "")),
            ("h:5000/a", ("h:5000/a", "", "")),
            ("h:5000/a:1@sha256:x", ("h:5000/a", "1", "sha256:x")),
            ("a@sha256:x", ("a", "", "sha256:x")),
        ];
        for (input, (n, t, d)) in cases {
            assert_eq!(
                split_image(input),
                (n.to_string(), t.to_string(), d.to_string()),
                "{input}"
            );
        }
    }
}
