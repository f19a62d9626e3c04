//! The client side of a pool listener: HTTP/1 connections read and answered on the
//! connection's own task, one request after another (pipelined ones in order). The head within
//! nginx's limits (`h1`), the body as its framing says, `100 Continue`, the client watched for
//! closing while peers are tried (nginx's 499), the response framed for the client's version,
//! keep-alive, and the access-log line once the response is out.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode, Version};
use http_body::Body as _;
use tokio::io::AsyncWrite;
use tokio::time::{Instant, Sleep};
use tokio_util::io::poll_read_buf;

use super::Slot;
use super::h1::{self, BadHead, Chunked, HeaderLines, Name, Step};
use super::proxy::{self, Prepared, ProxyBody, Reply, ReplyHeaders};
use super::spool::{Held, Spool};
use crate::http::{Accepted, Stream};

/// nginx's `send_timeout`: the longest a client may take to accept more of a response.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// What one read asks the client for.
const READ_CHUNK: usize = 8 * 1024;

/// Response body pieces up to this size are copied next to the head (one write for both);
/// larger ones go out as they are.
const COPY_LIMIT: usize = 8 * 1024;

/// Body bytes gathered behind the head before they are written, whatever more is ready.
const FLUSH_AT: usize = 64 * 1024;

/// Pipelined bytes taken in while a request is being proxied; past that the client is no
/// longer watched for closing until the response is out (nginx stops reading too).
const WATCH_LIMIT: usize = h1::MAX_REQUEST_HEAD;

/// Serves one client connection until it closes, times out or shutdown drains it.
pub async fn serve(stream: Stream, accepted: Accepted, slot: Arc<Slot>) {
    let peer = accepted.info.peer;
    let mut conn = Conn::new(stream);
    let outcome = conn.run(peer, &accepted, &slot).await;
    if let Err(err) = outcome {
        tracing::debug!(server = "lb", %peer, %err, "connection ended");
    }
    conn.close().await;
}

/// How a request's body is delimited (its head says so).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// Neither Content-Length nor Transfer-Encoding: no body.
    None,
    Length(u64),
    Chunked,
}

/// Where a request body is held: in memory up to `buffer` bytes, past that in a temp file in
/// `temp_dir` (nginx `client_body_buffer_size`, `client_body_temp_path`).
pub struct Buffering<'a> {
    pub buffer: usize,
    pub temp_dir: &'a std::path::Path,
}

/// Why a request's body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Over `max_body_size` (413).
    TooLarge,
    /// The client stopped sending for longer than `body_timeout` (408, no answer).
    TimedOut,
    /// Bad chunked framing, or the client closed before the end (400).
    Invalid,
    /// The temp file for a large body could not be written (500, as nginx answers).
    Spool(io::Error),
}

/// Reads what the client sends next onto `buf` while a request is under way.
async fn read_into(io: &mut Stream, buf: &mut BytesMut) -> io::Result<usize> {
    poll_fn(|cx| {
        // The request's head still shares the buffer: what is left of it will do, as a
        // reserve now would allocate anew.
        if buf.capacity() == buf.len() {
            buf.reserve(READ_CHUNK);
        }
        poll_read_buf(Pin::new(&mut *io), cx, &mut *buf)
    })
    .await
}

struct Conn {
    io: Stream,
    /// Bytes read from the client and not used yet (the start of the next request, when
    /// pipelined).
    buf: BytesMut,
    /// A response head, with small body pieces after it.
    out: Vec<u8>,
    /// One timer for every wait of the connection, reset each time.
    timer: Pin<Box<Sleep>>,
}

impl Conn {
    fn new(io: Stream) -> Conn {
        Conn { io, buf: BytesMut::new(), out: Vec::new(), timer: Box::pin(tokio::time::sleep(Duration::ZERO)) }
    }

