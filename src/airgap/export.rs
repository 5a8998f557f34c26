//! Export: write images as one bundle, an OCI image layout (directory, or tar: plain,
//! gzip or zstd). Members go `oci-layout`, `index.json` (and `wharfie-bundle.json` for
//! an incremental bundle), every manifest, then the blobs grouped by image, so an
//! importer knows every image's needs before the first layer arrives and can commit
//! each image as soon as its last blob has.
//!
//! Images are `REPO:TAG`, `REPO@DIGEST`, `REPO` (all its tags) or a mirrored name
//! (`docker.io/library/nginx:1.27`): the registry fetches what it lacks through its
//! mirror as the export reads it, so an export doubles as a prefetch.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::bundle::{Compression, Held, LeftOut, ANN_INVENTORY, ANN_LEFT_OUT, BUNDLE_FILE};
use super::{io_err, AirgapError, CONTAINERD_NAME, REF_NAME};
use crate::digest::Digest;
use crate::manifest::{Manifest, OCI_INDEX};
use crate::upstream::client::RegistryClient;
use crate::upstream::UpstreamError;

/// What to export and how.
#[derive(Default)]
pub(crate) struct ExportOptions {
    /// Only this platform of an index (`os/arch[/variant]`); the image is then that
    /// platform's manifest.
    pub platform: Option<String>,
    /// The far side's inventory: leave out everything it holds.
    pub have: Option<Held>,
    /// Write a directory instead of a tar.
    pub dir: bool,
    /// Compression of the tar (default: from the file name).
    pub compression: Option<Compression>,
}

/// What an export wrote.
#[derive(Debug, Default)]
pub(crate) struct ExportSummary {
    pub images: Vec<(String, String, Digest)>,
    pub blobs: usize,
    pub bytes: u64,
    pub left_out_blobs: usize,
    pub left_out_manifests: usize,
}

/// One image to write: repository, reference (tag or digest), root manifest.
struct Image {
    repo: String,
    reference: String,
    digest: Digest,
    media_type: String,
    size: u64,
}

/// Split an image argument into repository and reference (`None`: every tag).
pub(super) fn parse_image(s: &str) -> (String, Option<String>) {
    if let Some((r, d)) = s.split_once('@') {
        return (r.to_owned(), Some(d.to_owned()));
    }
    match s.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
        Some((r, t)) => (r.to_owned(), Some(t.to_owned())),
        None => (s.to_owned(), None),
    }
}

/// Where members go.
enum Sink {
    Dir(PathBuf),
    Tar(Box<tar::Builder<Enc>>),
}

/// The tar's byte stream, compressed or not.
enum Enc {
    Plain(BufWriter<File>),
    Gz(flate2::write::GzEncoder<BufWriter<File>>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<File>>),
}

impl Write for Enc {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Enc::Plain(w) => w.write(b),
            Enc::Gz(w) => w.write(b),
            Enc::Zstd(w) => w.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Enc::Plain(w) => w.flush(),
            Enc::Gz(w) => w.flush(),
            Enc::Zstd(w) => w.flush(),
        }
    }
}

impl Enc {
    fn finish(self) -> std::io::Result<BufWriter<File>> {
        match self {
            Enc::Plain(w) => Ok(w),
            Enc::Gz(w) => w.finish(),
            Enc::Zstd(w) => w.finish(),
        }
    }
}

impl Sink {
    fn put(&mut self, path: &str, size: u64, mut data: impl Read, out: &Path) -> Result<(), AirgapError> {
        match self {
            Sink::Tar(tar) => {
                let mut h = tar::Header::new_gnu();
                h.set_size(size);
                h.set_mode(0o644);
                h.set_mtime(0);
                h.set_entry_type(tar::EntryType::Regular);
                tar.append_data(&mut h, path, data).map_err(io_err(out))
            }
            Sink::Dir(dir) => {
                let p = dir.join(path);
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
                }
                let mut f = BufWriter::new(File::create(&p).map_err(io_err(&p))?);
                std::io::copy(&mut data, &mut f).map_err(io_err(&p))?;
                f.into_inner().map_err(|e| io_err(&p)(e.into_error()))?.sync_all().map_err(io_err(&p))
            }
        }
    }
}

struct Walk<'a> {
    client: &'a RegistryClient,
    have: Option<&'a Held>,
    /// Manifests to write, in order (children first), with their bytes.
    manifests: Vec<(Digest, Vec<u8>)>,
    seen: HashSet<Digest>,
    /// Per image: the blobs (digest, size) it needs that no earlier image brought.
    groups: Vec<(String, Vec<(Digest, u64)>)>,
    blobs_seen: HashSet<Digest>,
    left_out: LeftOut,
    sizes: HashMap<String, u64>,
}

