//! The inventory read: every linked blob and manifest, with its size and one
//! repository that links it, in one read transaction (what `wharfie inventory` and
//! the import of an incremental bundle ask for). Sorted by digest.

use redb::{ReadableDatabase, ReadableTable};

use super::model::{decode, BlobRecord, ManifestRecord};
use super::schema::{BLOBS, BLOB_LINKS, MANIFESTS, REPO_MANIFESTS};
use super::{Meta, MetaError, RepoFilter};

/// One held digest: (digest, size, a repository that links it).
pub type Held = (String, u64, String);

#[derive(Debug, Default)]
pub struct Inventory {
    pub blobs: Vec<Held>,
    pub manifests: Vec<Held>,
}

impl Meta {
    /// What is linked somewhere (in a repository `keep` accepts, when given): blobs
    /// through `BLOB_LINKS` (sorted by digest, so one pass), manifests through
    /// `REPO_MANIFESTS`. Rows being deleted by GC are left out.
    pub fn inventory(&self, keep: Option<&RepoFilter>) -> Result<Inventory, MetaError> {
        let rtx = self.db.begin_read()?;
        let ok = |repo: &str| keep.is_none_or(|k| k(repo));
        let mut inv = Inventory::default();
        let links = rtx.open_table(BLOB_LINKS)?;
        let rows = rtx.open_table(BLOBS)?;
        let mut last = String::new();
        for item in links.iter()? {
            let (k, _) = item?;
            let (digest, repo) = k.value();
            if digest == last || !ok(repo) {
                continue;
            }
            let Some(v) = rows.get(digest)? else { continue };
            let rec: BlobRecord = decode(v.value())?;
            if rec.deleting {
                continue;
            }
            digest.clone_into(&mut last);
            inv.blobs.push((last.clone(), rec.size, repo.to_owned()));
        }
        let mut found: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
        for item in rtx.open_table(REPO_MANIFESTS)?.iter()? {
            let (k, _) = item?;
            let (repo, digest) = k.value();
            if ok(repo) && !found.contains_key(digest) {
                found.insert(digest.to_owned(), repo.to_owned());
            }
        }
        let rows = rtx.open_table(MANIFESTS)?;
        for (digest, repo) in found {
            let Some(v) = rows.get(digest.as_str())? else { continue };
            let rec: ManifestRecord = decode(v.value())?;
            inv.manifests.push((digest, rec.size, repo));
        }
        Ok(inv)
    }
}
