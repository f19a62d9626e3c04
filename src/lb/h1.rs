//! HTTP/1 as bytes, on both sides of the proxy. From a client: the request head, within
//! nginx's `large_client_header_buffers 4 8k`. From a peer: the response head (nginx's 4 KiB
//! `proxy_buffer_size`), how its body is framed and whether the connection may carry another
//! request. Both: chunked bodies. No I/O here: `front` and `upstream` feed it what they read;
//! the request head going upstream is built by `proxy`.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::{StatusCode, Version};

/// nginx's `proxy_buffer_size` (one page): a longer response head is `invalid_header`.
const MAX_RESPONSE_HEAD: usize = 4096;

/// Header lines a 4 KiB head can hold at most ("a:\r\n" each); uninitialised, so the bound
/// costs nothing and the head size stays the only limit, as in nginx.
const MAX_HEADER_LINES: usize = MAX_RESPONSE_HEAD / 4;

/// 1xx answers skipped before a final one; more is a peer looping.
const MAX_INFORMATIONAL: usize = 8;

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// HEAD, 204, 304, or `Content-Length: 0`.
    Empty,
    Length(u64),
    Chunked,
    /// Neither length nor chunked: the body ends when the peer closes.
    UntilClose,
}

/// A final response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    /// The lines to pass on (see `parse_response`).
    pub headers: HeaderLines,
    pub framing: Framing,
    /// The peer lets the connection carry another request once this body has been read.
    pub keep_alive: bool,
}

/// What the buffered bytes hold so far.
#[derive(Debug)]
pub enum Parsed {
    /// An incomplete head: read more (unless `MAX_RESPONSE_HEAD` is reached).
    Partial,
    /// A final head; its bytes have been taken off the buffer.
    Head(Head),
}

/// Why a response head was refused (nginx: "upstream sent invalid header").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upstream sent {0}")]
pub struct Invalid(pub &'static str);

/// Parses the response head at the start of `buf`, skipping 1xx answers (as hyper did).
/// `head_request`: the request was HEAD, so the response has no body whatever it says.
/// The head keeps the header lines whose name `keep` accepts, Content-Type first (where
/// nginx's header filter writes it), the rest in order, as they came: no map, no copy. Framing
/// and reuse are decided from all of them (Content-Length, Transfer-Encoding and Connection
/// need not be kept).
pub fn parse_response(buf: &mut BytesMut, head_request: bool, keep: fn(&[u8]) -> bool) -> Result<Parsed, Invalid> {
    for _ in 0..=MAX_INFORMATIONAL {
        let mut lines = Lines::default();
        let (len, status, version, spans) = {
            let mut parsed = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADER_LINES];
            let Some((len, response)) = parse(buf, &mut parsed)? else {
                if buf.len() >= MAX_RESPONSE_HEAD {
                    return Err(Invalid("too big header"));
                }
                return Ok(Parsed::Partial);
            };
            let code = response.code.unwrap_or_default();
            let mut spans = Vec::new();
            if !(100..200).contains(&code) {
                spans.reserve_exact(response.headers.len());
                for line in response.headers.iter() {
                    let known = Name::of(line.name.as_bytes());
                    lines.see(known, line.value);
                    if keep(line.name.as_bytes()) {
                        let mut span = Span::default();
                        span.set(buf, line, known).ok_or(Invalid("invalid header"))?;
                        spans.push(span);
                    }
                }
                // Content-Type first, the rest in order (a stable sort; usually nothing moves).
                spans.sort_by_key(|span| span.known != Name::ContentType);
            }
            (len, code, response.version, spans)
        };
        let status = StatusCode::from_u16(status).map_err(|_| Invalid("invalid status"))?;
        if status.is_informational() {
            buf.advance(len);
            continue;
        }
        let version = if version == Some(1) { Version::HTTP_11 } else { Version::HTTP_10 };
        let framing = lines.framing(status, version, head_request)?;
        let keep_alive = framing != Framing::UntilClose && lines.keeps_alive(version);
        // The lines share the head's bytes.
        let headers = HeaderLines { bytes: buf.split_to(len).freeze(), spans };
        return Ok(Parsed::Head(Head { status, headers, framing, keep_alive }));
    }
    Err(Invalid("too many informational responses"))
}

/// Header lines of a head, as spans of its bytes, in the order they are to be written.
#[derive(Debug, Default)]
pub struct HeaderLines {
    bytes: Bytes,
    spans: Vec<Span>,
}

