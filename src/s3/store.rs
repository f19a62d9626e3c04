//! The recording store's promises kept on an S3 bucket (issue 22), the layer the webdav role
//! will serve from when `[webdav.s3]` replaces `root`: an upload becomes visible only whole
//! and only at its declared length (one PUT up to a part, multipart beyond, aborted on any
//! failure or a short body), a collection is listed one level deep, dead properties travel as
//! object metadata, a move is a copy then a delete. Keys live under `key_prefix`.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};

use super::client::{Head, Listed, S3Client, S3Error};

/// Parts of a multipart upload (S3's minimum, but for the last).
pub const PART: usize = 8 << 20;
/// The metadata key dead properties are kept under (the XML of the PROPPATCHes applied,
/// percent-encoded: metadata is ASCII headers).
pub const PROPS: &str = "dav-props";
/// Names the store keeps for itself begin so; listings leave them out, and the webdav role
/// refuses them in requests (its `RESERVED_PREFIX`).
pub const HIDDEN_PREFIX: &str = ".exec-allinone-";
/// Properties past what metadata holds (S3 allows 2 KB of it in all) go to a sidecar object
/// under this collection, and the metadata says so.
const SIDECARS: &str = ".exec-allinone-props";
/// The metadata value naming a sidecar: `@sidecar:<version>` (each write makes a new sidecar
/// object, so no object is ever replaced or deleted while the metadata still names it).
const IN_SIDECAR: &str = "@sidecar";
const MAX_INLINE: usize = 1536;

#[derive(Clone)]
pub struct S3Store {
    client: S3Client,
    /// "recordings/" or "" (no leading '/').
    prefix: String,
}

/// One level of a collection.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub files: Vec<Listed>,
    /// Sub-collections, by name (without the trailing '/').
    pub collections: Vec<String>,
}

impl S3Store {
    pub fn new(client: S3Client, key_prefix: &str) -> S3Store {
        let prefix = key_prefix.trim_matches('/');
        let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        S3Store { client, prefix }
    }

    /// The object key of a store path ("a/b.opus").
    fn key(&self, path: &str) -> String {
        format!("{}{}", self.prefix, path.trim_start_matches('/'))
    }

    /// An upload to `path` of `len` bytes (None: as many as come); nothing is visible until
    /// `commit`.
    pub fn upload(&self, path: &str, len: Option<u64>) -> Upload {
        Upload { store: self.clone(), key: self.key(path), len, buf: BytesMut::new(), sent: 0, multipart: None }
    }

    pub async fn head(&self, path: &str) -> Result<Head, S3Error> {
        self.client.head(&self.key(path)).await
    }

    /// The object's bytes (or `range`, inclusive) as a response to stream from.
    /// With `if_match`, only that version of it (Precondition once it was replaced).
    pub async fn get(
        &self,
        path: &str,
        range: Option<(u64, u64)>,
        if_match: Option<&str>,
    ) -> Result<(Head, reqwest::Response), S3Error> {
        self.client.get(&self.key(path), range, if_match).await
    }

    /// One PUT of `len` bytes streamed from `body`: visible only if all of them came.
    pub async fn put_stream(&self, path: &str, len: u64, body: reqwest::Body) -> Result<String, S3Error> {
        self.client.put_stream(&self.key(path), len, body).await
    }

    /// The first key below the collection `path` (its key relative to the collection: "" for
    /// the marker), or None when nothing is there.
    pub async fn first_below(&self, path: &str) -> Result<Option<Listed>, S3Error> {
        let prefix = format!("{}{}/", self.prefix, path.trim_matches('/'));
        let page = self.client.list_max(&prefix, None, None, Some(1)).await?;
        Ok(page.objects.into_iter().next().map(|mut first| {
            first.key = first.key.strip_prefix(prefix.as_str()).unwrap_or_default().to_string();
            first
        }))
    }

    /// One key under the prefix, to see that the bucket answers and lets us in.
    pub async fn list_one(&self) -> Result<(), S3Error> {
        self.client.list_max(&self.prefix, Some("/"), None, Some(1)).await.map(drop)
    }

    /// Files of the root collection whose names begin with `start`, at most `max`.
    pub async fn list_starting(&self, start: &str, max: u32) -> Result<Vec<Listed>, S3Error> {
        let prefix = format!("{}{start}", self.prefix);
        let page = self.client.list_max(&prefix, Some("/"), None, Some(max)).await?;
        Ok(page
            .objects
            .into_iter()
            .filter_map(|mut o| {
                o.key = o.key.strip_prefix(self.prefix.as_str())?.to_string();
                (!o.key.starts_with(HIDDEN_PREFIX)).then_some(o)
            })
            .collect())
    }

    /// MKCOL: the empty marker object "dir/".
    pub async fn make_collection(&self, path: &str) -> Result<(), S3Error> {
        let marker = format!("{}/", self.key(path.trim_end_matches('/')));
        self.client.put(&marker, Bytes::new(), &BTreeMap::new()).await.map(drop)
    }

