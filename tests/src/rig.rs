//! The QEMU rig as the tests drive it: the factory disk image built once by
//! tests/qemu/mkdisk.sh, a sparse copy per boot, and QEMU booting that copy
//! through U-Boot (tests/qemu/boot.sh) with the serial console captured.
//!
//! The markers below are printed by the boot script (`edge-boot:`), the
//! rig's initrd (`edge-rig:`) and the box's rcS and edge service
//! (`edge-init:`), in that order.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::disk::Extent as _;
use crate::update_server::CHANNEL_PATH;
use crate::{edge_binary, free_port, repo_root, Console, Error, ProcessGuard};

/// The boot script's choice: `edge-boot: chose slot A`.
pub const CHOSE_SLOT: &str = "edge-boot: chose slot ";

/// The counters after the choice, as the script is about to write them.
pub const COUNTERS: &str = "edge-boot: BOOT_ORDER=";

/// The initrd mounted the slot's root: `edge-rig: slot A, root rootfs_a (/dev/vda5)`.
pub const ROOT_MOUNTED: &str = "edge-rig: slot ";

/// rcS runs from the slot's root and shows the kernel command line.
pub const INIT_CMDLINE: &str = "edge-init: kernel ";

/// The edge service starts `edge run` with the configuration it picked.
pub const EDGE_STARTING: &str = "edge-init: starting edge with ";

/// Lines after which the box will not come up.
pub const FATAL: &[&str] = &[
    "did not boot; resetting",
    "edge-rig: boot failed",
    "edge-rig: insmod",
    "edge-init: edge exited",
    "Kernel panic",
];

/// `edge`'s log line once its own health check passed and its slot is
/// marked good.
pub const MARKED_GOOD: &str = "slot marked good";

/// From QEMU's launch to any one marker. Under TCG the whole boot takes
/// seconds on an idle machine; the margin is for a loaded one.
pub const MARKER_WITHIN: Duration = Duration::from_secs(120);

/// The factory disk image, built from the current `edge` binary.
#[derive(Debug)]
pub struct FactoryDisk {
    disk: PathBuf,
}

impl FactoryDisk {
    /// Runs tests/qemu/mkdisk.sh into `dir` (created if missing, its
    /// previous contents replaced).
    pub fn build(dir: &Path) -> Result<Self, Error> {
        let output = Command::new(repo_root().join("tests/qemu/mkdisk.sh"))
            .arg(edge_binary())
            .arg(dir)
            .stdin(Stdio::null())
            .output()?;
        if !output.status.success() {
            return Err(Error::Command(format!(
                "tests/qemu/mkdisk.sh failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(Self {
            disk: dir.join("disk.img"),
        })
    }

    pub fn path(&self) -> &Path {
        &self.disk
    }

    /// A partition image mkdisk.sh laid out (`kernel.ext4`,
    /// `rootfs.squashfs`, ...), which is also what a bundle carries.
    pub fn part(&self, name: &str) -> PathBuf {
        self.disk.with_file_name("parts").join(name)
    }

    /// A private copy at `dest` that a boot may write to. The image is
    /// mostly holes; the copy keeps them (and shares blocks where the file
    /// system can).
    pub fn copy_to(&self, dest: &Path) -> Result<PathBuf, Error> {
        let status = Command::new("cp")
            .args(["--sparse=always", "--reflink=auto"])
            .arg(&self.disk)
            .arg(dest)
            .status()?;
        if !status.success() {
            return Err(Error::Command(format!(
                "cp of the disk image failed ({status})"
            )));
        }
        Ok(dest.to_path_buf())
    }
}

/// How a box boots beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct BootOptions {
    /// Host port on 127.0.0.1 the box reaches as `10.0.2.100:443`.
    pub server_port: Option<u16>,
    /// Let the box reboot instead of ending QEMU.
    pub allow_reboot: bool,
}

/// The address a box reaches [`BootOptions::server_port`] at.
pub const SERVER_IN_BOX: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);

/// A box booting in QEMU: killed when dropped.
#[derive(Debug)]
pub struct RunningBox {
    qemu: ProcessGuard,
    console: Console,
    port: u16,
    launched: Instant,
}

impl RunningBox {
    /// Boots `disk` through tests/qemu/boot.sh with a free host port
    /// forwarded to the box's :443.
    pub fn boot(disk: &Path) -> Result<Self, Error> {
        Self::boot_with(disk, &BootOptions::default())
    }

