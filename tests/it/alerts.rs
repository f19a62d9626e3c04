//! The Prometheus alerting rules of `dist/prometheus/` against the real thing: Prometheus's own
//! `promtool` checks the file, every metric a rule names is in the `/metrics` of a running
//! sandbox (Genesys Cloud sink, store quota, both lb pools), and `promtool test rules`
//! evaluates every rule on the series scraped from it: quiet as scraped, and each alert firing
//! when its series are driven into the fault it is for.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::cloud::FakeCloud;
use crate::support::*;

const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/prometheus/exec-allinone-alerts.yml");
const INSTANCE: &str = "vm1:9650";

/// One scraped sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// A series a scenario drives: name, the labels that pick it, its values (promtool notation).
type Change<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

/// A fault: its name, the series it drives, the alerts it fires.
type Scenario<'a> = (&'a str, Vec<(&'a str, &'a [(&'a str, &'a str)], String)>, Vec<Firing<'a>>);

/// The samples of a Prometheus text exposition (our own: no escapes in label values here).
fn samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let labels = rest
                    .trim_end_matches('}')
                    .split("\",")
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once("=\"").unwrap();
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        out.push((name, labels, value.parse().unwrap_or(f64::NAN)));
    }
    out
}

/// The metric names a rules file uses (the project's prefixes).
fn metric_names(rules: &str) -> Vec<String> {
    let mut names: Vec<String> = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| ["exrp_", "excp_", "webdav_", "lb_", "exec_allinone_"].iter().any(|p| w.starts_with(p)))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// `promtool test rules` input: every sample as a series of `value` for two hours (a minute
/// apart), with `instance` and `job` as a scrape adds them; `changes` replaces some series'
/// values (a promtool expanding notation such as "0+10x120").
fn input_series(scraped: &[Sample], changes: &[Change<'_>]) -> Vec<Value> {
    let mut series = Vec::new();
    let mut changed = vec![false; changes.len()];
    for (name, labels, value) in scraped {
        if !value.is_finite() {
            continue;
        }
        let mut values = format!("{value}x120");
        for (i, (cname, clabels, cvalues)) in changes.iter().enumerate() {
            if cname == name && clabels.iter().all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v)) {
                values = cvalues.to_string();
                changed[i] = true;
            }
        }
        series.push(json!({ "series": selector(name, labels), "values": values }));
    }
    // A change to a series the scrape does not have (a counter label never counted yet) adds it.
    for (i, (name, labels, values)) in changes.iter().enumerate() {
        if !changed[i] {
            let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            series.push(json!({ "series": selector(name, &labels), "values": values }));
        }
    }
    series
}

fn selector(name: &str, labels: &BTreeMap<String, String>) -> String {
    let mut all = labels.clone();
    all.insert("instance".into(), INSTANCE.into());
    all.insert("job".into(), "exec-allinone".into());
    let inner: Vec<String> = all.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

/// An alert's annotations as Prometheus renders them: `{{ $labels.x }}` and `{{ $value }}` (and
/// its `humanizePercentage`) in the file's one-line texts, filled in.
fn annotations(rules: &str, alert: &str, labels: &serde_json::Map<String, Value>, value: &str) -> Value {
    let start = rules.find(&format!("- alert: {alert}\n")).unwrap();
    let block = &rules[start..];
    let end = block[1..].find("- alert: ").map_or(block.len(), |i| i + 1);
    let mut out = serde_json::Map::new();
    for key in ["summary", "description"] {
        let line = block[..end].lines().find_map(|l| l.trim().strip_prefix(&format!("{key}: "))).unwrap();
        let mut text = line.trim_matches('"').replace("\\\"", "\"");
        for (k, v) in labels {
            text = text.replace(&format!("{{{{ $labels.{k} }}}}"), v.as_str().unwrap());
        }
        text = text
            .replace("{{ $value | humanizePercentage }}", &format!("{}%", value.parse::<f64>().unwrap_or(0.0) * 100.0));
        text = text.replace("{{ $value }}", value);
        out.insert(key.into(), json!(text));
    }
    Value::Object(out)
}

/// A firing alert a scenario expects: the rule, its severity, its labels besides `instance`,
/// `job` and `severity`, and its value as the annotations show it.
type Firing<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a str);

