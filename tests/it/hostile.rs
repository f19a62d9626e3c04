//! Hostile input against the real binary (issue 17): requests that tried to wipe the store,
//! stop the process or take what belongs to another client. Each test checks the mechanism
//! (what was refused, what is still there, that the process still serves), never timings.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

const OTHER_USER: &str = "intruder";
const OTHER_PASSWORD: &str = "intruder-pw";

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(15)).build().unwrap()
}

fn other_basic() -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{OTHER_USER}:{OTHER_PASSWORD}")))
}

/// A request as `mcp`, or as the second user when `other`.
fn req(c: &reqwest::blocking::Client, verb: &str, url: String, other: bool) -> reqwest::blocking::RequestBuilder {
    let auth = if other { other_basic() } else { basic() };
    c.request(method(verb), url).header("Authorization", auth)
}

fn send(r: reqwest::blocking::RequestBuilder) -> (u16, String) {
    let r = r.send().expect("request");
    let status = r.status().as_u16();
    (status, r.text().unwrap_or_default())
}

/// A site whose password file also holds a second user (made by our `htpasswd` subcommand).
fn site_with_two_users(name: &str, extra: &str) -> Site {
    let site = Site::with(name, extra);
    let file = site.dir.join("htpasswd");
    let out = Command::new(BIN)
        .args(["htpasswd", "-C", "8", file.to_str().unwrap(), OTHER_USER, OTHER_PASSWORD])
        .output()
        .expect("run htpasswd");
    assert!(out.status.success(), "htpasswd: {}", String::from_utf8_lossy(&out.stderr));
    site
}

