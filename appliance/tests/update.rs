//! Installing bundles into slot partitions, here plain files in a temporary
//! directory laid out like the box's disk: a good bundle switches the boot
//! order, every refused one leaves the running slot and the boot state as
//! they were.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use appliance::update::state::UpdateState;
use appliance::update::{
    booted_slot, install, read_boot_state, write_boot_state, InstallPolicy, Partitions, UpdateError,
};
use edge_tests::update_server::{Offer, UpdateServer, BUNDLE_PATH, CHANNEL_PATH};
use image::bootstate::{BootState, Slot};
use image::bundle::{build_bundle, BundleSpec};
use image::keys::SigningKey;
use image::BundleError;
use std::net::{IpAddr, Ipv4Addr};

const COMPATIBLE: &str = "edge-test-aarch64";
const PARTITION_LEN: u64 = 256 * 1024;

/// A disk of files, with the running slot A filled with a marker.
struct Disk {
    dir: PathBuf,
    partitions: Partitions,
}

impl Disk {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("edge-update-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        let part = |label: &str| {
            let path = dir.join(label);
            File::create(&path)
                .and_then(|f| f.set_len(PARTITION_LEN))
                .expect("partition file");
            path
        };
        let partitions = Partitions {
            bootstate: part("bootstate"),
            kernel: [part("kernel_a"), part("kernel_b")],
            rootfs: [part("rootfs_a"), part("rootfs_b")],
        };
        fs::write(&partitions.kernel[0], b"running kernel").expect("write");
        fs::write(&partitions.rootfs[0], b"running rootfs").expect("write");
        write_boot_state(&partitions.bootstate, &BootState::default()).expect("boot state");
        Self { dir, partitions }
    }

    fn snapshot(&self) -> Vec<Vec<u8>> {
        [
            &self.partitions.bootstate,
            &self.partitions.kernel[0],
            &self.partitions.rootfs[0],
        ]
        .iter()
        .map(|p| fs::read(p).expect("read"))
        .collect()
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn payloads() -> (Vec<u8>, Vec<u8>) {
    let kernel: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let rootfs: Vec<u8> = (0..150_000u32).map(|i| (i * 13 % 241) as u8).collect();
    (kernel, rootfs)
}

fn bundle(key: &SigningKey, compatible: &str, security_version: u64) -> Vec<u8> {
    let (kernel, rootfs) = payloads();
    let mut spec = BundleSpec::new(compatible, "1.2.3", security_version);
    spec.chunk_size = 4096;
    build_bundle(&spec, key, &kernel, &rootfs).expect("bundle")
}

fn run(disk: &Disk, key: &SigningKey, bytes: &[u8]) -> Result<Slot, UpdateError> {
    let trusted = [key.public_key().clone()];
    let policy = InstallPolicy {
        trusted: &trusted,
        compatible: COMPATIBLE,
        installed_security_version: 5,
    };
    install(
        &mut io::Cursor::new(bytes),
        &policy,
        &disk.partitions,
        Slot::A,
    )
    .map(|done| done.slot)
}

fn starts_with_file(path: &Path, expected: &[u8]) -> bool {
    fs::read(path).expect("read").starts_with(expected)
}

#[test]
fn a_good_bundle_fills_the_other_slot_and_boots_it_next() {
    let disk = Disk::new("good");
    let key = SigningKey::generate().expect("key");
    let slot = run(&disk, &key, &bundle(&key, COMPATIBLE, 6)).expect("installed");
    assert_eq!(slot, Slot::B);

    let (kernel, rootfs) = payloads();
    assert!(starts_with_file(&disk.partitions.kernel[1], &kernel));
    assert!(starts_with_file(&disk.partitions.rootfs[1], &rootfs));
    assert!(starts_with_file(
        &disk.partitions.kernel[0],
        b"running kernel"
    ));
    let loaded = read_boot_state(&disk.partitions.bootstate).expect("boot state");
    assert_eq!(loaded.state.primary(), Slot::B);
    assert_eq!(loaded.state.tries_left(Slot::B), 3);
    assert!(loaded.copies_agree);
}

#[test]
fn refused_bundles_change_nothing_that_boots() {
    let disk = Disk::new("refused");
    let key = SigningKey::generate().expect("key");
    let stranger = SigningKey::generate().expect("key");
    let good = bundle(&key, COMPATIBLE, 6);
    let before = disk.snapshot();

    let mut tampered = good.clone();
    let last = tampered.len() - 100;
    tampered[last] ^= 0x01;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("tampered payload", tampered),
        ("truncated", good[..good.len() - 5000].to_vec()),
        ("unknown key", bundle(&stranger, COMPATIBLE, 6)),
        ("other target", bundle(&key, "edge-other-board", 6)),
        ("older security version", bundle(&key, COMPATIBLE, 4)),
        ("not a bundle", b"<html>not found</html>".to_vec()),
    ];
    for (what, bytes) in cases {
        let err = run(&disk, &key, &bytes).expect_err(what);
        assert!(
            matches!(err, UpdateError::Bundle(_)),
            "{what}: unexpected error {err}"
        );
        assert_eq!(disk.snapshot(), before, "{what} changed the running system");
    }
}

