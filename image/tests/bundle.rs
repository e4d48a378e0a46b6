//! Bundles end to end through the public API: round trips, arbitrary
//! splits of the byte stream, and every kind of hostile or corrupt input.

use image::bundle::{
    build_bundle, BundleReader, BundleSpec, Manifest, PayloadKind, PayloadStream, PayloadVerifier,
    Step, HEADER_LEN, MAX_MANIFEST_LEN,
};
use image::keys::{PublicKey, SigningKey};
use image::BundleError;

const CHUNK: u32 = 4096;

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

struct Fixture {
    key: SigningKey,
    kernel: Vec<u8>,
    rootfs: Vec<u8>,
    bundle: Vec<u8>,
}

fn spec() -> BundleSpec {
    BundleSpec {
        chunk_size: CHUNK,
        ..BundleSpec::new("edge-qemu-aarch64", "1.4.0-rc.1", 7)
    }
}

/// Kernel of 2.5 chunks, rootfs of 5 chunks and a bit.
fn fixture() -> Fixture {
    let mut rng = Rng(0x5eed);
    let key = SigningKey::generate().expect("keygen");
    let kernel = rng.bytes(CHUNK as usize * 5 / 2);
    let rootfs = rng.bytes(CHUNK as usize * 5 + 17);
    let bundle = build_bundle(&spec(), &key, &kernel, &rootfs).expect("builds");
    Fixture {
        key,
        kernel,
        rootfs,
        bundle,
    }
}

/// What reading a whole bundle gives: the manifest, both payloads as the
/// steps placed them, and the first error.
#[derive(PartialEq)]
struct Outcome {
    manifest: Option<Manifest>,
    payloads: [Vec<u8>; 2],
    result: Result<(), BundleError>,
}

/// Short enough to read when a comparison fails.
impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outcome")
            .field("manifest", &self.manifest.as_ref().map(Manifest::version))
            .field("payload_lens", &self.payloads.each_ref().map(Vec::len))
            .field("result", &self.result)
            .finish()
    }
}

impl Outcome {
    /// The outcome without the bytes written before a failure: how far a
    /// failed stream got depends on where the pieces were cut.
    fn settled(mut self) -> Outcome {
        if self.result.is_err() {
            self.payloads = [Vec::new(), Vec::new()];
        }
        self
    }
}

/// Feeds `bundle` in the pieces `cuts` gives, as the updater would.
fn read(bundle: &[u8], trusted: &[PublicKey], mut cut: impl FnMut(usize) -> usize) -> Outcome {
    let mut reader = BundleReader::new(trusted);
    let mut stream: Option<PayloadStream> = None;
    let mut payloads = [Vec::new(), Vec::new()];
    let mut rest = bundle;
    let fail = |manifest, payloads, err| Outcome {
        manifest,
        payloads,
        result: Err(err),
    };
    while !rest.is_empty() {
        let (mut piece, after) = rest.split_at(cut(rest.len()).clamp(1, rest.len()));
        rest = after;
        if stream.is_none() {
            match reader.handle_bytes(piece) {
                Ok(used) => piece = &piece[used..],
                Err(err) => return fail(None, payloads, err),
            }
            match reader.manifest() {
                Some(manifest) => stream = Some(PayloadStream::new(manifest)),
                None => continue,
            }
        }
        let Some(s) = stream.as_mut() else { continue };
        while !piece.is_empty() {
            match s.handle_bytes(piece) {
                Ok(step) => {
                    place(&mut payloads, step, piece);
                    piece = &piece[step.len()..];
                }
                Err(err) => return fail(reader.manifest().cloned(), payloads, err),
            }
        }
    }
    let manifest = reader.manifest().cloned();
    let result = match &stream {
        Some(s) => s.finish(),
        None => reader.into_manifest().map(|_| ()),
    };
    Outcome {
        manifest,
        payloads,
        result,
    }
}