/// Every name under `dir`, recursively, relative to it, sorted: what the store holds on disk,
/// our hidden files included.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            out.push(path.strip_prefix(base).unwrap().display().to_string());
            if entry.file_type().unwrap().is_dir() {
                walk(base, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn put(c: &reqwest::blocking::Client, p: &Proc, path: &str, body: &[u8]) -> u16 {
    send(req(c, "PUT", p.url(path), false).body(body.to_vec())).0
}

fn get(c: &reqwest::blocking::Client, p: &Proc, path: &str) -> (u16, Vec<u8>) {
    let r = req(c, "GET", p.url(path), false).send().expect("GET");
    (r.status().as_u16(), r.bytes().unwrap().to_vec())
}

/// A store with two files at the top and a collection `d` of two files.
fn populate(c: &reqwest::blocking::Client, p: &Proc) {
    assert_eq!(put(c, p, "/recordings/a.opus", b"aaaa"), 201);
    assert_eq!(put(c, p, "/recordings/b.opus", b"bbbb"), 201);
    assert_eq!(send(req(c, "MKCOL", p.url("/recordings/d"), false)).0, 201);
    assert_eq!(put(c, p, "/recordings/d/x.opus", b"xxxx"), 201);
    assert_eq!(put(c, p, "/recordings/d/y.opus", b"yyyy"), 201);
}

const LOCKINFO: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
<D:lockinfo xmlns:D=\"DAV:\"><D:lockscope><D:exclusive/></D:lockscope>\
<D:locktype><D:write/></D:locktype><D:owner>recorder</D:owner></D:lockinfo>";

fn lock(c: &reqwest::blocking::Client, p: &Proc, path: &str, other: bool) -> (u16, String) {
    let r = req(c, "LOCK", p.url(path), other).header("Content-Type", "application/xml").body(LOCKINFO);
    let r = r.send().expect("LOCK");
    let status = r.status().as_u16();
    let token = r.headers().get("lock-token").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, token)
}

// ------------------------------------------------------------- 1. nothing removed unreported

#[test]
fn the_store_root_is_never_removed_moved_or_overwritten() {
    let site = Site::new("hostile-root");
    let p = site.start();
    let c = http();
    populate(&c, &p);
    let before = tree(&site.root());
    for target in ["/recordings/", "/recordings"] {
        assert_eq!(send(req(&c, "DELETE", p.url(target), false)).0, 403, "DELETE {target}");
        let (status, _) = send(req(&c, "MOVE", p.url(target), false).header("Destination", p.url("/recordings/d/z")));
        assert_eq!(status, 403, "MOVE {target}");
        // It exists: MKCOL gets Apache's 405, not a refusal to write.
        assert_eq!(send(req(&c, "MKCOL", p.url(target), false)).0, 405, "MKCOL {target}");
    }
    for verb in ["COPY", "MOVE"] {
        for dest in ["/recordings/", "/recordings", "http://127.0.0.1/recordings/"] {
            let dest = if dest.starts_with('/') { p.url(dest) } else { p.url("/recordings/") };
            let (status, _) = send(
                req(&c, verb, p.url("/recordings/d"), false)
                    .header("Destination", dest.clone())
                    .header("Overwrite", "T"),
            );
            assert_eq!(status, 403, "{verb} onto the root {dest}");
        }
    }
    assert_eq!(tree(&site.root()), before, "a refused request changed the store");
    assert_eq!(get(&c, &p, "/recordings/d/x.opus"), (200, b"xxxx".to_vec()));
}

#[test]
fn a_collection_delete_is_all_or_nothing() {
    let site = Site::new("hostile-delete");
    let p = site.start();
    let c = http();
    populate(&c, &p);
    let (status, token) = lock(&c, &p, "/recordings/d/y.opus", false);
    assert_eq!(status, 200);
    let before = tree(&site.root());
    // A locked member: nothing at all is removed (upstream removed x.opus, then failed).
    assert_eq!(send(req(&c, "DELETE", p.url("/recordings/d"), false)).0, 423);
    assert_eq!(tree(&site.root()), before);
    // With the member's token (tagged with the member, RFC 4918 10.4.2: an untagged list is
    // about the collection) the whole collection goes, in one answer, leaving nothing hidden.
    let tagged = format!("<{}> (<{}>)", p.url("/recordings/d/y.opus"), trim_token(&token));
    let (status, _) = send(req(&c, "DELETE", p.url("/recordings/d/"), false).header("If", tagged));
    assert_eq!(status, 204);
    assert_eq!(tree(&site.root()), vec!["a.opus".to_string(), "b.opus".to_string()]);
    assert_eq!(get(&c, &p, "/recordings/d/x.opus").0, 404);
}

fn trim_token(t: &str) -> &str {
    t.trim_matches(|c| c == '<' || c == '>')
}

#[test]
fn copy_over_a_collection_that_fails_half_way_puts_the_old_one_back() {
    // The store: a, b, d/x, d/y (16 bytes), e/old (100) and the directories d and e, made on
    // disk before the start. The quota leaves room for one more directory and 4 bytes: the
    // COPY of d onto e sets e aside (still counted), makes the new e and copies x, then y
    // does not fit: the partial e goes, the old e comes back.
    let site = Site::new("hostile-copyfail");
    let root = site.root();
    for (path, len) in [("a.opus", 4), ("b.opus", 4), ("d/x.opus", 4), ("d/y.opus", 4), ("e/old.opus", 100)] {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, vec![b'o'; len]).unwrap();
    }
    let dir_size = |p: &Path| std::fs::metadata(p).unwrap().len();
    let fresh = site.dir.join("fresh-dir");
    std::fs::create_dir(&fresh).unwrap();
    let used = 116 + dir_size(&root.join("d")) + dir_size(&root.join("e"));
    let quota = used + dir_size(&fresh) + 4;
    let site = Site { dir: site.dir, extra: format!("quota = {quota}\nmin_free_disk = 0") };
    let p = site.start();
    let c = http();
    let before = tree(&site.root());
    let (status, body) = send(
        req(&c, "COPY", p.url("/recordings/d/"), false)
            .header("Destination", p.url("/recordings/e/"))
            .header("Overwrite", "T"),
    );
    assert!(status == 507 || status == 207, "COPY that cannot fit: {status} {body}");
    assert_eq!(tree(&site.root()), before, "a failed COPY must leave source and destination as they were");
    assert_eq!(get(&c, &p, "/recordings/e/old.opus").1.len(), 100);

    // With room, the destination is replaced whole: only the source's members remain.
    let site = Site::new("hostile-copyok");
    let p = site.start();
    populate(&c, &p);
    assert_eq!(send(req(&c, "MKCOL", p.url("/recordings/e"), false)).0, 201);
    assert_eq!(put(&c, &p, "/recordings/e/old.opus", b"old"), 201);
    let (status, _) = send(
        req(&c, "COPY", p.url("/recordings/d/"), false)
            .header("Destination", p.url("/recordings/e/"))
            .header("Overwrite", "T"),
    );
    assert_eq!(status, 204);
    let after = tree(&site.root());
    assert!(after.contains(&"e/x.opus".to_string()) && after.contains(&"e/y.opus".to_string()), "{after:?}");
    assert!(!after.iter().any(|n| n.contains("old.opus") || n.contains(".exec-allinone-")), "{after:?}");
}

#[test]
fn a_tree_set_aside_before_a_crash_is_swept_at_start() {
    let site = Site::new("hostile-aside-sweep");
    let aside = site.root().join(".exec-allinone-aside-00000000deadbeef");
    std::fs::create_dir_all(aside.join("deep/er")).unwrap();
    std::fs::write(aside.join("deep/er/f.opus"), b"gone").unwrap();
    std::fs::write(site.root().join("kept.opus"), b"kept").unwrap();
    let p = site.start();
    assert_eq!(tree(&site.root()), vec!["kept.opus".to_string()]);
    let c = http();
    assert_eq!(get(&c, &p, "/recordings/kept.opus").1, b"kept");
}

// ------------------------------------------------------------- 2. no body stops the process

fn nested(depth: usize) -> String {
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><D:propfind xmlns:D=\"DAV:\">");
    s.push_str(&"<a>".repeat(depth));
    s.push_str(&"</a>".repeat(depth));
    s.push_str("</D:propfind>");
    s
}