#[test]
fn an_unknown_key_is_refused_before_anything_is_written() {
    let disk = Disk::new("unknown-key");
    let key = SigningKey::generate().expect("key");
    let stranger = SigningKey::generate().expect("key");
    let err = run(&disk, &key, &bundle(&stranger, COMPATIBLE, 6)).expect_err("refused");
    assert!(
        matches!(err, UpdateError::Bundle(BundleError::UnknownKey { .. })),
        "{err}"
    );
    let untouched = fs::read(&disk.partitions.rootfs[1]).expect("read");
    assert!(
        untouched.iter().all(|&b| b == 0),
        "the inactive slot was written"
    );
}

#[test]
fn a_slot_too_small_is_refused() {
    let disk = Disk::new("small");
    File::options()
        .write(true)
        .open(&disk.partitions.rootfs[1])
        .and_then(|f| f.set_len(1000))
        .expect("shrink");
    let key = SigningKey::generate().expect("key");
    let err = run(&disk, &key, &bundle(&key, COMPATIBLE, 6)).expect_err("too small");
    assert!(matches!(err, UpdateError::TooLarge { .. }), "{err}");
}

#[test]
fn a_second_install_while_one_runs_is_refused() {
    let disk = Disk::new("busy");
    let held = File::open(&disk.partitions.bootstate).expect("open");
    held.lock().expect("lock");
    let key = SigningKey::generate().expect("key");
    let err = run(&disk, &key, &bundle(&key, COMPATIBLE, 6)).expect_err("busy");
    assert!(matches!(err, UpdateError::Busy), "{err}");
}

#[test]
fn the_boot_state_survives_a_torn_first_copy() {
    let disk = Disk::new("torn");
    let state = BootState::default().switch_to(Slot::B);
    write_boot_state(&disk.partitions.bootstate, &state).expect("write");
    // A power cut in the middle of the next write of copy 0.
    let mut area = fs::read(&disk.partitions.bootstate).expect("read");
    area[100..4000].fill(0xa5);
    fs::write(&disk.partitions.bootstate, &area).expect("write");
    let loaded = read_boot_state(&disk.partitions.bootstate).expect("read");
    assert_eq!(loaded.state, state);
    assert!(loaded.needs_repair());
}

