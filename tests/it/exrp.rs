//! The exrp role end to end: interaction-ends in, each recording fetched from the real webdav
//! role, checked, delivered once to the local sink or the fake Genesys Cloud of
//! `support/cloud.rs`, then deleted from WebDAV. Loopback, port 0, short timings, every wait
//! bounded.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::cloud::FakeCloud;
use crate::support::{PASSWORD, Proc, Site, TempDir, USER, client, metric, raw_request, wait_until};

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
        let url = format!(
            "{}/{}",
            self.url(),
            percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
        );
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
    pub config: PathBuf,
    pub proc: Option<Proc>,
    /// Environment variables the process starts with.
    pub env: Vec<(String, String)>,
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
        Exrp::start_with_env(name, store_url, sink, extra, &[])
    }

    pub fn start_with_env(name: &str, store_url: &str, sink: &str, extra: &str, env: &[(&str, &str)]) -> Exrp {
        let dir = TempDir::new(name);
        let config = dir.join("exrp.toml");
        let text = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[exrp]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"{}\"\ninstance = \"{name}\"\n{FAST}{extra}\n\
             [exrp.transient_storage]\ntype = \"WebDAV\"\nurl = \"{store_url}\"\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\n\n{sink}\n",
            dir.join("state").display()
        );
        std::fs::write(&config, text).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut e = Exrp { dir, config, proc: None, env };
        e.restart();
        e
    }

    pub fn restart(&mut self) {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let proc = Proc::start_with_env(&["--role", "exrp", "--config", self.config.to_str().unwrap()], &env);
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
        let mut raw = crate::support::Raw::connect(self.addr());
        raw.send(request.as_bytes());
        raw.send(body);
        let (status, _, text) = crate::support::try_read_response(&mut raw.stream)
            .unwrap_or_else(|e| panic!("POST interaction-end: {e}\nexrp's log:\n{}", self.proc().logs()));
        Reply { status, text: String::from_utf8_lossy(&text).into_owned() }
    }

    pub fn health(&self) -> (u16, Value) {
        let (status, _, body) =
            raw_request(self.addr(), "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"");
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

    /// Rewrites nothing: sends SIGHUP and waits for the reload's log line.
    pub fn reload(&self) {
        let before = self.proc().logs().matches("SIGHUP: exrp configuration reloaded").count();
        self.proc().signal("HUP");
        wait_until("the SIGHUP reload", SOON, || {
            self.proc().logs().matches("SIGHUP: exrp configuration reloaded").count() > before
        });
    }

    /// Waits until the queue holds `done` finished and nothing pending or working.
    pub fn wait_idle(&self, done: u64, dead: u64) -> Value {
        self.wait_health("queue idle", |_, b| {
            let q = &b["queue"];
            q["pending"] == 0 && q["working"] == 0 && q["done"] == done && q["dead"] == dead
        })
    }
}

/// An interaction-end for `call` with one recording per (RWS media uuid, file name, size): the
/// mediaId is the store's file name, the uri an RWS play URL (as in GIR mode) that names
/// something else on another host, which exrp must not use.
pub fn end_body(call: &str, recordings: &[(&str, &str, usize)]) -> Value {
    let recs: Vec<Value> = recordings
        .iter()
        .map(|(media, file, size)| {
            json!({
                "mediaId": file,
                "uri": format!("http://rws.invalid/api/v2/recordings/{call}/play/{}.mp3", segment(media)),
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

/// A file name as one URI path segment.
fn segment(name: &str) -> String {
    const SET: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'.').remove(b'_').remove(b'-').remove(b'~');
    percent_encoding::utf8_percent_encode(name, SET).to_string()
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
    let body = end_body(
        "CALL1",
        &[("m1", &names[0], SAMPLE.len()), ("m2", &names[1], SAMPLE.len()), ("m3", &names[2], SAMPLE.len())],
    );
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
    assert_eq!(
        (again.status, again.json()["accepted"].clone(), again.json()["duplicate"].clone()),
        (202, json!(0), json!(3))
    );
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
        (br#"{"callUUID":"C","recordings":[{"uri":"http://h/a/..%2F..%2Fetc%2Fpasswd"}]}"#, 400, "names a file"),
        (br#"{"callUUID":"C","recordings":[{"mediaId":"../../etc/passwd"}]}"#, 400, "file name in the store"),
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
    let shown: Value = serde_json::from_str(&exrp.queue(&["show", "C2", "C2_wav.opus"])).unwrap();
    assert_eq!(shown["state"], "dead");
    assert_eq!(shown["spec"]["recording"]["mediaId"], "C2_wav.opus");
    assert!(shown["reason"].as_str().unwrap().contains("not an Ogg file"), "{shown}");
    // The operator fixes the file and re-drives the job.
    store.put("C2_cut.opus", SAMPLE);
    exrp.queue(&["retry", "C2", "C2_cut.opus"]);
    exrp.wait_idle(1, 2);
    assert!(!store.has("C2_cut.opus"));
    exrp.queue(&["purge", "--state", "dead"]);
    assert!(exrp.queue(&["list"]).contains("done 1  dead 0"));
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

/// A fake cloud and the `[exrp.genesys_cloud]` table pointing at it.
fn cloud_sink() -> (FakeCloud, String) {
    let cloud = FakeCloud::start("client-1", "secret-1");
    cloud.keep_bytes(true);
    let sink = format!(
        "[exrp.genesys_cloud]\napi_url = \"{0}\"\nlogin_url = \"{0}\"\nclient_id = \"client-1\"\nclient_secret = \"secret-1\"\n",
        cloud.base_url()
    );
    (cloud, sink)
}

/// `n` recordings in calls of two: their names, stored, and the interaction-ends.
fn recordings(store: &Store, tag: &str, n: usize) -> (Vec<String>, Vec<Value>) {
    let names: Vec<String> = (0..n).map(|i| format!("{tag}C{:04}_{i:04}.opus", i / 2)).collect();
    for name in &names {
        store.put(name, SAMPLE);
    }
    let bodies = names
        .chunks(2)
        .enumerate()
        .map(|(c, pair)| {
            let recs: Vec<(&str, &str, usize)> = pair.iter().map(|n| (n.as_str(), n.as_str(), SAMPLE.len())).collect();
            end_body(&format!("{tag}C{c:04}"), &recs)
        })
        .collect();
    (names, bodies)
}

fn assert_each_uploaded_once(cloud: &FakeCloud, names: &[String]) {
    for name in names {
        let objects = cloud.objects_of(name);
        assert_eq!(
            cloud.uploads_of(name),
            1,
            "{name}: {} objects {:?}",
            objects.len(),
            objects.iter().map(|o| &o.upload_key).collect::<Vec<_>>()
        );
        assert_eq!(objects[0].bytes.as_deref(), Some(SAMPLE), "{name} byte-exact");
        assert_eq!(cloud.uploads_of(&format!("{name}.json")), 1, "{name}.json once");
    }
}

#[test]
fn kill9_of_exrp_at_random_moments_during_200_recordings_uploads_each_exactly_once() {
    let store = Store::start("exrp-kill");
    let (cloud, sink) = cloud_sink();
    let mut exrp = Exrp::start("exrp-kill", &store.url(), &sink, "workers = 8\n");
    let (names, bodies) = recordings(&store, "K", 200);
    // Slow uploads keep the work going long enough for the kills to land in the middle of it.
    cloud.fail_next(
        crate::support::cloud::Endpoint::Put,
        400,
        crate::support::cloud::Fault::Delay(Duration::from_millis(60)),
    );
    for body in &bodies {
        assert_eq!(exrp.post(body).status, 202);
    }
    // Kill at pseudo-random moments while the work goes on, restarting each time.
    let mut seed = std::process::id() as u64;
    for round in 0..6 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(80 + (seed >> 33) % 500));
        let done = exrp.health().1["queue"]["done"].as_u64().unwrap_or(0);
        eprintln!("kill -9 round {round} with {done} done");
        exrp.kill9();
        exrp.restart();
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let q = exrp.health().1["queue"].clone();
        if q["done"] == 200 && q["pending"] == 0 && q["working"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "not finished: {q}\n{}", exrp.proc().logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_each_uploaded_once(&cloud, &names);
    assert!(store.files().is_empty(), "left in WebDAV: {:?}", store.files());
}

#[test]
fn duplicate_interaction_ends_to_one_and_to_two_instances_upload_once() {
    let store = Store::start("exrp-dup");
    let (cloud, sink) = cloud_sink();
    let a = Exrp::start("exrp-dup-a", &store.url(), &sink, "");
    let b = Exrp::start("exrp-dup-b", &store.url(), &sink, "missing_timeout = \"3s\"\n");
    let (names, bodies) = recordings(&store, "D", 10);
    // Each interaction-end twice to A, and once more to B at the same moment.
    std::thread::scope(|s| {
        for body in &bodies {
            s.spawn(|| assert_eq!(a.post(body).status, 202));
            s.spawn(|| assert_eq!(a.post(body).status, 202));
            s.spawn(|| assert_eq!(b.post(body).status, 202));
        }
    });
    wait_until("the store to empty", SOON, || store.files().is_empty());
    // B finishes its copies too: uploaded by A (seen, then gone: done elsewhere), or never seen
    // (dead after missing_timeout with a reason that says why).
    let (done_a, done_b) = (
        a.wait_health("A idle", |_, b| b["queue"]["pending"] == 0 && b["queue"]["working"] == 0),
        b.wait_health("B idle", |_, h| h["queue"]["pending"] == 0 && h["queue"]["working"] == 0),
    );
    eprintln!("A {}\nB {}", done_a["queue"], done_b["queue"]);
    assert_each_uploaded_once(&cloud, &names);
    assert_eq!(a.metric("exrp_jobs_duplicate_total", &[]) + b.metric("exrp_jobs_duplicate_total", &[]), 10.0);
}

/// LOCK as exrp sends it, by hand: returns the Lock-Token.
fn lock_by_hand(store: &Store, name: &str, owner: &str, seconds: u64) -> String {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<D:lockinfo xmlns:D=\"DAV:\"><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype><D:owner>{owner}</D:owner></D:lockinfo>"
    );
    let r = client()
        .request(crate::support::method("LOCK"), format!("{}/{name}", store.url()))
        .basic_auth(USER, Some(PASSWORD))
        .header("Depth", "0")
        .header("Timeout", format!("Second-{seconds}"))
        .header("Content-Type", "application/xml")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "LOCK {name}");
    let token = r.headers()["lock-token"].to_str().unwrap();
    token.trim_matches(|c| c == '<' || c == '>').to_string()
}

#[test]
fn a_claim_an_earlier_run_of_the_same_instance_left_is_resumed_at_once_not_after_its_timeout() {
    // exrp SIGKILLed after its LOCK succeeded but before the token reached its queue: the
    // file holds a lock whose owner is this instance, and nobody knows the token. The next
    // run must find it in lockdiscovery and go on, not wait for claim_timeout as if another
    // instance held it.
    let store = Store::start("exrp-own-lock");
    store.put("L1_own.opus", SAMPLE);
    store.put("L1_other.opus", SAMPLE);
    // Locks as a run with claim_timeout = 60s would leave them (this one's is 6 s, so its
    // retries of a busy file come every 2 s).
    lock_by_hand(&store, "L1_own.opus", "exrp-own-lock", 60);
    let foreign = lock_by_hand(&store, "L1_other.opus", "exrp-someone-else", 60);
    let exrp = Exrp::start("exrp-own-lock", &store.url(), "", "");
    let r =
        exrp.post(&end_body("L1", &[("own", "L1_own.opus", SAMPLE.len()), ("other", "L1_other.opus", SAMPLE.len())]));
    assert_eq!(r.status, 202, "{r:?}");
    // Resumed from lockdiscovery, said so, long before the 60 s lock could have expired.
    wait_until("the own claim to be resumed", Duration::from_secs(45), || !store.has("L1_own.opus"));
    wait_until("the resumption logged", SOON, || {
        exrp.proc().logs().contains("resuming the claim an earlier run of this instance left")
    });
    assert_eq!(std::fs::read(exrp.sink_dir("Environment").join("L1_own.opus")).unwrap(), SAMPLE);
    // Another instance's claim is respected: that file was tried, found locked, and waits.
    wait_until("the other file found locked", SOON, || {
        exrp.queue(&["list", "--state", "pending"]).contains("claimed by another instance")
    });
    assert!(store.has("L1_other.opus"));
    assert!(!exrp.sink_dir("Environment").join("L1_other.opus").exists());
    let h = exrp.health().1;
    assert_eq!((h["queue"]["done"].as_u64(), h["queue"]["pending"].as_u64()), (Some(1), Some(1)), "{h}");
    // Once the other instance lets go, it is done too.
    let r = client()
        .request(crate::support::method("UNLOCK"), format!("{}/L1_other.opus", store.url()))
        .basic_auth(USER, Some(PASSWORD))
        .header("Lock-Token", format!("<{foreign}>"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    wait_until("the other file once unlocked", SOON, || !store.has("L1_other.opus"));
    exrp.wait_idle(2, 0);
}

#[test]
fn an_instance_killed_for_good_leaves_its_jobs_to_the_other() {
    let store = Store::start("exrp-takeover");
    let (cloud, sink) = cloud_sink();
    // A is slow on purpose: its cloud uploads hang, so it holds work when it dies.
    let mut a = Exrp::start("exrp-take-a", &store.url(), &sink, "workers = 2\ntransfer_timeout = \"30s\"\n");
    let b = Exrp::start("exrp-take-b", &store.url(), &sink, "takeover_after = \"2s\"\n");
    let (names, bodies) = recordings(&store, "T", 12);
    cloud.fail_next(crate::support::cloud::Endpoint::Put, 2, crate::support::cloud::Fault::Hang);
    for body in &bodies {
        assert_eq!(a.post(body).status, 202);
    }
    wait_until("A to start uploading", SOON, || cloud.requests_to(crate::support::cloud::Endpoint::Put).len() >= 2);
    a.kill9();
    // B never got an interaction-end: it finds A's jobs on the files.
    wait_until("B to finish A's jobs", Duration::from_secs(60), || store.files().is_empty());
    assert!(b.metric("exrp_takeovers_total", &[]) >= 12.0, "{}", b.metrics());
    assert_each_uploaded_once(&cloud, &names);
}

#[test]
fn an_upload_whose_delete_fails_is_marked_done_on_its_file_and_never_uploaded_again() {
    use crate::support::proxy::Proxy;
    let store = Store::start("exrp-undeleted");
    // A reaches the store through a proxy that refuses its DELETEs; B reaches it directly.
    let proxy = Proxy::reverse(store.proc.addr("webdav"));
    proxy.refuse("DELETE", 503);
    let (cloud, sink) = cloud_sink();
    let mut a = Exrp::start("exrp-undel-a", &format!("{}/recordings", proxy.url()), &sink, "");
    let (names, bodies) = recordings(&store, "U", 2);
    assert_eq!(a.post(&bodies[0]).status, 202);
    // The upload is done; only the DELETE fails, so the file says so for whoever comes next.
    let sidecar = |name: &str| std::fs::read_to_string(store.site.root().join(format!(".exec-allinone-props-{name}")));
    wait_until("both files marked done", SOON, || {
        names.iter().all(|n| sidecar(n).is_ok_and(|props| props.contains("done") && props.contains("uploadKey")))
    });
    wait_until("A to log the pending delete", SOON, || a.proc().logs().contains("delete pending"));
    assert_eq!(store.files(), names);
    // A dies with its uploads done and its files still in the store: B takes them over,
    // deletes them and uploads nothing again.
    a.kill9();
    let b = Exrp::start("exrp-undel-b", &store.url(), &sink, "takeover_after = \"2s\"\n");
    wait_until("B to delete A's uploaded files", Duration::from_secs(60), || store.files().is_empty());
    assert_each_uploaded_once(&cloud, &names);
    assert!(b.metric("exrp_takeovers_total", &[]) >= 2.0, "{}", b.metrics());
}

#[test]
fn cloud_429_5xx_and_expired_tokens_delay_but_lose_nothing() {
    use crate::support::cloud::{Endpoint, Fault};
    let store = Store::start("exrp-storm");
    let (cloud, sink) = cloud_sink();
    cloud.fail_next(Endpoint::Token, 2, Fault::Status(503));
    cloud.fail_next(Endpoint::Presign, 6, Fault::RateLimit(1));
    cloud.fail_next(Endpoint::Put, 4, Fault::Status(500));
    let exrp = Exrp::start("exrp-storm", &store.url(), &sink, "");
    let (names, bodies) = recordings(&store, "S", 10);
    for body in &bodies {
        assert_eq!(exrp.post(body).status, 202);
    }
    // Once uploads have begun with the tokens and URLs handed out so far, they all go stale.
    wait_until("a first upload", SOON, || !cloud.requests_to(Endpoint::Put).is_empty());
    cloud.expire_tokens();
    // URLs handed out so far stop working: their PUTs get S3's 403 and are presigned anew.
    cloud.expire_urls();
    exrp.wait_idle(10, 0);
    assert_each_uploaded_once(&cloud, &names);
    assert!(cloud.sent_429() >= 6);
    assert!(exrp.metric("exrp_cloud_rate_limited_total", &[]) >= 1.0);
    assert!(exrp.metric("exrp_job_retries_total", &[("cause", "cloud")]) >= 1.0, "{}", exrp.metrics());
    assert!(store.files().is_empty());
}

#[test]
fn webdav_down_makes_health_503_and_the_jobs_wait_for_it() {
    use crate::support::proxy::Proxy;
    let store = Store::start("exrp-down");
    // exrp reaches the store through a proxy that can play a store that is down.
    let proxy = Proxy::reverse(store.proc.addr("webdav"));
    let exrp = Exrp::start("exrp-down", &format!("{}/recordings", proxy.url()), "", "");
    store.put("W1_a.opus", SAMPLE);
    proxy.set_down(true);
    // Queued here, but not acknowledged: the job could not be recorded on its file, where
    // another exrp would find it if this one were lost. excp sends it again.
    let r = exrp.post(&end_body("W1", &[("a", "W1_a.opus", SAMPLE.len())]));
    assert_eq!(r.status, 503, "queued, not acknowledged while WebDAV is down: {r:?}");
    assert!(r.text.contains("50302"), "{r:?}");
    let h = exrp.wait_health("webdav DOWN", |status, b| status == 503 && b["dependencies"]["webdav"] == "DOWN");
    assert_eq!(h["status"], "DOWN");
    assert_eq!(h["queue"]["done"], 0);
    assert!(store.has("W1_a.opus"));
    proxy.set_down(false);
    // The job queued here goes out once the store is back; excp's retry is a duplicate.
    exrp.wait_idle(1, 0);
    exrp.wait_health("UP again", |status, b| status == 200 && b["status"] == "UP");
    let again = exrp.post(&end_body("W1", &[("a", "W1_a.opus", SAMPLE.len())]));
    assert_eq!(again.status, 202, "{again:?}");
    assert_eq!(std::fs::read(exrp.sink_dir("Environment").join("W1_a.opus")).unwrap(), SAMPLE);
    assert!(store.files().is_empty());
}

#[test]
fn orphans_are_reported_by_age_and_removed_after_their_ttl() {
    let store = Store::start("exrp-orphan");
    // Long enough that a loaded machine reads both figures before the removal.
    let exrp = Exrp::start("exrp-orphan", &store.url(), "", "orphan_ttl = \"8s\"\n");
    store.put("O1_lost.opus", SAMPLE);
    store.put("O2_lost.opus", SAMPLE);
    exrp.wait_health("orphans counted", |_, b| b["orphans"]["count"] == 2);
    assert_eq!(exrp.metric("exrp_orphans", &[("older_than", "0")]), 2.0);
    wait_until("orphans removed", SOON, || store.files().is_empty());
    // Counted once exrp has the store's answer, which can be a moment after the files go.
    wait_until("both removals counted", SOON, || exrp.metric("exrp_orphans_removed_total", &[]) == 2.0);
}

#[test]
fn against_apache_mod_dav_claims_uploads_once_and_deletes_even_across_two_instances_and_a_kill() {
    use crate::support::apache::Apache;
    let apache = Apache::start("exrp-apache");
    let url = apache.collection_url();
    let put = |name: &str| {
        let r = client()
            .put(format!("{url}/{}", segment(name)))
            .basic_auth(USER, Some(PASSWORD))
            .body(SAMPLE.to_vec())
            .send()
            .unwrap();
        assert!(r.status().is_success(), "PUT {name} to Apache: {}", r.status());
    };
    let left = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(apache.files())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    };
    let (cloud, sink) = cloud_sink();
    // A's first two uploads hang, so it dies holding claims (Apache's lock database keeps them
    // until claim_timeout) and work it has not started.
    cloud.fail_next(crate::support::cloud::Endpoint::Put, 2, crate::support::cloud::Fault::Hang);
    let mut a = Exrp::start("exrp-apache-a", &url, &sink, "workers = 2\ntransfer_timeout = \"30s\"\n");
    let b = Exrp::start("exrp-apache-b", &url, &sink, "takeover_after = \"2s\"\n");
    let names: Vec<String> = (0..20).map(|i| format!("AP{:03}_2026-11-28_10%3A00%3A{i:02}.opus", i / 2)).collect();
    for n in &names {
        put(n);
    }
    for (c, pair) in names.chunks(2).enumerate() {
        let recs: Vec<(&str, &str, usize)> = pair.iter().map(|n| (n.as_str(), n.as_str(), SAMPLE.len())).collect();
        let body = end_body(&format!("AP{c:03}"), &recs);
        assert_eq!(a.post(&body).status, 202);
        if c % 3 == 0 {
            // Some interaction-ends reach both instances.
            assert_eq!(b.post(&body).status, 202);
        }
    }
    wait_until("A to start uploading", SOON, || cloud.requests_to(crate::support::cloud::Endpoint::Put).len() >= 2);
    a.kill9();
    wait_until("the Apache store to empty", Duration::from_secs(60), || left().is_empty());
    assert!(b.metric("exrp_takeovers_total", &[]) >= 2.0, "{}", b.metrics());
    for name in &names {
        let cleaned = name.replace('%', "_");
        assert_eq!(cloud.uploads_of(&cleaned), 1, "{cleaned} uploaded once: {:?}", cloud.presigned().len());
    }
    assert!(apache.error_log().lines().all(|l| !l.contains("[core:crit]")), "{}", apache.error_log());
}

#[test]
fn each_tenant_uploads_into_its_own_org() {
    let store = Store::start("exrp-tenants");
    let (main_org, sink) = cloud_sink();
    let other = FakeCloud::start("client-2", "secret-2");
    other.keep_bytes(true);
    let sink = format!(
        "{sink}[exrp.genesys_cloud.tenants.Tenant2]\napi_url = \"{0}\"\nlogin_url = \"{0}\"\nclient_id = \"client-2\"\nclient_secret = \"secret-2\"\n",
        other.base_url()
    );
    let exrp = Exrp::start("exrp-tenants", &store.url(), &sink, "");
    store.put("TA_1.opus", SAMPLE);
    store.put("TB_1.opus", SAMPLE);
    assert_eq!(exrp.post(&end_body("TA", &[("1", "TA_1.opus", SAMPLE.len())])).status, 202);
    let mut body = end_body("TB", &[("1", "TB_1.opus", SAMPLE.len())]);
    body["tenant"] = json!("Tenant2");
    assert_eq!(exrp.post(&body).status, 202);
    exrp.wait_idle(2, 0);
    assert_eq!((main_org.uploads_of("TA_1.opus"), main_org.uploads_of("TB_1.opus")), (1, 0));
    assert_eq!((other.uploads_of("TA_1.opus"), other.uploads_of("TB_1.opus")), (0, 1));
}

#[test]
fn a_tenant_without_an_org_waits_and_never_goes_to_another_tenants_org() {
    let store = Store::start("exrp-tenant-waits");
    let (main_org, sink) = cloud_sink();
    let other = FakeCloud::start("client-2", "secret-2");
    let tenant2 = format!(
        "[exrp.genesys_cloud.tenants.Tenant2]\napi_url = \"{0}\"\nlogin_url = \"{0}\"\nclient_id = \"client-2\"\nclient_secret = \"secret-2\"\n",
        other.base_url()
    );
    let exrp = Exrp::start("exrp-tenant-waits", &store.url(), &format!("{sink}{tenant2}"), "");
    store.put("TC_1.opus", SAMPLE);
    let mut body = end_body("TC", &[("1", "TC_1.opus", SAMPLE.len())]);
    body["tenant"] = json!("Tenant3");
    assert_eq!(exrp.post(&body).status, 202, "accepted: it waits durably");
    // The queue's counts are refreshed by the scheduler: wait for both to say so.
    let health = exrp.wait_health("the job waiting for its org", |_, b| {
        b["waitingForTenantOrg"]["jobs"] == 1 && b["queue"]["pending"] == 1
    });
    assert_eq!(health["waitingForTenantOrg"]["tenants"], json!(["Tenant3"]));
    assert!(health["clockSynchronized"].is_boolean(), "the clock's state is reported: {health}");
    assert_eq!((health["queue"]["pending"].as_u64(), health["queue"]["dead"].as_u64()), (Some(1), Some(0)));
    wait_until("the reason logged", SOON, || exrp.proc().logs().contains("tenant \"Tenant3\" has no EX Org"));
    assert_eq!((main_org.uploads_of("TC_1.opus"), other.uploads_of("TC_1.opus")), (0, 0), "never elsewhere");
    assert!(store.has("TC_1.opus"), "the recording stays in the store");

    // Configured (and exrp reloaded): it goes out to its own org, and only there.
    let third = FakeCloud::start("client-3", "secret-3");
    let tenant3 = format!(
        "[exrp.genesys_cloud.tenants.Tenant3]\napi_url = \"{0}\"\nlogin_url = \"{0}\"\nclient_id = \"client-3\"\nclient_secret = \"secret-3\"\n",
        third.base_url()
    );
    let text = std::fs::read_to_string(&exrp.config).unwrap() + &tenant3;
    std::fs::write(&exrp.config, text).unwrap();
    exrp.reload();
    exrp.wait_idle(1, 0);
    assert_eq!(
        (main_org.uploads_of("TC_1.opus"), other.uploads_of("TC_1.opus"), third.uploads_of("TC_1.opus")),
        (0, 0, 1)
    );
}

#[test]
fn the_genesys_env_variables_set_the_port_and_the_log_level() {
    let store = Store::start("exrp-env");
    let dir = TempDir::new("exrp-env");
    let config = dir.join("exrp.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[exrp]\nlisten = \"127.0.0.1:1\"\nstate_dir = \"{}\"\n\
             [exrp.transient_storage]\nurl = \"{}\"\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\n",
            dir.join("state").display(),
            store.url()
        ),
    )
    .unwrap();
    let proc = Proc::start_with_env(
        &["--role", "exrp", "--config", config.to_str().unwrap()],
        &[("EXRP_PORT", "0"), ("EXRP_LOG_LEVEL", "debug")],
    );
    // The config says port 1; EXRP_PORT=0 asks for any free one instead (no port picked in
    // advance, so none another process could take first).
    assert_ne!(proc.addr("exrp").port(), 1, "EXRP_PORT overrides the config's port");
    wait_until("a debug line", SOON, || proc.logs().contains(" DEBUG "));
}

#[test]
fn the_provider_hop_can_require_basic_auth_and_excp_sends_it() {
    let store = Store::start("exrp-auth");
    let pw = TempDir::new("exrp-auth-pw");
    std::fs::write(pw.join("htpasswd"), crate::support::HTPASSWD_LINE).unwrap();
    let exrp =
        Exrp::start("exrp-auth", &store.url(), "", &format!("htpasswd = \"{}\"\n", pw.join("htpasswd").display()));
    store.put("AU_1.opus", SAMPLE);
    let body = end_body("AU", &[("1", "AU_1.opus", SAMPLE.len())]);
    let c = client();
    let url = format!("http://{}/api/v1/interaction-end", exrp.addr());
    let r = c.post(&url).header("content-type", "application/json").body(body.to_string()).send().unwrap();
    assert_eq!(r.status().as_u16(), 401, "no credentials");
    assert!(r.headers().contains_key("www-authenticate"));
    let r = c
        .post(&url)
        .basic_auth(USER, Some("wrong"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "wrong password");
    assert_eq!(exrp.health().0, 200, "/health stays open");

    // excp with the credentials delivers through the closed hop.
    let dir = TempDir::new("excp-auth");
    let config = dir.join("excp.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[excp]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n\
             recording_processor_url = \"http://{}\"\nrecording_processor_username = \"{USER}\"\n\
             recording_processor_password = \"{PASSWORD}\"\n",
            dir.join("state").display(),
            exrp.addr()
        ),
    )
    .unwrap();
    let excp = Proc::start(&["--role", "excp", "--config", config.to_str().unwrap()]);
    let meta = json!({"id": "AU", "mediaFiles": [{"callUUID": "AU", "mediaId": "AU_1.opus"}]});
    let r = c
        .post(format!("http://{}/api/v1/recording", excp.addr("excp")))
        .header("content-type", "application/json")
        .body(meta.to_string())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = c.post(format!("http://{}/api/v1/interactions/AU/end", excp.addr("excp"))).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    exrp.wait_idle(1, 0);
}

/// The `[exrp.genesys_cloud]` table of `cloud` with the secret read from `secret_file`.
fn cloud_sink_with_secret_file(cloud: &FakeCloud, secret_file: &std::path::Path) -> String {
    format!(
        "[exrp.genesys_cloud]\napi_url = \"{0}\"\nlogin_url = \"{0}\"\nclient_id = \"client-1\"\nclient_secret_file = \"{1}\"\n",
        cloud.base_url(),
        secret_file.display()
    )
}

#[test]
fn a_refused_secret_pauses_its_org_and_a_reloaded_secret_resumes_at_once() {
    use crate::support::cloud::Endpoint;
    let store = Store::start("exrp-secret");
    let cloud = FakeCloud::start("client-1", "secret-1");
    let secrets = TempDir::new("exrp-secret-file");
    let secret_file = secrets.join("secret");
    std::fs::write(&secret_file, "a-wrong-secret\n").unwrap();
    let exrp = Exrp::start("exrp-secret", &store.url(), &cloud_sink_with_secret_file(&cloud, &secret_file), "");
    let started = Instant::now();
    store.put("S1_1.opus", SAMPLE);
    assert_eq!(exrp.post(&end_body("S1", &[("1", "S1_1.opus", SAMPLE.len())])).status, 202);

    // The org is refused: health DOWN naming it, the job pending with its reason, never dead.
    let health = exrp.wait_health("the org marked failing", |status, b| {
        status == 503 && b["orgsFailing"][0]["org"] == "default" && b["queue"]["pending"] == 1
    });
    assert_eq!(health["dependencies"]["genesysCloud"], "DOWN", "{health}");
    let reason = health["orgsFailing"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("token: HTTP 401") && reason.contains("invalid_client"), "{reason}");
    assert_eq!(health["queue"]["dead"], 0);
    assert_eq!(exrp.metric("exrp_cloud_org_refused", &[("org", "default")]), 1.0);
    wait_until("the job's reason in the queue", SOON, || exrp.queue(&["list", "--json"]).contains("paused:"));
    assert!(store.has("S1_1.opus"));
    // Backed off: not one token request per worker or per probe (5 s), but 10 s, 20 s, …
    let asked = cloud.requests_to(Endpoint::Token).len() as u64;
    assert!(asked <= 2 + started.elapsed().as_secs() / 10, "{asked} token requests");

    // The operator fixes the secret and reloads: the job goes out without waiting the backoff.
    std::fs::write(&secret_file, "secret-1\n").unwrap();
    exrp.reload();
    exrp.wait_idle(1, 0);
    assert_eq!(cloud.uploads_of("S1_1.opus"), 1);
    let health = exrp.wait_health("the org accepted again", |status, _| status == 200);
    assert_eq!(health["orgsFailing"], json!([]));

    // The secret is rotated in Genesys Cloud: the cached token stops working, the refresh is
    // refused, the job pauses; the new secret and a reload deliver it.
    cloud.set_secret("secret-2");
    store.put("S2_1.opus", SAMPLE);
    assert_eq!(exrp.post(&end_body("S2", &[("1", "S2_1.opus", SAMPLE.len())])).status, 202);
    exrp.wait_health("the rotated secret refused", |status, b| {
        status == 503 && b["orgsFailing"][0]["org"] == "default" && b["queue"]["pending"] == 1
    });
    std::fs::write(&secret_file, "secret-2\n").unwrap();
    exrp.reload();
    exrp.wait_idle(2, 0);
    assert_eq!(cloud.uploads_of("S2_1.opus"), 1);

    // A file that does not parse is refused, and the running configuration kept.
    let good = std::fs::read_to_string(&exrp.config).unwrap();
    std::fs::write(&exrp.config, good.replace("[exrp.genesys_cloud]", "[exrp.genesys_cloud]\nbogus = 1")).unwrap();
    exrp.proc().signal("HUP");
    wait_until("the refused reload", SOON, || {
        exrp.proc().logs().contains("configuration refused, exrp keeps the running one")
    });
    store.put("S3_1.opus", SAMPLE);
    assert_eq!(exrp.post(&end_body("S3", &[("1", "S3_1.opus", SAMPLE.len())])).status, 202);
    exrp.wait_idle(3, 0);
}

#[test]
fn a_missing_permission_pauses_a_refused_sidecar_never_kills_and_a_dead_job_is_marked_on_its_file() {
    use crate::support::cloud::{Endpoint, Fault};
    let store = Store::start("exrp-perm");
    let (cloud, sink) = cloud_sink();
    // The audio's presign: 403 (a missing permission), then fine; the sidecar's: 400.
    cloud.fail_next(Endpoint::Presign, 1, Fault::Status(403));
    cloud.fail_next(Endpoint::Presign, 1, Fault::Pass);
    cloud.fail_next(Endpoint::Presign, 1, Fault::Status(400));
    let exrp = Exrp::start("exrp-perm", &store.url(), &sink, "");
    store.put("P1_1.opus", SAMPLE);
    assert_eq!(exrp.post(&end_body("P1", &[("1", "P1_1.opus", SAMPLE.len())])).status, 202);
    let health = exrp.wait_health("the org paused for a permission", |status, b| {
        status == 503 && b["orgsFailing"][0]["reason"].as_str().is_some_and(|r| r.contains("presign: HTTP 403"))
    });
    assert_eq!((health["queue"]["dead"].as_u64(), store.has("P1_1.opus")), (Some(0), true), "{health}");
    // The permission granted, a reload resumes at once; the sidecar is refused after the
    // audio was accepted: delivered without it, counted, not dead.
    exrp.reload();
    exrp.wait_idle(1, 0);
    assert_eq!(cloud.uploads_of("P1_1.opus"), 1);
    assert_eq!(cloud.uploads_of("P1_1.opus.json"), 0);
    assert_eq!(exrp.metric("exrp_sidecars_given_up_total", &[]), 1.0);
    assert!(!store.has("P1_1.opus"));
    assert_eq!(exrp.wait_health("UP again", |s, _| s == 200)["orgsFailing"], json!([]));

    // Any other 4xx on the audio is this recording's fault: dead, and said on the file so no
    // other instance takes it over.
    cloud.fail_next(Endpoint::Presign, 1, Fault::Status(400));
    store.put("P2_1.opus", SAMPLE);
    assert_eq!(exrp.post(&end_body("P2", &[("1", "P2_1.opus", SAMPLE.len())])).status, 202);
    exrp.wait_idle(1, 1);
    let propfind = client()
        .request(crate::support::method("PROPFIND"), format!("{}/P2_1.opus", store.url()))
        .basic_auth(USER, Some(PASSWORD))
        .header("Depth", "0")
        .body(r#"<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>"#)
        .send()
        .unwrap();
    let text = propfind.text().unwrap();
    assert!(text.contains("dead") && text.contains("Genesys Cloud refused the upload"), "{text}");
}

/// A private CA and a certificate for 127.0.0.1 it signed: (ca.pem, cert.pem, key.pem).
fn private_ca(dir: &TempDir) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let run = |args: &[&str]| {
        let out = crate::support::tool("openssl").args(args).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Some(())
    };
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=exec-allinone test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
    ])?;
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &p("key.pem"),
        "-out",
        &p("req.csr"),
    ])?;
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        &p("req.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &p("ext.cnf"),
        "-out",
        &p("cert.pem"),
    ])?;
    Some((dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem")))
}

/// Genesys Cloud behind https with a certificate of a private CA (our lb terminating TLS in
/// front of the fake), reached through an outbound proxy: trusted through `ca_file` and
/// through `SSL_CERT_FILE`, refused (with the reason) without either, and the proxy sees the
/// cloud's traffic whether it comes from the `proxy` key or from `HTTPS_PROXY`.
#[test]
fn genesys_cloud_over_https_with_a_private_ca_and_through_a_proxy() {
    use crate::support::proxy::Proxy;
    let dir = TempDir::new("exrp-ca");
    let Some((ca, cert, key)) = private_ca(&dir) else { return };
    let store = Store::start("exrp-ca");
    let cloud = FakeCloud::start("client-1", "secret-1");
    let lb_config = dir.join("lb.toml");
    std::fs::write(
        &lb_config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[lb]\nworkers = 1\n[lb.pools.cloud]\nlisten = \"127.0.0.1:0\"\nservers = [\"{}\"]\n\
             [lb.pools.cloud.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cloud.addr(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let lb = Proc::start(&["--role", "lb", "--config", lb_config.to_str().unwrap()]);
    let https = format!("https://127.0.0.1:{}", lb.addr("lb.cloud").port());
    let sink = |extra: &str| {
        format!(
            "[exrp.genesys_cloud]\napi_url = \"{https}\"\nlogin_url = \"{https}\"\nclient_id = \"client-1\"\nclient_secret = \"secret-1\"\n{extra}"
        )
    };

    // 1. ca_file and the proxy key.
    let proxy = Proxy::start();
    let extra = format!("ca_file = \"{}\"\nproxy = \"{}\"\n", ca.display(), proxy.url());
    let exrp = Exrp::start("exrp-ca-file", &store.url(), &sink(&extra), "");
    store.put("CA1_1.opus", SAMPLE);
    assert_eq!(exrp.post(&end_body("CA1", &[("1", "CA1_1.opus", SAMPLE.len())])).status, 202);
    exrp.wait_idle(1, 0);
    assert_eq!(cloud.uploads_of("CA1_1.opus"), 1);
    assert_eq!(cloud.uploads_of("CA1_1.opus.json"), 1, "the sidecar too");
    let seen = proxy.seen();
    let tunnel = format!("CONNECT {} HTTP/1.1", https.trim_start_matches("https://"));
    assert!(seen.contains(&tunnel), "the token and presign go through the proxy: {seen:?}");
    assert!(seen.iter().any(|l| l.starts_with("PUT http://")), "the upload too: {seen:?}");
    assert!(!seen.iter().any(|l| l.contains(&store.url())), "the store is not the proxy's business: {seen:?}");
    // Keep-alive through the tunnel: one connection for the token and both presigns; the proxy
    // closes each forwarded PUT's.
    let opened = exrp.metric("exrp_outbound_connections_total", &[("to", "cloud")]);
    assert!((1.0..=4.0).contains(&opened), "{opened} connections to the cloud");
    drop(exrp);

    // 2. SSL_CERT_FILE and HTTPS_PROXY, as on a host whose trust store holds the CA.
    let proxy = Proxy::start();
    let env = [("SSL_CERT_FILE", ca.to_str().unwrap()), ("HTTPS_PROXY", &proxy.url())];
    let exrp = Exrp::start_with_env("exrp-ca-env", &store.url(), &sink(""), "", &env);
    store.put("CA2_1.opus", SAMPLE);
    assert_eq!(exrp.post(&end_body("CA2", &[("1", "CA2_1.opus", SAMPLE.len())])).status, 202);
    exrp.wait_idle(1, 0);
    assert_eq!(cloud.uploads_of("CA2_1.opus"), 1);
    assert!(proxy.seen().contains(&tunnel), "{:?}", proxy.seen());
    drop(exrp);

    // 3. Neither: the private CA is not trusted, and the reason says so.
    let exrp = Exrp::start("exrp-ca-none", &store.url(), &sink("proxy = \"direct\"\n"), "");
    store.put("CA3_1.opus", SAMPLE);
    assert_eq!(exrp.post(&end_body("CA3", &[("1", "CA3_1.opus", SAMPLE.len())])).status, 202);
    exrp.wait_health("the untrusted cloud", |status, b| status == 503 && b["dependencies"]["genesysCloud"] == "DOWN");
    wait_until("the reason in the log", SOON, || exrp.proc().logs().contains("UnknownIssuer"));
    assert_eq!(cloud.uploads_of("CA3_1.opus"), 0);
    assert!(store.has("CA3_1.opus"));
}

/// The excp → exrp hop closed by address and encrypted: exrp serves only its allow list (403,
/// logged, for others, /health included; the admin listener stays for monitoring) over TLS
/// with a private CA's certificate; excp verifies it through `recording_processor_ca_file`, and
/// without the CA it does not deliver and says why.
#[test]
fn the_provider_hop_over_tls_behind_an_allow_list() {
    let dir = TempDir::new("hop-tls");
    let Some((ca, cert, key)) = private_ca(&dir) else { return };
    let store = Store::start("hop-tls");
    let tls = format!("[exrp.tls]\ncert = \"{}\"\nkey = \"{}\"\n", cert.display(), key.display());
    let exrp = Exrp::start("hop-tls", &store.url(), &tls, "allow = [\"127.0.0.0/8\", \"::1\"]\n");
    let https = format!("https://127.0.0.1:{}", exrp.addr().port());
    let excp = |name: &str, extra: &str| {
        let d = TempDir::new(name);
        let config = d.join("excp.toml");
        std::fs::write(
            &config,
            format!(
                "[admin]\nlisten = \"127.0.0.1:0\"\n[excp]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n\
                 recording_processor_url = \"{https}\"\nretry_initial = \"200ms\"\nfsync = false\n{extra}",
                d.join("state").display()
            ),
        )
        .unwrap();
        (Proc::start(&["--role", "excp", "--config", config.to_str().unwrap()]), d)
    };
    let end_call = |excp: &Proc, call: &str| {
        let meta = json!({"id": call, "mediaFiles": [{"callUUID": call, "mediaId": format!("{call}_1.opus")}]});
        let c = client();
        let r = c.post(format!("http://{}/api/v1/recording", excp.addr("excp"))).body(meta.to_string()).send().unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let r = c.post(format!("http://{}/api/v1/interactions/{call}/end", excp.addr("excp"))).send().unwrap();
        assert_eq!(r.status().as_u16(), 200);
    };

    store.put("TL1_1.opus", SAMPLE);
    let (trusting, _d1) = excp("hop-tls-excp", &format!("recording_processor_ca_file = \"{}\"\n", ca.display()));
    end_call(&trusting, "TL1");
    wait_until("the recording delivered over TLS", SOON, || !store.has("TL1_1.opus"));
    assert!(exrp.sink_dir("Environment").join("TL1_1.opus").exists());

    store.put("TL2_1.opus", SAMPLE);
    let (doubting, _d2) = excp("hop-tls-excp2", "");
    end_call(&doubting, "TL2");
    wait_until("the certificate refused", SOON, || doubting.logs().contains("UnknownIssuer"));
    assert!(store.has("TL2_1.opus"));

    // Another exrp that serves only 10.0.0.0/8: loopback gets 403, /health too, logged.
    let closed = Exrp::start("hop-closed", &store.url(), "", "allow = [\"10.0.0.0/8\"]\n");
    assert_eq!(closed.post(&end_body("TL3", &[("1", "TL3_1.opus", 1)])).status, 403);
    assert_eq!(closed.health().0, 403);
    // The log is read from the process's stderr as it comes: wait for the line.
    wait_until("the refusal logged", SOON, || closed.proc().logs().contains("access forbidden"));
    let admin = client().get(closed.proc().admin_url("/health")).send().unwrap();
    assert!(admin.status().is_success() || admin.status().as_u16() == 503, "the admin listener answers");
}

// ---------------------------------------------------------------------------------------------
// trace

/// `exec-allinone trace` over two processes, as over two VMs (the store's, exrp's): one call's
/// recording that went out is shown from its PUT to its DELETE in time order; one whose job is
/// dead is shown stopped, with the cloud's reason; an unknown id exits 1, an admin listener
/// that cannot be asked 69; `--json` is the same merged answer.
#[test]
fn trace_follows_a_call_across_the_admin_listeners_of_two_processes() {
    use crate::support::cloud::{Endpoint, FakeCloud, Fault};
    let store = Store::start("trace-store");
    let cloud = FakeCloud::start("client-t", "secret-t");
    let sink = format!(
        "[exrp.genesys_cloud]\napi_url = \"{0}\"\nlogin_url = \"{0}\"\nclient_id = \"client-t\"\nclient_secret = \"secret-t\"\n",
        cloud.base_url()
    );
    let exrp = Exrp::start("trace-exrp", &store.url(), &sink, "");
    store.put("TR1_1.opus", SAMPLE);
    assert_eq!(exrp.post(&end_body("TR1", &[("1", "TR1_1.opus", SAMPLE.len())])).status, 202);
    exrp.wait_idle(1, 0);
    cloud.fail_next(Endpoint::Presign, 1, Fault::Status(400));
    store.put("TR2_1.opus", SAMPLE);
    assert_eq!(exrp.post(&end_body("TR2", &[("1", "TR2_1.opus", SAMPLE.len())])).status, 202);
    exrp.wait_idle(1, 1);

    let admins = [store.proc.admin_url(""), exrp.proc().admin_url("")];
    let trace = |id: &str, extra: &[&str]| {
        let mut cmd = std::process::Command::new(crate::support::BIN);
        cmd.args(["trace", id]);
        for admin in &admins {
            cmd.args(["--admin", admin]);
        }
        let out = cmd.args(extra).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, text, err) = trace("TR1", &[]);
    assert_eq!(code, Some(0), "{text}{err}");
    let steps: Vec<(String, String)> = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip_while(|w| *w == "!").skip(1);
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect();
    let at = |role: &str, step: &str| {
        steps.iter().position(|(r, s)| r == role && s == step).unwrap_or_else(|| panic!("no {role} {step}: {text}"))
    };
    // exrp's own steps in the order it took them; the store's PUT before exrp heard of the
    // recording, its DELETE after the upload (two processes' clocks: within a millisecond
    // the way's order decides).
    let exrp: Vec<usize> =
        ["accepted", "claimed", "fetched", "presigned", "uploaded", "done"].iter().map(|s| at("exrp", s)).collect();
    assert!(exrp.windows(2).all(|w| w[0] < w[1]), "{text}");
    assert!(at("webdav", "stored") < at("exrp", "accepted"), "{text}");
    assert!(at("webdav", "deleted") > at("exrp", "uploaded"), "{text}");
    assert!(text.contains("ININ-Correlation-Id"), "the presign names the cloud's correlation id: {text}");
    let accepted = text.lines().find(|l| l.contains(" accepted ")).unwrap();
    assert!(accepted.contains("[corrId "), "the interaction-end's corrId: {accepted}");
    assert!(text.contains("webdav stored          TR1_1.opus"), "the store names the file as it is named: {text}");

    let (code, text, err) = trace("TR2_1.opus", &[]);
    assert_eq!(code, Some(0), "{text}{err}");
    let dead = text.lines().find(|l| l.contains(" exrp ") && l.contains(" dead ")).unwrap_or_else(|| panic!("{text}"));
    assert!(dead.starts_with('!') && dead.contains("Genesys Cloud refused the upload"), "{dead}");
    assert!(text.contains("in store"), "a dead recording stays in the store: {text}");

    let (code, json_text, _) = trace("TR2", &["--json"]);
    assert_eq!(code, Some(0));
    let json: Value = serde_json::from_str(&json_text).unwrap();
    let events = json["events"].as_array().unwrap();
    assert!(events.windows(2).all(|w| w[0]["at"].as_u64() <= w[1]["at"].as_u64()), "in time order");
    let froms: std::collections::BTreeSet<&str> = events.iter().filter_map(|e| e["from"].as_str()).collect();
    assert_eq!(froms.len(), 2, "both listeners answered: {froms:?}");
    assert!(events.iter().any(|e| e["stopped"] == true && e["step"] == "dead"));

    let (code, text, _) = trace("NOT-A-CALL", &[]);
    assert_eq!(code, Some(1), "{text}");
    let refusing = crate::support::backend::refusing_port();
    let down = format!("http://{}", refusing.local_addr().unwrap());
    let out =
        std::process::Command::new(crate::support::BIN).args(["trace", "TR1", "--admin", &down]).output().unwrap();
    assert_eq!(out.status.code(), Some(69), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot ask"));
}