/// Writes a payload step where the step says, as the updater writes a slot.
fn place(payloads: &mut [Vec<u8>; 2], step: Step, piece: &[u8]) {
    if let Step::Payload {
        kind, offset, len, ..
    } = step
    {
        let out = &mut payloads[kind as usize];
        assert_eq!(out.len() as u64, offset, "steps arrive in order");
        out.extend_from_slice(&piece[..len]);
    }
}

fn whole(bundle: &[u8], trusted: &[PublicKey]) -> Outcome {
    read(bundle, trusted, |len| len)
}

#[test]
fn round_trip_gives_manifest_and_payloads() {
    let f = fixture();
    let out = whole(&f.bundle, &[f.key.public_key().clone()]);
    assert_eq!(out.result, Ok(()));
    assert_eq!(out.payloads, [f.kernel.clone(), f.rootfs.clone()]);
    let m = out.manifest.expect("verified");
    assert_eq!(m.compatible(), "edge-qemu-aarch64");
    assert_eq!(m.version(), "1.4.0-rc.1");
    assert_eq!(m.security_version(), 7);
    assert_eq!(m.key_id(), f.key.public_key().id());
    assert_eq!(m.chunk_size(), CHUNK);
    assert_eq!(m.file_len(), f.bundle.len() as u64);
    let kernel = m.payload(PayloadKind::Kernel);
    assert_eq!(
        (kernel.size(), kernel.chunks().len()),
        (f.kernel.len() as u64, 3)
    );
    assert_eq!(kernel.offset() % 4096, 0);
    assert_eq!(m.payload(PayloadKind::Rootfs).chunks().len(), 6);
}

#[test]
fn any_trusted_key_of_several_verifies() {
    let f = fixture();
    let other = SigningKey::generate().expect("keygen");
    let trusted = [other.public_key().clone(), f.key.public_key().clone()];
    assert_eq!(whole(&f.bundle, &trusted).result, Ok(()));
}

/// A few hundred random splits, from one byte at a time to large pieces,
/// give the same outcome as one read, for a good bundle and bad ones.
#[test]
fn random_splits_give_identical_outcomes() {
    let f = fixture();
    let trusted = [f.key.public_key().clone()];
    let mut corrupt_payload = f.bundle.clone();
    let last = corrupt_payload.len() - 1;
    corrupt_payload[last] ^= 1;
    let mut corrupt_manifest = f.bundle.clone();
    corrupt_manifest[HEADER_LEN + 20] ^= 1;
    let truncated = &f.bundle[..f.bundle.len() - 100];

    let mut rng = Rng(42);
    for bundle in [
        &f.bundle[..],
        &corrupt_payload,
        &corrupt_manifest,
        truncated,
    ] {
        let expected = whole(bundle, &trusted).settled();
        for round in 0..100 {
            let max = [1, 7, 100, 5000, 70_000][round % 5];
            let got = read(bundle, &trusted, |_| 1 + rng.below(max)).settled();
            assert_eq!(got, expected, "round {round}, pieces up to {max}");
        }
    }
}

#[test]
fn verified_counts_grow_by_whole_chunks() {
    let f = fixture();
    let mut reader = BundleReader::new(&[f.key.public_key().clone()]);
    let used = reader.handle_bytes(&f.bundle).expect("valid");
    let manifest = reader.manifest().expect("verified").clone();
    assert_eq!(used as u64, manifest.manifest_end());
    let mut stream = PayloadStream::new(&manifest);
    let mut rest = &f.bundle[used..];
    let mut seen = Vec::new();
    while !rest.is_empty() {
        let step = stream
            .handle_bytes(&rest[..rest.len().min(1000)])
            .expect("valid");
        if let Step::Payload { kind, verified, .. } = step {
            let size = manifest.payload(kind).size();
            assert!(verified % u64::from(CHUNK) == 0 || verified == size);
            seen.push((kind, verified));
        }
        rest = &rest[step.len()..];
    }
    assert!(stream.is_complete());
    assert_eq!(stream.remaining(), 0);
    assert_eq!(stream.verified(PayloadKind::Rootfs), f.rootfs.len() as u64);
    assert!(seen.contains(&(PayloadKind::Kernel, 4096)));
}

