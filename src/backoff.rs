//! Retry delays: one exponential schedule for every retry loop in the binary (excp's
//! interaction-ends, exrp's jobs, the cloud client's credential faults, the simulator).

use std::time::Duration;

/// The delay after the `failures`-th failure in a row (1 for the first): `initial`, doubled for
/// each failure after the first, capped at `max`.
pub fn step(initial: Duration, max: Duration, failures: u32) -> Duration {
    initial.saturating_mul(1u32 << failures.saturating_sub(1).min(20)).min(max)
}

/// `step` with jitter: somewhere between half and all of it, so that instances (and jobs)
/// that failed together do not all come back at the same instant.
pub fn jittered(initial: Duration, max: Duration, failures: u32) -> Duration {
    let half = step(initial, max, failures) / 2;
    half + half.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_first_failure_caps_and_jitters_within_half() {
        let (i, m) = (Duration::from_secs(1), Duration::from_secs(60));
        let steps: Vec<u64> = (0..=8).map(|n| step(i, m, n).as_secs()).collect();
        assert_eq!(steps, [1, 1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(step(i, m, u32::MAX), m, "no overflow however long it fails");
        assert_eq!(step(Duration::from_secs(u64::MAX / 2), Duration::MAX, 30), Duration::MAX);
        for failures in 1..40 {
            let full = step(i, m, failures);
            let d = jittered(i, m, failures);
            assert!(d >= full / 2 && d <= full, "{failures}: {d:?} of {full:?}");
        }
    }
}