    /// Every path below the collection `path`, its marker ("dir/") included, sub-collections'
    /// members included (no delimiter), as store paths.
    pub async fn tree(&self, path: &str) -> Result<Vec<String>, S3Error> {
        let dir = path.trim_matches('/');
        let prefix = if dir.is_empty() { self.prefix.clone() } else { format!("{}{dir}/", self.prefix) };
        let mut paths = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.client.list(&prefix, None, after.as_deref()).await?;
            for object in page.objects {
                if let Some(rel) = object.key.strip_prefix(self.prefix.as_str()) {
                    paths.push(rel.to_string());
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(paths),
            }
        }
    }

    pub async fn delete(&self, path: &str) -> Result<(), S3Error> {
        // S3 answers 204 for a key that is not there: the store's callers want to know.
        let head = self.client.head(&self.key(path)).await?;
        self.client.delete(&self.key(path)).await?;
        // Then its sidecar: a failure now leaves an object nothing names, never a file whose
        // properties are gone.
        if let Some(sidecar) = self.sidecar_of(path, &head.metadata) {
            match self.client.delete(&sidecar).await {
                Ok(()) | Err(S3Error::NotFound(_)) => {}
                Err(e) => tracing::warn!(%sidecar, "the properties of a deleted file stay behind: {e}"),
            }
        }
        Ok(())
    }

    /// One level of the collection at `path` ("" for the root), every page of it.
    pub async fn list(&self, path: &str) -> Result<Listing, S3Error> {
        let dir = path.trim_matches('/');
        let prefix = if dir.is_empty() { self.prefix.clone() } else { format!("{}{dir}/", self.prefix) };
        let mut listing = Listing::default();
        let mut after: Option<String> = None;
        loop {
            let page = self.client.list(&prefix, Some("/"), after.as_deref()).await?;
            // A key not under the prefix (a misbehaving endpoint) is skipped, not trusted.
            for mut object in page.objects {
                let Some(name) = object.key.strip_prefix(prefix.as_str()).filter(|n| !n.is_empty()) else { continue };
                object.key = name.to_string();
                listing.files.push(object);
            }
            let collections = page
                .prefixes
                .iter()
                .filter_map(|p| Some(p.strip_prefix(prefix.as_str())?.trim_end_matches('/').to_string()));
            let hidden = |c: &String| c.is_empty() || c.starts_with(HIDDEN_PREFIX);
            listing.collections.extend(collections.filter(|c| !hidden(c)));
            listing.files.retain(|f| !f.key.starts_with(HIDDEN_PREFIX));
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(listing),
            }
        }
    }

    /// The sidecar object `metadata` names for `path`, if any.
    fn sidecar_of(&self, path: &str, metadata: &BTreeMap<String, String>) -> Option<String> {
        let value = metadata.get(PROPS)?.strip_prefix(IN_SIDECAR)?;
        let base = format!("{}{SIDECARS}/{}", self.prefix, path.trim_start_matches('/'));
        Some(match value.strip_prefix(':') {
            Some(version) => format!("{base}@{version}"),
            None => base,
        })
    }

    /// The dead properties kept with the object (None: none set). A sidecar the metadata names
    /// but the bucket does not hold is an error, not "no properties": a caller that took it
    /// for none would write the rest of them away.
    pub async fn props(&self, path: &str) -> Result<Option<String>, S3Error> {
        let metadata = self.head(path).await?.metadata;
        let Some(value) = metadata.get(PROPS) else { return Ok(None) };
        if let Some(sidecar) = self.sidecar_of(path, &metadata) {
            let body = match self.client.get(&sidecar, None, None).await {
                Ok((_, body)) => body,
                Err(S3Error::NotFound(_)) => {
                    tracing::error!(path, %sidecar, "the properties' sidecar is missing");
                    return Err(S3Error::Transient(format!("the properties' sidecar {sidecar} is missing")));
                }
                Err(e) => return Err(e),
            };
            let bytes = body.bytes().await.map_err(|e| S3Error::Transient(crate::telemetry::chain(&e)))?;
            return Ok(Some(String::from_utf8_lossy(&bytes).into_owned()));
        }
        Ok(Some(percent_encoding::percent_decode_str(value).decode_utf8_lossy().into_owned()))
    }

    /// Replaces the object's dead properties: a copy onto itself with new metadata, S3's one
    /// way to change metadata, atomic as any PUT. Past what metadata holds, the XML goes to
    /// a sidecar object first, then the metadata points at it.
    pub async fn set_props(&self, path: &str, xml: &str) -> Result<(), S3Error> {
        let key = self.key(path);
        let mut metadata = self.client.head(&key).await?.metadata;
        let old_sidecar = self.sidecar_of(path, &metadata);
        let encoded = percent_encoding::utf8_percent_encode(xml, percent_encoding::NON_ALPHANUMERIC).to_string();
        if encoded.len() <= MAX_INLINE {
            metadata.insert(PROPS.into(), encoded);
        } else {
            let version = sidecar_version();
            metadata.insert(PROPS.into(), format!("{IN_SIDECAR}:{version}"));
            let sidecar = self.sidecar_of(path, &metadata).expect("named just above");
            self.client.put(&sidecar, Bytes::copy_from_slice(xml.as_bytes()), &BTreeMap::new()).await?;
        }
        self.client.copy(&key, &key, Some(&metadata)).await?;
        if let Some(old) = old_sidecar {
            // No longer named by the metadata: left, it would only take space.
            match self.client.delete(&old).await {
                Ok(()) | Err(S3Error::NotFound(_)) => {}
                Err(e) => tracing::warn!(sidecar = %old, "an old properties sidecar stays behind: {e}"),
            }
        }
        Ok(())
    }

    /// COPY: the object and its properties (with their sidecar) at `to`.
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), S3Error> {
        let head = self.head(from).await?;
        // The copy keeps the metadata, so it names its sidecar by the same version.
        if let (Some(source), Some(dest)) = (self.sidecar_of(from, &head.metadata), self.sidecar_of(to, &head.metadata))
        {
            self.client.copy(&source, &dest, None).await?;
        }
        self.client.copy(&self.key(from), &self.key(to), None).await.map(drop)
    }

    /// MOVE: a copy, then the source's delete (S3 has no rename). A crash between the two
    /// leaves both, never neither.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), S3Error> {
        self.copy(from, to).await?;
        self.delete(from).await
    }
}

