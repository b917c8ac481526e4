//! `pods/<name>/log`: checked here as kube-apiserver checks it (the options, the
//! container, the pod's node, the container's state, with Kubernetes' and the kubelet's
//! messages), then proxied to the agent of the pod's node, which serves the container's
//! log as a kubelet does.

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use super::error::{ApiError, Cause};
use super::objects::{self, Params, Target};
use super::{registry, AppState};

/// `PodLogOptions` of a request, checked.
#[derive(Debug, Default, PartialEq)]
struct LogOptions {
    follow: bool,
    previous: bool,
    timestamps: bool,
    tail_lines: Option<i64>,
    limit_bytes: Option<i64>,
    since_seconds: Option<i64>,
    since_time: Option<Timestamp>,
}

impl LogOptions {
    /// Parses and validates the query (Kubernetes' ValidatePodLogOptions).
    fn parse(params: &Params, pod: &str) -> Result<Self, ApiError> {
        let flag = |k: &str| -> Result<bool, ApiError> {
            match params.get(k).map(String::as_str) {
                None | Some("false") | Some("0") => Ok(false),
                Some("true") | Some("1") | Some("") => Ok(true),
                Some(v) => Err(ApiError::BadRequest(format!("{k}: invalid boolean value {v:?}"))),
            }
        };
        let number = |k: &str| -> Result<Option<i64>, ApiError> {
            params
                .get(k)
                .map(|v| {
                    v.parse()
                        .map_err(|_| ApiError::BadRequest(format!("{k}: invalid integer value {v:?}")))
                })
                .transpose()
        };
        let since_time = params
            .get("sinceTime")
            .map(|v| {
                v.parse::<Timestamp>()
                    .map_err(|e| ApiError::BadRequest(format!("sinceTime: invalid time {v:?}: {e}")))
            })
            .transpose()?;
        let opts = LogOptions {
            follow: flag("follow")?,
            previous: flag("previous")?,
            timestamps: flag("timestamps")?,
            tail_lines: number("tailLines")?,
            limit_bytes: number("limitBytes")?,
            since_seconds: number("sinceSeconds")?,
            since_time,
        };
        let mut causes = Vec::new();
        if let Some(n) = opts.tail_lines.filter(|n| *n < 0) {
            causes.push(Cause::invalid(
                "tailLines",
                format!("Invalid value: {n}: must be greater than or equal to 0"),
            ));
        }
        if let Some(n) = opts.limit_bytes.filter(|n| *n < 1) {
            causes.push(Cause::invalid(
                "limitBytes",
                format!("Invalid value: {n}: must be greater than 0"),
            ));
        }
        match (opts.since_seconds, opts.since_time) {
            (Some(_), Some(_)) => causes.push(Cause::new(
                "FieldValueForbidden",
                "",
                "Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified",
            )),
            (Some(n), None) if n < 1 => causes.push(Cause::invalid(
                "sinceSeconds",
                format!("Invalid value: {n}: must be greater than 0"),
            )),
            _ => {}
        }
        if !causes.is_empty() {
            return Err(ApiError::Invalid {
                kind: "PodLogOptions".into(),
                name: pod.into(),
                causes,
            });
        }
        Ok(opts)
    }

    /// The agent's query string (values are numbers, booleans and a UTC time only).
    fn query(&self) -> String {
        let mut q = Vec::new();
        for (k, on) in [
            ("follow", self.follow),
            ("previous", self.previous),
            ("timestamps", self.timestamps),
        ] {
            if on {
                q.push(format!("{k}=true"));
            }
        }
        for (k, v) in [
            ("tailLines", self.tail_lines),
            ("limitBytes", self.limit_bytes),
            ("sinceSeconds", self.since_seconds),
        ] {
            if let Some(v) = v {
                q.push(format!("{k}={v}"));
            }
        }
        if let Some(t) = self.since_time {
            q.push(format!("sinceTime={}", t.strftime("%Y-%m-%dT%H:%M:%S.%NZ")));
        }
        q.join("&")
    }
}