/// Runs `promtool test rules` on one scenario: the alerts expected at two hours; every other
/// rule of the file must be quiet.
fn promtool_test(dir: &Path, name: &str, series: Vec<Value>, firing: &[Firing<'_>]) {
    let rules = std::fs::read_to_string(RULES).unwrap();
    let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    let tests: Vec<Value> = alerts
        .iter()
        .map(|alert| {
            let exp: Vec<Value> = firing
                .iter()
                .filter(|(a, ..)| a == alert)
                .map(|(_, severity, labels, value)| {
                    let mut l: serde_json::Map<String, Value> =
                        labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
                    l.insert("severity".into(), json!(severity));
                    l.insert("instance".into(), json!(INSTANCE));
                    if !labels.iter().any(|(k, _)| *k == "no_job") {
                        l.insert("job".into(), json!("exec-allinone"));
                    }
                    l.remove("no_job");
                    let notes = annotations(&rules, alert, &l, value);
                    json!({ "exp_labels": l, "exp_annotations": notes })
                })
                .collect();
            json!({ "eval_time": "2h", "alertname": alert, "exp_alerts": exp })
        })
        .collect();
    let file = json!({
        "rule_files": [RULES],
        "evaluation_interval": "1m",
        "tests": [{ "interval": "1m", "input_series": series, "alert_rule_test": tests }],
    });
    let path = dir.join(format!("{name}.test.yml"));
    std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).unwrap();
    let out = tool("promtool").args(["test", "rules"]).arg(&path).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "scenario {name}: promtool test rules failed:\n{text}");
}

