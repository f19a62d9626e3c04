//! Shared HTTP server plumbing for every role: the accept loop (plain or TLS), header and
//! idle timeouts, graceful drain, and the admin listener. Owns no business logic.

pub mod admin;
pub mod allow;
pub mod body;
pub mod client;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a service learns about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

#[derive(Clone)]
pub struct ServerOptions {
    /// Name used in logs ("webdav", "admin", ...).
    pub name: &'static str,
    /// Limit for the request head; it also closes idle keep-alive connections.
    pub header_timeout: Duration,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How long open connections may take to finish once shutdown starts.
    pub grace: Duration,
    /// Request header lines beyond this get 431.
    pub max_headers: usize,
    /// Bytes of request head beyond this get 431.
    pub max_header_size: usize,
    /// A response write that makes no progress for this long closes the connection (nginx
    /// `send_timeout`): a client that stops reading cannot hold a connection and its file.
    pub send_timeout: Duration,
    /// Set when several threads accept on handles of one socket (the lb workers).
    pub share: Option<AcceptShare>,
    /// The connection cap: one permit per connection served. With none left the accept
    /// loop waits, so further clients wait in the listen backlog instead of costing memory.
    /// Shared by the lb's pools of one worker (nginx's `worker_connections`).
    pub connections: Option<Arc<tokio::sync::Semaphore>>,
    /// Client addresses served (nginx `allow`); others get 403, logged. None: everyone.
    pub allow: Option<Arc<allow::AllowList>>,
}

impl ServerOptions {
    /// hyper's own limits, for `..ServerOptions::DEFAULT_LIMITS`.
    pub const DEFAULT_LIMITS: ServerOptions = ServerOptions {
        name: "",
        header_timeout: Duration::from_secs(30),
        tls: None,
        grace: Duration::from_secs(30),
        max_headers: 100,
        max_header_size: 64 << 10,
        send_timeout: Duration::from_secs(60),
        share: None,
        connections: None,
        allow: None,
    };

    /// A cap of `n` connections for `..ServerOptions` (see `connections`).
    pub fn cap(n: usize) -> Option<Arc<tokio::sync::Semaphore>> {
        Some(Arc::new(tokio::sync::Semaphore::new(n)))
    }
}

/// Spreads the connections of one socket over the threads that accept on it: a thread leaves
/// new connections to the others while it holds more than one above the least loaded. Left to
/// the kernel, whichever thread wakes first takes a connection, and one lb worker held 37 of
/// 64 benchmark connections and a third more CPU time than the other, which showed as the
/// proxy's p99.
#[derive(Clone)]
pub struct AcceptShare {
    loads: Arc<[ThreadLoad]>,
    me: usize,
}

#[derive(Default)]
struct ThreadLoad {
    open: AtomicUsize,
    /// Set while this thread leaves new connections to the others.
    deferring: std::sync::atomic::AtomicBool,
    /// Wakes a deferring thread to look again: one of its connections closed, or another
    /// thread's count went up.
    changed: tokio::sync::Notify,
}

impl AcceptShare {
    /// One share per accepting thread, `threads` of them.
    pub fn split(threads: usize) -> Vec<AcceptShare> {
        let loads: Arc<[ThreadLoad]> = (0..threads).map(|_| ThreadLoad::default()).collect();
        (0..threads).map(|me| AcceptShare { loads: Arc::clone(&loads), me }).collect()
    }

    fn mine(&self) -> &ThreadLoad {
        &self.loads[self.me]
    }

    /// Whether another thread is less loaded by more than one connection.
    fn defer(&self) -> bool {
        let mine = self.mine().open.load(Ordering::Relaxed);
        self.loads.iter().any(|l| l.open.load(Ordering::Relaxed) + 1 < mine)
    }

    /// Waits while another thread should take the next connection.
    async fn wait_turn(&self) {
        let me = self.mine();
        loop {
            let changed = me.changed.notified();
            me.deferring.store(true, Ordering::SeqCst);
            if !self.defer() {
                break;
            }
            changed.await;
        }
        me.deferring.store(false, Ordering::SeqCst);
    }

