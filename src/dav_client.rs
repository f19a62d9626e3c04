//! The WebDAV client exrp uses on the recording store: claims (LOCK), job state in dead
//! properties (PROPPATCH), scans (PROPFIND), streamed GET and DELETE, against our webdav role
//! and Apache mod_dav alike.
//!
//! What the two servers do differently, and how this client copes (measured by
//! `tests/it/dav_client.rs`):
//!
//! - Lock tokens are `urn:uuid:…` (ours, dav-server) or `opaquelocktoken:…` (Apache); both are
//!   treated as opaque text.
//! - A LOCK of an absent URL creates an empty file (ours, 201) or a lock-null resource (Apache,
//!   200). `lock` sends `If-Match: *`, which both answer with 412 for an absent file.
//! - DELETE of a locked file with an untagged `If: (<token>)` gets 424 from Apache, which also
//!   applies an untagged list to the parent collection; a list tagged with the file's absolute
//!   URL works on both (ours answers 404 to a tag that is only a path). PROPPATCH and a LOCK
//!   refresh take the untagged form on both.
//! - UNLOCK with a token the file does not hold: 400 (Apache) or 409 (ours).
//! - lockdiscovery lists each active lock with its token and the `<D:owner>` as sent (ours and
//!   Apache alike, to any authenticated client): `lock_owned_by` finds a lock by owner.
//! - Timeouts are whole seconds on both. Apache keeps the expiry as a `time_t`, so a lock of N
//!   seconds ends between N-1 and N seconds later; ours honours at least 1 s and at most its
//!   `lock_max_timeout`.
//! - A write with a token of a lock that has ended, on a file nobody else locked: 412 from
//!   both (ours since the vendored engine's patch).
//! - Multistatus answers: Apache prefixes `lp1:`, `ns0:`… and pretty-prints; dav-server writes
//!   `D:` and declares our namespace on every element. Both percent-encode hrefs as paths.
//!   Properties are asked for with `allprop`: there is no other way to learn every name in our
//!   namespace.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use md5::{Digest, Md5};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use tokio::io::AsyncWriteExt;
use xml::reader::XmlEvent;
use xmltree::{Element, XMLNode};

use crate::config::Secret;
use crate::http::client::{ClientError, HttpClient, full_body};

/// Namespace of our dead properties.
pub const NS: &str = "urn:exec-allinone:exrp";

/// A multistatus answer larger than this is refused (about 200,000 files on either server).
pub const MAX_MULTISTATUS: usize = 64 << 20;
/// Answers whose body only explains an error.
const MAX_SMALL: usize = 64 << 10;

/// Everything but RFC 3986's unreserved characters is escaped in a name.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

#[derive(Debug, thiserror::Error)]
pub enum DavError {
    #[error("refused name {0:?}: one path segment, not empty, no '/', '..' or NUL")]
    BadName(String),
    /// A property name or value this client will not send (not an XML name, or characters
    /// XML 1.0 cannot carry).
    #[error("refused property: {0}")]
    BadValue(String),
    #[error("no such file in the store")]
    Missing,
    #[error("the file is locked by someone else")]
    Locked,
    #[error("the lock is no longer held")]
    LockLost,
    #[error("the file is larger than {0} bytes")]
    TooLarge(u64),
    /// Connect error, timeout, 5xx, 507: the store is not usable now; try again later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// 401/403/other 4xx or an answer we cannot parse: a configuration or protocol problem.
    #[error("store refused the request: {status} {detail}")]
    Refused { status: u16, detail: String },
    /// Writing the local copy in `fetch` failed.
    #[error("local file: {0}")]
    Local(#[source] std::io::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lock {
    Held {
        token: String,
    },
    /// 423: someone else holds it.
    Busy,
    /// 405 or 501: a store without locking.
    Unsupported,
    /// 404, or 412 to `If-Match: *`: the file is not there.
    Missing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// The decoded last path segment.
    pub name: String,
    pub size: u64,
    pub modified: Option<SystemTime>,
    /// An active lock is listed in lockdiscovery.
    pub locked: bool,
    /// The active locks lockdiscovery lists, with their tokens and owners.
    pub locks: Vec<ActiveLock>,
    /// Our dead properties: local name in [`NS`] → text.
    pub props: BTreeMap<String, String>,
}

/// One `<D:activelock>` of a lockdiscovery. Both stores list the token to any client that may
/// read the file (RFC 4918 leaves it to them; a store that hides it gives None).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveLock {
    /// `<D:locktoken><D:href>`.
    pub token: Option<String>,
    /// The text of `<D:owner>`, trimmed: exrp sends its instance name there.
    pub owner: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub len: u64,
    pub md5: [u8; 16],
    /// Where the bytes are: in memory up to the caller's bound, else in the spool file.
    pub body: FetchedBody,
}

/// Where a fetched file's bytes are (exrp hands them on to its sink as they are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchedBody {
    Memory(Bytes),
    /// The `dest` given to `fetch`.
    File(std::path::PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Deleted,
    Absent,
}

/// One WebDAV collection, reached with Basic auth. Cheap to clone.
#[derive(Clone)]
pub struct DavClient {
    http: HttpClient,
    /// No trailing slash.
    base: String,
    /// The decoded path of the collection, no trailing slash: what a multistatus names it.
    base_path: String,
    authorization: String,
    request_timeout: Duration,
}

impl std::fmt::Debug for DavClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DavClient").field("base", &self.base).finish_non_exhaustive()
    }
}