#[test]
fn deep_or_huge_xml_is_refused_and_the_process_goes_on() {
    let site = Site::new("hostile-xml");
    let p = site.start();
    let c = http();
    populate(&c, &p);
    let deep = nested(5000);
    assert!(deep.len() < 64 << 10, "the body must be under the XML cap to reach the parser");
    let wide = format!(
        "<?xml version=\"1.0\"?><D:propfind xmlns:D=\"DAV:\"><D:prop>{}</D:prop></D:propfind>",
        "<x/>".repeat(12_000)
    );
    for verb in ["PROPFIND", "PROPPATCH", "LOCK"] {
        for (what, body) in [("deep", &deep), ("wide", &wide)] {
            let (status, _) =
                send(req(&c, verb, p.url("/recordings/a.opus"), false).header("Depth", "0").body(body.clone()));
            assert_eq!(status, 400, "{verb} with a {what} body");
        }
    }
    // A dead property value nested within the budget is still accepted and read back.
    let value = format!("{}v{}", "<n>".repeat(20), "</n>".repeat(20));
    let patch = format!(
        "<?xml version=\"1.0\"?><D:propertyupdate xmlns:D=\"DAV:\" xmlns:Z=\"urn:z:\"><D:set><D:prop>\
         <Z:p>{value}</Z:p></D:prop></D:set></D:propertyupdate>"
    );
    assert_eq!(send(req(&c, "PROPPATCH", p.url("/recordings/a.opus"), false).body(patch)).0, 207);
    assert_eq!(get(&c, &p, "/recordings/a.opus"), (200, b"aaaa".to_vec()), "the process still serves");
}

// ------------------------------------------------------------- 3. Destination names this store

#[test]
fn a_destination_must_name_this_store_and_not_the_source_subtree() {
    let site = Site::new("hostile-dest");
    let p = site.start();
    let c = http();
    populate(&c, &p);
    let port = p.addr("webdav").port();
    let before = tree(&site.root());
    let cases: Vec<(String, u16)> = vec![
        (format!("http://192.0.2.1:{port}/recordings/z.opus"), 502),
        (format!("http://127.0.0.1:{}/recordings/z.opus", port.wrapping_add(1)), 502),
        (format!("https://127.0.0.1:{port}/recordings/z.opus"), 502),
        (format!("http://u@127.0.0.1:{port}/recordings/z.opus"), 502),
        ("/elsewhere/z.opus".to_string(), 502),
        ("/recordingsX/z.opus".to_string(), 502),
        (format!("http://127.0.0.1:{port}/recordings/../z.opus"), 400),
        ("/recordings/a%2fz.opus".to_string(), 400),
        ("/recordings/.exec-allinone-tmp-1".to_string(), 403),
        ("/recordings/d/inner".to_string(), 403),
    ];
    for verb in ["COPY", "MOVE"] {
        for (dest, want) in &cases {
            let source = if dest.ends_with("/inner") { "/recordings/d/" } else { "/recordings/a.opus" };
            let (status, body) = send(req(&c, verb, p.url(source), false).header("Destination", dest.as_str()));
            assert_eq!(status, *want, "{verb} {source} -> {dest}: {body}");
        }
    }
    assert_eq!(tree(&site.root()), before, "a refused COPY/MOVE changed the store");
    let (status, _) =
        send(req(&c, "COPY", p.url("/recordings/a.opus"), false).header("Destination", p.url("/recordings/z.opus")));
    assert_eq!(status, 201, "a destination on this store still works");
}

// ------------------------------------------------------------- 4. locks belong to their owner

#[test]
fn locks_belong_to_their_owner() {
    let site = site_with_two_users("hostile-locks", "");
    let p = site.start();
    let c = http();
    populate(&c, &p);
    let (status, token) = lock(&c, &p, "/recordings/a.opus", false);
    assert_eq!(status, 200);
    let token = trim_token(&token).to_owned();
    let if_token = format!("(<{token}>)");

    // The other user read the token (lockdiscovery shows it) and tries to use it.
    let unlock = req(&c, "UNLOCK", p.url("/recordings/a.opus"), true).header("Lock-Token", format!("<{token}>"));
    assert_eq!(send(unlock).0, 403, "UNLOCK of another user's lock");
    let write = req(&c, "PUT", p.url("/recordings/a.opus"), true).header("If", if_token.clone()).body("stolen");
    assert_eq!(send(write).0, 423, "PUT with another user's token");
    let delete = req(&c, "DELETE", p.url("/recordings/a.opus"), true).header("If", if_token.clone());
    assert_eq!(send(delete).0, 423, "DELETE with another user's token");
    assert_eq!(get(&c, &p, "/recordings/a.opus").1, b"aaaa");

    // The owner still holds it and can release it.
    let write = req(&c, "PUT", p.url("/recordings/a.opus"), false).header("If", if_token.clone()).body("mine");
    assert_eq!(send(write).0, 204);
    let unlock = req(&c, "UNLOCK", p.url("/recordings/a.opus"), false).header("Lock-Token", format!("<{token}>"));
    assert_eq!(send(unlock).0, 204);

    // A stale token on an unlocked resource is a failed precondition, a malformed If: a bad
    // request; neither writes.
    let stale = req(&c, "PUT", p.url("/recordings/b.opus"), false).header("If", if_token).body("stale");
    assert_eq!(send(stale).0, 412, "If: naming a released lock");
    let unknown = req(&c, "PUT", p.url("/recordings/b.opus"), false)
        .header("If", "(<urn:uuid:00000000-0000-0000-0000-000000000000>)");
    assert_eq!(send(unknown.body("unknown")).0, 412, "If: naming a lock that never existed");
    let malformed = req(&c, "PUT", p.url("/recordings/b.opus"), false).header("If", "(<unterminated");
    assert_eq!(send(malformed.body("malformed")).0, 400, "malformed If:");
    assert_eq!(get(&c, &p, "/recordings/b.opus").1, b"bbbb");
}

