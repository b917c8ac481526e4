//! Patches: `patchesStrategicMerge`, `patches` (strategic merge or JSON 6902, told apart
//! by content as kustomize does) and `patchesJson6902`.
//!
//! Strategic merge goes through the API server's own implementation with the kind's
//! schema, so a patch merges lists exactly as a `kubectl patch` against Kairn would.

use kairn_cluster::api::patch::{self as api_patch, PatchKind};
use kairn_cluster::api::registry;
use serde_json::Value;

use super::kustomization::{Patch, Selector};
use super::resource::{ResId, Resource};
use super::selector;
use super::Context;
use crate::manifest::{self, ManifestError};

/// A patch's text and where it came from (for errors).
struct Source {
    text: String,
    /// The patch file, or the kustomization for an inline patch.
    file: String,
    field: String,
}

/// `patchesStrategicMerge`: each entry a file (or, failing that, an inline patch) of one
/// or more patches, each applied to the one resource its own identity names.
pub fn strategic_merge(ctx: &Context, entries: &[String], resources: &mut Vec<Resource>) -> Result<(), ManifestError> {
    for (i, entry) in entries.iter().enumerate() {
        let field = format!("patchesStrategicMerge[{i}]");
        let source = match ctx.file_path(&field, entry).ok().filter(|p| ctx.tree.contains_key(p)) {
            Some(_) => {
                let (file, text) = ctx.read_text(&field, entry)?;
                Source { text, file, field }
            }
            // kustomize takes an entry that is no file as an inline patch.
            None => Source {
                text: entry.clone(),
                file: ctx.file.to_string(),
                field,
            },
        };
        for patch in documents(ctx, &source)? {
            if !patch.is_object() {
                return Err(ctx.error(&source.field, "a strategic merge patch must be a mapping"));
            }
            apply_by_id(ctx, &source, &patch, resources)?;
        }
    }
    Ok(())
}

/// `patches`: strategic merge or JSON 6902, by content; with a target, applied to every
/// resource it selects.
pub fn patches(ctx: &Context, entries: &[Patch], resources: &mut Vec<Resource>) -> Result<(), ManifestError> {
    for (i, entry) in entries.iter().enumerate() {
        let source = load(ctx, &format!("patches[{i}]"), entry)?;
        let docs = documents(ctx, &source)?;
        let is_json = docs.first().is_some_and(Value::is_array);
        if is_json {
            if docs.len() > 1 {
                return Err(ctx.error(&source.field, "a JSON 6902 patch is one document"));
            }
            let Some(target) = &entry.target else {
                return Err(ctx.error(&source.field, "must specify a target for JSON patch"));
            };
            json_patch(ctx, &source, target, &docs[0], resources)?;
            continue;
        }
        if docs.iter().any(|d| !d.is_object()) {
            return Err(ctx.error(&source.field, "unable to parse SM or JSON patch"));
        }
        match &entry.target {
            Some(target) => {
                if docs.len() > 1 {
                    return Err(ctx.error(
                        &source.field,
                        "multiple strategic merge patches in one `patches` entry may not have a target",
                    ));
                }
                let picked = selector::select(target, resources).map_err(|e| ctx.error(&source.field, e))?;
                apply_strategic(ctx, &source, &docs[0], &picked, resources)?;
            }
            None => {
                for patch in &docs {
                    apply_by_id(ctx, &source, patch, resources)?;
                }
            }
        }
    }
    Ok(())
}

/// `patchesJson6902`: a target and a JSON (or YAML) list of operations.
pub fn json6902(ctx: &Context, entries: &[Patch], resources: &mut [Resource]) -> Result<(), ManifestError> {
    for (i, entry) in entries.iter().enumerate() {
        let source = load(ctx, &format!("patchesJson6902[{i}]"), entry)?;
        let Some(target) = &entry.target else {
            return Err(ctx.error(&source.field, "must specify a target"));
        };
        let docs = documents(ctx, &source)?;
        let [ops] = docs.as_slice() else {
            return Err(ctx.error(&source.field, "a JSON 6902 patch is one document"));
        };
        json_patch(ctx, &source, target, ops, resources)?;
    }
    Ok(())
}

