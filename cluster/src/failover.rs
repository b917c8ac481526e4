//! A kube-rs client over several API servers (the control plane's members): requests go
//! to the one that answered last; when it cannot be reached, or answers 503 (a member
//! without a quorum, or stopping), the request is sent to the next one.
//!
//! Resending is safe: a connection that failed carried no request, and a 503 from our API
//! server means the write was not made. Watches fail over too: when the member under an
//! open watch dies the stream ends, and the watcher's next request goes elsewhere.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use kube::client::Body;

/// One API server.
struct Endpoint {
    url: String,
    client: kube::Client,
}

/// The tower service under a [`client`]: tries the endpoints in turn.
#[derive(Clone)]
pub struct Failover {
    endpoints: Arc<Vec<Endpoint>>,
    /// The endpoint that answered last, tried first.
    current: Arc<AtomicUsize>,
}

impl Failover {
    async fn send(self, request: Request<Body>) -> Result<Response<Body>, kube::Error> {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let (parts, body) = request.into_parts();
        let mut last_error = None;
        for attempt in 0..n {
            let i = (start + attempt) % n;
            let endpoint = &self.endpoints[i];
            let is_last = attempt + 1 == n;
            // A streamed body cannot be sent twice: it gets one try.
            let this_body = match body.try_clone() {
                Some(b) => b,
                None if attempt == 0 => return endpoint.client.send(rebuild(&parts, body)).await,
                None => break,
            };
            match endpoint.client.send(rebuild(&parts, this_body)).await {
                Ok(response) if response.status() == StatusCode::SERVICE_UNAVAILABLE && !is_last => {
                    tracing::debug!(api = %endpoint.url, "API server unavailable; trying the next");
                }
                Ok(response) => {
                    if i != start % n {
                        tracing::info!(api = %endpoint.url, "failed over to another API server");
                        self.current.store(i, Ordering::Relaxed);
                    }
                    return Ok(response);
                }
                Err(e) => {
                    tracing::debug!(api = %endpoint.url, error = %e, "API server unreachable; trying the next");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| kube::Error::Service("no API server could be reached".into())))
    }
}

/// A request with `parts` and `body` (extensions are not carried over: kube sets none).
fn rebuild(parts: &http::request::Parts, body: Body) -> Request<Body> {
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request
}

impl tower::Service<Request<Body>> for Failover {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, kube::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        Box::pin(self.clone().send(request))
    }
}

/// A client that sends each request to the first of `configs` (one per API server, the
/// same credentials) that answers. One config gives a plain client (with kube's retries
/// of 503 answers, unless the config turns them off).
pub fn client(configs: Vec<kube::Config>) -> Result<kube::Client, kube::Error> {
    let namespace = configs
        .first()
        .map(|c| c.default_namespace.clone())
        .unwrap_or_else(|| "default".into());
    if let [config] = configs.as_slice() {
        return kube::Client::try_from(config.clone());
    }
    let endpoints = configs
        .into_iter()
        .map(|config| {
            let url = config.cluster_url.to_string();
            kube::Client::try_from(config).map(|client| Endpoint { url, client })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if endpoints.is_empty() {
        return Err(kube::Error::Service("no API server address given".into()));
    }
    let service = Failover {
        endpoints: Arc::new(endpoints),
        current: Arc::new(AtomicUsize::new(0)),
    };
    Ok(kube::Client::new(service, namespace))
}

/// `base` pointed at each of `urls` in turn (the credentials and CA kept).
pub fn configs(base: &kube::Config, urls: &[String]) -> Result<Vec<kube::Config>, String> {
    urls.iter()
        .map(|url| {
            let uri = url
                .parse::<http::Uri>()
                .map_err(|e| format!("the API address {url:?} is not a URL: {e}"))?;
            if uri.scheme().is_none() || uri.authority().is_none() {
                return Err(format!(
                    "the API address {url:?} needs a scheme and host, e.g. https://127.0.0.1:6443"
                ));
            }
            let mut config = base.clone();
            config.cluster_url = uri;
            // A 503 moves the request to the next server here; kube's own retry would
            // first wait out its back-off on the same one.
            config.default_retry = false;
            Ok(config)
        })
        .collect()
}
