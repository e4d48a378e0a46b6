//! The updater's shell: after a boot, detect a rollback, prove health, mark
//! the slot good or reboot; and `edge update install`.

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use image::bootstate::{BootState, Slot, MAX_TRIES};
use image::keys::PublicKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{error, info, warn};

use super::channel::{self, Decision};
use super::download;
use super::state::{after_boot, AfterBoot, Pending, UpdateState};
use super::window::{reboot_at, Reboot, RebootWindow};
use super::{
    booted_slot, install, read_boot_state, write_boot_state, BundleSource, InstallPolicy,
    Partitions, UpdateError,
};
use crate::config::UpdateConfig;

/// Pause between two health checks of a fresh boot.
const HEALTH_RETRY: Duration = Duration::from_secs(2);

/// Longest pause between two readings of the wall clock while an installed
/// update waits for its reboot window: a clock that steps (the first time
/// synchronisation after boot) is honoured within this much.
const WINDOW_RECHECK: Duration = Duration::from_secs(60);

/// What the box found out about its own slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The slot passed its health check and is marked good.
    MarkedGood(Slot),
    /// The health check did not pass within the deadline.
    Unhealthy,
    /// The running slot is marked good, and an update installed during this
    /// boot still waits for the reboot into it: `edge` restarted while the
    /// update waited for its reboot window (or after `edge update install
    /// --no-reboot`). The caller reboots into it as after an install.
    AwaitingReboot(Pending),
}

/// After a boot: records a rollback if there was one, then checks the box's
/// own health on `mux` until `config.health_deadline`, and marks the running
/// slot good when it passes. An update installed during this very boot is
/// not a rollback: it is handed back as [`Verdict::AwaitingReboot`].
pub async fn after_boot_check(
    config: &UpdateConfig,
    mux: SocketAddr,
) -> Result<Verdict, UpdateError> {
    let cmdline = std::fs::read_to_string(&config.cmdline)
        .map_err(|e| UpdateError::io(format!("reading {}", config.cmdline.display()), e))?;
    let booted = booted_slot(&cmdline).ok_or(UpdateError::UnknownSlot)?;
    let partitions = Partitions::discover(&config.sys_root, &config.dev_root)?;
    let mut state = UpdateState::load(&config.state_dir)?;
    let boot = read_boot_state(&partitions.bootstate)?.state;

    let waiting = awaiting_reboot(&state, &boot, booted);
    if let Some(pending) = &waiting {
        let (version, slot) = (&pending.version, &pending.slot);
        info!(%version, %slot, "installed update awaits its reboot");
    } else if let AfterBoot::RolledBack(reason) = after_boot(&state, &boot, booted) {
        warn!(slot = %booted, %reason, "update rolled back");
        state.record_rollback(&reason);
        state.save(&config.state_dir)?;
        write_boot_state(&partitions.bootstate, &boot.switch_to(booted))?;
    }

    let healthy = tokio::time::timeout(config.health_deadline, wait_healthy(mux)).await;
    if healthy.is_err() {
        error!(slot = %booted, "health check did not pass in time");
        return Ok(Verdict::Unhealthy);
    }
    let boot = read_boot_state(&partitions.bootstate)?.state;
    write_boot_state(&partitions.bootstate, &boot.mark_good(booted))?;
    state.record_good(booted);
    state.save(&config.state_dir)?;
    info!(slot = %booted, "slot marked good");
    Ok(match waiting {
        Some(pending) => Verdict::AwaitingReboot(pending),
        None => Verdict::MarkedGood(booted),
    })
}

/// The pending update, when it was installed during this boot and the box
/// has not rebooted since. The running slot is not the update's, yet the
/// update's slot is first in `BOOT_ORDER` with all its tries left: the boot
/// chooser spends a try of whatever slot it boots, so it has not run since
/// the install switched the order. (`after_boot` would call this
/// inconsistent and roll the update back; that is right after a boot that
/// went around the chooser, not after `edge` merely restarted.)
fn awaiting_reboot(state: &UpdateState, boot: &BootState, booted: Slot) -> Option<Pending> {
    let pending = state.pending.as_ref()?;
    let slot = pending.slot.parse::<Slot>().ok()?;
    let untried = boot.primary() == slot && boot.tries_left(slot) == MAX_TRIES;
    (slot != booted && untried).then(|| pending.clone())
}

