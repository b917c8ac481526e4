//! Probes and lifecycle hooks: one check (`exec`, `httpGet`, `tcpSocket`) as a kubelet
//! runs it, and the loop that runs a probe every `periodSeconds` and turns its results
//! into a verdict through `successThreshold` / `failureThreshold`.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{ContainerPort, ExecAction, HTTPGetAction, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::runtime::{ContainerConfig, Runtime};

mod grpc;

/// The kubelet version probes announce (`User-Agent: kube-probe/<major.minor>`).
const PROBE_AGENT: &str = "kube-probe/1.32";

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Healthy.
    Success,
    /// Unhealthy, and why (shown in the `Unhealthy` event).
    Failure(String),
}

/// One way of checking a container, from a probe or a lifecycle hook.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Action<'a> {
    Exec(&'a ExecAction),
    Http(&'a HTTPGetAction),
    Tcp(&'a TCPSocketAction),
    Grpc(&'a k8s_openapi::api::core::v1::GRPCAction),
    /// A `sleep` lifecycle hook, in seconds.
    Sleep(i64),
    /// Nothing this agent can run.
    Unsupported(&'static str),
}

impl<'a> Action<'a> {
    /// The check a probe names.
    pub(crate) fn of_probe(p: &'a Probe) -> Self {
        if let Some(e) = &p.exec {
            Action::Exec(e)
        } else if let Some(h) = &p.http_get {
            Action::Http(h)
        } else if let Some(t) = &p.tcp_socket {
            Action::Tcp(t)
        } else if let Some(g) = &p.grpc {
            Action::Grpc(g)
        } else {
            Action::Unsupported("the probe names no handler")
        }
    }

    /// The action of a `postStart` / `preStop` hook.
    pub(crate) fn of_hook(h: &'a k8s_openapi::api::core::v1::LifecycleHandler) -> Self {
        if let Some(e) = &h.exec {
            Action::Exec(e)
        } else if let Some(g) = &h.http_get {
            Action::Http(g)
        } else if let Some(t) = &h.tcp_socket {
            Action::Tcp(t)
        } else if let Some(s) = &h.sleep {
            Action::Sleep(s.seconds)
        } else {
            Action::Unsupported("the hook names no handler")
        }
    }
}

/// What a check runs against: the container's environment and the pod's address.
pub(crate) struct Target<R> {
    pub runtime: Arc<R>,
    pub config: ContainerConfig,
    pub ip: String,
    pub ports: Vec<ContainerPort>,
}

// Not derived: that would ask `R: Clone`, and only the `Arc` is cloned.
impl<R> Clone for Target<R> {
    fn clone(&self) -> Self {
        Target {
            runtime: self.runtime.clone(),
            config: self.config.clone(),
            ip: self.ip.clone(),
            ports: self.ports.clone(),
        }
    }
}

/// Runs one check with a time limit.
pub(crate) async fn check<R: Runtime>(action: Action<'_>, target: &Target<R>, timeout: Duration) -> Outcome {
    match action {
        Action::Exec(e) => {
            let argv = e.command.clone().unwrap_or_default();
            match target.runtime.exec(&target.config, &argv, timeout).await {
                Ok(r) if r.code == Some(0) => Outcome::Success,
                Ok(r) if r.code.is_none() => {
                    Outcome::Failure(format!("command {argv:?} timed out after {}s", timeout.as_secs()))
                }
                Ok(r) => Outcome::Failure(if r.output.trim().is_empty() {
                    format!("command {argv:?} exited with {}", r.code.unwrap_or(-1))
                } else {
                    r.output.trim_end().to_string()
                }),
                Err(e) => Outcome::Failure(e.to_string()),
            }
        }
        Action::Http(h) => http_get(h, &target.ip, &target.ports, timeout).await,
        Action::Tcp(t) => {
            let host = t
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| target.ip.clone());
            let port = match port_number(&t.port, &target.ports) {
                Ok(p) => p,
                Err(m) => return Outcome::Failure(m),
            };
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host.as_str(), port))).await {
                Ok(Ok(_)) => Outcome::Success,
                Ok(Err(e)) => Outcome::Failure(format!("dial tcp {host}:{port}: connect: {}", go_error(&e))),
                Err(_) => Outcome::Failure(format!("dial tcp {host}:{port}: i/o timeout")),
            }
        }
        Action::Grpc(g) => match u16::try_from(g.port).ok().filter(|p| *p > 0) {
            Some(port) => grpc::probe(&target.ip, port, g.service.as_deref().unwrap_or(""), timeout).await,
            None => Outcome::Failure(format!("invalid port {}", g.port)),
        },
        Action::Sleep(s) => {
            tokio::time::sleep(Duration::from_secs(s.max(0) as u64).min(timeout)).await;
            Outcome::Success
        }
        Action::Unsupported(why) => Outcome::Failure(why.to_string()),
    }
}

