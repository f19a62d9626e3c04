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

#[derive(Debug, Default, Clone)]
struct HistogramData {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Latency histograms keyed by label values.
#[derive(Debug, Default)]
pub struct HistogramVec(Mutex<BTreeMap<Vec<String>, HistogramData>>);

impl HistogramVec {
    pub fn observe(&self, labels: &[&str], elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let h = map.entry(labels.iter().map(|s| s.to_string()).collect()).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
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
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, help, "counter");
        let _ = writeln!(self.out, "{name} {value}");
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, help, "gauge");
        let _ = writeln!(self.out, "{name} {value}");
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
        let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
    }

    /// The samples of one labelled `Histogram` (the family header is written by `family`).
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let (names, values): (Vec<&str>, Vec<String>) = labels.iter().map(|(n, v)| (*n, v.to_string())).unzip();
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += h.counts[i].load(Ordering::Relaxed);
            let l = labels_text(&names, &values, Some(&bound.to_string()));
            let _ = writeln!(self.out, "{name}_bucket{{{l}}} {cumulative}");
        }
        let count = h.count.load(Ordering::Relaxed);
        let inf = labels_text(&names, &values, Some("+Inf"));
        let plain = labels_text(&names, &values, None);
        let _ = writeln!(self.out, "{name}_bucket{{{inf}}} {count}");
        let _ = writeln!(self.out, "{name}_sum{{{plain}}} {}", h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(self.out, "{name}_count{{{plain}}} {count}");
    }

    pub fn histogram_vec(&mut self, name: &str, help: &str, label_names: &[&str], vec: &HistogramVec) {
        self.header(name, help, "histogram");
        let map = vec.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (values, h) in map {
            for (i, bound) in BUCKETS.iter().enumerate() {
                let labels = labels_text(label_names, &values, Some(&bound.to_string()));
                let _ = writeln!(self.out, "{name}_bucket{{{labels}}} {}", h.counts[i]);
            }
            let inf = labels_text(label_names, &values, Some("+Inf"));
            let plain = labels_text(label_names, &values, None);
            let _ = writeln!(self.out, "{name}_bucket{{{inf}}} {}", h.count);
            let _ = writeln!(self.out, "{name}_sum{{{plain}}} {}", h.sum);
            let _ = writeln!(self.out, "{name}_count{{{plain}}} {}", h.count);
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
}
