//! `[excp.s3]`: the heartbeat of this instance in the shared bucket, and the takeover of the
//! calls of an instance whose heartbeat stopped. The bucket's clock times both (Last-Modified
//! of each heartbeat), and the live instance whose name sorts first takes a dead one's calls,
//! so no two live instances adopt the same call while they see the same bucket. Where they do
//! not (a partition), both deliver: exrp is idempotent on (callUUID, mediaId) and its claim on
//! each file keeps the injection single.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::Excp;
use super::calls::{BookError, Call};
use crate::config::SharedCalls;
use crate::s3::client::S3Error;
use crate::s3::records::BucketRecords;

pub async fn run(excp: Arc<Excp>, shared: SharedCalls, shutdown: CancellationToken) {
    let super::calls::Records::Bucket(records) = excp.book.records() else { return };
    let records = Arc::clone(records);
    // Four beats within the takeover time: a slow or failed one does not make us look dead.
    let every = (shared.takeover_after / 4).max(Duration::from_secs(1));
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
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// One heartbeat, then the calls of every dead instance this one is first in line for.
/// Returns the calls taken over.
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
    let alive = |beat: &Option<SystemTime>| {
        beat.is_some_and(|at| now.duration_since(at).unwrap_or(Duration::ZERO) < takeover_after)
    };
    let first_alive = owners.iter().filter(|(_, beat)| alive(beat)).map(|(name, _)| name.as_str()).min();
    if first_alive != Some(records.owner()) {
        return Ok(0);
    }
    let mut taken = 0;
    for (dead, beat) in owners.iter().filter(|(name, beat)| name != records.owner() && !alive(beat)) {
        tracing::warn!(
            instance = %dead,
            last_heartbeat = ?beat.map(|b| now.duration_since(b).unwrap_or_default()),
            "excp instance stopped its heartbeat; taking over its calls"
        );
        taken += adopt_all(excp, records, dead).await.map_err(|e| format!("from {dead}: {e}"))?;
        records.bury(dead).await.map_err(|e| e.to_string())?;
    }
    Ok(taken)
}

/// Each call of `dead`: merged into ours and written as ours, then removed from its prefix.
/// A crash between the two leaves it in both: adopted again later, harmlessly (merge).
async fn adopt_all(excp: &Excp, records: &BucketRecords, dead: &str) -> Result<usize, String> {
    let mut n = 0;
    for key in records.keys_of(dead).await.map_err(|e: S3Error| e.to_string())? {
        let Some(bytes) = records.get_of(dead, &key).await.map_err(|e| e.to_string())? else { continue };
        match serde_json::from_slice::<Call>(&bytes) {
            Ok(call) => {
                let uuid = call.call_uuid.clone();
                excp.book.adopt(call).await.map_err(|e: BookError| e.to_string())?;
                tracing::info!(call_uuid = %uuid, from = %dead, "call taken over");
                excp.metrics.takeovers.inc();
                n += 1;
            }
            Err(e) => {
                tracing::error!(instance = %dead, record = %key, "unreadable call record left in place: {e}");
                continue;
            }
        }
        records.remove_of(dead, &key).await.map_err(|e| e.to_string())?;
    }
    Ok(n)
}
