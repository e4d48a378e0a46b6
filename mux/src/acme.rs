//! ACME (RFC 8555) certificates, validated with TLS-ALPN-01 (RFC 8737) on the mux itself.
//!
//! [`run`] is the whole client; the binary spawns it once and it never
//! returns. It works in four steps:
//!
//! 1. **Load.** The certificate saved in `state_dir` goes into the
//!    [`CertStore`] before any network traffic, so a restart serves the last
//!    certificate at once, with or without the CA reachable.
//! 2. **Plan.** [`Schedule`] decides from the certificate's validity, the
//!    configured `renew_before`, past failures and the current time whether
//!    to order now or sleep. It does no I/O and never reads the clock.
//! 3. **Order.** One order for all configured names. Each pending
//!    authorization is answered with a TLS-ALPN-01 challenge certificate put
//!    into the store, which the mux's resolver presents to the CA's validation
//!    handshake on :443. The certificate's key is fresh for every order.
//! 4. **Install.** The chain and key are saved (write, fsync, rename) and
//!    replace [`Source::Acme`] in the store; new handshakes use them at once.
//!
//! A failed order is logged at warn, counted in `cert_reloads`
//! (`acme_error`), and retried after an exponential back-off
//! ([`retry_delay`]); whatever the store served before stays in use.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::{
    Account, AccountBuilder, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier,
    NewAccount, NewOrder, Order, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use tracing::{debug, info_span, warn, Instrument};

use crate::certs::{self, normalize_name, CertStore, Entry, Source};
use crate::config::AcmeConfig;
use crate::metrics::{Metrics, Reason};
use crate::Error;

/// Name of the account file in `state_dir`: JSON with the account URL and key.
pub const ACCOUNT_FILE: &str = "account.json";

/// Name of the certificate file in `state_dir`: the chain (leaf first), then
/// the leaf's private key, in one PEM file so that one rename replaces both.
pub const CERTIFICATE_FILE: &str = "certificate.pem";

/// Shortest and longest pause after a failed order.
pub const RETRY_DELAY: (Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(6 * 3600));

/// Longest single sleep. The loop re-reads the wall clock at least this often,
/// so a clock that is set after boot (no RTC, time sync later) moves the
/// renewal with it instead of leaving a stale timer running.
pub const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// How often an order is polled while the CA validates or issues: from half
/// a second, growing by half each time, for at most two minutes. The CA's
/// Retry-After wins when it sends one (RFC 8555 §7.4).
const ORDER_POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(500))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));

/// Orders and renews the certificate for `config.domains` forever.
///
/// Until the first certificate is issued the store keeps serving whatever it
/// has (the self-signed fallback); afterwards, the last issued certificate
/// stays in use through failed renewals.
pub async fn run(config: AcmeConfig, store: Arc<CertStore>, metrics: Arc<Metrics>) {
    let span = info_span!("acme", directory = %config.directory);
    Client::new(config, store, metrics)
        .run()
        .instrument(span)
        .await;
}

/// The validity period of a certificate, in seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start of the validity period (`notBefore`).
    pub not_before: i64,
    /// End of the validity period (`notAfter`).
    pub not_after: i64,
}

impl Validity {
    /// Seconds from `not_before` to `not_after`; zero for a nonsensical certificate.
    pub fn lifetime(&self) -> i64 {
        self.not_after.saturating_sub(self.not_before).max(0)
    }
}

/// When to renew a certificate: `renew_before` ahead of its expiry, or two
/// thirds into its lifetime if that comes first.
///
/// The two-thirds point bounds how late a small `renew_before` can push the
/// renewal: a third of the lifetime always remains for retries.
pub fn renewal_time(validity: Validity, renew_before: Duration) -> i64 {
    let margin = i64::try_from(renew_before.as_secs()).unwrap_or(i64::MAX);
    let by_margin = validity.not_after.saturating_sub(margin);
    let lifetime = validity.lifetime();
    let by_lifetime = validity.not_before.saturating_add(lifetime - lifetime / 3);
    by_margin.min(by_lifetime)
}

