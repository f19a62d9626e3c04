//! The status page in a real browser (Debian's chromium, headless, through chromedriver) while
//! `simulate` drives the `--role all` sandbox: what the page shows must be the JSON behind it,
//! it must keep refreshing, and it must fit a phone. Screenshots are kept as artifacts.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::webdriver::Browser;
use crate::support::*;

/// Where the screenshots are left for CI to keep.
fn artifacts() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page")
}

/// Every figure on the page: (JSON path, format, raw JSON value, text shown).
/// The figures and the JSON they were drawn from, read in one script run: the page cannot
/// redraw between the two.
const FIGURES: &str = "return [[...document.querySelectorAll('[data-k]')]
    .map(e => [e.dataset.k, e.dataset.fmt, e.dataset.raw, e.textContent]), window.statusJson];";

fn lookup<'a>(json: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(json, |v, k| match v {
        Value::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get(i)).unwrap_or(&Value::Null),
        _ => v.get(k).unwrap_or(&Value::Null),
    })
}

/// Checks one figure's text against its raw value, by the page's stated format, written
/// independently of the page's script.
fn check_text(path: &str, fmt: &str, raw: &Value, text: &str) {
    let shown_ok = match (fmt, raw) {
        (_, Value::Null) => text == "–" || (fmt == "ago" && text == "never"),
        ("n", Value::Number(n)) => text == n.to_string(),
        ("text", Value::String(s)) => text == if s.is_empty() { "–" } else { s.as_str() },
        // As JSON text: clippy's `*other` would compare the string with a JSON value instead.
        ("text", other) => text == serde_json::to_string(other).unwrap_or_default(),
        ("secs", Value::Number(n)) => text == format!("{} s", to_fixed_2(n.as_f64().unwrap())),
        ("ago", Value::Number(n)) => {
            if n.as_u64() == Some(0) {
                text == "never"
            } else {
                text.ends_with(" ago")
            }
        }
        ("bytes", Value::Number(n)) => {
            let bytes = n.as_f64().unwrap();
            let (num, unit) = text.split_once(' ').unwrap_or_else(|| panic!("{path}: {text:?} has no unit"));
            let scale = match unit {
                "B" => 1.0,
                "KiB" => 1024.0,
                "MiB" => 1024.0 * 1024.0,
                "GiB" => 1024.0 * 1024.0 * 1024.0,
                "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
                _ => panic!("{path}: unknown unit in {text:?}"),
            };
            let shown: f64 = num.parse().unwrap_or_else(|_| panic!("{path}: {text:?}"));
            ((shown * scale) - bytes).abs() <= bytes * 0.01 + 0.5
        }
        _ => false,
    };
    assert!(shown_ok, "{path} ({fmt}) shows {text:?} for {raw}");
}

/// JavaScript's `x.toFixed(2)` for x >= 0. It differs from Rust's `{:.2}` only on exact ties
/// (x·100 ending in .5 exactly), which it rounds up where Rust rounds to even: 0.125 is
/// "0.13" there and "0.12" here. An exact tie is x = j/8 with j odd (x·8 is exact in binary).
fn to_fixed_2(x: f64) -> String {
    let eighths = x * 8.0;
    if eighths.fract() == 0.0 && eighths.abs() < 1e15 && (eighths as i64) % 2 == 1 {
        let cents = (eighths as i64 * 25 + 1) / 2;
        return format!("{}.{:02}", cents / 100, cents % 100);
    }
    format!("{x:.2}")
}

/// Every figure on the page shows its value in the JSON the page last drew. Returns the
/// figures (path → raw value) and that JSON.
fn figures_match_page_json(browser: &Browser) -> (Vec<(String, Value)>, Value) {
    let both = browser.run(FIGURES, json!([]));
    let (figures, page_json) = (both[0].clone(), both[1].clone());
    assert!(page_json.is_object(), "the page has drawn nothing: {page_json}");
    let mut out = Vec::new();
    for f in figures.as_array().unwrap() {
        let [path, fmt, raw, text] = [0, 1, 2, 3].map(|i| f[i].as_str().unwrap().to_string());
        let raw: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(&raw, lookup(&page_json, &path), "{path}: the page shows another value than its JSON");
        check_text(&path, &fmt, &raw, &text);
        out.push((path, raw));
    }
    (out, page_json)
}