#[test]
fn the_lock_table_and_lock_owners_are_bounded() {
    let site = Site::with("hostile-lockbound", "max_locks = 3\nmax_lock_owner_bytes = 256");
    let p = site.start();
    let c = http();
    let mut tokens = Vec::new();
    for i in 0..3 {
        assert_eq!(put(&c, &p, &format!("/recordings/f{i}"), b"x"), 201);
        let (status, token) = lock(&c, &p, &format!("/recordings/f{i}"), false);
        assert_eq!(status, 200);
        tokens.push(token);
    }
    assert_eq!(put(&c, &p, "/recordings/f3", b"x"), 201);
    let r = req(&c, "LOCK", p.url("/recordings/f3"), false).body(LOCKINFO).send().unwrap();
    assert_eq!(r.status().as_u16(), 503, "a lock past max_locks");
    assert!(r.headers().contains_key("retry-after"));
    // A refresh of a held lock is not a new lock.
    let refresh = req(&c, "LOCK", p.url("/recordings/f0"), false).header("If", format!("({})", tokens[0]));
    assert_eq!(send(refresh).0, 200, "refreshing a held lock at the bound");
    let unlock = req(&c, "UNLOCK", p.url("/recordings/f0"), false).header("Lock-Token", tokens[0].clone());
    assert_eq!(send(unlock).0, 204);
    assert_eq!(lock(&c, &p, "/recordings/f3", false).0, 200, "room again after an UNLOCK");

    let big_owner = LOCKINFO.replace("recorder", &"o".repeat(1000));
    assert_eq!(put(&c, &p, "/recordings/g", b"x"), 201);
    let unlock = req(&c, "UNLOCK", p.url("/recordings/f1"), false).header("Lock-Token", tokens[1].clone());
    assert_eq!(send(unlock).0, 204);
    let (status, _) = send(req(&c, "LOCK", p.url("/recordings/g"), false).body(big_owner));
    assert_eq!(status, 400, "an owner past max_lock_owner_bytes");
    let text = http().get(p.admin_url("/metrics")).send().unwrap().text().unwrap();
    assert!(text.contains("webdav_rejected_total{reason=\"max_locks\"} 1"), "{text}");
}

// ------------------------------------------------------------- 10. smaller wrong answers

#[test]
fn a_put_to_a_collection_path_does_not_replace_the_file() {
    let site = Site::new("hostile-putslash");
    let p = site.start();
    let c = http();
    assert_eq!(put(&c, &p, "/recordings/a.opus", b"aaaa"), 201);
    assert_eq!(put(&c, &p, "/recordings/a.opus/", b"other"), 409);
    assert_eq!(put(&c, &p, "/recordings/new/", b"other"), 409);
    assert_eq!(get(&c, &p, "/recordings/a.opus"), (200, b"aaaa".to_vec()));
    assert_eq!(tree(&site.root()), vec!["a.opus".to_string()]);
}

// ------------------------------------------------------------- 10. named PROPFIND

#[test]
fn a_named_propfind_lists_each_dead_property_once_and_absent_ones_as_404() {
    let site = Site::new("hostile-named");
    let p = site.start();
    let c = http();
    assert_eq!(put(&c, &p, "/recordings/a.opus", b"a"), 201);
    let patch = "<?xml version=\"1.0\"?><D:propertyupdate xmlns:D=\"DAV:\" xmlns:Z=\"urn:z:\"><D:set><D:prop>\
                 <Z:one>1</Z:one><Z:two>2</Z:two></D:prop></D:set></D:propertyupdate>";
    assert_eq!(send(req(&c, "PROPPATCH", p.url("/recordings/a.opus"), false).body(patch)).0, 207);
    let find = "<?xml version=\"1.0\"?><D:propfind xmlns:D=\"DAV:\" xmlns:Z=\"urn:z:\"><D:prop>\
                <Z:one/><Z:absent/></D:prop></D:propfind>";
    let (status, body) = send(req(&c, "PROPFIND", p.url("/recordings/a.opus"), false).header("Depth", "0").body(find));
    assert_eq!(status, 207);
    assert_eq!(body.matches(">1<").count(), 1, "the named property once: {body}");
    assert!(!body.contains(">2<"), "an unnamed dead property was listed: {body}");
    assert!(body.contains("absent") && body.contains("404"), "the absent property with 404: {body}");
}

// ------------------------------------------------------------- 2. no header stops a request

/// A small deterministic generator, so a failure names a reproducible case.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.next() as usize % items.len()]
    }
}

