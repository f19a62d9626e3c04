//! postload: a small HTTP/1.1 POST load generator for benchmarking exec-allinone's
//! `--role lb` against nginx's upstream proxy (see bench/lb.sh).
//!
//! ```text
//! cargo run --release --example postload -- \
//!     --url http://127.0.0.1:PORT/recordings --concurrency 64 --duration 10
//! ```
//!
//! Opens `--concurrency` persistent HTTP/1.1 keep-alive connections (spread round robin over
//! the `--url`s when several are given), and on each sends POSTs back to back: a `--size`-byte
//! JSON body shaped like a GIR recording metadata object (research/domain.md §2.2). Every
//! response must have status `--expect-status` and exactly the body `--expect-body`; anything
//! else (another status or body, a reset, a timeout) is an error. A connection the server
//! closes (`Connection: close`, as nginx does after `keepalive_requests`) is reopened and
//! counted in `reconnects`; that is not an error.
//!
//! The first `--warmup` seconds are not measured; then for `--duration` seconds every request
//! that completes is timed (microseconds, from sending the head to the last body byte) and
//! counted. The client's own CPU use over that window is read from /proc/self/stat and
//! reported as `client_cpu_pct` (100 = one core busy), to tell whether the client was the
//! bottleneck. With `--threads 1` (default) everything runs on one thread.
//!
//! Prints exactly one JSON line on stdout; diagnostics go to stderr. Exit status is 0 when
//! every request succeeded, 2 when some failed, 1 on a usage/setup error.

#[path = "common/load.rs"]
mod load;
use load::{chain, parse_size, percentile, round3};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http::{HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
#[command(name = "postload", about = "HTTP/1.1 keep-alive POST load generator (fixed concurrency, fixed duration)")]
struct Cli {
    /// Target URL; repeat to spread the connections round robin over several servers.
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// Persistent connections, each with one request in flight.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Request body size in bytes (suffixes k, KiB accepted).
    #[arg(long, default_value = "1KiB", value_parser = parse_size)]
    size: usize,
    /// Status every response must have.
    #[arg(long, default_value_t = 200)]
    expect_status: u16,
    /// Body every response must have, byte for byte.
    #[arg(long, default_value = r#"{"status":{"code":0,"message":"OK"}}"#)]
    expect_body: String,
    /// Runtime threads: 1 = tokio current-thread runtime, more = multi-thread runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Print the request body and exit.
    #[arg(long)]
    print_body: bool,
    /// Give every request its own CallUUID (for excp: every POST opens a new call).
    #[arg(long)]
    unique_calls: bool,
    /// The response body must start with --expect-body instead of equalling it (excp's reply
    /// ends with a per-request corrId).
    #[arg(long)]
    expect_prefix: bool,
}

/// A GIR recording metadata object (research/domain.md §2.2) serialized to exactly `size`
/// bytes: a media file's `parameters` get a `comment` of filler text to make up the length.
/// The CallUUID of the template body; `--unique-calls` overwrites it in place.
const TEMPLATE_CALL: &str = "011AP643CSAPR4FKQGQE31TAES00029V";

/// Where the template CallUUID occurs in `body`.
fn call_positions(body: &[u8]) -> Vec<usize> {
    let id = TEMPLATE_CALL.as_bytes();
    (0..body.len().saturating_sub(id.len() - 1)).filter(|&i| &body[i..i + id.len()] == id).collect()
}

/// `body` with connection `conn`'s request `n` as its CallUUID (same length, so the JSON and
/// its size stay as they are).
fn with_call(body: &Bytes, positions: &[usize], conn: usize, n: u64) -> Bytes {
    let id = format!("C{conn:05}N{n:025}");
    let mut out = body.to_vec();
    for &p in positions {
        out[p..p + id.len()].copy_from_slice(id.as_bytes());
    }
    Bytes::from(out)
}

fn recording_body(size: usize) -> Result<Bytes, String> {
    let id = TEMPLATE_CALL;
    let build = |filler: &str| {
        serde_json::json!({
            "id": id,
            "region": "region1",
            "callerPhoneNumber": "8522001",
            "dialedPhoneNumber": "+14160000001",
            "startTime": "2026-11-27T16:58:22.000+0000",
            "stopTime": "2026-11-27T16:58:34.000+0000",
            "mediaFiles": [{
                "mediaUri": format!("http://webdav.example/recordings/{id}_2026-11-27_16-58-22-006B015F-1000427D-00000001.opus"),
                "startTime": "2026-11-27T16:58:22.000+0000",
                "stopTime": "2026-11-27T16:58:34.000+0000",
                "callUUID": id,
                "mediaId": format!("{id}_2026-11-27_16-58-22-006B015F-1000427D-00000001.opus"),
                "type": "audio/opus",
                "duration": "12523",
                "size": "199296",
                "tenant": "Environment",
                "ivrprofile": "CallRecProfile",
                "parameters": {
                    "dnis": "+14160000001",
                    "connId": "006a0269722cd93f",
                    "ani": "8522001",
                    "dateTime": "2026-11-27T16:58:22Z",
                    "recordDN": "7001",
                    "agentId": "agent7001",
                    "comment": filler,
                },
            }],
            "eventHistory": [],
        })
        .to_string()
    };
    let base = build("").len();
    if base > size {
        return Err(format!("--size {size} is below the smallest body ({base} bytes)"));
    }
    const WORDS: &str = "recording metadata for the interaction ";
    let filler: String = WORDS.chars().cycle().take(size - base).collect();
    let body = build(&filler);
    debug_assert_eq!(body.len(), size);
    Ok(Bytes::from(body))
}

/// Where one connection goes.
#[derive(Clone)]
struct Target {
    /// host:port to connect to.
    addr: String,
    host: HeaderValue,
    uri: Uri,
}

fn parse_target(url: &str) -> Result<Target, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad --url {url}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("--url {url}: only http:// URLs are supported"));
    }
    let auth = uri.authority().ok_or_else(|| format!("--url {url}: no host"))?;
    let port = auth.port_u16().unwrap_or(80);
    let addr = format!("{}:{port}", auth.host());
    let host = HeaderValue::from_str(auth.as_str()).map_err(|e| e.to_string())?;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    Ok(Target { addr, host, uri: path.parse().map_err(|e| format!("--url {url}: {e}"))? })
}

