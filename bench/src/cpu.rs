//! The whole machine's CPU time, from the first line of `/proc/stat`.
//!
//! The connection-rate test keeps every core busy, so a target's rate is set
//! by the CPU time one connection costs on the whole machine: the client's,
//! the server's, the proxy's, and the kernel's work for all of them. Reading
//! that cost beside each rate shows where a ratio comes from.

use std::io;
use std::ops::{AddAssign, Sub};
use std::time::Duration;

/// Clock ticks per second in `/proc/stat` (`USER_HZ`): fixed at 100 by the
/// kernel's user-space ABI on x86-64 and aarch64, whatever the kernel's own
/// tick rate.
const USER_HZ: u64 = 100;

/// CPU time spent by all cores, split by where it went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CpuTime {
    /// Time in user space (`user` and `nice`).
    pub(crate) user: Duration,
    /// Time in the kernel (`system`, `irq` and `softirq`): on loopback that
    /// is mostly TCP, which runs in the sender's system call or softirq.
    pub(crate) kernel: Duration,
    /// Time no task wanted (`idle` and `iowait`).
    pub(crate) idle: Duration,
}

impl CpuTime {
    /// Reads the counters since boot.
    pub(crate) fn now() -> io::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        Self::parse(&stat).ok_or_else(|| io::Error::other("/proc/stat has no aggregate cpu line"))
    }

    /// Parses the aggregate `cpu` line of `/proc/stat`. Steal time (the
    /// hypervisor's) and guest time (already inside `user`) are left out.
    fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().next()?;
        let mut fields = line.split_ascii_whitespace();
        if fields.next()? != "cpu" {
            return None;
        }
        let ticks: Vec<u64> = fields
            .take(7)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let &[user, nice, system, idle, iowait, irq, softirq] = ticks.as_slice() else {
            return None;
        };
        let time = |ticks: u64| Duration::from_millis(ticks * 1000 / USER_HZ);
        Some(Self {
            user: time(user + nice),
            kernel: time(system + irq + softirq),
            idle: time(idle + iowait),
        })
    }

    /// Time some task ran.
    pub(crate) fn busy(&self) -> Duration {
        self.user + self.kernel
    }
}

impl Sub for CpuTime {
    type Output = CpuTime;

    fn sub(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(earlier.user),
            kernel: self.kernel.saturating_sub(earlier.kernel),
            idle: self.idle.saturating_sub(earlier.idle),
        }
    }
}

impl AddAssign for CpuTime {
    fn add_assign(&mut self, other: CpuTime) {
        self.user += other.user;
        self.kernel += other.kernel;
        self.idle += other.idle;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_aggregate_line() {
        let stat = "cpu  100 5 40 800 10 2 8 3 0 0\ncpu0 50 2 20 400 5 1 4 1 0 0\n";
        let t = CpuTime::parse(stat).expect("an aggregate line");
        assert_eq!(t.user, Duration::from_millis(1050));
        assert_eq!(t.kernel, Duration::from_millis(500));
        assert_eq!(t.idle, Duration::from_millis(8100));
        assert_eq!(t.busy(), Duration::from_millis(1550));
    }

    #[test]
    fn refuses_what_is_not_the_aggregate_line() {
        assert_eq!(CpuTime::parse("cpu0 1 2 3 4 5 6 7\n"), None);
        assert_eq!(CpuTime::parse("cpu 1 2 3\n"), None);
        assert_eq!(CpuTime::parse(""), None);
    }

    #[test]
    fn this_machine_has_counted_some_time() {
        assert!(CpuTime::now().expect("/proc/stat").busy() > Duration::ZERO);
    }
}
