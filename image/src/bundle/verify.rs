//! Sans-IO checks of payload bytes against the manifest's digests.

use std::{fmt, mem};

use aws_lc_rs::digest::{Context, SHA256};

use super::{Manifest, PayloadKind};
use crate::error::BundleError;

/// Checks one payload's bytes, fed in any pieces, chunk by chunk.
///
/// Each time a chunk completes its SHA-256 is compared with the manifest's;
/// when the last one completes, the whole payload's too. Used inside
/// [`PayloadStream`] while a bundle streams in, and alone to read a slot
/// back after it was written. An error is final.
pub struct PayloadVerifier {
    kind: PayloadKind,
    size: u64,
    chunk_size: u64,
    sha256: [u8; 32],
    chunks: Vec<[u8; 32]>,
    whole: Context,
    chunk: Context,
    fed: u64,
    verified: u64,
    failed: Option<BundleError>,
}

impl PayloadVerifier {
    /// A verifier for the `kind` payload of `manifest`.
    pub fn new(manifest: &Manifest, kind: PayloadKind) -> PayloadVerifier {
        let payload = manifest.payload(kind);
        PayloadVerifier {
            kind,
            size: payload.size(),
            chunk_size: u64::from(manifest.chunk_size()),
            sha256: *payload.sha256(),
            chunks: payload.chunks().to_vec(),
            whole: Context::new(&SHA256),
            chunk: Context::new(&SHA256),
            fed: 0,
            verified: 0,
            failed: None,
        }
    }

    /// Feeds the next bytes of the payload; returns how many bytes from its
    /// start are verified: a multiple of the chunk size, or the whole size.
    ///
    /// Bytes past the payload's size are refused with
    /// [`BundleError::SizeMismatch`] before any of them is hashed.
    pub fn handle_bytes(&mut self, input: &[u8]) -> Result<u64, BundleError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let result = self.feed(input);
        if let Err(err) = &result {
            self.failed = Some(err.clone());
        }
        result
    }

    /// Bytes fed so far.
    pub fn fed(&self) -> u64 {
        self.fed
    }

    /// Bytes from the start verified so far.
    pub fn verified(&self) -> u64 {
        self.verified
    }

    /// Whether every byte arrived and matched.
    pub fn is_complete(&self) -> bool {
        self.failed.is_none() && self.verified == self.size
    }

    /// At end of input: `Ok` only if the whole payload arrived and matched.
    pub fn finish(&self) -> Result<(), BundleError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if self.verified != self.size {
            return Err(BundleError::SizeMismatch {
                payload: self.kind,
                expected: self.size,
                fed: self.fed,
            });
        }
        Ok(())
    }

    fn feed(&mut self, mut input: &[u8]) -> Result<u64, BundleError> {
        if input.len() as u64 > self.size - self.fed {
            return Err(BundleError::SizeMismatch {
                payload: self.kind,
                expected: self.size,
                fed: self.fed.saturating_add(input.len() as u64),
            });
        }
        while !input.is_empty() {
            let index = self.fed / self.chunk_size;
            let chunk_end = ((index + 1) * self.chunk_size).min(self.size);
            let take = input
                .len()
                .min(usize::try_from(chunk_end - self.fed).unwrap_or(usize::MAX));
            let (piece, rest) = input.split_at(take);
            self.chunk.update(piece);
            self.whole.update(piece);
            self.fed += take as u64;
            input = rest;
            if self.fed == chunk_end {
                self.check_chunk(index)?;
            }
        }
        Ok(self.verified)
    }

    fn check_chunk(&mut self, index: u64) -> Result<(), BundleError> {
        let digest = mem::replace(&mut self.chunk, Context::new(&SHA256)).finish();
        let expected = usize::try_from(index).ok().and_then(|i| self.chunks.get(i));
        if expected.map(|e| &e[..]) != Some(digest.as_ref()) {
            return Err(BundleError::ChunkMismatch {
                payload: self.kind,
                index,
            });
        }
        if self.fed == self.size {
            let whole = mem::replace(&mut self.whole, Context::new(&SHA256)).finish();
            if whole.as_ref() != self.sha256 {
                return Err(BundleError::PayloadMismatch { payload: self.kind });
            }
        }
        self.verified = self.fed;
        Ok(())
    }
}

impl fmt::Debug for PayloadVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PayloadVerifier")
            .field("kind", &self.kind)
            .field("size", &self.size)
            .field("fed", &self.fed)
            .field("verified", &self.verified)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// What [`PayloadStream::handle_bytes`] did with the front of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The first `len` bytes were padding, checked to be zero; drop them.
    Padding {
        /// Bytes consumed.
        len: usize,
    },
    /// The first `len` bytes belong to payload `kind` at `offset` from its
    /// start; write them there. `verified` bytes of that payload, from its
    /// start, have matched their digests so far.
    Payload {
        /// The payload.
        kind: PayloadKind,
        /// Offset of the first byte within the payload.
        offset: u64,
        /// Bytes consumed.
        len: usize,
        /// Bytes of the payload verified, from its start.
        verified: u64,
    },
}