impl DavClient {
    /// `collection_url` like "http://127.0.0.1:8081/recordings" (no trailing slash); Basic auth on every request.
    pub fn new(
        collection_url: &str,
        username: &str,
        password: &Secret,
        http: HttpClient,
        request_timeout: Duration,
    ) -> DavClient {
        use base64::Engine;
        let base = collection_url.trim_end_matches('/').to_string();
        let base_path = decode(url_path(&base)).trim_end_matches('/').to_string();
        let credentials = format!("{username}:{}", password.expose());
        let authorization = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(credentials));
        DavClient { http, base, base_path, authorization, request_timeout }
    }

    /// The URL of one file; `name` is a single path segment, percent-encoded here. A name with
    /// '/', "..", NUL or empty is refused (DavError::BadName) — never sent.
    pub fn file_url(&self, name: &str) -> Result<String, DavError> {
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(DavError::BadName(name.to_string()));
        }
        Ok(format!("{}/{}", self.base, utf8_percent_encode(name, SEGMENT)))
    }

    /// Exclusive write LOCK, Depth 0, Timeout: Second-N (N rounded up, at least 1), with `owner`
    /// in <D:owner>. Lock-Token from the response header. Never creates the file: an absent one
    /// is `Lock::Missing`.
    pub async fn lock(&self, name: &str, timeout: Duration, owner: &str) -> Result<Lock, DavError> {
        let url = self.file_url(name)?;
        check_text("owner", owner)?;
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<D:lockinfo xmlns:D=\"DAV:\"><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype><D:owner>{}</D:owner></D:lockinfo>",
            escape(owner)
        );
        let seconds = timeout_header(timeout);
        let headers = [
            ("depth", "0"),
            ("timeout", seconds.as_str()),
            ("if-match", "*"),
            ("content-type", "application/xml; charset=utf-8"),
        ];
        let reply = self.send("LOCK", &url, &headers, Bytes::from(body), MAX_SMALL).await?;
        match reply.status.as_u16() {
            200 | 201 => {}
            423 => return Ok(Lock::Busy),
            405 | 501 => return Ok(Lock::Unsupported),
            404 | 412 => return Ok(Lock::Missing),
            _ => return Err(failure(&reply)),
        }
        let token = reply
            .headers
            .get("lock-token")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().trim_start_matches('<').trim_end_matches('>').to_string())
            .filter(|t| valid_token(t))
            .ok_or_else(|| refused(reply.status.as_u16(), "LOCK answered without a usable Lock-Token"))?;
        if reply.status == StatusCode::CREATED {
            // A store that ignored If-Match made an empty file to hold the lock; it is not a
            // recording, so take it away again.
            let _ = self.delete(name, Some(&token)).await;
            return Ok(Lock::Missing);
        }
        Ok(Lock::Held { token })
    }

    /// Extends a lock we hold: LOCK with If: (<token>), no body. `LockLost` once it has ended.
    pub async fn refresh(&self, name: &str, token: &str, timeout: Duration) -> Result<(), DavError> {
        let url = self.file_url(name)?;
        let condition = untagged(token)?;
        let seconds = timeout_header(timeout);
        let headers = [("if", condition.as_str()), ("timeout", seconds.as_str())];
        let reply = self.send("LOCK", &url, &headers, Bytes::new(), MAX_SMALL).await?;
        match reply.status.as_u16() {
            200 => Ok(()),
            412 | 423 => Err(DavError::LockLost),
            _ => Err(failure(&reply)),
        }
    }

    /// Releases a lock: 204. A token the file no longer holds (400 from Apache, 409 from ours,
    /// 412) is `LockLost`.
    pub async fn unlock(&self, name: &str, token: &str) -> Result<(), DavError> {
        let url = self.file_url(name)?;
        if !valid_token(token) {
            return Err(DavError::LockLost);
        }
        let header = format!("<{token}>");
        let reply = self.send("UNLOCK", &url, &[("lock-token", header.as_str())], Bytes::new(), MAX_SMALL).await?;
        match reply.status.as_u16() {
            200 | 204 => Ok(()),
            400 | 409 | 412 => Err(DavError::LockLost),
            _ => Err(failure(&reply)),
        }
    }

    /// PROPFIND Depth 0 for size, last-modified, lockdiscovery and our dead properties (all of
    /// them in NS). None when the file is absent (404).
    pub async fn stat(&self, name: &str) -> Result<Option<FileInfo>, DavError> {
        let url = self.file_url(name)?;
        let reply = self.propfind(&url, "0", ALLPROP, MAX_SMALL.max(1 << 20)).await?;
        match reply.status.as_u16() {
            207 => {}
            404 => return Ok(None),
            _ => return Err(failure(&reply)),
        }
        let entries = parse_multistatus(&reply.body)?;
        let entry = entries.into_iter().next().ok_or_else(|| refused(207, "PROPFIND answered no resource"))?;
        if entry.status == Some(404) {
            return Ok(None);
        }
        if entry.collection {
            return Err(refused(207, format!("{name} is a collection")));
        }
        Ok(Some(entry.info))
    }

    /// The token of a lock `owner` holds on the file, from its lockdiscovery (PROPFIND). This is
    /// how an exrp instance takes back a claim that a killed run of itself made but never
    /// recorded, which is only sound while instance names are unique. None when the file is
    /// absent, not locked, locked by another owner, or the store does not show the token.
    pub async fn lock_owned_by(&self, name: &str, owner: &str) -> Result<Option<String>, DavError> {
        let Some(info) = self.stat(name).await? else { return Ok(None) };
        Ok(info.locks.into_iter().filter(|l| l.owner.as_deref() == Some(owner)).find_map(|l| l.token))
    }

    /// PROPPATCH: set each (local name in NS, text value — JSON strings, XML-escaped) and
    /// remove the listed ones, with If: (<token>) when a token is given. Must succeed as a
    /// whole (207 with every propstat 200) or error. Nothing to set or remove sends nothing.
    pub async fn set_props(
        &self,
        name: &str,
        token: Option<&str>,
        set: &[(&str, &str)],
        remove: &[&str],
    ) -> Result<(), DavError> {
        let url = self.file_url(name)?;
        if set.is_empty() && remove.is_empty() {
            return Ok(());
        }
        let mut body =
            format!("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<D:propertyupdate xmlns:D=\"DAV:\" xmlns:x=\"{NS}\">");
        if !set.is_empty() {
            body.push_str("<D:set><D:prop>");
            for (key, value) in set {
                check_prop_name(key)?;
                check_text(key, value)?;
                body.push_str(&format!("<x:{key}>{}</x:{key}>", escape(value)));
            }
            body.push_str("</D:prop></D:set>");
        }
        if !remove.is_empty() {
            body.push_str("<D:remove><D:prop>");
            for key in remove {
                check_prop_name(key)?;
                body.push_str(&format!("<x:{key}/>"));
            }
            body.push_str("</D:prop></D:remove>");
        }
        body.push_str("</D:propertyupdate>");
        let condition = token.map(untagged).transpose()?;
        let mut headers = vec![("content-type", "application/xml; charset=utf-8")];
        if let Some(c) = &condition {
            headers.push(("if", c.as_str()));
        }
        let reply = self.send("PROPPATCH", &url, &headers, Bytes::from(body), MAX_SMALL.max(1 << 20)).await?;
        if reply.status.as_u16() != 207 {
            return Err(failure(&reply));
        }
        let entries = parse_multistatus(&reply.body)?;
        if entries.is_empty() {
            return Err(refused(207, "PROPPATCH answered no resource"));
        }
        let failed: Vec<(u16, String)> = entries
            .iter()
            .flat_map(|e| e.statuses.iter().cloned().chain(e.status.map(|s| (s, String::new()))))
            .filter(|(status, _)| *status != 200)
            .collect();
        // 424 only says another property failed; report the one that did.
        match failed.iter().find(|(s, _)| *s != 424).or(failed.first()) {
            None => Ok(()),
            Some((status, prop)) => {
                Err(status_error(*status).unwrap_or_else(|| refused(*status, format!("PROPPATCH of {prop:?} failed"))))
            }
        }
    }

    /// PROPFIND Depth 1 on the collection: its files (not sub-collections, not the collection
    /// itself) with the same fields as `stat`. The answer is bounded by [`MAX_MULTISTATUS`].
    pub async fn list(&self) -> Result<Vec<FileInfo>, DavError> {
        let url = format!("{}/", self.base);
        let reply = self.propfind(&url, "1", ALLPROP, MAX_MULTISTATUS).await?;
        if reply.status.as_u16() != 207 {
            return Err(failure(&reply));
        }
        let entries = parse_multistatus(&reply.body)?;
        Ok(entries
            .into_iter()
            .filter(|e| !e.collection && e.status.is_none_or(|s| s == 200))
            .filter(|e| e.path.trim_end_matches('/') != self.base_path)
            .map(|e| e.info)
            .collect())
    }

    /// GET of at most `max` bytes within `transfer_timeout`, kept in memory while it is no
    /// larger than `in_memory`, else streamed into `dest` (created/truncated, not fsynced);
    /// returns the length and MD5 and where the bytes are. A small file thus costs no file of
    /// its own: most recordings are short, and every file created and removed is work for the
    /// file system. A larger file is `TooLarge` (with the announced length when there is one)
    /// and leaves at most `max` bytes in `dest`: on any error the caller removes `dest`.
    pub async fn fetch(
        &self,
        name: &str,
        dest: &Path,
        max: u64,
        in_memory: u64,
        transfer_timeout: Duration,
    ) -> Result<Fetched, DavError> {
        let url = self.file_url(name)?;
        let transfer = async {
            let headers = [("authorization", self.authorization.as_str())];
            let head_timeout = self.request_timeout.min(transfer_timeout);
            let response = self
                .http
                .stream(Method::GET, &url, &headers, full_body(Bytes::new()), 0, head_timeout)
                .await
                .map_err(client_error)?;
            let status = response.status().as_u16();
            if status != 200 {
                let (parts, body) = response.into_parts();
                let body = http_body_util::Limited::new(body, MAX_SMALL).collect().await.map(|c| c.to_bytes());
                let reply = crate::http::client::Reply {
                    status: parts.status,
                    headers: parts.headers,
                    body: body.unwrap_or_default(),
                };
                return Err(failure(&reply));
            }
            let announced = response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if let Some(len) = announced.filter(|len| *len > max) {
                if len > in_memory {
                    // What the caller removes on error exists, as for any other failure.
                    tokio::fs::File::create(dest).await.map_err(DavError::Local)?;
                }
                return Err(DavError::TooLarge(len));
            }
            let in_memory = in_memory.min(max);
            let mut held = bytes::BytesMut::with_capacity(announced.unwrap_or(0).min(in_memory) as usize);
            let mut out: Option<tokio::io::BufWriter<tokio::fs::File>> = None;
            let mut body = response.into_body();
            let mut md5 = Md5::new();
            let mut len: u64 = 0;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| DavError::Unavailable(format!("GET {url}: {e}")))?;
                let Ok(data) = frame.into_data() else { continue };
                len += data.len() as u64;
                if out.is_none() && len > in_memory {
                    let file = tokio::fs::File::create(dest).await.map_err(DavError::Local)?;
                    let mut w = tokio::io::BufWriter::with_capacity(256 << 10, file);
                    w.write_all(&held).await.map_err(DavError::Local)?;
                    held = bytes::BytesMut::new();
                    out = Some(w);
                }
                if len > max {
                    if let Some(w) = &mut out {
                        w.flush().await.map_err(DavError::Local)?;
                    }
                    return Err(DavError::TooLarge(announced.unwrap_or(len)));
                }
                md5.update(&data);
                match &mut out {
                    Some(w) => w.write_all(&data).await.map_err(DavError::Local)?,
                    None => held.extend_from_slice(&data),
                }
            }
            let body = match out {
                Some(mut w) => {
                    w.flush().await.map_err(DavError::Local)?;
                    FetchedBody::File(dest.to_path_buf())
                }
                None => FetchedBody::Memory(held.freeze()),
            };
            Ok(Fetched { len, md5: md5.finalize().into(), body })
        };
        match tokio::time::timeout(transfer_timeout, transfer).await {
            Ok(result) => result,
            Err(_) => Err(DavError::Unavailable(format!("GET {url}: not complete within {transfer_timeout:?}"))),
        }
    }

    /// DELETE, with `If: <url> (<token>)` when a token is given (the tagged form: Apache applies
    /// an untagged list to the parent collection too). 204/200 → Deleted, 404 → Absent.
    pub async fn delete(&self, name: &str, token: Option<&str>) -> Result<Deleted, DavError> {
        let url = self.file_url(name)?;
        let condition = match token {
            Some(t) if valid_token(t) => Some(format!("<{url}> (<{t}>)")),
            Some(_) => return Err(DavError::LockLost),
            None => None,
        };
        let headers: Vec<(&str, &str)> = condition.iter().map(|c| ("if", c.as_str())).collect();
        let reply = self.send("DELETE", &url, &headers, Bytes::new(), MAX_SMALL).await?;
        match reply.status.as_u16() {
            200 | 204 => Ok(Deleted::Deleted),
            404 => Ok(Deleted::Absent),
            _ => Err(failure(&reply)),
        }
    }

    /// PROPFIND Depth 0 on the collection itself: Ok when the store answers with our
    /// credentials (health check).
    pub async fn ping(&self) -> Result<(), DavError> {
        let url = format!("{}/", self.base);
        let body = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<D:propfind xmlns:D=\"DAV:\"><D:prop><D:resourcetype/></D:prop></D:propfind>";
        let reply = self.propfind(&url, "0", body, MAX_SMALL.max(1 << 20)).await?;
        match reply.status.as_u16() {
            207 => Ok(()),
            // A collection that is not there is a configuration problem, not a missing file.
            404 => Err(refused(404, format!("no collection at {url}"))),
            _ => Err(failure(&reply)),
        }
    }

    async fn propfind(
        &self,
        url: &str,
        depth: &str,
        body: &'static str,
        max: usize,
    ) -> Result<crate::http::client::Reply, DavError> {
        let headers = [("depth", depth), ("content-type", "application/xml; charset=utf-8")];
        self.send("PROPFIND", url, &headers, Bytes::from_static(body.as_bytes()), max).await
    }

    async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        max: usize,
    ) -> Result<crate::http::client::Reply, DavError> {
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| refused(0, format!("bad method {method}")))?;
        let mut all = Vec::with_capacity(headers.len() + 1);
        all.push(("authorization", self.authorization.as_str()));
        all.extend_from_slice(headers);
        self.http.send(method, url, &all, body, self.request_timeout, max).await.map_err(client_error)
    }
}

