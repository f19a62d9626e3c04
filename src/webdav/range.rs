//! Range requests without amplification: overlapping and adjacent ranges are merged and a
//! request with too many ranges gets the whole file, as Apache does (CVE-2011-3192 class).

/// What to do with a Range header once the file length is known.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Pass this (normalized) header to the engine.
    Ranges(String),
    /// Ignore the header and send the whole file with 200.
    Whole,
    /// Leave the header alone (unsatisfiable: the engine answers 416).
    Untouched,
}

/// Normalizes `bytes=a-b,c-,-d` against a file of `len` bytes.
pub fn decide(header: &str, len: u64, max_ranges: usize) -> Decision {
    let Some(spec) = header.trim().strip_prefix("bytes=") else { return Decision::Whole };
    let parts: Vec<&str> = spec.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    // A header this long is an attack whatever it contains; do not even parse it all.
    if parts.is_empty() || parts.len() > 10_000 {
        return Decision::Whole;
    }
    let mut ranges = Vec::with_capacity(parts.len());
    for part in parts {
        let Some((first, last)) = part.split_once('-') else { return Decision::Whole };
        let (first, last) = (first.trim(), last.trim());
        let range = if first.is_empty() {
            let Ok(suffix) = last.parse::<u64>() else { return Decision::Whole };
            (suffix > 0 && len > 0).then(|| (len - suffix.min(len), len - 1))
        } else {
            let Ok(start) = first.parse::<u64>() else { return Decision::Whole };
            let end = if last.is_empty() {
                u64::MAX
            } else {
                match last.parse::<u64>() {
                    Ok(end) if end >= start => end,
                    _ => return Decision::Whole,
                }
            };
            (start < len).then(|| (start, end.min(len - 1)))
        };
        ranges.extend(range);
    }
    if ranges.is_empty() {
        return Decision::Untouched;
    }
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    if merged.len() > max_ranges || merged == [(0, len - 1)] {
        return Decision::Whole;
    }
    let spec: Vec<String> = merged.iter().map(|(s, e)| format!("{s}-{e}")).collect();
    Decision::Ranges(format!("bytes={}", spec.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_ranges_are_merged() {
        let header = format!("bytes={}", vec!["0-1048575"; 2000].join(","));
        assert_eq!(decide(&header, 1 << 20, 16), Decision::Whole);
        assert_eq!(decide("bytes=0-9,5-19,30-39", 100, 16), Decision::Ranges("bytes=0-19,30-39".into()));
        assert_eq!(decide("bytes=0-9,10-19", 100, 16), Decision::Ranges("bytes=0-19".into()));
        assert_eq!(decide("bytes=-10,0-4", 100, 16), Decision::Ranges("bytes=0-4,90-99".into()));
    }

    #[test]
    fn too_many_distinct_ranges_get_the_whole_file() {
        let header =
            format!("bytes={}", (0..20).map(|i| format!("{}-{}", i * 10, i * 10 + 1)).collect::<Vec<_>>().join(","));
        assert_eq!(decide(&header, 1000, 16), Decision::Whole);
        assert!(matches!(decide(&header, 1000, 32), Decision::Ranges(_)));
    }

    #[test]
    fn odd_headers() {
        assert_eq!(decide("bytes=500-600", 100, 16), Decision::Untouched);
        assert_eq!(decide("bytes=x-y", 100, 16), Decision::Whole);
        assert_eq!(decide("items=0-1", 100, 16), Decision::Whole);
        assert_eq!(decide("bytes=50-", 100, 16), Decision::Ranges("bytes=50-99".into()));
        assert_eq!(decide("bytes=9-3", 100, 16), Decision::Whole);
    }
}
