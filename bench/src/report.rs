//! The human-readable tables, the goals beside the measured figures, and the
//! one `name=value` line the script ends with.

use std::fmt::{self, Write as _};
use std::io::{self, Write as _};

use crate::client::{Kx, Target};
use crate::drive::{DriveArgs, DIRECT, NGINX, PASSTHROUGH, TERMINATE, TOKIO_PROXY, TWIN};
use crate::latency::Group;
use crate::rate::Rate;
use crate::slowloris::Outcome;
use crate::stats::{difference_interval, Samples};

/// Everything the driver measured.
#[derive(Debug)]
pub(crate) struct Report<'a> {
    /// The settings, for the table headings.
    pub(crate) args: &'a DriveArgs,
    /// Targets, in the order of every per-target list below.
    pub(crate) targets: &'a [Target],
    /// Handshake latency, X25519 first, then X25519MLKEM768.
    pub(crate) latency: &'a [Group],
    /// Connection rate per target.
    pub(crate) rates: &'a [Rate],
    /// The slowloris test.
    pub(crate) slowloris: &'a Outcome,
}

/// Writes the report to stdout; the ratio line is the last line.
pub(crate) fn print(report: &Report<'_>) -> io::Result<()> {
    let mut text = String::new();
    write_all(&mut text, report).map_err(io::Error::other)?;
    io::stdout().lock().write_all(text.as_bytes())
}

fn write_all(out: &mut String, r: &Report<'_>) -> fmt::Result {
    latency_table(out, r)?;
    rate_table(out, r)?;
    slowloris_table(out, r)?;
    let figures = Figures::of(r);
    goals(out, r, &figures)?;
    ratio_line(out, r, &figures)
}

fn latency_table(out: &mut String, r: &Report<'_>) -> fmt::Result {
    writeln!(
        out,
        "\nconnect + full TLS handshake, ms ({} per target and key exchange, interleaved)",
        r.args.handshakes
    )?;
    writeln!(
        out,
        "{:<16} {:<16} {:>8} {:>8} {:>10} {:>10} {:>6}",
        "key exchange", "target", "p50", "p99", "p50-direct", "p99-direct", "errors"
    )?;
    for group in r.latency {
        let direct = &group.per_target[DIRECT];
        for (target, s) in r.targets.iter().zip(&group.per_target) {
            writeln!(
                out,
                "{:<16} {:<16} {:>8.3} {:>8.3} {:>+10.3} {:>+10.3} {:>6}",
                group.kx.label(),
                target.label,
                s.p50_ms(),
                s.p99_ms(),
                s.p50_ms() - direct.p50_ms(),
                s.p99_ms() - direct.p99_ms(),
                s.errors
            )?;
        }
    }
    Ok(())
}

fn rate_table(out: &mut String, r: &Report<'_>) -> fmt::Result {
    writeln!(
        out,
        "\nnew connections per second ({} clients, {} x {} ms per target, interleaved, \
         client offers {})",
        r.args.rate_clients,
        r.args.rate_slices,
        r.args.rate_slice_ms,
        Kx::Default.label()
    )?;
    writeln!(
        out,
        "{:<16} {:>10} {:>10} {:>6} {:>12} {:>12} {:>6}",
        "target", "conn/s", "vs direct", "errors", "cpu us/conn", "kernel us", "busy"
    )?;
    let direct = r.rates[DIRECT].per_sec();
    for (target, rate) in r.targets.iter().zip(r.rates) {
        writeln!(
            out,
            "{:<16} {:>10.0} {:>10.3} {:>6} {:>12.0} {:>12.0} {:>5.0}%",
            target.label,
            rate.per_sec(),
            rate.per_sec() / direct,
            rate.errors,
            rate.cpu_us_per_conn(),
            rate.kernel_us_per_conn(),
            rate.busy_share() * 100.0
        )?;
    }
    writeln!(
        out,
        "cpu: the whole machine's (clients, servers, proxies and kernel) busy time per \
         completed connection; kernel: its part in system calls and softirq"
    )
}

