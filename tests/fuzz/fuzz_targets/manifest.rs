//! The manifest parser on arbitrary bodies, with and without a Content-Type: never
//! panics; refusals are client errors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharfie::http::error::ApiError;
use wharfie::service::parse_manifest;

const TYPES: [Option<&str>; 4] = [
    None,
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.docker.distribution.manifest.v2+json"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else { return };
    let ct = TYPES[usize::from(first) % TYPES.len()];
    if let Err(e) = parse_manifest(ct, body) {
        assert!(ApiError::from(e).status_and_code().0.is_client_error());
    }
});
