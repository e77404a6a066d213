//! Where a file's bytes come from: [`Source`], positioned reads from a byte slice or an open file.
//!
//! The command line reads its input through [`std::fs::File`]'s positioned reads, never through a
//! shared memory map: a file truncated by another process while it is mapped kills the reader
//! with SIGBUS, and no safe Rust code can catch that. A positioned read of bytes that are no
//! longer there is a short read instead, which [`Source::read_exact_at`] turns into an error that
//! the caller reports.

use std::io;

/// A random-access, read-only byte source: the whole file in memory (`[u8]`, `Vec<u8>`, a
/// memory map dereferenced to `[u8]`) or an open [`std::fs::File`].
///
/// Reads take `&self` and may run from several threads at once.
pub trait Source: Sync {
    /// The size in bytes, now.
    fn size(&self) -> io::Result<u64>;

    /// Fills `buf` with the bytes at `offset`, or fails: an [`io::ErrorKind::UnexpectedEof`]
    /// error when the source ends first (a file truncated while it is read).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl Source for [u8] {
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(buf.len())?))
            .and_then(|range| self.get(range))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl Source for Vec<u8> {
    fn size(&self) -> io::Result<u64> {
        self.as_slice().size()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

impl Source for std::fs::File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    #[cfg(unix)]
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }

    #[cfg(windows)]
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        use std::os::windows::fs::FileExt;
        while !buf.is_empty() {
            match self.seek_read(buf, offset) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    #[cfg(not(any(unix, windows)))]
    fn read_exact_at(&self, _buf: &mut [u8], _offset: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "positioned reads are not available on this platform",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_read_in_range_and_refuse_past_the_end() {
        let data: Vec<u8> = (0..10).collect();
        let mut b = [0u8; 4];
        data.read_exact_at(&mut b, 6).unwrap();
        assert_eq!(b, [6, 7, 8, 9]);
        let e = data.read_exact_at(&mut b, 7).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let e = data.read_exact_at(&mut b, u64::MAX).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(data[..].size().unwrap(), 10);
    }
}
