//! The bridge between dav-server's `DavFileSystem` traits and our `Store`: every call runs on
//! the bounded blocking pool, uploads are buffered in small batches, dead properties are
//! kept in sidecar files.

use std::fs::File;
use std::io::SeekFrom;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use dav_server::davpath::DavPath;
use dav_server::fs::{
    DavDirEntry, DavFile, DavFileSystem, DavMetaData, DavProp, FsError, FsFuture, FsResult, FsStream, OpenOptions,
    ReadDirMeta,
};
use futures_util::FutureExt;
use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::store::{Meta, RelPath, Store, Upload};

/// Bytes all uploads together may gather in memory before a trip to the blocking pool. Each
/// trip costs a thread hand-off (tens of µs), so a lone 64 KiB PUT is best written at once,
/// together with its commit; a thousand slow uploads must each hold little. An upload's share,
/// between the two bounds below, follows the number of uploads in progress at each frame.
const WRITE_BUDGET: usize = 4 << 20;
const MIN_WRITE_BATCH: usize = 8 << 10;
const MAX_WRITE_BATCH: usize = 256 << 10;

/// The batch of an upload while `open` uploads (itself included) are in progress.
fn write_batch(open: usize, expected: Option<u64>) -> usize {
    let share = (WRITE_BUDGET / open.max(1)).clamp(MIN_WRITE_BATCH, MAX_WRITE_BATCH);
    // A body known to be smaller needs no more; one extra byte keeps it below the threshold,
    // so the whole body waits for the commit trip.
    expected.map_or(share, |len| share.min(len as usize + 1))
}
/// Dead properties of one resource may not exceed this in total.
pub(super) const MAX_PROPS_BYTES: usize = 64 << 10;

#[derive(Clone)]
pub struct DavStore {
    store: Arc<Store>,
}

impl DavStore {
    pub fn new(store: Arc<Store>) -> Self {
        DavStore { store }
    }
}

/// Runs file-system work on tokio's blocking pool, whose size the runtime caps. Lookups
/// (stat, opening a directory, free space: answered from the kernel's caches) run inline, as
/// nginx runs them: a trip to the pool and back costs more than they do (measured: ~15 futex
/// calls per PUT with three trips). Whatever creates, writes, syncs, renames, removes or
/// reads file contents goes through here, except GET reads the page cache answers at once
/// (`read_cached`).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> FsResult<T> + Send + 'static) -> FsResult<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or(Err(FsError::GeneralFailure))
}

fn rel(path: &DavPath) -> FsResult<RelPath> {
    RelPath::parse(path.as_rel_ospath().as_os_str().as_encoded_bytes())
}

/// The directory and hidden name of a path `set_aside` returned (only such a path has a
/// reserved last segment the store accepts).
fn split_aside(aside: &DavPath) -> FsResult<(RelPath, std::ffi::OsString)> {
    let bytes = aside.as_rel_ospath().as_os_str().as_encoded_bytes();
    let (parent, name) = match bytes.iter().rposition(|&b| b == b'/') {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (&b""[..], bytes),
    };
    let name = std::str::from_utf8(name).map_err(|_| FsError::Forbidden)?;
    Ok((RelPath::parse(parent)?, std::ffi::OsString::from(name)))
}

#[derive(Debug, Clone)]
struct MetaData(Meta);

impl DavMetaData for MetaData {
    fn len(&self) -> u64 {
        self.0.len
    }
    fn modified(&self) -> FsResult<SystemTime> {
        Ok(self.0.modified)
    }
    fn is_dir(&self) -> bool {
        self.0.is_dir
    }
    fn etag(&self) -> Option<String> {
        // Each PUT lands as a new inode (temp file + rename), so the inode makes the tag change
        // even when two versions share a size and a timestamp.
        let t = self.0.modified.duration_since(SystemTime::UNIX_EPOCH).ok()?;
        Some(format!("{:x}-{:x}-{:x}", self.0.ino, self.0.len, t.as_nanos()))
    }
}

struct DirEntry {
    name: Vec<u8>,
    meta: Meta,
}

impl DavDirEntry for DirEntry {
    fn name(&self) -> Vec<u8> {
        self.name.clone()
    }
    fn metadata(&'_ self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let meta: Box<dyn DavMetaData> = Box::new(MetaData(self.meta.clone()));
        async move { Ok(meta) }.boxed()
    }
}

