//! HTTP Basic authentication against an Apache password file, for the tokio/hyper server.
//!
//! The file is re-read when it changes, verified credentials are cached briefly so bulk
//! uploads do not pay for bcrypt on every request, and expensive hashes are checked off the
//! reactor with bounded, fair costs: concurrent checks of one credential share one hash, a
//! client address has at most one hash queued or running, the pool runs at most one hash per
//! core, and an address with recent failures waits before any hash is computed for it.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::Read;
use std::net::{IpAddr, Ipv6Addr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use http::HeaderValue;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::htpasswd::{self, PasswordFile, Scheme};
use crate::metrics::Counter;

/// An HTTP Basic authenticator backed by an `htpasswd` file.
pub struct BasicAuth {
    path: PathBuf,
    realm: String,
    challenge: HeaderValue,
    settings: Settings,
    // Keys the credential cache so that a memory dump does not yield plain SHA-256 digests
    // of passwords that could be brute-forced offline.
    cache_secret: [u8; 32],
    state: Mutex<State>,
    failures: Mutex<FailureTable>,
    // Only one task probes the file at a time; the others go on with the users they have.
    reload_lock: tokio::sync::Mutex<()>,
    // Bounds concurrent bcrypt/sha-crypt runs so a flood of bad passwords cannot occupy
    // every blocking thread and core.
    verifiers: Arc<Semaphore>,
    // One verification per credential at a time: the others wait for its answer.
    inflight: Mutex<HashMap<[u8; 32], Arc<tokio::sync::OnceCell<bool>>>>,
    // One expensive hash queued or running per client address (grouped as the failure table
    // groups them), so one address's flood waits behind itself, not in front of others.
    per_client: Mutex<HashMap<IpAddr, (Arc<Semaphore>, usize)>>,
    pub counters: AuthCounters,
}

/// What authentication cost, for `/metrics`.
#[derive(Debug, Default)]
pub struct AuthCounters {
    /// Expensive hashes (bcrypt, sha-crypt) computed.
    pub hashes: Counter,
    /// Checks that waited for a verification another request of the same credential ran.
    pub shared: Counter,
    /// Checks delayed before hashing because their address failed recently.
    pub slowed: Counter,
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// No `Authorization` header.
    #[error("no credentials")]
    Missing,
    /// An `Authorization` header that is not well-formed Basic credentials.
    #[error("malformed authorization header")]
    Malformed,
    /// Unknown user or wrong password.
    #[error("bad credentials")]
    BadCredentials,
}

impl AuthFailure {
    /// A short reason for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "no credentials",
            AuthFailure::Malformed => "malformed authorization header",
            AuthFailure::BadCredentials => "bad credentials",
        }
    }
}

impl BasicAuth {
    /// Loads the password file at `path`; fails if it is missing, unreadable or has any
    /// problem (all of them are listed in the error).
    pub fn open(path: PathBuf, realm: String) -> anyhow::Result<Arc<BasicAuth>> {
        BasicAuth::open_with(path, realm, Settings::default())
    }

    /// Checks the request's `Authorization` header and returns the authenticated user.
    ///
    /// A credential that is not cached, from a client address that failed more than 5 times
    /// within 60 s, is checked only after a delay (250 ms, doubling up to 5 s), before any
    /// hash is computed; a cached credential is never delayed.
    pub async fn check(&self, authorization: Option<&HeaderValue>, client: IpAddr) -> Result<String, AuthFailure> {
        let Some(value) = authorization else {
            return Err(AuthFailure::Missing);
        };
        let Some((user, password)) = parse_basic(value.as_bytes()) else {
            return Err(self.fail(client, None, AuthFailure::Malformed).await);
        };
        self.maybe_reload().await;

        let key = self.cache_key(&user, &password);
        let now = Instant::now();
        let (hash, decoy, generation) = {
            let mut st = self.state();
            match st.cache.get(&key) {
                Some(&expiry) if now < expiry => return Ok(user),
                Some(_) => {
                    st.cache.remove(&key);
                }
                None => {}
            }
            let hash = st.file.lookup(&user).map(str::to_owned);
            (hash, st.decoy.clone(), st.generation)
        };

        let (hash, known) = match (hash, decoy) {
            (Some(hash), _) => (hash, true),
            // Spend the same effort on unknown users so timing does not reveal which exist.
            (None, Some(decoy)) => (decoy, false),
            (None, None) => return Err(self.fail(client, Some(&user), AuthFailure::BadCredentials).await),
        };
        let delay = self.failure_table().pending_delay(throttle_key(client), now, &self.settings);
        if let Some(delay) = delay {
            self.counters.slowed.inc();
            tokio::time::sleep(delay).await;
        }
        let ok = self.verify_shared(key, hash, password, client, known.then_some(generation)).await && known;
        if !ok {
            return Err(self.fail(client, Some(&user), AuthFailure::BadCredentials).await);
        }
        self.remember(key, generation, Instant::now());
        tracing::debug!(user = ?user, %client, "authenticated");
        Ok(user)
    }

