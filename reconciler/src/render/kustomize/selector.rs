//! Patch targets: kustomize's `Selector` — anchored regular expressions on group,
//! version, kind, name and namespace, and label/annotation selectors.
//!
//! The regular expressions are a small backtracking subset (literals, `.`, classes,
//! `* + ?`, groups and `|`), enough for target names; anything else is an error rather
//! than a different match.

use std::collections::BTreeMap;

use serde_json::Value;

use super::kustomization::Selector;
use super::resource::{group_version, Resource};

/// Resources `selector` picks, in order (kustomize's `ResMap.Select`).
pub fn select(selector: &Selector, resources: &[Resource]) -> Result<Vec<usize>, String> {
    let re = |s: &str| Regex::parse(s).map_err(|e| format!("target {s:?}: {e}"));
    let (group, version, kind) = (re(&selector.group)?, re(&selector.version)?, re(&selector.kind)?);
    let (name, namespace) = (re(&selector.name)?, re(&selector.namespace)?);
    let labels = LabelSelector::parse(&selector.label_selector)?;
    let annotations = LabelSelector::parse(&selector.annotation_selector)?;
    let mut out = Vec::new();
    for (i, r) in resources.iter().enumerate() {
        let (cur, org) = (r.cur_id(), r.org_id());
        let empty_or = |re: &Regex, s: &str| re.is_empty() || re.matches(s);
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
        if !labels.matches(&r.string_map("labels")) || !annotations.matches(&r.string_map("annotations")) {
            continue;
        }
        out.push(i);
    }
    Ok(out)
}

/// A label selector: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`.
#[derive(Debug, Default)]
pub struct LabelSelector(Vec<Requirement>);

#[derive(Debug)]
enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl LabelSelector {
    /// Parses a selector ("" selects everything).
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut reqs = Vec::new();
        // Split on commas outside parentheses.
        let (mut depth, mut start) = (0, 0);
        let mut parts = Vec::new();
        for (i, c) in s.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&s[start..]);
        for part in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let bad = || format!("invalid selector requirement {part:?}");
            let set = |rest: &str| -> Result<Vec<String>, String> {
                let inner = rest
                    .trim()
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(bad)?;
                Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
            };
            let req = if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotIn(k.trim().into(), vec![v.trim().into()])
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::In(k.trim().into(), vec![v.trim().into()])
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), set(rest)?)
            } else if let Some((k, rest)) = part.split_once(" in ") {
                Requirement::In(k.trim().into(), set(rest)?)
            } else if part.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
                Requirement::Exists(part.to_string())
            } else {
                return Err(bad());
            };
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether a label (or annotation) map satisfies every requirement.
    pub fn matches(&self, labels: &serde_json::Map<String, Value>) -> bool {
        let labels: BTreeMap<&str, &str> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or("")))
            .collect();
        self.0.iter().all(|r| match r {
            Requirement::In(k, vs) => labels.get(k.as_str()).is_some_and(|v| vs.iter().any(|x| x == v)),
            Requirement::NotIn(k, vs) => labels.get(k.as_str()).is_none_or(|v| !vs.iter().any(|x| x == v)),
            Requirement::Exists(k) => labels.contains_key(k.as_str()),
            Requirement::NotExists(k) => !labels.contains_key(k.as_str()),
        })
    }
}

/// An anchored regular expression (`^(?:…)$`), as kustomize compiles target fields.
#[derive(Debug)]
pub struct Regex(Alt);

/// Alternatives of sequences.
#[derive(Debug)]
struct Alt(Vec<Vec<Piece>>);

#[derive(Debug)]
struct Piece {
    atom: Atom,
    min: usize,
    max: Option<usize>,
}

#[derive(Debug)]
enum Atom {
    Char(char),
    Any,
    Class(bool, Vec<(char, char)>),
    Group(Alt),
}

impl Regex {
    /// Parses `pattern`; an error for syntax outside the subset.
    pub fn parse(pattern: &str) -> Result<Regex, String> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut pos = 0;
        let alt = parse_alt(&chars, &mut pos)?;
        if pos != chars.len() {
            return Err("unbalanced ')'".into());
        }
        Ok(Regex(alt))
    }

    /// Whether the pattern is empty (matches any value, as an unset selector field).
    pub fn is_empty(&self) -> bool {
        self.0 .0.len() == 1 && self.0 .0[0].is_empty()
    }

    /// Whether the whole of `s` matches.
    pub fn matches(&self, s: &str) -> bool {
        let chars: Vec<char> = s.chars().collect();
        match_alt(&self.0, &chars, 0, &mut |end| end == chars.len())
    }
}

