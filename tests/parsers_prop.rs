//! Property tests over every parser that sees untrusted input (issue 5, item 4): the
//! route parser, repository names, tags, references and digests, the `Range` and
//! `Content-Range` parsers, and the manifest parser. Arbitrary input never panics and
//! every accepted value satisfies its invariant; where a value can be printed, printing
//! and parsing again gives it back. The same functions are cargo-fuzz targets in
//! `tests/fuzz/` (run by .ci/run where a nightly toolchain exists); any crash either finds
//! becomes a case in `regressions()` below.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use proptest::prelude::*;
use serde_json::json;

use wharfie::digest::Digest;
use wharfie::http::error::ApiError;
use wharfie::http::handlers::{parse_content_range, parse_range, RangeSpec, Req};
use wharfie::http::route::{self, Endpoint};
use wharfie::names::{Reference, RepoName, Tag, MAX_NAME_LEN};
use wharfie::service::parse_manifest;

/// One name component of the spec grammar: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn component() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,6}((\\.|_|__|-{1,3})[a-z0-9]{1,6}){0,2}"
}

/// A valid repository name of 1–6 components, within the length bound.
fn repo_name() -> impl Strategy<Value = String> {
    proptest::collection::vec(component(), 1..6)
        .prop_map(|c| c.join("/"))
        .prop_filter("within the length bound", |n| n.len() <= MAX_NAME_LEN)
}

fn tag() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"
}

fn sha256_digest() -> impl Strategy<Value = String> {
    "[0-9a-f]{64}".prop_map(|h| format!("sha256:{h}"))
}

/// Path-ish noise: segments from a small alphabet heavy in the characters the
/// parsers treat specially.
fn pathish() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("v2".to_string()),
            Just("blobs".to_string()),
            Just("uploads".to_string()),
            Just("manifests".to_string()),
            Just("tags".to_string()),
            Just("list".to_string()),
            Just("referrers".to_string()),
            Just("".to_string()),
            Just("..".to_string()),
            Just("%2f".to_string()),
            "[a-zA-Z0-9:%._/ -]{0,12}",
            "\\PC{0,8}",
        ],
        0..12,
    )
    .prop_map(|s| format!("/{}", s.join("/")))
}

fn req_with(headers: &[(&str, &str)]) -> Req {
    let mut h = http::HeaderMap::new();
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(k.as_bytes()), http::HeaderValue::from_str(v)) {
            h.insert(k, v);
        }
    }
    Req {
        method: http::Method::PATCH,
        path: "/".into(),
        query: vec![],
        headers: h,
        body: Box::pin(futures_util::stream::empty()),
    }
}

/// Every accepted endpoint's name is a valid name and within bounds.
fn endpoint_invariants(e: &Endpoint) {
    let name = match e {
        Endpoint::Manifest { name, .. }
        | Endpoint::InvalidReference { name, .. }
        | Endpoint::Blob { name, .. }
        | Endpoint::Uploads { name }
        | Endpoint::Upload { name, .. }
        | Endpoint::Tags { name }
        | Endpoint::Referrers { name, .. } => name,
        _ => return,
    };
    assert!(name.as_str().len() <= MAX_NAME_LEN, "name over the bound: {}", name.as_str());
    assert_eq!(RepoName::parse(name.as_str()).as_ref().ok(), Some(name), "name does not reparse");
    if let Endpoint::Upload { id, .. } = e {
        assert!(!id.is_empty() && id.len() <= 64, "upload id {id:?}");
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "upload id {id:?}");
    }
}