/// One stored dead property; `xml` is the property element exactly as the client sent it.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredProp {
    name: String,
    prefix: Option<String>,
    namespace: Option<String>,
    pub(super) xml: Option<String>,
}

impl From<&DavProp> for StoredProp {
    fn from(prop: &DavProp) -> StoredProp {
        StoredProp {
            name: prop.name.clone(),
            prefix: prop.prefix.clone(),
            namespace: prop.namespace.clone(),
            xml: prop.xml.as_ref().map(|x| String::from_utf8_lossy(x).into_owned()),
        }
    }
}

/// A PROPPATCH applied to the properties held: the new set encoded (empty when none is left)
/// with a 200 per property, or, past `MAX_PROPS_BYTES`, nothing to store and a 507 for every
/// property (PROPPATCH is all or nothing).
pub(super) enum Patched {
    Stored { encoded: Vec<u8>, result: Vec<(StatusCode, DavProp)> },
    TooLarge(Vec<(StatusCode, DavProp)>),
}

pub(super) fn apply_patch(mut props: Vec<StoredProp>, patch: Vec<(bool, DavProp)>) -> FsResult<Patched> {
    let mut result = Vec::with_capacity(patch.len());
    for (set, prop) in &patch {
        props.retain(|p| !same_prop(p, prop));
        if *set {
            props.push(StoredProp::from(prop));
        }
        result.push((StatusCode::OK, DavProp { xml: None, ..prop.clone() }));
    }
    let encoded =
        if props.is_empty() { Vec::new() } else { serde_json::to_vec(&props).map_err(|_| FsError::GeneralFailure)? };
    if encoded.len() > MAX_PROPS_BYTES {
        let refused =
            patch.into_iter().map(|(_, p)| (StatusCode::INSUFFICIENT_STORAGE, DavProp { xml: None, ..p })).collect();
        return Ok(Patched::TooLarge(refused));
    }
    Ok(Patched::Stored { encoded, result })
}

pub(super) fn load_props(raw: &[u8]) -> Vec<StoredProp> {
    if raw.is_empty() {
        return Vec::new();
    }
    serde_json::from_slice(raw).unwrap_or_else(|err| {
        tracing::warn!(%err, "unreadable dead-property sidecar; treating it as empty");
        Vec::new()
    })
}

pub(super) fn to_dav(p: &StoredProp, with_content: bool) -> DavProp {
    DavProp {
        name: p.name.clone(),
        prefix: p.prefix.clone(),
        namespace: p.namespace.clone(),
        xml: if with_content { p.xml.as_ref().map(|x| x.clone().into_bytes()) } else { None },
    }
}

pub(super) fn same_prop(p: &StoredProp, q: &DavProp) -> bool {
    p.name == q.name && p.namespace == q.namespace
}

impl DavFileSystem for DavStore {
    fn open<'a>(&'a self, path: &'a DavPath, options: OpenOptions) -> FsFuture<'a, Box<dyn DavFile>> {
        async move {
            let rel = rel(path)?;
            let store = Arc::clone(&self.store);
            if options.write || options.append {
                let (create, create_new, size) = (options.create, options.create_new, options.size);
                // Only whole-file PUTs: a partial write would expose a mix of two versions.
                if options.append {
                    return Err(FsError::NotImplemented);
                }
                if !options.truncate {
                    // LOCK on an unmapped URL creates an empty resource (RFC 4918 §7.3); partial
                    // PUTs, the other non-truncating writer, are refused before the engine.
                    let (file, meta) = blocking(move || {
                        let mut empty = store.begin_upload(&rel, Some(0), create || create_new, create_new)?;
                        empty.commit()?;
                        store.open_read(&rel)
                    })
                    .await?;
                    return Ok(Box::new(ReadFile { file: Arc::new(file), meta, pos: 0 }) as Box<dyn DavFile>);
                }
                // Lookups only; the temp file comes with the first batch (`Upload::write`).
                let upload = store.begin_upload(&rel, size, create || create_new, create_new)?;
                let file = UploadFile { upload: Some(upload), buf: BytesMut::new(), store, expected: size };
                Ok(Box::new(file) as Box<dyn DavFile>)
            } else {
                let (file, meta) = blocking(move || store.open_read(&rel)).await?;
                Ok(Box::new(ReadFile { file: Arc::new(file), meta, pos: 0 }) as Box<dyn DavFile>)
            }
        }
        .boxed()
    }

