//! Manifests: parse just enough of the pushed JSON to know its type and references
//! (through the one walker, `crate::manifest`), store the exact bytes by digest, and
//! let tags be links to digests. What the parser checks is what the registry relies
//! on: schema version, media type, and well-formed reference digests.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures_util::StreamExt;

use super::{Body, Error};
use crate::digest::Digest;
use crate::manifest::{self, Descriptor, Manifest, RefKind, DOCKER_V1, DOCKER_V1_SIGNED};
use crate::meta::Descriptor as Referrer;
use crate::meta::{model::now, ManifestKey, ManifestRecord, Meta, MetaError, Origin, PutManifest};
use crate::names::{Reference, RepoName};

/// What the registry needs to know of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub media_type: String,
    pub blobs: Vec<Digest>,
    pub manifests: Vec<Digest>,
    pub subject: Option<Digest>,
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::ManifestInvalid(msg.into())
}

fn ref_digest(d: &Descriptor, what: RefKind) -> Result<Digest, Error> {
    d.digest().map_err(|e| invalid(format!("{}: {e}", what.word())))
}

/// A Content-Type header worth believing (generic JSON types say nothing).
fn meaningful(ct: Option<&str>) -> Option<&str> {
    let ct = ct?.split(';').next()?.trim();
    match ct {
        "" | "application/json" | "application/octet-stream" | "text/plain" => None,
        t => Some(t),
    }
}

/// Parse and classify a pushed manifest.
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Parsed, Error> {
    let header = meaningful(content_type);
    if matches!(header, Some(DOCKER_V1 | DOCKER_V1_SIGNED)) {
        return Err(invalid("Docker schema1 manifests are not supported: push schema2 or OCI"));
    }
    let raw = Manifest::from_slice(body).map_err(|e| invalid(format!("manifest is not valid JSON: {e}")))?;
    match raw.schema_version {
        Some(2) => {}
        Some(1) => return Err(invalid("Docker schema1 manifests are not supported: push schema2 or OCI")),
        Some(v) => return Err(invalid(format!("unsupported schemaVersion {v}"))),
        None => return Err(invalid("schemaVersion is missing")),
    }
    if let (Some(h), Some(m)) = (header, raw.media_type.as_deref()) {
        if h != m {
            return Err(invalid(format!("Content-Type {h} does not match the manifest's mediaType {m}")));
        }
    }
    let media_type = header
        .or_else(|| raw.media_type_or_guess())
        .ok_or_else(|| invalid("cannot tell the manifest type: no mediaType, config or manifests"))?
        .to_owned();
    let subject = raw.subject.as_ref().map(|s| ref_digest(s, RefKind::Subject)).transpose()?;
    let mut blobs = Vec::new();
    let mut manifests = Vec::new();
    if manifest::is_image(&media_type) {
        let config = raw.config.as_ref().ok_or_else(|| invalid("image manifest without config"))?;
        if raw.layers.is_none() {
            return Err(invalid("image manifest without layers"));
        }
        for (kind, d) in raw.references().filter(|(k, _)| k.is_blob()) {
            let digest = ref_digest(d, kind)?;
            // Non-distributable layers live elsewhere (`urls`): not required here.
            if !d.foreign() {
                blobs.push(digest);
            }
        }
        let artifact_type = raw.artifact_type.clone().or_else(|| config.media_type.clone());
        Ok(Parsed { media_type, blobs, manifests, subject, artifact_type, annotations: raw.annotations })
    } else if manifest::is_index(&media_type) {
        if raw.manifests.is_none() {
            return Err(invalid("index without manifests"));
        }
        for c in raw.children() {
            manifests.push(ref_digest(c, RefKind::Child)?);
        }
        Ok(Parsed {
            media_type,
            blobs,
            manifests,
            subject,
            artifact_type: raw.artifact_type,
            annotations: raw.annotations,
        })
    } else {
        Err(invalid(format!("unsupported manifest media type {media_type}")))
    }
}

impl Parsed {
    /// The row stored for this manifest, and its referrers entry when it has a subject.
    pub fn record(&self, digest: &Digest, size: u64, origin: Origin) -> (ManifestRecord, Option<Referrer>) {
        let mut refs = self.blobs.clone();
        refs.extend(self.manifests.iter().cloned());
        refs.sort();
        refs.dedup();
        let record = ManifestRecord {
            media_type: self.media_type.clone(),
            size,
            subject: self.subject.clone(),
            artifact_type: self.artifact_type.clone(),
            annotations: self.annotations.clone(),
            created: now(),
            origin,
            refs,
        };
        let referrer = self.subject.as_ref().map(|_| Referrer {
            media_type: self.media_type.clone(),
            digest: digest.clone(),
            size,
            artifact_type: self.artifact_type.clone(),
            annotations: self.annotations.clone(),
        });
        (record, referrer)
    }
}

