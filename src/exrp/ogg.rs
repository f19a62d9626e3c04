//! Is this file a whole Ogg/Opus recording? Walks every Ogg page (capture pattern, CRC, sizes)
//! so a truncated or corrupt upload is caught before it is injected: the first page must carry
//! `OpusHead` with the beginning-of-stream flag, the last must end the stream, and the file
//! must end exactly where the last page does.

use std::io::{BufReader, Read};
use std::path::Path;

const HEADER: usize = 27;
const FLAG_BOS: u8 = 0x02;
const FLAG_EOS: u8 = 0x04;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OggInfo {
    pub pages: u64,
    pub channels: u8,
    pub sample_rate: u32,
}

/// Checks the file; the error says what is wrong, for the dead job's reason.
pub fn check_file(path: &Path) -> Result<OggInfo, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read the fetched file: {e}"))?;
    check(BufReader::with_capacity(64 << 10, file))
}

pub fn check(mut input: impl Read) -> Result<OggInfo, String> {
    let mut header = [0u8; HEADER];
    let mut segments = [0u8; 255];
    let mut payload = Vec::with_capacity(64 << 10);
    let mut info = OggInfo { pages: 0, channels: 0, sample_rate: 0 };
    let mut offset: u64 = 0;
    let mut last_flags = 0u8;
    loop {
        let n = read_full(&mut input, &mut header)?;
        match n {
            0 if info.pages > 0 => break,
            0 => return Err("empty file: not an Ogg/Opus recording".into()),
            _ => {}
        }
        if header[..n.min(4)] != b"OggS"[..n.min(4)] {
            return Err(if info.pages == 0 {
                "not an Ogg file (no OggS at the start)".into()
            } else {
                format!("corrupt: no Ogg page at byte {offset}")
            });
        }
        if n < HEADER {
            return Err(format!("truncated: the file ends inside an Ogg page header at byte {offset}"));
        }
        if header[4] != 0 {
            return Err(format!("unsupported Ogg version {} at byte {offset}", header[4]));
        }
        let flags = header[5];
        let count = header[26] as usize;
        if read_full(&mut input, &mut segments[..count])? < count {
            return Err(format!("truncated: the file ends inside the Ogg page at byte {offset}"));
        }
        let len: usize = segments[..count].iter().map(|&s| s as usize).sum();
        payload.resize(len, 0);
        if read_full(&mut input, &mut payload)? < len {
            return Err(format!("truncated: the file ends inside the Ogg page at byte {offset}"));
        }
        let stored = u32::from_le_bytes([header[22], header[23], header[24], header[25]]);
        header[22..26].fill(0);
        let crc = crc_update(crc_update(crc_update(0, &header), &segments[..count]), &payload);
        if crc != stored {
            return Err(format!("corrupt: bad checksum in the Ogg page at byte {offset}"));
        }
        if info.pages == 0 {
            if flags & FLAG_BOS == 0 {
                return Err("the first Ogg page does not begin a stream".into());
            }
            if payload.len() < 19 || &payload[..8] != b"OpusHead" {
                return Err("an Ogg file, but not Opus (no OpusHead in the first page)".into());
            }
            if payload[8] >> 4 != 0 {
                return Err(format!("unsupported Opus header version {}", payload[8]));
            }
            info.channels = payload[9];
            info.sample_rate = u32::from_le_bytes([payload[12], payload[13], payload[14], payload[15]]);
        }
        info.pages += 1;
        offset += (HEADER + count + len) as u64;
        last_flags = flags;
    }
    if last_flags & FLAG_EOS == 0 {
        return Err(format!("truncated: the last Ogg page (ending at byte {offset}) does not end the stream"));
    }
    Ok(info)
}

fn read_full(input: &mut impl Read, buf: &mut [u8]) -> Result<usize, String> {
    let mut done = 0;
    while done < buf.len() {
        match input.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read the fetched file: {e}")),
        }
    }
    Ok(done)
}

/// Ogg's CRC-32: polynomial 0x04c11db7, not reflected, initial value and final xor 0.
fn crc_update(mut crc: u32, data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut r = (i as u32) << 24;
            for _ in 0..8 {
                r = if r & 0x8000_0000 != 0 { (r << 1) ^ 0x04c1_1db7 } else { r << 1 };
            }
            *slot = r;
        }
        t
    });
    for &b in data {
        crc = (crc << 8) ^ table[((crc >> 24) as u8 ^ b) as usize];
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = include_bytes!("../../assets/sample.opus");

    #[test]
    fn the_sample_passes() {
        let info = check(SAMPLE).unwrap();
        assert_eq!((info.channels, info.sample_rate), (1, 8000));
        assert!(info.pages >= 3);
        // A chain of two streams is still a whole recording.
        assert!(check(&[SAMPLE, SAMPLE].concat()[..]).is_ok());
    }

    #[test]
    fn truncated_corrupt_and_foreign_files_are_named() {
        for cut in [0, 10, 100, SAMPLE.len() / 2, SAMPLE.len() - 1] {
            let err = check(&SAMPLE[..cut]).unwrap_err();
            assert!(err.contains("truncated") || err.contains("empty"), "cut at {cut}: {err}");
        }
        let mut flipped = SAMPLE.to_vec();
        flipped[SAMPLE.len() / 2] ^= 0x10;
        assert!(check(&flipped[..]).unwrap_err().contains("corrupt"));
        assert!(check(&b"RIFF....WAVEfmt "[..]).unwrap_err().contains("not an Ogg"));
        let mut trailing = SAMPLE.to_vec();
        trailing.extend_from_slice(b"junk at the end of the file");
        assert!(check(&trailing[..]).is_err());
    }
}
