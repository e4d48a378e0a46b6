//! An update through the whole chain: the factory box marks slot A good,
//! reads its channel on a test server on the host, fetches and installs the
//! bundle into slot B, reboots; U-Boot boots B, which passes its health
//! check and marks itself good.

use std::net::IpAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use edge_tests::rig::{
    chosen_slot, provision_for_channel, spoil_slot_b, status_saying, BootOptions, CHOSE_SLOT,
    COMPATIBLE, MARKED_GOOD, SERVER_IN_BOX,
};
use edge_tests::update_server::{Offer, UpdateServer};
use edge_tests::{bootstate, repo_root, wait_healthy, FactoryDisk, RunningBox, ScratchDir};
use image::bundle::{build_bundle, BundleSpec};
use image::keys::SigningKey;

fn factory() -> &'static FactoryDisk {
    static DISK: OnceLock<FactoryDisk> = OnceLock::new();
    DISK.get_or_init(|| {
        let dir = repo_root().join(".rig/tests/qemu-update");
        FactoryDisk::build(&dir).expect("build the factory disk image with tests/qemu/mkdisk.sh")
    })
}

/// The version the channel offers, newer than the factory image's.
const NEW_VERSION: &str = "0.99.0";

/// A factory slot image: `kernel.ext4` or `rootfs.squashfs`.
fn slot_image(name: &str) -> Vec<u8> {
    std::fs::read(factory().part(name)).expect("read a slot image")
}

/// A bundle of the factory kernel and `rootfs`, as the new version.
fn bundle(key: &SigningKey, rootfs: &[u8]) -> Vec<u8> {
    let spec = BundleSpec::new(COMPATIBLE, NEW_VERSION, 1);
    build_bundle(&spec, key, &slot_image("kernel.ext4"), rootfs).expect("bundle")
}

/// A copy of the factory disk provisioned to follow a channel on a test
/// server offering `rootfs`, and that server.
fn provisioned(scratch: &ScratchDir, rootfs: &[u8]) -> (std::path::PathBuf, UpdateServer) {
    provisioned_with(scratch, rootfs, |_| {})
}

/// Like [`provisioned`], with `edit` applied to the signed bundle.
fn provisioned_with(
    scratch: &ScratchDir,
    rootfs: &[u8],
    edit: impl FnOnce(&mut Vec<u8>),
) -> (std::path::PathBuf, UpdateServer) {
    let image = factory()
        .copy_to(&scratch.path().join("disk.img"))
        .expect("copy the factory disk image");
    let key = SigningKey::generate().expect("signing key");
    let mut signed = bundle(&key, rootfs);
    edit(&mut signed);
    let server = UpdateServer::start(
        Offer {
            bundle: signed,
            channel: Some((NEW_VERSION.into(), COMPATIBLE.into())),
            cut_first_after: None,
        },
        &[IpAddr::V4(SERVER_IN_BOX)],
    )
    .expect("start the update server");

    provision_for_channel(
        &image,
        scratch.path(),
        &key.public_key().to_line(),
        server.ca_pem(),
    );
    (image, server)
}

fn boot(image: &Path, server: &UpdateServer) -> RunningBox {
    let options = BootOptions {
        server_port: Some(server.addr().port()),
        allow_reboot: true,
    };
    RunningBox::boot_with(image, &options).expect("start QEMU")
}

#[test]
#[ignore = "needs the aarch64 build and the rig cache; run by ./dev test"]
fn an_update_from_the_channel_boots_slot_b_and_is_marked_good() {
    let scratch = ScratchDir::new("qemu-update").expect("scratch directory");
    let (image, server) = provisioned(&scratch, &slot_image("rootfs.squashfs"));
    spoil_slot_b(&image);
    let mut edge_box = boot(&image, &server);
    assert_eq!(chosen_slot(&edge_box.expect_line(CHOSE_SLOT)), Some("A"));
    let good = edge_box.expect_line(MARKED_GOOD);
    assert!(good.contains("slot=A"), "{good}");
    edge_box.expect_line("update installed");
    let installed_at = edge_box.uptime();

    assert_eq!(chosen_slot(&edge_box.expect_line(CHOSE_SLOT)), Some("B"));
    let good = edge_box.expect_line(MARKED_GOOD);
    assert!(good.contains("slot=B"), "{good}");
    let marked_at = edge_box.uptime();
    let addr = edge_box.addr();
    if let Err(e) = wait_healthy(addr, Duration::from_secs(60), edge_box.qemu()) {
        panic!(
            "slot B is not healthy: {e}\n--- serial console ---\n{}",
            edge_box.transcript()
        );
    }
    assert_eq!(server.bundle_requests(), vec![None], "one whole download");
    let status = status_saying(&image, "slot:          B, marked good\n");
    assert!(
        status.contains("boot order:    B A (tries left: B 3, A 3)\n"),
        "{status}"
    );
    assert!(
        !status.contains("update:"),
        "nothing waits any more:\n{status}"
    );
    drop(edge_box);

    bootstate::assert_both(&image, "B A", 3, 3);
    eprintln!(
        "qemu update: installed {:.1} s and slot B marked good {:.1} s after QEMU was launched",
        installed_at.as_secs_f64(),
        marked_at.as_secs_f64()
    );
}

