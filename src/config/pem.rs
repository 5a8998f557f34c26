//! `config/pem.rs`: reading the PEM files the configuration names (an upstream's
//! `ca_file`, the `[tls]` certificate chain and key), with the one error that says what
//! is wrong with such a file.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// What is wrong with a PEM file the configuration names.
#[derive(Debug, thiserror::Error)]
pub enum PemFileError {
    #[error("cannot read it: {0}")]
    Read(#[source] std::io::Error),
    #[error("not a PEM file: {0}")]
    Pem(String),
    #[error("holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificates,
    /// Certificate `number` (from 1, in file order) of a CA file is not a usable trust
    /// anchor.
    #[error("certificate {number} is not a usable CA certificate: {reason}")]
    BadCaCertificate { number: usize, reason: String },
    /// The first certificate of a chain (the server's own) cannot be parsed.
    #[error("certificate 1 is not a usable server certificate: {0}")]
    BadServerCertificate(String),
    #[error("holds no PEM private key (-----BEGIN PRIVATE KEY-----, or RSA or EC PRIVATE KEY)")]
    NoKey,
    /// A key rustls cannot load (an unsupported algorithm, a damaged key).
    #[error("holds a private key that cannot be used: {0}")]
    BadKey(String),
    /// The key is not the one of the chain's first certificate.
    #[error("does not match the certificate in {}", cert.display())]
    KeyMismatch { cert: PathBuf },
}

/// Every PEM certificate in the file at `path`, in file order; at least one.
pub(super) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemFileError> {
    let text = std::fs::read(path).map_err(PemFileError::Read)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemFileError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(PemFileError::NoCertificates);
    }
    Ok(certs)
}

/// The first PEM private key (PKCS#8, PKCS#1 or SEC1) in the file at `path`.
pub(super) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemFileError> {
    let text = std::fs::read(path).map_err(PemFileError::Read)?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| match e {
        pem::Error::NoItemsFound => PemFileError::NoKey,
        other => PemFileError::Pem(other.to_string()),
    })
}

/// A rustls error about a certificate in the file's words: rustls words these for a
/// peer ("invalid peer certificate: …"); the kind alone reads right for a file.
pub(super) fn reason(e: tokio_rustls::rustls::Error) -> String {
    match e {
        tokio_rustls::rustls::Error::InvalidCertificate(kind) => format!("{kind:?}"),
        other => other.to_string(),
    }
}
