//! `[excp.s3]`: the heartbeat of this instance in the shared bucket, the takeover of the calls
//! of an instance whose heartbeat stopped, and end events for calls another instance holds.
//! The bucket's clock times the heartbeats (Last-Modified), and the live instance whose name
//! sorts first takes a dead one's calls, so no two live instances adopt the same call while
//! they see the same bucket. Where they do not (a partition), both deliver: exrp is
//! idempotent on (callUUID, mediaId) and its claim on each file keeps the injection single.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::Excp;
use super::calls::{BookError, Call, EndOutcome, Records};
use crate::config::SharedCalls;
use crate::s3::client::S3Error;
use crate::s3::records::BucketRecords;

/// What the last round learnt of the bucket.
#[derive(Default)]
pub struct Peers {
    /// The bucket's time of our own last heartbeat: the clock other heartbeats are read by.
    now: Option<SystemTime>,
    /// The instances with a prefix and their heartbeats, and when they were listed: end events
    /// list them at most once a second, however many come.
    owners: Vec<(String, Option<SystemTime>)>,
    listed: Option<std::time::Instant>,
}

/// A note left for the instance that holds (part of) a call: its end event came elsewhere.
#[derive(Serialize, Deserialize)]
struct EndNote {
    call_uuid: String,
    corr_id: String,
}

/// How often the heartbeat, the takeover check and the notes run: a quarter of the takeover
/// time (a slow or failed beat does not make us look dead), and at least every 5 s so that an
/// end event left as a note reaches its call soon.
fn interval(takeover_after: Duration) -> Duration {
    (takeover_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

fn bucket(excp: &Excp) -> Option<&Arc<BucketRecords>> {
    match excp.book.records() {
        Records::Bucket(records) => Some(records),
        Records::Dir(_) => None,
    }
}

pub async fn run(excp: Arc<Excp>, shared: SharedCalls, shutdown: CancellationToken) {
    let Some(records) = bucket(&excp).cloned() else { return };
    loop {
        match round(&excp, &records, shared.takeover_after).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(calls = n, "took over the calls of a dead excp instance; delivering them");
                excp.wake.notify_one();
            }
            Err(e) => tracing::warn!("excp.s3: heartbeat or takeover round failed: {e}"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval(shared.takeover_after)) => {}
        }
    }
}

fn alive(beat: Option<SystemTime>, now: SystemTime, takeover_after: Duration) -> bool {
    beat.is_some_and(|at| now.duration_since(at).unwrap_or(Duration::ZERO) < takeover_after)
}

/// One heartbeat, the notes left for us, then the calls of every dead instance this one is
/// first in line for. Returns the calls taken over.
async fn round(excp: &Excp, records: &BucketRecords, takeover_after: Duration) -> Result<usize, String> {
    let now = match records.beat().await {
        Ok(at) => {
            excp.state.ok();
            at
        }
        Err(e) => {
            excp.state.failed(format!("the shared bucket: {e}"));
            return Err(e.to_string());
        }
    };
    let owners = records.owners().await.map_err(|e| e.to_string())?;
    *excp.peers.lock().unwrap_or_else(|p| p.into_inner()) =
        Peers { now: Some(now), owners: owners.clone(), listed: Some(std::time::Instant::now()) };
    read_notes(excp, records, records.owner()).await.map_err(|e| e.to_string())?;
    let first_alive =
        owners.iter().filter(|(_, beat)| alive(*beat, now, takeover_after)).map(|(name, _)| name.as_str()).min();
    if first_alive != Some(records.owner()) {
        return Ok(0);
    }
    let mut taken = 0;
    for (dead, beat) in
        owners.iter().filter(|(name, beat)| name != records.owner() && !alive(*beat, now, takeover_after))
    {
        tracing::warn!(
            instance = %dead,
            last_heartbeat = ?beat.map(|b| now.duration_since(b).unwrap_or_default()),
            "excp instance stopped its heartbeat; taking over its calls"
        );
        taken += adopt_all(excp, records, dead).await.map_err(|e| format!("from {dead}: {e}"))?;
        // Its notes are end events for calls now ours.
        read_notes(excp, records, dead).await.map_err(|e| e.to_string())?;
        records.bury(dead).await.map_err(|e| e.to_string())?;
    }
    Ok(taken)
}

