//! Import: stream every blob of an archive into a scratch repository (its digest is
//! checked by the server's commit), then mount what each image needs into its target
//! repository and push its manifests, children before parents. The scratch links are
//! removed at the end (GC reclaims anything no manifest references).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::{io_err, AirgapError, CONTAINERD_NAME, REF_NAME};
use crate::digest::Digest;
use crate::manifest::{Manifest, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, OCI_MANIFEST};
use crate::names::{RepoName, Tag};
use crate::upstream::client::RegistryClient;

/// Metadata files kept in memory are at most this big.
const MAX_META: u64 = 16 << 20;

/// Where imported images go: a repository, and optionally one tag for all of them.
#[derive(Debug, Clone)]
pub(crate) struct ImportTarget {
    pub repo: RepoName,
    pub tag: Option<Tag>,
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
    /// `wharfie-bundle.json`: what an incremental bundle left out.
    Bundle,
    DockerManifest,
    Skip,
    Blob(Option<Digest>),
}

fn classify(path: &str) -> Member {
    match path {
        "index.json" => return Member::Index,
        "manifest.json" => return Member::DockerManifest,
        super::bundle::BUNDLE_FILE => return Member::Bundle,
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

/// Members up to this size are read into memory (manifests among them are kept there).
const SMALL: u64 = 4 << 20;

/// One image, imported, skipped (already there) or refused.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Imported {
    pub repo: String,
    pub reference: String,
    pub digest: Digest,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Refused {
    pub repo: String,
    pub reference: String,
    pub digest: Option<Digest>,
    pub input: String,
    pub reason: String,
    /// Digests the image needs that are neither in the bundle nor on the server.
    pub missing: Vec<String>,
}

/// What an import did.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct ImportReport {
    pub imported: Vec<Imported>,
    pub skipped: Vec<Imported>,
    pub refused: Vec<Refused>,
    /// Blobs uploaded, and their bytes.
    pub blobs: u64,
    pub bytes: u64,
    /// Members not uploaded because an image already imported holds them.
    pub skipped_blobs: u64,
    pub skipped_bytes: u64,
    /// Inputs that could not be read at all, with why.
    pub errors: Vec<String>,
}

/// Progress: an overall bar (bytes of the input), one for the member in flight, and
/// lines. Hidden with `quiet` or when stderr is not a terminal (lines still print
/// then, unless `quiet`).
pub(crate) struct Ui {
    quiet: bool,
    mp: indicatif::MultiProgress,
    overall: indicatif::ProgressBar,
    member: indicatif::ProgressBar,
}

impl Ui {
    pub(crate) fn new(quiet: bool) -> Ui {
        let mp = if quiet {
            indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
        } else {
            indicatif::MultiProgress::new()
        };
        let style = |t: &str| {
            indicatif::ProgressStyle::with_template(t)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        };
        let overall = mp.add(indicatif::ProgressBar::new(0));
        overall
            .set_style(style("{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}"));
        overall.set_prefix("bundle");
        let member = mp.add(indicatif::ProgressBar::new(0));
        member
            .set_style(style("{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}"));
        member.set_prefix("member");
        Ui { quiet, mp, overall, member }
    }

    pub(crate) fn line(&self, m: &str) {
        if self.quiet {
            return;
        }
        if self.mp.is_hidden() {
            eprintln!("{m}");
        } else {
            let _ = self.mp.println(m);
        }
    }

    fn done(&self) {
        self.member.finish_and_clear();
        self.overall.finish_and_clear();
    }
}

/// One image of `index.json`.
struct Plan {
    repo: String,
    reference: String,
    digest: Digest,
    media_type: Option<String>,
    done: bool,
}

/// Where a needed digest comes from at commit time.
enum Source {
    /// Uploaded into the scratch repository by this run.
    Scratch,
    /// Linked in this repository already (an image imported before, or the server).
    Repo(String),
    /// A manifest read from the bundle, needed as a blob.
    Memory,
}

/// One input being imported.
struct Run<'a> {
    client: &'a RegistryClient,
    scratch: &'a str,
    target: Option<&'a ImportTarget>,
    input: &'a Path,
    ui: &'a Ui,
    report: &'a mut ImportReport,
    index: Option<Vec<u8>>,
    docker_manifest: Option<Vec<u8>>,
    left_out: Option<super::bundle::LeftOut>,
    /// archive path → (digest, size) of every blob uploaded (for `docker save`).
    files: HashMap<String, (Digest, u64)>,
    links: HashMap<String, String>,
    manifests: HashMap<Digest, Vec<u8>>,
    arrived: HashSet<Digest>,
    bad: HashMap<Digest, String>,
    /// What is linked where already: images committed or found in place by this run,
    /// and (for an incremental bundle) the server's located inventory.
    landed: HashMap<Digest, String>,
    server: Option<super::bundle::Held>,
    plans: Vec<Plan>,
    planned: bool,
    blocked: HashMap<Digest, Vec<usize>>,
}

