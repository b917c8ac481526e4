//! Plain YAML: every `*.yaml` / `*.yml` file under a directory, as written.

use super::{file_error, is_dir, normalize_dir, Renderer, Tree};
use crate::manifest::{self, Manifest, ManifestError};
use crate::source::SourceFile;

/// Every *.yaml/*.yml under dir, recursively, sorted by path, dot-files/dirs skipped, multi-document.
pub struct PlainYaml;

impl Renderer for PlainYaml {
    fn render(&self, tree: &Tree, dir: &str) -> Result<Vec<Manifest>, Vec<ManifestError>> {
        let dir = normalize_dir(dir);
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        if !dir.is_empty() && !is_dir(tree, &dir) {
            return Err(vec![file_error(&dir, 0, "", "no such directory")]);
        }
        let mut files = Vec::new();
        let mut errors = Vec::new();
        // A BTreeMap iterates in path order, which is the order manifests are reported in.
        for (path, content) in tree.range(prefix.clone()..) {
            let Some(rel) = path.strip_prefix(&prefix) else { break };
            // CI configs and the like live in dot-files and dot-directories: not manifests.
            if rel.split('/').any(|part| part.starts_with('.')) {
                continue;
            }
            if !(rel.ends_with(".yaml") || rel.ends_with(".yml")) {
                continue;
            }
            match String::from_utf8(content.clone()) {
                Ok(content) => files.push(SourceFile {
                    path: path.clone(),
                    content,
                }),
                Err(_) => errors.push(file_error(path, 0, "", "not UTF-8 text")),
            }
        }
        let parsed = manifest::parse(&files);
        match parsed {
            Ok(manifests) if errors.is_empty() => Ok(manifests),
            Ok(_) => Err(errors),
            Err(mut more) => {
                errors.append(&mut more);
                Err(errors)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &[u8])]) -> Tree {
        files.iter().map(|(p, c)| (p.to_string(), c.to_vec())).collect()
    }

    const CM: &[u8] = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n";

    #[test]
    fn reads_yaml_under_dir_sorted_skipping_dot_paths() {
        let t = tree(&[
            ("apps/z.yml", CM),
            ("apps/a/x.yaml", CM),
            ("apps/.github/ci.yaml", b"not: a manifest"),
            ("apps/.hidden.yaml", b"not: a manifest"),
            ("apps/README.md", b"# hi"),
            ("other/y.yaml", CM),
            ("apps2/y.yaml", CM),
        ]);
        let got = PlainYaml.render(&t, "./apps/").expect("renders");
        let sources: Vec<String> = got.iter().map(Manifest::source).collect();
        assert_eq!(
            sources,
            ["apps/a/x.yaml#0", "apps/a/x.yaml#1", "apps/z.yml#0", "apps/z.yml#1"]
        );
        assert_eq!(PlainYaml.render(&t, "").expect("root").len(), 8);
    }

    #[test]
    fn non_utf8_and_invalid_files_are_errors_naming_the_file() {
        let t = tree(&[
            ("a.yaml", &[0xff, 0xfe]),
            ("b.yaml", b"apiVersion: v1\nkind: ConfigMap\n"),
        ]);
        let errors = PlainYaml.render(&t, ".").unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text[0], "a.yaml#0: ?/? ?: not UTF-8 text");
        assert_eq!(text[1], "b.yaml#0: v1/ConfigMap ?: metadata.name: Required value");
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let errors = PlainYaml.render(&tree(&[("a.yaml", CM)]), "nope").unwrap_err();
        assert_eq!(errors[0].to_string(), "nope#0: ?/? ?: no such directory");
    }
}