/// An I/O error as Go prints it ("connection refused"), as a kubelet's messages read.
fn go_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" (os error ") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A port given as a number or as the name of one of the container's ports.
pub(crate) fn port_number(port: &IntOrString, ports: &[ContainerPort]) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("invalid port {n}")),
        IntOrString::String(name) => match name.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("couldn't find port {name:?} in the container's ports")),
        },
    }
}

/// An HTTP(S) GET: any status from 200 to 399 is healthy, as for a kubelet.
async fn http_get(h: &HTTPGetAction, ip: &str, ports: &[ContainerPort], timeout: Duration) -> Outcome {
    let host = h
        .host
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| ip.to_string());
    let port = match port_number(&h.port, ports) {
        Ok(p) => p,
        Err(m) => return Outcome::Failure(m),
    };
    let path = match h.path.as_deref() {
        Some(p) if p.starts_with('/') => p.to_string(),
        Some(p) => format!("/{p}"),
        None => "/".to_string(),
    };
    let https = h.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
    let url = format!("{}://{host}:{port}{path}", if https { "https" } else { "http" });
    let headers: Vec<(String, String)> = h
        .http_headers
        .iter()
        .flatten()
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect();
    match tokio::time::timeout(timeout, get(&host, port, &path, https, &headers)).await {
        Ok(Ok(status)) if (200..400).contains(&status) => Outcome::Success,
        Ok(Ok(status)) => Outcome::Failure(format!("HTTP probe failed with statuscode: {status}")),
        Ok(Err(e)) => Outcome::Failure(format!("Get {url:?}: {e}")),
        Err(_) => Outcome::Failure(format!(
            "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
    }
}

async fn get(host: &str, port: u16, path: &str, https: bool, headers: &[(String, String)]) -> Result<u16, String> {
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("dial tcp {host}:{port}: connect: {}", go_error(&e)))?;
    let _ = tcp.set_nodelay(true);
    let mut req = http::Request::get(path)
        .header(http::header::USER_AGENT, PROBE_AGENT)
        .header(http::header::ACCEPT, "*/*");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header(http::header::HOST, format!("{host}:{port}"));
    }
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    if https {
        // A kubelet does not verify the certificate of the container it probes.
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(insecure_tls()?))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        send(TokioIo::new(tls), req).await
    } else {
        send(TokioIo::new(tcp), req).await
    }
}

async fn send<I>(io: I, req: http::Request<Empty<Bytes>>) -> Result<u16, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let status = sender.send_request(req).await.map(|r| r.status().as_u16());
    conn.abort();
    status.map_err(|e| e.to_string())
}

/// A TLS client that accepts any server certificate (checked signatures, no trust).
fn insecure_tls() -> Result<rustls::ClientConfig, String> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth())
}

/// Which probe a report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    /// As events name it ("Liveness probe failed: ...").
    pub(crate) fn title(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// What the probe loop tells the container's task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Report {
    /// One check failed (for the `Unhealthy` event).
    Failed(Kind, String),
    /// The verdict changed: healthy (true) or not, after the thresholds.
    Verdict(Kind, bool),
}

