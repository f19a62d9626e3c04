//! The `[exrp]` section with `[exrp.transient_storage]`, `[exrp.genesys_cloud]` (and its
//! per-tenant tables) and `[exrp.local_sink]`, named as the EXRP CME options
//! `recording-uploader.exec.*`; `EXRP_PORT` overrides the port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{ApiListener, Outbound, Secret, Section};

#[derive(Debug, Clone)]
pub struct ExrpConfig {
    /// The interaction-end API's listener.
    pub api: ApiListener,
    pub state_dir: PathBuf,
    /// When set, `POST /api/v1/interaction-end` needs Basic auth from this password file
    /// (`/health` stays open).
    pub htpasswd: Option<PathBuf>,
    /// Recordings worked on at once.
    pub workers: usize,
    /// One request to WebDAV or the cloud, up to its response head (and small bodies).
    pub request_timeout: Duration,
    /// Moving one recording's bytes (GET from WebDAV, PUT to the cloud).
    pub transfer_timeout: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// A job that has not succeeded this long after it was accepted goes dead.
    pub retry_window: Duration,
    /// A recording never seen in the store goes dead after this long.
    pub missing_timeout: Duration,
    /// The WebDAV LOCK timeout of a claim (refreshed while the work goes on).
    pub claim_timeout: Duration,
    /// How often the store is listed for work other instances left and for orphans.
    pub scan_interval: Duration,
    /// A job recorded in the store by another instance, unlocked for this long, is taken over.
    pub takeover_after: Duration,
    /// Recordings no job claims are removed once this old (None: only reported).
    pub orphan_ttl: Option<Duration>,
    /// Finished jobs are remembered this long, so a repeated interaction-end does nothing.
    pub done_retention: Duration,
    /// Names this instance in claims and in the store's job records. Must be unique per exrp:
    /// after a restart, a lock with this owner that no job of the process holds is taken back.
    pub instance: String,
    pub fsync: bool,
    pub storage: TransientStorage,
    pub sink: Sink,
}

/// `[exrp.transient_storage]`: where MCP's recordings wait (`recording-uploader.exec.transientStorage`).
#[derive(Debug, Clone)]
pub struct TransientStorage {
    /// The collection, e.g. "http://10.0.0.4/recordings", without a trailing slash.
    pub url: String,
    pub username: String,
    pub password: Secret,
    /// `ca_file`, `proxy`.
    pub outbound: Outbound,
}

#[derive(Debug, Clone)]
pub enum Sink {
    /// `[exrp.local_sink]` (the default when `[exrp.genesys_cloud]` is absent).
    Local { dir: PathBuf },
    /// `[exrp.genesys_cloud]`: the default org and one per tenant that has its own.
    Cloud {
        default: GenesysCloudConfig,
        /// The tenant the top-level org serves once any tenant has its own org.
        default_tenant: String,
        tenants: BTreeMap<String, GenesysCloudConfig>,
        sidecar: bool,
        signed_url_timeout: Duration,
    },
}

/// One EX Org's API access (`recording-uploader.exec.genesysCloud`).
#[derive(Debug, Clone, PartialEq)]
pub struct GenesysCloudConfig {
    /// "https://api.mypurecloud.com" (from `region`) or the `api_url` override; no trailing slash.
    pub api_url: String,
    /// "https://login.mypurecloud.com" (from `region`) or the `login_url` override; no trailing slash.
    pub login_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// `ca_file`, `proxy` (a tenant table inherits the top-level org's unless it sets them).
    pub outbound: Outbound,
}

/// The `.env` lookup (EXRP_PORT).
type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