fn slowloris_table(out: &mut String, r: &Report<'_>) -> fmt::Result {
    let s = r.slowloris;
    writeln!(
        out,
        "\nslowloris: mux terminate handshakes (X25519), ms, quiet and with {} idle \
         half-open connections from {} sources, {} alternating blocks",
        r.args.flood, r.args.flood_sources, r.args.slowloris_blocks
    )?;
    writeln!(
        out,
        "{:<16} {:>8} {:>8} {:>8} {:>6}",
        "phase", "p50", "p99", "n", "errors"
    )?;
    for (phase, samples) in [("quiet", &s.quiet), ("flooded", &s.flooded)] {
        writeln!(
            out,
            "{:<16} {:>8.3} {:>8.3} {:>8} {:>6}",
            phase,
            samples.p50_ms(),
            samples.p99_ms(),
            samples.len(),
            samples.errors
        )?;
    }
    let pending = s
        .edge_pending
        .map_or_else(|| "not read".to_owned(), |n| n.to_string());
    writeln!(
        out,
        "idle connections still open after each flooded block (fewest): {} of {}; \
         edge's mux_pending_connections during the flood: {}",
        s.still_open, r.args.flood, pending
    )
}

/// The figures the goals and the ratio line are made of.
#[derive(Debug)]
struct Figures {
    /// `[X25519, X25519MLKEM768]` p50 added over direct, ms.
    pass_added_p50: [f64; 2],
    nginx_added_p50: [f64; 2],
    tokio_added_p50: [f64; 2],
    /// `[X25519, X25519MLKEM768]` 95% interval of the passthrough's p50
    /// minus nginx's, ms.
    pass_vs_nginx_interval: [Option<(f64, f64)>; 2],
    pass_added_p99: f64,
    nginx_added_p99: f64,
    /// `[X25519, X25519MLKEM768]` p50 over direct's p50.
    term_ratio_p50: [f64; 2],
    term_ratio_p99: f64,
    /// `[X25519, X25519MLKEM768]` p50 over the twin's p50.
    term_twin_ratio_p50: [f64; 2],
    /// `[X25519, X25519MLKEM768]` the twin's p50 over direct's: what
    /// handling fewer of the handshakes costs an identical server.
    twin_ratio_p50: [f64; 2],
    rate_pass: f64,
    rate_nginx: f64,
    rate_tokio: f64,
    rate_term: f64,
    /// The whole machine's CPU time per connection to the bare server, us.
    cpu_direct: f64,
    /// What each passthrough adds to [`Self::cpu_direct`], us:
    /// `[mux, nginx, tokio proxy]`.
    cpu_added: [f64; 3],
    /// The kernel's part of the mux passthrough's added CPU time, us.
    kernel_added_pass: f64,
    flooded_p99: f64,
    quiet_p99: f64,
    /// 95% interval of the flooded p99 minus the quiet one, ms.
    flood_interval: Option<(f64, f64)>,
    errors: u64,
}

