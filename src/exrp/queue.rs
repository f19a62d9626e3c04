//! The durable job queue: one SQLite database (WAL, synchronous=FULL) in `state_dir`, one row
//! per recording keyed on (callUUID, mediaId). A job is pending, working, done or dead; a
//! commit returns only once the row is on disk, so a 202 or a state change survives kill -9.
//! The few changes whose loss a restart repairs by itself are committed without waiting for
//! the disk (`Queue::lazily`): they become durable with the next commit that does.
//! The operator's `queue` subcommand opens the same file; the scheduler re-reads it, so a
//! retried job is picked up without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Working,
    Done,
    Dead,
}

impl State {
    pub const ALL: [State; 4] = [State::Pending, State::Working, State::Done, State::Dead];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Working => "working",
            State::Done => "done",
            State::Dead => "dead",
        }
    }

    pub fn parse(text: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// Where a job came from: an interaction-end posted to us, or the store scan (another
/// instance's job, or an upload finished but not deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Post,
    Scan,
}

/// A job to add.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub call_uuid: String,
    pub media_id: String,
    /// The recording's name in the store (one path segment).
    pub file: String,
    pub tenant: String,
    /// The recording and its call as JSON: what the sink receives as metadata.
    pub spec: String,
    /// When the job was first accepted (by us or by the instance that recorded it in the store).
    pub accepted_at_ms: u64,
}

/// One row, as the worker and the `queue` command see it.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: i64,
    #[serde(rename = "callUUID")]
    pub call_uuid: String,
    #[serde(rename = "mediaId")]
    pub media_id: String,
    pub file: String,
    pub tenant: String,
    pub state: State,
    pub origin: &'static str,
    pub attempts: u32,
    #[serde(rename = "acceptedAt")]
    pub accepted_at_ms: u64,
    #[serde(rename = "nextAt")]
    pub next_at_ms: u64,
    #[serde(rename = "updatedAt")]
    pub updated_at_ms: u64,
    /// The file was seen in the store at least once.
    pub seen: bool,
    #[serde(rename = "uploadKey")]
    pub upload_key: Option<String>,
    pub outcome: Option<String>,
    pub reason: Option<String>,
    #[serde(skip)]
    pub spec: String,
    /// The WebDAV lock this instance holds on the file, kept so a restart can resume its claim.
    #[serde(skip)]
    pub lock_token: Option<String>,
    /// Time spent paused or waiting for configuration (not counted toward retry_window).
    #[serde(rename = "pausedMs")]
    pub paused_ms: u64,
}

/// Why the queue could not be opened: a newer release's queue is told apart (exit 78).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Newer(#[from] crate::durable::NewerState),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

#[derive(Debug, thiserror::Error)]
#[error("job queue {}: {message}", path.display())]
pub struct QueueError {
    path: PathBuf,
    message: String,
}

/// Cheap to clone; every call runs on the blocking pool.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    conn: Mutex<Connection>,
    fsync: bool,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    call_uuid TEXT NOT NULL,
    media_id TEXT NOT NULL,
    file TEXT NOT NULL,
    tenant TEXT NOT NULL,
    state TEXT NOT NULL,
    origin TEXT NOT NULL,
    spec TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    accepted_at INTEGER NOT NULL,
    next_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    seen INTEGER NOT NULL DEFAULT 0,
    upload_key TEXT,
    lock_token TEXT,
    outcome TEXT,
    reason TEXT,
    paused_ms INTEGER NOT NULL DEFAULT 0,
    UNIQUE (call_uuid, media_id)
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, next_at);
CREATE INDEX IF NOT EXISTS jobs_file ON jobs (file);
CREATE TABLE IF NOT EXISTS steps (
    job_id INTEGER NOT NULL,
    step TEXT NOT NULL,
    first_at INTEGER NOT NULL,
    at INTEGER NOT NULL,
    count INTEGER NOT NULL DEFAULT 1,
    detail TEXT NOT NULL,
    PRIMARY KEY (job_id, step)
) WITHOUT ROWID;
";

/// Records a step of a job's way (`trace`): one row per kind of step, so a job retried for
/// days keeps a few rows (the first and last time, how often, the last detail).
const STEP: &str = "INSERT INTO steps (job_id, step, first_at, at, count, detail) VALUES (?1, ?2, ?3, ?3, 1, ?4)
     ON CONFLICT (job_id, step) DO UPDATE SET at = excluded.at, count = count + 1, detail = excluded.detail";

