//! A small HTTP/1.1 client for the calls the roles make (excp → exrp, excp → GIR RWS): one
//! connection per request, http or https (rustls, system CA bundle or a given one), a timeout
//! over the whole exchange, a bounded response body, and errors a caller can branch on.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid URL {0:?}")]
    Url(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("response body larger than {0} bytes")]
    TooLarge(usize),
    #[error("TLS with {addr}: {source}")]
    Tls { addr: String, source: std::io::Error },
    #[error("https is not configured for this client")]
    NoTls,
}

/// Where the trusted CA certificates come from when none is configured (Debian, Ubuntu).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Holds the TLS settings; cheap to clone.
#[derive(Clone, Default)]
pub struct HttpClient {
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl HttpClient {
    /// http:// only.
    pub fn plain() -> HttpClient {
        HttpClient { tls: None }
    }

    /// What `urls` need: plain when all are http://, else https trusting the system CA bundle.
    pub fn for_urls(urls: &[&str]) -> anyhow::Result<HttpClient> {
        if urls.iter().any(|u| u.starts_with("https://")) {
            HttpClient::with_roots(Path::new(SYSTEM_CA_BUNDLE))
        } else {
            Ok(HttpClient::plain())
        }
    }

    /// http:// and https://, trusting the certificates of a PEM bundle.
    pub fn with_roots(ca_file: &Path) -> anyhow::Result<HttpClient> {
        use anyhow::Context;
        crate::http::tls::install_provider();
        let pem = std::fs::read(ca_file).with_context(|| format!("cannot read CA bundle {}", ca_file.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.with_context(|| format!("{} is not a PEM bundle", ca_file.display()))?;
            roots.add(cert).with_context(|| format!("{}: unusable certificate", ca_file.display()))?;
        }
        anyhow::ensure!(!roots.is_empty(), "{} holds no certificate", ca_file.display());
        let mut config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(HttpClient { tls: Some(Arc::new(config)) })
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
        let len = body.len() as u64;
        let body = Full::new(body).map_err(|never| match never {}).boxed();
        let exchange = async {
            let response = self.open(method, url, headers, body, len).await?;
            let (parts, body) = response.into_parts();
            match Limited::new(body, max_response).collect().await {
                Ok(collected) => Ok(Reply { status: parts.status, headers: parts.headers, body: collected.to_bytes() }),
                Err(err) => match err.downcast::<hyper::Error>() {
                    Ok(e) => Err(ClientError::Http(*e)),
                    Err(_) => Err(ClientError::TooLarge(max_response)),
                },
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }

    /// Sends one request with a streamed body of `len` bytes and returns once the response
    /// head is in (or `head_timeout` passed). The caller reads the body and bounds its time;
    /// dropping the response closes the connection.
    pub async fn stream(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: StreamBody,
        len: u64,
        head_timeout: Duration,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        match tokio::time::timeout(head_timeout, self.open(method, url, headers, body, len)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout(head_timeout)),
        }
    }

    async fn open(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: StreamBody,
        len: u64,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        let uri: Uri = url.parse().map_err(|_| ClientError::Url(url.to_string()))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(ClientError::Url(url.to_string())),
        };
        let authority = uri.authority().ok_or_else(|| ClientError::Url(url.to_string()))?.clone();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, authority.as_str())
            .header(http::header::CONTENT_LENGTH, len)
            .header(http::header::USER_AGENT, concat!("exec-allinone/", env!("CARGO_PKG_VERSION")));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request.body(body).map_err(|_| ClientError::Url(url.to_string()))?;
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|source| ClientError::Connect { addr: authority.to_string(), source })?;
        let _ = stream.set_nodelay(true);
        if !https {
            return exchange(stream, request).await;
        }
        let tls = self.tls.clone().ok_or(ClientError::NoTls)?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|_| ClientError::Url(format!("{host} is not a TLS server name")))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, stream)
            .await
            .map_err(|source| ClientError::Tls { addr: authority.to_string(), source })?;
        exchange(stream, request).await
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

async fn exchange<I>(io: I, request: Request<StreamBody>) -> Result<http::Response<hyper::body::Incoming>, ClientError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    // The connection task ends by itself once the response body is read or dropped.
    tokio::spawn(conn);
    Ok(sender.send_request(request).await?)
}
