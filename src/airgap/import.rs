//! Import: stream every blob of an archive into a scratch repository (its digest is
//! checked by the server's commit), then mount what each image needs into its target
//! repository and push its manifests, children before parents. The scratch links are
//! removed at the end (GC reclaims anything no manifest references).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::{io_err, AirgapError, CONTAINERD_NAME, REF_NAME};
use crate::digest::Digest;
use crate::names::{RepoName, Tag};
use crate::upstream::client::RegistryClient;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Metadata files kept in memory are at most this big.
const MAX_META: u64 = 16 << 20;

/// Where imported images go: a repository, and optionally one tag for all of them.
#[derive(Debug, Clone)]
pub struct ImportTarget {
    pub repo: RepoName,
    pub tag: Option<Tag>,
}

/// What one pass over an archive found.
#[derive(Default)]
struct Scan {
    /// `index.json`, `manifest.json`.
    index: Option<Vec<u8>>,
    docker_manifest: Option<Vec<u8>>,
    /// archive path → (digest, size) of every blob uploaded.
    files: HashMap<String, (Digest, u64)>,
    /// symlink path → target path (docker save dedups layers this way).
    links: HashMap<String, String>,
}

impl Scan {
    fn resolve(&self, path: &str) -> Option<&(Digest, u64)> {
        let mut p = normalize(path);
        for _ in 0..16 {
            if let Some(f) = self.files.get(&p) {
                return Some(f);
            }
            p = self.links.get(&p)?.clone();
        }
        None
    }
}

