//! A small S3 client over reqwest: the object calls a recording store needs (PUT, GET with a
//! range, HEAD, DELETE, COPY, ListObjectsV2, multipart upload), each signed with SigV4, each
//! answer's error mapped to what the caller decides on (missing, refused, over quota,
//! transient). Path-style (`endpoint/bucket/key`) or virtual-hosted (`bucket.endpoint/key`).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;

use super::sigv4::{self, Credentials, EMPTY_SHA256, UNSIGNED_PAYLOAD};
use crate::telemetry::chain;

/// A request body: bytes in hand, or a stream of a declared length.
enum Payload {
    Bytes(Bytes),
    Stream(reqwest::Body),
}

/// What a caller branches on.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// 404 (NoSuchKey, NoSuchUpload).
    #[error("not found: {0}")]
    NotFound(String),
    /// 412: a precondition (If-Match, If-None-Match) did not hold.
    #[error("precondition failed: {0}")]
    Precondition(String),
    /// The bucket's quota would be passed (Garage answers 403 with QuotaExceeded... or
    /// others 507/EntityTooLarge): the store answers 507.
    #[error("over the bucket's quota: {0}")]
    Quota(String),
    /// 401/403 and other 4xx: credentials, permissions or the request itself; not retried.
    #[error("refused: {0}")]
    Refused(String),
    /// 5xx, 429, timeouts, connection failures: worth another try.
    #[error("transient: {0}")]
    Transient(String),
}

impl S3Error {
    pub fn is_transient(&self) -> bool {
        matches!(self, S3Error::Transient(_))
    }
}

/// Where the bucket is and who we are.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://127.0.0.1:3900` or `https://s3.eu-west-1.amazonaws.com`, no path; several
    /// nodes of one cluster, tried in turn when one cannot be reached.
    pub endpoints: Vec<String>,
    pub bucket: String,
    /// `endpoint/bucket/key` (Garage, MinIO, Ceph) rather than `bucket.endpoint/key`.
    pub path_style: bool,
    pub credentials: Credentials,
}

/// An object's head: its length, ETag (quotes kept off), modification time and user metadata
/// (`x-amz-meta-*`, names without the prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub len: u64,
    pub etag: String,
    pub last_modified: Option<std::time::SystemTime>,
    pub metadata: BTreeMap<String, String>,
}

/// One key of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub len: u64,
    pub etag: String,
    pub last_modified: Option<std::time::SystemTime>,
}

/// A listing page: keys and, with a delimiter, the common prefixes ("directories").
#[derive(Debug, Default)]
pub struct Page {
    pub objects: Vec<Listed>,
    pub prefixes: Vec<String>,
    pub next: Option<String>,
}