    /// The `WWW-Authenticate` value to send with a 401.
    pub fn challenge(&self) -> HeaderValue {
        self.challenge.clone()
    }

    /// The realm shown to users.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// The password file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Requests whose `Authorization` header is longer are refused without decoding; user
/// names and bcrypt passwords are far shorter.
const MAX_HEADER_LEN: usize = 8 * 1024;

/// Tunables; tests shorten them.
#[derive(Debug, Clone)]
struct Settings {
    reload_interval: Duration,
    cache_ttl: Duration,
    cache_max: usize,
    fail_window: Duration,
    free_failures: usize,
    delay_start: Duration,
    delay_cap: Duration,
    max_clients: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            reload_interval: Duration::from_secs(1),
            cache_ttl: Duration::from_secs(5 * 60),
            cache_max: 10_000,
            fail_window: Duration::from_secs(60),
            free_failures: 5,
            delay_start: Duration::from_millis(250),
            delay_cap: Duration::from_secs(5),
            max_clients: 10_000,
        }
    }
}

struct State {
    file: Arc<PasswordFile>,
    fingerprint: Option<Fingerprint>,
    last_check: Instant,
    // Bumped whenever the cache is dropped, so a verification that started before a reload
    // does not put a stale success back.
    generation: u64,
    cache: HashMap<[u8; 32], Instant>,
    decoy: Option<String>,
}

impl State {
    fn install(&mut self, file: PasswordFile, fingerprint: Fingerprint) {
        self.decoy = file.iter().next().map(|(_, h)| h.to_owned());
        self.file = Arc::new(file);
        self.fingerprint = Some(fingerprint);
        self.drop_cache();
    }

    fn drop_cache(&mut self) {
        self.cache.clear();
        self.generation += 1;
    }
}

/// What identifies one version of the password file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Fingerprint {
    fn of(m: &fs::Metadata) -> Fingerprint {
        Fingerprint { dev: m.dev(), ino: m.ino(), len: m.len(), mtime: m.mtime(), mtime_nsec: m.mtime_nsec() }
    }
}

enum Probe {
    Unchanged,
    Unreadable(std::io::Error),
    Changed { fingerprint: Fingerprint, loaded: anyhow::Result<(PasswordFile, Fingerprint)> },
}

impl BasicAuth {
    fn open_with(path: PathBuf, realm: String, settings: Settings) -> anyhow::Result<Arc<Self>> {
        if realm.chars().any(char::is_control) {
            bail!("realm {realm:?} contains control characters");
        }
        let challenge = HeaderValue::from_bytes(
            format!("Basic realm=\"{}\", charset=\"UTF-8\"", realm.replace('\\', "\\\\").replace('"', "\\\""))
                .as_bytes(),
        )
        .with_context(|| format!("realm {realm:?} cannot be sent in a header"))?;

        let (file, fingerprint) = load(&path)?;
        tracing::info!(path = %path.display(), users = file.len(), "loaded password file");
        if file.is_empty() {
            tracing::warn!(path = %path.display(), "password file has no users; nobody can log in");
        }
        warn_if_world_readable(&path);

        let parallelism = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        let mut state = State {
            file: Arc::new(PasswordFile::default()),
            fingerprint: None,
            last_check: Instant::now(),
            generation: 0,
            cache: HashMap::new(),
            decoy: None,
        };
        state.install(file, fingerprint);
        Ok(Arc::new(BasicAuth {
            path,
            realm,
            challenge,
            settings,
            cache_secret: rand::random(),
            state: Mutex::new(state),
            failures: Mutex::new(FailureTable::new(Instant::now())),
            reload_lock: tokio::sync::Mutex::new(()),
            verifiers: Arc::new(Semaphore::new(parallelism)),
            inflight: Mutex::default(),
            per_client: Mutex::default(),
            counters: AuthCounters::default(),
        }))
    }

