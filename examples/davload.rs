//! davload: a small WebDAV load generator for benchmarking exec-allinone's
//! `--role webdav` against Apache mod_dav and nginx (see bench/webdav.sh).
//!
//! ```text
//! cargo run --release --example davload -- \
//!     --url http://127.0.0.1:PORT/recordings/bench/ --user u --password p \
//!     put --size 64KiB --count 2000 --concurrency 64
//! ```
//!
//! Modes:
//! * `put`: PUT `--count` files of `--size` bytes (MKCOL of the base first);
//!   expects 201/204.
//! * `get`: GET the files a `put` with the same `--name/--size/--count` wrote;
//!   expects 200 and a byte-exact body.
//! * `propfind`: `--requests` PROPFIND Depth: 1 on the base collection; expects
//!   207 with exactly `--count` member entries (the collection itself not counted).
//! * `delete`: DELETE the files; expects 204.
//! * `hold`: open `--count` PUT connections at once, each sending its `--size`
//!   body slowly over `--duration` seconds (so server memory/threads at that many
//!   concurrent uploads can be sampled); expects 201/204.
//!
//! Requests that die because the server closed a pooled keep-alive connection
//! under them are re-sent (up to 3 times) and counted as `retries`.
//!
//! Prints exactly one JSON line on stdout; diagnostics go to stderr. Exit status
//! is 0 when every request succeeded, 2 when some failed, 1 on a usage/setup error.

#[path = "common/load.rs"]
mod load;
use load::{chain, parse_size, percentile, round3};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{HeaderValue, Method, StatusCode, header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser, Debug)]
#[command(name = "davload", about = "WebDAV load generator (PUT/GET/PROPFIND/DELETE/slow PUT)")]
struct Cli {
    /// Base collection URL (trailing slash added if missing).
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080/recordings/bench/")]
    url: String,
    /// Basic auth user name.
    #[arg(long, global = true)]
    user: Option<String>,
    /// Basic auth password.
    #[arg(long, global = true, default_value = "")]
    password: String,
    /// Body size in bytes (suffixes k, KiB, M, MiB, G, GiB accepted).
    #[arg(long, global = true, default_value = "64KiB", value_parser = parse_size)]
    size: usize,
    /// Number of files (put/get/delete/hold) or expected entries (propfind).
    #[arg(long, global = true, default_value_t = 100)]
    count: usize,
    /// Requests in flight at once (hold: always --count).
    #[arg(long, global = true, default_value_t = 1)]
    concurrency: usize,
    /// File name prefix: files are <name><index:06>.bin
    #[arg(long, global = true, default_value = "f")]
    name: String,
    /// Per-request timeout in seconds.
    #[arg(long, global = true, default_value_t = 120.0)]
    timeout: f64,
    /// Talk S3 instead of WebDAV: `--url` is `http://host:port/<bucket>/<prefix>/` (path
    /// style) and every request is signed (SigV4) with this access key id (bench/s3.sh: the
    /// engine's own rate for the same objects). PUT then expects 200.
    #[arg(long, global = true, requires = "s3_secret")]
    s3_key: Option<String>,
    #[arg(long, global = true)]
    s3_secret: Option<String>,
    #[arg(long, global = true, default_value = "garage")]
    s3_region: String,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// PUT --count files of --size bytes.
    Put,
    /// GET the files written by `put` and check them byte for byte.
    Get,
    /// PROPFIND Depth: 1 on the base collection, expecting --count members.
    Propfind {
        /// How many PROPFIND requests to time.
        #[arg(long, default_value_t = 10)]
        requests: usize,
    },
    /// DELETE the files written by `put`.
    Delete,
    /// --count concurrent PUTs, each dribbling its body over --duration seconds.
    Hold {
        /// Seconds over which each body is sent.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Number of body chunks per upload.
        #[arg(long, default_value_t = 50)]
        steps: usize,
    },
}

/// Deterministic content: file i is a `size`-byte window into a pseudo-random
/// buffer, shifted by i, so GET can check every byte without keeping copies.
struct Content {
    buf: Bytes,
    size: usize,
}

const SHIFT_SPAN: usize = 4093;

