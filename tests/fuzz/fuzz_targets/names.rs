//! Repository names, tags, references and digests: never panic; round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharfie::digest::Digest;
use wharfie::names::{Reference, RepoName, Tag};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(n) = RepoName::parse(s) {
        assert_eq!(n.as_str(), s);
    }
    if let Ok(t) = Tag::parse(s) {
        assert_eq!(t.as_str(), s);
    }
    if let Ok(d) = s.parse::<Digest>() {
        assert_eq!(d.as_str(), s);
        let _ = d.hex();
    }
    if let Ok(r) = Reference::parse(s) {
        assert_eq!(Reference::parse(&r.to_string()).ok(), Some(r));
    }
});