impl Figures {
    fn of(r: &Report<'_>) -> Self {
        let g = |i: usize, t: usize| &r.latency[i].per_target[t];
        let added_p50 = |i, t| g(i, t).p50_ms() - g(i, DIRECT).p50_ms();
        let ratio_p50 = |i, t, base| g(i, t).p50_ms() / g(i, base).p50_ms();
        let rate = |t: usize| r.rates[t].per_sec() / r.rates[DIRECT].per_sec();
        let cpu_added = |t: usize| r.rates[t].cpu_us_per_conn() - r.rates[DIRECT].cpu_us_per_conn();
        let kernel_added =
            |t: usize| r.rates[t].kernel_us_per_conn() - r.rates[DIRECT].kernel_us_per_conn();
        Self {
            pass_added_p50: [added_p50(0, PASSTHROUGH), added_p50(1, PASSTHROUGH)],
            nginx_added_p50: [added_p50(0, NGINX), added_p50(1, NGINX)],
            pass_vs_nginx_interval: [0, 1]
                .map(|i| difference_interval(g(i, PASSTHROUGH), g(i, NGINX), 0.50)),
            tokio_added_p50: [added_p50(0, TOKIO_PROXY), added_p50(1, TOKIO_PROXY)],
            pass_added_p99: g(0, PASSTHROUGH).p99_ms() - g(0, DIRECT).p99_ms(),
            nginx_added_p99: g(0, NGINX).p99_ms() - g(0, DIRECT).p99_ms(),
            term_ratio_p50: [
                ratio_p50(0, TERMINATE, DIRECT),
                ratio_p50(1, TERMINATE, DIRECT),
            ],
            term_ratio_p99: g(0, TERMINATE).p99_ms() / g(0, DIRECT).p99_ms(),
            term_twin_ratio_p50: [ratio_p50(0, TERMINATE, TWIN), ratio_p50(1, TERMINATE, TWIN)],
            twin_ratio_p50: [ratio_p50(0, TWIN, DIRECT), ratio_p50(1, TWIN, DIRECT)],
            rate_pass: rate(PASSTHROUGH),
            rate_nginx: rate(NGINX),
            rate_tokio: rate(TOKIO_PROXY),
            rate_term: rate(TERMINATE),
            cpu_direct: r.rates[DIRECT].cpu_us_per_conn(),
            cpu_added: [PASSTHROUGH, NGINX, TOKIO_PROXY].map(cpu_added),
            kernel_added_pass: kernel_added(PASSTHROUGH),
            flooded_p99: r.slowloris.flooded.p99_ms(),
            quiet_p99: r.slowloris.quiet.p99_ms(),
            flood_interval: difference_interval(&r.slowloris.flooded, &r.slowloris.quiet, 0.99),
            errors: total_errors(r),
        }
    }

    /// Passthrough's added p50 over nginx's; meaningless when nginx adds
    /// nothing measurable.
    fn pass_vs_nginx(&self) -> f64 {
        let nginx = self.nginx_added_p50[0];
        if nginx > 0.0 {
            self.pass_added_p50[0] / nginx
        } else {
            f64::NAN
        }
    }

    /// The most CPU time a passthrough may add per connection and still
    /// reach the rate goal on a machine that the rate test keeps busy, us.
    fn rate_budget(&self) -> f64 {
        self.cpu_direct * (1.0 / RATE_GOAL - 1.0)
    }
}

/// The connection-rate goal, as a share of direct's rate.
const RATE_GOAL: f64 = 0.85;

fn total_errors(r: &Report<'_>) -> u64 {
    let latency: u64 = r
        .latency
        .iter()
        .flat_map(|g| &g.per_target)
        .map(|s: &Samples| s.errors)
        .sum();
    let rate: u64 = r.rates.iter().map(|rate| rate.errors).sum();
    latency + rate + r.slowloris.quiet.errors + r.slowloris.flooded.errors
}