    fn read_dir<'a>(&'a self, path: &'a DavPath, _meta: ReadDirMeta) -> FsFuture<'a, FsStream<Box<dyn DavDirEntry>>> {
        async move {
            let rel = rel(path)?;
            let store = Arc::clone(&self.store);
            let entries = blocking(move || store.read_dir(&rel)).await?;
            let entries =
                entries.into_iter().map(|(name, meta)| Ok(Box::new(DirEntry { name, meta }) as Box<dyn DavDirEntry>));
            Ok(Box::pin(futures_util::stream::iter(entries)) as FsStream<Box<dyn DavDirEntry>>)
        }
        .boxed()
    }

    fn metadata<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, Box<dyn DavMetaData>> {
        async move {
            let rel = rel(path)?;
            // A lookup: inline (see `blocking`).
            let meta = self.store.metadata(&rel)?;
            Ok(Box::new(MetaData(meta)) as Box<dyn DavMetaData>)
        }
        .boxed()
    }

    fn create_dir<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        // MKCOL of the store root: it exists (405, as Apache answers), not a forbidden write.
        self.run(path, |store, rel| if rel.is_root() { Err(FsError::Exists) } else { store.create_dir(&rel) })
    }

    fn remove_dir<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        self.run(path, |store, rel| store.remove_dir(&rel))
    }

    fn remove_file<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        self.run(path, |store, rel| store.remove_file(&rel))
    }

    fn rename<'a>(&'a self, from: &'a DavPath, to: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let (from, to) = (rel(from)?, rel(to)?);
            let store = Arc::clone(&self.store);
            blocking(move || store.rename(&from, &to)).await
        }
        .boxed()
    }

    fn copy<'a>(&'a self, from: &'a DavPath, to: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let (from, to) = (rel(from)?, rel(to)?);
            let store = Arc::clone(&self.store);
            blocking(move || store.copy(&from, &to)).await
        }
        .boxed()
    }

    fn set_aside<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, DavPath> {
        async move {
            let rel = rel(path)?;
            let store = Arc::clone(&self.store);
            let aside = blocking(move || store.set_aside(&rel)).await?;
            let mut at = path.parent().as_url_string();
            at.push_str(&aside.to_string_lossy());
            DavPath::new(&at).map_err(|_| FsError::GeneralFailure)
        }
        .boxed()
    }

    fn restore_aside<'a>(&'a self, aside: &'a DavPath, path: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let (parent, name) = split_aside(aside)?;
            let to = rel(path)?;
            let store = Arc::clone(&self.store);
            blocking(move || store.restore_aside(&parent, &name, &to)).await
        }
        .boxed()
    }

    fn discard_aside<'a>(&'a self, aside: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let (parent, name) = split_aside(aside)?;
            let store = Arc::clone(&self.store);
            blocking(move || store.discard_aside(&parent, &name)).await
        }
        .boxed()
    }

    fn have_props<'a>(&'a self, _path: &'a DavPath) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        async { true }.boxed()
    }

    fn patch_props<'a>(
        &'a self,
        path: &'a DavPath,
        patch: Vec<(bool, DavProp)>,
    ) -> FsFuture<'a, Vec<(StatusCode, DavProp)>> {
        async move {
            let rel = rel(path)?;
            let store = Arc::clone(&self.store);
            blocking(move || {
                let props = load_props(&store.read_props(&rel)?);
                let (encoded, result) = match apply_patch(props, patch)? {
                    Patched::Stored { encoded, result } => (encoded, result),
                    Patched::TooLarge(result) => return Ok(result),
                };
                store.write_props(&rel, &encoded)?;
                Ok(result)
            })
            .await
        }
        .boxed()
    }

    fn get_props<'a>(&'a self, path: &'a DavPath, do_content: bool) -> FsFuture<'a, Vec<DavProp>> {
        async move {
            let rel = rel(path)?;
            if !self.store.has_props(&rel) {
                return Ok(Vec::new());
            }
            let store = Arc::clone(&self.store);
            let raw = blocking(move || store.read_props(&rel)).await?;
            Ok(load_props(&raw).iter().map(|p| to_dav(p, do_content)).collect())
        }
        .boxed()
    }

    fn get_prop<'a>(&'a self, path: &'a DavPath, prop: DavProp) -> FsFuture<'a, Vec<u8>> {
        async move {
            let rel = rel(path)?;
            if !self.store.has_props(&rel) {
                return Err(FsError::NotFound);
            }
            let store = Arc::clone(&self.store);
            let raw = blocking(move || store.read_props(&rel)).await?;
            load_props(&raw)
                .into_iter()
                .find(|p| same_prop(p, &prop))
                .and_then(|p| p.xml)
                .map(String::into_bytes)
                .ok_or(FsError::NotFound)
        }
        .boxed()
    }

    fn get_quota(&'_ self) -> FsFuture<'_, (u64, Option<u64>)> {
        let used = self.store.used_bytes();
        let total = self.store.quota();
        async move { Ok((used, total)) }.boxed()
    }
}

