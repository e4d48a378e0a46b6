//! `edge-bench`: the Rust half of `bench/mux.sh`.
//!
//! The script runs this binary in five roles: `certs` writes the test PKI,
//! `ports` picks free loopback ports, `server` is the bare rustls server every
//! other target is compared with, `proxy` is the reference passthrough in
//! plain tokio, and `drive` is the client that measures all targets
//! interleaved and prints the report. `load` keeps one target busy for a
//! profiler. docs/benchmarks.md explains the method and the figures.

mod certs;
mod client;
mod cpu;
mod drive;
mod latency;
mod proxy;
mod rate;
mod report;
mod server;
mod slowloris;
mod stats;

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Benchmarks of the mux against a bare rustls server and nginx.
#[derive(Debug, Parser)]
#[command(name = "edge-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes ca.pem, cert.pem and key.pem for the bench names into DIR.
    Certs {
        /// Directory to write into; it must exist.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Prints COUNT distinct free TCP ports on 127.0.0.1, space-separated.
    Ports {
        /// How many ports.
        count: usize,
    },
    /// Runs the bare rustls server until killed.
    Server {
        /// Loopback address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// PEM certificate chain, leaf first.
        #[arg(long)]
        cert: PathBuf,
        /// PEM private key.
        #[arg(long)]
        key: PathBuf,
    },
    /// Runs the reference proxy (plain tokio, no mux) until killed.
    Proxy {
        /// Loopback address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// The bare server to pass connections to.
        #[arg(long)]
        upstream: SocketAddr,
    },
    /// Measures every target and prints the report.
    Drive(drive::DriveArgs),
    /// Loads one target with the connection-rate clients for a while and
    /// prints its rate: a steady load to profile one path under.
    Load(rate::LoadArgs),
}

// The same runtime flavour and worker count as `edge run`, so the bare
// server and edge get the same scheduler.
#[tokio::main]
async fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Certs { dir } => certs::write(&dir),
        Command::Ports { count } => free_ports(count),
        Command::Server { listen, cert, key } => server::run(listen, &cert, &key).await,
        Command::Proxy { listen, upstream } => proxy::run(listen, upstream).await,
        Command::Drive(args) => drive::run(args).await,
        Command::Load(args) => rate::load(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Holds all listeners open until every port is chosen, so the ports differ.
/// Another process may still take one before the caller binds it; the
/// servers then fail to start and the script stops.
fn free_ports(count: usize) -> anyhow::Result<()> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()?;
    let ports = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port().to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    writeln!(std::io::stdout().lock(), "{}", ports.join(" "))?;
    Ok(())
}