const ALLPROP: &str =
    "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<D:propfind xmlns:D=\"DAV:\"><D:allprop/></D:propfind>";

fn client_error(err: ClientError) -> DavError {
    match err {
        ClientError::Connect { .. } | ClientError::Timeout(_) | ClientError::Http(_) => {
            DavError::Unavailable(err.to_string())
        }
        ClientError::TooLarge(_) | ClientError::Url(_) => refused(0, err.to_string()),
    }
}

fn refused(status: u16, detail: impl Into<String>) -> DavError {
    DavError::Refused { status, detail: detail.into() }
}

/// The errors every operation shares; None for a status that needs the caller's context.
fn status_error(status: u16) -> Option<DavError> {
    match status {
        404 => Some(DavError::Missing),
        423 => Some(DavError::Locked),
        412 => Some(DavError::LockLost),
        500..=599 => Some(DavError::Unavailable(format!("store answered {status}"))),
        _ => None,
    }
}

fn failure(reply: &crate::http::client::Reply) -> DavError {
    let status = reply.status.as_u16();
    status_error(status).unwrap_or_else(|| {
        let text = String::from_utf8_lossy(&reply.body[..reply.body.len().min(200)]).trim().to_string();
        let detail = match reply.status.canonical_reason() {
            Some(reason) if text.is_empty() => reason.to_string(),
            Some(reason) => format!("{reason}: {}", crate::telemetry::escape(&text)),
            None => crate::telemetry::escape(&text).to_string(),
        };
        refused(status, detail)
    })
}

