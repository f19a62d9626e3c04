//! The command line: exit codes, config refusal before binding, READY, SIGTERM, check-config.

use std::process::Command;

use crate::support::*;

#[test]
fn bad_config_exits_78_listing_every_problem_and_binds_nothing() {
    let dir = TempDir::new("badconfig");
    let path = dir.join("bad.toml");
    // The port is taken by us: if the binary bound before validating, it would say so.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    std::fs::write(
        &path,
        format!("[webdav]\nlisten = \"127.0.0.1:{port}\"\nmax_file_size = \"huge\"\nfsync = 3\nroot = \"/nonexistent/deeper/root\"\nhtpasswd = \"/nonexistent/htpasswd\"\nbogus = 1\n"),
    )
    .unwrap();
    let out = Command::new(BIN).args(["--role", "webdav", "--config", path.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(78), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty(), "no READY on a bad config");
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in ["webdav.max_file_size", "webdav.fsync", "webdav.bogus: unknown key"] {
        assert!(err.contains(needle), "missing {needle:?} in {err}");
    }
    // File checks run when the text itself is valid; then both file problems are listed.
    std::fs::write(&path, "[webdav]\nroot = \"/nonexistent/deeper/root\"\nhtpasswd = \"/nonexistent/htpasswd\"\n")
        .unwrap();
    let out = Command::new(BIN).args(["check-config", "--config", path.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("webdav.htpasswd") && err.contains("webdav.root"), "{err}");
}

#[test]
fn check_config_accepts_a_good_file_and_the_example() {
    let site = Site::new("checkok");
    let path = site.dir.join("c.toml");
    std::fs::write(&path, site.config()).unwrap();
    let out = Command::new(BIN).args(["check-config", "--config", path.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("webdav"));
}

#[test]
fn roles_without_an_embedded_default_say_what_they_need() {
    // exrp cannot guess where the WebDAV store is.
    let out = Command::new(BIN).args(["--role", "exrp"]).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("transient_storage"));
    assert!(out.stdout.is_empty());
    let out = Command::new(BIN).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "no role given");
    // The lb has no embedded default: it cannot guess where excp and exrp run.
    let out = Command::new(BIN).args(["--role", "lb"]).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("import-nginx"));
    // Neither can excp guess where exrp is.
    let out = Command::new(BIN).args(["--role", "excp"]).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("recording_processor_url"));
}

