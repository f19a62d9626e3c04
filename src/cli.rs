//! Command-line flags: which role to run, which config to read, and the operator subcommands.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// One binary for the Genesys EXEC recording-injection path.
#[derive(Debug, Parser)]
#[command(name = "exec-allinone", version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Role to run in this process.
    #[arg(long, value_enum)]
    pub role: Option<Role>,
    /// TOML configuration file; without it the role runs on its embedded loopback default.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a configuration file and exit: 0 if valid, 78 with every problem listed if not.
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Check the file as this role would read it.
        #[arg(long, value_enum, default_value_t = Role::All)]
        role: Role,
    },
    /// Create or update a user in an Apache-compatible password file (bcrypt by default).
    Htpasswd {
        /// Create the file, replacing any existing one (like `htpasswd -c`).
        #[arg(short = 'c')]
        create: bool,
        /// Read the password from standard input (like `htpasswd -i`).
        #[arg(short = 'i', conflicts_with = "password")]
        stdin: bool,
        /// Use apr1-MD5 instead of bcrypt (like `htpasswd -m`), for old tools that need it.
        #[arg(short = 'm')]
        md5: bool,
        /// bcrypt cost, 4..=17 (like `htpasswd -C`).
        #[arg(short = 'C', default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=17))]
        cost: u32,
        file: PathBuf,
        user: String,
        /// Password on the command line (like `htpasswd -b`); visible to other local users.
        password: Option<String>,
    },
    /// Translate an nginx load-balancer config (upstream + proxy_pass) into the [lb] section.
    /// Prints the TOML on stdout and notes on stderr; refuses (exit 78) what it cannot carry over.
    ImportNginx {
        /// The nginx config, e.g. /etc/nginx/nginx.conf; includes are followed.
        file: PathBuf,
    },
    /// Translate a Genesys EXEC .env into TOML (stdout) with notes on what to fill in (stderr).
    ImportEnv {
        /// The .env file bootstrap.py reads.
        file: PathBuf,
    },
    /// Behave like MCP against a deployment (default: the local `--role all` sandbox): record
    /// calls, post their metadata, end them, and report what reached the sink.
    Simulate(crate::simulate::SimulateArgs),
    /// Show a recording's way through every role, by CallUUID or file name: what the admin
    /// listener of this process (or of each --admin URL, one per VM) knows, in time order.
    Trace(crate::trace::TraceArgs),
    /// Inspect and re-drive the exrp job queue (works while exrp runs).
    Queue {
        /// The config whose [exrp] state_dir holds the queue.
        #[arg(long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
        /// The exrp state_dir itself, instead of a config.
        #[arg(long, value_name = "DIR", global = true, conflicts_with = "config")]
        state_dir: Option<PathBuf>,
        #[command(subcommand)]
        action: QueueAction,
    },
}

/// What `exec-allinone queue` does with the exrp job queue.
#[derive(Debug, Subcommand)]
pub enum QueueAction {
    /// Jobs (oldest first), optionally of one state or one call.
    List {
        #[arg(long, value_parser = ["pending", "working", "done", "dead"])]
        state: Option<String>,
        #[arg(long = "call", value_name = "CALL_UUID")]
        call_uuid: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Everything known about one recording's job, as JSON.
    Show { call_uuid: String, media_id: String },
    /// Dead jobs back to pending (all, one call's, or one recording's), with a fresh retry window.
    Retry {
        /// Every dead job.
        #[arg(long, conflicts_with = "call_uuid")]
        all: bool,
        call_uuid: Option<String>,
        media_id: Option<String>,
    },
    /// Forget finished jobs: done ones (their duplicates are then no longer recognised) or dead ones.
    Purge {
        #[arg(long, value_parser = ["done", "dead"])]
        state: String,
        /// Only those finished longer ago than this, e.g. "7d".
        #[arg(long, default_value = "0s")]
        older_than: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Webdav,
    Lb,
    Excp,
    Exrp,
    All,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Webdav => "webdav",
            Role::Lb => "lb",
            Role::Excp => "excp",
            Role::Exrp => "exrp",
            Role::All => "all",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn parse() -> Cli {
    Cli::parse()
}
