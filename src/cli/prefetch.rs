//! `wharfie prefetch IMAGE…`: pull images through a running server's mirror ahead of a
//! deploy, so that the deploy's pulls are cache hits. Per image: the manifest (for an
//! index, every platform's, or those `--platform` names), then every config and layer,
//! a few at a time, each body read to its end and dropped (counted, never stored here).
//! The server's `Wharfie-Cache` header on each answer says whether it was held already
//! (`hit`) or fetched by this run (`miss`, or `coalesced`: joined a fill in flight).

use std::collections::BTreeSet;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::digest::Digest;
use crate::manifest::{self, Manifest};
use crate::names::{RepoName, Tag};
use crate::upstream::client::{Answer, RegistryClient};

/// An image as the command line names it: `REPO[:TAG]` or `REPO@DIGEST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ImageRef {
    pub repo: RepoName,
    /// A tag (`latest` when none is given) or a digest.
    pub reference: String,
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = if self.reference.contains(':') { '@' } else { ':' };
        write!(f, "{}{sep}{}", self.repo.as_str(), self.reference)
    }
}

/// Parse `REPO[:TAG]` or `REPO@sha256:…` (a name as clients use it on this registry).
pub(super) fn parse_image(s: &str) -> Result<ImageRef, String> {
    let (name, reference) = if let Some((n, d)) = s.split_once('@') {
        let d: Digest = d.parse().map_err(|e| format!("{s}: {e}"))?;
        (n, d.to_string())
    } else {
        match s.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => {
                (n, Tag::parse(t).map_err(|e| format!("{s}: {e}"))?.as_str().to_owned())
            }
            _ => (s, "latest".to_owned()),
        }
    };
    let repo = RepoName::parse(name).map_err(|e| format!("{s}: {e}"))?;
    Ok(ImageRef { repo, reference })
}

pub(super) struct Options {
    /// Only these platforms of an index (`os/arch[/variant]`); all when empty.
    pub platforms: Vec<String>,
    /// Blobs fetched at once.
    pub jobs: usize,
    /// No bar and no progress lines.
    pub quiet: bool,
}

/// Answers counted by how the server said it served them.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Tally {
    pub cached: u64,
    pub cached_bytes: u64,
    /// Fetched from the upstream for this run (`miss` or `coalesced`).
    pub fetched: u64,
    pub fetched_bytes: u64,
    /// Of `fetched`, those that joined a fill already in flight.
    pub joined: u64,
}

impl Tally {
    fn add(&mut self, cache: Cache, bytes: u64) {
        match cache {
            Cache::Held => {
                self.cached += 1;
                self.cached_bytes += bytes;
            }
            Cache::Fetched { joined } => {
                self.fetched += 1;
                self.fetched_bytes += bytes;
                self.joined += u64::from(joined);
            }
        }
    }
}

/// What `Wharfie-Cache` said. Without the header the content is the registry's own
/// (hosted here, or a registry that is not a wharfie mirror): held, as far as we know.
#[derive(Debug, Clone, Copy)]
enum Cache {
    Held,
    Fetched { joined: bool },
}

fn cache_of(a: &Answer) -> Cache {
    match a.header("wharfie-cache") {
        Some("miss") => Cache::Fetched { joined: false },
        Some("coalesced") => Cache::Fetched { joined: true },
        _ => Cache::Held,
    }
}

/// How one image went.
#[derive(Debug)]
pub(super) struct ImageReport {
    pub image: ImageRef,
    pub manifests: Tally,
    pub blobs: Tally,
    /// Why (part of) the image could not be fetched, each reason once.
    pub errors: Vec<String>,
}