/// Every refusal maps to a 4xx with a known OCI code (never a 5xx for bad input).
fn refusal_is_4xx(e: &ApiError) {
    let (status, code) = e.status_and_code();
    assert!(status.is_client_error(), "bad input answered {status} {code}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn route_parse_never_panics_on_any_string(path in "\\PC{0,300}") {
        match route::parse(&path) {
            Ok(e) => endpoint_invariants(&e),
            Err(e) => refusal_is_4xx(&e),
        }
    }

    #[test]
    fn route_parse_never_panics_on_path_like_noise(path in pathish()) {
        match route::parse(&path) {
            Ok(e) => endpoint_invariants(&e),
            Err(e) => refusal_is_4xx(&e),
        }
    }

    #[test]
    fn route_parse_round_trips_valid_routes(name in repo_name(), t in tag(), d in sha256_digest(), id in "[a-zA-Z0-9_-]{1,64}") {
        let n = RepoName::parse(&name).expect("generated name is valid");
        let digest: Digest = d.parse().expect("generated digest is valid");
        prop_assert_eq!(
            route::parse(&format!("/v2/{name}/manifests/{t}")).ok(),
            Some(Endpoint::Manifest { name: n.clone(), reference: Reference::Tag(Tag::parse(&t).expect("tag")) })
        );
        prop_assert_eq!(
            route::parse(&format!("/v2/{name}/manifests/{d}")).ok(),
            Some(Endpoint::Manifest { name: n.clone(), reference: Reference::Digest(digest.clone()) })
        );
        prop_assert_eq!(
            route::parse(&format!("/v2/{name}/blobs/{}", d.replace(':', "%3A"))).ok(),
            Some(Endpoint::Blob { name: n.clone(), digest: digest.clone() })
        );
        prop_assert_eq!(route::parse(&format!("/v2/{name}/blobs/uploads/")).ok(), Some(Endpoint::Uploads { name: n.clone() }));
        prop_assert_eq!(
            route::parse(&format!("/v2/{name}/blobs/uploads/{id}")).ok(),
            Some(Endpoint::Upload { name: n.clone(), id: id.clone() })
        );
        prop_assert_eq!(route::parse(&format!("/v2/{name}/tags/list")).ok(), Some(Endpoint::Tags { name: n.clone() }));
        prop_assert_eq!(
            route::parse(&format!("/v2/{name}/referrers/{d}")).ok(),
            Some(Endpoint::Referrers { name: n, digest })
        );
    }

    #[test]
    fn names_tags_digests_never_panic_and_round_trip(s in "\\PC{0,300}") {
        if let Ok(n) = RepoName::parse(&s) {
            prop_assert_eq!(n.as_str(), s.as_str());
            prop_assert!(s.len() <= MAX_NAME_LEN);
            prop_assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)));
        }
        if let Ok(t) = Tag::parse(&s) {
            prop_assert_eq!(t.as_str(), s.as_str());
            prop_assert!(!s.is_empty() && s.len() <= 128);
        }
        if let Ok(d) = s.parse::<Digest>() {
            prop_assert_eq!(d.as_str(), s.as_str());
            prop_assert_eq!(d.to_string().parse::<Digest>().ok(), Some(d.clone()));
            prop_assert!(d.hex().len() == s.len() - s.find(':').map_or(0, |i| i + 1));
        }
        if let Ok(r) = Reference::parse(&s) {
            prop_assert_eq!(Reference::parse(&r.to_string()).ok(), Some(r));
        }
    }

    #[test]
    fn generated_valid_names_tags_and_digests_parse(name in repo_name(), t in tag(), bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        prop_assert!(RepoName::parse(&name).is_ok(), "{}", name);
        prop_assert!(Tag::parse(&t).is_ok(), "{}", t);
        let d = Digest::of(&bytes);
        prop_assert_eq!(d.as_str().parse::<Digest>().ok(), Some(d.clone()));
        prop_assert_eq!(d.hex().len(), 64);
    }

    #[test]
    fn name_over_the_bound_is_refused(c in component(), k in 1usize..200) {
        let long = vec![c; k].join("/");
        prop_assert_eq!(RepoName::parse(&long).is_ok(), long.len() <= MAX_NAME_LEN);
    }

    #[test]
    fn range_never_panics_and_stays_inside_the_blob(v in "\\PC{0,40}", size in prop_oneof![Just(0u64), Just(1u64), any::<u64>(), 0u64..10_000]) {
        for header in [v.clone(), format!("bytes={v}")] {
            match parse_range(Some(&header), size) {
                RangeSpec::Part(a, b) => {
                    prop_assert!(a <= b && b < size, "{:?} for size {} gave {}-{}", header, size, a, b);
                }
                RangeSpec::Full | RangeSpec::Unsatisfiable => {}
            }
        }
    }

    #[test]
    fn range_honours_valid_ranges(size in 1u64..1_000_000, a in any::<u64>(), len in any::<u64>(), n in any::<u64>()) {
        let a = a % size;
        let b = a.saturating_add(len % size);
        let want = RangeSpec::Part(a, b.min(size - 1));
        prop_assert_eq!(parse_range(Some(&format!("bytes={a}-{b}")), size), want);
        prop_assert_eq!(parse_range(Some(&format!("bytes={a}-")), size), RangeSpec::Part(a, size - 1));
        let n = n % (2 * size) + 1;
        prop_assert_eq!(parse_range(Some(&format!("bytes=-{n}")), size), RangeSpec::Part(size.saturating_sub(n), size - 1));
        prop_assert_eq!(parse_range(Some(&format!("bytes={}-", size + a)), size), RangeSpec::Unsatisfiable);
    }

    #[test]
    fn content_range_never_panics(v in "\\PC{0,40}", cl in proptest::option::of("[0-9]{0,22}")) {
        let mut h = vec![("content-range", v.as_str())];
        if let Some(cl) = &cl {
            h.push(("content-length", cl.as_str()));
        }
        match parse_content_range(&req_with(&h)) {
            Ok(Some((a, b))) => prop_assert!(a <= b),
            Ok(None) => {}
            Err(e) => refusal_is_4xx(&e),
        }
    }

    #[test]
    fn content_range_round_trips(a in any::<u64>(), len in any::<u64>(), form in 0usize..3) {
        let b = a.saturating_add(len % (1 << 40));
        let v = match form {
            0 => format!("{a}-{b}"),
            1 => format!("bytes {a}-{b}/*"),
            _ => format!("bytes={a}-{b}"),
        };
        prop_assert_eq!(parse_content_range(&req_with(&[("content-range", &v)])).ok(), Some(Some((a, b))));
        let wrong = (b - a).wrapping_add(2).to_string();
        let r = parse_content_range(&req_with(&[("content-range", &v), ("content-length", &wrong)]));
        prop_assert!(r.is_err(), "a Content-Length that disagrees is refused");
    }

    #[test]
    fn manifest_parse_never_panics_on_bytes(body in proptest::collection::vec(any::<u8>(), 0..512), ct in proptest::option::of("\\PC{0,60}")) {
        if let Err(e) = parse_manifest(ct.as_deref(), &body) {
            refusal_is_4xx(&ApiError::from(e));
        }
    }

    #[test]
    fn manifest_parse_never_panics_on_json_shapes(v in json_value(4)) {
        let body = serde_json::to_vec(&v).expect("serialize");
        for ct in [None, Some("application/vnd.oci.image.manifest.v1+json"), Some("application/vnd.oci.image.index.v1+json")] {
            if let Err(e) = parse_manifest(ct, &body) {
                refusal_is_4xx(&ApiError::from(e));
            }
        }
    }

    #[test]
    fn manifest_parse_finds_every_reference(config in sha256_digest(), layers in proptest::collection::vec(sha256_digest(), 0..40), children in proptest::collection::vec(sha256_digest(), 0..40)) {
        let m = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
            "layers": layers.iter().map(|d| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": 1})).collect::<Vec<_>>(),
        });
        let p = parse_manifest(None, &serde_json::to_vec(&m).expect("json")).expect("valid manifest parses");
        let want: Vec<String> = std::iter::once(config).chain(layers).collect();
        prop_assert_eq!(p.blobs.iter().map(|d| d.to_string()).collect::<Vec<_>>(), want);
        let idx = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": children.iter().map(|d| json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": 1})).collect::<Vec<_>>(),
        });
        let p = parse_manifest(None, &serde_json::to_vec(&idx).expect("json")).expect("valid index parses");
        prop_assert_eq!(p.manifests.iter().map(|d| d.to_string()).collect::<Vec<_>>(), children);
    }
}

