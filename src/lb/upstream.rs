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

/// A response head from a peer; its body carries the connection it came on.
pub struct Exchange {
    pub response: Response<UpstreamBody>,
    pub connect_time: Duration,
    pub reused: bool,
}

/// Idle connections of one pool on one worker thread.
type IdleList = Arc<Mutex<VecDeque<Idle>>>;

thread_local! {
    /// The lb worker this thread is (0 elsewhere), so that a connection goes back to, and is
    /// taken from, the idle list of the runtime its socket is registered with.
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
    /// One list per worker: a socket's readiness comes from the runtime that opened it, so a
    /// worker takes its own connections first. Another worker's comes next: a wake-up across
    /// threads per read still costs less than a new connection.
    idle: Box<[IdleList]>,
}

/// Boxed: a request moves its connection around (into the response body, back to the pool),
/// and hyper's connection state is large enough for those moves to show as copies.
type Conn = Box<http1::Connection<TokioIo<TimedIo>, Full<Bytes>>>;

/// An upstream connection. It has no task of its own: whoever holds it drives it (the
/// request's task while a request is on it, the next taker when it comes out of the pool),
/// so a request and its upstream connection never wake each other across tasks. Dropping it
/// closes the connection.
struct Live {
    sender: SendRequest<Full<Bytes>>,
    /// None once hyper is done with the connection (closed, or failed).
    conn: Option<Conn>,
    /// Arms the read/write timers; false while the connection idles in the pool.
    active: Arc<AtomicBool>,
    requests: u64,
    created: Instant,
    /// The idle list of the worker whose runtime the socket is registered with.
    home: IdleList,
}

impl Live {
    /// Polls `fut` while driving the connection.
    async fn drive_with<T>(conn: &mut Option<Conn>, fut: impl Future<Output = T>) -> T {
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| {
            drive(conn, cx);
            fut.as_mut().poll(cx)
        })
        .await
    }

    /// Whether the connection takes a request now, driving it until it knows (a parked
    /// connection may still be finishing its last response, or may find the peer closed it).
    async fn ready(&mut self) -> bool {
        let Live { sender, conn, .. } = self;
        let mut ready = std::pin::pin!(Self::drive_with(conn, std::future::poll_fn(|cx| sender.poll_ready(cx))));
        // Usually known at the first poll: no timer then.
        let first = std::future::poll_fn(|cx| Poll::Ready(ready.as_mut().poll(cx))).await;
        if let Poll::Ready(result) = first {
            return result.is_ok();
        }
        matches!(tokio::time::timeout(PENDING_READY, ready).await, Ok(Ok(())))
    }
}

struct Idle {
    peer: usize,
    conn: Live,
    since: Instant,
}

/// What the response body needs to put its connection back into the pool once the body has
/// been read to its end.
struct Reuse {
    live: Live,
    peer: usize,
    keepalive: KeepAlive,
}

