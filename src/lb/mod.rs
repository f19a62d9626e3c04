//! Role `lb`: the retrying round-robin reverse proxy that replaces the vendor's nginx, one
//! listener per pool, nginx 1.22's upstream semantics (lb.md LB-01..LB-31), SIGHUP reload.

mod access_log;
mod balancer;
mod chash;
mod front;
mod h1;
mod health;
mod proxy;
mod retry;
mod spool;
mod upstream;
mod uri;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{HostHeader, LbConfig, PoolConfig, PoolSettings, split_host_port};
use crate::http::admin::RoleStatus;
use crate::http::{AcceptShare, ServerOptions};
use crate::metrics::{Counter, Encoder, Histogram, StatusCounts};
use balancer::{Balancer, Peer};
use retry::Failure;
use upstream::{Connector, KeepAlive, Timeouts};

/// A server name that does not resolve at start. Not a configuration error: DNS may be late
/// at boot, so the process exits with a code systemd restarts on.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve lb.pools.{pool} server {server:?}: {reason}")]
pub struct ResolveError {
    pub pool: String,
    pub server: String,
    pub reason: String,
}

/// What a request of one pool needs; replaced as a whole by SIGHUP.
pub struct Pool {
    pub name: String,
    pub settings: PoolSettings,
    /// The upstream Host header when it does not depend on the request (`host` = pool name or
    /// a literal), made once.
    host: Option<http::HeaderValue>,
    /// `set_headers`, made once (names and values were checked with the config).
    set_headers: http::HeaderMap,
    balancer: Balancer,
    connector: Connector,
    metrics: PoolMetrics,
    /// Stops this generation's health probes when a reload replaces it.
    probes: CancellationToken,
    /// The last requests, for `trace` (a reload starts a new generation with none).
    recent: crate::trace::Recent<access_log::Recent>,
}

#[derive(Default)]
struct PoolMetrics {
    requests: StatusCounts,
    duration: Histogram,
    retries: Counter,
    /// Request bodies past `client_body_buffer_size`, held in a temp file.
    bodies_spooled: Counter,
    peers: Vec<PeerMetrics>,
}

#[derive(Default)]
struct PeerMetrics {
    attempts: Counter,
    errors: Counter,
    timeouts: Counter,
    invalid_headers: Counter,
    statuses: Counter,
    latency: Histogram,
}

impl PeerMetrics {
    fn failed(&self, failure: Failure) {
        match failure {
            Failure::Error => &self.errors,
            Failure::Timeout => &self.timeouts,
            Failure::InvalidHeader => &self.invalid_headers,
            Failure::Status(_) => &self.statuses,
        }
        .inc();
    }
}

/// One pool's listener and its current generation.
struct Slot {
    name: String,
    listen: SocketAddr,
    /// The address actually bound (differs from `listen` for port 0).
    bound: std::sync::OnceLock<SocketAddr>,
    current: RwLock<Arc<Pool>>,
}

impl Slot {
    fn pool(&self) -> Arc<Pool> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

pub struct Lb {
    slots: Vec<Arc<Slot>>,
    /// Threads serving the pool listeners, each with a runtime of its own.
    workers: usize,
    /// Client connections per worker (nginx `worker_connections`).
    worker_connections: usize,
    source: Option<PathBuf>,
}

impl Lb {
    /// Resolves every server name; nothing is bound yet.
    pub async fn prepare(config: &LbConfig, source: Option<PathBuf>) -> anyhow::Result<Arc<Lb>> {
        let workers = worker_count(config.workers);
        let mut slots = Vec::new();
        for pc in &config.pools {
            let pool = build_pool(pc, workers).await?;
            log_pool(&pool, pc);
            slots.push(Arc::new(Slot {
                name: pc.name.clone(),
                listen: pc.listen,
                bound: std::sync::OnceLock::new(),
                current: RwLock::new(Arc::new(pool)),
            }));
        }
        Ok(Arc::new(Lb { slots, workers, worker_connections: config.worker_connections, source }))
    }

