//! The `webdav` role on the wire: Apache-compatible PUT semantics, crash-safe uploads, path and
//! symlink containment, request limits, locks, dead properties and the admin endpoints. Every
//! test runs the real binary on loopback (port 0) against its own store directory.

use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

const TMP_PREFIX: &str = ".exec-allinone-tmp-";
const PROPS_PREFIX: &str = ".exec-allinone-props-";

// ---------------------------------------------------------------- helpers (private)

/// Deterministic, non-repeating-looking content so a wrong offset or a mix of versions shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + i / 251) as u8).wrapping_add(seed)).collect()
}

/// A client whose timeout keeps a hung server from stretching a test past its bound.
fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(15)).build().unwrap()
}

fn temps(dir: &Path) -> Vec<String> {
    dir_entries(dir).into_iter().filter(|n| n.starts_with(TMP_PREFIX)).collect()
}

fn wait_for(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A request with our credentials on the reqwest client.
fn dav(c: &reqwest::blocking::Client, verb: &str, url: String) -> reqwest::blocking::RequestBuilder {
    c.request(method(verb), url).header("Authorization", basic())
}

fn put(c: &reqwest::blocking::Client, p: &Proc, path: &str, body: &[u8]) -> u16 {
    dav(c, "PUT", p.url(path)).body(body.to_vec()).send().expect("PUT").status().as_u16()
}

fn get(c: &reqwest::blocking::Client, p: &Proc, path: &str) -> (u16, Vec<u8>) {
    let r = dav(c, "GET", p.url(path)).send().expect("GET");
    let status = r.status().as_u16();
    (status, r.bytes().expect("GET body").to_vec())
}

fn delete(c: &reqwest::blocking::Client, p: &Proc, path: &str) -> u16 {
    dav(c, "DELETE", p.url(path)).send().expect("DELETE").status().as_u16()
}

fn propfind(c: &reqwest::blocking::Client, p: &Proc, path: &str, depth: &str, body: &str) -> (u16, String) {
    let r = dav(c, "PROPFIND", p.url(path))
        .header("Depth", depth)
        .header("Content-Type", "application/xml")
        .body(body.to_owned())
        .send()
        .expect("PROPFIND");
    let status = r.status().as_u16();
    (status, r.text().expect("PROPFIND body"))
}

const ALLPROP: &str =
    "<?xml version=\"1.0\" encoding=\"utf-8\"?><D:propfind xmlns:D=\"DAV:\"><D:allprop/></D:propfind>";

/// A request head with our credentials, for the raw socket client.
fn head(verb: &str, target: &str, extra: &[(&str, &str)], content_length: Option<usize>) -> String {
    let mut h = format!("{verb} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\n", basic());
    for (k, v) in extra {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(n) = content_length {
        h.push_str(&format!("Content-Length: {n}\r\n"));
    }
    h.push_str("\r\n");
    h
}

/// Starts a PUT on a raw socket and sends only `sent` of `total` body bytes.
fn start_slow_put(addr: SocketAddr, path: &str, body: &[u8], sent: usize) -> Raw {
    let mut raw = Raw::connect(addr);
    raw.send(head("PUT", path, &[], Some(body.len())).as_bytes());
    raw.send(&body[..sent]);
    raw
}

/// Reads until the peer closes or `limit` passes: (bytes read, closed by the peer).
fn read_until_closed(raw: &mut Raw, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, false);
        }
        raw.stream.set_read_timeout(Some(left)).unwrap();
        match read_some(&mut raw.stream, &mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => {
                return (out, true);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return (out, false),
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn status_of(response: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(response);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

fn metrics(p: &Proc) -> String {
    http().get(p.admin_url("/metrics")).send().expect("GET /metrics").text().expect("metrics text")
}

/// The value of one sample (`name` or `name{labels}` exactly as written) in a Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Whether the server is receiving a PUT now. Bytes reach a temp file only once a write
/// batch (up to 256 KiB) has gathered, so a test that sent less watches this instead.
fn upload_in_flight(p: &Proc) -> bool {
    sample(&metrics(p), "webdav_uploads_in_flight").is_some_and(|n| n >= 1.0)
}

/// More than the largest write batch: a PUT that has sent this much has a temp file on disk.
const PAST_FIRST_BATCH: usize = 300 << 10;

fn assert_refused(status: u16, what: &str) {
    assert!(matches!(status, 400 | 403 | 404), "{what}: expected 400/403/404, got {status}");
}

// ---------------------------------------------------------------- 1. Apache PUT semantics

#[test]
fn put_get_delete_mkcol_propfind_answer_like_apache() {
    let site = Site::new("semantics");
    let p = site.start();
    let c = http();
    let v1: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let v2 = pattern(3000, 7);

    assert_eq!(put(&c, &p, "/recordings/a.bin", &v1), 201, "PUT of a new file");
    assert_eq!(std::fs::read(site.root().join("a.bin")).unwrap(), v1);
    assert_eq!(put(&c, &p, "/recordings/a.bin", &v2), 204, "PUT replacing a file");
    assert_eq!(put(&c, &p, "/recordings/missing/b.bin", b"x"), 409, "PUT under a missing collection");
    assert!(!site.root().join("missing").exists());

    let (status, body) = get(&c, &p, "/recordings/a.bin");
    assert_eq!(status, 200);
    assert_eq!(body, v2, "GET returns the exact bytes of the last PUT");

    let mkcol = dav(&c, "MKCOL", p.url("/recordings/dir/")).send().unwrap().status().as_u16();
    assert_eq!(mkcol, 201, "MKCOL");
    assert!(site.root().join("dir").is_dir());
    assert_eq!(put(&c, &p, "/recordings/dir/c.bin", b"inside"), 201);

    let (status, listing) = propfind(&c, &p, "/recordings/", "1", ALLPROP);
    assert_eq!(status, 207, "PROPFIND Depth 1: {listing}");
    for href in ["/recordings/a.bin", "/recordings/dir/"] {
        assert!(listing.contains(href), "{href} missing from the listing: {listing}");
    }
    assert!(!listing.contains("c.bin"), "Depth 1 must not descend into dir/: {listing}");

    assert_eq!(delete(&c, &p, "/recordings/a.bin"), 204, "DELETE");
    assert_eq!(get(&c, &p, "/recordings/a.bin").0, 404, "GET after DELETE");
    assert!(!site.root().join("a.bin").exists());
    assert!(temps(&site.root()).is_empty());
}

// ---------------------------------------------------------------- 2-4. interrupted and concurrent PUTs

#[test]
fn aborted_put_of_a_new_file_leaves_nothing() {
    let site = Site::new("abortnew");
    let p = site.start();
    let root = site.root();
    let mut raw = Raw::connect(p.addr("webdav"));
    raw.send(head("PUT", "/recordings/new.opus", &[], Some(1_000_000)).as_bytes());
    raw.send(&pattern(PAST_FIRST_BATCH, 1));
    assert!(wait_for(Duration::from_secs(5), || !temps(&root).is_empty()), "the upload never started");
    raw.stream.shutdown(Shutdown::Both).unwrap();
    drop(raw);

    let clean = wait_for(Duration::from_millis(2500), || temps(&root).is_empty());
    assert!(clean, "temp file left after the client went away: {:?}", dir_entries(&root));
    assert_eq!(get(&http(), &p, "/recordings/new.opus").0, 404);
    assert!(dir_entries(&root).is_empty(), "{:?}", dir_entries(&root));
}

#[test]
fn aborted_put_of_an_existing_file_keeps_the_old_version() {
    let site = Site::new("abortold");
    let p = site.start();
    let root = site.root();
    let c = http();
    let old = pattern(20_000, 3);
    assert_eq!(put(&c, &p, "/recordings/f.opus", &old), 201);

    let replacement = pattern(1_000_000, 9);
    // More than one write batch, so some bytes have reached the temp file.
    let raw = start_slow_put(p.addr("webdav"), "/recordings/f.opus", &replacement, PAST_FIRST_BATCH);
    assert!(wait_for(Duration::from_secs(5), || !temps(&root).is_empty()), "the upload never started");
    raw.stream.shutdown(Shutdown::Both).unwrap();
    drop(raw);

    let clean = wait_for(Duration::from_millis(2500), || temps(&root).is_empty());
    assert!(clean, "temp file left after the client went away: {:?}", dir_entries(&root));
    let (status, body) = get(&c, &p, "/recordings/f.opus");
    assert_eq!(status, 200);
    assert!(body == old, "the old version must be served byte-exact (got {} bytes)", body.len());
    assert_eq!(dir_entries(&root), vec!["f.opus".to_string()]);
}

#[test]
fn get_during_a_slow_put_sees_the_previous_version_until_commit() {
    let site = Site::new("slowput");
    let p = site.start();
    let root = site.root();
    let c = http();
    let old = pattern(50_000, 5);
    let new = pattern(2 * PAST_FIRST_BATCH, 11);
    let fresh = pattern(2 * PAST_FIRST_BATCH, 13);
    assert_eq!(put(&c, &p, "/recordings/f.opus", &old), 201);

    let half = PAST_FIRST_BATCH;
    let mut replacing = start_slow_put(p.addr("webdav"), "/recordings/f.opus", &new, half);
    let mut creating = start_slow_put(p.addr("webdav"), "/recordings/g.opus", &fresh, half);
    assert!(wait_for(Duration::from_secs(5), || temps(&root).len() == 2), "uploads never started");

    let (status, body) = get(&c, &p, "/recordings/f.opus");
    assert_eq!(status, 200);
    assert!(body == old, "mid-upload GET must return the old version whole (got {} bytes)", body.len());
    assert_eq!(get(&c, &p, "/recordings/g.opus").0, 404, "a file being created does not exist yet");
    let (status, listing) = propfind(&c, &p, "/recordings/", "1", ALLPROP);
    assert_eq!(status, 207);
    assert!(!listing.contains("g.opus") && !listing.contains(TMP_PREFIX), "{listing}");

    replacing.send(&new[half..]);
    creating.send(&fresh[half..]);
    assert_eq!(replacing.response().0, 204, "replacement PUT");
    assert_eq!(creating.response().0, 201, "creating PUT");
    assert!(get(&c, &p, "/recordings/f.opus").1 == new, "after commit GET returns the new version");
    assert!(get(&c, &p, "/recordings/g.opus").1 == fresh);
    assert!(temps(&root).is_empty());
}

#[test]
fn body_longer_than_content_length_stores_exactly_content_length_bytes() {
    let site = Site::new("longbody");
    let p = site.start();
    let root = site.root();
    let body = pattern(1000, 17);
    let mut raw = Raw::connect(p.addr("webdav"));
    raw.send(head("PUT", "/recordings/long.bin", &[], Some(body.len())).as_bytes());
    raw.send(&body);
    // 20 bytes past the framing: the start of a request that must never be executed.
    let extra = b"PUT /recordings/x HT";
    assert_eq!(extra.len(), 20);
    raw.send(extra);
    raw.stream.shutdown(Shutdown::Write).unwrap();
    let (status, _, _) = raw.response();
    assert_eq!(status, 201);
    let _ = read_until_closed(&mut raw, Duration::from_secs(5));

    assert_eq!(std::fs::read(root.join("long.bin")).unwrap(), body, "exactly Content-Length bytes stored");
    assert_eq!(dir_entries(&root), vec!["long.bin".to_string()], "the extra bytes created something");
    assert_eq!(get(&http(), &p, "/recordings/x").0, 404);
}

// ---------------------------------------------------------------- 6-7. containment

#[test]
fn traversal_corpus_is_refused_and_creates_nothing() {
    traversal_corpus(Site::start);
}

/// The same corpus where the kernel has no `openat2` (RHEL 8's 4.18, some container runtimes).
#[test]
fn traversal_corpus_is_refused_without_openat2() {
    traversal_corpus(Site::start_without_openat2);
}

fn traversal_corpus(start: fn(&Site) -> Proc) {
    let site = Site::new("traversal");
    let sibling = site.dir.join("etc");
    std::fs::create_dir_all(&sibling).unwrap();
    let p = start(&site);
    let addr = p.addr("webdav");
    let c = http();
    assert_eq!(put(&c, &p, "/recordings/src.txt", b"source"), 201);
    let before = dir_entries(site.dir.path());

    for target in [
        "/recordings/../etc/passwd",
        "/recordings/%2e%2e/%2e%2e/etc/passwd",
        "/recordings/..%2f..%2fetc%2fpasswd",
        "/recordings/a%5c..%5cb",
        "/recordings/a.txt%00.jpg",
        "/recordings/.exec-allinone-tmp-x",
        "/recordings/%2eexec-allinone-props-src.txt",
    ] {
        for verb in ["GET", "PUT", "DELETE", "MKCOL", "PROPFIND"] {
            let body: &[u8] = if verb == "PUT" { b"pwned" } else { b"" };
            let (status, _, _) = raw_request(addr, &head(verb, target, &[], Some(body.len())), body);
            assert_refused(status, &format!("{verb} {target}"));
        }
    }

    let host = addr.to_string();
    for dest in [
        format!("http://{host}/recordings/../x"),
        "/recordings/../x".to_string(),
        format!("http://{host}/recordings/%2e%2e/x"),
        format!("http://{host}/recordings/..%2fx"),
    ] {
        let (status, _, _) =
            raw_request(addr, &head("PUT", "/recordings/put.txt", &[("Destination", &dest)], Some(5)), b"pwned");
        assert_refused(status, &format!("PUT with Destination {dest}"));
        for verb in ["MOVE", "COPY"] {
            let (status, _, _) =
                raw_request(addr, &head(verb, "/recordings/src.txt", &[("Destination", &dest)], Some(0)), b"");
            assert_refused(status, &format!("{verb} to {dest}"));
        }
    }

    assert!(dir_entries(&sibling).is_empty(), "written outside the root: {:?}", dir_entries(&sibling));
    assert_eq!(dir_entries(site.dir.path()), before, "something appeared beside the root");
    assert_eq!(dir_entries(&site.root()), vec!["src.txt".to_string()], "something appeared in the root");
    assert_eq!(std::fs::read(site.root().join("src.txt")).unwrap(), b"source");
}

#[test]
fn symlinks_in_the_root_are_never_followed() {
    symlinks_never_followed(Site::start);
}

/// The same where the kernel has no `openat2`: the component walk follows no link either.
#[test]
fn symlinks_are_never_followed_without_openat2() {
    symlinks_never_followed(Site::start_without_openat2);
}

fn symlinks_never_followed(start: fn(&Site) -> Proc) {
    let site = Site::new("symlinks");
    let outside = TempDir::new("symlinks-outside");
    std::fs::write(outside.join("secret.txt"), b"top secret").unwrap();
    let root = site.root();
    std::os::unix::fs::symlink(outside.path(), root.join("linkdir")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("linkfile")).unwrap();
    std::fs::create_dir(root.join("real")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("real").join("inner")).unwrap();
    let p = start(&site);
    let c = http();

    for path in ["/recordings/linkdir/secret.txt", "/recordings/linkfile", "/recordings/real/inner/secret.txt"] {
        let (status, body) = get(&c, &p, path);
        assert_eq!(status, 404, "GET {path} (body {:?})", String::from_utf8_lossy(&body));
    }
    for path in ["/recordings/linkdir/new.txt", "/recordings/linkfile", "/recordings/real/inner/new.txt"] {
        let status = put(&c, &p, path, b"overwritten");
        assert!((400..500).contains(&status), "PUT {path} must be refused, got {status}");
    }
    assert_eq!(dir_entries(outside.path()), vec!["secret.txt".to_string()], "PUT wrote outside the root");
    assert_eq!(std::fs::read(outside.join("secret.txt")).unwrap(), b"top secret");
    assert!(std::fs::symlink_metadata(root.join("linkfile")).unwrap().file_type().is_symlink());

    let (status, listing) = propfind(&c, &p, "/recordings/", "1", ALLPROP);
    assert_eq!(status, 207);
    assert!(listing.contains("/recordings/real/"), "{listing}");
    assert!(!listing.contains("linkdir") && !listing.contains("linkfile"), "links listed: {listing}");
    let (status, listing) = propfind(&c, &p, "/recordings/real/", "1", ALLPROP);
    assert_eq!(status, 207);
    assert!(!listing.contains("inner"), "intermediate link listed: {listing}");
    let (status, _) = propfind(&c, &p, "/recordings/linkdir/", "1", ALLPROP);
    assert_eq!(status, 404, "PROPFIND through a link");

    let copy = dav(&c, "COPY", p.url("/recordings/linkfile"))
        .header("Destination", p.url("/recordings/copied.txt"))
        .send()
        .unwrap()
        .status()
        .as_u16();
    assert!((400..500).contains(&copy), "COPY of a link must be refused, got {copy}");
    assert!(!root.join("copied.txt").exists(), "COPY read through a link");

    for path in ["/recordings/linkfile", "/recordings/linkdir", "/recordings/linkdir/secret.txt"] {
        let status = delete(&c, &p, path);
        assert!((400..500).contains(&status), "DELETE {path} must be refused, got {status}");
    }
    // A real collection holding a link: whatever the answer, the walk must not enter the link.
    let _ = delete(&c, &p, "/recordings/real");
    assert_eq!(dir_entries(outside.path()), vec!["secret.txt".to_string()], "DELETE reached the target");
    assert_eq!(std::fs::read(outside.join("secret.txt")).unwrap(), b"top secret");
}

// ---------------------------------------------------------------- 8-9. amplification

#[test]
fn range_requests_cannot_amplify() {
    let site = Site::new("ranges");
    let p = site.start();
    let c = http();
    let len = 1 << 20;
    let data = pattern(len, 23);
    assert_eq!(put(&c, &p, "/recordings/big.bin", &data), 201);
    let url = p.url("/recordings/big.bin");

    let bomb = format!("bytes={}", vec!["0-1048575"; 2000].join(","));
    let r = dav(&c, "GET", url.clone()).header("Range", bomb).send().unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().unwrap();
    assert!(status == 200 || status == 206, "range bomb: {status}");
    assert!(body.len() <= len, "range bomb sent {} bytes for a {len}-byte file", body.len());
    assert!(body[..] == data[..body.len()], "range bomb body is not the file");

    let r = dav(&c, "GET", url.clone()).header("Range", "bytes=0-99,50-149").send().unwrap();
    assert_eq!(r.status().as_u16(), 206, "overlapping ranges");
    let content_range = r.headers().get("content-range").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(content_range.as_deref(), Some("bytes 0-149/1048576"), "merged into one part");
    let body = r.bytes().unwrap();
    assert!(body[..] == data[..150], "body must be bytes 0-149 once ({} bytes)", body.len());

    let many = (0..20).map(|i| format!("{}-{}", i * 1000, i * 1000 + 9)).collect::<Vec<_>>().join(",");
    let r = dav(&c, "GET", url).header("Range", format!("bytes={many}")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200, "more ranges than max_ranges get the whole file");
    let body = r.bytes().unwrap();
    assert!(body[..] == data[..], "whole file expected ({} bytes)", body.len());
}

#[test]
fn xml_bombs_are_refused_and_the_server_stays_healthy() {
    let site = Site::new("xmlbomb");
    let p = site.start();
    let c = http();
    assert_eq!(put(&c, &p, "/recordings/f.txt", b"x"), 201);

    let mut laughs = String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n<!ENTITY lol \"lol\">\n");
    for i in 1..=9 {
        let prev = if i == 1 { "lol".to_string() } else { format!("lol{}", i - 1) };
        laughs.push_str(&format!("<!ENTITY lol{i} \"{}\">\n", format!("&{prev};").repeat(10)));
    }
    laughs.push_str(
        "]>\n<D:propfind xmlns:D=\"DAV:\"><D:prop><D:displayname>&lol9;</D:displayname></D:prop></D:propfind>",
    );
    assert!(laughs.len() < 1024, "the bomb is {} bytes", laughs.len());

    // Refused, not expanded (a billion `lol`s would be 3 GB); the process stays healthy.
    let (status, body) = propfind(&c, &p, "/recordings/f.txt", "0", &laughs);
    assert!((400..500).contains(&status), "billion laughs: {status} {body}");
    let health = http().get(p.admin_url("/health")).send().unwrap();
    assert_eq!(health.status().as_u16(), 200, "health after the bomb");
    assert_eq!(propfind(&c, &p, "/recordings/f.txt", "0", ALLPROP).0, 207, "still serving");

    let padding = " ".repeat(70 << 10);
    let big = format!("<?xml version=\"1.0\"?><D:propfind xmlns:D=\"DAV:\">{padding}<D:allprop/></D:propfind>");
    let (status, _, _) = raw_request(
        p.addr("webdav"),
        &head("PROPFIND", "/recordings/f.txt", &[("Depth", "0")], Some(big.len())),
        big.as_bytes(),
    );
    assert_eq!(status, 413, "XML body over 64 KiB");
}

// ---------------------------------------------------------------- 10-13. limits

#[test]
fn put_over_max_file_size_is_refused_with_or_without_content_length() {
    let site = Site::with("oversize", "max_file_size = \"1KiB\"");
    let p = site.start();
    let root = site.root();
    let addr = p.addr("webdav");
    let body = pattern(2048, 29);

    let (status, _, _) = raw_request(addr, &head("PUT", "/recordings/big.bin", &[], Some(body.len())), &body);
    assert_eq!(status, 413, "PUT with Content-Length over max_file_size");

    let mut chunked = Vec::new();
    for piece in body.chunks(512) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let mut raw = Raw::connect(addr);
    raw.send(head("PUT", "/recordings/chunked.bin", &[("Transfer-Encoding", "chunked")], None).as_bytes());
    raw.send(&chunked);
    let (data, closed) = read_until_closed(&mut raw, Duration::from_secs(10));
    let status = status_of(&data);
    assert!(
        status.is_some_and(|s| (400..600).contains(&s)),
        "chunked PUT over the limit: status {status:?}, closed {closed}"
    );

    let c = http();
    assert_eq!(get(&c, &p, "/recordings/big.bin").0, 404);
    assert_eq!(get(&c, &p, "/recordings/chunked.bin").0, 404);
    assert!(wait_for(Duration::from_secs(2), || dir_entries(&root).is_empty()), "{:?}", dir_entries(&root));
    assert_eq!(put(&c, &p, "/recordings/small.bin", &body[..1024]), 201, "exactly max_file_size fits");
}

#[test]
fn quota_refuses_with_507_and_frees_on_delete() {
    let site = Site::with("quota", "quota = \"10KiB\"");
    let p = site.start();
    let c = http();
    assert_eq!(put(&c, &p, "/recordings/a", &pattern(4096, 1)), 201);
    assert_eq!(put(&c, &p, "/recordings/b", &pattern(4096, 2)), 201);
    assert_eq!(put(&c, &p, "/recordings/c", &pattern(2048, 3)), 201, "exactly the quota fits");
    assert_eq!(put(&c, &p, "/recordings/d", &pattern(1024, 4)), 507, "over the quota");
    assert_eq!(get(&c, &p, "/recordings/d").0, 404);
    assert!(temps(&site.root()).is_empty());

    assert_eq!(delete(&c, &p, "/recordings/a"), 204);
    assert_eq!(put(&c, &p, "/recordings/d", &pattern(1024, 4)), 201, "fits again after DELETE");
    assert_eq!(put(&c, &p, "/recordings/e", &pattern(3072, 5)), 201);
    assert_eq!(put(&c, &p, "/recordings/f", &[7]), 507, "full again");
    assert_eq!(dir_entries(&site.root()), vec!["b", "c", "d", "e"]);
}

#[test]
fn max_uploads_answers_503_with_retry_after() {
    let site = Site::with("maxuploads", "max_uploads = 1");
    let p = site.start();
    let c = http();
    let body = pattern(1000, 31);
    let mut first = start_slow_put(p.addr("webdav"), "/recordings/first", &body, 100);
    let held = wait_for(Duration::from_secs(5), || sample(&metrics(&p), "webdav_uploads_in_flight") == Some(1.0));
    assert!(held, "the first upload never took its slot:\n{}", metrics(&p));

    let r = dav(&c, "PUT", p.url("/recordings/second")).body(b"second".to_vec()).send().unwrap();
    assert_eq!(r.status().as_u16(), 503, "second PUT while the slot is taken");
    assert!(r.headers().contains_key("retry-after"), "503 without Retry-After: {:?}", r.headers());
    assert!(!site.root().join("second").exists());

    first.send(&body[100..]);
    assert_eq!(first.response().0, 201, "the first upload completes");
    assert_eq!(put(&c, &p, "/recordings/second", b"second"), 201, "slot free again");
    assert_eq!(std::fs::read(site.root().join("first")).unwrap(), body);
}

#[test]
fn partial_put_and_patch_are_refused() {
    let site = Site::new("partial");
    let p = site.start();
    let c = http();
    assert_eq!(put(&c, &p, "/recordings/f", b"0123456789"), 201);

    let r = dav(&c, "PUT", p.url("/recordings/f")).header("Content-Range", "bytes 0-3/10").body("XXXX").send();
    assert_eq!(r.unwrap().status().as_u16(), 400, "PUT with Content-Range");
    let r = dav(&c, "PATCH", p.url("/recordings/f")).body("XXXX").send();
    assert_eq!(r.unwrap().status().as_u16(), 405, "PATCH");
    let r = dav(&c, "PATCH", p.url("/recordings/f"))
        .header("Content-Type", "application/x-sabredav-partialupdate")
        .header("X-Update-Range", "bytes=0-3")
        .body("XXXX")
        .send();
    assert_eq!(r.unwrap().status().as_u16(), 405, "SabreDAV PATCH");

    assert_eq!(get(&c, &p, "/recordings/f"), (200, b"0123456789".to_vec()), "file unchanged");
    assert_eq!(dir_entries(&site.root()), vec!["f".to_string()]);
}

// ---------------------------------------------------------------- 14. timeouts

#[test]
fn header_timeout_closes_a_half_sent_request_head() {
    let site = Site::with("headertimeout", "header_timeout = \"1s\"");
    let p = site.start();
    let mut raw = Raw::connect(p.addr("webdav"));
    let started = Instant::now();
    raw.send(format!("GET /recordings/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\n", basic()).as_bytes());
    let (data, closed) = read_until_closed(&mut raw, Duration::from_secs(6));
    assert!(closed, "connection with half a head still open after 6 s (read {data:?})");
    if let Some(status) = status_of(&data) {
        assert!(!(200..300).contains(&status), "a half head must not be served: {status}");
    }
    assert!(started.elapsed() >= Duration::from_millis(800), "closed before the timeout: {:?}", started.elapsed());
}

#[test]
fn body_idle_timeout_aborts_a_stalled_put() {
    let site = Site::with("idletimeout", "body_idle_timeout = \"1s\"");
    let p = site.start();
    let root = site.root();
    let mut raw = start_slow_put(p.addr("webdav"), "/recordings/stalled", &pattern(1000, 37), 100);
    assert!(wait_for(Duration::from_secs(5), || upload_in_flight(&p)), "the upload never started");
    // The socket stays open: only the server's timer can end this upload.
    let cleaned = wait_for(Duration::from_secs(5), || temps(&root).is_empty());
    assert!(cleaned, "stalled upload still holds its temp file: {:?}", dir_entries(&root));
    let (data, closed) = read_until_closed(&mut raw, Duration::from_secs(5));
    assert!(closed || !data.is_empty(), "no answer and no close for a stalled body");
    if let Some(status) = status_of(&data) {
        assert!(!(200..300).contains(&status), "stalled PUT answered {status}");
    }
    assert_eq!(get(&http(), &p, "/recordings/stalled").0, 404);
    assert!(dir_entries(&root).is_empty(), "{:?}", dir_entries(&root));
}

// ---------------------------------------------------------------- 15. locks

const LOCKINFO: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
<D:lockinfo xmlns:D=\"DAV:\"><D:lockscope><D:exclusive/></D:lockscope>\
<D:locktype><D:write/></D:locktype><D:owner>recorder</D:owner></D:lockinfo>";

fn lock(c: &reqwest::blocking::Client, p: &Proc, path: &str, timeout: Option<&str>) -> (u16, String, String) {
    let mut r = dav(c, "LOCK", p.url(path)).header("Content-Type", "application/xml").body(LOCKINFO);
    if let Some(t) = timeout {
        r = r.header("Timeout", t);
    }
    let r = r.send().expect("LOCK");
    let status = r.status().as_u16();
    let token = r.headers().get("lock-token").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, token, r.text().unwrap())
}

#[test]
fn lock_blocks_other_writers_until_it_expires() {
    let site = Site::new("lockexpiry");
    let p = site.start();
    let c = http();
    assert_eq!(put(&c, &p, "/recordings/f", b"v1"), 201);
    let asked = Instant::now();
    let (status, token, body) = lock(&c, &p, "/recordings/f", Some("Second-2"));
    assert_eq!(status, 200, "LOCK: {body}");
    assert!(!token.is_empty(), "no Lock-Token header");
    assert!(body.contains("Second-2"), "{body}");

    assert_eq!(put(&c, &p, "/recordings/f", b"v2"), 423, "PUT without the token while locked");
    assert_eq!(get(&c, &p, "/recordings/f").1, b"v1");
    // Refused (and changing nothing) until the lock expires, then accepted.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = put(&c, &p, "/recordings/f", b"v3");
        if status != 423 || Instant::now() > deadline {
            break status;
        }
        assert_eq!(get(&c, &p, "/recordings/f").1, b"v1");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 204, "the lock has expired");
    assert!(asked.elapsed() >= Duration::from_secs(2), "the lock ended before its 2 s");
    assert_eq!(get(&c, &p, "/recordings/f").1, b"v3");
}

#[test]
fn lock_timeouts_are_capped_by_lock_max_timeout() {
    let site = Site::with("lockcap", "lock_max_timeout = \"5s\"");
    let p = site.start();
    let c = http();
    for (i, timeout) in [None, Some("Second-3600"), Some("Infinite")].into_iter().enumerate() {
        let path = format!("/recordings/f{i}");
        assert_eq!(put(&c, &p, &path, b"x"), 201);
        let (status, _, body) = lock(&c, &p, &path, timeout);
        assert_eq!(status, 200, "LOCK with Timeout {timeout:?}: {body}");
        assert!(body.contains("Second-5"), "Timeout {timeout:?} not capped to Second-5: {body}");
    }
}

// ---------------------------------------------------------------- 16-17. persistence

const PROPPATCH: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
<D:propertyupdate xmlns:D=\"DAV:\" xmlns:Z=\"urn:exec-test:\"><D:set><D:prop>\
<Z:callid>CALL-42-xyz</Z:callid></D:prop></D:set></D:propertyupdate>";
const PROPFIND_CALLID: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
<D:propfind xmlns:D=\"DAV:\" xmlns:Z=\"urn:exec-test:\"><D:prop><Z:callid/></D:prop></D:propfind>";

fn props_files(dir: &Path) -> Vec<String> {
    dir_entries(dir).into_iter().filter(|n| n.starts_with(PROPS_PREFIX)).collect()
}

#[test]
fn dead_properties_survive_restart_follow_move_and_go_with_delete() {
    let site = Site::new("deadprops");
    let root = site.root();
    let p = site.start();
    let c = http();
    assert_eq!(put(&c, &p, "/recordings/f.opus", b"audio"), 201);
    let r = dav(&c, "PROPPATCH", p.url("/recordings/f.opus")).header("Content-Type", "application/xml").body(PROPPATCH);
    let r = r.send().unwrap();
    let status = r.status().as_u16();
    let body = r.text().unwrap();
    assert_eq!(status, 207, "PROPPATCH: {body}");
    assert!(body.contains("200"), "PROPPATCH did not succeed: {body}");
    assert_eq!(props_files(&root), vec![format!("{PROPS_PREFIX}f.opus")]);

    let exit = p.stop();
    assert_eq!(exit.code(), Some(0), "SIGTERM exit status");
    let p = site.start();
    let (status, body) = propfind(&c, &p, "/recordings/f.opus", "0", PROPFIND_CALLID);
    assert_eq!(status, 207);
    assert!(body.contains("CALL-42-xyz"), "property lost across a restart: {body}");

    let r = dav(&c, "MOVE", p.url("/recordings/f.opus")).header("Destination", p.url("/recordings/g.opus")).send();
    assert_eq!(r.unwrap().status().as_u16(), 201, "MOVE");
    let (status, body) = propfind(&c, &p, "/recordings/g.opus", "0", PROPFIND_CALLID);
    assert_eq!(status, 207);
    assert!(body.contains("CALL-42-xyz"), "property did not follow the MOVE: {body}");
    assert_eq!(props_files(&root), vec![format!("{PROPS_PREFIX}g.opus")]);

    assert_eq!(delete(&c, &p, "/recordings/g.opus"), 204);
    assert!(dir_entries(&root).is_empty(), "left after DELETE: {:?}", dir_entries(&root));
}

#[test]
fn kill9_during_put_then_restart_sweeps_the_temp_file() {
    let site = Site::new("kill9");
    let root = site.root();
    let p = site.start();
    let c = http();
    let old = pattern(30_000, 41);
    assert_eq!(put(&c, &p, "/recordings/f.opus", &old), 201);
    let new = pattern(1 << 20, 43);
    let _raw = start_slow_put(p.addr("webdav"), "/recordings/f.opus", &new, PAST_FIRST_BATCH);
    assert!(wait_for(Duration::from_secs(5), || !temps(&root).is_empty()), "the upload never started");
    p.kill9();
    assert_eq!(temps(&root).len(), 1, "kill -9 should leave the temp file for the sweep");

    let p = site.start();
    assert!(temps(&root).is_empty(), "temp file survived a restart: {:?}", dir_entries(&root));
    let (status, body) = get(&c, &p, "/recordings/f.opus");
    assert_eq!(status, 200);
    assert!(body == old, "previous version damaged ({} bytes)", body.len());
    let text = metrics(&p);
    assert_eq!(sample(&text, "webdav_temp_files_swept_total"), Some(1.0), "{text}");
}

// ---------------------------------------------------------------- 18. admin endpoints

#[test]
fn metrics_and_health_report_the_webdav_role() {
    let site = Site::new("metrics");
    let p = site.start();
    let c = http();
    let body = pattern(1234, 47);
    assert_eq!(put(&c, &p, "/recordings/a", &body), 201);
    assert_eq!(get(&c, &p, "/recordings/a").0, 200);
    assert_eq!(get(&c, &p, "/recordings/none").0, 404);
    let raw = start_slow_put(p.addr("webdav"), "/recordings/aborted", &pattern(100_000, 1), 1000);
    assert!(wait_for(Duration::from_secs(5), || upload_in_flight(&p)), "the upload never started");
    raw.stream.shutdown(Shutdown::Both).unwrap();
    drop(raw);

    let expected = [
        ("webdav_requests_total{method=\"PUT\",status=\"201\"}", 1.0),
        ("webdav_requests_total{method=\"GET\",status=\"200\"}", 1.0),
        ("webdav_requests_total{method=\"GET\",status=\"404\"}", 1.0),
        ("webdav_uploads_completed_total", 1.0),
        ("webdav_uploads_aborted_total", 1.0),
        ("webdav_store_used_bytes", body.len() as f64),
    ];
    let ok = wait_for(Duration::from_secs(3), || {
        let text = metrics(&p);
        expected.iter().all(|(series, v)| sample(&text, series) == Some(*v))
    });
    let text = metrics(&p);
    for (series, v) in expected {
        assert_eq!(sample(&text, series), Some(v), "{series} (settled: {ok}) in:\n{text}");
    }

    let health = http().get(p.admin_url("/health")).send().unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let json: serde_json::Value = serde_json::from_slice(&health.bytes().unwrap()).expect("health is JSON");
    assert_eq!(json["status"], "UP", "{json}");
    assert_eq!(json["roles"]["webdav"]["status"], "UP", "{json}");
    assert!(json["roles"]["webdav"].is_object(), "{json}");
}