    // A panic while holding the lock cannot leave the maps inconsistent in a way that
    // matters for authentication, so poisoning is ignored rather than propagated.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn failure_table(&self) -> MutexGuard<'_, FailureTable> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn maybe_reload(&self) {
        let Ok(_guard) = self.reload_lock.try_lock() else {
            return;
        };
        let old = {
            let mut st = self.state();
            let now = Instant::now();
            if now.duration_since(st.last_check) < self.settings.reload_interval {
                return;
            }
            st.last_check = now;
            st.fingerprint
        };
        let path = self.path.clone();
        let probe = match tokio::task::spawn_blocking(move || probe(&path, old)).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "password file check failed");
                return;
            }
        };
        let mut st = self.state();
        match probe {
            Probe::Unchanged => {}
            Probe::Unreadable(e) => {
                // Warn once per disappearance, not every second.
                if st.fingerprint.take().is_some() {
                    tracing::warn!(
                        path = %self.path.display(),
                        error = %e,
                        users = st.file.len(),
                        "password file unreadable; keeping the users loaded before"
                    );
                    st.drop_cache();
                }
            }
            Probe::Changed { loaded: Ok((file, fingerprint)), .. } => {
                tracing::info!(
                    path = %self.path.display(),
                    users = file.len(),
                    "reloaded password file"
                );
                st.install(file, fingerprint);
            }
            Probe::Changed { fingerprint, loaded: Err(e) } => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    users = st.file.len(),
                    "password file changed but cannot be used; keeping the users loaded before"
                );
                // Remembering the broken version avoids re-parsing it every second; the
                // next edit changes the fingerprint again.
                st.fingerprint = Some(fingerprint);
                st.drop_cache();
            }
        }
    }

    fn cache_key(&self, user: &str, password: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.cache_secret);
        // The length prefix keeps ("ab", "c") and ("a", "bc") apart.
        h.update((user.len() as u64).to_be_bytes());
        h.update(user.as_bytes());
        h.update(password);
        h.finalize().into()
    }

    fn remember(&self, key: [u8; 32], generation: u64, now: Instant) {
        let mut st = self.state();
        if st.generation != generation {
            return;
        }
        if st.cache.len() >= self.settings.cache_max && !st.cache.contains_key(&key) {
            st.cache.retain(|_, expiry| *expiry > now);
            // Only possible with more than cache_max distinct good logins within the TTL;
            // starting over is cheaper than tracking recency.
            if st.cache.len() >= self.settings.cache_max {
                st.cache.clear();
            }
        }
        st.cache.insert(key, now + self.settings.cache_ttl);
    }

    /// Verifies once for all concurrent checks of the same credential (`key`): the first
    /// runs the hash, the others wait for its answer. If the first is dropped half way, a
    /// waiter takes over.
    /// A success is cached (for `generation`, when given) before the shared answer is
    /// forgotten, so a check arriving in between finds the cache, not a second hash.
    async fn verify_shared(
        &self,
        key: [u8; 32],
        hash: String,
        password: Vec<u8>,
        client: IpAddr,
        generation: Option<u64>,
    ) -> bool {
        if !Scheme::of(&hash).is_some_and(Scheme::is_expensive) {
            return htpasswd::verify(&hash, &password);
        }
        let cell = Arc::clone(self.inflight.lock().unwrap_or_else(PoisonError::into_inner).entry(key).or_default());
        let mut ran = false;
        let ok = *cell
            .get_or_init(|| {
                ran = true;
                self.verify(hash, password, client)
            })
            .await;
        if !ran {
            self.counters.shared.inc();
        }
        if let (true, Some(generation)) = (ok, generation) {
            self.remember(key, generation, Instant::now());
        }
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if inflight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            inflight.remove(&key);
        }
        ok
    }

    async fn verify(&self, hash: String, password: Vec<u8>, client: IpAddr) -> bool {
        let _turn = ClientTurn::wait(self, throttle_key(client)).await;
        let Ok(permit) = self.verifiers.clone().acquire_owned().await else {
            return false;
        };
        self.counters.hashes.inc();
        let task = tokio::task::spawn_blocking(move || {
            // Held until the hash is done even if the request is dropped meanwhile.
            let _permit = permit;
            htpasswd::verify(&hash, &password)
        });
        match task.await {
            Ok(ok) => ok,
            Err(e) => {
                tracing::error!(error = %e, "password verification task failed");
                false
            }
        }
    }

    /// Records the failure; a client over its allowance then waits before its answer (and
    /// before its next hash, see `check`). Recording comes first so that dropping the
    /// request does not erase the attempt.
    async fn fail(&self, client: IpAddr, user: Option<&str>, failure: AuthFailure) -> AuthFailure {
        let delay = self.failure_table().record(throttle_key(client), Instant::now(), &self.settings);
        tracing::debug!(
            %client,
            user = ?user,
            reason = failure.reason(),
            delay_ms = delay.map_or(0, |d| d.as_millis() as u64),
            "authentication failed"
        );
        if let Some(d) = delay {
            if d == self.settings.delay_start {
                tracing::warn!(%client, "repeated authentication failures; slowing client down");
            }
            tokio::time::sleep(d).await;
        }
        failure
    }
}

