//! The records stored in redb values, encoded as JSON (small, self-describing, and
//! forward-compatible: unknown fields are ignored, new ones get defaults).

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::digest::Digest;

/// Where a blob or manifest came from; pushed content is never evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    #[default]
    Pushed,
    Mirrored,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    pub size: u64,
    /// blake3 of the content, hex: the fast pass of `verify`.
    pub blake3: String,
    /// Unix seconds.
    pub created: u64,
    #[serde(default)]
    pub origin: Origin,
    /// Set by GC between unlinking the blob everywhere and removing the row: the file
    /// may already be gone, so readers treat the blob as unknown.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleting: bool,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if signature
fn is_false(b: &bool) -> bool {
    !*b
}

/// What the live blob rows hold, per origin (the store-size gauges, the cache cap).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub pushed_blobs: u64,
    pub pushed_bytes: u64,
    pub mirrored_blobs: u64,
    pub mirrored_bytes: u64,
}

impl StoreStats {
    /// Count one more (or, with `remove`, one fewer) live row.
    pub(crate) fn count(&mut self, rec: &BlobRecord, remove: bool) {
        let (n, b) = match rec.origin {
            Origin::Pushed => (&mut self.pushed_blobs, &mut self.pushed_bytes),
            Origin::Mirrored => (&mut self.mirrored_blobs, &mut self.mirrored_bytes),
        };
        if remove {
            *n = n.saturating_sub(1);
            *b = b.saturating_sub(rec.size);
        } else {
            *n = n.saturating_add(1);
            *b = b.saturating_add(rec.size);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRecord {
    pub media_type: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    pub created: u64,
    #[serde(default)]
    pub origin: Origin,
    /// Everything this manifest references (config, layers, child manifests): what
    /// its row adds to `REFS`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refs: Vec<Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    pub digest: Digest,
    pub updated: u64,
    /// When the mirror last confirmed this tag upstream (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked: Option<u64>,
}

/// The part of a `ManifestRecord` a GET/HEAD serves: decoding only these fields skips
/// parsing every reference digest on the read path (unknown fields are ignored).
#[derive(Debug, Deserialize)]
pub(crate) struct ManifestHead {
    pub media_type: String,
    pub size: u64,
}

/// The part of a `TagRecord` a lookup by tag needs.
#[derive(Debug, Deserialize)]
pub(crate) struct TagHead {
    pub digest: Digest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub repo: String,
    pub started: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub owner: String,
    pub expires: u64,
}

/// An OCI content descriptor, as listed by the referrers API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail (string keys, no maps with non-string keys).
    serde_json::to_vec(v).unwrap_or_default()
}

pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, super::MetaError> {
    serde_json::from_slice(b).map_err(|e| super::MetaError::Corrupt(e.to_string().into()))
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One queued notification (a manifest push or delete), as the transaction that made
/// the change recorded it; rendered as Distribution's event envelope on delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Stable across redeliveries: receivers deduplicate on it.
    pub id: String,
    /// Unix milliseconds.
    pub timestamp_ms: u64,
    /// `push` or `delete`.
    pub action: String,
    pub repository: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The authenticated user; `None` for anonymous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<EventRequest>,
}

/// The HTTP request that caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRequest {
    pub id: String,
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub useragent: Option<String>,
}
