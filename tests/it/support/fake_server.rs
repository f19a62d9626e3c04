//! The fakes' HTTP server: an axum app on 127.0.0.1, served from a runtime of its own so that
//! the blocking tests drive it, with a switch that takes the listener away (connecting is
//! refused) and brings it back on the same port, and the hold a fake answers with when it is
//! told to hang. Dropping it stops everything. `examples/fakecloud.rs` includes this file too.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Router;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

pub struct FakeServer {
    pub addr: SocketAddr,
    app: Router,
    runtime: Runtime,
    /// The accept loop in force; None while down.
    serving: Mutex<Option<JoinHandle<()>>>,
}

impl FakeServer {
    pub fn start(app: Router) -> FakeServer {
        FakeServer::start_on("127.0.0.1:0", |_| app).expect("bind fake")
    }

    /// On a given address (the benchmark fake's --port), with an app made once the address is
    /// known (a fake that hands out URLs to itself).
    pub fn start_on(addr: &str, app: impl FnOnce(SocketAddr) -> Router) -> std::io::Result<FakeServer> {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("fake").enable_all().build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind(addr))?;
        let addr = listener.local_addr()?;
        let server = FakeServer { addr, app: app(addr), runtime, serving: Mutex::new(None) };
        server.serve(listener);
        Ok(server)
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = self.app.clone();
        let task = self.runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        *self.serving.lock().unwrap() = Some(task);
    }

    /// Closes the listener: connections are refused until `up`. Connections already open are
    /// served to their end (the fakes that go down answer with `Connection: close`).
    pub fn down(&self) {
        if let Some(task) = self.serving.lock().unwrap().take() {
            task.abort();
            // Returns once the accept loop, and with it the listener, is dropped.
            let _ = self.runtime.block_on(task);
        }
    }

    /// Listens again on the same port (tokio sets SO_REUSEADDR, so TIME_WAIT is no obstacle).
    pub fn up(&self) {
        if self.is_up() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match self.runtime.block_on(tokio::net::TcpListener::bind(self.addr)) {
                Ok(listener) => break listener,
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot listen on {} again: {e}", self.addr);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        self.serve(listener);
    }

    pub fn is_up(&self) -> bool {
        self.serving.lock().unwrap().is_some()
    }
}

/// Holds a request unanswered for `limit`, or for ever with None. When the client closes the
/// connection first, hyper drops the handler's future, and with it this one: `abandoned` is
/// called then.
pub async fn hold(limit: Option<Duration>, abandoned: impl FnOnce()) {
    struct Held<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Held<F> {
        fn drop(&mut self) {
            if let Some(abandoned) = self.0.take() {
                abandoned();
            }
        }
    }
    let mut held = Held(Some(abandoned));
    match limit {
        Some(limit) => tokio::time::sleep(limit).await,
        None => std::future::pending().await,
    }
    held.0 = None;
}
