//! Support for tests/mirror.rs: a fake upstream registry that counts requests and
//! misbehaves on demand (`upstream`), and the real upstream and clients (`real`).
#![allow(dead_code)]

pub mod real;
pub mod upstream;

pub use crate::common::sha256;