    /// Like [`RunningBox::boot`], with the options of an update test.
    pub fn boot_with(disk: &Path, options: &BootOptions) -> Result<Self, Error> {
        let port = free_port()?;
        let launched = Instant::now();
        let mut command = Command::new(repo_root().join("tests/qemu/boot.sh"));
        command.arg(disk).env("EDGE_RIG_PORT", port.to_string());
        if let Some(server) = options.server_port {
            command.env("EDGE_RIG_SERVER", server.to_string());
        }
        if options.allow_reboot {
            command.env("EDGE_RIG_REBOOT", "allow");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut qemu = ProcessGuard::new("qemu-system-aarch64", child);
        let serial = qemu
            .child_mut()
            .stdout
            .take()
            .ok_or_else(|| Error::Console("QEMU's stdout was not piped".into()))?;
        Ok(Self {
            qemu,
            console: Console::new(serial),
            port,
            launched,
        })
    }

    /// The next console line containing `marker`, failing on a [`FATAL`]
    /// line, on QEMU's exit, or after [`MARKER_WITHIN`].
    pub fn wait_for(&self, marker: &str) -> Result<String, Error> {
        self.console.wait_for(marker, FATAL, MARKER_WITHIN)
    }

    /// Like [`RunningBox::wait_for`], but panics with the console transcript:
    /// what a test wants to see when the box does not get there.
    pub fn expect_line(&self, marker: &str) -> String {
        self.expect_line_with(marker, FATAL)
    }

    /// Like [`RunningBox::expect_line`], failing only on the `fatal` lines:
    /// for a test in which some boots are meant to fail.
    pub fn expect_line_with(&self, marker: &str, fatal: &[&str]) -> String {
        match self.console.wait_for(marker, fatal, MARKER_WITHIN) {
            Ok(line) => line,
            Err(e) => panic!("{e}\n--- serial console ---\n{}", self.transcript()),
        }
    }

    /// The box's :443 as reached from the host.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Time since QEMU was launched.
    pub fn uptime(&self) -> Duration {
        self.launched.elapsed()
    }

    pub fn qemu(&mut self) -> &mut ProcessGuard {
        &mut self.qemu
    }

    pub fn transcript(&self) -> String {
        self.console.transcript()
    }
}

/// The slot letter at the end of a [`CHOSE_SLOT`] line.
pub fn chosen_slot(line: &str) -> Option<&str> {
    line.split(CHOSE_SLOT).nth(1).map(str::trim)
}

/// The value of `key=` in a kernel command line shown in an [`INIT_CMDLINE`] line.
pub fn cmdline_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

/// The rig's compatibility string (tests/qemu/edge.toml).
pub const COMPATIBLE: &str = "edge-qemu-aarch64";

/// Provisions the boot partition of `image` to follow the channel of an
/// update server reached at [`SERVER_IN_BOX`]: an `edge.toml` with an
/// `[update]` section, the public key `key_line` and the server's CA.
/// `dir` holds the files on their way.
pub fn provision_for_channel(image: &Path, dir: &Path, key_line: &str, ca_pem: &str) {
    let config = format!(
        "[mux]\nlisten = \"0.0.0.0:443\"\n\n[update]\ncompatible = \"{COMPATIBLE}\"\n\
         keys = [\"/boot/update.pub\"]\nserver_ca = \"/boot/update-ca.pem\"\n\
         channel = \"https://{SERVER_IN_BOX}{CHANNEL_PATH}\"\npoll_interval = \"1s\"\n\
         health_deadline = \"120s\"\n"
    );
    provision(
        image,
        dir,
        &[
            ("edge.toml", &config),
            ("update.pub", key_line),
            ("update-ca.pem", ca_pem),
        ],
    );
}

/// Zeros the first MiB of `kernel_b` and `rootfs_b`, as if slot B held
/// something else than the factory's copy of slot A. Without it the
/// installer finds a bundle of the factory's slot images already there,
/// chunk for chunk, and writes nothing.
pub fn spoil_slot_b(image: &Path) {
    use std::os::unix::fs::FileExt as _;
    let disk = std::fs::File::options()
        .write(true)
        .open(image)
        .expect("open the disk image");
    for name in ["kernel_b", "rootfs_b"] {
        let part = crate::disk::find(image, name).expect("find a slot B partition");
        disk.write_all_at(&[0u8; 1 << 20], part.offset())
            .expect("spoil slot B");
    }
}

/// Puts `files` (name, contents) on the boot partition of `image`, where
/// the partner's provisioning goes, replacing what is there. `dir` holds
/// the files on their way.
pub fn provision(image: &Path, dir: &Path, files: &[(&str, &str)]) {
    let boot = crate::disk::find(image, "boot").expect("the boot partition");
    for (name, contents) in files {
        std::fs::write(dir.join(name), contents).expect("write a provisioning file");
        let status = Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-o")
            .arg("-i")
            .arg(format!("{}@@{}", image.display(), boot.offset()))
            .arg(dir.join(name))
            .arg(format!("::{name}"))
            .status()
            .expect("run mcopy (run ./dev deps)");
        assert!(status.success(), "mcopy {name}: {status}");
    }
}

/// Reads `name` from the boot partition of `image`; `None` while it is not
/// there. The box flushes what it writes there, and QEMU writes through to
/// the image file, so this works while the box runs.
pub fn boot_file(image: &Path, name: &str) -> Option<String> {
    let boot = crate::disk::find(image, "boot").expect("the boot partition");
    let output = Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{}", image.display(), boot.offset()))
        .arg(format!("::{name}"))
        .output()
        .expect("run mtype (run ./dev deps)");
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The box's status file (`status.txt` on the boot partition) once it holds
/// `wanted`, waiting up to 30 s for the box to write it.
pub fn status_saying(image: &Path, wanted: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = boot_file(image, STATUS_FILE).unwrap_or_default();
        if status.contains(wanted) {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{STATUS_FILE} never said {wanted:?}; it says:\n{status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// The status file the box keeps on its boot partition.
pub const STATUS_FILE: &str = "status.txt";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_markers() {
        assert_eq!(chosen_slot("edge-boot: chose slot B"), Some("B"));
        assert_eq!(chosen_slot("edge-boot: chose slot B\r"), Some("B"));
        assert_eq!(chosen_slot("something else"), None);

        let line = "edge-init: kernel 6.1.0-57-arm64, command line: console=ttyAMA0 \
                    panic=-1 quiet edge.slot=A root=PARTUUID=99b5 ro";
        assert_eq!(cmdline_value(line, "edge.slot"), Some("A"));
        assert_eq!(cmdline_value(line, "root"), Some("PARTUUID=99b5"));
        assert_eq!(cmdline_value(line, "slot"), None);
    }
}
