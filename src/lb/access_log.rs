//! The lb's access log: one line per client request with every attempt (nginx's
//! `$upstream_*` variables), written once, also when the client leaves first (499), and the
//! request's metrics with it.

use std::fmt::{self, Display as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;

use super::Pool;
use crate::telemetry::escape;

/// One attempt as the access log shows it (nginx `$upstream_addr`, `$upstream_status`, ...).
#[derive(Debug, Clone)]
pub(super) struct AttemptRecord {
    pub(super) addr: SocketAddr,
    /// None while the attempt is under way (shown as "-" if the client leaves then).
    pub(super) status: Option<u16>,
    pub(super) connect: Option<Duration>,
    pub(super) header: Option<Duration>,
    pub(super) response: Duration,
}

/// Everything the access log and metrics need about a request; writes the line once, also
/// when the client goes away first (status 499, as nginx logs it).
pub(super) struct RequestLog {
    pub(super) pool: Arc<Pool>,
    pub(super) client: SocketAddr,
    pub(super) method: Method,
    /// The request target as the client sent it.
    pub(super) uri: http::Uri,
    pub(super) started: Instant,
    pub(super) attempts: Vec<AttemptRecord>,
    pub(super) written: bool,
    /// The request's X-Correlation-Id (excp names its interaction-ends by it), for `trace`.
    pub(super) corr_id: Option<String>,
}

/// A request as `trace` shows it: what the request log already held, moved in (no copy on
/// the proxy's path).
#[derive(Clone)]
pub(super) struct Recent {
    at_ms: u64,
    method: Method,
    /// The target as the client sent it (its first 512 bytes): a copy, since the request's
    /// own shares the connection's read buffer, which the ring would otherwise keep alive.
    pub(super) uri: Box<str>,
    status: u16,
    attempts: Vec<AttemptRecord>,
    client: std::net::IpAddr,
    pub(super) corr_id: Option<String>,
}

impl Recent {
    pub(super) fn event(&self, pool: &str) -> crate::trace::Event {
        let peers: Vec<String> = self
            .attempts
            .iter()
            .map(|a| format!("{} ({})", a.addr, a.status.map_or("-".into(), |s| s.to_string())))
            .collect();
        let detail = format!(
            "pool {pool}: {} {} from {} answered {}; tried {}",
            self.method,
            self.uri,
            self.client,
            self.status,
            if peers.is_empty() { "no peer".to_string() } else { peers.join(", ") }
        );
        let path = self.uri.split('?').next().unwrap_or_default();
        let step = if self.method == Method::POST && path.contains("interaction-end") {
            "interaction-end"
        } else if path.contains("/end") {
            "call-end"
        } else {
            "request"
        };
        crate::trace::Event::new(self.at_ms, "lb", step, detail).corr(self.corr_id.clone())
    }
}

impl RequestLog {
    pub(super) fn write(&mut self, status: u16, bytes: u64, complete: bool, last_response: Option<Duration>) {
        if std::mem::replace(&mut self.written, true) {
            return;
        }
        if let (Some(last), Some(rec)) = (last_response, self.attempts.last_mut()) {
            rec.response = last;
        }
        let elapsed = self.started.elapsed();
        let m = &self.pool.metrics;
        m.requests.inc(status);
        m.duration.observe(elapsed);
        let target = match self.uri.path_and_query() {
            Some(pq) => std::borrow::Cow::Borrowed(pq.as_str()),
            None => std::borrow::Cow::Owned(self.uri.to_string()),
        };

        let line = AccessLine {
            pool: &self.pool.name,
            client: self.client.ip(),
            method: &self.method,
            uri: &target,
            status,
            bytes,
            ms: elapsed.as_millis() as u64,
            complete,
            attempts: &self.attempts,
        };
        if crate::telemetry::fast_access_log() {
            crate::telemetry::write_access_line(|out| line.push_fields(out));
        } else {
            line.trace();
        }
        // The log line is written: what it was made of goes into the pool's ring for `trace`.
        if self.pool.recent.enabled() {
            let mut end = target.len().min(512);
            while !target.is_char_boundary(end) {
                end -= 1;
            }
            let uri = target[..end].into();
            self.pool.recent.push(Recent {
                at_ms: crate::clock::unix_ms(),
                method: self.method.clone(),
                uri,
                status,
                attempts: std::mem::take(&mut self.attempts),
                client: self.client.ip(),
                corr_id: self.corr_id.take(),
            });
        }
    }
}

/// The fields of one access-log line.
struct AccessLine<'a> {
    pool: &'a str,
    client: std::net::IpAddr,
    method: &'a Method,
    /// The request target as the client sent it.
    uri: &'a str,
    status: u16,
    bytes: u64,
    ms: u64,
    complete: bool,
    attempts: &'a [AttemptRecord],
}

