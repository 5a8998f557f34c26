//! The OCI Distribution v1.1 API over real HTTP: every endpoint, its success answers
//! (status, headers, exact bytes) and its errors (status + OCI code). Each test starts
//! its own server on a fresh data directory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::common;
use wharfie_testkit::oci;

use common::{bytes_of, sha256, Wharfie};
use oci::*;
use serde_json::json;

// ---------------------------------------------------------------------------------
// Base

#[test]
fn base_answers_200_empty_json_with_api_version() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let r = api.get("/v2/");
    r.expect_status(200);
    assert_eq!(r.json(), json!({}), "{}", r.describe());
    assert_eq!(r.h("Docker-Distribution-API-Version"), Some("registry/2.0"), "{}", r.describe());
}

#[test]
fn errors_are_oci_json_bodies_with_json_content_type() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let r = api.get("/v2/nope/manifests/latest");
    assert_eq!(r.status, 404, "{}", r.describe());
    let ct = r.hdr("Content-Type");
    assert!(ct.starts_with("application/json"), "error Content-Type {ct}");
    let v = r.json();
    let errs = v["errors"].as_array().expect("errors array");
    assert_eq!(errs.len(), 1, "{}", r.describe());
    assert!(errs[0]["code"].is_string() && errs[0]["message"].is_string(), "{}", r.describe());
}

#[test]
fn unsupported_method_is_an_oci_error_not_a_5xx() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let img = api.push_image("m/x", Some("v1"), 1, 1);
    let r = api.send(api.req("POST", "/v2/m/x/manifests/v1"));
    assert!(r.status == 405 || r.status == 400, "{}", r.describe());
    assert_eq!(r.code(), "UNSUPPORTED", "{}", r.describe());
    let r = api.send(api.req("PATCH", &format!("/v2/m/x/blobs/{}", img.config.digest)));
    assert!(r.status == 405 || r.status == 400, "{}", r.describe());
    assert_eq!(r.code(), "UNSUPPORTED", "{}", r.describe());
}

// ---------------------------------------------------------------------------------
// Blobs: monolithic push, GET/HEAD, ranges, isolation, delete

#[test]
fn monolithic_post_then_get_and_head() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let data = bytes_of(10_000, 1);
    let d = sha256(&data);
    let r = api.send(
        api.req("POST", &format!("/v2/lib/app/blobs/uploads/?digest={d}"))
            .header("Content-Type", "application/octet-stream")
            .body(data.clone()),
    );
    r.expect_status(201);
    assert_eq!(api.location(&r), format!("/v2/lib/app/blobs/{d}"));
    assert_eq!(r.h("Docker-Content-Digest"), Some(d.as_str()));
    assert_eq!(w.blob_files(), 1);
    assert_eq!(w.staging_entries(), 0, "monolithic push left staging behind");

    let g = api.get(&format!("/v2/lib/app/blobs/{d}"));
    g.expect_status(200);
    assert_eq!(g.body, data);
    assert_eq!(g.h("Content-Length"), Some("10000"));
    assert_eq!(g.h("Docker-Content-Digest"), Some(d.as_str()));

    let h = api.head(&format!("/v2/lib/app/blobs/{d}"));
    h.expect_status(200);
    assert!(h.body.is_empty());
    assert_eq!(h.h("Content-Length"), Some("10000"));
    assert_eq!(h.h("Docker-Content-Digest"), Some(d.as_str()));
}

#[test]
fn empty_blob_round_trips() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let d = api.push_blob("e/mpty", b"");
    assert_eq!(d, "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    let g = api.get(&format!("/v2/e/mpty/blobs/{d}"));
    g.expect_status(200);
    assert!(g.body.is_empty());
    assert_eq!(g.h("Content-Length"), Some("0"));
    let h = api.head(&format!("/v2/e/mpty/blobs/{d}"));
    h.expect_status(200);
    assert_eq!(h.h("Content-Length"), Some("0"));
}

#[test]
fn pushing_the_same_blob_twice_stores_one_file() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let data = bytes_of(5000, 2);
    api.push_blob("a", &data);
    api.push_blob("a", &data);
    api.push_blob_chunked("b", &data, 1024);
    assert_eq!(w.blob_files(), 1);
    assert_eq!(w.staging_entries(), 0);
}

#[test]
fn blob_range_requests() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let data = bytes_of(1000, 3);
    let d = api.push_blob("r/ng", &data);
    let p = format!("/v2/r/ng/blobs/{d}");

    let r = api.get_range(&p, "bytes=0-9");
    r.expect_status(206);
    assert_eq!(r.body, &data[0..10]);
    assert_eq!(r.h("Content-Range"), Some("bytes 0-9/1000"));
    assert_eq!(r.h("Content-Length"), Some("10"));

    let r = api.get_range(&p, "bytes=100-199");
    r.expect_status(206);
    assert_eq!(r.body, &data[100..200]);
    assert_eq!(r.h("Content-Range"), Some("bytes 100-199/1000"));

    let r = api.get_range(&p, "bytes=990-");
    r.expect_status(206);
    assert_eq!(r.body, &data[990..]);
    assert_eq!(r.h("Content-Range"), Some("bytes 990-999/1000"));

    let r = api.get_range(&p, "bytes=-5");
    r.expect_status(206);
    assert_eq!(r.body, &data[995..]);
    assert_eq!(r.h("Content-Range"), Some("bytes 995-999/1000"));

    // An end past the blob is clipped to its last byte.
    let r = api.get_range(&p, "bytes=900-5000");
    r.expect_status(206);
    assert_eq!(r.body, &data[900..]);
    assert_eq!(r.h("Content-Range"), Some("bytes 900-999/1000"));

    for unsat in ["bytes=1000-", "bytes=1000-1001", "bytes=5000-6000"] {
        let r = api.get_range(&p, unsat);
        assert_eq!(r.status, 416, "{unsat}: {}", r.describe());
        assert_eq!(r.h("Content-Range"), Some("bytes */1000"), "{unsat}: {}", r.describe());
    }
}

#[test]
fn blob_is_visible_only_in_the_repository_it_was_pushed_to() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let d = api.push_blob("repo/a", b"only in a");
    api.get(&format!("/v2/repo/b/blobs/{d}")).expect_err(404, "BLOB_UNKNOWN");
    api.head(&format!("/v2/repo/b/blobs/{d}")).expect_head_err(404);
    api.get(&format!("/v2/repo/a/blobs/{d}")).expect_status(200);
}

#[test]
fn unknown_blob_is_404_blob_unknown() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    api.push_blob("x", b"something");
    let d = sha256(b"never pushed");
    api.get(&format!("/v2/x/blobs/{d}")).expect_err(404, "BLOB_UNKNOWN");
    api.head(&format!("/v2/x/blobs/{d}")).expect_head_err(404);
    api.get(&format!("/v2/never/blobs/{d}")).expect_err(404, "BLOB_UNKNOWN");
    api.delete(&format!("/v2/x/blobs/{d}")).expect_err(404, "BLOB_UNKNOWN");
}

#[test]
fn blob_delete_unlinks_only_that_repository() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let data = bytes_of(300, 4);
    let d = api.push_blob("del/a", &data);
    api.push_blob("del/b", &data);
    let r = api.delete(&format!("/v2/del/a/blobs/{d}"));
    r.expect_status(202);
    api.get(&format!("/v2/del/a/blobs/{d}")).expect_err(404, "BLOB_UNKNOWN");
    api.head(&format!("/v2/del/a/blobs/{d}")).expect_head_err(404);
    api.delete(&format!("/v2/del/a/blobs/{d}")).expect_err(404, "BLOB_UNKNOWN");
    let g = api.get(&format!("/v2/del/b/blobs/{d}"));
    g.expect_status(200);
    assert_eq!(g.body, data);
}

// ---------------------------------------------------------------------------------
// Upload sessions