#[test]
fn alerting_rules_hold_against_a_live_metrics_page() {
    let test = "alerts::alerting_rules_hold_against_a_live_metrics_page";
    let check = tool("promtool").args(["check", "rules", RULES]).output().unwrap();
    assert!(check.status.success(), "promtool check rules: {}", String::from_utf8_lossy(&check.stdout));
    let Some(_ports) = sandbox_ports(test, &SANDBOX_ALL_PORTS) else { return };

    // The sandbox with a Genesys Cloud sink and a store quota: every metric a rule can name.
    let cloud = FakeCloud::start("alerts", "alerts-secret");
    let dir = TempDir::new("alerts");
    let config = sandbox_config(dir.path(), |text| {
        let cloud_table = format!(
            "[exrp.genesys_cloud]\napi_url = \"{0}\"\nlogin_url = \"{0}\"\nclient_id = \"alerts\"\nclient_secret = \"alerts-secret\"\n",
            cloud.base_url()
        );
        let local = text.find("[exrp.local_sink]").unwrap();
        let text = format!("{}{cloud_table}", &text[..local]);
        text.replace("[webdav]\n", "[webdav]\nquota = \"1GiB\"\n")
    });
    let (line, _sandbox) = start_sandbox_config(dir.path(), &config);
    assert!(line.starts_with("READY "), "{line}");
    let out = std::process::Command::new(BIN)
        .args(["simulate", "--calls", "2", "--recordings-per-call", "1", "--timeout", "60"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    // Delivered to the fake cloud: the sink directory simulate checks is not used.
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("\"failed_calls\":0"), "{report}");
    let c = client();
    let scrape = || c.get("http://127.0.0.1:9650/metrics").send().unwrap().text().unwrap();
    wait_until("both recordings uploaded", Duration::from_secs(30), || {
        scrape().contains("exrp_jobs_finished_total{outcome=\"uploaded\"} 2")
    });
    let text = scrape();

    // Every metric a rule names is on the page (a family declared, or samples).
    let rules = std::fs::read_to_string(RULES).unwrap();
    let names = metric_names(&rules);
    assert!(names.len() >= 10, "{names:?}");
    for name in &names {
        let declared = text.contains(&format!("# TYPE {name} "));
        let sampled = text.lines().any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")));
        assert!(declared || sampled, "the rules name {name}, which /metrics does not have");
    }

    // As scraped, a healthy sandbox: nothing fires.
    let scraped = samples(&text);
    let wanted: Vec<Sample> = scraped.into_iter().filter(|(n, ..)| names.contains(n)).collect();
    assert!(wanted.iter().any(|(n, l, _)| n == "lb_upstream_up" && l.get("pool").map(String::as_str) == Some("exrp")));
    promtool_test(dir.path(), "quiet", input_series(&wanted, &[]), &[]);

    // Each fault, driven on the scraped series, fires its alert and only its alert.
    let quota = 1u64 << 30;
    let scenarios: Vec<Scenario<'_>> = vec![
        (
            "backlog",
            vec![("exrp_jobs", &[("state", "pending")], "0+10x120".into())],
            vec![("ExecRecordingBacklogGrowing", "warning", vec![("state", "pending")], "1200")],
        ),
        (
            "excp-backlog",
            vec![("excp_recordings_pending_delivery", &[], "0+5x120".into())],
            vec![("ExecRecordingBacklogGrowing", "warning", vec![], "600")],
        ),
        (
            "dead",
            vec![("exrp_jobs", &[("state", "dead")], "0x60 3x60".into())],
            vec![("ExecDeadRecordings", "critical", vec![("state", "dead")], "3")],
        ),
        (
            "org-refused",
            vec![("exrp_cloud_org_refused", &[("org", "default")], "0x60 1x60".into())],
            vec![("ExecOrgCredentialsRefused", "critical", vec![("org", "default")], "1")],
        ),
        (
            "tenant-waits",
            vec![("exrp_jobs_waiting_for_org", &[], "0x60 4x60".into())],
            vec![("ExecRecordingsWaitForTenantOrg", "warning", vec![], "4")],
        ),
        (
            "quota",
            vec![("webdav_store_used_bytes", &[], format!("{}x120", quota / 100 * 95))],
            vec![("ExecStoreQuotaNearlyFull", "warning", vec![], "0.95")],
        ),
        (
            "507",
            vec![("webdav_requests_total", &[("method", "PUT"), ("status", "507")], "0x110 1+1x10".into())],
            vec![("ExecStoreRefusesUploads", "critical", vec![("method", "PUT"), ("status", "507")], "10")],
        ),
        (
            "pool-down",
            vec![("lb_upstream_up", &[("pool", "exrp")], "1x60 0x60".into())],
            vec![("ExecPoolHasNoPeerUp", "critical", vec![("pool", "exrp"), ("no_job", "")], "0")],
        ),
        (
            "orphans",
            vec![("exrp_orphans", &[("older_than", "24h")], "0x60 2x60".into())],
            vec![("ExecOrphanRecordings", "warning", vec![("older_than", "24h")], "2")],
        ),
        (
            "store-unreachable",
            vec![("exrp_webdav_up", &[], "1x60 0x60".into())],
            vec![("ExecStoreUnreachableFromExrp", "critical", vec![], "0")],
        ),
    ];
    let mut covered: Vec<&str> = Vec::new();
    for (name, changes, firing) in &scenarios {
        let changes: Vec<Change<'_>> = changes.iter().map(|(n, l, v)| (*n, *l, v.as_str())).collect();
        promtool_test(dir.path(), name, input_series(&wanted, &changes), firing);
        covered.extend(firing.iter().map(|(a, ..)| *a));
    }
    // Every rule of the file has a scenario that makes it fire.
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(covered.contains(&alert), "no scenario fires {alert}");
    }
}