#[test]
#[ignore = "needs the aarch64 build and the rig cache; run by ./dev test"]
fn an_update_that_never_comes_up_rolls_back_after_three_tries() {
    let scratch = ScratchDir::new("qemu-rollback").expect("scratch directory");
    // A root file system the initrd cannot mount: each boot of slot B ends
    // in a reboot before anything could mark it good.
    let broken_rootfs = vec![0x5a; 2 * 1024 * 1024];
    let (image, server) = provisioned(&scratch, &broken_rootfs);
    let edge_box = boot(&image, &server);

    assert_eq!(chosen_slot(&edge_box.expect_line(CHOSE_SLOT)), Some("A"));
    edge_box.expect_line("update installed");
    // Slot B holds the factory kernel, which is the bundle's: only the
    // rootfs was fetched, with a range request after the head.
    let fetched = server.bundle_requests();
    assert!(
        matches!(fetched.as_slice(), [None, Some(from)] if *from > 0),
        "{fetched:?}"
    );
    // Slot B's boots end in the initrd's reboot, which here is expected.
    let fatal = ["edge-init: edge exited", "Kernel panic"];
    for try_number in 1..=3 {
        let chose = edge_box.expect_line_with(CHOSE_SLOT, &fatal);
        assert_eq!(chosen_slot(&chose), Some("B"), "try {try_number}");
        edge_box.expect_line_with("could not mount rootfs_b", &fatal);
    }
    let chose = edge_box.expect_line_with(CHOSE_SLOT, &fatal);
    assert_eq!(chosen_slot(&chose), Some("A"));
    let rolled_back = edge_box.expect_line("update rolled back");
    assert!(rolled_back.contains("used up its tries"), "{rolled_back}");
    let good = edge_box.expect_line(MARKED_GOOD);
    assert!(good.contains("slot=A"), "{good}");
    let status = status_saying(&image, &format!("last rollback: {NEW_VERSION}: "));
    assert!(status.contains("used up its tries"), "{status}");
    assert!(
        status.contains("slot:          A, marked good\n"),
        "{status}"
    );

    // The channel still offers the failed version; the box reads it again
    // and again but does not fetch it.
    let reads = server.channel_reads();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while server.channel_reads() < reads + 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the channel is not read any more"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        server.bundle_requests(),
        fetched,
        "the failed version was fetched again"
    );
    drop(edge_box);

    bootstate::assert_both(&image, "A B", 3, 0);
}

#[test]
#[ignore = "needs the aarch64 build and the rig cache; run by ./dev test"]
fn a_tampered_bundle_is_refused_without_a_reboot() {
    let scratch = ScratchDir::new("qemu-tampered").expect("scratch directory");
    let rootfs = slot_image("rootfs.squashfs");
    let (image, server) = provisioned_with(&scratch, &rootfs, |bundle| {
        let last = bundle.len() - 1000;
        bundle[last] ^= 0x20;
    });
    spoil_slot_b(&image);
    let mut edge_box = boot(&image, &server);

    assert_eq!(chosen_slot(&edge_box.expect_line(CHOSE_SLOT)), Some("A"));
    edge_box.expect_line(MARKED_GOOD);
    let refused = edge_box.expect_line("update check failed");
    assert!(refused.contains("does not match"), "{refused}");
    // Still up on slot A, which was never switched away from.
    let addr = edge_box.addr();
    if let Err(e) = wait_healthy(addr, Duration::from_secs(60), edge_box.qemu()) {
        panic!(
            "the box went down: {e}\n--- serial console ---\n{}",
            edge_box.transcript()
        );
    }
    let transcript = edge_box.transcript();
    assert_eq!(
        transcript.matches(CHOSE_SLOT).count(),
        1,
        "the box rebooted:\n{transcript}"
    );
    drop(edge_box);

    bootstate::assert_both(&image, "A B", 3, 3);
}
