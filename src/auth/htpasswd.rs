//! Apache-compatible password files (`htpasswd`): hash verification, hashing and file updates.
//!
//! Accepted hash formats are the ones Apache httpd on Linux accepts: `$apr1$` (APR's
//! MD5-crypt), `$1$` (glibc MD5-crypt), bcrypt (`$2y$`, `$2b$`, `$2a$`), `{SHA}`, SHA-256
//! and SHA-512 crypt (`$5$`, `$6$`) and 13-character traditional DES crypt. Plaintext is
//! refused, as Apache refuses it outside Windows and NetWare.

use std::collections::HashMap;
use std::fs;
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use rand::Rng;
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// Bcrypt cost `set_user` uses, as a compromise between Apache's own default (5, too weak
/// today) and per-request latency for clients that are not cached.
pub const DEFAULT_BCRYPT_COST: u32 = 10;

/// Longest password bcrypt takes into account; `set_user` refuses longer ones instead of
/// silently truncating them as `htpasswd -B` does.
pub const BCRYPT_MAX_PASSWORD: usize = 72;

/// Longest user name `set_user` writes, the same limit as Apache's `htpasswd`.
pub const MAX_USER_LEN: usize = 255;

/// Checks `password` against one hash from a password file.
///
/// Returns false for a wrong password, for a hash in an unknown or malformed format and for
/// a password containing a NUL byte (Apache handles passwords as C strings, so such a
/// password could never have been meant). Never panics, whatever the input.
pub fn verify(hash: &str, password: &[u8]) -> bool {
    if password.contains(&0) {
        return false;
    }
    match parse_hash(hash) {
        Some(parsed) => parsed.verify(hash, password),
        None => false,
    }
}

/// Hashes `password` with bcrypt in the `$2y$` flavour that Apache writes.
///
/// `cost` is clamped to bcrypt's valid range 4..=31. Like Apache, only the first 72 bytes
/// of the password count (see `set_user` for a variant that refuses longer passwords).
pub fn hash_bcrypt(password: &[u8], cost: u32) -> String {
    let cost = cost.clamp(4, 31);
    let salt: [u8; 16] = rand::random();
    match bcrypt::hash_with_salt(password, cost, salt) {
        Ok(parts) => parts.format_for_version(bcrypt::Version::TwoY),
        // Only an out-of-range cost can fail, and it was clamped above.
        Err(e) => unreachable!("bcrypt with a clamped cost failed: {e}"),
    }
}

/// Hashes `password` with Apache's `$apr1$` MD5-crypt and a random 8-character salt, as
/// `htpasswd -m` does.
pub fn hash_apr1(password: &[u8]) -> String {
    let mut rng = rand::rng();
    let salt: Vec<u8> = (0..8).map(|_| CRYPT_ALPHABET[rng.random_range(0..CRYPT_ALPHABET.len())]).collect();
    // The salt comes from CRYPT_ALPHABET, so the result is ASCII.
    String::from_utf8_lossy(&md5_crypt(password, APR1_MAGIC, &salt)).into_owned()
}

/// Hash formats this module understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `$apr1$`, Apache's MD5-crypt.
    Apr1,
    /// `$1$`, glibc's MD5-crypt.
    Md5Crypt,
    /// `$2y$`, `$2b$` or `$2a$`.
    Bcrypt,
    /// `{SHA}`, unsalted SHA-1.
    Sha1,
    /// `$5$`.
    Sha256Crypt,
    /// `$6$`.
    Sha512Crypt,
    /// Traditional 13-character DES crypt.
    DesCrypt,
}

impl Scheme {
    /// The scheme of `hash` if it is a well-formed hash this module can verify.
    pub fn of(hash: &str) -> Option<Scheme> {
        parse_hash(hash).map(|p| p.scheme())
    }

    /// Whether verifying takes long enough (tens of milliseconds and more) that async code
    /// should move it off the reactor.
    pub fn is_expensive(self) -> bool {
        matches!(self, Scheme::Bcrypt | Scheme::Sha256Crypt | Scheme::Sha512Crypt)
    }

    /// A short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Apr1 => "apr1",
            Scheme::Md5Crypt => "md5-crypt",
            Scheme::Bcrypt => "bcrypt",
            Scheme::Sha1 => "sha1",
            Scheme::Sha256Crypt => "sha256-crypt",
            Scheme::Sha512Crypt => "sha512-crypt",
            Scheme::DesCrypt => "des-crypt",
        }
    }
}

/// A parsed password file: `user:hash` lines, blank lines and `#` comments.
#[derive(Debug, Clone, Default)]
pub struct PasswordFile {
    // File order is kept so callers can pick a representative entry deterministically.
    entries: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl PasswordFile {
    /// Parses the text of a password file, collecting every problem as `line N: ...`.
    ///
    /// As in Apache, each line is trimmed, the user name runs to the first `:` and the hash
    /// to the next `:` (anything after that is ignored). A hash in an unknown or malformed
    /// format and a user listed twice are problems.
    pub fn parse(text: &str) -> Result<PasswordFile, Vec<String>> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut file = PasswordFile::default();
        let mut problems = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim_ascii();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, rest)) = line.split_once(':') else {
                problems.push(format!("line {n}: no ':' between user and password hash"));
                continue;
            };
            let hash = rest.split(':').next().unwrap_or_default();
            if user.is_empty() {
                problems.push(format!("line {n}: empty user name"));
                continue;
            }
            if Scheme::of(hash).is_none() {
                // The hash itself stays out of the message: it may be a plaintext password.
                problems.push(format!(
                    "line {n}: user {user:?} has an unknown or malformed password hash ({})",
                    describe_unknown(hash)
                ));
                continue;
            }
            if let Some(&first) = file.index.get(user) {
                let first_line = file.line_of(first, text);
                problems.push(format!("line {n}: user {user:?} is listed again (first on line {first_line})"));
                continue;
            }
            file.index.insert(user.to_owned(), file.entries.len());
            file.entries.push((user.to_owned(), hash.to_owned()));
        }
        if problems.is_empty() { Ok(file) } else { Err(problems) }
    }

    /// The hash stored for `user`.
    pub fn lookup(&self, user: &str) -> Option<&str> {
        self.index.get(user).map(|&i| self.entries[i].1.as_str())
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file has no users.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `(user, hash)` pairs in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(u, h)| (u.as_str(), h.as_str()))
    }

    // Recomputed on demand because line numbers are only needed for error messages.
    fn line_of(&self, entry: usize, text: &str) -> usize {
        let user = &self.entries[entry].0;
        text.lines()
            .position(|l| {
                let l = l.trim_ascii();
                !l.starts_with('#') && l.split_once(':').is_some_and(|(u, _)| u == user)
            })
            .map_or(0, |p| p + 1)
    }
}