/// Arbitrary JSON, biased towards the keys a manifest has.
fn json_value(depth: u32) -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        Just(json!(2)),
        Just(json!(1)),
        "\\PC{0,20}".prop_map(serde_json::Value::from),
        sha256_digest().prop_map(serde_json::Value::from),
        Just(json!("application/vnd.oci.image.manifest.v1+json")),
        Just(json!("application/vnd.oci.image.index.v1+json")),
        Just(json!("application/vnd.docker.distribution.manifest.v2+json")),
    ];
    let keys = prop_oneof![
        Just("schemaVersion".to_string()),
        Just("mediaType".to_string()),
        Just("config".to_string()),
        Just("layers".to_string()),
        Just("manifests".to_string()),
        Just("subject".to_string()),
        Just("digest".to_string()),
        Just("size".to_string()),
        Just("urls".to_string()),
        Just("annotations".to_string()),
        Just("artifactType".to_string()),
        "[a-z]{1,8}",
    ];
    leaf.prop_recursive(depth, 64, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(keys.clone(), inner, 0..8)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Inputs that once broke something, or sit on an edge; each must keep parsing as here.
#[test]
fn regressions() {
    assert!(route::parse("/v2/%").is_err());
    assert!(route::parse("/v2/a/blobs/sha256%3").is_err());
    assert!(route::parse(&format!("/v2/{}/tags/list", vec!["a"; 128].join("/"))).is_ok());
    assert!(route::parse(&format!("/v2/{}/tags/list", vec!["a"; 129].join("/"))).is_err());
    assert_eq!(parse_range(Some("bytes=-0"), 10), RangeSpec::Unsatisfiable);
    assert_eq!(parse_range(Some("bytes=-5"), 0), RangeSpec::Unsatisfiable);
    assert_eq!(parse_range(Some("bytes=18446744073709551615-"), 10), RangeSpec::Unsatisfiable);
    assert_eq!(parse_range(Some("bytes=0-18446744073709551615"), 10), RangeSpec::Part(0, 9));
    assert!(parse_content_range(&req_with(&[
        ("content-range", "0-18446744073709551615"),
        ("content-length", "0")
    ]))
    .is_err());
    assert!(parse_manifest(None, b"").is_err());
    assert!(parse_manifest(None, b"{\"schemaVersion\":2}").is_err());
}