impl ImageReport {
    /// The line the command prints for it.
    pub(super) fn summary(&self) -> String {
        let (b, m) = (&self.blobs, &self.manifests);
        let joined =
            if b.joined > 0 { format!(" ({} joined a fill in flight)", b.joined) } else { String::new() };
        format!(
            "{}: {} manifest{}, {} blob{}: {} blob{} ({} bytes, {}) already cached, {} blob{} ({} bytes, {}) fetched now{joined}; manifests: {} cached, {} fetched",
            self.image,
            m.cached + m.fetched,
            plural(m.cached + m.fetched),
            b.cached + b.fetched,
            plural(b.cached + b.fetched),
            b.cached,
            plural(b.cached),
            b.cached_bytes,
            bytesize::ByteSize::b(b.cached_bytes),
            b.fetched,
            plural(b.fetched),
            b.fetched_bytes,
            bytesize::ByteSize::b(b.fetched_bytes),
            m.cached,
            m.fetched,
        )
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// An index nests at most this deep (an index of indexes is rare; deeper is refused).
const MAX_DEPTH: usize = 4;

/// Prefetch every image in turn.
pub(super) fn prefetch(client: &RegistryClient, images: &[ImageRef], opts: &Options) -> Vec<ImageReport> {
    images.iter().map(|img| prefetch_one(client, img, opts)).collect()
}

fn prefetch_one(client: &RegistryClient, image: &ImageRef, opts: &Options) -> ImageReport {
    let mut report = ImageReport {
        image: image.clone(),
        manifests: Tally::default(),
        blobs: Tally::default(),
        errors: vec![],
    };
    let mut blobs = Vec::new();
    if let Err(e) = walk(client, image, &image.reference, None, opts, 0, &mut report.manifests, &mut blobs) {
        report.errors.push(e);
        return report;
    }
    // Each blob once, in the order the manifests name them.
    let mut seen = BTreeSet::new();
    blobs.retain(|(d, _): &(Digest, u64)| seen.insert(d.clone()));
    let (tally, errors) = fetch_blobs(client, image, &blobs, opts);
    report.blobs = tally;
    report.errors.extend(errors);
    report
}

/// GET a manifest (and, for an index, its children), noting the blobs each image needs.
#[allow(clippy::too_many_arguments)] // one walk's context, passed down as is
fn walk(
    client: &RegistryClient,
    image: &ImageRef,
    reference: &str,
    expect: Option<&Digest>,
    opts: &Options,
    depth: usize,
    tally: &mut Tally,
    blobs: &mut Vec<(Digest, u64)>,
) -> Result<(), String> {
    let path = format!("/v2/{}/manifests/{reference}", image.repo.as_str());
    let what = if depth == 0 { "manifest".to_owned() } else { format!("manifest {reference}") };
    let mut a = client.get_answer(&path, Some(manifest::ACCEPT)).map_err(|e| format!("{what}: {e}"))?;
    if !(200..300).contains(&a.status()) {
        let status = a.status();
        let (code, message) = a.oci_error();
        return Err(format!("{what}: {code} ({status}): {message}"));
    }
    let cache = cache_of(&a);
    let media_type = a.header("content-type").map(str::to_owned);
    let mut body = Vec::new();
    (&mut a).take(64 << 20).read_to_end(&mut body).map_err(|e| format!("{what}: reading the body: {e}"))?;
    let digest = Digest::of(&body);
    let expect = match expect {
        Some(d) => Some(d.clone()),
        None => reference.parse::<Digest>().ok(),
    };
    if let Some(want) = expect.filter(|d| *d != digest) {
        return Err(format!("{what}: asked for {want}, got bytes hashing to {digest}"));
    }
    tally.add(cache, body.len() as u64);
    let m = Manifest::from_slice(&body).map_err(|e| format!("{what}: not a manifest: {e}"))?;
    let mt = media_type.as_deref().filter(|t| manifest::is_index(t) || manifest::is_image(t));
    let is_index = mt.map_or(m.manifests.is_some(), manifest::is_index);
    if !is_index {
        for d in m.blobs() {
            let digest = d.digest().map_err(|e| format!("{what}: a blob's digest: {e}"))?;
            blobs.push((digest, d.size));
        }
        return Ok(());
    }
    if depth + 1 >= MAX_DEPTH {
        return Err(format!("{what}: indexes nested more than {MAX_DEPTH} deep"));
    }
    let children: Vec<_> = m
        .children()
        .filter(|c| opts.platforms.is_empty() || opts.platforms.iter().any(|p| c.platform_matches(p)))
        .collect();
    if children.is_empty() {
        let have: Vec<String> = m.children().filter_map(platform_text).collect();
        return Err(format!(
            "{what}: the index has no manifest for {} (it has {})",
            opts.platforms.join(", "),
            if have.is_empty() { "none with a platform".to_owned() } else { have.join(", ") }
        ));
    }
    for c in children {
        let d = c.digest().map_err(|e| format!("{what}: a child's digest: {e}"))?;
        walk(client, image, d.as_str(), Some(&d), opts, depth + 1, tally, blobs)?;
    }
    Ok(())
}

fn platform_text(d: &manifest::Descriptor) -> Option<String> {
    let p = d.platform.as_ref()?;
    let mut s = format!("{}/{}", p.os.as_deref()?, p.architecture.as_deref()?);
    if let Some(v) = &p.variant {
        s = format!("{s}/{v}");
    }
    Some(s)
}

/// GET every blob, `opts.jobs` at a time, each body read to its end and dropped.
fn fetch_blobs(
    client: &RegistryClient,
    image: &ImageRef,
    blobs: &[(Digest, u64)],
    opts: &Options,
) -> (Tally, Vec<String>) {
    let total: u64 = blobs.iter().map(|(_, s)| s).sum();
    let bar = if opts.quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(total) };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(image.to_string());
    // Plain lines when there is no bar to draw (not a terminal), unless quiet.
    let lines = !opts.quiet && bar.is_hidden();
    if lines {
        eprintln!("{image}: {} blob{} ({total} bytes) to pull", blobs.len(), plural(blobs.len() as u64));
    }
    let next = AtomicUsize::new(0);
    let out = Mutex::new((Tally::default(), Vec::new()));
    let workers = opts.jobs.clamp(1, 32).min(blobs.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                // Each worker takes the next blob until none is left: bounded by the list.
                for _ in 0..blobs.len() {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((digest, size)) = blobs.get(i) else { break };
                    let r = fetch_blob(client, image, digest, *size, &bar);
                    let mut o = out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    match r {
                        Ok((cache, n)) => {
                            o.0.add(cache, n);
                            if lines {
                                let how = match cache {
                                    Cache::Held => "already cached",
                                    Cache::Fetched { joined: false } => "fetched now",
                                    Cache::Fetched { joined: true } => {
                                        "fetched now (joined a fill in flight)"
                                    }
                                };
                                eprintln!("  {digest} {n} bytes: {how}");
                            }
                        }
                        Err(e) => {
                            if lines {
                                eprintln!("  {digest}: {e}");
                            }
                            o.1.push(format!("blob {digest}: {e}"));
                        }
                    }
                }
            });
        }
    });
    bar.finish_and_clear();
    out.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// GET one blob through the mirror and read it to its end: how the server served it,
