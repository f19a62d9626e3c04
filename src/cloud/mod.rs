//! The Genesys Cloud client: the OAuth client-credentials token, the presigned recording upload
//! (`POST /api/v2/uploads/recordings`) and the PUT to the presigned URL. Only this module knows
//! the Genesys Cloud wire format (DESIGN invariant 5); callers see [`Presigned`] and a
//! [`CloudError`] they can branch on.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};

use crate::config::GenesysCloudConfig;
use crate::http::client::{ClientError, HttpClient, StreamBody, full_body};

/// Retry-After when a 429 carries none we can read.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);
/// A longer Retry-After is taken as this: one bad header must not stall every worker for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// The presign API's bounds for `signedUrlTimeoutSeconds`.
const SIGNED_URL_TIMEOUT_RANGE: (u64, u64) = (1, 604_800);
/// Token and presign answers are small; anything bigger is not a Genesys Cloud answer.
const MAX_API_RESPONSE: usize = 256 << 10;
/// Error bodies kept in [`CloudError::Rejected`].
const MAX_ERROR_BODY: usize = 1024;
/// Used when a token answer has no `expires_in`: short, so a wrong guess costs one extra fetch.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// Why a call failed, in the terms a caller acts on.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CloudError {
    /// 429: wait this long (Retry-After seconds; [`DEFAULT_RETRY_AFTER`] when absent or
    /// unparsable; at most [`MAX_RETRY_AFTER`]).
    #[error("rate limited by Genesys Cloud: retry after {0:?}")]
    RateLimited(Duration),
    /// 5xx, network error, timeout, unreadable answer: back off and try again.
    #[error("Genesys Cloud unavailable: {0}")]
    Transient(String),
    /// The presigned URL is no longer accepted: presign anew.
    #[error("the presigned upload URL has expired")]
    UrlExpired,
    /// The org's credentials or permissions are refused (token 400/401/403; presign 401 after
    /// one refresh, or 403): an operator fixes it in configuration. The org is paused until
    /// `retry_in` has passed (see [`CloudClient::fault`]); its jobs wait, they never die of it.
    #[error("Genesys Cloud refuses this org's credentials or permissions: {reason}")]
    Credentials { reason: String, retry_in: Duration },
    /// Any other 4xx (after the one 401 refresh): retrying the same request cannot help.
    #[error("Genesys Cloud rejected the request: {status} {body}{}", correlation_id.as_deref().map(|c| format!(" (correlation id {c})")).unwrap_or_default())]
    Rejected { status: u16, body: String, correlation_id: Option<String> },
}

/// A presigned upload: PUT the bytes to `url` with every one of `headers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Presigned {
    pub url: String,
    #[serde(rename = "uploadKey")]
    pub upload_key: String,
    pub headers: BTreeMap<String, String>,
    /// Unix seconds after which the URL is taken as expired (now + signedUrlTimeoutSeconds,
    /// minus a safety margin).
    #[serde(rename = "expiresAt")]
    pub expires_at: u64,
    /// The ININ-Correlation-Id of the answer that gave it (what Genesys support asks for).
    #[serde(default, rename = "correlationId", skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