impl Walk<'_> {
    fn held_manifest(&self, d: &Digest) -> bool {
        self.have.is_some_and(|h| h.manifests.contains_key(d.as_str()))
    }

    /// Fetch manifest `digest` of `repo` and what it references (unless the far side
    /// holds it, and so its whole tree).
    fn tree(
        &mut self,
        repo: &str,
        bytes: Vec<u8>,
        digest: &Digest,
        group: &mut Vec<(Digest, u64)>,
        depth: u32,
    ) -> Result<(), AirgapError> {
        if depth > 8 {
            return Err(AirgapError::Format("manifest nesting deeper than 8".into()));
        }
        if !self.seen.insert(digest.clone()) {
            return Ok(());
        }
        let v = Manifest::from_slice(&bytes)
            .map_err(|e| AirgapError::Format(format!("manifest {digest}: {e}")))?;
        for c in v.children() {
            let Ok(cd) = c.digest() else { continue };
            if self.held_manifest(&cd) {
                self.left_out.manifests.insert(cd.to_string());
                self.sizes.insert(cd.to_string(), c.size);
                continue;
            }
            let (cb, _, got) = self.client.get_manifest(repo, cd.as_str())?;
            if got != cd {
                return Err(AirgapError::Format(format!("{repo}: manifest {cd} came back as {got}")));
            }
            self.tree(repo, cb, &cd, group, depth + 1)?;
        }
        for d in v.blobs() {
            let Ok(bd) = d.digest() else { continue };
            if self.have.is_some_and(|h| h.blobs.contains_key(bd.as_str())) {
                self.left_out.blobs.insert(bd.to_string());
                self.sizes.insert(bd.to_string(), d.size);
            } else if self.blobs_seen.insert(bd.clone()) {
                group.push((bd, d.size));
            }
        }
        self.manifests.push((digest.clone(), bytes));
        Ok(())
    }
}

/// Resolve the image arguments into (repository, reference) pairs: `REPO` alone means
/// every tag of it.
fn resolve(client: &RegistryClient, images: &[String]) -> Result<Vec<(String, String)>, AirgapError> {
    let mut out = Vec::new();
    for i in images {
        match parse_image(i) {
            (r, Some(t)) => out.push((r, t)),
            (r, None) => {
                let mut tags = client.list_tags(&r).map_err(|e| match e {
                    UpstreamError::NotFound => AirgapError::Format(format!("{r}: no such repository")),
                    e => AirgapError::Format(format!("{r}: listing its tags: {e}")),
                })?;
                if tags.is_empty() {
                    return Err(AirgapError::Format(format!("{r}: the repository has no tags")));
                }
                tags.sort();
                out.extend(tags.into_iter().map(|t| (r.clone(), t)));
            }
        }
    }
    Ok(out)
}