impl AccessLine<'_> {
    /// Through tracing: JSON logs, or a filter the fast path does not serve.
    fn trace(&self) {
        let attempts = self.attempts;
        tracing::info!(
            target: "access",
            pool = %self.pool,
            client = %self.client,
            method = %self.method,
            uri = %escape(self.uri),
            status = self.status,
            bytes = self.bytes,
            ms = self.ms,
            complete = self.complete,
            upstream_addr = %Column(attempts, |a, f| a.addr.fmt(f)),
            upstream_status = %Column(attempts, |a, f| match a.status {
                Some(s) => s.fmt(f),
                None => f.write_str("-"),
            }),
            upstream_connect_time = %Column(attempts, |a, f| Secs(a.connect).fmt(f)),
            upstream_header_time = %Column(attempts, |a, f| Secs(a.header).fmt(f)),
            upstream_response_time = %Column(attempts, |a, f| Secs(Some(a.response)).fmt(f)),
        );
    }

    /// The same fields as `trace` writes them in the text format (a test holds them equal),
    /// written without the formatting machinery.
    fn push_fields(&self, out: &mut String) {
        use crate::telemetry::push_digits;
        out.push_str("pool=");
        out.push_str(self.pool);
        out.push_str(" client=");
        push_addr(out, Addr::Ip(self.client));
        out.push_str(" method=");
        out.push_str(self.method.as_str());
        out.push_str(" uri=");
        out.push_str(&escape(self.uri));
        out.push_str(" status=");
        push_digits(out, u64::from(self.status), 1);
        out.push_str(" bytes=");
        push_digits(out, self.bytes, 1);
        out.push_str(" ms=");
        push_digits(out, self.ms, 1);
        out.push_str(if self.complete { " complete=true" } else { " complete=false" });
        let column = |out: &mut String, name: &str, each: &dyn Fn(&mut String, &AttemptRecord)| {
            out.push(' ');
            out.push_str(name);
            out.push('=');
            if self.attempts.is_empty() {
                out.push('-');
            }
            for (i, a) in self.attempts.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                each(out, a);
            }
        };
        column(out, "upstream_addr", &|out, a| push_addr(out, Addr::Socket(a.addr)));
        column(out, "upstream_status", &|out, a| match a.status {
            Some(s) => push_digits(out, u64::from(s), 1),
            None => out.push('-'),
        });
        column(out, "upstream_connect_time", &|out, a| push_secs(out, a.connect));
        column(out, "upstream_header_time", &|out, a| push_secs(out, a.header));
        column(out, "upstream_response_time", &|out, a| push_secs(out, Some(a.response)));
    }
}

/// `Secs` without the formatting machinery (but for its rare tie case).
fn push_secs(out: &mut String, d: Option<Duration>) {
    let Some(d) = d else { return out.push('-') };
    let Some(ms) = Secs::millis(d) else {
        use std::fmt::Write as _;
        let _ = write!(out, "{}", Secs(Some(d)));
        return;
    };
    crate::telemetry::push_digits(out, ms / 1000, 1);
    out.push('.');
    crate::telemetry::push_digits(out, ms % 1000, 3);
}

