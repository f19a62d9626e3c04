//! The webdav role against real peers: Apache's htpasswd, litmus, curl over TLS, and a
//! thousand concurrent uploads.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

#[test]
fn htpasswd_files_made_by_apache_in_every_format() {
    tool("htpasswd");
    let site = Site::new("formats");
    let file = site.dir.join("htpasswd");
    let users = [
        ("-m", "md5user", "pw-md5"),
        ("-B", "bcryptuser", "pw-bcrypt"),
        ("-s", "shauser", "pw-sha"),
        ("-2", "sha256user", "pw-sha256"),
        ("-5", "sha512user", "pw-sha512"),
        ("-d", "cryptuser", "pwcrypt"),
    ];
    for (flag, user, pw) in users {
        let out = Command::new("htpasswd").args(["-b", flag, file.to_str().unwrap(), user, pw]).output().unwrap();
        assert!(out.status.success(), "htpasswd {flag}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let proc = site.start();
    let c = client();
    for (flag, user, pw) in users {
        let ok =
            c.put(proc.url(&format!("/recordings/{user}.opus"))).basic_auth(user, Some(pw)).body("x").send().unwrap();
        assert_eq!(ok.status(), 201, "format {flag} with the right password");
        let bad = c.get(proc.url("/recordings/")).basic_auth(user, Some("wrong")).send().unwrap();
        assert_eq!(bad.status(), 401, "format {flag} with a wrong password");
    }
}

#[test]
fn missing_wrong_and_malformed_credentials_get_401_with_a_challenge() {
    let site = Site::with("auth401", "realm = \"Genesys Recordings\"");
    let proc = site.start();
    let c = client();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("wrong password", Some(format!("Basic {}", b64("mcp:nope")))),
        ("unknown user", Some(format!("Basic {}", b64("ghost:secret1")))),
        ("not base64", Some("Basic !!!".into())),
        ("no colon", Some(format!("Basic {}", b64("mcpsecret1")))),
        ("other scheme", Some("Bearer abc".into())),
    ];
    for (what, header) in cases {
        // Every method for the missing header; two for the rest, since repeated failures from
        // one address are answered ever more slowly (the unit tests pin that down).
        let methods: &[&str] = if header.is_none() {
            &["GET", "PUT", "PROPFIND", "DELETE", "OPTIONS", "LOCK", "MKCOL"]
        } else {
            &["GET", "PUT"]
        };
        for &method in methods {
            let mut req = c.request(method_of(method), proc.url("/recordings/x.opus"));
            if let Some(h) = &header {
                req = req.header("authorization", h);
            }
            let res = req.send().unwrap();
            assert_eq!(res.status(), 401, "{what} on {method}");
            let challenge = res.headers().get("www-authenticate").expect("challenge").to_str().unwrap().to_owned();
            assert!(challenge.starts_with("Basic realm=\"Genesys Recordings\""), "{challenge}");
        }
    }
    assert!(!site.root().join("x.opus").exists());
    let metrics = c.get(proc.admin_url("/metrics")).send().unwrap().text().unwrap();
    assert!(metrics.contains("webdav_auth_failures_total{reason="), "{metrics}");
}

fn method_of(m: &str) -> reqwest::Method {
    reqwest::Method::from_bytes(m.as_bytes()).unwrap()
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn htpasswd_subcommand_writes_what_apache_verifies_and_the_server_reloads_it() {
    let site = Site::new("subcommand");
    let proc = site.start();
    let file = site.dir.join("htpasswd");
    let c = client();
    let denied = c.get(proc.url("/recordings/")).basic_auth("newuser", Some("n3w-pass")).send().unwrap();
    assert_eq!(denied.status(), 401);
    let out =
        output_with_stdin(Command::new(BIN).args(["htpasswd", "-i", file.to_str().unwrap(), "newuser"]), b"n3w-pass\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("mcp:$apr1$"), "other users kept: {text}");
    assert!(text.contains("newuser:$2y$"), "bcrypt by default: {text}");
    {
        let verify = tool("htpasswd").args(["-vb", file.to_str().unwrap(), "newuser", "n3w-pass"]).output().unwrap();
        assert!(
            verify.status.success(),
            "Apache's htpasswd rejects our line: {}",
            String::from_utf8_lossy(&verify.stderr)
        );
    }
    // The running server picks the change up without a restart.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let res = c.get(proc.url("/recordings/")).basic_auth("newuser", Some("n3w-pass")).send().unwrap();
        if res.status() != 401 {
            assert!(res.status().is_success(), "{}", res.status());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "password file change not picked up within 5 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn litmus_all_five_suites_pass() {
    let site = Site::new("litmus");
    let proc = site.start();
    litmus_all_suites(&proc.url("/recordings/"), site.dir.path(), || proc.logs());
}

#[test]
fn a_thousand_concurrent_one_mib_puts_are_all_stored_byte_exact() {
    let site = Site::new("thousand");
    let proc = site.start();
    let addr = proc.addr("webdav");
    let auth = basic();
    let base: std::sync::Arc<Vec<u8>> = std::sync::Arc::new((0..1 << 20).map(|j| (j % 251) as u8).collect());
    // Unique per file (the index up front), cheap to build in a debug test binary.
    let body_for = |i: usize| -> Vec<u8> {
        let mut body = base.as_ref().clone();
        body[..16].copy_from_slice(format!("{i:016}").as_bytes());
        body
    };
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(1000));
    let handles: Vec<_> = (0..1000)
        .map(|i| {
            let (auth, barrier) = (auth.clone(), barrier.clone());
            let body = body_for(i);
            std::thread::Builder::new()
                .stack_size(128 << 10)
                .spawn(move || {
                    let mut raw = Raw::connect(addr);
                    raw.stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
                    barrier.wait();
                    use std::io::Write;
                    let head = format!("PUT /recordings/call-{i:04}.opus HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: {}\r\n\r\n", body.len());
                    // A refusal may close the connection before the body is sent; read the status anyway.
                    let _ = raw.stream.write_all(head.as_bytes()).and_then(|_| raw.stream.write_all(&body));
                    raw.response().0
                })
                .unwrap()
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        statuses.iter().all(|s| *s == 201),
        "statuses: {:?}",
        statuses.iter().filter(|s| **s != 201).collect::<Vec<_>>()
    );
    for i in 0..1000 {
        let stored = std::fs::read(site.root().join(format!("call-{i:04}.opus"))).unwrap();
        assert!(stored == body_for(i), "call-{i:04} differs");
    }
    assert_eq!(dir_entries(&site.root()).len(), 1000, "no temp files left");
}

#[test]
fn tls_listener_serves_webdav_over_https() {
    tool("curl");
    let site = Site::with("tls", "");
    let (cert, key) = crate::support::self_signed(site.dir.path());
    let site =
        Site { extra: format!("[webdav.tls]\ncert = \"{}\"\nkey = \"{}\"\n", cert.display(), key.display()), ..site };
    let proc = site.start();
    let url = format!("https://localhost:{}/recordings/tls.opus", proc.addr("webdav").port());
    let resolve = format!("localhost:{}:127.0.0.1", proc.addr("webdav").port());
    let creds = format!("{USER}:{PASSWORD}");
    // Every call trusts our certificate, resolves localhost to the server and logs in.
    let curl = |extra: &[&str]| {
        let mut command = Command::new("curl");
        command
            .args(["-sS", "--cacert", cert.to_str().unwrap(), "--resolve", &resolve, "-u", &creds])
            .args(extra)
            .arg(&url);
        command
    };
    let put = output_with_stdin(&mut curl(&["-o", "/dev/null", "-w", "%{http_code}", "-T", "-"]), b"over tls");
    assert_eq!(String::from_utf8_lossy(&put.stdout), "201", "{}", String::from_utf8_lossy(&put.stderr));
    let get = curl(&[]).output().unwrap();
    assert_eq!(get.stdout, b"over tls");
    // Plain HTTP on the TLS port is not served.
    let plain = Command::new("curl").args(["-sS", "-m", "5", &proc.url("/recordings/tls.opus")]).output().unwrap();
    assert!(!plain.status.success() || !String::from_utf8_lossy(&plain.stdout).contains("over tls"));
}

#[test]
fn free_disk_reserve_refuses_uploads_with_507_and_health_reports_down() {
    let site = Site::with("reserve", "min_free_disk = \"1000TiB\"");
    let proc = site.start();
    let c = client();
    let put = c.put(proc.url("/recordings/x.opus")).basic_auth(USER, Some(PASSWORD)).body("abc").send().unwrap();
    assert_eq!(put.status(), 507);
    assert!(!site.root().join("x.opus").exists());
    assert!(dir_entries(&site.root()).is_empty(), "no temp file left");
    let health = c.get(proc.admin_url("/health")).send().unwrap();
    assert_eq!(health.status(), 503);
    let json: serde_json::Value = serde_json::from_str(&health.text().unwrap()).unwrap();
    assert_eq!(json["roles"]["webdav"]["status"], "DOWN");
    assert!(json["roles"]["webdav"]["details"]["freeDiskBytes"].is_u64());
}