/// What an image lacks, and what is wrong with what it has.
#[derive(Default)]
struct Needs {
    missing: Vec<Digest>,
    bad: Vec<String>,
}

impl Run<'_> {
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

    fn where_blob(&self, d: &Digest) -> Option<Source> {
        if self.arrived.contains(d) {
            return Some(Source::Scratch);
        }
        if let Some(r) = self.landed.get(d) {
            return Some(Source::Repo(r.clone()));
        }
        if self.manifests.contains_key(d) {
            return Some(Source::Memory);
        }
        let s = self.server.as_ref()?;
        s.blobs.get(d.as_str()).and_then(|(_, r)| r.clone()).map(Source::Repo)
    }

    /// A manifest held on the server (or by an image already imported), not in the
    /// bundle: its repository.
    fn held_manifest(&self, d: &Digest) -> Option<String> {
        if let Some(r) = self.landed.get(d) {
            return Some(r.clone());
        }
        let s = self.server.as_ref()?;
        s.manifests.get(d.as_str()).and_then(|(_, r)| r.clone())
    }

    /// Everything the tree under `d` needs that is not here yet.
    fn needs(&self, d: &Digest, out: &mut Needs, seen: &mut HashSet<Digest>, depth: u32) {
        if depth > 8 || !seen.insert(d.clone()) {
            if depth > 8 {
                out.bad.push(format!("manifest nesting under {d} deeper than 8"));
            }
            return;
        }
        if let Some(why) = self.bad.get(d) {
            out.bad.push(why.clone());
            return;
        }
        let Some(bytes) = self.manifests.get(d) else {
            if self.held_manifest(d).is_none() {
                out.missing.push(d.clone());
            }
            return;
        };
        let Ok(v) = Manifest::from_slice(bytes) else {
            out.bad.push(format!("manifest {d} is not JSON"));
            return;
        };
        for c in v.children() {
            if let Ok(cd) = c.digest() {
                self.needs(&cd, out, seen, depth + 1);
            }
        }
        for b in blob_refs(&v) {
            if let Some(why) = self.bad.get(&b) {
                out.bad.push(why.clone());
            } else if self.where_blob(&b).is_none() && seen.insert(b.clone()) {
                out.missing.push(b);
            }
        }
    }

    /// Every digest of the tree under `d` that the bundle holds in memory (manifests)
    /// or references: what an image already in place links.
    fn closure(&self, d: &Digest, out: &mut Vec<Digest>, depth: u32) {
        out.push(d.clone());
        let Some(v) = self.manifests.get(d).and_then(|b| Manifest::from_slice(b).ok()) else {
            return;
        };
        if depth > 8 {
            return;
        }
        for c in v.children() {
            if let Ok(cd) = c.digest() {
                self.closure(&cd, out, depth + 1);
            }
        }
        out.extend(blob_refs(&v));
    }

    fn name(p: &Plan) -> String {
        if p.reference.contains(':') {
            format!("{}@{}", p.repo, p.reference)
        } else {
            format!("{}:{}", p.repo, p.reference)
        }
    }

    fn refuse(&mut self, i: usize, reason: String, missing: Vec<String>) {
        let p = &mut self.plans[i];
        p.done = true;
        let name = if p.reference.contains(':') {
            format!("{}@{}", p.repo, p.reference)
        } else {
            format!("{}:{}", p.repo, p.reference)
        };
        self.ui.line(&format!("refused {name} from {}: {reason}", self.input.display()));
        self.report.refused.push(Refused {
            repo: p.repo.clone(),
            reference: p.reference.clone(),
            digest: Some(p.digest.clone()),
            input: self.input.display().to_string(),
            reason,
            missing,
        });
    }

    /// Commit image `i` if it has everything, refuse it if something it needs is bad
    /// (or, at the end, missing), else wait for its first missing digest.
    fn check(&mut self, i: usize, at_end: bool) {
        if self.plans[i].done {
            return;
        }
        let mut n = Needs::default();
        self.needs(&self.plans[i].digest.clone(), &mut n, &mut HashSet::new(), 0);
        if !n.bad.is_empty() {
            let reason = n.bad.join("; ");
            return self.refuse(i, reason, n.missing.iter().map(std::string::ToString::to_string).collect());
        }
        if let Some(first) = n.missing.first() {
            if !at_end {
                self.blocked.entry(first.clone()).or_default().push(i);
                return;
            }
            let list: Vec<String> = n.missing.iter().map(std::string::ToString::to_string).collect();
            let reason = if self.left_out.is_some() {
                format!(
                    "it needs {} digest(s) that are neither in the bundle nor on this server: {}",
                    list.len(),
                    list.join(", ")
                )
            } else {
                format!("the archive lacks {}", list.join(", "))
            };
            return self.refuse(i, reason, list);
        }
        let (repo, reference, digest, mt) = {
            let p = &self.plans[i];
            (p.repo.clone(), p.reference.clone(), p.digest.clone(), p.media_type.clone())
        };
        let mut linked = Vec::new();
        match self.push(&repo, &digest, mt.as_deref(), &reference, None, &mut linked, 0) {
            Ok(()) => {
                for d in linked {
                    self.landed.entry(d).or_insert_with(|| repo.clone());
                }
                self.plans[i].done = true;
                let name = Self::name(&self.plans[i]);
                self.ui.line(&format!("imported {name} ({digest})"));
                self.report.imported.push(Imported { repo, reference, digest });
            }
            Err(e) => self.refuse(i, e.to_string(), Vec::new()),
        }
    }

    /// Link blob `b` into `repo` from wherever it is (`fallback`: the repository of
    /// a server-held manifest that references it).
    fn link_blob(&self, repo: &str, b: &Digest, fallback: Option<&str>) -> Result<(), AirgapError> {
        let from = match self.where_blob(b) {
            Some(Source::Scratch) => self.scratch.to_owned(),
            Some(Source::Repo(r)) => r,
            Some(Source::Memory) => {
                let bytes = self.manifests.get(b).cloned().unwrap_or_default();
                let n = bytes.len() as u64;
                self.client.put_blob(repo, b, n, io::Cursor::new(bytes))?;
                return Ok(());
            }
            None => match fallback {
                Some(f) => f.to_owned(),
                None => return Err(AirgapError::Format(format!("blob {b} did not arrive"))),
            },
        };
        if from == repo {
            return Ok(());
        }
        if !self.client.mount(repo, b, &from)? {
            return Err(AirgapError::Format(format!("blob {b} could not be linked into {repo}")));
        }
        Ok(())
    }

    /// Push manifest `d` and, first, everything it references into `repo`.
    #[allow(clippy::too_many_arguments)]
    fn push(
        &self,
        repo: &str,
        d: &Digest,
        media_type: Option<&str>,
        reference: &str,
        from: Option<&str>,
        linked: &mut Vec<Digest>,
        depth: u32,
    ) -> Result<(), AirgapError> {
        if depth > 8 {
            return Err(AirgapError::Format("manifest nesting deeper than 8".into()));
        }
        let (bytes, src) = match self.manifests.get(d) {
            Some(b) => (b.clone(), None),
            None => {
                let src = self.held_manifest(d).or(from.map(str::to_owned)).ok_or_else(|| {
                    AirgapError::Format(format!("manifest {d} is neither in the bundle nor on this server"))
                })?;
                let (b, _, got) = self.client.get_manifest(&src, d.as_str())?;
                if got != *d {
                    return Err(AirgapError::Format(format!("manifest {d} came back as {got}")));
                }
                (b, Some(src))
            }
        };
        let v = Manifest::from_slice(&bytes)
            .map_err(|e| AirgapError::Format(format!("manifest {d} is not JSON: {e}")))?;
        let mt = v
            .media_type
            .as_deref()
            .or(media_type)
            .or_else(|| v.guessed_media_type())
            .unwrap_or(OCI_MANIFEST)
            .to_owned();
        let src_ref = src.as_deref().or(from);
        for c in v.children() {
            if let Ok(cd) = c.digest() {
                self.push(repo, &cd, c.media_type.as_deref(), cd.as_str(), src_ref, linked, depth + 1)?;
            }
        }
        for b in blob_refs(&v) {
            self.link_blob(repo, &b, src_ref)?;
            linked.push(b);
        }
        self.client.put_manifest(repo, reference, &mt, bytes)?;
        linked.push(d.clone());
        Ok(())
    }

    /// Read `index.json` into plans; find the images already in place (a re-run).
    fn plan(&mut self) -> Result<(), AirgapError> {
        if self.planned {
            return Ok(());
        }
        let Some(index) = self.index.clone() else { return Ok(()) };
        self.planned = true;
        let v: Value =
            serde_json::from_slice(&index).map_err(|e| AirgapError::Format(format!("index.json: {e}")))?;
        for m in v["manifests"].as_array().into_iter().flatten() {
            let Some(d) = m["digest"].as_str().and_then(|d| d.parse::<Digest>().ok()) else {
                return Err(AirgapError::Format("index.json entry without a valid digest".into()));
            };
            let (repo, reference) = self.entry_name(&m["annotations"])?;
            self.plans.push(Plan {
                repo,
                reference,
                digest: d,
                media_type: m["mediaType"].as_str().map(str::to_owned),
                done: false,
            });
        }
        if self.left_out.is_some() {
            let held = match self.client.inventory(true)? {
                Some(b) => super::bundle::Held::parse(&b, "the server's inventory")?,
                None => super::bundle::Held::default(),
            };
            self.server = Some(held);
        }
        for i in 0..self.plans.len() {
            let (repo, reference, digest) =
                (self.plans[i].repo.clone(), self.plans[i].reference.clone(), self.plans[i].digest.clone());
            let there = match self.client.get_manifest(&repo, &reference) {
                Ok((_, _, got)) => got == digest,
                Err(crate::upstream::UpstreamError::NotFound) => false,
                Err(e) => return Err(e.into()),
            };
            if there {
                let mut all = Vec::new();
                self.closure(&digest, &mut all, 0);
                for d in all {
                    self.landed.entry(d).or_insert_with(|| repo.clone());
                }
                self.plans[i].done = true;
                let name = Self::name(&self.plans[i]);
                self.ui.line(&format!("skipped {name} ({digest}): already imported"));
                self.report.skipped.push(Imported { repo, reference, digest });
            }
        }
        for i in 0..self.plans.len() {
            self.check(i, false);
        }
        Ok(())
    }

    /// Repository and reference of an index.json entry.
    fn entry_name(&self, ann: &Value) -> Result<(String, String), AirgapError> {
        let full = ann[CONTAINERD_NAME].as_str();
        let by_digest = full.and_then(|f| f.split_once('@')).map(|(_, d)| d.to_owned());
        let found = full.and_then(split_ref).or_else(|| {
            ann[REF_NAME].as_str().and_then(|r| {
                if r.contains(':') || r.contains('/') {
                    split_ref(r)
                } else {
                    // A bare tag: the repository must come from --repo.
                    self.target.map(|t| (t.repo.clone(), Tag::parse(r).ok()))
                }
            })
        });
        let (repo, tag) = name_for(self.target, found, self.input)?;
        match (by_digest, self.target.and_then(|t| t.tag.clone())) {
            (Some(d), None) => Ok((repo, d)),
            _ => Ok((repo, tag)),
        }
    }

    /// A member has arrived (or failed): re-check the images waiting for it.
    fn settled(&mut self, d: &Digest) {
        if let Some(waiting) = self.blocked.remove(d) {
            for i in waiting {
                self.check(i, false);
            }
        }
    }

    /// One member of the bundle.
    fn member(&mut self, path: &str, size: u64, r: &mut dyn Read) -> Result<(), AirgapError> {
        match classify(path) {
            Member::Index => {
                self.index = Some(read_meta(r, path)?);
                Ok(())
            }
            Member::DockerManifest => {
                self.docker_manifest = Some(read_meta(r, path)?);
                Ok(())
            }
            Member::Skip => Ok(()),
            Member::Bundle => {
                self.left_out = Some(super::bundle::LeftOut::parse(&read_meta(r, path)?)?);
                Ok(())
            }
            Member::Blob(None) => {
                let got = upload_member(self.client, self.scratch, r, size, None)
                    .map_err(|e| AirgapError::Format(format!("archive member {path}: {e}")))?;
                self.report.blobs += 1;
                self.report.bytes += got.1;
                self.arrived.insert(got.0.clone());
                self.files.insert(path.to_owned(), got);
                Ok(())
            }
            Member::Blob(Some(d)) => {
                self.blob(path, size, d.clone(), r);
                self.settled(&d);
                Ok(())
            }
        }
    }

    fn blob(&mut self, path: &str, size: u64, d: Digest, r: &mut dyn Read) {
        if self.arrived.contains(&d) || self.manifests.contains_key(&d) {
            return;
        }
        self.ui.member.reset();
        self.ui.member.set_length(size);
        self.ui.member.set_message(path.to_owned());
        let mut r = self.ui.member.wrap_read(r);
        let small = if size <= SMALL {
            let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            if let Err(e) = (&mut r).take(SMALL + 1).read_to_end(&mut buf) {
                self.bad.insert(d, format!("archive member {path}: {e}"));
                return;
            }
            let got = Digest::of(&buf);
            if got != d {
                self.bad.insert(
                    d.clone(),
                    format!("archive member {path}: content does not match its digest {d}: hashes to {got}"),
                );
                return;
            }
            if is_manifest(&buf) {
                self.manifests.insert(d, buf);
                return;
            }
            Some(buf)
        } else {
            None
        };
        // A blob: plan first (the manifests are in by now in our own bundles), so a
        // blob an image already in place holds is not sent again.
        if let Err(e) = self.plan() {
            self.report.errors.push(format!("{}: {e}", self.input.display()));
        }
        if self.landed.contains_key(&d) {
            self.report.skipped_blobs += 1;
            self.report.skipped_bytes += size;
            return;
        }
        let sent = match small {
            Some(buf) => {
                let n = buf.len() as u64;
                self.client
                    .put_blob(self.scratch, &d, n, io::Cursor::new(buf))
                    .map(|()| (d.clone(), n))
                    .map_err(|e| AirgapError::Format(format!("archive member {path}: {e}")))
            }
            None => upload_member(self.client, self.scratch, &mut r, size, Some(d.clone()))
                .map_err(|e| AirgapError::Format(format!("archive member {path}: {e}"))),
        };
        match sent {
            Ok((d, n)) => {
                self.report.blobs += 1;
                self.report.bytes += n;
                self.arrived.insert(d.clone());
                self.files.insert(path.to_owned(), (d, n));
            }
            Err(e) => {
                self.bad.insert(d, e.to_string());
            }
        }
    }

    /// The stream has ended (or broken off with `cut`): commit or refuse what is left.
    fn finish(&mut self, cut: Option<String>) -> Result<(), AirgapError> {
        self.plan()?;
        if !self.plans.is_empty() {
            for i in 0..self.plans.len() {
                if let Some(c) = &cut {
                    if !self.plans[i].done {
                        let mut n = Needs::default();
                        self.needs(&self.plans[i].digest.clone(), &mut n, &mut HashSet::new(), 0);
                        if !n.missing.is_empty() || !n.bad.is_empty() {
                            let missing = n.missing.iter().map(std::string::ToString::to_string).collect();
                            self.refuse(
                                i,
                                format!("the archive breaks off before this image is complete: {c}"),
                                missing,
                            );
                            continue;
                        }
                    }
                }
                self.check(i, true);
            }
            return Ok(());
        }
        if let Some(c) = cut {
            return Err(AirgapError::Format(c));
        }
        self.docker()
    }

    /// A `docker save` tarball: images from manifest.json.
    fn docker(&mut self) -> Result<(), AirgapError> {
        let Some(dm) = self.docker_manifest.clone() else {
            return Err(AirgapError::Format(
                "neither index.json nor manifest.json: not an image archive".into(),
            ));
        };
        let entries: Vec<Value> =
            serde_json::from_slice(&dm).map_err(|e| AirgapError::Format(format!("manifest.json: {e}")))?;
        for e in entries {
            let config_path = e["Config"].as_str().unwrap_or_default();
            let (config, config_size) = self.resolve(config_path).cloned().ok_or_else(|| {
                AirgapError::Format(format!("manifest.json names missing config {config_path}"))
            })?;
            let mut layers = Vec::new();
            for l in e["Layers"].as_array().cloned().unwrap_or_default() {
                let lp = l.as_str().unwrap_or_default();
                let (d, n) = self
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
                let (repo, reference) = name_for(self.target, found, self.input)?;
                let mut all = vec![config.clone()];
                all.extend(layers.iter().filter_map(|l| l["digest"].as_str()?.parse().ok()));
                for b in &all {
                    if !self.client.mount(&repo, b, self.scratch)? {
                        return Err(AirgapError::Format(format!("blob {b} did not arrive")));
                    }
                }
                self.client.put_manifest(&repo, &reference, DOCKER_MANIFEST, bytes.clone())?;
                self.ui.line(&format!("imported {repo}:{reference} ({digest})"));
                self.report.imported.push(Imported { repo, reference, digest: digest.clone() });
            }
        }
        Ok(())
    }

    fn scan_tar(&mut self, reader: impl Read) -> Result<(), AirgapError> {
        let mut ar = tar::Archive::new(reader);
        let entries = match ar.entries() {
            Ok(e) => e,
            Err(e) => return self.finish(Some(format!("not a tar archive: {e}"))),
        };
        for entry in entries {
            let mut entry = match entry {
                Ok(e) => e,
                Err(e) => return self.finish(Some(format!("tar: {e}"))),
            };
            let path = match entry.path() {
                Ok(p) => normalize(&p.to_string_lossy()),
                Err(e) => return self.finish(Some(format!("tar path: {e}"))),
            };
            match entry.header().entry_type() {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    if let Ok(Some(target)) = entry.link_name() {
                        let target = target.to_string_lossy().to_string();
                        let base = if entry.header().entry_type() == tar::EntryType::Symlink {
                            Path::new(&path)
                                .parent()
                                .map(|p| p.to_string_lossy().to_string())
                                .unwrap_or_default()
                        } else {
                            String::new()
                        };
                        self.links.insert(path, normalize(&format!("{base}/{target}")));
                    }
                    continue;
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {}
                _ => continue,
            }
            let size = entry.size();
            if let Err(e) = self.member(&path, size, &mut entry) {
                return self.finish(Some(e.to_string()));
            }
        }
        self.finish(None)
    }

    /// An OCI layout directory: `index.json` (and `wharfie-bundle.json`) first, then
    /// the blobs, smallest first (manifests before layers).
    fn scan_dir(&mut self, dir: &Path) -> Result<(), AirgapError> {
        let index = dir.join("index.json");
        self.index = Some(std::fs::read(&index).map_err(io_err(&index))?);
        let bundle = dir.join(super::bundle::BUNDLE_FILE);
        if bundle.exists() {
            let b = std::fs::read(&bundle).map_err(io_err(&bundle))?;
            self.left_out = Some(super::bundle::LeftOut::parse(&b)?);
        }
        let blobs = dir.join("blobs");
        let mut files = Vec::new();
        for algo in std::fs::read_dir(&blobs).map_err(io_err(&blobs))? {
            let algo = algo.map_err(io_err(&blobs))?.path();
            for f in std::fs::read_dir(&algo).map_err(io_err(&algo))? {
                let f = f.map_err(io_err(&algo))?.path();
                let size = f.metadata().map_err(io_err(&f))?.len();
                files.push((size, f));
            }
        }
        files.sort();
        self.ui.overall.set_length(files.iter().map(|f| f.0).sum());
        for (size, f) in files {
            let rel = f.strip_prefix(dir).map(|p| p.to_string_lossy().to_string()).unwrap_or_default();
            let mut file = File::open(&f).map_err(io_err(&f))?;
            self.member(&rel, size, &mut file)?;
            self.ui.overall.inc(size);
        }
        self.finish(None)
    }
}

