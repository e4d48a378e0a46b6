//! Sans-IO reader of the header and the signed manifest.

use std::{fmt, mem};

use super::{Header, Manifest, HEADER_LEN};
use crate::error::BundleError;
use crate::keys::PublicKey;

/// Reads a bundle's header and manifest from bytes fed in any pieces.
///
/// Feed it with [`handle_bytes`](Self::handle_bytes) until
/// [`manifest`](Self::manifest) returns one; it consumes no byte past the
/// manifest, so the rest of the piece goes to a
/// [`PayloadStream`](super::PayloadStream). Order of the checks, each
/// before the bytes the next one needs are buffered:
///
/// 1. magic, format version and manifest length (at most 1 MiB);
/// 2. the key id names a trusted key, else [`BundleError::UnknownKey`];
/// 3. the Ed25519 signature over the exact manifest bytes;
/// 4. only then the JSON is parsed and the manifest's rules are checked.
///
/// An error is final: every later call returns it again.
pub struct BundleReader {
    trusted: Vec<PublicKey>,
    buf: Vec<u8>,
    state: State,
}

#[derive(Debug)]
enum State {
    Header,
    Manifest { header: Header, key: PublicKey },
    Done(Manifest),
    Failed(BundleError),
}

/// Shows the stage and the bytes buffered, not the bytes themselves.
impl fmt::Debug for BundleReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BundleReader")
            .field("trusted", &self.trusted)
            .field("buffered", &self.buf.len())
            .field("state", &self.state)
            .finish()
    }
}

impl BundleReader {
    /// A reader that accepts manifests signed by any of `trusted`.
    pub fn new(trusted: &[PublicKey]) -> BundleReader {
        BundleReader {
            trusted: trusted.to_vec(),
            buf: Vec::with_capacity(HEADER_LEN),
            state: State::Header,
        }
    }

    /// Feeds the next bytes of the bundle; returns how many it consumed.
    ///
    /// Consumes everything until the manifest is complete, then nothing.
    pub fn handle_bytes(&mut self, input: &[u8]) -> Result<usize, BundleError> {
        let mut consumed = 0;
        loop {
            let want = self.wanted();
            if let State::Failed(err) = &self.state {
                return Err(err.clone());
            }
            if want == 0 || consumed == input.len() {
                return Ok(consumed);
            }
            let take = want.min(input.len() - consumed);
            self.buf
                .extend_from_slice(&input[consumed..consumed + take]);
            consumed += take;
            if self.wanted() == 0 {
                self.advance();
            }
        }
    }

    /// Bytes still needed before the next check can run; 0 once the
    /// manifest is verified or the bundle rejected.
    pub fn wanted(&self) -> usize {
        match &self.state {
            State::Header => HEADER_LEN - self.buf.len(),
            State::Manifest { header, .. } => header.manifest_len as usize - self.buf.len(),
            State::Done(_) | State::Failed(_) => 0,
        }
    }

    /// The verified manifest, once read.
    pub fn manifest(&self) -> Option<&Manifest> {
        match &self.state {
            State::Done(manifest) => Some(manifest),
            _ => None,
        }
    }

    /// The verified manifest; at end of input, an unfinished reader reports
    /// [`BundleError::Truncated`].
    pub fn into_manifest(self) -> Result<Manifest, BundleError> {
        let missing = self.wanted() as u64;
        match self.state {
            State::Done(manifest) => Ok(manifest),
            State::Failed(err) => Err(err),
            State::Header | State::Manifest { .. } => Err(BundleError::Truncated { missing }),
        }
    }

    /// Runs the check the buffered bytes complete.
    fn advance(&mut self) {
        let buf = mem::take(&mut self.buf);
        let state = mem::replace(&mut self.state, State::Header);
        self.state = match self.step(state, &buf) {
            Ok(state) => state,
            Err(err) => State::Failed(err),
        };
    }

    fn step(&mut self, state: State, buf: &[u8]) -> Result<State, BundleError> {
        match state {
            State::Header => {
                let bytes =
                    <&[u8; HEADER_LEN]>::try_from(buf).map_err(|_| BundleError::Truncated {
                        missing: HEADER_LEN.saturating_sub(buf.len()) as u64,
                    })?;
                let header = Header::parse(bytes)?;
                let key = self
                    .trusted
                    .iter()
                    .find(|k| k.id() == header.key_id)
                    .cloned()
                    .ok_or(BundleError::UnknownKey(header.key_id))?;
                self.buf = Vec::with_capacity(header.manifest_len as usize);
                Ok(State::Manifest { header, key })
            }
            State::Manifest { header, key } => {
                if !key.verify(buf, &header.signature) {
                    return Err(BundleError::BadSignature);
                }
                Ok(State::Done(Manifest::from_bytes(buf, &header)?))
            }
            done @ (State::Done(_) | State::Failed(_)) => Ok(done),
        }
    }
}

/// Parses the header and manifest at the start of `head` WITHOUT checking
/// the signature or the key: for `edge-bundle inspect`, which says so. The
/// updater never calls this.
pub fn inspect_unverified(head: &[u8]) -> Result<(Header, Manifest), BundleError> {
    let truncated = |need: usize| BundleError::Truncated {
        missing: need.saturating_sub(head.len()) as u64,
    };
    let header_bytes = head
        .first_chunk::<HEADER_LEN>()
        .ok_or_else(|| truncated(HEADER_LEN))?;
    let header = Header::parse(header_bytes)?;
    let end = HEADER_LEN + header.manifest_len as usize;
    let manifest_bytes = head.get(HEADER_LEN..end).ok_or_else(|| truncated(end))?;
    let manifest = Manifest::from_bytes(manifest_bytes, &header)?;
    Ok((header, manifest))
}
