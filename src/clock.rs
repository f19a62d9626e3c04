//! The wall clock in Unix milliseconds (what records, queues and the status page stamp), and
//! whether the kernel considers the system clock synchronized (NTP, chrony, timesyncd): exrp's
//! OAuth tokens and presigned upload URLs are only as good as the clock, and the vendor's
//! guide asks for time sync. Read with `adjtimex(2)` in read-only mode (no safe wrapper
//! exists in the crates in use; this is the one call it makes).

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `Some(false)` when the kernel reports the clock unsynchronized (`TIME_ERROR`, or
/// `STA_UNSYNC` set), `Some(true)` when synchronized, `None` when it cannot be read.
pub fn synchronized() -> Option<bool> {
    // SAFETY: `adjtimex` with `modes = 0` only reads the kernel's clock state into the struct
    // we own; it changes nothing.
    #[allow(unsafe_code)]
    let (state, status) = unsafe {
        let mut tx: libc::timex = std::mem::zeroed();
        tx.modes = 0;
        let state = libc::adjtimex(&mut tx);
        (state, tx.status)
    };
    if state < 0 {
        return None;
    }
    Some(state != libc::TIME_ERROR && status & libc::STA_UNSYNC == 0)
}

/// Logs a warning at start when the clock is known to be unsynchronized.
pub fn warn_if_unsynchronized() {
    if synchronized() == Some(false) {
        tracing::warn!(
            "the kernel reports the system clock unsynchronized: tokens and presigned URLs may be refused; \
             enable time sync (chrony, systemd-timesyncd)"
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_clock_state_can_be_read_without_privileges() {
        // modes = 0 needs no capability: the state is readable as any user, in any container.
        assert!(super::synchronized().is_some());
    }
}