#[test]
fn chunked_session_post_patch_get_put() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let data = bytes_of(30_000, 5);
    let d = sha256(&data);

    let r = api.send(api.req("POST", "/v2/up/load/blobs/uploads/"));
    r.expect_status(202);
    let loc = api.location(&r);
    let id = loc
        .strip_prefix("/v2/up/load/blobs/uploads/")
        .unwrap_or_else(|| panic!("Location {loc} is not /v2/up/load/blobs/uploads/<id>"))
        .to_owned();
    assert!(!id.is_empty() && !id.contains('?'), "Location {loc}");
    assert_eq!(r.h("Docker-Upload-UUID"), Some(id.as_str()), "{}", r.describe());
    assert_eq!(r.h("Range"), Some("0-0"), "{}", r.describe());
    assert_eq!(w.staging_entries(), 1);

    // Every PATCH goes to the first Location: it must keep working.
    let r = api.patch(&loc, 0, &data[..10_000]);
    r.expect_status(202);
    assert_eq!(api.location(&r), loc);
    assert_eq!(r.h("Range"), Some("0-9999"));
    assert_eq!(r.h("Docker-Upload-UUID"), Some(id.as_str()));

    let s = api.get(&loc);
    s.expect_status(204);
    assert_eq!(s.h("Range"), Some("0-9999"));
    assert_eq!(api.location(&s), loc);

    let r = api.patch(&loc, 10_000, &data[10_000..20_000]);
    r.expect_status(202);
    assert_eq!(api.location(&r), loc);
    assert_eq!(r.h("Range"), Some("0-19999"));

    // Final chunk in the closing PUT.
    let r = api.finish(&loc, &d, Some((20_000, &data[20_000..])));
    r.expect_status(201);
    assert_eq!(api.location(&r), format!("/v2/up/load/blobs/{d}"));
    assert_eq!(r.h("Docker-Content-Digest"), Some(d.as_str()));
    assert_eq!(w.staging_entries(), 0, "a finished upload left staging");
    assert_eq!(w.blob_files(), 1);

    let g = api.get(&format!("/v2/up/load/blobs/{d}"));
    g.expect_status(200);
    assert_eq!(g.body, data);
    api.head(&format!("/v2/up/load/blobs/{d}")).expect_status(200);
    // The session is over.
    api.get(&loc).expect_err(404, "BLOB_UPLOAD_UNKNOWN");
    api.patch(&loc, 30_000, b"more").expect_err(404, "BLOB_UPLOAD_UNKNOWN");
}

#[test]
fn put_without_final_chunk_after_patches() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let data = bytes_of(4096, 6);
    let d = api.push_blob_chunked("no/final", &data, 1000);
    assert_eq!(api.get(&format!("/v2/no/final/blobs/{d}")).body, data);
    assert_eq!(w.staging_entries(), 0);
}

#[test]
fn post_then_single_put_with_the_whole_blob() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let data = bytes_of(2048, 7);
    let d = sha256(&data);
    let loc = api.start_upload("one/put");
    let r = api.send(
        api.req("PUT", &with_query(&loc, &format!("digest={d}")))
            .header("Content-Type", "application/octet-stream")
            .body(data.clone()),
    );
    r.expect_status(201);
    assert_eq!(api.location(&r), format!("/v2/one/put/blobs/{d}"));
    assert_eq!(api.get(&format!("/v2/one/put/blobs/{d}")).body, data);
}

#[test]
fn patch_without_content_range_appends_streamed_chunked_bodies() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let data = bytes_of(200_000, 8);
    let d = sha256(&data);
    let loc = api.start_upload("docker/daemon");
    // reqwest sends a reader of unknown length with Transfer-Encoding: chunked.
    let part1 = data[..120_000].to_vec();
    let r = api.send(
        api.req("PATCH", &loc)
            .header("Content-Type", "application/octet-stream")
            .body(reqwest::blocking::Body::new(std::io::Cursor::new(part1))),
    );
    r.expect_status(202);
    assert_eq!(r.h("Range"), Some("0-119999"));
    assert_eq!(api.location(&r), loc);
    // And a raw chunked PATCH, to be sure of the framing on the wire.
    let r = raw(
        &w,
        &RawReq::new("PATCH", loc.clone())
            .header("Content-Type", "application/octet-stream")
            .body(data[120_000..].to_vec())
            .framing(Framing::Chunked(7000)),
    );
    r.expect_status(202);
    assert_eq!(r.h("Range"), Some("0-199999"));
    assert!(r.h("Content-Length").is_none() || r.h("Content-Length") == Some("0"));
    let r = api.finish(&loc, &d, None);
    r.expect_status(201);
    assert_eq!(api.get(&format!("/v2/docker/daemon/blobs/{d}")).body, data);
}

#[test]
fn patch_without_content_range_with_content_length_appends() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let data = bytes_of(5000, 9);
    let d = sha256(&data);
    let loc = api.start_upload("plain/patch");
    for (i, c) in data.chunks(2000).enumerate() {
        let r = api.send(api.req("PATCH", &loc).body(c.to_vec()));
        r.expect_status(202);
        let end = ((i + 1) * 2000).min(5000) - 1;
        assert_eq!(r.h("Range"), Some(format!("0-{end}").as_str()));
    }
    api.finish(&loc, &d, None).expect_status(201);
    assert_eq!(api.get(&format!("/v2/plain/patch/blobs/{d}")).body, data);
}

#[test]
fn out_of_order_and_repeated_chunks_are_416_and_keep_the_offset() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let data = bytes_of(3000, 10);
    let d = sha256(&data);
    let loc = api.start_upload("ooo");
    api.patch(&loc, 0, &data[..1000]).expect_status(202);
    // Repeated chunk.
    api.patch(&loc, 0, &data[..1000]).expect_err(416, "BLOB_UPLOAD_INVALID");
    // Gap.
    api.patch(&loc, 2000, &data[2000..]).expect_err(416, "BLOB_UPLOAD_INVALID");
    // Overlap.
    api.patch(&loc, 500, &data[500..1500]).expect_err(416, "BLOB_UPLOAD_INVALID");
    let s = api.get(&loc);
    s.expect_status(204);
    assert_eq!(s.h("Range"), Some("0-999"));
    // Out-of-order final chunk in the PUT: 416 as well, session kept.
    api.finish(&loc, &d, Some((2000, &data[2000..]))).expect_err(416, "BLOB_UPLOAD_INVALID");
    assert_eq!(api.get(&loc).h("Range"), Some("0-999"));
    // The upload recovers from the right offset.
    api.patch(&loc, 1000, &data[1000..2000]).expect_status(202);
    api.finish(&loc, &d, Some((2000, &data[2000..]))).expect_status(201);
    assert_eq!(api.get(&format!("/v2/ooo/blobs/{d}")).body, data);
}

#[test]
fn malformed_content_range_is_400_blob_upload_invalid() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let loc = api.start_upload("bad/range");
    api.patch(&loc, 0, b"0123456789").expect_status(202);
    for cr in ["garbage", "10-", "-19", "x-y", "19-10"] {
        let r = api.send(api.req("PATCH", &loc).header("Content-Range", cr).body(b"abcdefghij".to_vec()));
        r.expect_err(400, "BLOB_UPLOAD_INVALID");
    }
    assert_eq!(api.get(&loc).h("Range"), Some("0-9"));
}

#[test]
fn upload_status_on_an_empty_session() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let loc = api.start_upload("st/atus");
    let s = api.get(&loc);
    s.expect_status(204);
    assert!(s.h("Range").is_some(), "no Range on an empty session: {}", s.describe());
    assert_eq!(api.location(&s), loc);
    api.patch(&loc, 0, b"x").expect_status(202);
    assert_eq!(api.get(&loc).h("Range"), Some("0-0"));
    api.patch(&loc, 1, b"yz").expect_status(202);
    assert_eq!(api.get(&loc).h("Range"), Some("0-2"));
}

#[test]
fn cancel_upload_then_every_verb_is_404() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let loc = api.start_upload("can/cel");
    api.patch(&loc, 0, b"partial").expect_status(202);
    assert_eq!(w.staging_entries(), 1);
    api.delete(&loc).expect_status(204);
    assert_eq!(w.staging_entries(), 0, "cancel left staging behind");
    api.get(&loc).expect_err(404, "BLOB_UPLOAD_UNKNOWN");
    api.patch(&loc, 7, b"more").expect_err(404, "BLOB_UPLOAD_UNKNOWN");
    api.finish(&loc, &sha256(b"partial"), None).expect_err(404, "BLOB_UPLOAD_UNKNOWN");
    api.delete(&loc).expect_err(404, "BLOB_UPLOAD_UNKNOWN");
    api.head(&format!("/v2/can/cel/blobs/{}", sha256(b"partial"))).expect_head_err(404);
    assert_eq!(w.blob_files(), 0);
}

