//! Reading head records with read-ahead.
//!
//! The head moves forward through a segment record by record, so one buffered reader that
//! skips forward within its buffer turns the per-entry seek + two reads into, most of the time,
//! a copy from memory.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// Bytes read ahead of the head.
const READ_AHEAD: usize = 64 * 1024;

/// A buffered reader of one segment that knows its position.
#[derive(Debug)]
pub(crate) struct SegmentReader {
    segment: u64,
    file: BufReader<File>,
    /// The position of the next byte `file` yields; `None` after an error (unknown).
    pos: Option<u64>,
}

impl SegmentReader {
    pub(crate) fn open(path: &Path, segment: u64) -> io::Result<Self> {
        Ok(SegmentReader {
            segment,
            file: BufReader::with_capacity(READ_AHEAD, File::open(path)?),
            pos: Some(0),
        })
    }

    /// The base of the segment this reads.
    pub(crate) fn segment(&self) -> u64 {
        self.segment
    }

    fn seek_to(&mut self, offset: u64) -> io::Result<()> {
        match self.pos {
            Some(p) if p == offset => Ok(()),
            // Forward within reach: keeps whatever of the buffer is still ahead.
            Some(p) if offset > p && offset - p <= READ_AHEAD as u64 => {
                self.file.seek_relative((offset - p) as i64)
            }
            _ => self.file.seek(SeekFrom::Start(offset)).map(|_| ()),
        }
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    ///
    /// Bytes in the buffer never go stale: records are immutable once written, and the only
    /// truncation (of a torn tail) happens on open, before any reader exists.
    pub(crate) fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let r = self
            .seek_to(offset)
            .and_then(|()| self.file.read_exact(buf));
        self.pos = r.as_ref().ok().map(|()| offset + buf.len() as u64);
        r
    }

    /// Reads up to `len` bytes at `offset` (fewer at the end of the file).
    pub(crate) fn read_up_to_at(&mut self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let r = self
            .seek_to(offset)
            .and_then(|()| (&mut self.file).take(len).read_to_end(&mut out));
        self.pos = r.as_ref().ok().map(|n| offset + *n as u64);
        r.map(|_| out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_forward_backward_and_after_appends() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s");
        let mut w = File::create(&path).unwrap();
        w.write_all(b"0123456789").unwrap();
        let mut r = SegmentReader::open(&path, 7).unwrap();
        assert_eq!(r.segment(), 7);
        let mut b = [0u8; 3];
        r.read_exact_at(2, &mut b).unwrap();
        assert_eq!(&b, b"234");
        r.read_exact_at(7, &mut b).unwrap();
        assert_eq!(&b, b"789");
        r.read_exact_at(0, &mut b).unwrap();
        assert_eq!(&b, b"012");
        // Appended after the buffer was filled: still read correctly.
        w.write_all(b"abcdef").unwrap();
        r.read_exact_at(9, &mut b).unwrap();
        assert_eq!(&b, b"9ab");
        assert_eq!(r.read_up_to_at(14, 10).unwrap(), b"ef");
        assert!(r.read_exact_at(15, &mut b).is_err());
        r.read_exact_at(3, &mut b).unwrap();
        assert_eq!(&b, b"345");
    }
}
