//! AWS Signature Version 4 for S3 requests (the `Authorization` header), as the S3 API
//! reference describes it: a canonical request, the string to sign, the key derived from the
//! secret by date, region and service. Checked against the reference's own worked example.

use ring::{digest, hmac};

/// The hex SHA-256 of an empty payload.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// `x-amz-content-sha256` when the body is not hashed (it is length-checked and, on PUT,
/// Content-MD5-checked instead).
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Who signs, and where.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: crate::config::Secret,
    pub region: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("access_key_id", &self.access_key_id).field("region", &self.region).finish()
    }
}

/// One request to sign. `path` is already URI-encoded as it goes on the wire (S3 encodes the
/// key once); `query` pairs are raw and encoded here; `headers` are (lower-case name, value)
/// and must hold `host` and `x-amz-content-sha256`.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a [(&'a str, &'a str)],
    pub headers: &'a [(&'a str, &'a str)],
    /// The `x-amz-content-sha256` value.
    pub payload_hash: &'a str,
    /// `YYYYMMDD'T'HHMMSS'Z'`, the `x-amz-date` header's value.
    pub amz_date: &'a str,
}

/// The `Authorization` header value for `req`.
pub fn authorization(creds: &Credentials, req: &Request<'_>) -> String {
    let date = &req.amz_date[..8.min(req.amz_date.len())];
    let scope = format!("{date}/{}/s3/aws4_request", creds.region);
    let mut headers: Vec<(String, String)> =
        req.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), squash(v))).collect();
    headers.sort();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{signed}\n{}",
        req.method,
        req.path,
        canonical_query(req.query),
        headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect::<String>(),
        req.payload_hash
    );
    let to_sign = format!("AWS4-HMAC-SHA256\n{}\n{scope}\n{}", req.amz_date, sha256_hex(canonical.as_bytes()));
    let secret = format!("AWS4{}", creds.secret_access_key.expose());
    let mut key = mac(secret.as_bytes(), date.as_bytes());
    for part in [creds.region.as_bytes(), b"s3", b"aws4_request"] {
        key = mac(&key, part);
    }
    let signature = hex(&mac(&key, to_sign.as_bytes()));
    format!("AWS4-HMAC-SHA256 Credential={}/{scope},SignedHeaders={signed},Signature={signature}", creds.access_key_id)
}

fn mac(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data).as_ref().to_vec()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Header values with their runs of spaces squashed and ends trimmed.
fn squash(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Query pairs encoded (RFC 3986 unreserved kept) and sorted by name, then value.
fn canonical_query(query: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = query.iter().map(|(k, v)| (encode(k, true), encode(v, true))).collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// S3's URI encoding: everything but `A-Za-z0-9-._~` (and '/' in a path) as %XX, upper case.
pub fn encode(s: &str, slash_too: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (b == b'/' && !slash_too) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `x-amz-date` for a Unix time in seconds.
pub fn amz_date(unix_secs: u64) -> String {
    let stamp = crate::telemetry::rfc3339_ms(unix_secs * 1000);
    // 2026-12-07T09:10:33.000000Z -> 20261207T091033Z
    let digits: String = stamp.chars().take(19).filter(|c| c.is_ascii_digit() || *c == 'T').collect();
    format!("{digits}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of the S3 API reference ("Signature Calculations for the
    /// Authorization Header", GET Object with a Range).
    #[test]
    fn the_reference_s_get_object_example() {
        let creds = Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: crate::config::Secret::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
            region: "us-east-1".into(),
        };
        let req = Request {
            method: "GET",
            path: "/test.txt",
            query: &[],
            headers: &[
                ("Host", "examplebucket.s3.amazonaws.com"),
                ("Range", "bytes=0-9"),
                ("x-amz-content-sha256", EMPTY_SHA256),
                ("x-amz-date", "20130524T000000Z"),
            ],
            payload_hash: EMPTY_SHA256,
            amz_date: "20130524T000000Z",
        };
        assert_eq!(
            authorization(&creds, &req),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert!(!format!("{creds:?}").contains("EXAMPLEKEY"), "the secret stays out of Debug");
    }

    #[test]
    fn keys_queries_and_dates_are_encoded_as_s3_wants() {
        assert_eq!(encode("rec/SIM 1+é.opus", false), "rec/SIM%201%2B%C3%A9.opus");
        assert_eq!(encode("a/b", true), "a%2Fb");
        assert_eq!(canonical_query(&[("prefix", "rec/"), ("list-type", "2")]), "list-type=2&prefix=rec%2F");
        assert_eq!(canonical_query(&[("uploads", "")]), "uploads=");
        assert_eq!(amz_date(1_369_353_600), "20130524T000000Z");
        assert_eq!(sha256_hex(b""), EMPTY_SHA256);
    }
}
