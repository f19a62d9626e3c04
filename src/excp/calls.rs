//! Per-call state: the recordings accepted for each call, when and why the call ended, which
//! recordings exrp has accepted, and (GIR mode) when metadata is fetched. One durable record per
//! call, in the state directory or (`[excp.s3]`) in a bucket other instances read; every change
//! is written before it is acknowledged, so a kill -9 loses nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ingest::MediaFile;
use crate::durable::RecordDir;
use crate::s3::records::BucketRecords;

pub use crate::clock::unix_ms as now_ms;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Call {
    pub call_uuid: String,
    pub first_seen_ms: u64,
    pub last_update_ms: u64,
    #[serde(default)]
    pub ended: Option<Ended>,
    #[serde(default)]
    pub recordings: Vec<Recording>,
    #[serde(default)]
    pub gir: Option<GirFetch>,
    /// GIR mode: the call's files as the store watch saw them (`<CallUUID>_…`), to name each
    /// RWS media file as the store holds it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub store_files: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ended {
    pub at_ms: u64,
    /// "event" (end request), "quiet" (no metadata for the quiet period) or "gir".
    pub reason: String,
    /// The corrId of the request that ended the call (or a new one for a quiet end).
    pub corr_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recording {
    pub media_id: String,
    pub metadata: Value,
    #[serde(default)]
    pub call: Option<Value>,
    pub received_ms: u64,
    #[serde(default)]
    pub delivered: bool,
    /// The corrId of the metadata POST that brought it (none for GIR fetches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corr_id: Option<String>,
    /// When exrp accepted it, and the interaction-end's corrId.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_corr_id: Option<String>,
}

/// GIR mode: metadata is fetched from RWS on the `gir_metadata_fetch_*` schedule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GirFetch {
    pub next_ms: u64,
    pub deadline_ms: u64,
    pub attempts: u32,
}

impl Call {
    fn new(call_uuid: &str, now: u64) -> Call {
        Call {
            call_uuid: call_uuid.to_string(),
            first_seen_ms: now,
            last_update_ms: now,
            ended: None,
            recordings: Vec::new(),
            gir: None,
            store_files: Vec::new(),
        }
    }

    pub fn pending(&self) -> impl Iterator<Item = &Recording> {
        self.recordings.iter().filter(|r| !r.delivered)
    }
}

/// One call from two instances' shares: every recording once (delivered if either delivered
/// it), ended if either ended it, the earliest first sighting and the latest update.
pub fn merge(ours: &Call, theirs: Call) -> Call {
    let mut call = ours.clone();
    call.first_seen_ms = call.first_seen_ms.min(theirs.first_seen_ms);
    call.last_update_ms = call.last_update_ms.max(theirs.last_update_ms);
    if call.ended.is_none() {
        call.ended = theirs.ended;
    }
    if call.gir.is_none() {
        call.gir = theirs.gir;
    }
    for r in theirs.recordings {
        match call.recordings.iter_mut().find(|m| m.media_id == r.media_id) {
            Some(mine) if r.delivered && !mine.delivered => *mine = r,
            Some(_) => {}
            None => call.recordings.push(r),
        }
    }
    for f in theirs.store_files {
        if !call.store_files.contains(&f) {
            call.store_files.push(f);
        }
    }
    call
}

impl Entry {
    /// Not ended yet, or holding recordings exrp has not accepted.
    pub fn has_work(&self) -> bool {
        self.call.ended.is_none() || self.call.pending().next().is_some() || self.call.gir.is_some()
    }
}

