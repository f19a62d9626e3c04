//! One client request through a pool: nginx's request checks, the buffered body, the upstream
//! request as nginx writes it, the attempt loop and the response as nginx passes it on; each
//! attempt is recorded for the access log (`access_log`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderName;
use http::{Method, StatusCode, Version};
use http_body_util::{Either, Full};

use super::Pool;
use super::access_log::{AttemptRecord, RequestLog};
use super::balancer::Outcome;
use super::front::{BodyError, BodyFraming, Buffering, RequestBody};
use super::h1::{self, HeaderLines, Name};
use super::retry::{Attempts, Failure, Next};
use super::spool::{Held, Streamed};
use super::upstream::{Exchange, UpstreamBody, UpstreamRequest};
use super::uri;
use crate::config::{HostHeader, UriMode};

/// A response body: the proxy's own page or a peer's.
pub type ProxyBody = Either<Full<Bytes>, UpstreamBody>;

/// Headers nginx 1.22 never passes upstream (`ngx_http_proxy_headers`); Host, Connection and
/// Content-Length are written by the proxy itself.
const NOT_FORWARDED: [Name; 8] = [
    Name::Host,
    Name::Connection,
    Name::ContentLength,
    Name::TransferEncoding,
    Name::Te,
    Name::Expect,
    Name::Upgrade,
    Name::KeepAlive,
];

/// Backend response headers that are hop-by-hop or that the proxy writes itself
/// (`ngx_http_proxy_hide_headers` plus framing).
const NOT_PASSED_BACK: [&[u8]; 6] = [b"connection", b"transfer-encoding", b"date", b"server", b"keep-alive", b"x-pad"];

/// Whether a backend response header goes on to the client (the upstream side leaves the
/// others out of the response it builds). Names as the peer wrote them.
pub fn passed_back(name: &[u8]) -> bool {
    !NOT_PASSED_BACK.iter().any(|n| name.eq_ignore_ascii_case(n))
        && !name.get(..8).is_some_and(|p| p.eq_ignore_ascii_case(b"x-accel-"))
}

/// A response as the client gets it (`front` writes the head: status line, Server, Date, these
/// headers, then the framing for the client's version).
pub struct Reply {
    pub status: StatusCode,
    pub headers: ReplyHeaders,
    pub body: ProxyBody,
    /// To be told how the response went once it is out: the access-log line is written then,
    /// after the client has its bytes, as nginx's log phase comes after the response.
    pub done: Done,
}

/// The access-log line of a response, written by `finish`; dropped unfinished (the
/// connection's task was cancelled), the line says so.
pub struct Done {
    /// None for an answer to a head that could not be read as a request. Boxed: a response
    /// is moved from the attempt loop to the writer, and a log line is large.
    log: Option<Box<RequestLog>>,
    status: u16,
    /// When the attempt that answered began (for `upstream_response_time`).
    attempt: Option<Instant>,
}

