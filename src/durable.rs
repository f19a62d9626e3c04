//! Durable records: small documents kept one file per key in a directory, each replaced
//! atomically (temp file, fsync, rename, directory fsync) so that a kill -9 at any moment leaves
//! the old version or the new one, never a mix. The state of excp (and exrp's queue) lives here.
//! Every call blocks: async callers go through `spawn_blocking`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

/// Temp files start with this; they are never a record and are swept at open.
const TEMP_PREFIX: &str = ".tmp-";

#[derive(Debug)]
pub struct RecordDir {
    dir: PathBuf,
    /// Held open to fsync the directory after renames and removals.
    handle: File,
    next_temp: AtomicU64,
    fsync: bool,
    dir_sync: GroupSync,
}

/// What a replaced file is made durable with before its rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Nothing (`fsync = false`).
    No,
    /// `fdatasync`: the bytes and what reading them needs (the records: nothing else of the
    /// inode matters, and it spares a journal commit per record).
    Data,
    /// `fsync`: the inode too (a mode or owner the file must keep).
    All,
}

/// The one way a file is replaced whole: `fill` writes a new file at `temp` (created with
/// `mode` less the umask, never an existing file), which is flushed as `flush` says and
/// renamed over `target`. On any failure `temp` is removed and `target` is as it was. The
/// rename's own durability (an fsync of the directory) is the caller's, so that several
/// replacements can share one.
pub fn replace_file(
    temp: &Path,
    target: &Path,
    mode: u32,
    flush: Flush,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(temp)?;
        fill(&mut file)?;
        match flush {
            Flush::No => {}
            Flush::Data => file.sync_data()?,
            Flush::All => file.sync_all()?,
        }
        drop(file);
        fs::rename(temp, target)
    })();
    if result.is_err() {
        let _ = fs::remove_file(temp);
    }
    result
}

