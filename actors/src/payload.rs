//! Claim check: a payload kept in the object store instead of travelling in the message,
//! and the port through which workers read and release it.
//!
//! Ingress stores a body above the claim-check threshold as one object and puts a
//! [`PayloadRef`] in the envelope instead of the bytes. The reference travels in the
//! stored message, on the tenant's NATS and in a dead letter; the object lives as long as
//! one of them can still deliver it.

use bytes::Bytes;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// Where a payload is, and what it is: enough to fetch it and check it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadRef {
    /// The object's key in the store (`payloads/{tenant}/{integration}/{message}/{upload}`).
    pub key: String,
    /// Its length in bytes.
    pub size: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

/// Why a payload could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Larger than the reader may hold in memory.
    #[error(
        "the payload is {size} bytes, above the {max}-byte limit of what filters and converters read \
         (claim_check.pipeline_read_bytes_max)"
    )]
    TooLarge {
        /// The payload's size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The object is not in the store.
    #[error("payload object {0} is missing from the object store")]
    Missing(String),
    /// The bytes read are not the bytes stored.
    #[error("payload object {0} does not match its recorded size and SHA-256")]
    Corrupt(String),
    /// The store did not answer; worth trying again.
    #[error("object store unavailable: {0}")]
    Unavailable(String),
}

impl PayloadError {
    /// Whether reading again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, PayloadError::Unavailable(_))
    }
}

/// The object store as workers see it.
pub trait Payloads: Send + Sync + std::fmt::Debug {
    /// The whole payload, checked against its size and hash, if it is at most `max` bytes.
    fn read<'a>(&'a self, payload: &'a PayloadRef, max: u64) -> BoxFuture<'a, Result<Bytes, PayloadError>>;
    /// Removes the object (a missing one is not an error).
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), PayloadError>>;
}

/// SHA-256 as lowercase hex.
pub fn sha256_hex(digest: &[u8]) -> String {
    use std::fmt::Write;
    digest.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_of_a_known_digest() {
        let d = ring::digest::digest(&ring::digest::SHA256, b"abc");
        assert_eq!(
            sha256_hex(d.as_ref()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(!PayloadError::Missing("k".into()).is_retryable());
        assert!(PayloadError::Unavailable("down".into()).is_retryable());
    }
}
