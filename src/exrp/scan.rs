//! The store scan, every `scan_interval`: lists the collection with our dead properties and
//! (1) takes over jobs another instance recorded on a file but left unlocked for
//! `takeover_after` (it died, or it uploaded and died before the DELETE), and (2) reports the
//! files no job names, the orphans, by age, removing them after `orphan_ttl` when set.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Exrp;
use super::queue::{NewJob, Origin, now_ms};
use super::work::{PROP_DEAD, PROP_DONE, PROP_JOB};
use crate::metrics::Encoder;

/// Orphans by age, as of the last scan.
#[derive(Default)]
pub struct OrphanStats {
    count: AtomicU64,
    bytes: AtomicU64,
    oldest_secs: AtomicU64,
    over_hour: AtomicU64,
    over_day: AtomicU64,
    dead_in_store: AtomicU64,
    last_scan_ms: AtomicU64,
    /// The orphans' names and ages in seconds, as of the last scan, for `trace` (at most
    /// `MAX_NAMED`).
    named: std::sync::Mutex<Vec<(String, u64)>>,
}

/// Orphans `trace` can name; beyond them it only counts.
const MAX_NAMED: usize = 10_000;

impl OrphanStats {
    /// The orphans whose name contains `id`: (name, age in seconds).
    pub fn matching(&self, id: &str) -> Vec<(String, u64)> {
        let named = self.named.lock().unwrap_or_else(|p| p.into_inner());
        named.iter().filter(|(name, _)| name.contains(id)).take(100).cloned().collect()
    }
}

impl OrphanStats {
    pub fn to_json(&self) -> serde_json::Value {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "count": l(&self.count),
            "bytes": l(&self.bytes),
            "oldestSeconds": l(&self.oldest_secs),
            "olderThan1h": l(&self.over_hour),
            "olderThan24h": l(&self.over_day),
            "deadInStore": l(&self.dead_in_store),
            "lastScanMs": l(&self.last_scan_ms),
        })
    }

    pub fn metrics(&self, enc: &mut Encoder<'_>) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        enc.family("exrp_orphans", "Recordings in the store that no job names, by minimum age.", "gauge");
        enc.sample("exrp_orphans", &[("older_than", "0")], l(&self.count));
        enc.sample("exrp_orphans", &[("older_than", "1h")], l(&self.over_hour));
        enc.sample("exrp_orphans", &[("older_than", "24h")], l(&self.over_day));
        enc.gauge("exrp_orphan_bytes", "Bytes the orphans hold in the store.", l(&self.bytes));
        enc.gauge("exrp_orphan_oldest_seconds", "Age of the oldest orphan.", l(&self.oldest_secs));
        enc.gauge(
            "exrp_dead_in_store",
            "Recordings kept in the store because their job is dead.",
            l(&self.dead_in_store),
        );
    }
}

pub async fn run(exrp: Arc<Exrp>, shutdown: CancellationToken) {
    // The first scan waits a little: at start the queue resumes its own work first.
    let mut wait = exrp.config.scan_interval.min(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
        wait = exrp.config.scan_interval;
        if let Err(e) = scan_once(&exrp).await {
            tracing::debug!("store scan skipped: {e}");
        }
    }
}

