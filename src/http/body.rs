//! Body wrappers: an idle timeout for request bodies (slow senders cannot pin an upload slot
//! forever) and a byte-counting response body that reports when the response is done; and
//! reading a small request body whole within a bound.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The request body went quiet for longer than the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("request body idle for more than {0:?}")]
pub struct IdleTimeout(pub Duration);

/// A request-body error with a concrete type, as the WebDAV engine wants `std::error::Error`.
#[derive(Debug)]
pub struct BodyError(pub crate::http::BoxError);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BodyError {}

/// Why a bounded request body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Declared, or found while reading, beyond the bound: 413.
    #[error("body larger than {0} bytes")]
    TooLarge(u64),
    /// Cut off, stalled beyond the idle timeout, or malformed: 400.
    #[error("cannot read the body: {0}")]
    Broken(crate::http::BoxError),
}

/// Reads a request body whole, up to `max` bytes: refused from the declared Content-Length
/// before a byte is read, or as soon as the bytes pass `max`; cut off when the sender keeps
/// it waiting for `idle`.
pub async fn read_limited(
    headers: &http::HeaderMap,
    body: axum::body::Body,
    max: u64,
    idle: Duration,
) -> Result<bytes::Bytes, ReadError> {
    use http_body_util::BodyExt;
    let declared = headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(ReadError::TooLarge(max));
    }
    let body = IdleTimeoutBody::new(body, idle);
    match http_body_util::Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX)).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(ReadError::TooLarge(max)),
        Err(err) => Err(ReadError::Broken(err)),
    }
}

/// Fails the body when no frame arrives within `idle` of being asked for one.
pub struct IdleTimeoutBody<B> {
    inner: B,
    idle: Duration,
    /// When the frame asked for is due; set while a frame has been asked for and not yet
    /// delivered: the clock only runs then, so time the consumer spends writing to disk does
    /// not count against the sender.
    due: Option<Instant>,
    /// Made the first time the sender keeps us waiting (a body already in the buffer never
    /// needs one).
    sleep: Option<Pin<Box<Sleep>>>,
    progress: Option<std::sync::Arc<BodyProgress>>,
}

/// What a request body really brought, for the access log: the bytes that arrived and how it
/// ended (a client that stops half way is not a server error).
#[derive(Debug, Default)]
pub struct BodyProgress {
    pub bytes: crate::metrics::Counter,
    /// 0: no failure; `ABORTED`; `TIMED_OUT`.
    pub failure: std::sync::atomic::AtomicU8,
}

impl BodyProgress {
    pub const ABORTED: u8 = 1;
    pub const TIMED_OUT: u8 = 2;

    pub fn bytes(&self) -> u64 {
        self.bytes.get()
    }

    pub fn failure(&self) -> u8 {
        self.failure.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl<B> IdleTimeoutBody<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        IdleTimeoutBody { inner, idle, due: None, sleep: None, progress: None }
    }

    /// Records what arrives, and how the body ended, in `progress`.
    pub fn with_progress(mut self, progress: std::sync::Arc<BodyProgress>) -> Self {
        self.progress = Some(progress);
        self
    }
}

