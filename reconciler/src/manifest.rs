//! Manifests: the one place YAML is parsed. Turns files into objects, each knowing the
//! file and document it came from, and names the file, document, object and field of
//! anything wrong.

use serde::Deserialize;
use serde_json::Value;

use crate::source::SourceFile;

/// One object from one YAML document.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Repo-relative file.
    pub file: String,
    /// Index of the document in the file (0-based, counting empty documents).
    pub doc: usize,
    /// The object, as JSON.
    pub object: Value,
}

impl Manifest {
    /// `<file>#<doc>`, as in the `kairn.dev/source-path` annotation.
    pub fn source(&self) -> String {
        format!("{}#{}", self.file, self.doc)
    }

    /// `apiVersion/kind namespace/name` (namespace omitted when absent).
    pub fn describe(&self) -> String {
        describe(&self.object)
    }
}

/// `apiVersion/kind namespace/name` of an object, for messages.
pub fn describe(obj: &Value) -> String {
    let s = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or("");
    let (api_version, kind, ns, name) = (
        s("/apiVersion"),
        s("/kind"),
        s("/metadata/namespace"),
        s("/metadata/name"),
    );
    let type_part = format!(
        "{}/{}",
        if api_version.is_empty() { "?" } else { api_version },
        if kind.is_empty() { "?" } else { kind }
    );
    let name = if name.is_empty() { "?" } else { name };
    if ns.is_empty() {
        format!("{type_part} {name}")
    } else {
        format!("{type_part} {ns}/{name}")
    }
}

/// A problem with one manifest, formatted per the conventions:
/// `<file>#<doc>: <apiVersion>/<kind> <namespace>/<name>: <field.path>: <message>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_path}: {object}: {}{message}", if field.is_empty() { String::new() } else { format!("{field}: ") })]
pub struct ManifestError {
    /// `<file>#<doc>`.
    pub source_path: String,
    /// `apiVersion/kind namespace/name`, or `?` parts where unknown.
    pub object: String,
    /// Dotted field path ("" when the whole document is at fault).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Parses every document of every file; returns all objects or every error found.
pub fn parse(files: &[SourceFile]) -> Result<Vec<Manifest>, Vec<ManifestError>> {
    // Parsing is most of a large commit's render: spread big ones over the cores (each
    // file stands alone, so the result is the same, in the same order).
    let bytes: usize = files.iter().map(|f| f.content.len()).sum();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    if threads < 2 || files.len() < 2 || bytes < 256 * 1024 {
        return parse_serial(files);
    }
    let chunk = files.len().div_ceil(threads);
    let parts: Vec<Result<Vec<Manifest>, Vec<ManifestError>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| scope.spawn(move || parse_serial(part)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    // Never an empty result for a lost part: say so, and apply nothing.
                    Err(vec![ManifestError {
                        source_path: "(commit)".into(),
                        object: "?/? ?".into(),
                        field: String::new(),
                        message: "the YAML parser failed on part of the commit".into(),
                    }])
                })
            })
            .collect()
    });
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for part in parts {
        match part {
            Ok(m) => out.extend(m),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// [`parse`] on one thread.
fn parse_serial(files: &[SourceFile]) -> Result<Vec<Manifest>, Vec<ManifestError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        for (doc, de) in serde_yaml::Deserializer::from_str(&file.content).enumerate() {
            let err = |object: String, field: &str, message: String| ManifestError {
                source_path: format!("{}#{doc}", file.path),
                object,
                field: field.to_string(),
                message,
            };
            let yaml = match serde_yaml::Value::deserialize(de) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(err("?/? ?".into(), "", format!("invalid YAML: {e}")));
                    // After a syntax error the rest of the stream cannot be trusted.
                    break;
                }
            };
            if yaml.is_null() {
                continue;
            }
            let object: Value = match serde_json::to_value(&yaml) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(err("?/? ?".into(), "", format!("not representable as JSON: {e}")));
                    continue;
                }
            };
            if !object.is_object() {
                errors.push(err("?/? ?".into(), "", "a manifest must be a mapping".into()));
                continue;
            }
            let manifest = Manifest {
                file: file.path.clone(),
                doc,
                object,
            };
            for (field, pointer) in [
                ("apiVersion", "/apiVersion"),
                ("kind", "/kind"),
                ("metadata.name", "/metadata/name"),
            ] {
                match manifest.object.pointer(pointer) {
                    Some(Value::String(s)) if !s.is_empty() => {}
                    Some(Value::String(_)) | None => {
                        errors.push(err(manifest.describe(), field, "Required value".into()))
                    }
                    Some(other) => errors.push(err(
                        manifest.describe(),
                        field,
                        format!("must be a string, got {other}"),
                    )),
                }
            }
            if manifest
                .object
                .pointer("/kind")
                .and_then(Value::as_str)
                .is_some_and(|k| k.ends_with("List"))
            {
                errors.push(err(
                    manifest.describe(),
                    "kind",
                    "List kinds are not supported; write one document per object".into(),
                ));
            }
            out.push(manifest);
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Parses every document of one file into JSON values, whatever their shape (for
/// kustomization files, patches and generator inputs): `(document index, value)` for
/// each non-empty document, or the first error naming the file and document.
pub fn parse_documents(path: &str, content: &str) -> Result<Vec<(usize, Value)>, ManifestError> {
    let mut out = Vec::new();
    for (doc, de) in serde_yaml::Deserializer::from_str(content).enumerate() {
        let err = |message: String| ManifestError {
            source_path: format!("{path}#{doc}"),
            object: "?/? ?".into(),
            field: String::new(),
            message,
        };
        let yaml = serde_yaml::Value::deserialize(de).map_err(|e| err(format!("invalid YAML: {e}")))?;
        if yaml.is_null() {
            continue;
        }
        let value = serde_json::to_value(&yaml).map_err(|e| err(format!("not representable as JSON: {e}")))?;
        out.push((doc, value));
    }
    Ok(out)
}

/// Renders an object as YAML for diffs and `-o yaml`.
pub fn to_yaml(value: &Value) -> String {
    serde_yaml::to_string(value).unwrap_or_else(|e| format!("# cannot render as YAML: {e}\n"))
}

/// Parses a YAML string into JSON (for CLI input and tests).
pub fn from_yaml(s: &str) -> Result<Value, String> {
    serde_yaml::from_str::<Value>(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &str) -> SourceFile {
        SourceFile {
            path: path.into(),
            content: content.into(),
        }
    }

    #[test]
    fn multi_document_files_keep_their_document_index() {
        let files = [file("a.yaml", "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: one}\n---\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: two}\n")];
        let parsed = parse(&files).unwrap();
        assert_eq!(
            parsed.iter().map(|m| m.source()).collect::<Vec<_>>(),
            vec!["a.yaml#0", "a.yaml#2"]
        );
    }

    #[test]
    fn errors_name_file_document_object_and_field() {
        let files = [
            file("ok.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: fine}\n"),
            file(
                "bad.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {namespace: x}\n",
            ),
            file("broken.yaml", "apiVersion: v1\nkind: [unclosed\n"),
        ];
        let errors = parse(&files).unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text[0], "bad.yaml#0: v1/ConfigMap x/?: metadata.name: Required value");
        assert!(
            text[1].starts_with("broken.yaml#0: ?/? ?: invalid YAML:"),
            "{}",
            text[1]
        );
        assert_eq!(errors.len(), 2);
    }
}
