//! New connections per second: concurrent clients that connect, handshake
//! and close in a loop, in short slices that alternate between targets.

use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use crate::client::{cycle, Target};
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
}

impl Rate {
    /// Completed connections per second.
    pub(crate) fn per_sec(&self) -> f64 {
        self.conns as f64 / self.elapsed.as_secs_f64()
    }

    fn add(&mut self, other: Rate) {
        self.conns += other.conns;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
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
) -> Vec<Rate> {
    let mut rates = vec![Rate::default(); targets.len()];
    for round in 0..slices {
        for t in rotation(round, targets.len()) {
            let measured = run_slice(connector, &targets[t], clients, slice).await;
            rates[t].add(measured);
        }
    }
    rates
}

/// Clients start no new connection after the slice ends; the ones under way
/// finish and count, and the elapsed time includes them.
async fn run_slice(
    connector: &TlsConnector,
    target: &Target,
    clients: usize,
    slice: Duration,
) -> Rate {
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
    total
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