impl ExrpConfig {
    pub(super) fn parse(table: &toml::Table, env: EnvLookup<'_>, problems: &mut Vec<String>) -> ExrpConfig {
        let mut s = Section::new("exrp", table, problems);
        let mut api = ApiListener::parse(&mut s, 8080, 4 << 20);
        if let Some(port) = env("EXRP_PORT") {
            match port.trim().parse::<u16>() {
                Ok(p) => api.listen.set_port(p),
                Err(_) => s.problem_at("listen", format!("EXRP_PORT={port:?} is not a port number")),
            }
        }
        let storage_table = s.table("transient_storage");
        let cloud_table = s.table("genesys_cloud");
        let sink_table = s.table("local_sink");
        let state_dir = s.path("state_dir");
        let htpasswd = s.path("htpasswd");
        let workers = s.count("workers", 32, 1..=1024);
        let request_timeout = s.duration("request_timeout", Duration::from_secs(30));
        let transfer_timeout = s.duration("transfer_timeout", Duration::from_secs(600));
        let retry_initial = s.duration("retry_initial", Duration::from_secs(1));
        let retry_max = s.duration("retry_max", Duration::from_secs(300));
        let retry_window = s.duration("retry_window", Duration::from_secs(72 * 3600));
        let missing_timeout = s.duration("missing_timeout", Duration::from_secs(600));
        let claim_timeout = s.duration("claim_timeout", Duration::from_secs(300));
        let scan_interval = s.duration("scan_interval", Duration::from_secs(30));
        let takeover_after = s.duration("takeover_after", Duration::from_secs(120));
        let orphan_ttl = s.duration("orphan_ttl", Duration::ZERO);
        let done_retention = s.duration("done_retention", Duration::from_secs(7 * 24 * 3600));
        let instance = s.string("instance").unwrap_or_else(|| default_instance(api.listen));
        let fsync = s.bool("fsync", true);
        if state_dir.is_none() {
            s.problem_at("state_dir", "is required: where the job queue (queue.db) is kept");
        }
        for (key, value) in [
            ("request_timeout", request_timeout),
            ("transfer_timeout", transfer_timeout),
            ("retry_initial", retry_initial),
            ("retry_max", retry_max),
            ("retry_window", retry_window),
            ("missing_timeout", missing_timeout),
            ("scan_interval", scan_interval),
            ("takeover_after", takeover_after),
        ] {
            if value.is_zero() {
                s.problem_at(key, "must be more than zero");
            }
        }
        if retry_max < retry_initial {
            s.problem_at("retry_max", "must not be below retry_initial");
        }
        if claim_timeout < Duration::from_secs(2) {
            s.problem_at("claim_timeout", "must be at least 2s (it is the WebDAV LOCK timeout, refreshed at a third)");
        }
        if instance.is_empty() || instance.chars().any(|c| c.is_control()) {
            s.problem_at("instance", "must be a printable name");
        }
        s.finish();

        let storage = match storage_table {
            Some(t) => TransientStorage::parse(t, problems),
            None => {
                problems.push(
                    "exrp.transient_storage: is required (type, url, username, password): where recordings are fetched from"
                        .into(),
                );
                None
            }
        };
        // Both are read even when both are given, so every problem is listed at once.
        let cloud = cloud_table.and_then(|t| parse_cloud(t, problems));
        let local = sink_table.and_then(|t| {
            let mut s = Section::new("exrp.local_sink", t, problems);
            let dir = s.path("dir");
            if dir.is_none() {
                s.problem_at("dir", "is required");
            }
            s.finish();
            dir.map(|dir| Sink::Local { dir })
        });
        if cloud_table.is_some() && sink_table.is_some() {
            problems.push("exrp: give [exrp.genesys_cloud] or [exrp.local_sink], not both".into());
        }
        let sink = match (cloud_table, sink_table) {
            (Some(_), _) => cloud,
            (None, Some(_)) => local,
            (None, None) => state_dir.as_ref().map(|d| Sink::Local { dir: d.join("injected") }),
        };
        let placeholder = || TransientStorage {
            url: String::new(),
            username: String::new(),
            password: Secret::new(""),
            outbound: Outbound::default(),
        };
        ExrpConfig {
            api,
            state_dir: state_dir.unwrap_or_default(),
            htpasswd,
            workers,
            request_timeout,
            transfer_timeout,
            retry_initial,
            retry_max,
            retry_window,
            missing_timeout,
            claim_timeout,
            scan_interval,
            takeover_after,
            orphan_ttl: (!orphan_ttl.is_zero()).then_some(orphan_ttl),
            done_retention,
            instance,
            fsync,
            storage: storage.unwrap_or_else(placeholder),
            sink: sink.unwrap_or(Sink::Local { dir: PathBuf::new() }),
        }
    }
}

pub(super) fn default_instance(listen: SocketAddr) -> String {
    let host = rustix::system::uname().nodename().to_string_lossy().into_owned();
    format!("{host}:{}", listen.port())
}

impl TransientStorage {
    fn parse(table: &toml::Table, problems: &mut Vec<String>) -> Option<TransientStorage> {
        let mut s = Section::new("exrp.transient_storage", table, problems);
        let access = s.store_access(true);
        let outbound = s.outbound("");
        s.finish();
        let (url, username, password) = access?;
        Some(TransientStorage { url, username, password, outbound })
    }
}