#[test]
fn unknown_session_is_404_blob_upload_unknown() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let loc = "/v2/some/repo/blobs/uploads/00000000000000000000000000000000";
    api.get(loc).expect_err(404, "BLOB_UPLOAD_UNKNOWN");
    api.patch(loc, 0, b"abc").expect_err(404, "BLOB_UPLOAD_UNKNOWN");
    api.finish(loc, &sha256(b"abc"), Some((0, b"abc"))).expect_err(404, "BLOB_UPLOAD_UNKNOWN");
    api.delete(loc).expect_err(404, "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(w.blob_files(), 0);
    assert_eq!(w.staging_entries(), 0);
}

#[test]
fn session_belongs_to_its_repository() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let loc = api.start_upload("mine");
    api.patch(&loc, 0, b"abc").expect_status(202);
    let theirs = loc.replacen("/v2/mine/", "/v2/theirs/", 1);
    api.get(&theirs).expect_err(404, "BLOB_UPLOAD_UNKNOWN");
    api.patch(&theirs, 3, b"def").expect_err(404, "BLOB_UPLOAD_UNKNOWN");
    api.finish(&theirs, &sha256(b"abc"), None).expect_err(404, "BLOB_UPLOAD_UNKNOWN");
    api.delete(&theirs).expect_err(404, "BLOB_UPLOAD_UNKNOWN");
    // Untouched in its own repository.
    assert_eq!(api.get(&loc).h("Range"), Some("0-2"));
    api.finish(&loc, &sha256(b"abc"), None).expect_status(201);
    api.head(&format!("/v2/theirs/blobs/{}", sha256(b"abc"))).expect_head_err(404);
}

#[test]
fn put_with_wrong_digest_is_400_and_ends_the_upload() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let data = bytes_of(5000, 11);
    let wrong = sha256(b"something else");
    let loc = api.start_upload("wrong/digest");
    api.patch(&loc, 0, &data).expect_status(202);
    api.finish(&loc, &wrong, None).expect_err(400, "DIGEST_INVALID");
    assert_eq!(w.blob_files(), 0);
    assert_eq!(w.staging_entries(), 0, "a failed PUT left staging behind");
    api.get(&loc).expect_err(404, "BLOB_UPLOAD_UNKNOWN");
    api.head(&format!("/v2/wrong/digest/blobs/{wrong}")).expect_head_err(404);
    api.head(&format!("/v2/wrong/digest/blobs/{}", sha256(&data))).expect_head_err(404);
}

#[test]
fn put_without_digest_is_400_digest_invalid() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let loc = api.start_upload("no/digest");
    api.patch(&loc, 0, b"abc").expect_status(202);
    api.send(api.req("PUT", &loc)).expect_err(400, "DIGEST_INVALID");
    assert_eq!(w.blob_files(), 0);
    api.head(&format!("/v2/no/digest/blobs/{}", sha256(b"abc"))).expect_head_err(404);
}

#[test]
fn monolithic_post_with_wrong_digest_stores_nothing() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let d = sha256(b"claimed");
    let r =
        api.send(api.req("POST", &format!("/v2/mono/blobs/uploads/?digest={d}")).body(b"actual".to_vec()));
    r.expect_err(400, "DIGEST_INVALID");
    assert_eq!(w.blob_files(), 0);
    assert_eq!(w.staging_entries(), 0);
    api.head(&format!("/v2/mono/blobs/{d}")).expect_head_err(404);
    api.head(&format!("/v2/mono/blobs/{}", sha256(b"actual"))).expect_head_err(404);
}

// ---------------------------------------------------------------------------------
// Cross-repository mount

#[test]
fn mount_from_a_repository_that_has_the_blob() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let data = bytes_of(777, 12);
    let d = api.push_blob("src/repo", &data);
    let r = api.send(api.req("POST", &format!("/v2/dst/repo/blobs/uploads/?mount={d}&from=src/repo")));
    r.expect_status(201);
    assert_eq!(api.location(&r), format!("/v2/dst/repo/blobs/{d}"));
    assert_eq!(r.h("Docker-Content-Digest"), Some(d.as_str()));
    let g = api.get(&format!("/v2/dst/repo/blobs/{d}"));
    g.expect_status(200);
    assert_eq!(g.body, data);
    assert_eq!(w.blob_files(), 1, "a mount must not copy the file");
    assert_eq!(w.staging_entries(), 0, "a mount must not open a session");
}

#[test]
fn mount_that_cannot_mount_opens_a_session() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let data = bytes_of(500, 13);
    let d = sha256(&data);
    // Unknown everywhere.
    let r = api.send(api.req("POST", &format!("/v2/dst/blobs/uploads/?mount={d}&from=src")));
    r.expect_status(202);
    let loc = api.location(&r);
    assert!(loc.starts_with("/v2/dst/blobs/uploads/"), "Location {loc}");
    assert!(r.h("Docker-Upload-UUID").is_some(), "{}", r.describe());
    // The session works.
    api.finish(&loc, &d, Some((0, &data))).expect_status(201);
    api.get(&format!("/v2/dst/blobs/{d}")).expect_status(200);

    // Present in a third repository, but not in `from`: not mountable from there.
    let other = bytes_of(600, 14);
    let od = api.push_blob("third", &other);
    let r = api.send(api.req("POST", &format!("/v2/dst/blobs/uploads/?mount={od}&from=src")));
    r.expect_status(202);
    api.delete(&api.location(&r)).expect_status(204);
    api.get(&format!("/v2/dst/blobs/{od}")).expect_err(404, "BLOB_UNKNOWN");
}

#[test]
fn mount_without_from_uses_any_repository() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let data = bytes_of(900, 15);
    let d = api.push_blob("somewhere/else", &data);
    let r = api.send(api.req("POST", &format!("/v2/auto/mount/blobs/uploads/?mount={d}")));
    r.expect_status(201);
    assert_eq!(api.location(&r), format!("/v2/auto/mount/blobs/{d}"));
    assert_eq!(api.get(&format!("/v2/auto/mount/blobs/{d}")).body, data);

    let unknown = sha256(b"nowhere");
    let r = api.send(api.req("POST", &format!("/v2/auto/mount/blobs/uploads/?mount={unknown}")));
    r.expect_status(202);
    assert!(api.location(&r).starts_with("/v2/auto/mount/blobs/uploads/"));
}

// ---------------------------------------------------------------------------------
// Manifests

fn check_manifest_get(api: &Api, name: &str, reference: &str, body: &[u8], media_type: &str) {
    let d = sha256(body);
    let p = format!("/v2/{name}/manifests/{reference}");
    let g = api.send(api.req("GET", &p).header("Accept", media_type));
    g.expect_status(200);
    assert_eq!(g.body, body, "GET {p}: bytes differ");
    assert_eq!(g.h("Content-Type"), Some(media_type), "GET {p}");
    assert_eq!(g.h("Docker-Content-Digest"), Some(d.as_str()), "GET {p}");
    assert_eq!(g.h("Content-Length"), Some(body.len().to_string().as_str()), "GET {p}");
    let h = api.send(api.req("HEAD", &p).header("Accept", media_type));
    h.expect_status(200);
    assert!(h.body.is_empty());
    assert_eq!(h.h("Content-Type"), Some(media_type), "HEAD {p}");
    assert_eq!(h.h("Docker-Content-Digest"), Some(d.as_str()), "HEAD {p}");
    assert_eq!(h.h("Content-Length"), Some(body.len().to_string().as_str()), "HEAD {p}");
}