/// An address as `Display` writes it, formatted once per thread: a proxy logs the same few
/// clients and peers on every line.
fn push_addr(out: &mut String, addr: Addr) {
    /// Addresses remembered; past that many distinct ones the memory starts over.
    const KEPT: usize = 64;
    thread_local! {
        static TEXT: std::cell::RefCell<Vec<(Addr, Box<str>)>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let text = |addr: Addr| match addr {
        Addr::Ip(ip) => ip.to_string(),
        Addr::Socket(sa) => sa.to_string(),
    };
    TEXT.with(|kept| {
        let Ok(mut kept) = kept.try_borrow_mut() else { return out.push_str(&text(addr)) };
        if let Some((_, t)) = kept.iter().find(|(a, _)| *a == addr) {
            return out.push_str(t);
        }
        if kept.len() == KEPT {
            kept.clear();
        }
        let t: Box<str> = text(addr).into();
        out.push_str(&t);
        kept.push((addr, t));
    });
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Addr {
    Ip(std::net::IpAddr),
    Socket(SocketAddr),
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        // Dropped unwritten = the request was dropped before an answer: the client closed first.
        self.write(499, 0, false, None);
    }
}

/// One `$upstream_*` variable: a value per attempt, comma-separated; "-" without attempts.
/// Formatted straight into the log line (no string per column).
struct Column<'a>(&'a [AttemptRecord], fn(&AttemptRecord, &mut fmt::Formatter<'_>) -> fmt::Result);

impl fmt::Display for Column<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            (self.1)(a, f)?;
        }
        Ok(())
    }
}

/// Seconds with millisecond resolution ("0.012"), or "-".
struct Secs(Option<Duration>);

impl Secs {
    /// Milliseconds rounded half up, or None on an exact tie, which the float formatting
    /// rounds its own way. Whole seconds and the fraction apart: u128 division (`as_nanos`)
    /// costs more than the rest on the access-log path.
    fn millis(d: Duration) -> Option<u64> {
        let frac = u64::from(d.subsec_nanos());
        (frac % 1_000_000 != 500_000)
            .then(|| d.as_secs().saturating_mul(1000).saturating_add((frac + 500_000) / 1_000_000))
    }
}

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(d) = self.0 else { return f.write_str("-") };
        match Secs::millis(d) {
            Some(ms) => write!(f, "{}.{:03}", ms / 1000, ms % 1000),
            None => write!(f, "{:.3}", d.as_secs_f64()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_as_nginx_writes_them() {
        for nanos in [0, 1, 499_999, 500_000, 500_001, 999_999, 1_000_000, 1_234_567_890, 2_999_500_000, 12_000_499_999]
        {
            let d = Duration::from_nanos(nanos);
            assert_eq!(Secs(Some(d)).to_string(), format!("{:.3}", d.as_secs_f64()), "{nanos} ns");
        }
        assert_eq!(Secs(None).to_string(), "-");
    }

    #[test]
    fn access_fields_written_directly_are_those_tracing_writes() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let ms = |n: u64| Duration::from_micros(n);
        let two = [
            AttemptRecord {
                addr: addr("10.0.0.11:3650"),
                status: Some(502),
                connect: Some(ms(1500)),
                header: None,
                response: ms(2_500),
            },
            AttemptRecord {
                addr: addr("[::1]:8080"),
                status: None,
                connect: None,
                header: Some(ms(12_345_678)),
                response: ms(999_999),
            },
            AttemptRecord {
                addr: addr("192.168.100.255:65535"),
                status: Some(200),
                connect: Some(Duration::from_nanos(2_999_500_000)),
                header: Some(Duration::from_nanos(12_000_499_999)),
                response: Duration::from_nanos(1_000_500_000),
            },
        ];
        let method = Method::from_bytes(b"PROPFIND").unwrap();
        let lines = [
            AccessLine {
                pool: "excp",
                client: "127.0.0.1".parse().unwrap(),
                method: &Method::POST,
                uri: "/api/v1/recording?x=1",
                status: 200,
                bytes: 36,
                ms: 0,
                complete: true,
                attempts: &two[..1],
            },
            AccessLine {
                pool: "exrp",
                client: "::1".parse().unwrap(),
                method: &method,
                uri: "/a\"b\\c\u{7}d é",
                status: 499,
                bytes: u64::MAX,
                ms: 123_456,
                complete: false,
                attempts: &two,
            },
            AccessLine {
                pool: "p",
                client: "10.1.2.3".parse().unwrap(),
                method: &Method::GET,
                uri: "/",
                status: 400,
                bytes: 0,
                ms: 7,
                complete: true,
                attempts: &[],
            },
        ];
        for line in &lines {
            let traced = crate::telemetry::capture_text(true, || line.trace());
            let mut direct = String::new();
            line.push_fields(&mut direct);
            assert_eq!(traced, format!(" INFO access: {direct}\n"));
        }
    }
}
