//! The kustomization file: which fields Kairn supports, and their typed form.
//!
//! Unknown fields and fields outside the supported subset are errors naming the file and
//! the field: a silently skipped `replacements` would deploy something else than
//! `kubectl kustomize` renders.

use serde::Deserialize;
use serde_json::Value;

use crate::manifest::ManifestError;
use crate::render::file_error;

/// kustomize fields Kairn's renderer does not implement.
const UNSUPPORTED: &[&str] = &[
    "components",
    "helmCharts",
    "helmGlobals",
    "helmChartInflationGenerator",
    "replacements",
    "vars",
    "crds",
    "configurations",
    "transformers",
    "generators",
    "validators",
    "openapi",
    "buildMetadata",
    "imageTags",
    "patchesJson",
];

/// A parsed kustomization, with the deprecated spellings folded into the current ones.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Kustomization {
    /// Accepted and not checked, as kustomize.
    #[serde(default)]
    #[allow(dead_code)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    /// Only informational in a kustomization.
    #[serde(default)]
    #[allow(dead_code)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub resources: Vec<String>,
    /// Deprecated spelling of `resources`.
    #[serde(default)]
    pub bases: Vec<String>,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name_prefix: String,
    #[serde(default)]
    pub name_suffix: String,
    #[serde(default)]
    pub labels: Vec<Label>,
    #[serde(default)]
    pub common_labels: StringMap,
    #[serde(default)]
    pub common_annotations: StringMap,
    #[serde(default)]
    pub images: Vec<Image>,
    #[serde(default)]
    pub replicas: Vec<Replica>,
    #[serde(default)]
    pub patches: Vec<Patch>,
    #[serde(default)]
    pub patches_strategic_merge: Vec<String>,
    #[serde(default)]
    pub patches_json6902: Vec<Patch>,
    #[serde(default)]
    pub config_map_generator: Vec<Generator>,
    #[serde(default)]
    pub secret_generator: Vec<Generator>,
    #[serde(default)]
    pub generator_options: Option<GeneratorOptions>,
    #[serde(default)]
    pub sort_options: Option<SortOptions>,
}

/// Labels and annotations: string values (YAML scalars of other types are taken as text).
pub type StringMap = std::collections::BTreeMap<String, Scalar>;

/// A YAML scalar read as text, as Go's YAML decoder reads one into a `string`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "Value")]
pub struct Scalar(pub String);

impl From<Value> for Scalar {
    fn from(v: Value) -> Self {
        match v {
            Value::String(s) => Scalar(s),
            Value::Null => Scalar(String::new()),
            other => Scalar(other.to_string()),
        }
    }
}

/// One `labels` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Label {
    #[serde(default)]
    pub pairs: StringMap,
    #[serde(default)]
    pub include_selectors: bool,
    #[serde(default)]
    pub include_templates: bool,
}

/// One `images` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Image {
    pub name: String,
    #[serde(default)]
    pub new_name: String,
    #[serde(default)]
    pub new_tag: Scalar,
    #[serde(default)]
    pub digest: String,
}

/// "" (a tag may be written as a number, `newTag: 1.2`, hence a scalar).
impl Default for Scalar {
    fn default() -> Self {
        Scalar(String::new())
    }
}

/// One `replicas` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replica {
    pub name: String,
    pub count: i64,
}

/// One `patches` / `patchesJson6902` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Patch {
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub patch: String,
    #[serde(default)]
    pub target: Option<Selector>,
}

/// A patch target.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub label_selector: String,
    #[serde(default)]
    pub annotation_selector: String,
}

/// One `configMapGenerator` / `secretGenerator` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Generator {
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub behavior: String,
    #[serde(default)]
    pub literals: Vec<String>,
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default)]
    pub envs: Vec<String>,
    /// Deprecated single form of `envs`.
    #[serde(default)]
    pub env: String,
    /// Secrets only: the Secret's `type` (Opaque when empty).
    #[serde(default, rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub options: Option<GeneratorOptions>,
}

/// `generatorOptions`, or a generator's `options`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GeneratorOptions {
    #[serde(default)]
    pub labels: StringMap,
    #[serde(default)]
    pub annotations: StringMap,
    #[serde(default)]
    pub disable_name_suffix_hash: bool,
    #[serde(default)]
    pub immutable: bool,
}

