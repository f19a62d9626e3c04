//! The request target sent upstream: nginx's URI normalization (decode, merge slashes, resolve
//! dot segments, refuse what it refuses) and its `NGX_ESCAPE_URI` re-escaping.

/// Why a request target is refused with 400, as nginx refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("'%' not followed by two hex digits")]
    BadEscape,
    #[error("encoded NUL byte")]
    Nul,
    #[error("'..' above the root")]
    AboveRoot,
    #[error("the path does not start with '/'")]
    NotAbsolute,
}

/// The upstream target for `proxy_pass http://pool/;` under `location /`: the normalized path,
/// re-escaped when the client's had escapes, then `?query` verbatim. Vector from nginx 1.22.1:
/// `//a/./b/../c%2Fd%20e?x=%2F&y=1` → `/a/c/d%20e?x=%2F&y=1`.
pub fn normalized(path: &str, query: Option<&str>) -> Result<String, UriError> {
    let decoded = normalize_path(path)?;
    let mut out = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
    if path.contains('%') {
        escape_into(&decoded, &mut out);
    } else {
        // Without escapes the bytes are the client's own, which the HTTP parser already
        // accepted as URI characters.
        out.push_str(&String::from_utf8_lossy(&decoded));
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// Checks the target as nginx would (it refuses the same URIs whatever `proxy_pass` says)
/// and returns the client's own path and query for `uri = "raw"`.
pub fn raw(path: &str, query: Option<&str>) -> Result<String, UriError> {
    normalize_path(path)?;
    Ok(match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    })
}

/// True when `path` is already what both modes send: absolute, no escapes, no `//` and no
/// dot segments (almost every request). Such a target can be passed on as parsed.
pub fn is_normal(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else { return false };
    if rest.contains('%') {
        return false;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        if seg == "." || seg == ".." || (seg.is_empty() && segments.peek().is_some()) {
            return false;
        }
    }
    true
}

/// Percent-decodes, then resolves `//`, `.` and `..` on the decoded bytes, so `%2F` and
/// `%2E%2E` act as the characters they encode, as in nginx's complex-URI parser.
pub fn normalize_path(path: &str) -> Result<Vec<u8>, UriError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(UriError::NotAbsolute);
    }
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|c| (*c as char).to_digit(16));
            let lo = bytes.get(i + 2).and_then(|c| (*c as char).to_digit(16));
            let (Some(hi), Some(lo)) = (hi, lo) else { return Err(UriError::BadEscape) };
            let v = (hi * 16 + lo) as u8;
            if v == 0 {
                return Err(UriError::Nul);
            }
            decoded.push(v);
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded.split(|b| *b == b'/').skip(1) {
        trailing_slash = false;
        match seg {
            b"" => trailing_slash = true,
            b"." => trailing_slash = true,
            b".." => {
                segments.pop().ok_or(UriError::AboveRoot)?;
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = Vec::with_capacity(decoded.len());
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push(b'/');
    }
    Ok(out)
}

/// nginx's `NGX_ESCAPE_URI` set: controls, space, `"#%<>?\^`{|}`, DEL and non-ASCII.
fn needs_escape(b: u8) -> bool {
    b <= 0x20
        || b >= 0x7f
        || matches!(b, b'"' | b'#' | b'%' | b'<' | b'>' | b'?' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}')
}

fn escape_into(bytes: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if needs_escape(b) {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        } else {
            out.push(b as char);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_vector() {
        assert_eq!(normalized("//a/./b/../c%2Fd%20e", Some("x=%2F&y=1")).unwrap(), "/a/c/d%20e?x=%2F&y=1");
    }

    #[test]
    fn dot_segments_and_slashes() {
        for (input, want) in [
            ("/", "/"),
            ("/foo/bar/..", "/foo/"),
            ("/foo/.", "/foo/"),
            ("/foo//bar///", "/foo/bar/"),
            ("/a/b/../../c", "/c"),
            ("/a/...", "/a/..."),
            ("/a/.hidden", "/a/.hidden"),
            ("/api/v1/recording", "/api/v1/recording"),
            ("/x/%2E%2E/y", "/y"),
            ("/%7e/%41", "/~/A"),
            ("/a%3Fb", "/a%3Fb"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/%02", "/%02"),
        ] {
            assert_eq!(normalized(input, None).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(normalized("/../x", None), Err(UriError::AboveRoot));
        assert_eq!(normalized("/a/../../x", None), Err(UriError::AboveRoot));
        assert_eq!(normalized("/%2e%2e/x", None), Err(UriError::AboveRoot));
        assert_eq!(normalized("/a%00b", None), Err(UriError::Nul));
        assert_eq!(normalized("/a%zz", None), Err(UriError::BadEscape));
        assert_eq!(normalized("/a%2", None), Err(UriError::BadEscape));
        assert_eq!(normalized("*", None), Err(UriError::NotAbsolute));
        assert_eq!(raw("/a%00", None), Err(UriError::Nul));
        assert_eq!(raw("//a/./b", Some("q")).unwrap(), "//a/./b?q");
    }

    #[test]
    fn normal_paths_are_sent_as_they_are() {
        let alphabet = ["/", "%", "2", "e", ".", "a", "%2F", "..", "~", "?"];
        let mut seed = 0x1234_5677_u32;
        let mut normal = 0;
        for _ in 0..5000 {
            let mut s = String::from("/");
            for _ in 0..(seed % 10) {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                s.push_str(alphabet[(seed % alphabet.len() as u32) as usize]);
            }
            if is_normal(&s) {
                normal += 1;
                assert_eq!(normalized(&s, Some("q")).as_deref(), Ok(format!("{s}?q").as_str()), "{s}");
                assert_eq!(raw(&s, None).as_deref(), Ok(s.as_str()), "{s}");
            }
        }
        assert!(normal > 100);
        for s in ["/", "/a", "/a/", "/a/b.c", "/...", "/a/.b"] {
            assert!(is_normal(s), "{s}");
        }
        for s in ["", "*", "a", "//", "/a//b", "/.", "/a/..", "/./a", "/a%41"] {
            assert!(!is_normal(s), "{s}");
        }
    }

    #[test]
    fn never_panics_on_odd_input() {
        let alphabet = ["/", "%", "2", "e", "E", ".", "0", "a", "%2F", "%2e", "..", "%0"];
        let mut seed = 0x2545_f491_u32;
        for _ in 0..2000 {
            let mut s = String::from("/");
            for _ in 0..(seed % 12) {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                s.push_str(alphabet[(seed % alphabet.len() as u32) as usize]);
            }
            if let Ok(out) = normalized(&s, None) {
                assert!(out.starts_with('/'), "{s} -> {out}");
                assert!(!out.contains("//"), "{s} -> {out}");
            }
        }
    }
}
