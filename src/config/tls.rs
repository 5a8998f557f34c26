//! `config/tls.rs`: `[tls]` as written ([`TlsConfig`]) and as the server uses it
//! ([`TlsSettings`]): the certificate chain and the private key read, parsed and checked
//! against each other at load, so that a bad `[tls]` is a configuration error like any
//! other. The server only adds its ALPN protocols to what is built here.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::server::ServerConfig;
use tokio_rustls::rustls::sign::{CertifiedKey, SingleCertAndKey};
use tokio_rustls::rustls::{Error as TlsError, InconsistentKeys};

use super::pem::{read_certs, read_key, reason, PemFileError};
use super::ConfigError;

/// `[tls]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[tls]`, resolved: nothing left to read or parse.
#[derive(Clone)]
pub struct TlsSettings {
    /// The files, as written.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// rustls' server side, built from them: the chain, the key loaded and matched to
    /// the chain's first certificate, the default protocol versions. No ALPN protocols:
    /// those are the HTTP server's to offer.
    pub server: Arc<ServerConfig>,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key material.
        f.debug_struct("TlsSettings")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Read and check `[tls]`. Errors name the key (dotted, `tls.cert`) and the file.
pub(super) fn resolve(t: &TlsConfig) -> Result<TlsSettings, ConfigError> {
    let bad = |key: &str, path: &Path, cause: PemFileError| ConfigError::TlsFile {
        key: key.into(),
        origin: String::new(),
        path: path.to_path_buf(),
        cause: Box::new(cause),
    };
    let chain = read_certs(&t.cert).map_err(|e| bad("tls.cert", &t.cert, e))?;
    let key = read_key(&t.key).map_err(|e| bad("tls.key", &t.key, e))?;
    let provider = Arc::new(ring::default_provider());
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad("tls.key", &t.key, PemFileError::BadKey(e.to_string())))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        // A key type that cannot tell its public key is let through, as rustls does.
        Ok(()) | Err(TlsError::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(TlsError::InconsistentKeys(_)) => {
            return Err(bad("tls.key", &t.key, PemFileError::KeyMismatch { cert: t.cert.clone() }))
        }
        Err(e) => return Err(bad("tls.cert", &t.cert, PemFileError::BadServerCertificate(reason(e)))),
    }
    let server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Value {
            key: "tls".into(),
            origin: String::new(),
            reason: format!("TLS is not available: {e}"),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    Ok(TlsSettings { cert: t.cert.clone(), key: t.key.clone(), server: Arc::new(server) })
}