impl Step {
    /// Bytes of the input this step consumed.
    pub fn len(&self) -> usize {
        match *self {
            Step::Padding { len } | Step::Payload { len, .. } => len,
        }
    }

    /// Whether the step consumed nothing (only for empty input).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Walks the bundle bytes after the manifest: padding, kernel, padding,
/// rootfs, end of file.
///
/// Each call to [`handle_bytes`](Self::handle_bytes) consumes the front of
/// its input up to the next boundary (end of padding, of a payload) and
/// says where those bytes go; call again with the rest. Chunk digests are
/// checked as chunks complete, so a corrupt or hostile payload fails at the
/// first bad chunk. An error is final.
#[derive(Debug)]
pub struct PayloadStream {
    position: u64,
    offsets: [u64; 2],
    sizes: [u64; 2],
    verifiers: [PayloadVerifier; 2],
    failed: Option<BundleError>,
}

impl PayloadStream {
    /// A stream that starts right after the manifest.
    pub fn new(manifest: &Manifest) -> PayloadStream {
        let [kernel, rootfs] = manifest.payloads();
        PayloadStream {
            position: manifest.manifest_end(),
            offsets: [kernel.offset(), rootfs.offset()],
            sizes: [kernel.size(), rootfs.size()],
            verifiers: PayloadKind::ALL.map(|kind| PayloadVerifier::new(manifest, kind)),
            failed: None,
        }
    }

    /// Consumes the front of `input` up to the next boundary.
    pub fn handle_bytes(&mut self, input: &[u8]) -> Result<Step, BundleError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let result = self.step(input);
        if let Err(err) = &result {
            self.failed = Some(err.clone());
        }
        result
    }

    /// File offset of the next byte expected.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Which payload the file offset `at` falls in: its kind, the offset in
    /// the payload, and the payload bytes from there to its end. `None` in
    /// the padding, and before or after the payloads.
    pub fn payload_at(&self, at: u64) -> Option<(PayloadKind, u64, u64)> {
        PayloadKind::ALL.into_iter().find_map(|kind| {
            let start = self.offsets[kind.index()];
            let end = start + self.sizes[kind.index()];
            (start..end)
                .contains(&at)
                .then(|| (kind, at - start, end - at))
        })
    }

    /// Bytes of the file still expected.
    pub fn remaining(&self) -> u64 {
        self.end() - self.position
    }

    /// Bytes of payload `kind` verified, from its start.
    pub fn verified(&self, kind: PayloadKind) -> u64 {
        self.verifiers[kind.index()].verified()
    }

    /// Whether the whole file arrived and every payload matched.
    pub fn is_complete(&self) -> bool {
        self.failed.is_none() && self.verifiers.iter().all(PayloadVerifier::is_complete)
    }

    /// At end of input: `Ok` only if the whole file arrived and matched.
    pub fn finish(&self) -> Result<(), BundleError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if self.remaining() > 0 {
            return Err(BundleError::Truncated {
                missing: self.remaining(),
            });
        }
        self.verifiers.iter().try_for_each(PayloadVerifier::finish)
    }

    fn end(&self) -> u64 {
        self.offsets[1] + self.sizes[1]
    }

    fn step(&mut self, input: &[u8]) -> Result<Step, BundleError> {
        if input.is_empty() {
            return Ok(Step::Padding { len: 0 });
        }
        for (i, kind) in PayloadKind::ALL.into_iter().enumerate() {
            if self.position < self.offsets[i] {
                return self.padding(input, self.offsets[i]);
            }
            let payload_end = self.offsets[i] + self.sizes[i];
            if self.position < payload_end {
                return self.payload(input, kind, payload_end);
            }
        }
        Err(BundleError::TrailingBytes)
    }

    fn padding(&mut self, input: &[u8], until: u64) -> Result<Step, BundleError> {
        let len = clamp(input.len(), until - self.position);
        if let Some(at) = input[..len].iter().position(|&b| b != 0) {
            return Err(BundleError::BadPadding {
                offset: self.position + at as u64,
            });
        }
        self.position += len as u64;
        Ok(Step::Padding { len })
    }

    fn payload(&mut self, input: &[u8], kind: PayloadKind, end: u64) -> Result<Step, BundleError> {
        let len = clamp(input.len(), end - self.position);
        let offset = self.position - self.offsets[kind.index()];
        let verified = self.verifiers[kind.index()].handle_bytes(&input[..len])?;
        self.position += len as u64;
        Ok(Step::Payload {
            kind,
            offset,
            len,
            verified,
        })
    }
}

/// `len` cut to `limit`.
fn clamp(len: usize, limit: u64) -> usize {
    len.min(usize::try_from(limit).unwrap_or(usize::MAX))
}
