//! Connections to upstream peers: connect with a timeout, nginx's send and read timeouts
//! (between two successive writes or reads, not in total), one connection per attempt or a
//! keep-alive pool, and the classification of what went wrong into nginx's failure types.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::AbortHandle;
use tokio::time::Sleep;

use super::retry::Failure;

/// nginx's `proxy_buffer_size` (one page): a longer response head is `invalid_header`.
const MAX_RESPONSE_HEAD: usize = 4096;

/// How long a request waits for a pooled connection still finishing its last response (its
/// runtime normally gets to it within microseconds) before it closes it and goes on.
const PENDING_READY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct Timeouts {
    pub connect: Duration,
    pub send: Duration,
    pub read: Duration,
}

#[derive(Debug, Clone)]
pub struct KeepAlive {
    pub max_idle: usize,
    pub idle_timeout: Duration,
    pub max_requests: u64,
    /// nginx `keepalive_time`: a connection is not reused after this age.
    pub max_age: Duration,
}

/// An attempt that produced no response.
#[derive(Debug)]
pub struct AttemptError {
    pub failure: Failure,
    /// The connection was up, so the request may have reached the peer.
    pub sent: bool,
    /// It happened on a pooled connection.
    pub reused: bool,
    pub connect_time: Option<Duration>,
    pub detail: String,
}

/// A response head from a peer, with the connection it came on.
pub struct Exchange {
    pub response: Response<UpstreamBody>,
    pub connect_time: Duration,
    pub reused: bool,
    pub lease: Lease,
}

/// Idle connections of one pool on one worker thread.
type IdleList = Arc<Mutex<VecDeque<Idle>>>;

thread_local! {
    /// The lb worker this thread is (0 elsewhere), so that a connection goes back to, and is
    /// taken from, the idle list of the runtime that drives it.
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the calling thread as lb worker `index` (of `Connector::new`'s `workers`).
pub fn set_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// Connections of one pool.
pub struct Connector {
    timeouts: Timeouts,
    /// `max_idle` here is per worker: the configured count split among the workers.
    keepalive: Option<KeepAlive>,
    /// One list per worker: a pooled connection's task runs on the runtime that opened it,
    /// so a worker takes its own connections first. Another worker's comes next: a wake-up
    /// across threads per read still costs less than a new connection.
    idle: Box<[IdleList]>,
}

struct Live {
    sender: SendRequest<Full<Bytes>>,
    /// Arms the read/write timers; false while the connection idles in the pool.
    active: Arc<AtomicBool>,
    task: AbortHandle,
    requests: u64,
    created: Instant,
    /// The idle list of the worker whose runtime drives this connection.
    home: IdleList,
}

struct Idle {
    peer: usize,
    conn: Live,
    since: Instant,
}

/// The connection behind a response. Dropping it closes the connection; `release` hands it
/// back to the pool when the response was read to its end and the peer keeps it open.
pub struct Lease {
    conn: Option<Live>,
    peer: usize,
    keepalive: Option<KeepAlive>,
}

impl Lease {
    pub fn release(mut self, complete: bool) {
        let Some(conn) = self.conn.take() else { return };
        let Some(ka) = self.keepalive.clone() else {
            conn.task.abort();
            return;
        };
        if !complete || conn.requests >= ka.max_requests || conn.created.elapsed() >= ka.max_age {
            conn.task.abort();
            return;
        }
        // Parked at once, even if hyper has not yet seen the end of the response (then it is
        // ready a moment later, or closed if the peer said `Connection: close`): a request
        // right behind this one, on any worker, finds it.
        let home = conn.home.clone();
        park(&home, self.peer, conn, ka.max_idle);
    }
}

fn park(idle: &Mutex<VecDeque<Idle>>, peer: usize, conn: Live, max_idle: usize) {
    conn.active.store(false, Ordering::Relaxed);
    let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
    // Connections the peer closed meanwhile must not push live ones out.
    idle.retain(|entry| !entry.conn.sender.is_closed());
    idle.push_back(Idle { peer, conn, since: Instant::now() });
    while idle.len() > max_idle {
        if let Some(old) = idle.pop_front() {
            old.conn.task.abort();
        }
    }
}

/// Closes pooled connections idle for longer than the timeout, as nginx's timer does; ends
/// when the pool is dropped (reload, shutdown).
fn spawn_reaper(lists: Vec<std::sync::Weak<Mutex<VecDeque<Idle>>>>, timeout: Duration) {
    let every = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            for list in &lists {
                let Some(idle) = list.upgrade() else { return };
                let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
                idle.retain(|entry| {
                    let keep = entry.since.elapsed() < timeout && !entry.conn.sender.is_closed();
                    if !keep {
                        entry.conn.task.abort();
                    }
                    keep
                });
            }
        }
    });
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.task.abort();
        }
    }
}

