//! The webdav role on an S3 bucket (`[webdav.s3]`) against a real 3-node Garage cluster:
//! litmus passes as on disk; front ends on different nodes share one bucket (a file PUT
//! through one is read, ranged and deleted through the other); an upload is visible only
//! whole; the bucket's own quota answers 507 on every front end; the store's hidden names are
//! refused; and behind the lb's consistent hash, locks stay exclusive across front ends.

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::garage::{Garage, REGION};
use crate::support::*;

/// One front end's config on node `node` of `g`; `extra` goes into [webdav].
fn front_end(g: &Garage, dir: &TempDir, name: &str, node: usize, secret: &str, extra: &str) -> std::path::PathBuf {
    let htpasswd = dir.join("htpasswd");
    std::fs::write(&htpasswd, HTPASSWD_LINE).unwrap();
    let config = dir.join(&format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[webdav]\nlisten = \"127.0.0.1:0\"\nhtpasswd = \"{}\"\n{extra}\n\
             [webdav.s3]\nendpoint = \"{}\"\nregion = \"{REGION}\"\nbucket = \"{}\"\nkey_prefix = \"recordings\"\n\
             access_key_id = \"{}\"\nsecret_access_key = \"{secret}\"\nrequest_timeout = \"5s\"\n",
            htpasswd.display(),
            g.endpoint(node),
            g.bucket,
            g.key_id,
        ),
    )
    .unwrap();
    config
}

fn start(config: &std::path::Path) -> Proc {
    Proc::start(&["--role", "webdav", "--config", config.to_str().unwrap()])
}

/// The bucket's keys under "recordings/", as the engine lists them (no front end involved).
fn keys(g: &Garage) -> Vec<String> {
    g.keys(2, "recordings/")
}

#[test]
fn litmus_passes_on_a_garage_bucket() {
    let g = Garage::start("litmus");
    let dir = TempDir::new("s3-litmus");
    let proc = start(&front_end(&g, &dir, "fe", 0, &g.secret, ""));
    litmus_all_suites(&proc.url("/recordings/"), dir.path(), || proc.logs());
    // No object set aside during a MOVE, COPY or DELETE is left behind, and every sidecar of
    // properties belongs to a file that is still there (litmus leaves some of its files).
    let keys = keys(&g);
    assert!(!keys.iter().any(|k| k.contains("aside")), "{keys:?}");
    for sidecar in keys.iter().filter_map(|k| k.strip_prefix("recordings/.exec-allinone-props/")) {
        assert!(keys.contains(&format!("recordings/{sidecar}")), "{sidecar} is an orphan sidecar: {keys:?}");
    }
}

