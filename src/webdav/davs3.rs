//! The bridge between dav-server's `DavFileSystem` traits and an S3 bucket (`[webdav.s3]`):
//! files are objects, a collection is its members' common prefix (MKCOL leaves a "dir/"
//! marker), a PUT of known length is one streamed S3 PUT the engine makes visible only whole,
//! a PUT without a length goes in 8 MiB parts, reads stream the version that was looked up.

use std::io::SeekFrom;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::{Buf, Bytes};
use dav_server::davpath::DavPath;
use dav_server::fs::{
    DavDirEntry, DavFile, DavFileSystem, DavMetaData, DavProp, FsError, FsFuture, FsResult, FsStream, OpenOptions,
    ReadDirMeta,
};
use futures_util::FutureExt;
use http::StatusCode;
use tokio::sync::mpsc;

use crate::s3::client::{Head, S3Error};
use crate::s3::store::{S3Store, Upload, UploadError};

use super::davfs::{Patched, StoredProp, apply_patch, load_props, same_prop, to_dav};

/// Frames of an upload on their way to the engine: little is held per upload, and a slow
/// engine slows the client down rather than filling memory.
const STREAM_FRAMES: usize = 4;

#[derive(Clone)]
pub struct DavBucket {
    store: S3Store,
    aside_seq: std::sync::Arc<AtomicU64>,
}

impl DavBucket {
    pub fn new(store: S3Store) -> Self {
        DavBucket { store, aside_seq: Default::default() }
    }
}

/// What the client sees of an engine failure: its quota as 507, a missing key as 404,
/// anything else (unreachable, refused credentials, 5xx) as a 500 the log explains.
fn fs_error(path: &str, e: S3Error) -> FsError {
    match e {
        S3Error::NotFound(_) => FsError::NotFound,
        S3Error::Quota(_) => FsError::InsufficientStorage,
        other => {
            tracing::warn!(path, "object store: {other}");
            FsError::GeneralFailure
        }
    }
}

/// The store path ("a/b.opus", "" for the root) of a request path, already checked by the
/// role (UTF-8, no traversal).
fn rel(path: &DavPath) -> FsResult<String> {
    let bytes = path.as_rel_ospath().as_os_str().as_encoded_bytes();
    let text = std::str::from_utf8(bytes).map_err(|_| FsError::Forbidden)?;
    Ok(text.trim_matches('/').to_string())
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(parent, _)| parent)
}

#[derive(Debug, Clone)]
struct Meta {
    len: u64,
    modified: SystemTime,
    etag: Option<String>,
    is_dir: bool,
}

impl Meta {
    fn file(head: &Head) -> Meta {
        Meta {
            len: head.len,
            modified: head.last_modified.unwrap_or(SystemTime::UNIX_EPOCH),
            etag: Some(head.etag.clone()),
            is_dir: false,
        }
    }

    fn dir(modified: Option<SystemTime>) -> Meta {
        Meta { len: 0, modified: modified.unwrap_or(SystemTime::UNIX_EPOCH), etag: None, is_dir: true }
    }
}

impl DavMetaData for Meta {
    fn len(&self) -> u64 {
        self.len
    }
    fn modified(&self) -> FsResult<SystemTime> {
        Ok(self.modified)
    }
    fn is_dir(&self) -> bool {
        self.is_dir
    }
    fn etag(&self) -> Option<String> {
        // The engine's ETag changes with every PUT, even of the same bytes' length and second.
        self.etag.clone()
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
        let meta: Box<dyn DavMetaData> = Box::new(self.meta.clone());
        async move { Ok(meta) }.boxed()
    }
}

impl DavBucket {
    /// A file's head, or a collection's (its marker's time when it has one): a HEAD, then for
    /// a name that is no file one listing of its prefix, whose first key is the marker if
    /// there is one ("dir/" sorts before "dir/x").
    async fn lookup(&self, path: &str) -> FsResult<Meta> {
        if path.is_empty() {
            return Ok(Meta::dir(None));
        }
        match self.store.head(path).await {
            Ok(head) => return Ok(Meta::file(&head)),
            Err(S3Error::NotFound(_)) => {}
            Err(e) => return Err(fs_error(path, e)),
        }
        match self.store.first_below(path).await {
            Ok(Some(first)) => {
                let marker = first.key.is_empty();
                Ok(Meta::dir(if marker { first.last_modified } else { None }))
            }
            Ok(None) => Err(FsError::NotFound),
            Err(e) => Err(fs_error(path, e)),
        }
    }