fn load(path: &Path) -> anyhow::Result<(PasswordFile, Fingerprint)> {
    let mut f = fs::File::open(path).with_context(|| format!("cannot read password file {}", path.display()))?;
    // Taken from the open file so it describes exactly the version that is read.
    let fingerprint =
        Fingerprint::of(&f.metadata().with_context(|| format!("cannot stat password file {}", path.display()))?);
    let mut text = String::new();
    f.read_to_string(&mut text)
        .with_context(|| format!("cannot read password file {} as UTF-8 text", path.display()))?;
    let file = PasswordFile::parse(&text).map_err(|problems| {
        anyhow!("password file {} has {} problem(s): {}", path.display(), problems.len(), problems.join("; "))
    })?;
    Ok((file, fingerprint))
}

fn probe(path: &Path, old: Option<Fingerprint>) -> Probe {
    match fs::metadata(path) {
        Err(e) => Probe::Unreadable(e),
        Ok(m) if Some(Fingerprint::of(&m)) == old => Probe::Unchanged,
        Ok(m) => Probe::Changed { fingerprint: Fingerprint::of(&m), loaded: load(path) },
    }
}

fn warn_if_world_readable(path: &Path) {
    let world_readable = fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0);
    if world_readable {
        tracing::warn!(path = %path.display(), "password file is world-readable");
    }
}

/// `Basic <base64(user:password)>`, scheme case-insensitive, padding optional. The user
/// must be UTF-8; the password is kept as bytes, as Apache compares bytes.
fn parse_basic(value: &[u8]) -> Option<(String, Vec<u8>)> {
    const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    if value.len() > MAX_HEADER_LEN {
        return None;
    }
    let value = value.trim_ascii();
    let space = value.iter().position(|&c| c == b' ')?;
    let (scheme, token) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let decoded = B64.decode(token.trim_ascii()).ok()?;
    let colon = decoded.iter().position(|&c| c == b':')?;
    let user = std::str::from_utf8(&decoded[..colon]).ok()?.to_owned();
    Some((user, decoded[colon + 1..].to_vec()))
}

/// IPv4-mapped addresses count as IPv4, and an IPv6 client as its /64, since one host
/// usually gets a whole /64 and could otherwise rotate addresses freely.
fn throttle_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000)),
        },
    }
}

/// A client address's turn to hash: held while its hash is queued or running.
struct ClientTurn<'a> {
    auth: &'a BasicAuth,
    client: IpAddr,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl<'a> ClientTurn<'a> {
    async fn wait(auth: &'a BasicAuth, client: IpAddr) -> Option<ClientTurn<'a>> {
        let gate = {
            let mut map = auth.per_client.lock().unwrap_or_else(PoisonError::into_inner);
            let (gate, waiters) = map.entry(client).or_insert_with(|| (Arc::new(Semaphore::new(1)), 0));
            *waiters += 1;
            Arc::clone(gate)
        };
        // Counted as a waiter from here: the guard's drop undoes it even if this is cancelled.
        let mut turn = PendingTurn { auth, client, done: false };
        let permit = gate.acquire_owned().await.ok()?;
        turn.done = true;
        Some(ClientTurn { auth, client, _permit: permit })
    }
}

/// Undoes a waiter's count if it stops waiting before its turn.
struct PendingTurn<'a> {
    auth: &'a BasicAuth,
    client: IpAddr,
    done: bool,
}

impl Drop for PendingTurn<'_> {
    fn drop(&mut self) {
        if !self.done {
            leave(self.auth, self.client);
        }
    }
}

impl Drop for ClientTurn<'_> {
    fn drop(&mut self) {
        leave(self.auth, self.client);
    }
}

fn leave(auth: &BasicAuth, client: IpAddr) {
    let mut map = auth.per_client.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, waiters)) = map.get_mut(&client) {
        *waiters -= 1;
        if *waiters == 0 {
            map.remove(&client);
        }
    }
}

/// Recent failure times per client, bounded in clients and in times per client.
struct FailureTable {
    clients: HashMap<IpAddr, VecDeque<Instant>>,
    last_sweep: Instant,
}

impl FailureTable {
    fn new(now: Instant) -> FailureTable {
        FailureTable { clients: HashMap::new(), last_sweep: now }
    }

    /// Adds a failure and returns how long to wait before answering it.
    fn record(&mut self, client: IpAddr, now: Instant, s: &Settings) -> Option<Duration> {
        if now.duration_since(self.last_sweep) >= s.fail_window {
            self.sweep(now, s);
        }
        if !self.clients.contains_key(&client) && self.clients.len() >= s.max_clients {
            self.sweep(now, s);
            if self.clients.len() >= s.max_clients {
                self.evict_stalest();
            }
        }
        let times = self.clients.entry(client).or_default();
        while times.front().is_some_and(|&t| now.duration_since(t) >= s.fail_window) {
            times.pop_front();
        }
        times.push_back(now);
        // Past the point where the delay is capped, older failures change nothing.
        while times.len() > s.free_failures + 16 {
            times.pop_front();
        }
        delay_for(times.len(), s)
    }

