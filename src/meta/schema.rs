//! Every redb table, in one place. Keys are strings (digests, names, ids) or tuples of
//! them; values are small `serde_json` records (`model.rs`), raw manifest bytes, or `()`
//! for pure links.

use redb::TableDefinition;

/// digest → `BlobRecord`
pub(super) const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");
/// (repo, digest) → () — a blob is visible in a repository only through this link.
pub(super) const REPO_BLOBS: TableDefinition<(&str, &str), ()> = TableDefinition::new("repo_blobs");
/// digest → `ManifestRecord`
pub(super) const MANIFESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("manifests");
/// digest → the exact pushed bytes
pub(super) const MANIFEST_BODIES: TableDefinition<&str, &[u8]> = TableDefinition::new("manifest_bodies");
/// (repo, digest) → ()
pub(super) const REPO_MANIFESTS: TableDefinition<(&str, &str), ()> = TableDefinition::new("repo_manifests");
/// repo → number of manifests linked (the catalog lists repos with at least one)
pub(super) const REPOS: TableDefinition<&str, u64> = TableDefinition::new("repos");
/// (repo, tag) → `TagRecord`
pub(super) const TAGS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("tags");
/// (repo, subject digest, referrer digest) → `Descriptor`
pub(super) const REFERRERS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("referrers");
/// upload id → `UploadRecord`
pub(super) const UPLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("uploads");
/// key → `LeaseRecord` (in-flight fills, GC marks)
pub(super) const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");
/// digest → how many manifest rows reference it (as a blob or a child manifest).
/// Maintained in the transaction that adds or removes the referencing row, so GC's
/// check of it is exact.
pub(super) const REFS: TableDefinition<&str, u64> = TableDefinition::new("refs");
/// manifest digest → how many repositories link it.
pub(super) const MANIFEST_LINKS: TableDefinition<&str, u64> = TableDefinition::new("manifest_links");
/// (digest, repo) → () — the reverse of `REPO_BLOBS`, so GC can unlink a blob everywhere.
pub(super) const BLOB_LINKS: TableDefinition<(&str, &str), ()> = TableDefinition::new("blob_links");
/// `pushed_blobs`, `pushed_bytes`, `mirrored_blobs`, `mirrored_bytes` → the count and
/// bytes of live blob rows (not `deleting`) by origin. Changed by every transaction that
/// writes a blob row (`put_blob_row`), so it is exactly as fresh as `BLOBS`; computed once
/// from a scan when an older `meta.redb` lacks it.
pub(super) const STATS: TableDefinition<&str, u64> = TableDefinition::new("stats");
/// blob digest → last access (unix milliseconds), persisted in batches for eviction.
pub(super) const ACCESS: TableDefinition<&str, u64> = TableDefinition::new("access");
/// seq → `EventRecord`: the notification queue, in commit order. Rows are written in
/// the transaction that commits the change they announce, and removed from the front
/// only (delivered to every endpoint, or dropped when the queue is full), so the keys
/// are contiguous.
pub(super) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// `seq` → the last sequence number given out; `cursor/<endpoint>` → the last one that
/// endpoint has taken; `dropped/<endpoint>` → events it lost to a full queue.
pub(super) const EVENT_STATE: TableDefinition<&str, u64> = TableDefinition::new("event_state");
/// (last access in unix milliseconds, digest) → () for every live mirrored blob row: the
/// eviction order. The time is the blob's `ACCESS` entry, else its `created` × 1000.
/// Changed in the transactions that write a blob row (`put_blob_row`) or an access time
/// (`record_access`), so eviction reads the oldest entries instead of sorting every row.
pub(super) const LRU: TableDefinition<(u64, &str), ()> = TableDefinition::new("lru");
/// (referenced digest, manifest digest) → () for every manifest row and each entry of its
/// `refs`: the reverse of `ManifestRecord::refs`, so eviction finds the manifests a blob
/// (or a child manifest) breaks without reading every manifest.
pub(super) const REFERENCED_BY: TableDefinition<(&str, &str), ()> = TableDefinition::new("referenced_by");
/// (manifest digest, repo) → () — the reverse of `REPO_MANIFESTS`.
pub(super) const MANIFEST_REPOS: TableDefinition<(&str, &str), ()> = TableDefinition::new("manifest_repos");
/// (repo, digest, tag) → () for every `TAGS` row: the reverse of `TAGS`, so unlinking a
/// manifest reads the tags that point at it instead of decoding every tag of the
/// repository. Every write of a `TAGS` row goes through `put_tag` or `remove_tag`, which
/// change this in the same transaction (a tag moved to another digest loses its old
/// entry); built once from a scan when an older `meta.redb` lacks it.
pub(super) const TAG_DIGESTS: TableDefinition<(&str, &str, &str), ()> = TableDefinition::new("tag_digests");
