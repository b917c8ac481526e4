//! Kairn's native kustomize: the subset of `kubectl kustomize` a GitOps repository
//! commonly uses, rendered without shelling out, with output equal to kustomize's
//! (same objects, same order, same generated names).
//!
//! The pipeline follows kustomize's `KustTarget`: for each kustomization, resources
//! (recursing into bases), then generators, then the builtin transformers in kustomize's
//! order; at the top only, hash suffixes on generated names, name references rewritten
//! to the final names, and the legacy kind order. Every object remembers the file and
//! document it came from (generated ones: the kustomization file and generator index).

mod fieldspec;
mod generators;
mod hash;
mod kustomization;
mod nameref;
mod patches;
mod resource;
mod selector;
mod transformers;

use serde_json::Value;

use self::kustomization::Kustomization;
use self::resource::Resource;
use super::{file_error, is_dir, join, normalize_dir, Renderer, Tree};
use crate::manifest::{self, Manifest, ManifestError};
use crate::source::SourceFile;

/// The names kustomize looks for, in its order.
const KUSTOMIZATION_FILES: &[&str] = &["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Dir holds kustomization.yaml / kustomization.yml / Kustomization.
pub struct Kustomize;

/// Errors of one render: every one names a file.
type Errors = Vec<ManifestError>;

impl Renderer for Kustomize {
    fn render(&self, tree: &Tree, dir: &str) -> Result<Vec<Manifest>, Vec<ManifestError>> {
        let dir = normalize_dir(dir);
        let mut builder = Builder {
            tree,
            stack: Vec::new(),
        };
        let (mut resources, top) = builder.accumulate(&dir)?;
        // kustomize's `makeCustomizedResMap`: hashes, then back references, at the top only.
        for r in resources.iter_mut().filter(|r| r.needs_hash) {
            if let Some(suffix) = hash::suffix(&r.object) {
                r.store_previous_id();
                let name = format!("{}-{suffix}", r.name());
                r.set_name(&name);
            }
        }
        nameref::fix(&mut resources)?;
        if top.sort_options.as_ref().is_none_or(|s| s.order == "legacy") {
            resource::legacy_sort(&mut resources);
        }
        Ok(resources
            .into_iter()
            .map(|r| Manifest {
                file: r.file,
                doc: r.doc,
                object: r.object,
            })
            .collect())
    }
}

/// The kustomization file of `dir`, if it has one.
pub fn kustomization_file(tree: &Tree, dir: &str) -> Option<String> {
    KUSTOMIZATION_FILES
        .iter()
        .map(|name| {
            if dir.is_empty() {
                name.to_string()
            } else {
                format!("{dir}/{name}")
            }
        })
        .find(|path| tree.contains_key(path))
}

/// One render's walk through kustomizations.
struct Builder<'t> {
    tree: &'t Tree,
    /// The kustomization directories being built, outermost first: a cycle is a repeat.
    stack: Vec<String>,
}

/// Where a kustomization is and what it says: the context of every step of it.
pub(crate) struct Context<'a> {
    pub tree: &'a Tree,
    /// The kustomization's directory ("" for the root).
    pub dir: &'a str,
    /// The kustomization file, for errors.
    pub file: &'a str,
}

impl Context<'_> {
    /// An error about field `field` of the kustomization.
    pub fn error(&self, field: &str, message: impl Into<String>) -> ManifestError {
        file_error(self.file, 0, field, message)
    }

    /// The path of a file the kustomization names, which kustomize's default load
    /// restrictor keeps inside the kustomization's directory.
    pub fn file_path(&self, field: &str, rel: &str) -> Result<String, ManifestError> {
        let path = join(self.dir, rel).ok_or_else(|| self.error(field, format!("{rel}: outside the repository")))?;
        let inside = self.dir.is_empty() || path.starts_with(&format!("{}/", self.dir));
        if !inside {
            return Err(self.error(
                field,
                format!(
                    "{rel}: security; file is not in or below {}",
                    if self.dir.is_empty() { "." } else { self.dir }
                ),
            ));
        }
        Ok(path)
    }

    /// The content of a file the kustomization names.
    pub fn read(&self, field: &str, rel: &str) -> Result<(String, &[u8]), ManifestError> {
        let path = self.file_path(field, rel)?;
        match self.tree.get(&path) {
            Some(content) => Ok((path, content.as_slice())),
            None => Err(self.error(field, format!("{rel}: no such file ({path})"))),
        }
    }

    /// The content of a file the kustomization names, as text.
    pub fn read_text(&self, field: &str, rel: &str) -> Result<(String, String), ManifestError> {
        let (path, content) = self.read(field, rel)?;
        let text =
            String::from_utf8(content.to_vec()).map_err(|_| self.error(field, format!("{rel}: not UTF-8 text")))?;
        Ok((path, text))
    }
}

