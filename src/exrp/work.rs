//! One recording's way out: claim it in the store (WebDAV LOCK), fetch it to the spool, check it
//! is a whole Ogg/Opus file, upload it, record the upload, and only then DELETE it. Each step
//! leaves a trace in the store (dead properties) and in the queue, so whoever resumes the job,
//! this instance after a crash or another one after a takeover, never uploads it twice.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::queue::{Job, now_ms};
use super::sink::{CloudSink, Sink};
use super::{Exrp, Live};
use crate::cloud::{CloudError, Presigned, clean_file_name};
use crate::dav_client::{DavError, Deleted, FetchedBody, Lock};

/// The dead properties a job keeps on its recording (namespace `dav_client::NS`).
pub const PROP_JOB: &str = "job";
pub const PROP_UPLOAD: &str = "upload";
pub const PROP_DONE: &str = "done";
pub const PROP_DEAD: &str = "dead";

/// The largest recording fetched when the metadata gives no size.
const MAX_RECORDING: u64 = 4 << 30;
/// Recordings up to this size are held in memory between the fetch and the upload, larger
/// ones in the spool directory: at most `workers` × 1 MiB (a minute of Opus is about 200 KB).
const IN_MEMORY: u64 = 1 << 20;

#[derive(Debug)]
pub enum Outcome {
    /// Finished: `uploaded`, `deleted` (an earlier upload's file removed now) or `elsewhere`.
    Done(&'static str),
    /// Not now: after `delay` (None: the job's backoff), for `reason`.
    Retry { delay: Option<Duration>, reason: String },
    /// Failed for good; `expired` when retry_window ran out. Marked on the file too.
    Dead { reason: String, expired: bool },
    /// Cannot go anywhere until the configuration changes (a tenant without an EX Org): asked
    /// again later, never dead, never uploaded elsewhere.
    Waiting(String),
    /// A fault an operator fixes in configuration (credentials or permissions refused, by the
    /// org or by the store): asked again after `delay`, never dead of it; the time does not
    /// count toward retry_window.
    Paused { delay: Duration, reason: String },
}

/// In the reason of every job waiting for its tenant's org (`Queue::wake_waiting` finds them).
pub const NO_ORG: &str = "has no EX Org";
/// In the reason of every job paused for a credential fault.
pub const PAUSED: &str = "paused:";

fn dead(reason: impl Into<String>) -> Outcome {
    Outcome::Dead { reason: reason.into(), expired: false }
}

/// Why a job of `tenant` cannot be uploaded with this configuration, if it cannot.
pub fn no_org(live: &Live, tenant: &str) -> Option<Outcome> {
    match &live.sink {
        Sink::Cloud(cloud) if cloud.client(tenant).is_none() => Some(Outcome::Waiting(format!(
            "tenant {tenant:?} {NO_ORG}: add [exrp.genesys_cloud.tenants.{tenant}] and reload exrp (SIGHUP)"
        ))),
        _ => None,
    }
}

fn retry(reason: impl Into<String>) -> Outcome {
    Outcome::Retry { delay: None, reason: reason.into() }
}

/// The `upload` property: presigned URLs recorded before each PUT, so a resumed job PUTs the
/// same object again instead of creating a second one.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct UploadRecord {
    md5: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    audio: Option<Presigned>,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<Presigned>,
    /// The audio's PUT was accepted: a retry for the sidecar does not send it again.
    #[serde(default, rename = "audioDone", skip_serializing_if = "std::ops::Not::not")]
    audio_done: bool,
    #[serde(default, rename = "metaDone", skip_serializing_if = "std::ops::Not::not")]
    meta_done: bool,
    /// The instance the sidecar names as `injectedBy`, fixed by the first attempt: an instance
    /// that takes the job over sends the same bytes, so the MD5 its presigned URL was made for
    /// still holds.
    #[serde(default, rename = "injectedBy", skip_serializing_if = "Option::is_none")]
    injected_by: Option<String>,
}

/// Removes the spool file and stops the lock refresher however the job ends.
struct Cleanup {
    spool: PathBuf,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(r) = self.refresher.take() {
            r.abort();
        }
        let _ = std::fs::remove_file(&self.spool);
    }
}

/// Marks a file as worked on by a job of this process until dropped.
struct BusyFile<'a> {
    exrp: &'a Exrp,
    file: String,
}

impl<'a> BusyFile<'a> {
    fn take(exrp: &'a Exrp, file: &str) -> Option<BusyFile<'a>> {
        let mut busy = exrp.busy_files.lock().unwrap_or_else(|p| p.into_inner());
        busy.insert(file.to_string()).then(|| BusyFile { exrp, file: file.to_string() })
    }
}

impl Drop for BusyFile<'_> {
    fn drop(&mut self) {
        self.exrp.busy_files.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.file);
    }
}

