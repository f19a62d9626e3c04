//! A recording's journey: the lookup every role answers on its admin listener
//! (`/api/trace?id=`), by CallUUID or file name, as events in time order; and the `trace`
//! subcommand, which asks one or more admin listeners (this VM's, other VMs') and merges.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest id looked up (a CallUUID is 32, a file name a little more).
pub const MAX_ID: usize = 200;
/// Correlation ids a lookup carries at most.
pub const MAX_CORR: usize = 64;
/// Events one answer holds at most.
pub const MAX_EVENTS: usize = 500;

/// What is looked up: a CallUUID, a file name or part of one, and the correlation ids other
/// roles already named for it (the lb matches its requests by them).
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub id: String,
    pub corr_ids: BTreeSet<String>,
}

impl Query {
    /// Checks an id from the network: 3 to `MAX_ID` printable characters, no '/'.
    pub fn new(id: &str, corr_ids: impl IntoIterator<Item = String>) -> Result<Query, String> {
        let id = id.trim();
        if id.len() < 3 || id.len() > MAX_ID {
            return Err(format!("the id must be 3 to {MAX_ID} characters: a CallUUID or a file name"));
        }
        // Control and bidirectional-override characters would make the page show another id.
        let hidden = |c: char| matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
        if id.chars().any(|c| c.is_control() || hidden(c) || c == '/') {
            return Err("the id must be printable, without '/'".into());
        }
        let corr_ids: BTreeSet<String> = corr_ids
            .into_iter()
            .filter(|c| !c.is_empty() && c.len() <= 64 && c.chars().all(|c| c.is_ascii_graphic()))
            .take(MAX_CORR)
            .collect();
        Ok(Query { id: id.to_string(), corr_ids })
    }

    /// Whether a name (a file, a path, a URI) is about this id.
    pub fn names(&self, text: &str) -> bool {
        text.contains(&self.id)
    }
}

/// One thing a role knows about the recording.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Event {
    /// Unix ms.
    pub at: u64,
    pub role: String,
    /// What happened: "stored", "metadata", "call-ended", "interaction-end", "claimed", …
    pub step: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub detail: String,
    #[serde(default, rename = "corrId", skip_serializing_if = "Option::is_none")]
    pub corr_id: Option<String>,
    /// Where the recording's way ends for now, and why (dead, waiting, missing, orphan).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
    /// The admin listener that answered (set by the `trace` subcommand when it asks several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

impl Event {
    pub fn new(at: u64, role: &str, step: &str, detail: impl Into<String>) -> Event {
        Event {
            at,
            role: role.into(),
            step: step.into(),
            file: None,
            detail: detail.into(),
            corr_id: None,
            stopped: false,
            from: None,
        }
    }

    pub fn file(mut self, file: impl Into<String>) -> Event {
        self.file = Some(file.into());
        self
    }

    pub fn corr(mut self, corr_id: Option<impl Into<String>>) -> Event {
        self.corr_id = corr_id.map(Into::into);
        self
    }

    pub fn stopped(mut self) -> Event {
        self.stopped = true;
        self
    }
}

/// The last `capacity` things a role saw (requests, store changes) for lookups; a push past
/// it forgets the oldest, so memory stays fixed however busy the role is.
pub struct Recent<T> {
    capacity: usize,
    items: std::sync::Mutex<std::collections::VecDeque<T>>,
}

impl<T: Clone> Recent<T> {
    /// A capacity of 0 keeps nothing (lookups find nothing here).
    pub fn new(capacity: usize) -> Recent<T> {
        Recent { capacity, items: std::sync::Mutex::new(std::collections::VecDeque::new()) }
    }

    /// Whether it keeps anything: a caller can skip making an item.
    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    pub fn push(&self, item: T) {
        if self.capacity == 0 {
            return;
        }
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        if items.len() >= self.capacity {
            items.pop_front();
        }
        items.push_back(item);
    }

    /// The newest `limit` items `keep` accepts, oldest first.
    pub fn matching(&self, keep: impl Fn(&T) -> bool, limit: usize) -> Vec<T> {
        let items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        let mut found: Vec<T> = items.iter().rev().filter(|t| keep(t)).take(limit).cloned().collect();
        found.reverse();
        found
    }
}

/// Where a step comes on a recording's way: the order of events of one millisecond (clocks
/// of different roles do not tell them apart).
fn rank(step: &str) -> u8 {
    const WAY: [&str; 17] = [
        "stored",
        "in store",
        "metadata",
        "call-ended",
        "call-end",
        "interaction-end",
        "accepted",
        "attempt",
        "locked",
        "claimed",
        "read",
        "fetched",
        "presigned",
        "uploaded",
        "deleted",
        "done",
        "dead",
    ];
    WAY.iter().position(|s| *s == step).map_or(u8::MAX, |i| i as u8)
}