#[test]
fn mutated_webdav_headers_never_panic_a_request() {
    let site = Site::new("hostile-headers");
    let p = site.start();
    let c = http();
    populate(&c, &p);
    let seeds: &[(&str, &[&str])] = &[
        ("If", &["(<urn:uuid:1>)", "<http://h/recordings/a.opus> ([\"e\"])", "(Not <DAV:no-lock>)", "([W/\"x\"] <a>)"]),
        ("Depth", &["0", "1", "infinity", "1,noroot"]),
        ("Timeout", &["Second-10", "Infinite, Second-4100000000", "Second-99999999999999999999"]),
        ("Destination", &["/recordings/z.opus", "http://127.0.0.1/recordings/z", "%"]),
        ("Overwrite", &["T", "F"]),
        ("Lock-Token", &["<urn:uuid:1>", "<>"]),
        ("Range", &["bytes=0-1,2-3", "bytes=-5", "bytes=5-"]),
        ("If-Match", &["*", "\"x\"", "W/\"x\""]),
        ("Content-Range", &["bytes 0-3/4"]),
    ];
    let junk = ["", "<", ">", "(", ")", "[", "]", "\"", " ", "Not", "-", ",", "/", "%", "9999999999999999999999", "\t"];
    let verbs = ["PUT", "GET", "DELETE", "COPY", "MOVE", "LOCK", "UNLOCK", "PROPFIND", "PROPPATCH", "MKCOL"];
    let mut rng = Lcg(17);
    let mut cases = 0;
    for _ in 0..400 {
        let (name, values) = seeds[rng.next() as usize % seeds.len()];
        let mut value = rng.pick(values).to_owned();
        // Cut, splice and append: truncated and unbalanced forms of real values.
        match rng.next() % 4 {
            0 => value.truncate(rng.next() as usize % (value.len() + 1)),
            1 => value.insert_str(rng.next() as usize % (value.len() + 1), rng.pick(&junk)),
            2 => value.push_str(rng.pick(&junk)),
            _ => value = format!("{}{}{}", rng.pick(&junk), value, rng.pick(&junk)),
        }
        let Ok(header) = reqwest::header::HeaderValue::from_str(&value) else { continue };
        let verb = rng.pick(&verbs);
        let r = req(&c, verb, p.url("/recordings/a.opus"), false).header(name, header);
        let r = if verb == "PUT" { r.body("aaaa") } else { r };
        let status = r.send().expect("answered").status().as_u16();
        assert_ne!(status, 500, "{verb} with {name}: {value:?}");
        cases += 1;
    }
    assert!(cases > 300, "only {cases} cases were sent");
    assert!(!p.logs().contains("panicked"), "{}", p.logs());
}

// ------------------------------------------------------------- 5. authentication costs

#[test]
fn simultaneous_first_logins_share_one_hash_and_a_failing_address_is_slowed_first() {
    // The second user's password is bcrypt (our htpasswd's default).
    let site = site_with_two_users("hostile-auth", "");
    let p = site.start();
    let addr = p.addr("webdav");
    let threads: Vec<_> = (0..100)
        .map(|_| {
            std::thread::spawn(move || {
                let c = http();
                let url = format!("http://{addr}/recordings/");
                req(&c, "PROPFIND", url, true).header("Depth", "0").send().unwrap().status().as_u16()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 207);
    }
    let value = |text: &str, name: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(-1.0)
    };
    let text = http().get(p.admin_url("/metrics")).send().unwrap().text().unwrap();
    assert_eq!(value(&text, "webdav_auth_hashes_total"), 1.0, "one bcrypt for 100 first logins\n{text}");

    // Six wrong passwords: the sixth is slowed before its hash is computed.
    let c = http();
    for i in 0..6 {
        let r = c
            .request(method("PROPFIND"), p.url("/recordings/"))
            .basic_auth(OTHER_USER, Some(format!("wrong{i}")))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
    }
    let text = http().get(p.admin_url("/metrics")).send().unwrap().text().unwrap();
    assert_eq!(value(&text, "webdav_auth_slowed_total"), 1.0, "{text}");
    assert_eq!(value(&text, "webdav_auth_hashes_total"), 7.0, "{text}");
}

// ------------------------------------------------------------- 8. health tells the truth

/// A 1 MiB tmpfs for a state directory, unmounted on drop. Needs root (CI runs as root).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &TempDir) -> SmallDisk {
        let at = dir.join("small");
        std::fs::create_dir_all(&at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs", at.to_str().unwrap()])
            .status()
            .is_ok_and(|s| s.success());
        // Never a silent pass: without root the full-disk test fails and says why.
        assert!(ok, "the full-disk test mounts a 1 MiB tmpfs, which needs root (CI runs as root)");
        SmallDisk(at)
    }

    /// Fills the disk; the returned path, removed, frees it.
    fn fill(&self) -> std::path::PathBuf {
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![7u8; 64 << 10];
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// (excp's status, exrp's queue dependency, the whole body) from the admin `/health`. The
/// exrp here has no store to reach, so its own status is DOWN throughout; its queue is what
/// this test is about.
fn state_health(p: &Proc) -> (String, String, String) {
    let text = http().get(p.admin_url("/health")).send().unwrap().text().unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let excp = v["roles"]["excp"]["status"].as_str().unwrap_or("?").to_owned();
    let queue = v["roles"]["exrp"]["details"]["dependencies"]["queue"].as_str().unwrap_or("?").to_owned();
    (excp, queue, text)
}

#[test]
fn excp_and_exrp_report_down_while_their_state_cannot_be_written_and_up_after() {
    let dir = TempDir::new("hostile-fulldisk");
    let disk = SmallDisk::mount(&dir);
    let excp_state = disk.0.join("excp");
    let exrp_state = disk.0.join("exrp");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\
             [excp]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"{}\"\nrecording_processor_url = \"http://127.0.0.1:9\"\n\
             [exrp]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"{}\"\ninstance = \"full\"\n\
             [exrp.transient_storage]\nurl = \"http://127.0.0.1:9/recordings\"\nusername = \"u\"\npassword = \"p\"\n\
             [exrp.local_sink]\ndir = \"{}\"\n",
            excp_state.display(),
            exrp_state.display(),
            dir.join("sink").display()
        ),
    )
    .unwrap();
    let p = Proc::start(&["--role", "all", "--config", config.to_str().unwrap()]);
    let c = http();
    let metadata = |call: &str| {
        let body =
            format!("{{\"id\":\"{call}\",\"mediaFiles\":[{{\"callUUID\":\"{call}\",\"mediaId\":\"{call}_a.opus\"}}]}}");
        let r = c.post(format!("http://{}/api/v1/recording", p.addr("excp"))).body(body).send().unwrap();
        r.status().as_u16()
    };
    let end = |call: &str| {
        let body = format!(
            "{{\"callUUID\":\"{call}\",\"recordings\":[{{\"mediaId\":\"{call}_a.opus\"}}],\"tenant\":\"Environment\"}}"
        );
        let r = c.post(format!("http://{}/api/v1/interaction-end", p.addr("exrp"))).body(body).send().unwrap();
        // The store here answers nothing, so queued jobs cannot be recorded on their files:
        // 503/50302 (queued here) where the state is writable, 503/50301 where it is not.
        let v: serde_json::Value = serde_json::from_str(&r.text().unwrap_or_default()).unwrap_or_default();
        v["status"]["code"].as_u64().unwrap_or(0)
    };
    assert_eq!(metadata("CALLFULL0001"), 200);
    assert_eq!(end("CALLFULL0001"), 50302);
    let (excp, queue, body) = state_health(&p);
    assert_eq!((excp.as_str(), queue.as_str()), ("UP", "UP"), "{body}");

    let filler = disk.fill();
    let mut refused = (0, 0);
    for i in 0..20 {
        let call = format!("CALLFULL1{i:03}");
        if metadata(&call) == 500 {
            refused.0 += 1;
        }
        if end(&call) == 50301 {
            refused.1 += 1;
        }
    }
    assert!(refused.0 > 0 && refused.1 > 0, "a full disk must refuse some writes: {refused:?}");
    let (excp, queue, body) = state_health(&p);
    assert_eq!((excp.as_str(), queue.as_str()), ("DOWN", "DOWN"), "while the state cannot be written: {body}");
    assert!(body.contains("stateError\":\""), "the reason is shown: {body}");

    std::fs::remove_file(filler).unwrap();
    let (excp, queue, body) = state_health(&p);
    assert_eq!((excp.as_str(), queue.as_str()), ("UP", "UP"), "once there is room again, before any traffic: {body}");
    assert_eq!(metadata("CALLFULL2001"), 200);
    assert_eq!(end("CALLFULL2001"), 50302);
    drop(p);
}