impl Presigned {
    /// True once the URL should not be used any more.
    pub fn expired(&self) -> bool {
        unix_now() >= self.expires_at
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct CloudStats {
    pub token_fetches: AtomicU64,
    pub token_refreshes_on_401: AtomicU64,
    /// 429s seen, on any endpoint.
    pub rate_limited: AtomicU64,
    /// 5xx answers seen, on any endpoint.
    pub server_errors: AtomicU64,
}

struct Token {
    value: String,
    refresh_at: Instant,
}

/// Why and since when an org's credentials are refused; cleared by the first call that works.
#[derive(Debug, Clone)]
pub struct OrgFault {
    pub reason: String,
    /// Unix milliseconds of the first refusal.
    pub since_ms: u64,
    /// Refusals in a row.
    pub failures: u32,
    /// Nothing is sent to the org before this (one call then tries again).
    next_try: Instant,
    /// A refused presign (a missing permission) is not cured by a token that works.
    on_presign: bool,
}

/// First wait after a credential refusal; doubled per refusal up to [`FAULT_BACKOFF_MAX`].
const FAULT_BACKOFF: Duration = Duration::from_secs(10);
const FAULT_BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(Default)]
struct TokenSlot {
    current: Option<Token>,
    /// The outcome of the last fetch when it failed, shared with the callers that queued behind it.
    last_error: Option<CloudError>,
}

/// One EX Org's API access. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct CloudClient {
    http: HttpClient,
    api_url: String,
    login_url: String,
    /// "Basic base64(client_id:client_secret)"; never logged, never in an error.
    basic: String,
    request_timeout: Duration,
    /// Held across a fetch, so concurrent callers wait for that one fetch instead of each
    /// making their own.
    token: tokio::sync::Mutex<TokenSlot>,
    /// Fetches finished; a caller that saw another value before queueing shares that outcome.
    fetches_done: AtomicU64,
    /// After a 429 nothing is sent before this instant.
    not_before: Mutex<Option<Instant>>,
    /// Set while the org's credentials or permissions are refused.
    fault: Mutex<Option<OrgFault>>,
    stats: CloudStats,
}

impl std::fmt::Debug for CloudClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudClient").field("api_url", &self.api_url).field("login_url", &self.login_url).finish()
    }
}