#[test]
fn oci_manifest_put_get_head_by_tag_and_digest() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let cfg = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = bytes_of(4000, 16);
    let config = Desc::new(OCI_CONFIG, cfg);
    let l = Desc::new(OCI_LAYER, &layer);
    api.push_blob("img/oci", cfg);
    api.push_blob("img/oci", &layer);
    let m = image_manifest(OCI_MANIFEST, &config, &[l], json!({}));
    let d = sha256(&m);
    let r = api.put_manifest("img/oci", "v1", OCI_MANIFEST, &m);
    r.expect_status(201);
    assert_eq!(api.location(&r), format!("/v2/img/oci/manifests/{d}"));
    assert_eq!(r.h("Docker-Content-Digest"), Some(d.as_str()));
    assert!(r.h("OCI-Subject").is_none(), "OCI-Subject without a subject: {}", r.describe());
    check_manifest_get(&api, "img/oci", "v1", &m, OCI_MANIFEST);
    check_manifest_get(&api, "img/oci", &d, &m, OCI_MANIFEST);
    assert_eq!(api.tags("img/oci"), vec!["v1"]);
}

#[test]
fn manifest_bytes_are_served_exactly_as_pushed() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let cfg = b"{}";
    api.push_blob("exact", cfg);
    let config = Desc::new(OCI_CONFIG, cfg);
    // Odd formatting, key order, unicode and a trailing newline must survive.
    let m = format!(
        "{{\n   \"schemaVersion\" :  2,\n\t\"layers\": [],\n  \"config\": {},\n  \"mediaType\": \"{OCI_MANIFEST}\",\n  \"annotations\": {{\"note\": \"h\u{e9}llo \u{2603}\"}}\n}}\n",
        serde_json::to_string(&config.json()).expect("json")
    )
    .into_bytes();
    let d = api.push_manifest("exact", "pretty", OCI_MANIFEST, &m);
    check_manifest_get(&api, "exact", "pretty", &m, OCI_MANIFEST);
    check_manifest_get(&api, "exact", &d, &m, OCI_MANIFEST);
}

#[test]
fn manifest_without_media_type_field_takes_the_content_type() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let cfg = b"{\"a\":1}";
    api.push_blob("nomt", cfg);
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "config": Desc::new(OCI_CONFIG, cfg).json(),
        "layers": [],
    }))
    .expect("json");
    api.push_manifest("nomt", "t", OCI_MANIFEST, &m);
    check_manifest_get(&api, "nomt", "t", &m, OCI_MANIFEST);
}

#[test]
fn docker_schema2_manifest_and_manifest_list() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let cfg = br#"{"architecture":"arm64","os":"linux"}"#;
    let layer = bytes_of(3000, 17);
    api.push_blob("dock/er", cfg);
    api.push_blob("dock/er", &layer);
    let m = image_manifest(
        DOCKER_MANIFEST,
        &Desc::new(DOCKER_CONFIG, cfg),
        &[Desc::new(DOCKER_LAYER, &layer)],
        json!({}),
    );
    let md = api.push_manifest("dock/er", "arm64", DOCKER_MANIFEST, &m);
    check_manifest_get(&api, "dock/er", "arm64", &m, DOCKER_MANIFEST);
    check_manifest_get(&api, "dock/er", &md, &m, DOCKER_MANIFEST);

    let child = Desc { media_type: DOCKER_MANIFEST.into(), digest: md.clone(), size: m.len() };
    let list = index_manifest(DOCKER_LIST, &[child], json!({}));
    let r = api.put_manifest("dock/er", "latest", DOCKER_LIST, &list);
    r.expect_status(201);
    assert_eq!(api.location(&r), format!("/v2/dock/er/manifests/{}", sha256(&list)));
    check_manifest_get(&api, "dock/er", "latest", &list, DOCKER_LIST);
    check_manifest_get(&api, "dock/er", &sha256(&list), &list, DOCKER_LIST);
    let mut tags = api.tags("dock/er");
    tags.sort();
    assert_eq!(tags, vec!["arm64", "latest"]);
}

#[test]
fn oci_index_of_manifests_pushed_by_digest() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let a = api.push_image("multi/arch", None, 21, 2);
    let b = api.push_image("multi/arch", None, 22, 1);
    check_manifest_get(&api, "multi/arch", &a.digest, &a.manifest, OCI_MANIFEST);
    let idx = index_manifest(OCI_INDEX, &[a.desc(), b.desc()], json!({}));
    let d = api.push_manifest("multi/arch", "latest", OCI_INDEX, &idx);
    check_manifest_get(&api, "multi/arch", "latest", &idx, OCI_INDEX);
    check_manifest_get(&api, "multi/arch", &d, &idx, OCI_INDEX);
    // An index that nests another index.
    let top = index_manifest(
        OCI_INDEX,
        &[Desc { media_type: OCI_INDEX.into(), digest: d, size: idx.len() }],
        json!({}),
    );
    api.push_manifest("multi/arch", "nested", OCI_INDEX, &top);
    check_manifest_get(&api, "multi/arch", "nested", &top, OCI_INDEX);
    // Pushing by digest adds no tag.
    assert_eq!(api.tags("multi/arch"), vec!["latest", "nested"]);
}

#[test]
fn manifest_put_by_digest() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let img = api.push_image("by/digest", None, 23, 1);
    let r = api.put_manifest("by/digest", &img.digest, OCI_MANIFEST, &img.manifest);
    r.expect_status(201);
    assert_eq!(api.location(&r), format!("/v2/by/digest/manifests/{}", img.digest));
    assert_eq!(r.h("Docker-Content-Digest"), Some(img.digest.as_str()));
    check_manifest_get(&api, "by/digest", &img.digest, &img.manifest, OCI_MANIFEST);
}

#[test]
fn manifest_put_by_digest_that_does_not_match_is_400_digest_invalid() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let img = api.push_image("mis/match", Some("v1"), 24, 1);
    let other = image_manifest(OCI_MANIFEST, &img.config, &[], json!({}));
    let r = api.put_manifest("mis/match", &img.digest, OCI_MANIFEST, &other);
    r.expect_err(400, "DIGEST_INVALID");
    api.head(&format!("/v2/mis/match/manifests/{}", sha256(&other))).expect_head_err(404);
}

#[test]
fn retagging_moves_the_tag() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let a = api.push_image("re/tag", Some("latest"), 25, 1);
    let b = api.push_image("re/tag", Some("latest"), 26, 1);
    assert_ne!(a.digest, b.digest);
    check_manifest_get(&api, "re/tag", "latest", &b.manifest, OCI_MANIFEST);
    // The old manifest is still there by digest.
    check_manifest_get(&api, "re/tag", &a.digest, &a.manifest, OCI_MANIFEST);
    assert_eq!(api.tags("re/tag"), vec!["latest"]);
}

#[test]
fn manifests_are_per_repository() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let img = api.push_image("one", Some("v1"), 27, 1);
    api.get(&format!("/v2/two/manifests/{}", img.digest)).expect_status(404);
    api.push_image("two", Some("x"), 28, 1);
    api.get(&format!("/v2/two/manifests/{}", img.digest)).expect_err(404, "MANIFEST_UNKNOWN");
    api.get("/v2/two/manifests/v1").expect_err(404, "MANIFEST_UNKNOWN");
}

#[test]
fn unknown_manifest_is_404_manifest_unknown() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    api.push_image("known", Some("v1"), 29, 1);
    let d = sha256(b"no such manifest");
    api.get("/v2/known/manifests/nope").expect_err(404, "MANIFEST_UNKNOWN");
    api.get(&format!("/v2/known/manifests/{d}")).expect_err(404, "MANIFEST_UNKNOWN");
    api.head("/v2/known/manifests/nope").expect_head_err(404);
    api.head(&format!("/v2/known/manifests/{d}")).expect_head_err(404);
    // Unknown repository: MANIFEST_UNKNOWN or NAME_UNKNOWN.
    for p in ["/v2/unknown/repo/manifests/latest".to_owned(), format!("/v2/unknown/repo/manifests/{d}")] {
        let r = api.get(&p);
        assert_eq!(r.status, 404, "{p}: {}", r.describe());
        let c = r.code();
        assert!(c == "MANIFEST_UNKNOWN" || c == "NAME_UNKNOWN", "{p}: {}", r.describe());
        api.head(&p).expect_head_err(404);
    }
}