    async fn run(&mut self, peer: SocketAddr, accepted: &Accepted, slot: &Slot) -> io::Result<()> {
        loop {
            let pool = slot.pool();
            let request = match self.read_head(pool.settings.header_timeout, accepted).await? {
                Some(Ok(request)) => request,
                Some(Err(bad)) => {
                    let status = match bad {
                        BadHead::LongRequestLine => StatusCode::URI_TOO_LONG,
                        BadHead::TooBig | BadHead::Invalid(_) => StatusCode::BAD_REQUEST,
                        BadHead::VersionNotSupported => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                    };
                    tracing::debug!(server = "lb", %peer, ?bad, "request head refused");
                    self.respond(proxy::error_page(status), Version::HTTP_11, false, true).await?;
                    return Ok(());
                }
                None => return Ok(()),
            };
            let version = request.version;
            let head_request = request.method == Method::HEAD;
            let keep_alive = keeps_alive(version, &request.headers);
            let label = (request.method.clone(), request.uri.path().to_owned());
            // A panic stays inside this request: it is answered 500 and logged with the
            // request; the connection then closes, every other one goes on.
            let handled = std::panic::AssertUnwindSafe(async {
                let mut body = RequestBody { conn: &mut *self, expect: expects_continue(&request), read: false };
                let prepared = proxy::prepare(pool, peer, request, &mut body).await;
                let mut body_read = body.read;
                let response = match prepared {
                    Prepared::Answer(response) => Some(response),
                    Prepared::Hangup => None,
                    Prepared::Forward(mut forward) => match forward.take_feed() {
                        None => self.forward(forward).await,
                        Some(feed) => {
                            let (response, fed) = self.forward_feeding(forward, feed).await;
                            body_read = fed;
                            response
                        }
                    },
                };
                (response, body_read)
            });
            let (response, body_read) = match futures_util::FutureExt::catch_unwind(handled).await {
                Ok((Some(response), body_read)) => (response, body_read),
                // The client went away (499 logged), or a stalled body (408 logged).
                Ok((None, _)) => return Ok(()),
                Err(panic) => {
                    let message = crate::http::panic_message(&*panic);
                    tracing::error!(
                        server = "lb",
                        client = %peer.ip(),
                        method = %label.0,
                        path = %crate::telemetry::escape(&label.1),
                        panic = %crate::telemetry::escape(&message),
                        "a request panicked; it was answered alone, the process goes on"
                    );
                    self.respond(proxy::error_page(StatusCode::INTERNAL_SERVER_ERROR), version, head_request, true)
                        .await?;
                    return Ok(());
                }
            };
            // A body left unread cannot be told from the next request: close after answering.
            let close = !keep_alive || !body_read || accepted.drain.is_cancelled();
            if !self.respond(response, version, head_request, close).await? {
                return Ok(());
            }
        }
    }

    /// The next request head: Ok(None) when the client closed or idled out between requests
    /// (or shutdown began then), Some(Err) when what it sent is not a head to answer.
    async fn read_head(
        &mut self,
        limit: Duration,
        accepted: &Accepted,
    ) -> io::Result<Option<Result<h1::Request, BadHead>>> {
        let deadline = Instant::now() + limit;
        // Bytes already looked at for the end of the head: a head dribbled a byte at a time is
        // parsed once it is complete (or its first line is, or it is too long), not after
        // every byte, so it costs linear time, not quadratic.
        let mut scan = h1::HeadScan::default();
        loop {
            if !self.buf.is_empty() && scan.worth_parsing(&self.buf) {
                match h1::parse_request(&mut self.buf) {
                    Ok(Some(request)) => return Ok(Some(Ok(request))),
                    Ok(None) => {}
                    Err(bad) => return Ok(Some(Err(bad))),
                }
            }
            if self.buf.is_empty() && accepted.drain.is_cancelled() {
                return Ok(None);
            }
            // Shutdown closes a connection between requests, not one in the middle of a head.
            let drain = self.buf.is_empty().then_some(&accepted.drain);
            match self.read_more(deadline, drain).await? {
                Read::Data => {}
                Read::Closed if self.buf.is_empty() => return Ok(None),
                Read::Closed => return Err(io::ErrorKind::UnexpectedEof.into()),
                Read::TimedOut | Read::Drain => return Ok(None),
            }
        }
    }

