//! Where recordings go: Genesys Cloud (one client per EX Org, chosen by tenant) or a local
//! directory (labs and the sandbox): `<dir>/<tenant>/<file>` and `<file>.json` beside it, each
//! written to a temp file, fsynced and renamed, so a repeat overwrites and a reader never sees
//! half a file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::cloud::CloudClient;
use crate::config::{GenesysCloudConfig, Sink as SinkConfig};
use crate::dav_client::FetchedBody;
use crate::durable::{Flush, replace_file, temp_name};
use crate::http::client::HttpClient;

pub enum Sink {
    Local(LocalSink),
    Cloud(Box<CloudSink>),
}

pub struct LocalSink {
    pub dir: PathBuf,
    fsync: bool,
}

pub struct CloudSink {
    default: CloudClient,
    default_tenant: String,
    tenants: BTreeMap<String, CloudClient>,
    pub sidecar: bool,
    pub signed_url_timeout: Duration,
}

impl Sink {
    /// `workers`: uploads at once, the connections kept per org.
    pub fn new(config: &SinkConfig, request_timeout: Duration, fsync: bool, workers: usize) -> anyhow::Result<Sink> {
        use anyhow::Context;
        Ok(match config {
            SinkConfig::Local { dir } => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create the local sink {}", dir.display()))?;
                Sink::Local(LocalSink { dir: dir.clone(), fsync })
            }
            SinkConfig::Cloud { default, default_tenant, tenants, sidecar, signed_url_timeout } => {
                let http = client_for(default, workers)?;
                let mut by_tenant = BTreeMap::new();
                for (name, org) in tenants {
                    by_tenant.insert(name.clone(), CloudClient::new(org, client_for(org, workers)?, request_timeout));
                }
                Sink::Cloud(Box::new(CloudSink {
                    default: CloudClient::new(default, http, request_timeout),
                    default_tenant: default_tenant.clone(),
                    tenants: by_tenant,
                    sidecar: *sidecar,
                    signed_url_timeout: *signed_url_timeout,
                }))
            }
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Sink::Local(l) => format!("local directory {}", l.dir.display()),
            Sink::Cloud(c) => format!("Genesys Cloud ({} org(s))", 1 + c.tenants.len()),
        }
    }
}

fn client_for(org: &GenesysCloudConfig, workers: usize) -> anyhow::Result<HttpClient> {
    HttpClient::with_idle(&org.outbound, workers)
}

impl CloudSink {
    /// The client of the tenant's EX Org. With no tenant table the one org serves every
    /// tenant; once any tenant has its own org, the top-level org serves `default_tenant` only
    /// and a tenant without an org has none (its recordings wait: never uploaded elsewhere,
    /// which would put them into another tenant's organization).
    pub fn client(&self, tenant: &str) -> Option<&CloudClient> {
        if self.tenants.is_empty() || tenant == self.default_tenant {
            return Some(&self.default);
        }
        self.tenants.get(tenant)
    }

    pub fn clients(&self) -> impl Iterator<Item = (&str, &CloudClient)> {
        std::iter::once(("default", &self.default)).chain(self.tenants.iter().map(|(k, v)| (k.as_str(), v)))
    }
}

impl LocalSink {
    /// Copies the fetched audio and writes its metadata; blocking (run on the blocking pool).
    pub fn deliver(&self, tenant: &str, file: &str, audio: &FetchedBody, metadata: &[u8]) -> std::io::Result<PathBuf> {
        let tenant = if super::job::valid_file_name(tenant) && !tenant.starts_with('.') { tenant } else { "default" };
        let dir = self.dir.join(tenant);
        std::fs::create_dir_all(&dir)?;
        let target = dir.join(file);
        let meta_name = format!("{file}.json");
        // Metadata first: whoever sees the audio finds its metadata beside it.
        let flush = if self.fsync { Flush::All } else { Flush::No };
        replace_file(&dir.join(temp_name(&meta_name)), &dir.join(&meta_name), 0o666, flush, |f| f.write_all(metadata))?;
        replace_file(&dir.join(temp_name(file)), &target, 0o666, flush, |f| match audio {
            FetchedBody::Memory(bytes) => f.write_all(bytes),
            FetchedBody::File(path) => std::io::copy(&mut std::fs::File::open(path)?, f).map(drop),
        })?;
        if self.fsync {
            std::fs::File::open(&dir)?.sync_all()?;
        }
        Ok(target)
    }

    pub fn writable(&self) -> bool {
        rustix::fs::access(&self.dir, rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK).is_ok()
    }
}
