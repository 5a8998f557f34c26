//! `manifest`: the manifest vocabulary every layer shares — the media types we store,
//! and one walker over a manifest's references (config, layers, index children,
//! subject). The service's parser (`service/manifests.rs`), the upstream client's
//! `Accept` header and the air-gap export and import all read manifests through this.
//!
//! May import: digest, serde. Knows nothing of storage or the wire.
//!
//! The shape is deliberately lenient (a small serde shape rather than the full oci-spec
//! types): clients push fields and platforms the strict types reject, and we store and
//! serve the exact bytes anyway. Each user decides how strict to be about what it finds.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::digest::{Digest, DigestError};

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
#[allow(dead_code)] // the vocabulary is complete; nothing matches on config types yet
pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub(crate) const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub(crate) const DOCKER_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub(crate) const DOCKER_V1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Every manifest type we store, for an upstream request's `Accept`.
pub(crate) const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Is `media_type` an index (its references are child manifests)?
pub(crate) fn is_index(media_type: &str) -> bool {
    matches!(media_type, OCI_INDEX | DOCKER_LIST)
}

/// Is `media_type` an image manifest (config and layers)?
pub(crate) fn is_image(media_type: &str) -> bool {
    matches!(media_type, OCI_MANIFEST | DOCKER_MANIFEST)
}

/// The parts of a manifest the registry and the air-gap tools look at.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    pub schema_version: Option<u64>,
    pub media_type: Option<String>,
    pub config: Option<Descriptor>,
    pub layers: Option<Vec<Descriptor>>,
    pub manifests: Option<Vec<Descriptor>>,
    pub subject: Option<Descriptor>,
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A reference to other content, as a manifest spells it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    pub media_type: Option<String>,
    /// As written: [`Descriptor::digest`] parses it (a missing one parses as invalid).
    #[serde(default, rename = "digest")]
    pub digest_text: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub urls: Vec<String>,
    pub platform: Option<Platform>,
}

/// An index entry's platform.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    pub os: Option<String>,
    pub architecture: Option<String>,
    pub variant: Option<String>,
}

/// What a reference points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefKind {
    Config,
    Layer,
    /// A child manifest of an index.
    Child,
    Subject,
}

impl RefKind {
    /// In words, for error messages.
    pub(crate) fn word(self) -> &'static str {
        match self {
            RefKind::Config => "config",
            RefKind::Layer => "layer",
            RefKind::Child => "manifests[]",
            RefKind::Subject => "subject",
        }
    }

    /// A blob (config, layer) rather than a manifest (child, subject)?
    pub(crate) fn is_blob(self) -> bool {
        matches!(self, RefKind::Config | RefKind::Layer)
    }
}

impl Descriptor {
    pub(crate) fn digest(&self) -> Result<Digest, DigestError> {
        self.digest_text.parse()
    }

    /// A non-distributable layer: it lives elsewhere (`urls`), not in a registry.
    pub(crate) fn foreign(&self) -> bool {
        !self.urls.is_empty()
    }

    /// Does this (index entry's) platform match `os/arch[/variant]`?
    pub(crate) fn platform_matches(&self, want: &str) -> bool {
        let Some(p) = &self.platform else { return false };
        let mut parts = want.split('/');
        let (os, arch, variant) = (parts.next(), parts.next(), parts.next());
        p.os.as_deref() == os
            && p.architecture.as_deref() == arch
            && variant.is_none_or(|v| p.variant.as_deref() == Some(v))
    }
}

impl Manifest {
    /// Read a manifest's JSON.
    pub(crate) fn from_slice(bytes: &[u8]) -> Result<Manifest, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Looks like an image manifest or index (not a config or any other JSON blob)?
    pub(crate) fn looks_like_manifest(bytes: &[u8]) -> bool {
        bytes.starts_with(b"{")
            && Manifest::from_slice(bytes).is_ok_and(|m| {
                m.schema_version == Some(2)
                    && (m.manifests.is_some() || m.layers.is_some() || m.config.is_some())
            })
    }

    /// The media type the manifest names, else the one its shape implies.
    pub(crate) fn media_type_or_guess(&self) -> Option<&str> {
        self.media_type.as_deref().or_else(|| self.guessed_media_type())
    }

    /// The media type its shape implies (an index has `manifests`, an image `config`).
    pub(crate) fn guessed_media_type(&self) -> Option<&'static str> {
        if self.manifests.is_some() {
            Some(OCI_INDEX)
        } else if self.config.is_some() {
            Some(OCI_MANIFEST)
        } else {
            None
        }
    }

    /// The one walk over a manifest's references, in order: subject, config, layers,
    /// index children. Foreign layers are included (see [`Descriptor::foreign`]).
    pub(crate) fn references(&self) -> impl Iterator<Item = (RefKind, &Descriptor)> {
        fn one(k: RefKind, d: Option<&Descriptor>) -> impl Iterator<Item = (RefKind, &Descriptor)> {
            d.map(move |d| (k, d)).into_iter()
        }
        fn many(k: RefKind, d: Option<&Vec<Descriptor>>) -> impl Iterator<Item = (RefKind, &Descriptor)> {
            d.into_iter().flatten().map(move |d| (k, d))
        }
        one(RefKind::Subject, self.subject.as_ref())
            .chain(one(RefKind::Config, self.config.as_ref()))
            .chain(many(RefKind::Layer, self.layers.as_ref()))
            .chain(many(RefKind::Child, self.manifests.as_ref()))
    }

    /// The blobs an image needs from a registry: config and distributable layers.
    pub(crate) fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.references().filter(|(k, d)| k.is_blob() && !d.foreign()).map(|(_, d)| d)
    }

    /// An index's child manifests.
    pub(crate) fn children(&self) -> impl Iterator<Item = &Descriptor> {
        self.references().filter(|(k, _)| *k == RefKind::Child).map(|(_, d)| d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_every_reference_once_in_order() {
        let d = |n: u8| Digest::of(&[n]).to_string();
        let body = format!(
            r#"{{"schemaVersion":2,"subject":{{"digest":"{}"}},"config":{{"digest":"{}","size":3}},"layers":[{{"digest":"{}"}},{{"digest":"{}","urls":["http://x"]}}]}}"#,
            d(0),
            d(1),
            d(2),
            d(3)
        );
        let m = Manifest::from_slice(body.as_bytes()).expect("parses");
        let kinds: Vec<RefKind> = m.references().map(|(k, _)| k).collect();
        assert_eq!(kinds, [RefKind::Subject, RefKind::Config, RefKind::Layer, RefKind::Layer]);
        let blobs: Vec<String> = m.blobs().map(|b| b.digest_text.clone()).collect();
        assert_eq!(blobs, [d(1), d(2)]);
        assert_eq!(m.guessed_media_type(), Some(OCI_MANIFEST));
        assert!(Manifest::looks_like_manifest(body.as_bytes()));
        assert!(!Manifest::looks_like_manifest(br#"{"architecture":"amd64"}"#));
    }

    #[test]
    fn a_missing_digest_is_an_invalid_reference() {
        let m = Manifest::from_slice(br#"{"schemaVersion":2,"manifests":[{"size":1}]}"#).expect("parses");
        assert!(m.children().next().is_some_and(|c| c.digest().is_err()));
        assert_eq!(m.media_type_or_guess(), Some(OCI_INDEX));
    }
}