    /// Reads what the client sends next into `buf`, waiting until `deadline` at most.
    async fn read_more(
        &mut self,
        deadline: Instant,
        drain: Option<&tokio_util::sync::CancellationToken>,
    ) -> io::Result<Read> {
        let Conn { io, buf, timer, .. } = self;
        buf.reserve(READ_CHUNK);
        // Most reads find data waiting: no timer for them.
        let once = poll_fn(|cx| Poll::Ready(poll_read_buf(Pin::new(&mut *io), cx, &mut *buf))).await;
        if let Poll::Ready(read) = once {
            return Ok(if read? == 0 { Read::Closed } else { Read::Data });
        }
        timer.as_mut().reset(deadline);
        let read = poll_fn(|cx| poll_read_buf(Pin::new(&mut *io), cx, &mut *buf));
        let drained = async {
            match drain {
                Some(token) => token.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            n = read => Ok(if n? == 0 { Read::Closed } else { Read::Data }),
            () = timer.as_mut() => Ok(Read::TimedOut),
            () = drained => Ok(Read::Drain),
        }
    }

    /// Runs the attempts, watching the client: if it closes first, they are dropped.
    async fn forward(&mut self, forward: proxy::Forward) -> Option<Reply> {
        let attempts = proxy::forward(forward);
        tokio::pin!(attempts);
        let Conn { io, buf, .. } = self;
        let mut watching = true;
        loop {
            let read = read_into(io, buf);
            tokio::select! {
                biased;
                response = attempts.as_mut() => return Some(response),
                n = read, if watching => match n {
                    Ok(0) | Err(_) => return None,
                    // A pipelined request: kept for its turn.
                    Ok(_) => watching = buf.len() < WATCH_LIMIT,
                },
            }
        }
    }

    /// `forward` for an unbuffered body: the client's bytes go to the attempt as they arrive
    /// (after `100 Continue` when the client waits for it), `feed.len` of them, the rest of
    /// the buffer staying for the next request. Also true when the body was read whole: the
    /// connection can serve another request.
    async fn forward_feeding(&mut self, forward: proxy::Forward, feed: proxy::Feed) -> (Option<Reply>, bool) {
        let proxy::Feed { chunks, len, expect, idle } = feed;
        if expect && (self.buf.len() as u64) < len {
            self.out.clear();
            self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            if self.write_out(&[]).await.is_err() {
                return (None, false);
            }
        }
        let attempts = proxy::forward(forward);
        tokio::pin!(attempts);
        let Conn { io, buf, .. } = self;
        let mut left = len;
        let mut pending: Option<Bytes> = None;
        let take = |buf: &mut BytesMut, left: &mut u64| -> Option<Bytes> {
            let n = (buf.len() as u64).min(*left) as usize;
            *left -= n as u64;
            (n > 0).then(|| buf.split_to(n).freeze())
        };
        pending = pending.or_else(|| take(buf, &mut left));
        let stall = tokio::time::sleep(idle);
        tokio::pin!(stall);
        loop {
            let reading = pending.is_none() && (left > 0 || buf.len() < WATCH_LIMIT);
            let read = read_into(io, buf);
            tokio::select! {
                biased;
                response = attempts.as_mut() => return (Some(response), left == 0 && pending.is_none()),
                permit = chunks.reserve(), if pending.is_some() => match permit {
                    Ok(permit) => {
                        permit.send(pending.take().unwrap_or_default());
                        stall.as_mut().reset(tokio::time::Instant::now() + idle);
                    }
                    // The attempt stopped taking the body (it failed): its answer comes next.
                    Err(_) => pending = None,
                },
                n = read, if reading => match n {
                    // Gone, before or after its body: the attempt is dropped (499 logged).
                    Ok(0) | Err(_) => return (None, false),
                    Ok(_) if left > 0 => pending = take(buf, &mut left),
                    // A pipelined request once the body is in: kept for its turn.
                    Ok(_) => {}
                },
                () = stall.as_mut(), if left > 0 && pending.is_none() => {
                    tracing::debug!(server = "lb", "client body timed out while streaming it upstream");
                    return (None, false);
                }
            }
        }
    }

    /// Writes `reply` framed for a client of `version`; Ok(false) when the connection is
    /// to close after it (asked for, or the body could not be sent whole).
    async fn respond(
        &mut self,
        reply: Reply,
        version: Version,
        head_request: bool,
        mut close: bool,
    ) -> io::Result<bool> {
        let Reply { status, headers, mut body, done } = reply;
        let bodiless = head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        push_line(out, b"server", proxy::SERVER.as_bytes());
        push_date(out);
        let length_given = match &headers {
            ReplyHeaders::Peer { lines, upgrade } => {
                for (known, name, value) in lines.known() {
                    if *upgrade || known != Name::Upgrade {
                        push_line(out, name, value);
                    }
                }
                lines.contains(Name::ContentLength)
            }
            ReplyHeaders::Page { close: page_close } => {
                close |= page_close;
                push_line(out, b"content-type", b"text/html");
                // Also in the answer to a HEAD, which has no body.
                let length = body.size_hint().exact().unwrap_or_default();
                push_line(out, b"content-length", itoa(length).as_bytes());
                true
            }
        };
        drop(headers);
        let mut chunked = false;
        if !length_given && !bodiless {
            match body.size_hint().exact() {
                Some(n) => push_line(out, b"content-length", itoa(n).as_bytes()),
                None if version == Version::HTTP_11 => {
                    push_line(out, b"transfer-encoding", b"chunked");
                    chunked = true;
                }
                // HTTP/1.0 knows no chunks: the end of the body is the end of the connection.
                None => close = true,
            }
        }
        if close {
            push_line(out, b"connection", b"close");
        } else if version == Version::HTTP_10 {
            push_line(out, b"connection", b"keep-alive");
        }
        out.extend_from_slice(b"\r\n");
        if bodiless {
            // Not polled: a HEAD answer's body is not sent.
            drop(body);
            let written = self.write_out(&[]).await;
            done.finish(0, written.is_ok(), Instant::now().into_std());
            return written.map(|()| !close);
        }
        let mut sent = Sent { bytes: 0, end: None };
        let outcome = self.write_body(&mut body, chunked, &mut sent).await;
        // Only now, the client served: the peer's connection is closed (or was pooled at the
        // end of its body), and the log line is written.
        drop(body);
        let end = sent.end.unwrap_or_else(std::time::Instant::now);
        match outcome {
            Ok(complete) => {
                done.finish(sent.bytes, complete, end);
                Ok(complete && !close)
            }
            Err(err) => {
                done.finish(sent.bytes, false, end);
                Err(err)
            }
        }
    }

    /// Writes what follows the head in `out`: the body, chunked if so. Ok(false) if the body
    /// was cut short (the peer failed).
    async fn write_body(&mut self, body: &mut ProxyBody, chunked: bool, sent: &mut Sent) -> io::Result<bool> {
        loop {
            // Whatever the body has ready goes out together with what is already waiting.
            let frame = poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await;
            let frame = match frame {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    if !self.out.is_empty() {
                        self.write_out(&[]).await?;
                    }
                    poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
                }
            };
            match frame {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    if data.is_empty() {
                        continue;
                    }
                    sent.bytes += data.len() as u64;
                    if chunked {
                        self.out.extend_from_slice(format_hex(data.len()).as_bytes());
                        self.out.extend_from_slice(b"\r\n");
                    }
                    if data.len() <= COPY_LIMIT {
                        self.out.extend_from_slice(&data);
                    } else {
                        self.write_out(&data).await?;
                    }
                    if chunked {
                        self.out.extend_from_slice(b"\r\n");
                    }
                    // A peer that sends faster than the client takes must not fill memory.
                    if self.out.len() >= FLUSH_AT {
                        self.write_out(&[]).await?;
                    }
                }
                None => {
                    sent.end = Some(std::time::Instant::now());
                    if chunked {
                        self.out.extend_from_slice(b"0\r\n\r\n");
                    }
                    self.write_out(&[]).await?;
                    return Ok(true);
                }
                // Cut short (the peer failed mid-body): what came goes out, then the
                // connection closes, so the client sees the response is incomplete.
                Some(Err(err)) => {
                    sent.end = Some(std::time::Instant::now());
                    tracing::debug!(server = "lb", %err, "response body cut short");
                    self.write_out(&[]).await?;
                    return Ok(false);
                }
            }
        }
    }

    /// Writes `out` and then `more`, all of it, each write within `SEND_TIMEOUT`.
    async fn write_out(&mut self, more: &[u8]) -> io::Result<()> {
        let Conn { io, out, timer, .. } = self;
        let (mut head, mut tail) = (&out[..], more);
        while !head.is_empty() || !tail.is_empty() {
            let slices = [IoSlice::new(head), IoSlice::new(tail)];
            let once = poll_fn(|cx| Poll::Ready(Pin::new(&mut *io).poll_write_vectored(cx, &slices))).await;
            let n = match once {
                Poll::Ready(n) => n?,
                Poll::Pending => {
                    timer.as_mut().reset(Instant::now() + SEND_TIMEOUT);
                    let write = poll_fn(|cx| Pin::new(&mut *io).poll_write_vectored(cx, &slices));
                    tokio::select! {
                        biased;
                        n = write => n?,
                        () = timer.as_mut() => return Err(io::Error::new(io::ErrorKind::TimedOut, "client send timed out")),
                    }
                }
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let from_head = n.min(head.len());
            head = &head[from_head..];
            tail = &tail[n - from_head..];
        }
        out.clear();
        poll_fn(|cx| Pin::new(&mut *io).poll_flush(cx)).await
    }

    /// Ends the connection: TLS sends its close_notify, TCP its FIN.
    async fn close(&mut self) {
        let Conn { io, timer, .. } = self;
        timer.as_mut().reset(Instant::now() + Duration::from_secs(1));
        tokio::select! {
            _ = poll_fn(|cx| Pin::new(&mut *io).poll_shutdown(cx)) => {}
            () = timer.as_mut() => {}
        }
    }
}

