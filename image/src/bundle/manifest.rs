//! The signed manifest: JSON on the wire, checked into a [`Manifest`].

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{
    payload_offsets, Header, PayloadKind, FORMAT_VERSION, MAX_CHUNK_SIZE, MAX_PAYLOAD_SIZE,
    MIN_CHUNK_SIZE,
};
use crate::error::BundleError;
use crate::hex;
use crate::keys::KeyId;

/// Value of the manifest's `format` field. Besides naming the format it keeps
/// a signature this key made over some other JSON from passing as a manifest.
pub(crate) const FORMAT_NAME: &str = "edge-bundle";

/// Longest compatibility string accepted.
const MAX_COMPATIBLE_LEN: usize = 64;

/// Longest software version accepted.
const MAX_VERSION_LEN: usize = 64;

/// A manifest whose rules all hold. From [`super::BundleReader`] it is also
/// signed by a trusted key; fields are private so no other value passes as one.
#[derive(Clone, PartialEq, Eq)]
pub struct Manifest {
    compatible: String,
    version: String,
    security_version: u64,
    key_id: KeyId,
    chunk_size: u32,
    payloads: [Payload; 2],
    /// The exact bytes the signature covers.
    bytes: Vec<u8>,
}

/// One payload as the manifest describes it.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload {
    kind: PayloadKind,
    offset: u64,
    size: u64,
    sha256: [u8; 32],
    chunks: Vec<[u8; 32]>,
}

impl Manifest {
    /// Target compatibility string, e.g. `edge-qemu-aarch64`.
    pub fn compatible(&self) -> &str {
        &self.compatible
    }

    /// Software version, a semantic version (semver.org 2.0).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Security version for anti-rollback.
    pub fn security_version(&self) -> u64 {
        self.security_version
    }

    /// Id of the key that signed the manifest.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Size of the chunks whose digests the manifest lists.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// The payloads in file order: kernel, then rootfs.
    pub fn payloads(&self) -> &[Payload; 2] {
        &self.payloads
    }

    /// One payload.
    pub fn payload(&self, kind: PayloadKind) -> &Payload {
        &self.payloads[kind.index()]
    }

    /// The exact manifest bytes the signature covers.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// File offset of the first byte after the manifest.
    pub fn manifest_end(&self) -> u64 {
        super::HEADER_LEN as u64 + self.bytes.len() as u64
    }

    /// Length of the whole bundle file.
    pub fn file_len(&self) -> u64 {
        let rootfs = self.payload(PayloadKind::Rootfs);
        rootfs.offset + rootfs.size
    }

    /// Refuses a bundle built for another kind of box.
    pub fn check_compatible(&self, device: &str) -> Result<(), BundleError> {
        if self.compatible != device {
            return Err(BundleError::IncompatibleTarget {
                bundle: self.compatible.clone(),
                device: device.to_owned(),
            });
        }
        Ok(())
    }

    /// Refuses a bundle whose security version is below `installed`, the
    /// highest security version the box has run and marked good. An equal
    /// one passes: reinstalling or updating within one security level.
    pub fn check_security_version(&self, installed: u64) -> Result<(), BundleError> {
        if self.security_version < installed {
            return Err(BundleError::SecurityVersionTooLow {
                bundle: self.security_version,
                installed,
            });
        }
        Ok(())
    }

    /// Both checks the updater makes before writing a byte to the slot.
    pub fn check_installable(&self, device: &str, installed: u64) -> Result<(), BundleError> {
        self.check_compatible(device)?;
        self.check_security_version(installed)
    }

    /// Parses and checks manifest bytes. The caller has verified the
    /// signature (or says loudly that it has not, as `inspect` does).
    pub(crate) fn from_bytes(bytes: &[u8], header: &Header) -> Result<Manifest, BundleError> {
        let raw: RawManifest = serde_json::from_slice(bytes)
            .map_err(|e| BundleError::MalformedManifest(e.to_string()))?;
        raw.check(header, bytes)
    }
}

