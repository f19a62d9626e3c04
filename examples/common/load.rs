//! What the load generators (davload, postload) share: sizes as the config writes them, error
//! chains, percentiles. Included with `#[path]`, not an example of its own.

/// The library's size parser ("64KiB", "1MiB", "1000"), the one the config uses.
pub fn parse_size(s: &str) -> Result<usize, String> {
    exec_allinone::config::parse_size(s).and_then(|n| usize::try_from(n).map_err(|e| e.to_string()))
}

/// An error with its whole source chain (reqwest's top-level text hides the cause).
pub use exec_allinone::telemetry::chain;

/// The nearest-rank `p`th percentile of sorted values; the default of T for none.
pub fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&v, 50.0), 500);
        assert_eq!(percentile(&v, 99.0), 990);
        assert_eq!(percentile(&v, 100.0), 1000);
        assert_eq!(percentile::<u32>(&[], 50.0), 0);
        assert_eq!(percentile(&[2.5, 1.0e3], 50.0), 2.5);
    }
}