/// A call in memory: its durable state plus the delivery schedule, which is not persisted
/// (after a restart every pending delivery is due at once).
#[derive(Debug)]
pub struct Entry {
    pub call: Call,
    pub attempts: u32,
    pub next_attempt: Instant,
    pub in_flight: bool,
    /// Why the last delivery attempt failed (for `trace`).
    pub last_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BookError {
    #[error("too many open calls ({0}); refusing new ones until deliveries catch up")]
    Full(usize),
    #[error("too many recordings for call {0}")]
    TooManyRecordings(String),
    #[error("cannot write the call state: {0}")]
    Io(#[from] std::io::Error),
}

/// What a POST changed, for its reply and log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Added {
    pub new: usize,
    pub updated: usize,
    /// Already delivered to exrp: nothing to do again.
    pub already_delivered: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndOutcome {
    Ended,
    AlreadyEnded,
    Unknown,
}

/// Work the scheduler found due.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    EndQuiet(String),
    Deliver(String),
    Forget(String),
    GirFetch(String),
}

/// Where the call records are written.
pub enum Records {
    Dir(Arc<RecordDir>),
    /// This instance's prefix of the shared bucket.
    Bucket(Arc<BucketRecords>),
}

fn io_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl Records {
    async fn put(&self, key: String, bytes: Vec<u8>) -> std::io::Result<()> {
        match self {
            Records::Dir(dir) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || dir.put(&key, &bytes)).await.map_err(io_error)?
            }
            Records::Bucket(bucket) => bucket.put(&key, bytes).await.map_err(io_error),
        }
    }

    async fn remove(&self, key: String) -> std::io::Result<()> {
        match self {
            Records::Dir(dir) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || dir.remove(&key)).await.map_err(io_error)?
            }
            Records::Bucket(bucket) => bucket.remove(&key).await.map_err(io_error),
        }
    }

    /// Every record this instance holds, as (key, bytes).
    async fn load(&self) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        match self {
            Records::Dir(dir) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || {
                    let mut all = Vec::new();
                    for k in dir.keys()? {
                        if let Some(bytes) = dir.get(&k)? {
                            all.push((k, bytes));
                        }
                    }
                    Ok(all)
                })
                .await?
            }
            Records::Bucket(bucket) => {
                let mut all = Vec::new();
                for k in bucket.keys_of(bucket.owner()).await? {
                    if let Some(bytes) = bucket.get_of(bucket.owner(), &k).await? {
                        all.push((k, bytes));
                    }
                }
                Ok(all)
            }
        }
    }
}

pub struct CallBook {
    records: Records,
    calls: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Entry>>>>,
    max_open: usize,
    max_recordings: usize,
}

pub fn key(call_uuid: &str) -> String {
    format!("{call_uuid}.json")
}

impl CallBook {
    /// Loads every call record (before the role starts).
    pub async fn open(records: Records, max_open: usize, max_recordings: usize) -> anyhow::Result<CallBook> {
        let mut calls = HashMap::new();
        let now = Instant::now();
        for (k, bytes) in records.load().await? {
            match serde_json::from_slice::<Call>(&bytes) {
                Ok(call) => {
                    let entry = Entry { call, attempts: 0, next_attempt: now, in_flight: false, last_error: None };
                    calls.insert(entry.call.call_uuid.clone(), Arc::new(tokio::sync::Mutex::new(entry)));
                }
                Err(err) => {
                    // Written atomically by us, so this is damage from outside: keep it aside.
                    tracing::error!(record = %k, %err, "unreadable call record left in place; it is ignored");
                }
            }
        }
        Ok(CallBook { records, calls: Mutex::new(calls), max_open, max_recordings })
    }

    pub fn records(&self) -> &Records {
        &self.records
    }

