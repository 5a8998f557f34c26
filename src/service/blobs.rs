//! `Blobs`: blob reads and unlinks. HEAD answers from the metadata row alone; GET maps
//! the file. Also what the entitlement rule asks of the store: is a blob stored here
//! at all, and linking a stored one into another repository.
//!
//! Owns no state of its own beyond the stores' handles.

use bytes::Bytes;

use super::Error;
use crate::blob::BlobStore;
use crate::digest::Digest;
use crate::meta::Meta;
use crate::names::RepoName;

pub(super) struct Blobs {
    meta: Meta,
    blobs: BlobStore,
}

impl Blobs {
    pub(super) fn new(meta: Meta, blobs: BlobStore) -> Self {
        Blobs { meta, blobs }
    }

    /// The size of a blob linked in `repo`.
    pub(super) fn size(&self, repo: &RepoName, digest: &Digest) -> Result<u64, Error> {
        self.meta.repo_blob_size(repo.as_str(), digest)?.ok_or(Error::BlobUnknown)
    }

    /// The whole blob, memory-mapped (slices of it are free).
    pub(super) fn bytes(&self, repo: &RepoName, digest: &Digest) -> Result<Bytes, Error> {
        self.mapped(digest, self.size(repo, digest)?)
    }

    /// The blob's file, memory-mapped, checked against the `size` its row records (for a
    /// caller that has just read the size and would otherwise read it again).
    pub(super) fn mapped(&self, digest: &Digest, size: u64) -> Result<Bytes, Error> {
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
    pub(super) async fn delete(&self, repo: &RepoName, digest: &Digest) -> Result<(), Error> {
        match self.meta.delete_blob(repo.as_str().to_owned(), digest.clone()).await {
            Err(crate::meta::MetaError::NotFound) => Err(Error::BlobUnknown),
            r => Ok(r?),
        }
    }

    /// Is the blob stored here (a live row and its file), for whatever repository?
    pub(super) fn stored(&self, digest: &Digest) -> Result<bool, Error> {
        Ok(self.meta.blob(digest)?.is_some() && self.blobs.exists(digest))
    }

    /// Link a stored blob into mirrored `repo` once the entitlement rule (and, for
    /// `AskUpstream`, the upstream) allowed it: same digest, same bytes, no download.
    /// False when it is not stored (evicted, or GC took it meanwhile).
    pub(super) async fn link_entitled(&self, repo: &RepoName, digest: &Digest) -> Result<bool, Error> {
        if !self.stored(digest)? {
            return Ok(false);
        }
        Ok(self.meta.link_stored_blob(repo.as_str().to_owned(), digest.clone()).await?)
    }
}