/// Sets `user`'s password in the file at `path` to a bcrypt hash (cost
/// [`DEFAULT_BCRYPT_COST`]), like `htpasswd [-c] -B FILE USER`.
///
/// Other lines, comments included, are kept as they are; the user's line is replaced (a
/// later duplicate of it is dropped) or appended. The file is replaced atomically: a temp
/// file in the same directory is written, fsynced and renamed over it, keeping an existing
/// file's mode, owner and group; a new file gets mode 0640. With `create` the file is
/// started afresh like `htpasswd -c`; without it a missing file is an error.
///
/// Returns true if the user existed and was updated, false if it was added.
pub fn set_user(path: &Path, user: &str, password: &[u8], create: bool) -> anyhow::Result<bool> {
    check_user_name(user)?;
    if password.contains(&0) {
        bail!("password contains a NUL byte, which Apache can never match");
    }
    if password.len() > BCRYPT_MAX_PASSWORD {
        bail!("password is {} bytes long but bcrypt only uses the first {BCRYPT_MAX_PASSWORD}", password.len());
    }
    // Fail on a missing file before spending a bcrypt run.
    if !create && !path.exists() {
        bail!(missing_file_message(path));
    }
    set_user_hash(path, user, &hash_bcrypt(password, DEFAULT_BCRYPT_COST), create)
}

/// Like [`set_user`], with a hash made by the caller (e.g. [`hash_apr1`] for `htpasswd -m`).
/// The hash must be in a format [`verify`] accepts.
pub fn set_user_hash(path: &Path, user: &str, hash: &str, create: bool) -> anyhow::Result<bool> {
    check_user_name(user)?;
    if Scheme::of(hash).is_none() {
        bail!("refusing to write a password hash in an unknown or malformed format");
    }

    // Write through a symlink the way htpasswd does, instead of replacing the link itself.
    let target = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            fs::canonicalize(path).with_context(|| format!("cannot resolve symlink {}", path.display()))?
        }
        _ => path.to_path_buf(),
    };

    let existing = match fs::read(&target) {
        Ok(bytes) => Some((bytes, fs::metadata(&target).with_context(|| format!("cannot stat {}", target.display()))?)),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if !create {
                bail!(missing_file_message(&target));
            }
            None
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", target.display()));
        }
    };

    let new_line = format!("{user}:{hash}");
    let (content, updated) = match (&existing, create) {
        (Some((bytes, _)), false) => replace_user_line(bytes, user, &new_line),
        _ => (format!("{new_line}\n").into_bytes(), false),
    };
    let meta = existing.as_ref().map(|(_, m)| m);
    write_atomically(&target, &content, meta)?;
    Ok(updated)
}

const APR1_MAGIC: &[u8] = b"$apr1$";
const MD5_MAGIC: &[u8] = b"$1$";
const CRYPT_ALPHABET: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A hash split into the parts its algorithm needs; borrowing from the hash string.
#[derive(Debug)]
enum Parsed<'a> {
    Md5 { magic: &'static [u8], salt: &'a [u8] },
    Bcrypt { version: bcrypt::Version, cost: u32, salt: [u8; 16] },
    Sha1 { digest: [u8; 20] },
    // None when the hash has no `rounds=`, which must then stay out of the recomputed string.
    Sha256 { rounds: Option<usize>, salt: &'a [u8] },
    Sha512 { rounds: Option<usize>, salt: &'a [u8] },
    Des { salt: [u8; 2] },
}

impl Parsed<'_> {
    fn scheme(&self) -> Scheme {
        match self {
            Parsed::Md5 { magic, .. } if *magic == APR1_MAGIC => Scheme::Apr1,
            Parsed::Md5 { .. } => Scheme::Md5Crypt,
            Parsed::Bcrypt { .. } => Scheme::Bcrypt,
            Parsed::Sha1 { .. } => Scheme::Sha1,
            Parsed::Sha256 { .. } => Scheme::Sha256Crypt,
            Parsed::Sha512 { .. } => Scheme::Sha512Crypt,
            Parsed::Des { .. } => Scheme::DesCrypt,
        }
    }

    /// Recomputes the hash for `password` and compares it with `hash` in constant time.
    /// Comparing whole strings matches Apache, which `strcmp`s crypt()'s output.
    fn verify(&self, hash: &str, password: &[u8]) -> bool {
        let expected = hash.as_bytes();
        let computed: Vec<u8> = match self {
            Parsed::Md5 { magic, salt } => md5_crypt(password, magic, salt),
            Parsed::Bcrypt { version, cost, salt } => match bcrypt::hash_with_salt(password, *cost, *salt) {
                Ok(parts) => parts.format_for_version(version.clone()).into_bytes(),
                Err(_) => return false,
            },
            Parsed::Sha1 { digest } => {
                return bool::from(Sha1::digest(password).as_slice().ct_eq(digest));
            }
            Parsed::Sha256 { rounds, salt } => {
                let n = rounds.unwrap_or(sha_crypt::ROUNDS_DEFAULT);
                let Ok(params) = sha_crypt::Sha256Params::new(n) else {
                    return false;
                };
                match sha_crypt::sha256_crypt_b64(password, salt, &params) {
                    Ok(b64) => sha_crypt_string(b"$5$", *rounds, salt, &b64),
                    Err(_) => return false,
                }
            }
            Parsed::Sha512 { rounds, salt } => {
                let n = rounds.unwrap_or(sha_crypt::ROUNDS_DEFAULT);
                let Ok(params) = sha_crypt::Sha512Params::new(n) else {
                    return false;
                };
                match sha_crypt::sha512_crypt_b64(password, salt, &params) {
                    Ok(b64) => sha_crypt_string(b"$6$", *rounds, salt, &b64),
                    Err(_) => return false,
                }
            }
            Parsed::Des { salt } => des_crypt(password, *salt).to_vec(),
        };
        // ct_eq on slices of different lengths is false without looking at the contents.
        computed.ct_eq(expected).into()
    }
}

