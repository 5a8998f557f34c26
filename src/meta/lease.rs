//! Leases: what keeps GC and eviction off a blob while a commit or a fill is working on
//! it. The key is typed; its one encoding (`{digest}/upload/{id}`, `{digest}/fill`)
//! puts the digest first so GC finds every lease on a digest with one range scan.
//!
//! A lease's `expires` is honoured: GC ignores an expired lease (a holder that outlives
//! its lease has hung). Leases are cleared at startup, so the encoding may change
//! between versions freely.

use std::fmt;

use redb::ReadableTable;

use super::model::{decode, LeaseRecord};
use super::{Meta, MetaError};
use crate::digest::Digest;

/// What a lease protects, and for whom.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LeaseKey {
    /// An upload (push or fill commit) about to rename its file into place: held from
    /// before the rename until the meta commit. `id` is the staging area's id.
    Upload { digest: Digest, id: String },
    /// A mirror fill in flight for `digest`: eviction must not take the blob while the
    /// fill's readers may still be about to link or serve it.
    Fill { digest: Digest },
}

impl LeaseKey {
    pub fn digest(&self) -> &Digest {
        match self {
            LeaseKey::Upload { digest, .. } | LeaseKey::Fill { digest } => digest,
        }
    }

    /// The redb key.
    pub(super) fn encode(&self) -> String {
        match self {
            LeaseKey::Upload { digest, id } => format!("{digest}/upload/{id}"),
            LeaseKey::Fill { digest } => format!("{digest}/fill"),
        }
    }

    /// Parse a redb key; `None` for a key this version does not write.
    pub(super) fn decode(key: &str) -> Option<LeaseKey> {
        let (digest, rest) = key.split_once('/')?;
        let digest: Digest = digest.parse().ok()?;
        match rest.split_once('/') {
            Some(("upload", id)) if !id.is_empty() => Some(LeaseKey::Upload { digest, id: id.to_owned() }),
            None if rest == "fill" => Some(LeaseKey::Fill { digest }),
            _ => None,
        }
    }
}

impl fmt::Display for LeaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

/// Whether any unexpired lease (of any kind) is held on `digest` at unix second `now`.
pub(super) fn leased(
    leases: &impl ReadableTable<&'static str, &'static [u8]>,
    digest: &str,
    now: u64,
) -> Result<bool, MetaError> {
    let prefix = format!("{digest}/");
    for item in leases.range(prefix.as_str()..)? {
        let (k, v) = item?;
        let Some(key) = LeaseKey::decode(k.value()) else {
            if k.value().starts_with(&prefix) {
                continue;
            }
            break;
        };
        if key.digest().as_str() != digest {
            break;
        }
        let rec: LeaseRecord = decode(v.value())?;
        if rec.expires > now {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A held lease (from [`Meta::hold_lease`]); dropping it releases the lease.
#[must_use = "the lease is released when the guard drops"]
pub struct LeaseGuard {
    meta: Meta,
    key: Option<LeaseKey>,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.meta.release_lease_detached(key);
        }
    }
}

impl LeaseGuard {
    pub(super) fn new(meta: Meta, key: LeaseKey) -> Self {
        LeaseGuard { meta, key: Some(key) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: u8) -> Digest {
        Digest::from_sha256([c; 32])
    }

    #[test]
    fn keys_round_trip() {
        for k in [LeaseKey::Upload { digest: d(1), id: "abc".into() }, LeaseKey::Fill { digest: d(2) }] {
            assert_eq!(LeaseKey::decode(&k.encode()), Some(k));
        }
        assert_eq!(LeaseKey::decode("blob sha256:00 x"), None);
        assert_eq!(LeaseKey::decode(&format!("{}/upload/", d(1))), None);
        assert_eq!(LeaseKey::decode(&format!("{}/other", d(1))), None);
    }
}