struct Timing {
    start: Instant,
    end: Instant,
    timeout: Duration,
}

#[derive(Default)]
struct ConnStats {
    /// Latency of each successful request completed inside the window.
    lat_us: Vec<u32>,
    /// Failed requests completed inside the window (errors anywhere are in `errors`).
    failed_in_window: u64,
    errors: u64,
    /// Every request completed, warm-up included (for CPU per request).
    all: u64,
    reconnects: u64,
    statuses: BTreeMap<String, u64>,
    error_texts: Vec<String>,
}

impl ConnStats {
    fn error(&mut self, text: String) {
        self.errors += 1;
        if self.error_texts.len() < 5 {
            self.error_texts.push(text);
        }
    }
}

async fn connect(t: &Target) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(&t.addr).await.map_err(|e| format!("connect {}: {e}", t.addr))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) =
        http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake {}: {}", t.addr, chain(&e)))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

enum Sent {
    /// Status, body matched, server asked to close.
    Response(u16, bool, bool),
    Failed(String),
}

async fn one(sender: &mut SendRequest<Full<Bytes>>, t: &Target, body: &Bytes, expect: &[u8], prefix: bool) -> Sent {
    let mut req = Request::new(Full::new(body.clone()));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = t.uri.clone();
    let h = req.headers_mut();
    h.insert(header::HOST, t.host.clone());
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => return Sent::Failed(format!("request: {}", chain(&e))),
    };
    let status = resp.status().as_u16();
    let close = resp
        .headers()
        .get(header::CONNECTION)
        .is_some_and(|v| v.as_bytes().split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close")));
    match resp.into_body().collect().await {
        Ok(b) => {
            let b = b.to_bytes();
            let ok = if prefix { b.starts_with(expect) } else { b == expect };
            Sent::Response(status, ok, close)
        }
        Err(e) => Sent::Failed(format!("status {status}, body: {}", chain(&e))),
    }
}