/// Export `images` into the bundle `out`.
pub(crate) fn export(
    client: &RegistryClient,
    images: &[String],
    out: &Path,
    opts: &ExportOptions,
    progress: &dyn Fn(&str),
) -> Result<ExportSummary, AirgapError> {
    let refs = resolve(client, images)?;
    let mut w = Walk {
        client,
        have: opts.have.as_ref(),
        manifests: Vec::new(),
        seen: HashSet::new(),
        groups: Vec::new(),
        blobs_seen: HashSet::new(),
        left_out: LeftOut::default(),
        sizes: HashMap::new(),
    };
    let mut list = Vec::new();
    for (repo, reference) in &refs {
        let name = format!("{repo}:{reference}");
        let (mut bytes, mut mt, mut digest) = client.get_manifest(repo, reference).map_err(|e| match e {
            UpstreamError::NotFound => AirgapError::Format(format!("{name}: no such image")),
            e => AirgapError::Format(format!("{name}: {e}")),
        })?;
        if let Some(p) = &opts.platform {
            let v = Manifest::from_slice(&bytes)
                .map_err(|e| AirgapError::Format(format!("{name}: manifest is not JSON: {e}")))?;
            if v.manifests.is_some() {
                let c = v
                    .children()
                    .find(|c| c.platform_matches(p))
                    .ok_or_else(|| AirgapError::Format(format!("{name}: no {p} image in its index")))?;
                let cd = c.digest().map_err(|_| AirgapError::Format(format!("{name}: bad index entry")))?;
                (bytes, mt, digest) = client.get_manifest(repo, cd.as_str())?;
            }
        }
        let size = bytes.len() as u64;
        let mut group = Vec::new();
        if w.held_manifest(&digest) {
            w.left_out.manifests.insert(digest.to_string());
            w.sizes.insert(digest.to_string(), size);
        } else {
            w.tree(repo, bytes, &digest, &mut group, 0)?;
        }
        w.groups.push((name, group));
        list.push(Image { repo: repo.clone(), reference: reference.clone(), digest, media_type: mt, size });
    }

    // Write into a temporary name, renamed at the end: an interrupted export leaves
    // nothing that looks like a bundle.
    let tmp = {
        let mut n = out.as_os_str().to_owned();
        n.push(".partial");
        PathBuf::from(n)
    };
    let mut sink = if opts.dir {
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        Sink::Dir(tmp.clone())
    } else {
        let file = BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(io_err(&tmp))?);
        let enc = match opts.compression.unwrap_or_else(|| Compression::of_name(out)) {
            Compression::None => Enc::Plain(file),
            Compression::Gzip => Enc::Gz(flate2::write::GzEncoder::new(file, flate2::Compression::default())),
            Compression::Zstd => Enc::Zstd(zstd::stream::write::Encoder::new(file, 3).map_err(io_err(&tmp))?),
        };
        Sink::Tar(Box::new(tar::Builder::new(enc)))
    };
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    sink.put("oci-layout", layout.len() as u64, &layout[..], out)?;
    let mut index = Vec::new();
    for img in &list {
        let mut ann = BTreeMap::new();
        if img.reference.contains(':') {
            ann.insert(CONTAINERD_NAME, format!("{}@{}", img.repo, img.reference));
        } else {
            ann.insert(REF_NAME, img.reference.clone());
            ann.insert(CONTAINERD_NAME, format!("{}:{}", img.repo, img.reference));
        }
        index.push(serde_json::json!({
            "mediaType": img.media_type, "digest": img.digest, "size": img.size, "annotations": ann,
        }));
    }
    let mut idx = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": index,
    });
    let incremental = opts.have.is_some();
    if let Some(h) = &opts.have {
        w.left_out.inventory = h.id.as_ref().map(std::string::ToString::to_string);
        idx["annotations"] = serde_json::json!({
            ANN_INVENTORY: w.left_out.inventory,
            ANN_LEFT_OUT: BUNDLE_FILE,
        });
    }
    let bytes = serde_json::to_vec(&idx).map_err(|e| AirgapError::Format(e.to_string()))?;
    sink.put("index.json", bytes.len() as u64, bytes.as_slice(), out)?;
    if incremental {
        let b = w.left_out.to_json(&w.sizes);
        sink.put(BUNDLE_FILE, b.len() as u64, b.as_slice(), out)?;
    }
    let mut summary = ExportSummary {
        left_out_blobs: w.left_out.blobs.len(),
        left_out_manifests: w.left_out.manifests.len(),
        ..Default::default()
    };
    for (d, b) in &w.manifests {
        sink.put(&format!("blobs/sha256/{}", d.hex()), b.len() as u64, b.as_slice(), out)?;
        summary.blobs += 1;
        summary.bytes += b.len() as u64;
    }
    for ((name, group), img) in w.groups.iter().zip(&list) {
        for (d, _) in group {
            let (len, body) = client.get_blob(&img.repo, d)?;
            sink.put(&format!("blobs/sha256/{}", d.hex()), len, body, out)?;
            summary.blobs += 1;
            summary.bytes += len;
        }
        progress(&format!("exported {name} ({})", img.digest));
        summary.images.push((img.repo.clone(), img.reference.clone(), img.digest.clone()));
    }
    match sink {
        Sink::Tar(tar) => {
            let enc = tar.into_inner().map_err(io_err(out))?;
            let mut file = enc.finish().map_err(io_err(out))?;
            file.flush().map_err(io_err(out))?;
            file.get_ref().sync_all().map_err(io_err(out))?;
            std::fs::rename(&tmp, out).map_err(io_err(out))?;
        }
        Sink::Dir(_) => {
            if out.exists() {
                std::fs::remove_dir_all(out).map_err(io_err(out))?;
            }
            std::fs::rename(&tmp, out).map_err(io_err(out))?;
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_arguments() {
        assert_eq!(parse_image("a/b:v1"), ("a/b".into(), Some("v1".into())));
        assert_eq!(parse_image("a/b"), ("a/b".into(), None));
        assert_eq!(parse_image("localhost:5000/a"), ("localhost:5000/a".into(), None));
        assert_eq!(parse_image("a@sha256:00"), ("a".into(), Some("sha256:00".into())));
        let e = br#"{"digest":"","platform":{"os":"linux","architecture":"arm64","variant":"v8"}}"#;
        let e: crate::manifest::Descriptor = serde_json::from_slice(e).expect("descriptor");
        assert!(e.platform_matches("linux/arm64"));
        assert!(e.platform_matches("linux/arm64/v8"));
        assert!(!e.platform_matches("linux/amd64"));
    }
}
