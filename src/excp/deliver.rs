//! The scheduler: ends quiet calls, sends interaction-ends to exrp (retried with exponential
//! backoff and jitter until a 2xx, as the lb never re-sends a POST), fetches GIR metadata, and
//! forgets delivered calls after the retention period.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::Excp;
use super::calls::{Call, Due, GirFetch, now_ms};

/// Deliveries in flight at once.
const MAX_IN_FLIGHT: usize = 16;
const SCAN_EVERY: Duration = Duration::from_millis(250);

pub async fn run(excp: Arc<Excp>, shutdown: CancellationToken) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(SCAN_EVERY) => {}
            _ = excp.wake.notified() => {}
        }
        while tasks.try_join_next().is_some() {}
        for due in excp.book.scan(excp.config.quiet_period, excp.config.delivered_retention) {
            match due {
                Due::EndQuiet(call_uuid) => {
                    let corr_id = uuid::Uuid::new_v4().to_string();
                    match excp.book.end(&call_uuid, "quiet", &corr_id, false).await {
                        Ok(super::calls::EndOutcome::Ended) => {
                            excp.metrics.ends.inc(&["quiet"]);
                            tracing::info!(%corr_id, %call_uuid, quiet = ?excp.config.quiet_period, "interaction ended after the quiet period");
                            if excp.config.provider.gir.is_some() {
                                schedule_gir_if_empty(&excp, &call_uuid).await;
                            }
                        }
                        Ok(_) => {}
                        Err(err) => tracing::error!(%call_uuid, "cannot end the call: {err}"),
                    }
                }
                Due::Forget(call_uuid) => {
                    if let Err(err) = excp.book.forget(&call_uuid).await {
                        tracing::error!(%call_uuid, "cannot remove the delivered call: {err}");
                    }
                }
                Due::Deliver(call_uuid) | Due::GirFetch(call_uuid) if shutdown.is_cancelled() => {
                    excp.book.release(&call_uuid).await;
                }
                Due::Deliver(call_uuid) => {
                    let Ok(permit) = limit.clone().acquire_owned().await else { break };
                    let excp = excp.clone();
                    excp.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
                    tasks.spawn(async move {
                        deliver(&excp, &call_uuid).await;
                        excp.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
                        drop(permit);
                    });
                }
                Due::GirFetch(call_uuid) => {
                    let Ok(permit) = limit.clone().acquire_owned().await else { break };
                    let excp = excp.clone();
                    excp.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
                    tasks.spawn(async move {
                        gir_fetch(&excp, &call_uuid).await;
                        excp.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
                        drop(permit);
                    });
                }
            }
        }
        excp.metrics.passes.inc();
    }
    // In-flight deliveries finish or time out on their own (request_timeout); their outcome
    // is durable either way, as a retry after restart is harmless.
    let _ =
        tokio::time::timeout(excp.config.request_timeout, async { while tasks.join_next().await.is_some() {} }).await;
}

async fn deliver(excp: &Arc<Excp>, call_uuid: &str) {
    let Some(entry) = excp.book.entry(call_uuid) else { return };
    let (body, media_ids, attempts) = {
        let e = entry.lock().await;
        let media_ids: Vec<String> = e.call.pending().map(|r| r.media_id.clone()).collect();
        (interaction_end(excp, &e.call), media_ids, e.attempts)
    };
    if media_ids.is_empty() {
        excp.book.release(call_uuid).await;
        return;
    }
    let url = format!("{}/api/v1/interaction-end", excp.config.recording_processor_url);
    let corr_id = body["corrId"].as_str().unwrap_or_default().to_string();
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    let auth = excp.config.recording_processor_auth.as_ref().map(|(user, password)| {
        use base64::Engine;
        let pair = format!("{user}:{}", password.expose());
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    });
    let mut headers = vec![("content-type", "application/json"), ("x-correlation-id", corr_id.as_str())];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth.as_str()));
    }
    let result = excp.client.send(Method::POST, &url, &headers, bytes, excp.config.request_timeout, 64 << 10).await;
    excp.last_delivery_ms.store(now_ms(), Ordering::Relaxed);
    match result {
        Ok(reply) if reply.status.is_success() => {
            excp.exrp_ok.store(true, Ordering::Relaxed);
            match excp.book.delivered(call_uuid, &media_ids, &corr_id).await {
                Ok(()) => {
                    excp.metrics.sent.inc();
                    excp.metrics.recordings_delivered.add(media_ids.len() as u64);
                    tracing::info!(
                        %corr_id,
                        %call_uuid,
                        recordings = media_ids.len(),
                        status = reply.status.as_u16(),
                        attempts = attempts + 1,
                        "interaction-end accepted by exrp"
                    );
                }
                Err(err) => {
                    // exrp has it; sending it again later is harmless (idempotent on mediaId).
                    tracing::error!(%corr_id, %call_uuid, "delivered, but cannot record it: {err}");
                    excp.book
                        .failed(call_uuid, excp.config.retry_initial, &format!("accepted, but not recorded: {err}"))
                        .await;
                }
            }
        }
        other => {
            let why = match other {
                Ok(reply) => format!(
                    "exrp answered {}: {}",
                    reply.status,
                    String::from_utf8_lossy(&reply.body[..reply.body.len().min(200)])
                ),
                Err(err) => err.to_string(),
            };
            excp.exrp_ok.store(false, Ordering::Relaxed);
            excp.metrics.retried.inc();
            let delay = crate::backoff::jittered(excp.config.retry_initial, excp.config.retry_max, attempts + 1);
            tracing::warn!(%corr_id, %call_uuid, attempts = attempts + 1, retry_in = ?delay, "interaction-end not accepted: {why}");
            excp.book.failed(call_uuid, delay, &why).await;
        }
    }
}