fn refreshes(browser: &Browser) -> u64 {
    browser.run("return Number(document.body.dataset.refreshed || 0);", json!([])).as_u64().unwrap()
}

#[test]
fn status_page_shows_the_pipeline_during_a_simulation_on_a_wall_screen_and_a_phone() {
    let test = "status_page::status_page_shows_the_pipeline_during_a_simulation_on_a_wall_screen_and_a_phone";
    let Some(_ports) = sandbox_ports(test, &SANDBOX_ALL_PORTS) else { return };
    let dir = TempDir::new("status-page");
    let (line, mut sandbox) = start_sandbox_all(dir.path());
    assert!(line.starts_with("READY "), "{line}");

    let c = client();
    let page = c.get("http://127.0.0.1:9650/").send().unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'self'"));
    assert!(page.text().unwrap().contains("status.js"));

    let browser = Browser::start();
    browser.goto("http://127.0.0.1:9650/");
    browser.wait_for(
        "the first drawing",
        "return Number(document.body.dataset.refreshed || 0) >= 1;",
        Duration::from_secs(20),
    );
    let (before, _) = figures_match_page_json(&browser);
    for path in [
        "roles.webdav.details.files",
        "roles.lb.details.pools.excp.requests",
        "roles.lb.details.pools.exrp.peers.0.state",
        "roles.excp.details.openCalls",
        "roles.exrp.details.queue.done",
    ] {
        assert!(before.iter().any(|(p, _)| p == path), "the page does not show {path}");
    }

    // A simulation runs while the page watches it; a bad request leaves a warning to show.
    let (calls, per_call) = (24usize, 2usize);
    let mut sim = Command::new(BIN)
        .args(["simulate", "--calls", &calls.to_string(), "--concurrency", "3", "--recordings-per-call"])
        .arg(per_call.to_string())
        .args(["--timeout", "90"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let r = c.post("http://127.0.0.1:18080/api/v1/interaction-end").body("{broken").send().unwrap();
    assert_eq!(r.status(), 400);

    let mut seen_done = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let sim_status = loop {
        let (_, page_json) = figures_match_page_json(&browser);
        seen_done.push(lookup(&page_json, "roles.exrp.details.queue.done").as_u64().unwrap());
        if let Some(status) = sim.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "simulate did not finish");
        std::thread::sleep(Duration::from_millis(700));
    };
    let mut report = String::new();
    std::io::Read::read_to_string(sim.stdout.as_mut().unwrap(), &mut report).unwrap();
    assert!(sim_status.success(), "simulate failed: {report}");
    let total = (calls * per_call) as u64;
    assert!(seen_done.windows(2).all(|w| w[0] <= w[1]), "done went backwards: {seen_done:?}");
    // It started at 0; showing the final count below, untouched, proves it redraws by itself.
    assert_eq!(seen_done.first(), Some(&0), "{seen_done:?}");

    // Once the run is over the figures stand still: the page must show what /api/status says.
    let n = refreshes(&browser);
    browser.wait_for(
        "two more refreshes",
        &format!("return Number(document.body.dataset.refreshed || 0) >= {};", n + 2),
        Duration::from_secs(20),
    );
    let truth: Value =
        serde_json::from_str(&c.get("http://127.0.0.1:9650/api/status").send().unwrap().text().unwrap()).unwrap();
    let (after, page_json) = figures_match_page_json(&browser);
    for (path, raw) in &after {
        // Free disk moves with everything else on the machine; the scan clock every 10 s.
        if path.ends_with("freeDiskBytes") || path.ends_with("lastScanMs") {
            continue;
        }
        assert_eq!(raw, lookup(&truth, path), "{path}: page and /api/status differ");
    }
    assert_eq!(lookup(&page_json, "roles.exrp.details.queue.done").as_u64(), Some(total));
    assert_eq!(lookup(&truth, "roles.exrp.details.queue.done").as_u64(), Some(total));
    let shown = |prefix: &str, field: &str| -> Vec<String> {
        after
            .iter()
            .filter(|(p, _)| p.starts_with(prefix) && p.ends_with(field))
            .filter_map(|(_, v)| v.as_str().map(str::to_owned))
            .collect()
    };
    let files = shown("roles.exrp.details.recent.", ".file");
    assert!(!files.is_empty() && files.iter().all(|f| f.starts_with("SIM") && f.ends_with(".opus")), "{files:?}");
    assert!(shown("roles.exrp.details.recent.", ".outcome").iter().all(|o| o == "uploaded"));
    let problems = shown("problems.", ".text");
    assert!(problems.iter().any(|t| t.contains("interaction-end refused")), "{problems:?}");
    let stages =
        browser.run("return [...document.querySelectorAll('[data-stage] .dot')].map(d => d.className);", json!([]));
    assert_eq!(stages.as_array().unwrap().len(), 6, "{stages}");
    assert!(stages.as_array().unwrap().iter().all(|s| s == "dot UP"), "{stages}");

    std::fs::create_dir_all(artifacts()).unwrap();
    browser.resize(1920, 1080);
    browser.wait_for("the wall-screen size", "return window.innerWidth >= 1900;", Duration::from_secs(10));
    std::fs::write(artifacts().join("wall.png"), browser.screenshot()).unwrap();

    // A phone: nothing may need sideways scrolling, and the figures are still the JSON's.
    browser.resize(390, 844);
    let n = refreshes(&browser);
    browser.wait_for(
        "a refresh at phone size",
        &format!("return Number(document.body.dataset.refreshed || 0) >= {};", n + 1),
        Duration::from_secs(20),
    );
    let width = browser.run(
        "return [document.documentElement.scrollWidth, window.innerWidth, \
         [...document.querySelectorAll('section.card')].filter(s => s.getBoundingClientRect().right > window.innerWidth + 1).length];",
        json!([]),
    );
    assert!(width[1].as_u64().unwrap() <= 400, "the window did not shrink: {width}");
    assert!(width[0].as_u64() <= width[1].as_u64(), "the page scrolls sideways on a phone: {width}");
    assert_eq!(width[2].as_u64(), Some(0), "cards wider than a phone: {width}");
    figures_match_page_json(&browser);
    std::fs::write(artifacts().join("phone.png"), browser.screenshot()).unwrap();
    eprintln!("status page screenshots in {}", artifacts().display());

    drop(browser);
    let _ = Command::new("kill").args(["-s", "TERM", &sandbox.id().to_string()]).status();
    let status = wait_timeout(&mut sandbox, Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn to_fixed_2_rounds_as_javascript_does() {
    // Node: [0.125, 0.375, 1.625, 2.5, 0.1, 0.005, 1.005, 12.3456, 0].map(x => x.toFixed(2))
    let cases = [
        (0.125, "0.13"),
        (0.375, "0.38"),
        (1.625, "1.63"),
        (2.5, "2.50"),
        (0.1, "0.10"),
        (0.005, "0.01"),
        (1.005, "1.00"),
        (12.3456, "12.35"),
        (0.0, "0.00"),
    ];
    for (x, js) in cases {
        assert_eq!(to_fixed_2(x), js, "{x}");
    }
}

/// An exrp whose org refuses its secret, with a recording of a tenant that has no org: the
/// page says both, naming the org and the tenant, in figures bound to the JSON, and still fits
/// a phone.
#[test]
fn the_status_page_names_a_refused_org_and_a_tenant_waiting_for_one() {
    use crate::exrp::{Exrp, SAMPLE, Store, end_body};
    use crate::support::cloud::FakeCloud;
    let store = Store::start("status-org");
    let cloud = FakeCloud::start("client-1", "secret-1");
    let other = FakeCloud::start("client-2", "secret-2");
    let sink = format!(
        "[exrp.genesys_cloud]\napi_url = \"{0}\"\nlogin_url = \"{0}\"\nclient_id = \"client-1\"\nclient_secret = \"not-it\"\n\
         [exrp.genesys_cloud.tenants.Tenant2]\napi_url = \"{1}\"\nlogin_url = \"{1}\"\nclient_id = \"client-2\"\nclient_secret = \"secret-2\"\n",
        cloud.base_url(),
        other.base_url()
    );
    let exrp = Exrp::start("status-org", &store.url(), &sink, "");
    store.put("SO1_1.opus", SAMPLE);
    store.put("SO2_1.opus", SAMPLE);
    assert_eq!(exrp.post(&end_body("SO1", &[("1", "SO1_1.opus", SAMPLE.len())])).status, 202);
    let mut body = end_body("SO2", &[("1", "SO2_1.opus", SAMPLE.len())]);
    body["tenant"] = json!("Tenant3");
    assert_eq!(exrp.post(&body).status, 202);
    exrp.wait_health("the org refused and the tenant waiting", |_, b| {
        b["orgsFailing"][0]["org"] == "default" && b["waitingForTenantOrg"]["jobs"] == 1
    });

    let browser = Browser::start();
    browser.resize(390, 844);
    browser.goto(&exrp.proc().admin_url("/"));
    browser.wait_for(
        "both alerts drawn",
        "return document.querySelector('[data-alert=org]') && document.querySelector('[data-alert=tenant]') ? true : false;",
        Duration::from_secs(20),
    );
    let texts = browser
        .run("return ['org', 'tenant'].map(a => document.querySelector(`[data-alert=${a}]`).textContent);", json!([]));
    let (org, tenant) = (texts[0].as_str().unwrap(), texts[1].as_str().unwrap());
    assert!(org.contains("refuses org default") && org.contains("token: HTTP 401"), "{org}");
    assert!(tenant.contains("1 recording(s) wait") && tenant.contains("Tenant3"), "{tenant}");
    figures_match_page_json(&browser);
    let width = browser.run("return [document.documentElement.scrollWidth, window.innerWidth];", json!([]));
    assert!(width[0].as_u64() <= width[1].as_u64(), "the page scrolls sideways on a phone: {width}");
    std::fs::create_dir_all(artifacts()).unwrap();
    std::fs::write(artifacts().join("org-refused-phone.png"), browser.screenshot()).unwrap();
}

/// The lines each chart drew and the JSON they were drawn from, read in one script run.
const CHARTS: &str = "return [[...document.querySelectorAll('#charts path.line')].map(p => \
    [p.closest('[data-chart]').dataset.chart, p.dataset.series, p.dataset.values, p.getAttribute('d')]), \
    window.trendsJson, Number(document.getElementById('trends').dataset.points)];";

/// Every line of every chart is the end of its series in the JSON the page last drew, and its
/// path has a point for each value that is not a gap. Returns that JSON.
fn charts_match_trends_json(browser: &Browser) -> Value {
    let all = browser.run(CHARTS, json!([]));
    let (lines, trends, points) = (all[0].as_array().unwrap().clone(), all[1].clone(), all[2].as_u64().unwrap());
    let series = trends["series"].as_array().unwrap();
    assert_eq!(lines.len(), series.len(), "a line per series: {lines:?}");
    for line in &lines {
        let (chart, name) = (line[0].as_str().unwrap(), line[1].as_str().unwrap());
        let drawn: Vec<Value> = serde_json::from_str(line[2].as_str().unwrap()).unwrap();
        let s = series.iter().find(|s| s["chart"] == chart && s["name"] == name).expect("the line's series");
        let values = s["values"].as_array().unwrap();
        let tail = &values[values.len().saturating_sub(points as usize)..];
        assert_eq!(drawn, tail, "{chart}/{name}: the line is not its series' last {points} values");
        let vertices = line[3].as_str().unwrap().matches(['M', 'L']).count();
        let present = tail.iter().filter(|v| !v.is_null()).count();
        assert_eq!(vertices, present.max(1), "{chart}/{name}: a vertex per value");
    }
    trends
}

fn series_sum(trends: &Value, chart: &str, name: &str) -> f64 {
    let s = trends["series"].as_array().unwrap().iter().find(|s| s["chart"] == chart && s["name"] == name);
    s.map_or(0.0, |s| s["values"].as_array().unwrap().iter().filter_map(Value::as_f64).sum())
}

/// Trends and trace in the browser: while `simulate` drives the sandbox (trends sampled every
/// second), the charts draw exactly the JSON they were given and add up to what was sent; the
/// search box finds a simulated call and shows every step of its way from the store back to
/// the store's DELETE; and nothing scrolls sideways on a phone.
#[test]
fn the_status_page_charts_trends_and_traces_a_simulated_call() {
    let test = "status_page::the_status_page_charts_trends_and_traces_a_simulated_call";
    let Some(_ports) = sandbox_ports(test, &SANDBOX_ALL_PORTS) else { return };
    let dir = TempDir::new("status-trends");
    let config = sandbox_config(dir.path(), |text| text.replace("[admin]\n", "[admin]\ntrend_interval = \"1s\"\n"));
    let (line, mut sandbox) = start_sandbox_config(dir.path(), &config);
    assert!(line.starts_with("READY "), "{line}");

    let browser = Browser::start();
    browser.resize(1920, 1080);
    browser.goto("http://127.0.0.1:9650/");
    browser.wait_for(
        "the first charts",
        "return Number(document.getElementById('trends').dataset.drawn || 0) >= 1;",
        Duration::from_secs(20),
    );

    let (calls, per_call) = (6usize, 2usize);
    let total = (calls * per_call) as f64;
    let out = Command::new(BIN)
        .args(["simulate", "--calls", &calls.to_string(), "--concurrency", "2", "--recordings-per-call"])
        .arg(per_call.to_string())
        .args(["--timeout", "90"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "simulate: {}", String::from_utf8_lossy(&out.stdout));

    // Sampled every second: the rings add up to what was sent once a sample after the last
    // injection is taken; the page then draws a JSON with at least that many samples.
    let c = client();
    let trends_now = || -> Value {
        serde_json::from_str(&c.get("http://127.0.0.1:9650/api/trends").send().unwrap().text().unwrap()).unwrap()
    };
    wait_until("the trends count every recording", Duration::from_secs(30), || {
        let t = trends_now();
        series_sum(&t, "recordings", "injected") == total && series_sum(&t, "recordings", "accepted") == total
    });
    let samples = trends_now()["samples"].as_u64().unwrap();
    browser.wait_for(
        "a drawing with the recordings in it",
        &format!("return window.trendsJson != null && window.trendsJson.samples >= {samples};"),
        Duration::from_secs(30),
    );
    let drawn = charts_match_trends_json(&browser);
    assert_eq!(series_sum(&drawn, "recordings", "injected"), total);
    assert_eq!(series_sum(&drawn, "recordings", "failed"), 0.0);
    assert!(series_sum(&drawn, "lb_requests", "excp") >= total, "{drawn}");
    let charts: Vec<String> = browser
        .run("return [...document.querySelectorAll('#charts [data-chart]')].map(c => c.dataset.chart);", json!([]))
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(charts, ["recordings", "queue", "backlog", "store", "lb_requests", "lb_5xx"]);
    // The day's range draws the same JSON over the whole ring.
    browser.click("#trends [data-range=day]");
    browser.wait_for(
        "the day's range",
        "return document.getElementById('trends').dataset.points == String(window.trendsJson.capacity);",
        Duration::from_secs(10),
    );
    charts_match_trends_json(&browser);
    std::fs::create_dir_all(artifacts()).unwrap();
    std::fs::write(artifacts().join("trends-wall.png"), browser.screenshot()).unwrap();
    // Dark: the page follows the system's scheme, charts included.
    let colors = "return [getComputedStyle(document.body).backgroundColor, \
        getComputedStyle(document.querySelector('#charts path.line.s0')).stroke];";
    let light = browser.run(colors, json!([]));
    browser.color_scheme(true);
    browser.wait_for(
        "the dark scheme",
        "return matchMedia('(prefers-color-scheme: dark)').matches;",
        Duration::from_secs(10),
    );
    let dark = browser.run(colors, json!([]));
    assert_ne!(light[0], dark[0], "the background follows the scheme");
    assert_ne!(light[1], dark[1], "the chart lines follow the scheme");
    std::fs::write(artifacts().join("trends-dark.png"), browser.screenshot()).unwrap();
    browser.color_scheme(false);

    // The search box: a simulated call, typed in, shows its whole way.
    let sink = dir.path().join("exec-allinone-data/injected/Environment");
    let file = std::fs::read_dir(&sink)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.ends_with("_0.opus"))
        .expect("a recording in the sink");
    let call = file.trim_end_matches("_0.opus").to_string();
    browser.type_into("#trace-id", &call);
    browser.click("#trace-form button");
    browser.wait_for(
        "the trace",
        &format!("return window.traceJson != null && window.traceJson.id === {};", json!(call)),
        Duration::from_secs(20),
    );
    let shown = browser.run(
        "return [[...document.querySelectorAll('#trace tbody tr')].map(r => [r.dataset.role, r.dataset.step, \
         [...r.children].map(td => td.textContent)]), window.traceJson];",
        json!([]),
    );
    let (rows, trace) = (shown[0].as_array().unwrap(), &shown[1]);
    let events = trace["events"].as_array().unwrap();
    assert_eq!(rows.len(), events.len(), "a row per event");
    for (row, event) in rows.iter().zip(events) {
        assert_eq!((&row[0], &row[1]), (&event["role"], &event["step"]));
        let cells = row[2].as_array().unwrap();
        assert_eq!(cells[4], event["detail"], "the row shows the event's text");
    }
    let steps: Vec<(String, String)> =
        rows.iter().map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_str().unwrap().to_string())).collect();
    let has = |role: &str, step: &str| steps.iter().filter(|(r, s)| r == role && s == step).count();
    for (role, step, n) in [
        ("webdav", "stored", per_call),
        ("excp", "metadata", per_call),
        ("excp", "call-ended", 1),
        ("lb", "call-end", 1),
        ("excp", "interaction-end", per_call),
        ("lb", "interaction-end", 1),
        ("exrp", "accepted", per_call),
        ("exrp", "claimed", per_call),
        ("exrp", "fetched", per_call),
        ("exrp", "uploaded", per_call),
        ("webdav", "deleted", per_call),
        ("exrp", "done", per_call),
    ] {
        assert!(has(role, step) >= n, "{role} {step} shown {} times, {n} expected: {steps:?}", has(role, step));
    }
    // In time order: the store took the audio before exrp was told, and deleted it last.
    let first = |role: &str, step: &str| steps.iter().position(|(r, s)| r == role && s == step).unwrap();
    assert!(first("webdav", "stored") < first("exrp", "accepted"));
    assert!(first("exrp", "uploaded") < first("webdav", "deleted"));
    assert!(rows.iter().all(|r| !r[2].as_array().unwrap().is_empty()));
    std::fs::write(artifacts().join("trace-wall.png"), browser.screenshot()).unwrap();

    // A phone: the trace table stacks and the charts shrink; nothing scrolls sideways.
    browser.resize(390, 844);
    browser.wait_for("the phone size", "return window.innerWidth <= 400;", Duration::from_secs(10));
    let width = browser.run(
        "return [document.documentElement.scrollWidth, window.innerWidth, \
         [...document.querySelectorAll('#trace, #trends, svg.plot')].filter(s => s.getBoundingClientRect().right > window.innerWidth + 1).length];",
        json!([]),
    );
    assert!(width[0].as_u64() <= width[1].as_u64(), "the page scrolls sideways on a phone: {width}");
    assert_eq!(width[2].as_u64(), Some(0), "trace or charts wider than a phone: {width}");
    std::fs::write(artifacts().join("trace-phone.png"), browser.screenshot()).unwrap();

    // An id no role knows is said so; one too short is refused with the reason.
    browser.run("document.getElementById('trace-id').value = '';", json!([]));
    browser.type_into("#trace-id", "NO-SUCH-CALL");
    browser.click("#trace-form button");
    browser.wait_for(
        "the empty trace",
        "return window.traceJson != null && window.traceJson.id === 'NO-SUCH-CALL';",
        Duration::from_secs(20),
    );
    let text = browser.run("return document.getElementById('trace').textContent;", json!([]));
    assert!(text.as_str().unwrap().contains("no role of this process"), "{text}");
    let r = c.get("http://127.0.0.1:9650/api/trace?id=ab").send().unwrap();
    assert_eq!(r.status(), 400);

    drop(browser);
    let _ = Command::new("kill").args(["-s", "TERM", &sandbox.id().to_string()]).status();
    let status = wait_timeout(&mut sandbox, Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(0));
}