pub async fn process(exrp: &Arc<Exrp>, job: &Job) -> Outcome {
    let live = exrp.live();
    // Before the claim and the fetch: nothing to do until the tenant has an org.
    if let Some(waiting) = no_org(&live, &job.tenant) {
        return waiting;
    }
    let dav = &live.dav;
    // Two jobs can name one file (two mediaIds, one uri); they take turns, and `adopt` can
    // trust that a lock with our name that no job here holds is an earlier run's.
    let Some(_busy) = BusyFile::take(exrp, &job.file) else {
        return Outcome::Retry {
            delay: Some(Duration::from_secs(1)),
            reason: "claimed by another job of this instance (same file)".into(),
        };
    };
    let token = match claim(exrp, &live, job).await {
        Ok(token) => token,
        Err(outcome) => return outcome,
    };
    let lost = Arc::new(AtomicBool::new(false));
    let mut cleanup = Cleanup { spool: exrp.spool_dir.join(format!("{}.opus", job.id)), refresher: None };
    if let Some(t) = &token {
        cleanup.refresher = Some(spawn_refresher(exrp.clone(), job.file.clone(), t.clone(), lost.clone()));
    }
    let outcome = work(exrp, &live, job, token.as_deref(), &lost, &cleanup.spool).await;
    drop(cleanup);
    let outcome = expire(&live, job, outcome);
    if let Outcome::Dead { reason, .. } = &outcome {
        mark_dead(exrp, &live, job, token.as_deref(), reason).await;
    }
    match (&outcome, &token) {
        // DELETE removed the lock with the file.
        (Outcome::Done(_), _) | (_, None) => {}
        (_, Some(t)) => {
            if let Err(e) = dav.unlock(&job.file, t).await {
                tracing::debug!(file = %job.file, "unlock after an unfinished attempt: {e}");
            }
        }
    }
    // The token is forgotten with the outcome (`Queue::finish`, `Queue::retry_later`).
    outcome
}

/// Takes the recording's WebDAV lock, or resumes the one this instance held before a restart.
async fn claim(exrp: &Arc<Exrp>, live: &Arc<Live>, job: &Job) -> Result<Option<String>, Outcome> {
    let dav = &live.dav;
    let timeout = exrp.config.claim_timeout;
    if let Some(old) = &job.lock_token
        && dav.refresh(&job.file, old, timeout).await.is_ok()
    {
        return Ok(Some(old.clone()));
    }
    match dav.lock(&job.file, timeout, &exrp.config.instance).await {
        Ok(Lock::Held { token }) => keep_token(exrp, live, job, token).await.map(Some),
        Ok(Lock::Busy) => {
            if let Some(token) = adopt(exrp, live, job).await {
                return keep_token(exrp, live, job, token).await.map(Some);
            }
            // Locked means it is there: if it is gone later, the lock holder finished it.
            let id = job.id;
            let _ = exrp.queue.run(move |q| q.mark_seen(id)).await;
            Err(Outcome::Retry {
                delay: Some((timeout / 3).clamp(Duration::from_secs(1), Duration::from_secs(60))),
                reason: "claimed by another instance (the file is locked)".into(),
            })
        }
        Ok(Lock::Unsupported) => {
            if !exrp.lock_unsupported.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    store = %exrp.config.storage.url,
                    "the WebDAV store does not support LOCK (405/501): working without claims; \
                     two exrp instances could then work on one recording at the same time"
                );
            }
            Ok(None)
        }
        Ok(Lock::Missing) => Err(missing(exrp, live, job)),
        Err(e) => Err(store_error(e)),
    }
}

/// Records the claim's token in the queue, so that a restart refreshes it instead of waiting
/// for it to expire; a claim that cannot be recorded is given back.
async fn keep_token(exrp: &Exrp, live: &Live, job: &Job, token: String) -> Result<String, Outcome> {
    let saved = exrp
        .queue
        .run({
            let (id, token) = (job.id, token.clone());
            let claimed = format!("WebDAV lock held by {}", exrp.config.instance);
            move |q| {
                q.set_lock_token(id, Some(&token))?;
                q.note(id, "claimed", &claimed)
            }
        })
        .await;
    if let Err(e) = saved {
        let _ = live.dav.unlock(&job.file, &token).await;
        return Err(retry(e.to_string()));
    }
    Ok(token)
}

/// A 423 on a file no job of this process works on, whose lock names this instance as owner:
/// an earlier run was killed between its LOCK and recording the token (or its saved token
/// could not be refreshed and it locked anew). Waiting for that lock to expire would hold
/// the recording for `claim_timeout` as if another instance had it, so the lock is taken
/// over from lockdiscovery and refreshed. Sound only while every exrp has its own
/// `instance` name.
async fn adopt(exrp: &Exrp, live: &Live, job: &Job) -> Option<String> {
    let token = match live.dav.lock_owned_by(&job.file, &exrp.config.instance).await {
        Ok(token) => token?,
        Err(e) => {
            tracing::debug!(file = %job.file, "cannot read the lock on a busy file: {e}");
            return None;
        }
    };
    if let Err(e) = live.dav.refresh(&job.file, &token, exrp.config.claim_timeout).await {
        tracing::debug!(file = %job.file, "the lock an earlier run left could not be refreshed: {e}");
        return None;
    }
    tracing::info!(
        file = %job.file,
        instance = %exrp.config.instance,
        "resuming the claim an earlier run of this instance left on the file (stopped before it recorded the lock token)"
    );
    Some(token)
}