    /// A parent collection must exist before anything is made in it (409 otherwise).
    async fn parent_exists(&self, path: &str) -> FsResult<()> {
        let parent = parent_of(path);
        if parent.is_empty() {
            return Ok(());
        }
        match self.lookup(parent).await {
            Ok(meta) if meta.is_dir => Ok(()),
            Ok(_) | Err(FsError::NotFound) => Err(FsError::NotFound),
            Err(e) => Err(e),
        }
    }

    /// Moves a file, or a collection with everything below it, member by member (S3 has no
    /// rename): each member is copied, then deleted, so a failure half way leaves both
    /// copies of a member, never neither.
    async fn move_tree(&self, from: &str, to: &str) -> FsResult<()> {
        if !self.lookup(from).await?.is_dir {
            return self.store.rename(from, to).await.map_err(|e| fs_error(from, e));
        }
        let members = self.store.tree(from).await.map_err(|e| fs_error(from, e))?;
        if members.is_empty() {
            self.store.make_collection(to).await.map_err(|e| fs_error(to, e))?;
        }
        for member in members {
            let below = &member[from.len()..];
            let dest = format!("{to}{below}");
            self.store.rename(&member, &dest).await.map_err(|e| fs_error(&member, e))?;
        }
        Ok(())
    }

    async fn delete_tree(&self, path: &str) -> FsResult<()> {
        if !self.lookup(path).await?.is_dir {
            return self.store.delete(path).await.map_err(|e| fs_error(path, e));
        }
        for member in self.store.tree(path).await.map_err(|e| fs_error(path, e))? {
            match self.store.delete(&member).await {
                Ok(()) | Err(S3Error::NotFound(_)) => {}
                Err(e) => return Err(fs_error(&member, e)),
            }
        }
        Ok(())
    }

    /// The key properties are kept on: the file, or the collection's marker (made when
    /// missing, for a collection that exists only through its members).
    async fn props_key(&self, path: &str) -> FsResult<String> {
        let meta = self.lookup(path).await?;
        if !meta.is_dir {
            return Ok(path.to_string());
        }
        let marker = format!("{path}/");
        if let Err(S3Error::NotFound(_)) = self.store.head(&marker).await {
            self.store.make_collection(path).await.map_err(|e| fs_error(path, e))?;
        }
        Ok(marker)
    }

    async fn load(&self, key: &str) -> FsResult<Vec<StoredProp>> {
        match self.store.props(key).await {
            Ok(Some(xml)) => Ok(load_props(xml.as_bytes())),
            Ok(None) | Err(S3Error::NotFound(_)) => Ok(Vec::new()),
            Err(e) => Err(fs_error(key, e)),
        }
    }
}

impl DavFileSystem for DavBucket {
    fn open<'a>(&'a self, path: &'a DavPath, options: OpenOptions) -> FsFuture<'a, Box<dyn DavFile>> {
        async move {
            let rel = rel(path)?;
            if !(options.write || options.append) {
                // The GET itself, not a HEAD first: its answer's head is the file's metadata,
                // and a whole-file read (exrp's) goes on from its body. A seek elsewhere first
                // (a Range request) drops it for a ranged GET of the same version.
                let (head, body) = self.store.get(&rel, None, None).await.map_err(|e| fs_error(&rel, e))?;
                let mut file = ReadObject::new(self.store.clone(), rel, head);
                file.body = Some(body);
                return Ok(Box::new(file) as Box<dyn DavFile>);
            }
            // Only whole-file PUTs: a partial write would expose a mix of two versions.
            if options.append || rel.is_empty() {
                return Err(FsError::NotImplemented);
            }
            self.parent_exists(&rel).await?;
            if options.create_new || !options.create {
                match self.store.head(&rel).await {
                    Ok(_) if options.create_new => return Err(FsError::Exists),
                    Err(S3Error::NotFound(_)) if !options.create => return Err(FsError::NotFound),
                    Ok(_) | Err(S3Error::NotFound(_)) => {}
                    Err(e) => return Err(fs_error(&rel, e)),
                }
            }
            if !options.truncate {
                // LOCK on an unmapped URL creates an empty resource (RFC 4918 §7.3).
                let mut empty = self.store.upload(&rel, Some(0));
                empty.write(&[]).await.map_err(|e| upload_error(&rel, e))?;
                empty.commit().await.map_err(|e| upload_error(&rel, e))?;
                let head = self.store.head(&rel).await.map_err(|e| fs_error(&rel, e))?;
                return Ok(Box::new(ReadObject::new(self.store.clone(), rel, head)) as Box<dyn DavFile>);
            }
            Ok(Box::new(UploadObject::start(self.store.clone(), rel, options.size)) as Box<dyn DavFile>)
        }
        .boxed()
    }

