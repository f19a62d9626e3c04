//! The crash-safe storage layer under the WebDAV engine: every file-system operation on the
//! store, done beneath one root directory fd with `openat2(RESOLVE_BENEATH|NO_SYMLINKS)`, or
//! on kernels without it one `O_NOFOLLOW` component at a time (`Resolver`), so no path,
//! symlink or `..` can reach outside it. PUT writes a hidden temp file, verifies its
//! length, makes its bytes durable (`settle`), renames and fsyncs the directory. All
//! functions here block: callers run them on the bounded blocking pool.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use dav_server::fs::FsError;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::metrics::Counter;

/// Names starting with this are ours (temp files, property sidecars): invisible to every
/// method and refused in every request path.
pub const RESERVED_PREFIX: &str = ".exec-allinone-";
const TMP_PREFIX: &str = ".exec-allinone-tmp-";
const PROPS_PREFIX: &str = ".exec-allinone-props-";
/// A file or collection taken out of the namespace by one rename (`set_aside`), waiting to be
/// put back or removed; one left by a crash is removed at start.
const ASIDE_PREFIX: &str = ".exec-allinone-aside-";
/// The start-up sweep counts no deeper than this (it recurses).
const MAX_SWEEP_DEPTH: usize = 64;
const FILE_MODE: u32 = 0o640;
const DIR_MODE: u32 = 0o750;

pub type FsResult<T> = Result<T, FsError>;

/// Limits the store enforces on writes.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_file_size: u64,
    pub quota: Option<u64>,
    pub min_free_disk: u64,
}

/// Counters the storage layer keeps for `/metrics`.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub uploads_started: Counter,
    pub uploads_completed: Counter,
    pub uploads_aborted: Counter,
    pub bytes_in: Counter,
    pub temp_files_swept: Counter,
}

pub struct Store {
    root: OwnedFd,
    root_path: PathBuf,
    fsync: bool,
    /// The root's device when it is a journaled ext4: temp files on it are written out
    /// rather than fdatasync'ed before their rename (`writeout`).
    write_out_dev: Option<u64>,
    limits: Limits,
    /// Bytes the quota counts: committed files, dead-property sidecars and directories, kept
    /// up to date by every write and delete.
    used: AtomicU64,
    /// Bytes promised to uploads in flight, so concurrent PUTs cannot overrun the quota.
    reserved: AtomicU64,
    files: AtomicU64,
    /// Uploads between `begin_upload` and the drop of their `Upload`: the write path sizes
    /// its batches from it.
    open_uploads: AtomicUsize,
    /// Resources that have a dead-property sidecar, so the common case (none) is answered
    /// without touching the disk: a PROPFIND of 1000 recordings would otherwise open 1000
    /// sidecars that do not exist.
    props_index: Mutex<HashSet<PathBuf>>,
    /// One group commit per directory being synced, by (device, inode): concurrent uploads
    /// into one directory share its fsyncs (`durable::GroupSync`).
    dir_syncs: Mutex<HashMap<(u64, u64), Arc<crate::durable::GroupSync>>>,
    pub stats: StoreStats,
    /// `openat2` or the component walk, chosen at start.
    resolver: Resolver,
}

/// A request path checked for use under the root: segments, none empty, `.`, `..`,
/// containing NUL or `/`, or starting with the reserved prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath {
    segs: Vec<OsString>,
}

impl RelPath {
    pub fn parse(bytes: &[u8]) -> FsResult<RelPath> {
        let mut segs = Vec::new();
        for seg in bytes.split(|&b| b == b'/') {
            if seg.is_empty() {
                continue;
            }
            if seg == b"." || seg == b".." || seg.contains(&0) || seg.contains(&b'\\') {
                return Err(FsError::Forbidden);
            }
            if seg.starts_with(RESERVED_PREFIX.as_bytes()) {
                return Err(FsError::NotFound);
            }
            if seg.len() > 255 {
                return Err(FsError::PathTooLong);
            }
            segs.push(OsStr::from_bytes(seg).to_owned());
        }
        Ok(RelPath { segs })
    }

    pub fn is_root(&self) -> bool {
        self.segs.is_empty()
    }

    fn join(segs: &[OsString]) -> PathBuf {
        segs.iter().collect()
    }

    /// The path relative to the root ("" for the root itself); the props index key.
    pub fn key(&self) -> PathBuf {
        RelPath::join(&self.segs)
    }

    fn split(&self) -> Option<(&[OsString], &OsStr)> {
        let (name, parent) = self.segs.split_last()?;
        Some((parent, name.as_os_str()))
    }
}

/// What the WebDAV engine needs to know about a file or directory.
#[derive(Debug, Clone)]
pub struct Meta {
    pub len: u64,
    pub modified: SystemTime,
    pub is_dir: bool,
    pub ino: u64,
}

impl Meta {
    fn from_stat(st: &rustix::fs::Stat) -> Meta {
        let modified = SystemTime::UNIX_EPOCH
            + Duration::new(st.st_mtime.max(0) as u64, st.st_mtime_nsec.clamp(0, 999_999_999) as u32);
        Meta {
            len: st.st_size.max(0) as u64,
            modified,
            is_dir: FileType::from_raw_mode(st.st_mode) == FileType::Directory,
            ino: st.st_ino,
        }
    }
}

/// Maps an OS error to what the WebDAV engine turns into a status code. Symlinks are
/// invisible (`ELOOP` from `RESOLVE_NO_SYMLINKS` reads as "not found"); an attempt to leave
/// the root (`EXDEV` from `RESOLVE_BENEATH`) is forbidden.
pub fn fs_error(err: Errno) -> FsError {
    match err {
        Errno::NOENT | Errno::LOOP | Errno::NOTDIR => FsError::NotFound,
        Errno::XDEV | Errno::ACCESS | Errno::PERM | Errno::ISDIR | Errno::ROFS => FsError::Forbidden,
        Errno::EXIST | Errno::NOTEMPTY => FsError::Exists,
        Errno::NOSPC | Errno::DQUOT | Errno::MLINK => FsError::InsufficientStorage,
        Errno::FBIG => FsError::TooLarge,
        Errno::NAMETOOLONG => FsError::PathTooLong,
        _ => FsError::GeneralFailure,
    }
}

fn io_error(err: std::io::Error) -> FsError {
    match err.raw_os_error() {
        Some(code) => fs_error(Errno::from_raw_os_error(code)),
        None => FsError::GeneralFailure,
    }
}

fn resolve() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// How names are opened beneath the root: `openat2` where the kernel has it (5.6+) and the
/// runtime lets it through, else one component at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolver {
    Openat2,
    /// Each component opened with `O_NOFOLLOW` relative to the directory fd before it, as
    /// the capability crates (cap-std) do on kernels without `openat2`. The names are checked
    /// segments (never `..`, `.` or empty), so the walk cannot leave the root, and no
    /// symlink is followed, not even through a directory.
    Walk,
}

