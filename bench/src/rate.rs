//! New connections per second: concurrent clients that connect, handshake
//! and close in a loop, in short slices that alternate between targets.

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use rustls::pki_types::ServerName;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use crate::client::{connector, cycle, Kx, Target};
use crate::cpu::CpuTime;
use crate::drive::rotation;

/// Completed connections to one target over all its slices.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Rate {
    /// Connections that completed the handshake and the close.
    pub(crate) conns: u64,
    /// Connections that failed.
    pub(crate) errors: u64,
    /// Time from the start of each slice until its last connection ended.
    pub(crate) elapsed: Duration,
    /// The whole machine's CPU time over the same slices.
    pub(crate) cpu: CpuTime,
}

impl Rate {
    /// Completed connections per second.
    pub(crate) fn per_sec(&self) -> f64 {
        self.conns as f64 / self.elapsed.as_secs_f64()
    }

    /// The whole machine's busy CPU time per completed connection, in
    /// microseconds.
    pub(crate) fn cpu_us_per_conn(&self) -> f64 {
        self.per_conn_us(self.cpu.busy())
    }

    /// The kernel's part of [`Self::cpu_us_per_conn`].
    pub(crate) fn kernel_us_per_conn(&self) -> f64 {
        self.per_conn_us(self.cpu.kernel)
    }

    /// Share of the machine's CPU time that some task used.
    pub(crate) fn busy_share(&self) -> f64 {
        let busy = self.cpu.busy().as_secs_f64();
        busy / (busy + self.cpu.idle.as_secs_f64())
    }

    fn per_conn_us(&self, time: Duration) -> f64 {
        time.as_secs_f64() * 1e6 / self.conns as f64
    }

    fn add(&mut self, other: Rate) {
        self.conns += other.conns;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.cpu += other.cpu;
    }
}

/// Runs `slices` slices of `slice` per target with `clients` concurrent
/// clients; returns one rate per target.
pub(crate) async fn measure(
    connector: &TlsConnector,
    targets: &[Target],
    clients: usize,
    slice: Duration,
    slices: usize,
) -> io::Result<Vec<Rate>> {
    let mut rates = vec![Rate::default(); targets.len()];
    for round in 0..slices {
        for t in rotation(round, targets.len()) {
            let measured = run_slice(connector, &targets[t], clients, slice).await?;
            rates[t].add(measured);
        }
    }
    Ok(rates)
}

/// Clients start no new connection after the slice ends; the ones under way
/// finish and count, and the elapsed time includes them.
async fn run_slice(
    connector: &TlsConnector,
    target: &Target,
    clients: usize,
    slice: Duration,
) -> io::Result<Rate> {
    let cpu_before = CpuTime::now()?;
    let start = Instant::now();
    let deadline = start + slice;
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let connector = connector.clone();
        let target = target.clone();
        tasks.spawn(async move { client_loop(&connector, &target, deadline).await });
    }
    let mut total = Rate::default();
    while let Some(done) = tasks.join_next().await {
        if let Ok(rate) = done {
            total.add(rate);
        }
    }
    total.elapsed = start.elapsed();
    total.cpu = CpuTime::now()? - cpu_before;
    Ok(total)
}

async fn client_loop(connector: &TlsConnector, target: &Target, deadline: Instant) -> Rate {
    let mut rate = Rate::default();
    while Instant::now() < deadline {
        match cycle(connector, target).await {
            Ok(_) => rate.conns += 1,
            Err(_) => rate.errors += 1,
        }
    }
    rate
}

/// One target under the connection-rate load.
#[derive(Debug, clap::Args)]
pub(crate) struct LoadArgs {
    /// Loopback address to connect to.
    #[arg(long)]
    target: SocketAddr,
    /// SNI to send: `pass.bench` takes edge's passthrough route,
    /// `term.bench` its terminating one.
    #[arg(long, default_value = "pass.bench")]
    sni: String,
    /// PEM file of the CA the client trusts.
    #[arg(long)]
    ca: PathBuf,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// How long to keep the load up, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// Runs the rate test's clients against one target and prints the rate.
pub(crate) async fn load(args: LoadArgs) -> anyhow::Result<()> {
    if !args.target.ip().is_loopback() {
        bail!("{} is not a loopback address", args.target);
    }
    let target = Target {
        label: "load",
        addr: args.target,
        sni: ServerName::try_from(args.sni)?,
        echoes: false,
    };
    let connector = connector(&args.ca, Kx::Default)?;
    let slice = Duration::from_secs(args.seconds);
    let rate = run_slice(&connector, &target, args.clients, slice).await?;
    writeln!(
        std::io::stdout().lock(),
        "{} conn/s ({} connections, {} errors, {:.1} s); machine CPU per connection {:.0} us, \
         {:.0} us of it in the kernel, {:.0}% busy",
        rate.per_sec().round(),
        rate.conns,
        rate.errors,
        rate.elapsed.as_secs_f64(),
        rate.cpu_us_per_conn(),
        rate.kernel_us_per_conn(),
        rate.busy_share() * 100.0
    )?;
    Ok(())
}