/// Leaves out the signed bytes and the chunk digests: a log line stays short.
impl fmt::Debug for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manifest")
            .field("compatible", &self.compatible)
            .field("version", &self.version)
            .field("security_version", &self.security_version)
            .field("key_id", &self.key_id)
            .field("chunk_size", &self.chunk_size)
            .field("payloads", &self.payloads)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Payload")
            .field("kind", &self.kind)
            .field("offset", &self.offset)
            .field("size", &self.size)
            .field("sha256", &hex::encode(&self.sha256))
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

impl Payload {
    /// Which payload this is.
    pub fn kind(&self) -> PayloadKind {
        self.kind
    }

    /// Offset of its first byte in the bundle file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// SHA-256 of the whole payload.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    /// SHA-256 of each chunk, in order; the last chunk may be short.
    pub fn chunks(&self) -> &[[u8; 32]] {
        &self.chunks
    }
}

/// The manifest as JSON has it. Unknown fields are refused: what is signed
/// is exactly what is understood. serde refuses duplicate fields too.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawManifest {
    pub(crate) format: String,
    pub(crate) format_version: u32,
    pub(crate) compatible: String,
    pub(crate) version: String,
    pub(crate) security_version: u64,
    pub(crate) key_id: String,
    pub(crate) chunk_size: u32,
    pub(crate) payloads: Vec<RawPayload>,
}

/// One payload as JSON has it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPayload {
    pub(crate) name: String,
    pub(crate) offset: u64,
    pub(crate) size: u64,
    pub(crate) sha256: String,
    pub(crate) chunks: Vec<String>,
}

impl RawManifest {
    /// Applies every rule of docs/bundle.md §Manifest.
    fn check(self, header: &Header, bytes: &[u8]) -> Result<Manifest, BundleError> {
        if self.format != FORMAT_NAME {
            return Err(invalid("format is not \"edge-bundle\""));
        }
        if self.format_version != header.version || self.format_version != FORMAT_VERSION {
            return Err(invalid("format_version differs from the header"));
        }
        let key_id = hex::decode_array(&self.key_id)
            .map(KeyId)
            .ok_or_else(|| invalid("key_id is not 16 lowercase hex digits"))?;
        if key_id != header.key_id {
            return Err(invalid("key_id differs from the header"));
        }
        check_compatible_string(&self.compatible)?;
        check_version(&self.version)?;
        check_chunk_size(self.chunk_size)?;
        let payloads = self.check_payloads(bytes.len())?;
        Ok(Manifest {
            compatible: self.compatible,
            version: self.version,
            security_version: self.security_version,
            key_id,
            chunk_size: self.chunk_size,
            payloads,
            bytes: bytes.to_vec(),
        })
    }

    /// Exactly a kernel then a rootfs, laid out where the format puts them.
    fn check_payloads(&self, manifest_len: usize) -> Result<[Payload; 2], BundleError> {
        let [kernel, rootfs] = self.payloads.as_slice() else {
            return Err(invalid("payloads must be exactly kernel and rootfs"));
        };
        let kernel = kernel.check(PayloadKind::Kernel, self.chunk_size)?;
        let rootfs = rootfs.check(PayloadKind::Rootfs, self.chunk_size)?;
        let manifest_len = u32::try_from(manifest_len).unwrap_or(u32::MAX);
        let expected = payload_offsets(manifest_len, [kernel.size, rootfs.size])
            .ok_or_else(|| invalid("payload offsets overflow"))?;
        if [kernel.offset, rootfs.offset] != expected {
            return Err(invalid(
                "payload offsets are not at the aligned ends of what precedes them",
            ));
        }
        Ok([kernel, rootfs])
    }
}

