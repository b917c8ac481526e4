//! Warnings of one request, sent back as `Warning` headers the way kube-apiserver sends
//! them (`299 - "unknown field \"spec.foo\""`); kubectl prints each as `Warning: ...`.
//!
//! Like kube-apiserver's recorder they are scoped to the request: code deep in admission
//! calls [`add`] without threading a collector through every signature, and the handler
//! that ran the request inside [`collect`] turns them into headers.

use std::cell::RefCell;
use std::future::Future;

use axum::http::{HeaderMap, HeaderValue};

tokio::task_local! {
    static WARNINGS: RefCell<Vec<String>>;
}

/// Past this many characters in all, each warning is cut to [`TRUNCATED_ITEM`] and the
/// rest dropped (kube-apiserver's limits, which keep headers within proxies' bounds).
const TRUNCATE_AT_TOTAL: usize = 4 * 1024;
/// The length a warning is cut to once truncating.
const TRUNCATED_ITEM: usize = 256;

/// Records a warning for the current request; repeats are dropped. Outside [`collect`]
/// (the batch, bootstrap, tests) warnings go nowhere.
pub fn add(text: impl Into<String>) {
    let text = text.into();
    // Header values cannot carry control characters: kube-apiserver drops such warnings.
    if text.is_empty() || text.chars().any(char::is_control) {
        return;
    }
    let _ = WARNINGS.try_with(|w| {
        let mut w = w.borrow_mut();
        if !w.contains(&text) {
            w.push(text);
        }
    });
}

/// Runs `request`, returning its output and the warnings it recorded.
pub async fn collect<F: Future>(request: F) -> (F::Output, Vec<String>) {
    WARNINGS
        .scope(RefCell::new(Vec::new()), async {
            let out = request.await;
            (out, WARNINGS.with(|w| w.take()))
        })
        .await
}

/// Adds one `Warning` header per warning.
pub fn add_headers(headers: &mut HeaderMap, warnings: &[String]) {
    let total: usize = warnings.iter().map(|w| w.chars().count()).sum();
    let truncating = total > TRUNCATE_AT_TOTAL;
    let mut written = 0;
    for text in warnings {
        if truncating && written >= TRUNCATE_AT_TOTAL {
            break;
        }
        let text: String = if truncating {
            text.chars().take(TRUNCATED_ITEM).collect()
        } else {
            text.clone()
        };
        written += text.chars().count();
        if let Ok(value) = HeaderValue::from_bytes(header_value(&text).as_bytes()) {
            headers.append("warning", value);
        }
    }
}

/// `299 - "<text>"`, with `"` and `\` escaped (RFC 7234's warn-text).
fn header_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    out.push_str("299 - \"");
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn warnings_are_scoped_deduplicated_and_quoted() {
        add("outside any request");
        let ((), warnings) = collect(async {
            add("unknown field \"spec.foo\"");
            add("unknown field \"spec.foo\"");
            add("bad\ncontrol");
            tokio::task::yield_now().await;
            add("unknown field \"spec.bar\"");
        })
        .await;
        assert_eq!(warnings, ["unknown field \"spec.foo\"", "unknown field \"spec.bar\""]);
        let mut headers = HeaderMap::new();
        add_headers(&mut headers, &warnings);
        let values: Vec<&str> = headers.get_all("warning").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(
            values,
            [
                r#"299 - "unknown field \"spec.foo\"""#,
                r#"299 - "unknown field \"spec.bar\"""#
            ]
        );
    }

    #[test]
    fn many_warnings_are_truncated() {
        let warnings: Vec<String> = (0..40).map(|i| format!("{i}:{}", "x".repeat(300))).collect();
        let mut headers = HeaderMap::new();
        add_headers(&mut headers, &warnings);
        let values: Vec<_> = headers.get_all("warning").iter().collect();
        assert_eq!(values.len(), TRUNCATE_AT_TOTAL / TRUNCATED_ITEM);
        assert!(values.iter().all(|v| v.len() <= TRUNCATED_ITEM + 8));
    }
}