    fn opened(&self) {
        self.mine().open.fetch_add(1, Ordering::SeqCst);
        // Only a deferring thread needs to hear of it, so the usual accept wakes nobody.
        for (i, load) in self.loads.iter().enumerate() {
            if i != self.me && load.deferring.load(Ordering::SeqCst) {
                load.changed.notify_one();
            }
        }
    }

    fn closed(&self) {
        self.mine().open.fetch_sub(1, Ordering::SeqCst);
        if self.mine().deferring.load(Ordering::SeqCst) {
            self.mine().changed.notify_one();
        }
    }
}

/// Serves an axum router (a role's API or the admin) with `opts`, until `shutdown`.
pub async fn serve_router(
    listener: TcpListener,
    opts: ServerOptions,
    router: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Handlers that need the client's address (authentication's slow-down) take it as an
    // `Extension<ConnInfo>`.
    let make = move |conn: ConnInfo| {
        hyper_util::service::TowerToHyperService::new(router.clone().layer(axum::Extension(conn)))
    };
    serve(listener, opts, make, shutdown).await
}

/// Serves HTTP/1.1 (hyper) on an already bound listener until `shutdown`, then drains.
pub async fn serve<F, S, B>(
    listener: TcpListener,
    opts: ServerOptions,
    make_service: F,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    F: Fn(ConnInfo) -> S + Send + Sync + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let builder_opts = opts.clone();
    let handle = move |stream: Stream, conn: Accepted| {
        let allowed = builder_opts.allow.as_ref().is_none_or(|list| list.allows(conn.info.peer.ip()));
        let service =
            RequestGuard { inner: make_service(conn.info), server: builder_opts.name, peer: conn.info.peer, allowed };
        let conn_builder = builder(&builder_opts, conn.open);
        let name = builder_opts.name;
        async move {
            let stream = body::WriteTimeout::new(stream, builder_opts.send_timeout);
            let served = conn_builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(served);
            let result = tokio::select! {
                r = served.as_mut() => r,
                _ = conn.drain.cancelled() => {
                    // Finishes the response under way, then closes (idle ones close at once).
                    served.as_mut().graceful_shutdown();
                    served.await
                }
            };
            if let Err(err) = result {
                log_conn_error(name, conn.info.peer, &err);
            }
        }
    };
    serve_streams(listener, opts, handle, shutdown).await
}

/// What every hyper-served request passes before its role sees it. Requests no HTTP/1.1
/// server should take are answered here, as nginx and Apache answer them: HTTP/1.1 without
/// `Host`, or with two, → 400; a `Transfer-Encoding` other than `chunked` → 501. And panics
/// stay inside one request: one before the response answers 500, one while its body is
/// produced ends that body with an error; both are logged with the request, and the process
/// and every other request go on.
struct RequestGuard<S> {
    inner: S,
    server: &'static str,
    peer: SocketAddr,
    /// The peer is in the listener's allow list (or there is none).
    allowed: bool,
}

type GuardedBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;

impl<S, R, B> hyper::service::Service<Request<R>> for RequestGuard<S>
where
    S: hyper::service::Service<Request<R>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<GuardedBody>;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, req: Request<R>) -> Self::Future {
        use futures_util::FutureExt;
        use http_body_util::BodyExt;
        let refusal = if self.allowed {
            refused(&req)
        } else {
            tracing::warn!(
                server = self.server,
                client = %self.peer.ip(),
                method = %req.method(),
                path = %crate::telemetry::escape(req.uri().path()),
                "access forbidden: the client address is not in the listener's allow list"
            );
            Some((http::StatusCode::FORBIDDEN, "forbidden"))
        };
        if let Some((status, why)) = refusal {
            tracing::debug!(server = self.server, client = %self.peer.ip(), why, "request refused");
            let mut response = Response::new(
                http_body_util::Full::new(bytes::Bytes::from(format!("{why}\n")))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            );
            *response.status_mut() = status;
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
            response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            return Box::pin(async move { Ok(response) });
        }
        let what = Arc::new(RequestLabel {
            server: self.server,
            peer: self.peer,
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
        });
        let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.inner.call(req)));
        Box::pin(async move {
            let outcome = match called {
                Ok(future) => std::panic::AssertUnwindSafe(future).catch_unwind().await,
                Err(panic) => Err(panic),
            };
            match outcome {
                Ok(Ok(response)) => Ok(response.map(|body| {
                    body::CatchUnwindBody::new(
                        body.map_err(Into::into).boxed_unsync(),
                        move |panic: Box<dyn std::any::Any + Send>| what.log(&*panic, "response body"),
                    )
                    .boxed_unsync()
                })),
                Ok(Err(err)) => Err(err),
                Err(panic) => {
                    what.log(&*panic, "request");
                    let mut response = Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"internal server error\n"))
                            .map_err(|never| match never {})
                            .boxed_unsync(),
                    );
                    *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                    response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                    Ok(response)
                }
            }
        })
    }
}

