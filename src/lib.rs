//! exec-allinone: one binary for the Genesys EXEC recording-injection path.
//!
//! - `app`: binds listeners, prints READY, runs the roles, drains on SIGTERM.
//! - `cli`, `config`: flags and the validated TOML configuration.
//! - `http`: shared server plumbing (accept loop, TLS, body wrappers, admin listener).
//! - `auth`: Apache-compatible htpasswd files and HTTP Basic authentication.
//! - `metrics`, `telemetry`, `shutdown`: Prometheus text, logging, signals and systemd.
//! - `webdav`: role `webdav`, the recording store (dav-server over our crash-safe storage).
//! - `lb`: role `lb`, the retrying round-robin proxy in front of excp and exrp.
//! - `excp`: role `excp`, recording metadata in, one durable interaction-end per call out.
//! - `cloud`: the Genesys Cloud client (token, presigned recording upload), shared by exrp.
//! - `exrp`: role `exrp`, one durable job per recording: fetch, check, upload once, delete.
//! - `dav_client`: the WebDAV client exrp uses on the store (locks, dead properties, GET).
//! - `simulate`: the `simulate` subcommand, an MCP stand-in for demos, smoke tests and load.
//! - `durable`: atomically replaced records on disk (the state of excp and exrp).
//! - `dav_client`: the WebDAV client exrp uses on the store (claims, job properties, fetch, delete).

pub mod app;
pub mod auth;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod cloud;
pub mod config;
pub mod dav_client;
pub mod durable;
pub mod excp;
pub mod exrp;
pub mod http;
pub mod import;
pub mod lb;
pub mod metrics;
pub mod s3;
pub mod shutdown;
pub mod simulate;
pub mod telemetry;
pub mod trace;
pub mod trends;
pub mod webdav;

use std::process::ExitCode;

use cli::{Cli, Command, Role};
use config::{Config, EXIT_CONFIG};

/// Exit code for a usage error (EX_USAGE).
const EXIT_USAGE: u8 = 64;
/// Exit code when something outside us is not there yet, e.g. DNS at boot (EX_UNAVAILABLE):
/// unlike 78, systemd's Restart=on-failure tries again.
const EXIT_UNAVAILABLE: u8 = 69;

/// Everything `main` does: dispatch the subcommand, map the outcome to an exit code.
pub fn main(cli: Cli) -> ExitCode {
    telemetry::init(cli.log_format == cli::LogFormat::Json);
    match cli.command {
        Some(Command::CheckConfig { config, role }) => check_config(config.as_deref(), role),
        Some(Command::Htpasswd { create, stdin, md5, cost, file, user, password }) => {
            match auth::command::htpasswd(create, stdin, md5, cost, &file, &user, password) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("htpasswd: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::ImportNginx { file }) => import_nginx(&file),
        Some(Command::Simulate(args)) => {
            let Some(runtime) = runtime("simulate", tokio::runtime::Builder::new_multi_thread()) else {
                return ExitCode::FAILURE;
            };
            match runtime.block_on(simulate::run(args)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(err) => {
                    eprintln!("simulate: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Trace(args)) => {
            let Some(runtime) = runtime("trace", tokio::runtime::Builder::new_current_thread()) else {
                return ExitCode::FAILURE;
            };
            runtime.block_on(trace::command(args))
        }
        Some(Command::ImportEnv { file }) => {
            let translated = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))
                .and_then(|text| import::env::translate(&text));
            match translated {
                Ok(t) => {
                    for note in &t.notes {
                        eprintln!("note: {note}");
                    }
                    print!("{}", t.toml);
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("import-env: {err}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        Some(Command::Queue { config, state_dir, action }) => {
            match exrp::command::queue(config.as_deref(), state_dir.as_deref(), action) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("queue: {err:#}");
                    if err.downcast_ref::<durable::NewerState>().is_some() {
                        ExitCode::from(EXIT_CONFIG)
                    } else {
                        ExitCode::FAILURE
                    }
                }
            }
        }
        None => {
            let Some(role) = cli.role else {
                eprintln!("exec-allinone: say which role to run, e.g. `exec-allinone --role all` (see --help)");
                return ExitCode::from(EXIT_USAGE);
            };
            run(role, cli.config.as_deref())
        }
    }
}

/// A runtime for a subcommand; None (said on stderr) when it cannot be made.
fn runtime(what: &str, mut builder: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    match builder.enable_all().build() {
        Ok(rt) => Some(rt),
        Err(err) => {
            eprintln!("{what}: cannot start the async runtime: {err}");
            None
        }
    }
}

fn check_config(path: Option<&std::path::Path>, role: Role) -> ExitCode {
    match Config::load(path, role) {
        Ok(config) => {
            eprintln!("configuration is valid; roles: {}", config.roles().join(", "));
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{err}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn import_nginx(file: &std::path::Path) -> ExitCode {
    match import::nginx::translate(file) {
        Ok(t) => {
            for note in &t.notes {
                eprintln!("note: {note}");
            }
            print!("{}", t.toml);
            if !t.toml.ends_with('\n') {
                println!();
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("import-nginx: {err}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn run(role: Role, path: Option<&std::path::Path>) -> ExitCode {
    let config = match Config::load(path, role) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // All file-system work of the store runs on the blocking pool; its size is the bound on
    // threads however many uploads are in flight.
    let io_threads = config.webdav.as_ref().map_or(8, |w| w.io_threads);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(io_threads)
        .thread_name("exec-allinone")
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(%err, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.downcast_ref::<durable::NewerState>().is_some() => {
            tracing::error!("{err:#}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(err) if lb::is_resolve_error(&err) => {
            tracing::error!("{err:#} (exiting with {EXIT_UNAVAILABLE} so that systemd retries)");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}
