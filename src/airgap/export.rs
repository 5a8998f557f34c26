//! Export: write images as one OCI archive (an OCI image layout in a tar), streaming
//! every blob from the registry into the tar; children before the index that lists
//! them, `index.json` last.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde_json::Value;

use super::{io_err, AirgapError, CONTAINERD_NAME, REF_NAME};
use crate::digest::Digest;
use crate::upstream::client::RegistryClient;

fn append(
    tar: &mut tar::Builder<BufWriter<File>>,
    path: &str,
    size: u64,
    data: impl std::io::Read,
    out: &Path,
) -> Result<(), AirgapError> {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, path, data).map_err(io_err(out))
}

struct Writer<'a> {
    client: &'a RegistryClient,
    tar: tar::Builder<BufWriter<File>>,
    written: HashSet<Digest>,
    out: &'a Path,
}

impl Writer<'_> {
    fn blob(&mut self, repo: &str, d: &Digest) -> Result<(), AirgapError> {
        if !self.written.insert(d.clone()) {
            return Ok(());
        }
        let (len, body) = self.client.get_blob(repo, d)?;
        append(&mut self.tar, &format!("blobs/sha256/{}", d.hex()), len, body, self.out)
    }

    /// Write manifest `reference` of `repo` and all it references; returns its
    /// descriptor parts.
    fn tree(
        &mut self,
        repo: &str,
        reference: &str,
        depth: u32,
    ) -> Result<(String, Digest, u64), AirgapError> {
        if depth > 8 {
            return Err(AirgapError::Format("manifest nesting deeper than 8".into()));
        }
        let (bytes, mt, digest) = self.client.get_manifest(repo, reference)?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| AirgapError::Format(format!("manifest {digest}: {e}")))?;
        let dg = |x: &Value| -> Option<Digest> { x["digest"].as_str()?.parse().ok() };
        if let Some(children) = v["manifests"].as_array() {
            for c in children {
                if let Some(cd) = dg(c) {
                    self.tree(repo, cd.as_str(), depth + 1)?;
                }
            }
        }
        if let Some(c) = dg(&v["config"]) {
            self.blob(repo, &c)?;
        }
        for l in v["layers"].as_array().cloned().unwrap_or_default() {
            if l.get("urls").is_some() {
                continue;
            }
            if let Some(d) = dg(&l) {
                self.blob(repo, &d)?;
            }
        }
        let size = bytes.len() as u64;
        if self.written.insert(digest.clone()) {
            append(
                &mut self.tar,
                &format!("blobs/sha256/{}", digest.hex()),
                size,
                bytes.as_slice(),
                self.out,
            )?;
        }
        Ok((mt, digest, size))
    }
}

/// Export `images` (repository, tag) into the OCI archive `out`.
pub fn export(
    client: &RegistryClient,
    images: &[(String, String)],
    out: &Path,
    progress: &dyn Fn(&str),
) -> Result<(), AirgapError> {
    let file = File::create(out).map_err(io_err(out))?;
    let mut w = Writer { client, tar: tar::Builder::new(BufWriter::new(file)), written: HashSet::new(), out };
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    append(&mut w.tar, "oci-layout", layout.len() as u64, &layout[..], out)?;
    let mut index = Vec::new();
    for (repo, tag) in images {
        let (mt, digest, size) = w.tree(repo, tag, 0)?;
        progress(&format!("exported {repo}:{tag} ({digest})"));
        let mut ann = BTreeMap::new();
        ann.insert(REF_NAME, tag.clone());
        ann.insert(CONTAINERD_NAME, format!("{repo}:{tag}"));
        index
            .push(serde_json::json!({ "mediaType": mt, "digest": digest, "size": size, "annotations": ann }));
    }
    let idx = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": index,
    });
    let bytes = serde_json::to_vec(&idx).map_err(|e| AirgapError::Format(e.to_string()))?;
    append(&mut w.tar, "index.json", bytes.len() as u64, bytes.as_slice(), out)?;
    let mut inner = w.tar.into_inner().map_err(io_err(out))?;
    inner.flush().map_err(io_err(out))?;
    inner.get_ref().sync_all().map_err(io_err(out))?;
    Ok(())
}
