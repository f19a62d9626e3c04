//! Connections to upstream peers: connect with a timeout, nginx's send and read timeouts
//! (between two successive writes or reads, not in total), one connection per attempt or a
//! keep-alive pool, the exchange of one request for a response head (`h1` parses), the body
//! read off the same connection, and the classification of what went wrong into nginx's
//! failure types.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::h1::{self, Chunked, Framing, Parsed, Step};
use super::retry::Failure;
use super::spool::Held;

/// What one read asks the socket for (hyper's first buffer was 8 KiB; a response head is at
/// most 4 KiB, a body streams through in pieces of this size).
const READ_CHUNK: usize = 16 * 1024;
/// A spooled request body goes upstream in pieces of this size: a buffer each request holds
/// while it writes, so when a thousand slow bodies complete together they cost 16 MiB, not
/// 64 (nginx's `client_body_buffer_size` on 64-bit platforms, too).
const SPOOL_CHUNK: usize = 16 * 1024;

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

/// A request as it goes to every peer tried: the head written once, the buffered body.
pub struct UpstreamRequest {
    /// A Vec, not Bytes: it is only ever written (a Bytes of a Vec costs an allocation).
    pub head: Vec<u8>,
    pub body: Held,
    /// HEAD: the response has no body whatever its head says.
    pub head_only: bool,
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
    pub status: http::StatusCode,
    /// Those `Connector::new`'s `keep` accepts.
    pub headers: h1::HeaderLines,
    pub body: UpstreamBody,
    pub connect_time: Duration,
}

/// Idle connections of one pool on one worker thread.
type IdleList = Arc<Mutex<VecDeque<Idle>>>;

/// Idle connections of one pool on all its worker threads together.
type IdleCount = Arc<AtomicUsize>;

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
    /// `max_idle` is for all the idle lists together.
    keepalive: Option<KeepAlive>,
    /// One list per worker: a socket's readiness comes from the runtime that opened it, so a
    /// worker takes its own connections first. Another worker's comes next, registered with
    /// the taker's runtime on the way (two epoll_ctl calls cost less than a new connection,
    /// and less than a wake-up across threads on every read after).
    idle: Box<[IdleList]>,
    /// How many the lists hold: a connection moves to the list of the worker that uses it, so
    /// a bound per list would close connections while another list has room.
    idle_count: IdleCount,
    /// The response header lines passed back (the others only inform framing).
    keep: fn(&[u8]) -> bool,
}

/// An upstream connection. It has no task of its own: the request's task reads and writes it,
/// then the response body, which then parks it in the pool or drops it (closing it).
struct Conn {
    io: TimedIo,
    /// Bytes read from the peer and not used yet; empty between requests.
    buf: BytesMut,
    requests: u64,
    created: Instant,
    /// The idle list of the worker whose runtime the socket is registered with.
    home: IdleList,
    /// Seen closed (or sending unasked) while idle.
    dead: bool,
}

impl Conn {
    /// Whether this idle connection can no longer take a request: anything to read while no
    /// request is on it (the peer's FIN or reset, or bytes it had no reason to send) means so.
    /// Costs no system call unless the socket's runtime saw it become readable.
    fn is_closed(&mut self) -> bool {
        if self.dead {
            return true;
        }
        let mut cx = Context::from_waker(Waker::noop());
        self.dead = match self.io.inner.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            // Readiness can be left over from the last response: look.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                !matches!(self.io.inner.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        };
        self.dead
    }

    /// The connection with its socket registered with this thread's runtime and `home` as
    /// its idle list (two epoll_ctl calls); None if the socket could not be moved.
    fn rehome(self, home: IdleList) -> Option<Conn> {
        let Conn { io, buf, requests, created, dead, .. } = self;
        let TimedIo { inner, read_timeout, write_timeout, .. } = io;
        let inner = TcpStream::from_std(inner.into_std().ok()?).ok()?;
        Some(Conn { io: TimedIo::new(inner, read_timeout, write_timeout), buf, requests, created, home, dead })
    }