impl Connector {
    /// `keepalive.max_idle` is for the whole process; each of the `workers` keeps its share
    /// (rounded up).
    pub fn new(timeouts: Timeouts, mut keepalive: Option<KeepAlive>, workers: usize) -> Connector {
        let idle: Box<[IdleList]> = (0..workers.max(1)).map(|_| IdleList::default()).collect();
        if let Some(ka) = &mut keepalive {
            ka.max_idle = ka.max_idle.div_ceil(idle.len());
            spawn_reaper(idle.iter().map(Arc::downgrade).collect(), ka.idle_timeout);
        }
        Connector { timeouts, keepalive, idle }
    }

    /// Idle connections ready for a request (not those still finishing their last response).
    pub fn idle_connections(&self) -> usize {
        let ready = |list: &IdleList| {
            list.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|i| i.conn.sender.is_ready()).count()
        };
        self.idle.iter().map(ready).sum()
    }

    /// Closes every idle connection (shutdown, reload).
    pub fn close_idle(&self) {
        for list in &self.idle {
            for idle in list.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
                idle.conn.task.abort();
            }
        }
    }

    /// The index of this thread's idle list.
    fn worker(&self) -> usize {
        WORKER.with(|w| w.get()).min(self.idle.len() - 1)
    }

    /// The newest idle connection to `peer` that is ready for a request.
    async fn take_idle(&self, peer: usize) -> Option<Live> {
        loop {
            let mut conn = self.pop_idle(peer)?;
            if conn.sender.is_ready() {
                return Some(conn);
            }
            // Parked as its last response ended: ready as soon as its runtime sees that end.
            match tokio::time::timeout(PENDING_READY, conn.sender.ready()).await {
                Ok(Ok(())) => return Some(conn),
                _ => conn.task.abort(),
            }
        }
    }

    fn pop_idle(&self, peer: usize) -> Option<Live> {
        let ka = self.keepalive.as_ref()?;
        let local = self.worker();
        let others = self.idle.iter().enumerate().filter(|(i, _)| *i != local).map(|(_, list)| list);
        for list in std::iter::once(&self.idle[local]).chain(others) {
            let mut idle = list.lock().unwrap_or_else(|p| p.into_inner());
            // Newest first: the one least likely to have been closed by the peer meanwhile.
            while let Some(pos) = idle.iter().rposition(|i| i.peer == peer) {
                let Some(entry) = idle.remove(pos) else { break };
                if entry.since.elapsed() < ka.idle_timeout && !entry.conn.sender.is_closed() {
                    return Some(entry.conn);
                }
                entry.conn.task.abort();
            }
        }
        None
    }

    /// One attempt on one peer: a pooled connection if there is one, else a new one.
    pub async fn send(
        &self,
        peer: usize,
        addr: SocketAddr,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Exchange, AttemptError> {
        while let Some(mut conn) = self.take_idle(peer).await {
            conn.active.store(true, Ordering::Relaxed);
            conn.requests += 1;
            let guard = AbortOnDrop(Some(conn.task.clone()));
            let sent = conn.sender.try_send_request(request).await;
            guard.disarm();
            match sent {
                Ok(response) => {
                    let lease = self.lease(peer, conn);
                    let response = response.map(|body| UpstreamBody::new(body, None));
                    return Ok(Exchange { response, connect_time: Duration::ZERO, reused: true, lease });
                }
                Err(mut err) => {
                    conn.task.abort();
                    match err.take_message() {
                        // Closed before a byte went out: the request is untouched, so any
                        // method may go on a fresh connection (the stale-pool race).
                        Some(back) => {
                            tracing::debug!(%addr, err = %err.error(), "pooled connection was closed; using another");
                            request = back;
                        }
                        None => {
                            let error = err.into_error();
                            return Err(AttemptError {
                                failure: classify(&error),
                                sent: true,
                                reused: true,
                                connect_time: Some(Duration::ZERO),
                                detail: describe(&error),
                            });
                        }
                    }
                }
            }
        }
        let started = Instant::now();
        let stream = match tokio::time::timeout(self.timeouts.connect, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(AttemptError {
                    failure: Failure::Timeout,
                    sent: false,
                    reused: false,
                    connect_time: None,
                    detail: format!("connect timed out after {:?}", self.timeouts.connect),
                });
            }
            Ok(Err(err)) => {
                return Err(AttemptError {
                    failure: Failure::Error,
                    sent: false,
                    reused: false,
                    connect_time: None,
                    detail: format!("connect failed: {err}"),
                });
            }
            Ok(Ok(s)) => s,
        };
        let connect_time = started.elapsed();
        // The head and body go out in one writev, so Nagle never holds anything back; nginx
        // does not set TCP_NODELAY upstream either. (One syscall less per attempt.)
        let active = Arc::new(AtomicBool::new(true));
        let io = TimedIo::new(stream, self.timeouts.read, self.timeouts.send, active.clone());
        let handshake = http1::Builder::new().max_header_size(MAX_RESPONSE_HEAD).handshake(TokioIo::new(io)).await;
        let (mut sender, connection) = match handshake {
            Ok(pair) => pair,
            Err(err) => {
                return Err(AttemptError {
                    failure: Failure::Error,
                    sent: true,
                    reused: false,
                    connect_time: Some(connect_time),
                    detail: describe(&err),
                });
            }
        };
        if self.keepalive.is_none() {
            return self.exchange_inline(peer, sender, connection, request, connect_time).await;
        }
        let task = tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, "upstream connection ended with an error");
            }
        })
        .abort_handle();
        // If the client goes away while we wait, this future is dropped: close the upstream
        // connection then too, as nginx does (proxy_ignore_client_abort off).
        let guard = AbortOnDrop(Some(task.clone()));
        match sender.send_request(request).await {
            Ok(response) => {
                guard.disarm();
                let home = self.idle[self.worker()].clone();
                let conn = Live { sender, active, task, requests: 1, created: started, home };
                let lease = self.lease(peer, conn);
                let response = response.map(|body| UpstreamBody::new(body, None));
                Ok(Exchange { response, connect_time, reused: false, lease })
            }
            Err(err) => {
                task.abort();
                Err(AttemptError {
                    failure: classify(&err),
                    sent: true,
                    reused: false,
                    connect_time: Some(connect_time),
                    detail: describe(&err),
                })
            }
        }
    }

    /// A connection used for one request only is driven by the request's own task (no task
    /// of its own, no wake-ups across threads): here until the response head is in, then by
    /// the response body. Dropping either closes it, as aborting its task did.
    async fn exchange_inline(
        &self,
        peer: usize,
        mut sender: SendRequest<Full<Bytes>>,
        connection: Conn,
        request: Request<Full<Bytes>>,
        connect_time: Duration,
    ) -> Result<Exchange, AttemptError> {
        let mut conn = Some(connection);
        let mut head = std::pin::pin!(sender.send_request(request));
        let result = std::future::poll_fn(|cx| {
            drive(&mut conn, cx);
            head.as_mut().poll(cx)
        })
        .await;
        match result {
            Ok(response) => {
                let response = response.map(|body| UpstreamBody::new(body, conn));
                let lease = Lease { conn: None, peer, keepalive: None };
                Ok(Exchange { response, connect_time, reused: false, lease })
            }
            Err(err) => Err(AttemptError {
                failure: classify(&err),
                sent: true,
                reused: false,
                connect_time: Some(connect_time),
                detail: describe(&err),
            }),
        }
    }

    fn lease(&self, peer: usize, conn: Live) -> Lease {
        Lease { conn: Some(conn), peer, keepalive: self.keepalive.clone() }
    }
}

