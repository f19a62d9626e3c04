//! The outbound HTTP client every role uses (excp → exrp and RWS, exrp → the store and Genesys
//! Cloud, `simulate`): reqwest over rustls with keep-alive pools, the operating system's trust
//! store (Debian, Ubuntu, RHEL and its rebuilds, SUSE; `SSL_CERT_FILE` and `SSL_CERT_DIR`
//! honoured) plus an optional private CA, `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` or an explicit
//! proxy, a timeout over each exchange, bounded response bodies, and errors a caller can branch
//! on. Errors never carry a URL's query (a presigned URL's signature) or a header.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid URL {0:?}")]
    Url(String),
    /// Connecting, the proxy or the TLS handshake failed.
    #[error("cannot connect to {addr}: {detail}")]
    Connect { addr: String, detail: String },
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Http(String),
    #[error("response body larger than {0} bytes")]
    TooLarge(usize),
}

/// How a client reaches one outside service: whom it trusts besides the system store, and
/// through which proxy (`<prefix>ca_file`, `<prefix>proxy`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outbound {
    /// PEM certificates trusted in addition to the operating system's (a private CA).
    pub ca_file: Option<std::path::PathBuf>,
    pub proxy: Proxy,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum Proxy {
    /// `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY`, minus `NO_PROXY` (the default).
    #[default]
    Env,
    /// `proxy = "direct"`: never through a proxy, whatever the environment says.
    Direct,
    /// `proxy = "http://proxy:3128"`: this one (`NO_PROXY` still exempts hosts).
    Url(String),
}

/// Connections a client keeps open per host between requests, unless its owner says how many
/// requests it runs at once (`HttpClient::with_idle`). Fewer than that, and every burst
/// closes and reopens connections: with 32 workers and 32 idle, exrp opened one store
/// connection per two recordings (bench/e2e.sh).
const MAX_IDLE_PER_HOST: usize = 32;
/// An idle pooled connection is closed after this: below the idle limits of the servers we
/// talk to (our webdav role and nginx: 30 s and more, S3 about 20 s), so we close first
/// instead of writing into a connection the server just dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A pooled client; cheap to clone (clones share the pool and the counter).
#[derive(Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
    opened: Arc<AtomicU64>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").field("connections_opened", &self.connections_opened()).finish()
    }
}

impl HttpClient {
    /// Trusting the system store (and `outbound.ca_file`), through the configured proxy.
    pub fn new(outbound: &Outbound) -> anyhow::Result<HttpClient> {
        HttpClient::with_idle(outbound, MAX_IDLE_PER_HOST)
    }