    /// The pools in config order with their listen addresses and TLS, for the app to bind.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        self.slots.iter().map(|s| (s.name.clone(), s.listen)).collect()
    }

    /// Serves every pool on its listener (same order as `listeners`) until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        listeners: Vec<(TcpListener, Option<Arc<rustls::ServerConfig>>)>,
        grace: Duration,
        mut reload: tokio::sync::broadcast::Receiver<()>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        for slot in &self.slots {
            health::start(&slot.pool(), &shutdown);
        }
        // Each worker thread runs its own single-threaded runtime and accepts on its own
        // handle of every pool's socket: a client connection and the upstream connections of
        // its requests then live on one thread, with no wake-ups or work stealing across
        // threads (nginx's worker model). The rest of the process stays on the main runtime.
        let mut sockets = Vec::new();
        for (slot, (listener, tls)) in self.slots.iter().zip(listeners) {
            if let Ok(addr) = listener.local_addr() {
                let _ = slot.bound.set(addr);
            }
            sockets.push((slot.clone(), listener.into_std()?, tls));
        }
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<anyhow::Result<()>>();
        let mut shares: Vec<_> = sockets.iter().map(|_| AcceptShare::split(self.workers).into_iter()).collect();
        for i in 0..self.workers {
            let mut mine = Vec::new();
            for ((slot, socket, tls), share) in sockets.iter().zip(&mut shares) {
                let share = share.next().filter(|_| self.workers > 1);
                mine.push(WorkerSocket { slot: slot.clone(), socket: socket.try_clone()?, tls: tls.clone(), share });
            }
            let (token, done) = (shutdown.clone(), done_tx.clone());
            let cap = self.worker_connections;
            std::thread::Builder::new()
                .name(format!("lb-worker-{i}"))
                .spawn(move || {
                    upstream::set_worker(i);
                    let _ = done.send(serve_worker(mine, cap, grace, token));
                })
                .map_err(|e| anyhow::anyhow!("cannot start lb worker thread: {e}"))?;
        }
        drop((sockets, done_tx));
        let mut running = self.workers;
        while running > 0 {
            tokio::select! {
                done = done_rx.recv() => match done {
                    None => return Err(anyhow::anyhow!("an lb worker thread ended without a result")),
                    Some(Ok(())) => running -= 1,
                    Some(Err(err)) => return Err(err),
                },
                signal = reload.recv() => {
                    if signal.is_ok() {
                        self.reload(&shutdown).await;
                    }
                }
            }
        }
        for slot in &self.slots {
            let pool = slot.pool();
            pool.probes.cancel();
            pool.connector.close_idle();
        }
        Ok(())
    }

    /// SIGHUP: re-reads the pools from the config file. Requests in flight finish on the
    /// generation they started with; listeners stay open.
    async fn reload(&self, shutdown: &CancellationToken) {
        let Some(path) = &self.source else {
            tracing::warn!("SIGHUP: no config file to re-read (sandbox)");
            return;
        };
        let lb = match crate::config::Config::reread(path, crate::cli::Role::Lb) {
            Ok(c) => c.lb,
            Err(err) => {
                tracing::error!("SIGHUP: configuration refused, keeping the running one: {err}");
                return;
            }
        };
        let Some(lb) = lb else { return };
        if worker_count(lb.workers) != self.workers {
            tracing::warn!("SIGHUP: lb.workers changed; a restart applies it");
        }
        if lb.worker_connections != self.worker_connections {
            tracing::warn!("SIGHUP: lb.worker_connections changed; a restart applies it");
        }
        for pc in &lb.pools {
            let Some(slot) = self.slots.iter().find(|s| s.name == pc.name) else {
                tracing::warn!(pool = %pc.name, "SIGHUP: new pool ignored; a new listener needs a restart");
                continue;
            };
            if slot.listen != pc.listen {
                tracing::warn!(pool = %pc.name, "SIGHUP: listen changed; a restart applies it. Servers are reloaded.");
            }
            match build_pool(pc, self.workers).await {
                Ok(pool) => {
                    log_pool(&pool, pc);
                    let pool = Arc::new(pool);
                    health::start(&pool, shutdown);
                    let old = std::mem::replace(&mut *slot.current.write().unwrap_or_else(|p| p.into_inner()), pool);
                    old.probes.cancel();
                    old.connector.close_idle();
                }
                Err(err) => tracing::error!(pool = %pc.name, "SIGHUP: {err:#}; keeping the running servers"),
            }
        }
        for slot in &self.slots {
            if !lb.pools.iter().any(|p| p.name == slot.name) {
                tracing::warn!(pool = %slot.name, "SIGHUP: pool removed from the file; it keeps running until restart");
            }
        }
        tracing::info!("SIGHUP: configuration reloaded");
    }
}