impl HeaderLines {
    /// Each line's name (as the peer wrote it) and value.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans.iter().map(|span| (&self.bytes[span.name()], &self.bytes[span.value()]))
    }

    /// Each line's name, as known, and value.
    pub fn known(&self) -> impl Iterator<Item = (Name, &[u8], &[u8])> {
        self.spans.iter().map(|span| (span.known, &self.bytes[span.name()], &self.bytes[span.value()]))
    }

    /// The first value of `name`.
    pub fn get(&self, name: Name) -> Option<&[u8]> {
        self.get_all(name).next()
    }

    /// Every value of `name`, in order.
    pub fn get_all(&self, name: Name) -> impl Iterator<Item = &[u8]> {
        self.spans.iter().filter(move |span| span.known == name).map(|span| &self.bytes[span.value()])
    }

    pub fn contains(&self, name: Name) -> bool {
        self.spans.iter().any(|span| span.known == name)
    }

    /// Every value of a name not in `Name` (case-insensitive).
    #[cfg(test)]
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }
}

/// nginx's `large_client_header_buffers 4 8k`: the request line must fit one buffer, the
/// whole head the four.
pub const REQUEST_LINE_MAX: usize = 8192;
pub const MAX_REQUEST_HEAD: usize = 4 * REQUEST_LINE_MAX;

/// Header lines parsed on the stack; a head with more is parsed again with room for all.
const REQUEST_LINES: usize = 64;

/// Why a request head cannot be read at all (the proxy answers and closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadHead {
    /// No request line within 8 KiB: 414.
    LongRequestLine,
    /// No end of the head within 32 KiB: 400.
    TooBig,
    /// Not HTTP/1.x syntax: 400.
    Invalid(&'static str),
    /// A well-formed request line of HTTP/2 or later: 505, as nginx answers.
    VersionNotSupported,
}

/// A request head as the client sent it.
#[derive(Debug)]
pub struct Request {
    pub method: http::Method,
    /// The target, sharing the head's bytes.
    pub uri: http::Uri,
    pub version: Version,
    /// Every header line, in order, names as the client wrote them.
    pub headers: HeaderLines,
}

/// Parses the request head at the start of `buf`, or None while incomplete. Header lines and
/// the target share the head's bytes. What the head means (framing, Host) is for the caller to
/// check: here only its syntax.
pub fn parse_request(buf: &mut BytesMut) -> Result<Option<Request>, BadHead> {
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; REQUEST_LINES];
    let found = match locate_request(buf, &mut stack) {
        // More lines than the stack holds: as many slots as the first 32 KiB have lines.
        Err(None) => {
            let end = buf.len().min(MAX_REQUEST_HEAD);
            let slots = buf[..end].iter().filter(|&&b| b == b'\n').count() + 1;
            let mut heap = Vec::new();
            heap.resize_with(slots, MaybeUninit::<httparse::Header<'_>>::uninit);
            // More lines than the first 32 KiB hold: the head is longer than that.
            locate_request(buf, &mut heap).map_err(|bad| bad.unwrap_or_else(|| too_big(buf)))?
        }
        Err(Some(bad)) => return Err(bad),
        Ok(found) => found,
    };
    let Some(Located { len, line, spans }) = found else { return incomplete(buf) };
    let bytes = buf.split_to(len).freeze();
    let method = http::Method::from_bytes(&bytes[line.method.clone()]).map_err(|_| BadHead::Invalid("method"))?;
    let uri = http::Uri::from_maybe_shared(bytes.slice(line.target.clone()))
        .map_err(|_| BadHead::Invalid("request target"))?;
    Ok(Some(Request { method, uri, version: line.version, headers: HeaderLines { bytes, spans } }))
}

/// Watches a request head arrive, so it is parsed when that can change the answer (its first
/// line or the whole head is in, or it is past the limit), not after every read: a head
/// dribbled a byte at a time then costs linear time, not quadratic.
#[derive(Debug, Default)]
pub struct HeadScan {
    scanned: usize,
    line_seen: bool,
}

impl HeadScan {
    pub fn worth_parsing(&mut self, buf: &[u8]) -> bool {
        // Two bytes back: an end of head split over two reads.
        let new = &buf[self.scanned.saturating_sub(2).min(buf.len())..];
        self.scanned = buf.len();
        let first_line = !self.line_seen && new.contains(&b'\n');
        self.line_seen |= first_line;
        first_line
            || buf.len() > MAX_REQUEST_HEAD
            || new.windows(2).any(|w| w == b"\n\n")
            || new.windows(3).any(|w| w == b"\n\r\n")
    }
}

/// A complete request head found at the start of a buffer.
struct Located {
    len: usize,
    line: RequestLine,
    spans: Vec<Span>,
}