/// Puts events in time order, drops repeats and keeps the last `MAX_EVENTS`.
pub fn settle(mut events: Vec<Event>) -> Vec<Event> {
    events.sort_by(|a, b| (a.at, rank(&a.step)).cmp(&(b.at, rank(&b.step))).then_with(|| a.cmp(b)));
    // The same event from two answers (a second round, two admin URLs of one process).
    events.dedup_by(|a, b| {
        (a.at, &a.role, &a.step, &a.file, &a.detail, &a.corr_id)
            == (b.at, &b.role, &b.step, &b.file, &b.detail, &b.corr_id)
    });
    if events.len() > MAX_EVENTS {
        events.drain(..events.len() - MAX_EVENTS);
    }
    events
}

/// The correlation ids events name, beside those a query had.
pub fn corr_ids(events: &[Event]) -> BTreeSet<String> {
    events.iter().filter_map(|e| e.corr_id.clone()).collect()
}

/// The ids for a second round: those just found first, then the ones asked with, `MAX_CORR`
/// in all (the found ones are what the lb must be asked about).
pub fn merge_corr(found: &BTreeSet<String>, asked: &BTreeSet<String>) -> BTreeSet<String> {
    found.iter().chain(asked.iter()).take(MAX_CORR).cloned().collect()
}

/// `exec-allinone trace`.
#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// A CallUUID, a file name, or part of one.
    pub id: String,
    /// An admin listener to ask, e.g. http://10.0.0.5:9653; repeat it for each VM (default:
    /// the one of --config, else this machine's --role all at http://127.0.0.1:9650).
    #[arg(long, value_name = "URL")]
    pub admin: Vec<String>,
    /// The config whose [admin] listen to ask.
    #[arg(long, value_name = "FILE", conflicts_with = "admin")]
    pub config: Option<PathBuf>,
    /// Print the merged answer as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Asks every admin listener, again with the correlation ids the first answers named (another
/// VM's lb finds the interaction-end by them), and prints the events in time order. Exit 0
/// when some role knows the id, 1 when none does, 69 when a listener cannot be asked, 78 for
/// a bad config or id.
pub async fn command(args: TraceArgs) -> ExitCode {
    const UNAVAILABLE: u8 = 69;
    let admins = match admin_urls(&args) {
        Ok(urls) => urls,
        Err(err) => {
            eprintln!("trace: {err}");
            return ExitCode::from(crate::EXIT_CONFIG);
        }
    };
    if let Err(err) = Query::new(&args.id, []) {
        eprintln!("trace: {err}");
        return ExitCode::from(crate::EXIT_CONFIG);
    }
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(20)).build() {
        Ok(c) => c,
        Err(err) => {
            eprintln!("trace: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut known = BTreeSet::new();
    let mut events = Vec::new();
    let mut roles = BTreeSet::new();
    let mut failed = false;
    for round in 0..2 {
        let mut found = Vec::new();
        for admin in &admins {
            match ask(&client, admin, &args.id, &known).await {
                Ok((answer_roles, answer)) => {
                    roles.extend(answer_roles);
                    found.extend(answer);
                }
                Err(err) => {
                    if round == 0 {
                        eprintln!("trace: {admin}: {err}");
                        failed = true;
                    }
                }
            }
        }
        let named = corr_ids(&found);
        // The second round's answers hold all of the first's: they replace them (the "now"
        // of a stopped job would otherwise show twice, at two moments).
        events = found;
        if named.is_subset(&known) {
            break;
        }
        known = merge_corr(&named, &known);
    }
    let events = settle(events);
    if args.json {
        let body = serde_json::json!({ "id": args.id, "admins": admins, "roles": roles, "events": events });
        println!("{}", serde_json::to_string_pretty(&body).unwrap_or_default());
    } else {
        print_table(&args.id, &admins, &roles, &events);
    }
    if failed {
        ExitCode::from(UNAVAILABLE)
    } else if events.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn admin_urls(args: &TraceArgs) -> Result<Vec<String>, String> {
    if !args.admin.is_empty() {
        for url in &args.admin {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("--admin {url:?} must be an http:// or https:// URL"));
            }
        }
        return Ok(args.admin.iter().map(|u| u.trim_end_matches('/').to_string()).collect());
    }
    let Some(path) = &args.config else { return Ok(vec!["http://127.0.0.1:9650".into()]) };
    let config = crate::config::Config::load(Some(path), crate::cli::Role::All)
        .map_err(|err| format!("{}: {err}", path.display()))?;
    let scheme = if config.admin.tls.is_some() { "https" } else { "http" };
    let addr = config.admin.listen;
    let host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    Ok(vec![format!("{scheme}://{host}:{}", addr.port())])
}

async fn ask(
    client: &reqwest::Client,
    admin: &str,
    id: &str,
    corr: &BTreeSet<String>,
) -> Result<(Vec<String>, Vec<Event>), String> {
    let corr = corr.iter().cloned().collect::<Vec<_>>().join(",");
    let response = client
        .get(format!("{admin}/api/trace"))
        .query(&[("id", id), ("corr", corr.as_str())])
        .send()
        .await
        .map_err(|e| format!("cannot ask: {e}"))?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| format!("answered {status}, then: {e}"))?;
    let body: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("answered {status}, not JSON: {e}"))?;
    if !status.is_success() {
        return Err(format!("answered {status}: {}", body["error"].as_str().unwrap_or_default()));
    }
    let roles = body["roles"].as_array().into_iter().flatten().filter_map(|r| r.as_str().map(str::to_owned)).collect();
    let mut events: Vec<Event> =
        serde_json::from_value(body["events"].clone()).map_err(|e| format!("unreadable events: {e}"))?;
    for event in &mut events {
        event.from = Some(admin.to_string());
    }
    Ok((roles, events))
}

