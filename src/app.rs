//! The role supervisor and the only place that binds sockets: prepares the roles this process
//! runs, binds every listener, prints the READY line, serves until a signal, then drains.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, SANDBOX_PASSWORD, SANDBOX_USER, TlsConfig};
use crate::excp::Excp;
use crate::exrp::Exrp;
use crate::http::admin::RoleStatus;
use crate::http::{ServerOptions, tls};
use crate::lb::Lb;
use crate::webdav::Webdav;

/// Runs the configured roles until SIGTERM/SIGINT (Ok) or until one of them fails (Err).
pub async fn run(config: Config) -> anyhow::Result<()> {
    if config.sandbox {
        prepare_sandbox(&config)?;
    }
    raise_fd_limit(&config);
    tls::install_provider();
    let admin_tls = config.admin.tls.as_ref().map(TlsConfig::server).transpose()?;

    // Prepare every role before binding anything: a store that cannot open must not leave
    // half a process listening.
    let mut roles = Vec::new();
    if let Some(w) = &config.webdav {
        roles.push(Prepared::Webdav(Webdav::prepare(w, config.sandbox).await?));
    }
    if let Some(lb) = &config.lb {
        roles.push(Prepared::Lb(Lb::prepare(lb, config.source.clone()).await?));
    }
    if let Some(e) = &config.excp {
        roles.push(Prepared::Excp(Excp::prepare(e).await?));
    }
    if let Some(e) = &config.exrp {
        roles.push(Prepared::Exrp(Exrp::prepare(e, config.source.clone())?));
    }
    let statuses: Vec<Arc<dyn RoleStatus>> = roles.iter().map(Prepared::status).collect();

    // Bound in the READY line's order: the store, the admin listener, then the services.
    roles.sort_by_key(Prepared::rank);
    let mut ready = String::from("READY");
    let mut admin_listener = None;
    let mut serving = Vec::new();
    for role in roles {
        if role.rank() > 0 && admin_listener.is_none() {
            admin_listener = Some(bind_named("admin", config.admin.listen, &mut ready).await?);
        }
        let mut listeners = Vec::new();
        for (name, addr, tls) in role.listeners(&config) {
            let listener = bind_named(&name, addr, &mut ready).await?;
            listeners.push((listener, tls.map(TlsConfig::server).transpose()?));
        }
        serving.push((role, listeners));
    }
    let admin_listener = match admin_listener {
        Some(l) => l,
        None => bind_named("admin", config.admin.listen, &mut ready).await?,
    };

    let shutdown = CancellationToken::new();
    let (reload_tx, _) = tokio::sync::broadcast::channel(4);
    crate::shutdown::spawn_signal_listener(shutdown.clone(), reload_tx.clone())
        .context("cannot install signal handlers")?;
    let tracker = TaskTracker::new();
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::channel::<anyhow::Error>(4);
    let grace = config.shutdown_grace;

    for (role, listeners) in serving {
        let (token, failed, reload) = (shutdown.clone(), failed_tx.clone(), reload_tx.subscribe());
        tracker.spawn(async move {
            let name = role.name();
            if let Err(err) = role.run(listeners, grace, reload, token).await {
                let _ = failed.send(err.context(format!("{name} role failed"))).await;
            }
        });
    }
    {
        let statuses = Arc::new(statuses);
        let trends = Arc::new(crate::trends::Trends::new(config.admin.trend_interval, crate::trends::RING));
        tracker.spawn(crate::trends::run(trends.clone(), statuses.clone(), shutdown.clone()));
        let router = crate::http::admin::router(statuses, trends);
        let opts = ServerOptions {
            name: "admin",
            header_timeout: std::time::Duration::from_secs(10),
            tls: admin_tls,
            grace,
            connections: ServerOptions::cap(config.admin.max_connections),
            ..ServerOptions::DEFAULT_LIMITS
        };
        let (token, failed) = (shutdown.clone(), failed_tx.clone());
        tracker.spawn(async move {
            if let Err(err) = crate::http::serve_router(admin_listener, opts, router, token).await {
                let _ = failed.send(err.context("admin listener failed")).await;
            }
        });
    }
    tracker.close();
    drop(failed_tx);

    print_ready(&ready)?;
    tracing::info!(roles = ?config.roles(), "{ready}");
    crate::shutdown::notify_systemd("READY=1");

    let failure = tokio::select! {
        _ = shutdown.cancelled() => None,
        Some(err) = failed_rx.recv() => Some(err),
    };
    shutdown.cancel();
    crate::shutdown::notify_systemd("STOPPING=1");
    if tokio::time::timeout(grace + std::time::Duration::from_secs(1), tracker.wait()).await.is_err() {
        tracing::warn!("roles did not stop within the grace period");
    }
    match failure {
        Some(err) => Err(err),
        None => {
            tracing::info!("stopped cleanly");
            Ok(())
        }
    }
}