/// When to renew a certificate that was just issued: as [`renewal_time`], but
/// never before a third of its lifetime has passed.
///
/// A `renew_before` longer than the CA's lifetime makes every certificate due
/// the moment it is issued; without this floor the box would order back to
/// back and run into the CA's rate limits. A stored certificate loaded at
/// start-up gets no floor, so raising `renew_before` and restarting is the way
/// to force a renewal.
pub fn renewal_time_of_new(validity: Validity, renew_before: Duration) -> i64 {
    let floor = validity.not_before.saturating_add(validity.lifetime() / 3);
    renewal_time(validity, renew_before).max(floor)
}

/// The pause after the `failures`-th failed order in a row: one minute,
/// doubling up to six hours, plus up to a quarter more from `jitter` (in
/// `0.0..1.0`) so that a fleet that failed together does not retry together.
pub fn retry_delay(failures: u32, jitter: f64) -> Duration {
    let (min, max) = RETRY_DELAY;
    let doublings = failures.saturating_sub(1).min(16);
    let base = min.saturating_mul(1 << doublings).min(max);
    let spread = base.mul_f64(jitter.clamp(0.0, 1.0) / 4.0);
    (base + spread).min(max)
}

/// The names of one order: configured domains normalised, sorted, without
/// duplicates. The order and the CSR both use this list, since RFC 8555 §7.4
/// requires the CSR to name exactly the identifiers of the order.
pub fn order_names(domains: &[String]) -> Vec<String> {
    let mut names: Vec<String> = domains.iter().map(|d| normalize_name(d)).collect();
    names.sort();
    names.dedup();
    names
}

/// Whether a certificate for `cert_names` serves every configured domain.
pub fn covers(cert_names: &[String], domains: &[String]) -> bool {
    let cert_names: Vec<String> = cert_names.iter().map(|n| normalize_name(n)).collect();
    order_names(domains).iter().all(|d| cert_names.contains(d))
}

/// The account file in `state_dir`.
pub fn account_path(state_dir: &Path) -> PathBuf {
    state_dir.join(ACCOUNT_FILE)
}

/// The certificate file in `state_dir`.
pub fn certificate_path(state_dir: &Path) -> PathBuf {
    state_dir.join(CERTIFICATE_FILE)
}

