//! The excp role end to end: MCP's metadata in, one interaction-end per call out to exrp.
//!
//! Every test runs the real binary (`--role excp`) on loopback, port 0, in front of the fakes of
//! `support/fakes.rs`: a fake exrp that records every interaction-end, answers 202 / fails /
//! hangs / is down as the test switches it, and takes each (callUUID, mediaId) once; and a fake
//! GIR RWS. Timings are short (quiet period 1-3 s, retries from 100 ms, GIR fetches every
//! 300 ms) and every wait is bounded by a deadline that leaves room for a loaded two-core machine.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::fakes::{FakeExrp, FakeRws, Mode};
use crate::support::{Proc, Raw, TempDir, dir_entries, metric, raw_request, read_some, wait_until};

/// Longest wait for something that should happen "at once" on a loaded machine.
const SOON: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Harness

/// A config for one excp process: `[excp]` and `[excp.conversation_provider]` keys with raw
/// TOML values, test defaults first, overrides replacing them.
#[derive(Clone)]
struct Cfg {
    excp: BTreeMap<String, String>,
    provider: BTreeMap<String, String>,
    store: BTreeMap<String, String>,
    s3: BTreeMap<String, String>,
}

fn q(s: &str) -> String {
    format!("\"{s}\"")
}

impl Cfg {
    /// Quiet period 30 s (tests end calls by event unless they test the quiet period), fast
    /// retries, a 2 s request timeout.
    fn new(exrp_url: &str) -> Cfg {
        let mut excp = BTreeMap::new();
        for (k, v) in [
            ("listen", q("127.0.0.1:0")),
            ("recording_processor_url", q(exrp_url)),
            ("quiet_period", q("30s")),
            ("retry_initial", q("100ms")),
            ("retry_max", q("500ms")),
            ("request_timeout", q("2s")),
        ] {
            excp.insert(k.to_string(), v);
        }
        Cfg { excp, provider: BTreeMap::new(), store: BTreeMap::new(), s3: BTreeMap::new() }
    }

    fn set(mut self, key: &str, toml_value: &str) -> Cfg {
        self.excp.insert(key.to_string(), toml_value.to_string());
        self
    }

    fn provider(mut self, key: &str, toml_value: &str) -> Cfg {
        self.provider.insert(key.to_string(), toml_value.to_string());
        self
    }

    /// A key of `[excp.transient_storage]` (the store watched in GIR mode).
    fn store(mut self, key: &str, toml_value: &str) -> Cfg {
        self.store.insert(key.to_string(), toml_value.to_string());
        self
    }

    /// A key of `[excp.s3]` (calls kept in a shared bucket).
    fn s3(mut self, key: &str, toml_value: &str) -> Cfg {
        self.s3.insert(key.to_string(), toml_value.to_string());
        self
    }