    /// How long a client waits before its next hash: the delay its next failure would earn.
    fn pending_delay(&self, client: IpAddr, now: Instant, s: &Settings) -> Option<Duration> {
        let times = self.clients.get(&client)?;
        let recent = times.iter().filter(|&&t| now.duration_since(t) < s.fail_window).count();
        delay_for(recent + 1, s)
    }

    fn sweep(&mut self, now: Instant, s: &Settings) {
        self.clients.retain(|_, times| times.back().is_some_and(|&t| now.duration_since(t) < s.fail_window));
        self.last_sweep = now;
    }

    fn evict_stalest(&mut self) {
        let stalest = self.clients.iter().min_by_key(|(_, times)| times.back().copied()).map(|(ip, _)| *ip);
        if let Some(ip) = stalest {
            self.clients.remove(&ip);
        }
    }
}

fn delay_for(failures_in_window: usize, s: &Settings) -> Option<Duration> {
    let excess = failures_in_window.checked_sub(s.free_failures)?;
    if excess == 0 {
        return None;
    }
    let factor = 1u32 << (excess - 1).min(16);
    Some(s.delay_start.saturating_mul(factor).min(s.delay_cap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const FILE: &str = "\
# test users, made by Apache's htpasswd
mcp:$apr1$prdYq/l1$rsfcJhDC3WzZpp/MUSQ/U1
bcryptuser:$2y$05$i47LCKjqYJBrpSW89LXWiuT4NeCwls/sp.jTz012KhQ6bv8OSNRZe
shauser:{SHA}QY7lFvHLCVxQ/y8Qp2GSiJwoHzo=
cryptuser:7K6VaYgjIzfew
sha512user:$6$9MVQYXnZv5EEOZSi$gdg/G/lxo4CWdzYB.hFlnkgfaMCqit7H0.OcCmCe0OJiIrVujGJ7x3k8xQJ9.UeOQXJyaMC4A/GWMEMr13MTG/
u5:$5$5yjb80GdJk0z6v4P$VKrKEXBMyDk0AlWOtTcXSoo7W3EJ18BJlwSLHMUVyQA
user:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00
";

    const USERS: &[(&str, &str)] = &[
        ("mcp", "secret1"),
        ("bcryptuser", "secret2"),
        ("shauser", "secret3"),
        ("cryptuser", "secret4"),
        ("sha512user", "secret5"),
        ("u5", "secret6"),
        ("user", "password"),
    ];

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    struct TempFile {
        dir: PathBuf,
        path: PathBuf,
    }

    impl TempFile {
        fn new(text: &str) -> TempFile {
            let dir =
                std::env::temp_dir().join(format!("auth-basic-{}-{:x}", std::process::id(), rand::random::<u64>()));
            fs::create_dir_all(&dir).unwrap();
            let path = dir.join("htpasswd");
            fs::write(&path, text).unwrap();
            TempFile { dir, path }
        }

        /// Replaces the file the way editors and `set_user` do: new inode, then rename.
        fn replace(&self, text: &str) {
            let tmp = self.dir.join("new");
            fs::write(&tmp, text).unwrap();
            fs::rename(&tmp, &self.path).unwrap();
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn header(user: &str, password: &str) -> HeaderValue {
        basic_header(format!("{user}:{password}").as_bytes())
    }

    fn basic_header(raw: &[u8]) -> HeaderValue {
        let token = base64::engine::general_purpose::STANDARD.encode(raw);
        HeaderValue::from_str(&format!("Basic {token}")).unwrap()
    }

    fn fast_settings() -> Settings {
        Settings { reload_interval: Duration::ZERO, ..Settings::default() }
    }

    #[test]
    fn challenge_escapes_realm() {
        let f = TempFile::new(FILE);
        let auth = BasicAuth::open(f.path.clone(), r#"My "DAV" \ área"#.into()).unwrap();
        assert_eq!(auth.challenge().as_bytes(), r#"Basic realm="My \"DAV\" \\ área", charset="UTF-8""#.as_bytes());
        assert_eq!(auth.realm(), r#"My "DAV" \ área"#);
        assert!(BasicAuth::open(f.path.clone(), "bad\r\nrealm".into()).is_err());
    }

    #[test]
    fn open_reports_missing_and_broken_files() {
        let missing = std::env::temp_dir().join("auth-basic-surely-missing/htpasswd");
        let err = BasicAuth::open(missing, "r".into()).err().unwrap();
        let msg = format!("{err:#}");
        assert!(msg.contains("cannot read password file"), "{msg}");
        assert!(msg.contains("surely-missing"), "{msg}");

        let f = TempFile::new("ok:{SHA}QY7lFvHLCVxQ/y8Qp2GSiJwoHzo=\nplain:pw\nok:7K6VaYgjIzfew\n");
        let msg = format!("{:#}", BasicAuth::open(f.path.clone(), "r".into()).err().unwrap());
        assert!(msg.contains("2 problem(s)"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
        assert!(!msg.contains(":pw"), "{msg}");
    }

    #[tokio::test]
    async fn every_apache_format_authenticates() {
        let f = TempFile::new(FILE);
        let auth = BasicAuth::open(f.path.clone(), "dav".into()).unwrap();
        for (user, pw) in USERS {
            let got = auth.check(Some(&header(user, pw)), CLIENT).await;
            assert_eq!(got.as_deref(), Ok(*user));
        }
        for (user, _) in USERS.iter().take(4) {
            let got = auth.check(Some(&header(user, "wrong")), CLIENT).await;
            assert_eq!(got, Err(AuthFailure::BadCredentials), "{user}");
        }
        let unknown = auth.check(Some(&header("nobody", "secret1")), CLIENT).await;
        assert_eq!(unknown, Err(AuthFailure::BadCredentials));
    }

    #[tokio::test]
    async fn headers_are_classified() {
        let f = TempFile::new(FILE);
        let auth = BasicAuth::open(f.path.clone(), "dav".into()).unwrap();
        assert_eq!(auth.check(None, CLIENT).await, Err(AuthFailure::Missing));
        let malformed = [
            HeaderValue::from_static("Bearer abc"),
            HeaderValue::from_static("Basic"),
            HeaderValue::from_static("Basic !!!!"),
            basic_header(b"no colon"),
            basic_header(b"\xff\xfe:pw"),
            HeaderValue::from_str(&format!("Basic {}", "A".repeat(MAX_HEADER_LEN))).unwrap(),
        ];
        for (i, h) in malformed.iter().enumerate() {
            // Different clients, so the throttle stays out of the way.
            let ip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, i as u8));
            assert_eq!(auth.check(Some(h), ip).await, Err(AuthFailure::Malformed), "{h:?}");
        }
        // Lower-case scheme, extra spaces and missing padding are accepted; a colon in the
        // password belongs to the password.
        let token = base64::engine::general_purpose::STANDARD_NO_PAD.encode("mcp:secret1");
        let h = HeaderValue::from_str(&format!("basic   {token} ")).unwrap();
        assert_eq!(auth.check(Some(&h), CLIENT).await.as_deref(), Ok("mcp"));
        let f2 = TempFile::new(&format!("c:{}\n", htpasswd::hash_apr1(b"a:b")));
        let auth2 = BasicAuth::open(f2.path.clone(), "dav".into()).unwrap();
        assert_eq!(auth2.check(Some(&header("c", "a:b")), CLIENT).await.as_deref(), Ok("c"));
        assert_eq!(AuthFailure::Malformed.reason(), "malformed authorization header");
        assert_eq!(AuthFailure::Missing.to_string(), "no credentials");
    }

    #[tokio::test]
    async fn verified_credentials_are_cached_by_digest() {
        let f = TempFile::new(FILE);
        let auth = BasicAuth::open(f.path.clone(), "dav".into()).unwrap();
        let h = header("bcryptuser", "secret2");
        assert!(auth.check(Some(&h), CLIENT).await.is_ok());
        let _ = auth.check(Some(&header("bcryptuser", "nope")), CLIENT).await;
        {
            let st = auth.state();
            assert_eq!(st.cache.len(), 1, "only the success is cached");
            assert!(st.cache.contains_key(&auth.cache_key("bcryptuser", b"secret2")));
        }
        // Served from the cache: many checks take far less than as many bcrypt runs would.
        let start = Instant::now();
        for _ in 0..1000 {
            assert!(auth.check(Some(&h), CLIENT).await.is_ok());
        }
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
        // Keys differ per user and per password.
        assert_ne!(auth.cache_key("ab", b"c"), auth.cache_key("a", b"bc"));
    }

    #[tokio::test]
    async fn cache_entries_expire_and_stay_bounded() {
        let f = TempFile::new(FILE);
        let settings = Settings { cache_ttl: Duration::from_millis(30), cache_max: 3, ..Settings::default() };
        let auth = BasicAuth::open_with(f.path.clone(), "dav".into(), settings).unwrap();
        for (user, pw) in USERS {
            assert!(auth.check(Some(&header(user, pw)), CLIENT).await.is_ok());
            assert!(auth.state().cache.len() <= 3);
        }
        let key = auth.cache_key("mcp", b"secret1");
        let generation = auth.state().generation;
        auth.remember(key, generation, Instant::now());
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The expired entry is removed on its next use, and the login still works.
        assert!(auth.check(Some(&header("mcp", "secret1")), CLIENT).await.is_ok());
        let expiry = auth.state().cache[&key];
        assert!(expiry > Instant::now());
        // A verification that straddles a reload must not refill the cache.
        let generation = auth.state().generation;
        auth.state().drop_cache();
        auth.remember(key, generation, Instant::now());
        assert!(auth.state().cache.is_empty());
    }

    #[tokio::test]
    async fn file_changes_are_picked_up() {
        let f = TempFile::new(FILE);
        let auth = BasicAuth::open_with(f.path.clone(), "dav".into(), fast_settings()).unwrap();
        assert!(auth.check(Some(&header("mcp", "secret1")), CLIENT).await.is_ok());
        assert_eq!(auth.state().cache.len(), 1);

        // mcp removed, newbie added.
        let newbie = format!("newbie:{}\nuser:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\n", htpasswd::hash_apr1(b"fresh"));
        f.replace(&newbie);
        let other = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99));
        assert_eq!(
            auth.check(Some(&header("mcp", "secret1")), other).await,
            Err(AuthFailure::BadCredentials),
            "cached credential of a removed user must not survive the reload"
        );
        assert!(auth.check(Some(&header("newbie", "fresh")), CLIENT).await.is_ok());

        // A broken edit keeps the previous users.
        f.replace("newbie:plaintext-password\n");
        assert!(auth.check(Some(&header("newbie", "fresh")), CLIENT).await.is_ok());
        assert!(auth.check(Some(&header("user", "password")), CLIENT).await.is_ok());
        assert_eq!(auth.state().file.len(), 2);

        // So does a deleted file, and it is read again once it comes back.
        fs::remove_file(&f.path).unwrap();
        assert!(auth.check(Some(&header("user", "password")), CLIENT).await.is_ok());
        f.replace(FILE);
        assert!(auth.check(Some(&header("u5", "secret6")), CLIENT).await.is_ok());
        assert_eq!(auth.state().file.len(), USERS.len());
    }

    #[tokio::test]
    async fn reload_is_checked_at_most_once_per_interval() {
        let f = TempFile::new(FILE);
        let auth = BasicAuth::open(f.path.clone(), "dav".into()).unwrap();
        f.replace("late:{SHA}QY7lFvHLCVxQ/y8Qp2GSiJwoHzo=\n");
        // Within a second of loading, the change is not looked at yet.
        assert!(auth.check(Some(&header("mcp", "secret1")), CLIENT).await.is_ok());
        auth.state().last_check = Instant::now() - Duration::from_secs(2);
        assert!(auth.check(Some(&header("late", "secret3")), CLIENT).await.is_ok());
    }

    #[test]
    fn failure_delays_grow_and_cap() {
        let s = Settings::default();
        let t0 = Instant::now();
        let mut table = FailureTable::new(t0);
        let delays: Vec<_> = (0..12).map(|i| table.record(CLIENT, t0 + Duration::from_secs(i), &s)).collect();
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(
            delays,
            [None, None, None, None, None, ms(250), ms(500), ms(1000), ms(2000), ms(4000), ms(5000), ms(5000)]
        );
        // Another client is unaffected.
        let other = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(table.record(other, t0 + Duration::from_secs(12), &s), None);
        // Failures older than the window no longer count.
        let later = t0 + Duration::from_secs(12 + 61);
        assert_eq!(table.record(CLIENT, later, &s), None);
        // Five failures spread wider than the window never trigger a delay.
        let mut table = FailureTable::new(t0);
        for i in 0..20 {
            assert_eq!(table.record(CLIENT, t0 + Duration::from_secs(13 * i), &s), None);
        }
    }

    #[test]
    fn failure_table_is_bounded_and_ages_out() {
        let s = Settings { max_clients: 100, ..Settings::default() };
        let t0 = Instant::now();
        let mut table = FailureTable::new(t0);
        for i in 0..1000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            table.record(ip, t0 + Duration::from_millis(u64::from(i)), &s);
            assert!(table.clients.len() <= 100);
        }
        // The most recent client survived eviction.
        assert!(table.clients.contains_key(&IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + 999))));
        // A periodic sweep drops everyone idle for a window.
        let late = t0 + Duration::from_secs(200);
        table.record(CLIENT, late, &s);
        assert_eq!(table.clients.len(), 1);
        // Per-client history is bounded too.
        for i in 0..1000 {
            table.record(CLIENT, late + Duration::from_millis(i), &s);
        }
        assert!(table.clients[&CLIENT].len() <= s.free_failures + 16);
    }

    #[test]
    fn ipv6_clients_are_grouped_by_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(throttle_key(a), throttle_key(b));
        assert_ne!(throttle_key(a), throttle_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(throttle_key(mapped), CLIENT);
    }

    #[tokio::test]
    async fn an_address_that_keeps_failing_waits_before_its_next_hash_but_a_cached_login_does_not() {
        let f = TempFile::new(FILE);
        let settings =
            Settings { delay_start: Duration::from_millis(1), delay_cap: Duration::from_millis(2), ..fast_settings() };
        let auth = BasicAuth::open_with(f.path.clone(), "dav".into(), settings).unwrap();
        let good = header("bcryptuser", "secret2");
        assert!(auth.check(Some(&good), CLIENT).await.is_ok(), "cached from here on");
        let bad = header("bcryptuser", "wrong");
        for _ in 0..5 {
            assert!(auth.check(Some(&bad), CLIENT).await.is_err());
        }
        assert_eq!(auth.counters.slowed.get(), 0, "five failures are free");
        assert!(auth.check(Some(&bad), CLIENT).await.is_err());
        assert_eq!(auth.counters.slowed.get(), 1, "the sixth waits before hashing");
        let hashes = auth.counters.hashes.get();
        assert!(auth.check(Some(&good), CLIENT).await.is_ok());
        assert_eq!(auth.counters.slowed.get(), 1, "a cached login is never slowed");
        assert_eq!(auth.counters.hashes.get(), hashes, "nor hashed");
        // An uncached login from the failing address waits too; another address does not.
        assert!(auth.check(Some(&header("sha512user", "secret5")), CLIENT).await.is_ok());
        assert_eq!(auth.counters.slowed.get(), 2);
        let other = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3));
        assert!(auth.check(Some(&bad), other).await.is_err());
        assert_eq!(auth.counters.slowed.get(), 2);
        // Missing credentials (a browser's first request) are not failures.
        for _ in 0..10 {
            assert_eq!(auth.check(None, other).await, Err(AuthFailure::Missing));
        }
        assert_eq!(auth.failure_table().clients[&other].len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn simultaneous_first_logins_of_one_user_share_one_hash() {
        let f = TempFile::new(FILE);
        let auth = BasicAuth::open_with(f.path.clone(), "dav".into(), fast_settings()).unwrap();
        let tasks: Vec<_> = (0..100u8)
            .map(|i| {
                let auth = auth.clone();
                // From many addresses, as 100 recorders would come.
                let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, i));
                tokio::spawn(async move { auth.check(Some(&header("bcryptuser", "secret2")), ip).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().as_deref(), Ok("bcryptuser"));
        }
        assert_eq!(auth.counters.hashes.get(), 1, "one bcrypt for 100 logins");
        assert!(auth.inflight.lock().unwrap().is_empty(), "nothing left in flight");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_from_one_address_holds_at_most_one_place_in_the_hash_queue() {
        let f = TempFile::new(FILE);
        let auth = BasicAuth::open_with(f.path.clone(), "dav".into(), fast_settings()).unwrap();
        let flooder = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
        let places = auth.verifiers.available_permits();
        assert!(places >= 2, "{places}");
        let flood: Vec<_> = (0..50)
            .map(|i| {
                let auth = auth.clone();
                tokio::spawn(async move { auth.check(Some(&header("bcryptuser", &format!("bad{i}"))), flooder).await })
            })
            .collect();
        // While the flood runs, it never holds more than one of the pool's places: its waiters
        // sit behind one turn, not in the pool's queue, whatever the machine's pace.
        let mut seen_hashing = false;
        let mut legit = None;
        while flood.iter().any(|t| !t.is_finished()) {
            // Once the flood hashes, a legitimate first login from elsewhere: it holds one
            // place more, and the flood still one at most.
            let held = places - auth.verifiers.available_permits();
            let bound = if legit.is_some() { 2 } else { 1 };
            assert!(held <= bound, "{held} of {places} places held (a login besides: {})", legit.is_some());
            if held == 1 && !seen_hashing {
                seen_hashing = true;
                let auth = auth.clone();
                legit =
                    Some(tokio::spawn(async move { auth.check(Some(&header("bcryptuser", "secret2")), CLIENT).await }));
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        assert!(seen_hashing, "the flood never hashed while watched");
        let legit = legit.expect("started").await.unwrap();
        assert_eq!(legit.as_deref(), Ok("bcryptuser"));
        for t in flood {
            assert!(t.await.unwrap().is_err());
        }
        assert!(auth.per_client.lock().unwrap().is_empty(), "every turn was given back");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_checks_all_succeed() {
        let f = TempFile::new(FILE);
        let auth = BasicAuth::open(f.path.clone(), "dav".into()).unwrap();
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let auth = auth.clone();
                let (user, pw) = USERS[i % USERS.len()];
                tokio::spawn(async move { auth.check(Some(&header(user, pw)), CLIENT).await })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().as_deref(), Ok(USERS[i % USERS.len()].0));
        }
    }
}