    fn read_dir<'a>(&'a self, path: &'a DavPath, _meta: ReadDirMeta) -> FsFuture<'a, FsStream<Box<dyn DavDirEntry>>> {
        async move {
            let rel = rel(path)?;
            let listing = self.store.list(&rel).await.map_err(|e| fs_error(&rel, e))?;
            let files = listing.files.into_iter().filter(|f| !f.key.ends_with('/')).map(|f| {
                let meta = Meta {
                    len: f.len,
                    modified: f.last_modified.unwrap_or(SystemTime::UNIX_EPOCH),
                    etag: Some(f.etag),
                    is_dir: false,
                };
                Ok(Box::new(DirEntry { name: f.key.into_bytes(), meta }) as Box<dyn DavDirEntry>)
            });
            let dirs = listing.collections.into_iter().map(|name| {
                Ok(Box::new(DirEntry { name: name.into_bytes(), meta: Meta::dir(None) }) as Box<dyn DavDirEntry>)
            });
            let entries: Vec<_> = dirs.chain(files).collect();
            Ok(Box::pin(futures_util::stream::iter(entries)) as FsStream<Box<dyn DavDirEntry>>)
        }
        .boxed()
    }

    fn metadata<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, Box<dyn DavMetaData>> {
        async move {
            let rel = rel(path)?;
            Ok(Box::new(self.lookup(&rel).await?) as Box<dyn DavMetaData>)
        }
        .boxed()
    }