fn spawn_refresher(exrp: Arc<Exrp>, file: String, token: String, lost: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = exrp.config.claim_timeout / 3;
        let live = exrp.live();
        loop {
            tokio::time::sleep(every).await;
            match live.dav.refresh(&file, &token, exrp.config.claim_timeout).await {
                Ok(()) => {}
                Err(DavError::Unavailable(_)) => {}
                Err(e) => {
                    tracing::warn!(%file, "the claim on the recording was lost: {e}");
                    lost.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
    })
}

/// The file is not in the store. If we (or the store scan) saw it there, someone finished it;
/// if we never did, it may still come (or never will).
fn missing(exrp: &Exrp, live: &Live, job: &Job) -> Outcome {
    if job.seen || job.origin == "scan" {
        return Outcome::Done("elsewhere");
    }
    let age = Duration::from_millis(now_ms().saturating_sub(job.accepted_at_ms));
    if age >= live.retry.missing_timeout {
        return dead(format!(
            "{} is not in the WebDAV store {} (looked for {}s; never stored, or injected by another exrp instance)",
            job.file,
            exrp.config.storage.url,
            age.as_secs()
        ));
    }
    retry(format!("{} is not in the WebDAV store yet", job.file))
}

fn store_error(e: DavError) -> Outcome {
    match e {
        // exrp's transient_storage credentials: configuration, not this recording.
        DavError::Refused { status: status @ (401 | 403), detail } => {
            tracing::error!(
                status,
                "the WebDAV store refuses exrp's credentials: {detail} (fix [exrp.transient_storage] username/password, then reload exrp with SIGHUP)"
            );
            Outcome::Paused {
                delay: STORE_REFUSED_RECHECK,
                reason: format!("{PAUSED} the WebDAV store refuses exrp's credentials: HTTP {status} {detail}"),
            }
        }
        e => retry(store_reason(e)),
    }
}

/// How often a job the store refused exrp's credentials for is tried again.
const STORE_REFUSED_RECHECK: Duration = Duration::from_secs(30);

/// Turns a retry into a dead job once retry_window has passed (time spent paused or waiting
/// for configuration not counted).
fn expire(live: &Live, job: &Job, outcome: Outcome) -> Outcome {
    expire_after(live.retry.window, job, outcome)
}

/// How long the job has been trying: since it was accepted, without the time it spent paused
/// or waiting for configuration (what retry_window is measured against).
fn active_age(job: &Job) -> Duration {
    Duration::from_millis(now_ms().saturating_sub(job.accepted_at_ms).saturating_sub(job.paused_ms))
}

fn expire_after(window: Duration, job: &Job, outcome: Outcome) -> Outcome {
    let Outcome::Retry { reason, .. } = &outcome else { return outcome };
    let age = active_age(job);
    if age < window {
        return outcome;
    }
    Outcome::Dead { reason: format!("gave up after {}s (retry_window): {reason}", age.as_secs()), expired: true }
}

/// A dead job keeps its file in the store (for the operator) and says so on it, so no other
/// instance's scan takes it over and fails it again.
async fn mark_dead(exrp: &Exrp, live: &Live, job: &Job, token: Option<&str>, reason: &str) {
    let record = json!({ "at": now_ms(), "by": exrp.config.instance, "reason": reason }).to_string();
    match live.dav.set_props(&job.file, token, &[(PROP_DEAD, &record)], &[]).await {
        Ok(()) | Err(DavError::Missing) => {}
        Err(e) => tracing::warn!(file = %job.file, "cannot mark the dead job on its file: {e}"),
    }
}

/// Why a store request failed, for the job's reason; a refusal is also logged as an error.
fn store_reason(e: DavError) -> String {
    match e {
        DavError::Refused { status, detail } => {
            tracing::error!(status, "the WebDAV store refuses exrp: {detail} (check transient_storage credentials)");
            format!("WebDAV refused: HTTP {status} {detail}")
        }
        other => format!("WebDAV: {other}"),
    }
}

fn cloud_outcome(e: CloudError) -> Outcome {
    match e {
        CloudError::Credentials { reason, retry_in } => Outcome::Paused {
            delay: retry_in.max(Duration::from_secs(1)),
            reason: format!("{PAUSED} Genesys Cloud refuses the org's credentials or permissions: {reason}"),
        },
        CloudError::RateLimited(wait) => Outcome::Retry {
            delay: Some(wait),
            reason: format!("Genesys Cloud rate limit (429), retry after {}s", wait.as_secs()),
        },
        CloudError::Transient(why) => retry(format!("Genesys Cloud: {why}")),
        CloudError::UrlExpired => {
            Outcome::Retry { delay: Some(Duration::ZERO), reason: "presigned URL expired".into() }
        }
        CloudError::Rejected { status, body, correlation_id } => dead(format!(
            "Genesys Cloud refused the upload: HTTP {status} {body}{}",
            correlation_id.map(|c| format!(" (ININ-Correlation-Id {c})")).unwrap_or_default()
        )),
    }
}

async fn work(
    exrp: &Arc<Exrp>,
    live: &Arc<Live>,
    job: &Job,
    token: Option<&str>,
    lost: &AtomicBool,
    spool: &std::path::Path,
) -> Outcome {
    let dav = &live.dav;
    let info = match dav.stat(&job.file).await {
        Ok(Some(info)) => info,
        Ok(None) => return missing(exrp, live, job),
        Err(e) => return store_error(e),
    };
    if !job.seen {
        let id = job.id;
        if let Err(e) = exrp.queue.run(move |q| q.mark_seen(id)).await {
            return retry(e.to_string());
        }
    }
    let already_uploaded = info.props.contains_key(PROP_DONE) || job.outcome.as_deref() == Some("uploaded");
    let mut upload_key = job.upload_key.clone();
    if !already_uploaded {
        if !info.props.contains_key(PROP_JOB) {
            // Recorded on the file, the job is visible to every instance's scan.
            let record = job_record(&exrp.config.instance, &job.spec, job.accepted_at_ms);
            if let Err(e) = dav.set_props(&job.file, token, &[(PROP_JOB, &record)], &[]).await {
                return store_error(e);
            }
        }
        let spec: serde_json::Value = serde_json::from_str(&job.spec).unwrap_or_default();
        let expected = spec.pointer("/recording/size").and_then(serde_json::Value::as_u64).filter(|&s| s > 0);
        let started = Instant::now();
        let max = expected.map_or(MAX_RECORDING, |s| s + 1);
        let fetched = match dav.fetch(&job.file, spool, max, IN_MEMORY, exrp.config.transfer_timeout).await {
            Ok(f) => f,
            Err(DavError::Missing) => return missing(exrp, live, job),
            Err(DavError::TooLarge(max)) => {
                return dead(format!("the file in WebDAV is larger than {}", max.saturating_sub(1)));
            }
            Err(e) => return store_error(e),
        };
        if let Some(size) = expected
            && size != fetched.len
        {
            return dead(format!("the file in WebDAV has {} bytes, the metadata says {size}", fetched.len));
        }
        let (id, fetched_note) = (job.id, format!("{} bytes from the store", fetched.len));
        let _ = exrp.queue.run(move |q| q.note(id, "fetched", &fetched_note)).await;
        let check = match &fetched.body {
            // At most IN_MEMORY bytes: a walk over the pages costs less than a trip to the pool.
            FetchedBody::Memory(bytes) => Ok(super::ogg::check(&bytes[..])),
            FetchedBody::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || super::ogg::check_file(&path)).await
            }
        };
        match check {
            Ok(Ok(_)) => {}
            Ok(Err(why)) => return dead(format!("not a whole Ogg/Opus recording: {why}")),
            Err(e) => return retry(format!("check failed: {e}")),
        }
        let audio = &fetched.body;
        if lost.load(Ordering::Relaxed) {
            return retry("the claim was lost before the upload");
        }
        let metadata = metadata_json(exrp, job, &spec);
        let key = match &live.sink {
            Sink::Local(local) => {
                let (tenant, file, audio, local_dir) =
                    (job.tenant.clone(), job.file.clone(), audio.clone(), local.dir.clone());
                let meta = metadata.clone();
                let owner = live.clone();
                let written = tokio::task::spawn_blocking(move || match &owner.sink {
                    Sink::Local(l) => l.deliver(&tenant, &file, &audio, &meta),
                    Sink::Cloud(_) => Err(std::io::Error::other("not a local sink")),
                })
                .await;
                match written {
                    Ok(Ok(p)) => p.strip_prefix(&local_dir).unwrap_or(&p).display().to_string(),
                    Ok(Err(e)) => return retry(format!("cannot write to the local sink: {e}")),
                    Err(e) => return retry(format!("local sink task failed: {e}")),
                }
            }
            Sink::Cloud(cloud) => {
                match upload_cloud(
                    exrp,
                    live,
                    cloud,
                    job,
                    token,
                    &info.props,
                    audio,
                    fetched.len,
                    &fetched.md5,
                    &metadata,
                )
                .await
                {
                    Ok(key) => key,
                    Err(outcome) => return outcome,
                }
            }
        };
        exrp.metrics.upload_seconds.observe(started.elapsed());
        exrp.metrics.bytes.add(fetched.len);
        // A restart of this instance skips the upload.
        let id = job.id;
        let key_for_queue = key.clone();
        if let Err(e) = exrp.queue.run(move |q| q.mark_uploaded(id, &key_for_queue)).await {
            tracing::error!(file = %job.file, "uploaded, but the queue cannot record it: {e}");
        }
        tracing::info!(
            call_uuid = %job.call_uuid,
            media_id = %job.media_id,
            file = %job.file,
            bytes = fetched.len,
            upload_key = %key,
            ms = started.elapsed().as_millis() as u64,
            "recording injected"
        );
        upload_key = Some(key);
    }
    // The upload is recorded locally; the DELETE follows at once. Only when it fails is the
    // upload also recorded on the file (`done`), for another instance that takes the job over
    // if this one never comes back: marking it first would close no window the DELETE leaves
    // open (each is one request after the upload), and costs a write per recording.
    match dav.delete(&job.file, token).await {
        Ok(Deleted::Deleted) | Ok(Deleted::Absent) => {
            Outcome::Done(if already_uploaded { "deleted" } else { "uploaded" })
        }
        Err(e) => {
            let reason = format!("uploaded; delete pending: {}", store_reason(e));
            if !info.props.contains_key(PROP_DONE) {
                let done = json!({ "at": now_ms(), "by": exrp.config.instance, "uploadKey": upload_key }).to_string();
                if let Err(e) = dav.set_props(&job.file, token, &[(PROP_DONE, &done)], &[]).await {
                    tracing::warn!(file = %job.file, "uploaded; cannot mark it done in the store yet: {e}");
                }
            }
            // The upload is recorded: the retry only deletes.
            retry(reason)
        }
    }
}