/// How the requests of one connection vary.
#[derive(Clone)]
struct Variation {
    conn: usize,
    /// Where to write a fresh CallUUID per request (empty: the same body every time).
    call_positions: Arc<Vec<usize>>,
    expect_prefix: bool,
}

async fn conn_loop(
    t: Target,
    body: Bytes,
    expect: Bytes,
    expect_status: u16,
    timing: Arc<Timing>,
    var: Variation,
) -> ConnStats {
    let mut st = ConnStats::default();
    let mut n: u64 = 0;
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    loop {
        if Instant::now() >= timing.end {
            break;
        }
        let s = match &mut sender {
            Some(s) => s,
            None => match tokio::time::timeout(timing.timeout, connect(&t)).await {
                Ok(Ok(s)) => sender.insert(s),
                Ok(Err(e)) => {
                    st.error(e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(_) => {
                    st.error(format!("connect {}: timed out", t.addr));
                    continue;
                }
            },
        };
        let t0 = Instant::now();
        let request_body = if var.call_positions.is_empty() {
            body.clone()
        } else {
            n += 1;
            with_call(&body, &var.call_positions, var.conn, n)
        };
        let outcome = tokio::time::timeout(timing.timeout, one(s, &t, &request_body, &expect, var.expect_prefix)).await;
        let t1 = Instant::now();
        let in_window = t1 >= timing.start && t1 < timing.end;
        st.all += 1;
        let failure = match outcome {
            Err(_) => Some(format!("timed out after {:?}", timing.timeout)),
            Ok(Sent::Failed(e)) => Some(e),
            Ok(Sent::Response(status, body_ok, close)) => {
                *st.statuses.entry(status.to_string()).or_default() += 1;
                if close {
                    sender = None;
                    st.reconnects += 1;
                }
                if status != expect_status {
                    Some(format!("status {status}"))
                } else if !body_ok {
                    Some(format!("status {status} with an unexpected body"))
                } else {
                    None
                }
            }
        };
        match failure {
            None => {
                if in_window {
                    st.lat_us.push(u32::try_from(t1.duration_since(t0).as_micros()).unwrap_or(u32::MAX));
                }
            }
            Some(e) => {
                if in_window {
                    st.failed_in_window += 1;
                }
                if sender.take().is_some() {
                    // The connection's state is unknown after a failure: start a fresh one.
                    st.reconnects += 1;
                }
                st.error(format!("{} POST {}: {e}", t.addr, t.uri));
            }
        }
    }
    st
}

/// utime + stime of this process in seconds (all threads), from /proc/self/stat.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); `rest` starts at field 3. USER_HZ is 100 on Linux.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

async fn run(cli: &Cli, targets: Vec<Target>, body: Bytes) -> Result<i32, String> {
    let conc = cli.concurrency.max(1);
    let begin = Instant::now();
    let start = begin + Duration::from_secs_f64(cli.warmup.max(0.0));
    let end = start + Duration::from_secs_f64(cli.duration.max(0.001));
    let timing = Arc::new(Timing { start, end, timeout: Duration::from_secs_f64(cli.timeout) });
    let expect = Bytes::from(cli.expect_body.clone().into_bytes());
    let mut handles = Vec::with_capacity(conc);
    let positions = Arc::new(if cli.unique_calls { call_positions(&body) } else { Vec::new() });
    for i in 0..conc {
        let t = targets[i % targets.len()].clone();
        let var = Variation { conn: i, call_positions: positions.clone(), expect_prefix: cli.expect_prefix };
        handles.push(tokio::spawn(conn_loop(t, body.clone(), expect.clone(), cli.expect_status, timing.clone(), var)));
    }
    tokio::time::sleep_until(start.into()).await;
    let cpu0 = cpu_seconds();
    let wall0 = Instant::now();
    tokio::time::sleep_until(end.into()).await;
    let cpu1 = cpu_seconds();
    let wall = wall0.elapsed().as_secs_f64();

    let mut all = ConnStats::default();
    let mut lat: Vec<u32> = Vec::new();
    for h in handles {
        match h.await {
            Ok(s) => {
                lat.extend_from_slice(&s.lat_us);
                all.failed_in_window += s.failed_in_window;
                all.errors += s.errors;
                all.all += s.all;
                all.reconnects += s.reconnects;
                for (k, v) in s.statuses {
                    *all.statuses.entry(k).or_default() += v;
                }
                for e in s.error_texts {
                    all.error(e);
                }
            }
            Err(e) => all.error(format!("connection task failed: {e}")),
        }
    }
    lat.sort_unstable();
    for e in &all.error_texts {
        eprintln!("postload: error: {e}");
    }
    if all.errors > all.error_texts.len() as u64 {
        eprintln!("postload: ... {} errors in all", all.errors);
    }
    let secs = cli.duration.max(0.001);
    let requests = lat.len() as u64;
    let mean = if lat.is_empty() { 0.0 } else { lat.iter().map(|&x| x as f64).sum::<f64>() / lat.len() as f64 };
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let j = serde_json::json!({
        "urls": cli.urls,
        "concurrency": conc,
        "threads": cli.threads.max(1),
        "size": body.len(),
        "warmup": cli.warmup,
        "seconds": round3(secs),
        "requests": requests,
        "errors": all.errors,
        "errors_in_window": all.failed_in_window,
        "reconnects": all.reconnects,
        "all_requests": all.all,
        "req_per_s": round3(requests as f64 / secs),
        "mean_us": mean.round(),
        "p50_us": percentile(&lat, 50.0),
        "p90_us": percentile(&lat, 90.0),
        "p99_us": percentile(&lat, 99.0),
        "p999_us": percentile(&lat, 99.9),
        "max_us": lat.last().copied().unwrap_or(0),
        "statuses": all.statuses,
        "client_cpu_s": cpu.map(round3),
        "client_cpu_pct": cpu.map(|c| (c / wall.max(1e-9) * 1000.0).round() / 10.0),
    });
    println!("{j}");
    Ok(if all.errors > 0 { 2 } else { 0 })
}

fn main() {
    let cli = Cli::parse();
    let code = (|| -> Result<i32, String> {
        let body = recording_body(cli.size)?;
        if cli.print_body {
            println!("{}", String::from_utf8_lossy(&body));
            return Ok(0);
        }
        let targets = cli.urls.iter().map(|u| parse_target(u)).collect::<Result<Vec<_>, _>>()?;
        let rt = if cli.threads <= 1 {
            tokio::runtime::Builder::new_current_thread().enable_all().build()
        } else {
            tokio::runtime::Builder::new_multi_thread().worker_threads(cli.threads).enable_all().build()
        }
        .map_err(|e| format!("runtime: {e}"))?;
        rt.block_on(run(&cli, targets, body))
    })();
    std::process::exit(match code {
        Ok(c) => c,
        Err(e) => {
            eprintln!("postload: {e}");
            1
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_calls_keep_the_body_valid_and_its_size() {
        let body = recording_body(1024).unwrap();
        let positions = call_positions(&body);
        assert_eq!(positions.len(), 4, "id, mediaUri, callUUID, mediaId");
        let a = with_call(&body, &positions, 3, 7);
        let b = with_call(&body, &positions, 3, 8);
        assert_eq!(a.len(), body.len());
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["id"], "C00003N0000000000000000000000007");
        assert_eq!(v["mediaFiles"][0]["callUUID"], v["id"]);
        assert_ne!(a, b);
    }

    #[test]
    fn body_has_the_requested_size_and_is_json() {
        for size in [900, 1024, 4096] {
            let b = recording_body(size).unwrap();
            assert_eq!(b.len(), size);
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(v["mediaFiles"][0]["callUUID"], v["id"]);
        }
        assert!(recording_body(100).is_err());
    }

    #[test]
    fn targets() {
        let t = parse_target("http://127.0.0.1:3650/recordings?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:3650");
        assert_eq!(t.host, "127.0.0.1:3650");
        assert_eq!(t.uri, "/recordings?x=1");
        assert_eq!(parse_target("http://h/").unwrap().addr, "h:80");
        assert!(parse_target("https://h/").is_err());
    }
}
