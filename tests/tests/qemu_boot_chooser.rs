//! The boot script as boot chooser (docs/image.md, "Boot state"): each test
//! plants a boot state in a copy of the factory disk image, boots it through
//! U-Boot until the chosen slot's own init runs, and checks the slot the
//! script chose, the slot the kernel was told, and the state written back.

use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use edge_tests::bootstate::{self, encode_state, state_vars, Vars};
use edge_tests::disk::Extent as _;
use edge_tests::rig::{chosen_slot, cmdline_value, CHOSE_SLOT, INIT_CMDLINE, ROOT_MOUNTED};
use edge_tests::{disk, repo_root, FactoryDisk, RunningBox, ScratchDir};

fn factory() -> &'static FactoryDisk {
    static DISK: OnceLock<FactoryDisk> = OnceLock::new();
    DISK.get_or_init(|| {
        let dir = repo_root().join(".rig/tests/qemu-boot-chooser");
        FactoryDisk::build(&dir).expect("build the factory disk image with tests/qemu/mkdisk.sh")
    })
}

/// What one boot did.
struct Outcome {
    /// The slot in the script's `chose slot` line.
    chosen: String,
    /// `edge.slot=` as the slot's init saw it in /proc/cmdline.
    cmdline_slot: String,
    /// The initrd's line naming the root it mounted.
    root_line: String,
    transcript: String,
    /// Both copies of the boot state after the boot, decoded.
    after: [Vars; 2],
}

/// Boots a copy of the factory image whose boot state copies were replaced
/// by `copy0` and `copy1` (raw 16 KiB blocks) and stops it once the chosen
/// slot's rcS has run.
fn boot_with(label: &str, copy0: &[u8], copy1: &[u8]) -> Outcome {
    boot_prepared(label, copy0, copy1, |_| {})
}

/// [`boot_with`], with `prepare` given the disk image first.
fn boot_prepared(label: &str, copy0: &[u8], copy1: &[u8], prepare: impl FnOnce(&Path)) -> Outcome {
    let scratch = ScratchDir::new(label).expect("scratch directory");
    let image = factory()
        .copy_to(&scratch.path().join("disk.img"))
        .expect("copy the factory disk image");
    prepare(&image);
    bootstate::write_copy(&image, 0, copy0).expect("plant copy 0");
    bootstate::write_copy(&image, 1, copy1).expect("plant copy 1");

    let edge_box = RunningBox::boot(&image).expect("start QEMU through tests/qemu/boot.sh");
    let chose = edge_box.expect_line(CHOSE_SLOT);
    let root_line = edge_box.expect_line(ROOT_MOUNTED);
    let cmdline = edge_box.expect_line(INIT_CMDLINE);
    let transcript = edge_box.transcript();
    drop(edge_box);

    let after = bootstate::read_both(&image)
        .expect("read the boot state after the boot")
        .map(|copy| {
            copy.unwrap_or_else(|e| {
                panic!("{e} after the boot\n--- serial console ---\n{transcript}")
            })
        });
    Outcome {
        chosen: chosen_slot(&chose).unwrap_or_default().to_string(),
        cmdline_slot: cmdline_value(&cmdline, "edge.slot")
            .unwrap_or_default()
            .to_string(),
        root_line,
        transcript,
        after,
    }
}

