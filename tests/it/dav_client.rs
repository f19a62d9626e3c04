//! exrp's WebDAV client (`exec_allinone::dav_client`) against both stores it must work with:
//! our webdav role (the real binary) and Apache mod_dav (Debian's apache2, `DavLockDB` as Debian
//! configures it); plus a fake store without locking. Each scenario runs unchanged on both
//! servers; where they differ the test names the difference (see the module doc of dav_client).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use exec_allinone::config::Secret;
use exec_allinone::dav_client::{DavClient, DavError, Deleted, Fetched, FetchedBody, Lock};
use exec_allinone::http::client::HttpClient;
use md5::{Digest, Md5};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use crate::support::apache::Apache;
use crate::support::fakes::{Answer, Server};
use crate::support::*;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Ours,
    Apache,
}

/// A running store with an empty `/recordings` collection.
struct Store {
    kind: Kind,
    url: String,
    rt: tokio::runtime::Runtime,
    _site: Option<(Site, Proc)>,
    _apache: Option<Apache>,
}

impl Store {
    fn start(kind: Kind, name: &str) -> Store {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        match kind {
            Kind::Ours => {
                let site = Site::new(&format!("davclient-{name}"));
                let proc = site.start();
                let url = proc.url("/recordings");
                Store { kind, url, rt, _site: Some((site, proc)), _apache: None }
            }
            Kind::Apache => {
                let apache = Apache::start(name);
                Store { kind, url: apache.collection_url(), rt, _site: None, _apache: Some(apache) }
            }
        }
    }

    /// One exrp instance's client.
    fn client(&self) -> DavClient {
        DavClient::new(&self.url, USER, &Secret::new(PASSWORD), HttpClient::plain(), Duration::from_secs(10))
    }

    fn run<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// A PUT as MCP makes it, each segment of `path` encoded by the test itself.
    fn put(&self, path: &str, bytes: &[u8]) {
        let segments: Vec<String> =
            path.split('/').map(|s| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()).collect();
        let url = format!("{}/{}", self.url, segments.join("/"));
        let res = client().put(&url).basic_auth(USER, Some(PASSWORD)).body(bytes.to_vec()).send().unwrap();
        assert!(matches!(res.status().as_u16(), 201 | 204), "PUT {url}: {}", res.status());
    }

    fn mkcol(&self, name: &str) {
        let url = format!("{}/{}/", self.url, utf8_percent_encode(name, NON_ALPHANUMERIC));
        let res = client().request(method("MKCOL"), &url).basic_auth(USER, Some(PASSWORD)).send().unwrap();
        assert_eq!(res.status(), 201, "MKCOL {url}");
    }

    fn token_prefix(&self) -> &'static str {
        match self.kind {
            Kind::Ours => "urn:uuid:",
            Kind::Apache => "opaquelocktoken:",
        }
    }
}

fn held(lock: Result<Lock, DavError>) -> String {
    match lock {
        Ok(Lock::Held { token }) => token,
        other => panic!("expected a lock, got {other:?}"),
    }
}