impl CloudClient {
    pub fn new(config: &GenesysCloudConfig, http: HttpClient, request_timeout: Duration) -> CloudClient {
        let credentials = format!("{}:{}", config.client_id, config.client_secret.expose());
        CloudClient {
            http,
            api_url: config.api_url.trim_end_matches('/').to_string(),
            login_url: config.login_url.trim_end_matches('/').to_string(),
            basic: format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(credentials)),
            request_timeout,
            token: tokio::sync::Mutex::new(TokenSlot::default()),
            fetches_done: AtomicU64::new(0),
            not_before: Mutex::new(None),
            fault: Mutex::new(None),
            stats: CloudStats::default(),
        }
    }

    /// The credential fault the org is paused for, if any.
    pub fn fault(&self) -> Option<OrgFault> {
        self.fault.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// While the org is paused for a fault of this kind (a refused token holds token fetches;
    /// a refused permission holds presigns), answers the fault without sending anything; once
    /// the wait is over, lets one call through (the next ones wait for its outcome's new wait).
    fn gate(&self, presign: bool) -> Result<(), CloudError> {
        let mut fault = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        let Some(f) = fault.as_mut().filter(|f| f.on_presign == presign) else { return Ok(()) };
        let now = Instant::now();
        if now < f.next_try {
            return Err(CloudError::Credentials { reason: f.reason.clone(), retry_in: f.next_try - now });
        }
        // This call is the try; the others wait as long as a refusal would make them.
        f.next_try = now + fault_backoff(f.failures + 1);
        Ok(())
    }

    /// Records a refusal of the org's credentials (token) or permissions (presign).
    fn refused(&self, reason: String, on_presign: bool) -> CloudError {
        let mut fault = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        let failures = fault.as_ref().map_or(0, |f| f.failures) + 1;
        let wait = fault_backoff(failures);
        if fault.is_none() {
            tracing::error!(
                login_url = %self.login_url,
                retry_in_s = wait.as_secs(),
                "Genesys Cloud refuses this org: {reason}; its recordings wait (fix client_id/client_secret or the OAuth client's permissions, then reload exrp with SIGHUP)"
            );
        }
        *fault = Some(OrgFault {
            since_ms: fault.as_ref().map_or_else(unix_now_ms, |f| f.since_ms),
            reason: reason.clone(),
            failures,
            next_try: Instant::now() + wait,
            on_presign,
        });
        CloudError::Credentials { reason, retry_in: wait }
    }

    /// A call worked: a token clears a token fault, a presign clears any.
    fn accepted(&self, presign: bool) {
        let mut fault = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        if fault.as_ref().is_some_and(|f| presign || !f.on_presign) {
            *fault = None;
            tracing::info!(login_url = %self.login_url, "Genesys Cloud accepts this org's credentials again; its recordings resume");
        }
    }

    pub fn stats(&self) -> &CloudStats {
        &self.stats
    }

    /// TCP connections opened to Genesys Cloud and its upload targets so far.
    pub fn connections_opened(&self) -> u64 {
        self.http.connections_opened()
    }

    /// How long calls are still held after a 429 (None: not held). A health check can report
    /// this instead of waiting.
    pub fn held_for(&self) -> Option<Duration> {
        let until = (*self.not_before.lock().unwrap_or_else(|e| e.into_inner()))?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// A valid access token: the cached one until shortly before it expires, else a new one
    /// from `POST {login_url}/oauth/token`. Concurrent callers share one fetch.
    pub async fn token(&self) -> Result<String, CloudError> {
        let seen = self.fetches_done.load(Ordering::Acquire);
        let mut slot = self.token.lock().await;
        if let Some(token) = slot.current.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(token.value.clone());
        }
        // A fetch finished while we queued and failed: its answer is ours too, or a dead login
        // server would be asked once per waiting worker.
        if let Some(err) = slot.last_error.as_ref().filter(|_| self.fetches_done.load(Ordering::Acquire) != seen) {
            return Err(err.clone());
        }
        // A refused token waits out its backoff; a refused permission does not stop tokens.
        self.gate(false)?;
        let outcome = self.fetch_token().await;
        self.fetches_done.fetch_add(1, Ordering::AcqRel);
        match outcome {
            Ok(token) => {
                let value = token.value.clone();
                slot.current = Some(token);
                slot.last_error = None;
                self.accepted(false);
                Ok(value)
            }
            Err(err) => {
                slot.current = None;
                slot.last_error = Some(err.clone());
                Err(err)
            }
        }
    }

    /// Forgets `stale` (the token a 401 answered) unless another caller already replaced it.
    async fn drop_token(&self, stale: &str) {
        let mut slot = self.token.lock().await;
        if slot.current.as_ref().is_some_and(|t| t.value == stale) {
            slot.current = None;
        }
    }

    async fn fetch_token(&self) -> Result<Token, CloudError> {
        self.wait_hold().await;
        self.stats.token_fetches.fetch_add(1, Ordering::Relaxed);
        let url = format!("{}/oauth/token", self.login_url);
        let headers = [
            ("authorization", self.basic.as_str()),
            ("content-type", "application/x-www-form-urlencoded"),
            ("accept", "application/json"),
        ];
        let body = Bytes::from_static(b"grant_type=client_credentials");
        let reply = self
            .http
            .send(Method::POST, &url, &headers, body, self.request_timeout, MAX_API_RESPONSE)
            .await
            .map_err(|e| transport("token", e))?;
        if matches!(reply.status.as_u16(), 400 | 401 | 403) {
            let why = describe("token", reply.status, &reply.headers, &reply.body);
            return Err(self.refused(why, false));
        }
        if !reply.status.is_success() {
            return Err(self.failure("token", reply.status, &reply.headers, &reply.body));
        }
        #[derive(Deserialize)]
        struct Answer {
            access_token: String,
            expires_in: Option<u64>,
        }
        let answer: Answer = serde_json::from_slice(&reply.body)
            .map_err(|_| CloudError::Transient("token: the answer is not a token".into()))?;
        if answer.access_token.is_empty() {
            return Err(CloudError::Transient("token: the answer holds an empty token".into()));
        }
        let lifetime = answer.expires_in.map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        Ok(Token { value: answer.access_token, refresh_at: Instant::now() + lifetime - safety_margin(lifetime) })
    }

    /// Asks for a presigned URL for one file. `file_name` should come from [`clean_file_name`];
    /// `content_md5_b64` is the base64 of the file's MD5. On 401 the token is fetched anew and
    /// the call made once more.
    pub async fn presign(
        &self,
        file_name: &str,
        content_md5_b64: &str,
        content_type: &str,
        signed_url_timeout: Duration,
    ) -> Result<Presigned, CloudError> {
        let timeout_secs = signed_url_timeout.as_secs().clamp(SIGNED_URL_TIMEOUT_RANGE.0, SIGNED_URL_TIMEOUT_RANGE.1);
        let body = serde_json::json!({
            "fileName": file_name,
            "contentMd5": content_md5_b64,
            "contentType": content_type,
            "signedUrlTimeoutSeconds": timeout_secs,
        });
        let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        // A paused org sends nothing until its wait is over, not even with a cached token.
        self.gate(true)?;
        let token = self.token().await?;
        let outcome = match self.presign_once(&token, body.clone(), timeout_secs).await {
            Err(CloudError::Rejected { status: 401, .. }) => {
                self.stats.token_refreshes_on_401.fetch_add(1, Ordering::Relaxed);
                self.drop_token(&token).await;
                let token = self.token().await?;
                self.presign_once(&token, body, timeout_secs).await
            }
            other => other,
        };
        match outcome {
            // After the refresh, or a missing permission: configuration, not this recording.
            Err(CloudError::Rejected { status: status @ (401 | 403), body, correlation_id }) => {
                let why = format!(
                    "presign: HTTP {status} {body}{}",
                    correlation_id.map(|c| format!(" (ININ-Correlation-Id {c})")).unwrap_or_default()
                );
                Err(self.refused(why, true))
            }
            Ok(presigned) => {
                self.accepted(true);
                Ok(presigned)
            }
            other => other,
        }
    }

    async fn presign_once(&self, token: &str, body: Bytes, timeout_secs: u64) -> Result<Presigned, CloudError> {
        self.wait_hold().await;
        let url = format!("{}/api/v2/uploads/recordings", self.api_url);
        let bearer = format!("Bearer {token}");
        let headers =
            [("authorization", bearer.as_str()), ("content-type", "application/json"), ("accept", "application/json")];
        // Taken before sending: the URL's lifetime starts when the server signs it.
        let asked_at = unix_now();
        let reply = self
            .http
            .send(Method::POST, &url, &headers, body, self.request_timeout, MAX_API_RESPONSE)
            .await
            .map_err(|e| transport("presign", e))?;
        if !reply.status.is_success() {
            return Err(self.failure("presign", reply.status, &reply.headers, &reply.body));
        }
        #[derive(Deserialize)]
        struct Answer {
            url: String,
            #[serde(rename = "uploadKey")]
            upload_key: String,
            #[serde(default)]
            headers: BTreeMap<String, String>,
        }
        let unreadable = |why: &str| CloudError::Transient(format!("presign: {why}"));
        let answer: Answer =
            serde_json::from_slice(&reply.body).map_err(|_| unreadable("the answer is not an upload URL"))?;
        // Checked here so that a bad answer is a presign failure, not a PUT that cannot be sent.
        match answer.url.parse::<http::Uri>() {
            Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some() => {}
            _ => return Err(unreadable("the upload URL is not an http(s) URL")),
        }
        for (name, value) in &answer.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() || http::HeaderValue::from_str(value).is_err() {
                return Err(unreadable("a required upload header is not a valid header"));
            }
        }
        let lifetime = Duration::from_secs(timeout_secs);
        Ok(Presigned {
            url: answer.url,
            upload_key: answer.upload_key,
            headers: answer.headers,
            expires_at: asked_at + (lifetime - safety_margin(lifetime)).as_secs(),
            correlation_id: correlation_id(&reply.headers),
        })
    }

    /// PUTs the file at `path` (exactly `len` bytes, streamed from disk) to the presigned URL;
    /// `transfer_timeout` bounds the whole PUT.
    pub async fn upload_file(
        &self,
        presigned: &Presigned,
        path: &Path,
        len: u64,
        transfer_timeout: Duration,
    ) -> Result<(), CloudError> {
        use tokio::io::AsyncReadExt;
        let local = |e: std::io::Error| CloudError::Transient(format!("upload: cannot read {}: {e}", path.display()));
        let file = tokio::fs::File::open(path).await.map_err(local)?;
        let size = file.metadata().await.map_err(local)?.len();
        if size < len {
            return Err(CloudError::Transient(format!("upload: {} holds {size} bytes, not {len}", path.display())));
        }
        let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 64 << 10);
        let body = http_body_util::StreamBody::new(stream.map_ok(hyper::body::Frame::data)).boxed();
        self.put(presigned, body, len, transfer_timeout).await
    }

    /// PUTs bytes held in memory (a small metadata JSON) to the presigned URL.
    pub async fn upload_bytes(
        &self,
        presigned: &Presigned,
        body: Bytes,
        transfer_timeout: Duration,
    ) -> Result<(), CloudError> {
        let len = body.len() as u64;
        self.put(presigned, full_body(body), len, transfer_timeout).await
    }

    async fn put(
        &self,
        presigned: &Presigned,
        body: StreamBody,
        len: u64,
        transfer_timeout: Duration,
    ) -> Result<(), CloudError> {
        if presigned.expired() {
            return Err(CloudError::UrlExpired);
        }
        self.wait_hold().await;
        // The hold may have outlasted the URL.
        if presigned.expired() {
            return Err(CloudError::UrlExpired);
        }
        let headers: Vec<(&str, &str)> = presigned
            .headers
            .iter()
            .filter(|(name, _)| !name.eq_ignore_ascii_case("content-length") && !name.eq_ignore_ascii_case("host"))
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let exchange = async {
            let response = self
                .http
                .stream(Method::PUT, &presigned.url, &headers, body, len, transfer_timeout)
                .await
                .map_err(|e| transport("upload", e))?;
            let (parts, body) = response.into_parts();
            let body = match http_body_util::Limited::new(body, MAX_API_RESPONSE).collect().await {
                Ok(collected) => collected.to_bytes(),
                // The status is what matters; a broken error body must not hide it.
                Err(_) if !parts.status.is_success() => Bytes::new(),
                Err(e) => return Err(CloudError::Transient(format!("upload: reading the answer: {e}"))),
            };
            Ok((parts.status, parts.headers, body))
        };
        let (status, headers, body) = match tokio::time::timeout(transfer_timeout, exchange).await {
            Ok(result) => result?,
            Err(_) => return Err(CloudError::Transient(format!("upload: not done within {transfer_timeout:?}"))),
        };
        if status.is_success() {
            return Ok(());
        }
        if url_refused(status, &body) {
            return Err(CloudError::UrlExpired);
        }
        Err(self.failure("upload", status, &headers, &body))
    }

    /// Waits while a 429's Retry-After holds every call.
    async fn wait_hold(&self) {
        loop {
            let until = *self.not_before.lock().unwrap_or_else(|e| e.into_inner());
            match until {
                // Looped: another 429 may have pushed the instant further while we slept.
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until.into()).await,
                _ => return,
            }
        }
    }

    fn hold_until(&self, until: Instant) {
        let mut not_before = self.not_before.lock().unwrap_or_else(|e| e.into_inner());
        if not_before.is_none_or(|t| t < until) {
            *not_before = Some(until);
        }
    }

    /// Maps a non-2xx answer (except the PUT's URL refusals) to an error, counting and holding.
    fn failure(&self, what: &str, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> CloudError {
        match status.as_u16() {
            429 => {
                self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                let wait = retry_after(headers.get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()));
                self.hold_until(Instant::now() + wait);
                tracing::warn!(what, wait_s = wait.as_secs(), "Genesys Cloud rate limit: holding every call");
                CloudError::RateLimited(wait)
            }
            500..=599 => {
                self.stats.server_errors.fetch_add(1, Ordering::Relaxed);
                CloudError::Transient(format!("{what}: {status}"))
            }
            408 => CloudError::Transient(format!("{what}: {status}")),
            // Any other 4xx, and a redirect or other oddity: the same request gets the same answer.
            _ => CloudError::Rejected {
                status: status.as_u16(),
                body: truncate(body, MAX_ERROR_BODY),
                correlation_id: correlation_id(headers),
            },
        }
    }
}