/// What of a response body went out, for its log line.
struct Sent {
    bytes: u64,
    /// When the body ended (or failed), as read from the peer.
    end: Option<std::time::Instant>,
}

/// How a wait for the client's next bytes ended.
enum Read {
    Data,
    Closed,
    TimedOut,
    Drain,
}

/// The body of the request being served, read on the proxy's demand.
pub struct RequestBody<'c> {
    conn: &'c mut Conn,
    /// `Expect: 100-continue` from an HTTP/1.1 client.
    expect: bool,
    /// All of it was read: the connection is at the next request.
    read: bool,
}

impl RequestBody<'_> {
    /// Whether the client waits for `100 Continue` before its body.
    pub fn expects_continue(&self) -> bool {
        self.expect
    }

    /// The whole body as `framing` (checked by the proxy) says: 413 above `max` as soon as
    /// that is known, `100 Continue` first when the client waits for it, `idle` at most between
    /// two reads.
    /// A body past `limits.buffer` goes to a temp file as it arrives, so memory holds at
    /// most one read chunk of it.
    pub async fn read_all(
        &mut self,
        framing: BodyFraming,
        max: u64,
        idle: Duration,
        limits: &Buffering<'_>,
    ) -> Result<Held, BodyError> {
        let (chunked, length) = match framing {
            BodyFraming::None => (false, 0),
            BodyFraming::Length(n) => (false, n),
            BodyFraming::Chunked => (true, 0),
        };
        if !chunked && length > max {
            return Err(BodyError::TooLarge);
        }
        if !chunked && length == 0 {
            self.read = true;
            return Ok(Held::Memory(Bytes::new()));
        }
        let waiting = if chunked { self.conn.buf.is_empty() } else { (self.conn.buf.len() as u64) < length };
        if self.expect && waiting {
            self.conn.out.clear();
            self.conn.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            self.conn.write_out(&[]).await.map_err(|_| BodyError::Invalid)?;
        }
        let body = if chunked {
            self.read_chunked(max, idle, limits).await?
        } else if length > limits.buffer as u64 {
            Held::File(self.spool_length(length, idle, limits).await?)
        } else {
            Held::Memory(self.read_length(length, idle).await?)
        };
        self.read = true;
        Ok(body)
    }

    /// A body of known length past the buffer, to a temp file as it arrives.
    async fn spool_length(&mut self, length: u64, idle: Duration, limits: &Buffering<'_>) -> Result<Spool, BodyError> {
        let mut spool = Spool::create(limits.temp_dir).map_err(BodyError::Spool)?;
        let mut left = length;
        loop {
            let take = (self.conn.buf.len() as u64).min(left) as usize;
            if take > 0 {
                spool.append(&self.conn.buf[..take]).map_err(BodyError::Spool)?;
                let _ = self.conn.buf.split_to(take);
                left -= take as u64;
            }
            if left == 0 {
                return Ok(spool);
            }
            self.read_more(idle).await?;
        }
    }

    async fn read_length(&mut self, length: u64, idle: Duration) -> Result<Bytes, BodyError> {
        let length = usize::try_from(length).map_err(|_| BodyError::TooLarge)?;
        if self.conn.buf.capacity() < length {
            self.conn.buf.reserve(length - self.conn.buf.len());
        }
        while self.conn.buf.len() < length {
            self.read_more(idle).await?;
        }
        Ok(self.conn.buf.split_to(length).freeze())
    }

    async fn read_chunked(&mut self, max: u64, idle: Duration, limits: &Buffering<'_>) -> Result<Held, BodyError> {
        let mut decoder = Chunked::default();
        let mut body = BytesMut::new();
        let mut spool: Option<Spool> = None;
        loop {
            match decoder.decode(&mut self.conn.buf) {
                Ok(Step::Data(data)) => {
                    let held = spool.as_ref().map_or(body.len() as u64, Spool::len);
                    if held + data.len() as u64 + decoder.announced() > max {
                        return Err(BodyError::TooLarge);
                    }
                    if spool.is_none() && body.len() + data.len() > limits.buffer {
                        let mut file = Spool::create(limits.temp_dir).map_err(BodyError::Spool)?;
                        file.append(&body).map_err(BodyError::Spool)?;
                        body = BytesMut::new();
                        spool = Some(file);
                    }
                    match &mut spool {
                        Some(file) => file.append(&data).map_err(BodyError::Spool)?,
                        None => body.extend_from_slice(&data),
                    }
                }
                Ok(Step::Done) => {
                    return Ok(match spool {
                        Some(file) => Held::File(file),
                        None => Held::Memory(body.freeze()),
                    });
                }
                Ok(Step::More) => {
                    let held = spool.as_ref().map_or(body.len() as u64, Spool::len);
                    if held + decoder.announced() > max {
                        return Err(BodyError::TooLarge);
                    }
                    self.read_more(idle).await?
                }
                Err(_) => return Err(BodyError::Invalid),
            }
        }
    }

    async fn read_more(&mut self, idle: Duration) -> Result<(), BodyError> {
        match self.conn.read_more(Instant::now() + idle, None).await {
            Ok(Read::Data) => Ok(()),
            Ok(Read::TimedOut) => Err(BodyError::TimedOut),
            Ok(Read::Closed | Read::Drain) | Err(_) => Err(BodyError::Invalid),
        }
    }
}