#[test]
fn front_ends_on_different_nodes_share_one_bucket_and_its_promises() {
    let g = Garage::start("shared");
    let dir = TempDir::new("s3-shared");
    let a = start(&front_end(&g, &dir, "a", 0, &g.secret, ""));
    let b = start(&front_end(&g, &dir, "b", 1, &g.secret, "max_file_size = \"64MiB\""));
    let c = client();
    let body: Vec<u8> = (0..(64 << 10)).map(|i| (i * 7 % 251) as u8).collect();

    // Written through one, read whole and in part through the other.
    let put = c.put(a.url("/recordings/SIM1_0.opus")).basic_auth(USER, Some(PASSWORD)).body(body.clone()).send();
    assert_eq!(put.unwrap().status(), 201);
    let got = c.get(b.url("/recordings/SIM1_0.opus")).basic_auth(USER, Some(PASSWORD)).send().unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().unwrap().as_ref(), &body[..]);
    let part = c
        .get(b.url("/recordings/SIM1_0.opus"))
        .basic_auth(USER, Some(PASSWORD))
        .header("range", "bytes=1000-1099")
        .send()
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().unwrap().as_ref(), &body[1000..1100]);
    let ranges = c
        .get(b.url("/recordings/SIM1_0.opus"))
        .basic_auth(USER, Some(PASSWORD))
        .header("range", "bytes=0-9,5-19,100-109")
        .send()
        .unwrap();
    assert_eq!(ranges.status(), 206, "overlapping ranges merged, as on disk");

    // Without a Content-Length, past one 8 MiB part: a multipart upload, byte exact.
    let big: Vec<u8> = (0..(9 << 20) + 123).map(|i| (i % 253) as u8).collect();
    let reader = std::io::Cursor::new(big.clone());
    let chunked = c
        .put(a.url("/recordings/big.opus"))
        .basic_auth(USER, Some(PASSWORD))
        .body(reqwest::blocking::Body::new(reader))
        .send()
        .unwrap();
    assert_eq!(chunked.status(), 201, "{}", a.logs());
    let got = c.get(b.url("/recordings/big.opus")).basic_auth(USER, Some(PASSWORD)).send().unwrap();
    assert_eq!(got.bytes().unwrap().len(), big.len());

    // A body that stops half way leaves nothing, neither the new file nor a part of it.
    let mut raw = std::net::TcpStream::connect(a.addr("webdav")).unwrap();
    write!(
        raw,
        "PUT /recordings/partial.opus HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 200000\r\n\r\n",
        basic()
    )
    .unwrap();
    raw.write_all(&vec![b'x'; 100_000]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(raw);
    std::thread::sleep(Duration::from_millis(500));
    let missing = c.get(b.url("/recordings/partial.opus")).basic_auth(USER, Some(PASSWORD)).send().unwrap();
    assert_eq!(missing.status(), 404);
    assert!(!keys(&g).iter().any(|k| k.contains("partial")), "{:?}", keys(&g));

    // Large dead properties go to a hidden sidecar object, which no listing shows and no
    // request can name.
    let big_prop = "v".repeat(4000);
    let proppatch = format!(
        "<?xml version=\"1.0\"?><D:propertyupdate xmlns:D=\"DAV:\" xmlns:Z=\"urn:x\"><D:set><D:prop>\
         <Z:note>{big_prop}</Z:note></D:prop></D:set></D:propertyupdate>"
    );
    let r = c
        .request(method("PROPPATCH"), a.url("/recordings/SIM1_0.opus"))
        .basic_auth(USER, Some(PASSWORD))
        .body(proppatch)
        .send()
        .unwrap();
    assert_eq!(r.status(), 207);
    assert!(keys(&g).iter().any(|k| k.starts_with("recordings/.exec-allinone-")), "the sidecar: {:?}", keys(&g));
    let propfind = c
        .request(method("PROPFIND"), b.url("/recordings/"))
        .basic_auth(USER, Some(PASSWORD))
        .header("depth", "1")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(propfind.contains("SIM1_0.opus") && propfind.contains("big.opus"), "{propfind}");
    assert!(!propfind.contains("exec-allinone"), "{propfind}");
    let note = c
        .request(method("PROPFIND"), b.url("/recordings/SIM1_0.opus"))
        .basic_auth(USER, Some(PASSWORD))
        .header("depth", "0")
        .body("<?xml version=\"1.0\"?><D:propfind xmlns:D=\"DAV:\" xmlns:Z=\"urn:x\"><D:prop><Z:note/></D:prop></D:propfind>")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(note.contains(&big_prop), "the property read back through the other front end");
    for path in ["/recordings/.exec-allinone-props/SIM1_0.opus", "/recordings/.exec-allinone-props/"] {
        let r = c.get(a.url(path)).basic_auth(USER, Some(PASSWORD)).send().unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }

    // Deleted through one, gone through the other, its sidecar with it.
    let del = c.delete(b.url("/recordings/SIM1_0.opus")).basic_auth(USER, Some(PASSWORD)).send().unwrap();
    assert_eq!(del.status(), 204);
    let gone = c.get(a.url("/recordings/SIM1_0.opus")).basic_auth(USER, Some(PASSWORD)).send().unwrap();
    assert_eq!(gone.status(), 404);
    assert_eq!(keys(&g), vec!["recordings/big.opus".to_string()]);

    // The root exists (405, as on disk and with Apache).
    let root = c.request(method("MKCOL"), a.url("/recordings/")).basic_auth(USER, Some(PASSWORD)).send();
    assert_eq!(root.unwrap().status(), 405);
    // A collection: made, filled, moved and deleted as one, leaving no key behind.
    let mkcol = c.request(method("MKCOL"), a.url("/recordings/coll/")).basic_auth(USER, Some(PASSWORD)).send();
    assert_eq!(mkcol.unwrap().status(), 201);
    let put = c.put(a.url("/recordings/coll/in.opus")).basic_auth(USER, Some(PASSWORD)).body("in").send();
    assert_eq!(put.unwrap().status(), 201);
    let mv = c
        .request(method("MOVE"), b.url("/recordings/coll/"))
        .basic_auth(USER, Some(PASSWORD))
        .header("destination", b.url("/recordings/moved/"))
        .send()
        .unwrap();
    assert_eq!(mv.status(), 201);
    let inside = c.get(a.url("/recordings/moved/in.opus")).basic_auth(USER, Some(PASSWORD)).send().unwrap();
    assert_eq!(inside.text().unwrap(), "in");
    let del = c.delete(a.url("/recordings/moved/")).basic_auth(USER, Some(PASSWORD)).send().unwrap();
    assert_eq!(del.status(), 204);
    assert_eq!(keys(&g), vec!["recordings/big.opus".to_string()]);

    // Health says where the files are and that the bucket answers.
    let text = c.get(a.admin_url("/health")).send().unwrap().text().unwrap();
    assert!(text.contains("\"reachable\":true") && text.contains(&g.bucket), "{text}");
    let metrics = c.get(a.admin_url("/metrics")).send().unwrap().text().unwrap();
    assert_eq!(metric(&metrics, "webdav_bucket_reachable", &[]), Some(1.0), "{metrics}");

    // The bucket's quota is one figure for every front end: past it, both answer 507.
    g.cli(0, &["bucket", "set-quotas", &g.bucket, "--max-size", "16MiB"]);
    let four = vec![5u8; 4 << 20];
    let first = c.put(a.url("/recordings/q1.opus")).basic_auth(USER, Some(PASSWORD)).body(four.clone()).send();
    assert_eq!(first.unwrap().status(), 201, "9 MiB and 4 MiB fit in 16 MiB");
    for (fe, name) in [(&a, "q2.opus"), (&b, "q3.opus")] {
        let over = c.put(fe.url(&format!("/recordings/{name}"))).basic_auth(USER, Some(PASSWORD)).body(four.clone());
        assert_eq!(over.send().unwrap().status(), 507, "{name}");
    }
    let still = c.get(b.url("/recordings/q1.opus")).basic_auth(USER, Some(PASSWORD)).send().unwrap();
    assert_eq!(still.bytes().unwrap().len(), 4 << 20);
}