#[test]
fn bad_magic() {
    let f = fixture();
    let mut bundle = f.bundle.clone();
    bundle[0] = b'e';
    assert_eq!(
        whole(&bundle, &[f.key.public_key().clone()]).result,
        Err(BundleError::BadMagic)
    );
}

#[test]
fn unsupported_version_and_oversized_manifest() {
    let f = fixture();
    let trusted = [f.key.public_key().clone()];
    let mut bundle = f.bundle.clone();
    bundle[8] = 2;
    assert_eq!(
        whole(&bundle, &trusted).result,
        Err(BundleError::UnsupportedVersion(2))
    );
    let mut bundle = f.bundle.clone();
    bundle[12..16].copy_from_slice(&(MAX_MANIFEST_LEN + 1).to_le_bytes());
    assert!(matches!(
        whole(&bundle, &trusted).result,
        Err(BundleError::ManifestLength { .. })
    ));
}

/// The reader rejects an unknown key from the header alone, before it
/// buffers a byte of the manifest.
#[test]
fn unknown_key_is_its_own_error_and_comes_first() {
    let f = fixture();
    let stranger = SigningKey::generate().expect("keygen");
    let mut reader = BundleReader::new(&[stranger.public_key().clone()]);
    let err = reader
        .handle_bytes(&f.bundle[..HEADER_LEN])
        .expect_err("unknown");
    assert_eq!(err, BundleError::UnknownKey(f.key.public_key().id()));
    assert_eq!(reader.handle_bytes(&f.bundle[HEADER_LEN..]), Err(err));
    assert_eq!(reader.wanted(), 0);
}

#[test]
fn bad_signature_over_manifest_or_in_header() {
    let f = fixture();
    let trusted = [f.key.public_key().clone()];
    for at in [30, 87, HEADER_LEN, HEADER_LEN + 50] {
        let mut bundle = f.bundle.clone();
        bundle[at] ^= 0x40;
        assert_eq!(
            whole(&bundle, &trusted).result,
            Err(BundleError::BadSignature),
            "byte {at}"
        );
    }
}

#[test]
fn truncation_anywhere_is_reported_as_truncated() {
    let f = fixture();
    let trusted = [f.key.public_key().clone()];
    let manifest_end = HEADER_LEN + f.bundle[12] as usize + 256 * f.bundle[13] as usize;
    for len in [
        0,
        10,
        HEADER_LEN,
        manifest_end - 1,
        manifest_end + 1,
        4096,
        f.bundle.len() - 1,
    ] {
        let out = whole(&f.bundle[..len], &trusted);
        assert!(
            matches!(out.result, Err(BundleError::Truncated { missing }) if missing > 0),
            "length {len}: {:?}",
            out.result
        );
    }
}

#[test]
fn tampered_payload_names_the_chunk() {
    let f = fixture();
    let trusted = [f.key.public_key().clone()];
    let manifest = whole(&f.bundle, &trusted).manifest.expect("valid");
    let rootfs = manifest.payload(PayloadKind::Rootfs);
    let mut bundle = f.bundle.clone();
    bundle[(rootfs.offset() + 2 * u64::from(CHUNK) + 5) as usize] ^= 1;
    let out = whole(&bundle, &trusted);
    assert_eq!(
        out.result,
        Err(BundleError::ChunkMismatch {
            payload: PayloadKind::Rootfs,
            index: 2
        })
    );
    assert_eq!(
        out.payloads[0], f.kernel,
        "kernel was untouched and complete"
    );
    assert_eq!(
        out.result.expect_err("mismatch").to_string(),
        "chunk 2 of payload rootfs does not match the manifest"
    );
}

