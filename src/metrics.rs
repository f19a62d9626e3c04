//! Prometheus text-format metrics: a few lock-light primitives and an encoder.
//! Each role owns its metrics struct and writes it out when `/metrics` is scraped.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters keyed by label values, e.g. (method, status).
#[derive(Debug, Default)]
pub struct CounterVec(Mutex<BTreeMap<Vec<String>, u64>>);

impl CounterVec {
    pub fn inc(&self, labels: &[&str]) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Label sets are few: find the existing one without allocating a key.
        if let Some((_, n)) = map.iter_mut().find(|(k, _)| k.iter().map(String::as_str).eq(labels.iter().copied())) {
            *n += 1;
            return;
        }
        map.insert(labels.iter().map(|s| s.to_string()).collect(), 1);
    }
    /// The count of one label set (0 when never counted).
    pub fn get(&self, labels: &[&str]) -> u64 {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().find(|(k, _)| k.iter().map(String::as_str).eq(labels.iter().copied())).map_or(0, |(_, n)| *n)
    }

    pub fn snapshot(&self) -> Vec<(Vec<String>, u64)> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Counters per HTTP status code (100..=599), lock-free, for per-request hot paths.
pub struct StatusCounts(Box<[AtomicU64]>);

impl Default for StatusCounts {
    fn default() -> Self {
        StatusCounts((100..600).map(|_| AtomicU64::new(0)).collect())
    }
}

impl StatusCounts {
    pub fn inc(&self, status: u16) {
        if let Some(c) = (status as usize).checked_sub(100).and_then(|i| self.0.get(i)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (status, count) for every status seen.
    pub fn snapshot(&self) -> Vec<(u16, u64)> {
        self.0
            .iter()
            .enumerate()
            .map(|(i, c)| (i as u16 + 100, c.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// Latency buckets in seconds, from 1 ms to 60 s.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 60.0];

/// Latency histograms keyed by label values, each a `Histogram`.
#[derive(Debug, Default)]
pub struct HistogramVec(Mutex<BTreeMap<Vec<String>, std::sync::Arc<Histogram>>>);

impl HistogramVec {
    pub fn observe(&self, labels: &[&str], elapsed: Duration) {
        let h = {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(labels.iter().map(|s| s.to_string()).collect()).or_default().clone()
        };
        h.observe(elapsed);
    }
}

/// A latency histogram without labels, lock-free, for hot paths that keep one per peer.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Writes metric families in the Prometheus text exposition format (version 0.0.4).
pub struct Encoder<'a> {
    out: &'a mut String,
}

impl<'a> Encoder<'a> {
    pub fn new(out: &'a mut String) -> Self {
        Encoder { out }
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, help, "counter");
        let _ = writeln!(self.out, "{name} {value}");
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, help, "gauge");
        let _ = writeln!(self.out, "{name} {}", Value(value));
    }

    pub fn counter_vec(&mut self, name: &str, help: &str, label_names: &[&str], vec: &CounterVec) {
        self.header(name, help, "counter");
        for (values, n) in vec.snapshot() {
            let labels = labels_text(label_names, &values, None);
            let _ = writeln!(self.out, "{name}{{{labels}}} {n}");
        }
    }

    /// Starts a family whose samples follow through `sample` / `histogram`.
    pub fn family(&mut self, name: &str, help: &str, kind: &str) {
        self.header(name, help, kind);
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let (names, values): (Vec<&str>, Vec<String>) = labels.iter().map(|(n, v)| (*n, v.to_string())).unzip();
        let labels = labels_text(&names, &values, None);
        let _ = writeln!(self.out, "{name}{{{labels}}} {}", Value(value));
    }

    /// The samples of one labelled `Histogram` (the family header is written by `family`).
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let (names, values): (Vec<&str>, Vec<String>) = labels.iter().map(|(n, v)| (*n, v.to_string())).unzip();
        self.histogram_samples(name, &names, &values, h);
    }

    pub fn histogram_vec(&mut self, name: &str, help: &str, label_names: &[&str], vec: &HistogramVec) {
        self.header(name, help, "histogram");
        let map = vec.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (values, h) in map {
            self.histogram_samples(name, label_names, &values, &h);
        }
    }

    /// Cumulative buckets up to `+Inf` (= the count), the sum and the count.
    fn histogram_samples(&mut self, name: &str, names: &[&str], values: &[String], h: &Histogram) {
        let count = h.count.load(Ordering::Relaxed);
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            // Never above the count, which a concurrent observe may not have raised yet.
            cumulative = (cumulative + h.counts[i].load(Ordering::Relaxed)).min(count);
            let l = labels_text(names, values, Some(&bound.to_string()));
            let _ = writeln!(self.out, "{name}_bucket{{{l}}} {cumulative}");
        }
        let inf = labels_text(names, values, Some("+Inf"));
        let plain = labels_text(names, values, None);
        let _ = writeln!(self.out, "{name}_bucket{{{inf}}} {count}");
        let _ = writeln!(self.out, "{name}_sum{{{plain}}} {}", h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(self.out, "{name}_count{{{plain}}} {count}");
    }
}

/// A sample value as the text format spells it: Rust writes `inf` and `NaN` its own way.
struct Value(f64);

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            v if v.is_nan() => f.write_str("NaN"),
            v if v == f64::INFINITY => f.write_str("+Inf"),
            v if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            v => write!(f, "{v}"),
        }
    }
}

