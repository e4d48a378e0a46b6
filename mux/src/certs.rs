//! Certificates by server name: the one place every terminated handshake gets its key.
//!
//! A [`CertStore`] holds certificates from several sources (PEM files, ACME,
//! the self-signed fallback), each replaced as a whole when it reloads, plus
//! the short-lived TLS-ALPN-01 challenge certificates. [`CertResolver`] is the
//! rustls hook that picks one for each ClientHello. It never returns `None`:
//! unknown and missing names get the default certificate, so a prober sees the
//! same handshake whatever name it sends.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

/// ALPN protocol id of the ACME TLS-ALPN-01 challenge (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Where a set of certificates came from; each source is replaced as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// PEM files named in the configuration.
    Files,
    /// Certificates issued by the ACME client.
    Acme,
    /// The self-signed certificate generated at start-up.
    SelfSigned,
}

/// A certificate with the names it serves.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Lowercase DNS names, `*.example.org` for a wildcard.
    pub names: Vec<String>,
    /// Chain and signing key.
    pub key: Arc<CertifiedKey>,
}

/// Certificates by name, shared by the resolver and whatever reloads them.
#[derive(Debug)]
pub struct CertStore {
    sources: RwLock<HashMap<Source, Vec<Entry>>>,
    index: RwLock<Arc<Index>>,
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

/// Lookup table rebuilt whenever a source changes.
#[derive(Debug, Default)]
struct Index {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the parent domain: `*.example.org` is stored under `example.org`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertStore {
    /// A store whose only certificate is `fallback`, served for every name
    /// until another source provides one.
    pub fn new(fallback: Entry) -> Arc<Self> {
        let store = Arc::new(Self {
            sources: RwLock::new(HashMap::new()),
            index: RwLock::new(Arc::new(Index::default())),
            challenges: RwLock::new(HashMap::new()),
        });
        store.replace(Source::SelfSigned, vec![fallback]);
        store
    }

    /// Replaces every certificate of `source` at once.
    ///
    /// Established connections keep the key they were handshaken with; new
    /// handshakes see the new set immediately.
    pub fn replace(&self, source: Source, entries: Vec<Entry>) {
        let mut sources = self.sources.write().unwrap_or_else(|e| e.into_inner());
        sources.insert(source, entries);
        let index = Arc::new(Index::build(&sources));
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = index;
    }

    /// Certificates of one source, as last replaced.
    pub fn entries(&self, source: Source) -> Vec<Entry> {
        let sources = self.sources.read().unwrap_or_else(|e| e.into_inner());
        sources.get(&source).cloned().unwrap_or_default()
    }

    /// The certificate a handshake for `name` gets (`None`: no SNI).
    pub fn lookup(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let index = Arc::clone(&self.index.read().unwrap_or_else(|e| e.into_inner()));
        name.and_then(|name| index.find(name))
            .or_else(|| index.default.clone())
    }

    /// Installs the TLS-ALPN-01 challenge certificate for `name`.
    pub fn set_challenge(&self, name: &str, key: Arc<CertifiedKey>) {
        let mut challenges = self.challenges.write().unwrap_or_else(|e| e.into_inner());
        challenges.insert(normalize_name(name), key);
    }

    /// Removes the challenge certificate for `name` once the order is settled.
    pub fn clear_challenge(&self, name: &str) {
        let mut challenges = self.challenges.write().unwrap_or_else(|e| e.into_inner());
        challenges.remove(&normalize_name(name));
    }

    fn challenge(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let challenges = self.challenges.read().unwrap_or_else(|e| e.into_inner());
        challenges.get(name).cloned()
    }
}

impl Index {
    /// Files win over ACME, ACME over the self-signed fallback; within a
    /// source, the first entry naming a host wins. The default certificate is
    /// the first entry of the most preferred source that has one.
    fn build(sources: &HashMap<Source, Vec<Entry>>) -> Self {
        let mut index = Index::default();
        let mut order: Vec<_> = sources.iter().collect();
        order.sort_by_key(|(source, _)| **source);
        for (_, entries) in order {
            for entry in entries {
                index.insert(entry);
            }
        }
        index
    }

    fn insert(&mut self, entry: &Entry) {
        if self.default.is_none() {
            self.default = Some(Arc::clone(&entry.key));
        }
        for name in &entry.names {
            let name = normalize_name(name);
            let (table, key) = match name.strip_prefix("*.") {
                Some(parent) => (&mut self.wildcard, parent.to_owned()),
                None => (&mut self.exact, name),
            };
            table.entry(key).or_insert_with(|| Arc::clone(&entry.key));
        }
    }

