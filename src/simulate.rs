//! `exec-allinone simulate`: behaves like MCP against a deployment (ours, or Apache + nginx +
//! anything else). Per recording it PUTs a real Ogg/Opus file to the WebDAV store; per call it
//! POSTs the GIR-shaped metadata to the excp pool and ends the call; then it watches the store
//! until each recording has left it (exrp deletes only after the sink confirmed the upload) and
//! reports how many arrived, how long after the call ended, and which are missing. With no
//! target flags it drives the local `--role all` sandbox and also checks its sink byte for byte.
//! A request that finds a role down (connect error, timeout, 5xx) is retried for `--retry-for`
//! seconds, as a recorder would, so the path can be driven while roles are killed and
//! restarted (bench/soak.sh); `--report` writes everything measured as JSON.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures_util::StreamExt;
use http::Method;
use serde_json::json;

use crate::config::{SANDBOX_DIR, SANDBOX_PASSWORD, SANDBOX_USER, Secret};
use crate::dav_client::DavClient;
use crate::http::client::{ClientError, HttpClient, Reply};

/// The recording every simulated call carries (assets/README.md says how it was made).
pub const SAMPLE: &[u8] = include_bytes!("../assets/sample.opus");

#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Calls to simulate.
    #[arg(long, default_value_t = 10)]
    pub calls: usize,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Recordings per call.
    #[arg(long, default_value_t = 2)]
    pub recordings_per_call: usize,
    /// The WebDAV collection MCP records into (default: the sandbox's).
    #[arg(long, value_name = "URL")]
    pub webdav: Option<String>,
    #[arg(long, default_value = SANDBOX_USER)]
    pub user: String,
    #[arg(long, default_value = SANDBOX_PASSWORD)]
    pub password: String,
    /// Where MCP posts metadata: the lb's excp pool (default: the sandbox's).
    #[arg(long, value_name = "URL")]
    pub excp: Option<String>,
    /// A local sink directory to check byte for byte (default with the sandbox: its sink).
    #[arg(long, value_name = "DIR")]
    pub sink_dir: Option<PathBuf>,
    /// Give up waiting for deliveries after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Retry a PUT or POST that met a connection error, a timeout or a 5xx for this many
    /// seconds (backoff 200 ms to 2 s) before counting its call as failed.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub retry_for: u64,
    /// Also write a JSON summary here: every recording with its call end and delivery time,
    /// missing recordings, failed calls, percentiles and recordings per second.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

/// One exchange of a simulated recorder: the request, retried while the target is down.
struct Sender {
    http: HttpClient,
    timeout: Duration,
    retry_for: Duration,
    /// Attempts that were retried, over all requests.
    retries: AtomicU64,
}

