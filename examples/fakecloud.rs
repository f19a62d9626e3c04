//! fakecloud: the fake Genesys Cloud of the integration tests (tests/it/support/cloud.rs) as a
//! standalone process for benchmark scripts.
//!
//! ```text
//! cargo run --release --example fakecloud -- --port 0 --client-id exrp --secret s3cr3t
//! ```
//!
//! Serves `/oauth/token`, `/api/v2/uploads/recordings` and the presigned PUT URLs on
//! 127.0.0.1; use `http://127.0.0.1:PORT` as both `api_url` and `login_url`. Prints
//! `READY cloud=127.0.0.1:PORT` on stdout once listening, runs until SIGTERM, SIGINT or EOF on
//! stdin, then prints its counts (uploads, bytes, 429s sent, presign calls, token grants) as one JSON
//! line on stderr. Uploaded bytes are digested and counted, not kept (unless --keep-bytes).
//!
//! While it runs, `GET /_fake/counts` serves the same counts and `GET /_fake/report` every
//! object by fileName: how many distinct objects the name got (more than one is a duplicate),
//! completed PUTs, and each object's length, MD5 and time of upload (bench/soak.sh reads it).

#[path = "../tests/it/support/cloud.rs"]
mod cloud;
#[allow(dead_code)]
#[path = "../tests/it/support/fake_server.rs"]
mod fake_server;

use std::io::{Read, Write};

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "fakecloud", about = "A fake Genesys Cloud (token, presigned recording upload, PUT) on loopback")]
struct Cli {
    /// Port on 127.0.0.1 (0: any free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    #[arg(long, default_value = "exrp")]
    client_id: String,
    #[arg(long, default_value = "secret")]
    secret: String,
    /// Answer 429 to every Nth presign.
    #[arg(long)]
    rate_limit_every: Option<u64>,
    /// Retry-After seconds of those 429s.
    #[arg(long, default_value_t = 1)]
    retry_after: u64,
    /// `expires_in` of the tokens granted, in seconds.
    #[arg(long, default_value_t = 86_400)]
    token_lifetime: u64,
    /// Keep uploaded bytes in memory (they are only digested by default).
    #[arg(long)]
    keep_bytes: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let fake = match cloud::FakeCloud::start_on(&format!("127.0.0.1:{}", cli.port), &cli.client_id, &cli.secret) {
        Ok(fake) => fake,
        Err(err) => {
            eprintln!("fakecloud: cannot listen on port {}: {err}", cli.port);
            return std::process::ExitCode::FAILURE;
        }
    };
    fake.keep_bytes(cli.keep_bytes);
    fake.set_token_lifetime(cli.token_lifetime);
    fake.set_rate_limit_every(cli.rate_limit_every, cli.retry_after);

    let (done_tx, done_rx) = std::sync::mpsc::channel::<&'static str>();
    let stdin_done = done_tx.clone();
    std::thread::spawn(move || {
        let mut sink = [0u8; 1024];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let _ = stdin_done.send("stdin closed");
    });
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        let Ok(runtime) = runtime else { return };
        runtime.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
                return;
            };
            let why = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            let _ = done_tx.send(why);
        });
    });

    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "READY cloud={}", fake.addr());
    let _ = stdout.flush();

    let why = done_rx.recv().unwrap_or("channel closed");
    let mut counts = fake.counts();
    counts["stopped_by"] = why.into();
    eprintln!("{counts}");
    std::process::ExitCode::SUCCESS
}
