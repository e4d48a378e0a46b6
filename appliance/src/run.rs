//! `edge run`: builds every part from the configuration, wires them, and
//! waits for a signal.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use mux::certs::{self, CertStore, Source};
use mux::metrics::Metrics;
use mux::server::Mux;
use mux::service::{ServiceName, Services};
use prometheus_client::registry::Registry;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, MetricsConfig, UpdateConfig};
use crate::https::Https;
use crate::status::{Field, Status};
use crate::update::state::{Pending, UpdateState};
use crate::update::supervise::{after_boot_check, poll_channel, wait_for_reboot_window, Verdict};
use crate::update::{booted_slot, read_boot_state, Partitions, UpdateError};
use crate::watchdog::Watchdog;

/// What the system start hands `edge run` besides the configuration: the
/// board's devices and the image's layout, which the partner's
/// configuration does not know.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A watchdog device to arm and feed.
    pub watchdog: Option<PathBuf>,
    /// Where to keep the status file (the `boot` partition's `status.txt`).
    pub status_file: Option<PathBuf>,
}

/// Runs the box until SIGTERM or SIGINT.
pub fn main(config: Config, options: &Options) -> anyhow::Result<()> {
    init_logging(&config.log.filter);
    // Libraries that build their own rustls configurations (the ACME
    // client's HTTPS) take the process default: make it the one provider
    // the box carries, whatever else a dependency might enable.
    if rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .is_err()
    {
        warn!("a rustls crypto provider was already installed");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        tokio::spawn(hold_timer_horizon());
        // Armed first: from here on, a hang anywhere resets the box.
        let watchdog = match options.watchdog.as_deref().map(Watchdog::open).transpose() {
            Ok(watchdog) => watchdog,
            Err(e) => {
                warn!(error = %e, "cannot open the watchdog; running without one");
                None
            }
        };
        if let Some(watchdog) = &watchdog {
            tokio::spawn(watchdog.clone().feed_forever());
        }
        let status = options.status_file.clone().map(Status::new);
        let result = serve(config, status).await;
        // Only a stop that was asked for disarms; a failure leaves the
        // watchdog armed for whatever starts next, or else resets the box.
        if let (Ok(()), Some(watchdog)) = (&result, &watchdog) {
            watchdog.disarm();
        }
        result
    })
}

/// The longest the runtime's timer goes without a deadline of its own.
///
/// Tokio's timer wakes its driver (a write to an eventfd, and an extra
/// return from `epoll_wait`) whenever a new deadline comes before the
/// earliest one it already holds. With nothing else pending, that is every
/// connection's first deadline: the mux's peek, the TLS handshake, the
/// upstream connect. A deadline that is never more than this far away keeps
/// theirs (seconds away with the default timeouts) from ever being the
/// earliest, for the price of one wakeup per period.
const TIMER_HORIZON: Duration = Duration::from_secs(1);

async fn hold_timer_horizon() {
    let mut tick = tokio::time::interval(TIMER_HORIZON);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

fn init_logging(filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(use_colour())
        .init();
}

/// Colour only on a terminal, and never when `NO_COLOR` is set
/// (no-color.org): a serial console is a terminal that is read as a log.
fn use_colour() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::io::IsTerminal::is_terminal(&std::io::stderr())
}