// ------------------------------------------------------------- 6. connection caps

/// With `cap` idle connections open, a further client's request is not served (it waits in
/// the listen backlog); once one of them closes, it is.
fn assert_capped(name: &str, addr: std::net::SocketAddr, cap: usize, request: &str) {
    use std::io::Write;
    let idle: Vec<std::net::TcpStream> = (0..cap).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
    // The backlog is served in order: the idle ones take every place, this one waits.
    let mut waiting = std::net::TcpStream::connect(addr).unwrap();
    waiting.write_all(request.as_bytes()).unwrap();
    waiting.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
    let mut buf = [0u8; 512];
    match read_some(&mut waiting, &mut buf) {
        Ok(n) => {
            panic!("{name}: a connection past the cap of {cap} was served: {:?}", String::from_utf8_lossy(&buf[..n]))
        }
        Err(e) => {
            assert!(matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{name}: {e}")
        }
    }
    drop(idle);
    waiting.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let n = read_some(&mut waiting, &mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 "), "{name}: once a connection closed, the waiting one is served: {head:?}");
}

/// Every role in one process, each listener capped at `cap` connections.
fn all_roles(dir: &TempDir, cap: usize) -> Proc {
    std::fs::create_dir_all(dir.join("root")).unwrap();
    std::fs::write(dir.join("htpasswd"), HTPASSWD_LINE).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\nmax_connections = {cap}\n\
             [webdav]\nlisten = \"127.0.0.1:0\"\nroot = \"{root}\"\nhtpasswd = \"{pw}\"\nmax_connections = {cap}\nmax_uploads = {cap}\n\
             [excp]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"{dir}/excp\"\nrecording_processor_url = \"http://127.0.0.1:9\"\nmax_connections = {cap}\n\
             [exrp]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"{dir}/exrp\"\ninstance = \"cap\"\nmax_connections = {cap}\n\
             [exrp.transient_storage]\nurl = \"http://127.0.0.1:9/recordings\"\nusername = \"u\"\npassword = \"p\"\n\
             [exrp.local_sink]\ndir = \"{dir}/sink\"\n\
             [lb]\nworkers = 1\nworker_connections = {cap}\n\
             [lb.pools.one]\nlisten = \"127.0.0.1:0\"\nservers = [\"127.0.0.1:9\"]\n",
            root = dir.join("root").display(),
            pw = dir.join("htpasswd").display(),
            dir = dir.path().display(),
        ),
    )
    .unwrap();
    Proc::start(&["--role", "all", "--config", config.to_str().unwrap()])
}