/// Where the head at the start of `buf` ends and where its parts are; Err(None) if it has
/// more lines than `lines` holds.
fn locate_request<'b>(
    buf: &'b [u8],
    lines: &mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<Located>, Option<BadHead>> {
    let (len, request) = match parse_request_lines(buf, lines) {
        Err(httparse::Error::TooManyHeaders) => return Err(None),
        Err(httparse::Error::Version) if newer_version(buf) => return Err(Some(BadHead::VersionNotSupported)),
        Err(e) => return Err(Some(invalid_request(e))),
        Ok(None) => return Ok(None),
        Ok(Some(found)) => found,
    };
    if len > MAX_REQUEST_HEAD {
        return Err(Some(BadHead::TooBig));
    }
    let mut line = RequestLine::default();
    line.set(buf, &request).ok_or(Some(BadHead::Invalid("request line")))?;
    let mut spans = Vec::with_capacity(request.headers.len());
    for header in request.headers.iter() {
        let mut span = Span::default();
        span.set(buf, header, Name::of(header.name.as_bytes())).ok_or(Some(BadHead::Invalid("header")))?;
        spans.push(span);
    }
    Ok(Some(Located { len, line, spans }))
}

/// Whether the request line is `METHOD /target HTTP/M.N` with M of 2 or more: nginx answers
/// such a line 505, not 400.
fn newer_version(buf: &[u8]) -> bool {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else { return false };
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    // nginx reads the line in order: a bad method or target is its 400 first.
    if method.is_empty() || !method.iter().all(|&b| b.is_ascii_uppercase() || b == b'_' || b == b'-') {
        return false;
    }
    let target_ok = target.starts_with(b"/") || target.windows(3).any(|w| w == b"://");
    let Some((major, minor)) = version.strip_prefix(b"HTTP/").and_then(|v| {
        let dot = v.iter().position(|&b| b == b'.')?;
        Some((&v[..dot], &v[dot + 1..]))
    }) else {
        return false;
    };
    let digits = |d: &[u8]| !d.is_empty() && d.len() <= 3 && d.iter().all(u8::is_ascii_digit);
    target_ok && digits(major) && digits(minor) && major.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) >= 2
}

/// An incomplete head: wait for more, unless no more may come.
fn incomplete(buf: &[u8]) -> Result<Option<Request>, BadHead> {
    if buf.len() < MAX_REQUEST_HEAD {
        return Ok(None);
    }
    Err(too_big(buf))
}

/// A head over 32 KiB: 414 if the request line alone is over 8 KiB, as nginx decides.
fn too_big(buf: &[u8]) -> BadHead {
    let first_line = buf.iter().take(REQUEST_LINE_MAX).any(|&b| b == b'\n');
    if first_line { BadHead::TooBig } else { BadHead::LongRequestLine }
}

fn invalid_request(e: httparse::Error) -> BadHead {
    BadHead::Invalid(match e {
        httparse::Error::Version => "version",
        httparse::Error::Token => "method",
        httparse::Error::HeaderName => "header name",
        httparse::Error::HeaderValue => "header value",
        _ => "syntax",
    })
}

fn parse_request_lines<'h, 'b>(
    buf: &'b [u8],
    lines: &'h mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<(usize, httparse::Request<'h, 'b>)>, httparse::Error> {
    let mut request = httparse::Request::new(&mut []);
    match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut request, buf, lines)? {
        httparse::Status::Complete(len) => Ok(Some((len, request))),
        httparse::Status::Partial => Ok(None),
    }
}

/// Where the request line's parts are in the buffer.
#[derive(Debug, Default)]
struct RequestLine {
    method: std::ops::Range<usize>,
    target: std::ops::Range<usize>,
    version: Version,
}

impl RequestLine {
    fn set(&mut self, buf: &[u8], request: &httparse::Request<'_, '_>) -> Option<()> {
        let at = |part: &[u8]| -> Option<std::ops::Range<usize>> {
            let start = (part.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
            let end = start.checked_add(part.len()).filter(|&end| end <= buf.len())?;
            Some(start..end)
        };
        self.method = at(request.method?.as_bytes())?;
        self.target = at(request.path?.as_bytes())?;
        self.version = if request.version? == 1 { Version::HTTP_11 } else { Version::HTTP_10 };
        Some(())
    }
}

/// The header names the proxy looks for, told apart once per line as the head is parsed, so
/// that the many lookups of a request compare a byte, not a name.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    #[default]
    Other,
    Host,
    Connection,
    ContentLength,
    TransferEncoding,
    Te,
    Expect,
    Upgrade,
    KeepAlive,
    ContentType,
    XForwardedFor,
}

