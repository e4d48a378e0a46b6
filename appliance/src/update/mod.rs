//! Installing an update bundle into the inactive slot.
//!
//! The formats and their checks are the `image` crate's (sans-IO); this is
//! the blocking shell around them: it finds the slot partitions, streams a
//! bundle into the inactive slot while every chunk is checked, reads the slot
//! back and verifies it whole, and only then switches the boot state. Until
//! that last write, the running slot and the boot order are untouched, so a
//! refused, tampered or interrupted install leaves the box as it was.
//!
//! [`state`] keeps what must survive a reboot and decides, after a boot,
//! whether an update stuck. [`window`] decides when the box may reboot into
//! an installed update. [`download`] and [`channel`] fetch bundles over
//! HTTPS; [`supervise`] is the async shell that runs it all in `edge run`.

pub mod channel;
pub mod download;
pub mod state;
pub mod supervise;
pub mod window;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use image::bootstate::{self, BootState, Slot, AREA_LEN};
use image::bundle::{BundleReader, Manifest, PayloadKind, PayloadStream, PayloadVerifier, Step};
use image::keys::PublicKey;
use image::{BootStateError, BundleError};
use tracing::{info, warn};

/// GPT labels of the partitions the updater touches (docs/image.md).
const BOOTSTATE_LABEL: &str = "bootstate";

/// Bytes read from a bundle or a slot at a time.
const READ_SIZE: usize = 256 * 1024;

/// Why an install or a boot state access failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The bundle is refused: bad signature, unknown key, tampered or
    /// truncated payload, wrong target, too old a security version.
    #[error("bundle refused: {0}")]
    Bundle(#[from] BundleError),
    /// The boot state could not be encoded.
    #[error("boot state: {0}")]
    BootState(#[from] BootStateError),
    /// A partition the layout requires is missing.
    #[error("no partition labelled {0}")]
    MissingPartition(String),
    /// A payload is larger than the partition it goes to.
    #[error("{payload} payload is {size} bytes, partition {partition} holds {capacity}")]
    TooLarge {
        /// `kernel` or `rootfs`.
        payload: &'static str,
        /// Bytes of the payload.
        size: u64,
        /// The partition.
        partition: String,
        /// Bytes the partition holds.
        capacity: u64,
    },
    /// Another install holds the lock.
    #[error("an update is already running")]
    Busy,
    /// The running slot is not known (no `edge.slot=` on the kernel command line).
    #[error("the running slot is unknown")]
    UnknownSlot,
    /// The updater's own record is unreadable.
    #[error("update state: {0}")]
    State(String),
    /// Reading or writing a partition or the bundle failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: io::Error,
    },
}

impl UpdateError {
    fn io(what: impl Into<String>, source: io::Error) -> Self {
        UpdateError::Io {
            what: what.into(),
            source,
        }
    }
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> UpdateError {
    let what = what.into();
    move |source| UpdateError::io(what, source)
}

/// The partitions of both slots and the boot state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitions {
    /// The raw boot state partition.
    pub bootstate: PathBuf,
    /// `kernel_a`, `kernel_b`.
    pub kernel: [PathBuf; 2],
    /// `rootfs_a`, `rootfs_b`.
    pub rootfs: [PathBuf; 2],
}

impl Partitions {
    /// Finds the partitions by GPT label: `sys` is normally `/sys`, `dev`
    /// normally `/dev`. A partition's `uevent` names it (`PARTNAME=`) and its
    /// device node (`DEVNAME=`).
    pub fn discover(sys: &Path, dev: &Path) -> Result<Self, UpdateError> {
        let labels = read_labels(&sys.join("class/block"))?;
        let find = |label: &str| {
            labels
                .iter()
                .find(|(name, _)| name == label)
                .map(|(_, node)| dev.join(node))
                .ok_or_else(|| UpdateError::MissingPartition(label.to_owned()))
        };
        Ok(Self {
            bootstate: find(BOOTSTATE_LABEL)?,
            kernel: [find("kernel_a")?, find("kernel_b")?],
            rootfs: [find("rootfs_a")?, find("rootfs_b")?],
        })
    }