#[derive(Clone)]
pub struct S3Client {
    target: Target,
    http: reqwest::Client,
    /// Per endpoint: its scheme and the `Host` the signature names.
    nodes: Vec<(&'static str, String)>,
    /// The endpoint that answered last: where the next request goes first.
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl S3Client {
    /// `request_timeout` bounds connecting and each wait for the server; `transfer_timeout`
    /// bounds a whole call, an 8 MiB part to a server that stopped reading included.
    pub fn new(
        target: Target,
        outbound: &crate::config::Outbound,
        request_timeout: Duration,
        transfer_timeout: Duration,
    ) -> Result<S3Client, String> {
        let mut nodes = Vec::new();
        for endpoint in &target.endpoints {
            let url = reqwest::Url::parse(endpoint).map_err(|e| format!("endpoint {endpoint:?}: {e}"))?;
            let scheme = match url.scheme() {
                "http" => "http",
                "https" => "https",
                _ => return Err(format!("endpoint {endpoint:?} must be an http:// or https:// URL")),
            };
            let Some(name) = url.host_str() else {
                return Err(format!("endpoint {endpoint:?} must be an http:// or https:// URL"));
            };
            let authority = match url.port() {
                Some(port) => format!("{name}:{port}"),
                None => name.to_string(),
            };
            let host = if target.path_style { authority } else { format!("{}.{authority}", target.bucket) };
            nodes.push((scheme, host));
        }
        if nodes.is_empty() {
            return Err("no endpoint".into());
        }
        crate::http::tls::install_provider();
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("exec-allinone/", env!("CARGO_PKG_VERSION")))
            .tls_built_in_native_certs(true)
            .connect_timeout(request_timeout)
            .read_timeout(request_timeout)
            .timeout(transfer_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            // A redirect would resend a signed request to another host: an error instead.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &outbound.ca_file {
            for cert in crate::http::client::read_pem(path).map_err(|e| format!("{e:#}"))? {
                builder = builder.add_root_certificate(cert);
            }
        }
        builder = match &outbound.proxy {
            crate::config::Proxy::Env => builder,
            crate::config::Proxy::Direct => builder.no_proxy(),
            crate::config::Proxy::Url(url) => builder.proxy(
                reqwest::Proxy::all(url.as_str())
                    .map_err(|e| format!("proxy {url:?}: {e}"))?
                    .no_proxy(reqwest::NoProxy::from_env()),
            ),
        };
        let http = builder.build().map_err(|e| e.to_string())?;
        Ok(S3Client { target, http, nodes, current: Default::default() })
    }

    /// The client an `s3` table of the config describes.
    pub fn from_config(config: &crate::config::S3Config) -> Result<S3Client, String> {
        let target = Target {
            endpoints: config.endpoints.clone(),
            bucket: config.bucket.clone(),
            path_style: config.path_style,
            credentials: sigv4::Credentials {
                access_key_id: config.access_key_id.clone(),
                secret_access_key: config.secret_access_key.clone(),
                region: config.region.clone(),
            },
        };
        S3Client::new(target, &config.outbound, config.request_timeout, config.transfer_timeout)
    }

    pub fn bucket(&self) -> &str {
        &self.target.bucket
    }

    /// The URL (on endpoint `node`) and the path the signature covers, for a key (None: the
    /// bucket itself).
    fn locate(&self, node: usize, key: Option<&str>) -> (String, String) {
        let key_path = key.map(|k| format!("/{}", sigv4::encode(k, false))).unwrap_or_else(|| "/".into());
        let path = if self.target.path_style {
            match key {
                Some(_) => format!("/{}{key_path}", self.target.bucket),
                None => format!("/{}", self.target.bucket),
            }
        } else {
            key_path
        };
        let (scheme, host) = &self.nodes[node];
        (format!("{scheme}://{host}{path}"), path)
    }

    /// Sends one signed request; `extra` headers are signed too. An endpoint that cannot be
    /// reached (nothing was sent) makes the request go to the next one, and the next requests
    /// start there; a streamed body can be sent once only, so its request is not moved.
    async fn send(
        &self,
        method: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        extra: &[(&str, String)],
        body: Option<(Payload, bool)>,
    ) -> Result<reqwest::Response, S3Error> {
        use std::sync::atomic::Ordering;
        let n = self.nodes.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let (bytes, mut stream, hashed) = match body {
            None => (None, None, false),
            Some((Payload::Bytes(b), hashed)) => (Some(b), None, hashed),
            Some((Payload::Stream(s), hashed)) => (None, Some(s), hashed),
        };
        let mut tried = 0;
        let (response, path) = loop {
            let node = (first + tried) % n;
            let body = match (&bytes, stream.take()) {
                (_, Some(s)) => Some(Payload::Stream(s)),
                (Some(b), None) => Some(Payload::Bytes(b.clone())),
                (None, None) => None,
            };
            let once = matches!(body, Some(Payload::Stream(_)));
            let (request, path) = self.signed(node, method.clone(), key, query, extra, body.map(|b| (b, hashed)));
            match request.send().await {
                Ok(response) => {
                    if node != first {
                        self.current.store(node, Ordering::Relaxed);
                    }
                    break (response, path);
                }
                // Nothing reached a server that refused the connection; a pooled connection that
                // died before any answer (its node killed, or closed idle) carried a request
                // whose every kind here may be sent again. Either way the next node is tried.
                Err(e) if e.is_connect() || (!once && crate::http::client::died_unanswered(&e)) => {
                    let next = (node + 1) % n;
                    self.current.store(next, Ordering::Relaxed);
                    tried += 1;
                    if n > 1 {
                        tracing::warn!(endpoint = %self.target.endpoints[node], "object store node unreachable: {}", chain(&e));
                    }
                    if once || tried >= n.max(2) {
                        return Err(S3Error::Transient(chain(&e)));
                    }
                }
                Err(e) => return Err(S3Error::Transient(chain(&e))),
            }
        };
        let status = response.status();
        if status.is_success() || status.as_u16() == 206 || status.as_u16() == 304 {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let code = element(&text, "Code").unwrap_or_default();
        let message = element(&text, "Message").unwrap_or_default();
        let why = format!("{} {status}: {code} {message}", path).trim_end().to_string();
        Err(match (status.as_u16(), code.as_str()) {
            (404, _) => S3Error::NotFound(why),
            (412, _) => S3Error::Precondition(why),
            (_, "QuotaExceeded" | "EntityTooLarge") | (507, _) => S3Error::Quota(why),
            (403, _) if message.to_ascii_lowercase().contains("quota") => S3Error::Quota(why),
            (429, _) | (500..=599, _) | (408, _) => S3Error::Transient(why),
            _ => S3Error::Refused(why),
        })
    }

    /// One request to endpoint `node`, signed.
    fn signed(
        &self,
        node: usize,
        method: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        extra: &[(&str, String)],
        body: Option<(Payload, bool)>,
    ) -> (reqwest::RequestBuilder, String) {
        let (url, path) = self.locate(node, key);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let amz_date = sigv4::amz_date(now);
        // A small body (XML of a multipart completion) is hashed; an object is sent unsigned,
        // its integrity held by Content-MD5 and its length.
        let payload_hash = match &body {
            None => EMPTY_SHA256.to_string(),
            Some((Payload::Bytes(bytes), true)) => sigv4::sha256_hex(bytes),
            Some((_, false)) | Some((Payload::Stream(_), _)) => UNSIGNED_PAYLOAD.to_string(),
        };
        let mut headers: Vec<(&str, &str)> = vec![
            ("host", self.nodes[node].1.as_str()),
            ("x-amz-content-sha256", payload_hash.as_str()),
            ("x-amz-date", amz_date.as_str()),
        ];
        headers.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
        let signed = sigv4::Request {
            method: method.as_str(),
            path: &path,
            query,
            headers: &headers,
            payload_hash: &payload_hash,
            amz_date: &amz_date,
        };
        let authorization = sigv4::authorization(&self.target.credentials, &signed);
        let query_string: Vec<String> = query
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    sigv4::encode(k, true)
                } else {
                    format!("{}={}", sigv4::encode(k, true), sigv4::encode(v, true))
                }
            })
            .collect();
        let url = if query_string.is_empty() { url } else { format!("{url}?{}", query_string.join("&")) };
        let mut request = self.http.request(method, url).header("authorization", authorization);
        for (k, v) in &headers[1..] {
            request = request.header(*k, *v);
        }
        match body {
            Some((Payload::Bytes(bytes), _)) => request = request.body(bytes),
            Some((Payload::Stream(stream), _)) => request = request.body(stream),
            None => {}
        }
        (request, path)
    }

    /// PUTs a whole object with its MD5 checked by the server; returns its ETag.
    pub async fn put(&self, key: &str, body: Bytes, metadata: &BTreeMap<String, String>) -> Result<String, S3Error> {
        use base64::Engine;
        let md5 = base64::engine::general_purpose::STANDARD.encode(<md5::Md5 as md5::Digest>::digest(&body));
        let mut extra = vec![("content-md5", md5), ("content-length", body.len().to_string())];
        let names: Vec<String> = metadata.keys().map(|k| format!("x-amz-meta-{k}")).collect();
        for (name, value) in names.iter().zip(metadata.values()) {
            extra.push((name.as_str(), value.clone()));
        }
        let response = self.send(Method::PUT, Some(key), &[], &extra, Some((Payload::Bytes(body), false))).await?;
        Ok(etag(response.headers()))
    }

    /// PUTs an object of `len` bytes streamed from `body` as they come (no copy of it held).
    /// The engine makes it visible only if all `len` arrive: a stream that fails or ends short
    /// aborts the request, and nothing is stored.
    pub async fn put_stream(&self, key: &str, len: u64, body: reqwest::Body) -> Result<String, S3Error> {
        let extra = vec![("content-length", len.to_string())];
        let response = self.send(Method::PUT, Some(key), &[], &extra, Some((Payload::Stream(body), false))).await?;
        Ok(etag(response.headers()))
    }

    /// GETs an object (or `range`, inclusive byte offsets): its head and the response to
    /// stream the bytes from. With `if_match`, only that version (412 once it was replaced).
    pub async fn get(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
        if_match: Option<&str>,
    ) -> Result<(Head, reqwest::Response), S3Error> {
        let mut extra: Vec<(&str, String)> =
            range.map(|(a, b)| ("range", format!("bytes={a}-{b}"))).into_iter().collect();
        if let Some(etag) = if_match {
            extra.push(("if-match", format!("\"{etag}\"")));
        }
        let response = self.send(Method::GET, Some(key), &[], &extra, None).await?;
        Ok((head_of(response.headers()), response))
    }

    pub async fn head(&self, key: &str) -> Result<Head, S3Error> {
        let response = self.send(Method::HEAD, Some(key), &[], &[], None).await?;
        Ok(head_of(response.headers()))
    }

    pub async fn delete(&self, key: &str) -> Result<(), S3Error> {
        self.send(Method::DELETE, Some(key), &[], &[], None).await.map(drop)
    }

    /// Server-side copy; with `metadata`, the copy gets it instead of the source's.
    pub async fn copy(
        &self,
        from: &str,
        to: &str,
        metadata: Option<&BTreeMap<String, String>>,
    ) -> Result<String, S3Error> {
        let source = format!("/{}/{}", self.target.bucket, sigv4::encode(from, false));
        let mut extra = vec![("x-amz-copy-source", source)];
        let names: Vec<String> = metadata.into_iter().flatten().map(|(k, _)| format!("x-amz-meta-{k}")).collect();
        if let Some(m) = metadata {
            extra.push(("x-amz-metadata-directive", "REPLACE".into()));
            for (name, value) in names.iter().zip(m.values()) {
                extra.push((name.as_str(), value.clone()));
            }
        }
        let response = self.send(Method::PUT, Some(to), &[], &extra, None).await?;
        // A copy may fail after S3 answered 200: the error is then in the body.
        let text = response.text().await.map_err(|e| S3Error::Transient(chain(&e)))?;
        match element(&text, "ETag") {
            Some(etag) if !text.contains("<Error>") => Ok(etag.trim_matches('"').to_string()),
            _ => Err(S3Error::Transient(format!("copy to {to} failed: {text:.300}"))),
        }
    }

    /// One page of ListObjectsV2 under `prefix`, split at `delimiter` when given.
    pub async fn list(&self, prefix: &str, delimiter: Option<&str>, after: Option<&str>) -> Result<Page, S3Error> {
        self.list_max(prefix, delimiter, after, None).await
    }

    /// As `list`, at most `max_keys` keys and prefixes in the page.
    pub async fn list_max(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        max_keys: Option<u32>,
    ) -> Result<Page, S3Error> {
        let max = max_keys.map(|m| m.to_string());
        let mut query = vec![("list-type", "2"), ("prefix", prefix)];
        if let Some(m) = &max {
            query.push(("max-keys", m.as_str()));
        }
        if let Some(d) = delimiter {
            query.push(("delimiter", d));
        }
        if let Some(token) = after {
            query.push(("continuation-token", token));
        }
        let response = self.send(Method::GET, None, &query, &[], None).await?;
        let text = response.text().await.map_err(|e| S3Error::Transient(chain(&e)))?;
        parse_list(&text).map_err(S3Error::Transient)
    }

    /// Starts a multipart upload; returns its id.
    pub async fn create_multipart(&self, key: &str, metadata: &BTreeMap<String, String>) -> Result<String, S3Error> {
        let names: Vec<String> = metadata.keys().map(|k| format!("x-amz-meta-{k}")).collect();
        let extra: Vec<(&str, String)> = names.iter().map(String::as_str).zip(metadata.values().cloned()).collect();
        let response = self.send(Method::POST, Some(key), &[("uploads", "")], &extra, None).await?;
        let text = response.text().await.map_err(|e| S3Error::Transient(chain(&e)))?;
        element(&text, "UploadId").ok_or_else(|| S3Error::Transient(format!("no UploadId in {text:.200}")))
    }

    /// Uploads part `n` (from 1); returns its ETag.
    pub async fn upload_part(&self, key: &str, upload_id: &str, n: u32, body: Bytes) -> Result<String, S3Error> {
        use base64::Engine;
        let md5 = base64::engine::general_purpose::STANDARD.encode(<md5::Md5 as md5::Digest>::digest(&body));
        let number = n.to_string();
        let extra = vec![("content-md5", md5), ("content-length", body.len().to_string())];
        let query = [("partNumber", number.as_str()), ("uploadId", upload_id)];
        let response = self.send(Method::PUT, Some(key), &query, &extra, Some((Payload::Bytes(body), false))).await?;
        Ok(etag(response.headers()))
    }

    /// Completes the upload from its parts' ETags, in order: the object appears whole.
    pub async fn complete_multipart(&self, key: &str, upload_id: &str, etags: &[String]) -> Result<String, S3Error> {
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (i, etag) in etags.iter().enumerate() {
            xml.push_str(&format!("<Part><PartNumber>{}</PartNumber><ETag>\"{etag}\"</ETag></Part>", i + 1));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let body = Bytes::from(xml);
        let extra = vec![("content-length", body.len().to_string())];
        let response = self
            .send(Method::POST, Some(key), &[("uploadId", upload_id)], &extra, Some((Payload::Bytes(body), true)))
            .await?;
        // S3 may answer 200 with an error inside (a failure after the head was sent).
        let text = response.text().await.map_err(|e| S3Error::Transient(chain(&e)))?;
        if text.contains("<Error>") {
            return Err(S3Error::Transient(format!("multipart completion failed: {text:.300}")));
        }
        Ok(element(&text, "ETag").unwrap_or_default().trim_matches('"').to_string())
    }

    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        self.send(Method::DELETE, Some(key), &[("uploadId", upload_id)], &[], None).await.map(drop)
    }
}

