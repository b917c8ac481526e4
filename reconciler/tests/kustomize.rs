//! Kairn's native kustomize against the real one: for each fixture tree (a base, overlays
//! exercising every supported field together, a base in another directory), the rendered
//! objects must equal `kubectl kustomize`'s output — same objects, same order.
//!
//! Skipped (with a message) when `kubectl` is not on PATH.

use std::path::{Path, PathBuf};
use std::process::Command;

use kairn_reconciler::manifest;
use kairn_reconciler::render::{self, Kustomize, Renderer, Tree};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kustomize")
}

/// Every file under `root`, as a tree.
fn load_tree(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, tree: &mut Tree) {
        for entry in std::fs::read_dir(dir).expect("fixture dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(root, &path, tree);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .expect("under root")
                    .to_string_lossy()
                    .replace('\\', "/");
                tree.insert(rel, std::fs::read(&path).expect("fixture file"));
            }
        }
    }
    let mut tree = Tree::new();
    walk(root, root, &mut tree);
    tree
}

fn kubectl_available() -> bool {
    Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `kubectl kustomize <dir>` of `tree` written into a temporary directory.
fn kubectl_kustomize(tree: &Tree, dir: &str) -> Vec<Value> {
    let tmp = tempfile::tempdir().expect("temp dir");
    for (path, content) in tree {
        let full = tmp.path().join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(&full, content).expect("write");
    }
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(tmp.path().join(dir))
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 output");
    manifest::parse_documents("kubectl-output", &text)
        .expect("kubectl output parses")
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

#[test]
fn native_kustomize_equals_kubectl_kustomize() {
    if !kubectl_available() {
        eprintln!("skipping: kubectl is not on PATH");
        return;
    }
    let tree = load_tree(&fixtures());
    for dir in ["base", "shared", "overlays/prod", "overlays/dev"] {
        let ours: Vec<Value> = render::render(&tree, dir)
            .unwrap_or_else(|e| {
                panic!(
                    "{dir}: {}",
                    e.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
                )
            })
            .into_iter()
            .map(|m| m.object)
            .collect();
        let theirs = kubectl_kustomize(&tree, dir);
        let describe = |v: &[Value]| v.iter().map(manifest::describe).collect::<Vec<_>>();
        assert_eq!(describe(&ours), describe(&theirs), "{dir}: objects or order differ");
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(
                a,
                b,
                "{dir}: {} differs\nours:\n{}\nkubectl:\n{}",
                manifest::describe(a),
                manifest::to_yaml(a),
                manifest::to_yaml(b)
            );
        }
    }
}

#[test]
fn manifests_point_at_their_source_files() {
    let tree = load_tree(&fixtures());
    let out = Kustomize.render(&tree, "overlays/prod").expect("renders");
    let source = |kind: &str, name_part: &str| {
        out.iter()
            .find(|m| {
                m.object["kind"] == kind
                    && m.object["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| n.contains(name_part))
            })
            .map(|m| m.source())
            .unwrap_or_else(|| panic!("no {kind} {name_part}"))
    };
    assert_eq!(source("Deployment", "web"), "base/deployment.yaml#0");
    assert_eq!(source("RoleBinding", "web-reader"), "base/rbac.yaml#2");
    assert_eq!(source("CronJob", "probe"), "shared/monitor.yaml#0");
    // A merged ConfigMap keeps the base generator as its origin, as kustomize.
    assert_eq!(source("ConfigMap", "web-config"), "base/kustomization.yaml#0");
    assert_eq!(source("Secret", "tls"), "base/kustomization.yaml#1");
    assert_eq!(source("Secret", "registry"), "overlays/prod/kustomization.yaml#0");
}

fn tree_of(files: &[(&str, &str)]) -> Tree {
    files
        .iter()
        .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec()))
        .collect()
}

#[test]
fn unsupported_fields_are_errors_naming_file_and_field() {
    for field in [
        "components",
        "helmCharts",
        "replacements",
        "vars",
        "crds",
        "transformers",
        "generators",
        "openapi",
    ] {
        let tree = tree_of(&[("app/kustomization.yaml", &format!("resources: []\n{field}: []\n"))]);
        let errors = render::render(&tree, "app").expect_err(field);
        assert_eq!(errors[0].source_path, "app/kustomization.yaml#0", "{field}");
        assert_eq!(errors[0].field, field);
        assert!(errors[0].to_string().contains("not supported"), "{}", errors[0]);
    }
}

#[test]
fn missing_files_remote_resources_and_cycles_are_errors_naming_the_file() {
    type Files<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Files, &str, &str); 5] = [
        (
            &[("k/kustomization.yaml", "resources: [nope.yaml]\n")],
            "k/kustomization.yaml#0",
            "resources[0]",
        ),
        (
            &[("k/kustomization.yaml", "resources: [https://github.com/x/y]\n")],
            "k/kustomization.yaml#0",
            "resources[0]",
        ),
        (
            &[
                ("a/kustomization.yaml", "resources: [../b]\n"),
                ("b/kustomization.yaml", "resources: [../a]\n"),
            ],
            "a/kustomization.yaml#0",
            "resources",
        ),
        (
            &[
                ("k/kustomization.yaml", "resources: [../outside.yaml]\n"),
                ("outside.yaml", ""),
            ],
            "k/kustomization.yaml#0",
            "resources[0]",
        ),
        (
            &[(
                "k/kustomization.yaml",
                "configMapGenerator: [{name: c, files: [gone.txt]}]\n",
            )],
            "k/kustomization.yaml#0",
            "configMapGenerator[0].files[0]",
        ),
    ];
    for (files, source, field) in cases {
        let dir = files[0].0.split('/').next().unwrap_or_default();
        let errors = Kustomize.render(&tree_of(files), dir).expect_err(source);
        assert_eq!(
            (errors[0].source_path.as_str(), errors[0].field.as_str()),
            (source, field),
            "{}",
            errors[0]
        );
    }
}

#[test]
fn invalid_objects_are_errors_naming_their_file() {
    let tree = tree_of(&[
        ("k/kustomization.yaml", "resources: [bad.yaml]\n"),
        ("k/bad.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n"),
    ]);
    let errors = Kustomize.render(&tree, "k").expect_err("invalid");
    assert_eq!(
        errors[0].to_string(),
        "k/bad.yaml#0: v1/ConfigMap ?: metadata.name: Required value"
    );
}