async fn serve(config: Config, status: Option<Status>) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let registry = Arc::new(registry(&config.metrics, &metrics));

    let store = cert_store(&config)?;
    let tls = mux::tls::server_config(Arc::clone(&store))?;
    let mut services = Services::new();
    services.register(ServiceName::Https, Https::new());

    let mux = Mux::new(config.mux.clone(), tls, services, Arc::clone(&metrics));
    let listeners = mux.bind().context("cannot listen")?;
    let self_check = listeners
        .first()
        .map(|l| l.local_addr())
        .transpose()?
        .map(loopback_for);
    for listener in listeners {
        info!(addr = %listener.local_addr()?, "mux listening");
        tokio::spawn(Arc::clone(&mux).serve(listener));
    }
    if let Some(status) = &status {
        starting_status(status, config.update.as_ref()).await;
        if let Some(addr) = self_check {
            tokio::spawn(status.clone().track_addresses(addr.port()));
        }
    }
    if let (Some(update), Some(addr)) = (config.update.clone(), self_check) {
        tokio::spawn(supervise_slot(update, addr, status.clone()));
    }

    let hup = Arc::new(Notify::new());
    if !config.tls.certificates.is_empty() {
        let reloader = mux::reload::run(
            config.tls.certificates.clone(),
            Arc::clone(&store),
            Arc::clone(&metrics),
            Arc::clone(&hup),
        );
        tokio::spawn(async move {
            if let Err(e) = reloader.await {
                warn!(error = %e, "certificate files are not watched; SIGHUP still reloads");
            }
        });
    }
    if let Some(acme) = config.tls.acme.clone() {
        tokio::spawn(mux::acme::run(
            acme,
            Arc::clone(&store),
            Arc::clone(&metrics),
        ));
    }
    if let Some(addr) = config.metrics.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        info!(%addr, "metrics listening");
        tokio::spawn(serve_metrics(listener, registry));
    }
    info!(version = env!("CARGO_PKG_VERSION"), "edge ready");
    wait_for_signals(&hup).await
}

/// The address the box reaches its own listener at.
fn loopback_for(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// Proves the running slot healthy and marks it good, or reboots so that the
/// boot script counts a failed try and, after three, falls back.
async fn supervise_slot(update: UpdateConfig, addr: SocketAddr, status: Option<Status>) {
    let verdict = after_boot_check(&update, addr).await;
    if let Some(status) = &status {
        let slot = match &verdict {
            Ok(Verdict::MarkedGood(_) | Verdict::AwaitingReboot(_)) => "marked good".to_owned(),
            Ok(Verdict::Unhealthy) => format!(
                "unhealthy: its health check did not pass within {}",
                humantime::format_duration(update.health_deadline)
            ),
            Err(e) => format!("not supervised: {e}"),
        };
        report_slot(status, &update, &slot, None).await;
    }
    match verdict {
        Ok(Verdict::MarkedGood(_)) => {
            if let Some(url) = update.channel.clone() {
                let pending = poll_channel(update.clone(), url).await;
                reboot_into(&update, &pending, status.as_ref()).await;
            }
        }
        Ok(Verdict::AwaitingReboot(pending)) => {
            reboot_into(&update, &pending, status.as_ref()).await;
        }
        Ok(Verdict::Unhealthy) if update.reboot => reboot("the health check did not pass in time"),
        Ok(Verdict::Unhealthy) => warn!("unhealthy; not rebooting, as configured"),
        Err(e) => warn!(error = %e, "slot supervision unavailable"),
    }
}

/// The first lines of the status file: the version, and the slot as the
/// boot script named it on the kernel command line; without an `[update]`
/// section nothing supervises it.
async fn starting_status(status: &Status, update: Option<&UpdateConfig>) {
    let version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("EDGE_GIT_REV"), ")");
    let cmdline = update.map_or(Path::new("/proc/cmdline"), |u| u.cmdline.as_path());
    let cmdline = std::fs::read_to_string(cmdline);
    let slot = match (cmdline.ok().as_deref().and_then(booted_slot), update) {
        (Some(slot), Some(_)) => format!("{slot}, starting"),
        (Some(slot), None) => format!("{slot}, not supervised: no [update] section"),
        (None, _) => "unknown: not started by the edge boot script".to_owned(),
    };
    status
        .update([
            (Field::Version, Some(version.to_owned())),
            (Field::Slot, Some(slot)),
        ])
        .await;
}