fn labels_text(names: &[&str], values: &[String], le: Option<&str>) -> String {
    let mut out = String::new();
    for (name, value) in names.iter().zip(values) {
        if !out.is_empty() {
            out.push(',');
        }
        let value = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        let _ = write!(out, "{name}=\"{value}\"");
    }
    if let Some(le) = le {
        if !out.is_empty() {
            out.push(',');
        }
        let _ = write!(out, "le=\"{le}\"");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format() {
        let requests = CounterVec::default();
        requests.inc(&["GET", "200"]);
        requests.inc(&["GET", "200"]);
        let latency = HistogramVec::default();
        latency.observe(&["GET"], Duration::from_millis(3));
        let mut out = String::new();
        let mut enc = Encoder::new(&mut out);
        enc.counter_vec("x_requests_total", "Requests.", &["method", "status"], &requests);
        enc.histogram_vec("x_seconds", "Latency.", &["method"], &latency);
        assert!(out.contains("x_requests_total{method=\"GET\",status=\"200\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{method=\"GET\",le=\"0.0025\"} 0\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{method=\"GET\",le=\"0.005\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_count{method=\"GET\"} 1\n"), "{out}");
    }

    #[test]
    fn both_histograms_write_the_same_cumulative_buckets_and_values_are_spelt_as_the_format_wants() {
        let one = Histogram::default();
        let vec = HistogramVec::default();
        for ms in [3, 3, 40, 70_000] {
            one.observe(Duration::from_millis(ms));
            vec.observe(&["p"], Duration::from_millis(ms));
        }
        let (mut a, mut b) = (String::new(), String::new());
        let mut enc = Encoder::new(&mut a);
        enc.family("h", "Latency.", "histogram");
        enc.histogram("h", &[("l", "p")], &one);
        Encoder::new(&mut b).histogram_vec("h", "Latency.", &["l"], &vec);
        assert_eq!(a, b);
        assert!(a.contains("h_bucket{l=\"p\",le=\"0.005\"} 2\n"), "{a}");
        assert!(a.contains("h_bucket{l=\"p\",le=\"0.05\"} 3\n"), "{a}");
        assert!(a.contains("h_bucket{l=\"p\",le=\"60\"} 3\n"), "{a}");
        assert!(a.contains("h_bucket{l=\"p\",le=\"+Inf\"} 4\n"), "{a}");
        assert!(a.contains("h_sum{l=\"p\"} 70.046\n"), "{a}");

        let mut out = String::new();
        let mut enc = Encoder::new(&mut out);
        enc.gauge("g", "A \\ and a\nnewline.", f64::INFINITY);
        enc.family("s", "S.", "gauge");
        enc.sample("s", &[("k", "a\"b\\c\nd")], f64::NAN);
        assert_eq!(
            out,
            "# HELP g A \\\\ and a\\nnewline.\n# TYPE g gauge\ng +Inf\n# HELP s S.\n# TYPE s gauge\ns{k=\"a\\\"b\\\\c\\nd\"} NaN\n"
        );
    }
}