#[test]
fn every_listener_has_a_connection_cap() {
    let dir = TempDir::new("hostile-conncap");
    let p = all_roles(&dir, 2);
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\r\n", basic());
    for (name, path) in
        [("webdav", "/recordings/"), ("admin", "/health"), ("excp", "/health"), ("exrp", "/health"), ("lb.one", "/")]
    {
        assert_capped(name, p.addr(name), 2, &get(path));
    }
    wait_until("the cap to be logged", Duration::from_secs(10), || p.logs().contains("connection cap reached"));
}

// ------------------------------------------------------------- 7. slow clients and the quota

#[test]
fn slow_puts_declaring_large_bodies_do_not_hold_the_quota() {
    use std::io::Write;
    let site = Site::with("hostile-slowquota", "quota = 10000\nmin_free_disk = 0");
    let p = site.start();
    let addr = p.addr("webdav");
    // Three uploads announce 9 000 bytes each and send 10.
    let slow: Vec<std::net::TcpStream> = (0..3)
        .map(|i| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let head = format!(
                "PUT /recordings/slow{i}.opus HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 9000\r\n\r\n",
                basic()
            );
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(&[b's'; 10]).unwrap();
            s
        })
        .collect();
    let c = http();
    wait_until("the slow uploads to be in flight", Duration::from_secs(10), || {
        let text = c.get(p.admin_url("/metrics")).send().unwrap().text().unwrap();
        text.lines().any(|l| l == "webdav_uploads_in_flight 3")
    });
    // The store holds nothing yet: a recorder's PUT is accepted, and so is a replacement
    // that only grows its file a little.
    assert_eq!(put(&c, &p, "/recordings/real.opus", &[b'r'; 5_000]), 201);
    assert_eq!(put(&c, &p, "/recordings/real.opus", &[b'r'; 6_000]), 204, "charged 1 000 bytes, not 6 000");
    // What arrives is charged: a PUT that does not fit beside what is stored is refused.
    assert_eq!(put(&c, &p, "/recordings/big.opus", &[b'b'; 5_000]), 507);
    drop(slow);
}

// ------------------------------------------------------------- 6. lb bodies past the buffer