/// A sidecar version no other write makes: the time in ns and a counter of this process.
fn sidecar_version() -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{nanos:x}-{:x}-{n:x}", std::process::id())
}

/// An upload under way: bytes gather into parts; one PUT when the whole fits in a part,
/// multipart beyond. Dropped without `commit`, a multipart upload is aborted in the
/// background; nothing was ever visible.
pub struct Upload {
    store: S3Store,
    key: String,
    /// Declared length, if any.
    len: Option<u64>,
    buf: BytesMut,
    /// Bytes handed to `write` so far.
    sent: u64,
    /// The multipart upload's id and its parts' ETags.
    multipart: Option<(String, Vec<String>)>,
}

/// Why an upload did not become an object.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the body has {got} bytes, {declared:?} were declared")]
    Length { got: u64, declared: Option<u64> },
    #[error(transparent)]
    S3(#[from] S3Error),
}

impl Upload {
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), UploadError> {
        self.sent += bytes.len() as u64;
        if self.len.is_some_and(|len| self.sent > len) {
            return Err(UploadError::Length { got: self.sent, declared: self.len });
        }
        self.buf.extend_from_slice(bytes);
        // A part is sent once a byte beyond it came or more are declared: the last part of
        // a body that fits in one goes as a single PUT at `commit`.
        while self.buf.len() > PART || (self.buf.len() == PART && self.len.is_some_and(|len| self.sent < len)) {
            let part = self.buf.split_to(PART).freeze();
            self.send_part(part).await?;
        }
        Ok(())
    }

    async fn send_part(&mut self, part: Bytes) -> Result<(), UploadError> {
        if self.multipart.is_none() {
            let id = self.store.client.create_multipart(&self.key, &BTreeMap::new()).await?;
            self.multipart = Some((id, Vec::new()));
        }
        let (id, etags) = self.multipart.as_mut().expect("made above");
        let n = etags.len() as u32 + 1;
        let etag = self.store.client.upload_part(&self.key, id, n, part).await?;
        etags.push(etag);
        Ok(())
    }

    /// Makes the object visible, whole, if exactly `len` bytes came.
    pub async fn commit(mut self) -> Result<(), UploadError> {
        if self.len.is_some_and(|len| self.sent != len) {
            return Err(UploadError::Length { got: self.sent, declared: self.len });
        }
        let rest = std::mem::take(&mut self.buf).freeze();
        match self.multipart.take() {
            None => {
                self.store.client.put(&self.key, rest, &BTreeMap::new()).await?;
            }
            Some(mp) => {
                self.multipart = Some(mp);
                if !rest.is_empty() {
                    self.send_part(rest).await?;
                }
                let (id, etags) = self.multipart.take().expect("set above");
                if let Err(e) = self.store.client.complete_multipart(&self.key, &id, &etags).await {
                    let _ = self.store.client.abort_multipart(&self.key, &id).await;
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some((id, _)) = self.multipart.take() {
            let (client, key) = (self.store.client.clone(), self.key.clone());
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    if let Err(e) = client.abort_multipart(&key, &id).await {
                        tracing::warn!(%key, "cannot abort an unfinished multipart upload: {e}");
                    }
                });
            }
        }
    }
}
