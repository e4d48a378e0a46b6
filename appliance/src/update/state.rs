//! What the updater remembers across reboots, and what it decides at boot.
//!
//! The state is a small postcard record behind a version byte, on the data
//! partition, replaced by write-temp-fsync-rename so a power cut leaves the
//! old record or the new one, never a torn one. [`after_boot`] is pure: from
//! that record, the boot state and the running slot it tells the shell what
//! to do before and after the health check.

use std::fs;
use std::path::Path;

use image::bootstate::{BootState, Slot, UpdateOutcome};
use serde::{Deserialize, Serialize};

use super::UpdateError;

/// Version byte in front of the record; a record with another is not read.
const FORMAT: u8 = 1;

/// File name of the record in the state directory.
const FILE: &str = "update.state";

/// Failed versions remembered; the oldest is forgotten first.
const MAX_FAILED: usize = 16;

/// The updater's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateState {
    /// Security version of the software that last marked itself good.
    pub installed_security_version: u64,
    /// An installed update waiting to prove itself.
    pub pending: Option<Pending>,
    /// Versions that rolled back; not installed again automatically.
    pub failed_versions: Vec<String>,
    /// The last rollback, for the status page and metrics.
    pub last_rollback: Option<Rollback>,
}

/// An update installed into a slot, not yet marked good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Software version of the bundle.
    pub version: String,
    /// Its security version, recorded as installed once it marks itself good.
    pub security_version: u64,
    /// The slot it went to, `A` or `B`.
    pub slot: String,
}

/// A recorded rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    /// The version that did not come up healthy.
    pub version: String,
    /// Why the box says it rolled back.
    pub reason: String,
}

impl UpdateState {
    /// Reads the record from `dir`; a missing file is the empty record.
    pub fn load(dir: &Path) -> Result<Self, UpdateError> {
        let path = dir.join(FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(UpdateError::io(format!("reading {}", path.display()), e)),
        };
        match bytes.split_first() {
            Some((&FORMAT, record)) => postcard::from_bytes(record)
                .map_err(|e| UpdateError::State(format!("{}: {e}", path.display()))),
            Some((other, _)) => Err(UpdateError::State(format!(
                "{}: unknown format {other}",
                path.display()
            ))),
            None => Err(UpdateError::State(format!("{}: empty", path.display()))),
        }
    }

    /// Replaces the record in `dir` so that a power cut leaves the old record
    /// or the new one.
    pub fn save(&self, dir: &Path) -> Result<(), UpdateError> {
        let mut bytes = vec![FORMAT];
        bytes.extend(
            postcard::to_stdvec(self).map_err(|e| UpdateError::State(format!("encoding: {e}")))?,
        );
        fs::create_dir_all(dir)
            .map_err(|e| UpdateError::io(format!("creating {}", dir.display()), e))?;
        let path = dir.join(FILE);
        crate::durable::replace(&path, &bytes)
            .map_err(|e| UpdateError::io(format!("writing {}", path.display()), e))
    }

    /// Whether `version` rolled back before.
    pub fn has_failed(&self, version: &str) -> bool {
        self.failed_versions.iter().any(|v| v == version)
    }

    /// Records that the pending update rolled back, and forgets it.
    pub fn record_rollback(&mut self, reason: &str) {
        if let Some(pending) = self.pending.take() {
            if !self.has_failed(&pending.version) {
                self.failed_versions.push(pending.version.clone());
            }
            if self.failed_versions.len() > MAX_FAILED {
                self.failed_versions.remove(0);
            }
            self.last_rollback = Some(Rollback {
                version: pending.version,
                reason: reason.to_owned(),
            });
        }
    }

    /// Records that the running software is healthy: a pending update
    /// running in `booted` becomes the installed one.
    pub fn record_good(&mut self, booted: Slot) {
        if let Some(pending) = self.pending.take_if(|p| p.slot == booted.as_str()) {
            self.installed_security_version = self
                .installed_security_version
                .max(pending.security_version);
        }
    }
}