    pub fn len(&self) -> usize {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn entry(&self, call_uuid: &str) -> Option<Arc<tokio::sync::Mutex<Entry>>> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).get(call_uuid).cloned()
    }

    fn entry_or_new(&self, call_uuid: &str) -> Result<Arc<tokio::sync::Mutex<Entry>>, BookError> {
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = calls.get(call_uuid) {
            return Ok(e.clone());
        }
        // Calls remembered after delivery (only to skip repeated metadata) do not count:
        // only calls with work left do. Counting is paid only near the limit.
        if calls.len() >= self.max_open {
            let active = calls.values().filter(|e| e.try_lock().map_or(true, |e| e.has_work())).count();
            if active >= self.max_open {
                return Err(BookError::Full(self.max_open));
            }
        }
        let entry = Entry {
            call: Call::new(call_uuid, now_ms()),
            attempts: 0,
            next_attempt: Instant::now(),
            in_flight: false,
            last_error: None,
        };
        let entry = Arc::new(tokio::sync::Mutex::new(entry));
        calls.insert(call_uuid.to_string(), entry.clone());
        Ok(entry)
    }

    /// Drops an in-memory entry that was created but never written (its first write failed).
    fn forget_unwritten(&self, call_uuid: &str, entry: &Entry) {
        if entry.call.recordings.is_empty() && entry.call.ended.is_none() {
            self.calls.lock().unwrap_or_else(|p| p.into_inner()).remove(call_uuid);
        }
    }

    /// Writes `call` as the call's new state; the caller applies it in memory only after.
    pub async fn persist(&self, call: &Call) -> Result<(), BookError> {
        let bytes = serde_json::to_vec(call).map_err(|e| BookError::Io(std::io::Error::other(e)))?;
        Ok(self.records.put(key(&call.call_uuid), bytes).await?)
    }

    async fn remove_record(&self, call_uuid: &str) -> Result<(), BookError> {
        Ok(self.records.remove(key(call_uuid)).await?)
    }

    /// Takes over a call another instance held (its record, read from the shared bucket):
    /// merged with this instance's share of the same call, if any, and written as ours before
    /// the caller removes the other's. Not bounded by `max_open`: refusing would strand it.
    pub async fn adopt(&self, theirs: Call) -> Result<(), BookError> {
        let entry = {
            let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            calls
                .entry(theirs.call_uuid.clone())
                .or_insert_with(|| {
                    Arc::new(tokio::sync::Mutex::new(Entry {
                        call: Call::new(&theirs.call_uuid, theirs.first_seen_ms),
                        attempts: 0,
                        next_attempt: Instant::now(),
                        in_flight: false,
                        last_error: None,
                    }))
                })
                .clone()
        };
        let mut guard = entry.lock().await;
        let merged = merge(&guard.call, theirs);
        if let Err(e) = self.persist(&merged).await {
            let empty = guard.call.recordings.is_empty() && guard.call.ended.is_none();
            if empty {
                self.calls.lock().unwrap_or_else(|p| p.into_inner()).remove(&merged.call_uuid);
            }
            return Err(e);
        }
        guard.call = merged;
        guard.next_attempt = Instant::now();
        Ok(())
    }

    /// Adds or updates recordings (all of one call), durably.
    pub async fn add(&self, call_uuid: &str, files: &[MediaFile], corr_id: Option<&str>) -> Result<Added, BookError> {
        let entry = self.entry_or_new(call_uuid)?;
        let mut guard = entry.lock().await;
        let mut call = guard.call.clone();
        let now = now_ms();
        let mut added = Added::default();
        for f in files {
            match call.recordings.iter_mut().find(|r| r.media_id == f.media_id) {
                Some(r) if r.delivered => added.already_delivered += 1,
                Some(r) => {
                    r.metadata = f.metadata.clone();
                    r.call = f.call.clone();
                    added.updated += 1;
                }
                None => {
                    if call.recordings.len() >= self.max_recordings {
                        self.forget_unwritten(call_uuid, &guard);
                        return Err(BookError::TooManyRecordings(call_uuid.to_string()));
                    }
                    call.recordings.push(Recording {
                        media_id: f.media_id.clone(),
                        metadata: f.metadata.clone(),
                        call: f.call.clone(),
                        received_ms: now,
                        delivered: false,
                        corr_id: corr_id.map(str::to_owned),
                        delivered_ms: None,
                        delivered_corr_id: None,
                    });
                    added.new += 1;
                }
            }
        }
        if added.new + added.updated == 0 {
            return Ok(added);
        }
        call.last_update_ms = now;
        if call.gir.is_some() {
            // The metadata came after all (MCP also posting in GIR mode): no need to fetch it.
            call.gir = None;
        }
        if let Err(e) = self.persist(&call).await {
            self.forget_unwritten(call_uuid, &guard);
            return Err(e);
        }
        guard.call = call;
        if guard.call.ended.is_some() {
            // Late metadata for an ended call goes out as a follow-up at once.
            guard.next_attempt = Instant::now();
        }
        Ok(added)
    }

    /// A recording of the call was seen in the store (GIR mode): the call is known from now
    /// on and its quiet period starts again. Returns true when the call is new.
    pub async fn touch(&self, call_uuid: &str, file: &str) -> Result<bool, BookError> {
        let entry = self.entry_or_new(call_uuid)?;
        let mut guard = entry.lock().await;
        let known = guard.call.store_files.iter().any(|f| f == file);
        let room = guard.call.store_files.len() < self.max_recordings;
        if guard.call.ended.is_some() && (known || !room) {
            return Ok(false);
        }
        let new = guard.call.recordings.is_empty() && guard.call.first_seen_ms == guard.call.last_update_ms;
        let mut call = guard.call.clone();
        if !known && room {
            call.store_files.push(file.to_string());
        }
        // A file that comes after the end is remembered, and does not reopen the call.
        if call.ended.is_none() {
            call.last_update_ms = now_ms();
        }
        if let Err(e) = self.persist(&call).await {
            self.forget_unwritten(call_uuid, &guard);
            return Err(e);
        }
        guard.call = call;
        Ok(new)
    }

    /// Ends a call now. An unknown call is created only when `create` is on (GIR mode).
    pub async fn end(
        &self,
        call_uuid: &str,
        reason: &str,
        corr_id: &str,
        create: bool,
    ) -> Result<EndOutcome, BookError> {
        let entry = match self.entry(call_uuid) {
            Some(e) => e,
            None if create => self.entry_or_new(call_uuid)?,
            None => return Ok(EndOutcome::Unknown),
        };
        let mut guard = entry.lock().await;
        if guard.call.ended.is_some() {
            return Ok(EndOutcome::AlreadyEnded);
        }
        let mut call = guard.call.clone();
        call.ended = Some(Ended { at_ms: now_ms(), reason: reason.to_string(), corr_id: corr_id.to_string() });
        if let Err(e) = self.persist(&call).await {
            self.forget_unwritten(call_uuid, &guard);
            return Err(e);
        }
        guard.call = call;
        guard.next_attempt = Instant::now();
        Ok(EndOutcome::Ended)
    }

    /// Sets (or clears) the GIR fetch schedule of a call.
    pub async fn set_gir(&self, call_uuid: &str, gir: Option<GirFetch>) -> Result<(), BookError> {
        let Some(entry) = self.entry(call_uuid) else { return Ok(()) };
        let mut guard = entry.lock().await;
        let mut call = guard.call.clone();
        call.gir = gir;
        self.persist(&call).await?;
        guard.call = call;
        Ok(())
    }

    /// Marks recordings delivered after exrp accepted them (the interaction-end `corr_id`).
    pub async fn delivered(&self, call_uuid: &str, media_ids: &[String], corr_id: &str) -> Result<(), BookError> {
        let Some(entry) = self.entry(call_uuid) else { return Ok(()) };
        let mut guard = entry.lock().await;
        let mut call = guard.call.clone();
        let now = now_ms();
        for r in call.recordings.iter_mut().filter(|r| media_ids.contains(&r.media_id)) {
            r.delivered = true;
            r.delivered_ms = Some(now);
            r.delivered_corr_id = Some(corr_id.to_string());
            // What remains is only there to recognise a repeat: keep the memory small.
            r.metadata = Value::Null;
            r.call = None;
        }
        self.persist(&call).await?;
        guard.call = call;
        guard.attempts = 0;
        guard.in_flight = false;
        guard.last_error = None;
        Ok(())
    }

    /// The calls a trace names: the CallUUID itself, or a recording or store file whose name
    /// contains the id. With each: delivery attempts so far, the last failure, and whether
    /// the next attempt is under way.
    pub async fn find(&self, id: &str) -> Vec<(Call, u32, Option<String>)> {
        let entries: Vec<_> = self.calls.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let mut found = Vec::new();
        for entry in entries {
            let e = entry.lock().await;
            let c = &e.call;
            let named = c.call_uuid == id
                || c.recordings.iter().any(|r| r.media_id.contains(id))
                || c.store_files.iter().any(|f| f.contains(id));
            if named {
                found.push((c.clone(), e.attempts, e.last_error.clone()));
                if found.len() >= 20 {
                    break;
                }
            }
        }
        found
    }

    /// Schedules the next delivery attempt after a failure.
    pub async fn failed(&self, call_uuid: &str, delay: Duration, why: &str) {
        if let Some(entry) = self.entry(call_uuid) {
            let mut guard = entry.lock().await;
            guard.last_error = Some(why.to_string());
            guard.attempts += 1;
            guard.next_attempt = Instant::now() + delay;
            guard.in_flight = false;
        }
    }

    /// Removes a delivered (or given up) call once nothing more is expected for it.
    pub async fn forget(&self, call_uuid: &str) -> Result<(), BookError> {
        let Some(entry) = self.entry(call_uuid) else { return Ok(()) };
        let guard = entry.lock().await;
        self.remove_record(call_uuid).await?;
        drop(guard);
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).remove(call_uuid);
        Ok(())
    }

    /// Finds the work due now. Entries busy elsewhere are skipped until the next scan.
    pub fn scan(&self, quiet: Duration, retention: Duration) -> Vec<Due> {
        let entries: Vec<(String, Arc<tokio::sync::Mutex<Entry>>)> = {
            let calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            calls.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let now = Instant::now();
        let wall = now_ms();
        let mut due = Vec::new();
        for (call_uuid, entry) in entries {
            let Ok(mut e) = entry.try_lock() else { continue };
            if e.in_flight {
                continue;
            }
            let c = &e.call;
            match &c.ended {
                None => {
                    if wall.saturating_sub(c.last_update_ms) >= quiet.as_millis() as u64 {
                        due.push(Due::EndQuiet(call_uuid));
                    }
                }
                Some(ended) => {
                    if let Some(gir) = &c.gir {
                        if wall >= gir.next_ms {
                            e.in_flight = true;
                            due.push(Due::GirFetch(call_uuid));
                        }
                    } else if c.pending().next().is_some() {
                        if e.next_attempt <= now {
                            e.in_flight = true;
                            due.push(Due::Deliver(call_uuid));
                        }
                    } else if wall.saturating_sub(ended.at_ms.max(c.last_update_ms)) >= retention.as_millis() as u64 {
                        due.push(Due::Forget(call_uuid));
                    }
                }
            }
        }
        due
    }

    /// Releases an entry claimed by `scan` without a delivery outcome (e.g. shutdown).
    pub async fn release(&self, call_uuid: &str) {
        if let Some(entry) = self.entry(call_uuid) {
            entry.lock().await.in_flight = false;
        }
    }

    /// (open calls, calls with undelivered recordings, undelivered recordings).
    pub fn backlog(&self) -> (usize, usize, usize) {
        let calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        let (mut open, mut waiting, mut recordings) = (0, 0, 0);
        for entry in calls.values() {
            let Ok(e) = entry.try_lock() else {
                waiting += 1;
                continue;
            };
            if e.call.ended.is_none() {
                open += 1;
            }
            let pending = e.call.pending().count();
            if pending > 0 {
                waiting += 1;
                recordings += pending;
            }
        }
        (open, waiting, recordings)
    }
}
