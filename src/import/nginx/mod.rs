//! Owns `exec-allinone import-nginx`: translating the EXEC vendor's nginx load-balancer configuration into `[lb]`
//! TOML, refusing (every problem at once) whatever it cannot carry over faithfully.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use toml::Value;

use crate::config::lb_key as key;

mod analyze;
mod emit;
mod lexer;
mod loader;

use analyze::*;
use emit::*;
use lexer::*;
use loader::*;

// Configurations are a few kilobytes; the caps stop a mistaken path (a log, a device) or hostile input from being
// slurped or from exhausting the stack, since parsing recurses per block.
const MAX_FILE_BYTES: usize = 1 << 20;
const MAX_INCLUDE_DEPTH: usize = 16;
const MAX_FILES: usize = 256;
const MAX_BLOCK_DEPTH: usize = 64;

const SEC: u64 = 1000;
const DEFAULT_TIMEOUT: u64 = 60 * SEC;
const NGINX_FAIL_TIMEOUT: u64 = 10 * SEC;
#[rustfmt::skip]
const FLAGS: [&str; 11] = [
    "error", "timeout", "invalid_header", "http_500", "http_502", "http_503", "http_504", "http_403", "http_404",
    "http_429", "non_idempotent",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translation {
    pub toml: String,
    /// Directives dropped because they do not change what clients or upstreams see, each with file:line.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError {
    pub problems: Vec<String>,
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("\n"))
    }
}

impl std::error::Error for ImportError {}

/// Translates the nginx configuration at `path`; relative includes resolve against its directory.
pub fn translate(path: &Path) -> Result<Translation, ImportError> {
    let name = path.display().to_string();
    let text = read_capped(path).map_err(|e| ImportError { problems: vec![format!("{name}: {e}")] })?;
    let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    run(&text, base, &name, std::fs::canonicalize(path).ok())
}

/// Translates configuration text; `name` labels messages and relative includes resolve against `base_dir`.
pub fn translate_str(text: &str, base_dir: &Path, name: &str) -> Result<Translation, ImportError> {
    run(text, base_dir, name, None)
}

fn run(text: &str, base: &Path, name: &str, canon: Option<PathBuf>) -> Result<Translation, ImportError> {
    let mut ld =
        Loader { base: base.to_path_buf(), stack: canon.into_iter().collect(), files: 1, rep: Report::default() };
    let file: Rc<str> = Rc::from(name);
    let items = if text.len() > MAX_FILE_BYTES {
        ld.rep.refuse(&Loc { file: file.clone(), line: 1 }, "file is larger than 1 MiB");
        Vec::new()
    } else {
        ld.parse(text, &file, 0)
    };
    let mut rep = ld.rep;
    // Syntax or include failures leave the tree incomplete, and analysing it would only add misleading problems.
    let toml = if rep.problems.is_empty() { analyze(&items, &file, &mut rep) } else { String::new() };
    if rep.problems.is_empty() {
        Ok(Translation { toml, notes: sorted(rep.notes) })
    } else {
        Err(ImportError { problems: sorted(rep.problems) })
    }
}