fn normalize(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// A reader that hashes what passes through.
struct Hashing<R> {
    inner: R,
    sha: Sha256,
    n: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

/// Upload one archive member through a pipe: the member borrows the archive (and is
/// not `Send`), while the HTTP body must be `'static`, so this thread copies the member
/// into the pipe, hashing it, while a scoped thread sends the other end. With no
/// `known` digest, the hash finishes the upload.
fn upload_member(
    client: &RegistryClient,
    scratch: &str,
    member: &mut dyn Read,
    size: u64,
    known: Option<Digest>,
) -> Result<(Digest, u64), AirgapError> {
    std::thread::scope(|s| {
        let (r, mut w) = io::pipe().map_err(|e| AirgapError::Format(format!("pipe: {e}")))?;
        let (tx, rx) = std::sync::mpsc::channel::<Digest>();
        let named = known.clone();
        let uploader = s.spawn(move || match known {
            Some(d) => client.put_blob(scratch, &d, size, r).map(|()| d),
            // The PATCH reads the pipe to EOF before this closure runs: the digest has
            // been sent by then.
            None => client.put_blob_streamed(scratch, r, || rx.recv().ok()),
        });
        let mut h = Hashing { inner: member, sha: Sha256::new(), n: 0 };
        let copied = io::copy(&mut h, &mut w);
        drop(w);
        let digest = Digest::from_sha256(h.sha.finalize().into());
        // Only a member read to its end may finish its upload: on a read error the
        // sender is dropped, so the session is never completed with a prefix.
        if copied.is_ok() {
            let _ = tx.send(digest.clone());
        }
        drop(tx);
        let sent = uploader.join().map_err(|_| AirgapError::Format("upload thread panicked".into()))?;
        // Our own reading first: a short read or wrong content explains the server's
        // refusal better than its answer does (a broken pipe only means it refused early).
        match &copied {
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
                return Err(AirgapError::Format(format!("reading archive member: {e}")));
            }
            Ok(_) => {
                if let Some(n) = named.filter(|n| *n != digest) {
                    return Err(AirgapError::Format(format!(
                        "content does not match its digest: named {n}, hashes to {digest}"
                    )));
                }
            }
            Err(_) => {}
        }
        let sent = sent?;
        copied.map_err(|e| AirgapError::Format(format!("reading archive member: {e}")))?;
        if sent != digest {
            return Err(AirgapError::Format(format!("member hashes to {digest}, expected {sent}")));
        }
        Ok((digest, h.n))
    })
}

/// Is this archive path a blob we should upload, and under which digest if known?
enum Member {
    Index,
    DockerManifest,
    Skip,
    Blob(Option<Digest>),
}

fn classify(path: &str) -> Member {
    match path {
        "index.json" => return Member::Index,
        "manifest.json" => return Member::DockerManifest,
        "oci-layout" | "repositories" => return Member::Skip,
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("blobs/") {
        if let Some((algo, hex)) = rest.split_once('/') {
            return Member::Blob(format!("{algo}:{hex}").parse().ok());
        }
    }
    // Legacy `docker save`: `<id>/layer.tar`, `<id>.json` configs, `<id>/json`, VERSION.
    if path.ends_with("/json") || path.ends_with("/VERSION") {
        return Member::Skip;
    }
    Member::Blob(None)
}

fn read_meta(r: &mut dyn Read, path: &str) -> Result<Vec<u8>, AirgapError> {
    let mut buf = Vec::new();
    r.take(MAX_META + 1).read_to_end(&mut buf).map_err(|e| AirgapError::Format(format!("{path}: {e}")))?;
    if buf.len() as u64 > MAX_META {
        return Err(AirgapError::Format(format!("{path} is larger than {MAX_META} bytes")));
    }
    Ok(buf)
}

/// One pass over a tar stream. What was uploaded is in `scan` even on error.
fn scan_tar(
    client: &RegistryClient,
    scratch: &str,
    reader: impl Read + Send,
    scan: &mut Scan,
) -> Result<(), AirgapError> {
    let mut ar = tar::Archive::new(reader);
    let entries = ar.entries().map_err(|e| AirgapError::Format(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| AirgapError::Format(format!("tar: {e}")))?;
        let path = normalize(
            &entry.path().map_err(|e| AirgapError::Format(format!("tar path: {e}")))?.to_string_lossy(),
        );
        match entry.header().entry_type() {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                if let Ok(Some(target)) = entry.link_name() {
                    let target = target.to_string_lossy().to_string();
                    let base = if entry.header().entry_type() == tar::EntryType::Symlink {
                        Path::new(&path).parent().map(|p| p.to_string_lossy().to_string()).unwrap_or_default()
                    } else {
                        String::new()
                    };
                    scan.links.insert(path, normalize(&format!("{base}/{target}")));
                }
                continue;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            _ => continue,
        }
        let size = entry.size();
        match classify(&path) {
            Member::Index => scan.index = Some(read_meta(&mut entry, &path)?),
            Member::DockerManifest => scan.docker_manifest = Some(read_meta(&mut entry, &path)?),
            Member::Skip => {}
            Member::Blob(known) => {
                let got = upload_member(client, scratch, &mut entry, size, known)
                    .map_err(|e| AirgapError::Format(format!("archive member {path}: {e}")))?;
                scan.files.insert(path, got);
            }
        }
    }
    Ok(())
}

/// An OCI layout directory: the same members, read from files.
fn scan_dir(client: &RegistryClient, scratch: &str, dir: &Path, scan: &mut Scan) -> Result<(), AirgapError> {
    let index = dir.join("index.json");
    scan.index = Some(std::fs::read(&index).map_err(io_err(&index))?);
    let blobs = dir.join("blobs");
    for algo in std::fs::read_dir(&blobs).map_err(io_err(&blobs))? {
        let algo = algo.map_err(io_err(&blobs))?.path();
        for f in std::fs::read_dir(&algo).map_err(io_err(&algo))? {
            let f = f.map_err(io_err(&algo))?.path();
            let rel = f.strip_prefix(dir).map(|p| p.to_string_lossy().to_string()).unwrap_or_default();
            let Member::Blob(known) = classify(&rel) else {
                continue;
            };
            let mut file = File::open(&f).map_err(io_err(&f))?;
            let size = file.metadata().map_err(io_err(&f))?.len();
            let got = upload_member(client, scratch, &mut file, size, known)
                .map_err(|e| AirgapError::Format(format!("{}: {e}", f.display())))?;
            scan.files.insert(rel, got);
        }
    }
    Ok(())
}

/// Open a file as a tar stream, gunzipping when it starts with the gzip magic.
fn open_tar(path: &Path) -> Result<Box<dyn Read + Send>, AirgapError> {
    let mut f = BufReader::new(File::open(path).map_err(io_err(path))?);
    let head = io::BufRead::fill_buf(&mut f).map_err(io_err(path))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::GzDecoder::new(f)))
    } else {
        Ok(Box::new(f))
    }
}

/// Split `name:tag` (dropping a `host:port/` first component, which names where the
/// image came from, not a repository here).
fn split_ref(r: &str) -> Option<(RepoName, Option<Tag>)> {
    let r = r.split('@').next().unwrap_or(r);
    let (name, tag) = match r.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, Some(t)),
        _ => (r, None),
    };
    let name = match name.split_once('/') {
        Some((first, rest)) if first.contains(':') || first == "localhost" => rest,
        _ => name,
    };
    let repo = RepoName::parse(name).ok()?;
    let tag = match tag {
        Some(t) => Some(Tag::parse(t).ok()?),
        None => None,
    };
    Some((repo, tag))
}