fn parse_hash(hash: &str) -> Option<Parsed<'_>> {
    let b = hash.as_bytes();
    if let Some(rest) = b.strip_prefix(APR1_MAGIC) {
        parse_md5(APR1_MAGIC, rest)
    } else if let Some(rest) = b.strip_prefix(MD5_MAGIC) {
        parse_md5(MD5_MAGIC, rest)
    } else if b.starts_with(b"$2") {
        parse_bcrypt(b)
    } else if let Some(rest) = b.strip_prefix(b"{SHA}") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
        Some(Parsed::Sha1 { digest: decoded.try_into().ok()? })
    } else if let Some(rest) = b.strip_prefix(b"$5$") {
        let (rounds, salt) = parse_sha_crypt(rest, 43)?;
        Some(Parsed::Sha256 { rounds, salt })
    } else if let Some(rest) = b.strip_prefix(b"$6$") {
        let (rounds, salt) = parse_sha_crypt(rest, 86)?;
        Some(Parsed::Sha512 { rounds, salt })
    } else if b.len() == 13 && b.iter().all(|c| CRYPT_ALPHABET.contains(c)) {
        Some(Parsed::Des { salt: [b[0], b[1]] })
    } else {
        None
    }
}

/// `salt$hash` after the magic: salt of at most 8 bytes without `$`, 22-char hash.
fn parse_md5<'a>(magic: &'static [u8], rest: &'a [u8]) -> Option<Parsed<'a>> {
    let dollar = rest.iter().position(|&c| c == b'$')?;
    let (salt, hash) = (&rest[..dollar], &rest[dollar + 1..]);
    // Longer salts are silently cut by the C code, so such a hash could never match.
    if salt.len() > 8 || hash.len() != 22 || !hash.iter().all(|c| CRYPT_ALPHABET.contains(c)) {
        return None;
    }
    Some(Parsed::Md5 { magic, salt })
}

/// `$2y$NN$` + 22 salt chars + 31 hash chars.
fn parse_bcrypt(b: &[u8]) -> Option<Parsed<'_>> {
    if b.len() != 60 || b[3] != b'$' || b[6] != b'$' {
        return None;
    }
    let version = match &b[1..3] {
        b"2y" => bcrypt::Version::TwoY,
        b"2b" => bcrypt::Version::TwoB,
        // $2a$ is computed like $2b$ for the non-8-bit passwords it is known to be correct
        // for; $2x$ (deliberately buggy) is left out.
        b"2a" => bcrypt::Version::TwoA,
        _ => return None,
    };
    let cost_digits = &b[4..6];
    if !cost_digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let cost = u32::from(cost_digits[0] - b'0') * 10 + u32::from(cost_digits[1] - b'0');
    if !(4..=31).contains(&cost) {
        return None;
    }
    let (salt_b64, hash_b64) = (&b[7..29], &b[29..]);
    if !hash_b64.iter().all(|c| CRYPT_ALPHABET.contains(c)) {
        return None;
    }
    // The engine refuses non-canonical trailing bits, which crypt_blowfish would rewrite and
    // so never match anyway.
    let salt = bcrypt::BASE_64.decode(salt_b64).ok()?.try_into().ok()?;
    Some(Parsed::Bcrypt { version, cost, salt })
}

/// `[rounds=N$]salt$hash` after the magic, with libxcrypt's rules: rounds without leading
/// zeros within 1000..=999999999 (out-of-range values are refused, not clamped), salt of at
/// most 16 bytes.
fn parse_sha_crypt(rest: &[u8], hash_len: usize) -> Option<(Option<usize>, &[u8])> {
    let (rounds, rest) = match rest.strip_prefix(b"rounds=") {
        Some(r) => {
            let dollar = r.iter().position(|&c| c == b'$')?;
            let digits = &r[..dollar];
            if digits.is_empty() || digits.len() > 9 || digits[0] == b'0' || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let n = digits.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
            if !(sha_crypt::ROUNDS_MIN..=sha_crypt::ROUNDS_MAX).contains(&n) {
                return None;
            }
            (Some(n), &r[dollar + 1..])
        }
        None => (None, rest),
    };
    let dollar = rest.iter().position(|&c| c == b'$')?;
    let (salt, hash) = (&rest[..dollar], &rest[dollar + 1..]);
    if salt.len() > 16 || hash.len() != hash_len || !hash.iter().all(|c| CRYPT_ALPHABET.contains(c)) {
        return None;
    }
    Some((rounds, salt))
}

fn sha_crypt_string(magic: &[u8], rounds: Option<usize>, salt: &[u8], b64: &str) -> Vec<u8> {
    let mut out = magic.to_vec();
    if let Some(n) = rounds {
        out.extend_from_slice(format!("rounds={n}$").as_bytes());
    }
    out.extend_from_slice(salt);
    out.push(b'$');
    out.extend_from_slice(b64.as_bytes());
    out
}

/// Names what an unusable hash looks like, without repeating it.
fn describe_unknown(hash: &str) -> &'static str {
    let b = hash.as_bytes();
    if b.is_empty() {
        "empty"
    } else if b.starts_with(b"$apr1$") || b.starts_with(b"$1$") {
        "malformed MD5-crypt"
    } else if b.starts_with(b"$2") {
        "malformed or unsupported bcrypt"
    } else if b.starts_with(b"{SHA}") {
        "malformed {SHA}"
    } else if b.starts_with(b"$5$") || b.starts_with(b"$6$") {
        "malformed SHA-crypt"
    } else if b.starts_with(b"$") {
        "unsupported crypt scheme"
    } else {
        "not a known format; plaintext passwords are not accepted"
    }
}

/// MD5-crypt as in APR's `apr_md5_encode` (and glibc's for `$1$`), returning the full
/// `magic salt $ hash` string.
fn md5_crypt(password: &[u8], magic: &[u8], salt: &[u8]) -> Vec<u8> {
    use md5::{Digest as _, Md5};

    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(magic);
    ctx.update(salt);

    let mut alt = Md5::new();
    alt.update(password);
    alt.update(salt);
    alt.update(password);
    let alt = alt.finalize();

    let mut remaining = password.len();
    while remaining > 0 {
        let n = remaining.min(16);
        ctx.update(&alt[..n]);
        remaining -= n;
    }

    // The original C code feeds a zeroed buffer's first byte for set bits.
    let mut i = password.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        i >>= 1;
    }
    let mut fin = ctx.finalize();

    for i in 0..1000 {
        let mut c = Md5::new();
        if i & 1 == 1 {
            c.update(password);
        } else {
            c.update(fin);
        }
        if i % 3 != 0 {
            c.update(salt);
        }
        if i % 7 != 0 {
            c.update(password);
        }
        if i & 1 == 1 {
            c.update(fin);
        } else {
            c.update(password);
        }
        fin = c.finalize();
    }

    let mut out = Vec::with_capacity(magic.len() + salt.len() + 23);
    out.extend_from_slice(magic);
    out.extend_from_slice(salt);
    out.push(b'$');
    let f = |i: usize| u32::from(fin[i]);
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        push_b64(&mut out, (f(a) << 16) | (f(b) << 8) | f(c), 4);
    }
    push_b64(&mut out, f(11), 2);
    out
}