impl Builder<'_> {
    /// kustomize's `accumulateTarget` for the kustomization in `dir`: its resources after
    /// its generators and transformers, and the kustomization itself.
    fn accumulate(&mut self, dir: &str) -> Result<(Vec<Resource>, Kustomization), Errors> {
        let Some(file) = kustomization_file(self.tree, dir) else {
            let shown = if dir.is_empty() { "." } else { dir };
            return Err(vec![file_error(
                shown,
                0,
                "",
                "no kustomization.yaml, kustomization.yml or Kustomization in this directory",
            )]);
        };
        if self.stack.iter().any(|d| d == dir) {
            let mut cycle = self.stack.clone();
            cycle.push(dir.to_string());
            return Err(vec![file_error(
                &file,
                0,
                "resources",
                format!("kustomization cycle: {}", cycle.join(" -> ")),
            )]);
        }
        let k = self.load(&file)?;
        self.stack.push(dir.to_string());
        let result = self.build(dir, &file, &k);
        self.stack.pop();
        Ok((result?, k))
    }

    fn load(&self, file: &str) -> Result<Kustomization, Errors> {
        let content = self.tree.get(file).map(Vec::as_slice).unwrap_or_default();
        let text = std::str::from_utf8(content).map_err(|_| vec![file_error(file, 0, "", "not UTF-8 text")])?;
        let docs = manifest::parse_documents(file, text).map_err(|e| vec![e])?;
        let value = match docs.len() {
            0 => Value::Object(Default::default()),
            1 => docs.into_iter().next().map(|(_, v)| v).unwrap_or_default(),
            _ => return Err(vec![file_error(file, 1, "", "a kustomization is one YAML document")]),
        };
        kustomization::from_value(file, value).map_err(|e| vec![e])
    }

    fn build(&mut self, dir: &str, file: &str, k: &Kustomization) -> Result<Vec<Resource>, Errors> {
        let ctx = Context {
            tree: self.tree,
            dir,
            file,
        };
        let mut resources: Vec<Resource> = Vec::new();
        let mut errors = Vec::new();
        for (i, entry) in k.resources.iter().enumerate() {
            let field = format!("resources[{i}]");
            match self.resource(&ctx, &field, entry) {
                Ok(more) => {
                    for r in more {
                        if let Err(e) = resource::append(&mut resources, r, &ctx, &field) {
                            errors.push(e);
                        }
                    }
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        generators::run(&ctx, k, &mut resources).map_err(|e| vec![e])?;
        transformers::run(&ctx, k, &mut resources).map_err(|e| vec![e])?;
        Ok(resources)
    }

    /// The objects of one `resources` entry: a file's documents or a directory's kustomization.
    fn resource(&mut self, ctx: &Context, field: &str, entry: &str) -> Result<Vec<Resource>, Errors> {
        if entry.contains("://") || entry.starts_with("git@") || entry.starts_with("github.com/") {
            return Err(vec![
                ctx.error(field, format!("{entry}: remote resources are not supported"))
            ]);
        }
        let path =
            join(ctx.dir, entry).ok_or_else(|| vec![ctx.error(field, format!("{entry}: outside the repository"))])?;
        if ctx.tree.contains_key(&path) {
            let (path, content) = ctx.read_text(field, entry).map_err(|e| vec![e])?;
            let objects = manifest::parse(&[SourceFile { path, content }])?;
            return Ok(objects.into_iter().map(Resource::from_manifest).collect());
        }
        if is_dir(ctx.tree, &path) {
            return self.accumulate(&path).map(|(resources, _)| resources);
        }
        Err(vec![
            ctx.error(field, format!("{entry}: no such file or directory ({path})"))
        ])
    }
}