/// Why a request is refused before any role sees it, if it is.
fn refused<R>(req: &Request<R>) -> Option<(http::StatusCode, &'static str)> {
    let headers = req.headers();
    let mut hosts = headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if req.version() == http::Version::HTTP_11 => {
            return Some((http::StatusCode::BAD_REQUEST, "HTTP/1.1 request without Host"));
        }
        (Some(_), Some(_)) => return Some((http::StatusCode::BAD_REQUEST, "duplicate Host")),
        _ => {}
    }
    // hyper takes a list ending in `chunked` as chunked and ignores the rest: the role would
    // store, say, gzip-encoded bytes as if they were the content.
    if headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .any(|te| !te.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"))
    {
        return Some((http::StatusCode::NOT_IMPLEMENTED, "Transfer-Encoding other than chunked"));
    }
    None
}

/// The text a panic was raised with, for its log line.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| String::from("(no message)"))
}

/// Which request a panic belongs to, for its log line.
struct RequestLabel {
    server: &'static str,
    peer: SocketAddr,
    method: http::Method,
    path: String,
}

impl RequestLabel {
    fn log(&self, panic: &(dyn std::any::Any + Send), during: &'static str) {
        let message = panic_message(panic);
        tracing::error!(
            server = self.server,
            client = %self.peer.ip(),
            method = %self.method,
            path = %crate::telemetry::escape(&self.path),
            panic = %crate::telemetry::escape(&message),
            during,
            "a request panicked; it was answered alone, the process goes on"
        );
    }
}

/// A connection as the accept loop hands it over.
pub struct Accepted {
    pub info: ConnInfo,
    /// Connections open on this listener, this one included.
    pub open: usize,
    /// Cancelled when shutdown starts: finish what is under way, take no new request.
    pub drain: CancellationToken,
}

/// A client connection: plain TCP, or TLS once the handshake is done.
pub type Stream =
    tokio_util::either::Either<tokio::net::TcpStream, Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>;