/// Where a new version of `path` is written before it is renamed over it: a
/// hidden file in the same directory, since rename(2) is only atomic within
/// one file system.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// The validity period of a certificate's leaf.
pub fn leaf_validity(key: &CertifiedKey) -> Result<Validity, Error> {
    let leaf = key
        .end_entity_cert()
        .map_err(|e| Error::Acme(format!("certificate has no leaf: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| Error::Acme(format!("unparsable leaf certificate: {e}")))?;
    Ok(Validity {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// What the run loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Order a certificate now.
    Order,
    /// Sleep this long, then ask again.
    Sleep(Duration),
}

/// When to order, as a state machine without I/O.
///
/// Feed it what happened with `handle_*` (first [`Schedule::handle_stored`],
/// then one of the others after each order), and ask
/// [`Schedule::poll_action`] what to do at `now`. Times are seconds since the
/// Unix epoch.
#[derive(Debug, Clone)]
pub struct Schedule {
    renew_before: Duration,
    /// When the next order is due.
    next_order: i64,
    /// Failed orders since the last success.
    failures: u32,
}

impl Schedule {
    /// A schedule that orders at once until told about a stored certificate.
    pub fn new(renew_before: Duration) -> Self {
        Self {
            renew_before,
            next_order: i64::MIN,
            failures: 0,
        }
    }

    /// The certificate found in `state_dir` at start-up, if it serves every
    /// configured name; `None` orders at once.
    pub fn handle_stored(&mut self, stored: Option<Validity>) {
        self.next_order = match stored {
            Some(validity) => renewal_time(validity, self.renew_before),
            None => i64::MIN,
        };
    }

    /// A certificate was issued and installed.
    pub fn handle_issued(&mut self, validity: Validity) {
        self.failures = 0;
        self.next_order = renewal_time_of_new(validity, self.renew_before);
    }

    /// An order failed at `now`; returns the pause before the next one.
    pub fn handle_failure(&mut self, now: i64, jitter: f64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let delay = retry_delay(self.failures, jitter);
        let secs = i64::try_from(delay.as_secs()).unwrap_or(i64::MAX);
        self.next_order = now.saturating_add(secs);
        delay
    }

    /// What to do at `now`.
    pub fn poll_action(&self, now: i64) -> Action {
        if now >= self.next_order {
            return Action::Order;
        }
        let wait = u64::try_from(self.next_order - now).unwrap_or(u64::MAX);
        Action::Sleep(Duration::from_secs(wait).min(MAX_SLEEP))
    }

    /// When the next order is due (`i64::MIN`: at once).
    pub fn next_order(&self) -> i64 {
        self.next_order
    }
}

/// The account as saved in [`ACCOUNT_FILE`].
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    /// The directory the account was created on. Another directory is another
    /// CA, where this account does not exist.
    directory: String,
    credentials: AccountCredentials,
}

/// A certificate fresh from the CA, validated against its key.
struct Issued {
    /// Chain and key as saved in [`CERTIFICATE_FILE`].
    pem: String,
    key: Arc<CertifiedKey>,
    validity: Validity,
}

/// The tokio shell around [`Schedule`]: files, network, store, metrics.
struct Client {
    config: AcmeConfig,
    store: Arc<CertStore>,
    metrics: Arc<Metrics>,
    schedule: Schedule,
    /// Restored or created on the first order, then reused.
    account: Option<Account>,
}

impl Client {
    fn new(config: AcmeConfig, store: Arc<CertStore>, metrics: Arc<Metrics>) -> Self {
        let schedule = Schedule::new(config.renew_before);
        Self {
            config,
            store,
            metrics,
            schedule,
            account: None,
        }
    }

    async fn run(mut self) {
        let dir = self.config.state_dir.clone();
        if let Err(e) = blocking(move || create_state_dir(&dir)).await {
            warn!(error = %e, "cannot create state directory");
        }
        let stored = match self.load_certificate(unix_now()).await {
            Ok(stored) => stored,
            Err(e) => {
                warn!(error = %e, "ignoring stored certificate");
                None
            }
        };
        self.schedule.handle_stored(stored);
        debug!(next_order = self.schedule.next_order(), "schedule loaded");

        loop {
            match self.schedule.poll_action(unix_now()) {
                Action::Sleep(pause) => tokio::time::sleep(pause).await,
                Action::Order => self.attempt().await,
            }
        }
    }

    /// Puts the saved certificate into the store if it has not expired;
    /// returns its validity if it also serves every configured name.
    async fn load_certificate(&self, now: i64) -> Result<Option<Validity>, Error> {
        let path = certificate_path(&self.config.state_dir);
        let Some(key) = blocking(move || read_certificate(&path)).await? else {
            return Ok(None);
        };
        let validity = leaf_validity(&key)?;
        let names = certs::leaf_names(&key)?;
        let covered = covers(&names, &self.config.domains);
        if validity.not_after > now {
            self.store.replace(Source::Acme, vec![Entry { names, key }]);
        }
        debug!(
            not_after = validity.not_after,
            covered, "loaded stored certificate"
        );
        Ok(covered.then_some(validity))
    }

    /// One order, with its outcome fed to the schedule.
    async fn attempt(&mut self) {
        let names = order_names(&self.config.domains);
        let span = info_span!("order", names = ?names);
        // Boxed: instant-acme's request futures are large, and this keeps
        // them off the stack of the never-ending run future.
        let outcome = Box::pin(self.order(&names).instrument(span)).await;
        match outcome {
            Ok(issued) => self.install(issued).await,
            Err(e) => {
                self.count("acme_error");
                let pause = self.schedule.handle_failure(unix_now(), jitter());
                warn!(error = %e, retry_in_s = pause.as_secs(), "certificate order failed");
            }
        }
    }

    async fn order(&mut self, names: &[String]) -> Result<Issued, Error> {
        let identifiers: Vec<Identifier> = names.iter().cloned().map(Identifier::Dns).collect();
        let new_order = NewOrder::new(&identifiers);
        let account = self.account().await?;
        let order = match account.new_order(&new_order).await {
            // A CA that lost or deactivated the account (RFC 8555 §7.3.6)
            // refuses every request signed with it; only a new account helps,
            // so make one at once rather than after a back-off.
            Err(e) if is_account_gone(&e) => {
                warn!(error = %e, "account unknown to the ca, creating a new one");
                self.forget_account().await?;
                let account = self.account().await?;
                account.new_order(&new_order).await
            }
            other => other,
        };
        let order = order.map_err(acme_error("cannot create order"))?;
        issue(order, names, &self.store).await
    }

    /// Drops the account in memory and on disk; the next order creates one.
    async fn forget_account(&mut self) -> Result<(), Error> {
        self.account = None;
        let path = account_path(&self.config.state_dir);
        blocking(move || match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::Acme(format!(
                "cannot remove {}: {e}",
                path.display()
            ))),
            _ => Ok(()),
        })
        .await
    }

    /// Saves, counts and serves a new certificate.
    async fn install(&mut self, issued: Issued) {
        let path = certificate_path(&self.config.state_dir);
        let pem = issued.pem.into_bytes();
        if let Err(e) = blocking(move || write_atomic(&path, &pem)).await {
            // Serving the new certificate beats keeping the old one; the
            // price is a new order after the next restart.
            warn!(error = %e, "cannot save certificate");
        }
        let names = certs::leaf_names(&issued.key).unwrap_or_default();
        self.count("acme_ok");
        self.store.replace(
            Source::Acme,
            vec![Entry {
                names,
                key: issued.key,
            }],
        );
        self.schedule.handle_issued(issued.validity);
        debug!(
            not_after = issued.validity.not_after,
            next_order = self.schedule.next_order(),
            "certificate installed"
        );
    }

    fn count(&self, reason: &'static str) {
        self.metrics
            .cert_reloads
            .get_or_create(&Reason { reason })
            .inc();
    }

    /// The ACME account: the saved one if it belongs to the configured
    /// directory, else a new one, saved before use.
    async fn account(&mut self) -> Result<Account, Error> {
        if let Some(account) = &self.account {
            return Ok(account.clone());
        }
        let path = account_path(&self.config.state_dir);
        let saved = blocking(move || read_account(&path)).await?;
        let account = match saved {
            Some(saved) if saved.directory == self.config.directory => self
                .builder()?
                .from_credentials(saved.credentials)
                .await
                .map_err(acme_error("cannot restore account"))?,
            _ => self.create_account().await?,
        };
        self.account = Some(account.clone());
        Ok(account)
    }

    async fn create_account(&self) -> Result<Account, Error> {
        let contact: Vec<&str> = self.config.contact.iter().map(String::as_str).collect();
        // RFC 8555 §7.3: the CA may require agreement to its terms; naming
        // the CA in the configuration is taken as that agreement.
        let new_account = NewAccount {
            contact: &contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, credentials) = self
            .builder()?
            .create(&new_account, self.config.directory.clone(), None)
            .await
            .map_err(acme_error("cannot create account"))?;
        let saved = StoredAccount {
            directory: self.config.directory.clone(),
            credentials,
        };
        let json = serde_json::to_vec_pretty(&saved)
            .map_err(|e| Error::Acme(format!("cannot encode account: {e}")))?;
        let path = account_path(&self.config.state_dir);
        blocking(move || write_atomic(&path, &json)).await?;
        debug!(account = account.id(), "account created");
        Ok(account)
    }

    /// An HTTPS client for the directory: the platform's roots, or only
    /// `directory_ca` when one is configured.
    fn builder(&self) -> Result<AccountBuilder, Error> {
        match &self.config.directory_ca {
            Some(ca) => Account::builder_with_root(ca),
            None => Account::builder(),
        }
        .map_err(acme_error("cannot set up https client"))
    }
}

/// Takes a new order for `names` through validation, finalization and
/// download, and returns the issued certificate.
///
/// The challenge certificates live in the store only while this runs: they
/// are removed when it returns, fails or is cancelled.
async fn issue(mut order: Order, names: &[String], store: &CertStore) -> Result<Issued, Error> {
    let mut challenges = Challenges::new(store);
    answer_challenges(&mut order, &mut challenges).await?;

    // RFC 8555 §7.1.6: the order is ready once every authorization is valid,
    // and invalid for good as soon as one fails.
    let status = order
        .poll_ready(&ORDER_POLL)
        .await
        .map_err(acme_error("order did not become ready"))?;
    drop(challenges);
    if status != OrderStatus::Ready {
        return Err(Error::Acme(why_invalid(&mut order).await));
    }

    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Error::Acme(format!("cannot generate certificate key: {e}")))?;
    let csr = certificate_request(names, &key)?;
    order
        .finalize_csr(&csr)
        .await
        .map_err(acme_error("cannot finalize order"))?;
    let chain = order
        .poll_certificate(&ORDER_POLL)
        .await
        .map_err(acme_error("cannot download certificate"))?;
    issued(chain, &key)
}

/// Answers every pending authorization of `order` with TLS-ALPN-01.
async fn answer_challenges(
    order: &mut Order,
    challenges: &mut Challenges<'_>,
) -> Result<(), Error> {
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(acme_error("cannot fetch authorization"))?;
        let name = authz.identifier().to_string();
        match authz.status {
            // RFC 8555 §7.1.3: the CA may reuse an authorization that is
            // still valid from an earlier order; nothing to answer.
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            status => {
                let status = format!("{status:?}").to_lowercase();
                return Err(Error::Acme(format!("authorization for {name} is {status}")));
            }
        }
        let mut challenge = authz
            .challenge(ChallengeType::TlsAlpn01)
            .ok_or_else(|| Error::Acme(format!("ca offers no tls-alpn-01 challenge for {name}")))?;
        let digest = challenge.key_authorization().digest();
        challenges.install(&name, challenge_certificate(&name, digest.as_ref())?);
        // RFC 8555 §7.5.1: tell the CA to validate only once the response is
        // in place, since it may connect right away.
        challenge
            .set_ready()
            .await
            .map_err(acme_error("cannot mark challenge ready"))?;
    }
    Ok(())
}