/// A role ready to serve: the one place that knows each role's listeners and how it runs.
enum Prepared {
    Webdav(Arc<Webdav>),
    Lb(Arc<Lb>),
    Excp(Arc<Excp>),
    Exrp(Arc<Exrp>),
}

/// A bound listener and the TLS it serves, if any.
type Listener = (TcpListener, Option<Arc<rustls::ServerConfig>>);

impl Prepared {
    fn name(&self) -> &'static str {
        match self {
            Prepared::Webdav(_) => "webdav",
            Prepared::Lb(_) => "lb",
            Prepared::Excp(_) => "excp",
            Prepared::Exrp(_) => "exrp",
        }
    }

    /// Place in the READY line; the admin listener comes after rank 0.
    fn rank(&self) -> u8 {
        match self {
            Prepared::Webdav(_) => 0,
            Prepared::Excp(_) => 1,
            Prepared::Exrp(_) => 2,
            Prepared::Lb(_) => 3,
        }
    }

    fn status(&self) -> Arc<dyn RoleStatus> {
        match self {
            Prepared::Webdav(r) => r.clone(),
            Prepared::Lb(r) => r.clone(),
            Prepared::Excp(r) => r.clone(),
            Prepared::Exrp(r) => r.clone(),
        }
    }

    /// (READY name, address, TLS) of each listener, in the order `run` takes them.
    fn listeners<'c>(&self, config: &'c Config) -> Vec<(String, SocketAddr, Option<&'c TlsConfig>)> {
        match (self, config) {
            (Prepared::Webdav(_), Config { webdav: Some(w), .. }) => vec![("webdav".into(), w.listen, w.tls.as_ref())],
            (Prepared::Excp(_), Config { excp: Some(e), .. }) => {
                vec![("excp".into(), e.api.listen, e.api.tls.as_ref())]
            }
            (Prepared::Exrp(_), Config { exrp: Some(e), .. }) => {
                vec![("exrp".into(), e.api.listen, e.api.tls.as_ref())]
            }
            (Prepared::Lb(lb), Config { lb: Some(c), .. }) => lb
                .listeners()
                .into_iter()
                .zip(&c.pools)
                .map(|((name, addr), pool)| (format!("lb.{name}"), addr, pool.tls.as_ref()))
                .collect(),
            _ => Vec::new(),
        }
    }

    async fn run(
        self,
        mut listeners: Vec<Listener>,
        grace: std::time::Duration,
        reload: tokio::sync::broadcast::Receiver<()>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut one = || listeners.pop().context("the role's listener was not bound");
        match self {
            Prepared::Webdav(r) => {
                let (listener, tls) = one()?;
                r.run(listener, tls, grace, shutdown).await
            }
            Prepared::Excp(r) => {
                let (listener, tls) = one()?;
                r.run(listener, tls, grace, shutdown).await
            }
            Prepared::Exrp(r) => {
                let (listener, tls) = one()?;
                r.run(listener, tls, grace, reload, shutdown).await
            }
            Prepared::Lb(r) => r.run(listeners, grace, reload, shutdown).await,
        }
    }
}