    fn create_dir<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let rel = rel(path)?;
            if rel.is_empty() {
                return Err(FsError::Exists);
            }
            self.parent_exists(&rel).await?;
            match self.lookup(&rel).await {
                Ok(_) => return Err(FsError::Exists),
                Err(FsError::NotFound) => {}
                Err(e) => return Err(e),
            }
            self.store.make_collection(&rel).await.map_err(|e| fs_error(&rel, e))
        }
        .boxed()
    }

    fn remove_dir<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let rel = rel(path)?;
            // The engine removed the members first; what is left is the marker, if any.
            match self.store.delete(&format!("{rel}/")).await {
                Ok(()) | Err(S3Error::NotFound(_)) => Ok(()),
                Err(e) => Err(fs_error(&rel, e)),
            }
        }
        .boxed()
    }

    fn remove_file<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let rel = rel(path)?;
            self.store.delete(&rel).await.map_err(|e| fs_error(&rel, e))
        }
        .boxed()
    }

    fn rename<'a>(&'a self, from: &'a DavPath, to: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let (from, to) = (rel(from)?, rel(to)?);
            self.parent_exists(&to).await?;
            self.move_tree(&from, &to).await
        }
        .boxed()
    }

    fn copy<'a>(&'a self, from: &'a DavPath, to: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let (from, to) = (rel(from)?, rel(to)?);
            self.parent_exists(&to).await?;
            self.store.copy(&from, &to).await.map_err(|e| fs_error(&from, e))
        }
        .boxed()
    }

    /// A hidden name beside `path`; the move there is member by member (see `move_tree`).
    fn set_aside<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, DavPath> {
        async move {
            let rel = rel(path)?;
            let n = self.aside_seq.fetch_add(1, Ordering::Relaxed);
            let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let name = format!("{}aside-{nanos:x}-{n}", crate::s3::store::HIDDEN_PREFIX);
            let parent = parent_of(&rel);
            let aside = if parent.is_empty() { name.clone() } else { format!("{parent}/{name}") };
            self.move_tree(&rel, &aside).await?;
            let mut at = path.parent().as_url_string();
            at.push_str(&name);
            DavPath::new(&at).map_err(|_| FsError::GeneralFailure)
        }
        .boxed()
    }

    fn restore_aside<'a>(&'a self, aside: &'a DavPath, path: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let (aside, to) = (rel(aside)?, rel(path)?);
            self.move_tree(&aside, &to).await
        }
        .boxed()
    }

    fn discard_aside<'a>(&'a self, aside: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let aside = rel(aside)?;
            self.delete_tree(&aside).await
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
            let key = self.props_key(&rel).await?;
            let props = self.load(&key).await?;
            let (encoded, result) = match apply_patch(props, patch)? {
                Patched::Stored { encoded, result } => (encoded, result),
                Patched::TooLarge(result) => return Ok(result),
            };
            let encoded = String::from_utf8(encoded).map_err(|_| FsError::GeneralFailure)?;
            self.store.set_props(&key, &encoded).await.map_err(|e| fs_error(&rel, e))?;
            Ok(result)
        }
        .boxed()
    }

    fn get_props<'a>(&'a self, path: &'a DavPath, do_content: bool) -> FsFuture<'a, Vec<DavProp>> {
        async move {
            let rel = rel(path)?;
            let key = if self.lookup(&rel).await?.is_dir { format!("{rel}/") } else { rel };
            Ok(self.load(&key).await?.iter().map(|p| to_dav(p, do_content)).collect())
        }
        .boxed()
    }

    fn get_prop<'a>(&'a self, path: &'a DavPath, prop: DavProp) -> FsFuture<'a, Vec<u8>> {
        async move {
            let rel = rel(path)?;
            let key = if self.lookup(&rel).await?.is_dir { format!("{rel}/") } else { rel };
            self.load(&key)
                .await?
                .into_iter()
                .find(|p| same_prop(p, &prop))
                .and_then(|p| p.xml)
                .map(String::into_bytes)
                .ok_or(FsError::NotFound)
        }
        .boxed()
    }
}

fn upload_error(path: &str, e: UploadError) -> FsError {
    match e {
        UploadError::S3(e) => fs_error(path, e),
        UploadError::Length { .. } => {
            tracing::info!(path, "upload not stored: {e}");
            FsError::GeneralFailure
        }
    }
}

/// A file being read: the GET `open` made, read on while reads follow on; after a seek, a ranged
/// GET from there of the same version (If-Match its ETag).
struct ReadObject {
    store: S3Store,
    path: String,
    head: Head,
    pos: u64,
    body: Option<reqwest::Response>,
    /// Bytes of the last frame beyond what the last read asked for.
    pending: Bytes,
}

impl std::fmt::Debug for ReadObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadObject").field("path", &self.path).field("pos", &self.pos).finish()
    }
}

impl ReadObject {
    fn new(store: S3Store, path: String, head: Head) -> ReadObject {
        ReadObject { store, path, head, pos: 0, body: None, pending: Bytes::new() }
    }

    async fn read(&mut self, count: usize) -> FsResult<Bytes> {
        let len = self.head.len;
        if self.pos >= len || count == 0 {
            return Ok(Bytes::new());
        }
        if self.pending.is_empty() {
            if self.body.is_none() {
                let (_, body) = self
                    .store
                    .get(&self.path, Some((self.pos, len - 1)), Some(&self.head.etag))
                    .await
                    .map_err(|e| fs_error(&self.path, e))?;
                self.body = Some(body);
            }
            let body = self.body.as_mut().expect("opened above");
            match body.chunk().await {
                Ok(Some(frame)) => self.pending = frame,
                // The engine ended before the object did: the response must not look whole.
                Ok(None) => return Err(FsError::GeneralFailure),
                Err(e) => {
                    tracing::warn!(path = %self.path, "object store read: {}", crate::telemetry::chain(&e));
                    return Err(FsError::GeneralFailure);
                }
            }
        }
        let take = count.min(self.pending.len());
        let out = self.pending.split_to(take);
        self.pos += take as u64;
        Ok(out)
    }
}

