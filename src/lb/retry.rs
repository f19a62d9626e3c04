//! The retry decision: nginx's `ngx_http_upstream_next` and `ngx_http_upstream_test_next` as
//! a pure state machine, so the table of who-gets-retried is unit-tested without sockets.

use std::time::{Duration, Instant};

use http::Method;

use crate::config::NextUpstream;

/// Why an attempt did not produce a response we pass on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Connection refused/reset/closed, or a read/write error (nginx `error`).
    Error,
    /// Connect, send or read timed out (nginx `timeout`).
    Timeout,
    /// The response head was not valid HTTP or had ambiguous framing (`invalid_header`).
    InvalidHeader,
    /// The backend answered with this status (`http_5xx`, `http_4xx`).
    Status(u16),
}

impl Failure {
    /// The status nginx answers with when it gives up after this failure.
    pub fn give_up_status(self) -> u16 {
        match self {
            Failure::Timeout | Failure::Status(504) => 504,
            Failure::Status(s @ (500 | 503 | 403 | 404 | 429)) => s,
            _ => 502,
        }
    }

    /// Whether it counts toward `max_fails` (nginx: error, timeout and invalid_header always;
    /// listed 5xx/429 statuses; never 403/404).
    pub fn counts_as_failure(self, next: &NextUpstream) -> bool {
        match self {
            Failure::Error | Failure::Timeout | Failure::InvalidHeader => true,
            Failure::Status(403 | 404) => false,
            Failure::Status(s) => next.status(s),
        }
    }

    /// Short name for logs and metric labels.
    pub fn class(self) -> &'static str {
        match self {
            Failure::Error => "error",
            Failure::Timeout => "timeout",
            Failure::InvalidHeader => "invalid_header",
            Failure::Status(_) => "status",
        }
    }
}

/// Methods nginx never sends twice once they reached a backend (since 1.9.13).
pub fn non_idempotent(method: &Method) -> bool {
    method == Method::POST || method == Method::PATCH || method.as_str() == "LOCK"
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try the next peer.
    Retry,
    /// Answer the client with this status (proxy error page).
    GiveUp(u16),
    /// Pass the backend's own response on.
    Pass,
}

/// The retry budget of one client request.
#[derive(Debug)]
pub struct Attempts {
    tries_left: usize,
    started: Instant,
    timeout: Duration,
    next_upstream: NextUpstream,
    non_idempotent: bool,
    /// The body passes through unbuffered: once the request went out, there is nothing to
    /// send another peer (nginx: `u->request_sent && r->request_body_no_buffering`).
    unbuffered: bool,
}

impl Attempts {
    /// `peers` = nginx's `peers->tries` (servers not marked down); `tries` 0 = no limit.
    pub fn new(peers: usize, tries: usize, timeout: Duration, next: NextUpstream, method: &Method) -> Self {
        let tries_left = if tries > 0 { peers.min(tries) } else { peers };
        Attempts {
            tries_left,
            started: Instant::now(),
            timeout,
            next_upstream: next,
            non_idempotent: non_idempotent(method),
            unbuffered: false,
        }
    }

    /// For a request whose body is streamed to the peer (`request_buffering = false`).
    pub fn unbuffered(mut self) -> Self {
        self.unbuffered = true;
        self
    }

    #[cfg(test)]
    pub fn started(&self) -> Instant {
        self.started
    }

    fn out_of_time(&self, now: Instant) -> bool {
        !self.timeout.is_zero() && now.duration_since(self.started) >= self.timeout
    }

    fn allowed(&self, failure: Failure, sent: bool) -> bool {
        let n = &self.next_upstream;
        let listed = match failure {
            Failure::Error => n.error,
            Failure::Timeout => n.timeout,
            Failure::InvalidHeader => n.invalid_header,
            Failure::Status(s) => n.status(s),
        };
        listed && !(sent && self.non_idempotent && !n.non_idempotent) && !(sent && self.unbuffered)
    }

    /// After a failure without a response to pass on. `sent`: the request had started going
    /// out (the connection was established); `reused`: it went over a pooled connection,
    /// which then does not use up a try (nginx `u->peer.cached`).
    pub fn after_failure(&mut self, failure: Failure, sent: bool, reused: bool, now: Instant) -> Next {
        if !(reused && failure == Failure::Error) {
            self.tries_left = self.tries_left.saturating_sub(1);
        }
        if self.tries_left == 0 || !self.allowed(failure, sent) || self.out_of_time(now) {
            Next::GiveUp(failure.give_up_status())
        } else {
            Next::Retry
        }
    }