    fn payload_target(&self, kind: PayloadKind, slot: Slot) -> &Path {
        let index = slot_index(slot);
        match kind {
            PayloadKind::Kernel => &self.kernel[index],
            PayloadKind::Rootfs => &self.rootfs[index],
        }
    }
}

fn slot_index(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

/// `(PARTNAME, DEVNAME)` of every block device under `class_block`.
fn read_labels(class_block: &Path) -> Result<Vec<(String, String)>, UpdateError> {
    let entries = std::fs::read_dir(class_block)
        .map_err(io_error(format!("listing {}", class_block.display())))?;
    let mut labels = Vec::new();
    for entry in entries.flatten() {
        let Ok(uevent) = std::fs::read_to_string(entry.path().join("uevent")) else {
            continue;
        };
        let field = |key: &str| {
            uevent
                .lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
        };
        if let (Some(label), Some(node)) = (field("PARTNAME"), field("DEVNAME")) {
            labels.push((label, node));
        }
    }
    Ok(labels)
}

/// The slot the kernel was booted from: `edge.slot=A` on its command line.
pub fn booted_slot(cmdline: &str) -> Option<Slot> {
    cmdline
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix("edge.slot="))
        .and_then(|slot| slot.parse().ok())
}

/// Reads the boot state as the boot script does (copy 0, copy 1, defaults).
pub fn read_boot_state(partition: &Path) -> Result<bootstate::Loaded, UpdateError> {
    let mut area = vec![0u8; AREA_LEN];
    let mut file =
        File::open(partition).map_err(io_error(format!("opening {}", partition.display())))?;
    let mut filled = 0;
    while filled < area.len() {
        let n = file
            .read(&mut area[filled..])
            .map_err(io_error("reading the boot state"))?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    area.truncate(filled);
    Ok(bootstate::read_area(&area))
}

/// Writes the boot state: copy 0, flushed to the medium, then copy 1, so a
/// power cut at any moment leaves at least one valid copy.
pub fn write_boot_state(partition: &Path, state: &BootState) -> Result<(), UpdateError> {
    let mut file = OpenOptions::new()
        .write(true)
        .open(partition)
        .map_err(io_error(format!("opening {}", partition.display())))?;
    for (offset, block) in bootstate::write_plan(state)? {
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.write_all(&block))
            .and_then(|_| file.sync_data())
            .map_err(io_error("writing the boot state"))?;
    }
    Ok(())
}

/// What an install needs to know besides the bundle.
#[derive(Debug, Clone)]
pub struct InstallPolicy<'a> {
    /// Keys whose signatures are accepted.
    pub trusted: &'a [PublicKey],
    /// This box's compatibility string.
    pub compatible: &'a str,
    /// Security version of the installed software; lower bundles are refused.
    pub installed_security_version: u64,
}

/// An install that completed: the slot now first in the boot order.
#[derive(Debug)]
pub struct Installed {
    /// The verified manifest.
    pub manifest: Manifest,
    /// The slot written, now first in `BOOT_ORDER` with full tries.
    pub slot: Slot,
    /// The file offset up to which the slot already held the bundle, so it
    /// was not fetched; the manifest's end when nothing was reused.
    pub reused: u64,
}

/// Where the installer reads a bundle from: a stream that can also skip
/// ahead, so that what the target slot already holds is not fetched again.
pub trait BundleSource: Read {
    /// Makes the next read return the bundle's byte at `offset`, which is
    /// past what was read so far.
    fn resume_at(&mut self, offset: u64) -> io::Result<()>;
}

impl BundleSource for File {
    fn resume_at(&mut self, offset: u64) -> io::Result<()> {
        self.seek(SeekFrom::Start(offset)).map(drop)
    }
}

impl<T: AsRef<[u8]>> BundleSource for io::Cursor<T> {
    fn resume_at(&mut self, offset: u64) -> io::Result<()> {
        self.set_position(offset);
        Ok(())
    }
}

