//! Request bodies past `client_body_buffer_size`, kept in an unnamed temp file (nginx's
//! `client_body_temp`) instead of memory, so a thousand slow clients cost disk, not RAM. The
//! file has no name from the start (`O_TMPFILE`, or created and unlinked at once where the
//! file system lacks it): nothing is left behind by a crash. It is written and read inline on
//! the worker, as nginx does: these are page-cache copies.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

/// A request body as the lb holds it for every peer it tries, or (`request_buffering =
/// false`) passes through as it arrives, for one peer only.
#[derive(Debug)]
pub enum Held {
    Memory(bytes::Bytes),
    /// Past `client_body_buffer_size`.
    File(Spool),
    /// nginx's `proxy_request_buffering off`: the client's bytes, `len` of them, handed over
    /// by the front as they come.
    /// Boxed: the buffered path, the common one, keeps a small `Held`.
    Stream(Box<Streamed>),
}

#[derive(Debug)]
pub struct Streamed {
    pub len: u64,
    pub chunks: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<bytes::Bytes>>,
}

impl Held {
    pub fn len(&self) -> u64 {
        match self {
            Held::Memory(b) => b.len() as u64,
            Held::File(s) => s.len(),
            Held::Stream(s) => s.len,
        }
    }
}

/// A request body in a temp file, appended as it arrives, then read from the start for each
/// peer tried.
#[derive(Debug)]
pub struct Spool {
    file: File,
    len: u64,
}

impl Spool {
    /// An empty body in `dir`.
    pub fn create(dir: &Path) -> io::Result<Spool> {
        let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
        let file = match rustix::fs::open(dir, flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => File::from(fd),
            Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR | rustix::io::Errno::INVAL) => {
                let path = dir.join(format!(".exec-allinone-body-{:016x}", rand::random::<u64>()));
                let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
                std::fs::remove_file(&path)?;
                file
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Spool { file, len: 0 })
    }

    pub fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.len += data.len() as u64;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Reads from byte `offset` into `buf`; 0 at the end.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let want = buf.len().min((self.len - offset) as usize);
        self.file.read_at(&mut buf[..want], offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spooled_body_reads_back_whole_from_any_offset_and_has_no_name() {
        let dir = std::env::temp_dir().join(format!("eaio-spool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut spool = Spool::create(&dir).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in data.chunks(7_000) {
            spool.append(chunk).unwrap();
        }
        assert_eq!(spool.len(), data.len() as u64);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "the temp file has no name");
        for start in [0u64, 1, 65_536, 99_999] {
            let mut out = Vec::new();
            let mut buf = vec![0; 4096];
            let mut off = start;
            loop {
                let n = spool.read_at(&mut buf, off).unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
                off += n as u64;
            }
            assert_eq!(out, &data[start as usize..]);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