impl Content {
    fn new(size: usize) -> Self {
        let mut v = Vec::with_capacity(size + SHIFT_SPAN);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        while v.len() < size + SHIFT_SPAN {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.truncate(size + SHIFT_SPAN);
        Content { buf: Bytes::from(v), size }
    }
    fn file(&self, i: usize) -> Bytes {
        let off = (i.wrapping_mul(61)) % SHIFT_SPAN;
        self.buf.slice(off..off + self.size)
    }
}

/// Outcome of one request: status (if a response arrived), bytes of payload
/// moved, error text if the request counts as failed.
struct Outcome {
    status: Option<u16>,
    bytes: u64,
    err: Option<String>,
}

impl Outcome {
    fn ok(status: u16, bytes: u64) -> Self {
        Outcome { status: Some(status), bytes, err: None }
    }
    fn fail(status: Option<u16>, err: String) -> Self {
        Outcome { status, bytes: 0, err: Some(err) }
    }
}

struct RunResult {
    seconds: f64,
    lat_ms: Vec<f64>,
    outcomes: Vec<Outcome>,
}

/// Run `n` jobs with `conc` workers pulling indices from a shared counter.
async fn run_pool<F, Fut>(n: usize, conc: usize, f: F) -> RunResult
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let conc = conc.max(1).min(n.max(1));
    let start = Instant::now();
    let mut handles = Vec::with_capacity(conc);
    for _ in 0..conc {
        let f = f.clone();
        let next = next.clone();
        handles.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t0 = Instant::now();
                let o = f(i).await;
                out.push((t0.elapsed().as_secs_f64() * 1000.0, o));
            }
            out
        }));
    }
    let mut lat_ms = Vec::with_capacity(n);
    let mut outcomes = Vec::with_capacity(n);
    for h in handles {
        match h.await {
            Ok(v) => {
                for (l, o) in v {
                    lat_ms.push(l);
                    outcomes.push(o);
                }
            }
            Err(e) => outcomes.push(Outcome::fail(None, format!("worker panicked: {e}"))),
        }
    }
    RunResult { seconds: start.elapsed().as_secs_f64(), lat_ms, outcomes }
}

/// Print the JSON line and return the process exit code.
fn report(
    mode: &str,
    cli: &Cli,
    retries: usize,
    count: usize,
    concurrency: usize,
    mut r: RunResult,
    extra: serde_json::Map<String, serde_json::Value>,
) -> i32 {
    r.lat_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let bytes: u64 = r.outcomes.iter().map(|o| o.bytes).sum();
    let errors = r.outcomes.iter().filter(|o| o.err.is_some()).count();
    let mut statuses = std::collections::BTreeMap::<String, u64>::new();
    for o in &r.outcomes {
        let k = o.status.map(|s| s.to_string()).unwrap_or_else(|| "none".into());
        *statuses.entry(k).or_default() += 1;
    }
    for (shown, o) in r.outcomes.iter().filter(|o| o.err.is_some()).enumerate() {
        if shown >= 5 {
            eprintln!("davload: ... {} more errors", errors - shown);
            break;
        }
        eprintln!("davload: {mode}: error: {}", o.err.as_deref().unwrap_or(""));
    }
    let secs = r.seconds.max(1e-9);
    let mut j = serde_json::json!({
        "mode": mode,
        "count": count,
        "concurrency": concurrency,
        "size": cli.size,
        "seconds": round3(r.seconds),
        "requests_per_s": round3(r.outcomes.len() as f64 / secs),
        "mb_per_s": round3(bytes as f64 / 1e6 / secs),
        "p50_ms": round3(percentile(&r.lat_ms, 50.0)),
        "p99_ms": round3(percentile(&r.lat_ms, 99.0)),
        "errors": errors,
        "retries": retries,
        "statuses": statuses,
    });
    if let Some(m) = j.as_object_mut() {
        m.extend(extra);
    }
    println!("{j}");
    if errors > 0 { 2 } else { 0 }
}

struct Ctx {
    client: reqwest::Client,
    base: reqwest::Url,
    auth: Option<HeaderValue>,
    s3: Option<exec_allinone::s3::sigv4::Credentials>,
    name: String,
    retries: AtomicUsize,
}

const MAX_RETRIES: usize = 3;

/// True when the request died because the server closed (or reset) the
/// connection before sending any response: the usual keep-alive race, where a
/// pooled connection is closed by the server just as a request goes out on it.
/// Such requests never reached a handler's response, so an idempotent request
/// (all of ours are) may be sent again, as browsers and curl do.
fn is_stale_connection(e: &reqwest::Error) -> bool {
    exec_allinone::http::client::died_unanswered(e)
}