/// Ends the calls the notes left for `owner` name (the ones we hold), then removes the notes.
async fn read_notes(excp: &Excp, records: &BucketRecords, owner: &str) -> Result<(), S3Error> {
    for (key, bytes) in records.notes_of(owner).await? {
        match serde_json::from_slice::<EndNote>(&bytes) {
            Ok(note) => match excp.book.end(&note.call_uuid, "event", &note.corr_id, false).await {
                Ok(EndOutcome::Ended) => {
                    excp.metrics.ends.inc(&["event"]);
                    tracing::info!(call_uuid = %note.call_uuid, corr_id = %note.corr_id, "interaction ended by an end event another instance took");
                    excp.wake.notify_one();
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(call_uuid = %note.call_uuid, "cannot end the call a note names: {e}");
                    continue; // the note stays for the next round
                }
            },
            Err(e) => tracing::error!(note = %key, "unreadable note removed: {e}"),
        }
        records.remove_note_of(owner, &key).await?;
    }
    Ok(())
}

/// Each call of `dead`: merged into ours and written as ours, then removed from its prefix.
/// A crash between the two leaves it in both: adopted again later, harmlessly (merge).
async fn adopt_all(excp: &Excp, records: &BucketRecords, dead: &str) -> Result<usize, String> {
    let mut n = 0;
    for key in records.keys_of(dead).await.map_err(|e: S3Error| e.to_string())? {
        if adopt_one(excp, records, dead, &key).await? {
            n += 1;
        }
    }
    Ok(n)
}

async fn adopt_one(excp: &Excp, records: &BucketRecords, dead: &str, key: &str) -> Result<bool, String> {
    let Some(bytes) = records.get_of(dead, key).await.map_err(|e| e.to_string())? else { return Ok(false) };
    let call = match serde_json::from_slice::<Call>(&bytes) {
        Ok(call) => call,
        Err(e) => {
            tracing::error!(instance = %dead, record = %key, "unreadable call record left in place: {e}");
            return Ok(false);
        }
    };
    let uuid = call.call_uuid.clone();
    excp.book.adopt(call).await.map_err(|e: BookError| e.to_string())?;
    records.remove_of(dead, key).await.map_err(|e| e.to_string())?;
    tracing::info!(call_uuid = %uuid, from = %dead, "call taken over");
    excp.metrics.takeovers.inc();
    Ok(true)
}

/// An end event for `call_uuid` reached this instance: every other instance that holds a share
/// of the call learns it, a live one by a note it reads within seconds, a dead one by this
/// instance taking its share over and ending it here. Returns how many shares were found
/// elsewhere (0: no other instance holds the call).
pub async fn end_elsewhere(
    excp: &Excp,
    call_uuid: &str,
    corr_id: &str,
    takeover_after: Duration,
    held_here: bool,
) -> Result<usize, String> {
    let Some(records) = bucket(excp) else { return Ok(0) };
    // The instances as listed within the last second (however many end events come), listed
    // again when no one here or there holds the call: an instance that started since may.
    let (cached, now) = {
        let peers = excp.peers.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = peers.listed.is_some_and(|at| at.elapsed() < Duration::from_secs(1));
        (fresh.then(|| peers.owners.clone()), peers.now)
    };
    if let Some(owners) = cached {
        let found = end_with(excp, records, &owners, now, call_uuid, corr_id, takeover_after).await?;
        if found > 0 || held_here {
            return Ok(found);
        }
    }
    let owners = records.owners().await.map_err(|e| e.to_string())?;
    {
        let mut peers = excp.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.owners = owners.clone();
        peers.listed = Some(std::time::Instant::now());
    }
    end_with(excp, records, &owners, now, call_uuid, corr_id, takeover_after).await
}

/// `end_elsewhere` over one list of instances.
async fn end_with(
    excp: &Excp,
    records: &BucketRecords,
    owners: &[(String, Option<SystemTime>)],
    now: Option<SystemTime>,
    call_uuid: &str,
    corr_id: &str,
    takeover_after: Duration,
) -> Result<usize, String> {
    let key = super::calls::key(call_uuid);
    let note = serde_json::to_vec(&EndNote { call_uuid: call_uuid.to_string(), corr_id: corr_id.to_string() })
        .map_err(|e| e.to_string())?;
    let mut found = 0;
    for (owner, beat) in owners.iter().filter(|(o, _)| o != records.owner()) {
        if !records.holds(owner, &key).await.map_err(|e| e.to_string())? {
            continue;
        }
        found += 1;
        if now.is_some_and(|now| alive(*beat, now, takeover_after)) {
            records.leave_note(owner, &format!("end-{call_uuid}"), note.clone()).await.map_err(|e| e.to_string())?;
            tracing::info!(call_uuid, instance = %owner, "end event left for the instance that holds the call");
        } else if adopt_one(excp, records, owner, &key).await? {
            excp.book.end(call_uuid, "event", corr_id, false).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(found)
}