fn names<'a>(pod: &'a Value, field: &str) -> Vec<&'a str> {
    pod.pointer(&format!("/spec/{field}"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect()
}

/// The container a request is for, as kube-apiserver picks it.
fn choose_container(pod: &Value, name: &str, asked: Option<&String>) -> Result<String, ApiError> {
    let containers = names(pod, "containers");
    let init = names(pod, "initContainers");
    let ephemeral = names(pod, "ephemeralContainers");
    match asked.filter(|c| !c.is_empty()) {
        Some(c) if containers.iter().chain(&init).chain(&ephemeral).any(|n| n == c) => Ok(c.clone()),
        Some(c) => Err(ApiError::BadRequest(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None if containers.len() == 1 => Ok(containers[0].to_string()),
        None => {
            let mut message = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !init.is_empty() {
                message.push_str(&format!(" or one of the init containers: [{}]", init.join(" ")));
            }
            Err(ApiError::BadRequest(message))
        }
    }
}

/// Whether the container has a log to serve, from the pod's status, with the kubelet's
/// messages (its validateContainerLogStatus).
fn check_status(pod: &Value, name: &str, container: &str, previous: bool) -> Result<(), ApiError> {
    let status = pod.get("status");
    let statuses: Vec<&Value> = [
        "containerStatuses",
        "initContainerStatuses",
        "ephemeralContainerStatuses",
    ]
    .iter()
    .filter_map(|f| status.and_then(|s| s.get(*f)).and_then(Value::as_array))
    .flatten()
    .collect();
    let bad = |m: String| Err(ApiError::BadRequest(m));
    let Some(cs) = statuses
        .iter()
        .find(|s| s.get("name").and_then(Value::as_str) == Some(container))
    else {
        if statuses.is_empty() {
            return bad(format!(
                "container {container:?} in pod {name:?} is waiting to start: ContainerCreating"
            ));
        }
        return bad(format!("container {container:?} in pod {name:?} is not available"));
    };
    let state = |which: &str, kind: &str| cs.pointer(&format!("/{which}/{kind}")).filter(|v| v.is_object());
    let has_id = |v: &Value| {
        v.get("containerID")
            .and_then(Value::as_str)
            .is_some_and(|i| !i.is_empty())
    };
    if previous {
        return match state("lastState", "terminated") {
            Some(t) if has_id(t) => Ok(()),
            _ => bad(format!(
                "previous terminated container {container:?} in pod {name:?} not found"
            )),
        };
    }
    if state("state", "running").is_some() {
        return Ok(());
    }
    if let Some(t) = state("state", "terminated") {
        if has_id(t) || state("lastState", "terminated").is_some_and(has_id) {
            return Ok(());
        }
        return bad(format!("container {container:?} in pod {name:?} is terminated"));
    }
    if let Some(t) = state("lastState", "terminated") {
        if has_id(t) {
            return Ok(());
        }
        return bad(format!("container {container:?} in pod {name:?} is terminated"));
    }
    if let Some(w) = state("state", "waiting") {
        let reason = w.get("reason").and_then(Value::as_str).unwrap_or_default();
        return bad(format!(
            "container {container:?} in pod {name:?} is waiting to start: {reason}"
        ));
    }
    bad(format!(
        "container {container:?} in pod {name:?} is waiting to start - no logs yet"
    ))
}

/// Serves a log request for the pod `target` names.
pub async fn proxy(state: &AppState, target: &Target, params: &Params) -> Result<Response, ApiError> {
    let name = target.name.as_deref().unwrap_or_default();
    let ns = target.namespace.as_deref().unwrap_or("default");
    let (pod, _) = objects::read(state, target.res, Some(ns), name).await?;
    let opts = LogOptions::parse(params, name)?;
    let container = choose_container(&pod, name, params.get("container"))?;
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    let node_name =
        node_name.ok_or_else(|| ApiError::BadRequest(format!("pod {name} does not have a host assigned")))?;
    check_status(&pod, name, &container, opts.previous)?;
    let nodes = registry::by_plural("", "v1", "nodes").ok_or_else(|| ApiError::Internal("no nodes resource".into()))?;
    let (node, _) = objects::read(state, nodes, None, node_name).await?;
    let address = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
        .and_then(|a| a["address"].as_str())
        .ok_or_else(|| ApiError::BadRequest(format!("node {node_name} reports no InternalIP")))?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .ok_or_else(|| ApiError::BadRequest(format!("node {node_name} reports no log endpoint")))?;
    let url = format!(
        "http://{address}:{port}/containerLogs/{ns}/{name}/{container}?{}",
        opts.query()
    );
    let uri: axum::http::Uri = url
        .parse()
        .map_err(|e| ApiError::Internal(format!("log URL {url}: {e}")))?;

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<axum::body::Bytes>>();
    let response = client
        .get(uri)
        .await
        .map_err(|e| ApiError::BadRequest(format!("cannot reach node {node_name} for logs: {e}")))?;
    let status = response.status();
    if status != StatusCode::OK {
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(ApiError::BadRequest(String::from_utf8_lossy(&body).into_owned()));
    }
    Response::builder()
        .header("content-type", "text/plain")
        .body(Body::new(response.into_body()))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(pairs: &[(&str, &str)]) -> Params {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn options_are_validated_and_passed_on() {
        let ok = LogOptions::parse(
            &params(&[
                ("follow", "true"),
                ("tailLines", "3"),
                ("sinceTime", "2024-01-02T03:04:05+01:00"),
            ]),
            "p",
        )
        .unwrap();
        assert_eq!(
            ok.query(),
            "follow=true&tailLines=3&sinceTime=2024-01-02T02:04:05.000000000Z"
        );
        // (query) -> error message
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("tailLines", "-1")],
                "tailLines: Invalid value: -1: must be greater than or equal to 0",
            ),
            (
                &[("limitBytes", "0")],
                "limitBytes: Invalid value: 0: must be greater than 0",
            ),
            (
                &[("sinceSeconds", "0")],
                "sinceSeconds: Invalid value: 0: must be greater than 0",
            ),
            (
                &[("sinceSeconds", "5"), ("sinceTime", "2024-01-02T03:04:05Z")],
                "at most one of `sinceTime` or `sinceSeconds` may be specified",
            ),
            (&[("tailLines", "x")], "tailLines: invalid integer value"),
            (&[("follow", "maybe")], "follow: invalid boolean value"),
        ];
        for (query, want) in cases {
            let err = LogOptions::parse(&params(query), "p").unwrap_err().to_string();
            assert!(err.contains(want), "{query:?}: {err}");
        }
    }

    #[test]
    fn container_choice_as_kube_apiserver_words_it() {
        let pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        let one = json!({"spec": {"containers": [{"name": "a"}]}});
        assert_eq!(choose_container(&one, "p", None).unwrap(), "a");
        assert_eq!(choose_container(&pod, "p", Some(&"i".to_string())).unwrap(), "i");
        let err = |pod: &Value, c: Option<&str>| {
            choose_container(pod, "p", c.map(str::to_string).as_ref())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(err(&pod, Some("z")), "container z is not valid for pod p");
        assert_eq!(
            err(&pod, None),
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]"
        );
    }

    #[test]
    fn container_state_decides_what_can_be_served() {
        let with = |status: Value| json!({"status": {"containerStatuses": [status]}});
        let running = json!({"name": "c", "state": {"running": {}}});
        let restarted =
            json!({"name": "c", "state": {"running": {}}, "lastState": {"terminated": {"containerID": "process://1"}}});
        let creating = json!({"name": "c", "state": {"waiting": {"reason": "ContainerCreating"}}});
        let backoff = json!({"name": "c", "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"containerID": "process://1"}}});
        // (pod, previous) -> Ok or the message
        let cases = [
            (with(running.clone()), false, Ok(())),
            (
                with(running),
                true,
                Err(r#"previous terminated container "c" in pod "p" not found"#),
            ),
            (with(restarted), true, Ok(())),
            (
                with(creating),
                false,
                Err(r#"container "c" in pod "p" is waiting to start: ContainerCreating"#),
            ),
            (with(backoff.clone()), false, Ok(())),
            (with(backoff), true, Ok(())),
            (
                json!({}),
                false,
                Err(r#"container "c" in pod "p" is waiting to start: ContainerCreating"#),
            ),
            (
                with(json!({"name": "other"})),
                false,
                Err(r#"container "c" in pod "p" is not available"#),
            ),
        ];
        for (pod, previous, want) in cases {
            let got = check_status(&pod, "p", "c", previous).map_err(|e| e.to_string());
            assert_eq!(got, want.map_err(str::to_string), "{pod} {previous}");
        }
    }
}