fn print_table(id: &str, admins: &[String], roles: &BTreeSet<String>, events: &[Event]) {
    let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
    println!(
        "{id}: {} event(s) from {} ({})",
        events.len(),
        admins.join(", "),
        if roles.is_empty() { "no answer".to_string() } else { roles.join(", ") }
    );
    for e in events {
        let mark = if e.stopped { "!" } else { " " };
        let file = e.file.as_deref().unwrap_or("");
        let corr = e.corr_id.as_deref().map(|c| format!(" [corrId {c}]")).unwrap_or_default();
        println!(
            "{mark} {}  {:<6} {:<15} {file}  {}{corr}",
            crate::telemetry::rfc3339_ms(e.at),
            e.role,
            e.step,
            crate::telemetry::escape(&e.detail)
        );
    }
    if events.iter().any(|e| e.stopped) {
        println!("(! marks where the recording's way stops for now, and why)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_the_network_are_checked() {
        assert!(Query::new("SIM0001", []).is_ok());
        assert!(Query::new("ab", []).is_err());
        assert!(Query::new(&"x".repeat(MAX_ID + 1), []).is_err());
        assert!(Query::new("a/../b", []).is_err());
        assert!(Query::new("a\u{7}bc", []).is_err());
        assert!(Query::new("\u{202E}abc", []).is_err());
        let q = Query::new(" call ", ["c1".to_string(), String::new(), "bad id".into(), "x".repeat(65)]).unwrap();
        assert_eq!(q.id, "call");
        assert_eq!(q.corr_ids.into_iter().collect::<Vec<_>>(), ["c1"]);
        let many = (0..100).map(|i| format!("c{i}"));
        assert_eq!(Query::new("call", many).unwrap().corr_ids.len(), MAX_CORR);
    }

    #[test]
    fn ids_found_come_before_ids_asked_with() {
        let asked: BTreeSet<String> = (0..MAX_CORR).map(|i| format!("a{i:02}")).collect();
        let found: BTreeSet<String> = ["z-new".to_string()].into();
        let merged = merge_corr(&found, &asked);
        assert_eq!(merged.len(), MAX_CORR);
        assert!(merged.contains("z-new"));
    }

    #[test]
    fn recent_keeps_the_newest_within_its_capacity() {
        let recent = Recent::new(3);
        for i in 0..10 {
            recent.push(i);
        }
        assert_eq!(recent.matching(|_| true, 10), [7, 8, 9]);
        assert_eq!(recent.matching(|i| i % 2 == 1, 10), [7, 9]);
        assert_eq!(recent.matching(|_| true, 2), [8, 9]);
        let off = Recent::new(0);
        off.push(1);
        assert!(!off.enabled() && off.matching(|_| true, 10).is_empty());
    }

    #[test]
    fn events_are_put_in_time_order_without_repeats_and_bounded() {
        let e = |at, step: &str| Event::new(at, "exrp", step, "d");
        let settled = settle(vec![e(3, "c"), e(1, "a"), e(2, "b"), e(1, "a")]);
        assert_eq!(settled.iter().map(|e| e.at).collect::<Vec<_>>(), [1, 2, 3]);
        // In one millisecond, the way's order: the store took it before exrp was told.
        let tie = settle(vec![Event::new(5, "exrp", "accepted", "d"), Event::new(5, "webdav", "stored", "d")]);
        assert_eq!(tie.iter().map(|e| e.step.as_str()).collect::<Vec<_>>(), ["stored", "accepted"]);
        // Two files' events at one moment are two events; the same one from two answers is one.
        let mut from = e(1, "a").file("x");
        from.from = Some("http://other".into());
        let settled = settle(vec![e(1, "a").file("x"), e(1, "a").file("y"), from]);
        assert_eq!(settled.len(), 2);
        let many: Vec<Event> = (0..(MAX_EVENTS as u64 + 10)).map(|i| e(i, "s")).collect();
        let kept = settle(many);
        assert_eq!((kept.len(), kept[0].at), (MAX_EVENTS, 10));
    }
}