/// Polls the box's own health endpoint through its own TLS front door.
async fn wait_healthy(mux: SocketAddr) {
    loop {
        match health(mux).await {
            Ok(true) => return,
            Ok(false) => warn!("health check answered, but not ok"),
            Err(e) => warn!(error = %e, "health check failed"),
        }
        tokio::time::sleep(HEALTH_RETRY).await;
    }
}

async fn health(mux: SocketAddr) -> std::io::Result<bool> {
    let tcp = tokio::net::TcpStream::connect(mux).await?;
    let name = rustls::pki_types::ServerName::IpAddress(mux.ip().into());
    let mut tls = tokio_rustls::TlsConnector::from(self_check_client())
        .connect(name, tcp)
        .await?;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    // The server ends without close_notify after `Connection: close`.
    let _ = tls.read_to_end(&mut response).await;
    Ok(response.starts_with(b"HTTP/1.1 200") && response.ends_with(b"ok"))
}

/// A client for the box talking to itself over loopback: the point is that
/// the mux, rustls and the HTTPS service answer, not who the certificate
/// names, so any certificate is accepted (the handshake signature is still
/// checked against it).
pub fn self_check_client() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Once the running slot is marked good: reads the channel every
/// `poll_interval` and installs what it names when [`channel::decide`] says
/// so. Returns the installed update, for the caller to reboot into.
///
/// Polling ends with the first install: while the update waits for its
/// reboot (window), a newer release is not installed over it. The pending
/// slot is already first in `BOOT_ORDER`, so writing it again would leave a
/// power cut during the write booting a half-written slot; the newer release
/// is found by the next poll after the update is marked good.
pub async fn poll_channel(config: UpdateConfig, url: String) -> Pending {
    let tls = match download::client_config(config.server_ca.as_deref()) {
        Ok(tls) => tls,
        Err(e) => {
            error!(error = %e, "the update channel cannot be read");
            return std::future::pending().await;
        }
    };
    loop {
        match check_channel(&config, &url, &tls).await {
            Ok(Some(pending)) => return pending,
            Ok(None) => {}
            Err(e) => warn!(error = %e, channel = %url, "update check failed"),
        }
        tokio::time::sleep(with_jitter(config.poll_interval)).await;
    }
}

