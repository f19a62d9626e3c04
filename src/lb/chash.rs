//! nginx's `hash $request_uri consistent` (ngx_http_upstream_hash_module, ketama-style): 160
//! points per unit of weight for each server on a CRC-32 ring, a request going to the first
//! point at or after the CRC-32 of its key, and on to the next points while their servers
//! cannot take it. Built as nginx builds it, so the same servers give the same ring and one
//! path goes to the same peer through nginx or through us.

/// Points per unit of weight (nginx's constant).
const POINTS_PER_WEIGHT: usize = 160;

/// The CRC-32 of zlib and nginx (`ngx_crc32_long`): reflected polynomial 0xEDB88320.
pub fn crc32(bytes: &[u8]) -> u32 {
    !crc32_update(!0, bytes)
}

/// Continues a CRC-32 whose running value (not yet inverted at the end) is `crc`.
fn crc32_update(mut crc: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// The ring: (hash, index of the peer) sorted by hash, equal hashes kept once.
#[derive(Debug)]
pub struct Ring {
    points: Vec<(u32, usize)>,
}

impl Ring {
    /// `servers` are (the server as written in the config, its weight) for each peer, in
    /// config order. A name with several addresses gives several peers of one server: its
    /// points are the server's, and name its first peer (the balancer picks among them).
    pub fn new<'a>(servers: impl IntoIterator<Item = (&'a str, u32)>) -> Ring {
        let mut points = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, (server, weight)) in servers.into_iter().enumerate() {
            if !seen.insert(server) {
                continue;
            }
            // crc32(HOST \0 PORT PREV_HASH), as Cache::Memcached::Fast hashes: the port is
            // the digits after the last ':' (none for a name without one).
            let (host, port) = match server.rsplit_once(':') {
                Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => (host, port),
                _ => (server, ""),
            };
            let base = crc32_update(crc32_update(crc32_update(!0, host.as_bytes()), b"\0"), port.as_bytes());
            let mut prev: u32 = 0;
            for _ in 0..weight as usize * POINTS_PER_WEIGHT {
                let hash = !crc32_update(base, &prev.to_le_bytes());
                points.push((hash, i));
                prev = hash;
            }
        }
        // nginx sorts by hash alone (qsort, not stable) and then keeps the first of equal
        // hashes; equal 32-bit hashes of two servers are rare enough not to matter.
        points.sort_by_key(|&(hash, _)| hash);
        points.dedup_by_key(|&mut (hash, _)| hash);
        Ring { points }
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// The index of the first point at or after `key`'s hash (len() past the last).
    pub fn start(&self, key: &[u8]) -> usize {
        let hash = crc32(key);
        self.points.partition_point(|&(h, _)| h < hash)
    }

    /// The peer of the point `n` steps on from `start`, around the ring.
    pub fn peer(&self, start: usize, n: usize) -> Option<usize> {
        let len = self.points.len();
        (len > 0).then(|| self.points[(start + n) % len].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_zlibs() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b"The quick brown fox jumps over the lazy dog"), 0x414F_A339);
    }

    #[test]
    fn the_ring_has_160_points_per_weight_in_order() {
        let ring = Ring::new([("127.0.0.1:8001", 1), ("127.0.0.1:8002", 2)]);
        assert_eq!(ring.len(), 480);
        assert!(ring.points.windows(2).all(|w| w[0].0 < w[1].0));
        let owned = |i| ring.points.iter().filter(|p| p.1 == i).count();
        assert_eq!((owned(0), owned(1)), (160, 320));
    }

    #[test]
    fn a_key_keeps_its_peer_when_another_server_joins_elsewhere() {
        let two = Ring::new([("10.0.0.1:80", 1), ("10.0.0.2:80", 1)]);
        let three = Ring::new([("10.0.0.1:80", 1), ("10.0.0.2:80", 1), ("10.0.0.3:80", 1)]);
        let keys: Vec<String> = (0..2000).map(|i| format!("/recordings/call-{i}.opus")).collect();
        let moved = keys
            .iter()
            .filter(|k| {
                let before = two.peer(two.start(k.as_bytes()), 0).unwrap();
                let after = three.peer(three.start(k.as_bytes()), 0).unwrap();
                after != before && after != 2
            })
            .count();
        assert_eq!(moved, 0, "a key only ever moves to the new server");
        let to_new = keys.iter().filter(|k| three.peer(three.start(k.as_bytes()), 0) == Some(2)).count();
        assert!((400..=950).contains(&to_new), "about a third moves: {to_new}");
    }

    #[test]
    fn a_name_of_several_addresses_is_one_server_on_the_ring() {
        let ring = Ring::new([("a:1", 1), ("b:1", 1), ("b:1", 1)]);
        assert_eq!(ring.len(), 320);
        assert!(ring.points.iter().all(|p| p.1 != 2), "points name the server's first peer");
    }

    #[test]
    fn past_the_last_point_the_ring_wraps() {
        let ring = Ring::new([("a:1", 1)]);
        assert_eq!(ring.peer(ring.len(), 0), Some(0));
        assert_eq!(Ring::new(std::iter::empty()).peer(0, 0), None);
    }
}
