//! `edge`: the whole partner edge box in one binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use appliance::config::Config;
use appliance::run;

/// The partner edge box.
#[derive(Debug, Parser)]
#[command(name = "edge", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("EDGE_GIT_REV"), ")"))]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the box with a configuration file.
    Run {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Checks a configuration file and explains every error with its key.
    CheckConfig {
        /// The configuration file (TOML).
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                eprintln!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => match Config::load(&config) {
            Ok(config) => match run::main(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("edge: {e:#}");
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
    }
}