/// One kind of step of a job, as `trace` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub step: String,
    pub first_at_ms: u64,
    pub at_ms: u64,
    pub count: u64,
    pub detail: String,
}

const COLUMNS: &str = "id, call_uuid, media_id, file, tenant, state, origin, attempts, accepted_at, next_at, \
                       updated_at, seen, upload_key, outcome, reason, spec, lock_token, paused_ms";

pub use crate::clock::unix_ms as now_ms;

fn row_to_job(row: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    let state: String = row.get(5)?;
    let origin: String = row.get(6)?;
    Ok(Job {
        id: row.get(0)?,
        call_uuid: row.get(1)?,
        media_id: row.get(2)?,
        file: row.get(3)?,
        tenant: row.get(4)?,
        state: State::parse(&state).unwrap_or(State::Pending),
        origin: if origin == "scan" { "scan" } else { "post" },
        attempts: row.get(7)?,
        accepted_at_ms: row.get::<_, i64>(8)? as u64,
        next_at_ms: row.get::<_, i64>(9)? as u64,
        updated_at_ms: row.get::<_, i64>(10)? as u64,
        seen: row.get::<_, i64>(11)? != 0,
        upload_key: row.get(12)?,
        outcome: row.get(13)?,
        reason: row.get(14)?,
        spec: row.get(15)?,
        lock_token: row.get(16)?,
        paused_ms: row.get::<_, i64>(17)? as u64,
    })
}

/// What `add` did with each job of a batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Added {
    pub new: usize,
    pub duplicate: usize,
}

/// The format of `queue.db`, kept in SQLite's `user_version`. 2 added `jobs.paused_ms`, 3 the
/// `steps` table (made by the schema; jobs from before have no steps).
pub const QUEUE_FORMAT: u32 = 3;

/// Creates the tables, or brings an older format's up to date, in one transaction: a crash
/// leaves the old format or the new one, never half of it.
fn migrate(conn: &mut Connection, found: u32) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let had_jobs: bool =
        tx.query_row("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs')", [], |r| {
            r.get(0)
        })?;
    // 0 (made before the format was versioned) and 1 have the tables of format 1.
    if had_jobs && found < 2 {
        tx.execute_batch("ALTER TABLE jobs ADD COLUMN paused_ms INTEGER NOT NULL DEFAULT 0")?;
        // Format 1 took a recording's store name from its uri before its mediaId; the mediaId
        // comes first now (in GIR mode the uri is RWS's play URL). Unfinished jobs follow.
        let renamed: Vec<(i64, String)> = {
            let mut stmt = tx.prepare("SELECT id, file, spec FROM jobs WHERE state IN ('pending', 'working')")?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
            let mut renamed = Vec::new();
            for row in rows {
                let (id, file, spec) = row?;
                let spec: serde_json::Value = serde_json::from_str(&spec).unwrap_or_default();
                if let Some(name) = spec.pointer("/recording/mediaId").and_then(serde_json::Value::as_str)
                    && super::job::valid_file_name(name)
                    && name != file
                {
                    renamed.push((id, name.to_string()));
                }
            }
            renamed
        };
        for (id, name) in &renamed {
            tx.execute("UPDATE jobs SET file = ?2 WHERE id = ?1", params![id, name])?;
        }
        if !renamed.is_empty() {
            tracing::info!(jobs = renamed.len(), "queued jobs now name their file by mediaId");
        }
    }
    tx.execute_batch(SCHEMA)?;
    if found < QUEUE_FORMAT {
        tx.pragma_update(None, "user_version", QUEUE_FORMAT)?;
        if had_jobs {
            tracing::info!(from = found, to = QUEUE_FORMAT, "queue.db brought to the current format");
        }
    }
    tx.commit()
}

