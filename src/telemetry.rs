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

use crate::cli::LogFormat;

pub fn init(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level()));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests calling into the library twice) is harmless; ignore it.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).fmt_fields(PlainFields).finish().with(RecentProblems).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).finish().with(RecentProblems).try_init(),
    };
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
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// Formats the same events with `DefaultFields` and with `PlainFields`.
    fn both(events: impl Fn()) -> (String, String) {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (a, b) = (Buf::default(), Buf::default());
        let (wa, wb) = (a.clone(), b.clone());
        let base = || tracing_subscriber::fmt().with_ansi(false).without_time().with_max_level(tracing::Level::TRACE);
        tracing::subscriber::with_default(base().with_writer(move || wa.clone()).finish(), &events);
        let plain = base().with_writer(move || wb.clone()).fmt_fields(super::PlainFields).finish();
        tracing::subscriber::with_default(plain, &events);
        let text = |b: Buf| String::from_utf8(b.0.lock().unwrap().clone()).unwrap();
        (text(a), text(b))
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