    /// After a backend answered with `status`: retry only for listed statuses while another
    /// try remains; otherwise its response goes to the client as it is.
    pub fn after_status(&mut self, status: u16, now: Instant) -> Next {
        let failure = Failure::Status(status);
        if self.tries_left > 1 && self.allowed(failure, true) && !self.out_of_time(now) {
            self.tries_left -= 1;
            Next::Retry
        } else {
            Next::Pass
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempts(method: &str, next: NextUpstream) -> Attempts {
        Attempts::new(3, 3, Duration::ZERO, next, &Method::from_bytes(method.as_bytes()).unwrap())
    }

    /// nginx's default table (`proxy_next_upstream error timeout`), lb.md LB-08..LB-13.
    #[test]
    fn default_decision_table() {
        let d = NextUpstream::DEFAULT;
        let now = Instant::now();
        // (method, failure, sent) -> decision after a first attempt out of three
        let table: &[(&str, Failure, bool, Next)] = &[
            ("GET", Failure::Error, false, Next::Retry),
            ("POST", Failure::Error, false, Next::Retry),
            ("POST", Failure::Timeout, false, Next::Retry),
            ("GET", Failure::Error, true, Next::Retry),
            ("PUT", Failure::Error, true, Next::Retry),
            ("DELETE", Failure::Timeout, true, Next::Retry),
            ("HEAD", Failure::Error, true, Next::Retry),
            ("OPTIONS", Failure::Error, true, Next::Retry),
            ("POST", Failure::Error, true, Next::GiveUp(502)),
            ("POST", Failure::Timeout, true, Next::GiveUp(504)),
            ("LOCK", Failure::Error, true, Next::GiveUp(502)),
            ("PATCH", Failure::Error, true, Next::GiveUp(502)),
            ("GET", Failure::InvalidHeader, true, Next::GiveUp(502)),
        ];
        for (method, failure, sent, want) in table {
            let got = attempts(method, d).after_failure(*failure, *sent, false, now);
            assert_eq!(got, *want, "{method} {failure:?} sent={sent}");
        }
        for status in [500, 502, 503, 504, 429, 404, 403] {
            assert_eq!(attempts("GET", d).after_status(status, now), Next::Pass, "{status}");
        }
    }

    #[test]
    fn listed_statuses_retry_but_post_only_with_non_idempotent() {
        let now = Instant::now();
        let next = NextUpstream { http_404: true, http_503: true, ..NextUpstream::DEFAULT };
        assert_eq!(attempts("GET", next).after_status(404, now), Next::Retry);
        assert_eq!(attempts("POST", next).after_status(404, now), Next::Pass);
        assert_eq!(attempts("GET", next).after_status(500, now), Next::Pass);
        let next = NextUpstream { non_idempotent: true, http_404: true, ..NextUpstream::DEFAULT };
        assert_eq!(attempts("POST", next).after_status(404, now), Next::Retry);
        assert_eq!(attempts("POST", next).after_failure(Failure::Error, true, false, now), Next::Retry);
        let off = NextUpstream::default();
        assert_eq!(attempts("GET", off).after_failure(Failure::Error, false, false, now), Next::GiveUp(502));
    }

    #[test]
    fn tries_count_the_first_attempt_and_cap_at_peers() {
        let now = Instant::now();
        let next = NextUpstream { http_404: true, ..NextUpstream::DEFAULT };
        // proxy_next_upstream_tries.t: tries 2 over three 404 peers -> exactly two attempts,
        // and the second 404 is passed on.
        let mut a = Attempts::new(3, 2, Duration::ZERO, next, &Method::GET);
        assert_eq!(a.after_status(404, now), Next::Retry);
        assert_eq!(a.after_status(404, now), Next::Pass);
        // tries 0 = unlimited: bounded by the peers.
        let mut a = Attempts::new(3, 0, Duration::ZERO, next, &Method::GET);
        assert_eq!(a.after_failure(Failure::Error, false, false, now), Next::Retry);
        assert_eq!(a.after_failure(Failure::Error, false, false, now), Next::Retry);
        assert_eq!(a.after_failure(Failure::Timeout, false, false, now), Next::GiveUp(504));
        // excp: two peers, tries 3 -> two attempts.
        let mut a = Attempts::new(2, 3, Duration::ZERO, next, &Method::GET);
        assert_eq!(a.after_failure(Failure::Error, false, false, now), Next::Retry);
        assert_eq!(a.after_failure(Failure::Error, false, false, now), Next::GiveUp(502));
    }

    #[test]
    fn give_up_status_is_that_of_the_last_failure() {
        let now = Instant::now();
        let mut a = Attempts::new(2, 0, Duration::ZERO, NextUpstream::DEFAULT, &Method::GET);
        assert_eq!(a.after_failure(Failure::Timeout, true, false, now), Next::Retry);
        assert_eq!(a.after_failure(Failure::Error, false, false, now), Next::GiveUp(502));
        let mut a = Attempts::new(2, 0, Duration::ZERO, NextUpstream::DEFAULT, &Method::GET);
        assert_eq!(a.after_failure(Failure::Error, false, false, now), Next::Retry);
        assert_eq!(a.after_failure(Failure::Timeout, true, false, now), Next::GiveUp(504));
    }

    #[test]
    fn next_upstream_timeout_stops_retries() {
        let mut a = Attempts::new(3, 0, Duration::from_millis(3800), NextUpstream::DEFAULT, &Method::GET);
        let t = a.started();
        assert_eq!(a.after_failure(Failure::Timeout, true, false, t + Duration::from_secs(2)), Next::Retry);
        assert_eq!(a.after_failure(Failure::Timeout, true, false, t + Duration::from_secs(4)), Next::GiveUp(504));
    }

    #[test]
    fn a_reused_connection_error_does_not_use_up_a_try_but_post_is_not_resent() {
        let now = Instant::now();
        let mut a = Attempts::new(1, 0, Duration::ZERO, NextUpstream::DEFAULT, &Method::GET);
        assert_eq!(a.after_failure(Failure::Error, true, true, now), Next::Retry);
        assert_eq!(a.after_failure(Failure::Error, true, false, now), Next::GiveUp(502));
        let mut a = Attempts::new(2, 0, Duration::ZERO, NextUpstream::DEFAULT, &Method::POST);
        assert_eq!(a.after_failure(Failure::Error, true, true, now), Next::GiveUp(502));
    }

    #[test]
    fn failure_accounting_follows_nginx_docs() {
        let d = NextUpstream::DEFAULT;
        assert!(Failure::Error.counts_as_failure(&d));
        assert!(Failure::InvalidHeader.counts_as_failure(&d));
        assert!(!Failure::Status(500).counts_as_failure(&d));
        let listed = NextUpstream { http_500: true, http_404: true, ..d };
        assert!(Failure::Status(500).counts_as_failure(&listed));
        assert!(!Failure::Status(404).counts_as_failure(&listed));
    }
}