/// What the importer pushed.
#[derive(Debug, Clone)]
pub struct Imported {
    pub repo: String,
    pub reference: String,
    pub digest: Digest,
}

/// Push manifest `digest` (fetched from the scratch repository) and, first, everything
/// it references, into `repo`.
fn push_tree(
    client: &RegistryClient,
    scratch: &str,
    repo: &str,
    digest: &Digest,
    media_type: Option<&str>,
    reference: &str,
    depth: u32,
) -> Result<(), AirgapError> {
    if depth > 8 {
        return Err(AirgapError::Format("manifest nesting deeper than 8".into()));
    }
    let bytes = client.get_blob_bytes(scratch, digest)?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| AirgapError::Format(format!("manifest {digest} is not JSON: {e}")))?;
    let mt = v["mediaType"].as_str().or(media_type).map(str::to_owned).unwrap_or_else(|| {
        if v.get("manifests").is_some() {
            OCI_INDEX.into()
        } else {
            "application/vnd.oci.image.manifest.v1+json".into()
        }
    });
    let desc_digest = |d: &Value| -> Option<Digest> { d["digest"].as_str()?.parse().ok() };
    if let Some(children) = v["manifests"].as_array() {
        for c in children {
            if let Some(cd) = desc_digest(c) {
                push_tree(client, scratch, repo, &cd, c["mediaType"].as_str(), cd.as_str(), depth + 1)?;
            }
        }
    }
    let mut blobs: Vec<Digest> =
        v["config"].as_object().and_then(|_| desc_digest(&v["config"])).into_iter().collect();
    if let Some(layers) = v["layers"].as_array() {
        blobs.extend(layers.iter().filter(|l| l.get("urls").is_none()).filter_map(desc_digest));
    }
    for b in &blobs {
        if !client.mount(repo, b, scratch)? {
            return Err(AirgapError::Format(format!(
                "the archive lacks blob {b}, which {digest} references"
            )));
        }
    }
    client.put_manifest(repo, reference, &mt, bytes)?;
    Ok(())
}

/// Import every image in `inputs`. Returns what was pushed.
pub fn import(
    client: &RegistryClient,
    inputs: &[PathBuf],
    target: Option<&ImportTarget>,
    progress: &dyn Fn(&str),
) -> Result<Vec<Imported>, AirgapError> {
    let scratch = format!("wharfie-import/{}", uuid::Uuid::new_v4().simple());
    let mut out = Vec::new();
    for input in inputs {
        progress(&format!("reading {}", input.display()));
        let mut scan = Scan::default();
        let scanned = if input.is_dir() {
            scan_dir(client, &scratch, input, &mut scan)
        } else {
            open_tar(input).and_then(|r| scan_tar(client, &scratch, r, &mut scan))
        };
        let pushed = scanned.and_then(|()| push_images(client, &scratch, &scan, target, input));
        // Drop the scratch links, whatever happened: the images keep what they
        // reference, and a failed import leaves nothing linked (GC reclaims the rest).
        for (d, _) in scan.files.values() {
            let _ = client.delete_blob(&scratch, d);
        }
        let pushed = pushed.map_err(|e| match e {
            AirgapError::Io { .. } => e,
            e => AirgapError::Format(format!("{}: {e}", input.display())),
        })?;
        for p in &pushed {
            progress(&format!("imported {}:{} ({})", p.repo, p.reference, p.digest));
        }
        out.extend(pushed);
    }
    Ok(out)
}

