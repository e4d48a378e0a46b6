//! The update bundle: one file with a fixed header, a signed JSON manifest
//! and two payloads (kernel and rootfs partition images).
//!
//! ```text
//! [header: 88 bytes][manifest: JSON][zero padding][kernel][zero padding][rootfs]
//! ```
//!
//! docs/bundle.md describes the format byte by byte. Reading is sans-IO in
//! two steps, each fed bytes in whatever pieces the network delivers:
//!
//! 1. [`BundleReader`] takes the header and the manifest, checks the
//!    signature against the trusted keys *before* parsing the manifest, and
//!    yields a [`Manifest`]. The caller then checks it may install it
//!    ([`Manifest::check_installable`]).
//! 2. [`PayloadStream`] takes the rest of the file, says for each piece
//!    which payload and offset it belongs to (so the caller writes it to the
//!    inactive slot), and checks the SHA-256 of every chunk as it completes.
//!    [`PayloadVerifier`] does the same for one payload and serves to read a
//!    slot back after writing.
//!
//! [`BundleHead`] and [`build_bundle`] write bundles, for the host tool and
//! for tests.

mod manifest;
mod reader;
mod verify;
mod writer;

use std::fmt;

pub use manifest::{Manifest, Payload};
pub use reader::{inspect_unverified, BundleReader};
pub use verify::{PayloadStream, PayloadVerifier, Step};
pub use writer::{build_bundle, BundleHead, BundleSpec, PayloadDigest, PayloadHasher};

use crate::error::BundleError;
use crate::keys::{KeyId, SIGNATURE_LEN};

/// First 8 bytes of every bundle.
pub const MAGIC: [u8; 8] = *b"EDGEBNDL";

/// The format version this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Bytes of the fixed header in front of the manifest.
pub const HEADER_LEN: usize = 88;

/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_LEN: u32 = 1 << 20;

/// Payloads start at multiples of this many bytes in the file.
pub const PAYLOAD_ALIGN: u64 = 4096;

/// Chunk size the writer uses unless told otherwise.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;

/// Smallest chunk size accepted; chunk sizes are multiples of it.
pub const MIN_CHUNK_SIZE: u32 = 4096;

/// Largest chunk size accepted: bounds what a shell that holds a chunk
/// back until it is verified must buffer.
pub const MAX_CHUNK_SIZE: u32 = 64 << 20;

/// Largest payload accepted: 1 TiB, far above any slot, and small enough
/// that no offset arithmetic can overflow.
pub const MAX_PAYLOAD_SIZE: u64 = 1 << 40;

/// The two payloads of a bundle, in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadKind {
    /// Image of the slot's `kernel_a`/`kernel_b` partition.
    Kernel,
    /// Image of the slot's `rootfs_a`/`rootfs_b` partition.
    Rootfs,
}

impl PayloadKind {
    /// Both kinds in the order they appear in a bundle.
    pub const ALL: [PayloadKind; 2] = [PayloadKind::Kernel, PayloadKind::Rootfs];

    /// The name used in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            PayloadKind::Kernel => "kernel",
            PayloadKind::Rootfs => "rootfs",
        }
    }

    /// Position in the bundle and in [`PayloadKind::ALL`]: kernel 0, rootfs 1.
    pub fn index(self) -> usize {
        match self {
            PayloadKind::Kernel => 0,
            PayloadKind::Rootfs => 1,
        }
    }
}

impl fmt::Display for PayloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The fixed header. None of its fields is signed by itself, but the
/// manifest repeats the version and the key id and the reader checks they
/// agree, and the signature covers the exact manifest bytes, so the length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Format version.
    pub version: u32,
    /// Length of the manifest that follows the header.
    pub manifest_len: u32,
    /// Id of the key that signed the manifest.
    pub key_id: KeyId,
    /// Ed25519 signature over the manifest bytes.
    pub signature: [u8; SIGNATURE_LEN],
}

impl Header {
    /// Parses the first [`HEADER_LEN`] bytes of a bundle.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Header, BundleError> {
        if bytes[..8] != MAGIC {
            return Err(BundleError::BadMagic);
        }
        let version = u32::from_le_bytes(array(&bytes[8..12]));
        if version != FORMAT_VERSION {
            return Err(BundleError::UnsupportedVersion(version));
        }
        let manifest_len = u32::from_le_bytes(array(&bytes[12..16]));
        if manifest_len == 0 || manifest_len > MAX_MANIFEST_LEN {
            return Err(BundleError::ManifestLength {
                len: manifest_len,
                max: MAX_MANIFEST_LEN,
            });
        }
        Ok(Header {
            version,
            manifest_len,
            key_id: KeyId(array(&bytes[16..24])),
            signature: array(&bytes[24..88]),
        })
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0; HEADER_LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&self.version.to_le_bytes());
        out[12..16].copy_from_slice(&self.manifest_len.to_le_bytes());
        out[16..24].copy_from_slice(&self.key_id.0);
        out[24..88].copy_from_slice(&self.signature);
        out
    }
}

/// Copies a slice whose length the caller fixed by its range.
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(bytes);
    out
}

/// Rounds `offset` up to [`PAYLOAD_ALIGN`]; `None` on overflow.
fn align_up(offset: u64) -> Option<u64> {
    offset
        .checked_add(PAYLOAD_ALIGN - 1)
        .map(|o| o / PAYLOAD_ALIGN * PAYLOAD_ALIGN)
}

/// Where the payloads must sit given the manifest length and their sizes:
/// each starts at the first aligned offset after what precedes it.
fn payload_offsets(manifest_len: u32, sizes: [u64; 2]) -> Option<[u64; 2]> {
    let manifest_end = HEADER_LEN as u64 + u64::from(manifest_len);
    let kernel = align_up(manifest_end)?;
    let rootfs = align_up(kernel.checked_add(sizes[0])?)?;
    rootfs.checked_add(sizes[1])?;
    Some([kernel, rootfs])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            version: FORMAT_VERSION,
            manifest_len: 300,
            key_id: KeyId([1, 2, 3, 4, 5, 6, 7, 8]),
            signature: [9; SIGNATURE_LEN],
        }
    }

    #[test]
    fn header_round_trips() {
        let bytes = header().encode();
        assert_eq!(&bytes[..8], b"EDGEBNDL");
        assert_eq!(&bytes[8..16], &[1, 0, 0, 0, 44, 1, 0, 0]);
        assert_eq!(Header::parse(&bytes), Ok(header()));
    }

    #[test]
    fn hostile_headers_are_rejected() {
        let mut bytes = header().encode();
        bytes[0] = b'X';
        assert_eq!(Header::parse(&bytes), Err(BundleError::BadMagic));

        let mut h = header();
        h.version = 2;
        assert_eq!(
            Header::parse(&h.encode()),
            Err(BundleError::UnsupportedVersion(2))
        );

        for len in [0, MAX_MANIFEST_LEN + 1, u32::MAX] {
            let mut h = header();
            h.manifest_len = len;
            assert!(matches!(
                Header::parse(&h.encode()),
                Err(BundleError::ManifestLength { .. })
            ));
        }
    }

    #[test]
    fn payloads_are_aligned_after_the_manifest() {
        assert_eq!(payload_offsets(100, [1, 1]), Some([4096, 8192]));
        assert_eq!(payload_offsets(4008, [4096, 1]), Some([4096, 8192]));
        assert_eq!(payload_offsets(4009, [4097, 1]), Some([8192, 16384]));
        assert_eq!(payload_offsets(1, [u64::MAX - 4096, 1]), None);
    }
}