#[test]
fn partitions_are_found_by_label() {
    let root = std::env::temp_dir().join(format!("edge-sysfs-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let labels = [
        ("vda1", "boot"),
        ("vda2", "bootstate"),
        ("vda3", "kernel_a"),
        ("vda4", "kernel_b"),
        ("vda5", "rootfs_a"),
        ("vda6", "rootfs_b"),
        ("vda7", "data"),
    ];
    for (node, label) in labels {
        let dir = root.join("sys/class/block").join(node);
        fs::create_dir_all(&dir).expect("dir");
        let uevent =
            format!("MAJOR=254\nMINOR=1\nDEVNAME={node}\nDEVTYPE=partition\nPARTNAME={label}\n");
        fs::write(dir.join("uevent"), uevent).expect("uevent");
    }
    fs::create_dir_all(root.join("sys/class/block/vda")).expect("disk");
    fs::write(
        root.join("sys/class/block/vda/uevent"),
        "DEVNAME=vda\nDEVTYPE=disk\n",
    )
    .expect("uevent");

    let found = Partitions::discover(&root.join("sys"), Path::new("/dev")).expect("found");
    assert_eq!(found.bootstate, Path::new("/dev/vda2"));
    assert_eq!(found.kernel[1], Path::new("/dev/vda4"));
    assert_eq!(found.rootfs[0], Path::new("/dev/vda5"));

    fs::remove_dir_all(root.join("sys/class/block/vda6")).expect("remove");
    let err = Partitions::discover(&root.join("sys"), Path::new("/dev")).expect_err("missing");
    assert!(err.to_string().contains("rootfs_b"), "{err}");
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn the_booted_slot_comes_from_the_kernel_command_line() {
    assert_eq!(
        booted_slot("console=ttyAMA0 edge.slot=B panic=-1"),
        Some(Slot::B)
    );
    assert_eq!(booted_slot("console=ttyAMA0"), None);
    assert_eq!(booted_slot("edge.slot=C"), None);
}

/// A box on this host: the disk files, a sysfs naming them, a kernel command
/// line, a trusted key and a configuration for `edge`.
struct Host {
    disk: Disk,
    key: SigningKey,
    config: PathBuf,
}

impl Host {
    fn new(name: &str) -> Self {
        let disk = Disk::new(name);
        let sys = disk.dir.join("sys/class/block");
        for label in ["bootstate", "kernel_a", "kernel_b", "rootfs_a", "rootfs_b"] {
            fs::create_dir_all(sys.join(label)).expect("sysfs dir");
            let uevent = format!("DEVNAME={label}\nDEVTYPE=partition\nPARTNAME={label}\n");
            fs::write(sys.join(label).join("uevent"), uevent).expect("uevent");
        }
        let key = SigningKey::generate().expect("key");
        fs::write(disk.dir.join("key.pub"), key.public_key().to_line()).expect("pub");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = disk.dir.join("edge.toml");
        let dir = disk.dir.display();
        fs::write(
            &config,
            format!(
                "[mux]\nlisten = \"127.0.0.1:{port}\"\n\
                 [update]\nkeys = [\"{dir}/key.pub\"]\ncompatible = \"{COMPATIBLE}\"\n\
                 state_dir = \"{dir}/state\"\nsys_root = \"{dir}/sys\"\ndev_root = \"{dir}\"\n\
                 cmdline = \"{dir}/cmdline\"\nhealth_deadline = \"60s\"\nreboot = false\n"
            ),
        )
        .expect("config");
        let host = Self { disk, key, config };
        host.boot_into(Slot::A);
        host
    }

    fn boot_into(&self, slot: Slot) {
        let cmdline = format!("console=ttyAMA0 edge.slot={slot} panic=-1\n");
        fs::write(self.disk.dir.join("cmdline"), cmdline).expect("cmdline");
    }

    /// Does what the boot script does: choose a slot, spend one of its tries.
    fn power_on(&self) -> Slot {
        let loaded = read_boot_state(&self.disk.partitions.bootstate).expect("read");
        let (slot, spent) = loaded.state.choose();
        write_boot_state(&self.disk.partitions.bootstate, &spent).expect("write");
        self.boot_into(slot);
        slot
    }

    fn edge(&self) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_edge"));
        command.stderr(std::process::Stdio::null());
        command
    }

    fn state(&self) -> UpdateState {
        UpdateState::load(&self.disk.dir.join("state")).expect("state")
    }

    /// Runs the box until `done` holds for its state and boot state.
    fn run_until(&self, done: impl Fn(&UpdateState, &BootState) -> bool) {
        let child = self
            .edge()
            .args(["run", "--config"])
            .arg(&self.config)
            .spawn()
            .expect("start edge");
        let mut running = KillOnDrop(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let boot = read_boot_state(&self.disk.partitions.bootstate).expect("read");
            if done(&self.state(), &boot.state) {
                break;
            }
            assert!(running.0.try_wait().expect("wait").is_none(), "edge exited");
            assert!(std::time::Instant::now() < deadline, "not done in 60 s");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Runs the box until its log, at the default `info`, holds `needle`;
    /// returns the log.
    fn run_until_logged(&self, needle: &str) -> String {
        let log = self.disk.dir.join("edge.log");
        let child = self
            .edge()
            .env_remove("RUST_LOG")
            .stderr(File::create(&log).expect("log file"))
            .args(["run", "--config"])
            .arg(&self.config)
            .spawn()
            .expect("start edge");
        let mut running = KillOnDrop(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let text = fs::read_to_string(&log).expect("read log");
            if text.contains(needle) {
                return text;
            }
            assert!(
                running.0.try_wait().expect("wait").is_none(),
                "edge exited: {text}"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} in 60 s: {text}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    fn install(&self, bundle: &[u8]) -> std::process::Output {
        let path = self.disk.dir.join("update.bundle");
        fs::write(&path, bundle).expect("bundle");
        self.install_from(&path.display().to_string())
    }

    /// `edge update install` from a file or a URL.
    fn install_from(&self, source: &str) -> std::process::Output {
        self.edge()
            .stderr(std::process::Stdio::piped())
            .args(["update", "install", "--no-reboot", "--config"])
            .arg(&self.config)
            .arg(source)
            .output()
            .expect("run edge")
    }

    /// Trusts `ca_pem`, and only it, for bundles fetched over HTTPS.
    fn trust_server(&self, ca_pem: &str) {
        let ca = self.disk.dir.join("server-ca.pem");
        fs::write(&ca, ca_pem).expect("ca");
        let config = fs::read_to_string(&self.config).expect("config");
        let trusted = format!("[update]\nserver_ca = \"{}\"\n", ca.display());
        fs::write(&self.config, config.replace("[update]\n", &trusted)).expect("config");
    }
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_installed_update_that_comes_up_healthy_is_marked_good() {
    let host = Host::new("cycle-good");
    let out = host.install(&bundle(&host.key, COMPATIBLE, 6));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(host.state().pending.map(|p| p.slot), Some("B".to_owned()));

    assert_eq!(host.power_on(), Slot::B);
    host.run_until(|state, boot| {
        state.pending.is_none() && boot.tries_left(Slot::B) == 3 && boot.primary() == Slot::B
    });
    assert_eq!(host.state().installed_security_version, 6);

    // The recorded security version now refuses what came before.
    let out = host.install(&bundle(&host.key, COMPATIBLE, 5));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("security version"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_update_that_never_marks_itself_good_rolls_back_and_is_remembered() {
    let host = Host::new("cycle-rollback");
    let out = host.install(&bundle(&host.key, COMPATIBLE, 6));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Three boots of the new slot that never get healthy, then the fallback.
    for _ in 0..3 {
        assert_eq!(host.power_on(), Slot::B);
    }
    assert_eq!(host.power_on(), Slot::A);
    host.run_until(|state, boot| {
        state.last_rollback.is_some() && boot.primary() == Slot::A && boot.tries_left(Slot::A) == 3
    });
    let state = host.state();
    assert!(state.has_failed("1.2.3"));
    assert_eq!(state.installed_security_version, 0);
    assert!(state.pending.is_none());
}

/// The shared loopback update server, trusted by `host`.
fn update_server(host: &Host, offer: Offer) -> UpdateServer {
    let server = UpdateServer::start(offer, &[IpAddr::V4(Ipv4Addr::LOCALHOST)]).expect("server");
    host.trust_server(server.ca_pem());
    server
}

fn url(server: &UpdateServer, path: &str) -> String {
    format!("https://{}{path}", server.addr())
}

#[test]
fn a_download_cut_midway_resumes_with_a_range_request() {
    let host = Host::new("download");
    let bytes = bundle(&host.key, COMPATIBLE, 6);
    let cut = bytes.len() / 2;
    let server = update_server(
        &host,
        Offer {
            bundle: bytes,
            cut_first_after: Some(cut),
            ..Offer::default()
        },
    );

    let out = host.install_from(&url(&server, BUNDLE_PATH));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ranges = server.bundle_requests();
    assert_eq!(
        ranges.first(),
        Some(&None),
        "the first request asks for everything"
    );
    let resumed_at = ranges
        .get(1)
        .copied()
        .flatten()
        .expect("a second, ranged request");
    assert!(
        resumed_at > 0 && resumed_at <= cut as u64,
        "resumed at {resumed_at}"
    );
    let (kernel, rootfs) = payloads();
    assert!(starts_with_file(&host.disk.partitions.kernel[1], &kernel));
    assert!(starts_with_file(&host.disk.partitions.rootfs[1], &rootfs));
    assert_eq!(
        read_boot_state(&host.disk.partitions.bootstate)
            .expect("read")
            .state
            .primary(),
        Slot::B
    );
}

#[test]
fn a_download_from_an_untrusted_server_is_refused() {
    let host = Host::new("download-untrusted");
    let server = UpdateServer::start(
        Offer {
            bundle: bundle(&host.key, COMPATIBLE, 6),
            ..Offer::default()
        },
        &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
    )
    .expect("server");
    // Trust another server's CA, not this one's.
    update_server(&host, Offer::default());
    let before = host.disk.snapshot();
    let out = host.install_from(&url(&server, BUNDLE_PATH));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tls with 127.0.0.1"), "{stderr}");
    assert_eq!(host.disk.snapshot(), before);
}

/// Points `host` at a channel offering 1.2.3, read every 200 ms, with
/// `extra` keys in `[update]`.
fn subscribe(host: &Host, extra: &str) -> UpdateServer {
    let server = update_server(
        host,
        Offer {
            bundle: bundle(&host.key, COMPATIBLE, 6),
            channel: Some(("1.2.3".into(), COMPATIBLE.into())),
            cut_first_after: None,
        },
    );
    let channel = url(&server, CHANNEL_PATH);
    let config = fs::read_to_string(&host.config).expect("config");
    let polled = format!("[update]\nchannel = \"{channel}\"\npoll_interval = \"200ms\"\n{extra}");
    fs::write(&host.config, config.replace("[update]\n", &polled)).expect("config");
    server
}

#[test]
fn a_newer_release_on_the_channel_is_installed_once_the_slot_is_good() {
    let host = Host::new("channel");
    let _server = subscribe(&host, "");

    host.run_until(|state, boot| {
        state
            .pending
            .as_ref()
            .is_some_and(|p| p.version == "1.2.3" && p.slot == "B")
            && boot.primary() == Slot::B
    });
    let (_, rootfs) = payloads();
    assert!(starts_with_file(&host.disk.partitions.rootfs[1], &rootfs));
}

/// A daily window `from_now` to `from_now + 1 h` away from the host's UTC
/// time of day, as `reboot_window` spells it; `from_now` may be negative.
fn window_from_now(from_now: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs();
    let minute_of_day = |offset: i64| {
        let second = (now as i64 + offset).rem_euclid(86_400);
        format!("{:02}:{:02}", second / 3600, second % 3600 / 60)
    };
    format!(
        "{}-{}",
        minute_of_day(from_now),
        minute_of_day(from_now + 3600)
    )
}

#[test]
fn outside_the_reboot_window_an_installed_update_waits_for_it() {
    let host = Host::new("window-closed");
    let window = window_from_now(2 * 3600);
    let _server = subscribe(&host, &format!("reboot_window = \"{window}\"\n"));

    let log = host.run_until_logged("update 1.2.3 installed, reboot at ");
    // The box decided to wait: the reboot it would otherwise request at once
    // (here only logged, as `reboot = false`) has not been asked for.
    assert!(
        !log.contains("not rebooting, as configured"),
        "rebooted outside {window}: {log}"
    );
    let pending = host.state().pending.expect("the install is recorded");
    assert_eq!(
        (pending.version.as_str(), pending.slot.as_str()),
        ("1.2.3", "B")
    );
    let boot = read_boot_state(&host.disk.partitions.bootstate).expect("read");
    assert_eq!(boot.state.primary(), Slot::B);

    // `edge` restarts (init respawns it) while the update waits: that is no
    // rollback, and the box goes on waiting for the same window.
    let log = host.run_until_logged("update 1.2.3 installed, reboot at ");
    assert!(log.contains("installed update awaits its reboot"), "{log}");
    assert!(!log.contains("installing update"), "installed again: {log}");
    let state = host.state();
    assert_eq!(state.pending.map(|p| p.version), Some("1.2.3".to_owned()));
    assert!(state.last_rollback.is_none(), "{:?}", state.last_rollback);
    let boot = read_boot_state(&host.disk.partitions.bootstate).expect("read");
    assert_eq!(boot.state.primary(), Slot::B);
    assert_eq!(boot.state.tries_left(Slot::B), 3);
}

#[test]
fn inside_the_reboot_window_an_installed_update_reboots_at_once() {
    let host = Host::new("window-open");
    let window = window_from_now(-1800);
    let _server = subscribe(&host, &format!("reboot_window = \"{window}\"\n"));

    let log = host.run_until_logged("update installed; not rebooting, as configured");
    assert!(!log.contains("reboot at"), "waited inside {window}: {log}");
    let pending = host.state().pending.expect("the install is recorded");
    assert_eq!(pending.version, "1.2.3");
}

/// Writes `bytes` at the start of a partition file, as an earlier install
/// that was cut off left them.
fn prefill(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::FileExt as _;
    let file = File::options().write(true).open(path).expect("open");
    file.write_all_at(bytes, 0).expect("prefill");
}

#[test]
fn what_the_slot_already_holds_is_read_back_not_installed_again() {
    let disk = Disk::new("reuse");
    let key = SigningKey::generate().expect("key");
    let bytes = bundle(&key, COMPATIBLE, 6);
    let (_, manifest) = image::bundle::inspect_unverified(&bytes).expect("manifest");
    let (kernel, rootfs) = payloads();
    // A whole kernel, then a rootfs cut three chunks in.
    prefill(&disk.partitions.kernel[1], &kernel);
    prefill(&disk.partitions.rootfs[1], &rootfs[..3 * 4096]);

    let trusted = [key.public_key().clone()];
    let policy = InstallPolicy {
        trusted: &trusted,
        compatible: COMPATIBLE,
        installed_security_version: 5,
    };
    let done = install(
        &mut io::Cursor::new(&bytes),
        &policy,
        &disk.partitions,
        Slot::A,
    )
    .expect("install");
    let rootfs_offset = manifest
        .payload(image::bundle::PayloadKind::Rootfs)
        .offset();
    assert_eq!(done.reused, rootfs_offset + 3 * 4096);
    assert!(starts_with_file(&disk.partitions.kernel[1], &kernel));
    assert!(starts_with_file(&disk.partitions.rootfs[1], &rootfs));
}

#[test]
fn an_install_cut_off_earlier_fetches_only_what_the_slot_lacks() {
    let host = Host::new("resume-slot");
    let bytes = bundle(&host.key, COMPATIBLE, 6);
    let (_, manifest) = image::bundle::inspect_unverified(&bytes).expect("manifest");
    let (kernel, rootfs) = payloads();
    // What a power cut mid-install leaves: the kernel, five chunks of the
    // rootfs, and a torn sixth that must not count.
    let mut torn = rootfs[..6 * 4096].to_vec();
    torn[5 * 4096 + 100] ^= 0xff;
    prefill(&host.disk.partitions.kernel[1], &kernel);
    prefill(&host.disk.partitions.rootfs[1], &torn);
    let server = update_server(
        &host,
        Offer {
            bundle: bytes,
            ..Offer::default()
        },
    );

    let out = host.install_from(&url(&server, BUNDLE_PATH));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rootfs_offset = manifest
        .payload(image::bundle::PayloadKind::Rootfs)
        .offset();
    assert_eq!(
        server.bundle_requests(),
        vec![None, Some(rootfs_offset + 5 * 4096)],
        "the head, then the rest from the first chunk the slot lacks"
    );
    assert!(starts_with_file(&host.disk.partitions.kernel[1], &kernel));
    assert!(starts_with_file(&host.disk.partitions.rootfs[1], &rootfs));
    assert_eq!(
        read_boot_state(&host.disk.partitions.bootstate)
            .expect("read")
            .state
            .primary(),
        Slot::B
    );
}
