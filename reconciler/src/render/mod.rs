//! Rendering: a directory of a commit's tree to manifests (placeholder until the
//! kustomize renderer lands: plain YAML only).

use std::collections::BTreeMap;

use crate::manifest::{self, Manifest, ManifestError};
use crate::source::SourceFile;

/// A repository tree at one commit: repo-relative path -> content.
pub type Tree = BTreeMap<String, Vec<u8>>;

/// Renders every YAML file under `dir`.
pub fn render(tree: &Tree, dir: &str) -> Result<Vec<Manifest>, Vec<ManifestError>> {
    let dir = dir.trim_matches('/');
    let base = if dir.is_empty() || dir == "." { String::new() } else { format!("{dir}/") };
    let files: Vec<SourceFile> = tree
        .iter()
        .filter(|(p, _)| p.starts_with(&base) && (p.ends_with(".yaml") || p.ends_with(".yml")))
        .filter(|(p, _)| !p.split('/').any(|part| part.starts_with('.')))
        .map(|(p, c)| SourceFile { path: p.clone(), content: String::from_utf8_lossy(c).into_owned() })
        .collect();
    manifest::parse(&files)
}