/// A manifest as served.
#[derive(Debug, Clone)]
pub struct ManifestOut {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// `None` for HEAD.
    pub body: Option<Bytes>,
}

/// What a PUT answers with.
#[derive(Debug, Clone)]
pub struct PutManifestOut {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

/// Read a body of at most `limit` bytes (the HTTP layer drains what a refusal leaves).
async fn read_limited(mut body: Body, limit: u64) -> Result<Bytes, Error> {
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Error::BodyRead(e.to_string()))?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(Error::ManifestTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Manifests by tag or digest in hosted and mirrored repositories alike, tags, the
/// catalog and referrers (`tags.rs`).
pub(super) struct Manifests {
    pub(super) meta: Meta,
    max_bytes: u64,
}

impl Manifests {
    pub(super) fn new(meta: Meta, max_bytes: u64) -> Self {
        Manifests { meta, max_bytes }
    }

    /// GET/HEAD a manifest by tag or digest.
    pub(super) fn get(
        &self,
        repo: &RepoName,
        reference: &Reference,
        with_body: bool,
    ) -> Result<ManifestOut, Error> {
        let key = match reference {
            Reference::Digest(d) => ManifestKey::Digest(d),
            Reference::Tag(t) => ManifestKey::Tag(t.as_str()),
        };
        let m = self.meta.serve_manifest(repo.as_str(), key, with_body)?.ok_or(Error::ManifestUnknown)?;
        Ok(ManifestOut { digest: m.digest, media_type: m.media_type, size: m.size, body: m.body })
    }

    /// The declared maximum manifest size.
    pub(super) fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// PUT a manifest by tag or digest.
    pub(super) async fn put(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Body,
    ) -> Result<PutManifestOut, Error> {
        let bytes = read_limited(body, self.max_bytes).await?;
        let digest = Digest::of(&bytes);
        if let Reference::Digest(d) = reference {
            if *d != digest {
                return Err(Error::DigestInvalid(format!("manifest bytes hash to {digest}, not {d}")));
            }
        }
        let p = parse(content_type, &bytes)?;
        let size = bytes.len() as u64;
        let (record, referrer) = p.record(&digest, size, Origin::Pushed);
        let tag = match reference {
            Reference::Tag(t) => Some(t.as_str().to_owned()),
            Reference::Digest(_) => None,
        };
        let event = crate::events::push(repo.as_str(), &digest, &record.media_type, size, tag.as_deref());
        self.meta
            .put_manifest(PutManifest {
                repo: repo.as_str().to_owned(),
                digest: digest.clone(),
                record,
                body: bytes.to_vec(),
                blobs: p.blobs,
                manifests: p.manifests,
                tag,
                tag_checked: None,
                referrer,
                check_refs: true,
                event: Some(event),
            })
            .await?;
        Ok(PutManifestOut { digest, subject: p.subject })
    }

    /// DELETE by digest unlinks the manifest (and its tags); by tag removes the tag.
    pub(super) async fn delete(&self, repo: &RepoName, reference: &Reference) -> Result<(), Error> {
        let event = crate::events::delete(repo.as_str());
        let r = match reference {
            Reference::Digest(d) => {
                self.meta.delete_manifest(repo.as_str().to_owned(), d.clone(), Some(event)).await
            }
            Reference::Tag(t) => {
                self.meta.delete_tag(repo.as_str().to_owned(), t.as_str().to_owned(), Some(event)).await
            }
        };
        match r {
            Err(MetaError::NotFound) => Err(Error::ManifestUnknown),
            r => Ok(r?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{OCI_INDEX, OCI_MANIFEST};

    fn d(n: u8) -> String {
        Digest::of(&[n]).to_string()
    }

    #[test]
    fn image_manifest_references_config_and_layers() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"x/cfg","digest":"{}","size":1}},"layers":[{{"mediaType":"l","digest":"{}","size":1}},{{"mediaType":"l","digest":"{}","size":1,"urls":["http://x"]}}]}}"#,
            d(1),
            d(2),
            d(3)
        );
        let p = parse(Some(OCI_MANIFEST), body.as_bytes()).expect("parses");
        assert_eq!(p.blobs.len(), 2);
        assert_eq!(p.artifact_type.as_deref(), Some("x/cfg"));
    }

    #[test]
    fn refuses_schema1_garbage_and_mismatch() {
        assert!(parse(Some(DOCKER_V1_SIGNED), b"{}").is_err());
        assert!(parse(None, br#"{"schemaVersion":1}"#).is_err());
        assert!(parse(None, b"not json").is_err());
        let body = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
        assert!(parse(Some(OCI_MANIFEST), body.as_bytes()).is_err());
        assert!(parse(Some(OCI_INDEX), body.as_bytes()).is_ok());
        assert!(parse(None, br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:zz"}]}"#).is_err());
    }
}
