//! Read-only summaries for the operator's web page: per repository its tag count and
//! stored bytes, and a page of tags with what each points at. One read snapshot per
//! call; every walk is capped, so a view costs at most the caps, never the whole store.

use redb::ReadableDatabase;

use super::model::decode;
use super::schema::{BLOBS, MANIFESTS, MANIFEST_BODIES, REPO_BLOBS, REPO_MANIFESTS, TAGS};
use super::{BlobRecord, ManifestRecord, Meta, MetaError, TagRecord};

/// Rows a summary counts at most per table (past it the figure is a lower bound).
pub const SUMMARY_CAP: u64 = 10_000;

/// One repository at a glance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoSummary {
    pub tags: u64,
    pub manifests: u64,
    /// Blob and manifest bytes linked in the repository.
    pub bytes: u64,
    /// A count reached [`SUMMARY_CAP`]: the figures are lower bounds.
    pub capped: bool,
}

/// One tag and what it points at.
#[derive(Debug, Clone)]
pub struct TagRow {
    pub tag: String,
    pub rec: TagRecord,
    /// The manifest row (absent if it was removed under the tag).
    pub manifest: Option<ManifestRecord>,
    /// The manifest's bytes, for indexes only (their platforms are read from it).
    pub index_body: Option<Vec<u8>>,
    /// Bytes held here for the tag: the manifest, what it references, and for an
    /// index its children's manifests and their references (one level).
    pub bytes: u64,
}

fn is_index(media_type: &str) -> bool {
    media_type.contains("image.index") || media_type.contains("manifest.list")
}

impl Meta {
    pub fn repo_summary(&self, repo: &str) -> Result<RepoSummary, MetaError> {
        let rtx = self.db.begin_read()?;
        let mut s = RepoSummary::default();
        for item in rtx.open_table(TAGS)?.range((repo, "")..)? {
            let (k, _) = item?;
            if k.value().0 != repo {
                break;
            }
            s.tags += 1;
            if s.tags >= SUMMARY_CAP {
                s.capped = true;
                break;
            }
        }
        let manifests = rtx.open_table(MANIFESTS)?;
        for item in rtx.open_table(REPO_MANIFESTS)?.range((repo, "")..)? {
            let (k, _) = item?;
            let (r, d) = k.value();
            if r != repo {
                break;
            }
            s.manifests += 1;
            if let Some(v) = manifests.get(d)? {
                s.bytes += decode::<ManifestRecord>(v.value())?.size;
            }
            if s.manifests >= SUMMARY_CAP {
                s.capped = true;
                break;
            }
        }
        let blobs = rtx.open_table(BLOBS)?;
        let mut n = 0;
        for item in rtx.open_table(REPO_BLOBS)?.range((repo, "")..)? {
            let (k, _) = item?;
            let (r, d) = k.value();
            if r != repo {
                break;
            }
            if let Some(v) = blobs.get(d)? {
                let b: BlobRecord = decode(v.value())?;
                if !b.deleting {
                    s.bytes += b.size;
                }
            }
            n += 1;
            if n >= SUMMARY_CAP {
                s.capped = true;
                break;
            }
        }
        Ok(s)
    }

    /// Tags of `repo` after `last`, at most `n`; the flag says whether more remain.
    pub fn tag_rows(
        &self,
        repo: &str,
        last: Option<&str>,
        n: usize,
    ) -> Result<(Vec<TagRow>, bool), MetaError> {
        let rtx = self.db.begin_read()?;
        let tags = rtx.open_table(TAGS)?;
        let manifests = rtx.open_table(MANIFESTS)?;
        let bodies = rtx.open_table(MANIFEST_BODIES)?;
        let blobs = rtx.open_table(BLOBS)?;
        let blob_size = |d: &str| -> Result<u64, MetaError> {
            Ok(match blobs.get(d)? {
                Some(v) => decode::<BlobRecord>(v.value())?.size,
                None => 0,
            })
        };
        super::tag_page(&tags, repo, last, n, |tag, v| {
            let rec: TagRecord = decode(v)?;
            let manifest: Option<ManifestRecord> =
                manifests.get(rec.digest.as_str())?.map(|v| decode(v.value())).transpose()?;
            let mut bytes = 0;
            let mut index_body = None;
            if let Some(m) = &manifest {
                bytes += m.size;
                let index = is_index(&m.media_type);
                for d in &m.refs {
                    match manifests.get(d.as_str())? {
                        Some(child) if index => {
                            let child: ManifestRecord = decode(child.value())?;
                            bytes += child.size;
                            for c in &child.refs {
                                bytes += blob_size(c.as_str())?;
                            }
                        }
                        _ => bytes += blob_size(d.as_str())?,
                    }
                }
                if index {
                    index_body = bodies.get(rec.digest.as_str())?.map(|b| b.value().to_vec());
                }
            }
            Ok(TagRow { tag: tag.to_owned(), rec, manifest, index_body, bytes })
        })
    }
}