/// Opens `segs` (checked segments; none means `dir` itself) beneath `dir` with `flags`.
fn open_beneath(resolver: Resolver, dir: BorrowedFd<'_>, segs: &[OsString], flags: OFlags) -> Result<OwnedFd, Errno> {
    match resolver {
        Resolver::Openat2 => {
            let path = if segs.is_empty() { PathBuf::from(".") } else { RelPath::join(segs) };
            rustix::fs::openat2(dir, &path, flags, Mode::empty(), resolve())
        }
        Resolver::Walk => {
            let Some((last, parents)) = segs.split_last() else {
                return rustix::fs::openat(dir, ".", flags, Mode::empty());
            };
            let step = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let mut held: Option<OwnedFd> = None;
            for seg in parents {
                let next = rustix::fs::openat(held.as_ref().map_or(dir, |d| d.as_fd()), seg, step, Mode::empty())?;
                held = Some(next);
            }
            rustix::fs::openat(held.as_ref().map_or(dir, |d| d.as_fd()), last, flags | OFlags::NOFOLLOW, Mode::empty())
        }
    }
}

/// Which resolver this kernel and runtime allow: `openat2` unless it is missing (ENOSYS,
/// Linux before 5.6) or refused (EPERM, a seccomp profile that does not know it).
fn pick_resolver(root: BorrowedFd<'_>) -> Result<Resolver, Errno> {
    match rustix::fs::openat2(root, ".", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty(), resolve()) {
        Ok(_) => Ok(Resolver::Openat2),
        Err(Errno::NOSYS | Errno::PERM) => Ok(Resolver::Walk),
        Err(err) => Err(err),
    }
}

fn props_name(name: &OsStr) -> OsString {
    let mut n = OsString::from(PROPS_PREFIX);
    n.push(name);
    n
}

fn random_aside_name() -> OsString {
    OsString::from(format!("{ASIDE_PREFIX}{:016x}", rand::random::<u64>()))
}

fn random_tmp_name() -> OsString {
    OsString::from(format!("{TMP_PREFIX}{:016x}", rand::random::<u64>()))
}

impl Store {
    /// Opens the root (creating it if asked), sweeps temp files left by a crash and counts
    /// what is stored.
    pub fn open(root_path: &Path, create: bool, fsync: bool, limits: Limits) -> anyhow::Result<Store> {
        use anyhow::Context;
        if create {
            std::fs::create_dir_all(root_path)
                .with_context(|| format!("cannot create the store root {}", root_path.display()))?;
        }
        let root = rustix::fs::open(
            root_path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .with_context(|| format!("cannot open the store root {} (it must be a real directory)", root_path.display()))?;
        let resolver = pick_resolver(root.as_fd()).context("cannot open the store root beneath itself")?;
        if resolver == Resolver::Walk {
            tracing::info!(
                "openat2 is not available (Linux before 5.6, or refused by a seccomp profile): names are opened \
                 one component at a time beneath the store root, no symlink followed"
            );
        }
        let write_out_dev = if fsync { super::writeout::journaled_ext4(root.as_fd()) } else { None };
        let store = Store {
            root,
            resolver,
            root_path: root_path.to_path_buf(),
            fsync,
            write_out_dev,
            limits,
            used: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
            files: AtomicU64::new(0),
            open_uploads: AtomicUsize::new(0),
            props_index: Mutex::default(),
            dir_syncs: Mutex::default(),
            stats: StoreStats::default(),
        };
        store.check_writable()?;
        let (used, files) = store.sweep_dir(store.root.as_fd(), Path::new(""))?;
        store.used.store(used, Ordering::Relaxed);
        store.files.store(files, Ordering::Relaxed);
        Ok(store)
    }

    /// A store that cannot be written would answer every PUT 403 and look healthy: a root on
    /// a read-only mount (systemd's ProtectSystem=strict without ReadWritePaths=), or owned
    /// by another user (Apache's www-data), is refused at start, saying which.
    fn check_writable(&self) -> anyhow::Result<()> {
        let name = random_tmp_name();
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        match rustix::fs::openat(&self.root, &name, flags, Mode::from_raw_mode(FILE_MODE)) {
            Ok(fd) => {
                drop(fd);
                rustix::fs::unlinkat(&self.root, &name, AtFlags::empty()).map_err(|e| {
                    anyhow::anyhow!("cannot remove a file in the store root {}: {e}", self.root_path.display())
                })
            }
            Err(e) => {
                let hint = match e {
                    Errno::ROFS => {
                        "it is on a read-only file system: under systemd's ProtectSystem=strict a store outside \
                         /var/lib/exec-allinone needs ReadWritePaths= (systemd/recordings-outside-var-lib.conf)"
                    }
                    Errno::ACCESS | Errno::PERM => {
                        "this user may not write there: give the directory to the service's user (chown -R)"
                    }
                    _ => "",
                };
                anyhow::bail!(
                    "cannot write in the store root {}: {e}{}{hint}",
                    self.root_path.display(),
                    if hint.is_empty() { "" } else { "; " }
                )
            }
        }
    }

    /// Uploads in progress (begun and not yet dropped).
    pub fn open_uploads(&self) -> usize {
        self.open_uploads.load(Ordering::Relaxed)
    }

    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn file_count(&self) -> u64 {
        self.files.load(Ordering::Relaxed)
    }

    pub fn quota(&self) -> Option<u64> {
        self.limits.quota
    }

    /// Bytes available to unprivileged users on the store's file system.
    pub fn free_disk(&self) -> Option<u64> {
        rustix::fs::fstatvfs(&self.root).ok().map(|s| s.f_bavail.saturating_mul(s.f_frsize))
    }

    /// Walks a directory tree: removes our temp files and orphaned sidecars, sums file sizes.
    fn sweep_dir(&self, dir: BorrowedFd<'_>, rel: &Path) -> anyhow::Result<(u64, u64)> {
        let depth = rel.components().count();
        let mut used = 0;
        let mut files = 0;
        let entries = list_dir(dir)?;
        for (name, ft) in &entries {
            let bytes = name.as_bytes();
            if bytes.starts_with(TMP_PREFIX.as_bytes()) {
                if rustix::fs::unlinkat(dir, name, AtFlags::empty()).is_ok() {
                    self.stats.temp_files_swept.inc();
                    tracing::info!(file = ?name, "removed a temp file left by an interrupted upload");
                }
            } else if bytes.starts_with(ASIDE_PREFIX.as_bytes()) {
                // A DELETE, or a COPY/MOVE over an existing resource, that a crash interrupted
                // after its one rename: the resource had already left the namespace.
                let (bytes, files) = remove_tree(dir, name)?;
                tracing::info!(entry = ?name, bytes, files, "removed a tree set aside before a crash");
            } else if let Some(owner) = bytes.strip_prefix(PROPS_PREFIX.as_bytes()) {
                let owner = OsStr::from_bytes(owner);
                if owner.as_bytes().starts_with(RESERVED_PREFIX.as_bytes()) {
                    let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
                } else if owner.is_empty() {
                    if depth == 0 {
                        self.index().insert(PathBuf::new());
                    }
                } else if rustix::fs::statat(dir, owner, AtFlags::SYMLINK_NOFOLLOW).is_err() {
                    let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
                } else {
                    self.index().insert(rel.join(owner));
                }
                used += entry_size(dir, name);
            } else if *ft == FileType::Directory && depth >= MAX_SWEEP_DEPTH {
                // Requests cannot make trees this deep (`webdav::MAX_DEPTH`); an operator's
                // copy might. Left as it is, uncounted, rather than refusing to start.
                tracing::warn!(dir = %rel.join(name).display(), "store tree deeper than {MAX_SWEEP_DEPTH} levels; not counted");
            } else if *ft == FileType::Directory {
                used += entry_size(dir, name);
                let sub = open_beneath(
                    self.resolver,
                    dir,
                    std::slice::from_ref(name),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                )?;
                let (u, f) = self.sweep_dir(sub.as_fd(), &rel.join(name))?;
                used += u;
                files += f;
            } else if *ft == FileType::RegularFile
                && let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            {
                used += st.st_size.max(0) as u64;
                files += 1;
            }
        }
        Ok((used, files))
    }

    fn open_dir(&self, segs: &[OsString]) -> FsResult<OwnedFd> {
        open_beneath(self.resolver, self.root.as_fd(), segs, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC)
            .map_err(fs_error)
    }

    /// Which way names are opened beneath the root (for the start-up log and tests).
    pub fn resolver(&self) -> Resolver {
        self.resolver
    }

    /// The parent directory of `path` and the last segment; the root has no parent.
    fn parent(&self, path: &RelPath) -> FsResult<(OwnedFd, OsString)> {
        let (parent, name) = path.split().ok_or(FsError::Forbidden)?;
        Ok((self.open_dir(parent)?, name.to_owned()))
    }

    /// Makes a temp file's bytes safe to publish by rename (the directory fsync after the
    /// rename makes the rename itself durable).
    fn settle(&self, file: &File) -> FsResult<()> {
        if !self.fsync {
            return Ok(());
        }
        let on_root_dev = || rustix::fs::fstat(file).is_ok_and(|st| Some(st.st_dev) == self.write_out_dev);
        if self.write_out_dev.is_some() && on_root_dev() {
            super::writeout::write_out(file).map_err(io_error)
        } else {
            file.sync_data().map_err(io_error)
        }
    }

    /// How a PUT is made durable, for the start-up log.
    pub fn durability(&self) -> &'static str {
        match (self.fsync, self.write_out_dev) {
            (false, _) => "off",
            (true, Some(_)) => "written out, one directory fsync (journaled ext4)",
            (true, None) => "fdatasync, then a directory fsync",
        }
    }

