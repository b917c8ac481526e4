//! Patch targets: kustomize's `Selector` — anchored regular expressions on group,
//! version, kind, name and namespace (the `regex` crate: RE2 syntax, as Go's `regexp`),
//! and label/annotation selectors (the API server's own parser).

use std::collections::BTreeMap;

use kairn_cluster::api::selectors::LabelSelector;
use regex::Regex;
use serde_json::Value;

use super::kustomization::Selector;
use super::resource::{group_version, Resource};

/// An anchored pattern (`^(?:…)$`, as kustomize compiles target fields); `None` when
/// the field is empty (matches everything).
fn anchored(pattern: &str) -> Result<Option<Regex>, String> {
    if pattern.is_empty() {
        return Ok(None);
    }
    Regex::new(&format!("^(?:{pattern})$"))
        .map(Some)
        .map_err(|e| format!("target {pattern:?}: {e}"))
}

fn labels_of(map: &serde_json::Map<String, Value>) -> BTreeMap<String, String> {
    map.iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

/// Resources `selector` picks, in order (kustomize's `ResMap.Select`).
pub fn select(selector: &Selector, resources: &[Resource]) -> Result<Vec<usize>, String> {
    let (group, version, kind) = (
        anchored(&selector.group)?,
        anchored(&selector.version)?,
        anchored(&selector.kind)?,
    );
    let (name, namespace) = (anchored(&selector.name)?, anchored(&selector.namespace)?);
    let parse = |s: &str| LabelSelector::parse(s).map_err(|e| format!("selector {s:?}: {e}"));
    let labels = parse(&selector.label_selector)?;
    let annotations = parse(&selector.annotation_selector)?;
    let mut out = Vec::new();
    for (i, r) in resources.iter().enumerate() {
        let (cur, org) = (r.cur_id(), r.org_id());
        let empty_or = |re: &Option<Regex>, s: &str| re.as_ref().is_none_or(|re| re.is_match(s));
        if !(empty_or(&namespace, &org.namespace) || empty_or(&namespace, &cur.namespace)) {
            continue;
        }
        if !(empty_or(&name, &org.name) || empty_or(&name, &cur.name)) {
            continue;
        }
        let (g, v) = group_version(r.str_at("/apiVersion"));
        if !(empty_or(&group, g) && empty_or(&version, v) && empty_or(&kind, r.kind())) {
            continue;
        }
        if !labels.matches(&labels_of(&r.string_map("labels")))
            || !annotations.matches(&labels_of(&r.string_map("annotations")))
        {
            continue;
        }
        out.push(i);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_strings() {
        let cases = [
            ("web", "web", true),
            ("web", "web-2", false),
            ("web.*", "web-2", true),
            ("a|b", "b", true),
            ("(app|web)-[0-9]+", "web-12", true),
            ("(app|web)-[0-9]+", "web-", false),
        ];
        for (pattern, s, want) in cases {
            let re = anchored(pattern).expect(pattern).expect("a pattern");
            assert_eq!(re.is_match(s), want, "{pattern} ~ {s}");
        }
        assert!(anchored("").expect("empty").is_none());
        assert!(anchored("a(").is_err());
    }
}
