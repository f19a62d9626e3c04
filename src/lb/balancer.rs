//! Peer selection: nginx's smooth weighted round robin (`ngx_http_upstream_get_peer`), or its
//! consistent hash of the request URI (`chash`), with the per-request set of tried peers, and
//! the passive ejection of `max_fails`/`fail_timeout`. Selection state is shared by all
//! requests of a pool, as in one nginx worker.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One address of one configured server.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The server as written in the config ("excp-1:3650"), for logs and status.
    pub server: String,
    pub weight: u32,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub down: bool,
}

#[derive(Debug, Clone)]
struct PeerState {
    current_weight: i64,
    effective_weight: i64,
    fails: u32,
    accessed: Option<Instant>,
    checked: Instant,
}

/// What an attempt on a peer came to, for the failure accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Counts toward `max_fails` (nginx NGX_PEER_FAILED).
    Failed,
    /// Tried and moved on without blame (a 403/404 under `next_upstream`, nginx NGX_PEER_NEXT).
    Next,
}

/// A peer's state as shown on the admin listener.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerView {
    pub address: String,
    pub server: String,
    pub weight: u32,
    pub state: &'static str,
    pub fails: u32,
    pub max_fails: u32,
}

pub struct Balancer {
    peers: Vec<Peer>,
    state: Mutex<Vec<PeerState>>,
    /// Set by active health probes; false = failing its probes.
    healthy: Vec<AtomicBool>,
    /// `hash $request_uri consistent`: the ring; None for round robin.
    ring: Option<super::chash::Ring>,
}

/// The peers one request has tried so far, and with a hash ring where on it the request is.
#[derive(Debug, Clone)]
pub struct Tried {
    peers: Vec<bool>,
    /// The request's first point and how many points it has gone on from it.
    cursor: Option<(usize, usize)>,
}

impl Tried {
    pub fn contains(&self, i: usize) -> bool {
        self.peers.get(i).copied().unwrap_or(false)
    }
    pub fn insert(&mut self, i: usize) {
        if let Some(slot) = self.peers.get_mut(i) {
            *slot = true;
        }
    }
}

impl Balancer {
    pub fn new(peers: Vec<Peer>, now: Instant) -> Balancer {
        let state = peers
            .iter()
            .map(|p| PeerState {
                current_weight: 0,
                effective_weight: p.weight as i64,
                fails: 0,
                accessed: None,
                checked: now,
            })
            .collect();
        let healthy = peers.iter().map(|_| AtomicBool::new(true)).collect();
        Balancer { peers, state: Mutex::new(state), healthy, ring: None }
    }

    /// Selection by the consistent hash of a key (the request URI) instead of round robin.
    pub fn consistent_hash(mut self) -> Balancer {
        self.ring = Some(super::chash::Ring::new(self.peers.iter().map(|p| (p.server.as_str(), p.weight))));
        self
    }

    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// A new request's state; `key` places it on the ring when the pool hashes.
    pub fn tried(&self, key: &[u8]) -> Tried {
        let cursor = self.ring.as_ref().map(|ring| (ring.start(key), 0));
        Tried { peers: vec![false; self.peers.len()], cursor }
    }

    /// nginx's `peers->tries`: the attempts a request may make before the tries limit.
    pub fn tries(&self) -> usize {
        self.peers.iter().filter(|p| !p.down).count()
    }

    pub fn set_healthy(&self, i: usize, healthy: bool) {
        if let Some(h) = self.healthy.get(i) {
            h.store(healthy, Ordering::Relaxed);
        }
    }

    pub fn is_healthy(&self, i: usize) -> bool {
        self.healthy.get(i).is_some_and(|h| h.load(Ordering::Relaxed))
    }