/// Store requests `publish` makes at once, all interaction-ends together.
pub const PUBLISH_AT_ONCE: usize = 16;

/// The `job` property: the job's spec plus when and where it was accepted.
pub fn job_record(instance: &str, spec: &str, accepted_at_ms: u64) -> String {
    let mut spec: serde_json::Value = serde_json::from_str(spec).unwrap_or_else(|_| json!({}));
    if let Some(obj) = spec.as_object_mut() {
        obj.insert("acceptedAt".into(), json!(accepted_at_ms));
        obj.insert("acceptedBy".into(), json!(instance));
    }
    spec.to_string()
}

/// Records accepted jobs on their files, so that if this instance dies before it gets to them,
/// another one's scan finds them. Returns how many could not be recorded now (the store did
/// not answer in time or failed): the interaction-end is then not acknowledged, so that excp
/// sends it again (to this instance or another). A file not in the store yet has nothing to
/// record on (its job waits here, as `missing_timeout` says); a locked one is being worked on.
pub async fn publish(exrp: Arc<Exrp>, jobs: Vec<(super::queue::NewJob, Option<String>)>) -> usize {
    use futures_util::StreamExt;
    // Bounded both ways: at most PUBLISH_AT_ONCE requests at once (`Exrp::publishing`, shared
    // by every interaction-end), and the 202 waits at most `limit` for all of them (a huge
    // interaction-end or a slow store must not hold the reply).
    let limit = exrp.config.request_timeout.min(Duration::from_secs(5));
    let deadline = tokio::time::Instant::now() + limit;
    let total = jobs.len();
    let live = exrp.live();
    let mut results = futures_util::stream::iter(jobs.into_iter().map(|(job, token)| {
        let (exrp, live) = (exrp.clone(), live.clone());
        async move {
            let record = job_record(&exrp.config.instance, &job.spec, job.accepted_at_ms);
            let props = [(PROP_JOB, record.as_str())];
            let set = async {
                let _permit = exrp.publishing.acquire().await;
                // Under this instance's own claim when a worker here holds one.
                live.dav.set_props(&job.file, token.as_deref(), &props, &[]).await
            };
            match tokio::time::timeout_at(deadline, set).await {
                Ok(Ok(())) => Ok(Some((job.call_uuid.clone(), job.media_id.clone()))),
                // Locked: another instance is working on the file, so it is there.
                Ok(Err(DavError::Locked)) => Ok(Some((job.call_uuid.clone(), job.media_id.clone()))),
                Ok(Err(DavError::Missing)) => Ok(None),
                Ok(Err(e)) => {
                    tracing::debug!(file = %job.file, "job not recorded on the file yet: {e}");
                    Err(())
                }
                Err(_) => Err(()),
            }
        }
    }))
    .buffer_unordered(PUBLISH_AT_ONCE);
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut answered = 0;
    let mut failed = 0;
    while let Ok(Some(result)) = tokio::time::timeout_at(deadline, results.next()).await {
        answered += 1;
        match result {
            Ok(published) => seen.extend(published),
            Err(()) => failed += 1,
        }
    }
    drop(results);
    // Those the deadline cut off failed too.
    let failed = failed + (total - answered);
    if failed > 0 {
        tracing::warn!(
            published = seen.len(),
            failed,
            jobs = total,
            "jobs not recorded in the store yet: the interaction-end is not acknowledged, so it comes again"
        );
    }
    // The file was there: if it is gone later, someone finished it.
    if let Err(e) = exrp.queue.run(move |q| q.mark_seen_keys(&seen)).await {
        tracing::debug!("cannot mark published jobs as seen: {e}");
    }
    failed
}

