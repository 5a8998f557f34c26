//! `airgap/`: moving images across an air gap. `import` reads `docker save` tarballs
//! (plain or gzipped), OCI image layout directories and OCI archives (plain, gzip or
//! zstd), committing image by image; `export` writes bundles (`bundle.rs`: an OCI
//! image layout, full or incremental against an inventory) that `skopeo copy
//! oci-archive:…` and `podman load` accept when full.
//!
//! Both are registry clients over HTTP (`upstream::client`): they talk to a running
//! wharfie, or to one the CLI starts in-process on the data directory, so the server's
//! commit path (verification, write-through, durability) is the only way in.
//! Bodies stream through pipes: no layer is ever held in memory.
//!
//! May import: upstream (its client), manifest, digest, names.

pub(crate) mod bundle;
mod export;
mod import;

pub(crate) use export::{export, ExportOptions};
pub(crate) use import::{import, ImportTarget, Ui};

use crate::upstream::UpstreamError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum AirgapError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0}")]
    Format(String),
    #[error("registry: {0}")]
    Registry(#[from] UpstreamError),
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> AirgapError + '_ {
    move |source| AirgapError::Io { path: path.display().to_string(), source }
}

/// `org.opencontainers.image.ref.name`
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's full image name annotation
pub(crate) const CONTAINERD_NAME: &str = "io.containerd.image.name";
