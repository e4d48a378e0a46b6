//! The test PKI: one CA the client trusts and one leaf for every bench name.
//!
//! A CA and a separate leaf, rather than one self-signed leaf, because
//! webpki refuses a certificate that is both the trust anchor and the end
//! entity.

use std::fs;
use std::path::Path;

use anyhow::Context as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// Names on the leaf: one per way the client reaches the bare server or edge.
pub(crate) const NAMES: [&str; 3] = ["pass.bench", "term.bench", "direct.bench"];

/// Writes `ca.pem`, `cert.pem` (the leaf) and `key.pem` (its PKCS#8 key) into `dir`.
pub(crate) fn write(dir: &Path) -> anyhow::Result<()> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "edge-bench CA");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let leaf_key = KeyPair::generate()?;
    let names: Vec<String> = NAMES.iter().map(|n| n.to_string()).collect();
    let leaf = CertificateParams::new(names)?.signed_by(&leaf_key, &issuer)?;

    write_file(&dir.join("ca.pem"), &ca_cert.pem())?;
    write_file(&dir.join("cert.pem"), &leaf.pem())?;
    write_file(&dir.join("key.pem"), &leaf_key.serialize_pem())
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
