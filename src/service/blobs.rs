//! Blob reads and deletes. HEAD answers from the metadata row alone; GET maps the file.

use bytes::Bytes;

use super::{Error, Registry};
use crate::digest::Digest;
use crate::names::RepoName;

impl Registry {
    /// The size of a blob linked in `repo`.
    pub fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64, Error> {
        self.meta.repo_blob(repo.as_str(), digest)?.map(|r| r.size).ok_or(Error::BlobUnknown)
    }

    /// The whole blob, memory-mapped (slices of it are free).
    pub fn blob(&self, repo: &RepoName, digest: &Digest) -> Result<Bytes, Error> {
        let size = self.blob_size(repo, digest)?;
        let bytes = match self.blobs.open_blob(digest) {
            Ok(b) => b,
            // A row whose file is gone (GC between unlink and row removal): unknown.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::BlobUnknown),
            Err(e) => return Err(e.into()),
        };
        if bytes.len() as u64 != size {
            return Err(Error::Internal(format!(
                "blob {digest} has {} bytes on disk but {size} recorded",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// Unlink a blob from `repo`.
    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<(), Error> {
        match self.meta.delete_blob(repo.as_str().to_owned(), digest.clone()).await {
            Err(crate::meta::MetaError::NotFound) => Err(Error::BlobUnknown),
            r => Ok(r?),
        }
    }
}