fn parse_cloud(table: &toml::Table, problems: &mut Vec<String>) -> Option<Sink> {
    let mut s = Section::new("exrp.genesys_cloud", table, problems);
    let tenants_table = s.table("tenants");
    let sidecar = s.bool("metadata_sidecar", true);
    let signed_url_timeout = s.duration("signed_url_timeout", Duration::from_secs(600));
    if !(Duration::from_secs(60)..=Duration::from_secs(604_800)).contains(&signed_url_timeout) {
        s.problem_at("signed_url_timeout", "must be from 60s to 7d (the API's signedUrlTimeoutSeconds range)");
    }
    let default_tenant = s.string("default_tenant").unwrap_or_else(|| "Environment".to_string());
    let default = org(&mut s, table, None);
    s.finish();
    let mut tenants = BTreeMap::new();
    for (name, value) in tenants_table.into_iter().flatten() {
        let Some(t) = value.as_table() else {
            problems.push(format!("exrp.genesys_cloud.tenants.{name}: must be a table"));
            continue;
        };
        let mut s = Section::new(format!("exrp.genesys_cloud.tenants.{name}"), t, problems);
        // An EX Org is never shared between tenants: a tenant's table names its own OAuth
        // client; region and URLs may come from the top-level org.
        let own = |keys: &[&str]| keys.iter().any(|k| t.contains_key(*k));
        if !own(&["client_id"]) {
            s.problem_at("client_id", "a tenant needs its own (one EX Org per tenant; it is not inherited)");
        }
        if !own(&[
            "client_secret",
            "client_secret_file",
            "client_secret_env",
            "password",
            "password_file",
            "password_env",
        ]) {
            s.problem_at("client_secret", "a tenant needs its own (one EX Org per tenant; it is not inherited)");
        }
        if name == &default_tenant {
            s.problem_at("client_id", format!("{name:?} is the default_tenant, served by the top-level org"));
        }
        let org = org(&mut s, t, default.as_ref());
        s.finish();
        if let Some(org) = org {
            tenants.insert(name.clone(), org);
        }
    }
    Some(Sink::Cloud { default: default?, default_tenant, tenants, sidecar, signed_url_timeout })
}

/// One org's keys; a tenant table inherits what it does not set from the default org.
fn org(
    s: &mut Section<'_, '_>,
    table: &toml::Table,
    inherit: Option<&GenesysCloudConfig>,
) -> Option<GenesysCloudConfig> {
    let region = s.string("region");
    let api_url = s.string("api_url");
    let login_url = s.string("login_url");
    let client_id = s.string("client_id");
    // CME names the client secret `password`; both are accepted.
    let mut secret_key = "client_secret";
    if ["password", "password_file", "password_env"].iter().any(|k| table.contains_key(*k)) {
        if ["client_secret", "client_secret_file", "client_secret_env"].iter().any(|k| table.contains_key(*k)) {
            s.problem_at("client_secret", "give client_secret or password (its CME name), not both");
        }
        secret_key = "password";
    }
    let client_secret = s.secret(secret_key);
    let mut outbound = s.outbound("");
    if let Some(parent) = inherit {
        if !table.contains_key("ca_file") {
            outbound.ca_file = parent.outbound.ca_file.clone();
        }
        if !table.contains_key("proxy") {
            outbound.proxy = parent.outbound.proxy.clone();
        }
    }
    if let Some(r) = &region
        && (r.is_empty() || r.contains(['/', ':', ' ']) || r.starts_with("api.") || r.starts_with("login."))
    {
        s.problem_at("region", format!("{r:?} is not a region domain like \"mypurecloud.com\" or \"euw2.pure.cloud\""));
    }
    let base = |key: &str, given: Option<String>, prefix: &str, s: &mut Section<'_, '_>| -> Option<String> {
        match (given, &region) {
            (Some(u), _) => match u.trim_end_matches('/').parse::<http::Uri>() {
                Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some() => {
                    Some(u.trim_end_matches('/').to_string())
                }
                _ => {
                    s.problem_at(key, format!("{u:?} is not an http(s):// URL"));
                    None
                }
            },
            (None, Some(r)) => Some(format!("https://{prefix}.{r}")),
            (None, None) => None,
        }
    };
    let api_url = base("api_url", api_url, "api", s).or_else(|| inherit.map(|d| d.api_url.clone()));
    let login_url = base("login_url", login_url, "login", s).or_else(|| inherit.map(|d| d.login_url.clone()));
    let client_id = client_id.or_else(|| inherit.map(|d| d.client_id.clone()));
    let client_secret = client_secret.or_else(|| inherit.map(|d| d.client_secret.clone()));
    if api_url.is_none() || login_url.is_none() {
        s.problem_at("region", "is required (e.g. \"mypurecloud.com\"), or both api_url and login_url");
    }
    if client_id.is_none() {
        s.problem_at("client_id", "is required (an OAuth client-credentials client of the EX Org)");
    }
    if client_secret.is_none() {
        s.problem_at("client_secret", "is required (or client_secret_file / _env, or password as in CME)");
    }
    Some(GenesysCloudConfig {
        api_url: api_url?,
        login_url: login_url?,
        client_id: client_id?,
        client_secret: client_secret?,
        outbound,
    })
}
