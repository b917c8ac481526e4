//! `configMapGenerator` and `secretGenerator`: ConfigMaps and Secrets from literals, env
//! files and files, merged into (or replacing) one from a base when `behavior` says so.
//! Their names get the content hash at the very end (see `hash`), unless disabled.

use serde_json::{Map, Value};

use super::hash;
use super::kustomization::{Generator, GeneratorOptions, Kustomization};
use super::resource::{ResId, Resource};
use super::Context;
use crate::manifest::ManifestError;

/// Runs the ConfigMap generators, then the Secret generators, adding their objects.
pub fn run(ctx: &Context, k: &Kustomization, resources: &mut Vec<Resource>) -> Result<(), ManifestError> {
    for (kind, list, name) in [
        ("ConfigMap", &k.config_map_generator, "configMapGenerator"),
        ("Secret", &k.secret_generator, "secretGenerator"),
    ] {
        for (i, g) in list.iter().enumerate() {
            let field = format!("{name}[{i}]");
            let options = GeneratorOptions::merged(g.options.as_ref(), k.generator_options.as_ref());
            let object = generate(ctx, &field, kind, g, &options)?;
            let generated = Resource {
                object,
                file: ctx.file.to_string(),
                doc: i,
                prev_ids: Vec::new(),
                needs_hash: !options.disable_name_suffix_hash,
            };
            absorb(ctx, &field, &g.behavior, generated, resources)?;
        }
    }
    Ok(())
}

/// The generated object.
fn generate(
    ctx: &Context,
    field: &str,
    kind: &str,
    g: &Generator,
    options: &GeneratorOptions,
) -> Result<Value, ManifestError> {
    if g.name.is_empty() {
        return Err(ctx.error(&format!("{field}.name"), "a generator must have a name"));
    }
    let mut meta = Map::new();
    meta.insert("name".into(), g.name.clone().into());
    if !g.namespace.is_empty() {
        meta.insert("namespace".into(), g.namespace.clone().into());
    }
    for (key, map) in [("labels", &options.labels), ("annotations", &options.annotations)] {
        if !map.is_empty() {
            let m: Map<String, Value> = map
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.0.clone())))
                .collect();
            meta.insert(key.into(), Value::Object(m));
        }
    }
    let mut object = Map::new();
    object.insert("apiVersion".into(), "v1".into());
    object.insert("kind".into(), kind.into());
    object.insert("metadata".into(), Value::Object(meta));
    let pairs = pairs(ctx, field, g)?;
    if kind == "Secret" {
        let ty = if g.type_.is_empty() { "Opaque" } else { &g.type_ };
        object.insert("type".into(), ty.into());
        let data: Map<String, Value> = pairs
            .into_iter()
            .map(|(k, v)| (k, Value::String(hash::base64_wrapped(&v))))
            .collect();
        object.insert("data".into(), Value::Object(data));
    } else {
        let (mut data, mut binary) = (Map::new(), Map::new());
        for (k, v) in pairs {
            match String::from_utf8(v) {
                Ok(text) => data.insert(k, Value::String(text)),
                Err(e) => binary.insert(k, Value::String(hash::base64_wrapped(e.as_bytes()))),
            };
        }
        if !data.is_empty() {
            object.insert("data".into(), Value::Object(data));
        }
        if !binary.is_empty() {
            object.insert("binaryData".into(), Value::Object(binary));
        }
    }
    if options.immutable {
        object.insert("immutable".into(), true.into());
    }
    Ok(Value::Object(object))
}