impl RawPayload {
    fn check(&self, kind: PayloadKind, chunk_size: u32) -> Result<Payload, BundleError> {
        if self.name != kind.name() {
            return Err(invalid("payloads must be exactly kernel and rootfs"));
        }
        if self.size == 0 || self.size > MAX_PAYLOAD_SIZE {
            return Err(invalid("payload size is outside 1 byte..=1 TiB"));
        }
        let count = self.size.div_ceil(u64::from(chunk_size));
        if self.chunks.len() as u64 != count {
            return Err(invalid(
                "chunk digest count does not match size and chunk size",
            ));
        }
        let chunks = self
            .chunks
            .iter()
            .map(|c| digest(c))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Payload {
            kind,
            offset: self.offset,
            size: self.size,
            sha256: digest(&self.sha256)?,
            chunks,
        })
    }
}

fn digest(text: &str) -> Result<[u8; 32], BundleError> {
    hex::decode_array(text).ok_or_else(|| invalid("digest is not 64 lowercase hex digits"))
}

/// Letters, digits, `.`, `_`, `-`: safe to print and compare byte for byte.
fn check_compatible_string(value: &str) -> Result<(), BundleError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if value.is_empty() || value.len() > MAX_COMPATIBLE_LEN || !value.chars().all(allowed) {
        return Err(invalid("compatible is not 1..=64 of [A-Za-z0-9._-]"));
    }
    Ok(())
}

fn check_version(value: &str) -> Result<(), BundleError> {
    if value.len() > MAX_VERSION_LEN || semver::Version::parse(value).is_err() {
        return Err(invalid(
            "version is not a semantic version of at most 64 bytes",
        ));
    }
    Ok(())
}

fn check_chunk_size(size: u32) -> Result<(), BundleError> {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size) || !size.is_multiple_of(MIN_CHUNK_SIZE) {
        return Err(invalid(
            "chunk_size is not a multiple of 4 KiB within 4 KiB..=64 MiB",
        ));
    }
    Ok(())
}

