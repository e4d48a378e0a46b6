//! The partition table of a disk image, read with the box's own GPT reader
//! (`image::gpt`, CRCs checked), and checks of what a boot did to the disk
//! with util-linux and e2fsprogs.
//!
//! Only the primary table is read, with 512-byte sectors, which is what
//! genimage writes for the box.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::process::Command;

use image::gpt::Table;

use crate::Error;

/// The sector size of every image the rig builds.
pub const SECTOR: u64 = 512;

/// The GPT attribute bit firmware reads as "legacy BIOS bootable"; U-Boot's
/// distro boot looks for its script on the partitions that carry it.
pub const LEGACY_BOOTABLE: u64 = 1 << 2;

/// One entry of the partition table, numbered from 1 as U-Boot
/// (`virtio 0:3`) and the kernel (`vda3`) count.
pub use image::gpt::Partition;

/// Where a partition lies in the disk image, in bytes.
pub trait Extent {
    /// Byte offset of the partition in the disk.
    fn offset(&self) -> u64;
    /// Length in bytes.
    fn byte_len(&self) -> u64;
    /// Whether U-Boot's distro boot scans it for a boot script.
    fn is_legacy_bootable(&self) -> bool;
}

impl Extent for Partition {
    fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }

    fn byte_len(&self) -> u64 {
        self.sectors() * SECTOR
    }

    fn is_legacy_bootable(&self) -> bool {
        self.attributes & LEGACY_BOOTABLE != 0
    }
}

/// The used entries of the disk image's partition table, in table order.
pub fn partitions(disk: &Path) -> Result<Vec<Partition>, Error> {
    parse_gpt(&File::open(disk)?)
}

/// The partition named `name`.
pub fn find(disk: &Path, name: &str) -> Result<Partition, Error> {
    partitions(disk)?
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| Error::Disk(format!("no partition named {name:?}")))
}

/// Makes the disk image `bytes` long, as writing it to a larger card does:
/// the new space reads as zeros and the backup table stays where it was.
pub fn enlarge(disk: &Path, bytes: u64) -> Result<(), Error> {
    File::options().write(true).open(disk)?.set_len(bytes)?;
    Ok(())
}

/// `sfdisk --verify` (util-linux): both tables, their CRCs, the backup at
/// the last sector, and partitions inside the usable area.
pub fn verify_table(disk: &Path) -> Result<(), Error> {
    let out = Command::new("sfdisk").arg("--verify").arg(disk).output()?;
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !text.contains("No errors detected") {
        return Err(Error::Disk(format!("sfdisk --verify: {text}")));
    }
    Ok(())
}

/// Copies partition `part` of `disk` to `dest`, checks the ext4 file system
/// in the copy with e2fsck (replaying its journal first, as a mount after a
/// power cut does), and returns its size in bytes as dumpe2fs reports it.
pub fn check_ext4(disk: &Path, part: &Partition, dest: &Path) -> Result<u64, Error> {
    let mut from = File::open(disk)?;
    from.seek(SeekFrom::Start(part.offset()))?;
    let mut to = File::create(dest)?;
    std::io::copy(&mut from.take(part.byte_len()), &mut to)?;
    to.flush()?;
    // 0: clean; 1: errors corrected, which is what replaying a journal
    // reports. A second pass must find nothing.
    for (flags, worst) in [("-fy", 1), ("-fn", 0)] {
        let out = Command::new("e2fsck").arg(flags).arg(dest).output()?;
        let code = out.status.code().unwrap_or(i32::MAX);
        if code > worst {
            return Err(Error::Disk(format!(
                "e2fsck {flags} exited {code}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    let out = Command::new("dumpe2fs").arg("-h").arg(dest).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().parse::<u64>().ok())
            .ok_or_else(|| Error::Disk(format!("dumpe2fs -h shows no {name:?}")))
    };
    Ok(field("Block count:")? * field("Block size:")?)
}

/// Reads the primary GPT header at LBA 1 and the entries it points to.
fn parse_gpt(disk: &File) -> Result<Vec<Partition>, Error> {
    let invalid = |e: image::GptError| Error::Disk(format!("partition table: {e}"));
    let mut header = vec![0u8; SECTOR as usize];
    disk.read_exact_at(&mut header, SECTOR)?;
    let (lba, len) = Table::entries_location(&header).map_err(invalid)?;
    let mut entries = vec![0u8; len];
    disk.read_exact_at(&mut entries, lba * SECTOR)?;
    Ok(Table::parse(&header, &entries)
        .map_err(invalid)?
        .partitions())
}