/// The interaction-end body of DESIGN.md §2 with the recordings not delivered yet.
pub fn interaction_end(excp: &Excp, call: &Call) -> Value {
    let p = &excp.config.provider;
    let pending: Vec<&super::calls::Recording> = call.pending().collect();
    let field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let number = |v: &Value, k: &str| -> Option<u64> {
        match v.get(k)? {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    };
    let tenant = pending
        .iter()
        .find_map(|r| field(&r.metadata, "tenant").or_else(|| r.call.as_ref().and_then(|c| field(c, "tenant"))))
        .unwrap_or_else(|| excp.config.tenant.clone());
    let call_obj = pending.iter().find_map(|r| r.call.as_ref());
    let start = call_obj
        .and_then(|c| field(c, "startTime"))
        .or_else(|| pending.iter().filter_map(|r| field(&r.metadata, "startTime")).min());
    let end = call_obj
        .and_then(|c| field(c, "stopTime"))
        .or_else(|| pending.iter().filter_map(|r| field(&r.metadata, "stopTime")).max());
    let recordings: Vec<Value> = pending
        .iter()
        .map(|r| {
            let m = &r.metadata;
            let mut rec = json!({
                "mediaId": r.media_id,
                // In GIR mode mediaUri is RWS's play URL, not the store's: exrp goes by mediaId.
                "uri": if p.gir.is_some() { None } else { field(m, "mediaUri").or_else(|| field(m, "mediaPath")) },
                "contentType": field(m, "type").unwrap_or_else(|| "audio/opus".into()),
                "startTime": field(m, "startTime"),
                "stopTime": field(m, "stopTime"),
                "durationMs": number(m, "duration"),
                "size": number(m, "size"),
                "metadata": m,
            });
            if let (Some(c), Some(obj)) = (&r.call, rec.as_object_mut()) {
                obj.insert("call".into(), c.clone());
            }
            rec
        })
        .collect();
    let ended = call.ended.as_ref();
    json!({
        "callUUID": call.call_uuid,
        "corrId": ended.map(|e| e.corr_id.clone()).unwrap_or_default(),
        "tenant": tenant,
        "startTime": start,
        "endTime": end,
        "source": if ended.is_some_and(|e| e.reason == "gir") || p.gir.is_some() { "gir" } else { "third-party" },
        "sta": { "programId": p.sta_default_programid, "language": p.sta_default_language },
        "recordings": recordings,
    })
}

/// GIR mode: the first fetch is `gir_metadata_fetch_delay` after the end.
pub async fn schedule_gir(excp: &Arc<Excp>, call_uuid: &str) {
    schedule_gir_if_empty(excp, call_uuid).await;
}

async fn schedule_gir_if_empty(excp: &Arc<Excp>, call_uuid: &str) {
    let Some(gir) = &excp.config.provider.gir else { return };
    let Some(entry) = excp.book.entry(call_uuid) else { return };
    let needs = {
        let e = entry.lock().await;
        e.call.recordings.is_empty() && e.call.gir.is_none()
    };
    if !needs {
        return;
    }
    let now = now_ms();
    let fetch = GirFetch {
        next_ms: now + gir.fetch_delay.as_millis() as u64,
        deadline_ms: now + (gir.fetch_delay + gir.fetch_duration).as_millis() as u64,
        attempts: 0,
    };
    if let Err(err) = excp.book.set_gir(call_uuid, Some(fetch)).await {
        tracing::error!(%call_uuid, "cannot schedule the GIR fetch: {err}");
    }
}

async fn gir_fetch(excp: &Arc<Excp>, call_uuid: &str) {
    let (Some(gir), Some(client)) = (excp.config.provider.gir.clone(), excp.gir_client.as_ref()) else {
        excp.book.release(call_uuid).await;
        return;
    };
    let Some(entry) = excp.book.entry(call_uuid) else { return };
    let schedule = entry.lock().await.call.gir.clone();
    let Some(mut schedule) = schedule else {
        excp.book.release(call_uuid).await;
        return;
    };
    let url = format!("{}/api/v2/ops/contact-centers/{}/recordings/{call_uuid}", gir.base_url, gir.org_id);
    let auth = {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", gir.user, gir.password.expose()));
        format!("Basic {token}")
    };
    let result = client
        .send(
            Method::GET,
            &url,
            &[("authorization", &auth), ("accept", "application/json")],
            Bytes::new(),
            excp.config.request_timeout,
            excp.config.api.max_body_size as usize,
        )
        .await;
    schedule.attempts += 1;
    let outcome: Result<(), String> = match result {
        Ok(reply) if reply.status.is_success() => match super::ingest::parse(&reply.body) {
            Ok(files) => {
                let files: Vec<_> = files.into_iter().filter(|f| f.call_uuid == call_uuid).collect();
                if files.is_empty() {
                    Err("RWS answered without media files for this call".to_string())
                } else {
                    let store = entry.lock().await.call.store_files.clone();
                    let (files, paired) = super::gir::pair(files, &store);
                    if paired.unmatched > 0 && !store.is_empty() {
                        tracing::warn!(%call_uuid, unmatched = paired.unmatched, store_files = store.len(),
                            "RWS names media files the store watch has not seen; their RWS mediaId is sent as the file name");
                    }
                    tracing::info!(%call_uuid, by_name = paired.by_name, by_order = paired.by_order,
                        unmatched = paired.unmatched, store_only = paired.store_only, "RWS media files named as the store holds them");
                    match excp.book.add(call_uuid, &files, None).await {
                        Ok(added) => {
                            excp.metrics.gir_fetches.inc(&["ok"]);
                            excp.metrics.recordings_accepted.add(added.new as u64);
                            tracing::info!(%call_uuid, recordings = files.len(), "GIR metadata fetched");
                            excp.book.release(call_uuid).await;
                            excp.wake.notify_one();
                            return;
                        }
                        Err(err) => Err(format!("cannot store the GIR metadata: {err}")),
                    }
                }
            }
            Err(err) => Err(format!("RWS answer is not recording metadata: {err}")),
        },
        Ok(reply) if reply.status == http::StatusCode::NOT_FOUND => Err("not found in RWS yet".to_string()),
        Ok(reply) => Err(format!("RWS answered {}", reply.status)),
        Err(err) => Err(err.to_string()),
    };
    let Err(why) = outcome else { return };
    let next = now_ms() + gir.fetch_interval.as_millis() as u64;
    if next > schedule.deadline_ms {
        excp.metrics.gir_fetches.inc(&["gave_up"]);
        tracing::error!(%call_uuid, attempts = schedule.attempts, "GIR metadata never came ({why}); giving up on this call");
        excp.book.release(call_uuid).await;
        if let Err(err) = excp.book.forget(call_uuid).await {
            tracing::error!(%call_uuid, "cannot remove the call: {err}");
        }
        return;
    }
    excp.metrics.gir_fetches.inc(&["retry"]);
    tracing::warn!(%call_uuid, attempts = schedule.attempts, retry_in = ?gir.fetch_interval, "GIR metadata fetch failed: {why}");
    schedule.next_ms = next;
    if let Err(err) = excp.book.set_gir(call_uuid, Some(schedule)).await {
        tracing::error!(%call_uuid, "cannot reschedule the GIR fetch: {err}");
    }
    excp.book.release(call_uuid).await;
}