/// crypt(3)'s little-endian base64.
fn push_b64(out: &mut Vec<u8>, mut v: u32, n: usize) {
    for _ in 0..n {
        out.push(CRYPT_ALPHABET[(v & 0x3f) as usize]);
        v >>= 6;
    }
}

fn missing_file_message(path: &Path) -> String {
    format!("password file {} does not exist (create it with -c)", path.display())
}

fn check_user_name(user: &str) -> anyhow::Result<()> {
    if user.is_empty() {
        bail!("user name is empty");
    }
    if user.len() > MAX_USER_LEN {
        bail!("user name is longer than {MAX_USER_LEN} bytes");
    }
    if user.contains(':') {
        bail!("user name {user:?} contains ':'");
    }
    if user.chars().any(char::is_control) {
        bail!("user name {user:?} contains control characters");
    }
    // The parser trims lines and skips '#' lines, so such names could never log in.
    if user.trim() != user {
        bail!("user name {user:?} starts or ends with whitespace");
    }
    if user.starts_with('#') {
        bail!("user name {user:?} starts with '#', which would make its line a comment");
    }
    Ok(())
}

/// Replaces the first line for `user` with `new_line` (keeping its line ending), drops later
/// lines for the same user, and appends `new_line` if there was none.
fn replace_user_line(old: &[u8], user: &str, new_line: &str) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(old.len() + new_line.len() + 1);
    let mut found = false;
    for line in old.split_inclusive(|&c| c == b'\n') {
        let body_len = line.len() - if line.ends_with(b"\r\n") { 2 } else { usize::from(line.ends_with(b"\n")) };
        let (body, ending) = line.split_at(body_len);
        let trimmed = body.trim_ascii();
        let is_users = !trimmed.starts_with(b"#")
            && trimmed.iter().position(|&c| c == b':').is_some_and(|p| &trimmed[..p] == user.as_bytes());
        if !is_users {
            out.extend_from_slice(line);
        } else if !found {
            found = true;
            out.extend_from_slice(new_line.as_bytes());
            out.extend_from_slice(if ending.is_empty() { b"\n" } else { ending });
        }
    }
    if !found {
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(new_line.as_bytes());
        out.push(b'\n');
    }
    (out, found)
}

fn write_atomically(target: &Path, content: &[u8], old: Option<&fs::Metadata>) -> anyhow::Result<()> {
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target.file_name().with_context(|| format!("{} does not name a file", target.display()))?;
    let tmp = dir.join(crate::durable::temp_name(&name.to_string_lossy()));
    // Created 0600: the hashes are never readable by others, not even for a moment.
    crate::durable::replace_file(&tmp, target, 0o600, crate::durable::Flush::All, |f| {
        f.write_all(content)?;
        if let Some(m) = old {
            // Keep the group the web server reads the file through; a plain rewrite by
            // another user would otherwise lock the server out.
            let (uid, gid) = (m.uid(), m.gid());
            let mine = f.metadata()?;
            if mine.uid() != uid || mine.gid() != gid {
                std::os::unix::fs::fchown(&*f, Some(uid), Some(gid)).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot give the new file the old owner {uid}:{gid}: {e}"))
                })?;
            }
        }
        // After fchown, which clears setuid/setgid bits.
        f.set_permissions(fs::Permissions::from_mode(old.map_or(0o640, |m| m.permissions().mode() & 0o7777)))
    })
    .with_context(|| format!("cannot write {} (through {})", target.display(), tmp.display()))?;
    // Makes the rename itself durable; failing here leaves a correct file behind.
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

mod des {
    //! Traditional DES-based crypt(3), bit by bit: 25 encryptions cost nothing, so clarity
    //! wins over table-driven speed.

