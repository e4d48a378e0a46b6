//! Feeding the system watchdog, so that a box whose `edge` hangs is reset.
//!
//! `edge run --watchdog /dev/watchdog` opens the device, which arms it, asks
//! for [`TIMEOUT`], and writes to it every third of the timeout the driver
//! granted, from a task on the same runtime as everything else: a runtime
//! that stops scheduling stops the feeding, and the hardware resets the
//! board into the boot chooser, which counts the try. A clean stop (SIGTERM,
//! SIGINT) writes the magic `V` first, which disarms drivers that allow it.
//! An exit without it (a crash) leaves the watchdog armed: busybox init
//! starts `edge` again, which opens and feeds it again, well within the
//! timeout.
//!
//! Which device, if any, is the platform's choice, not the partner's: the
//! system start passes it, and the configuration file does not name it.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::sys;

/// The timeout asked of the driver: long enough for a slow start of the
/// runtime, short enough that a hung box is back within a minute.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// An armed watchdog.
#[derive(Debug, Clone)]
pub struct Watchdog {
    device: Arc<File>,
    timeout: Duration,
}

impl Watchdog {
    /// Opens (and so arms) `path`, and asks for [`TIMEOUT`]. A driver that
    /// refuses the timeout keeps its own, which is then used.
    pub fn open(path: &Path) -> io::Result<Self> {
        let device = OpenOptions::new().write(true).open(path)?;
        let asked = u32::try_from(TIMEOUT.as_secs()).unwrap_or(u32::MAX);
        let timeout = match sys::set_watchdog_timeout(&device, asked) {
            Ok(granted) if granted > 0 => Duration::from_secs(u64::from(granted)),
            Ok(_) => TIMEOUT,
            Err(e) => {
                warn!(error = %e, "the watchdog keeps its own timeout; assuming it is {TIMEOUT:?}");
                TIMEOUT
            }
        };
        Ok(Self {
            device: Arc::new(device),
            timeout,
        })
    }

    /// The timeout in force.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How often [`Watchdog::feed_forever`] writes.
    pub fn interval(&self) -> Duration {
        self.timeout / 3
    }

    /// One keep-alive: any write other than `V` counts, and also cancels a
    /// `V` written before, so the device stays armed.
    pub fn feed(&self) -> io::Result<()> {
        (&*self.device).write_all(b"\n")
    }

    /// Feeds at [`Watchdog::interval`] until the task is dropped.
    pub async fn feed_forever(self) {
        info!(
            timeout_s = self.timeout.as_secs(),
            "watchdog armed, fed every {:?}",
            self.interval()
        );
        let mut ticks = tokio::time::interval(self.interval());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(e) = self.feed() {
                warn!(error = %e, "cannot feed the watchdog");
            }
        }
    }

    /// Writes the magic `V`: drivers that allow it disarm when the device is
    /// then closed, which happens when the process exits.
    pub fn disarm(&self) {
        match (&*self.device).write_all(b"V") {
            Ok(()) => info!("watchdog disarmed"),
            Err(e) => warn!(error = %e, "cannot disarm the watchdog"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A regular file stands in for the device: it takes writes and refuses
    /// the timeout ioctl, as a driver without WDIOC_SETTIMEOUT does.
    fn fake() -> (tempfile::TempDir, std::path::PathBuf, Watchdog) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("watchdog");
        std::fs::write(&path, b"").expect("create the stand-in");
        let watchdog = Watchdog::open(&path).expect("open the stand-in");
        (dir, path, watchdog)
    }

    #[test]
    fn a_driver_without_the_timeout_ioctl_gets_the_default() {
        let (_dir, _, watchdog) = fake();
        assert_eq!(watchdog.timeout(), TIMEOUT);
        assert_eq!(watchdog.interval(), TIMEOUT / 3);
    }

    #[tokio::test(start_paused = true)]
    async fn feeds_every_third_of_the_timeout_and_disarms_with_v() {
        let (_dir, path, watchdog) = fake();
        let feeder = tokio::spawn(watchdog.clone().feed_forever());
        // The first tick is at once; then one per interval.
        tokio::time::sleep(watchdog.interval() * 3 + Duration::from_millis(1)).await;
        feeder.abort();
        watchdog.disarm();
        let written = std::fs::read(&path).expect("read the stand-in");
        assert_eq!(written, b"\n\n\n\nV");
    }

    #[test]
    fn a_missing_device_is_an_error() {
        let dir = tempfile::tempdir().expect("temporary directory");
        assert!(Watchdog::open(&dir.path().join("none")).is_err());
    }
}