impl Queue {
    /// Opens (or creates) `dir/queue.db`. `fsync` false trades crash safety for speed (tests,
    /// benchmarks): a power cut may then lose the last commits, a process kill still does not.
    pub fn open(dir: &Path, fsync: bool) -> Result<Queue, OpenError> {
        let path = dir.join("queue.db");
        let err = |e: rusqlite::Error| QueueError { path: path.clone(), message: e.to_string() };
        let mut conn = Connection::open(&path).map_err(err)?;
        // Before anything writes: a queue a newer release made is left exactly as it is.
        let found: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(err)?;
        if found > QUEUE_FORMAT {
            return Err(OpenError::Newer(crate::durable::NewerState {
                what: path.display().to_string(),
                found,
                known: QUEUE_FORMAT,
            }));
        }
        conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", if fsync { "FULL" } else { "OFF" }).map_err(err)?;
        migrate(&mut conn, found).map_err(err)?;
        Ok(Queue { inner: Arc::new(Inner { path, conn: Mutex::new(conn), fsync }) })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, QueueError> {
        let mut conn = self.inner.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn).map_err(|e| QueueError { path: self.inner.path.clone(), message: e.to_string() })
    }

    /// Like `with`, but the commit does not wait for the disk (synchronous=NORMAL): after a
    /// power cut it may be undone, until the next fully synchronous commit (a WAL is written
    /// in order, so that one's fsync carries it). Only for changes whose loss a restart
    /// repairs: a job left `working` is made pending again by `recover` and resumed, and a
    /// claim's forgotten token is found again by its owner name (`work::adopt`).
    fn lazily<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, QueueError> {
        if !self.inner.fsync {
            return self.with(f);
        }
        self.with(|conn| {
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            let result = f(conn);
            conn.pragma_update(None, "synchronous", "FULL")?;
            result
        })
    }