    /// Like `new`, keeping up to `idle` connections per host: as many as the owner runs
    /// requests at once.
    pub fn with_idle(outbound: &Outbound, idle: usize) -> anyhow::Result<HttpClient> {
        use anyhow::Context as _;
        crate::http::tls::install_provider();
        let opened = Arc::new(AtomicU64::new(0));
        let mut builder = reqwest::Client::builder()
            .http1_only()
            .user_agent(concat!("exec-allinone/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(idle)
            .tcp_nodelay(true)
            // A redirect would carry our credentials elsewhere: a 3xx is an answer.
            .redirect(reqwest::redirect::Policy::none())
            .tls_built_in_native_certs(true)
            .connector_layer(CountLayer(opened.clone()));
        if let Some(path) = &outbound.ca_file {
            for cert in read_pem(path)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        builder = match &outbound.proxy {
            // reqwest reads HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY (either case).
            Proxy::Env => builder,
            Proxy::Direct => builder.no_proxy(),
            Proxy::Url(url) => builder.proxy(
                reqwest::Proxy::all(url.as_str())
                    .with_context(|| format!("proxy {url:?} is not a URL"))?
                    .no_proxy(reqwest::NoProxy::from_env()),
            ),
        };
        let inner = builder.build().context("cannot build the HTTP client (trust store or proxy)")?;
        Ok(HttpClient { inner, opened })
    }

    /// System trust store, proxy from the environment (tests).
    pub fn plain() -> HttpClient {
        HttpClient::new(&Outbound::default()).expect("an HTTP client with the system trust store")
    }

    /// TCP connections this client (and its clones) opened so far.
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Sends one request and reads the whole answer within `timeout`.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        timeout: Duration,
        max_response: usize,
    ) -> Result<Reply, ClientError> {
        let exchange = async {
            let response = self.open(method, url, headers, reqwest::Body::from(body)).await?;
            let (parts, body) = response.into_parts();
            match Limited::new(body, max_response).collect().await {
                Ok(collected) => Ok(Reply { status: parts.status, headers: parts.headers, body: collected.to_bytes() }),
                Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(ClientError::TooLarge(max_response)),
                Err(err) => Err(ClientError::Http(format!("reading the answer from {}: {err}", origin(url)))),
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }

    /// Sends one request with a streamed body of `len` bytes and returns once the response
    /// head is in (or `head_timeout` passed). The caller reads the body and bounds its time;
    /// dropping the response before its end closes the connection.
    pub async fn stream(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: StreamBody,
        len: u64,
        head_timeout: Duration,
    ) -> Result<http::Response<reqwest::Body>, ClientError> {
        let mut all: Vec<(&str, String)> = headers.iter().map(|(k, v)| (*k, v.to_string())).collect();
        // Declared, so the body goes out with Content-Length, not chunked (S3 refuses chunked).
        all.push(("content-length", len.to_string()));
        let all: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
        match tokio::time::timeout(head_timeout, self.open(method, url, &all, reqwest::Body::wrap(body))).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout(head_timeout)),
        }
    }

    async fn open(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: reqwest::Body,
    ) -> Result<http::Response<reqwest::Body>, ClientError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| ClientError::Url(origin(url)))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(ClientError::Url(origin(url)));
        }
        let mut request = self.inner.request(method, parsed).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.map_err(|e| classify(e, url))?;
        Ok(response.into())
    }
}

/// `scheme://host:port` of a URL: what an error may name (never the path's secrets or the query).
fn origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port_or_known_default()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}", u.scheme()),
            _ => u.scheme().to_string(),
        },
        Err(_) => "an unparsable URL".to_string(),
    }
}

fn classify(err: reqwest::Error, url: &str) -> ClientError {
    let addr = origin(url);
    let err = err.without_url();
    let detail = crate::telemetry::chain(&err);
    if err.is_timeout() {
        ClientError::Timeout(CONNECT_TIMEOUT)
    } else if err.is_connect() {
        ClientError::Connect { addr, detail }
    } else if err.is_builder() {
        ClientError::Url(addr)
    } else {
        ClientError::Http(format!("{addr}: {detail}"))
    }
}

/// The certificates of a PEM bundle, as trust anchors.
pub(crate) fn read_pem(path: &Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    use anyhow::Context as _;
    let pem = std::fs::read(path).with_context(|| format!("cannot read the CA file {}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("{} is not a PEM bundle of certificates", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
    Ok(certs)
}

/// Counts every connection the pool opens (each call of the connector is one).
#[derive(Clone)]
struct CountLayer(Arc<AtomicU64>);

impl<S> tower::Layer<S> for CountLayer {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Counted<S> {
        Counted { inner, opened: self.0.clone() }
    }
}

#[derive(Clone)]
struct Counted<S> {
    inner: S,
    opened: Arc<AtomicU64>,
}

impl<S: tower::Service<R>, R> tower::Service<R> for Counted<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.inner.call(request)
    }
}

/// A request body sent as it is produced (a file being uploaded, say).
pub type StreamBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// A request body from bytes already in memory.
pub fn full_body(bytes: Bytes) -> StreamBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// A response with its body read (up to the limit given to `send`).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The connection closed or was reset before any answer came: the keep-alive race (a pooled
/// connection closed by the server as a request went out on it) or a server that died. Such a
/// request reached no handler's answer, so an idempotent one may be sent again.
pub fn died_unanswered(e: &reqwest::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(h) = c.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled())
        {
            return true;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(io.kind(), ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof) {
                return true;
            }
        }
        cur = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_origin_never_the_query_or_path() {
        let url = "https://s3.example.com:8443/bucket/key.opus?X-Amz-Signature=secret";
        assert_eq!(origin(url), "https://s3.example.com:8443");
        assert_eq!(origin("http://h/x"), "http://h:80");
        assert!(!origin("not a url").contains("not a url"));
    }
}