impl<B> Body for IdleTimeoutBody<B>
where
    B: Body + Unpin,
    B::Error: Into<crate::http::BoxError>,
{
    type Data = B::Data;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let due = *this.due.get_or_insert_with(|| Instant::now() + this.idle);
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.due = None;
                if let Some(p) = &this.progress {
                    use std::sync::atomic::Ordering::Relaxed;
                    match &frame {
                        Some(Ok(f)) => {
                            if let Some(data) = f.data_ref() {
                                p.bytes.add(data.remaining() as u64);
                            }
                        }
                        Some(Err(_)) => p.failure.store(BodyProgress::ABORTED, Relaxed),
                        None => {}
                    }
                }
                Poll::Ready(frame.map(|r| r.map_err(|e| BodyError(e.into()))))
            }
            Poll::Pending => {
                let sleep = match &mut this.sleep {
                    Some(sleep) => {
                        if sleep.deadline() != due {
                            sleep.as_mut().reset(due);
                        }
                        sleep
                    }
                    None => this.sleep.insert(Box::pin(tokio::time::sleep_until(due))),
                };
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        if let Some(p) = &this.progress {
                            p.failure.store(BodyProgress::TIMED_OUT, std::sync::atomic::Ordering::Relaxed);
                        }
                        Poll::Ready(Some(Err(BodyError(Box::new(IdleTimeout(this.idle))))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts the bytes of a response body and calls `done(bytes, complete)` exactly once: when
/// the body ends, or when it is dropped early because the client went away.
pub struct CountingBody<B, F: FnOnce(u64, bool)> {
    inner: B,
    bytes: u64,
    /// The response's Content-Length: hyper stops polling once that many bytes are out, so
    /// reaching it is how a body that never signals its end is known to be complete.
    expected: Option<u64>,
    done: Option<F>,
}

impl<B: Body, F: FnOnce(u64, bool)> CountingBody<B, F> {
    pub fn new(inner: B, expected: Option<u64>, done: F) -> Self {
        let mut body = CountingBody { inner, bytes: 0, expected, done: Some(done) };
        if body.inner.is_end_stream() {
            body.finish(true);
        }
        body
    }

    fn finish(&mut self, complete: bool) {
        if let Some(done) = self.done.take() {
            done(self.bytes, complete);
        }
    }
}

impl<B, F> Body for CountingBody<B, F>
where
    B: Body + Unpin,
    F: FnOnce(u64, bool) + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.remaining() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B, F: FnOnce(u64, bool)> Drop for CountingBody<B, F> {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done(self.bytes, self.expected == Some(self.bytes));
        }
    }
}

/// Turns a panic while the body is produced into an error that ends this body (the
/// connection closes), after `on_panic` has seen it.
pub struct CatchUnwindBody<B, F> {
    inner: B,
    on_panic: Option<F>,
}

impl<B, F> CatchUnwindBody<B, F> {
    pub fn new(inner: B, on_panic: F) -> Self {
        CatchUnwindBody { inner, on_panic: Some(on_panic) }
    }
}

/// The body's producer panicked.
#[derive(Debug, thiserror::Error)]
#[error("response body panicked")]
pub struct BodyPanicked;

impl<B, F> Body for CatchUnwindBody<B, F>
where
    B: Body + Unpin,
    B::Error: Into<crate::http::BoxError>,
    F: FnOnce(Box<dyn std::any::Any + Send>) + Unpin,
{
    type Data = B::Data;
    type Error = crate::http::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let Some(_) = this.on_panic else { return Poll::Ready(Some(Err(Box::new(BodyPanicked)))) };
        let inner = &mut this.inner;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Pin::new(inner).poll_frame(cx))) {
            Ok(polled) => polled.map(|frame| frame.map(|f| f.map_err(Into::into))),
            Err(panic) => {
                if let Some(on_panic) = this.on_panic.take() {
                    on_panic(panic);
                }
                Poll::Ready(Some(Err(Box::new(BodyPanicked))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.on_panic.is_some() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Fails a write (or flush) that makes no progress for `limit`: the client stopped reading.
pub struct WriteTimeout<S> {
    inner: S,
    limit: Duration,
    /// Armed while a write waits; reset by any progress.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteTimeout<S> {
    pub fn new(inner: S, limit: Duration) -> Self {
        WriteTimeout { inner, limit, sleep: None }
    }

    /// `Pending` from the inner write: arm (or check) the timer.
    fn waiting(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        let limit = self.limit;
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client read nothing for {limit:?}"),
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn done<T>(&mut self, polled: Poll<std::io::Result<T>>, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.sleep = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.waiting(cx).map(Err),
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteTimeout<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.done(polled, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.done(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.done(polled, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