/// The blobs a manifest references (config and layers; foreign layers left out).
fn blob_refs(v: &Manifest) -> Vec<Digest> {
    v.blobs().filter_map(|b| b.digest().ok()).collect()
}

/// An image manifest or index (not a config or any other JSON blob)?
fn is_manifest(b: &[u8]) -> bool {
    Manifest::looks_like_manifest(b)
}

fn name_for(
    target: Option<&ImportTarget>,
    found: Option<(RepoName, Option<Tag>)>,
    input: &Path,
) -> Result<(String, String), AirgapError> {
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
}

/// Import every image in `inputs`, one by one: each image commits as soon as all it
/// needs has arrived (verified), and one that cannot be completed is refused without
/// touching the others. Images already in place (an earlier, interrupted run) are
/// skipped, and so are the blobs only they need.
pub(crate) fn import(
    client: &RegistryClient,
    inputs: &[PathBuf],
    target: Option<&ImportTarget>,
    ui: &Ui,
) -> ImportReport {
    let scratch = format!("wharfie-import/{}", uuid::Uuid::new_v4().simple());
    let mut report = ImportReport::default();
    for input in inputs {
        ui.line(&format!("reading {}", input.display()));
        ui.overall.reset();
        let mut run = Run {
            client,
            scratch: &scratch,
            target,
            input,
            ui,
            report: &mut report,
            index: None,
            docker_manifest: None,
            left_out: None,
            files: HashMap::new(),
            links: HashMap::new(),
            manifests: HashMap::new(),
            arrived: HashSet::new(),
            bad: HashMap::new(),
            landed: HashMap::new(),
            server: None,
            plans: Vec::new(),
            planned: false,
            blocked: HashMap::new(),
        };
        let res = if input.is_dir() {
            run.scan_dir(input)
        } else {
            super::bundle::open_tar(input, &ui.overall).and_then(|r| run.scan_tar(r))
        };
        // Drop the scratch links, whatever happened: the images keep what they
        // reference, and a failed import leaves nothing linked (GC reclaims the rest).
        let arrived: Vec<Digest> = run.arrived.drain().collect();
        if let Err(e) = res {
            let msg = match e {
                AirgapError::Io { .. } => e.to_string(),
                e => format!("{}: {e}", input.display()),
            };
            ui.line(&format!("wharfie: {msg}"));
            report.errors.push(msg);
        }
        for d in &arrived {
            let _ = client.delete_blob(&scratch, d);
        }
    }
    ui.done();
    report
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