/// Bytes that are no environment block: a fixed pseudo-random pattern, so
/// a failure can be replayed.
fn garbage() -> Vec<u8> {
    let mut x: u32 = 0x2545_f491;
    (0..bootstate::BLOCK_SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn state(order: &str, a_left: u8, b_left: u8) -> Vec<u8> {
    encode_state(order, a_left, b_left).expect("encode a boot state")
}

fn assert_booted(outcome: &Outcome, slot: &str) {
    let root = if slot == "A" { "rootfs_a" } else { "rootfs_b" };
    assert_eq!(outcome.chosen, slot, "{}", outcome.transcript);
    assert_eq!(outcome.cmdline_slot, slot, "{}", outcome.transcript);
    assert!(
        outcome.root_line.contains(&format!("root {root} ")),
        "{}",
        outcome.root_line
    );
}

fn assert_both_copies(outcome: &Outcome, expected: &Vars) {
    for (copy, vars) in outcome.after.iter().enumerate() {
        assert_eq!(vars, expected, "copy {copy}\n{}", outcome.transcript);
    }
}

fn assert_console_says(outcome: &Outcome, line: &str) {
    assert!(
        outcome.transcript.contains(line),
        "no {line:?}\n--- serial console ---\n{}",
        outcome.transcript
    );
}

#[test]
#[ignore = "needs the aarch64 build and the rig cache; run by ./dev test"]
fn slot_without_tries_is_skipped() {
    let outcome = boot_with("chooser-skip", &state("A B", 0, 3), &state("A B", 0, 3));
    assert_booted(&outcome, "B");
    assert_both_copies(&outcome, &state_vars("A B", 0, 2));
}

#[test]
#[ignore = "needs the aarch64 build and the rig cache; run by ./dev test"]
fn a_slot_with_an_uncompressed_kernel_boots() {
    let outcome = boot_prepared(
        "chooser-image",
        &state("B A", 3, 3),
        &state("B A", 3, 3),
        |image| {
            let dir = image.parent().expect("the disk image is in a directory");
            let slot = uncompressed_kernel_slot(dir);
            let part = disk::find(image, "kernel_b").expect("find kernel_b");
            assert!(
                slot.len() as u64 <= part.byte_len(),
                "the slot outgrew kernel_b"
            );
            let disk = std::fs::File::options()
                .write(true)
                .open(image)
                .expect("open the disk image");
            disk.write_all_at(&slot, part.offset())
                .expect("write kernel_b");
        },
    );
    assert_console_says(
        &outcome,
        "edge-boot: booting slot B from Image with its initrd",
    );
    assert_booted(&outcome, "B");
    assert_both_copies(&outcome, &state_vars("B A", 3, 2));
}

/// A kernel slot as the rig made it before kernels were gzip'd: the
/// factory's kernel unpacked as `Image`, and its initrd.
fn uncompressed_kernel_slot(dir: &Path) -> Vec<u8> {
    let factory_slot = factory().part("kernel.ext4");
    let files = dir.join("kernel");
    std::fs::create_dir_all(&files).expect("create the slot's directory");
    for name in ["Image.gz", "initrd"] {
        let request = format!("dump /{name} {}", files.join(name).display());
        run(Command::new("debugfs")
            .arg("-R")
            .arg(request)
            .arg(&factory_slot)
            .stderr(Stdio::null()));
    }
    run(Command::new("gzip").arg("-d").arg(files.join("Image.gz")));
    let slot = dir.join("kernel.ext4");
    run(Command::new("truncate").arg("-s").arg("48M").arg(&slot));
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "kernel", "-d"])
        .arg(&files)
        .arg(&slot));
    std::fs::read(&slot).expect("read the slot image")
}

fn run(command: &mut Command) {
    let status = command.status().expect("start a host tool");
    assert!(status.success(), "{command:?}: {status}");
}

#[test]
#[ignore = "needs the aarch64 build and the rig cache; run by ./dev test"]
fn damaged_copy_0_falls_back_to_copy_1() {
    // Copy 1 differs from the factory state, so the count shows it was read;
    // both copies are written back, which repairs copy 0.
    let outcome = boot_with("chooser-copy1", &garbage(), &state("A B", 1, 3));
    assert_console_says(&outcome, "edge-boot: copy 0 of the boot state is damaged");
    assert_console_says(&outcome, "edge-boot: boot state from copy 1");
    assert_booted(&outcome, "A");
    assert_both_copies(&outcome, &state_vars("A B", 0, 3));
}

#[test]
#[ignore = "needs the aarch64 build and the rig cache; run by ./dev test"]
fn copy_with_a_valid_crc_but_bad_values_counts_as_damaged() {
    let outcome = boot_with("chooser-values", &state("A B", 7, 3), &state("B A", 3, 3));
    assert_console_says(&outcome, "edge-boot: boot state from copy 1");
    assert_booted(&outcome, "B");
    assert_both_copies(&outcome, &state_vars("B A", 3, 2));
}

#[test]
#[ignore = "needs the aarch64 build and the rig cache; run by ./dev test"]
fn both_copies_damaged_boot_the_defaults() {
    let outcome = boot_with("chooser-defaults", &garbage(), &garbage());
    assert_console_says(&outcome, "edge-boot: no valid copy of the boot state");
    assert_booted(&outcome, "A");
    assert_both_copies(&outcome, &state_vars("A B", 2, 3));
}

#[test]
#[ignore = "needs the aarch64 build and the rig cache; run by ./dev test"]
fn no_tries_left_resets_both_and_boots_the_first_of_boot_order() {
    // B first, so the choice shows it follows BOOT_ORDER rather than A.
    let outcome = boot_with("chooser-reset", &state("B A", 0, 0), &state("B A", 0, 0));
    assert_console_says(&outcome, "edge-boot: no slot has tries left");
    assert_booted(&outcome, "B");
    assert_both_copies(&outcome, &state_vars("B A", 3, 2));
}
