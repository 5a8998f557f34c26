//! Reading a staging file while a fill is still writing it: followers of a fill stream
//! from offset 0 up to what the fill has published.
//!
//! Readers that keep up with the fill take its bytes from memory: the fill's writer
//! remembers the chunks it just wrote (a window of the last [`WINDOW`] bytes, shared as
//! `Bytes`, not copied), and a reader at an offset inside the window gets a slice of a
//! chunk without a syscall or a copy — what a warm reader of the mapped blob costs.
//! A reader that fell behind the window reads the file on the blocking pool while the
//! fill is still writing; once the fill has committed (the file is complete and never
//! written again), it takes slices of the mapped file instead, as warm readers of a
//! stored blob do: no read, no copy, no trip to the blocking pool.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use bytes::Bytes;

/// Bytes of recently written chunks a fill keeps for its readers.
pub(super) const WINDOW: u64 = 8 << 20;

/// A read handle on a staging area's data file. It stays valid across the rename at
/// commit (it is the same inode), so a reader never sees the file disappear.
#[derive(Clone, Debug)]
pub struct GrowingReader {
    file: Arc<File>,
    recent: Arc<RwLock<Recent>>,
    /// The whole file, mapped once the fill committed (see [`GrowingReader::committed_at`]).
    mapped: Arc<OnceLock<Bytes>>,
}

/// At most this many bytes per slice of the committed map: large, since a slice is free,
/// but bounded so one reader's write to a slow socket does not pin the map for long.
const MAPPED_CHUNK: u64 = 4 << 20;

/// The last chunks written, in file order, each with its offset.
#[derive(Debug, Default)]
struct Recent {
    chunks: VecDeque<(u64, Bytes)>,
    bytes: u64,
}

impl GrowingReader {
    pub(super) fn new(file: File) -> Self {
        GrowingReader { file: Arc::new(file), recent: Arc::default(), mapped: Arc::default() }
    }

    /// The writer has written `chunk` at `pos` (contiguous with the chunk before):
    /// keep it for readers, dropping the oldest beyond the window.
    pub fn remember(&self, pos: u64, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        let mut r = self.recent.write().unwrap_or_else(PoisonError::into_inner);
        // A resumed download starts a new run of offsets: keep the window contiguous.
        if r.chunks.back().is_some_and(|(p, c)| p + c.len() as u64 != pos) {
            r.chunks.clear();
            r.bytes = 0;
        }
        r.bytes += chunk.len() as u64;
        r.chunks.push_back((pos, chunk));
        while r.bytes > WINDOW && r.chunks.len() > 1 {
            if let Some((_, c)) = r.chunks.pop_front() {
                r.bytes -= c.len() as u64;
            }
        }
    }

    /// The bytes from `pos` to the end of the remembered chunk holding `pos`, cut at
    /// `limit` (what the fill has published); `None` when `pos` is not in the window.
    pub fn recent_at(&self, pos: u64, limit: u64) -> Option<Bytes> {
        let r = self.recent.read().unwrap_or_else(PoisonError::into_inner);
        let (first, _) = r.chunks.front()?;
        if pos < *first {
            return None;
        }
        // Chunks are contiguous and sorted: find the one holding `pos`.
        let i = r.chunks.partition_point(|(p, _)| *p <= pos).checked_sub(1)?;
        let (p, c) = &r.chunks[i];
        let start = usize::try_from(pos - p).ok()?;
        let end = usize::try_from(limit.saturating_sub(*p)).ok()?.min(c.len());
        (start < end).then(|| c.slice(start..end))
    }

