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
    let mut statuses: Vec<Arc<dyn RoleStatus>> = Vec::new();
    let webdav = match &config.webdav {
        Some(w) => {
            let role = Webdav::prepare(w, config.sandbox)?;
            statuses.push(role.clone());
            let tls = w.tls.as_ref().map(TlsConfig::server).transpose()?;
            Some((role, w.listen, tls))
        }
        None => None,
    };

    let lb = match &config.lb {
        Some(lb_config) => {
            let role = Lb::prepare(lb_config, config.source.clone()).await?;
            statuses.push(role.clone());
            let mut tls = Vec::new();
            for pool in &lb_config.pools {
                tls.push(pool.tls.as_ref().map(TlsConfig::server).transpose()?);
            }
            Some((role, tls))
        }
        None => None,
    };

    let excp = match &config.excp {
        Some(e) => {
            let role = Excp::prepare(e)?;
            statuses.push(role.clone());
            let tls = e.tls.as_ref().map(TlsConfig::server).transpose()?;
            Some((role, e.listen, tls))
        }
        None => None,
    };

    let exrp = match &config.exrp {
        Some(e) => {
            let role = Exrp::prepare(e, config.source.clone())?;
            statuses.push(role.clone());
            let tls = e.tls.as_ref().map(TlsConfig::server).transpose()?;
            Some((role, e.listen, tls))
        }
        None => None,
    };

    let mut ready = String::from("READY");
    let webdav = match webdav {
        Some((role, addr, tls)) => {
            let listener = bind("webdav", addr).await?;
            let _ = write!(ready, " webdav={}", listener.local_addr()?);
            Some((role, listener, tls))
        }
        None => None,
    };
    let admin_listener = bind("admin", config.admin.listen).await?;
    let _ = write!(ready, " admin={}", admin_listener.local_addr()?);
    let excp = match excp {
        Some((role, addr, tls)) => {
            let listener = bind("excp", addr).await?;
            let _ = write!(ready, " excp={}", listener.local_addr()?);
            Some((role, listener, tls))
        }
        None => None,
    };
    let exrp = match exrp {
        Some((role, addr, tls)) => {
            let listener = bind("exrp", addr).await?;
            let _ = write!(ready, " exrp={}", listener.local_addr()?);
            Some((role, listener, tls))
        }
        None => None,
    };
    let lb = match lb {
        Some((role, tls)) => {
            let mut listeners = Vec::new();
            for ((name, addr), tls) in role.listeners().into_iter().zip(tls) {
                let listener = bind(&format!("lb.{name}"), addr).await?;
                let _ = write!(ready, " lb.{name}={}", listener.local_addr()?);
                listeners.push((listener, tls));
            }
            Some((role, listeners))
        }
        None => None,
    };

    let shutdown = CancellationToken::new();
    let (reload_tx, _) = tokio::sync::broadcast::channel(4);
    crate::shutdown::spawn_signal_listener(shutdown.clone(), reload_tx.clone())
        .context("cannot install signal handlers")?;
    let tracker = TaskTracker::new();
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::channel::<anyhow::Error>(4);
    let grace = config.shutdown_grace;

    if let Some((role, listener, tls)) = webdav {
        let (token, failed) = (shutdown.clone(), failed_tx.clone());
        tracker.spawn(async move {
            if let Err(err) = role.run(listener, tls, grace, token).await {
                let _ = failed.send(err.context("webdav role failed")).await;
            }
        });
    }
    if let Some((role, listener, tls)) = excp {
        let (token, failed) = (shutdown.clone(), failed_tx.clone());
        tracker.spawn(async move {
            if let Err(err) = role.run(listener, tls, grace, token).await {
                let _ = failed.send(err.context("excp role failed")).await;
            }
        });
    }
    if let Some((role, listener, tls)) = exrp {
        let (token, failed, reload) = (shutdown.clone(), failed_tx.clone(), reload_tx.subscribe());
        tracker.spawn(async move {
            if let Err(err) = role.run(listener, tls, grace, reload, token).await {
                let _ = failed.send(err.context("exrp role failed")).await;
            }
        });
    }
    if let Some((role, listeners)) = lb {
        let (token, failed, reload) = (shutdown.clone(), failed_tx.clone(), reload_tx.subscribe());
        tracker.spawn(async move {
            if let Err(err) = role.run(listeners, grace, reload, token).await {
                let _ = failed.send(err.context("lb role failed")).await;
            }
        });
    }
    {
        let router = crate::http::admin::router(statuses);
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
            excp.listen,
            pool("excp").unwrap_or_default(),
            pool("exrp").unwrap_or_default(),
            exrp.listen,
            match &exrp.sink {
                crate::config::Sink::Local { dir } => dir.display().to_string(),
                crate::config::Sink::Cloud { .. } => "Genesys Cloud".into(),
            },
        );
    }
    Ok(())
}
