//! Logging: tracing to stderr (stdout is reserved for the READY line), text or JSON.
//! `RUST_LOG` overrides the default filter; the Genesys `.env` variable `EXRP_LOG_LEVEL` is
//! honoured when `RUST_LOG` is not set. The last warnings and errors are also kept in memory
//! (`recent_problems`) for the status page.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};

/// Installs the subscriber: one JSON object per line when `json`, else text.
pub fn init(json: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level()));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests calling into the library twice) is harmless; ignore it.
    let installed = if json {
        builder.json().flatten_event(true).finish().with(RecentProblems).try_init()
    } else {
        builder.with_ansi(false).fmt_fields(PlainFields).finish().with(RecentProblems).try_init()
    };
    if installed.is_ok() && !json {
        TEXT_ACCESS.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Set once the text subscriber is installed: access lines may then be written by
/// `write_access_line` instead of going through tracing's formatter.
static TEXT_ACCESS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether an access-log line should be written with `write_access_line`: the text format is
/// in use and the filter lets the `access` target through at INFO. Otherwise (JSON, tests
/// without our subscriber) the caller logs through tracing.
pub fn fast_access_log() -> bool {
    TEXT_ACCESS.load(std::sync::atomic::Ordering::Relaxed) && tracing::enabled!(target: "access", tracing::Level::INFO)
}

/// Writes one INFO line of the `access` target to stderr, byte for byte as the text subscriber
/// formats it (`<RFC 3339 µs timestamp>  INFO access: <fields>`), with the fields written by
/// `fields`. A proxy writes one such line per request: through tracing's formatter that was a
/// fifth of the lb's instructions per request (callgrind), written directly a small fraction.
pub fn write_access_line(fields: impl FnOnce(&mut String)) {
    thread_local! {
        static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    LINE.with(|line| {
        let Ok(mut line) = line.try_borrow_mut() else { return };
        line.clear();
        push_timestamp_cached(&mut line, std::time::SystemTime::now());
        line.push_str("  INFO access: ");
        fields(&mut line);
        line.push('\n');
        write_line(line.as_bytes());
    });
}

/// Writes a whole line to stderr with write(2) calls of its own, not under std's stderr lock:
/// lb workers log a line per request each, and the lock made them wait for one another (a
/// futex call every few requests at c=64). One write of a line is as atomic as the locked
/// one was; nginx's workers write their access log the same way.
fn write_line(mut line: &[u8]) {
    use std::os::fd::AsFd as _;
    let stderr = std::io::stderr();
    while !line.is_empty() {
        match rustix::io::write(stderr.as_fd(), line) {
            Ok(0) => return,
            Ok(n) => line = &line[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

/// An error with its whole chain of causes, "a: b: c" (reqwest's own text is only "error
/// sending request").
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Unix ms as `2026-12-01T23:40:21.483312Z` (the log's format), for texts that name a time.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let mut out = String::with_capacity(27);
    push_timestamp(&mut out, std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms));
    out
}

/// `2026-12-01T23:40:21.483312Z`, as tracing-subscriber's `SystemTime` timer writes it.
fn push_timestamp(out: &mut String, now: std::time::SystemTime) {
    let since = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since the epoch to a proleptic Gregorian date (Howard Hinnant's civil_from_days).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    push_digits(out, year.max(0) as u64, 4);
    out.push('-');
    push_digits(out, month as u64, 2);
    out.push('-');
    push_digits(out, day as u64, 2);
    out.push('T');
    push_digits(out, rem / 3600, 2);
    out.push(':');
    push_digits(out, rem / 60 % 60, 2);
    out.push(':');
    push_digits(out, rem % 60, 2);
    out.push('.');
    push_digits(out, u64::from(since.subsec_micros()), 6);
    out.push('Z');
}

/// `push_timestamp` with the part up to the seconds kept per thread: it changes once a second,
/// and a proxy writes a line per request (nginx caches its log time the same way).
fn push_timestamp_cached(out: &mut String, now: std::time::SystemTime) {
    thread_local! {
        /// The second the prefix is for, and `YYYY-MM-DDTHH:MM:SS.` of it.
        static PREFIX: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let since = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let done = PREFIX.with(|prefix| {
        let Ok(mut prefix) = prefix.try_borrow_mut() else { return false };
        let (second, text) = &mut *prefix;
        if *second != since.as_secs() {
            text.clear();
            push_timestamp(text, std::time::UNIX_EPOCH + std::time::Duration::from_secs(since.as_secs()));
            text.truncate(text.len() - "000000Z".len());
            *second = since.as_secs();
        }
        out.push_str(text);
        true
    });
    if !done {
        return push_timestamp(out, now);
    }
    push_digits(out, u64::from(since.subsec_micros()), 6);
    out.push('Z');
}

/// `n` in decimal, zero-padded to at least `width` digits.
pub fn push_digits(out: &mut String, mut n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    while n > 0 || buf.len() - i < width.max(1) {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    // A byte at a time: these are a few digits, where a copy call costs more than the loop.
    out.reserve(buf.len() - i);
    for &digit in &buf[i..] {
        out.push(char::from(digit));
    }
}

/// How many warnings and errors the status page can show.
const RECENT_PROBLEMS: usize = 50;

/// One warning or error as the status page shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    /// Unix time in milliseconds.
    pub at: u64,
    pub level: &'static str,
    /// The role (or plumbing module) that logged it: `exrp`, `lb`, `http`…
    pub source: String,
    /// The message followed by its fields, `key=value`, as the text log writes them.
    pub text: String,
}

static PROBLEMS: std::sync::Mutex<std::collections::VecDeque<Problem>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

/// The last warnings and errors this process logged, newest first.
pub fn recent_problems() -> Vec<Problem> {
    let problems = PROBLEMS.lock().unwrap_or_else(|p| p.into_inner());
    problems.iter().rev().cloned().collect()
}

/// Keeps the last `RECENT_PROBLEMS` warnings and errors. Runs after the filter, so a
/// `RUST_LOG=error` process keeps only errors.
struct RecentProblems;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RecentProblems {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let level = *event.metadata().level();
        if level > tracing::Level::WARN {
            return;
        }
        let mut text = String::new();
        let _ = PlainFields.format_fields(Writer::new(&mut text), event);
        // A client-controlled value (a path, a reason from a peer) must not flood the page.
        if text.len() > 1000 {
            let mut cut = 1000;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        let target = event.metadata().target();
        let source = target.strip_prefix("exec_allinone::").unwrap_or(target);
        let source = source.split("::").next().unwrap_or(source).to_string();
        let at = crate::clock::unix_ms();
        let problem =
            Problem { at, level: if level == tracing::Level::ERROR { "error" } else { "warn" }, source, text };
        let mut problems = PROBLEMS.lock().unwrap_or_else(|p| p.into_inner());
        if problems.len() == RECENT_PROBLEMS {
            problems.pop_front();
        }
        problems.push_back(problem);
    }
}

/// `EXRP_LOG_LEVEL` takes trace, debug, info, warn, error or fatal (which logs errors).
fn default_level() -> &'static str {
    match std::env::var("EXRP_LOG_LEVEL").map(|l| l.trim().to_ascii_lowercase()).as_deref() {
        Ok("trace") => "trace",
        Ok("debug") => "debug",
        Ok("warn" | "warning") => "warn",
        Ok("error" | "fatal") => "error",
        _ => "info",
    }
}

/// tracing-subscriber's `DefaultFields` text without ANSI styling, written with fewer layers
/// of formatting: the same bytes (see the test), about half the instructions for the access
/// log's fifteen fields per request. Messages, `r#` names and errors go through
/// `DefaultVisitor` itself.
pub struct PlainFields;

impl<'writer> FormatFields<'writer> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = PlainVisitor { writer, is_empty: true, result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct PlainVisitor<'a> {
    writer: Writer<'a>,
    is_empty: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    fn delegate(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut inner = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut inner);
        self.result = inner.finish();
        self.is_empty = false;
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.delegate(|v| v.record_str(field, value));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.delegate(|v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if name.starts_with("log.") {
            // log metadata, already written by the event formatter
            return;
        }
        if name == "message" || name.starts_with("r#") {
            self.delegate(|v| v.record_debug(field, value));
            return;
        }
        if self.result.is_err() {
            return;
        }
        let w = &mut self.writer;
        let pad = if std::mem::replace(&mut self.is_empty, false) { "" } else { " " };
        self.result = w.write_str(pad).and_then(|()| w.write_str(name)).and_then(|()| write!(w, "={value:?}"));
    }
}

/// Escapes control characters so a client cannot forge log lines through a path or a name.
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out.into()
}

/// What `events` log in the text format without timestamps, with `PlainFields` or with
/// tracing-subscriber's `DefaultFields`, for tests that compare formatters.
#[cfg(test)]
pub(crate) fn capture_text(plain: bool, events: impl Fn()) -> String {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let base = tracing_subscriber::fmt()
        .with_ansi(false)
        .without_time()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone());
    if plain {
        tracing::subscriber::with_default(base.fmt_fields(PlainFields).finish(), events);
    } else {
        tracing::subscriber::with_default(base.finish(), events);
    }
    let bytes = buf.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {

    #[test]
    fn timestamps_and_digits_are_written_as_the_text_subscriber_writes_them() {
        let at = |micros: u64| {
            let mut s = String::new();
            super::push_timestamp(&mut s, std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros));
            s
        };
        assert_eq!(at(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
        assert_eq!(at(1_796_082_021_483_312), "2026-11-30T23:40:21.483312Z");
        assert_eq!(at(4_102_444_799_999_999), "2099-12-31T23:59:59.999999Z");
        // The cached form: within a second, across one, and back (a clock step).
        for micros in [1_796_082_021_483_312, 1_796_082_021_000_001, 1_796_082_022_999_999, 0, 1_796_082_021_483_312] {
            let mut cached = String::new();
            super::push_timestamp_cached(&mut cached, std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros));
            assert_eq!(cached, at(micros));
        }
        let digits = |n: u64, w: usize| {
            let mut s = String::new();
            super::push_digits(&mut s, n, w);
            s
        };
        assert_eq!(digits(0, 1), "0");
        assert_eq!(digits(0, 3), "000");
        assert_eq!(digits(42, 1), "42");
        assert_eq!(digits(u64::MAX, 1), u64::MAX.to_string());
    }

    /// Formats the same events with `DefaultFields` and with `PlainFields`.
    fn both(events: impl Fn()) -> (String, String) {
        let default = super::capture_text(false, &events);
        (default, super::capture_text(true, &events))
    }

    #[test]
    fn plain_fields_write_what_default_fields_write() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer \u{1b}[31m")]
        struct Outer(#[source] std::io::Error);
        let (default, plain) = both(|| {
            let io = std::io::Error::other("inner");
            let outer = Outer(std::io::Error::other("cause"));
            let r#type = "raw";
            tracing::info!(target: "access", pool = %"p", status = 200u16, bytes = 17u64, neg = -3i64, ok = true, f = 1.5, s = "str \"q\"", d = ?Some(3), "");
            tracing::info!(a = 1, "message with {} and \u{1b}[1m", "args");
            tracing::warn!(err = %io, e = &io as &dyn std::error::Error, "x");
            tracing::error!(e = &outer as &dyn std::error::Error, r#type, "y");
            tracing::debug!(only = "field");
            tracing::debug!("only message");
            let span = tracing::info_span!("req", id = 7, path = "/a");
            let _g = span.enter();
            tracing::info!(in_span = true);
        });
        assert!(default.lines().count() >= 7, "{default}");
        assert_eq!(plain, default);
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(super::escape("/a b"), "/a b");
        assert_eq!(super::escape("/a\nGET /x 200"), "/a\\nGET /x 200");
        assert_eq!(super::escape("\u{1b}[31m\"q\""), "\\u{1b}[31m\\\"q\\\"");
    }
}
