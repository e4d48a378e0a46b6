//! When the box may reboot into an installed update: a daily maintenance
//! window, in UTC.
//!
//! Pure: the shell passes the wall clock in ([`reboot_at`]) and does the
//! waiting itself (`supervise::wait_for_reboot_window`). The box has no time
//! zone, so a window is two times of day in UTC, `"02:00-04:00"`; one whose
//! end is earlier than its start wraps midnight (`"23:30-01:00"`). The start
//! is inside the window, the end is not. A window whose start equals its end
//! is refused: it could mean "never" or "always", and the operator who wants
//! "always" leaves the key out.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

/// Seconds in a UTC day (UNIX time has no leap seconds).
const DAY: u32 = 86_400;

/// 2020-01-01T00:00:00Z. A wall clock earlier than this was never set: a
/// box without a battery-backed clock that has not synchronised yet.
pub const CLOCK_SET_AFTER: u64 = 1_577_836_800;

/// A daily window, `start` inclusive, `end` exclusive, in seconds of the
/// UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct RebootWindow {
    start: u32,
    end: u32,
}

/// Why a window was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// Not two `HH:MM` times joined by `-`.
    #[error("expected \"HH:MM-HH:MM\" in UTC, like \"02:00-04:00\", not {0:?}")]
    Format(String),
    /// The start and the end are the same time of day.
    #[error("{0:?} starts where it ends; leave the key out to reboot at once")]
    Empty(String),
}

impl RebootWindow {
    /// Whether `second` of the UTC day is inside the window.
    pub fn contains(&self, second: u32) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&second)
        } else {
            second >= self.start || second < self.end
        }
    }

    /// Seconds from `second` of the UTC day until the window opens; zero
    /// inside it.
    pub fn until_open(&self, second: u32) -> u32 {
        if self.contains(second) {
            return 0;
        }
        (self.start + DAY - second % DAY) % DAY
    }
}

impl FromStr for RebootWindow {
    type Err = WindowError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let format = || WindowError::Format(text.to_owned());
        let (start, end) = text.split_once('-').ok_or_else(format)?;
        let window = Self {
            start: time_of_day(start).ok_or_else(format)?,
            end: time_of_day(end).ok_or_else(format)?,
        };
        if window.start == window.end {
            return Err(WindowError::Empty(text.to_owned()));
        }
        Ok(window)
    }
}

/// For the configuration file, whose error names the key besides showing
/// its line.
impl TryFrom<String> for RebootWindow {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
            .map_err(|e| format!("update.reboot_window: {e}"))
    }
}

impl fmt::Display for RebootWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hm = |s: u32| (s / 3600, s % 3600 / 60);
        let ((sh, sm), (eh, em)) = (hm(self.start), hm(self.end));
        write!(f, "{sh:02}:{sm:02}-{eh:02}:{em:02}")
    }
}

