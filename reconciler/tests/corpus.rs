//! The manifest pipeline against 248 real-world manifests nobody here wrote
//! (`../shared/manifests-corpus`, beside the project; see its README).
//!
//! Every document of a served kind must parse, validate, apply, and then plan as
//! unchanged against the live object; every other document must be refused with an
//! error naming its file, document, apiVersion/kind and why. Ignored by default because a
//! fresh clone has no corpus beside it: `.ci/run` runs it explicitly.

use std::path::{Path, PathBuf};

use kairn_cluster::member::Member;
use kairn_reconciler::manifest::{self, Manifest};
use kairn_reconciler::plan::{self, Action, Catalog};
use kairn_reconciler::{apply, source::SourceFile};
use serde_json::{json, Value};

/// Documents of served kinds that are invalid as written (kube-apiserver with kubectl's
/// strict field validation refuses them too), with the field the refusal must name.
const INVALID: &[(&str, &str)] = &[
    (
        "kubernetes-examples/_archived/storage/vitess/vttablet-pod-template.yaml#0",
        "metadata.name",
    ), // `{{uid}}` template
    (
        "kubernetes-examples/_archived/volumes/aws_ebs/aws-ebs-web.yaml#0",
        "spec.containers[0].ports[0].protocol",
    ), // `tcp`: protocols are upper case
    (
        "kubernetes-examples/_archived/volumes/cinder/cinder-web.yaml#0",
        "spec.containers[0].ports[0].protocol",
    ), // `tcp`
    (
        "kubernetes-examples/_archived/sysdig-cloud/sysdig-rc.yaml#0",
        "spec.selector",
    ), // no selector, and no template labels to take one from
    (
        "kubernetes-examples/_archived/volumes/storageos/storageos-pv.yaml#0",
        "spec.storageos.secretName",
    ), // no such field
    (
        "kubernetes-examples/_archived/volumes/fibre_channel/fc.yaml#0",
        "spec.volumes[0].fc.lun",
    ), // placeholder text
    (
        "kubernetes-examples/_archived/volumes/rbd/rbd.yaml#0",
        "spec.volumes[0].rbd.imagefeatures",
    ), // no such field
    (
        "kubernetes-examples/_archived/volumes/scaleio/pod.yaml#0",
        "spec.volumes[0].scaleIO.protectionDoamin",
    ), // typo
    (
        "kubernetes-examples/_archived/volumes/storageos/storageos-pod.yaml#0",
        "spec.volumes[0].storageos.pool",
    ), // no such field
];

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/manifests-corpus")
}

fn yaml_files(dir: &Path, base: &Path, out: &mut Vec<SourceFile>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            yaml_files(&path, base, out);
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            let content = std::fs::read_to_string(&path).unwrap();
            let rel = path.strip_prefix(base).unwrap().display().to_string();
            out.push(SourceFile { path: rel, content });
        }
    }
}

/// Creates the object's namespace if it names one (the corpus assumes they exist).
async fn ensure_namespace(client: &kube::Client, obj: &Value) {
    let Some(ns) = obj.pointer("/metadata/namespace").and_then(Value::as_str) else {
        return;
    };
    let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    let namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
    // AlreadyExists is the common case and fine.
    let _ = api.create(&Default::default(), &namespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ../shared/manifests-corpus beside the project; .ci/run runs it"]
async fn real_world_manifests_apply_cleanly_or_are_refused_by_name() {
    let corpus = corpus_dir();
    assert!(
        corpus.is_dir(),
        "the manifest corpus is missing: expected it at {}",
        corpus.display()
    );
    let mut files = Vec::new();
    yaml_files(&corpus, &corpus, &mut files);
    assert!(files.len() >= 200, "only {} corpus files found", files.len());

    let dir = tempfile::tempdir().unwrap();
    let member = Member::start_local(dir.path(), &[]).await.unwrap();
    let client = member.client().unwrap();
    let catalog = Catalog::discover(&client).await.unwrap();

    let (mut applied, mut refused, mut unparsable, mut invalid) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for (n, file) in files.iter().enumerate() {
        // Parse errors must name the file; the rest of a broken file is not trusted.
        let manifests: Vec<Manifest> = match manifest::parse(std::slice::from_ref(file)) {
            Ok(m) => m,
            Err(errors) => {
                for e in errors {
                    unparsable += 1;
                    eprintln!("refused: {e}");
                    if !e.source_path.starts_with(&format!("{}#", file.path)) {
                        failures.push(format!("parse error does not name its file: {e}"));
                    }
                }
                continue;
            }
        };
        // One Application per document, so that each is judged on its own.
        for (d, m) in manifests.into_iter().enumerate() {
            let app = format!("corpus-{n}-{d}");
            let source = m.source();
            let kind = format!(
                "{}/{}",
                m.object["apiVersion"].as_str().unwrap_or("?"),
                m.object["kind"].as_str().unwrap_or("?")
            );
            let desired = match plan::desired_objects(vec![m], &catalog, &app, "corpus", "default") {
                Ok(desired) => desired,
                Err(errors) => {
                    refused += 1;
                    for e in errors {
                        let text = e.to_string();
                        eprintln!("refused: {text}");
                        if !text.starts_with(&format!("{source}: {kind} ")) {
                            failures.push(format!("refusal does not name file, document and kind: {text}"));
                        }
                    }
                    continue;
                }
            };
            ensure_namespace(&client, &desired[0].1).await;
            let live = owned(plan::live_objects(&client, &catalog).await.unwrap(), &app);
            let first = plan::compute(desired.clone(), live);
            let expected_invalid = INVALID.iter().find(|(doc, _)| *doc == source);
            match (apply::apply(&client, &first, false, None).await, expected_invalid) {
                (Err(e), Some((_, field))) => {
                    invalid += 1;
                    if !e.to_string().contains(&format!("{source}: {kind} ")) || !e.to_string().contains(field) {
                        failures.push(format!(
                            "{source}: the refusal does not name the document and {field}: {e}"
                        ));
                    }
                    continue;
                }
                (Err(e), None) => {
                    failures.push(format!("{source} ({kind}) did not apply: {e}"));
                    continue;
                }
                (Ok(_), Some((_, field))) => failures.push(format!("{source} applied despite its invalid {field}")),
                (Ok(_), None) => {}
            }
            let live = owned(plan::live_objects(&client, &catalog).await.unwrap(), &app);
            let again = plan::compute(desired, live);
            for change in again.changes.iter().filter(|c| c.action != Action::Unchanged) {
                failures.push(format!(
                    "{source} ({kind}) is not unchanged after applying:\n{}",
                    change.diff
                ));
            }
            // Prune it again, so that documents reusing a name in another file do not collide.
            let live = owned(plan::live_objects(&client, &catalog).await.unwrap(), &app);
            let cleanup = plan::compute(vec![], live);
            if let Err(e) = apply::apply(&client, &cleanup, false, None).await {
                failures.push(format!("{source} ({kind}) could not be pruned: {e}"));
            }
            applied += 1;
        }
    }
    eprintln!(
        "corpus: {} files; {applied} documents applied and unchanged, {invalid} invalid as written, {refused} refused by kind, {unparsable} parse errors",
        files.len()
    );
    member.stop().await.unwrap();
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(applied > 50, "too few documents of served kinds applied: {applied}");
    assert_eq!(
        invalid,
        INVALID.len(),
        "every known-invalid document was seen and refused"
    );
}

/// The live objects `app` owns, of all managed ones.
fn owned(live: Vec<serde_json::Value>, app: &str) -> Vec<serde_json::Value> {
    live.into_iter().filter(|o| plan::owner(o) == Some(app)).collect()
}
