//! The status page's history: every `interval` each role's trend figures are sampled into a
//! ring per series (a day of minutes by default), kept in memory with a fixed bound, and served
//! as JSON for the page's charts and for scripts. Counters become the change per interval;
//! gauges are kept as read.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::http::admin::RoleStatus;

/// Samples a ring keeps: a day at the default one-minute interval.
pub const RING: usize = 1440;
/// Series at most (lb pools and queue states are few; a bound all the same).
const MAX_SERIES: usize = 64;

/// The charts the page draws, in its order: (id, title, unit of the values).
pub const CHARTS: &[(&str, &str, &str)] = &[
    ("recordings", "Recordings per interval", "recordings"),
    ("queue", "exrp queue by state", "jobs"),
    ("backlog", "excp backlog", "count"),
    ("store", "Store use against quota", "bytes"),
    ("lb_requests", "lb requests per interval, by pool", "requests"),
    ("lb_5xx", "lb 5xx answers per interval, by pool", "answers"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A running total: the ring keeps its change per interval.
    Counter,
    /// A level, kept as read.
    Gauge,
}

/// One figure a role offers for its trends.
#[derive(Debug, Clone)]
pub struct Sample {
    /// One of `CHARTS`.
    pub chart: &'static str,
    /// The line in that chart ("accepted", a pool's name, a queue state).
    pub series: String,
    pub kind: Kind,
    pub value: f64,
}

impl Sample {
    pub fn counter(chart: &'static str, series: impl Into<String>, value: u64) -> Sample {
        Sample { chart, series: series.into(), kind: Kind::Counter, value: value as f64 }
    }

    pub fn gauge(chart: &'static str, series: impl Into<String>, value: f64) -> Sample {
        Sample { chart, series: series.into(), kind: Kind::Gauge, value }
    }
}

struct Series {
    kind: Kind,
    /// The counter's total at the last sample.
    last_total: Option<f64>,
    /// Oldest first; None where the series had no value (before it existed, a counter's
    /// first sample, a reset).
    ring: VecDeque<Option<f64>>,
}

struct Rings {
    series: BTreeMap<(&'static str, String), Series>,
    /// Samples taken, and the Unix ms of the last.
    taken: u64,
    last_ms: u64,
}

/// The rings of one process.
pub struct Trends {
    interval: Duration,
    capacity: usize,
    rings: Mutex<Rings>,
}

impl Trends {
    pub fn new(interval: Duration, capacity: usize) -> Trends {
        Trends {
            interval,
            capacity: capacity.max(2),
            rings: Mutex::new(Rings { series: BTreeMap::new(), taken: 0, last_ms: 0 }),
        }
    }

    /// Takes one sample of every role's figures.
    pub fn sample(&self, roles: &[Arc<dyn RoleStatus>], now_ms: u64) {
        let mut samples = Vec::new();
        for role in roles {
            role.trends(&mut samples);
        }
        self.record(&samples, now_ms);
    }

    fn record(&self, samples: &[Sample], now_ms: u64) {
        let mut rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        let (taken, capacity) = (rings.taken, self.capacity);
        let mut fresh = std::collections::BTreeSet::new();
        for s in samples {
            let key = (s.chart, s.series.clone());
            if !rings.series.contains_key(&key) {
                if rings.series.len() >= MAX_SERIES {
                    continue;
                }
                // A series that appears later starts with the gaps it was not there for.
                let gaps = taken.min(capacity as u64 - 1) as usize;
                let series = Series { kind: s.kind, last_total: None, ring: std::iter::repeat_n(None, gaps).collect() };
                rings.series.insert(key.clone(), series);
            }
            let series = rings.series.get_mut(&key).expect("inserted above");
            let value = match s.kind {
                Kind::Gauge => Some(s.value),
                Kind::Counter => {
                    let delta = series.last_total.filter(|last| s.value >= *last).map(|last| s.value - last);
                    series.last_total = Some(s.value);
                    delta
                }
            };
            if series.ring.len() == capacity {
                series.ring.pop_front();
            }
            series.ring.push_back(value);
            fresh.insert(key);
        }
        // A series no role offered this time (its role is gone) gets a gap.
        for (key, series) in rings.series.iter_mut() {
            if !fresh.contains(key) {
                if series.ring.len() == capacity {
                    series.ring.pop_front();
                }
                series.ring.push_back(None);
            }
        }
        rings.taken += 1;
        rings.last_ms = now_ms;
    }

    /// What `/api/trends` serves: every ring, oldest value first, the last one taken at `end`.
    pub fn json(&self) -> Value {
        let rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        let series: Vec<Value> = rings
            .series
            .iter()
            .map(|((chart, name), s)| {
                json!({
                    "chart": chart,
                    "name": name,
                    "kind": match s.kind { Kind::Counter => "counter", Kind::Gauge => "gauge" },
                    "values": s.ring.iter().map(|v| v.filter(|v| v.is_finite())).collect::<Vec<_>>(),
                })
            })
            .collect();
        let charts: Vec<Value> = CHARTS
            .iter()
            .filter(|(id, ..)| rings.series.keys().any(|(chart, _)| chart == id))
            .map(|(id, title, unit)| json!({"id": id, "title": title, "unit": unit}))
            .collect();
        json!({
            "intervalSeconds": self.interval.as_secs_f64(),
            "capacity": self.capacity,
            "samples": rings.taken,
            "end": rings.last_ms,
            "charts": charts,
            "series": series,
        })
    }
}

/// Samples every `interval` until `shutdown`; the first sample at once.
pub async fn run(trends: Arc<Trends>, roles: Arc<Vec<Arc<dyn RoleStatus>>>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(trends.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => trends.sample(&roles, crate::clock::unix_ms()),
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Trends, chart: &str, name: &str) -> Vec<Value> {
        let json = t.json();
        let s = json["series"].as_array().unwrap().iter().find(|s| s["chart"] == chart && s["name"] == name).cloned();
        s.map(|s| s["values"].as_array().unwrap().clone()).unwrap_or_default()
    }

    #[test]
    fn counters_become_changes_and_gauges_stay_as_read() {
        let t = Trends::new(Duration::from_secs(60), 4);
        for (i, (total, level)) in [(10, 1.0), (15, 2.0), (15, 0.0), (3, 5.0), (9, 4.5)].into_iter().enumerate() {
            t.record(
                &[Sample::counter("recordings", "accepted", total), Sample::gauge("queue", "pending", level)],
                1000 * i as u64,
            );
        }
        // Four kept of five; the reset (15 → 3) is a gap, not a negative rate.
        assert_eq!(values(&t, "recordings", "accepted"), vec![json!(5.0), json!(0.0), Value::Null, json!(6.0)]);
        assert_eq!(values(&t, "queue", "pending"), vec![json!(2.0), json!(0.0), json!(5.0), json!(4.5)]);
        let json = t.json();
        assert_eq!((json["samples"].as_u64(), json["end"].as_u64()), (Some(5), Some(4000)));
        let charts: Vec<&str> = json["charts"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
        assert_eq!(charts, ["recordings", "queue"]);
    }

    #[test]
    fn a_late_series_starts_with_gaps_and_a_missing_one_gets_them() {
        let t = Trends::new(Duration::from_secs(1), 3);
        t.record(&[Sample::gauge("queue", "pending", 1.0)], 1);
        t.record(&[Sample::gauge("queue", "pending", 2.0), Sample::gauge("queue", "dead", 7.0)], 2);
        t.record(&[Sample::gauge("queue", "dead", 8.0)], 3);
        assert_eq!(values(&t, "queue", "pending"), vec![json!(1.0), json!(2.0), Value::Null]);
        assert_eq!(values(&t, "queue", "dead"), vec![Value::Null, json!(7.0), json!(8.0)]);
        // Every ring is as long as the samples taken, up to the capacity.
        t.record(&[], 4);
        for s in t.json()["series"].as_array().unwrap() {
            assert_eq!(s["values"].as_array().unwrap().len(), 3);
        }
    }

    #[test]
    fn the_number_of_series_is_bounded() {
        let t = Trends::new(Duration::from_secs(1), 2);
        let many: Vec<Sample> = (0..200).map(|i| Sample::gauge("lb_requests", format!("pool{i}"), 1.0)).collect();
        t.record(&many, 1);
        assert_eq!(t.json()["series"].as_array().unwrap().len(), MAX_SERIES);
    }
}