#[test]
fn subject_sets_oci_subject_header() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let img = api.push_image("sub/ject", Some("v1"), 30, 1);
    let cfg = b"{}";
    api.push_blob("sub/ject", cfg);
    let sig = image_manifest(
        OCI_MANIFEST,
        &Desc::new("application/vnd.example.sig.v1+json", cfg),
        &[],
        json!({ "subject": img.desc().json() }),
    );
    let r = api.put_manifest("sub/ject", &sha256(&sig), OCI_MANIFEST, &sig);
    r.expect_status(201);
    assert_eq!(r.h("OCI-Subject"), Some(img.digest.as_str()), "{}", r.describe());
}

#[test]
fn manifest_delete_by_digest_removes_it_and_its_tags() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let img = api.push_image("del/man", Some("v1"), 31, 1);
    api.push_manifest("del/man", "also", OCI_MANIFEST, &img.manifest);
    let keep = api.push_image("del/man", Some("keep"), 32, 1);
    let r = api.delete(&format!("/v2/del/man/manifests/{}", img.digest));
    r.expect_status(202);
    api.get(&format!("/v2/del/man/manifests/{}", img.digest)).expect_err(404, "MANIFEST_UNKNOWN");
    api.head(&format!("/v2/del/man/manifests/{}", img.digest)).expect_head_err(404);
    api.get("/v2/del/man/manifests/v1").expect_err(404, "MANIFEST_UNKNOWN");
    api.get("/v2/del/man/manifests/also").expect_err(404, "MANIFEST_UNKNOWN");
    assert_eq!(api.tags("del/man"), vec!["keep"]);
    check_manifest_get(&api, "del/man", "keep", &keep.manifest, OCI_MANIFEST);
    api.delete(&format!("/v2/del/man/manifests/{}", img.digest)).expect_err(404, "MANIFEST_UNKNOWN");
}

#[test]
fn manifest_delete_by_tag_removes_only_the_tag() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let img = api.push_image("del/tag", Some("v1"), 33, 1);
    api.push_manifest("del/tag", "v2", OCI_MANIFEST, &img.manifest);
    let r = api.delete("/v2/del/tag/manifests/v1");
    r.expect_status(202);
    api.get("/v2/del/tag/manifests/v1").expect_err(404, "MANIFEST_UNKNOWN");
    check_manifest_get(&api, "del/tag", &img.digest, &img.manifest, OCI_MANIFEST);
    check_manifest_get(&api, "del/tag", "v2", &img.manifest, OCI_MANIFEST);
    assert_eq!(api.tags("del/tag"), vec!["v2"]);
    api.delete("/v2/del/tag/manifests/v1").expect_err(404, "MANIFEST_UNKNOWN");
}

#[test]
fn manifest_delete_unknown_is_404_manifest_unknown() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    api.push_image("del/unknown", Some("v1"), 34, 1);
    api.delete("/v2/del/unknown/manifests/nope").expect_err(404, "MANIFEST_UNKNOWN");
    api.delete(&format!("/v2/del/unknown/manifests/{}", sha256(b"x"))).expect_err(404, "MANIFEST_UNKNOWN");
}

#[test]
fn manifest_referencing_a_blob_of_another_repository_is_refused_until_mounted() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let cfg = br#"{"os":"linux"}"#;
    let layer = bytes_of(1234, 35);
    api.push_blob("repo/a", cfg);
    api.push_blob("repo/a", &layer);
    let m =
        image_manifest(OCI_MANIFEST, &Desc::new(OCI_CONFIG, cfg), &[Desc::new(OCI_LAYER, &layer)], json!({}));
    let r = api.put_manifest("repo/b", "v1", OCI_MANIFEST, &m);
    r.expect_err(400, "MANIFEST_BLOB_UNKNOWN");
    api.head("/v2/repo/b/manifests/v1").expect_head_err(404);
    api.head(&format!("/v2/repo/b/manifests/{}", sha256(&m))).expect_head_err(404);
    for d in [sha256(cfg), sha256(&layer)] {
        api.send(api.req("POST", &format!("/v2/repo/b/blobs/uploads/?mount={d}&from=repo/a")))
            .expect_status(201);
    }
    api.push_manifest("repo/b", "v1", OCI_MANIFEST, &m);
    check_manifest_get(&api, "repo/b", "v1", &m, OCI_MANIFEST);
}

#[test]
fn index_child_must_be_in_the_same_repository() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let img = api.push_image("idx/a", None, 36, 1);
    let idx = index_manifest(OCI_INDEX, &[img.desc()], json!({}));
    api.put_manifest("idx/b", "v1", OCI_INDEX, &idx).expect_err(400, "MANIFEST_BLOB_UNKNOWN");
    api.head("/v2/idx/b/manifests/v1").expect_head_err(404);
    api.push_manifest("idx/a", "v1", OCI_INDEX, &idx);
}

#[test]
fn schema1_manifests_are_refused() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let s1 =
        br#"{"schemaVersion":1,"name":"s/one","tag":"v1","architecture":"amd64","fsLayers":[],"history":[]}"#;
    for ct in [DOCKER_V1, DOCKER_V1_SIGNED, "application/json"] {
        api.put_manifest("s/one", "v1", ct, s1).expect_err(400, "MANIFEST_INVALID");
    }
    api.head("/v2/s/one/manifests/v1").expect_head_err(404);
    assert!(!api.catalog().contains(&"s/one".to_owned()));
}

#[test]
fn manifest_over_4_mib_is_413() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let cfg = b"{}";
    api.push_blob("big", cfg);
    let pad = "x".repeat(4 * 1024 * 1024);
    let m =
        image_manifest(OCI_MANIFEST, &Desc::new(OCI_CONFIG, cfg), &[], json!({"annotations": {"pad": pad}}));
    assert!(m.len() > 4 * 1024 * 1024);
    let (r, _) = raw_expect_continue(
        &w,
        &RawReq::new("PUT", "/v2/big/manifests/v1").header("Content-Type", OCI_MANIFEST).body(m.clone()),
    );
    assert_eq!(r.status, 413, "{}", r.describe());
    let c = r.code();
    assert!(c == "SIZE_INVALID" || c == "MANIFEST_INVALID", "{}", r.describe());
    api.head("/v2/big/manifests/v1").expect_head_err(404);
    api.head(&format!("/v2/big/manifests/{}", sha256(&m))).expect_head_err(404);
}

#[test]
fn manifest_of_exactly_4_mib_is_accepted() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let cfg = b"{}";
    api.push_blob("edge", cfg);
    let base =
        image_manifest(OCI_MANIFEST, &Desc::new(OCI_CONFIG, cfg), &[], json!({"annotations": {"pad": ""}}));
    let pad = "y".repeat(4 * 1024 * 1024 - base.len());
    let m =
        image_manifest(OCI_MANIFEST, &Desc::new(OCI_CONFIG, cfg), &[], json!({"annotations": {"pad": pad}}));
    assert_eq!(m.len(), 4 * 1024 * 1024);
    api.push_manifest("edge", "v1", OCI_MANIFEST, &m);
    check_manifest_get(&api, "edge", "v1", &m, OCI_MANIFEST);
}

// ---------------------------------------------------------------------------------
// Names

#[test]
fn names_of_any_depth_and_all_separators() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    for name in [
        "a",
        "a/b/c/d/e/f/g",
        "library/ubuntu",
        "a.b_c__d-e--f/0-9",
        "blobs/uploads",
        "manifests/tags/list",
        "v2/referrers",
    ] {
        let img = api.push_image(name, Some("v1"), 40, 1);
        check_manifest_get(&api, name, "v1", &img.manifest, OCI_MANIFEST);
        api.get(&format!("/v2/{name}/blobs/{}", img.config.digest)).expect_status(200);
        assert_eq!(api.tags(name), vec!["v1"], "{name}");
        let loc = api.start_upload(name);
        assert!(loc.starts_with(&format!("/v2/{name}/blobs/uploads/")), "{name}: {loc}");
        api.delete(&loc).expect_status(204);
    }
}