impl GeneratorOptions {
    /// kustomize's `MergeGlobalOptionsIntoLocal`: local labels and annotations win, the
    /// global flags switch on.
    pub fn merged(local: Option<&GeneratorOptions>, global: Option<&GeneratorOptions>) -> GeneratorOptions {
        let mut out = local.cloned().unwrap_or_default();
        if let Some(g) = global {
            for (k, v) in &g.labels {
                out.labels.entry(k.clone()).or_insert_with(|| v.clone());
            }
            for (k, v) in &g.annotations {
                out.annotations.entry(k.clone()).or_insert_with(|| v.clone());
            }
            out.disable_name_suffix_hash |= g.disable_name_suffix_hash;
            out.immutable |= g.immutable;
        }
        out
    }
}

/// `sortOptions`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SortOptions {
    pub order: String,
}

/// Reads a kustomization from its parsed document; errors name `file` and the field.
pub fn from_value(file: &str, value: Value) -> Result<Kustomization, ManifestError> {
    let Value::Object(map) = &value else {
        return Err(file_error(file, 0, "", "a kustomization must be a mapping"));
    };
    for key in map.keys() {
        if UNSUPPORTED.contains(&key.as_str()) {
            return Err(file_error(
                file,
                0,
                key,
                "not supported by Kairn's kustomize (use `kubectl kustomize` output as plain YAML instead)",
            ));
        }
    }
    let mut k: Kustomization = serde_json::from_value(value).map_err(|e| {
        file_error(
            file,
            0,
            &field_of(&e.to_string()),
            format!("invalid kustomization: {e}"),
        )
    })?;
    if let Some(kind) = k.kind.as_deref().filter(|k| *k != "Kustomization") {
        return Err(file_error(
            file,
            0,
            "kind",
            format!("{kind} is not supported; only Kustomization is"),
        ));
    }
    if let Some(s) = &k.sort_options {
        if s.order != "legacy" && s.order != "fifo" {
            return Err(file_error(file, 0, "sortOptions.order", "must be one of legacy, fifo"));
        }
    }
    k.resources.append(&mut k.bases);
    for g in k.config_map_generator.iter_mut().chain(k.secret_generator.iter_mut()) {
        if !g.env.is_empty() {
            g.envs.push(std::mem::take(&mut g.env));
        }
    }
    Ok(k)
}

/// The field serde names in "unknown field `x`" messages, for the error's field path.
fn field_of(message: &str) -> String {
    message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        .unwrap_or("")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unsupported_and_unknown_fields_are_errors_naming_file_and_field() {
        let cases = [
            (json!({"components": ["../c"]}), "components"),
            (json!({"helmCharts": []}), "helmCharts"),
            (json!({"replacements": []}), "replacements"),
            (json!({"vars": []}), "vars"),
            (json!({"resourcez": []}), "resourcez"),
        ];
        for (value, field) in cases {
            let e = from_value("k/kustomization.yaml", value).unwrap_err();
            assert_eq!(e.source_path, "k/kustomization.yaml#0");
            assert_eq!(e.field, field);
        }
    }

    #[test]
    fn deprecated_spellings_fold_into_current_ones() {
        let k = from_value(
            "kustomization.yaml",
            json!({"bases": ["../b"], "resources": ["a.yaml"],
                   "configMapGenerator": [{"name": "c", "env": "x.env", "envs": ["y.env"]}]}),
        )
        .expect("valid");
        assert_eq!(k.resources, ["a.yaml", "../b"]);
        assert_eq!(k.config_map_generator[0].envs, ["y.env", "x.env"]);
    }

    #[test]
    fn global_generator_options_merge_under_local_ones() {
        let local = GeneratorOptions {
            labels: [("a".into(), Scalar("local".into()))].into(),
            ..Default::default()
        };
        let global = GeneratorOptions {
            labels: [("a".into(), Scalar("global".into())), ("b".into(), Scalar("g".into()))].into(),
            disable_name_suffix_hash: true,
            ..Default::default()
        };
        let merged = GeneratorOptions::merged(Some(&local), Some(&global));
        assert_eq!(merged.labels["a"].0, "local");
        assert_eq!(merged.labels["b"].0, "g");
        assert!(merged.disable_name_suffix_hash);
    }
}
