//! The factory disk image, booted the way a board boots it: U-Boot runs the
//! boot script from the FAT partition, the script chooses slot A and counts
//! the try on the bootstate partition, the kernel and the rig's initrd mount
//! rootfs_a, and the slot's busybox init starts `edge` with the provisioning
//! file from the boot partition. The host reaches the box's :443 through
//! QEMU's forward on 127.0.0.1.

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use edge_tests::disk::Extent as _;
use edge_tests::rig::{
    chosen_slot, cmdline_value, provision, status_saying, CHOSE_SLOT, EDGE_STARTING, FATAL,
    INIT_CMDLINE, MARKED_GOOD,
};
use edge_tests::{bootstate, disk, repo_root, wait_healthy, FactoryDisk, RunningBox, ScratchDir};

/// From `edge run` being started to the first 200 on /healthz.
const HEALTHY_WITHIN: Duration = Duration::from_secs(120);

/// The medium the factory image is written to: larger than the image, so
/// the first boot grows `data` to its end.
const MEDIUM: u64 = 512 << 20;

/// What the system start prints when edge grew `data`.
const DATA_GROWN: &str = "edge-init: data grown: ";

/// The boot script's last word before `booti`.
const BOOTING: &str = "edge-boot: booting slot ";

/// edge's log line once it has armed the board's watchdog.
const WATCHDOG_ARMED: &str = "watchdog armed";

/// What the system start prints before it gives up on a slot's edge.
const GIVING_UP: &str = "edge-init: edge failed to start 5 times in a row; rebooting";

/// docs/image.md: labels in partition order, and sizes in MiB.
const LAYOUT: [(&str, u64); 7] = [
    ("boot", 32),
    ("bootstate", 1),
    ("kernel_a", 48),
    ("kernel_b", 48),
    ("rootfs_a", 64),
    ("rootfs_b", 64),
    ("data", 64),
];

fn factory() -> &'static FactoryDisk {
    static DISK: OnceLock<FactoryDisk> = OnceLock::new();
    DISK.get_or_init(|| {
        let dir = repo_root().join(".rig/tests/qemu-boot");
        FactoryDisk::build(&dir).expect("build the factory disk image with tests/qemu/mkdisk.sh")
    })
}

#[test]
#[ignore = "needs the aarch64 build and the rig cache; run by ./dev test"]
fn disk_layout_matches_the_image_contract() {
    let image = factory().path();
    let parts = disk::partitions(image).expect("read the GPT of the factory image");
    let found: Vec<(u32, &str, u64)> = parts
        .iter()
        .map(|p| (p.number, p.name.as_str(), p.byte_len() / (1024 * 1024)))
        .collect();
    let expected: Vec<(u32, &str, u64)> = LAYOUT
        .iter()
        .zip(1..)
        .map(|((name, mib), number)| (number, *name, *mib))
        .collect();
    assert_eq!(found, expected, "partitions (number, label, MiB)");

    // Distro boot scans the legacy-bootable partitions for boot.scr.
    let bootable: Vec<&str> = parts
        .iter()
        .filter(|p| p.is_legacy_bootable())
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(bootable, ["boot"], "legacy-bootable partitions");

    for (copy, state) in bootstate::read_both(image)
        .expect("read the boot state")
        .into_iter()
        .enumerate()
    {
        let vars = state.unwrap_or_else(|e| panic!("factory copy {copy}: {e}"));
        assert_eq!(
            vars,
            bootstate::state_vars("A B", 3, 3),
            "factory copy {copy}"
        );
    }

    let meta = std::fs::metadata(image).expect("stat the disk image");
    eprintln!(
        "disk image: {:.0} MiB, {:.1} MiB allocated",
        meta.len() as f64 / 1048576.0,
        (meta.blocks() * 512) as f64 / 1048576.0
    );
}

