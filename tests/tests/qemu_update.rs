//! An update through the whole chain: the factory box marks slot A good,
//! reads its channel on a test server on the host, fetches and installs the
//! bundle into slot B, reboots; U-Boot boots B, which passes its health
//! check and marks itself good.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use edge_tests::rig::{chosen_slot, BootOptions, CHOSE_SLOT, MARKED_GOOD, SERVER_IN_BOX};
use edge_tests::update_server::{Offer, UpdateServer, CHANNEL_PATH};
use edge_tests::{bootstate, disk, repo_root, wait_healthy, FactoryDisk, RunningBox, ScratchDir};
use image::bundle::{build_bundle, BundleSpec};
use image::keys::SigningKey;

/// The rig's compatibility string (tests/qemu/edge.toml).
const COMPATIBLE: &str = "edge-qemu-aarch64";

fn factory() -> &'static FactoryDisk {
    static DISK: OnceLock<FactoryDisk> = OnceLock::new();
    DISK.get_or_init(|| {
        let dir = repo_root().join(".rig/tests/qemu-update");
        FactoryDisk::build(&dir).expect("build the factory disk image with tests/qemu/mkdisk.sh")
    })
}

/// A bundle of the factory image's own slot contents, as a newer version.
fn bundle(key: &SigningKey) -> Vec<u8> {
    let parts = factory()
        .path()
        .parent()
        .expect("the disk image is in a directory")
        .join("parts");
    let read = |name: &str| std::fs::read(parts.join(name)).expect("read a slot image");
    let spec = BundleSpec::new(COMPATIBLE, "0.99.0", 1);
    build_bundle(&spec, key, &read("kernel.ext4"), &read("rootfs.squashfs")).expect("bundle")
}

/// Puts `files` on the disk's FAT boot partition, replacing what is there.
fn put_on_boot_partition(image: &Path, files: &[(&str, &Path)]) {
    let boot = disk::find(image, "boot").expect("the boot partition");
    for (name, file) in files {
        let status = Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-o")
            .arg("-i")
            .arg(format!("{}@@{}", image.display(), boot.offset()))
            .arg(file)
            .arg(format!("::{name}"))
            .status()
            .expect("run mcopy (run ./dev deps)");
        assert!(status.success(), "mcopy {name}: {status}");
    }
}

#[test]
#[ignore = "needs the aarch64 build and the rig cache; run by ./dev test"]
fn an_update_from_the_channel_boots_slot_b_and_is_marked_good() {
    let scratch = ScratchDir::new("qemu-update").expect("scratch directory");
    let image = factory()
        .copy_to(&scratch.path().join("disk.img"))
        .expect("copy the factory disk image");

    let key = SigningKey::generate().expect("signing key");
    let server = UpdateServer::start(
        Offer {
            bundle: bundle(&key),
            channel: Some(("0.99.0".into(), COMPATIBLE.into())),
            cut_first_after: None,
        },
        &[IpAddr::V4(SERVER_IN_BOX)],
    )
    .expect("start the update server");

    let dir = scratch.path();
    std::fs::write(dir.join("update.pub"), key.public_key().to_line()).expect("write");
    std::fs::write(dir.join("update-ca.pem"), server.ca_pem()).expect("write");
    let config = format!(
        "[mux]\nlisten = \"0.0.0.0:443\"\n\n[update]\ncompatible = \"{COMPATIBLE}\"\n\
         keys = [\"/boot/update.pub\"]\nserver_ca = \"/boot/update-ca.pem\"\n\
         channel = \"https://{SERVER_IN_BOX}{CHANNEL_PATH}\"\npoll_interval = \"1s\"\n\
         health_deadline = \"120s\"\n"
    );
    std::fs::write(dir.join("edge.toml"), config).expect("write");
    put_on_boot_partition(
        &image,
        &[
            ("edge.toml", &dir.join("edge.toml")),
            ("update.pub", &dir.join("update.pub")),
            ("update-ca.pem", &dir.join("update-ca.pem")),
        ],
    );

    let options = BootOptions {
        server_port: Some(server.addr().port()),
        allow_reboot: true,
    };
    let mut edge_box = RunningBox::boot_with(&image, &options).expect("start QEMU");
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
    drop(edge_box);

    for (copy, state) in bootstate::read_both(&image)
        .expect("read the boot state")
        .into_iter()
        .enumerate()
    {
        let vars = state.unwrap_or_else(|e| panic!("copy {copy}: {e}"));
        assert_eq!(vars, bootstate::state_vars("B A", 3, 3), "copy {copy}");
    }
    eprintln!(
        "qemu update: installed {:.1} s and slot B marked good {:.1} s after QEMU was launched",
        installed_at.as_secs_f64(),
        marked_at.as_secs_f64()
    );
}