    /// A wildcard covers exactly one label, as in certificate matching
    /// (RFC 6125 §6.4.3): `*.example.org` serves `a.example.org`, not
    /// `example.org` nor `a.b.example.org`.
    fn find(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        if let Some(key) = self.exact.get(name) {
            return Some(Arc::clone(key));
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).cloned()
    }
}

/// Lowercases a name and drops one trailing dot.
pub fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// The rustls hook that picks a certificate for each handshake.
#[derive(Debug)]
pub struct CertResolver {
    store: Arc<CertStore>,
}

impl CertResolver {
    /// A resolver over `store`.
    pub fn new(store: Arc<CertStore>) -> Arc<Self> {
        Arc::new(Self { store })
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(normalize_name);
        let wants_challenge = hello
            .alpn()
            .is_some_and(|mut ids| ids.any(|id| id == ACME_TLS_ALPN));
        if wants_challenge {
            // RFC 8737 §3: the challenge handshake must present the
            // challenge certificate; without one, fail like any other
            // acme-tls/1 probe rather than revealing which names are pending.
            return name.and_then(|name| self.store.challenge(&name));
        }
        self.store.lookup(name.as_deref())
    }
}

/// Loads a certificate chain and its private key from PEM files.
pub fn load_pem(cert_path: &Path, key_path: &Path) -> Result<Arc<CertifiedKey>, Error> {
    let chain = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::Certificate(format!("{}: {e}", cert_path.display())))?;
    if chain.is_empty() {
        return Err(Error::Certificate(format!(
            "{}: no certificate in file",
            cert_path.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| Error::Certificate(format!("{}: {e}", key_path.display())))?;
    certified_key(chain, key)
}

/// Pairs a chain with its key, checking that the key matches the leaf.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, Error> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| Error::Certificate(format!("key does not match certificate: {e}")))?;
    Ok(Arc::new(certified))
}

/// DNS names a certificate's leaf is valid for (its subjectAltName entries).
pub fn leaf_names(key: &CertifiedKey) -> Result<Vec<String>, Error> {
    let leaf = key
        .end_entity_cert()
        .map_err(|e| Error::Certificate(format!("no leaf certificate: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| Error::Certificate(format!("unparsable leaf certificate: {e}")))?;
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some(normalize_name(dns)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(names)
}

/// A self-signed certificate for `names`, served until a real one exists.
pub fn self_signed(names: &[String]) -> Result<Entry, Error> {
    let names = if names.is_empty() {
        vec!["localhost".to_owned()]
    } else {
        names.to_vec()
    };
    let generated = rcgen::generate_simple_self_signed(names.clone())
        .map_err(|e| Error::Certificate(format!("cannot generate self-signed certificate: {e}")))?;
    let chain = vec![generated.cert.der().clone()];
    let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())
        .map_err(|e| Error::Certificate(format!("generated key unusable: {e}")))?;
    Ok(Entry {
        names,
        key: certified_key(chain, key)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(names: &[&str]) -> Entry {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        self_signed(&names).expect("self-signed generation works")
    }

    fn same(a: &Option<Arc<CertifiedKey>>, b: &Entry) -> bool {
        a.as_ref().is_some_and(|a| Arc::ptr_eq(a, &b.key))
    }

    #[test]
    fn exact_wildcard_and_default() {
        let fallback = entry(&["fallback.invalid"]);
        let store = CertStore::new(fallback.clone());
        let exact = entry(&["turn.example.org"]);
        let wild = entry(&["*.example.org"]);
        store.replace(Source::Files, vec![exact.clone(), wild.clone()]);

        assert!(same(&store.lookup(Some("turn.example.org")), &exact));
        assert!(same(&store.lookup(Some("a.example.org")), &wild));
        assert!(same(&store.lookup(Some("a.b.example.org")), &exact));
        assert!(same(&store.lookup(Some("example.org")), &exact));
        assert!(same(&store.lookup(None), &exact));
    }

    #[test]
    fn fallback_until_another_source_arrives() {
        let fallback = entry(&["fallback.invalid"]);
        let store = CertStore::new(fallback.clone());
        assert!(same(&store.lookup(Some("x.example.org")), &fallback));

        let acme = entry(&["x.example.org"]);
        store.replace(Source::Acme, vec![acme.clone()]);
        assert!(same(&store.lookup(Some("x.example.org")), &acme));
        assert!(same(&store.lookup(Some("other.example")), &acme));

        store.replace(Source::Acme, vec![]);
        assert!(same(&store.lookup(Some("x.example.org")), &fallback));
    }

    #[test]
    fn names_come_from_the_leaf() {
        let e = entry(&["a.example.org", "*.b.example.org"]);
        let names = leaf_names(&e.key).expect("parsable");
        assert_eq!(names, vec!["a.example.org", "*.b.example.org"]);
    }

    #[test]
    fn normalize() {
        assert_eq!(normalize_name("Turn.Example.ORG."), "turn.example.org");
    }
}