/// `lb.workers`, with 0 meaning one per CPU as nginx's `worker_processes auto`.
fn worker_count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// A worker's handle of one pool's socket.
struct WorkerSocket {
    slot: Arc<Slot>,
    socket: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    share: Option<AcceptShare>,
}

/// One worker thread: serves its handles of every pool's listener on a runtime of its own
/// until `shutdown`, then drains.
fn serve_worker(
    sockets: Vec<WorkerSocket>,
    worker_connections: usize,
    grace: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start an lb worker runtime: {e}"))?;
    runtime.block_on(async move {
        // One cap for the worker over all its pools, as nginx's `worker_connections`.
        let connections = ServerOptions::cap(worker_connections);
        let mut servers = tokio::task::JoinSet::new();
        for WorkerSocket { slot, socket, tls, share } in sockets {
            let listener = TcpListener::from_std(socket)?;
            let pool = slot.pool();
            let opts = ServerOptions {
                name: "lb",
                header_timeout: pool.settings.header_timeout,
                tls,
                grace,
                share,
                connections: connections.clone(),
                // `front` reads the heads itself, within nginx's limits (`h1`).
                ..ServerOptions::DEFAULT_LIMITS
            };
            let serve = move |stream, accepted| front::serve(stream, accepted, slot.clone());
            servers.spawn(crate::http::serve_streams(listener, opts, serve, shutdown.clone()));
        }
        while let Some(done) = servers.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return Err(err),
                Err(err) => return Err(anyhow::anyhow!("pool listener task failed: {err}")),
            }
        }
        Ok(())
    })
}

async fn build_pool(pc: &PoolConfig, workers: usize) -> anyhow::Result<Pool> {
    // Large request bodies go there: find out now, not on the first large POST.
    let temp = &pc.settings.client_body_temp_path;
    spool::Spool::create(temp).map_err(|e| {
        anyhow::anyhow!(
            "lb.pools.{}: cannot create a temp file for request bodies in client_body_temp_path {}: {e}",
            pc.name,
            temp.display()
        )
    })?;
    let mut peers = Vec::new();
    for server in &pc.servers {
        let (host, port) = split_host_port(&server.address).map_err(anyhow::Error::msg)?;
        let addrs: Vec<SocketAddr> = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => {
                let found = tokio::net::lookup_host((host.as_str(), port)).await.map_err(|e| ResolveError {
                    pool: pc.name.clone(),
                    server: server.address.clone(),
                    reason: e.to_string(),
                })?;
                let mut unique = Vec::new();
                for a in found {
                    if !unique.contains(&a) {
                        unique.push(a);
                    }
                }
                unique
            }
        };
        if addrs.is_empty() {
            return Err(ResolveError {
                pool: pc.name.clone(),
                server: server.address.clone(),
                reason: "no addresses".into(),
            }
            .into());
        }
        // A name with several addresses defines several servers at once, as in nginx.
        for addr in addrs {
            peers.push(Peer {
                addr,
                server: server.address.clone(),
                weight: server.weight,
                max_fails: server.max_fails,
                fail_timeout: server.fail_timeout,
                down: server.down,
            });
        }
    }
    let s = &pc.settings;
    let timeouts = Timeouts { connect: s.connect_timeout, send: s.send_timeout, read: s.read_timeout };
    let keepalive = s.keepalive.then(|| KeepAlive {
        max_idle: s.keepalive_connections,
        idle_timeout: s.keepalive_timeout,
        max_requests: s.keepalive_requests,
        max_age: Duration::from_secs(3600),
    });
    let metrics = PoolMetrics { peers: peers.iter().map(|_| PeerMetrics::default()).collect(), ..Default::default() };
    let host = match &s.host {
        HostHeader::PoolName => http::HeaderValue::from_str(&pc.name).ok(),
        HostHeader::Literal(v) => http::HeaderValue::from_str(v).ok(),
        HostHeader::ClientName | HostHeader::Client => None,
    };
    let mut set_headers = http::HeaderMap::new();
    for (name, value) in &s.set_headers {
        if let (Ok(n), Ok(v)) = (http::HeaderName::from_bytes(name.as_bytes()), http::HeaderValue::from_str(value)) {
            set_headers.append(n, v);
        }
    }
    Ok(Pool {
        name: pc.name.clone(),
        settings: pc.settings.clone(),
        host,
        set_headers,
        balancer: if pc.settings.hash_request_uri {
            Balancer::new(peers, Instant::now()).consistent_hash()
        } else {
            Balancer::new(peers, Instant::now())
        },
        connector: Connector::new(timeouts, keepalive, workers, proxy::passed_back),
        metrics,
        probes: CancellationToken::new(),
        recent: crate::trace::Recent::new(pc.settings.trace_requests),
    })
}