/// Installs the bundle read from `source` into the slot that is not
/// `booted`, then makes it the next to boot.
///
/// The target slot's leading chunks that already match the manifest (a
/// download that a power cut or restart interrupted, or a payload equal to
/// the one there) are read back from the slot instead of fetched; `source`
/// is told to resume after them.
///
/// Holds an exclusive lock on the boot state partition for the whole
/// install, so two installs cannot interleave.
pub fn install(
    source: &mut impl BundleSource,
    policy: &InstallPolicy<'_>,
    partitions: &Partitions,
    booted: Slot,
) -> Result<Installed, UpdateError> {
    let lock = File::open(&partitions.bootstate).map_err(io_error(format!(
        "opening {}",
        partitions.bootstate.display()
    )))?;
    lock.try_lock().map_err(|_| UpdateError::Busy)?;

    let manifest = read_manifest(source, policy.trusted)?;
    manifest.check_installable(policy.compatible, policy.installed_security_version)?;
    let target = booted.other();
    let mut targets = open_targets(&manifest, partitions, target)?;

    let mut stream = PayloadStream::new(&manifest);
    let present = present_in_slot(&manifest, &mut targets)?;
    if present > manifest.manifest_end() {
        feed_from_slot(&mut stream, &mut targets, present)?;
        if stream.remaining() > 0 {
            source
                .resume_at(present)
                .map_err(io_error("skipping what the slot holds"))?;
        }
        info!(
            from = present,
            of = manifest.file_len(),
            "the slot already holds the start of this bundle; fetching the rest"
        );
    }
    stream_payloads(source, &mut stream, &mut targets)?;
    for file in &targets {
        file.sync_all().map_err(io_error("flushing the slot"))?;
        forget_cached(file);
    }
    for kind in PayloadKind::ALL {
        verify_written(&manifest, kind, &mut targets[kind.index()])?;
    }

    let state = read_boot_state(&partitions.bootstate)?.state;
    write_boot_state(&partitions.bootstate, &state.switch_to(target))?;
    Ok(Installed {
        manifest,
        slot: target,
        reused: present,
    })
}

/// The file offset up to which the target slot already holds this bundle's
/// payloads, chunk for chunk as the manifest lists them: the manifest's end
/// when the first chunk does not match.
fn present_in_slot(manifest: &Manifest, targets: &mut [File; 2]) -> Result<u64, UpdateError> {
    let mut probe = PayloadStream::new(manifest);
    match feed_from_slot(&mut probe, targets, manifest.file_len()) {
        // A mismatch ends the probe; what verified before it counts.
        Ok(()) | Err(UpdateError::Bundle(_)) => {}
        Err(e) => return Err(e),
    }
    for kind in PayloadKind::ALL {
        let payload = manifest.payload(kind);
        let verified = probe.verified(kind);
        if verified < payload.size() {
            return Ok(if verified == 0 && kind == PayloadKind::ALL[0] {
                manifest.manifest_end()
            } else {
                payload.offset() + verified
            });
        }
    }
    Ok(manifest.file_len())
}

/// Feeds `stream` the bundle's bytes up to file offset `until` as the target
/// slot holds them: payload bytes read from the partitions, zeros for the
/// padding. Nothing is written.
fn feed_from_slot(
    stream: &mut PayloadStream,
    targets: &mut [File; 2],
    until: u64,
) -> Result<(), UpdateError> {
    let mut buf = vec![0u8; READ_SIZE];
    while stream.position() < until {
        let at = stream.position();
        let want = usize::try_from(until - at)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let piece = &mut buf[..want];
        match stream.payload_at(at) {
            Some((kind, offset, left)) => {
                let len = usize::try_from(left).unwrap_or(usize::MAX).min(want);
                let file = &mut targets[kind.index()];
                file.seek(SeekFrom::Start(offset))
                    .and_then(|_| file.read_exact(&mut piece[..len]))
                    .map_err(io_error(format!("reading the {} slot", kind.name())))?;
                stream.handle_bytes(&piece[..len])?;
            }
            None => {
                piece.fill(0);
                stream.handle_bytes(piece)?;
            }
        }
    }
    Ok(())
}

