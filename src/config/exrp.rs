//! The `[exrp]` section with `[exrp.transient_storage]`, `[exrp.genesys_cloud]` (and its
//! per-tenant tables) and `[exrp.local_sink]`, named as the EXRP CME options
//! `recording-uploader.exec.*`; `EXRP_PORT` overrides the port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{Secret, TlsConfig};

#[derive(Debug, Clone)]
pub struct ExrpConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    pub state_dir: PathBuf,
    pub max_body_size: u64,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
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
    /// Names this instance in claims and in the store's job records.
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
}

#[derive(Debug, Clone)]
pub enum Sink {
    /// `[exrp.local_sink]` (the default when `[exrp.genesys_cloud]` is absent).
    Local { dir: PathBuf },
    /// `[exrp.genesys_cloud]`: the default org and one per tenant that has its own.
    Cloud {
        default: GenesysCloudConfig,
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
}