#[test]
fn wrong_keys_stop_the_start_with_the_reason_an_engine_down_does_not() {
    let g = Garage::start("keys");
    let dir = TempDir::new("s3-keys");
    let wrong = front_end(&g, &dir, "wrong", 0, &"0".repeat(64), "");
    let mut child = Command::new(BIN)
        .args(["--role", "webdav", "--config", wrong.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(30)).expect("exits");
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(!status.success(), "{err}");
    assert!(!out.contains("READY"), "nothing bound: {out}");
    assert!(err.contains("webdav.s3") && err.contains(&g.bucket) && err.contains("refused"), "{err}");

    // An engine that does not answer (yet) is no reason to stay down: served, unhealthy.
    let mut g = g;
    let good = front_end(&g, &dir, "good", 2, &g.secret, "");
    g.kill(2);
    let proc = start(&good);
    let c = client();
    let health = c.get(proc.admin_url("/health")).send().unwrap();
    assert_eq!(health.status(), 503);
    assert!(health.text().unwrap().contains("\"reachable\":false"));
    let put = c.put(proc.url("/recordings/x.opus")).basic_auth(USER, Some(PASSWORD)).body("x").send().unwrap();
    assert_eq!(put.status(), 500, "the engine's failure is not the client's");
    wait_until("the unreachable bucket logged", Duration::from_secs(5), || proc.logs().contains("does not answer"));
}

/// Locks live in each front end's memory. Behind the lb's `hash $request_uri consistent`, each
/// path has one front end, so a second LOCK on a path meets the first wherever it comes from;
/// straight to two front ends, it would not (shown first, as the reason for the design).
#[test]
fn locks_stay_exclusive_across_front_ends_behind_the_consistent_hash() {
    let g = Garage::start("locks");
    let dir = TempDir::new("s3-locks");
    let a = start(&front_end(&g, &dir, "a", 0, &g.secret, ""));
    let b = start(&front_end(&g, &dir, "b", 1, &g.secret, ""));
    let lb_config = dir.join("lb.toml");
    std::fs::write(
        &lb_config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[lb.pools.dav]\nlisten = \"127.0.0.1:0\"\n\
             hash = \"$request_uri consistent\"\nrequest_buffering = false\nservers = [\"{}\", \"{}\"]\n",
            a.addr("webdav"),
            b.addr("webdav"),
        ),
    )
    .unwrap();
    let lb = Proc::start(&["--role", "lb", "--config", lb_config.to_str().unwrap()]);
    let via = lb.addr("lb.dav");
    let c = client();
    let lock_body = "<?xml version=\"1.0\"?><D:lockinfo xmlns:D=\"DAV:\"><D:lockscope><D:exclusive/></D:lockscope>\
                     <D:locktype><D:write/></D:locktype><D:owner>exrp</D:owner></D:lockinfo>";
    let lock = |url: String| {
        c.request(method("LOCK"), url)
            .basic_auth(USER, Some(PASSWORD))
            .header("timeout", "Second-60")
            .body(lock_body)
            .send()
            .unwrap()
    };

    // Straight to the front ends, two locks on one path: why the lb must pick one per path.
    let put = c.put(a.url("/recordings/direct.opus")).basic_auth(USER, Some(PASSWORD)).body("d").send().unwrap();
    assert_eq!(put.status(), 201);
    assert_eq!(lock(a.url("/recordings/direct.opus")).status(), 200);
    assert_eq!(lock(b.url("/recordings/direct.opus")).status(), 200, "memory locks are per front end");

    // Through the lb: for each of 20 paths the second LOCK is refused, and a PUT without the
    // token too; with it, the PUT passes. Both front ends hold some of the locks.
    let body = vec![3u8; 256 << 10];
    for i in 0..20 {
        let url = format!("http://{via}/recordings/CALL{i:03}_0.opus");
        let put = c.put(&url).basic_auth(USER, Some(PASSWORD)).body(body.clone()).send().unwrap();
        assert_eq!(put.status(), 201, "{url}");
        let first = lock(url.clone());
        assert_eq!(first.status(), 200, "{url}");
        let token = first.headers()["lock-token"].to_str().unwrap().to_string();
        assert_eq!(lock(url.clone()).status(), 423, "{url}: the second LOCK meets the first");
        let blind = c.put(&url).basic_auth(USER, Some(PASSWORD)).body("x").send().unwrap();
        assert_eq!(blind.status(), 423, "{url}");
        let owner = c
            .put(&url)
            .basic_auth(USER, Some(PASSWORD))
            .header("if", format!("({token})"))
            .body(body.clone())
            .send()
            .unwrap();
        assert!(owner.status().is_success(), "{url}: {}", owner.status());
    }
    let held = |p: &Proc| {
        let m = c.get(p.admin_url("/metrics")).send().unwrap().text().unwrap();
        metric(&m, "webdav_locks_active", &[]).unwrap_or(0.0)
    };
    // One lock each was taken directly above.
    let (on_a, on_b) = (held(&a) - 1.0, held(&b) - 1.0);
    assert_eq!(on_a + on_b, 20.0);
    assert!(on_a > 0.0 && on_b > 0.0, "the hash spreads paths: {on_a} on a, {on_b} on b");

    // A front end lost takes its locks with it; its paths go on to the other, which serves the
    // same bucket: every file is still there, and a path's lock can be taken again.
    let started = Instant::now();
    a.kill9();
    for i in 0..20 {
        let url = format!("http://{via}/recordings/CALL{i:03}_0.opus");
        let got = c.get(&url).basic_auth(USER, Some(PASSWORD)).send().unwrap();
        assert_eq!(got.status(), 200, "{url}");
        assert_eq!(got.bytes().unwrap().len(), body.len());
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    let relocked =
        (0..20).filter(|i| lock(format!("http://{via}/recordings/CALL{i:03}_0.opus")).status() == 200).count() as f64;
    assert_eq!(relocked, on_a, "exactly the dead front end's paths could be locked again");
}

/// An S3 endpoint that lists (the start-up check passes) but answers every lookup of an object
/// 503, as an engine losing a node may for a moment; every write that reaches it is counted.
/// A LOCK on an existing recording, and a COPY onto one, must then change nothing: dav-server
/// took any failed lookup for "absent", so a LOCK replaced the file with an empty one (vendor
/// patches 14 and 15).
#[test]
fn a_store_that_cannot_look_now_changes_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let writes = Arc::new(AtomicUsize::new(0));
    let counted = writes.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let counted = counted.clone();
        async move {
            use axum::response::IntoResponse;
            match req.method().as_str() {
                "GET" if req.uri().query().is_some_and(|q| q.contains("list-type=2")) => (
                    axum::http::StatusCode::OK,
                    "<?xml version=\"1.0\"?><ListBucketResult><KeyCount>0</KeyCount></ListBucketResult>",
                )
                    .into_response(),
                "HEAD" | "GET" => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "<Error><Code>SlowDown</Code></Error>")
                    .into_response(),
                _ => {
                    counted.fetch_add(1, Ordering::Relaxed);
                    axum::http::StatusCode::OK.into_response()
                }
            }
        }
    });
    let fake = fake_server::FakeServer::start(app);
    let dir = TempDir::new("s3-cannot-look");
    std::fs::write(dir.join("htpasswd"), HTPASSWD_LINE).unwrap();
    let config = dir.join("fe.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[webdav]\nlisten = \"127.0.0.1:0\"\nhtpasswd = \"{}\"\n[webdav.s3]\n\
             endpoint = \"http://{}\"\nbucket = \"rec\"\naccess_key_id = \"k\"\nsecret_access_key = \"s\"\n",
            dir.join("htpasswd").display(),
            fake.addr
        ),
    )
    .unwrap();
    let proc = start(&config);
    let c = client();
    let lock = c
        .request(method("LOCK"), proc.url("/recordings/SIM1_0.opus"))
        .basic_auth(USER, Some(PASSWORD))
        .body("<?xml version=\"1.0\"?><D:lockinfo xmlns:D=\"DAV:\"><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockinfo>")
        .send()
        .unwrap();
    assert_eq!(lock.status(), 500, "the lookup's failure is the answer");
    let copy = c
        .request(method("COPY"), proc.url("/recordings/a.opus"))
        .basic_auth(USER, Some(PASSWORD))
        .header("destination", proc.url("/recordings/SIM1_0.opus"))
        .send()
        .unwrap();
    assert!(copy.status().is_server_error(), "{}", copy.status());
    assert_eq!(writes.load(Ordering::Relaxed), 0, "nothing was written");
}