fn invalid(reason: &str) -> BundleError {
    BundleError::InvalidManifest(reason.to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::bundle::{build_bundle, inspect_unverified, BundleReader, BundleSpec};
    use crate::keys::SigningKey;

    /// A valid manifest as JSON, the key that signed it and its header.
    fn valid() -> (Value, SigningKey, Header) {
        let key = SigningKey::generate().expect("keygen");
        let spec = BundleSpec {
            chunk_size: 4096,
            ..BundleSpec::new("edge-qemu-aarch64", "2.0.0", 3)
        };
        let bundle = build_bundle(&spec, &key, &[1; 5000], &[2; 100]).expect("builds");
        let (header, manifest) = inspect_unverified(&bundle).expect("valid");
        let json = serde_json::from_slice(manifest.signed_bytes()).expect("json");
        (json, key, header)
    }

    /// Checks `json` as the reader would after the signature.
    fn check(json: &Value, header: &Header) -> Result<Manifest, BundleError> {
        let bytes = serde_json::to_vec(json).expect("serialises");
        Manifest::from_bytes(&bytes, header)
    }

    fn reason(result: Result<Manifest, BundleError>) -> String {
        match result {
            Err(BundleError::InvalidManifest(reason)) => reason,
            other => panic!("expected an invalid manifest, got {other:?}"),
        }
    }

    #[test]
    fn valid_manifest_passes() {
        let (json, _, header) = valid();
        let manifest = check(&json, &header).expect("valid");
        assert_eq!(manifest.payload(PayloadKind::Kernel).chunks().len(), 2);
    }

    #[test]
    fn header_and_manifest_must_agree() {
        let (mut json, _, header) = valid();
        json["format"] = json!("rauc");
        assert!(reason(check(&json, &header)).contains("format"));
        let (mut json, _, header) = valid();
        json["format_version"] = json!(2);
        assert!(reason(check(&json, &header)).contains("format_version"));
        let (mut json, _, header) = valid();
        json["key_id"] = json!("0000000000000000");
        assert!(reason(check(&json, &header)).contains("key_id differs"));
        json["key_id"] = json!("00");
        assert!(reason(check(&json, &header)).contains("hex"));
    }

    #[test]
    fn field_rules() {
        let cases: [(&str, Value, &str); 7] = [
            ("compatible", json!("has space"), "compatible"),
            ("compatible", json!("x".repeat(65)), "compatible"),
            ("version", json!("1.0"), "semantic version"),
            ("chunk_size", json!(4097), "chunk_size"),
            ("chunk_size", json!(0), "chunk_size"),
            ("chunk_size", json!(128 << 20), "chunk_size"),
            ("payloads", json!([]), "exactly kernel and rootfs"),
        ];
        for (field, value, expected) in cases {
            let (mut json, _, header) = valid();
            json[field] = value;
            let reason = reason(check(&json, &header));
            assert!(reason.contains(expected), "{field}: {reason}");
        }
    }

    #[test]
    fn payload_rules() {
        let swap = |json: &mut Value| {
            let payloads = json["payloads"].as_array_mut().expect("array");
            payloads.swap(0, 1);
        };
        type Mutation<'a> = &'a dyn Fn(&mut Value);
        let cases: [(Mutation<'_>, &str); 7] = [
            (&swap, "exactly kernel and rootfs"),
            (&|j| j["payloads"][0]["size"] = json!(0), "size"),
            (
                &|j| j["payloads"][0]["size"] = json!(4096),
                "chunk digest count",
            ),
            (&|j| j["payloads"][1]["offset"] = json!(16384), "offsets"),
            (&|j| j["payloads"][0]["offset"] = json!(0), "offsets"),
            (
                &|j| j["payloads"][0]["sha256"] = json!("AB".repeat(32)),
                "64 lowercase hex",
            ),
            (
                &|j| {
                    let extra = j["payloads"][1].clone();
                    j["payloads"].as_array_mut().expect("array").push(extra);
                },
                "exactly kernel and rootfs",
            ),
        ];
        for (i, (mutate, expected)) in cases.into_iter().enumerate() {
            let (mut json, _, header) = valid();
            mutate(&mut json);
            let reason = reason(check(&json, &header));
            assert!(reason.contains(expected), "case {i}: {reason}");
        }
    }

    #[test]
    fn unknown_and_duplicate_fields_and_bad_json_are_malformed() {
        let (mut json, _, header) = valid();
        json["extra"] = json!(1);
        assert!(matches!(
            check(&json, &header),
            Err(BundleError::MalformedManifest(_))
        ));
        let duplicate = br#"{"format":"edge-bundle","format":"edge-bundle"}"#;
        assert!(matches!(
            Manifest::from_bytes(duplicate, &header),
            Err(BundleError::MalformedManifest(_))
        ));
        for bad in [&b"{"[..], b"[]", b"\xff", b"{\"security_version\":-1}"] {
            assert!(matches!(
                Manifest::from_bytes(bad, &header),
                Err(BundleError::MalformedManifest(_))
            ));
        }
    }

    /// The reader checks the signature before it parses: garbage that is
    /// signed reads as malformed, garbage that is not as a bad signature.
    #[test]
    fn signature_is_checked_before_parsing() {
        let (_, key, header) = valid();
        let garbage = b"not json at all";
        let bundle = |signature| {
            let mut bytes = Header {
                manifest_len: garbage.len() as u32,
                signature,
                ..header.clone()
            }
            .encode()
            .to_vec();
            bytes.extend_from_slice(garbage);
            bytes
        };
        let mut reader = BundleReader::new(&[key.public_key().clone()]);
        let signed = bundle(key.sign(garbage));
        assert!(matches!(
            reader.handle_bytes(&signed),
            Err(BundleError::MalformedManifest(_))
        ));
        let mut reader = BundleReader::new(&[key.public_key().clone()]);
        assert_eq!(
            reader.handle_bytes(&bundle([0; 64])),
            Err(BundleError::BadSignature)
        );
    }
}