impl Ctx {
    fn file_url(&self, i: usize) -> reqwest::Url {
        self.base.join(&format!("{}{:06}.bin", self.name, i)).expect("file url")
    }
    fn req(&self, method: Method, url: reqwest::Url) -> reqwest::RequestBuilder {
        if let Some(creds) = &self.s3 {
            return self.signed(creds, method, url);
        }
        let mut b = self.client.request(method, url);
        if let Some(a) = &self.auth {
            b = b.header(header::AUTHORIZATION, a.clone());
        }
        b
    }
    /// An S3 request signed as the webdav role's client signs them (unsigned payload).
    fn signed(
        &self,
        creds: &exec_allinone::s3::sigv4::Credentials,
        method: Method,
        url: reqwest::Url,
    ) -> reqwest::RequestBuilder {
        use exec_allinone::s3::sigv4;
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let amz_date = sigv4::amz_date(now);
        let headers = [
            ("host", host.as_str()),
            ("x-amz-content-sha256", sigv4::UNSIGNED_PAYLOAD),
            ("x-amz-date", amz_date.as_str()),
        ];
        let request = sigv4::Request {
            method: method.as_str(),
            path: url.path(),
            query: &[],
            headers: &headers,
            payload_hash: sigv4::UNSIGNED_PAYLOAD,
            amz_date: &amz_date,
        };
        let authorization = sigv4::authorization(creds, &request);
        self.client
            .request(method, url)
            .header(header::AUTHORIZATION, authorization)
            .header("x-amz-content-sha256", sigv4::UNSIGNED_PAYLOAD)
            .header("x-amz-date", amz_date)
    }
    /// Send a request, re-sending it (up to MAX_RETRIES times) if a stale
    /// keep-alive connection was closed under it (counted in `retries`, reported in the JSON line).
    async fn send(
        &self,
        method: Method,
        url: &reqwest::Url,
        f: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut attempt = 0;
        loop {
            match f(self.req(method.clone(), url.clone())).send().await {
                Err(e) if attempt < MAX_RETRIES && is_stale_connection(&e) => {
                    attempt += 1;
                    self.retries.fetch_add(1, Ordering::Relaxed);
                }
                r => return r,
            }
        }
    }
}

fn method(m: &str) -> Method {
    Method::from_bytes(m.as_bytes()).expect("method")
}

/// MKCOL the base collection, creating missing parents on 409.
async fn ensure_collection(ctx: &Ctx, url: &reqwest::Url, depth: usize) -> Result<(), String> {
    let resp = ctx.req(method("MKCOL"), url.clone()).send().await.map_err(|e| format!("MKCOL {url}: {}", chain(&e)))?;
    let st = resp.status();
    drop(resp.bytes().await);
    match st.as_u16() {
        201 => Ok(()),
        // 405: exists already (RFC 4918 9.3.1); 301: server redirected a
        // slash-less collection name, i.e. it exists.
        405 | 301 => Ok(()),
        409 if depth < 16 => {
            let parent = url.join("..").map_err(|e| e.to_string())?;
            if parent.path() == url.path() || parent.path() == "/" {
                return Err(format!("MKCOL {url}: 409 and no parent to create"));
            }
            Box::pin(ensure_collection(ctx, &parent, depth + 1)).await?;
            let resp = ctx
                .req(method("MKCOL"), url.clone())
                .send()
                .await
                .map_err(|e| format!("MKCOL {url}: {}", chain(&e)))?;
            match resp.status().as_u16() {
                201 | 405 => Ok(()),
                s => Err(format!("MKCOL {url}: status {s}")),
            }
        }
        s => Err(format!("MKCOL {url}: status {s}")),
    }
}

/// Extract every `<prefix:href>` text from a multistatus body.
fn hrefs(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    for seg in body.split('<').skip(1) {
        let Some(gt) = seg.find('>') else { continue };
        let tag = &seg[..gt];
        if tag.starts_with('/') || tag.ends_with('/') {
            continue;
        }
        let name = tag.split(|c: char| c.is_ascii_whitespace()).next().unwrap_or("");
        let local = name.rsplit(':').next().unwrap_or(name);
        if local == "href" {
            out.push(seg[gt + 1..].trim().to_string());
        }
    }
    out
}

