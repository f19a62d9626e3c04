//! exrpload: drives one exrp end to end for bench/exrp.sh. PUTs `--recordings` copies of an
//! Ogg/Opus file into the WebDAV store, POSTs interaction-ends for them (`--per-call`
//! recordings each), then polls exrp's /health until every job is finished, and prints one
//! JSON line: how long each phase took and recordings injected per second.
//!
//! ```text
//! cargo run --release --example exrpload -- --store http://127.0.0.1:8000/recordings \
//!     --user mcp --password mcp-sandbox --exrp http://127.0.0.1:8080 --recordings 1000
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
struct Cli {
    /// The WebDAV collection, e.g. http://127.0.0.1:8000/recordings.
    #[arg(long)]
    store: String,
    #[arg(long, default_value = "mcp")]
    user: String,
    #[arg(long, default_value = "mcp-sandbox")]
    password: String,
    /// exrp's base URL (its /health is polled, interaction-ends go to /api/v1/interaction-end).
    #[arg(long)]
    exrp: String,
    #[arg(long, default_value_t = 1000)]
    recordings: usize,
    #[arg(long, default_value_t = 2)]
    per_call: usize,
    /// Client threads for the PUTs and POSTs.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    #[arg(long, default_value = "assets/sample.opus")]
    file: String,
    /// Give up after this many seconds of injection.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Only PUT and POST; do not wait for the injection (to queue jobs).
    #[arg(long)]
    no_wait: bool,
}

fn run_parallel(
    n: usize,
    threads: usize,
    f: impl Fn(usize) -> Result<(), String> + Send + Sync + 'static,
) -> Result<(), String> {
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let (f, next) = (f.clone(), next.clone());
            std::thread::spawn(move || -> Result<(), String> {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok(());
                    }
                    f(i)?;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "worker panicked".to_string())??;
    }
    Ok(())
}

fn queue_state(client: &reqwest::blocking::Client, exrp: &str) -> Result<Value, String> {
    let r = client.get(format!("{exrp}/health")).send().map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&r.text().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    Ok(v["queue"].clone())
}

fn main() {
    let cli = Cli::parse();
    let audio = Arc::new(std::fs::read(&cli.file).unwrap_or_else(|e| panic!("cannot read {}: {e}", cli.file)));
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let run = format!("B{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis());
    let name = {
        let run = run.clone();
        move |i: usize| format!("{run}C{:06}_{i:06}.opus", i / cli.per_call.max(1))
    };
    let before = queue_state(&client, &cli.exrp).expect("exrp /health");
    let done0 = before["done"].as_u64().unwrap_or(0);
    let dead0 = before["dead"].as_u64().unwrap_or(0);

    let t = Instant::now();
    {
        let (client, audio, store, user, pw, name) =
            (client.clone(), audio.clone(), cli.store.clone(), cli.user.clone(), cli.password.clone(), name.clone());
        run_parallel(cli.recordings, cli.concurrency, move |i| {
            let r = client
                .put(format!("{store}/{}", name(i)))
                .basic_auth(&user, Some(&pw))
                .body(audio.as_ref().clone())
                .send()
                .map_err(|e| e.to_string())?;
            if !r.status().is_success() {
                return Err(format!("PUT {}: {}", name(i), r.status()));
            }
            Ok(())
        })
        .expect("PUT phase");
    }
    let put_s = t.elapsed().as_secs_f64();

    let calls = cli.recordings.div_ceil(cli.per_call.max(1));
    let t = Instant::now();
    {
        let (client, exrp, name, size, per_call, total) =
            (client.clone(), cli.exrp.clone(), name.clone(), audio.len(), cli.per_call.max(1), cli.recordings);
        let run = run.clone();
        run_parallel(calls, cli.concurrency, move |c| {
            let recs: Vec<Value> = (c * per_call..((c + 1) * per_call).min(total))
                .map(|i| {
                    json!({ "mediaId": name(i), "uri": format!("http://store/recordings/{}", name(i)),
                            "contentType": "audio/opus", "size": size, "durationMs": 3000 })
                })
                .collect();
            let body = json!({ "callUUID": format!("{run}C{c:06}"), "tenant": "Environment",
                               "source": "third-party", "sta": {"programId": "", "language": "en-US"}, "recordings": recs });
            let r = client
                .post(format!("{exrp}/api/v1/interaction-end"))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .map_err(|e| e.to_string())?;
            if r.status() != 202 {
                return Err(format!("POST call {c}: {}", r.status()));
            }
            Ok(())
        })
        .expect("POST phase");
    }
    let post_s = t.elapsed().as_secs_f64();
    if cli.no_wait {
        println!("{}", json!({ "recordings": cli.recordings, "put_s": put_s, "post_s": post_s }));
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(cli.timeout);
    let (done, dead) = loop {
        let q = queue_state(&client, &cli.exrp).unwrap_or(Value::Null);
        let done = q["done"].as_u64().unwrap_or(0) - done0;
        let dead = q["dead"].as_u64().unwrap_or(0) - dead0;
        if done + dead >= cli.recordings as u64 && q["pending"] == 0 && q["working"] == 0 {
            break (done, dead);
        }
        if Instant::now() > deadline {
            break (done, dead);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let inject_s = t.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "recordings": cli.recordings, "calls": calls, "bytes_each": audio.len(),
            "put_s": put_s, "post_s": post_s, "inject_s": inject_s,
            "recordings_per_s": done as f64 / inject_s, "done": done, "dead": dead,
        })
    );
    if done < cli.recordings as u64 {
        std::process::exit(2);
    }
}