    /// Runs `f` on the blocking pool (SQLite calls block on disk).
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Queue) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let q = self.clone();
        match tokio::task::spawn_blocking(move || f(&q)).await {
            Ok(r) => r,
            Err(join) => {
                Err(QueueError { path: self.inner.path.clone(), message: format!("queue task failed: {join}") })
            }
        }
    }

    /// Adds a batch in one transaction; a job whose key is already known (in any state) is a
    /// duplicate and changes nothing.
    pub fn add(&self, jobs: &[NewJob], origin: Origin, seen: bool, corr_id: Option<&str>) -> Result<Added, QueueError> {
        let now = now_ms() as i64;
        let how = match (origin, corr_id) {
            (Origin::Scan, _) => "found in the store by the scan".to_string(),
            (Origin::Post, Some(corr)) => format!("interaction-end {corr}"),
            (Origin::Post, None) => "interaction-end".to_string(),
        };
        self.with(|conn| {
            let tx = conn.transaction()?;
            let mut added = Added::default();
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO jobs (call_uuid, media_id, file, tenant, state, origin, spec, accepted_at, next_at, updated_at, seen)
                     VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, ?7, ?8, ?8, ?9)
                     ON CONFLICT (call_uuid, media_id) DO NOTHING",
                )?;
                for job in jobs {
                    let origin = if origin == Origin::Scan { "scan" } else { "post" };
                    let n = insert.execute(params![
                        job.call_uuid,
                        job.media_id,
                        job.file,
                        job.tenant,
                        origin,
                        job.spec,
                        job.accepted_at_ms as i64,
                        now,
                        seen as i64
                    ])?;
                    if n == 1 {
                        added.new += 1;
                        tx.prepare_cached(STEP)?.execute(params![tx.last_insert_rowid(), "accepted", now, how])?;
                    } else {
                        added.duplicate += 1;
                    }
                }
            }
            tx.commit()?;
            Ok(added)
        })
    }

    /// Those of `jobs` still to be done here (pending or being worked on), each with the token
    /// of the claim this instance holds on its file, if any: what an interaction-end must see
    /// recorded on the files before it is acknowledged.
    pub fn unfinished(&self, jobs: Vec<NewJob>) -> Result<Vec<(NewJob, Option<String>)>, QueueError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT lock_token FROM jobs WHERE call_uuid = ?1 AND media_id = ?2 AND state IN ('pending', 'working')",
            )?;
            let mut unfinished = Vec::new();
            for job in jobs {
                let token: Option<Option<String>> = stmt
                    .query_row(params![job.call_uuid, job.media_id], |row| row.get(0))
                    .optional()?;
                if let Some(token) = token {
                    unfinished.push((job, token));
                }
            }
            Ok(unfinished)
        })
    }

    /// After a restart nothing is working: what was is pending again, due now.
    pub fn recover(&self) -> Result<usize, QueueError> {
        let now = now_ms() as i64;
        self.with(|conn| {
            conn.execute("UPDATE jobs SET state = 'pending', next_at = ?1 WHERE state = 'working'", params![now])
        })
    }

    /// Makes pending jobs whose last reason contains `marker` due now (jobs that waited for a
    /// configuration change, at a start that may bring it).
    pub fn wake_waiting(&self, marker: &str) -> Result<usize, QueueError> {
        let now = now_ms() as i64;
        self.with(|conn| {
            conn.execute(
                "UPDATE jobs SET next_at = ?1 WHERE state = 'pending' AND instr(reason, ?2) > 0",
                params![now, marker],
            )
        })
    }

    /// Takes up to `limit` due pending jobs and marks them working.
    pub fn take_due(&self, limit: usize) -> Result<Vec<Job>, QueueError> {
        let now = now_ms() as i64;
        // Lazily: a job whose `working` is lost is simply still pending.
        self.lazily(|conn| {
            let tx = conn.transaction()?;
            let jobs = {
                let mut select = tx.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM jobs WHERE state = 'pending' AND next_at <= ?1 ORDER BY next_at LIMIT ?2"
                ))?;
                select.query_map(params![now, limit as i64], row_to_job)?.collect::<rusqlite::Result<Vec<Job>>>()?
            };
            {
                let mut update = tx.prepare_cached(
                    "UPDATE jobs SET state = 'working', attempts = attempts + 1, updated_at = ?2 WHERE id = ?1",
                )?;
                let mut step = tx.prepare_cached(STEP)?;
                for job in &jobs {
                    update.execute(params![job.id, now])?;
                    step.execute(params![job.id, "attempt", now, format!("attempt {}", job.attempts + 1)])?;
                }
            }
            tx.commit()?;
            Ok(jobs
                .into_iter()
                .map(|mut j| {
                    j.state = State::Working;
                    j.attempts += 1;
                    j
                })
                .collect())
        })
    }

    /// Milliseconds until the next pending job is due (None: nothing pending).
    pub fn next_due_in(&self) -> Result<Option<u64>, QueueError> {
        let now = now_ms();
        self.with(|conn| {
            let next: Option<i64> =
                conn.query_row("SELECT MIN(next_at) FROM jobs WHERE state = 'pending'", [], |r| r.get(0))?;
            Ok(next.map(|n| (n as u64).saturating_sub(now)))
        })
    }

    pub fn mark_seen(&self, id: i64) -> Result<(), QueueError> {
        self.with(|conn| conn.execute("UPDATE jobs SET seen = 1 WHERE id = ?1", params![id]).map(drop))
    }

    pub fn mark_seen_keys(&self, keys: &[(String, String)]) -> Result<(), QueueError> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached("UPDATE jobs SET seen = 1 WHERE call_uuid = ?1 AND media_id = ?2")?;
                for (call, media) in keys {
                    stmt.execute(params![call, media])?;
                }
            }
            tx.commit()
        })
    }

    /// The sink's upload key, and how it was had (the cloud's correlation id).
    pub fn set_upload_key(&self, id: i64, key: &str, detail: &str) -> Result<(), QueueError> {
        let now = now_ms() as i64;
        self.with(|conn| {
            let tx = conn.transaction()?;
            tx.execute("UPDATE jobs SET upload_key = ?2 WHERE id = ?1", params![id, key])?;
            tx.prepare_cached(STEP)?.execute(params![id, "presigned", now, detail])?;
            tx.commit()
        })
    }

    /// Records a step that changes nothing else (claimed, fetched), lazily: a step lost to a
    /// power cut is only missing from `trace`.
    pub fn note(&self, id: i64, step: &str, detail: &str) -> Result<(), QueueError> {
        let now = now_ms() as i64;
        self.lazily(|conn| conn.prepare_cached(STEP)?.execute(params![id, step, now, detail]).map(drop))
    }

    /// A job's steps, in the order first taken.
    pub fn steps(&self, id: i64) -> Result<Vec<Step>, QueueError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT step, first_at, at, count, detail FROM steps WHERE job_id = ?1 ORDER BY first_at, at",
            )?;
            let rows = stmt.query_map(params![id], |r| {
                Ok(Step {
                    step: r.get(0)?,
                    first_at_ms: r.get::<_, i64>(1)? as u64,
                    at_ms: r.get::<_, i64>(2)? as u64,
                    count: r.get::<_, i64>(3)? as u64,
                    detail: r.get(4)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Jobs whose call is `id` or whose file or mediaId contains it (`trace`), at most `limit`.
    pub fn find(&self, id: &str, limit: usize) -> Result<Vec<Job>, QueueError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM jobs WHERE call_uuid = ?1 OR instr(file, ?1) > 0 OR instr(media_id, ?1) > 0
                 ORDER BY accepted_at, id LIMIT ?2"
            ))?;
            stmt.query_map(params![id, limit as i64], row_to_job)?.collect()
        })
    }

    /// Lazily: a token lost to a power cut is found again by the lock's owner name.
    pub fn set_lock_token(&self, id: i64, token: Option<&str>) -> Result<(), QueueError> {
        self.lazily(|conn| conn.execute("UPDATE jobs SET lock_token = ?2 WHERE id = ?1", params![id, token]).map(drop))
    }

    /// The sink confirmed the upload: a resumed job only deletes.
    pub fn mark_uploaded(&self, id: i64, key: &str) -> Result<(), QueueError> {
        let now = now_ms() as i64;
        self.with(|conn| {
            let tx = conn.transaction()?;
            tx.execute("UPDATE jobs SET upload_key = ?2, outcome = 'uploaded' WHERE id = ?1", params![id, key])?;
            tx.prepare_cached(STEP)?.execute(params![id, "uploaded", now, key])?;
            tx.commit()
        })
    }

    /// Back to pending, due after `delay`, with the reason it did not finish.
    pub fn retry_later(&self, id: i64, delay: Duration, reason: &str) -> Result<(), QueueError> {
        let now = now_ms();
        let next = now + delay.as_millis() as u64;
        self.with(|conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "UPDATE jobs SET state = 'pending', next_at = ?2, updated_at = ?3, reason = ?4, lock_token = NULL
                 WHERE id = ?1",
                params![id, next as i64, now as i64, reason],
            )?;
            tx.prepare_cached(STEP)?.execute(params![id, "retry", now as i64, reason])?;
            tx.commit()
        })
    }

    /// Back to pending after a configuration fault, due after `delay`, which is added to the
    /// job's paused time (not counted toward retry_window).
    pub fn pause(&self, id: i64, delay: Duration, reason: &str) -> Result<(), QueueError> {
        let now = now_ms();
        let ms = delay.as_millis() as u64;
        self.with(|conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "UPDATE jobs SET state = 'pending', next_at = ?2, updated_at = ?3, reason = ?4, lock_token = NULL,
                 paused_ms = paused_ms + ?5 WHERE id = ?1",
                params![id, (now + ms) as i64, now as i64, reason, ms as i64],
            )?;
            tx.prepare_cached(STEP)?.execute(params![id, "waiting", now as i64, reason])?;
            tx.commit()
        })
    }

    /// Ends the attempt (and forgets its lock token): done or dead.
    /// A job done is finished lazily: undone by a power cut, it is resumed, finds its file gone
    /// (it was seen, durably) and is done again. A dead one is committed fully.
    pub fn finish(&self, id: i64, state: State, outcome: &str, reason: Option<&str>) -> Result<(), QueueError> {
        let now = now_ms() as i64;
        let commit = |conn: &mut Connection| {
            let tx = conn.transaction()?;
            tx.execute(
                "UPDATE jobs SET state = ?2, outcome = ?3, reason = ?4, updated_at = ?5, lock_token = NULL WHERE id = ?1",
                params![id, state.as_str(), outcome, reason, now],
            )?;
            let step = if state == State::Dead { "dead" } else { "done" };
            tx.prepare_cached(STEP)?.execute(params![id, step, now, reason.unwrap_or(outcome)])?;
            tx.commit()
        };
        if state == State::Done { self.lazily(commit) } else { self.with(commit) }
    }

    pub fn counts(&self) -> Result<[u64; 4], QueueError> {
        self.with(|conn| {
            let mut counts = [0u64; 4];
            let mut stmt = conn.prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (state, n) = row?;
                if let Some(i) = State::ALL.iter().position(|s| s.as_str() == state) {
                    counts[i] = n as u64;
                }
            }
            Ok(counts)
        })
    }

    /// Those of `files` that some job (in any state) names.
    pub fn known_files(&self, files: Vec<String>) -> Result<std::collections::HashSet<String>, QueueError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached("SELECT 1 FROM jobs WHERE file = ?1 LIMIT 1")?;
            let mut known = std::collections::HashSet::new();
            for file in files {
                if stmt.exists(params![file])? {
                    known.insert(file);
                }
            }
            Ok(known)
        })
    }

    pub fn get(&self, call_uuid: &str, media_id: &str) -> Result<Option<Job>, QueueError> {
        self.with(|conn| {
            conn.query_row(
                &format!("SELECT {COLUMNS} FROM jobs WHERE call_uuid = ?1 AND media_id = ?2"),
                params![call_uuid, media_id],
                row_to_job,
            )
            .optional()
        })
    }

    /// Jobs of one state (or all), oldest first, at most `limit`.
    pub fn list(&self, state: Option<State>, call_uuid: Option<&str>, limit: usize) -> Result<Vec<Job>, QueueError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR call_uuid = ?2)
                 ORDER BY accepted_at, id LIMIT ?3"
            ))?;
            stmt.query_map(params![state.map(State::as_str), call_uuid, limit as i64], row_to_job)?.collect()
        })
    }

    /// Dead jobs (all, or those of one call / one recording) back to pending, due now, with a
    /// fresh retry window. Returns how many.
    pub fn retry_dead(&self, call_uuid: Option<&str>, media_id: Option<&str>) -> Result<usize, QueueError> {
        let now = now_ms() as i64;
        self.with(|conn| {
            conn.execute(
                "UPDATE jobs SET state = 'pending', next_at = ?1, accepted_at = ?1, updated_at = ?1, attempts = 0
                 WHERE state = 'dead' AND (?2 IS NULL OR call_uuid = ?2) AND (?3 IS NULL OR media_id = ?3)",
                params![now, call_uuid, media_id],
            )
        })
    }

    /// Removes finished jobs of `state` (done or dead) last updated before `before_ms`.
    pub fn purge(&self, state: State, before_ms: u64) -> Result<usize, QueueError> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "DELETE FROM steps WHERE job_id IN (SELECT id FROM jobs WHERE state = ?1 AND updated_at < ?2)",
                params![state.as_str(), before_ms as i64],
            )?;
            let n = tx.execute(
                "DELETE FROM jobs WHERE state = ?1 AND updated_at < ?2",
                params![state.as_str(), before_ms as i64],
            )?;
            tx.commit()?;
            Ok(n)
        })
    }

    /// The oldest pending job's age, for health.
    pub fn oldest_pending_ms(&self) -> Result<Option<u64>, QueueError> {
        let now = now_ms();
        self.with(|conn| {
            let oldest: Option<i64> =
                conn.query_row("SELECT MIN(accepted_at) FROM jobs WHERE state IN ('pending', 'working')", [], |r| {
                    r.get(0)
                })?;
            Ok(oldest.map(|o| now.saturating_sub(o as u64)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(call: &str, media: &str) -> NewJob {
        NewJob {
            call_uuid: call.into(),
            media_id: media.into(),
            file: format!("{call}_{media}.opus"),
            tenant: "t".into(),
            spec: "{}".into(),
            accepted_at_ms: now_ms(),
        }
    }

    /// `jobs` as format 1 made it (before `paused_ms`).
    const FORMAT_1: &str = r#"
        CREATE TABLE jobs (id INTEGER PRIMARY KEY, call_uuid TEXT NOT NULL, media_id TEXT NOT NULL,
            file TEXT NOT NULL, tenant TEXT NOT NULL, state TEXT NOT NULL, origin TEXT NOT NULL,
            spec TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, accepted_at INTEGER NOT NULL,
            next_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, seen INTEGER NOT NULL DEFAULT 0,
            upload_key TEXT, lock_token TEXT, outcome TEXT, reason TEXT, UNIQUE (call_uuid, media_id));
        INSERT INTO jobs (call_uuid, media_id, file, tenant, state, origin, spec, accepted_at, next_at, updated_at, reason)
            VALUES ('OLD', 'm1', 'OLD_m1.opus', 't', 'pending', 'post', '{}', 1, 1, 1, 'waiting');
        INSERT INTO jobs (call_uuid, media_id, file, tenant, state, origin, spec, accepted_at, next_at, updated_at)
            VALUES ('GIR', 'GIR_1.opus', 'x.mp3', 't', 'pending', 'post',
                    '{"recording":{"mediaId":"GIR_1.opus","uri":"http://rws/play/x.mp3"}}', 1, 1, 1),
                   ('DONE', 'DONE_1.opus', 'y.mp3', 't', 'done', 'post', '{"recording":{"mediaId":"DONE_1.opus"}}', 1, 1, 1);
        PRAGMA user_version = 1;"#;

    #[test]
    fn a_format_1_queue_is_migrated_in_place_and_keeps_its_jobs() {
        let dir = std::env::temp_dir().join(format!("eaio-queue-v1-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Connection::open(dir.join("queue.db")).unwrap().execute_batch(FORMAT_1).unwrap();
        let q = Queue::open(&dir, true).unwrap();
        let version: u32 = q.with(|c| c.pragma_query_value(None, "user_version", |r| r.get(0))).unwrap();
        assert_eq!(version, QUEUE_FORMAT);
        let job = q.get("OLD", "m1").unwrap().expect("the old job is kept");
        assert_eq!((job.paused_ms, job.reason.as_deref(), job.state), (0, Some("waiting"), State::Pending));
        // An unfinished job takes its store name from the mediaId now; a finished one is left.
        assert_eq!(q.get("GIR", "GIR_1.opus").unwrap().unwrap().file, "GIR_1.opus");
        assert_eq!(q.get("DONE", "DONE_1.opus").unwrap().unwrap().file, "y.mp3");
        q.pause(job.id, Duration::from_secs(30), "paused: x").unwrap();
        q.pause(job.id, Duration::from_secs(30), "paused: x").unwrap();
        assert_eq!(q.get("OLD", "m1").unwrap().unwrap().paused_ms, 60_000);
        drop(q);
        // Opening again changes nothing.
        let q = Queue::open(&dir, true).unwrap();
        assert_eq!(q.get("OLD", "m1").unwrap().unwrap().paused_ms, 60_000);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn jobs_move_through_their_states_and_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("eaio-queue-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let q = Queue::open(&dir, true).unwrap();
        assert_eq!(
            q.add(&[job("C1", "a"), job("C1", "b")], Origin::Post, false, None).unwrap(),
            Added { new: 2, duplicate: 0 }
        );
        assert_eq!(
            q.add(&[job("C1", "b"), job("C1", "c")], Origin::Post, false, None).unwrap(),
            Added { new: 1, duplicate: 1 }
        );
        let taken = q.take_due(2).unwrap();
        assert_eq!(taken.len(), 2);
        assert!(taken.iter().all(|j| j.state == State::Working && j.attempts == 1));
        q.finish(taken[0].id, State::Done, "uploaded", None).unwrap();
        q.finish(taken[1].id, State::Dead, "rejected", Some("400 bad")).unwrap();
        drop(q);

        let q = Queue::open(&dir, true).unwrap();
        assert_eq!(q.recover().unwrap(), 0);
        assert_eq!(q.counts().unwrap(), [1, 0, 1, 1]);
        // A done job is still a duplicate.
        assert_eq!(
            q.add(&[job(&taken[0].call_uuid, &taken[0].media_id)], Origin::Scan, true, None).unwrap().duplicate,
            1
        );
        assert_eq!(q.retry_dead(None, None).unwrap(), 1);
        assert_eq!(q.counts().unwrap(), [2, 0, 1, 0]);
        let working = q.take_due(10).unwrap();
        assert_eq!(working.len(), 2);
        // A crash while working: pending again after reopening.
        drop(q);
        let q = Queue::open(&dir, true).unwrap();
        assert_eq!(q.recover().unwrap(), 2);
        q.retry_later(working[0].id, Duration::from_secs(3600), "webdav down").unwrap();
        assert_eq!(q.take_due(10).unwrap().len(), 1);
        assert!(q.next_due_in().unwrap().is_some_and(|ms| ms > 3_500_000));
        assert_eq!(q.purge(State::Done, now_ms() + 1).unwrap(), 1);
        let known = q.known_files(vec![working[0].file.clone(), "other.opus".into()]).unwrap();
        assert_eq!(known.into_iter().collect::<Vec<_>>(), vec![working[0].file.clone()]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
