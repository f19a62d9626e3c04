//! A recording's journey: the lookup every role answers on its admin listener
//! (`/api/trace?id=`), by CallUUID or file name, as events in time order; and the `trace`
//! subcommand, which asks one or more admin listeners (this VM's, other VMs') and merges.

use std::collections::BTreeSet;

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
        if id.chars().any(|c| c.is_control() || c == '/') {
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
    pub fn new(capacity: usize) -> Recent<T> {
        Recent { capacity: capacity.max(1), items: std::sync::Mutex::new(std::collections::VecDeque::new()) }
    }

    pub fn push(&self, item: T) {
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

/// Puts events in time order, drops repeats and keeps the last `MAX_EVENTS`.
pub fn settle(mut events: Vec<Event>) -> Vec<Event> {
    events.sort();
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
        let q = Query::new(" call ", ["c1".to_string(), String::new(), "bad id".into(), "x".repeat(65)]).unwrap();
        assert_eq!(q.id, "call");
        assert_eq!(q.corr_ids.into_iter().collect::<Vec<_>>(), ["c1"]);
        let many = (0..100).map(|i| format!("c{i}"));
        assert_eq!(Query::new("call", many).unwrap().corr_ids.len(), MAX_CORR);
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
    }

    #[test]
    fn events_are_put_in_time_order_without_repeats_and_bounded() {
        let e = |at, step: &str| Event::new(at, "exrp", step, "d");
        let settled = settle(vec![e(3, "c"), e(1, "a"), e(2, "b"), e(1, "a")]);
        assert_eq!(settled.iter().map(|e| e.at).collect::<Vec<_>>(), [1, 2, 3]);
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