fn href_path(h: &str) -> String {
    // Absolute URLs are allowed in DAV:href; keep only the path.
    let p = if let Some(rest) = h.strip_prefix("http://").or_else(|| h.strip_prefix("https://")) {
        rest.find('/').map(|i| &rest[i..]).unwrap_or("/")
    } else {
        h
    };
    p.trim_end_matches('/').to_string()
}

#[allow(clippy::too_many_arguments)]
async fn hold_one(
    addr: String,
    host: String,
    path: String,
    auth: Option<String>,
    body: Bytes,
    stagger: Duration,
    steps: usize,
    interval: Duration,
    open: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    total: usize,
) -> Outcome {
    let mut s = match tokio::net::TcpStream::connect(&addr).await {
        Ok(s) => s,
        Err(e) => return Outcome::fail(None, format!("connect {addr}: {e}")),
    };
    let _ = s.set_nodelay(true);
    let now_open = open.fetch_add(1, Ordering::SeqCst) + 1;
    let prev_peak = peak.fetch_max(now_open, Ordering::SeqCst);
    if now_open == total && prev_peak < total {
        eprintln!("davload: hold: all {total} connections open");
    }
    let res = async {
        let mut head = format!(
            "PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        if let Some(a) = &auth {
            head.push_str(&format!("Authorization: {a}\r\n"));
        }
        head.push_str("\r\n");
        let mut write_err = None;
        if let Err(e) = s.write_all(head.as_bytes()).await {
            write_err = Some(e);
        }
        tokio::time::sleep(stagger).await;
        let steps = steps.max(1);
        let chunk = body.len().div_ceil(steps).max(1);
        let mut sent = 0usize;
        let mut k = 0usize;
        while write_err.is_none() && sent < body.len() {
            let end = (sent + chunk).min(body.len());
            if let Err(e) = s.write_all(&body[sent..end]).await {
                write_err = Some(e);
                break;
            }
            sent = end;
            k += 1;
            if sent < body.len() && k < steps {
                tokio::time::sleep(interval).await;
            }
        }
        // Read the status line (even after a write error: the server may
        // have answered early, e.g. 401/413, and closed).
        let mut buf = Vec::with_capacity(1024);
        let mut tmp = [0u8; 4096];
        loop {
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
            match s.read(&mut tmp).await {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                Err(e) => {
                    if buf.is_empty() {
                        return Outcome::fail(None, format!("PUT {path}: read: {e}"));
                    }
                    break;
                }
            }
        }
        let line = String::from_utf8_lossy(&buf);
        let status = line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok());
        match (status, write_err) {
            (Some(st @ (201 | 204)), None) => Outcome::ok(st, body.len() as u64),
            (Some(st), None) => Outcome::fail(Some(st), format!("PUT {path}: status {st}")),
            (st, Some(e)) => Outcome::fail(st, format!("PUT {path}: write after {sent} bytes: {e} (status {st:?})")),
            (None, None) => Outcome::fail(None, format!("PUT {path}: no response")),
        }
    }
    .await;
    open.fetch_sub(1, Ordering::SeqCst);
    res
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    std::process::exit(match run(&cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("davload: {e}");
            1
        }
    });
}