fn goals(out: &mut String, r: &Report<'_>, f: &Figures) -> fmt::Result {
    let pass = [0, 1]
        .map(|i| {
            Verdict::judge(
                f.pass_added_p50[i] <= f.nginx_added_p50[i],
                f.pass_vs_nginx_interval[i],
            )
        })
        .into_iter()
        .fold(Verdict::Met, Verdict::max);
    let term_ok = f.term_twin_ratio_p50.iter().all(|ratio| *ratio <= 1.05);
    let rate_ok = f.rate_pass >= RATE_GOAL && f.rate_term >= RATE_GOAL;
    let flood_held = r.slowloris.still_open >= r.args.flood;
    let flood = if flood_held {
        Verdict::judge(f.flooded_p99 <= 1.0, f.flood_interval)
    } else {
        Verdict::Missed
    };
    writeln!(out, "\ngoals (not enforced: shared machines are noisy)")?;
    writeln!(
        out,
        "  passthrough adds no more than nginx ssl_preread (about +0.05 ms p50): \
         X25519 {:+.3} vs {:+.3} ms, X25519MLKEM768 {:+.3} vs {:+.3} ms -> {}\n    \
         passthrough p50 minus nginx's, 95% interval: X25519 {}, X25519MLKEM768 {}",
        f.pass_added_p50[0],
        f.nginx_added_p50[0],
        f.pass_added_p50[1],
        f.nginx_added_p50[1],
        pass.label(),
        interval(f.pass_vs_nginx_interval[0]),
        interval(f.pass_vs_nginx_interval[1]),
    )?;
    writeln!(
        out,
        "  terminate p50 within 5% of bare rustls (its twin): X25519 {:.3}, X25519MLKEM768 {:.3} \
         (over direct {:.3}, {:.3}) -> {}",
        f.term_twin_ratio_p50[0],
        f.term_twin_ratio_p50[1],
        f.term_ratio_p50[0],
        f.term_ratio_p50[1],
        Verdict::of(term_ok).label()
    )?;
    writeln!(
        out,
        "  connection rate at least {RATE_GOAL} of direct: passthrough {:.3}, terminate {:.3} \
         -> {}\n    with every core busy, that leaves a passthrough {:.0} us of CPU per \
         connection over direct's {:.0}: mux passthrough adds {:.0} ({:.0} in the kernel), \
         nginx {:.0}, tokio proxy {:.0}",
        f.rate_pass,
        f.rate_term,
        Verdict::of(rate_ok).label(),
        f.rate_budget(),
        f.cpu_direct,
        f.cpu_added[0],
        f.kernel_added_pass,
        f.cpu_added[1],
        f.cpu_added[2]
    )?;
    writeln!(
        out,
        "  {} idle half-open connections keep legitimate p99 at or under 1 ms: \
         {:.3} ms (quiet {:.3} ms){} -> {}\n    flooded p99 minus quiet, 95% interval: {}",
        r.args.flood,
        f.flooded_p99,
        f.quiet_p99,
        if flood_held {
            ""
        } else {
            ", but edge closed some idle connections"
        },
        flood.label(),
        interval(f.flood_interval)
    )?;
    writeln!(
        out,
        "\nreference: plain tokio proxy, the runtime's floor for a passthrough (not a goal)\n  \
         added p50: X25519 {:+.3} ms (mux passthrough {:+.3}), X25519MLKEM768 {:+.3} ms \
         (mux passthrough {:+.3}); connection rate {:.3} (mux passthrough {:.3})",
        f.tokio_added_p50[0],
        f.pass_added_p50[0],
        f.tokio_added_p50[1],
        f.pass_added_p50[1],
        f.rate_tokio,
        f.rate_pass
    )?;
    writeln!(
        out,
        "calibration: the bare server's twin, which takes none of the passthrough traffic, \
         over direct p50: X25519 {:.3}, X25519MLKEM768 {:.3}",
        f.twin_ratio_p50[0], f.twin_ratio_p50[1]
    )
}

/// How a measured figure stands against its goal, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    Met,
    /// Over the goal by less than this run can tell apart: the 95% interval
    /// of the difference that decides it reaches zero.
    Level,
    Missed,
}

