//! Shared harness for the end-to-end tests of the `edge` binary.
//!
//! The tests in `tests/` exercise the real aarch64 build in two ways: directly
//! under `qemu-aarch64-static` (cross_static.rs) and as the whole box: the
//! disk image booted through U-Boot in `qemu-system-aarch64` (qemu_boot.rs,
//! qemu_boot_chooser.rs). They need the binary from `./dev build` and are
//! `#[ignore]`d so that `cargo test --workspace` stays a host-only run;
//! `./dev test` runs them with `--ignored`.
//!
//! Everything here talks to the box from the host over 127.0.0.1 only.

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;

pub mod bootstate;
pub mod disk;
pub mod elf;
pub mod https;
pub mod process;
pub mod rig;
pub mod update_server;

pub use https::{healthz, wait_healthy, Health};
pub use process::{Console, ProcessGuard, ScratchDir};
pub use rig::{FactoryDisk, RunningBox};

/// The cross target the box runs on.
pub const TARGET: &str = "aarch64-unknown-linux-musl";

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("http request: {0}")]
    Request(#[from] http::Error),
    #[error("elf: {0}")]
    Elf(#[from] object::read::Error),
    #[error("timed out after {0:?}: {1}")]
    Timeout(std::time::Duration, String),
    #[error("console: {0}")]
    Console(String),
    #[error("process exited early ({0})")]
    Exited(std::process::ExitStatus),
    #[error("command: {0}")]
    Command(String),
    #[error("disk image: {0}")]
    Disk(String),
    #[error("boot state: {0}")]
    BootState(String),
}

/// The workspace root: this crate lives in `<root>/tests`.
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    match manifest.parent() {
        Some(parent) => parent.to_path_buf(),
        None => manifest,
    }
}

/// The aarch64 `edge` binary under test: `$EDGE_BIN` when set (`./dev test`
/// sets it), else where `./dev build` puts it in a fresh clone.
pub fn edge_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("EDGE_BIN") {
        return PathBuf::from(path);
    }
    // Where `./dev build` put it: cargo's target directory, moved by
    // CARGO_TARGET_DIR as cargo itself does.
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join(TARGET)
        .join("release")
        .join("edge")
}

/// A TCP port on 127.0.0.1 that was free a moment ago. Another process may
/// take it before the caller binds it; on these test machines that has not
/// been seen, and a collision fails loudly rather than silently.
pub fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_root_holds_the_workspace_manifest() {
        assert!(repo_root().join("Cargo.toml").is_file());
        assert!(repo_root().join("tests/qemu/boot.sh").is_file());
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port().expect("ask the kernel for a port");
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("bind the port just freed");
    }
}
