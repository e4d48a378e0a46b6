//! Ed25519 keys that sign bundles, and their file formats.
//!
//! - Private key: PKCS#8 (RFC 5208/5958) holding an Ed25519 key (RFC 8410),
//!   as PEM (`-----BEGIN PRIVATE KEY-----`) or raw DER. `openssl genpkey
//!   -algorithm ed25519` writes one; `edge-bundle keygen` does too.
//! - Public key: one line `edge-ed25519 <base64 of the 32 key bytes> <key id>`.
//! - Key id: the first 8 bytes of SHA-256 of the 32 public key bytes, written
//!   as 16 lowercase hex digits. It tells the box which trusted key to try.
//!
//! docs/bundle.md has the formats byte by byte.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use crate::error::Error;

/// Bytes of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;

/// Bytes of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// First word of a public key file line.
const PUBLIC_KEY_TAG: &str = "edge-ed25519";

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// Names a signing key: the first 8 bytes of SHA-256 of its public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The id of a public key.
    pub fn of(public_key: &[u8; PUBLIC_KEY_LEN]) -> KeyId {
        let hash = digest(&SHA256, public_key);
        let mut id = [0; 8];
        id.copy_from_slice(&hash.as_ref()[..8]);
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::hex::encode(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Parses 16 lowercase hex digits.
impl FromStr for KeyId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        crate::hex::decode_array(s)
            .map(KeyId)
            .ok_or(Error::KeyFile("key id is not 16 lowercase hex digits"))
    }
}

/// A public key the box trusts to sign bundles.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    bytes: [u8; PUBLIC_KEY_LEN],
    id: KeyId,
}

impl PublicKey {
    /// Wraps the 32 bytes of an Ed25519 public key.
    pub fn from_bytes(bytes: [u8; PUBLIC_KEY_LEN]) -> PublicKey {
        PublicKey {
            id: KeyId::of(&bytes),
            bytes,
        }
    }

    /// Parses a public key file: one line, the key id checked against the key.
    pub fn parse(text: &str) -> Result<PublicKey, Error> {
        let mut words = text.split_ascii_whitespace();
        let (Some(PUBLIC_KEY_TAG), Some(key), Some(id), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return Err(Error::KeyFile(
                "expected one line: edge-ed25519 <base64 key> <key id>",
            ));
        };
        let bytes = BASE64
            .decode(key)
            .ok()
            .and_then(|b| <[u8; PUBLIC_KEY_LEN]>::try_from(b).ok())
            .ok_or(Error::KeyFile("public key is not 32 bytes in base64"))?;
        let key = PublicKey::from_bytes(bytes);
        if id.parse::<KeyId>()? != key.id {
            return Err(Error::KeyFile("key id does not match the public key"));
        }
        Ok(key)
    }

    /// The public key file's line, newline included.
    pub fn to_line(&self) -> String {
        format!(
            "{PUBLIC_KEY_TAG} {} {}\n",
            BASE64.encode(self.bytes),
            self.id
        )
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The 32 key bytes.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.bytes
    }

    /// Checks an Ed25519 signature over `message`.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.bytes)
            .verify(message, signature)
            .is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey").field("id", &self.id).finish()
    }
}

/// A private key that signs bundles (host tool and tests only).
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl SigningKey {
    /// Generates a fresh key from the crypto library's random source.
    pub fn generate() -> Result<SigningKey, Error> {
        let pair = Ed25519KeyPair::generate().map_err(|_| Error::KeyGeneration)?;
        Ok(SigningKey::from_pair(pair))
    }

    /// Parses a private key file: PKCS#8 as PEM or as raw DER.
    pub fn parse(file: &[u8]) -> Result<SigningKey, Error> {
        let der = match std::str::from_utf8(file) {
            Ok(text) if text.trim_start().starts_with("-----BEGIN") => pem_decode(text)?,
            _ => file.to_vec(),
        };
        let pair = Ed25519KeyPair::from_pkcs8(&der)
            .map_err(|_| Error::KeyFile("not a PKCS#8 Ed25519 private key"))?;
        Ok(SigningKey::from_pair(pair))
    }

    /// The private key file: PKCS#8 v1 in PEM, as OpenSSL writes it.
    pub fn to_pem(&self) -> Result<String, Error> {
        let der = self.pair.to_pkcs8v1().map_err(|_| Error::KeyGeneration)?;
        Ok(pem_encode(der.as_ref()))
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Signs `message` (a bundle writer signs the manifest bytes).
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut signature = [0; SIGNATURE_LEN];
        signature.copy_from_slice(self.pair.sign(message).as_ref());
        signature
    }

    fn from_pair(pair: Ed25519KeyPair) -> SigningKey {
        let mut bytes = [0; PUBLIC_KEY_LEN];
        bytes.copy_from_slice(pair.public_key().as_ref());
        SigningKey {
            pair,
            public: PublicKey::from_bytes(bytes),
        }
    }
}