/// A refusal as a reason an operator can act on: what, status, the body's start, the
/// correlation id Genesys support asks for.
fn describe(what: &str, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> String {
    format!(
        "{what}: HTTP {} {}{}",
        status.as_u16(),
        truncate(body, 256),
        correlation_id(headers).map(|c| format!(" (ININ-Correlation-Id {c})")).unwrap_or_default()
    )
}

/// 10 s, 20 s, 40 s … up to 5 min.
fn fault_backoff(failures: u32) -> Duration {
    crate::backoff::step(FAULT_BACKOFF, FAULT_BACKOFF_MAX, failures)
}

use crate::clock::unix_ms as unix_now_ms;

fn transport(what: &str, err: ClientError) -> CloudError {
    // ClientError names the URL and the cause, never a header: no token can leak through it.
    CloudError::Transient(format!("{what}: {err}"))
}

/// How long before expiry a token or URL is no longer used: 60 s, or a tenth of a short lifetime.
fn safety_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(60))
}

/// Retry-After in seconds (the form Genesys Cloud sends); the default when absent or unreadable.
fn retry_after(value: Option<&str>) -> Duration {
    match value.map(str::trim).and_then(|v| v.parse::<u64>().ok()) {
        // Zero would let every worker retry at once; a second costs nothing.
        Some(secs) => Duration::from_secs(secs.max(1)).min(MAX_RETRY_AFTER),
        None => DEFAULT_RETRY_AFTER,
    }
}