async fn check_channel(
    config: &UpdateConfig,
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Option<Pending>, UpdateError> {
    let document = download::fetch_document(url, tls).await?;
    let release = channel::parse(&document).map_err(UpdateError::State)?;
    let state = UpdateState::load(&config.state_dir)?;
    let running = env!("CARGO_PKG_VERSION");
    if let Decision::Skip(why) = channel::decide(&release, running, &config.compatible, &state) {
        tracing::debug!(%why, "no update");
        return Ok(None);
    }
    info!(version = %release.version, url = %release.url, "installing update");
    let mut stream = download::fetch(&release.url, Arc::clone(tls))?;
    let config = config.clone();
    let installed = tokio::task::spawn_blocking(move || install_stream(&config, &mut stream))
        .await
        .map_err(|e| UpdateError::State(format!("install task: {e}")))??;
    Ok(Some(installed))
}

/// After `edge run` installed `pending`: returns when the box may reboot
/// into it. That is at once without a reboot window, inside the window, or
/// when the wall clock is unset (before 2020); otherwise when the window
/// next opens. `clock` reads the wall clock, again at least once a minute,
/// so a clock step moves the reboot with it.
pub async fn wait_for_reboot_window(
    window: Option<&RebootWindow>,
    pending: &Pending,
    clock: impl Fn() -> SystemTime,
) {
    let mut announced = None;
    loop {
        match reboot_at(window, clock()) {
            Reboot::Now if announced.is_some() => {
                info!(version = %pending.version, slot = %pending.slot, "reboot window open");
                return;
            }
            Reboot::Now => {
                info!(version = %pending.version, slot = %pending.slot, "update installed");
                return;
            }
            Reboot::NowClockUnset => {
                warn!(
                    version = %pending.version,
                    slot = %pending.slot,
                    "update installed; the clock is unset, so the reboot window is not waited for"
                );
                return;
            }
            Reboot::Wait { wait, opens } => {
                if announced != Some(opens) {
                    let at = humantime_serde::re::humantime::format_rfc3339_seconds(opens);
                    info!(
                        slot = %pending.slot,
                        "update {} installed, reboot at {at}",
                        pending.version
                    );
                    announced = Some(opens);
                }
                tokio::time::sleep(wait.min(WINDOW_RECHECK)).await;
            }
        }
    }
}

/// `interval` plus up to a tenth of it, so that boxes started together do
/// not all ask the server at the same second.
fn with_jitter(interval: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let _ = aws_lc_rs::rand::fill(&mut byte);
    interval + interval / 10 * u32::from(byte[0]) / 255
}

/// `edge update install`: installs a bundle from a file or an `https://` URL
/// into the inactive slot and records it as pending. The caller reboots.
pub fn install_from(config: &UpdateConfig, source: &str) -> Result<Pending, UpdateError> {
    if !source.starts_with("https://") {
        return install_file(config, Path::new(source));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| UpdateError::io("starting the download runtime", e))?;
    let _context = runtime.enter();
    let tls = download::client_config(config.server_ca.as_deref())?;
    let mut stream = download::fetch(source, tls)?;
    install_stream(config, &mut stream)
}

/// Installs a bundle file into the inactive slot and records it as pending.
pub fn install_file(config: &UpdateConfig, bundle: &Path) -> Result<Pending, UpdateError> {
    let mut file = File::open(bundle)
        .map_err(|e| UpdateError::io(format!("opening {}", bundle.display()), e))?;
    install_stream(config, &mut file)
}

fn install_stream(
    config: &UpdateConfig,
    source: &mut impl BundleSource,
) -> Result<Pending, UpdateError> {
    let trusted = load_keys(config)?;
    let cmdline = std::fs::read_to_string(&config.cmdline)
        .map_err(|e| UpdateError::io(format!("reading {}", config.cmdline.display()), e))?;
    let booted = booted_slot(&cmdline).ok_or(UpdateError::UnknownSlot)?;
    let partitions = Partitions::discover(&config.sys_root, &config.dev_root)?;
    let mut state = UpdateState::load(&config.state_dir)?;

    let policy = InstallPolicy {
        trusted: &trusted,
        compatible: &config.compatible,
        installed_security_version: state.installed_security_version,
    };
    let installed = install(source, &policy, &partitions, booted)?;
    // Recorded after the boot order switched: a power cut in between boots
    // the new slot without a record, which then simply marks itself good.
    let pending = Pending {
        version: installed.manifest.version().to_owned(),
        security_version: installed.manifest.security_version(),
        slot: installed.slot.as_str().to_owned(),
    };
    state.pending = Some(pending.clone());
    state.save(&config.state_dir)?;
    Ok(pending)
}

fn load_keys(config: &UpdateConfig) -> Result<Vec<PublicKey>, UpdateError> {
    config
        .keys
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .map_err(|e| UpdateError::io(format!("reading {}", path.display()), e))?;
            PublicKey::parse(&text)
                .map_err(|e| UpdateError::State(format!("{}: {e}", path.display())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-03T00:00:00Z.
    const DAY_START: u64 = 1_796_256_000;

    fn pending() -> Pending {
        Pending {
            version: "1.2.3".into(),
            security_version: 6,
            slot: "B".into(),
        }
    }

    fn window(text: &str) -> RebootWindow {
        text.parse().expect("a valid window")
    }

    /// A wall clock that reads `hours` after the test day's midnight when
    /// the test starts, runs with tokio's (paused) time, and steps forward
    /// by `step` once `step_after` has passed.
    fn clock(hours: u64, step_after: Duration, step: Duration) -> impl Fn() -> SystemTime {
        let started = tokio::time::Instant::now();
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(DAY_START + hours * 3600);
        move || {
            let elapsed = started.elapsed();
            let stepped = if elapsed >= step_after {
                step
            } else {
                Duration::ZERO
            };
            base + elapsed + stepped
        }
    }

    fn steady(hours: u64) -> impl Fn() -> SystemTime {
        clock(hours, Duration::MAX, Duration::ZERO)
    }

    /// Virtual time `wait_for_reboot_window` took to return.
    async fn waited(window: Option<&RebootWindow>, clock: impl Fn() -> SystemTime) -> Duration {
        let started = tokio::time::Instant::now();
        wait_for_reboot_window(window, &pending(), clock).await;
        started.elapsed()
    }

    fn waiting_in(slot: Slot) -> UpdateState {
        UpdateState {
            pending: Some(Pending {
                slot: slot.as_str().into(),
                ..pending()
            }),
            ..UpdateState::default()
        }
    }

    #[test]
    fn an_install_during_this_boot_awaits_its_reboot() {
        let switched = BootState::default().switch_to(Slot::B);
        assert_eq!(
            awaiting_reboot(&waiting_in(Slot::B), &switched, Slot::A),
            Some(pending())
        );
    }

    #[test]
    fn after_a_boot_through_the_chooser_nothing_awaits_a_reboot() {
        let state = waiting_in(Slot::B);
        let switched = BootState::default().switch_to(Slot::B);
        // The chooser booted B and spent a try: B runs on trial.
        let (slot, tried) = switched.choose();
        assert_eq!(slot, Slot::B);
        assert_eq!(awaiting_reboot(&state, &tried, Slot::B), None);
        // B used up its tries and the chooser fell back to A: a rollback.
        let spent = BootState::new(Slot::B, 2, 0).expect("state");
        assert_eq!(awaiting_reboot(&state, &spent, Slot::A), None);
        // The switch never reached the disk.
        assert_eq!(
            awaiting_reboot(&state, &BootState::default(), Slot::A),
            None
        );
        // Nothing pending.
        assert_eq!(
            awaiting_reboot(&UpdateState::default(), &switched, Slot::A),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_window_the_reboot_is_not_delayed() {
        assert_eq!(waited(None, steady(20)).await, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn inside_the_window_the_reboot_is_not_delayed() {
        let w = window("19:00-21:00");
        assert_eq!(waited(Some(&w), steady(20)).await, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn outside_the_window_the_reboot_waits_until_it_opens() {
        let w = window("02:00-04:00");
        let hours = |h: u64| Duration::from_secs(h * 3600);
        assert_eq!(waited(Some(&w), steady(20)).await, hours(6));
        let w = window("23:30-01:00");
        assert_eq!(waited(Some(&w), steady(20)).await, hours(3) + hours(1) / 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_clock_step_while_waiting_moves_the_reboot() {
        // At 20:10 the clock is synchronised five hours forward, to 01:10:
        // the window at 02:00 is then 50 minutes away, not 5 h 50 min.
        let w = window("02:00-04:00");
        let stepped = clock(
            20,
            Duration::from_secs(10 * 60),
            Duration::from_secs(5 * 3600),
        );
        assert_eq!(waited(Some(&w), stepped).await, Duration::from_secs(3600));
    }

    #[tokio::test(start_paused = true)]
    async fn a_clock_stepped_into_the_window_reboots_within_a_recheck() {
        let w = window("02:00-04:00");
        let stepped = clock(20, Duration::from_secs(1), Duration::from_secs(7 * 3600));
        assert_eq!(waited(Some(&w), stepped).await, WINDOW_RECHECK);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unset_clock_does_not_delay_the_reboot() {
        let w = window("02:00-04:00");
        let unset = || SystemTime::UNIX_EPOCH + Duration::from_secs(42);
        assert_eq!(waited(Some(&w), unset).await, Duration::ZERO);
    }
}