    fn sync_dir(&self, dir: BorrowedFd<'_>) -> FsResult<()> {
        if !self.fsync {
            return Ok(());
        }
        let st = rustix::fs::fstat(dir).map_err(fs_error)?;
        let group = {
            let mut groups = self.dir_syncs.lock().unwrap_or_else(|p| p.into_inner());
            if groups.len() >= 64 {
                // Directories nobody syncs right now; a group dropped while one joins it only
                // costs that caller the sharing.
                groups.retain(|_, g| Arc::strong_count(g) > 1);
            }
            groups.entry((st.st_dev as u64, st.st_ino as u64)).or_default().clone()
        };
        group.sync(|| rustix::fs::fsync(dir).map_err(std::io::Error::from)).map_err(io_error)
    }

    /// Metadata of a file or directory; symlinks and special files do not exist for us.
    pub fn metadata(&self, path: &RelPath) -> FsResult<Meta> {
        let st = match path.split() {
            None => rustix::fs::fstat(&self.root).map_err(fs_error)?,
            Some((parent, name)) => {
                let dir = self.open_dir(parent)?;
                rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(fs_error)?
            }
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile | FileType::Directory => Ok(Meta::from_stat(&st)),
            _ => Err(FsError::NotFound),
        }
    }

    pub fn open_read(&self, path: &RelPath) -> FsResult<(File, Meta)> {
        if path.is_root() {
            return Err(FsError::Forbidden);
        }
        let fd = open_beneath(
            self.resolver,
            self.root.as_fd(),
            &path.segs,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        )
        .map_err(fs_error)?;
        let st = rustix::fs::fstat(&fd).map_err(fs_error)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(FsError::Forbidden);
        }
        Ok((File::from(fd), Meta::from_stat(&st)))
    }

    /// Entries of a directory with their metadata, hiding our own files, symlinks and
    /// anything that is neither a file nor a directory.
    pub fn read_dir(&self, path: &RelPath) -> FsResult<Vec<(Vec<u8>, Meta)>> {
        let dir = self.open_dir(&path.segs)?;
        let mut out = Vec::new();
        for (name, ft) in list_dir(dir.as_fd()).map_err(io_error)? {
            if name.as_bytes().starts_with(RESERVED_PREFIX.as_bytes())
                || !matches!(ft, FileType::RegularFile | FileType::Directory | FileType::Unknown)
            {
                continue;
            }
            let Ok(st) = rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW) else { continue };
            if matches!(FileType::from_raw_mode(st.st_mode), FileType::RegularFile | FileType::Directory) {
                out.push((name.into_vec(), Meta::from_stat(&st)));
            }
        }
        Ok(out)
    }

    /// A directory counts against the quota with its own size, so MKCOL cannot grow the
    /// store without bound.
    pub fn create_dir(&self, path: &RelPath) -> FsResult<()> {
        let (dir, name) = self.parent(path)?;
        self.check_space(0, 0)?;
        rustix::fs::mkdirat(&dir, &name, Mode::from_raw_mode(DIR_MODE)).map_err(fs_error)?;
        if let Err(e) = self.grow(entry_size(dir.as_fd(), &name)) {
            let _ = rustix::fs::unlinkat(&dir, &name, AtFlags::REMOVEDIR);
            return Err(e);
        }
        self.sync_dir(dir.as_fd())
    }

    /// Adds `extra` bytes that are not an upload's (a directory, a sidecar) to `used`, or
    /// refuses them when they would pass the quota.
    fn grow(&self, extra: u64) -> FsResult<()> {
        if let Some(quota) = self.limits.quota
            && self.used.load(Ordering::Relaxed) + self.reserved.load(Ordering::Relaxed) + extra > quota
        {
            return Err(FsError::InsufficientStorage);
        }
        self.used.fetch_add(extra, Ordering::Relaxed);
        Ok(())
    }

    fn shrink(&self, by: u64) {
        let _ = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| Some(u.saturating_sub(by)));
    }

    pub fn remove_file(&self, path: &RelPath) -> FsResult<()> {
        let (dir, name) = self.parent(path)?;
        let st = rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW).map_err(fs_error)?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {}
            FileType::Directory => return Err(FsError::Forbidden),
            _ => return Err(FsError::NotFound),
        }
        let sidecar = entry_size(dir.as_fd(), &props_name(&name));
        rustix::fs::unlinkat(&dir, &name, AtFlags::empty()).map_err(fs_error)?;
        let _ = rustix::fs::unlinkat(&dir, props_name(&name), AtFlags::empty());
        self.index_forget_file(&path.key());
        self.shrink(st.st_size.max(0) as u64 + sidecar);
        self.files.fetch_sub(1, Ordering::Relaxed);
        self.sync_dir(dir.as_fd())
    }

    pub fn remove_dir(&self, path: &RelPath) -> FsResult<()> {
        let (dir, name) = self.parent(path)?;
        let inner = self.open_dir(&path.segs)?;
        // Our own leftovers must not make an otherwise empty collection undeletable.
        for (entry, _) in list_dir(inner.as_fd()).map_err(io_error)? {
            if entry.as_bytes().starts_with(RESERVED_PREFIX.as_bytes()) {
                let _ = rustix::fs::unlinkat(&inner, &entry, AtFlags::empty());
            }
        }
        let own = entry_size(dir.as_fd(), &name) + entry_size(dir.as_fd(), &props_name(&name));
        rustix::fs::unlinkat(&dir, &name, AtFlags::REMOVEDIR).map_err(fs_error)?;
        let _ = rustix::fs::unlinkat(&dir, props_name(&name), AtFlags::empty());
        self.index_forget(&path.key());
        self.shrink(own);
        self.sync_dir(dir.as_fd())
    }

    /// Takes a file or a whole collection out of the namespace with one rename in its own
    /// directory (its dead properties go along), so a tree removal is all-or-nothing: either
    /// this fails and nothing changed, or the resource is gone at once. Returns the hidden
    /// name, for `restore_aside` or `discard_aside`.
    pub fn set_aside(&self, path: &RelPath) -> FsResult<OsString> {
        let (dir, name) = self.parent(path)?;
        let st = rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW).map_err(fs_error)?;
        if !matches!(FileType::from_raw_mode(st.st_mode), FileType::RegularFile | FileType::Directory) {
            return Err(FsError::NotFound);
        }
        let aside = random_aside_name();
        rustix::fs::renameat(&dir, &name, &dir, &aside).map_err(fs_error)?;
        let _ = rustix::fs::renameat(&dir, props_name(&name), &dir, props_name(&aside));
        let parent_key = RelPath::join(path.split().map_or(&[][..], |(p, _)| p));
        self.index_move(&path.key(), &parent_key.join(&aside));
        self.sync_dir(dir.as_fd())?;
        Ok(aside)
    }

    /// Puts a resource set aside in `parent` back at `to` (in the same directory).
    pub fn restore_aside(&self, parent: &RelPath, aside: &OsStr, to: &RelPath) -> FsResult<()> {
        if !aside.as_bytes().starts_with(ASIDE_PREFIX.as_bytes()) {
            return Err(FsError::Forbidden);
        }
        let from_dir = self.open_dir(&parent.segs)?;
        let (to_dir, to_name) = self.parent(to)?;
        rustix::fs::renameat(&from_dir, aside, &to_dir, &to_name).map_err(fs_error)?;
        let _ = rustix::fs::renameat(&from_dir, props_name(aside), &to_dir, props_name(&to_name));
        self.index_move(&parent.key().join(aside), &to.key());
        self.sync_dir(to_dir.as_fd())
    }

    /// Removes a resource set aside in `parent` for good, and what it held from the counts.
    pub fn discard_aside(&self, parent: &RelPath, aside: &OsStr) -> FsResult<()> {
        if !aside.as_bytes().starts_with(ASIDE_PREFIX.as_bytes()) {
            return Err(FsError::Forbidden);
        }
        let dir = self.open_dir(&parent.segs)?;
        let (bytes, files) = remove_tree(dir.as_fd(), aside).map_err(io_error)?;
        let bytes = bytes + entry_size(dir.as_fd(), &props_name(aside));
        let _ = rustix::fs::unlinkat(&dir, props_name(aside), AtFlags::empty());
        self.index_forget(&parent.key().join(aside));
        self.used.fetch_sub(bytes.min(self.used.load(Ordering::Relaxed)), Ordering::Relaxed);
        self.files.fetch_sub(files.min(self.files.load(Ordering::Relaxed)), Ordering::Relaxed);
        self.sync_dir(dir.as_fd())
    }

    pub fn rename(&self, from: &RelPath, to: &RelPath) -> FsResult<()> {
        let (from_dir, from_name) = self.parent(from)?;
        let (to_dir, to_name) = self.parent(to)?;
        let st = rustix::fs::statat(&from_dir, &from_name, AtFlags::SYMLINK_NOFOLLOW).map_err(fs_error)?;
        let ft = FileType::from_raw_mode(st.st_mode);
        if !matches!(ft, FileType::RegularFile | FileType::Directory) {
            return Err(FsError::NotFound);
        }
        let replaced = replaced_file_len(&to_dir, &to_name)?;
        let replaced_own = replaced_dir_size(&to_dir, &to_name) + entry_size(to_dir.as_fd(), &props_name(&to_name));
        rustix::fs::renameat(&from_dir, &from_name, &to_dir, &to_name).map_err(fs_error)?;
        self.shrink(replaced_own);
        match rustix::fs::renameat(&from_dir, props_name(&from_name), &to_dir, props_name(&to_name)) {
            Ok(()) => {}
            Err(_) => {
                let _ = rustix::fs::unlinkat(&to_dir, props_name(&to_name), AtFlags::empty());
            }
        }
        if let Some(len) = replaced {
            self.used.fetch_sub(len, Ordering::Relaxed);
            self.files.fetch_sub(1, Ordering::Relaxed);
        }
        self.index_move(&from.key(), &to.key());
        self.sync_dir(to_dir.as_fd())?;
        self.sync_dir(from_dir.as_fd())
    }

    /// Copies one file (collections are copied by the engine, one member at a time), through a
    /// temp file so the destination is never seen half-written; dead properties go along.
    pub fn copy(&self, from: &RelPath, to: &RelPath) -> FsResult<()> {
        let (mut src, meta) = self.open_read(from)?;
        let (to_dir, to_name) = self.parent(to)?;
        self.check_space(meta.len, 0)?;
        let replaced = replaced_file_len(&to_dir, &to_name)?;
        let (tmp_name, mut tmp) = self.create_temp(&to_dir)?;
        let cleanup = |e| {
            let _ = rustix::fs::unlinkat(&to_dir, &tmp_name, AtFlags::empty());
            e
        };
        let copied = std::io::copy(&mut src, &mut tmp).map_err(io_error).map_err(cleanup)?;
        self.settle(&tmp).map_err(cleanup)?;
        rustix::fs::renameat(&to_dir, &tmp_name, &to_dir, &to_name).map_err(fs_error).map_err(cleanup)?;
        self.shrink(entry_size(to_dir.as_fd(), &props_name(&to_name)));
        let _ = rustix::fs::unlinkat(&to_dir, props_name(&to_name), AtFlags::empty());
        self.index_forget_file(&to.key());
        if self.has_props(from) {
            let (from_dir, from_name) = self.parent(from)?;
            if let Ok(props) = read_small(&from_dir, &props_name(&from_name))
                && self.grow(props.len() as u64).is_ok()
            {
                if self.write_atomic(&to_dir, &props_name(&to_name), &props).is_ok() {
                    self.index().insert(to.key());
                } else {
                    self.shrink(props.len() as u64);
                }
            }
        }
        self.used.fetch_add(copied, Ordering::Relaxed);
        self.files.fetch_add(1, Ordering::Relaxed);
        if let Some(len) = replaced {
            self.used.fetch_sub(len, Ordering::Relaxed);
            self.files.fetch_sub(1, Ordering::Relaxed);
        }
        self.sync_dir(to_dir.as_fd())
    }

    fn create_temp(&self, dir: &OwnedFd) -> FsResult<(OsString, File)> {
        for _ in 0..8 {
            let name = random_tmp_name();
            match rustix::fs::openat(
                dir,
                &name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::from_raw_mode(FILE_MODE),
            ) {
                Ok(fd) => return Ok((name, File::from(fd))),
                Err(Errno::EXIST) => continue,
                Err(err) => return Err(fs_error(err)),
            }
        }
        Err(FsError::GeneralFailure)
    }

    /// Refuses a write of `len` more bytes that would break the quota or the free-disk reserve.
    /// Charges `extra` more bytes of an upload in flight against the quota and the free-disk
    /// reserve, atomically with every other upload's charges, so concurrent PUTs cannot
    /// together overrun the quota.
    fn charge(&self, extra: u64) -> FsResult<()> {
        if let Some(quota) = self.limits.quota {
            let mut cur = self.reserved.load(Ordering::Relaxed);
            loop {
                if self.used.load(Ordering::Relaxed) + cur + extra > quota {
                    return Err(FsError::InsufficientStorage);
                }
                match self.reserved.compare_exchange_weak(cur, cur + extra, Ordering::AcqRel, Ordering::Relaxed) {
                    Ok(_) => break,
                    Err(now) => cur = now,
                }
            }
        } else {
            self.reserved.fetch_add(extra, Ordering::Relaxed);
        }
        if let Some(free) = self.free_disk()
            && free.saturating_sub(extra) < self.limits.min_free_disk
        {
            self.reserved.fetch_sub(extra, Ordering::Relaxed);
            return Err(FsError::InsufficientStorage);
        }
        Ok(())
    }

    fn check_space(&self, len: u64, already_reserved: u64) -> FsResult<()> {
        if len > self.limits.max_file_size {
            return Err(FsError::TooLarge);
        }
        if let Some(quota) = self.limits.quota {
            let committed = self.used.load(Ordering::Relaxed) + self.reserved.load(Ordering::Relaxed);
            if committed.saturating_sub(already_reserved) + len > quota {
                return Err(FsError::InsufficientStorage);
            }
        }
        if let Some(free) = self.free_disk()
            && free.saturating_sub(len.saturating_sub(already_reserved)) < self.limits.min_free_disk
        {
            return Err(FsError::InsufficientStorage);
        }
        Ok(())
    }

    /// Starts a PUT: checks the target and the limits. Only lookups (the parent directory, the
    /// target, free space), no write: the hidden temp file beside the target is created with
    /// the first bytes. `expected` is the Content-Length when the client sent one.
    pub fn begin_upload(
        self: &Arc<Self>,
        path: &RelPath,
        expected: Option<u64>,
        create: bool,
        create_new: bool,
    ) -> FsResult<Upload> {
        let (dir, name) = self.parent(path)?;
        let existing = match rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => Some(st.st_size.max(0) as u64),
                // A collection, or an operator's symlink: never replaced by a PUT.
                _ => return Err(FsError::Forbidden),
            },
            Err(Errno::NOENT) => None,
            Err(err) => return Err(fs_error(err)),
        };
        if existing.is_some() && create_new {
            return Err(FsError::Exists);
        }
        if existing.is_none() && !create {
            return Err(FsError::NotFound);
        }
        // A body that cannot fit even now is refused before it is read; nothing is charged
        // for what was only declared: bytes are charged as they arrive (`write`), so slow
        // clients announcing large bodies cannot hold the quota while sending nothing. A
        // replacing PUT is charged only what it adds to the file it replaces.
        let replaces = existing.unwrap_or(0);
        self.check_space(expected.unwrap_or(0).saturating_sub(replaces), 0)?;
        self.stats.uploads_started.inc();
        self.open_uploads.fetch_add(1, Ordering::Relaxed);
        Ok(Upload {
            store: Arc::clone(self),
            dir,
            name,
            tmp: None,
            written: 0,
            expected,
            replaces,
            reserved: 0,
            committed: None,
        })
    }

    // ---- dead properties: one sidecar file per resource, beside it in its directory ----

    fn props_location(&self, path: &RelPath) -> FsResult<(OwnedFd, OsString)> {
        match path.split() {
            None => Ok((self.open_dir(&[])?, OsString::from(PROPS_PREFIX))),
            Some((parent, name)) => Ok((self.open_dir(parent)?, props_name(name))),
        }
    }

    fn index(&self) -> MutexGuard<'_, HashSet<PathBuf>> {
        self.props_index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the resource may have dead properties; false is certain and costs no I/O.
    pub fn has_props(&self, path: &RelPath) -> bool {
        self.index().contains(&path.key())
    }

    /// Drops a resource and everything below it from the index.
    fn index_forget(&self, key: &Path) {
        self.index().retain(|k| !k.starts_with(key));
    }

    /// Drops a file from the index: nothing is below it, so no scan of the whole index (a
    /// store holding thousands of recordings with properties deletes them at that rate).
    fn index_forget_file(&self, key: &Path) {
        self.index().remove(key);
    }

    /// Re-keys a moved resource and everything below it; what the destination held is gone.
    fn index_move(&self, from: &Path, to: &Path) {
        let mut index = self.index();
        index.retain(|k| !k.starts_with(to));
        let moved: Vec<PathBuf> = index.iter().filter(|k| k.starts_with(from)).cloned().collect();
        for k in moved {
            index.remove(&k);
            if let Ok(rest) = k.strip_prefix(from) {
                index.insert(if rest.as_os_str().is_empty() { to.to_path_buf() } else { to.join(rest) });
            }
        }
    }

    /// The raw sidecar (empty when the resource has no dead properties).
    pub fn read_props(&self, path: &RelPath) -> FsResult<Vec<u8>> {
        self.metadata(path)?;
        let (dir, name) = self.props_location(path)?;
        match read_small(&dir, &name) {
            Ok(bytes) => Ok(bytes),
            Err(FsError::NotFound) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Replaces the sidecar atomically; empty content removes it.
    pub fn write_props(&self, path: &RelPath, content: &[u8]) -> FsResult<()> {
        self.metadata(path)?;
        let (dir, name) = self.props_location(path)?;
        let old = entry_size(dir.as_fd(), &name);
        if content.is_empty() {
            match rustix::fs::unlinkat(&dir, &name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {
                    self.shrink(old);
                    self.index().remove(&path.key());
                    return self.sync_dir(dir.as_fd());
                }
                Err(e) => return Err(fs_error(e)),
            }
        }
        // Dead properties count against the quota like file contents.
        let new = content.len() as u64;
        self.grow(new.saturating_sub(old))?;
        if let Err(e) = self.write_atomic(&dir, &name, content) {
            self.shrink(new.saturating_sub(old));
            return Err(e);
        }
        self.shrink(old.saturating_sub(new));
        self.index().insert(path.key());
        Ok(())
    }

    fn write_atomic(&self, dir: &OwnedFd, name: &OsStr, content: &[u8]) -> FsResult<()> {
        let (tmp_name, mut tmp) = self.create_temp(dir)?;
        let result = (|| {
            tmp.write_all(content).map_err(io_error)?;
            self.settle(&tmp)?;
            rustix::fs::renameat(dir, &tmp_name, dir, name).map_err(fs_error)
        })();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(dir, &tmp_name, AtFlags::empty());
        }
        result?;
        self.sync_dir(dir.as_fd())
    }
}