    /// Reads what the peer sends next into `buf`; 0 at its end.
    async fn read_more(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_more(cx)).await
    }

    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.reserve(READ_CHUNK);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Writes the head and the body from byte `done` on, in one writev when the socket takes
    /// them. On failure, tells whether any byte went out.
    async fn write_request(&mut self, req: &UpstreamRequest, done: usize) -> Result<(), (io::Error, bool)> {
        self.write_memory(req, done).await?;
        if let Held::Stream(streamed) = &req.body {
            // The client's bytes as they come; a client that leaves (the channel closes
            // early) ends the attempt, which goes to no other peer.
            let mut chunks = streamed.chunks.lock().await;
            let mut left = streamed.len;
            while left > 0 {
                let Some(chunk) = chunks.recv().await else {
                    return Err((io::ErrorKind::UnexpectedEof.into(), true));
                };
                left = left.saturating_sub(chunk.len() as u64);
                tokio::io::AsyncWriteExt::write_all(&mut self.io, &chunk).await.map_err(|e| (e, true))?;
            }
            return Ok(());
        }
        let Held::File(spool) = &req.body else { return Ok(()) };
        // A spooled body: after the head, from the temp file, from its start for every peer.
        let mut offset = (done.saturating_sub(req.head.len())) as u64;
        let mut buf = vec![0u8; SPOOL_CHUNK];
        while offset < spool.len() {
            let n = spool.read_at(&mut buf, offset).map_err(|e| (e, true))?;
            if n == 0 {
                return Err((io::ErrorKind::UnexpectedEof.into(), true));
            }
            tokio::io::AsyncWriteExt::write_all(&mut self.io, &buf[..n]).await.map_err(|e| (e, true))?;
            offset += n as u64;
        }
        Ok(())
    }

    /// The head and a body held in memory (none when it is spooled).
    async fn write_memory(&mut self, req: &UpstreamRequest, mut done: usize) -> Result<(), (io::Error, bool)> {
        let body: &[u8] = match &req.body {
            Held::Memory(b) => b,
            Held::File(_) | Held::Stream(_) => &[],
        };
        let head = &req.head[..];
        let total = head.len() + body.len();
        std::future::poll_fn(|cx| {
            while done < total {
                let slices = if done < head.len() {
                    [IoSlice::new(&head[done..]), IoSlice::new(body)]
                } else {
                    [IoSlice::new(&body[done - head.len()..]), IoSlice::new(&[])]
                };
                match Pin::new(&mut self.io).poll_write_vectored(cx, &slices) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err((io::ErrorKind::WriteZero.into(), done > 0)));
                    }
                    Poll::Ready(Ok(n)) => done += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err((e, done > 0))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// Sends the request (from byte `written` on: what went out with the connect) and reads
    /// the response head.
    async fn exchange(
        &mut self,
        req: &UpstreamRequest,
        written: usize,
        keep: fn(&[u8]) -> bool,
    ) -> Result<h1::Head, Failed> {
        self.requests += 1;
        self.io.active = true;
        if let Err((err, written)) = self.write_request(req, written).await {
            return Err(Failed { failure: io_failure(&err), written, detail: format!("writing the request: {err}") });
        }
        loop {
            // Nothing to parse before the first read.
            let parsed = if self.buf.is_empty() {
                Ok(Parsed::Partial)
            } else {
                h1::parse_response(&mut self.buf, req.head_only, keep)
            };
            match parsed {
                Ok(Parsed::Head(head)) => return Ok(head),
                Err(invalid) => {
                    return Err(Failed { failure: Failure::InvalidHeader, written: true, detail: invalid.to_string() });
                }
                Ok(Parsed::Partial) => match self.read_more().await {
                    Ok(0) => {
                        return Err(Failed {
                            failure: Failure::Error,
                            written: true,
                            detail: "upstream prematurely closed connection while reading response header".into(),
                        });
                    }
                    Ok(_) => {}
                    Err(err) => {
                        return Err(Failed {
                            failure: io_failure(&err),
                            written: true,
                            detail: format!("reading the response header: {err}"),
                        });
                    }
                },
            }
        }
    }
}

/// A connection just opened.
enum Started {
    /// Established at once (a near peer: loopback, the same LAN), and this many bytes of the
    /// request already went out with no wait for the event loop.
    Written(TcpStream, usize),
    /// The handshake is under way.
    Connecting(TcpStream),
}

/// Opens a connection to `addr` and, if the handshake is already done when connect(2) returns
/// (as it is on loopback), writes the request straight away. tokio's connect would wait for
/// the event loop to report the socket writable first: a trip through epoll_wait and a task
/// wake-up per connection, and a getsockopt, which nginx pays too.
fn connect_and_write(addr: SocketAddr, req: &UpstreamRequest) -> io::Result<Started> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC, None)?;
    let in_progress = match rustix::net::connect(&fd, &addr) {
        Ok(()) => false,
        Err(rustix::io::Errno::INPROGRESS) => true,
        Err(err) => return Err(err.into()),
    };
    // Still connecting, a send fails with EAGAIN and sends nothing; refused, it fails with
    // the connect's error. Head and body go out in one writev, so Nagle never holds anything
    // back; nginx does not set TCP_NODELAY upstream either.
    let body: &[u8] = match &req.body {
        Held::Memory(b) => b,
        Held::File(_) | Held::Stream(_) => &[],
    };
    let written = match rustix::io::writev(&fd, &[IoSlice::new(&req.head), IoSlice::new(body)]) {
        Ok(n) => Some(n),
        Err(rustix::io::Errno::AGAIN) if in_progress => None,
        Err(err) => return Err(err.into()),
    };
    let stream = TcpStream::from_std(std::net::TcpStream::from(fd))?;
    Ok(match written {
        Some(n) => Started::Written(stream, n),
        None => Started::Connecting(stream),
    })
}

