//! Power cuts during an update: QEMU is killed at a random moment between
//! the factory slot marking itself good and the new slot doing the same
//! (payload writes, the read-back, the boot state switch, the reboot, the
//! boot state writes of U-Boot and of mark-good). Every restart must end on a
//! slot that marks itself good, with `/data` mounting and the updater's
//! record readable.
//!
//! `EDGE_POWER_CUTS` sets how many cuts (default 3, what CI runs);
//! `EDGE_POWER_CUT_SEED` makes the moments repeatable. `./dev soak` runs 30.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edge_tests::rig::{
    chosen_slot, provision_for_channel, spoil_slot_b, BootOptions, CHOSE_SLOT, COMPATIBLE,
    MARKED_GOOD, SERVER_IN_BOX,
};
use edge_tests::update_server::{Offer, UpdateServer};
use edge_tests::{bootstate, repo_root, FactoryDisk, RunningBox, ScratchDir};
use image::bundle::{build_bundle, BundleSpec};
use image::keys::SigningKey;

/// The window after slot A is marked good in which the cut falls. Here the
/// download and install take about 7 to 9 s and slot B is up about 6 s
/// later; the window centres the cuts on the writes, with some falling in
/// the reboot and slot B's boot.
const WINDOW: Duration = Duration::from_secs(12);

fn factory() -> &'static FactoryDisk {
    static DISK: OnceLock<FactoryDisk> = OnceLock::new();
    DISK.get_or_init(|| {
        let dir = repo_root().join(".rig/tests/qemu-power-cut");
        FactoryDisk::build(&dir).expect("build the factory disk image with tests/qemu/mkdisk.sh")
    })
}

fn slot_image(name: &str) -> Vec<u8> {
    std::fs::read(factory().part(name)).expect("read a slot image")
}

/// A small deterministic generator: the moments must be repeatable from the
/// printed seed, not good random numbers.
struct Moments(u64);

impl Moments {
    fn next(&mut self, window: Duration) -> Duration {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let fraction = (self.0 >> 11) as f64 / (1u64 << 53) as f64;
        window.mul_f64(fraction)
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A factory disk copy provisioned to follow the channel of `server`.
fn provisioned(dir: &Path, key: &SigningKey, server: &UpdateServer) -> PathBuf {
    let image = factory()
        .copy_to(&dir.join("disk.img"))
        .expect("copy the factory disk image");
    provision_for_channel(&image, dir, &key.public_key().to_line(), server.ca_pem());
    // So that the install writes the whole bundle, and the cuts land in
    // those writes.
    spoil_slot_b(&image);
    image
}

#[test]
#[ignore = "needs the aarch64 build and the rig cache; run by ./dev test"]
fn power_cuts_during_an_update_end_on_a_good_slot() {
    let cuts = env_number("EDGE_POWER_CUTS").unwrap_or(3);
    let seed = env_number("EDGE_POWER_CUT_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    eprintln!("power cuts: {cuts}, seed {seed} (EDGE_POWER_CUT_SEED={seed} repeats them)");
    let mut moments = Moments(seed);

    let key = SigningKey::generate().expect("signing key");
    let spec = BundleSpec::new(COMPATIBLE, "0.99.0", 1);
    let bundle = build_bundle(
        &spec,
        &key,
        &slot_image("kernel.ext4"),
        &slot_image("rootfs.squashfs"),
    )
    .expect("bundle");
    let server = UpdateServer::start(
        Offer {
            bundle,
            channel: Some(("0.99.0".into(), COMPATIBLE.into())),
            cut_first_after: None,
        },
        &[IpAddr::V4(SERVER_IN_BOX)],
    )
    .expect("start the update server");
    let options = BootOptions {
        server_port: Some(server.addr().port()),
        allow_reboot: true,
    };

    let mut landed = [0usize; 2];
    let mut resumed = 0usize;
    for cut in 0..cuts {
        let scratch = ScratchDir::new("qemu-power-cut").expect("scratch directory");
        let image = provisioned(scratch.path(), &key, &server);
        let delay = moments.next(WINDOW);

        let edge_box = RunningBox::boot_with(&image, &options).expect("start QEMU");
        edge_box.expect_line(MARKED_GOOD);
        let cut_at = Instant::now() + delay;
        while Instant::now() < cut_at {
            std::thread::sleep(Duration::from_millis(20));
        }
        let before = edge_box.transcript();
        drop(edge_box);
        let phase = phase_of(&before);

        let edge_box = RunningBox::boot_with(&image, &options).expect("start QEMU again");
        let chose = edge_box.expect_line(CHOSE_SLOT);
        edge_box.expect_line("mounted data");
        let good = edge_box.expect_line(MARKED_GOOD);
        let slot = if good.contains("slot=B") { 1 } else { 0 };
        landed[slot] += 1;
        // Back on slot A, the box installs the update again, picking up
        // from what the cut left in slot B.
        let mut again = String::new();
        if slot == 0 {
            edge_box.expect_line("update installed");
            let transcript = edge_box.transcript();
            again = match transcript.lines().find(|l| l.contains(RESUMED)) {
                Some(line) => {
                    resumed += 1;
                    format!(", installed again from {}", field(line, "from="))
                }
                None => ", installed again whole".to_owned(),
            };
        }
        drop(edge_box);

        let state = bootstate::read_both(&image).expect("read the boot state");
        assert!(
            state.iter().any(Result::is_ok),
            "cut {cut}: no valid boot state copy"
        );
        eprintln!(
            "cut {cut}: {:.1} s after slot A was good, {phase}; restarted with {}, \
             marked good {}{again}",
            delay.as_secs_f64(),
            chosen_slot(&chose).unwrap_or("?"),
            if slot == 1 { "B" } else { "A" },
        );
    }
    eprintln!(
        "power cuts: {cuts} of {cuts} ended on a good slot ({} on A, {} on B); \
         {resumed} installs resumed from what slot B held",
        landed[0], landed[1]
    );
}

/// The installer's log line when slot B already held part of the bundle.
const RESUMED: &str = "the slot already holds the start of this bundle";

/// The value of `key` (`from=`) in a log line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key))
        .unwrap_or("?")
}

/// Where the update was when the power went, from the console.
///
/// The bundle carries the factory's `edge`, which reports the factory's
/// version, below the 0.99.0 the channel offers; so slot B, once good, sees
/// the offer as newer too and installs it into slot A, and a cut late in the
/// window can land in that second install or after it switched the boot
/// order back to A.
fn phase_of(transcript: &str) -> &'static str {
    let chose = transcript.matches(CHOSE_SLOT).count();
    let good = transcript.matches(MARKED_GOOD).count();
    let installing = transcript.matches("installing update").count();
    let installed = transcript.matches("update installed version=").count();
    match (chose, good) {
        (2.., 2..) if installed >= 2 => "after slot B installed the offer again, into slot A",
        (2.., 2..) if installing >= 2 => "while slot B installed the offer again, into slot A",
        (2.., 2..) => "after slot B marked itself good",
        (2.., _) => "while slot B was booting",
        _ if installed >= 1 => "after the install, before the reboot",
        _ if installing >= 1 => "during the download and install",
        _ => "before the install started",
    }
}
