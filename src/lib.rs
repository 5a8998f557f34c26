//! # wharfie
//!
//! An OCI Distribution v1.1 registry and pull-through cache in one process: metadata in
//! redb (its write transaction is the single commit point), blobs as content-addressed
//! files served through mmap.
//!
//! # Layout
//!
//! One crate, one binary (`main.rs` calls [`cli::main`]). Each module's header says what
//! it owns and what it may import; the table is the summary. Only the modules `main`, the
//! tests (`tests/`, the `wharfie-testkit` crate in `tests/support`), the benches and the
//! fuzz targets name are `pub`: `app`, `blob`, `cli`, `config`, `digest`, `http`,
//! `meta`, `names`, `service`. The rest are `pub(crate)`, so the compiler reports what
//! nothing uses.
//!
//! | module | owns | may import |
//! | --- | --- | --- |
//! | `cli` | the clap commands: `serve`, `gc`, `verify`, `import`, `export`, `inventory`, `prefetch`, `client-config`, `config check` | app, airgap, auth, config, meta, service, upstream, manifest, digest, names |
//! | `app` | the one bootstrap (`Server`, `run`): open the stores, recover, background tasks (upload expiry, scheduled GC, event delivery, the web page's history), TLS, SIGHUP reload, `sd_notify`, serve | everything (it is the wiring) |
//! | `config` | figment layering (defaults < TOML < `WHARFIE_*` < flags) → `Settings`, every value resolved once (CA files and `[tls]` read and checked, `[auth]` rules compiled), with the typed errors that name a bad key | names |
//! | `http` | the wire: route parser, authenticate → dispatch → finish, handlers, body draining, the one error → status/OCI code table, accept loop and graceful drain | service, auth, config, events (request context), web, manifest, digest, names |
//! | `web` | the operator's page at `/` and `/ui/…` (server-rendered HTML, the last hour's chart) | service, meta records, upstream (its errors), names |
//! | `service` | registry semantics: `Registry`, a facade over uploads, manifests/tags, blobs, the mirror (routing, flights, fills) and the cache (access times, eviction); entitlement, GC, verify, metrics | meta, blob, upstream, flight, manifest, events (records), digest, names |
//! | `meta` | every redb table, typed reads, the writer thread with group commit, leases, GC's marks, the event queue | digest (and redb) |
//! | `blob` | blob files: staging, hashing while writing, the file half of the commit, mmap reads, reading a growing fill, the `Fs` fault seam | digest |
//! | `upstream` | the client for upstream registries (auth challenges, retries, health, blob streams); the only module that names reqwest's registry client | manifest, digest |
//! | `airgap` | import (docker save, OCI layout/archive) and export (OCI archive bundles), as clients of a running server | upstream (its client), manifest, digest, names |
//! | `events` | push notifications: delivering the durable queue to `[[notify]]` webhooks | meta, config, service (metrics), digest |
//! | `auth` | htpasswd users, per-repository access rules, Bearer tokens | config (the `[auth]` section), names |
//! | `flight` | the one in-process singleflight, detached leader, panic-safe | (tokio only) |
//! | `notify` | systemd readiness (`sd_notify`) | (std only) |
//! | `digest`, `names`, `manifest` | the shared vocabulary: digests, repository names and references, media types and the one walker over a manifest's references | digest (names, manifest) |
//!
//! Data flows one way: http → service → (meta | blob | upstream | flight). The stores
//! (`meta`, `blob`) import only `digest`, never each other or anything above them.

// Pedantic is for the shipped code; the unit tests (cfg(test)) read as scenarios.
#![cfg_attr(test, allow(clippy::pedantic))]

pub(crate) mod airgap;
pub mod app;
pub(crate) mod auth;
pub mod blob;
pub mod cli;
pub mod config;
pub mod digest;
pub(crate) mod events;
pub(crate) mod flight;
pub mod http;
pub(crate) mod manifest;
pub mod meta;
pub mod names;
pub(crate) mod notify;
pub mod service;
pub(crate) mod upstream;
pub(crate) mod web;