#[test]
#[ignore = "needs the aarch64 build and the rig cache; run by ./dev test"]
fn factory_image_boots_slot_a_and_serves_healthz() {
    let scratch = ScratchDir::new("qemu-boot").expect("scratch directory");
    let image = factory()
        .copy_to(&scratch.path().join("disk.img"))
        .expect("copy the factory disk image");
    disk::enlarge(&image, MEDIUM).expect("enlarge the disk image");
    let mut edge_box = RunningBox::boot(&image).expect("start QEMU through tests/qemu/boot.sh");

    let chose = edge_box.expect_line(CHOSE_SLOT);
    let chose_at = edge_box.uptime();
    assert_eq!(chosen_slot(&chose), Some("A"), "{chose}");
    // The rig's kernel slot holds a gzip'd kernel, which booti unpacks.
    let booting = edge_box.expect_line(BOOTING);
    assert!(booting.contains("from Image.gz"), "{booting}");
    let cmdline = edge_box.expect_line(INIT_CMDLINE);
    assert_eq!(cmdline_value(&cmdline, "edge.slot"), Some("A"), "{cmdline}");
    let grown = edge_box.expect_line(DATA_GROWN);
    let starting = edge_box.expect_line(EDGE_STARTING);
    let started_at = edge_box.uptime();
    let armed = edge_box.expect_line(WATCHDOG_ARMED);
    assert!(armed.contains("timeout_s=30"), "{armed}");
    assert!(
        starting.ends_with("/boot/edge.toml"),
        "edge did not take the provisioning file from the boot partition: {starting}"
    );

    let addr = edge_box.addr();
    let (health, _) = match wait_healthy(addr, HEALTHY_WITHIN, edge_box.qemu()) {
        Ok(answer) => answer,
        Err(e) => panic!(
            "the box never became healthy: {e}\n--- serial console ---\n{}",
            edge_box.transcript()
        ),
    };
    let healthy_at = edge_box.uptime();
    assert_eq!(health.status, 200);
    assert_eq!(&health.body[..], b"ok", "body of /healthz");
    assert!(
        !health.certificates.is_empty(),
        "the box presented no certificate"
    );

    let transcript = edge_box.transcript();
    for mounted in [
        "mounted boot (/dev/vda1) on /boot",
        "mounted data (/dev/vda7) on /data",
    ] {
        assert!(
            transcript.contains(mounted),
            "no {mounted:?}\n--- serial console ---\n{transcript}"
        );
    }

    // The boot script counted the try before the kernel started; once its
    // own health check passed, the box marks the slot good, giving the try
    // back. QEMU is gone once the box is dropped, and what was written is in
    // the file.
    edge_box.expect_line(MARKED_GOOD);
    let marked_at = edge_box.uptime();
    // What a partner reads when they put the card in a computer.
    let status = status_saying(&image, "slot:          A, marked good\n");
    let version = format!("version:       {} (", env!("CARGO_PKG_VERSION"));
    for line in [
        version.as_str(),
        "boot order:    A B (tries left: A 3, B 3)\n",
        "health:        https://10.0.2.15/healthz\n",
    ] {
        assert!(status.contains(line), "no {line:?} in:\n{status}");
    }
    // QEMU's user network gives the IPv4 address by DHCP at once; its
    // router advertisement may or may not have added an IPv6 one by the
    // time the file is written.
    let addresses = status
        .lines()
        .find_map(|line| line.strip_prefix("addresses:     "))
        .unwrap_or_else(|| panic!("no addresses line in:\n{status}"));
    let mut addresses = addresses.split(", ");
    assert_eq!(addresses.next(), Some("10.0.2.15"), "{status}");
    for other in addresses {
        let ip: std::net::Ipv6Addr = other
            .parse()
            .unwrap_or_else(|e| panic!("{other:?} is not an IPv6 address ({e}) in:\n{status}"));
        assert_eq!(ip.segments()[0], 0xfec0, "{status}");
    }
    assert!(!status.contains("last rollback:"), "{status}");
    drop(edge_box);
    for (copy, state) in bootstate::read_both(&image)
        .expect("read the boot state after the boot")
        .into_iter()
        .enumerate()
    {
        let vars = state.unwrap_or_else(|e| panic!("copy {copy} after the boot: {e}"));
        assert_eq!(vars, bootstate::state_vars("A B", 3, 3), "copy {copy}");
    }
    check_data_fills_the_medium(&image, &scratch, &grown);

    // Byte for byte what mkenvimage makes of the same variables: the box
    // writes the format U-Boot's `env import -c` reads.
    let expected = mkenvimage(
        &scratch,
        &["BOOT_A_LEFT=3", "BOOT_B_LEFT=3", "BOOT_ORDER=A B"],
    );
    for copy in 0..2 {
        let written = bootstate::read_copy(&image, copy).expect("read a boot state copy");
        assert!(
            written == expected,
            "copy {copy} differs from mkenvimage's block"
        );
    }
    eprintln!(
        "qemu image: slot A marked good {:.2} s after QEMU was launched",
        marked_at.as_secs_f64()
    );

    eprintln!(
        "qemu image: U-Boot chose slot A {:.2} s, edge started {:.2} s and healthy {:.2} s \
         after QEMU was launched ({:?})",
        chose_at.as_secs_f64(),
        started_at.as_secs_f64(),
        healthy_at.as_secs_f64(),
        health.protocol
    );
}

