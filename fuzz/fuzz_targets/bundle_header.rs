//! Feeds arbitrary bytes to the bundle reader with one trusted key, in
//! pieces whose size the second input byte chooses, and checks the outcome
//! does not depend on the pieces.
//!
//! The first byte picks the mode. Even: the bytes are the bundle as they
//! come (header parsing, key lookup, signature check). Odd: the target
//! signs the fuzzer's manifest with the trusted key and puts a valid header
//! in front, so the JSON parser, the manifest rules and the payload stream
//! are reached too. docs/bundle.md §Fuzzing shows how to make seeds for
//! that mode from a bundle signed with the key below.

#![no_main]

use std::sync::LazyLock;

use image::bundle::{BundleReader, Header, PayloadStream, FORMAT_VERSION};
use image::keys::{PublicKey, SigningKey};
use image::BundleError;
use libfuzzer_sys::fuzz_target;

/// A fixed key, made for this target and used nowhere else, so seed inputs
/// can carry its key id (`c3ff280cdcd05c59`) and crashes reproduce.
const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEINd1T5e+3zf6IVhAaFqsXUQIkVzafmsJgg9fiSrS6ikB
-----END PRIVATE KEY-----
";

static KEY: LazyLock<SigningKey> = LazyLock::new(|| {
    SigningKey::parse(KEY_PEM.as_bytes()).expect("the constant key is valid PKCS#8")
});

fuzz_target!(|data: &[u8]| {
    let [mode, piece, rest @ ..] = data else {
        return;
    };
    let bundle = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        signed(rest)
    };
    let trusted = [KEY.public_key().clone()];
    let pieces = read(&bundle, &trusted, usize::from(*piece) + 1);
    let whole = read(&bundle, &trusted, bundle.len().max(1));
    assert_eq!(pieces, whole);
});

/// `[len: u16 LE][manifest: len bytes][tail]` made into a signed bundle.
fn signed(input: &[u8]) -> Vec<u8> {
    let (len, body) = match input {
        [lo, hi, body @ ..] => (usize::from(u16::from_le_bytes([*lo, *hi])), body),
        _ => (0, input),
    };
    let (manifest, tail) = body.split_at(len.min(body.len()));
    let header = Header {
        version: FORMAT_VERSION,
        manifest_len: manifest.len() as u32,
        key_id: KEY.public_key().id(),
        signature: KEY.sign(manifest),
    };
    let mut bundle = header.encode().to_vec();
    bundle.extend_from_slice(manifest);
    bundle.extend_from_slice(tail);
    bundle
}

/// Reads a whole bundle in pieces of `piece` bytes; returns the manifest's
/// signed bytes and the outcome.
fn read(
    bundle: &[u8],
    trusted: &[PublicKey],
    piece: usize,
) -> (Option<Vec<u8>>, Result<(), BundleError>) {
    let mut reader = BundleReader::new(trusted);
    let mut stream: Option<PayloadStream> = None;
    for mut chunk in bundle.chunks(piece) {
        if stream.is_none() {
            let used = match reader.handle_bytes(chunk) {
                Ok(used) => used,
                Err(err) => return (None, Err(err)),
            };
            assert!(used <= chunk.len());
            chunk = &chunk[used..];
            match reader.manifest() {
                Some(manifest) => stream = Some(PayloadStream::new(manifest)),
                None => {
                    assert!(chunk.is_empty(), "an unfinished reader takes all it is fed");
                    continue;
                }
            }
        }
        let Some(s) = stream.as_mut() else { continue };
        while !chunk.is_empty() {
            match s.handle_bytes(chunk) {
                Ok(step) => {
                    assert!(step.len() > 0 && step.len() <= chunk.len());
                    chunk = &chunk[step.len()..];
                }
                Err(err) => {
                    let manifest = reader.manifest().map(|m| m.signed_bytes().to_vec());
                    return (manifest, Err(err));
                }
            }
        }
    }
    let manifest = reader.manifest().map(|m| m.signed_bytes().to_vec());
    let result = match &stream {
        Some(s) => s.finish(),
        None => reader.into_manifest().map(|_| ()),
    };
    (manifest, result)
}