/// Waits for a handshake under way to end; its error if it failed.
async fn connected(stream: &TcpStream) -> io::Result<()> {
    stream.writable().await?;
    match stream.take_error()? {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// An exchange that got no response head.
struct Failed {
    failure: Failure,
    /// Some of the request went out.
    written: bool,
    detail: String,
}

fn io_failure(err: &io::Error) -> Failure {
    if err.kind() == io::ErrorKind::TimedOut { Failure::Timeout } else { Failure::Error }
}

struct Idle {
    peer: usize,
    conn: Conn,
    since: Instant,
}

/// What the response body needs to put its connection back into the pool once the body has
/// been read to its end.
struct Reuse {
    peer: usize,
    keepalive: KeepAlive,
    count: IdleCount,
}

impl Reuse {
    fn park(self, mut conn: Conn) {
        let ka = self.keepalive;
        // Bytes past the end of the body: the peer's framing can't be trusted (nginx closes).
        if !conn.buf.is_empty() || conn.requests >= ka.max_requests || conn.created.elapsed() >= ka.max_age {
            return;
        }
        conn.io.active = false;
        let home = conn.home.clone();
        let mut idle = home.lock().unwrap_or_else(|p| p.into_inner());
        idle.push_back(Idle { peer: self.peer, conn, since: Instant::now() });
        // Over the bound: this list's oldest goes (nginx closes its least recently used).
        if self.count.fetch_add(1, Ordering::Relaxed) >= ka.max_idle && idle.pop_front().is_some() {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Closes pooled connections idle for longer than the timeout, as nginx's timer does, and
/// those their peer closed; ends when the pool is dropped (reload, shutdown).
fn spawn_reaper(lists: Vec<std::sync::Weak<Mutex<VecDeque<Idle>>>>, count: IdleCount, timeout: Duration) {
    let every = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            for list in &lists {
                let Some(idle) = list.upgrade() else { return };
                let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
                let before = idle.len();
                idle.retain_mut(|entry| entry.since.elapsed() < timeout && !entry.conn.is_closed());
                count.fetch_sub(before - idle.len(), Ordering::Relaxed);
            }
        }
    });
}

impl Connector {
    /// `keepalive.max_idle` is for the whole process, over the `workers`' idle lists.
    pub fn new(timeouts: Timeouts, keepalive: Option<KeepAlive>, workers: usize, keep: fn(&[u8]) -> bool) -> Connector {
        let idle: Box<[IdleList]> = (0..workers.max(1)).map(|_| IdleList::default()).collect();
        let idle_count = IdleCount::default();
        if let Some(ka) = &keepalive {
            spawn_reaper(idle.iter().map(Arc::downgrade).collect(), idle_count.clone(), ka.idle_timeout);
        }
        Connector { timeouts, keepalive, idle, idle_count, keep }
    }

    /// Connections in the pool (those whose peer closed them are dropped when next looked at).
    pub fn idle_connections(&self) -> usize {
        let open = |list: &IdleList| {
            let mut idle = list.lock().unwrap_or_else(|p| p.into_inner());
            idle.iter_mut().map(|i| !i.conn.is_closed()).filter(|open| *open).count()
        };
        self.idle.iter().map(open).sum()
    }

    /// Closes every idle connection (shutdown, reload).
    pub fn close_idle(&self) {
        for list in &self.idle {
            let mut idle = list.lock().unwrap_or_else(|p| p.into_inner());
            self.idle_count.fetch_sub(idle.len(), Ordering::Relaxed);
            idle.clear();
        }
    }

    /// The index of this thread's idle list.
    fn worker(&self) -> usize {
        WORKER.with(|w| w.get()).min(self.idle.len() - 1)
    }

    /// The newest idle connection to `peer` that can take a request.
    fn pop_idle(&self, peer: usize) -> Option<Conn> {
        let ka = self.keepalive.as_ref()?;
        let local = self.worker();
        let others = self.idle.iter().enumerate().filter(|(i, _)| *i != local).map(|(_, list)| list);
        for list in std::iter::once(&self.idle[local]).chain(others) {
            let mut idle = list.lock().unwrap_or_else(|p| p.into_inner());
            // Newest first: the one least likely to have been closed by the peer meanwhile.
            while let Some(pos) = idle.iter().rposition(|i| i.peer == peer) {
                let Some(mut entry) = idle.remove(pos) else { break };
                self.idle_count.fetch_sub(1, Ordering::Relaxed);
                if entry.since.elapsed() < ka.idle_timeout && !entry.conn.is_closed() {
                    drop(idle);
                    let home = &self.idle[local];
                    if Arc::ptr_eq(&entry.conn.home, home) {
                        return Some(entry.conn);
                    }
                    // Another worker's: moved over for good, or every read would be a wake-up
                    // across threads (its runtime sees the socket's readiness) from now on.
                    match entry.conn.rehome(home.clone()) {
                        Some(conn) => return Some(conn),
                        None => return self.pop_idle(peer),
                    }
                }
            }
        }
        None
    }

    /// One attempt on one peer: a pooled connection if there is one, else a new one.
    pub async fn send(&self, peer: usize, addr: SocketAddr, req: &UpstreamRequest) -> Result<Exchange, AttemptError> {
        while let Some(mut conn) = self.pop_idle(peer) {
            match conn.exchange(req, 0, self.keep).await {
                Ok(head) => return Ok(self.respond(peer, conn, head, Duration::ZERO)),
                // Closed before a byte went out: any method may go on a fresh connection (the
                // stale-pool race).
                Err(failed) if !failed.written && failed.failure == Failure::Error => {
                    tracing::debug!(%addr, detail = %failed.detail, "pooled connection was closed; using another");
                }
                Err(failed) => {
                    return Err(AttemptError {
                        failure: failed.failure,
                        sent: true,
                        reused: true,
                        connect_time: Some(Duration::ZERO),
                        detail: failed.detail,
                    });
                }
            }
        }
        let started = Instant::now();
        let refused = |err: io::Error| AttemptError {
            failure: Failure::Error,
            sent: false,
            reused: false,
            connect_time: None,
            detail: format!("connect failed: {err}"),
        };
        let (stream, written) = match connect_and_write(addr, req) {
            Ok(Started::Written(stream, n)) => (stream, n),
            Ok(Started::Connecting(stream)) => {
                match tokio::time::timeout(self.timeouts.connect, connected(&stream)).await {
                    Err(_) => {
                        return Err(AttemptError {
                            failure: Failure::Timeout,
                            sent: false,
                            reused: false,
                            connect_time: None,
                            detail: format!("connect timed out after {:?}", self.timeouts.connect),
                        });
                    }
                    Ok(Err(err)) => return Err(refused(err)),
                    Ok(Ok(())) => (stream, 0),
                }
            }
            Err(err) => return Err(refused(err)),
        };
        let connect_time = started.elapsed();
        let mut conn = Conn {
            io: TimedIo::new(stream, self.timeouts.read, self.timeouts.send),
            buf: BytesMut::new(),
            requests: 0,
            created: started,
            home: self.idle[self.worker()].clone(),
            dead: false,
        };
        match conn.exchange(req, written, self.keep).await {
            Ok(head) => Ok(self.respond(peer, conn, head, connect_time)),
            Err(failed) => Err(AttemptError {
                failure: failed.failure,
                sent: true,
                reused: false,
                connect_time: Some(connect_time),
                detail: failed.detail,
            }),
        }
    }

    /// The response head is in: the body takes the connection along, to read it and, with
    /// keep-alive, to pool it again at its end.
    fn respond(&self, peer: usize, conn: Conn, head: h1::Head, connect_time: Duration) -> Exchange {
        let reuse = match &self.keepalive {
            Some(keepalive) if head.keep_alive => {
                Some(Reuse { peer, keepalive: keepalive.clone(), count: self.idle_count.clone() })
            }
            _ => None,
        };
        let body = UpstreamBody::new(conn, head.framing, reuse);
        Exchange { status: head.status, headers: head.headers, body, connect_time }
    }
}

/// How much of a response body is left.
enum Left {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

/// A response body from a peer, read off the connection it came on. With keep-alive the
/// connection goes back to the pool when the body has been read to its end; dropped before
/// that, it closes (nginx closes the upstream connection of a request whose client went away).
pub struct UpstreamBody {
    /// None once the body is done or failed.
    conn: Option<Conn>,
    left: Left,
    reuse: Option<Reuse>,
    /// A body error held back for one poll, so that what came before it is flushed to the
    /// client first (nginx passes on a truncated body, then closes).
    error: Option<io::Error>,
}

impl UpstreamBody {
    fn new(conn: Conn, framing: Framing, reuse: Option<Reuse>) -> Self {
        let left = match framing {
            Framing::Empty => Left::Done,
            Framing::Length(n) => Left::Length(n),
            Framing::Chunked => Left::Chunked(Chunked::default()),
            Framing::UntilClose => Left::UntilClose,
        };
        let mut body = UpstreamBody { conn: Some(conn), left, reuse, error: None };
        if matches!(body.left, Left::Done) {
            body.ended();
        }
        body
    }

    /// The body was read to its end: the connection may take another request.
    fn ended(&mut self) {
        self.left = Left::Done;
        if let (Some(reuse), Some(conn)) = (self.reuse.take(), self.conn.take()) {
            reuse.park(conn);
        }
    }

    /// Closes the connection and yields `err` after what is already out has been flushed.
    fn fail(&mut self, err: io::Error, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.conn = None;
        self.reuse = None;
        self.left = Left::Done;
        self.error = Some(err);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if let Some(err) = this.error.take() {
            return Poll::Ready(Some(Err(err)));
        }
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            // What the buffer already holds first.
            match &mut this.left {
                Left::Done => return Poll::Ready(None),
                Left::Length(left) if !conn.buf.is_empty() => {
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(conn.buf.len());
                    let data = conn.buf.split_to(n).freeze();
                    *left -= n as u64;
                    if *left == 0 {
                        this.ended();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Left::Chunked(chunked) => match chunked.decode(&mut conn.buf) {
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Step::Done) => {
                        this.ended();
                        return Poll::Ready(None);
                    }
                    Ok(Step::More) => {}
                    Err(invalid) => return this.fail(io::Error::new(io::ErrorKind::InvalidData, invalid), cx),
                },
                Left::UntilClose if !conn.buf.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(conn.buf.split().freeze()))));
                }
                Left::Length(_) | Left::UntilClose => {}
            }
            match conn.poll_read_more(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if matches!(this.left, Left::UntilClose) => {
                    this.reuse = None;
                    this.ended();
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    let err = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "upstream prematurely closed connection while reading upstream",
                    );
                    return this.fail(err, cx);
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(err)) => return this.fail(err, cx),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.error.is_none() && matches!(self.left, Left::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Left::Length(n) => SizeHint::with_exact(n),
            Left::Done if self.error.is_none() => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// A socket whose reads and writes fail with `TimedOut` when one waits longer than its
/// timeout while a request is in flight (nginx's proxy_read_timeout / proxy_send_timeout).
struct TimedIo {
    inner: TcpStream,
    read_timeout: Duration,
    write_timeout: Duration,
    read_timer: Option<Pin<Box<Sleep>>>,
    write_timer: Option<Pin<Box<Sleep>>>,
    /// Arms the timers; false while the connection idles in the pool.
    active: bool,
}

impl TimedIo {
    fn new(inner: TcpStream, read_timeout: Duration, write_timeout: Duration) -> Self {
        TimedIo { inner, read_timeout, write_timeout, read_timer: None, write_timer: None, active: true }
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
        timed(polled, &mut this.read_timer, this.read_timeout, this.active, cx, "upstream timed out reading")
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        timed(polled, &mut this.write_timer, this.write_timeout, this.active, cx, "upstream timed out writing")
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// Never called: a connection is closed by dropping it (close(2) sends the FIN; nginx
    /// only closes too).
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        timed(polled, &mut this.write_timer, this.write_timeout, this.active, cx, "upstream timed out writing")
    }

    fn is_write_vectored(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use http_body_util::BodyExt;

    use super::*;

    /// A loopback peer: each connection reads request heads and answers each with `answer`
    /// (`None`: reads and stays silent), closing after it when `close`; it counts connections,
    /// requests, connections the other side closed and those it closed itself.
    struct Peer {
        addr: SocketAddr,
        connections: Arc<AtomicUsize>,
        requests: Arc<AtomicUsize>,
        closed_by_us: Arc<AtomicUsize>,
        closed_by_peer: Arc<AtomicUsize>,
    }

    fn peer(answer: Option<&'static [u8]>, close: bool) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let closed_by_us = Arc::new(AtomicUsize::new(0));
        let closed_by_peer = Arc::new(AtomicUsize::new(0));
        let counts = (connections.clone(), requests.clone(), closed_by_us.clone(), closed_by_peer.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                counts.0.fetch_add(1, Ordering::SeqCst);
                let (requests, closed, closing) = (counts.1.clone(), counts.2.clone(), counts.3.clone());
                std::thread::spawn(move || {
                    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) => return closed.fetch_add(1, Ordering::SeqCst),
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                            Err(_) => return 0,
                        };
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            requests.fetch_add(1, Ordering::SeqCst);
                            let Some(answer) = answer else { continue };
                            if stream.write_all(answer).is_err() {
                                return 0;
                            }
                            if close {
                                drop(stream);
                                return closing.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                });
            }
        });
        Peer { addr, connections, requests, closed_by_us, closed_by_peer }
    }

    fn get() -> UpstreamRequest {
        UpstreamRequest {
            head: b"GET / HTTP/1.1\r\nHost: peer\r\n\r\n".to_vec(),
            body: Held::Memory(Bytes::new()),
            head_only: false,
        }
    }

    fn connector(keepalive: Option<KeepAlive>) -> Connector {
        let timeouts = Timeouts {
            connect: Duration::from_secs(5),
            send: Duration::from_secs(5),
            read: Duration::from_millis(300),
        };
        Connector::new(timeouts, keepalive, 1, |_| true)
    }

    fn keepalive(max_requests: u64) -> Option<KeepAlive> {
        Some(KeepAlive {
            max_idle: 8,
            idle_timeout: Duration::from_secs(60),
            max_requests,
            max_age: Duration::from_secs(3600),
        })
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    async fn wait_for(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..500 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn a_refused_connect_is_an_error_before_anything_was_sent() {
        // Bound, never listening: refused, and no other test's socket can take the port.
        let held = tokio::net::TcpSocket::new_v4().unwrap();
        held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = held.local_addr().unwrap();
        let err = connector(None).send(0, addr, &get()).await.err().expect("refused");
        assert_eq!((err.failure, err.sent, err.reused, err.connect_time), (Failure::Error, false, false, None));
        assert!(err.detail.starts_with("connect failed"), "{}", err.detail);
    }

    #[tokio::test]
    async fn a_kept_alive_connection_is_pooled_once_its_body_is_read_and_then_reused() {
        let p = peer(Some(OK), false);
        let c = connector(keepalive(100));
        for round in 1..=3 {
            let ex = c.send(0, p.addr, &get()).await.expect("answered");
            assert_eq!(ex.status, 200);
            assert_eq!(c.idle_connections(), 0, "in use until its body is read");
            assert_eq!(&ex.body.collect().await.unwrap().to_bytes()[..], b"ok");
            assert_eq!(c.idle_connections(), 1, "round {round}: back in the pool");
        }
        assert_eq!((p.connections.load(Ordering::SeqCst), p.requests.load(Ordering::SeqCst)), (1, 3));
    }

    #[tokio::test]
    async fn a_body_dropped_unread_closes_its_connection_instead_of_pooling_it() {
        let p = peer(Some(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nok"), false);
        let c = connector(keepalive(100));
        drop(c.send(0, p.addr, &get()).await.expect("answered"));
        assert_eq!(c.idle_connections(), 0);
        wait_for("the peer to see the close", || p.closed_by_us.load(Ordering::SeqCst) == 1).await;
    }

    #[tokio::test]
    async fn without_keepalive_and_past_max_requests_the_connection_is_closed() {
        let p = peer(Some(OK), false);
        let c = connector(None);
        c.send(0, p.addr, &get()).await.unwrap().body.collect().await.unwrap();
        assert_eq!(c.idle_connections(), 0);
        wait_for("the close without keep-alive", || p.closed_by_us.load(Ordering::SeqCst) == 1).await;

        let p = peer(Some(OK), false);
        let c = connector(keepalive(2));
        for _ in 0..2 {
            c.send(0, p.addr, &get()).await.unwrap().body.collect().await.unwrap();
        }
        assert_eq!(c.idle_connections(), 0, "used up after max_requests");
        wait_for("the used-up connection's close", || p.closed_by_us.load(Ordering::SeqCst) == 1).await;
        c.send(0, p.addr, &get()).await.unwrap().body.collect().await.unwrap();
        assert_eq!(p.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_pooled_connection_the_peer_closed_is_passed_over_for_a_new_one() {
        let p = peer(Some(OK), true);
        let c = connector(keepalive(100));
        for round in 1..=2 {
            let ex = c.send(0, p.addr, &get()).await.expect("answered on a live connection");
            assert_eq!(&ex.body.collect().await.unwrap().to_bytes()[..], b"ok");
            // Closed while idle, and seen so by the pool (a close racing the next request is
            // the proxy's retry to handle, not the pool's).
            wait_for("the pool to see the peer's close", || {
                p.closed_by_peer.load(Ordering::SeqCst) == round && c.idle_connections() == 0
            })
            .await;
        }
        assert_eq!((p.connections.load(Ordering::SeqCst), p.requests.load(Ordering::SeqCst)), (2, 2));
    }

    #[tokio::test]
    async fn a_peer_that_never_answers_is_a_timeout_after_the_request_went_out() {
        let p = peer(None, false);
        let err = connector(None).send(0, p.addr, &get()).await.err().expect("timed out");
        assert_eq!((err.failure, err.sent, err.reused), (Failure::Timeout, true, false));
        assert_eq!(p.requests.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_head_that_is_not_http_is_an_invalid_header() {
        let p = peer(Some(b"HTTP/1.1 2x0 Nope\r\n\r\n"), true);
        let err = connector(None).send(0, p.addr, &get()).await.err().expect("refused head");
        assert_eq!((err.failure, err.sent), (Failure::InvalidHeader, true));
    }
}