fn props(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

const SECOND: Duration = Duration::from_secs(1);
const BOGUS: &str = "opaquelocktoken:11111111-2222-3333-4444-555555555555";

/// Claims with LOCK (busy, refresh, expiry, takeover), job state in dead properties, and
/// conditional writes with and without the token.
fn claims_and_props(store: &Store) {
    let (a, b) = (store.client(), store.client());
    store.run(a.ping()).expect("ping");
    let wrong = DavClient::new(&store.url, USER, &Secret::new("wrong"), HttpClient::plain(), Duration::from_secs(10));
    assert!(matches!(store.run(wrong.ping()), Err(DavError::Refused { status: 401, .. })));
    let elsewhere = DavClient::new(
        &store.url.replace("/recordings", "/recordings/nowhere"),
        USER,
        &Secret::new(PASSWORD),
        HttpClient::plain(),
        Duration::from_secs(10),
    );
    assert!(matches!(store.run(elsewhere.ping()), Err(DavError::Refused { status: 404, .. })));

    assert_eq!(store.run(a.stat("job.opus")).unwrap(), None);
    store.put("job.opus", b"OggS recording");
    let info = store.run(a.stat("job.opus")).unwrap().expect("stat");
    assert_eq!((info.name.as_str(), info.size, info.locked), ("job.opus", 14, false));
    assert!(info.props.is_empty(), "{:?}", info.props);
    let age = SystemTime::now().duration_since(info.modified.expect("last-modified")).unwrap_or_default();
    assert!(age < Duration::from_secs(300), "{age:?}");

    // A claims it; B finds it busy; nobody writes without A's token.
    let claimed = Instant::now();
    let ta = held(store.run(a.lock("job.opus", 4 * SECOND, "exrp-a <1> & co")));
    assert!(ta.starts_with(store.token_prefix()), "{ta}");
    assert!(store.run(a.stat("job.opus")).unwrap().unwrap().locked);
    assert_eq!(store.run(b.lock("job.opus", 30 * SECOND, "exrp-b")).unwrap(), Lock::Busy);
    // lockdiscovery names the owner and shows the token: how a restarted instance finds a claim
    // it made but never recorded.
    assert_eq!(store.run(b.lock_owned_by("job.opus", "exrp-a <1> & co")).unwrap(), Some(ta.clone()));
    assert_eq!(store.run(b.lock_owned_by("job.opus", "exrp-b")).unwrap(), None);
    assert_eq!(store.run(b.lock_owned_by("absent.opus", "exrp-a <1> & co")).unwrap(), None);
    assert!(matches!(store.run(b.set_props("job.opus", None, &[("state", "x")], &[])), Err(DavError::Locked)));
    assert!(matches!(store.run(b.delete("job.opus", None)), Err(DavError::Locked)));
    assert!(matches!(store.run(b.set_props("job.opus", Some(BOGUS), &[("state", "x")], &[])), Err(DavError::LockLost)));

    // Job state: JSON with quotes, XML specials and unicode, exactly as written.
    let job = r#"{"callUUID":"0A1<b>&amp;</b>","note":"it's \"quoted\" é ✓ 日本 \\ / \t tab","n":[1,2]}"#;
    store
        .run(a.set_props("job.opus", Some(&ta), &[("job", job), ("state", "fetching"), ("empty", "")], &["never_set"]))
        .expect("PROPPATCH with the token");
    let info = store.run(b.stat("job.opus")).unwrap().unwrap();
    assert_eq!(info.props, props(&[("job", job), ("state", "fetching"), ("empty", "")]));
    assert!(info.locked);

    // A refresh outlives the first timeout: past those 4 s B still finds it busy.
    store.run(a.refresh("job.opus", &ta, 60 * SECOND)).expect("refresh");
    assert!(matches!(store.run(b.refresh("job.opus", BOGUS, 60 * SECOND)), Err(DavError::LockLost)));
    std::thread::sleep((claimed + Duration::from_millis(4500)).saturating_duration_since(Instant::now()));
    assert_eq!(store.run(b.lock("job.opus", 30 * SECOND, "exrp-b")).unwrap(), Lock::Busy);
    store.run(a.set_props("job.opus", Some(&ta), &[("state", "uploaded")], &["empty"])).expect("PROPPATCH remove");
    store.run(a.unlock("job.opus", &ta)).expect("unlock");
    assert!(matches!(store.run(a.unlock("job.opus", &ta)), Err(DavError::LockLost)));
    let info = store.run(b.stat("job.opus")).unwrap().unwrap();
    assert!(!info.locked);
    assert_eq!(info.props, props(&[("job", job), ("state", "uploaded")]), "dead properties outlive the lock");

    // A write with the token of an ended lock, on a file nobody holds: both stores refuse it
    // (412; dav-server 0.11 ignored the unknown token until our patch).
    let stale = store.run(a.set_props("job.opus", Some(&ta), &[("state", "stale")], &[]));
    assert!(matches!(stale, Err(DavError::LockLost)), "{stale:?}");
    store.run(a.set_props("job.opus", None, &[("state", "uploaded")], &[])).expect("unlocked write");

    // A dies holding a 2-s claim; B takes over once it has expired, without an operator.
    let claimed = Instant::now();
    let ta = held(store.run(a.lock("job.opus", 2 * SECOND, "exrp-a")));
    assert_eq!(store.run(b.lock("job.opus", 2 * SECOND, "exrp-b")).unwrap(), Lock::Busy);
    wait_until("A's claim to expire", Duration::from_secs(20), || {
        !store.run(b.stat("job.opus")).unwrap().unwrap().locked
    });
    // Apache counts in whole seconds: its 2-s claim ends within the second second.
    assert!(claimed.elapsed() >= Duration::from_secs(1), "an expired lock is not listed, and only once expired");
    let tb = held(store.run(b.lock("job.opus", 30 * SECOND, "exrp-b")));
    assert_ne!(ta, tb);
    let listed = store.run(b.list()).unwrap();
    let entry = listed.iter().find(|f| f.name == "job.opus").expect("listed");
    assert!(entry.locked);
    assert_eq!(entry.props, props(&[("job", job), ("state", "uploaded")]));
    // A comes back with its old token: every write is refused (412 from both).
    for result in [
        store.run(a.set_props("job.opus", Some(&ta), &[("state", "a")], &[])),
        store.run(a.refresh("job.opus", &ta, 30 * SECOND)),
        store.run(a.delete("job.opus", Some(&ta))).map(|_| ()),
    ] {
        assert!(matches!(result, Err(DavError::LockLost)), "{result:?}");
    }
    assert!(matches!(store.run(a.unlock("job.opus", &ta)), Err(DavError::LockLost)));

    // B finishes: DELETE with its token; the file and its lock are gone.
    assert_eq!(store.run(b.delete("job.opus", Some(&tb))).unwrap(), Deleted::Deleted);
    assert_eq!(store.run(b.stat("job.opus")).unwrap(), None);
    assert_eq!(store.run(b.delete("job.opus", None)).unwrap(), Deleted::Absent);
    assert!(matches!(store.run(b.set_props("job.opus", None, &[("state", "x")], &[])), Err(DavError::Missing)));
    // LOCK never creates what is not there (both servers would without If-Match).
    assert_eq!(store.run(a.lock("job.opus", 30 * SECOND, "exrp-a")).unwrap(), Lock::Missing);
    assert_eq!(store.run(a.stat("job.opus")).unwrap(), None);
    assert!(store.run(a.list()).unwrap().is_empty());
}

/// Names as GIR and MCP make them, streamed fetches with a size bound, deletes.
fn names_and_fetch(store: &Store) {
    let c = store.client();
    for bad in ["", ".", "..", "a/b", "../x.opus", "a\0b"] {
        assert!(matches!(c.file_url(bad), Err(DavError::BadName(_))), "{bad:?}");
        assert!(matches!(store.run(c.stat(bad)), Err(DavError::BadName(_))), "{bad:?}");
        assert!(matches!(store.run(c.delete(bad, None)), Err(DavError::BadName(_))), "{bad:?}");
    }
    let names = [
        "011AP643CSAPR4FKQGQE31TAES00029V_2025-01-01_10%3A00%3A00.opus",
        "with space.opus",
        "hash#frag.opus",
        "query?a=1&b=2.opus",
        "plus+semi;colon,comma'quote\".opus",
        "unicodé ✓ 日本.opus",
        "100%.opus",
    ];
    let dir = TempDir::new("davclient-fetch");
    for (i, name) in names.iter().enumerate() {
        let body = format!("recording {i} of {name}").into_bytes();
        store.put(name, &body);
        let info = store.run(c.stat(name)).unwrap().unwrap_or_else(|| panic!("stat {name}"));
        assert_eq!((info.name.as_str(), info.size), (*name, body.len() as u64));
        store.run(c.set_props(name, None, &[("state", name)], &[])).unwrap();
        let dest = dir.join(&format!("{i}.part"));
        let md5: [u8; 16] = Md5::digest(&body).into();
        // Spooled (nothing may be held in memory), then held in memory with no file made.
        let got = store.run(c.fetch(name, &dest, 1 << 20, 0, 10 * SECOND)).unwrap();
        assert_eq!(got, Fetched { len: body.len() as u64, md5, body: FetchedBody::File(dest.clone()) });
        assert_eq!(std::fs::read(&dest).unwrap(), body);
        std::fs::remove_file(&dest).unwrap();
        let got = store.run(c.fetch(name, &dest, 1 << 20, 1 << 20, 10 * SECOND)).unwrap();
        assert_eq!(got, Fetched { len: body.len() as u64, md5, body: FetchedBody::Memory(body.clone().into()) });
        assert!(!dest.exists(), "a file held in memory makes no spool file");
    }
    let mut listed: Vec<(String, String)> = store
        .run(c.list())
        .unwrap()
        .into_iter()
        .map(|f| (f.name.clone(), f.props.get("state").cloned().unwrap_or_default()))
        .collect();
    listed.sort();
    let mut expected: Vec<(String, String)> = names.iter().map(|n| (n.to_string(), n.to_string())).collect();
    expected.sort();
    assert_eq!(listed, expected);
    for name in names {
        let token = held(store.run(c.lock(name, 30 * SECOND, "exrp")));
        assert_eq!(store.run(c.delete(name, Some(&token))).unwrap(), Deleted::Deleted, "{name}");
        assert_eq!(store.run(c.stat(name)).unwrap(), None, "{name}");
    }

    // Several MiB, streamed; one byte over the bound is refused and the part left behind.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    store.put("big.opus", &big);
    // Past the in-memory bound mid-body: what was held goes to the spool file first.
    let dest = dir.join("big.part");
    let got = store.run(c.fetch("big.opus", &dest, big.len() as u64, 1 << 20, 30 * SECOND)).unwrap();
    assert_eq!(
        got,
        Fetched { len: big.len() as u64, md5: Md5::digest(&big).into(), body: FetchedBody::File(dest.clone()) }
    );
    assert!(std::fs::read(&dest).unwrap() == big);
    let refused = store.run(c.fetch("big.opus", &dest, big.len() as u64 - 1, 1 << 20, 30 * SECOND));
    assert!(matches!(refused, Err(DavError::TooLarge(n)) if n == big.len() as u64), "{refused:?}");
    assert!(std::fs::metadata(&dest).unwrap().len() < big.len() as u64, "the part is left for the caller");
    assert!(matches!(store.run(c.fetch("gone.opus", &dest, 1 << 20, 1 << 20, 10 * SECOND)), Err(DavError::Missing)));
}

/// A scan of a collection of hundreds of files (sub-collections are not files).
fn list_many(store: &Store) {
    let c = store.client();
    const N: usize = 300;
    for i in 0..N {
        store.put(&format!("rec-{i:04}.opus"), format!("{i}").as_bytes());
    }
    store.mkcol("sub");
    store.put("sub/inner.opus", b"x");
    for i in (0..N).step_by(50) {
        let name = format!("rec-{i:04}.opus");
        store.run(c.set_props(&name, None, &[("job", &format!("{{\"i\":{i}}}"))], &[])).unwrap();
    }
    let token = held(store.run(c.lock("rec-0007.opus", 30 * SECOND, "exrp")));
    let mut files = store.run(c.list()).unwrap();
    files.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(files.len(), N, "{:?}", files.iter().map(|f| &f.name).collect::<Vec<_>>());
    for (i, f) in files.iter().enumerate() {
        assert_eq!(f.name, format!("rec-{i:04}.opus"));
        assert_eq!(f.size, format!("{i}").len() as u64);
        assert_eq!(f.locked, i == 7, "{}", f.name);
        let job = (i % 50 == 0).then(|| format!("{{\"i\":{i}}}"));
        assert_eq!(f.props.get("job"), job.as_ref(), "{}", f.name);
    }
    store.run(c.unlock("rec-0007.opus", &token)).unwrap();
}

macro_rules! on_both {
    ($scenario:ident, $ours:ident, $apache:ident) => {
        #[test]
        fn $ours() {
            $scenario(&Store::start(Kind::Ours, stringify!($scenario)));
        }
        #[test]
        fn $apache() {
            $scenario(&Store::start(Kind::Apache, stringify!($scenario)));
        }
    };
}

on_both!(claims_and_props, claims_and_props_ours, claims_and_props_apache);
on_both!(names_and_fetch, names_and_fetch_ours, names_and_fetch_apache);
on_both!(list_many, list_many_ours, list_many_apache);

#[test]
fn a_store_without_locking_and_a_broken_one() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = |server: &Server| {
        DavClient::new(
            &format!("http://{}/recordings", server.addr),
            USER,
            &Secret::new(PASSWORD),
            HttpClient::plain(),
            Duration::from_secs(5),
        )
    };
    for status in [405, 501] {
        let server = Server::start(Arc::new(move |_| Answer::Json(status, serde_json::Value::Null)));
        assert_eq!(rt.block_on(client(&server).lock("a.opus", SECOND, "x")).unwrap(), Lock::Unsupported);
    }
    // Basic auth goes with every request: without it this fake answers 401.
    let server = Server::start(Arc::new(|req| match req.method.as_str() {
        _ if req.header("authorization") != Some(basic().as_str()) => Answer::Json(401, serde_json::Value::Null),
        "PROPFIND" => Answer::Json(200, serde_json::json!({"not": "a multistatus"})),
        "PROPPATCH" => Answer::Json(507, serde_json::Value::Null),
        _ => Answer::Json(403, serde_json::Value::Null),
    }));
    let c = client(&server);
    assert!(matches!(rt.block_on(c.list()), Err(DavError::Refused { status: 200, .. })));
    assert!(matches!(rt.block_on(c.set_props("a.opus", None, &[("k", "v")], &[])), Err(DavError::Unavailable(_))));
    assert!(matches!(rt.block_on(c.delete("a.opus", None)), Err(DavError::Refused { status: 403, .. })));
    server.down();
    assert!(matches!(rt.block_on(c.ping()), Err(DavError::Unavailable(_))));
}