impl Reuse {
    fn park(self, conn: Option<Conn>) {
        let Reuse { mut live, peer, keepalive: ka } = self;
        live.conn = conn;
        if live.conn.is_none()
            || live.sender.is_closed()
            || live.requests >= ka.max_requests
            || live.created.elapsed() >= ka.max_age
        {
            return;
        }
        live.active.store(false, Ordering::Relaxed);
        let home = live.home.clone();
        let mut idle = home.lock().unwrap_or_else(|p| p.into_inner());
        // Connections the peer closed meanwhile must not push live ones out.
        idle.retain(|entry| !entry.conn.sender.is_closed());
        idle.push_back(Idle { peer, conn: live, since: Instant::now() });
        while idle.len() > ka.max_idle {
            idle.pop_front();
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
                idle.retain(|entry| entry.since.elapsed() < timeout && !entry.conn.sender.is_closed());
            }
        }
    });
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

    /// Connections in the pool (those whose peer closed them are dropped when next looked at).
    pub fn idle_connections(&self) -> usize {
        let open = |list: &IdleList| {
            list.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|i| !i.conn.sender.is_closed()).count()
        };
        self.idle.iter().map(open).sum()
    }

    /// Closes every idle connection (shutdown, reload).
    pub fn close_idle(&self) {
        for list in &self.idle {
            list.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    /// The index of this thread's idle list.
    fn worker(&self) -> usize {
        WORKER.with(|w| w.get()).min(self.idle.len() - 1)
    }

    /// The newest idle connection to `peer` that takes a request.
    async fn take_idle(&self, peer: usize) -> Option<Live> {
        loop {
            let mut conn = self.pop_idle(peer)?;
            if conn.ready().await {
                return Some(conn);
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
        while let Some(mut live) = self.take_idle(peer).await {
            live.active.store(true, Ordering::Relaxed);
            live.requests += 1;
            let Live { sender, conn, .. } = &mut live;
            let sent = Live::drive_with(conn, sender.try_send_request(request)).await;
            match sent {
                Ok(response) => return Ok(self.exchange(peer, live, response, Duration::ZERO, true)),
                Err(mut err) => match err.take_message() {
                    // Closed before a byte went out: the request is untouched, so any method
                    // may go on a fresh connection (the stale-pool race).
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
                },
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
        let (sender, connection) = match handshake {
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
        let home = self.idle[self.worker()].clone();
        let mut live = Live { sender, conn: Some(Box::new(connection)), active, requests: 1, created: started, home };
        let Live { sender, conn, .. } = &mut live;
        match Live::drive_with(conn, sender.send_request(request)).await {
            Ok(response) => Ok(self.exchange(peer, live, response, connect_time, false)),
            Err(err) => Err(AttemptError {
                failure: classify(&err),
                sent: true,
                reused: false,
                connect_time: Some(connect_time),
                detail: describe(&err),
            }),
        }
    }

    /// The response head is in: the body takes the connection along, to drive it while it is
    /// read and, with keep-alive, to pool it again at its end.
    fn exchange(
        &self,
        peer: usize,
        mut live: Live,
        response: Response<Incoming>,
        connect_time: Duration,
        reused: bool,
    ) -> Exchange {
        let conn = live.conn.take();
        let reuse = self.keepalive.clone().map(|keepalive| Reuse { live, peer, keepalive });
        let response = response.map(|body| UpstreamBody::new(body, conn, reuse));
        Exchange { response, connect_time, reused }
    }
}

/// Polls a connection driven in place; drops it once it is done (as its task would end), so
/// that a response still waiting for it gets hyper's "connection closed" error.
fn drive(conn: &mut Option<Conn>, cx: &mut Context<'_>) {
    if let Some(c) = conn
        && let Poll::Ready(result) = Pin::new(&mut **c).poll(cx)
    {
        if let Err(err) = result {
            tracing::debug!(%err, "upstream connection ended with an error");
        }
        *conn = None;
    }
}

/// A response body from a peer, with the connection it comes on: reading the body polls the
/// connection first. With keep-alive the connection goes back to the pool when the body has
/// been read to its end; dropped before that, it closes (nginx closes the upstream
/// connection of a request whose client went away).
pub struct UpstreamBody {
    body: Incoming,
    conn: Option<Conn>,
    reuse: Option<Reuse>,
    /// A body error held back for one poll, so that what came before it is flushed to the
    /// client first (nginx passes on a truncated body, then closes).
    error: Option<hyper::Error>,
}

impl UpstreamBody {
    fn new(body: Incoming, conn: Option<Conn>, reuse: Option<Reuse>) -> Self {
        let mut body = UpstreamBody { body, conn, reuse, error: None };
        // No body to read (HEAD, 204, 304, Content-Length: 0): reusable right away.
        if body.body.is_end_stream() {
            body.ended();
        }
        body
    }

    fn ended(&mut self) {
        if let Some(reuse) = self.reuse.take() {
            reuse.park(self.conn.take());
        }
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
                this.reuse = None;
                this.error = Some(err);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(None) => {
                this.ended();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if this.body.is_end_stream() {
                    this.ended();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
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
