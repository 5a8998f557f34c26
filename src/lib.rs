//! # wharfie
//!
//! An OCI Distribution v1.1 registry and pull-through cache in one process: metadata in
//! redb (its write transaction is the single commit point), blobs as content-addressed
//! files served through mmap.
//!
//! # Layout
//!
//! | module | owns |
//! | --- | --- |
//! | [`cli`] | the clap commands (`serve`, `config check`) |
//! | [`config`] | figment layering → `Settings` |
//! | [`app`] | wiring: open stores, recover, background tasks, serve |
//! | [`web`] | the operator's web page at `/` (server-rendered HTML, the last hour's chart) |
//! | [`http`] | route parser, handlers, the error → status/OCI code table, accept loop |
//! | [`service`] | registry semantics: uploads, manifests, tags, catalog, referrers |
//! | [`meta`] | redb tables, typed reads, the writer thread with group commit |
//! | [`blob`] | staging, hashing while writing, the commit protocol's file half, mmap |
//! | [`airgap`] | import (docker save, OCI layout/archive) and export (OCI archive), as registry clients |
//! | [`upstream`] | the client for upstream registries (auth, retries, blob streams) |
//! | [`flight`] | in-process singleflight with a detached leader |
//! | [`auth`] | htpasswd users and per-repository access rules |
//! | [`events`] | push notifications: the durable queue's delivery to `[[notify]]` webhooks |
//! | [`notify`] | systemd readiness (`sd_notify`) |
//! | [`digest`], [`names`], [`manifest`] | the shared vocabulary (manifest: media types, the one walker over references) |
//!
//! Data flows one way: http → service → (meta, blob). The stores never import each
//! other or anything above them.

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