/// Each upload in flight holds a socket, a temp file and its directory: lift the soft limit on
/// open files to the hard one, as nginx's `worker_rlimit_nofile` would, and say when even
/// that is too low for `max_uploads`.
fn raise_fd_limit(config: &Config) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let mut raised = limit;
    raised.current = limit.maximum;
    if raised.current != limit.current
        && let Err(err) = setrlimit(Resource::Nofile, raised)
    {
        tracing::warn!(%err, "cannot raise the open-files limit");
        raised = limit;
    }
    let needed = config.webdav.as_ref().map_or(0, |w| w.max_uploads as u64 * 3 + 256)
        + config.lb.as_ref().map_or(0, |lb| lb.pools.len() as u64 * 2048);
    if let Some(current) = raised.current
        && current < needed
    {
        tracing::warn!(
            open_files_limit = current,
            needed,
            "the open-files limit is below what max_uploads can use; raise LimitNOFILE or lower max_uploads"
        );
    }
}

/// Connections the kernel may queue before we accept them. A thousand recorders starting
/// uploads at once must not overflow it (the default of 128 does, and the kernel then resets
/// them); the kernel caps it at net.core.somaxconn.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(name: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let bind = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    bind().with_context(|| format!("cannot listen on {addr} for {name}"))
}

/// Binds `addr` and adds `name=<bound address>` to the READY line.
async fn bind_named(name: &str, addr: SocketAddr, ready: &mut String) -> anyhow::Result<TcpListener> {
    let listener = bind(name, addr).await?;
    let _ = write!(ready, " {name}={}", listener.local_addr()?);
    Ok(listener)
}

/// The one line on stdout: tests and scripts wait for it to learn the bound ports.
fn print_ready(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("cannot write the READY line")?;
    out.flush().context("cannot flush the READY line")
}

/// Creates the sandbox's directories and recorder credential on first start.
fn prepare_sandbox(config: &Config) -> anyhow::Result<()> {
    if let Some(w) = &config.webdav {
        std::fs::create_dir_all(&w.root).with_context(|| format!("cannot create {}", w.root.display()))?;
        if !w.htpasswd.exists() {
            crate::auth::htpasswd::set_user(&w.htpasswd, SANDBOX_USER, SANDBOX_PASSWORD.as_bytes(), true)?;
        }
        tracing::info!(
            "sandbox: WebDAV store on http://{}{}/ (files in {}); recorders log in as {SANDBOX_USER} / {SANDBOX_PASSWORD} (change it with `exec-allinone htpasswd {} {SANDBOX_USER}`)",
            w.listen,
            w.prefix,
            w.root.display(),
            w.htpasswd.display(),
        );
    }
    if let (Some(lb), Some(excp), Some(exrp)) = (&config.lb, &config.excp, &config.exrp) {
        let pool = |name: &str| lb.pools.iter().find(|p| p.name == name).map(|p| p.listen.to_string());
        tracing::info!(
            "sandbox: recorders POST metadata to http://{}/api/v1/recording (lb → excp on {}); \
             call ends go to http://{}/api/v1/interactions/<callUUID>/end; \
             excp hands each ended call to exrp through http://{} (lb → exrp on {}); \
             exrp takes the audio from the WebDAV store (as {SANDBOX_USER}) and writes it with its metadata to {}/<tenant>/",
            pool("excp").unwrap_or_default(),
            excp.api.listen,
            pool("excp").unwrap_or_default(),
            pool("exrp").unwrap_or_default(),
            exrp.api.listen,
            match &exrp.sink {
                crate::config::Sink::Local { dir } => dir.display().to_string(),
                crate::config::Sink::Cloud { .. } => "Genesys Cloud".into(),
            },
        );
    }
    Ok(())
}
