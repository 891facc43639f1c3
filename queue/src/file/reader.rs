//! Reading head records with read-ahead.
//!
//! The head moves forward through a segment record by record, so one buffered reader that
//! serves reads from a window of the file turns the per-entry seek + two reads into, most of
//! the time, a copy from memory.

use std::io;

use super::fs::Fs;

/// Bytes read ahead of the head.
const READ_AHEAD: usize = 64 * 1024;

/// A buffered reader of one segment.
#[derive(Debug)]
pub(crate) struct SegmentReader {
    segment: u64,
    name: String,
    /// Bytes `start..start + buf.len()` of the file, as last read.
    buf: Vec<u8>,
    start: u64,
}

impl SegmentReader {
    pub(crate) fn new(name: String, segment: u64) -> Self {
        SegmentReader {
            segment,
            name,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// The base of the segment this reads.
    pub(crate) fn segment(&self) -> u64 {
        self.segment
    }

    /// Reads up to `out.len()` bytes at `offset`; fewer only at the end of the file.
    ///
    /// Bytes in the window never go stale: records are immutable once written, and the only
    /// truncations (of a torn tail on open, of a failed batch) happen before any reader exists
    /// or when the queue has failed and reads no more.
    fn read_at(&mut self, fs: &mut dyn Fs, offset: u64, out: &mut [u8]) -> io::Result<usize> {
        let end = self.start + self.buf.len() as u64;
        if offset >= self.start && offset.saturating_add(out.len() as u64) <= end {
            let at = (offset - self.start) as usize;
            out.copy_from_slice(&self.buf[at..at + out.len()]);
            return Ok(out.len());
        }
        if out.len() >= READ_AHEAD {
            return fs.read_at(&self.name, offset, out);
        }
        self.buf.resize(READ_AHEAD, 0);
        self.start = offset;
        match fs.read_at(&self.name, offset, &mut self.buf) {
            Ok(n) => {
                self.buf.truncate(n);
                let k = out.len().min(n);
                out[..k].copy_from_slice(&self.buf[..k]);
                Ok(k)
            }
            Err(e) => {
                self.buf.clear();
                Err(e)
            }
        }
    }

    /// Reads exactly `out.len()` bytes at `offset`.
    pub(crate) fn read_exact_at(
        &mut self,
        fs: &mut dyn Fs,
        offset: u64,
        out: &mut [u8],
    ) -> io::Result<()> {
        if self.read_at(fs, offset, out)? == out.len() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "segment ends inside a record",
            ))
        }
    }

    /// Reads up to `len` bytes at `offset` (fewer at the end of the file). `len` must come
    /// from a checked record header (it is allocated up front).
    pub(crate) fn read_up_to_at(
        &mut self,
        fs: &mut dyn Fs,
        offset: u64,
        len: u64,
    ) -> io::Result<Vec<u8>> {
        let len = usize::try_from(len).map_err(|_| io::Error::other("record too large"))?;
        let mut out = vec![0u8; len];
        let n = self.read_at(fs, offset, &mut out)?;
        out.truncate(n);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fs::RealFs;
    use super::*;

    #[test]
    fn reads_forward_backward_and_after_appends() {
        let tmp = tempfile::tempdir().unwrap();
        let mut fs = RealFs::new(tmp.path().to_path_buf());
        fs.create("s").unwrap();
        fs.append("s", b"0123456789").unwrap();
        let mut r = SegmentReader::new("s".into(), 7);
        assert_eq!(r.segment(), 7);
        let mut b = [0u8; 3];
        r.read_exact_at(&mut fs, 2, &mut b).unwrap();
        assert_eq!(&b, b"234");
        r.read_exact_at(&mut fs, 7, &mut b).unwrap();
        assert_eq!(&b, b"789");
        r.read_exact_at(&mut fs, 0, &mut b).unwrap();
        assert_eq!(&b, b"012");
        // Appended after the window was filled: still read correctly.
        fs.append("s", b"abcdef").unwrap();
        r.read_exact_at(&mut fs, 9, &mut b).unwrap();
        assert_eq!(&b, b"9ab");
        assert_eq!(r.read_up_to_at(&mut fs, 14, 10).unwrap(), b"ef");
        assert!(r.read_exact_at(&mut fs, 15, &mut b).is_err());
        r.read_exact_at(&mut fs, 3, &mut b).unwrap();
        assert_eq!(&b, b"345");
    }
}