impl Done {
    /// `bytes` of body went out; `complete`: all of it; `body_end`: when the peer's body ended.
    pub fn finish(mut self, bytes: u64, complete: bool, body_end: Instant) {
        if let Some(mut log) = self.log.take() {
            let last = self.attempt.map(|t0| body_end.saturating_duration_since(t0));
            log.write(self.status, bytes, complete, last);
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(mut log) = self.log.take() {
            log.write(self.status, 0, false, None);
        }
    }
}

pub enum ReplyHeaders {
    /// A peer's lines that are passed back; `upgrade` false drops its Upgrade (an HTTP/1.0
    /// client).
    Peer { lines: HeaderLines, upgrade: bool },
    /// The proxy's own error page (text/html, its length); `close` ends the connection.
    Page { close: bool },
}

/// A request ready to go upstream, or what the proxy answers itself.
pub enum Prepared {
    Answer(Reply),
    /// Close without answering (a stalled body; the log line is written).
    Hangup,
    Forward(Forward),
}

/// A checked request with its whole body (or, unbuffered, the way to feed it), for `forward`.
pub struct Forward {
    pool: Arc<Pool>,
    log: RequestLog,
    request: UpstreamRequest,
    method: Method,
    version: Version,
    /// Boxed, as `Held::Stream`: a buffered request carries only a null pointer for it.
    feed: Option<Box<Feed>>,
}

/// What the front feeds an unbuffered body through: `len` bytes of the client's, in order.
pub struct Feed {
    pub chunks: tokio::sync::mpsc::Sender<bytes::Bytes>,
    pub len: u64,
    /// The client waits for `100 Continue` before sending it.
    pub expect: bool,
    /// The longest the client may pause between two reads (`body_timeout`).
    pub idle: std::time::Duration,
}

impl Forward {
    /// The feed of an unbuffered body, for the front to run beside the attempts.
    pub fn take_feed(&mut self) -> Option<Feed> {
        self.feed.take().map(|f| *f)
    }
}

/// The request's X-Correlation-Id, if it has a short printable one.
fn correlation_id(req: &h1::Request) -> Option<String> {
    let (_, value) = req.headers.iter().find(|(name, _)| name.eq_ignore_ascii_case(b"x-correlation-id"))?;
    let value = std::str::from_utf8(value).ok()?.trim();
    (!value.is_empty() && value.len() <= 64 && value.bytes().all(|b| b.is_ascii_graphic())).then(|| value.to_owned())
}

/// nginx's checks of a request and the read of its body: what is refused is answered (and
/// logged) here, the rest is made into the request every peer tried gets.
pub async fn prepare(pool: Arc<Pool>, client: SocketAddr, req: h1::Request, body: &mut RequestBody<'_>) -> Prepared {
    let log = RequestLog {
        pool: pool.clone(),
        client,
        method: req.method.clone(),
        uri: req.uri.clone(),
        started: Instant::now(),
        attempts: Vec::new(),
        written: false,
        // Only looked for when the pool keeps requests for `trace`.
        corr_id: if pool.recent.enabled() { correlation_id(&req) } else { None },
    };
    let settings = &pool.settings;

    // nginx's order: the request line and header lines as read, then the target, then the
    // headers' meaning (Host, the body framing).
    if let Err((status, why)) = check_lines(&req) {
        tracing::debug!(pool = %pool.name, %client, why, "request refused");
        return Prepared::Answer(local(log, status, true));
    }
    let path = req.uri.path();
    let query = req.uri.query();
    let target = match (uri::is_normal(path), req.uri.path_and_query()) {
        // The usual case: the target goes upstream as the client sent it, no copy.
        (true, Some(pq)) if pq.as_str().starts_with('/') => Ok(Ok(http::Uri::from(pq.clone()))),
        _ => match settings.uri {
            UriMode::Normalized => uri::normalized(path, query),
            UriMode::Raw => uri::raw(path, query),
        }
        .map(|t| t.parse::<http::Uri>()),
    };
    let target = match target {
        Ok(Ok(t)) => t,
        Ok(Err(err)) => {
            tracing::debug!(pool = %pool.name, %client, %err, "request target refused");
            return Prepared::Answer(local(log, StatusCode::BAD_REQUEST, true));
        }
        Err(err) => {
            tracing::debug!(pool = %pool.name, %client, %err, "request target refused");
            return Prepared::Answer(local(log, StatusCode::BAD_REQUEST, true));
        }
    };
    let framing = match check_request(&req) {
        Ok(framing) => framing,
        Err((status, why)) => {
            tracing::debug!(pool = %pool.name, %client, why, "request refused");
            return Prepared::Answer(local(log, status, true));
        }
    };
    // nginx's access phase: after the head is read and checked, before the body.
    if !settings.allow.allows(client.ip()) {
        tracing::warn!(
            pool = %pool.name,
            client = %client.ip(),
            "access forbidden: the client address is not in the pool's allow list"
        );
        return Prepared::Answer(local(log, StatusCode::FORBIDDEN, true));
    }

    let mut log = log;
    // nginx's `proxy_request_buffering off`, for a body of known length: it goes to the peer
    // as it arrives. (A chunked one is held, as nginx holds it for an HTTP/1.0 upstream.)
    if let (false, BodyFraming::Length(len @ 1..)) = (settings.request_buffering, framing) {
        if len > settings.max_body_size {
            return Prepared::Answer(local(log, StatusCode::PAYLOAD_TOO_LARGE, true));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let request = UpstreamRequest {
            head: request_head(&pool, &req.method, &target, &req.headers, client, Some(len)),
            body: Held::Stream(Box::new(Streamed { len, chunks: tokio::sync::Mutex::new(rx) })),
            head_only: req.method == Method::HEAD,
        };
        let feed = Feed { chunks: tx, len, expect: body.expects_continue(), idle: settings.body_timeout };
        return Prepared::Forward(Forward {
            pool,
            log,
            request,
            method: req.method,
            version: req.version,
            feed: Some(Box::new(feed)),
        });
    }
    let buffering = Buffering { buffer: settings.client_body_buffer_size, temp_dir: &settings.client_body_temp_path };
    let body = match body.read_all(framing, settings.max_body_size, settings.body_timeout, &buffering).await {
        Ok(b) => b,
        Err(BodyError::Spool(err)) => {
            tracing::error!(
                pool = %pool.name,
                dir = %settings.client_body_temp_path.display(),
                %err,
                "cannot write a request body to its temp file"
            );
            return Prepared::Answer(local(log, StatusCode::INTERNAL_SERVER_ERROR, true));
        }
        Err(BodyError::TimedOut) => {
            // nginx logs 408 and closes without answering a stalled body.
            log.write(408, 0, false, None);
            return Prepared::Hangup;
        }
        Err(BodyError::TooLarge) => return Prepared::Answer(local(log, StatusCode::PAYLOAD_TOO_LARGE, true)),
        Err(BodyError::Invalid) => return Prepared::Answer(local(log, StatusCode::BAD_REQUEST, true)),
    };
    // A framed body goes upstream with its length, an empty one too (as nginx sends it).
    let length = (framing != BodyFraming::None).then_some(body.len());
    if matches!(body, Held::File(_)) {
        pool.metrics.bodies_spooled.inc();
    }
    // Written once: every peer tried gets the same bytes.
    let request = UpstreamRequest {
        head: request_head(&pool, &req.method, &target, &req.headers, client, length),
        body,
        head_only: req.method == Method::HEAD,
    };
    Prepared::Forward(Forward { pool, log, request, method: req.method, version: req.version, feed: None })
}

/// Tries peers as nginx does until one answers or the tries are used up. Dropped before it
/// returns (the client went away), it logs 499.
pub async fn forward(forward: Forward) -> Reply {
    let Forward { pool, mut log, request, method, version, .. } = forward;
    let settings = &pool.settings;
    let balancer = &pool.balancer;
    let mut attempts = Attempts::new(
        balancer.tries(),
        settings.next_upstream_tries,
        settings.next_upstream_timeout,
        settings.next_upstream,
        &method,
    );
    if matches!(request.body, Held::Stream(_)) {
        attempts = attempts.unbuffered();
    }
    // nginx's $request_uri: the target as the client sent it, arguments included.
    let key = log.uri.path_and_query().map_or(&b""[..], |pq| pq.as_str().as_bytes());
    let mut tried = balancer.tried(key);
    loop {
        let Some(i) = balancer.select(&mut tried, Instant::now()) else {
            tracing::error!(pool = %pool.name, "no live upstreams");
            return local(log, StatusCode::BAD_GATEWAY, false);
        };
        let peer = &balancer.peers()[i];
        let peer_metrics = &pool.metrics.peers[i];
        peer_metrics.attempts.inc();
        if !log.attempts.is_empty() {
            pool.metrics.retries.inc();
        }
        let t0 = Instant::now();
        log.attempts.push(AttemptRecord {
            addr: peer.addr,
            status: None,
            connect: None,
            header: None,
            response: Duration::ZERO,
        });
        let result = pool.connector.send(i, peer.addr, &request).await;
        log.attempts.pop();
        match result {
            Err(err) => {
                let now = Instant::now();
                peer_metrics.failed(err.failure);
                peer_metrics.latency.observe(t0.elapsed());
                log.attempts.push(AttemptRecord {
                    addr: peer.addr,
                    status: Some(err.failure.give_up_status()),
                    connect: err.connect_time,
                    header: None,
                    response: t0.elapsed(),
                });
                if balancer.report(i, Outcome::Failed, now) {
                    tracing::warn!(pool = %pool.name, peer = %peer.addr, fail_timeout = ?peer.fail_timeout, "upstream server temporarily disabled");
                }
                let next = attempts.after_failure(err.failure, err.sent, err.reused, now);
                tracing::warn!(
                    pool = %pool.name,
                    peer = %peer.addr,
                    method = %method,
                    failure = err.failure.class(),
                    sent = err.sent,
                    reused = err.reused,
                    retry = next == Next::Retry,
                    "{}",
                    err.detail
                );
                match next {
                    Next::Retry => continue,
                    Next::GiveUp(status) => {
                        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                        return local(log, code, false);
                    }
                    // after_failure never passes a response on; there is none.
                    Next::Pass => return local(log, StatusCode::BAD_GATEWAY, false),
                }
            }
            Ok(ex) => {
                let now = Instant::now();
                let status = ex.status.as_u16();
                let header_time = t0.elapsed();
                peer_metrics.latency.observe(header_time);
                let failure = Failure::Status(status);
                let listed = settings.next_upstream.status(status);
                let outcome = if failure.counts_as_failure(&settings.next_upstream) {
                    Outcome::Failed
                } else if listed {
                    Outcome::Next
                } else {
                    Outcome::Success
                };
                balancer.report(i, outcome, now);
                log.attempts.push(AttemptRecord {
                    addr: peer.addr,
                    status: Some(status),
                    connect: Some(ex.connect_time),
                    header: Some(header_time),
                    response: header_time,
                });
                if listed && attempts.after_status(status, now) == Next::Retry {
                    peer_metrics.failed(failure);
                    continue;
                }
                return respond(log, ex, version, t0);
            }
        }
    }
}

/// Passes a backend response on, as nginx does: its status and body, its headers minus the
/// hop-by-hop ones and those the proxy writes itself.
fn respond(log: RequestLog, ex: Exchange, client_version: Version, t0: Instant) -> Reply {
    // What `passed_back` refuses never made it into the lines.
    let Exchange { status, headers, body, .. } = ex;
    Reply {
        status,
        headers: ReplyHeaders::Peer { lines: headers, upgrade: client_version >= Version::HTTP_11 },
        body: Either::Right(body),
        done: Done { log: Some(Box::new(log)), status: status.as_u16(), attempt: Some(t0) },
    }
}

/// What every response says: who answered.
pub const SERVER: &str = "exec-allinone";

/// A response made by the proxy itself: nginx's error page for `status`, logged when sent.
fn local(log: RequestLog, status: StatusCode, close: bool) -> Reply {
    page(status, close, Some(log))
}

/// nginx's error page for a request the proxy could not read as one (nothing to log it by).
pub fn error_page(status: StatusCode) -> Reply {
    page(status, true, None)
}

fn page(status: StatusCode, close: bool, log: Option<RequestLog>) -> Reply {
    let reason = match status.as_u16() {
        408 => "Request Time-out",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Large",
        503 => "Service Temporarily Unavailable",
        504 => "Gateway Time-out",
        _ => status.canonical_reason().unwrap_or("Error"),
    };
    let code = status.as_u16();
    let page = format!(
        "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n<center><h1>{code} {reason}</h1></center>\r\n<hr><center>{SERVER}</center>\r\n</body>\r\n</html>\r\n"
    );
    // `close`: the request's body may be unread or its framing doubtful; nginx closes too.
    Reply {
        status,
        headers: ReplyHeaders::Page { close },
        body: Either::Left(Full::new(Bytes::from(page))),
        done: Done { log: log.map(Box::new), status: code, attempt: None },
    }
}

/// nginx's `large_client_header_buffers` buffer size.
const LINE_BUFFER: usize = 8192;

/// nginx's checks of the request head beyond its syntax (lb.md LB-25); how its body is
/// framed when it passes them.
/// The request line and the header lines as nginx reads them.
fn check_lines(req: &h1::Request) -> Result<(), (StatusCode, &'static str)> {
    let h = &req.headers;
    // nginx reads the request line and each header line into one of its 8 KiB buffers
    // (large_client_header_buffers 4 8k); `h1` only bounds the head as a whole.
    let target_len = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if req.method.as_str().len() + target_len + " HTTP/1.1\r\n ".len() > LINE_BUFFER {
        return Err((StatusCode::URI_TOO_LONG, "request line longer than 8 KiB"));
    }
    if h.iter().any(|(name, value)| name.len() + value.len() + ": \r\n".len() > LINE_BUFFER) {
        return Err((StatusCode::BAD_REQUEST, "header line longer than 8 KiB"));
    }
    // nginx 1.22: a method is upper-case letters, '_' and '-' (`get` → 400).
    if !req.method.as_str().bytes().all(|b| b.is_ascii_uppercase() || b == b'_' || b == b'-') {
        return Err((StatusCode::BAD_REQUEST, "method not in upper case"));
    }
    Ok(())
}

/// nginx's checks of the headers' meaning, in its order: Host, then the body framing.
fn check_request(req: &h1::Request) -> Result<BodyFraming, (StatusCode, &'static str)> {
    let h = &req.headers;
    let mut framing = BodyFraming::None;
    let mut lengths = h.get_all(Name::ContentLength);
    if let Some(length) = lengths.next() {
        if lengths.next().is_some() {
            return Err((StatusCode::BAD_REQUEST, "duplicate Content-Length"));
        }
        // nginx's ngx_atoof: digits only, no sign, no list, no overflow.
        if length.is_empty() || !length.iter().all(u8::is_ascii_digit) || length.len() > 18 {
            return Err((StatusCode::BAD_REQUEST, "invalid Content-Length"));
        }
        framing = BodyFraming::Length(length.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')));
    }
    if h.get_all(Name::Host).nth(1).is_some() {
        return Err((StatusCode::BAD_REQUEST, "duplicate Host"));
    }
    // nginx checks Host before the body framing (an HTTP/1.1 request without it is a 400 even
    // with an unknown Transfer-Encoding; an absolute target does not stand in for it), and
    // refuses an empty one.
    if req.version == Version::HTTP_11 && !h.contains(Name::Host) {
        return Err((StatusCode::BAD_REQUEST, "HTTP/1.1 request without Host"));
    }
    if h.get(Name::Host).is_some_and(|host| host.trim_ascii().is_empty()) {
        return Err((StatusCode::BAD_REQUEST, "empty Host"));
    }
    let mut encodings = h.get_all(Name::TransferEncoding);
    if let Some(encoding) = encodings.next() {
        if req.version == Version::HTTP_10 {
            return Err((StatusCode::BAD_REQUEST, "Transfer-Encoding on HTTP/1.0"));
        }
        if encodings.next().is_some() {
            return Err((StatusCode::BAD_REQUEST, "duplicate Transfer-Encoding"));
        }
        if !encoding.eq_ignore_ascii_case(b"chunked") {
            return Err((StatusCode::NOT_IMPLEMENTED, "Transfer-Encoding other than chunked"));
        }
        if framing != BodyFraming::None {
            return Err((StatusCode::BAD_REQUEST, "Content-Length with Transfer-Encoding"));
        }
        framing = BodyFraming::Chunked;
    }
    Ok(framing)
}

/// The request line and headers as they go upstream, as nginx 1.22 writes them (lb.md LB-19):
/// HTTP/1.0 without keep-alive (with it HTTP/1.1, as `proxy_http_version 1.1`); Host,
/// Connection, Content-Length first, then `set_headers`, then the client's headers in order
/// (names as it wrote them) minus the hop-by-hop ones, those with `_` in the name and those
/// the config sets, then X-Real-IP and X-Forwarded-For when configured.
fn request_head(
    pool: &Pool,
    method: &Method,
    target: &http::Uri,
    client_headers: &HeaderLines,
    client: SocketAddr,
    length: Option<u64>,
) -> Vec<u8> {
    let s = &pool.settings;
    let target = target.path_and_query().map_or("/", |pq| pq.as_str());
    let mut head = Vec::with_capacity(256 + target.len() + client_headers.len() * 32);
    let line = |head: &mut Vec<u8>, name: &[u8], value: &[u8]| {
        head.extend_from_slice(name);
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    };
    head.extend_from_slice(method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(if s.keepalive { b" HTTP/1.1\r\n" } else { b" HTTP/1.0\r\n" });
    let client_host = client_headers.get(Name::Host);
    match &s.host {
        HostHeader::PoolName | HostHeader::Literal(_) => {
            if let Some(host) = &pool.host {
                line(&mut head, b"Host", host.as_bytes());
            }
        }
        HostHeader::ClientName => match client_host.and_then(|h| std::str::from_utf8(h).ok()) {
            Some(h) => line(&mut head, b"Host", host_name(h).as_bytes()),
            None => line(&mut head, b"Host", pool.name.as_bytes()),
        },
        HostHeader::Client => line(&mut head, b"Host", client_host.unwrap_or(pool.name.as_bytes())),
    }
    if !s.keepalive {
        line(&mut head, b"Connection", b"close");
    }
    if let Some(n) = length {
        use std::io::Write as _;
        // Into the head itself: no string of its own per request.
        let _ = write!(head, "Content-Length: {n}\r\n");
    }
    let ip = (s.x_real_ip || s.x_forwarded_for).then(|| client.ip().to_string());
    let real_ip = || ip.as_deref().unwrap_or_default().as_bytes();
    let forwarded_for = || {
        // $proxy_add_x_forwarded_for: the client's list, then the address it came from.
        let mut list: Vec<&str> =
            client_headers.get_all(Name::XForwardedFor).filter_map(|v| std::str::from_utf8(v).ok()).collect();
        list.push(ip.as_deref().unwrap_or_default());
        list.join(", ")
    };
    // A configured header of the same name as one the proxy adds takes the proxy's value in
    // its place (as a map insert over it did).
    let (mut real_ip_done, mut forwarded_done) = (false, false);
    for name in pool.set_headers.keys() {
        if s.x_real_ip && name == "x-real-ip" {
            line(&mut head, name.as_str().as_bytes(), real_ip());
            real_ip_done = true;
        } else if s.x_forwarded_for && name == "x-forwarded-for" {
            line(&mut head, name.as_str().as_bytes(), forwarded_for().as_bytes());
            forwarded_done = true;
        } else {
            for value in pool.set_headers.get_all(name) {
                line(&mut head, name.as_str().as_bytes(), value.as_bytes());
            }
        }
    }
    let set_by_config = |known: Name, name: &[u8]| {
        (s.x_forwarded_for && known == Name::XForwardedFor)
            || (s.x_real_ip && name.eq_ignore_ascii_case(b"x-real-ip"))
            || (!pool.set_headers.is_empty()
                && HeaderName::from_bytes(name).is_ok_and(|n| pool.set_headers.contains_key(n)))
    };
    for (known, name, value) in client_headers.known() {
        if NOT_FORWARDED.contains(&known) || name.contains(&b'_') || set_by_config(known, name) {
            continue;
        }
        line(&mut head, name, value);
    }
    if s.x_real_ip && !real_ip_done {
        line(&mut head, b"X-Real-IP", real_ip());
    }
    if s.x_forwarded_for && !forwarded_done {
        line(&mut head, b"X-Forwarded-For", forwarded_for().as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// nginx's `$host` from a Host header: the name without its port, lower-cased.
fn host_name(host: &str) -> String {
    let name = if host.starts_with('[') {
        host.split_once(']').map_or(host, |(v6, _)| v6).to_string() + "]"
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name).to_string()
    };
    name.to_ascii_lowercase()
}
