//! The route parser on arbitrary paths: never panics; accepted names reparse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharfie::http::route::{parse, Endpoint};
use wharfie::names::RepoName;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    match parse(path) {
        Ok(Endpoint::Manifest { name, .. })
        | Ok(Endpoint::InvalidReference { name, .. })
        | Ok(Endpoint::Blob { name, .. })
        | Ok(Endpoint::Uploads { name })
        | Ok(Endpoint::Upload { name, .. })
        | Ok(Endpoint::Tags { name })
        | Ok(Endpoint::Referrers { name, .. }) => {
            assert_eq!(RepoName::parse(name.as_str()).ok(), Some(name));
        }
        Ok(_) => {}
        Err(e) => assert!(e.status_and_code().0.is_client_error()),
    }
});