/// S3 answers an expired or otherwise no longer valid presigned URL with 403 (or 400 for some
/// signature problems): a new URL is the cure.
fn url_refused(status: StatusCode, body: &[u8]) -> bool {
    if status == StatusCode::FORBIDDEN {
        return true;
    }
    if status != StatusCode::BAD_REQUEST {
        return false;
    }
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    ["expired", "accessdenied", "signaturedoesnotmatch"].iter().any(|needle| text.contains(needle))
}

/// Genesys Cloud's ININ-Correlation-Id; S3's x-amz-request-id for a PUT.
fn correlation_id(headers: &HeaderMap) -> Option<String> {
    ["inin-correlation-id", "x-amz-request-id"]
        .iter()
        .find_map(|name| headers.get(*name))
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(128).collect())
}

fn truncate(body: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(max)]);
    // A multi-byte character cut in two shows as U+FFFD at the end; harmless in a log line.
    text.into_owned()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Characters the upload API refuses in a fileName (besides whitespace).
const FORBIDDEN: &[char] = &['\\', '{', '^', '}', '%', '`', ']', '"', '>', '[', '~', '<', '#', '|'];

/// A fileName the upload API accepts: every whitespace or control character and each of
/// ``\{^}%`]">[~<#|`` replaced by '_', leading dots and trailing '/' removed, empty →
/// "recording". Deterministic, and cleaning a clean name changes nothing.
pub fn clean_file_name(name: &str) -> String {
    let replaced: String = name
        .chars()
        .map(|c| if c.is_whitespace() || c.is_control() || FORBIDDEN.contains(&c) { '_' } else { c })
        .collect();
    let trimmed = replaced.trim_start_matches('.').trim_end_matches('/');
    if trimmed.is_empty() { "recording".to_string() } else { trimmed.to_string() }
}