#[test]
fn padding_must_be_zero_and_nothing_may_follow() {
    let f = fixture();
    let trusted = [f.key.public_key().clone()];
    let manifest = whole(&f.bundle, &trusted).manifest.expect("valid");
    let pad_at = manifest.payload(PayloadKind::Kernel).offset() - 1;
    let mut bundle = f.bundle.clone();
    bundle[pad_at as usize] = 1;
    assert_eq!(
        whole(&bundle, &trusted).result,
        Err(BundleError::BadPadding { offset: pad_at })
    );
    let mut bundle = f.bundle.clone();
    bundle.push(0);
    assert_eq!(
        whole(&bundle, &trusted).result,
        Err(BundleError::TrailingBytes)
    );
}

#[test]
fn policy_checks_target_and_security_version() {
    let f = fixture();
    let manifest = whole(&f.bundle, &[f.key.public_key().clone()])
        .manifest
        .expect("valid");
    assert_eq!(manifest.check_installable("edge-qemu-aarch64", 7), Ok(()));
    assert_eq!(manifest.check_installable("edge-qemu-aarch64", 0), Ok(()));
    assert_eq!(
        manifest.check_installable("edge-rpi4", 0),
        Err(BundleError::IncompatibleTarget {
            bundle: "edge-qemu-aarch64".into(),
            device: "edge-rpi4".into()
        })
    );
    assert_eq!(
        manifest.check_installable("edge-qemu-aarch64", 8),
        Err(BundleError::SecurityVersionTooLow {
            bundle: 7,
            installed: 8
        })
    );
}

/// Reading a slot back after writing: the partition is larger than the
/// payload, so the verifier must refuse bytes past its size.
#[test]
fn read_back_verifier_checks_size_and_content() {
    let f = fixture();
    let manifest = whole(&f.bundle, &[f.key.public_key().clone()])
        .manifest
        .expect("valid");
    let mut ok = PayloadVerifier::new(&manifest, PayloadKind::Kernel);
    for piece in f.kernel.chunks(333) {
        ok.handle_bytes(piece).expect("matches");
    }
    assert_eq!(ok.finish(), Ok(()));
    assert!(ok.is_complete());

    let mut long = PayloadVerifier::new(&manifest, PayloadKind::Kernel);
    let mut slot = f.kernel.clone();
    slot.push(0);
    assert!(matches!(
        long.handle_bytes(&slot),
        Err(BundleError::SizeMismatch { .. })
    ));

    let mut short = PayloadVerifier::new(&manifest, PayloadKind::Kernel);
    assert_eq!(short.handle_bytes(&f.kernel[..4096]), Ok(4096));
    assert_eq!(
        short.finish(),
        Err(BundleError::SizeMismatch {
            payload: PayloadKind::Kernel,
            expected: f.kernel.len() as u64,
            fed: 4096
        })
    );
}

#[test]
fn writer_refuses_what_the_box_would_refuse() {
    let key = SigningKey::generate().expect("keygen");
    let cases = [
        BundleSpec::new("edge-qemu-aarch64", "one", 1),
        BundleSpec::new("edge qemu", "1.0.0", 1),
        BundleSpec::new("", "1.0.0", 1),
        BundleSpec {
            chunk_size: 1000,
            ..BundleSpec::new("edge-qemu-aarch64", "1.0.0", 1)
        },
    ];
    for spec in cases {
        assert!(build_bundle(&spec, &key, b"k", b"r").is_err(), "{spec:?}");
    }
    let spec = BundleSpec::new("edge-qemu-aarch64", "1.0.0", 1);
    assert!(
        build_bundle(&spec, &key, b"", b"r").is_err(),
        "empty kernel"
    );
}

/// Tiny chunks over a large payload need more digests than a manifest may hold.
#[test]
fn writer_refuses_a_manifest_over_the_limit() {
    let key = SigningKey::generate().expect("keygen");
    let spec = BundleSpec {
        chunk_size: 4096,
        ..BundleSpec::new("edge-qemu-aarch64", "1.0.0", 1)
    };
    let rootfs = vec![0; 70 << 20];
    let err = build_bundle(&spec, &key, b"k", &rootfs).expect_err("too many chunks");
    assert!(err.to_string().contains("larger chunk size"), "{err}");
}