fn push_images(
    client: &RegistryClient,
    scratch: &str,
    scan: &Scan,
    target: Option<&ImportTarget>,
    input: &Path,
) -> Result<Vec<Imported>, AirgapError> {
    let mut out = Vec::new();
    let name_for = |found: Option<(RepoName, Option<Tag>)>| -> Result<(String, String), AirgapError> {
        let (repo, tag) = match (target, found) {
            (Some(t), found) => (t.repo.clone(), t.tag.clone().or(found.and_then(|f| f.1))),
            (None, Some((r, t))) => (r, t),
            (None, None) => {
                return Err(AirgapError::Format(format!(
                    "{}: an image has no name; pass --repo NAME[:TAG]",
                    input.display()
                )))
            }
        };
        Ok((repo.to_string(), tag.map_or_else(|| "latest".to_owned(), |t| t.to_string())))
    };
    if let Some(index) = &scan.index {
        let v: Value =
            serde_json::from_slice(index).map_err(|e| AirgapError::Format(format!("index.json: {e}")))?;
        let manifests = v["manifests"].as_array().cloned().unwrap_or_default();
        if !manifests.is_empty() {
            for m in manifests {
                let Some(d) = m["digest"].as_str().and_then(|d| d.parse::<Digest>().ok()) else {
                    return Err(AirgapError::Format("index.json entry without a valid digest".into()));
                };
                let ann = &m["annotations"];
                let found = ann[CONTAINERD_NAME].as_str().and_then(split_ref).or_else(|| {
                    ann[REF_NAME].as_str().and_then(|r| {
                        if r.contains(':') || r.contains('/') {
                            split_ref(r)
                        } else {
                            // A bare tag: the repository must come from --repo.
                            target.map(|t| (t.repo.clone(), Tag::parse(r).ok()))
                        }
                    })
                });
                let (repo, reference) = name_for(found)?;
                push_tree(client, scratch, &repo, &d, m["mediaType"].as_str(), &reference, 0)?;
                out.push(Imported { repo, reference, digest: d });
            }
            return Ok(out);
        }
    }
    let Some(dm) = &scan.docker_manifest else {
        return Err(AirgapError::Format(format!(
            "{}: neither index.json nor manifest.json: not an image archive",
            input.display()
        )));
    };
    let entries: Vec<Value> =
        serde_json::from_slice(dm).map_err(|e| AirgapError::Format(format!("manifest.json: {e}")))?;
    for e in entries {
        let config_path = e["Config"].as_str().unwrap_or_default();
        let (config, config_size) = scan.resolve(config_path).cloned().ok_or_else(|| {
            AirgapError::Format(format!("manifest.json names missing config {config_path}"))
        })?;
        let mut layers = Vec::new();
        for l in e["Layers"].as_array().cloned().unwrap_or_default() {
            let lp = l.as_str().unwrap_or_default();
            let (d, n) = scan
                .resolve(lp)
                .cloned()
                .ok_or_else(|| AirgapError::Format(format!("manifest.json names missing layer {lp}")))?;
            layers.push(serde_json::json!({ "mediaType": DOCKER_LAYER, "size": n, "digest": d }));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": { "mediaType": DOCKER_CONFIG, "size": config_size, "digest": config },
            "layers": layers,
        });
        let bytes = serde_json::to_vec(&manifest).map_err(|e| AirgapError::Format(e.to_string()))?;
        let digest = Digest::of(&bytes);
        let tags: Vec<Option<(RepoName, Option<Tag>)>> = match e["RepoTags"].as_array() {
            Some(t) if !t.is_empty() => t.iter().map(|r| r.as_str().and_then(split_ref)).collect(),
            _ => vec![None],
        };
        for found in tags {
            let (repo, reference) = name_for(found)?;
            let mut all = vec![config.clone()];
            all.extend(layers.iter().filter_map(|l| l["digest"].as_str()?.parse().ok()));
            for b in &all {
                if !client.mount(&repo, b, scratch)? {
                    return Err(AirgapError::Format(format!("blob {b} did not arrive")));
                }
            }
            client.put_manifest(&repo, &reference, DOCKER_MANIFEST, bytes.clone())?;
            out.push(Imported { repo, reference, digest: digest.clone() });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_and_paths() {
        assert_eq!(normalize("./blobs//sha256/../sha256/ab"), "blobs/sha256/ab");
        let (r, t) = split_ref("localhost:5000/team/app:v1").expect("parses");
        assert_eq!((r.as_str(), t.map(|t| t.to_string())), ("team/app", Some("v1".into())));
        let (r, t) = split_ref("docker.io/library/nginx").expect("parses");
        assert_eq!((r.as_str(), t), ("docker.io/library/nginx", None));
        assert!(split_ref("UPPER:x").is_none());
        assert!(matches!(classify("blobs/sha256/zz"), Member::Blob(None)));
        assert!(matches!(classify("abc/layer.tar"), Member::Blob(None)));
        assert!(matches!(classify("abc/json"), Member::Skip));
        assert!(matches!(classify("index.json"), Member::Index));
    }
}
