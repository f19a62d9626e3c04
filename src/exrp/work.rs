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

use super::Exrp;
use super::queue::{Job, now_ms};
use super::sink::{CloudSink, Sink};
use crate::cloud::{CloudError, Presigned, clean_file_name};
use crate::dav_client::{DavError, Deleted, Lock};

/// The dead properties a job keeps on its recording (namespace `dav_client::NS`).
pub const PROP_JOB: &str = "job";
pub const PROP_UPLOAD: &str = "upload";
pub const PROP_DONE: &str = "done";
pub const PROP_DEAD: &str = "dead";

/// The largest recording fetched when the metadata gives no size.
const MAX_RECORDING: u64 = 4 << 30;

#[derive(Debug)]
pub enum Outcome {
    /// Finished: `uploaded`, `deleted` (an earlier upload's file removed now) or `elsewhere`.
    Done(&'static str),
    /// Not now: after `delay` (None: the job's backoff), for `reason`.
    Retry {
        delay: Option<Duration>,
        reason: String,
    },
    Dead(String),
    /// Cannot go anywhere until the configuration changes (a tenant without an EX Org): asked
    /// again later, never dead, never uploaded elsewhere.
    Waiting(String),
}

/// In the reason of every job waiting for its tenant's org (`Queue::wake_waiting` finds them).
pub const NO_ORG: &str = "has no EX Org";

/// Why a job of `tenant` cannot be uploaded with this configuration, if it cannot.
pub fn no_org(exrp: &Exrp, tenant: &str) -> Option<Outcome> {
    match &exrp.sink {
        Sink::Cloud(cloud) if cloud.client(tenant).is_none() => Some(Outcome::Waiting(format!(
            "tenant {tenant:?} {NO_ORG}: add [exrp.genesys_cloud.tenants.{tenant}] and restart exrp"
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
    // Before the claim and the fetch: nothing to do until the tenant has an org.
    if let Some(waiting) = no_org(exrp, &job.tenant) {
        return waiting;
    }
    let dav = &exrp.dav;
    // Two jobs can name one file (two mediaIds, one uri); they take turns, and `adopt` can
    // trust that a lock with our name that no job here holds is an earlier run's.
    let Some(_busy) = BusyFile::take(exrp, &job.file) else {
        return Outcome::Retry {
            delay: Some(Duration::from_secs(1)),
            reason: "claimed by another job of this instance (same file)".into(),
        };
    };
    let token = match claim(exrp, job).await {
        Ok(token) => token,
        Err(outcome) => return outcome,
    };
    let lost = Arc::new(AtomicBool::new(false));
    let mut cleanup = Cleanup { spool: exrp.spool_dir.join(format!("{}.opus", job.id)), refresher: None };
    if let Some(t) = &token {
        cleanup.refresher = Some(spawn_refresher(exrp.clone(), job.file.clone(), t.clone(), lost.clone()));
    }
    let outcome = work(exrp, job, token.as_deref(), &lost, &cleanup.spool).await;
    drop(cleanup);
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
async fn claim(exrp: &Arc<Exrp>, job: &Job) -> Result<Option<String>, Outcome> {
    let dav = &exrp.dav;
    let timeout = exrp.config.claim_timeout;
    if let Some(old) = &job.lock_token
        && dav.refresh(&job.file, old, timeout).await.is_ok()
    {
        return Ok(Some(old.clone()));
    }
    match dav.lock(&job.file, timeout, &exrp.config.instance).await {
        Ok(Lock::Held { token }) => keep_token(exrp, job, token).await.map(Some),
        Ok(Lock::Busy) => {
            if let Some(token) = adopt(exrp, job).await {
                return keep_token(exrp, job, token).await.map(Some);
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
        Ok(Lock::Missing) => Err(missing(exrp, job)),
        Err(e) => Err(store_error(e)),
    }
}

/// Records the claim's token in the queue, so that a restart refreshes it instead of waiting
/// for it to expire; a claim that cannot be recorded is given back.
async fn keep_token(exrp: &Exrp, job: &Job, token: String) -> Result<String, Outcome> {
    let saved = exrp
        .queue
        .run({
            let (id, token) = (job.id, token.clone());
            move |q| q.set_lock_token(id, Some(&token))
        })
        .await;
    if let Err(e) = saved {
        let _ = exrp.dav.unlock(&job.file, &token).await;
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
async fn adopt(exrp: &Exrp, job: &Job) -> Option<String> {
    let token = match exrp.dav.lock_owned_by(&job.file, &exrp.config.instance).await {
        Ok(token) => token?,
        Err(e) => {
            tracing::debug!(file = %job.file, "cannot read the lock on a busy file: {e}");
            return None;
        }
    };
    if let Err(e) = exrp.dav.refresh(&job.file, &token, exrp.config.claim_timeout).await {
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
        loop {
            tokio::time::sleep(every).await;
            match exrp.dav.refresh(&file, &token, exrp.config.claim_timeout).await {
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
fn missing(exrp: &Exrp, job: &Job) -> Outcome {
    if job.seen || job.origin == "scan" {
        return Outcome::Done("elsewhere");
    }
    let age = Duration::from_millis(now_ms().saturating_sub(job.accepted_at_ms));
    if age >= exrp.config.missing_timeout {
        return Outcome::Dead(format!(
            "{} is not in the WebDAV store {} (looked for {}s; never stored, or injected by another exrp instance)",
            job.file,
            exrp.config.storage.url,
            age.as_secs()
        ));
    }
    retry(format!("{} is not in the WebDAV store yet", job.file))
}

fn store_error(e: DavError) -> Outcome {
    retry(store_reason(e))
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
        CloudError::RateLimited(wait) => Outcome::Retry {
            delay: Some(wait),
            reason: format!("Genesys Cloud rate limit (429), retry after {}s", wait.as_secs()),
        },
        CloudError::Transient(why) => retry(format!("Genesys Cloud: {why}")),
        CloudError::UrlExpired => {
            Outcome::Retry { delay: Some(Duration::ZERO), reason: "presigned URL expired".into() }
        }
        CloudError::Rejected { status, body, correlation_id } => Outcome::Dead(format!(
            "Genesys Cloud refused the upload: HTTP {status} {body}{}",
            correlation_id.map(|c| format!(" (ININ-Correlation-Id {c})")).unwrap_or_default()
        )),
    }
}

async fn work(exrp: &Arc<Exrp>, job: &Job, token: Option<&str>, lost: &AtomicBool, spool: &std::path::Path) -> Outcome {
    let dav = &exrp.dav;
    let info = match dav.stat(&job.file).await {
        Ok(Some(info)) => info,
        Ok(None) => return missing(exrp, job),
        Err(e) => return store_error(e),
    };
    if !job.seen {
        let id = job.id;
        if let Err(e) = exrp.queue.run(move |q| q.mark_seen(id)).await {
            return retry(e.to_string());
        }
    }
    let already_uploaded = info.props.contains_key(PROP_DONE) || job.outcome.as_deref() == Some("uploaded");
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
        let fetched = match dav
            .fetch(&job.file, spool, expected.map_or(MAX_RECORDING, |s| s + 1), exrp.config.transfer_timeout)
            .await
        {
            Ok(f) => f,
            Err(DavError::Missing) => return missing(exrp, job),
            Err(DavError::TooLarge(max)) => {
                return dead(exrp, job, token, format!("the file in WebDAV is larger than {}", max.saturating_sub(1)))
                    .await;
            }
            Err(e) => return store_error(e),
        };
        if let Some(size) = expected
            && size != fetched.len
        {
            return dead(
                exrp,
                job,
                token,
                format!("the file in WebDAV has {} bytes, the metadata says {size}", fetched.len),
            )
            .await;
        }
        let check = {
            let path = spool.to_path_buf();
            tokio::task::spawn_blocking(move || super::ogg::check_file(&path)).await
        };
        match check {
            Ok(Ok(_)) => {}
            Ok(Err(why)) => return dead(exrp, job, token, format!("not a whole Ogg/Opus recording: {why}")).await,
            Err(e) => return retry(format!("check failed: {e}")),
        }
        if lost.load(Ordering::Relaxed) {
            return retry("the claim was lost before the upload");
        }
        let metadata = metadata_json(exrp, job, &spec);
        let key = match &exrp.sink {
            Sink::Local(local) => {
                let (tenant, file, path, local_dir) =
                    (job.tenant.clone(), job.file.clone(), spool.to_path_buf(), local.dir.clone());
                let meta = metadata.clone();
                let owner = exrp.clone();
                let written = tokio::task::spawn_blocking(move || match &owner.sink {
                    Sink::Local(l) => l.deliver(&tenant, &file, &path, &meta),
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
                match upload_cloud(exrp, cloud, job, token, &info.props, spool, fetched.len, &fetched.md5, &metadata)
                    .await
                {
                    Ok(key) => key,
                    Err(outcome) => return outcome,
                }
            }
        };
        exrp.metrics.upload_seconds.observe(started.elapsed());
        exrp.metrics.bytes.add(fetched.len);
        // Locally first (a restart of this instance skips the upload), then on the file (any
        // instance skips it).
        let id = job.id;
        let key_for_queue = key.clone();
        if let Err(e) = exrp.queue.run(move |q| q.mark_uploaded(id, &key_for_queue)).await {
            tracing::error!(file = %job.file, "uploaded, but the queue cannot record it: {e}");
        }
        let done = json!({ "at": now_ms(), "by": exrp.config.instance, "uploadKey": key }).to_string();
        if let Err(e) = dav.set_props(&job.file, token, &[(PROP_DONE, &done)], &[]).await {
            tracing::warn!(file = %job.file, "uploaded; cannot mark it done in the store yet: {e}");
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
    }
    match dav.delete(&job.file, token).await {
        Ok(Deleted::Deleted) | Ok(Deleted::Absent) => {
            Outcome::Done(if already_uploaded { "deleted" } else { "uploaded" })
        }
        // The upload is recorded: the retry only deletes.
        Err(e) => retry(format!("uploaded; delete pending: {}", store_reason(e))),
    }
}

/// A dead job keeps its file in the store (for the operator) and says so on it, so other
/// instances' scans leave it alone.
async fn dead(exrp: &Exrp, job: &Job, token: Option<&str>, reason: String) -> Outcome {
    let record = json!({ "at": now_ms(), "by": exrp.config.instance, "reason": reason }).to_string();
    if let Err(e) = exrp.dav.set_props(&job.file, token, &[(PROP_DEAD, &record)], &[]).await {
        tracing::debug!(file = %job.file, "cannot mark the dead job on the file: {e}");
    }
    Outcome::Dead(reason)
}

/// The `job` property: the job's spec plus when and where it was accepted.
pub fn job_record(instance: &str, spec: &str, accepted_at_ms: u64) -> String {
    let mut spec: serde_json::Value = serde_json::from_str(spec).unwrap_or_else(|_| json!({}));
    if let Some(obj) = spec.as_object_mut() {
        obj.insert("acceptedAt".into(), json!(accepted_at_ms));
        obj.insert("acceptedBy".into(), json!(instance));
    }
    spec.to_string()
}

/// Records freshly accepted jobs on their files, so that if this instance dies before it gets
/// to them, another one's scan finds them. Best effort: a job not published here is published
/// by its first attempt.
pub async fn publish(exrp: Arc<Exrp>, jobs: Vec<super::queue::NewJob>) {
    use futures_util::StreamExt;
    // Bounded both ways: at most 16 requests at once, and the 202 waits at most `limit` for
    // all of them (a huge interaction-end or a slow store must not hold the reply).
    let limit = exrp.config.request_timeout.min(Duration::from_secs(5));
    let deadline = tokio::time::Instant::now() + limit;
    let total = jobs.len();
    let mut results = futures_util::stream::iter(jobs.into_iter().map(|job| {
        let exrp = exrp.clone();
        async move {
            let record = job_record(&exrp.config.instance, &job.spec, job.accepted_at_ms);
            let props = [(PROP_JOB, record.as_str())];
            let set = exrp.dav.set_props(&job.file, None, &props, &[]);
            match tokio::time::timeout_at(deadline, set).await {
                Ok(Ok(())) => Some((job.call_uuid.clone(), job.media_id.clone())),
                // Locked: another instance is working on the file, so it is there.
                Ok(Err(DavError::Locked)) => Some((job.call_uuid.clone(), job.media_id.clone())),
                Ok(Err(e)) => {
                    tracing::debug!(file = %job.file, "job not recorded on the file yet: {e}");
                    None
                }
                Err(_) => None,
            }
        }
    }))
    .buffer_unordered(16);
    let mut seen: Vec<(String, String)> = Vec::new();
    while let Ok(Some(result)) = tokio::time::timeout_at(deadline, results.next()).await {
        seen.extend(result);
    }
    drop(results);
    if seen.len() < total {
        tracing::info!(
            published = seen.len(),
            jobs = total,
            "some jobs are not recorded in the store yet (their first attempt will)"
        );
    }
    // The file was there: if it is gone later, someone finished it.
    if let Err(e) = exrp.queue.run(move |q| q.mark_seen_keys(&seen)).await {
        tracing::debug!("cannot mark published jobs as seen: {e}");
    }
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

#[allow(clippy::too_many_arguments)]
async fn upload_cloud(
    exrp: &Arc<Exrp>,
    cloud: &CloudSink,
    job: &Job,
    token: Option<&str>,
    props: &std::collections::BTreeMap<String, String>,
    spool: &std::path::Path,
    len: u64,
    md5: &[u8; 16],
    metadata: &[u8],
) -> Result<String, Outcome> {
    use base64::Engine;
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let Some(client) = cloud.client(&job.tenant) else {
        return Err(no_org(exrp, &job.tenant).unwrap_or_else(|| retry("no EX Org for the tenant")));
    };
    let name = clean_file_name(&job.file);
    let md5_b64 = b64(md5);
    let mut record: UploadRecord = props
        .get(PROP_UPLOAD)
        .and_then(|v| serde_json::from_str::<UploadRecord>(v).ok())
        .filter(|r| r.md5 == md5_b64)
        .unwrap_or_else(|| UploadRecord { md5: md5_b64.clone(), ..UploadRecord::default() });
    let meta_md5 = {
        use ::md5::Digest;
        b64(&::md5::Md5::digest(metadata))
    };
    let parts: &[bool] = if cloud.sidecar { &[true, false] } else { &[true] };
    let mut audio_key = String::new();
    for &is_audio in parts {
        let mut fresh_urls = 0;
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
                        (name.clone(), md5_b64.as_str(), "audio/opus")
                    } else {
                        (format!("{name}.json"), meta_md5.as_str(), "application/json")
                    };
                    let p = client
                        .presign(&file_name, content_md5, content_type, cloud.signed_url_timeout)
                        .await
                        .map_err(cloud_outcome)?;
                    *slot = Some(p.clone());
                    let text = serde_json::to_string(&record).unwrap_or_default();
                    exrp.dav.set_props(&job.file, token, &[(PROP_UPLOAD, &text)], &[]).await.map_err(store_error)?;
                    if is_audio {
                        let (id, key) = (job.id, p.upload_key.clone());
                        exrp.queue.run(move |q| q.set_upload_key(id, &key)).await.map_err(|e| retry(e.to_string()))?;
                    }
                    p
                }
            };
            let sent = if is_audio {
                client.upload_file(&presigned, spool, len, exrp.config.transfer_timeout).await
            } else {
                client
                    .upload_bytes(&presigned, bytes::Bytes::copy_from_slice(metadata), exrp.config.transfer_timeout)
                    .await
            };
            match sent {
                Ok(()) => {
                    if is_audio {
                        audio_key = presigned.upload_key.clone();
                    }
                    break;
                }
                Err(CloudError::UrlExpired) => {
                    let slot = if is_audio { &mut record.audio } else { &mut record.meta };
                    *slot = None;
                }
                Err(e) => return Err(cloud_outcome(e)),
            }
        }
    }
    Ok(audio_key)
}