fn etag(headers: &reqwest::header::HeaderMap) -> String {
    headers.get("etag").and_then(|v| v.to_str().ok()).unwrap_or_default().trim_matches('"').to_string()
}

fn head_of(headers: &reqwest::header::HeaderMap) -> Head {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let len = match text("content-range").and_then(|r| r.rsplit('/').next()).and_then(|n| n.parse().ok()) {
        Some(total) => total,
        None => text("content-length").and_then(|n| n.parse().ok()).unwrap_or(0),
    };
    let metadata = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().strip_prefix("x-amz-meta-")?.to_string(), v.to_str().ok()?.to_string())))
        .collect();
    Head {
        len,
        etag: etag(headers),
        last_modified: text("last-modified").and_then(|t| httpdate::parse_http_date(t).ok()),
        metadata,
    }
}

/// The text of the first `<name>` element (S3's small XML answers), entities decoded.
fn element(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    Some(unescape(&xml[start..end]))
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
}

/// A ListObjectsV2 answer, read with the `xml` crate's event reader (no tree of it).
fn parse_list(text: &str) -> Result<Page, String> {
    use xml::reader::{EventReader, XmlEvent};
    let mut page = Page::default();
    let mut path: Vec<String> = Vec::new();
    let mut current = Listed { key: String::new(), len: 0, etag: String::new(), last_modified: None };
    for event in EventReader::from_str(text) {
        match event.map_err(|e| format!("unreadable listing: {e}"))? {
            XmlEvent::StartElement { name, .. } => {
                if name.local_name == "Contents" {
                    current = Listed { key: String::new(), len: 0, etag: String::new(), last_modified: None };
                }
                path.push(name.local_name);
            }
            XmlEvent::EndElement { name } => {
                path.pop();
                if name.local_name == "Contents" {
                    page.objects.push(current.clone());
                }
            }
            XmlEvent::Characters(t) => {
                let here: Vec<&str> = path.iter().map(String::as_str).collect();
                match here.as_slice() {
                    [_, "Contents", "Key"] => current.key.push_str(&t),
                    [_, "Contents", "Size"] => current.len = t.trim().parse().unwrap_or(0),
                    [_, "Contents", "ETag"] => current.etag = t.trim_matches('"').to_string(),
                    [_, "Contents", "LastModified"] => current.last_modified = parse_iso(&t),
                    [_, "CommonPrefixes", "Prefix"] => page.prefixes.push(t),
                    [_, "NextContinuationToken"] => page.next = Some(t),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    Ok(page)
}

/// `2026-12-07T09:10:33.000Z` as a SystemTime.
fn parse_iso(t: &str) -> Option<std::time::SystemTime> {
    let t = t.trim();
    let num = |a: usize, b: usize| t.get(a..b)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, s) = (num(0, 4)?, num(5, 7)?, num(8, 10)?, num(11, 13)?, num(14, 16)?, num(17, 19)?);
    // Days from the civil date (Howard Hinnant's days_from_civil).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + s;
    u64::try_from(secs).ok().map(|s| std::time::UNIX_EPOCH + Duration::from_secs(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_is_read_with_its_keys_prefixes_and_token() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>rec</Name><Prefix>r/</Prefix>
<Contents><Key>r/a&amp;b.opus</Key><LastModified>2026-12-07T09:10:33.000Z</LastModified><ETag>&quot;abc&quot;</ETag><Size>7220</Size></Contents>
<Contents><Key>r/c.opus</Key><Size>1</Size></Contents>
<CommonPrefixes><Prefix>r/sub/</Prefix></CommonPrefixes>
<IsTruncated>true</IsTruncated><NextContinuationToken>tok/1=</NextContinuationToken></ListBucketResult>"#;
        let page = parse_list(xml).unwrap();
        assert_eq!(page.objects.len(), 2);
        assert_eq!(
            (page.objects[0].key.as_str(), page.objects[0].len, page.objects[0].etag.as_str()),
            ("r/a&b.opus", 7220, "abc")
        );
        let at = page.objects[0].last_modified.unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(crate::telemetry::rfc3339_ms(at * 1000), "2026-12-07T09:10:33.000000Z");
        assert_eq!(page.prefixes, ["r/sub/"]);
        assert_eq!(page.next.as_deref(), Some("tok/1="));
        assert!(parse_list("<ListBucketResult><Contents>").is_err());
    }

    #[test]
    fn errors_are_read_from_s3_s_xml() {
        let xml = "<Error><Code>NoSuchKey</Code><Message>The key &lt;x&gt; does not exist</Message></Error>";
        assert_eq!(element(xml, "Code").as_deref(), Some("NoSuchKey"));
        assert_eq!(element(xml, "Message").as_deref(), Some("The key <x> does not exist"));
        assert_eq!(element(xml, "Nope"), None);
    }
}
