//! `exec-allinone simulate`: behaves like MCP against a deployment (ours, or Apache + nginx +
//! anything else). Per recording it PUTs a real Ogg/Opus file to the WebDAV store; per call it
//! POSTs the GIR-shaped metadata to the excp pool and ends the call; then it watches the store
//! until each recording has left it (exrp deletes only after the sink confirmed the upload) and
//! reports how many arrived, how long after the call ended, and which are missing. With no
//! target flags it drives the local `--role all` sandbox and also checks its sink byte for byte.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures_util::StreamExt;
use http::Method;
use serde_json::json;

use crate::config::{SANDBOX_DIR, SANDBOX_PASSWORD, SANDBOX_USER, Secret};
use crate::dav_client::DavClient;
use crate::http::client::HttpClient;

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
}

pub async fn run(args: SimulateArgs) -> anyhow::Result<bool> {
    let sandbox = args.webdav.is_none() && args.excp.is_none();
    let webdav = args.webdav.clone().unwrap_or_else(|| "http://127.0.0.1:8000/recordings".into());
    let webdav = webdav.trim_end_matches('/').to_string();
    let excp = args.excp.clone().unwrap_or_else(|| "http://127.0.0.1:3650".into());
    let excp = excp.trim_end_matches('/').to_string();
    let sink_dir = args.sink_dir.clone().or_else(|| sandbox.then(|| PathBuf::from(SANDBOX_DIR).join("injected")));
    let http = HttpClient::for_urls(&[&webdav, &excp])?;
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
    let http = Arc::new(http);
    let sent = futures_util::stream::iter((0..args.calls).map(|c| {
        let (http, webdav, excp, auth, run) = (http.clone(), webdav.clone(), excp.clone(), auth.clone(), run.clone());
        async move {
            let call = format!("{run}C{c:05}");
            let mut files = Vec::new();
            for k in 0..per_call {
                let name = format!("{call}_{k}.opus");
                let r = http
                    .send(
                        Method::PUT,
                        &format!("{webdav}/{name}"),
                        &[("authorization", &auth)],
                        Bytes::from_static(SAMPLE),
                        timeout,
                        64 << 10,
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
            let names: Vec<String> = (0..per_call).map(|k| format!("{call}_{k}.opus")).collect();
            let body = json!({ "id": call, "mediaFiles": files }).to_string();
            let headers = [("content-type", "application/json")];
            let r = http
                .send(Method::POST, &format!("{excp}/api/v1/recording"), &headers, Bytes::from(body), timeout, 64 << 10)
                .await?;
            anyhow::ensure!(
                r.status.is_success(),
                "metadata for {call}: HTTP {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
            let r = http
                .send(
                    Method::POST,
                    &format!("{excp}/api/v1/interactions/{call}/end"),
                    &[],
                    Bytes::new(),
                    timeout,
                    64 << 10,
                )
                .await?;
            anyhow::ensure!(r.status.is_success(), "end of {call}: HTTP {}", r.status);
            Ok::<_, anyhow::Error>((names, Instant::now()))
        }
    }))
    .buffer_unordered(args.concurrency.max(1))
    .collect::<Vec<_>>()
    .await;
    let mut waiting: Vec<(String, Instant)> = Vec::new();
    for result in sent {
        let (names, ended) = result?;
        waiting.extend(names.into_iter().map(|n| (n, ended)));
    }
    let total = waiting.len();
    eprintln!(
        "simulated {} calls, {total} recordings in {:.1} s; waiting for them to leave WebDAV",
        args.calls,
        started.elapsed().as_secs_f64()
    );

    let dav = DavClient::new(&webdav, &args.user, &Secret::new(args.password.clone()), (*http).clone(), timeout);
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut delivered: Vec<(String, Duration)> = Vec::new();
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
        waiting.retain(|(name, ended)| {
            if present.contains(name) {
                return true;
            }
            delivered.push((name.clone(), now.duration_since(*ended)));
            false
        });
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
    println!(
        "{}",
        json!({
            "calls": args.calls, "recordings": total, "delivered": delivered.len(), "missing": waiting.len(),
            "byte_exact_in_sink": exact, "seconds_end_to_delivered": {
                "p50": pct(0.5).as_secs_f64(), "p99": pct(0.99).as_secs_f64(), "max": times.last().copied().unwrap_or_default().as_secs_f64() },
        })
    );
    for (name, _) in &waiting {
        eprintln!("missing (still in WebDAV after {} s): {name}", args.timeout);
    }
    Ok(waiting.is_empty() && exact.is_none_or(|n| n == total))
}
