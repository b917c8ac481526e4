//! Kustomize's name-suffix hash of generated ConfigMaps and Secrets, byte for byte as
//! kustomize's `api/hasher` computes it: SHA-256 of a Go `json.Marshal` of a few fields,
//! the first ten hex digits with five letters swapped (so a suffix is never all digits
//! and has no vowels that spell words).
//!
//! SHA-256 and base64 are written here rather than pulled in as crates: both are tiny,
//! and kustomize's base64 (line-wrapped at 70) is not a standard variant anyway.

use serde_json::{Map, Value};

/// kustomize looks the name up as `yaml.Lookup("metadata/name")`, which reads one field
/// literally named `metadata/name` — there is none, so every name hashes as "". A
/// pointer that never resolves reproduces that.
const NAME: &str = "/metadata~1name";

/// The hash suffix kustomize gives a ConfigMap or Secret (`None` for other kinds).
pub fn suffix(object: &Value) -> Option<String> {
    let field = |path: &str| -> Value {
        match object.pointer(path) {
            // Missing fields (and nulls, which kyaml treats as missing) hash as "".
            None | Some(Value::Null) => Value::String(String::new()),
            Some(Value::String(s)) => Value::String(s.clone()),
            // Scalars that are not strings hash as their YAML text.
            Some(v @ (Value::Bool(_) | Value::Number(_))) => Value::String(v.to_string()),
            Some(v) => v.clone(),
        }
    };
    let mut m = Map::new();
    match object.get("kind").and_then(Value::as_str) {
        Some("ConfigMap") => {
            m.insert("kind".into(), "ConfigMap".into());
            m.insert("name".into(), field(NAME));
            m.insert("data".into(), field("/data"));
            if let Some(b @ Value::Object(_)) = object.get("binaryData") {
                m.insert("binaryData".into(), b.clone());
            }
        }
        Some("Secret") => {
            m.insert("kind".into(), "Secret".into());
            m.insert("type".into(), field("/type"));
            m.insert("name".into(), field(NAME));
            m.insert("data".into(), field("/data"));
            if let Some(s @ Value::Object(_)) = object.get("stringData") {
                m.insert("stringData".into(), s.clone());
            }
        }
        _ => return None,
    }
    let mut encoded = String::new();
    go_json(&Value::Object(m), &mut encoded);
    Some(encode(&hex(&sha256(encoded.as_bytes()))))
}

/// kustomize's `encode`: the first ten hex digits, with 0, 1, 3, a and e swapped for letters.
fn encode(hex: &str) -> String {
    hex.chars()
        .take(10)
        .map(|c| match c {
            '0' => 'g',
            '1' => 'h',
            '3' => 'k',
            'a' => 'm',
            'e' => 't',
            c => c,
        })
        .collect()
}

/// Go's `json.Marshal` of a decoded YAML value: keys sorted, no spaces, and `<`, `>`, `&`,
/// U+2028 and U+2029 escaped as Go does (the hash must see the same bytes).
fn go_json(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => go_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                go_json(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // serde_json's map is sorted by key, as Go sorts map keys when marshalling.
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                go_string(k, out);
                out.push(':');
                go_json(v, out);
            }
            out.push('}');
        }
    }
}

fn go_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// kustomize's base64 for Secret data and ConfigMap binaryData: standard alphabet,
/// wrapped every 70 characters, each line ending in a newline once there is more than one.
pub fn base64_wrapped(data: &[u8]) -> String {
    let encoded = base64(data);
    const LINE: usize = 70;
    let lines = encoded.len() / LINE + 1;
    if lines <= 1 {
        return encoded;
    }
    let mut out = String::with_capacity(encoded.len() + lines);
    for chunk in encoded.as_bytes().chunks(LINE) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out
}

fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base64_pads_and_wraps_as_kustomize() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
        ] {
            assert_eq!(base64_wrapped(input.as_bytes()), want);
        }
        let long = base64_wrapped(&[b'x'; 60]);
        assert_eq!(long.lines().map(str::len).collect::<Vec<_>>(), [70, 10]);
        assert!(long.ends_with('\n'));
    }

    #[test]
    fn go_json_escapes_like_go() {
        let mut out = String::new();
        go_json(&json!({"b": "<&>\u{2028}\"\\\n\u{1}", "a": [1, true, null]}), &mut out);
        assert_eq!(out, r#"{"a":[1,true,null],"b":"\u003c\u0026\u003e\u2028\"\\\n\u0001"}"#);
    }

    // The expected suffixes are kustomize's own (its `api/hasher/hasher_test.go`).
    #[test]
    fn suffixes_match_kustomize() {
        let cases = [
            (json!({"kind": "ConfigMap", "metadata": {"name": ""}}), "6ct58987ht"),
            (
                json!({"kind": "ConfigMap", "metadata": {"name": ""}, "data": {"one": ""}}),
                "9g67k2htb6",
            ),
            (
                json!({"kind": "ConfigMap", "metadata": {"name": ""}, "data": {"one": ""}, "binaryData": {"two": ""}}),
                "698h7c7t9m",
            ),
            (
                json!({"kind": "Secret", "type": "my-type", "metadata": {"name": ""}}),
                "5gmgkf8578",
            ),
            (
                json!({"kind": "Secret", "type": "my-type", "metadata": {"name": ""}, "data": {"one": ""}}),
                "74bd68bm66",
            ),
        ];
        for (object, want) in cases {
            assert_eq!(suffix(&object).as_deref(), Some(want), "{object}");
        }
        // Observed from `kubectl kustomize` (v5.5): the name does not change the hash.
        for name in ["a", "other"] {
            let cm = json!({"kind": "ConfigMap", "metadata": {"name": name}, "data": {"x": "1"}});
            assert_eq!(suffix(&cm).as_deref(), Some("hmg6f82fh6"));
        }
        assert_eq!(suffix(&json!({"kind": "Pod"})), None);
    }
}
