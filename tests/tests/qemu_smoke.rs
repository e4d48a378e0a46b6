//! The whole box in an emulator: Debian's arm64 kernel boots the rig's
//! initramfs in `qemu-system-aarch64`, /init starts `edge`, and the host
//! reaches the box's :443 through QEMU's forward on 127.0.0.1.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edge_tests::{
    edge_binary, free_port, repo_root, wait_healthy, Console, ProcessGuard, ScratchDir,
};

/// From power-on to the init's marker line. Under TCG this takes a few
/// seconds on an idle machine; the margin is for a loaded one.
const MARKER_WITHIN: Duration = Duration::from_secs(120);

/// From the marker to the first 200 on /healthz.
const HEALTHY_WITHIN: Duration = Duration::from_secs(120);

/// Printed by tests/qemu/init once `edge run` has been started.
const MARKER: &str = "edge-rig: edge running";

/// Printed by tests/qemu/init or the kernel when the box cannot come up.
const FATAL: &[&str] = &["edge-rig: edge exited", "edge-rig: insmod", "Kernel panic"];

#[test]
#[ignore = "needs the aarch64 build; run by ./dev test"]
fn box_boots_and_serves_healthz() {
    let root = repo_root();
    // A private copy, so that concurrent runs and `./dev run` do not share one.
    let scratch = ScratchDir::new("qemu").expect("scratch directory");
    let initramfs = scratch.path().join("initramfs.cpio.gz");
    let status = Command::new(root.join("tests/qemu/mkinitramfs.sh"))
        .arg(edge_binary())
        .arg(&initramfs)
        .status()
        .expect("run tests/qemu/mkinitramfs.sh");
    assert!(status.success(), "mkinitramfs.sh failed: {status}");

    let port = free_port().expect("free port");
    let start = Instant::now();
    let child = Command::new(root.join("tests/qemu/boot.sh"))
        .arg(&initramfs)
        .env("EDGE_RIG_PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start qemu-system-aarch64 through tests/qemu/boot.sh");
    let mut qemu = ProcessGuard::new("qemu-system-aarch64", child);
    let serial = qemu
        .child_mut()
        .stdout
        .take()
        .expect("QEMU's stdout was piped");
    let console = Console::new(serial);

    if let Err(e) = console.wait_for(MARKER, FATAL, MARKER_WITHIN) {
        panic!("{e}\n--- serial console ---\n{}", console.transcript());
    }
    let marker_at = start.elapsed();

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let (health, _) = match wait_healthy(addr, HEALTHY_WITHIN, &mut qemu) {
        Ok(answer) => answer,
        Err(e) => panic!(
            "the box never became healthy: {e}\n--- serial console ---\n{}",
            console.transcript()
        ),
    };
    let healthy_at = start.elapsed();

    assert_eq!(health.status, 200);
    assert_eq!(&health.body[..], b"ok", "body of /healthz");
    assert!(
        !health.certificates.is_empty(),
        "the box presented no certificate"
    );
    eprintln!(
        "qemu rig: edge started {:.2} s and healthy {:.2} s after QEMU was launched ({:?})",
        marker_at.as_secs_f64(),
        healthy_at.as_secs_f64(),
        health.protocol
    );
}