/// The reason an order became invalid: the first failed challenge's problem.
async fn why_invalid(order: &mut Order) -> String {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let name = authz.identifier().to_string();
        let Ok(state) = authz.refresh().await else {
            continue;
        };
        let problem = state.challenges.iter().find_map(|c| c.error.as_ref());
        if let Some(problem) = problem {
            return format!("validation of {name} failed: {problem}");
        }
    }
    "order became invalid".to_owned()
}

/// The TLS-ALPN-01 challenge certificate for `name` (RFC 8737 §3).
fn challenge_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, Error> {
    // RFC 8737 §3: the acmeIdentifier extension holds the SHA-256 digest of
    // the key authorization; rcgen panics on any other length.
    if digest.len() != 32 {
        return Err(Error::Acme(
            "key authorization digest is not sha-256".to_owned(),
        ));
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Error::Acme(format!("cannot generate challenge key: {e}")))?;
    // RFC 8737 §3: self-signed, exactly one dNSName (the name validated) and
    // a critical acmeIdentifier extension.
    let mut params = CertificateParams::new(vec![name.to_owned()])
        .map_err(|e| Error::Acme(format!("challenge certificate for {name}: {e}")))?;
    params.distinguished_name = DistinguishedName::new();
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let cert = params
        .self_signed(&key)
        .map_err(|e| Error::Acme(format!("cannot sign challenge certificate: {e}")))?;
    // Not `certs::certified_key`: its consistency check runs the leaf through
    // webpki, which rightly refuses the unknown critical extension. The key
    // was generated for this certificate a moment ago.
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| Error::Acme(format!("challenge key unusable: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// A DER certificate signing request for `names` signed by `key`.
fn certificate_request(names: &[String], key: &KeyPair) -> Result<Vec<u8>, Error> {
    let mut params = CertificateParams::new(names.to_vec())
        .map_err(|e| Error::Acme(format!("certificate request: {e}")))?;
    // The CA takes the names from the subjectAltName extension (RFC 8555
    // §7.4); a subject would only repeat one of them.
    params.distinguished_name = DistinguishedName::new();
    let csr = params
        .serialize_request(key)
        .map_err(|e| Error::Acme(format!("cannot sign certificate request: {e}")))?;
    Ok(csr.der().to_vec())
}

/// Pairs the chain the CA sent (PEM, leaf first: RFC 8555 §7.4.2) with its key.
fn issued(chain_pem: String, key: &KeyPair) -> Result<Issued, Error> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Acme(format!("unparsable certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(Error::Acme("ca sent no certificate".to_owned()));
    }
    let der = PrivatePkcs8KeyDer::from(key.serialize_der());
    let certified = certs::certified_key(chain, PrivateKeyDer::Pkcs8(der))
        .map_err(|e| Error::Acme(format!("issued certificate unusable: {e}")))?;
    let validity = leaf_validity(&certified)?;
    let mut pem = chain_pem;
    if !pem.ends_with('\n') {
        pem.push('\n');
    }
    pem.push_str(&key.serialize_pem());
    Ok(Issued {
        pem,
        key: certified,
        validity,
    })
}

/// Challenge certificates installed in the store, removed on drop.
struct Challenges<'a> {
    store: &'a CertStore,
    names: Vec<String>,
}

impl<'a> Challenges<'a> {
    fn new(store: &'a CertStore) -> Self {
        Self {
            store,
            names: Vec::new(),
        }
    }

    fn install(&mut self, name: &str, key: Arc<CertifiedKey>) {
        self.store.set_challenge(name, key);
        self.names.push(name.to_owned());
    }
}

impl Drop for Challenges<'_> {
    fn drop(&mut self) {
        for name in &self.names {
            self.store.clear_challenge(name);
        }
    }
}

/// Whether the CA refused a request because it does not know the account.
fn is_account_gone(error: &instant_acme::Error) -> bool {
    matches!(
        error,
        instant_acme::Error::Api(problem)
            if problem.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist")
    )
}

/// Wraps an instant-acme error with what was being done, keeping its causes.
fn acme_error(what: &'static str) -> impl FnOnce(instant_acme::Error) -> Error {
    move |e| {
        let mut message = format!("{what}: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        Error::Acme(message)
    }
}

/// Runs file I/O off the async workers: fsync on an SD card can take a while.
async fn blocking<T, F>(f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Acme(format!("file task failed: {e}")))?
}

/// Creates `state_dir` readable by the owner only: it holds private keys.
fn create_state_dir(dir: &Path) -> Result<(), Error> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::Acme(format!("cannot create {}: {e}", dir.display())))
}