#[derive(Clone, Debug)]
struct Loc {
    file: Rc<str>,
    line: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// Messages keyed by (file in reading order, line) so they come out sorted whatever order they were found in.
#[derive(Default)]
struct Report {
    files: HashMap<Rc<str>, usize>,
    notes: Vec<(usize, usize, String)>,
    problems: Vec<(usize, usize, String)>,
    seen: HashSet<String>,
}

impl Report {
    fn note(&mut self, at: &Loc, msg: impl fmt::Display) {
        self.add(false, at, msg);
    }
    fn refuse(&mut self, at: &Loc, msg: impl fmt::Display) {
        self.add(true, at, msg);
    }
    // Settings inherited from `http` are evaluated once per pool; say each thing once.
    fn add(&mut self, problem: bool, at: &Loc, msg: impl fmt::Display) {
        let s = format!("{at}: {msg}");
        if self.seen.insert(format!("{problem}{s}")) {
            let rank = self.rank(&at.file);
            if problem { &mut self.problems } else { &mut self.notes }.push((rank, at.line, s));
        }
    }
    fn rank(&mut self, file: &Rc<str>) -> usize {
        let n = self.files.len();
        *self.files.entry(file.clone()).or_insert(n)
    }
}

fn sorted(mut v: Vec<(usize, usize, String)>) -> Vec<String> {
    v.sort_by_key(|e| (e.0, e.1));
    v.into_iter().map(|e| e.2).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "worker_processes 1;
events { worker_connections 1000; }
http {
  include /etc/nginx/mime.types;
  upstream excp { server 10.0.0.11:3650 max_fails=0; server 10.0.0.12:3650 max_fails=0; }
  upstream exrp { server 10.0.0.21:8080 max_fails=0; server 10.0.0.22:8080 max_fails=0; server 10.0.0.23:8080 max_fails=0; }
  server { listen 3650; location / { proxy_pass http://excp/; proxy_next_upstream_tries 3; } }
  server { listen 8080; location / { proxy_pass http://exrp/; proxy_next_upstream_tries 3; } }
  include conf.d/*.conf;
}
";

    fn nowhere() -> PathBuf {
        std::env::temp_dir().join("import-nginx-test-no-such-dir")
    }

    fn ok(text: &str) -> Translation {
        let t = translate_str(text, &nowhere(), "nginx.conf").unwrap_or_else(|e| panic!("refused:\n{e}"));
        if let Err(e) = t.toml.parse::<toml::Table>() {
            panic!("invalid TOML {e}:\n{}", t.toml);
        }
        t
    }

    fn refused(text: &str) -> Vec<String> {
        match translate_str(text, &nowhere(), "nginx.conf") {
            Ok(t) => panic!("translated:\n{}", t.toml),
            Err(e) => e.problems,
        }
    }

    /// One upstream `u` of two servers and one server block; `up` and `loc` go into the upstream and `location /`.
    fn conf(up: &str, loc: &str) -> String {
        format!("http {{\n upstream u {{\n{up}\n }}\n server {{\n listen 80;\n location / {{\n{loc}\n }}\n }}\n}}\n")
    }

    const TWO: &str = "server 10.0.0.1:80 max_fails=0; server 10.0.0.2:80 max_fails=0;";

    /// Pool `name` of the translation, as values.
    fn pool(t: &Translation, name: &str) -> toml::Table {
        let doc: toml::Table = t.toml.parse().unwrap();
        doc["lb"]["pools"][name].as_table().unwrap_or_else(|| panic!("no pool {name}:\n{}", t.toml)).clone()
    }

    /// What a pool should hold, written as TOML, as values.
    fn values(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    fn body(t: &Translation) -> String {
        t.toml.lines().skip(2).collect::<Vec<_>>().join("\n")
    }

    fn has(list: &[String], needle: &str) -> bool {
        list.iter().any(|l| l.contains(needle))
    }

    #[test]
    fn the_consistent_uri_hash_is_carried_over_and_other_hashes_refused() {
        let t = ok(&conf(&format!("hash $request_uri consistent; {TWO}"), "proxy_pass http://u/;"));
        let p = pool(&t, "u");
        assert_eq!(p["hash"].as_str(), Some("$request_uri consistent"), "{}", t.toml);
        // What it wrote is what the lb reads: the pool hashes.
        let config = crate::config::Config::from_toml_str(
            &format!("[admin]\nlisten = \"127.0.0.1:0\"\n{}", t.toml),
            crate::cli::Role::Lb,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", t.toml));
        assert!(config.lb.unwrap().pools[0].settings.hash_request_uri);
        for other in ["hash $request_uri;", "hash $remote_addr consistent;", "ip_hash;"] {
            let problems = refused(&conf(&format!("{other} {TWO}"), "proxy_pass http://u/;"));
            assert!(has(&problems, "only round robin and `hash $request_uri consistent`"), "{other}: {problems:?}");
        }
    }

    #[test]
    fn request_buffering_off_is_carried_over() {
        let t = ok(&conf(TWO, "proxy_pass http://u/; proxy_request_buffering off;"));
        assert_eq!(pool(&t, "u")["request_buffering"].as_bool(), Some(false), "{}", t.toml);
        let t = ok(&conf(TWO, "proxy_pass http://u/; proxy_request_buffering on;"));
        assert!(!t.toml.contains("request_buffering"), "the default is not written: {}", t.toml);
    }

    #[test]
    fn body_buffer_size_is_carried_over() {
        let t = ok(&conf(TWO, "proxy_pass http://u/; client_body_buffer_size 128k;"));
        assert!(t.toml.contains("client_body_buffer_size = \"128KiB\""), "{}", t.toml);
        let t = ok(&conf(TWO, "proxy_pass http://u/; client_body_buffer_size 16k;"));
        assert!(!t.toml.contains("client_body_buffer_size"), "the default is not written: {}", t.toml);
    }

    #[test]
    fn vendor_sample() {
        let t = ok(SAMPLE);
        let want = r#"# Translated by exec-allinone import-nginx from nginx.conf

[lb]
worker_connections = 1000
next_upstream_tries = 3

[lb.pools.excp]
listen = "0.0.0.0:3650"
servers = ["10.0.0.11:3650", "10.0.0.12:3650"]

[lb.pools.exrp]
listen = "0.0.0.0:8080"
servers = ["10.0.0.21:8080", "10.0.0.22:8080", "10.0.0.23:8080"]
"#;
        assert_eq!(t.toml, want);
        assert!(has(&t.notes, "nginx.conf:1: `worker_processes` ignored"), "{:?}", t.notes);
        assert!(has(&t.notes, "nginx.conf:4: `include /etc/nginx/mime.types` ignored"));
        assert!(has(&t.notes, "nginx.conf:9: `include conf.d/*.conf` matched no files"));
        assert_eq!(t.notes.len(), 3, "{:?}", t.notes);
        let bad = refused("events { worker_connections many; }\nhttp { }\n");
        assert!(has(&bad, "`worker_connections` takes a number"), "{bad:?}");
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let dir = std::env::temp_dir().join(format!("import-nginx-{tag}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        fn write(&self, rel: &str, text: &str) -> PathBuf {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn includes_and_globs() {
        let d = TempDir::new("glob");
        let main = d.write("nginx.conf", "events {}\nhttp {\n include up/*.conf;\n include servers.conf;\n}\n");
        // Sorted order, hidden files and other extensions skipped; nested includes resolve against the main dir.
        d.write("up/b.conf", "upstream b { server 10.0.0.2 max_fails=0; }\n");
        d.write("up/a.conf", "upstream a { server 10.0.0.1 max_fails=0; }\ninclude more/x.inc;\n");
        d.write("up/.hidden.conf", "garbage {");
        d.write("up/c.txt", "garbage {");
        d.write("more/x.inc", "# nothing but a comment\n");
        d.write("servers.conf", "server { listen 81; location / { proxy_pass http://b; } }\nserver { listen 80; location / { proxy_pass http://a; } }\n");
        let t = translate(&main).unwrap_or_else(|e| panic!("{e}"));
        let b = t.toml.find("[lb.pools.b]").unwrap();
        let a = t.toml.find("[lb.pools.a]").unwrap();
        assert!(b < a, "pools follow server block order:\n{}", t.toml);
        assert!(t.toml.contains("servers = [\"10.0.0.1:80\"]"));
        assert!(t.toml.contains("[lb]\nuri = \"raw\"\n"), "{}", t.toml);

        d.write("loop.conf", "include loop.conf;\n");
        let looped =
            d.write("main2.conf", "http {\n include loop.conf;\n include missing.conf;\n include nodir/*.conf;\n}\n");
        let e = translate(&looped).unwrap_err();
        assert!(has(&e.problems, "loop.conf:1: include") && has(&e.problems, "include loop"), "{e}");
        assert!(has(&e.problems, "main2.conf:3: include") && has(&e.problems, "missing.conf"), "{e}");
        assert_eq!(e.problems.len(), 2, "{e}");

        let deep = d.write("self.conf", "include self.conf;\n");
        assert!(has(&translate(&deep).unwrap_err().problems, "include loop"));
        d.write("big.conf", &"#".repeat(MAX_FILE_BYTES + 1));
        let big = d.write("main3.conf", "include big.conf;\n");
        assert!(has(&translate(&big).unwrap_err().problems, "larger than 1 MiB"));
    }

    #[test]
    fn comments_and_quotes() {
        let text = "# leading comment\nhttp { # trailing\n upstream \"u\" { server '10.0.0.1:80' max_fails=0; } # x { y\n server {\n  listen \"80\";\n  location \"/\" {\n   proxy_pass http://u/;#no space\n   proxy_set_header 'X-Team' \"a \\\"b\\\" # c\\\\d\";\n   proxy_set_header X-Tab \"1\\t2\";\n  }\n }\n}\n";
        let t = ok(text);
        let table: toml::Table = t.toml.parse().unwrap();
        let set = &table["lb"]["pools"]["u"]["set_headers"];
        assert_eq!(set["X-Team"].as_str(), Some("a \"b\" # c\\d"));
        assert_eq!(set["X-Tab"].as_str(), Some("1\t2"));
        assert_eq!(tokenize("a${b}c;").map(|t| t.len()).ok(), Some(2));
        assert!(matches!(&tokenize("a}b;").unwrap()[0].tok, Tok::Word(w) if w == "a}b"));
    }

    #[test]
    fn every_refusal_at_once() {
        let text = "stream { }\nhttp {\n map $a $b { }\n upstream u { least_conn; server 10.0.0.1 backup; server 10.0.0.2 slow_start=3s; zone z 64k; }\n server {\n  listen 80 ssl;\n  rewrite ^ /x;\n  location /health { return 200; }\n  location ~ \\.php$ { }\n  location / {\n   proxy_pass http://u/api/;\n   proxy_cache c;\n   proxy_request_buffering maybe;\n   proxy_set_header X-User $remote_user;\n   frobnicate on;\n   proxy_read_timeout 0;\n  }\n }\n server { listen 81; location / { proxy_pass https://10.0.0.9/; } }\n}\n";
        let p = refused(text);
        let want = [
            "nginx.conf:1: `stream` is not supported",
            "nginx.conf:3: `map $a $b` is not supported",
            "nginx.conf:4: `least_conn`: only round robin and `hash $request_uri consistent`",
            "nginx.conf:4: `server 10.0.0.1`: parameter `backup` is not supported",
            "nginx.conf:4: `server 10.0.0.2`: parameter `slow_start=3s` is not supported",
            "nginx.conf:4: `zone z 64k` is not supported",
            "nginx.conf:6: `listen` parameter `ssl` is not supported",
            "nginx.conf:7: `rewrite ^ /x` is not supported",
            "nginx.conf:8: `location /health`: only `location /`",
            "nginx.conf:9: `location ~ \\.php$`: only `location /`",
            "nginx.conf:11: `proxy_pass http://u/api/`: the URI `/api/`",
            "nginx.conf:12: `proxy_cache c` is not supported",
            "nginx.conf:13: `proxy_request_buffering maybe`: invalid value",
            "nginx.conf:14: `proxy_set_header X-User $remote_user` uses variables",
            "nginx.conf:15: `frobnicate` is unknown",
            "nginx.conf:16: `proxy_read_timeout 0`: a zero timeout is not supported",
            "nginx.conf:19: `proxy_pass https://10.0.0.9/`: https upstreams are not supported",
        ];
        for w in want {
            assert!(has(&p, w), "missing {w:?} in:\n{}", p.join("\n"));
        }
        assert_eq!(p.len(), want.len(), "{}", p.join("\n"));
        let shown = ImportError { problems: p.clone() }.to_string();
        assert_eq!(shown.lines().count(), p.len());
    }

    #[test]
    fn max_fails_rule() {
        // No max_fails anywhere: nginx's 1 goes on the pool, with a note.
        let t = ok(&conf("server 10.0.0.1; server 10.0.0.2:81;", "proxy_pass http://u/;"));
        assert!(body(&t).contains("servers = [\"10.0.0.1:80\", \"10.0.0.2:81\"]"));
        assert!(t.toml.ends_with("\"10.0.0.2:81\"]\nmax_fails = 1\n"), "{}", t.toml);
        assert!(has(&t.notes, "nginx default max_fails=1 kept"));
        // Mixed: per server; max_fails=0 stays a plain string.
        let t = ok(&conf(
            "server 10.0.0.1 max_fails=0; server 10.0.0.2; server 10.0.0.3 max_fails=3 fail_timeout=30s;",
            "proxy_pass http://u/;",
        ));
        let want = values(
            "servers = [\"10.0.0.1:80\", { address = \"10.0.0.2:80\", max_fails = 1 }, \
             { address = \"10.0.0.3:80\", max_fails = 3, fail_timeout = \"30s\" }]",
        );
        assert_eq!(pool(&t, "u")["servers"], want["servers"], "{}", t.toml);
        // Same fail_timeout everywhere goes on the pool.
        let t = ok(&conf(
            "server 10.0.0.1 max_fails=2 fail_timeout=1m; server 10.0.0.2 max_fails=2 fail_timeout=60;",
            "proxy_pass http://u/;",
        ));
        assert!(t.toml.contains("max_fails = 2\nfail_timeout = \"60s\"\n"), "{}", t.toml);
        // A lone server is never marked failed by nginx.
        let t = ok(&conf("server 10.0.0.1;", "proxy_pass http://u/;"));
        assert!(!t.toml.contains("max_fails"), "{}", t.toml);
        assert!(has(&t.notes, "lone upstream server"));
    }

    #[test]
    fn weights_and_down() {
        let t = ok(&conf(
            "server 10.0.0.1 weight=5 max_fails=0; server [::1]:8080 max_fails=0 down; server app.example max_fails=0;",
            "proxy_pass http://u/;",
        ));
        let want = values(
            "servers = [{ address = \"10.0.0.1:80\", weight = 5 }, { address = \"[::1]:8080\", down = true }, \
             \"app.example:80\"]",
        );
        assert_eq!(pool(&t, "u")["servers"], want["servers"], "{}", t.toml);
        let p = refused(&conf(
            "server 10.0.0.1 weight=0; server unix:/x.sock; server 10.0.0.3 max_conns=4;",
            "proxy_pass http://u/;",
        ));
        assert_eq!(p.len(), 3, "{p:?}");
    }

    #[test]
    fn keepalive() {
        let up = format!("{TWO} keepalive 16; keepalive_timeout 2m; keepalive_requests 1000;");
        let loc = "proxy_pass http://u/; proxy_http_version 1.1; proxy_set_header Connection \"\";";
        let t = ok(&conf(&up, loc));
        assert_eq!(
            body(&t),
            "[lb.pools.u]\nlisten = \"0.0.0.0:80\"\nservers = [\"10.0.0.1:80\", \"10.0.0.2:80\"]\nkeepalive = true\nkeepalive_connections = 16\nkeepalive_timeout = \"120s\""
        );
        // Without clearing Connection nginx sends `Connection: close`, so nothing is reused.
        let t = ok(&conf(&up, "proxy_pass http://u/; proxy_http_version 1.1;"));
        assert!(!t.toml.contains("keepalive"), "{}", t.toml);
        assert!(has(&t.notes, "nginx.conf:2: upstream `u`: `keepalive 16` has no effect"));
        assert!(has(&t.notes, "pool `u`: `proxy_http_version 1.1` has no effect"));
    }

    #[test]
    fn uri_modes() {
        assert!(!ok(&conf(TWO, "proxy_pass http://u/;")).toml.contains("uri"));
        assert!(ok(&conf(TWO, "proxy_pass http://u;")).toml.contains("uri = \"raw\""));
        assert!(has(&refused(&conf(TWO, "proxy_pass http://u:80/;")), "may not have a port"));
        // The Host nginx sends by default is the proxy_pass host, which is the pool name only for `http://u/`.
        assert!(body(&ok(&conf(TWO, "proxy_pass http://U/;"))).starts_with("[lb.pools.u]\n"));
        assert!(ok(&conf(TWO, "proxy_pass http://U/;")).toml.ends_with("\nhost = \"U\"\n"));
        let t = ok("http {\n server { listen 80; location / { proxy_pass http://10.0.0.1:80/; } }\n}\n");
        assert!(body(&t).ends_with("servers = [\"10.0.0.1:80\"]\nhost = \"10.0.0.1\""), "{}", t.toml);
        let p = refused(
            "http {\n upstream excp.local { server 10.0.0.1; }\n server { listen 80; location / { proxy_pass http://excp.local/; } }\n}\n",
        );
        assert_eq!(p, ["nginx.conf:2: upstream name `excp.local`: pool names are letters, digits, '-' and '_'"]);
    }

    #[test]
    fn syntax_errors() {
        let cases = [
            ("http {\n server {\n listen 80;\n", "nginx.conf:3: unexpected end of file: the block opened on line 2"),
            ("http {\n}\n}\n", "nginx.conf:3: unexpected `}` (no block"),
            (
                "http {\n server {\n  listen 80\n  location / { proxy_pass http://u/; }\n }\n}\n",
                "nginx.conf:3: `listen` is not terminated by `;`",
            ),
            (
                "http {\n server {\n  listen 80\n }\n}\n",
                "nginx.conf:4: unexpected `}`: `listen` on line 3 is missing its `;`",
            ),
            ("events {}\nworker_processes 1", "nginx.conf:2: unexpected end of file: `worker_processes` is missing"),
            ("http {\n proxy_set_header X \"open\n\n", "nginx.conf:2: unterminated quoted string"),
            ("http ;", "nginx.conf:1: `http` has no opening `{`"),
            (";", "nginx.conf:1: unexpected `;`"),
            ("\n{", "nginx.conf:2: unexpected `{`"),
            ("x \"a\"b;", "nginx.conf:1: unexpected `b` after a quoted string"),
        ];
        for (text, want) in cases {
            let p = refused(text);
            assert!(has(&p, want), "{text:?}: want {want:?}, got {p:?}");
        }
        let deep = "http {".repeat(100_000);
        assert!(has(&refused(&deep), "nested too deeply"));
    }

    #[test]
    fn values_and_inheritance() {
        let text = "http {\n proxy_read_timeout 1m30s;\n proxy_connect_timeout 500ms;\n client_max_body_size 2g;\n proxy_next_upstream error timeout http_502 error;\n upstream a { server 10.0.0.1 max_fails=0; server 10.0.0.2 max_fails=0; }\n upstream b { server 10.0.0.3 max_fails=0; server 10.0.0.4 max_fails=0; }\n server { listen 127.0.0.1:80; client_max_body_size 10m; location / { proxy_pass http://a/; proxy_read_timeout 60; } }\n server { listen [::]:81; location / { proxy_pass http://b/; client_body_timeout 2h; } }\n server { listen *:82; location / { proxy_pass http://10.0.0.9:8080/; client_max_body_size 1500; } }\n}\n";
        let t = ok(text);
        let want = r#"[lb]
connect_timeout = "500ms"
next_upstream = ["error", "timeout", "http_502"]

[lb.pools.a]
listen = "127.0.0.1:80"
servers = ["10.0.0.1:80", "10.0.0.2:80"]
max_body_size = "10MiB"

[lb.pools.b]
listen = "[::]:81"
servers = ["10.0.0.3:80", "10.0.0.4:80"]
read_timeout = "90s"
max_body_size = "2GiB"
body_timeout = "7200s"

[lb.pools.p82]
listen = "0.0.0.0:82"
servers = ["10.0.0.9:8080"]
read_timeout = "90s"
max_body_size = "1500"
host = "10.0.0.9:8080""#;
        assert_eq!(body(&t), want);
        assert!(has(&t.notes, "nginx.conf:10: `proxy_pass` to 10.0.0.9:8080: no upstream block"));
        assert!(has(
            &refused(&conf(TWO, "proxy_pass http://u/; client_max_body_size 0;")),
            "nginx.conf:8: `client_max_body_size 0`"
        ));
        assert_eq!(parse_duration("1h30m5s"), Some(5_405_000));
        assert_eq!(parse_duration("1s1m"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(fmt_size(1536), Value::from("1536"));
        assert_eq!(fmt_size(3 << 10), Value::from("3KiB"));
    }

    #[test]
    fn headers() {
        let loc = "proxy_pass http://u/; proxy_set_header Host $host; proxy_set_header X-Real-IP $remote_addr; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Env \"prod\";";
        let t = ok(&conf(TWO, loc));
        let want = values(
            "host = \"$host\"\nx_forwarded_for = true\nx_real_ip = true\nset_headers = { \"X-Env\" = \"prod\" }\n",
        );
        let got = pool(&t, "u");
        for k in ["host", "x_forwarded_for", "x_real_ip", "set_headers"] {
            assert_eq!(got.get(k), want.get(k), "{k}:\n{}", t.toml);
        }
        // A block that sets any header replaces everything inherited, as in nginx.
        let text = "http {\n proxy_set_header X-Real-IP $remote_addr;\n upstream u { server 10.0.0.1; }\n server { listen 80; proxy_set_header Host backend.local; location / { proxy_pass http://u/; } }\n}\n";
        let t = ok(text);
        assert!(t.toml.ends_with("servers = [\"10.0.0.1:80\"]\nhost = \"backend.local\"\n"), "{}", t.toml);
        assert!(has(&t.notes, "nginx.conf:4: pool `u`: `proxy_set_header` here replaces those at nginx.conf:2"));
        let p = refused(&conf(
            TWO,
            "proxy_pass http://u/; proxy_set_header Host $host:$server_port; proxy_set_header X-A \"\"; proxy_set_header Connection upgrade; proxy_set_header X-A b;",
        ));
        assert_eq!(p.len(), 4, "{p:?}");
    }

    #[test]
    fn listeners_and_pools() {
        let two = "http {\n upstream u { server 10.0.0.1; }\n server { listen 80; listen [::]:80; location / { proxy_pass http://u/; } }\n}\n";
        assert!(has(
            &refused(two),
            "nginx.conf:3: server block has 2 `listen` directives (lines 3, 3); one listener per pool: keep only `listen 80;`"
        ));
        let same = "http {\n upstream u { server 10.0.0.1; }\n server { listen 80; location / { proxy_pass http://u/; } }\n server { listen 81; location / { proxy_pass http://u/; } }\n}\n";
        assert!(has(
            &refused(same),
            "nginx.conf:4: upstream `u` is already served by the server block at nginx.conf:3"
        ));
        let clash = "http {\n server { listen 80; location / { proxy_pass http://10.0.0.1/; } }\n server { listen 127.0.0.1:80; location / { proxy_pass http://10.0.0.2/; } }\n}\n";
        assert!(has(&refused(clash), "nginx.conf:3: pools `p80` and `p80` both listen on 127.0.0.1:80"));
        let bad = "http {\n server { listen localhost:80; location / { proxy_pass http://10.0.0.1/; } }\n server { location / { proxy_pass http://10.0.0.1/; } }\n server { listen 82; location / { } }\n server { listen 83; }\n}\n";
        assert_eq!(refused(bad).len(), 4);
        let t = ok(
            "http {\n server { listen 80 default_server backlog=511; server_name x; location / { proxy_pass http://10.0.0.1/; } }\n}\n",
        );
        assert!(has(&t.notes, "`default_server` ignored") && has(&t.notes, "`server_name` ignored"));
        assert!(has(&refused("events {}\n"), "no `http` block"));
    }

    #[test]
    fn mutated_input_never_panics() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rnd = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n.max(1) as u64) as usize
        };
        let spice = b"{};\"'\\#$ \n*:[]=/0";
        for round in 0..400 {
            let mut b = SAMPLE.as_bytes().to_vec();
            for _ in 0..1 + rnd(6) {
                let i = rnd(b.len());
                match rnd(4) {
                    0 => {
                        let end = (i + rnd(20)).min(b.len());
                        b.drain(i..end);
                    }
                    1 => b.insert(i, spice[rnd(spice.len())]),
                    2 => b.insert(i, rnd(256) as u8),
                    _ => {
                        let end = (i + rnd(40)).min(b.len());
                        let chunk = b[i..end].to_vec();
                        let at = rnd(b.len());
                        b.splice(at..at, chunk);
                    }
                }
            }
            let text = String::from_utf8_lossy(&b);
            if let Err(e) = translate_str(&text, &nowhere(), "fuzz.conf") {
                assert!(!e.problems.is_empty(), "round {round}");
            }
        }
    }
}