/// Reads exactly the header and manifest, verified against `trusted`.
fn read_manifest(source: &mut impl Read, trusted: &[PublicKey]) -> Result<Manifest, UpdateError> {
    let mut reader = BundleReader::new(trusted);
    let mut buf = vec![0u8; 64 * 1024];
    while reader.wanted() > 0 {
        let want = reader.wanted().min(buf.len());
        let n = source
            .read(&mut buf[..want])
            .map_err(io_error("reading the bundle"))?;
        if n == 0 {
            break;
        }
        reader.handle_bytes(&buf[..n])?;
    }
    Ok(reader.into_manifest()?)
}

/// Opens the target slot's partitions and checks the payloads fit.
fn open_targets(
    manifest: &Manifest,
    partitions: &Partitions,
    target: Slot,
) -> Result<[File; 2], UpdateError> {
    let open = |kind: PayloadKind| {
        let path = partitions.payload_target(kind, target);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_error(format!("opening {}", path.display())))?;
        let capacity = file
            .seek(SeekFrom::End(0))
            .map_err(io_error(format!("sizing {}", path.display())))?;
        let size = manifest.payload(kind).size();
        if size > capacity {
            return Err(UpdateError::TooLarge {
                payload: kind.name(),
                size,
                partition: path.display().to_string(),
                capacity,
            });
        }
        Ok(file)
    };
    Ok([open(PayloadKind::Kernel)?, open(PayloadKind::Rootfs)?])
}

/// Streams the payloads into the target partitions; every chunk is checked
/// as it completes, and the first bad one ends the install.
fn stream_payloads(
    source: &mut impl Read,
    stream: &mut PayloadStream,
    targets: &mut [File; 2],
) -> Result<(), UpdateError> {
    let mut buf = vec![0u8; READ_SIZE];
    let mut unsynced = [0u64; 2];
    while stream.remaining() > 0 {
        let n = source
            .read(&mut buf)
            .map_err(io_error("reading the bundle"))?;
        if n == 0 {
            break;
        }
        let mut input = &buf[..n];
        while !input.is_empty() {
            let step = stream.handle_bytes(input)?;
            if let Step::Payload {
                kind, offset, len, ..
            } = step
            {
                let file = &mut targets[kind.index()];
                file.seek(SeekFrom::Start(offset))
                    .and_then(|_| file.write_all(&input[..len]))
                    .map_err(io_error(format!("writing the {} payload", kind.name())))?;
                // Flushed as it goes, so that after a power cut the slot
                // holds what was written up to the last flush, and the next
                // install picks up from there (`present_in_slot`).
                unsynced[kind.index()] += len as u64;
                if unsynced[kind.index()] >= SYNC_EVERY {
                    file.sync_data()
                        .map_err(io_error(format!("flushing the {} payload", kind.name())))?;
                    unsynced[kind.index()] = 0;
                }
            }
            input = &input[step.len()..];
        }
    }
    Ok(stream.finish()?)
}

/// Drops the slot's pages from the page cache once they are on the medium,
/// so that the read-back checks what the medium returns, not the copy the
/// writes left in memory. Without it the check would still catch a write
/// that went wrong on the way, but never one the flash did not store.
fn forget_cached(file: &File) {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    if let Err(e) = posix_fadvise(file, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED) {
        warn!(error = %e, "cannot drop the slot from the page cache; the read-back may be served from memory");
    }
}

/// Payload bytes written between two flushes of a slot partition: what a
/// power cut can cost a resumed install at most, per payload.
const SYNC_EVERY: u64 = 4 << 20;

/// Reads a written payload back from its partition and checks it whole.
fn verify_written(
    manifest: &Manifest,
    kind: PayloadKind,
    file: &mut File,
) -> Result<(), UpdateError> {
    let mut verifier = PayloadVerifier::new(manifest, kind);
    let mut left = manifest.payload(kind).size();
    let mut buf = vec![0u8; READ_SIZE];
    file.seek(SeekFrom::Start(0))
        .map_err(io_error("rewinding the slot"))?;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = file.read(&mut buf[..want]).map_err(io_error(format!(
            "reading back the {} payload",
            kind.name()
        )))?;
        if n == 0 {
            break;
        }
        verifier.handle_bytes(&buf[..n])?;
        left -= n as u64;
    }
    Ok(verifier.finish()?)
}