/// and its length (which must be the size the manifest gives).
fn fetch_blob(
    client: &RegistryClient,
    image: &ImageRef,
    digest: &Digest,
    size: u64,
    bar: &indicatif::ProgressBar,
) -> Result<(Cache, u64), String> {
    let path = format!("/v2/{}/blobs/{digest}", image.repo.as_str());
    let mut a = client.get_answer(&path, None).map_err(|e| e.to_string())?;
    if !(200..300).contains(&a.status()) {
        let status = a.status();
        let (code, message) = a.oci_error();
        return Err(format!("{code} ({status}): {message}"));
    }
    let cache = cache_of(&a);
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    // Every read but the last brings at least one byte, and more than `size` is an
    // error: `size + 2` reads always reach the end.
    for _ in 0..size.saturating_add(2) {
        match a.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got += n as u64;
                bar.inc(n as u64);
                if got > size {
                    return Err(format!("the body is longer than the manifest's {size} bytes"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("the transfer broke off after {got} of {size} bytes: {e}")),
        }
    }
    if got != size {
        return Err(format!("got {got} of {size} bytes"));
    }
    Ok((cache, got))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_as_clients_write_them() {
        let r = parse_image("up/library/nginx:1.27").expect("tag");
        assert_eq!((r.repo.as_str(), r.reference.as_str()), ("up/library/nginx", "1.27"));
        assert_eq!(parse_image("up/library/nginx").expect("bare").reference, "latest");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse_image(&format!("up/app@{d}")).expect("digest");
        assert_eq!((r.repo.as_str(), r.reference.as_str()), ("up/app", d.as_str()));
        assert_eq!(r.to_string(), format!("up/app@{d}"));
        assert_eq!(parse_image("up/app:v1").expect("tag").to_string(), "up/app:v1");
        for bad in ["Up/App:v1", "up/app:bad tag", "up/app@sha256:zz", "", "up//app", "up/app:"] {
            assert!(parse_image(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