fn timeout_header(timeout: Duration) -> String {
    let seconds = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    format!("Second-{}", seconds.max(1))
}

/// Lock tokens are URIs (RFC 4918 §6.5): visible ASCII without the brackets that delimit them.
fn valid_token(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>')
}

fn untagged(token: &str) -> Result<String, DavError> {
    if valid_token(token) { Ok(format!("(<{token}>)")) } else { Err(DavError::LockLost) }
}

/// An XML name we can write unprefixed-safe as `x:name`: ASCII letters, digits, '-', '_', '.'.
fn check_prop_name(name: &str) -> Result<(), DavError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(()) } else { Err(DavError::BadValue(format!("{name:?} is not a property name"))) }
}

/// XML 1.0 carries no control character but tab and newline through a round trip (a CR is
/// turned into a newline by every parser).
fn check_text(what: &str, text: &str) -> Result<(), DavError> {
    if text.chars().any(|c| (c.is_control() && c != '\t' && c != '\n') || matches!(c, '\u{FFFE}' | '\u{FFFF}')) {
        return Err(DavError::BadValue(format!("{what}: a control character XML cannot carry")));
    }
    Ok(())
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The path of an absolute URL (or the text itself when it is a path already).
fn url_path(url: &str) -> &str {
    let rest = match url.find("://") {
        Some(i) => &url[i + 3..],
        None => return url,
    };
    rest.find('/').map_or("/", |i| &rest[i..])
}

fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// One `<D:response>` of a multistatus.
#[derive(Debug)]
struct Entry {
    /// The decoded path of the href.
    path: String,
    collection: bool,
    /// A `<D:status>` of the response itself (RFC 4918's form without propstat).
    status: Option<u16>,
    /// (status, property name) of every property in every propstat.
    statuses: Vec<(u16, String)>,
    info: FileInfo,
}

/// Parses a multistatus one `<D:response>` at a time: only the properties of the response at
/// hand are held as element trees. A tree of the whole answer costs about 25 KiB per file
/// (the parser gives every element its own copy of the namespace map, and dav-server declares
/// ours on each), so a scan of 2,000 files took 50 MB of short-lived small allocations, which
/// glibc's malloc keeps resident in the arena of whichever thread parsed it (bench/README.md,
/// exrp memory).
fn parse_multistatus(body: &[u8]) -> Result<Vec<Entry>, DavError> {
    let config = xml::ParserConfig::new().whitespace_to_characters(true).cdata_to_characters(true);
    let mut r = config.create_reader(body);
    let mut entries = Vec::new();
    let mut root_seen = false;
    loop {
        match next_event(&mut r)? {
            XmlEvent::StartElement { name, .. } if !root_seen => {
                root_seen = true;
                if !is_dav_name(&name, "multistatus") {
                    return Err(refused(207, format!("expected a multistatus, got <{}>", name.local_name)));
                }
                while let Some(child) = next_child(&mut r)? {
                    if is_dav_name(&child, "response") {
                        entries.push(parse_response(&mut r)?);
                    } else {
                        skip_element(&mut r)?;
                    }
                }
            }
            XmlEvent::EndDocument if root_seen => return Ok(entries),
            XmlEvent::EndDocument => return Err(cut_short()),
            _ => {}
        }
    }
}

type XmlReader<'a> = xml::EventReader<&'a [u8]>;

fn next_event(r: &mut XmlReader<'_>) -> Result<XmlEvent, DavError> {
    r.next().map_err(|e| match e.kind() {
        xml::reader::ErrorKind::UnexpectedEof => cut_short(),
        // xml-rs reports an empty or cut document as a syntax error of this wording.
        _ if e.to_string().contains("Unexpected end of stream") => cut_short(),
        _ => refused(207, format!("unparsable multistatus: {e}")),
    })
}

/// A 207 whose body ends before its XML does: what a store that failed half way through the
/// answer sends (a front end killed, its engine unreachable), not a refusal; tried again.
fn cut_short() -> DavError {
    DavError::Unavailable("the store's multistatus answer ended before its XML did".into())
}

/// The next child element of the element being read (its start tag consumed), or None at its
/// end tag. Text between children is dropped.
fn next_child(r: &mut XmlReader<'_>) -> Result<Option<xml::name::OwnedName>, DavError> {
    loop {
        match next_event(r)? {
            XmlEvent::StartElement { name, .. } => return Ok(Some(name)),
            XmlEvent::EndElement { .. } => return Ok(None),
            XmlEvent::EndDocument => return Err(cut_short()),
            _ => {}
        }
    }
}

/// Reads past the end of the element whose start tag was just consumed.
fn skip_element(r: &mut XmlReader<'_>) -> Result<(), DavError> {
    let mut depth = 1usize;
    while depth > 0 {
        match next_event(r)? {
            XmlEvent::StartElement { .. } => depth += 1,
            XmlEvent::EndElement { .. } => depth -= 1,
            XmlEvent::EndDocument => return Err(cut_short()),
            _ => {}
        }
    }
    Ok(())
}

/// The text directly inside the element whose start tag was just consumed (as [`text`]);
/// child elements are skipped.
fn element_text(r: &mut XmlReader<'_>) -> Result<String, DavError> {
    let mut out = String::new();
    loop {
        match next_event(r)? {
            XmlEvent::Characters(t) | XmlEvent::CData(t) | XmlEvent::Whitespace(t) => out.push_str(&t),
            XmlEvent::StartElement { .. } => skip_element(r)?,
            XmlEvent::EndElement { .. } => return Ok(out),
            XmlEvent::EndDocument => return Err(cut_short()),
            _ => {}
        }
    }
}

/// The element whose start tag was just consumed, as a tree (without attributes or
/// namespace declarations: nothing here reads them).
fn element_tree(r: &mut XmlReader<'_>, name: xml::name::OwnedName) -> Result<Element, DavError> {
    let mut e = Element::new(&name.local_name);
    e.namespace = name.namespace;
    e.prefix = name.prefix;
    loop {
        match next_event(r)? {
            XmlEvent::Characters(t) | XmlEvent::Whitespace(t) => e.children.push(XMLNode::Text(t)),
            XmlEvent::CData(t) => e.children.push(XMLNode::CData(t)),
            XmlEvent::StartElement { name, .. } => {
                let child = element_tree(r, name)?;
                e.children.push(XMLNode::Element(child));
            }
            XmlEvent::EndElement { .. } => return Ok(e),
            XmlEvent::EndDocument => return Err(cut_short()),
            _ => {}
        }
    }
}

/// One `<D:response>`, its start tag consumed: the first href and status, every propstat.
fn parse_response(r: &mut XmlReader<'_>) -> Result<Entry, DavError> {
    let mut href: Option<String> = None;
    let mut status: Option<Option<u16>> = None;
    // (status of the propstat, its properties in document order)
    let mut propstats: Vec<(u16, Vec<Element>)> = Vec::new();
    while let Some(child) = next_child(r)? {
        if is_dav_name(&child, "href") {
            let t = element_text(r)?;
            href.get_or_insert(t);
        } else if is_dav_name(&child, "status") {
            let t = element_text(r)?;
            status.get_or_insert_with(|| status_code(&t));
        } else if is_dav_name(&child, "propstat") {
            propstats.push(parse_propstat(r)?);
        } else {
            skip_element(r)?;
        }
    }
    let href = href.ok_or_else(|| refused(207, "a response without href"))?;
    let path = decode(url_path(href.trim()));
    let name = path.trim_end_matches('/').rsplit('/').next().unwrap_or_default().to_string();
    let mut entry = Entry {
        collection: href.trim().ends_with('/'),
        path,
        status: status.flatten(),
        statuses: Vec::new(),
        info: FileInfo { name, size: 0, modified: None, locked: false, locks: Vec::new(), props: BTreeMap::new() },
    };
    for (code, props) in propstats {
        for p in props {
            if code == 200 {
                read_prop(&mut entry, &p);
            }
            entry.statuses.push((code, p.name));
        }
    }
    Ok(entry)
}

/// One `<D:propstat>`, its start tag consumed: its first status (0 if none) and the
/// properties of its `<D:prop>` elements.
fn parse_propstat(r: &mut XmlReader<'_>) -> Result<(u16, Vec<Element>), DavError> {
    let mut code: Option<u16> = None;
    let mut seen_status = false;
    let mut props = Vec::new();
    while let Some(child) = next_child(r)? {
        if is_dav_name(&child, "status") {
            let t = element_text(r)?;
            if !seen_status {
                seen_status = true;
                code = status_code(&t);
            }
        } else if is_dav_name(&child, "prop") {
            while let Some(p) = next_child(r)? {
                props.push(element_tree(r, p)?);
            }
        } else {
            skip_element(r)?;
        }
    }
    Ok((code.unwrap_or(0), props))
}

fn is_dav_name(name: &xml::name::OwnedName, local: &str) -> bool {
    name.namespace.as_deref() == Some("DAV:") && name.local_name == local
}

fn read_prop(entry: &mut Entry, p: &Element) {
    match p.namespace.as_deref() {
        Some("DAV:") => match p.name.as_str() {
            "getcontentlength" => entry.info.size = text(p).trim().parse().unwrap_or(0),
            "getlastmodified" => entry.info.modified = parse_http_date(text(p).trim()),
            "resourcetype" => entry.collection |= dav_children(p, "collection").next().is_some(),
            "lockdiscovery" => {
                for active in dav_children(p, "activelock") {
                    entry.info.locked = true;
                    let token = dav_children(active, "locktoken")
                        .flat_map(|t| dav_children(t, "href"))
                        .map(|h| text(h).trim().to_string())
                        .find(|t| valid_token(t));
                    let owner = dav_children(active, "owner").next().map(|o| all_text(o).trim().to_string());
                    entry.info.locks.push(ActiveLock { token, owner: owner.filter(|o| !o.is_empty()) });
                }
            }
            _ => {}
        },
        Some(NS) => {
            entry.info.props.insert(p.name.clone(), text(p));
        }
        _ => {}
    }
}

fn is_dav(e: &Element, name: &str) -> bool {
    e.namespace.as_deref() == Some("DAV:") && e.name == name
}

fn elements(e: &Element) -> impl Iterator<Item = &Element> {
    e.children.iter().filter_map(XMLNode::as_element)
}

fn dav_children<'a>(e: &'a Element, name: &'a str) -> impl Iterator<Item = &'a Element> {
    elements(e).filter(move |c| is_dav(c, name))
}

/// The text of an element, entities resolved (whitespace kept: it may be part of a value).
fn text(e: &Element) -> String {
    e.get_text().map(|t| t.into_owned()).unwrap_or_default()
}

/// Every text below an element, in document order: an owner may wrap its text in elements
/// (`<D:href>` is common).
fn all_text(e: &Element) -> String {
    let mut out = String::new();
    for child in &e.children {
        match child {
            XMLNode::Text(t) | XMLNode::CData(t) => out.push_str(t),
            XMLNode::Element(inner) => out.push_str(&all_text(inner)),
            _ => {}
        }
    }
    out
}

/// "HTTP/1.1 200 OK" → 200.
fn status_code(line: &str) -> Option<u16> {
    line.split_whitespace().nth(1)?.parse().ok()
}

/// An HTTP date (getlastmodified is one): the `httpdate` crate's parser, the one the lb's
/// `Date` header is formatted by.
fn parse_http_date(text: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> DavClient {
        DavClient::new(
            "http://127.0.0.1:1/rec%20ordings/",
            "u",
            &Secret::new("p"),
            HttpClient::plain(),
            Duration::from_secs(1),
        )
    }

    #[test]
    fn names_are_one_encoded_segment() {
        let c = client();
        assert_eq!(
            c.file_url("011AP_2025-01-01_10%3A00%3A00.opus").unwrap(),
            "http://127.0.0.1:1/rec%20ordings/011AP_2025-01-01_10%253A00%253A00.opus"
        );
        assert_eq!(c.file_url("a b#é~-_.x").unwrap(), "http://127.0.0.1:1/rec%20ordings/a%20b%23%C3%A9~-_.x");
        for bad in ["", ".", "..", "a/b", "/", "a\0b"] {
            assert!(matches!(c.file_url(bad), Err(DavError::BadName(_))), "{bad:?}");
        }
        assert_eq!(c.base_path, "/rec ordings");
    }

    #[test]
    fn a_multistatus_cut_short_is_tried_again_garbage_is_refused() {
        let whole = br#"<?xml version="1.0"?><D:multistatus xmlns:D="DAV:"><D:response><D:href>/r/a</D:href></D:response></D:multistatus>"#;
        assert_eq!(parse_multistatus(whole).unwrap().len(), 1);
        for cut in [&whole[..0], &whole[..60], &whole[..whole.len() - 5]] {
            assert!(
                matches!(parse_multistatus(cut), Err(DavError::Unavailable(_))),
                "{:?}",
                String::from_utf8_lossy(cut)
            );
        }
        for garbage in [&b"<html>nope</html>"[..], b"<D:multistatus xmlns:D=\"DAV:\"><<</D:multistatus>"] {
            assert!(matches!(parse_multistatus(garbage), Err(DavError::Refused { .. })));
        }
    }

    #[test]
    fn http_dates() {
        let t = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(), 784_111_777);
        let t = parse_http_date("Tue, 29 Feb 2028 00:00:00 GMT").unwrap();
        assert_eq!(t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(), 1_835_395_200);
        assert_eq!(parse_http_date("yesterday"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 CET"), None);
    }

    #[test]
    fn timeouts_round_up_to_whole_seconds() {
        assert_eq!(timeout_header(Duration::from_millis(1500)), "Second-2");
        assert_eq!(timeout_header(Duration::ZERO), "Second-1");
        assert_eq!(timeout_header(Duration::from_secs(600)), "Second-600");
    }

    #[test]
    fn property_names_and_values_are_checked() {
        assert!(check_prop_name("job_v1.x-y").is_ok());
        for bad in ["", "1a", "a b", "a:b", "a<", "é"] {
            assert!(check_prop_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_text("v", "{\"a\":\"<&>\\n\"}\t\né").is_ok());
        assert!(check_text("v", "a\rb").is_err());
        assert!(check_text("v", "a\u{1}b").is_err());
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&apos;");
    }

    #[test]
    fn apache_multistatus() {
        let body = r#"<?xml version="1.0" encoding="utf-8"?>
<D:multistatus xmlns:D="DAV:" xmlns:ns0="DAV:">
<D:response xmlns:lp2="http://apache.org/dav/props/" xmlns:lp1="DAV:">
<D:href>/recordings/</D:href>
<D:propstat><D:prop><lp1:resourcetype><D:collection/></lp1:resourcetype></D:prop>
<D:status>HTTP/1.1 200 OK</D:status></D:propstat>
</D:response>
<D:response xmlns:ns0="DAV:" xmlns:ns1="urn:exec-allinone:exrp" xmlns:lp1="DAV:">
<D:href>/recordings/p%20q%25.opus</D:href>
<D:propstat>
<D:prop>
<ns1:job>{"a":"&lt;&amp;&gt;\"q\" é ✓"}</ns1:job>
<ns1:empty/>
<lp1:resourcetype/>
<lp1:getcontentlength>3</lp1:getcontentlength>
<lp1:getlastmodified>Sun, 06 Nov 1994 08:49:37 GMT</lp1:getlastmodified>
<D:lockdiscovery><D:activelock>
<D:locktype><D:write/></D:locktype>
<ns0:owner xmlns:ns0="DAV:">exrp-1</ns0:owner><D:timeout>Second-40</D:timeout>
<D:locktoken><D:href>opaquelocktoken:4b4f8e0a-0000-4000-8000-000000000001</D:href></D:locktoken>
</D:activelock></D:lockdiscovery>
</D:prop>
<D:status>HTTP/1.1 200 OK</D:status>
</D:propstat>
<D:propstat><D:prop><ns1:absent/></D:prop><D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>
</D:response>
</D:multistatus>"#;
        let entries = parse_multistatus(body.as_bytes()).unwrap();
        assert_eq!(entries.len(), 2);
        assert!(entries[0].collection);
        assert_eq!(entries[0].path, "/recordings/");
        let f = &entries[1];
        assert!(!f.collection);
        assert_eq!(f.info.name, "p q%.opus");
        assert_eq!(f.info.size, 3);
        assert!(f.info.locked);
        assert_eq!(
            f.info.locks,
            vec![ActiveLock {
                token: Some("opaquelocktoken:4b4f8e0a-0000-4000-8000-000000000001".into()),
                owner: Some("exrp-1".into())
            }]
        );
        assert_eq!(f.info.modified, parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert_eq!(f.info.props.get("job").unwrap(), "{\"a\":\"<&>\\\"q\\\" é ✓\"}");
        assert_eq!(f.info.props.get("empty").unwrap(), "");
        assert!(!f.info.props.contains_key("absent"));
        assert!(f.statuses.contains(&(404, "absent".into())));
    }

    #[test]
    fn lockdiscovery_gives_each_lock_its_token_and_owner() {
        // dav-server's shape, plus an owner that wraps its text in an href and a lock whose
        // token the store keeps to itself.
        let body = br#"<?xml version="1.0" encoding="utf-8"?><D:multistatus xmlns:D="DAV:"><D:response><D:href>/recordings/a.opus</D:href><D:propstat><D:prop><D:lockdiscovery><D:activelock><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype><D:depth>0</D:depth><D:timeout>Second-300</D:timeout><D:locktoken><D:href>urn:uuid:0f3a</D:href></D:locktoken><D:lockroot><D:href>/recordings/a.opus</D:href></D:lockroot><D:owner> exrp-a </D:owner></D:activelock><D:activelock><D:owner><D:href>mailto:x@y</D:href></D:owner></D:activelock></D:lockdiscovery></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response></D:multistatus>"#;
        let entries = parse_multistatus(body).unwrap();
        assert!(entries[0].info.locked);
        assert_eq!(
            entries[0].info.locks,
            vec![
                ActiveLock { token: Some("urn:uuid:0f3a".into()), owner: Some("exrp-a".into()) },
                ActiveLock { token: None, owner: Some("mailto:x@y".into()) },
            ]
        );
    }

    #[test]
    fn multistatus_read_one_response_at_a_time_keeps_the_tree_semantics() {
        // A propstat's status before its prop, unknown elements anywhere, comments, CDATA,
        // two props in one propstat, a response status, and only the first href and status
        // of each kind counting.
        let body = br#"<?xml version="1.0"?>
<D:multistatus xmlns:D="DAV:" xmlns:x="urn:exec-allinone:exrp"><D:other><D:response/></D:other>
<!-- c --><D:response><D:href>/r/a.opus</D:href><D:href>/r/b.opus</D:href><D:unknown><D:status>HTTP/1.1 500 X</D:status></D:unknown>
<D:propstat><D:status>HTTP/1.1 200 OK</D:status><D:status>HTTP/1.1 404 Not Found</D:status>
<D:prop><x:job><![CDATA[{"k":"<v>"}]]></x:job><D:getcontentlength>7<!-- c -->2</D:getcontentlength></D:prop>
<D:prop><x:done>yes<x:inner>no</x:inner></x:done><D:resourcetype><D:collection/></D:resourcetype></D:prop>
</D:propstat>
<D:propstat><D:prop><x:gone/></D:prop></D:propstat>
</D:response>
<D:response><D:href>/r/c.opus</D:href><D:status>HTTP/1.1 404 Not Found</D:status></D:response>
</D:multistatus>"#;
        let entries = parse_multistatus(body).unwrap();
        assert_eq!(entries.len(), 2);
        let a = &entries[0];
        assert_eq!(a.path, "/r/a.opus");
        assert_eq!(a.status, None);
        assert!(a.collection);
        assert_eq!(a.info.size, 72);
        assert_eq!(a.info.props.get("job").unwrap(), r#"{"k":"<v>"}"#);
        assert_eq!(a.info.props.get("done").unwrap(), "yes");
        assert!(!a.info.props.contains_key("gone"));
        assert_eq!(
            a.statuses,
            vec![
                (200, "job".to_string()),
                (200, "getcontentlength".to_string()),
                (200, "done".to_string()),
                (200, "resourcetype".to_string()),
                (0, "gone".to_string())
            ]
        );
        assert_eq!(entries[1].status, Some(404));
        assert!(entries[1].statuses.is_empty());
        // Well-formed but not a multistatus; a multistatus with trailing garbage.
        assert!(matches!(parse_multistatus(b"<D:x xmlns:D=\"DAV:\"/>"), Err(DavError::Refused { .. })));
        // An element still open at the end reads as an answer cut short (tried again).
        let trailing = b"<D:multistatus xmlns:D=\"DAV:\"></D:multistatus><oops>";
        assert!(matches!(parse_multistatus(trailing), Err(DavError::Unavailable(_))));
    }

    #[test]
    fn dav_server_multistatus_and_garbage() {
        let body = br#"<?xml version="1.0" encoding="utf-8"?><D:multistatus xmlns:D="DAV:"><D:response><D:href>http://h:1/recordings/a%C3%A9.opus</D:href><D:propstat><D:prop><D:getcontentlength>0</D:getcontentlength><D:lockdiscovery></D:lockdiscovery><D:resourcetype></D:resourcetype><x:state xmlns:x="urn:exec-allinone:exrp"> two  words </x:state></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response></D:multistatus>"#;
        let entries = parse_multistatus(body).unwrap();
        assert_eq!(entries[0].info.name, "aé.opus");
        assert_eq!(entries[0].path, "/recordings/aé.opus");
        assert!(!entries[0].info.locked);
        assert!(entries[0].info.locks.is_empty());
        assert_eq!(entries[0].info.props.get("state").unwrap(), " two  words ");
        assert!(matches!(parse_multistatus(b"<html>oops</html>"), Err(DavError::Refused { .. })));
        // Empty or cut short: a store failing half way through its answer, tried again.
        for cut in [&b""[..], b"<D:multistatus xmlns:D=\"DAV:\"><D:response>"] {
            assert!(matches!(parse_multistatus(cut), Err(DavError::Unavailable(_))));
        }
    }
}