/// Hostile uploads to a front end on a bucket: a body that trickles and stops is cut off after
/// `body_idle_timeout` and leaves nothing in the bucket; uploads without a Content-Length past
/// `max_chunked_uploads` get 503 at once (each may hold an 8 MiB part in memory); a declared
/// length past `max_file_size` gets 413 before a byte goes to the engine.
#[test]
fn hostile_uploads_to_a_bucket_are_bounded_and_leave_nothing() {
    let g = Garage::start("hostile");
    let dir = TempDir::new("s3-hostile");
    // Room for one upload without a length.
    let config = front_end(&g, &dir, "fe", 0, &g.secret, "body_idle_timeout = \"1s\"\nmax_file_size = \"1MiB\"");
    let text = std::fs::read_to_string(&config).unwrap() + "max_chunked_uploads = 1\n";
    std::fs::write(&config, text).unwrap();
    let proc = start(&config);
    let addr = proc.addr("webdav");

    // Trickles 1000 of a declared 5000 bytes, then goes quiet: 408, nothing stored.
    let mut slow = std::net::TcpStream::connect(addr).unwrap();
    write!(
        slow,
        "PUT /recordings/slow.opus HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 5000\r\n\r\n",
        basic()
    )
    .unwrap();
    for _ in 0..10 {
        slow.write_all(&[b'z'; 100]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let answer = read_response(&mut slow);
    assert_eq!(answer.0, 408, "{answer:?}");

    // One upload without a length holds the only slot (its body still coming); a second is
    // refused at once with Retry-After.
    let mut first = std::net::TcpStream::connect(addr).unwrap();
    write!(
        first,
        "PUT /recordings/chunked1.opus HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nOggS\r\n",
        basic()
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let c = client();
    let second = c
        .put(proc.url("/recordings/chunked2.opus"))
        .basic_auth(USER, Some(PASSWORD))
        .body(reqwest::blocking::Body::new(std::io::Cursor::new(vec![1u8; 1000])))
        .send()
        .unwrap();
    assert_eq!(second.status(), 503);
    assert!(second.headers().contains_key("retry-after"));
    first.write_all(b"0\r\n\r\n").unwrap();
    first.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(read_response(&mut first).0, 201, "the first one completes");

    // Too large by its declared length: refused before anything reaches the engine.
    let mut big = std::net::TcpStream::connect(addr).unwrap();
    write!(
        big,
        "PUT /recordings/big.opus HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n",
        basic(),
        2 << 20
    )
    .unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(read_response(&mut big).0, 413);

    let keys = keys(&g);
    assert_eq!(keys, vec!["recordings/chunked1.opus".to_string()], "nothing else reached the bucket");
    let metrics = c.get(proc.admin_url("/metrics")).send().unwrap().text().unwrap();
    assert_eq!(metric(&metrics, "webdav_rejected_total", &[("reason", "max_chunked_uploads")]), Some(1.0));
}