type Conn = http1::Connection<TokioIo<TimedIo>, Full<Bytes>>;

/// Polls a connection driven in place; drops it once it is done (as its task would end), so
/// that a response still waiting for it gets hyper's "connection closed" error.
fn drive(conn: &mut Option<Conn>, cx: &mut Context<'_>) {
    if let Some(c) = conn
        && let Poll::Ready(result) = Pin::new(c).poll(cx)
    {
        if let Err(err) = result {
            tracing::debug!(%err, "upstream connection ended with an error");
        }
        *conn = None;
    }
}

/// A response body from a peer, with the connection it comes on when that one is driven by
/// the request's task (not pooled): reading the body polls the connection first.
pub struct UpstreamBody {
    body: Incoming,
    conn: Option<Conn>,
    /// A body error held back for one poll, so that what came before it is flushed to the
    /// client first (nginx passes on a truncated body, then closes).
    error: Option<hyper::Error>,
}

impl UpstreamBody {
    fn new(body: Incoming, conn: Option<Conn>) -> Self {
        UpstreamBody { body, conn, error: None }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Some(err) = this.error.take() {
            return Poll::Ready(Some(Err(err)));
        }
        let mut polled = Pin::new(&mut this.body).poll_frame(cx);
        if polled.is_pending() && this.conn.is_some() {
            drive(&mut this.conn, cx);
            polled = Pin::new(&mut this.body).poll_frame(cx);
        }
        match polled {
            // The connection runs in the same task as the client's now: the data before the
            // error (and the head) would otherwise never be written.
            Poll::Ready(Some(Err(err))) => {
                this.error = Some(err);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

struct AbortOnDrop(Option<AbortHandle>);

impl AbortOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Maps a hyper client error to nginx's failure type.
fn classify(err: &hyper::Error) -> Failure {
    if err.is_parse() || err.is_parse_status() || err.is_parse_too_large() {
        return Failure::InvalidHeader;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && io.kind() == io::ErrorKind::TimedOut
        {
            return Failure::Timeout;
        }
        source = e.source();
    }
    Failure::Error
}

fn describe(err: &hyper::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// A socket whose reads and writes fail with `TimedOut` when one waits longer than its
/// timeout while a request is in flight (nginx's proxy_read_timeout / proxy_send_timeout).
struct TimedIo {
    inner: TcpStream,
    read_timeout: Duration,
    write_timeout: Duration,
    read_timer: Option<Pin<Box<Sleep>>>,
    write_timer: Option<Pin<Box<Sleep>>>,
    active: Arc<AtomicBool>,
}

impl TimedIo {
    fn new(inner: TcpStream, read_timeout: Duration, write_timeout: Duration, active: Arc<AtomicBool>) -> Self {
        TimedIo { inner, read_timeout, write_timeout, read_timer: None, write_timer: None, active }
    }
}

/// Polls the timer of a pending operation, arming it on first use.
fn expired(timer: &mut Option<Pin<Box<Sleep>>>, limit: Duration, active: bool, cx: &mut Context<'_>) -> bool {
    if !active {
        *timer = None;
        return false;
    }
    let sleep = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
    sleep.as_mut().poll(cx).is_ready()
}

/// Disarms the timer when the operation made progress; fails it with `TimedOut` when it has
/// been pending longer than `limit` while a request is in flight.
fn timed<T>(
    polled: Poll<io::Result<T>>,
    timer: &mut Option<Pin<Box<Sleep>>>,
    limit: Duration,
    active: bool,
    cx: &mut Context<'_>,
    what: &'static str,
) -> Poll<io::Result<T>> {
    match polled {
        Poll::Ready(r) => {
            *timer = None;
            Poll::Ready(r)
        }
        Poll::Pending if expired(timer, limit, active, cx) => {
            Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
        }
        Poll::Pending => Poll::Pending,
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let active = this.active.load(Ordering::Relaxed);
        timed(polled, &mut this.read_timer, this.read_timeout, active, cx, "upstream timed out reading")
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        let active = this.active.load(Ordering::Relaxed);
        timed(polled, &mut this.write_timer, this.write_timeout, active, cx, "upstream timed out writing")
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// A no-op: hyper half-closes before dropping a connection, but close(2) right after
    /// sends the same FIN; nginx only closes. Saves a syscall per upstream connection.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        let active = this.active.load(Ordering::Relaxed);
        timed(polled, &mut this.write_timer, this.write_timeout, active, cx, "upstream timed out writing")
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