/// What the box does about updates once it is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterBoot {
    /// Run the health check; when it passes, mark the running slot good
    /// (and, if an update is pending in it, record it as installed).
    CheckHealth,
    /// The pending update did not stick: record the rollback with this
    /// reason, put the running slot first again, then check health as usual.
    RolledBack(String),
}

/// Decides what to do after a boot into `booted`, given the record and the
/// boot state the boot script left.
pub fn after_boot(state: &UpdateState, boot: &BootState, booted: Slot) -> AfterBoot {
    let Some(pending) = &state.pending else {
        return AfterBoot::CheckHealth;
    };
    let Ok(expected) = pending.slot.parse::<Slot>() else {
        return AfterBoot::RolledBack(format!("recorded slot {:?} is not a slot", pending.slot));
    };
    match boot.update_outcome(booted, expected) {
        UpdateOutcome::Trial { .. } | UpdateOutcome::Good => AfterBoot::CheckHealth,
        UpdateOutcome::RolledBack => AfterBoot::RolledBack(format!(
            "slot {expected} used up its tries without marking itself good"
        )),
        UpdateOutcome::NotSwitched => {
            AfterBoot::RolledBack(format!("slot {expected} was never made the next to boot"))
        }
        UpdateOutcome::Inconsistent => AfterBoot::RolledBack(format!(
            "slot {booted} runs although slot {expected} is first with tries left"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(slot: Slot) -> UpdateState {
        UpdateState {
            installed_security_version: 3,
            pending: Some(Pending {
                version: "2.0.0".into(),
                security_version: 4,
                slot: slot.as_str().into(),
            }),
            ..UpdateState::default()
        }
    }

    #[test]
    fn a_trial_boot_checks_health_then_commits() {
        let state = pending(Slot::B);
        let boot = BootState::default().switch_to(Slot::B);
        let (chosen, boot) = boot.choose();
        assert_eq!(chosen, Slot::B);
        assert_eq!(after_boot(&state, &boot, Slot::B), AfterBoot::CheckHealth);

        let mut state = state;
        state.record_good(Slot::B);
        assert_eq!(state.pending, None);
        assert_eq!(state.installed_security_version, 4);
    }

    #[test]
    fn three_failed_tries_are_a_rollback() {
        let mut boot = BootState::default().switch_to(Slot::B);
        for _ in 0..3 {
            boot = boot.choose().1;
        }
        let (chosen, boot) = boot.choose();
        assert_eq!(chosen, Slot::A, "the chooser falls back");
        let mut state = pending(Slot::B);
        let AfterBoot::RolledBack(reason) = after_boot(&state, &boot, Slot::A) else {
            panic!("not a rollback");
        };
        state.record_rollback(&reason);
        assert!(state.has_failed("2.0.0"));
        assert_eq!(state.installed_security_version, 3);
        assert_eq!(
            state.last_rollback.as_ref().map(|r| r.version.as_str()),
            Some("2.0.0")
        );
    }

    #[test]
    fn a_switch_that_never_reached_the_disk_is_not_run() {
        let boot = BootState::default();
        let state = pending(Slot::B);
        assert!(matches!(
            after_boot(&state, &boot, Slot::A),
            AfterBoot::RolledBack(_)
        ));
    }

    #[test]
    fn nothing_pending_just_checks_health() {
        let boot = BootState::default().choose().1;
        assert_eq!(
            after_boot(&UpdateState::default(), &boot, Slot::A),
            AfterBoot::CheckHealth
        );
    }

    #[test]
    fn the_record_survives_a_round_trip_and_refuses_other_formats() {
        let dir = std::env::temp_dir().join(format!("edge-state-{}", std::process::id()));
        let state = pending(Slot::A);
        state.save(&dir).expect("save");
        assert_eq!(UpdateState::load(&dir).expect("load"), state);

        let mut bytes = fs::read(dir.join(FILE)).expect("read");
        bytes[0] = 9;
        fs::write(dir.join(FILE), &bytes).expect("write");
        assert!(UpdateState::load(&dir).is_err());
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(
            UpdateState::load(&dir).expect("missing"),
            UpdateState::default()
        );
    }
}
