//! Reading a staging file while a fill is still writing it: followers of a fill stream
//! from offset 0 up to what the fill has published, on the blocking pool.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;

/// A read handle on a staging area's data file. It stays valid across the rename at
/// commit (it is the same inode), so a reader never sees the file disappear.
#[derive(Clone, Debug)]
pub struct GrowingReader {
    file: Arc<File>,
}

impl GrowingReader {
    pub(super) fn new(file: File) -> Self {
        GrowingReader { file: Arc::new(file) }
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