fn log_pool(pool: &Pool, pc: &PoolConfig) {
    let peers: Vec<String> = pool.balancer.peers().iter().map(|p| p.addr.to_string()).collect();
    tracing::info!(
        pool = %pool.name,
        listen = %pc.listen,
        peers = %peers.join(", "),
        next_upstream_tries = pc.settings.next_upstream_tries,
        keepalive = pc.settings.keepalive,
        "pool ready"
    );
}

impl RoleStatus for Lb {
    fn name(&self) -> &'static str {
        "lb"
    }

    fn health(&self) -> (bool, serde_json::Value) {
        let now = Instant::now();
        let mut all_up = true;
        let mut pools = serde_json::Map::new();
        for slot in &self.slots {
            let pool = slot.pool();
            let peers = pool.balancer.view(now);
            let available = peers.iter().filter(|p| p.state == "up").count();
            all_up &= available > 0;
            pools.insert(
                slot.name.clone(),
                serde_json::json!({
                    "listen": slot.bound.get().unwrap_or(&slot.listen).to_string(),
                    "available": available,
                    "idleConnections": pool.connector.idle_connections(),
                    "peers": peers,
                }),
            );
        }
        (all_up, serde_json::json!({ "pools": pools }))
    }

    /// The health view plus what each pool and peer has done since start.
    fn status(&self) -> (bool, serde_json::Value) {
        let (up, mut body) = self.health();
        for slot in &self.slots {
            let pool = slot.pool();
            let Some(view) = body["pools"].get_mut(&slot.name) else { continue };
            let requests: u64 = pool.metrics.requests.snapshot().iter().map(|(_, n)| n).sum();
            let errors: u64 =
                pool.metrics.requests.snapshot().iter().filter(|(status, _)| *status >= 500).map(|(_, n)| n).sum();
            view["requests"] = requests.into();
            view["requests5xx"] = errors.into();
            view["retries"] = pool.metrics.retries.get().into();
            let Some(peers) = view["peers"].as_array_mut() else { continue };
            for (peer, m) in peers.iter_mut().zip(&pool.metrics.peers) {
                peer["attempts"] = m.attempts.get().into();
                peer["failures"] =
                    (m.errors.get() + m.timeouts.get() + m.invalid_headers.get() + m.statuses.get()).into();
            }
        }
        (up, body)
    }

    fn trace<'a>(
        &'a self,
        query: &'a crate::trace::Query,
    ) -> futures_util::future::BoxFuture<'a, Vec<crate::trace::Event>> {
        Box::pin(async move {
            let mut events = Vec::new();
            for slot in &self.slots {
                let pool = slot.pool();
                let named = |r: &access_log::Recent| {
                    query.names(&r.uri) || r.corr_id.as_ref().is_some_and(|c| query.corr_ids.contains(c))
                };
                for r in pool.recent.matching(named, 200) {
                    events.push(r.event(&pool.name));
                }
            }
            events
        })
    }

    fn trends(&self, out: &mut Vec<crate::trends::Sample>) {
        use crate::trends::Sample;
        for slot in &self.slots {
            let counts = slot.pool().metrics.requests.snapshot();
            let all = counts.iter().map(|(_, n)| n).sum();
            let errors = counts.iter().filter(|(status, _)| *status >= 500).map(|(_, n)| n).sum();
            out.push(Sample::counter("lb_requests", slot.name.clone(), all));
            out.push(Sample::counter("lb_5xx", slot.name.clone(), errors));
        }
    }

    fn metrics(&self, enc: &mut Encoder<'_>) {
        let pools: Vec<Arc<Pool>> = self.slots.iter().map(|s| s.pool()).collect();
        enc.family("lb_requests_total", "Client requests by pool and final status.", "counter");
        for p in &pools {
            for (status, n) in p.metrics.requests.snapshot() {
                enc.sample("lb_requests_total", &[("pool", &p.name), ("status", &status.to_string())], n as f64);
            }
        }
        enc.family("lb_request_duration_seconds", "Client request duration by pool.", "histogram");
        for p in &pools {
            enc.histogram("lb_request_duration_seconds", &[("pool", &p.name)], &p.metrics.duration);
        }
        enc.family("lb_retries_total", "Attempts on a next peer after a failure.", "counter");
        for p in &pools {
            enc.sample("lb_retries_total", &[("pool", &p.name)], p.metrics.retries.get() as f64);
        }
        enc.family(
            "lb_request_bodies_spooled_total",
            "Request bodies past client_body_buffer_size, held in a temp file.",
            "counter",
        );
        for p in &pools {
            enc.sample("lb_request_bodies_spooled_total", &[("pool", &p.name)], p.metrics.bodies_spooled.get() as f64);
        }
        enc.family("lb_upstream_attempts_total", "Attempts per peer.", "counter");
        for p in &pools {
            for (peer, m) in p.balancer.peers().iter().zip(&p.metrics.peers) {
                let addr = peer.addr.to_string();
                enc.sample(
                    "lb_upstream_attempts_total",
                    &[("pool", &p.name), ("peer", &addr)],
                    m.attempts.get() as f64,
                );
            }
        }
        enc.family("lb_upstream_failures_total", "Failed attempts per peer by class.", "counter");
        for p in &pools {
            for (peer, m) in p.balancer.peers().iter().zip(&p.metrics.peers) {
                let addr = peer.addr.to_string();
                for (class, c) in [
                    ("error", &m.errors),
                    ("timeout", &m.timeouts),
                    ("invalid_header", &m.invalid_headers),
                    ("status", &m.statuses),
                ] {
                    let labels = [("pool", p.name.as_str()), ("peer", addr.as_str()), ("class", class)];
                    enc.sample("lb_upstream_failures_total", &labels, c.get() as f64);
                }
            }
        }
        enc.family("lb_upstream_header_seconds", "Time to the response head (or the failure) per peer.", "histogram");
        for p in &pools {
            for (peer, m) in p.balancer.peers().iter().zip(&p.metrics.peers) {
                let addr = peer.addr.to_string();
                enc.histogram("lb_upstream_header_seconds", &[("pool", &p.name), ("peer", &addr)], &m.latency);
            }
        }
        enc.family("lb_upstream_up", "1 when the peer may be selected (not down, ejected or failing probes).", "gauge");
        let now = Instant::now();
        for p in &pools {
            for view in p.balancer.view(now) {
                let up = if view.state == "up" { 1.0 } else { 0.0 };
                enc.sample("lb_upstream_up", &[("pool", &p.name), ("peer", &view.address)], up);
            }
        }
    }
}

/// Used by the app to tell a DNS failure (retry later) from other start-up errors.
pub fn is_resolve_error(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<ResolveError>())
}