/// Accepts connections on an already bound listener until `shutdown` (TLS handshakes in the
/// connection's own task), runs `handle` on each in a task of its own, then gives the open
/// ones `opts.grace` to finish.
pub async fn serve_streams<F, Fut>(
    listener: TcpListener,
    opts: ServerOptions,
    handle: F,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    F: Fn(Stream, Accepted) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let handle = Arc::new(handle);
    let tracker = tokio_util::task::TaskTracker::new();
    let open_connections = Arc::new(AtomicUsize::new(0));
    let acceptor = opts.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let mut at_cap = false;
    'accept: loop {
        let permit = match &opts.connections {
            None => None,
            Some(cap) => match Arc::clone(cap).try_acquire_owned() {
                Ok(permit) => {
                    at_cap = false;
                    Some(permit)
                }
                Err(_) => {
                    if !at_cap {
                        at_cap = true;
                        tracing::warn!(
                            server = opts.name,
                            open = open_connections.load(Ordering::Relaxed),
                            "connection cap reached; new connections wait in the listen backlog"
                        );
                    }
                    tokio::select! {
                        permit = Arc::clone(cap).acquire_owned() => permit.ok(),
                        _ = shutdown.cancelled() => break 'accept,
                    }
                }
            },
        };
        if let Some(share) = &opts.share {
            tokio::select! {
                _ = share.wait_turn() => {}
                _ = shutdown.cancelled() => break 'accept,
            }
        }
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning, keep serving.
                    tracing::warn!(server = opts.name, %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let (guard, open) = OpenGuard::new(&open_connections, opts.share.clone(), permit);
        let info = ConnInfo { peer, tls: acceptor.is_some() };
        let accepted = Accepted { info, open, drain: shutdown.clone() };
        match &acceptor {
            None => {
                let served = handle(Stream::Left(stream), accepted);
                tracker.spawn(async move {
                    let _guard = guard;
                    served.await;
                });
            }
            Some(acceptor) => {
                // The handshake runs in the connection's task so a slow client holds up nobody.
                let handshake = tokio::time::timeout(opts.header_timeout, acceptor.accept(stream));
                let name = opts.name;
                let handle = Arc::clone(&handle);
                tracker.spawn(async move {
                    let _guard = guard;
                    let tls = tokio::select! {
                        r = handshake => match r {
                            Ok(Ok(s)) => s,
                            Ok(Err(err)) => {
                                tracing::debug!(server = name, %peer, %err, "tls handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(server = name, %peer, "tls handshake timed out");
                                return;
                            }
                        },
                        _ = accepted.drain.cancelled() => return,
                    };
                    handle(Stream::Right(Box::new(tls)), accepted).await;
                });
            }
        }
    }
    drop(listener);
    tracker.close();
    tokio::select! {
        _ = tracker.wait() => tracing::debug!(server = opts.name, "all connections closed"),
        _ = tokio::time::sleep(opts.grace) => {
            tracing::warn!(server = opts.name, grace = ?opts.grace, "grace period over; closing remaining connections");
        }
    }
    Ok(())
}

/// Bytes all connections together may hold in read buffers. hyper grows each connection's
/// buffer up to ~400 KiB while data arrives faster than it is consumed, which for a thousand
/// uploads in flight means hundreds of MiB; so each new connection gets a share of the budget:
/// a few fast clients get large buffers (throughput), a thousand recorders small ones (memory).
/// Shares are fixed at accept, so a burst of N connections can hold up to about
/// budget × ln(N) in all: 2 MiB measured 53 MiB peak RSS at 1000 slow uploads (8 MiB: 66-74)
/// with 1 MiB PUT throughput at c=64 unchanged within noise.
const READ_BUFFER_BUDGET: usize = 2 << 20;
const MIN_READ_BUFFER: usize = 8 << 10;
const MAX_READ_BUFFER: usize = 512 << 10;

fn builder(opts: &ServerOptions, open_connections: usize) -> http1::Builder {
    let mut b = http1::Builder::new();
    let share = (READ_BUFFER_BUDGET / open_connections.max(1)).clamp(MIN_READ_BUFFER, MAX_READ_BUFFER);
    b.timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout)
        .keep_alive(true)
        .max_buf_size(share)
        .max_headers(opts.max_headers)
        .max_header_size(opts.max_header_size);
    b
}