/// What travels with the recording: the call, the recording as MCP described it, STA.
fn metadata_json(exrp: &Exrp, job: &Job, spec: &serde_json::Value) -> Vec<u8> {
    let call = spec.get("call").cloned().unwrap_or_else(|| json!({}));
    let recording = spec.get("recording").cloned().unwrap_or_else(|| json!({}));
    let meta = json!({
        "callUUID": job.call_uuid,
        "mediaId": job.media_id,
        "tenant": job.tenant,
        "conversationId": call.get("conversationId"),
        "startTime": recording.get("startTime").or_else(|| call.get("startTime")),
        "stopTime": recording.get("stopTime").or_else(|| call.get("endTime")),
        "durationMs": recording.get("durationMs"),
        "sta": call.get("sta"),
        "source": call.get("source"),
        "recording": recording,
        "injectedBy": exrp.config.instance,
    });
    serde_json::to_vec_pretty(&meta).unwrap_or_default()
}

/// The sidecar as `metadata_json` made it, naming `by` as the injecting instance (its keys are
/// sorted, so the bytes are those `by` made).
fn with_injected_by(metadata: &[u8], by: &str) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(metadata) {
        Ok(mut meta) => {
            meta["injectedBy"] = json!(by);
            serde_json::to_vec_pretty(&meta).unwrap_or_else(|_| metadata.to_vec())
        }
        Err(_) => metadata.to_vec(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn upload_cloud(
    exrp: &Arc<Exrp>,
    live: &Live,
    cloud: &CloudSink,
    job: &Job,
    token: Option<&str>,
    props: &std::collections::BTreeMap<String, String>,
    audio: &FetchedBody,
    len: u64,
    md5: &[u8; 16],
    metadata: &[u8],
) -> Result<String, Outcome> {
    use base64::Engine;
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let Some(client) = cloud.client(&job.tenant) else {
        return Err(no_org(live, &job.tenant).unwrap_or_else(|| retry("no EX Org for the tenant")));
    };
    let name = clean_file_name(&job.file);
    let md5_b64 = b64(md5);
    let mut record: UploadRecord = props
        .get(PROP_UPLOAD)
        .and_then(|v| serde_json::from_str::<UploadRecord>(v).ok())
        .filter(|r| r.md5 == md5_b64)
        .unwrap_or_else(|| UploadRecord { md5: md5_b64.clone(), ..UploadRecord::default() });
    let by = record.injected_by.get_or_insert_with(|| exrp.config.instance.clone()).clone();
    let rewritten;
    let metadata = if by == exrp.config.instance {
        metadata
    } else {
        rewritten = with_injected_by(metadata, &by);
        &rewritten[..]
    };
    let meta_md5 = {
        use ::md5::Digest;
        b64(&::md5::Md5::digest(metadata))
    };
    let mut audio_key = String::new();
    let parts: &[bool] = if cloud.sidecar { &[true, false] } else { &[true] };
    for &is_audio in parts {
        let sent = upload_part(
            exrp,
            live,
            cloud,
            client,
            job,
            token,
            &mut record,
            is_audio,
            &name,
            audio,
            len,
            metadata,
            &md5_b64,
            &meta_md5,
        )
        .await;
        match sent {
            Ok(key) if is_audio => audio_key = key,
            Ok(_) => {}
            Err(outcome) if is_audio => return Err(outcome),
            // The audio is in Genesys Cloud: the sidecar can delay the job, never kill it.
            Err(outcome) => sidecar_failed(exrp, live, job, outcome)?,
        }
    }
    Ok(audio_key)
}

/// How often a sidecar that fails for a passing reason is tried within one attempt.
const SIDECAR_TRIES: u32 = 3;

/// The metadata sidecar failed after the audio was accepted. A refusal (any 4xx) gives the
/// sidecar up: the recording is delivered without it, logged and counted. A passing fault
/// (5xx, 429, network) is retried by the job (which then PUTs only the sidecar) until
/// retry_window, after which the sidecar is given up too; a job never dies of its sidecar.
fn sidecar_failed(exrp: &Exrp, live: &Live, job: &Job, outcome: Outcome) -> Result<(), Outcome> {
    match outcome {
        // Configuration faults do not count toward retry_window: waiting costs nothing.
        Outcome::Paused { .. } | Outcome::Waiting(_) => return Err(outcome),
        // A minute of margin: the retry must not be the one that crosses retry_window.
        Outcome::Retry { .. } if active_age(job) + Duration::from_secs(60) < live.retry.window => return Err(outcome),
        _ => {}
    }
    let why = match outcome {
        Outcome::Retry { reason, .. } | Outcome::Paused { reason, .. } | Outcome::Waiting(reason) => reason,
        Outcome::Dead { reason, .. } => reason,
        Outcome::Done(how) => how.to_string(),
    };
    exrp.metrics.sidecars_given_up.inc();
    tracing::error!(
        file = %job.file,
        call_uuid = %job.call_uuid,
        "the recording is in Genesys Cloud, its metadata sidecar is not and will not be: {why}"
    );
    Ok(())
}

/// Presigns (or reuses the recorded URL) and PUTs one part, the audio or its sidecar; a URL
/// that expires is presigned anew (at most three times).
#[allow(clippy::too_many_arguments)]
async fn upload_part(
    exrp: &Exrp,
    live: &Live,
    cloud: &CloudSink,
    client: &crate::cloud::CloudClient,
    job: &Job,
    token: Option<&str>,
    record: &mut UploadRecord,
    is_audio: bool,
    name: &str,
    audio: &FetchedBody,
    len: u64,
    metadata: &[u8],
    md5_b64: &str,
    meta_md5: &str,
) -> Result<String, Outcome> {
    if is_audio && record.audio_done {
        return Ok(record.audio.as_ref().map(|p| p.upload_key.clone()).unwrap_or_default());
    }
    if !is_audio && record.meta_done {
        return Ok(String::new());
    }
    let mut fresh_urls = 0;
    let mut passing_faults = 0;
    loop {
        let slot = if is_audio { &mut record.audio } else { &mut record.meta };
        let now_s = now_ms() / 1000;
        let reusable = slot.as_ref().filter(|p| p.expires_at > now_s + 30).cloned();
        let presigned = match reusable {
            Some(p) => p,
            None => {
                fresh_urls += 1;
                if fresh_urls > 3 {
                    return Err(retry("presigned URLs keep expiring before the upload"));
                }
                let (file_name, content_md5, content_type) = if is_audio {
                    (name.to_string(), md5_b64, "audio/opus")
                } else {
                    (format!("{name}.json"), meta_md5, "application/json")
                };
                let p = client
                    .presign(&file_name, content_md5, content_type, cloud.signed_url_timeout)
                    .await
                    .map_err(cloud_outcome)?;
                *slot = Some(p.clone());
                let text = serde_json::to_string(&record).unwrap_or_default();
                live.dav.set_props(&job.file, token, &[(PROP_UPLOAD, &text)], &[]).await.map_err(store_error)?;
                if is_audio {
                    let (id, key) = (job.id, p.upload_key.clone());
                    let detail = match &p.correlation_id {
                        Some(c) => format!("upload key {key}, ININ-Correlation-Id {c}"),
                        None => format!("upload key {key}"),
                    };
                    exrp.queue
                        .run(move |q| q.set_upload_key(id, &key, &detail))
                        .await
                        .map_err(|e| retry(e.to_string()))?;
                }
                p
            }
        };
        let sent = if is_audio {
            match audio {
                FetchedBody::Memory(bytes) => {
                    client.upload_bytes(&presigned, bytes.clone(), exrp.config.transfer_timeout).await
                }
                FetchedBody::File(path) => {
                    client.upload_file(&presigned, path, len, exrp.config.transfer_timeout).await
                }
            }
        } else {
            client.upload_bytes(&presigned, bytes::Bytes::copy_from_slice(metadata), exrp.config.transfer_timeout).await
        };
        match sent {
            Ok(()) => {
                if is_audio {
                    // A retry for the sidecar's sake does not PUT the audio again.
                    record.audio_done = true;
                } else {
                    record.meta_done = true;
                }
                // The last part needs no record: the DELETE follows (and `done` if it fails).
                let last = !is_audio || !cloud.sidecar;
                let text = serde_json::to_string(&record).unwrap_or_default();
                if !last && let Err(e) = live.dav.set_props(&job.file, token, &[(PROP_UPLOAD, &text)], &[]).await {
                    tracing::debug!(file = %job.file, "cannot record the finished part on the file: {e}");
                }
                return Ok(presigned.upload_key);
            }
            Err(CloudError::UrlExpired) => {
                let slot = if is_audio { &mut record.audio } else { &mut record.meta };
                *slot = None;
            }
            // The sidecar is small: a passing fault is worth a second try at once (a 429's
            // wait is kept by the client).
            Err(CloudError::Transient(_) | CloudError::RateLimited(_))
                if !is_audio && passing_faults + 1 < SIDECAR_TRIES =>
            {
                passing_faults += 1;
                tokio::time::sleep(Duration::from_secs(passing_faults as u64)).await;
            }
            Err(e) => return Err(cloud_outcome(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_sidecar_named_for_another_instance_has_the_bytes_it_made() {
        let made = |by: &str| {
            serde_json::to_vec_pretty(&json!({
                "callUUID": "C1", "mediaId": "C1_0.opus", "injectedBy": by,
                "recording": {"startTime": "2026-01-01T10:00:00.000Z", "parameters": {"z": 1, "a": [1, 2]}},
            }))
            .unwrap()
        };
        assert_eq!(with_injected_by(&made("exrp2"), "exrp1"), made("exrp1"));
        assert_eq!(with_injected_by(b"not json", "exrp1"), b"not json");
    }

    use super::*;

    fn job(age: Duration, paused: Duration) -> Job {
        Job {
            id: 1,
            call_uuid: "C".into(),
            media_id: "m".into(),
            file: "C_m.opus".into(),
            tenant: "t".into(),
            state: super::super::queue::State::Working,
            origin: "post",
            attempts: 3,
            accepted_at_ms: now_ms() - age.as_millis() as u64,
            next_at_ms: 0,
            updated_at_ms: 0,
            seen: true,
            upload_key: None,
            outcome: None,
            reason: None,
            spec: "{}".into(),
            lock_token: None,
            paused_ms: paused.as_millis() as u64,
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn retry_window_does_not_count_time_paused_for_configuration() {
        let window = 72 * HOUR;
        // Four days old, two of them paused for a refused secret: still retried.
        let outcome = expire_after(window, &job(96 * HOUR, 48 * HOUR), retry("Genesys Cloud: 503"));
        assert!(matches!(outcome, Outcome::Retry { .. }), "{outcome:?}");
        // Four days of passing faults: dead, and said to be expired.
        match expire_after(window, &job(96 * HOUR, Duration::ZERO), retry("Genesys Cloud: 503")) {
            Outcome::Dead { reason, expired: true } => assert!(reason.contains("retry_window"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // Pauses and waits themselves never expire.
        let paused = Outcome::Paused { delay: HOUR, reason: "paused: x".into() };
        assert!(matches!(expire_after(window, &job(999 * HOUR, Duration::ZERO), paused), Outcome::Paused { .. }));
        let waiting = Outcome::Waiting("no org".into());
        assert!(matches!(expire_after(window, &job(999 * HOUR, Duration::ZERO), waiting), Outcome::Waiting(_)));
    }

    #[test]
    fn a_refused_credential_pauses_and_any_other_refusal_kills() {
        let paused =
            cloud_outcome(CloudError::Credentials { reason: "token: HTTP 401".into(), retry_in: Duration::ZERO });
        match paused {
            Outcome::Paused { delay, reason } => {
                assert_eq!(delay, Duration::from_secs(1));
                assert!(reason.starts_with(PAUSED), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let refused = cloud_outcome(CloudError::Rejected { status: 400, body: "bad".into(), correlation_id: None });
        assert!(matches!(refused, Outcome::Dead { expired: false, .. }));
        let store = store_error(DavError::Refused { status: 403, detail: "Forbidden".into() });
        assert!(matches!(store, Outcome::Paused { .. }), "{store:?}");
        let store = store_error(DavError::Refused { status: 405, detail: "Method Not Allowed".into() });
        assert!(matches!(store, Outcome::Retry { .. }), "{store:?}");
    }

    #[test]
    fn a_rate_limit_waits_its_retry_after_an_expired_url_presigns_at_once_and_a_5xx_backs_off() {
        match cloud_outcome(CloudError::RateLimited(Duration::from_secs(7))) {
            Outcome::Retry { delay: Some(d), reason } => {
                assert_eq!(d, Duration::from_secs(7));
                assert!(reason.contains("429"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(cloud_outcome(CloudError::UrlExpired), Outcome::Retry { delay: Some(Duration::ZERO), .. }));
        assert!(matches!(cloud_outcome(CloudError::Transient("502".into())), Outcome::Retry { delay: None, .. }));
        let dead = cloud_outcome(CloudError::Rejected {
            status: 413,
            body: "too big".into(),
            correlation_id: Some("abc".into()),
        });
        assert!(
            matches!(&dead, Outcome::Dead { reason, .. } if reason.contains("ININ-Correlation-Id abc")),
            "{dead:?}"
        );
    }

    /// The `upload` property is read back by another instance, maybe of another release: its
    /// names are fixed and the done flags are left out until set.
    #[test]
    fn the_upload_record_keeps_its_property_names_and_round_trips() {
        let presigned = Presigned {
            url: "https://s3.example/x?sig=1".into(),
            upload_key: "k1".into(),
            headers: [("Content-Type".to_string(), "audio/ogg".to_string())].into(),
            expires_at: 1_900_000_000,
            correlation_id: Some("c-1".into()),
        };
        let fresh = UploadRecord { md5: "abc".into(), audio: Some(presigned), ..Default::default() };
        let text = serde_json::to_string(&fresh).unwrap();
        assert!(!text.contains("audioDone") && !text.contains("meta"), "{text}");
        assert!(text.contains("\"uploadKey\":\"k1\"") && text.contains("\"expiresAt\":1900000000"), "{text}");
        let done = UploadRecord { audio_done: true, meta_done: true, ..fresh };
        let text = serde_json::to_string(&done).unwrap();
        assert!(text.contains("\"audioDone\":true") && text.contains("\"metaDone\":true"), "{text}");
        let back: UploadRecord = serde_json::from_str(&text).unwrap();
        assert!(back.audio_done && back.meta_done && back.audio.is_some_and(|a| a.upload_key == "k1"));
        // An older record without the flags reads as not done.
        let old: UploadRecord = serde_json::from_str("{\"md5\":\"abc\"}").unwrap();
        assert!(!old.audio_done && !old.meta_done && old.audio.is_none());
    }

    #[test]
    fn the_job_record_adds_when_and_where_it_was_accepted() {
        let record: serde_json::Value =
            serde_json::from_str(&job_record("exrp-a", r#"{"callUUID":"C","mediaId":"m"}"#, 42)).unwrap();
        assert_eq!(record, json!({ "callUUID": "C", "mediaId": "m", "acceptedAt": 42, "acceptedBy": "exrp-a" }));
        // A spec that does not parse still says when and where.
        assert_eq!(job_record("exrp-a", "not json", 42), r#"{"acceptedAt":42,"acceptedBy":"exrp-a"}"#);
    }
}
