//! Latency samples and their percentiles.

use std::io;
use std::time::Duration;

/// Handshake times of one target in one test, plus the attempts that failed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Samples {
    times: Vec<Duration>,
    /// Connections that failed; they have no time.
    pub(crate) errors: u64,
}

impl Samples {
    /// Adds the outcome of one connection.
    pub(crate) fn record(&mut self, outcome: io::Result<Duration>) {
        match outcome {
            Ok(took) => self.times.push(took),
            Err(_) => self.errors += 1,
        }
    }

    /// Number of timed connections.
    pub(crate) fn len(&self) -> usize {
        self.times.len()
    }

    /// Median in milliseconds; NaN without samples.
    pub(crate) fn p50_ms(&self) -> f64 {
        self.percentile_ms(0.50)
    }

    /// 99th percentile in milliseconds; NaN without samples.
    pub(crate) fn p99_ms(&self) -> f64 {
        self.percentile_ms(0.99)
    }

    /// Nearest-rank percentile: the smallest sample with at least `p` of all
    /// samples at or below it.
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.times.is_empty() {
            return f64::NAN;
        }
        let mut sorted = self.times.clone();
        sorted.sort_unstable();
        let rank = (p * sorted.len() as f64).ceil() as usize;
        let index = rank.clamp(1, sorted.len()) - 1;
        sorted[index].as_secs_f64() * 1e3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(ms: impl IntoIterator<Item = u64>) -> Samples {
        let mut s = Samples::default();
        for m in ms {
            s.record(Ok(Duration::from_millis(m)));
        }
        s
    }

    #[test]
    fn nearest_rank() {
        let s = samples((1..=100).rev());
        assert_eq!(s.p50_ms(), 50.0);
        assert_eq!(s.p99_ms(), 99.0);
        assert_eq!(samples([7]).p99_ms(), 7.0);
    }

    #[test]
    fn errors_have_no_time() {
        let mut s = samples([3]);
        s.record(Err(io::ErrorKind::ConnectionReset.into()));
        assert_eq!((s.len(), s.errors), (1, 1));
        assert!(Samples::default().p50_ms().is_nan());
    }
}