/// Counts a connection as open for as long as it lives (on the thread's share too).
/// Counts a connection while it is open and holds its place under the cap.
struct OpenGuard(Arc<AtomicUsize>, Option<AcceptShare>, #[allow(dead_code)] Option<tokio::sync::OwnedSemaphorePermit>);

impl OpenGuard {
    fn new(
        counter: &Arc<AtomicUsize>,
        share: Option<AcceptShare>,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> (OpenGuard, usize) {
        let open = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(share) = &share {
            share.opened();
        }
        (OpenGuard(Arc::clone(counter), share, permit), open)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        if let Some(share) = &self.1 {
            share.closed();
        }
    }
}

fn log_conn_error(name: &str, peer: SocketAddr, err: &hyper::Error) {
    // Clients that go away or time out are normal at this scale; keep them out of warn.
    if err.is_timeout() || err.is_incomplete_message() || err.is_canceled() {
        tracing::debug!(server = name, %peer, %err, "connection ended");
    } else {
        tracing::debug!(server = name, %peer, %err, "connection error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper::service::Service;

    type Empty = http_body_util::Empty<bytes::Bytes>;

    /// A role that answers what `f` makes (or panics where `f` does).
    struct Fixed<F>(F);

    impl<F: Fn() -> Response<GuardedBody>> Service<Request<Empty>> for Fixed<F> {
        type Response = Response<GuardedBody>;
        type Error = BoxError;
        type Future = std::future::Ready<Result<Self::Response, BoxError>>;

        fn call(&self, _req: Request<Empty>) -> Self::Future {
            std::future::ready(Ok((self.0)()))
        }
    }

    fn guard<F: Fn() -> Response<GuardedBody>>(f: F) -> RequestGuard<Fixed<F>> {
        RequestGuard { inner: Fixed(f), server: "test", peer: "127.0.0.1:1".parse().unwrap(), allowed: true }
    }

    fn request() -> Request<Empty> {
        Request::builder().header("host", "x").body(Empty::new()).unwrap()
    }

    fn ok_body() -> Response<GuardedBody> {
        Response::new(
            http_body_util::Full::new(bytes::Bytes::from_static(b"ok")).map_err(|e| match e {}).boxed_unsync(),
        )
    }

    #[tokio::test]
    async fn a_panic_before_the_response_answers_500_and_the_service_goes_on() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let service = guard(move || {
            if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("boom in the handler");
            }
            ok_body()
        });
        let first = service.call(request()).await.expect("answered");
        assert_eq!(first.status(), 500);
        let second = service.call(request()).await.expect("answered");
        assert_eq!(second.status(), 200);
        assert_eq!(second.into_body().collect().await.unwrap().to_bytes(), "ok");
    }

    #[tokio::test]
    async fn a_panic_while_the_body_is_made_ends_that_body_with_an_error() {
        struct Exploding;
        impl http_body::Body for Exploding {
            type Data = bytes::Bytes;
            type Error = BoxError;
            fn poll_frame(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
                panic!("boom in the body")
            }
        }
        let service = guard(|| Response::new(Exploding.boxed_unsync()));
        let response = service.call(request()).await.expect("answered");
        assert_eq!(response.status(), 200, "the head was already made");
        let err = response.into_body().collect().await.expect_err("the body must fail");
        assert!(err.to_string().contains("panicked"), "{err}");
    }

    #[tokio::test]
    async fn requests_no_http_1_1_server_takes_never_reach_the_role() {
        let service = guard(|| panic!("the role must not see this request"));
        let cases = [
            (Request::builder().body(Empty::new()).unwrap(), 400),
            (Request::builder().header("host", "a").header("host", "b").body(Empty::new()).unwrap(), 400),
            (
                Request::builder()
                    .header("host", "a")
                    .header("transfer-encoding", "gzip, chunked")
                    .body(Empty::new())
                    .unwrap(),
                501,
            ),
        ];
        for (req, want) in cases {
            let response = service.call(req).await.expect("answered");
            assert_eq!(response.status(), want);
        }
        let http10 = Request::builder().version(http::Version::HTTP_10).body(Empty::new()).unwrap();
        let service = guard(ok_body);
        assert_eq!(service.call(http10).await.unwrap().status(), 200, "HTTP/1.0 needs no Host");
    }

    #[test]
    fn a_thread_defers_only_while_another_has_two_fewer_connections() {
        let shares = AcceptShare::split(3);
        shares[0].opened();
        assert!(!shares[0].defer(), "one ahead of the others is still its turn");
        shares[0].opened();
        assert!(shares[0].defer(), "two ahead: leave it to the others");
        assert!(!shares[1].defer() && !shares[2].defer(), "the least loaded never defer");
        shares[1].opened();
        assert!(shares[0].defer(), "thread 2 is still two behind");
        shares[0].closed();
        assert!(!shares[0].defer());
    }

    #[tokio::test]
    async fn a_deferring_thread_resumes_when_another_takes_connections() {
        let shares = AcceptShare::split(2);
        let (a, b) = (shares[0].clone(), shares[1].clone());
        a.opened();
        a.opened();
        let waiting = tokio::spawn(async move { a.wait_turn().await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "two ahead, thread 0 waits");
        b.opened();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("thread 0 is woken when thread 1's count goes up")
            .expect("task");
    }

    #[tokio::test]
    async fn a_deferring_thread_resumes_when_one_of_its_connections_closes() {
        let shares = AcceptShare::split(2);
        let a = shares[0].clone();
        a.opened();
        a.opened();
        let closer = a.clone();
        let waiting = tokio::spawn(async move { a.wait_turn().await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        closer.closed();
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("woken").expect("task");
    }
}