#[test]
fn ready_line_health_metrics_and_sigterm_exit_zero() {
    let site = Site::new("lifecycle");
    let proc = site.start();
    assert!(proc.addr("webdav").port() != 0 && proc.addr("admin").port() != 0);
    let c = client();
    let health = c.get(proc.admin_url("/health")).send().unwrap();
    assert_eq!(health.status(), 200);
    let json: serde_json::Value = serde_json::from_str(&health.text().unwrap()).unwrap();
    assert_eq!(json["status"], "UP");
    assert_eq!(json["roles"]["webdav"]["status"], "UP");
    let metrics = c.get(proc.admin_url("/metrics")).send().unwrap().text().unwrap();
    assert!(metrics.contains("# TYPE webdav_store_used_bytes gauge"), "{metrics}");
    let status = proc.stop();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigterm_lets_an_upload_in_flight_finish() {
    let site = Site::new("drain");
    let proc = site.start();
    let mut raw = Raw::connect(proc.addr("webdav"));
    raw.send(
        format!(
            "PUT /recordings/drain.opus HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 10\r\n\r\n12345",
            basic()
        )
        .as_bytes(),
    );
    let c = client();
    let in_flight = || {
        let text = c.get(proc.admin_url("/metrics")).send().unwrap().text().unwrap();
        metric(&text, "webdav_uploads_in_flight", &[]) == Some(1.0)
    };
    wait_until("the PUT being received", std::time::Duration::from_secs(10), in_flight);
    proc.signal("TERM");
    wait_until("the drain to begin", std::time::Duration::from_secs(10), || {
        proc.logs().contains("shutting down: draining in-flight requests")
    });
    raw.send(b"67890");
    let (status, _, _) = raw.response();
    assert_eq!(status, 201);
    assert_eq!(std::fs::read(site.root().join("drain.opus")).unwrap(), b"1234567890");
    let mut proc = proc;
    let status = wait_timeout(&mut proc.child, std::time::Duration::from_secs(30)).expect("exit");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sandbox_default_runs_without_a_config() {
    let Some(_ports) = sandbox_ports("cli::sandbox_default_runs_without_a_config", &[8000, 9651]) else { return };
    let dir = TempDir::new("sandbox");
    let mut child = KillOnDrop(
        Command::new(BIN)
            .args(["--role", "webdav"])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "READY webdav=127.0.0.1:8000 admin=127.0.0.1:9651");
    let c = client();
    let put = c
        .put("http://127.0.0.1:8000/recordings/hello.opus")
        .basic_auth("mcp", Some("mcp-sandbox"))
        .body("hi")
        .send()
        .unwrap();
    assert_eq!(put.status(), 201);
    assert_eq!(std::fs::read(dir.join("exec-allinone-data/recordings/hello.opus")).unwrap(), b"hi");
    let _ = Command::new("kill").args(["-s", "TERM", &child.id().to_string()]).status();
    let status = wait_timeout(&mut child, std::time::Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn json_logs_and_systemd_readiness() {
    use std::os::unix::net::UnixDatagram;
    let site = Site::new("notify");
    let socket_path = site.dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let config = site.dir.join("c.toml");
    std::fs::write(&config, site.config()).unwrap();
    let proc = Proc::start_with_env(
        &["--log-format", "json", "--role", "webdav", "--config", config.to_str().unwrap()],
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    );
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).expect("READY=1 from the service");
    assert_eq!(&buf[..n], b"READY=1");
    let c = client();
    assert_eq!(c.get(proc.url("/recordings/")).send().unwrap().status(), 401);
    let status = proc.stop_keep();
    assert_eq!(status.0.code(), Some(0));
    let n = socket.recv(&mut buf).expect("STOPPING=1 from the service");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let logs = status.1;
    let mut saw_access = false;
    for line in logs.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["target"] == "access" {
            saw_access = true;
            assert_eq!(v["status"], 401);
            assert_eq!(v["path"], "/recordings/");
        }
    }
    assert!(saw_access, "no access line in {logs}");
}

#[test]
fn sandbox_all_carries_a_recording_from_webdav_through_excp_and_exrp_to_the_local_sink() {
    let test = "cli::sandbox_all_carries_a_recording_from_webdav_through_excp_and_exrp_to_the_local_sink";
    let Some(_ports) = sandbox_ports(test, &SANDBOX_ALL_PORTS) else { return };
    let dir = TempDir::new("sandbox-all");
    let (line, mut child) = start_sandbox_all(dir.path());
    assert_eq!(
        line,
        "READY webdav=127.0.0.1:8000 admin=127.0.0.1:9650 excp=127.0.0.1:13650 exrp=127.0.0.1:18080 \
         lb.excp=127.0.0.1:3650 lb.exrp=127.0.0.1:8080"
    );
    let sample = include_bytes!("../../assets/sample.opus");
    let c = client();
    let name = "SANDBOX1_a.opus";
    let put = c
        .put(format!("http://127.0.0.1:8000/recordings/{name}"))
        .basic_auth("mcp", Some("mcp-sandbox"))
        .body(sample.to_vec())
        .send()
        .unwrap();
    assert_eq!(put.status(), 201);
    // What MCP posts (the GIR recording shape), through the lb's excp pool; then the call ends.
    let metadata = serde_json::json!({ "id": "SANDBOX1", "mediaFiles": [{
        "callUUID": "SANDBOX1", "mediaId": name, "mediaUri": format!("http://127.0.0.1:8000/recordings/{name}"),
        "type": "audio/opus", "size": sample.len(), "duration": 3000,
        "startTime": "2026-11-28T10:00:00.000Z", "stopTime": "2026-11-28T10:00:03.000Z" }] });
    let r = c.post("http://127.0.0.1:3650/api/v1/recording").body(metadata.to_string()).send().unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let r = c.post("http://127.0.0.1:3650/api/v1/interactions/SANDBOX1/end").send().unwrap();
    assert_eq!(r.status(), 200);
    let injected = dir.join("exec-allinone-data/injected/Environment").join(name);
    let stored = dir.join("exec-allinone-data/recordings").join(name);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !injected.exists() || stored.exists() {
        assert!(std::time::Instant::now() < deadline, "the recording did not reach the sink and leave WebDAV");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(std::fs::read(&injected).unwrap(), sample);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(injected.with_extension("opus.json")).unwrap()).unwrap();
    assert_eq!(meta["callUUID"], "SANDBOX1");
    let health = c.get("http://127.0.0.1:9650/health").send().unwrap();
    assert_eq!(health.status(), 200, "{}", health.text().unwrap());
    // The simulator against the same sandbox: every recording delivered byte-exact.
    let sim = Command::new(BIN)
        .args(["simulate", "--calls", "5", "--concurrency", "2", "--recordings-per-call", "2", "--timeout", "60"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&sim.stdout)
        .unwrap_or_else(|e| panic!("simulate printed no JSON ({e}): {}", String::from_utf8_lossy(&sim.stderr)));
    assert!(sim.status.success(), "{report}\n{}", String::from_utf8_lossy(&sim.stderr));
    assert_eq!((report["recordings"].as_u64(), report["delivered"].as_u64()), (Some(10), Some(10)), "{report}");
    assert_eq!((report["missing"].as_u64(), report["byte_exact_in_sink"].as_u64()), (Some(0), Some(10)), "{report}");
    // Every role has served: /metrics holds each family with samples.
    let text = c.get("http://127.0.0.1:9650/metrics").send().unwrap().text().unwrap();
    check_exposition(&text);
    let _ = Command::new("kill").args(["-s", "TERM", &child.id().to_string()]).status();
    let status = wait_timeout(&mut child, std::time::Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn simulate_retries_while_the_deployment_is_down_and_reports_what_stayed_failed() {
    let test = "cli::simulate_retries_while_the_deployment_is_down_and_reports_what_stayed_failed";
    let Some(_ports) = sandbox_ports(test, &SANDBOX_ALL_PORTS) else { return };
    let dir = TempDir::new("simulate-retry");
    let simulate = |retry_for: &str, report: &str| {
        Command::new(BIN)
            .args(["simulate", "--calls", "3", "--concurrency", "3", "--timeout", "60", "--retry-for", retry_for])
            .args(["--report", report])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
    };
    // Nothing listens: each call fails after its second of retries; counted, not fatal.
    let out = simulate("1", "down.json").wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let down = read("down.json");
    assert_eq!((down["simulated"].as_u64(), down["recorded"].as_u64()), (Some(6), Some(0)), "{down:#}");
    let failed = down["failed_calls"].as_array().unwrap();
    assert_eq!(failed.len(), 3);
    assert!(failed[0]["error"].as_str().unwrap().contains("retried for 1 s"), "{down:#}");
    assert_eq!(failed[0]["recordings"].as_array().unwrap().len(), 2);
    assert!(down["retried_requests"].as_u64().unwrap() >= 3);

    // The deployment comes up while the recorders retry: everything is delivered. Until then
    // the store's port closes each of the three calls' first PUT unanswered: every call has
    // failed once before anything serves.
    let store = std::net::TcpListener::bind("127.0.0.1:8000").unwrap();
    let sim = simulate("30", "late.json");
    store.set_nonblocking(true).unwrap();
    let turned_away = std::cell::Cell::new(0);
    wait_until("the three calls' first PUTs", std::time::Duration::from_secs(30), || {
        while store.accept().is_ok() {
            turned_away.set(turned_away.get() + 1);
        }
        turned_away.get() >= 3
    });
    drop(store);
    let mut all = Command::new(BIN)
        .args(["--role", "all"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = sim.wait_with_output().unwrap();
    let _ = Command::new("kill").args(["-s", "TERM", &all.id().to_string()]).status();
    let _ = wait_timeout(&mut all, std::time::Duration::from_secs(30));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let late = read("late.json");
    assert_eq!((late["recorded"].as_u64(), late["delivered"].as_u64()), (Some(6), Some(6)), "{late:#}");
    assert_eq!(
        (late["byte_exact_in_sink"].as_u64(), late["failed_calls"].as_array().map(Vec::len)),
        (Some(6), Some(0))
    );
    assert!(late["missing"].as_array().unwrap().is_empty());
    assert!(late["retried_requests"].as_u64().unwrap() >= 3, "{late:#}");
    let recordings = late["recordings"].as_object().unwrap();
    assert_eq!(recordings.len(), 6);
    for (name, r) in recordings {
        assert!(name.starts_with(late["run"].as_str().unwrap()), "{name}");
        assert!(r["ended_at_ms"].as_u64().unwrap() > 1_700_000_000_000, "{r}");
        assert!(r["seconds_to_delivered"].as_f64().unwrap() >= 0.0, "{r}");
    }
    assert!(
        late["seconds_end_to_delivered"]["p99"].as_f64().unwrap()
            <= late["seconds_end_to_delivered"]["max"].as_f64().unwrap()
    );
    assert!(late["recordings_per_second"].as_f64().unwrap() > 0.0);
}

#[test]
fn import_env_turns_a_genesys_env_into_a_config_check_config_accepts() {
    let dir = TempDir::new("import-env");
    let env = dir.join(".env");
    std::fs::write(
        &env,
        "EXCP_RECORDING_PROCESSOR_PROXY_HOST=10.0.0.5\nEXCP_RECORDING_PROCESSOR_PROXY_PORT=8080\n\
         EXRP_VM_HOST_LIST=10.0.0.21,10.0.0.22\nEXRP_PORT=8080\nEXRP_TAG=100.0.100.12\n",
    )
    .unwrap();
    let out = Command::new(BIN).args(["import-env", env.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("EXRP_TAG"));
    let config = dir.join("site.toml");
    std::fs::write(&config, &out.stdout).unwrap();
    let check = |role: &str| {
        Command::new(BIN).args(["check-config", "--config", config.to_str().unwrap(), "--role", role]).output().unwrap()
    };
    for role in ["lb", "excp"] {
        let out = check(role);
        assert!(out.status.success(), "--role {role}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // What only CME knows is left as placeholders, which check-config refuses by name.
    let refused = check("exrp");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(78), "{stderr}");
    for key in ["exrp.transient_storage.url", "exrp.genesys_cloud.client_id", "exrp.genesys_cloud.client_secret"] {
        assert!(stderr.contains(&format!("{key}: still")), "{key} in {stderr}");
    }
    std::fs::write(&config, String::from_utf8_lossy(&out.stdout).replace("FILL-IN", "filled")).unwrap();
    let out = check("exrp");
    assert!(out.status.success(), "filled in: {}", String::from_utf8_lossy(&out.stderr));
    let bad = Command::new(BIN).args(["import-env", dir.join("none").to_str().unwrap()]).output().unwrap();
    assert_eq!(bad.status.code(), Some(78));
}

/// Runs the binary to its exit (it must not start serving): (exit code, stderr).
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(BIN)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut child, std::time::Duration::from_secs(20)).expect("it exits on its own");
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    (status.code(), err)
}

#[test]
fn state_from_before_versioning_is_taken_and_state_from_a_newer_release_is_refused_untouched() {
    let dir = TempDir::new("state-format");
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\
             [excp]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"{d}/excp\"\nrecording_processor_url = \"http://127.0.0.1:9\"\n\
             [exrp]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"{d}/exrp\"\ninstance = \"fmt\"\n\
             [exrp.transient_storage]\nurl = \"http://127.0.0.1:9/recordings\"\nusername = \"u\"\npassword = \"p\"\n\
             [exrp.local_sink]\ndir = \"{d}/sink\"\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    // State as releases before versioning left it: a queue.db with user_version 0, an excp
    // state directory without FORMAT. Taken, and marked as the current format (queue 3, excp 1).
    std::fs::create_dir_all(dir.join("exrp")).unwrap();
    std::fs::create_dir_all(dir.join("excp/calls")).unwrap();
    rusqlite::Connection::open(dir.join("exrp/queue.db")).unwrap().execute_batch("CREATE TABLE old(x);").unwrap();
    let p = Proc::start(&["--role", "all", "--config", config.to_str().unwrap()]);
    drop(p);
    assert_eq!(std::fs::read_to_string(dir.join("excp/FORMAT")).unwrap(), "1\n");
    let version: u32 = rusqlite::Connection::open(dir.join("exrp/queue.db"))
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 3);

    // A newer release's state: exit 78, the file named, nothing changed.
    rusqlite::Connection::open(dir.join("exrp/queue.db")).unwrap().pragma_update(None, "user_version", 4).unwrap();
    let before = std::fs::read(dir.join("exrp/queue.db")).unwrap();
    let (code, err) = run_to_exit(&["--role", "exrp", "--config", config.to_str().unwrap()]);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("queue.db") && err.contains("format 4") && err.contains("up to 3"), "{err}");
    assert_eq!(std::fs::read(dir.join("exrp/queue.db")).unwrap(), before, "the newer queue was touched");
    let exrp_state = dir.join("exrp");
    let (code, err) = run_to_exit(&["queue", "list", "--state-dir", exrp_state.to_str().unwrap()]);
    assert_eq!(code, Some(78), "{err}");

    std::fs::write(dir.join("excp/FORMAT"), "2\n").unwrap();
    let (code, err) = run_to_exit(&["--role", "excp", "--config", config.to_str().unwrap()]);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("excp state") && err.contains("format 2"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.join("excp/FORMAT")).unwrap(), "2\n");
}

/// `/metrics` read by Prometheus's own Python client parser (`prometheus_client.parser`):
/// every sample line parses, every family is typed, histogram buckets are cumulative up to
/// `+Inf` = `_count`, and counters end in `_total`.
/// (family, type, samples as (name, labels, value)) as the parser gives them.
type Families = Vec<(String, String, Vec<(String, std::collections::BTreeMap<String, String>, Option<f64>)>)>;

fn check_exposition(text: &str) {
    const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = [[f.name, f.type, [[s.name, s.labels, s.value] for s in f.samples]]
       for f in text_string_to_metric_families(sys.stdin.read())]
print(json.dumps(out, allow_nan=True))
"#;
    let found = Command::new("/usr/bin/python3").args(["-c", "import prometheus_client"]).output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "Prometheus's Python parser is not installed: apt-get install python3-prometheus-client (or run ./test.sh, which does)"
    );
    let out = output_with_stdin(Command::new("/usr/bin/python3").args(["-c", PARSE]), text.as_bytes());
    assert!(out.status.success(), "not Prometheus text format: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).replace("NaN", "null").replace("Infinity", "1e999");
    let families: Families = serde_json::from_str(&stdout).unwrap();
    let lines = text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).count();
    assert_eq!(families.iter().map(|f| f.2.len()).sum::<usize>(), lines, "every sample line parsed");
    assert!(families.len() > 40, "{} families", families.len());
    for (name, kind, samples) in &families {
        assert_ne!(kind, "unknown", "{name} has no TYPE");
        if kind == "counter" {
            assert!(samples.iter().all(|s| s.0.ends_with("_total")), "counter {name}: {samples:?}");
        }
        if kind != "histogram" {
            continue;
        }
        type Buckets = (Vec<(f64, f64)>, Option<f64>);
        let mut series: std::collections::BTreeMap<String, Buckets> = Default::default();
        for (sample, labels, value) in samples {
            let mut key = labels.clone();
            let le = key.remove("le");
            let entry = series.entry(format!("{key:?}")).or_default();
            match (sample.strip_prefix(name.as_str()), le) {
                (Some("_bucket"), Some(le)) => {
                    let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() };
                    entry.0.push((le, value.unwrap()));
                }
                (Some("_count"), None) => entry.1 = *value,
                _ => {}
            }
        }
        for (labels, (buckets, count)) in series {
            assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), "{name}{labels}: {buckets:?}");
            assert_eq!(buckets.last().map(|b| (b.0, b.1)), count.map(|c| (f64::INFINITY, c)), "{name}{labels}");
        }
    }
}
