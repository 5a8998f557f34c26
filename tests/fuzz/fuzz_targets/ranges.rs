//! `Range` (against a blob size) and `Content-Range` (with an optional
//! `Content-Length`): never panic; accepted ranges are inside the blob / ordered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharfie::http::handlers::{parse_content_range, parse_range, RangeSpec, Req};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let size = u64::from_le_bytes(data[..8].try_into().unwrap_or([0; 8])) >> (data[0] % 64);
    let Ok(s) = std::str::from_utf8(&data[8..]) else { return };
    if let RangeSpec::Part(a, b) = parse_range(Some(s), size) {
        assert!(a <= b && b < size);
    }
    let (cr, cl) = s.split_once('\n').unwrap_or((s, ""));
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(cr) {
        headers.insert(http::header::CONTENT_RANGE, v);
    }
    if let Ok(v) = http::HeaderValue::from_str(cl) {
        if !cl.is_empty() {
            headers.insert(http::header::CONTENT_LENGTH, v);
        }
    }
    let req = Req {
        method: http::Method::PATCH,
        path: "/".into(),
        query: vec![],
        headers,
        body: Box::pin(futures_util::stream::empty()),
    };
    if let Ok(Some((a, b))) = parse_content_range(&req) {
        assert!(a <= b);
    }
});