/// A probe's thresholds and its run of equal results.
#[derive(Debug, Clone)]
pub(crate) struct Counter {
    success_threshold: i32,
    failure_threshold: i32,
    run: i32,
    last: Option<bool>,
    verdict: bool,
}

impl Counter {
    /// A counter starting at `verdict` (unready for readiness, healthy for liveness).
    pub(crate) fn new(probe: &Probe, verdict: bool) -> Self {
        Counter {
            success_threshold: probe.success_threshold.unwrap_or(1).max(1),
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1),
            run: 0,
            last: None,
            verdict,
        }
    }

    /// Counts one result; the new verdict if it changed.
    pub(crate) fn observe(&mut self, ok: bool) -> Option<bool> {
        self.run = if self.last == Some(ok) { self.run + 1 } else { 1 };
        self.last = Some(ok);
        let threshold = if ok {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        (self.verdict != ok && self.run >= threshold).then(|| {
            self.verdict = ok;
            ok
        })
    }
}

fn seconds(v: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(v.unwrap_or(default).max(0) as u64)
}

/// Runs one probe from `started_at + initialDelaySeconds`, every `periodSeconds`, until
/// the receiver goes; a startup probe ends at its first healthy verdict.
async fn run_one<R: Runtime>(
    kind: Kind,
    probe: Probe,
    target: Target<R>,
    started_at: Instant,
    tx: mpsc::Sender<Report>,
) {
    let initial = match kind {
        Kind::Readiness | Kind::Startup => false,
        Kind::Liveness => true,
    };
    let mut counter = Counter::new(&probe, initial);
    let period = seconds(probe.period_seconds, 10).max(Duration::from_secs(1));
    let timeout = seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1));
    tokio::time::sleep_until(started_at + seconds(probe.initial_delay_seconds, 0)).await;
    loop {
        let began = Instant::now();
        let outcome = check(Action::of_probe(&probe), &target, timeout).await;
        let ok = outcome == Outcome::Success;
        if let Outcome::Failure(why) = outcome {
            if tx.send(Report::Failed(kind, why)).await.is_err() {
                return;
            }
        }
        if let Some(verdict) = counter.observe(ok) {
            if tx.send(Report::Verdict(kind, verdict)).await.is_err() {
                return;
            }
            if kind == Kind::Startup && verdict {
                return;
            }
        }
        tokio::time::sleep_until(began + period).await;
    }
}

