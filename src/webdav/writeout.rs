//! How a temp file's bytes are made safe to publish by rename: on a journaled ext4, written
//! out to the disk without a journal commit of their own, so a PUT costs one commit and one
//! disk flush (the directory fsync after the rename) instead of two.
//!
//! Why that is enough on ext4 with a journal: `sync_file_range` with WAIT_AFTER returns once
//! the pages are on the device (perhaps in its volatile cache) and their block allocation,
//! unwritten-extent conversion and on-disk size are recorded in a journal transaction (ext4
//! clears the writeback bit only after that conversion). The rename comes later, so it is in
//! the same or a later transaction; jbd2 commits transactions in order and flushes the device
//! cache before each commit record. A crash therefore shows the new name only with the whole
//! file behind it. Elsewhere (XFS, btrfs, ext4 without a journal, a mount below the root)
//! none of this has been checked, and `fdatasync` is used as before.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

const EXT4_SUPER_MAGIC: u64 = 0xEF53;

/// The device of `dir` if it is an ext4 file system with a journal (`/proc/fs/jbd2` lists
/// one for it), else `None`.
pub fn journaled_ext4(dir: BorrowedFd<'_>) -> Option<u64> {
    let fs = rustix::fs::fstatfs(dir).ok()?;
    if fs.f_type as u64 != EXT4_SUPER_MAGIC {
        return None;
    }
    let dev = rustix::fs::fstat(dir).ok()?.st_dev;
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent")).ok()?;
    let journals = std::fs::read_dir(Path::new("/proc/fs/jbd2")).ok()?;
    let names = journals.flatten().filter_map(|e| e.file_name().into_string().ok());
    has_journal(&uevent, names).then_some(dev)
}

/// Whether the device that `uevent` describes is among jbd2's journals, which it names
/// "<device>-<journal inode>" with '/' in the device name turned into '!'.
fn has_journal(uevent: &str, mut journals: impl Iterator<Item = String>) -> bool {
    let Some(name) = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME=")) else { return false };
    let prefix = format!("{}-", name.replace('/', "!"));
    journals.any(|j| j.starts_with(&prefix))
}

/// Writes out `file`'s dirty pages and waits for them, without forcing a journal commit.
#[allow(unsafe_code)]
pub fn write_out(file: &File) -> std::io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a plain system call on a descriptor that `file` keeps open across the call; no
    // memory is passed.
    let rc = unsafe { libc::sync_file_range(file.as_fd().as_raw_fd(), 0, 0, flags) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter().map(|s| s.to_string()).collect::<Vec<_>>().into_iter()
    }

    #[test]
    fn a_journal_is_matched_by_its_device_name() {
        let vda = "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n";
        assert!(has_journal(vda, names(&["loop0-8", "vda-8"])));
        assert!(!has_journal(vda, names(&["vda1-8", "loop0-8"])), "vda1's journal is not vda's");
        assert!(!has_journal(vda, names(&[])), "ext4 without a journal");
        assert!(has_journal("DEVNAME=cciss/c0d0\n", names(&["cciss!c0d0-8"])));
        assert!(!has_journal("MAJOR=7\n", names(&["loop0-8"])), "no device name, no claim");
    }

    #[test]
    fn only_ext4_is_trusted_to_order_the_write_out() {
        // tmpfs and procfs are not ext4, whatever jbd2 lists.
        for dir in ["/dev/shm", "/proc"] {
            if let Ok(d) = std::fs::File::open(dir) {
                assert_eq!(journaled_ext4(d.as_fd()), None, "{dir}");
            }
        }
    }

    #[test]
    fn write_out_leaves_the_bytes_readable() {
        let path = std::env::temp_dir().join(format!("eaio-writeout-{}", std::process::id()));
        let mut file = File::create(&path).expect("create");
        std::io::Write::write_all(&mut file, &[7u8; 100_000]).expect("write");
        write_out(&file).expect("sync_file_range");
        assert_eq!(std::fs::read(&path).expect("read"), vec![7u8; 100_000]);
        std::fs::remove_file(&path).expect("remove");
    }
}