    const IP: [u8; 64] = [
        58, 50, 42, 34, 26, 18, 10, 2, 60, 52, 44, 36, 28, 20, 12, 4, 62, 54, 46, 38, 30, 22, 14, 6, 64, 56, 48, 40,
        32, 24, 16, 8, 57, 49, 41, 33, 25, 17, 9, 1, 59, 51, 43, 35, 27, 19, 11, 3, 61, 53, 45, 37, 29, 21, 13, 5, 63,
        55, 47, 39, 31, 23, 15, 7,
    ];
    const FP: [u8; 64] = [
        40, 8, 48, 16, 56, 24, 64, 32, 39, 7, 47, 15, 55, 23, 63, 31, 38, 6, 46, 14, 54, 22, 62, 30, 37, 5, 45, 13, 53,
        21, 61, 29, 36, 4, 44, 12, 52, 20, 60, 28, 35, 3, 43, 11, 51, 19, 59, 27, 34, 2, 42, 10, 50, 18, 58, 26, 33, 1,
        41, 9, 49, 17, 57, 25,
    ];
    const E: [u8; 48] = [
        32, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 8, 9, 10, 11, 12, 13, 12, 13, 14, 15, 16, 17, 16, 17, 18, 19, 20, 21, 20,
        21, 22, 23, 24, 25, 24, 25, 26, 27, 28, 29, 28, 29, 30, 31, 32, 1,
    ];
    const P: [u8; 32] = [
        16, 7, 20, 21, 29, 12, 28, 17, 1, 15, 23, 26, 5, 18, 31, 10, 2, 8, 24, 14, 32, 27, 3, 9, 19, 13, 30, 6, 22, 11,
        4, 25,
    ];
    const PC1: [u8; 56] = [
        57, 49, 41, 33, 25, 17, 9, 1, 58, 50, 42, 34, 26, 18, 10, 2, 59, 51, 43, 35, 27, 19, 11, 3, 60, 52, 44, 36, 63,
        55, 47, 39, 31, 23, 15, 7, 62, 54, 46, 38, 30, 22, 14, 6, 61, 53, 45, 37, 29, 21, 13, 5, 28, 20, 12, 4,
    ];
    const PC2: [u8; 48] = [
        14, 17, 11, 24, 1, 5, 3, 28, 15, 6, 21, 10, 23, 19, 12, 4, 26, 8, 16, 7, 27, 20, 13, 2, 41, 52, 31, 37, 47, 55,
        30, 40, 51, 45, 33, 48, 44, 49, 39, 56, 34, 53, 46, 42, 50, 36, 29, 32,
    ];
    const SHIFTS: [u32; 16] = [1, 1, 2, 2, 2, 2, 2, 2, 1, 2, 2, 2, 2, 2, 2, 1];
    const S: [[u8; 64]; 8] = [
        [
            14, 4, 13, 1, 2, 15, 11, 8, 3, 10, 6, 12, 5, 9, 0, 7, 0, 15, 7, 4, 14, 2, 13, 1, 10, 6, 12, 11, 9, 5, 3, 8,
            4, 1, 14, 8, 13, 6, 2, 11, 15, 12, 9, 7, 3, 10, 5, 0, 15, 12, 8, 2, 4, 9, 1, 7, 5, 11, 3, 14, 10, 0, 6, 13,
        ],
        [
            15, 1, 8, 14, 6, 11, 3, 4, 9, 7, 2, 13, 12, 0, 5, 10, 3, 13, 4, 7, 15, 2, 8, 14, 12, 0, 1, 10, 6, 9, 11, 5,
            0, 14, 7, 11, 10, 4, 13, 1, 5, 8, 12, 6, 9, 3, 2, 15, 13, 8, 10, 1, 3, 15, 4, 2, 11, 6, 7, 12, 0, 5, 14, 9,
        ],
        [
            10, 0, 9, 14, 6, 3, 15, 5, 1, 13, 12, 7, 11, 4, 2, 8, 13, 7, 0, 9, 3, 4, 6, 10, 2, 8, 5, 14, 12, 11, 15, 1,
            13, 6, 4, 9, 8, 15, 3, 0, 11, 1, 2, 12, 5, 10, 14, 7, 1, 10, 13, 0, 6, 9, 8, 7, 4, 15, 14, 3, 11, 5, 2, 12,
        ],
        [
            7, 13, 14, 3, 0, 6, 9, 10, 1, 2, 8, 5, 11, 12, 4, 15, 13, 8, 11, 5, 6, 15, 0, 3, 4, 7, 2, 12, 1, 10, 14, 9,
            10, 6, 9, 0, 12, 11, 7, 13, 15, 1, 3, 14, 5, 2, 8, 4, 3, 15, 0, 6, 10, 1, 13, 8, 9, 4, 5, 11, 12, 7, 2, 14,
        ],
        [
            2, 12, 4, 1, 7, 10, 11, 6, 8, 5, 3, 15, 13, 0, 14, 9, 14, 11, 2, 12, 4, 7, 13, 1, 5, 0, 15, 10, 3, 9, 8, 6,
            4, 2, 1, 11, 10, 13, 7, 8, 15, 9, 12, 5, 6, 3, 0, 14, 11, 8, 12, 7, 1, 14, 2, 13, 6, 15, 0, 9, 10, 4, 5, 3,
        ],
        [
            12, 1, 10, 15, 9, 2, 6, 8, 0, 13, 3, 4, 14, 7, 5, 11, 10, 15, 4, 2, 7, 12, 9, 5, 6, 1, 13, 14, 0, 11, 3, 8,
            9, 14, 15, 5, 2, 8, 12, 3, 7, 0, 4, 10, 1, 13, 11, 6, 4, 3, 2, 12, 9, 5, 15, 10, 11, 14, 1, 7, 6, 0, 8, 13,
        ],
        [
            4, 11, 2, 14, 15, 0, 8, 13, 3, 12, 9, 7, 5, 10, 6, 1, 13, 0, 11, 7, 4, 9, 1, 10, 14, 3, 5, 12, 2, 15, 8, 6,
            1, 4, 11, 13, 12, 3, 7, 14, 10, 15, 6, 8, 0, 5, 9, 2, 6, 11, 13, 8, 1, 4, 10, 7, 9, 5, 0, 15, 14, 2, 3, 12,
        ],
        [
            13, 2, 8, 4, 6, 15, 11, 1, 10, 9, 3, 14, 5, 0, 12, 7, 1, 15, 13, 8, 10, 3, 7, 4, 12, 5, 6, 11, 0, 14, 9, 2,
            7, 11, 4, 1, 9, 12, 14, 2, 0, 6, 10, 13, 15, 3, 5, 8, 2, 1, 14, 7, 4, 10, 8, 13, 15, 12, 9, 0, 3, 5, 6, 11,
        ],
    ];

    /// Output bit j (counted from the most significant) is input bit `table[j]` (1-based,
    /// most significant first) of an `in_bits`-wide value, as in FIPS 46.
    fn permute(input: u64, in_bits: u32, table: &[u8]) -> u64 {
        table.iter().fold(0, |out, &pos| (out << 1) | ((input >> (in_bits - u32::from(pos))) & 1))
    }

    pub(super) fn subkeys(key: u64) -> [u64; 16] {
        let cd = permute(key, 64, &PC1);
        let (mut c, mut d) = ((cd >> 28) & 0xfff_ffff, cd & 0xfff_ffff);
        let mut keys = [0; 16];
        for (k, &s) in keys.iter_mut().zip(SHIFTS.iter()) {
            c = ((c << s) | (c >> (28 - s))) & 0xfff_ffff;
            d = ((d << s) | (d >> (28 - s))) & 0xfff_ffff;
            *k = permute((c << 28) | d, 56, &PC2);
        }
        keys
    }

    /// One DES encryption; `salt_mask` swaps E-box output bits i and i+24 (counted from the
    /// most significant of the 48) for each bit set at position 23-i, the crypt(3) salt.
    pub(super) fn encrypt(block: u64, keys: &[u64; 16], salt_mask: u64) -> u64 {
        let b = permute(block, 64, &IP);
        let (mut l, mut r) = (b >> 32, b & 0xffff_ffff);
        for k in keys {
            let mut e = permute(r, 32, &E);
            let swap = ((e >> 24) ^ e) & salt_mask;
            e ^= swap | (swap << 24);
            let x = e ^ k;
            let mut s_out = 0u64;
            for (i, sbox) in S.iter().enumerate() {
                let six = (x >> (42 - 6 * i)) & 0x3f;
                let row = ((six >> 4) & 0b10) | (six & 1);
                let col = (six >> 1) & 0xf;
                s_out = (s_out << 4) | u64::from(sbox[(row * 16 + col) as usize]);
            }
            let f = permute(s_out, 32, &P);
            (l, r) = (r, l ^ f);
        }
        permute((r << 32) | l, 64, &FP)
    }
}

fn crypt_char_value(c: u8) -> Option<u64> {
    CRYPT_ALPHABET.iter().position(|&a| a == c).map(|p| p as u64)
}