/// The probes of one container run: the startup probe until it passes, then liveness
/// and readiness side by side. Ends when the receiver is dropped (or is aborted).
pub(crate) async fn run<R: Runtime>(
    probes: [Option<Probe>; 3],
    target: Target<R>,
    started_at: Instant,
    tx: mpsc::Sender<Report>,
) {
    let [startup, liveness, readiness] = probes;
    if let Some(p) = startup {
        run_one(Kind::Startup, p, target.clone(), started_at, tx.clone()).await;
    }
    let live = liveness.map(|p| run_one(Kind::Liveness, p, target.clone(), started_at, tx.clone()));
    let ready = readiness.map(|p| run_one(Kind::Readiness, p, target, started_at, tx));
    let live = async move {
        if let Some(f) = live {
            f.await
        }
    };
    let ready = async move {
        if let Some(f) = ready {
            f.await
        }
    };
    tokio::join!(live, ready);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::process::ProcessRuntime;
    use k8s_openapi::api::core::v1::HTTPHeader;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn probe(success: i32, failure: i32) -> Probe {
        Probe {
            success_threshold: Some(success),
            failure_threshold: Some(failure),
            ..Default::default()
        }
    }

    #[test]
    fn thresholds_decide_when_the_verdict_flips() {
        // (success, failure thresholds, start, results, verdict changes after each)
        type Case<'a> = (i32, i32, bool, &'a [bool], &'a [Option<bool>]);
        let cases: &[Case] = &[
            (1, 3, false, &[true], &[Some(true)]),
            (
                1,
                3,
                true,
                &[false, false, true, false, false, false],
                &[None, None, None, None, None, Some(false)],
            ),
            (
                2,
                1,
                true,
                &[false, true, false, true, true],
                &[Some(false), None, None, None, Some(true)],
            ),
            (1, 1, true, &[true, true], &[None, None]),
        ];
        for (s, f, start, results, want) in cases {
            let mut c = Counter::new(&probe(*s, *f), *start);
            let got: Vec<Option<bool>> = results.iter().map(|r| c.observe(*r)).collect();
            assert_eq!(&got, want, "thresholds {s}/{f} from {start}: {results:?}");
        }
    }

    #[test]
    fn ports_by_number_or_name() {
        let ports = vec![ContainerPort {
            name: Some("http".into()),
            container_port: 8080,
            ..Default::default()
        }];
        assert_eq!(port_number(&IntOrString::Int(80), &ports), Ok(80));
        assert_eq!(port_number(&IntOrString::String("http".into()), &ports), Ok(8080));
        assert_eq!(port_number(&IntOrString::String("81".into()), &ports), Ok(81));
        assert!(port_number(&IntOrString::String("grpc".into()), &ports).is_err());
        assert!(port_number(&IntOrString::Int(70000), &ports).is_err());
    }

    /// A one-shot HTTP server answering `status`; returns its port and the request.
    async fn serve_once(status: u16) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
            s.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (port, task)
    }

    /// A loopback port where nothing listens (bound, then let go).
    pub(crate) async fn closed_port() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    }

    fn target(dir: &std::path::Path) -> Target<ProcessRuntime> {
        Target {
            runtime: Arc::new(ProcessRuntime),
            config: ContainerConfig {
                name: "c".into(),
                argv: vec![],
                env: vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())],
                working_dir: dir.to_path_buf(),
                log_path: dir.join("c.log"),
                mounts: vec![],
            },
            ip: "127.0.0.1".into(),
            ports: vec![],
        }
    }

    #[tokio::test]
    async fn checks_exec_http_and_tcp() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path());
        let second = Duration::from_secs(1);
        let exec = |cmd: &str| ExecAction {
            command: Some(vec!["sh".into(), "-c".into(), cmd.into()]),
        };
        assert_eq!(check(Action::Exec(&exec("true")), &t, second).await, Outcome::Success);
        assert_eq!(
            check(Action::Exec(&exec("echo not yet; exit 1")), &t, second).await,
            Outcome::Failure("not yet".into())
        );
        assert!(
            matches!(check(Action::Exec(&exec("sleep 3")), &t, second).await, Outcome::Failure(m) if m.contains("timed out"))
        );

        let (port, req) = serve_once(204).await;
        let http = HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::Int(port.into()),
            http_headers: Some(vec![HTTPHeader {
                name: "X-Probe".into(),
                value: "yes".into(),
            }]),
            ..Default::default()
        };
        assert_eq!(check(Action::Http(&http), &t, second).await, Outcome::Success);
        let req = req.await.unwrap();
        assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
        assert!(req.to_lowercase().contains("user-agent: kube-probe/"), "{req}");
        assert!(req.to_lowercase().contains("x-probe: yes"), "{req}");

        let (port, _req) = serve_once(503).await;
        let http = HTTPGetAction {
            port: IntOrString::Int(port.into()),
            ..Default::default()
        };
        assert_eq!(
            check(Action::Http(&http), &t, second).await,
            Outcome::Failure("HTTP probe failed with statuscode: 503".into())
        );

        // Nothing listens on the port any more.
        let tcp = TCPSocketAction {
            port: IntOrString::Int(port.into()),
            ..Default::default()
        };
        assert_eq!(
            check(Action::Tcp(&tcp), &t, second).await,
            Outcome::Failure(format!("dial tcp 127.0.0.1:{port}: connect: connection refused"))
        );
        assert!(matches!(check(Action::Http(&http), &t, second).await, Outcome::Failure(m) if m.contains("refused")));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TCPSocketAction {
            port: IntOrString::Int(listener.local_addr().unwrap().port().into()),
            ..Default::default()
        };
        assert_eq!(check(Action::Tcp(&tcp), &t, second).await, Outcome::Success);
    }
}
