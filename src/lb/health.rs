//! Active health probes (off by default; nginx OSS has none): each peer gets `GET <path>` at
//! an interval; a peer failing `health_check_fails` probes in a row is skipped by selection
//! until it passes `health_check_passes` in a row.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use super::Pool;

/// Starts the probes of `pool` if it has any; they stop with the pool's generation or at
/// shutdown.
pub fn start(pool: &Arc<Pool>, shutdown: &CancellationToken) {
    let s = &pool.settings;
    if s.health_check_interval.is_zero() {
        return;
    }
    for i in 0..pool.balancer.peers().len() {
        let pool = pool.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let s = &pool.settings;
            let peer = pool.balancer.peers()[i].addr;
            let (mut fails, mut passes) = (0u32, 0u32);
            let mut interval = tokio::time::interval(s.health_check_interval);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = interval.tick() => {}
                    _ = pool.probes.cancelled() => return,
                    _ = shutdown.cancelled() => return,
                }
                let result = probe(peer, &pool.name, &s.health_check_path, s.health_check_timeout).await;
                let healthy = pool.balancer.is_healthy(i);
                match result {
                    Ok(()) => {
                        fails = 0;
                        passes += 1;
                        if !healthy && passes >= s.health_check_passes {
                            pool.balancer.set_healthy(i, true);
                            tracing::info!(pool = %pool.name, %peer, "health probe passes again: peer back in rotation");
                        }
                    }
                    Err(why) => {
                        passes = 0;
                        fails += 1;
                        if healthy && fails >= s.health_check_fails {
                            pool.balancer.set_healthy(i, false);
                            tracing::warn!(pool = %pool.name, %peer, %why, "health probe failed: peer out of rotation");
                        } else {
                            tracing::debug!(pool = %pool.name, %peer, %why, "health probe failed");
                        }
                    }
                }
            }
        });
    }
}

/// One probe on a fresh connection: any 2xx or 3xx within the timeout passes.
async fn probe(addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        let request = Request::get(path)
            .header(http::header::HOST, host)
            .header(http::header::CONNECTION, "close")
            .header(http::header::USER_AGENT, "exec-allinone-health")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        // Read (a bounded amount of) the body so the peer sees a clean close.
        let _ = http_body_util::Limited::new(response.into_body(), 64 << 10).collect().await;
        conn.abort();
        if status.is_success() || status.is_redirection() { Ok(()) } else { Err(format!("status {status}")) }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}