    /// Picks the next peer for a request, or None when no untried peer is available
    /// (nginx "no live upstreams").
    pub fn select(&self, tried: &mut Tried, now: Instant) -> Option<usize> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // A single server is never considered unavailable (nginx ignores max_fails for it).
        if self.peers.len() == 1 {
            if self.peers[0].down || tried.contains(0) {
                return None;
            }
            tried.insert(0);
            return Some(0);
        }
        // Probes exclude failing peers, unless every peer fails them: then the probes are
        // more likely wrong than every backend, and trying beats refusing everything.
        let use_probes = (0..self.peers.len()).any(|i| !self.peers[i].down && self.healthy[i].load(Ordering::Relaxed));
        if let (Some(ring), Some(cursor)) = (&self.ring, tried.cursor.as_mut()) {
            match self.select_on_ring(ring, cursor, &mut tried.peers, &mut state, use_probes, now) {
                Some(decided) => return decided,
                // Too many points passed: round robin from here on, as nginx does.
                None => tried.cursor = None,
            }
        }
        let mut best: Option<(usize, i64)> = None;
        let mut total: i64 = 0;
        for (i, peer) in self.peers.iter().enumerate() {
            if tried.contains(i) || peer.down {
                continue;
            }
            if use_probes && !self.healthy[i].load(Ordering::Relaxed) {
                continue;
            }
            let s = &mut state[i];
            if peer.max_fails > 0 && s.fails >= peer.max_fails && now.duration_since(s.checked) <= peer.fail_timeout {
                continue;
            }
            s.current_weight += s.effective_weight;
            total += s.effective_weight;
            if s.effective_weight < peer.weight as i64 {
                s.effective_weight += 1;
            }
            // Strictly greater: the first of equal peers wins, as in nginx.
            let weight = s.current_weight;
            if best.is_none_or(|(_, w)| weight > w) {
                best = Some((i, weight));
            }
        }
        let Some((b, _)) = best else {
            // Every peer is ejected: nginx forgets the failures so the next request tries
            // again instead of refusing until fail_timeout passes.
            if !(0..self.peers.len()).any(|i| tried.contains(i)) {
                for s in state.iter_mut() {
                    s.fails = 0;
                }
            }
            return None;
        };
        let s = &mut state[b];
        s.current_weight -= total;
        if now.duration_since(s.checked) > self.peers[b].fail_timeout {
            s.checked = now;
        }
        tried.insert(b);
        Some(b)
    }

    /// nginx's `ngx_http_upstream_get_chash_peer`: from the request's point on, the first
    /// point whose server has an untried, available peer (several addresses of one name are
    /// weighed as round robin weighs them); Some(None) once every point was passed, None after
    /// `MAX_SKIPS` points (the caller goes on by round robin, so a pool whose peers are all
    /// out costs a bounded walk).
    fn select_on_ring(
        &self,
        ring: &super::chash::Ring,
        cursor: &mut (usize, usize),
        tried: &mut [bool],
        state: &mut [PeerState],
        use_probes: bool,
        now: Instant,
    ) -> Option<Option<usize>> {
        const MAX_SKIPS: usize = 20;
        loop {
            let (start, n) = *cursor;
            if n >= ring.len() {
                return Some(None);
            }
            if n > MAX_SKIPS {
                return None;
            }
            let first = ring.peer(start, n)?;
            let server = &self.peers[first].server;
            let mut best: Option<(usize, i64)> = None;
            let mut total = 0;
            for (i, peer) in self.peers.iter().enumerate().filter(|(_, p)| p.server == *server) {
                let s = &mut state[i];
                let ejected = peer.max_fails > 0
                    && s.fails >= peer.max_fails
                    && now.duration_since(s.checked) <= peer.fail_timeout;
                if tried[i] || peer.down || ejected || (use_probes && !self.healthy[i].load(Ordering::Relaxed)) {
                    continue;
                }
                s.current_weight += s.effective_weight;
                total += s.effective_weight;
                if s.effective_weight < peer.weight as i64 {
                    s.effective_weight += 1;
                }
                if best.is_none_or(|(_, w)| s.current_weight > w) {
                    best = Some((i, s.current_weight));
                }
            }
            if let Some((b, _)) = best {
                let s = &mut state[b];
                s.current_weight -= total;
                if now.duration_since(s.checked) > self.peers[b].fail_timeout {
                    s.checked = now;
                }
                tried[b] = true;
                return Some(Some(b));
            }
            cursor.1 += 1;
        }
    }

    /// Records the end of an attempt (nginx `ngx_http_upstream_free_round_robin_peer`).
    /// Returns true when this failure just ejected the peer.
    pub fn report(&self, i: usize, outcome: Outcome, now: Instant) -> bool {
        if self.peers.len() == 1 {
            return false;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let peer = &self.peers[i];
        let s = &mut state[i];
        match outcome {
            Outcome::Failed => {
                s.fails += 1;
                s.accessed = Some(now);
                s.checked = now;
                if let Some(penalty) = peer.weight.checked_div(peer.max_fails) {
                    s.effective_weight -= penalty as i64;
                    if s.effective_weight < 0 {
                        s.effective_weight = 0;
                    }
                    return s.fails == peer.max_fails;
                }
                false
            }
            Outcome::Success => {
                if s.accessed.is_some_and(|a| a < s.checked) {
                    s.fails = 0;
                }
                false
            }
            Outcome::Next => false,
        }
    }

    pub fn view(&self, now: Instant) -> Vec<PeerView> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.peers
            .iter()
            .zip(state.iter())
            .enumerate()
            .map(|(i, (p, s))| {
                let ejected = p.max_fails > 0
                    && self.peers.len() > 1
                    && s.fails >= p.max_fails
                    && now.duration_since(s.checked) <= p.fail_timeout;
                let state = if p.down {
                    "down"
                } else if ejected {
                    "ejected"
                } else if !self.healthy[i].load(Ordering::Relaxed) {
                    "unhealthy"
                } else {
                    "up"
                };
                PeerView {
                    address: p.addr.to_string(),
                    server: p.server.clone(),
                    weight: p.weight,
                    state,
                    fails: s.fails,
                    max_fails: p.max_fails,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(weights: &[u32], max_fails: u32) -> Vec<Peer> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Peer {
                addr: SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                server: format!("p{i}"),
                weight: *w,
                max_fails,
                fail_timeout: Duration::from_secs(10),
                down: false,
            })
            .collect()
    }

    const NAMES: &[u8] = b"abcdefgh";

    /// Runs requests where `dead` peers fail every attempt; each request is written as its
    /// attempts, failed ones followed by '!', e.g. "b!c".
    fn simulate(b: &Balancer, requests: usize, dead: &[usize], tries: usize) -> Vec<String> {
        let now = Instant::now();
        let mut out = Vec::new();
        for _ in 0..requests {
            let mut tried = b.tried(b"");
            let mut attempts = String::new();
            for _ in 0..tries.min(b.tries()) {
                let Some(i) = b.select(&mut tried, now) else { break };
                attempts.push(NAMES[i] as char);
                if dead.contains(&i) {
                    attempts.push('!');
                    b.report(i, Outcome::Failed, now);
                } else {
                    b.report(i, Outcome::Success, now);
                    break;
                }
            }
            out.push(attempts);
        }
        out
    }

    #[test]
    fn weights_5_1_1_give_nginx_commit_vector() {
        let b = Balancer::new(peers(&[5, 1, 1], 0), Instant::now());
        assert_eq!(simulate(&b, 7, &[], 3).concat(), "aabacaa");
    }

    #[test]
    fn equal_weights_rotate_in_config_order() {
        let b = Balancer::new(peers(&[1, 1, 1], 0), Instant::now());
        assert_eq!(simulate(&b, 6, &[], 3).concat(), "abcabc");
        let b = Balancer::new(peers(&[1, 1], 0), Instant::now());
        assert_eq!(simulate(&b, 4, &[], 3).concat(), "abab");
    }

    /// lb.md §3: exrp with D refusing, observed on nginx 1.22.1:
    /// C · D✗→E · E · C · D✗→E · C · E · D✗→C · E
    #[test]
    fn dead_peer_vector_matches_nginx() {
        let b = Balancer::new(peers(&[1, 1, 1], 0), Instant::now());
        let got = simulate(&b, 9, &[1], 3);
        assert_eq!(got, ["a", "b!c", "c", "a", "b!c", "a", "c", "b!a", "c"]);
    }

    /// lb.md §3: D and E down: C · D✗E✗C · E✗C · D✗C · E✗C · D✗C
    #[test]
    fn two_dead_peers_vector_matches_nginx() {
        let b = Balancer::new(peers(&[1, 1, 1], 0), Instant::now());
        let got = simulate(&b, 6, &[1, 2], 3);
        assert_eq!(got, ["a", "b!c!a", "c!a", "b!a", "c!a", "b!a"]);
    }

    #[test]
    fn excp_with_one_dead_peer_pays_every_second_request() {
        let b = Balancer::new(peers(&[1, 1], 0), Instant::now());
        assert_eq!(simulate(&b, 4, &[0], 3), ["a!b", "b", "a!b", "b"]);
    }

    #[test]
    fn a_peer_is_tried_at_most_once_per_request() {
        let b = Balancer::new(peers(&[1, 1, 1], 0), Instant::now());
        assert_eq!(simulate(&b, 1, &[0, 1, 2], 10), ["a!b!c!"]);
    }

    #[test]
    fn max_fails_ejects_for_fail_timeout_then_recovers() {
        let b = Balancer::new(peers(&[1, 1], 1), Instant::now());
        let t0 = Instant::now();
        let mut tried = b.tried(b"");
        assert_eq!(b.select(&mut tried, t0), Some(0));
        assert!(b.report(0, Outcome::Failed, t0), "first failure ejects with max_fails=1");
        for _ in 0..4 {
            let mut tried = b.tried(b"");
            assert_eq!(b.select(&mut tried, t0 + Duration::from_secs(1)), Some(1));
            b.report(1, Outcome::Success, t0);
        }
        assert_eq!(b.view(t0 + Duration::from_secs(1))[0].state, "ejected");
        // After fail_timeout the peer gets a chance again, and a success clears its failures.
        let later = t0 + Duration::from_secs(11);
        let mut seen = Vec::new();
        for _ in 0..4 {
            let mut tried = b.tried(b"");
            let i = b.select(&mut tried, later).unwrap();
            b.report(i, Outcome::Success, later);
            seen.push(i);
        }
        assert!(seen.contains(&0), "{seen:?}");
        assert_eq!(b.view(later)[0].state, "up");
    }

    #[test]
    fn all_ejected_resets_failures_and_says_no_live_upstreams() {
        let b = Balancer::new(peers(&[1, 1], 1), Instant::now());
        let now = Instant::now();
        let mut tried = b.tried(b"");
        let first = b.select(&mut tried, now).unwrap();
        b.report(first, Outcome::Failed, now);
        let second = b.select(&mut tried, now).unwrap();
        b.report(second, Outcome::Failed, now);
        let mut fresh = b.tried(b"");
        assert_eq!(b.select(&mut fresh, now), None, "both ejected");
        let mut again = b.tried(b"");
        assert!(b.select(&mut again, now).is_some(), "failures were forgotten");
    }

    #[test]
    fn single_server_ignores_failures_and_down_excludes() {
        let b = Balancer::new(peers(&[1], 1), Instant::now());
        let now = Instant::now();
        for _ in 0..3 {
            let mut tried = b.tried(b"");
            assert_eq!(b.select(&mut tried, now), Some(0));
            b.report(0, Outcome::Failed, now);
            assert_eq!(b.select(&mut tried, now), None);
        }
        let mut ps = peers(&[1, 1, 1], 0);
        ps[1].down = true;
        let b = Balancer::new(ps, Instant::now());
        assert_eq!(b.tries(), 2);
        assert_eq!(simulate(&b, 4, &[], 3).concat(), "acac");
    }

    #[test]
    fn failing_probes_exclude_a_peer_unless_all_fail() {
        let b = Balancer::new(peers(&[1, 1, 1], 0), Instant::now());
        b.set_healthy(1, false);
        assert_eq!(simulate(&b, 4, &[], 3).concat(), "acac");
        for i in 0..3 {
            b.set_healthy(i, false);
        }
        assert_eq!(simulate(&b, 3, &[], 3).len(), 3, "fail open when every probe fails");
        assert!(simulate(&b, 3, &[], 3).iter().all(|s| s.len() == 1));
    }

    #[test]
    fn a_hashed_name_of_two_addresses_tries_both_before_the_next_server() {
        let mut ps = peers(&[1, 1, 1], 0);
        ps[1].server = "p0".into();
        let b = Balancer::new(ps, Instant::now()).consistent_hash();
        let now = Instant::now();
        // A key whose first point is server p0 (peers 0 and 1).
        let key = (0..1000)
            .map(|i| format!("/k{i}"))
            .find(|k| {
                let mut t = b.tried(k.as_bytes());
                matches!(b.select(&mut t, now), Some(0 | 1))
            })
            .unwrap();
        let mut tried = b.tried(key.as_bytes());
        let first = b.select(&mut tried, now).unwrap();
        let second = b.select(&mut tried, now).unwrap();
        assert_eq!([first.min(second), first.max(second)], [0, 1], "both addresses of p0 first");
        assert_eq!(b.select(&mut tried, now), Some(2));
        assert_eq!(b.select(&mut tried, now), None);
    }

    #[test]
    fn a_hashed_pool_with_every_peer_out_gives_up_after_a_bounded_walk() {
        let mut ps = peers(&[1, 1], 1);
        for p in &mut ps {
            p.down = true;
        }
        let b = Balancer::new(ps, Instant::now()).consistent_hash();
        let mut tried = b.tried(b"/x");
        assert_eq!(b.select(&mut tried, Instant::now()), None);
        // The same key keeps its peer while it is up.
        let b = Balancer::new(peers(&[1, 1, 1], 0), Instant::now()).consistent_hash();
        let pick = |key: &[u8]| b.select(&mut b.tried(key), Instant::now());
        assert_eq!(pick(b"/a/b.opus"), pick(b"/a/b.opus"));
    }
}