/// A temp-file name no other thread or process uses at the same moment: `.{name}.{pid}.{n}.tmp`.
pub fn temp_name(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(".{name}.{}.{}.tmp", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Group commit for one directory's fsync. Renames and removals that finished before an fsync
/// of their directory began are durable once it returns, so callers that arrive while one is
/// running wait for the next and share it: under load, one fsync makes many changes durable
/// instead of one each. Every caller still returns only once an fsync that began after its
/// change has succeeded (or with the error of its own).
#[derive(Debug, Default)]
pub struct GroupSync {
    state: Mutex<SyncState>,
    turn: Condvar,
}

#[derive(Debug, Default)]
struct SyncState {
    /// Callers so far; a caller's number is its place.
    asked: u64,
    /// Every caller up to this number is durable.
    synced: u64,
    running: bool,
}

impl GroupSync {
    /// Makes the caller's finished changes to the directory durable: `fsync` is the directory's
    /// fsync, run by whichever caller leads the next group.
    pub fn sync(&self, fsync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.asked += 1;
        let mine = state.asked;
        loop {
            if state.synced >= mine {
                return Ok(());
            }
            if !state.running {
                // Lead: one fsync for everyone who asked so far.
                state.running = true;
                let upto = state.asked;
                drop(state);
                let result = fsync();
                let mut after = self.state.lock().unwrap_or_else(|p| p.into_inner());
                after.running = false;
                if result.is_ok() {
                    after.synced = after.synced.max(upto);
                }
                // On failure the others lead in turn, each seeing its own error.
                self.turn.notify_all();
                return result;
            }
            state = self.turn.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Keys are file names: short, printable, no separators, never hidden.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 128
        && !key.starts_with('.')
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn bad_key(key: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("invalid record key {key:?}"))
}

impl RecordDir {
    /// Opens (creating) the directory and removes temp files a crash left behind.
    pub fn open(dir: &Path, fsync: bool) -> io::Result<RecordDir> {
        fs::create_dir_all(dir)?;
        let handle = File::open(dir)?;
        let records = RecordDir {
            dir: dir.to_path_buf(),
            handle,
            next_temp: AtomicU64::new(0),
            fsync,
            dir_sync: GroupSync::default(),
        };
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(records)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Replaces the record `key` with `bytes`, durably when fsync is on.
    pub fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        if !valid_key(key) {
            return Err(bad_key(key));
        }
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let temp = self.dir.join(format!("{TEMP_PREFIX}{}-{n}", std::process::id()));
        let flush = if self.fsync { Flush::Data } else { Flush::No };
        replace_file(&temp, &self.dir.join(key), 0o666, flush, |file| file.write_all(bytes))?;
        self.sync_dir()
    }

    pub fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        if !valid_key(key) {
            return Err(bad_key(key));
        }
        match fs::read(self.dir.join(key)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes the record; a missing one is not an error.
    pub fn remove(&self, key: &str) -> io::Result<()> {
        if !valid_key(key) {
            return Err(bad_key(key));
        }
        match fs::remove_file(self.dir.join(key)) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every record key, sorted.
    pub fn keys(&self) -> io::Result<Vec<String>> {
        let mut keys = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            if let Some(name) = name.to_str()
                && valid_key(name)
            {
                keys.push(name.to_string());
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn sync_dir(&self) -> io::Result<()> {
        if self.fsync { self.dir_sync.sync(|| self.handle.sync_all()) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("eaio-durable-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn group_sync_shares_fsyncs_and_each_caller_waits_for_one_begun_after_its_change() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        let group = Arc::new(GroupSync::default());
        // One clock for changes and fsync starts; `durable` is the latest start of a finished
        // fsync, so a caller is covered once `durable` passed its change.
        let clock = Arc::new(AtomicU64::new(1));
        let durable = Arc::new(AtomicU64::new(0));
        let fsyncs = Arc::new(AtomicU64::new(0));
        let fail_once = Arc::new(AtomicBool::new(true));
        let callers: Vec<_> = (0..16)
            .map(|_| {
                let (group, clock, durable, fsyncs, fail_once) =
                    (group.clone(), clock.clone(), durable.clone(), fsyncs.clone(), fail_once.clone());
                std::thread::spawn(move || {
                    let mut errors = 0;
                    for _ in 0..50 {
                        let change = clock.fetch_add(1, Ordering::SeqCst);
                        let result = group.sync(|| {
                            let start = clock.fetch_add(1, Ordering::SeqCst);
                            fsyncs.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_micros(200));
                            if fail_once.swap(false, Ordering::SeqCst) {
                                return Err(io::Error::other("EIO"));
                            }
                            durable.fetch_max(start, Ordering::SeqCst);
                            Ok(())
                        });
                        match result {
                            Ok(()) => {
                                assert!(durable.load(Ordering::SeqCst) > change, "returned before an fsync covered it")
                            }
                            Err(_) => errors += 1,
                        }
                    }
                    errors
                })
            })
            .collect();
        let errors: u32 = callers.into_iter().map(|c| c.join().unwrap()).sum();
        // The one failed fsync failed its leader only; the rest were covered by later ones.
        assert_eq!(errors, 1);
        let n = fsyncs.load(Ordering::SeqCst);
        assert!(n < 16 * 50, "{n} fsyncs for 800 changes: nothing was shared");
    }

    #[test]
    fn put_get_replace_remove_list() {
        let dir = temp_dir("basic");
        let r = RecordDir::open(&dir, true).unwrap();
        assert_eq!(r.get("a").unwrap(), None);
        r.put("a", b"one").unwrap();
        r.put("b.json", b"two").unwrap();
        r.put("a", b"three").unwrap();
        assert_eq!(r.get("a").unwrap().as_deref(), Some(&b"three"[..]));
        assert_eq!(r.keys().unwrap(), ["a", "b.json"]);
        r.remove("a").unwrap();
        r.remove("a").unwrap();
        assert_eq!(r.keys().unwrap(), ["b.json"]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn keys_are_refused_when_they_could_escape_or_hide() {
        let dir = temp_dir("keys");
        let r = RecordDir::open(&dir, false).unwrap();
        for key in ["", "../x", "a/b", ".hidden", "nul\0", &"k".repeat(129), "sp ace"] {
            assert!(r.put(key, b"x").is_err(), "{key:?}");
            assert!(r.get(key).is_err(), "{key:?}");
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn temp_files_left_by_a_crash_are_swept_and_never_listed() {
        let dir = temp_dir("sweep");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(".tmp-999-1"), b"half").unwrap();
        let r = RecordDir::open(&dir, false).unwrap();
        assert!(r.keys().unwrap().is_empty());
        assert!(!dir.join(".tmp-999-1").exists());
        let _ = fs::remove_dir_all(&dir);
    }
}

/// Whether a role's state directory can be written now, for `/health`: DOWN from a failed
/// write until a write succeeds. `access(2)` alone says "writable" on a full disk, so a
/// failure is remembered, and while it stands each health check tries a small probe write
/// (with fsync), so the role comes back UP once there is room again, traffic or not.
#[derive(Debug)]
pub struct WriteHealth {
    dir: PathBuf,
    failure: std::sync::Mutex<Option<String>>,
}

impl WriteHealth {
    pub fn new(dir: &Path) -> WriteHealth {
        WriteHealth { dir: dir.to_path_buf(), failure: std::sync::Mutex::new(None) }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A write of the role's state succeeded.
    pub fn ok(&self) {
        let mut slot = self.slot();
        if let Some(was) = slot.take() {
            tracing::info!(dir = %self.dir.display(), was = %was, "state can be written again");
        }
    }

    /// A write of the role's state failed with `why`.
    pub fn failed(&self, why: impl std::fmt::Display) {
        let mut slot = self.slot();
        if slot.is_none() {
            tracing::error!(dir = %self.dir.display(), error = %why, "state cannot be written; health is DOWN");
        }
        *slot = Some(why.to_string());
    }

    /// The failure that stands, without a probe (state kept elsewhere than `dir`).
    pub fn failure(&self) -> Option<String> {
        self.slot().clone()
    }

    /// `Err(why)` while the state cannot be written. Blocks for one small write while a
    /// failure stands.
    pub fn check(&self) -> Result<(), String> {
        if let Err(e) = rustix::fs::access(&self.dir, rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK) {
            return Err(format!("{}: {e}", self.dir.display()));
        }
        let Some(why) = self.slot().clone() else { return Ok(()) };
        match probe(&self.dir) {
            Ok(()) => {
                self.ok();
                Ok(())
            }
            Err(e) => Err(format!("{why} (probe: {e})")),
        }
    }
}

/// Writes, syncs and removes a small file in `dir`.
fn probe(dir: &Path) -> io::Result<()> {
    let path = dir.join(format!("{TEMP_PREFIX}health-probe-{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&path)?;
        f.write_all(&[0u8; 512])?;
        f.sync_all()
    })();
    let _ = fs::remove_file(&path);
    result
}

/// State on disk written by a newer exec-allinone than this one. It is refused before
/// anything reads or writes it (exit 78), so rolling back a release never damages state the
/// newer one wrote.
#[derive(Debug, thiserror::Error)]
#[error(
    "{what} is in format {found}; this exec-allinone knows formats up to {known}, so a newer release wrote it. \
     Nothing was changed: run that release again, or restore the state saved before the upgrade"
)]
pub struct NewerState {
    pub what: String,
    pub found: u32,
    pub known: u32,
}

/// The format version of a state directory, kept in `<dir>/FORMAT` ("<n>\n"). Checked before
/// anything else touches the directory; a directory without the file is format 1 (what every
/// release before versioning wrote) and gets the file.
pub fn check_format(dir: &Path, what: &str, known: u32) -> anyhow::Result<()> {
    use anyhow::Context;
    let file = dir.join("FORMAT");
    let found = match fs::read_to_string(&file) {
        Ok(text) => text
            .trim()
            .parse::<u32>()
            .with_context(|| format!("{} does not hold a format number: {:?}", file.display(), text.trim()))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 1,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    if found > known {
        return Err(NewerState { what: what.to_string(), found, known }.into());
    }
    if found < known || !file.exists() {
        // Migrations from `found` to `known` go here when a format changes; format 1 is the
        // only one so far.
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp = dir.join(format!("{TEMP_PREFIX}FORMAT"));
        let mut f = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        writeln!(f, "{known}")?;
        f.sync_all()?;
        fs::rename(&tmp, &file)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