async fn run(cli: &Cli) -> Result<i32, String> {
    let mut base_s = cli.url.clone();
    if !base_s.ends_with('/') {
        base_s.push('/');
    }
    let base = reqwest::Url::parse(&base_s).map_err(|e| format!("bad --url {base_s}: {e}"))?;
    if base.scheme() != "http" {
        return Err("only http:// URLs are supported".into());
    }
    let auth_raw = cli.user.as_ref().map(|u| {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{}", cli.password)))
    });
    let auth = auth_raw.as_ref().map(|a| HeaderValue::from_str(a).map_err(|e| e.to_string())).transpose()?;
    let conc = cli.concurrency.max(1);
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(conc)
        .timeout(Duration::from_secs_f64(cli.timeout))
        .build()
        .map_err(|e| e.to_string())?;
    let s3 = cli.s3_key.as_ref().map(|key| exec_allinone::s3::sigv4::Credentials {
        access_key_id: key.clone(),
        secret_access_key: exec_allinone::config::Secret::new(cli.s3_secret.clone().unwrap_or_default()),
        region: cli.s3_region.clone(),
    });
    let ctx =
        Arc::new(Ctx { client, base: base.clone(), auth, s3, name: cli.name.clone(), retries: AtomicUsize::new(0) });
    let n = cli.count;
    let none = serde_json::Map::new();

    match &cli.mode {
        Mode::Put => {
            if ctx.s3.is_none() {
                ensure_collection(&ctx, &base, 0).await?;
            }
            let content = Arc::new(Content::new(cli.size));
            let c2 = ctx.clone();
            let r = run_pool(n, conc, move |i| {
                let ctx = c2.clone();
                let body = content.file(i);
                async move {
                    let url = ctx.file_url(i);
                    let len = body.len() as u64;
                    match ctx.send(Method::PUT, &url, |b| b.body(body.clone())).await {
                        Err(e) => Outcome::fail(None, format!("PUT {url}: {}", chain(&e))),
                        Ok(resp) => {
                            let st = resp.status();
                            let _ = resp.bytes().await;
                            let s3_ok = ctx.s3.is_some() && st == StatusCode::OK;
                            if st == StatusCode::CREATED || st == StatusCode::NO_CONTENT || s3_ok {
                                Outcome::ok(st.as_u16(), len)
                            } else {
                                Outcome::fail(Some(st.as_u16()), format!("PUT {url}: status {st}"))
                            }
                        }
                    }
                }
            })
            .await;
            Ok(report("put", cli, ctx.retries.load(Ordering::Relaxed), n, conc, r, none))
        }
        Mode::Get => {
            let content = Arc::new(Content::new(cli.size));
            let c2 = ctx.clone();
            let r = run_pool(n, conc, move |i| {
                let ctx = c2.clone();
                let want = content.file(i);
                async move {
                    let url = ctx.file_url(i);
                    match ctx.send(Method::GET, &url, |b| b).await {
                        Err(e) => Outcome::fail(None, format!("GET {url}: {}", chain(&e))),
                        Ok(resp) => {
                            let st = resp.status().as_u16();
                            match resp.bytes().await {
                                Err(e) => Outcome::fail(Some(st), format!("GET {url}: body: {}", chain(&e))),
                                Ok(_) if st != 200 => Outcome::fail(Some(st), format!("GET {url}: status {st}")),
                                Ok(got) if got != want => Outcome::fail(
                                    Some(st),
                                    format!("GET {url}: body mismatch ({} bytes, want {})", got.len(), want.len()),
                                ),
                                Ok(got) => Outcome::ok(st, got.len() as u64),
                            }
                        }
                    }
                }
            })
            .await;
            Ok(report("get", cli, ctx.retries.load(Ordering::Relaxed), n, conc, r, none))
        }
        Mode::Propfind { requests } => {
            let requests = *requests;
            let c2 = ctx.clone();
            let self_path = base.path().trim_end_matches('/').to_string();
            let entries_seen = Arc::new(AtomicUsize::new(usize::MAX));
            let es = entries_seen.clone();
            let body = Bytes::from_static(
                b"<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
                  <D:propfind xmlns:D=\"DAV:\"><D:allprop/></D:propfind>\n",
            );
            let r = run_pool(requests, conc, move |_| {
                let ctx = c2.clone();
                let self_path = self_path.clone();
                let es = es.clone();
                let body = body.clone();
                async move {
                    let url = ctx.base.clone();
                    let req = ctx.send(method("PROPFIND"), &url, |b| {
                        b.header("Depth", "1")
                            .header(header::CONTENT_TYPE, "application/xml; charset=utf-8")
                            .body(body.clone())
                    });
                    match req.await {
                        Err(e) => Outcome::fail(None, format!("PROPFIND {url}: {}", chain(&e))),
                        Ok(resp) => {
                            let st = resp.status().as_u16();
                            let text = match resp.bytes().await {
                                Ok(b) => b,
                                Err(e) => {
                                    return Outcome::fail(Some(st), format!("PROPFIND {url}: body: {}", chain(&e)));
                                }
                            };
                            if st != 207 {
                                return Outcome::fail(Some(st), format!("PROPFIND {url}: status {st}"));
                            }
                            let s = String::from_utf8_lossy(&text);
                            let hs = hrefs(&s);
                            let members = hs.iter().filter(|h| href_path(h) != self_path).count();
                            es.store(members, Ordering::Relaxed);
                            if members != n {
                                return Outcome::fail(
                                    Some(st),
                                    format!("PROPFIND {url}: {members} member entries, want {n}"),
                                );
                            }
                            Outcome::ok(st, text.len() as u64)
                        }
                    }
                }
            })
            .await;
            let mut extra = serde_json::Map::new();
            let seen = entries_seen.load(Ordering::Relaxed);
            extra.insert("entries_expected".into(), n.into());
            extra.insert("entries".into(), if seen == usize::MAX { serde_json::Value::Null } else { seen.into() });
            Ok(report("propfind", cli, ctx.retries.load(Ordering::Relaxed), requests, conc, r, extra))
        }
        Mode::Delete => {
            let c2 = ctx.clone();
            let r = run_pool(n, conc, move |i| {
                let ctx = c2.clone();
                async move {
                    let url = ctx.file_url(i);
                    match ctx.send(Method::DELETE, &url, |b| b).await {
                        Err(e) => Outcome::fail(None, format!("DELETE {url}: {}", chain(&e))),
                        Ok(resp) => {
                            let st = resp.status().as_u16();
                            let _ = resp.bytes().await;
                            if st == 204 {
                                Outcome::ok(st, 0)
                            } else {
                                Outcome::fail(Some(st), format!("DELETE {url}: status {st}"))
                            }
                        }
                    }
                }
            })
            .await;
            Ok(report("delete", cli, ctx.retries.load(Ordering::Relaxed), n, conc, r, none))
        }
        Mode::Hold { duration, steps } => {
            ensure_collection(&ctx, &base, 0).await?;
            let host = base.host_str().ok_or("no host in --url")?.to_string();
            let port = base.port_or_known_default().unwrap_or(80);
            let hostport = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let content = Content::new(cli.size);
            let steps = (*steps).max(1);
            let interval = Duration::from_secs_f64(duration / steps as f64);
            let open = Arc::new(AtomicUsize::new(0));
            let peak = Arc::new(AtomicUsize::new(0));
            let timeout = Duration::from_secs_f64(duration + cli.timeout);
            let start = Instant::now();
            let mut handles = Vec::with_capacity(n);
            for i in 0..n {
                let path = ctx.file_url(i).path().to_string();
                // Spread chunk writes of different uploads across the interval.
                let stagger = interval.mul_f64(i as f64 / n.max(1) as f64);
                let fut = hold_one(
                    hostport.clone(),
                    hostport.clone(),
                    path.clone(),
                    auth_raw.clone(),
                    content.file(i),
                    stagger,
                    steps,
                    interval,
                    open.clone(),
                    peak.clone(),
                    n,
                );
                handles.push(tokio::spawn(async move {
                    let t0 = Instant::now();
                    let o = match tokio::time::timeout(timeout, fut).await {
                        Ok(o) => o,
                        Err(_) => Outcome::fail(None, format!("PUT {path}: timed out")),
                    };
                    (t0.elapsed().as_secs_f64() * 1000.0, o)
                }));
            }
            let mut lat_ms = Vec::with_capacity(n);
            let mut outcomes = Vec::with_capacity(n);
            for h in handles {
                match h.await {
                    Ok((l, o)) => {
                        lat_ms.push(l);
                        outcomes.push(o);
                    }
                    Err(e) => outcomes.push(Outcome::fail(None, format!("task: {e}"))),
                }
            }
            let r = RunResult { seconds: start.elapsed().as_secs_f64(), lat_ms, outcomes };
            let mut extra = serde_json::Map::new();
            extra.insert("duration".into(), serde_json::json!(duration));
            extra.insert("peak_open".into(), peak.load(Ordering::SeqCst).into());
            Ok(report("hold", cli, 0, n, n, r, extra))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536").unwrap(), 65536);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("1M").unwrap(), 1_000_000);
    }

    #[test]
    fn href_parse() {
        let b = r#"<D:multistatus xmlns:D="DAV:"><D:response><D:href>/r/b/</D:href></D:response>
            <D:response><D:href>http://h:1/r/b/f000001.bin</D:href><D:prop><D:getetag/></D:prop></D:response>
            <response xmlns="DAV:"><href>/r/b/x</href></response></D:multistatus>"#;
        let h = hrefs(b);
        assert_eq!(h.len(), 3);
        assert_eq!(href_path(&h[0]), "/r/b");
        assert_eq!(href_path(&h[1]), "/r/b/f000001.bin");
    }
}
