//! Connect plus full-handshake latency of every target, for each client key
//! exchange, interleaved so that drift on a shared machine hits every target
//! alike.

use tokio_rustls::TlsConnector;

use crate::client::{cycle, Kx, Target};
use crate::drive::rotation;
use crate::stats::Samples;

/// The samples of one client key exchange, indexed like the targets.
#[derive(Debug)]
pub(crate) struct Group {
    /// What the client offered.
    pub(crate) kx: Kx,
    /// One entry per target.
    pub(crate) per_target: Vec<Samples>,
}

/// Runs `warmup` unrecorded rounds, then `rounds` recorded ones. A round is
/// one connection per key exchange and target, one at a time, in an order
/// that changes every round (see [`rotation`]).
pub(crate) async fn measure(
    clients: &[(Kx, TlsConnector)],
    targets: &[Target],
    warmup: usize,
    rounds: usize,
) -> Vec<Group> {
    let mut groups: Vec<Group> = clients
        .iter()
        .map(|(kx, _)| Group {
            kx: *kx,
            per_target: vec![Samples::default(); targets.len()],
        })
        .collect();
    for round in 0..warmup + rounds {
        for (group, (_, connector)) in groups.iter_mut().zip(clients) {
            for t in rotation(round, targets.len()) {
                let outcome = cycle(connector, &targets[t]).await;
                if round >= warmup {
                    group.per_target[t].record(outcome);
                }
            }
        }
    }
    groups
}