/// `HH:MM`, exactly two digits each, as seconds of the day.
fn time_of_day(text: &str) -> Option<u32> {
    let (hours, minutes) = text.split_once(':')?;
    let two_digits = |s: &str| {
        (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    let (hours, minutes) = (two_digits(hours)?, two_digits(minutes)?);
    (hours < 24 && minutes < 60).then_some(hours * 3600 + minutes * 60)
}

/// When to reboot into an installed update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reboot {
    /// No window is configured, or the clock is inside it.
    Now,
    /// A window is configured but the clock reads before 2020: the time of
    /// day means nothing, and waiting for a clock that may never be set
    /// could hold the update back forever, so the box reboots at once.
    NowClockUnset,
    /// Wait `wait`, until the window opens at `opens`.
    Wait {
        /// From now until the window opens.
        wait: Duration,
        /// The start of the next window.
        opens: SystemTime,
    },
}

/// When to reboot, for a box whose wall clock reads `now`.
pub fn reboot_at(window: Option<&RebootWindow>, now: SystemTime) -> Reboot {
    let Some(window) = window else {
        return Reboot::Now;
    };
    let unix = match now.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) if since.as_secs() >= CLOCK_SET_AFTER => since.as_secs(),
        _ => return Reboot::NowClockUnset,
    };
    let second = u32::try_from(unix % u64::from(DAY)).expect("a remainder of a day fits in u32");
    match window.until_open(second) {
        0 => Reboot::Now,
        wait => Reboot::Wait {
            wait: Duration::from_secs(wait.into()),
            opens: SystemTime::UNIX_EPOCH + Duration::from_secs(unix + u64::from(wait)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-03T00:00:00Z: a midnight, with the clock set.
    const DAY_START: u64 = 1_796_256_000;
    const _: () = assert!(DAY_START.is_multiple_of(DAY as u64) && DAY_START > CLOCK_SET_AFTER);

    fn window(text: &str) -> RebootWindow {
        text.parse().expect("a valid window")
    }

    fn at(h: u32, m: u32, s: u32) -> u32 {
        h * 3600 + m * 60 + s
    }

    fn clock(h: u32, m: u32, s: u32) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(DAY_START + u64::from(at(h, m, s)))
    }

    #[test]
    fn a_window_reads_back_as_written() {
        for text in ["02:00-04:00", "23:30-01:00", "00:00-23:59", "22:00-00:00"] {
            assert_eq!(window(text).to_string(), text);
        }
    }

    #[test]
    fn inside_and_outside_a_window_within_the_day() {
        let w = window("02:00-04:00");
        assert!(w.contains(at(3, 0, 0)));
        assert_eq!(w.until_open(at(3, 0, 0)), 0);
        assert_eq!(w.until_open(at(1, 0, 0)), 3600);
        assert_eq!(w.until_open(at(20, 0, 0)), at(6, 0, 0));
        assert_eq!(w.until_open(0), at(2, 0, 0));
    }

    #[test]
    fn the_start_is_inside_and_the_end_is_not() {
        let w = window("02:00-04:00");
        assert_eq!(w.until_open(at(1, 59, 59)), 1);
        assert_eq!(w.until_open(at(2, 0, 0)), 0);
        assert_eq!(w.until_open(at(3, 59, 59)), 0);
        assert_eq!(w.until_open(at(4, 0, 0)), DAY - at(2, 0, 0));
    }

    #[test]
    fn a_window_may_wrap_midnight() {
        let w = window("23:30-01:00");
        assert_eq!(w.until_open(at(23, 30, 0)), 0);
        assert_eq!(w.until_open(at(23, 59, 59)), 0);
        assert_eq!(w.until_open(0), 0);
        assert_eq!(w.until_open(at(0, 59, 59)), 0);
        assert_eq!(w.until_open(at(1, 0, 0)), at(22, 30, 0));
        assert_eq!(w.until_open(at(23, 29, 59)), 1);
        assert_eq!(w.until_open(at(12, 0, 0)), at(11, 30, 0));
    }

    #[test]
    fn a_window_ending_at_midnight_wraps_to_nothing() {
        let w = window("22:00-00:00");
        assert_eq!(w.until_open(at(23, 59, 59)), 0);
        assert_eq!(w.until_open(0), at(22, 0, 0));
    }

    #[test]
    fn a_window_starting_at_midnight() {
        let w = window("00:00-00:01");
        assert_eq!(w.until_open(0), 0);
        assert_eq!(w.until_open(59), 0);
        assert_eq!(w.until_open(60), DAY - 60);
        assert_eq!(w.until_open(DAY - 1), 1);
    }

    #[test]
    fn equal_start_and_end_is_refused() {
        assert_eq!(
            "03:00-03:00".parse::<RebootWindow>(),
            Err(WindowError::Empty("03:00-03:00".into()))
        );
        assert!("00:00-00:00".parse::<RebootWindow>().is_err());
    }

    #[test]
    fn malformed_windows_are_refused() {
        let bad = [
            "",
            "02:00",
            "02:00-",
            "-04:00",
            "2:00-4:00",
            "02:00 - 04:00",
            " 02:00-04:00",
            "02:00-04:00 ",
            "24:00-01:00",
            "23:00-24:00",
            "02:60-04:00",
            "02-04",
            "0200-0400",
            "02:00:00-04:00:00",
            "+2:00-04:00",
            "02:0a-04:00",
            "02:00-04:00-05:00",
            "２２:00-04:00",
        ];
        for text in bad {
            assert_eq!(
                text.parse::<RebootWindow>(),
                Err(WindowError::Format(text.into())),
                "{text:?}"
            );
        }
    }

    #[test]
    fn the_error_says_what_is_expected() {
        let e = "2am-4am".parse::<RebootWindow>().expect_err("refused");
        assert!(e.to_string().contains("HH:MM-HH:MM"), "{e}");
        assert!(e.to_string().contains("2am-4am"), "{e}");
    }

    #[test]
    fn without_a_window_the_reboot_is_now() {
        assert_eq!(reboot_at(None, clock(12, 0, 0)), Reboot::Now);
        assert_eq!(reboot_at(None, SystemTime::UNIX_EPOCH), Reboot::Now);
    }

    #[test]
    fn inside_the_window_the_reboot_is_now() {
        let w = window("02:00-04:00");
        assert_eq!(reboot_at(Some(&w), clock(2, 0, 0)), Reboot::Now);
        assert_eq!(reboot_at(Some(&w), clock(3, 59, 59)), Reboot::Now);
    }

    #[test]
    fn outside_the_window_the_reboot_waits_for_its_next_start() {
        let w = window("02:00-04:00");
        assert_eq!(
            reboot_at(Some(&w), clock(20, 0, 0)),
            Reboot::Wait {
                wait: Duration::from_secs(6 * 3600),
                opens: clock(2, 0, 0) + Duration::from_secs(DAY.into()),
            }
        );
        assert_eq!(
            reboot_at(Some(&w), clock(1, 0, 0)),
            Reboot::Wait {
                wait: Duration::from_secs(3600),
                opens: clock(2, 0, 0),
            }
        );
    }

    #[test]
    fn sub_seconds_do_not_move_the_opening() {
        let w = window("02:00-04:00");
        let now = clock(1, 0, 0) + Duration::from_millis(999);
        let Reboot::Wait { opens, .. } = reboot_at(Some(&w), now) else {
            panic!("outside the window");
        };
        assert_eq!(opens, clock(2, 0, 0));
    }

    #[test]
    fn an_unset_clock_reboots_now() {
        let w = window("02:00-04:00");
        let cases = [
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH + Duration::from_secs(CLOCK_SET_AFTER - 1),
            SystemTime::UNIX_EPOCH - Duration::from_secs(1),
        ];
        for now in cases {
            assert_eq!(reboot_at(Some(&w), now), Reboot::NowClockUnset, "{now:?}");
        }
        let first_trusted = SystemTime::UNIX_EPOCH + Duration::from_secs(CLOCK_SET_AFTER);
        assert!(matches!(
            reboot_at(Some(&w), first_trusted),
            Reboot::Wait { .. }
        ));
    }
}
