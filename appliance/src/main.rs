//! `edge`: the whole partner edge box in one binary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use appliance::config::Config;
use appliance::run;
use appliance::storage;

/// `edge run`'s exit status for a configuration it cannot use (EX_CONFIG of
/// sysexits.h): the system start does not count it as a crash, since no
/// reboot or other slot would read a different file.
const EXIT_CONFIG: u8 = 78;

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
        /// A watchdog device to arm and feed, e.g. /dev/watchdog. The
        /// system start of the image passes it; without it none is used.
        #[arg(long, value_name = "DEVICE")]
        watchdog: Option<PathBuf>,
        /// Keep a status file for people here, e.g. /boot/status.txt; the
        /// system start of the image passes it.
        #[arg(long, value_name = "FILE")]
        status_file: Option<PathBuf>,
    },
    /// Checks a configuration file and explains every error with its key.
    CheckConfig {
        /// The configuration file (TOML).
        file: PathBuf,
    },
    /// A/B updates.
    #[command(subcommand)]
    Update(UpdateCommand),
    /// Grows the `data` partition to the end of its disk and its mounted
    /// ext4 file system with it. The system start runs this on every boot;
    /// once `data` fills the medium it has nothing to do.
    GrowData {
        /// The partition's device node, e.g. /dev/mmcblk0p7.
        device: PathBuf,
        /// Where its file system is mounted.
        mountpoint: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum UpdateCommand {
    /// Installs a bundle file into the inactive slot and reboots into it.
    Install {
        /// The configuration file (TOML) with an `[update]` section.
        #[arg(long, short)]
        config: PathBuf,
        /// The bundle (`edge-bundle build`): a file, or an `https://` URL.
        bundle: String,
        /// Install and switch the boot order, but do not reboot.
        #[arg(long)]
        no_reboot: bool,
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
        Command::Update(UpdateCommand::Install {
            config,
            bundle,
            no_reboot,
        }) => update_install(&config, &bundle, no_reboot),
        Command::GrowData { device, mountpoint } => grow_data(&device, &mountpoint),
        Command::Run {
            config,
            watchdog,
            status_file,
        } => match Config::load(&config) {
            Ok(config) => match run::main(
                config,
                &run::Options {
                    watchdog,
                    status_file,
                },
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("edge: {e:#}");
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
    }
}

fn update_install(config: &std::path::Path, bundle: &str, no_reboot: bool) -> ExitCode {
    let config = match Config::load(config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(update) = config.update else {
        eprintln!("edge: the configuration has no [update] section");
        return ExitCode::FAILURE;
    };
    match appliance::update::supervise::install_from(&update, bundle) {
        Ok(pending) => {
            eprintln!(
                "edge: installed {} into slot {}",
                pending.version, pending.slot
            );
            if !no_reboot && update.reboot {
                run::reboot("update installed");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("edge: update refused: {e}");
            ExitCode::FAILURE
        }
    }
}

fn grow_data(device: &Path, mountpoint: &Path) -> ExitCode {
    const MIB: u64 = 1 << 20;
    match storage::grow_data(Path::new("/sys"), device, mountpoint) {
        Ok(grown) if !grown.grew() => {
            eprintln!("data fills its medium: {} MiB", grown.fs_after / MIB);
            ExitCode::SUCCESS
        }
        Ok(grown) => {
            eprintln!(
                "data grown: partition {} -> {} MiB, file system {} -> {} MiB",
                grown.partition_before / MIB,
                grown.partition_after / MIB,
                grown.fs_before / MIB,
                grown.fs_after / MIB
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("edge: cannot grow {}: {e}", device.display());
            ExitCode::FAILURE
        }
    }
}