impl DavStore {
    fn run<'a>(
        &'a self,
        path: &'a DavPath,
        op: impl FnOnce(&Store, RelPath) -> FsResult<()> + Send + 'static,
    ) -> FsFuture<'a, ()> {
        async move {
            let rel = rel(path)?;
            let store = Arc::clone(&self.store);
            blocking(move || op(&store, rel)).await
        }
        .boxed()
    }
}

#[derive(Debug)]
struct ReadFile {
    file: Arc<File>,
    meta: Meta,
    pos: u64,
}

impl DavFile for ReadFile {
    fn metadata(&'_ mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let meta: Box<dyn DavMetaData> = Box::new(MetaData(self.meta.clone()));
        async move { Ok(meta) }.boxed()
    }

    fn write_buf(&'_ mut self, _buf: Box<dyn Buf + Send>) -> FsFuture<'_, ()> {
        async { Err(FsError::Forbidden) }.boxed()
    }

    fn write_bytes(&'_ mut self, _buf: Bytes) -> FsFuture<'_, ()> {
        async { Err(FsError::Forbidden) }.boxed()
    }

    fn read_bytes(&'_ mut self, count: usize) -> FsFuture<'_, Bytes> {
        async move {
            let count = count.min(1 << 20);
            let mut buf = vec![0; count];
            // A recording is usually read soon after it was written, from the page cache:
            // that part is read here (RWF_NOWAIT fails rather than wait for the disk), and
            // only what is not cached costs a trip to the blocking pool.
            let (got, done) = read_cached(&self.file, &mut buf, self.pos);
            let bytes = if done {
                buf.truncate(got);
                Bytes::from(buf)
            } else {
                let (file, pos) = (Arc::clone(&self.file), self.pos);
                blocking(move || {
                    let (got, failed) = fill(&mut buf, got, |b, at| rustix::io::pread(&*file, b, pos + at));
                    if failed.is_some() {
                        return Err(FsError::GeneralFailure);
                    }
                    buf.truncate(got);
                    Ok(Bytes::from(buf))
                })
                .await?
            };
            self.pos += bytes.len() as u64;
            Ok(bytes)
        }
        .boxed()
    }

    fn seek(&'_ mut self, pos: SeekFrom) -> FsFuture<'_, u64> {
        let new = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.meta.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let result = match new {
            Some(n) => {
                self.pos = n;
                Ok(n)
            }
            None => Err(FsError::GeneralFailure),
        };
        async move { result }.boxed()
    }

    fn flush(&'_ mut self) -> FsFuture<'_, ()> {
        async { Ok(()) }.boxed()
    }
}

/// Reads what the page cache holds of `buf.len()` bytes at `pos`: the bytes read, and whether
/// that is all there is to read (the buffer is full or the file ended).
fn read_cached(file: &File, buf: &mut [u8], pos: u64) -> (usize, bool) {
    let nowait = rustix::io::ReadWriteFlags::NOWAIT;
    // AGAIN: not cached; OPNOTSUPP and others: the pool's plain pread will tell.
    let (got, stopped) =
        fill(buf, 0, |b, at| rustix::io::preadv2(file, &mut [std::io::IoSliceMut::new(b)], pos + at, nowait));
    (got, stopped.is_none())
}

/// Fills `buf` from byte `got` on with `read(rest, offset into the buffer)` until it is full
/// or the file ends: the bytes in it then, and the error that stopped it short.
fn fill(
    buf: &mut [u8],
    mut got: usize,
    mut read: impl FnMut(&mut [u8], u64) -> rustix::io::Result<usize>,
) -> (usize, Option<rustix::io::Errno>) {
    while got < buf.len() {
        match read(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(err) => return (got, Some(err)),
        }
    }
    (got, None)
}

struct UploadFile {
    /// Taken out while a batch is being written on the blocking pool.
    upload: Option<Upload>,
    buf: BytesMut,
    store: Arc<Store>,
    /// The Content-Length, if the client sent one.
    expected: Option<u64>,
}

impl std::fmt::Debug for UploadFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadFile").field("upload", &self.upload).finish()
    }
}

impl UploadFile {
    async fn write_out(&mut self, data: Bytes) -> FsResult<()> {
        let mut upload = self.upload.take().ok_or(FsError::GeneralFailure)?;
        let (upload, result) = tokio::task::spawn_blocking(move || {
            let r = upload.write(&data);
            (upload, r)
        })
        .await
        .map_err(|_| FsError::GeneralFailure)?;
        self.upload = Some(upload);
        result
    }

    async fn push(&mut self, data: Bytes) -> FsResult<()> {
        let batch = write_batch(self.store.open_uploads(), self.expected);
        if self.buf.is_empty() && data.len() >= batch {
            // A large frame goes as it is, without a copy.
            return self.write_out(data).await;
        }
        self.buf.extend_from_slice(&data);
        if self.buf.len() >= batch {
            // Taken whole (not `split`), so the allocation goes with the batch instead of
            // lingering as spare capacity in an idle upload.
            let batch = std::mem::take(&mut self.buf).freeze();
            self.write_out(batch).await?;
        }
        Ok(())
    }
}

impl DavFile for UploadFile {
    fn metadata(&'_ mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let meta = self.upload.as_ref().map(|u| Box::new(MetaData(u.meta())) as Box<dyn DavMetaData>);
        async move { meta.ok_or(FsError::GeneralFailure) }.boxed()
    }

    fn write_buf(&'_ mut self, mut buf: Box<dyn Buf + Send>) -> FsFuture<'_, ()> {
        let data = buf.copy_to_bytes(buf.remaining());
        self.write_bytes(data)
    }

    fn write_bytes(&'_ mut self, buf: Bytes) -> FsFuture<'_, ()> {
        self.push(buf).boxed()
    }

    fn read_bytes(&'_ mut self, _count: usize) -> FsFuture<'_, Bytes> {
        async { Err(FsError::Forbidden) }.boxed()
    }

    fn seek(&'_ mut self, _pos: SeekFrom) -> FsFuture<'_, u64> {
        async { Err(FsError::NotImplemented) }.boxed()
    }

    /// dav-server calls this once, after the whole body arrived without error: the commit point.
    fn flush(&'_ mut self) -> FsFuture<'_, ()> {
        async move {
            // The last batch and the commit share one trip to the blocking pool.
            let tail = std::mem::take(&mut self.buf).freeze();
            let mut upload = self.upload.take().ok_or(FsError::GeneralFailure)?;
            let (upload, result) = tokio::task::spawn_blocking(move || {
                let r = if tail.is_empty() { Ok(()) } else { upload.write(&tail) };
                let r = r.and_then(|()| upload.commit().map(|_| ()));
                (upload, r)
            })
            .await
            .map_err(|_| FsError::GeneralFailure)?;
            self.upload = Some(upload);
            result
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_reads_return_the_files_bytes_and_stop_at_its_end() {
        let path = std::env::temp_dir().join(format!("eaio-davfs-cached-{}", std::process::id()));
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        let file = File::open(&path).expect("open");
        // Just written, so in the page cache: read whole where RWF_NOWAIT is supported.
        let mut buf = vec![0; 100_000];
        let (got, done) = read_cached(&file, &mut buf, 150_000);
        assert_eq!(&buf[..got], &data[150_000..150_000 + got]);
        if done {
            assert_eq!(got, buf.len(), "done means the buffer is full or the file ended");
        }
        let mut tail = vec![0; 100_000];
        let (got, done) = read_cached(&file, &mut tail, 250_000);
        assert_eq!(&tail[..got], &data[250_000..250_000 + got]);
        if done {
            assert_eq!(got, 50_000, "the file ends 50 000 bytes in");
        }
        std::fs::remove_file(&path).expect("remove");
    }
}
