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
        percentile_ms(&mut self.times.clone(), p)
    }
}

/// Nearest-rank percentile of `times` in milliseconds, reordering them; NaN
/// when there are none.
fn percentile_ms(times: &mut [Duration], p: f64) -> f64 {
    if times.is_empty() {
        return f64::NAN;
    }
    let rank = (p * times.len() as f64).ceil() as usize;
    let index = rank.clamp(1, times.len()) - 1;
    let (_, nth, _) = times.select_nth_unstable(index);
    nth.as_secs_f64() * 1e3
}

/// Resamples behind [`difference_interval`].
const RESAMPLES: usize = 1000;

/// How far apart the `p` percentiles of `a` and `b` could be, judging by
/// these samples alone: the 95% percentile-bootstrap interval of
/// `percentile(a) - percentile(b)` in milliseconds, each set resampled with
/// replacement. The seed is fixed, so the same samples give the same
/// interval. It speaks of this run's sampling noise only, not of the drift
/// between runs. `None` when either set is empty.
pub(crate) fn difference_interval(a: &Samples, b: &Samples, p: f64) -> Option<(f64, f64)> {
    if a.times.is_empty() || b.times.is_empty() {
        return None;
    }
    let mut state = 0x5eed;
    let mut scratch = Vec::new();
    let mut resampled = |from: &[Duration], state: &mut u64| {
        scratch.clear();
        scratch.extend(
            (0..from.len()).map(|_| from[(splitmix64(state) % from.len() as u64) as usize]),
        );
        percentile_ms(&mut scratch, p)
    };
    let mut differences: Vec<f64> = (0..RESAMPLES)
        .map(|_| resampled(&a.times, &mut state) - resampled(&b.times, &mut state))
        .collect();
    differences.sort_unstable_by(f64::total_cmp);
    let at = |q: f64| differences[((q * RESAMPLES as f64) as usize).min(RESAMPLES - 1)];
    Some((at(0.025), at(0.975)))
}

/// The splitmix64 generator: small, fast, and the same sequence everywhere
/// for a seed, which is all the bench's shuffles and resamples need.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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
    fn the_interval_holds_a_real_difference_and_not_a_false_one() {
        // Two sets drawn from the same spread: zero lies inside.
        let a = samples((0..2000).map(|i| 100 + (i * 7919) % 50));
        let b = samples((0..2000).map(|i| 100 + (i * 104_729) % 50));
        let (lo, hi) = difference_interval(&a, &b, 0.5).expect("samples");
        assert!(lo <= 0.0 && 0.0 <= hi, "{lo}..{hi}");
        assert!(hi - lo < 10.0, "{lo}..{hi}");
        // The same spread 20 ms later: the interval is around +20.
        let c = samples((0..2000).map(|i| 120 + (i * 104_729) % 50));
        let (lo, hi) = difference_interval(&c, &a, 0.5).expect("samples");
        assert!(lo > 10.0 && hi < 30.0, "{lo}..{hi}");
        assert_eq!(difference_interval(&a, &Samples::default(), 0.5), None);
    }

    #[test]
    fn errors_have_no_time() {
        let mut s = samples([3]);
        s.record(Err(io::ErrorKind::ConnectionReset.into()));
        assert_eq!((s.len(), s.errors), (1, 1));
        assert!(Samples::default().p50_ms().is_nan());
    }
}
