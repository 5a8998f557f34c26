//! What wharfie's integration tests and benches share, in one place:
//!
//! - [`common`]: the `wharfie serve` child process ([`common::Wharfie`]), the in-process
//!   server ([`common::InProc`]), digests, error bodies, deterministic bytes;
//! - [`oci`]: the one HTTP client for the distribution API and the image builders
//!   (blobs, configs, manifests, indexes) pushed through it;
//! - [`clients`]: real clients (skopeo, podman, ctr, dockerd, …), hermetically configured,
//!   and OCI image layouts on disk;
//! - [`mirror`]: upstreams for the pull-through cache — a fake one that counts and
//!   misbehaves on demand, and Debian's `docker-registry`;
//! - [`ops`]: operator-facing helpers (config files, CLI runs, redb inspection);
//! - [`cluster`]: N nodes behind HAProxy in network namespaces;
//! - [`bench`]: child processes and curl for the side-by-side benchmarks.

pub mod bench;
pub mod clients;
pub mod cluster;
pub mod common;
pub mod mirror;
pub mod oci;
pub mod ops;