impl DavFile for ReadObject {
    fn metadata(&'_ mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let meta: Box<dyn DavMetaData> = Box::new(Meta::file(&self.head));
        async move { Ok(meta) }.boxed()
    }

    fn write_buf(&'_ mut self, _buf: Box<dyn Buf + Send>) -> FsFuture<'_, ()> {
        async { Err(FsError::Forbidden) }.boxed()
    }

    fn write_bytes(&'_ mut self, _buf: Bytes) -> FsFuture<'_, ()> {
        async { Err(FsError::Forbidden) }.boxed()
    }

    fn read_bytes(&'_ mut self, count: usize) -> FsFuture<'_, Bytes> {
        self.read(count).boxed()
    }

    fn seek(&'_ mut self, pos: SeekFrom) -> FsFuture<'_, u64> {
        async move {
            let len = self.head.len as i128;
            let to = match pos {
                SeekFrom::Start(n) => n as i128,
                SeekFrom::End(d) => len + d as i128,
                SeekFrom::Current(d) => self.pos as i128 + d as i128,
            };
            let to = u64::try_from(to).map_err(|_| FsError::GeneralFailure)?;
            if to != self.pos {
                self.body = None;
                self.pending = Bytes::new();
                self.pos = to;
            }
            Ok(to)
        }
        .boxed()
    }

    fn flush(&'_ mut self) -> FsFuture<'_, ()> {
        async { Ok(()) }.boxed()
    }
}

/// A PUT on its way to the bucket. With a length: one S3 PUT fed frame by frame as the
/// client sends (a task of its own sends it), which the engine stores only if every byte
/// came. Without one: parts of 8 MiB gathered in memory (`Upload`).
enum UploadObject {
    Stream {
        path: String,
        declared: u64,
        sent: u64,
        frames: Option<mpsc::Sender<Result<Bytes, std::io::Error>>>,
        put: Option<tokio::task::JoinHandle<Result<String, S3Error>>>,
    },
    Parts {
        path: String,
        upload: Option<Box<Upload>>,
    },
}

impl std::fmt::Debug for UploadObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UploadObject::Stream { path, sent, .. } => write!(f, "UploadObject::Stream({path}, {sent})"),
            UploadObject::Parts { path, .. } => write!(f, "UploadObject::Parts({path})"),
        }
    }
}

impl UploadObject {
    fn start(store: S3Store, path: String, size: Option<u64>) -> UploadObject {
        let Some(declared) = size else {
            let upload = store.upload(&path, None);
            return UploadObject::Parts { path, upload: Some(Box::new(upload)) };
        };
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(STREAM_FRAMES);
        let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
        let key = path.clone();
        let put = tokio::spawn(async move { store.put_stream(&key, declared, body).await });
        UploadObject::Stream { path, declared, sent: 0, frames: Some(tx), put: Some(put) }
    }

    /// The PUT's outcome once it ended (early: the engine refused or failed mid-way).
    async fn outcome(put: &mut Option<tokio::task::JoinHandle<Result<String, S3Error>>>, path: &str) -> FsResult<()> {
        let Some(task) = put.take() else { return Err(FsError::GeneralFailure) };
        match task.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(fs_error(path, e)),
            Err(_) => Err(FsError::GeneralFailure),
        }
    }

    async fn push(&mut self, data: Bytes) -> FsResult<()> {
        match self {
            UploadObject::Stream { path, declared, sent, frames, put } => {
                *sent += data.len() as u64;
                if *sent > *declared {
                    return Err(FsError::GeneralFailure);
                }
                let Some(tx) = frames.as_ref() else { return Err(FsError::GeneralFailure) };
                if tx.send(Ok(data)).await.is_err() {
                    // The request ended before its body did: its answer says why.
                    frames.take();
                    return match UploadObject::outcome(put, path).await {
                        Ok(()) => Err(FsError::GeneralFailure),
                        Err(e) => Err(e),
                    };
                }
                Ok(())
            }
            UploadObject::Parts { path, upload } => {
                let up = upload.as_mut().ok_or(FsError::GeneralFailure)?;
                up.write(&data).await.map_err(|e| upload_error(path, e))
            }
        }
    }

    async fn finish(&mut self) -> FsResult<()> {
        match self {
            UploadObject::Stream { path, declared, sent, frames, put } => {
                frames.take();
                if sent != declared {
                    if let Some(task) = put.take() {
                        task.abort();
                    }
                    return Err(FsError::GeneralFailure);
                }
                UploadObject::outcome(put, path).await
            }
            UploadObject::Parts { path, upload } => {
                let up = upload.take().ok_or(FsError::GeneralFailure)?;
                up.commit().await.map_err(|e| upload_error(path, e))
            }
        }
    }
}

impl Drop for UploadObject {
    /// A body that never finished: the PUT is dropped mid-body, so the engine stores nothing.
    fn drop(&mut self) {
        if let UploadObject::Stream { put: Some(task), .. } = self {
            task.abort();
        }
    }
}

/// The receiving end of the frame channel as the stream reqwest sends from.
fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

impl DavFile for UploadObject {
    fn metadata(&'_ mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let len = match self {
            UploadObject::Stream { sent, .. } => *sent,
            UploadObject::Parts { .. } => 0,
        };
        let meta: Box<dyn DavMetaData> = Box::new(Meta { len, modified: SystemTime::now(), etag: None, is_dir: false });
        async move { Ok(meta) }.boxed()
    }

