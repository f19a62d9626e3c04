//! The exrp role end to end: interaction-ends in, each recording fetched from the real webdav
//! role, checked, delivered once to the local sink or the fake Genesys Cloud of
//! `support/cloud.rs`, then deleted from WebDAV. Loopback, port 0, short timings, every wait
//! bounded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::cloud::FakeCloud;
use crate::support::{PASSWORD, Proc, Site, TempDir, USER, client, metric, raw_request};

/// A real Ogg/Opus file (assets/README.md says how it was made).
pub const SAMPLE: &[u8] = include_bytes!("../../assets/sample.opus");
const SOON: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Harness

/// The real webdav role with a store directory.
pub struct Store {
    pub site: Site,
    pub proc: Proc,
}

impl Store {
    pub fn start(name: &str) -> Store {
        let site = Site::new(name);
        let proc = site.start();
        Store { site, proc }
    }

    pub fn url(&self) -> String {
        self.proc.url("/recordings")
    }

    pub fn put(&self, name: &str, bytes: &[u8]) {
        let url = format!("{}/{}", self.url(), percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC));
        let r = client().put(url).basic_auth(USER, Some(PASSWORD)).body(bytes.to_vec()).send().unwrap();
        assert!(r.status().is_success(), "PUT {name}: {}", r.status());
    }

    pub fn has(&self, name: &str) -> bool {
        self.site.root().join(name).exists()
    }

    /// Recordings left in the store (not our temp files).
    pub fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.site.root())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    }
}

/// One exrp process with its state directory; restartable, killable.
pub struct Exrp {
    pub dir: TempDir,
    config: PathBuf,
    pub proc: Option<Proc>,
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {self:?}"))
    }
}

/// `[exrp]` keys for tests: fast retries and scans.
pub const FAST: &str = "retry_initial = \"100ms\"\nretry_max = \"1s\"\nscan_interval = \"1s\"\nrequest_timeout = \"3s\"\nclaim_timeout = \"6s\"\nfsync = false\n";

