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
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// SHA-256 (FIPS 180-4).
fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (i, word) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&word.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sha256_matches_the_standard_vectors() {
        let cases: [(&[u8], &str); 3] = [
            (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            (
                b"abc",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            (
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
                "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(hex(&sha256(input)), want);
        }
    }

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