/// True when the upload API would accept `name` as a fileName (the rules [`clean_file_name`]
/// enforces).
pub fn file_name_ok(name: &str) -> bool {
    !name.is_empty() && clean_file_name(name) == name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_file_name_replaces_forbidden_characters() {
        assert_eq!(clean_file_name("a b\tc"), "a_b_c");
        assert_eq!(clean_file_name("x\\{^}%`]\">[~<#|y"), "x______________y");
        assert_eq!(clean_file_name("call-1/media 2.opus"), "call-1/media_2.opus");
        assert_eq!(clean_file_name("ünïcode\u{1}.opus"), "ünïcode_.opus");
    }

    #[test]
    fn clean_file_name_trims_dots_and_slashes() {
        assert_eq!(clean_file_name("..hidden.opus"), "hidden.opus");
        assert_eq!(clean_file_name("dir/"), "dir");
        assert_eq!(clean_file_name("dir///"), "dir");
        assert_eq!(clean_file_name("../"), "recording");
        assert_eq!(clean_file_name(""), "recording");
        assert_eq!(clean_file_name("..."), "recording");
        assert_eq!(clean_file_name("a.b."), "a.b.");
    }

    #[test]
    fn clean_file_name_is_idempotent() {
        for name in ["..a /b/", " . /", "./.", "x%y", "", "/..", "a\u{a0}b", ".\u{2003}/"] {
            let once = clean_file_name(name);
            assert_eq!(clean_file_name(&once), once, "{name:?}");
            assert!(file_name_ok(&once), "{name:?} → {once:?}");
        }
        assert!(!file_name_ok(".x"));
        assert!(!file_name_ok("x/"));
        assert!(!file_name_ok("a b"));
    }

    #[test]
    fn retry_after_parses_seconds() {
        assert_eq!(retry_after(Some("42")), Duration::from_secs(42));
        assert_eq!(retry_after(Some(" 7 ")), Duration::from_secs(7));
        assert_eq!(retry_after(Some("0")), Duration::from_secs(1));
        assert_eq!(retry_after(None), DEFAULT_RETRY_AFTER);
        assert_eq!(retry_after(Some("soon")), DEFAULT_RETRY_AFTER);
        assert_eq!(retry_after(Some("-3")), DEFAULT_RETRY_AFTER);
        assert_eq!(retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")), DEFAULT_RETRY_AFTER);
        assert_eq!(retry_after(Some("999999999999")), MAX_RETRY_AFTER);
    }

    #[test]
    fn safety_margin_is_a_minute_or_a_tenth() {
        assert_eq!(safety_margin(Duration::from_secs(86_400)), Duration::from_secs(60));
        assert_eq!(safety_margin(Duration::from_secs(600)), Duration::from_secs(60));
        assert_eq!(safety_margin(Duration::from_secs(300)), Duration::from_secs(30));
        assert_eq!(safety_margin(Duration::from_secs(10)), Duration::from_secs(1));
        assert_eq!(safety_margin(Duration::from_secs(1)), Duration::from_millis(100));
    }

    #[test]
    fn url_refusals_mean_presign_again() {
        assert!(url_refused(StatusCode::FORBIDDEN, b"<Code>AccessDenied</Code><Message>Request has expired</Message>"));
        assert!(url_refused(StatusCode::FORBIDDEN, b""));
        assert!(url_refused(StatusCode::BAD_REQUEST, b"<Code>SignatureDoesNotMatch</Code>"));
        assert!(!url_refused(StatusCode::BAD_REQUEST, b"<Code>BadDigest</Code>"));
        assert!(!url_refused(StatusCode::NOT_FOUND, b"expired"));
    }

    #[test]
    fn presigned_serializes_with_api_names() {
        let p = Presigned {
            url: "http://x/u".into(),
            upload_key: "org/k/f".into(),
            headers: BTreeMap::from([("Content-MD5".to_string(), "abc".to_string())]),
            expires_at: 5,
            correlation_id: None,
        };
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["uploadKey"], "org/k/f");
        assert_eq!(json["expiresAt"], 5);
        assert!(p.expired());
        assert_eq!(serde_json::from_value::<Presigned>(json).unwrap(), p);
    }

    #[test]
    fn errors_carry_no_secret() {
        let config = GenesysCloudConfig {
            api_url: "http://127.0.0.1:1".into(),
            login_url: "http://127.0.0.1:1/".into(),
            client_id: "id".into(),
            client_secret: crate::config::Secret::new("s3cr3t"),
            outbound: Default::default(),
        };
        let client = CloudClient::new(&config, HttpClient::plain(), Duration::from_secs(1));
        assert_eq!(client.login_url, "http://127.0.0.1:1");
        assert!(!format!("{client:?}").contains("s3cr3t"));
        assert!(!format!("{client:?}").contains(&client.basic));
    }
}
