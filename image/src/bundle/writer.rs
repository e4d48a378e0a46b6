//! Writing bundles: for the host tool and for tests, never on the box.

use std::{fmt, mem};

use aws_lc_rs::digest::{Context, SHA256};

use super::manifest::{RawManifest, RawPayload, FORMAT_NAME};
use super::{
    payload_offsets, Header, Manifest, PayloadKind, DEFAULT_CHUNK_SIZE, FORMAT_VERSION,
    MAX_MANIFEST_LEN,
};
use crate::error::Error;
use crate::hex;
use crate::keys::SigningKey;

/// What the manifest says besides the payloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleSpec {
    /// Target compatibility string, e.g. `edge-qemu-aarch64`.
    pub compatible: String,
    /// Software version, a semantic version.
    pub version: String,
    /// Security version for anti-rollback.
    pub security_version: u64,
    /// Chunk size, a multiple of 4 KiB.
    pub chunk_size: u32,
}

impl BundleSpec {
    /// A spec with the default chunk size (1 MiB).
    pub fn new(compatible: &str, version: &str, security_version: u64) -> BundleSpec {
        BundleSpec {
            compatible: compatible.to_owned(),
            version: version.to_owned(),
            security_version,
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

/// Hashes a payload fed in any pieces: per-chunk and whole SHA-256.
pub struct PayloadHasher {
    chunk_size: u64,
    whole: Context,
    chunk: Context,
    in_chunk: u64,
    size: u64,
    chunks: Vec<[u8; 32]>,
}

/// A hashed payload: what the manifest lists about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadDigest {
    size: u64,
    sha256: [u8; 32],
    chunks: Vec<[u8; 32]>,
}

impl fmt::Debug for PayloadHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PayloadHasher")
            .field("chunk_size", &self.chunk_size)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl PayloadHasher {
    /// A hasher for chunks of `chunk_size` bytes.
    pub fn new(chunk_size: u32) -> PayloadHasher {
        PayloadHasher {
            // A zero chunk size is refused when the manifest is checked;
            // 1 only keeps the arithmetic here defined until then.
            chunk_size: u64::from(chunk_size.max(1)),
            whole: Context::new(&SHA256),
            chunk: Context::new(&SHA256),
            in_chunk: 0,
            size: 0,
            chunks: Vec::new(),
        }
    }

    /// Feeds the next bytes of the payload.
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = self.chunk_size - self.in_chunk;
            let take = bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX));
            let (piece, rest) = bytes.split_at(take);
            self.chunk.update(piece);
            self.whole.update(piece);
            self.in_chunk += take as u64;
            self.size += take as u64;
            bytes = rest;
            if self.in_chunk == self.chunk_size {
                self.close_chunk();
            }
        }
    }

    /// The digests of everything fed.
    pub fn finish(mut self) -> PayloadDigest {
        if self.in_chunk > 0 {
            self.close_chunk();
        }
        PayloadDigest {
            size: self.size,
            sha256: to_array(self.whole.finish().as_ref()),
            chunks: self.chunks,
        }
    }

    fn close_chunk(&mut self) {
        let chunk = mem::replace(&mut self.chunk, Context::new(&SHA256));
        self.chunks.push(to_array(chunk.finish().as_ref()));
        self.in_chunk = 0;
    }
}

impl PayloadDigest {
    /// Size of the payload.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// The signed front of a bundle: header and manifest, and the layout the
/// payloads must follow.
///
/// Write [`bytes`](Self::bytes), then for each payload in [`PayloadKind::ALL`]
/// order [`padding_before`](Self::padding_before) zero bytes and the payload.
#[derive(Debug, Clone)]
pub struct BundleHead {
    bytes: Vec<u8>,
    manifest: Manifest,
}

impl BundleHead {
    /// Builds and signs the manifest for two hashed payloads.
    ///
    /// The manifest goes through the same checks as on the box, so a spec
    /// the box would refuse (bad version string, chunk size, too many
    /// chunks for the manifest limit) fails here.
    pub fn sign(
        spec: &BundleSpec,
        kernel: &PayloadDigest,
        rootfs: &PayloadDigest,
        key: &SigningKey,
    ) -> Result<BundleHead, Error> {
        let json = manifest_json(spec, [kernel, rootfs], key)?;
        let manifest_len = u32::try_from(json.len())
            .ok()
            .filter(|len| *len <= MAX_MANIFEST_LEN)
            .ok_or_else(|| {
                Error::Build(format!(
                    "manifest of {} bytes exceeds {MAX_MANIFEST_LEN}: use a larger chunk size",
                    json.len()
                ))
            })?;
        let header = Header {
            version: FORMAT_VERSION,
            manifest_len,
            key_id: key.public_key().id(),
            signature: key.sign(&json),
        };
        let manifest =
            Manifest::from_bytes(&json, &header).map_err(|e| Error::Build(e.to_string()))?;
        let mut bytes = header.encode().to_vec();
        bytes.extend_from_slice(&json);
        Ok(BundleHead { bytes, manifest })
    }