impl Sender {
    /// Sends until an answer below 500 arrives or `retry_for` has passed since the first
    /// attempt. The requests retried are all safe to repeat: a PUT replaces the same file, and
    /// excp treats repeated metadata and a repeated end event as what they are.
    async fn send(&self, method: Method, url: &str, headers: &[(&str, &str)], body: Bytes) -> anyhow::Result<Reply> {
        let first = Instant::now();
        let mut failures = 0;
        loop {
            let why = match self.http.send(method.clone(), url, headers, body.clone(), self.timeout, 64 << 10).await {
                Ok(reply) if !reply.status.is_server_error() => return Ok(reply),
                Ok(reply) => {
                    let text = String::from_utf8_lossy(&reply.body[..reply.body.len().min(200)]).trim().to_string();
                    format!("HTTP {} {text}", reply.status)
                }
                Err(e @ (ClientError::Connect { .. } | ClientError::Timeout(_) | ClientError::Http(_))) => {
                    e.to_string()
                }
                Err(e) => return Err(e.into()),
            };
            if first.elapsed() >= self.retry_for {
                anyhow::bail!("{method} {url}: {why} (retried for {} s)", self.retry_for.as_secs());
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            failures += 1;
            // Jittered: a thousand recorders that lost the same role must not all come back at
            // the same instant.
            let delay = crate::backoff::jittered(Duration::from_millis(200), Duration::from_secs(2), failures);
            tokio::time::sleep(delay.min(self.retry_for.saturating_sub(first.elapsed()))).await;
        }
    }
}

/// A call that could not be recorded whole within `--retry-for`.
struct Failed {
    call: String,
    recordings: Vec<String>,
    error: String,
}

pub async fn run(args: SimulateArgs) -> anyhow::Result<bool> {
    let sandbox = args.webdav.is_none() && args.excp.is_none();
    let webdav = args.webdav.clone().unwrap_or_else(|| "http://127.0.0.1:8000/recordings".into());
    let webdav = webdav.trim_end_matches('/').to_string();
    let excp = args.excp.clone().unwrap_or_else(|| "http://127.0.0.1:3650".into());
    let excp = excp.trim_end_matches('/').to_string();
    let sink_dir = args.sink_dir.clone().or_else(|| sandbox.then(|| PathBuf::from(SANDBOX_DIR).join("injected")));
    // Direct: a site's HTTP_PROXY must not carry the simulator's calls to its own recorders' path.
    // Every call in flight holds a connection.
    let direct = crate::config::Outbound { proxy: crate::config::Proxy::Direct, ca_file: None };
    let http = HttpClient::with_idle(&direct, args.concurrency.max(1) + 8)?;
    let timeout = Duration::from_secs(30);
    let auth = {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", args.user, args.password))
        )
    };
    let run = format!("SIM{:x}", crate::exrp::queue::now_ms());
    let per_call = args.recordings_per_call.max(1);
    let started = Instant::now();
    let started_ms = crate::exrp::queue::now_ms();
    let sender = Arc::new(Sender {
        http: http.clone(),
        timeout,
        retry_for: Duration::from_secs(args.retry_for),
        retries: AtomicU64::new(0),
    });
    let sent = futures_util::stream::iter((0..args.calls).map(|c| {
        let (sender, webdav, excp, auth, run) =
            (sender.clone(), webdav.clone(), excp.clone(), auth.clone(), run.clone());
        async move {
            let call = format!("{run}C{c:05}");
            let names: Vec<String> = (0..per_call).map(|k| format!("{call}_{k}.opus")).collect();
            let recorded = async {
                let mut files = Vec::new();
                for name in &names {
                    let r = sender
                        .send(
                            Method::PUT,
                            &format!("{webdav}/{name}"),
                            &[("authorization", &auth)],
                            Bytes::from_static(SAMPLE),
                        )
                        .await
                        .with_context(|| format!("PUT {name}"))?;
                    anyhow::ensure!(r.status.is_success(), "PUT {name}: HTTP {}", r.status);
                    files.push(json!({
                        "callUUID": call, "mediaId": name, "mediaUri": format!("{webdav}/{name}"),
                        "type": "audio/opus", "size": SAMPLE.len(), "duration": 3000,
                        "startTime": "2026-01-01T10:00:00.000Z", "stopTime": "2026-01-01T10:00:03.000Z",
                        "parameters": { "agentId": "simulated", "ani": "5550100", "dnis": "5550199" },
                    }));
                }
                let body = json!({ "id": call, "mediaFiles": files }).to_string();
                let headers = [("content-type", "application/json")];
                let r =
                    sender.send(Method::POST, &format!("{excp}/api/v1/recording"), &headers, Bytes::from(body)).await?;
                anyhow::ensure!(
                    r.status.is_success(),
                    "metadata for {call}: HTTP {} {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                );
                let r = sender
                    .send(Method::POST, &format!("{excp}/api/v1/interactions/{call}/end"), &[], Bytes::new())
                    .await?;
                anyhow::ensure!(r.status.is_success(), "end of {call}: HTTP {}", r.status);
                Ok(())
            }
            .await;
            match recorded {
                Ok(()) => Ok((names, Instant::now(), crate::exrp::queue::now_ms())),
                Err(e) => Err(Failed { call, recordings: names, error: format!("{e:#}") }),
            }
        }
    }))
    .buffer_unordered(args.concurrency.max(1))
    .collect::<Vec<_>>()
    .await;
    let mut waiting: Vec<(String, Instant)> = Vec::new();
    let mut ended_at: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut failed: Vec<Failed> = Vec::new();
    for result in sent {
        match result {
            Ok((names, ended, ended_ms)) => {
                ended_at.extend(names.iter().map(|n| (n.clone(), ended_ms)));
                waiting.extend(names.into_iter().map(|n| (n, ended)));
            }
            Err(f) => {
                eprintln!("call {} failed: {}", f.call, f.error);
                failed.push(f);
            }
        }
    }
    let total = waiting.len();
    eprintln!(
        "simulated {} calls, {total} recordings in {:.1} s ({} calls failed, {} requests retried); waiting for them to leave WebDAV",
        args.calls,
        started.elapsed().as_secs_f64(),
        failed.len(),
        sender.retries.load(Ordering::Relaxed)
    );

    let dav = DavClient::new(&webdav, &args.user, &Secret::new(args.password.clone()), http, timeout);
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut delivered: Vec<(String, Duration)> = Vec::new();
    let mut last_delivery = started;
    while !waiting.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let present: std::collections::HashSet<String> = match dav.list().await {
            Ok(files) => files.into_iter().map(|f| f.name).collect(),
            Err(e) => {
                eprintln!("cannot list the store: {e}");
                continue;
            }
        };
        let now = Instant::now();
        let before = delivered.len();
        waiting.retain(|(name, ended)| {
            if present.contains(name) {
                return true;
            }
            delivered.push((name.clone(), now.duration_since(*ended)));
            false
        });
        if delivered.len() > before {
            last_delivery = now;
        }
    }
    let mut times: Vec<Duration> = delivered.iter().map(|(_, d)| *d).collect();
    times.sort();
    let pct =
        |p: f64| times.get(((times.len() as f64 * p).ceil() as usize).saturating_sub(1)).copied().unwrap_or_default();
    let exact = sink_dir.as_ref().map(|dir| {
        delivered
            .iter()
            .filter(|(name, _)| std::fs::read(dir.join("Environment").join(name)).is_ok_and(|b| b == SAMPLE))
            .count()
    });
    let seconds = json!({
        "p50": pct(0.5).as_secs_f64(), "p99": pct(0.99).as_secs_f64(),
        "max": times.last().copied().unwrap_or_default().as_secs_f64(),
    });
    println!(
        "{}",
        json!({
            "calls": args.calls, "recordings": total, "delivered": delivered.len(), "missing": waiting.len(),
            "failed_calls": failed.len(), "byte_exact_in_sink": exact, "seconds_end_to_delivered": seconds,
        })
    );
    for (name, _) in &waiting {
        eprintln!("missing (still in WebDAV after {} s): {name}", args.timeout);
    }
    if let Some(path) = &args.report {
        // From the first PUT to the last recording seen leaving the store.
        let span = last_delivery.duration_since(started).as_secs_f64();
        let seconds_of: std::collections::HashMap<&str, f64> =
            delivered.iter().map(|(n, d)| (n.as_str(), d.as_secs_f64())).collect();
        let recordings: serde_json::Map<String, serde_json::Value> = ended_at
            .iter()
            .map(|(name, ended_ms)| {
                let secs = seconds_of.get(name.as_str());
                (name.clone(), json!({ "ended_at_ms": ended_ms, "seconds_to_delivered": secs }))
            })
            .collect();
        let report = json!({
            "run": run,
            "started_at_ms": started_ms,
            "calls": args.calls,
            "recordings_per_call": per_call,
            "simulated": args.calls * per_call,
            "recorded": total,
            "delivered": delivered.len(),
            "missing": waiting.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            "failed_calls": failed.iter().map(|f| json!({ "call": f.call, "recordings": f.recordings, "error": f.error })).collect::<Vec<_>>(),
            "retried_requests": sender.retries.load(Ordering::Relaxed),
            "byte_exact_in_sink": exact,
            "seconds_end_to_delivered": seconds,
            "seconds_first_put_to_last_delivery": span,
            "recordings_per_second": if span > 0.0 { delivered.len() as f64 / span } else { 0.0 },
            "recordings": recordings,
        });
        std::fs::write(path, format!("{report:#}\n")).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(waiting.is_empty() && failed.is_empty() && exact.is_none_or(|n| n == total))
}