/// Shows only the key id: the private half never reaches a log line.
impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.public.id)
            .finish_non_exhaustive()
    }
}

fn pem_encode(der: &[u8]) -> String {
    let body = BASE64.encode(der);
    let mut pem = format!("{PEM_BEGIN}\n");
    // RFC 7468 §2: lines of 64 characters.
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(PEM_END);
    pem.push('\n');
    pem
}

fn pem_decode(text: &str) -> Result<Vec<u8>, Error> {
    let body = text
        .split_once(PEM_BEGIN)
        .and_then(|(_, rest)| rest.split_once(PEM_END))
        .map(|(body, _)| body)
        .ok_or(Error::KeyFile("expected a PEM block labelled PRIVATE KEY"))?;
    let body: String = body.split_ascii_whitespace().collect();
    BASE64
        .decode(body)
        .map_err(|_| Error::KeyFile("PEM body is not base64"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_is_sha256_prefix_in_hex() {
        let key = [7u8; PUBLIC_KEY_LEN];
        let id = KeyId::of(&key);
        let hash = digest(&SHA256, &key);
        assert_eq!(id.0, hash.as_ref()[..8]);
        assert_eq!(id.to_string().len(), 16);
        assert_eq!(id.to_string().parse::<KeyId>().expect("hex"), id);
        assert!("0123".parse::<KeyId>().is_err());
        assert!("0123456789ABCDEF".parse::<KeyId>().is_err());
    }

    #[test]
    fn public_key_line_round_trips() {
        let key = SigningKey::generate().expect("keygen");
        let line = key.public_key().to_line();
        assert!(line.starts_with("edge-ed25519 ") && line.ends_with('\n'));
        assert_eq!(line.lines().count(), 1);
        assert_eq!(PublicKey::parse(&line).expect("parses"), *key.public_key());
    }

    #[test]
    fn public_key_line_with_wrong_id_or_shape_is_refused() {
        let key = SigningKey::generate().expect("keygen");
        let line = key.public_key().to_line();
        let wrong_id = format!(
            "{} 0000000000000000",
            line.rsplit_once(' ').expect("3 words").0
        );
        assert!(PublicKey::parse(&wrong_id).is_err());
        assert!(PublicKey::parse("edge-ed25519 AAAA 0000000000000000").is_err());
        assert!(PublicKey::parse(&format!("{} extra", line.trim())).is_err());
        assert!(PublicKey::parse("").is_err());
    }

    #[test]
    fn private_key_pem_and_der_round_trip() {
        let key = SigningKey::generate().expect("keygen");
        let pem = key.to_pem().expect("pkcs8");
        assert!(pem.starts_with(PEM_BEGIN));
        let again = SigningKey::parse(pem.as_bytes()).expect("pem parses");
        assert_eq!(again.public_key(), key.public_key());
        let der = pem_decode(&pem).expect("base64");
        let again = SigningKey::parse(&der).expect("der parses");
        assert_eq!(again.public_key(), key.public_key());
        assert!(SigningKey::parse(b"not a key").is_err());
    }

    #[test]
    fn signatures_verify_only_with_the_right_key_and_message() {
        let key = SigningKey::generate().expect("keygen");
        let other = SigningKey::generate().expect("keygen");
        let sig = key.sign(b"manifest");
        assert!(key.public_key().verify(b"manifest", &sig));
        assert!(!key.public_key().verify(b"manifesT", &sig));
        assert!(!other.public_key().verify(b"manifest", &sig));
    }

    #[test]
    fn debug_never_shows_key_material() {
        let key = SigningKey::generate().expect("keygen");
        let shown = format!("{key:?}");
        assert!(shown.contains(&key.public_key().id().to_string()));
        assert!(!shown.contains(&BASE64.encode(key.public_key().as_bytes())));
    }
}