impl Verdict {
    fn of(met: bool) -> Self {
        if met {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }

    /// `met` as measured, else level when the 95% interval of the deciding
    /// difference still reaches zero or below.
    fn judge(met: bool, difference: Option<(f64, f64)>) -> Self {
        match (met, difference) {
            (true, _) => Verdict::Met,
            (false, Some((low, _))) if low <= 0.0 => Verdict::Level,
            (false, _) => Verdict::Missed,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Level => "level (over by less than this run's noise)",
            Verdict::Missed => "MISSED",
        }
    }
}

/// An interval in milliseconds, or `n/a`.
fn interval(range: Option<(f64, f64)>) -> String {
    range.map_or_else(
        || "n/a".to_owned(),
        |(low, high)| format!("{low:+.3}..{high:+.3} ms"),
    )
}

fn ratio_line(out: &mut String, r: &Report<'_>, f: &Figures) -> fmt::Result {
    let fields = [
        ("passthrough_added_p50_ms", f.pass_added_p50[0]),
        ("passthrough_added_p99_ms", f.pass_added_p99),
        ("nginx_added_p50_ms", f.nginx_added_p50[0]),
        ("nginx_added_p99_ms", f.nginx_added_p99),
        ("passthrough_vs_nginx_added_p50", f.pass_vs_nginx()),
        (
            "passthrough_minus_nginx_p50_low_ms",
            f.pass_vs_nginx_interval[0].map_or(f64::NAN, |(low, _)| low),
        ),
        (
            "passthrough_minus_nginx_p50_high_ms",
            f.pass_vs_nginx_interval[0].map_or(f64::NAN, |(_, high)| high),
        ),
        ("terminate_vs_direct_p50", f.term_ratio_p50[0]),
        ("terminate_vs_direct_p99", f.term_ratio_p99),
        ("pq_passthrough_added_p50_ms", f.pass_added_p50[1]),
        ("pq_nginx_added_p50_ms", f.nginx_added_p50[1]),
        ("pq_terminate_vs_direct_p50", f.term_ratio_p50[1]),
        ("terminate_vs_twin_p50", f.term_twin_ratio_p50[0]),
        ("pq_terminate_vs_twin_p50", f.term_twin_ratio_p50[1]),
        ("twin_vs_direct_p50", f.twin_ratio_p50[0]),
        ("pq_twin_vs_direct_p50", f.twin_ratio_p50[1]),
        ("tokio_proxy_added_p50_ms", f.tokio_added_p50[0]),
        ("pq_tokio_proxy_added_p50_ms", f.tokio_added_p50[1]),
        ("conn_rate_passthrough_vs_direct", f.rate_pass),
        ("conn_rate_nginx_vs_direct", f.rate_nginx),
        ("conn_rate_tokio_proxy_vs_direct", f.rate_tokio),
        ("conn_rate_terminate_vs_direct", f.rate_term),
        ("cpu_us_per_conn_direct", f.cpu_direct),
        ("rate_goal_cpu_budget_us", f.rate_budget()),
        ("cpu_added_us_passthrough", f.cpu_added[0]),
        ("cpu_added_kernel_us_passthrough", f.kernel_added_pass),
        ("cpu_added_us_nginx", f.cpu_added[1]),
        ("cpu_added_us_tokio_proxy", f.cpu_added[2]),
        ("slowloris_p99_ms", f.flooded_p99),
        ("slowloris_p99_vs_quiet", f.flooded_p99 / f.quiet_p99),
    ];
    let mut line = String::from("\nmux-bench:");
    for (name, value) in fields {
        write!(line, " {name}={}", number(value))?;
    }
    write!(line, " slowloris_idle_open={}", r.slowloris.still_open)?;
    writeln!(out, "{line} errors={}", f.errors)
}

/// Three decimals, or `n/a` for a figure that could not be computed.
fn number(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.3}")
    } else {
        "n/a".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::Verdict;

    #[test]
    fn level_only_when_the_interval_reaches_zero() {
        assert_eq!(Verdict::judge(true, Some((0.01, 0.02))), Verdict::Met);
        assert_eq!(Verdict::judge(false, Some((-0.001, 0.02))), Verdict::Level);
        assert_eq!(Verdict::judge(false, Some((0.001, 0.02))), Verdict::Missed);
        assert_eq!(Verdict::judge(false, None), Verdict::Missed);
        assert_eq!(Verdict::Level.max(Verdict::Met), Verdict::Level);
        assert_eq!(Verdict::Missed.max(Verdict::Level), Verdict::Missed);
    }
}