    fn text(&self, state_dir: &std::path::Path) -> String {
        let mut out = String::from("[admin]\nlisten = \"127.0.0.1:0\"\n\n[excp]\n");
        out.push_str(&format!("state_dir = {}\n", q(&state_dir.display().to_string())));
        for (k, v) in &self.excp {
            out.push_str(&format!("{k} = {v}\n"));
        }
        if !self.provider.is_empty() {
            out.push_str("\n[excp.conversation_provider]\n");
            for (k, v) in &self.provider {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        if !self.store.is_empty() {
            out.push_str("\n[excp.transient_storage]\n");
            for (k, v) in &self.store {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        if !self.s3.is_empty() {
            out.push_str("\n[excp.s3]\n");
            for (k, v) in &self.s3 {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        out
    }
}

/// A state directory, a config file and the excp process running on them (restartable).
struct Excp {
    dir: TempDir,
    path: PathBuf,
    env: Vec<(String, String)>,
    proc: Option<Proc>,
}

/// A reply as the client got it.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {self:?}"))
    }

    /// `status.code` of the reply body.
    fn code(&self) -> u64 {
        self.json()["status"]["code"].as_u64().unwrap_or_else(|| panic!("no status.code: {self:?}"))
    }

    fn corr_id(&self) -> String {
        self.json()["status"]["corrId"].as_str().unwrap_or_else(|| panic!("no corrId: {self:?}")).to_string()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection.
fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Reply {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: excp.test\r\n");
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    if method == "POST" || !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    let (status, headers, body) = raw_request(addr, &head, body);
    Reply { status, headers, text: String::from_utf8_lossy(&body).into_owned() }
}

impl Excp {
    fn start(name: &str, cfg: &Cfg) -> Excp {
        Excp::start_with_env(name, cfg, &[])
    }

    fn start_with_env(name: &str, cfg: &Cfg, env: &[(&str, &str)]) -> Excp {
        let dir = TempDir::new(&format!("excp-{name}"));
        let path = dir.join("excp.toml");
        std::fs::write(&path, cfg.text(&dir.join("state"))).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut excp = Excp { dir, path, env, proc: None };
        excp.restart();
        excp
    }

    /// Starts the process (again) on the same config and state directory.
    fn restart(&mut self) {
        assert!(self.proc.is_none(), "excp is running");
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.proc = Some(Proc::start_with_env(&["--role", "excp", "--config", self.path.to_str().unwrap()], &env));
    }

    fn proc(&self) -> &Proc {
        self.proc.as_ref().expect("excp is not running")
    }

    fn kill9(&mut self) {
        self.proc.take().expect("excp is not running").kill9();
    }

    /// SIGTERM; the exit status and everything logged.
    fn stop(&mut self) -> (std::process::ExitStatus, String) {
        self.proc.take().expect("excp is not running").stop_keep()
    }

    fn addr(&self) -> SocketAddr {
        self.proc().addr("excp")
    }

    fn post(&self, body: &Value) -> Reply {
        self.post_bytes(body.to_string().as_bytes())
    }

    fn post_bytes(&self, body: &[u8]) -> Reply {
        request(self.addr(), "POST", "/api/v1/recording", body)
    }

    /// Posts and insists on 200 / code 0.
    fn accept(&self, body: &Value) -> Reply {
        let reply = self.post(body);
        assert_eq!((reply.status, reply.code()), (200, 0), "{body}: {reply:?}\n{}", self.tail());
        reply
    }

    fn end(&self, call_uuid: &str) -> Reply {
        request(self.addr(), "POST", &format!("/api/v1/interactions/{call_uuid}/end"), b"")
    }

    /// Ends by event and insists on 200 / code 0; returns the corrId.
    fn end_ok(&self, call_uuid: &str) -> String {
        let reply = self.end(call_uuid);
        assert_eq!((reply.status, reply.code()), (200, 0), "end {call_uuid}: {reply:?}\n{}", self.tail());
        reply.corr_id()
    }

    /// `roles.excp.details` of the admin `/health`.
    fn details(&self) -> Value {
        let reply = request(self.proc().addr("admin"), "GET", "/health", b"");
        let json = reply.json();
        json["roles"]["excp"]["details"].clone()
    }

    fn metrics(&self) -> String {
        request(self.proc().addr("admin"), "GET", "/metrics", b"").text
    }

    /// The sum of the samples of `name` matching `labels`; 0 when there is none.
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.metrics(), name, labels).unwrap_or(0.0)
    }

    /// Waits until the delivery scheduler has made two more passes over the calls and nothing
    /// it started is still underway: whatever it was going to send by then has been sent, so
    /// a test can then assert that something did not happen.
    fn settle(&self) {
        self.settle_passes(2);
    }

    /// `settle` over `n` passes (four a second when idle): for what runs on its own clock, as
    /// GIR fetches and the store watch do.
    fn settle_passes(&self, n: u32) {
        let start = self.metric("excp_delivery_passes_total", &[]);
        let deadline = Instant::now() + SOON;
        loop {
            let m = self.metrics();
            let passes = metric(&m, "excp_delivery_passes_total", &[]).unwrap_or(0.0);
            let busy = metric(&m, "excp_deliveries_in_flight", &[]).unwrap_or(0.0);
            if passes >= start + f64::from(n) && busy == 0.0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the scheduler did not settle: {passes} passes since {start}, {busy} in flight"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the metric reaches `at_least`.
    fn wait_metric(&self, name: &str, labels: &[(&str, &str)], at_least: f64, limit: Duration) -> f64 {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.metric(name, labels);
            if v >= at_least {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} = {v}, expected >= {at_least} within {limit:?}\n{}",
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until `cond` holds on the health details.
    fn wait_details(&self, what: &str, limit: Duration, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let d = self.details();
            if cond(&d) {
                return d;
            }
            assert!(Instant::now() < deadline, "health: {what} not within {limit:?}: {d}\n{}", self.tail());
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn calls_dir(&self) -> PathBuf {
        self.dir.join("state").join("calls")
    }

    /// Every file in the state directory's `calls/`, hidden ones included.
    fn state_files(&self) -> Vec<String> {
        dir_entries(&self.calls_dir())
    }

    fn tail(&self) -> String {
        let Some(proc) = &self.proc else { return String::new() };
        let logs = proc.logs();
        let lines: Vec<&str> = logs.lines().collect();
        format!("--- excp stderr (tail) ---\n{}", lines[lines.len().saturating_sub(30)..].join("\n"))
    }
}

/// A GIR-like CallUUID (32 upper-case letters and digits), distinct per test.
fn call_id(tag: &str) -> String {
    let tag: String = tag.chars().filter(char::is_ascii_alphanumeric).collect::<String>().to_ascii_uppercase();
    format!("011AP643CSAPR4FK{tag:X<16}").chars().take(32).collect()
}

/// Recording `n` of a call as MCP posts it: every documented field, plus fields nobody
/// documented (they must reach exrp untouched). Recording n runs from minute n to minute n+1.
fn media(call: &str, n: u32) -> Value {
    json!({
        "callUUID": call,
        "mediaId": format!("{call}_{n}.opus"),
        "mediaUri": format!("http://webdav.test:8088/recordings/{call}_{n}.opus"),
        "type": "audio/opus",
        "startTime": format!("2024-05-01T10:{:02}:00.000Z", n),
        "stopTime": format!("2024-05-01T10:{:02}:00.000Z", n + 1),
        "duration": if n % 2 == 0 { json!(60000 + n) } else { json!(format!("{}", 60000 + n)) },
        "size": 199296 + n,
        "parameters": { "agentId": format!("agent{n}"), "dnis": "8522001", "x-vendor": [n, {"deep": true}] },
        "unknownTopLevel": { "kept": "as is", "n": n },
    })
}

/// The GIR recording shape around some media files.
fn gir_shape(call: &str, files: &[Value]) -> Value {
    json!({ "id": call, "mediaFiles": files })
}

fn media_id(call: &str, n: u32) -> String {
    format!("{call}_{n}.opus")
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Checks one interaction-end recording against the media-file object it came from.
fn check_recording(rec: &Value, posted: &Value) {
    check_recording_as(rec, posted, &posted["mediaUri"]);
}

/// As `check_recording`, with the `uri` expected (none in GIR mode: RWS's play URL is not the
/// store's).
fn check_recording_as(rec: &Value, posted: &Value, uri: &Value) {
    assert_eq!(rec["mediaId"], posted["mediaId"], "{rec}");
    assert_eq!(rec["uri"], *uri, "{rec}");
    assert_eq!(rec["contentType"], posted["type"], "{rec}");
    assert_eq!(rec["startTime"], posted["startTime"], "{rec}");
    assert_eq!(rec["stopTime"], posted["stopTime"], "{rec}");
    let duration = match &posted["duration"] {
        Value::String(s) => s.parse::<u64>().unwrap(),
        v => v.as_u64().unwrap(),
    };
    assert_eq!(rec["durationMs"], json!(duration), "{rec}");
    assert_eq!(rec["size"], posted["size"], "{rec}");
    assert_eq!(rec["metadata"], *posted, "metadata must be the media-file object exactly as posted");
}

fn is_uuid_v4(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok_and(|u| {
        u.get_version_num() == 4 && u.get_variant() == uuid::Variant::RFC4122 && u.hyphenated().to_string() == s
    })
}

// ---------------------------------------------------------------------------------------------
// 1. The documented reply to an empty POST

#[test]
fn an_empty_post_gets_the_documented_40402_body_byte_for_byte() {
    let exrp = FakeExrp::start(Mode::Accept);
    let excp = Excp::start("empty", &Cfg::new(&exrp.url()));
    let mut ids = Vec::new();
    let variants: [(&str, &str); 3] = [
        (
            "Content-Length: 0",
            "POST /api/v1/recording HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ),
        ("no Content-Length", "POST /api/v1/recording HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        (
            "JSON content type, no body",
            "POST /api/v1/recording HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
        ),
    ];
    for (what, head) in variants {
        let (status, headers, body) = raw_request(excp.addr(), head, b"");
        let body = String::from_utf8(body).unwrap();
        assert_eq!(status, 404, "{what}: {body}");
        let prefix = r#"{"status":{"code":40402,"message":"CallUUID not found","corrId":""#;
        let suffix = r#""}}"#;
        assert!(body.starts_with(prefix) && body.ends_with(suffix), "{what}: {body}");
        let corr_id = &body[prefix.len()..body.len() - suffix.len()];
        assert!(is_uuid_v4(corr_id), "{what}: corrId {corr_id:?} is not a lower-case v4 UUID");
        assert_eq!(body, format!("{prefix}{corr_id}{suffix}"));
        let content_type = headers.iter().find(|(k, _)| k == "content-type").map(|(_, v)| v.as_str());
        assert_eq!(content_type, Some("application/json"), "{what}");
        ids.push(corr_id.to_string());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "corrId must differ per request: {ids:?}");
    assert_eq!(excp.metric("excp_metadata_total", &[("code", "40402")]), 3.0);
    assert_eq!(excp.details()["calls"], 0);
    assert!(exrp.received().is_empty());

    // The role's own /health answers on the excp listener too.
    let health = request(excp.addr(), "GET", "/health", b"");
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.json()["status"], "UP");
}

// ---------------------------------------------------------------------------------------------
// 2. One call, three recordings out of order, one twice → one interaction-end with all three

#[test]
fn three_recordings_out_of_order_and_one_twice_make_one_interaction_end() {
    let exrp = FakeExrp::start(Mode::Accept);
    let cfg = Cfg::new(&exrp.url())
        .set("tenant", &q("Tenant-7"))
        .provider("sta_default_programid", &q("prog-42"))
        .provider("sta_default_language", &q("fr-FR"));
    let excp = Excp::start("three", &cfg);
    let call = call_id("three");
    let (r1, r2, r3) = (media(&call, 1), media(&call, 2), media(&call, 3));

    // Last first, in the GIR shape; the first as a single object; the first again in the GIR
    // shape (the same media-file object); the middle one last.
    excp.accept(&gir_shape(&call, std::slice::from_ref(&r3)));
    excp.accept(&r1);
    excp.accept(&gir_shape(&call, std::slice::from_ref(&r1)));
    // The middle one as curl sends a larger body: `Expect: 100-continue`, no content type.
    let body = r2.to_string();
    let mut raw = Raw::connect(excp.addr());
    raw.send(
        format!(
            "POST /api/v1/recording HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let (status, _, _) = raw.response();
    assert_eq!(status, 100, "100 Continue before the body");
    raw.send(body.as_bytes());
    let (status, _, reply) = raw.response();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    let d = excp.details();
    assert_eq!((d["calls"].as_u64(), d["openCalls"].as_u64()), (Some(1), Some(1)), "{d}");
    assert_eq!(excp.metric("excp_calls_open", &[]), 1.0);
    assert_eq!(d["recordingsAwaitingDelivery"], 3, "{d}");
    assert_eq!(excp.state_files(), vec![format!("{call}.json")]);

    let corr_id = excp.end_ok(&call);
    let received = exrp.wait(SOON, "one interaction-end", |r| !r.is_empty());
    excp.wait_metric("excp_interaction_ends_sent_total", &[], 1.0, SOON);
    excp.settle();
    let received_after = exrp.received();
    assert_eq!(received_after.len(), 1, "exactly one interaction-end: {received_after:#?}");
    let body = &received[0].body;

    assert_eq!(body["callUUID"], call.as_str());
    assert_eq!(body["corrId"], corr_id.as_str(), "corrId of the end request: {body}");
    assert_eq!(body["tenant"], "Tenant-7");
    assert_eq!(body["source"], "third-party");
    assert_eq!(body["sta"], json!({"programId": "prog-42", "language": "fr-FR"}));
    assert_eq!(body["startTime"], r1["startTime"], "the earliest recording start: {body}");
    assert_eq!(body["endTime"], r3["stopTime"], "the latest recording stop: {body}");
    let recordings = body["recordings"].as_array().expect("recordings[]");
    assert_eq!(recordings.len(), 3, "{body}");
    for posted in [&r1, &r2, &r3] {
        let rec = recordings.iter().find(|r| r["mediaId"] == posted["mediaId"]).unwrap_or_else(|| {
            panic!("{} missing from {body}", posted["mediaId"]);
        });
        check_recording(rec, posted);
    }
    assert_eq!(
        received[0].headers.iter().find(|(k, _)| k == "content-type").map(|(_, v)| v.as_str()),
        Some("application/json")
    );
    assert_eq!(exrp.jobs_of(&call), sorted(vec![media_id(&call, 1), media_id(&call, 2), media_id(&call, 3)]));

    assert_eq!(excp.metric("excp_interactions_ended_total", &[("reason", "event")]), 1.0);
    assert_eq!(excp.metric("excp_recordings_delivered_total", &[]), 3.0);
    assert_eq!(excp.metric("excp_metadata_total", &[("code", "0")]), 4.0);
    let d = excp.details();
    assert_eq!((d["openCalls"].as_u64(), d["recordingsAwaitingDelivery"].as_u64()), (Some(0), Some(0)), "{d}");
    assert_eq!(d["recordingProcessor"]["status"], "UP", "{d}");
    assert_eq!(excp.metric("excp_calls_open", &[]), 0.0);
    assert_eq!(excp.metric("excp_recordings_pending_delivery", &[]), 0.0);
}

// ---------------------------------------------------------------------------------------------
// 3. End event, quiet period, unknown call

#[test]
fn an_end_event_sends_at_once_the_quiet_period_later_and_an_unknown_call_is_40402() {
    let exrp = FakeExrp::start(Mode::Accept);
    let quiet = Duration::from_secs(3);
    let excp = Excp::start("ending", &Cfg::new(&exrp.url()).set("quiet_period", &q("3s")));
    let (by_event, by_quiet) = (call_id("byevent"), call_id("byquiet"));

    let posted_quiet = Instant::now();
    excp.accept(&media(&by_quiet, 1));
    excp.accept(&media(&by_event, 1));
    let corr_id = excp.end_ok(&by_event);
    let first = exrp.wait(SOON, "the ended call's interaction-end", |r| !r.is_empty());
    assert_eq!(first[0].call_uuid(), by_event, "{first:#?}");
    // Sent by the event, not by a quiet period: that would have sent the other call first, its
    // metadata being the older (the order is checked again below, with both received).
    assert_eq!(first[0].body["corrId"], corr_id.as_str());

    // An end again for the same call is fine and sends nothing more.
    let again = excp.end(&by_event);
    assert_eq!((again.status, again.code()), (200, 0), "{again:?}");

    let all = exrp.wait(quiet + SOON, "the quiet call's interaction-end", |r| r.len() >= 2);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!((all[0].call_uuid(), all[1].call_uuid()), (by_event.as_str(), by_quiet.as_str()));
    let waited = all[1].at - posted_quiet;
    assert!(waited >= quiet, "sent {waited:?} after the last metadata, before the quiet period {quiet:?}");
    let quiet_corr = all[1].body["corrId"].as_str().unwrap_or_default();
    assert!(is_uuid_v4(quiet_corr), "a quiet end has its own corrId: {quiet_corr:?}");
    assert_ne!(quiet_corr, corr_id);
    check_recording(&all[1].body["recordings"][0], &media(&by_quiet, 1));
    assert_eq!(excp.metric("excp_interactions_ended_total", &[("reason", "quiet")]), 1.0);

    // Unknown calls and CallUUIDs that are no CallUUID.
    for (what, path) in [
        ("unknown", format!("/api/v1/interactions/{}/end", call_id("neverseen"))),
        ("dot-dot", "/api/v1/interactions/..%2F..%2Fetc/end".to_string()),
        ("dots", "/api/v1/interactions/a.b/end".to_string()),
    ] {
        let reply = request(excp.addr(), "POST", &path, b"");
        assert_eq!((reply.status, reply.code()), (404, 40402), "{what}: {reply:?}");
        assert_eq!(reply.json()["status"]["message"], "CallUUID not found");
        assert!(is_uuid_v4(&reply.corr_id()));
    }
    excp.settle();
    assert_eq!(exrp.received().len(), 2, "{:#?}", exrp.received());
    assert_eq!(excp.details()["calls"], 2);
}

#[test]
fn a_repeated_end_event_counts_the_call_as_ended_once() {
    let exrp = FakeExrp::start(Mode::Accept);
    let excp = Excp::start("endtwice", &Cfg::new(&exrp.url()));
    let call = call_id("endtwice");
    excp.accept(&media(&call, 1));
    let corr_id = excp.end_ok(&call);
    exrp.wait_jobs(&call, &[&media_id(&call, 1)], SOON);
    let again = excp.end(&call);
    assert_eq!((again.status, again.code()), (200, 0), "{again:?}");
    excp.settle();
    assert_eq!(exrp.received().len(), 1, "{:#?}", exrp.received());
    assert_eq!(exrp.received()[0].body["corrId"], corr_id.as_str());
    let logs = excp.proc().logs();
    let ended_lines = logs.lines().filter(|l| l.contains("interaction ended by event")).count();
    assert_eq!(
        excp.metric("excp_interactions_ended_total", &[("reason", "event")]),
        1.0,
        "one call ended once; {ended_lines} 'interaction ended by event' lines\n{}",
        excp.tail()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. exrp down, failing, hanging

#[test]
fn exrp_refusing_then_failing_gets_the_interaction_end_once_it_is_back_with_retries_counted() {
    let exrp = FakeExrp::start(Mode::Down);
    let excp = Excp::start("down", &Cfg::new(&exrp.url()));
    let call = call_id("exrpdown");
    excp.accept(&media(&call, 1));
    excp.accept(&media(&call, 2));
    let corr_id = excp.end_ok(&call);

    excp.wait_metric("excp_interaction_ends_retried_total", &[], 3.0, SOON);
    let d = excp.wait_details("exrp DOWN", SOON, |d| d["recordingProcessor"]["status"] == "DOWN");
    assert_eq!((d["callsAwaitingDelivery"].as_u64(), d["recordingsAwaitingDelivery"].as_u64()), (Some(1), Some(2)));
    assert_eq!(excp.metric("excp_recordings_pending_delivery", &[]), 2.0);

    // Up again but answering 503, then 500: every attempt is refused, and retried.
    exrp.set(Mode::Fail(503));
    exrp.wait(SOON, "two attempts answered 503", |r| r.len() >= 2);
    exrp.set(Mode::Fail(500));
    let before = exrp.received().len();
    exrp.wait(SOON, "an attempt answered 500", |r| r.len() > before);
    assert!(exrp.jobs().is_empty());
    assert_eq!(excp.metric("excp_interaction_ends_sent_total", &[]), 0.0);

    exrp.set(Mode::Accept);
    exrp.wait_jobs(&call, &[&media_id(&call, 1), &media_id(&call, 2)], SOON);
    excp.wait_metric("excp_interaction_ends_sent_total", &[], 1.0, SOON);
    excp.settle();
    let accepted = exrp.accepted();
    assert_eq!(accepted.len(), 1, "accepted once, then no more sends: {accepted:#?}");
    assert_eq!(accepted[0].body["corrId"], corr_id.as_str(), "every attempt carries the end's corrId");
    for r in exrp.received() {
        assert_eq!(r.body, accepted[0].body, "every attempt sends the same interaction-end");
    }
    let retried = excp.metric("excp_interaction_ends_retried_total", &[]);
    let failed_attempts = exrp.received().len() - 1;
    assert!(retried >= 3.0 + failed_attempts as f64, "retried {retried}, {failed_attempts} attempts answered 5xx");
    assert_eq!(excp.metric("excp_recordings_delivered_total", &[]), 2.0);
    let d = excp.wait_details("exrp UP", SOON, |d| d["recordingProcessor"]["status"] == "UP");
    assert_eq!((d["callsAwaitingDelivery"].as_u64(), d["recordingsAwaitingDelivery"].as_u64()), (Some(0), Some(0)));
    assert_eq!(excp.metric("excp_recordings_pending_delivery", &[]), 0.0);
}

#[test]
fn exrp_hanging_beyond_request_timeout_is_retried() {
    let exrp = FakeExrp::start(Mode::Hang);
    let excp = Excp::start("hang", &Cfg::new(&exrp.url()).set("request_timeout", &q("500ms")));
    let call = call_id("exrphang");
    excp.accept(&media(&call, 1));
    excp.end_ok(&call);

    exrp.wait(SOON, "two attempts on a hanging exrp", |r| r.len() >= 2);
    let gap = exrp.received()[1].at - exrp.received()[0].at;
    assert!(gap >= Duration::from_millis(500), "the second attempt came {gap:?} after the first, before the timeout");
    excp.wait_metric("excp_interaction_ends_retried_total", &[], 1.0, SOON);
    // excp gave up on the hung connection (closed it) rather than leaving it open.
    let deadline = Instant::now() + SOON;
    while exrp.abandoned() == 0 {
        assert!(Instant::now() < deadline, "excp never closed a hung connection");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(exrp.jobs().is_empty());

    exrp.set(Mode::Accept);
    exrp.wait_jobs(&call, &[&media_id(&call, 1)], SOON);
    excp.wait_metric("excp_interaction_ends_sent_total", &[], 1.0, SOON);
    excp.settle();
    assert_eq!(exrp.accepted().len(), 1, "{:#?}", exrp.accepted());
}

#[test]
fn sigterm_while_exrp_hangs_exits_zero_and_the_call_goes_out_after_restart() {
    let exrp = FakeExrp::start(Mode::Hang);
    let mut excp = Excp::start("sigterm", &Cfg::new(&exrp.url()));
    let call = call_id("sigterm");
    excp.accept(&media(&call, 1));
    excp.end_ok(&call);
    exrp.wait(SOON, "an attempt in flight", |r| !r.is_empty());
    let (status, logs) = excp.stop();
    assert!(status.success(), "{status:?}\n{logs}");
    // The hung delivery did not hold the exit until the grace period (30 s) ran out.
    assert!(!logs.contains("did not stop within the grace period"), "{logs}");
    assert!(logs.contains("stopped cleanly"), "{logs}");
    assert!(exrp.jobs().is_empty());

    exrp.set(Mode::Accept);
    excp.restart();
    exrp.wait_jobs(&call, &[&media_id(&call, 1)], SOON);
    excp.wait_details("delivered", SOON, |d| d["recordingsAwaitingDelivery"] == 0);
}

// ---------------------------------------------------------------------------------------------
// 5. kill -9

#[test]
fn kill9_after_metadata_after_the_end_and_before_exrp_answered_loses_nothing() {
    let exrp = FakeExrp::start(Mode::Down);
    let mut excp = Excp::start("kill9", &Cfg::new(&exrp.url()));
    let call = call_id("killnine");
    let (r1, r2, r3) = (media(&call, 1), media(&call, 2), media(&call, 3));

    // Metadata accepted, then kill -9.
    excp.accept(&r1);
    excp.accept(&gir_shape(&call, std::slice::from_ref(&r2)));
    excp.kill9();
    excp.restart();
    let d = excp.details();
    assert_eq!(
        (d["calls"].as_u64(), d["openCalls"].as_u64(), d["recordingsAwaitingDelivery"].as_u64()),
        (Some(1), Some(1), Some(2)),
        "after the first restart: {d}"
    );

    // More metadata, the end (exrp still down), then kill -9.
    excp.accept(&r3);
    let corr_id = excp.end_ok(&call);
    excp.kill9();
    assert!(exrp.received().is_empty());

    // exrp takes the job but is slow to say so: kill -9 before excp hears the 202.
    exrp.set(Mode::AcceptSlow(Duration::from_secs(4)));
    excp.restart();
    let d = excp.details();
    assert_eq!((d["openCalls"].as_u64(), d["recordingsAwaitingDelivery"].as_u64()), (Some(0), Some(3)), "{d}");
    exrp.wait(SOON, "the interaction-end after the second restart", |r| !r.is_empty());
    excp.kill9();

    // Back for good: excp sends again, exrp dedups.
    exrp.set(Mode::Accept);
    excp.restart();
    excp.wait_details("everything delivered", SOON, |d| d["recordingsAwaitingDelivery"] == 0);
    excp.wait_metric("excp_interaction_ends_sent_total", &[], 1.0, SOON);

    let all = vec![media_id(&call, 1), media_id(&call, 2), media_id(&call, 3)];
    assert_eq!(exrp.jobs_of(&call), all, "every recording reached exrp");
    assert_eq!(exrp.jobs().len(), 3, "each taken once: {:?}", exrp.jobs());
    for id in &all {
        assert!(exrp.offers(&call, id) >= 2, "{id} was offered before and after the kill");
    }
    let received = exrp.received();
    assert!(received.len() >= 2, "{received:#?}");
    for r in &received {
        assert_eq!(r.body["corrId"], corr_id.as_str(), "the end's corrId survives restarts");
        assert_eq!(r.call_uuid(), call);
        assert_eq!(sorted(r.media_ids()), all);
    }
    let rec = received.last().unwrap().body["recordings"].as_array().unwrap().clone();
    for posted in [&r1, &r2, &r3] {
        check_recording(rec.iter().find(|r| r["mediaId"] == posted["mediaId"]).unwrap(), posted);
    }
    // Only the call's record is in the state directory: no temp file survived the kills.
    assert_eq!(excp.state_files(), vec![format!("{call}.json")]);
}

// ---------------------------------------------------------------------------------------------
// 6. Late metadata

#[test]
fn late_metadata_for_a_delivered_call_goes_out_as_a_follow_up_with_only_the_new_recording() {
    let exrp = FakeExrp::start(Mode::Accept);
    let excp = Excp::start("late", &Cfg::new(&exrp.url()));
    let call = call_id("latemeta");
    excp.accept(&media(&call, 1));
    excp.accept(&media(&call, 2));
    excp.end_ok(&call);
    exrp.wait_jobs(&call, &[&media_id(&call, 1), &media_id(&call, 2)], SOON);
    excp.wait_details("delivered", SOON, |d| d["recordingsAwaitingDelivery"] == 0);

    // A repeat of a delivered recording changes nothing and sends nothing.
    excp.accept(&media(&call, 1));
    excp.settle();
    assert_eq!(exrp.received().len(), 1, "{:#?}", exrp.received());

    let late = media(&call, 3);
    excp.accept(&late);
    let received = exrp.wait(SOON, "a follow-up", |r| r.len() >= 2);
    let follow_up = &received[1].body;
    assert_eq!(follow_up["callUUID"], call.as_str());
    assert_eq!(received[1].media_ids(), vec![media_id(&call, 3)], "only the new recording: {follow_up}");
    check_recording(&follow_up["recordings"][0], &late);
    assert_eq!(follow_up["source"], "third-party");
    excp.settle();
    assert_eq!(exrp.received().len(), 2, "{:#?}", exrp.received());
    assert_eq!(exrp.jobs_of(&call).len(), 3);
    assert_eq!(excp.metric("excp_interaction_ends_sent_total", &[]), 2.0);
}

#[test]
fn a_delivered_call_is_forgotten_after_delivered_retention() {
    let exrp = FakeExrp::start(Mode::Accept);
    // 4 s: long enough that the checks just after delivery fall inside it on a loaded machine.
    let excp = Excp::start("retention", &Cfg::new(&exrp.url()).set("delivered_retention", &q("4s")));
    let call = call_id("retention");
    excp.accept(&media(&call, 1));
    excp.end_ok(&call);
    exrp.wait_jobs(&call, &[&media_id(&call, 1)], SOON);
    // Remembered for a while (a repeat is not sent again) ...
    excp.accept(&media(&call, 1));
    assert_eq!(excp.details()["calls"], 1);
    // The delivered state may still be being written (a temp file beside the record).
    wait_until("one record, no temp file", SOON, || excp.state_files() == vec![format!("{call}.json")]);
    // ... then forgotten, record and all.
    excp.wait_details("the call forgotten", SOON, |d| d["calls"] == 0);
    assert!(excp.state_files().is_empty(), "{:?}", excp.state_files());
    assert_eq!(exrp.received().len(), 1, "{:#?}", exrp.received());
    let unknown = excp.end(&call);
    assert_eq!((unknown.status, unknown.code()), (404, 40402), "{unknown:?}");
}

#[test]
fn concurrent_posts_for_one_call_all_reach_one_interaction_end() {
    let exrp = FakeExrp::start(Mode::Accept);
    let excp = Excp::start("concurrent", &Cfg::new(&exrp.url()));
    let call = call_id("concurrent");
    let addr = excp.addr();
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            let call = call.clone();
            std::thread::spawn(move || {
                for i in 0..5u32 {
                    let body = media(&call, t * 5 + i).to_string();
                    let reply = request(addr, "POST", "/api/v1/recording", body.as_bytes());
                    assert_eq!((reply.status, reply.code()), (200, 0), "{reply:?}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(excp.details()["recordingsAwaitingDelivery"], 40);
    excp.end_ok(&call);
    let received = exrp.wait(SOON, "the interaction-end", |r| !r.is_empty());
    let want = sorted((0..40).map(|n| media_id(&call, n)).collect());
    assert_eq!(sorted(received[0].media_ids()), want);
    excp.settle();
    assert_eq!(exrp.received().len(), 1);
    assert_eq!(excp.metric("excp_recordings_accepted_total", &[]), 40.0);
}

// ---------------------------------------------------------------------------------------------
// 7. recording_enabled = false

#[test]
fn recording_disabled_accepts_with_200_and_sends_nothing() {
    let exrp = FakeExrp::start(Mode::Accept);
    let cfg = Cfg::new(&exrp.url()).set("quiet_period", &q("1s")).provider("recording_enabled", "false");
    let excp = Excp::start("disabled", &cfg);
    let call = call_id("disabled");
    let single = excp.post(&media(&call, 1));
    assert_eq!((single.status, single.code()), (200, 0), "{single:?}");
    let gir = excp.post(&gir_shape(&call, &[media(&call, 2), media(&call, 3)]));
    assert_eq!((gir.status, gir.code()), (200, 0), "{gir:?}");
    assert!(is_uuid_v4(&single.corr_id()));
    // An empty POST still gets the documented answer.
    assert_eq!(excp.post_bytes(b"").status, 404);

    excp.settle();
    assert!(exrp.received().is_empty(), "{:#?}", exrp.received());
    assert!(exrp.other().is_empty());
    let d = excp.details();
    assert_eq!((d["calls"].as_u64(), d["recordingEnabled"].as_bool()), (Some(0), Some(false)), "{d}");
    assert!(excp.state_files().is_empty(), "{:?}", excp.state_files());
    wait_until("the recording_enabled log line", SOON, || excp.proc().logs().contains("recording_enabled is false"));
}

// ---------------------------------------------------------------------------------------------
// 8. Bad input

#[test]
fn bad_input_gets_its_4xx_code_and_changes_nothing() {
    let exrp = FakeExrp::start(Mode::Accept);
    let excp = Excp::start("bad", &Cfg::new(&exrp.url()).set("max_body_size", &q("256KiB")));
    // One good call, so "nothing changes" is checked against a non-empty state.
    let good = call_id("goodcall");
    excp.accept(&media(&good, 1));
    let files = excp.state_files();
    let record = std::fs::read(excp.calls_dir().join(format!("{good}.json"))).unwrap();
    assert_eq!(files, vec![format!("{good}.json")]);

    let call = call_id("badcall");
    let mut deep = "[".repeat(100_000).into_bytes();
    deep.extend_from_slice(&"]".repeat(100_000).into_bytes()[..10]);
    let huge = json!({"callUUID": call, "mediaId": "x.opus", "pad": "p".repeat(300_000)}).to_string().into_bytes();
    let cases: Vec<(&str, Vec<u8>, u16, u64)> = vec![
        ("malformed JSON", b"{\"callUUID\": \"C1\", ".to_vec(), 400, 40000),
        ("not JSON at all", b"callUUID=C1&mediaId=x".to_vec(), 400, 40000),
        ("invalid UTF-8", b"{\"callUUID\":\"\xff\xfe\"}".to_vec(), 400, 40000),
        ("100k nested [", deep, 400, 40000),
        ("a JSON array", json!([media(&call, 1)]).to_string().into_bytes(), 400, 40001),
        ("a JSON string", b"\"hello\"".to_vec(), 400, 40001),
        ("null", b"null".to_vec(), 400, 40001),
        ("mediaFiles not a list", json!({"id": call, "mediaFiles": {"a": 1}}).to_string().into_bytes(), 400, 40001),
        ("mediaFiles empty", json!({"id": call, "mediaFiles": []}).to_string().into_bytes(), 400, 40001),
        ("a media file that is a number", json!({"id": call, "mediaFiles": [3]}).to_string().into_bytes(), 400, 40001),
        (
            "one good file, one bad",
            json!({"id": call, "mediaFiles": [media(&call, 1), "x"]}).to_string().into_bytes(),
            400,
            40001,
        ),
        (
            "no mediaId nor mediaUri",
            json!({"callUUID": call, "type": "audio/opus"}).to_string().into_bytes(),
            400,
            40001,
        ),
        ("mediaId with ../", json!({"callUUID": call, "mediaId": "../x.opus"}).to_string().into_bytes(), 400, 40001),
        ("mediaId ..", json!({"callUUID": call, "mediaId": ".."}).to_string().into_bytes(), 400, 40001),
        ("no CallUUID", json!({"mediaId": "x.opus"}).to_string().into_bytes(), 404, 40402),
        ("empty object", b"{}".to_vec(), 404, 40402),
        (
            "CallUUID with ../",
            json!({"callUUID": "../../etc", "mediaId": "x.opus"}).to_string().into_bytes(),
            404,
            40402,
        ),
        ("CallUUID with /", json!({"callUUID": "a/b", "mediaId": "x.opus"}).to_string().into_bytes(), 404, 40402),
        (
            "GIR id with ../",
            json!({"id": "../x", "mediaFiles": [{"mediaId": "x.opus"}]}).to_string().into_bytes(),
            404,
            40402,
        ),
        ("CallUUID a number", json!({"callUUID": 42, "mediaId": "x.opus"}).to_string().into_bytes(), 404, 40402),
        (
            "CallUUID too long",
            json!({"callUUID": "A".repeat(200), "mediaId": "x.opus"}).to_string().into_bytes(),
            404,
            40402,
        ),
        ("hidden CallUUID", json!({"callUUID": ".hidden", "mediaId": "x.opus"}).to_string().into_bytes(), 404, 40402),
        ("over max_body_size", huge, 413, 41300),
    ];
    for (what, body, status, code) in &cases {
        let reply = excp.post_bytes(body);
        assert_eq!((reply.status, reply.code()), (*status, *code), "{what}: {reply:?}");
        assert_eq!(reply.header("content-type"), Some("application/json"), "{what}");
        assert!(is_uuid_v4(&reply.corr_id()), "{what}: {reply:?}");
    }
    assert_eq!(excp.metric("excp_metadata_total", &[("code", "41300")]), 1.0);
    assert_eq!(excp.metric("excp_metadata_total", &[("code", "40000")]), 4.0);

    // Nothing changed: no new call, no file, the good call's record untouched.
    let d = excp.details();
    assert_eq!((d["calls"].as_u64(), d["recordingsAwaitingDelivery"].as_u64()), (Some(1), Some(1)), "{d}");
    assert_eq!(excp.state_files(), files);
    assert_eq!(std::fs::read(excp.calls_dir().join(format!("{good}.json"))).unwrap(), record);
    assert!(excp.dir.join("state").join("etc").symlink_metadata().is_err());
    assert!(excp.dir.join("etc").symlink_metadata().is_err());
    assert!(exrp.received().is_empty());

    // Wrong method or path: 404 with the reply shape, nothing created.
    let get = request(excp.addr(), "GET", "/api/v1/recording", b"");
    assert!((400..500).contains(&get.status), "{get:?}");
    let other = request(excp.addr(), "POST", "/api/v1/recordings", json!(media(&call, 1)).to_string().as_bytes());
    assert_eq!(other.status, 404, "{other:?}");
    assert_eq!(excp.state_files(), files);

    // And the good path still works.
    excp.accept(&media(&good, 2));
    assert_eq!(excp.details()["recordingsAwaitingDelivery"], 2);
}

#[test]
fn a_stalled_body_is_cut_off_in_bounded_time() {
    use std::io::Write;
    let exrp = FakeExrp::start(Mode::Accept);
    let cfg = Cfg::new(&exrp.url())
        .set("header_timeout", &q("1s"))
        .set("body_timeout", &q("1s"))
        .set("request_timeout", &q("2s"));
    let excp = Excp::start("stall", &cfg);
    let mut stream = std::net::TcpStream::connect(excp.addr()).unwrap();
    // Our read gives up after 30 s; excp's body_timeout is 1 s.
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(b"POST /api/v1/recording HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{").unwrap();
    let mut buf = [0u8; 512];
    let outcome = read_some(&mut stream, &mut buf);
    // Closed (or answered with an error) by excp: our read did not time out.
    assert!(outcome.is_ok(), "still waiting for the body: {outcome:?} {:?}", String::from_utf8_lossy(&buf));
    assert_eq!(excp.details()["calls"], 0);
}

// ---------------------------------------------------------------------------------------------
// 9. GIR mode

fn gir_cfg(exrp: &FakeExrp, rws: &FakeRws) -> Cfg {
    Cfg::new(&exrp.url())
        .provider("gir_url", &q(&rws.url()))
        .provider("gir_orgId", &q(&rws.org_id))
        .provider("gir_user", &q(&rws.user))
        .provider("gir_password", &q(&rws.password))
        .provider("gir_metadata_fetch_delay", &q("200ms"))
        .provider("gir_metadata_fetch_interval", &q("300ms"))
        .provider("gir_metadata_fetch_duration", &q("2s"))
}

/// GIR mode watching the real webdav role's store, with a 1 s quiet period.
fn gir_store_cfg(exrp: &FakeExrp, rws: &FakeRws, webdav: &crate::support::Proc) -> Cfg {
    gir_cfg(exrp, rws)
        .set("quiet_period", &q("1s"))
        .store("type", &q("WebDAV"))
        .store("url", &q(&webdav.url("/recordings")))
        .store("username", &q(crate::support::USER))
        .store("password", &q(crate::support::PASSWORD))
        .store("poll_interval", &q("200ms"))
}

fn check_rws_requests(rws: &FakeRws, call: &str) {
    let auth = {
        use base64::Engine;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", rws.user, rws.password)))
    };
    for r in rws.requests_for(call) {
        assert_eq!((r.method.as_str(), r.target.as_str()), ("GET", rws.path_of(call).as_str()), "{r:?}");
        assert_eq!(r.header("authorization"), Some(auth.as_str()), "{r:?}");
    }
}

#[test]
fn gir_mode_fetches_rws_after_the_delay_with_basic_auth_until_it_has_the_recording() {
    let exrp = FakeExrp::start(Mode::Accept);
    let rws = FakeRws::start("cc-org-1", "girops", "s3cret:with colon");
    let excp = Excp::start("gir", &gir_cfg(&exrp, &rws));
    let call = call_id("girfetch");

    let ended = Instant::now();
    let corr_id = excp.end_ok(&call);
    let deadline = Instant::now() + SOON;
    while rws.requests_for(&call).len() < 2 {
        assert!(Instant::now() < deadline, "RWS not asked twice: {:#?}\n{}", rws.requests(), excp.tail());
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = rws.requests_for(&call)[0].at - ended;
    assert!(first >= Duration::from_millis(200), "first fetch {first:?} after the end, before the delay");
    assert!(exrp.received().is_empty(), "nothing to send while RWS has nothing");
    excp.wait_metric("excp_gir_fetches_total", &[("outcome", "retry")], 1.0, SOON);

    let files = vec![
        json!({"mediaId": format!("{call}_a.opus"), "mediaUri": format!("https://s3.test/{call}_a.opus"),
               "type": "audio/opus", "startTime": "2024-05-01T10:00:00Z", "stopTime": "2024-05-01T10:01:00Z",
               "duration": 60000, "size": 12345, "parameters": {"agentId": "a1"}, "girOnly": true}),
        json!({"mediaId": format!("{call}_b.opus"), "mediaUri": format!("https://s3.test/{call}_b.opus"),
               "type": "audio/opus", "startTime": "2024-05-01T10:01:00Z", "stopTime": "2024-05-01T10:02:00Z",
               "duration": "60001", "size": 12346, "parameters": {"agentId": "a2"}}),
    ];
    rws.process(&call, json!({"id": call, "region": "eu", "mediaFiles": files}));
    let received = exrp.wait(SOON, "the GIR interaction-end", |r| !r.is_empty());
    excp.wait_metric("excp_gir_fetches_total", &[("outcome", "ok")], 1.0, SOON);
    let body = &received[0].body;
    assert_eq!(body["callUUID"], call.as_str());
    assert_eq!(body["source"], "gir", "{body}");
    assert_eq!(body["corrId"], corr_id.as_str());
    assert_eq!(sorted(received[0].media_ids()), sorted(vec![format!("{call}_a.opus"), format!("{call}_b.opus")]));
    for posted in &files {
        let rec = body["recordings"].as_array().unwrap().iter().find(|r| r["mediaId"] == posted["mediaId"]).unwrap();
        check_recording_as(rec, posted, &Value::Null);
    }
    check_rws_requests(&rws, &call);
    let fetches = rws.requests_for(&call).len();
    excp.settle_passes(5);
    assert_eq!(rws.requests_for(&call).len(), fetches, "no fetch after RWS answered");
    assert_eq!(exrp.received().len(), 1, "{:#?}", exrp.received());
    assert_eq!(excp.metric("excp_gir_fetches_total", &[("outcome", "gave_up")]), 0.0);
}

/// Many calls posted at once from many connections: every POST is answered 200, every call is
/// held, and the log shows no panic.
#[test]
fn concurrent_posts_of_many_calls_are_all_accepted_without_a_panic() {
    let exrp = FakeExrp::start(Mode::Accept);
    let excp = Excp::start("manycalls", &Cfg::new(&exrp.url()).set("fsync", "false"));
    let addr = excp.addr();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            std::thread::spawn(move || {
                for n in 0..40 {
                    let body = json!(media(&format!("MANY{t:02}X{n:03}"), 1)).to_string();
                    let reply = request(addr, "POST", "/api/v1/recording", body.as_bytes());
                    assert_eq!(reply.status, 200, "{reply:?}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(excp.details()["openCalls"], 640);
    let logs = excp.proc.as_ref().map(|p| p.logs()).unwrap_or_default();
    assert!(!logs.contains("panicked"), "{}", excp.tail());
}

/// In GIR mode MCP posts its metadata to GIR, so a call is known from its recording appearing
/// in the WebDAV store (the real webdav role here): the quiet period ends it, RWS is asked.
#[test]
fn gir_mode_learns_of_a_call_from_its_recording_in_the_store() {
    let site = crate::support::Site::new("girstore");
    let webdav = site.start();
    let exrp = FakeExrp::start(Mode::Accept);
    let rws = FakeRws::start("cc-org-3", "girops", "pw");
    let cfg = gir_store_cfg(&exrp, &rws, &webdav);
    let excp = Excp::start("girstore", &cfg);
    let call = call_id("girstore");
    let file = format!("{call}_2026-11-28_01-00-00-0001.opus");
    rws.process(&call, json!({"id": call, "mediaFiles": [{"mediaId": file, "type": "audio/opus"}]}));
    let put = crate::support::client()
        .put(webdav.url(&format!("/recordings/{file}")))
        .basic_auth(crate::support::USER, Some(crate::support::PASSWORD))
        .body(b"OggS fake opus".to_vec())
        .send()
        .unwrap();
    assert_eq!(put.status(), 201);
    let received = exrp.wait(SOON, "the interaction-end of a call seen in the store", |r| !r.is_empty());
    assert_eq!(received[0].call_uuid(), call.as_str());
    assert_eq!(received[0].media_ids(), vec![file.clone()]);
    assert_eq!(received[0].body["source"], "gir");
    check_rws_requests(&rws, &call);
    wait_until("the call-from-the-store log line", SOON, || {
        excp.tail().contains("call known from its recording in the store")
    });
    // A file not named after a call is ignored.
    let other = crate::support::client()
        .put(webdav.url("/recordings/notes.txt"))
        .basic_auth(crate::support::USER, Some(crate::support::PASSWORD))
        .body(b"x".to_vec())
        .send()
        .unwrap();
    assert_eq!(other.status(), 201);
    excp.settle_passes(5);
    assert_eq!(exrp.received().len(), 1);
}

/// RWS as it answers: play URLs on RWS, `.mp3` media ids (one the store file's stem, one a
/// uuid), `+0000` offsets, numbers as strings. The interaction-end names each file as the
/// store holds it, keeps RWS's answer as the metadata, and sends a store file RWS does not
/// name too.
#[test]
fn gir_mode_names_each_rws_media_file_as_the_store_holds_it() {
    let site = crate::support::Site::new("girnames");
    let webdav = site.start();
    let exrp = FakeExrp::start(Mode::Accept);
    let rws = FakeRws::start("cc-org-4", "girops", "pw");
    let cfg = gir_store_cfg(&exrp, &rws, &webdav);
    let excp = Excp::start("girnames", &cfg);
    let call = call_id("girnames");
    let stored = [
        format!("{call}_2026-11-28_01-00-00-006B015F-1000427D-00000001.opus"),
        format!("{call}_2026-11-28_01-05-00-006B015F-1000427D-00000002.opus"),
    ];
    let rws_host = "rws.example.com";
    let files = vec![
        json!({"mediaUri": format!("http://{rws_host}/api/v2/recordings/{call}/play/0c8e3d5a-1b2c-4d3e-9f00-aaaaaaaaaaaa.mp3"),
               "mediaPath": format!("/recordings/{call}/play/0c8e3d5a-1b2c-4d3e-9f00-aaaaaaaaaaaa.mp3"),
               "callUUID": call, "mediaId": format!("{call}_2026-11-28_01-00-00-006B015F-1000427D-00000001.mp3"),
               "type": "audio/mp3", "startTime": "2026-11-28T01:00:00.000+0000", "stopTime": "2026-11-28T01:04:00.000+0000",
               "duration": "240000", "size": "199296", "tenant": "Environment", "ivrprofile": "CallRecProfile",
               "parameters": {"dnis": "5550000", "connId": "006a0269722cd93f", "ani": "8522001"}}),
        json!({"mediaUri": format!("http://{rws_host}/api/v2/recordings/{call}/play/7d1f0e2a-0000-4000-8000-bbbbbbbbbbbb.mp3"),
               "callUUID": call, "mediaId": "7d1f0e2a-0000-4000-8000-bbbbbbbbbbbb.mp3",
               "type": "audio/mp3", "startTime": "2026-11-28T01:05:00.000+0000", "stopTime": "2026-11-28T01:06:00.000+0000",
               "duration": "60000", "size": "1000", "tenant": "Environment"}),
    ];
    rws.process(
        &call,
        json!({"id": call, "callerPhoneNumber": "8522001", "dialedPhoneNumber": "+14160000001",
        "startTime": "2026-11-28T01:00:00.000+0000", "stopTime": "2026-11-28T01:06:00.000+0000",
        "region": "eu", "mediaFiles": files, "eventHistory": []}),
    );
    for file in &stored {
        let put = crate::support::client()
            .put(webdav.url(&format!("/recordings/{file}")))
            .basic_auth(crate::support::USER, Some(crate::support::PASSWORD))
            .body(b"OggS fake opus".to_vec())
            .send()
            .unwrap();
        assert_eq!(put.status(), 201);
    }
    let received = exrp.wait(SOON, "the GIR interaction-end", |r| !r.is_empty());
    let body = &received[0].body;
    assert_eq!(sorted(received[0].media_ids()), sorted(stored.to_vec()), "{body}");
    let recs = body["recordings"].as_array().unwrap();
    for (file, posted) in stored.iter().zip(&files) {
        let rec = recs.iter().find(|r| r["mediaId"] == file.as_str()).unwrap();
        assert_eq!(rec["uri"], Value::Null, "RWS's play URL is not passed as the file: {rec}");
        assert_eq!(rec["metadata"], *posted, "RWS's answer travels as it came: {rec}");
        assert_eq!(rec["size"], json!(posted["size"].as_str().unwrap().parse::<u64>().unwrap()));
        assert_eq!(rec["startTime"], posted["startTime"]);
    }
    assert!(!body.to_string().contains(&format!("\"uri\":\"http://{rws_host}")), "{body}");
    check_rws_requests(&rws, &call);
    // The log is read from the process's stderr as it comes: wait for the line.
    crate::support::wait_until("the naming logged", SOON, || {
        let log = excp.proc.as_ref().map(|p| p.logs()).unwrap_or_default();
        log.contains("named as the store holds them") && log.contains("by_order=1")
    });
}

#[test]
fn gir_mode_gives_up_after_the_fetch_duration_and_removes_the_call() {
    let exrp = FakeExrp::start(Mode::Accept);
    let rws = FakeRws::start("cc-org-2", "girops", "pw");
    let excp = Excp::start("girgiveup", &gir_cfg(&exrp, &rws));
    let call = call_id("girnever");
    let ended = Instant::now();
    excp.end_ok(&call);
    assert_eq!(excp.details()["calls"], 1);
    assert_eq!(excp.state_files(), vec![format!("{call}.json")]);

    excp.wait_metric("excp_gir_fetches_total", &[("outcome", "gave_up")], 1.0, SOON);
    let gave_up = ended.elapsed();
    // The last fetch is the one whose next would fall after delay + duration (2.2 s).
    assert!(gave_up >= Duration::from_millis(1900), "gave up after {gave_up:?}, before delay + duration - interval");
    excp.wait_details("the call removed", SOON, |d| d["calls"] == 0);
    assert!(excp.state_files().is_empty(), "{:?}", excp.state_files());
    let asked = rws.requests_for(&call);
    assert!(asked.len() >= 3, "RWS asked {} times in 2 s at 300 ms intervals", asked.len());
    check_rws_requests(&rws, &call);
    let n = asked.len();
    excp.settle_passes(5);
    assert_eq!(rws.requests_for(&call).len(), n, "no fetch after giving up");
    assert!(exrp.received().is_empty());
    assert_eq!(excp.metric("excp_gir_fetches_total", &[("outcome", "gave_up")]), 1.0);
}

// ---------------------------------------------------------------------------------------------
// 10. max_open_calls

#[test]
fn max_open_calls_refuses_a_third_call_with_50301() {
    let exrp = FakeExrp::start(Mode::Down);
    let excp = Excp::start("maxopen", &Cfg::new(&exrp.url()).set("max_open_calls", "2"));
    let (a, b, c) = (call_id("opena"), call_id("openb"), call_id("openc"));
    excp.accept(&media(&a, 1));
    excp.accept(&media(&b, 1));
    let third = excp.post(&media(&c, 1));
    assert_eq!((third.status, third.code()), (503, 50301), "{third:?}");
    assert!(is_uuid_v4(&third.corr_id()));
    // Calls already held still take recordings.
    excp.accept(&media(&a, 2));
    let again = excp.post(&gir_shape(&c, &[media(&c, 1)]));
    assert_eq!((again.status, again.code()), (503, 50301), "{again:?}");
    assert_eq!(excp.details()["calls"], 2);
    assert_eq!(sorted(excp.state_files()), sorted(vec![format!("{a}.json"), format!("{b}.json")]));
    assert_eq!(excp.metric("excp_metadata_total", &[("code", "50301")]), 2.0);
}

#[test]
fn a_delivered_call_no_longer_counts_against_max_open_calls() {
    let exrp = FakeExrp::start(Mode::Accept);
    let excp = Excp::start("maxopenfree", &Cfg::new(&exrp.url()).set("max_open_calls", "2"));
    let (a, b, c) = (call_id("freea"), call_id("freeb"), call_id("freec"));
    excp.accept(&media(&a, 1));
    excp.accept(&media(&b, 1));
    assert_eq!(excp.post(&media(&c, 1)).status, 503);
    excp.end_ok(&a);
    exrp.wait_jobs(&a, &[&media_id(&a, 1)], SOON);
    excp.wait_details("a delivered", SOON, |d| d["recordingsAwaitingDelivery"] == 1);
    // "refusing new ones until deliveries catch up": they have, once the delivered state is
    // written (a call whose record is being written still counts); MCP retries a 503.
    let deadline = Instant::now() + SOON;
    let third = loop {
        let r = excp.post(&media(&c, 1));
        if r.status != 503 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!((third.status, third.code()), (200, 0), "{third:?}\n{}", excp.tail());
}

#[test]
fn max_recordings_per_call_refuses_more_and_keeps_what_it_has() {
    let exrp = FakeExrp::start(Mode::Accept);
    let excp = Excp::start("maxrec", &Cfg::new(&exrp.url()).set("max_recordings_per_call", "2"));
    let (a, b) = (call_id("maxreca"), call_id("maxrecb"));
    excp.accept(&media(&a, 1));
    excp.accept(&media(&a, 2));
    let third = excp.post(&media(&a, 3));
    assert_eq!((third.status, third.code()), (422, 42201), "{third:?}");
    // A repeat of one it holds is fine.
    excp.accept(&media(&a, 2));
    // A new call with too many at once: refused whole, no trace left.
    let too_many = excp.post(&gir_shape(&b, &[media(&b, 1), media(&b, 2), media(&b, 3)]));
    assert_eq!((too_many.status, too_many.code()), (422, 42201), "{too_many:?}");
    let d = excp.details();
    assert_eq!((d["calls"].as_u64(), d["recordingsAwaitingDelivery"].as_u64()), (Some(1), Some(2)), "{d}");
    assert_eq!(excp.state_files(), vec![format!("{a}.json")]);
    excp.end_ok(&a);
    exrp.wait_jobs(&a, &[&media_id(&a, 1), &media_id(&a, 2)], SOON);
    assert_eq!(exrp.jobs().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// 11. Through the real lb

#[test]
fn through_the_lb_with_one_excp_stopped_every_post_gets_200_and_every_recording_reaches_exrp() {
    let exrp = FakeExrp::start(Mode::Accept);
    let cfg = Cfg::new(&exrp.url()).set("quiet_period", &q("1s"));
    let excp1 = Excp::start("lb1", &cfg);
    let mut excp2 = Excp::start("lb2", &cfg);
    let dir = TempDir::new("excp-lb");
    let lb_path = dir.join("lb.toml");
    std::fs::write(
        &lb_path,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[lb.pools.excp]\nlisten = \"127.0.0.1:0\"\n\
             servers = [\"{}\", \"{}\"]\nnext_upstream_tries = 3\n",
            excp1.addr(),
            excp2.addr()
        ),
    )
    .unwrap();
    let lb = Proc::start(&["--role", "lb", "--config", lb_path.to_str().unwrap()]);
    let lb_addr = lb.addr("lb.excp");

    // Both up: one call's recordings spread over both instances; each sends what it holds.
    let spread = call_id("lbspread");
    for n in 1..=4 {
        let reply = request(lb_addr, "POST", "/api/v1/recording", media(&spread, n).to_string().as_bytes());
        assert_eq!((reply.status, reply.code()), (200, 0), "{reply:?}");
    }
    let all: Vec<String> = (1..=4).map(|n| media_id(&spread, n)).collect();
    let all_refs: Vec<&str> = all.iter().map(String::as_str).collect();
    exrp.wait_jobs(&spread, &all_refs, SOON);
    let partial = exrp.received().into_iter().filter(|r| r.call_uuid() == spread).count();
    assert!(partial >= 2, "round robin spreads one call over both instances: {:#?}", exrp.received());
    for e in [&excp1, &excp2] {
        e.wait_metric("excp_recordings_delivered_total", &[], 2.0, SOON);
    }

    // One instance stopped: its port refuses, the lb moves on, nothing is lost.
    let stopped = excp2.proc.take().unwrap().stop();
    assert!(stopped.success(), "{stopped:?}");
    let call = call_id("lbonedown");
    for n in 1..=6 {
        let reply = request(lb_addr, "POST", "/api/v1/recording", media(&call, n).to_string().as_bytes());
        assert_eq!((reply.status, reply.code()), (200, 0), "recording {n}: {reply:?}\n{}", lb.logs());
    }
    let reply = request(lb_addr, "POST", &format!("/api/v1/interactions/{call}/end"), b"");
    assert_eq!((reply.status, reply.code()), (200, 0), "{reply:?}");
    let ids: Vec<String> = (1..=6).map(|n| media_id(&call, n)).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    exrp.wait_jobs(&call, &refs, SOON);
    let ends: Vec<_> = exrp.received().into_iter().filter(|r| r.call_uuid() == call).collect();
    assert_eq!(ends.len(), 1, "the live instance holds the whole call: {ends:#?}");
    // Written as delivered once exrp's answer is in, just after exrp has the jobs.
    excp1.wait_details("the call delivered", SOON, |d| d["recordingsAwaitingDelivery"] == 0);
}

// ---------------------------------------------------------------------------------------------
// 12. EXCP_RECORDING_PROCESSOR_PROXY_HOST/PORT

#[test]
fn the_proxy_host_and_port_env_vars_override_recording_processor_url() {
    let exrp = FakeExrp::start(Mode::Accept);
    let decoy = FakeExrp::start(Mode::Accept);
    let port = exrp.addr().port().to_string();
    let excp = Excp::start_with_env(
        "env",
        &Cfg::new(&decoy.url()),
        &[("EXCP_RECORDING_PROCESSOR_PROXY_HOST", "127.0.0.1"), ("EXCP_RECORDING_PROCESSOR_PROXY_PORT", &port)],
    );
    assert_eq!(excp.details()["recordingProcessor"]["url"], exrp.url().as_str());
    let call = call_id("envproxy");
    excp.accept(&media(&call, 1));
    excp.end_ok(&call);
    exrp.wait_jobs(&call, &[&media_id(&call, 1)], SOON);
    assert!(decoy.received().is_empty(), "the config's URL must not be used");
}

// ---------------------------------------------------------------------------------------------
// Calls kept in a shared bucket ([excp.s3], issue 22)

/// Two excp instances keep their calls in one Garage bucket. While both beat, neither touches
/// the other's calls; once one is SIGKILLed, the other takes its calls over after
/// `takeover_after` (by the bucket's clock), merges them with its own share of the same call,
/// and delivers each recording exactly once; the end event then reaches the call through it.
#[test]
fn a_dead_instance_s_calls_are_taken_over_from_the_shared_bucket() {
    use crate::support::garage::{Garage, REGION};
    let g = Garage::start("calls");
    let exrp = FakeExrp::start(Mode::Accept);
    let cfg = |name: &str| {
        Cfg::new(&exrp.url())
            .set("instance", &q(name))
            .set("takeover_after", &q("5s"))
            .set("quiet_period", &q("60s"))
            .s3("endpoint", &q(&g.endpoint(if name == "a" { 0 } else { 1 })))
            .s3("region", &q(REGION))
            .s3("bucket", &q(&g.bucket))
            .s3("access_key_id", &q(&g.key_id))
            .s3("secret_access_key", &q(&g.secret))
    };
    let mut a = Excp::start("shared-a", &cfg("a"));
    let b = Excp::start("shared-b", &cfg("b"));
    let (only_a, split) = (call_id("onlya"), call_id("split"));
    a.accept(&media(&only_a, 0));
    a.accept(&media(&only_a, 1));
    // One call's recordings split between the two, as the lb's round robin leaves them.
    a.accept(&media(&split, 0));
    b.accept(&media(&split, 1));
    assert!(!a.calls_dir().exists(), "kept in the bucket, not on disk");
    assert_eq!(g.keys(2, "excp/a/records/").len(), 2, "{:?}", g.keys(2, "excp/"));

    // Both alive for three takeover periods: nothing moves.
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(b.metric("excp_calls_taken_over_total", &[]), 0.0, "{}", b.tail());
    assert_eq!(b.metric("excp_calls", &[]), 1.0);
    assert!(exrp.received().is_empty());

    // While both live, an end event reaches every share of its call wherever it lands: a
    // call held whole by the other instance, and one split between the two.
    let (elsewhere, both) = (call_id("elsewhere"), call_id("both"));
    a.accept(&media(&elsewhere, 0));
    a.accept(&media(&both, 0));
    b.accept(&media(&both, 1));
    b.end_ok(&elsewhere);
    b.end_ok(&both);
    exrp.wait_jobs(&elsewhere, &[&media_id(&elsewhere, 0)], Duration::from_secs(20));
    exrp.wait_jobs(&both, &[&media_id(&both, 0), &media_id(&both, 1)], Duration::from_secs(20));
    assert_eq!(a.metric("excp_interactions_ended_total", &[("reason", "event")]), 2.0, "{}", a.tail());
    assert_eq!(b.metric("excp_calls_taken_over_total", &[]), 0.0, "a live instance keeps its calls");
    let unknown = b.end(&call_id("nobody"));
    assert_eq!((unknown.status, unknown.code()), (404, 40402), "a call no instance holds");
    // a has recorded those deliveries (a kill before that would make b offer them again, which
    // exrp takes as the repeat it is; here each offer is counted).
    a.wait_metric("excp_recordings_delivered_total", &[], 2.0, SOON);

    a.kill9();
    // a held four calls (two delivered already, kept to recognise repeats): all move to b, the
    // split ones merged with b's shares.
    b.wait_metric("excp_calls_taken_over_total", &[], 4.0, Duration::from_secs(30));
    assert_eq!(b.metric("excp_calls", &[]), 4.0, "the split calls merged into one each");
    b.end_ok(&only_a);
    b.end_ok(&split);
    exrp.wait_jobs(&only_a, &[&media_id(&only_a, 0), &media_id(&only_a, 1)], SOON);
    exrp.wait_jobs(&split, &[&media_id(&split, 0), &media_id(&split, 1)], SOON);
    b.settle();
    for (call, n) in [(&only_a, 0), (&only_a, 1), (&split, 0), (&split, 1), (&elsewhere, 0), (&both, 0), (&both, 1)] {
        assert_eq!(exrp.offers(call, &media_id(call, n)), 1, "{call} {n} offered once");
    }
    let details = b.details();
    assert_eq!(details["sharedBucket"]["takeovers"], 4, "{details}");
    // The dead instance's prefix is empty and its heartbeat buried: nothing to take again.
    let left = g.keys(2, "excp/");
    assert!(!left.iter().any(|k| k.starts_with("excp/a/")), "{left:?}");
    assert_eq!(left.iter().filter(|k| k.starts_with("excp/b/records/")).count(), 4, "{left:?}");
    assert!(b.proc().logs().contains("excp instance stopped its heartbeat"), "{}", b.tail());
}