/// HTTP/1.1 stays open unless `Connection: close`; HTTP/1.0 only with `keep-alive`.
fn keeps_alive(version: Version, headers: &HeaderLines) -> bool {
    let mut tokens = headers.get_all(Name::Connection);
    match version {
        Version::HTTP_11 => !tokens.any(|v| has_token(v, b"close")),
        Version::HTTP_10 => tokens.any(|v| has_token(v, b"keep-alive")),
        _ => false,
    }
}

fn expects_continue(request: &h1::Request) -> bool {
    request.version == Version::HTTP_11
        && request.headers.get(Name::Expect).is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"))
}

/// Whether a comma list of tokens holds `token` (case-insensitive).
fn has_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

fn push_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The `Date` line, formatted once a second per thread.
fn push_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let secs = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != secs {
            *date = (secs, httpdate::fmt_http_date(now));
        }
        push_line(out, b"date", date.1.as_bytes());
    });
}

/// A number in decimal, in a small stack string.
fn itoa(n: u64) -> Digits {
    Digits::new(n, 10)
}

/// A chunk size in hexadecimal.
fn format_hex(n: usize) -> Digits {
    Digits::new(n as u64, 16)
}

/// A number's digits, right-aligned in `buf` from `start` on.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn new(mut n: u64, radix: u64) -> Digits {
        let mut d = Digits { buf: [0; 20], start: 20 };
        loop {
            d.start -= 1;
            d.buf[d.start] = b"0123456789abcdef"[(n % radix) as usize];
            n /= radix;
            if n == 0 {
                return d;
            }
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_as_the_framing_writes_them() {
        for n in [0u64, 7, 10, 36, 4096, u64::MAX] {
            assert_eq!(itoa(n).as_bytes(), n.to_string().as_bytes());
        }
        for n in [0usize, 9, 10, 255, 4096, 1 << 20] {
            assert_eq!(format_hex(n).as_bytes(), format!("{n:x}").as_bytes());
        }
    }

    #[test]
    fn keep_alive_follows_version_and_connection_tokens() {
        let headers = |connection: &str| {
            let head = format!("GET / HTTP/1.1\r\nHost: x\r\n{connection}\r\n");
            h1::parse_request(&mut BytesMut::from(head.as_bytes())).unwrap().unwrap().headers
        };
        assert!(keeps_alive(Version::HTTP_11, &headers("")));
        assert!(!keeps_alive(Version::HTTP_11, &headers("Connection: Close\r\n")));
        assert!(!keeps_alive(Version::HTTP_11, &headers("Connection: te, close\r\n")));
        assert!(!keeps_alive(Version::HTTP_11, &headers("Connection: te\r\nconnection: close\r\n")));
        assert!(!keeps_alive(Version::HTTP_10, &headers("")));
        assert!(keeps_alive(Version::HTTP_10, &headers("Connection: Keep-Alive\r\n")));
    }
}