#[test]
fn the_lb_spools_large_bodies_to_a_temp_file_and_replays_them_on_the_next_peer() {
    use std::io::Write;
    let site = Site::new("hostile-spool-store");
    let store = site.start();
    let dir = TempDir::new("hostile-spool-lb");
    let temp = dir.join("bodies");
    std::fs::create_dir_all(&temp).unwrap();
    let config = dir.join("lb.toml");
    // The first server refuses connections: a PUT that meets it goes on to the store with
    // the same bytes, read again from the temp file.
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[lb]\nworkers = 1\nclient_body_buffer_size = \"16KiB\"\n\
             client_body_temp_path = \"{}\"\nmax_body_size = \"4MiB\"\n\
             [lb.pools.store]\nlisten = \"127.0.0.1:0\"\nservers = [\"127.0.0.1:1\", \"{}\"]\nhost = \"$http_host\"\n",
            temp.display(),
            store.addr("webdav")
        ),
    )
    .unwrap();
    let lb = Proc::start(&["--role", "lb", "--config", config.to_str().unwrap()]);
    let addr = lb.addr("lb.store");
    let body = |seed: u8| -> Vec<u8> { (0..300_000u32).map(|i| (i % 253) as u8 ^ seed).collect() };
    for i in 0..2u8 {
        // Sent in pieces with pauses, as a slow client would.
        let data = body(i);
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let head = format!(
            "PUT /recordings/big{i}.opus HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            store.addr("webdav"),
            basic(),
            data.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        for chunk in data.chunks(100_000) {
            s.write_all(chunk).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        let (status, _, _) = read_response(&mut s);
        assert_eq!(status, 201, "PUT {i} through the lb");
    }
    let c = http();
    for i in 0..2u8 {
        assert_eq!(get(&c, &store, &format!("/recordings/big{i}.opus")).1, body(i), "byte-exact after the lb");
    }
    let text = c.get(lb.admin_url("/metrics")).send().unwrap().text().unwrap();
    assert!(text.contains("lb_request_bodies_spooled_total{pool=\"store\"} 2"), "{text}");
    assert!(text.contains("lb_retries_total{pool=\"store\"} 1"), "one PUT met the refusing server first: {text}");
    assert_eq!(std::fs::read_dir(&temp).unwrap().count(), 0, "temp files have no name and leave nothing");
}

// ------------------------------------------------------------- 10. aborted bodies

#[test]
fn a_body_that_stops_half_way_is_answered_and_logged_as_the_clients_doing() {
    use std::io::{Read, Write};
    let site = Site::with("hostile-aborted", "body_idle_timeout = \"1s\"");
    let p = site.start();
    let head = |path: &str| {
        format!("PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 1000\r\n\r\n", basic())
    };
    // Stalls: answered 408 (not the engine's 502), nothing stored.
    let mut s = std::net::TcpStream::connect(p.addr("webdav")).unwrap();
    s.write_all(head("/recordings/stalled.opus").as_bytes()).unwrap();
    s.write_all(&[b's'; 10]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut answer = vec![0u8; 64];
    let n = s.read(&mut answer).unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 408"), "{:?}", String::from_utf8_lossy(&answer[..n]));
    // Closes half way: logged 400 with the 10 bytes that came, not the 1000 announced.
    let mut s = std::net::TcpStream::connect(p.addr("webdav")).unwrap();
    s.write_all(head("/recordings/aborted.opus").as_bytes()).unwrap();
    s.write_all(&[b'a'; 10]).unwrap();
    drop(s);
    wait_until("the aborted upload's access line", Duration::from_secs(10), || {
        p.logs().lines().any(|l| l.contains("path=/recordings/aborted.opus") && l.contains("status="))
    });
    let logs = p.logs();
    let line = logs.lines().find(|l| l.contains("path=/recordings/aborted.opus")).unwrap();
    assert!(line.contains("status=400") && line.contains("bytes_in=10 "), "{line}");
    let stalled = logs.lines().find(|l| l.contains("path=/recordings/stalled.opus")).unwrap();
    assert!(stalled.contains("status=408") && stalled.contains("bytes_in=10 "), "{stalled}");
    assert_eq!(tree(&site.root()), Vec::<String>::new(), "nothing was stored");
}

// ------------------------------------------------------------- 6. slow readers

#[test]
fn a_client_that_stops_reading_is_cut_off_after_send_timeout() {
    use std::io::Write;
    let site = Site::with("hostile-slowreader", "send_timeout = \"1s\"\nmax_connections = 4\nmax_uploads = 4");
    let p = site.start();
    let c = http();
    let size = 32 << 20;
    assert_eq!(put(&c, &p, "/recordings/big.opus", &vec![b'b'; size]), 201);
    let mut s = std::net::TcpStream::connect(p.addr("webdav")).unwrap();
    let head = format!("GET /recordings/big.opus HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\r\n", basic());
    s.write_all(head.as_bytes()).unwrap();
    // Read nothing while the server's writes stall (socket buffers are far smaller than
    // 32 MiB), then read what there is: the server gave up and closed before the end.
    wait_until("the server to give up on the reader", Duration::from_secs(20), || {
        p.logs().lines().any(|l| {
            l.contains("path=/recordings/big.opus") && l.contains("method=GET") && l.contains("complete=false")
        })
    });
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    loop {
        match read_some(&mut s, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(got < size, "the whole file arrived although the client stopped reading");
    // Its connection is free again: the store still serves.
    assert_eq!(get(&c, &p, "/recordings/big.opus").1.len(), size);
}

// ------------------------------------------------------------- 10. requests no role should see

#[test]
fn every_listener_refuses_what_no_http_1_1_server_takes() {
    let dir = TempDir::new("hostile-hostless");
    let p = all_roles(&dir, 64);
    let cases = [
        ("GET /health HTTP/1.1\r\n\r\n", 400),
        ("GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("POST /health HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ];
    for name in ["webdav", "admin", "excp", "exrp", "lb.one"] {
        for (request, want) in cases {
            let (status, _, _) = raw_request(p.addr(name), request, b"");
            assert_eq!(status, want, "{name}: {request:?}");
        }
    }
}

// ------------------------------------------------------------- 11. the admin listener's lookups

/// `/api/trace` takes its id from the network: what is not a plausible id is refused with the
/// reason and asks no role; correlation ids beyond the bound are dropped; a flood of lookups
/// is served one by one and the roles keep working; `/api/trends` stays its fixed size.
#[test]
fn trace_lookups_refuse_bad_ids_and_stay_bounded() {
    let dir = TempDir::new("hostile-trace");
    let p = all_roles(&dir, 64);
    let c = http();
    let trace = |query: &str| {
        let r = c.get(format!("{}?{query}", p.admin_url("/api/trace"))).send().unwrap();
        let status = r.status().as_u16();
        (status, serde_json::from_str::<serde_json::Value>(&r.text().unwrap()).unwrap_or_default())
    };
    let long = "x".repeat(10_000);
    for query in ["", "id=", "id=ab", "id=a%2F..%2Fb", "id=a%00bc", "id=%E2%80%AEabc", &format!("id={long}")] {
        let (status, body) = trace(query);
        assert_eq!(status, 400, "{query:.60}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{query:.60}: {body}");
    }
    let many: Vec<String> = (0..5000).map(|i| format!("c{i}")).collect();
    let (status, body) = trace(&format!("id=SOMECALL&corr={}", many.join(",")));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"], serde_json::json!([]));
    for i in 0..300 {
        assert_eq!(trace(&format!("id=CALL{i:05}")).0, 200);
    }
    assert_eq!(put(&c, &p, "/recordings/after.opus", b"still serving"), 201);
    let (status, body) = trace("id=after.opus");
    assert_eq!(status, 200);
    let steps: Vec<&str> = body["events"].as_array().unwrap().iter().filter_map(|e| e["step"].as_str()).collect();
    assert!(steps.contains(&"stored") && steps.contains(&"in store"), "{body}");
    let trends = c.get(p.admin_url("/api/trends")).send().unwrap().text().unwrap();
    assert!(trends.len() < 64 << 10, "{} bytes", trends.len());
}