#[test]
fn name_of_255_characters_is_accepted() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let comp = "x".repeat(50);
    let name = format!("{}y", [comp.as_str(); 5].join("/"));
    assert_eq!(name.len(), 255);
    let img = api.push_image(&name, Some("v1"), 41, 1);
    check_manifest_get(&api, &name, "v1", &img.manifest, OCI_MANIFEST);
    assert!(api.catalog().contains(&name));
}

#[test]
fn tags_of_every_allowed_shape() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let img = api.push_image("tag/shapes", None, 42, 1);
    let long = format!("a{}", "b".repeat(127));
    assert_eq!(long.len(), 128);
    let mut want =
        vec!["_under".to_owned(), "V1.2.3-rc.1_x".into(), "0".into(), long.clone(), "a-.b_-.".into()];
    for t in &want {
        api.push_manifest("tag/shapes", t, OCI_MANIFEST, &img.manifest);
        check_manifest_get(&api, "tag/shapes", t, &img.manifest, OCI_MANIFEST);
    }
    // Lexical or ASCIIbetical order are both allowed with mixed case: compare as sets.
    want.sort();
    let mut got = api.tags("tag/shapes");
    got.sort();
    assert_eq!(got, want);
}

// ---------------------------------------------------------------------------------
// Tags list and catalog

#[test]
fn tags_list_sorted_and_paginated() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let img = api.push_image("pag/ed", Some("v2"), 43, 1);
    let mut all = vec!["v2".to_owned()];
    for t in ["latest", "v10", "alpha", "v1", "beta", "9"] {
        api.push_manifest("pag/ed", t, OCI_MANIFEST, &img.manifest);
        all.push(t.to_owned());
    }
    all.sort();

    let r = api.get("/v2/pag/ed/tags/list");
    assert_eq!(r.json(), json!({"name": "pag/ed", "tags": all}));
    check_paging(&api, "/v2/pag/ed/tags/list", "tags", &all, 3);
}

/// What a page's `Link` header must be.
#[derive(Debug)]
enum Next {
    /// No `Link`: the list ends here.
    None,
    /// `Link: <PATH?n=N&last=NAME>; rel="next"` (the name may be percent-encoded).
    After(String),
    /// Either; a `Link` must lead to an empty page.
    EmptyOrNone,
}

/// The `n`/`last` paging of one listing (a repository's tags, or the catalog) over `all`,
/// its whole sorted content, as one table of queries: the items each must return and
/// its `Link`. Then the walk through the `Link` headers, `page` at a time.
fn check_paging(api: &Api, path: &str, key: &str, all: &[String], page: usize) {
    assert!(all.len() > page && all.len() >= 3 && all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
    let after = |name: &str| -> Vec<String> { all.iter().filter(|t| t.as_str() > name).cloned().collect() };
    let mid = &all[all.len() / 2];
    // A `last` that is no item, just before all[2]: `last` need not name an existing one.
    let absent = &all[2][..all[2].len() - 1];
    assert!(!all.iter().any(|t| t == absent) && absent > all[1].as_str(), "{absent} fits before {}", all[2]);
    let cases: Vec<(String, Vec<String>, Next)> = vec![
        (String::new(), all.to_vec(), Next::None),
        (format!("?last={mid}"), after(mid), Next::None),
        ("?last=zzz".into(), vec![], Next::None),
        ("?n=0".into(), vec![], Next::None),
        ("?n=100".into(), all.to_vec(), Next::None),
        (format!("?n={}", all.len()), all.to_vec(), Next::EmptyOrNone),
        (format!("?n={page}"), all[..page].to_vec(), Next::After(all[page - 1].clone())),
        (format!("?n=1&last={absent}"), vec![all[2].clone()], Next::After(all[2].clone())),
    ];
    for (query, want, next) in &cases {
        let what = format!("GET {path}{query}");
        let r = api.get(&format!("{path}{query}"));
        r.expect_status(200);
        assert_eq!(&strings(&r.json()[key]), want, "{what}: {}", r.describe());
        let link = r.h("Link");
        match next {
            Next::None => assert!(link.is_none(), "{what}: Link on the last page: {}", r.describe()),
            Next::After(last) => {
                let n = query.trim_start_matches("?n=").split('&').next().unwrap_or_default();
                let link = link.unwrap_or_else(|| panic!("{what}: no Link: {}", r.describe()));
                let want_plain = format!("<{path}?n={n}&last={last}>; rel=\"next\"");
                let want_enc = format!("<{path}?n={n}&last={}>; rel=\"next\"", last.replace('/', "%2F"));
                assert!(link == want_plain || link == want_enc, "{what}: Link {link}, want {want_plain}");
            }
            Next::EmptyOrNone => {
                if let Some(link) = link {
                    let r = api.get(&link_target(link));
                    assert!(
                        strings(&r.json()[key]).is_empty(),
                        "{what}: the Link leads to more: {}",
                        r.describe()
                    );
                }
            }
        }
    }

    // Walk the pages through the Link headers.
    let mut got = Vec::new();
    let mut next = Some(format!("{path}?n={page}"));
    let mut pages = 0;
    while let Some(p) = next.take() {
        pages += 1;
        assert!(pages <= all.len() + 1, "pagination does not end");
        let r = api.get(&p);
        r.expect_status(200);
        let items = strings(&r.json()[key]);
        assert!(items.len() <= page, "{p}: {items:?}");
        got.extend(items);
        next = r.h("Link").map(link_target);
    }
    assert_eq!(pages, all.len().div_ceil(page), "pages of {page}");
    assert_eq!(got, all);
}

fn link_target(link: &str) -> String {
    let start = link.find('<').expect("Link <") + 1;
    let end = link.find('>').expect("Link >");
    link[start..end].to_owned()
}

#[test]
fn tags_list_of_unknown_repository_is_404_name_unknown() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    api.get("/v2/no/such/repo/tags/list").expect_err(404, "NAME_UNKNOWN");
}

#[test]
fn catalog_sorted_and_paginated() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let r = api.get("/v2/_catalog");
    r.expect_status(200);
    assert!(strings(&r.json()["repositories"]).is_empty(), "{}", r.describe());

    let mut names = ["zeta", "alpha", "beta/two/three", "beta/one", "alpha-x", "m"];
    for (i, n) in names.iter().enumerate() {
        api.push_image(n, Some("v1"), 50 + i as u64, 1);
    }
    names.sort_unstable();
    let all: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    assert_eq!(api.catalog(), all);

    check_paging(&api, "/v2/_catalog", "repositories", &all, 2);
}

// ---------------------------------------------------------------------------------
// Referrers