fn replaced_file_len(dir: &OwnedFd, name: &OsStr) -> FsResult<Option<u64>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => Ok(Some(st.st_size.max(0) as u64)),
        Ok(_) => Ok(None),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(fs_error(e)),
    }
}

/// The size of an entry that is not counted as file content (a directory, a sidecar); 0
/// when it does not exist.
fn entry_size(dir: BorrowedFd<'_>, name: &OsStr) -> u64 {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_or(0, |st| st.st_size.max(0) as u64)
}

/// The size of an (empty) directory a rename replaces, 0 for anything else.
fn replaced_dir_size(dir: &OwnedFd, name: &OsStr) -> u64 {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => st.st_size.max(0) as u64,
        _ => 0,
    }
}

/// Reads one of our sidecars; they are small by construction, so a cap guards against junk.
fn read_small(dir: &OwnedFd, name: &OsStr) -> FsResult<Vec<u8>> {
    use std::io::Read;
    let fd = rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW, Mode::empty())
        .map_err(fs_error)?;
    let mut out = Vec::new();
    File::from(fd).take(1 << 20).read_to_end(&mut out).map_err(io_error)?;
    Ok(out)
}

/// Removes `name` in `dir`, a file or a whole tree, without following symlinks and without
/// recursion (a path can nest thousands of levels; the blocking pool's stacks are small).
/// Returns the bytes and the number of regular files removed, our own hidden files aside.
fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<(u64, u64)> {
    let mut bytes = 0;
    let mut files = 0;
    // As `used` counts: regular files (and their number), sidecars and directories; not the
    // temp files of uploads, which are charged to `reserved`.
    let mut count = |dir: BorrowedFd<'_>, name: &OsStr| {
        let reserved = name.as_bytes().starts_with(RESERVED_PREFIX.as_bytes());
        let sidecar = name.as_bytes().starts_with(PROPS_PREFIX.as_bytes());
        if let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile if !reserved => {
                    bytes += st.st_size.max(0) as u64;
                    files += 1;
                }
                FileType::RegularFile if sidecar => bytes += st.st_size.max(0) as u64,
                FileType::Directory => bytes += st.st_size.max(0) as u64,
                _ => {}
            }
        }
    };
    let open = |dir: BorrowedFd<'_>, name: &OsStr| {
        rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    let top = match open(dir, name) {
        Ok(fd) => fd,
        Err(Errno::NOTDIR) | Err(Errno::LOOP) => {
            count(dir, name);
            rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
            return Ok((bytes, files));
        }
        Err(e) => return Err(e.into()),
    };
    // Each level: its directory, the entries still to remove, and its own name in its parent.
    let entries = list_dir(top.as_fd())?;
    let mut stack = vec![(top, entries, name.to_owned())];
    while let Some((fd, entries, _)) = stack.last_mut() {
        match entries.pop() {
            Some((entry, ft)) => {
                let is_dir = match ft {
                    FileType::Directory => true,
                    FileType::Unknown => rustix::fs::statat(&*fd, &entry, AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory),
                    _ => false,
                };
                if is_dir {
                    let sub = open(fd.as_fd(), &entry)?;
                    let list = list_dir(sub.as_fd())?;
                    stack.push((sub, list, entry));
                } else {
                    count(fd.as_fd(), &entry);
                    rustix::fs::unlinkat(&*fd, &entry, AtFlags::empty())?;
                }
            }
            None => {
                let Some((_, _, own)) = stack.pop() else { break };
                let parent = stack.last().map_or(dir, |(fd, _, _)| fd.as_fd());
                count(parent, &own);
                rustix::fs::unlinkat(parent, &own, AtFlags::REMOVEDIR)?;
            }
        }
    }
    Ok((bytes, files))
}