/// The saved certificate, `None` if there is none.
fn read_certificate(path: &Path) -> Result<Option<Arc<CertifiedKey>>, Error> {
    match path.try_exists() {
        Ok(false) => Ok(None),
        Ok(true) => certs::load_pem(path, path).map(Some),
        Err(e) => Err(Error::Acme(format!("cannot read {}: {e}", path.display()))),
    }
}

/// The saved account, `None` if there is none or it cannot be parsed (a new
/// account is then created and replaces it).
fn read_account(path: &Path) -> Result<Option<StoredAccount>, Error> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Acme(format!("cannot read {}: {e}", path.display()))),
    };
    match serde_json::from_slice(&bytes) {
        Ok(saved) => Ok(Some(saved)),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "unparsable account file, replacing it");
            Ok(None)
        }
    }
}

/// Replaces `path` with `contents` so that a power cut leaves either the old
/// or the new file: write a temporary file (mode 0600, it holds a private
/// key), fsync it, rename it over `path`, fsync the directory.
fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), Error> {
    let fail = |e: io::Error| Error::Acme(format!("cannot write {}: {e}", path.display()));
    let temp = temp_path(path);
    // A leftover from an interrupted write may carry other permissions;
    // `mode` only applies to a file being created.
    match fs::remove_file(&temp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(fail(e)),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(fail)?;
    file.write_all(contents).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    drop(file);
    fs::rename(&temp, path).map_err(fail)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(fail)
}

/// Seconds since the Unix epoch; 0 if the clock is before it.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A uniform number in `0.0..1.0` from the TLS provider's random source.
fn jitter() -> f64 {
    let mut bytes = [0u8; 4];
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    if provider.secure_random.fill(&mut bytes).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(bytes)) / 4_294_967_296.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn days(n: u64) -> Duration {
        Duration::from_secs(n * 86_400)
    }

    fn validity(lifetime_days: i64) -> Validity {
        Validity {
            not_before: 1_000 * DAY,
            not_after: (1_000 + lifetime_days) * DAY,
        }
    }

    #[test]
    fn ninety_day_certificate_renews_thirty_days_ahead() {
        let v = validity(90);
        assert_eq!(renewal_time(v, days(30)), v.not_after - 30 * DAY);
    }

    #[test]
    fn two_thirds_wins_for_small_margins() {
        let v = validity(90);
        assert_eq!(renewal_time(v, days(1)), v.not_before + 60 * DAY);
        let v = validity(45);
        assert_eq!(renewal_time(v, days(30)), v.not_before + 15 * DAY);
        assert_eq!(renewal_time(v, days(10)), v.not_before + 30 * DAY);
    }

    #[test]
    fn margin_wins_when_earlier() {
        let v = validity(90);
        assert_eq!(renewal_time(v, days(45)), v.not_before + 45 * DAY);
    }

    #[test]
    fn margin_longer_than_lifetime_is_due_before_issue() {
        let v = validity(90);
        assert!(renewal_time(v, days(365)) < v.not_before);
        assert!(renewal_time(v, Duration::MAX) < v.not_before);
    }

    #[test]
    fn new_certificate_waits_a_third_of_its_lifetime() {
        let v = validity(90);
        assert_eq!(renewal_time_of_new(v, days(365)), v.not_before + 30 * DAY);
        assert_eq!(renewal_time_of_new(v, days(30)), renewal_time(v, days(30)));
        let v = validity(6);
        assert!(renewal_time(v, days(30)) < v.not_before);
        assert_eq!(renewal_time_of_new(v, days(30)), v.not_before + 2 * DAY);
    }

    #[test]
    fn broken_validity_does_not_overflow() {
        let v = Validity {
            not_before: i64::MAX,
            not_after: i64::MIN,
        };
        assert_eq!(v.lifetime(), 0);
        assert_eq!(renewal_time(v, days(30)), i64::MIN);
    }

    #[test]
    fn retry_delay_doubles_from_a_minute_to_six_hours() {
        assert_eq!(retry_delay(1, 0.0), Duration::from_secs(60));
        assert_eq!(retry_delay(2, 0.0), Duration::from_secs(120));
        assert_eq!(retry_delay(3, 0.0), Duration::from_secs(240));
        assert_eq!(retry_delay(9, 0.0), Duration::from_secs(60 * 256));
        assert_eq!(retry_delay(10, 0.0), Duration::from_secs(6 * 3600));
        assert_eq!(retry_delay(u32::MAX, 0.0), Duration::from_secs(6 * 3600));
    }

    #[test]
    fn jitter_adds_at_most_a_quarter_and_never_exceeds_the_cap() {
        let almost = retry_delay(1, 0.999_999);
        assert!(almost > Duration::from_secs(74) && almost < Duration::from_secs(75));
        assert_eq!(retry_delay(1, 7.0), Duration::from_secs(75));
        assert_eq!(retry_delay(1, -1.0), Duration::from_secs(60));
        assert_eq!(retry_delay(9, 1.0), Duration::from_secs(60 * 256 * 5 / 4));
        assert_eq!(retry_delay(10, 1.0), Duration::from_secs(6 * 3600));
    }

    #[test]
    fn schedule_without_certificate_orders_at_once() {
        let mut schedule = Schedule::new(days(30));
        assert_eq!(schedule.poll_action(0), Action::Order);
        schedule.handle_stored(None);
        assert_eq!(schedule.poll_action(i64::MIN), Action::Order);
    }

    #[test]
    fn schedule_sleeps_in_bounded_steps_until_renewal() {
        let v = validity(90);
        let mut schedule = Schedule::new(days(30));
        schedule.handle_stored(Some(v));
        let now = v.not_before + DAY;
        assert_eq!(schedule.poll_action(now), Action::Sleep(MAX_SLEEP));
        let due = v.not_after - 30 * DAY;
        assert_eq!(
            schedule.poll_action(due - 10),
            Action::Sleep(Duration::from_secs(10))
        );
        assert_eq!(schedule.poll_action(due), Action::Order);
    }

    #[test]
    fn schedule_backs_off_and_resets_on_success() {
        let v = validity(90);
        let mut schedule = Schedule::new(days(30));
        schedule.handle_stored(None);
        let now = v.not_before;
        assert_eq!(schedule.handle_failure(now, 0.0), Duration::from_secs(60));
        assert_eq!(
            schedule.poll_action(now + 59),
            Action::Sleep(Duration::from_secs(1))
        );
        assert_eq!(schedule.poll_action(now + 60), Action::Order);
        assert_eq!(
            schedule.handle_failure(now + 60, 0.0),
            Duration::from_secs(120)
        );

        schedule.handle_issued(v);
        assert_eq!(schedule.next_order(), v.not_after - 30 * DAY);
        assert_eq!(schedule.handle_failure(now, 0.0), Duration::from_secs(60));
    }

    #[test]
    fn schedule_does_not_loop_when_margin_exceeds_lifetime() {
        let v = validity(90);
        let mut schedule = Schedule::new(days(365));
        schedule.handle_stored(Some(v));
        assert_eq!(schedule.poll_action(v.not_before + 1), Action::Order);
        schedule.handle_issued(v);
        assert!(matches!(
            schedule.poll_action(v.not_before + 1),
            Action::Sleep(_)
        ));
    }

    #[test]
    fn names_are_normalised_and_deduplicated() {
        let domains = vec![
            "B.example.org.".to_owned(),
            "a.example.org".to_owned(),
            "b.example.org".to_owned(),
        ];
        assert_eq!(
            order_names(&domains),
            vec!["a.example.org", "b.example.org"]
        );
        let cert = vec!["a.example.org".to_owned(), "B.Example.org".to_owned()];
        assert!(covers(&cert, &domains));
        assert!(!covers(&cert[..1], &domains));
    }

    #[test]
    fn file_names() {
        let dir = Path::new("/data/acme");
        assert_eq!(account_path(dir), Path::new("/data/acme/account.json"));
        assert_eq!(
            certificate_path(dir),
            Path::new("/data/acme/certificate.pem")
        );
        assert_eq!(
            temp_path(&certificate_path(dir)),
            Path::new("/data/acme/.certificate.pem.tmp")
        );
    }

    #[test]
    fn challenge_certificate_follows_rfc_8737() {
        let digest = [7u8; 32];
        let key = challenge_certificate("edge.example.org", &digest).expect("generated");
        let leaf = key.end_entity_cert().expect("has a leaf");
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).expect("parsable");
        assert_eq!(cert.subject(), cert.issuer(), "self-signed");
        let names = certs::leaf_names(&key).expect("has names");
        assert_eq!(names, vec!["edge.example.org"]);
        // id-pe-acmeIdentifier, 1.3.6.1.5.5.7.1.31, critical, OCTET STRING of the digest.
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier present");
        assert!(ext.critical);
        assert_eq!(ext.value[..2], [0x04, 32]);
        assert_eq!(ext.value[2..], digest);
    }

    #[test]
    fn challenge_certificate_rejects_other_digests() {
        assert!(challenge_certificate("edge.example.org", &[0u8; 20]).is_err());
    }

    #[test]
    fn issued_chain_and_key_round_trip_through_the_file() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let params = CertificateParams::new(vec!["edge.example.org".to_owned()]).expect("params");
        let cert = params.self_signed(&key).expect("signed");
        let issued = issued(cert.pem(), &key).expect("usable");

        let dir = std::env::temp_dir().join(format!("mux-acme-unit-{}", std::process::id()));
        create_state_dir(&dir).expect("state dir");
        let path = certificate_path(&dir);
        write_atomic(&path, issued.pem.as_bytes()).expect("written");
        write_atomic(&path, issued.pem.as_bytes()).expect("rewritten");
        let loaded = read_certificate(&path).expect("readable").expect("present");
        assert_eq!(loaded.cert, issued.key.cert);

        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(&dir).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(!temp_path(&path).exists());
        fs::remove_dir_all(&dir).expect("cleaned up");
    }

    #[test]
    fn missing_files_are_not_errors() {
        let dir = Path::new("/nonexistent/mux-acme");
        assert!(read_certificate(&certificate_path(dir))
            .expect("no error")
            .is_none());
        assert!(read_account(&account_path(dir))
            .expect("no error")
            .is_none());
    }
}
