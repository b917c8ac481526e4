//! Rendering: turning the files under one directory of a repository tree into manifests,
//! either as plain YAML or through a kustomization (Kairn's native kustomize subset).

pub mod kustomize;
pub mod plain;

use std::collections::BTreeMap;

use crate::manifest::{Manifest, ManifestError};

pub use kustomize::Kustomize;
pub use plain::PlainYaml;

/// A repository tree at one commit: repo-relative '/'-separated path (no leading "./") -> file content.
pub type Tree = BTreeMap<String, Vec<u8>>;

/// Turns the files under one directory of a tree into manifests.
pub trait Renderer {
    /// Renders `dir` ("" or "." for the repository root); every error found, each naming its file.
    fn render(&self, tree: &Tree, dir: &str) -> Result<Vec<Manifest>, Vec<ManifestError>>;
}

/// Picks Kustomize when `dir` has a kustomization file, else PlainYaml. dir "" or "." = repo root.
pub fn render(tree: &Tree, dir: &str) -> Result<Vec<Manifest>, Vec<ManifestError>> {
    if kustomize::kustomization_file(tree, &normalize_dir(dir)).is_some() {
        Kustomize.render(tree, dir)
    } else {
        PlainYaml.render(tree, dir)
    }
}

/// `dir` as a tree prefix: no leading "./" or "/", no trailing "/", "" for the root.
pub(crate) fn normalize_dir(dir: &str) -> String {
    let d = dir.trim_matches('/');
    let d = d.strip_prefix("./").unwrap_or(d);
    if d == "." {
        String::new()
    } else {
        d.trim_end_matches('/').to_string()
    }
}

/// Joins `rel` onto the directory `base` and resolves `.` and `..`; `None` when the result
/// would leave the repository (a tree has nothing above its root).
pub(crate) fn join(base: &str, rel: &str) -> Option<String> {
    let mut parts: Vec<&str> = if rel.starts_with('/') {
        Vec::new()
    } else {
        base.split('/').filter(|p| !p.is_empty()).collect()
    };
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// Whether `dir` ("" = root) is a directory of the tree: some file lives below it.
pub(crate) fn is_dir(tree: &Tree, dir: &str) -> bool {
    if dir.is_empty() {
        return !tree.is_empty();
    }
    let prefix = format!("{dir}/");
    tree.range(prefix.clone()..)
        .next()
        .is_some_and(|(k, _)| k.starts_with(&prefix))
}

/// The error for a problem with a whole file (`<file>#<doc>`), not one object of it.
pub(crate) fn file_error(file: &str, doc: usize, field: &str, message: impl Into<String>) -> ManifestError {
    ManifestError {
        source_path: format!("{file}#{doc}"),
        object: "?/? ?".into(),
        field: field.to_string(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_resolves_dots_and_refuses_to_leave_the_tree() {
        let cases = [
            ("overlays/prod", "../../base", Some("base")),
            ("overlays/prod", "./patch.yaml", Some("overlays/prod/patch.yaml")),
            ("", "a/b/../c", Some("a/c")),
            ("", "../x", None),
            ("a", "../../x", None),
        ];
        for (base, rel, want) in cases {
            assert_eq!(join(base, rel).as_deref(), want, "{base} + {rel}");
        }
    }

    #[test]
    fn normalize_dir_accepts_root_spellings() {
        for (dir, want) in [("", ""), (".", ""), ("./", ""), ("./apps/", "apps"), ("/apps", "apps")] {
            assert_eq!(normalize_dir(dir), want, "{dir:?}");
        }
    }

    #[test]
    fn render_picks_kustomize_only_with_a_kustomization() {
        let mut tree = Tree::new();
        tree.insert(
            "app/cm.yaml".into(),
            b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n".to_vec(),
        );
        let plain = render(&tree, "app").expect("plain");
        assert_eq!(plain[0].object["metadata"]["name"], "cm");
        tree.insert(
            "app/kustomization.yaml".into(),
            b"namePrefix: p-\nresources: [cm.yaml]\n".to_vec(),
        );
        let kustomized = render(&tree, "app").expect("kustomize");
        assert_eq!(kustomized[0].object["metadata"]["name"], "p-cm");
        assert_eq!(kustomized.len(), 1);
    }
}