    /// For a fill that has committed `total` bytes: the bytes from `pos` (at most
    /// [`MAPPED_CHUNK`]) as a slice of the mapped file. The map is made once per fill.
    /// `Ok(None)` when the file is shorter than `total` (never, for a committed fill)
    /// or empty.
    pub fn committed_at(&self, pos: u64, total: u64) -> io::Result<Option<Bytes>> {
        let map = match self.mapped.get() {
            Some(m) => m,
            None => {
                // SAFETY: only called once the fill has committed: the file then holds
                // the blob's whole content and is never written or truncated again (a
                // blob file is only ever unlinked), which is what `map_immutable` needs.
                let m = unsafe { super::map_immutable(&self.file)? };
                self.mapped.get_or_init(|| m)
            }
        };
        let (Ok(pos), Ok(end)) = (usize::try_from(pos), usize::try_from(total.min(pos + MAPPED_CHUNK)))
        else {
            return Ok(None);
        };
        let whole = u64::try_from(map.len()).is_ok_and(|n| n >= total);
        Ok((whole && pos < end).then(|| map.slice(pos..end)))
    }

    /// Read exactly `len` bytes at `pos`, on the blocking pool. The caller only asks for
    /// bytes the writer has already published; a short file is an error.
    pub async fn read_at(&self, pos: u64, len: u64) -> io::Result<Bytes> {
        let file = self.file.clone();
        let len = usize::try_from(len).map_err(io::Error::other)?;
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf))
        })
        .await
        .map_err(io::Error::other)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader() -> (tempfile::TempDir, GrowingReader) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"").unwrap();
        (dir, GrowingReader::new(File::open(&p).unwrap()))
    }

    #[test]
    fn readers_get_slices_of_remembered_chunks_up_to_the_published_limit() {
        let (_d, r) = reader();
        r.remember(0, Bytes::from_static(b"hello "));
        r.remember(6, Bytes::from_static(b"world"));
        assert_eq!(r.recent_at(0, 11).as_deref(), Some(&b"hello "[..]));
        assert_eq!(r.recent_at(3, 11).as_deref(), Some(&b"lo "[..]));
        assert_eq!(r.recent_at(6, 10).as_deref(), Some(&b"worl"[..]), "cut at the limit");
        assert_eq!(r.recent_at(10, 10), None, "nothing published beyond the limit");
        assert_eq!(r.recent_at(11, 20), None, "past the last chunk");
    }

    #[test]
    fn a_committed_fill_is_read_as_slices_of_one_map() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let total = MAPPED_CHUNK + 10;
        let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let r = GrowingReader::new(File::open(&p).unwrap());
        let first = r.committed_at(0, total).unwrap().unwrap();
        assert_eq!(first.len() as u64, MAPPED_CHUNK, "at most one chunk per slice");
        assert_eq!(&first[..], &data[..first.len()]);
        let rest = r.committed_at(MAPPED_CHUNK, total).unwrap().unwrap();
        assert_eq!(&rest[..], &data[usize::try_from(MAPPED_CHUNK).unwrap()..]);
        assert!(r.committed_at(total, total).unwrap().is_none(), "nothing past the end");
        // The map is made once and outlives the name (a commit renames, GC unlinks).
        std::fs::remove_file(&p).unwrap();
        assert_eq!(&r.committed_at(5, total).unwrap().unwrap()[..3], &data[5..8]);
        assert!(r.committed_at(0, total + 1).unwrap().is_none(), "a file shorter than promised");
    }

    #[test]
    fn the_window_drops_the_oldest_chunks_and_restarts_on_a_gap() {
        let (_d, r) = reader();
        let big = Bytes::from(vec![7u8; usize::try_from(WINDOW / 2).unwrap()]);
        let n = WINDOW / 2;
        for i in 0..4 {
            r.remember(i * n, big.clone());
        }
        assert_eq!(r.recent_at(0, 4 * n), None, "fell out of the window");
        assert_eq!(r.recent_at(2 * n, 4 * n).map(|b| b.len() as u64), Some(n));
        r.remember(10 * n, Bytes::from_static(b"x"));
        assert_eq!(r.recent_at(3 * n, 11 * n), None, "a gap empties the window");
        assert_eq!(r.recent_at(10 * n, 11 * n).as_deref(), Some(&b"x"[..]));
    }
}
