//! Raw HTTP/1.1 pieces the hand-written fakes share (the lb's backends, the fake exrp and RWS,
//! the fake Genesys Cloud, which `examples/fakecloud.rs` also builds and so includes this file
//! itself).

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Longest a fake keeps a connection it was told to hold.
pub const MAX_HOLD: Duration = Duration::from_secs(30);

/// The reason phrase a fake writes after `status`.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Whatever",
    }
}

/// Holds the connection for `limit` (at most `MAX_HOLD`) or until `stop`, reading and dropping
/// what the client sends; true when the client closed it first. The read timeout it found is
/// set again afterwards.
pub fn hold(stream: &mut TcpStream, stop: &AtomicBool, limit: Duration) -> bool {
    let before = stream.read_timeout().ok().flatten();
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    let deadline = Instant::now() + limit.min(MAX_HOLD);
    let mut sink = [0u8; 1024];
    let closed = loop {
        if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
            break false;
        }
        match stream.read(&mut sink) {
            Ok(0) => break true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(_) => break true,
        }
    };
    let _ = stream.set_read_timeout(before);
    closed
}