impl Exrp {
    /// `sink` is the TOML of a sink table (or "" for the local sink in the state dir);
    /// `extra` goes into `[exrp]`.
    pub fn start(name: &str, store_url: &str, sink: &str, extra: &str) -> Exrp {
        let dir = TempDir::new(name);
        let config = dir.join("exrp.toml");
        let text = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[exrp]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"{}\"\ninstance = \"{name}\"\n{FAST}{extra}\n\
             [exrp.transient_storage]\ntype = \"WebDAV\"\nurl = \"{store_url}\"\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\n\n{sink}\n",
            dir.join("state").display()
        );
        std::fs::write(&config, text).unwrap();
        let mut e = Exrp { dir, config, proc: None };
        e.restart();
        e
    }

    pub fn restart(&mut self) {
        let proc = Proc::start(&["--role", "exrp", "--config", self.config.to_str().unwrap()]);
        self.proc = Some(proc);
    }

    pub fn proc(&self) -> &Proc {
        self.proc.as_ref().expect("exrp running")
    }

    pub fn kill9(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill9();
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.proc().addr("exrp")
    }

    pub fn post(&self, body: &Value) -> Reply {
        self.post_bytes(body.to_string().as_bytes())
    }

    pub fn post_bytes(&self, body: &[u8]) -> Reply {
        let request = format!(
            "POST /api/v1/interaction-end HTTP/1.1\r\nHost: exrp\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let (status, _, text) = raw_request(self.addr(), &request, body);
        Reply { status, text: String::from_utf8_lossy(&text).into_owned() }
    }

    pub fn health(&self) -> (u16, Value) {
        let (status, _, body) = raw_request(self.addr(), "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"");
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    pub fn metrics(&self) -> String {
        client().get(self.proc().admin_url("/metrics")).send().unwrap().text().unwrap()
    }

    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.metrics(), name, labels).unwrap_or(0.0)
    }

    /// The local sink's directory for a tenant.
    pub fn sink_dir(&self, tenant: &str) -> PathBuf {
        self.dir.join("state").join("injected").join(tenant)
    }

    pub fn queue(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(crate::support::BIN)
            .arg("queue")
            .args(args)
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .output()
            .unwrap();
        assert!(out.status.success(), "queue {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn wait_health(&self, what: &str, cond: impl Fn(u16, &Value) -> bool) -> Value {
        let deadline = Instant::now() + SOON;
        loop {
            let (status, body) = self.health();
            if cond(status, &body) {
                return body;
            }
            assert!(Instant::now() < deadline, "{what}: health stayed {status} {body}\nlogs:\n{}", self.proc().logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the queue holds `done` finished and nothing pending or working.
    pub fn wait_idle(&self, done: u64, dead: u64) -> Value {
        self.wait_health("queue idle", |_, b| {
            let q = &b["queue"];
            q["pending"] == 0 && q["working"] == 0 && q["done"] == done && q["dead"] == dead
        })
    }
}

/// An interaction-end for `call` with one recording per (mediaId, file name, size).
pub fn end_body(call: &str, recordings: &[(&str, &str, usize)]) -> Value {
    let recs: Vec<Value> = recordings
        .iter()
        .map(|(media, file, size)| {
            json!({
                "mediaId": media,
                "uri": format!("http://mcp-says-elsewhere.invalid/recordings/{file}"),
                "contentType": "audio/opus",
                "startTime": "2026-11-28T10:00:00.000Z",
                "stopTime": "2026-11-28T10:00:03.000Z",
                "durationMs": 3000,
                "size": size,
                "metadata": { "ani": "5551234", "dnis": "5550000", "agentId": "agent7", "mediaUri": file },
            })
        })
        .collect();
    json!({
        "callUUID": call,
        "corrId": "c0ffee00-0000-4000-8000-000000000000",
        "tenant": "Environment",
        "startTime": "2026-11-28T10:00:00.000Z",
        "endTime": "2026-11-28T10:00:05.000Z",
        "source": "third-party",
        "sta": { "programId": "prog1", "language": "en-US" },
        "recordings": recs,
    })
}

fn wait_until(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn a_recording_reaches_the_local_sink_byte_exact_with_its_metadata_and_leaves_webdav() {
    let store = Store::start("exrp-local");
    let exrp = Exrp::start("exrp-local", &store.url(), "", "");
    let names: Vec<String> = (1..=3).map(|i| format!("CALL1_m{i}.opus")).collect();
    for n in &names {
        store.put(n, SAMPLE);
    }
    let body = end_body("CALL1", &[("m1", &names[0], SAMPLE.len()), ("m2", &names[1], SAMPLE.len()), ("m3", &names[2], SAMPLE.len())]);
    let r = exrp.post(&body);
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json()["accepted"], 3);
    assert_eq!(r.json()["status"]["code"], 0);
    exrp.wait_idle(3, 0);
    let sink = exrp.sink_dir("Environment");
    for n in &names {
        assert_eq!(std::fs::read(sink.join(n)).unwrap(), SAMPLE, "{n} byte-exact in the sink");
        let meta: Value = serde_json::from_slice(&std::fs::read(sink.join(format!("{n}.json"))).unwrap()).unwrap();
        assert_eq!(meta["callUUID"], "CALL1");
        assert_eq!(meta["sta"]["programId"], "prog1");
        assert_eq!(meta["recording"]["metadata"]["ani"], "5551234");
    }
    assert!(store.files().is_empty(), "left in WebDAV: {:?}", store.files());
    // The same interaction-end again: nothing new.
    let again = exrp.post(&body);
    assert_eq!((again.status, again.json()["accepted"].clone(), again.json()["duplicate"].clone()), (202, json!(0), json!(3)));
    assert_eq!(exrp.metric("exrp_jobs_finished_total", &[("outcome", "uploaded")]), 3.0);
    let listed = exrp.queue(&["list"]);
    assert!(listed.contains("done 3"), "{listed}");
}

#[test]
fn bad_bodies_get_4xx_with_a_reason_and_change_nothing() {
    let store = Store::start("exrp-bad");
    let exrp = Exrp::start("exrp-bad", &store.url(), "", "max_body_size = \"64KiB\"\n");
    for (body, status, needle) in [
        (&b"{not json"[..], 400, "not JSON"),
        (b"[]", 400, "JSON object"),
        (br#"{"recordings":[{"mediaId":"a"}]}"#, 400, "callUUID"),
        (br#"{"callUUID":"C","recordings":[]}"#, 400, "empty"),
        (br#"{"callUUID":"C","recordings":[{"uri":"http://h/a/..%2F..%2Fetc%2Fpasswd"}]}"#, 400, "file name"),
    ] {
        let r = exrp.post_bytes(body);
        assert_eq!(r.status, status, "{}: {r:?}", String::from_utf8_lossy(body));
        assert!(r.text.contains(needle), "{needle} in {r:?}");
    }
    let huge = vec![b' '; 100 << 10];
    assert_eq!(exrp.post_bytes(&huge).status, 413);
    assert_eq!(exrp.health().1["queue"], json!({"pending": 0, "working": 0, "done": 0, "dead": 0}));
}

#[test]
fn a_truncated_or_foreign_file_goes_dead_with_its_reason_and_stays_in_webdav() {
    let store = Store::start("exrp-corrupt");
    let exrp = Exrp::start("exrp-corrupt", &store.url(), "", "");
    store.put("C2_cut.opus", &SAMPLE[..SAMPLE.len() - 100]);
    store.put("C2_wav.opus", b"RIFF\x24\x00\x00\x00WAVEfmt ");
    store.put("C2_size.opus", SAMPLE);
    let r = exrp.post(&end_body(
        "C2",
        &[("cut", "C2_cut.opus", 0), ("wav", "C2_wav.opus", 0), ("size", "C2_size.opus", SAMPLE.len() + 5)],
    ));
    assert_eq!(r.status, 202);
    exrp.wait_idle(0, 3);
    assert_eq!(store.files(), vec!["C2_cut.opus", "C2_size.opus", "C2_wav.opus"]);
    let dead = exrp.queue(&["list", "--state", "dead", "--json"]);
    for needle in ["truncated", "not an Ogg", "metadata says"] {
        assert!(dead.contains(needle), "{needle} in {dead}");
    }
    assert!(std::fs::read_dir(exrp.dir.join("state").join("injected")).map_or(0, |d| d.count()) == 0);
    // The operator fixes the file and re-drives the job.
    store.put("C2_cut.opus", SAMPLE);
    exrp.queue(&["retry", "C2", "cut"]);
    exrp.wait_idle(1, 2);
    assert!(!store.has("C2_cut.opus"));
}

#[test]
fn the_cloud_sink_gets_each_recording_once_with_md5_and_metadata() {
    let store = Store::start("exrp-cloud");
    let cloud = FakeCloud::start("client-1", "secret-1");
    let sink = format!(
        "[exrp.genesys_cloud]\napi_url = \"{0}\"\nlogin_url = \"{0}\"\nclient_id = \"client-1\"\nclient_secret = \"secret-1\"\n",
        cloud.base_url()
    );
    let exrp = Exrp::start("exrp-cloud", &store.url(), &sink, "");
    let name = "011AP643CSAPR4FKQGQE31TAES00029V_2025-01-01_10%3A00%3A00.opus";
    store.put(name, SAMPLE);
    assert_eq!(exrp.post(&end_body("011AP643CSAPR4FKQGQE31TAES00029V", &[("m1", name, SAMPLE.len())])).status, 202);
    exrp.wait_idle(1, 0);
    let objects = cloud.objects_of("011AP643CSAPR4FKQGQE31TAES00029V_2025-01-01_10_3A00_3A00.opus");
    assert_eq!(objects.len(), 1, "one upload under the cleaned name: {:?}", cloud.presigned());
    assert_eq!(objects[0].bytes.as_deref(), Some(SAMPLE));
    assert_eq!(cloud.uploads_of("011AP643CSAPR4FKQGQE31TAES00029V_2025-01-01_10_3A00_3A00.opus.json"), 1);
    assert!(store.files().is_empty());
    assert_eq!(cloud.token_grants(), 1);
}