/// A slot whose `edge` cannot start (here: a certificate file that is not
/// there, an error at start-up that is not the configuration's syntax) is
/// given up on: after five failed starts the system start reboots, so the
/// boot chooser counts the try. With the rig's -no-reboot, QEMU ends.
#[test]
#[ignore = "needs the aarch64 build and the rig cache; run by ./dev test"]
fn a_slot_whose_edge_cannot_start_reboots() {
    let scratch = ScratchDir::new("qemu-boot-no-start").expect("scratch directory");
    let image = factory()
        .copy_to(&scratch.path().join("disk.img"))
        .expect("copy the factory disk image");
    let config = "[mux]\nlisten = \"0.0.0.0:443\"\n\n\
                  [[tls.certificate]]\ncert = \"/boot/missing.pem\"\nkey = \"/boot/missing.key\"\n";
    provision(&image, scratch.path(), &[("edge.toml", config)]);
    let mut edge_box = RunningBox::boot(&image).expect("start QEMU through tests/qemu/boot.sh");

    let fatal: Vec<&str> = FATAL
        .iter()
        .copied()
        .filter(|line| !line.starts_with("edge-init: edge exited"))
        .collect();
    edge_box.expect_line_with(GIVING_UP, &fatal);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        match edge_box.qemu().exited() {
            Ok(Some(status)) => break status,
            _ if std::time::Instant::now() > deadline => panic!(
                "the box did not reboot\n--- serial console ---\n{}",
                edge_box.transcript()
            ),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    assert!(status.success(), "QEMU: {status}");
    let transcript = edge_box.transcript();
    assert_eq!(
        transcript
            .matches("edge-init: edge exited with status 1")
            .count(),
        5,
        "{transcript}"
    );
}

/// After the first boot on a larger medium, `data` ends within the last MiB
/// before the backup table, both tables check out, and its file system is
/// clean and as large as the partition (to the block).
fn check_data_fills_the_medium(image: &std::path::Path, scratch: &ScratchDir, grown: &str) {
    const MIB: u64 = 1 << 20;
    if let Err(e) = disk::verify_table(image) {
        panic!("the grown partition table: {e}");
    }
    let data = disk::find(image, "data").expect("find data after the boot");
    let end = (data.last_lba + 1) * disk::SECTOR;
    let usable_end = MEDIUM - 33 * disk::SECTOR;
    assert!(
        end <= usable_end && end > usable_end - MIB,
        "data ends at {end}, the usable area at {usable_end} ({grown})"
    );
    let fs = disk::check_ext4(image, &data, &scratch.path().join("data.ext4"))
        .unwrap_or_else(|e| panic!("data after the boot: {e}"));
    assert!(
        data.byte_len() - fs < 4096,
        "file system {fs} bytes in a partition of {}",
        data.byte_len()
    );
    let expected = format!(
        "partition 64 -> {mib} MiB, file system 64 -> {mib} MiB",
        mib = data.byte_len() / MIB
    );
    assert!(
        grown.ends_with(&expected),
        "{grown:?}, expected {expected:?}"
    );
}

/// `mkenvimage -s 0x4000 -p 0x00` of `vars` (u-boot-tools), as the factory
/// image's boot state is made.
fn mkenvimage(scratch: &ScratchDir, vars: &[&str]) -> Vec<u8> {
    let text = scratch.path().join("env.txt");
    let block = scratch.path().join("env.bin");
    std::fs::write(&text, vars.join("\n") + "\n").expect("write the variables");
    let status = Command::new("mkenvimage")
        .args(["-s", "0x4000", "-p", "0x00", "-o"])
        .arg(&block)
        .arg(&text)
        .status()
        .expect("run mkenvimage (run ./dev deps)");
    assert!(status.success(), "mkenvimage failed: {status}");
    std::fs::read(&block).expect("read mkenvimage's block")
}