async fn scan_once(exrp: &Arc<Exrp>) -> Result<(), String> {
    let live = exrp.live();
    let files = live.dav.list().await.map_err(|e| e.to_string())?;
    // Which files without a job record our queue knows (accepted, not yet published): one
    // blocking task for the whole listing, not one per file.
    let unrecorded: Vec<String> =
        files.iter().filter(|f| !f.props.contains_key(PROP_JOB)).map(|f| f.name.clone()).collect();
    let known = exrp.queue.run(move |q| q.known_files(unrecorded)).await.map_err(|e| e.to_string())?;
    let now = now_ms();
    let now_sys = SystemTime::now();
    let takeover_ms = exrp.config.takeover_after.as_millis() as u64;
    let mut takeovers = Vec::new();
    let (mut count, mut bytes, mut oldest, mut over_hour, mut over_day, mut dead) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut named = Vec::new();
    for file in files {
        if file.props.contains_key(PROP_DEAD) {
            dead += 1;
            continue;
        }
        if let Some(record) = file.props.get(PROP_JOB) {
            if file.locked {
                continue;
            }
            let Some(job) = job_from_record(record, &file.name) else {
                tracing::warn!(file = %file.name, "unreadable job record on the file; left alone");
                continue;
            };
            // The modification time moves with every PROPPATCH on some stores; acceptedAt is ours.
            let age = now.saturating_sub(job.accepted_at_ms);
            if age >= takeover_ms || file.props.contains_key(PROP_DONE) && age >= takeover_ms / 2 {
                takeovers.push(job);
            }
            continue;
        }
        if known.contains(&file.name) {
            continue;
        }
        let age = file.modified.and_then(|m| now_sys.duration_since(m).ok()).unwrap_or_default();
        count += 1;
        bytes += file.size;
        oldest = oldest.max(age.as_secs());
        over_hour += (age >= Duration::from_secs(3600)) as u64;
        over_day += (age >= Duration::from_secs(86_400)) as u64;
        if named.len() < MAX_NAMED {
            named.push((file.name.clone(), age.as_secs()));
        }
        if let Some(ttl) = exrp.config.orphan_ttl
            && age >= ttl
            && !file.locked
        {
            match live.dav.delete(&file.name, None).await {
                Ok(_) => {
                    exrp.metrics.orphans_removed.inc();
                    count -= 1;
                    bytes -= file.size;
                    named.retain(|(name, _)| *name != file.name);
                    tracing::warn!(
                        file = %file.name,
                        bytes = file.size,
                        age_s = age.as_secs(),
                        "orphan recording removed: no job named it within orphan_ttl"
                    );
                }
                Err(e) => tracing::warn!(file = %file.name, "cannot remove an orphan: {e}"),
            }
        }
    }
    let s = &exrp.orphans;
    s.count.store(count, Ordering::Relaxed);
    s.bytes.store(bytes, Ordering::Relaxed);
    s.oldest_secs.store(oldest, Ordering::Relaxed);
    s.over_hour.store(over_hour, Ordering::Relaxed);
    s.over_day.store(over_day, Ordering::Relaxed);
    s.dead_in_store.store(dead, Ordering::Relaxed);
    s.last_scan_ms.store(now, Ordering::Relaxed);
    *s.named.lock().unwrap_or_else(|p| p.into_inner()) = named;
    if !takeovers.is_empty() {
        let jobs = takeovers.clone();
        let added = exrp.queue.run(move |q| q.add(&jobs, Origin::Scan, true, None)).await.map_err(|e| e.to_string())?;
        if added.new > 0 {
            exrp.metrics.takeovers.add(added.new as u64);
            tracing::info!(jobs = added.new, "took over jobs other instances left in the store");
            exrp.wake.notify_one();
        }
    }
    Ok(())
}

/// The job a `job` property describes (written by `work::job_record`).
fn job_from_record(record: &str, file: &str) -> Option<NewJob> {
    let v: serde_json::Value = serde_json::from_str(record).ok()?;
    let text = |k: &str| v.get(k).and_then(serde_json::Value::as_str).map(str::to_owned);
    let accepted_at_ms = v.get("acceptedAt").and_then(serde_json::Value::as_u64)?;
    let mut spec = v.clone();
    if let Some(obj) = spec.as_object_mut() {
        obj.remove("acceptedAt");
        obj.remove("acceptedBy");
    }
    Some(NewJob {
        call_uuid: text("callUUID")?,
        media_id: text("mediaId")?,
        // The file it sits on, whatever the record says.
        file: file.to_string(),
        tenant: text("tenant").unwrap_or_else(|| "Environment".into()),
        spec: spec.to_string(),
        accepted_at_ms,
    })
}