fn list_dir(dir: BorrowedFd<'_>) -> std::io::Result<Vec<(OsString, FileType)>> {
    let mut reader = rustix::fs::Dir::read_from(dir)?;
    let mut out = Vec::new();
    while let Some(entry) = reader.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push((OsStr::from_bytes(name).to_owned(), entry.file_type()));
    }
    Ok(out)
}

/// A PUT in progress: bytes go to a hidden temp file; `commit` verifies and renames it into
/// place; dropping it uncommitted removes the temp file, so the old version (or nothing) stays.
pub struct Upload {
    store: Arc<Store>,
    dir: OwnedFd,
    name: OsString,
    /// The hidden temp file and its name, once the first bytes (or the commit) created it.
    tmp: Option<(OsString, File)>,
    written: u64,
    expected: Option<u64>,
    /// The size of the file this upload replaces (0 for a new one): only growth past it is
    /// charged.
    replaces: u64,
    /// Bytes charged to the store's `reserved` so far: what was written past `replaces`.
    reserved: u64,
    committed: Option<Meta>,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload").field("name", &self.name).field("written", &self.written).finish()
    }
}

impl Upload {
    pub fn write(&mut self, data: &[u8]) -> FsResult<()> {
        let len = data.len() as u64;
        let total = self.written + len;
        if total > self.store.limits.max_file_size {
            return Err(FsError::TooLarge);
        }
        if self.expected.is_some_and(|e| total > e) {
            return Err(FsError::GeneralFailure);
        }
        let owed = total.saturating_sub(self.replaces);
        if owed > self.reserved {
            self.store.charge(owed - self.reserved)?;
            self.reserved = owed;
        }
        self.tmp_file()?.write_all(data).map_err(io_error)?;
        self.written = total;
        self.store.stats.bytes_in.add(len);
        Ok(())
    }