/// Traditional crypt(3): the first 8 password bytes (7 bits each) key 25 DES encryptions of
/// a zero block, perturbed by the 12-bit salt.
fn des_crypt(password: &[u8], salt: [u8; 2]) -> [u8; 13] {
    let key = (0..8).fold(0u64, |k, i| (k << 8) | u64::from(password.get(i).map_or(0, |&c| c << 1)));
    let keys = des::subkeys(key);
    let salt_value = crypt_char_value(salt[0]).unwrap_or(0) | (crypt_char_value(salt[1]).unwrap_or(0) << 6);
    // Salt bit i (least significant first) maps to bit 23-i of the 24-bit swap mask.
    let salt_mask = (0..12).fold(0u64, |m, i| m | (((salt_value >> i) & 1) << (23 - i)));
    let block = (0..25).fold(0u64, |b, _| des::encrypt(b, &keys, salt_mask));

    let mut out = [0u8; 13];
    out[..2].copy_from_slice(&salt);
    // 64 bits plus two zero bits, six at a time from the top.
    let v = u128::from(block) << 2;
    for (i, o) in out[2..].iter_mut().enumerate() {
        *o = CRYPT_ALPHABET[((v >> (60 - 6 * i)) & 0x3f) as usize];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines made by Apache's `htpasswd` (2.4), with their passwords.
    const VECTORS: &[(&str, &str, &str)] = &[
        ("mcp", "$apr1$prdYq/l1$rsfcJhDC3WzZpp/MUSQ/U1", "secret1"),
        ("bcryptuser", "$2y$05$i47LCKjqYJBrpSW89LXWiuT4NeCwls/sp.jTz012KhQ6bv8OSNRZe", "secret2"),
        ("shauser", "{SHA}QY7lFvHLCVxQ/y8Qp2GSiJwoHzo=", "secret3"),
        ("cryptuser", "7K6VaYgjIzfew", "secret4"),
        (
            "sha512user",
            "$6$9MVQYXnZv5EEOZSi$gdg/G/lxo4CWdzYB.hFlnkgfaMCqit7H0.OcCmCe0OJiIrVujGJ7x3k8xQJ9.UeOQXJyaMC4A/GWMEMr13MTG/",
            "secret5",
        ),
        ("u5", "$5$5yjb80GdJk0z6v4P$VKrKEXBMyDk0AlWOtTcXSoo7W3EJ18BJlwSLHMUVyQA", "secret6"),
        ("user", "$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00", "password"),
    ];

    #[test]
    fn apache_vectors_verify() {
        for (user, hash, pw) in VECTORS {
            assert!(verify(hash, pw.as_bytes()), "{user} should verify");
            assert!(Scheme::of(hash).is_some(), "{user} should parse");
        }
    }

    #[test]
    fn wrong_passwords_fail() {
        for (user, hash, pw) in VECTORS {
            for wrong in ["", "x", "Secret1", &format!("{pw}x"), &pw[..pw.len() - 1], "secret"] {
                // DES ignores everything after 8 bytes, so "secret4x" is no wrong password.
                if *user == "cryptuser" && wrong.len() > 8 && wrong.starts_with(pw) {
                    continue;
                }
                assert!(!verify(hash, wrong.as_bytes()), "{user} accepted {wrong:?}");
            }
            let mut with_nul = pw.as_bytes().to_vec();
            with_nul.push(0);
            assert!(!verify(hash, &with_nul), "{user} accepted a NUL byte");
        }
    }

    #[test]
    fn schemes_are_identified() {
        let kinds: Vec<_> = VECTORS.iter().map(|(_, h, _)| Scheme::of(h)).collect();
        use Scheme::*;
        assert_eq!(
            kinds,
            [Some(Apr1), Some(Bcrypt), Some(Sha1), Some(DesCrypt), Some(Sha512Crypt), Some(Sha256Crypt), Some(Apr1)]
        );
        assert!(Bcrypt.is_expensive() && !Apr1.is_expensive() && !DesCrypt.is_expensive());
    }

    #[test]
    fn plaintext_and_unknown_formats_are_refused() {
        for hash in [
            "secret",
            "password",
            "",
            "$y$j9T$abc$def",
            "$2x$05$i47LCKjqYJBrpSW89LXWiuT4NeCwls/sp.jTz012KhQ6bv8OSNRZe",
            "$3$abc",
            "{SSHA}abc",
            "$apr1$",
        ] {
            assert!(Scheme::of(hash).is_none(), "{hash:?} accepted");
            assert!(!verify(hash, hash.as_bytes()), "{hash:?} verified as plaintext");
        }
    }

    #[test]
    fn des_matches_libcrypt() {
        // From perl's crypt() on glibc/libxcrypt.
        for (pw, hash) in [
            ("secret4", "7K6VaYgjIzfew"),
            ("", "abmF1QH4PEr.E"),
            ("password", "./xZjzHv5vzVE"),
            ("averylongpassword", "zZTOPEAnceju."),
            ("a", "9.SShbUU5B7jM"),
            ("12345678", "aaNN3X.PL2piw"),
            ("123456789", "aaNN3X.PL2piw"),
        ] {
            assert!(verify(hash, pw.as_bytes()), "{pw:?}");
        }
        assert!(verify("QxBHPssW.OtSo", b"\xe9t\xe9"));
    }

    #[test]
    fn des_block_cipher_matches_fips_example() {
        let keys = des::subkeys(0x1334_5779_9BBC_DFF1);
        assert_eq!(des::encrypt(0x0123_4567_89AB_CDEF, &keys, 0), 0x85E8_1354_0F0A_B405);
    }

    #[test]
    fn md5_crypt_dollar_one_matches_libcrypt() {
        assert!(verify("$1$abc$OGyl6dDvZCDiGmIVbeuCq/", b"x"));
        assert!(!verify("$1$abc$OGyl6dDvZCDiGmIVbeuCq/", b"y"));
        // Same salt and digest under the other magic must not match.
        assert!(!verify("$apr1$abc$OGyl6dDvZCDiGmIVbeuCq/", b"x"));
    }

    #[test]
    fn sha_crypt_rounds_rules() {
        // libxcrypt refuses out-of-range rounds instead of clamping them.
        for bad in [
            "$5$rounds=999$salt$VKrKEXBMyDk0AlWOtTcXSoo7W3EJ18BJlwSLHMUVyQA",
            "$5$rounds=01000$salt$VKrKEXBMyDk0AlWOtTcXSoo7W3EJ18BJlwSLHMUVyQA",
            "$5$rounds=$salt$VKrKEXBMyDk0AlWOtTcXSoo7W3EJ18BJlwSLHMUVyQA",
            "$5$rounds=1000000000$salt$VKrKEXBMyDk0AlWOtTcXSoo7W3EJ18BJlwSLHMUVyQA",
            "$5$salt_that_is_too_long$VKrKEXBMyDk0AlWOtTcXSoo7W3EJ18BJlwSLHMUVyQA",
        ] {
            assert!(Scheme::of(bad).is_none(), "{bad}");
        }
        // Made with `htpasswd -nb -2 -r 1000 u pw` style rounds (computed by libxcrypt).
        let explicit = sha_crypt_string(
            b"$5$",
            Some(1000),
            b"abc",
            &sha_crypt::sha256_crypt_b64(b"pw", b"abc", &sha_crypt::Sha256Params::new(1000).unwrap()).unwrap(),
        );
        let explicit = String::from_utf8(explicit).unwrap();
        assert!(explicit.starts_with("$5$rounds=1000$abc$"));
        assert!(verify(&explicit, b"pw"));
        assert!(!verify(&explicit, b"pW"));
        // Dropping "rounds=1000$" changes the rounds used, so it must not match.
        assert!(!verify(&explicit.replace("rounds=1000$", ""), b"pw"));
    }

    #[test]
    fn sha_crypt_explicit_default_rounds_kept() {
        let b64 = sha_crypt::sha512_crypt_b64(b"pw", b"salt", &sha_crypt::Sha512Params::new(5000).unwrap()).unwrap();
        let implicit = format!("$6$salt${b64}");
        let explicit = format!("$6$rounds=5000$salt${b64}");
        assert!(verify(&implicit, b"pw"));
        assert!(verify(&explicit, b"pw"));
    }

    #[test]
    fn truncated_hashes_never_verify() {
        for (_, hash, pw) in VECTORS {
            for end in 0..hash.len() {
                let cut = &hash[..end];
                // A 13-byte prefix of a longer hash can look like DES; it still must fail.
                assert!(!verify(cut, pw.as_bytes()), "{cut:?}");
            }
        }
    }

    #[test]
    fn hash_bcrypt_round_trips_as_2y() {
        let h = hash_bcrypt(b"hunter2", 4);
        assert!(h.starts_with("$2y$04$"), "{h}");
        assert_eq!(h.len(), 60);
        assert!(verify(&h, b"hunter2"));
        assert!(!verify(&h, b"hunter3"));
        // Out-of-range costs are clamped, not a panic.
        assert!(hash_bcrypt(b"x", 0).starts_with("$2y$04$"));
    }

    #[test]
    fn hash_apr1_round_trips() {
        let h = hash_apr1(b"s3cret");
        assert!(h.starts_with("$apr1$"));
        assert_eq!(h.len(), 6 + 8 + 1 + 22);
        assert!(verify(&h, b"s3cret"));
        assert!(!verify(&h, b"s3cre"));
        assert_ne!(h, hash_apr1(b"s3cret"), "salt must be random");
        // Empty and long passwords go through the odd length loops in md5_crypt.
        for pw in [&b""[..], &[b'z'; 100][..], "é€".as_bytes()] {
            assert!(verify(&hash_apr1(pw), pw));
        }
    }

    /// xorshift64*, so the fuzz run is reproducible without extra crates.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Only hashes whose parsed work factor is small get the full verification, so that a
    /// mutation into "$2y$31$" or "rounds=99999999" cannot stall the test.
    fn verify_if_cheap(hash: &str, pw: &[u8]) {
        let cheap = match parse_hash(hash) {
            Some(Parsed::Bcrypt { cost, .. }) => cost <= 5,
            Some(Parsed::Sha256 { rounds, .. }) | Some(Parsed::Sha512 { rounds, .. }) => {
                rounds.unwrap_or(sha_crypt::ROUNDS_DEFAULT) <= 5000
            }
            _ => true,
        };
        if cheap {
            let _ = verify(hash, pw);
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let pieces: &[&str] = &[
            "$",
            "$apr1$",
            "$1$",
            "$2y$",
            "$2a$",
            "$2b$",
            "$5$",
            "$6$",
            "{SHA}",
            "rounds=",
            "rounds=1000$",
            "05$",
            "é",
            "€",
            "\0",
            ":",
            "=",
            "/",
            ".",
            "a",
            "Z",
            "9",
            "🦀",
            "\u{feff}",
            "\n",
        ];
        let mut cheap_verifies = 0;
        for i in 0..20_000 {
            let s: String = if i % 2 == 0 {
                (0..rng.below(90)).map(|_| pieces[rng.below(pieces.len())]).collect()
            } else {
                let bytes: Vec<u8> = (0..rng.below(80)).map(|_| rng.next() as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            };
            let _ = Scheme::of(&s);
            if parse_hash(&s).is_none() {
                assert!(!verify(&s, b"pw"));
            } else if cheap_verifies < 200 {
                cheap_verifies += 1;
                verify_if_cheap(&s, b"pw");
            }
        }
        // Single-character mutations of real hashes reach deep into each parser.
        let replacements = ['$', '.', 'é', '0', '9', 'z', '\0', ':', '{'];
        for (_, hash, pw) in VECTORS {
            let chars: Vec<char> = hash.chars().collect();
            for pos in 0..chars.len() {
                for (k, r) in replacements.iter().enumerate() {
                    let mut m = chars.clone();
                    m[pos] = *r;
                    let m: String = m.into_iter().collect();
                    let _ = Scheme::of(&m);
                    // Full verification for a sample; parsing alone for the rest.
                    if (pos + k) % 31 == 0 {
                        verify_if_cheap(&m, pw.as_bytes());
                    }
                    let mut del = chars.clone();
                    del.remove(pos);
                    let del: String = del.into_iter().collect();
                    let _ = Scheme::of(&del);
                }
            }
        }
    }

    #[test]
    fn parse_accepts_apache_files() {
        let text = format!(
            "\u{feff}# made by htpasswd\n\n{}\n  spaced:{}  \r\nextra:{}:ignored comment field\n",
            VECTORS.iter().map(|(u, h, _)| format!("{u}:{h}")).collect::<Vec<_>>().join("\n"),
            VECTORS[0].1,
            VECTORS[2].1,
        );
        let f = PasswordFile::parse(&text).expect("valid file");
        assert_eq!(f.len(), VECTORS.len() + 2);
        assert!(!f.is_empty());
        for (u, h, _) in VECTORS {
            assert_eq!(f.lookup(u), Some(*h));
        }
        assert_eq!(f.lookup("spaced"), Some(VECTORS[0].1));
        assert_eq!(f.lookup("extra"), Some(VECTORS[2].1));
        assert_eq!(f.lookup("nobody"), None);
        assert_eq!(f.lookup("# made by htpasswd"), None);
        assert_eq!(f.iter().next().map(|(u, _)| u), Some("mcp"));
    }

    #[test]
    fn parse_reports_every_problem_with_line_numbers() {
        let text = "ok:{SHA}QY7lFvHLCVxQ/y8Qp2GSiJwoHzo=\n\
                    plain:secret\n\
                    # comment\n\
                    nocolon\n\
                    ok:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\n\
                    :$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\n\
                    cut:$2y$05$i47LCKjqYJBrpSW89LXWiuT4NeCwls/sp.jTz012KhQ6bv8OSN\n";
        let problems = PasswordFile::parse(text).unwrap_err();
        assert_eq!(problems.len(), 5, "{problems:#?}");
        assert!(problems[0].starts_with("line 2: user \"plain\""), "{}", problems[0]);
        assert!(problems[0].contains("plaintext"));
        assert!(!problems[0].contains("secret"), "hash leaked: {}", problems[0]);
        assert!(problems[1].starts_with("line 4:"));
        assert!(problems[2].starts_with("line 5: user \"ok\" is listed again (first on line 1)"));
        assert!(problems[3].starts_with("line 6: empty user"));
        assert!(problems[4].starts_with("line 7: user \"cut\""));
        assert!(problems[4].contains("bcrypt"));
    }

    #[test]
    fn parse_empty_text_is_an_empty_file() {
        let f = PasswordFile::parse("\n# nothing\n").unwrap();
        assert_eq!(f.len(), 0);
        assert!(f.is_empty());
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "auth-htpasswd-{name}-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn set_user_creates_updates_and_keeps_other_lines() {
        let dir = scratch_dir("set");
        let path = dir.join("users");

        let err = set_user(&path, "alice", b"pw1", false).unwrap_err();
        assert!(format!("{err:#}").contains("does not exist"), "{err:#}");

        assert!(!set_user(&path, "alice", b"pw1", true).unwrap());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);

        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str("# keep me\r\nbob:{SHA}QY7lFvHLCVxQ/y8Qp2GSiJwoHzo=\r\nalice:dup\n\nweird line");
        fs::write(&path, &text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();

        assert!(set_user(&path, "alice", b"pw2", false).unwrap());
        assert!(!set_user(&path, "carol", b"pw3", false).unwrap());
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert!(lines[0].starts_with("alice:$2y$10$"), "{text}");
        assert_eq!(lines[1], "# keep me\r");
        assert_eq!(lines[2], "bob:{SHA}QY7lFvHLCVxQ/y8Qp2GSiJwoHzo=\r");
        assert_eq!(lines[3], "", "duplicate alice line is dropped");
        assert_eq!(lines[4], "weird line");
        assert!(lines[5].starts_with("carol:$2y$10$"));
        assert_eq!(lines.len(), 7, "{text:?}");
        // Existing file's mode is kept.
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let file = PasswordFile::parse(&text.replace("weird line", "")).unwrap();
        assert!(verify(file.lookup("alice").unwrap(), b"pw2"));
        assert!(!verify(file.lookup("alice").unwrap(), b"pw1"));
        assert!(verify(file.lookup("carol").unwrap(), b"pw3"));
        assert!(verify(file.lookup("bob").unwrap(), b"secret3"));

        // `create` starts afresh, like htpasswd -c.
        assert!(!set_user(&path, "dave", b"pw4", true).unwrap());
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.starts_with("dave:"));

        // No temp files are left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn set_user_hash_writes_given_hashes_only_if_known() {
        let dir = scratch_dir("hash");
        let path = dir.join("users");
        let err = set_user_hash(&path, "m", &hash_apr1(b"pw"), false).unwrap_err();
        assert!(err.to_string().contains("create it with -c"), "{err}");
        assert!(!set_user_hash(&path, "m", &hash_apr1(b"pw"), true).unwrap());
        assert!(set_user_hash(&path, "m", &hash_apr1(b"pw2"), false).unwrap());
        for bad in ["plaintext", "", "$apr1$x$y\nevil:{SHA}x", "{SHA}QY7lFvHLCVxQ/y8Qp2GSiJwoHzo=:x"] {
            assert!(set_user_hash(&path, "m", bad, false).is_err(), "{bad:?}");
        }
        let f = PasswordFile::parse(&fs::read_to_string(&path).unwrap()).unwrap();
        assert!(verify(f.lookup("m").unwrap(), b"pw2"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn set_user_writes_through_symlinks() {
        let dir = scratch_dir("link");
        let real = dir.join("real");
        let link = dir.join("link");
        set_user(&real, "a", b"pw", true).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        set_user(&link, "b", b"pw", false).unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        let f = PasswordFile::parse(&fs::read_to_string(&real).unwrap()).unwrap();
        assert_eq!(f.len(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn set_user_refuses_bad_names_and_passwords() {
        let dir = scratch_dir("bad");
        let path = dir.join("users");
        for user in ["", "a:b", "a\nb", "a\tb", "tab\u{7f}", " lead", "trail ", "#x"] {
            let err = set_user(&path, user, b"pw", true).unwrap_err();
            assert!(!err.to_string().is_empty());
        }
        assert!(set_user(&path, &"x".repeat(256), b"pw", true).is_err());
        assert!(set_user(&path, "ok", b"p\0w", true).is_err());
        let long = set_user(&path, "ok", &[b'x'; 73], true).unwrap_err();
        assert!(long.to_string().contains("72"), "{long}");
        assert!(!path.exists(), "nothing written on refusal");
        // Non-ASCII names are fine.
        set_user(&path, "jürgen", &[b'x'; 72], true).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn apache_htpasswd_accepts_our_files() {
        let tool = Path::new("/usr/bin/htpasswd");
        assert!(tool.exists(), "/usr/bin/htpasswd is not installed: apt-get install apache2-utils (or ./test.sh)");
        let dir = scratch_dir("apache");
        let path = dir.join("users");
        set_user(&path, "webdav", b"s3cr3t pass", true).unwrap();
        set_user(&path, "other", b"x", false).unwrap();
        // hash_apr1 output, as htpasswd -m would write it.
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str(&format!("md5user:{}\n", hash_apr1(b"md5pass")));
        fs::write(&path, text).unwrap();

        let check = |user: &str, pw: &str| {
            std::process::Command::new(tool).arg("-vb").arg(&path).arg(user).arg(pw).output().unwrap().status.success()
        };
        assert!(check("webdav", "s3cr3t pass"));
        assert!(check("other", "x"));
        assert!(check("md5user", "md5pass"));
        assert!(!check("webdav", "wrong"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
