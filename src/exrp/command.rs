//! `exec-allinone queue list|show|retry|purge`: the operator's view of the exrp job queue. It
//! opens the same SQLite file as the running exrp (WAL lets both work at once); the running
//! scheduler picks up a retried job within a second.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::queue::{Job, Queue, State, now_ms};
use crate::cli::{QueueAction, Role};
use crate::config::{Config, parse_duration};

pub fn queue(config: Option<&Path>, state_dir: Option<&Path>, action: QueueAction) -> anyhow::Result<()> {
    let dir: PathBuf = match (config, state_dir) {
        (_, Some(dir)) => dir.to_path_buf(),
        (Some(path), None) => {
            let config = Config::load(Some(path), Role::Exrp).map_err(|e| anyhow::anyhow!("{e}"))?;
            config.exrp.map(|e| e.state_dir).context("the config has no [exrp] section")?
        }
        (None, None) => anyhow::bail!("say where the queue is: --config FILE (with [exrp]) or --state-dir DIR"),
    };
    anyhow::ensure!(
        dir.join("queue.db").is_file(),
        "no job queue in {} (queue.db is made when exrp first starts)",
        dir.display()
    );
    let q = Queue::open(&dir, true).map_err(|e| match e {
        super::queue::OpenError::Newer(newer) => anyhow::Error::new(newer),
        super::queue::OpenError::Queue(e) => e.into(),
    })?;
    match action {
        QueueAction::List { state, call_uuid, limit, json } => {
            let state = state.as_deref().and_then(State::parse);
            let jobs = q.list(state, call_uuid.as_deref(), limit)?;
            if json {
                for job in &jobs {
                    println!("{}", serde_json::to_string(job)?);
                }
            } else {
                let counts = q.counts()?;
                println!("pending {}  working {}  done {}  dead {}", counts[0], counts[1], counts[2], counts[3]);
                println!(
                    "{:<8} {:<8} {:>4}  {:<20} {:<36} {:<24} reason",
                    "state", "origin", "try", "accepted", "callUUID", "mediaId"
                );
                for job in &jobs {
                    println!(
                        "{:<8} {:<8} {:>4}  {:<20} {:<36} {:<24} {}",
                        job.state.as_str(),
                        job.origin,
                        job.attempts,
                        ago(job.accepted_at_ms),
                        job.call_uuid,
                        job.media_id,
                        job.reason.as_deref().unwrap_or("")
                    );
                }
            }
        }
        QueueAction::Show { call_uuid, media_id } => {
            let job: Job =
                q.get(&call_uuid, &media_id)?.with_context(|| format!("no job for {call_uuid} / {media_id}"))?;
            let mut value = serde_json::to_value(&job)?;
            if let Some(obj) = value.as_object_mut() {
                obj.insert("spec".into(), serde_json::from_str(&job.spec).unwrap_or(serde_json::Value::Null));
            }
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        QueueAction::Retry { all, call_uuid, media_id } => {
            anyhow::ensure!(all || call_uuid.is_some(), "say which: --all, or CALL_UUID [MEDIA_ID]");
            let n = q.retry_dead(call_uuid.as_deref(), media_id.as_deref())?;
            eprintln!("{n} dead job(s) back to pending");
        }
        QueueAction::Purge { state, older_than } => {
            let state = State::parse(&state).context("state must be done or dead")?;
            let age = parse_duration(&older_than, Duration::from_secs(1))
                .map_err(|e| anyhow::anyhow!("--older-than: {e}"))?;
            let n = q.purge(state, now_ms().saturating_sub(age.as_millis() as u64))?;
            eprintln!("{n} {} job(s) removed", state.as_str());
        }
    }
    Ok(())
}

fn ago(ms: u64) -> String {
    let secs = now_ms().saturating_sub(ms) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h{}m ago", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d ago", secs / 86400),
    }
}