/// Rewrites the slot line with what supervision made of the running slot
/// (`what`), and the boot order, update and rollback lines from the boot
/// state and the updater's record, all in one write. `waiting`, when given,
/// is the update line.
async fn report_slot(status: &Status, update: &UpdateConfig, what: &str, waiting: Option<String>) {
    let facts = (|| {
        let cmdline = std::fs::read_to_string(&update.cmdline).ok();
        let booted = cmdline.as_deref().and_then(booted_slot);
        let partitions = Partitions::discover(&update.sys_root, &update.dev_root)?;
        let boot = read_boot_state(&partitions.bootstate)?.state;
        let state = UpdateState::load(&update.state_dir)?;
        Ok::<_, UpdateError>((booted, boot, state))
    })();
    let (booted, boot, state) = match facts {
        Ok(facts) => facts,
        Err(e) => {
            warn!(error = %e, "cannot read the slots for the status file");
            return status.set(Field::Slot, what).await;
        }
    };
    let slot = booted.map_or_else(|| "unknown".to_owned(), |slot| slot.to_string());
    let [first, second] = boot.order();
    let order = format!(
        "{first} {second} (tries left: {first} {}, {second} {})",
        boot.tries_left(first),
        boot.tries_left(second)
    );
    let rollback = state
        .last_rollback
        .as_ref()
        .map(|rollback| format!("{}: {}", rollback.version, rollback.reason));
    let waiting = waiting.or_else(|| {
        state
            .pending
            .as_ref()
            .filter(|pending| Some(pending.slot.as_str()) != booted.map(|s| s.as_str()))
            .map(|pending| format!("{} installed into slot {}", pending.version, pending.slot))
    });
    status
        .update([
            (Field::Slot, Some(format!("{slot}, {what}"))),
            (Field::BootOrder, Some(order)),
            (Field::LastRollback, rollback),
            (Field::Update, waiting),
        ])
        .await;
}

/// Reboots into an installed update once its reboot window allows.
async fn reboot_into(update: &UpdateConfig, pending: &Pending, status: Option<&Status>) {
    let window = update.reboot_window.as_ref();
    if let Some(status) = status {
        let when = match window {
            _ if !update.reboot => "not rebooting, as configured".to_owned(),
            Some(window) => format!("reboots into it inside {window} UTC"),
            None => "rebooting into it".to_owned(),
        };
        let line = format!(
            "{} installed into slot {}; {when}",
            pending.version, pending.slot
        );
        // The install switched the boot order; the running slot was marked
        // good before anything was installed.
        report_slot(status, update, "marked good", Some(line)).await;
    }
    wait_for_reboot_window(window, pending, SystemTime::now).await;
    if update.reboot {
        reboot("update installed");
    } else {
        warn!("update installed; not rebooting, as configured");
    }
}

/// Flushes the filesystems and restarts the machine.
pub fn reboot(why: &str) {
    warn!(why, "rebooting");
    nix::unistd::sync();
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    warn!(error = %e, "reboot failed");
}

/// The fallback self-signed certificate, then the configured files on top.
/// A file that fails to load at start-up is an error: the box would
/// otherwise serve the fallback for a name the operator configured.
fn cert_store(config: &Config) -> anyhow::Result<Arc<CertStore>> {
    let names = match (&config.tls.acme, config.tls.self_signed_names.is_empty()) {
        (_, false) => config.tls.self_signed_names.clone(),
        (Some(acme), true) => acme.domains.clone(),
        (None, true) => Vec::new(),
    };
    let store = CertStore::new(certs::self_signed(&names)?);
    let files = mux::reload::load_files(&config.tls.certificates)?;
    store.replace(Source::Files, files);
    Ok(store)
}

fn registry(config: &MetricsConfig, metrics: &Metrics) -> Registry {
    let mut registry = match &config.edge_id {
        Some(id) => Registry::with_labels(
            [(
                std::borrow::Cow::Borrowed("edge_id"),
                std::borrow::Cow::Owned(id.clone()),
            )]
            .into_iter(),
        ),
        None => Registry::default(),
    };
    metrics.register(&mut registry);
    registry
}

async fn serve_metrics(listener: tokio::net::TcpListener, registry: Arc<Registry>) {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = Arc::clone(&registry);
            async move {
                let mut text = String::new();
                if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
                    warn!(error = %e, "cannot encode metrics");
                }
                (
                    [(
                        CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    text,
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %e, "metrics endpoint stopped");
    }
}

async fn wait_for_signals(hup: &Notify) -> anyhow::Result<()> {
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = sighup.recv() => {
                info!("SIGHUP: reloading certificates");
                hup.notify_one();
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    info!("shutting down");
    Ok(())
}
