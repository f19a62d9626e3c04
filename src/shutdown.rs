//! Process lifecycle signals: SIGTERM/SIGINT become one cancellation token, and systemd
//! hears READY=1 / STOPPING=1 through $NOTIFY_SOCKET when we run under it.

use std::os::unix::net::UnixDatagram;

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM or SIGINT; passes each SIGHUP to `reload`'s
/// subscribers (roles that can re-read their configuration).
pub fn spawn_signal_listener(
    token: CancellationToken,
    reload: tokio::sync::broadcast::Sender<()>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // Installed for every role: SIGHUP's default action would kill the process.
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        let which = loop {
            tokio::select! {
                _ = term.recv() => break "SIGTERM",
                _ = int.recv() => break "SIGINT",
                _ = hup.recv() => {
                    if reload.send(()).is_err() {
                        tracing::info!("SIGHUP: no role in this process reloads its configuration");
                    } else {
                        tracing::info!("SIGHUP: reloading");
                    }
                }
                _ = token.cancelled() => return,
            }
        };
        tracing::info!(signal = which, "shutting down: draining in-flight requests");
        token.cancel();
    });
    Ok(())
}

/// Sends a state line to systemd (`READY=1`, `STOPPING=1`); a no-op outside systemd.
pub fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let result = (|| -> std::io::Result<()> {
        let socket = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            socket.send_to(state.as_bytes(), &path)?;
        }
        Ok(())
    })();
    if let Err(err) = result {
        tracing::warn!(%err, state, "could not notify systemd");
    }
}