#[test]
fn referrers_list_filter_and_empty() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let name = "ref/errers";
    let img = api.push_image(name, Some("v1"), 60, 1);
    let empty_cfg = b"{}";
    api.push_blob(name, empty_cfg);
    let layer = b"signature bytes";
    api.push_blob(name, layer);

    // 1: artifactType field set.
    let sbom = image_manifest(
        OCI_MANIFEST,
        &Desc::new("application/vnd.oci.empty.v1+json", empty_cfg),
        &[Desc::new("application/octet-stream", layer)],
        json!({
            "artifactType": "application/vnd.example.sbom.v1+json",
            "subject": img.desc().json(),
            "annotations": {"org.example.kind": "sbom"},
        }),
    );
    // 2: no artifactType: the config media type stands in.
    let sig = image_manifest(
        OCI_MANIFEST,
        &Desc::new("application/vnd.example.sig.config.v1+json", empty_cfg),
        &[],
        json!({ "subject": img.desc().json(), "annotations": {"org.example.kind": "sig"} }),
    );
    // 3: an index referrer without artifactType: artifactType is omitted.
    let idx = index_manifest(OCI_INDEX, &[], json!({ "subject": img.desc().json() }));
    let mut want = Vec::new();
    for (body, mt) in [(&sbom, OCI_MANIFEST), (&sig, OCI_MANIFEST), (&idx, OCI_INDEX)] {
        let r = api.put_manifest(name, &sha256(body), mt, body);
        r.expect_status(201);
        assert_eq!(r.h("OCI-Subject"), Some(img.digest.as_str()));
        want.push(sha256(body));
    }

    let r = api.get(&format!("/v2/{name}/referrers/{}", img.digest));
    r.expect_status(200);
    assert_eq!(r.h("Content-Type"), Some(OCI_INDEX));
    assert!(r.h("OCI-Filters-Applied").is_none());
    let v = r.json();
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], OCI_INDEX);
    let ms = v["manifests"].as_array().expect("manifests").clone();
    assert_eq!(ms.len(), 3, "{}", r.describe());
    let find =
        |d: &str| ms.iter().find(|m| m["digest"] == d).unwrap_or_else(|| panic!("{d} missing: {v}")).clone();
    let s = find(&want[0]);
    assert_eq!(s["mediaType"], OCI_MANIFEST);
    assert_eq!(s["size"], sbom.len());
    assert_eq!(s["artifactType"], "application/vnd.example.sbom.v1+json");
    assert_eq!(s["annotations"], json!({"org.example.kind": "sbom"}));
    let g = find(&want[1]);
    assert_eq!(g["size"], sig.len());
    assert_eq!(g["artifactType"], "application/vnd.example.sig.config.v1+json");
    assert_eq!(g["annotations"], json!({"org.example.kind": "sig"}));
    let i = find(&want[2]);
    assert_eq!(i["mediaType"], OCI_INDEX);
    assert_eq!(i["size"], idx.len());
    assert!(i.get("artifactType").is_none(), "index without artifactType must omit it: {i}");

    // Filter.
    // (Clients percent-encode the query value: `/` may or may not be, `+` always is.)
    for q in ["application/vnd.example.sbom.v1%2Bjson", "application%2Fvnd.example.sbom.v1%2Bjson"] {
        let r = api.get(&format!("/v2/{name}/referrers/{}?artifactType={q}", img.digest));
        r.expect_status(200);
        assert_eq!(r.h("OCI-Filters-Applied"), Some("artifactType"));
        let ms = r.json()["manifests"].as_array().expect("manifests").clone();
        assert_eq!(ms.len(), 1, "{q}: {}", r.describe());
        assert_eq!(ms[0]["digest"], want[0].as_str());
    }
    let r = api.get(&format!("/v2/{name}/referrers/{}?artifactType=application/none", img.digest));
    r.expect_status(200);
    assert_eq!(r.h("OCI-Filters-Applied"), Some("artifactType"));
    assert_eq!(r.json()["manifests"], json!([]));

    // Unknown digest: 200, empty.
    let r = api.get(&format!("/v2/{name}/referrers/{}", sha256(b"nothing refers to me")));
    r.expect_status(200);
    assert_eq!(r.h("Content-Type"), Some(OCI_INDEX));
    assert_eq!(r.json(), json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}));

    // Deleting a referrer removes it from the list.
    api.delete(&format!("/v2/{name}/manifests/{}", want[1])).expect_status(202);
    let r = api.get(&format!("/v2/{name}/referrers/{}", img.digest));
    let ds: Vec<String> = r.json()["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| m["digest"].as_str().expect("digest").to_owned())
        .collect();
    assert_eq!(ds.len(), 2, "{}", r.describe());
    assert!(!ds.contains(&want[1]));
}

#[test]
fn referrer_may_be_pushed_before_its_subject() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let name = "ref/first";
    let cfg = b"{}";
    api.push_blob(name, cfg);
    let missing = Desc::phantom(OCI_MANIFEST, 61);
    let sig = image_manifest(
        OCI_MANIFEST,
        &Desc::new("application/vnd.example.sig.v1", cfg),
        &[],
        json!({ "artifactType": "application/vnd.example.sig.v1", "subject": missing.json() }),
    );
    let r = api.put_manifest(name, "sig", OCI_MANIFEST, &sig);
    r.expect_status(201);
    assert_eq!(r.h("OCI-Subject"), Some(missing.digest.as_str()));
    let r = api.get(&format!("/v2/{name}/referrers/{}", missing.digest));
    r.expect_status(200);
    let ms = r.json()["manifests"].as_array().expect("manifests").clone();
    assert_eq!(ms.len(), 1, "{}", r.describe());
    assert_eq!(ms[0]["digest"], sha256(&sig).as_str());
}

#[test]
fn referrers_are_per_repository() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let img = api.push_image("ref/a", Some("v1"), 62, 1);
    api.push_blob("ref/a", b"{}");
    let sig = image_manifest(
        OCI_MANIFEST,
        &Desc::new("application/x.sig", b"{}"),
        &[],
        json!({"subject": img.desc().json()}),
    );
    api.push_manifest("ref/a", "sig", OCI_MANIFEST, &sig);
    api.push_image("ref/b", Some("v1"), 63, 1);
    let r = api.get(&format!("/v2/ref/b/referrers/{}", img.digest));
    r.expect_status(200);
    assert_eq!(r.json()["manifests"], json!([]));
}

// ---------------------------------------------------------------------------------
// Truncated bodies (a client that dies mid-request)

#[test]
fn truncated_uploads_commit_nothing() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let data = bytes_of(10_000, 70);
    let d = sha256(&data);

    // Monolithic POST that declares more than it sends.
    let r = raw_truncated(
        &w,
        &RawReq::new("POST", format!("/v2/trunc/blobs/uploads/?digest={d}"))
            .body(data[..4000].to_vec())
            .framing(Framing::Length("10000".into())),
    );
    if let Some(r) = &r {
        assert!((400..500).contains(&r.status), "truncated POST answered {}", r.describe());
    }
    api.head(&format!("/v2/trunc/blobs/{d}")).expect_head_err(404);

    // Closing PUT that declares more than it sends.
    let loc = api.start_upload("trunc");
    api.patch(&loc, 0, &data[..5000]).expect_status(202);
    let r = raw_truncated(
        &w,
        &RawReq::new("PUT", with_query(&loc, &format!("digest={d}")))
            .body(data[5000..8000].to_vec())
            .framing(Framing::Length("5000".into())),
    );
    if let Some(r) = &r {
        assert!((400..500).contains(&r.status), "truncated PUT answered {}", r.describe());
    }
    api.head(&format!("/v2/trunc/blobs/{d}")).expect_head_err(404);

    // Manifest PUT that declares more than it sends.
    let img_cfg = b"{}";
    api.push_blob("trunc", img_cfg);
    let m = image_manifest(OCI_MANIFEST, &Desc::new(OCI_CONFIG, img_cfg), &[], json!({}));
    let r = raw_truncated(
        &w,
        &RawReq::new("PUT", "/v2/trunc/manifests/v1")
            .header("Content-Type", OCI_MANIFEST)
            .body(m[..m.len() / 2].to_vec())
            .framing(Framing::Length(m.len().to_string())),
    );
    if let Some(r) = &r {
        assert!((400..500).contains(&r.status), "truncated manifest PUT answered {}", r.describe());
    }
    api.head("/v2/trunc/manifests/v1").expect_head_err(404);
    api.head(&format!("/v2/trunc/manifests/{}", sha256(&m))).expect_head_err(404);
    assert_eq!(w.blob_files(), 1, "only the config blob is committed");
}

// ---------------------------------------------------------------------------------
// More shapes clients use

#[test]
fn manifest_put_with_a_chunked_body() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let cfg = b"{\"chunked\":true}";
    api.push_blob("chunked/man", cfg);
    let m = image_manifest(OCI_MANIFEST, &Desc::new(OCI_CONFIG, cfg), &[], json!({}));
    let r = raw(
        &w,
        &RawReq::new("PUT", "/v2/chunked/man/manifests/v1")
            .header("Content-Type", OCI_MANIFEST)
            .body(m.clone())
            .framing(Framing::Chunked(50)),
    );
    r.expect_status(201);
    assert_eq!(r.h("Docker-Content-Digest"), Some(sha256(&m).as_str()));
    check_manifest_get(&api, "chunked/man", "v1", &m, OCI_MANIFEST);
}