/// The key/value pairs of a generator: env files, then literals, then files, as kustomize
/// loads them; a repeated key is an error.
fn pairs(ctx: &Context, field: &str, g: &Generator) -> Result<Vec<(String, Vec<u8>)>, ManifestError> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, env) in g.envs.iter().enumerate() {
        let f = format!("{field}.envs[{i}]");
        let (_, text) = ctx.read_text(&f, env)?;
        for line in text.trim_start_matches('\u{feff}').lines() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.split_once('=').unwrap_or((line, ""));
            if !is_env_var_name(key) {
                return Err(ctx.error(&f, format!("{env}: {key:?} is not a valid environment variable name")));
            }
            out.push((key.into(), value.as_bytes().to_vec()));
        }
    }
    for (i, literal) in g.literals.iter().enumerate() {
        let f = format!("{field}.literals[{i}]");
        let Some((key, value)) = literal.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(ctx.error(&f, format!("invalid literal source {literal:?}, expected key=value")));
        };
        out.push((key.into(), remove_quotes(value).as_bytes().to_vec()));
    }
    for (i, source) in g.files.iter().enumerate() {
        let f = format!("{field}.files[{i}]");
        let (key, path) = match source.matches('=').count() {
            0 => (source.rsplit('/').next().unwrap_or(source).to_string(), source.as_str()),
            1 => match source.split_once('=') {
                Some((k, p)) if !k.is_empty() && !p.is_empty() => (k.to_string(), p),
                _ => return Err(ctx.error(&f, format!("{source:?}: expected a file or key=file"))),
            },
            _ => return Err(ctx.error(&f, format!("{source:?}: key name or file path contains '='"))),
        };
        let (_, content) = ctx.read(&f, path)?;
        out.push((key, content.to_vec()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (key, _) in &out {
        if !is_config_key(key) {
            return Err(ctx.error(
                field,
                format!("{key:?}: a data key must consist of alphanumerics, '-', '_' or '.'"),
            ));
        }
        if !seen.insert(key.clone()) {
            return Err(ctx.error(field, format!("{} illegally repeats the key `{key}`", g.name)));
        }
    }
    Ok(out)
}

/// kustomize's `removeQuotes`: one pair of matching surrounding quotes goes.
fn remove_quotes(s: &str) -> &str {
    let b = s.as_bytes();
    if b.len() >= 2 && b[0] == b[b.len() - 1] && (b[0] == b'"' || b[0] == b'\'') {
        &s[1..s.len() - 1]
    } else {
        s
    }
}

fn is_env_var_name(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

fn is_config_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 253 && key.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// kustomize's `appendReplaceOrMerge`: `create` adds, `merge` and `replace` need the one
/// existing object of the same identity and take its name, namespace and history.
fn absorb(
    ctx: &Context,
    field: &str,
    behavior: &str,
    mut new: Resource,
    resources: &mut Vec<Resource>,
) -> Result<(), ManifestError> {
    let id = new.cur_id();
    let matches: Vec<usize> = resources
        .iter()
        .enumerate()
        .filter(|(_, r)| r.all_ids().contains(&id))
        .map(|(i, _)| i)
        .collect();
    let behavior = if behavior.is_empty() { "create" } else { behavior };
    if !["create", "merge", "replace"].contains(&behavior) {
        return Err(ctx.error(
            &format!("{field}.behavior"),
            format!("{behavior:?}: must be create, merge or replace"),
        ));
    }
    match (matches.as_slice(), behavior) {
        ([], "create") => {
            resources.push(new);
            Ok(())
        }
        ([], _) => Err(ctx.error(
            field,
            format!("{}: does not exist; cannot merge or replace", describe(&id)),
        )),
        ([i], "merge" | "replace") => {
            let old = &resources[*i];
            for key in ["labels", "annotations"] {
                let mut merged = old.string_map(key);
                merged.extend(new.string_map(key));
                new.set_string_map(key, merged);
            }
            new.set_name(old.name());
            new.set_namespace(old.namespace());
            new.prev_ids = old.prev_ids.clone();
            if behavior == "merge" {
                for key in ["data", "binaryData"] {
                    let mut merged = old
                        .object
                        .get(key)
                        .and_then(Value::as_object)
                        .cloned()
                        .unwrap_or_default();
                    if let Some(Value::Object(m)) = new.object.get(key) {
                        merged.extend(m.clone());
                    }
                    if let Some(obj) = new.object.as_object_mut() {
                        if merged.is_empty() {
                            obj.remove(key);
                        } else {
                            obj.insert(key.into(), Value::Object(merged));
                        }
                    }
                }
                // kustomize keeps the origin of the object merged into.
                new.file = old.file.clone();
                new.doc = old.doc;
            }
            resources[*i] = new;
            Ok(())
        }
        ([_], _) => Err(ctx.error(
            field,
            format!("{} exists; behavior must be merge or replace", describe(&id)),
        )),
        (_, _) => Err(ctx.error(
            field,
            format!("several objects could accept the merge of {}", describe(&id)),
        )),
    }
}

fn describe(id: &ResId) -> String {
    id.describe()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_quotes_and_keys() {
        for (input, want) in [
            ("\"a b\"", "a b"),
            ("'x'", "x"),
            ("\"x'", "\"x'"),
            ("\"", "\""),
            ("v", "v"),
        ] {
            assert_eq!(remove_quotes(input), want);
        }
        assert!(is_config_key("a.b-c_d"));
        assert!(!is_config_key("a/b"));
        assert!(is_env_var_name("FOO_1"));
        assert!(!is_env_var_name("1FOO"));
    }
}