fn load(ctx: &Context, field: &str, entry: &Patch) -> Result<Source, ManifestError> {
    let patch = entry.patch.trim();
    match (patch.is_empty(), entry.path.is_empty()) {
        (true, true) => Err(ctx.error(field, "must specify one of patch and path")),
        (false, false) => Err(ctx.error(field, "patch and path can't be set at the same time")),
        (false, true) => Ok(Source {
            text: patch.to_string(),
            file: ctx.file.to_string(),
            field: format!("{field}.patch"),
        }),
        (true, false) => {
            let field = format!("{field}.path");
            let (file, text) = ctx.read_text(&field, &entry.path)?;
            Ok(Source { text, file, field })
        }
    }
}

fn documents(ctx: &Context, source: &Source) -> Result<Vec<Value>, ManifestError> {
    let docs = manifest::parse_documents(&source.file, &source.text)
        .map_err(|e| ctx.error(&source.field, format!("{}: {}", e.source_path, e.message)))?;
    Ok(docs.into_iter().map(|(_, v)| v).collect())
}

/// Applies a strategic merge patch to the one resource whose (current or previous)
/// identity is the patch's own.
fn apply_by_id(
    ctx: &Context,
    source: &Source,
    patch: &Value,
    resources: &mut Vec<Resource>,
) -> Result<(), ManifestError> {
    let id = ResId::of(patch);
    let matches: Vec<usize> = resources
        .iter()
        .enumerate()
        .filter(|(_, r)| r.all_ids().contains(&id))
        .map(|(i, _)| i)
        .collect();
    if matches.len() != 1 {
        return Err(ctx.error(
            &source.field,
            format!(
                "{} resources match the patch's {}; a patch without a target must name exactly one",
                matches.len(),
                id.describe()
            ),
        ));
    }
    apply_strategic(ctx, source, patch, &matches, resources)
}

/// kustomize's `ApplySmPatch` on the resources at `picked`: the patch takes each target's
/// identity (a patch does not rename), and `$patch: delete` removes the target.
fn apply_strategic(
    ctx: &Context,
    source: &Source,
    patch: &Value,
    picked: &[usize],
    resources: &mut Vec<Resource>,
) -> Result<(), ManifestError> {
    let delete = patch.get("$patch").and_then(Value::as_str) == Some("delete");
    let mut removed = Vec::new();
    for &i in picked {
        if delete {
            removed.push(i);
            continue;
        }
        let r = &mut resources[i];
        let (name, namespace) = (r.name().to_string(), r.namespace().to_string());
        let (api_version, kind) = (r.str_at("/apiVersion").to_string(), r.kind().to_string());
        let mut patch = patch.clone();
        if let Some(obj) = patch.as_object_mut() {
            obj.insert("apiVersion".into(), Value::String(api_version.clone()));
            obj.insert("kind".into(), Value::String(kind.clone()));
        }
        super::resource::metadata_mut(&mut patch).insert("name".into(), Value::String(name.clone()));
        let res = registry::by_kind(&api_version, &kind);
        let mut patched = api_patch::patch(res, PatchKind::Strategic, &r.object, &patch).map_err(|e| {
            ctx.error(
                &source.field,
                format!("{}: {}: {e}", source.file, r.cur_id().describe()),
            )
        })?;
        // The patch cannot move the object: it keeps its name and namespace.
        let meta = super::resource::metadata_mut(&mut patched);
        meta.insert("name".into(), Value::String(name));
        if namespace.is_empty() {
            meta.remove("namespace");
        } else {
            meta.insert("namespace".into(), Value::String(namespace));
        }
        r.object = patched;
    }
    for i in removed.into_iter().rev() {
        resources.remove(i);
    }
    Ok(())
}

/// Applies a JSON 6902 patch to every resource `target` selects.
fn json_patch(
    ctx: &Context,
    source: &Source,
    target: &Selector,
    ops: &Value,
    resources: &mut [Resource],
) -> Result<(), ManifestError> {
    if !ops.is_array() {
        return Err(ctx.error(&source.field, "a JSON 6902 patch must be a list of operations"));
    }
    let picked = selector::select(target, resources).map_err(|e| ctx.error(&source.field, e))?;
    for i in picked {
        let r = &mut resources[i];
        // An operation may rename: the old identity stays matchable.
        r.store_previous_id();
        r.object = api_patch::patch(None, PatchKind::Json, &r.object, ops).map_err(|e| {
            ctx.error(
                &source.field,
                format!("{}: {}: {e}", source.file, r.cur_id().describe()),
            )
        })?;
    }
    Ok(())
}