impl Name {
    pub fn of(name: &[u8]) -> Name {
        let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
        match name.len() {
            2 if is(b"te") => Name::Te,
            4 if is(b"host") => Name::Host,
            6 if is(b"expect") => Name::Expect,
            7 if is(b"upgrade") => Name::Upgrade,
            10 if is(b"connection") => Name::Connection,
            10 if is(b"keep-alive") => Name::KeepAlive,
            12 if is(b"content-type") => Name::ContentType,
            14 if is(b"content-length") => Name::ContentLength,
            15 if is(b"x-forwarded-for") => Name::XForwardedFor,
            17 if is(b"transfer-encoding") => Name::TransferEncoding,
            _ => Name::Other,
        }
    }
}

/// Where a header line's name and value are in the buffer (a head is at most 32 KiB), and
/// which known name it has.
#[derive(Debug, Default, Clone, Copy)]
struct Span {
    name: (u16, u16),
    value: (u16, u16),
    known: Name,
}

impl Span {
    /// Records where `line` lies in `buf` and its `known` name; None if it is not inside it.
    fn set(&mut self, buf: &[u8], line: &httparse::Header<'_>, known: Name) -> Option<()> {
        let at = |part: &[u8]| -> Option<(u16, u16)> {
            if part.is_empty() {
                return Some((0, 0));
            }
            let start = (part.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
            let end = start.checked_add(part.len()).filter(|&end| end <= buf.len())?;
            Some((u16::try_from(start).ok()?, u16::try_from(end).ok()?))
        };
        self.name = at(line.name.as_bytes())?;
        self.value = at(line.value)?;
        self.known = known;
        Some(())
    }

    fn name(&self) -> std::ops::Range<usize> {
        usize::from(self.name.0)..usize::from(self.name.1)
    }

    fn value(&self) -> std::ops::Range<usize> {
        usize::from(self.value.0)..usize::from(self.value.1)
    }
}

/// One head at the start of `buf`: its length and what it says, or None while incomplete.
fn parse<'h, 'b>(
    buf: &'b [u8],
    lines: &'h mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<(usize, httparse::Response<'h, 'b>)>, Invalid> {
    let mut response = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut response, buf, lines) {
        Ok(httparse::Status::Complete(len)) if len > MAX_RESPONSE_HEAD => Err(Invalid("too big header")),
        Ok(httparse::Status::Complete(len)) => Ok(Some((len, response))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(Invalid("too big header")),
        Err(_) => Err(Invalid("invalid header")),
    }
}

/// What the framing and connection header lines of a head say.
#[derive(Debug, Default)]
struct Lines {
    lengths: usize,
    /// The first Content-Length's value; Err if it is not a length.
    length: Option<Result<u64, ()>>,
    encodings: usize,
    chunked: bool,
    close: bool,
    keep_alive: bool,
}

impl Lines {
    fn see(&mut self, name: Name, value: &[u8]) {
        if name == Name::ContentLength {
            self.lengths += 1;
            self.length.get_or_insert_with(|| content_length(value).ok_or(()));
        } else if name == Name::TransferEncoding {
            self.encodings += 1;
            self.chunked = value.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if name == Name::Connection {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }

    /// RFC 9112 §6.3 for a response, with the checks nginx 1.23 added
    /// (proxy_duplicate_headers.t): a body whose length is ambiguous is refused, not guessed.
    fn framing(&self, status: StatusCode, version: Version, head_request: bool) -> Result<Framing, Invalid> {
        if self.lengths > 1 {
            return Err(Invalid("duplicate Content-Length"));
        }
        if self.encodings > 1 {
            return Err(Invalid("duplicate Transfer-Encoding"));
        }
        if self.encodings == 1 {
            if self.lengths > 0 {
                return Err(Invalid("both Content-Length and Transfer-Encoding"));
            }
            if !self.chunked {
                return Err(Invalid("unknown Transfer-Encoding"));
            }
            if version == Version::HTTP_10 {
                return Err(Invalid("Transfer-Encoding in an HTTP/1.0 response"));
            }
        }
        let length = match self.length {
            Some(Err(())) => return Err(Invalid("invalid Content-Length")),
            Some(Ok(n)) => Some(n),
            None => None,
        };
        if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            return Ok(Framing::Empty);
        }
        Ok(match (self.chunked, length) {
            (true, _) => Framing::Chunked,
            (false, Some(0)) => Framing::Empty,
            (false, Some(n)) => Framing::Length(n),
            (false, None) => Framing::UntilClose,
        })
    }

    /// HTTP/1.1 stays open unless `Connection: close`; HTTP/1.0 only with `keep-alive`.
    fn keeps_alive(&self, version: Version) -> bool {
        !self.close && (version == Version::HTTP_11 || self.keep_alive)
    }
}

/// A Content-Length value: digits, or a list of equal ones (as hyper accepted).
fn content_length(value: &[u8]) -> Option<u64> {
    let mut length = None;
    for part in value.split(|&b| b == b',') {
        let digits = part.trim_ascii();
        if digits.is_empty() || digits.len() > 19 {
            return None;
        }
        let n = digits.iter().try_fold(0u64, |n, &d| d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0')))?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// A chunked body being decoded (RFC 9112 §7.1); chunk extensions and trailers are dropped,
/// as nginx drops them.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    /// Trailer lines and bytes so far: bounded, as nginx 1.29.4 bounds them.
    trailer_lines: usize,
    trailer_bytes: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// One step of decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// The buffer holds no whole next piece: read more.
    More,
    Done,
}

/// A size line or a trailer line longer than this is a broken peer, not a slow one.
const MAX_CHUNK_LINE: usize = 4096;
/// More trailer lines, or more trailer bytes, than this: refused (400).
const MAX_TRAILER_LINES: usize = 32;
const MAX_TRAILER_BYTES: usize = 8192;

impl Chunked {
    /// Bytes the chunk being read has announced and not yet delivered: a client announcing
    /// more than the body limit is refused at once, as nginx does (413), not after waiting.
    pub fn announced(&self) -> u64 {
        match self.state {
            ChunkState::Data(left) => left,
            _ => 0,
        }
    }

    /// The next piece of body from `buf`, taking what it decodes off the buffer.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, Invalid> {
        loop {
            match self.state {
                // httparse reads a chunk extension up to the next CR LF, past a bare LF: a
                // size line must end at its first LF, with a CR before it (nginx 1.29.4).
                ChunkState::Size
                    if buf[..buf.len().min(MAX_CHUNK_LINE)]
                        .iter()
                        .position(|&b| b == b'\n')
                        .is_some_and(|i| i == 0 || buf[i - 1] != b'\r') =>
                {
                    return Err(Invalid("bare LF in a chunk size line"));
                }
                ChunkState::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        self.state = if size == 0 { ChunkState::Trailers } else { ChunkState::Data(size) };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                        return Err(Invalid("too long chunk size line"));
                    }

                    Ok(httparse::Status::Partial) => return Ok(Step::More),
                    Err(_) => return Err(Invalid("invalid chunked body")),
                },
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let left = left - n as u64;
                    self.state = if left == 0 { ChunkState::DataEnd } else { ChunkState::Data(left) };
                    return Ok(Step::Data(buf.split_to(n).freeze()));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Invalid("invalid chunked body"));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => match buf.windows(2).position(|w| w == b"\r\n") {
                    // A bare LF inside a trailer line: refused, as nginx does since 1.29.4.
                    Some(end) if buf[..end].contains(&b'\n') => return Err(Invalid("bare LF in a trailer")),
                    Some(0) => {
                        buf.advance(2);
                        self.state = ChunkState::Done;
                    }
                    Some(end) => {
                        self.trailer_lines += 1;
                        self.trailer_bytes += end + 2;
                        if self.trailer_lines > MAX_TRAILER_LINES || self.trailer_bytes > MAX_TRAILER_BYTES {
                            return Err(Invalid("too many trailers"));
                        }
                        buf.advance(end + 2);
                    }
                    None if buf.contains(&b'\n') => return Err(Invalid("bare LF in a trailer")),
                    None if buf.len() > MAX_CHUNK_LINE => return Err(Invalid("too long trailer line")),
                    None => return Ok(Step::More),
                },
                ChunkState::Done => return Ok(Step::Done),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_dribbled_a_byte_at_a_time_is_parsed_a_few_times_not_per_byte() {
        let head = format!(
            "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
            (0..200).map(|i| format!("X-H{i}: {}\r\n", "v".repeat(60))).collect::<String>()
        );
        let mut scan = HeadScan::default();
        let mut buf = BytesMut::new();
        let mut parses = 0;
        for &b in head.as_bytes() {
            buf.extend_from_slice(&[b]);
            if scan.worth_parsing(&buf) {
                parses += 1;
                if let Ok(Some(_)) = parse_request(&mut buf) {
                    break;
                }
            }
        }
        assert_eq!(parses, 2, "once for the request line, once for the whole head");
        assert!(buf.is_empty());
    }

    #[test]
    fn chunked_framing_refuses_bare_lf_and_unbounded_trailers_and_tells_what_is_announced() {
        let decode_all = |body: &[u8]| -> Result<(), Invalid> {
            let mut buf = BytesMut::from(body);
            let mut d = Chunked::default();
            loop {
                match d.decode(&mut buf)? {
                    Step::Data(_) => {}
                    Step::More | Step::Done => return Ok(()),
                }
            }
        };
        assert!(decode_all(b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n").is_ok());
        assert!(decode_all(b"5;x=y\nhello\r\n0\r\n\r\n").is_err(), "bare LF in an extension");
        assert!(decode_all(b"5\r\nhello\r\n0\r\nX-T: 1\nX-U: 2\r\n\r\n").is_err(), "bare LF in a trailer");
        let many = format!("0\r\n{}\r\n", (0..33).map(|i| format!("X-{i}: v\r\n")).collect::<String>());
        assert!(decode_all(many.as_bytes()).is_err(), "33 trailer lines");
        let big =
            format!("0\r\n{}\r\n", (0..3).map(|i| format!("X-{i}: {}\r\n", "v".repeat(3000))).collect::<String>());
        assert!(decode_all(big.as_bytes()).is_err(), "9 KiB of trailers");
        let mut buf = BytesMut::from(&b"200000\r\nhel"[..]);
        let mut d = Chunked::default();
        assert_eq!(d.decode(&mut buf), Ok(Step::Data(Bytes::from_static(b"hel"))));
        assert_eq!(d.announced(), 0x200000 - 3);
    }

    fn parse(text: &str, head_request: bool) -> (Result<Parsed, Invalid>, BytesMut) {
        let mut buf = BytesMut::from(text.as_bytes());
        let parsed = parse_response(&mut buf, head_request, |name| !name.eq_ignore_ascii_case(b"x-hidden"));
        (parsed, buf)
    }

    fn head(text: &str) -> Head {
        match parse(text, false).0 {
            Ok(Parsed::Head(h)) => h,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn framing_and_keep_alive_follow_the_head() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\n");
        assert_eq!((h.status, h.framing, h.keep_alive), (StatusCode::OK, Framing::Length(5), true));
        let lines: Vec<(&[u8], &[u8])> = h.headers.iter().collect();
        assert_eq!(
            lines,
            [(&b"Content-Length"[..], &b"5"[..]), (b"X-A", b"1"), (b"x-a", b"2")],
            "as the peer wrote them"
        );
        // Lines not kept still decide the framing.
        let h = head("HTTP/1.1 200 OK\r\nX-Hidden: 1\r\nConnection: close\r\nContent-Length: 5\r\n\r\n");
        assert!(h.headers.named("x-hidden").next().is_none());
        assert_eq!((h.framing, h.keep_alive, h.headers.len()), (Framing::Length(5), false, 2));
        let cases = [
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", Framing::Chunked, true),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n", Framing::Chunked, true),
            ("HTTP/1.1 200 OK\r\n\r\n", Framing::UntilClose, false),
            ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", Framing::Empty, true),
            ("HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n", Framing::Empty, true),
            ("HTTP/1.1 304 Not Modified\r\n\r\n", Framing::Empty, true),
            ("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n", Framing::Length(3), false),
            ("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: foo, Close\r\n\r\n", Framing::Length(3), false),
            ("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", Framing::Length(3), false),
            ("HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n", Framing::Length(3), true),
            ("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n", Framing::Length(7), true),
        ];
        for (text, framing, keep_alive) in cases {
            let h = head(text);
            assert_eq!((h.framing, h.keep_alive), (framing, keep_alive), "{text:?}");
        }
        let (parsed, _) = parse("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true);
        assert!(matches!(parsed, Ok(Parsed::Head(Head { framing: Framing::Empty, keep_alive: true, .. }))));
    }

    #[test]
    fn the_head_is_taken_off_the_buffer_and_informational_answers_skipped() {
        let (parsed, rest) =
            parse("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nokEXTRA", false);
        assert!(matches!(parsed, Ok(Parsed::Head(Head { status: StatusCode::CREATED, .. }))));
        assert_eq!(&rest[..], b"okEXTRA");
        let (parsed, rest) = parse("HTTP/1.1 200 OK\r\nContent-Le", false);
        assert!(matches!(parsed, Ok(Parsed::Partial)));
        assert_eq!(rest.len(), 27, "a partial head stays in the buffer");
        let loops = "HTTP/1.1 102 Processing\r\n\r\n".repeat(MAX_INFORMATIONAL + 1);
        assert_eq!(parse(&loops, false).0.unwrap_err(), Invalid("too many informational responses"));
    }

    #[test]
    fn broken_heads_are_invalid() {
        let big = format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\n\r\n", "a".repeat(MAX_RESPONSE_HEAD));
        let partial_big = format!("HTTP/1.1 200 OK\r\nX-Big: {}", "a".repeat(MAX_RESPONSE_HEAD));
        let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "a:\r\n".repeat(MAX_HEADER_LINES + 1));
        for text in [
            "HTTP/1.1 abc OK\r\n\r\n",
            "HTTP/1.1 099 Low\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "garbage\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            // nginx 1.23's checks (proxy_duplicate_headers.t).
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 204 No Content\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            &big,
            &partial_big,
            &many,
        ] {
            assert!(parse(text, false).0.is_err(), "{text:.60?}");
        }
        // Up to the limit, any number of header lines is fine (nginx counts bytes only).
        let fine = format!("HTTP/1.1 200 OK\r\n{}\r\n", "a:\r\n".repeat(900));
        assert!(matches!(parse(&fine, false).0, Ok(Parsed::Head(_))));
    }

    #[test]
    fn many_header_lines_are_all_kept_content_type_first() {
        for lines in [1, 31, 32, 33, 100] {
            let mut text = String::from("HTTP/1.1 200 OK\r\n");
            for i in 0..lines {
                text.push_str(&format!("X-H{}: v{i} \r\nX-Empty:\r\n", i % 3));
            }
            text.push_str("Content-Type: text/plain\r\nContent-Length: 1\r\n\r\nb");
            let h = head(&text);
            assert_eq!(h.headers.len(), 2 * lines + 2, "{lines} lines");
            assert_eq!(h.headers.named("x-h0").next(), Some(&b"v0"[..]));
            let all: Vec<(&[u8], &[u8])> = h.headers.iter().collect();
            assert_eq!(all[0], (&b"Content-Type"[..], &b"text/plain"[..]), "{lines} lines");
            assert_eq!(all.iter().filter(|(n, v)| *n == b"X-Empty" && v.is_empty()).count(), lines);
            let x0: Vec<_> = all.iter().filter(|(n, _)| *n == b"X-H0").map(|(_, v)| v.to_vec()).collect();
            let want: Vec<_> = (0..lines).filter(|i| i % 3 == 0).map(|i| format!("v{i}").into_bytes()).collect();
            assert_eq!(x0, want, "{lines} lines");
        }
    }

    /// Feeds `wire` to a decoder in pieces of `step` bytes.
    fn dechunk(wire: &[u8], step: usize) -> Result<(Vec<u8>, BytesMut), Invalid> {
        let mut decoder = Chunked::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Step::Data(d) => body.extend_from_slice(&d),
                Step::Done => return Ok((body, buf)),
                Step::More if fed < wire.len() => {
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
                Step::More => return Err(Invalid("ended early")),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_sizes() {
        let wire = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 100] {
            let (body, rest) = dechunk(wire, step).unwrap();
            assert_eq!(body, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
            if step == 100 {
                assert_eq!(&rest[..], b"NEXT", "what follows the body stays");
            }
        }
        for broken in [&b"5\r\nhelloXX0\r\n\r\n"[..], b"zz\r\n", b"5\nhello\r\n0\r\n\r\n", b"10000000000000000\r\n"] {
            assert!(dechunk(broken, 3).is_err(), "{:?}", String::from_utf8_lossy(broken));
        }
        let long_line = format!("5;{}", "e".repeat(MAX_CHUNK_LINE + 1));
        assert_eq!(dechunk(long_line.as_bytes(), 5000).unwrap_err(), Invalid("too long chunk size line"));
        assert_eq!(dechunk(b"5\r\nhel", 3).unwrap_err(), Invalid("ended early"));
    }

    fn request(text: &[u8]) -> (Result<Option<Request>, BadHead>, BytesMut) {
        let mut buf = BytesMut::from(text);
        let parsed = parse_request(&mut buf);
        (parsed, buf)
    }

    #[test]
    fn a_request_head_is_taken_off_the_buffer_and_the_rest_left() {
        let (parts, rest) =
            request(b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\nbodyGET / HTTP/1.1\r\n");
        let parts = parts.unwrap().unwrap();
        assert_eq!(
            (parts.method.as_str(), parts.uri.to_string(), parts.version),
            ("POST", "/a?b=1".into(), Version::HTTP_11)
        );
        assert_eq!(parts.headers.named("x-a").collect::<Vec<_>>(), [b"1", b"2"]);
        assert_eq!(&rest[..], b"bodyGET / HTTP/1.1\r\n");
        // Incomplete: nothing taken.
        let (parts, rest) = request(b"GET / HTTP/1.0\r\nHost: x\r\n");
        assert!(matches!(parts, Ok(None)));
        assert_eq!(rest.len(), 25);
        // Bare LF line ends, as nginx takes them.
        let (parts, _) = request(b"GET / HTTP/1.0\nHost: x\n\n");
        assert_eq!(parts.unwrap().unwrap().headers.get(Name::Host), Some(&b"x"[..]));
    }

    #[test]
    fn request_heads_with_many_lines_keep_them_all_in_order() {
        for n in [31, 32, 33, 64, 65, 150, 2000] {
            let lines: String = (0..n).map(|i| format!("X-H{i}: {i}\r\n")).collect();
            let text = format!("GET / HTTP/1.1\r\nHost: x\r\n{lines}\r\n");
            let parts = request(text.as_bytes()).0.unwrap().unwrap();
            assert_eq!(parts.headers.len(), n + 1, "{n} lines");
            let values: Vec<String> =
                parts.headers.iter().skip(1).map(|(_, v)| String::from_utf8(v.to_vec()).unwrap()).collect();
            assert_eq!(values, (0..n).map(|i| i.to_string()).collect::<Vec<_>>());
        }
        // The most lines a 32 KiB head holds, with bare LF ends ("a:\n").
        let lines = "a:\n".repeat((MAX_REQUEST_HEAD - 100) / 3);
        let text = format!("GET / HTTP/1.1\n{lines}\n");
        assert_eq!(request(text.as_bytes()).0.unwrap().unwrap().headers.named("a").count(), lines.len() / 3);
    }

    #[test]
    fn request_heads_nginx_refuses() {
        let long_line = format!("GET /{} HTTP/1.1\r\n", "u".repeat(REQUEST_LINE_MAX));
        let long_line = long_line + &"X: y\r\n".repeat(MAX_REQUEST_HEAD / 6);
        assert_eq!(request(long_line.as_bytes()).0.unwrap_err(), BadHead::LongRequestLine);
        let too_big = format!("GET / HTTP/1.1\r\n{}", "X-Big: 0123456789\r\n".repeat(MAX_REQUEST_HEAD / 19 + 1));
        assert_eq!(request(too_big.as_bytes()).0.unwrap_err(), BadHead::TooBig);
        let complete_but_too_big = too_big + "\r\n";
        assert_eq!(request(complete_but_too_big.as_bytes()).0.unwrap_err(), BadHead::TooBig);
        for bad in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(request(bad).0, Err(BadHead::Invalid(_))), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn known_names_are_told_apart_whatever_their_case() {
        let cases = [
            ("TE", Name::Te),
            ("host", Name::Host),
            ("Expect", Name::Expect),
            ("UPGRADE", Name::Upgrade),
            ("Connection", Name::Connection),
            ("Keep-Alive", Name::KeepAlive),
            ("content-type", Name::ContentType),
            ("Content-Length", Name::ContentLength),
            ("X-Forwarded-For", Name::XForwardedFor),
            ("Transfer-Encoding", Name::TransferEncoding),
            ("Hos", Name::Other),
            ("Hosts", Name::Other),
            ("Content-Lengt_", Name::Other),
            ("X-Real-IP", Name::Other),
        ];
        for (name, known) in cases {
            assert_eq!(Name::of(name.as_bytes()), known, "{name}");
        }
    }

    /// Whatever bytes arrive, parsing answers (a head, more, or a refusal) and never panics.
    #[test]
    fn arbitrary_bytes_never_panic_the_parsers() {
        let seeds: [&[u8]; 4] = [
            b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nContent-Type: a\r\nContent-Length: 7, 7\r\nConnection: close\r\n\r\nbody",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 204 No\r\nX: \xff\r\n\r\n",
            b"5;ext\r\nhello\r\n0\r\nTrailer: x\r\n\r\n",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000 {
            let seed = seeds[round % seeds.len()];
            let mut bytes = seed.to_vec();
            for _ in 0..(next() % 6) {
                let at = (next() as usize) % (bytes.len() + 1);
                match next() % 3 {
                    0 if at < bytes.len() => bytes[at] = next() as u8,
                    1 => bytes.insert(at, b"\r\n:; \t0a\x00\x7f"[(next() % 10) as usize]),
                    _ => bytes.truncate(at),
                }
            }
            let _ = parse_request(&mut BytesMut::from(&bytes[..]));
            let _ = parse_response(&mut BytesMut::from(&bytes[..]), round % 2 == 0, |_| true);
            let mut buf = BytesMut::from(&bytes[..]);
            let mut decoder = Chunked::default();
            while let Ok(Step::Data(_)) = decoder.decode(&mut buf) {}
        }
    }
}