#[test]
fn generic_content_type_takes_the_body_media_type() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let cfg = b"{\"ct\":1}";
    api.push_blob("generic/ct", cfg);
    let m = image_manifest(DOCKER_MANIFEST, &Desc::new(DOCKER_CONFIG, cfg), &[], json!({}));
    api.push_manifest("generic/ct", "v1", "application/json", &m);
    check_manifest_get(&api, "generic/ct", "v1", &m, DOCKER_MANIFEST);
    // No Content-Type at all: the body's mediaType too.
    let idx = index_manifest(
        OCI_INDEX,
        &[Desc { media_type: DOCKER_MANIFEST.into(), digest: sha256(&m), size: m.len() }],
        json!({}),
    );
    let r = raw(&w, &RawReq::new("PUT", "/v2/generic/ct/manifests/v2").body(idx.clone()));
    r.expect_status(201);
    check_manifest_get(&api, "generic/ct", "v2", &idx, OCI_INDEX);
}

#[test]
fn final_chunk_in_put_without_content_range() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let data = bytes_of(3000, 80);
    let d = sha256(&data);
    let loc = api.start_upload("final/norange");
    api.patch(&loc, 0, &data[..1000]).expect_status(202);
    let r = api.send(
        api.req("PUT", &with_query(&loc, &format!("digest={d}")))
            .header("Content-Type", "application/octet-stream")
            .body(data[1000..].to_vec()),
    );
    r.expect_status(201);
    assert_eq!(api.get(&format!("/v2/final/norange/blobs/{d}")).body, data);
}

#[test]
fn large_blob_in_many_chunks_and_single_byte_ranges() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let data = bytes_of(8 * 1024 * 1024 + 3, 81);
    let d = api.push_blob_chunked("large/blob", &data, 1024 * 1024);
    let p = format!("/v2/large/blob/blobs/{d}");
    let h = api.head(&p);
    h.expect_status(200);
    assert_eq!(h.h("Content-Length"), Some(data.len().to_string().as_str()));
    let g = api.get(&p);
    assert!(g.body == data, "large blob differs");
    let len = data.len();
    for (range, a, b) in [
        ("bytes=0-0", 0, 0),
        ("bytes=-1", len - 1, len - 1),
        (&*format!("bytes={}-", len - 1), len - 1, len - 1),
    ] {
        let r = api.get_range(&p, range);
        r.expect_status(206);
        assert_eq!(r.body, &data[a..=b], "{range}");
        assert_eq!(r.h("Content-Range"), Some(format!("bytes {a}-{b}/{len}").as_str()), "{range}");
    }
    let r = api.get_range(&p, "bytes=4194304-5242879");
    r.expect_status(206);
    assert!(r.body == data[4_194_304..5_242_880], "middle range differs");
}

#[test]
fn upload_session_survives_a_restart() {
    let mut w = Wharfie::start();
    let tmp = w.keep_dir().expect("temp dir");
    let data = bytes_of(6000, 83);
    let d = sha256(&data);
    let loc = {
        let api = Api::new(&w);
        let loc = api.start_upload("re/start");
        api.patch(&loc, 0, &data[..2500]).expect_status(202);
        loc
    };
    assert_eq!(w.stop(), Some(0), "graceful shutdown");
    let w2 = Wharfie::start_in(&w.dir, &[]);
    let api = Api::new(&w2);
    let s = api.get(&loc);
    s.expect_status(204);
    assert_eq!(s.h("Range"), Some("0-2499"));
    api.patch(&loc, 2500, &data[2500..5000]).expect_status(202);
    api.finish(&loc, &d, Some((5000, &data[5000..]))).expect_status(201);
    assert_eq!(api.get(&format!("/v2/re/start/blobs/{d}")).body, data);
    assert_eq!(w2.staging_entries(), 0);
    drop(w2);
    drop(tmp);
}

#[test]
fn pushed_content_survives_a_restart() {
    let mut w = Wharfie::start();
    let tmp = w.keep_dir().expect("temp dir");
    let img = Api::new(&w).push_image("per/sist", Some("v1"), 84, 2);
    assert_eq!(w.stop(), Some(0), "graceful shutdown");
    let w2 = Wharfie::start_in(&w.dir, &[]);
    let api = Api::new(&w2);
    check_manifest_get(&api, "per/sist", "v1", &img.manifest, OCI_MANIFEST);
    for l in &img.layers {
        let g = api.get(&format!("/v2/per/sist/blobs/{}", l.digest));
        g.expect_status(200);
        assert_eq!(sha256(&g.body), l.digest);
    }
    assert_eq!(api.tags("per/sist"), vec!["v1"]);
    drop(w2);
    drop(tmp);
}

#[test]
fn mount_finds_no_blob_once_every_repository_deleted_it() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let data = bytes_of(400, 85);
    let d = api.push_blob("only/owner", &data);
    api.delete(&format!("/v2/only/owner/blobs/{d}")).expect_status(202);
    // With `from`: the source no longer has it.
    let r = api.send(api.req("POST", &format!("/v2/thief/blobs/uploads/?mount={d}&from=only/owner")));
    r.expect_status(202);
    api.delete(&api.location(&r)).expect_status(204);
    // Without `from`: no repository has it any more either.
    let r = api.send(api.req("POST", &format!("/v2/thief/blobs/uploads/?mount={d}")));
    assert_eq!(r.status, 202, "mounted a blob no repository holds: {}", r.describe());
    api.get(&format!("/v2/thief/blobs/{d}")).expect_err(404, "BLOB_UNKNOWN");
}

#[test]
fn blob_and_manifest_can_be_pushed_again_after_delete() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let img = api.push_image("again", Some("v1"), 86, 1);
    api.delete(&format!("/v2/again/manifests/{}", img.digest)).expect_status(202);
    for l in &img.layers {
        api.delete(&format!("/v2/again/blobs/{}", l.digest)).expect_status(202);
    }
    // The manifest cannot come back before its layer.
    api.put_manifest("again", "v1", OCI_MANIFEST, &img.manifest).expect_err(400, "MANIFEST_BLOB_UNKNOWN");
    let layer = bytes_of(1000, 86 * 100 + 1);
    assert_eq!(sha256(&layer), img.layers[0].digest);
    api.push_blob("again", &layer);
    api.push_manifest("again", "v1", OCI_MANIFEST, &img.manifest);
    check_manifest_get(&api, "again", "v1", &img.manifest, OCI_MANIFEST);
    assert_eq!(api.get(&format!("/v2/again/blobs/{}", img.layers[0].digest)).body, layer);
}

#[test]
fn concurrent_uploads_of_one_blob_all_succeed() {
    let w = Wharfie::start();
    let data = bytes_of(3 * 1024 * 1024 + 11, 87);
    let d = sha256(&data);
    std::thread::scope(|s| {
        for i in 0..8 {
            let (w, data, d) = (&w, &data, &d);
            s.spawn(move || {
                let api = Api::new(w);
                let name = format!("conc/r{}", i % 3);
                if i % 2 == 0 {
                    assert_eq!(&api.push_blob(&name, data), d);
                } else {
                    assert_eq!(&api.push_blob_chunked(&name, data, 700 * 1024), d);
                }
                // Right after the 201: the full size, from any client.
                let h = api.head(&format!("/v2/{name}/blobs/{d}"));
                h.expect_status(200);
                assert_eq!(h.h("Content-Length"), Some(data.len().to_string().as_str()));
            });
        }
    });
    assert_eq!(w.blob_files(), 1);
    assert_eq!(w.staging_entries(), 0);
    let api = Api::new(&w);
    for r in 0..3 {
        assert!(api.get(&format!("/v2/conc/r{r}/blobs/{d}")).body == data);
    }
}

#[test]
fn concurrent_puts_of_one_tag_leave_one_complete_winner() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let imgs: Vec<Image> = (0..6).map(|i| api.push_image("race/tag", None, 90 + i, 1)).collect();
    std::thread::scope(|s| {
        for img in &imgs {
            let w = &w;
            s.spawn(move || {
                Api::new(w).push_manifest("race/tag", "latest", OCI_MANIFEST, &img.manifest);
            });
        }
    });
    let g = api.get("/v2/race/tag/manifests/latest");
    g.expect_status(200);
    let winner =
        imgs.iter().find(|i| i.manifest == g.body).expect("the tag points at one of the pushed manifests");
    assert_eq!(g.h("Docker-Content-Digest"), Some(winner.digest.as_str()));
    assert_eq!(api.tags("race/tag"), vec!["latest"]);
}