    fn write_buf(&'_ mut self, mut buf: Box<dyn Buf + Send>) -> FsFuture<'_, ()> {
        let data = buf.copy_to_bytes(buf.remaining());
        self.push(data).boxed()
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
        self.finish().boxed()
    }
}

/// The bucket as the role holds it: the store, the bound on uploads without a length, and
/// what the last look at the engine found (health, metrics).
pub struct Bucket {
    pub store: S3Store,
    pub endpoint: String,
    pub bucket: String,
    pub key_prefix: String,
    /// One permit per PUT without a Content-Length (each may hold an 8 MiB part).
    pub chunked: std::sync::Arc<tokio::sync::Semaphore>,
    pub max_chunked: usize,
    probe: std::sync::Mutex<Probe>,
}

#[derive(Clone, Default)]
struct Probe {
    ok: bool,
    at_ms: u64,
    error: Option<String>,
}

/// How often the role looks at the engine when nothing else does.
pub const PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl Bucket {
    pub fn new(config: &crate::config::S3Config) -> anyhow::Result<Bucket> {
        let client = crate::s3::client::S3Client::from_config(config).map_err(|e| anyhow::anyhow!("webdav.s3: {e}"))?;
        Ok(Bucket {
            store: S3Store::new(client, &config.key_prefix),
            endpoint: config.endpoint(),
            bucket: config.bucket.clone(),
            key_prefix: config.key_prefix.clone(),
            chunked: std::sync::Arc::new(tokio::sync::Semaphore::new(config.max_chunked_uploads)),
            max_chunked: config.max_chunked_uploads,
            probe: Default::default(),
        })
    }

    /// Lists one key of the bucket; refused credentials or a missing bucket are the
    /// operator's to fix (Err), an engine that does not answer may come back (Ok, noted).
    pub async fn probe(&self) -> Result<(), S3Error> {
        let result = self.store.list_one().await;
        let mut probe = self.probe.lock().unwrap_or_else(|e| e.into_inner());
        *probe = Probe {
            ok: result.is_ok(),
            at_ms: crate::clock::unix_ms(),
            error: result.as_ref().err().map(ToString::to_string),
        };
        result
    }

    pub fn reachable(&self) -> bool {
        self.probe.lock().unwrap_or_else(|e| e.into_inner()).ok
    }

    pub fn details(&self) -> serde_json::Value {
        let probe = self.probe.lock().unwrap_or_else(|e| e.into_inner()).clone();
        serde_json::json!({
            "endpoint": self.endpoint,
            "bucket": self.bucket,
            "keyPrefix": self.key_prefix,
            "reachable": probe.ok,
            "checkedAtMs": probe.at_ms,
            "lastError": probe.error,
            "chunkedUploadsInFlight": self.max_chunked - self.chunked.available_permits(),
        })
    }
}
