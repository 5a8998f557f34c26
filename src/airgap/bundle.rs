//! The bundle format, shared by export and import: an OCI image layout (`oci-layout`,
//! `index.json`, `blobs/sha256/…`) as a directory or a tar (plain, gzip or zstd). An
//! incremental bundle is the same layout with `wharfie-bundle.json` beside
//! `index.json`, which names the inventory it was made against and every blob and
//! manifest left out; `index.json` points at it with the `io.wharfie.bundle.*`
//! annotations. Inventories (`wharfie inventory`) are
//! `{"wharfie_inventory":1,"blobs":[[digest,size],…],"manifests":[[digest,size],…]}`.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufReader, Read};
use std::path::Path;

use serde_json::Value;

use super::{io_err, AirgapError};
use crate::digest::Digest;

/// The file of an incremental bundle that lists what was left out.
pub(crate) const BUNDLE_FILE: &str = "wharfie-bundle.json";
/// index.json annotation: the digest of the inventory an incremental bundle was made against.
pub(crate) const ANN_INVENTORY: &str = "io.wharfie.bundle.inventory";
/// index.json annotation: the file listing what was left out.
pub(crate) const ANN_LEFT_OUT: &str = "io.wharfie.bundle.left-out";

/// Digests (as `sha256:…` strings) with sizes, and for a located inventory the
/// repository that links each.
#[derive(Debug, Default)]
pub(crate) struct Held {
    pub blobs: HashMap<String, (u64, Option<String>)>,
    pub manifests: HashMap<String, (u64, Option<String>)>,
    /// sha256 of the inventory's bytes: what a bundle says it was made against.
    pub id: Option<Digest>,
}

impl Held {
    pub(crate) fn parse(bytes: &[u8], what: &str) -> Result<Held, AirgapError> {
        let bad = |m: String| AirgapError::Format(format!("{what}: {m}"));
        let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        if v["wharfie_inventory"].as_u64() != Some(1) {
            return Err(bad("not a wharfie inventory (no \"wharfie_inventory\": 1)".into()));
        }
        let list = |k: &str| -> Result<HashMap<String, (u64, Option<String>)>, AirgapError> {
            let mut m = HashMap::new();
            for e in v[k].as_array().into_iter().flatten() {
                let d = e[0].as_str().filter(|d| d.parse::<Digest>().is_ok());
                match (d, e[1].as_u64()) {
                    (Some(d), Some(n)) => {
                        m.insert(d.to_owned(), (n, e[2].as_str().map(str::to_owned)));
                    }
                    _ => return Err(bad(format!("bad {k} entry {e}"))),
                }
            }
            Ok(m)
        };
        Ok(Held { blobs: list("blobs")?, manifests: list("manifests")?, id: Some(Digest::of(bytes)) })
    }

    pub(crate) fn read(path: &Path) -> Result<Held, AirgapError> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        Held::parse(&bytes, &path.display().to_string())
    }
}

/// What an incremental bundle left out (`wharfie-bundle.json`).
#[derive(Debug, Default, Clone)]
pub(crate) struct LeftOut {
    pub inventory: Option<String>,
    pub blobs: HashSet<String>,
    pub manifests: HashSet<String>,
}

impl LeftOut {
    pub(crate) fn to_json(&self, sizes: &HashMap<String, u64>) -> Vec<u8> {
        let list = |s: &HashSet<String>| -> Vec<Value> {
            let mut v: Vec<&String> = s.iter().collect();
            v.sort();
            v.into_iter().map(|d| serde_json::json!([d, sizes.get(d).copied().unwrap_or(0)])).collect()
        };
        let j = serde_json::json!({
            "wharfie_bundle": 1,
            "inventory": self.inventory,
            "left_out": { "blobs": list(&self.blobs), "manifests": list(&self.manifests) },
        });
        serde_json::to_vec(&j).unwrap_or_default()
    }

    pub(crate) fn parse(bytes: &[u8]) -> Result<LeftOut, AirgapError> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| AirgapError::Format(format!("{BUNDLE_FILE}: not JSON: {e}")))?;
        let set = |k: &str| -> HashSet<String> {
            v["left_out"][k]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e[0].as_str().map(str::to_owned))
                .collect()
        };
        Ok(LeftOut {
            inventory: v["inventory"].as_str().map(str::to_owned),
            blobs: set("blobs"),
            manifests: set("manifests"),
        })
    }
}

/// How a bundle file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From the file name: `.tar.zst`/`.tzst`, `.tar.gz`/`.tgz`, else none.
    pub(crate) fn of_name(p: &Path) -> Compression {
        let n = p.to_string_lossy();
        if n.ends_with(".zst") || n.ends_with(".tzst") {
            Compression::Zstd
        } else if n.ends_with(".gz") || n.ends_with(".tgz") {
            Compression::Gzip
        } else {
            Compression::None
        }
    }
}

/// Open a tar stream (`-` is stdin), decompressing gzip or zstd by their magic; the
/// bytes read from the file advance `bar` (its length is set when the size is known).
pub(crate) fn open_tar(
    path: &Path,
    bar: &indicatif::ProgressBar,
) -> Result<Box<dyn Read + Send>, AirgapError> {
    let raw: Box<dyn Read + Send> = if path == Path::new("-") {
        Box::new(io::stdin())
    } else {
        let f = std::fs::File::open(path).map_err(io_err(path))?;
        if let Ok(m) = f.metadata() {
            bar.set_length(m.len());
        }
        Box::new(f)
    };
    let mut f = BufReader::with_capacity(1 << 20, bar.wrap_read(raw));
    let head = io::BufRead::fill_buf(&mut f).map_err(io_err(path))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::GzDecoder::new(f)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let z = zstd::stream::read::Decoder::with_buffer(f).map_err(io_err(path))?;
        Ok(Box::new(z))
    } else {
        Ok(Box::new(f))
    }
}
