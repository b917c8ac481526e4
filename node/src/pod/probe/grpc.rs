//! gRPC probes: the standard health check (`grpc.health.v1.Health/Check`) over
//! plaintext HTTP/2, as a kubelet sends it. The two messages are tiny (a service name in,
//! a status out), so they are encoded by hand rather than through generated code.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::Outcome;

/// `HealthCheckResponse.ServingStatus` names, by number.
const STATUSES: [&str; 4] = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"];

/// A `HealthCheckRequest { service }` in a gRPC frame (flag, length, message).
pub(super) fn request_frame(service: &str) -> Vec<u8> {
    let mut message = Vec::new();
    if !service.is_empty() {
        message.push(0x0a); // field 1, length-delimited
        put_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    frame
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// The `status` of a `HealthCheckResponse` frame (0, UNKNOWN, when absent).
pub(super) fn response_status(frame: &[u8]) -> Option<u64> {
    let len = u32::from_be_bytes(frame.get(1..5)?.try_into().ok()?) as usize;
    let mut message = frame.get(5..5 + len)?;
    let mut status = 0;
    while !message.is_empty() {
        let (key, n) = varint(message)?;
        message = &message[n..];
        match key & 7 {
            0 => {
                let (value, n) = varint(message)?;
                if key >> 3 == 1 {
                    status = value;
                }
                message = &message[n..];
            }
            2 => {
                let (len, n) = varint(message)?;
                message = message.get(n + len as usize..)?;
            }
            _ => return None,
        }
    }
    Some(status)
}

/// Asks `ip:port` for the health of `service`; the serving status, or why not.
async fn check(ip: &str, port: u16, service: &str) -> Result<u64, String> {
    let tcp = tokio::net::TcpStream::connect((ip, port)).await.map_err(|e| {
        format!(
            "timeout: failed to connect service \"{ip}:{port}\": {}",
            super::go_error(&e)
        )
    })?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .map_err(|e| format!("timeout: failed to connect service \"{ip}:{port}\": {e}"))?;
    let conn = tokio::spawn(conn);
    let req = http::Request::post(format!("http://{ip}:{port}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(http::header::USER_AGENT, super::PROBE_AGENT)
        .body(Full::new(Bytes::from(request_frame(service))))
        .map_err(|e| e.to_string())?;
    let result = async {
        let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?;
        // grpc-status comes in the trailers, or in the headers of a trailers-only reply.
        let trailers = body.trailers().cloned().unwrap_or_default();
        let field = |name: &str| {
            trailers
                .get(name)
                .or_else(|| headers.get(name))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        match field("grpc-status").as_deref() {
            Some("0") => {}
            Some(code) => {
                let message = field("grpc-message").unwrap_or_default();
                return Err(format!("rpc error: code = {code} desc = {message}"));
            }
            None => return Err("rpc error: no grpc-status in the reply".into()),
        }
        response_status(&body.to_bytes()).ok_or_else(|| "rpc error: a malformed HealthCheckResponse".to_string())
    }
    .await;
    conn.abort();
    result
}

/// The outcome of a gRPC probe, worded as a kubelet words it.
pub(super) async fn probe(ip: &str, port: u16, service: &str, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, check(ip, port, service)).await {
        Ok(Ok(1)) => Outcome::Success,
        Ok(Ok(status)) => {
            let name = STATUSES.get(status as usize).copied().unwrap_or("UNKNOWN");
            Outcome::Failure(format!("service unhealthy (responded with \"{name}\")"))
        }
        Ok(Err(e)) => Outcome::Failure(e),
        Err(_) => Outcome::Failure(format!(
            "timeout: health rpc did not complete within {}s",
            timeout.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::service::service_fn;

    #[test]
    fn messages_encode_and_decode() {
        assert_eq!(request_frame(""), [0, 0, 0, 0, 0]);
        assert_eq!(request_frame("db"), [0, 0, 0, 0, 4, 0x0a, 2, b'd', b'b']);
        assert_eq!(response_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(response_status(&[0, 0, 0, 0, 0]), Some(0));
        // An unknown length-delimited field before the status is skipped.
        assert_eq!(response_status(&[0, 0, 0, 0, 5, 0x12, 1, b'x', 0x08, 2]), Some(2));
        assert_eq!(response_status(&[0, 0, 0, 0, 9]), None);
    }

    /// A health server answering `status` for "" and NOT_FOUND for other services.
    async fn serve(status: u8) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| async move {
                    let asked = req.into_body().collect().await?.to_bytes();
                    let (body, code) = if asked.len() == 5 {
                        (vec![0, 0, 0, 0, 2, 0x08, status], "0")
                    } else {
                        (vec![], "5")
                    };
                    let trailers = http::HeaderMap::from_iter([(
                        http::HeaderName::from_static("grpc-status"),
                        http::HeaderValue::from_static(code),
                    )]);
                    let body = Full::new(Bytes::from(body)).with_trailers(async move { Some(Ok(trailers)) });
                    Ok::<_, hyper::Error>(
                        http::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(body)
                            .unwrap(),
                    )
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service),
                );
            }
        });
        port
    }

    #[tokio::test]
    async fn health_checks_succeed_only_when_serving() {
        let second = Duration::from_secs(1);
        let serving = serve(1).await;
        assert_eq!(probe("127.0.0.1", serving, "", second).await, Outcome::Success);
        assert!(matches!(probe("127.0.0.1", serving, "other", second).await,
            Outcome::Failure(m) if m == "rpc error: code = 5 desc = "));
        let failing = serve(2).await;
        assert_eq!(
            probe("127.0.0.1", failing, "", second).await,
            Outcome::Failure("service unhealthy (responded with \"NOT_SERVING\")".into())
        );
        let closed = crate::pod::probe::tests::closed_port().await;
        assert!(matches!(probe("127.0.0.1", closed, "", second).await,
            Outcome::Failure(m) if m.starts_with("timeout: failed to connect service")));
    }
}