fn parse_alt(chars: &[char], pos: &mut usize) -> Result<Alt, String> {
    let mut alts = vec![Vec::new()];
    while *pos < chars.len() {
        let c = chars[*pos];
        *pos += 1;
        let atom = match c {
            '|' => {
                alts.push(Vec::new());
                continue;
            }
            ')' => {
                *pos -= 1;
                break;
            }
            '(' => {
                if chars.get(*pos) == Some(&'?') {
                    if chars.get(*pos + 1) == Some(&':') {
                        *pos += 2;
                    } else {
                        return Err("unsupported group syntax".into());
                    }
                }
                let inner = parse_alt(chars, pos)?;
                if chars.get(*pos) != Some(&')') {
                    return Err("missing ')'".into());
                }
                *pos += 1;
                Atom::Group(inner)
            }
            '.' => Atom::Any,
            '[' => {
                let negated = chars.get(*pos) == Some(&'^');
                if negated {
                    *pos += 1;
                }
                let mut ranges = Vec::new();
                let mut first = true;
                loop {
                    let Some(&c) = chars.get(*pos) else {
                        return Err("missing ']'".into());
                    };
                    *pos += 1;
                    if c == ']' && !first {
                        break;
                    }
                    first = false;
                    let c = if c == '\\' { escaped(chars, pos)? } else { c };
                    if chars.get(*pos) == Some(&'-') && chars.get(*pos + 1).is_some_and(|n| *n != ']') {
                        let hi = chars[*pos + 1];
                        *pos += 2;
                        ranges.push((c, hi));
                    } else {
                        ranges.push((c, c));
                    }
                }
                Atom::Class(negated, ranges)
            }
            '\\' => Atom::Char(escaped(chars, pos)?),
            '^' | '$' | '{' | '}' | '*' | '+' | '?' => {
                return Err(format!("unsupported regular expression syntax {c:?}"))
            }
            c => Atom::Char(c),
        };
        let (min, max) = match chars.get(*pos) {
            Some('*') => (0, None),
            Some('+') => (1, None),
            Some('?') => (0, Some(1)),
            _ => (1, Some(1)),
        };
        if (min, max) != (1, Some(1)) {
            *pos += 1;
        }
        alts.last_mut()
            .map(|seq| seq.push(Piece { atom, min, max }))
            .unwrap_or_default();
    }
    Ok(Alt(alts))
}

fn escaped(chars: &[char], pos: &mut usize) -> Result<char, String> {
    let c = *chars.get(*pos).ok_or("trailing backslash")?;
    *pos += 1;
    if c.is_ascii_alphanumeric() {
        return Err(format!("unsupported escape \\{c}"));
    }
    Ok(c)
}

fn match_alt(alt: &Alt, s: &[char], at: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
    alt.0.iter().any(|seq| match_seq(seq, s, at, k))
}

fn match_seq(seq: &[Piece], s: &[char], at: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
    let Some((piece, rest)) = seq.split_first() else {
        return k(at);
    };
    match_piece(piece, 0, s, at, &mut |end| match_seq(rest, s, end, k))
}

/// Matches `piece` `count` times so far, greedily, then the continuation.
fn match_piece(piece: &Piece, count: usize, s: &[char], at: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
    if piece.max.is_none_or(|m| count < m) {
        let more = match_atom(&piece.atom, s, at, &mut |end| {
            // An empty iteration would loop forever.
            end != at && match_piece(piece, count + 1, s, end, k)
        });
        if more {
            return true;
        }
    }
    count >= piece.min && k(at)
}

fn match_atom(atom: &Atom, s: &[char], at: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
    match atom {
        Atom::Group(alt) => match_alt(alt, s, at, k),
        _ => {
            let Some(&c) = s.get(at) else { return false };
            let ok = match atom {
                Atom::Char(x) => *x == c,
                Atom::Any => c != '\n',
                Atom::Class(negated, ranges) => ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negated,
                Atom::Group(_) => false,
            };
            ok && k(at + 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn regexes_match_whole_strings() {
        let cases = [
            ("web", "web", true),
            ("web", "web-2", false),
            ("web.*", "web-2", true),
            ("a|b", "b", true),
            ("(app|web)-[0-9]+", "web-12", true),
            ("(app|web)-[0-9]+", "web-", false),
            ("[^x]?y", "zy", true),
            ("a\\.b", "a.b", true),
            ("a\\.b", "axb", false),
        ];
        for (pattern, s, want) in cases {
            let re = Regex::parse(pattern).expect(pattern);
            assert_eq!(re.matches(s), want, "{pattern} ~ {s}");
        }
        assert!(Regex::parse("a{2}").is_err());
        assert!(Regex::parse("").expect("empty").is_empty());
    }

    #[test]
    fn label_selectors() {
        let labels = json!({"app": "web", "tier": "front"});
        let labels = labels.as_object().expect("map");
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app!=web", false),
            ("app in (api, web)", true),
            ("tier notin (front)", false),
            ("app", true),
            ("!app", false),
            ("missing", false),
        ];
        for (s, want) in cases {
            assert_eq!(LabelSelector::parse(s).expect(s).matches(labels), want, "{s}");
        }
    }
}