    fn tmp_file(&mut self) -> FsResult<&mut File> {
        if self.tmp.is_none() {
            self.tmp = Some(self.store.create_temp(&self.dir)?);
        }
        match &mut self.tmp {
            Some((_, file)) => Ok(file),
            None => Err(FsError::GeneralFailure),
        }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Verifies the length, makes the bytes durable and renames the temp file into place.
    pub fn commit(&mut self) -> FsResult<Meta> {
        if let Some(meta) = &self.committed {
            return Ok(meta.clone());
        }
        if self.expected.is_some_and(|e| e != self.written) {
            tracing::warn!(
                file = ?self.name, expected = ?self.expected, received = self.written,
                "upload shorter than its Content-Length; keeping the previous version"
            );
            return Err(FsError::GeneralFailure);
        }
        let store = Arc::clone(&self.store);
        // An empty body has created nothing yet.
        self.tmp_file()?;
        let Some((tmp_name, file)) = &self.tmp else { return Err(FsError::GeneralFailure) };
        store.settle(file)?;
        let replaced = replaced_file_len(&self.dir, &self.name)?;
        rustix::fs::renameat(&self.dir, tmp_name, &self.dir, &self.name).map_err(fs_error)?;
        let st = rustix::fs::fstat(file).map_err(fs_error)?;
        let meta = Meta::from_stat(&st);
        self.committed = Some(meta.clone());
        store.used.fetch_add(self.written, Ordering::Relaxed);
        store.files.fetch_add(1, Ordering::Relaxed);
        if let Some(len) = replaced {
            store.used.fetch_sub(len, Ordering::Relaxed);
            store.files.fetch_sub(1, Ordering::Relaxed);
        }
        store.stats.uploads_completed.inc();
        store.sync_dir(self.dir.as_fd())?;
        Ok(meta)
    }

    /// Metadata of what has been written so far (or of the committed file).
    pub fn meta(&self) -> Meta {
        if let Some(meta) = &self.committed {
            return meta.clone();
        }
        Meta { len: self.written, modified: SystemTime::now(), is_dir: false, ino: 0 }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        self.store.reserved.fetch_sub(self.reserved, Ordering::Relaxed);
        self.store.open_uploads.fetch_sub(1, Ordering::Relaxed);
        if self.committed.is_none() {
            if let Some((tmp_name, _)) = &self.tmp {
                let _ = rustix::fs::unlinkat(&self.dir, tmp_name, AtFlags::empty());
            }
            self.store.stats.uploads_aborted.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> Arc<Store> {
        let limits = Limits { max_file_size: 1 << 20, quota: Some(10_000), min_free_disk: 0 };
        Arc::new(Store::open(dir, true, true, limits).expect("open store"))
    }

    fn rel(s: &str) -> RelPath {
        RelPath::parse(s.as_bytes()).expect("valid path")
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("eaio-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    #[test]
    fn rel_paths_refuse_escapes_and_reserved_names() {
        assert_eq!(rel("/a/b/").segs.len(), 2);
        assert_eq!(RelPath::parse(b"/a/../b"), Err(FsError::Forbidden));
        assert_eq!(RelPath::parse(b"/a\0b"), Err(FsError::Forbidden));
        assert_eq!(RelPath::parse(b"/a\\..\\b"), Err(FsError::Forbidden));
        assert_eq!(RelPath::parse(b"/.exec-allinone-tmp-1"), Err(FsError::NotFound));
    }

    #[test]
    fn aborted_upload_keeps_previous_version_and_leaves_no_temp() {
        let dir = tempdir("abort");
        let s = store(&dir);
        let mut up = s.begin_upload(&rel("/f"), Some(3), true, false).unwrap();
        up.write(b"old").unwrap();
        up.commit().unwrap();
        drop(up);
        let mut up = s.begin_upload(&rel("/f"), Some(5), true, false).unwrap();
        up.write(b"ne").unwrap();
        assert_eq!(up.commit().err(), Some(FsError::GeneralFailure), "short body must not commit");
        drop(up);
        assert_eq!(std::fs::read(dir.join("f")).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "temp file left behind");
        assert_eq!(s.used_bytes(), 3);
    }

    #[test]
    fn quota_and_size_limits() {
        let dir = tempdir("quota");
        let s = store(&dir);
        assert_eq!(s.begin_upload(&rel("/big"), Some(20_000), true, false).err(), Some(FsError::InsufficientStorage));
        assert_eq!(s.begin_upload(&rel("/huge"), Some(2 << 20), true, false).err(), Some(FsError::TooLarge));
        let mut up = s.begin_upload(&rel("/chunked"), None, true, false).unwrap();
        assert_eq!(up.write(&[0u8; 10_001]), Err(FsError::InsufficientStorage));
    }

    #[test]
    fn quota_is_charged_as_bytes_arrive_and_a_replacement_only_for_its_growth() {
        let dir = tempdir("quota-arrive");
        let s = store(&dir);
        // Two slow uploads that declared 9 000 bytes each and sent 100: the store holds
        // nothing, so a third recorder still gets in.
        let mut slow: Vec<Upload> = (0..2)
            .map(|i| {
                let mut up = s.begin_upload(&rel(&format!("/slow{i}")), Some(9_000), true, false).unwrap();
                up.write(&[1; 100]).unwrap();
                up
            })
            .collect();
        let mut up = s.begin_upload(&rel("/f"), Some(8_000), true, false).expect("declared bytes are not charged");
        up.write(&vec![2; 8_000]).unwrap();
        up.commit().unwrap();
        drop(up);
        // What arrives is charged: the slow ones cannot both finish past the quota.
        assert_eq!(slow[0].write(&vec![1; 2_000]), Err(FsError::InsufficientStorage));
        slow.clear();
        assert_eq!(s.used_bytes(), 8_000);
        // Replacing the 8 000-byte file with 9 000 bytes needs 1 000 more, not 9 000.
        let mut up = s.begin_upload(&rel("/f"), Some(9_000), true, false).expect("only the growth counts");
        up.write(&vec![3; 9_000]).unwrap();
        up.commit().unwrap();
        drop(up);
        assert_eq!(s.used_bytes(), 9_000);
        assert_eq!(s.begin_upload(&rel("/g"), Some(2_000), true, false).err(), Some(FsError::InsufficientStorage));
    }

    #[test]
    fn directories_and_dead_properties_count_against_the_quota() {
        let dir = tempdir("quota-meta");
        let s = store(&dir);
        let mut made = 0;
        let refused = loop {
            match s.create_dir(&rel(&format!("/d{made}"))) {
                Ok(()) => made += 1,
                Err(e) => break e,
            }
            assert!(made < 100_000, "MKCOL never reached the quota");
        };
        assert_eq!(refused, FsError::InsufficientStorage);
        assert!(s.metadata(&rel(&format!("/d{made}"))).is_err(), "the refused directory is not left behind");
        for i in 0..made {
            s.remove_dir(&rel(&format!("/d{i}"))).unwrap();
        }
        assert_eq!(s.used_bytes(), 0, "removing them gives the space back");

        for name in ["/a", "/b", "/c"] {
            s.begin_upload(&rel(name), Some(0), true, false).unwrap().commit().unwrap();
        }
        let props = vec![b'p'; 4_000];
        s.write_props(&rel("/a"), &props).unwrap();
        s.write_props(&rel("/b"), &props).unwrap();
        assert_eq!(s.write_props(&rel("/c"), &props), Err(FsError::InsufficientStorage));
        assert_eq!(s.used_bytes(), 8_000);
        s.write_props(&rel("/a"), b"").unwrap();
        s.remove_file(&rel("/b")).unwrap();
        assert_eq!(s.used_bytes(), 0, "dropped properties give the space back");
    }

    #[test]
    fn symlinks_are_never_followed() {
        let dir = tempdir("symlink");
        let outside = tempdir("symlink-outside");
        std::fs::write(outside.join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), dir.join("file-link")).unwrap();
        let s = store(&dir);
        assert_eq!(s.metadata(&rel("/link")).err(), Some(FsError::NotFound));
        assert_eq!(s.open_read(&rel("/link/secret")).err(), Some(FsError::NotFound));
        assert_eq!(s.open_read(&rel("/file-link")).err(), Some(FsError::NotFound));
        assert!(s.begin_upload(&rel("/link/new"), Some(1), true, false).is_err());
        assert!(s.begin_upload(&rel("/file-link"), Some(1), true, false).is_err());
        assert!(s.read_dir(&rel("/")).unwrap().is_empty());
        assert!(!outside.join("new").exists());
        assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"x");
    }

    #[test]
    fn a_tree_set_aside_is_restored_or_removed_whole_even_at_path_max_depth() {
        let dir = tempdir("aside");
        let limits = Limits { max_file_size: 1 << 20, quota: None, min_free_disk: 0 };
        let s = Arc::new(Store::open(&dir, true, true, limits).expect("open store"));
        s.create_dir(&rel("/d")).unwrap();
        let mut path = String::from("/d");
        for _ in 0..1900 {
            path.push_str("/n");
            s.create_dir(&rel(&path)).unwrap();
        }
        for name in ["/d/f", &format!("{path}/deep")] {
            let mut up = s.begin_upload(&rel(name), Some(3), true, false).unwrap();
            up.write(b"abc").unwrap();
            up.commit().unwrap();
        }
        s.write_props(&rel("/d/f"), b"[]x").unwrap();
        let used = s.used_bytes();
        assert!(used > 6 + 3, "directories and the sidecar count too: {used}");
        assert_eq!(s.file_count(), 2);

        let aside = s.set_aside(&rel("/d")).unwrap();
        assert_eq!(s.metadata(&rel("/d")).err(), Some(FsError::NotFound), "gone from the namespace at once");
        assert!(s.read_dir(&rel("/")).unwrap().is_empty(), "the aside is hidden");
        assert!(!s.has_props(&rel("/d/f")));
        s.restore_aside(&rel("/"), &aside, &rel("/d")).unwrap();
        assert_eq!(s.open_read(&rel(&format!("{path}/deep"))).unwrap().1.len, 3);
        assert!(s.has_props(&rel("/d/f")), "dead properties come back with it");
        assert_eq!(s.used_bytes(), used);

        let aside = s.set_aside(&rel("/d")).unwrap();
        s.discard_aside(&rel("/"), &aside).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing left, hidden or not");
        assert_eq!((s.used_bytes(), s.file_count()), (0, 0));
        assert!(!s.has_props(&rel("/d/f")));
        assert_eq!(s.set_aside(&rel("/")).err(), Some(FsError::Forbidden), "the root has no parent to hide in");
        assert_eq!(s.discard_aside(&rel("/"), OsStr::new("d")).err(), Some(FsError::Forbidden), "only asides");
    }

    #[test]
    fn props_index_follows_writes_moves_copies_and_deletes() {
        let dir = tempdir("props");
        let s = store(&dir);
        for name in ["/a", "/b"] {
            let mut up = s.begin_upload(&rel(name), Some(1), true, false).unwrap();
            up.write(b"x").unwrap();
            up.commit().unwrap();
        }
        s.create_dir(&rel("/d")).unwrap();
        assert!(!s.has_props(&rel("/a")));
        s.write_props(&rel("/a"), b"[]x").unwrap();
        assert!(s.has_props(&rel("/a")));
        s.rename(&rel("/a"), &rel("/d/a")).unwrap();
        assert!(!s.has_props(&rel("/a")) && s.has_props(&rel("/d/a")));
        s.copy(&rel("/d/a"), &rel("/b")).unwrap();
        assert!(s.has_props(&rel("/b")));
        s.rename(&rel("/d"), &rel("/e")).unwrap();
        assert!(s.has_props(&rel("/e/a")) && !s.has_props(&rel("/d/a")));
        drop(s);
        let s = store(&dir);
        assert!(s.has_props(&rel("/e/a")) && s.has_props(&rel("/b")), "rebuilt at start");
        s.remove_file(&rel("/e/a")).unwrap();
        assert!(!s.has_props(&rel("/e/a")));
        assert_eq!(s.read_props(&rel("/b")).unwrap(), b"[]x");
    }

    #[test]
    fn startup_sweeps_temp_files_and_counts_usage() {
        let dir = tempdir("sweep");
        std::fs::write(dir.join(".exec-allinone-tmp-dead"), b"partial").unwrap();
        std::fs::write(dir.join("kept"), b"12345").unwrap();
        let s = store(&dir);
        assert!(!dir.join(".exec-allinone-tmp-dead").exists());
        assert_eq!(s.used_bytes(), 5);
        assert_eq!(s.file_count(), 1);
    }
}