    /// Header and manifest: the first bytes of the file.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The manifest as the box will read it.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Zero bytes to write between what precedes payload `kind` and it.
    pub fn padding_before(&self, kind: PayloadKind) -> u64 {
        let before = match kind {
            PayloadKind::Kernel => self.manifest.manifest_end(),
            PayloadKind::Rootfs => {
                let kernel = self.manifest.payload(PayloadKind::Kernel);
                kernel.offset() + kernel.size()
            }
        };
        self.manifest.payload(kind).offset() - before
    }
}

/// Builds a whole bundle in memory.
pub fn build_bundle(
    spec: &BundleSpec,
    key: &SigningKey,
    kernel: &[u8],
    rootfs: &[u8],
) -> Result<Vec<u8>, Error> {
    let digest = |bytes: &[u8]| {
        let mut hasher = PayloadHasher::new(spec.chunk_size);
        hasher.update(bytes);
        hasher.finish()
    };
    let head = BundleHead::sign(spec, &digest(kernel), &digest(rootfs), key)?;
    let mut out = head.bytes().to_vec();
    for (kind, payload) in PayloadKind::ALL.into_iter().zip([kernel, rootfs]) {
        let padding = usize::try_from(head.padding_before(kind))
            .map_err(|_| Error::Build("padding exceeds memory".to_owned()))?;
        out.resize(out.len() + padding, 0);
        out.extend_from_slice(payload);
    }
    Ok(out)
}

/// Serialises the manifest with offsets that match its own length.
///
/// Offsets depend on the manifest length, which depends on how many digits
/// the offsets have. The needed start only grows with the start tried, so
/// trying the needed start again settles in a step or two.
fn manifest_json(
    spec: &BundleSpec,
    payloads: [&PayloadDigest; 2],
    key: &SigningKey,
) -> Result<Vec<u8>, Error> {
    let sizes = payloads.map(PayloadDigest::size);
    let mut manifest_len = 0;
    for _ in 0..8 {
        let offsets = payload_offsets(manifest_len, sizes)
            .ok_or_else(|| Error::Build("payload sizes overflow the file".to_owned()))?;
        let json = serialize(spec, payloads, offsets, key)?;
        let needed = payload_offsets(u32::try_from(json.len()).unwrap_or(u32::MAX), sizes);
        if needed == Some(offsets) {
            return Ok(json);
        }
        manifest_len = u32::try_from(json.len()).unwrap_or(u32::MAX);
    }
    Err(Error::Build("payload offsets did not settle".to_owned()))
}

fn serialize(
    spec: &BundleSpec,
    payloads: [&PayloadDigest; 2],
    offsets: [u64; 2],
    key: &SigningKey,
) -> Result<Vec<u8>, Error> {
    let raw = RawManifest {
        format: FORMAT_NAME.to_owned(),
        format_version: FORMAT_VERSION,
        compatible: spec.compatible.clone(),
        version: spec.version.clone(),
        security_version: spec.security_version,
        key_id: key.public_key().id().to_string(),
        chunk_size: spec.chunk_size,
        payloads: PayloadKind::ALL
            .into_iter()
            .zip(payloads.into_iter().zip(offsets))
            .map(|(kind, (digest, offset))| RawPayload {
                name: kind.name().to_owned(),
                offset,
                size: digest.size,
                sha256: hex::encode(&digest.sha256),
                chunks: digest.chunks.iter().map(|c| hex::encode(c)).collect(),
            })
            .collect(),
    };
    serde_json::to_vec(&raw).map_err(|e| Error::Build(e.to_string()))
}

fn to_array(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(bytes);
    out
}
